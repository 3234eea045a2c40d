/*
 * kafka.c - dead letters to a Kafka topic: `--dlq kafka:TOPIC`, or
 * `--dlq kafka://HOST:PORT[,HOST:PORT...]/TOPIC` for another cluster.
 *
 * Each dead letter is one message: the value is the original record's bytes
 * (unchanged, so that it can be fixed and produced again), the key and the
 * first headers are the original record's when it came from the Kafka source
 * (as Kafka Connect's dead-letter queue keeps them), and the headers after
 * those say why and where from (a reader taking the last value of a name
 * gets these even when the original record had a header of that name):
 *   reason               machine code: invalid_json, late, session_cap, ...
 *   detail               one human line
 *   source               the input's description ("kafka topic visits at ...")
 *   source_partition     decimal
 *   source_offset        decimal (byte offset for a file)
 *   source_timestamp_ms  decimal, when the input record had a timestamp
 *   line                 decimal, for a file input
 *   reconstructed        "true" when the original bytes were gone (a visit
 *                        evicted by the session cap) and the value is the
 *                        visit re-encoded as JSON
 *   truncated            "true" when the record was cut at --max-record-bytes:
 *                        the value holds its first --max-record-bytes bytes
 *   original_bytes       decimal, with truncated: its length before the cut
 *
 * Brokers and connection settings: `kafka:TOPIC` uses the input's cluster,
 * which the job's context owns once the Kafka source (or the scale-out) lent
 * it (context.h), and its -X properties that concern the connection
 * (security, SASL, TLS, client id, sockets, debug); `-X dlq.KEY=VALUE` sets
 * KEY on the dead-letter producer only. The `kafka://` form needs no Kafka
 * source.
 *
 * Delivery: the producer is idempotent (no duplicates from its own retries);
 * flush(), which the job calls before every checkpoint commit, waits until
 * every dead letter is acknowledged by the cluster or has failed, and a
 * failure fails the commit. A broker outage is thus waited out up to
 * message.timeout.ms (librdkafka's default 300 s, settable with -X
 * dlq.message.timeout.ms), or until the job is asked to stop: then the
 * letters in flight get RETRY_STOP_GRACE_MS (common/retry.h) to be
 * acknowledged, after which the flush fails, the checkpoint is not
 * committed, and what was not delivered is dropped from the producer's
 * queue (a restart writes it again). Writing waits the same way when the
 * producer's queue is full. A topic cannot be rewound, so dead letters
 * produced after the last commit are produced again when a crashed job
 * replays them: the topic is at-least-once; (source_partition,
 * source_offset) identifies duplicates.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/rdkafka_conf.h"
#include "common/retry.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "record/timestamp.h"

#define STARTUP_MS 15000

typedef struct kafka_deadletter {
    deadletter base;
    rd_kafka_t *rk;
    job_context *ctx;  /* the job's: the stop flag, the input's Kafka cluster */
    char *topic, *brokers;
    char *identity; /* "kafka:cluster=ID/topic=T", as the Kafka source's */
    uint64_t failed;       /* delivery failures since open */
    char first_error[256];
    buf value; /* a reconstructed record */
} kafka_deadletter;

extern const deadletter_ops kafka_deadletter_ops;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    kafka_deadletter *d = opaque;
    if (!m->err) return;
    if (d->failed++ == 0)
        snprintf(d->first_error, sizeof d->first_error, "%s", rd_kafka_err2str(m->err));
}

/* Source properties that describe the connection rather than the consumer,
 * and so apply to the dead-letter producer as well. */
static int connection_prop(const char *key)
{
    static const char *const prefixes[] = {"security.", "sasl.", "ssl.", "ssl_", "socket.",
                                           "broker.", "client.", "enable.ssl", "debug",
                                           "api.version", "reconnect.", "connections."};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (strncmp(key, prefixes[i], strlen(prefixes[i])) == 0) return 1;
    return 0;
}

static int apply(rd_kafka_conf_t *conf, const char *const *props, char *err, size_t errlen)
{
    for (const char *const *pp = props; pp && *pp; pp++) {
        char key[RDKAFKA_KEY_MAX];
        const char *v = rdkafka_prop_split(*pp, key);
        if (!v) continue;
        const char *k = key;
        if (strncmp(key, "dlq.", 4) == 0) k = key + 4;
        else if (!connection_prop(key)) continue;
        char e[1024];
        if (rdkafka_conf_set(conf, k, v, e, sizeof e)) {
            snprintf(err, errlen, "dead-letter producer (-X %s): %s", key, e);
            return -1;
        }
    }
    return 0;
}

static void destroy(kafka_deadletter *d)
{
    if (d->rk) rd_kafka_destroy(d->rk);
    free(d->topic);
    free(d->brokers);
    free(d->identity);
    buf_free(&d->value);
    free(d);
}

