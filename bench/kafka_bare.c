/*
 * kafka_bare.c - the Kafka benchmark's reference: a bare librdkafka consumer
 * that reads every partition of a topic from the beginning to the end
 * offsets it had at start, touches every payload byte, and nothing else.
 *
 *   kafka-bare BROKERS TOPIC [poll|batch|subscribe] [-X key=value]...
 *
 * It is the practical ceiling for build/sessionizer reading the same topic
 * (bench/kafka.sh runs both in one go): same library, same cluster, same
 * fetch settings, no parsing, no sessions. "poll" is the usual
 * rd_kafka_consumer_poll() loop, "batch" the rd_kafka_consume_batch_queue()
 * one that the Kafka source uses; "subscribe" is "poll" in a consumer group
 * (partitions assigned by the group, as the Kafka source gets them). It
 * prints one line:
 *   bare-MODE: N records B bytes in S s (from the first record) = R records/s
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "kafka-bare: %s: %s\n", what, why);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: kafka-bare BROKERS TOPIC [poll|batch|subscribe] [-X key=value]...\n");
        return 2;
    }
    const char *brokers = argv[1], *topic = argv[2];
    int batch = argc > 3 && strcmp(argv[3], "batch") == 0;
    int sub = argc > 3 && strcmp(argv[3], "subscribe") == 0;
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
        rd_kafka_conf_set(conf, "group.id", "kafka-bare", err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err))
        die("config", err);
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "-X") != 0 || i + 1 >= argc) continue;
        char *kv = argv[++i], *eq = strchr(kv, '=');
        if (!eq) die("-X", "expected key=value");
        *eq = '\0';
        if (rd_kafka_conf_set(conf, kv, eq + 1, err, sizeof err)) die(kv, err);
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) die("consumer", err);
    rd_kafka_poll_set_consumer(rk);

    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (e) die("metadata", rd_kafka_err2str(e));
    if (md->topic_cnt != 1 || md->topics[0].err) die(topic, "no such topic");
    int n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);

    int64_t *end = calloc((size_t)n, sizeof *end);
    int64_t total = 0;
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) {
        int64_t lo, hi;
        e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
        if (e) die("watermarks", rd_kafka_err2str(e));
        end[p] = hi;
        total += hi - lo;
        rd_kafka_topic_partition_list_add(list, topic, p)->offset = lo;
    }
    if (sub) {
        /* the group's committed offsets are not used: none are ever committed
         * and auto.offset.reset=earliest is set below */
        rd_kafka_topic_partition_list_t *s1 = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(s1, topic, RD_KAFKA_PARTITION_UA);
        e = rd_kafka_subscribe(rk, s1);
        rd_kafka_topic_partition_list_destroy(s1);
    } else {
        e = rd_kafka_assign(rk, list);
    }
    if (e) die("assign", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(list);

    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
    rd_kafka_message_t *msgs[1024];
    int64_t got = 0, bytes = 0;
    uint64_t sum = 0; /* touch the payload, as any real consumer would */
    double first = 0, t0 = now_s();
    while (got < total) {
        ssize_t k;
        if (batch) {
            k = rd_kafka_consume_batch_queue(q, 1000, msgs, 1024);
        } else {
            msgs[0] = rd_kafka_consumer_poll(rk, 1000);
            k = msgs[0] ? 1 : 0;
        }
        for (ssize_t i = 0; i < k; i++) {
            rd_kafka_message_t *m = msgs[i];
            if (!m->err && m->offset < end[m->partition]) {
                if (!first) first = now_s();
                got++;
                bytes += (int64_t)m->len;
                const unsigned char *b = m->payload;
                for (size_t j = 0; j < m->len; j += 64) sum += b[j];
            }
            rd_kafka_message_destroy(m);
        }
        if (now_s() - t0 > 600) die("timeout", "did not reach the end offsets in 600 s");
    }
    double secs = now_s() - first;
    printf("bare-%s: %" PRId64 " records %" PRId64 " bytes in %.3f s (from the first record) "
           "= %.0f records/s (checksum %" PRIu64 ")\n", batch ? "batch" : sub ? "subscribe" : "poll", got, bytes,
           secs, (double)got / secs, sum % 1000);
    rd_kafka_queue_destroy(q);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    free(end);
    return 0;
}
