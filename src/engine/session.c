/*
 * session.c - one session's pages: its page store (entries and text in one
 * block, from size classes with free lists), the caps that keep the longest
 * run of pages, and the merge of two sessions a visit bridges.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "engine/engine_internal.h"
#include "engine/session_id.h"

const uint32_t store_class[STORE_CLASSES] = {40,  56,  72,   88,   104,  120,  152,  184,  248,  376,
                                             504, 760, 1016, 1528, 2040, 3064, 4088, 6136, 8184};

session *session_new(engine *e, int64_t user_id, const visit *v)
{
    session *s = session_alloc(e);
    s->user_id = user_id;
    s->first_t = s->last_t = v->event_time_us;
    s->first_pos = v->pos;
    s->last_part = v->pos.partition;
    s->last_off = v->pos.offset;
    s->cut_t = NO_CUT;
    s->visits = 0; /* counted by engine_apply with every visit */
    return s;
}

static inline uint64_t pool_limit(const engine *e)
{
    return e->budget && e->budget / 64 < POOL_MAX_BYTES ? e->budget / 64 : POOL_MAX_BYTES;
}

/* Gives a block of `size` bytes (a page store or a cold user's appended
 * visits) back: to its class's list if it is a class's size and the lists
 * have room (it stays in mem), else to malloc. */
void pool_release(engine *e, void *store, uint64_t size)
{
    if (!store) return;
    unsigned k = store_class_of(size);
    if (k < STORE_CLASSES && store_class[k] == size && e->pool_bytes + heap_bytes(size) <= pool_limit(e)) {
        memcpy(store, &e->pool[k], sizeof(void *));
        e->pool[k] = store;
        e->pool_bytes += heap_bytes(size);
        return;
    }
    e->mem -= heap_bytes(size);
    free(store);
}

/* Session structs come and go at the visit rate on short sessions. Once the
 * job has a second thread (the checkpoint's writer), glibc's calloc and free
 * take its arena's lock and fast bins' atomics for each: calloc went from
 * 55 to 393 samples of the short-session run with --checkpoint, free from
 * 218 to 478. A struct given back waits in a list (LIFO: the next session
 * takes the one the last close freed, still in cache), within the page
 * stores' bound. */
session *session_alloc(engine *e)
{
    session *s = e->pool_sessions;
    if (s) {
        e->pool_sessions = s->next;
        e->pool_bytes -= heap_bytes(sizeof *s);
        memset(s, 0, sizeof *s);
        return s;
    }
    s = xcalloc(1, sizeof *s);
    e->mem += heap_bytes(sizeof *s);
    return s;
}

void session_release(engine *e, session *s)
{
    if (e->pool_bytes + heap_bytes(sizeof *s) <= pool_limit(e)) {
        s->next = e->pool_sessions;
        e->pool_sessions = s;
        e->pool_bytes += heap_bytes(sizeof *s);
        return;
    }
    e->mem -= heap_bytes(sizeof *s);
    free(s);
}

void *pool_pop(engine *e, unsigned k)
{
    assert(k < STORE_CLASSES);
    unsigned char *b = e->pool[k];
    if (b) {
        memcpy(&e->pool[k], b, sizeof(void *));
        e->pool_bytes -= heap_bytes(store_class[k]);
    }
    return b;
}

void pool_free(engine *e)
{
    for (unsigned k = 0; k < STORE_CLASSES; k++)
        while (e->pool[k]) {
            void *b = e->pool[k];
            memcpy(&e->pool[k], b, sizeof(void *));
            e->pool_bytes -= heap_bytes(store_class[k]);
            e->mem -= heap_bytes(store_class[k]);
            free(b);
        }
    while (e->pool_sessions) {
        session *s = e->pool_sessions;
        e->pool_sessions = s->next;
        e->pool_bytes -= heap_bytes(sizeof *s);
        e->mem -= heap_bytes(sizeof *s);
        free(s);
    }
    assert(e->pool_bytes == 0);
}

void session_free(engine *e, session *s)
{
    pool_release(e, s->store, store_size(s));
    session_release(e, s);
}

/* Rewrites the arena with the stored pages' text only, in page order. */
static void session_compact(session *s)
{
    char *text = arena_of(s), *packed = xmalloc(s->page_bytes ? s->page_bytes : 1);
    page_entry *pages = pages_of(s);
    uint32_t at = 0;
    for (uint32_t i = 0; i < s->n_pages; i++) {
        if (pages[i].len) memcpy(packed + at, text + pages[i].str_off, pages[i].len);
        pages[i].str_off = at;
        at += pages[i].len;
    }
    assert(at == s->page_bytes);
    if (at) memcpy(text, packed, at);
    s->arena_len = at;
    free(packed);
}

