/*
 * task_store.c - session tasks' state in PostgreSQL (task_store.h).
 *
 * Three tables shared by every group, keyed by (grp, task):
 *   sessionizer_task_meta  (grp, task, k, v bytea)      named blobs
 *   sessionizer_task_users (grp, task, user_id, blob)   open sessions per int user
 *   sessionizer_task_string_users (grp, task, user_id bytea, blob)
 *                                                       ... per string user
 * Values travel in binary (bytea, int8), never spliced into SQL. A string
 * user is bytea, not text: its bytes come back exactly whatever the
 * server's encoding, and the primary key's index holds them (at most
 * USER_MAX_BYTES, far below a btree entry's ~2.7 kB).
 *
 * Every exchange goes through pg_conn (sink/pg_conn.h), the sink's own
 * mechanism: bounded waits, a stop obeyed, transient failures retried as a
 * whole transaction. Instances racing on one task (two owners during an
 * eviction) serialize on the task's position row, and a deadlock or
 * serialization failure among them is such a transient failure. What is not
 * transient (a permission, a state that does not decode) fails the call at
 * once, and the instance then stops without committing (the caller's
 * contract): the state of a task is only ever replaced by a whole newer
 * commit, so the next owner resumes from the last one.
 */
#include "task/task_store.h"

#include <assert.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/xalloc.h"
#include "sink/pg_conn.h"
#include "sink/pg_conninfo.h"

/* A commit's rows are sent as statements over arrays (binary int8[],
 * text[] and bytea[]), not one statement per row: a task commits thousands
 * of users a second, and a round trip each made the state store the
 * scale-out's bottleneck (docs/scaling.md, Figures). */
#define PG_INT8OID 20
#define PG_TEXTOID 25
#define PG_BYTEAOID 17
#define PG_INT8ARRAYOID 1016
#define PG_TEXTARRAYOID 1009
#define PG_BYTEAARRAYOID 1001
#define FLUSH_ROWS 10000 /* rows per statement at most */

typedef struct pg_array {
    buf elems;   /* per element: be32 length, bytes */
    size_t *off; /* where each element starts in elems */
    uint32_t n, cap;
} pg_array;

struct task_store {
    pg_conninfo ci;
    char *password;
    pg_conn pc;
    char *group;
    int schema_ok;
    /* the commit being built (begin .. commit) */
    int in_tx;
    int32_t task;
    int64_t position;
    pg_array meta_keys, meta_vals, up_ids, up_blobs, del_ids;
    pg_array up_sids, up_sblobs, del_sids; /* string users */
    buf arr[2];
    /* the operation pg_conn_retry runs */
    int superseded;
    PGresult *res[3]; /* a load's meta, int users, string users */
    int64_t count;
    const char *count_key;
};

static void put_be32(buf *b, uint32_t v)
{
    unsigned char c[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, c, 4);
}

static void array_add(pg_array *a, const void *v, size_t len)
{
    assert(len <= 0x7fffffff);
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->off = xrealloc(a->off, a->cap * sizeof *a->off);
    }
    a->off[a->n++] = a->elems.len;
    put_be32(&a->elems, (uint32_t)len);
    buf_append(&a->elems, v, len);
}

static void array_add_i64(pg_array *a, int64_t v)
{
    unsigned char c[8];
    for (int i = 0; i < 8; i++) c[i] = (unsigned char)((uint64_t)v >> (56 - 8 * i));
    array_add(a, c, 8);
}

/* Elements [from, to) in PostgreSQL's binary array format: ndim,
 * has-nulls, element type, then (size, lower bound), then the elements. */
static void array_encode(const pg_array *a, uint32_t from, uint32_t to, unsigned oid, buf *out)
{
    assert(from < to && to <= a->n);
    size_t start = a->off[from], end = to < a->n ? a->off[to] : a->elems.len;
    buf_reset(out);
    put_be32(out, 1);
    put_be32(out, 0);
    put_be32(out, oid);
    put_be32(out, to - from);
    put_be32(out, 1);
    buf_append(out, a->elems.data + start, end - start);
}

static void array_reset(pg_array *a)
{
    buf_reset(&a->elems);
    a->n = 0;
}

static void array_free(pg_array *a)
{
    buf_free(&a->elems);
    free(a->off);
}

