/*
 * metrics.h - the job's figures as the metrics endpoint serves them.
 *
 * The job thread keeps plain counters of its own (no atomics, no locks on
 * the per-record path) and copies them into a metrics_snapshot at each
 * commit and about once a second; metrics_publish() hands the snapshot over
 * under a mutex that the job only *tries*: if the server holds it (copying
 * the previous one), the job skips this publication and goes on. The server
 * copies the last published snapshot under the same mutex and formats it
 * outside it, so neither a slow scrape nor a slow client ever holds up the
 * job thread. What must stay live while the job thread is blocked (signs
 * of life, reachability, retries) comes from job_status (common/status.h).
 *
 * metrics_format() writes the Prometheus text exposition format (0.0.4);
 * metrics_live() and metrics_ready() decide /healthz and /readyz. All three
 * are pure functions of their arguments (the clock is passed in), tested in
 * tests/unit/test_metrics.c; docs/operations.md lists every metric.
 */
#ifndef SESSIONIZER_METRICS_H
#define SESSIONIZER_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/status.h"

/* Per-partition series are kept for partitions 0 .. METRICS_MAX_PARTITIONS-1
 * (the job's own bound on a source's partitions); a record from a higher
 * partition is counted under the last one. */
#define METRICS_MAX_PARTITIONS 4096
#define METRICS_MAX_REASONS 24
#define METRICS_COMMIT_BUCKETS 14 /* the last is +Inf */

extern const double metrics_commit_bucket_le[METRICS_COMMIT_BUCKETS - 1];

typedef struct metrics_snapshot {
    int64_t taken_wall_ms;        /* when the job thread took it */
    int64_t started_wall_ms;      /* when the process started the job */
    /* counters since the process started */
    uint64_t records_read[METRICS_MAX_PARTITIONS];
    int32_t n_read_partitions;    /* 1 + the highest partition a record came from */
    uint64_t visits_accepted;     /* visits the engine took into a session */
    const char *reasons[METRICS_MAX_REASONS]; /* static strings: dead-letter reasons */
    uint64_t dead_letters[METRICS_MAX_REASONS];
    size_t n_reasons;
    uint64_t sessions_opened, sessions_merged, sessions_closed;
    uint64_t sink_sessions_written; /* acknowledged by the sink's flush */
    uint64_t sink_flushes;
    uint64_t commits;
    uint64_t commit_buckets[METRICS_COMMIT_BUCKETS]; /* not cumulative */
    double commit_seconds_sum;
    int64_t last_commit_wall_ms;  /* 0: none yet */
    /* gauges */
    uint64_t sessions_open, pages_held;
    int64_t watermark_us;         /* closing watermark (event time); INT64_MIN: none yet */
    int32_t lag_partition[METRICS_MAX_PARTITIONS];
    int64_t lag_records[METRICS_MAX_PARTITIONS]; /* -1: unknown */
    int32_t n_lag;                /* 0: the source does not report partitions */
    int64_t checkpoint_bytes;     /* -1: no checkpoint */
    /* --scale-out: this instance's stages (task/scaleout.c); 0: not one */
    int scaleout;
    int32_t so_tasks_source;      /* source partitions it owns now (stage 1, or keyed tasks) */
    int32_t so_tasks_sessions;    /* session tasks it owns now (stage 2, or keyed tasks) */
    uint64_t so_produced_visits, so_produced_markers; /* to the repartition topic */
    uint64_t so_duplicates;       /* repartitioned visits dropped as already applied */
    uint64_t so_superseded;       /* task commits refused: another instance went further */
} metrics_snapshot;

/* The readiness bound: ready needs the sum of the partitions' lag at most
 * this many records (and a snapshot no older than METRICS_STALE_MS). */
#define METRICS_DEFAULT_READY_MAX_LAG 10000
/* healthz fails when the job thread has shown no sign of life for this long. */
#define METRICS_LIVE_BOUND_MS 15000
/* readyz fails when the job has published nothing for this long. */
#define METRICS_STALE_MS 10000

/* Shared between the job thread (publisher) and the server (reader). */
typedef struct metrics_shared {
    pthread_mutex_t mu;
    metrics_snapshot snap; /* the last published; valid once published */
    int published;
    uint64_t skipped;      /* publications skipped because the server held the lock */
    job_status *status;
    int64_t ready_max_lag;
    const char *version;
} metrics_shared;

void metrics_shared_init(metrics_shared *m, job_status *status);
void metrics_shared_destroy(metrics_shared *m);

/* Job thread: never blocks. Returns 1 if published, 0 if skipped. */
int metrics_publish(metrics_shared *m, const metrics_snapshot *s);
/* Server thread: copies the last published snapshot; 0 if none yet. */
int metrics_read(metrics_shared *m, metrics_snapshot *out);

/* Adds one dead letter under reason (a static string). */
void metrics_count_reason(metrics_snapshot *s, const char *reason);
/* Adds one commit that took `seconds`. */
void metrics_count_commit(metrics_snapshot *s, double seconds, int64_t wall_ms);

/* The exposition text: the snapshot (NULL before the first publication),
 * the live status, and the process's resident memory (-1: unknown). */
void metrics_format(buf *out, const metrics_snapshot *s, const job_status *st, int64_t now_wall_ms,
                    int64_t rss_bytes, const char *version);

/* 1 when alive; otherwise 0 and why in `why`. */
int metrics_live(const job_status *st, int64_t now_mono_ms, buf *why);
/* 1 when ready; otherwise 0 and every reason, one per line, in `why`. */
int metrics_ready(const metrics_snapshot *s, const job_status *st, int64_t now_wall_ms,
                  int64_t now_mono_ms, int64_t max_lag, buf *why);

#endif
