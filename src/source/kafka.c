/*
 * kafka.c - visits from a Kafka topic (librdkafka), every partition of it.
 *
 *   kafka://HOST:PORT[,HOST:PORT...]/TOPIC   with -X key=value, --group ID,
 *   --start earliest|latest, --until-end; docs/kafka.md is the user's view.
 *
 * Why it is built the way it is:
 *
 *  - Positions are ours. The checkpoint holds the next offset of every
 *    partition and is the only source of truth; the consumer group's
 *    committed offsets are written after each checkpoint commit, for lag
 *    tools only, and never read. Every assignment is made with explicit
 *    offsets, and every delivered record is checked against the position:
 *    a record below it (a re-fetch after a rebalance or an outage) is dropped,
 *    because the engine is not idempotent per record (a page applied twice
 *    would appear twice in its session).
 *
 *  - One instance reads every partition. A user's visits can be in any
 *    partition (the reference producer is unkeyed), so a session is only
 *    right when one engine sees all of them; and engine state cannot be split
 *    per partition on revocation. The source still joins the consumer group
 *    (subscribe) so that a second instance is noticed. An instance offered
 *    less than the whole topic reads nothing (it accepts the assignment
 *    paused: the group protocol requires the accept). One that never read
 *    waits long enough for a crashed predecessor to be evicted from the
 *    group (2 x session.timeout.ms + 5 s), then refuses to run and leaves;
 *    one that was reading waits longer (sessionizer.rebalance.wait.ms,
 *    default 4 x session.timeout.ms + 30 s) and goes on from its own
 *    positions when the whole topic comes back. A lost assignment (the group
 *    session timed out during an outage) is the same case.
 *
 *  - Caught-up flags drive the engine's closing watermark (engine.h). With
 *    --until-end a partition is caught up when its position reaches the end
 *    offset it had at start: deterministic, which is what makes replays
 *    identical. Live, it is caught up when librdkafka reported the end of
 *    the partition, nothing was delivered since, and nothing for
 *    sessionizer.idle.ms (Flink's idleness); empty partitions qualify at
 *    their first fetch, so they never stall closing, and an unassigned
 *    partition never does. After a quiet moment, every flag goes down for
 *    sessionizer.idle.ms before the next record is applied (poll()), so
 *    that records produced together to two partitions cannot close each
 *    other's sessions early.
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
 *    messages stay alive, for the dead-letter output's key lookup (kafka.h).
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
 *
 *  - Failures: librdkafka reconnects by itself, so a broker outage is only
 *    reported (poll returns IDLE meanwhile) and reading resumes at our
 *    positions; errors that no waiting can cure (authorization, unknown
 *    topic, offsets gone by retention, fatal client errors) fail the job
 *    without committing. At start-up the cluster must answer within
 *    sessionizer.startup.timeout.ms (default 15 s), or the job stops with an
 *    error that says so.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "common/log.h"
#include "common/status.h"
#include "common/clock.h"
#include "common/xalloc.h"
#include "source/kafka.h"
#include "source/source.h"

#define BATCH 1024       /* most messages the consumer thread takes at once */
#define RING 32768       /* messages between the consumer thread and the job, power of 2 */
#define RING_BYTES (16u << 20) /* and at most this many payload bytes (big records) */
#define PUBLISH_EVERY 32 /* the job frees ring slots in steps of this many */
#define THREAD_WAIT_MS 100
#define JOB_STALL_MS 1000 /* the thread stops polling librdkafka when the job has not polled for this long */
#define RETIRE_RING (2 * RING) /* messages the job hands back to the thread to destroy */
#define RECENT 64 /* > the job's pipeline depth */
_Static_assert(RECENT >= RAW_RECORD_KEEP, "delivered records' keys must outlive the job's use");
#define POSITION_VERSION 1u
#define DEFAULT_STARTUP_MS 15000
#define DEFAULT_SESSION_TIMEOUT_MS 10000
#define DEFAULT_IDLE_MS 2000
#define DEFAULT_SESSION_TIMEOUT "10000"
#define OFFSET_UNKNOWN (-1)
#define LEAVE_WAIT_MS 3000 /* the longest close() waits to leave the group */
#define STOP_POLL_MS 200 /* the longest a request to the cluster holds up the job's thread */

typedef struct kpart {
    int64_t pos;      /* next offset to deliver; OFFSET_UNKNOWN: from the log start */
    int64_t end;      /* --until-end: end offset at start */
    int64_t high;     /* last known high watermark, -1 if none */
    int64_t low;      /* log start at open */
    int64_t eof_at;   /* offset of the last end-of-partition event, -1 none */
    int64_t last_ms;  /* when it last delivered a record (batch time) */
    int assigned;     /* the group gave it to us and we are reading it */
} kpart;

/* What a librdkafka callback served on the consumer thread hands to the job's
 * thread, in order with the messages (see "Threads" at the top). */
enum kevent_kind { EV_ERROR, EV_COMMIT, EV_REBALANCE, EV_FAIL };
typedef struct kevent {
    enum kevent_kind kind;
    rd_kafka_resp_err_t err;
    char reason[512];                      /* EV_ERROR, EV_FAIL */
    rd_kafka_topic_partition_list_t *list; /* EV_REBALANCE: the callback's own */
    int done;                              /* EV_REBALANCE: handled (under ring_mu) */
} kevent;

/* A ring slot: a message, or (m == NULL) an event. */
typedef struct kentry {
    rd_kafka_message_t *m;
    kevent *ev;
} kentry;

