/*
 * test_changelog.c - the change-log checkpoint (src/checkpoint/changelog.h):
 * a snapshot plus replayed frames rebuilds exactly the state of the last
 * commit, on random inputs over several partitions with caught-up signals
 * (which raise the closing watermark without being logged), partitions
 * advanced from elsewhere, late visits, session caps and end-of-input "close
 * all", also with users spilled to a cold store (engine_set_cold_store) by
 * the committed engine and by its restores; and damaged frames and
 * snapshots are refused, a frame cut short reported as such.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine_state.h"
#include "checkpoint/changelog.h"
#include "common/xalloc.h"
#include "engine/engine.h"

typedef struct out {
    buf text; /* one line per event, in emission order */
    changelog_frame *log;
} out;

static int on_close(void *ctx, const closed_session *cs)
{
    check_close_line(&((out *)ctx)->text, cs);
    return 0;
}

static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    check_reject_line(&((out *)ctx)->text, v, why);
    return 0;
}

static int on_accept(void *ctx, const visit *v)
{
    out *o = ctx;
    if (o->log) changelog_add_visit(o->log, v);
    return 0;
}

static uint32_t max_bytes; /* per trial; 0: the default */

static engine *new_engine(out *o, int64_t g, int64_t l, uint32_t cap)
{
    engine_config cfg = {.gap_us = g, .lateness_us = l, .max_pages = cap,
                         .max_session_bytes = max_bytes};
    engine_callbacks cb = {.ctx = o, .on_close = on_close, .on_reject = on_reject,
                           .on_accept = on_accept};
    return engine_new(&cfg, &cb);
}

/* ---- a cold store in memory (engine_set_cold_store): handle = index ------- */

typedef struct cold {
    buf *blobs;
    size_t n, cap;
} cold;

static int cold_put(void *ctx, const user_key *user, const void *blob, size_t len, uint64_t *handle)
{
    cold *c = ctx;
    (void)user;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->blobs = xrealloc(c->blobs, c->cap * sizeof *c->blobs);
    }
    buf_init(&c->blobs[c->n]);
    buf_append(&c->blobs[c->n], blob, len);
    *handle = c->n++;
    return 0;
}

static int cold_get(void *ctx, uint64_t handle, size_t len, buf *dst)
{
    cold *c = ctx;
    if (handle >= c->n || c->blobs[handle].len != len) return -1;
    buf_append(dst, c->blobs[handle].data, len);
    return 0;
}

static void cold_free(cold *c)
{
    for (size_t i = 0; i < c->n; i++) buf_free(&c->blobs[i]);
    free(c->blobs);
}

/* Half the trials spill: the engine keeps at most budget bytes (a few KB). */
static void maybe_spill(engine *e, cold *c, uint64_t budget)
{
    if (!budget) return;
    engine_cold_store ops = {.ctx = c, .put = cold_put, .get = cold_get};
    engine_set_cold_store(e, &ops, budget);
}

/* ---- an in-memory backend ---------------------------------------------------- */

typedef struct store {
    buf snapshot; /* empty: the log starts from the empty state */
    buf log;      /* frames after the snapshot */
    uint64_t seq;
} store;

static int to_buf(void *ctx, const void *data, size_t len)
{
    buf_append(ctx, data, len);
    return 0;
}

static int restore(engine *e, const store *st)
{
    uint64_t seq = 0;
    if (st->snapshot.len && changelog_load_snapshot(e, st->snapshot.data, st->snapshot.len, &seq,
                                                    NULL, NULL, NULL))
        return -1;
    size_t at = 0;
    while (at < st->log.len) {
        changelog_view v;
        if (changelog_parse(st->log.data + at, st->log.len - at, &v) != 1) return -1;
        if (v.seq != ++seq || changelog_replay(e, &v)) return -1;
        at += v.frame_len;
    }
    return seq == st->seq ? 0 : -1;
}

