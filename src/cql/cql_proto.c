/*
 * cql_proto.c - CQL native protocol v4 encoding and decoding (see cql_proto.h).
 *
 * Pure functions over memory: no sockets, no clocks, no globals. The decoder
 * treats every frame as hostile (it is fuzzed): counts are checked against the
 * bytes actually left before anything is allocated for them, type options
 * nest at most CQL_MAX_TYPE_DEPTH deep, and every read goes through the
 * bounds-checked reader of src/common/buf.h.
 */
#include "cql/cql_proto.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xalloc.h"

#define CQL_MAX_TYPE_DEPTH 16

/* ---- names ---------------------------------------------------------------- */

const char *cql_opcode_name(int opcode)
{
    switch (opcode) {
    case CQL_OP_ERROR: return "ERROR";
    case CQL_OP_STARTUP: return "STARTUP";
    case CQL_OP_READY: return "READY";
    case CQL_OP_AUTHENTICATE: return "AUTHENTICATE";
    case CQL_OP_OPTIONS: return "OPTIONS";
    case CQL_OP_SUPPORTED: return "SUPPORTED";
    case CQL_OP_QUERY: return "QUERY";
    case CQL_OP_RESULT: return "RESULT";
    case CQL_OP_PREPARE: return "PREPARE";
    case CQL_OP_EXECUTE: return "EXECUTE";
    case CQL_OP_REGISTER: return "REGISTER";
    case CQL_OP_EVENT: return "EVENT";
    case CQL_OP_BATCH: return "BATCH";
    case CQL_OP_AUTH_CHALLENGE: return "AUTH_CHALLENGE";
    case CQL_OP_AUTH_RESPONSE: return "AUTH_RESPONSE";
    case CQL_OP_AUTH_SUCCESS: return "AUTH_SUCCESS";
    default: return "UNKNOWN";
    }
}

static const char *const consistency_names[] = {
    "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM",
    "EACH_QUORUM", "SERIAL", "LOCAL_SERIAL", "LOCAL_ONE",
};

const char *cql_consistency_name(int c)
{
    if (c < 0 || (size_t)c >= sizeof consistency_names / sizeof *consistency_names)
        return "UNKNOWN";
    return consistency_names[c];
}

int cql_consistency_parse(const char *s)
{
    for (size_t i = 0; i < sizeof consistency_names / sizeof *consistency_names; i++)
        if (strcasecmp(s, consistency_names[i]) == 0) return (int)i;
    return -1;
}

const char *cql_error_name(int32_t code)
{
    switch (code) {
    case CQL_ERR_SERVER: return "Server_error";
    case CQL_ERR_PROTOCOL: return "Protocol_error";
    case CQL_ERR_BAD_CREDENTIALS: return "Bad_credentials";
    case CQL_ERR_UNAVAILABLE: return "Unavailable";
    case CQL_ERR_OVERLOADED: return "Overloaded";
    case CQL_ERR_IS_BOOTSTRAPPING: return "Is_bootstrapping";
    case CQL_ERR_TRUNCATE: return "Truncate_error";
    case CQL_ERR_WRITE_TIMEOUT: return "Write_timeout";
    case CQL_ERR_READ_TIMEOUT: return "Read_timeout";
    case CQL_ERR_READ_FAILURE: return "Read_failure";
    case CQL_ERR_FUNCTION_FAILURE: return "Function_failure";
    case CQL_ERR_WRITE_FAILURE: return "Write_failure";
    case CQL_ERR_SYNTAX: return "Syntax_error";
    case CQL_ERR_UNAUTHORIZED: return "Unauthorized";
    case CQL_ERR_INVALID: return "Invalid";
    case CQL_ERR_CONFIG: return "Config_error";
    case CQL_ERR_ALREADY_EXISTS: return "Already_exists";
    case CQL_ERR_UNPREPARED: return "Unprepared";
    default: return "Unknown_error";
    }
}

/* ---- header --------------------------------------------------------------- */

static int header_decode(const unsigned char *p, cql_header *h, uint8_t want_version,
                         char *err, size_t errlen)
{
    h->version = p[0];
    h->flags = p[1];
    h->stream = (int16_t)(uint16_t)((unsigned)p[2] << 8 | p[3]);
    h->opcode = p[4];
    h->length = (uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8];
    if (h->version != want_version) {
        if ((h->version & 0x7f) != 4)
            snprintf(err, errlen,
                     "peer speaks CQL protocol version %u, not 4 (is this a CQL port?)",
                     (unsigned)(h->version & 0x7f));
        else
            snprintf(err, errlen, "frame has the wrong direction bit (version byte 0x%02x)",
                     h->version);
        return -1;
    }
    if (h->length > CQL_MAX_BODY) {
        snprintf(err, errlen, "frame body of %u bytes exceeds the protocol's 256 MB limit",
                 (unsigned)h->length);
        return -1;
    }
    return 0;
}

