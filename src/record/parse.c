/*
 * parse.c - visit records from JSON lines, via yajl's callback parser.
 *
 * Each record gets a fresh yajl handle, so that no lexer or parser state can
 * leak from one record into the next (a reused handle in
 * yajl_allow_multiple_values mode did: a stray quote after a complete object
 * stayed in its lexer). A handle costs a few allocations; they come from a
 * bump arena reset per record, so the common path still calls malloc zero
 * times. The callbacks track nesting depth so that only the top-level
 * object's fields are taken.
 *
 * In front of yajl sits a fast path for the one shape almost every record
 * has: an object of exactly the three fields, integers without fraction,
 * strings of printable ASCII without escapes. It accepts a record only when
 * it has checked all of it, and hands anything else, valid or not, to yajl,
 * which stays the judge of what is JSON and words every error. A fuzz target
 * (fuzz_record_parse) holds the two to the same answers. Parsing was 42% of
 * the discarding path's time; the fast path takes a third of that off.
 */
#include "record/parse.h"

#include <assert.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "common/utf8.h"
#include "common/xalloc.h"
#include "record/timestamp.h"

enum field { F_NONE, F_USER_ID, F_PAGE, F_EVENT_TIME };

/* ---- per-record arena for yajl's allocations ---------------------------- */

#define ARENA_BYTES 16384

typedef struct arena_block {
    struct arena_block *next; /* overflow blocks, freed at reset */
} arena_block;

typedef struct arena {
    max_align_t store[ARENA_BYTES / sizeof(max_align_t)];
    size_t used;
    arena_block *overflow;
} arena;

/* Each allocation is preceded by one max_align_t slot holding its size (for
 * realloc), so that what is returned stays maximally aligned. */
#define SLOT sizeof(max_align_t)

static void *arena_malloc(void *ctx, size_t n)
{
    arena *a = ctx;
    size_t need = SLOT + ((n + SLOT - 1) & ~(SLOT - 1));
    unsigned char *p;
    if (need <= sizeof a->store - a->used) {
        p = (unsigned char *)a->store + a->used;
        a->used += need;
    } else {
        arena_block *b = xmalloc(SLOT + need);
        b->next = a->overflow;
        a->overflow = b;
        p = (unsigned char *)b + SLOT;
    }
    memcpy(p, &n, sizeof n);
    return p + SLOT;
}

static void arena_free(void *ctx, void *ptr) { (void)ctx, (void)ptr; }

static void *arena_realloc(void *ctx, void *ptr, size_t n)
{
    if (!ptr) return arena_malloc(ctx, n);
    size_t old;
    memcpy(&old, (unsigned char *)ptr - SLOT, sizeof old);
    if (n <= old) return ptr;
    void *q = arena_malloc(ctx, n);
    memcpy(q, ptr, old);
    return q;
}

static void arena_reset(arena *a)
{
    while (a->overflow) {
        arena_block *next = a->overflow->next;
        free(a->overflow);
        a->overflow = next;
    }
    a->used = 0;
}

struct record_parser {
    arena arena;        /* holds the current record's yajl handle */
    yajl_alloc_funcs alloc_funcs;
    yajl_handle h;
    int fast_path;      /* on unless a test turns it off */
    /* per-record state */
    const char *raw;    /* the record's bytes, as given to yajl in one piece */
    int depth;
    int top_values;
    enum field pending; /* the top-level key just read */
    unsigned seen;      /* bit per field */
    size_t end;         /* bytes up to the end of the top-level object */
    parse_error err;
    char *detail;
    size_t detail_len;
    int64_t user_id;
    int64_t event_time_us;
    buf page;
};

__attribute__((format(printf, 3, 4)))
static int fail(record_parser *p, parse_error e, const char *fmt, ...)
{
    if (p->err == PARSE_OK) {
        p->err = e;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->detail, p->detail_len, fmt, ap);
        va_end(ap);
    }
    return 0; /* stops yajl: yajl_status_client_canceled */
}

static const char *field_name(enum field f)
{
    return f == F_USER_ID ? "user_id" : f == F_PAGE ? "page" : "event_time";
}

static unsigned hex4(const char *s)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = (unsigned char)s[i];
        v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* 1 if every \u escape of a surrogate in the JSON string body s (between
 * its quotes, already lexed by yajl so every escape is complete) is a high
 * one followed at once by a low one. yajl decodes a lone high surrogate to
 * "?" and pairs a high one with whatever \u follows (\ud800\ud800 became
 * U+10000): the page would be other text than the record's, so the raw
 * escapes are checked instead of the decoded bytes. */
