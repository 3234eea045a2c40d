/*
 * test_engine.c - the engine's rules, checked against worked examples and
 * against a brute-force oracle on random inputs; determinism under
 * checkpoint/restore at every point, under permutations (page cap) and
 * under partition interleavings.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/xalloc.h"
#include "engine/engine.h"
#include "engine/session_id.h"
#include "record/timestamp.h"

/* ---- output collection -------------------------------------------------- */

typedef struct out {
    buf text;          /* one line per event, in emission order */
    unsigned closed, late, capped, future;
} out;

static int on_close(void *ctx, const closed_session *cs)
{
    out *o = ctx;
    check_close_line(&o->text, cs);
    o->closed++;
    return 0;
}

static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    out *o = ctx;
    check_reject_line(&o->text, v, why);
    if (why == REJECT_LATE) o->late++;
    else if (why == REJECT_FUTURE) o->future++;
    else o->capped++;
    return 0;
}

/* max_session_bytes and max_future_us of the engines the tests make (0: the
 * largest, none) */
static uint32_t g_max_bytes;
static int64_t g_max_future;

static engine *new_engine(out *o, int64_t gap, int64_t late, uint32_t max_pages)
{
    memset(o, 0, sizeof *o);
    buf_init(&o->text);
    engine_config cfg = {.gap_us = gap, .lateness_us = late, .max_pages = max_pages,
                         .max_session_bytes = g_max_bytes, .max_future_us = g_max_future,
                         .track_dirty = 1};
    engine_callbacks cb = {.ctx = o, .on_close = on_close, .on_reject = on_reject};
    return engine_new(&cfg, &cb);
}

static const char *text(out *o)
{
    buf_append_byte(&o->text, 0);
    o->text.len--;
    return (const char *)o->text.data;
}

static visit mk(int64_t user, const char *page, int64_t t_us, int32_t part, int64_t off)
{
    visit v = {.user_id = user, .event_time_us = t_us, .page = page,
               .page_len = (uint32_t)strlen(page),
               .pos = {.append_ts_ms = 0, .partition = part, .offset = off}};
    return v;
}

static int64_t ts(const char *iso)
{
    int64_t us = 0;
    parse_iso8601_us(iso, strlen(iso), &us);
    return us;
}

/* ---- worked examples (docs/semantics.md) --------------------------------- */

static void test_walkthrough(void)
{
    out o;
    engine *e = new_engine(&o, 50 * SEC, 10 * SEC, 10000);
    visit a = mk(1, "A.html", ts("2023-02-20T03:03:20"), 0, 0);
    visit b = mk(1, "B.html", ts("2023-02-20T03:03:26"), 0, 70);
    visit c = mk(1, "C.html", ts("2023-02-20T03:05:26"), 0, 140);
    visit d = mk(2, "D.html", ts("2023-02-20T04:55:26"), 0, 210);
    engine_apply(e, &a);
    engine_apply(e, &b);
    CHECK_EQ_I64(o.closed, 0);
    engine_apply(e, &c); /* watermark 03:05:16 > 03:03:26 + 50s: {A,B} closes */
    CHECK_EQ_I64(o.closed, 1);
    engine_apply(e, &d);
    CHECK_EQ_I64(o.closed, 2);
    engine_close_all(e);
    char expect[512];
    log_position p0 = {0, 0, 0}, p140 = {0, 0, 140}, p210 = {0, 0, 210};
    snprintf(expect, sizeof expect,
             "close id=%" PRId64 " user=1 [A.html,B.html]\n"
             "close id=%" PRId64 " user=1 [C.html]\n"
             "close id=%" PRId64 " user=2 [D.html]\n",
             session_id_of(1, &p0), session_id_of(1, &p140), session_id_of(2, &p210));
    CHECK_STR(text(&o), expect);
    engine_free(e);
    buf_free(&o.text);
}

static void test_boundaries(void)
{
    out o;
    engine *e = new_engine(&o, 50 * SEC, 10 * SEC, 100);
    /* exactly G apart joins; G + 1us apart does not */
    visit v1 = mk(1, "a", 0, 0, 1), v2 = mk(1, "b", 50 * SEC, 0, 2), v3 = mk(1, "c", 100 * SEC + 1, 0, 3);
    engine_apply(e, &v1);
    engine_apply(e, &v2);
    engine_apply(e, &v3);
    /* watermark = 100s+1us - 10s = 90s+1us; session [0,50s] closes when wm > 100s */
    CHECK_EQ_I64(o.closed, 0);
    visit v4 = mk(2, "x", 110 * SEC, 0, 4); /* wm = 100s: not yet (must exceed) */
    engine_apply(e, &v4);
    CHECK_EQ_I64(o.closed, 0);
    visit v5 = mk(2, "y", 110 * SEC + 1, 0, 5); /* wm = 100s + 1us > 100s */
    engine_apply(e, &v5);
    CHECK_EQ_I64(o.closed, 1);
    /* a visit exactly at the watermark is not late; one below is */
    visit ok = mk(3, "ok", 100 * SEC + 1, 0, 6), late = mk(3, "late", 100 * SEC, 0, 7);
    engine_apply(e, &ok);
    engine_apply(e, &late);
    CHECK_EQ_I64(o.late, 1);
    engine_free(e);
    buf_free(&o.text);
}

static void test_merge_and_order(void)
{
    out o;
    engine *e = new_engine(&o, 10 * SEC, 1000 * SEC, 100);
    visit a = mk(7, "a", 0, 0, 1), c = mk(7, "c", 30 * SEC, 0, 2), b = mk(7, "b", 15 * SEC, 0, 3);
    visit b2 = mk(7, "b2", 15 * SEC, 0, 4); /* tie with b: log order */
    engine_apply(e, &a);
    engine_apply(e, &c);
    engine_stats st;
    engine_get_stats(e, &st);
    CHECK_EQ_I64(st.open_sessions, 2);
    engine_apply(e, &b); /* within 10s of neither... 15 - 0 > 10, 30 - 15 > 10 */
    engine_get_stats(e, &st);
    CHECK_EQ_I64(st.open_sessions, 3);
    visit m1 = mk(7, "m1", 8 * SEC, 0, 5); /* bridges a and b */
    engine_apply(e, &m1);
    engine_get_stats(e, &st);
    CHECK_EQ_I64(st.open_sessions, 2);
    visit m2 = mk(7, "m2", 22 * SEC, 0, 6); /* bridges (a,m1,b) and c */
    engine_apply(e, &m2);
    engine_apply(e, &b2);
    engine_get_stats(e, &st);
    CHECK_EQ_I64(st.open_sessions, 1);
    engine_close_all(e);
    log_position first = {0, 0, 1};
    char expect[256];
    snprintf(expect, sizeof expect, "close id=%" PRId64 " user=7 [a,m1,b,b2,m2,c]\n",
             session_id_of(7, &first));
    CHECK_STR(text(&o), expect);
    engine_free(e);
    buf_free(&o.text);
}

static void test_page_cap_order_independent(void)
{
    /* The kept pages are the 3 earliest whatever the arrival order. */
    const int64_t times[] = {5, 1, 4, 2, 3, 6};
    const char *names[] = {"t5", "t1", "t4", "t2", "t3", "t6"};
    const int perms[][6] = {{0, 1, 2, 3, 4, 5}, {5, 4, 3, 2, 1, 0}, {2, 0, 4, 1, 5, 3}};
    char first_text[512] = "";
    for (size_t p = 0; p < 3; p++) {
        out o;
        engine *e = new_engine(&o, 100 * SEC, 1000 * SEC, 3);
        for (int i = 0; i < 6; i++) {
            int k = perms[p][i];
            visit v = mk(1, names[k], times[k] * SEC, 0, k);
            engine_apply(e, &v);
        }
        CHECK_EQ_I64(o.capped, 3);
        engine_close_all(e);
        /* the close line is last; compare it across permutations */
        const char *t = text(&o), *last = strstr(t, "close");
        CHECK(last != NULL && strstr(last, "[t1,t2,t3]") != NULL);
        if (p == 0) snprintf(first_text, sizeof first_text, "%s", last ? last : "");
        else CHECK_STR(last ? last : "", first_text);
        engine_free(e);
        buf_free(&o.text);
    }
}

/* ---- oracle -------------------------------------------------------------- */

typedef struct rv { int64_t user, t, off; char page[16]; } rv;

