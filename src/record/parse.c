/*
 * parse.c - visit records from JSON lines, via yajl's callback parser.
 *
 * Each record gets a fresh yajl handle, so that no lexer or parser state can
 * leak from one record into the next (a reused handle in
 * yajl_allow_multiple_values mode did: a stray quote after a complete object
 * stayed in its lexer). A handle costs a few allocations; they come from a
 * bump arena reset per record, so the common path still calls malloc zero
 * times. The callbacks track the path from the top-level object down, as a
 * stack of frames holding which of the three JSON Pointers (record/mapping.h)
 * still match, so that only the values the mapping names are taken, however
 * deep, and a record costs the same whatever its other fields hold.
 *
 * In front of yajl sits a fast path for the plain records almost every
 * source writes: objects, arrays, numbers and strings of printable ASCII
 * without escapes, the mapped fields on paths of objects. It walks the
 * record once, following the pointers' tokens through the objects they name
 * and skipping (while checking) everything else, so a nested mapping costs
 * little more than the default layout (bench/layouts.py). It accepts a record only when
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

/* A frame per open container on the path, up to the deepest pointer. */
#define MAX_FRAMES (POINTER_MAX_TOKENS + 1)
_Static_assert(MAX_FRAMES <= PARSE_MAX_DEPTH, "every pointer can reach as deep as it may go");

typedef struct frame {
    unsigned mask;  /* pointers (bit per field) that run through this container */
    unsigned seen;  /* of those, the ones whose key was met here (objects) */
    int64_t index;  /* next element's index (arrays) */
    int is_array;
} frame;

/* ---- per-record arena for yajl's allocations ---------------------------- */

#define ARENA_BYTES 16384

typedef struct arena_block {
    struct arena_block *next; /* overflow blocks, freed at reset */
} arena_block;

typedef struct arena {
    max_align_t store[ARENA_BYTES / sizeof(max_align_t)];
    size_t used;
    arena_block *overflow;
    size_t overflow_bytes, peak_bytes; /* held in overflow blocks; the most, with the store */
} arena;

/* Each allocation is preceded by one max_align_t slot holding its size (for
 * realloc), so that what is returned stays maximally aligned. */
#define SLOT sizeof(max_align_t)
_Static_assert(sizeof(arena_block) <= SLOT, "a block's header fits its slot");

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
        a->overflow_bytes += SLOT + need;
        if (sizeof a->store + a->overflow_bytes > a->peak_bytes)
            a->peak_bytes = sizeof a->store + a->overflow_bytes;
        p = (unsigned char *)b + SLOT;
    }
    memcpy(p, &n, sizeof n);
    return p + SLOT;
}

static void arena_free(void *ctx, void *ptr) { (void)ctx, (void)ptr; }

/* A grown allocation is copied to a new one. When the old one is the newest
 * overflow block, as for a buffer that keeps growing, it is freed: without
 * that, yajl's state stack, which grows 128 bytes at a time, held memory in
 * the square of the nesting depth (4 GB for a 1 MB line of "["). */
static void *arena_realloc(void *ctx, void *ptr, size_t n)
{
    arena *a = ctx;
    if (!ptr) return arena_malloc(ctx, n);
    size_t old;
    memcpy(&old, (unsigned char *)ptr - SLOT, sizeof old);
    if (n <= old) return ptr;
    arena_block *was = a->overflow;
    int newest = was && (unsigned char *)ptr == (unsigned char *)was + 2 * SLOT;
    void *q = arena_malloc(ctx, n);
    memcpy(q, ptr, old);
    if (newest && a->overflow != was) {
        assert(a->overflow->next == was);
        a->overflow->next = was->next;
        a->overflow_bytes -= 2 * SLOT + ((old + SLOT - 1) & ~(SLOT - 1));
        free(was);
    }
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
    a->overflow_bytes = 0;
    a->peak_bytes = sizeof a->store;
}

