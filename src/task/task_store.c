/*
 * task_store.c - session tasks' state in PostgreSQL (task_store.h): each
 * task's change log (changelog.h's frames and snapshots).
 *
 * Two tables shared by every group, keyed by (grp, task):
 *   sessionizer_task_meta (grp, task, k, v bytea): per task
 *     stored_position  decimal text, '' before the first commit: the row a
 *                      commit locks, and its guard
 *     position         POSITION_BYTES: the position, the last commit's
 *                      number, the snapshot's commit (0: none), the
 *                      snapshot's bytes, the frames' bytes since it, and
 *                      flags (BOOK_STRING_USERS: --user-type string; a task
 *                      is refused to an instance of the other type)
 *     done             once the task is finished (--until-end)
 *   sessionizer_task_log (grp, task, seq, part, data bytea): part 0 is the
 *     frame of commit seq, parts 1.. the snapshot of the state after commit
 *     seq cut into pieces of SNAPSHOT_PART bytes. A snapshot's commit deletes
 *     every row of the task below it, so the rows are the snapshot and the
 *     frames after it.
 * Values travel in binary (bytea, int8), never spliced into SQL.
 *
 * The version before the change log kept each user's open sessions as a row
 * of sessionizer_task_users and the engine's meta as a key 'engine': a task
 * that has one is refused with the way out (a new --group rewrites the same
 * table), and its 8-byte 'position' does not decode as ours, nor ours as its
 * (that version then stops with "'position' does not decode").
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
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/secret.h"
#include "common/status.h"
#include "common/testenv.h"
#include "common/xalloc.h"
#include "sink/pg_conn.h"
#include "sink/pg_conninfo.h"

/* Rows go as statements over arrays (binary int8[], text[] and bytea[]):
 * one round trip per commit, whatever it holds. */
#define PG_INT8OID 20
#define PG_TEXTOID 25
#define PG_BYTEAOID 17
#define PG_INT8ARRAYOID 1016
#define PG_TEXTARRAYOID 1009
#define PG_BYTEAARRAYOID 1001
#define SNAPSHOT_PART ((size_t)1 << 20)  /* bytes of a snapshot per row */
#define PARTS_PER_STATEMENT 16
#define POSITION_BYTES 44
#define BOOK_STRING_USERS 1u

typedef struct pg_array {
    buf elems;   /* per element: be32 length, bytes */
    size_t *off; /* where each element starts in elems */
    uint32_t n, cap;
} pg_array;

/* The task's 'position' row. */
typedef struct task_book {
    int64_t position;
    uint64_t seq, snap_seq; /* the last commit; the snapshot's (0: none) */
    int64_t snap_bytes, log_bytes;
    uint32_t flags;
} task_book;

struct task_store {
    pg_conninfo ci;
    char *password;
    pg_conn pc;
    char *group;
    int schema_ok;
    int64_t compact_min;
    uint64_t *base; /* per task: the commit its engine is at (load, commit) */
    int32_t n_base;
    task_store_stats stats;
    /* the operation pg_conn_retry runs */
    int32_t task;
    int64_t position;
    int finished;
    const changelog_frame *frame;
    const engine *eng;
    int superseded;
    uint64_t committed;          /* the commit number written */
    task_store_stats attempt;    /* what the attempt wrote, counted once it commits */
    buf sealed, snap;            /* encoded for commit sealed_seq / snap_seq (0: none) */
    uint64_t sealed_seq, snap_seq;
    pg_array keys, vals, parts;
    buf arr[2], scratch;
    PGresult *res[2];
    int64_t count;
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
    "CREATE TABLE IF NOT EXISTS sessionizer_task_log (grp text NOT NULL, task int NOT NULL, "
    "seq bigint NOT NULL, part int NOT NULL, data bytea NOT NULL, "
    "PRIMARY KEY (grp, task, seq, part))",
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
    /* for tests that need a snapshot from a small log */
    long long min = testenv_positive(TESTENV_SNAPSHOT_MIN_BYTES);
    ts->compact_min = min ? min : TASK_STORE_COMPACT_MIN;
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
            secret_free(ts->password);
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

static void clear_results(task_store *ts)
{
    for (int i = 0; i < 2; i++) {
        PQclear(ts->res[i]);
        ts->res[i] = NULL;
    }
}

void task_store_close(task_store *ts)
{
    if (!ts) return;
    pg_conn_drop(&ts->pc);
    pg_conninfo_free(&ts->ci);
    secret_free(ts->password);
    free(ts->group);
    free(ts->base);
    clear_results(ts);
    array_free(&ts->keys);
    array_free(&ts->vals);
    array_free(&ts->parts);
    buf_free(&ts->arr[0]);
    buf_free(&ts->arr[1]);
    buf_free(&ts->scratch);
    buf_free(&ts->sealed);
    buf_free(&ts->snap);
    free(ts);
}

void task_store_get_stats(const task_store *ts, task_store_stats *out) { *out = ts->stats; }

static int64_t be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | (unsigned char)p[i];
    return (int64_t)v;
}