static int cmp_user_time(const void *a, const void *b)
{
    const rv *x = a, *y = b;
    if (x->user != y->user) return x->user < y->user ? -1 : 1;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sessions of a single-partition log by the rules, computed in batch:
 * late = below (max earlier accepted time - L); the rest grouped per user
 * into runs with gaps <= G; pages capped to the longest run of the earliest
 * that holds at most max_pages pages and g_max_bytes bytes. Output lines
 * sorted, for comparison as a set. */
static char **oracle(const rv *in, size_t n, int64_t g, int64_t l, uint32_t cap, size_t *n_out)
{
    rv *ok = xmalloc(n * sizeof *ok);
    size_t m = 0;
    int64_t max_t = INT64_MIN;
    for (size_t i = 0; i < n; i++) {
        if (max_t != INT64_MIN && in[i].t < max_t - l) continue;
        ok[m++] = in[i];
        if (in[i].t > max_t) max_t = in[i].t;
    }
    qsort(ok, m, sizeof *ok, cmp_user_time);
    char **lines = xmalloc((m + 1) * sizeof *lines);
    size_t k = 0;
    for (size_t i = 0; i < m;) {
        size_t j = i + 1;
        int64_t first_off = ok[i].off;
        while (j < m && ok[j].user == ok[i].user && ok[j].t - ok[j - 1].t <= g) {
            if (ok[j].off < first_off) first_off = ok[j].off;
            j++;
        }
        log_position fp = {0, 0, first_off};
        buf b;
        buf_init(&b);
        buf_printf(&b, "close id=%" PRId64 " user=%" PRId64 " [", session_id_of(ok[i].user, &fp),
                   ok[i].user);
        size_t bytes = 0;
        for (size_t x = i; x < j && x - i < cap; x++) {
            bytes += strlen(ok[x].page);
            if (g_max_bytes && bytes > g_max_bytes) break;
            buf_printf(&b, "%s%s", x > i ? "," : "", ok[x].page);
        }
        buf_append_str(&b, "]");
        buf_append_byte(&b, 0);
        lines[k++] = (char *)b.data;
        i = j;
    }
    free(ok);
    qsort(lines, k, sizeof *lines, cmp_str);
    *n_out = k;
    return lines;
}

/* Close lines of an engine transcript, sorted. */
static char **close_lines(const char *t, size_t *n_out)
{
    size_t n = 0, cap = 16;
    char **lines = xmalloc(cap * sizeof *lines);
    for (const char *p = t; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (strncmp(p, "close", 5) == 0) {
            if (n == cap) lines = xrealloc(lines, (cap *= 2) * sizeof *lines);
            lines[n++] = xstrndup(p, len);
        }
        p += len + (nl != NULL);
    }
    qsort(lines, n, sizeof *lines, cmp_str);
    *n_out = n;
    return lines;
}

static void free_lines(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++) free(l[i]);
    free(l);
}

/* ---- checkpoint round trip through an in-memory store -------------------- */

typedef struct store { int64_t *users; buf *blobs; size_t n, cap; buf meta; } store;

static int store_put(void *ctx, const user_key *key, const void *blob, size_t len)
{
    store *s = ctx;
    int64_t user = key->id;
    size_t i = 0;
    while (i < s->n && s->users[i] != user) i++;
    if (!blob) {
        if (i < s->n) {
            buf_free(&s->blobs[i]);
            s->users[i] = s->users[s->n - 1];
            s->blobs[i] = s->blobs[s->n - 1];
            s->n--;
        }
        return 0;
    }
    if (i == s->n) {
        if (s->n == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 64;
            s->users = xrealloc(s->users, s->cap * sizeof *s->users);
            s->blobs = xrealloc(s->blobs, s->cap * sizeof *s->blobs);
        }
        s->users[i] = user;
        buf_init(&s->blobs[i]);
        s->n++;
    }
    buf_reset(&s->blobs[i]);
    buf_append(&s->blobs[i], blob, len);
    return 0;
}

static engine *checkpoint_and_restore(engine *e, store *s, out *o, int64_t g, int64_t l,
                                      uint32_t cap)
{
    engine_foreach_dirty(e, store_put, s);
    engine_clear_dirty(e);
    buf_reset(&s->meta);
    engine_save_meta(e, &s->meta);
    engine_free(e);
    engine_config cfg = {.gap_us = g, .lateness_us = l, .max_pages = cap,
                         .max_session_bytes = g_max_bytes, .max_future_us = g_max_future,
                         .track_dirty = 1};
    engine_callbacks cb = {.ctx = o, .on_close = on_close, .on_reject = on_reject};
    engine *r = engine_new(&cfg, &cb);
    CHECK(engine_load_meta(r, s->meta.data, s->meta.len) == 0);
    for (size_t i = 0; i < s->n; i++)
        CHECK(engine_load_user(r, &(user_key){.id = s->users[i]}, s->blobs[i].data,
                               s->blobs[i].len) == 0);
    return r;
}

/* Many sessions ending at one instant close in user order, whatever order
 * they were opened in; sessions extended meanwhile close later, also in user
 * order. (The oracle trials have few users: this drives the close queue's
 * sort past its short-run cut-off.) */
static void test_ties_close_in_user_order(void)
{
    enum { USERS = 3000 };
    out o;
    engine *e = new_engine(&o, 10 * SEC, 0, 100);
    static int64_t ids[USERS];
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < USERS; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int64_t)(x % 2000003) - 1000000 + (int64_t)i * 2000003; /* distinct, some < 0 */
        visit v = mk(ids[i], "p", 100 * SEC, 0, i);
        engine_apply(e, &v);
    }
    for (int i = 0; i < USERS; i += 3) { /* every third user comes back at 105 s */
        visit v = mk(ids[i], "q", 105 * SEC, 0, USERS + i);
        engine_apply(e, &v);
    }
    visit late = mk(INT64_MAX, "z", 200 * SEC, 0, 2 * USERS); /* closes all the others */
    engine_apply(e, &late);
    CHECK_EQ_I64(engine_check_invariants(e), 0);

    /* The transcript in emission order: "close id=I user=U [pages]" lines. */
    size_t n = 0;
    int in_order = 1, pages_ok = 1;
    int64_t prev = INT64_MIN;
    for (const char *line = strstr(text(&o), "close "); line; line = strstr(line + 1, "\nclose ")) {
        long long user = 0;
        const char *u = strstr(line, "user=");
        if (!u || sscanf(u, "user=%lld", &user) != 1) in_order = 0;
        /* first the 2000 sessions ending at 100 s, then the 1000 at 105 s */
        const char *eol = strchr(line + 1, '\n');
        int extended = eol && eol - line > 5 && memcmp(eol - 5, "[p,q]", 5) == 0;
        if (extended != (n >= USERS - USERS / 3)) pages_ok = 0;
        if (n == USERS - USERS / 3) prev = INT64_MIN;
        if ((int64_t)user <= prev) in_order = 0;
        prev = (int64_t)user;
        n++;
    }
    CHECK_EQ_I64(n, USERS);
    CHECK(in_order);
    CHECK(pages_ok);
    engine_free(e);
    buf_free(&o.text);
}

/* One bucket of 150000 entries (every session pushed while the queue was
 * empty), redistributed as the watermark reaches it: its array is given back
 * half by half as it empties (the new buckets grow meanwhile), and the
 * sessions still close each once, in the order of their ends. */
static void test_large_bucket_redistributed(void)
{
    enum { USERS = 150000 };
    out o;
    engine *e = new_engine(&o, 10 * SEC, 150 * SEC, 100); /* out of order, none late */
    for (int i = 0; i < USERS; i++) { /* distinct times in 0..150 s, in no order */
        visit v = mk(i, "p", (int64_t)(((uint64_t)i * 7919) % USERS) * 1000, 0, i);
        engine_apply(e, &v);
    }
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    for (int k = 16; k <= 32; k++) { /* the watermark reaches them in steps */
        visit v = mk(-1, "z", (int64_t)k * 10 * SEC, 0, USERS + k);
        engine_apply(e, &v);
    }
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    size_t n = 0;
    int in_order = 1;
    long long prev = -1;
    /* line by line by hand: strstr on the whole 6 MB text per line is
     * quadratic under ASan, whose strstr measures the haystack each call */
    for (const char *line = text(&o), *end; *line; line = *end ? end + 1 : end) {
        for (end = line; *end && *end != '\n'; end++) {}
        if (end - line < 6 || memcmp(line, "close ", 6) != 0) continue;
        const char *u = line;
        while (u + 5 <= end && memcmp(u, "user=", 5) != 0) u++;
        long long user = u + 5 <= end ? strtoll(u + 5, NULL, 10) : -2;
        if (user == -1) continue; /* the watermark's own sessions */
        long long t = user < 0 ? -1 : (long long)(((uint64_t)user * 7919) % USERS);
        if (t <= prev) in_order = 0;
        prev = t;
        n++;
    }
    CHECK_EQ_I64(n, USERS);
    CHECK(in_order);
    engine_free(e);
    buf_free(&o.text);
}

/* A peak of open sessions, all closed, then a commit (which gives back the
 * close queue's large empty arrays), then more visits: the queue keeps
 * working and no session is lost (ASan checks the memory). */
static void test_queue_after_peak(void)
{
    enum { USERS = 70000 };
    out o;
    engine *e = new_engine(&o, 10 * SEC, 10 * SEC, 100);
    for (int i = 0; i < USERS; i++) {
        visit v = mk(i, "p", (int64_t)(i % 7) * SEC, 0, i);
        engine_apply(e, &v);
    }
    visit late = mk(-1, "z", 100 * SEC, 0, USERS); /* closes the 70000 */
    engine_apply(e, &late);
    engine_clear_dirty(e);
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    for (int i = 0; i < 1000; i++) {
        visit v = mk(i, "q", (100 + i % 5) * SEC, 0, USERS + 1 + i);
        engine_apply(e, &v);
    }
    engine_close_all(e);
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    engine_stats st;
    engine_get_stats(e, &st);
    CHECK_EQ_I64(st.rejected_late, 0);
    CHECK_EQ_I64(st.sessions_closed, USERS + 1 + 1000); /* the 70000, user -1's, the 1000 */
    engine_free(e);
    buf_free(&o.text);
}

