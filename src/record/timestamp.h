/*
 * timestamp.h - ISO-8601 event times to microseconds since the epoch.
 *
 * Accepted: YYYY-MM-DD'T'hh:mm:ss[.fraction][Z|+hh:mm|-hh:mm], 'T' also
 * written 't' or ' '; no zone means UTC; the fraction has 1 to 9 digits and
 * is truncated to microseconds. Rejected: impossible dates (2023-02-29),
 * hour 24, leap second 60, instants outside the years 0000-9999 (UTC: the
 * zone applied), anything else.
 */
#ifndef SESSIONIZER_TIMESTAMP_H
#define SESSIONIZER_TIMESTAMP_H

#include <stddef.h>
#include <stdint.h>

/* Returns 0 and sets *out_us, or -1 if s is not an accepted timestamp. */
int parse_iso8601_us(const char *s, size_t len, int64_t *out_us);

/* Epoch times: [-]digits[.digits] counted in units of 10^-decimals seconds
 * (decimals 0: seconds, 3: milliseconds, 6: microseconds, 9: nanoseconds),
 * as a JSON number's text or inside a string. No exponent, sign '+',
 * whitespace or empty part. Truncated to microseconds towards the past
 * (-1.5 us is -2 us), and, like ISO-8601 times, refused outside years
 * 0000-9999. Returns 0 and sets *out_us, or -1. */
int parse_epoch_us(const char *s, size_t len, int decimals, int64_t *out_us);

/* Formats microseconds since the epoch as "YYYY-MM-DDThh:mm:ss[.ffffff]Z"
 * (fraction only when non-zero). Returns the length written (< 40). */
size_t format_iso8601_us(int64_t us, char out[40]);

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
int64_t days_from_civil(int64_t y, unsigned m, unsigned d);

#endif