static const char *const SCHEMA[] = {
    "CREATE TABLE IF NOT EXISTS sessionizer_task_meta (grp text NOT NULL, task int NOT NULL, "
    "k text NOT NULL, v bytea NOT NULL, PRIMARY KEY (grp, task, k))",
    "CREATE TABLE IF NOT EXISTS sessionizer_task_users (grp text NOT NULL, task int NOT NULL, "
    "user_id bigint NOT NULL, blob bytea NOT NULL, PRIMARY KEY (grp, task, user_id))",
    "CREATE TABLE IF NOT EXISTS sessionizer_task_string_users (grp text NOT NULL, task int NOT "
    "NULL, user_id bytea NOT NULL, blob bytea NOT NULL, PRIMARY KEY (grp, task, user_id))",
};

/* After every connection (pg_conn's setup): quiet notices, and the tables. */
static int store_setup(void *ud, char *err, size_t errlen)
{
    task_store *ts = ud;
    int st = pg_conn_exec(&ts->pc, "SET client_min_messages = warning", "setting client_min_messages",
                          err, errlen);
    for (size_t i = 0; !st && !ts->schema_ok && i < sizeof SCHEMA / sizeof *SCHEMA; i++) {
        st = pg_conn_exec(&ts->pc, SCHEMA[i], "creating its tables", err, errlen);
        /* Instances starting together race on CREATE TABLE IF NOT EXISTS;
         * the loser's error means the winner's table is there now. */
        if (st && pg_conn_lost_create_race(&ts->pc))
            st = pg_conn_exec(&ts->pc, SCHEMA[i], "creating its tables", err, errlen);
    }
    if (!st) ts->schema_ok = 1;
    return st;
}

task_store *task_store_open(const task_store_options *o, char *err, size_t errlen)
{
    task_store *ts = xcalloc(1, sizeof *ts);
    pg_conninfo_init(&ts->ci, xstrdup(o->conninfo));
    ts->group = xstrdup(o->group);
    pg_conn_init(&ts->pc, "task state store", &ts->ci);
    ts->pc.stop = o->stop;
    ts->pc.status = o->status;
    ts->pc.setup = store_setup;
    ts->pc.ud = ts;
    for (const char *const *p = o->props; p && *p; p++) {
        const char *eq = strchr(*p, '=');
        if (!eq) continue; /* the sink reports it */
        size_t kl = (size_t)(eq - *p);
        int rc = 0;
        if (kl == 8 && strncmp(*p, "password", 8) == 0) {
            free(ts->password);
            ts->password = xstrdup(eq + 1);
            pg_conninfo_add_secret(&ts->ci, eq + 1, strlen(eq + 1));
        } else if (pg_conn_setting(&ts->pc, *p, kl, eq + 1, &rc, err, errlen) && rc) {
            task_store_close(ts);
            return NULL;
        }
    }
    ts->pc.password = ts->password;
    if (pg_conn_retry(&ts->pc, NULL, ts, "connect", err, errlen)) {
        task_store_close(ts);
        return NULL;
    }
    return ts;
}

