/*
 * kafka_ring.c - the Kafka source's consumer thread, and the ring that hands
 * what it takes from librdkafka to the job's thread (kafka.c's poll()).
 *
 * It exists apart because it is the only code of the source that runs on two
 * threads; everything else (kafka.c, kafka_group.c) is the job's thread's.
 *
 *  - Throughput: a consumer thread (started by the first poll(), after
 *    seek()) takes the messages from librdkafka in batches
 *    (rd_kafka_consume_batch_queue, no wait; rd_kafka_consumer_poll when
 *    nothing is queued, so a live record is delivered as soon as it arrives)
 *    and hands them to the job's thread through a bounded single-producer
 *    single-consumer ring; poll() hands them out in place, one per call. So
 *    taking a record from librdkafka overlaps with parsing and the engine.
 *    The messages the job is done with go back to the thread through a
 *    second ring and are destroyed there: freeing them on the job's thread
 *    cost it about as much as the engine (they come from the fetcher's
 *    malloc arena, whose lock it then fought over). The last RECENT
 *    messages stay alive: a dead letter's key and headers point into them
 *    (raw_record.key, .origin), for the Kafka dead-letter output.
 *
 *  - Threads: the consumer thread only moves messages. It reads and writes
 *    none of the source's state (positions, flags, assignment, errors): the
 *    callbacks librdkafka serves on it (rebalance, error, offset commit)
 *    become events in the ring, in order with the messages, and are handled
 *    on the job's thread when poll() reaches them; a rebalance callback waits
 *    on the consumer thread until the job's thread has handled it
 *    (rd_kafka_assign and friends are thread-safe), since the group protocol
 *    goes on when the callback returns. So position() speaks only of records
 *    handed to the job, never of records still in the ring, and everything
 *    else is as single-threaded as before. close() stops the thread first,
 *    handling what it still hands over (a pending rebalance), then
 *    rd_kafka_consumer_close serves the last callbacks on the job's thread.
 *    Shared between the threads: the ring slots (published with seq_cst /
 *    release stores of the indices, read after acquire loads), the stop and
 *    sleep flags (atomics), and an event's `done` (under ring_mu). The logger
 *    runs on librdkafka's threads and reads only `debug`, set before
 *    rd_kafka_new. Memory held outside librdkafka's queue accounting: at
 *    most RING messages and RING_BYTES of payload (checked before each
 *    batch) in the ring, plus RECENT, plus retired ones not yet destroyed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "common/clock.h"
#include "common/context.h"
#include "common/xalloc.h"
#include "source/kafka_internal.h"

#define PUBLISH_EVERY 32 /* the job frees ring slots in steps of this many */
#define THREAD_WAIT_MS 100

/* ---- the ring between the consumer thread and the job's thread ----------
 *
 * Both sides publish their index with a seq_cst store and then look whether
 * the other side sleeps (job_waiting, thread_waiting); a sleeper sets its
 * flag under ring_mu and looks at the index again before it waits, so no
 * wake-up is lost (and every wait is timed besides). */

static _Thread_local int on_consumer_thread;

static struct timespec deadline_in(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return ts;
}

/* The thread sleeps until half the ring is free: each wake-up is a futex
 * syscall on the job's thread, and with a quarter of a 4096-slot ring they
 * took 10% of its time on the Kafka benchmark (docs/performance.md). */
static int ring_roomy(size_t tail, size_t head, size_t bytes)
{
    return tail - head <= RING / 2 && bytes < RING_BYTES / 2;
}

/* Thread: destroys the messages the job handed back. */
static void ring_reap(kafka_source *ks)
{
    size_t t = atomic_load_explicit(&ks->retire_tail, memory_order_acquire);
    if (t == ks->t_retire_head) return;
    for (; ks->t_retire_head != t; ks->t_retire_head++)
        rd_kafka_message_destroy(ks->retired[ks->t_retire_head % RETIRE_RING]);
    atomic_store_explicit(&ks->retire_head, t, memory_order_release);
}

/* Job: a message it is done with, for the thread to destroy (or itself,
 * when there is no thread or no room). */
