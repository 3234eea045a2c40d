/*
 * task_store.h - where the scale-out's session tasks keep their state:
 * PostgreSQL, so that a task moves between machines with nothing on a local
 * disk (docs/scaling.md, "State that moves").
 *
 * A task's state is issue 12's change log (checkpoint/changelog.h, the same
 * encoding as the local checkpoint's): a snapshot of the engine at one
 * commit, then one frame per later commit carrying what the engine accepted
 * in between (visits, engine_advance_partition calls, "close all") and the
 * task's named blobs (its position, de-duplication table...). So a commit
 * costs what the task did since the last one, not the pages of every session
 * it touched; when a task's frames outgrow its snapshot (and at least
 * TASK_STORE_COMPACT_MIN bytes) the commit writes a new snapshot instead of
 * its frame and deletes what it replaces, in the same transaction, which
 * bounds both the bytes written per visit (two to three times the frames':
 * a snapshot of a growing state also holds what its frames added) and a
 * restore's replay (about one snapshot's worth of frames). Restoring is the
 * latest snapshot, then the frames after it replayed through the pure engine
 * (changelog_replay checks each reaches its commit's recorded state).
 *
 * A commit is one transaction that first locks the task's position row: a
 * commit whose position is below the stored one is refused (*superseded set),
 * because another instance that owned the task meanwhile has gone further
 * (a member the group evicted during an outage does not know it yet). Equal
 * or higher positions win: the state at a position is a function of the
 * repartition topic up to it, so two owners write the same state there. A
 * frame only extends the commit it was made after; when another owner has
 * committed since (it was behind or level: the guard let this one through),
 * the commit writes a snapshot instead, which stands on its own.
 *
 * Every call waits for PostgreSQL the way the PostgreSQL sink does
 * (sink/pg_conn.h): non-blocking, each answer within io_timeout, transient
 * failures (a lost connection, a deadlock or serialization failure, a
 * server restarting...) retried on a fresh connection as a whole
 * transaction until retry_timeout, and a stop request obeyed within
 * seconds (the call then fails). The engine and the frame are only read
 * while the commit is retried, so it can be sent again whole.
 */
#ifndef SESSIONIZER_TASK_STORE_H
#define SESSIONIZER_TASK_STORE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint/changelog.h"
#include "common/buf.h"
#include "engine/engine.h"

struct job_status;

typedef struct task_store task_store;

typedef struct task_store_options {
    const char *conninfo;         /* a libpq URI or key=value string */
    /* key=value settings: io_timeout=, retry_timeout=, retry_backoff_max=,
     * password= as the PostgreSQL sink takes them (the sink's --sink-opt when
     * the store is the sink's database); other keys are the sink's and are
     * ignored. NULL: none. */
    const char *const *props;
    const char *group;
    volatile sig_atomic_t *stop;  /* the job's; NULL: never */
    struct job_status *status;    /* signs of life while waiting; NULL: none */
} task_store_options;

/* Connects (waiting for a server that is down, as the sink does) and creates
 * the tables if missing. NULL with err set on failure. */
task_store *task_store_open(const task_store_options *o, char *err, size_t errlen);
void task_store_close(task_store *ts);

/* Frames since the snapshot above this, and above the snapshot's own size,
 * make the next commit a snapshot (SESSIONIZER_SNAPSHOT_MIN_BYTES overrides
 * it, for tests, as for the local checkpoint). 1 MiB, not the local
 * checkpoint's 16: a moved task's restore reads its frames from the server
 * and replays them during a rebalance, which pauses every instance; 1 MiB is
 * ~40,000 visits of ~25 bytes to replay at most. */
#define TASK_STORE_COMPACT_MIN ((int64_t)1 << 20)

/* Loads task's state into e, a new engine with the task's settings: the
 * snapshot, then the frames after it replayed. fn gets the named blobs of
 * the snapshot and then of each frame, in order (a later value replaces an
 * earlier one). Returns 1 (restored), 0 (a new task: nothing stored), or -1
 * with err set; e is then to be freed. Also remembers the task's commit
 * number, which the next task_store_commit extends. */
int task_store_load(task_store *ts, int32_t task, engine *e, changelog_meta_fn fn, void *ctx,
                    char *err, size_t errlen);

/* Commits the task at position (the next offset to read): f holds the
 * engine's events since the last load or commit and every named blob of the
 * task (a snapshot keeps f's blobs as they are), e is the engine after them;
 * finished records the task in the group's count (task_store_count_done).
 * One transaction; *superseded is set, and nothing written, when the stored
 * position is above this one (load the task again). 0, or -1 with err set. */
int task_store_commit(task_store *ts, int32_t task, int64_t position, int finished,
                      const changelog_frame *f, const engine *e, int *superseded, char *err,
                      size_t errlen);

/* What the store wrote (for the logs and the bench): bytes of the values of
 * committed transactions (frames, snapshots, the task's position row), and
 * how many commits and snapshots. */
typedef struct task_store_stats {
    uint64_t commits, snapshots, bytes, frame_bytes, snapshot_bytes;
} task_store_stats;
void task_store_get_stats(const task_store *ts, task_store_stats *out);

/* How many tasks of the group have committed finished (--until-end). */
int64_t task_store_count_done(task_store *ts, char *err, size_t errlen);

#endif