void task_store_close(task_store *ts)
{
    if (!ts) return;
    pg_conn_drop(&ts->pc);
    pg_conninfo_free(&ts->ci);
    if (ts->password) memset(ts->password, 0, strlen(ts->password));
    free(ts->password);
    free(ts->group);
    array_free(&ts->meta_keys);
    array_free(&ts->meta_vals);
    array_free(&ts->up_ids);
    array_free(&ts->up_blobs);
    array_free(&ts->del_ids);
    array_free(&ts->up_sids);
    array_free(&ts->up_sblobs);
    array_free(&ts->del_sids);
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

static void clear_results(task_store *ts)
{
    for (int i = 0; i < 3; i++) {
        PQclear(ts->res[i]);
        ts->res[i] = NULL;
    }
}

/* Sends sql with the group and task as $1 and $2 (text) and more binary
 * parameters after them; the result, when res. */
static int exec_task(task_store *ts, const char *sql, int n_more, const Oid *types_more,
                     const char *const *vals_more, const int *lens_more, const char *what,
                     PGresult **res, char *err, size_t errlen)
{
    enum { MAX_PARAMS = 4 };
    assert(n_more + 2 <= MAX_PARAMS);
    char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", (int)ts->task);
    const char *vals[MAX_PARAMS] = {ts->group, tbuf};
    int lens[MAX_PARAMS] = {0}, fmts[MAX_PARAMS] = {0};
    Oid types[MAX_PARAMS] = {0};
    for (int i = 0; i < n_more; i++) {
        vals[2 + i] = vals_more[i];
        lens[2 + i] = lens_more[i];
        fmts[2 + i] = 1;
        types[2 + i] = types_more[i];
    }
    int sent = PQsendQueryParams(ts->pc.conn, sql, 2 + n_more, types, vals, lens, fmts, 1);
    return pg_conn_finish(&ts->pc, sent, what, res, err, errlen);
}

/* One attempt at reading a task whole, in one snapshot: a concurrent commit
 * of another owner must not mix into what is loaded. */
static int load_op(void *ud, char *err, size_t errlen)
{
    task_store *ts = ud;
    clear_results(ts);
    int st = pg_conn_exec(&ts->pc, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "loading a task",
                          err, errlen);
    if (!st)
        st = exec_task(ts, "SELECT k, v FROM sessionizer_task_meta WHERE grp = $1 AND task = $2 "
                       "AND k <> 'stored_position'", 0, NULL, NULL, NULL, "loading a task",
                       &ts->res[0], err, errlen);
    if (!st)
        st = exec_task(ts, "SELECT user_id, blob FROM sessionizer_task_users WHERE grp = $1 AND "
                       "task = $2", 0, NULL, NULL, NULL, "loading a task's users", &ts->res[1],
                       err, errlen);
    if (!st)
        st = exec_task(ts, "SELECT user_id, blob FROM sessionizer_task_string_users WHERE grp = $1 "
                       "AND task = $2", 0, NULL, NULL, NULL, "loading a task's users",
                       &ts->res[2], err, errlen);
    if (!st) st = pg_conn_exec(&ts->pc, "COMMIT", "loading a task", err, errlen);
    if (st) clear_results(ts);
    return st;
}

int task_store_load(task_store *ts, int32_t task, task_meta_fn fn_meta, task_user_fn fn_user,
                    void *ctx, char *err, size_t errlen)
{
    assert(!ts->in_tx);
    ts->task = task;
    if (pg_conn_retry(&ts->pc, load_op, ts, "loading a task", err, errlen)) return -1;
    PGresult *r = ts->res[0], *u = ts->res[1], *su = ts->res[2];
    int n = PQntuples(r), rc = n;
    for (int i = 0; i < n && rc >= 0; i++) {
        char key[64];
        snprintf(key, sizeof key, "%.*s", PQgetlength(r, i, 0), PQgetvalue(r, i, 0));
        if (fn_meta(ctx, key, PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1))) {
            snprintf(err, errlen, "task state store: task %d of group %s: '%s' does not decode "
                     "(written by another version, or other --gap/--lateness/--max-pages?)",
                     (int)task, ts->group, key);
            rc = -1;
        }
    }
    for (int i = 0, m = PQntuples(u); i < m && rc >= 0; i++) {
        if (PQgetlength(u, i, 0) != 8 ||
            fn_user(ctx, &(user_key){.id = be64(PQgetvalue(u, i, 0))}, PQgetvalue(u, i, 1),
                    (size_t)PQgetlength(u, i, 1))) {
            snprintf(err, errlen, "task state store: task %d of group %s: a user's sessions do "
                     "not decode", (int)task, ts->group);
            rc = -1;
        }
    }
    for (int i = 0, m = PQntuples(su); i < m && rc >= 0; i++) {
        int len = PQgetlength(su, i, 0);
        if (len < 1 || len > USER_MAX_BYTES ||
            fn_user(ctx, &(user_key){.str = PQgetvalue(su, i, 0), .len = (uint32_t)len},
                    PQgetvalue(su, i, 1), (size_t)PQgetlength(su, i, 1))) {
            snprintf(err, errlen, "task state store: task %d of group %s: a string user's "
                     "sessions do not decode", (int)task, ts->group);
            rc = -1;
        }
    }
    clear_results(ts);
    return rc;
}

void task_store_begin(task_store *ts, int32_t task, int64_t position)
{
    task_store_abort(ts);
    ts->in_tx = 1;
    ts->task = task;
    ts->position = position;
    /* The position is a blob of its own, decimal text (stored_position). */
    char pbuf[24];
    int n = snprintf(pbuf, sizeof pbuf, "%lld", (long long)position);
    task_store_put(ts, "stored_position", pbuf, (size_t)n);
}

void task_store_put(task_store *ts, const char *key, const void *v, size_t len)
{
    assert(ts->in_tx);
    array_add(&ts->meta_keys, key, strlen(key));
    array_add(&ts->meta_vals, len ? v : "", len);
}