typedef struct kafka_source {
    source base;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    char *brokers, *topic, *group, *describe;
    char *identity; /* "kafka:cluster=ID/topic=T", made in kafka_open() */
    const char *const *props;
    job_context *ctx; /* the job's: its stop flag; we lend ourselves to it (kafka.h) */
    kpart *parts;
    int32_t n_parts;
    int until_end;
    size_t max_record;
    int64_t startup_ms, rebalance_wait_ms, session_timeout_ms, idle_ms;
    int64_t batch_ms; /* when the current batch was taken from librdkafka */
    int64_t burst_ms;    /* when records came back after a pause, see poll() */
    int quiet;           /* poll returned IDLE since the last record */
    int reset_is_error; /* auto.offset.reset=error (ours) rather than the user's choice */
    int debug;          /* -X debug=...: pass librdkafka's debug log through */

    /* The ring from the consumer thread (producer) to the job's thread
     * (consumer): single producer, single consumer. Slots [head, tail) are
     * the job's; the thread writes a slot only after the job published its
     * head past it. Indices count up forever (mod RING for the slot). */
    kentry ring[RING];
    char pad0[64];
    _Atomic size_t ring_tail;    /* written by the thread */
    char pad1[64];
    _Atomic size_t ring_head;    /* written by the job (every PUBLISH_EVERY) */
    _Atomic size_t ring_bytes;   /* payload bytes in the ring */
    atomic_int job_waiting;      /* the job sleeps on ring_data */
    atomic_int thread_waiting;   /* the thread sleeps on ring_space */
    atomic_int stop;             /* close(): the thread is to exit */
    atomic_int exited;           /* the thread has exited */
    _Atomic int64_t job_alive_ms; /* the job last looked at the ring */
    /* The way back: messages the job is done with, destroyed on the
     * thread (freeing them on the job's thread costs it as much as the
     * engine: they come from the fetcher's malloc arena, whose lock it then
     * fights over). Slots [retire_head, retire_tail) are the thread's. */
    rd_kafka_message_t *retired[RETIRE_RING];
    char pad2[64];
    _Atomic size_t retire_tail;  /* written by the job (with ring_head) */
    _Atomic size_t retire_head;  /* written by the thread */
    char pad3[64];
    /* the job's side */
    size_t head, tail_seen, head_published, bytes_popped;
    size_t r_tail, r_head_seen;
    /* the thread's side */
    size_t t_tail, t_head_seen, t_retire_head;
    rd_kafka_message_t *t_batch[BATCH];
    pthread_mutex_t ring_mu;
    pthread_cond_t ring_data, ring_space, ring_done;
    int ring_init;               /* ring_mu and the conds exist */
    pthread_t thread;
    int thread_started;
    /* The last RECENT records delivered, still alive: the job may write a
     * dead letter for a record a few polls after it (its parse pipeline),
     * and the Kafka dead-letter output wants that record's key and headers
     * (raw_record.key and .origin point into the message). */
    rd_kafka_message_t *recent[RECENT];
    size_t recent_i;

    int active, ever_active;
    int64_t opened_ms;       /* for the 'still waiting for the group' line */
    int wait_logged;
    int closing;             /* leaving the group: the revocation is ours */
    int starting;            /* in open(): errors are kept for its message */
    int64_t paused_since_ms; /* 0: not paused */
    int32_t done;            /* --until-end: partitions at or past their end */
    int ts_type;             /* last logged timestamp type, -1 none */
    int64_t outage_since_ms; /* 0: no outage being reported */
    io_status *io;           /* the job's view of this source (metrics, /readyz); may be NULL */
    int64_t outage_probe_ms;
    rd_kafka_resp_err_t last_err;
    int64_t last_err_ms;
    char last_err_str[512];
    int fatal;
    char fatal_msg[768];
} kafka_source;

extern const source_ops kafka_source_ops;

__attribute__((format(printf, 2, 3)))
static void fail(kafka_source *ks, const char *fmt, ...)
{
    if (ks->fatal) return; /* the first cause is the one to report */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ks->fatal_msg, sizeof ks->fatal_msg, fmt, ap);
    va_end(ap);
    ks->fatal = 1;
}

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
static void retire(kafka_source *ks, rd_kafka_message_t *m)
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
static const kentry *ring_peek(kafka_source *ks)
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
static void ring_pop(kafka_source *ks, const kentry *e)
{
    if (e->m) ks->bytes_popped += e->m->len;
    ks->head++;
    if (ks->head - ks->head_published >= PUBLISH_EVERY) ring_publish_head(ks);
}

/* Job: waits up to timeout_ms for the thread to publish something. */
static void ring_wait_data(kafka_source *ks, int timeout_ms)
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

/* ---- librdkafka callbacks (served on the consumer thread while it runs,
 * which passes them on as events; on the job's thread in open() and
 * close(); the logger on librdkafka's threads) ----------------------------- */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *msg)
{
    const kafka_source *ks = rd_kafka_opaque(rk);
    /* Warnings and worse only, unless -X debug=... asked for more;
     * connection failures also reach error_cb, which reports them once per
     * outage instead of once per retry. */
    if ((ks && ks->debug) || (level <= 4 && strcmp(fac, "FAIL") != 0))
        log_msg(level <= 3 ? LOG_ERROR : level == 4 ? LOG_WARN : level <= 6 ? LOG_INFO : LOG_DEBUG,
                "kafka", "%s: %s", fac, msg);
}

static int is_permanent(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_INVALID_GROUP_ID:
        return 1;
    default:
        return 0;
    }
}

static void on_error(kafka_source *ks, rd_kafka_resp_err_t err, const char *reason)
{
    snprintf(ks->last_err_str, sizeof ks->last_err_str, "%s", reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(ks->rk, why, sizeof why);
        fail(ks, "Kafka client failed: %s: %s", rd_kafka_err2name(orig), why);
        return;
    }
    if (is_permanent(err)) {
        if (err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
            err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE)
            fail(ks, "topic %s: %s. The records at the saved position were deleted (retention) "
                 "before they were read. To go on without them, rerun with "
                 "-X auto.offset.reset=earliest; to reprocess what is left from the start, use "
                 "a new --checkpoint directory", ks->topic, reason);
        else
            fail(ks, "topic %s: %s (%s)", ks->topic, reason, rd_kafka_err2name(err));
        return;
    }
    /* At start-up the error the caller gets will quote the last one. */
    if (ks->starting) return;
    /* Transient: librdkafka retries on its own. One line per kind of error
     * every 10 s is enough to see an outage without drowning the log. */
    int64_t t = mono_ms();
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
        err == RD_KAFKA_RESP_ERR__RESOLVE) {
        io_status_error(ks->io, IO_ERR_CONNECTION);
        if (!ks->outage_since_ms) {
            ks->outage_since_ms = t;
            io_status_down(ks->io);
            log_warn("kafka", "cluster %s unreachable (%s); waiting for it, reading resumes "
                     "where it stopped", ks->brokers, reason);
            ks->last_err = err;
            ks->last_err_ms = t;
            return;
        }
    }
    if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && err != RD_KAFKA_RESP_ERR__TRANSPORT &&
        err != RD_KAFKA_RESP_ERR__RESOLVE)
        io_status_error(ks->io, err == RD_KAFKA_RESP_ERR__TIMED_OUT ? IO_ERR_TIMEOUT : IO_ERR_SERVER);
    if (err != ks->last_err || t - ks->last_err_ms >= 10000) {
        log_warn("kafka", "%s", reason);
        ks->last_err = err;
        ks->last_err_ms = t;
    }
}

