/*
 * test_record.c - the record parser, the timestamp parser and the session-id
 * test vectors published in docs/semantics.md.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/utf8.h"
#include "engine/session_id.h"
#include "record/parse.h"
#include "record/timestamp.h"

/* Parses with the parser given and with a general-path-only parser, which
 * must agree (the fast path for common records is an optimisation only). */
static char last_detail[256];

static parse_error parse_raw(record_parser *p, const record_mapping *m, const raw_record *r,
                             visit *v)
{
    char detail2[256];
    record_parser *general = record_parser_new(m);
    record_parser_set_fast_path(general, 0);
    visit v2;
    parse_error e2 = record_parse(general, r, &v2, detail2, sizeof detail2);
    parse_error e = record_parse(p, r, v, last_detail, sizeof last_detail);
    CHECK_EQ_I64(e, e2);
    CHECK_STR(last_detail, detail2);
    if (e == PARSE_OK && e2 == PARSE_OK) {
        CHECK(v->user_id == v2.user_id && v->event_time_us == v2.event_time_us &&
              v->page_len == v2.page_len && memcmp(v->page, v2.page, v->page_len) == 0);
        CHECK(v->user_len == v2.user_len && (v->user == NULL) == (v2.user == NULL));
        if (v->user && v2.user) CHECK(memcmp(v->user, v2.user, v->user_len) == 0);
    }
    record_parser_free(general);
    return e;
}

static parse_error parse(record_parser *p, const char *line, visit *v)
{
    raw_record r = {.data = line, .len = strlen(line), .pos = {0, 0, 42}, .line = 1};
    char detail[256], detail2[256];
    record_parser *general = record_parser_new(NULL);
    record_parser_set_fast_path(general, 0);
    visit v2;
    parse_error e2 = record_parse(general, &r, &v2, detail2, sizeof detail2);
    parse_error e = record_parse(p, &r, v, detail, sizeof detail);
    CHECK_EQ_I64(e, e2);
    if (e == PARSE_OK && e2 == PARSE_OK)
        CHECK(v->user_id == v2.user_id && v->event_time_us == v2.event_time_us &&
              v->page_len == v2.page_len && memcmp(v->page, v2.page, v->page_len) == 0);
    record_parser_free(general);
    return e;
}