static uint32_t be32(const char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = v << 8 | (unsigned char)p[i];
    return v;
}

static void be64_put(char *out, int64_t v)
{
    for (int i = 0; i < 8; i++) out[i] = (char)((uint64_t)v >> (56 - 8 * i));
}

static uint64_t *base_of(task_store *ts, int32_t task)
{
    assert(task >= 0);
    if (task >= ts->n_base) {
        int32_t n = task + 1;
        ts->base = xrealloc(ts->base, (size_t)n * sizeof *ts->base);
        memset(ts->base + ts->n_base, 0, (size_t)(n - ts->n_base) * sizeof *ts->base);
        ts->n_base = n;
    }
    return &ts->base[task];
}

static void book_encode(const task_book *k, buf *out)
{
    buf_reset(out);
    buf_put_i64le(out, k->position);
    buf_put_u64le(out, k->seq);
    buf_put_u64le(out, k->snap_seq);
    buf_put_i64le(out, k->snap_bytes);
    buf_put_i64le(out, k->log_bytes);
    buf_put_u32le(out, k->flags);
    assert(out->len == POSITION_BYTES);
}

static int book_decode(const char *v, size_t len, task_book *k)
{
    reader r;
    reader_init(&r, v, len);
    reader_i64le(&r, &k->position);
    reader_u64le(&r, &k->seq);
    reader_u64le(&r, &k->snap_seq);
    reader_i64le(&r, &k->snap_bytes);
    reader_i64le(&r, &k->log_bytes);
    reader_u32le(&r, &k->flags);
    return r.bad || reader_left(&r) || k->snap_seq > k->seq ? -1 : 0;
}

/* The refusal of a task written before the change log (see the top). */
static int old_version(task_store *ts, char *err, size_t errlen)
{
    snprintf(err, errlen, "task state store: task %d of group %s was written by an earlier "
             "sessionizer (open sessions as rows of sessionizer_task_users, not a change log): "
             "finish the group with that version, or run this one with a new --group (the table "
             "is a function of the log: the new group rewrites the same rows)",
             (int)ts->task, ts->group);
    return PG_PERMANENT;
}

/* A task of the other --user-type: its users would not mean the same. */
static int other_user_type(task_store *ts, const task_book *k, char *err, size_t errlen)
{
    int strings = (k->flags & BOOK_STRING_USERS) != 0;
    snprintf(err, errlen, "task state store: task %d of group %s was written with --user-type "
             "%s, this instance runs --user-type %s (every instance of a group needs the same "
             "--user-type: a new --group starts over with another)", (int)ts->task, ts->group,
             strings ? "string" : "int", strings ? "int" : "string");
    return PG_PERMANENT;
}

static int undecodable(task_store *ts, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "task state store: task %d of group %s: %s does not decode (written "
             "by another version, or other --gap/--lateness/--max-pages?)", (int)ts->task,
             ts->group, what);
    return PG_PERMANENT;
}

