/*
 * engine.c - event-time session windows (rules in engine.h and
 * docs/semantics.md).
 *
 * Data layout, chosen for memory per open session (the limit users hit first
 * with millions of users):
 *  - users: open-addressing hash map user_id -> list of that user's open
 *    sessions, sorted by first event time (almost always one session);
 *  - string users (--user-type string) are interned: a second map from the
 *    user's bytes to a dense int64 id, which the rest of the engine uses as
 *    it uses an int user. Exact (the bytes are compared, so two users never
 *    share an id whatever their hashes), and bounded: an id lives exactly as
 *    long as its user slot (the one reference), and a released id is reused,
 *    so the table holds the open users and never grows with the users seen.
 *    The ids never leave the engine: sinks, the checkpoint and the order of
 *    ties see the bytes;
 *  - each session owns a sorted array of page entries and one byte arena for
 *    the page strings: three allocations per session, none per visit on the
 *    common path (pages arrive in order and the arrays grow geometrically);
 *  - close queue: a radix heap (Ahuja, Mehlhorn, Orlin, Tarjan 1990) with
 *    one entry per session, keyed on its last event time. A radix heap needs
 *    monotone keys (none pushed below the last popped one), which event time
 *    gives: a new session starts at or above the closing watermark, and a
 *    session only closes once its last time is G below it. Bucket b > 0 holds
 *    the keys whose highest bit differing from `last` is b - 1, bucket 0 the
 *    keys equal to it; pushing is an append, and closing walks the buckets
 *    upwards, moving a bucket's entries down (to a smaller bucket each time)
 *    until the smallest keys sit in bucket 0. It replaced a binary heap that
 *    spent a quarter of the engine's time sifting on Kafka's delivery order
 *    (bench/engine_order.c). Keys are updated lazily: a visit that extends a
 *    session only raises s->last_t; the entry is re-keyed when it is moved or
 *    reaches bucket 0. Sessions with equal last times close in user_id
 *    order, so sessions close in (last, user_id) order, a total order among
 *    open sessions (two of one user are > G apart).
 *
 * Invariants (checked by engine_check_invariants(), which the unit tests
 * call after every operation on random inputs):
 *  I1. Two open sessions of one user are more than G apart
 *      (next.first - prev.last > G), and the list is sorted by first.
 *  I2. A session's pages are sorted by (t, partition, offset), number at
 *      most max_pages and hold page_bytes <= max_session_bytes bytes of
 *      text; every page time lies in [first, last] and before the cut.
 *  I3. Every open or merged-away session has exactly one close-queue entry,
 *      whose key is <= the session's last_t and >= the queue's `last`, in
 *      the bucket its key and `last` determine; merged-away sessions are
 *      marked dead and freed when the queue reaches their entry.
 *  I4. closing_wm never decreases, and no open session has
 *      last + G < closing_wm after any public call returns.
 *  I5. The counters open_sessions and open_pages match the state.
 *  I6. String users: every user slot's id is interned, to bytes that find
 *      that id again, and nothing else is (one id per slot, no leak).
 *  I7. The page-store free lists hold pool_bytes <= POOL_MAX_BYTES of heap,
 *      and mem is exactly the heap bytes of the sessions, their stores, the
 *      dead structs, the cold users, the string users' bytes and the lists.
 */
#include "engine/engine.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/keyed_sort.h"
#include "common/xalloc.h"
#include "engine/session_id.h"

typedef struct page_entry {
    int64_t t;
    int64_t offset;
    int32_t partition;
    uint32_t str_off; /* into the session's arena */
    uint32_t len;
} page_entry;

/* One block holds a session's pages: cap_pages entries, then arena_cap
 * bytes of page text. One allocation instead of two saves a malloc header
 * and a pointer per session, which is most of the overhead at 1M sessions. */
typedef struct session {
    int64_t user_id;
    int64_t first_t, last_t;
    log_position first_pos; /* earliest-appended member visit */
    /* The greatest (partition, offset) of a member visit: unique to the
     * session like first_pos, but growing with the order sessions close in
     * (closed_session.h). last_part < 0: unknown (a blob from before it). */
    int64_t last_off;
    unsigned char *store;   /* page_entry[cap_pages] followed by arena_cap bytes */
    struct session *next;
    uint32_t n_pages, cap_pages;
    uint32_t arena_len, arena_cap; /* arena_len counts evicted pages' text too */
    /* Visits accepted into the session, those over the page cap included;
     * 0 marks a session merged into another, freed when the close queue
     * reaches it (a live session has at least one visit). */
    uint64_t visits;
    uint32_t page_bytes; /* text of the stored pages */
    /* The cut: the earliest page, in page order, left out by the cap (cut_t
     * == NO_CUT: none). The kept pages are the longest run within the caps,
     * so every page after the cut is out too, whatever arrives later: the
     * engine must remember where the run ended to reject them. */
    int32_t cut_part;
    int32_t last_part;
    int64_t cut_t, cut_off;
} session;

#define NO_CUT INT64_MAX /* above any event time (years 0000-9999) */

static inline int session_dead(const session *s) { return s->visits == 0; }

static inline page_entry *pages_of(const session *s) { return (page_entry *)(void *)s->store; }
static inline char *arena_of(const session *s)
{
    return (char *)s->store + (size_t)s->cap_pages * sizeof(page_entry);
}

/* Page stores grow into blocks of a few size classes (by half at least),
 * and a block given back waits in its class's free list (LIFO: the next
 * growth takes the block the last close or growth freed, still in cache)
 * for the next session growing to that size. Growing every store by
 * realloc to its own size cost a fifth of the engine's time on long
 * sessions (glibc splitting, coalescing and unlinking blocks of every size).
 * A growth always moves (a realloc in place would keep the old block from
 * its list, which then ran dry). The classes are malloc's chunk sizes less its 8-byte
 * header, about 1.5x apart; a session's first store is an exact fit (most
 * sessions have one page), stores above the last class are sized exactly.
 * The lists hold at most POOL_MAX_BYTES (and a 64th of a memory budget),
 * counted as the engine's memory (mem), and go first when it evicts. */
#define STORE_CLASSES 15
static const uint32_t store_class[STORE_CLASSES] = {56,   88,   120,  184,  248,  376,  504, 760,
                                                    1016, 1528, 2040, 3064, 4088, 6136, 8184};
#define POOL_MAX_BYTES ((uint64_t)4 << 20)

/* The smallest class holding n bytes, or STORE_CLASSES if none does. */
static inline unsigned store_class_of(uint64_t n)
{
    unsigned k = 0;
    while (k < STORE_CLASSES && store_class[k] < n) k++;
    return k;
}