static void test_random_vs_oracle_and_restore(void)
{
    char pages[64][16];
    for (int i = 0; i < 64; i++) snprintf(pages[i], sizeof pages[i], "p%d", i);
    for (int trial = 0; trial < 300; trial++) {
        size_t n = 1 + rnd() % 400;
        int64_t g = (int64_t)(1 + rnd() % 20) * SEC, l = (int64_t)(rnd() % 15) * SEC;
        uint32_t cap = 1 + (uint32_t)(rnd() % 12);
        g_max_bytes = rnd() % 3 ? 0 : 2 + (uint32_t)(rnd() % 30); /* pages are 2-3 bytes */
        int users = 1 + (int)(rnd() % 8);
        rv *in = xmalloc(n * sizeof *in);
        int64_t clock = 0;
        for (size_t i = 0; i < n; i++) {
            clock += (int64_t)(rnd() % 8) * SEC;
            in[i].user = (int64_t)(rnd() % (uint64_t)users) - 2; /* negative ids too */
            in[i].t = clock - (int64_t)(rnd() % 25) * SEC; /* bounded disorder */
            in[i].off = (int64_t)i * 100;
            snprintf(in[i].page, sizeof in[i].page, "%s", pages[rnd() % 64]);
        }
        size_t n_exp;
        char **exp = oracle(in, n, g, l, cap, &n_exp);

        /* run 1: uninterrupted; run 2: checkpoint/restore at random points */
        out o1, o2;
        engine *e1 = new_engine(&o1, g, l, cap);
        engine *e2 = new_engine(&o2, g, l, cap);
        store st = {0};
        buf_init(&st.meta);
        int broken = 0;
        for (size_t i = 0; i < n; i++) {
            visit v = mk(in[i].user, in[i].page, in[i].t, 0, in[i].off);
            engine_apply(e1, &v);
            engine_apply(e2, &v);
            if (!broken) broken = engine_check_invariants(e1);
            if (!broken) broken = engine_check_invariants(e2);
            if (rnd() % 10 == 0) e2 = checkpoint_and_restore(e2, &st, &o2, g, l, cap);
        }
        CHECK_EQ_I64(broken, 0);
        engine_close_all(e1);
        e2 = checkpoint_and_restore(e2, &st, &o2, g, l, cap);
        CHECK_EQ_I64(engine_check_invariants(e2), 0);
        engine_close_all(e2);
        CHECK_EQ_I64(engine_check_invariants(e1), 0);
        size_t n1;
        char **got = close_lines(text(&o1), &n1);
        int same = n1 == n_exp;
        for (size_t i = 0; same && i < n1; i++) same = strcmp(got[i], exp[i]) == 0;
        CHECK(same);
        if (!same) {
            fprintf(stderr, "trial %d: engine %zu sessions, oracle %zu\n", trial, n1, n_exp);
            for (size_t i = 0; i < n1 && i < 5; i++) fprintf(stderr, "  got %s\n", got[i]);
            for (size_t i = 0; i < n_exp && i < 5; i++) fprintf(stderr, "  exp %s\n", exp[i]);
        }
        /* the restored run emits exactly the same transcript, in order */
        CHECK_STR(text(&o2), text(&o1));
        free_lines(got, n1);
        free_lines(exp, n_exp);
        engine_free(e1);
        engine_free(e2);
        buf_free(&o1.text);
        buf_free(&o2.text);
        for (size_t i = 0; i < st.n; i++) buf_free(&st.blobs[i]);
        free(st.users);
        free(st.blobs);
        buf_free(&st.meta);
        free(in);
    }
    g_max_bytes = 0;
}

/* Pages of any length, arriving in any order (so that sessions also merge),
 * with a checkpoint/restore at random points: the kept pages are the longest
 * run of the earliest within both caps, as a brute force over the whole set
 * finds them; the rest are dead-lettered, and the counts add up. */
static void test_session_bytes_order_independent(void)
{
    enum { N = 40 };
    static char names[N][48];
    for (int trial = 0; trial < 400; trial++) {
        rv in[N];
        size_t n = 1 + rnd() % N;
        uint32_t cap = 1 + (uint32_t)(rnd() % 20);
        g_max_bytes = 1 + (uint32_t)(rnd() % 120);
        for (size_t i = 0; i < n; i++) {
            in[i].user = (int64_t)(rnd() % 2);
            in[i].t = (int64_t)(rnd() % 60) * SEC;
            in[i].off = (int64_t)i;
            int len = 1 + (int)(rnd() % 40);
            snprintf(names[i], sizeof names[i], "%02zu%.*s", i, len, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            snprintf(in[i].page, sizeof in[i].page, "%.15s", names[i]);
        }
        /* the oracle on the pages' full names: sort by user and time */
        size_t n_exp;
        rv *sorted = xmalloc(n * sizeof *sorted);
        memcpy(sorted, in, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, cmp_user_time);
        buf want;
        buf_init(&want);
        unsigned want_capped = 0;
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            int64_t first_off = sorted[i].off;
            while (j < n && sorted[j].user == sorted[i].user && sorted[j].t - sorted[j - 1].t <= 5 * SEC) {
                if (sorted[j].off < first_off) first_off = sorted[j].off;
                j++;
            }
            log_position fp = {0, 0, first_off};
            buf_printf(&want, "close id=%" PRId64 " user=%" PRId64 " [", session_id_of(sorted[i].user, &fp), sorted[i].user);
            size_t bytes = 0, kept = 0;
            for (size_t x = i; x < j; x++) {
                const char *name = names[sorted[x].off];
                bytes += strlen(name);
                if (kept == cap || bytes > g_max_bytes) break;
                buf_printf(&want, "%s%s", kept ? "," : "", name);
                kept++;
            }
            want_capped += (unsigned)(j - i - kept);
            buf_append_str(&want, "]\n");
            i = j;
        }
        free(sorted);
        buf_append_byte(&want, 0);
        char **exp = close_lines((const char *)want.data, &n_exp);

        out o;
        engine *e = new_engine(&o, 5 * SEC, 1000 * SEC, cap);
        store st = {0};
        buf_init(&st.meta);
        for (size_t i = 0; i < n; i++) {
            visit v = mk(in[i].user, names[i], in[i].t, 0, in[i].off);
            engine_apply(e, &v);
            CHECK_EQ_I64(engine_check_invariants(e), 0);
            if (rnd() % 4 == 0) e = checkpoint_and_restore(e, &st, &o, 5 * SEC, 1000 * SEC, cap);
        }
        engine_close_all(e);
        size_t n_got;
        char **got = close_lines(text(&o), &n_got);
        int same = n_got == n_exp;
        for (size_t i = 0; same && i < n_got; i++) same = strcmp(got[i], exp[i]) == 0;
        CHECK(same);
        CHECK_EQ_I64(o.capped, want_capped);
        if (!same) {
            fprintf(stderr, "trial %d (cap %u, %u bytes):\n", trial, cap, g_max_bytes);
            for (size_t i = 0; i < n_got; i++) fprintf(stderr, "  got %s\n", got[i]);
            for (size_t i = 0; i < n_exp; i++) fprintf(stderr, "  exp %s\n", exp[i]);
        }
        free_lines(got, n_got);
        free_lines(exp, n_exp);
        buf_free(&want);
        engine_free(e);
        buf_free(&o.text);
        for (size_t i = 0; i < st.n; i++) buf_free(&st.blobs[i]);
        free(st.users);
        free(st.blobs);
        buf_free(&st.meta);
    }
    g_max_bytes = 0;
}

/* One visit from a broken clock (year 9999) no longer moves the watermark:
 * it is rejected as "future", and the visits after it are not late. In a
 * file a visit that jumps more than F ahead (or starts the partition) waits
 * for the next one, which confirms or refutes it; a held visit survives a
 * checkpoint; a Kafka record is bounded by its append time. The setting is
 * bound to the checkpoint. */
