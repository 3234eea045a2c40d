/*
 * engine.h - event-time session windows per user, with keyed-idempotent ids.
 *
 * The engine is pure: no I/O, no clock, no randomness. Its output (closed
 * sessions and rejected visits, in order) is a function of the visits fed to
 * it and of the caught-up signals, which makes it testable exhaustively.
 * docs/semantics.md states the rules with worked examples; in short:
 *
 *  - A visit joins a session of its user when first - G <= t <= last + G;
 *    a visit within G of two open sessions merges them. Sessions are thus the
 *    connected components of the user's visit times with gaps <= G.
 *  - A visit too far ahead (engine_too_far_ahead) is rejected, reason
 *    "future", before anything else.
 *  - Each partition p has a watermark wm[p] = max event time seen on p - L,
 *    never decreasing. A visit is late (rejected, reason "late") when its
 *    time is below its own partition's watermark, or below the closing
 *    watermark.
 *  - The closing watermark is the minimum of wm[p] over the partitions that
 *    are not caught up, or the maximum over all once every partition is
 *    caught up; it never decreases. A session closes when the closing
 *    watermark exceeds last + G.
 *  - A session keeps the longest run of its pages, in (event time,
 *    partition, offset) order, that holds at most max_pages pages and at most
 *    max_session_bytes bytes of page text. The others are rejected with
 *    reason "session_cap". Which pages are kept depends only on the set of
 *    visits, not on their arrival order.
 *  - The session id is session_id_of(user, earliest-appended position)
 *    (session_id_of_string for string users).
 */
#ifndef SESSIONIZER_ENGINE_H
#define SESSIONIZER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "engine/closed_session.h"
#include "record/visit.h"

typedef struct engine engine;

/* The largest max_session_bytes: a session's text, with the evicted text it
 * may hold until compacted (at most as much again) and one more page, stays
 * below the 4 GiB its 32-bit offsets address. */
#define ENGINE_MAX_SESSION_BYTES (UINT32_C(1) << 30)

typedef enum reject_reason {
    REJECT_LATE = 1,
    REJECT_SESSION_CAP = 2,
    REJECT_FUTURE = 3,
} reject_reason;

typedef struct engine_callbacks {
    void *ctx;
    /* A session closed. Return 0, or non-zero to abort the operation in
     * progress (the engine's state then no longer matches any checkpoint and
     * the job must stop without committing). */
    int (*on_close)(void *ctx, const closed_session *cs);
    /* A visit was rejected. v->page is valid only during the call. */
    int (*on_reject)(void *ctx, const visit *v, reject_reason why);
    /* Optional: a visit passed the lateness check and is being applied. The
     * accepted visits, in order, are the engine's change log: replayed into
     * the state of an earlier commit they rebuild the state of a later one
     * (engine_replay_end, src/checkpoint/changelog.h). */
    int (*on_accept)(void *ctx, const visit *v);
} engine_callbacks;

/* State larger than memory. The engine does no I/O: the caller's store
 * keeps the blobs of users evicted from memory (the encoding of
 * engine_foreach_user), and the engine keeps of each such "cold" user a
 * stub in its own table (out of the user table, which holds the hot users
 * only) and one close-queue entry on its earliest session end, so that the
 * watermark knows whom to load back without reading the store (75-112
 * bytes per cold user: docs/checkpoint.md "Memory limit"). A visit that only
 * appends to a cold user's last session, or opens a new one after it, is
 * kept beside the stub without loading the user (a few varints and the
 * page), as is a new user's first visit while the engine spills; the
 * appended visits go to the store with the user's blob when they pass
 * their share of the budget. Eviction changes no output: a cold user is
 * loaded back, whole, when a visit of it that does not only append is
 * accepted, when the closing watermark reaches its earliest session end, or
 * for engine_foreach_user/_dirty (loaded then only into a buffer). The store
 * need not be durable: a checkpoint's snapshot carries cold users' blobs like
 * the others', and a restore rebuilds them from it and the change log. */
typedef struct engine_cold_store {
    void *ctx;
    /* Keeps a blob; *handle is what get will be given for it. 0, or non-zero
     * (the user stays in memory; the engine call in progress fails with it). */
    int (*put)(void *ctx, const user_key *user, const void *blob, size_t len, uint64_t *handle);
    /* Appends the blob of a handle (len bytes) to out. 0, or non-zero: the
     * engine call in progress fails and the engine must be freed. */
    int (*get)(void *ctx, uint64_t handle, size_t len, buf *out);
    /* Optional: the blob was taken back into memory and will not be asked
     * for again. */
    void (*drop)(void *ctx, uint64_t handle, size_t len);
    /* Optional, a hint (engine_prefetch): get may soon be asked for this
     * blob. No effect on results: get still returns the blob (or fails). */
    void (*prefetch)(void *ctx, uint64_t handle, size_t len);
} engine_cold_store;

