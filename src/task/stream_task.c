/*
 * stream_task.c - the task (stream_task.h): its engine, its queue of
 * records in input order, its commit and its restore. Moved here from the
 * single-instance job, which now only drives it; the commit protocol is
 * job.h's.
 *
 * The clock is read here only for figures (the commit's duration, the
 * close-to-acknowledgement latency): what a session contains and when state
 * is saved never depend on it here; when to commit is the driver's call.
 */
#include "task/stream_task.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "common/xalloc.h"
#include "record/parse.h"
#include "record/timestamp.h"

/* Parsed visits wait this many records before the engine applies them, so
 * that the memory they will touch (user slot, session, last page) can be
 * prefetched in stages (ENGINE_PREFETCH_STAGES): an engine with 100k users is bound by memory
 * latency, not by instructions. Results are unaffected: visits are applied
 * strictly in input order, a source's caught-up marks wait in the same
 * queue in their place among them, and the queue is drained before anything
 * that must see every polled record applied (commits, end). */
#define PIPELINE 16
_Static_assert(PIPELINE < RAW_RECORD_KEEP, "a record's key must outlive its wait in the queue");

typedef struct pending {
    int is_mark;      /* a caught-up mark, not a record (then pe is not PARSE_OK) */
    source_mark mark;
    visit v;
    parse_error pe; /* an invalid record waits its turn too: dead letters stay in input order */
    char detail[160];
    raw_record raw; /* data points into bytes */
    buf bytes;      /* copies: the source and parser reuse their buffers */
    buf page;
    buf user;       /* string users */
} pending;

/* A stall never goes unnoticed: when half the records of a window of this
 * many are late, a warning says so while the job runs (a record far ahead in
 * time that --max-future let through, or a producer replaying old data). */
#define LATE_WINDOW 1000

struct stream_task {
    stream_task_config cfg;
    stream_task_parts io;
    stream_task_state state;
    engine *eng;
    record_parser *parser;
    stream_task_counts n;
    const raw_record *current; /* the record being applied, for dead letters */
    char *err;
    size_t errlen;
    int failed; /* a callback failed; err holds why */
    int64_t *close_stamps;        /* with close_to_ack_us: when each unflushed session closed */
    size_t cap_stamps;
    buf scratch;
    pending queue[PIPELINE];
    size_t q_head, q_len; /* oldest at q_head */
    unsigned window, window_late; /* records and late ones in the current LATE_WINDOW */
    int late_warned;              /* warned, and the late rate has not fallen back since */
    /* Commits sealed but not yet durable, with the input position each
     * holds: the input hears of a position (committed()) only once the
     * checkpoint's writer has made its commit durable. Oldest at acks_head. */
    struct {
        uint64_t seq;
        buf pos;
    } acks[CHECKPOINT_MAX_IN_FLIGHT + 1];
    size_t acks_head, acks_len;
    /* With a sink that commits on its own thread (sink.h, flush_begin), its
     * commits are acknowledged when the checkpoint's commit that waited for
     * them is durable: each such commit's sessions and their close stamps,
     * counted then. Oldest at sent_head. */
    struct {
        uint64_t seq, sessions;
        int64_t *stamps;
        size_t cap;
    } sent[CHECKPOINT_MAX_IN_FLIGHT + 1];
    size_t sent_head, sent_len;
};

/* Kafka Streams' task states and transitions (Task.State), less resuming a
 * suspended task: a task given back is restored anew. CLOSED is reachable
 * from everywhere, as a failure leaves the task where it was. */
static void transition(stream_task *t, stream_task_state to)
{
    stream_task_state from = t->state;
    int legal = to == STREAM_TASK_CLOSED ||
                (from == STREAM_TASK_CREATED && to == STREAM_TASK_RESTORING) ||
                (from == STREAM_TASK_RESTORING && to == STREAM_TASK_RUNNING) ||
                (from == STREAM_TASK_RUNNING && to == STREAM_TASK_SUSPENDED);
    assert(legal && "stream_task: illegal state transition");
    (void)legal;
    t->state = to;
}

