/*
 * test_cql_proto.c - unit tests of the CQL wire codec (src/cql/cql_proto.c)
 * and the Murmur3 token: hand-written frames, decoded field by field; every
 * truncation of every frame refused; hostile counts and nesting refused
 * without large allocations; requests compared with bytes written out from
 * the spec. Byte-for-byte agreement with the Python driver is the golden
 * test's job (test_cql_golden.py); this one needs nothing but itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cql/cql_conn.h"
#include "cql/cql_proto.h"
#include "cql/murmur3.h"

static int passed, failed;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (cond) {                                        \
            passed++;                                      \
        } else {                                           \
            failed++;                                      \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
        }                                                  \
    } while (0)

/* "0a 0b..." -> bytes; returns the length */
static size_t unhex(const char *s, unsigned char *out)
{
    size_t n = 0;
    while (*s) {
        if (*s == ' ' || *s == '\n') {
            s++;
            continue;
        }
        unsigned v;
        sscanf(s, "%2x", &v);
        out[n++] = (unsigned char)v;
        s += 2;
    }
    return n;
}

static int decode(uint8_t opcode, uint8_t flags, const unsigned char *body, size_t len,
                  cql_response *r)
{
    cql_header h = {.version = 0x84, .flags = flags, .stream = 1, .opcode = opcode,
                    .length = (uint32_t)len};
    char err[256];
    return cql_response_decode(&h, body, len, r, err, sizeof err);
}

/* Every strict prefix of a well-formed body must be refused (and not crash:
 * ASan watches the reads, since each prefix is copied to an exact-size
 * allocation). */
static void all_truncations_fail(uint8_t opcode, const unsigned char *body, size_t len,
                                 const char *what)
{
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        unsigned char *copy = malloc(n ? n : 1);
        memcpy(copy, body, n);
        cql_response r;
        if (decode(opcode, 0, copy, n, &r) == 0) bad++;
        cql_response_free(&r);
        free(copy);
    }
    CHECK(bad == 0, "%s: %d truncated bodies were accepted", what, bad);
}

static void test_header(void)
{
    unsigned char p[9] = {0x84, 0x08, 0x00, 0x07, 0x08, 0x00, 0x00, 0x01, 0x02};
    cql_header h;
    char err[256];
    CHECK(cql_header_decode(p, &h, err, sizeof err) == 0, "valid header");
    CHECK(h.version == 0x84 && h.flags == 8 && h.stream == 7 && h.opcode == 8 && h.length == 258,
          "header fields");
    p[2] = 0xff, p[3] = 0xff;
    cql_header_decode(p, &h, err, sizeof err);
    CHECK(h.stream == -1, "stream -1 (events)");
    p[0] = 0x04;
    CHECK(cql_header_decode(p, &h, err, sizeof err) < 0 && strstr(err, "direction"),
          "request frame refused as a response: %s", err);
    p[0] = 0x83;
    CHECK(cql_header_decode(p, &h, err, sizeof err) < 0 && strstr(err, "version 3"),
          "v3 refused with the version named: %s", err);
    p[0] = 0x84, p[5] = 0x10, p[6] = 0, p[7] = 0, p[8] = 1;
    CHECK(cql_header_decode(p, &h, err, sizeof err) < 0 && strstr(err, "256 MB"),
          "body > 256 MB refused: %s", err);
    p[0] = 'H', p[1] = 'T', p[2] = 'T', p[3] = 'P';
    CHECK(cql_header_decode(p, &h, err, sizeof err) < 0, "HTTP refused: %s", err);
}

static void test_split(void)
{
    unsigned char s[64];
    size_t n = unhex("84 00 00 01 02 00 00 00 00"       /* READY, stream 1 */
                     "84 00 00 02 08 00 00 00 04 00 00 00 01", /* RESULT Void */
                     s);
    cql_header h;
    size_t fl;
    char err[128];
    for (size_t k = 0; k < 9; k++)
        CHECK(cql_frame_split(s, k, &h, &fl, err, sizeof err) == 0, "partial header %zu", k);
    CHECK(cql_frame_split(s, n, &h, &fl, err, sizeof err) == 1 && fl == 9 && h.opcode == 2,
          "first frame");
    CHECK(cql_frame_split(s + 9, 12, &h, &fl, err, sizeof err) == 0, "partial body");
    CHECK(cql_frame_split(s + 9, 13, &h, &fl, err, sizeof err) == 1 && fl == 13 && h.stream == 2,
          "second frame");
}

