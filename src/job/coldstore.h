/*
 * coldstore.h - where --memory-limit keeps cold users (engine.h,
 * engine_cold_store): an append-only scratch file of their blobs.
 *
 * Nothing here needs to survive the process. The checkpoint is the truth:
 * its snapshots carry cold users' blobs like any others (read back through
 * engine_foreach_user) and a restore rebuilds them from the snapshot and the
 * change log, evicting again as it goes. So the file is created unlinked
 * (O_TMPFILE, or created and unlinked at once): a crash leaves nothing to
 * clean up, there is no fsync, and the page cache does the caching (reads
 * and writes, no mmap: what the kernel caches is not the job's resident
 * memory; reads hinted ahead go through an io_uring, coldstore.c).
 *
 * A record is u32 length | u64 XXH3(blob, seeded with the record's offset) |
 * blob; its handle is its offset. Puts are buffered (1 MiB) and a get of a
 * record still in the buffer is served from it. A record taken back into
 * memory (drop) is dead space; when dead space passes the live records and
 * 64 MiB, the owner rewrites the live ones into a new file
 * (coldstore_compact_begin, engine_cold_rehandle with coldstore_move,
 * coldstore_compact_end), so the file stays under about twice the live
 * records plus 64 MiB.
 */
#ifndef SESSIONIZER_COLDSTORE_H
#define SESSIONIZER_COLDSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct coldstore coldstore;

/* An unlinked file in dir. NULL with err set. */
coldstore *coldstore_open(const char *dir, char *err, size_t errlen);
void coldstore_close(coldstore *cs);

/* 0, or -1 with errno set (EIO: a record failed its checksum). */
int coldstore_put(coldstore *cs, const void *blob, size_t len, uint64_t *handle);
int coldstore_get(coldstore *cs, uint64_t handle, size_t len, buf *out);
void coldstore_drop(coldstore *cs, uint64_t handle, size_t len);
/* A hint: a get of this record is coming. Its read is queued, and handed to
 * the kernel with the others queued by the next get that needs one of them
 * (one system call for several loads); no effect on what get returns. */
void coldstore_prefetch(coldstore *cs, uint64_t handle, size_t len);

int coldstore_wants_compaction(const coldstore *cs);
int coldstore_compact_begin(coldstore *cs);
/* For engine_cold_rehandle: copies the record into the new file and renames
 * *handle, which must stay where it is until coldstore_compact_end: the
 * records are read in batches, and the last batch is written by it. */
int coldstore_move(void *cs, uint64_t *handle, uint32_t len);
/* Switches to the new file (ok) or drops it (!ok). 0, or -1 with errno. */
int coldstore_compact_end(coldstore *cs, int ok);

typedef struct coldstore_stats {
    uint64_t live_bytes, file_bytes; /* records held; the file's length */
    uint64_t written, read;          /* bytes, since open */
    uint64_t compactions;
    uint64_t read_ahead;             /* gets served by a read ahead (coldstore_prefetch) */
} coldstore_stats;
void coldstore_get_stats(const coldstore *cs, coldstore_stats *out);

#endif
