/*
 * changelog.h - the engine's state as a snapshot plus a log of commits,
 * encoded independently of where it is stored.
 *
 * The state after commit N is a pure function of the state after an earlier
 * commit M and of what the engine accepted in between (docs/checkpoint.md
 * proves it): the visits that passed the lateness check, in order, the
 * end-of-input "close all" marks and the partitions advanced from elsewhere
 * (engine_advance_partition). A *frame* carries one commit: those events,
 * the engine's meta (watermarks, counters, settings) and the job's named
 * blobs (source position, output states); a *snapshot* carries the whole
 * state at one commit. Restoring is: load the snapshot, then for each later
 * frame, in order, replay its events with the engine's outputs suppressed and
 * re-apply its closing watermark (engine_replay_end), which also checks that
 * the replay reached the frame's counters.
 *
 * Nothing here does I/O: the local directory (checkpoint.c) is one backend,
 * and a scale-out instance can move the same frames and snapshots through
 * Kafka or a database. Both formats are self-delimiting and checksummed
 * (XXH3-64, seeded so that a frame cannot pass as a snapshot chunk).
 *
 * Frame layout (little-endian):
 *   u32 magic "SZCF" | u32 body length | u64 XXH3(seq, body) | u64 seq | body
 *   body: u32 event count, events, u32 meta count, (u16 key length, key,
 *         u32 value length, value)..., u32 engine-meta length, engine meta
 *   event: u8 kind; a visit (kind 1) is, as LEB128 varints, zigzag(user),
 *          zigzag(time - previous time), partition, zigzag(offset - previous
 *          offset of that frame), zigzag(append time - previous), page length,
 *          then the page; kind 2 is "close all"
 * A visit costs its page plus 6-20 bytes (8-10 on a file: small deltas).
 *
 * Snapshot layout: u32 magic "SZSN" | u32 format version | u64 seq, then
 * chunks (u32 length | u64 XXH3 | payload): the first holds the meta blobs
 * and the engine meta as in a frame; then users (i64 id, u32 length, the
 * engine's encoding of its open sessions) packed into chunks of ~1 MiB; the
 * last chunk is empty and ends the snapshot (a file without it is cut short).
 */
#ifndef SESSIONIZER_CHANGELOG_H
#define SESSIONIZER_CHANGELOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "engine/engine.h"
#include "record/visit.h"

#define CHANGELOG_FRAME_HEADER 24 /* bytes before the body */

/* ---- writing a frame ------------------------------------------------------ */

typedef struct changelog_frame {
    buf events;
    uint32_t n_events;
    buf meta;
    uint32_t n_meta;
    int64_t prev_t, prev_off, prev_ts; /* delta bases, reset per frame */
} changelog_frame;

void changelog_frame_init(changelog_frame *f);
void changelog_frame_free(changelog_frame *f);
/* Starts the next frame (events and meta of the previous one dropped). */
void changelog_frame_reset(changelog_frame *f);
void changelog_add_visit(changelog_frame *f, const visit *v);
void changelog_add_close_all(changelog_frame *f);
/* An engine_advance_partition call: it moves a watermark without a visit, so
 * a change log must carry it for the replay to see what the run saw. */
void changelog_add_advance(changelog_frame *f, int32_t partition, int64_t max_t);
/* A named blob of this commit (a later frame's value replaces it). */
void changelog_add_meta(changelog_frame *f, const char *key, const void *val, size_t len);
/* Appends the frame for commit seq to out, closed with e's meta. */
void changelog_seal(const changelog_frame *f, uint64_t seq, const engine *e, buf *out);
/* The same where the frame was built: f->events is then the whole frame
 * (a caller may take the buffer, swapping an empty one in) until
 * changelog_frame_reset. A commit's frame is megabytes, and copying it
 * streamed it through the caches once more. */
void changelog_seal_in_place(changelog_frame *f, uint64_t seq, const engine *e);

/* ---- reading a frame ------------------------------------------------------ */

typedef struct changelog_view {
    uint64_t seq;
    const unsigned char *events, *meta, *engine_meta;
    size_t events_len, meta_len, engine_meta_len;
    uint32_t n_events, n_meta;
    size_t frame_len; /* bytes the whole frame takes */
} changelog_view;

/* Parses the frame at the start of data: 1 and *out, 0 if data ends before
 * the frame does (a torn tail), -1 if it is not a valid frame. */
int changelog_parse(const void *data, size_t len, changelog_view *out);

typedef int (*changelog_meta_fn)(void *ctx, const char *key, size_t key_len, const void *val,
                                 size_t len);
/* Calls fn for each named blob of the frame; -1 if they do not decode. */
int changelog_foreach_meta(const changelog_view *v, changelog_meta_fn fn, void *ctx);

/* Replays the frame into e, outputs suppressed: 0, -1 if the frame does not
 * reproduce its commit (corrupt), -2 if written with other settings. */
int changelog_replay(engine *e, const changelog_view *v);

/* ---- snapshots ------------------------------------------------------------- */

/* Called with consecutive pieces of the snapshot; non-zero stops. */
typedef int (*changelog_write_fn)(void *ctx, const void *data, size_t len);
/* Encodes the state of e after commit seq, with the named blobs meta (as
 * frames carry them: changelog_frame.meta, n_meta entries). */
int changelog_snapshot(const engine *e, uint64_t seq, const buf *meta, uint32_t n_meta,
                       changelog_write_fn write, void *ctx);
/* The first n bytes of a snapshot being loaded are no longer read. */
typedef void (*changelog_read_fn)(void *ctx, size_t n);
/* Loads a whole snapshot into a new engine e: 0, -1 corrupt or cut short,
 * -2 written with other settings, -3 a newer format. Calls meta_fn for each
 * named blob, and read_fn (if any) after each chunk (a caller reading a
 * mapped file gives the pages back: their resident size is the job's);
 * *seq is the snapshot's commit. */
int changelog_load_snapshot(engine *e, const void *data, size_t len, uint64_t *seq,
                            changelog_meta_fn meta_fn, changelog_read_fn read_fn, void *ctx);
/* Only the commit number and named blobs of a snapshot, checked as above
 * except for the users (loading checks them). */
int changelog_snapshot_meta(const void *data, size_t len, uint64_t *seq,
                            changelog_meta_fn meta_fn, void *ctx);

#endif
