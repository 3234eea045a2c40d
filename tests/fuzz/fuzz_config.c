/*
 * fuzz_config.c - configuration files (YAML) on arbitrary bytes: never a
 * crash or a leak; an accepted file prints (sessionizer config) to a file
 * that is accepted again and prints the same.
 */
#include "fuzz_check.h"
#include <stdint.h>
#include <string.h>

#include "cli/options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cli_options o;
    options_defaults(&o);
    char err[1024];
    if (options_load_yaml(&o, data, size, "fuzz.yaml", err, sizeof err) != 0) {
        REQUIRE(err[0] != '\0');
        options_free(&o);
        return 0;
    }
    buf p1, p2;
    buf_init(&p1);
    buf_init(&p2);
    options_print(&o, &p1, 0);
    buf_append_byte(&p1, '\0');
    cli_options r;
    options_defaults(&r);
    int rc = options_load_yaml(&r, p1.data, p1.len - 1, "printed.yaml", err, sizeof err);
    /* an inline secret is printed as <redacted>, which is refused on purpose */
    REQUIRE(rc == 0 || strstr((const char *)p1.data, "<redacted>") != NULL);
    if (rc == 0) {
        options_print(&r, &p2, 0);
        buf_append_byte(&p2, '\0');
        REQUIRE(p1.len == p2.len && memcmp(p1.data, p2.data, p1.len) == 0);
    }
    buf_free(&p1);
    buf_free(&p2);
    options_free(&r);
    options_free(&o);
    return 0;
}