static deadletter *kdl_open(const char *target, const char *const *props, job_context *ctx,
                            char *err, size_t errlen)
{
    const char *topic = target;
    const char *brokers = NULL;
    size_t brokers_len = 0;
    if (strncmp(target, "//", 2) == 0) {
        const char *slash = strchr(target + 2, '/');
        if (!slash || slash == target + 2) {
            snprintf(err, errlen, "dead-letter output 'kafka:%s': expected kafka:TOPIC or "
                     "kafka://HOST:PORT[,HOST:PORT...]/TOPIC", target);
            return NULL;
        }
        brokers = target + 2;
        brokers_len = (size_t)(slash - brokers);
        topic = slash + 1;
    } else {
        const kafka_cluster *input = job_context_kafka(ctx);
        if (!input) {
            snprintf(err, errlen, "dead-letter output 'kafka:%s' takes the brokers of a "
                     "kafka:// source; with another source write "
                     "--dlq kafka://HOST:PORT/%s", target, target);
            return NULL;
        }
        brokers = input->bootstrap;
        brokers_len = strlen(brokers);
        if (!props) props = (const char *const *)input->props;
    }
    if (!*topic || strchr(topic, '/')) {
        snprintf(err, errlen, "dead-letter output 'kafka:%s': no topic name", target);
        return NULL;
    }
    kafka_deadletter *d = xcalloc(1, sizeof *d);
    d->ctx = ctx;
    d->topic = xstrdup(topic);
    d->brokers = xstrndup(brokers, brokers_len);
    buf_init(&d->value);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char why[1024];
    if (rdkafka_conf_set(conf, "bootstrap.servers", d->brokers, why, sizeof why) ||
        rdkafka_conf_set(conf, "client.id", "sessionizer-dlq", why, sizeof why) ||
        rdkafka_conf_set(conf, "enable.idempotence", "true", why, sizeof why) ||
        /* a typo in --dlq must not create a topic that nobody reads */
        rdkafka_conf_set(conf, "allow.auto.create.topics", "false", why, sizeof why)) {
        snprintf(err, errlen, "dead-letter producer: %s", why);
        rd_kafka_conf_destroy(conf);
        destroy(d);
        return NULL;
    }
    if (apply(conf, props, err, errlen)) {
        rd_kafka_conf_destroy(conf);
        destroy(d);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, d);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    d->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    if (!d->rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "dead-letter producer: %s", why);
        destroy(d);
        return NULL;
    }
    /* Refuse a missing topic now rather than after message.timeout.ms of
     * retries at the first dead letter (on clusters that do not create
     * topics on demand; the mock cluster always does). In short requests,
     * so that a stop request is seen. */
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(d->rk, d->topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
    int64_t deadline = mono_ms() + STARTUP_MS;
    while (!job_stopping(ctx) && mono_ms() < deadline) {
        e = rd_kafka_metadata(d->rk, 0, rkt, &md, 200);
        if (!e) break;
        md = NULL;
    }
    rd_kafka_topic_destroy(rkt);
    int rc = 0;
    if (job_stopping(ctx) && !md) {
        snprintf(err, errlen, "dead-letter output: stopped while waiting for the Kafka cluster "
                 "at %s (%s)", d->brokers, rd_kafka_err2str(e));
        rc = -1;
    } else if (e) {
        snprintf(err, errlen, "dead-letter output: cannot reach the Kafka cluster at %s within "
                 "%d s (%s)", d->brokers, STARTUP_MS / 1000, rd_kafka_err2str(e));
        rc = -1;
    } else if (md->topic_cnt != 1 || md->topics[0].err) {
        snprintf(err, errlen, "dead-letter topic '%s' is not available on %s (%s): create it "
                 "first", d->topic, d->brokers,
                 rd_kafka_err2str(md->topic_cnt == 1 ? md->topics[0].err
                                                     : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART));
        rc = -1;
    }
    if (md) rd_kafka_metadata_destroy(md);
    if (rc) {
        destroy(d);
        return NULL;
    }
    /* known once the metadata came back; the bootstrap list without it */
    char *cluster = rd_kafka_clusterid(d->rk, 2000);
    buf id;
    buf_init(&id);
    buf_printf(&id, cluster ? "kafka:cluster=%s/topic=%s" : "kafka:bootstrap=%s/topic=%s",
               cluster ? cluster : d->brokers, d->topic);
    if (cluster) rd_kafka_mem_free(d->rk, cluster);
    buf_append_byte(&id, 0);
    d->identity = (char *)id.data;
    d->base.ops = &kafka_deadletter_ops;
    return &d->base;
}

static void kdl_identity(deadletter *base, buf *out)
{
    buf_append_str(out, ((kafka_deadletter *)base)->identity);
}

