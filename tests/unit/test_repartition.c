/*
 * test_repartition.c - the repartition topic's records (src/task/repartition.h):
 * batches of random visits, extremes included, and markers decode to exactly
 * what was encoded; every cut of a record is refused or decodes to a prefix
 * of its visits (never a changed one); foreign bytes, another version and a
 * partition beyond the topic's are refused.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "task/repartition.h"

typedef struct item {
    int kind;
    visit v;
    int64_t max_t;
    char page[64];
} item;

typedef struct got {
    item it[512];
    int n;
    int stop_after; /* fn returns nonzero after this many, 0: never */
} got;

static int collect(void *ctx, int kind, const visit *v, int64_t max_t)
{
    got *g = ctx;
    if (g->n >= 512) return 1;
    item *it = &g->it[g->n++];
    it->kind = kind;
    it->v = *v;
    it->max_t = max_t;
    if (kind == REPART_BATCH) {
        CHECK(v->page_len <= sizeof it->page);
        memcpy(it->page, v->page, v->page_len < sizeof it->page ? v->page_len : sizeof it->page);
    }
    return g->stop_after && g->n >= g->stop_after;
}

static int same_visit(const item *a, const item *b)
{
    return a->v.user_id == b->v.user_id && a->v.event_time_us == b->v.event_time_us &&
           a->v.page_len == b->v.page_len && memcmp(a->page, b->page, a->v.page_len) == 0 &&
           a->v.pos.partition == b->v.pos.partition && a->v.pos.offset == b->v.pos.offset &&
           a->v.pos.append_ts_ms == b->v.pos.append_ts_ms && a->max_t == b->max_t;
}

static int64_t pick(void)
{
    static const int64_t extremes[] = {0, 1, -1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1,
                                       1700000000000000LL, -62167219200000000LL};
    uint64_t r = rnd();
    if (r % 4 == 0) return extremes[(r >> 8) % (sizeof extremes / sizeof *extremes)];
    return (int64_t)rnd() >> (r >> 8) % 64;
}

static void test_round_trip(void)
{
    for (int round = 0; round < 100; round++) {
        repart_batch q = {0};
        buf_init(&q.b);
        item want[64];
        int n = 1 + (int)(rnd() % 24);
        for (int i = 0; i < n; i++) {
            item *w = &want[i];
            memset(w, 0, sizeof *w);
            w->kind = REPART_BATCH;
            uint32_t plen = (uint32_t)(rnd() % sizeof w->page);
            for (uint32_t k = 0; k < plen; k++) w->page[k] = (char)rnd();
            w->v = (visit){.user_id = pick(), .event_time_us = pick(), .page = w->page,
                           .page_len = plen,
                           .pos = {.partition = (int32_t)(rnd() % 1000),
                                   .offset = pick() & INT64_MAX, .append_ts_ms = pick()}};
            /* the partition's highest event time, at or above the visit's */
            uint64_t room = (uint64_t)INT64_MAX - (uint64_t)w->v.event_time_us;
            w->max_t = (int64_t)((uint64_t)w->v.event_time_us + (room ? rnd() % room : 0));
            size_t bound = repart_batch_after(&q, plen);
            repart_batch_add(&q, &w->v, w->max_t);
            CHECK(q.b.len <= bound);
        }
        CHECK_EQ_I64(q.n, n);
        got g = {.n = 0};
        CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 1000, collect, &g), 0);
        CHECK_EQ_I64(g.n, n);
        int equal = 1;
        for (int i = 0; i < n && i < g.n; i++) equal &= same_visit(&g.it[i], &want[i]);
        CHECK(equal);
        /* every cut: refused, or a prefix of the visits, unchanged */
        int cuts_ok = 1;
        for (size_t cut = 0; cut < q.b.len; cut++) {
            got h = {.n = 0};
            int rc = repart_decode(q.b.data, cut, 1000, collect, &h);
            if (rc != 0 && rc != -1) cuts_ok = 0;
            if (rc == 0 && h.n >= n) cuts_ok = 0;
            for (int i = 0; i < h.n && i < n; i++) cuts_ok &= same_visit(&h.it[i], &want[i]);
        }
        CHECK(cuts_ok);
        /* a partition beyond the topic's: refused */
        got h = {.n = 0};
        int has_high = 0;
        for (int i = 0; i < n; i++) has_high |= want[i].v.pos.partition >= 500;
        if (has_high) CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 500, collect, &h), -1);
        /* the callback stops the decoding */
        got s = {.n = 0, .stop_after = 1};
        CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 1000, collect, &s), 1);
        CHECK_EQ_I64(s.n, 1);
        buf_free(&q.b);
    }
}

static void test_markers(void)
{
    static const int kinds[] = {REPART_WM, REPART_IDLE, REPART_END};
    static const int64_t maxes[] = {INT64_MIN, -1, 0, 1700000000000000LL, INT64_MAX};
    buf b;
    buf_init(&b);
    for (int k = 0; k < 3; k++)
        for (int m = 0; m < 5; m++) {
            repart_marker(&b, kinds[k], 7, INT64_MAX - m, maxes[m]);
            got g = {.n = 0};
            CHECK_EQ_I64(repart_decode(b.data, b.len, 8, collect, &g), 0);
            CHECK_EQ_I64(g.n, 1);
            CHECK_EQ_I64(g.it[0].kind, kinds[k]);
            CHECK_EQ_I64(g.it[0].v.pos.partition, 7);
            CHECK_EQ_I64(g.it[0].v.pos.offset, INT64_MAX - m);
            CHECK_EQ_I64(g.it[0].max_t, maxes[m]);
            CHECK_EQ_I64(repart_decode(b.data, b.len, 7, collect, &g), -1); /* p 7 of 7 */
            for (size_t cut = 0; cut < b.len; cut++)
                CHECK_EQ_I64(repart_decode(b.data, cut, 8, collect, &g), -1);
            buf_append_byte(&b, 0); /* trailing bytes */
            CHECK_EQ_I64(repart_decode(b.data, b.len, 8, collect, &g), -1);
        }
    buf_free(&b);
}

static void test_foreign(void)
{
    got g = {.n = 0};
    CHECK_EQ_I64(repart_decode("{\"user_id\":1}", 13, 8, collect, &g), -1);
    CHECK_EQ_I64(repart_decode("", 0, 8, collect, &g), -1);
    CHECK_EQ_I64(repart_decode("B", 1, 8, collect, &g), -1);
    CHECK_EQ_I64(repart_decode("B\x02", 2, 8, collect, &g), -1); /* a batch of no visit */
    /* version 1's visit record (kind 'V'), and this version's batch marked 1 */
    CHECK_EQ_I64(repart_decode("V\x01\0\0\0\0", 6, 8, collect, &g), -1);
    repart_batch q = {0};
    buf_init(&q.b);
    visit v = {.user_id = 5, .event_time_us = 10, .page = "/a", .page_len = 2};
    repart_batch_add(&q, &v, 10);
    q.b.data[1] = 1;
    CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 8, collect, &g), -1);
    /* an over-long varint (11 bytes) where the partition stands */
    buf_reset(&q.b);
    buf_append(&q.b, "W\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00\x00", 15);
    CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 8, collect, &g), -1);
    CHECK_EQ_I64(g.n, 0);
    buf_free(&q.b);
}

int main(void)
{
    check_rng = 88172645463325252ULL; /* this file's own sequence of inputs */
    test_round_trip();
    test_markers();
    test_foreign();
    return check_summary("test_repartition");
}
