/*
 * units.h - parsing of the CLI's durations ("50s", "500ms", "2m"), sizes and
 * booleans: the one spelling of each, wherever a value comes from (options,
 * environment, config file, --sink-opt).
 */
#ifndef SESSIONIZER_UNITS_H
#define SESSIONIZER_UNITS_H

#include <stdint.h>

/* Durations: a non-negative integer with a unit us, ms, s, m, h or d (a bare
 * number is seconds). Returns 0 and microseconds, or -1. */
int parse_duration_us(const char *s, int64_t *out_us);
/* Counts and sizes: a non-negative integer, optional k/M/G suffix (x1000)
 * or KiB/MiB/GiB (x1024). */
int parse_count(const char *s, uint64_t *out);

/* Booleans: true/false, yes/no, on/off, 1/0. Returns 0 and 1 or 0, or -1. */
int parse_bool(const char *s, int *out);

#endif
