/*
 * users.c - who has state: the map of hot users (user id -> open sessions),
 * the cold table of users spilled to the store, and the interning of string
 * users (engine_internal.h says why each is shaped as it is).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "engine/engine_internal.h"

/* ---- string users: interning ------------------------------------------- */

static void itab_place(engine *e, int64_t id)
{
    size_t mask = e->n_itab - 1;
    size_t i = e->names[id].hash & mask;
    while (e->itab[i]) i = (i + 1) & mask;
    e->itab[i] = (uint32_t)(id + 1);
}

/* The id of a string user, or -1. */
int64_t intern_find(const engine *e, const char *s, uint32_t len, uint64_t h)
{
    if (!e->n_itab) return -1;
    size_t mask = e->n_itab - 1;
    for (size_t i = h & mask; e->itab[i]; i = (i + 1) & mask) {
        const user_name *n = &e->names[e->itab[i] - 1];
        if (n->hash == h && n->len == len && memcmp(n->bytes, s, len) == 0) return e->itab[i] - 1;
    }
    return -1;
}

int64_t intern_add(engine *e, const char *s, uint32_t len, uint64_t h)
{
    if ((e->n_interned + 1) * 10 > e->n_itab * 7) {
        e->budget_check_at = 0;
        free(e->itab);
        e->n_itab = e->n_itab ? e->n_itab * 2 : 1024;
        e->itab = xcalloc(e->n_itab, sizeof *e->itab);
        for (size_t id = 0; id < e->n_names; id++)
            if (e->names[id].bytes) itab_place(e, (int64_t)id);
    }
    int64_t id;
    if (e->n_free) {
        id = e->free_ids[--e->n_free];
    } else {
        if (e->n_names == e->cap_names) {
            e->budget_check_at = 0;
            e->cap_names = e->cap_names ? e->cap_names * 2 : 1024;
            e->names = xrealloc(e->names, e->cap_names * sizeof *e->names);
        }
        id = (int64_t)e->n_names++;
        assert(e->n_names < UINT32_MAX); /* ids + 1 fit the table's slots */
    }
    char *copy = xmalloc(len ? len : 1);
    e->mem += heap_bytes(len ? len : 1);
    memcpy(copy, s, len);
    e->names[id] = (user_name){copy, len, h};
    itab_place(e, id);
    e->n_interned++;
    return id;
}

static void intern_release(engine *e, int64_t id)
{
    user_name *n = &e->names[id];
    size_t mask = e->n_itab - 1, hole = n->hash & mask;
    while (e->itab[hole] != (uint32_t)(id + 1)) hole = (hole + 1) & mask;
    for (size_t i = (hole + 1) & mask; e->itab[i]; i = (i + 1) & mask) {
        size_t home = e->names[e->itab[i] - 1].hash & mask;
        int stays = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (stays) continue;
        e->itab[hole] = e->itab[i];
        hole = i;
    }
    e->itab[hole] = 0;
    e->mem -= heap_bytes(n->len ? n->len : 1);
    free(n->bytes);
    n->bytes = NULL;
    e->n_interned--;
    if (e->n_free == e->cap_free) {
        e->budget_check_at = 0;
        e->cap_free = e->cap_free ? e->cap_free * 2 : 1024;
        e->free_ids = xrealloc(e->free_ids, e->cap_free * sizeof *e->free_ids);
    }
    e->free_ids[e->n_free++] = id;
}

/* The first 8 bytes of a string user, big-endian and zero-padded: ordering
 * by it orders by the bytes, up to ties that user_bytes_cmp settles (a user
 * holds no NUL, so a shorter one that is a prefix sorts first). */
uint64_t name_prefix(const user_name *n)
{
    uint64_t k = 0;
    for (uint32_t i = 0; i < 8; i++)
        k = k << 8 | (i < n->len ? (unsigned char)n->bytes[i] : 0);
    return k;
}

