/*
 * kafka.c - visits from a Kafka topic (librdkafka), every partition of it:
 * the source's ops (open, poll, positions, progress, close) and its failures.
 *
 *   kafka://HOST:PORT[,HOST:PORT...]/TOPIC   with -X key=value, --group ID,
 *   --start earliest|latest, --until-end; docs/kafka.md is the user's view.
 *
 * The rest of the source is in kafka_ring.c (the consumer thread and the
 * ring to the job's thread: throughput, threads), kafka_group.c (the consumer
 * group: one instance reads every partition) and kafka_conf.c (URI, -X,
 * defaults); kafka_internal.h is what they share.
 *
 * Why it is built the way it is:
 *
 *  - Positions are ours. The checkpoint holds the next offset of every
 *    partition and is the only source of truth; the consumer group's
 *    committed offsets are written after each checkpoint commit, for lag
 *    tools only, and never read. Every assignment is made with explicit
 *    offsets, and every delivered record is checked against the position:
 *    a record below it (a re-fetch after a rebalance or an outage) is dropped,
 *    because the engine is not idempotent per record (a page applied twice
 *    would appear twice in its session).
 *
 *  - Caught-up flags drive the engine's closing watermark (engine.h). With
 *    --until-end a partition is caught up when its position reaches the end
 *    offset it had at start: deterministic, which is what makes replays
 *    identical. Live, it is caught up when librdkafka reported the end of
 *    the partition, nothing was delivered since, and nothing for
 *    sessionizer.idle.ms (Flink's idleness); empty partitions qualify at
 *    their first fetch, so they never stall closing, and an unassigned
 *    partition never does. After a quiet moment, every flag goes down for
 *    sessionizer.idle.ms before the next record is applied (poll()), so
 *    that records produced together to two partitions cannot close each
 *    other's sessions early. A flag travels in-band (source.h, marks):
 *    poll() returns a mark where it changed, between the records delivered
 *    before and after. With --until-end that is the record that reached the
 *    end; live, the flags are worked out (refresh_marks()) at every quiet
 *    moment, at least once a second while records stream, at a rebalance
 *    and at a burst.
 *
 *  - Failures: librdkafka reconnects by itself, so a broker outage is only
 *    reported (poll returns IDLE meanwhile) and reading resumes at our
 *    positions; errors that no waiting can cure (authorization, unknown
 *    topic, offsets gone by retention, fatal client errors) fail the job
 *    without committing. At start-up the cluster must answer within
 *    sessionizer.startup.timeout.ms (default 15 s), or the job stops with an
 *    error that says so.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/log.h"
#include "common/status.h"
#include "common/clock.h"
#include "common/xalloc.h"
#include "source/kafka_internal.h"
#include "source/source.h"

#define STOP_POLL_MS 200 /* the longest a request to the cluster holds up the job's thread */

extern const source_ops kafka_source_ops;

__attribute__((format(printf, 2, 3)))
void kafka_fail(kafka_source *ks, const char *fmt, ...)
{
    if (ks->fatal) return; /* the first cause is the one to report */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ks->fatal_msg, sizeof ks->fatal_msg, fmt, ap);
    va_end(ap);
    ks->fatal = 1;
}

/* ---- librdkafka's log and errors (the errors served on the consumer thread
 * come here through the ring, kafka_ring.c) ---------------------------------- */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *msg)
{
    const kafka_source *ks = rd_kafka_opaque(rk);
    /* Warnings and worse only, unless -X debug=... asked for more;
     * connection failures also reach error_cb, which reports them once per
     * outage instead of once per retry. */
    if ((ks && ks->debug) || (level <= 4 && strcmp(fac, "FAIL") != 0))
        log_msg(level <= 3 ? LOG_ERROR : level == 4 ? LOG_WARN : level <= 6 ? LOG_INFO : LOG_DEBUG,
                "kafka", "%s: %s", fac, msg);
}

