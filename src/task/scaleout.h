/*
 * scaleout.h - several instances sharing one Kafka topic (--scale-out):
 * Kafka as the distributed engine, the way Kafka Streams does it.
 *
 * docs/scaling.md is the user's view and holds the determinism argument;
 * the why of the code is atop scaleout.c.
 */
#ifndef SESSIONIZER_SCALEOUT_H
#define SESSIONIZER_SCALEOUT_H

#include <stddef.h>
#include <stdint.h>

#include "job/job.h"

typedef struct scaleout_config {
    const job_config *job;          /* source, sink, dlq, engine, group, until_end, stop... */
    int32_t repartition_partitions; /* partitions of GROUP-repartition */
    const char *state_uri;          /* PostgreSQL for the session tasks' state; NULL: the sink */
    int keyed_input;                /* every user in one source partition: no repartition */
} scaleout_config;

/* Runs until a stop request, an error, or (until_end) until every session
 * task of the group has finished. Returns 0, or -1 with err set. */
int scaleout_run(const scaleout_config *cfg, char *err, size_t errlen);

#endif