static void test_requests(void)
{
    buf b;
    buf_init(&b);
    const char *kv[] = {"CQL_VERSION", "3.0.0"};
    cql_encode_startup(&b, 0x0102, kv, 1);
    unsigned char want[64];
    size_t n = unhex("04 00 01 02 01 00 00 00 16 00 01 00 0b 43 51 4c 5f 56 45 52 53 49 4f 4e"
                     "00 05 33 2e 30 2e 30", want);
    CHECK(b.len == n && memcmp(b.data, want, n) == 0, "STARTUP bytes");
    cql_frame_set_stream(b.data, 0x7fff);
    CHECK(b.data[2] == 0x7f && b.data[3] == 0xff, "set stream");

    buf_reset(&b);
    cql_values v;
    cql_values_init(&v);
    cql_values_bigint(&v, -2);
    size_t at = cql_values_collection_begin(&v, 2);
    cql_values_collection_text(&v, "a", 1);
    cql_values_collection_text(&v, "", 0);
    cql_values_collection_end(&v, at);
    cql_values_null(&v);
    unsigned char id[2] = {0xab, 0xcd};
    cql_query_params qp = {.consistency = CQL_CONSISTENCY_LOCAL_QUORUM, .values = &v,
                           .has_timestamp = 1, .timestamp = 5};
    cql_encode_execute(&b, 3, id, 2, &qp);
    n = unhex("04 00 00 03 0a 00 00 00 32"        /* header, 50-byte body */
              "00 02 ab cd"                        /* id */
              "00 06 21"                           /* LOCAL_QUORUM, values|timestamp */
              "00 03"                              /* 3 values */
              "00 00 00 08 ff ff ff ff ff ff ff fe"  /* bigint -2 */
              "00 00 00 0d 00 00 00 02 00 00 00 01 61 00 00 00 00" /* list<text> ['a',''] */
              "ff ff ff ff"                        /* null */
              "00 00 00 00 00 00 00 05",           /* timestamp 5 */
              want);
    CHECK(b.len == n && memcmp(b.data, want, n) == 0, "EXECUTE bytes (%zu vs %zu)", b.len, n);
    for (size_t i = 0; i < n && i < b.len; i++)
        if (b.data[i] != want[i]) {
            printf("  first difference at byte %zu: %02x vs %02x\n", i, b.data[i], want[i]);
            break;
        }
    cql_values_free(&v);

    buf tok;
    buf_init(&tok);
    cql_sasl_plain(&tok, "u", "p");
    CHECK(tok.len == 4 && memcmp(tok.data, "\0u\0p", 4) == 0, "SASL PLAIN token");
    buf_free(&tok);
    buf_free(&b);
}

static void test_error(void)
{
    unsigned char body[128];
    size_t n = unhex("00 00 11 00 00 02 68 69"   /* Write_timeout "hi" */
                     "00 06 00 00 00 01 00 00 00 02 00 06 53 49 4d 50 4c 45", body);
    cql_response r;
    CHECK(decode(CQL_OP_ERROR, 0, body, n, &r) == 0, "write timeout decodes");
    CHECK(r.error.code == CQL_ERR_WRITE_TIMEOUT && strcmp(r.error.message, "hi") == 0 &&
              r.error.consistency == 6 && r.error.received == 1 && r.error.blockfor == 2 &&
              strcmp(r.error.write_type, "SIMPLE") == 0,
          "write timeout fields");
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_ERROR, body, n, "write timeout");

    n = unhex("00 00 25 00 00 00 00 03 01 02 03", body);
    CHECK(decode(CQL_OP_ERROR, 0, body, n, &r) == 0 && r.error.code == CQL_ERR_UNPREPARED &&
              r.error.unprepared_id_len == 3 && r.error.unprepared_id[2] == 3,
          "unprepared id");
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_ERROR, body, n, "unprepared");

    n = unhex("00 00 10 00 00 00 00 04 00 00 00 03 00 00 00 01", body);
    CHECK(decode(CQL_OP_ERROR, 0, body, n, &r) == 0 && r.error.code == CQL_ERR_UNAVAILABLE &&
              r.error.consistency == 4 && r.error.blockfor == 3 && r.error.alive == 1,
          "unavailable fields");
    cql_response_free(&r);

    /* warnings flag: a [string list] before the body */
    n = unhex("00 01 00 02 77 31" "00 00 22 00 00 01 78", body);
    CHECK(decode(CQL_OP_ERROR, CQL_FLAG_WARNING, body, n, &r) == 0 && r.n_warnings == 1 &&
              strcmp(r.warnings[0], "w1") == 0 && r.error.code == CQL_ERR_INVALID,
          "warnings then error");
    cql_response_free(&r);
    CHECK(strcmp(cql_error_name(CQL_ERR_SYNTAX), "Syntax_error") == 0, "error names");
}

