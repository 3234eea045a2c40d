/*
 * test_keyed_sort.c - keyed_sort orders every input the engine could hand
 * it, keeps every pair, and its heapsort fallback (reached only by inputs
 * that defeat median-of-three) sorts too.
 */
#include <stdlib.h>

#include "check.h"
#include "common/keyed_sort.h"

/* Sorted, and the same multiset of pairs (ptr carries the original index). */
static int sorted_permutation(const keyed *v, const uint64_t *orig, size_t n)
{
    char *seen = calloc(n ? n : 1, 1);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        size_t from = (size_t)(uintptr_t)v[i].ptr;
        ok = from < n && !seen[from] && orig[from] == v[i].key && (i == 0 || v[i - 1].key <= v[i].key);
        if (ok) seen[from] = 1;
    }
    free(seen);
    return ok;
}

enum { PATTERNS = 8 };

static uint64_t pattern_key(int pattern, size_t i, size_t n)
{
    switch (pattern) {
    case 0: return rnd();                      /* random */
    case 1: return i;                          /* ascending */
    case 2: return n - i;                      /* descending */
    case 3: return 7;                          /* all equal */
    case 4: return rnd() % 3;                  /* few distinct */
    case 5: return i < n / 2 ? i : n - i;      /* organ pipe */
    case 6: return keyed_from_i64((int64_t)(rnd() % 2001) - 1000); /* negatives mapped */
    default: return i % 2 ? i : UINT64_MAX - i; /* sawtooth at the extremes */
    }
}

int main(void)
{
    check_rng = 88172645463325252ULL; /* this file's own sequence of inputs */
    static const size_t sizes[] = {0, 1, 2, 3, 15, 16, 17, 33, 100, 1000, 4097, 50000};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t n = sizes[s];
        keyed *v = malloc((n ? n : 1) * sizeof *v);
        uint64_t *orig = malloc((n ? n : 1) * sizeof *orig);
        for (int pattern = 0; pattern < PATTERNS; pattern++) {
            for (int fallback = 0; fallback < 2; fallback++) {
                for (size_t i = 0; i < n; i++) {
                    orig[i] = pattern_key(pattern, i, n);
                    v[i] = (keyed){orig[i], (void *)(uintptr_t)i};
                }
                if (fallback) keyed_sort_depth(v, n, 0);
                else keyed_sort(v, n);
                CHECK(sorted_permutation(v, orig, n));
            }
        }
        free(v);
        free(orig);
    }
    /* Signed order survives the mapping. */
    CHECK(keyed_from_i64(-1) < keyed_from_i64(0));
    CHECK(keyed_from_i64(INT64_MIN) < keyed_from_i64(INT64_MAX));
    return check_summary("test_keyed_sort");
}
