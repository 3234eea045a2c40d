/*
 * stream_task.h - a task: the unit that owns a part of the work (Kafka
 * Streams' StreamTask). It owns the engine with its open sessions, its part
 * of the checkpoint, its position in its input and the counters that are
 * checkpointed with them; whoever drives it (job.c for a single instance)
 * owns the clock: when to poll, commit, stop, what to publish.
 *
 * Why an object of its own: the state that must move together (the engine's
 * sessions, the position they were built up to, the counters that reconcile
 * with the outputs) is committed together and restored together, and a task
 * is what an assignment gives or takes. Keeping it in one place, behind a
 * lifecycle, is what lets the driver be a loop and nothing more.
 *
 * Lifecycle (asserted: an illegal transition is a bug, not an input):
 *
 *   CREATED --restore--> RESTORING --> RUNNING --suspend--> SUSPENDED
 *                                      (process, commit)
 *   and from any state --close--> CLOSED
 *
 *   restore   the task's committed state from its checkpoint (the engine's
 *             sessions, counters, the outputs' states) and its input moved to
 *             the committed position; a new checkpoint gets a first commit
 *             without a position instead (docs/checkpoint.md).
 *   process   records and the input's in-band caught-up marks, in input
 *             order (add_record, add_mark, process_all; source.h).
 *   commit    everything added is applied, the sink and the dead-letter
 *             output are flushed (their acknowledgement), then the
 *             checkpoint's commit is sealed and handed to its writer; the
 *             input hears of a position only once that commit is durable
 *             (report_durable). A sink that commits on its own thread
 *             (sink.h, flush_begin) is not waited for: the checkpoint's
 *             writer waits for the sink's commit before writing the frame
 *             that counts on it, and the task goes on meanwhile.
 *   suspend   the last commit, made durable and reported: on a stop request,
 *             at the end of the input, at the memory limit, on a
 *             revocation. Nothing is processed after it: a task given back
 *             later is a new one, restored from the checkpoint.
 *   close     frees the task from any state; what was not committed is
 *             redone by the next owner from the checkpoint.
 *
 * A single instance is one task over its whole input: the checkpoint is the
 * task's (local, checkpoint.h) and the input is the source itself, whose
 * position()/seek()/committed() are the task's position. The scale-out's
 * session tasks (scaleout_tasks.c) follow the same lifecycle with their
 * state in PostgreSQL (task_store.h); they do not use this object yet.
 */
#ifndef SESSIONIZER_STREAM_TASK_H
#define SESSIONIZER_STREAM_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint/checkpoint.h"
#include "common/histogram.h"
#include "deadletter/deadletter.h"
#include "engine/engine.h"
#include "metrics/metrics.h"
#include "record/mapping.h"
#include "sink/sink.h"
#include "source/source.h"

typedef enum stream_task_state {
    STREAM_TASK_CREATED,
    STREAM_TASK_RESTORING, /* inside stream_task_restore only */
    STREAM_TASK_RUNNING,
    STREAM_TASK_SUSPENDED,
    STREAM_TASK_CLOSED,
} stream_task_state;

typedef struct stream_task_config {
    engine_config engine;
    const record_mapping *records; /* how records are parsed: bound to the checkpoint */
    unsigned columns;              /* the sink's optional columns: bound to the checkpoint */
    const char *input_uri;         /* as the user named the input (checkpoints without an identity) */
    const char *checkpoint_dir;    /* for messages; NULL: no checkpoint */
    int dlq_in_checkpoint;         /* the dead letters are the checkpoint's own file */
    /* Measure from the apply that closed a session to the sink's
     * acknowledgement of the flush that carried it (microseconds); NULL: not. */
    histogram *close_to_ack_us;
} stream_task_config;

/* What the task works with and does not own: its input, the outputs it
 * writes to, where its state lives, and where its figures are counted. */
typedef struct stream_task_parts {
    source *input;
    sink *out;
    deadletter *dlq;
    checkpoint *cp;        /* NULL: no checkpoint (commits only flush the outputs) */
    metrics_snapshot *m;   /* NULL: no figures */
} stream_task_parts;

/* Checkpointed with the state (all runs of the checkpoint), then this run's. */
typedef struct stream_task_counts {
    uint64_t records;            /* read from the input */
    uint64_t dead_letters;       /* all reasons */
    uint64_t invalid;            /* parse failures among them */
    uint64_t records_this_run;
    uint64_t commits;            /* this run */
    uint64_t unflushed_sessions; /* written to the sink since its last flush */
    int resumed;                 /* restored from a checkpoint with state */
} stream_task_counts;

typedef struct stream_task stream_task;

/* CREATED, with a new engine. err is where every later call says why it
 * failed (the driver's buffer, kept). */
stream_task *stream_task_new(const stream_task_config *cfg, const stream_task_parts *parts,
                             char *err, size_t errlen);

/* CREATED -> RESTORING -> RUNNING. -1 (err says why; the task stays
 * RESTORING and can only be closed). */
int stream_task_restore(stream_task *t);

/* RUNNING: a record of the input, queued for the engine in input order (the
 * queue prefetches what the record will touch, and applies the oldest when
 * full); a caught-up mark, queued in its place among them; everything
 * queued, applied. -1 when the engine or an output failed (err). */
int stream_task_add_record(stream_task *t, const raw_record *rec);
int stream_task_add_mark(stream_task *t, const source_mark *mark);
int stream_task_process_all(stream_task *t);

/* RUNNING, at the end of a bounded input (--until-end): every open session
 * closes, held visits first (their acceptance is logged before the close). */
int stream_task_close_sessions(stream_task *t);

/* RUNNING: a commit (see above). */
int stream_task_commit(stream_task *t);

/* Tells the input the newest position whose commit is durable (cheap: call
 * it whenever the driver looks at the clock). */
void stream_task_report_durable(stream_task *t);

/* RUNNING -> SUSPENDED: the last commit, durable and reported. */
int stream_task_suspend(stream_task *t);

/* Any state -> CLOSED, and freed. NULL is allowed. */
void stream_task_close(stream_task *t);

stream_task_state stream_task_get_state(const stream_task *t);
const stream_task_counts *stream_task_get_counts(const stream_task *t);

/* The task's engine, for the driver's memory policy (its budget and cold
 * store, --memory-limit) and figures. The task alone feeds it. */
engine *stream_task_engine(stream_task *t);

#endif