static void test_results(void)
{
    unsigned char body[256];
    cql_response r;
    /* Rows, global spec ks.t, columns a bigint, b list<text>; 2 rows */
    size_t n = unhex("00 00 00 02"             /* Rows */
                     "00 00 00 01 00 00 00 02"  /* flags global, 2 columns */
                     "00 02 6b 73 00 01 74"     /* ks, t */
                     "00 01 61 00 02"           /* a bigint */
                     "00 01 62 00 20 00 0d"     /* b list<varchar> */
                     "00 00 00 02"              /* 2 rows */
                     "00 00 00 08 00 00 00 00 00 00 00 2a"
                     "00 00 00 0c 00 00 00 01 00 00 00 04 2f 61 62 63"
                     "00 00 00 08 ff ff ff ff ff ff ff ff"
                     "ff ff ff ff", body);      /* null list */
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) == 0, "rows decode");
    CHECK(r.kind == CQL_RESULT_ROWS && r.meta.n_cols == 2 && r.n_rows == 2, "rows shape");
    if (r.kind == CQL_RESULT_ROWS && r.n_rows == 2 && r.meta.cols) {
        int64_t a;
        CHECK(cql_cell_bigint(&r.cells[0], &a) == 0 && a == 42, "cell a");
        CHECK(strcmp(r.meta.cols[1].name, "b") == 0 && strcmp(r.meta.cols[1].ks, "ks") == 0,
              "column spec");
        buf t;
        buf_init(&t);
        cql_type_format(r.meta.cols[1].type, &t);
        CHECK(t.len == 10 && memcmp(t.data, "list<text>", 10) == 0, "type format");
        buf_free(&t);
        reader it;
        int32_t cnt;
        cql_cell e;
        CHECK(cql_collection_open(&r.cells[1], &it, &cnt) == 0 && cnt == 1 &&
                  cql_collection_next(&it, &e) == 0 && e.len == 4 && memcmp(e.p, "/abc", 4) == 0,
              "list element");
        CHECK(cql_cell_bigint(&r.cells[2], &a) == 0 && a == -1 && r.cells[3].len < 0,
              "second row, null");
    }
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_RESULT, body, n, "rows");

    /* Prepared: id 01 02; bind: no global spec, 1 column, pk [0]; result no metadata */
    n = unhex("00 00 00 04 00 02 01 02"
              "00 00 00 00 00 00 00 01 00 00 00 01 00 00"
              "00 01 6b 00 01 74 00 02 69 64 00 02"
              "00 00 00 04 00 00 00 00", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) == 0 && r.kind == CQL_RESULT_PREPARED &&
              r.prepared_id_len == 2 && r.meta.n_cols == 1 && r.meta.n_pk == 1 &&
              r.meta.pk[0] == 0 && r.meta.cols && strcmp(r.meta.cols[0].name, "id") == 0 &&
              r.meta.cols[0].type->id == CQL_TYPE_BIGINT,
          "prepared");
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_RESULT, body, n, "prepared");

    n = unhex("00 00 00 05 00 07 43 52 45 41 54 45 44 00 05 54 41 42 4c 45"
              "00 02 6b 73 00 01 74", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) == 0 && r.kind == CQL_RESULT_SCHEMA_CHANGE &&
              strcmp(r.change_type, "CREATED") == 0 && strcmp(r.target, "TABLE") == 0 &&
              strcmp(r.sc_keyspace, "ks") == 0 && strcmp(r.sc_name, "t") == 0,
          "schema change");
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_RESULT, body, n, "schema change");

    n = unhex("00 00 00 03 00 04 64 65 64 70", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) == 0 && strcmp(r.keyspace, "dedp") == 0,
          "set keyspace");
    cql_response_free(&r);

    n = unhex("00 00 00 01 ff ff", body); /* Void plus trailing bytes: allowed (spec 1) */
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) == 0 && r.kind == CQL_RESULT_VOID, "void");
    cql_response_free(&r);
    n = unhex("00 00 00 09", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) < 0, "unknown result kind refused");
    cql_response_free(&r);
}

