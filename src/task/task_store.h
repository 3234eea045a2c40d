/*
 * task_store.h - where the scale-out's session tasks keep their state:
 * PostgreSQL, so that a task moves between machines with nothing on a local
 * disk (docs/scaling.md, "State that moves").
 *
 * A task (one partition of the repartition topic, src/task/scaleout.c) owns
 * named blobs (its position, the engine's watermarks and counters, its
 * de-duplication table) and one row per user with open sessions, the same
 * shape as the local checkpoint (checkpoint.h), keyed by (group, task). A
 * user is an int64 or, with --user-type string, its bytes (1 to
 * USER_MAX_BYTES, visit.h): each kind has a table of its own, so that int
 * users keep their compact key and a group's existing rows stay valid.
 *
 * A commit is one transaction that first locks the task's position row: a
 * commit whose position is below the stored one is refused (*superseded set),
 * because another instance that owned the task meanwhile has gone further
 * (a member the group evicted during an outage does not know it yet). Equal
 * or higher positions win: the state at a position is a function of the
 * repartition topic up to it, so two owners write the same state there.
 *
 * Every call waits for PostgreSQL the way the PostgreSQL sink does
 * (sink/pg_conn.h): non-blocking, each answer within io_timeout, transient
 * failures (a lost connection, a deadlock or serialization failure, a
 * server restarting...) retried on a fresh connection as a whole
 * transaction until retry_timeout, and a stop request obeyed within
 * seconds (the call then fails). A commit is therefore buffered whole
 * (begin/put/put_user only copy) and sent by task_store_commit, which can
 * send it again: its size is the task's changed state, which the engine
 * holds in memory anyway.
 */
#ifndef SESSIONIZER_TASK_STORE_H
#define SESSIONIZER_TASK_STORE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "record/visit.h"

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

/* Loads task's state: fn_meta for each blob, fn_user for each user row, both
 * from one snapshot and only once it has been read whole (a retried read
 * calls nothing twice). Returns the number of blobs (0: a new task), or -1. */
typedef int (*task_meta_fn)(void *ctx, const char *key, const void *v, size_t len);
/* user: an int user (str NULL) or a string user's bytes, valid during the
 * call only. */
typedef int (*task_user_fn)(void *ctx, const user_key *user, const void *blob, size_t len);
int task_store_load(task_store *ts, int32_t task, task_meta_fn fn_meta, task_user_fn fn_user,
                    void *ctx, char *err, size_t errlen);

/* One commit: begin, puts (copied; blob NULL deletes the user), then commit,
 * which sends it all in one transaction. *superseded is set, and nothing
 * written, when the stored position is above this one. abort drops what was
 * put. */
void task_store_begin(task_store *ts, int32_t task, int64_t position);
void task_store_put(task_store *ts, const char *key, const void *v, size_t len);
void task_store_put_user(task_store *ts, const user_key *user, const void *blob, size_t len);
int task_store_commit(task_store *ts, int *superseded, char *err, size_t errlen);
void task_store_abort(task_store *ts);

/* How many tasks of the group hold the key (the --until-end "done" mark). */
int64_t task_store_count_key(task_store *ts, const char *key, char *err, size_t errlen);

#endif
