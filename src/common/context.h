/*
 * context.h - what one job shares with the source, the sink and the
 * dead-letter output it opens: the stop flag, and the handles one of them
 * lends to another.
 *
 * The job creates it before opening anything and passes it at open
 * (source_options.ctx, sink_options.ctx, deadletter_open); it outlives them
 * all. So a new wait anywhere sees the stop request without new wiring, and
 * nothing shared goes through a process-wide global.
 */
#ifndef SESSIONIZER_CONTEXT_H
#define SESSIONIZER_CONTEXT_H

#include <signal.h>
#include <stddef.h>

struct source;

typedef struct job_context {
    /* Set (by a signal handler) when the job is asked to stop. Whoever waits
     * (for a cluster, a server, a retry, an acknowledgement) gives up within
     * a few seconds once it is set; a wait that gives up fails what it was
     * doing, so that the checkpoint does not advance. NULL: never. */
    volatile sig_atomic_t *stop;
    /* The open Kafka source, while it is open (it sets and clears this):
     * `--dlq kafka:TOPIC` takes its cluster, its connection settings and the
     * keys of its records from it (source/kafka.h). NULL: none. */
    struct source *kafka_source;
    /* The job's signs of life and its source's and sink's health (status.h):
     * whoever waits calls status_beat() at least every second, and reports
     * reachability, retries and errors in status->source or ->sink. NULL:
     * nowhere. */
    struct job_status *status;
} job_context;

static inline int job_stopping(const job_context *ctx)
{
    return ctx && ctx->stop && *ctx->stop;
}

#endif
