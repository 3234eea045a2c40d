/*
 * xalloc.c - allocation wrappers that abort with a message on exhaustion.
 */
#include "common/xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "common/log.h"

static void out_of_memory(size_t n)
{
    log_error("sessionizer", "out of memory (allocating %zu bytes); the last checkpoint is "
              "intact, restart to resume", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) out_of_memory(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
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
#endif
}
