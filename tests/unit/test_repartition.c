/*
 * test_repartition.c - the repartition topic's records (src/task/repartition.h):
 * batches of random visits, extremes included, with int users (version 2)
 * or string users (version 3), and markers decode to exactly what was
 * encoded; every cut of a record is refused or decodes to a prefix of its
 * visits (never a changed one); foreign bytes, another version, a partition
 * beyond the topic's, and a string user the parser would refuse (empty,
 * over USER_MAX_BYTES, a NUL, bad UTF-8, cut) are refused. The partition of
 * a user is frozen by vectors computed independently (python3-xxhash).
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
    char user[USER_MAX_BYTES];
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
        CHECK(v->user_len <= sizeof it->user);
        if (v->user) memcpy(it->user, v->user, v->user_len < sizeof it->user ? v->user_len : sizeof it->user);
    }
    return g->stop_after && g->n >= g->stop_after;
}

static int same_visit(const item *a, const item *b)
{
    if ((a->v.user == NULL) != (b->v.user == NULL) || a->v.user_len != b->v.user_len ||
        (a->v.user && memcmp(a->user, b->user, a->v.user_len) != 0))
        return 0;
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

/* A string user the parser accepts: 1 to USER_MAX_BYTES bytes of UTF-8
 * without NUL, ASCII and 2-, 3- and 4-byte sequences, the bound included. */
static uint32_t pick_user(char *u)
{
    static const char *const pieces[] = {"a", "Z", "-", "@", "\xc3\xa9", "\xe2\x82\xac",
                                         "\xf0\x9f\x98\x80"};
    uint32_t want = rnd() % 8 == 0 ? USER_MAX_BYTES : 1 + (uint32_t)(rnd() % 40), len = 0;
    for (;;) {
        const char *pc = pieces[rnd() % (sizeof pieces / sizeof *pieces)];
        size_t pl = strlen(pc);
        if (len + pl > want) break;
        memcpy(u + len, pc, pl);
        len += (uint32_t)pl;
    }
    for (; len < want; len++) u[len] = 'x'; /* exactly want bytes */
    return len;
}

static void test_round_trip(int strings, int rounds)
{
    for (int round = 0; round < rounds; round++) {
        repart_batch q = {0};
        buf_init(&q.b);
        static item want[64];
        int n = 1 + (int)(rnd() % 24);
        for (int i = 0; i < n; i++) {
            item *w = &want[i];
            memset(w, 0, sizeof *w);
            w->kind = REPART_BATCH;
            uint32_t plen = (uint32_t)(rnd() % sizeof w->page);
            for (uint32_t k = 0; k < plen; k++) w->page[k] = (char)rnd();
            w->v = (visit){.user_id = strings ? 0 : pick(), .event_time_us = pick(),
                           .page = w->page, .page_len = plen,
                           .pos = {.partition = (int32_t)(rnd() % 1000),
                                   .offset = pick() & INT64_MAX, .append_ts_ms = pick()}};
            if (strings) {
                w->v.user_len = pick_user(w->user);
                w->v.user = w->user;
            }
            /* the partition's highest event time, at or above the visit's */
            uint64_t room = (uint64_t)INT64_MAX - (uint64_t)w->v.event_time_us;
            w->max_t = (int64_t)((uint64_t)w->v.event_time_us + (room ? rnd() % room : 0));
            size_t bound = repart_batch_after(&q, &w->v);
            repart_batch_add(&q, &w->v, w->max_t);
            CHECK(q.b.len <= bound);
        }
        CHECK_EQ_I64(q.n, n);
        /* int users: byte for byte version 2 (an instance of the previous
         * version reads them); string users: version 3 */
        CHECK_EQ_I64(q.b.data[1], strings ? REPART_VERSION_STRINGS : REPART_VERSION);
        got g = {.n = 0};
        CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 1000, collect, &g), 0);
        CHECK_EQ_I64(g.n, n);
        int equal = 1;
        for (int i = 0; i < n && i < g.n; i++) equal &= same_visit(&g.it[i], &want[i]);
        CHECK(equal);
        /* every cut: refused, or a prefix of the visits, unchanged */
        int cuts_ok = 1;
        for (size_t cut = 0; cut < q.b.len; cut++) {
            /* one buffer, not a zeroed one a cut: with string users a got
             * is ~300 KB */
            static got h;
            h.n = h.stop_after = 0;
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
    /* a marker stamped with the string users' version: no writer makes one */
    repart_marker(&q.b, REPART_WM, 1, 5, 7);
    q.b.data[1] = REPART_VERSION_STRINGS;
    CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 8, collect, &g), -1);
    /* an int batch relabelled as strings, and the reverse: refused (here the
     * int user 5's zigzag 10 would be a length running past the record) */
    buf_reset(&q.b);
    q.n = 0;
    repart_batch_add(&q, &v, 10);
    q.b.data[1] = REPART_VERSION_STRINGS;
    CHECK_EQ_I64(repart_decode(q.b.data, q.b.len, 8, collect, &g), -1);
    CHECK_EQ_I64(g.n, 0);
    buf_free(&q.b);
}

