/*
 * fuzz_record_parse.c - the JSON-lines record parser on arbitrary bytes,
 * with the default layout and with mapped ones (--field, --user-type,
 * --time-format, --user-from key).
 *
 * The parser reuses its buffers across records, so the property that
 * matters beyond "does not crash" is isolation: a record parses the same
 * whatever came before it. The input is split at its first newline into a
 * record A and a record B; B is parsed after A by one parser and alone by a
 * fresh one, and both answers must match. An accepted record has a
 * strict-UTF-8, NUL-free page (and string user). And the fast path for
 * common records agrees with yajl alone: B parsed by a parser without it
 * gives the same answer. Every check runs under each mapping below.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/utf8.h"
#include "fuzz_check.h"
#include "record/parse.h"

static void accepted(const visit *v)
{
    REQUIRE(utf8_valid(v->page, v->page_len));
    REQUIRE(memchr(v->page, 0, v->page_len) == NULL);
    if (v->user) {
        REQUIRE(v->user_len > 0 && v->user_len <= USER_MAX_BYTES);
        REQUIRE(utf8_valid(v->user, v->user_len) && !memchr(v->user, 0, v->user_len));
    }
}

static int same(const visit *a, const visit *b)
{
    return a->user_id == b->user_id && a->event_time_us == b->event_time_us &&
           a->page_len == b->page_len && memcmp(a->page, b->page, a->page_len) == 0 &&
           a->user_len == b->user_len && (a->user == NULL) == (b->user == NULL) &&
           (!a->user || memcmp(a->user, b->user, a->user_len) == 0);
}

static void check_mapping(const record_mapping *m, const raw_record *a, const raw_record *b)
{
    record_parser *shared = record_parser_new(m), *fresh = record_parser_new(m);
    record_parser *general = record_parser_new(m);
    record_parser_set_fast_path(general, 0);
    visit va, v1, v2, v3;
    char da[256], d1[256], d2[256], d3[256];
    if (record_parse(shared, a, &va, da, sizeof da) == PARSE_OK) accepted(&va);
    parse_error e1 = record_parse(shared, b, &v1, d1, sizeof d1);
    parse_error e2 = record_parse(fresh, b, &v2, d2, sizeof d2);
    parse_error e3 = record_parse(general, b, &v3, d3, sizeof d3);
    REQUIRE(e1 == e2 && e2 == e3);
    REQUIRE(strcmp(d1, d2) == 0 && strcmp(d2, d3) == 0);
    if (e1 == PARSE_OK) {
        accepted(&v1);
        REQUIRE(same(&v1, &v2) && same(&v3, &v2));
    }
    record_parser_free(shared);
    record_parser_free(fresh);
    record_parser_free(general);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const char *nl = memchr(text, '\n', size);
    size_t a_len = nl ? (size_t)(nl - text) : size;
    raw_record a = {.data = text, .len = a_len};
    raw_record b = {.data = nl ? nl + 1 : text + size, .len = nl ? size - a_len - 1 : 0};

    static const char *const layouts[][5] = {
        {"int", "iso8601", NULL},
        {"string", "epoch_ms", "user=/userId", "page=/url", "time=/ts"},
        {"int", "epoch_s", "user=/user/id", "page=/context/pages/1", "time=/m~1t~0"},
        {"string", "epoch_ns", "user=/u", "page=/p", "time=/0"},
    };
    for (size_t i = 0; i < sizeof layouts / sizeof *layouts; i++) {
        record_mapping m;
        char err[512];
        record_mapping_default(&m);
        REQUIRE(record_mapping_set_user_type(&m, layouts[i][0], err, sizeof err) == 0);
        REQUIRE(record_mapping_set_time_format(&m, layouts[i][1], err, sizeof err) == 0);
        for (size_t k = 2; k < 5 && layouts[i][k]; k++)
            REQUIRE(record_mapping_set_field(&m, layouts[i][k], err, sizeof err) == 0);
        check_mapping(&m, &a, &b);
    }
    /* the user from a Kafka key: the record's first bytes */
    record_mapping m;
    record_mapping_default(&m);
    m.user_type = USER_STRING;
    m.user_from_key = 1;
    a.key = b.key = text;
    a.key_len = b.key_len = size < 8 ? size : 8;
    check_mapping(&m, &a, &b);
    return 0;
}