static int write_dead_letter(stream_task *t, const char *reason, const char *detail, const raw_record *raw,
                             const visit *v)
{
    dead_letter dl = {.reason = reason,
                      .detail = detail,
                      .source = t->io.input->ops->describe(t->io.input),
                      .raw = raw,
                      .v = v};
    t->n.dead_letters++;
    if (t->io.m) metrics_count_reason(t->io.m, reason);
    if (t->io.dlq->ops->write(t->io.dlq, &dl, t->err, t->errlen)) {
        t->failed = 1;
        return -1;
    }
    return 0;
}

static int on_close(void *ctx, const closed_session *cs)
{
    stream_task *t = ctx;
    if (t->cfg.close_to_ack_us) {
        if (t->n.unflushed_sessions == t->cap_stamps) {
            t->cap_stamps = t->cap_stamps ? 2 * t->cap_stamps : 1024;
            t->close_stamps = xrealloc(t->close_stamps, t->cap_stamps * sizeof *t->close_stamps);
        }
        t->close_stamps[t->n.unflushed_sessions] = mono_us();
    }
    t->n.unflushed_sessions++;
    if (t->io.out->ops->write(t->io.out, cs, t->err, t->errlen)) {
        t->failed = 1;
        return -1;
    }
    return 0;
}

/* The change log: what a restore replays to rebuild the open sessions. */
static int on_accept(void *ctx, const visit *v)
{
    checkpoint_log_visit(((stream_task *)ctx)->io.cp, v);
    return 0;
}

static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    stream_task *t = ctx;
    const raw_record *raw = t->current;
    /* A session-cap eviction concerns an earlier record whose bytes are gone. */
    if (raw && (raw->pos.partition != v->pos.partition || raw->pos.offset != v->pos.offset))
        raw = NULL;
    if (why == REJECT_LATE) {
        t->window_late++;
        return write_dead_letter(t, "late", "event time below the watermark", raw, v);
    }
    if (why == REJECT_FUTURE)
        return write_dead_letter(t, "future", engine_future_detail(v->pos.append_ts_ms), raw, v);
    return write_dead_letter(t, "session_cap",
                             "the session already holds --max-pages earlier pages, or "
                             "--max-session-bytes of earlier pages' text", raw, v);
}

/* ---- the prefetch pipeline ------------------------------------------------ */

static void watch_late_rate(stream_task *t)
{
    if (2 * t->window_late < LATE_WINDOW) {
        t->late_warned = 0;
    } else if (!t->late_warned) {
        char wm[40] = "unknown";
        int64_t closing = engine_closing_watermark(t->eng);
        if (closing != INT64_MIN) format_iso8601_us(closing, wm);
        log_warn("sessionizer", "%u of the last %u visits were late (the watermark is at %s): "
                 "a visit far ahead in time may have moved it (--max-future bounds how far); "
                 "the late ones are in the dead-letter output",
                 t->window_late, LATE_WINDOW, wm);
        t->late_warned = 1;
    }
    t->window = t->window_late = 0;
}

static int apply_oldest(stream_task *t)
{
    pending *p = &t->queue[t->q_head];
    t->q_head = (t->q_head + 1) % PIPELINE;
    t->q_len--;
    if (p->pe != PARSE_OK) {
        /* Marks take the invalid records' rare branch: a valid record's
         * path pays nothing for them. */
        if (p->is_mark) {
            p->is_mark = 0;
            return engine_set_caught_up(t->eng, p->mark.partition, p->mark.caught_up) ||
                           t->failed ? -1 : 0;
        }
        t->n.invalid++;
        return write_dead_letter(t, parse_error_code(p->pe), p->detail, &p->raw, NULL);
    }
    t->current = &p->raw;
    int rc = engine_apply(t->eng, &p->v);
    t->current = NULL;
    if (++t->window == LATE_WINDOW) watch_late_rate(t);
    return rc || t->failed ? -1 : 0;
}

static int drain(stream_task *t)
{
    while (t->q_len > 0)
        if (apply_oldest(t)) return -1;
    return 0;
}