static void test_parse_valid(void)
{
    record_parser *p = record_parser_new(NULL);
    visit v;
    /* the common shape (the fast path) and its near misses */
    CHECK_EQ_I64(parse(p, "{\"user_id\":0,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_OK);
    CHECK_EQ_I64(parse(p, "{\"user_id\":-0,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, 0);
    CHECK_EQ_I64(parse(p, " { \"event_time\" : \"2023-02-20T03:03:20\" , \"page\":\"p\" ,\"user_id\" : 7 } ", &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, 7);
    CHECK_EQ_I64(parse(p, "{\"user_id\":01,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"user_id\":1x,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"user_id\":-,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"user_id\":1,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\",}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"user_id\":1,\"page\":\"p\t\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"user_id\": 1, \"page\": \"A.html\", \"event_time\": \"2023-02-20T03:03:20\"}", &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, 1);
    CHECK(v.page_len == 6 && memcmp(v.page, "A.html", 6) == 0);
    CHECK_EQ_I64(v.event_time_us, 1676862200LL * 1000000);
    CHECK_EQ_I64(v.pos.offset, 42);
    /* other fields of every kind around the three (the fast path skips them) */
    CHECK_EQ_I64(parse(p, "{\"x\":[1,{\"a\":\"b\"},[],{}],\"user_id\":3,\"y\":-1.5e+3,\"page\":\"p\","
                          "\"z\":true,\"w\":null,\"event_time\":\"2023-02-20T03:03:20\",\"v\":false,\"n\":0}", &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, 3);
    CHECK_EQ_I64(parse(p, "{\"x\":01,\"user_id\":3,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"x\":tru,\"user_id\":3,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"x\":[1,],\"user_id\":3,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse(p, "{\"x\":1e,\"user_id\":3,\"page\":\"p\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_INVALID_JSON);
    /* unknown fields (nested too) ignored, any key order, escapes decoded */
    CHECK_EQ_I64(parse(p, "{\"x\":{\"page\":1,\"user_id\":[1,2]},\"event_time\":\"2023-02-20T03:03:20Z\","
                          "\"page\":\"a\\\"b\\u00e9\\ud83d\\ude00\",\"user_id\":-9223372036854775808,\"y\":null}", &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, INT64_MIN);
    CHECK(v.page_len == 9 && memcmp(v.page, "a\"b\xc3\xa9\xf0\x9f\x98\x80", 9) == 0);
    /* a paired surrogate after an escaped backslash, and an escaped backslash
     * before "ud800" text, which is no escape at all */
    CHECK_EQ_I64(parse(p, "{\"user_id\":1,\"page\":\"\\\\\\ud83d\\ude00\\\\ud800\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_OK);
    CHECK(v.page_len == 11 && memcmp(v.page, "\\\xf0\x9f\x98\x80\\ud800", 11) == 0);
    CHECK_EQ_I64(parse(p, "{\"user_id\":9223372036854775807,\"page\":\"\",\"event_time\":\"2023-02-20T03:03:20.5+01:00\"}", &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, INT64_MAX);
    CHECK_EQ_I64(v.page_len, 0);
    CHECK_EQ_I64(v.event_time_us, (1676862200LL - 3600) * 1000000 + 500000);
    record_parser_free(p);
}

static void test_parse_invalid(void)
{
    static const struct { const char *line; parse_error want; } cases[] = {
        {"", PARSE_INVALID_JSON},
        {"   ", PARSE_INVALID_JSON},
        {"not json", PARSE_INVALID_JSON},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"", PARSE_INVALID_JSON},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"} {}", PARSE_INVALID_JSON},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\",}", PARSE_INVALID_JSON},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}\"e,v", PARSE_INVALID_JSON},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"} 5", PARSE_INVALID_JSON},
        {"[1,2]", PARSE_NOT_AN_OBJECT},
        {"42", PARSE_NOT_AN_OBJECT},
        {"\"str\"", PARSE_NOT_AN_OBJECT},
        {"{\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISSING_FIELD},
        {"{\"user_id\":1,\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISSING_FIELD},
        {"{\"user_id\":1,\"page\":\"a\"}", PARSE_MISSING_FIELD},
        {"{\"user_id\":\"1\",\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":1.0,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":1e3,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":null,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":1,\"page\":7,\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":1676862200}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":1,\"page\":{\"a\":1},\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_MISTYPED_FIELD},
        {"{\"user_id\":1,\"user_id\":2,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_DUPLICATE_FIELD},
        {"{\"user_id\":9223372036854775808,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_USER_ID_RANGE},
        {"{\"user_id\":-9223372036854775809,\"page\":\"a\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_USER_ID_RANGE},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"2023-02-29T03:03:20\"}", PARSE_BAD_EVENT_TIME},
        {"{\"user_id\":1,\"page\":\"a\",\"event_time\":\"yesterday\"}", PARSE_BAD_EVENT_TIME},
        {"{\"user_id\":1,\"page\":\"a\\u0000b\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_PAGE},
        {"{\"user_id\":1,\"page\":\"\xff\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"{\"user_id\":1,\"page\":\"\xed\xa0\x80\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"\xff\xfe", PARSE_INVALID_UTF8},
        /* unpaired surrogate escapes: yajl turned these into "a?b" and U+10000 */
        {"{\"user_id\":1,\"page\":\"a\\ud800b\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"{\"user_id\":1,\"page\":\"\\ud800\\ud800\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"{\"user_id\":1,\"page\":\"\\ud800\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"{\"user_id\":1,\"page\":\"\\udc00\\ud800\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"{\"user_id\":1,\"page\":\"\\ud800\\u0041\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
        {"{\"user_id\":1,\"page\":\"\\\\\\ud800\",\"event_time\":\"2023-02-20T03:03:20\"}", PARSE_INVALID_UTF8},
    };
    record_parser *p = record_parser_new(NULL);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        visit v;
        parse_error got = parse(p, cases[i].line, &v);
        if (got != cases[i].want)
            fprintf(stderr, "case %zu (%s): got %s, want %s\n", i, cases[i].line,
                    parse_error_code(got), parse_error_code(cases[i].want));
        CHECK_EQ_I64(got, cases[i].want);
        /* the parser recovers: a good record right after parses */
        CHECK_EQ_I64(parse(p, "{\"user_id\":5,\"page\":\"ok\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_OK);
        CHECK_EQ_I64(v.user_id, 5);
    }
    raw_record big = {.data = "{}", .len = 2, .oversized = 1};
    char detail[64];
    visit v;
    CHECK_EQ_I64(record_parse(p, &big, &v, detail, sizeof detail), PARSE_OVERSIZED);
    record_parser_free(p);
}

/* A mapping from "user=/a page=/b ..." style arguments. */
static void mapping(record_mapping *m, const char *ut, const char *tf, ...)
{
    char err[512];
    record_mapping_default(m);
    CHECK(record_mapping_set_user_type(m, ut, err, sizeof err) == 0);
    CHECK(record_mapping_set_time_format(m, tf, err, sizeof err) == 0);
    va_list ap;
    va_start(ap, tf);
    for (const char *spec; (spec = va_arg(ap, const char *));)
        CHECK(record_mapping_set_field(m, spec, err, sizeof err) == 0);
    va_end(ap);
    CHECK(record_mapping_check(m, err, sizeof err) == 0);
}

/* The visit's strings point into the parser: it lives until the next call. */
static record_parser *parse_m_parser;

static parse_error parse_m(const record_mapping *m, const char *line, visit *v)
{
    record_parser_free(parse_m_parser);
    parse_m_parser = m ? record_parser_new(m) : NULL;
    if (!m) return PARSE_OK;
    raw_record r = {.data = line, .len = strlen(line), .pos = {0, 0, 42}, .line = 1};
    return parse_raw(parse_m_parser, m, &r, v);
}

static void test_mapping(void)
{
    record_mapping m;
    visit v;
    /* flat, renamed, epoch milliseconds, string users (the fast path's shape) */
    mapping(&m, "string", "epoch_ms", "user=/userId", "page=/url", "time=/ts", NULL);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"6f1c-ab\",\"url\":\"/home\",\"ts\":1676862200123}", &v), PARSE_OK);
    CHECK(v.user_len == 7 && memcmp(v.user, "6f1c-ab", 7) == 0);
    CHECK_EQ_I64(v.event_time_us, 1676862200123000LL);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\",\"ts\":\"1676862200123.5\"}", &v), PARSE_OK);
    CHECK_EQ_I64(v.event_time_us, 1676862200123500LL);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"caf\\u00e9\",\"url\":\"/\",\"ts\":-1.5}", &v), PARSE_OK);
    CHECK(v.user_len == 5 && memcmp(v.user, "caf\xc3\xa9", 5) == 0);
    CHECK_EQ_I64(v.event_time_us, -1500);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":7,\"url\":\"/\",\"ts\":1}", &v), PARSE_MISTYPED_FIELD);
    CHECK_STR(last_detail, "\"userId\" must be a string (--user-type string)");
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"\",\"url\":\"/\",\"ts\":1}", &v), PARSE_INVALID_USER_ID);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"a\\u0000\",\"url\":\"/\",\"ts\":1}", &v), PARSE_INVALID_USER_ID);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\",\"ts\":1e3}", &v), PARSE_BAD_EVENT_TIME);
    CHECK_STR(last_detail, "\"ts\" is not epoch milliseconds such as 1676862200000 (no exponent; years 0000-9999)");
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\",\"ts\":\"soon\"}", &v), PARSE_BAD_EVENT_TIME);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\",\"ts\":true}", &v), PARSE_MISTYPED_FIELD);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\",\"ts\":253402300800000}", &v), PARSE_BAD_EVENT_TIME);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\",\"ts\":01}", &v), PARSE_INVALID_JSON);
    CHECK_EQ_I64(parse_m(&m, "{\"userId\":\"u\",\"url\":\"/\"}", &v), PARSE_MISSING_FIELD);
    CHECK_STR(last_detail, "missing field \"ts\"");
    CHECK_EQ_I64(parse_m(&m, "{\"user_id\":1,\"page\":\"/\",\"event_time\":\"2023-02-20T03:03:20\"}", &v), PARSE_MISSING_FIELD);
    char longu[USER_MAX_BYTES + 64];
    snprintf(longu, sizeof longu, "{\"userId\":\"%0*d\",\"url\":\"/\",\"ts\":1}", USER_MAX_BYTES + 1, 0);
    CHECK_EQ_I64(parse_m(&m, longu, &v), PARSE_INVALID_USER_ID);
    snprintf(longu, sizeof longu, "{\"userId\":\"%0*d\",\"url\":\"/\",\"ts\":1}", USER_MAX_BYTES, 0);
    CHECK_EQ_I64(parse_m(&m, longu, &v), PARSE_OK);
    CHECK_EQ_I64(v.user_len, USER_MAX_BYTES);

    /* nested pointers, arrays, escapes, other fields of every kind */
    mapping(&m, "int", "epoch_s", "user=/user/id", "page=/context/pages/1", "time=/m~1t~0", NULL);
    const char *nested = "{\"a\":[{\"user\":{\"id\":9}}],\"user\":{\"name\":\"x\",\"id\":42,\"tags\":[1,{\"id\":3}]},"
                         "\"context\":{\"pages\":[\"first\",\"second\\n\",{\"x\":1}],\"id\":5},\"m/t~\":1676862200}";
    CHECK_EQ_I64(parse_m(&m, nested, &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, 42);
    CHECK(v.page_len == 7 && memcmp(v.page, "second\n", 7) == 0);
    CHECK_EQ_I64(v.event_time_us, 1676862200LL * 1000000);
    CHECK_EQ_I64(parse_m(&m, "{\"user\":{\"id\":1,\"id\":2},\"context\":{\"pages\":[\"a\",\"b\"]},\"m/t~\":1}", &v), PARSE_DUPLICATE_FIELD);
    CHECK_STR(last_detail, "field \"/user/id\" appears twice");
    CHECK_EQ_I64(parse_m(&m, "{\"user\":{\"id\":1},\"user\":{},\"context\":{\"pages\":[\"a\",\"b\"]},\"m/t~\":1}", &v), PARSE_DUPLICATE_FIELD);
    CHECK_EQ_I64(parse_m(&m, "{\"user\":{\"id\":1},\"context\":{\"pages\":[\"a\"]},\"m/t~\":1}", &v), PARSE_MISSING_FIELD);
    CHECK_STR(last_detail, "missing field \"/context/pages/1\"");
    CHECK_EQ_I64(parse_m(&m, "{\"user\":\"id\",\"context\":{\"pages\":[\"a\",\"b\"]},\"m/t~\":1}", &v), PARSE_MISSING_FIELD);
    CHECK_EQ_I64(parse_m(&m, "{\"user\":{\"id\":[1]},\"context\":{\"pages\":[\"a\",\"b\"]},\"m/t~\":1}", &v), PARSE_MISTYPED_FIELD);
    CHECK_EQ_I64(parse_m(&m, "{\"user\":{\"id\":1},\"context\":{\"pages\":{\"1\":\"b\"}},\"m/t~\":1}", &v), PARSE_OK);
    CHECK(v.page_len == 1 && v.page[0] == 'b');

    parse_m(NULL, NULL, &v);
    /* the Kafka key and timestamp */
    mapping(&m, "string", "iso8601", NULL);
    m.user_from_key = 1;
    m.time_from_kafka = 1;
    record_parser *p = record_parser_new(&m);
    const char *val = "{\"page\":\"A.html\"}";
    raw_record r = {.data = val, .len = strlen(val), .pos = {1676862200000, 1, 7}, .key = "user-9",
                    .key_len = 6, .has_ts = 1};
    CHECK_EQ_I64(parse_raw(p, &m, &r, &v), PARSE_OK);
    CHECK(v.user_len == 6 && memcmp(v.user, "user-9", 6) == 0);
    CHECK_EQ_I64(v.event_time_us, 1676862200000LL * 1000);
    r.key = NULL;
    CHECK_EQ_I64(parse_raw(p, &m, &r, &v), PARSE_MISSING_FIELD);
    r.key = "u";
    r.key_len = 1;
    r.has_ts = 0;
    CHECK_EQ_I64(parse_raw(p, &m, &r, &v), PARSE_BAD_EVENT_TIME);
    record_parser_free(p);
    m.user_type = USER_INT;
    p = record_parser_new(&m);
    r.has_ts = 1;
    r.key = "-12";
    r.key_len = 3;
    CHECK_EQ_I64(parse_raw(p, &m, &r, &v), PARSE_OK);
    CHECK_EQ_I64(v.user_id, -12);
    r.key = "12a";
    CHECK_EQ_I64(parse_raw(p, &m, &r, &v), PARSE_MISTYPED_FIELD);
    record_parser_free(p);

    /* start-up checks */
    char err[512];
    record_mapping_default(&m);
    CHECK(record_mapping_set_field(&m, "user=userId", err, sizeof err) != 0);
    CHECK(record_mapping_set_field(&m, "user=", err, sizeof err) != 0);
    CHECK(record_mapping_set_field(&m, "who=/u", err, sizeof err) != 0);
    CHECK(record_mapping_set_field(&m, "user=/a~2", err, sizeof err) != 0);
    CHECK(record_mapping_set_field(&m, "user=/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17", err, sizeof err) != 0);
    CHECK(record_mapping_set_time_format(&m, "epoch", err, sizeof err) != 0);
    CHECK(record_mapping_set_user_type(&m, "uuid", err, sizeof err) != 0);
    CHECK(record_mapping_set_field(&m, "page=/a", err, sizeof err) == 0);
    CHECK(record_mapping_set_field(&m, "user=/a/b", err, sizeof err) == 0);
    CHECK(record_mapping_check(&m, err, sizeof err) != 0);
    CHECK(record_mapping_set_field(&m, "user=/a", err, sizeof err) == 0);
    CHECK(record_mapping_check(&m, err, sizeof err) != 0);
    m.user_from_key = 1; /* then the user pointer is not used */
    CHECK(record_mapping_check(&m, err, sizeof err) == 0);
}

