/*
 * test_xalloc.c - the heap's huge pages (src/common/xalloc.c): none until
 * xalloc_huge_pages (a job under a --memory-limit the user chose never calls
 * it), then the heap, and what malloc adds to it later, is advised for them
 * (the kernel marks such a mapping "hg" in /proc/self/smaps).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "common/xalloc.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#endif

#ifndef UNDER_ASAN
/* Of the [heap] mappings: how many, and how many carry the VmFlags flag. */
static void heap_flags(const char *flag, int *mappings, int *flagged)
{
    *mappings = *flagged = 0;
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f != NULL);
    if (!f) return;
    char line[512];
    int in_heap = 0;
    while (fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strstr(line, "[heap]")) {
            in_heap = 1;
            ++*mappings;
        } else if (strncmp(line, "VmFlags:", 8) == 0) {
            if (in_heap && strstr(line, flag)) ++*flagged;
            in_heap = 0;
        }
    }
    fclose(f);
}
#endif

int main(void)
{
#ifdef UNDER_ASAN
    /* ASan's allocator does not use the program break: nothing to advise */
    printf("test_xalloc: not applicable under AddressSanitizer\n");
    return check_summary("test_xalloc");
#else
    if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0) {
        printf("test_xalloc: this kernel has no transparent huge pages\n");
        return check_summary("test_xalloc");
    }
    xalloc_keep_heap();
    uintptr_t before = (uintptr_t)sbrk(0);
    enum { N = 256 };
    void *blocks[2 * N];
    for (int i = 0; i < N; i++) blocks[i] = xmalloc(64 << 10); /* 16 MiB, below mmap's threshold */
    CHECK((uintptr_t)sbrk(0) > before); /* the heap grew */
    int maps, flagged;
    heap_flags(" hg", &maps, &flagged);
    CHECK(maps > 0);
    CHECK_EQ_I64(flagged, 0); /* not yet */
    xalloc_huge_pages();
    heap_flags(" hg", &maps, &flagged);
    CHECK(flagged > 0);
    /* and what the heap grows by later */
    uintptr_t mid = (uintptr_t)sbrk(0);
    for (int i = N; i < 2 * N; i++) blocks[i] = xmalloc(64 << 10);
    CHECK((uintptr_t)sbrk(0) > mid);
    heap_flags(" hg", &maps, &flagged);
    CHECK_EQ_I64(flagged, maps);
    for (int i = 0; i < 2 * N; i++) free(blocks[i]);
    return check_summary("test_xalloc");
#endif
}
