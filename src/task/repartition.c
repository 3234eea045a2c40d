/*
 * repartition.c - the repartition topic's records (repartition.h). The
 * decoder reads what another process wrote to a shared topic, so every
 * length and partition is checked against the record and n_src before use
 * (tests/fuzz/fuzz_repartition.c).
 */
#include "task/repartition.h"

#include <assert.h>
#include <string.h>
#include <xxhash.h>

#include "common/utf8.h"

/* Wrapping differences: deltas of arbitrary int64 values round-trip. */
static int64_t wrap_sub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
static int64_t wrap_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }

void repart_marker(buf *b, int kind, int32_t partition, int64_t offset, int64_t max_t)
{
    assert(kind == REPART_WM || kind == REPART_IDLE || kind == REPART_END);
    assert(partition >= 0 && offset >= 0);
    buf_reset(b);
    buf_append_byte(b, (unsigned char)kind);
    buf_append_byte(b, REPART_VERSION);
    buf_put_varint(b, (uint32_t)partition);
    buf_put_varint(b, (uint64_t)offset);
    buf_put_varint(b, zigzag_enc(max_t));
}

int32_t repart_partition(const visit *v, int32_t R)
{
    assert(R > 0);
    if (v->user) return (int32_t)(XXH3_64bits(v->user, v->user_len) % (uint64_t)R);
    uint64_t x = (uint64_t)v->user_id + 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (int32_t)(x % (uint64_t)R);
}

void repart_batch_add(repart_batch *q, const visit *v, int64_t max_t)
{
    assert(max_t >= v->event_time_us && v->pos.partition >= 0);
    assert(!v->user || (v->user_len >= 1 && v->user_len <= USER_MAX_BYTES));
    buf *b = &q->b;
    size_t bound = repart_batch_after(q, v);
    if (q->n == 0) {
        buf_reset(b);
        q->strings = v->user != NULL;
        buf_append_byte(b, REPART_BATCH);
        buf_append_byte(b, q->strings ? REPART_VERSION_STRINGS : REPART_VERSION);
        q->prev_off = q->prev_t = q->prev_ts = 0;
    }
    assert(q->strings == (v->user != NULL)); /* one user type a batch (a job has one) */
    buf_put_varint(b, (uint32_t)v->pos.partition);
    buf_put_varint(b, zigzag_enc(wrap_sub(v->pos.offset, q->prev_off)));
    buf_put_varint(b, (uint64_t)max_t - (uint64_t)v->event_time_us);
    buf_put_varint(b, zigzag_enc(wrap_sub(v->event_time_us, q->prev_t)));
    buf_put_varint(b, zigzag_enc(wrap_sub(v->pos.append_ts_ms, q->prev_ts)));
    if (v->user) {
        buf_put_varint(b, v->user_len);
        buf_append(b, v->user, v->user_len);
    } else {
        buf_put_varint(b, zigzag_enc(v->user_id));
    }
    buf_put_varint(b, v->page_len);
    buf_append(b, v->page, v->page_len);
    assert(b->len <= bound);
    (void)bound;
    q->prev_off = v->pos.offset;
    q->prev_t = v->event_time_us;
    q->prev_ts = v->pos.append_ts_ms;
    q->n++;
}

int repart_decode(const void *data, size_t len, int32_t n_src, repart_fn fn, void *ctx)
{
    reader rd;
    reader_init(&rd, data, len);
    const unsigned char *hdr;
    if (reader_bytes(&rd, &hdr, 2)) return -1;
    int kind = hdr[0];
    /* markers are version 2 alone; batches 2 (int users) or 3 (strings) */
    int strings = kind == REPART_BATCH && hdr[1] == REPART_VERSION_STRINGS;
    if (hdr[1] != REPART_VERSION && !strings) return -1;
    uint64_t p = 0, x = 0, y = 0;
    if (kind == REPART_WM || kind == REPART_IDLE || kind == REPART_END) {
        reader_varint(&rd, &p);
        reader_varint(&rd, &x);
        reader_varint(&rd, &y);
        if (rd.bad || reader_left(&rd) || p >= (uint64_t)n_src || x > INT64_MAX) return -1;
        visit v = {.pos = {.partition = (int32_t)p, .offset = (int64_t)x}};
        return fn(ctx, kind, &v, zigzag_dec(y)) ? 1 : 0;
    }
    if (kind != REPART_BATCH) return -1;
    int64_t prev_off = 0, prev_t = 0, prev_ts = 0;
    do {
        uint64_t doff = 0, lag = 0, dt = 0, dts = 0, user = 0, plen = 0;
        reader_varint(&rd, &p);
        reader_varint(&rd, &doff);
        reader_varint(&rd, &lag);
        reader_varint(&rd, &dt);
        reader_varint(&rd, &dts);
        reader_varint(&rd, &user);
        /* a string user: what the parser accepts (visit.h), so that stage 2
         * and the sinks never see one a single instance would refuse */
        const unsigned char *ustr = NULL;
        if (strings && (user < 1 || user > USER_MAX_BYTES || reader_bytes(&rd, &ustr, user) ||
                        memchr(ustr, 0, user) || !utf8_valid((const char *)ustr, user)))
            return -1;
        reader_varint(&rd, &plen);
        const unsigned char *page;
        if (rd.bad || p >= (uint64_t)n_src || plen > UINT32_MAX ||
            reader_bytes(&rd, &page, (size_t)plen))
            return -1;
        visit v = {.user_id = strings ? 0 : zigzag_dec(user),
                   .user = (const char *)ustr,
                   .user_len = strings ? (uint32_t)user : 0,
                   .event_time_us = wrap_add(prev_t, zigzag_dec(dt)),
                   .page = (const char *)page,
                   .page_len = (uint32_t)plen,
                   .pos = {.append_ts_ms = wrap_add(prev_ts, zigzag_dec(dts)),
                           .partition = (int32_t)p,
                           .offset = wrap_add(prev_off, zigzag_dec(doff))}};
        int64_t max_t = wrap_add(v.event_time_us, (int64_t)lag);
        /* what the writer never produces: a negative offset, a lag that wraps */
        if (v.pos.offset < 0 || max_t < v.event_time_us) return -1;
        prev_off = v.pos.offset;
        prev_t = v.event_time_us;
        prev_ts = v.pos.append_ts_ms;
        if (fn(ctx, kind, &v, max_t)) return 1;
    } while (reader_left(&rd) > 0);
    return 0;
}
