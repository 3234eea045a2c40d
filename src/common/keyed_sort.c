/*
 * keyed_sort.c - introsort of (key, pointer) pairs; see keyed_sort.h.
 */
#include "common/keyed_sort.h"

#include <assert.h>

static void sift_down(keyed *v, size_t i, size_t n)
{
    keyed x = v[i];
    for (size_t c; (c = 2 * i + 1) < n; i = c) {
        if (c + 1 < n && v[c + 1].key > v[c].key) c++;
        if (v[c].key <= x.key) break;
        v[i] = v[c];
    }
    v[i] = x;
}

static void heap_sort(keyed *v, size_t n)
{
    for (size_t i = n / 2; i-- > 0;) sift_down(v, i, n);
    for (size_t k = n; k-- > 1;) {
        keyed t = v[0];
        v[0] = v[k];
        v[k] = t;
        sift_down(v, 0, k);
    }
}

static void insertion_sort(keyed *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        keyed x = v[i];
        size_t k = i;
        for (; k > 0 && v[k - 1].key > x.key; k--) v[k] = v[k - 1];
        v[k] = x;
    }
}

void keyed_sort_depth(keyed *v, size_t n, unsigned depth)
{
    while (n > 16) {
        if (depth-- == 0) {
            heap_sort(v, n);
            return;
        }
        uint64_t a = v[0].key, b = v[n / 2].key, c = v[n - 1].key;
        uint64_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        /* Hoare partition: the pivot value is in the range, so both scans
         * stop inside it; afterwards [0, j] <= pivot <= [j + 1, n), both
         * sides non-empty. */
        size_t i = 0, j = n - 1;
        for (;;) {
            while (v[i].key < pivot) i++;
            while (v[j].key > pivot) j--;
            if (i >= j) break;
            keyed t = v[i];
            v[i++] = v[j];
            v[j--] = t;
        }
        assert(j + 1 < n && v[j].key <= pivot && v[j + 1].key >= pivot);
        size_t left = j + 1, right = n - left;
        if (left < right) { /* recurse on the smaller side: O(log n) stack */
            keyed_sort_depth(v, left, depth);
            v += left;
            n = right;
        } else {
            keyed_sort_depth(v + left, right, depth);
            n = left;
        }
    }
    insertion_sort(v, n);
#ifndef NDEBUG
    for (size_t i = 1; i < n; i++) assert(v[i - 1].key <= v[i].key);
#endif
}

void keyed_sort(keyed *v, size_t n)
{
    unsigned depth = 0;
    for (size_t m = n; m > 1; m >>= 1) depth += 2;
    keyed_sort_depth(v, n, depth);
}
