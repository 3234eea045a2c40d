/*
 * scaleout.c - --scale-out: many instances, one topic, the same table.
 *
 * Every instance runs the same two stages, each a consumer of its own group,
 * so that Kafka's group protocol spreads the work and moves it when
 * instances join, leave or die; there is no coordinator of ours.
 *
 *  Stage 1 (group G, the source topic): a task per source partition p. It
 *    parses, judges lateness against p's own watermark in p's order
 *    (invalid and late records are dead letters here), and produces each
 *    accepted visit to GROUP-repartition, partition hash(user) mod R, with
 *    the record's original (timestamp, partition, offset) and p's highest
 *    accepted event time, in batches (repartition.h) that are produced
 *    before any marker and any commit. It broadcasts markers for p to every
 *    repartition partition: 'W' (p's progress), 'I' (p is idle, live runs
 *    only), 'E' (p reached its end, --until-end). Its state is two numbers per
 *    partition (position, highest event time; plus the --until-end end),
 *    committed to the group as the offset and its metadata, after the
 *    producer has delivered everything before it.
 *
 *  Stage 2 (group G-sessions, the repartition topic): a task per
 *    repartition partition r, with an engine of its own. A visit of p is a
 *    duplicate when its offset is below the next offset already seen from p
 *    at r (stage 1 replays what it produced after its last commit, and a
 *    stage 1 that lost its partition without knowing it may still produce):
 *    records of one source partition reach r in that partition's order from
 *    any one producer, so anything below what was seen has been seen. The
 *    engine closes on the minimum of the source partitions' highest event
 *    times (minus the lateness) that reach r, records and markers alike
 *    (engine_advance_partition). Its state (position in r, engine
 *    watermarks, the de-duplication table, open sessions) is committed to
 *    PostgreSQL (task_store.h) after the sink has acknowledged the sessions,
 *    as a change log: a frame of what its engine accepted since the last
 *    commit (visits, engine_advance_partition calls, "close all"), with
 *    snapshots now and then; a restore replays it.
 *
 *  docs/scaling.md gives the argument that with --until-end the final table
 *  equals a single instance's, whatever the kills, joins and outages.
 *
 *  Threads: one. The three librdkafka handles are polled in turn; their
 *  rebalance and delivery callbacks run inside those polls, on this thread.
 *  Assignment is eager (range): a revocation commits and drops every task
 *  before the next assignment is made, which is what the task lifecycle
 *  (restore -> process -> commit -> suspend) needs; librdkafka 2.0.2's
 *  cooperative-sticky has known bugs around commits during rebalances.
 *
 *  Files: this one (the loop, start and end, what the stages share),
 *  scaleout_setup.c (clients, topics), scaleout_stage1.c, scaleout_tasks.c
 *  (the session tasks); scaleout_internal.h is what they share.
 */
#include "task/scaleout.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/rdkafka_conf.h"
#include "common/status.h"
#include "common/xalloc.h"
#include "task/scaleout_internal.h"

__attribute__((format(printf, 2, 3)))
void so_fail(so *s, const char *fmt, ...)
{
    if (s->failed) return; /* the first cause is the one to report */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, s->errlen, fmt, ap);
    va_end(ap);
    s->failed = 1;
}


void so_write_dl(so *s, const char *reason, const char *detail, const raw_record *raw,
                        const visit *v)
{
    if (s->m) metrics_count_reason(s->m, reason);
    dead_letter dl = {.reason = reason, .detail = detail, .source = s->describe, .raw = raw, .v = v};
    if (s->dlq->ops->write(s->dlq, &dl, s->err, s->errlen)) s->failed = 1;
}

void so_count_read(so *s, int32_t p)
{
    s->st.read1++;
    if (!s->m) return;
    if (p >= METRICS_MAX_PARTITIONS) p = METRICS_MAX_PARTITIONS - 1;
    s->m->records_read[p]++;
    if (p >= s->m->n_read_partitions) s->m->n_read_partitions = p + 1;
}

/* This instance's figures to the metrics endpoint (metrics.h): the same
 * names as a single instance's, over the tasks it owns now or dropped, and
 * the scale-out's own. Every second and after each commit. */