static int surrogates_paired(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\') continue;
        if (s[++i] != 'u') continue; /* \" \\ \n ...: the next byte is consumed */
        assert(i + 4 < len); /* yajl lexed four hex digits */
        unsigned u = hex4(s + i + 1);
        i += 4;
        if (u >= 0xDC00 && u <= 0xDFFF) return 0;
        if (u < 0xD800 || u > 0xDBFF) continue;
        if (i + 6 >= len || s[i + 1] != '\\' || s[i + 2] != 'u') return 0;
        unsigned lo = hex4(s + i + 3);
        if (lo < 0xDC00 || lo > 0xDFFF) return 0;
        i += 6;
    }
    return 1;
}

/* The body of the string token yajl has just reported: it ends right before
 * the bytes consumed so far (a closing quote); it starts after the last
 * quote before that which is not escaped, i.e. not preceded by an odd number
 * of backslashes. */
static void string_token(const record_parser *p, const char **body, size_t *len)
{
    size_t close = yajl_get_bytes_consumed(p->h) - 1, open = close;
    assert(p->raw[close] == '"');
    for (;;) {
        assert(open > 0);
        open--;
        if (p->raw[open] != '"') continue;
        size_t bs = 0;
        while (bs < open && p->raw[open - 1 - bs] == '\\') bs++;
        if (bs % 2 == 0) break;
    }
    *body = p->raw + open + 1;
    *len = close - open - 1;
}

/* A value at depth 1 of the top-level object, under key p->pending.
 * kind: 'n' number, 's' string, 'o' other (bool, null, map, array). */
static int top_value(record_parser *p, char kind, const char *s, size_t len)
{
    enum field f = p->pending;
    p->pending = F_NONE;
    if (f == F_NONE) return 1;
    if (f == F_USER_ID) {
        if (kind != 'n') return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be an integer", "user_id");
        /* Strict integer: optional '-', digits, no fraction or exponent. */
        size_t i = s[0] == '-';
        if (i == len) return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be an integer", "user_id");
        uint64_t v = 0, limit = s[0] == '-' ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (; i < len; i++) {
            unsigned d = (unsigned char)s[i] - '0';
            if (d > 9) return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be an integer", "user_id");
            if (v > (limit - d) / 10)
                return fail(p, PARSE_USER_ID_RANGE, "\"%s\" does not fit a signed 64-bit integer",
                            "user_id");
            v = v * 10 + d;
        }
        p->user_id = s[0] == '-' ? (int64_t)(0 - v) : (int64_t)v;
        return 1;
    }
    if (kind != 's') return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be a string", field_name(f));
    if (f == F_PAGE) {
        if (memchr(s, '\0', len))
            return fail(p, PARSE_INVALID_PAGE, "\"%s\" contains a NUL character", "page");
        if (len > UINT32_MAX) return fail(p, PARSE_INVALID_PAGE, "\"%s\" is too long", "page");
        /* yajl lets encoded surrogates through; every sink needs strict UTF-8. */
        if (!utf8_valid(s, len))
            return fail(p, PARSE_INVALID_UTF8, "\"%s\" is not valid UTF-8", "page");
        const char *body;
        size_t body_len;
        string_token(p, &body, &body_len);
        if (memchr(body, '\\', body_len) && !surrogates_paired(body, body_len))
            return fail(p, PARSE_INVALID_UTF8, "\"%s\" has an unpaired surrogate escape",
                        "page");
        buf_reset(&p->page);
        buf_append(&p->page, s, len);
        return 1;
    }
    if (parse_iso8601_us(s, len, &p->event_time_us))
        return fail(p, PARSE_BAD_EVENT_TIME,
                    "\"%s\" is not an ISO-8601 time such as 2023-02-20T03:03:20", "event_time");
    return 1;
}

/* A value that is not an object at the top level. */
static int top_level_non_object(record_parser *p)
{
    if (p->top_values > 0)
        return fail(p, PARSE_INVALID_JSON, "%s", "more than one JSON value on the line");
    return fail(p, PARSE_NOT_AN_OBJECT, "%s", "the record is not a JSON object");
}

static int on_scalar(record_parser *p, char kind, const char *s, size_t len)
{
    if (p->depth == 0) return top_level_non_object(p);
    if (p->depth == 1) return top_value(p, kind, s, len);
    return 1;
}

static int cb_null(void *ctx) { return on_scalar(ctx, 'o', NULL, 0); }
static int cb_bool(void *ctx, int v) { (void)v; return on_scalar(ctx, 'o', NULL, 0); }
static int cb_number(void *ctx, const char *s, size_t len) { return on_scalar(ctx, 'n', s, len); }
static int cb_string(void *ctx, const unsigned char *s, size_t len)
{
    return on_scalar(ctx, 's', (const char *)s, len);
}

static int cb_start_map(void *ctx)
{
    record_parser *p = ctx;
    if (p->depth == 0 && p->top_values++ > 0)
        return fail(p, PARSE_INVALID_JSON, "%s", "more than one JSON value on the line");
    if (p->depth == 1 && !on_scalar(p, 'o', NULL, 0)) return 0;
    p->depth++;
    return 1;
}

