/*
 * engine.c - event-time session windows (rules in engine.h and
 * docs/semantics.md): a visit's way in (the future rule, lateness, the
 * session it joins), the watermarks, and the sessions' closing.
 *
 * The engine's files, along the data's way:
 *   engine_internal.h  the state: its layout and invariants I1-I9
 *   engine.c           apply, watermarks, closing, the public API
 *   users.c            the user map, the cold table, string users
 *   session.c          a session's pages, caps and merges
 *   close_queue.c      the radix heap sessions close from
 *   snapshot.c         the state as the checkpoint holds it, and its restore
 *   spill.c            the memory budget: evicting and loading cold users
 *   invariants.c       engine_check_invariants, for the tests
 */
#include "engine/engine.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "engine/engine_internal.h"
#include "engine/session_id.h"

/* A session closes: the callback sees it, then its user's list, the dirty
 * users and the heap let it go. */
int emit_and_free(engine *e, session *s)
{
    if (s->n_pages > e->cap_refs) {
        e->budget_check_at = 0;
        e->cap_refs = s->n_pages;
        e->scratch_refs = xrealloc(e->scratch_refs, e->cap_refs * sizeof *e->scratch_refs);
    }
    const page_entry *pages = pages_of(s);
    const char *text = s->store ? arena_of(s) : NULL; /* every page may be over the cap */
    for (uint32_t i = 0; i < s->n_pages; i++)
        e->scratch_refs[i] = (page_ref){text + pages[i].str_off, pages[i].len};
    const user_name *name = e->cfg.string_users ? &e->names[s->user_id] : NULL;
    closed_session cs = {.session_id = name ? session_id_of_string(name->bytes, name->len,
                                                                   &s->first_pos)
                                            : session_id_of(s->user_id, &s->first_pos),
                         .first_pos = s->first_pos,
                         .last_partition = s->last_part,
                         .last_offset = s->last_off,
                         .user_id = name ? 0 : s->user_id,
                         .user = name ? name->bytes : NULL,
                         .user_len = name ? name->len : 0,
                         .visits = s->visits,
                         .first_event_us = s->first_t,
                         .last_event_us = s->last_t,
                         .pages = e->scratch_refs,
                         .n_pages = s->n_pages};
    e->st.sessions_closed++;
    e->st.pages_closed += s->n_pages;
    e->st.open_sessions--;
    e->st.open_pages -= s->n_pages;
    int rc = e->cb.on_close ? e->cb.on_close(e->cb.ctx, &cs) : 0;

    user_slot *u = user_find(e, s->user_id);
    assert(u != NULL);
    session **pp = &u->head;
    while (*pp != s) pp = &(*pp)->next;
    *pp = s->next;
    mark_dirty(e, u);
    user_release_if_empty(e, u);
    session_free(e, s);
    return rc;
}

/* Closes the sessions with last + G < closing_wm, i.e. last <= closing_wm - G - 1. */
int close_expired(engine *e)
{
    int64_t upto;
    if (e->closing_wm == INT64_MIN ||
        __builtin_sub_overflow(e->closing_wm, e->cfg.gap_us + 1, &upto))
        return 0;
    return close_upto(e, close_key(upto));
}

/* A partition's state, made on its first visit (partitions are few: a scan). */
partition_state *partition_get(engine *e, int32_t id)
{
    for (size_t i = 0; i < e->n_parts; i++)
        if (e->parts[i].id == id) return &e->parts[i];
    e->parts = xrealloc(e->parts, (e->n_parts + 1) * sizeof *e->parts);
    partition_state *p = &e->parts[e->n_parts++];
    *p = (partition_state){.id = id, .caught_up = 0, .max_t = INT64_MIN};
    buf_init(&p->page);
    buf_init(&p->user);
    return p;
}

static void recompute_closing_wm(engine *e)
{
    if (e->replaying) return;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    int active = 0;
    for (size_t i = 0; i < e->n_parts; i++) {
        int64_t wm = wm_of(e, e->parts[i].max_t);
        if (wm > hi) hi = wm;
        if (!e->parts[i].caught_up) {
            active = 1;
            if (wm < lo) lo = wm;
        }
    }
    int64_t cand = active ? lo : hi;
    if (e->n_parts > 0 && cand > e->closing_wm) e->closing_wm = cand;
}

