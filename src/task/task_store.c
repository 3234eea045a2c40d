/*
 * task_store.c - session tasks' state in PostgreSQL (task_store.h).
 *
 * Two tables shared by every group, keyed by (grp, task):
 *   sessionizer_task_meta  (grp, task, k, v bytea)      named blobs
 *   sessionizer_task_users (grp, task, user_id, blob)   open sessions per user
 * Values travel in binary (bytea, int8), never spliced into SQL. A failure
 * here stops the instance without committing (the caller's contract): the
 * state of a task is only ever replaced by a whole newer commit, so the
 * next owner resumes from the last one.
 */
#include "task/task_store.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

/* A commit's user rows are sent as two statements over arrays (binary
 * int8[] and bytea[]), not one statement per row: a task commits thousands
 * of users a second, and a round trip each made the state store the
 * scale-out's bottleneck (docs/scaling.md, Figures). */
#define PG_INT8OID 20
#define PG_BYTEAOID 17
#define PG_INT8ARRAYOID 1016
#define PG_BYTEAARRAYOID 1001
#define FLUSH_ROWS 10000 /* rows per statement at most */

typedef struct pg_array {
    buf elems; /* per element: be32 length, bytes */
    uint32_t n;
} pg_array;

struct task_store {
    PGconn *conn;
    char *group;
    int32_t task; /* of the open transaction */
    int in_tx;
    pg_array up_ids, up_blobs, del_ids;
    buf arr[2];
};

static void pg_err(task_store *ts, const char *what, PGresult *r, char *err, size_t errlen)
{
    const char *m = r ? PQresultErrorMessage(r) : "";
    if (!m || !*m) m = PQerrorMessage(ts->conn);
    snprintf(err, errlen, "task state store: %s: %.400s", what, m);
    size_t n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' ')) err[--n] = 0;
}

static int exec_ok(task_store *ts, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(ts->conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) pg_err(ts, sql, r, err, errlen);
    PQclear(r);
    return ok ? 0 : -1;
}

static void put_be32(buf *b, uint32_t v)
{
    unsigned char c[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, c, 4);
}

static void array_add(pg_array *a, const void *v, size_t len)
{
    put_be32(&a->elems, (uint32_t)len);
    buf_append(&a->elems, v, len);
    a->n++;
}

static void array_add_i64(pg_array *a, int64_t v)
{
    unsigned char c[8];
    for (int i = 0; i < 8; i++) c[i] = (unsigned char)((uint64_t)v >> (56 - 8 * i));
    array_add(a, c, 8);
}

/* PostgreSQL's binary array format: ndim, has-nulls, element type, then
 * (size, lower bound) per dimension, then the elements. */
static void array_encode(const pg_array *a, unsigned oid, buf *out)
{
    buf_reset(out);
    put_be32(out, 1);
    put_be32(out, 0);
    put_be32(out, oid);
    put_be32(out, a->n);
    put_be32(out, 1);
    buf_append(out, a->elems.data, a->elems.len);
}

static void array_reset(pg_array *a)
{
    buf_reset(&a->elems);
    a->n = 0;
}

static const char *SCHEMA =
    "CREATE TABLE IF NOT EXISTS sessionizer_task_meta (grp text NOT NULL, task int NOT NULL, "
    "k text NOT NULL, v bytea NOT NULL, PRIMARY KEY (grp, task, k));"
    "CREATE TABLE IF NOT EXISTS sessionizer_task_users (grp text NOT NULL, task int NOT NULL, "
    "user_id bigint NOT NULL, blob bytea NOT NULL, PRIMARY KEY (grp, task, user_id))";

task_store *task_store_open(const char *conninfo, const char *group, char *err, size_t errlen)
{
    task_store *ts = xcalloc(1, sizeof *ts);
    ts->conn = PQconnectdb(conninfo);
    if (PQstatus(ts->conn) != CONNECTION_OK) {
        /* libpq's message never contains the password */
        snprintf(err, errlen, "task state store: cannot connect: %.400s", PQerrorMessage(ts->conn));
        task_store_close(ts);
        return NULL;
    }
    ts->group = xstrdup(group);
    PGresult *r = PQexec(ts->conn, "SET client_min_messages = warning");
    PQclear(r);
    /* Instances starting together race on CREATE TABLE IF NOT EXISTS (a
     * unique violation in the catalog): the loser's second try sees it. */
    if (exec_ok(ts, SCHEMA, err, errlen) && exec_ok(ts, SCHEMA, err, errlen)) {
        task_store_close(ts);
        return NULL;
    }
    return ts;
}