static void on_commit(kafka_source *ks, rd_kafka_resp_err_t err);

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    kafka_source *ks = opaque;
    if (!on_consumer_thread) {
        on_error(ks, (rd_kafka_resp_err_t)err, reason);
        return;
    }
    kevent *ev = xcalloc(1, sizeof *ev);
    ev->kind = EV_ERROR;
    ev->err = (rd_kafka_resp_err_t)err;
    snprintf(ev->reason, sizeof ev->reason, "%s", reason);
    ring_push(ks, NULL, ev);
    ring_publish_tail(ks);
}

static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk, (void)offsets;
    kafka_source *ks = opaque;
    if (!on_consumer_thread) {
        on_commit(ks, err);
        return;
    }
    kevent *ev = xcalloc(1, sizeof *ev);
    ev->kind = EV_COMMIT;
    ev->err = err;
    ring_push(ks, NULL, ev);
    ring_publish_tail(ks);
}

static void on_commit(kafka_source *ks, rd_kafka_resp_err_t err)
{
    /* Only lag tools read these offsets; a failed commit is retried with the
     * next checkpoint, so it is worth a line, not a failure. */
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) io_status_error(ks->io, IO_ERR_SERVER);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET && mono_ms() - ks->last_err_ms >= 10000) {
        log_warn("kafka", "committing offsets to group %s failed: %s (lag tools lag behind; "
                 "the checkpoint is unaffected)", ks->group, rd_kafka_err2str(err));
        ks->last_err_ms = mono_ms();
    }
}

static void grow_parts(kafka_source *ks, int32_t n)
{
    if (n <= ks->n_parts) return;
    ks->parts = xrealloc(ks->parts, (size_t)n * sizeof *ks->parts);
    for (int32_t p = ks->n_parts; p < n; p++) {
        /* A partition added while we run: all of it is new, read it from its
         * start; --until-end had nothing of it at start, so it is done. */
        ks->parts[p] = (kpart){.pos = OFFSET_UNKNOWN, .end = 0, .high = -1, .low = 0, .eof_at = -1};
        if (ks->until_end) ks->done++;
    }
    ks->n_parts = n;
}

static void unassign_all(kafka_source *ks)
{
    for (int32_t p = 0; p < ks->n_parts; p++) ks->parts[p].assigned = 0, ks->parts[p].eof_at = -1;
    ks->active = 0;
}

/* How long an instance offered part of the topic waits for all of it. A
 * newcomer cannot tell a live member from a crashed one (a SIGKILLed
 * predecessor stays in the group until its session times out), so it waits
 * for that eviction and then refuses; the running instance waits longer, so
 * that it outlasts the newcomer and takes the whole topic back. */
static int64_t pause_limit_ms(const kafka_source *ks)
{
    if (!ks->ever_active) return 2 * ks->session_timeout_ms + 5000;
    if (ks->rebalance_wait_ms >= 0) return ks->rebalance_wait_ms;
    return 4 * ks->session_timeout_ms + 30000;
}

/* A rebalance served on the consumer thread waits there for the job's
 * thread to handle it (rebalance() below, from poll() or close()): the
 * group protocol goes on once the callback returns, and rd_kafka_assign()
 * may be called from any thread. */
static void rebalance(kafka_source *ks, rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *list);

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *list, void *opaque)
{
    kafka_source *ks = opaque;
    if (!on_consumer_thread) {
        rebalance(ks, rk, err, list);
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

static void rebalance(kafka_source *ks, rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *list)
{
    if (strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0) {
        fail(ks, "group %s uses a cooperative assignor, which sessionizer does not support "
             "(remove partition.assignment.strategy from -X)", ks->group);
        return;
    }
    if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (ks->active && !ks->closing)
            log_warn("kafka", "partitions %s by group %s%s",
                    rd_kafka_assignment_lost(rk) ? "lost" : "revoked", ks->group,
                    rd_kafka_assignment_lost(rk)
                        ? " (its session timed out, e.g. during an outage); rejoining" : "");
        unassign_all(ks);
        rd_kafka_assign(rk, NULL);
        return;
    }
    int32_t max_id = -1, count = 0;
    for (int i = 0; i < list->cnt; i++) {
        if (strcmp(list->elems[i].topic, ks->topic) != 0) continue;
        count++;
        if (list->elems[i].partition > max_id) max_id = list->elems[i].partition;
    }
    grow_parts(ks, max_id + 1);
    for (int i = 0; i < list->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &list->elems[i];
        if (strcmp(tp->topic, ks->topic) != 0) continue;
        kpart *kp = &ks->parts[tp->partition];
        tp->offset = kp->pos >= 0 ? kp->pos : RD_KAFKA_OFFSET_BEGINNING;
    }
    if (count < ks->n_parts) {
        /* The group protocol needs the assignment accepted (an unassign here
         * would leave the consumer waiting for an assign call and deaf to
         * the next rebalance), so accept it, paused, and read nothing. */
        unassign_all(ks);
        rd_kafka_resp_err_t e = rd_kafka_assign(rk, list);
        if (!e) e = rd_kafka_pause_partitions(rk, list);
        if (e) {
            fail(ks, "cannot hold the partial assignment of %s: %s", ks->topic,
                 rd_kafka_err2str(e));
            return;
        }
        if (!ks->paused_since_ms) ks->paused_since_ms = mono_ms();
        log_warn("kafka", "group %s has another member (this instance was offered %d of %d "
                 "partitions of %s): %s, up to %.0f s", ks->group, (int)count,
                (int)ks->n_parts, ks->topic,
                ks->ever_active ? "paused until it leaves"
                                : "waiting in case it is a crashed instance about to be evicted",
                (double)pause_limit_ms(ks) / 1000.0);
        return;
    }
    for (int i = 0; i < list->cnt; i++)
        if (strcmp(list->elems[i].topic, ks->topic) == 0) ks->parts[list->elems[i].partition].assigned = 1;
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, list);
    /* A pause from an earlier partial assignment may stick to a partition. */
    if (!e) e = rd_kafka_resume_partitions(rk, list);
    if (e) {
        fail(ks, "cannot assign the partitions of %s: %s", ks->topic, rd_kafka_err2str(e));
        return;
    }
    if (ks->paused_since_ms)
        log_info("kafka", "group %s gave this instance all %d partitions after %.1f s: "
                 "reading", ks->group, (int)ks->n_parts,
                (double)(mono_ms() - ks->paused_since_ms) / 1000.0);
    ks->paused_since_ms = 0;
    ks->active = ks->ever_active = 1;
}

