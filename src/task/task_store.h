/*
 * task_store.h - where the scale-out's session tasks keep their state:
 * PostgreSQL, so that a task moves between machines with nothing on a local
 * disk (docs/scaling.md, "State that moves").
 *
 * A task (one partition of the repartition topic, src/task/scaleout.c) owns
 * named blobs (its position, the engine's watermarks and counters, its
 * de-duplication table) and one row per user with open sessions, the same
 * shape as the local checkpoint (checkpoint.h), keyed by (group, task).
 *
 * A commit is one transaction that first locks the task's position row: a
 * commit whose position is below the stored one is refused (*superseded set),
 * because another instance that owned the task meanwhile has gone further
 * (a member the group evicted during an outage does not know it yet). Equal
 * or higher positions win: the state at a position is a function of the
 * repartition topic up to it, so two owners write the same state there.
 */
#ifndef SESSIONIZER_TASK_STORE_H
#define SESSIONIZER_TASK_STORE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct task_store task_store;

/* conninfo: a libpq URI or key=value string. Creates the tables if missing. */
task_store *task_store_open(const char *conninfo, const char *group, char *err, size_t errlen);
void task_store_close(task_store *ts);

/* Loads task's state: fn_meta for each blob, fn_user for each user row.
 * Returns the number of blobs (0: a new task), or -1. */
typedef int (*task_meta_fn)(void *ctx, const char *key, const void *v, size_t len);
typedef int (*task_user_fn)(void *ctx, int64_t user_id, const void *blob, size_t len);
int task_store_load(task_store *ts, int32_t task, task_meta_fn fn_meta, task_user_fn fn_user,
                    void *ctx, char *err, size_t errlen);

/* One commit: begin (locking the position), puts, then commit. */
int task_store_begin(task_store *ts, int32_t task, int64_t position, int *superseded, char *err,
                     size_t errlen);
int task_store_put(task_store *ts, const char *key, const void *v, size_t len, char *err,
                   size_t errlen);
int task_store_put_user(task_store *ts, int64_t user_id, const void *blob, size_t len, char *err,
                        size_t errlen);
int task_store_commit(task_store *ts, char *err, size_t errlen);
void task_store_abort(task_store *ts);

/* How many tasks of the group hold the key (the --until-end "done" mark). */
int64_t task_store_count_key(task_store *ts, const char *key, char *err, size_t errlen);

#endif
