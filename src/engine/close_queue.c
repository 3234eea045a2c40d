/*
 * close_queue.c - the sessions in the order they close: a radix heap keyed
 * on each session's last event time, cold users keyed on their earliest
 * session end (engine_internal.h: the layout; invariant I3).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/keyed_sort.h"
#include "common/xalloc.h"
#include "engine/engine_internal.h"

void cq_place(engine *e, uint64_t key, void *s)
{
    assert(key >= e->cq_last);
    unsigned b = cq_bucket_of(e->cq_last, key);
    close_bucket *q = &e->cq[b];
    if (q->len == q->cap) {
        e->cq_cap -= q->cap;
        q->cap = q->cap ? q->cap * 2 : 64;
        e->cq_cap += q->cap;
        e->budget_check_at = 0;
        q->v = xrealloc(q->v, q->cap * sizeof *q->v);
    }
    q->v[q->len++] = (close_entry){key, s};
    if (b) e->cq_nonempty |= UINT64_C(1) << (b - 1);
}

/* Gives back the arrays of empty buckets above 1 MiB. Entries move between
 * buckets, so keeping every bucket's largest size would hold several times
 * the queue's memory after a peak of open sessions; called once per commit,
 * out of the per-visit path (freeing on every drain cost 5% there). */
void cq_trim(engine *e)
{
    for (unsigned b = 0; b < CLOSE_BUCKETS; b++) {
        close_bucket *q = &e->cq[b];
        if (q->len == 0 && q->cap > 65536) {
            e->cq_cap -= q->cap;
            free(q->v);
            q->v = NULL;
            q->cap = 0;
        }
    }
}

void free_dead_session(engine *e, session *s)
{
    assert(s->store == NULL && e->dead_bytes >= heap_bytes(sizeof *s));
    e->dead_bytes -= heap_bytes(sizeof *s);
    session_release(e, s);
}

void free_cold(engine *e, cold_user *c)
{
    cold_delta_free(e, c);
    if (c->dead) {
        assert(e->dead_bytes >= heap_bytes(sizeof *c));
        e->dead_bytes -= heap_bytes(sizeof *c);
    }
    e->mem -= heap_bytes(sizeof *c);
    free(c);
}

static int64_t session_user(const keyed *k) { return ((const session *)k->ptr)->user_id; }

/* How far ahead the closing loops hint the sessions they will reach:
 * sessions close in (last, user) order, so each one's struct, user slot and
 * page store is a cache miss of its own (emit_and_free was 9% of a Kafka
 * run's job thread, nine tenths of it waiting for the slot and the store). */
#define CLOSE_AHEAD 8

/* The closing watermark reaches cold users one at a time: on the long
 * shape at a quarter, a user's first session end every ~2.6 ms of event
 * time (~12 visits), each load a preadv of its own (~2 us in a VM) where a
 * batch's reads go to the kernel in one io_uring_enter (~0.65 us each): 106k
 * of 255k loads a run were such single reads. So the cold users whose
 * first session ends within DUE_AHEAD_US above the queue's last key are
 * loaded with those it reached, DUE_AHEAD_MAX at most. A load at any time
 * changes nothing an output sees (a visit loads its user whenever it
 * needs it): their sessions then close in order with the others, and they
 * stay in memory some ms of event time longer. 32 users of 66 ms, not 16 of
 * 33: io_uring_enter 49k -> 42k a run, CPU -4% at a fixed budget (as many
 * as the store reads ahead at once: AHEAD_SLOTS). */
#define DUE_AHEAD_US ((uint64_t)1 << 16) /* 66 ms of event time */
#define DUE_AHEAD_MAX 32

static void due_push(engine *e, size_t n, cold_user *c)
{
    if (n == e->cap_due) {
        e->budget_check_at = 0;
        e->cap_due = e->cap_due ? e->cap_due * 2 : 64;
        e->due = xrealloc(e->due, e->cap_due * sizeof *e->due);
    }
    e->due[n] = c;
}

/* Adds to the n cold users in e->due those due soon (above), taken out of
 * their buckets; returns how many there are. Only buckets whose keys start
 * within the horizon are looked at (a few dozen entries), and only the
 * stubs of cold entries whose key is within it are read. */
