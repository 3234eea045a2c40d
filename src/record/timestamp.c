/*
 * timestamp.c - strict ISO-8601 parsing and formatting (see timestamp.h).
 *
 * Hand-written because the C library offers no strict, locale-free,
 * time-zone-independent parser (strptime accepts impossible dates and
 * timegm is a GNU extension), and this sits on the hot path of every record.
 */
#include "record/timestamp.h"

#include <stdio.h>

int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int digits(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)s[i] - '0';
        if (c > 9) return -1;
        v = v * 10 + c;
    }
    *out = v;
    return 0;
}

static unsigned days_in_month(unsigned y, unsigned m)
{
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dim[m - 1];
}

int parse_iso8601_us(const char *s, size_t len, int64_t *out_us)
{
    unsigned y, mo, d, h, mi, se;
    if (len < 19) return -1;
    if (digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
        digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
        digits(s + 17, 2, &se))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59)
        return -1;
    size_t i = 19;
    int64_t frac_us = 0;
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        int64_t scale = 100000;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (i - start >= 9) return -1;
            frac_us += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        if (i == start) return -1;
    }
    int64_t offset_s = 0;
    if (i < len) {
        if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
            i++;
        } else if ((s[i] == '+' || s[i] == '-') && len - i == 6 && s[i + 3] == ':') {
            unsigned oh, om;
            if (digits(s + i + 1, 2, &oh) || digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
                return -1;
            offset_s = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
            i = len;
        } else {
            return -1;
        }
    }
    if (i != len) return -1;
    int64_t days = days_from_civil(y, mo, d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - offset_s;
    int64_t us = secs * 1000000 + frac_us;
    /* The years 0000-9999 of the instant (UTC), as epoch times: a zone can
     * move 9999-12-31T23:59:59-00:59 into year 10000, which no time of the
     * program (format_iso8601_us's, a sink's) can be written as. */
    if (us < -INT64_C(62167219200000000) || us > INT64_C(253402300799999999)) return -1;
    *out_us = us;
    return 0;
}

int parse_epoch_us(const char *s, size_t len, int decimals, int64_t *out_us)
{
    /* The same range as ISO-8601: 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z. */
    const uint64_t max_past = UINT64_C(62167219200000000), max_future = UINT64_C(253402300799999999);
    size_t i = 0;
    int neg = len > 0 && s[0] == '-';
    i += (size_t)neg;
    size_t int_start = i;
    while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    size_t int_end = i, frac_start = i, frac_end = i;
    if (int_end == int_start) return -1;
    if (i < len && s[i] == '.') {
        frac_start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9') i++;
        frac_end = i;
        if (frac_end == frac_start) return -1;
    }
    if (i != len) return -1;
    /* The digits, read as one number with its point moved 6 - decimals
     * places to the right, give microseconds; digits past that are the
     * remainder, which only matters for rounding negative times down. */
    size_t n_int = int_end - int_start, n_frac = frac_end - frac_start;
    int64_t point = (int64_t)n_int + 6 - decimals; /* digits before the microsecond point */
    uint64_t v = 0;
    int rest = 0;
    for (size_t k = 0; k < n_int + n_frac; k++) {
        char c = k < n_int ? s[int_start + k] : s[frac_start + k - n_int];
        unsigned d = (unsigned)(c - '0');
        if ((int64_t)k < point) {
            if (v > (max_future + 1) / 10) return -1; /* far out of range; stop before overflow */
            v = v * 10 + d;
        } else if (d) {
            rest = 1;
        }
    }
    for (int64_t k = (int64_t)(n_int + n_frac); k < point; k++) {
        if (v > (max_future + 1) / 10) return -1;
        v *= 10;
    }
    if (neg) {
        if (v + (uint64_t)rest > max_past) return -1;
        *out_us = -(int64_t)v - rest;
    } else {
        if (v > max_future) return -1;
        *out_us = (int64_t)v;
    }
    return 0;
}

size_t format_iso8601_us(int64_t us, char out[40])
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) frac += 1000000, secs -= 1;
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) rem += 86400, days -= 1;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int n;
    if (frac)
        n = snprintf(out, 40, "%04lld-%02u-%02uT%02d:%02d:%02d.%06lldZ", (long long)y, m, d,
                     (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60), (long long)frac);
    else
        n = snprintf(out, 40, "%04lld-%02u-%02uT%02d:%02d:%02dZ", (long long)y, m, d,
                     (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60));
    return n < 0 ? 0 : (size_t)n;
}