static int is_permanent(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_INVALID_GROUP_ID:
        return 1;
    default:
        return 0;
    }
}

void kafka_on_error(kafka_source *ks, rd_kafka_resp_err_t err, const char *reason)
{
    snprintf(ks->last_err_str, sizeof ks->last_err_str, "%s", reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(ks->rk, why, sizeof why);
        kafka_fail(ks, "Kafka client failed: %s: %s", rd_kafka_err2name(orig), why);
        return;
    }
    if (is_permanent(err)) {
        if (err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
            err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE)
            kafka_fail(ks, "topic %s: %s. The records at the saved position were deleted "
                       "(retention) before they were read. To go on without them, rerun with "
                       "-X auto.offset.reset=earliest; to reprocess what is left from the "
                       "start, use a new --checkpoint directory", ks->topic, reason);
        else
            kafka_fail(ks, "topic %s: %s (%s)", ks->topic, reason, rd_kafka_err2name(err));
        return;
    }
    /* At start-up the error the caller gets will quote the last one. */
    if (ks->starting) return;
    /* Transient: librdkafka retries on its own. One line per kind of error
     * every 10 s is enough to see an outage without drowning the log. */
    int64_t t = mono_ms();
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
        err == RD_KAFKA_RESP_ERR__RESOLVE) {
        io_status_error(ks->io, IO_ERR_CONNECTION);
        if (!ks->outage_since_ms) {
            ks->outage_since_ms = t;
            io_status_down(ks->io);
            log_warn("kafka", "cluster %s unreachable (%s); waiting for it, reading resumes "
                     "where it stopped", ks->brokers, reason);
            ks->last_err = err;
            ks->last_err_ms = t;
            return;
        }
    }
    if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && err != RD_KAFKA_RESP_ERR__TRANSPORT &&
        err != RD_KAFKA_RESP_ERR__RESOLVE)
        io_status_error(ks->io, err == RD_KAFKA_RESP_ERR__TIMED_OUT ? IO_ERR_TIMEOUT : IO_ERR_SERVER);
    if (err != ks->last_err || t - ks->last_err_ms >= 10000) {
        log_warn("kafka", "%s", reason);
        ks->last_err = err;
        ks->last_err_ms = t;
    }
}

/* ---- opening ------------------------------------------------------------ */

void kafka_destroy(kafka_source *ks)
{
    if (!ks) return;
    if (ks->rk) {
        if (ks->q) rd_kafka_queue_destroy(ks->q);
        rd_kafka_destroy(ks->rk);
    }
    if (ks->ring_init) {
        pthread_mutex_destroy(&ks->ring_mu);
        pthread_cond_destroy(&ks->ring_data);
        pthread_cond_destroy(&ks->ring_space);
        pthread_cond_destroy(&ks->ring_done);
    }
    free(ks->parts);
    free(ks->brokers);
    free(ks->topic);
    free(ks->group);
    free(ks->describe);
    free(ks->identity);
    free(ks);
}

/* One metadata request for the topic, answered or not within timeout_ms.
 * rd_kafka_metadata keeps to its timeout whatever the cluster's state (it
 * waits for a usable broker, then for the answer, both bounded), unlike
 * rd_kafka_query_watermark_offsets, which waits for its answer without bound
 * while the partition's leader is unknown (all brokers down): so this is the
 * only request the job's thread makes to the cluster after open(). */
static rd_kafka_resp_err_t topic_metadata(kafka_source *ks, const struct rd_kafka_metadata **md,
                                          int timeout_ms)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(ks->rk, ks->topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(ks->rk, 0, rkt, md, timeout_ms);
    rd_kafka_topic_destroy(rkt);
    if (e) *md = NULL;
    return e;
}

/* Waits for the cluster to answer a metadata request for the topic, serving
 * error_cb meanwhile so that the failure names its cause. A stop request
 * ends the wait within STOP_POLL_MS. */