/* Parses a record into the queue; applies the oldest once the queue is full. */
static int enqueue(stream_task *t, const raw_record *rec)
{
    if (t->q_len == PIPELINE && apply_oldest(t)) return -1;
    pending *p = &t->queue[(t->q_head + t->q_len++) % PIPELINE];
    assert(!p->is_mark); /* apply_oldest clears it */
    buf_reset(&p->bytes);
    buf_append(&p->bytes, rec->data, rec->len);
    p->raw = *rec;
    p->raw.data = p->bytes.data ? (const char *)p->bytes.data : "";
    visit v;
    p->pe = record_parse(t->parser, rec, &v, p->detail, sizeof p->detail);
    if (p->pe != PARSE_OK) return 0;
    buf_reset(&p->page);
    buf_append(&p->page, v.page, v.page_len);
    p->v = v;
    p->v.page = p->page.data ? (const char *)p->page.data : "";
    if (v.user) {
        buf_reset(&p->user);
        buf_append(&p->user, v.user, v.user_len);
        p->v.user = (const char *)p->user.data;
    }
    /* stage 0 for the newest, each next one for a record a stage further along */
    if (v.user) return 0; /* string users are found by their bytes: nothing to prefetch yet */
    for (size_t s = 0; s < ENGINE_PREFETCH_STAGES; s++) {
        size_t back = s * PIPELINE / ENGINE_PREFETCH_STAGES;
        if (t->q_len <= back) break;
        engine_prefetch(t->eng, t->queue[(t->q_head + t->q_len - 1 - back) % PIPELINE].v.user_id, (int)s);
    }
    return 0;
}

/* A caught-up mark takes its place in the queue: it speaks of the records
 * before it, which the engine must have applied first, and of none after. */
static int enqueue_mark(stream_task *t, const source_mark *m)
{
    assert(m->partition >= 0);
    if (t->q_len == PIPELINE && apply_oldest(t)) return -1;
    pending *p = &t->queue[(t->q_head + t->q_len++) % PIPELINE];
    p->is_mark = 1;
    p->pe = PARSE_INVALID_JSON; /* any error will do: see apply_oldest */
    p->mark = *m;
    return 0;
}

/* ---- checkpoint ---------------------------------------------------------- */

/* What the checkpoint is bound to: the log, not the spelling of its URI. */
static void source_identity(stream_task *t, buf *out)
{
    if (t->io.input->ops->identity) t->io.input->ops->identity(t->io.input, out);
    else buf_append_str(out, t->cfg.input_uri);
}

/* What it is bound to on the output side: the stores where the sessions and
 * dead letters it counts as written are (sink.h, deadletter.h). */
static void sink_identity(stream_task *t, buf *out)
{
    if (t->io.out->ops->identity) t->io.out->ops->identity(t->io.out, out);
    else buf_printf(out, "%s:", t->io.out->ops->scheme);
}

static void deadletter_identity(stream_task *t, buf *out)
{
    /* The default file lives in the checkpoint directory: bound to it, not
     * to its path, so that the directory can be moved (renamed) whole. */
    if (t->cfg.dlq_in_checkpoint) buf_append_str(out, "jsonl:CHECKPOINT/deadletter.jsonl");
    else if (t->io.dlq->ops->identity) t->io.dlq->ops->identity(t->io.dlq, out);
    else buf_printf(out, "%s:", t->io.dlq->ops->scheme);
}

/* "columns=session_start,visit_count" ("columns=" for none). */
static void describe_columns(unsigned columns, buf *out)
{
    buf_append_str(out, "columns=");
    for (unsigned c = 0, n = 0; c < SINK_N_OPTIONAL; c++)
        if (columns >> c & 1) buf_printf(out, "%s%s", n++ ? "," : "", sink_column_names[c]);
}

static void save_counters(const stream_task *t, buf *out)
{
    buf_put_u64le(out, t->n.records);
    buf_put_u64le(out, t->n.dead_letters);
    buf_put_u64le(out, t->n.invalid);
}


/* A new checkpoint is committed before the first record, with no source
 * position (a restart starts where a first run would) but with the outputs'
 * lengths: a crash before the first real commit then rewinds the JSON-lines
 * outputs to what they held before this checkpoint's history began. */

static void acknowledge(stream_task *t);

/* The sink acknowledged n sessions, closed at stamps[0..n) (with
 * close_to_ack_us), at `acked`. */
static void sessions_acknowledged(stream_task *t, uint64_t n, const int64_t *stamps, int64_t acked)
{
    if (t->cfg.close_to_ack_us)
        for (uint64_t i = 0; i < n; i++)
            histogram_add(t->cfg.close_to_ack_us, (uint64_t)(acked - stamps[i]));
    if (t->io.m) {
        t->io.m->sink_flushes++;
        t->io.m->sink_sessions_written += n;
    }
}