/* A user whose sessions were evicted to the cold store (engine_set_cold_store):
 * all that memory keeps of it. It leaves the user table (which thus holds
 * the hot users only, and does not grow with the cold ones) for the cold
 * table, an array of pointers to these, and has one close-queue entry keyed
 * on its earliest session end (the first session's last_t: a user's sessions
 * are disjoint and sorted), so that the watermark finds it without reading
 * the store. 24 bytes, a 32-byte heap chunk. */
typedef struct cold_user {
    int64_t user_id;
    uint64_t handle;   /* the store's name for the blob */
    uint32_t len;      /* the blob's bytes */
    uint8_t dead;      /* loaded back: freed when the close queue reaches it */
    uint8_t persisted; /* the user slot's, kept while cold */
    uint8_t listed;    /* in engine.dirty for the current epoch (its slot's dirty_epoch) */
} cold_user;

/* An entry of the close queue: key = close_key(t) for some t <= the
 * session's last_t (stale until re-keyed), ptr = the session; or, with the
 * pointer's low bit set, a cold user keyed on its earliest session end
 * (exact: a cold user does not change). */
typedef keyed close_entry;
static inline int entry_is_cold(const close_entry *c) { return ((uintptr_t)c->ptr & 1) != 0; }
static inline session *entry_session(const close_entry *c) { return c->ptr; }
static inline cold_user *entry_cold(const close_entry *c)
{
    return (cold_user *)((uintptr_t)c->ptr & ~(uintptr_t)1);
}
static inline void *cold_tag(cold_user *c) { return (void *)((uintptr_t)c | 1); }
_Static_assert(_Alignof(cold_user) >= 2, "the low bit of a cold user's address is free for the tag");

typedef struct close_bucket {
    close_entry *v;
    size_t len, cap;
} close_bucket;

#define CLOSE_BUCKETS 65 /* bucket 0: key == last; bucket b: highest differing bit b - 1 */

typedef struct user_slot {
    int64_t user_id;
    session *head;        /* NULL: free slot, or a user awaiting checkpoint deletion */
    uint32_t dirty_epoch; /* == engine.epoch: already listed in engine.dirty */
    uint8_t used;
    uint8_t persisted; /* the checkpoint holds a row for this user */
    uint8_t touched;   /* applied to since the eviction clock's hand last passed */
} user_slot;
_Static_assert(sizeof(user_slot) == 24, "a user slot stays 24 bytes: it is paid per hot user");
_Static_assert(sizeof(cold_user) == 24, "a cold user fits a 32-byte heap chunk");

/* An interned string user (see the top of this file). */
typedef struct user_name {
    char *bytes; /* NULL: a free id */
    uint32_t len;
    uint64_t hash;
} user_name;

typedef struct partition_state {
    int32_t id;
    int caught_up;
    int64_t max_t; /* INT64_MIN until the partition accepts a visit */
    /* A visit without append time that the future rule holds until the next
     * visit of the partition confirms or refutes it (held.page in page). */
    int has_held;
    visit held;
    buf page, user; /* the held visit's page, and its user when string users */
} partition_state;

struct engine {
    engine_config cfg;
    engine_callbacks cb;

    user_slot *slots; /* hot users (and users awaiting their deletion's commit) */
    size_t n_slots; /* power of two */
    size_t n_used;
    /* Cold users: open addressing (linear probing on the user id) over
     * pointers to their stubs; n_ctab 0 or a power of two. */
    cold_user **ctab;
    size_t n_ctab, n_cold;

    close_bucket cq[CLOSE_BUCKETS];
    uint64_t cq_last;     /* no key below it is, or will be, in the queue */
    uint64_t cq_nonempty; /* bit b - 1 set: bucket b (b >= 1) may hold entries */

    partition_state *parts;
    size_t n_parts;
    int64_t closing_wm;

    uint32_t epoch;
    int64_t *dirty;
    size_t n_dirty, cap_dirty;

    /* String users: id -> bytes, bytes -> id (open addressing over ids + 1),
     * and the ids free for reuse. */
    user_name *names;
    size_t n_names, cap_names;
    uint32_t *itab;
    size_t n_itab, n_interned; /* n_itab: a power of two */
    int64_t *free_ids;
    size_t n_free, cap_free;

    page_ref *scratch_refs; /* pages of the session being emitted */
    size_t cap_refs;

    engine_stats st;
    int replaying; /* between engine_replay_begin and _end: closing watermark held */

    /* State larger than memory (engine_set_cold_store). mem counts the heap
     * bytes of sessions, page stores, cold users and string users' bytes as
     * malloc sizes them; the tables are added by engine_memory_bytes. */
    engine_cold_store cold;
    uint64_t budget;
    uint64_t mem, cq_cap; /* cq_cap: entries the close queue's arrays hold room for */
    uint64_t cold_sessions, cold_pages; /* of open_sessions/open_pages, those in the store */
    /* Of mem, the structs of dead sessions and cold users still queued:
     * swept in one pass over the queue once they pass an eighth of what
     * eviction aims at (engine_evict), not after every batch. */
    uint64_t dead_bytes;
    size_t hand;        /* the eviction clock's position in slots */
    uint64_t evict_again; /* keep_budget's: no eviction below this */
    /* keep_budget's fast path: while mem stays below this and no table
     * grew (each growth sets it to 0), memory is within the budget (or
     * below evict_again) without adding it up at every visit */
    uint64_t budget_check_at;
    buf cold_buf;       /* a blob on its way to or from the store */
    /* Page stores given back, by size class (store_release): counted in mem. */
    void *pool[STORE_CLASSES];
    uint64_t pool_bytes;
    cold_user **due;    /* cold users the closing watermark reached, being loaded */
    size_t cap_due;
};

/* What malloc takes for n bytes (glibc: 8 bytes of header, 16-byte
 * granules, 32 at least): the budget is on resident memory, not on what
 * was asked for. */
static inline uint64_t heap_bytes(size_t n)
{
    if (n == 0) return 0;
    uint64_t c = ((uint64_t)n + 8 + 15) & ~(uint64_t)15;
    return c < 32 ? 32 : c;
}

/* ---- small helpers --------------------------------------------------- */

static inline uint64_t mix64(uint64_t x) /* splitmix64 finalizer */
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline int64_t wm_of(const engine *e, int64_t max_t)
{
    return max_t == INT64_MIN ? INT64_MIN : max_t - e->cfg.lateness_us;
}

static inline int page_before(const page_entry *a, int64_t t, int32_t part, int64_t off)
{
    if (a->t != t) return a->t < t;
    if (a->partition != part) return a->partition < part;
    return a->offset < off;
}

/* (t, part, off) comes before the session's cut (always, without one). */
static inline int before_cut(const session *s, int64_t t, int32_t part, int64_t off)
{
    if (t != s->cut_t) return t < s->cut_t;
    if (part != s->cut_part) return part < s->cut_part;
    return off < s->cut_off;
}

