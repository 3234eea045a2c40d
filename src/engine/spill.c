/*
 * spill.c - state larger than memory (docs/checkpoint.md, "Memory limit"):
 * the engine's memory against its budget, users evicted to the cold store
 * (least recently visited first, a clock) and loaded back when a visit or
 * the watermark needs them. The store is the caller's (engine_cold_store):
 * the engine stays without I/O.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "engine/engine_internal.h"

void engine_set_cold_store(engine *e, const engine_cold_store *store, uint64_t budget_bytes)
{
    e->cold = *store;
    e->budget = budget_bytes;
    e->budget_check_at = 0;
}

uint64_t engine_memory_bytes(const engine *e)
{
    /* The user and cold tables count half again: a doubling takes one
     * block (the user table's new array beside the old one, the cold
     * table's added half) that malloc's free lists (the freed sessions of
     * evicted users) cannot provide. */
    return e->mem + (uint64_t)e->n_slots * sizeof(user_slot) * 3 / 2 +
           (uint64_t)e->n_ctab * sizeof(cold_user *) * 3 / 2 + e->cq_cap * sizeof(close_entry) +
           (uint64_t)e->cap_names * sizeof(user_name) + (uint64_t)e->n_itab * sizeof(uint32_t) +
           (uint64_t)e->cap_free * sizeof(int64_t) + (uint64_t)e->cap_dirty * sizeof(int64_t) +
           (uint64_t)e->cap_refs * sizeof(page_ref) + e->cold_buf.cap +
           (uint64_t)e->cap_due * sizeof(cold_user *);
}

uint64_t engine_growth_bytes(const engine *e, uint64_t more_users)
{
    uint64_t n = 0;
    if ((e->n_used + more_users) * 10 > e->n_slots * 7) n += (uint64_t)e->n_slots * 2 * sizeof(user_slot);
    /* One eviction batch can make tens of thousands of users cold at once,
     * the cold table doubling on the way: what it would take if every user
     * went cold (only with a store: without one nobody does). */
    if (e->cold.put) {
        uint64_t users = e->n_cold + e->n_used + more_users, size = e->n_ctab ? e->n_ctab : 1024;
        while (users * 10 > size * 7) size *= 2;
        if (size > e->n_ctab) n += (size - e->n_ctab) * sizeof(cold_user *); /* grows where it is */
    }
    return n;
}

/* Loads a cold user back into memory, into a new slot of the user table
 * (*out, if out). queued: its entry is still in the close queue (marked
 * dead, freed when reached); else the caller took it out and it is freed
 * here. */
int load_cold(engine *e, cold_user *c, int queued, user_slot **out)
{
    assert(!c->dead);
    e->budget_check_at = 0; /* cold_buf may grow */
    int rc = cold_blob(e, c, &e->cold_buf); /* its appended visits applied */
    if (rc) return rc;
    cold_delta_free(e, c);
    if (e->cold.drop && c->len) e->cold.drop(e->cold.ctx, c->handle, c->len);
    cold_remove(e, c);
    user_slot *u = user_insert(e, c->user_id);
    assert(u->head == NULL && !u->persisted);
    u->persisted = c->persisted;
    u->dirty_epoch = c->listed ? e->epoch : 0;
    if (out) *out = u;
    e->st.cold_users--;
    e->st.users_loaded++;
    if (queued) {
        c->dead = 1;
        e->dead_bytes += heap_bytes(sizeof *c);
    } else {
        free_cold(e, c);
    }
    /* decode_user counts the sessions as new; they were open all along */
    uint64_t sessions = e->st.open_sessions, pages = e->st.open_pages;
    rc = decode_user(e, u, e->cold_buf.data, e->cold_buf.len);
    uint64_t ds = e->st.open_sessions - sessions, dp = e->st.open_pages - pages;
    e->st.open_sessions = sessions;
    e->st.open_pages = pages;
    e->cold_sessions -= ds;
    e->cold_pages -= dp;
    /* what a damaged blob left half-decoded cannot be told from the rest */
    return rc;
}