/* The checkpoint's gate (checkpoint.h) over the sink's flush_wait. */
static int sink_gate(void *ctx, uint64_t ticket, char *err, size_t errlen)
{
    sink *out = ctx;
    return out->ops->flush_wait(out, ticket, err, errlen);
}

/* After commit seq: the sessions the sink has yet to acknowledge wait for
 * it with their stamps (the arrays are swapped, not copied). */
static void send_sessions(stream_task *t, uint64_t seq)
{
    assert(t->sent_len <= CHECKPOINT_MAX_IN_FLIGHT);
    size_t at = (t->sent_head + t->sent_len++) % (CHECKPOINT_MAX_IN_FLIGHT + 1);
    t->sent[at].seq = seq;
    t->sent[at].sessions = t->n.unflushed_sessions;
    int64_t *stamps = t->sent[at].stamps;
    size_t cap = t->sent[at].cap;
    t->sent[at].stamps = t->close_stamps;
    t->sent[at].cap = t->cap_stamps;
    t->close_stamps = stamps;
    t->cap_stamps = cap;
    t->n.unflushed_sessions = 0;
}

static int commit_body(stream_task *t, int with_position)
{
    /* The source position covers every polled record: apply them all first. */
    if (drain(t)) return -1;
    /* With a checkpoint, a sink that commits on a thread of its own is not
     * waited for here: the checkpoint's writer waits for its commit (the
     * ticket) before it writes this commit's frame, and the job goes on
     * reading meanwhile. */
    int pipelined = t->io.cp && t->io.out->ops->flush_begin;
    uint64_t ticket = 0;
    if (pipelined) {
        ticket = t->io.out->ops->flush_begin(t->io.out);
    } else {
        if (t->io.out->ops->flush(t->io.out, t->err, t->errlen)) return -1;
        sessions_acknowledged(t, t->n.unflushed_sessions, t->close_stamps, mono_us());
        t->n.unflushed_sessions = 0;
    }
    if (t->io.dlq->ops->flush(t->io.dlq, t->err, t->errlen)) return -1;
    if (!t->io.cp) return 0;
    buf *b = &t->scratch;
    if (checkpoint_begin(t->io.cp, t->err, t->errlen)) return -1;
#define PUT(key, fill)                                                                   \
    do {                                                                                 \
        buf_reset(b);                                                                    \
        fill;                                                                            \
        if (checkpoint_put(t->io.cp, key, b->data, b->len, t->err, t->errlen)) goto fail;   \
    } while (0)
    PUT("source_uri", buf_append_str(b, t->cfg.input_uri));
    PUT("source_id", source_identity(t, b));
    if (with_position) PUT("source_position", t->io.input->ops->position(t->io.input, b));
    PUT("records", record_mapping_describe(t->cfg.records, b));
    PUT("columns", describe_columns(t->cfg.columns, b));
    PUT("counters", save_counters(t, b));
    PUT("sink_id", sink_identity(t, b));
    PUT("deadletter_id", deadletter_identity(t, b));
    if (t->io.out->ops->save) PUT("sink", t->io.out->ops->save(t->io.out, b));
    if (t->io.dlq->ops->save) PUT("deadletter", t->io.dlq->ops->save(t->io.dlq, b));
#undef PUT
    /* (a failure reading cold users back for a snapshot is named by the
     * driver, whose cold store it is) */
    if (checkpoint_commit(t->io.cp, t->eng, ticket, t->err, t->errlen)) return -1;
    /* the commits made durable meanwhile are counted first: then fewer than
     * CHECKPOINT_MAX_IN_FLIGHT wait, this one aside (checkpoint_commit waits
     * for room) */
    acknowledge(t);
    if (pipelined) send_sessions(t, checkpoint_seq(t->io.cp));
    engine_clear_dirty(t->eng); /* gives back the close queue's memory after a peak */
    if (with_position && t->io.input->ops->committed) {
        /* the position just saved (the source has not moved since), told to
         * the source once the commit is durable */
        assert(t->acks_len <= CHECKPOINT_MAX_IN_FLIGHT);
        size_t at = (t->acks_head + t->acks_len++) % (CHECKPOINT_MAX_IN_FLIGHT + 1);
        t->acks[at].seq = checkpoint_seq(t->io.cp);
        buf_reset(&t->acks[at].pos);
        buf_reset(b);
        t->io.input->ops->position(t->io.input, b);
        buf_append(&t->acks[at].pos, b->data, b->len);
        acknowledge(t);
    }
    t->n.commits++;
    return 0;
fail:
    checkpoint_abort(t->io.cp);
    return -1;
}

