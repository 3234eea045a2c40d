/*
 * rdkafka_conf.h - setting librdkafka properties, the one way: the Kafka
 * source, the scale-out's clients and the Kafka dead-letter producer all take
 * the user's -X KEY=VALUE properties and set their own, and a property that
 * librdkafka refuses is reported alike from each, its value masked when the
 * key names a secret (common/secret.h).
 */
#ifndef SESSIONIZER_RDKAFKA_CONF_H
#define SESSIONIZER_RDKAFKA_CONF_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

/* Longest property name kept (librdkafka's are far shorter). */
#define RDKAFKA_KEY_MAX 256

/* Sets key=value. 0, or -1 with err "Kafka property -X KEY=VALUE:
 * librdkafka's reason". */
int rdkafka_conf_set(rd_kafka_conf_t *c, const char *key, const char *value, char *err,
                     size_t errlen);

/* Splits a "KEY=VALUE" property: the key into key[RDKAFKA_KEY_MAX] (cut if
 * longer), the value returned; NULL when there is no '=' (the CLI refuses
 * those before any client sees them). */
const char *rdkafka_prop_split(const char *prop, char key[RDKAFKA_KEY_MAX]);

/* Milliseconds as Kafka's *.ms properties write them (sessionizer.idle.ms,
 * session.timeout.ms): a whole number from 0 to 86400000. 0, or -1. */
int rdkafka_parse_ms(const char *v, int64_t *out);

/* The last -X KEY=MS among props into *ms (left alone when there is none):
 * 0, or -1 with err when its value is not rdkafka_parse_ms's. */
int rdkafka_prop_ms(const char *const *props, const char *key, int64_t *ms, char *err,
                    size_t errlen);

#endif