static int wait_for_cluster(kafka_source *ks, char *err, size_t errlen)
{
    int64_t deadline = mono_ms() + ks->startup_ms;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
    for (;;) {
        if (job_stopping(ks->ctx)) {
            snprintf(err, errlen, "stopped while waiting for the Kafka cluster at %s (%s%s%s); "
                     "nothing was read", ks->brokers, rd_kafka_err2str(e),
                     ks->last_err_str[0] ? "; last error: " : "", ks->last_err_str);
            return -1;
        }
        int64_t left = deadline - mono_ms();
        if (left <= 0) break;
        e = topic_metadata(ks, &md, (int)(left < STOP_POLL_MS ? left : STOP_POLL_MS));
        rd_kafka_poll(ks->rk, 0);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
    }
    if (!md) {
        snprintf(err, errlen, "cannot reach the Kafka cluster at %s within %.1f s (%s%s%s). "
                 "Check the address in --source, or wait longer with "
                 "-X sessionizer.startup.timeout.ms=MS", ks->brokers,
                 (double)ks->startup_ms / 1000.0, rd_kafka_err2str(e),
                 ks->last_err_str[0] ? "; last error: " : "", ks->last_err_str);
        return -1;
    }
    int rc = 0;
    if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt <= 0) {
        rd_kafka_resp_err_t te = md->topic_cnt == 1 ? md->topics[0].err
                                                    : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        if (te == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || te == RD_KAFKA_RESP_ERR_NO_ERROR)
            snprintf(err, errlen, "topic '%s' does not exist on the Kafka cluster at %s "
                     "(sessionizer does not create its input topic)", ks->topic, ks->brokers);
        else
            snprintf(err, errlen, "topic '%s' on %s: %s", ks->topic, ks->brokers,
                     rd_kafka_err2str(te));
        rc = -1;
    } else {
        kafka_grow_parts(ks, md->topics[0].partition_cnt);
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

static void refresh_marks(kafka_source *ks, int64_t now);

/* Records fetched while the consumer leaves its group reach the close queue,
 * which kafka_leave_group serves with callbacks; with no consume callback
 * librdkafka 2.0.2 aborts on them ("rd_kafka_q_serve: assert: res !=
 * RD_KAFKA_OP_RES_PASS", seen once in kafka_0004's SIGINT). They are
 * dropped: this source never stores offsets automatically
 * (enable.auto.offset.store=false, kafka_conf.c), so whoever reads the
 * partition next reads them. Nothing else serves this consumer with
 * callbacks once it is subscribed (the ring uses consume_batch_queue and
 * consumer_poll, which return records instead). */
static void kafka_drop_while_closing(rd_kafka_message_t *m, void *opaque)
{
    (void)m;
    (void)opaque;
}

static source *kafka_open(const char *target, const source_options *opts, char *err,
                          size_t errlen)
{
    rd_kafka_conf_t *conf;
    kafka_source *ks = kafka_configure(target, opts, &conf, err, errlen);
    if (!ks) return NULL;
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    rd_kafka_conf_set_rebalance_cb(conf, kafka_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, kafka_commit_cb);
    rd_kafka_conf_set_consume_cb(conf, kafka_drop_while_closing);
    char why[512];
    ks->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    if (!ks->rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "Kafka consumer for %s: %s", ks->describe, why);
        kafka_destroy(ks);
        return NULL;
    }
    ks->starting = 1;
    if (wait_for_cluster(ks, err, errlen)) {
        kafka_destroy(ks);
        return NULL;
    }
    /* The cluster's id names the log with the topic, whatever the bootstrap
     * list says (brokers added, renamed or listed in another order). A
     * cluster too old to have one (Kafka < 0.10.1) binds the checkpoint to
     * the bootstrap list, as the URI did. */
    char *cluster = rd_kafka_clusterid(ks->rk, 2000);
    size_t in = strlen(ks->topic) + strlen(cluster ? cluster : ks->brokers) + 32;
    ks->identity = xmalloc(in);
    snprintf(ks->identity, in, cluster ? "kafka:cluster=%s/topic=%s" : "kafka:bootstrap=%s/topic=%s",
             cluster ? cluster : ks->brokers, ks->topic);
    if (cluster) rd_kafka_mem_free(ks->rk, cluster);
    /* Where each partition starts without a checkpoint, and where it ends for
     * --until-end: both need the watermarks now, bounded by the same
     * start-up deadline. */
    int64_t deadline = mono_ms() + ks->startup_ms;
    for (int32_t p = 0; p < ks->n_parts; p++) {
        int64_t lo = 0, hi = 0, left = deadline - mono_ms();
        if (job_stopping(ks->ctx)) {
            snprintf(err, errlen, "stopped while reading the offsets of %s; nothing was read",
                     ks->describe);
            kafka_destroy(ks);
            return NULL;
        }
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
            ks->rk, ks->topic, p, &lo, &hi, (int)(left > 1000 ? left : 1000));
        if (e) {
            snprintf(err, errlen, "cannot read the offsets of %s partition %d: %s", ks->topic,
                     (int)p, rd_kafka_err2str(e));
            kafka_destroy(ks);
            return NULL;
        }
        kpart *kp = &ks->parts[p];
        kp->low = lo;
        kp->high = hi;
        kp->end = hi;
        kp->pos = opts->start_latest ? hi : lo;
        kp->eof_at = -1;
    }
    if (ks->until_end) {
        ks->done = 0;
        for (int32_t p = 0; p < ks->n_parts; p++) ks->done += ks->parts[p].pos >= ks->parts[p].end;
    }
    refresh_marks(ks, mono_ms()); /* the first poll marks every partition */
    ks->starting = 0;
    ks->q = rd_kafka_queue_get_consumer(ks->rk);
    rd_kafka_poll_set_consumer(ks->rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, ks->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(ks->rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        snprintf(err, errlen, "cannot subscribe to %s: %s", ks->topic, rd_kafka_err2str(e));
        kafka_destroy(ks);
        return NULL;
    }
    ks->base.ops = &kafka_source_ops;
    ks->opened_ms = mono_ms();
    /* `--dlq kafka:TOPIC` writes to this cluster with these settings: the
     * context keeps its own copy, which outlives this source. */
    job_context_lend_kafka(ks->ctx, ks->brokers, ks->props);
    return &ks->base;
}

