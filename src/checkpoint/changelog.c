/*
 * changelog.c - frames and snapshots of the engine's state (formats and the
 * argument for replay in changelog.h and docs/checkpoint.md).
 */
#include "checkpoint/changelog.h"

#include <assert.h>
#include <string.h>
#include <xxhash.h>

#define FRAME_MAGIC 0x46435a53u    /* "SZCF" */
#define SNAPSHOT_MAGIC 0x4e535a53u /* "SZSN" */
/* 3: a user's blob may carry its sessions' last positions (engine/snapshot.c,
 * BLOB_WITH_LAST), which version 2's readers would take for damage; 2 is
 * still read. Format 1 was the SQLite checkpoint. */
#define SNAPSHOT_VERSION 3u
#define SNAPSHOT_OLDEST 2u
#define FRAME_SEED 0x6672616d65ull /* different seeds: a frame never verifies as a chunk */
#define CHUNK_SEED 0x6368756e6bull
#define CHUNK_TARGET (1u << 20)
#define MAX_KEY 255

/* EV_VISIT_STRING: a visit of a string user, whose bytes (varint length,
 * then the bytes) stand where an int user's zigzag varint is. */
enum { EV_VISIT = 1, EV_CLOSE_ALL = 2, EV_ADVANCE = 3, EV_VISIT_STRING = 4 };
/* In a snapshot's version word: its users are strings, each (u32 length,
 * bytes) where an int user's i64 is. */
#define SNAPSHOT_STRING_USERS 0x10000u

/* Wrapping differences: deltas of arbitrary int64 values round-trip. */
static inline int64_t wrap_sub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
static inline int64_t wrap_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }

/* ---- frames --------------------------------------------------------------- */

/* The events are written after room for the frame's header and event count,
 * so that a frame can be sealed where it was built (changelog_seal_in_place)
 * instead of copied. */
#define EVENTS_AT (CHANGELOG_FRAME_HEADER + 4)

static void events_start(changelog_frame *f)
{
    static const unsigned char room[EVENTS_AT];
    buf_reset(&f->events);
    buf_append(&f->events, room, sizeof room);
}

void changelog_frame_init(changelog_frame *f)
{
    memset(f, 0, sizeof *f);
    buf_init(&f->events);
    buf_init(&f->meta);
    events_start(f);
}

void changelog_frame_free(changelog_frame *f)
{
    buf_free(&f->events);
    buf_free(&f->meta);
}

void changelog_frame_reset(changelog_frame *f)
{
    events_start(f);
    buf_reset(&f->meta);
    f->n_events = f->n_meta = 0;
    f->prev_t = f->prev_off = f->prev_ts = 0;
}

/* Once per accepted visit, on the job's thread: one reservation for the
 * whole event (a buf_put_varint per field reserved six times). */
void changelog_add_visit(changelog_frame *f, const visit *v)
{
    buf *b = &f->events;
    buf_reserve(b, 1 + 6 * 10 + v->page_len + v->user_len); /* 6 varints at most */
    unsigned char *p = b->data + b->len;
    if (v->user) {
        *p++ = EV_VISIT_STRING;
        p = put_varint_at(p, v->user_len);
        memcpy(p, v->user, v->user_len);
        p += v->user_len;
    } else {
        *p++ = EV_VISIT;
        p = put_varint_at(p, zigzag_enc(v->user_id));
    }
    p = put_varint_at(p, zigzag_enc(wrap_sub(v->event_time_us, f->prev_t)));
    p = put_varint_at(p, (uint32_t)v->pos.partition);
    p = put_varint_at(p, zigzag_enc(wrap_sub(v->pos.offset, f->prev_off)));
    p = put_varint_at(p, zigzag_enc(wrap_sub(v->pos.append_ts_ms, f->prev_ts)));
    p = put_varint_at(p, v->page_len);
    memcpy(p, v->page, v->page_len);
    p += v->page_len;
    b->len = (size_t)(p - b->data);
    f->prev_t = v->event_time_us;
    f->prev_off = v->pos.offset;
    f->prev_ts = v->pos.append_ts_ms;
    f->n_events++;
}

void changelog_add_close_all(changelog_frame *f)
{
    buf_append_byte(&f->events, EV_CLOSE_ALL);
    f->n_events++;
}

void changelog_add_advance(changelog_frame *f, int32_t partition, int64_t max_t)
{
    buf_append_byte(&f->events, EV_ADVANCE);
    buf_put_varint(&f->events, (uint32_t)partition);
    buf_put_varint(&f->events, zigzag_enc(max_t));
    f->n_events++;
}