/* ---- opening ------------------------------------------------------------ */

static int parse_ms(const char *v, int64_t *out)
{
    char *end;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end || n < 0 || n > 86400000LL) return -1;
    *out = n;
    return 0;
}

static int valid_topic(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *err, size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(conf, k, v, why, sizeof why) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "Kafka property -X %s=%s: %s", k, v, why);
        return -1;
    }
    return 0;
}

/* Applies the -X properties: librdkafka's own, ours (sessionizer.*), and
 * skips the dead-letter producer's (dlq.*). */
static int apply_props(kafka_source *ks, rd_kafka_conf_t *conf, char *err, size_t errlen)
{
    for (const char *const *pp = ks->props; pp && *pp; pp++) {
        const char *eq = strchr(*pp, '=');
        if (!eq) continue; /* the CLI already refused these */
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(eq - *pp), *pp);
        const char *v = eq + 1;
        if (strncmp(key, "dlq.", 4) == 0) continue;
        if (strcmp(key, "sessionizer.startup.timeout.ms") == 0 ||
            strcmp(key, "sessionizer.rebalance.wait.ms") == 0 ||
            strcmp(key, "sessionizer.idle.ms") == 0) {
            int64_t *dst = key[12] == 's' ? &ks->startup_ms
                           : key[12] == 'r' ? &ks->rebalance_wait_ms : &ks->idle_ms;
            if (parse_ms(v, dst)) {
                snprintf(err, errlen, "-X %s=%s: expected milliseconds (0 to 86400000)", key, v);
                return -1;
            }
            continue;
        }
        if (strncmp(key, "sessionizer.", 12) == 0) {
            snprintf(err, errlen, "unknown property -X %s (the sessionizer ones are "
                     "sessionizer.startup.timeout.ms, sessionizer.rebalance.wait.ms and "
                     "sessionizer.idle.ms)", key);
            return -1;
        }
        if (strcmp(key, "bootstrap.servers") == 0 || strcmp(key, "metadata.broker.list") == 0 ||
            strcmp(key, "group.id") == 0) {
            snprintf(err, errlen, "-X %s: give the brokers in the URI (kafka://HOST:PORT/TOPIC) "
                     "and the group with --group", key);
            return -1;
        }
        if (strcmp(key, "enable.auto.commit") == 0 ||
            strcmp(key, "enable.auto.offset.store") == 0 ||
            strcmp(key, "enable.partition.eof") == 0 || strcmp(key, "group.protocol") == 0) {
            snprintf(err, errlen, "-X %s cannot be changed: sessionizer keeps its positions "
                     "in the checkpoint and commits them to the group itself", key);
            return -1;
        }
        if (strcmp(key, "partition.assignment.strategy") == 0 && strstr(v, "cooperative")) {
            snprintf(err, errlen, "-X %s=%s: cooperative assignors are not supported (one "
                     "instance reads every partition, see docs/kafka.md)", key, v);
            return -1;
        }
        if (strcmp(key, "auto.offset.reset") == 0) ks->reset_is_error = strcmp(v, "error") == 0;
        if (strcmp(key, "session.timeout.ms") == 0 && parse_ms(v, &ks->session_timeout_ms)) {
            snprintf(err, errlen, "-X %s=%s: expected milliseconds", key, v);
            return -1;
        }
        if (strcmp(key, "debug") == 0) ks->debug = 1;
        if (conf_set(conf, key, v, err, errlen)) return -1;
    }
    return 0;
}

static void destroy(kafka_source *ks)
{
    if (!ks) return;
    if (ks->rk) {
        if (ks->q) rd_kafka_queue_destroy(ks->q);
        rd_kafka_destroy(ks->rk);
    }
    if (ks->ring_init) {
        pthread_mutex_destroy(&ks->ring_mu);
        pthread_cond_destroy(&ks->ring_data);
        pthread_cond_destroy(&ks->ring_space);
        pthread_cond_destroy(&ks->ring_done);
    }
    free(ks->parts);
    free(ks->brokers);
    free(ks->topic);
    free(ks->group);
    free(ks->describe);
    free(ks->identity);
    if (ks->ctx && ks->ctx->kafka_source == &ks->base) ks->ctx->kafka_source = NULL;
    free(ks);
}

/* One metadata request for the topic, answered or not within timeout_ms.
 * rd_kafka_metadata keeps to its timeout whatever the cluster's state (it
 * waits for a usable broker, then for the answer, both bounded), unlike
 * rd_kafka_query_watermark_offsets, which waits for its answer without bound
 * while the partition's leader is unknown (all brokers down): so this is the
 * only request the job's thread makes to the cluster after open(). */
static rd_kafka_resp_err_t topic_metadata(kafka_source *ks, const struct rd_kafka_metadata **md,
                                          int timeout_ms)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(ks->rk, ks->topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(ks->rk, 0, rkt, md, timeout_ms);
    rd_kafka_topic_destroy(rkt);
    if (e) *md = NULL;
    return e;
}

/* Waits for the cluster to answer a metadata request for the topic, serving
 * error_cb meanwhile so that the failure names its cause. A stop request
 * ends the wait within STOP_POLL_MS. */