int cql_header_decode(const unsigned char *p, cql_header *h, char *err, size_t errlen)
{
    return header_decode(p, h, CQL_VERSION_RESPONSE, err, errlen);
}

int cql_request_header_decode(const unsigned char *p, cql_header *h, char *err, size_t errlen)
{
    return header_decode(p, h, CQL_VERSION_REQUEST, err, errlen);
}

size_t cql_frame_begin(buf *b, uint8_t opcode, int16_t stream, uint8_t flags)
{
    size_t start = b->len;
    unsigned char hdr[CQL_HEADER_SIZE] = {CQL_VERSION_REQUEST, flags,
                                          (unsigned char)((uint16_t)stream >> 8),
                                          (unsigned char)stream, opcode, 0, 0, 0, 0};
    buf_append(b, hdr, sizeof hdr);
    return start;
}

void cql_frame_end(buf *b, size_t start)
{
    size_t body = b->len - start - CQL_HEADER_SIZE;
    unsigned char *p = b->data + start + 5;
    p[0] = (unsigned char)(body >> 24);
    p[1] = (unsigned char)(body >> 16);
    p[2] = (unsigned char)(body >> 8);
    p[3] = (unsigned char)body;
}

void cql_frame_set_stream(unsigned char *frame, int16_t stream)
{
    frame[2] = (unsigned char)((uint16_t)stream >> 8);
    frame[3] = (unsigned char)stream;
}

int cql_frame_split(const unsigned char *p, size_t len, cql_header *h, size_t *frame_len,
                    char *err, size_t errlen)
{
    if (len < CQL_HEADER_SIZE) return 0;
    if (cql_header_decode(p, h, err, errlen)) return -1;
    size_t total = CQL_HEADER_SIZE + (size_t)h->length;
    if (len < total) return 0;
    *frame_len = total;
    return 1;
}

/* ---- writers --------------------------------------------------------------- */

void cql_put_byte(buf *b, uint8_t v) { buf_append_byte(b, v); }

void cql_put_short(buf *b, uint16_t v)
{
    unsigned char o[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, o, 2);
}

void cql_put_int(buf *b, int32_t v)
{
    uint32_t u = (uint32_t)v;
    unsigned char o[4] = {(unsigned char)(u >> 24), (unsigned char)(u >> 16),
                          (unsigned char)(u >> 8), (unsigned char)u};
    buf_append(b, o, 4);
}

void cql_put_long(buf *b, int64_t v)
{
    uint64_t u = (uint64_t)v;
    unsigned char o[8];
    for (int i = 0; i < 8; i++) o[i] = (unsigned char)(u >> (56 - 8 * i));
    buf_append(b, o, 8);
}

void cql_put_string(buf *b, const char *s, size_t len)
{
    if (len > 0xffff) len = 0xffff; /* callers validate; never emit a wrong length */
    cql_put_short(b, (uint16_t)len);
    buf_append(b, s, len);
}

void cql_put_long_string(buf *b, const char *s, size_t len)
{
    cql_put_int(b, (int32_t)len);
    buf_append(b, s, len);
}

void cql_put_short_bytes(buf *b, const void *p, size_t len)
{
    if (len > 0xffff) len = 0xffff;
    cql_put_short(b, (uint16_t)len);
    buf_append(b, p, len);
}

void cql_put_bytes(buf *b, const void *p, int32_t len)
{
    if (len < 0) {
        cql_put_int(b, -1);
        return;
    }
    cql_put_int(b, len);
    buf_append(b, p, (size_t)len);
}

void cql_put_string_list(buf *b, const char *const *items, size_t n)
{
    cql_put_short(b, (uint16_t)n);
    for (size_t i = 0; i < n; i++) cql_put_string(b, items[i], strlen(items[i]));
}

void cql_put_string_map(buf *b, const char *const *kv, size_t npairs)
{
    cql_put_short(b, (uint16_t)npairs);
    for (size_t i = 0; i < 2 * npairs; i++) cql_put_string(b, kv[i], strlen(kv[i]));
}

/* ---- readers --------------------------------------------------------------- */

int cql_get_byte(reader *r, uint8_t *out)
{
    const unsigned char *p;
    if (reader_bytes(r, &p, 1)) return -1;
    *out = p[0];
    return 0;
}

int cql_get_short(reader *r, uint16_t *out)
{
    const unsigned char *p;
    if (reader_bytes(r, &p, 2)) return -1;
    *out = (uint16_t)((unsigned)p[0] << 8 | p[1]);
    return 0;
}

int cql_get_int(reader *r, int32_t *out)
{
    const unsigned char *p;
    if (reader_bytes(r, &p, 4)) return -1;
    *out = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
    return 0;
}