static void test_restore_equals_commit(void)
{
    char pages[40][8];
    for (int i = 0; i < 40; i++) snprintf(pages[i], sizeof pages[i], "p%d", i);
    int restores = 0, closes_replayed = 0;
    uint64_t spilled = 0;
    for (int trial = 0; trial < 250; trial++) {
        int64_t g = (int64_t)(1 + rnd() % 20) * SEC, l = (int64_t)(rnd() % 15) * SEC;
        uint32_t cap = 1 + (uint32_t)(rnd() % 8);
        max_bytes = rnd() % 2 ? 0 : 6 + (uint32_t)(rnd() % 20); /* a few pages of text */
        int users = 1 + (int)(rnd() % 10), parts = 1 + (int)(rnd() % 3);
        size_t n = 1 + rnd() % 500;
        changelog_frame frame;
        changelog_frame_init(&frame);
        out o1 = {.log = NULL}, o2 = {.log = &frame};
        buf_init(&o1.text);
        buf_init(&o2.text);
        engine *e1 = new_engine(&o1, g, l, cap); /* uninterrupted */
        engine *e2 = new_engine(&o2, g, l, cap); /* committed, crashed, restored */
        /* e2 spills in half the trials, its restores too (they evict as they
         * load and replay); snapshots then read spilled users back */
        cold cs = {0};
        uint64_t budget = rnd() % 2 ? 0 : 12288 + rnd() % 32768;
        maybe_spill(e2, &cs, budget);
        store st = {0};
        buf_init(&st.snapshot);
        buf_init(&st.log);
        int caught[3] = {0, 0, 0}, known[3] = {0, 0, 0};
        int64_t clock[3] = {0, 0, 0};
        buf want, got;
        buf_init(&want);
        buf_init(&got);
        int ok = 1;
        for (size_t i = 0; i < n && ok; i++) {
            uint64_t r = rnd() % 100;
            int p = (int)(rnd() % (uint64_t)parts);
            known[p] |= r != 8; /* what e1 has heard of */
            if (r < 8) { /* a caught-up signal flips */
                caught[p] = !caught[p];
                engine_set_caught_up(e1, p, caught[p]);
                engine_set_caught_up(e2, p, caught[p]);
            } else if (r < 9) { /* end of a bounded run */
                changelog_add_close_all(&frame);
                engine_close_all(e1);
                engine_close_all(e2);
                closes_replayed++;
            } else if (r < 11) { /* another stage's progress on p (scale-out) */
                clock[p] += (int64_t)(rnd() % 8) * SEC;
                changelog_add_advance(&frame, p, clock[p]);
                engine_advance_partition(e1, p, clock[p]);
                engine_advance_partition(e2, p, clock[p]);
            } else {
                clock[p] += (int64_t)(rnd() % 6) * SEC;
                visit v = {.user_id = (int64_t)(rnd() % (uint64_t)users) - 3,
                           .event_time_us = clock[p] - (int64_t)(rnd() % 20) * SEC,
                           .page = pages[rnd() % 40],
                           .pos = {.append_ts_ms = clock[p] / 1000, .partition = p,
                                   .offset = (int64_t)i}};
                v.page_len = (uint32_t)strlen(v.page);
                engine_apply(e1, &v);
                engine_apply(e2, &v);
            }
            if (rnd() % 12 == 0) { /* a commit: a frame, sometimes a snapshot */
                st.seq++;
                if (rnd() % 4 == 0) {
                    buf_reset(&st.snapshot);
                    buf_reset(&st.log);
                    changelog_snapshot(e2, st.seq, &frame.meta, 0, to_buf, &st.snapshot);
                } else {
                    changelog_seal(&frame, st.seq, e2, &st.log);
                }
                changelog_frame_reset(&frame);
                if (rnd() % 3 == 0) { /* a crash right after the commit */
                    engine_state_describe(e2, &want);
                    engine_stats est;
                    engine_get_stats(e2, &est);
                    spilled += est.users_evicted;
                    engine_free(e2);
                    e2 = new_engine(&o2, g, l, cap);
                    maybe_spill(e2, &cs, budget);
                    engine_callbacks none = {0};
                    engine_callbacks cb = engine_swap_callbacks(e2, &none);
                    int rrc = restore(e2, &st);
                    ok = rrc == 0;
                    engine_swap_callbacks(e2, &cb);
                    engine_state_describe(e2, &got);
                    if (rrc) fprintf(stderr, "trial %d: the restore failed\n", trial);
                    ok = ok && got.len == want.len && memcmp(got.data, want.data, got.len) == 0;
                    ok = ok && engine_check_invariants(e2) == 0;
                    /* the source tells the restored job what it told e1 */
                    for (int q = 0; q < parts; q++)
                        if (known[q]) engine_set_caught_up(e2, q, caught[q]);
                    restores++;
                }
            }
        }
        CHECK(ok);
        engine_close_all(e1);
        engine_close_all(e2);
        buf_append_byte(&o1.text, 0);
        buf_append_byte(&o2.text, 0);
        /* the restored run emitted exactly the uninterrupted one's transcript */
        CHECK_STR((const char *)o2.text.data, (const char *)o1.text.data);
        if (!ok) fprintf(stderr, "trial %d: restored state differs from the commit's\n", trial);
        engine_stats est;
        engine_get_stats(e2, &est);
        spilled += est.users_evicted;
        engine_free(e1);
        engine_free(e2);
        cold_free(&cs);
        buf_free(&o1.text);
        buf_free(&o2.text);
        buf_free(&want);
        buf_free(&got);
        buf_free(&st.snapshot);
        buf_free(&st.log);
        changelog_frame_free(&frame);
    }
    CHECK(restores > 200);
    CHECK(closes_replayed > 50);
    CHECK(spilled > 1000); /* the spilling trials did spill */
}