static int wait_for_cluster(kafka_source *ks, char *err, size_t errlen)
{
    int64_t deadline = mono_ms() + ks->startup_ms;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
    for (;;) {
        if (job_stopping(ks->ctx)) {
            snprintf(err, errlen, "stopped while waiting for the Kafka cluster at %s (%s%s%s); "
                     "nothing was read", ks->brokers, rd_kafka_err2str(e),
                     ks->last_err_str[0] ? "; last error: " : "", ks->last_err_str);
            return -1;
        }
        int64_t left = deadline - mono_ms();
        if (left <= 0) break;
        e = topic_metadata(ks, &md, (int)(left < STOP_POLL_MS ? left : STOP_POLL_MS));
        rd_kafka_poll(ks->rk, 0);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
    }
    if (!md) {
        snprintf(err, errlen, "cannot reach the Kafka cluster at %s within %.1f s (%s%s%s). "
                 "Check the address in --source, or wait longer with "
                 "-X sessionizer.startup.timeout.ms=MS", ks->brokers,
                 (double)ks->startup_ms / 1000.0, rd_kafka_err2str(e),
                 ks->last_err_str[0] ? "; last error: " : "", ks->last_err_str);
        return -1;
    }
    int rc = 0;
    if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt <= 0) {
        rd_kafka_resp_err_t te = md->topic_cnt == 1 ? md->topics[0].err
                                                    : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        if (te == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || te == RD_KAFKA_RESP_ERR_NO_ERROR)
            snprintf(err, errlen, "topic '%s' does not exist on the Kafka cluster at %s "
                     "(sessionizer does not create its input topic)", ks->topic, ks->brokers);
        else
            snprintf(err, errlen, "topic '%s' on %s: %s", ks->topic, ks->brokers,
                     rd_kafka_err2str(te));
        rc = -1;
    } else {
        grow_parts(ks, md->topics[0].partition_cnt);
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

static source *kafka_open(const char *target, const source_options *opts, char *err,
                          size_t errlen)
{
    if (strncmp(target, "//", 2) != 0) {
        snprintf(err, errlen, "Kafka source '%s': expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC",
                 target);
        return NULL;
    }
    const char *hosts = target + 2, *slash = strchr(hosts, '/');
    if (!slash || slash == hosts || !valid_topic(slash + 1)) {
        snprintf(err, errlen, "Kafka source 'kafka:%s': expected kafka://HOST:PORT[,HOST:PORT...]"
                 "/TOPIC with a topic of letters, digits, '.', '_' and '-'", target);
        return NULL;
    }
    kafka_source *ks = xcalloc(1, sizeof *ks);
    ks->brokers = xstrndup(hosts, (size_t)(slash - hosts));
    ks->topic = xstrdup(slash + 1);
    ks->group = xstrdup(opts->group && *opts->group ? opts->group : "sessionizer");
    ks->props = opts->props;
    ks->ctx = opts->ctx;
    ks->until_end = opts->until_end;
    ks->max_record = opts->max_record_bytes ? opts->max_record_bytes : (1u << 20);
    ks->io = opts->ctx && opts->ctx->status ? &opts->ctx->status->source : NULL;
    ks->startup_ms = DEFAULT_STARTUP_MS;
    ks->rebalance_wait_ms = -1; /* derived from the session timeout */
    ks->session_timeout_ms = DEFAULT_SESSION_TIMEOUT_MS;
    ks->idle_ms = DEFAULT_IDLE_MS;
    ks->reset_is_error = 1;
    ks->ts_type = -1;
    size_t dn = strlen(ks->topic) + strlen(ks->brokers) + strlen(ks->group) + 64;
    ks->describe = xmalloc(dn);
    snprintf(ks->describe, dn, "kafka topic %s at %s (group %s)", ks->topic, ks->brokers,
             ks->group);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", ks->brokers, err, errlen) ||
        conf_set(conf, "group.id", ks->group, err, errlen) ||
        conf_set(conf, "client.id", "sessionizer", err, errlen) ||
        conf_set(conf, "auto.offset.reset", "error", err, errlen) ||
        conf_set(conf, "session.timeout.ms", DEFAULT_SESSION_TIMEOUT, err, errlen) ||
        /* librdkafka checks queued.min.messages against the consumer queue
         * that every partition forwards to, i.e. against the total: with the
         * default (100000) and many partitions the fetcher stops after one
         * round and waits for the queue to drain, stalling up to a second at
         * a time. The queue stays bounded by queued.max.messages.kbytes. */
        conf_set(conf, "queued.min.messages", "1000000", err, errlen) ||
        apply_props(ks, conf, err, errlen) ||
        conf_set(conf, "enable.auto.commit", "false", err, errlen) ||
        conf_set(conf, "enable.auto.offset.store", "false", err, errlen) ||
        conf_set(conf, "enable.partition.eof", "true", err, errlen)) {
        rd_kafka_conf_destroy(conf);
        destroy(ks);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, commit_cb);
    char why[512];
    ks->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    if (!ks->rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "Kafka consumer for %s: %s", ks->describe, why);
        destroy(ks);
        return NULL;
    }
    ks->starting = 1;
    if (wait_for_cluster(ks, err, errlen)) {
        destroy(ks);
        return NULL;
    }
    /* The cluster's id names the log with the topic, whatever the bootstrap
     * list says (brokers added, renamed or listed in another order). A
     * cluster too old to have one (Kafka < 0.10.1) binds the checkpoint to
     * the bootstrap list, as the URI did. */
    char *cluster = rd_kafka_clusterid(ks->rk, 2000);
    size_t in = strlen(ks->topic) + strlen(cluster ? cluster : ks->brokers) + 32;
    ks->identity = xmalloc(in);
    snprintf(ks->identity, in, cluster ? "kafka:cluster=%s/topic=%s" : "kafka:bootstrap=%s/topic=%s",
             cluster ? cluster : ks->brokers, ks->topic);
    if (cluster) rd_kafka_mem_free(ks->rk, cluster);
    /* Where each partition starts without a checkpoint, and where it ends for
     * --until-end: both need the watermarks now, bounded by the same
     * start-up deadline. */
    int64_t deadline = mono_ms() + ks->startup_ms;
    for (int32_t p = 0; p < ks->n_parts; p++) {
        int64_t lo = 0, hi = 0, left = deadline - mono_ms();
        if (job_stopping(ks->ctx)) {
            snprintf(err, errlen, "stopped while reading the offsets of %s; nothing was read",
                     ks->describe);
            destroy(ks);
            return NULL;
        }
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
            ks->rk, ks->topic, p, &lo, &hi, (int)(left > 1000 ? left : 1000));
        if (e) {
            snprintf(err, errlen, "cannot read the offsets of %s partition %d: %s", ks->topic,
                     (int)p, rd_kafka_err2str(e));
            destroy(ks);
            return NULL;
        }
        kpart *kp = &ks->parts[p];
        kp->low = lo;
        kp->high = hi;
        kp->end = hi;
        kp->pos = opts->start_latest ? hi : lo;
        kp->eof_at = -1;
    }
    if (ks->until_end) {
        ks->done = 0;
        for (int32_t p = 0; p < ks->n_parts; p++) ks->done += ks->parts[p].pos >= ks->parts[p].end;
    }
    ks->starting = 0;
    ks->q = rd_kafka_queue_get_consumer(ks->rk);
    rd_kafka_poll_set_consumer(ks->rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, ks->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(ks->rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        snprintf(err, errlen, "cannot subscribe to %s: %s", ks->topic, rd_kafka_err2str(e));
        destroy(ks);
        return NULL;
    }
    ks->base.ops = &kafka_source_ops;
    ks->opened_ms = mono_ms();
    if (ks->ctx) ks->ctx->kafka_source = &ks->base;
    return &ks->base;
}