/* ---- reading ------------------------------------------------------------ */

static void log_ts_type(kafka_source *ks, rd_kafka_timestamp_type_t t)
{
    if ((int)t == ks->ts_type) return;
    ks->ts_type = (int)t;
    const char *name = t == RD_KAFKA_TIMESTAMP_CREATE_TIME       ? "CreateTime"
                       : t == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? "LogAppendTime"
                                                                 : "no";
    log_info("kafka", "topic %s records carry %s timestamps; session ids use (timestamp, "
             "partition, offset) of a session's earliest record%s",
            ks->topic, name,
            t == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? " (timestamp taken as 0)" : "");
}

static void advance(kafka_source *ks, kpart *kp, int64_t next)
{
    if (ks->until_end && kp->pos < kp->end && next >= kp->end) {
        ks->done++;
        /* caught up right after the record that reached the end */
        kp->want = 1;
        ks->marks_due = 1;
        ks->mark_scan = 0;
    }
    kp->pos = next;
}

void kafka_partition_eof(kafka_source *ks, kpart *kp, int64_t offset)
{
    /* Everything below the end offset was delivered (or never will be:
     * transaction markers, compacted records): move past it, but never past
     * --until-end's end, whose records beyond were dropped. */
    int64_t to = ks->until_end && offset > kp->end ? kp->end : offset;
    if (kp->assigned && to > kp->pos) advance(ks, kp, to);
    if (offset > kp->high) kp->high = offset;
    if (kp->assigned) kp->eof_at = offset;
}

