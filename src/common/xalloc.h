/*
 * xalloc.h - allocation that cannot return NULL.
 *
 * Out of memory is not a recoverable condition for a stream processor whose
 * state is in memory: the honest reaction is to stop before committing
 * anything, so that a restart resumes from the last good checkpoint.
 */
#ifndef SESSIONIZER_XALLOC_H
#define SESSIONIZER_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Process-wide, at start-up: keep freed memory in the heap rather than
 * giving it back to the kernel (see xalloc.c). */
void xalloc_keep_heap(void);

/* And from now on in huge pages (after xalloc_keep_heap; see xalloc.c). Not
 * under a memory budget the user chose: a 2 MiB page is resident as soon as
 * one byte of it is. */
void xalloc_huge_pages(void);

#endif
