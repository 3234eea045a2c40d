/*
 * kafka_internal.h - what the pieces of the Kafka source share, and nothing
 * else may use (the rest of the program sees source.h only).
 *
 * The source is one object, kafka_source, split by concern so that each file
 * can be read alone:
 *   kafka.c        the source's ops: open, poll, positions, progress, close;
 *                  errors and failures
 *   kafka_ring.c   the consumer thread and the ring that hands its messages
 *                  and the callbacks' events to the job's thread
 *   kafka_group.c  the consumer group: rebalances, the assignment, the
 *                  offsets committed for lag tools, leaving
 *   kafka_conf.c   the URI, the -X properties and the defaults
 * Every field is the job's thread's unless kafka_ring.c says otherwise.
 */
#ifndef SESSIONIZER_SOURCE_KAFKA_INTERNAL_H
#define SESSIONIZER_SOURCE_KAFKA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "common/context.h"
#include "common/status.h"
#include "record/visit.h"
#include "source/source.h"
#include "task/task.h"

#define BATCH 1024       /* most messages the consumer thread takes at once */
#define RING 32768       /* messages between the consumer thread and the job, power of 2 */
#define RING_BYTES (16u << 20) /* and at most this many payload bytes (big records) */
#define JOB_STALL_MS 1000 /* the thread stops polling librdkafka when the job has not polled for this long */
#define RETIRE_RING (2 * RING) /* messages the job hands back to the thread to destroy */
#define RECENT 64 /* > the job's pipeline depth */
_Static_assert(RECENT >= RAW_RECORD_KEEP, "delivered records' keys must outlive the job's use");
#define OFFSET_UNKNOWN (-1)
/* the checkpoint's position blob: le32 version, le32 count, {le32 partition, le64 next offset} */
#define POSITION_VERSION 1u

typedef struct kpart {
    int64_t pos;      /* next offset to deliver; OFFSET_UNKNOWN: from the log start */
    int64_t end;      /* --until-end: end offset at start */
    int64_t high;     /* last known high watermark, -1 if none */
    int64_t low;      /* log start at open */
    int64_t eof_at;   /* offset of the last end-of-partition event, -1 none */
    int64_t last_ms;  /* when it last delivered a record (batch time) */
    int assigned;     /* the group gave it to us and we are reading it */
    int want;         /* caught up, as last worked out (kafka.c, refresh_marks) */
    int marked;       /* as last marked to the job; -1 never */
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
    job_context *ctx; /* the job's: its stop flag; we lend it our cluster (context.h) */
    kpart *parts;
    int32_t n_parts;
    int until_end;
    size_t max_record;
    int64_t startup_ms, rebalance_wait_ms, session_timeout_ms, idle_ms;
    int64_t batch_ms; /* when the current batch was taken from librdkafka */
    int64_t burst_ms;    /* when records came back after a pause, see poll() */
    int quiet;           /* poll returned IDLE since the last record */
    int marks_due;       /* some partition's want differs from its marked */
    int idle_owed;       /* poll found nothing, and returns IDLE after the marks */
    int32_t mark_scan;   /* next partition to look at for a due mark */
    int64_t refreshed_ms; /* when refresh_marks() last ran */
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

    int active;              /* the group gave us the whole topic and we read it */
    /* What the task this source serves makes of an assignment (task.h): its
     * context's, or own_task without a context. */
    task_assignment *task, own_task;
    int64_t opened_ms;       /* for the 'still waiting for the group' line */
    int wait_logged;
    int closing;             /* leaving the group: the revocation is ours */
    int starting;            /* in open(): errors are kept for its message */
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

/* kafka.c */
__attribute__((format(printf, 2, 3)))
void kafka_fail(kafka_source *ks, const char *fmt, ...);
/* The fetcher reached the end of partition kp at offset (its EOF event). */
void kafka_partition_eof(kafka_source *ks, kpart *kp, int64_t offset);
void kafka_on_error(kafka_source *ks, rd_kafka_resp_err_t err, const char *reason);
void kafka_destroy(kafka_source *ks);

/* kafka_ring.c: the job's side of the ring */
const kentry *kafka_ring_peek(kafka_source *ks);
void kafka_ring_pop(kafka_source *ks, const kentry *e);
void kafka_ring_wait_data(kafka_source *ks, int timeout_ms);
void kafka_retire(kafka_source *ks, rd_kafka_message_t *m);
void kafka_handle_event(kafka_source *ks, kevent *ev);
int kafka_start_thread(kafka_source *ks, char *err, size_t errlen);
void kafka_stop_thread(kafka_source *ks);
/* kafka_ring.c: the callbacks, as librdkafka's conf takes them */
void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque);
void kafka_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *offsets, void *opaque);
void kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                        rd_kafka_topic_partition_list_t *list, void *opaque);

/* kafka_group.c */
void kafka_on_commit(kafka_source *ks, rd_kafka_resp_err_t err);
void kafka_rebalance(kafka_source *ks, rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *list);
void kafka_grow_parts(kafka_source *ks, int32_t n);
group_timing kafka_group_timing(const kafka_source *ks);
void kafka_committed(source *s, const void *pos, size_t len);
int kafka_leave_group(kafka_source *ks);

/* kafka_conf.c */
kafka_source *kafka_configure(const char *target, const source_options *opts,
                              rd_kafka_conf_t **confp, char *err, size_t errlen);

#endif
