/*
 * test_pipelined_commit.c - the commit that does not wait for the sink
 * (docs/checkpoint.md, "A commit"): the checkpoint's writer holds a commit's
 * frame until the sink's commit it counts on (its gate's ticket) is
 * durable, writes nothing after a gate that failed, and a reopened
 * checkpoint resumes from the last commit whose gate passed; the SQLite
 * sink's flush ticket commits exactly the rows written before flush_begin,
 * whatever is written while it commits.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint/checkpoint.h"
#include "sink/sink.h"

/* ---- a gate the test opens by hand ---------------------------------------- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t released; /* tickets up to this pass */
    uint64_t fail_at;  /* this ticket and later fail (0: none) */
    uint64_t asked;    /* the last ticket waited for */
} gate;

static int gate_wait(void *ctx, uint64_t ticket, char *err, size_t errlen)
{
    gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->asked = ticket;
    pthread_cond_broadcast(&g->cv);
    while (g->released < ticket && !(g->fail_at && g->fail_at <= ticket))
        pthread_cond_wait(&g->cv, &g->mu);
    int failed = g->fail_at && g->fail_at <= ticket;
    if (failed) snprintf(err, errlen, "test sink: commit %llu failed", (unsigned long long)ticket);
    pthread_mutex_unlock(&g->mu);
    return failed ? -1 : 0;
}

