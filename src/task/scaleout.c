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
 *    PostgreSQL (task_store.h) after the sink has acknowledged the sessions.
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
 */
#include "task/scaleout.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "common/log.h"
#include "common/status.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "engine/engine.h"
#include "metrics/metrics.h"
#include "record/parse.h"
#include "sink/sink.h"
#include "task/repartition.h"
#include "task/task_store.h"

#define POLL_BATCH 1000     /* messages from one consumer before turning to the other */
#define MARKER_MS 200       /* stage 1 broadcasts progress markers this often */
#define DONE_CHECK_MS 500   /* --until-end: how often the group's progress is read */
#define META_TIMEOUT_MS 10000
#define CREATE_TIMEOUT_MS 5000
#define BATCH_BYTES 65536   /* a repartition batch's size, at most (a lone visit may exceed it) */
#define MAX_SRC_PARTITIONS 100000

typedef struct s1part {
    int assigned;
    int held;           /* this instance has read p (the state below stays after a revocation) */
    int64_t pos;        /* next offset to read */
    int64_t max_t;      /* highest accepted event time, INT64_MIN none */
    int64_t end;        /* --until-end: the end this run stops at, -1 unknown */
    int end_sent;
    int64_t marker_pos; /* pos at the last 'W' marker */
    int64_t eof_at, last_record_ms;
    int idle_sent;
} s1part;

typedef struct s2task {
    int32_t id;
    int assigned;
    engine *eng;
    int64_t pos;          /* next offset in the repartition partition (keyed: the source's) */
    int64_t end;          /* keyed --until-end: the source partition's end, -1 unknown */
    int64_t *next_seen;   /* per source partition: next offset seen from it */
    unsigned char *ended, *idle;
    int32_t n_ended;
    int done, changed;
} s2task;

typedef struct so_stats {
    uint64_t read1, invalid1, late1, future1, produced, markers;
    uint64_t read2, dups2, visits2, late2, capped2, sessions, superseded;
} so_stats;

typedef struct so {
    const scaleout_config *cfg;
    const job_config *jc;
    job_context ctx;   /* shared with the sink and the dead-letter output it opens */
    sink_options sink_opts;
    char *brokers, *topic, *group2, *rtopic, describe[256];
    int32_t n_src, R;
    rd_kafka_t *c1, *c2, *prod;
    s1part *p1;
    repart_batch *batch; /* stage 1's visits not yet produced, per repartition partition */
    size_t batch_cap;   /* BATCH_BYTES, or less under the producer's message.max.bytes */
    s2task *t2;
    sink *snk;
    deadletter *dlq;
    task_store *store;
    record_parser *parser;
    s2task *cur;
    const raw_record *cur_raw;
    int failed;
    char *err;
    size_t errlen;
    int64_t idle_ms;
    int outage;             /* every broker down, as last reported; see the exit */
    int unproduced;         /* a visit or marker was given up (stop): no stage 1 commit */
    int keyed;              /* --keyed-input: one stage, a task per source partition */
    so_stats st;
    /* --metrics-listen: this instance's figures (publish); NULL: none */
    metrics_snapshot *m;
    int64_t last_publish;
    uint64_t acc_applied, acc_opened, acc_merged; /* counters of the engines already dropped */
    uint64_t sessions_flushed;       /* st.sessions at the last sink flush */
    buf scratch, rec;
} so;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int stopping(const so *s) { return s->jc->stop && *s->jc->stop; }

__attribute__((format(printf, 2, 3)))
static void fail(so *s, const char *fmt, ...)
{
    if (s->failed) return; /* the first cause is the one to report */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, s->errlen, fmt, ap);
    va_end(ap);
    s->failed = 1;
}

/* The repartition partition of a user: splitmix64, so that consecutive ids
 * spread; it must never change for a group (docs/scaling.md). */
static int32_t partition_of(int64_t user, int32_t R)
{
    uint64_t x = (uint64_t)user + 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (int32_t)(x % (uint64_t)R);
}

/* ---- librdkafka set-up --------------------------------------------------- */

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t errlen)
{
    char e[512];
    if (rd_kafka_conf_set(c, k, v, e, sizeof e) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "kafka property %s=%s: %s", k, v, e);
        return -1;
    }
    return 0;
}

/* Ours first, then the user's -X (which win), except those the design
 * depends on. */
static rd_kafka_conf_t *base_conf(so *s, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (conf_set(c, "bootstrap.servers", s->brokers, err, errlen) ||
        conf_set(c, "client.id", "sessionizer", err, errlen) ||
        conf_set(c, "log_level", "4", err, errlen))
        goto bad;
    for (const char *const *p = s->jc->source.props; p && *p; p++) {
        const char *eq = strchr(*p, '=');
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(eq - *p), *p);
        if (strncmp(key, "sessionizer.", 12) == 0 || strncmp(key, "dlq.", 4) == 0) continue;
        static const char *const refused[] = {"bootstrap.servers", "group.id", "enable.auto.commit",
                                              "enable.auto.offset.store", "enable.partition.eof",
                                              "partition.assignment.strategy", "group.protocol",
                                              "enable.idempotence", NULL};
        for (const char *const *r = refused; *r; r++)
            if (strcmp(key, *r) == 0) {
                snprintf(err, errlen, "-X %s is set by --scale-out itself", key);
                goto bad;
            }
        if (conf_set(c, key, eq + 1, err, errlen)) goto bad;
    }
    return c;
bad:
    rd_kafka_conf_destroy(c);
    return NULL;
}

