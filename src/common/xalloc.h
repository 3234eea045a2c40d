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
 * giving it back to the kernel, in huge pages (see xalloc.c). */
void xalloc_keep_heap(void);

/* Undoes xalloc_keep_heap's huge pages (memory_tight): a 2 MiB page is
 * resident as soon as one byte of it is, which a memory budget cannot afford. */
void xalloc_small_pages(void);

#endif