/* Takes one message from librdkafka. Returns 1 when it is a record to
 * deliver (then it joins ks->recent), 0 when it was consumed otherwise. */
static int take(kafka_source *ks, rd_kafka_message_t *m, raw_record *out)
{
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->rkt &&
            m->partition >= 0 && m->partition < ks->n_parts) {
            kafka_partition_eof(ks, &ks->parts[m->partition], m->offset);
            if (ks->outage_since_ms) {
                io_status_up(ks->io);
                log_info("kafka", "cluster reachable again after %.1f s",
                         (double)(mono_ms() - ks->outage_since_ms) / 1000.0);
                ks->outage_since_ms = 0;
            }
        } else {
            kafka_on_error(ks, m->err, rd_kafka_message_errstr(m));
        }
        kafka_retire(ks, m);
        return 0;
    }
    int32_t p = m->partition;
    if (p < 0 || p >= ks->n_parts || !ks->parts[p].assigned) {
        kafka_retire(ks, m); /* from an assignment we no longer hold */
        return 0;
    }
    kpart *kp = &ks->parts[p];
    if ((kp->pos >= 0 && m->offset < kp->pos) || (ks->until_end && m->offset >= kp->end)) {
        kafka_retire(ks, m); /* already applied, or beyond --until-end */
        return 0;
    }
    if (ks->outage_since_ms) {
        io_status_up(ks->io);
        log_info("kafka", "cluster reachable again after %.1f s",
                 (double)(mono_ms() - ks->outage_since_ms) / 1000.0);
        ks->outage_since_ms = 0;
    }
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    if ((int)tt != ks->ts_type) log_ts_type(ks, tt);
    out->has_ts = !(tt == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || ts < 0);
    out->pos.append_ts_ms = out->has_ts ? ts : 0;
    out->pos.partition = p;
    out->pos.offset = m->offset;
    out->line = 0;
    out->data = m->payload ? m->payload : "";
    out->len = m->len;
    out->oversized = m->len > ks->max_record;
    out->full_len = m->len;
    if (out->oversized) out->len = ks->max_record;
    out->key = m->key;
    out->key_len = m->key ? m->key_len : 0;
    out->origin = m;
    advance(ks, kp, m->offset + 1);
    kp->last_ms = ks->batch_ms;
    ks->quiet = 0;
    rd_kafka_message_t **slot = &ks->recent[ks->recent_i++ % RECENT];
    if (*slot) kafka_retire(ks, *slot);
    *slot = m;
    return 1;
}

/* ---- caught-up marks (source.h) ------------------------------------------ */

/* Whether a partition counts as caught up now. With --until-end: its
 * position reached the end offset it had at start. Live: the fetcher
 * reported the end of the partition, no record was delivered since, and
 * none for sessionizer.idle.ms (Flink's "idleness"). The high watermark
 * alone would do for the lag but not for this: after a pause or a restart it
 * can be stale. And a partition taken for caught up stops holding back the
 * closing watermark, so a backlog, or a burst that arrives right after the
 * end was seen, would turn late if it lagged the other partitions by more
 * than the lateness. */
static int caught_up_now(const kafka_source *ks, const kpart *kp, int64_t now)
{
    if (ks->until_end) return kp->pos >= kp->end;
    return kp->assigned && kp->eof_at >= 0 && kp->pos == kp->eof_at &&
           (kp->last_ms == 0 || now - kp->last_ms >= ks->idle_ms) &&
           now - ks->burst_ms >= ks->idle_ms;
}

/* Works out every partition's flag at one instant; poll() then marks those
 * that changed (all of them the first time: marked starts at -1). */
static void refresh_marks(kafka_source *ks, int64_t now)
{
    ks->refreshed_ms = now;
    for (int32_t p = 0; p < ks->n_parts; p++) {
        kpart *kp = &ks->parts[p];
        kp->want = caught_up_now(ks, kp, now);
        if (kp->want != kp->marked) ks->marks_due = 1;
    }
    ks->mark_scan = 0;
}