/* ---- public API --------------------------------------------------------- */

engine *engine_new(const engine_config *cfg, const engine_callbacks *cb)
{
    engine *e = xcalloc(1, sizeof *e);
    e->cfg = *cfg;
    if (e->cfg.max_pages == 0) e->cfg.max_pages = 1;
    if (e->cfg.max_session_bytes == 0 || e->cfg.max_session_bytes > ENGINE_MAX_SESSION_BYTES)
        e->cfg.max_session_bytes = ENGINE_MAX_SESSION_BYTES;
    if (cb) e->cb = *cb;
    e->closing_wm = INT64_MIN;
    e->epoch = 1;
    user_grow(e);
    buf_init(&e->cold_buf);
    return e;
}

void engine_free(engine *e)
{
    if (!e) return;
    for (size_t b = 0; b < CLOSE_BUCKETS; b++) {
        for (size_t i = 0; i < e->cq[b].len; i++) {
            const close_entry *c = &e->cq[b].v[i];
            if (entry_is_cold(c)) free_cold(e, entry_cold(c));
            else session_free(e, entry_session(c));
        }
        free(e->cq[b].v);
    }
    free(e->slots);
    free(e->ctab); /* the stubs went with their close-queue entries */
    for (size_t i = 0; i < e->n_parts; i++) buf_free(&e->parts[i].page), buf_free(&e->parts[i].user);
    free(e->parts);
    free(e->dirty);
    free(e->scratch_refs);
    for (size_t i = 0; i < e->n_names; i++) free(e->names[i].bytes);
    free(e->names);
    free(e->itab);
    free(e->free_ids);
    buf_free(&e->cold_buf);
    free(e->due);
    pool_free(e);
    free(e);
}

int engine_too_far_ahead(const engine_config *cfg, int64_t t, int64_t append_ts_ms)
{
    int64_t bound;
    if (cfg->max_future_us <= 0 || append_ts_ms == 0) return 0;
    if (__builtin_mul_overflow(append_ts_ms, 1000, &bound) ||
        __builtin_add_overflow(bound, cfg->max_future_us, &bound))
        return 0;
    return t > bound;
}

const char *engine_future_detail(int64_t append_ts_ms)
{
    return append_ts_ms ? "event time more than --max-future ahead of the record's append time"
                        : "event time more than --max-future ahead of the next visit of its "
                          "partition";
}

static int apply_visit(engine *e, partition_state *p, const visit *v);

static int reject_future(engine *e, const visit *v)
{
    e->st.rejected_future++;
    return e->cb.on_reject ? e->cb.on_reject(e->cb.ctx, v, REJECT_FUTURE) : 0;
}

/* Applies the partition's held visit (its future is confirmed, or the input
 * ended) or rejects it (refuted). */
static int release_held(engine *e, partition_state *p, int confirmed)
{
    visit h = p->held;
    h.page = p->page.data ? (const char *)p->page.data : "";
    if (h.user) h.user = p->user.data ? (const char *)p->user.data : "";
    p->has_held = 0;
    e->st.held_visits--;
    return confirmed ? apply_visit(e, p, &h) : reject_future(e, &h);
}

/* The future rule for a visit without append time (engine.h): one that
 * starts a partition or jumps more than F above its highest accepted time
 * is held; the next visit of the partition confirms it (it is not more than
 * F below it: the stream really moved) or refutes it (future). */
static int future_rule(engine *e, partition_state *p, const visit *v, int *held)
{
    int64_t f = e->cfg.max_future_us, t = v->event_time_us, floor;
    *held = 0;
    if (p->has_held) {
        if (__builtin_sub_overflow(p->held.event_time_us, f, &floor)) floor = INT64_MIN;
        int rc = release_held(e, p, t >= floor);
        if (rc) return rc;
    }
    int64_t bound;
    int jump = p->max_t == INT64_MIN || (!__builtin_add_overflow(p->max_t, f, &bound) && t > bound);
    if (!jump) return 0;
    p->held = *v;
    buf_reset(&p->page);
    buf_append(&p->page, v->page, v->page_len);
    buf_reset(&p->user);
    if (v->user) buf_append(&p->user, v->user, v->user_len);
    p->has_held = 1;
    e->st.held_visits++;
    *held = 1;
    return 0;
}