/* Sends sql with the group and task as $1 and $2 (text) and more binary
 * parameters after them; the result, when res. */
static int exec_task(task_store *ts, const char *sql, int n_more, const Oid *types_more,
                     const char *const *vals_more, const int *lens_more, const char *what,
                     PGresult **res, char *err, size_t errlen)
{
    enum { MAX_PARAMS = 5 };
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

/* A snapshot's bytes are held only during the call that needs them: the
 * largest task's state is not kept twice for the instance's life. */
static void release_large(task_store *ts)
{
    buf *b[] = {&ts->scratch, &ts->snap, &ts->arr[0]};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        if (b[i]->cap > SNAPSHOT_PART) buf_free(b[i]);
        else buf_reset(b[i]);
    if (ts->parts.elems.cap > SNAPSHOT_PART) {
        array_free(&ts->parts);
        memset(&ts->parts, 0, sizeof ts->parts);
    }
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
                       "AND k IN ('position', 'engine')", 0, NULL, NULL, NULL, "loading a task",
                       &ts->res[0], err, errlen);
    if (!st)
        st = exec_task(ts, "SELECT seq, part, data FROM sessionizer_task_log WHERE grp = $1 AND "
                       "task = $2 ORDER BY seq, part", 0, NULL, NULL, NULL,
                       "loading a task's change log", &ts->res[1], err, errlen);
    if (!st) st = pg_conn_exec(&ts->pc, "COMMIT", "loading a task", err, errlen);
    if (st) clear_results(ts);
    return st;
}

/* Decodes what load_op read into e (see task_store_load). */
static int load_rows(task_store *ts, engine *e, changelog_meta_fn fn, void *ctx, uint64_t *seq,
                     char *err, size_t errlen)
{
    PGresult *m = ts->res[0], *l = ts->res[1];
    task_book k = {0};
    int have = 0;
    for (int i = 0; i < PQntuples(m); i++)
        if (strcmp(PQgetvalue(m, i, 0), "engine") == 0) return old_version(ts, err, errlen), -1;
    for (int i = 0; i < PQntuples(m); i++) {
        if (book_decode(PQgetvalue(m, i, 1), (size_t)PQgetlength(m, i, 1), &k))
            return undecodable(ts, "its 'position'", err, errlen), -1;
        have = 1;
    }
    *seq = k.seq;
    if (have && ((k.flags & BOOK_STRING_USERS) != 0) != (engine_string_users(e) != 0))
        return other_user_type(ts, &k, err, errlen), -1;
    if (!have) return PQntuples(l) ? undecodable(ts, "a change log without a position", err,
                                                 errlen), -1 : 0;
    int n = PQntuples(l), i = 0;
    /* the snapshot: parts 1.. of commit snap_seq, in order */
    buf *sn = &ts->scratch;
    buf_reset(sn);
    for (; i < n && k.snap_seq > 0; i++) {
        if (PQgetlength(l, i, 0) != 8 || PQgetlength(l, i, 1) != 4) break;
        uint64_t s = (uint64_t)be64(PQgetvalue(l, i, 0));
        uint32_t part = be32(PQgetvalue(l, i, 1));
        if (s != k.snap_seq || part == 0) break;
        if (part != (uint32_t)i + 1) return undecodable(ts, "its snapshot (a part missing)", err,
                                                        errlen), -1;
        buf_append(sn, PQgetvalue(l, i, 2), (size_t)PQgetlength(l, i, 2));
    }
    if (k.snap_seq > 0) {
        uint64_t s = 0;
        int rc = changelog_load_snapshot(e, sn->data, sn->len, &s, fn, NULL, ctx);
        if (rc == -2) return undecodable(ts, "its snapshot (other settings)", err, errlen), -1;
        if (rc || s != k.snap_seq) return undecodable(ts, "its snapshot", err, errlen), -1;
    }
    /* then every frame after it, one commit each, none missing */
    uint64_t want = k.snap_seq + 1;
    for (; i < n; i++, want++) {
        changelog_view v;
        const char *data = PQgetvalue(l, i, 2);
        size_t len = (size_t)PQgetlength(l, i, 2);
        if (PQgetlength(l, i, 0) != 8 || PQgetlength(l, i, 1) != 4 ||
            (uint64_t)be64(PQgetvalue(l, i, 0)) != want || be32(PQgetvalue(l, i, 1)) != 0 ||
            changelog_parse(data, len, &v) != 1 || v.frame_len != len || v.seq != want)
            return undecodable(ts, "its change log (a frame missing or damaged)", err, errlen), -1;
        int rc = changelog_replay(e, &v);
        if (rc == -2) return undecodable(ts, "its change log (other settings)", err, errlen), -1;
        if (rc) {
            char what[96];
            snprintf(what, sizeof what, "commit %" PRIu64 " (it does not replay to its recorded "
                     "state)", v.seq);
            return undecodable(ts, what, err, errlen), -1;
        }
        if (changelog_foreach_meta(&v, fn, ctx))
            return undecodable(ts, "a named blob of its change log", err, errlen), -1;
    }
    if (want != k.seq + 1) return undecodable(ts, "its change log (frames missing)", err, errlen), -1;
    return 1;
}