static void test_far_future(void)
{
    out o;
    g_max_future = 3600 * SEC;
    engine *e = new_engine(&o, 50 * SEC, 10 * SEC, 100);
    store st = {0};
    buf_init(&st.meta);
    int64_t t0 = ts("2023-02-20T03:03:20"), far_t = ts("9999-12-31T23:59:59");
    visit first_far = mk(9, "first-far", far_t, 0, 0), a = mk(1, "a", t0, 0, 10);
    engine_apply(e, &first_far); /* starts the partition: held */
    engine_stats sts;
    engine_get_stats(e, &sts);
    CHECK_EQ_I64(sts.held_visits, 1);
    e = checkpoint_and_restore(e, &st, &o, 50 * SEC, 10 * SEC, 100);
    engine_apply(e, &a); /* refutes it (9999 is more than 1h above a); a itself is held */
    CHECK_EQ_I64(o.future, 1);
    visit far = mk(2, "far", far_t, 0, 20), b = mk(1, "b", t0 + 5 * SEC, 0, 30);
    engine_apply(e, &far);  /* confirms a; held itself */
    engine_apply(e, &b);    /* refutes far; b joins a's session */
    CHECK_EQ_I64(o.future, 2);
    CHECK(strstr(text(&o), "future user=9 page=first-far\n") != NULL);
    CHECK(strstr(text(&o), "future user=2 page=far\n") != NULL);
    /* a quiet hour and more, then the stream goes on: nothing is lost */
    visit edge = mk(3, "edge", t0 + 5 * SEC + 3600 * SEC, 0, 40); /* exactly F: not a jump */
    visit jump = mk(3, "jump", t0 + 3 * 3600 * SEC, 0, 50), after = mk(3, "after", t0 + 3 * 3600 * SEC - 5 * SEC, 0, 60);
    visit last = mk(4, "last", t0 + 10 * 3600 * SEC, 0, 70);
    engine_apply(e, &edge);
    engine_apply(e, &jump);  /* held */
    e = checkpoint_and_restore(e, &st, &o, 50 * SEC, 10 * SEC, 100);
    engine_apply(e, &after); /* 5 s below it: confirms it; within L, joins it */
    engine_apply(e, &last);  /* held; the input ends: accepted */
    engine_close_all(e);
    CHECK_EQ_I64(o.future, 2);
    CHECK_EQ_I64(o.late, 0);
    CHECK(strstr(text(&o), "user=1 [a,b]") != NULL);
    CHECK(strstr(text(&o), "user=3 [after,jump]") != NULL);
    CHECK(strstr(text(&o), "user=4 [last]") != NULL);
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    /* Kafka: the append time bounds it, whatever the partition has seen */
    visit k1 = mk(5, "k1", t0 + 2 * 3600 * SEC, 1, 0), k2 = mk(5, "k2", t0 + 2 * 3600 * SEC, 1, 1);
    k1.pos.append_ts_ms = t0 / 1000 + 3600 * 1000;     /* 1h before its event time: ok */
    k2.pos.append_ts_ms = t0 / 1000 + 3600 * 1000 - 1; /* 1h and 1 ms before: future */
    engine_apply(e, &k1);
    engine_apply(e, &k2);
    CHECK_EQ_I64(o.future, 3);
    engine_get_stats(e, &sts);
    CHECK_EQ_I64(sts.rejected_future, 3);
    CHECK_EQ_I64(sts.held_visits, 0);
    buf meta;
    buf_init(&meta);
    engine_save_meta(e, &meta);
    out o2;
    g_max_future = 7200 * SEC;
    engine *r = new_engine(&o2, 50 * SEC, 10 * SEC, 100);
    CHECK_EQ_I64(engine_load_meta(r, meta.data, meta.len), -2); /* another --max-future */
    engine_free(r);
    buf_free(&o2.text);
    g_max_future = 0;
    buf_free(&meta);
    for (size_t i = 0; i < st.n; i++) buf_free(&st.blobs[i]);
    free(st.users);
    free(st.blobs);
    buf_free(&st.meta);
    engine_free(e);
    buf_free(&o.text);
}

/* Two partitions replayed in random interleavings give the same sessions
 * when each partition is flagged caught up once it has delivered its log. */
static void test_partition_interleavings(void)
{
    enum { N = 120 };
    for (int trial = 0; trial < 100; trial++) {
        rv logs[2][N];
        for (int p = 0; p < 2; p++) {
            int64_t clock = (int64_t)(rnd() % 100) * SEC;
            for (int i = 0; i < N; i++) {
                clock += (int64_t)(rnd() % 6) * SEC;
                logs[p][i].user = (int64_t)(rnd() % 5);
                logs[p][i].t = clock - (int64_t)(rnd() % 20) * SEC;
                logs[p][i].off = i;
                snprintf(logs[p][i].page, sizeof logs[p][i].page, "p%d.%d", p, i);
            }
        }
        char *reference = NULL;
        for (int variant = 0; variant < 6; variant++) {
            out o;
            engine *e = new_engine(&o, 10 * SEC, 5 * SEC, 1000);
            engine_set_caught_up(e, 0, 0);
            engine_set_caught_up(e, 1, 0);
            int idx[2] = {0, 0};
            while (idx[0] < N || idx[1] < N) {
                int p;
                if (variant == 0) p = idx[0] < N ? 0 : 1;       /* all of 0 first */
                else if (variant == 1) p = idx[1] < N ? 1 : 0;  /* all of 1 first */
                else p = idx[0] >= N ? 1 : idx[1] >= N ? 0 : (int)(rnd() % 2);
                rv *r = &logs[p][idx[p]++];
                visit v = mk(r->user, r->page, r->t, p, r->off);
                engine_apply(e, &v);
                if (idx[p] == N) engine_set_caught_up(e, p, 1);
                if (engine_check_invariants(e) != 0) {
                    CHECK_EQ_I64(engine_check_invariants(e), 0);
                    break;
                }
            }
            engine_close_all(e);
            size_t n;
            char **lines = close_lines(text(&o), &n);
            buf all;
            buf_init(&all);
            buf_printf(&all, "late=%u\n", o.late);
            for (size_t i = 0; i < n; i++) buf_printf(&all, "%s\n", lines[i]);
            buf_append_byte(&all, 0);
            if (!reference) reference = (char *)all.data;
            else {
                CHECK_STR((char *)all.data, reference);
                buf_free(&all);
            }
            free_lines(lines, n);
            engine_free(e);
            buf_free(&o.text);
        }
        free(reference);
    }
}

/* The scale-out's two stages (src/task/) against one engine: lateness judged
 * per source partition in its own order, then each user's accepted visits
 * fed to one of R session engines that hear every source partition's highest
 * event time (engine_advance_partition) after each of its records, and its
 * end. Whatever the interleaving, the union of their sessions is the single
 * engine's, and they reject nothing as late that stage 1 accepted. */
static void test_repartitioned_equals_single(void)
{
    enum { P = 3, N = 80, R = 2 };
    for (int trial = 0; trial < 60; trial++) {
        rv logs[P][N];
        for (int p = 0; p < P; p++) {
            int64_t clock = (int64_t)(rnd() % 100) * SEC;
            for (int i = 0; i < N; i++) {
                clock += (int64_t)(rnd() % 8) * SEC;
                logs[p][i].user = (int64_t)(rnd() % 7);
                logs[p][i].t = clock - (int64_t)(rnd() % 20) * SEC;
                logs[p][i].off = i;
                snprintf(logs[p][i].page, sizeof logs[p][i].page, "p%d.%d", p, i);
            }
        }
        out single;
        engine *ref = new_engine(&single, 10 * SEC, 5 * SEC, 4);
        out split[R];
        engine *st2[R];
        for (int r = 0; r < R; r++) st2[r] = new_engine(&split[r], 10 * SEC, 5 * SEC, 4);
        for (int p = 0; p < P; p++) {
            engine_set_caught_up(ref, p, 0);
            for (int r = 0; r < R; r++) engine_set_caught_up(st2[r], p, 0);
        }
        int idx[P] = {0};
        int64_t max_t[P];
        unsigned stage1_late = 0;
        for (int p = 0; p < P; p++) max_t[p] = INT64_MIN;
        for (int left = P * N; left > 0; left--) {
            int p = (int)(rnd() % P);
            while (idx[p] == N) p = (p + 1) % P;
            rv *x = &logs[p][idx[p]++];
            visit v = mk(x->user, x->page, x->t, p, x->off);
            engine_apply(ref, &v);
            if (max_t[p] != INT64_MIN && x->t < max_t[p] - 5 * SEC) {
                stage1_late++;
            } else {
                if (x->t > max_t[p]) max_t[p] = x->t;
                engine_apply(st2[x->user % R], &v);
            }
            for (int r = 0; r < R; r++) {
                engine_advance_partition(st2[r], p, max_t[p]);
                if (idx[p] == N) engine_set_caught_up(st2[r], p, 1);
                CHECK_EQ_I64(engine_check_invariants(st2[r]), 0);
            }
            if (idx[p] == N) engine_set_caught_up(ref, p, 1);
        }
        engine_close_all(ref);
        size_t n_ref;
        char **want = close_lines(text(&single), &n_ref);
        CHECK_EQ_I64(single.late, stage1_late);
        size_t n_got = 0;
        unsigned capped = 0;
        for (int r = 0; r < R; r++) {
            engine_close_all(st2[r]);
            CHECK_EQ_I64(split[r].late, 0);
            capped += split[r].capped;
            size_t n;
            char **lines = close_lines(text(&split[r]), &n);
            for (size_t i = 0; i < n; i++) {
                int found = 0;
                for (size_t k = 0; k < n_ref && !found; k++) found = strcmp(lines[i], want[k]) == 0;
                CHECK(found);
            }
            n_got += n;
            free_lines(lines, n);
            engine_free(st2[r]);
            buf_free(&split[r].text);
        }
        CHECK_EQ_I64(n_got, n_ref);
        CHECK_EQ_I64(capped, single.capped);
        free_lines(want, n_ref);
        engine_free(ref);
        buf_free(&single.text);
    }
}

/* An empty partition that is caught up does not hold back the watermark;
 * one that is not caught up does. */
static void test_idle_partition(void)
{
    out o;
    engine *e = new_engine(&o, 10 * SEC, 0, 100);
    engine_set_caught_up(e, 1, 0); /* partition 1 has data still to come */
    visit a = mk(1, "a", 0, 0, 0), b = mk(2, "b", 100 * SEC, 0, 1);
    engine_apply(e, &a);
    engine_apply(e, &b);
    CHECK_EQ_I64(o.closed, 0); /* held back by partition 1 */
    engine_set_caught_up(e, 1, 1);
    CHECK_EQ_I64(o.closed, 1); /* partition 1 caught up: closes on partition 0 */
    engine_free(e);
    buf_free(&o.text);
}