static int apply_one(engine *e, const visit *v)
{
    partition_state *p = partition_get(e, v->pos.partition);
    /* A replayed visit was accepted, in this order, past the future rule;
     * the commit's held visits come back with its meta (engine_replay_end). */
    if (e->replaying) return apply_visit(e, p, v);
    if (engine_too_far_ahead(&e->cfg, v->event_time_us, v->pos.append_ts_ms))
        return reject_future(e, v);
    if (e->cfg.max_future_us > 0 && v->pos.append_ts_ms == 0) {
        int held, rc = future_rule(e, p, v, &held);
        if (rc || held) return rc;
    }
    return apply_visit(e, p, v);
}

int engine_apply(engine *e, const visit *v)
{
    int rc = apply_one(e, v);
    return rc ? rc : keep_budget(e);
}

/* Lateness, then the visit joins its session. */
static int apply_visit(engine *e, partition_state *p, const visit *v)
{
    int64_t t = v->event_time_us;
    if (t < wm_of(e, p->max_t) || t < e->closing_wm) {
        e->st.rejected_late++;
        return e->cb.on_reject ? e->cb.on_reject(e->cb.ctx, v, REJECT_LATE) : 0;
    }
    e->st.visits_applied++;
    if (e->cb.on_accept) {
        int rc = e->cb.on_accept(e->cb.ctx, v);
        if (rc) return rc;
    }

    /* The cold table first: while spilling, most visits find their user
     * there (a user is hot or cold, never both), and engine_prefetch
     * brought in the user's slot only when no stub's tag matched. A visit
     * that only appends to a cold user (or makes a new user cold at once,
     * while spilling) does not load it (cold_append.c). */
    int64_t uid = user_of(e, v);
    user_slot *u = NULL;
    cold_user *c = cold_find(e, uid);
    if (c) {
        if (cold_append(e, c, v)) goto applied;
        int rc = load_cold(e, c, 1, &u);
        if (rc) return rc;
    } else if (!e->n_cold || !(u = user_find(e, uid))) {
        if (cold_birth(e, uid, v)) goto applied;
        u = user_insert(e, uid);
    }
    u->touched = 1;
    mark_dirty(e, u);
    int64_t g = e->cfg.gap_us;
    session **pp = &u->head, *hit = NULL;
    while (*pp && (*pp)->last_t + g < t) pp = &(*pp)->next;
    /* *pp is the first session that does not end more than G before t. */
    if (*pp && (*pp)->first_t - g <= t) hit = *pp;

    int rc = 0;
    if (!hit) {
        session *s = session_new(e, uid, v);
        s->next = *pp;
        *pp = s;
        close_queue_push(e, s);
        e->st.open_sessions++;
        e->st.sessions_opened++;
        hit = s;
    } else {
        session *after = hit->next;
        if (after && after->first_t - g <= t) { /* t bridges hit and after */
            hit->next = after->next;
            rc = session_merge(e, hit, after);
        }
        if (t < hit->first_t) hit->first_t = t;
        if (t > hit->last_t) hit->last_t = t;
        if (log_position_cmp(&v->pos, &hit->first_pos) < 0) hit->first_pos = v->pos;
        session_raise_last(hit, v->pos.partition, v->pos.offset);
    }
    hit->visits++;
    int rc2 = session_add_page(e, hit, v);
    if (!rc) rc = rc2;
    if (rc) return rc;

applied:
    if (t > p->max_t) {
        p->max_t = t;
        recompute_closing_wm(e);
    }
    return close_expired(e);
}