int cql_get_long(reader *r, int64_t *out)
{
    const unsigned char *p;
    if (reader_bytes(r, &p, 8)) return -1;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = u << 8 | p[i];
    *out = (int64_t)u;
    return 0;
}

static char *dup_bytes(const unsigned char *p, size_t n)
{
    char *s = xmalloc(n + 1);
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

int cql_get_string(reader *r, char **out)
{
    uint16_t n;
    const unsigned char *p;
    *out = NULL;
    if (cql_get_short(r, &n) || reader_bytes(r, &p, n)) return -1;
    *out = dup_bytes(p, n);
    return 0;
}

int cql_get_long_string(reader *r, char **out)
{
    int32_t n;
    const unsigned char *p;
    *out = NULL;
    if (cql_get_int(r, &n)) return -1;
    if (n < 0) {
        r->bad = 1;
        return -1;
    }
    if (reader_bytes(r, &p, (size_t)n)) return -1;
    *out = dup_bytes(p, (size_t)n);
    return 0;
}

int cql_get_bytes(reader *r, const unsigned char **p, int32_t *len)
{
    *p = NULL;
    if (cql_get_int(r, len)) return -1;
    if (*len < 0) {
        *len = -1;
        return 0;
    }
    return reader_bytes(r, p, (size_t)*len);
}

int cql_get_short_bytes(reader *r, const unsigned char **p, uint16_t *len)
{
    *p = NULL;
    if (cql_get_short(r, len)) return -1;
    return reader_bytes(r, p, *len);
}

int cql_get_string_list(reader *r, char ***out, size_t *n)
{
    uint16_t cnt;
    *out = NULL;
    *n = 0;
    if (cql_get_short(r, &cnt)) return -1;
    if ((size_t)cnt * 2 > reader_left(r)) { /* each [string] takes at least 2 bytes */
        r->bad = 1;
        return -1;
    }
    char **list = xcalloc(cnt ? cnt : 1, sizeof *list);
    *out = list;
    for (uint16_t i = 0; i < cnt; i++) {
        if (cql_get_string(r, &list[i])) return -1;
        *n = (size_t)i + 1;
    }
    return 0;
}

static void free_string_list(char **list, size_t n)
{
    if (!list) return;
    for (size_t i = 0; i < n; i++) free(list[i]);
    free(list);
}

/* ---- values ---------------------------------------------------------------- */

void cql_values_init(cql_values *v)
{
    buf_init(&v->b);
    v->n = 0;
}

void cql_values_free(cql_values *v)
{
    buf_free(&v->b);
    v->n = 0;
}

void cql_values_reset(cql_values *v)
{
    buf_reset(&v->b);
    v->n = 0;
}

void cql_values_null(cql_values *v)
{
    cql_put_int(&v->b, -1);
    v->n++;
}

void cql_values_unset(cql_values *v)
{
    cql_put_int(&v->b, -2);
    v->n++;
}

void cql_values_bigint(cql_values *v, int64_t x)
{
    cql_put_int(&v->b, 8);
    cql_put_long(&v->b, x);
    v->n++;
}

void cql_values_int(cql_values *v, int32_t x)
{
    cql_put_int(&v->b, 4);
    cql_put_int(&v->b, x);
    v->n++;
}

void cql_values_boolean(cql_values *v, int x)
{
    cql_put_int(&v->b, 1);
    cql_put_byte(&v->b, x ? 1 : 0);
    v->n++;
}

void cql_values_text(cql_values *v, const char *s, size_t len)
{
    cql_put_bytes(&v->b, s, (int32_t)len);
    v->n++;
}

void cql_values_timestamp(cql_values *v, int64_t ms) { cql_values_bigint(v, ms); }

size_t cql_values_collection_begin(cql_values *v, int32_t n_elements)
{
    size_t at = v->b.len;
    cql_put_int(&v->b, 0); /* the value's length, patched by _end */
    cql_put_int(&v->b, n_elements);
    v->n++;
    return at;
}

void cql_values_collection_text(cql_values *v, const char *s, size_t len)
{
    cql_put_bytes(&v->b, s, (int32_t)len);
}

void cql_values_collection_end(cql_values *v, size_t at)
{
    uint32_t n = (uint32_t)(v->b.len - at - 4);
    unsigned char *p = v->b.data + at;
    p[0] = (unsigned char)(n >> 24);
    p[1] = (unsigned char)(n >> 16);
    p[2] = (unsigned char)(n >> 8);
    p[3] = (unsigned char)n;
}

/* ---- requests -------------------------------------------------------------- */

void cql_encode_startup(buf *b, int16_t stream, const char *const *kv, size_t n_pairs)
{
    size_t f = cql_frame_begin(b, CQL_OP_STARTUP, stream, 0);
    cql_put_string_map(b, kv, n_pairs);
    cql_frame_end(b, f);
}

void cql_encode_options(buf *b, int16_t stream)
{
    size_t f = cql_frame_begin(b, CQL_OP_OPTIONS, stream, 0);
    cql_frame_end(b, f);
}

void cql_encode_auth_response(buf *b, int16_t stream, const void *token, int32_t len)
{
    size_t f = cql_frame_begin(b, CQL_OP_AUTH_RESPONSE, stream, 0);
    cql_put_bytes(b, token, len);
    cql_frame_end(b, f);
}

/* <consistency><flags>[<n><value>...][<page_size>][<paging_state>][<serial>][<ts>] */
static void put_query_params(buf *b, const cql_query_params *qp)
{
    uint8_t flags = 0;
    if (qp->values) flags |= CQL_QFLAG_VALUES;
    if (qp->skip_metadata) flags |= CQL_QFLAG_SKIP_METADATA;
    if (qp->page_size > 0) flags |= CQL_QFLAG_PAGE_SIZE;
    if (qp->paging_state) flags |= CQL_QFLAG_PAGING_STATE;
    if (qp->serial_consistency) flags |= CQL_QFLAG_SERIAL_CONSISTENCY;
    if (qp->has_timestamp) flags |= CQL_QFLAG_DEFAULT_TIMESTAMP;
    cql_put_short(b, qp->consistency);
    cql_put_byte(b, flags);
    if (qp->values) {
        cql_put_short(b, qp->values->n);
        buf_append(b, qp->values->b.data, qp->values->b.len);
    }
    if (qp->page_size > 0) cql_put_int(b, qp->page_size);
    if (qp->paging_state) cql_put_bytes(b, qp->paging_state, qp->paging_state_len);
    if (qp->serial_consistency) cql_put_short(b, qp->serial_consistency);
    if (qp->has_timestamp) cql_put_long(b, qp->timestamp);
}

void cql_encode_query(buf *b, int16_t stream, const char *query, size_t qlen,
                      const cql_query_params *qp)
{
    size_t f = cql_frame_begin(b, CQL_OP_QUERY, stream, 0);
    cql_put_long_string(b, query, qlen);
    put_query_params(b, qp);
    cql_frame_end(b, f);
}

void cql_encode_prepare(buf *b, int16_t stream, const char *query, size_t qlen)
{
    size_t f = cql_frame_begin(b, CQL_OP_PREPARE, stream, 0);
    cql_put_long_string(b, query, qlen);
    cql_frame_end(b, f);
}

void cql_encode_execute(buf *b, int16_t stream, const unsigned char *id, size_t idlen,
                        const cql_query_params *qp)
{
    size_t f = cql_frame_begin(b, CQL_OP_EXECUTE, stream, 0);
    cql_put_short_bytes(b, id, idlen);
    put_query_params(b, qp);
    cql_frame_end(b, f);
}

void cql_encode_register(buf *b, int16_t stream, const char *const *events, size_t n)
{
    size_t f = cql_frame_begin(b, CQL_OP_REGISTER, stream, 0);
    cql_put_string_list(b, events, n);
    cql_frame_end(b, f);
}

void cql_encode_batch(buf *b, int16_t stream, const cql_batch_item *items, size_t n,
                      const cql_batch_params *bp)
{
    size_t f = cql_frame_begin(b, CQL_OP_BATCH, stream, 0);
    cql_put_byte(b, bp->type);
    cql_put_short(b, (uint16_t)n);
    for (size_t i = 0; i < n; i++) {
        const cql_batch_item *it = &items[i];
        if (it->id) {
            cql_put_byte(b, 1);
            cql_put_short_bytes(b, it->id, it->id_len);
        } else {
            cql_put_byte(b, 0);
            cql_put_long_string(b, it->query, it->query_len);
        }
        if (it->values) {
            cql_put_short(b, it->values->n);
            buf_append(b, it->values->b.data, it->values->b.len);
        } else {
            cql_put_short(b, 0);
        }
    }
    uint8_t flags = 0;
    if (bp->serial_consistency) flags |= CQL_QFLAG_SERIAL_CONSISTENCY;
    if (bp->has_timestamp) flags |= CQL_QFLAG_DEFAULT_TIMESTAMP;
    cql_put_short(b, bp->consistency);
    cql_put_byte(b, flags);
    if (bp->serial_consistency) cql_put_short(b, bp->serial_consistency);
    if (bp->has_timestamp) cql_put_long(b, bp->timestamp);
    cql_frame_end(b, f);
}

void cql_sasl_plain(buf *out, const char *user, const char *password)
{
    buf_append_byte(out, 0);
    buf_append_str(out, user);
    buf_append_byte(out, 0);
    buf_append_str(out, password);
}

/* ---- types ------------------------------------------------------------------ */

static void type_free(cql_type *t)
{
    if (!t) return;
    for (uint16_t i = 0; i < t->n; i++) {
        if (t->sub) type_free(t->sub[i]);
        if (t->field_names) free(t->field_names[i]);
    }
    free(t->sub);
    free(t->field_names);
    free(t->custom);
    free(t->ks);
    free(t->name);
    free(t);
}

static int type_decode(reader *r, cql_type **out, int depth)
{
    uint16_t id;
    *out = NULL;
    if (depth > CQL_MAX_TYPE_DEPTH || cql_get_short(r, &id)) {
        r->bad = 1;
        return -1;
    }
    cql_type *t = xcalloc(1, sizeof *t);
    *out = t;
    t->id = id;
    switch (id) {
    case CQL_TYPE_CUSTOM: return cql_get_string(r, &t->custom);
    case CQL_TYPE_LIST:
    case CQL_TYPE_SET:
    case CQL_TYPE_MAP: {
        uint16_t n = id == CQL_TYPE_MAP ? 2 : 1;
        t->sub = xcalloc(n, sizeof *t->sub);
        for (uint16_t i = 0; i < n; i++) {
            t->n = (uint16_t)(i + 1);
            if (type_decode(r, &t->sub[i], depth + 1)) return -1;
        }
        return 0;
    }
    case CQL_TYPE_UDT:
    case CQL_TYPE_TUPLE: {
        uint16_t n;
        if (id == CQL_TYPE_UDT && (cql_get_string(r, &t->ks) || cql_get_string(r, &t->name)))
            return -1;
        if (cql_get_short(r, &n)) return -1;
        if ((size_t)n * 2 > reader_left(r)) { /* each field needs >= 2 bytes */
            r->bad = 1;
            return -1;
        }
        if (n == 0) return 0;
        t->sub = xcalloc(n, sizeof *t->sub);
        if (id == CQL_TYPE_UDT) t->field_names = xcalloc(n, sizeof *t->field_names);
        for (uint16_t i = 0; i < n; i++) {
            t->n = (uint16_t)(i + 1);
            if (id == CQL_TYPE_UDT && cql_get_string(r, &t->field_names[i])) return -1;
            if (type_decode(r, &t->sub[i], depth + 1)) return -1;
        }
        return 0;
    }
    default:
        if (id > CQL_TYPE_TINYINT || id == 0x000A) { /* 0x000A was text in v1/v2 */
            r->bad = 1;
            return -1;
        }
        return 0;
    }
}

void cql_type_format(const cql_type *t, buf *out)
{
    static const char *const native[] = {
        [CQL_TYPE_ASCII] = "ascii",       [CQL_TYPE_BIGINT] = "bigint",
        [CQL_TYPE_BLOB] = "blob",         [CQL_TYPE_BOOLEAN] = "boolean",
        [CQL_TYPE_COUNTER] = "counter",   [CQL_TYPE_DECIMAL] = "decimal",
        [CQL_TYPE_DOUBLE] = "double",     [CQL_TYPE_FLOAT] = "float",
        [CQL_TYPE_INT] = "int",           [CQL_TYPE_TIMESTAMP] = "timestamp",
        [CQL_TYPE_UUID] = "uuid",         [CQL_TYPE_VARCHAR] = "text",
        [CQL_TYPE_VARINT] = "varint",     [CQL_TYPE_TIMEUUID] = "timeuuid",
        [CQL_TYPE_INET] = "inet",         [CQL_TYPE_DATE] = "date",
        [CQL_TYPE_TIME] = "time",         [CQL_TYPE_SMALLINT] = "smallint",
        [CQL_TYPE_TINYINT] = "tinyint",
    };
    if (!t) {
        buf_append_str(out, "?");
        return;
    }
    switch (t->id) {
    case CQL_TYPE_CUSTOM: buf_printf(out, "'%s'", t->custom ? t->custom : ""); return;
    case CQL_TYPE_LIST:
    case CQL_TYPE_SET:
    case CQL_TYPE_MAP:
    case CQL_TYPE_TUPLE:
        buf_append_str(out, t->id == CQL_TYPE_LIST  ? "list<"
                            : t->id == CQL_TYPE_SET ? "set<"
                            : t->id == CQL_TYPE_MAP ? "map<"
                                                    : "tuple<");
        for (uint16_t i = 0; i < t->n; i++) {
            if (i) buf_append_str(out, ", ");
            cql_type_format(t->sub ? t->sub[i] : NULL, out);
        }
        buf_append_byte(out, '>');
        return;
    case CQL_TYPE_UDT: buf_printf(out, "%s.%s", t->ks ? t->ks : "", t->name ? t->name : ""); return;
    default:
        if (t->id < sizeof native / sizeof *native && native[t->id])
            buf_append_str(out, native[t->id]);
        else
            buf_printf(out, "type0x%04x", t->id);
    }
}

/* ---- metadata ------------------------------------------------------------- */

static void metadata_free(cql_metadata *m)
{
    if (m->cols) {
        for (int32_t i = 0; i < m->n_cols; i++) {
            free(m->cols[i].ks);
            free(m->cols[i].table);
            free(m->cols[i].name);
            type_free(m->cols[i].type);
        }
        free(m->cols);
    }
    free(m->pk);
    memset(m, 0, sizeof *m);
}

/* Rows metadata (4.2.5.2) or, with prepared != 0, Prepared bind metadata (4.2.5.4). */
static int metadata_decode(reader *r, cql_metadata *m, int prepared)
{
    m->paging_state_len = -1;
    if (cql_get_int(r, &m->flags) || cql_get_int(r, &m->n_cols)) return -1;
    if (m->n_cols < 0) goto bad;
    if (prepared) {
        if (cql_get_int(r, &m->n_pk)) return -1;
        if (m->n_pk < 0 || (size_t)m->n_pk * 2 > reader_left(r)) goto bad;
        if (m->n_pk) {
            m->pk = xcalloc((size_t)m->n_pk, sizeof *m->pk);
            for (int32_t i = 0; i < m->n_pk; i++)
                if (cql_get_short(r, &m->pk[i])) return -1;
        }
    } else if (m->flags & 0x0002) { /* Has_more_pages */
        if (cql_get_bytes(r, &m->paging_state, &m->paging_state_len)) return -1;
    }
    if (!prepared && (m->flags & 0x0004)) return 0; /* No_metadata */
    char *gks = NULL, *gtable = NULL;
    int global = m->flags & 0x0001;
    if (global && (cql_get_string(r, &gks) || cql_get_string(r, &gtable))) {
        free(gks);
        free(gtable);
        return -1;
    }
    /* A column spec takes at least 4 bytes (name + type id): bound the count
     * by what is left before allocating. */
    if ((size_t)m->n_cols * 4 > reader_left(r)) {
        free(gks);
        free(gtable);
        goto bad;
    }
    int rc = 0;
    if (m->n_cols) m->cols = xcalloc((size_t)m->n_cols, sizeof *m->cols);
    for (int32_t i = 0; i < m->n_cols && rc == 0; i++) {
        cql_column *c = &m->cols[i];
        if (global) {
            c->ks = xstrdup(gks);
            c->table = xstrdup(gtable);
        } else if (cql_get_string(r, &c->ks) || cql_get_string(r, &c->table)) {
            rc = -1;
            break;
        }
        if (cql_get_string(r, &c->name) || type_decode(r, &c->type, 0)) rc = -1;
    }
    free(gks);
    free(gtable);
    return rc;
bad:
    r->bad = 1;
    return -1;
}

/* ---- responses ------------------------------------------------------------- */

static int error_decode(reader *r, cql_error *e)
{
    if (cql_get_int(r, &e->code) || cql_get_string(r, &e->message)) return -1;
    switch (e->code) {
    case CQL_ERR_UNAVAILABLE:
        return cql_get_short(r, &e->consistency) || cql_get_int(r, &e->blockfor) ||
                       cql_get_int(r, &e->alive)
                   ? -1
                   : 0;
    case CQL_ERR_WRITE_TIMEOUT:
        return cql_get_short(r, &e->consistency) || cql_get_int(r, &e->received) ||
                       cql_get_int(r, &e->blockfor) || cql_get_string(r, &e->write_type)
                   ? -1
                   : 0;
    case CQL_ERR_READ_TIMEOUT:
        return cql_get_short(r, &e->consistency) || cql_get_int(r, &e->received) ||
                       cql_get_int(r, &e->blockfor) || cql_get_byte(r, &e->data_present)
                   ? -1
                   : 0;
    case CQL_ERR_READ_FAILURE:
        return cql_get_short(r, &e->consistency) || cql_get_int(r, &e->received) ||
                       cql_get_int(r, &e->blockfor) || cql_get_int(r, &e->num_failures) ||
                       cql_get_byte(r, &e->data_present)
                   ? -1
                   : 0;
    case CQL_ERR_WRITE_FAILURE:
        return cql_get_short(r, &e->consistency) || cql_get_int(r, &e->received) ||
                       cql_get_int(r, &e->blockfor) || cql_get_int(r, &e->num_failures) ||
                       cql_get_string(r, &e->write_type)
                   ? -1
                   : 0;
    case CQL_ERR_FUNCTION_FAILURE: {
        char **args = NULL;
        size_t n = 0;
        int rc = cql_get_string(r, &e->keyspace) || cql_get_string(r, &e->table) ||
                 cql_get_string_list(r, &args, &n);
        free_string_list(args, n);
        return rc ? -1 : 0;
    }
    case CQL_ERR_ALREADY_EXISTS:
        return cql_get_string(r, &e->keyspace) || cql_get_string(r, &e->table) ? -1 : 0;
    case CQL_ERR_UNPREPARED:
        return cql_get_short_bytes(r, &e->unprepared_id, &e->unprepared_id_len);
    default: return 0;
    }
}

static int schema_change_decode(reader *r, cql_response *out)
{
    if (cql_get_string(r, &out->change_type) || cql_get_string(r, &out->target) ||
        cql_get_string(r, &out->sc_keyspace))
        return -1;
    if (strcmp(out->target, "KEYSPACE") == 0) return 0;
    if (cql_get_string(r, &out->sc_name)) return -1;
    if (strcmp(out->target, "FUNCTION") == 0 || strcmp(out->target, "AGGREGATE") == 0) {
        char **args = NULL;
        size_t n = 0;
        int rc = cql_get_string_list(r, &args, &n);
        free_string_list(args, n);
        return rc;
    }
    return 0;
}

static int rows_decode(reader *r, cql_response *out)
{
    if (metadata_decode(r, &out->meta, 0) || cql_get_int(r, &out->n_rows)) return -1;
    if (out->n_rows < 0) {
        r->bad = 1;
        return -1;
    }
    size_t ncells = (size_t)out->n_rows * (size_t)out->meta.n_cols;
    if (out->meta.n_cols > 0 && ncells / (size_t)out->meta.n_cols != (size_t)out->n_rows) {
        r->bad = 1;
        return -1;
    }
    if (ncells * 4 > reader_left(r)) { /* every cell has a 4-byte length */
        r->bad = 1;
        return -1;
    }
    if (ncells == 0) return 0;
    out->cells = xcalloc(ncells, sizeof *out->cells);
    for (size_t i = 0; i < ncells; i++)
        if (cql_get_bytes(r, &out->cells[i].p, &out->cells[i].len)) return -1;
    return 0;
}

static int inet_decode(reader *r, cql_response *out)
{
    const unsigned char *p;
    if (cql_get_byte(r, &out->event_addr_len)) return -1;
    if (out->event_addr_len != 4 && out->event_addr_len != 16) {
        r->bad = 1;
        return -1;
    }
    if (reader_bytes(r, &p, out->event_addr_len)) return -1;
    memcpy(out->event_addr, p, out->event_addr_len);
    return cql_get_int(r, &out->event_port);
}

static int body_decode(reader *r, cql_response *out)
{
    switch (out->h.opcode) {
    case CQL_OP_ERROR: return error_decode(r, &out->error);
    case CQL_OP_READY: return 0;
    case CQL_OP_AUTHENTICATE: return cql_get_string(r, &out->authenticator);
    case CQL_OP_AUTH_CHALLENGE:
    case CQL_OP_AUTH_SUCCESS: return cql_get_bytes(r, &out->token, &out->token_len);
    case CQL_OP_SUPPORTED: {
        uint16_t n;
        if (cql_get_short(r, &n)) return -1;
        if ((size_t)n * 4 > reader_left(r)) {
            r->bad = 1;
            return -1;
        }
        if (n == 0) return 0;
        out->supported_keys = xcalloc(n, sizeof *out->supported_keys);
        out->supported_values = xcalloc(n, sizeof *out->supported_values);
        out->supported_counts = xcalloc(n, sizeof *out->supported_counts);
        for (uint16_t i = 0; i < n; i++) {
            out->n_supported = (size_t)i + 1;
            if (cql_get_string(r, &out->supported_keys[i]) ||
                cql_get_string_list(r, &out->supported_values[i], &out->supported_counts[i]))
                return -1;
        }
        return 0;
    }
    case CQL_OP_RESULT:
        if (cql_get_int(r, &out->kind)) return -1;
        switch (out->kind) {
        case CQL_RESULT_VOID: return 0;
        case CQL_RESULT_ROWS: return rows_decode(r, out);
        case CQL_RESULT_SET_KEYSPACE: return cql_get_string(r, &out->keyspace);
        case CQL_RESULT_PREPARED:
            return cql_get_short_bytes(r, &out->prepared_id, &out->prepared_id_len) ||
                           metadata_decode(r, &out->meta, 1) ||
                           metadata_decode(r, &out->result_meta, 0)
                       ? -1
                       : 0;
        case CQL_RESULT_SCHEMA_CHANGE: return schema_change_decode(r, out);
        default: r->bad = 1; return -1;
        }
    case CQL_OP_EVENT:
        if (cql_get_string(r, &out->event_type)) return -1;
        if (strcmp(out->event_type, "TOPOLOGY_CHANGE") == 0 ||
            strcmp(out->event_type, "STATUS_CHANGE") == 0)
            return cql_get_string(r, &out->event_change) || inet_decode(r, out) ? -1 : 0;
        if (strcmp(out->event_type, "SCHEMA_CHANGE") == 0) return schema_change_decode(r, out);
        return 0; /* unknown event types are ignored, as the spec allows */
    default: r->bad = 1; return -1;
    }
}

int cql_response_decode(const cql_header *h, const unsigned char *body, size_t len,
                        cql_response *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->h = *h;
    out->body = body;
    out->body_len = len;
    out->meta.paging_state_len = -1;
    out->result_meta.paging_state_len = -1;
    if (h->flags & CQL_FLAG_COMPRESSION) {
        snprintf(err, errlen, "compressed %s frame, but no compression was negotiated",
                 cql_opcode_name(h->opcode));
        return -1;
    }
    reader r;
    reader_init(&r, body, len);
    if (h->flags & CQL_FLAG_TRACING) {
        const unsigned char *p;
        if (reader_bytes(&r, &p, 16) == 0) {
            memcpy(out->tracing_id, p, 16);
            out->has_tracing = 1;
        }
    }
    if (h->flags & CQL_FLAG_WARNING) cql_get_string_list(&r, &out->warnings, &out->n_warnings);
    if (h->flags & CQL_FLAG_CUSTOM_PAYLOAD) { /* [bytes map]: skipped */
        uint16_t n = 0;
        cql_get_short(&r, &n);
        for (uint16_t i = 0; i < n && !r.bad; i++) {
            char *k = NULL;
            const unsigned char *v;
            int32_t vl;
            cql_get_string(&r, &k);
            free(k);
            cql_get_bytes(&r, &v, &vl);
        }
    }
    if (!r.bad) body_decode(&r, out);
    if (r.bad) {
        snprintf(err, errlen, "malformed %s frame (%zu-byte body) from the server",
                 cql_opcode_name(h->opcode), len);
        return -1;
    }
    return 0;
}

void cql_response_free(cql_response *r)
{
    free_string_list(r->warnings, r->n_warnings);
    free(r->error.message);
    free(r->error.write_type);
    free(r->error.keyspace);
    free(r->error.table);
    free(r->authenticator);
    for (size_t i = 0; i < r->n_supported; i++) {
        free(r->supported_keys[i]);
        free_string_list(r->supported_values[i], r->supported_counts[i]);
    }
    free(r->supported_keys);
    free(r->supported_values);
    free(r->supported_counts);
    metadata_free(&r->meta);
    metadata_free(&r->result_meta);
    free(r->cells);
    free(r->keyspace);
    free(r->change_type);
    free(r->target);
    free(r->sc_keyspace);
    free(r->sc_name);
    free(r->event_type);
    free(r->event_change);
    memset(r, 0, sizeof *r);
}

/* ---- cells ----------------------------------------------------------------- */

int cql_cell_bigint(const cql_cell *c, int64_t *out)
{
    if (c->len != 8) return -1;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = u << 8 | c->p[i];
    *out = (int64_t)u;
    return 0;
}

int cql_cell_int(const cql_cell *c, int32_t *out)
{
    if (c->len != 4) return -1;
    *out = (int32_t)((uint32_t)c->p[0] << 24 | (uint32_t)c->p[1] << 16 |
                     (uint32_t)c->p[2] << 8 | c->p[3]);
    return 0;
}

int cql_cell_text(const cql_cell *c, char **out)
{
    *out = c->len < 0 ? NULL : dup_bytes(c->p, (size_t)c->len);
    return 0;
}

int cql_cell_inet(const cql_cell *c, char *out, size_t outlen)
{
    if (c->len == 4) return inet_ntop(AF_INET, c->p, out, (socklen_t)outlen) ? 0 : -1;
    if (c->len == 16) return inet_ntop(AF_INET6, c->p, out, (socklen_t)outlen) ? 0 : -1;
    return -1;
}

int cql_cell_uuid(const cql_cell *c, char out[37])
{
    if (c->len != 16) return -1;
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[c->p[i] >> 4];
        *o++ = hex[c->p[i] & 15];
    }
    *o = '\0';
    return 0;
}

int cql_collection_open(const cql_cell *c, reader *it, int32_t *n)
{
    *n = 0;
    if (c->len < 0) { /* null collection: empty */
        reader_init(it, NULL, 0);
        return 0;
    }
    reader_init(it, c->p, (size_t)c->len);
    if (cql_get_int(it, n) || *n < 0 || (size_t)*n * 4 > reader_left(it)) {
        *n = 0;
        return -1;
    }
    return 0;
}

int cql_collection_next(reader *it, cql_cell *elem)
{
    return cql_get_bytes(it, &elem->p, &elem->len);
}
