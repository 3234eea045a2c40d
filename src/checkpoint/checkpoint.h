/*
 * checkpoint.h - the job's durable state: where to resume and what is open.
 *
 * A checkpoint directory holds one SQLite database (checkpoint.db, WAL mode,
 * synchronous=FULL) with two tables: meta (named blobs: format version,
 * source identity and position, engine watermarks and counters, sink and
 * dead-letter state) and users (one row per user with open sessions).
 * docs/checkpoint.md explains why SQLite rather than LMDB or RocksDB.
 *
 * Each commit is one SQLite transaction writing only what changed since the
 * previous one (the users the engine marked dirty), so its cost follows the
 * activity, not the number of open sessions. Every row carries an XXH3
 * checksum of its key and value, verified when loaded: a bit flip is refused
 * rather than resumed from. A truncated or damaged file is refused by SQLite
 * itself. Either way the error names the way out.
 *
 * The directory is locked (flock) for the life of the job: two jobs on one
 * checkpoint would corrupt each other's progress.
 */
#ifndef SESSIONIZER_CHECKPOINT_H
#define SESSIONIZER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct checkpoint checkpoint;

/* Creates the directory if needed. */
checkpoint *checkpoint_open(const char *dir, char *err, size_t errlen);
void checkpoint_close(checkpoint *cp);

/* 1 if a commit exists, 0 if the checkpoint is new. */
int checkpoint_has_state(checkpoint *cp);

/* 1 and the value in out, 0 if absent, -1 if corrupt (err says so). */
int checkpoint_get(checkpoint *cp, const char *key, buf *out, char *err, size_t errlen);

typedef int (*checkpoint_user_fn)(void *ctx, int64_t user_id, const void *blob, size_t len);
/* Calls fn for each stored user; -1 on corruption or when fn fails. */
int checkpoint_load_users(checkpoint *cp, checkpoint_user_fn fn, void *ctx, char *err,
                          size_t errlen);

/* One commit: begin, any number of puts, then commit (or abort). */
int checkpoint_begin(checkpoint *cp, char *err, size_t errlen);
int checkpoint_put(checkpoint *cp, const char *key, const void *val, size_t len, char *err,
                   size_t errlen);
/* blob NULL deletes the user's row. */
int checkpoint_put_user(checkpoint *cp, int64_t user_id, const void *blob, size_t len, char *err,
                        size_t errlen);
int checkpoint_commit(checkpoint *cp, char *err, size_t errlen);
void checkpoint_abort(checkpoint *cp);

/* Bytes on disk (database and WAL), for the summary and the benchmarks. */
int64_t checkpoint_disk_bytes(checkpoint *cp);

#endif