void kafka_retire(kafka_source *ks, rd_kafka_message_t *m)
{
    if (ks->thread_started && !atomic_load_explicit(&ks->stop, memory_order_relaxed)) {
        if (ks->r_tail - ks->r_head_seen >= RETIRE_RING)
            ks->r_head_seen = atomic_load_explicit(&ks->retire_head, memory_order_acquire);
        if (ks->r_tail - ks->r_head_seen < RETIRE_RING) {
            ks->retired[ks->r_tail++ % RETIRE_RING] = m;
            return;
        }
    }
    rd_kafka_message_destroy(m);
}

/* Thread: makes the slots filled so far visible to the job. */
static void ring_publish_tail(kafka_source *ks)
{
    atomic_store(&ks->ring_tail, ks->t_tail);
    if (atomic_load(&ks->job_waiting)) {
        pthread_mutex_lock(&ks->ring_mu);
        pthread_cond_signal(&ks->ring_data);
        pthread_mutex_unlock(&ks->ring_mu);
    }
}

/* Thread: returns when there is a free slot (and, bytes_too, the ring holds
 * less than RING_BYTES of payload). The job always frees slots in the end:
 * it polls, and close() drains the ring until the thread has exited. */
static void ring_wait_room(kafka_source *ks, int bytes_too)
{
    for (;;) {
        if (ks->t_tail - ks->t_head_seen < RING &&
            (!bytes_too || atomic_load(&ks->ring_bytes) < RING_BYTES))
            return;
        ks->t_head_seen = atomic_load(&ks->ring_head);
        if (ks->t_tail - ks->t_head_seen < RING &&
            (!bytes_too || atomic_load(&ks->ring_bytes) < RING_BYTES))
            return;
        ring_publish_tail(ks);
        pthread_mutex_lock(&ks->ring_mu);
        atomic_store(&ks->thread_waiting, 1);
        if (!ring_roomy(ks->t_tail, atomic_load(&ks->ring_head), atomic_load(&ks->ring_bytes))) {
            struct timespec ts = deadline_in(THREAD_WAIT_MS);
            pthread_cond_timedwait(&ks->ring_space, &ks->ring_mu, &ts);
        }
        atomic_store(&ks->thread_waiting, 0);
        pthread_mutex_unlock(&ks->ring_mu);
        ring_reap(ks);
    }
}

/* Thread: appends a message or an event (not yet visible to the job). */
static void ring_push(kafka_source *ks, rd_kafka_message_t *m, kevent *ev)
{
    ring_wait_room(ks, 0);
    ks->ring[ks->t_tail % RING] = (kentry){.m = m, .ev = ev};
    ks->t_tail++;
}

/* Job: gives the slots taken so far back to the thread. */
static void ring_publish_head(kafka_source *ks)
{
    atomic_store_explicit(&ks->retire_tail, ks->r_tail, memory_order_release);
    if (ks->head == ks->head_published) return;
    atomic_store(&ks->ring_head, ks->head);
    size_t bytes = atomic_fetch_sub(&ks->ring_bytes, ks->bytes_popped) - ks->bytes_popped;
    ks->head_published = ks->head;
    ks->bytes_popped = 0;
    if (atomic_load(&ks->thread_waiting) &&
        ring_roomy(atomic_load(&ks->ring_tail), ks->head, bytes)) {
        pthread_mutex_lock(&ks->ring_mu);
        pthread_cond_signal(&ks->ring_space);
        pthread_mutex_unlock(&ks->ring_mu);
    }
}

/* Job: the oldest slot, NULL when there is none. */
const kentry *kafka_ring_peek(kafka_source *ks)
{
    if (ks->head == ks->tail_seen) {
        ks->tail_seen = atomic_load_explicit(&ks->ring_tail, memory_order_acquire);
        if (ks->head == ks->tail_seen) return NULL;
        ks->batch_ms = mono_ms();
        atomic_store_explicit(&ks->job_alive_ms, ks->batch_ms, memory_order_relaxed);
    }
    return &ks->ring[ks->head % RING];
}

/* Job: frees the oldest slot (after it copied it). */
void kafka_ring_pop(kafka_source *ks, const kentry *e)
{
    if (e->m) ks->bytes_popped += e->m->len;
    ks->head++;
    if (ks->head - ks->head_published >= PUBLISH_EVERY) ring_publish_head(ks);
}