int task_store_load(task_store *ts, int32_t task, engine *e, changelog_meta_fn fn, void *ctx,
                    char *err, size_t errlen)
{
    ts->task = task;
    if (pg_conn_retry(&ts->pc, load_op, ts, "loading a task", err, errlen)) return -1;
    uint64_t seq = 0;
    int rc = load_rows(ts, e, fn, ctx, &seq, err, errlen);
    clear_results(ts);
    release_large(ts);
    if (rc >= 0) *base_of(ts, task) = seq;
    return rc;
}

static int snap_write(void *ctx, const void *data, size_t len)
{
    buf_append(ctx, data, len);
    return 0;
}

/* Writes the snapshot of the state after commit seq (encoded once per
 * commit call: a retry finds it ready), and deletes what it replaces. */
static int write_snapshot(task_store *ts, uint64_t seq, task_book *k, char *err, size_t errlen)
{
    if (ts->snap_seq != seq) {
        buf_reset(&ts->snap);
        if (changelog_snapshot(ts->eng, seq, &ts->frame->meta, ts->frame->n_meta, snap_write,
                               &ts->snap)) {
            snprintf(err, errlen, "task state store: task %d: its state could not be encoded",
                     (int)ts->task);
            return PG_PERMANENT;
        }
        ts->snap_seq = seq;
    }
    /* the snapshot stands alone: every older row of the task goes */
    int st = exec_task(ts, "DELETE FROM sessionizer_task_log WHERE grp = $1 AND task = $2", 0, NULL,
                       NULL, NULL, "compacting a task's change log", NULL, err, errlen);
    char sq[8];
    be64_put(sq, (int64_t)seq);
    size_t len = ts->snap.len;
    for (size_t at = 0; !st && at < len;) {
        char before[8]; /* parts written by the statements before this one */
        be64_put(before, (int64_t)(at / SNAPSHOT_PART));
        array_reset(&ts->parts);
        for (int i = 0; i < PARTS_PER_STATEMENT && at < len; i++) {
            size_t n = len - at < SNAPSHOT_PART ? len - at : SNAPSHOT_PART;
            array_add(&ts->parts, ts->snap.data + at, n);
            at += n;
        }
        array_encode(&ts->parts, 0, ts->parts.n, PG_BYTEAOID, &ts->arr[0]);
        static const Oid types[3] = {PG_INT8OID, PG_BYTEAARRAYOID, PG_INT8OID};
        const char *v[3] = {sq, (const char *)ts->arr[0].data, before};
        int l[3] = {8, (int)ts->arr[0].len, 8};
        st = exec_task(ts, "INSERT INTO sessionizer_task_log SELECT $1, $2, $3, ($5 + p)::int, d "
                       "FROM unnest($4::bytea[]) WITH ORDINALITY AS t(d, p)", 3, types, v, l,
                       "writing a task's snapshot", NULL, err, errlen);
    }
    k->snap_seq = seq;
    k->snap_bytes = (int64_t)len;
    k->log_bytes = 0;
    ts->attempt.snapshots++;
    ts->attempt.snapshot_bytes += len;
    ts->attempt.bytes += len;
    return st;
}