static void s1_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *l, void *opaque);
static void s2_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *l, void *opaque);
static void k_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                        rd_kafka_topic_partition_list_t *l, void *opaque);

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    if (m->err)
        fail(opaque, "producing to the repartition topic: %s (no stage 1 commit happened after "
             "it; a restart redoes the work)", rd_kafka_err2str(m->err));
}

static void on_error(rd_kafka_t *rk, int e, const char *reason, void *opaque)
{
    so *s = opaque;
    if (rd_kafka_fatal_error(rk, NULL, 0)) {
        char fe[512];
        rd_kafka_fatal_error(rk, fe, sizeof fe);
        fail(s, "kafka: fatal error: %s", fe);
        return;
    }
    /* Transient (brokers down, timeouts): librdkafka reconnects by itself. */
    if (e == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        s->outage = 1;
        if (s->jc->status) {
            io_status_error(&s->jc->status->source, IO_ERR_CONNECTION);
            io_status_down(&s->jc->status->source);
        }
    }
    static int64_t last;
    int64_t t = now_ms();
    if (t - last > 5000) {
        log_warn("scaleout", "kafka: %s: %s (retrying)",
                rd_kafka_err2name((rd_kafka_resp_err_t)e), reason);
        last = t;
    }
}

static rd_kafka_t *new_consumer(so *s, const char *group, int stage, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = base_conf(s, err, errlen);
    if (!c) return NULL;
    if (conf_set(c, "group.id", group, err, errlen) ||
        conf_set(c, "enable.auto.commit", "false", err, errlen) ||
        conf_set(c, "enable.auto.offset.store", "false", err, errlen) ||
        conf_set(c, "enable.partition.eof", "true", err, errlen) ||
        conf_set(c, "partition.assignment.strategy", "range", err, errlen) ||
        /* stage 2 must not skip what was produced: lost data is an error */
        conf_set(c, "auto.offset.reset", stage == 1 ? "earliest" : "error", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    char e[512];
    if (rd_kafka_conf_get(c, "session.timeout.ms", e, &(size_t){sizeof e}) == RD_KAFKA_CONF_OK &&
        strcmp(e, "45000") == 0)
        conf_set(c, "session.timeout.ms", "10000", err, errlen);
    rd_kafka_conf_set_opaque(c, s);
    rd_kafka_conf_set_error_cb(c, on_error);
    rd_kafka_conf_set_rebalance_cb(c, stage == 1 ? s1_rebalance : stage == 2 ? s2_rebalance
                                                                 : k_rebalance);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
    if (!rk) {
        snprintf(err, errlen, "kafka consumer: %s", e);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

static rd_kafka_t *new_producer(so *s, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = base_conf(s, err, errlen);
    if (!c) return NULL;
    /* Idempotent and gapless: a source partition's records reach a
     * repartition partition in order and without holes, which stage 2's
     * de-duplication relies on; a hole is a fatal error, not a skip. */
    if (conf_set(c, "enable.idempotence", "true", err, errlen) ||
        conf_set(c, "enable.gapless.guarantee", "true", err, errlen) ||
        conf_set(c, "message.timeout.ms", "0", err, errlen) ||
        conf_set(c, "linger.ms", "5", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    rd_kafka_conf_set_opaque(c, s);
    rd_kafka_conf_set_error_cb(c, on_error);
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    char e[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e);
    if (!rk) snprintf(err, errlen, "kafka producer: %s", e);
    return rk;
}

/* ---- start-up checks ----------------------------------------------------- */

static int topic_partitions(rd_kafka_t *rk, const char *topic, int32_t *n, char *err, size_t errlen)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t, &md, META_TIMEOUT_MS);
    rd_kafka_topic_destroy(t);
    if (e) {
        snprintf(err, errlen, "cannot read the metadata of topic %s: %s", topic, rd_kafka_err2str(e));
        return -1;
    }
    int rc = 0;
    if (md->topic_cnt != 1 || md->topics[0].err) {
        *n = 0;
        rc = md->topic_cnt == 1 && md->topics[0].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                 ? (snprintf(err, errlen, "topic %s: %s", topic,
                             rd_kafka_err2str(md->topics[0].err)), -1)
                 : 0;
    } else {
        *n = md->topics[0].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

/* The repartition topic: created with R partitions where the cluster allows
 * CreateTopics; otherwise it must exist (or be auto-created) with exactly R,
 * and the message says which command makes it so. */
static int check_internal_topic(so *s, char *err, size_t errlen)
{
    /* Already there (every start but a group's first): a listing of every
     * topic, which unlike a request for one topic creates nothing. */
    const rd_kafka_metadata_t *all = NULL;
    rd_kafka_resp_err_t me = rd_kafka_metadata(s->prod, 1, NULL, &all, META_TIMEOUT_MS);
    if (me) {
        snprintf(err, errlen, "cannot list the topics of the Kafka cluster at %s: %s", s->brokers,
                 rd_kafka_err2str(me));
        return -1;
    }
    int found = 0;
    for (int i = 0; i < all->topic_cnt && !found; i++)
        found = strcmp(all->topics[i].topic, s->rtopic) == 0;
    rd_kafka_metadata_destroy(all);
    rd_kafka_resp_err_t created = RD_KAFKA_RESP_ERR_NO_ERROR;
    char why[256] = "already there";
    if (found) goto check;
    char e[512] = "";
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(s->rtopic, s->R, -1, e, sizeof e);
    rd_kafka_queue_t *q = rd_kafka_queue_new(s->prod);
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(s->prod, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    /* A cluster without CreateTopics (the mock) does not answer at all:
     * seconds, not the usual metadata timeout. */
    rd_kafka_AdminOptions_set_request_timeout(ao, CREATE_TIMEOUT_MS, e, sizeof e);
    rd_kafka_CreateTopics(s->prod, &nt, 1, ao, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, CREATE_TIMEOUT_MS + 1000);
    created = RD_KAFKA_RESP_ERR__TIMED_OUT;
    snprintf(why, sizeof why, "no answer");
    if (ev) {
        created = rd_kafka_event_error(ev);
        snprintf(why, sizeof why, "%s", created ? rd_kafka_event_error_string(ev) : "");
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t nres = 0;
        const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &nres) : NULL;
        if (!created && nres == 1) {
            created = rd_kafka_topic_result_error(tr[0]);
            if (created) snprintf(why, sizeof why, "%s", rd_kafka_topic_result_error_string(tr[0]));
        }
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    if (created == RD_KAFKA_RESP_ERR_NO_ERROR)
        log_info("scaleout", "created topic %s with %d partitions",
                s->rtopic, (int)s->R);
    else
        fprintf(stderr, "sessionizer: scale-out: could not create topic %s (%s); asking the "
                "cluster to auto-create it\n", s->rtopic, why);
    /* A cluster without CreateTopics (librdkafka's mock cluster, old or
     * locked-down brokers): the metadata request below lets a cluster that
     * auto-creates topics do so, with its default partition count. */
check:;
    int32_t n = 0;
    if (topic_partitions(s->prod, s->rtopic, &n, err, errlen)) return -1;
    if (n == s->R) return 0;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "kafka-topics.sh --bootstrap-server %s --create --topic %s "
             "--partitions %d", s->brokers, s->rtopic, (int)s->R);
    if (n == 0)
        snprintf(err, errlen, "the internal topic %s does not exist and the cluster did not "
                 "create it (%s). Create it with: %s", s->rtopic,
                 created ? why : "created, then not found", cmd);
    else
        snprintf(err, errlen, "the internal topic %s has %d partitions, not the %d of "
                 "--repartition-partitions. Run with --repartition-partitions %d if the group "
                 "already used it, or delete it (kafka-topics.sh --bootstrap-server %s --delete "
                 "--topic %s) and create it with: %s", s->rtopic, (int)n, (int)s->R, (int)n,
                 s->brokers, s->rtopic, cmd);
    return -1;
}

/* ---- the repartition topic (repartition.h) ------------------------------- */

static int produce(so *s, int32_t r, const buf *b)
{
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            s->prod, RD_KAFKA_V_TOPIC(s->rtopic), RD_KAFKA_V_PARTITION(r),
            RD_KAFKA_V_VALUE(b->data, b->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fail(s, "producing to %s: %s", s->rtopic, rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(s->prod, 10); /* the queue drains as the cluster acknowledges */
        if (s->failed) return -1;
        if (stopping(s)) {
            s->unproduced = 1; /* a hole: stage 1 must not commit past it */
            return -1;
        }
    }
}

static void batch_flush(so *s, int32_t r)
{
    repart_batch *q = &s->batch[r];
    if (q->n == 0) return;
    produce(s, r, &q->b);
    q->n = 0;
}

/* Every pending batch goes to the producer: before a marker (which raises
 * stage 2's next_seen past the visits it covers, so they must precede it)
 * and before a stage 1 commit (which covers only delivered visits). */
static void s1_flush(so *s)
{
    for (int32_t r = 0; r < s->R && !s->failed; r++) batch_flush(s, r);
}

static void batch_add(so *s, const visit *v, int64_t max_t)
{
    int32_t r = partition_of(v->user_id, s->R);
    repart_batch *q = &s->batch[r];
    if (q->n > 0 && repart_batch_after(q, v->page_len) > s->batch_cap) batch_flush(s, r);
    repart_batch_add(q, v, max_t);
    s->st.produced++;
}

static void broadcast(so *s, int kind, int32_t p)
{
    s1part *sp = &s->p1[p];
    s1_flush(s);
    repart_marker(&s->rec, kind, p, kind == REPART_END ? sp->end : sp->pos, sp->max_t);
    for (int32_t r = 0; r < s->R; r++)
        if (produce(s, r, &s->rec)) return;
    s->st.markers++;
    if (kind == REPART_WM || kind == REPART_END) sp->marker_pos = sp->pos;
}

/* ---- stage 1 ------------------------------------------------------------- */

static void write_dl(so *s, const char *reason, const char *detail, const raw_record *raw,
                        const visit *v)
{
    if (s->m) metrics_count_reason(s->m, reason);
    dead_letter dl = {.reason = reason, .detail = detail, .source = s->describe, .raw = raw, .v = v};
    if (s->dlq->ops->write(s->dlq, &dl, s->err, s->errlen)) s->failed = 1;
}

static void count_read(so *s, int32_t p)
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
static void publish(so *s)
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
    s->last_publish = now_ms();
}

static void s1_end(so *s, int32_t p)
{
    s1part *sp = &s->p1[p];
    if (sp->end_sent) return;
    sp->pos = sp->end;
    broadcast(s, REPART_END, p);
    sp->end_sent = 1;
}

/* A source record as the parser takes it, parsed (stage 1, keyed tasks). */
static parse_error parse_message(so *s, const rd_kafka_message_t *m, raw_record *raw, visit *v,
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

static void s1_message(so *s, rd_kafka_message_t *m)
{
    int32_t p = m->partition;
    if (p < 0 || p >= s->n_src || !s->p1[p].assigned) return;
    s1part *sp = &s->p1[p];
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            sp->eof_at = m->offset;
            if (s->jc->until_end && m->offset >= sp->end) s1_end(s, p);
            else if (m->offset > sp->pos && !s->jc->until_end) sp->pos = m->offset;
        } else {
            on_error(s->c1, m->err, rd_kafka_message_errstr(m), s);
        }
        return;
    }
    if (m->offset < sp->pos) return; /* re-fetched after a rebalance or an outage */
    if (s->jc->until_end && m->offset >= sp->end) return;
    count_read(s, p);
    raw_record raw;
    visit v;
    char detail[160];
    parse_error pe = parse_message(s, m, &raw, &v, detail, sizeof detail);
    sp->pos = m->offset + 1;
    sp->last_record_ms = now_ms();
    sp->idle_sent = 0;
    if (pe != PARSE_OK) {
        s->st.invalid1++;
        write_dl(s, parse_error_code(pe), detail, &raw, NULL);
    } else if (engine_too_far_ahead(&s->jc->engine, v.event_time_us, raw.pos.append_ts_ms)) {
        /* The engine's first rule, here alone too (stage 2 does not repeat
         * it). Records without a timestamp are not judged here: holding one
         * for its successor is the single engine's alone (docs/scaling.md). */
        s->st.future1++;
        write_dl(s, "future", engine_future_detail(raw.pos.append_ts_ms), &raw, &v);
    } else if (sp->max_t != INT64_MIN && v.event_time_us < sp->max_t - s->jc->engine.lateness_us) {
        /* The engine's rule for a partition's own watermark (engine.h), here
         * alone: the closing watermark adds nothing while p has records to
         * deliver (docs/scaling.md). */
        s->st.late1++;
        write_dl(s, "late", "event time below the watermark", &raw, &v);
    } else {
        if (v.event_time_us > sp->max_t) sp->max_t = v.event_time_us;
        batch_add(s, &v, sp->max_t);
    }
    if (s->jc->until_end && sp->pos >= sp->end) s1_end(s, p);
}

/* Waits until the producer has delivered everything (a stage 1 commit may
 * only cover records whose visits are in the repartition topic). */
static int flush_producer(so *s)
{
    int64_t since = 0;
    s1_flush(s);
    while (rd_kafka_outq_len(s->prod) > 0) {
        rd_kafka_poll(s->prod, 50);
        if (s->failed) return -1;
        if (stopping(s)) {
            if (!since) since = now_ms();
            else if (now_ms() - since > 5000) return -1; /* an outage: leave it uncommitted */
        }
    }
    return 0;
}

static void s1_commit(so *s, int quiet)
{
    if (s->failed || s->unproduced) return;
    if (flush_producer(s) || s->unproduced) return;
    if (s->dlq->ops->flush(s->dlq, s->err, s->errlen)) {
        s->failed = 1;
        return;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(s->n_src);
    for (int32_t p = 0; p < s->n_src; p++) {
        s1part *sp = &s->p1[p];
        if (!sp->assigned || sp->pos < 0) continue;
        rd_kafka_topic_partition_t *e = rd_kafka_topic_partition_list_add(l, s->topic, p);
        e->offset = sp->pos;
        char md[96];
        int n = snprintf(md, sizeof md, "sz1 %" PRId64 " %" PRId64, sp->max_t, sp->end);
        e->metadata = xstrndup(md, (size_t)n);
        e->metadata_size = (size_t)n;
    }
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_commit(s->c1, l, 0);
        if (e && !quiet)
            log_warn("scaleout", "stage 1 commit not made (%s); the next one "
                    "covers it", rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void s1_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
    so *s = opaque;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_resp_err_t ce;
        /* The committed offsets and their metadata are the stage's state. */
        while ((ce = rd_kafka_committed(rk, l, META_TIMEOUT_MS)) != 0) {
            if (stopping(s)) break;
            log_warn("scaleout", "reading stage 1 offsets: %s (retrying)",
                    rd_kafka_err2str(ce));
        }
        int need_commit = 0;
        for (int i = 0; i < l->cnt; i++) {
            rd_kafka_topic_partition_t *tp = &l->elems[i];
            int32_t p = tp->partition;
            if (p < 0 || p >= s->n_src) continue;
            s1part *sp = &s->p1[p];
            const s1part old = *sp;
            /* idleness counts from the assignment: a partition empty so far
             * is idle after idle.ms, not at once */
            *sp = (s1part){.assigned = 1, .held = 1, .pos = 0, .max_t = INT64_MIN, .end = -1,
                           .eof_at = -1, .last_record_ms = now_ms()};
            long long mt = 0, en = -1;
            int has_md = tp->offset >= 0 && tp->metadata_size > 0 && tp->metadata_size < 96;
            if (has_md) {
                char md[96];
                snprintf(md, sizeof md, "%.*s", (int)tp->metadata_size, (const char *)tp->metadata);
                has_md = sscanf(md, "sz1 %lld %lld", &mt, &en) == 2;
            }
            int64_t lo = 0, hi = 0;
            while (rd_kafka_query_watermark_offsets(rk, s->topic, p, &lo, &hi, META_TIMEOUT_MS)) {
                if (stopping(s)) break;
            }
            if (has_md) {
                sp->pos = tp->offset;
                sp->max_t = mt;
                sp->end = en;
            } else {
                sp->pos = lo; /* never committed: the log's start */
                need_commit = 1;
            }
            /* Back to an instance that read p further than the last commit
             * that got through (the mock cluster refuses commits during a
             * rebalance): it goes on from its own state rather than read
             * again. That state is one stage 1 reached on p's log (position
             * and highest event time together), and every visit before it
             * went to this producer first, so for stage 2 this is a replay
             * like any other: what another owner delivered meanwhile is
             * dropped as seen. Not across another --until-end end. */
            if (old.held && old.pos > sp->pos && (has_md ? old.end == sp->end : 1)) {
                sp->pos = old.pos;
                sp->max_t = old.max_t;
                sp->end = old.end;
                need_commit = 1;
            }
            if (s->jc->until_end && sp->end < 0) {
                sp->end = hi; /* the log as it was when the run first claimed p */
                need_commit = 1;
            }
            sp->marker_pos = -1;
            tp->offset = sp->pos;
        }
        rd_kafka_assign(rk, l);
        /* For the operator (and the harness's cost of a lost machine): where
         * each partition resumes, i.e. its last stage 1 commit. */
        buf *b = &s->scratch;
        buf_reset(b);
        for (int i = 0; i < l->cnt; i++)
            buf_printf(b, " p%d@%" PRId64, (int)l->elems[i].partition, l->elems[i].offset);
        log_info("scaleout", "stage 1 assigned%.*s", (int)b->len,
                b->data ? (const char *)b->data : "");
        if (need_commit) s1_commit(s, 1);
        for (int i = 0; i < l->cnt; i++) {
            int32_t p = l->elems[i].partition;
            if (p >= 0 && p < s->n_src && s->jc->until_end && s->p1[p].pos >= s->p1[p].end)
                s1_end(s, p);
        }
    } else {
        s1_flush(s); /* in the revoked partitions' order, as if produced already */
        if (!rd_kafka_assignment_lost(rk)) s1_commit(s, 0);
        for (int32_t p = 0; p < s->n_src; p++) s->p1[p].assigned = 0;
        rd_kafka_assign(rk, NULL);
    }
}

static void s1_markers(so *s, int64_t now)
{
    for (int32_t p = 0; p < s->n_src; p++) {
        s1part *sp = &s->p1[p];
        if (!sp->assigned || sp->end_sent) continue;
        if (sp->pos > sp->marker_pos) broadcast(s, REPART_WM, p);
        /* Live: Flink's idleness, as the single instance (docs/kafka.md). */
        if (!s->jc->until_end && !sp->idle_sent && sp->eof_at >= 0 && sp->eof_at <= sp->pos &&
            now - sp->last_record_ms >= s->idle_ms) {
            broadcast(s, REPART_IDLE, p);
            sp->idle_sent = 1;
        }
    }
}

/* ---- stage 2 ------------------------------------------------------------- */

static int on_close(void *ctx, const closed_session *cs)
{
    so *s = ctx;
    s->st.sessions++;
    if (s->snk->ops->write(s->snk, cs, s->err, s->errlen)) {
        s->failed = 1;
        return -1;
    }
    return 0;
}

static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    so *s = ctx;
    /* the record's bytes, when it is the one being applied (keyed input) */
    const raw_record *raw = s->cur_raw && s->cur_raw->pos.partition == v->pos.partition &&
                                    s->cur_raw->pos.offset == v->pos.offset
                                ? s->cur_raw
                                : NULL;
    if (why == REJECT_LATE) {
        /* Repartitioned: live only, a source partition taken for idle
         * delivered after all. Keyed: the lateness rule itself. */
        s->st.late2++;
        write_dl(s, "late", s->keyed ? "event time below the watermark"
                                     : "event time below the closing watermark of its session task",
                 raw, v);
    } else if (why == REJECT_FUTURE) {
        s->st.future1++;
        write_dl(s, "future", engine_future_detail(v->pos.append_ts_ms), raw, v);
    } else {
        s->st.capped2++;
        write_dl(s, "session_cap", "the session already holds --max-pages earlier pages", raw, v);
    }
    return s->failed ? -1 : 0;
}

/* Frees a task's engine, keeping its counters for the metrics. */
static void drop_engine(so *s, s2task *t)
{
    if (!t->eng) return;
    if (s->m) {
        engine_stats e;
        engine_get_counters(t->eng, &e);
        s->acc_applied += e.visits_applied;
        s->acc_opened += e.sessions_opened;
        s->acc_merged += e.sessions_merged;
    }
    engine_free(t->eng);
    t->eng = NULL;
}

static void task_reset(so *s, s2task *t)
{
    drop_engine(s, t);
    engine_config ec = s->jc->engine;
    ec.track_dirty = 1;
    /* Repartitioned: judged in stage 1, in the source partition's order.
     * Keyed: the engine judges it, as lateness. */
    if (!s->keyed) ec.max_future_us = 0;
    engine_callbacks cb = {.ctx = s, .on_close = on_close, .on_reject = on_reject};
    t->eng = engine_new(&ec, &cb);
    t->pos = 0;
    t->end = -1;
    t->done = t->changed = 0;
    t->n_ended = 0;
    for (int32_t p = 0; p < s->n_src; p++) {
        t->next_seen[p] = -1;
        t->ended[p] = t->idle[p] = 0;
        /* every source partition holds back closing until it is heard of;
         * keyed, a task's users are all in its own partition */
        if (!s->keyed || p == t->id) engine_set_caught_up(t->eng, p, 0);
    }
}

static void save_dedup(const so *s, const s2task *t, buf *b)
{
    buf_put_u32le(b, 1);
    buf_put_u32le(b, (uint32_t)s->R);
    buf_put_u32le(b, (uint32_t)s->n_src);
    for (int32_t p = 0; p < s->n_src; p++) {
        buf_put_i64le(b, t->next_seen[p]);
        buf_append_byte(b, (unsigned char)(t->ended[p] | t->idle[p] << 1));
    }
}

static int load_meta(void *ctx, const char *key, const void *v, size_t len)
{
    so *s = ctx;
    s2task *t = s->cur;
    reader r;
    reader_init(&r, v, len);
    if (strcmp(key, "engine") == 0) return engine_load_meta(t->eng, v, len) ? -1 : 0;
    if (strcmp(key, "position") == 0) return reader_i64le(&r, &t->pos) || reader_left(&r) ? -1 : 0;
    if (strcmp(key, "done") == 0) return t->done = 1, 0;
    if (strcmp(key, "end") == 0) return reader_i64le(&r, &t->end) || reader_left(&r) ? -1 : 0;
    if (strcmp(key, "dedup") == 0) {
        uint32_t ver = 0, R = 0, n = 0;
        reader_u32le(&r, &ver);
        reader_u32le(&r, &R);
        reader_u32le(&r, &n);
        if (r.bad || ver != 1 || R != (uint32_t)s->R || n != (uint32_t)s->n_src) return -1;
        for (uint32_t p = 0; p < n; p++) {
            const unsigned char *f;
            reader_i64le(&r, &t->next_seen[p]);
            if (reader_bytes(&r, &f, 1)) return -1;
            t->ended[p] = *f & 1;
            t->idle[p] = (*f >> 1) & 1;
            t->n_ended += t->ended[p];
            /* caught-up flags are not in the engine's saved state */
            if (!s->keyed || (int32_t)p == t->id)
                engine_set_caught_up(t->eng, (int32_t)p, t->ended[p] || t->idle[p]);
        }
        return r.bad || reader_left(&r) ? -1 : 0;
    }
    return 0; /* a key of a later version: ignored */
}

static int load_user(void *ctx, int64_t user_id, const void *blob, size_t len)
{
    so *s = ctx;
    return engine_load_user(s->cur->eng, &(user_key){.id = user_id}, blob, len);
}

/* restore: the task's committed state, or a new one. */
static int task_restore(so *s, s2task *t)
{
    task_reset(s, t);
    s->cur = t;
    int n = task_store_load(s->store, t->id, load_meta, load_user, s, s->err, s->errlen);
    s->cur = NULL;
    if (n < 0) {
        s->failed = 1;
        return -1;
    }
    engine_clear_dirty(t->eng);
    return 0;
}

static int put_user(void *ctx, const user_key *user, const void *blob, size_t len)
{
    assert(user->str == NULL); /* int users only (scaleout_run) */
    int64_t user_id = user->id;
    so *s = ctx;
    task_store_put_user(s->store, user_id, blob, len);
    return 0;
}

static void s2_seek(so *s, s2task *t)
{
    /* keyed input: the task is a source partition, read by stage 1's consumer */
    const char *topic = s->keyed ? s->topic : s->rtopic;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, t->id)->offset = t->pos;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(s->keyed ? s->c1 : s->c2, l, META_TIMEOUT_MS);
    /* Not a failure: a zombie's partition may be gone from the client
     * already (it left the group past max.poll.interval.ms; the revocation
     * is on its way), and a fetch that goes on from the old offset only
     * brings records below t->pos, which task_record skips. */
    if (e) {
        log_warn("scaleout", "seeking %s partition %d to %" PRId64 ": %s (records below it are "
                 "skipped)", topic, (int)t->id, t->pos, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* commit: the sink acknowledges the sessions, then each changed task's
 * state goes to the store in a transaction of its own. */
static int s2_commit_body(so *s, int suspending);

static int s2_commit(so *s, int suspending)
{
    int64_t t0 = now_ms();
    uint64_t closed = s->st.sessions;
    int rc = s2_commit_body(s, suspending);
    if (rc == 0 && s->m) {
        s->m->sink_flushes++;
        s->m->sink_sessions_written += closed - s->sessions_flushed;
        s->sessions_flushed = closed;
        metrics_count_commit(s->m, (double)(now_ms() - t0) / 1000, status_wall_ms());
        publish(s);
    }
    return rc;
}

static int s2_commit_body(so *s, int suspending)
{
    if (s->snk->ops->flush(s->snk, s->err, s->errlen) ||
        s->dlq->ops->flush(s->dlq, s->err, s->errlen)) {
        s->failed = 1;
        return -1;
    }
    for (int32_t r = 0; r < s->R; r++) {
        s2task *t = &s->t2[r];
        if (!t->assigned || !t->changed) continue;
        int superseded = 0;
        buf *b = &s->scratch;
        task_store_begin(s->store, t->id, t->pos);
#define PUT(key, fill)                                                                           \
    do {                                                                                         \
        buf_reset(b);                                                                            \
        fill;                                                                                    \
        task_store_put(s->store, key, b->data, b->len);                                          \
    } while (0)
        if (engine_foreach_dirty(t->eng, put_user, s)) goto fail_tx;
        PUT("position", buf_put_i64le(b, t->pos));
        PUT("engine", engine_save_meta(t->eng, b));
        PUT("dedup", save_dedup(s, t, b));
        if (t->done) PUT("done", buf_append_byte(b, 1));
        if (t->end >= 0) PUT("end", buf_put_i64le(b, t->end));
#undef PUT
        if (task_store_commit(s->store, &superseded, s->err, s->errlen)) goto fail;
        if (superseded) {
            /* Another owner went further while this instance was cut off:
             * take its state and go on from there. */
            s->st.superseded++;
            if (suspending) continue; /* dropped anyway; its next owner loads the newer state */
            log_info("scaleout", "task %d was committed further by another "
                    "instance; resuming from its state", (int)t->id);
            if (task_restore(s, t)) return -1;
            s2_seek(s, t);
            continue;
        }
        engine_clear_dirty(t->eng);
        t->changed = 0;
    }
    return 0;
fail_tx:
    task_store_abort(s->store);
fail:
    s->failed = 1;
    return -1;
}

static void s2_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
    so *s = opaque;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < l->cnt; i++) {
            int32_t r = l->elems[i].partition;
            if (r < 0 || r >= s->R) continue;
            s2task *t = &s->t2[r];
            if (task_restore(s, t)) break;
            t->assigned = 1;
            l->elems[i].offset = t->pos > 0 ? t->pos : RD_KAFKA_OFFSET_BEGINNING;
        }
        buf *b = &s->scratch;
        buf_reset(b);
        for (int i = 0; i < l->cnt; i++)
            if (l->elems[i].partition >= 0 && l->elems[i].partition < s->R)
                buf_printf(b, " task%d@%" PRId64, (int)l->elems[i].partition,
                           s->t2[l->elems[i].partition].pos);
        log_info("scaleout", "stage 2 assigned%.*s", (int)b->len,
                b->data ? (const char *)b->data : "");
        rd_kafka_assign(rk, l);
    } else {
        /* suspend: commit, then drop (eager assignment revokes them all) */
        if (!rd_kafka_assignment_lost(rk) && !s->failed) s2_commit(s, 1);
        for (int32_t r = 0; r < s->R; r++) {
            s->t2[r].assigned = 0;
            drop_engine(s, &s->t2[r]);
        }
        rd_kafka_assign(rk, NULL);
    }
}

static void k_finish(so *s, s2task *t);

/* The prologue of a task's records (stage 2's, and keyed tasks' which are
 * source partitions): the task when m is a record it is to read next or
 * later; NULL for an error (handled here), a record of a task this instance
 * does not hold, one already applied, or one beyond a keyed task's
 * --until-end end. */
static s2task *task_record(so *s, rd_kafka_t *c, const char *topic, rd_kafka_message_t *m)
{
    int32_t r = m->partition;
    if (r < 0 || r >= s->R || !s->t2[r].assigned) return NULL;
    s2task *t = &s->t2[r];
    int ends = s->jc->until_end && t->end >= 0; /* keyed tasks only have an end */
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (ends && m->offset >= t->end) k_finish(s, t);
    } else if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET) {
        fail(s, "%s partition %d: %s. Records the task had not read were deleted (retention); "
             "a run from the beginning with a new --group rebuilds the table", topic, (int)r,
             rd_kafka_message_errstr(m));
    } else if (m->err) {
        on_error(c, m->err, rd_kafka_message_errstr(m), s);
    }
    if (m->err || m->offset < t->pos || (ends && m->offset >= t->end)) return NULL;
    return t;
}

/* One visit of a batch from source partition p at offset off: dropped when
 * already seen (a replay of stage 1), else applied. */
static int s2_visit(so *s, s2task *t, const visit *v, int64_t max_t)
{
    int32_t p = v->pos.partition;
    if (v->pos.offset < t->next_seen[p]) {
        s->st.dups2++;
        return 0;
    }
    t->next_seen[p] = v->pos.offset + 1;
    int rc = 0;
    if (t->idle[p]) {
        t->idle[p] = 0;
        rc = engine_set_caught_up(t->eng, p, 0);
    }
    s->st.visits2++;
    if (!rc) rc = engine_apply(t->eng, v);
    if (!rc) rc = engine_advance_partition(t->eng, p, max_t);
    return rc;
}

static int s2_marker(so *s, s2task *t, int kind, int32_t p, int64_t off, int64_t max_t)
{
    int fresh = off > t->next_seen[p];
    if (fresh) t->next_seen[p] = off;
    int rc = 0;
    if (kind == REPART_WM && fresh && t->idle[p]) {
        t->idle[p] = 0;
        rc = engine_set_caught_up(t->eng, p, 0);
    }
    if (!rc) rc = engine_advance_partition(t->eng, p, max_t);
    if (!rc && kind == REPART_IDLE && off >= t->next_seen[p] && !t->ended[p]) {
        t->idle[p] = 1;
        rc = engine_set_caught_up(t->eng, p, 1);
    }
    if (!rc && kind == REPART_END && !t->ended[p]) {
        t->ended[p] = 1;
        t->n_ended++;
        rc = engine_set_caught_up(t->eng, p, 1);
        if (!rc && s->jc->until_end && t->n_ended == s->n_src && !t->done) {
            rc = engine_close_all(t->eng);
            t->done = 1;
        }
    }
    return rc;
}

static int s2_item(void *ctx, int kind, const visit *v, int64_t max_t)
{
    so *s = ctx;
    s2task *t = s->cur;
    if (kind == REPART_BATCH) return s2_visit(s, t, v, max_t);
    return s2_marker(s, t, kind, v->pos.partition, v->pos.offset, max_t);
}

static void s2_message(so *s, rd_kafka_message_t *m)
{
    s2task *t = task_record(s, s->c2, s->rtopic, m);
    if (!t) return;
    s->st.read2++;
    t->pos = m->offset + 1;
    t->changed = 1;
    s->cur = t;
    int rc = repart_decode(m->payload, m->len, s->n_src, s2_item, s);
    s->cur = NULL;
    if (rc < 0)
        fail(s, "%s partition %d offset %" PRId64 " is not a sessionizer repartition record of "
             "version %d (another writer on the internal topic, or an instance of another "
             "version in the group?)", s->rtopic, (int)m->partition, m->offset, REPART_VERSION);
    else if (rc)
        s->failed = 1;
}

/* ---- keyed input: one stage ------------------------------------------------
 *
 * With --keyed-input every user's visits are in one source partition, so a
 * source partition is a whole task: parse, the engine (which judges
 * lateness itself, on its one partition's watermark), the sink. Its state
 * (position in the source, engine, open sessions, --until-end end) is the
 * same task store's, committed atomically, so nothing is replayed twice and
 * no de-duplication is needed. */

static void k_finish(so *s, s2task *t)
{
    if (t->done) return;
    if (engine_close_all(t->eng)) s->failed = 1;
    t->done = 1;
    t->changed = 1;
}

static void k_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                        rd_kafka_topic_partition_list_t *l, void *opaque)
{
    so *s = opaque;
    if (e != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        s2_rebalance(rk, e, l, opaque); /* suspend: commit, drop */
        return;
    }
    buf *b = &s->scratch;
    buf_reset(b);
    for (int i = 0; i < l->cnt; i++) {
        int32_t p = l->elems[i].partition;
        if (p < 0 || p >= s->R) continue;
        s2task *t = &s->t2[p];
        if (task_restore(s, t)) break;
        int64_t lo = 0, hi = 0;
        while (rd_kafka_query_watermark_offsets(rk, s->topic, p, &lo, &hi, META_TIMEOUT_MS))
            if (stopping(s)) break;
        if (t->pos < lo) t->pos = lo; /* a new task: the log's start */
        if (s->jc->until_end && t->end < 0) {
            t->end = hi; /* the log as it was when the run first claimed p */
            t->changed = 1;
        }
        t->assigned = 1;
        l->elems[i].offset = t->pos;
        buf_printf(b, " p%d@%" PRId64, (int)p, t->pos);
        if (s->jc->until_end && t->pos >= t->end) k_finish(s, t);
    }
    log_info("scaleout", "keyed tasks assigned%.*s", (int)b->len,
             b->data ? (const char *)b->data : "");
    rd_kafka_assign(rk, l);
}

static void k_message(so *s, rd_kafka_message_t *m)
{
    s2task *t = task_record(s, s->c1, s->topic, m);
    if (!t) return;
    count_read(s, t->id);
    raw_record raw;
    visit v;
    char detail[160];
    parse_error pe = parse_message(s, m, &raw, &v, detail, sizeof detail);
    t->pos = m->offset + 1;
    t->changed = 1;
    if (pe != PARSE_OK) {
        s->st.invalid1++;
        write_dl(s, parse_error_code(pe), detail, &raw, NULL);
    } else {
        s->st.visits2++;
        s->cur_raw = &raw;
        if (engine_apply(t->eng, &v)) s->failed = 1;
        s->cur_raw = NULL;
    }
    if (s->jc->until_end && t->pos >= t->end) k_finish(s, t);
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
    int64_t n = task_store_count_key(s->store, "done", s->err, s->errlen);
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
    for (const char *const *p = jc->source.props; p && *p; p++)
        if (strncmp(*p, "sessionizer.idle.ms=", 20) == 0) s->idle_ms = atoll(*p + 20);
    if (jc->metrics) {
        s->m = xcalloc(1, sizeof *s->m);
        s->m->started_wall_ms = status_wall_ms();
        s->m->checkpoint_bytes = -1;
        s->m->watermark_us = INT64_MIN;
        s->m->scaleout = 1;
    }
    if (jc->status) io_status_name(&jc->status->source, "kafka");
    if (parse_uri(s, jc->source_uri, err, errlen)) goto out;
    if (!conninfo) {
        snprintf(err, errlen, "--scale-out keeps the session tasks' state in PostgreSQL: use a "
                 "postgresql:// --sink, or give --state postgresql://...");
        goto out;
    }
    if (jc->records.user_type == USER_STRING) {
        /* The repartition records and the task store carry int users.
         * (--user-from key and --time-from kafka are stage 1's parsing
         * alone: the visit it produces is the same.) */
        snprintf(err, errlen, "--scale-out does not support --user-type string yet");
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
    if (s->keyed) s->c1 = new_consumer(s, jc->source.group, 3, err, errlen);
    else s->prod = new_producer(s, err, errlen);
    if (!(s->keyed ? s->c1 : s->prod)) goto out;
    if (topic_partitions(s->keyed ? s->c1 : s->prod, s->topic, &s->n_src, err, errlen)) goto out;
    if (s->n_src <= 0 || s->n_src > MAX_SRC_PARTITIONS) {
        snprintf(err, errlen, "topic %s does not exist on the Kafka cluster at %s", s->topic,
                 s->brokers);
        goto out;
    }
    if (s->keyed) s->R = s->n_src; /* a task per source partition */
    else if (check_internal_topic(s, err, errlen)) goto out;
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
        s->t2[r].id = r;
        s->t2[r].next_seen = xcalloc((size_t)s->n_src, sizeof(int64_t));
        s->t2[r].ended = xcalloc((size_t)s->n_src, 1);
        s->t2[r].idle = xcalloc((size_t)s->n_src, 1);
    }
    if (!s->keyed) {
        s->c1 = new_consumer(s, jc->source.group, 1, err, errlen);
        if (!s->c1) goto out;
        s->c2 = new_consumer(s, s->group2, 2, err, errlen);
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
    int64_t last_commit = now_ms(), last_marker = 0, last_done = 0;
    publish(s);
    status_set_phase(jc->status, PHASE_RUNNING);
    for (;;) {
        if (stopping(s)) break;
        status_beat(jc->status);
        int n = drain(s, s->c1, s->keyed ? k_message : s1_message, 0);
        if (!s->keyed) s1_flush(s);
        if (s->prod) rd_kafka_poll(s->prod, 0);
        if (!s->keyed) n += drain(s, s->c2, s2_message, 0);
        if (s->failed) goto out;
        int64_t t = now_ms();
        if (!s->keyed && t - last_marker >= MARKER_MS) {
            s1_markers(s, t);
            last_marker = t;
        }
        if (s->m && t - s->last_publish >= 1000) publish(s);
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
    publish(s); /* the last figures, also after a failure */
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
