/*
 * keyed_sort.h - sorts (64-bit key, pointer) pairs by key, in place.
 *
 * The engine sorts the sessions that close at one instant by user id, a few
 * hundred at a time on every watermark step; glibc's qsort, a comparator
 * call per step, cost 8% of the engine's time there (bench/engine_order.c).
 * This is an introsort with the comparison inline: quicksort (median of
 * three), heapsort once 2 log2 n levels deep, so no input is quadratic,
 * insertion sort on short runs. Not stable: callers sort on unique keys.
 */
#ifndef SESSIONIZER_KEYED_SORT_H
#define SESSIONIZER_KEYED_SORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct keyed {
    uint64_t key;
    void *ptr;
} keyed;

void keyed_sort(keyed *v, size_t n);

/* keyed_sort with the quicksort depth given: 0 heapsorts at once (for the
 * tests, which cannot reach the fallback with natural inputs otherwise). */
void keyed_sort_depth(keyed *v, size_t n, unsigned depth);

/* Order-preserving maps to unsigned keys. */
static inline uint64_t keyed_from_i64(int64_t x) { return (uint64_t)x ^ (UINT64_C(1) << 63); }
static inline int64_t keyed_to_i64(uint64_t k) { return (int64_t)(k ^ (UINT64_C(1) << 63)); }

#endif
