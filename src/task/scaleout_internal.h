/*
 * scaleout_internal.h - what the files of the --scale-out runtime share:
 * the instance's state (one struct, polled by one thread) and the functions
 * one part calls in another. Not an interface for the rest of the program
 * (that is scaleout.h); the why of the design is atop scaleout.c.
 *
 *   scaleout.c         the loop, start and end, --until-end across the
 *                      group, what the stages share (failure, dead
 *                      letters, parsing, the metrics)
 *   scaleout_setup.c   the librdkafka clients and the start-up checks of
 *                      the topics
 *   scaleout_stage1.c  stage 1: source partitions -> the repartition topic
 *   scaleout_tasks.c   the session tasks: stage 2's (a repartition
 *                      partition each) and --keyed-input's (a source
 *                      partition each), their state in the task store
 */
#ifndef SESSIONIZER_SCALEOUT_INTERNAL_H
#define SESSIONIZER_SCALEOUT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "checkpoint/changelog.h"
#include "common/buf.h"
#include "common/context.h"
#include "deadletter/deadletter.h"
#include "engine/engine.h"
#include "metrics/metrics.h"
#include "record/parse.h"
#include "sink/sink.h"
#include "task/repartition.h"
#include "task/scaleout.h"
#include "task/task_store.h"


#define POLL_BATCH 1000     /* messages from one consumer before turning to the other */
#define MARKER_MS 200       /* stage 1 broadcasts progress markers this often */
#define DONE_CHECK_MS 500   /* --until-end: how often the group's progress is read */
#define META_TIMEOUT_MS 10000
#define CREATE_TIMEOUT_MS 5000
#define BATCH_BYTES 65536   /* a repartition batch's size, at most (a lone visit may exceed it) */
#define MAX_SRC_PARTITIONS 100000

typedef struct s1part {
    int assigned;
    int held;           /* this instance has read p (the state below stays after a revocation) */
    int64_t pos;        /* next offset to read */
    int64_t max_t;      /* highest accepted event time, INT64_MIN none */
    int64_t end;        /* --until-end: the end this run stops at, -1 unknown */
    int end_sent;
    int64_t marker_pos; /* pos at the last 'W' marker */
    int64_t eof_at, last_record_ms;
    int idle_sent;
} s1part;

typedef struct so so;

typedef struct s2task {
    so *s;
    int32_t id;
    int assigned;
    engine *eng;
    int64_t pos;          /* next offset in the repartition partition (keyed: the source's) */
    int64_t end;          /* keyed --until-end: the source partition's end, -1 unknown */
    int64_t *next_seen;   /* per source partition: next offset seen from it */
    unsigned char *ended, *idle;
    int32_t n_ended;
    int done, changed;
    /* what the engine accepted since the last commit: the next frame of the
     * task's change log (task_store.h) */
    changelog_frame log;
    /* per source partition: the highest time the engine is known to have
     * (accepted visits, advances): an advance at or below it changes
     * nothing, and is neither made nor logged */
    int64_t *adv;
} s2task;

typedef struct so_stats {
    uint64_t read1, invalid1, late1, future1, produced, markers;
    uint64_t read2, dups2, visits2, late2, capped2, sessions, superseded;
} so_stats;

struct so {
    const scaleout_config *cfg;
    const job_config *jc;
    job_context ctx;   /* shared with the sink and the dead-letter output it opens */
    sink_options sink_opts;
    char *brokers, *topic, *group2, *rtopic, describe[256];
    int32_t n_src, R;
    rd_kafka_t *c1, *c2, *prod;
    s1part *p1;
    repart_batch *batch; /* stage 1's visits not yet produced, per repartition partition */
    size_t batch_cap;   /* BATCH_BYTES, or less under the producer's message.max.bytes */
    s2task *t2;
    sink *snk;
    deadletter *dlq;
    task_store *store;
    record_parser *parser;
    s2task *cur;
    const raw_record *cur_raw;
    int failed;
    char *err;
    size_t errlen;
    int64_t idle_ms;
    int outage;             /* every broker down, as last reported; see the exit */
    int unproduced;         /* a visit or marker was given up (stop): no stage 1 commit */
    int keyed;              /* --keyed-input: one stage, a task per source partition */
    so_stats st;
    /* --metrics-listen: this instance's figures (so_publish); NULL: none */
    metrics_snapshot *m;
    int64_t last_publish;
    uint64_t acc_applied, acc_opened, acc_merged; /* counters of the engines already dropped */
    uint64_t sessions_flushed;       /* st.sessions at the last sink flush */
    buf scratch, rec;
};

static inline int stopping(const so *s) { return s->jc->stop && *s->jc->stop; }

/* --user-type string: the repartition's batches are version 3, the task
 * store's change log carries the users' bytes. Every instance of a group
 * must run with the same type; records and stored tasks say theirs (the
 * store refuses a task of the other type with the same words). */
static inline int string_users(const so *s) { return s->jc->records.user_type == USER_STRING; }
#define OTHER_USER_TYPE "(every instance of a group needs the same --user-type: a new --group " \
                        "starts over with another)"

/* scaleout.c */
/* Records the first failure (err) and makes the loop end; later ones are
 * consequences. */
__attribute__((format(printf, 2, 3)))
void so_fail(so *s, const char *fmt, ...);
void so_write_dl(so *s, const char *reason, const char *detail, const raw_record *raw,
                 const visit *v);
void so_count_read(so *s, int32_t p);
void so_publish(so *s);
parse_error so_parse_message(so *s, const rd_kafka_message_t *m, raw_record *raw, visit *v,
                             char *detail, size_t detail_len);

/* scaleout_setup.c */
void so_on_error(rd_kafka_t *rk, int e, const char *reason, void *opaque);
/* stage: 1 (source, stage 1), 2 (repartition topic), 3 (source, keyed tasks) */
rd_kafka_t *so_new_consumer(so *s, const char *group, int stage, char *err, size_t errlen);
rd_kafka_t *so_new_producer(so *s, char *err, size_t errlen);
int so_topic_partitions(rd_kafka_t *rk, const char *topic, int32_t *n, char *err, size_t errlen);
int so_check_internal_topic(so *s, char *err, size_t errlen);

/* scaleout_stage1.c */
void s1_flush(so *s);
void s1_message(so *s, rd_kafka_message_t *m);
void s1_commit(so *s, int quiet);
void s1_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l,
                  void *opaque);
void s1_markers(so *s, int64_t now);

/* scaleout_tasks.c */
void s2_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l,
                  void *opaque);
void s2_message(so *s, rd_kafka_message_t *m);
int s2_commit(so *s, int suspending);
void k_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *l,
                 void *opaque);
void k_message(so *s, rd_kafka_message_t *m);

#endif
