/*
 * metrics.c - the snapshot hand-over, the Prometheus text format and the
 * health decisions (see metrics.h). Names follow Prometheus conventions:
 * counters end in _total, durations are in seconds, sizes in bytes.
 */
#include "metrics/metrics.h"

#include <assert.h>
#include <inttypes.h>
#include <string.h>

const double metrics_commit_bucket_le[METRICS_COMMIT_BUCKETS - 1] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

void metrics_shared_init(metrics_shared *m, job_status *status)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->status = status;
    m->ready_max_lag = METRICS_DEFAULT_READY_MAX_LAG;
}

void metrics_shared_destroy(metrics_shared *m) { pthread_mutex_destroy(&m->mu); }

int metrics_publish(metrics_shared *m, const metrics_snapshot *s)
{
    if (pthread_mutex_trylock(&m->mu) != 0) {
        m->skipped++; /* the job thread's own field: only it writes it */
        return 0;
    }
    memcpy(&m->snap, s, sizeof *s);
    m->published = 1;
    pthread_mutex_unlock(&m->mu);
    return 1;
}

int metrics_read(metrics_shared *m, metrics_snapshot *out)
{
    pthread_mutex_lock(&m->mu);
    int ok = m->published;
    if (ok) memcpy(out, &m->snap, sizeof *out);
    pthread_mutex_unlock(&m->mu);
    return ok;
}

void metrics_count_reason(metrics_snapshot *s, const char *reason)
{
    size_t i = 0;
    while (i < s->n_reasons && strcmp(s->reasons[i], reason) != 0) i++;
    if (i == s->n_reasons) {
        /* Reasons are a fixed set (docs/semantics.md); the bound is a guard. */
        if (i == METRICS_MAX_REASONS) i = METRICS_MAX_REASONS - 1;
        else s->reasons[s->n_reasons++] = reason;
    }
    s->dead_letters[i]++;
}

void metrics_count_commit(metrics_snapshot *s, double seconds, int64_t wall_ms)
{
    size_t b = 0;
    while (b < METRICS_COMMIT_BUCKETS - 1 && seconds > metrics_commit_bucket_le[b]) b++;
    s->commit_buckets[b]++;
    s->commit_seconds_sum += seconds;
    s->commits++;
    s->last_commit_wall_ms = wall_ms;
}

/* ---- exposition --------------------------------------------------------- */