/* Numeric headers, as decimal text like every Kafka tool shows them. */
static void add_number(rd_kafka_headers_t *h, const char *name, int64_t v)
{
    char text[24];
    int n = snprintf(text, sizeof text, "%" PRId64, v);
    rd_kafka_header_add(h, name, -1, text, n);
}

static int kdl_write(deadletter *base, const dead_letter *dl, char *err, size_t errlen)
{
    kafka_deadletter *d = (kafka_deadletter *)base;
    const log_position *pos = dl->raw ? &dl->raw->pos : &dl->v->pos;
    rd_kafka_headers_t *h = NULL, *orig = NULL;
    if (dl->raw && dl->raw->origin &&
        rd_kafka_message_headers(dl->raw->origin, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
        h = rd_kafka_headers_copy(orig);
    if (!h) h = rd_kafka_headers_new(10);
    rd_kafka_header_add(h, "reason", -1, dl->reason, -1);
    rd_kafka_header_add(h, "detail", -1, dl->detail, -1);
    rd_kafka_header_add(h, "source", -1, dl->source, -1);
    add_number(h, "source_partition", pos->partition);
    add_number(h, "source_offset", pos->offset);
    if (pos->append_ts_ms)
        add_number(h, "source_timestamp_ms", pos->append_ts_ms);
    if (dl->raw && dl->raw->line) add_number(h, "line", dl->raw->line);
    if (dl->raw && dl->raw->oversized) {
        rd_kafka_header_add(h, "truncated", -1, "true", 4);
        add_number(h, "original_bytes", (int64_t)dl->raw->full_len);
    }

    const void *value, *key = NULL;
    size_t value_len, key_len = 0;
    if (dl->raw) {
        value = dl->raw->data;
        value_len = dl->raw->len;
        key = dl->raw->key;
        key_len = dl->raw->key_len;
    } else {
        buf_reset(&d->value);
        deadletter_reconstruct(&d->value, dl->v);
        value = d->value.data;
        value_len = d->value.len;
        rd_kafka_header_add(h, "reconstructed", -1, "true", 4);
    }
    retry stop; /* only its stop grace: librdkafka does the retrying */
    retry_init(&stop, &(retry_policy){.first_ms = 1, .max_ms = 1}, d->ctx ? d->ctx->stop : NULL);
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            d->rk, RD_KAFKA_V_TOPIC(d->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_KEY(key, key_len),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (!e) break;
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && !retry_stop_grace_over(&stop)) {
            rd_kafka_poll(d->rk, 100); /* back-pressure: let deliveries drain */
            continue;
        }
        rd_kafka_headers_destroy(h);
        snprintf(err, errlen, "dead-letter topic %s: %s", d->topic, rd_kafka_err2str(e));
        return -1;
    }
    rd_kafka_poll(d->rk, 0);
    return 0;
}

static int kdl_flush(deadletter *base, char *err, size_t errlen)
{
    kafka_deadletter *d = (kafka_deadletter *)base;
    retry stop; /* only its stop grace: librdkafka does the retrying */
    retry_init(&stop, &(retry_policy){.first_ms = 1, .max_ms = 1}, d->ctx ? d->ctx->stop : NULL);
    /* Every message ends delivered or failed within message.timeout.ms. */
    while (rd_kafka_outq_len(d->rk) > 0) {
        if (retry_stop_grace_over(&stop)) {
            int left = rd_kafka_outq_len(d->rk);
            rd_kafka_purge(d->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            snprintf(err, errlen, "interrupted with %d dead letters not acknowledged by topic %s "
                     "at %s %.0f s after the job was asked to stop; the checkpoint was not "
                     "committed, a restart writes them again", left, d->topic, d->brokers,
                     RETRY_STOP_GRACE_MS / 1000.0);
            return -1;
        }
        rd_kafka_flush(d->rk, RETRY_SLICE_MS);
    }
    if (d->failed) {
        snprintf(err, errlen, "%" PRIu64 " dead letters could not be written to topic %s at %s "
                 "(%s); the checkpoint was not committed, a restart writes them again",
                 d->failed, d->topic, d->brokers, d->first_error);
        return -1;
    }
    return 0;
}

static void kdl_close(deadletter *base)
{
    kafka_deadletter *d = (kafka_deadletter *)base;
    if (!d) return;
    /* What is still queued belongs to a failed or interrupted commit (a
     * successful one flushed everything): a restart writes it again, and
     * waiting for it would hold up a stop. */
    rd_kafka_purge(d->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(d->rk, 0);
    destroy(d);
}

const deadletter_ops kafka_deadletter_ops = {
    .scheme = "kafka",
    .usage = "kafka:TOPIC   a Kafka topic on the source's cluster, or kafka://HOST:PORT/TOPIC",
    .open = kdl_open,
    .write = kdl_write,
    .flush = kdl_flush,
    .save = NULL,
    .restore = NULL,
    .identity = kdl_identity,
    .close = kdl_close,
};