struct record_parser {
    arena arena;        /* holds the current record's yajl handle */
    yajl_alloc_funcs alloc_funcs;
    yajl_handle h;
    record_mapping m;
    unsigned wanted;    /* fields read from the JSON (not from the Kafka key or timestamp) */
    int flat;           /* every wanted field is a top-level key: fast_parse_flat */
    int objects_only;   /* every pointer goes through objects only: fast_parse */
    int fast_path;      /* on unless a test turns it off */
    /* per-record state */
    const char *raw;    /* the record's bytes, as given to yajl in one piece */
    int depth;
    int top_values;
    unsigned pending;   /* pointers selecting the value that comes next */
    unsigned seen;      /* fields found, bit per field */
    frame frames[MAX_FRAMES];
    size_t end;         /* bytes up to the end of the top-level object */
    parse_error err;
    char *detail;
    size_t detail_len;
    int64_t user_id;
    int64_t event_time_us;
    buf page;
    buf user;
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

static const char *field_name(const record_parser *p, int f)
{
    if (f == FIELD_USER && p->m.user_from_key) return "Kafka key";
    return record_mapping_field_name(&p->m, f);
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

/* An unpaired surrogate escape in the string value yajl just reported. */
static int unpaired_surrogate(const record_parser *p)
{
    const char *body;
    size_t body_len;
    string_token(p, &body, &body_len);
    return memchr(body, '\\', body_len) && !surrogates_paired(body, body_len);
}

/* Strict integer: optional '-', digits, no fraction or exponent. 0, or the
 * error (mistyped or out of range) already reported. */
static int parse_user_int(record_parser *p, const char *s, size_t len, int64_t *out)
{
    const char *name = field_name(p, FIELD_USER);
    size_t i = len > 0 && s[0] == '-';
    if (i == len) return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be an integer", name), -1;
    uint64_t v = 0, limit = s[0] == '-' ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        unsigned d = (unsigned)((unsigned char)s[i] - '0');
        if (d > 9) return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be an integer", name), -1;
        if (v > (limit - d) / 10)
            return fail(p, PARSE_USER_ID_RANGE, "\"%s\" does not fit a signed 64-bit integer",
                        name), -1;
        v = v * 10 + d;
    }
    *out = s[0] == '-' ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* A string user id: 1 to USER_MAX_BYTES bytes of UTF-8 without NUL. */
static int check_user_string(record_parser *p, const char *s, size_t len)
{
    const char *name = field_name(p, FIELD_USER);
    if (len == 0) return fail(p, PARSE_INVALID_USER_ID, "\"%s\" is empty", name), -1;
    if (len > USER_MAX_BYTES)
        return fail(p, PARSE_INVALID_USER_ID, "\"%s\" is longer than %d bytes", name,
                    USER_MAX_BYTES), -1;
    if (memchr(s, '\0', len))
        return fail(p, PARSE_INVALID_USER_ID, "\"%s\" contains a NUL character", name), -1;
    if (!utf8_valid(s, len))
        return fail(p, PARSE_INVALID_UTF8, "\"%s\" is not valid UTF-8", name), -1;
    return 0;
}

static const char *time_example(time_format f)
{
    switch (f) {
    case TIME_ISO8601: return "an ISO-8601 time such as 2023-02-20T03:03:20";
    case TIME_EPOCH_S: return "epoch seconds such as 1676862200 or \"1676862200.5\"";
    case TIME_EPOCH_MS: return "epoch milliseconds such as 1676862200000";
    case TIME_EPOCH_US: return "epoch microseconds such as 1676862200000000";
    case TIME_EPOCH_NS: return "epoch nanoseconds such as 1676862200000000000";
    }
    return "a time";
}

static const int time_decimals[] = {0, 0, 3, 6, 9};

/* The event time from a JSON value of kind 'n' (number) or 's' (string). */
static int parse_time(record_parser *p, char kind, const char *s, size_t len, int64_t *out)
{
    const char *name = field_name(p, FIELD_TIME);
    time_format f = p->m.time_format;
    if (f == TIME_ISO8601) {
        if (kind != 's') return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be a string", name), -1;
        if (parse_iso8601_us(s, len, out))
            return fail(p, PARSE_BAD_EVENT_TIME, "\"%s\" is not %s", name, time_example(f)), -1;
        return 0;
    }
    if (kind != 's' && kind != 'n')
        return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be a number or a numeric string",
                    name), -1;
    if (parse_epoch_us(s, len, time_decimals[f], out))
        return fail(p, PARSE_BAD_EVENT_TIME, "\"%s\" is not %s (no exponent; years 0000-9999)",
                    name, time_example(f)), -1;
    return 0;
}

/* The value of field f. kind: 'n' number, 's' string, 'o' other (bool,
 * null, object, array). */
static int field_value(record_parser *p, int f, char kind, const char *s, size_t len)
{
    if (f == FIELD_USER) {
        if (p->m.user_type == USER_INT) {
            if (kind != 'n')
                return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be an integer",
                            field_name(p, f));
            return parse_user_int(p, s, len, &p->user_id) == 0;
        }
        if (kind != 's')
            return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be a string (--user-type string)",
                        field_name(p, f));
        if (check_user_string(p, s, len)) return 0;
        if (unpaired_surrogate(p))
            return fail(p, PARSE_INVALID_UTF8, "\"%s\" has an unpaired surrogate escape",
                        field_name(p, f));
        p->user_id = 0;
        buf_reset(&p->user);
        buf_append(&p->user, s, len);
        return 1;
    }
    if (f == FIELD_TIME) return parse_time(p, kind, s, len, &p->event_time_us) == 0;
    if (kind != 's') return fail(p, PARSE_MISTYPED_FIELD, "\"%s\" must be a string", field_name(p, f));
    if (memchr(s, '\0', len))
        return fail(p, PARSE_INVALID_PAGE, "\"%s\" contains a NUL character", field_name(p, f));
    if (len > UINT32_MAX) return fail(p, PARSE_INVALID_PAGE, "\"%s\" is too long", field_name(p, f));
    /* yajl lets encoded surrogates through; every sink needs strict UTF-8. */
    if (!utf8_valid(s, len))
        return fail(p, PARSE_INVALID_UTF8, "\"%s\" is not valid UTF-8", field_name(p, f));
    if (unpaired_surrogate(p))
        return fail(p, PARSE_INVALID_UTF8, "\"%s\" has an unpaired surrogate escape",
                    field_name(p, f));
    buf_reset(&p->page);
    buf_append(&p->page, s, len);
    return 1;
}