/* Tells the source the newest position whose commit is durable, and counts
 * the sessions those commits waited for. */
static void acknowledge(stream_task *t)
{
    if (!t->io.cp || (t->acks_len == 0 && t->sent_len == 0)) return;
    uint64_t durable = checkpoint_durable_seq(t->io.cp);
    if (t->sent_len > 0 && t->sent[t->sent_head].seq <= durable) {
        int64_t now = mono_us();
        while (t->sent_len > 0 && t->sent[t->sent_head].seq <= durable) {
            size_t h = t->sent_head;
            sessions_acknowledged(t, t->sent[h].sessions, t->sent[h].stamps, now);
            t->sent_head = (h + 1) % (CHECKPOINT_MAX_IN_FLIGHT + 1);
            t->sent_len--;
        }
    }
    size_t last = SIZE_MAX;
    while (t->acks_len > 0 && t->acks[t->acks_head].seq <= durable) {
        last = t->acks_head;
        t->acks_head = (t->acks_head + 1) % (CHECKPOINT_MAX_IN_FLIGHT + 1);
        t->acks_len--;
    }
    if (last != SIZE_MAX)
        t->io.input->ops->committed(t->io.input, t->acks[last].pos.data, t->acks[last].pos.len);
}



/* The record layout and the session columns are bound to the checkpoint
 * like --gap: the same log read with another mapping is another input, and
 * a table whose rows change shape half-way is no table. Checkpoints written
 * before the options existed used the default layout and no columns. */
static int check_records(stream_task *t)
{
    static const char *const keys[] = {"records", "columns"};
    int same = 1;
    for (size_t k = 0; k < 2 && same; k++) {
        buf was, now;
        buf_init(&was);
        buf_init(&now);
        int got = checkpoint_get(t->io.cp, keys[k], &was, t->err, t->errlen);
        if (k == 0) {
            record_mapping_describe(t->cfg.records, &now);
            if (got == 0) {
                record_mapping def;
                record_mapping_default(&def);
                record_mapping_describe(&def, &was);
            }
        } else {
            describe_columns(t->cfg.columns, &now);
            if (got == 0) describe_columns(0, &was);
        }
        same = got >= 0 && was.len == now.len && memcmp(was.data, now.data, now.len) == 0;
        if (got >= 0 && !same)
            snprintf(t->err, t->errlen, "checkpoint %s was written with other %s settings "
                     "(%.*s), not (%.*s). Rerun with the settings it was written with (%s), or "
                     "use a new checkpoint directory to reprocess the input",
                     t->cfg.checkpoint_dir, k == 0 ? "record" : "column",
                     (int)(was.len > 400 ? 400 : was.len), (const char *)was.data,
                     (int)(now.len > 400 ? 400 : now.len), (const char *)now.data,
                     k == 0 ? "--field, --user-type, --time-format, --time-from, --user-from"
                            : "--columns");
        buf_free(&was);
        buf_free(&now);
    }
    return same ? 0 : -1;
}

/* Refuses to resume into another output than the checkpoint's: what it
 * counts as written would be missing there, and rewinding a file would cut
 * one it never wrote. Checked before anything is rewound. A checkpoint
 * written before output identities were stored has none: it resumes as it
 * did then, and is bound from its next commit on. */
static int check_output(stream_task *t, const char *key, const char *what, const char *flag,
                        void (*identity)(stream_task *, buf *))
{
    buf *was = &t->scratch;
    buf_reset(was);
    int got = checkpoint_get(t->io.cp, key, was, t->err, t->errlen);
    if (got <= 0) return got;
    buf now;
    buf_init(&now);
    identity(t, &now);
    int same = was->len == now.len && memcmp(was->data, now.data, now.len) == 0;
    if (!same)
        snprintf(t->err, t->errlen, "checkpoint %s was written for the %s %.*s, not %.*s: what "
                 "it counts as written is there. Resume with the %s naming %.*s, or use a new "
                 "--checkpoint directory to process the input again from the beginning into "
                 "%.*s", t->cfg.checkpoint_dir, what, (int)(was->len > 300 ? 300 : was->len),
                 (const char *)was->data, (int)(now.len > 300 ? 300 : now.len),
                 (const char *)now.data, flag, (int)(was->len > 300 ? 300 : was->len),
                 (const char *)was->data, (int)(now.len > 300 ? 300 : now.len),
                 (const char *)now.data);
    buf_free(&now);
    return same ? 0 : -1;
}

