/*
 * test_histogram.c - percentiles of the latency histogram stay within its
 * 12.5% bucket precision.
 */
#include <stdlib.h>

#include "check.h"
#include "common/histogram.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    histogram h = {0};
    CHECK_EQ_I64(histogram_quantile(&h, 0.5), 0);
    enum { N = 100000 };
    static uint64_t v[N];
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        v[i] = (x % 1000) * (1 + x % 5000); /* 0 .. ~5e6, skewed */
        histogram_add(&h, v[i]);
    }
    qsort(v, N, sizeof *v, cmp_u64);
    const double qs[] = {0.01, 0.5, 0.9, 0.99, 0.999};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
        uint64_t exact = v[(size_t)(qs[i] * N)], got = histogram_quantile(&h, qs[i]);
        CHECK(got >= exact && (double)got <= (double)exact * 1.125 + 1);
    }
    CHECK_EQ_I64(histogram_quantile(&h, 1.0), v[N - 1]);
    CHECK_EQ_I64(h.count, N);
    return check_summary("test_histogram");
}
