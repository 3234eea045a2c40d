/*
 * test_metrics.c - the metrics' exposition text (every series the snapshot
 * holds, cumulative histogram buckets), the health decisions in each state
 * (starting, running, a source or sink outage, lag over the bound, a job
 * thread gone quiet, stopping), and the hand-over that never blocks the job
 * thread: a publication while the server holds the lock is skipped.
 * (promtool checks the real endpoint's text in integration.metrics.)
 */
#include <stdlib.h>

#include "check.h"
#include "metrics/metrics.h"

static const char *text_of(buf *b)
{
    buf_append_byte(b, 0);
    b->len--;
    return (const char *)b->data;
}

static int has(buf *b, const char *needle)
{
    int ok = strstr(text_of(b), needle) != NULL;
    if (!ok) fprintf(stderr, "missing: %s\n", needle);
    return ok;
}

static void test_format(void)
{
    job_status st;
    status_init(&st);
    io_status_name(&st.source, "kafka");
    io_status_name(&st.sink, "postgresql");
    status_set_phase(&st, PHASE_RUNNING);
    io_status_error(&st.sink, IO_ERR_CONNECTION);
    io_status_error(&st.sink, IO_ERR_CONNECTION);
    io_status_retry(&st.sink);
    io_status_down(&st.sink);

    metrics_snapshot *s = calloc(1, sizeof *s);
    s->taken_wall_ms = 1796094245123LL;
    s->started_wall_ms = 1796094200000LL;
    s->records_read[0] = 7, s->records_read[2] = 5, s->n_read_partitions = 3;
    s->visits_accepted = 9;
    metrics_count_reason(s, "late");
    metrics_count_reason(s, "invalid_json");
    metrics_count_reason(s, "late");
    s->sessions_opened = 4, s->sessions_closed = 3, s->sessions_open = 1, s->pages_held = 2;
    s->watermark_us = 1796094200000000LL;
    s->n_lag = 2;
    s->lag_partition[0] = 0, s->lag_records[0] = 12;
    s->lag_partition[1] = 1, s->lag_records[1] = -1; /* unknown: no series */
    metrics_count_commit(s, 0.003, 1796094245000LL);
    metrics_count_commit(s, 0.2, 1796094245100LL);
    metrics_count_commit(s, 30, 1796094245120LL); /* beyond the last bucket */
    s->checkpoint_bytes = 4096;

    buf b;
    buf_init(&b);
    metrics_format(&b, s, &st, s->taken_wall_ms, 123456, "0.1.0");
    CHECK(has(&b, "sessionizer_records_read_total{partition=\"0\"} 7\n"));
    CHECK(has(&b, "sessionizer_records_read_total{partition=\"1\"} 0\n"));
    CHECK(has(&b, "sessionizer_records_read_total{partition=\"2\"} 5\n"));
    CHECK(has(&b, "sessionizer_dead_letters_total{reason=\"late\"} 2\n"));
    CHECK(has(&b, "sessionizer_dead_letters_total{reason=\"invalid_json\"} 1\n"));
    CHECK(has(&b, "sessionizer_visits_accepted_total 9\n"));
    CHECK(has(&b, "sessionizer_sessions_open 1\n"));
    CHECK(has(&b, "sessionizer_pages_held 2\n"));
    CHECK(has(&b, "sessionizer_watermark_seconds 1796094200.000\n"));
    CHECK(has(&b, "sessionizer_event_time_lag_seconds 45.123\n"));
    CHECK(has(&b, "sessionizer_consumer_lag_records{partition=\"0\"} 12\n"));
    CHECK(!strstr(text_of(&b), "sessionizer_consumer_lag_records{partition=\"1\"}"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_bucket{le=\"0.001\"} 0\n"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_bucket{le=\"0.005\"} 1\n"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_bucket{le=\"0.25\"} 2\n"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_bucket{le=\"10\"} 2\n"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_count 3\n"));
    CHECK(has(&b, "sessionizer_commit_duration_seconds_sum 30.203000\n"));
    CHECK(has(&b, "sessionizer_commits_total 3\n"));
    CHECK(has(&b, "sessionizer_last_commit_timestamp_seconds 1796094245.120\n"));
    CHECK(has(&b, "sessionizer_up{role=\"source\",component=\"kafka\"} 1\n"));
    CHECK(has(&b, "sessionizer_up{role=\"sink\",component=\"postgresql\"} 0\n"));
    CHECK(has(&b, "sessionizer_retries_total{component=\"postgresql\"} 1\n"));
    CHECK(has(&b, "sessionizer_errors_total{component=\"postgresql\",kind=\"connection\"} 2\n"));
    CHECK(has(&b, "sessionizer_errors_total{component=\"kafka\",kind=\"server\"} 0\n"));
    CHECK(has(&b, "sessionizer_checkpoint_bytes 4096\n"));
    CHECK(has(&b, "process_resident_memory_bytes 123456\n"));
    CHECK(has(&b, "sessionizer_build_info{version=\"0.1.0\"} 1\n"));
    CHECK(has(&b, "# TYPE sessionizer_commit_duration_seconds histogram\n"));
    /* every sample line's metric has a TYPE line before it */
    const char *t = text_of(&b);
    for (const char *l = t; *l; l = strchr(l, '\n') + 1) {
        if (*l == '#') continue;
        char name[128];
        size_t n = strcspn(l, "{ ");
        snprintf(name, sizeof name, "# TYPE %.*s ", (int)n, l);
        char *under = strstr(name, "_bucket "), *sum = strstr(name, "_sum "), *cnt = strstr(name, "_count ");
        if (under) strcpy(under, " ");
        if (sum) strcpy(sum, " ");
        if (cnt && strncmp(l, "sessionizer_commit_duration_seconds_count", 41) == 0) strcpy(cnt, " ");
        const char *at = strstr(t, name);
        CHECK(at != NULL && at < l);
    }

    /* before the first snapshot: the live part only */
    buf_reset(&b);
    metrics_format(&b, NULL, &st, 0, -1, "0.1.0");
    CHECK(has(&b, "sessionizer_up{role=\"sink\",component=\"postgresql\"} 0\n"));
    CHECK(!strstr(text_of(&b), "records_read") && !strstr(text_of(&b), "process_resident"));
    buf_free(&b);
    free(s);
}

static void test_health(void)
{
    job_status st;
    status_init(&st);
    io_status_name(&st.source, "kafka");
    io_status_name(&st.sink, "postgresql");
    metrics_snapshot *s = calloc(1, sizeof *s);
    long long wall = 1796094245123LL, mono = atomic_load(&st.alive_ms);
    s->taken_wall_ms = wall;
    buf why;
    buf_init(&why);

    /* starting: alive, not ready */
    CHECK(metrics_live(&st, mono + 60000, &why));
    CHECK(!metrics_ready(s, &st, wall, mono, 100, &why) && strstr(text_of(&why), "starting"));
    status_set_phase(&st, PHASE_RUNNING);
    mono = atomic_load(&st.alive_ms);
    buf_reset(&why);
    CHECK(metrics_ready(s, &st, wall, mono, 100, &why) && why.len == 0);

    /* the job thread quiet for longer than the bound */
    CHECK(metrics_live(&st, mono + METRICS_LIVE_BOUND_MS, &why));
    CHECK(!metrics_live(&st, mono + METRICS_LIVE_BOUND_MS + 1, &why));
    CHECK(strstr(text_of(&why), "no sign of life") != NULL);
    buf_reset(&why);
    CHECK(!metrics_ready(s, &st, wall, mono + METRICS_LIVE_BOUND_MS + 1, 100, &why));

    /* figures too old: blocked somewhere that does not beat */
    buf_reset(&why);
    CHECK(!metrics_ready(s, &st, wall + METRICS_STALE_MS + 1, mono, 100, &why));
    CHECK(strstr(text_of(&why), "no figures") != NULL);

    /* outages, each named */
    io_status_down(&st.source);
    buf_reset(&why);
    CHECK(!metrics_ready(s, &st, atomic_load(&st.source.down_since_ms) + 2500, mono, 100, &why));
    CHECK(strstr(text_of(&why), "source kafka unreachable for 2.5 s") != NULL);
    io_status_up(&st.source);
    io_status_down(&st.sink);
    buf_reset(&why);
    CHECK(!metrics_ready(s, &st, wall, mono, 100, &why));
    CHECK(strstr(text_of(&why), "sink postgresql unreachable") != NULL);
    CHECK(strstr(text_of(&why), "source") == NULL);
    io_status_up(&st.sink);

    /* lag: the bound is inclusive, unknown partitions do not count */
    s->n_lag = 3;
    s->lag_records[0] = 60, s->lag_records[1] = 40, s->lag_records[2] = -1;
    buf_reset(&why);
    CHECK(metrics_ready(s, &st, wall, mono, 100, &why));
    s->lag_records[1] = 41;
    CHECK(!metrics_ready(s, &st, wall, mono, 100, &why));
    CHECK(strstr(text_of(&why), "101 records behind (bound 100)") != NULL);
    s->n_lag = 0;

    status_set_phase(&st, PHASE_STOPPING);
    buf_reset(&why);
    CHECK(!metrics_ready(s, &st, wall, mono, 100, &why) && strstr(text_of(&why), "stopping"));
    buf_free(&why);
    free(s);
}

static void test_handover(void)
{
    job_status st;
    status_init(&st);
    metrics_shared m;
    metrics_shared_init(&m, &st);
    metrics_snapshot *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    CHECK_EQ_I64(metrics_read(&m, b), 0); /* nothing published yet */
    a->visits_accepted = 1;
    CHECK_EQ_I64(metrics_publish(&m, a), 1);
    /* the server holds the lock: the job thread skips, it does not wait */
    pthread_mutex_lock(&m.mu);
    a->visits_accepted = 2;
    CHECK_EQ_I64(metrics_publish(&m, a), 0);
    CHECK_EQ_I64(m.skipped, 1);
    pthread_mutex_unlock(&m.mu);
    CHECK_EQ_I64(metrics_read(&m, b), 1);
    CHECK_EQ_I64(b->visits_accepted, 1);
    CHECK_EQ_I64(metrics_publish(&m, a), 1);
    CHECK_EQ_I64(metrics_read(&m, b), 1);
    CHECK_EQ_I64(b->visits_accepted, 2);
    metrics_shared_destroy(&m);
    free(a);
    free(b);
}

int main(void)
{
    test_format();
    test_health();
    test_handover();
    return check_summary("test_metrics");
}