static int cb_map_key(void *ctx, const unsigned char *key, size_t len)
{
    record_parser *p = ctx;
    if (p->depth != 1) return 1;
    enum field f = F_NONE;
    if (len == 7 && memcmp(key, "user_id", 7) == 0) f = F_USER_ID;
    else if (len == 4 && memcmp(key, "page", 4) == 0) f = F_PAGE;
    else if (len == 10 && memcmp(key, "event_time", 10) == 0) f = F_EVENT_TIME;
    if (f != F_NONE) {
        if (p->seen & (1u << f))
            return fail(p, PARSE_DUPLICATE_FIELD, "field \"%s\" appears twice", field_name(f));
        p->seen |= 1u << f;
    }
    p->pending = f;
    return 1;
}

static int cb_end_map(void *ctx)
{
    record_parser *p = ctx;
    if (--p->depth == 0) p->end = yajl_get_bytes_consumed(p->h);
    return 1;
}

static int cb_start_array(void *ctx)
{
    record_parser *p = ctx;
    if (p->depth == 0) return top_level_non_object(p);
    if (p->depth == 1 && !on_scalar(p, 'o', NULL, 0)) return 0;
    p->depth++;
    return 1;
}

static int cb_end_array(void *ctx)
{
    record_parser *p = ctx;
    p->depth--;
    return 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = cb_null,
    .yajl_boolean = cb_bool,
    .yajl_number = cb_number,
    .yajl_string = cb_string,
    .yajl_start_map = cb_start_map,
    .yajl_map_key = cb_map_key,
    .yajl_end_map = cb_end_map,
    .yajl_start_array = cb_start_array,
    .yajl_end_array = cb_end_array,
};

/* ---- fast path ------------------------------------------------------------ */

static inline const char *skip_ws(const char *c, const char *e)
{
    while (c < e && (*c == ' ' || *c == '\t' || *c == '\r' || *c == '\n')) c++;
    return c;
}

/* The closing quote of a string of printable ASCII without escapes, or NULL
 * (anything else is yajl's to decode). */
static inline const char *plain_string_end(const char *c, const char *e)
{
    for (; c < e; c++) {
        unsigned char ch = (unsigned char)*c;
        if (ch == '"') return c;
        if (ch == '\\' || ch < 0x20 || ch >= 0x7f) return NULL;
    }
    return NULL;
}

/* 1 and *out filled if r is a valid visit of the common shape, else 0. */
static int fast_parse(record_parser *p, const raw_record *r, visit *out)
{
    const char *c = skip_ws(r->data, r->data + r->len), *e = r->data + r->len;
    unsigned seen = 0;
    if (c == e || *c++ != '{') return 0;
    for (;;) {
        c = skip_ws(c, e);
        if (c == e || *c++ != '"') return 0;
        const char *key = c;
        if (!(c = plain_string_end(c, e))) return 0;
        size_t key_len = (size_t)(c - key);
        c = skip_ws(c + 1, e);
        if (c == e || *c++ != ':') return 0;
        c = skip_ws(c, e);
        if (c == e) return 0;
        enum field f;
        if (key_len == 7 && memcmp(key, "user_id", 7) == 0) f = F_USER_ID;
        else if (key_len == 4 && memcmp(key, "page", 4) == 0) f = F_PAGE;
        else if (key_len == 10 && memcmp(key, "event_time", 10) == 0) f = F_EVENT_TIME;
        else return 0;
        if (seen & (1u << f)) return 0;
        seen |= 1u << f;
        if (f == F_USER_ID) {
            int neg = *c == '-';
            c += neg;
            if (c == e || *c < '0' || *c > '9') return 0;
            if (*c == '0' && c + 1 < e && c[1] >= '0' && c[1] <= '9') return 0; /* 01 */
            uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
            for (; c < e && *c >= '0' && *c <= '9'; c++) {
                unsigned d = (unsigned)(*c - '0');
                if (v > (limit - d) / 10) return 0;
                v = v * 10 + d;
            }
            out->user_id = neg ? (int64_t)(0 - v) : (int64_t)v;
        } else {
            if (*c++ != '"') return 0;
            const char *v = c;
            if (!(c = plain_string_end(c, e))) return 0;
            size_t len = (size_t)(c++ - v);
            if (f == F_PAGE) {
                out->page = v; /* in the record, valid as long as it is */
                out->page_len = (uint32_t)len;
            } else if (parse_iso8601_us(v, len, &out->event_time_us)) {
                return 0;
            }
        }
        c = skip_ws(c, e);
        if (c == e) return 0;
        if (*c == ',') {
            c++;
            continue;
        }
        if (*c++ != '}') return 0;
        break;
    }
    if (skip_ws(c, e) != e || seen != ((1u << F_USER_ID) | (1u << F_PAGE) | (1u << F_EVENT_TIME)))
        return 0;
    (void)p;
    out->pos = r->pos;
    return 1;
}

