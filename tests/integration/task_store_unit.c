/*
 * task_store_unit.c - the scale-out's task store (src/task/task_store.h)
 * against a real PostgreSQL, through its interface and the engine alone:
 * a task's change log restores exactly the committed engine after frames
 * only, after a compaction replaced them with a snapshot, and after a commit
 * on top of that snapshot; a commit behind the stored position (a zombie) is
 * refused and writes nothing; a commit level with another owner's (its frame
 * no longer extends the stored log) writes a snapshot that restores to its
 * state; string users round-trip; a task written by the version before the
 * change log is refused with the way out; finished tasks are counted.
 *
 * Run by pg_sink_unit.sh, which starts a private server (lib/pg_server.sh)
 * and exports PG_URI. Exit code: the number of failed checks (capped).
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check.h"
#include "../unit/engine_state.h"
#include "checkpoint/changelog.h"
#include "common/xalloc.h"
#include "engine/engine.h"
#include "task/task_store.h"

static const char *uri;
static char err[1024];

/* ---- a task: its engine and the frame it logs into (as scaleout.c does) -- */

typedef struct task {
    engine *e;
    changelog_frame log;
    int64_t position;
    int string_users;
} task;

static int on_close(void *ctx, const closed_session *cs) { return (void)ctx, (void)cs, 0; }
static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    return (void)ctx, (void)v, (void)why, 0;
}
static int on_accept(void *ctx, const visit *v)
{
    changelog_add_visit(&((task *)ctx)->log, v);
    return 0;
}

static void task_new(task *t, int string_users)
{
    engine_config cfg = {.gap_us = 50 * SEC, .lateness_us = 10 * SEC, .max_pages = 30,
                         .string_users = string_users};
    engine_callbacks cb = {.ctx = t, .on_close = on_close, .on_reject = on_reject,
                           .on_accept = on_accept};
    t->e = engine_new(&cfg, &cb);
    t->position = -1;
    t->string_users = string_users;
    changelog_frame_reset(&t->log);
    for (int32_t p = 0; p < 3; p++) engine_set_caught_up(t->e, p, 0);
}

static int take_position(void *ctx, const char *key, size_t kl, const void *v, size_t len)
{
    task *t = ctx;
    if (kl == 8 && memcmp(key, "position", 8) == 0 && len == 8) {
        reader r;
        reader_init(&r, v, len);
        reader_i64le(&r, &t->position);
    }
    return 0;
}

/* A fresh engine restored from the store: 1, 0 (nothing stored) or -1. */
static int task_load(task_store *ts, int32_t id, task *t, int string_users)
{
    if (t->e) engine_free(t->e);
    task_new(t, string_users);
    return task_store_load(ts, id, t->e, take_position, t, err, sizeof err);
}

static char pages[64][16];
static char names[16][24];

/* n random visits (and the advances scaleout.c logs) from time *clock on */
static void feed(task *t, int n, int64_t *clock, int64_t *offsets)
{
    for (int i = 0; i < n; i++) {
        int32_t p = (int32_t)(rnd() % 3);
        int u = (int)(rnd() % 12);
        *clock += (int64_t)(rnd() % (4 * SEC));
        /* now and then a pause beyond the gap: sessions close mid-stream */
        if (rnd() % 97 == 0) *clock += 120 * SEC;
        int64_t jitter = (int64_t)(rnd() % (8 * SEC)) - 4 * SEC;
        const char *page = pages[rnd() % 64];
        visit v = {.user_id = t->string_users ? 0 : u,
                   .user = t->string_users ? names[u] : NULL,
                   .user_len = t->string_users ? (uint32_t)strlen(names[u]) : 0,
                   .event_time_us = *clock + jitter,
                   .page = page,
                   .page_len = (uint32_t)strlen(page),
                   .pos = {.partition = p, .offset = offsets[p]++, .append_ts_ms = 1}};
        CHECK(engine_apply(t->e, &v) == 0);
        if (rnd() % 4 == 0) {
            int64_t max_t = *clock + (int64_t)(rnd() % SEC);
            changelog_add_advance(&t->log, p, max_t);
            CHECK(engine_advance_partition(t->e, p, max_t) == 0);
        }
    }
}

