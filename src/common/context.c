/*
 * context.c - what a job context owns (context.h): the lent Kafka cluster.
 */
#include "common/context.h"

#include <stdlib.h>

#include "common/xalloc.h"

void job_block_stop_signals(sigset_t *old)
{
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, old);
}

void job_restore_signals(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

int job_thread_start(pthread_t *thread, void *(*fn)(void *), void *arg)
{
    sigset_t old;
    job_block_stop_signals(&old); /* the new thread inherits the mask */
    int e = pthread_create(thread, NULL, fn, arg);
    job_restore_signals(&old);
    return e;
}

static void drop_kafka(kafka_cluster *k)
{
    free(k->bootstrap);
    for (char **p = k->props; p && *p; p++) free(*p);
    free(k->props);
    *k = (kafka_cluster){0};
}

void job_context_lend_kafka(job_context *ctx, const char *bootstrap, const char *const *props)
{
    if (!ctx) return;
    drop_kafka(&ctx->kafka);
    size_t n = 0;
    while (props && props[n]) n++;
    ctx->kafka.props = xcalloc(n + 1, sizeof *ctx->kafka.props);
    for (size_t i = 0; i < n; i++) ctx->kafka.props[i] = xstrdup(props[i]);
    ctx->kafka.bootstrap = xstrdup(bootstrap);
}

const kafka_cluster *job_context_kafka(const job_context *ctx)
{
    return ctx && ctx->kafka.bootstrap ? &ctx->kafka : NULL;
}

void job_context_release(job_context *ctx)
{
    if (ctx) drop_kafka(&ctx->kafka);
}