/* keep_budget's slow path: memory may be over the budget. */
int evict_to_budget(engine *e)
{
    uint64_t mem = engine_memory_bytes(e);
    /* Nothing left to evict last time (cold users' index alone over the
     * budget): try again only after the state grew by a sixteenth. */
    uint64_t line = e->budget > e->evict_again ? e->budget : e->evict_again;
    if (mem <= line) {
        e->budget_check_at = e->mem + (line - mem) + 1; /* the tables as they are */
        return 0;
    }
    int rc = engine_evict(e, e->budget - e->budget / 8);
    mem = engine_memory_bytes(e);
    /* (a sixteenth of the state, not of the budget: a budget cut to almost
     * nothing had every few hundred visits fold every cold user's kept
     * visits, a pass over the whole cold table each time) */
    e->evict_again = mem > e->budget ? mem + mem / 16 : 0;
    e->budget_check_at = 0;
    return rc;
}

/* Encodes u's sessions into the store and frees them; their close-queue
 * entries are left dead for drop_dead_entries. */
static int evict_user(engine *e, user_slot *u)
{
    assert(u->head);
    e->budget_check_at = 0; /* cold_buf may grow */
    buf_reset(&e->cold_buf);
    encode_user(u->head, &e->cold_buf);
    if (e->cold_buf.len > UINT32_MAX) return 0; /* cannot be named by a stub: stays */
    user_key k = key_of(e, u->user_id);
    uint64_t handle = 0;
    int rc = e->cold.put(e->cold.ctx, &k, e->cold_buf.data, e->cold_buf.len, &handle);
    if (rc) return rc;
    cold_user *c = xmalloc(sizeof *c);
    e->mem += heap_bytes(sizeof *c);
    *c = (cold_user){.user_id = u->user_id,
                     .handle = handle,
                     .len = (uint32_t)e->cold_buf.len,
                     .persisted = u->persisted,
                     .listed = e->cfg.track_dirty && u->dirty_epoch == e->epoch};
    cold_stub_init(e, c, u->head);
    /* the first session ends first: sessions are sorted and disjoint */
    uint64_t key = close_key(u->head->last_t);
    for (session *s = u->head, *next; s; s = next) {
        next = s->next;
        e->cold_sessions++;
        e->cold_pages += s->n_pages;
        e->mem -= store_bytes(s);
        free(s->store);
        s->store = NULL;
        s->visits = 0; /* dead: its entry goes with drop_dead_entries */
        e->dead_bytes += heap_bytes(sizeof *s);
    }
    user_unlink(e, u); /* its interned name stays with the cold user */
    cold_insert(e, c);
    e->st.cold_users++;
    e->st.users_evicted++;
    cq_place(e, key, cold_tag(c)); /* key >= the session's entry's key >= cq_last */
    return 0;
}

/* Where an entry's dead mark is: the line a sweep must read. */
static inline const void *entry_mark(const close_entry *c)
{
    return entry_is_cold(c) ? (const void *)entry_cold(c) : (const void *)&entry_session(c)->visits;
}

/* Removes the entries of dead sessions and dead cold users from the queue
 * (after a batch of evictions: their memory is what the batch is for). Each
 * entry's struct is a cache miss (the queue holds every open and cold user):
 * the marks are fetched SWEEP_AHEAD entries ahead, so that the misses overlap
 * instead of following one another (the sweep was 12% of a spilling run's
 * CPU, nine tenths of it waiting for these loads). */