typedef struct engine_config {
    int64_t gap_us;        /* G */
    int64_t lateness_us;   /* L */
    uint32_t max_pages;    /* per session; >= 1 */
    uint32_t max_session_bytes; /* page text per session; 0: ENGINE_MAX_SESSION_BYTES */
    int64_t max_future_us; /* how far ahead a visit may be (engine_too_far_ahead); 0: no bound */
    int track_dirty;       /* remember changed users for incremental checkpoints */
    int string_users;      /* users are strings (visit.user), interned (users.c) */
} engine_config;

typedef struct engine_stats {
    uint64_t visits_applied;   /* accepted into a session (some later capped) */
    uint64_t rejected_late;
    uint64_t rejected_cap;
    uint64_t rejected_future;
    uint64_t held_visits;      /* awaiting the next visit of their partition (future rule) */
    uint64_t sessions_closed;
    uint64_t pages_closed;     /* pages in closed sessions */
    uint64_t open_sessions;
    uint64_t open_pages;       /* pages held by open sessions */
    uint64_t open_users;
    /* Since engine_new (not in the checkpoint): for the metrics. Sessions
     * opened = closed + merged into another + open, less those loaded. */
    uint64_t sessions_opened;
    uint64_t sessions_merged;
    uint64_t user_ids;         /* string users: ids ever allocated, the most users held at once */
    /* State larger than memory (engine_set_cold_store); since engine_new. */
    uint64_t cold_users;       /* users whose sessions are in the store now */
    uint64_t users_evicted;    /* evictions */
    uint64_t users_loaded;     /* loads back into memory */
    uint64_t cold_appends;     /* visits kept against a cold user without loading it */
    uint64_t cold_folds;       /* a cold user's appended visits written into a new blob */
    uint64_t cold_births;      /* of cold_appends: new users made cold at once */
    uint64_t memory_bytes;     /* engine_memory_bytes at the time */
} engine_stats;

/* The future rule, so that one record from a broken clock cannot move the
 * watermark and make every later record late (F = max_future_us; a rejected
 * visit is dead-lettered as "future"):
 *  - a record with an append time (Kafka's timestamp; append_ts_ms != 0) is
 *    too far ahead when t > append + F: this function, pure, which the
 *    scale-out's first stage applies too;
 *  - a record without one (a file) has only the partition's own order to be
 *    judged by. A visit that starts a partition, or is more than F above the
 *    highest time accepted on it, is held (engine_stats.held_visits) until
 *    the partition's next visit: accepted if that one is not more than F
 *    below it (the stream really moved on: a quiet night, or the first
 *    record), rejected as future otherwise. At the end of the input
 *    (engine_close_all) a held visit is accepted. */
int engine_too_far_ahead(const engine_config *cfg, int64_t t, int64_t append_ts_ms);

/* The dead letter's one-line detail for a visit rejected as `future`. */
const char *engine_future_detail(int64_t append_ts_ms);

engine *engine_new(const engine_config *cfg, const engine_callbacks *cb);
void engine_free(engine *e);

/* Feeds one visit. Returns 0, or the non-zero value a callback returned. */
int engine_apply(engine *e, const visit *v);

/* A hint, no effect on results: start loading what engine_apply will touch
 * for this user. The job calls it for visits a few records ahead, in stages
 * 0 to ENGINE_PREFETCH_STAGES - 1, evenly spaced (the user's slot, then the
 * session, then its last page; while the engine spills, first the user's
 * slot in the cold table, then its stub (or its slot: a stage later), the
 * head of its appended visits, their end), each stage reading only what
 * the previous one brought into cache. A cold user's blob is hinted to the
 * store (its prefetch) at the last stage. */
#define ENGINE_PREFETCH_STAGES 4
void engine_prefetch(const engine *e, int64_t user_id, int stage);

/* The source's view of a partition: caught_up means it has delivered
 * everything it had. Partitions the engine has never heard of do not hold
 * back the closing watermark. */
int engine_set_caught_up(engine *e, int32_t partition, int caught_up);

/* A partition's progress learnt from elsewhere than its visits: its highest
 * event time so far is at least max_t. The scale-out session stage
 * (src/task/) sees only the visits of its users, and hears the source
 * partition's own maximum from the stage that read it; a value below what
 * the engine already has changes nothing (watermarks never decrease). */
int engine_advance_partition(engine *e, int32_t partition, int64_t max_t);
/* (A checkpointed engine's change log records each call with
 * changelog_add_advance: the replay must see it where the run did.) */

/* The input ended: nothing can refute a visit the future rule holds any
 * more, so each is applied (engine_close_all does it first too; a job calls
 * it before logging the close, so that the change log has them in order). */
int engine_release_held(engine *e);

/* Closes every open session (end of a bounded run), in closing order. */
int engine_close_all(engine *e);

