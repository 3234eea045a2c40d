/*
 * checkpoint.h - the job's durable state: where to resume and what is open.
 *
 * Format 2 (this version): a checkpoint directory holds a snapshot of the
 * engine's state at one commit (snapshot-<seq>) and append-only logs of the
 * commits since (log-<seq>), in the encodings of changelog.h. Each commit
 * appends one checksummed frame (the visits the engine accepted since the
 * previous commit, the source position and the other named blobs, the
 * watermarks and counters) and fdatasyncs it, on a writer thread of its own
 * (checkpoint_commit): its cost follows what changed, never the open state. When the logs outgrow the snapshot a new snapshot is
 * written and the older files are deleted. Restoring loads the snapshot and
 * replays the logged frames (docs/checkpoint.md has the argument that this
 * rebuilds exactly the committed state).
 *
 * Format 1 (the SQLite checkpoint.db of earlier versions) is still read: the
 * first commit after such a restore writes a format-2 snapshot and removes
 * checkpoint.db. A newer format is refused with the way out.
 *
 * Damage is detected by checksums (frames, snapshot chunks, file headers) and
 * refused with a message naming the way out. A frame cut short at the end of
 * the newest log is a commit a crash interrupted before its fsync returned:
 * it is dropped, and the job resumes from the commit before it.
 *
 * The directory is locked (flock) for the life of the job: two jobs on one
 * checkpoint would corrupt each other's progress.
 */
#ifndef SESSIONIZER_CHECKPOINT_H
#define SESSIONIZER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "engine/engine.h"
#include "record/visit.h"

typedef struct checkpoint checkpoint;

/* Creates the directory if needed, takes the lock, reads and checks what the
 * directory holds (the engine's part is loaded by checkpoint_restore). */
checkpoint *checkpoint_open(const char *dir, char *err, size_t errlen);
void checkpoint_close(checkpoint *cp);

/* 1 if a commit exists, 0 if the checkpoint is new. */
int checkpoint_has_state(checkpoint *cp);

/* A named blob as of the last commit: 1 and the value in out, 0 if absent,
 * -1 if corrupt (err says so). */
int checkpoint_get(checkpoint *cp, const char *key, buf *out, char *err, size_t errlen);

/* Rebuilds the engine's state of the last commit into a new engine. 0, -1
 * (err says why), -2 if written with other session settings (err is left for
 * the caller, which knows the option names). */
int checkpoint_restore(checkpoint *cp, engine *e, char *err, size_t errlen);

/* The change log of the commit in progress: every visit the engine accepts
 * (its on_accept callback) and every engine_close_all, in order. */
void checkpoint_log_visit(checkpoint *cp, const visit *v);
void checkpoint_log_close_all(checkpoint *cp);

/* One commit: begin, any number of puts, then commit (or abort). */
int checkpoint_begin(checkpoint *cp, char *err, size_t errlen);
int checkpoint_put(checkpoint *cp, const char *key, const void *val, size_t len, char *err,
                   size_t errlen);
/* What a commit may count on that is not yet durable when it is sealed: the
 * sink's commit of ticket `ticket` (sink.h, flush_begin). The gate waits
 * until it is durable: 0, or -1 with the reason. */
typedef int (*checkpoint_gate_fn)(void *ctx, uint64_t ticket, char *err, size_t errlen);
void checkpoint_set_gate(checkpoint *cp, checkpoint_gate_fn gate, void *ctx);

/* Seals the commit, closed with e's watermarks and counters, and queues it
 * for the writer thread, which waits for the gate's `ticket` (0: none; with
 * several queued commits, for the last one's: tickets are committed in
 * order), then appends it to the log and fdatasyncs it (several queued
 * commits with one fdatasync). Returns once it is queued: the job goes on
 * while the sink and the disk work. -1 if this or an earlier commit could
 * not be written, or its gate failed (err says why; the last durable commit
 * is intact, and nothing is appended after a failed one). */
int checkpoint_commit(checkpoint *cp, const engine *e, uint64_t ticket, char *err, size_t errlen);
void checkpoint_abort(checkpoint *cp);

/* Commits sealed but not yet durable are at most this many; beyond it (or
 * 64 MiB of frames) checkpoint_commit waits for the disk. */
#define CHECKPOINT_MAX_IN_FLIGHT 64
/* Lowers the 64 MiB (a job under --memory-limit: its frames in flight are
 * part of what the limit bounds). A frame larger than it still goes, alone. */
void checkpoint_set_max_queued(checkpoint *cp, size_t bytes);

/* The last commit sealed, and the last one durable: whatever the job tells
 * the outside world about a commit (Kafka's committed offsets) waits until
 * checkpoint_durable_seq reaches it. */
uint64_t checkpoint_seq(const checkpoint *cp);
uint64_t checkpoint_durable_seq(checkpoint *cp);
/* Waits until every sealed commit is durable: 0, or -1 (err says why). */
int checkpoint_sync(checkpoint *cp, char *err, size_t errlen);

/* Bytes on disk (snapshot and logs), and bytes written by this process
 * (frames and snapshots), for the summary and the benchmarks. */
int64_t checkpoint_disk_bytes(checkpoint *cp);
int64_t checkpoint_bytes_written(checkpoint *cp);

#endif