static inline void lower_cut(session *s, int64_t t, int32_t part, int64_t off)
{
    if (before_cut(s, t, part, off)) s->cut_t = t, s->cut_part = part, s->cut_off = off;
}

/* ---- string users: interning ------------------------------------------- */

static uint64_t name_hash(const char *s, uint32_t len) { return XXH3_64bits(s, len); }

static void itab_place(engine *e, int64_t id)
{
    size_t mask = e->n_itab - 1;
    size_t i = e->names[id].hash & mask;
    while (e->itab[i]) i = (i + 1) & mask;
    e->itab[i] = (uint32_t)(id + 1);
}

/* The id of a string user, or -1. */
static int64_t intern_find(const engine *e, const char *s, uint32_t len, uint64_t h)
{
    if (!e->n_itab) return -1;
    size_t mask = e->n_itab - 1;
    for (size_t i = h & mask; e->itab[i]; i = (i + 1) & mask) {
        const user_name *n = &e->names[e->itab[i] - 1];
        if (n->hash == h && n->len == len && memcmp(n->bytes, s, len) == 0) return e->itab[i] - 1;
    }
    return -1;
}

static int64_t intern_add(engine *e, const char *s, uint32_t len, uint64_t h)
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
static uint64_t name_prefix(const user_name *n)
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
static void settle_string_ties(const engine *e, keyed *v, size_t n, int64_t (*id_of)(const keyed *))
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

/* The user of a visit, interned when new (string users), else its int. */
static int64_t user_of(engine *e, const visit *v)
{
    if (!e->cfg.string_users) return v->user_id;
    assert(v->user != NULL);
    uint64_t h = name_hash(v->user, v->user_len);
    int64_t id = intern_find(e, v->user, v->user_len, h);
    return id >= 0 ? id : intern_add(e, v->user, v->user_len, h);
}

/* ---- user map (linear probing, backward-shift deletion) --------------- */

static user_slot *user_find(const engine *e, int64_t user_id)
{
    size_t mask = e->n_slots - 1;
    for (size_t i = mix64((uint64_t)user_id) & mask;; i = (i + 1) & mask) {
        user_slot *s = &e->slots[i];
        if (!s->used) return NULL;
        if (s->user_id == user_id) return s;
    }
}

static void user_grow(engine *e);

static user_slot *user_insert(engine *e, int64_t user_id)
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

static void user_grow(engine *e) { user_resize(e, e->n_slots ? e->n_slots * 2 : 1024); }

/* Takes a slot out of the table; its user keeps its interned name (string
 * users), as a user moving to the cold table does. */
static void user_unlink(engine *e, user_slot *s)
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

static void user_remove(engine *e, user_slot *s)
{
    if (e->cfg.string_users) intern_release(e, s->user_id);
    user_unlink(e, s);
}

/* ---- cold table (linear probing, backward-shift deletion) --------------- */

static cold_user *cold_find(const engine *e, int64_t user_id)
{
    if (e->n_cold == 0) return NULL;
    size_t mask = e->n_ctab - 1;
    for (size_t i = mix64((uint64_t)user_id) & mask; e->ctab[i]; i = (i + 1) & mask)
        if (e->ctab[i]->user_id == user_id) return e->ctab[i];
    return NULL;
}

static void cold_place(engine *e, cold_user *c)
{
    size_t mask = e->n_ctab - 1, i = mix64((uint64_t)c->user_id) & mask;
    while (e->ctab[i]) i = (i + 1) & mask;
    e->ctab[i] = c;
}

static void cold_resize(engine *e, size_t n)
{
    cold_user **old = e->ctab;
    size_t n_old = e->n_ctab;
    assert(n > e->n_cold && (n & (n - 1)) == 0);
    e->budget_check_at = 0;
    e->n_ctab = n;
    e->ctab = xcalloc(n, sizeof *e->ctab);
    for (size_t i = 0; i < n_old; i++)
        if (old[i]) cold_place(e, old[i]);
    free(old);
}

static void cold_insert(engine *e, cold_user *c)
{
    assert(!cold_find(e, c->user_id));
    if ((e->n_cold + 1) * 10 > e->n_ctab * 7) cold_resize(e, e->n_ctab ? e->n_ctab * 2 : 1024);
    cold_place(e, c);
    e->n_cold++;
}

static void cold_remove(engine *e, const cold_user *c)
{
    size_t mask = e->n_ctab - 1, hole = mix64((uint64_t)c->user_id) & mask;
    while (e->ctab[hole] != c) hole = (hole + 1) & mask;
    for (size_t i = (hole + 1) & mask; e->ctab[i]; i = (i + 1) & mask) {
        size_t home = mix64((uint64_t)e->ctab[i]->user_id) & mask;
        int stays = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (stays) continue;
        e->ctab[hole] = e->ctab[i];
        hole = i;
    }
    e->ctab[hole] = NULL;
    e->n_cold--;
}

/* After evictions or loads: a table under a sixth full halves (down to
 * 1024 slots), so that what eviction frees includes the tables' share. Both
 * then sit between a third and seven tenths full, so this does not flap. */
static void tables_shrink(engine *e)
{
    while (e->n_slots > 1024 && e->n_used * 6 < e->n_slots) user_resize(e, e->n_slots / 2);
    while (e->n_ctab > 1024 && e->n_cold * 6 < e->n_ctab) cold_resize(e, e->n_ctab / 2);
}

static void mark_dirty(engine *e, user_slot *u)
{
    if (!e->cfg.track_dirty || u->dirty_epoch == e->epoch) return;
    u->dirty_epoch = e->epoch;
    if (e->n_dirty == e->cap_dirty) {
        e->budget_check_at = 0;
        e->cap_dirty = e->cap_dirty ? e->cap_dirty * 2 : 1024;
        e->dirty = xrealloc(e->dirty, e->cap_dirty * sizeof *e->dirty);
    }
    e->dirty[e->n_dirty++] = u->user_id;
}

/* A user with no open session leaves the map at once, unless its deletion
 * still has to reach the checkpoint (then engine_clear_dirty removes it). */
static void user_release_if_empty(engine *e, user_slot *u)
{
    if (u->head == NULL && !e->cfg.track_dirty) user_remove(e, u);
}

/* ---- close queue (radix heap) ------------------------------------------ */

static inline uint64_t close_key(int64_t last_t) { return keyed_from_i64(last_t); }

static inline unsigned cq_bucket_of(uint64_t last, uint64_t key)
{
    return key == last ? 0 : 64 - (unsigned)__builtin_clzll(key ^ last);
}

static void cq_place(engine *e, uint64_t key, void *s)
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

static void close_queue_push(engine *e, session *s) { cq_place(e, close_key(s->last_t), s); }

/* Gives back the arrays of empty buckets above 1 MiB. Entries move between
 * buckets, so keeping every bucket's largest size would hold several times
 * the queue's memory after a peak of open sessions; called once per commit,
 * out of the per-visit path (freeing on every drain cost 5% there). */