/* A visit's cost in a frame: its page plus a small constant. */
static void test_frame_size_and_meta(void)
{
    engine_config cfg = {.gap_us = 50 * SEC, .lateness_us = 10 * SEC, .max_pages = 100};
    engine *e = engine_new(&cfg, NULL);
    changelog_frame f;
    changelog_frame_init(&f);
    const char *page = "page_123.html";
    for (int i = 0; i < 1000; i++) {
        visit v = {.user_id = 100000 + i * 7919 % 100000, .event_time_us = 1677000000LL * SEC + i * 20000,
                   .page = page, .page_len = (uint32_t)strlen(page),
                   .pos = {.partition = 0, .offset = (int64_t)i * 80}};
        changelog_add_visit(&f, &v);
    }
    size_t per_visit = f.events.len / 1000;
    CHECK(per_visit <= strlen(page) + 12);
    changelog_add_meta(&f, "source_position", "abc", 3);
    changelog_add_meta(&f, "counters", "", 0);
    buf b;
    buf_init(&b);
    changelog_seal(&f, 7, e, &b);
    changelog_view v;
    CHECK_EQ_I64(changelog_parse(b.data, b.len, &v), 1);
    CHECK_EQ_I64(v.seq, 7);
    CHECK_EQ_I64(v.n_events, 1000);
    CHECK_EQ_I64(v.n_meta, 2);
    CHECK_EQ_I64(v.frame_len, b.len);
    /* every prefix is "cut short", every flipped bit is refused */
    int all_short = 1, all_refused = 1;
    for (size_t cut = 0; cut < b.len; cut += 97)
        if (changelog_parse(b.data, cut, &v) != 0) all_short = 0;
    for (size_t at = 0; at < b.len; at += 61) {
        b.data[at] ^= 4;
        int rc = changelog_parse(b.data, b.len, &v);
        if (rc == 1) all_refused = 0;
        b.data[at] ^= 4;
    }
    CHECK(all_short);
    CHECK(all_refused);
    /* the frame replays into an engine: 1000 visits, 1000 users open */
    engine *r = engine_new(&cfg, NULL);
    CHECK_EQ_I64(changelog_parse(b.data, b.len, &v), 1);
    CHECK_EQ_I64(changelog_replay(r, &v), -1); /* e never saw them: counters differ */
    engine_free(r);
    /* a frame of other settings */
    engine_config other = cfg;
    other.gap_us = 30 * SEC;
    r = engine_new(&other, NULL);
    CHECK_EQ_I64(changelog_replay(r, &v), -2);
    engine_free(r);
    engine_free(e);
    buf_free(&b);
    changelog_frame_free(&f);
}