void task_store_put_user(task_store *ts, const user_key *user, const void *blob, size_t len)
{
    assert(ts->in_tx);
    if (user->str) {
        assert(user->len >= 1 && user->len <= USER_MAX_BYTES);
        if (blob) {
            array_add(&ts->up_sids, user->str, user->len);
            array_add(&ts->up_sblobs, blob, len);
        } else {
            array_add(&ts->del_sids, user->str, user->len);
        }
    } else if (blob) {
        array_add_i64(&ts->up_ids, user->id);
        array_add(&ts->up_blobs, blob, len);
    } else {
        array_add_i64(&ts->del_ids, user->id);
    }
}

/* One attempt at the whole commit; safe to run again (a COMMIT lost in
 * flight that did commit is found as the stored position, which an equal
 * position overwrites with the same state). */
static int commit_op(void *ud, char *err, size_t errlen)
{
    task_store *ts = ud;
    PGresult *r = NULL;
    ts->superseded = 0;
    int st = pg_conn_exec(&ts->pc, "BEGIN", "beginning a task commit", err, errlen);
    /* The position has a row of its own, created empty if missing, so that
     * it can be locked even before a task's first commit. */
    if (!st)
        st = exec_task(ts, "INSERT INTO sessionizer_task_meta VALUES ($1, $2, 'stored_position', "
                       "'') ON CONFLICT DO NOTHING", 0, NULL, NULL, NULL,
                       "beginning a task commit", NULL, err, errlen);
    if (!st)
        st = exec_task(ts, "SELECT v FROM sessionizer_task_meta WHERE grp = $1 AND task = $2 AND "
                       "k = 'stored_position' FOR UPDATE", 0, NULL, NULL, NULL,
                       "locking a task's position", &r, err, errlen);
    if (st) return st;
    char s[24] = "";
    if (PQntuples(r) == 1)
        snprintf(s, sizeof s, "%.*s", PQgetlength(r, 0, 0), PQgetvalue(r, 0, 0));
    PQclear(r);
    long long stored = *s ? strtoll(s, NULL, 10) : -1;
    if (stored > ts->position) {
        ts->superseded = 1;
        return pg_conn_exec(&ts->pc, "ROLLBACK", "ending a superseded commit", err, errlen);
    }
    static const Oid meta_types[2] = {PG_TEXTARRAYOID, PG_BYTEAARRAYOID};
    static const Oid one_types[1] = {PG_INT8ARRAYOID};
    array_encode(&ts->meta_keys, 0, ts->meta_keys.n, PG_TEXTOID, &ts->arr[0]);
    array_encode(&ts->meta_vals, 0, ts->meta_vals.n, PG_BYTEAOID, &ts->arr[1]);
    const char *mv[2] = {(const char *)ts->arr[0].data, (const char *)ts->arr[1].data};
    int ml[2] = {(int)ts->arr[0].len, (int)ts->arr[1].len};
    st = exec_task(ts, "INSERT INTO sessionizer_task_meta SELECT $1, $2, k, v FROM "
                   "unnest($3::text[], $4::bytea[]) AS t(k, v) "
                   "ON CONFLICT (grp, task, k) DO UPDATE SET v = EXCLUDED.v",
                   2, meta_types, mv, ml, "writing a task's state", NULL, err, errlen);
    for (uint32_t i = 0; !st && i < ts->up_ids.n; i += FLUSH_ROWS) {
        uint32_t to = ts->up_ids.n - i > FLUSH_ROWS ? i + FLUSH_ROWS : ts->up_ids.n;
        array_encode(&ts->up_ids, i, to, PG_INT8OID, &ts->arr[0]);
        array_encode(&ts->up_blobs, i, to, PG_BYTEAOID, &ts->arr[1]);
        static const Oid types[2] = {PG_INT8ARRAYOID, PG_BYTEAARRAYOID};
        const char *v[2] = {(const char *)ts->arr[0].data, (const char *)ts->arr[1].data};
        int l[2] = {(int)ts->arr[0].len, (int)ts->arr[1].len};
        st = exec_task(ts, "INSERT INTO sessionizer_task_users SELECT $1, $2, u, b FROM "
                       "unnest($3::int8[], $4::bytea[]) AS t(u, b) "
                       "ON CONFLICT (grp, task, user_id) DO UPDATE SET blob = EXCLUDED.blob",
                       2, types, v, l, "writing a task's users", NULL, err, errlen);
    }
    for (uint32_t i = 0; !st && i < ts->del_ids.n; i += FLUSH_ROWS) {
        uint32_t to = ts->del_ids.n - i > FLUSH_ROWS ? i + FLUSH_ROWS : ts->del_ids.n;
        array_encode(&ts->del_ids, i, to, PG_INT8OID, &ts->arr[0]);
        const char *v[1] = {(const char *)ts->arr[0].data};
        int l[1] = {(int)ts->arr[0].len};
        st = exec_task(ts, "DELETE FROM sessionizer_task_users WHERE grp = $1 AND task = $2 "
                       "AND user_id = ANY($3::int8[])", 1, one_types, v, l,
                       "deleting a task's users", NULL, err, errlen);
    }
    for (uint32_t i = 0; !st && i < ts->up_sids.n; i += FLUSH_ROWS) {
        uint32_t to = ts->up_sids.n - i > FLUSH_ROWS ? i + FLUSH_ROWS : ts->up_sids.n;
        array_encode(&ts->up_sids, i, to, PG_BYTEAOID, &ts->arr[0]);
        array_encode(&ts->up_sblobs, i, to, PG_BYTEAOID, &ts->arr[1]);
        static const Oid types[2] = {PG_BYTEAARRAYOID, PG_BYTEAARRAYOID};
        const char *v[2] = {(const char *)ts->arr[0].data, (const char *)ts->arr[1].data};
        int l[2] = {(int)ts->arr[0].len, (int)ts->arr[1].len};
        st = exec_task(ts, "INSERT INTO sessionizer_task_string_users SELECT $1, $2, u, b FROM "
                       "unnest($3::bytea[], $4::bytea[]) AS t(u, b) "
                       "ON CONFLICT (grp, task, user_id) DO UPDATE SET blob = EXCLUDED.blob",
                       2, types, v, l, "writing a task's users", NULL, err, errlen);
    }
    for (uint32_t i = 0; !st && i < ts->del_sids.n; i += FLUSH_ROWS) {
        uint32_t to = ts->del_sids.n - i > FLUSH_ROWS ? i + FLUSH_ROWS : ts->del_sids.n;
        array_encode(&ts->del_sids, i, to, PG_BYTEAOID, &ts->arr[0]);
        static const Oid sone_types[1] = {PG_BYTEAARRAYOID};
        const char *v[1] = {(const char *)ts->arr[0].data};
        int l[1] = {(int)ts->arr[0].len};
        st = exec_task(ts, "DELETE FROM sessionizer_task_string_users WHERE grp = $1 AND task = "
                       "$2 AND user_id = ANY($3::bytea[])", 1, sone_types, v, l,
                       "deleting a task's users", NULL, err, errlen);
    }
    if (st) return st;
    st = pg_conn_finish(&ts->pc, PQsendQuery(ts->pc.conn, "COMMIT"), "committing a task", &r, err,
                        errlen);
    if (st) return st;
    /* A transaction that failed answers COMMIT with ROLLBACK. */
    int committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    if (!committed)
        return pg_conn_fail(&ts->pc, err, errlen, "task state store: COMMIT was answered with a "
                            "rollback"), PG_TRANSIENT;
    return PG_OK;
}

