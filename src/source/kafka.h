/*
 * kafka.h - what the Kafka source shares with the Kafka dead-letter output.
 *
 * `--dlq kafka:TOPIC` writes to the cluster the job reads from, with the same
 * connection settings (SASL, TLS...), and keeps the original record's key.
 * Neither fact travels through the generic interfaces (a raw_record has no
 * key, a dead-letter output is opened with its own URI only), so the Kafka
 * source publishes them here while it is open. There is at most one source
 * per process. These are called on the job's thread only: the Kafka source's
 * consumer thread never touches what they read (kafka.c, "Threads").
 */
#ifndef SESSIONIZER_SOURCE_KAFKA_H
#define SESSIONIZER_SOURCE_KAFKA_H

#include <stddef.h>

#include "record/visit.h"

/* The open Kafka source's bootstrap list ("host:port,..."), or NULL when no
 * Kafka source is open. */
const char *kafka_source_bootstrap(void);

/* The open Kafka source's -X properties (NULL-terminated "key=value"), or
 * NULL. */
const char *const *kafka_source_props(void);

/* When raw is one of the last 64 records the Kafka source delivered (the
 * job writes dead letters a few records late, after its parse pipeline),
 * sets *key and *len to its key (NULL and 0 for a record without key) and
 * returns 1; otherwise returns 0. Matched by (partition, offset). */
int kafka_source_key(const raw_record *raw, const void **key, size_t *len);

#endif