typedef struct read_upto {
    size_t upto, calls;
    int monotone;
} read_upto;

static void note_read(void *ctx, size_t n)
{
    read_upto *ru = ctx;
    ru->monotone = ru->calls == 0 ? 1 : ru->monotone && n >= ru->upto;
    ru->upto = n;
    ru->calls++;
}

static void test_snapshot_damage(void)
{
    engine_config cfg = {.gap_us = 50 * SEC, .lateness_us = 10 * SEC, .max_pages = 100};
    engine *e = engine_new(&cfg, NULL);
    for (int i = 0; i < 5000; i++) {
        visit v = {.user_id = i % 3000, .event_time_us = (int64_t)i * 1000, .page = "x.html",
                   .page_len = 6, .pos = {.offset = i}};
        engine_apply(e, &v);
    }
    changelog_frame f;
    changelog_frame_init(&f);
    changelog_add_meta(&f, "k", "v", 1);
    buf b;
    buf_init(&b);
    changelog_snapshot(e, 3, &f.meta, f.n_meta, to_buf, &b);
    engine *r = engine_new(&cfg, NULL);
    uint64_t seq = 0;
    read_upto ru = {0};
    CHECK_EQ_I64(changelog_load_snapshot(r, b.data, b.len, &seq, NULL, note_read, &ru), 0);
    CHECK_EQ_I64(seq, 3);
    /* told of what it no longer reads, chunk by chunk, up to the end (a
     * mapped snapshot's pages are given back: checkpoint.c, snap_read) */
    CHECK(ru.calls >= 1 && ru.monotone && ru.upto == b.len);
    buf x, y;
    buf_init(&x);
    buf_init(&y);
    engine_state_describe(e, &x);
    engine_state_describe(r, &y);
    CHECK(x.len == y.len && memcmp(x.data, y.data, x.len) == 0);
    engine_free(r);
    int refused = 1;
    for (size_t cut = 0; cut < b.len; cut += b.len / 37 + 1) {
        r = engine_new(&cfg, NULL);
        if (changelog_load_snapshot(r, b.data, cut, &seq, NULL, NULL, NULL) == 0) refused = 0;
        engine_free(r);
    }
    for (size_t at = 0; at < b.len; at += b.len / 41 + 1) {
        b.data[at] ^= 1;
        r = engine_new(&cfg, NULL);
        if (changelog_load_snapshot(r, b.data, b.len, &seq, NULL, NULL, NULL) == 0) refused = 0;
        engine_free(r);
        b.data[at] ^= 1;
    }
    CHECK(refused);
    b.data[4] = 2; /* version 2 (before last positions) is still read */
    r = engine_new(&cfg, NULL);
    CHECK_EQ_I64(changelog_load_snapshot(r, b.data, b.len, &seq, NULL, NULL, NULL), 0);
    engine_free(r);
    b.data[4] = 4; /* a newer version */
    r = engine_new(&cfg, NULL);
    CHECK_EQ_I64(changelog_load_snapshot(r, b.data, b.len, &seq, NULL, NULL, NULL), -3);
    engine_free(r);
    engine_free(e);
    buf_free(&b);
    buf_free(&x);
    buf_free(&y);
    changelog_frame_free(&f);
}

int main(void)
{
    check_rng = 0x2545f4914f6cdd1dULL; /* this file's own sequence of trials */
    test_restore_equals_commit();
    test_frame_size_and_meta();
    test_snapshot_damage();
    return check_summary("test_changelog");
}
