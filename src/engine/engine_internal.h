/*
 * engine_internal.h - the engine's state, shared by the files that work on
 * it (engine.c is the map); nothing outside src/engine includes it.
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
 *  I7. The free lists (page stores, session structs) hold pool_bytes <=
 *      POOL_MAX_BYTES of heap, and mem is exactly the heap bytes of the
 *      sessions, their stores, the dead structs, the cold users and their
 *      appended visits, the string users' bytes and the lists.
 *  I8. A cold user's stub says what its blob with its appended visits
 *      holds: the last session's end, its room within the caps (at most
 *      the truth; none past a cut), whether it is the only session, and
 *      the first session's end (cold_first_key), which its close-queue
 *      entry's key does not pass; a dead stub holds no appended visits.
 *  I9. Each cold table word's tag holds its user's hash bits and its
 *      distance from its home slot (ctab_tag).
 */
#ifndef SESSIONIZER_ENGINE_INTERNAL_H
#define SESSIONIZER_ENGINE_INTERNAL_H

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/keyed_sort.h"
#include "engine/engine.h"

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
 * header, about 1.5x apart (16 bytes apart up to 120: a cold user's kept
 * visits, and second pages); a session's first store is an exact fit (most
 * sessions have one page), stores above the last class are sized exactly.
 * The lists hold at most POOL_MAX_BYTES (and a 64th of a memory budget),
 * counted as the engine's memory (mem), and go first when it evicts. A
 * cold user's appended visits (cold_delta) take blocks of the same classes
 * from the same lists. */
#define STORE_CLASSES 19
extern const uint32_t store_class[STORE_CLASSES]; /* session.c */
#define POOL_MAX_BYTES ((uint64_t)4 << 20)

/* The smallest class holding n bytes, or STORE_CLASSES if none does. */
static inline unsigned store_class_of(uint64_t n)
{
    unsigned k = 0;
    while (k < STORE_CLASSES && store_class[k] < n) k++;
    return k;
}

/* Visits appended to a cold user without loading it (cold_append.c), each
 * as varint(t - the last session's last_t before it, or t for a user's
 * first visit; 0 for a join, then varint(last_t - t): a visit at or before
 * the end of the user's only session) | zigzag(append_ts_ms) |
 * varint(partition) | zigzag(offset) | varint(page length) | page: applied
 * to its blob by blob_apply_delta. */
typedef struct cold_delta {
    /* INT64_MIN, or the user's first session's end when the appends opened
     * a session after the only one it had (cold_first_key) */
    int64_t first_end;
    uint16_t len, cap; /* bytes of data */
    unsigned char data[];
} cold_delta;

/* A user whose sessions were evicted to the cold store (engine_set_cold_store):
 * all that memory keeps of it. It leaves the user table (which thus holds
 * the hot users only, and does not grow with the cold ones) for the cold
 * table, an array of pointers to these, and has one close-queue entry keyed
 * on its earliest session end (the first session's last_t: a user's sessions
 * are disjoint and sorted), so that the watermark finds it without reading
 * the store. With it, what cold_append decides a visit on (the last
 * session's end and room) and the visits appended since the blob was
 * written. 40 bytes, a 48-byte heap chunk. */
typedef struct cold_user {
    int64_t user_id;
    uint64_t handle;   /* the store's name for the blob */
    int64_t last_t;    /* the last session's last_t, appended visits included */
    cold_delta *delta; /* visits appended since the blob, or NULL */
    uint32_t len;      /* the blob's bytes; 0: none yet (born cold, cold_birth) */
    unsigned dead : 1;      /* loaded back: freed when the close queue reaches it */
    unsigned persisted : 1; /* the user slot's, kept while cold */
    unsigned listed : 1;    /* in engine.dirty for the current epoch (its slot's dirty_epoch) */
    unsigned single : 1;    /* one open session (appended visits included) */
    /* What the last session still takes within the caps (session_add_page):
     * pages (0 also when it has a cut) and page text, saturated; appends
     * count them down, so they stay at or below the truth. */
    uint8_t room_pages;
    uint16_t room_bytes;
} cold_user;

/* An entry of the close queue: key = close_key(t) for some t <= the
 * session's last_t (stale until re-keyed), ptr = the session; or, with the
 * pointer's low bit set, a cold user keyed on its earliest session end or
 * below it (appended visits may extend that session: cold_first_key). */
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
_Static_assert(sizeof(cold_user) == 40, "a cold user fits a 48-byte heap chunk");

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
     * their stubs' addresses with a tag each (ctab_word); n_ctab 0 or a
     * power of two. */
    uintptr_t *ctab;
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
    /* Page stores and appended visits' blocks given back, by size class
     * (pool_release), and session structs (session_release, linked through
     * next): counted in mem. */
    void *pool[STORE_CLASSES];
    session *pool_sessions;
    uint64_t pool_bytes;
    cold_user **due;    /* cold users the closing watermark reached, being loaded (or folded) */
    size_t cap_due;
    /* Of mem, the cold users' appended visits (cold_append.c), how many
     * users hold some, and cold_fold's clock over the cold table. */
    uint64_t delta_bytes;
    size_t n_delta, fold_hand;
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