static int commit(task_store *ts, int32_t id, task *t, int64_t position, int finished,
                  int *superseded)
{
    buf b;
    buf_init(&b);
    buf_put_i64le(&b, position);
    changelog_add_meta(&t->log, "position", b.data, b.len);
    buf_free(&b);
    int rc = task_store_commit(ts, id, position, finished, &t->log, t->e, superseded, err,
                               sizeof err);
    if (rc) fprintf(stderr, "commit: %s\n", err);
    if (!rc && !*superseded) t->position = position;
    changelog_frame_reset(&t->log);
    return rc;
}

/* ---- the state of an engine, independent of its memory layout ------------- */

/* a and b hold the same state (and a has open sessions: the test means it) */
static int same_state(const engine *a, const engine *b)
{
    buf x, y;
    buf_init(&x);
    buf_init(&y);
    engine_state_describe(a, &x);
    engine_state_describe(b, &y);
    engine_stats st;
    engine_get_stats(a, &st);
    int same = st.open_sessions > 0 && x.len == y.len && memcmp(x.data, y.data, x.len) == 0;
    buf_free(&x);
    buf_free(&y);
    return same;
}

/* ---- SQL beside the store ---------------------------------------------------- */

static PGconn *admin;

static char *sql_value(const char *q)
{
    static char out[256];
    PGresult *r = PQexec(admin, q);
    snprintf(out, sizeof out, "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "?");
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        fprintf(stderr, "%s: %s", q, PQerrorMessage(admin));
    PQclear(r);
    return out;
}

static task_store *open_store(void)
{
    task_store *ts = task_store_open(&(task_store_options){.conninfo = uri, .group = "T"}, err,
                                     sizeof err);
    if (!ts) fprintf(stderr, "open: %s\n", err);
    return ts;
}

static void test_change_log(void)
{
    task_store *a = open_store(), *b = open_store();
    CHECK(a && b);
    if (!a || !b) return;
    task t = {0}, r = {0}, z = {0};
    changelog_frame_init(&t.log);
    changelog_frame_init(&r.log);
    changelog_frame_init(&z.log);
    int64_t clock = 1700000000 * SEC, off[3] = {0, 0, 0}, pos = 0;
    int sup = 0;
    CHECK(task_load(a, 0, &t, 0) == 0); /* a new task */

    /* frames only */
    for (int c = 0; c < 3; c++) {
        feed(&t, 40, &clock, off);
        pos += 40;
        CHECK(commit(a, 0, &t, pos, 0, &sup) == 0 && !sup);
    }
    task_store_stats st;
    task_store_get_stats(a, &st);
    CHECK_EQ_I64(st.commits, 3);
    CHECK_EQ_I64(st.snapshots, 0);
    CHECK_STR(sql_value("SELECT count(*) FROM sessionizer_task_log WHERE grp = 'T' AND task = 0 "
                        "AND part = 0"), "3");
    CHECK(task_load(b, 0, &r, 0) == 1);
    CHECK(same_state(t.e, r.e));
    CHECK_EQ_I64(r.position, pos);

    /* until the frames outgrow the snapshot minimum (6000 bytes: main) */
    for (int c = 0; c < 40 && st.snapshots == 0; c++) {
        feed(&t, 40, &clock, off);
        pos += 40;
        CHECK(commit(a, 0, &t, pos, 0, &sup) == 0 && !sup);
        task_store_get_stats(a, &st);
    }
    CHECK(st.snapshots == 1);
    /* the snapshot replaced every earlier row */
    CHECK_STR(sql_value("SELECT count(*) FROM sessionizer_task_log WHERE grp = 'T' AND task = 0 "
                        "AND part = 0"), "0");
    CHECK_STR(sql_value("SELECT count(DISTINCT seq) FROM sessionizer_task_log WHERE grp = 'T' "
                        "AND task = 0"), "1");
    CHECK(task_load(b, 0, &r, 0) == 1);
    CHECK(same_state(t.e, r.e));
    CHECK_EQ_I64(r.position, pos);

    /* a commit after the compaction: a frame on top of the snapshot */
    feed(&t, 40, &clock, off);
    pos += 40;
    CHECK(commit(a, 0, &t, pos, 0, &sup) == 0 && !sup);
    CHECK_STR(sql_value("SELECT count(*) FROM sessionizer_task_log WHERE grp = 'T' AND task = 0 "
                        "AND part = 0"), "1");
    CHECK(task_load(b, 0, &r, 0) == 1);
    CHECK(same_state(t.e, r.e));

    /* a zombie: z restored at pos, a goes further, z commits behind it */
    CHECK(task_load(b, 0, &z, 0) == 1);
    int64_t zclock = clock, zoff[3] = {off[0], off[1], off[2]};
    feed(&t, 40, &clock, off);
    pos += 40;
    CHECK(commit(a, 0, &t, pos, 0, &sup) == 0 && !sup);
    char stored[32];
    snprintf(stored, sizeof stored, "%s", sql_value("SELECT convert_from(v, 'UTF8') FROM "
             "sessionizer_task_meta WHERE grp = 'T' AND task = 0 AND k = 'stored_position'"));
    feed(&z, 10, &zclock, zoff);
    CHECK(commit(b, 0, &z, pos - 30, 0, &sup) == 0 && sup == 1);
    CHECK_STR(sql_value("SELECT convert_from(v, 'UTF8') FROM sessionizer_task_meta WHERE grp = "
                        "'T' AND task = 0 AND k = 'stored_position'"), stored);
    CHECK(task_load(b, 0, &r, 0) == 1);
    CHECK(same_state(t.e, r.e));
    CHECK_EQ_I64(r.position, pos);

    /* level with another owner: z (restored at pos) and t do the same; t
     * commits first, so z's frame no longer extends the log: z writes a
     * snapshot, and a restore gives the same state */
    CHECK(task_load(b, 0, &z, 0) == 1);
    zclock = clock;
    memcpy(zoff, off, sizeof off);
    uint64_t saved = check_rng;
    feed(&t, 30, &clock, off);
    check_rng = saved;
    feed(&z, 30, &zclock, zoff);
    pos += 30;
    CHECK(commit(a, 0, &t, pos, 0, &sup) == 0 && !sup);
    task_store_stats zb, za;
    task_store_get_stats(b, &zb);
    CHECK(commit(b, 0, &z, pos, 0, &sup) == 0 && !sup);
    task_store_get_stats(b, &za);
    CHECK_EQ_I64(za.snapshots - zb.snapshots, 1);
    CHECK(task_load(b, 0, &r, 0) == 1); /* b: a's engine stays at a's commit */
    CHECK(same_state(z.e, r.e) && same_state(t.e, r.e));
    /* and a's next commit, whose log was overtaken, is a snapshot too */
    feed(&t, 10, &clock, off);
    pos += 10;
    task_store_get_stats(a, &zb);
    CHECK(commit(a, 0, &t, pos, 0, &sup) == 0 && !sup);
    task_store_get_stats(a, &za);
    CHECK_EQ_I64(za.snapshots - zb.snapshots, 1);
    CHECK(task_load(b, 0, &r, 0) == 1);
    CHECK(same_state(t.e, r.e));

    /* finished: counted */
    CHECK_EQ_I64(task_store_count_done(a, err, sizeof err), 0);
    feed(&t, 5, &clock, off);
    CHECK(commit(a, 0, &t, pos + 5, 1, &sup) == 0 && !sup);
    CHECK_EQ_I64(task_store_count_done(b, err, sizeof err), 1);

    engine_free(t.e);
    engine_free(r.e);
    engine_free(z.e);
    changelog_frame_free(&t.log);
    changelog_frame_free(&r.log);
    changelog_frame_free(&z.log);
    task_store_close(a);
    task_store_close(b);
}

static void test_string_users(void)
{
    task_store *a = open_store();
    CHECK(a != NULL);
    if (!a) return;
    task t = {0}, r = {0};
    changelog_frame_init(&t.log);
    changelog_frame_init(&r.log);
    int64_t clock = 1700000000 * SEC, off[3] = {0, 0, 0};
    int sup = 0;
    CHECK(task_load(a, 1, &t, 1) == 0);
    for (int c = 0; c < 30; c++) {
        feed(&t, 40, &clock, off);
        CHECK(commit(a, 1, &t, 40 * (c + 1), 0, &sup) == 0 && !sup);
        if (c == 2 || c == 29) { /* frames only, then with a snapshot among them */
            CHECK(task_load(a, 1, &r, 1) == 1);
            CHECK(same_state(t.e, r.e));
        }
    }
    CHECK_STR(sql_value("SELECT count(*) > 0 FROM sessionizer_task_log WHERE grp = 'T' AND "
                        "task = 1 AND part > 0"), "t");
    /* the other --user-type is refused, not misread: loading and committing */
    CHECK(task_load(a, 1, &r, 0) == -1 && strstr(err, "--user-type string, this instance runs "
                                                      "--user-type int"));
    engine_free(r.e);
    task_new(&r, 0);
    feed(&r, 5, &clock, off);
    CHECK(commit(a, 1, &r, 5000, 0, &sup) == -1 && strstr(err, "--user-type string"));
    engine_free(t.e);
    engine_free(r.e);
    changelog_frame_free(&t.log);
    changelog_frame_free(&r.log);
    task_store_close(a);
}

static void test_earlier_version(void)
{
    /* what the version before the change log left: 'engine' and an 8-byte
     * 'position' among the task's keys */
    PQclear(PQexec(admin, "INSERT INTO sessionizer_task_meta VALUES ('T', 5, 'engine', '\\x00'), "
                          "('T', 5, 'position', '\\x0000000000000000'), "
                          "('T', 5, 'stored_position', '0')"));
    task_store *a = open_store();
    CHECK(a != NULL);
    if (!a) return;
    task t = {0};
    changelog_frame_init(&t.log);
    CHECK(task_load(a, 5, &t, 0) == -1 && strstr(err, "earlier sessionizer") &&
          strstr(err, "--group"));
    int64_t clock = 1700000000 * SEC, off[3] = {0, 0, 0};
    int sup = 0;
    engine_free(t.e);
    task_new(&t, 0);
    feed(&t, 5, &clock, off);
    CHECK(commit(a, 5, &t, 5, 0, &sup) == -1 && strstr(err, "earlier sessionizer"));
    CHECK_STR(sql_value("SELECT count(*) FROM sessionizer_task_log WHERE grp = 'T' AND task = 5"),
              "0");
    engine_free(t.e);
    changelog_frame_free(&t.log);
    task_store_close(a);
}

int main(void)
{
    uri = getenv("PG_URI");
    if (!uri) {
        fprintf(stderr, "run me through pg_sink_unit.sh (PG_URI unset)\n");
        return 99;
    }
    /* compactions from a small log (the store's test knob) */
    setenv("SESSIONIZER_SNAPSHOT_MIN_BYTES", "6000", 1);
    admin = PQconnectdb(uri);
    if (PQstatus(admin) != CONNECTION_OK) {
        fprintf(stderr, "%s", PQerrorMessage(admin));
        return 99;
    }
    for (int i = 0; i < 64; i++) snprintf(pages[i], sizeof pages[i], "/p%d.html", i);
    for (int i = 0; i < 16; i++) snprintf(names[i], sizeof names[i], "user-%c%d", 'a' + i, i * 7);
    test_change_log();
    test_string_users();
    test_earlier_version();
    PQfinish(admin);
    int failed = check_summary("task_store_unit");
    return failed > 90 ? 90 : failed;
}