static void head(buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void u64_metric(buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    head(b, name, type, help);
    buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void i64_metric(buf *b, const char *name, const char *type, const char *help, int64_t v)
{
    head(b, name, type, help);
    buf_printf(b, "%s %" PRId64 "\n", name, v);
}

static void seconds_metric(buf *b, const char *name, const char *help, int64_t ms)
{
    head(b, name, "gauge", help);
    buf_printf(b, "%s %" PRId64 ".%03d\n", name, ms / 1000, (int)(ms % 1000));
}

/* Label values here are our own names (reasons, components), never input:
 * they need no escaping, which the assertion holds them to. */
static const char *label(const char *v)
{
    assert(strpbrk(v, "\"\\\n") == NULL);
    return v;
}

static void io_metrics(buf *b, const job_status *st)
{
    const io_status *ios[2] = {&st->source, &st->sink};
    const char *roles[2] = {"source", "sink"};
    head(b, "sessionizer_up", "gauge",
         "1 when the source or sink was reachable at its last attempt, 0 during an outage");
    for (int i = 0; i < 2; i++)
        buf_printf(b, "sessionizer_up{role=\"%s\",component=\"%s\"} %d\n", roles[i],
                   label(ios[i]->component ? ios[i]->component : "none"),
                   atomic_load(&ios[i]->down_since_ms) == 0);
    head(b, "sessionizer_retries_total", "counter",
         "operations attempted again after a transient failure, by component");
    for (int i = 0; i < 2; i++)
        if (ios[i]->component)
            buf_printf(b, "sessionizer_retries_total{component=\"%s\"} %llu\n",
                       label(ios[i]->component), (unsigned long long)atomic_load(&ios[i]->retries));
    head(b, "sessionizer_errors_total", "counter",
         "failed attempts to reach a server, by component and kind");
    for (int i = 0; i < 2; i++)
        if (ios[i]->component)
            for (int k = 0; k < IO_ERROR_KINDS; k++)
                buf_printf(b, "sessionizer_errors_total{component=\"%s\",kind=\"%s\"} %llu\n",
                           label(ios[i]->component), io_error_kind_names[k],
                           (unsigned long long)atomic_load(&ios[i]->errors[k]));
}

void metrics_format(buf *b, const metrics_snapshot *s, const job_status *st, int64_t now_wall_ms,
                    int64_t rss_bytes, const char *version)
{
    head(b, "sessionizer_build_info", "gauge", "the version, as a label; always 1");
    buf_printf(b, "sessionizer_build_info{version=\"%s\"} 1\n", label(version ? version : ""));
    if (rss_bytes >= 0)
        i64_metric(b, "process_resident_memory_bytes", "gauge", "resident memory of the process",
                   rss_bytes);
    int phase = atomic_load(&st->phase);
    i64_metric(b, "sessionizer_running", "gauge",
               "1 while the job runs (after start-up, before a stop request)",
               phase == PHASE_RUNNING);
    io_metrics(b, st);
    if (!s) return; /* starting: nothing counted yet */

    seconds_metric(b, "process_start_time_seconds",
                   "when the job started (just after the process), Unix time", s->started_wall_ms);
    head(b, "sessionizer_records_read_total", "counter", "records read from the source, by partition");
    for (int32_t p = 0; p < s->n_read_partitions; p++)
        buf_printf(b, "sessionizer_records_read_total{partition=\"%d\"} %" PRIu64 "\n", (int)p,
                   s->records_read[p]);
    u64_metric(b, "sessionizer_visits_accepted_total", "counter",
               "visits the engine took into a session (a session cap may evict some later)",
               s->visits_accepted);
    head(b, "sessionizer_dead_letters_total", "counter", "records written to the dead-letter output, by reason");
    for (size_t i = 0; i < s->n_reasons; i++)
        buf_printf(b, "sessionizer_dead_letters_total{reason=\"%s\"} %" PRIu64 "\n",
                   label(s->reasons[i]), s->dead_letters[i]);
    u64_metric(b, "sessionizer_sessions_opened_total", "counter", "sessions opened by a visit",
               s->sessions_opened);
    u64_metric(b, "sessionizer_sessions_merged_total", "counter",
               "sessions merged into another by a visit that bridged them", s->sessions_merged);
    u64_metric(b, "sessionizer_sessions_closed_total", "counter",
               "sessions closed by the watermark (or the end of a bounded run)", s->sessions_closed);
    u64_metric(b, "sessionizer_sessions_open", "gauge", "sessions open now", s->sessions_open);
    u64_metric(b, "sessionizer_pages_held", "gauge", "pages held by the open sessions", s->pages_held);
    if (s->watermark_us != INT64_MIN) {
        head(b, "sessionizer_watermark_seconds", "gauge",
             "the closing watermark: the event time below which sessions are closed, Unix time");
        buf_printf(b, "sessionizer_watermark_seconds %.3f\n", (double)s->watermark_us / 1e6);
        head(b, "sessionizer_event_time_lag_seconds", "gauge",
             "the wall clock at the snapshot minus the closing watermark");
        double lag = (double)s->taken_wall_ms / 1e3 - (double)s->watermark_us / 1e6;
        buf_printf(b, "sessionizer_event_time_lag_seconds %.3f\n", lag);
    }
    int32_t known = 0;
    for (int32_t i = 0; i < s->n_lag; i++) known += s->lag_records[i] >= 0;
    if (known > 0) {
        head(b, "sessionizer_consumer_lag_records", "gauge",
             "records between the position and the end of the partition");
        for (int32_t i = 0; i < s->n_lag; i++)
            if (s->lag_records[i] >= 0)
                buf_printf(b, "sessionizer_consumer_lag_records{partition=\"%d\"} %" PRId64 "\n",
                           (int)s->lag_partition[i], s->lag_records[i]);
    }
    u64_metric(b, "sessionizer_commits_total", "counter", "checkpoint commits", s->commits);
    head(b, "sessionizer_commit_duration_seconds", "histogram",
         "time of a commit: sink flush, dead-letter flush and checkpoint transaction");
    uint64_t cum = 0;
    for (size_t i = 0; i < METRICS_COMMIT_BUCKETS - 1; i++) {
        cum += s->commit_buckets[i];
        buf_printf(b, "sessionizer_commit_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                   metrics_commit_bucket_le[i], cum);
    }
    cum += s->commit_buckets[METRICS_COMMIT_BUCKETS - 1];
    assert(cum == s->commits);
    buf_printf(b, "sessionizer_commit_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
    buf_printf(b, "sessionizer_commit_duration_seconds_sum %.6f\n", s->commit_seconds_sum);
    buf_printf(b, "sessionizer_commit_duration_seconds_count %" PRIu64 "\n", cum);
    if (s->last_commit_wall_ms)
        seconds_metric(b, "sessionizer_last_commit_timestamp_seconds",
                       "when the last commit finished, Unix time", s->last_commit_wall_ms);
    u64_metric(b, "sessionizer_sink_sessions_written_total", "counter",
               "sessions written to the sink and acknowledged by its flush", s->sink_sessions_written);
    u64_metric(b, "sessionizer_sink_flushes_total", "counter", "sink flushes (one per commit)",
               s->sink_flushes);
    if (s->checkpoint_bytes >= 0)
        i64_metric(b, "sessionizer_checkpoint_bytes", "gauge",
                   "size of the checkpoint on disk (its snapshot and log files)",
                   s->checkpoint_bytes);
    if (s->scaleout) {
        head(b, "sessionizer_scaleout_tasks", "gauge",
             "tasks this instance owns now: source partitions (stage 1) and session tasks (stage 2)");
        buf_printf(b, "sessionizer_scaleout_tasks{stage=\"source\"} %d\n", (int)s->so_tasks_source);
        buf_printf(b, "sessionizer_scaleout_tasks{stage=\"sessions\"} %d\n",
                   (int)s->so_tasks_sessions);
        head(b, "sessionizer_scaleout_repartition_produced_total", "counter",
             "visits and markers this instance's stage 1 produced to the repartition topic");
        buf_printf(b, "sessionizer_scaleout_repartition_produced_total{kind=\"visit\"} %" PRIu64 "\n",
                   s->so_produced_visits);
        buf_printf(b, "sessionizer_scaleout_repartition_produced_total{kind=\"marker\"} %" PRIu64 "\n",
                   s->so_produced_markers);
        u64_metric(b, "sessionizer_scaleout_duplicates_dropped_total", "counter",
                   "repartitioned visits stage 2 dropped as already applied (a replay)",
                   s->so_duplicates);
        u64_metric(b, "sessionizer_scaleout_commits_superseded_total", "counter",
                   "task commits the state store refused: another instance had gone further",
                   s->so_superseded);
    }
    seconds_metric(b, "sessionizer_snapshot_timestamp_seconds",
                   "when the job thread took these figures, Unix time", s->taken_wall_ms);
    (void)now_wall_ms;
}

/* ---- health ------------------------------------------------------------- */

int metrics_live(const job_status *st, int64_t now_mono_ms, buf *why)
{
    int phase = atomic_load(&st->phase);
    int64_t quiet = now_mono_ms - atomic_load(&st->alive_ms);
    /* Start-up (connecting, joining a group, loading a checkpoint) has its
     * own bounds (the sources' and sinks' timeouts) and no loop yet. */
    if (phase == PHASE_STARTING || quiet <= METRICS_LIVE_BOUND_MS) return 1;
    buf_printf(why, "the job thread has shown no sign of life for %.1f s (bound %.0f s)\n",
               (double)quiet / 1000, (double)METRICS_LIVE_BOUND_MS / 1000);
    return 0;
}

static void outage(buf *why, const char *role, const io_status *io, int64_t now_wall_ms)
{
    int64_t since = atomic_load(&io->down_since_ms);
    if (since)
        buf_printf(why, "%s %s unreachable for %.1f s\n", role, io->component ? io->component : "",
                   (double)(now_wall_ms - since) / 1000);
}

int metrics_ready(const metrics_snapshot *s, const job_status *st, int64_t now_wall_ms,
                  int64_t now_mono_ms, int64_t max_lag, buf *why)
{
    size_t before = why->len;
    int phase = atomic_load(&st->phase);
    if (phase == PHASE_STARTING) buf_append_str(why, "starting\n");
    if (phase >= PHASE_STOPPING) buf_append_str(why, "stopping\n");
    metrics_live(st, now_mono_ms, why);
    outage(why, "source", &st->source, now_wall_ms);
    outage(why, "sink", &st->sink, now_wall_ms);
    if (phase == PHASE_RUNNING) {
        if (!s || now_wall_ms - s->taken_wall_ms > METRICS_STALE_MS) {
            buf_printf(why, "no figures from the job thread for %.1f s (bound %.0f s)\n",
                       s ? (double)(now_wall_ms - s->taken_wall_ms) / 1000 : 0.0,
                       (double)METRICS_STALE_MS / 1000);
        } else {
            int64_t behind = 0;
            for (int32_t i = 0; i < s->n_lag; i++)
                if (s->lag_records[i] > 0) behind += s->lag_records[i];
            if (behind > max_lag)
                buf_printf(why, "%" PRId64 " records behind (bound %" PRId64 ")\n", behind, max_lag);
        }
    }
    return why->len == before;
}