static void test_corrupt_blobs_refused(void)
{
    out o;
    engine *e = new_engine(&o, 10 * SEC, 0, 100);
    visit a = mk(1, "abc", 0, 0, 0), b = mk(1, "def", 5 * SEC, 0, 9);
    engine_apply(e, &a);
    engine_apply(e, &b);
    store st = {0};
    buf_init(&st.meta);
    engine_foreach_dirty(e, store_put, &st);
    CHECK_EQ_I64(st.n, 1);
    const buf *blob = &st.blobs[0];
    for (size_t cut = 0; cut < blob->len; cut++) { /* every truncation */
        out o2;
        engine *r = new_engine(&o2, 10 * SEC, 0, 100);
        CHECK(engine_load_user(r, &(user_key){.id = 1}, blob->data, cut) != 0);
        engine_free(r);
        buf_free(&o2.text);
    }
    out o3;
    engine *r = new_engine(&o3, 10 * SEC, 0, 1); /* fewer max_pages than stored */
    CHECK(engine_load_user(r, &(user_key){.id = 1}, blob->data, blob->len) != 0);
    engine_free(r);
    buf_free(&o3.text);
    r = new_engine(&o3, 10 * SEC, 0, 100); /* a string user's checkpoint row in an int engine */
    CHECK(engine_load_user(r, &(user_key){.str = "u", .len = 1}, blob->data, blob->len) != 0);
    engine_free(r);
    buf_free(&o3.text);
    buf meta;
    buf_init(&meta);
    engine_save_meta(e, &meta);
    out o4;
    r = new_engine(&o4, 20 * SEC, 0, 100); /* another gap */
    CHECK_EQ_I64(engine_load_meta(r, meta.data, meta.len), -2);
    engine_free(r);
    buf_free(&o4.text);
    g_max_bytes = 4096;
    r = new_engine(&o4, 10 * SEC, 0, 100); /* another max_session_bytes */
    CHECK_EQ_I64(engine_load_meta(r, meta.data, meta.len), -2);
    engine_free(r);
    buf_free(&o4.text);
    g_max_bytes = 5; /* the stored session holds 6 bytes */
    r = new_engine(&o4, 10 * SEC, 0, 100);
    CHECK(engine_load_user(r, &(user_key){.id = 1}, blob->data, blob->len) != 0);
    engine_free(r);
    buf_free(&o4.text);
    g_max_bytes = 0;
    buf_free(&meta);
    buf_free(&st.blobs[0]);
    free(st.blobs);
    free(st.users);
    buf_free(&st.meta);
    engine_free(e);
    buf_free(&o.text);
}

/* ---- string users ---------------------------------------------------------- */

static int label_close(void *ctx, const closed_session *cs)
{
    buf *b = ctx;
    if (cs->user) buf_printf(b, "close user=%.*s", (int)cs->user_len, cs->user);
    else buf_printf(b, "close user=u%03" PRId64, cs->user_id);
    buf_printf(b, " t=%" PRId64 "..%" PRId64 " visits=%" PRIu64 " [", cs->first_event_us,
               cs->last_event_us, cs->visits);
    for (size_t i = 0; i < cs->n_pages; i++)
        buf_printf(b, "%s%.*s", i ? "," : "", (int)cs->pages[i].len, cs->pages[i].data);
    buf_append_str(b, "]\n");
    return 0;
}

typedef struct sstore { char **users; buf *blobs; size_t n, cap; } sstore;

static int sstore_put(void *ctx, const user_key *key, const void *blob, size_t len)
{
    sstore *s = ctx;
    CHECK(key->str != NULL);
    size_t i = 0;
    while (i < s->n && !(strlen(s->users[i]) == key->len && memcmp(s->users[i], key->str, key->len) == 0)) i++;
    if (!blob) {
        if (i < s->n) {
            free(s->users[i]);
            buf_free(&s->blobs[i]);
            s->users[i] = s->users[s->n - 1];
            s->blobs[i] = s->blobs[--s->n];
        }
        return 0;
    }
    if (i == s->n) {
        if (s->n == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 64;
            s->users = xrealloc(s->users, s->cap * sizeof *s->users);
            s->blobs = xrealloc(s->blobs, s->cap * sizeof *s->blobs);
        }
        s->users[i] = xstrndup(key->str, key->len);
        buf_init(&s->blobs[i]);
        s->n++;
    }
    buf_reset(&s->blobs[i]);
    buf_append(&s->blobs[i], blob, len);
    return 0;
}

static engine *labelled_engine(buf *b, int strings, int64_t g, int64_t l, uint32_t cap)
{
    engine_config cfg = {.gap_us = g, .lateness_us = l, .max_pages = cap, .track_dirty = 1,
                         .string_users = strings};
    engine_callbacks cb = {.ctx = b, .on_close = label_close};
    return engine_new(&cfg, &cb);
}

/* The same visits through an int engine and a string engine (user u spelled
 * "u007", so that byte order is int order): the same sessions, times, visit
 * counts and pages, closing in the same order, also when the string engine
 * is checkpointed and restored at random points; the invariants (I6: the
 * intern table holds exactly the users with a slot) after every step. */
static void test_string_users_like_ints(void)
{
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + rnd() % 300;
        int64_t g = (int64_t)(1 + rnd() % 20) * SEC, l = (int64_t)(rnd() % 15) * SEC;
        uint32_t cap = 1 + (uint32_t)(rnd() % 6);
        int users = 1 + (int)(rnd() % 12);
        buf bi, bs;
        buf_init(&bi);
        buf_init(&bs);
        engine *ei = labelled_engine(&bi, 0, g, l, cap), *es = labelled_engine(&bs, 1, g, l, cap);
        sstore st = {0};
        buf meta;
        buf_init(&meta);
        int64_t clock = 0;
        int broken = 0;
        for (size_t i = 0; i < n; i++) {
            clock += (int64_t)(rnd() % 8) * SEC;
            int64_t u = (int64_t)(rnd() % (uint64_t)users);
            char name[16];
            snprintf(name, sizeof name, "u%03d", (int)u);
            char page[8];
            snprintf(page, sizeof page, "p%d", (int)(rnd() % 50));
            visit v = mk(u, page, clock - (int64_t)(rnd() % 25) * SEC, 0, (int64_t)i * 10);
            engine_apply(ei, &v);
            v.user_id = 0;
            v.user = name;
            v.user_len = (uint32_t)strlen(name);
            engine_apply(es, &v);
            if (!broken) broken = engine_check_invariants(es);
            if (rnd() % 8 == 0) { /* checkpoint and restore the string engine */
                CHECK(engine_foreach_dirty(es, sstore_put, &st) == 0);
                engine_clear_dirty(es);
                if (!broken) broken = engine_check_invariants(es);
                buf_reset(&meta);
                engine_save_meta(es, &meta);
                engine_free(es);
                es = labelled_engine(&bs, 1, g, l, cap);
                CHECK(engine_load_meta(es, meta.data, meta.len) == 0);
                for (size_t k = 0; k < st.n; k++) {
                    user_key key = {.str = st.users[k], .len = (uint32_t)strlen(st.users[k])};
                    CHECK(engine_load_user(es, &key, st.blobs[k].data, st.blobs[k].len) == 0);
                    /* the same user twice is refused */
                    if (k == 0) CHECK(engine_load_user(es, &key, st.blobs[k].data, st.blobs[k].len) != 0);
                }
            }
        }
        CHECK_EQ_I64(broken, 0);
        engine_close_all(ei);
        engine_close_all(es);
        CHECK_EQ_I64(engine_check_invariants(es), 0);
        buf_append_byte(&bi, 0);
        buf_append_byte(&bs, 0);
        CHECK_STR((const char *)bs.data, (const char *)bi.data);
        engine_free(ei);
        engine_free(es);
        for (size_t k = 0; k < st.n; k++) {
            free(st.users[k]);
            buf_free(&st.blobs[k]);
        }
        free(st.users);
        free(st.blobs);
        buf_free(&meta);
        buf_free(&bi);
        buf_free(&bs);
    }
}

static int ignore_put(void *ctx, const user_key *key, const void *blob, size_t len)
{
    (void)ctx, (void)blob, (void)len;
    return key->str ? 0 : -1;
}

/* Interning is bounded by the users open at once, not by the users seen:
 * 200k distinct users, each one visit, one per second, gap 10 s: about 20
 * are open at any time. Ties at one closing instant close in byte order,
 * and user bytes are compared whole (a shared 8-byte prefix is no tie). */
static void test_string_users_bounded_and_ordered(void)
{
    buf b;
    buf_init(&b);
    engine *e = labelled_engine(&b, 1, 10 * SEC, 0, 10);
    for (int i = 0; i < 200000; i++) {
        char name[32];
        snprintf(name, sizeof name, "user-%d@example.com", i);
        visit v = mk(0, "p", (int64_t)i * SEC, 0, i);
        v.user = name;
        v.user_len = (uint32_t)strlen(name);
        engine_apply(e, &v);
        if (i % 1000 == 999) {
            CHECK(engine_foreach_dirty(e, ignore_put, NULL) == 0);
            engine_clear_dirty(e);
            buf_reset(&b);
        }
    }
    engine_stats st;
    engine_get_stats(e, &st);
    CHECK(st.sessions_closed > 199000);
    CHECK(st.user_ids < 2048); /* ids are reused: ~20 open + one commit's worth of closed */
    engine_free(e);

    buf_reset(&b);
    e = labelled_engine(&b, 1, 10 * SEC, 0, 10);
    static const char *const names[] = {"prefix-b2", "prefix-b10", "prefix-b1", "b", "prefix-a",
                                        "prefix-b", "\xc3\xa9t\xc3\xa9", "Z"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        visit v = mk(0, names[i], 5 * SEC, 0, (int64_t)i);
        v.user = names[i];
        v.user_len = (uint32_t)strlen(names[i]);
        engine_apply(e, &v);
    }
    engine_close_all(e);
    buf_append_byte(&b, 0);
    CHECK_STR((const char *)b.data,
              "close user=Z t=5000000..5000000 visits=1 [Z]\n"
              "close user=b t=5000000..5000000 visits=1 [b]\n"
              "close user=prefix-a t=5000000..5000000 visits=1 [prefix-a]\n"
              "close user=prefix-b t=5000000..5000000 visits=1 [prefix-b]\n"
              "close user=prefix-b1 t=5000000..5000000 visits=1 [prefix-b1]\n"
              "close user=prefix-b10 t=5000000..5000000 visits=1 [prefix-b10]\n"
              "close user=prefix-b2 t=5000000..5000000 visits=1 [prefix-b2]\n"
              "close user=\xc3\xa9t\xc3\xa9 t=5000000..5000000 visits=1 [\xc3\xa9t\xc3\xa9]\n");
    engine_free(e);
    buf_free(&b);
}