void so_publish(so *s)
{
    metrics_snapshot *m = s->m;
    if (!m) return;
    m->taken_wall_ms = status_wall_ms();
    m->visits_accepted = s->acc_applied;
    m->sessions_closed = s->st.sessions;
    m->sessions_opened = s->acc_opened;
    m->sessions_merged = s->acc_merged;
    m->sessions_open = m->pages_held = 0;
    m->watermark_us = INT64_MAX;
    m->so_tasks_source = m->so_tasks_sessions = 0;
    for (int32_t r = 0; s->t2 && r < s->R; r++) {
        s2task *t = &s->t2[r];
        if (!t->assigned || !t->eng) continue;
        m->so_tasks_sessions++;
        engine_stats e;
        engine_get_counters(t->eng, &e);
        m->visits_accepted += e.visits_applied;
        m->sessions_opened += e.sessions_opened;
        m->sessions_merged += e.sessions_merged;
        m->sessions_open += e.open_sessions;
        m->pages_held += e.open_pages;
        /* the instance's: the lowest of its tasks' (none while one has none) */
        int64_t w = engine_closing_watermark(t->eng);
        if (w < m->watermark_us) m->watermark_us = w;
    }
    if (m->watermark_us == INT64_MAX) m->watermark_us = INT64_MIN;
    /* lag of the source partitions it reads, from the client's cached high
     * watermarks (no request) */
    m->n_lag = 0;
    for (int32_t p = 0; p < s->n_src && m->n_lag < METRICS_MAX_PARTITIONS; p++) {
        int assigned = s->keyed ? s->t2 && s->t2[p].assigned : s->p1 && s->p1[p].assigned;
        if (!assigned) continue;
        int64_t pos = s->keyed ? s->t2[p].pos : s->p1[p].pos, lo = -1, hi = -1;
        rd_kafka_get_watermark_offsets(s->c1, s->topic, p, &lo, &hi);
        m->lag_partition[m->n_lag] = p;
        m->lag_records[m->n_lag++] = hi >= 0 && pos >= 0 ? (hi > pos ? hi - pos : 0) : -1;
    }
    m->so_tasks_source = s->keyed ? m->so_tasks_sessions : m->n_lag;
    m->so_produced_visits = s->st.produced;
    m->so_produced_markers = s->st.markers;
    m->so_duplicates = s->st.dups2;
    m->so_superseded = s->st.superseded;
    metrics_publish(s->jc->metrics, m);
    s->last_publish = mono_ms();
}

/* A source record as the parser takes it, parsed (stage 1, keyed tasks). */
parse_error so_parse_message(so *s, const rd_kafka_message_t *m, raw_record *raw, visit *v,
                                 char *detail, size_t detail_len)
{
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    int has_ts = !(tt == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || ts < 0);
    *raw = (raw_record){.data = m->payload ? m->payload : "", .len = m->len, .full_len = m->len,
                        .pos = {.append_ts_ms = has_ts ? ts : 0, .partition = m->partition,
                                .offset = m->offset},
                        .key = m->key, .key_len = m->key ? m->key_len : 0, .origin = m,
                        .has_ts = has_ts};
    if (raw->len > s->jc->source.max_record_bytes) {
        raw->len = s->jc->source.max_record_bytes;
        raw->oversized = 1;
    }
    return record_parse(s->parser, raw, v, detail, detail_len);
}

/* ---- the loop ------------------------------------------------------------ */

static int drain(so *s, rd_kafka_t *c, void (*fn)(so *, rd_kafka_message_t *), int timeout_ms)
{
    int n = 0;
    for (; n < POLL_BATCH && !s->failed; n++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, n == 0 ? timeout_ms : 0);
        if (!m) break;
        if (!m->err || m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (s->outage && s->jc->status) io_status_up(&s->jc->status->source);
            s->outage = 0;
        }
        fn(s, m);
        rd_kafka_message_destroy(m);
    }
    return n;
}

static int my_tasks_done(const so *s)
{
    for (int32_t r = 0; r < s->R; r++)
        if (s->t2[r].assigned && !s->t2[r].done) return 0;
    return 1;
}

static int all_done(so *s)
{
    int64_t n = task_store_count_done(s->store, s->err, s->errlen);
    if (n < 0) s->failed = 1;
    return n == s->R;
}

