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

#endif