static void put_meta_entry(buf *b, const char *key, const void *val, size_t len)
{
    size_t kl = strlen(key);
    assert(kl <= MAX_KEY && len <= UINT32_MAX);
    unsigned char k[2] = {(unsigned char)kl, 0};
    buf_append(b, k, 2);
    buf_append(b, key, kl);
    buf_put_u32le(b, (uint32_t)len);
    buf_append(b, val, len);
}

void changelog_add_meta(changelog_frame *f, const char *key, const void *val, size_t len)
{
    put_meta_entry(&f->meta, key, val, len);
    f->n_meta++;
}

/* Completes the frame whose header room starts at b->data + start and
 * whose events follow it up to b->len. */
static void seal_at(buf *b, size_t start, const changelog_frame *f, uint64_t seq, const engine *e)
{
    assert(b->len >= start + EVENTS_AT);
    buf_put_u32le(b, f->n_meta);
    buf_append(b, f->meta.data, f->meta.len);
    size_t at = b->len;
    buf_put_u32le(b, 0);
    engine_save_meta(e, b);
    uint32_t em = (uint32_t)(b->len - at - 4);
    for (int i = 0; i < 4; i++) b->data[at + i] = (unsigned char)(em >> (8 * i));
    size_t body = b->len - start - CHANGELOG_FRAME_HEADER;
    assert(body <= UINT32_MAX);
    unsigned char *h = b->data + start;
    for (int i = 0; i < 4; i++) h[i] = (unsigned char)(FRAME_MAGIC >> (8 * i));
    for (int i = 0; i < 4; i++) h[4 + i] = (unsigned char)(body >> (8 * i));
    for (int i = 0; i < 8; i++) h[16 + i] = (unsigned char)(seq >> (8 * i));
    for (int i = 0; i < 4; i++) h[24 + i] = (unsigned char)(f->n_events >> (8 * i));
    /* the checksum covers seq and body: a frame moved to another place in
     * the sequence does not verify */
    uint64_t sum = XXH3_64bits_withSeed(h + 16, 8 + body, FRAME_SEED);
    for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)(sum >> (8 * i));
}

void changelog_seal(const changelog_frame *f, uint64_t seq, const engine *e, buf *out)
{
    size_t start = out->len;
    buf_append(out, f->events.data, f->events.len);
    seal_at(out, start, f, seq, e);
}

void changelog_seal_in_place(changelog_frame *f, uint64_t seq, const engine *e)
{
    seal_at(&f->events, 0, f, seq, e);
}

static int skip_meta_entry(reader *r)
{
    const unsigned char *kl, *skip;
    uint32_t vl = 0;
    if (reader_bytes(r, &kl, 2)) return -1;
    size_t klen = (size_t)kl[0] | (size_t)kl[1] << 8;
    return reader_bytes(r, &skip, klen) || reader_u32le(r, &vl) || reader_bytes(r, &skip, vl) ? -1
                                                                                                : 0;
}

int changelog_parse(const void *data, size_t len, changelog_view *out)
{
    const unsigned char *h = data;
    if (len < CHANGELOG_FRAME_HEADER) return 0;
    if (load_u32le(h) != FRAME_MAGIC) return -1;
    size_t body = load_u32le(h + 4);
    if (len - CHANGELOG_FRAME_HEADER < body) return 0;
    if (XXH3_64bits_withSeed(h + 16, 8 + body, FRAME_SEED) != load_u64le(h + 8)) return -1;
    memset(out, 0, sizeof *out);
    out->seq = load_u64le(h + 16);
    out->frame_len = CHANGELOG_FRAME_HEADER + body;
    reader r;
    reader_init(&r, h + CHANGELOG_FRAME_HEADER, body);
    reader_u32le(&r, &out->n_events);
    out->events = r.p;
    /* events are skipped over here, decoded by the replay */
    for (uint32_t i = 0; i < out->n_events && !r.bad; i++) {
        const unsigned char *kind;
        if (reader_bytes(&r, &kind, 1)) break;
        if (*kind == EV_CLOSE_ALL) continue;
        uint64_t x = 0;
        if (*kind == EV_ADVANCE) {
            reader_varint(&r, &x);
            reader_varint(&r, &x);
            continue;
        }
        if (*kind == EV_VISIT_STRING) {
            const unsigned char *user;
            reader_varint(&r, &x);
            if (r.bad || x > reader_left(&r)) return -1;
            reader_bytes(&r, &user, (size_t)x);
        } else if (*kind == EV_VISIT) {
            reader_varint(&r, &x);
        } else {
            return -1;
        }
        for (int k = 0; k < 5; k++) reader_varint(&r, &x);
        const unsigned char *page;
        if (r.bad || x > reader_left(&r)) return -1;
        reader_bytes(&r, &page, (size_t)x);
    }
    out->events_len = (size_t)(r.p - out->events);
    reader_u32le(&r, &out->n_meta);
    out->meta = r.p;
    for (uint32_t i = 0; i < out->n_meta && !r.bad; i++) {
        if (skip_meta_entry(&r)) return -1;
    }
    out->meta_len = (size_t)(r.p - out->meta);
    uint32_t em = 0;
    reader_u32le(&r, &em);
    if (r.bad || em != reader_left(&r)) return -1;
    out->engine_meta = r.p;
    out->engine_meta_len = em;
    return 1;
}