void task_store_close(task_store *ts)
{
    if (!ts) return;
    if (ts->conn) PQfinish(ts->conn);
    free(ts->group);
    buf_free(&ts->up_ids.elems);
    buf_free(&ts->up_blobs.elems);
    buf_free(&ts->del_ids.elems);
    buf_free(&ts->arr[0]);
    buf_free(&ts->arr[1]);
    free(ts);
}

static int64_t be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | (unsigned char)p[i];
    return (int64_t)v;
}

int task_store_load(task_store *ts, int32_t task, task_meta_fn fn_meta, task_user_fn fn_user,
                    void *ctx, char *err, size_t errlen)
{
    char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", (int)task);
    const char *vals[2] = {ts->group, tbuf};
    /* One snapshot for both reads: a concurrent commit of another owner
     * must not mix into what is loaded. */
    if (exec_ok(ts, "BEGIN ISOLATION LEVEL REPEATABLE READ", err, errlen)) return -1;
    PGresult *r = PQexecParams(ts->conn, "SELECT k, v FROM sessionizer_task_meta WHERE grp = $1 "
                               "AND task = $2 AND k <> 'stored_position'",
                               2, NULL, vals, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_err(ts, "loading a task", r, err, errlen);
        PQclear(r);
        exec_ok(ts, "ROLLBACK", err, errlen);
        return -1;
    }
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        char key[64];
        int kl = PQgetlength(r, i, 0);
        snprintf(key, sizeof key, "%.*s", kl, PQgetvalue(r, i, 0));
        if (fn_meta(ctx, key, PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1))) {
            snprintf(err, errlen, "task state store: task %d of group %s: '%s' does not decode "
                     "(written by another version, or other --gap/--lateness/--max-pages?)",
                     (int)task, ts->group, key);
            PQclear(r);
            exec_ok(ts, "ROLLBACK", err + strlen(err), 0);
            return -1;
        }
    }
    PQclear(r);
    r = PQexecParams(ts->conn, "SELECT user_id, blob FROM sessionizer_task_users WHERE grp = $1 "
                     "AND task = $2", 2, NULL, vals, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_err(ts, "loading a task's users", r, err, errlen);
        PQclear(r);
        exec_ok(ts, "ROLLBACK", err, 0);
        return -1;
    }
    int m = PQntuples(r);
    for (int i = 0; i < m; i++) {
        if (PQgetlength(r, i, 0) != 8 ||
            fn_user(ctx, be64(PQgetvalue(r, i, 0)), PQgetvalue(r, i, 1),
                    (size_t)PQgetlength(r, i, 1))) {
            snprintf(err, errlen, "task state store: task %d of group %s: a user's sessions do "
                     "not decode", (int)task, ts->group);
            PQclear(r);
            exec_ok(ts, "ROLLBACK", err + strlen(err), 0);
            return -1;
        }
    }
    PQclear(r);
    if (exec_ok(ts, "COMMIT", err, errlen)) return -1;
    return n;
}

int task_store_begin(task_store *ts, int32_t task, int64_t position, int *superseded, char *err,
                     size_t errlen)
{
    *superseded = 0;
    char tbuf[16], pbuf[24];
    snprintf(tbuf, sizeof tbuf, "%d", (int)task);
    snprintf(pbuf, sizeof pbuf, "%lld", (long long)position);
    if (exec_ok(ts, "BEGIN", err, errlen)) return -1;
    ts->in_tx = 1;
    ts->task = task;
    /* The position has a row of its own, created empty if missing, so that
     * it can be locked even before a task's first commit. */
    const char *vals[3] = {ts->group, tbuf, pbuf};
    PGresult *r = PQexecParams(ts->conn,
                               "INSERT INTO sessionizer_task_meta VALUES ($1, $2, 'stored_position', "
                               "'') ON CONFLICT DO NOTHING", 2, NULL, vals, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) goto fail;
    r = PQexecParams(ts->conn, "SELECT convert_from(v, 'UTF8') FROM sessionizer_task_meta WHERE "
                     "grp = $1 AND task = $2 AND k = 'stored_position' FOR UPDATE",
                     2, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        PQclear(r);
        goto fail;
    }
    const char *s = PQgetvalue(r, 0, 0);
    long long stored = *s ? strtoll(s, NULL, 10) : -1;
    PQclear(r);
    if (stored > position) {
        *superseded = 1;
        task_store_abort(ts);
        return 0;
    }
    r = PQexecParams(ts->conn, "UPDATE sessionizer_task_meta SET v = convert_to($3, 'UTF8') WHERE "
                     "grp = $1 AND task = $2 AND k = 'stored_position'",
                     3, NULL, vals, NULL, NULL, 0);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) goto fail;
    return 0;
fail:
    pg_err(ts, "beginning a task commit", NULL, err, errlen);
    task_store_abort(ts);
    return -1;
}