/* Which pointers select the value starting now: those of the enclosing
 * object's last key, or of the enclosing array whose token is this index. */
static unsigned selecting(record_parser *p)
{
    if (p->depth == 0 || p->depth > MAX_FRAMES) return 0;
    frame *fr = &p->frames[p->depth - 1];
    if (!fr->mask) return 0;
    if (!fr->is_array) {
        unsigned m = p->pending;
        p->pending = 0;
        return m;
    }
    int64_t i = fr->index++;
    unsigned m = 0;
    for (int f = 0; f < FIELD_COUNT; f++)
        if ((fr->mask >> f & 1) && p->m.field[f].index[p->depth - 1] == i) m |= 1u << f;
    return m;
}

/* A value at depth >= 1 selected by the pointers in sel: the end of a
 * pointer takes it as its field; a container passes the others down. */
static int selected_value(record_parser *p, unsigned sel, char kind, const char *s, size_t len)
{
    for (int f = 0; f < FIELD_COUNT; f++) {
        if (!(sel >> f & 1) || p->m.field[f].n != (uint32_t)p->depth) continue;
        p->seen |= 1u << f;
        if (!field_value(p, f, kind, s, len)) return 0;
    }
    return 1;
}

/* The mask of pointers that go on below a container opened at p->depth. */
static unsigned going_deeper(const record_parser *p, unsigned sel)
{
    unsigned m = 0;
    for (int f = 0; f < FIELD_COUNT; f++)
        if ((sel >> f & 1) && p->m.field[f].n > (uint32_t)p->depth) m |= 1u << f;
    return m;
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
    unsigned sel = selecting(p);
    return sel ? selected_value(p, sel, kind, s, len) : 1;
}

/* A container opens: at the top, the record itself; below, a value that
 * some pointer may select (then it is mistyped) or run through. */
static int open_container(record_parser *p, int is_array)
{
    unsigned down;
    if (p->depth == 0) {
        if (is_array) return top_level_non_object(p);
        if (p->top_values++ > 0)
            return fail(p, PARSE_INVALID_JSON, "%s", "more than one JSON value on the line");
        down = p->wanted;
    } else {
        unsigned sel = selecting(p);
        if (sel && !selected_value(p, sel, 'o', NULL, 0)) return 0;
        down = going_deeper(p, sel);
    }
    if (p->depth == PARSE_MAX_DEPTH)
        return fail(p, PARSE_TOO_DEEP, "objects and arrays nested more than %d deep",
                    PARSE_MAX_DEPTH);
    if (p->depth < MAX_FRAMES)
        p->frames[p->depth] = (frame){.mask = down, .seen = 0, .index = 0, .is_array = is_array};
    p->depth++;
    return 1;
}