static int foreach_meta(const unsigned char *p, size_t len, uint32_t n, changelog_meta_fn fn,
                        void *ctx)
{
    reader r;
    reader_init(&r, p, len);
    for (uint32_t i = 0; i < n; i++) {
        const unsigned char *kl, *key, *val;
        uint32_t vl = 0;
        size_t klen;
        if (reader_bytes(&r, &kl, 2)) return -1;
        klen = (size_t)kl[0] | (size_t)kl[1] << 8;
        if (reader_bytes(&r, &key, klen) || reader_u32le(&r, &vl) || reader_bytes(&r, &val, vl))
            return -1;
        if (fn && fn(ctx, (const char *)key, klen, val, vl)) return -1;
    }
    return reader_left(&r) == 0 ? 0 : -1;
}

int changelog_foreach_meta(const changelog_view *v, changelog_meta_fn fn, void *ctx)
{
    return foreach_meta(v->meta, v->meta_len, v->n_meta, fn, ctx);
}

/* Decodes the next event: 1 a visit in *out, 2 "close all", 3 an advance
 * (partition and max_t in out->pos.partition and out->event_time_us), -1
 * damaged. */
static int next_event(reader *r, int64_t prev[3], visit *out)
{
    const unsigned char *kind;
    if (reader_bytes(r, &kind, 1)) return -1;
    if (*kind == EV_CLOSE_ALL) return 2;
    if (*kind == EV_ADVANCE) {
        uint64_t part = 0, t = 0;
        reader_varint(r, &part);
        reader_varint(r, &t);
        if (r->bad || part > INT32_MAX) return -1;
        *out = (visit){.event_time_us = zigzag_dec(t), .pos = {.partition = (int32_t)part}};
        return 3;
    }
    if (*kind != EV_VISIT && *kind != EV_VISIT_STRING) return -1;
    uint64_t user = 0, dt = 0, part = 0, doff = 0, dts = 0, plen = 0;
    const unsigned char *page, *name = NULL;
    reader_varint(r, &user);
    if (*kind == EV_VISIT_STRING) {
        /* the length, then the bytes; checked as the parser checks them */
        if (r->bad || user == 0 || user > USER_MAX_BYTES || reader_bytes(r, &name, user) ||
            memchr(name, 0, user))
            return -1;
    }
    reader_varint(r, &dt);
    reader_varint(r, &part);
    reader_varint(r, &doff);
    reader_varint(r, &dts);
    reader_varint(r, &plen);
    if (r->bad || part > INT32_MAX || plen > UINT32_MAX || reader_bytes(r, &page, plen)) return -1;
    *out = (visit){.user_id = name ? 0 : zigzag_dec(user),
                   .user = (const char *)name,
                   .user_len = name ? (uint32_t)user : 0,
                   .event_time_us = wrap_add(prev[0], zigzag_dec(dt)),
                   .page = (const char *)page,
                   .page_len = (uint32_t)plen,
                   .pos = {.append_ts_ms = wrap_add(prev[2], zigzag_dec(dts)),
                           .partition = (int32_t)part,
                           .offset = wrap_add(prev[1], zigzag_dec(doff))}};
    prev[0] = out->event_time_us;
    prev[1] = out->pos.offset;
    prev[2] = out->pos.append_ts_ms;
    return 1;
}

/* Visits are decoded this far ahead of the one applied, and the memory they
 * will touch prefetched in the engine's stages, as the job does (PIPELINE
 * in stream_task.c): a replay is as bound by memory latency as a run (and,
 * under a memory limit, its cold users' blobs are read ahead at the last
 * stage). */
#define AHEAD 16

/* During a replay the only output looked at: a logged visit refused as late
 * means the log does not match the state it is replayed into. */
static int count_late(void *ctx, const visit *v, reject_reason why)
{
    (void)v;
    if (why == REJECT_LATE) ++*(uint64_t *)ctx;
    return 0;
}