/* The next due mark, lowest partition first; 0 when none is left. */
static int next_mark(kafka_source *ks, source_mark *mark)
{
    for (; ks->mark_scan < ks->n_parts; ks->mark_scan++) {
        kpart *kp = &ks->parts[ks->mark_scan];
        if (kp->want == kp->marked) continue;
        kp->marked = kp->want;
        *mark = (source_mark){.partition = ks->mark_scan, .caught_up = kp->want,
                              .position = kp->pos};
        ks->mark_scan++;
        return 1;
    }
    ks->marks_due = 0;
    ks->mark_scan = 0;
    return 0;
}

static int kafka_poll(source *s, raw_record *out, source_mark *mark, int timeout_ms, char *err,
                      size_t errlen)
{
    kafka_source *ks = (kafka_source *)s;
    int waited = 0;
    for (;;) {
        if (ks->fatal) {
            snprintf(err, errlen, "%s", ks->fatal_msg);
            return SOURCE_ERROR;
        }
        /* Marks first: they speak of every record delivered so far, and
         * --until-end's last one comes before the end. */
        if (ks->marks_due && next_mark(ks, mark)) return SOURCE_MARK;
        if (ks->until_end && ks->done >= ks->n_parts) return SOURCE_END;
        const kentry *e = kafka_ring_peek(ks);
        if (e) {
            kentry c = *e;
            ks->idle_owed = 0; /* not idle after all */
            if (!c.m) {
                kafka_ring_pop(ks, &c);
                int was_rebalance = c.ev->kind == EV_REBALANCE; /* kafka_handle_event frees it */
                kafka_handle_event(ks, c.ev);
                /* an assignment's change changes flags: mark it here */
                if (was_rebalance) refresh_marks(ks, mono_ms());
                continue;
            }
            /* The first record after the input went quiet: partitions that
             * count as caught up (empty ones, idle ones) would let it advance
             * the closing watermark to its own partition's, while a record
             * produced at the same moment to another partition may be a
             * fetch behind (the reference walkthrough produces B and C
             * together, to different partitions). So every flag goes down
             * for sessionizer.idle.ms from here (refresh_marks), marked
             * before this record. A steady stream has no quiet moment and
             * is not affected; a trickle closes sessions in steps of
             * sessionizer.idle.ms. */
            if (!ks->until_end && !c.m->err && ks->quiet &&
                ks->batch_ms - ks->burst_ms >= ks->idle_ms) {
                ks->burst_ms = ks->batch_ms;
                ks->quiet = 0;
                refresh_marks(ks, mono_ms());
                continue;
            }
            /* While records stream, the flags are worked out at least once a
             * second (an idle partition must not hold back closing while the
             * others stream), marked before the next record. */
            if (!ks->until_end && ks->batch_ms - ks->refreshed_ms >= 1000) {
                refresh_marks(ks, mono_ms());
                continue;
            }
            kafka_ring_pop(ks, &c);
            if (take(ks, c.m, out)) return SOURCE_RECORD;
            continue; /* the loop's top reports a failure or the end first */
        }
        group_timing timing = kafka_group_timing(ks);
        if (ks->task->held_since_ms &&
            task_hold_expired(ks->task, &timing, mono_ms(), ks->group, ks->topic, err, errlen))
            return SOURCE_ERROR;
        if (!ks->task->ever_read && !ks->task->held_since_ms && !ks->wait_logged &&
            mono_ms() - ks->opened_ms > 10000) {
            ks->wait_logged = 1;
            log_warn("kafka", "still waiting for group %s to assign the partitions of %s (a "
                     "member that crashed stays in the group until its session times out)",
                     ks->group, ks->topic);
        }
        if (ks->idle_owed) {
            ks->idle_owed = 0;
            return SOURCE_IDLE;
        }
        if (waited) {
            ks->quiet = 1;
            /* a quiet moment: the flags now, marked before the IDLE */
            refresh_marks(ks, mono_ms());
            if (ks->marks_due) {
                ks->idle_owed = 1;
                continue;
            }
            return SOURCE_IDLE;
        }
        /* The thread starts at the first poll, after seek(). */
        if (!ks->thread_started && kafka_start_thread(ks, err, errlen)) return SOURCE_ERROR;
        waited = 1;
        /* In steps shorter than JOB_STALL_MS: a job that waits is alive. */
        kafka_ring_wait_data(ks, timeout_ms < JOB_STALL_MS / 2 ? timeout_ms : JOB_STALL_MS / 2);
    }
}