static int parse_uri(so *s, const char *uri, char *err, size_t errlen)
{
    const char *t = strncmp(uri, "kafka://", 8) == 0 ? uri + 8 : NULL;
    const char *slash = t ? strrchr(t, '/') : NULL;
    if (!slash || slash == t || !slash[1]) {
        snprintf(err, errlen, "--scale-out reads a Kafka topic: --source kafka://HOST:PORT/TOPIC, "
                 "not '%s'", uri);
        return -1;
    }
    s->brokers = xstrndup(t, (size_t)(slash - t));
    s->topic = xstrdup(slash + 1);
    snprintf(s->describe, sizeof s->describe, "kafka topic %s", s->topic);
    return 0;
}

static char *state_conninfo(const scaleout_config *cfg)
{
    const char *u = cfg->state_uri ? cfg->state_uri : cfg->job->sink_uri;
    const char *after = strncmp(u, "postgresql:", 11) == 0 ? u + 11
                        : strncmp(u, "postgres:", 9) == 0 ? u + 9 : NULL;
    if (!after) return NULL;
    if (strncmp(after, "//", 2) == 0) return xstrdup(u);
    return xstrdup(after);
}

int scaleout_run(const scaleout_config *cfg, char *err, size_t errlen)
{
    const job_config *jc = cfg->job;
    so S = {.cfg = cfg, .jc = jc, .err = err, .errlen = errlen, .R = cfg->repartition_partitions};
    so *s = &S;
    buf_init(&s->scratch);
    buf_init(&s->rec);
    int rc = -1;
    int finished = 0; /* --until-end: every task of the group is done */
    char *conninfo = state_conninfo(cfg);
    s->idle_ms = 2000;
    if (jc->metrics) {
        s->m = xcalloc(1, sizeof *s->m);
        s->m->started_wall_ms = status_wall_ms();
        s->m->checkpoint_bytes = -1;
        s->m->watermark_us = INT64_MIN;
        s->m->scaleout = 1;
    }
    if (jc->status) io_status_name(&jc->status->source, "kafka");
    if (parse_uri(s, jc->source_uri, err, errlen) ||
        rdkafka_prop_ms(jc->source.props, "sessionizer.idle.ms", &s->idle_ms, err, errlen))
        goto out;
    if (!conninfo) {
        snprintf(err, errlen, "--scale-out keeps the session tasks' state in PostgreSQL: use a "
                 "postgresql:// --sink, or give --state postgresql://...");
        goto out;
    }
    if (jc->checkpoint_dir || jc->source.start_latest) {
        snprintf(err, errlen, "--scale-out keeps no local state: --checkpoint and --start latest "
                 "do not apply (the group's offsets and the state store are the checkpoint)");
        goto out;
    }
    if (s->R < 1 || s->R > 10000) {
        snprintf(err, errlen, "--repartition-partitions must be 1 to 10000");
        goto out;
    }
    size_t gl = strlen(jc->source.group);
    s->rtopic = xmalloc(gl + 16);
    snprintf(s->rtopic, gl + 16, "%s-repartition", jc->source.group);
    s->group2 = xmalloc(gl + 16);
    snprintf(s->group2, gl + 16, "%s-sessions", jc->source.group);

    /* Keyed input produces nothing: no producer, whose idempotence
     * (producer id, epochs) would only be one more thing to keep alive
     * through outages. */
    s->keyed = cfg->keyed_input;
    if (s->keyed) s->c1 = so_new_consumer(s, jc->source.group, 3, err, errlen);
    else s->prod = so_new_producer(s, err, errlen);
    if (!(s->keyed ? s->c1 : s->prod)) goto out;
    if (so_topic_partitions(s->keyed ? s->c1 : s->prod, s->topic, &s->n_src, err, errlen)) goto out;
    if (s->n_src <= 0 || s->n_src > MAX_SRC_PARTITIONS) {
        snprintf(err, errlen, "topic %s does not exist on the Kafka cluster at %s", s->topic,
                 s->brokers);
        goto out;
    }
    if (s->keyed) s->R = s->n_src; /* a task per source partition */
    else if (so_check_internal_topic(s, err, errlen)) goto out;
    if (!s->keyed) {
        /* A batch must be a record the producer accepts (-X message.max.bytes). */
        char v[32];
        size_t vl = sizeof v;
        long long mmb = BATCH_BYTES;
        if (rd_kafka_conf_get(rd_kafka_conf(s->prod), "message.max.bytes", v, &vl) ==
            RD_KAFKA_CONF_OK)
            mmb = atoll(v);
        s->batch_cap = mmb > 2 * BATCH_BYTES ? BATCH_BYTES : mmb > 1024 ? (size_t)mmb / 2 : 1;
    }
    /* The sink's io_timeout, retry_timeout... (and password) when the
     * state is in the sink's database. */
    s->store = task_store_open(&(task_store_options){.conninfo = conninfo,
                                                     .props = cfg->state_uri ? NULL : jc->sink.props,
                                                     .group = jc->source.group,
                                                     .stop = jc->stop,
                                                     .status = jc->status},
                               err, errlen);
    if (!s->store) goto out;
    s->ctx = (job_context){.stop = jc->stop, .status = jc->status};
    /* `--dlq kafka:TOPIC` writes to the input's cluster, with its settings */
    job_context_lend_kafka(&s->ctx, s->brokers, jc->source.props);
    s->sink_opts = jc->sink;
    s->sink_opts.ctx = &s->ctx;
    s->snk = sink_open(jc->sink_uri, &s->sink_opts, err, errlen);
    if (!s->snk) goto out;
    if (jc->status) io_status_name(&jc->status->sink, s->snk->ops->scheme);
    s->dlq = deadletter_open(jc->dlq_uri ? jc->dlq_uri : "jsonl:stderr", jc->dlq_props, &s->ctx,
                             err, errlen);
    if (!s->dlq) goto out;
    s->parser = record_parser_new(&jc->records);
    s->p1 = xcalloc((size_t)s->n_src, sizeof *s->p1);
    s->batch = xcalloc((size_t)s->R, sizeof *s->batch);
    s->t2 = xcalloc((size_t)s->R, sizeof *s->t2);
    for (int32_t r = 0; r < s->R; r++) {
        s->t2[r].s = s;
        s->t2[r].id = r;
        s->t2[r].adv = xcalloc((size_t)s->n_src, sizeof(int64_t));
        changelog_frame_init(&s->t2[r].log);
        s->t2[r].next_seen = xcalloc((size_t)s->n_src, sizeof(int64_t));
        s->t2[r].ended = xcalloc((size_t)s->n_src, 1);
        s->t2[r].idle = xcalloc((size_t)s->n_src, 1);
    }
    if (!s->keyed) {
        s->c1 = so_new_consumer(s, jc->source.group, 1, err, errlen);
        if (!s->c1) goto out;
        s->c2 = so_new_consumer(s, s->group2, 2, err, errlen);
        if (!s->c2) goto out;
    }
    if (s->keyed) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, s->topic, RD_KAFKA_PARTITION_UA);
        rd_kafka_subscribe(s->c1, l);
        rd_kafka_topic_partition_list_destroy(l);
        log_info("scaleout", "group %s, topic %s (%d partitions), keyed by user: a task per "
                 "partition, no repartition", jc->source.group, s->topic, (int)s->n_src);
    } else {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, s->topic, RD_KAFKA_PARTITION_UA);
        rd_kafka_subscribe(s->c1, l);
        rd_kafka_topic_partition_list_destroy(l);
        l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, s->rtopic, RD_KAFKA_PARTITION_UA);
        rd_kafka_subscribe(s->c2, l);
        rd_kafka_topic_partition_list_destroy(l);
        log_info("scaleout", "group %s, topic %s (%d partitions) -> %s (%d "
                "partitions) -> group %s", jc->source.group, s->topic, (int)s->n_src, s->rtopic,
                (int)s->R, s->group2);
    }
    int64_t interval = jc->commit_interval_ms > 0 ? jc->commit_interval_ms : 1000;
    int64_t last_commit = mono_ms(), last_marker = 0, last_done = 0;
    so_publish(s);
    status_set_phase(jc->status, PHASE_RUNNING);
    for (;;) {
        if (stopping(s)) break;
        status_beat(jc->status);
        int n = drain(s, s->c1, s->keyed ? k_message : s1_message, 0);
        if (!s->keyed) s1_flush(s);
        if (s->prod) rd_kafka_poll(s->prod, 0);
        if (!s->keyed) n += drain(s, s->c2, s2_message, 0);
        if (s->failed) goto out;
        int64_t t = mono_ms();
        if (!s->keyed && t - last_marker >= MARKER_MS) {
            s1_markers(s, t);
            last_marker = t;
        }
        if (s->m && t - s->last_publish >= 1000) so_publish(s);
        if (t - last_commit >= interval) {
            if (!s->keyed) s1_commit(s, 0);
            if (s2_commit(s, 0)) goto out;
            last_commit = t;
        }
        if (jc->until_end && t - last_done >= DONE_CHECK_MS && my_tasks_done(s)) {
            /* Only once this instance has nothing left of its own: the
             * others' progress is read from the store. */
            last_done = t;
            if (s2_commit(s, 0)) goto out;
            if (all_done(s)) {
                finished = 1;
                break;
            }
        }
        if (s->failed) goto out;
        if (n == 0) {
            drain(s, s->c1, s->keyed ? k_message : s1_message, s->keyed ? 50 : 10);
            if (!s->keyed) s1_flush(s);
            if (!s->keyed) drain(s, s->c2, s2_message, 40);
        }
    }
    status_set_phase(jc->status, PHASE_STOPPING);
    if (!s->keyed) s1_commit(s, 0);
    if (s->failed || s2_commit(s, 0)) goto out;
    rc = 0;