int changelog_replay(engine *e, const changelog_view *v)
{
    uint64_t late = 0;
    engine_callbacks quiet = {.ctx = &late, .on_reject = count_late};
    engine_callbacks saved = engine_swap_callbacks(e, &quiet);
    engine_replay_begin(e);
    reader r;
    reader_init(&r, v->events, v->events_len);
    int64_t prev[3] = {0, 0, 0};
    visit ring[AHEAD];
    int kinds[AHEAD];
    size_t head = 0, len = 0;
    uint32_t decoded = 0;
    int rc = 0;
    while (!rc && (decoded < v->n_events || len > 0)) {
        if (decoded < v->n_events && len < AHEAD) {
            size_t at = (head + len) % AHEAD;
            kinds[at] = next_event(&r, prev, &ring[at]);
            if (kinds[at] < 0) {
                rc = -1;
                break;
            }
            decoded++;
            len++;
            for (size_t s = 0; s < ENGINE_PREFETCH_STAGES; s++) {
                size_t back = s * AHEAD / ENGINE_PREFETCH_STAGES;
                if (len <= back) break;
                size_t k = (head + len - 1 - back) % AHEAD;
                if (kinds[k] == 1 && !ring[k].user) engine_prefetch(e, ring[k].user_id, (int)s);
            }
            if (len < AHEAD && decoded < v->n_events) continue;
        }
        /* the oldest: the ring is full, or everything is decoded. With its
         * outputs quiet, the engine fails only for its cold store
         * (engine_set_cold_store): the replay stops there. */
        int failed;
        if (kinds[head] == 2) failed = engine_close_all(e);
        else if (kinds[head] == 3)
            failed = engine_advance_partition(e, ring[head].pos.partition, ring[head].event_time_us);
        else failed = engine_apply(e, &ring[head]);
        if (failed) rc = -1;
        head = (head + 1) % AHEAD;
        len--;
    }
    /* every logged visit was accepted once: accepted again, or the log lies */
    if (!rc && (late != 0 || reader_left(&r) != 0)) rc = -1;
    /* also after a failure: the watermark is not left held */
    int end = engine_replay_end(e, rc ? NULL : v->engine_meta, rc ? 0 : v->engine_meta_len);
    if (!rc) rc = end;
    engine_swap_callbacks(e, &saved);
    return rc;
}

/* ---- snapshots -------------------------------------------------------------- */

typedef struct snap_writer {
    buf chunk; /* header space, then payload */
    changelog_write_fn write;
    void *ctx;
    int rc;
} snap_writer;

static void chunk_start(snap_writer *w)
{
    buf_reset(&w->chunk);
    unsigned char zero[12] = {0};
    buf_append(&w->chunk, zero, sizeof zero);
}

static int chunk_flush(snap_writer *w)
{
    size_t payload = w->chunk.len - 12;
    unsigned char *h = w->chunk.data;
    uint64_t sum = XXH3_64bits_withSeed(h + 12, payload, CHUNK_SEED);
    for (int i = 0; i < 4; i++) h[i] = (unsigned char)(payload >> (8 * i));
    for (int i = 0; i < 8; i++) h[4 + i] = (unsigned char)(sum >> (8 * i));
    if (!w->rc) w->rc = w->write(w->ctx, w->chunk.data, w->chunk.len);
    chunk_start(w);
    return w->rc;
}

static int snap_user(void *ctx, const user_key *user, const void *blob, size_t len)
{
    snap_writer *w = ctx;
    if (user->str) {
        buf_put_u32le(&w->chunk, user->len);
        buf_append(&w->chunk, user->str, user->len);
    } else {
        buf_put_i64le(&w->chunk, user->id);
    }
    buf_put_u32le(&w->chunk, (uint32_t)len);
    buf_append(&w->chunk, blob, len);
    return w->chunk.len >= CHUNK_TARGET ? chunk_flush(w) : 0;
}