static size_t due_soon(engine *e, size_t n)
{
    uint64_t horizon = e->cq_last > UINT64_MAX - DUE_AHEAD_US ? UINT64_MAX : e->cq_last + DUE_AHEAD_US;
    for (unsigned b = 1; b < CLOSE_BUCKETS && n < DUE_AHEAD_MAX; b++) {
        if (!(e->cq_nonempty & (UINT64_C(1) << (b - 1)))) continue;
        /* keys in bucket b are at least lo, and above those of the buckets below */
        uint64_t lo = ((e->cq_last >> (b - 1)) | 1) << (b - 1);
        if (lo > horizon) break;
        close_bucket *q = &e->cq[b];
        for (size_t i = 0; i < q->len && n < DUE_AHEAD_MAX;) {
            const close_entry *c = &q->v[i];
            if (!entry_is_cold(c) || c->key > horizon) { /* (the key is at most the first end) */
                i++;
                continue;
            }
            cold_user *u = entry_cold(c);
            if (u->dead || cold_first_key(u, c->key) > horizon) {
                i++;
                continue;
            }
            assert(cold_first_key(u, c->key) >= e->cq_last);
            due_push(e, n++, u);
            q->v[i] = q->v[--q->len]; /* out of the queue: load_cold frees the stub */
        }
        if (q->len == 0) e->cq_nonempty &= ~(UINT64_C(1) << (b - 1));
    }
    return n;
}

/* Closes, in (last_t, user_id) order, every open session whose last_t has
 * close key <= upto; frees merged-away sessions met on the way. */
