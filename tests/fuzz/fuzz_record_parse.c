/*
 * fuzz_record_parse.c - the JSON-lines record parser on arbitrary bytes.
 *
 * The parser reuses one yajl handle across records, so the property that
 * matters beyond "does not crash" is isolation: a record parses the same
 * whatever came before it. The input is split at its first newline into a
 * record A and a record B; B is parsed after A by one parser and alone by a
 * fresh one, and both answers must match. An accepted record has a
 * strict-UTF-8, NUL-free page. And the fast path for common records agrees
 * with yajl alone: B parsed by a parser without it gives the same answer.
 */
#include <stdint.h>
#include <string.h>

#include "common/utf8.h"
#include "fuzz_check.h"
#include "record/parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    const char *nl = memchr(text, '\n', size);
    size_t a_len = nl ? (size_t)(nl - text) : size;
    raw_record a = {.data = text, .len = a_len};
    raw_record b = {.data = nl ? nl + 1 : text + size, .len = nl ? size - a_len - 1 : 0};

    record_parser *shared = record_parser_new(), *fresh = record_parser_new();
    record_parser *general = record_parser_new();
    record_parser_set_fast_path(general, 0);
    visit va, v1, v2, v3;
    char da[256], d1[256], d2[256], d3[256];
    parse_error ea = record_parse(shared, &a, &va, da, sizeof da);
    if (ea == PARSE_OK) {
        REQUIRE(utf8_valid(va.page, va.page_len));
        REQUIRE(memchr(va.page, 0, va.page_len) == NULL);
    }
    parse_error e1 = record_parse(shared, &b, &v1, d1, sizeof d1);
    parse_error e2 = record_parse(fresh, &b, &v2, d2, sizeof d2);
    parse_error e3 = record_parse(general, &b, &v3, d3, sizeof d3);
    REQUIRE(e1 == e2 && e2 == e3);
    REQUIRE(strcmp(d1, d2) == 0 && strcmp(d2, d3) == 0);
    if (e1 == PARSE_OK) {
        REQUIRE(v1.user_id == v2.user_id && v1.event_time_us == v2.event_time_us);
        REQUIRE(v1.page_len == v2.page_len && memcmp(v1.page, v2.page, v1.page_len) == 0);
        REQUIRE(v3.user_id == v2.user_id && v3.event_time_us == v2.event_time_us);
        REQUIRE(v3.page_len == v2.page_len && memcmp(v3.page, v2.page, v3.page_len) == 0);
    }
    record_parser_free(shared);
    record_parser_free(fresh);
    record_parser_free(general);
    return 0;
}