int task_store_put(task_store *ts, const char *key, const void *v, size_t len, char *err,
                   size_t errlen)
{
    if (!ts->in_tx) return -1;
    char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", (int)ts->task);
    const char *vals[4] = {ts->group, tbuf, key, len ? v : ""};
    int lens[4] = {0, 0, 0, (int)len};
    int fmts[4] = {0, 0, 0, 1};
    PGresult *r = PQexecParams(ts->conn,
                               "INSERT INTO sessionizer_task_meta VALUES ($1, $2, $3, $4) "
                               "ON CONFLICT (grp, task, k) DO UPDATE SET v = EXCLUDED.v",
                               4, NULL, vals, lens, fmts, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) pg_err(ts, "writing a task's state", r, err, errlen);
    PQclear(r);
    return ok ? 0 : -1;
}

/* Sends the buffered user rows. */
static int flush_users(task_store *ts, char *err, size_t errlen)
{
    char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", (int)ts->task);
    if (ts->up_ids.n > 0) {
        array_encode(&ts->up_ids, PG_INT8OID, &ts->arr[0]);
        array_encode(&ts->up_blobs, PG_BYTEAOID, &ts->arr[1]);
        const char *vals[4] = {ts->group, tbuf, (const char *)ts->arr[0].data,
                               (const char *)ts->arr[1].data};
        int lens[4] = {0, 0, (int)ts->arr[0].len, (int)ts->arr[1].len};
        int fmts[4] = {0, 0, 1, 1};
        Oid types[4] = {0, 0, PG_INT8ARRAYOID, PG_BYTEAARRAYOID};
        PGresult *r = PQexecParams(ts->conn,
                                   "INSERT INTO sessionizer_task_users SELECT $1, $2, u, b FROM "
                                   "unnest($3::int8[], $4::bytea[]) AS t(u, b) "
                                   "ON CONFLICT (grp, task, user_id) DO UPDATE SET blob = EXCLUDED.blob",
                                   4, types, vals, lens, fmts, 0);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) pg_err(ts, "writing a task's users", r, err, errlen);
        PQclear(r);
        if (!ok) return -1;
        array_reset(&ts->up_ids);
        array_reset(&ts->up_blobs);
    }
    if (ts->del_ids.n > 0) {
        array_encode(&ts->del_ids, PG_INT8OID, &ts->arr[0]);
        const char *vals[3] = {ts->group, tbuf, (const char *)ts->arr[0].data};
        int lens[3] = {0, 0, (int)ts->arr[0].len};
        int fmts[3] = {0, 0, 1};
        Oid types[3] = {0, 0, PG_INT8ARRAYOID};
        PGresult *r = PQexecParams(ts->conn,
                                   "DELETE FROM sessionizer_task_users WHERE grp = $1 AND task = $2 "
                                   "AND user_id = ANY($3::int8[])", 3, types, vals, lens, fmts, 0);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) pg_err(ts, "deleting a task's users", r, err, errlen);
        PQclear(r);
        if (!ok) return -1;
        array_reset(&ts->del_ids);
    }
    return 0;
}

int task_store_put_user(task_store *ts, int64_t user_id, const void *blob, size_t len, char *err,
                        size_t errlen)
{
    if (!ts->in_tx) return -1;
    if (blob) {
        array_add_i64(&ts->up_ids, user_id);
        array_add(&ts->up_blobs, blob, len);
    } else {
        array_add_i64(&ts->del_ids, user_id);
    }
    if (ts->up_ids.n + ts->del_ids.n >= FLUSH_ROWS) return flush_users(ts, err, errlen);
    return 0;
}

int task_store_commit(task_store *ts, char *err, size_t errlen)
{
    if (!ts->in_tx) return -1;
    if (flush_users(ts, err, errlen)) {
        task_store_abort(ts);
        return -1;
    }
    ts->in_tx = 0;
    return exec_ok(ts, "COMMIT", err, errlen);
}

void task_store_abort(task_store *ts)
{
    array_reset(&ts->up_ids);
    array_reset(&ts->up_blobs);
    array_reset(&ts->del_ids);
    if (!ts->in_tx) return;
    ts->in_tx = 0;
    PGresult *r = PQexec(ts->conn, "ROLLBACK");
    PQclear(r);
}

int64_t task_store_count_key(task_store *ts, const char *key, char *err, size_t errlen)
{
    const char *vals[2] = {ts->group, key};
    PGresult *r = PQexecParams(ts->conn, "SELECT count(*) FROM sessionizer_task_meta WHERE "
                               "grp = $1 AND k = $2", 2, NULL, vals, NULL, NULL, 0);
    int64_t n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else
        pg_err(ts, "counting finished tasks", r, err, errlen);
    PQclear(r);
    return n;
}