static inline uint64_t name_hash(const char *s, uint32_t len) { return XXH3_64bits(s, len); }

static inline user_slot *user_find(const engine *e, int64_t user_id)
{
    size_t mask = e->n_slots - 1;
    for (size_t i = mix64((uint64_t)user_id) & mask;; i = (i + 1) & mask) {
        user_slot *s = &e->slots[i];
        if (!s->used) return NULL;
        if (s->user_id == user_id) return s;
    }
}

/* The cold table's words: a stub's address and, where the address leaves
 * bits free, a tag: ten bits of its user's hash (above those the slot is
 * chosen with) and its distance from its home slot (CTAB_FAR: 63 or more,
 * not recorded). A lookup reads only the stubs whose tag matches, about one
 * in 64k of the others: every stub read is a cache miss of its own (cold
 * users are many and scattered), which on the probe chains of a 70% full
 * table came to several per lookup, more for a user not in the table. And
 * backward-shift deletion takes an entry's home from its distance, without
 * reading its stub. x86-64 user-space addresses lie below 2^47 (cold_place
 * checks each); elsewhere the words are plain addresses, every tag matches
 * and every distance is unknown. */
#define CTAB_FAR 63u
#if defined(__x86_64__) && UINTPTR_MAX == UINT64_MAX
#define CTAB_TAGGED 1
#define CTAB_TAG_SHIFT 48
_Static_assert(CTAB_FAR == (1u << 6) - 1, "the distance takes the tag's low 6 bits, the hash 10");
static inline uintptr_t ctab_tag_of(uintptr_t w) { return w >> CTAB_TAG_SHIFT; }
static inline uintptr_t ctab_tag(uint64_t h, size_t dist)
{
    return (uintptr_t)(h >> 54) << 6 | (dist < CTAB_FAR ? dist : CTAB_FAR);
}
static inline size_t ctab_dist(uintptr_t w) { return (size_t)(ctab_tag_of(w) & CTAB_FAR); }
static inline cold_user *ctab_stub(uintptr_t w)
{
    return (cold_user *)(w & (((uintptr_t)1 << CTAB_TAG_SHIFT) - 1));
}
static inline uintptr_t ctab_word(const cold_user *c, uintptr_t tag)
{
    return (uintptr_t)c | tag << CTAB_TAG_SHIFT;
}
#else
#define CTAB_TAGGED 0
static inline uintptr_t ctab_tag_of(uintptr_t w) { return (void)w, 0; }
static inline uintptr_t ctab_tag(uint64_t h, size_t dist) { return (void)h, (void)dist, 0; }
static inline size_t ctab_dist(uintptr_t w) { return (void)w, CTAB_FAR; }
static inline cold_user *ctab_stub(uintptr_t w) { return (cold_user *)w; }
static inline uintptr_t ctab_word(const cold_user *c, uintptr_t tag) { return (void)tag, (uintptr_t)c; }
#endif

static inline cold_user *ctab_at(const engine *e, size_t i) { return ctab_stub(e->ctab[i]); }

static inline cold_user *cold_find(const engine *e, int64_t user_id)
{
    if (e->n_cold == 0) return NULL;
    uint64_t h = mix64((uint64_t)user_id);
    size_t mask = e->n_ctab - 1, dist = 0;
    for (size_t i = h & mask; e->ctab[i]; i = (i + 1) & mask, dist++) {
        uintptr_t w = e->ctab[i];
        if (ctab_tag_of(w) == ctab_tag(h, dist) && ctab_stub(w)->user_id == user_id)
            return ctab_stub(w);
    }
    return NULL;
}

static inline uint64_t close_key(int64_t last_t) { return keyed_from_i64(last_t); }

/* The close key of a cold user's first session end, given its entry's key
 * (at most that: appended visits only raise it, and the entry is re-keyed
 * lazily, as a session's is). The entry's key is exact for a user evicted
 * with several sessions, whose first one no append reaches. */
static inline uint64_t cold_first_key(const cold_user *c, uint64_t key)
{
    if (c->single) return close_key(c->last_t);
    if (c->delta && c->delta->first_end != INT64_MIN) return close_key(c->delta->first_end);
    return key;
}

static inline unsigned cq_bucket_of(uint64_t last, uint64_t key)
{
    return key == last ? 0 : 64 - (unsigned)__builtin_clzll(key ^ last);
}

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

