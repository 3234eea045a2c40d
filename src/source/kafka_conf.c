/*
 * kafka_conf.c - the Kafka source's configuration: the URI
 * (kafka://HOST:PORT[,HOST:PORT...]/TOPIC), the -X properties (librdkafka's,
 * sessionizer.*, refused ones) and the defaults sessionizer sets.
 *
 * It exists apart because it is the part a user's input reaches before any
 * connection: what is accepted, what is refused and why (docs/kafka.md,
 * "The source"), checked without a cluster.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/rdkafka_conf.h"
#include "common/xalloc.h"
#include "source/kafka_internal.h"

#define DEFAULT_STARTUP_MS 15000
#define DEFAULT_SESSION_TIMEOUT_MS 10000
#define DEFAULT_IDLE_MS 2000
#define DEFAULT_SESSION_TIMEOUT "10000"

static int valid_topic(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Applies the -X properties: librdkafka's own, ours (sessionizer.*), and
 * skips the dead-letter producer's (dlq.*). */
static int apply_props(kafka_source *ks, rd_kafka_conf_t *conf, char *err, size_t errlen)
{
    for (const char *const *pp = ks->props; pp && *pp; pp++) {
        char key[RDKAFKA_KEY_MAX];
        const char *v = rdkafka_prop_split(*pp, key);
        if (!v) continue; /* the CLI already refused these */
        if (strncmp(key, "dlq.", 4) == 0) continue;
        if (strcmp(key, "sessionizer.startup.timeout.ms") == 0 ||
            strcmp(key, "sessionizer.rebalance.wait.ms") == 0 ||
            strcmp(key, "sessionizer.idle.ms") == 0) {
            int64_t *dst = key[12] == 's' ? &ks->startup_ms
                           : key[12] == 'r' ? &ks->rebalance_wait_ms : &ks->idle_ms;
            if (rdkafka_parse_ms(v, dst)) {
                snprintf(err, errlen, "-X %s=%s: expected milliseconds (0 to 86400000)", key, v);
                return -1;
            }
            continue;
        }
        if (strncmp(key, "sessionizer.", 12) == 0) {
            snprintf(err, errlen, "unknown property -X %s (the sessionizer ones are "
                     "sessionizer.startup.timeout.ms, sessionizer.rebalance.wait.ms and "
                     "sessionizer.idle.ms)", key);
            return -1;
        }
        if (strcmp(key, "bootstrap.servers") == 0 || strcmp(key, "metadata.broker.list") == 0 ||
            strcmp(key, "group.id") == 0) {
            snprintf(err, errlen, "-X %s: give the brokers in the URI (kafka://HOST:PORT/TOPIC) "
                     "and the group with --group", key);
            return -1;
        }
        if (strcmp(key, "enable.auto.commit") == 0 ||
            strcmp(key, "enable.auto.offset.store") == 0 ||
            strcmp(key, "enable.partition.eof") == 0 || strcmp(key, "group.protocol") == 0) {
            snprintf(err, errlen, "-X %s cannot be changed: sessionizer keeps its positions "
                     "in the checkpoint and commits them to the group itself", key);
            return -1;
        }
        if (strcmp(key, "partition.assignment.strategy") == 0 && strstr(v, "cooperative")) {
            snprintf(err, errlen, "-X %s=%s: cooperative assignors are not supported (one "
                     "instance reads every partition, see docs/kafka.md)", key, v);
            return -1;
        }
        if (strcmp(key, "auto.offset.reset") == 0) ks->reset_is_error = strcmp(v, "error") == 0;
        if (strcmp(key, "session.timeout.ms") == 0 &&
            rdkafka_parse_ms(v, &ks->session_timeout_ms)) {
            snprintf(err, errlen, "-X %s=%s: expected milliseconds", key, v);
            return -1;
        }
        if (strcmp(key, "debug") == 0) ks->debug = 1;
        if (rdkafka_conf_set(conf, key, v, err, errlen)) return -1;
    }
    return 0;
}

/* The source with its URI and options parsed, and the librdkafka configuration
 * they make (*confp; the callbacks are kafka_open's to set); NULL, err set,
 * when either is wrong. */
kafka_source *kafka_configure(const char *target, const source_options *opts,
                              rd_kafka_conf_t **confp, char *err, size_t errlen)
{
    if (strncmp(target, "//", 2) != 0) {
        snprintf(err, errlen, "Kafka source '%s': expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC",
                 target);
        return NULL;
    }
    const char *hosts = target + 2, *slash = strchr(hosts, '/');
    if (!slash || slash == hosts || !valid_topic(slash + 1)) {
        snprintf(err, errlen, "Kafka source 'kafka:%s': expected kafka://HOST:PORT[,HOST:PORT...]"
                 "/TOPIC with a topic of letters, digits, '.', '_' and '-'", target);
        return NULL;
    }
    kafka_source *ks = xcalloc(1, sizeof *ks);
    ks->brokers = xstrndup(hosts, (size_t)(slash - hosts));
    ks->topic = xstrdup(slash + 1);
    ks->group = xstrdup(opts->group && *opts->group ? opts->group : "sessionizer");
    ks->props = opts->props;
    ks->ctx = opts->ctx;
    /* an assignment's verdict is the task's, which lives in its context */
    ks->task = opts->ctx ? &opts->ctx->task : &ks->own_task;
    ks->until_end = opts->until_end;
    ks->max_record = opts->max_record_bytes ? opts->max_record_bytes : (1u << 20);
    ks->io = opts->ctx && opts->ctx->status ? &opts->ctx->status->source : NULL;
    ks->startup_ms = DEFAULT_STARTUP_MS;
    ks->rebalance_wait_ms = -1; /* derived from the session timeout */
    ks->session_timeout_ms = DEFAULT_SESSION_TIMEOUT_MS;
    ks->idle_ms = DEFAULT_IDLE_MS;
    ks->reset_is_error = 1;
    ks->ts_type = -1;
    size_t dn = strlen(ks->topic) + strlen(ks->brokers) + strlen(ks->group) + 64;
    ks->describe = xmalloc(dn);
    snprintf(ks->describe, dn, "kafka topic %s at %s (group %s)", ks->topic, ks->brokers,
             ks->group);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rdkafka_conf_set(conf, "bootstrap.servers", ks->brokers, err, errlen) ||
        rdkafka_conf_set(conf, "group.id", ks->group, err, errlen) ||
        rdkafka_conf_set(conf, "client.id", "sessionizer", err, errlen) ||
        rdkafka_conf_set(conf, "auto.offset.reset", "error", err, errlen) ||
        rdkafka_conf_set(conf, "session.timeout.ms", DEFAULT_SESSION_TIMEOUT, err, errlen) ||
        /* librdkafka checks queued.min.messages against the consumer queue
         * that every partition forwards to, i.e. against the total: with the
         * default (100000) and many partitions the fetcher stops after one
         * round and waits for the queue to drain, stalling up to a second at
         * a time. The queue stays bounded by queued.max.messages.kbytes. */
        rdkafka_conf_set(conf, "queued.min.messages", "1000000", err, errlen) ||
        apply_props(ks, conf, err, errlen) ||
        rdkafka_conf_set(conf, "enable.auto.commit", "false", err, errlen) ||
        rdkafka_conf_set(conf, "enable.auto.offset.store", "false", err, errlen) ||
        rdkafka_conf_set(conf, "enable.partition.eof", "true", err, errlen)) {
        rd_kafka_conf_destroy(conf);
        kafka_destroy(ks);
        return NULL;
    }
    *confp = conf;
    return ks;
}