int close_upto(engine *e, uint64_t upto)
{
    for (;;) {
        close_bucket *b0 = &e->cq[0];
        if (b0->len == 0) {
            if (!e->cq_nonempty) {
                e->cq_last = 0; /* empty: any key may come next */
                return 0;
            }
            unsigned b = (unsigned)__builtin_ctzll(e->cq_nonempty) + 1;
            /* Every key in bucket b shares last's bits above b - 1 and has bit
             * b - 1 set: none is below lo. */
            uint64_t lo = ((e->cq_last >> (b - 1)) | 1) << (b - 1);
            if (lo > upto) return 0;
            close_bucket *q = &e->cq[b];
            uint64_t min = UINT64_MAX;
            size_t n = 0;
            for (size_t i = 0; i < q->len; i++) {
                close_entry c = q->v[i];
                if (entry_is_cold(&c)) {
                    if (entry_cold(&c)->dead) {
                        free_cold(e, entry_cold(&c));
                        continue;
                    }
                    c.key = cold_first_key(entry_cold(&c), c.key);
                } else {
                    session *s = entry_session(&c);
                    if (session_dead(s)) {
                        free_dead_session(e, s);
                        continue;
                    }
                    c.key = close_key(s->last_t);
                }
                q->v[n++] = c;
                if (c.key < min) min = c.key;
            }
            e->cq_nonempty &= ~(UINT64_C(1) << (b - 1));
            q->len = 0;
            if (n == 0) continue; /* only merged-away sessions: last stays */
            /* The new last must stay in bucket b's range [lo, hi] for the
             * entries of larger buckets to stay where they are, and at or
             * below upto so that later pushes (>= the closing watermark >
             * upto) are not below it. Re-keyed entries may have grown past
             * hi: they move to larger buckets. Every entry leaves bucket b
             * (q receives none: its array stays put). */
            uint64_t hi = lo | ((UINT64_C(1) << (b - 1)) - 1);
            uint64_t last = min < upto ? min : upto;
            e->cq_last = last < hi ? last : hi;
            /* From the end, a large array giving back its emptied tail
             * each MiB as it goes: the buckets the entries move to grow
             * meanwhile, and the whole source beside them doubled the
             * queue's memory at once (690k cold users' entries: +16 MiB
             * within 4096 records, past --memory-limit before memory_check
             * could see it; then, giving back its emptied half only once a
             * quarter full, still +6.7 MiB: the 1M-user shape's peak 5.9
             * MiB over its quarter). */
            for (size_t i = n; i-- > 0;) {
                cq_place(e, q->v[i].key, q->v[i].ptr);
                if (q->cap > 65536 && q->cap - i >= 65536) {
                    size_t cap = i > 65536 ? i : 65536;
                    e->cq_cap -= q->cap - cap;
                    q->cap = cap;
                    q->v = xrealloc(q->v, cap * sizeof *q->v);
                }
            }
            /* and the last 1 MiB goes too (cq_trim keeps arrays up to it:
             * one per bucket, kept after every such move, held 4 MiB more
             * than the long shape's whole cold index needed) */
            if (q->cap >= 65536) {
                e->cq_cap -= q->cap;
                free(q->v);
                q->v = NULL;
                q->cap = 0;
            }
            continue;
        }
        /* Cold users whose earliest session end the queue reached come back
         * into memory first: their sessions then close in order with the
         * others (the first one lands in bucket 0, the rest above). */
        size_t n_due = 0, kept = 0;
        for (size_t i = 0; i < b0->len; i++) {
            close_entry c = b0->v[i];
            if (!entry_is_cold(&c)) {
                b0->v[kept++] = c;
            } else if (entry_cold(&c)->dead) {
                free_cold(e, entry_cold(&c));
            } else if (cold_first_key(entry_cold(&c), c.key) != e->cq_last) {
                /* its first session grew since (appended visits): later */
                cq_place(e, cold_first_key(entry_cold(&c), c.key), c.ptr);
            } else {
                due_push(e, n_due++, entry_cold(&c));
            }
        }
        b0->len = kept;
        if (n_due > 0) {
            n_due = due_soon(e, n_due);
            /* their reads together (the store may submit them at once) */
            if (e->cold.prefetch && n_due > 1)
                for (size_t i = 0; i < n_due; i++)
                    if (e->due[i]->len) e->cold.prefetch(e->cold.ctx, e->due[i]->handle, e->due[i]->len);
            for (size_t i = 0; i < n_due; i++) {
                assert(cold_find(e, e->due[i]->user_id) == e->due[i]);
                int rc = load_cold(e, e->due[i], 0, NULL);
                if (rc) { /* queued again, so that engine_free finds them */
                    for (size_t k = i; k < n_due; k++) cq_place(e, e->cq_last, cold_tag(e->due[k]));
                    return rc;
                }
            }
            continue;
        }
        /* Bucket 0: keys equal to last <= upto. Entries whose session grew
         * since go back in at their new key (> last: a bucket above 0). The
         * others close, in user_id order: their key field (all equal to
         * last) now holds the user id, mapped to an unsigned in order. */
        size_t n = 0, len = b0->len;
        for (size_t i = 0; i < len; i++) {
            if (i + CLOSE_AHEAD < len) __builtin_prefetch(entry_session(&b0->v[i + CLOSE_AHEAD]));
            session *s = entry_session(&b0->v[i]);
            if (session_dead(s)) {
                free_dead_session(e, s);
            } else if (close_key(s->last_t) != e->cq_last) {
                cq_place(e, close_key(s->last_t), s);
            } else {
                b0->v[n++] = (close_entry){e->cfg.string_users ? name_prefix(&e->names[s->user_id])
                                                               : keyed_from_i64(s->user_id),
                                           s};
            }
        }
        keyed_sort(b0->v, n);
        if (e->cfg.string_users) settle_string_ties(e, b0->v, n, session_user);
        for (size_t i = 0; i < n; i++) {
            /* in the loop, not a function: GCC 12 dropped the hints of one */
            if (i + CLOSE_AHEAD < n) {
                const close_entry *a = &b0->v[i + CLOSE_AHEAD];
                __builtin_prefetch(entry_session(a));
                if (!e->cfg.string_users) /* the key is the user id (above) */
                    __builtin_prefetch(&e->slots[mix64((uint64_t)keyed_to_i64(a->key)) & (e->n_slots - 1)]);
            }
            if (i + CLOSE_AHEAD / 2 < n) {
                const session *a = entry_session(&b0->v[i + CLOSE_AHEAD / 2]);
                if (a->store) __builtin_prefetch(a->store);
            }
            int rc = emit_and_free(e, entry_session(&b0->v[i]));
            if (rc) { /* keep the rest queued, so that engine_free finds them */
                memmove(b0->v, b0->v + i + 1, (n - i - 1) * sizeof *b0->v);
                b0->len = n - i - 1;
                for (size_t k = 0; k < b0->len; k++) b0->v[k].key = e->cq_last;
                return rc;
            }
        }
        b0->len = 0;
    }
}