static int restore_checkpoint(stream_task *t)
{
    buf *b = &t->scratch;
    char *err = t->err;
    size_t errlen = t->errlen;
    /* The log's identity when the checkpoint has one; checkpoints written
     * before it existed are bound to the exact URI. */
    buf now_id;
    buf_init(&now_id);
    buf_reset(b); /* checkpoint_get leaves it alone when the key is missing */
    int got = checkpoint_get(t->io.cp, "source_id", b, err, errlen);
    if (got == 1) {
        source_identity(t, &now_id);
    } else if (got == 0) {
        got = checkpoint_get(t->io.cp, "source_uri", b, err, errlen);
        buf_append_str(&now_id, t->cfg.input_uri);
    }
    int same = got == 1 && b->len == now_id.len && memcmp(b->data, now_id.data, b->len) == 0;
    if (got >= 0 && !same) {
        buf was;
        buf_init(&was);
        if (checkpoint_get(t->io.cp, "source_uri", &was, err, errlen) < 0) buf_reset(&was);
        snprintf(err, errlen, "checkpoint %s belongs to the source '%.*s' (%.*s), not '%s' (%.*s). "
                 "Use another --checkpoint directory for this source",
                 t->cfg.checkpoint_dir, (int)(was.len > 200 ? 200 : was.len),
                 was.data ? (const char *)was.data : "", (int)(b->len > 200 ? 200 : b->len),
                 b->data ? (const char *)b->data : "", t->cfg.input_uri,
                 (int)(now_id.len > 200 ? 200 : now_id.len),
                 now_id.data ? (const char *)now_id.data : "");
        buf_free(&was);
    }
    buf_free(&now_id);
    if (got < 0 || !same) return -1;
    if (check_output(t, "sink_id", "sink", "--sink", sink_identity) ||
        check_output(t, "deadletter_id", "dead-letter output", "--dlq", deadletter_identity))
        return -1;
    if (check_records(t)) return -1;
    /* (a cold store's failure is named by the driver, whose store it is) */
    int rc = checkpoint_restore(t->io.cp, t->eng, err, errlen);
    if (rc == -2) {
        snprintf(err, errlen, "checkpoint %s was written with other session settings "
                 "(--gap, --lateness, --max-pages, --max-session-bytes, which is 1GiB for a "
                 "checkpoint from before that option, or --max-future). Rerun with the settings it was written "
                 "with, or use a new checkpoint directory to reprocess the input",
                 t->cfg.checkpoint_dir);
        return -1;
    }
    if (rc) return -1;
    got = checkpoint_get(t->io.cp, "counters", b, err, errlen);
    if (got < 0) return -1;
    reader r;
    reader_init(&r, b->data, b->len);
    reader_u64le(&r, &t->n.records);
    reader_u64le(&r, &t->n.dead_letters);
    reader_u64le(&r, &t->n.invalid);
    if (got == 0 || r.bad) {
        snprintf(err, errlen, "checkpoint %s is corrupt (counters). Delete it to reprocess "
                 "the input from the beginning", t->cfg.checkpoint_dir);
        return -1;
    }
    got = checkpoint_get(t->io.cp, "source_position", b, err, errlen);
    if (got < 0) return -1;
    if (got == 1 && t->io.input->ops->seek(t->io.input, b->data, b->len, err, errlen)) return -1;
    if (t->io.out->ops->restore) {
        got = checkpoint_get(t->io.cp, "sink", b, err, errlen);
        if (got < 0 || (got == 1 && t->io.out->ops->restore(t->io.out, b->data, b->len, err, errlen)))
            return -1;
    }
    if (t->io.dlq->ops->restore) {
        got = checkpoint_get(t->io.cp, "deadletter", b, err, errlen);
        if (got < 0 || (got == 1 && t->io.dlq->ops->restore(t->io.dlq, b->data, b->len, err, errlen)))
            return -1;
    }
    t->n.resumed = 1;
    return 0;
}