static void cq_trim(engine *e)
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

static int emit_and_free(engine *e, session *s);
static int load_cold(engine *e, cold_user *c, int queued, user_slot **out);

static void free_dead_session(engine *e, session *s)
{
    assert(s->store == NULL && e->dead_bytes >= heap_bytes(sizeof *s));
    e->dead_bytes -= heap_bytes(sizeof *s);
    e->mem -= heap_bytes(sizeof *s);
    free(s);
}

static void free_cold(engine *e, cold_user *c)
{
    if (c->dead) {
        assert(e->dead_bytes >= heap_bytes(sizeof *c));
        e->dead_bytes -= heap_bytes(sizeof *c);
    }
    e->mem -= heap_bytes(sizeof *c);
    free(c);
}

static int64_t session_user(const keyed *k) { return ((const session *)k->ptr)->user_id; }

/* Closes, in (last_t, user_id) order, every open session whose last_t has
 * close key <= upto; frees merged-away sessions met on the way. */
static int close_upto(engine *e, uint64_t upto)
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
            /* From the end, a large array giving back its emptied half as
             * it goes: the buckets the entries move to grow meanwhile, and
             * the whole source beside them doubled the queue's memory at
             * once (690k cold users' entries: +16 MiB within 4096 records,
             * past --memory-limit before memory_check could see it). */
            for (size_t i = n; i-- > 0;) {
                cq_place(e, q->v[i].key, q->v[i].ptr);
                if (q->cap > 65536 && i <= q->cap / 4) {
                    size_t cap = q->cap / 2;
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
            } else {
                if (n_due == e->cap_due) {
                    e->budget_check_at = 0;
                    e->cap_due = e->cap_due ? e->cap_due * 2 : 64;
                    e->due = xrealloc(e->due, e->cap_due * sizeof *e->due);
                }
                e->due[n_due++] = entry_cold(&c);
            }
        }
        b0->len = kept;
        if (n_due > 0) {
            /* their reads together (the store may submit them at once) */
            if (e->cold.prefetch && n_due > 1)
                for (size_t i = 0; i < n_due; i++) e->cold.prefetch(e->cold.ctx, e->due[i]->handle, e->due[i]->len);
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

/* ---- sessions ---------------------------------------------------------- */

/* Raises s's last position to (part, off) if greater. An unknown last
 * position (a session restored from a blob without it) stays unknown: the
 * visits it had are not known, so no maximum over them is. */
static inline void session_raise_last(session *s, int32_t part, int64_t off)
{
    if (s->last_part < 0 || part < 0) {
        s->last_part = -1;
        return;
    }
    if (part > s->last_part || (part == s->last_part && off > s->last_off)) {
        s->last_part = part;
        s->last_off = off;
    }
}

static session *session_new(uint64_t *mem, int64_t user_id, const visit *v)
{
    session *s = xcalloc(1, sizeof *s);
    *mem += heap_bytes(sizeof *s);
    s->user_id = user_id;
    s->first_t = s->last_t = v->event_time_us;
    s->first_pos = v->pos;
    s->last_part = v->pos.partition;
    s->last_off = v->pos.offset;
    s->cut_t = NO_CUT;
    s->visits = 0; /* counted by engine_apply with every visit */
    return s;
}

/* The bytes of a session's page store, and what the heap takes for them. */
static inline uint64_t store_size(const session *s)
{
    return (uint64_t)s->cap_pages * sizeof(page_entry) + s->arena_cap;
}

static inline uint64_t store_bytes(const session *s) { return s->store ? heap_bytes(store_size(s)) : 0; }

static inline uint64_t pool_limit(const engine *e)
{
    return e->budget && e->budget / 64 < POOL_MAX_BYTES ? e->budget / 64 : POOL_MAX_BYTES;
}

/* Gives a store of `size` bytes back: to its class's list if it is a class's
 * size and the lists have room (it stays in mem), else to malloc. */
static void store_release(engine *e, unsigned char *store, uint64_t size)
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

/* A free block of class k, or NULL. It stays counted in mem. */
static unsigned char *pool_pop(engine *e, unsigned k)
{
    unsigned char *b = e->pool[k];
    if (b) {
        memcpy(&e->pool[k], b, sizeof(void *));
        e->pool_bytes -= heap_bytes(store_class[k]);
    }
    return b;
}

static void pool_free(engine *e)
{
    for (unsigned k = 0; k < STORE_CLASSES; k++)
        while (e->pool[k]) {
            void *b = e->pool[k];
            memcpy(&e->pool[k], b, sizeof(void *));
            e->pool_bytes -= heap_bytes(store_class[k]);
            e->mem -= heap_bytes(store_class[k]);
            free(b);
        }
    assert(e->pool_bytes == 0);
}

static void session_free(engine *e, session *s)
{
    store_release(e, s->store, store_size(s));
    e->mem -= heap_bytes(sizeof *s);
    free(s);
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
static int session_reserve(engine *e, session *s, uint32_t pages, uint32_t bytes)
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
        store_release(e, s->store, have);
    }
    assert(size >= want && size - entries <= UINT32_MAX - 1);
    s->store = store;
    s->cap_pages = (uint32_t)cap_pages;
    s->arena_cap = (uint32_t)(size - entries);
    return 0;
}

/* Appends the text of a page to the arena (room reserved); returns its offset. */
static uint32_t arena_push(session *s, const char *data, uint32_t len)
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
static int session_add_page(engine *e, session *s, const visit *v)
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
static int session_merge(engine *e, session *a, session *b)
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
    store_release(e, a->store, store_size(a));
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
    store_release(e, b->store, store_size(b));
    b->store = NULL;
    a->visits += b->visits;
    b->visits = 0; /* dead: its close-queue entry still points here */
    e->dead_bytes += heap_bytes(sizeof *b);
    e->st.open_sessions--;
    e->st.sessions_merged++;
    return rc;
}

/* ---- closing ------------------------------------------------------------ */

static int emit_and_free(engine *e, session *s)
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
static int close_expired(engine *e)
{
    int64_t upto;
    if (e->closing_wm == INT64_MIN ||
        __builtin_sub_overflow(e->closing_wm, e->cfg.gap_us + 1, &upto))
        return 0;
    return close_upto(e, close_key(upto));
}

static partition_state *partition_get(engine *e, int32_t id)
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

