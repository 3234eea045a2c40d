/*
 * test_checkpoint_compaction.c - when the checkpoint writes a new snapshot
 * (docs/checkpoint.md, "Compaction"): once the log since the last snapshot
 * outgrows what a snapshot of the state would take now, estimated from the
 * last one's bytes per open page and at most twice its size. A growing
 * state is not compacted against its older, smaller snapshot; a state that
 * emptied is compacted at the next commit; and whatever the compactions,
 * a reopened checkpoint restores the committed state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "checkpoint/checkpoint.h"
#include "common/testenv.h"

typedef struct job {
    checkpoint *cp;
    engine *e;
    int64_t next_user, t;
    char err[512];
} job;

static int log_accepted(void *ctx, const visit *v)
{
    checkpoint_log_visit(ctx, v);
    return 0;
}

/* n visits of users never seen before: the state grows by n pages */
static void new_users(job *j, int n)
{
    for (int i = 0; i < n; i++) {
        j->t += 1000;
        visit v = {.user_id = j->next_user++, .event_time_us = j->t, .page = "/a-page",
                   .page_len = 7, .pos = {.partition = 0, .offset = j->next_user}};
        CHECK(engine_apply(j->e, &v) == 0);
    }
}

static const engine_config cfg = {.gap_us = 3600000000LL, .lateness_us = 3600000000LL,
                                  .max_pages = 100};

/* Closes and reopens the checkpoint (which waits for a compaction's
 * background part: no compaction starts while one runs) and restores it
 * into a new engine: it holds the state committed. */
static void reopen(job *j, const char *dir)
{
    engine_stats was, now;
    engine_get_stats(j->e, &was);
    CHECK(checkpoint_sync(j->cp, j->err, sizeof j->err) == 0);
    uint64_t seq = checkpoint_seq(j->cp);
    checkpoint_close(j->cp);
    engine_free(j->e);
    j->cp = checkpoint_open(dir, j->err, sizeof j->err);
    CHECK(j->cp != NULL);
    if (!j->cp) exit(check_summary("test_checkpoint_compaction"));
    j->e = engine_new(&cfg, &(engine_callbacks){.ctx = j->cp, .on_accept = log_accepted});
    CHECK(checkpoint_restore(j->cp, j->e, j->err, sizeof j->err) == 0);
    engine_get_stats(j->e, &now);
    CHECK_EQ_I64(now.open_pages, was.open_pages);
    CHECK_EQ_I64(now.sessions_closed, was.sessions_closed);
    CHECK_EQ_I64(checkpoint_seq(j->cp), seq);
}

static int commit(job *j)
{
    if (checkpoint_begin(j->cp, j->err, sizeof j->err) ||
        checkpoint_put(j->cp, "k", "v", 1, j->err, sizeof j->err) ||
        checkpoint_commit(j->cp, j->e, 0, j->err, sizeof j->err))
        return -1;
    return 0;
}

/* A compaction at commit seq creates log-<seq> at once (its snapshot is
 * renamed in the background). */
static int compacted_at(const char *dir, uint64_t seq)
{
    char path[700];
    snprintf(path, sizeof path, "%s/log-%016llx", dir, (unsigned long long)seq);
    struct stat st;
    return stat(path, &st) == 0;
}

int main(void)
{
    char tmpl[] = "/tmp/test_checkpoint_compaction.XXXXXX";
    const char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL);
    if (!tmp) return 1;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/cp", tmp);
    /* no 16 MiB floor: only the rule under test decides */
    setenv(TESTENV_SNAPSHOT_MIN_BYTES, "1", 1);

    job j = {.next_user = 1, .t = 1000000000000};
    j.cp = checkpoint_open(dir, j.err, sizeof j.err);
    CHECK(j.cp != NULL);
    if (!j.cp) return check_summary("test_checkpoint_compaction");
    j.e = engine_new(&cfg, &(engine_callbacks){.ctx = j.cp, .on_accept = log_accepted});

    /* the first commit outgrows the floor: a snapshot of 200 pages */
    new_users(&j, 200);
    CHECK(commit(&j) == 0);
    CHECK(compacted_at(dir, 1));
    int64_t snap1 = checkpoint_disk_bytes(j.cp) - 24; /* less the new log's header */
    CHECK(snap1 > 200 * 7);
    reopen(&j, dir);

    /* The state grows by a page per logged visit: the log passes the first
     * snapshot's size (the rule before compared with it) long before it
     * passes a snapshot of the state now, capped at twice the first. */
    uint64_t seq = 1;
    while (checkpoint_disk_bytes(j.cp) - snap1 <= snap1 + snap1 / 4) {
        new_users(&j, 50);
        CHECK(commit(&j) == 0);
        seq++;
        CHECK(!compacted_at(dir, seq));
    }
    /* and past twice the first snapshot: compacted */
    uint64_t compaction = 0;
    for (int i = 0; i < 1000 && !compaction; i++) {
        int64_t logged = checkpoint_disk_bytes(j.cp) - snap1;
        new_users(&j, 50);
        CHECK(commit(&j) == 0);
        seq++;
        if (compacted_at(dir, seq)) {
            compaction = seq;
            CHECK(logged <= 2 * snap1);
        }
    }
    CHECK(compaction > 0);
    reopen(&j, dir);

    /* Every session closed: a snapshot of the empty state is the cheapest
     * restore, taken at the next commit however small its frame (above the
     * floor, here 1 byte). */
    CHECK(engine_close_all(j.e) == 0);
    checkpoint_log_close_all(j.cp);
    CHECK(commit(&j) == 0);
    seq++;
    CHECK(compacted_at(dir, seq));
    reopen(&j, dir);
    checkpoint_close(j.cp);
    engine_free(j.e);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return check_summary("test_checkpoint_compaction");
}