/* Job: waits up to timeout_ms for the thread to publish something. */
void kafka_ring_wait_data(kafka_source *ks, int timeout_ms)
{
    ring_publish_head(ks);
    atomic_store_explicit(&ks->job_alive_ms, mono_ms(), memory_order_relaxed);
    pthread_mutex_lock(&ks->ring_mu);
    if (atomic_load(&ks->thread_waiting)) pthread_cond_signal(&ks->ring_space); /* maybe stalled */
    atomic_store(&ks->job_waiting, 1);
    if (atomic_load(&ks->ring_tail) == ks->head && !atomic_load(&ks->exited)) {
        struct timespec ts = deadline_in(timeout_ms);
        pthread_cond_timedwait(&ks->ring_data, &ks->ring_mu, &ts);
    }
    atomic_store(&ks->job_waiting, 0);
    pthread_mutex_unlock(&ks->ring_mu);
}

/* ---- librdkafka callbacks served on the consumer thread: events --------- */

void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    kafka_source *ks = opaque;
    if (!on_consumer_thread) {
        kafka_on_error(ks, (rd_kafka_resp_err_t)err, reason);
        return;
    }
    kevent *ev = xcalloc(1, sizeof *ev);
    ev->kind = EV_ERROR;
    ev->err = (rd_kafka_resp_err_t)err;
    snprintf(ev->reason, sizeof ev->reason, "%s", reason);
    ring_push(ks, NULL, ev);
    ring_publish_tail(ks);
}

void kafka_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk, (void)offsets;
    kafka_source *ks = opaque;
    if (!on_consumer_thread) {
        kafka_on_commit(ks, err);
        return;
    }
    kevent *ev = xcalloc(1, sizeof *ev);
    ev->kind = EV_COMMIT;
    ev->err = err;
    ring_push(ks, NULL, ev);
    ring_publish_tail(ks);
}

/* A rebalance served on the consumer thread waits there for the job's
 * thread to handle it (kafka_group.c, from poll() or close()): the
 * group protocol goes on once the callback returns, and rd_kafka_assign()
 * may be called from any thread. */
void kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                        rd_kafka_topic_partition_list_t *list, void *opaque)
{
    kafka_source *ks = opaque;
    if (!on_consumer_thread) {
        kafka_rebalance(ks, rk, err, list);
        return;
    }
    kevent *ev = xcalloc(1, sizeof *ev);
    ev->kind = EV_REBALANCE;
    ev->err = err;
    ev->list = list;
    ring_push(ks, NULL, ev);
    ring_publish_tail(ks);
    pthread_mutex_lock(&ks->ring_mu);
    while (!ev->done) pthread_cond_wait(&ks->ring_done, &ks->ring_mu);
    pthread_mutex_unlock(&ks->ring_mu);
    free(ev);
}

/* ---- the consumer thread ------------------------------------------------ */

/* It only moves messages from librdkafka into the ring, and the events of
 * the callbacks librdkafka serves on it (rebalance, error, commit) in order
 * with them; it reads nothing of the source's state. */