static int cb_null(void *ctx) { return on_scalar(ctx, 'o', NULL, 0); }
static int cb_bool(void *ctx, int v) { (void)v; return on_scalar(ctx, 'o', NULL, 0); }
static int cb_number(void *ctx, const char *s, size_t len) { return on_scalar(ctx, 'n', s, len); }
static int cb_string(void *ctx, const unsigned char *s, size_t len)
{
    return on_scalar(ctx, 's', (const char *)s, len);
}

static int cb_start_map(void *ctx) { return open_container(ctx, 0); }

static int cb_map_key(void *ctx, const unsigned char *key, size_t len)
{
    record_parser *p = ctx;
    p->pending = 0;
    if (p->depth > MAX_FRAMES) return 1;
    frame *fr = &p->frames[p->depth - 1];
    if (!fr->mask) return 1;
    unsigned m = 0;
    for (int f = 0; f < FIELD_COUNT; f++) {
        const json_pointer *ptr = &p->m.field[f];
        int d = p->depth - 1;
        if ((fr->mask >> f & 1) && ptr->len[d] == len && memcmp(ptr->store + ptr->off[d], key, len) == 0)
            m |= 1u << f;
    }
    /* A key on a pointer's path met twice in one object: which value was
     * meant is ambiguous. */
    if (m & fr->seen) {
        int f = __builtin_ctz(m & fr->seen);
        if (p->m.field[f].n == (uint32_t)p->depth)
            return fail(p, PARSE_DUPLICATE_FIELD, "field \"%s\" appears twice", field_name(p, f));
        return fail(p, PARSE_DUPLICATE_FIELD, "key \"%.*s\" on the path of \"%s\" appears twice",
                    (int)(len > 64 ? 64 : len), (const char *)key, p->m.field[f].text);
    }
    fr->seen |= m;
    p->pending = m;
    return 1;
}

static int cb_end_map(void *ctx)
{
    record_parser *p = ctx;
    if (--p->depth == 0) p->end = yajl_get_bytes_consumed(p->h);
    return 1;
}

static int cb_start_array(void *ctx) { return open_container(ctx, 1); }

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

/* The end of a JSON number's text that parse_epoch_us reads
 * (-?(0|[1-9][0-9]*)(.[0-9]+)?), or NULL when it is not one (an exponent,
 * a leading zero: yajl's to judge and word). */
static inline const char *plain_number_end(const char *c, const char *e)
{
    c += c < e && *c == '-';
    if (c == e || *c < '0' || *c > '9') return NULL;
    if (*c == '0' && c + 1 < e && c[1] >= '0' && c[1] <= '9') return NULL; /* 01 */
    while (c < e && *c >= '0' && *c <= '9') c++;
    if (c < e && *c == '.') {
        const char *d = ++c;
        while (c < e && *c >= '0' && *c <= '9') c++;
        if (c == d) return NULL;
    }
    if (c < e && (*c == 'e' || *c == 'E' || *c == '.')) return NULL;
    return c;
}

/* The end of any JSON number (RFC 8259 grammar), or NULL. */
static inline const char *json_number_end(const char *c, const char *e)
{
    c += c < e && *c == '-';
    if (c == e || *c < '0' || *c > '9') return NULL;
    if (*c == '0') c++;
    else while (c < e && *c >= '0' && *c <= '9') c++;
    if (c < e && *c == '.') {
        const char *d = ++c;
        while (c < e && *c >= '0' && *c <= '9') c++;
        if (c == d) return NULL;
    }
    if (c < e && (*c == 'e' || *c == 'E')) {
        c++;
        if (c < e && (*c == '+' || *c == '-')) c++;
        const char *d = c;
        while (c < e && *c >= '0' && *c <= '9') c++;
        if (c == d) return NULL;
    }
    return c;
}

#define FAST_MAX_DEPTH 32 /* deeper records are yajl's */

/* Skips a value the mapping does not name, checking that it is JSON of the
 * plain kind (strings without escapes or non-ASCII); NULL otherwise. */
