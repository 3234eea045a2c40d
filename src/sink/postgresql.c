/*
 * postgresql.c - the PostgreSQL sink: closed sessions upserted over libpq.
 *
 * What it is for: many teams keep their sessions in PostgreSQL, and it is the
 * production database that runs on the project's own machines, so this is
 * also where the sink contract of sink.h is held against a real server.
 *
 *   --sink postgresql://user@host:5432/db?sslmode=require   (or postgres://)
 *
 * The target is any libpq connection string: a URI (the usual case) or, after
 * "postgresql:", a "key=value ..." conninfo. Settings of the sink itself come
 * as "key=value" props (pg_settings): table=, batch_rows=, batch_bytes=,
 * retry_timeout=, retry_backoff_max=, io_timeout=, and password= (given to
 * libpq after the connection string, so it wins over one in the URI; with the
 * CLI's password=@file:PATH it never appears on the command line).
 *
 * The sink is split by concern (pg_sink.h is what its files share):
 *   postgresql.c   options, open and close, the identity (this file)
 *   pg_setup.c     the table: checked, or created, at every connection
 *   pg_write.c     the write path: write() buffers, a flush upserts in one
 *                  transaction on the sink's commit thread
 *   pg_conninfo.c  the connection string: checked, masked in messages, and
 *                  the identity a checkpoint is bound to
 *   pg_conn.c      the connection, its bounded waits, failures and retries
 *                  (shared with the scale-out's task state store)
 *
 * How it fails, and why:
 *  - Transient failures (connection refused or lost, server starting up or
 *    shutting down, admin shutdown, serialization failure, deadlock, too many
 *    connections, read-only standby, a statement that does not answer within
 *    io_timeout) drop the connection, wait with capped exponential backoff
 *    (common/retry.h: 100 ms doubling to retry_backoff_max, each wait drawn
 *    between half and all of that), reconnect and
 *    retry the whole transaction. That is safe because the rows are upserts
 *    on a key derived from the input: a transaction whose COMMIT was lost in
 *    flight and is replayed rewrites the same rows. Retrying stops after
 *    retry_timeout, or when a signal interrupts the wait (the job is being
 *    asked to stop), and flush() then fails without the checkpoint advancing.
 *  - Permanent failures (authentication, missing privilege, missing database,
 *    schema mismatch, data the server refuses) fail at once: retrying cannot
 *    fix them and the operator must see them.
 *  - Errors are classified by SQLSTATE. Connection-time errors carry none in
 *    the libpq API, so the connection is made with verbose error messages,
 *    which put the server's SQLSTATE in the text ("FATAL:  28P01: ..."); an
 *    error with no SQLSTATE is libpq's own (refused, reset, timed out): those
 *    are transient, except the few that are configuration mistakes (no
 *    password given, SSL demanded but unsupported, bad certificate).
 *  - The connection, its bounded waits, the classification and the retries
 *    are pg_conn.h's, shared with the scale-out's task state store.
 *  - No message contains a password: errors name the target by a copy of the
 *    connection string with the password replaced by "***", and every message
 *    passes through pg_conninfo_redact() (pg_conninfo.h) before it leaves
 *    this file.
 */
#include <assert.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/secret.h"
#include "common/units.h"
#include "common/xalloc.h"
#include "sink/pg_conn.h"
#include "sink/pg_conninfo.h"
#include "sink/pg_sink.h"
#include "sink/sink.h"

#define PG_DEFAULT_TABLE "sessions"
#define PG_DEFAULT_BATCH_ROWS 2000
#define PG_MAX_BATCH_ROWS 1000000
/* Far under the 1 GB the server takes in one message; beyond a few MiB a
 * statement's size no longer speeds anything up, and it is copied in memory. */
#define PG_DEFAULT_BATCH_BYTES ((size_t)64 << 20)
#define PG_MAX_BATCH_BYTES ((size_t)256 << 20)
_Static_assert(PG_MAX_BATCH_BYTES < PG_MAX_MESSAGE_BYTES / 2, "room for a row past the bound");

#define PG_STR_(x) #x
#define PG_STR(x) PG_STR_(x)

extern const sink_ops postgresql_sink_ops;
extern const sink_ops postgres_sink_ops;