/* visit_count counts the visits over the page cap, and adds up on merges. */
static void test_visit_counts(void)
{
    buf b;
    buf_init(&b);
    engine *e = labelled_engine(&b, 0, 10 * SEC, 100 * SEC, 2);
    const int64_t times[] = {0, 1, 2, 20, 21, 11}; /* the last one merges [0..2] and [20..21] */
    for (size_t i = 0; i < 6; i++) {
        visit v = mk(7, "x", times[i] * SEC, 0, (int64_t)i);
        engine_apply(e, &v);
    }
    engine_close_all(e);
    buf_append_byte(&b, 0);
    CHECK_STR((const char *)b.data, "close user=u007 t=0..21000000 visits=6 [x,x]\n");
    engine_free(e);
    buf_free(&b);
}


/* ---- state larger than memory ---------------------------------------------- */

/* A cold store in memory: handle = index; a dropped blob is freed, and a get
 * of it (or of a handle never given) fails the test. fail_puts_after: put
 * fails from then on (0: never). */
typedef struct cstore {
    buf *blobs;
    int *live;
    size_t n, cap;
    unsigned long puts, gets, fail_puts_after, hints;
} cstore;

static void cstore_prefetch(void *ctx, uint64_t handle, size_t len)
{
    cstore *s = ctx;
    (void)handle, (void)len;
    s->hints++;
}

static int cstore_put(void *ctx, const user_key *user, const void *blob, size_t len, uint64_t *handle)
{
    cstore *s = ctx;
    (void)user;
    if (s->fail_puts_after && s->puts >= s->fail_puts_after) return 7;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->blobs = xrealloc(s->blobs, s->cap * sizeof *s->blobs);
        s->live = xrealloc(s->live, s->cap * sizeof *s->live);
    }
    buf_init(&s->blobs[s->n]);
    buf_append(&s->blobs[s->n], blob, len);
    s->live[s->n] = 1;
    *handle = s->n++;
    s->puts++;
    return 0;
}

static int cstore_get(void *ctx, uint64_t handle, size_t len, buf *dst)
{
    cstore *s = ctx;
    s->gets++;
    if (handle >= s->n || !s->live[handle] || s->blobs[handle].len != len) return -9;
    buf_append(dst, s->blobs[handle].data, len);
    return 0;
}

static void cstore_drop(void *ctx, uint64_t handle, size_t len)
{
    cstore *s = ctx;
    CHECK(handle < s->n && s->live[handle] && s->blobs[handle].len == len);
    if (handle < s->n) {
        s->live[handle] = 0;
        buf_free(&s->blobs[handle]);
    }
}

/* Moves every blob to a new handle (a compaction's renaming). */
static int cstore_move(void *ctx, uint64_t *handle, uint32_t len)
{
    uint64_t to;
    buf b;
    buf_init(&b);
    if (cstore_get(ctx, *handle, len, &b) || cstore_put(ctx, NULL, b.data, b.len, &to)) return -1;
    cstore_drop(ctx, *handle, len);
    buf_free(&b);
    *handle = to;
    return 0;
}

static void cstore_free(cstore *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->live[i]) buf_free(&s->blobs[i]);
    free(s->blobs);
    free(s->live);
}

/* The end of a test comparing an engine that evicts (e2) with one that
 * never does (e1): both close everything, emitting the same; then both go,
 * with e2's store. */
static void close_both(engine *e1, out *o1, engine *e2, out *o2)
{
    engine_close_all(e1);
    engine_close_all(e2);
    CHECK_STR(text(o2), text(o1));
}

static void free_both(engine *e1, out *o1, engine *e2, out *o2, cstore *cs)
{
    engine_free(e1);
    engine_free(e2);
    cstore_free(cs);
    buf_free(&o1->text);
    buf_free(&o2->text);
}


/* A snapshot as text, users sorted (slot order differs with evictions). */
static int snap_line(void *ctx, const user_key *user, const void *blob, size_t len)
{
    buf *b = ctx;
    buf_printf(b, "%020" PRId64 ":", user->id + INT64_MAX / 2);
    for (size_t i = 0; i < len; i++) buf_printf(b, "%02x", ((const unsigned char *)blob)[i]);
    buf_append_byte(b, '\n');
    return 0;
}

static char *snapshot_text(const engine *e)
{
    buf b;
    buf_init(&b);
    CHECK_EQ_I64(engine_foreach_user(e, snap_line, &b), 0);
    size_t n;
    buf_append_byte(&b, 0);
    char **l = close_lines((const char *)b.data, &n);
    qsort(l, n, sizeof *l, cmp_str);
    buf s;
    buf_init(&s);
    for (size_t i = 0; i < n; i++) buf_printf(&s, "%s\n", l[i]);
    buf_append_byte(&s, 0);
    free_lines(l, n);
    buf_free(&b);
    return (char *)s.data;
}

/* The change log's dirty users, in engine_foreach_dirty's order (a deleted
 * user's line has no blob), and the dirty set cleared as a commit does. */
static int dirty_line(void *ctx, const user_key *user, const void *blob, size_t len)
{
    buf *b = ctx;
    buf_printf(b, "%" PRId64 ":", user->id);
    if (!blob) buf_append_str(b, "deleted");
    for (size_t i = 0; blob && i < len; i++) buf_printf(b, "%02x", ((const unsigned char *)blob)[i]);
    buf_append_byte(b, '\n');
    return 0;
}

static char *dirty_text(engine *e)
{
    buf b;
    buf_init(&b);
    CHECK_EQ_I64(engine_foreach_dirty(e, dirty_line, &b), 0);
    engine_clear_dirty(e);
    buf_append_byte(&b, 0);
    return (char *)b.data;
}

/* Evicting users at random points (engine_evict to random targets, and a
 * tiny automatic budget) changes nothing the engine emits: the transcript of
 * closes and rejects, in order, every snapshot (engine_foreach_user,
 * cold users read back from the store) and the change log's dirty users at
 * random commits (engine_foreach_dirty) equal those of the same engine never
 * evicting; the invariants hold after every step (cold users included in
 * I3-I5). Inputs: 1-3 partitions with caught-up flips, disorder, late
 * visits, page and byte caps, merges. */
static void test_eviction_changes_nothing(void)
{
    char pages[64][16];
    for (int i = 0; i < 64; i++) snprintf(pages[i], sizeof pages[i], "p%d", i);
    uint64_t evicted = 0, loaded = 0, by_watermark = 0, appended = 0, folded = 0, born = 0;
    for (int trial = 0; trial < 300; trial++) {
        size_t n = 1 + rnd() % 500;
        int64_t g = (int64_t)(1 + rnd() % 20) * SEC, l = (int64_t)(rnd() % 15) * SEC;
        uint32_t cap = 1 + (uint32_t)(rnd() % 12);
        g_max_bytes = rnd() % 3 ? 0 : 2 + (uint32_t)(rnd() % 30);
        int users = 1 + (int)(rnd() % 40), parts = 1 + (int)(rnd() % 3);
        out o1, o2;
        engine *e1 = new_engine(&o1, g, l, cap);
        engine *e2 = new_engine(&o2, g, l, cap);
        cstore cs = {0};
        engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop,
                                 .prefetch = trial % 3 ? cstore_prefetch : NULL};
        /* budget 0 (manual evictions only) or a few KB: automatic ones too */
        engine_set_cold_store(e2, &ops, rnd() % 2 ? 0 : 16384 + rnd() % 65536);
        int broken = 0;
        int64_t clock[3] = {0, 0, 0};
        for (size_t i = 0; i < n && !broken; i++) {
            int32_t p = (int32_t)(rnd() % (uint64_t)parts);
            clock[p] += (int64_t)(rnd() % 8) * SEC;
            /* half the trials in ms too: cold users due within ms of one
             * another are loaded together (close_queue.c, due_soon) */
            int64_t ms = trial % 2 ? (int64_t)(rnd() % 50) * 1000 : 0;
            visit v = mk((int64_t)(rnd() % (uint64_t)users) - 3, pages[rnd() % 64],
                         clock[p] - (int64_t)(rnd() % 25) * SEC + ms, p, (int64_t)i * 100);
            CHECK_EQ_I64(engine_apply(e1, &v), 0);
            CHECK_EQ_I64(engine_apply(e2, &v), 0);
            if (rnd() % 16 == 0) {
                int32_t q = (int32_t)(rnd() % (uint64_t)parts);
                int up = (int)(rnd() % 2);
                engine_set_caught_up(e1, q, up);
                engine_set_caught_up(e2, q, up);
            }
            if (rnd() % 8 == 0) {
                uint64_t mem = engine_memory_bytes(e2);
                CHECK_EQ_I64(engine_evict(e2, rnd() % 3 ? 0 : mem / 2), 0);
            }
            if (rnd() % 50 == 0) CHECK_EQ_I64(engine_cold_rehandle(e2, cstore_move, &cs), 0);
            if (rnd() % 40 == 0) {
                char *a = snapshot_text(e1), *b = snapshot_text(e2);
                CHECK_STR(b, a);
                free(a);
                free(b);
            }
            if (rnd() % 30 == 0) { /* a commit: the same users changed, to the same blobs */
                char *a = dirty_text(e1), *b = dirty_text(e2);
                CHECK_STR(b, a);
                free(a);
                free(b);
            }
            broken = engine_check_invariants(e1) * 10 + engine_check_invariants(e2);
        }
        CHECK_EQ_I64(broken, 0);
        engine_stats st1, st2;
        engine_get_stats(e1, &st1);
        engine_get_stats(e2, &st2);
        CHECK_EQ_I64(st2.open_sessions, st1.open_sessions);
        CHECK_EQ_I64(st2.open_pages, st1.open_pages);
        CHECK_EQ_I64(st2.open_users, st1.open_users);
        uint64_t gets = cs.gets;
        engine_close_all(e1);
        engine_close_all(e2);
        if (cs.gets > gets) by_watermark++;
        CHECK_STR(text(&o2), text(&o1));
        engine_get_stats(e2, &st2);
        CHECK_EQ_I64(st2.cold_users, 0);
        CHECK_EQ_I64(engine_check_invariants(e2), 0);
        evicted += st2.users_evicted;
        loaded += st2.users_loaded;
        appended += st2.cold_appends;
        folded += st2.cold_folds;
        born += st2.cold_births;
        engine_free(e1);
        engine_free(e2);
        cstore_free(&cs);
        buf_free(&o1.text);
        buf_free(&o2.text);
    }
    g_max_bytes = 0;
    fprintf(stderr, "eviction trials: %" PRIu64 " evicted, %" PRIu64 " loaded, %" PRIu64 " trials loading for the watermark, %" PRIu64 " visits appended to cold users (%" PRIu64 " of them new users), %" PRIu64 " folds\n", evicted, loaded, by_watermark, appended, born, folded);
    /* the trials did evict, and load back both for visits and for closing */
    CHECK(evicted > 1000);
    CHECK(loaded == evicted + born);
    CHECK(by_watermark > 50);
    /* and visits were appended to cold users without loading them, some
     * folded into their blobs before the users were loaded */
    CHECK(appended > 1000);
    CHECK(folded > 100);
    CHECK(born > 100);
}

