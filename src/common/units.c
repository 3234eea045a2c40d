/*
 * units.c - duration and size parsing for the command line (see units.h).
 */
#include "common/units.h"

#include <string.h>

static int parse_uint(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *s = p;
    *out = v;
    return 0;
}

int parse_duration_us(const char *s, int64_t *out_us)
{
    static const struct { const char *unit; uint64_t us; } units[] = {
        {"us", 1}, {"ms", 1000}, {"s", 1000000}, {"m", 60000000}, {"h", 3600000000ULL},
        {"d", 86400000000ULL}, {"", 1000000}};
    uint64_t v;
    if (parse_uint(&s, &v)) return -1;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        if (strcmp(s, units[i].unit) != 0) continue;
        if (v > (uint64_t)INT64_MAX / units[i].us) return -1;
        *out_us = (int64_t)(v * units[i].us);
        return 0;
    }
    return -1;
}

int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(s, yes[i]) == 0) return *out = 1, 0;
        if (strcmp(s, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

int parse_count(const char *s, uint64_t *out)
{
    static const struct { const char *unit; uint64_t mul; } units[] = {
        {"", 1}, {"k", 1000}, {"M", 1000000}, {"G", 1000000000},
        {"KiB", 1024}, {"MiB", 1024 * 1024}, {"GiB", 1024 * 1024 * 1024}};
    uint64_t v;
    if (parse_uint(&s, &v)) return -1;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        if (strcmp(s, units[i].unit) != 0) continue;
        if (units[i].mul && v > UINT64_MAX / units[i].mul) return -1;
        *out = v * units[i].mul;
        return 0;
    }
    return -1;
}