/* Evicts when over the budget (engine_set_cold_store). */
static int keep_budget(engine *e)
{
    if (!e->budget || e->mem < e->budget_check_at || !e->cold.put) return 0;
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
    e->evict_again = mem > e->budget ? mem + e->budget / 16 : 0;
    e->budget_check_at = 0;
    return rc;
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

    int64_t uid = user_of(e, v);
    user_slot *u = e->n_cold ? user_find(e, uid) : NULL;
    if (!u) {
        cold_user *c = cold_find(e, uid);
        if (c) {
            int rc = load_cold(e, c, 1, &u);
            if (rc) return rc;
        } else {
            u = user_insert(e, uid);
        }
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
        session *s = session_new(&e->mem, uid, v);
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
    const user_slot *u = &e->slots[h & (e->n_slots - 1)];
    if (stage == 0) {
        __builtin_prefetch(u);
        if (e->n_cold) __builtin_prefetch(&e->ctab[h & (e->n_ctab - 1)]);
        return;
    }
    /* Only the common case of a user in its home slot is worth a hint. */
    if (!u->used || u->user_id != user_id || !u->head) {
        /* A cold user's blob: the store can read it ahead, several at
         * once, instead of one system call when the visit needs it. */
        if (stage == 1 && e->n_cold && e->cold.prefetch) {
            const cold_user *c = cold_find(e, user_id);
            if (c) e->cold.prefetch(e->cold.ctx, c->handle, c->len);
        }
        return;
    }
    const session *s = u->head;
    if (stage == 1) {
        __builtin_prefetch(s);
        return;
    }
    if (s->store && s->n_pages > 0) {
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

int engine_check_invariants(const engine *e)
{
    uint64_t sessions = 0, pages = 0, cold = 0;
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
        const cold_user *c = e->ctab[i];
        if (!c) continue;
        cold++;
        if (cold_find(e, c->user_id) != c || c->dead || c->len == 0) return 3;
    }
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
                    dead += heap_bytes(sizeof(cold_user));
                    continue;
                }
                live_cold++;
                if (any_due && c->key <= close_key(due_upto)) return 4;
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
    uint64_t pooled = 0, mem = e->dead_bytes + cold * heap_bytes(sizeof(cold_user));
    for (unsigned k = 0; k < STORE_CLASSES; k++)
        for (const unsigned char *b = e->pool[k]; b;) {
            pooled += heap_bytes(store_class[k]);
            void *next;
            memcpy(&next, b, sizeof next);
            b = next;
        }
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
                id = e->ctab[i - e->n_slots]->user_id;
            }
            if (id < 0 || (size_t)id >= e->n_names) return 6;
            const user_name *n = &e->names[id];
            if (!n->bytes || intern_find(e, n->bytes, n->len, n->hash) != id) return 6;
        }
    }
    return 0;
}

/* ---- checkpoint encoding ----------------------------------------------- */

/* 2 added max_session_bytes; a version 1 checkpoint was written without a
 * byte cap and resumes with the largest one. 3 added max_future_us and its
 * counter; an older checkpoint resumes with the bound of the run. */
#define META_VERSION 3u

void engine_save_meta(const engine *e, buf *out)
{
    buf_put_u32le(out, META_VERSION);
    buf_put_i64le(out, e->cfg.gap_us);
    buf_put_i64le(out, e->cfg.lateness_us);
    buf_put_u32le(out, e->cfg.max_pages);
    buf_put_u32le(out, e->cfg.max_session_bytes);
    buf_put_i64le(out, e->cfg.max_future_us);
    buf_put_i64le(out, e->closing_wm);
    const uint64_t counters[] = {e->st.visits_applied, e->st.rejected_late, e->st.rejected_cap,
                                 e->st.sessions_closed, e->st.pages_closed,
                                 e->st.open_sessions, e->st.open_pages, e->st.rejected_future};
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++)
        buf_put_u64le(out, counters[i]);
    buf_put_u32le(out, (uint32_t)e->n_parts);
    for (size_t i = 0; i < e->n_parts; i++) {
        const partition_state *p = &e->parts[i];
        buf_put_u32le(out, (uint32_t)p->id);
        buf_put_i64le(out, p->max_t);
        buf_put_u32le(out, (uint32_t)p->has_held);
        if (p->has_held) {
            buf_put_i64le(out, p->held.user_id);
            buf_put_i64le(out, p->held.event_time_us);
            buf_put_i64le(out, p->held.pos.offset);
            buf_put_u32le(out, p->held.page_len);
            buf_append(out, p->page.data, p->held.page_len);
            buf_put_u32le(out, p->held.user ? p->held.user_len : UINT32_MAX);
            if (p->held.user) buf_append(out, p->user.data, p->held.user_len);
        }
    }
}

/* The fields of a saved meta blob. */
typedef struct saved_meta {
    uint32_t version;
    int64_t gap, lateness, closing;
    uint32_t max_pages, n_parts;
    uint64_t counters[8]; /* in engine_save_meta's order; the 8th from version 3 */
    reader parts;         /* n_parts (id u32, max_t i64[, held visit]) */
} saved_meta;

/* 0, -1 if it does not decode, -2 if it was written with other settings. */
static int parse_meta(const engine *e, const void *data, size_t len, saved_meta *m)
{
    reader r;
    reader_init(&r, data, len);
    uint32_t max_bytes = ENGINE_MAX_SESSION_BYTES;
    int64_t max_future = e->cfg.max_future_us;
    m->version = 0;
    reader_u32le(&r, &m->version);
    if (r.bad || m->version < 1 || m->version > META_VERSION) return -1;
    reader_i64le(&r, &m->gap);
    reader_i64le(&r, &m->lateness);
    reader_u32le(&r, &m->max_pages);
    if (m->version >= 2) reader_u32le(&r, &max_bytes);
    if (m->version >= 3) reader_i64le(&r, &max_future);
    reader_i64le(&r, &m->closing);
    m->counters[7] = 0;
    for (size_t i = 0; i < (m->version >= 3 ? 8u : 7u); i++) reader_u64le(&r, &m->counters[i]);
    reader_u32le(&r, &m->n_parts);
    size_t entry = m->version >= 3 ? 16 : 12;
    if (r.bad || m->n_parts > reader_left(&r) / entry ||
        (m->version < 3 && reader_left(&r) != (size_t)m->n_parts * 12))
        return -1;
    if (m->gap != e->cfg.gap_us || m->lateness != e->cfg.lateness_us ||
        m->max_pages != e->cfg.max_pages || max_bytes != e->cfg.max_session_bytes ||
        max_future != e->cfg.max_future_us)
        return -2;
    m->parts = r;
    return 0;
}

/* Reads the next partition entry of m; sets the partition's held visit as
 * saved (none before version 3). Returns its id and max_t, or -1. */