static void *consumer_thread(void *arg)
{
    kafka_source *ks = arg;
    on_consumer_thread = 1;
#ifdef __linux__
    prctl(PR_SET_NAME, "sz:kafka-poll", 0, 0, 0); /* for top and perf */
#endif
    while (!atomic_load(&ks->stop)) {
        ring_reap(ks);
        if (mono_ms() - atomic_load_explicit(&ks->job_alive_ms, memory_order_relaxed) > JOB_STALL_MS) {
            /* The job is busy elsewhere (a long commit) or stuck: stop
             * polling too, as a single-threaded consumer would, so that
             * librdkafka's max.poll.interval.ms still notices a stuck job
             * even when the ring is not full. */
            ring_publish_tail(ks);
            pthread_mutex_lock(&ks->ring_mu);
            atomic_store(&ks->thread_waiting, 1);
            if (mono_ms() - atomic_load(&ks->job_alive_ms) > JOB_STALL_MS) {
                struct timespec ts = deadline_in(THREAD_WAIT_MS);
                pthread_cond_timedwait(&ks->ring_space, &ks->ring_mu, &ts);
            }
            atomic_store(&ks->thread_waiting, 0);
            pthread_mutex_unlock(&ks->ring_mu);
            continue;
        }
        ring_wait_room(ks, 1);
        size_t room = RING - (ks->t_tail - ks->t_head_seen);
        ssize_t n = rd_kafka_consume_batch_queue(ks->q, 0, ks->t_batch, room < BATCH ? room : BATCH);
        if (n == 0) {
            /* Nothing queued: let the job see what there is, and wait for
             * the next message, served as soon as it arrives. */
            ring_publish_tail(ks);
            rd_kafka_message_t *m = rd_kafka_consumer_poll(ks->rk, THREAD_WAIT_MS);
            if (m) ks->t_batch[0] = m, n = 1;
        }
        if (n < 0) {
            kevent *ev = xcalloc(1, sizeof *ev);
            ev->kind = EV_FAIL;
            snprintf(ev->reason, sizeof ev->reason, "%s",
                     rd_kafka_err2str(rd_kafka_last_error()));
            ring_push(ks, NULL, ev);
            break;
        }
        size_t bytes = 0;
        for (ssize_t i = 0; i < n; i++) bytes += ks->t_batch[i]->len;
        if (bytes) atomic_fetch_add(&ks->ring_bytes, bytes);
        for (ssize_t i = 0; i < n; i++) ring_push(ks, ks->t_batch[i], NULL);
        ring_publish_tail(ks);
    }
    ring_publish_tail(ks);
    pthread_mutex_lock(&ks->ring_mu);
    atomic_store(&ks->exited, 1);
    pthread_cond_broadcast(&ks->ring_data);
    pthread_mutex_unlock(&ks->ring_mu);
    return NULL;
}

int kafka_start_thread(kafka_source *ks, char *err, size_t errlen)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&ks->ring_mu, NULL);
    pthread_cond_init(&ks->ring_data, &ca);
    pthread_cond_init(&ks->ring_space, &ca);
    pthread_cond_init(&ks->ring_done, &ca);
    pthread_condattr_destroy(&ca);
    ks->ring_init = 1;
    atomic_store(&ks->job_alive_ms, mono_ms());
    int e = job_thread_start(&ks->thread, consumer_thread, ks);
    if (e) {
        snprintf(err, errlen, "reading %s: cannot start the consumer thread: %s", ks->describe,
                 strerror(e));
        return -1;
    }
    ks->thread_started = 1;
    return 0;
}

/* Job: an event from the consumer thread, in its place among the messages. */
void kafka_handle_event(kafka_source *ks, kevent *ev)
{
    switch (ev->kind) {
    case EV_ERROR:
        kafka_on_error(ks, ev->err, ev->reason);
        break;
    case EV_COMMIT:
        kafka_on_commit(ks, ev->err);
        break;
    case EV_FAIL:
        kafka_fail(ks, "reading %s: %s", ks->describe, ev->reason);
        break;
    case EV_REBALANCE:
        kafka_rebalance(ks, ks->rk, ev->err, ev->list);
        /* the thread frees ev once it sees done */
        pthread_mutex_lock(&ks->ring_mu);
        ev->done = 1;
        pthread_cond_broadcast(&ks->ring_done);
        pthread_mutex_unlock(&ks->ring_mu);
        return;
    }
    free(ev);
}

/* Job: stops the thread, handling what it still hands over (a rebalance
 * waits for that), and drops the messages. */
void kafka_stop_thread(kafka_source *ks)
{
    if (!ks->thread_started) return;
    atomic_store(&ks->stop, 1);
    rd_kafka_queue_yield(ks->q);
    for (;;) {
        const kentry *e;
        while ((e = kafka_ring_peek(ks))) {
            kentry c = *e;
            kafka_ring_pop(ks, &c);
            if (c.m) rd_kafka_message_destroy(c.m);
            else kafka_handle_event(ks, c.ev);
        }
        if (atomic_load(&ks->exited) && ks->head == atomic_load(&ks->ring_tail)) break;
        kafka_ring_wait_data(ks, 10);
    }
    ring_publish_head(ks);
    pthread_join(ks->thread, NULL);
    ks->thread_started = 0;
    for (size_t i = atomic_load(&ks->retire_head); i != ks->r_tail; i++)
        rd_kafka_message_destroy(ks->retired[i % RETIRE_RING]);
}