int64_t engine_closing_watermark(const engine *e); /* INT64_MIN before any visit */
void engine_get_stats(const engine *e, engine_stats *out);
/* The same without open_users (which takes a pass over every user): O(1),
 * for the metrics' snapshot every second. */
void engine_get_counters(const engine *e, engine_stats *out);

/* Checks the invariants written atop engine_internal.h (O(state): for
 * tests). Returns 0, or the number of the first invariant found broken (1-7). */
int engine_check_invariants(const engine *e);

/* --- State larger than memory --------------------------------------------- */

/* Gives the engine a store for cold users and a budget: whenever its memory
 * (engine_memory_bytes) passes budget_bytes at the end of engine_apply or
 * engine_load_user, it evicts users to the store, least recently applied to
 * first (a clock over the user table), down to 7/8 of the budget. 0: no
 * automatic eviction (engine_evict still works with a store). */
void engine_set_cold_store(engine *e, const engine_cold_store *store, uint64_t budget_bytes);
/* Evicts users, least recently applied to first, until engine_memory_bytes
 * is at most target_bytes or only cold users are left. 0, or what put
 * returned. */
int engine_evict(engine *e, uint64_t target_bytes);
/* The heap bytes the engine holds: sessions, pages, users (hot and cold),
 * its tables. After evicting, a user or cold table under a sixth full
 * halves. */
uint64_t engine_memory_bytes(const engine *e);
/* What the engine allocates at once if more_users new users arrive: its
 * user table doubling, and the cold table it would need if every user went
 * cold (eviction moves many at once) (0 if neither would grow). A caller bounding resident memory makes room for it or
 * stops before it (job.c, memory_check). */
uint64_t engine_growth_bytes(const engine *e, uint64_t more_users);
/* Evicts users, least recently applied to first, until more_users new
 * users fit the user table without its doubling (or only cold users and
 * users awaiting their deletion's commit are left): while spilling, the
 * hot users give way instead of the table growing. 0, or what put
 * returned. */
int engine_evict_for_growth(engine *e, uint64_t more_users);
/* Renames every cold user's blob: fn may move it and change *handle (the
 * store's compaction), then or later: handle points into the cold user's
 * stub, which stays put until the next call on the engine. 0, or what fn
 * returned. */
int engine_cold_rehandle(engine *e, int (*fn)(void *ctx, uint64_t *handle, uint32_t len), void *ctx);

/* --- Checkpoint support (encoding only; the engine does no I/O) ---------- */

/* Global state: per-partition watermarks, closing watermark, counters. */
void engine_save_meta(const engine *e, buf *out);
int engine_load_meta(engine *e, const void *data, size_t len);

/* Calls fn once per user whose sessions changed since the last
 * engine_clear_dirty(): blob is the user's encoded open sessions, or NULL if
 * the user has none left (the stored row is to be deleted). */
typedef int (*engine_dirty_fn)(void *ctx, const user_key *user, const void *blob, size_t len);
int engine_foreach_dirty(engine *e, engine_dirty_fn fn, void *ctx);
void engine_clear_dirty(engine *e);
/* Restores one user's sessions from a blob written by engine_foreach_dirty
 * or engine_foreach_user. */
int engine_load_user(engine *e, const user_key *user, const void *blob, size_t len);

/* Calls fn once per user with open sessions, blob as for
 * engine_foreach_dirty: a snapshot of the whole state. */
int engine_foreach_user(const engine *e, engine_dirty_fn fn, void *ctx);

/* 1 if the engine's users are strings (engine_config.string_users). */
int engine_string_users(const engine *e);

/* Replaces the callbacks and returns the previous ones (a replay runs with
 * none: what it closes or rejects was already written). */
engine_callbacks engine_swap_callbacks(engine *e, const engine_callbacks *cb);

/* Replaying one commit's accepted visits (changelog.h) holds the closing
 * watermark where the previous commit left it: the caught-up signals that
 * moved it are not in the log, and partitions that the source reported but
 * that delivered nothing yet are unknown until the commit's meta names them,
 * so a watermark computed during the replay could pass the original's and
 * refuse a visit the original accepted. Held, it stays at or below the
 * original's, every logged visit is accepted again, and no session closes
 * that a logged visit joined (a visit never joins a session closed before
 * it: the session's last + G was below the watermark, the visit's time is
 * not). */
void engine_replay_begin(engine *e);
/* Ends the replay of one commit: meta is what engine_save_meta wrote at that
 * commit. Raises the closing watermark to the commit's, which closes what
 * that commit had closed, then takes the commit's counters.
 * Checks that the replay reproduced the commit: same partitions' maximum
 * event times, same open sessions and pages. Returns 0, -1 if meta does not
 * decode or the state differs (a corrupt log), -2 if the settings differ. */
int engine_replay_end(engine *e, const void *meta, size_t len);

#endif