void record_parser_set_fast_path(record_parser *p, int on) { p->fast_path = on; }

record_parser *record_parser_new(void)
{
    record_parser *p = xcalloc(1, sizeof *p);
    buf_init(&p->page);
    p->alloc_funcs = (yajl_alloc_funcs){arena_malloc, arena_realloc, arena_free, &p->arena};
    p->fast_path = 1;
    return p;
}

void record_parser_free(record_parser *p)
{
    if (!p) return;
    arena_reset(&p->arena);
    buf_free(&p->page);
    free(p);
}

parse_error record_parse(record_parser *p, const raw_record *r, visit *out, char *detail,
                         size_t detail_len)
{
    p->depth = 0;
    p->top_values = 0;
    p->pending = F_NONE;
    p->seen = 0;
    p->end = 0;
    p->err = PARSE_OK;
    p->detail = detail;
    p->detail_len = detail_len;
    p->raw = r->data;
    if (detail_len) detail[0] = '\0';

    if (r->oversized) {
        snprintf(detail, detail_len, "record longer than the limit (--max-record-bytes)");
        return PARSE_OVERSIZED;
    }
    size_t first = 0;
    while (first < r->len && (r->data[first] == ' ' || r->data[first] == '\t' ||
                              r->data[first] == '\r' || r->data[first] == '\n'))
        first++;
    if (first == r->len) {
        snprintf(detail, detail_len, "empty record");
        return PARSE_INVALID_JSON;
    }
    if (p->fast_path && fast_parse(p, r, out)) return PARSE_OK;
    arena_reset(&p->arena);
    p->h = yajl_alloc(&callbacks, &p->alloc_funcs, p);
    /* yajl_complete_parse ends a bare top-level number and reports a value
     * cut short, or anything after the value, as an error. */
    yajl_status st = yajl_parse(p->h, (const unsigned char *)r->data, r->len);
    if (st == yajl_status_ok) st = yajl_complete_parse(p->h);
    /* ...except an unfinished token after the value (a stray quote), which
     * yajl's lexer holds and then ignores: only JSON whitespace may follow. */
    for (size_t i = p->end; st == yajl_status_ok && p->err == PARSE_OK && i < r->len; i++) {
        char c = r->data[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
        snprintf(detail, detail_len, "data after the JSON object");
        return PARSE_INVALID_JSON;
    }
    if (st != yajl_status_ok) {
        if (p->err == PARSE_OK) {
            unsigned char *msg = yajl_get_error(p->h, 0, NULL, 0);
            const char *m = (const char *)msg;
            p->err = strstr(m, "UTF8") || !utf8_valid(r->data, r->len) ? PARSE_INVALID_UTF8
                                                                       : PARSE_INVALID_JSON;
            /* yajl's messages end in ".\n"; keep one clean line. */
            size_t n = strcspn(m, "\n");
            snprintf(detail, detail_len, "%.*s", (int)n, m);
            yajl_free_error(p->h, msg);
        }
        return p->err;
    }
    if (p->err != PARSE_OK) return p->err;
    static const enum field required[] = {F_USER_ID, F_PAGE, F_EVENT_TIME};
    for (size_t i = 0; i < 3; i++)
        if (!(p->seen & (1u << required[i]))) {
            snprintf(detail, detail_len, "missing field \"%s\"", field_name(required[i]));
            return PARSE_MISSING_FIELD;
        }
    out->user_id = p->user_id;
    out->event_time_us = p->event_time_us;
    out->page = p->page.data ? (const char *)p->page.data : "";
    out->page_len = (uint32_t)p->page.len;
    out->pos = r->pos;
    return PARSE_OK;
}

const char *parse_error_code(parse_error e)
{
    switch (e) {
    case PARSE_OK: return "ok";
    case PARSE_INVALID_JSON: return "invalid_json";
    case PARSE_INVALID_UTF8: return "invalid_utf8";
    case PARSE_NOT_AN_OBJECT: return "not_an_object";
    case PARSE_MISSING_FIELD: return "missing_field";
    case PARSE_MISTYPED_FIELD: return "mistyped_field";
    case PARSE_DUPLICATE_FIELD: return "duplicate_field";
    case PARSE_USER_ID_RANGE: return "user_id_out_of_range";
    case PARSE_BAD_EVENT_TIME: return "bad_event_time";
    case PARSE_INVALID_PAGE: return "invalid_page";
    case PARSE_OVERSIZED: return "oversized";
    }
    return "unknown";
}
