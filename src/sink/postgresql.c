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
 * as "key=value" props (see PG_OPTIONS_HELP): table=, batch_rows=,
 * retry_timeout=, retry_backoff_max=, io_timeout=, and password= (given to
 * libpq after the connection string, so it wins over one in the URI; with the
 * CLI's password=@file:PATH it never appears on the command line).
 *
 * Table: sessions (session_id bigint, user_id bigint (text for string
 * users), pages text[], ingestion_time timestamptz, [the --columns chosen:
 * session_start, session_end timestamptz, visit_count bigint, duration
 * interval], PRIMARY KEY (session_id, user_id)), created when missing unless
 * create_schema is 0. An existing table must have these columns with these
 * types and a unique key on (session_id, user_id); it may have more columns
 * if each is nullable or has a default (the INSERT leaves them out). What
 * differs is refused at open with the ALTER TABLE that fixes it, because
 * writing "something like" the expected table would break keyed idempotency
 * quietly.
 *
 * How it writes, and why:
 *  - write() only copies the session into memory (deduplicated on the key, the
 *    last write winning, since one statement may not touch a row twice).
 *  - flush() sends everything buffered since the last flush in ONE
 *    transaction, batch_rows rows per statement. A statement is
 *      INSERT ... SELECT FROM unnest($1::int8[], $2::int8[], $3::text[])
 *      ON CONFLICT (session_id, user_id) DO UPDATE SET pages, ingestion_time
 *    prepared once per connection, with the three arrays sent in binary: one
 *    round trip for many rows, one plan whatever the row count, and values
 *    that are always bound, never spliced into SQL. bench/pg_sink.sh measures
 *    it against one row per statement, a multi-row VALUES statement and COPY
 *    into a staging table (docs/postgresql.md has the figures).
 *  - flush() returns 0 only after COMMIT is acknowledged, with
 *    synchronous_commit raised to "on" if the server had it "off": that is
 *    what lets the job commit its checkpoint afterwards.
 *  - Transient failures (connection refused or lost, server starting up or
 *    shutting down, admin shutdown, serialization failure, deadlock, too many
 *    connections, read-only standby, a statement that does not answer within
 *    io_timeout) drop the connection, wait with capped exponential backoff
 *    (100 ms doubling to retry_backoff_max, +-20% jitter), reconnect and
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
#include <errno.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include <xxhash.h>
#include "common/log.h"
#include "common/status.h"
#include "common/clock.h"
#include "common/retry.h"
#include "common/units.h"
#include "common/xalloc.h"
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

#define PG_DEFAULT_TABLE "sessions"
#define PG_DEFAULT_BATCH_ROWS 2000
#define PG_MAX_BATCH_ROWS 1000000
#define PG_STMT_NAME "sessionizer_upsert"

#define PG_OPTIONS_HELP                                                                    \
    "table=[SCHEMA.]NAME, batch_rows=N, " PG_CONN_SETTINGS_HELP                              \
    ", password=SECRET (e.g. password=@file:PATH)"


typedef struct pg_row {
    int64_t session_id;
    int64_t user_id;
    size_t off; /* pages as an array literal, in pg_sink.literals */
    size_t len;
    size_t user_off, user_len; /* string users: their bytes, in pg_sink.literals */
    int64_t first_us, last_us;
    uint64_t visits;
} pg_row;

/* The opt-in columns, in SINK_COL_* order: their types as format_type()
 * spells them, and the element type of the array each is sent in. */
static const struct { const char *type; Oid array; } pg_optional[SINK_N_OPTIONAL] = {
    {"timestamp with time zone", PG_TIMESTAMPTZARRAYOID},
    {"timestamp with time zone", PG_TIMESTAMPTZARRAYOID},
    {"bigint", PG_INT8ARRAYOID},
    {"interval", PG_INTERVALARRAYOID},
};

typedef struct pg_sink {
    sink base;
    pg_conninfo ci; /* the connection string, its masked copy, the secrets */
    char *password; /* password= prop, or NULL */
    char *table_sql;     /* quoted identifier: "schema"."name" or "name" */
    char *table_display; /* as the user wrote it */
    char *identity;      /* "postgresql://HOSTS:PORTS/DB table=T", made at open */
    int create_schema;
    size_t batch_rows;
    pg_conn pc;          /* connection, io_timeout, retries, stop (pg_conn.h) */
    char *upsert_sql;

    /* Sessions written since the last successful flush. */
    pg_row *rows;
    size_t n_rows, cap_rows;
    buf literals;
    uint32_t *slots; /* open addressing on (session_id, user_id): row index + 1 */
    size_t n_slots;

    buf p_sid, p_uid, p_pages; /* parameter scratch */
    buf p_opt[SINK_N_OPTIONAL];
    int string_users;
    unsigned columns;
} pg_sink;

/* ---- small helpers ------------------------------------------------------ */

static void put_be32(buf *b, uint32_t v)
{
    unsigned char o[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, o, 4);
}

static void put_be64(buf *b, uint64_t v)
{
    unsigned char o[8];
    for (int i = 0; i < 8; i++) o[i] = (unsigned char)(v >> (56 - 8 * i));
    buf_append(b, o, 8);
}

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

__attribute__((format(printf, 4, 5))) static int pg_fail(const pg_sink *s, char *err,
                                                          size_t errlen, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (err && errlen) pg_conninfo_redact(&s->ci, tmp, err, errlen);
    return -1;
}

/* ---- connection and statements ------------------------------------------ */

/* Appends a one-dimensional binary array header (PostgreSQL's array_send format). */
static void array_header(buf *b, size_t n, uint32_t elem_oid)
{
    put_be32(b, n ? 1 : 0);
    put_be32(b, 0); /* no NULLs */
    put_be32(b, elem_oid);
    if (n) {
        put_be32(b, (uint32_t)n);
        put_be32(b, 1);
    }
}

/* Executes the prepared upsert for rows [from, to) with ingestion time ts. */
static int pg_upsert(pg_sink *s, size_t from, size_t to, const char *ts, char *err, size_t errlen)
{
    size_t n = to - from;
    buf_reset(&s->p_sid);
    buf_reset(&s->p_uid);
    buf_reset(&s->p_pages);
    array_header(&s->p_sid, n, PG_INT8OID);
    array_header(&s->p_uid, n, s->string_users ? PG_TEXTOID : PG_INT8OID);
    array_header(&s->p_pages, n, PG_TEXTOID);
    static const Oid elem[SINK_N_OPTIONAL] = {PG_TIMESTAMPTZOID, PG_TIMESTAMPTZOID, PG_INT8OID,
                                              PG_INTERVALOID};
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) {
        buf_reset(&s->p_opt[c]);
        if (s->columns >> c & 1) array_header(&s->p_opt[c], n, elem[c]);
    }
    buf_reserve(&s->p_sid, n * 12);
    buf_reserve(&s->p_uid, n * 12);
    for (size_t i = from; i < to; i++) {
        const pg_row *r = &s->rows[i];
        put_be32(&s->p_sid, 8);
        put_be64(&s->p_sid, (uint64_t)r->session_id);
        if (s->string_users) {
            put_be32(&s->p_uid, (uint32_t)r->user_len);
            buf_append(&s->p_uid, s->literals.data + r->user_off, r->user_len);
        } else {
            put_be32(&s->p_uid, 8);
            put_be64(&s->p_uid, (uint64_t)r->user_id);
        }
        const int64_t opt[SINK_N_OPTIONAL] = {r->first_us - PG_EPOCH_US, r->last_us - PG_EPOCH_US,
                                              (int64_t)r->visits, r->last_us - r->first_us};
        for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) {
            if (!(s->columns >> c & 1)) continue;
            put_be32(&s->p_opt[c], c == 3 ? 16 : 8);
            put_be64(&s->p_opt[c], (uint64_t)opt[c]);
            if (c == 3) { /* interval: microseconds, then days and months */
                put_be32(&s->p_opt[c], 0);
                put_be32(&s->p_opt[c], 0);
            }
        }
        put_be32(&s->p_pages, (uint32_t)r->len);
        buf_append(&s->p_pages, s->literals.data + r->off, r->len);
    }
    if (s->p_pages.len > 0x3fffffff)
        return pg_fail(s, err, errlen,
                       "postgresql: a batch of %zu sessions is over 1 GB; lower batch_rows", n),
               PG_PERMANENT;
    const char *values[4 + SINK_N_OPTIONAL] = {(const char *)s->p_sid.data,
                                               (const char *)s->p_uid.data,
                                               (const char *)s->p_pages.data, ts};
    int lengths[4 + SINK_N_OPTIONAL] = {(int)s->p_sid.len, (int)s->p_uid.len, (int)s->p_pages.len,
                                        0};
    int formats[4 + SINK_N_OPTIONAL] = {1, 1, 1, 0};
    int np = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) {
            values[np] = (const char *)s->p_opt[c].data;
            lengths[np] = (int)s->p_opt[c].len;
            formats[np++] = 1;
        }
    int sent = PQsendQueryPrepared(s->pc.conn, PG_STMT_NAME, np, values, lengths, formats, 0);
    return pg_conn_finish(&s->pc, sent, "upsert", NULL, err, errlen);
}