static int next_part(engine *e, saved_meta *m, int32_t *id, int64_t *max_t)
{
    uint32_t uid = 0, has_held = 0;
    reader_u32le(&m->parts, &uid);
    reader_i64le(&m->parts, max_t);
    if (m->version >= 3) reader_u32le(&m->parts, &has_held);
    if (m->parts.bad) return -1;
    *id = (int32_t)uid;
    partition_state *p = partition_get(e, *id);
    if (p->has_held) e->st.held_visits--;
    p->has_held = 0;
    if (!has_held) return 0;
    const unsigned char *page = NULL;
    visit h = {.pos = {.append_ts_ms = 0, .partition = *id}};
    reader_i64le(&m->parts, &h.user_id);
    reader_i64le(&m->parts, &h.event_time_us);
    reader_i64le(&m->parts, &h.pos.offset);
    reader_u32le(&m->parts, &h.page_len);
    if (reader_bytes(&m->parts, &page, h.page_len)) return -1;
    uint32_t user_len = 0;
    const unsigned char *user = NULL;
    reader_u32le(&m->parts, &user_len);
    if (user_len != UINT32_MAX && reader_bytes(&m->parts, &user, user_len)) return -1;
    if (m->parts.bad || (user_len != UINT32_MAX) != (e->cfg.string_users != 0)) return -1;
    h.user_len = user_len == UINT32_MAX ? 0 : user_len;
    h.user = user_len == UINT32_MAX ? NULL : "";
    p->held = h;
    buf_reset(&p->page);
    buf_append(&p->page, page, h.page_len);
    buf_reset(&p->user);
    if (user) buf_append(&p->user, user, user_len);
    p->has_held = 1;
    e->st.held_visits++;
    return 0;
}

int engine_load_meta(engine *e, const void *data, size_t len)
{
    saved_meta m;
    int rc = parse_meta(e, data, len, &m);
    if (rc) return rc;
    uint64_t *counters[] = {&e->st.visits_applied, &e->st.rejected_late, &e->st.rejected_cap,
                            &e->st.sessions_closed, &e->st.pages_closed,
                            &e->st.open_sessions, &e->st.open_pages, &e->st.rejected_future};
    _Static_assert(sizeof counters / sizeof *counters == sizeof m.counters / sizeof *m.counters,
                   "every counter saved is loaded");
    for (size_t i = 0; i < 8; i++) *counters[i] = m.counters[i];
    e->closing_wm = m.closing;
    for (size_t i = 0; i < e->n_parts; i++) buf_free(&e->parts[i].page), buf_free(&e->parts[i].user);
    e->n_parts = 0;
    e->st.held_visits = 0;
    for (uint32_t i = 0; i < m.n_parts; i++) {
        int32_t id;
        int64_t max_t = 0;
        if (next_part(e, &m, &id, &max_t)) return -1;
        partition_get(e, id)->max_t = max_t;
    }
    if (reader_left(&m.parts) != 0) return -1;
    /* Restored sessions are counted again by engine_load_user. */
    e->st.open_sessions = 0;
    e->st.open_pages = 0;
    return 0;
}

void engine_replay_begin(engine *e) { e->replaying = 1; }

int engine_replay_end(engine *e, const void *meta, size_t len)
{
    saved_meta m;
    e->replaying = 0;
    int rc = parse_meta(e, meta, len, &m);
    if (rc) return rc;
    /* The replay saw the same accepted visits, so every partition's maximum
     * event time must be the commit's; the closing watermark can only be
     * behind (caught-up signals are not replayed), never ahead. The visits
     * the future rule held at the commit are the commit's. */
    for (uint32_t i = 0; i < m.n_parts; i++) {
        int32_t id;
        int64_t max_t = 0;
        if (next_part(e, &m, &id, &max_t)) return -1;
        if (partition_get(e, id)->max_t != max_t) return -1;
    }
    if (reader_left(&m.parts) != 0) return -1;
    if (e->n_parts != m.n_parts || m.closing < e->closing_wm) return -1;
    e->closing_wm = m.closing;
    rc = close_expired(e);
    assert(rc == 0 || e->cb.on_close); /* no callback, nothing to fail */
    if (rc) return rc;
    if (e->st.open_sessions != m.counters[5] || e->st.open_pages != m.counters[6]) return -1;
    e->st.visits_applied = m.counters[0];
    e->st.rejected_late = m.counters[1];
    e->st.rejected_cap = m.counters[2];
    e->st.sessions_closed = m.counters[3];
    e->st.pages_closed = m.counters[4];
    e->st.rejected_future = m.counters[7];
    return 0;
}

engine_callbacks engine_swap_callbacks(engine *e, const engine_callbacks *cb)
{
    engine_callbacks old = e->cb;
    e->cb = *cb;
    return old;
}

#define BLOB_HAS_CUT UINT32_C(0x80000000)

/* The session count's top bit says each session carries its visit count
 * (u64 after its first position). Blobs written before visit counts existed
 * lack it; their sessions restore with one visit per stored page, which no
 * output sees: such a checkpoint has no --columns (bound, see job.c). The
 * next bit says each session carries its last position (u32 partition, i64
 * offset, after the visit count); without it the last position is unknown. */
#define BLOB_WITH_VISITS 0x80000000u
#define BLOB_WITH_LAST 0x40000000u
#define BLOB_FLAGS (BLOB_WITH_VISITS | BLOB_WITH_LAST)

static inline unsigned char *put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static inline unsigned char *put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

#define BLOB_SESSION_BYTES 60 /* a session's fixed fields, below */
#define BLOB_CUT_BYTES 20
#define BLOB_PAGE_BYTES 24 /* a page's fixed fields */

/* Sized first, then written with plain stores: the whole open state goes
 * through here at every compaction, on the job's thread (a buf_put_* call
 * per field cost 3x more). */