static void test_others(void)
{
    unsigned char body[128];
    cql_response r;
    size_t n = unhex("00 0d 53 54 41 54 55 53 5f 43 48 41 4e 47 45 00 02 55 50"
                     "04 7f 00 00 02 00 00 23 52", body);
    CHECK(decode(CQL_OP_EVENT, 0, body, n, &r) == 0 && strcmp(r.event_type, "STATUS_CHANGE") == 0 &&
              strcmp(r.event_change, "UP") == 0 && r.event_addr_len == 4 &&
              r.event_addr[3] == 2 && r.event_port == 9042,
          "status change event");
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_EVENT, body, n, "event");

    n = unhex("00 01 00 0b 43 51 4c 5f 56 45 52 53 49 4f 4e 00 01 00 05 33 2e 30 2e 30", body);
    CHECK(decode(CQL_OP_SUPPORTED, 0, body, n, &r) == 0 && r.n_supported == 1 &&
              strcmp(r.supported_values[0][0], "3.0.0") == 0,
          "supported");
    cql_response_free(&r);
    all_truncations_fail(CQL_OP_SUPPORTED, body, n, "supported");

    n = unhex("00 03 61 62 63", body);
    CHECK(decode(CQL_OP_AUTHENTICATE, 0, body, n, &r) == 0 && strcmp(r.authenticator, "abc") == 0,
          "authenticate");
    cql_response_free(&r);
    n = unhex("ff ff ff ff", body);
    CHECK(decode(CQL_OP_AUTH_SUCCESS, 0, body, n, &r) == 0 && r.token_len < 0, "auth success null");
    cql_response_free(&r);
    CHECK(decode(CQL_OP_READY, CQL_FLAG_COMPRESSION, body, 0, &r) < 0,
          "compressed frame refused (none negotiated)");
    cql_response_free(&r);
    CHECK(decode(CQL_OP_QUERY, 0, body, 0, &r) < 0, "request opcode refused as a response");
    cql_response_free(&r);
}

static void test_hostile(void)
{
    unsigned char body[256];
    cql_response r;
    /* 2^31-1 rows of 1 column in a 30-byte body: refused before allocating */
    size_t n = unhex("00 00 00 02 00 00 00 04 00 00 00 01 7f ff ff ff 00 00 00 00", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) < 0, "huge row count refused");
    cql_response_free(&r);
    /* 65535 columns claimed */
    n = unhex("00 00 00 02 00 00 00 01 00 00 ff ff 00 00 00 00 00 00", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) < 0, "huge column count refused");
    cql_response_free(&r);
    /* list<list<list<...>>> 100 deep */
    size_t k = 0;
    k += unhex("00 00 00 02 00 00 00 01 00 00 00 01 00 00 00 00 00 01 61", body);
    for (int i = 0; i < 100; i++) body[k++] = 0x00, body[k++] = 0x20;
    body[k++] = 0x00, body[k++] = 0x02;
    CHECK(decode(CQL_OP_RESULT, 0, body, k, &r) < 0, "type nesting depth bounded");
    cql_response_free(&r);
    /* negative string length in a long string and a -5 [bytes] */
    n = unhex("00 00 00 02 00 00 00 04 00 00 00 01 00 00 00 01 ff ff ff fb", body);
    CHECK(decode(CQL_OP_RESULT, 0, body, n, &r) == 0 && r.cells[0].len < 0,
          "negative [bytes] length reads as null");
    cql_response_free(&r);
}

static void test_murmur3(void)
{
    /* values from the Python driver's cassandra.murmur3 */
    unsigned char z[8] = {0};
    CHECK(cql_murmur3_token(z, 8) == 2945182322382062539LL, "token of bigint 0: %lld",
          (long long)cql_murmur3_token(z, 8));
    CHECK(cql_murmur3_token("hello", 5) == -3758069500696749310LL, "token of 'hello'");
    CHECK(cql_murmur3_token("", 0) == 0, "token of empty key");
    unsigned char hi[17];
    for (int i = 0; i < 17; i++) hi[i] = (unsigned char)(0x80 + i);
    CHECK(cql_murmur3_token(hi, 17) == -3616694464407856223LL, "token with sign-extended tail");
}

static void test_misc(void)
{
    char out[128];
    cql_redact(out, sizeof out, "user bob, password hunter2 for bob", "bob", "hunter2");
    CHECK(strcmp(out, "user <redacted>, password <redacted> for <redacted>") == 0, "redact: %s", out);
    cql_redact(out, sizeof out, "nothing", NULL, "");
    CHECK(strcmp(out, "nothing") == 0, "redact without secrets");
    CHECK(cql_consistency_parse("local_quorum") == CQL_CONSISTENCY_LOCAL_QUORUM &&
              cql_consistency_parse("LOCAL_ONE") == CQL_CONSISTENCY_LOCAL_ONE &&
              cql_consistency_parse("most") < 0,
          "consistency names");
}

int main(void)
{
    test_header();
    test_split();
    test_requests();
    test_error();
    test_results();
    test_others();
    test_hostile();
    test_murmur3();
    test_misc();
    printf("test_cql_proto: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