/* ---- reading ------------------------------------------------------------ */

static void log_ts_type(kafka_source *ks, rd_kafka_timestamp_type_t t)
{
    if ((int)t == ks->ts_type) return;
    ks->ts_type = (int)t;
    const char *name = t == RD_KAFKA_TIMESTAMP_CREATE_TIME       ? "CreateTime"
                       : t == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? "LogAppendTime"
                                                                 : "no";
    log_info("kafka", "topic %s records carry %s timestamps; session ids use (timestamp, "
             "partition, offset) of a session's earliest record%s",
            ks->topic, name,
            t == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? " (timestamp taken as 0)" : "");
}

static void advance(kafka_source *ks, kpart *kp, int64_t next)
{
    if (ks->until_end && kp->pos < kp->end && next >= kp->end) ks->done++;
    kp->pos = next;
}

/* Takes one message from librdkafka. Returns 1 when it is a record to
 * deliver (then it joins ks->recent), 0 when it was consumed otherwise. */
static int take(kafka_source *ks, rd_kafka_message_t *m, raw_record *out)
{
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->rkt &&
            m->partition >= 0 && m->partition < ks->n_parts) {
            kpart *kp = &ks->parts[m->partition];
            /* Everything below the end offset was delivered (or never will
             * be: transaction markers, compacted records): move past it, but
             * never past --until-end's end, whose records beyond were dropped. */
            int64_t to = ks->until_end && m->offset > kp->end ? kp->end : m->offset;
            if (kp->assigned && to > kp->pos) advance(ks, kp, to);
            if (m->offset > kp->high) kp->high = m->offset;
            if (kp->assigned) kp->eof_at = m->offset;
            if (ks->outage_since_ms) {
                io_status_up(ks->io);
                log_info("kafka", "cluster reachable again after %.1f s",
                         (double)(mono_ms() - ks->outage_since_ms) / 1000.0);
                ks->outage_since_ms = 0;
            }
        } else {
            on_error(ks, m->err, rd_kafka_message_errstr(m));
        }
        retire(ks, m);
        return 0;
    }
    int32_t p = m->partition;
    if (p < 0 || p >= ks->n_parts || !ks->parts[p].assigned) {
        retire(ks, m); /* from an assignment we no longer hold */
        return 0;
    }
    kpart *kp = &ks->parts[p];
    if ((kp->pos >= 0 && m->offset < kp->pos) || (ks->until_end && m->offset >= kp->end)) {
        retire(ks, m); /* already applied, or beyond --until-end */
        return 0;
    }
    if (ks->outage_since_ms) {
        io_status_up(ks->io);
        log_info("kafka", "cluster reachable again after %.1f s",
                 (double)(mono_ms() - ks->outage_since_ms) / 1000.0);
        ks->outage_since_ms = 0;
    }
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    if ((int)tt != ks->ts_type) log_ts_type(ks, tt);
    out->has_ts = !(tt == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || ts < 0);
    out->pos.append_ts_ms = out->has_ts ? ts : 0;
    out->pos.partition = p;
    out->pos.offset = m->offset;
    out->line = 0;
    out->data = m->payload ? m->payload : "";
    out->len = m->len;
    out->oversized = m->len > ks->max_record;
    out->full_len = m->len;
    if (out->oversized) out->len = ks->max_record;
    out->key = m->key;
    out->key_len = m->key ? m->key_len : 0;
    out->origin = m;
    advance(ks, kp, m->offset + 1);
    kp->last_ms = ks->batch_ms;
    ks->quiet = 0;
    rd_kafka_message_t **slot = &ks->recent[ks->recent_i++ % RECENT];
    if (*slot) retire(ks, *slot);
    *slot = m;
    return 1;
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

static int start_thread(kafka_source *ks, char *err, size_t errlen)
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
    int e = pthread_create(&ks->thread, NULL, consumer_thread, ks);
    if (e) {
        snprintf(err, errlen, "reading %s: cannot start the consumer thread: %s", ks->describe,
                 strerror(e));
        return -1;
    }
    ks->thread_started = 1;
    return 0;
}