/* One string visit's batch with the user replaced by len bytes of u (what
 * no writer produces when the bytes are bad): decoded by the caller. */
static void string_batch(buf *b, const char *u, uint64_t len)
{
    buf_reset(b);
    buf_append_byte(b, REPART_BATCH);
    buf_append_byte(b, REPART_VERSION_STRINGS);
    buf_put_varint(b, 0);  /* partition */
    buf_put_varint(b, 0);  /* offset */
    buf_put_varint(b, 0);  /* lag */
    buf_put_varint(b, 20); /* event time */
    buf_put_varint(b, 0);  /* append ts */
    buf_put_varint(b, len);
    buf_append(b, u, (size_t)len);
    buf_put_varint(b, 2);
    buf_append(b, "/a", 2);
}

static void test_string_users(void)
{
    buf b;
    buf_init(&b);
    got g = {.n = 0};
    static char big[USER_MAX_BYTES + 1];
    memset(big, 'u', sizeof big);
    string_batch(&b, "alice", 5);
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), 0); /* the control */
    CHECK_EQ_I64(g.n, 1);
    CHECK(g.it[0].v.user_len == 5 && memcmp(g.it[0].user, "alice", 5) == 0);
    CHECK_EQ_I64(g.it[0].v.event_time_us, 10);
    string_batch(&b, big, USER_MAX_BYTES); /* the bound itself */
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), 0);
    CHECK_EQ_I64(g.n, 2);
    g.n = 0;
    string_batch(&b, big, USER_MAX_BYTES + 1);
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    string_batch(&b, "", 0);
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    string_batch(&b, "a\0b", 3);
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    string_batch(&b, "a\xc3", 2); /* a cut sequence */
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    string_batch(&b, "\xed\xa0\x80", 3); /* a surrogate */
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    string_batch(&b, "alice", 5);
    b.len = 11; /* the record ends inside the user */
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    /* a huge length varint */
    string_batch(&b, "", 0);
    b.len = 7;
    buf_put_varint(&b, UINT64_MAX);
    CHECK_EQ_I64(repart_decode(b.data, b.len, 1, collect, &g), -1);
    CHECK_EQ_I64(g.n, 0);
    buf_free(&b);
}

/* A user's partition must never change for a group (every instance, every
 * version): vectors computed with python3-xxhash and a Python splitmix64. */
static void test_partition_vectors(void)
{
    static const struct {
        int64_t user;
        int32_t r4, r7, r10000;
    } ints[] = {{0, 3, 2, 7535}, {1, 1, 2, 2465}, {2, 2, 4, 8110}, {42, 1, 5, 5413},
                {-1, 0, 0, 3936}, {INT64_MIN, 3, 6, 3915}, {INT64_MAX, 3, 2, 2039}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        visit v = {.user_id = ints[i].user};
        CHECK_EQ_I64(repart_partition(&v, 4), ints[i].r4);
        CHECK_EQ_I64(repart_partition(&v, 7), ints[i].r7);
        CHECK_EQ_I64(repart_partition(&v, 10000), ints[i].r10000);
        CHECK_EQ_I64(repart_partition(&v, 1), 0);
    }
    static const struct {
        const char *user;
        int32_t r4, r7, r10000;
    } strs[] = {{"alice@example.com", 3, 4, 7167},
                {"6f1c4a2e-9b3d-4c5e-8f7a-1b2c3d4e5f60", 0, 3, 3816},
                {"1", 0, 6, 3464},
                {"Bob", 1, 5, 8401},
                {"bob", 1, 4, 3397},
                {"\xc3\xa9", 3, 6, 1795}};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        /* user_id is the engine's own (interned) id: it must not matter */
        visit v = {.user_id = (int64_t)i * 977, .user = strs[i].user,
                   .user_len = (uint32_t)strlen(strs[i].user)};
        CHECK_EQ_I64(repart_partition(&v, 4), strs[i].r4);
        CHECK_EQ_I64(repart_partition(&v, 7), strs[i].r7);
        CHECK_EQ_I64(repart_partition(&v, 10000), strs[i].r10000);
    }
}

int main(void)
{
    check_rng = 88172645463325252ULL; /* this file's own sequence of inputs */
    test_round_trip(0, 100);
    test_round_trip(1, 30); /* fewer: up to 12 KiB a batch, every cut decoded */
    test_markers();
    test_foreign();
    test_string_users();
    test_partition_vectors();
    return check_summary("test_repartition");
}
