/*
 * kafka_committed.c - prints a consumer group's committed offsets for every
 * partition of a topic, one "pP:OFFSET" per partition on one line (-1: none
 * committed). The tests use it to check that the group never hears of an
 * offset that the job's checkpoint would not resume from.
 *
 *   kafka-committed BROKERS TOPIC GROUP
 */
#include <inttypes.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: kafka-committed BROKERS TOPIC GROUP\n");
        return 2;
    }
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof err) ||
        rd_kafka_conf_set(conf, "group.id", argv[3], err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err)) {
        fprintf(stderr, "kafka-committed: %s\n", err);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "kafka-committed: %s\n", err);
        return 1;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, argv[2], NULL);
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (e || md->topic_cnt != 1 || md->topics[0].err) {
        fprintf(stderr, "kafka-committed: no metadata for %s\n", argv[2]);
        return 1;
    }
    int n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) rd_kafka_topic_partition_list_add(l, argv[2], p);
    e = rd_kafka_committed(rk, l, 10000);
    if (e) {
        fprintf(stderr, "kafka-committed: %s\n", rd_kafka_err2str(e));
        return 1;
    }
    for (int i = 0; i < l->cnt; i++)
        printf("%sp%d:%" PRId64, i ? " " : "", (int)l->elems[i].partition,
               l->elems[i].offset < 0 ? (int64_t)-1 : l->elems[i].offset);
    printf("\n");
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return 0;
}