/* Job: an event from the consumer thread, in its place among the messages. */
static void handle_event(kafka_source *ks, kevent *ev)
{
    switch (ev->kind) {
    case EV_ERROR:
        on_error(ks, ev->err, ev->reason);
        break;
    case EV_COMMIT:
        on_commit(ks, ev->err);
        break;
    case EV_FAIL:
        fail(ks, "reading %s: %s", ks->describe, ev->reason);
        break;
    case EV_REBALANCE:
        rebalance(ks, ks->rk, ev->err, ev->list);
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
static void stop_thread(kafka_source *ks)
{
    if (!ks->thread_started) return;
    atomic_store(&ks->stop, 1);
    rd_kafka_queue_yield(ks->q);
    for (;;) {
        const kentry *e;
        while ((e = ring_peek(ks))) {
            kentry c = *e;
            ring_pop(ks, &c);
            if (c.m) rd_kafka_message_destroy(c.m);
            else handle_event(ks, c.ev);
        }
        if (atomic_load(&ks->exited) && ks->head == atomic_load(&ks->ring_tail)) break;
        ring_wait_data(ks, 10);
    }
    ring_publish_head(ks);
    pthread_join(ks->thread, NULL);
    ks->thread_started = 0;
    for (size_t i = atomic_load(&ks->retire_head); i != ks->r_tail; i++)
        rd_kafka_message_destroy(ks->retired[i % RETIRE_RING]);
}

static int kafka_poll(source *s, raw_record *out, int timeout_ms, char *err, size_t errlen)
{
    kafka_source *ks = (kafka_source *)s;
    int waited = 0;
    for (;;) {
        if (ks->fatal) {
            snprintf(err, errlen, "%s", ks->fatal_msg);
            return SOURCE_ERROR;
        }
        if (ks->until_end && ks->done >= ks->n_parts) return SOURCE_END;
        const kentry *e = ring_peek(ks);
        if (e) {
            kentry c = *e;
            if (!c.m) {
                ring_pop(ks, &c);
                handle_event(ks, c.ev);
                continue;
            }
            /* The first record after the input went quiet: partitions that
             * count as caught up (empty ones, idle ones) would let it advance
             * the closing watermark to its own partition's, while a record
             * produced at the same moment to another partition may be a
             * fetch behind (the reference walkthrough produces B and C
             * together, to different partitions). Return IDLE once first, so
             * that the job refreshes the caught-up flags, which stay down for
             * sessionizer.idle.ms after a burst begins. A steady stream has
             * no quiet moment and is not affected; a trickle closes sessions
             * in steps of sessionizer.idle.ms. */
            if (!ks->until_end && !c.m->err && ks->quiet &&
                ks->batch_ms - ks->burst_ms >= ks->idle_ms) {
                ks->burst_ms = ks->batch_ms;
                ks->quiet = 0;
                return SOURCE_IDLE;
            }
            ring_pop(ks, &c);
            if (take(ks, c.m, out)) return SOURCE_RECORD;
            continue; /* the loop's top reports a failure or the end first */
        }
        if (ks->paused_since_ms && mono_ms() - ks->paused_since_ms > pause_limit_ms(ks)) {
            snprintf(err, errlen, "consumer group %s has another member holding part of topic "
                     "%s (for more than %.0f s). One sessionizer instance must read every "
                     "partition (a user's visits may be in any of them), so this one %s. Stop "
                     "the other member, or use another --group", ks->group, ks->topic,
                     (double)pause_limit_ms(ks) / 1000.0,
                     ks->ever_active ? "stops; a restart resumes from its checkpoint"
                                     : "refuses to run");
            return SOURCE_ERROR;
        }
        if (!ks->ever_active && !ks->paused_since_ms && !ks->wait_logged &&
            mono_ms() - ks->opened_ms > 10000) {
            ks->wait_logged = 1;
            log_warn("kafka", "still waiting for group %s to assign the partitions of %s (a "
                     "member that crashed stays in the group until its session times out)",
                     ks->group, ks->topic);
        }
        if (waited) {
            ks->quiet = 1;
            return SOURCE_IDLE;
        }
        /* The thread starts at the first poll, after seek(). */
        if (!ks->thread_started && start_thread(ks, err, errlen)) return SOURCE_ERROR;
        waited = 1;
        /* In steps shorter than JOB_STALL_MS: a job that waits is alive. */
        ring_wait_data(ks, timeout_ms < JOB_STALL_MS / 2 ? timeout_ms : JOB_STALL_MS / 2);
    }
}

/* ---- positions ---------------------------------------------------------- */

/* Position: le32 version, le32 count, then per partition le32 id, le64 next
 * offset (negative: from the log start). */
static void kafka_position(source *s, buf *out)
{
    kafka_source *ks = (kafka_source *)s;
    buf_put_u32le(out, POSITION_VERSION);
    buf_put_u32le(out, (uint32_t)ks->n_parts);
    for (int32_t p = 0; p < ks->n_parts; p++) {
        buf_put_u32le(out, (uint32_t)p);
        buf_put_i64le(out, ks->parts[p].pos);
    }
}

static int kafka_seek(source *s, const void *pos, size_t len, char *err, size_t errlen)
{
    kafka_source *ks = (kafka_source *)s;
    reader r;
    reader_init(&r, pos, len);
    uint32_t version = 0, n = 0;
    reader_u32le(&r, &version);
    reader_u32le(&r, &n);
    if (r.bad || version != POSITION_VERSION || n > 1000000 || reader_left(&r) != (size_t)n * 12) {
        snprintf(err, errlen, "the checkpoint's position for %s is not a Kafka position "
                 "(was it written for another source?)", ks->describe);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = 0;
        int64_t off = 0;
        reader_u32le(&r, &id);
        reader_i64le(&r, &off);
        if (id >= (uint32_t)ks->n_parts) {
            snprintf(err, errlen, "the checkpoint has a position for partition %u of topic %s, "
                     "which has only %d partitions now: was the topic deleted and recreated? "
                     "Use a new --checkpoint directory to reprocess it", id, ks->topic,
                     (int)ks->n_parts);
            return -1;
        }
        kpart *kp = &ks->parts[id];
        if (off >= 0 && off > kp->high) {
            snprintf(err, errlen, "the checkpoint resumes %s partition %u at offset %" PRId64
                     " but the partition ends at %" PRId64 ": the topic was recreated, or this "
                     "is another cluster. Use a new --checkpoint directory to reprocess it",
                     ks->topic, id, off, kp->high);
            return -1;
        }
        if (off >= 0 && off < kp->low) {
            if (ks->reset_is_error) {
                snprintf(err, errlen, "the checkpoint resumes %s partition %u at offset %" PRId64
                         " but the log now starts at %" PRId64 ": %" PRId64 " records were "
                         "deleted (retention) before they were read. To go on without them, "
                         "rerun with -X auto.offset.reset=earliest; to reprocess what is left, "
                         "use a new --checkpoint directory", ks->topic, id, off, kp->low,
                         kp->low - off);
                return -1;
            }
            log_warn("kafka", "%s partition %u: offsets %" PRId64 " to %" PRId64 " were deleted "
                     "before they were read; going on without them (auto.offset.reset)",
                     ks->topic, id, off, kp->low - 1);
            off = kp->low;
        }
        kp->pos = off >= 0 ? off : OFFSET_UNKNOWN;
    }
    if (ks->until_end) {
        ks->done = 0;
        for (int32_t p = 0; p < ks->n_parts; p++)
            ks->done += ks->parts[p].pos >= ks->parts[p].end;
    }
    return 0;
}

static void kafka_committed(source *s)
{
    kafka_source *ks = (kafka_source *)s;
    if (!ks->active) return; /* the group would refuse a commit from a non-member */
    /* During an outage a commit would only queue up behind the coordinator,
     * and hold up a shutdown; the next checkpoint commits newer offsets. */
    if (ks->outage_since_ms) return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(ks->n_parts);
    for (int32_t p = 0; p < ks->n_parts; p++)
        if (ks->parts[p].assigned && ks->parts[p].pos >= 0)
            rd_kafka_topic_partition_list_add(l, ks->topic, p)->offset = ks->parts[p].pos;
    if (l->cnt > 0) rd_kafka_commit(ks->rk, l, 1);
    rd_kafka_topic_partition_list_destroy(l);
}

static size_t kafka_partitions(source *s, partition_info *out, size_t max)
{
    kafka_source *ks = (kafka_source *)s;
    int64_t now = mono_ms();
    /* A quiet stream gives no sign that an outage is over (no record, no
     * new end-of-partition event): ask, briefly, every few seconds. */
    if (ks->outage_since_ms && now - ks->outage_probe_ms >= 5000) {
        const struct rd_kafka_metadata *md;
        ks->outage_probe_ms = now;
        if (topic_metadata(ks, &md, STOP_POLL_MS) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_metadata_destroy(md);
            io_status_up(ks->io);
            log_info("kafka", "cluster reachable again after %.1f s",
                     (double)(mono_ms() - ks->outage_since_ms) / 1000.0);
            ks->outage_since_ms = 0;
        }
    }
    for (int32_t p = 0; p < ks->n_parts && (size_t)p < max; p++) {
        kpart *kp = &ks->parts[p];
        int64_t end;
        int caught_up;
        if (ks->until_end) {
            end = kp->end;
            caught_up = kp->pos >= end;
        } else {
            /* Caught up: the fetcher reported the end of the partition, no
             * record was delivered since, and none for sessionizer.idle.ms
             * (Flink's "idleness"). The high watermark alone would do for
             * the lag but not for this: after a pause or a restart it can be
             * stale. And a partition taken for caught up stops holding back
             * the closing watermark, so a backlog, or a burst that arrives
             * right after the end was seen, would turn late if it lagged the
             * other partitions by more than the lateness. */
            int64_t lo = -1, hi = -1;
            if (rd_kafka_get_watermark_offsets(ks->rk, ks->topic, p, &lo, &hi) == 0 &&
                hi > kp->high)
                kp->high = hi;
            end = kp->high;
            caught_up = kp->assigned && kp->eof_at >= 0 && kp->pos == kp->eof_at &&
                        (kp->last_ms == 0 || now - kp->last_ms >= ks->idle_ms) &&
                        now - ks->burst_ms >= ks->idle_ms;
        }
        int64_t lag = kp->pos < 0 || end < 0 ? -1 : end > kp->pos ? end - kp->pos : 0;
        out[p] = (partition_info){.partition = p, .caught_up = caught_up, .lag = lag};
    }
    return (size_t)ks->n_parts;
}

static const char *kafka_describe(source *s) { return ((kafka_source *)s)->describe; }

static void kafka_identity(source *s, buf *out) { buf_append_str(out, ((kafka_source *)s)->identity); }

/* Leaves the consumer group, serving the last callbacks (the revocation)
 * on this thread, for at most LEAVE_WAIT_MS: rd_kafka_consumer_close can
 * block for up to session.timeout.ms (while a rebalance is under way), and
 * a stop must not wait that long. Returns 1 when the consumer is closed. */
static int leave_group(kafka_source *ks)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(ks->rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(ks->rk, q);
    int closed = 0;
    if (e) {
        rd_kafka_error_destroy(e);
    } else {
        int64_t deadline = mono_ms() + LEAVE_WAIT_MS;
        while (!(closed = rd_kafka_consumer_closed(ks->rk)) && mono_ms() < deadline)
            rd_kafka_queue_poll_callback(q, 50);
        if (!closed)
            log_warn("kafka", "leaving group %s takes more than %.0f s; going without (the "
                     "group drops this member when its session times out)", ks->group,
                     LEAVE_WAIT_MS / 1000.0);
    }
    rd_kafka_queue_destroy(q);
    return closed;
}

static void kafka_close(source *s)
{
    kafka_source *ks = (kafka_source *)s;
    if (!ks) return;
    for (size_t i = 0; i < RECENT; i++)
        if (ks->recent[i]) rd_kafka_message_destroy(ks->recent[i]);
    /* Leave the group now rather than when its session times out, so that
     * another instance can take over at once. */
    ks->closing = 1;
    /* From here on librdkafka serves its callbacks on this thread (in
     * leave_group). */
    stop_thread(ks);
    /* No reference of ours into the consumer may outlive the close. */
    rd_kafka_queue_destroy(ks->q);
    ks->q = NULL;
    /* Leaving needs the coordinator: during an outage it would wait for it
     * in vain, so do not even try. */
    if (ks->outage_since_ms || !leave_group(ks)) {
        /* The group evicts us when our session expires, as it would a
         * crashed member; positions are ours, so nothing is lost. */
        rd_kafka_destroy_flags(ks->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        ks->rk = NULL;
    }
    destroy(ks);
}

/* ---- shared with the Kafka dead-letter output (kafka.h) ----------------- */

static const kafka_source *lent(const job_context *ctx)
{
    return ctx && ctx->kafka_source && ctx->kafka_source->ops == &kafka_source_ops
               ? (const kafka_source *)ctx->kafka_source
               : NULL;
}

const char *kafka_source_bootstrap(const job_context *ctx)
{
    const kafka_source *ks = lent(ctx);
    return ks ? ks->brokers : NULL;
}

const char *const *kafka_source_props(const job_context *ctx)
{
    const kafka_source *ks = lent(ctx);
    return ks ? ks->props : NULL;
}

const source_ops kafka_source_ops = {
    .scheme = "kafka",
    .usage = "kafka://HOST:PORT[,HOST:PORT...]/TOPIC  a Kafka topic, every partition "
             "(-X, --group, --start)",
    .open = kafka_open,
    .poll = kafka_poll,
    .position = kafka_position,
    .seek = kafka_seek,
    .committed = kafka_committed,
    .partitions = kafka_partitions,
    .describe = kafka_describe,
    .identity = kafka_identity,
    .close = kafka_close,
};
