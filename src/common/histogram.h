/*
 * histogram.h - a fixed-size log-linear histogram of non-negative durations
 * (microseconds), for percentiles of unbounded streams in constant memory.
 *
 * Values are bucketed by power of two with 8 linear sub-buckets each, so a
 * reported percentile is within 12.5% of the true one; that is the precision
 * a latency figure needs, at 2 KiB whatever the run's length.
 */
#ifndef SESSIONIZER_HISTOGRAM_H
#define SESSIONIZER_HISTOGRAM_H

#include <stdint.h>

#define HISTOGRAM_BUCKETS (64 * 8)

typedef struct histogram {
    uint64_t count;
    uint64_t max;
    uint32_t buckets[HISTOGRAM_BUCKETS];
} histogram;

void histogram_add(histogram *h, uint64_t value);
/* The value below which a fraction q (0..1) of the values fall (the upper
 * bound of its bucket); 0 when empty. */
uint64_t histogram_quantile(const histogram *h, double q);

#endif
