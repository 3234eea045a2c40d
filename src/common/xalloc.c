/*
 * xalloc.c - allocation wrappers that abort with a message on exhaustion.
 */
#include "common/xalloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "common/log.h"

static void out_of_memory(size_t n)
{
    log_error("sessionizer", "out of memory (allocating %zu bytes); the last checkpoint is "
              "intact, restart to resume", n);
    abort();
}

/* Huge pages for the heap (xalloc_huge_pages): the end of the heap already
 * advised, 0 while off. A heap of 4 KiB pages took a TLB miss on most of the
 * engine's accesses (user slot, session, page store: scattered over the
 * open state), which the prefetch pipeline cannot hide: with 2 MiB pages
 * the long-session file runs in ~15% less CPU (docs/performance.md,
 * "Durable mode"). */
static uintptr_t heap_start;
static _Atomic uintptr_t huge_upto;

/* The heap grew (malloc moved the program break): asks for huge pages on
 * what it added, as glibc's own glibc.malloc.hugetlb=1 tunable does. sbrk(0)
 * reads glibc's copy of the break, no system call. */
static inline void heap_grew(void)
{
#ifdef __GLIBC__
    uintptr_t from = atomic_load_explicit(&huge_upto, memory_order_relaxed);
    if (!from) return;
    uintptr_t end = (uintptr_t)sbrk(0);
    if (end <= from ||
        !atomic_compare_exchange_strong_explicit(&huge_upto, &from, end, memory_order_relaxed,
                                                 memory_order_relaxed))
        return;
    madvise((void *)from, end - from, MADV_HUGEPAGE); /* a hint: failure changes nothing */
#endif
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    heap_grew();
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) out_of_memory(n * size);
    heap_grew();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    heap_grew();
    return q;
}

char *xstrndup(const char *s, size_t n)
{
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

/* The engine allocates and frees a session's pages at the visit rate, and a
 * job's memory only grows to its peak. glibc's defaults hand freed memory at
 * the top of the heap back to the kernel (above 128 KiB) and serve large
 * blocks with mmap: the next burst of sessions then takes a page fault per
 * fresh page, which measured 10% of the job thread's time on the Kafka
 * benchmark (docs/performance.md). And the largest fast bins (up to 160
 * bytes rather than 128): a session of a few pages has a page store about
 * that size, freed and allocated again at once; ~4% of the engine's time
 * on bench/engine_order.c, 5 alternating runs. */
void xalloc_keep_heap(void)
{
#ifdef __GLIBC__
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    mallopt(M_TOP_PAD, 16 << 20);
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_MXFAST, 160);
    heap_start = (uintptr_t)sbrk(0);
#endif
}

void xalloc_huge_pages(void)
{
#ifdef __GLIBC__
    if (heap_start == 0 || heap_start == (uintptr_t)-1) return; /* no xalloc_keep_heap */
    atomic_store(&huge_upto, heap_start);
    heap_grew();
#endif
}
