/*
 * test_coldstore.c - the scratch file of --memory-limit (src/job/coldstore.h):
 * every record comes back byte for byte, whether it is still in the write
 * buffer, read when asked, or read ahead after a hint (coldstore_prefetch),
 * hinted once, twice or more often than there are reads in flight; and after
 * a compaction, whose new file puts other records at the offsets of hints
 * given before it (a read ahead of the old file must not answer for them).
 */
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "job/coldstore.h"

#define N 3000

static uint64_t handle[N];
static size_t len_of[N];
static int live[N];

/* Record i's bytes: its length and content follow from i (and the round, so
 * that records of equal length differ). */
static void fill(buf *b, size_t i, size_t len)
{
    buf_reset(b);
    for (size_t k = 0; k < len; k++) buf_append_byte(b, (unsigned char)(i * 131 + k * 7 + len));
}

static size_t below(size_t n) { return (size_t)(rnd() % n); }

static int same(coldstore *cs, size_t i)
{
    buf want, got;
    buf_init(&want);
    buf_init(&got);
    fill(&want, i, len_of[i]);
    int rc = coldstore_get(cs, handle[i], len_of[i], &got);
    int ok = rc == 0 && got.len == want.len && memcmp(got.data, want.data, want.len) == 0;
    buf_free(&want);
    buf_free(&got);
    return ok;
}

static void test_reads(size_t fixed_len)
{
    char err[256];
    coldstore *cs = coldstore_open("/tmp", err, sizeof err);
    CHECK(cs != NULL);
    if (!cs) return;
    buf b;
    buf_init(&b);
    /* ~4.5 MiB of records (fixed_len 1500): most of them flushed out of the
     * 1 MiB write buffer, the last ones still in it */
    for (size_t i = 0; i < N; i++) {
        len_of[i] = fixed_len ? fixed_len : 1 + below(3000);
        fill(&b, i, len_of[i]);
        CHECK_EQ_I64(coldstore_put(cs, b.data, b.len, &handle[i]), 0);
        live[i] = 1;
    }
    /* Hints in bursts larger than the reads in flight, some twice, some
     * never taken, then the gets in another order, some never hinted. */
    size_t bad = 0;
    for (size_t round = 0; round < 400; round++) {
        size_t burst = 1 + below(60);
        size_t pick[64];
        for (size_t k = 0; k < burst; k++) {
            pick[k] = below(N);
            if (live[pick[k]]) coldstore_prefetch(cs, handle[pick[k]], len_of[pick[k]]);
            if (below(4) == 0 && live[pick[k]]) coldstore_prefetch(cs, handle[pick[k]], len_of[pick[k]]);
        }
        for (size_t k = burst; k-- > 0;) {
            size_t i = below(3) == 0 ? below(N) : pick[k];
            if (!live[i] || below(5) == 0) continue; /* a hint not followed */
            if (!same(cs, i)) bad++;
            if (below(2) == 0) { /* taken back: dead space */
                coldstore_drop(cs, handle[i], len_of[i]);
                live[i] = 0;
            }
        }
    }
    CHECK_EQ_I64(bad, 0);
    coldstore_stats st;
    coldstore_get_stats(cs, &st);
    /* where the kernel offers io_uring, hinted reads are read ahead */
    struct io_uring probe;
    if (io_uring_queue_init(4, &probe, 0) == 0) {
        io_uring_queue_exit(&probe);
        CHECK(st.read_ahead > 100);
    } else {
        fprintf(stderr, "test_coldstore: no io_uring here: every read was a preadv\n");
    }
    /* Hints of the old file never taken (their records dropped), then a
     * compaction: with records of one length the new file has records at
     * the old offsets, other ones. And a file opened after it takes the
     * old file's descriptor, with records of that length at those offsets,
     * so that a read ahead of the old file, were it kept, would pass its
     * checksum and return another record. */
    for (size_t i = 0; i < N; i += 7)
        if (live[i]) {
            coldstore_prefetch(cs, handle[i], len_of[i]);
            coldstore_drop(cs, handle[i], len_of[i]);
            live[i] = 0;
        }
    CHECK_EQ_I64(coldstore_compact_begin(cs), 0);
    for (size_t i = 0; i < N; i++) {
        if (!live[i]) continue;
        CHECK_EQ_I64(coldstore_move(cs, &handle[i], (uint32_t)len_of[i]), 0);
    }
    CHECK_EQ_I64(coldstore_compact_end(cs, 1), 0);
    coldstore *other = coldstore_open("/tmp", err, sizeof err);
    CHECK(other != NULL);
    for (size_t i = 0; other && i < N; i++) {
        uint64_t h;
        fill(&b, i + N, len_of[i]);
        CHECK_EQ_I64(coldstore_put(other, b.data, b.len, &h), 0);
    }
    bad = 0;
    for (size_t i = 0; i < N; i += 3)
        if (live[i]) coldstore_prefetch(cs, handle[i], len_of[i]);
    for (size_t i = 0; i < N; i++)
        if (live[i] && !same(cs, i)) bad++;
    CHECK_EQ_I64(bad, 0);
    coldstore_get_stats(cs, &st);
    CHECK_EQ_I64(st.compactions, 1);
    buf_free(&b);
    coldstore_close(other);
    coldstore_close(cs);
}

int main(void)
{
    test_reads(0);
    test_reads(1500);
    return check_summary("test_coldstore");
}