static const char *skip_value(const char *c, const char *e, int depth)
{
    if (c == e || depth > FAST_MAX_DEPTH) return NULL;
    switch (*c) {
    case '"':
        c = plain_string_end(c + 1, e);
        return c ? c + 1 : NULL;
    case '{':
    case '[': {
        char close = *c == '{' ? '}' : ']';
        c = skip_ws(c + 1, e);
        if (c < e && *c == close) return c + 1;
        for (;;) {
            if (close == '}') {
                if (c == e || *c != '"' || !(c = plain_string_end(c + 1, e))) return NULL;
                c = skip_ws(c + 1, e);
                if (c == e || *c++ != ':') return NULL;
                c = skip_ws(c, e);
            }
            if (!(c = skip_value(c, e, depth + 1))) return NULL;
            c = skip_ws(c, e);
            if (c == e) return NULL;
            if (*c == close) return c + 1;
            if (*c++ != ',') return NULL;
            c = skip_ws(c, e);
        }
    }
    case 't': return e - c >= 4 && memcmp(c, "true", 4) == 0 ? c + 4 : NULL;
    case 'f': return e - c >= 5 && memcmp(c, "false", 5) == 0 ? c + 5 : NULL;
    case 'n': return e - c >= 4 && memcmp(c, "null", 4) == 0 ? c + 4 : NULL;
    default: return json_number_end(c, e);
    }
}

/* The value of field f at c, of the plain kind, into *out; NULL when it is
 * not (yajl's to judge and word). */
static const char *fast_field(record_parser *p, int f, const char *c, const char *e, visit *out)
{
    if (f == FIELD_USER && p->m.user_type == USER_INT) {
        int neg = *c == '-';
        c += neg;
        if (c == e || *c < '0' || *c > '9') return NULL;
        if (*c == '0' && c + 1 < e && c[1] >= '0' && c[1] <= '9') return NULL; /* 01 */
        uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (; c < e && *c >= '0' && *c <= '9'; c++) {
            unsigned d = (unsigned)(*c - '0');
            if (v > (limit - d) / 10) return NULL;
            v = v * 10 + d;
        }
        out->user_id = neg ? (int64_t)(0 - v) : (int64_t)v;
        return c;
    }
    if (f == FIELD_TIME && p->m.time_format != TIME_ISO8601 && *c != '"') {
        const char *v = c;
        if (!(c = plain_number_end(c, e))) return NULL;
        if (parse_epoch_us(v, (size_t)(c - v), time_decimals[p->m.time_format], &out->event_time_us))
            return NULL;
        return c;
    }
    if (*c++ != '"') return NULL;
    const char *v = c;
    if (!(c = plain_string_end(c, e))) return NULL;
    size_t len = (size_t)(c++ - v);
    if (f == FIELD_PAGE) {
        out->page = v; /* in the record, valid as long as it is */
        out->page_len = (uint32_t)len;
    } else if (f == FIELD_USER) {
        if (len == 0 || len > USER_MAX_BYTES) return NULL;
        out->user_id = 0; /* the engine's to assign */
        out->user = v;
        out->user_len = (uint32_t)len;
    } else if (p->m.time_format == TIME_ISO8601
                   ? parse_iso8601_us(v, len, &out->event_time_us)
                   : parse_epoch_us(v, len, time_decimals[p->m.time_format], &out->event_time_us)) {
        return NULL;
    }
    return c;
}

/* The object at c (depth tokens down the pointers in sel, which all go on
 * below it): its keys matched against the pointers' next tokens, the values
 * they select taken or descended into, the others skipped. */