/* Makes sure the table exists with the expected shape; prepares the upsert
 * and runs it once on no rows, which checks the privileges it needs. */
static int pg_setup(void *ud, char *err, size_t errlen)
{
    pg_sink *s = ud;
    int st;
    /* (pg_conn has made commits synchronous and lets a backend notice a
     * vanished client: pg_conn.h.) */
    if (PQserverVersion(s->pc.conn) < 90500)
        return pg_fail(s, err, errlen,
                       "postgresql: server version %d is too old: INSERT ... ON CONFLICT needs 9.5 or later",
                       PQserverVersion(s->pc.conn)),
               PG_PERMANENT;

    /* The job's columns, the types format_type() gives them, and whether
     * the table is created with them (create) or must have them (check). */
    const char *want_name[4 + SINK_N_OPTIONAL] = {"session_id", "user_id", "pages",
                                                  "ingestion_time"};
    const char *want_type[4 + SINK_N_OPTIONAL] = {"bigint", s->string_users ? "text" : "bigint",
                                                  "text[]", "timestamp with time zone"};
    int n_want = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) {
            want_name[n_want] = sink_column_names[c];
            want_type[n_want++] = pg_optional[c].type;
        }
    buf create;
    buf_init(&create);
    buf_printf(&create, "CREATE TABLE IF NOT EXISTS %s (", s->table_sql);
    for (int k = 0; k < n_want; k++)
        buf_printf(&create, "%s %s NOT NULL, ", want_name[k], want_type[k]);
    buf_append_str(&create, "PRIMARY KEY (session_id, user_id))");
    buf_append_byte(&create, 0);
    const char *create_sql = (const char *)create.data;
    for (int round = 0;; round++) {
        const char *params[1] = {s->table_sql};
        int sent = PQsendQueryParams(
            s->pc.conn,
            "SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull, a.atthasdef "
            "FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped WHERE c.oid = to_regclass($1) ORDER BY a.attnum",
            1, NULL, params, NULL, NULL, 0);
        PGresult *r;
        st = pg_conn_finish(&s->pc, sent, "looking up the table", &r, err, errlen);
        if (st) {
            buf_free(&create);
            return st;
        }
        int rows = PQntuples(r);
        if (rows == 0) {
            PQclear(r);
            if (!s->create_schema || round > 0) {
                if (!s->create_schema)
                    pg_fail(s, err, errlen,
                            "postgresql: table %s does not exist in %s, and creating it is "
                            "turned off (create_schema); create it with: %s",
                            s->table_display, s->ci.display, create_sql);
                else
                    pg_fail(s, err, errlen, "postgresql: table %s is still missing after CREATE TABLE",
                            s->table_display);
                buf_free(&create);
                return PG_PERMANENT;
            }
            char cerr[1024];
            st = pg_conn_exec(&s->pc, create_sql, "creating the table", cerr, sizeof cerr);
            /* Two jobs creating the table at once: the loser's IF NOT EXISTS
             * can still trip on the catalog's unique index, on the relation
             * or on its row type (pg_conn_lost_create_race: 23505, 42P07,
             * 42710 "type ... already exists", seen when scale-out instances
             * start together). Look again. */
            if (st && !pg_conn_lost_create_race(&s->pc)) {
                snprintf(err, errlen, "%s", cerr);
                buf_free(&create);
                return st;
            }
            continue;
        }
        char relkind[8];
        snprintf(relkind, sizeof relkind, "%s", PQgetvalue(r, 0, 0));
        if (strcmp(relkind, "r") != 0 && strcmp(relkind, "p") != 0) {
            PQclear(r);
            buf_free(&create);
            return pg_fail(s, err, errlen,
                           "postgresql: %s is not a table (relkind '%s'); give another name with "
                           "table=",
                           s->table_display, relkind),
                   PG_PERMANENT;
        }
        buf why, fix;
        buf_init(&why);
        buf_init(&fix);
        int seen[4 + SINK_N_OPTIONAL] = {0};
        for (int i = 0; i < rows; i++) {
            if (PQgetisnull(r, i, 1)) continue;
            const char *name = PQgetvalue(r, i, 1), *type = PQgetvalue(r, i, 2);
            int notnull = PQgetvalue(r, i, 3)[0] == 't', hasdef = PQgetvalue(r, i, 4)[0] == 't';
            int k = -1;
            for (int j = 0; j < n_want; j++)
                if (strcmp(name, want_name[j]) == 0) k = j;
            if (k < 0) {
                /* not the job's: the INSERT leaves it out, which needs a default or NULL */
                if (notnull && !hasdef) {
                    buf_printf(&why, "%scolumn %s is NOT NULL without a default", why.len ? "; " : "",
                               name);
                    buf_printf(&fix, "ALTER TABLE %s ALTER COLUMN \"%s\" DROP NOT NULL; ",
                               s->table_sql, name);
                }
            } else {
                seen[k] = 1;
                if (strcmp(type, want_type[k]) != 0) {
                    buf_printf(&why, "%scolumn %s is %s, expected %s", why.len ? "; " : "", name,
                               type, want_type[k]);
                    buf_printf(&fix, "ALTER TABLE %s ALTER COLUMN %s TYPE %s USING %s::%s; ",
                               s->table_sql, name, want_type[k], name,
                               k == 1 && s->string_users ? "text" : want_type[k]);
                }
            }
        }
        for (int j = 0; j < n_want; j++)
            if (!seen[j]) {
                buf_printf(&why, "%smissing column %s %s", why.len ? "; " : "", want_name[j],
                           want_type[j]);
                if (j < 4)
                    buf_printf(&fix, "(%s cannot be added to a table of other rows: use another "
                               "table, table=, which the sink creates) ", want_name[j]);
                else
                    buf_printf(&fix, "ALTER TABLE %s ADD COLUMN %s %s; ", s->table_sql,
                               want_name[j], want_type[j]);
            }
        PQclear(r);
        if (why.len) {
            pg_fail(s, err, errlen,
                    "postgresql: existing table %s does not fit the sessions this job writes "
                    "(%.*s): %.*s. Fix it with: %.*s",
                    s->table_display, (int)(create.len - 1), create_sql, (int)why.len,
                    (const char *)why.data, (int)(fix.len ? fix.len - 1 : 0),
                    (const char *)fix.data);
            buf_free(&why);
            buf_free(&fix);
            buf_free(&create);
            return PG_PERMANENT;
        }
        buf_free(&why);
        buf_free(&fix);
        break;
    }
    buf_free(&create);

    Oid types[4 + SINK_N_OPTIONAL] = {PG_INT8ARRAYOID,
                                      s->string_users ? PG_TEXTARRAYOID : PG_INT8ARRAYOID,
                                      PG_TEXTARRAYOID, PG_TIMESTAMPTZOID};
    int n_types = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) types[n_types++] = pg_optional[c].array;
    st = pg_conn_finish(&s->pc, PQsendPrepare(s->pc.conn, PG_STMT_NAME, s->upsert_sql, n_types, types),
                       "preparing the upsert", NULL, err, errlen);
    if (st) return st;
    /* A dry run on no rows: the planner checks that a unique index matches
     * the ON CONFLICT target, and the executor checks the INSERT and UPDATE
     * privileges even when nothing is written; so both fail at open. */
    char ts[32], derr[1024];
    sink_now_iso8601(ts);
    st = pg_upsert(s, 0, 0, ts, derr, sizeof derr);
    if (st && strstr(derr, "42P10"))
        return pg_fail(s, err, errlen,
                       "postgresql: table %s has no primary key or unique constraint on "
                       "(session_id, user_id), which the upsert needs: ALTER TABLE %s ADD "
                       "PRIMARY KEY (session_id, user_id)",
                       s->table_display, s->table_sql),
               PG_PERMANENT;
    if (st) snprintf(err, errlen, "%s", derr);
    return st;
}