/* --sink-opt: what pg_parse_props takes, and --help shows (sink.h). */
static const sink_setting pg_settings[] = {
    {"table", "[SCHEMA.]NAME", PG_DEFAULT_TABLE,
     "the table, taken literally (case-sensitive, quoted as an identifier)"},
    {"batch_rows", "N", PG_STR(PG_DEFAULT_BATCH_ROWS), "most rows per statement, 1 to 1000000"},
    {"batch_bytes", "SIZE", "64MiB",
     "most bytes of bound parameters per statement, 1 to 256MiB (a larger session goes alone)"},
    PG_CONN_SETTINGS,
    {"password", "SECRET", NULL,
     "the password, over one in the connection string (password=@file:PATH keeps it off the "
     "command line)"},
    {NULL, NULL, NULL, NULL}};

/* ---- small helpers ------------------------------------------------------- */

/* Identifier quoting as SQL defines it: "..." with " doubled. Identifiers
 * cannot be bound as parameters; this is the only text spliced into SQL. */
static void quote_ident(buf *b, const char *s, size_t n)
{
    buf_append_byte(b, '"');
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') buf_append_byte(b, '"');
        buf_append_byte(b, (unsigned char)s[i]);
    }
    buf_append_byte(b, '"');
}

/* ---- the sink ------------------------------------------------------------ */

static void pg_close(sink *base)
{
    pg_sink *s = (pg_sink *)base;
    if (!s) return;
    pg_committer_stop(s); /* first: it uses the connection */
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->progress);
    pg_conn_drop(&s->pc);
    pg_conninfo_free(&s->ci);
    secret_free(s->password);
    free(s->table_sql);
    free(s->table_display);
    free(s->identity);
    free(s->upsert_sql);
    buf_free(&s->p_sid);
    buf_free(&s->p_uid);
    buf_free(&s->p_pages);
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) buf_free(&s->p_opt[c]);
    free(s);
}

static int pg_set_table(pg_sink *s, const char *name, char *err, size_t errlen)
{
    if (!*name) return pg_conn_fail(&s->pc, err, errlen, "postgresql: table= needs a name");
    const char *dot = strchr(name, '.');
    if (dot && strchr(dot + 1, '.'))
        return pg_conn_fail(&s->pc, err, errlen, "postgresql: table=%s: use NAME or SCHEMA.NAME",
                            name);
    if (dot && (dot == name || !dot[1]))
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: table=%s: empty schema or table name", name);
    buf q;
    buf_init(&q);
    if (dot) {
        quote_ident(&q, name, (size_t)(dot - name));
        buf_append_byte(&q, '.');
        quote_ident(&q, dot + 1, strlen(dot + 1));
    } else {
        quote_ident(&q, name, strlen(name));
    }
    free(s->table_sql);
    free(s->table_display);
    s->table_sql = buf_steal_str(&q);
    s->table_display = xstrdup(name);
    return 0;
}

static int pg_parse_props(pg_sink *s, const char *const *props, char *err, size_t errlen)
{
    for (size_t i = 0; props && props[i]; i++) {
        const char *v;
        char e[1024];
        const sink_setting *st = sink_setting_find(&postgresql_sink_ops, props[i], &v, e, sizeof e);
        if (!st) return pg_conn_fail(&s->pc, err, errlen, "%s", e);
        const char *kv = st->key;
        size_t kl = strlen(kv);
        int rc = 0;
#define KEY_IS(k) (strcmp(kv, k) == 0)
        if (KEY_IS("table")) {
            if (pg_set_table(s, v, err, errlen)) return -1;
        } else if (KEY_IS("password")) {
            secret_free(s->password);
            s->password = xstrdup(v);
            pg_conninfo_add_secret(&s->ci, v, strlen(v));
        } else if (KEY_IS("batch_rows")) {
            uint64_t n; /* a count as the command line writes them (2000, 2k) */
            if (parse_count(v, &n) || n < 1 || n > PG_MAX_BATCH_ROWS)
                return pg_conn_fail(&s->pc, err, errlen,
                                    "postgresql: batch_rows=%s: expected 1 to %d", v,
                                    PG_MAX_BATCH_ROWS);
            s->batch_rows = (size_t)n;
        } else if (KEY_IS("batch_bytes")) {
            uint64_t n;
            if (parse_count(v, &n) || n < 1 || n > PG_MAX_BATCH_BYTES)
                return pg_conn_fail(&s->pc, err, errlen,
                                    "postgresql: batch_bytes=%s: expected a size from 1 to 256MiB",
                                    v);
            s->batch_bytes = (size_t)n;
        } else if (pg_conn_setting(&s->pc, kv, kl, v, &rc, err, errlen)) {
            if (rc) return rc;
        } else {
            assert(!"a setting of pg_settings without its case");
            return pg_conn_fail(&s->pc, err, errlen, "postgresql: %s: a setting without its case "
                                "(a bug)", kv);
        }
#undef KEY_IS
    }
    return 0;
}