static void encode_user(const session *head, buf *out)
{
    uint32_t n = 0;
    size_t need = 4;
    for (const session *s = head; s; s = s->next) {
        n++;
        need += BLOB_SESSION_BYTES + (s->cut_t != NO_CUT ? BLOB_CUT_BYTES : 0) +
                (size_t)s->n_pages * BLOB_PAGE_BYTES + s->page_bytes;
    }
    assert(n < BLOB_WITH_LAST);
    buf_reserve(out, need);
    unsigned char *p = out->data + out->len, *end = p + need;
    p = put_le32(p, n | BLOB_WITH_VISITS | BLOB_WITH_LAST);
    for (const session *s = head; s; s = s->next) {
        unsigned char *fixed = p;
        p = put_le64(p, (uint64_t)s->first_t);
        p = put_le64(p, (uint64_t)s->last_t);
        p = put_le64(p, (uint64_t)s->first_pos.append_ts_ms);
        p = put_le32(p, (uint32_t)s->first_pos.partition);
        p = put_le64(p, (uint64_t)s->first_pos.offset);
        p = put_le64(p, s->visits);
        p = put_le32(p, (uint32_t)s->last_part);
        p = put_le64(p, (uint64_t)s->last_off);
        /* The top bit of the page count says a cut follows (a count is at
         * most max_pages < 2^31, so blobs without a cut read as before). */
        p = put_le32(p, s->n_pages | (s->cut_t != NO_CUT ? BLOB_HAS_CUT : 0));
        assert(p - fixed == BLOB_SESSION_BYTES);
        (void)fixed;
        if (s->cut_t != NO_CUT) {
            p = put_le64(p, (uint64_t)s->cut_t);
            p = put_le32(p, (uint32_t)s->cut_part);
            p = put_le64(p, (uint64_t)s->cut_off);
        }
        const page_entry *pages = pages_of(s);
        const char *text = s->n_pages ? arena_of(s) : NULL;
        for (uint32_t i = 0; i < s->n_pages; i++) {
            const page_entry *pg = &pages[i];
            p = put_le64(p, (uint64_t)pg->t);
            p = put_le32(p, (uint32_t)pg->partition);
            p = put_le64(p, (uint64_t)pg->offset);
            p = put_le32(p, pg->len);
            if (pg->len) memcpy(p, text + pg->str_off, pg->len);
            p += pg->len;
        }
    }
    assert(p == end); /* the sizes above are the layout's */
    (void)end;
    out->len += need;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t keyed_id(const keyed *k) { return (int64_t)(intptr_t)k->ptr; }

/* The dirty users in the checkpoint's key order: ints by value, string
 * users by their bytes. */
static void sort_dirty(engine *e)
{
    if (e->n_dirty < 2) return;
    if (!e->cfg.string_users) {
        qsort(e->dirty, e->n_dirty, sizeof *e->dirty, cmp_i64);
        return;
    }
    keyed *v = xmalloc(e->n_dirty * sizeof *v);
    for (size_t i = 0; i < e->n_dirty; i++)
        v[i] = (keyed){name_prefix(&e->names[e->dirty[i]]), (void *)(intptr_t)e->dirty[i]};
    keyed_sort(v, e->n_dirty);
    settle_string_ties(e, v, e->n_dirty, keyed_id);
    for (size_t i = 0; i < e->n_dirty; i++) e->dirty[i] = keyed_id(&v[i]);
    free(v);
}

static user_key key_of(const engine *e, int64_t id)
{
    if (!e->cfg.string_users) return (user_key){.id = id};
    return (user_key){.id = id, .str = e->names[id].bytes, .len = e->names[id].len};
}

/* A cold user's blob, read back from the store (it stays cold: a snapshot
 * must not need the memory it was evicted to save). */
static int cold_blob(const engine *e, const cold_user *c, buf *out)
{
    buf_reset(out);
    int rc = e->cold.get(e->cold.ctx, c->handle, c->len, out);
    return rc ? rc : out->len == c->len ? 0 : -1;
}

int engine_foreach_dirty(engine *e, engine_dirty_fn fn, void *ctx)
{
    /* In key order: a B-tree store then writes each page once, in sequence
     * (docs/checkpoint.md measured 6 s -> 1.3 s for 1M users into SQLite). */
    sort_dirty(e);
    buf b;
    buf_init(&b);
    int rc = 0;
    for (size_t i = 0; i < e->n_dirty && !rc; i++) {
        const user_slot *u = user_find(e, e->dirty[i]);
        const cold_user *c = u ? NULL : cold_find(e, e->dirty[i]);
        if (c) {
            rc = cold_blob(e, c, &b);
            user_key k = key_of(e, e->dirty[i]);
            if (!rc) rc = fn(ctx, &k, b.data, b.len);
            continue;
        }
        if (!u || !u->head) {
            /* A user whose sessions opened and closed between two commits
             * never reached the checkpoint: nothing to delete. */
            if (u && u->persisted) {
                user_key k = key_of(e, e->dirty[i]);
                rc = fn(ctx, &k, NULL, 0);
            }
            continue;
        }
        buf_reset(&b);
        encode_user(u->head, &b);
        user_key k = key_of(e, e->dirty[i]);
        rc = fn(ctx, &k, b.data, b.len);
    }
    buf_free(&b);
    return rc;
}

/* How far ahead engine_foreach_user prefetches a slot's first session, and
 * (half as far) that session's page store: the walk is over the whole open
 * state, and without the hints it waited on two cache misses per user. */
#define WALK_AHEAD 16

int engine_foreach_user(const engine *e, engine_dirty_fn fn, void *ctx)
{
    buf b;
    buf_init(&b);
    int rc = 0;
    for (size_t i = 0; i < e->n_slots && !rc; i++) {
        if (i + WALK_AHEAD < e->n_slots && e->slots[i + WALK_AHEAD].head)
            __builtin_prefetch(e->slots[i + WALK_AHEAD].head);
        if (i + WALK_AHEAD / 2 < e->n_slots && e->slots[i + WALK_AHEAD / 2].head) {
            const unsigned char *store = e->slots[i + WALK_AHEAD / 2].head->store;
            if (store) __builtin_prefetch(store), __builtin_prefetch(store + 64);
        }
        const user_slot *u = &e->slots[i];
        if (!u->used || !u->head) continue;
        buf_reset(&b);
        encode_user(u->head, &b);
        user_key k = key_of(e, u->user_id);
        rc = fn(ctx, &k, b.data, b.len);
    }
    for (size_t i = 0; i < e->n_ctab && !rc; i++) {
        /* the store reads ahead, several records a system call */
        const cold_user *next = i + WALK_AHEAD < e->n_ctab ? e->ctab[i + WALK_AHEAD] : NULL;
        if (next && e->cold.prefetch) e->cold.prefetch(e->cold.ctx, next->handle, next->len);
        const cold_user *c = e->ctab[i];
        if (!c) continue;
        rc = cold_blob(e, c, &b);
        user_key k = key_of(e, c->user_id);
        if (!rc) rc = fn(ctx, &k, b.data, b.len);
    }
    buf_free(&b);
    return rc;
}

int engine_string_users(const engine *e) { return e->cfg.string_users != 0; }

void engine_clear_dirty(engine *e)
{
    for (size_t i = 0; i < e->n_dirty; i++) {
        user_slot *u = user_find(e, e->dirty[i]);
        if (!u) {
            cold_user *c = cold_find(e, e->dirty[i]);
            if (c) c->persisted = 1, c->listed = 0;
            continue;
        }
        u->persisted = u->head != NULL;
        if (!u->head) user_remove(e, u);
    }
    e->n_dirty = 0;
    cq_trim(e);
    if (++e->epoch == 0) { /* wrapped: forget every stale mark */
        for (size_t i = 0; i < e->n_slots; i++) e->slots[i].dirty_epoch = 0;
        e->epoch = 1;
    }
}

/* Decodes a user's blob (encode_user) into its empty slot u: its sessions
 * join the queue and the counters. 0, or -1 if the blob is damaged (what was
 * decoded stays, for engine_free). */
static int decode_user(engine *e, user_slot *u, const void *blob, size_t len)
{
    reader r;
    reader_init(&r, blob, len);
    uint32_t n = 0;
    if (reader_u32le(&r, &n)) return -1;
    int with_visits = (n & BLOB_WITH_VISITS) != 0, with_last = (n & BLOB_WITH_LAST) != 0;
    if (with_last && !with_visits) return -1;
    n &= ~BLOB_FLAGS;
    if (n == 0 || n > len / 40) return -1;
    int64_t user_id = u->user_id;
    session **tail = &u->head;
    int64_t prev_last = INT64_MIN;
    for (uint32_t k = 0; k < n; k++) {
        session *s = xcalloc(1, sizeof *s);
        e->mem += heap_bytes(sizeof *s);
        s->user_id = user_id;
        uint32_t part = 0, n_pages = 0;
        reader_i64le(&r, &s->first_t);
        reader_i64le(&r, &s->last_t);
        reader_i64le(&r, &s->first_pos.append_ts_ms);
        reader_u32le(&r, &part);
        reader_i64le(&r, &s->first_pos.offset);
        if (with_visits) reader_u64le(&r, &s->visits);
        uint32_t last_part = UINT32_MAX;
        if (with_last) {
            reader_u32le(&r, &last_part);
            reader_i64le(&r, &s->last_off);
        }
        s->last_part = (int32_t)last_part; /* -1: unknown */
        reader_u32le(&r, &n_pages);
        if (!with_visits) s->visits = n_pages ? n_pages : 1;
        s->first_pos.partition = (int32_t)part;
        s->cut_t = NO_CUT;
        int had_cut = (n_pages & BLOB_HAS_CUT) != 0;
        if (had_cut) {
            uint32_t cut_part = 0;
            n_pages &= ~BLOB_HAS_CUT;
            reader_i64le(&r, &s->cut_t);
            reader_u32le(&r, &cut_part);
            reader_i64le(&r, &s->cut_off);
            s->cut_part = (int32_t)cut_part;
        }
        /* Link first so that a failure below frees s with the rest. */
        *tail = s;
        tail = &s->next;
        close_queue_push(e, s);
        e->st.open_sessions++;
        if (r.bad || n_pages > e->cfg.max_pages || n_pages > reader_left(&r) / 24 ||
            s->first_t > s->last_t || (had_cut && s->cut_t == NO_CUT) ||
            s->visits == 0 || s->visits < n_pages ||
            (prev_last != INT64_MIN && s->first_t - prev_last <= e->cfg.gap_us))
            return -1;
        prev_last = s->last_t;
        session_reserve(e, s, n_pages, 0);
        for (uint32_t i = 0; i < n_pages; i++) {
            page_entry p = {0};
            uint32_t ppart = 0;
            const unsigned char *str = NULL;
            reader_i64le(&r, &p.t);
            reader_u32le(&r, &ppart);
            reader_i64le(&r, &p.offset);
            reader_u32le(&r, &p.len);
            p.partition = (int32_t)ppart;
            if (reader_bytes(&r, &str, p.len)) return -1;
            if (p.t < s->first_t || p.t > s->last_t) return -1;
            if (i > 0 && !page_before(&pages_of(s)[i - 1], p.t, p.partition, p.offset)) return -1;
            if (!before_cut(s, p.t, p.partition, p.offset)) return -1;
            if ((uint64_t)s->page_bytes + p.len > e->cfg.max_session_bytes) return -1;
            if (session_reserve(e, s, 0, p.len)) return -1;
            p.str_off = arena_push(s, (const char *)str, p.len);
            pages_of(s)[s->n_pages++] = p;
            s->page_bytes += p.len;
            e->st.open_pages++;
        }
    }
    return reader_left(&r) == 0 ? 0 : -1;
}


int engine_load_user(engine *e, const user_key *key, const void *blob, size_t len)
{
    if ((key->str != NULL) != (e->cfg.string_users != 0)) return -1; /* the other user type */
    int64_t user_id = key->id;
    if (e->cfg.string_users) {
        if (key->len == 0 || key->len > USER_MAX_BYTES || memchr(key->str, 0, key->len)) return -1;
        uint64_t h = name_hash(key->str, key->len);
        if (intern_find(e, key->str, key->len, h) >= 0) return -1; /* the same user twice */
        user_id = intern_add(e, key->str, key->len, h);
    }
    if (cold_find(e, user_id)) return -1; /* the same user twice */
    user_slot *u = user_insert(e, user_id);
    if (u->head) return -1;
    u->persisted = 1;
    int rc = decode_user(e, u, blob, len);
    return rc ? rc : keep_budget(e);
}

/* ---- state larger than memory -------------------------------------------- */

void engine_set_cold_store(engine *e, const engine_cold_store *store, uint64_t budget_bytes)
{
    e->cold = *store;
    e->budget = budget_bytes;
    e->budget_check_at = 0;
}

uint64_t engine_memory_bytes(const engine *e)
{
    /* The user and cold tables count half again: when one doubles, the old
     * and the new array are both live, and the new one is one block that
     * malloc's free lists (the freed sessions of evicted users) cannot
     * provide. */
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
        if (size > e->n_ctab) n += size * sizeof(cold_user *);
    }
    return n;
}

