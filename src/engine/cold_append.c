/*
 * cold_append.c - visits kept against a cold user without loading it
 * (--memory-limit; docs/checkpoint.md, "Memory limit").
 *
 * With the open state at a quarter of memory and users visited uniformly at
 * random, nearly every visit found its user on disk: a load (its blob read
 * and decoded into sessions) and, to stay within the budget, an eviction
 * (encoded and written again) per visit. Most such visits only append: to
 * the user's last session, in page order and within the caps, or as a new
 * session after it. Such a visit changes nothing but the end of the user's
 * blob, so the engine decides it from the stub (the last session's end and
 * room) and keeps the visit beside the stub, a few varints and the page
 * (cold_delta), instead of loading the user. The appended visits meet the
 * blob when the user is needed whole: loaded back (a visit that is not such
 * an append, the watermark reaching its first session's end), read for a
 * snapshot or the change log's dirty users, or folded into a new blob when
 * the appended visits pass their share of the budget (cold_fold: one read
 * and one write for all of a user's appends). So a user of a long session
 * is read about once per session instead of once per visit.
 *
 * Nothing an output sees changes: the visit passed the lateness check and
 * reached on_accept (the change log) as before; applied later to the blob
 * (blob_apply_delta) it gives the bytes encode_user would have written after
 * applying it at once, since no reject, merge or cut can come of it; its
 * counters (open sessions and pages) are counted when it arrives.
 *
 * While the engine spills, a user it does not hold is born cold the same
 * way (cold_birth): its first visit an appended visit to no blob at all,
 * instead of a hot user evicted again before its next visit.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "engine/engine_internal.h"

/* A cold user's appended visits take at most this many bytes (~25 bytes a
 * visit of a short page): beyond, the next visit loads the user. */
#define COLD_DELTA_MAX 2000
_Static_assert(COLD_DELTA_MAX <= UINT16_MAX, "a delta's length fits its u16");
_Static_assert(sizeof(cold_delta) + COLD_DELTA_MAX <= 2040, "the most appended visits fit a store class");

/* Users folded per batch: their blobs are read together (the store submits
 * the hinted reads in one system call). */
#define FOLD_BATCH 32
#define FOLD_AHEAD 16

static inline uint8_t room_pages_of(uint64_t n) { return n > UINT8_MAX ? UINT8_MAX : (uint8_t)n; }
static inline uint16_t room_bytes_of(uint64_t n) { return n > UINT16_MAX ? UINT16_MAX : (uint16_t)n; }

static inline size_t delta_size(size_t cap) { return offsetof(cold_delta, data) + cap; }

void cold_stub_init(const engine *e, cold_user *c, const session *head)
{
    const session *s = head;
    while (s->next) s = s->next;
    c->last_t = s->last_t;
    c->single = head->next == NULL;
    c->delta = NULL;
    /* I2: n_pages <= max_pages, page_bytes <= max_session_bytes */
    c->room_pages = s->cut_t != NO_CUT ? 0 : room_pages_of(e->cfg.max_pages - s->n_pages);
    c->room_bytes = s->cut_t != NO_CUT ? 0 : room_bytes_of(e->cfg.max_session_bytes - s->page_bytes);
}

void cold_delta_free(engine *e, cold_user *c)
{
    if (!c->delta) return;
    uint64_t b = heap_bytes(delta_size(c->delta->cap));
    assert(e->delta_bytes >= b && e->n_delta > 0);
    e->delta_bytes -= b;
    e->n_delta--;
    pool_release(e, c->delta, delta_size(c->delta->cap)); /* mem: the pool's, or malloc's */
    c->delta = NULL;
}

/* Room for need bytes of appended visits (need <= COLD_DELTA_MAX), in a
 * block of the page stores' size classes, the smallest holding them (the
 * classes are 1.15-1.5x apart: a user's copies add up to O(its visits)),
 * taken from and given back to their free lists, so that a block a fold or
 * a load freed serves the next user's growth (or a page store's) without
 * malloc. Growing each block by realloc to a size of its own (by half, to
 * its heap chunk's end) was most of delta_push's 8% of a spilling run's
 * CPU. The small classes are 16 bytes apart (48-128-byte chunks) for the
 * one to four kept visits most users have (~25 bytes each): for those, no
 * block is larger than the realloc's chunk was. */