/* One attempt at the whole commit; safe to run again (a COMMIT lost in
 * flight that did commit is found as the stored position and commit number:
 * the frame then no longer extends it, and a snapshot at an equal position
 * writes the same state). */
static int commit_op(void *ud, char *err, size_t errlen)
{
    task_store *ts = ud;
    PGresult *r = NULL;
    ts->superseded = 0;
    memset(&ts->attempt, 0, sizeof ts->attempt);
    int st = pg_conn_exec(&ts->pc, "BEGIN", "beginning a task commit", err, errlen);
    /* The position has a row of its own, created empty if missing, so that
     * it can be locked even before a task's first commit. */
    if (!st)
        st = exec_task(ts, "INSERT INTO sessionizer_task_meta VALUES ($1, $2, 'stored_position', "
                       "'') ON CONFLICT DO NOTHING", 0, NULL, NULL, NULL,
                       "beginning a task commit", NULL, err, errlen);
    if (!st)
        st = exec_task(ts, "SELECT k, v FROM sessionizer_task_meta WHERE grp = $1 AND task = $2 AND "
                       "k IN ('stored_position', 'position', 'engine') FOR UPDATE", 0, NULL, NULL,
                       NULL, "locking a task's position", &r, err, errlen);
    if (st) return st;
    char s[24] = "";
    task_book k = {0};
    int bad = 0, old = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *key = PQgetvalue(r, i, 0), *v = PQgetvalue(r, i, 1);
        size_t len = (size_t)PQgetlength(r, i, 1);
        if (strcmp(key, "stored_position") == 0) snprintf(s, sizeof s, "%.*s", (int)len, v);
        else if (strcmp(key, "engine") == 0) old = 1;
        else bad = book_decode(v, len, &k);
    }
    PQclear(r);
    if (old) return old_version(ts, err, errlen);
    if (bad) return undecodable(ts, "its 'position'", err, errlen);
    int strings = engine_string_users(ts->eng) != 0;
    if (k.seq > 0 && ((k.flags & BOOK_STRING_USERS) != 0) != strings)
        return other_user_type(ts, &k, err, errlen);
    k.flags = strings ? BOOK_STRING_USERS : 0;
    long long stored = *s ? strtoll(s, NULL, 10) : -1;
    if (stored > ts->position) {
        ts->superseded = 1;
        return pg_conn_exec(&ts->pc, "ROLLBACK", "ending a superseded commit", err, errlen);
    }
    uint64_t seq = k.seq + 1;
    /* A frame extends the commit the engine is at; another owner's commit
     * since then (level or behind: the guard let this one through) leaves a
     * snapshot as the only record that stands. */
    int snapshot = k.seq != *base_of(ts, ts->task);
    if (!snapshot) {
        if (ts->sealed_seq != seq) {
            buf_reset(&ts->sealed);
            changelog_seal(ts->frame, seq, ts->eng, &ts->sealed);
            ts->sealed_seq = seq;
        }
        int64_t limit = k.snap_bytes > ts->compact_min ? k.snap_bytes : ts->compact_min;
        snapshot = k.log_bytes + (int64_t)ts->sealed.len > limit;
    }
    if (snapshot) {
        st = write_snapshot(ts, seq, &k, err, errlen);
    } else {
        char sq[8];
        be64_put(sq, (int64_t)seq);
        static const Oid types[2] = {PG_INT8OID, PG_BYTEAOID};
        const char *v[2] = {sq, (const char *)ts->sealed.data};
        int l[2] = {8, (int)ts->sealed.len};
        st = exec_task(ts, "INSERT INTO sessionizer_task_log VALUES ($1, $2, $3, 0, $4)", 2, types,
                       v, l, "writing a task's commit", NULL, err, errlen);
        k.log_bytes += (int64_t)ts->sealed.len;
        ts->attempt.frame_bytes += ts->sealed.len;
        ts->attempt.bytes += ts->sealed.len;
    }
    if (st) return st;
    k.seq = seq;
    k.position = ts->position;
    array_reset(&ts->keys);
    array_reset(&ts->vals);
    char pbuf[24];
    int pn = snprintf(pbuf, sizeof pbuf, "%lld", (long long)ts->position);
    array_add(&ts->keys, "stored_position", 15);
    array_add(&ts->vals, pbuf, (size_t)pn);
    book_encode(&k, &ts->scratch);
    array_add(&ts->keys, "position", 8);
    array_add(&ts->vals, ts->scratch.data, ts->scratch.len);
    if (ts->finished) {
        array_add(&ts->keys, "done", 4);
        array_add(&ts->vals, "\1", 1);
    }
    ts->attempt.bytes += (size_t)pn + ts->scratch.len + (ts->finished ? 1 : 0);
    static const Oid meta_types[2] = {PG_TEXTARRAYOID, PG_BYTEAARRAYOID};
    array_encode(&ts->keys, 0, ts->keys.n, PG_TEXTOID, &ts->arr[0]);
    array_encode(&ts->vals, 0, ts->vals.n, PG_BYTEAOID, &ts->arr[1]);
    const char *mv[2] = {(const char *)ts->arr[0].data, (const char *)ts->arr[1].data};
    int ml[2] = {(int)ts->arr[0].len, (int)ts->arr[1].len};
    st = exec_task(ts, "INSERT INTO sessionizer_task_meta SELECT $1, $2, k, v FROM "
                   "unnest($3::text[], $4::bytea[]) AS t(k, v) "
                   "ON CONFLICT (grp, task, k) DO UPDATE SET v = EXCLUDED.v",
                   2, meta_types, mv, ml, "writing a task's position", NULL, err, errlen);
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
    ts->committed = seq;
    ts->attempt.commits = 1;
    return PG_OK;
}

