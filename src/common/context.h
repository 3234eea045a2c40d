/*
 * context.h - what one job (or task) shares with the source, the sink and
 * the dead-letter output it opens: the stop flag, the status, and what one
 * of them lends to another.
 *
 * The job creates it before opening anything and passes it at open
 * (source_options.ctx, sink_options.ctx, deadletter_open); it outlives them
 * all, and owns what is lent through it (job_context_release frees it). So a
 * new wait anywhere sees the stop request without new wiring, nothing shared
 * goes through a process-wide global, and nothing lent points into a
 * component that may close first.
 */
#ifndef SESSIONIZER_CONTEXT_H
#define SESSIONIZER_CONTEXT_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>

#include "task/task.h"

/* A Kafka cluster as one component lends it to others: `--dlq kafka:TOPIC`
 * writes to the cluster the job reads from, with the same connection
 * settings (SASL, TLS...), and a dead-letter output is opened with its own
 * URI only. The context's own copies. */
typedef struct kafka_cluster {
    char *bootstrap; /* "host:port,..."; NULL: nobody lent a cluster */
    char **props;    /* the lender's -X "key=value" pairs, NULL-terminated */
} kafka_cluster;

typedef struct job_context {
    /* Set (by a signal handler) when the job is asked to stop. Whoever waits
     * (for a cluster, a server, a retry, an acknowledgement) gives up within
     * a few seconds once it is set; a wait that gives up fails what it was
     * doing, so that the checkpoint does not advance. NULL: never. */
    volatile sig_atomic_t *stop;
    /* The Kafka cluster of the input, lent by whoever reads it (the Kafka
     * source at open, the scale-out at start); job_context_kafka() reads it. */
    kafka_cluster kafka;
    /* The task this context serves (task.h): one task over the whole input
     * in a single instance. Its answer to the consumer group's assignments
     * (read, or hold and wait, and for how long) is the task's, not the
     * source's, which reports the offers and holds the partitions paused. */
    task_assignment task;
    /* The job's signs of life and its source's and sink's health (status.h):
     * whoever waits calls status_beat() at least every second, and reports
     * reachability, retries and errors in status->source or ->sink. NULL:
     * nowhere. */
    struct job_status *status;
} job_context;

/* Stop requests (SIGINT, SIGTERM) are the job thread's: its handler sets
 * the stop flag and its blocking calls return with EINTR. Every other thread
 * blocks them, so that one never lands there instead: job_thread_start
 * starts a thread so, job_block_stop_signals and job_restore_signals bracket
 * a library that starts its own (libmicrohttpd). */
void job_block_stop_signals(sigset_t *old);
void job_restore_signals(const sigset_t *old);
/* pthread_create's result. */
int job_thread_start(pthread_t *thread, void *(*fn)(void *), void *arg);

static inline int job_stopping(const job_context *ctx)
{
    return ctx && ctx->stop && *ctx->stop;
}

/* Lends the input's Kafka cluster to the context's other components
 * (copies; a second call replaces the first). props may be NULL. */
void job_context_lend_kafka(job_context *ctx, const char *bootstrap, const char *const *props);

/* The lent Kafka cluster, or NULL when none was lent (ctx may be NULL). */
const kafka_cluster *job_context_kafka(const job_context *ctx);

/* Frees what the context owns; it can be used again afterwards. */
void job_context_release(job_context *ctx);

#endif