#define SWEEP_AHEAD 48
static void drop_dead_entries(engine *e)
{
    for (unsigned b = 0; b < CLOSE_BUCKETS; b++) {
        close_bucket *q = &e->cq[b];
        size_t n = 0;
        for (size_t i = 0; i < q->len && i < SWEEP_AHEAD; i++) __builtin_prefetch(entry_mark(&q->v[i]));
        for (size_t i = 0; i < q->len; i++) {
            if (i + SWEEP_AHEAD < q->len) __builtin_prefetch(entry_mark(&q->v[i + SWEEP_AHEAD]));
            close_entry c = q->v[i];
            int dead = entry_is_cold(&c) ? entry_cold(&c)->dead != 0 : session_dead(entry_session(&c));
            if (dead) {
                if (entry_is_cold(&c)) free_cold(e, entry_cold(&c));
                else free_dead_session(e, entry_session(&c));
                continue;
            }
            q->v[n++] = c;
        }
        q->len = n;
    }
}

/* The eviction clock: a user applied to since the hand last passed gets a
 * second chance. Evicts until the memory (less the dead structs, which go
 * with a sweep) is at most target_bytes and at most max_hot users hold a
 * slot, or two turns passed (the first clears every mark). */
static int evict_clock(engine *e, uint64_t target_bytes, size_t max_hot, int *any)
{
    for (size_t seen = 0; seen < 2 * e->n_slots; seen++) {
        if (engine_memory_bytes(e) - e->dead_bytes <= target_bytes && e->n_used <= max_hot) break;
        user_slot *u = &e->slots[e->hand];
        e->hand = (e->hand + 1) & (e->n_slots - 1);
        if (!u->used || !u->head) continue;
        if (u->touched) {
            u->touched = 0;
            continue;
        }
        int rc = evict_user(e, u);
        if (rc) return rc;
        *any = 1;
    }
    return 0;
}

int engine_evict_for_growth(engine *e, uint64_t more_users)
{
    if (!e->cold.put || !e->cold.get || e->n_slots == 0) return 0;
    /* user_insert doubles the table once (n_used + 1) * 10 > n_slots * 7 */
    size_t fit = e->n_slots * 7 / 10;
    size_t max_hot = fit > more_users ? fit - (size_t)more_users : 0;
    if (e->n_used <= max_hot) return 0;
    int any = 0, rc = evict_clock(e, UINT64_MAX, max_hot, &any);
    if (e->dead_bytes > e->budget / 8) drop_dead_entries(e);
    return rc;
}

int engine_evict(engine *e, uint64_t target_bytes)
{
    if (!e->cold.put || !e->cold.get) return 0;
    pool_free(e); /* memory is short: the free page stores go first */
    int rc = 0, any = 0;
    /* Appended visits past their share are folded into their blobs first
     * (down to 3/4 of it, so that folds come in batches): kept, each saves
     * the load of its user, and a hot user saves only its own visits'. */
    uint64_t share = target_bytes / COLD_DELTA_SHARE;
    if (e->delta_bytes > share) rc = cold_fold(e, share - share / 4);
    /* the dead structs go with the sweep below, or a later one */
    if (!rc) rc = evict_clock(e, target_bytes, SIZE_MAX, &any);
    /* No hot user left to evict: the appended visits go (all of them if
     * need be: the cold users' index alone may be over the target) */
    uint64_t mem = engine_memory_bytes(e) - e->dead_bytes;
    if (!rc && mem > target_bytes && e->delta_bytes)
        rc = cold_fold(e, e->delta_bytes > mem - target_bytes ? e->delta_bytes - (mem - target_bytes) : 0);
    /* A sweep is a pass over the whole queue (cold users' entries
     * included): after every batch it was most of a spilling job's CPU.
     * Deferred until the dead pass an eighth of the target, the memory stays
     * within target * 9/8, the budget at keep_budget's 7/8 of it. */
    if (e->dead_bytes > target_bytes / 8) drop_dead_entries(e);
    if (any) tables_shrink(e);
    return rc;
}

int engine_cold_rehandle(engine *e, int (*fn)(void *ctx, uint64_t *handle, uint32_t len), void *ctx)
{
    for (size_t i = 0; i < e->n_ctab; i++) {
        cold_user *c = ctab_at(e, i);
        if (!c || !c->len) continue; /* born cold: no record yet */
        int rc = fn(ctx, &c->handle, c->len);
        if (rc) return rc;
    }
    return 0;
}

