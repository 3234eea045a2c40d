/*
 * fuzz_timestamp.c - the ISO-8601 parser on arbitrary bytes: an accepted time
 * formats back to a string that parses to the same instant.
 */
#include "fuzz_check.h"
#include <stdint.h>

#include "record/timestamp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t us;
    if (parse_iso8601_us((const char *)data, size, &us) != 0) return 0;
    char s[40];
    size_t n = format_iso8601_us(us, s);
    int64_t back;
    REQUIRE(parse_iso8601_us(s, n, &back) == 0);
    REQUIRE(back == us);
    return 0;
}
