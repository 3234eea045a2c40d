/*
 * scaleout_setup.c - the --scale-out runtime's librdkafka clients (two
 * consumers and a producer, or one consumer with --keyed-input) and the
 * start-up checks of the topics: the settings the design depends on are
 * ours and refused from -X, and the repartition topic must have exactly
 * --repartition-partitions partitions (a user's task is hash mod R).
 */
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

/* ---- librdkafka set-up --------------------------------------------------- */

/* Ours first, then the user's -X (which win), except those the design
 * depends on. */
static rd_kafka_conf_t *base_conf(so *s, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (rdkafka_conf_set(c, "bootstrap.servers", s->brokers, err, errlen) ||
        rdkafka_conf_set(c, "client.id", "sessionizer", err, errlen) ||
        rdkafka_conf_set(c, "log_level", "4", err, errlen))
        goto bad;
    for (const char *const *p = s->jc->source.props; p && *p; p++) {
        char key[RDKAFKA_KEY_MAX];
        const char *v = rdkafka_prop_split(*p, key);
        if (!v) continue; /* the CLI refused it */
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
        if (rdkafka_conf_set(c, key, v, err, errlen)) goto bad;
    }
    return c;
bad:
    rd_kafka_conf_destroy(c);
    return NULL;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    if (m->err)
        so_fail(opaque, "producing to the repartition topic: %s (no stage 1 commit happened after "
             "it; a restart redoes the work)", rd_kafka_err2str(m->err));
}

void so_on_error(rd_kafka_t *rk, int e, const char *reason, void *opaque)
{
    so *s = opaque;
    if (rd_kafka_fatal_error(rk, NULL, 0)) {
        char fe[512];
        rd_kafka_fatal_error(rk, fe, sizeof fe);
        so_fail(s, "kafka: fatal error: %s", fe);
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
    int64_t t = mono_ms();
    if (t - last > 5000) {
        log_warn("scaleout", "kafka: %s: %s (retrying)",
                rd_kafka_err2name((rd_kafka_resp_err_t)e), reason);
        last = t;
    }
}

rd_kafka_t *so_new_consumer(so *s, const char *group, int stage, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = base_conf(s, err, errlen);
    if (!c) return NULL;
    if (rdkafka_conf_set(c, "group.id", group, err, errlen) ||
        rdkafka_conf_set(c, "enable.auto.commit", "false", err, errlen) ||
        rdkafka_conf_set(c, "enable.auto.offset.store", "false", err, errlen) ||
        rdkafka_conf_set(c, "enable.partition.eof", "true", err, errlen) ||
        rdkafka_conf_set(c, "partition.assignment.strategy", "range", err, errlen) ||
        /* stage 2 must not skip what was produced: lost data is an error */
        rdkafka_conf_set(c, "auto.offset.reset", stage == 1 ? "earliest" : "error", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    char e[512];
    if (rd_kafka_conf_get(c, "session.timeout.ms", e, &(size_t){sizeof e}) == RD_KAFKA_CONF_OK &&
        strcmp(e, "45000") == 0)
        rdkafka_conf_set(c, "session.timeout.ms", "10000", err, errlen);
    rd_kafka_conf_set_opaque(c, s);
    rd_kafka_conf_set_error_cb(c, so_on_error);
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

rd_kafka_t *so_new_producer(so *s, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = base_conf(s, err, errlen);
    if (!c) return NULL;
    /* Idempotent and gapless: a source partition's records reach a
     * repartition partition in order and without holes, which stage 2's
     * de-duplication relies on; a hole is a fatal error, not a skip. */
    if (rdkafka_conf_set(c, "enable.idempotence", "true", err, errlen) ||
        rdkafka_conf_set(c, "enable.gapless.guarantee", "true", err, errlen) ||
        rdkafka_conf_set(c, "message.timeout.ms", "0", err, errlen) ||
        rdkafka_conf_set(c, "linger.ms", "5", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    rd_kafka_conf_set_opaque(c, s);
    rd_kafka_conf_set_error_cb(c, so_on_error);
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    char e[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e);
    if (!rk) snprintf(err, errlen, "kafka producer: %s", e);
    return rk;
}

/* ---- start-up checks ----------------------------------------------------- */

int so_topic_partitions(rd_kafka_t *rk, const char *topic, int32_t *n, char *err, size_t errlen)
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
int so_check_internal_topic(so *s, char *err, size_t errlen)
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
    if (so_topic_partitions(s->prod, s->rtopic, &n, err, errlen)) return -1;
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