/* Visits at or before the end of a cold user's only session (out of order
 * within G of its end) join it without a read: in page order (a tie in
 * time goes by position), the session's start moving back; once the user
 * has a second session such a visit loads it. The closes and snapshots are
 * those of an engine that never evicts. */
static void test_cold_joins(void)
{
    out o1, o2;
    /* lateness 30 s: the visits out of order are not late */
    engine *e1 = new_engine(&o1, 10 * SEC, 30 * SEC, 8), *e2 = new_engine(&o2, 10 * SEC, 30 * SEC, 8);
    cstore cs = {0};
    engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop};
    engine_set_cold_store(e2, &ops, 0);
    const struct { int64_t t; const char *page; int evict_after; } in[] = {
        {10, "a", 1},                      /* cold */
        {7, "b", 0},  {10, "c", 0},        /* before its start, and a tie: joined */
        {12, "d", 0}, {11, "e", 0},        /* appended, then joined between */
        {30, "f", 0},                      /* a second session: no longer the only one */
        {25, "g", 0},                      /* loaded: it may join either */
    };
    unsigned long reads = 0;
    engine_stats st;
    for (size_t i = 0; i < sizeof in / sizeof *in; i++) {
        visit v = mk(1, in[i].page, in[i].t * SEC, 0, (int64_t)i);
        CHECK_EQ_I64(engine_apply(e1, &v), 0);
        unsigned long gets = cs.gets;
        CHECK_EQ_I64(engine_apply(e2, &v), 0);
        if (in[i].evict_after) CHECK_EQ_I64(engine_evict(e2, 0), 0);
        reads += cs.gets - gets;
        CHECK_EQ_I64(engine_check_invariants(e2), 0);
        char *a = snapshot_text(e1), *b = snapshot_text(e2);
        CHECK_STR(b, a);
        free(a);
        free(b);
        engine_get_stats(e2, &st);
        if (in[i].t == 30) {
            CHECK_EQ_I64(reads, 0);
            CHECK_EQ_I64(st.users_loaded, 0);
            CHECK_EQ_I64(st.cold_appends, 5);
        }
    }
    CHECK_EQ_I64(st.users_loaded, 1);
    CHECK_EQ_I64(reads, 1);
    close_both(e1, &o1, e2, &o2);
    CHECK(strstr(text(&o2), "user=1 [b,a,c,e,d]\n") != NULL);
    free_both(e1, &o1, e2, &o2, &cs);
}

/* Visits after a cold user's last page are kept beside its stub without
 * reading its blob; its close-queue entry, keyed on the session's end when
 * it was evicted, follows the session's growth without a load; the user is
 * read back once, when the watermark reaches its first session's end. The
 * closes and the snapshot are those of an engine that never evicts. */
static void test_cold_appends(void)
{
    out o1, o2;
    engine *e1 = new_engine(&o1, 10 * SEC, 0, 5), *e2 = new_engine(&o2, 10 * SEC, 0, 5);
    cstore cs = {0};
    engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop};
    engine_set_cold_store(e2, &ops, 0);
    const struct { int64_t user, t; int evict_after; } in[] = {
        {1, 0, 0}, {2, 1, 1}, /* both cold */
        {1, 5, 0}, {1, 9, 0}, /* appended to user 1's session, nothing read */
        {1, 15, 0},           /* appended; user 2's session closes (read back), user 1's entry re-keyed */
        {1, 40, 0},           /* a new session after it: the first one closes, user 1 read back */
    };
    engine_stats st;
    unsigned long reads = 0; /* the engine's, not engine_check_invariants' */
    for (size_t i = 0; i < sizeof in / sizeof *in; i++) {
        visit v = mk(in[i].user, "pg", in[i].t * SEC, 0, (int64_t)i);
        CHECK_EQ_I64(engine_apply(e1, &v), 0);
        unsigned long gets = cs.gets;
        CHECK_EQ_I64(engine_apply(e2, &v), 0);
        if (in[i].evict_after) CHECK_EQ_I64(engine_evict(e2, 0), 0);
        reads += cs.gets - gets;
        CHECK_EQ_I64(engine_check_invariants(e2), 0);
        engine_get_stats(e2, &st);
        if (in[i].t == 9) CHECK_EQ_I64(reads, 0);
        if (in[i].t == 15) {
            char *a = snapshot_text(e1), *b = snapshot_text(e2);
            CHECK_STR(b, a);
            free(a);
            free(b);
            CHECK_EQ_I64(st.users_loaded, 1); /* user 2, for its close */
            CHECK_EQ_I64(reads, 1);
        }
    }
    CHECK_EQ_I64(st.cold_appends, 4);
    CHECK_EQ_I64(st.users_loaded, 2);
    CHECK_EQ_I64(reads, 2);
    CHECK_STR(text(&o2), text(&o1));
    CHECK(strstr(text(&o2), "user=1 [pg,pg,pg,pg]\n") != NULL); /* its first session, 0..15 s */
    close_both(e1, &o1, e2, &o2);
    free_both(e1, &o1, e2, &o2, &cs);
}

/* The watermark loads the cold users whose first session ends within ~66 ms
 * of the one it reached with it, their reads hinted together (one system
 * call for the batch in the job's store); the closes are those of an engine
 * that never evicts. */
static void test_watermark_loads_batched(void)
{
    out o1, o2;
    engine *e1 = new_engine(&o1, 10 * SEC, 0, 5), *e2 = new_engine(&o2, 10 * SEC, 0, 5);
    cstore cs = {0};
    engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop,
                             .prefetch = cstore_prefetch};
    engine_set_cold_store(e2, &ops, 0);
    /* users 1-4 end 1 ms apart, user 5 100 ms after user 1 */
    const int64_t end_ms[] = {0, 1, 2, 3, 100};
    for (int u = 0; u < 5; u++) {
        visit v = mk(u + 1, "pg", end_ms[u] * 1000, 0, u);
        CHECK_EQ_I64(engine_apply(e1, &v), 0);
        CHECK_EQ_I64(engine_apply(e2, &v), 0);
    }
    CHECK_EQ_I64(engine_evict(e2, 0), 0);
    engine_stats st;
    engine_get_stats(e2, &st);
    CHECK_EQ_I64(st.cold_users, 5);
    /* the watermark passes user 1's end only: users 1-4 are read, together */
    visit v = mk(9, "pg", 10 * SEC + 500, 0, 9);
    CHECK_EQ_I64(engine_apply(e1, &v), 0);
    CHECK_EQ_I64(engine_apply(e2, &v), 0);
    CHECK_EQ_I64(cs.hints, 4);
    CHECK_EQ_I64(cs.gets, 4);
    CHECK_EQ_I64(o1.closed, 1);
    CHECK_STR(text(&o2), text(&o1));
    engine_get_stats(e2, &st);
    CHECK_EQ_I64(st.cold_users, 2); /* user 5, and user 9 born cold */
    CHECK_EQ_I64(engine_check_invariants(e2), 0);
    /* past user 5's end: the rest close in order, user 5 read alone (the
     * invariants' check read it too: counted from here) */
    unsigned long gets = cs.gets;
    v = mk(9, "pg", 10 * SEC + 200000, 0, 10);
    CHECK_EQ_I64(engine_apply(e1, &v), 0);
    CHECK_EQ_I64(engine_apply(e2, &v), 0);
    CHECK_EQ_I64(cs.gets - gets, 1);
    CHECK_EQ_I64(o1.closed, 5);
    CHECK_STR(text(&o2), text(&o1));
    CHECK_EQ_I64(engine_check_invariants(e2), 0);
    close_both(e1, &o1, e2, &o2);
    free_both(e1, &o1, e2, &o2, &cs);
}

