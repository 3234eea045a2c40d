/*
 * histogram.c - log-linear histogram (see histogram.h).
 */
#include "common/histogram.h"

#include <assert.h>

/* The largest value's bucket, (63 - 2) * 8 + 7, fits: histogram_add's clamp
 * never has to act. */
_Static_assert((63 - 2) * 8 + 7 < HISTOGRAM_BUCKETS, "every uint64_t has a bucket");

static unsigned bucket_of(uint64_t v)
{
    if (v < 8) return (unsigned)v;
    unsigned log2 = 63u - (unsigned)__builtin_clzll(v);
    assert(log2 >= 3);
    unsigned sub = (unsigned)(v >> (log2 - 3)) & 7u;
    return (log2 - 2) * 8 + sub;
}

static uint64_t bucket_upper(unsigned b)
{
    if (b < 8) return b;
    unsigned log2 = b / 8 + 2, sub = b % 8;
    return ((uint64_t)(8 + sub + 1) << (log2 - 3)) - 1;
}

void histogram_add(histogram *h, uint64_t value)
{
    unsigned b = bucket_of(value);
    /* quantiles report a bucket's upper bound: the value must be in it */
    assert(value <= bucket_upper(b) && (b == 0 || value > bucket_upper(b - 1)));
    if (b >= HISTOGRAM_BUCKETS) b = HISTOGRAM_BUCKETS - 1;
    if (h->buckets[b] != UINT32_MAX) h->buckets[b]++;
    h->count++;
    if (value > h->max) h->max = value;
}

uint64_t histogram_quantile(const histogram *h, double q)
{
    if (h->count == 0) return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if (rank >= h->count) rank = h->count - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < HISTOGRAM_BUCKETS; b++) {
        seen += h->buckets[b];
        if (seen > rank) {
            uint64_t up = bucket_upper(b);
            return up > h->max ? h->max : up;
        }
    }
    return h->max;
}