void engine_prefetch(const engine *e, int64_t user_id, int stage)
{
    if (e->cfg.string_users) return; /* the id is known only once interned */
    uint64_t h = mix64((uint64_t)user_id);
    if (e->n_cold) {
        /* While spilling, most visits find their user cold (apply_visit
         * looks there first): its slot in the cold table, then the stubs of
         * its chain whose tag matches (usually the one, none read yet) or,
         * with none, the user's slot (the hot stages follow a stage
         * behind), then the head of its appended visits, then their end
         * and, for a visit that will likely need the user whole, its blob:
         * the store can read it ahead, several at once, instead of one
         * system call when the visit needs it. */
        size_t mask = e->n_ctab - 1;
        if (stage == 0) {
            __builtin_prefetch(&e->ctab[h & mask]);
            return;
        }
        if (stage == 1) {
            int any = 0;
            size_t dist = 0;
            for (size_t i = h & mask; e->ctab[i]; i = (i + 1) & mask, dist++)
                if (ctab_tag_of(e->ctab[i]) == ctab_tag(h, dist)) __builtin_prefetch(ctab_at(e, i)), any = 1;
            if (!any) __builtin_prefetch(&e->slots[h & (e->n_slots - 1)]);
            return;
        }
        const cold_user *c = cold_find(e, user_id);
        if (c) {
            if (!c->delta) return;
            if (stage == 2) {
                __builtin_prefetch(c->delta, 1);
                return;
            }
            __builtin_prefetch(c->delta->data + c->delta->len, 1);
            if (e->cold.prefetch && c->len && !cold_may_append(c)) e->cold.prefetch(e->cold.ctx, c->handle, c->len);
            return;
        }
        stage--;
    }
    /* A hot user: its slot, its first session, that session's last page
     * and the end of its text. */
    const user_slot *u = &e->slots[h & (e->n_slots - 1)];
    if (stage == 0) {
        __builtin_prefetch(u);
        return;
    }
    /* Only the common case of a user in its home slot is worth a hint. */
    if (!u->used || u->user_id != user_id || !u->head) return;
    const session *s = u->head;
    if (stage == 1) {
        __builtin_prefetch(s);
        return;
    }
    if (stage == 2 && s->store && s->n_pages > 0) {
        __builtin_prefetch(&pages_of(s)[s->n_pages - 1], 1);
        __builtin_prefetch(arena_of(s) + s->arena_len, 1);
    }
}

int engine_set_caught_up(engine *e, int32_t partition, int caught_up)
{
    partition_state *p = partition_get(e, partition);
    if (p->caught_up == (caught_up != 0)) return 0;
    p->caught_up = caught_up != 0;
    recompute_closing_wm(e);
    return close_expired(e);
}

int engine_advance_partition(engine *e, int32_t partition, int64_t max_t)
{
    partition_state *p = partition_get(e, partition);
    if (max_t <= p->max_t) return 0;
    p->max_t = max_t;
    recompute_closing_wm(e);
    return close_expired(e);
}

int engine_release_held(engine *e)
{
    /* A replay finds the visits released at the end in the log. */
    if (e->replaying) return 0;
    for (size_t i = 0; i < e->n_parts; i++)
        if (e->parts[i].has_held) {
            int rc = release_held(e, &e->parts[i], 1);
            if (rc) return rc;
        }
    return 0;
}

int engine_close_all(engine *e)
{
    int rc = engine_release_held(e);
    return rc ? rc : close_upto(e, UINT64_MAX);
}

int64_t engine_closing_watermark(const engine *e) { return e->closing_wm; }

void engine_get_counters(const engine *e, engine_stats *out)
{
    *out = e->st;
    out->open_users = 0;
    out->memory_bytes = engine_memory_bytes(e);
}

void engine_get_stats(const engine *e, engine_stats *out)
{
    *out = e->st;
    out->user_ids = e->n_names;
    out->memory_bytes = engine_memory_bytes(e);
    out->open_users = e->n_cold;
    for (size_t i = 0; i < e->n_slots; i++)
        if (e->slots[i].used && e->slots[i].head) out->open_users++;
}

engine_callbacks engine_swap_callbacks(engine *e, const engine_callbacks *cb)
{
    engine_callbacks old = e->cb;
    e->cb = *cb;
    return old;
}