/* A store that fails: the engine call reports the store's error, the user
 * stays in memory (no state lost), and the engine frees cleanly (ASan). */
static void test_eviction_store_failure(void)
{
    out o;
    engine *e = new_engine(&o, 10 * SEC, 0, 10);
    cstore cs = {.fail_puts_after = 3};
    engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop};
    engine_set_cold_store(e, &ops, 0);
    for (int u = 0; u < 10; u++) {
        visit v = mk(u, "x", SEC, 0, u);
        engine_apply(e, &v);
    }
    CHECK_EQ_I64(engine_evict(e, 0), 7);
    engine_stats st;
    engine_get_stats(e, &st);
    CHECK_EQ_I64(st.cold_users, 3);
    CHECK_EQ_I64(st.open_sessions, 10);
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    engine_close_all(e);
    CHECK_EQ_I64(o.closed, 10);
    engine_free(e);
    cstore_free(&cs);
    buf_free(&o.text);
}

/* Hot users give way to the user table's doubling (job.c's memory_check
 * under --memory-limit): after engine_evict_for_growth(e, k), k new users
 * fit without it, no session is lost, and the ones that stayed are the
 * ones applied to last. */
static void test_evict_for_growth(void)
{
    out o;
    engine *e = new_engine(&o, 10 * SEC, 0, 10);
    cstore cs = {0};
    engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop};
    engine_set_cold_store(e, &ops, 0);
    /* 700 users in a table of 1024 slots, which doubles past 716 */
    for (int u = 0; u < 700; u++) {
        visit v = mk(u, "x", SEC, 0, u);
        engine_apply(e, &v);
    }
    uint64_t before = engine_growth_bytes(e, 100);
    CHECK_EQ_I64(engine_evict_for_growth(e, 100), 0);
    engine_stats st;
    engine_get_stats(e, &st);
    CHECK(st.cold_users >= 84 && st.cold_users < 700);
    /* only the cold table's growth is left (1024 slots more, where it is,
     * for the 800 users there may be), not the user table's (2048 slots of
     * 24 bytes) */
    CHECK_EQ_I64(engine_growth_bytes(e, 100), 1024 * sizeof(void *));
    CHECK(engine_growth_bytes(e, 100) < before);
    /* a table with room asks for nothing */
    CHECK_EQ_I64(engine_evict_for_growth(e, 10), 0);
    engine_stats st2;
    engine_get_stats(e, &st2);
    CHECK_EQ_I64(st2.cold_users, st.cold_users);
    CHECK_EQ_I64(engine_check_invariants(e), 0);
    engine_close_all(e);
    CHECK_EQ_I64(o.closed, 700);
    engine_free(e);
    cstore_free(&cs);
    buf_free(&o.text);
}

/* String users evicted and loaded back: their interned ids stay while they
 * are cold (I6), and the sessions close as without eviction. */
static void test_eviction_string_users(void)
{
    for (int trial = 0; trial < 50; trial++) {
        buf b1, b2;
        buf_init(&b1);
        buf_init(&b2);
        int64_t g = (int64_t)(1 + rnd() % 10) * SEC;
        engine *e1 = labelled_engine(&b1, 1, g, 0, 5), *e2 = labelled_engine(&b2, 1, g, 0, 5);
        cstore cs = {0};
        engine_cold_store ops = {.ctx = &cs, .put = cstore_put, .get = cstore_get, .drop = cstore_drop};
        engine_set_cold_store(e2, &ops, 8192);
        int64_t clock = 0;
        int broken = 0;
        for (int i = 0; i < 300 && !broken; i++) {
            char name[16];
            snprintf(name, sizeof name, "user-%03d", (int)(rnd() % 60));
            clock += (int64_t)(rnd() % 3) * SEC;
            visit v = mk(0, "pg", clock, 0, i);
            v.user = name;
            v.user_len = (uint32_t)strlen(name);
            engine_apply(e1, &v);
            engine_apply(e2, &v);
            if (rnd() % 10 == 0) engine_evict(e2, 0);
            broken = engine_check_invariants(e1) * 10 + engine_check_invariants(e2);
        }
        CHECK_EQ_I64(broken, 0);
        engine_stats st;
        engine_get_stats(e2, &st);
        CHECK(st.users_evicted > 0);
        engine_close_all(e1);
        engine_close_all(e2);
        buf_append_byte(&b1, 0);
        buf_append_byte(&b2, 0);
        CHECK_STR((const char *)b2.data, (const char *)b1.data);
        engine_free(e1);
        engine_free(e2);
        cstore_free(&cs);
        buf_free(&b1);
        buf_free(&b2);
    }
}

/* ---- the last position (closed_session.last_*) ---------------------------- */

typedef struct lasts { int n; int32_t part[4]; int64_t off[4]; } lasts;

static int note_last(void *ctx, const closed_session *cs)
{
    lasts *l = ctx;
    if (l->n < 4) {
        l->part[l->n] = cs->last_partition;
        l->off[l->n] = cs->last_offset;
    }
    l->n++;
    return 0;
}

static engine *last_engine(lasts *l)
{
    memset(l, 0, sizeof *l);
    engine_config cfg = {.gap_us = 10 * SEC, .lateness_us = 1000 * SEC, .max_pages = 2,
                         .track_dirty = 1};
    return engine_new(&cfg, &(engine_callbacks){.ctx = l, .on_close = note_last});
}

/* A session's last position is the greatest (partition, offset) of all its
 * visits (merged and capped ones too), survives a checkpoint's blob, and is
 * unknown (-1) when restored from a blob written before it was kept. */
static void test_last_position(void)
{
    lasts l;
    engine *e = last_engine(&l);
    visit v[] = {mk(3, "a", 0, 0, 50), mk(3, "b", 5 * SEC, 1, 7), mk(3, "c", 20 * SEC, 0, 99),
                 mk(3, "d", 12 * SEC, 0, 3) /* bridges (a, b) and c; over the cap */};
    for (size_t i = 0; i < 4; i++) CHECK(engine_apply(e, &v[i]) == 0);
    store st = {0};
    buf_init(&st.meta);
    engine_foreach_dirty(e, store_put, &st);
    CHECK_EQ_I64(st.n, 1);
    engine_close_all(e);
    CHECK_EQ_I64(l.n, 1);
    CHECK_EQ_I64(l.part[0], 1);
    CHECK_EQ_I64(l.off[0], 7);
    engine_free(e);

    e = last_engine(&l); /* restored from the blob */
    CHECK(engine_load_user(e, &(user_key){.id = 3}, st.blobs[0].data, st.blobs[0].len) == 0);
    visit later = mk(3, "e", 25 * SEC, 1, 6); /* joins, below the last position */
    CHECK(engine_apply(e, &later) == 0);
    engine_close_all(e);
    CHECK_EQ_I64(l.n, 1);
    CHECK_EQ_I64(l.part[0], 1);
    CHECK_EQ_I64(l.off[0], 7);
    engine_free(e);

    /* the same blob as written before: no flag, no (u32 partition, i64
     * offset) after the visit count (count, then 44 bytes of the session) */
    buf old;
    buf_init(&old);
    const unsigned char *b = st.blobs[0].data;
    uint32_t n = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    CHECK(n & 0x40000000u);
    buf_put_u32le(&old, n & ~0x40000000u);
    buf_append(&old, b + 4, 44);
    buf_append(&old, b + 4 + 44 + 12, st.blobs[0].len - 4 - 44 - 12);
    e = last_engine(&l);
    CHECK(engine_load_user(e, &(user_key){.id = 3}, old.data, old.len) == 0);
    CHECK(engine_apply(e, &later) == 0);
    engine_close_all(e);
    CHECK_EQ_I64(l.n, 1);
    CHECK_EQ_I64(l.part[0], -1); /* unknown: the SQLite sink finds the row by its key */
    engine_free(e);
    buf_free(&old);
    for (size_t i = 0; i < st.n; i++) buf_free(&st.blobs[i]);
    free(st.blobs);
    free(st.users);
    buf_free(&st.meta);
}

int main(void)
{
    test_string_users_like_ints();
    test_string_users_bounded_and_ordered();
    test_visit_counts();
    test_walkthrough();
    test_boundaries();
    test_merge_and_order();
    test_page_cap_order_independent();
    test_random_vs_oracle_and_restore();
    test_session_bytes_order_independent();
    test_far_future();
    test_ties_close_in_user_order();
    test_queue_after_peak();
    test_large_bucket_redistributed();
    test_partition_interleavings();
    test_repartitioned_equals_single();
    test_idle_partition();
    test_corrupt_blobs_refused();
    test_eviction_changes_nothing();
    test_cold_appends();
    test_watermark_loads_batched();
    test_cold_joins();
    test_eviction_store_failure();
    test_evict_for_growth();
    test_eviction_string_users();
    test_last_position();
    return check_summary("test_engine");
}