/* One attempt at committing everything buffered. */
static int pg_commit_rows(void *ud, char *err, size_t errlen)
{
    pg_sink *s = ud;
    char ts[32];
    sink_now_iso8601(ts); /* one ingestion time per transaction */
    int st = pg_conn_exec(&s->pc, "BEGIN", "BEGIN", err, errlen);
    for (size_t i = 0; !st && i < s->n_rows; i += s->batch_rows) {
        size_t to = i + s->batch_rows < s->n_rows ? i + s->batch_rows : s->n_rows;
        st = pg_upsert(s, i, to, ts, err, errlen);
    }
    if (st) return st;
    PGresult *r;
    st = pg_conn_finish(&s->pc, PQsendQuery(s->pc.conn, "COMMIT"), "COMMIT", &r, err, errlen);
    if (st) return st;
    /* A transaction that failed answers COMMIT with ROLLBACK. */
    int committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    if (!committed)
        return pg_fail(s, err, errlen, "postgresql: COMMIT was answered with a rollback"),
               PG_TRANSIENT;
    return PG_OK;
}

/* ---- the sink ------------------------------------------------------------ */

static uint64_t key_hash(int64_t sid, int64_t uid)
{
    uint64_t x = (uint64_t)sid * 0x9E3779B97F4A7C15ull ^ (uint64_t)uid;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The key of a row: (session_id, user_id), a string user by its bytes. */
static uint64_t row_hash(const pg_sink *s, const pg_row *r)
{
    if (!s->string_users) return key_hash(r->session_id, r->user_id);
    return key_hash(r->session_id, (int64_t)XXH3_64bits(s->literals.data + r->user_off, r->user_len));
}

static int same_key(const pg_sink *s, const pg_row *a, const pg_row *b)
{
    if (a->session_id != b->session_id) return 0;
    if (!s->string_users) return a->user_id == b->user_id;
    return a->user_len == b->user_len &&
           memcmp(s->literals.data + a->user_off, s->literals.data + b->user_off, a->user_len) == 0;
}

static void slots_rebuild(pg_sink *s, size_t n_slots)
{
    free(s->slots);
    s->slots = xcalloc(n_slots, sizeof *s->slots);
    s->n_slots = n_slots;
    for (size_t i = 0; i < s->n_rows; i++) {
        size_t h = (size_t)row_hash(s, &s->rows[i]) & (n_slots - 1);
        while (s->slots[h]) h = (h + 1) & (n_slots - 1);
        s->slots[h] = (uint32_t)(i + 1);
    }
}

static int pg_write(sink *base, const closed_session *cs, char *err, size_t errlen)
{
    pg_sink *s = (pg_sink *)base;
    if (s->n_rows >= 0xFFFFFFF0u)
        return pg_fail(s, err, errlen, "postgresql: too many sessions between two flushes");
    /* pages as a text[] literal: {"a","b"} with \ and " escaped. */
    size_t off = s->literals.len;
    buf_append_byte(&s->literals, '{');
    for (size_t i = 0; i < cs->n_pages; i++) {
        const page_ref *p = &cs->pages[i];
        if (memchr(p->data, 0, p->len)) {
            s->literals.len = off;
            return pg_fail(s, err, errlen,
                           "postgresql: session %lld of user %lld has a page containing a NUL "
                           "character, which PostgreSQL text cannot store",
                           (long long)cs->session_id, (long long)cs->user_id);
        }
        if (i) buf_append_byte(&s->literals, ',');
        buf_append_byte(&s->literals, '"');
        buf_reserve(&s->literals, p->len);
        for (uint32_t k = 0; k < p->len; k++) {
            char ch = p->data[k];
            if (ch == '"' || ch == '\\') buf_append_byte(&s->literals, '\\');
            buf_append_byte(&s->literals, (unsigned char)ch);
        }
        buf_append_byte(&s->literals, '"');
    }
    buf_append_byte(&s->literals, '}');
    size_t len = s->literals.len - off;

    size_t user_off = s->literals.len;
    if (cs->user) buf_append(&s->literals, cs->user, cs->user_len);
    pg_row row = {cs->session_id, cs->user_id, off, len, user_off, cs->user_len,
                  cs->first_event_us, cs->last_event_us, cs->visits};

    if ((s->n_rows + 1) * 2 > s->n_slots) slots_rebuild(s, s->n_slots ? s->n_slots * 2 : 1024);
    size_t h = (size_t)row_hash(s, &row) & (s->n_slots - 1);
    while (s->slots[h]) {
        pg_row *r = &s->rows[s->slots[h] - 1];
        if (same_key(s, r, &row)) {
            *r = row; /* the later write of the same key wins */
            return 0;
        }
        h = (h + 1) & (s->n_slots - 1);
    }
    if (s->n_rows == s->cap_rows) {
        s->cap_rows = s->cap_rows ? s->cap_rows * 2 : 1024;
        s->rows = xrealloc(s->rows, s->cap_rows * sizeof *s->rows);
    }
    s->rows[s->n_rows] = row;
    s->slots[h] = (uint32_t)(++s->n_rows);
    return 0;
}

static void pg_clear_pending(pg_sink *s)
{
    s->n_rows = 0;
    buf_reset(&s->literals);
    if (s->slots) memset(s->slots, 0, s->n_slots * sizeof *s->slots);
}

static int pg_flush(sink *base, char *err, size_t errlen)
{
    pg_sink *s = (pg_sink *)base;
    if (s->n_rows == 0) return 0;
    char e[2048];
    if (pg_conn_retry(&s->pc, pg_commit_rows, s, "commit", e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        return -1;
    }
    pg_clear_pending(s);
    /* Do not let one large burst pin its memory for the rest of the run. */
    if (s->literals.cap > (64u << 20)) buf_free(&s->literals);
    return 0;
}

static void pg_close(sink *base)
{
    pg_sink *s = (pg_sink *)base;
    if (!s) return;
    pg_conn_drop(&s->pc);
    pg_conninfo_free(&s->ci);
    if (s->password) memset(s->password, 0, strlen(s->password));
    free(s->password);
    free(s->table_sql);
    free(s->table_display);
    free(s->identity);
    free(s->upsert_sql);
    free(s->rows);
    free(s->slots);
    buf_free(&s->literals);
    buf_free(&s->p_sid);
    buf_free(&s->p_uid);
    buf_free(&s->p_pages);
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) buf_free(&s->p_opt[c]);
    free(s);
}

static int pg_set_table(pg_sink *s, const char *name, char *err, size_t errlen)
{
    if (!*name) return pg_fail(s, err, errlen, "postgresql: table= needs a name");
    const char *dot = strchr(name, '.');
    if (dot && strchr(dot + 1, '.'))
        return pg_fail(s, err, errlen, "postgresql: table=%s: use NAME or SCHEMA.NAME", name);
    if (dot && (dot == name || !dot[1]))
        return pg_fail(s, err, errlen, "postgresql: table=%s: empty schema or table name", name);
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
        const char *kv = props[i];
        int rc = 0;
        const char *eq = strchr(kv, '=');
        if (!eq)
            return pg_fail(s, err, errlen, "postgresql: option '%s' is not key=value (known: %s)",
                           kv, PG_OPTIONS_HELP);
        size_t kl = (size_t)(eq - kv);
        const char *v = eq + 1;
#define KEY_IS(k) (kl == strlen(k) && strncmp(kv, k, kl) == 0)
        if (KEY_IS("table")) {
            if (pg_set_table(s, v, err, errlen)) return -1;
        } else if (KEY_IS("password")) {
            if (s->password) {
                memset(s->password, 0, strlen(s->password));
                free(s->password);
            }
            s->password = xstrdup(v);
            pg_conninfo_add_secret(&s->ci, v, strlen(v));
        } else if (KEY_IS("batch_rows")) {
            char *end;
            errno = 0;
            long long n = strtoll(v, &end, 10);
            if (errno || end == v || *end || n < 1 || n > PG_MAX_BATCH_ROWS)
                return pg_fail(s, err, errlen, "postgresql: batch_rows=%s: expected 1 to %d", v,
                               PG_MAX_BATCH_ROWS);
            s->batch_rows = (size_t)n;
        } else if (pg_conn_setting(&s->pc, kv, kl, v, &rc, err, errlen)) {
            if (rc) return rc;
        } else {
            return pg_fail(s, err, errlen, "postgresql: unknown option '%.*s' (known: %s)", (int)kl,
                           kv, PG_OPTIONS_HELP);
        }
#undef KEY_IS
    }
    return 0;
}