static int commit_at(stream_task *t, int with_position)
{
    int64_t t0 = mono_us();
    int rc = commit_body(t, with_position);
    if (rc == 0 && t->io.m && t->io.cp) {
        metrics_count_commit(t->io.m, (double)(mono_us() - t0) / 1e6, status_wall_ms());
        t->io.m->checkpoint_bytes = checkpoint_disk_bytes(t->io.cp);
    }
    return rc;
}

/* ---- the lifecycle ------------------------------------------------------- */

stream_task *stream_task_new(const stream_task_config *cfg, const stream_task_parts *parts,
                             char *err, size_t errlen)
{
    assert(parts->input && parts->out && parts->dlq);
    stream_task *t = xcalloc(1, sizeof *t);
    t->cfg = *cfg;
    t->io = *parts;
    t->err = err;
    t->errlen = errlen;
    t->state = STREAM_TASK_CREATED;
    buf_init(&t->scratch);
    engine_callbacks cb = {.ctx = t,
                           .on_close = on_close,
                           .on_reject = on_reject,
                           .on_accept = parts->cp ? on_accept : NULL};
    t->eng = engine_new(&cfg->engine, &cb);
    t->parser = record_parser_new(cfg->records);
    assert(!parts->out->ops->flush_begin == !parts->out->ops->flush_wait);
    if (parts->cp && parts->out->ops->flush_begin) checkpoint_set_gate(parts->cp, sink_gate, parts->out);
    return t;
}

int stream_task_restore(stream_task *t)
{
    transition(t, STREAM_TASK_RESTORING);
    int rc = 0;
    if (t->io.cp) rc = checkpoint_has_state(t->io.cp) ? restore_checkpoint(t) : commit_at(t, 0);
    if (rc) return -1;
    transition(t, STREAM_TASK_RUNNING);
    return 0;
}

int stream_task_add_record(stream_task *t, const raw_record *rec)
{
    assert(t->state == STREAM_TASK_RUNNING);
    t->n.records++;
    t->n.records_this_run++;
    return enqueue(t, rec);
}

int stream_task_add_mark(stream_task *t, const source_mark *mark)
{
    assert(t->state == STREAM_TASK_RUNNING);
    return enqueue_mark(t, mark);
}

int stream_task_process_all(stream_task *t)
{
    assert(t->state == STREAM_TASK_RUNNING);
    return drain(t);
}

int stream_task_close_sessions(stream_task *t)
{
    assert(t->state == STREAM_TASK_RUNNING);
    if (drain(t)) return -1;
    /* held visits first: their acceptance is logged before the close */
    if (engine_release_held(t->eng)) return -1;
    if (t->io.cp) checkpoint_log_close_all(t->io.cp);
    return engine_close_all(t->eng) ? -1 : 0;
}

int stream_task_commit(stream_task *t)
{
    assert(t->state == STREAM_TASK_RUNNING);
    return commit_at(t, 1);
}

void stream_task_report_durable(stream_task *t) { acknowledge(t); }

int stream_task_suspend(stream_task *t)
{
    if (stream_task_commit(t)) return -1;
    if (t->io.cp && checkpoint_sync(t->io.cp, t->err, t->errlen)) return -1;
    acknowledge(t);
    transition(t, STREAM_TASK_SUSPENDED);
    return 0;
}

void stream_task_close(stream_task *t)
{
    if (!t) return;
    transition(t, STREAM_TASK_CLOSED);
    record_parser_free(t->parser);
    engine_free(t->eng);
    free(t->close_stamps);
    for (size_t i = 0; i <= CHECKPOINT_MAX_IN_FLIGHT; i++) {
        buf_free(&t->acks[i].pos);
        free(t->sent[i].stamps);
    }
    for (size_t i = 0; i < PIPELINE; i++) {
        buf_free(&t->queue[i].bytes);
        buf_free(&t->queue[i].page);
        buf_free(&t->queue[i].user);
    }
    buf_free(&t->scratch);
    free(t);
}

stream_task_state stream_task_get_state(const stream_task *t) { return t->state; }

const stream_task_counts *stream_task_get_counts(const stream_task *t) { return &t->n; }

engine *stream_task_engine(stream_task *t) { return t->eng; }
