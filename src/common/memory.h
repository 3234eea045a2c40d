/*
 * memory.h - the process's resident memory and the machine's share of it,
 * for --memory-limit (job.c) and the figures in bench/.
 */
#ifndef SESSIONIZER_MEMORY_H
#define SESSIONIZER_MEMORY_H

#include <stdint.h>

/* Resident set size in bytes (/proc/self/statm), 0 if unknown. */
uint64_t memory_resident_bytes(void);

/* The highest resident set size so far, in bytes (VmHWM of
 * /proc/self/status), 0 if unknown: --stats reports it, and the tests read
 * it there (a parent's wait4() maxrss also counts what the parent held when
 * it forked). */
uint64_t memory_peak_resident_bytes(void);

/* The default budget: half of the memory this process may use, the smaller
 * of the machine's physical memory and its cgroup's limit (memory.max, v2;
 * memory.limit_in_bytes, v1). 0 if neither is known. */
uint64_t memory_default_limit(void);

/* Returns the free pages of the heap to the kernel (glibc: also those
 * between live blocks): after the job spilled users near its limit, their
 * freed memory is scattered in blocks malloc cannot give to one large
 * allocation, and would otherwise stay resident. xalloc_keep_heap keeps it by
 * default, for speed; this is for when memory, not speed, is short. */
void memory_give_back(void);

/* Undoes xalloc_keep_heap for a job that spills under --memory-limit: every
 * block of 256 KiB or more (the engine's tables, the close queue's arrays,
 * the checkpoint's frames, the cold store's buffer) gets its own mapping,
 * returned to the kernel whole when freed or moved by a growth, instead of
 * sitting in the heap among small blocks where its free space stays
 * resident; and the heap's top is given back past 4 MiB free. */
void memory_tight(void);

#endif