static const char *fast_object(record_parser *p, const char *c, const char *e, int depth,
                               unsigned sel, unsigned *seen, visit *out)
{
    if (c == e || *c++ != '{' || depth >= FAST_MAX_DEPTH) return NULL;
    unsigned here = 0; /* pointers whose key this object had */
    c = skip_ws(c, e);
    if (c < e && *c == '}') return c + 1;
    for (;;) {
        if (c == e || *c++ != '"') return NULL;
        const char *key = c;
        if (!(c = plain_string_end(c, e))) return NULL;
        size_t key_len = (size_t)(c - key);
        c = skip_ws(c + 1, e);
        if (c == e || *c++ != ':') return NULL;
        c = skip_ws(c, e);
        if (c == e) return NULL;
        unsigned next = 0;
        for (int f = 0; f < FIELD_COUNT; f++) {
            const json_pointer *ptr = &p->m.field[f];
            if ((sel >> f & 1) && ptr->len[depth] == key_len &&
                memcmp(ptr->store + ptr->off[depth], key, key_len) == 0)
                next |= 1u << f;
        }
        if (next & here) return NULL; /* a key on a path twice: yajl words it */
        here |= next;
        unsigned leaf = 0, deeper = 0;
        for (int f = 0; f < FIELD_COUNT; f++)
            if (next >> f & 1) {
                if (p->m.field[f].n == (uint32_t)depth + 1) leaf |= 1u << f;
                else deeper |= 1u << f;
            }
        if (leaf && deeper) return NULL; /* a value both taken and descended into */
        if (leaf) {
            int f = __builtin_ctz(leaf);
            if (leaf != 1u << f) return NULL; /* two fields on one value */
            if (!(c = fast_field(p, f, c, e, out))) return NULL;
            *seen |= leaf;
        } else if (deeper) {
            if (!(c = fast_object(p, c, e, depth + 1, deeper, seen, out))) return NULL;
        } else if (!(c = skip_value(c, e, depth + 1))) {
            return NULL;
        }
        c = skip_ws(c, e);
        if (c == e) return NULL;
        if (*c == '}') return c + 1;
        if (*c++ != ',') return NULL;
        c = skip_ws(c, e);
    }
}

/* The default layout and other one-token mappings: an object of exactly
 * the three fields (any other key is yajl's, as is the nested walk below:
 * this loop is the fastest for the default layout). 1 and *out, else 0. */
