/*
 * job.h - one run of the pipeline: source -> parse -> engine -> sink, with
 * dead letters aside and a checkpoint after every acknowledged flush.
 *
 * Commit protocol (the order is the guarantee):
 *   1. apply records to the engine; closed sessions go to sink write(),
 *      rejected records to the dead-letter output;
 *   2. flush the sink and the dead-letter output (durable acknowledgement);
 *   3. commit the checkpoint: source position after the last applied record,
 *      the visits the engine accepted since the previous commit (its change
 *      log), watermarks, counters, output states.
 * A crash before 3 resumes from the previous commit and rewrites the same
 * rows (upserts on ids that depend only on the log); a crash after 3 resumes
 * after them. Either way the table ends the same.
 */
#ifndef SESSIONIZER_JOB_H
#define SESSIONIZER_JOB_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "common/histogram.h"
#include "common/status.h"
#include "engine/engine.h"
#include "metrics/metrics.h"
#include "record/mapping.h"
#include "sink/sink.h"
#include "source/source.h"

typedef struct job_config {
    const char *source_uri;
    const char *sink_uri;
    const char *dlq_uri;          /* NULL: jsonl:CHECKPOINT_DIR/deadletter.jsonl */
    const char *checkpoint_dir;   /* NULL: no checkpoint, start at the beginning */
    engine_config engine;
    record_mapping records;       /* where the fields are (record_mapping_default) */
    source_options source;
    sink_options sink;
    const char *const *dlq_props;
    int until_end;                /* close every open session at the end of input */
    uint64_t commit_every;        /* records between commits (0: only by time) */
    int64_t commit_interval_ms;   /* wall-clock time between commits (0: only by count) */
    int progress;                 /* 0 never, 1 auto (terminal), 2 always (plain lines) */
    int latency_stats;            /* measure close-to-acknowledgement latency */
    uint64_t memory_limit;        /* resident bytes (0: a default share of the machine,
                                     memory.h): the engine spills cold users to disk to stay
                                     under it; past it all the same, commit and stop */
    volatile sig_atomic_t *stop;  /* set by a signal handler: commit and return */
    job_status *status;           /* NULL: no signs of life, no systemd notifications */
    metrics_shared *metrics;      /* NULL: no figures published */
} job_config;

typedef struct job_result {
    uint64_t records;        /* read from the source, all runs of this checkpoint */
    uint64_t dead_letters;   /* all reasons */
    uint64_t invalid;        /* parse failures among dead_letters */
    engine_stats engine;
    uint64_t commits;        /* in this run */
    double seconds;          /* this run */
    uint64_t records_this_run;
    int resumed;             /* started from a checkpoint */
    int stopped_by_signal;
    int64_t checkpoint_bytes;   /* on disk at the end */
    int64_t checkpoint_written; /* frames and snapshots written by this run */
    /* State larger than memory: the engine's budget (0: no spilling), the
     * cold store's bytes written and read, its file's length at the end. */
    uint64_t spill_budget, spill_written, spill_read, spill_file_bytes;
    uint64_t spill_read_ahead; /* loads whose read was queued ahead (io_uring) */
    uint64_t memory_limit;     /* the resolved --memory-limit, bytes (0: unknown) */
    /* With latency_stats: from the apply that closed a session to the sink's
     * acknowledgement of the flush that carried it, in microseconds. */
    histogram close_to_ack_us;
} job_result;

/* Returns 0 on success; otherwise err says what failed. */
int job_run(const job_config *cfg, job_result *res, char *err, size_t errlen);

#endif