static void pg_identity(sink *base, buf *out) { buf_append_str(out, ((pg_sink *)base)->identity); }

static sink *pg_open_as(const char *scheme, const char *target, const sink_options *opts,
                        char *err, size_t errlen)
{
    pg_sink *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->progress, NULL);
    s->string_users = opts->string_users;
    s->columns = opts->columns;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) buf_init(&s->p_opt[c]);
    pg_conn_init(&s->pc, "postgresql", &s->ci);
    s->pc.stop = opts && opts->ctx ? opts->ctx->stop : NULL;
    s->pc.status = opts && opts->ctx ? opts->ctx->status : NULL;
    s->pc.io = s->pc.status ? &s->pc.status->sink : NULL;
    s->pc.setup = pg_setup;
    s->pc.ud = s;
    buf c;
    buf_init(&c);
    /* The sink receives what follows "postgresql:"; libpq wants the URI whole.
     * Anything else ("host=... dbname=...") is a key=value conninfo. */
    if (strncmp(target, "//", 2) == 0) buf_printf(&c, "%s:%s", scheme, target);
    else buf_append_str(&c, target);
    pg_conninfo_init(&s->ci, buf_steal_str(&c));
    s->create_schema = opts ? opts->create_schema : 1;
    s->batch_rows = PG_DEFAULT_BATCH_ROWS;
    s->batch_bytes = PG_DEFAULT_BATCH_BYTES;
    buf_init(&s->p_sid);
    buf_init(&s->p_uid);
    buf_init(&s->p_pages);
    if (pg_set_table(s, PG_DEFAULT_TABLE, err, errlen) ||
        pg_parse_props(s, opts ? opts->props : NULL, err, errlen)) {
        pg_close(&s->base);
        return NULL;
    }
    s->pc.password = s->password;
    /* Reject a malformed connection string now, with libpq's reason. */
    char *perr = NULL;
    if (pg_conninfo_parse(&s->ci, &perr)) {
        char m[1024];
        pg_tidy_message(perr ? perr : "out of memory", m, sizeof m);
        pg_conn_fail(&s->pc, err, errlen, "postgresql: bad connection string %s: %s",
                     s->ci.display, m);
        PQfreemem(perr);
        pg_close(&s->base);
        return NULL;
    }

    s->upsert_sql = pg_upsert_sql(s);

    /* Connect now, so that a wrong password or a missing grant stops the job
     * before it reads anything; a server that is down is waited for. */
    char e[2048];
    if (pg_conn_retry(&s->pc, NULL, s, "connect", e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        pg_close(&s->base);
        return NULL;
    }
    s->identity = pg_conninfo_identity(s->pc.conn, s->table_sql);
    if (pg_committer_start(s, err, errlen)) {
        pg_close(&s->base);
        return NULL;
    }
    return &s->base;
}

static sink *pg_open_postgresql(const char *target, const sink_options *opts, char *err,
                                size_t errlen)
{
    sink *s = pg_open_as("postgresql", target, opts, err, errlen);
    if (s) s->ops = &postgresql_sink_ops;
    return s;
}

static sink *pg_open_postgres(const char *target, const sink_options *opts, char *err,
                              size_t errlen)
{
    sink *s = pg_open_as("postgres", target, opts, err, errlen);
    if (s) s->ops = &postgres_sink_ops;
    return s;
}

const sink_ops postgresql_sink_ops = {
    .scheme = "postgresql",
    .usage = "postgresql://...  upsert into a PostgreSQL table 'sessions' (any libpq URI, e.g. "
             "postgresql://user@host:5432/db?sslmode=require)",
    .settings = pg_settings,
    .open = pg_open_postgresql,
    .write = pg_write,
    .flush = pg_flush,
    .flush_begin = pg_flush_begin,
    .flush_wait = pg_flush_wait,
    .save = NULL,
    .restore = NULL,
    .identity = pg_identity,
    .close = pg_close,
};

const sink_ops postgres_sink_ops = {
    .scheme = "postgres",
    .usage = "postgres://...    same as postgresql://",
    .settings = pg_settings,
    .open = pg_open_postgres,
    .write = pg_write,
    .flush = pg_flush,
    .flush_begin = pg_flush_begin,
    .flush_wait = pg_flush_wait,
    .save = NULL,
    .restore = NULL,
    .identity = pg_identity,
    .close = pg_close,
};
