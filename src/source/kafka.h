/*
 * kafka.h - what the Kafka source shares with the Kafka dead-letter output.
 *
 * `--dlq kafka:TOPIC` writes to the cluster the job reads from, with the same
 * connection settings (SASL, TLS...). That does not travel through the
 * generic interfaces (a dead-letter output is opened with its own URI only),
 * so the Kafka source publishes it here while it is open; the original
 * record's key and headers travel with the record (raw_record.key, .origin).
 * There is at most one source per process. These are called on the job's
 * thread only: the Kafka source's consumer thread never touches what they
 * read (kafka.c, "Threads").
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

#endif
