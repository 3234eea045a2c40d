/*
 * sink.h - where closed sessions go.
 *
 * A sink is a URI scheme plus a small table of callbacks, one file per sink
 * (sqlite.c, jsonl.c, null.c, postgresql.c, cql.c), registered in sink.c the
 * way Fluent Bit registers its out_* plugins.
 *
 * Contract (the idempotency guarantee rests on it):
 *  - write() may buffer; flush() returns 0 only when every session written
 *    since the previous flush is durably acknowledged by the store. The job
 *    commits its checkpoint only after a successful flush. A sink that
 *    commits on a thread of its own may split flush() in two (flush_begin,
 *    flush_wait): the job then goes on while the store commits, and the
 *    checkpoint's writer waits for that commit before it writes the commit
 *    that counts on it (docs/checkpoint.md, "A commit").
 *  - Writes are upserts keyed on (session_id, user_id): writing the same
 *    session twice leaves one row, with the later ingestion_time.
 *  - Transient failures (lost connection, timeouts, overload) are retried
 *    inside flush() with backoff; flush() fails only for errors that retrying
 *    cannot fix (bad credentials, missing permissions, schema mismatch), or
 *    when the job is asked to stop while waiting.
 *  - ingestion_time is the wall-clock time of the write, in UTC.
 *  - Errors are written to err (never containing credentials).
 */
#ifndef SESSIONIZER_SINK_H
#define SESSIONIZER_SINK_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/context.h"
#include "engine/closed_session.h"

typedef struct sink sink;

/* Options common to every sink, parsed by the CLI. A sink reads the ones
 * that concern it and ignores the rest. */
/* Opt-in session columns (--columns), after the four of every row. Types
 * per sink: docs/semantics.md ("Session columns"). */
enum {
    SINK_COL_SESSION_START = 1u << 0, /* event time of the first visit */
    SINK_COL_SESSION_END = 1u << 1,   /* event time of the last visit */
    SINK_COL_VISIT_COUNT = 1u << 2,   /* visits, those over the page cap included */
    SINK_COL_DURATION = 1u << 3,      /* session_end - session_start */
    SINK_COL_ALL = 15u,
};
#define SINK_N_OPTIONAL 4
/* "session_start", ... in bit order. */
extern const char *const sink_column_names[SINK_N_OPTIONAL];

/* "session_start,visit_count" -> bits. 0, or -1 and err. */
int sink_parse_columns(const char *list, unsigned *out, char *err, size_t errlen);

typedef struct sink_options {
    const char *const *props; /* "key=value" pairs from --sink-opt, NULL-terminated */
    int create_schema;        /* create keyspace/table when missing (default 1) */
    int string_users;         /* user_id is text (--user-type string), not bigint */
    unsigned columns;         /* SINK_COL_* bits */
    /* The job's (context.h): a sink waiting out an outage inside flush()
     * gives up soon after its stop flag is set, and the checkpoint does not
     * advance. NULL: none. */
    job_context *ctx;
} sink_options;

/* A setting a sink takes as --sink-opt KEY=VALUE. A sink's table of them is
 * the one description its parser (sink_setting_find), --help and the man
 * page read: a key the table does not list is refused. */
typedef struct sink_setting {
    const char *key;
    const char *value; /* how VALUE is written, for the help: "N", "DURATION", ... */
    const char *def;   /* the default, a valid VALUE; NULL: none */
    const char *help;  /* what it does */
} sink_setting;

typedef struct sink_ops {
    const char *scheme; /* URI scheme without ':' ("sqlite", "jsonl", ...) */
    const char *usage;  /* one line for --help */
    /* Its --sink-opt settings, ending with a {NULL} entry; NULL: it takes
     * none, and sink_open refuses any. */
    const sink_setting *settings;
    /* Opens the sink described by the part of the URI after "scheme:". */
    sink *(*open)(const char *target, const sink_options *opts, char *err, size_t errlen);
    int (*write)(sink *s, const closed_session *cs, char *err, size_t errlen);
    int (*flush)(sink *s, char *err, size_t errlen);
    /* Optional, both or neither (flush() is then begin + wait). flush_begin
     * hands everything written so far to the store as one commit, returns at
     * once with its ticket (tickets grow; the same ticket again when nothing
     * was written since) and orders the writes after it into later commits.
     * flush_wait, from any thread, waits until the commit of that ticket
     * (and so every earlier one) is durable: 0, or -1 with the reason; after
     * a failed commit every later ticket fails too. */
    uint64_t (*flush_begin)(sink *s);
    int (*flush_wait)(sink *s, uint64_t ticket, char *err, size_t errlen);
    /* Optional: state to store in the checkpoint so that a restart can undo
     * writes that were made after the checkpoint (an append-only file
     * truncates to its checkpointed length). NULL when writes are upserts. */
    void (*save)(sink *s, buf *out);
    int (*restore)(sink *s, const void *state, size_t len, char *err, size_t errlen);
    /* The store's identity, which a checkpoint is bound to (as to its
     * source): the sessions the checkpoint counts as acknowledged are there.
     * Written so that it names the store ("sqlite:/abs/path.db"), never with
     * credentials. Two spellings of one store should give one identity. */
    void (*identity)(sink *s, buf *out);
    void (*close)(sink *s);
} sink_ops;

/* Every sink embeds this header first. */
struct sink {
    const sink_ops *ops;
};

/* Finds the sink for a URI ("sqlite:out.db", "postgresql://...") and opens it. */
sink *sink_open(const char *uri, const sink_options *opts, char *err, size_t errlen);
/* Lists the registered sinks' usage lines (for --help). */
void sink_usage(buf *out);
/* The i-th registered sink, NULL past the last (--help lists their settings). */
const sink_ops *sink_registered(size_t i);
/* Looks up one "KEY=VALUE" prop in the sink's settings: the setting, with
 * *value pointing after the '='; or NULL with err ("SCHEME: unknown option
 * 'K' (known: ...)", or not KEY=VALUE). */
const sink_setting *sink_setting_find(const sink_ops *ops, const char *prop, const char **value,
                                      char *err, size_t errlen);

/* The committed side of flush_begin/flush_wait, for a sink that commits on
 * a thread of its own (sqlite.c, pg_write.c), kept under that sink's mutex:
 * tickets finish one after another, and the first failure is sticky. */
typedef struct flush_tickets {
    uint64_t done;   /* the last ticket committed or failed */
    uint64_t failed; /* the first that failed (0: none) */
    char err[2048];  /* its reason */
} flush_tickets;

/* Under the sink's mutex: ticket (the one after done) committed, or failed
 * with failure (NULL: committed); wakes the waiters on progress. */
void flush_tickets_finish(flush_tickets *t, pthread_cond_t *progress, uint64_t ticket,
                          const char *failure);
/* flush_wait: waits (mu locked here) until ticket is finished; 0, or -1 and
 * the first failure's reason when it or an earlier ticket failed. */
int flush_tickets_wait(flush_tickets *t, pthread_mutex_t *mu, pthread_cond_t *progress,
                       uint64_t ticket, char *err, size_t errlen);

/* Shared by sinks: wall-clock now as ISO-8601 UTC with milliseconds
 * ("2024-01-27T06:20:45.422Z") and as milliseconds since the epoch. */
void sink_now_iso8601(char out[32]);
long long sink_now_ms(void);

#endif