/* Makes room for `pages` more entries and `bytes` more text. The text of
 * evicted pages stays in the arena until it would have to grow while at least
 * half of it is such text: then it is compacted instead, so that a session
 * takes at most about twice the text it keeps. Returns -1 if the text would
 * pass 4 GiB, which the bound on max_session_bytes rules out. */
int session_reserve(engine *e, session *s, uint32_t pages, uint32_t bytes)
{
    if ((uint64_t)s->arena_len + bytes > s->arena_cap && s->arena_len - s->page_bytes >= s->page_bytes &&
        s->arena_len > s->page_bytes)
        session_compact(s);
    uint64_t need_pages = (uint64_t)s->n_pages + pages, need_bytes = (uint64_t)s->arena_len + bytes;
    if (need_bytes > UINT32_MAX - 1) return -1;
    if (need_pages <= s->cap_pages && need_bytes <= s->arena_cap) return 0;
    uint64_t cap_pages = s->cap_pages, max_pages = e->cfg.max_pages;
    while (cap_pages < need_pages) cap_pages = cap_pages ? cap_pages * 2 : 1;
    if (cap_pages > max_pages && need_pages <= max_pages) cap_pages = max_pages;
    uint64_t entries = cap_pages * sizeof(page_entry), old_entries = (uint64_t)s->cap_pages * sizeof(page_entry);
    uint64_t have = store_size(s), want = entries + need_bytes;
    if (s->store && want <= have) {
        /* room enough in the block: the entries take some of the text's */
        memmove(s->store + entries, s->store + old_entries, s->arena_len);
        s->cap_pages = (uint32_t)cap_pages;
        s->arena_cap = (uint32_t)(have - entries);
        return 0;
    }
    uint64_t size = want;
    unsigned char *store;
    if (!s->store) {
        /* an exact fit for the first page (most sessions have one) */
        e->mem += heap_bytes(size);
        store = xmalloc(size);
    } else {
        /* growing by half at least (then up to the class), so that a
         * session's copies add up to O(its size); the text's room stays
         * below 4 GiB as need_bytes does */
        uint64_t grow = want > have + have / 2 ? want : have + have / 2;
        if (grow - entries > UINT32_MAX - 1) grow = entries + UINT32_MAX - 1;
        unsigned k = store_class_of(grow);
        size = k < STORE_CLASSES ? store_class[k] : grow;
        store = k < STORE_CLASSES ? pool_pop(e, k) : NULL;
        if (!store) {
            e->mem += heap_bytes(size);
            store = xmalloc(size);
        }
        memcpy(store, s->store, (size_t)s->n_pages * sizeof(page_entry));
        memcpy(store + entries, s->store + old_entries, s->arena_len);
        pool_release(e, s->store, have);
    }
    assert(size >= want && size - entries <= UINT32_MAX - 1);
    s->store = store;
    s->cap_pages = (uint32_t)cap_pages;
    s->arena_cap = (uint32_t)(size - entries);
    return 0;
}

/* Appends the text of a page to the arena (room reserved); returns its offset. */
uint32_t arena_push(session *s, const char *data, uint32_t len)
{
    uint32_t off = s->arena_len;
    if (len) memcpy(arena_of(s) + off, data, len);
    s->arena_len += len;
    return off;
}

static int reject_entry(engine *e, const session *s, const page_entry *p, reject_reason why)
{
    visit v = {.user_id = s->user_id,
               .user = e->cfg.string_users ? e->names[s->user_id].bytes : NULL,
               .user_len = e->cfg.string_users ? e->names[s->user_id].len : 0,
               .event_time_us = p->t,
               .page = arena_of(s) + p->str_off,
               .page_len = p->len,
               .pos = {.append_ts_ms = 0, .partition = p->partition, .offset = p->offset}};
    if (why == REJECT_SESSION_CAP) e->st.rejected_cap++;
    return e->cb.on_reject ? e->cb.on_reject(e->cb.ctx, &v, why) : 0;
}

static int reject_visit(engine *e, const visit *v)
{
    e->st.rejected_cap++;
    return e->cb.on_reject ? e->cb.on_reject(e->cb.ctx, v, REJECT_SESSION_CAP) : 0;
}

/* Evicts the session's last page (it is now over a cap): it becomes the cut. */
static int evict_last(engine *e, session *s)
{
    const page_entry *last = &pages_of(s)[s->n_pages - 1];
    int rc = reject_entry(e, s, last, REJECT_SESSION_CAP);
    lower_cut(s, last->t, last->partition, last->offset);
    s->page_bytes -= last->len;
    s->n_pages--;
    e->st.open_pages--;
    return rc;
}

/* Stores the page of v in s, keeping the longest run of pages, in page
 * order, within max_pages and max_session_bytes. A page after the cut is out
 * at once; one that does not fit after the pages before it is out with every
 * page after it; one that fits may push the last pages out. */