static cold_delta *delta_reserve(engine *e, cold_user *c, size_t need)
{
    cold_delta *d = c->delta;
    size_t have = d ? d->cap : 0;
    if (need <= have) return d;
    unsigned k = store_class_of(delta_size(need));
    assert(need <= COLD_DELTA_MAX && k < STORE_CLASSES);
    size_t size = store_class[k];
    cold_delta *n = pool_pop(e, k);
    if (!n) {
        n = xmalloc(size);
        e->mem += heap_bytes(size);
    }
    if (d) {
        memcpy(n, d, delta_size(d->len));
        e->delta_bytes -= heap_bytes(delta_size(have));
        pool_release(e, d, delta_size(have));
    } else {
        n->first_end = INT64_MIN;
        n->len = 0;
        e->n_delta++;
    }
    n->cap = (uint16_t)(size - offsetof(cold_delta, data));
    e->delta_bytes += heap_bytes(size);
    c->delta = n;
    return n;
}

/* Adds v to c's appended visits and to the stub and the counters: 1, or 0
 * if they would pass COLD_DELTA_MAX. dt: its time less the last session's
 * end before it, or its time for a user's first visit; for a join (v at or
 * before the end of c's only session), 0 and then how far before. */
static int delta_push(engine *e, cold_user *c, const visit *v, uint64_t dt, int opens, int join)
{
    unsigned char head[6 * 10], *p = head;
    assert(!join || (dt == 0 && !opens && c->single));
    p = put_varint_at(p, dt);
    if (join) p = put_varint_at(p, (uint64_t)c->last_t - (uint64_t)v->event_time_us);
    p = put_varint_at(p, zigzag_enc(v->pos.append_ts_ms));
    p = put_varint_at(p, (uint32_t)v->pos.partition);
    p = put_varint_at(p, zigzag_enc(v->pos.offset));
    p = put_varint_at(p, v->page_len);
    size_t n = (size_t)(p - head), have = c->delta ? c->delta->len : 0;
    if (have + n + v->page_len > COLD_DELTA_MAX) return 0;
    cold_delta *d = delta_reserve(e, c, have + n + v->page_len);
    memcpy(d->data + have, head, n);
    if (v->page_len) memcpy(d->data + have + n, v->page, v->page_len);
    d->len = (uint16_t)(have + n + v->page_len);
    if (opens) {
        /* the first session's end, which the entry's key may lag, is
         * no longer the last one's */
        if (c->single) d->first_end = c->last_t;
        c->single = 0;
        c->room_pages = room_pages_of(e->cfg.max_pages - 1);
        c->room_bytes = room_bytes_of(e->cfg.max_session_bytes - v->page_len);
        e->st.open_sessions++;
        e->st.sessions_opened++;
        e->cold_sessions++;
    } else {
        /* saturated counts only go down: conservative, never over a cap */
        c->room_pages--;
        c->room_bytes = (uint16_t)(c->room_bytes - v->page_len);
    }
    if (!join) c->last_t = v->event_time_us;
    e->st.open_pages++;
    e->cold_pages++;
    e->st.cold_appends++;
    if (e->cfg.track_dirty && !c->listed) {
        dirty_push(e, c->user_id);
        c->listed = 1;
    }
    return 1;
}

int cold_append(engine *e, cold_user *c, const visit *v)
{
    int64_t t = v->event_time_us;
    if (t <= c->last_t) {
        /* At or before the last session's end: it joins that session if it
         * is the only one (no session before it to join or bridge to) and
         * within G of its end (so not before its start less G), in page
         * order, within the caps. Else it may join or bridge sessions the
         * stub knows nothing of: loaded. (Visits out of order by less than
         * the lateness were a quarter of the long shape's loads.) */
        if (!c->single || (uint64_t)c->last_t - (uint64_t)t > (uint64_t)e->cfg.gap_us ||
            c->room_pages == 0 || v->page_len > c->room_bytes)
            return 0;
        return delta_push(e, c, v, 0, 0, 1);
    }
    uint64_t dt = (uint64_t)t - (uint64_t)c->last_t;
    int opens = dt > (uint64_t)e->cfg.gap_us;
    if (opens ? v->page_len > e->cfg.max_session_bytes
              : c->room_pages == 0 || v->page_len > c->room_bytes)
        return 0; /* over a cap: rejects to emit, loaded */
    return delta_push(e, c, v, dt, opens, 0);
}

/* A user the engine does not hold, while it spills: born cold, its first
 * visit kept as an appended visit to an empty blob (no record: len 0).
 * Hot, it would take a session, a page store and a slot (~250 bytes for a
 * page), and be evicted again, encoded and written, before its next visit
 * (users drawn uniformly, a quarter of them in memory); cold, it takes its
 * stub, its delta and its close-queue entry (~120 bytes), and its next
 * visits append. 1, or 0: the caller makes it a hot user. */