int changelog_snapshot(const engine *e, uint64_t seq, const buf *meta, uint32_t n_meta,
                       changelog_write_fn write, void *ctx)
{
    snap_writer w = {.write = write, .ctx = ctx};
    buf_init(&w.chunk);
    buf_put_u32le(&w.chunk, SNAPSHOT_MAGIC);
    buf_put_u32le(&w.chunk, SNAPSHOT_VERSION | (engine_string_users(e) ? SNAPSHOT_STRING_USERS : 0));
    buf_put_u64le(&w.chunk, seq);
    w.rc = write(ctx, w.chunk.data, w.chunk.len);
    chunk_start(&w);
    buf_put_u32le(&w.chunk, n_meta);
    buf_append(&w.chunk, meta->data, meta->len);
    size_t at = w.chunk.len;
    buf_put_u32le(&w.chunk, 0);
    engine_save_meta(e, &w.chunk);
    uint32_t em = (uint32_t)(w.chunk.len - at - 4);
    for (int i = 0; i < 4; i++) w.chunk.data[at + i] = (unsigned char)(em >> (8 * i));
    chunk_flush(&w);
    if (!w.rc) {
        /* a cold user the engine could not read back must not go missing */
        int rc = engine_foreach_user(e, snap_user, &w);
        if (rc && !w.rc) w.rc = rc;
    }
    if (!w.rc && w.chunk.len > 12) chunk_flush(&w);
    if (!w.rc) chunk_flush(&w); /* the empty chunk: the end */
    buf_free(&w.chunk);
    return w.rc;
}

/* The next chunk's payload: 1, 0 at the end mark, -1 if damaged. */
static int next_chunk(reader *r, reader *payload)
{
    uint32_t len = 0;
    uint64_t sum = 0;
    const unsigned char *p;
    if (reader_u32le(r, &len) || reader_u64le(r, &sum) || reader_bytes(r, &p, len)) return -1;
    if (XXH3_64bits_withSeed(p, len, CHUNK_SEED) != sum) return -1;
    reader_init(payload, p, len);
    return len > 0;
}

/* The header and first chunk: meta blobs to fn, the engine meta in *em;
 * r is left at the first chunk of users. */
static int snapshot_head(reader *r, const void *data, size_t len, uint64_t *seq,
                         changelog_meta_fn meta_fn, void *ctx, reader *em, int *strings)
{
    reader c;
    reader_init(r, data, len);
    uint32_t magic = 0, version = 0, n_meta = 0, em_len = 0;
    reader_u32le(r, &magic);
    reader_u32le(r, &version);
    reader_u64le(r, seq);
    if (r->bad || magic != SNAPSHOT_MAGIC) return -1;
    *strings = (version & SNAPSHOT_STRING_USERS) != 0;
    version &= ~SNAPSHOT_STRING_USERS;
    if (version < SNAPSHOT_OLDEST || version > SNAPSHOT_VERSION) return version > SNAPSHOT_VERSION ? -3 : -1;
    if (next_chunk(r, &c) != 1) return -1;
    reader_u32le(&c, &n_meta);
    /* the meta entries run up to the engine meta, whose length comes last */
    const unsigned char *meta = c.p;
    for (uint32_t i = 0; i < n_meta; i++)
        if (skip_meta_entry(&c)) return -1;
    if (foreach_meta(meta, (size_t)(c.p - meta), n_meta, meta_fn, ctx)) return -1;
    reader_u32le(&c, &em_len);
    if (c.bad || em_len != reader_left(&c)) return -1;
    *em = c;
    return 0;
}

int changelog_snapshot_meta(const void *data, size_t len, uint64_t *seq,
                            changelog_meta_fn meta_fn, void *ctx)
{
    reader r, em;
    int strings;
    return snapshot_head(&r, data, len, seq, meta_fn, ctx, &em, &strings);
}

int changelog_load_snapshot(engine *e, const void *data, size_t len, uint64_t *seq,
                            changelog_meta_fn meta_fn, changelog_read_fn read_fn, void *ctx)
{
    reader r, c, em;
    int strings;
    int rc = snapshot_head(&r, data, len, seq, meta_fn, ctx, &em, &strings);
    if (rc) return rc;
    if (strings != engine_string_users(e)) return -2; /* the other --user-type */
    rc = engine_load_meta(e, em.p, reader_left(&em));
    if (rc) return rc;
    int more;
    while ((more = next_chunk(&r, &c)) == 1) {
        while (reader_left(&c) > 0) {
            user_key key = {0};
            uint32_t ul = 0;
            const unsigned char *blob, *name;
            if (strings) {
                if (reader_u32le(&c, &key.len) || reader_bytes(&c, &name, key.len)) return -1;
                key.str = (const char *)name;
            } else if (reader_i64le(&c, &key.id)) {
                return -1;
            }
            if (reader_u32le(&c, &ul) || reader_bytes(&c, &blob, ul) ||
                engine_load_user(e, &key, blob, ul))
                return -1;
        }
        if (read_fn) read_fn(ctx, len - reader_left(&r));
    }
    if (read_fn && more == 0) read_fn(ctx, len - reader_left(&r)); /* its end, read */
    return more == 0 && reader_left(&r) == 0 ? 0 : -1;
}
