/*
 * pg_conn.h - one PostgreSQL connection that never blocks for longer than
 * its io_timeout, gives up on a stop request, and retries what can be
 * retried: the mechanism the PostgreSQL sink (postgresql.c) and the
 * scale-out's task state store (task/task_store.c) share, so that both wait,
 * time out, classify failures and stop the same way.
 *
 * How (the why is docs/postgresql.md's and guarantees.md's):
 *  - libpq in non-blocking mode; every wait for the socket is a poll of at
 *    most RETRY_SLICE_MS, so the stop flag and the io_timeout deadline are
 *    seen within that. A statement in flight when the job is asked to stop
 *    gets RETRY_STOP_GRACE_MS to be answered (a healthy server finishes a
 *    final COMMIT) and no longer (a hung one does not hold the stop).
 *  - A statement that does not answer within io_timeout, or a stop, drops
 *    the connection rather than sending a cancel request (the server or
 *    network that did not answer would most likely leave PQcancel() blocked
 *    too): from PostgreSQL 14 the backend notices the vanished client by
 *    itself (client_connection_check_interval, set at connect) and rolls
 *    back, releasing its locks.
 *  - Failures are classified by SQLSTATE (pg_sqlstate_transient): transient
 *    ones (connection lost or refused, server starting or shutting down,
 *    serialization failure, deadlock, too many connections, a standby,
 *    io_timeout) are retried by pg_conn_retry on a fresh connection, the
 *    whole operation again, with the common backoff (common/retry.h), until
 *    retry_timeout or a stop; permanent ones (authentication, privileges,
 *    data the server refuses) fail at once. An operation retried this way
 *    must be one transaction that is safe to run again from its start.
 *  - Connection-time errors carry no SQLSTATE in libpq's API, so connections
 *    are made with verbose messages, which put it in the text.
 *  - Every message passes through pg_conninfo_redact(): no password leaves.
 */
#ifndef SESSIONIZER_PG_CONN_H
#define SESSIONIZER_PG_CONN_H

#include <libpq-fe.h>
#include <signal.h>
#include <stddef.h>

#include "common/retry.h"
#include "common/status.h"
#include "sink/pg_conninfo.h"

enum { PG_OK = 0, PG_TRANSIENT = 1, PG_PERMANENT = 2 };

#define PG_DEFAULT_RETRY_TIMEOUT_MS (10LL * 60 * 1000)
#define PG_DEFAULT_BACKOFF_MAX_MS (10LL * 1000)
#define PG_BACKOFF_START_MS 100LL
#define PG_DEFAULT_IO_TIMEOUT_MS (60LL * 1000)

typedef struct pg_conn {
    /* Set by the owner (pg_conn_init gives the defaults). */
    const char *who;              /* first word of every message: "postgresql", ... */
    const pg_conninfo *ci;        /* the target, its masked copy, the secrets */
    const char *password;         /* a password= setting, after the string's own; NULL: none */
    long long io_timeout_ms;      /* the longest wait for one answer */
    long long retry_timeout_ms;   /* give up retrying after this; 0: never */
    long long backoff_max_ms;
    volatile sig_atomic_t *stop;  /* the job's (context.h); NULL: never */
    job_status *status;           /* signs of life while waiting; NULL: none */
    io_status *io;                /* reachability, retries, errors; NULL: none */
    /* Run after every (re)connection, before the operation: the owner's
     * session settings and schema. Returns a PG_* class. NULL: none. */
    int (*setup)(void *ud, char *err, size_t errlen);
    void *ud;

    /* Owned by pg_conn. */
    PGconn *conn;                 /* NULL: not connected */
    retry rt;                     /* the retry under way (its stop grace) */
    char sqlstate[6];             /* the last failed command's SQLSTATE, "" if none */
} pg_conn;

/* Defaults of the settings above; ci and who are required. */
void pg_conn_init(pg_conn *c, const char *who, const pg_conninfo *ci);

/* Handles the settings every PostgreSQL client of ours takes as key=value
 * (io_timeout=, retry_timeout=, retry_backoff_max=): 1 when key is one of
 * them (0 done, -1 with err set on a bad value is returned through *rc),
 * 0 when it is not. */
int pg_conn_setting(pg_conn *c, const char *key, size_t keylen, const char *value, int *rc,
                    char *err, size_t errlen);
/* The same, as entries of a sink's settings table (sink.h's sink_setting). */
#define PG_CONN_SETTINGS                                                                     \
    {"retry_timeout", "DURATION", "10m",                                                     \
     "how long a flush (or the first connection) retries transient failures (0: forever)"},  \
    {"retry_backoff_max", "DURATION", "10s",                                                 \
     "the longest wait between two attempts (from 100ms, doubling, with jitter)"},           \
    {"io_timeout", "DURATION", "60s",                                                        \
     "the longest wait for an answer; then the connection is dropped and the flush retried"}

/* Runs op(ud) (or only connects when op is NULL), connecting first when
 * needed; a transient failure drops the connection, waits (common/retry.h)
 * and runs it again from the start, until retry_timeout or a stop. Returns
 * 0, or -1 with err set ("WHAT: gave up after...", "...interrupted..."). */
int pg_conn_retry(pg_conn *c, int (*op)(void *ud, char *err, size_t errlen), void *ud,
                  const char *what, char *err, size_t errlen);

/* Closes the connection (a zeroed or closed one is fine). */
void pg_conn_drop(pg_conn *c);

/* For the operations pg_conn_retry runs, on c->conn: each returns PG_OK or a
 * failure class with err set ("WHO: WHAT: the server's message (SQLSTATE
 * X)"). pg_conn_finish collects the result of a command sent with PQsend*
 * (sent: what PQsend* returned); with res, the result on success (the
 * caller clears it). */
int pg_conn_finish(pg_conn *c, int sent, const char *what, PGresult **res, char *err,
                   size_t errlen);
int pg_conn_exec(pg_conn *c, const char *sql, const char *what, char *err, size_t errlen);

/* Whether a failed CREATE ... IF NOT EXISTS lost a race with another
 * session creating the same object (the catalog's unique index, "type
 * already exists", "relation already exists"): the object exists now and
 * the statement is to be looked at again, not reported. */
int pg_conn_lost_create_race(const pg_conn *c);

/* SQLSTATEs that retrying on a fresh connection can fix (NULL or not five
 * characters: libpq's own, an I/O failure). */
int pg_sqlstate_transient(const char *sqlstate);

/* libpq's multi-line message on one line, LOCATION lines dropped. */
void pg_tidy_message(const char *in, char *out, size_t outlen);

/* Formats into err through pg_conninfo_redact; returns -1. */
__attribute__((format(printf, 4, 5))) int pg_conn_fail(const pg_conn *c, char *err,
                                                        size_t errlen, const char *fmt, ...);

#endif
