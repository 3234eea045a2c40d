/*
 * kafka.h - what the Kafka source shares with the Kafka dead-letter output.
 *
 * `--dlq kafka:TOPIC` writes to the cluster the job reads from, with the same
 * connection settings (SASL, TLS...). That does not travel through the
 * generic interfaces (a dead-letter output is opened with its own URI only),
 * so the Kafka source lends itself to the job's context (context.h,
 * kafka_source) while it is open, and these read it from there; each returns
 * NULL when the context holds no Kafka source. The original record's key and
 * headers travel with the record (raw_record.key, .origin). These are called
 * on the job's thread only: the Kafka source's consumer thread never touches
 * what they read (kafka_ring.c, "Threads").
 */
#ifndef SESSIONIZER_SOURCE_KAFKA_H
#define SESSIONIZER_SOURCE_KAFKA_H

#include <stddef.h>

#include "common/context.h"
#include "record/visit.h"

/* The open Kafka source's bootstrap list ("host:port,..."). */
const char *kafka_source_bootstrap(const job_context *ctx);

/* The open Kafka source's -X properties (NULL-terminated "key=value"). */
const char *const *kafka_source_props(const job_context *ctx);

#endif