out:
    status_set_phase(jc->status, PHASE_STOPPING);
    so_publish(s); /* the last figures, also after a failure */
    /* A failed instance leaves without the revocations' commits: what it
     * has not committed is redone by the next owner. The loop's last
     * commits are made; the revocations' during the close commit again. */
    for (int i = 0; i < 2; i++) {
        rd_kafka_t *c = i == 0 ? s->c1 : s->c2;
        if (!c) continue;
        /* Leaving the group needs the coordinator: during an outage it
         * would hold a stop up; the group evicts us when our session ends.
         * A finished group is not left either: every member would go
         * through an eager rebalance (seconds) just before it finds the
         * group finished too, and nothing is left to hand over. */
        if (s->failed || s->outage || finished) {
            rd_kafka_destroy_flags(c, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        } else {
            rd_kafka_consumer_close(c);
            rd_kafka_destroy(c);
        }
    }
    if (s->keyed)
        log_info("scaleout", "read %" PRIu64 " records (%" PRIu64 " invalid), applied %" PRIu64
                 " visits (%" PRIu64 " late, %" PRIu64 " over the cap), closed %" PRIu64
                 " sessions", s->st.read1, s->st.invalid1, s->st.visits2, s->st.late2,
                 s->st.capped2, s->st.sessions);
    else
        log_info("scaleout", "stage 1 read %" PRIu64 " records (%" PRIu64
                " invalid, %" PRIu64 " late, %" PRIu64 " future), produced %" PRIu64 " visits and %" PRIu64
                " markers; stage 2 read %" PRIu64 " records, applied %" PRIu64 " visits, dropped %"
                PRIu64 " duplicates, closed %" PRIu64 " sessions (%" PRIu64 " late, %" PRIu64
                " over the cap)", s->st.read1, s->st.invalid1, s->st.late1, s->st.future1, s->st.produced,
                s->st.markers, s->st.read2, s->st.visits2, s->st.dups2, s->st.sessions, s->st.late2,
                s->st.capped2);
    if (s->store) {
        task_store_stats ts;
        task_store_get_stats(s->store, &ts);
        log_info("scaleout", "task store: %" PRIu64 " commits (%" PRIu64 " snapshots) wrote %"
                 PRIu64 " bytes: %" PRIu64 " of frames, %" PRIu64 " of snapshots", ts.commits,
                 ts.snapshots, ts.bytes, ts.frame_bytes, ts.snapshot_bytes);
    }
    if (s->prod) {
        if (rc == 0) rd_kafka_flush(s->prod, 5000);
        rd_kafka_destroy(s->prod);
    }
    if (s->t2)
        for (int32_t r = 0; r < s->R; r++) {
            engine_free(s->t2[r].eng);
            free(s->t2[r].next_seen);
            free(s->t2[r].ended);
            free(s->t2[r].idle);
            free(s->t2[r].adv);
            changelog_frame_free(&s->t2[r].log);
        }
    free(s->t2);
    free(s->p1);
    free(s->m);
    if (s->batch)
        for (int32_t r = 0; r < s->R; r++) buf_free(&s->batch[r].b);
    free(s->batch);
    record_parser_free(s->parser);
    if (s->dlq) s->dlq->ops->close(s->dlq);
    if (s->snk) s->snk->ops->close(s->snk);
    task_store_close(s->store);
    job_context_release(&s->ctx);
    free(conninfo);
    free(s->brokers);
    free(s->topic);
    free(s->rtopic);
    free(s->group2);
    buf_free(&s->scratch);
    buf_free(&s->rec);
    status_set_phase(jc->status, PHASE_DONE);
    return rc;
}
