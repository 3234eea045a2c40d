/*
 * test_record.c - the record parser, the timestamp parser and the session-id
 * test vectors published in docs/semantics.md.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/utf8.h"
#include "engine/session_id.h"
#include "record/parse.h"
#include "record/timestamp.h"

/* Parses with the parser given and with a general-path-only parser, which
 * must agree (the fast path for common records is an optimisation only). */
static parse_error parse(record_parser *p, const char *line, visit *v)
{
    raw_record r = {.data = line, .len = strlen(line), .pos = {0, 0, 42}, .line = 1};
    char detail[256], detail2[256];
    record_parser *general = record_parser_new();
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
    record_parser *p = record_parser_new();
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
    record_parser *p = record_parser_new();
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
    test_timestamps();
    test_session_id_vectors();
    test_utf8();
    return check_summary("test_record");
}