/* ---- positions ---------------------------------------------------------- */

/* Position: le32 version, le32 count, then per partition le32 id, le64 next
 * offset (negative: from the log start). */
static void kafka_position(source *s, buf *out)
{
    kafka_source *ks = (kafka_source *)s;
    buf_put_u32le(out, POSITION_VERSION);
    buf_put_u32le(out, (uint32_t)ks->n_parts);
    for (int32_t p = 0; p < ks->n_parts; p++) {
        buf_put_u32le(out, (uint32_t)p);
        buf_put_i64le(out, ks->parts[p].pos);
    }
}

static int kafka_seek(source *s, const void *pos, size_t len, char *err, size_t errlen)
{
    kafka_source *ks = (kafka_source *)s;
    reader r;
    reader_init(&r, pos, len);
    uint32_t version = 0, n = 0;
    reader_u32le(&r, &version);
    reader_u32le(&r, &n);
    if (r.bad || version != POSITION_VERSION || n > 1000000 || reader_left(&r) != (size_t)n * 12) {
        snprintf(err, errlen, "the checkpoint's position for %s is not a Kafka position "
                 "(was it written for another source?)", ks->describe);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = 0;
        int64_t off = 0;
        reader_u32le(&r, &id);
        reader_i64le(&r, &off);
        if (id >= (uint32_t)ks->n_parts) {
            snprintf(err, errlen, "the checkpoint has a position for partition %u of topic %s, "
                     "which has only %d partitions now: was the topic deleted and recreated? "
                     "Use a new --checkpoint directory to reprocess it", id, ks->topic,
                     (int)ks->n_parts);
            return -1;
        }
        kpart *kp = &ks->parts[id];
        if (off >= 0 && off > kp->high) {
            snprintf(err, errlen, "the checkpoint resumes %s partition %u at offset %" PRId64
                     " but the partition ends at %" PRId64 ": the topic was recreated, or this "
                     "is another cluster. Use a new --checkpoint directory to reprocess it",
                     ks->topic, id, off, kp->high);
            return -1;
        }
        if (off >= 0 && off < kp->low) {
            if (ks->reset_is_error) {
                snprintf(err, errlen, "the checkpoint resumes %s partition %u at offset %" PRId64
                         " but the log now starts at %" PRId64 ": %" PRId64 " records were "
                         "deleted (retention) before they were read. To go on without them, "
                         "rerun with -X auto.offset.reset=earliest; to reprocess what is left, "
                         "use a new --checkpoint directory", ks->topic, id, off, kp->low,
                         kp->low - off);
                return -1;
            }
            log_warn("kafka", "%s partition %u: offsets %" PRId64 " to %" PRId64 " were deleted "
                     "before they were read; going on without them (auto.offset.reset)",
                     ks->topic, id, off, kp->low - 1);
            off = kp->low;
        }
        kp->pos = off >= 0 ? off : OFFSET_UNKNOWN;
    }
    if (ks->until_end) {
        ks->done = 0;
        for (int32_t p = 0; p < ks->n_parts; p++)
            ks->done += ks->parts[p].pos >= ks->parts[p].end;
    }
    /* where a restart resumes (the consumer group's offsets may be behind:
     * they follow durable commits, kafka_committed) */
    buf b;
    buf_init(&b);
    for (int32_t p = 0; p < ks->n_parts && p < 64; p++)
        buf_printf(&b, " p%d:%" PRId64, (int)p, ks->parts[p].pos);
    log_info("kafka", "resuming topic %s from the checkpoint at offsets%.*s%s", ks->topic,
             (int)b.len, b.data ? (const char *)b.data : "", ks->n_parts > 64 ? " ..." : "");
    buf_free(&b);
    refresh_marks(ks, mono_ms()); /* positions moved */
    return 0;
}