/* Loads a cold user back into memory, into a new slot of the user table
 * (*out, if out). queued: its entry is still in the close queue (marked
 * dead, freed when reached); else the caller took it out and it is freed
 * here. */
static int load_cold(engine *e, cold_user *c, int queued, user_slot **out)
{
    assert(!c->dead);
    e->budget_check_at = 0; /* cold_buf may grow */
    buf_reset(&e->cold_buf);
    int rc = e->cold.get(e->cold.ctx, c->handle, c->len, &e->cold_buf);
    if (rc) return rc;
    if (e->cold_buf.len != c->len) return -1;
    if (e->cold.drop) e->cold.drop(e->cold.ctx, c->handle, c->len);
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
    return entry_is_cold(c) ? (const void *)&entry_cold(c)->dead
                            : (const void *)&entry_session(c)->visits;
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

int engine_evict(engine *e, uint64_t target_bytes)
{
    if (!e->cold.put || !e->cold.get) return 0;
    pool_free(e); /* memory is short: the free page stores go first */
    int rc = 0, any = 0;
    /* A clock: a user applied to since the hand last passed gets a second
     * chance. Two turns at most: the first clears every mark. */
    for (size_t seen = 0; seen < 2 * e->n_slots && !rc; seen++) {
        /* the dead structs go with the sweep below, or a later one */
        if (engine_memory_bytes(e) - e->dead_bytes <= target_bytes) break;
        user_slot *u = &e->slots[e->hand];
        e->hand = (e->hand + 1) & (e->n_slots - 1);
        if (!u->used || !u->head) continue;
        if (u->touched) {
            u->touched = 0;
            continue;
        }
        rc = evict_user(e, u);
        any |= rc == 0;
    }
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
        cold_user *c = e->ctab[i];
        if (!c) continue;
        int rc = fn(ctx, &c->handle, c->len);
        if (rc) return rc;
    }
    return 0;
}
