/*
 * invariants.c - engine_check_invariants: I1-I9 of engine_internal.h,
 * checked from scratch. The unit tests call it after every operation on
 * random inputs; it is never on the job's path.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "engine/engine_internal.h"

int engine_check_invariants(const engine *e)
{
    uint64_t sessions = 0, pages = 0, cold = 0, deltas = 0, delta_bytes = 0;
    for (size_t i = 0; i < e->n_slots; i++) {
        const user_slot *u = &e->slots[i];
        if (!u->used) continue;
        if (cold_find(e, u->user_id)) return 3; /* hot and cold at once */
        for (const session *s = u->head; s; s = s->next) {
            sessions++;
            pages += s->n_pages;
            if (s->user_id != u->user_id || session_dead(s) || s->first_t > s->last_t) return 1;
            if (s->next && s->next->first_t - s->last_t <= e->cfg.gap_us) return 1;
            const page_entry *p = pages_of(s);
            if (s->n_pages > e->cfg.max_pages || s->n_pages > s->cap_pages ||
                s->arena_len > s->arena_cap || s->page_bytes > e->cfg.max_session_bytes)
                return 2;
            uint64_t text = 0;
            for (uint32_t k = 0; k < s->n_pages; k++) {
                text += p[k].len;
                if (p[k].t < s->first_t || p[k].t > s->last_t) return 2;
                if (!before_cut(s, p[k].t, p[k].partition, p[k].offset)) return 2;
                if ((uint64_t)p[k].str_off + p[k].len > s->arena_len) return 2;
                if (k > 0 && !page_before(&p[k - 1], p[k].t, p[k].partition, p[k].offset)) return 2;
            }
            if (text != s->page_bytes) return 2;
            if (e->closing_wm != INT64_MIN && s->last_t + e->cfg.gap_us < e->closing_wm) return 4;
        }
    }
    for (size_t i = 0; i < e->n_ctab; i++) {
        const cold_user *c = ctab_at(e, i);
        if (!c) continue;
        cold++;
        if (cold_find(e, c->user_id) != c || c->dead || (c->len == 0 && !c->delta)) return 3;
        uint64_t h = mix64((uint64_t)c->user_id);
        if (ctab_tag_of(e->ctab[i]) != ctab_tag(h, (i - h) & (e->n_ctab - 1))) return 3; /* its tag */
        if (c->delta) {
            size_t size = offsetof(cold_delta, data) + c->delta->cap;
            unsigned k = store_class_of(size); /* a block of a class (I7: the pool's) */
            if (c->delta->len == 0 || c->delta->len > c->delta->cap || k == STORE_CLASSES ||
                store_class[k] != size)
                return 8;
            deltas++;
            delta_bytes += heap_bytes(size);
        }
    }
    if (deltas != e->n_delta || delta_bytes != e->delta_bytes) return 8;
    uint64_t live = 0, live_cold = 0, dead = 0;
    int64_t due_upto = 0;
    int any_due = e->closing_wm != INT64_MIN &&
                  !__builtin_sub_overflow(e->closing_wm, e->cfg.gap_us + 1, &due_upto);
    for (unsigned b = 0; b < CLOSE_BUCKETS; b++) {
        const close_bucket *q = &e->cq[b];
        if (b > 0 && q->len > 0 && !(e->cq_nonempty & (UINT64_C(1) << (b - 1)))) return 3;
        for (size_t i = 0; i < q->len; i++) {
            const close_entry *c = &q->v[i];
            if (c->key < e->cq_last || cq_bucket_of(e->cq_last, c->key) != b) return 3;
            if (entry_is_cold(c)) {
                if (entry_cold(c)->dead) {
                    if (entry_cold(c)->delta) return 8;
                    dead += heap_bytes(sizeof(cold_user));
                    continue;
                }
                live_cold++;
                if (any_due && c->key <= close_key(due_upto)) return 4;
                if (e->cold.get && cold_stub_broken(e, entry_cold(c), c->key)) return 8;
                continue;
            }
            if (session_dead(entry_session(c))) {
                dead += heap_bytes(sizeof(session));
                continue;
            }
            live++;
            if (c->key > close_key(entry_session(c)->last_t)) return 3;
        }
    }
    if (live != sessions || live_cold != cold || cold != e->n_cold || cold != e->st.cold_users ||
        dead != e->dead_bytes)
        return 3;
    if (sessions + e->cold_sessions != e->st.open_sessions ||
        pages + e->cold_pages != e->st.open_pages)
        return 5;
    /* I7: the free lists and mem */
    uint64_t pooled = 0, mem = e->dead_bytes + cold * heap_bytes(sizeof(cold_user)) + delta_bytes;
    for (unsigned k = 0; k < STORE_CLASSES; k++)
        for (const unsigned char *b = e->pool[k]; b;) {
            pooled += heap_bytes(store_class[k]);
            void *next;
            memcpy(&next, b, sizeof next);
            b = next;
        }
    for (const session *s = e->pool_sessions; s; s = s->next) pooled += heap_bytes(sizeof *s);
    if (pooled != e->pool_bytes || pooled > POOL_MAX_BYTES) return 7;
    for (size_t i = 0; i < e->n_slots; i++)
        for (const session *s = e->slots[i].used ? e->slots[i].head : NULL; s; s = s->next)
            mem += heap_bytes(sizeof *s) + (s->store ? heap_bytes(store_size(s)) : 0);
    for (size_t i = 0; i < e->n_names; i++)
        if (e->names[i].bytes) mem += heap_bytes(e->names[i].len ? e->names[i].len : 1);
    if (mem + pooled != e->mem) return 7;
    if (e->cfg.string_users) {
        if (e->n_interned != e->n_used + e->n_cold || e->n_interned + e->n_free != e->n_names) return 6;
        for (size_t i = 0; i < e->n_slots + e->n_ctab; i++) {
            int64_t id;
            if (i < e->n_slots) {
                if (!e->slots[i].used) continue;
                id = e->slots[i].user_id;
            } else {
                if (!e->ctab[i - e->n_slots]) continue;
                id = ctab_at(e, i - e->n_slots)->user_id;
            }
            if (id < 0 || (size_t)id >= e->n_names) return 6;
            const user_name *n = &e->names[id];
            if (!n->bytes || intern_find(e, n->bytes, n->len, n->hash) != id) return 6;
        }
    }
    return 0;
}