static void test_epoch(void)
{
    static const struct { const char *s; int d; int64_t us; } good[] = {
        {"0", 0, 0}, {"1676862200", 0, 1676862200000000LL}, {"1676862200.1234567", 0, 1676862200123456LL},
        {"-1", 0, -1000000}, {"-0.0000001", 0, -1}, {"-0.000001", 0, -1}, {"0.0000009", 0, 0},
        {"1676862200123", 3, 1676862200123000LL}, {"-1676862200123.9", 3, -1676862200123900LL},
        {"1676862200123456", 6, 1676862200123456LL}, {"1676862200123456789", 9, 1676862200123456LL},
        {"-1", 9, -1}, {"999", 9, 0}, {"1000", 9, 1}, {"007", 0, 7000000},
        {"253402300799", 0, 253402300799000000LL}, {"-62167219200", 0, -62167219200000000LL},
        {"253402300799999999999", 9, 253402300799999999LL},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        int64_t us = 12345;
        int rc = parse_epoch_us(good[i].s, strlen(good[i].s), good[i].d, &us);
        if (rc || us != good[i].us) fprintf(stderr, "epoch '%s' (%d): rc %d, %lld\n", good[i].s, good[i].d, rc, (long long)us);
        CHECK(rc == 0 && us == good[i].us);
    }
    static const struct { const char *s; int d; } bad[] = {
        {"", 0}, {"-", 0}, {"+1", 0}, {"1.", 0}, {".5", 0}, {"1e3", 0}, {" 1", 0}, {"1 ", 0},
        {"253402300800", 0}, {"-62167219200.000001", 0}, {"-62167219201", 0}, {"0x10", 0},
        {"99999999999999999999999999999", 0}, {"99999999999999999999999999999", 9}, {"1,5", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int64_t us;
        int rc = parse_epoch_us(bad[i].s, strlen(bad[i].s), bad[i].d, &us);
        if (rc == 0) fprintf(stderr, "accepted bad epoch '%s'\n", bad[i].s);
        CHECK(rc != 0);
    }
}

/* A record nested past PARSE_MAX_DEPTH is too_deep, and parsing takes
 * memory in proportion to the record: a 1 MB line of "[" took 4 GB. */
static void test_parse_deep(void)
{
    record_parser *p = record_parser_new(NULL);
    const char *head = "{\"user_id\":1,\"page\":\"x\",\"event_time\":\"2023-02-20T03:03:20\",\"e\":";
    size_t n = 1 << 20, h = strlen(head);
    char *line = malloc(h + n + 1);
    memcpy(line, head, h);
    memset(line + h, '[', n);
    line[h + n] = '\0';
    visit v;
    CHECK_EQ_I64(parse(p, line, &v), PARSE_TOO_DEEP);
    CHECK(record_parser_peak_bytes(p) <= 64 * 1024);
    /* at the bound: the object and 127 arrays parse; one more does not */
    for (int extra = 0; extra <= 1; extra++) {
        size_t d = PARSE_MAX_DEPTH - 1 + (size_t)extra, k = h;
        memset(line + k, '[', d), k += d;
        memset(line + k, ']', d), k += d;
        line[k++] = '}';
        line[k] = '\0';
        CHECK_EQ_I64(parse(p, line, &v), extra ? PARSE_TOO_DEEP : PARSE_OK);
        /* nested objects count the same */
        k = h;
        for (size_t i = 0; i < d; i++) memcpy(line + k, "{\"a\":", 5), k += 5;
        line[k++] = '1';
        memset(line + k, '}', d + 1), k += d + 1;
        line[k] = '\0';
        CHECK_EQ_I64(parse(p, line, &v), extra ? PARSE_TOO_DEEP : PARSE_OK);
    }
    /* a long page full of escapes: yajl's buffer doubles, and each copy it
     * outgrows is given back */
    size_t k = 0;
    k += (size_t)sprintf(line, "{\"user_id\":1,\"event_time\":\"2023-02-20T03:03:20\",\"page\":\"");
    for (size_t i = 0; i < 100000; i++) memcpy(line + k, "\\u00e9", 6), k += 6;
    memcpy(line + k, "\"}", 3);
    CHECK_EQ_I64(parse(p, line, &v), PARSE_OK);
    CHECK_EQ_I64(v.page_len, 200000);
    CHECK(record_parser_peak_bytes(p) <= 2 * k + 64 * 1024);
    free(line);
    record_parser_free(p);
}

static void test_timestamps(void)
{
    static const struct { const char *s; int64_t us; } good[] = {
        {"1970-01-01T00:00:00", 0},
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01 00:00:01", 1000000},
        {"1969-12-31T23:59:59.999999Z", -1},
        {"2000-02-29T12:00:00+12:00", 951782400LL * 1000000},
        {"2023-02-20T03:03:20.123456789", 1676862200123456LL},
        {"2023-02-20T03:03:20.1", 1676862200100000LL},
        {"2023-02-20T04:03:20+01:00", 1676862200LL * 1000000},
        {"2023-02-20T02:33:20-00:30", 1676862200LL * 1000000},
        {"0000-01-01T00:00:00", -62167219200LL * 1000000},
        {"9999-12-31T23:59:59", 253402300799LL * 1000000},
        {"9999-12-31T23:59:59.999999+00:00", 253402300799999999LL},
        {"0000-01-01T00:59:00+00:59", -62167219200LL * 1000000},
        {"9999-12-31T23:59:59+00:01", 253402300739LL * 1000000},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        int64_t us = 12345;
        CHECK(parse_iso8601_us(good[i].s, strlen(good[i].s), &us) == 0);
        CHECK_EQ_I64(us, good[i].us);
    }
    static const char *const bad[] = {
        "", "2023-02-20", "2023-02-20T03:03", "2023-13-01T00:00:00", "2023-00-01T00:00:00",
        "2023-02-29T00:00:00", "1900-02-29T00:00:00", "2023-04-31T00:00:00",
        "2023-02-20T24:00:00", "2023-02-20T23:60:00", "2023-02-20T23:59:60",
        "2023-02-20T03:03:20.", "2023-02-20T03:03:20.1234567890", "2023-02-20T03:03:20ZZ",
        "2023-02-20T03:03:20+1:00", "2023-02-20T03:03:20+01", "2023-02-20T03:03:20+24:00",
        "2023-02-20X03:03:20", "+2023-02-20T03:03:20", "2023-2-20T03:03:20", "2023-02-20T03:03:20 ",
        /* in years 0000-9999 as written, outside them in UTC (fuzz_timestamp) */
        "9999-12-31T23:59:59-00:59", "9999-12-31T23:30:00.5-00:30", "0000-01-01T00:00:00+00:01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int64_t us;
        int rc = parse_iso8601_us(bad[i], strlen(bad[i]), &us);
        if (rc == 0) fprintf(stderr, "accepted bad timestamp '%s'\n", bad[i]);
        CHECK(rc != 0);
    }
    /* format/parse round trip over a wide range */
    for (int64_t us = -62167219200LL * 1000000; us < 253402300799LL * 1000000;
         us += 7777777777777LL) {
        char s[40];
        size_t n = format_iso8601_us(us, s);
        int64_t back = 0;
        CHECK(parse_iso8601_us(s, n, &back) == 0 && back == us);
    }
}

/* Frozen: changing any of these changes every session id in every table. */
static void test_session_id_vectors(void)
{
    static const struct { int64_t user, ts; int32_t part; int64_t off; int64_t id; } v[] = {
#include "session_id_vectors.inc"
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        log_position p = {v[i].ts, v[i].part, v[i].off};
        CHECK_EQ_I64(session_id_of(v[i].user, &p), v[i].id);
    }
    static const struct { const char *user; int64_t ts; int32_t part; int64_t off; int64_t id; } sv[] = {
#include "session_id_string_vectors.inc"
    };
    for (size_t i = 0; i < sizeof sv / sizeof *sv; i++) {
        log_position p = {sv[i].ts, sv[i].part, sv[i].off};
        CHECK_EQ_I64(session_id_of_string(sv[i].user, (uint32_t)strlen(sv[i].user), &p), sv[i].id);
    }
    char longest[USER_MAX_BYTES];
    memset(longest, 'x', sizeof longest);
    log_position lp = {-1, 2147483647, -1};
    CHECK_EQ_I64(session_id_of_string(longest, USER_MAX_BYTES, &lp), -2948669055934311888LL);
    /* the string "1" is not the int 1 */
    log_position z = {0, 0, 0};
    CHECK(session_id_of_string("1", 1, &z) != session_id_of(1, &z));
    /* same user, same append time, other offsets: other ids */
    log_position a = {1676862200000, 0, 10}, b = {1676862200000, 0, 11}, c = {1676862200000, 1, 10};
    CHECK(session_id_of(1, &a) != session_id_of(1, &b));
    CHECK(session_id_of(1, &a) != session_id_of(1, &c));
    CHECK(session_id_of(1, &a) != session_id_of(2, &a));
}

static void test_utf8(void)
{
    CHECK(utf8_valid("plain ascii text, long enough for the fast path", 48));
    CHECK(utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    CHECK(!utf8_valid("\xc0\xaf", 2));         /* overlong */
    CHECK(!utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    CHECK(!utf8_valid("abcdefgh\xe2\x82", 10)); /* truncated */
}

int main(void)
{
    test_parse_valid();
    test_parse_invalid();
    test_parse_deep();
    test_timestamps();
    test_epoch();
    test_mapping();
    test_session_id_vectors();
    test_utf8();
    return check_summary("test_record");
}