int session_add_page(engine *e, session *s, const visit *v)
{
    int32_t part = v->pos.partition;
    int64_t off = v->pos.offset, t = v->event_time_us;
    /* Binary search for the insertion point; in-order arrival hits the end. */
    page_entry *pages = pages_of(s);
    uint32_t lo = 0, hi = s->n_pages;
    if (hi > 0 && page_before(&pages[hi - 1], t, part, off)) {
        lo = hi;
    } else {
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (page_before(&pages[mid], t, part, off)) lo = mid + 1;
            else hi = mid;
        }
    }
    uint64_t before = s->page_bytes; /* text of the pages before lo */
    for (uint32_t k = lo; k < s->n_pages; k++) before -= pages[k].len;
    if (!before_cut(s, t, part, off) || lo >= e->cfg.max_pages ||
        before + v->page_len > e->cfg.max_session_bytes ||
        session_reserve(e, s, 1, v->page_len)) {
        lower_cut(s, t, part, off);
        int rc = reject_visit(e, v);
        while (s->n_pages > lo) {
            int rc2 = evict_last(e, s);
            if (!rc) rc = rc2;
        }
        return rc;
    }
    pages = pages_of(s);
    uint32_t str_off = arena_push(s, v->page, v->page_len);
    memmove(&pages[lo + 1], &pages[lo], (size_t)(s->n_pages - lo) * sizeof *pages);
    pages[lo] = (page_entry){.t = t, .offset = off, .partition = part, .str_off = str_off,
                             .len = v->page_len};
    s->n_pages++;
    s->page_bytes += v->page_len;
    e->st.open_pages++;
    int rc = 0;
    while (s->n_pages > e->cfg.max_pages || s->page_bytes > e->cfg.max_session_bytes) {
        int rc2 = evict_last(e, s);
        if (!rc) rc = rc2;
    }
    return rc;
}

/* Merges b into a (both of one user, b not yet freed); b is destroyed. */
int session_merge(engine *e, session *a, session *b)
{
    session merged = *a;
    merged.store = NULL;
    merged.n_pages = merged.cap_pages = merged.arena_len = merged.arena_cap = 0;
    merged.page_bytes = 0;
    lower_cut(&merged, b->cut_t, b->cut_part, b->cut_off); /* pages past either cut are out */
    uint64_t total = (uint64_t)a->page_bytes + b->page_bytes;
    uint32_t n = a->n_pages + b->n_pages;
    if (n > e->cfg.max_pages) n = e->cfg.max_pages;
    session_reserve(e, &merged, n, total > UINT32_MAX - 1 ? 0 : (uint32_t)total);
    const page_entry *pa = pages_of(a), *pb = pages_of(b);
    uint32_t i = 0, j = 0;
    int rc = 0;
    while (i < a->n_pages || j < b->n_pages) {
        const session *from;
        const page_entry *p;
        if (j >= b->n_pages ||
            (i < a->n_pages && page_before(&pa[i], pb[j].t, pb[j].partition, pb[j].offset)))
            from = a, p = &pa[i++];
        else
            from = b, p = &pb[j++];
        if (!before_cut(&merged, p->t, p->partition, p->offset) ||
            merged.n_pages >= e->cfg.max_pages ||
            (uint64_t)merged.page_bytes + p->len > e->cfg.max_session_bytes ||
            session_reserve(e, &merged, 1, p->len)) {
            lower_cut(&merged, p->t, p->partition, p->offset); /* and the pages after it */
            int rc2 = reject_entry(e, from, p, REJECT_SESSION_CAP);
            if (!rc) rc = rc2;
            e->st.open_pages--;
            continue;
        }
        page_entry q = *p;
        q.str_off = arena_push(&merged, arena_of(from) + p->str_off, p->len);
        pages_of(&merged)[merged.n_pages++] = q;
        merged.page_bytes += p->len;
    }
    pool_release(e, a->store, store_size(a));
    a->store = merged.store;
    a->cap_pages = merged.cap_pages;
    a->n_pages = merged.n_pages;
    a->arena_len = merged.arena_len;
    a->arena_cap = merged.arena_cap;
    a->page_bytes = merged.page_bytes;
    a->cut_t = merged.cut_t;
    a->cut_part = merged.cut_part;
    a->cut_off = merged.cut_off;
    if (b->first_t < a->first_t) a->first_t = b->first_t;
    if (b->last_t > a->last_t) a->last_t = b->last_t;
    if (log_position_cmp(&b->first_pos, &a->first_pos) < 0) a->first_pos = b->first_pos;
    session_raise_last(a, b->last_part, b->last_off);
    pool_release(e, b->store, store_size(b));
    b->store = NULL;
    a->visits += b->visits;
    b->visits = 0; /* dead: its close-queue entry still points here */
    e->dead_bytes += heap_bytes(sizeof *b);
    e->st.open_sessions--;
    e->st.sessions_merged++;
    return rc;
}