int task_store_commit(task_store *ts, int *superseded, char *err, size_t errlen)
{
    assert(ts->in_tx);
    *superseded = 0;
    int rc = pg_conn_retry(&ts->pc, commit_op, ts, "committing a task", err, errlen);
    if (!rc) *superseded = ts->superseded;
    task_store_abort(ts);
    return rc;
}

void task_store_abort(task_store *ts)
{
    array_reset(&ts->meta_keys);
    array_reset(&ts->meta_vals);
    array_reset(&ts->up_ids);
    array_reset(&ts->up_blobs);
    array_reset(&ts->del_ids);
    array_reset(&ts->up_sids);
    array_reset(&ts->up_sblobs);
    array_reset(&ts->del_sids);
    ts->in_tx = 0;
}

static int count_op(void *ud, char *err, size_t errlen)
{
    task_store *ts = ud;
    const char *vals[2] = {ts->group, ts->count_key};
    PGresult *r;
    int st = pg_conn_finish(&ts->pc,
                            PQsendQueryParams(ts->pc.conn, "SELECT count(*) FROM sessionizer_task_meta "
                                              "WHERE grp = $1 AND k = $2", 2, NULL, vals, NULL,
                                              NULL, 0),
                            "counting finished tasks", &r, err, errlen);
    if (st) return st;
    ts->count = PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return PG_OK;
}

int64_t task_store_count_key(task_store *ts, const char *key, char *err, size_t errlen)
{
    ts->count_key = key;
    if (pg_conn_retry(&ts->pc, count_op, ts, "counting finished tasks", err, errlen)) return -1;
    return ts->count;
}