static void gate_set(gate *g, uint64_t released, uint64_t fail_at)
{
    pthread_mutex_lock(&g->mu);
    g->released = released;
    g->fail_at = fail_at;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Waits until the writer waits for ticket (it has taken the frame). */
static int gate_asked(gate *g, uint64_t ticket)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    while (g->asked < ticket && rc == 0) rc = pthread_cond_timedwait(&g->cv, &g->mu, &until);
    int ok = g->asked >= ticket;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

static long long log_size(const char *dir)
{
    char path[700];
    snprintf(path, sizeof path, "%s/log-0000000000000000", dir);
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static int commit_value(checkpoint *cp, engine *e, const char *value, uint64_t ticket, char *err,
                        size_t errlen)
{
    if (checkpoint_begin(cp, err, errlen) ||
        checkpoint_put(cp, "k", value, strlen(value), err, errlen))
        return -1;
    return checkpoint_commit(cp, e, ticket, err, errlen);
}

static void test_checkpoint_gate(const char *dir)
{
    char err[512] = "";
    gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    engine_config cfg = {.gap_us = 1000000, .lateness_us = 1000000, .max_pages = 10,
                         .track_dirty = 1};
    engine *e = engine_new(&cfg, &(engine_callbacks){0});
    checkpoint *cp = checkpoint_open(dir, err, sizeof err);
    CHECK(cp != NULL);
    if (!cp) return;
    checkpoint_set_gate(cp, gate_wait, &g);

    CHECK(commit_value(cp, e, "one", 0, err, sizeof err) == 0); /* no ticket: no wait */
    CHECK(checkpoint_sync(cp, err, sizeof err) == 0);
    long long size1 = log_size(dir);
    uint64_t seq1 = checkpoint_seq(cp);
    CHECK(size1 > 0);

    /* a commit counting on ticket 1 returns at once, and is not written
     * while the sink has not committed */
    CHECK(commit_value(cp, e, "two", 1, err, sizeof err) == 0);
    CHECK(gate_asked(&g, 1));
    nanosleep(&(struct timespec){0, 100 * 1000000L}, NULL);
    CHECK_EQ_I64(log_size(dir), size1);
    CHECK_EQ_I64(checkpoint_durable_seq(cp), seq1);
    gate_set(&g, 1, 0);
    CHECK(checkpoint_sync(cp, err, sizeof err) == 0);
    CHECK_EQ_I64(checkpoint_durable_seq(cp), seq1 + 1);
    long long size2 = log_size(dir);
    CHECK(size2 > size1);

    /* the sink's commit 2 fails: the frame is not written, the error is the
     * sink's, and nothing is written after it */
    gate_set(&g, 1, 2);
    CHECK(commit_value(cp, e, "three", 2, err, sizeof err) == 0);
    CHECK(checkpoint_sync(cp, err, sizeof err) == -1);
    CHECK(strstr(err, "test sink: commit 2 failed") != NULL);
    CHECK(commit_value(cp, e, "four", 0, err, sizeof err) == -1);
    CHECK(strstr(err, "test sink: commit 2 failed") != NULL);
    CHECK_EQ_I64(log_size(dir), size2);
    checkpoint_close(cp);

    /* reopened: the last commit whose sink commit was durable */
    cp = checkpoint_open(dir, err, sizeof err);
    CHECK(cp != NULL);
    if (cp) {
        buf v;
        buf_init(&v);
        CHECK(checkpoint_get(cp, "k", &v, err, sizeof err) == 1);
        CHECK(v.len == 3 && memcmp(v.data, "two", 3) == 0);
        buf_free(&v);
        checkpoint_close(cp);
    }
    engine_free(e);
}

/* ---- the SQLite sink's tickets ------------------------------------------- */

static void write_rows(sink *s, int from, int to)
{
    char err[256];
    page_ref page = {"/p", 2};
    for (int i = from; i < to; i++) {
        closed_session cs = {.session_id = 1000 + i, .user_id = i % 97, .last_partition = 0,
                             .last_offset = i, .visits = 1, .pages = &page, .n_pages = 1};
        CHECK(s->ops->write(s, &cs, err, sizeof err) == 0);
    }
}

static long long count_rows(const char *db)
{
    sqlite3 *c;
    long long n = -1;
    if (sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(c, "SELECT count(*) FROM sessions", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(c);
    return n;
}

static void test_sqlite_tickets(const char *dir)
{
    char db[700], uri[710], err[512] = "";
    snprintf(db, sizeof db, "%s/s.db", dir);
    snprintf(uri, sizeof uri, "sqlite:%s", db);
    sink_options opts = {.create_schema = 1};
    sink *s = sink_open(uri, &opts, err, sizeof err);
    CHECK(s != NULL);
    if (!s) return;
    CHECK(s->ops->flush_begin && s->ops->flush_wait);
    CHECK_EQ_I64(s->ops->flush_begin(s), 0); /* nothing written: nothing to wait for */
    /* a first flush of three chunks' worth of rows, then as many written
     * while it commits (handed to the writer chunk by chunk): its ticket
     * commits the first ones exactly */
    enum { FIRST = 3 * 4096 + 17, SECOND = 3 * 4096 };
    write_rows(s, 0, FIRST);
    uint64_t t1 = s->ops->flush_begin(s);
    CHECK_EQ_I64(t1, 1);
    write_rows(s, FIRST, FIRST + SECOND);
    CHECK(s->ops->flush_wait(s, t1, err, sizeof err) == 0);
    CHECK_EQ_I64(count_rows(db), FIRST);
    CHECK_EQ_I64(s->ops->flush_begin(s), 2);
    CHECK_EQ_I64(s->ops->flush_begin(s), 2); /* nothing since: the same ticket */
    CHECK(s->ops->flush_wait(s, 2, err, sizeof err) == 0);
    CHECK_EQ_I64(count_rows(db), FIRST + SECOND);
    write_rows(s, 0, 10); /* the same sessions again: upserts, in place */
    CHECK(s->ops->flush(s, err, sizeof err) == 0);
    CHECK_EQ_I64(count_rows(db), FIRST + SECOND);
    /* closed with rows not flushed (a job that stops on a failure), the
     * chunk being filled a reused one: they are dropped, and the chunks
     * freed once each (the reused chunk kept its link into the spare list,
     * which close then freed twice: the fault campaign's disk-full runs
     * aborted in free()) */
    write_rows(s, FIRST + SECOND, FIRST + SECOND + 5);
    s->ops->close(s);
    CHECK_EQ_I64(count_rows(db), FIRST + SECOND);
}

int main(void)
{
    char tmpl[] = "/tmp/test_pipelined_commit.XXXXXX";
    const char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL);
    if (!dir) return 1;
    char cpdir[600];
    snprintf(cpdir, sizeof cpdir, "%s/cp", dir);
    test_checkpoint_gate(cpdir);
    test_sqlite_tickets(dir);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_summary("test_pipelined_commit");
}
