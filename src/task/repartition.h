/*
 * repartition.h - the records of the scale-out's repartition topic
 * (GROUP-repartition, src/task/scaleout.c), encoded and decoded; no I/O.
 *
 * Stage 1 writes, stage 2 reads. A record of a version this decoder does
 * not know, or another writer's, is refused, never guessed at. Layout: u8
 * kind, u8 version, then LEB128 varints (buf.h):
 *  - a marker for source partition p (W: p's progress, I: p is idle, E: p
 *    reached its end): p, its next offset (E: its end), zigzag(p's highest
 *    accepted event time, INT64_MIN for none);
 *  - a batch (B): one or more visits, each: p, zigzag(offset - previous),
 *    p's highest accepted event time - the visit's event time (never
 *    negative: it includes the visit), zigzag(event time - previous),
 *    zigzag(append ts ms - previous), the user, page length, the page;
 *    "previous" is the batch's preceding visit, 0 for its first. The user
 *    is zigzag(user) for int users (version 2), its length (1 to
 *    USER_MAX_BYTES, visit.h) and its UTF-8 bytes for string users
 *    (version 3: a batch holds users of one type).
 * Versions: 2 has int users only; 3 adds string users. A writer stamps the
 * lowest version that holds the record (markers and int batches are 2, byte
 * for byte what version 2 wrote), so that instances of version 2 and 3 can
 * share a group of int users during an upgrade; the decoder reads both.
 * Many visits a Kafka record, because librdkafka's cost is per record (an
 * allocation and a copy on each side, the consumer's queue), and small
 * deltas because the repartition's bytes are added broker traffic: a visit
 * costs its page + ~12 bytes (docs/scaling.md, Figures).
 */
#ifndef SESSIONIZER_REPARTITION_H
#define SESSIONIZER_REPARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "record/visit.h"

#define REPART_VERSION 2         /* markers, batches of int users */
#define REPART_VERSION_STRINGS 3 /* batches of string users */

enum { REPART_BATCH = 'B', REPART_WM = 'W', REPART_IDLE = 'I', REPART_END = 'E' };

/* The visits bound for one repartition partition, not yet produced. */
typedef struct repart_batch {
    buf b;
    uint32_t n;                        /* visits in b; 0: b holds nothing to produce */
    int strings;                       /* its users are strings (version 3) */
    int64_t prev_off, prev_t, prev_ts; /* delta bases */
} repart_batch;

/* b = a marker record (b is reset first). */
void repart_marker(buf *b, int kind, int32_t partition, int64_t offset, int64_t max_t);
/* Appends v (its pos: source partition, offset, append time; an int user,
 * or a string user of 1 to USER_MAX_BYTES bytes, the batch's other users'
 * type) to q, starting a batch when q->n is 0; max_t >= v->event_time_us. */
void repart_batch_add(repart_batch *q, const visit *v, int64_t max_t);
/* Bytes q will hold after adding v, at most. */
static inline size_t repart_batch_after(const repart_batch *q, const visit *v)
{
    return (q->n ? q->b.len : 2) + 7 * 10 + v->page_len + (v->user ? v->user_len : 0);
}

/* The repartition partition of v's user, of R: splitmix64 of an int user
 * (consecutive ids spread), XXH3-64 of a string user's bytes, mod R. It
 * must never change for a group (docs/scaling.md): unit.test_repartition
 * freezes it. */
int32_t repart_partition(const visit *v, int32_t R);

/* Decodes one record: fn is called for each visit of a batch in order (kind
 * REPART_BATCH, v complete: v->user is NULL for an int user, else its bytes
 * in the record, checked as the parser checks them), or once for a marker
 * (v's pos.partition and pos.offset only). Partitions must be below n_src.
 * Returns 0, -1 when the record is malformed (fn may have been called for
 * visits before the damage), or fn's nonzero return, which stops the
 * decoding. */
typedef int (*repart_fn)(void *ctx, int kind, const visit *v, int64_t max_t);
int repart_decode(const void *data, size_t len, int32_t n_src, repart_fn fn, void *ctx);

#endif