static int fast_parse_flat(record_parser *p, const raw_record *r, visit *out)
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
        int f = 0;
        for (; f < FIELD_COUNT; f++) {
            const json_pointer *ptr = &p->m.field[f];
            if ((p->wanted >> f & 1) && ptr->len[0] == key_len &&
                memcmp(ptr->store, key, key_len) == 0)
                break;
        }
        if (f == FIELD_COUNT) return 0;
        if (seen & (1u << f)) return 0;
        seen |= 1u << f;
        if (f == FIELD_USER && p->m.user_type == USER_INT) {
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
        } else if (f == FIELD_TIME && p->m.time_format != TIME_ISO8601 && *c != '"') {
            const char *v = c;
            if (!(c = plain_number_end(c, e))) return 0;
            if (parse_epoch_us(v, (size_t)(c - v), time_decimals[p->m.time_format],
                               &out->event_time_us))
                return 0;
        } else {
            if (*c++ != '"') return 0;
            const char *v = c;
            if (!(c = plain_string_end(c, e))) return 0;
            size_t len = (size_t)(c++ - v);
            if (f == FIELD_PAGE) {
                out->page = v; /* in the record, valid as long as it is */
                out->page_len = (uint32_t)len;
            } else if (f == FIELD_USER) {
                if (len == 0 || len > USER_MAX_BYTES) return 0;
                out->user_id = 0; /* the engine's to assign */
                out->user = v;
                out->user_len = (uint32_t)len;
            } else if (p->m.time_format == TIME_ISO8601
                           ? parse_iso8601_us(v, len, &out->event_time_us)
                           : parse_epoch_us(v, len, time_decimals[p->m.time_format],
                                            &out->event_time_us)) {
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
    if (skip_ws(c, e) != e || seen != p->wanted) return 0;
    out->pos = r->pos;
    return 1;
}

/* 1 and *out filled if r is a valid visit of the plain kind, else 0: every
 * string without escapes or non-ASCII, the mapped fields on paths of objects
 * (an array index is yajl's), of the types the mapping wants. */
static int fast_parse(record_parser *p, const raw_record *r, visit *out)
{
    const char *e = r->data + r->len, *c = skip_ws(r->data, e);
    unsigned seen = 0;
    if (!(c = fast_object(p, c, e, 0, p->wanted, &seen, out))) return 0;
    if (skip_ws(c, e) != e || seen != p->wanted) return 0;
    out->pos = r->pos;
    return 1;
}

/* The fields a Kafka record carries outside its value: the key as the
 * user, the record timestamp as the event time. */
static parse_error from_kafka(record_parser *p, const raw_record *r, visit *out)
{
    if (p->m.user_from_key) {
        if (!r->key) {
            fail(p, PARSE_MISSING_FIELD, "%s", "the Kafka record has no key (--user-from key)");
            return p->err;
        }
        if (p->m.user_type == USER_INT) {
            if (parse_user_int(p, r->key, r->key_len, &out->user_id)) return p->err;
        } else {
            if (check_user_string(p, r->key, r->key_len)) return p->err;
            out->user_id = 0;
            out->user = r->key; /* valid as long as the record's key is */
            out->user_len = (uint32_t)r->key_len;
        }
    }
    if (p->m.time_from_kafka) {
        /* within years 0000-9999, like every other event time */
        if (!r->has_ts || r->pos.append_ts_ms < INT64_C(-62167219200000) ||
            r->pos.append_ts_ms > INT64_C(253402300799999)) {
            fail(p, PARSE_BAD_EVENT_TIME, "%s", "the Kafka record has no timestamp in years "
                 "0000-9999 (--time-from kafka)");
            return p->err;
        }
        out->event_time_us = r->pos.append_ts_ms * 1000;
    }
    return PARSE_OK;
}

void record_parser_set_fast_path(record_parser *p, int on) { p->fast_path = on; }

size_t record_parser_peak_bytes(const record_parser *p) { return p->arena.peak_bytes; }

record_parser *record_parser_new(const record_mapping *m)
{
    record_parser *p = xcalloc(1, sizeof *p);
    buf_init(&p->page);
    buf_init(&p->user);
    p->alloc_funcs = (yajl_alloc_funcs){arena_malloc, arena_realloc, arena_free, &p->arena};
    p->fast_path = 1;
    if (m) p->m = *m;
    else record_mapping_default(&p->m);
    p->wanted = (1u << FIELD_PAGE) | (p->m.user_from_key ? 0 : 1u << FIELD_USER) |
                (p->m.time_from_kafka ? 0 : 1u << FIELD_TIME);
    /* the fast paths follow pointers through objects only; flat: one token each */
    p->objects_only = 1;
    p->flat = 1;
    for (int f = 0; f < FIELD_COUNT; f++) {
        if ((p->wanted >> f & 1) && p->m.field[f].n != 1) p->flat = 0;
        for (uint32_t k = 0; (p->wanted >> f & 1) && k < p->m.field[f].n; k++)
            if (p->m.field[f].index[k] >= 0) p->objects_only = 0;
    }
    _Static_assert(FIELD_COUNT <= 8 * sizeof(unsigned), "a bit per field");
    return p;
}

void record_parser_free(record_parser *p)
{
    if (!p) return;
    arena_reset(&p->arena);
    buf_free(&p->page);
    buf_free(&p->user);
    free(p);
}

parse_error record_parse(record_parser *p, const raw_record *r, visit *out, char *detail,
                         size_t detail_len)
{
    p->depth = 0;
    p->top_values = 0;
    p->pending = 0;
    p->seen = 0;
    p->end = 0;
    p->err = PARSE_OK;
    p->detail = detail;
    p->detail_len = detail_len;
    p->raw = r->data;
    p->arena.peak_bytes = 0;
    if (detail_len) detail[0] = '\0';
    out->user = NULL;
    out->user_len = 0;

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
    if (p->fast_path && (p->flat ? fast_parse_flat(p, r, out)
                                 : p->objects_only && fast_parse(p, r, out)))
        return from_kafka(p, r, out);
    out->user = NULL;
    out->user_len = 0;
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
    for (int f = 0; f < FIELD_COUNT; f++)
        if ((p->wanted >> f & 1) && !(p->seen & (1u << f))) {
            snprintf(detail, detail_len, "missing field \"%s\"", field_name(p, f));
            return PARSE_MISSING_FIELD;
        }
    out->user_id = p->user_id;
    if (p->m.user_type == USER_STRING && !p->m.user_from_key) {
        out->user = (const char *)p->user.data;
        out->user_len = (uint32_t)p->user.len;
    }
    out->event_time_us = p->event_time_us;
    out->page = p->page.data ? (const char *)p->page.data : "";
    out->page_len = (uint32_t)p->page.len;
    out->pos = r->pos;
    return from_kafka(p, r, out);
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
    case PARSE_INVALID_USER_ID: return "invalid_user_id";
    case PARSE_TOO_DEEP: return "too_deep";
    }
    return "unknown";
}