int task_store_commit(task_store *ts, int32_t task, int64_t position, int finished,
                      const changelog_frame *f, const engine *e, int *superseded, char *err,
                      size_t errlen)
{
    *superseded = 0;
    ts->task = task;
    ts->position = position;
    ts->finished = finished;
    ts->frame = f;
    ts->eng = e;
    ts->sealed_seq = ts->snap_seq = 0; /* encoded for this call only */
    int rc = pg_conn_retry(&ts->pc, commit_op, ts, "committing a task", err, errlen);
    ts->frame = NULL;
    ts->eng = NULL;
    release_large(ts);
    if (rc) return -1;
    *superseded = ts->superseded;
    if (ts->superseded) return 0;
    *base_of(ts, task) = ts->committed;
    ts->stats.commits += ts->attempt.commits;
    ts->stats.snapshots += ts->attempt.snapshots;
    ts->stats.bytes += ts->attempt.bytes;
    ts->stats.frame_bytes += ts->attempt.frame_bytes;
    ts->stats.snapshot_bytes += ts->attempt.snapshot_bytes;
    return 0;
}

static int count_op(void *ud, char *err, size_t errlen)
{
    task_store *ts = ud;
    const char *vals[1] = {ts->group};
    PGresult *r;
    int st = pg_conn_finish(&ts->pc,
                            PQsendQueryParams(ts->pc.conn, "SELECT count(*) FROM sessionizer_task_meta "
                                              "WHERE grp = $1 AND k = 'done'", 1, NULL, vals, NULL,
                                              NULL, 0),
                            "counting finished tasks", &r, err, errlen);
    if (st) return st;
    ts->count = PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return PG_OK;
}

int64_t task_store_count_done(task_store *ts, char *err, size_t errlen)
{
    if (pg_conn_retry(&ts->pc, count_op, ts, "counting finished tasks", err, errlen)) return -1;
    return ts->count;
}
