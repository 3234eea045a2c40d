/*
 * pg_sink.h - what the files of the PostgreSQL sink share (postgresql.c,
 * pg_setup.c, pg_write.c; pg_conninfo.h and pg_conn.h are the connection
 * string's and the connection's own). Internal to the sink: the rest of the
 * program sees sink.h.
 */
#ifndef SESSIONIZER_SINK_PG_SINK_H
#define SESSIONIZER_SINK_PG_SINK_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "sink/pg_conn.h"
#include "sink/pg_conninfo.h"
#include "sink/sink.h"

/* Type OIDs (fixed in PostgreSQL's catalog; the server headers that name them
 * are not part of libpq-dev). */
#define PG_INT8OID 20
#define PG_TEXTOID 25
#define PG_INT8ARRAYOID 1016
#define PG_TEXTARRAYOID 1009
#define PG_TIMESTAMPTZOID 1184
#define PG_TIMESTAMPTZARRAYOID 1185
#define PG_INTERVALOID 1186
#define PG_INTERVALARRAYOID 1187
#define PG_TEXTARRAYARRAY "text[]"
/* PostgreSQL's binary timestamps count microseconds from 2000-01-01. */
#define PG_EPOCH_US 946684800000000LL
#define PG_STMT_NAME "sessionizer_upsert"
/* The largest message the server accepts (and the largest value): 1 GB - 1. */
#define PG_MAX_MESSAGE_BYTES 0x3fffffff

typedef struct pg_row {
    int64_t session_id;
    int64_t user_id;
    size_t off; /* pages as an array literal, in pg_sink.literals */
    size_t len;
    size_t user_off, user_len; /* string users: their bytes, in pg_sink.literals */
    int64_t first_us, last_us;
    uint64_t visits;
} pg_row;

/* The sessions of one flush (one transaction), deduplicated on the key. */
typedef struct pg_batch {
    pg_row *rows;
    size_t n_rows, cap_rows;
    buf literals;    /* the rows' pages as array literals, and string users */
    uint32_t *slots; /* open addressing on (session_id, user_id): row index + 1 */
    size_t n_slots;
    uint64_t ticket; /* its flush's, once begun */
    struct pg_batch *next;
} pg_batch;

/* Flushes begun and not yet committed before flush_begin waits: one
 * committing and one waiting for it, so that the job runs ahead of the
 * server by at most one commit's worth of sessions. */
#define PG_MAX_QUEUED 2

typedef struct pg_sink {
    sink base;
    pg_conninfo ci; /* the connection string, its masked copy, the secrets */
    char *password; /* password= prop, or NULL */
    char *table_sql;     /* quoted identifier: "schema"."name" or "name" */
    char *table_display; /* as the user wrote it */
    char *identity;      /* "postgresql://HOSTS:PORTS/DB table=T", made at open */
    int create_schema;
    size_t batch_rows;   /* most rows per statement */
    size_t batch_bytes;  /* most bytes of bound parameters per statement (bar a lone row) */
    pg_conn pc;          /* connection, io_timeout, retries, stop (pg_conn.h) */
    char *upsert_sql;

    int string_users;
    unsigned columns;

    /* The job thread's: the batch write() fills, the ticket of the last
     * flush begun. */
    pg_batch *cur;
    uint64_t last_ticket;

    /* The committer (pg_write.c): once it runs it alone uses pc and the
     * parameter scratch. */
    buf p_sid, p_uid, p_pages; /* parameter scratch */
    buf p_opt[SINK_N_OPTIONAL];
    pthread_t committer;
    int committer_running;

    /* Shared, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t work;       /* for the committer: a batch, or quit */
    pthread_cond_t progress;   /* for the job: a batch committed (or failed) */
    pg_batch *queue, *queue_tail; /* flushes begun, oldest first; the head is committing */
    size_t n_queued;
    pg_batch *spare;              /* committed batches, for write() to reuse */
    flush_tickets tickets;        /* committed (or failed) */
    int quit;
} pg_sink;

/* pg_setup.c: pg_conn's setup (ud: the pg_sink) */
int pg_setup(void *ud, char *err, size_t errlen);

/* pg_write.c */
int pg_upsert(pg_sink *s, const pg_batch *b, size_t from, size_t to, const char *ts, char *err,
              size_t errlen);
char *pg_upsert_sql(const pg_sink *s);
int pg_write(sink *base, const closed_session *cs, char *err, size_t errlen);
uint64_t pg_flush_begin(sink *base);
int pg_flush_wait(sink *base, uint64_t ticket, char *err, size_t errlen);
int pg_flush(sink *base, char *err, size_t errlen);
/* The committer: started once the first connection is up, stopped (after
 * the commit in flight, if any) and its batches freed by pg_committer_stop. */
int pg_committer_start(pg_sink *s, char *err, size_t errlen);
void pg_committer_stop(pg_sink *s);

#endif