/* What a checkpoint is bound to: the settings that choose the server, the
 * database and the table, as libpq resolved them (defaults, service files
 * and environment included), never user or password. "postgres:" and
 * "postgresql:" spellings of one database give one identity. */
static void pg_make_identity(pg_sink *s)
{
    const char *host = "", *hostaddr = "", *port = "", *db = "";
    PQconninfoOption *ci = PQconninfo(s->pc.conn);
    for (PQconninfoOption *o = ci; o && o->keyword; o++) {
        const char *v = o->val ? o->val : "";
        if (strcmp(o->keyword, "host") == 0) host = v;
        else if (strcmp(o->keyword, "hostaddr") == 0) hostaddr = v;
        else if (strcmp(o->keyword, "port") == 0) port = v;
        else if (strcmp(o->keyword, "dbname") == 0) db = v;
    }
    buf b;
    buf_init(&b);
    buf_printf(&b, "postgresql://%s%s%s:%s/%s table=%s", host, *hostaddr ? " hostaddr=" : "",
               hostaddr, port, db, s->table_sql);
    s->identity = buf_steal_str(&b);
    PQconninfoFree(ci);
}

static void pg_identity(sink *base, buf *out) { buf_append_str(out, ((pg_sink *)base)->identity); }

static sink *pg_open_as(const char *scheme, const char *target, const sink_options *opts,
                        char *err, size_t errlen)
{
    pg_sink *s = xcalloc(1, sizeof *s);
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
    buf_init(&s->literals);
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
    PQconninfoOption *parsed = PQconninfoParse(s->ci.conninfo, &perr);
    if (!parsed) {
        char m[1024];
        pg_tidy_message(perr ? perr : "out of memory", m, sizeof m);
        pg_fail(s, err, errlen, "postgresql: bad connection string %s: %s", s->ci.display, m);
        PQfreemem(perr);
        pg_close(&s->base);
        return NULL;
    }
    for (PQconninfoOption *o = parsed; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val)
            pg_conninfo_add_secret(&s->ci, o->val, strlen(o->val));
    PQconninfoFree(parsed);

    buf q;
    buf_init(&q);
    /* $5... are the chosen opt-in columns, arrays as $1-$3 are */
    static const char *const casts[SINK_N_OPTIONAL] = {"timestamptz[]", "timestamptz[]", "int8[]",
                                                       "interval[]"};
    buf names, sel, arrays, cols, sets;
    buf_init(&names);
    buf_init(&sel);
    buf_init(&arrays);
    buf_init(&cols);
    buf_init(&sets);
    for (unsigned k = 0, arg = 5; k < SINK_N_OPTIONAL; k++)
        if (s->columns >> k & 1) {
            const char *n = sink_column_names[k];
            buf_printf(&names, ", %s", n);
            buf_printf(&sel, ", r.%s", n);
            buf_printf(&arrays, ", $%u::%s", arg++, casts[k]);
            buf_printf(&cols, ", %s", n);
            buf_printf(&sets, ", %s = EXCLUDED.%s", n, n);
        }
    buf_append_byte(&names, 0), buf_append_byte(&sel, 0), buf_append_byte(&arrays, 0);
    buf_append_byte(&cols, 0), buf_append_byte(&sets, 0);
    buf_printf(&q,
               "INSERT INTO %s AS t (session_id, user_id, pages, ingestion_time%s) "
               "SELECT r.session_id, r.user_id, r.pages::text[], $4%s "
               "FROM unnest($1::int8[], $2::%s[], $3::text[]%s) AS r(session_id, user_id, pages%s) "
               "ON CONFLICT (session_id, user_id) DO UPDATE "
               "SET pages = EXCLUDED.pages, ingestion_time = EXCLUDED.ingestion_time%s",
               s->table_sql, (const char *)names.data, (const char *)sel.data,
               s->string_users ? "text" : "int8", (const char *)arrays.data,
               (const char *)cols.data, (const char *)sets.data);
    buf_free(&names);
    buf_free(&sel);
    buf_free(&arrays);
    buf_free(&cols);
    buf_free(&sets);
    s->upsert_sql = buf_steal_str(&q);

    /* Connect now, so that a wrong password or a missing grant stops the job
     * before it reads anything; a server that is down is waited for. */
    char e[2048];
    if (pg_conn_retry(&s->pc, NULL, s, "connect", e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        pg_close(&s->base);
        return NULL;
    }
    pg_make_identity(s);
    return &s->base;
}

extern const sink_ops postgresql_sink_ops;
extern const sink_ops postgres_sink_ops;

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
             "postgresql://user@host:5432/db?sslmode=require; --sink-opt " PG_OPTIONS_HELP ")",
    .open = pg_open_postgresql,
    .write = pg_write,
    .flush = pg_flush,
    .save = NULL,
    .restore = NULL,
    .identity = pg_identity,
    .close = pg_close,
};

const sink_ops postgres_sink_ops = {
    .scheme = "postgres",
    .usage = "postgres://...    same as postgresql://",
    .open = pg_open_postgres,
    .write = pg_write,
    .flush = pg_flush,
    .save = NULL,
    .restore = NULL,
    .identity = pg_identity,
    .close = pg_close,
};
