/*
 * repartition.h - the records of the scale-out's repartition topic
 * (GROUP-repartition, src/task/scaleout.c), encoded and decoded; no I/O.
 *
 * Stage 1 writes, stage 2 reads; both are sessionizer of the same format
 * version (a record of another version, or another writer's, is refused,
 * never guessed at). Layout: u8 kind, u8 version, then LEB128 varints
 * (buf.h):
 *  - a marker for source partition p (W: p's progress, I: p is idle, E: p
 *    reached its end): p, its next offset (E: its end), zigzag(p's highest
 *    accepted event time, INT64_MIN for none);
 *  - a batch (B): one or more visits, each: p, zigzag(offset - previous),
 *    p's highest accepted event time - the visit's event time (never
 *    negative: it includes the visit), zigzag(event time - previous),
 *    zigzag(append ts ms - previous), zigzag(user), page length, the page;
 *    "previous" is the batch's preceding visit, 0 for its first.
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

#define REPART_VERSION 2

enum { REPART_BATCH = 'B', REPART_WM = 'W', REPART_IDLE = 'I', REPART_END = 'E' };

/* The visits bound for one repartition partition, not yet produced. */
typedef struct repart_batch {
    buf b;
    uint32_t n;                        /* visits in b; 0: b holds nothing to produce */
    int64_t prev_off, prev_t, prev_ts; /* delta bases */
} repart_batch;

/* b = a marker record (b is reset first). */
void repart_marker(buf *b, int kind, int32_t partition, int64_t offset, int64_t max_t);
/* Appends v (its pos: source partition, offset, append time) to q, starting
 * a batch when q->n is 0; max_t >= v->event_time_us. */
void repart_batch_add(repart_batch *q, const visit *v, int64_t max_t);
/* Bytes q will hold after adding a visit of page_len bytes, at most. */
static inline size_t repart_batch_after(const repart_batch *q, uint32_t page_len)
{
    return (q->n ? q->b.len : 2) + 7 * 10 + page_len;
}

/* Decodes one record: fn is called for each visit of a batch in order (kind
 * REPART_BATCH, v complete), or once for a marker (v's pos.partition and
 * pos.offset only). Partitions must be below n_src. Returns 0, -1 when the
 * record is malformed (fn may have been called for visits before the damage),
 * or fn's nonzero return, which stops the decoding. */
typedef int (*repart_fn)(void *ctx, int kind, const visit *v, int64_t max_t);
int repart_decode(const void *data, size_t len, int32_t n_src, repart_fn fn, void *ctx);

#endif