static size_t kafka_partitions(source *s, partition_info *out, size_t max)
{
    kafka_source *ks = (kafka_source *)s;
    int64_t now = mono_ms();
    /* A quiet stream gives no sign that an outage is over (no record, no
     * new end-of-partition event): ask, briefly, every few seconds. */
    if (ks->outage_since_ms && now - ks->outage_probe_ms >= 5000) {
        const struct rd_kafka_metadata *md;
        ks->outage_probe_ms = now;
        if (topic_metadata(ks, &md, STOP_POLL_MS) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_metadata_destroy(md);
            io_status_up(ks->io);
            log_info("kafka", "cluster reachable again after %.1f s",
                     (double)(mono_ms() - ks->outage_since_ms) / 1000.0);
            ks->outage_since_ms = 0;
        }
    }
    for (int32_t p = 0; p < ks->n_parts && (size_t)p < max; p++) {
        kpart *kp = &ks->parts[p];
        int64_t end = kp->end;
        if (!ks->until_end) { /* the end moves: librdkafka's last view of it */
            int64_t lo = -1, hi = -1;
            if (rd_kafka_get_watermark_offsets(ks->rk, ks->topic, p, &lo, &hi) == 0 &&
                hi > kp->high)
                kp->high = hi;
            end = kp->high;
        }
        int64_t lag = kp->pos < 0 || end < 0 ? -1 : end > kp->pos ? end - kp->pos : 0;
        if (ks->until_end && kp->pos >= end) lag = 0; /* done (one added since: -1, -1) */
        out[p] = (partition_info){.partition = p, .lag = lag};
    }
    return (size_t)ks->n_parts;
}

static const char *kafka_describe(source *s) { return ((kafka_source *)s)->describe; }

static void kafka_identity(source *s, buf *out) { buf_append_str(out, ((kafka_source *)s)->identity); }

static void kafka_close(source *s)
{
    kafka_source *ks = (kafka_source *)s;
    if (!ks) return;
    for (size_t i = 0; i < RECENT; i++)
        if (ks->recent[i]) rd_kafka_message_destroy(ks->recent[i]);
    /* Leave the group now rather than when its session times out, so that
     * another instance can take over at once. */
    ks->closing = 1;
    /* From here on librdkafka serves its callbacks on this thread (in
     * leave_group). */
    kafka_stop_thread(ks);
    /* No reference of ours into the consumer may outlive the close. */
    rd_kafka_queue_destroy(ks->q);
    ks->q = NULL;
    /* Leaving needs the coordinator: during an outage it would wait for it
     * in vain, so do not even try. */
    if (ks->outage_since_ms || !kafka_leave_group(ks)) {
        /* The group evicts us when our session expires, as it would a
         * crashed member; positions are ours, so nothing is lost. */
        rd_kafka_destroy_flags(ks->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        ks->rk = NULL;
    }
    kafka_destroy(ks);
}

const source_ops kafka_source_ops = {
    .scheme = "kafka",
    .usage = "kafka://HOST:PORT[,HOST:PORT...]/TOPIC  a Kafka topic, every partition "
             "(-X, --group, --start)",
    .open = kafka_open,
    .poll = kafka_poll,
    .position = kafka_position,
    .seek = kafka_seek,
    .committed = kafka_committed,
    .partitions = kafka_partitions,
    .describe = kafka_describe,
    .identity = kafka_identity,
    .close = kafka_close,
};