static int user_bytes_cmp(const engine *e, int64_t a, int64_t b)
{
    const user_name *x = &e->names[a], *y = &e->names[b];
    int c = memcmp(x->bytes, y->bytes, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* After keyed_sort on name_prefix: orders each run of equal prefixes by the
 * whole bytes (insertion sort: runs are short, usually of one). */
void settle_string_ties(const engine *e, keyed *v, size_t n, int64_t (*id_of)(const keyed *))
{
    for (size_t i = 1; i < n; i++) {
        keyed x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1].key == x.key && user_bytes_cmp(e, id_of(&v[j - 1]), id_of(&x)) > 0) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
}

/* A string user's id, interned when new. */
int64_t string_user_of(engine *e, const visit *v)
{
    assert(e->cfg.string_users && v->user != NULL);
    uint64_t h = name_hash(v->user, v->user_len);
    int64_t id = intern_find(e, v->user, v->user_len, h);
    return id >= 0 ? id : intern_add(e, v->user, v->user_len, h);
}

/* ---- user map (linear probing, backward-shift deletion) --------------- */

user_slot *user_insert(engine *e, int64_t user_id)
{
    if ((e->n_used + 1) * 10 > e->n_slots * 7) user_grow(e);
    size_t mask = e->n_slots - 1;
    size_t i = mix64((uint64_t)user_id) & mask;
    while (e->slots[i].used) {
        if (e->slots[i].user_id == user_id) return &e->slots[i];
        i = (i + 1) & mask;
    }
    user_slot *s = &e->slots[i];
    s->used = 1;
    s->persisted = 0;
    s->user_id = user_id;
    s->head = NULL;
    s->dirty_epoch = 0;
    s->touched = 0;
    e->n_used++;
    return s;
}

/* Rehashes the user table into n slots (a power of two above n_used). */
static void user_resize(engine *e, size_t n)
{
    user_slot *old = e->slots;
    size_t n_old = e->n_slots;
    assert(n > e->n_used && (n & (n - 1)) == 0);
    e->n_slots = n;
    e->hand = 0;
    e->budget_check_at = 0;
    e->slots = xcalloc(e->n_slots, sizeof *e->slots);
    e->n_used = 0;
    for (size_t i = 0; i < n_old; i++) {
        if (!old[i].used) continue;
        user_slot *s = user_insert(e, old[i].user_id);
        *s = old[i];
    }
    free(old);
}

void user_grow(engine *e) { user_resize(e, e->n_slots ? e->n_slots * 2 : 1024); }

/* Takes a slot out of the table; its user keeps its interned name (string
 * users), as a user moving to the cold table does. */
void user_unlink(engine *e, user_slot *s)
{
    size_t mask = e->n_slots - 1;
    size_t hole = (size_t)(s - e->slots);
    for (size_t i = (hole + 1) & mask; e->slots[i].used; i = (i + 1) & mask) {
        size_t home = mix64((uint64_t)e->slots[i].user_id) & mask;
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        int stays = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (stays) continue;
        e->slots[hole] = e->slots[i];
        hole = i;
    }
    memset(&e->slots[hole], 0, sizeof e->slots[hole]);
    e->n_used--;
}

void user_remove(engine *e, user_slot *s)
{
    if (e->cfg.string_users) intern_release(e, s->user_id);
    user_unlink(e, s);
}

/* ---- cold table (linear probing, backward-shift deletion) --------------- */

static void cold_place(engine *e, cold_user *c)
{
    /* the tag takes the address's top bits (engine_internal.h): on x86-64
     * Linux, malloc's addresses never reach them; checked, as a wrong word
     * would be a stub's address gone astray */
    if (ctab_tag_of((uintptr_t)c) != 0) abort();
    uint64_t h = mix64((uint64_t)c->user_id);
    size_t mask = e->n_ctab - 1, i = h & mask, dist = 0;
    for (; e->ctab[i]; i = (i + 1) & mask) dist++;
    e->ctab[i] = ctab_word(c, ctab_tag(h, dist));
}

static void cold_resize(engine *e, size_t n)
{
    uintptr_t *old = e->ctab;
    size_t n_old = e->n_ctab;
    assert(n > e->n_cold && (n & (n - 1)) == 0);
    e->budget_check_at = 0;
    e->n_ctab = n;
    e->ctab = xcalloc(n, sizeof *e->ctab);
    /* each stub's user id (its hash) a cache miss: fetched a few ahead */
    for (size_t i = 0; i < n_old; i++) {
        if (i + 8 < n_old && old[i + 8]) __builtin_prefetch(ctab_stub(old[i + 8]));
        if (old[i]) cold_place(e, ctab_stub(old[i]));
    }
    free(old);
}

/* Doubles the cold table where it is: the array grows (a large one is a
 * mapping of its own, which realloc extends without a copy) and is filled
 * again from the close queue, where every cold user has its entry. A new
 * array beside the old one took twice the old one's size at once: the long
 * shape at a quarter of its state stopped at the limit now and then, its
 * resident size 2 MiB short of its cold table's doubling (+1 MiB now). */
static void cold_grow(engine *e)
{
    size_t n = e->n_ctab ? e->n_ctab * 2 : 1024;
    e->budget_check_at = 0;
    e->ctab = xrealloc(e->ctab, n * sizeof *e->ctab);
    memset(e->ctab, 0, n * sizeof *e->ctab);
    e->n_ctab = n;
    size_t placed = 0;
    for (unsigned b = 0; b < CLOSE_BUCKETS; b++) {
        const close_bucket *q = &e->cq[b];
        for (size_t i = 0; i < q->len; i++) {
            if (i + 8 < q->len && entry_is_cold(&q->v[i + 8])) __builtin_prefetch(entry_cold(&q->v[i + 8]));
            if (!entry_is_cold(&q->v[i]) || entry_cold(&q->v[i])->dead) continue;
            cold_place(e, entry_cold(&q->v[i]));
            placed++;
        }
    }
    /* Each cold user is queued once, from its insertion on (its entry
     * moves; a dead stub's stays, skipped): one missed would be lost. No
     * cold user is out of the queue while users go cold (close_upto's and
     * cold_fold's batches are done by then). */
    if (placed != e->n_cold) abort();
}

void cold_insert(engine *e, cold_user *c)
{
    assert(!cold_find(e, c->user_id));
    if ((e->n_cold + 1) * 10 > e->n_ctab * 7) cold_grow(e);
    cold_place(e, c);
    e->n_cold++;
}

/* The slot holding c's word (its user's chain from the home slot holds it). */
static size_t ctab_slot_of(const engine *e, const cold_user *c)
{
    size_t mask = e->n_ctab - 1, i = mix64((uint64_t)c->user_id) & mask;
    while (ctab_at(e, i) != c) i = (i + 1) & mask;
    return i;
}

/* Puts n where c is in the cold table (a new stub for the same user). */
void cold_replace(engine *e, const cold_user *c, cold_user *n)
{
    assert(c->user_id == n->user_id);
    size_t i = ctab_slot_of(e, c);
    e->ctab[i] = ctab_word(n, ctab_tag_of(e->ctab[i]));
}

void cold_remove(engine *e, const cold_user *c)
{
    size_t mask = e->n_ctab - 1, hole = ctab_slot_of(e, c);
    for (size_t i = (hole + 1) & mask; e->ctab[i]; i = (i + 1) & mask) {
        /* the entry's home from its distance (its stub is another cache
         * miss), or its hash when that was too far to record */
        uintptr_t w = e->ctab[i];
        size_t dist = ctab_dist(w);
        uint64_t h = dist < CTAB_FAR ? 0 : mix64((uint64_t)ctab_stub(w)->user_id);
        size_t home = dist < CTAB_FAR ? (i - dist) & mask : h & mask;
        assert(home == (mix64((uint64_t)ctab_stub(w)->user_id) & mask));
        int stays = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (stays) continue;
        /* moves nearer its home: the hash bits stay, the distance shrinks */
        size_t moved = (hole - home) & mask;
        uintptr_t tag = dist < CTAB_FAR ? (ctab_tag_of(w) & ~(uintptr_t)CTAB_FAR) | moved
                                        : ctab_tag(h, moved);
        e->ctab[hole] = ctab_word(ctab_stub(w), tag);
        hole = i;
    }
    e->ctab[hole] = 0;
    e->n_cold--;
}

/* After evictions or loads: a table under a sixth full halves (down to
 * 1024 slots), so that what eviction frees includes the tables' share. Both
 * then sit between a third and seven tenths full. Only a table that takes
 * more than a 64th of the budget is worth it: while spilling, a batch
 * evicts most of the few hot users, whom the next loads bring back, and
 * the small user table halved and doubled again ~60 times a run (2% of the
 * long shape's CPU at a quarter, most of it its new blocks' page faults). */
void tables_shrink(engine *e)
{
    uint64_t worth = e->budget / 64;
    while (e->n_slots > 1024 && e->n_used * 6 < e->n_slots && e->n_slots * sizeof(user_slot) > worth)
        user_resize(e, e->n_slots / 2);
    while (e->n_ctab > 1024 && e->n_cold * 6 < e->n_ctab && e->n_ctab * sizeof *e->ctab > worth)
        cold_resize(e, e->n_ctab / 2);
}

void dirty_push(engine *e, int64_t user_id)
{
    if (e->n_dirty == e->cap_dirty) {
        e->budget_check_at = 0;
        e->cap_dirty = e->cap_dirty ? e->cap_dirty * 2 : 1024;
        e->dirty = xrealloc(e->dirty, e->cap_dirty * sizeof *e->dirty);
    }
    e->dirty[e->n_dirty++] = user_id;
}

void dirty_append(engine *e, user_slot *u)
{
    u->dirty_epoch = e->epoch;
    dirty_push(e, u->user_id);
}

/* A user with no open session leaves the map at once, unless its deletion
 * still has to reach the checkpoint (then engine_clear_dirty removes it). */
void user_release_if_empty(engine *e, user_slot *u)
{
    if (u->head == NULL && !e->cfg.track_dirty) user_remove(e, u);
}