int cold_birth(engine *e, int64_t user_id, const visit *v)
{
    if (!e->n_cold || !e->cold.put || v->page_len > e->cfg.max_session_bytes) return 0;
    cold_user *c = xmalloc(sizeof *c);
    *c = (cold_user){.user_id = user_id, .single = 1, .last_t = v->event_time_us};
    e->mem += heap_bytes(sizeof *c);
    if (!delta_push(e, c, v, (uint64_t)v->event_time_us, 1, 0)) {
        e->mem -= heap_bytes(sizeof *c);
        free(c);
        return 0;
    }
    c->single = 1; /* delta_push counted its session as a second one */
    c->delta->first_end = INT64_MIN;
    cold_insert(e, c);
    e->st.cold_users++;
    e->st.cold_births++;
    cq_place(e, close_key(v->event_time_us), cold_tag(c)); /* a session's key: >= cq_last */
    return 1;
}

/* Writes c's blob with its appended visits as a new record. */
static int fold(engine *e, cold_user *c)
{
    assert(c->delta && !c->dead);
    e->budget_check_at = 0; /* cold_buf may grow */
    int rc = cold_blob(e, c, &e->cold_buf);
    if (rc) return rc;
    if (e->cold_buf.len > UINT32_MAX) return 0; /* cannot be named by a stub: waits for its load */
    user_key k = key_of(e, c->user_id);
    uint64_t handle = 0;
    rc = e->cold.put(e->cold.ctx, &k, e->cold_buf.data, e->cold_buf.len, &handle);
    if (rc) return rc; /* the old record and the delta still hold the user */
    if (e->cold.drop && c->len) e->cold.drop(e->cold.ctx, c->handle, c->len);
    c->handle = handle;
    c->len = (uint32_t)e->cold_buf.len;
    int64_t first_end = c->delta->first_end;
    cold_delta_free(e, c);
    e->st.cold_folds++;
    if (first_end != INT64_MIN) {
        /* The blob's first session is now one that no append can reach
         * (cold_first_key would take the entry's key for its end): a new
         * stub, queued on that end; the old one goes with its entry. */
        cold_user *n = xmalloc(sizeof *n);
        e->mem += heap_bytes(sizeof *n);
        *n = *c;
        c->dead = 1;
        e->dead_bytes += heap_bytes(sizeof *c);
        cold_replace(e, c, n);
        cq_place(e, close_key(first_end), cold_tag(n));
    }
    return 0;
}

int cold_fold(engine *e, uint64_t goal)
{
    if (!e->n_ctab) return 0;
    size_t turn = 0, turns = 2 * e->n_ctab;
    if (e->cap_due < FOLD_BATCH) {
        e->budget_check_at = 0;
        e->cap_due = FOLD_BATCH;
        e->due = xrealloc(e->due, e->cap_due * sizeof *e->due);
    }
    /* A clock over the cold table: the first turn folds the users holding
     * more than the average (a fold saves a load per visit it holds), the
     * second any. */
    while (e->delta_bytes > goal && turn < turns) {
        uint64_t avg = e->n_delta ? e->delta_bytes / e->n_delta : 0;
        size_t n = 0;
        for (; n < FOLD_BATCH && turn < turns; turn++) {
            /* each stub a cache miss: fetched a few slots ahead */
            const cold_user *ahead = ctab_at(e, (e->fold_hand + FOLD_AHEAD) & (e->n_ctab - 1));
            if (ahead) __builtin_prefetch(ahead);
            cold_user *c = ctab_at(e, e->fold_hand & (e->n_ctab - 1));
            e->fold_hand = (e->fold_hand + 1) & (e->n_ctab - 1);
            if (!c || !c->delta) continue;
            if (turn < e->n_ctab && heap_bytes(delta_size(c->delta->cap)) < avg) continue;
            e->due[n++] = c;
        }
        if (e->cold.prefetch && n > 1)
            for (size_t i = 0; i < n; i++)
                if (e->due[i]->len) e->cold.prefetch(e->cold.ctx, e->due[i]->handle, e->due[i]->len);
        for (size_t i = 0; i < n; i++) {
            /* (the hand may have come round to a user twice) */
            int rc = e->due[i]->delta ? fold(e, e->due[i]) : 0;
            if (rc) return rc;
        }
    }
    return 0;
}

/* engine_prefetch's guess, without the visit's time: a visit of c will
 * likely be kept beside it (its appended visits have room), so that its
 * blob need not be read ahead. */
int cold_may_append(const cold_user *c)
{
    return c->delta ? c->delta->len + 64 <= COLD_DELTA_MAX : 1;
}