/* The bytes of a session's page store, and what the heap takes for them. */
static inline uint64_t store_size(const session *s)
{
    return (uint64_t)s->cap_pages * sizeof(page_entry) + s->arena_cap;
}

static inline uint64_t store_bytes(const session *s) { return s->store ? heap_bytes(store_size(s)) : 0; }

/* ---- users.c: string users, the user map, the cold table ----------------- */

int64_t intern_find(const engine *e, const char *s, uint32_t len, uint64_t h);
int64_t intern_add(engine *e, const char *s, uint32_t len, uint64_t h);
uint64_t name_prefix(const user_name *n);
void settle_string_ties(const engine *e, keyed *v, size_t n, int64_t (*id_of)(const keyed *));
int64_t string_user_of(engine *e, const visit *v);
user_slot *user_insert(engine *e, int64_t user_id);
void user_grow(engine *e);
void user_unlink(engine *e, user_slot *s);
void user_remove(engine *e, user_slot *s);
void user_release_if_empty(engine *e, user_slot *u);
void cold_insert(engine *e, cold_user *c);
void cold_remove(engine *e, const cold_user *c);
void cold_replace(engine *e, const cold_user *c, cold_user *n);
void tables_shrink(engine *e);
void dirty_append(engine *e, user_slot *u);
void dirty_push(engine *e, int64_t user_id);

/* The user of a visit: its int, or its string interned when new. */
static inline int64_t user_of(engine *e, const visit *v)
{
    return e->cfg.string_users ? string_user_of(e, v) : v->user_id;
}

/* Lists u in engine.dirty once per epoch (the change log's dirty users). */
static inline void mark_dirty(engine *e, user_slot *u)
{
    if (!e->cfg.track_dirty || u->dirty_epoch == e->epoch) return;
    dirty_append(e, u);
}

/* ---- close_queue.c -------------------------------------------------------- */

void cq_place(engine *e, uint64_t key, void *s);
void cq_trim(engine *e);
int close_upto(engine *e, uint64_t upto);
void free_dead_session(engine *e, session *s);
void free_cold(engine *e, cold_user *c);

static inline void close_queue_push(engine *e, session *s) { cq_place(e, close_key(s->last_t), s); }

/* ---- session.c: sessions and their page stores ---------------------------- */

session *session_new(engine *e, int64_t user_id, const visit *v);
/* A zeroed session struct, from the free list or malloc, counted in mem;
 * session_release gives one back (session_free: with its store). */
session *session_alloc(engine *e);
void session_release(engine *e, session *s);
void session_free(engine *e, session *s);
int session_reserve(engine *e, session *s, uint32_t pages, uint32_t bytes);
uint32_t arena_push(session *s, const char *data, uint32_t len);
int session_add_page(engine *e, session *s, const visit *v);
int session_merge(engine *e, session *a, session *b);
/* A free block of class k (< STORE_CLASSES) from its list, or NULL: it stays
 * counted in mem. pool_release gives a block of `size` bytes back (to its
 * class's list, or to malloc); pool_free empties the lists. */
void *pool_pop(engine *e, unsigned k);
void pool_release(engine *e, void *block, uint64_t size);
void pool_free(engine *e);

/* ---- engine.c: closing ----------------------------------------------------- */

int emit_and_free(engine *e, session *s);
int close_expired(engine *e);
partition_state *partition_get(engine *e, int32_t id);

/* ---- snapshot.c: a user's sessions as a blob ------------------------------- */

void encode_user(const session *head, buf *out);
int decode_user(engine *e, user_slot *u, const void *blob, size_t len);
user_key key_of(const engine *e, int64_t id);
int blob_apply_delta(const engine *e, const cold_delta *d, buf *blob);
int cold_blob(const engine *e, const cold_user *c, buf *out);
int cold_stub_broken(const engine *e, const cold_user *c, uint64_t key);

/* ---- spill.c: state larger than memory ------------------------------------- */

int load_cold(engine *e, cold_user *c, int queued, user_slot **out);
int evict_to_budget(engine *e);

/* ---- cold_append.c: visits appended to cold users without loading them ---- */

/* Cold users' appended visits may take 1/COLD_DELTA_SHARE of what eviction
 * aims at before they are folded into their blobs. */
#define COLD_DELTA_SHARE 2

int cold_append(engine *e, cold_user *c, const visit *v);
int cold_birth(engine *e, int64_t user_id, const visit *v);
int cold_may_append(const cold_user *c);
void cold_stub_init(const engine *e, cold_user *c, const session *head);
void cold_delta_free(engine *e, cold_user *c);
int cold_fold(engine *e, uint64_t goal);

/* Evicts when over the budget (engine_set_cold_store); the test is on every
 * visit's path, the eviction is not. */
static inline int keep_budget(engine *e)
{
    if (!e->budget || e->mem < e->budget_check_at || !e->cold.put) return 0;
    return evict_to_budget(e);
}

#endif
