/*
 * job.c - the run loop (commit protocol in job.h).
 *
 * Everything with a clock lives here, not in the engine: commit intervals and
 * the progress line. They decide *when* state is saved or shown, never *what*
 * a session contains, so results do not depend on them.
 */
#include "job/job.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/checkpoint.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/testenv.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "job/coldstore.h"
#include "record/parse.h"
#include "record/timestamp.h"

#define MAX_PARTITIONS 4096

/* Parsed visits wait this many records before the engine applies them, so
 * that the memory they will touch (user slot, session, last page) can be
 * prefetched in three stages: an engine with 100k users is bound by memory
 * latency, not by instructions. Results are unaffected: visits are applied
 * strictly in input order, a source's caught-up marks wait in the same
 * queue in their place among them, and the queue is drained before anything
 * that must see every polled record applied (commits, end). */
#define PIPELINE 12
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

typedef struct job {
    const job_config *cfg;
    source *src;
    sink *snk;
    deadletter *dlq;
    checkpoint *cp;
    engine *eng;
    record_parser *parser;
    const raw_record *current; /* the record being applied, for dead letters */
    job_result *res;
    char *err;
    size_t errlen;
    int failed; /* a callback failed; err holds why */
    uint64_t closed_since_commit; /* sessions written but not yet flushed */
    int64_t *close_stamps;        /* with latency_stats: when each of them closed */
    size_t cap_stamps;
    buf scratch;
    partition_info *parts;
    pending queue[PIPELINE];
    size_t q_head, q_len; /* oldest at q_head */
    uint64_t memory_limit; /* resolved --memory-limit, bytes */
    /* State larger than memory: the engine's budget within memory_limit, and
     * the scratch file of cold users (opened at the first eviction). */
    uint64_t spill_budget;
    uint64_t rss_at_cut; /* resident size after memory_check last lowered the budget */
    uint64_t commit_every; /* cfg->commit_every, or fewer visits when spilling (setup_spill) */
    coldstore *cold;
    char cold_err[512]; /* a cold store failure, kept from being overwritten */
    /* With cfg->metrics: the figures this thread keeps (plain counters) and
     * publishes at each commit and every second; base holds the engine's
     * counters as restored, since the metrics count from process start. */
    metrics_snapshot *m;
    engine_stats base;
    double last_publish;
    unsigned window, window_late; /* records and late ones in the current LATE_WINDOW */
    int late_warned;              /* warned, and the late rate has not fallen back since */
    /* Commits sealed but not yet durable, with the source position each
     * holds: the source hears of a position (committed()) only once the
     * checkpoint's writer has made its commit durable. Oldest at acks_head. */
    struct {
        uint64_t seq;
        buf pos;
    } acks[CHECKPOINT_MAX_IN_FLIGHT + 1];
    size_t acks_head, acks_len;
} job;

/* A stall never goes unnoticed: when half the records of a window of this
 * many are late, a warning says so while the job runs (a record far ahead in
 * time that --max-future let through, or a producer replaying old data). */
#define LATE_WINDOW 1000

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double now_s(void) { return (double)now_us() / 1e6; }

static int write_dead_letter(job *j, const char *reason, const char *detail, const raw_record *raw,
                             const visit *v)
{
    dead_letter dl = {.reason = reason,
                      .detail = detail,
                      .source = j->src->ops->describe(j->src),
                      .raw = raw,
                      .v = v};
    j->res->dead_letters++;
    if (j->m) metrics_count_reason(j->m, reason);
    if (j->dlq->ops->write(j->dlq, &dl, j->err, j->errlen)) {
        j->failed = 1;
        return -1;
    }
    return 0;
}

static int on_close(void *ctx, const closed_session *cs)
{
    job *j = ctx;
    if (j->cfg->latency_stats) {
        if (j->closed_since_commit == j->cap_stamps) {
            j->cap_stamps = j->cap_stamps ? 2 * j->cap_stamps : 1024;
            j->close_stamps = xrealloc(j->close_stamps, j->cap_stamps * sizeof *j->close_stamps);
        }
        j->close_stamps[j->closed_since_commit] = now_us();
    }
    j->closed_since_commit++;
    if (j->snk->ops->write(j->snk, cs, j->err, j->errlen)) {
        j->failed = 1;
        return -1;
    }
    return 0;
}

/* The change log: what a restore replays to rebuild the open sessions. */
static int on_accept(void *ctx, const visit *v)
{
    checkpoint_log_visit(((job *)ctx)->cp, v);
    return 0;
}

static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    job *j = ctx;
    const raw_record *raw = j->current;
    /* A session-cap eviction concerns an earlier record whose bytes are gone. */
    if (raw && (raw->pos.partition != v->pos.partition || raw->pos.offset != v->pos.offset))
        raw = NULL;
    if (why == REJECT_LATE) {
        j->window_late++;
        return write_dead_letter(j, "late", "event time below the watermark", raw, v);
    }
    if (why == REJECT_FUTURE)
        return write_dead_letter(j, "future", engine_future_detail(v->pos.append_ts_ms), raw, v);
    return write_dead_letter(j, "session_cap",
                             "the session already holds --max-pages earlier pages, or "
                             "--max-session-bytes of earlier pages' text", raw, v);
}

/* ---- state larger than memory --------------------------------------------- */

/* In the checkpoint directory: on the disk the user chose for the job's
 * state (never /dev/shm-like defaults when a checkpoint says where). */
static const char *spill_dir(const job *j)
{
    const char *tmp = getenv("TMPDIR");
    return j->cfg->checkpoint_dir ? j->cfg->checkpoint_dir : tmp && *tmp ? tmp : "/tmp";
}

static int cold_failed(job *j, const char *what)
{
    int e = errno;
    snprintf(j->cold_err, sizeof j->cold_err,
             "the cold store of --memory-limit (an unlinked file in %s) failed: %s: %s%s",
             spill_dir(j), what, strerror(e),
             e == ENOSPC || e == EDQUOT
                 ? " (disk full; the checkpoint is intact: free space, or raise --memory-limit, "
                   "and restart)"
                 : "; the checkpoint is intact and a restart resumes from it");
    snprintf(j->err, j->errlen, "%s", j->cold_err);
    j->failed = 1;
    return -1;
}

static int cold_put(void *ctx, const user_key *user, const void *blob, size_t len, uint64_t *handle)
{
    job *j = ctx;
    (void)user;
    if (!j->cold) {
        j->cold = coldstore_open(spill_dir(j), j->cold_err, sizeof j->cold_err);
        if (!j->cold) {
            snprintf(j->err, j->errlen, "%s", j->cold_err);
            j->failed = 1;
            return -1;
        }
    }
    return coldstore_put(j->cold, blob, len, handle) ? cold_failed(j, "cannot write") : 0;
}

static int cold_get(void *ctx, uint64_t handle, size_t len, buf *out)
{
    job *j = ctx;
    return coldstore_get(j->cold, handle, len, out) ? cold_failed(j, "cannot read a user back") : 0;
}

static void cold_drop(void *ctx, uint64_t handle, size_t len)
{
    coldstore_drop(((job *)ctx)->cold, handle, len);
}

/* Memory the job needs besides the engine's state, at first: buffers of the
 * source, sink, parser and checkpoint frame (which grows with the visits of
 * a commit), the cold store's write buffer, malloc's slack. An eighth of the
 * limit, 4 MiB at least; memory_check lowers the budget if that was not
 * enough. */
#define SPILL_RESERVE_MIN ((uint64_t)4 << 20)
#define SPILL_BUDGET_MIN ((uint64_t)1 << 20)
#define SPILL_COMMIT_MIN 1000
/* A visit's share of the frames: ~25 bytes in the change-log frame being
 * built, its sealed copy, the writer's queue and its batch, each a buffer
 * that doubles. */
#define SPILL_FRAME_BYTES 200

static void set_spill_budget(job *j, uint64_t budget)
{
    j->spill_budget = budget;
    engine_cold_store ops = {.ctx = j, .put = cold_put, .get = cold_get, .drop = cold_drop};
    engine_set_cold_store(j->eng, &ops, budget);
}

/* The engine spills cold users once its memory passes what the limit leaves
 * after the process's own (resident before any state) and the reserve. A
 * limit too small for that leaves only the stop of memory_check. */
static void setup_spill(job *j)
{
    /* undocumented in --help: tests and the fault campaign spill small
     * inputs with a budget of a few KB */
    long long forced = testenv_positive(TESTENV_SPILL_BUDGET);
    if (forced) {
        set_spill_budget(j, (uint64_t)forced);
        return;
    }
    uint64_t base = memory_resident_bytes(), limit = j->memory_limit;
    uint64_t reserve = limit / 8 > SPILL_RESERVE_MIN ? limit / 8 : SPILL_RESERVE_MIN;
    /* The frames of a commit are bounded by committing at least every
     * limit / 4096 visits (so they take about a twentieth of the limit: 25
     * visits a MiB of limit, ~0.7 ms of work), and the writer's queue to two
     * frames: otherwise the default 100k visits a commit took 10-16 MiB. */
    uint64_t visits = limit / 4096 > SPILL_COMMIT_MIN ? limit / 4096 : SPILL_COMMIT_MIN;
    if (j->cp) {
        if (j->commit_every > visits) j->commit_every = visits;
        uint64_t n = j->commit_every ? j->commit_every : 100000;
        checkpoint_set_max_queued(j->cp, 2 * SPILL_FRAME_BYTES / 8 * n);
        reserve += SPILL_FRAME_BYTES * n;
    }
    if (limit == 0 || base == 0 || limit <= base + reserve + SPILL_BUDGET_MIN) return;
    /* a limit the user chose: memory before speed (the default, half of the
     * machine, keeps the heap's speed) */
    if (j->cfg->memory_limit) memory_tight();
    set_spill_budget(j, limit - base - reserve);
}

/* At a commit: rewrite the cold store when dead records outweigh the live
 * ones (coldstore.h). A rename half done leaves handles in both files: the
 * job then stops (the checkpoint is the truth, the store a scratch). */
static int compact_cold(job *j)
{
    if (!j->cold || !coldstore_wants_compaction(j->cold)) return 0;
    if (coldstore_compact_begin(j->cold)) return 0; /* no room for a new file: later */
    int ok = engine_cold_rehandle(j->eng, coldstore_move, j->cold) == 0;
    return coldstore_compact_end(j->cold, ok) ? cold_failed(j, "cannot compact") : 0;
}

/* ---- the prefetch pipeline ------------------------------------------------ */

static void watch_late_rate(job *j)
{
    if (2 * j->window_late < LATE_WINDOW) {
        j->late_warned = 0;
    } else if (!j->late_warned) {
        char wm[40] = "unknown";
        int64_t closing = engine_closing_watermark(j->eng);
        if (closing != INT64_MIN) format_iso8601_us(closing, wm);
        log_warn("sessionizer", "%u of the last %u visits were late (the watermark is at %s): "
                 "a visit far ahead in time may have moved it (--max-future bounds how far); "
                 "the late ones are in the dead-letter output",
                 j->window_late, LATE_WINDOW, wm);
        j->late_warned = 1;
    }
    j->window = j->window_late = 0;
}

static int apply_oldest(job *j)
{
    pending *p = &j->queue[j->q_head];
    j->q_head = (j->q_head + 1) % PIPELINE;
    j->q_len--;
    if (p->pe != PARSE_OK) {
        /* Marks take the invalid records' rare branch: a valid record's
         * path pays nothing for them. */
        if (p->is_mark) {
            p->is_mark = 0;
            return engine_set_caught_up(j->eng, p->mark.partition, p->mark.caught_up) ||
                           j->failed ? -1 : 0;
        }
        j->res->invalid++;
        return write_dead_letter(j, parse_error_code(p->pe), p->detail, &p->raw, NULL);
    }
    j->current = &p->raw;
    int rc = engine_apply(j->eng, &p->v);
    j->current = NULL;
    if (++j->window == LATE_WINDOW) watch_late_rate(j);
    return rc || j->failed ? -1 : 0;
}

static int drain(job *j)
{
    while (j->q_len > 0)
        if (apply_oldest(j)) return -1;
    return 0;
}

/* Parses a record into the queue; applies the oldest once the queue is full. */
static int enqueue(job *j, const raw_record *rec)
{
    if (j->q_len == PIPELINE && apply_oldest(j)) return -1;
    pending *p = &j->queue[(j->q_head + j->q_len++) % PIPELINE];
    assert(!p->is_mark); /* apply_oldest clears it */
    buf_reset(&p->bytes);
    buf_append(&p->bytes, rec->data, rec->len);
    p->raw = *rec;
    p->raw.data = p->bytes.data ? (const char *)p->bytes.data : "";
    visit v;
    p->pe = record_parse(j->parser, rec, &v, p->detail, sizeof p->detail);
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
    /* stage 0 for the newest, 1 and 2 for those a third and two thirds along */
    if (v.user) return 0; /* string users are found by their bytes: nothing to prefetch yet */
    engine_prefetch(j->eng, v.user_id, 0);
    if (j->q_len > PIPELINE / 3)
        engine_prefetch(j->eng, j->queue[(j->q_head + j->q_len - 1 - PIPELINE / 3) % PIPELINE].v.user_id, 1);
    if (j->q_len > 2 * PIPELINE / 3)
        engine_prefetch(j->eng, j->queue[(j->q_head + j->q_len - 1 - 2 * PIPELINE / 3) % PIPELINE].v.user_id, 2);
    return 0;
}

/* A caught-up mark takes its place in the queue: it speaks of the records
 * before it, which the engine must have applied first, and of none after. */
static int enqueue_mark(job *j, const source_mark *m)
{
    assert(m->partition >= 0);
    if (j->q_len == PIPELINE && apply_oldest(j)) return -1;
    pending *p = &j->queue[(j->q_head + j->q_len++) % PIPELINE];
    p->is_mark = 1;
    p->pe = PARSE_INVALID_JSON; /* any error will do: see apply_oldest */
    p->mark = *m;
    return 0;
}

/* ---- checkpoint ---------------------------------------------------------- */

/* What the checkpoint is bound to: the log, not the spelling of its URI. */
static void source_identity(job *j, buf *out)
{
    if (j->src->ops->identity) j->src->ops->identity(j->src, out);
    else buf_append_str(out, j->cfg->source_uri);
}

/* What it is bound to on the output side: the stores where the sessions and
 * dead letters it counts as written are (sink.h, deadletter.h). */
static void sink_identity(job *j, buf *out)
{
    if (j->snk->ops->identity) j->snk->ops->identity(j->snk, out);
    else buf_printf(out, "%s:", j->snk->ops->scheme);
}

static void deadletter_identity(job *j, buf *out)
{
    /* The default file lives in the checkpoint directory: bound to it, not
     * to its path, so that the directory can be moved (renamed) whole. */
    if (!j->cfg->dlq_uri) buf_append_str(out, "jsonl:CHECKPOINT/deadletter.jsonl");
    else if (j->dlq->ops->identity) j->dlq->ops->identity(j->dlq, out);
    else buf_printf(out, "%s:", j->dlq->ops->scheme);
}

/* "columns=session_start,visit_count" ("columns=" for none). */
static void describe_columns(unsigned columns, buf *out)
{
    buf_append_str(out, "columns=");
    for (unsigned c = 0, n = 0; c < SINK_N_OPTIONAL; c++)
        if (columns >> c & 1) buf_printf(out, "%s%s", n++ ? "," : "", sink_column_names[c]);
}

static void save_counters(const job *j, buf *out)
{
    buf_put_u64le(out, j->res->records);
    buf_put_u64le(out, j->res->dead_letters);
    buf_put_u64le(out, j->res->invalid);
}

/* A new checkpoint is committed before the first record, with no source
 * position (a restart starts where a first run would) but with the outputs'
 * lengths: a crash before the first real commit then rewinds the JSON-lines
 * outputs to what they held before this checkpoint's history began. */
static int commit_at(job *j, int with_position);

static int commit(job *j) { return commit_at(j, 1); }

/* ---- metrics ------------------------------------------------------------- */

static void publish(job *j)
{
    if (!j->m) return;
    engine_stats e;
    engine_get_counters(j->eng, &e);
    metrics_snapshot *m = j->m;
    m->taken_wall_ms = status_wall_ms();
    m->visits_accepted = e.visits_applied - j->base.visits_applied;
    m->sessions_opened = e.sessions_opened;
    m->sessions_merged = e.sessions_merged;
    m->sessions_closed = e.sessions_closed - j->base.sessions_closed;
    m->sessions_open = e.open_sessions;
    m->pages_held = e.open_pages;
    m->watermark_us = engine_closing_watermark(j->eng);
    metrics_publish(j->cfg->metrics, m);
    j->last_publish = now_s();
}

static int commit_body(job *j, int with_position);
static void acknowledge(job *j);

static int commit_at(job *j, int with_position)
{
    double t0 = now_s();
    int rc = commit_body(j, with_position);
    if (rc == 0 && j->m) {
        if (j->cp) {
            metrics_count_commit(j->m, now_s() - t0, status_wall_ms());
            j->m->checkpoint_bytes = checkpoint_disk_bytes(j->cp);
        }
        publish(j);
    }
    return rc;
}

static int commit_body(job *j, int with_position)
{
    /* The source position covers every polled record: apply them all first. */
    if (drain(j)) return -1;
    if (j->snk->ops->flush(j->snk, j->err, j->errlen)) return -1;
    if (j->cfg->latency_stats) {
        int64_t acked = now_us();
        for (uint64_t i = 0; i < j->closed_since_commit; i++)
            histogram_add(&j->res->close_to_ack_us, (uint64_t)(acked - j->close_stamps[i]));
    }
    if (j->m) {
        j->m->sink_flushes++;
        j->m->sink_sessions_written += j->closed_since_commit;
    }
    j->closed_since_commit = 0;
    if (j->dlq->ops->flush(j->dlq, j->err, j->errlen)) return -1;
    if (!j->cp) return 0;
    buf *b = &j->scratch;
    if (checkpoint_begin(j->cp, j->err, j->errlen)) return -1;
#define PUT(key, fill)                                                                   \
    do {                                                                                 \
        buf_reset(b);                                                                    \
        fill;                                                                            \
        if (checkpoint_put(j->cp, key, b->data, b->len, j->err, j->errlen)) goto fail;   \
    } while (0)
    PUT("source_uri", buf_append_str(b, j->cfg->source_uri));
    PUT("source_id", source_identity(j, b));
    if (with_position) PUT("source_position", j->src->ops->position(j->src, b));
    PUT("records", record_mapping_describe(&j->cfg->records, b));
    PUT("columns", describe_columns(j->cfg->sink.columns, b));
    PUT("counters", save_counters(j, b));
    PUT("sink_id", sink_identity(j, b));
    PUT("deadletter_id", deadletter_identity(j, b));
    if (j->snk->ops->save) PUT("sink", j->snk->ops->save(j->snk, b));
    if (j->dlq->ops->save) PUT("deadletter", j->dlq->ops->save(j->dlq, b));
#undef PUT
    if (checkpoint_commit(j->cp, j->eng, j->err, j->errlen)) {
        /* a snapshot reads cold users back: name the store, not the snapshot */
        if (j->cold_err[0]) snprintf(j->err, j->errlen, "%s", j->cold_err);
        return -1;
    }
    engine_clear_dirty(j->eng); /* gives back the close queue's memory after a peak */
    if (compact_cold(j)) return -1;
    if (with_position && j->src->ops->committed) {
        /* the position just saved (the source has not moved since), told to
         * the source once the commit is durable */
        assert(j->acks_len <= CHECKPOINT_MAX_IN_FLIGHT);
        size_t at = (j->acks_head + j->acks_len++) % (CHECKPOINT_MAX_IN_FLIGHT + 1);
        j->acks[at].seq = checkpoint_seq(j->cp);
        buf_reset(&j->acks[at].pos);
        buf_reset(b);
        j->src->ops->position(j->src, b);
        buf_append(&j->acks[at].pos, b->data, b->len);
        acknowledge(j);
    }
    j->res->commits++;
    return 0;
fail:
    checkpoint_abort(j->cp);
    return -1;
}

/* Tells the source the newest position whose commit is durable. */
static void acknowledge(job *j)
{
    if (!j->cp || j->acks_len == 0) return;
    uint64_t durable = checkpoint_durable_seq(j->cp);
    size_t last = SIZE_MAX;
    while (j->acks_len > 0 && j->acks[j->acks_head].seq <= durable) {
        last = j->acks_head;
        j->acks_head = (j->acks_head + 1) % (CHECKPOINT_MAX_IN_FLIGHT + 1);
        j->acks_len--;
    }
    if (last != SIZE_MAX)
        j->src->ops->committed(j->src, j->acks[last].pos.data, j->acks[last].pos.len);
}

/* The last commit of a run: durable before the job returns, and told. */
static int commit_final(job *j)
{
    if (commit(j)) return -1;
    if (j->cp && checkpoint_sync(j->cp, j->err, j->errlen)) return -1;
    acknowledge(j);
    return 0;
}

/* The record layout and the session columns are bound to the checkpoint
 * like --gap: the same log read with another mapping is another input, and
 * a table whose rows change shape half-way is no table. Checkpoints written
 * before the options existed used the default layout and no columns. */
static int check_records(job *j)
{
    static const char *const keys[] = {"records", "columns"};
    int same = 1;
    for (size_t k = 0; k < 2 && same; k++) {
        buf was, now;
        buf_init(&was);
        buf_init(&now);
        int got = checkpoint_get(j->cp, keys[k], &was, j->err, j->errlen);
        if (k == 0) {
            record_mapping_describe(&j->cfg->records, &now);
            if (got == 0) {
                record_mapping def;
                record_mapping_default(&def);
                record_mapping_describe(&def, &was);
            }
        } else {
            describe_columns(j->cfg->sink.columns, &now);
            if (got == 0) describe_columns(0, &was);
        }
        same = got >= 0 && was.len == now.len && memcmp(was.data, now.data, now.len) == 0;
        if (got >= 0 && !same)
            snprintf(j->err, j->errlen, "checkpoint %s was written with other %s settings "
                     "(%.*s), not (%.*s). Rerun with the settings it was written with (%s), or "
                     "use a new checkpoint directory to reprocess the input",
                     j->cfg->checkpoint_dir, k == 0 ? "record" : "column",
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
static int check_output(job *j, const char *key, const char *what, const char *flag,
                        void (*identity)(job *, buf *))
{
    buf *was = &j->scratch;
    buf_reset(was);
    int got = checkpoint_get(j->cp, key, was, j->err, j->errlen);
    if (got <= 0) return got;
    buf now;
    buf_init(&now);
    identity(j, &now);
    int same = was->len == now.len && memcmp(was->data, now.data, now.len) == 0;
    if (!same)
        snprintf(j->err, j->errlen, "checkpoint %s was written for the %s %.*s, not %.*s: what "
                 "it counts as written is there. Resume with the %s naming %.*s, or use a new "
                 "--checkpoint directory to process the input again from the beginning into "
                 "%.*s", j->cfg->checkpoint_dir, what, (int)(was->len > 300 ? 300 : was->len),
                 (const char *)was->data, (int)(now.len > 300 ? 300 : now.len),
                 (const char *)now.data, flag, (int)(was->len > 300 ? 300 : was->len),
                 (const char *)was->data, (int)(now.len > 300 ? 300 : now.len),
                 (const char *)now.data);
    buf_free(&now);
    return same ? 0 : -1;
}

static int restore(job *j)
{
    buf *b = &j->scratch;
    char *err = j->err;
    size_t errlen = j->errlen;
    /* The log's identity when the checkpoint has one; checkpoints written
     * before it existed are bound to the exact URI. */
    buf now_id;
    buf_init(&now_id);
    buf_reset(b); /* checkpoint_get leaves it alone when the key is missing */
    int got = checkpoint_get(j->cp, "source_id", b, err, errlen);
    if (got == 1) {
        source_identity(j, &now_id);
    } else if (got == 0) {
        got = checkpoint_get(j->cp, "source_uri", b, err, errlen);
        buf_append_str(&now_id, j->cfg->source_uri);
    }
    int same = got == 1 && b->len == now_id.len && memcmp(b->data, now_id.data, b->len) == 0;
    if (got >= 0 && !same) {
        buf was;
        buf_init(&was);
        if (checkpoint_get(j->cp, "source_uri", &was, err, errlen) < 0) buf_reset(&was);
        snprintf(err, errlen, "checkpoint %s belongs to the source '%.*s' (%.*s), not '%s' (%.*s). "
                 "Use another --checkpoint directory for this source",
                 j->cfg->checkpoint_dir, (int)(was.len > 200 ? 200 : was.len),
                 was.data ? (const char *)was.data : "", (int)(b->len > 200 ? 200 : b->len),
                 b->data ? (const char *)b->data : "", j->cfg->source_uri,
                 (int)(now_id.len > 200 ? 200 : now_id.len),
                 now_id.data ? (const char *)now_id.data : "");
        buf_free(&was);
    }
    buf_free(&now_id);
    if (got < 0 || !same) return -1;
    if (check_output(j, "sink_id", "sink", "--sink", sink_identity) ||
        check_output(j, "deadletter_id", "dead-letter output", "--dlq", deadletter_identity))
        return -1;
    if (check_records(j)) return -1;
    int rc = checkpoint_restore(j->cp, j->eng, err, errlen);
    if (rc && j->cold_err[0]) { /* not the checkpoint's fault */
        snprintf(err, errlen, "%s", j->cold_err);
        return -1;
    }
    if (rc == -2) {
        snprintf(err, errlen, "checkpoint %s was written with other session settings "
                 "(--gap, --lateness, --max-pages, --max-session-bytes, which is 1GiB for a "
                 "checkpoint from before that option, or --max-future). Rerun with the settings it was written "
                 "with, or use a new checkpoint directory to reprocess the input",
                 j->cfg->checkpoint_dir);
        return -1;
    }
    if (rc) return -1;
    got = checkpoint_get(j->cp, "counters", b, err, errlen);
    if (got < 0) return -1;
    reader r;
    reader_init(&r, b->data, b->len);
    reader_u64le(&r, &j->res->records);
    reader_u64le(&r, &j->res->dead_letters);
    reader_u64le(&r, &j->res->invalid);
    if (got == 0 || r.bad) {
        snprintf(err, errlen, "checkpoint %s is corrupt (counters). Delete it to reprocess "
                 "the input from the beginning", j->cfg->checkpoint_dir);
        return -1;
    }
    got = checkpoint_get(j->cp, "source_position", b, err, errlen);
    if (got < 0) return -1;
    if (got == 1 && j->src->ops->seek(j->src, b->data, b->len, err, errlen)) return -1;
    if (j->snk->ops->restore) {
        got = checkpoint_get(j->cp, "sink", b, err, errlen);
        if (got < 0 || (got == 1 && j->snk->ops->restore(j->snk, b->data, b->len, err, errlen)))
            return -1;
    }
    if (j->dlq->ops->restore) {
        got = checkpoint_get(j->cp, "deadletter", b, err, errlen);
        if (got < 0 || (got == 1 && j->dlq->ops->restore(j->dlq, b->data, b->len, err, errlen)))
            return -1;
    }
    j->res->resumed = 1;
    return 0;
}

/* ---- progress ------------------------------------------------------------ */

/* The lag per partition, for the metrics and the progress line (caught-up
 * states are not asked for: they come in-band, as marks). */
static void update_partitions(job *j, int print_progress, double rate)
{
    if (!j->src->ops->partitions) return;
    size_t n = j->src->ops->partitions(j->src, j->parts, MAX_PARTITIONS);
    if (n > MAX_PARTITIONS) n = MAX_PARTITIONS;
    int64_t behind = 0;
    int known = 1;
    for (size_t i = 0; i < n; i++) {
        if (j->parts[i].lag < 0) known = 0;
        else behind += j->parts[i].lag;
    }
    if (j->m) {
        _Static_assert(MAX_PARTITIONS <= METRICS_MAX_PARTITIONS, "a lag series per partition");
        for (size_t i = 0; i < n; i++) {
            j->m->lag_partition[i] = j->parts[i].partition;
            j->m->lag_records[i] = j->parts[i].lag;
        }
        j->m->n_lag = (int32_t)n;
    }
    if (!print_progress) return;
    /* On a terminal, a status line redrawn in place; elsewhere a log line. */
    int tty = isatty(STDERR_FILENO);
    buf *b = &j->scratch;
    buf_reset(b);
    buf_printf(b, "%s%" PRIu64 " records, %.0f/s", tty ? "\r\033[K" : "", j->res->records, rate);
    if (known && n > 0) {
        buf_printf(b, ", %" PRId64 " behind", behind);
        if (n > 1 && n <= 16) {
            buf_append_str(b, " (");
            for (size_t i = 0; i < n; i++)
                buf_printf(b, "%sp%d:%" PRId64, i ? " " : "", j->parts[i].partition,
                           j->parts[i].lag);
            buf_append_str(b, ")");
        }
        if (behind > 0 && rate > 0) buf_printf(b, ", caught up in ~%.0fs", (double)behind / rate);
    }
    if (tty) {
        fwrite(b->data, 1, b->len, stderr);
    } else {
        buf_append_byte(b, 0);
        log_info("sessionizer", "%s", (const char *)b->data);
    }
}

/* ---- memory budget ------------------------------------------------------- */

/* How often the resident size is read: /proc/self/statm costs a few
 * microseconds, 4096 records take a millisecond or more, and they can grow
 * the open state by at most 4096 sessions (~1 MB at ~250 bytes each). */
#define MEMORY_CHECK_EVERY 4096

/* --memory-limit: the kernel never kills the job for its open sessions. Past
 * its budget the job commits what it has (the checkpoint then holds exactly
 * that state) and stops with a message naming the option. */
static int memory_check(job *j)
{
    uint64_t rss = memory_resident_bytes();
    /* Near the limit while spilling: the rest of the process took more than
     * the reserve (or malloc's free lists are fragmented). The engine's
     * budget gives up the overshoot and a margin, and the engine evicts down
     * to it now. Only a growth of the resident size lowers the budget, and
     * evicting does not grow it (freed memory is reused, not returned), so
     * this settles instead of spiralling down. */
    uint64_t margin = j->memory_limit / 16 > SPILL_BUDGET_MIN ? j->memory_limit / 16 : SPILL_BUDGET_MIN;
    /* The user table's doubling is one block, that evicted sessions'
     * scattered memory cannot provide: room for it is made by evicting and
     * giving the freed pages back, and the job stops before it if that was
     * not enough. */
    uint64_t next = engine_growth_bytes(j->eng, MEMORY_CHECK_EVERY);
    if (j->spill_budget && rss + next + margin > j->memory_limit && rss > j->rss_at_cut) {
        uint64_t cut = rss + next + margin - j->memory_limit + margin / 2;
        set_spill_budget(j, j->spill_budget > cut + SPILL_BUDGET_MIN ? j->spill_budget - cut
                                                                     : SPILL_BUDGET_MIN);
        if (engine_evict(j->eng, j->spill_budget - j->spill_budget / 8) || j->failed) return -1;
        memory_give_back();
        rss = memory_resident_bytes();
        j->rss_at_cut = rss;
        next = engine_growth_bytes(j->eng, MEMORY_CHECK_EVERY); /* cold users left the table */
    }
    if (j->memory_limit == 0 || rss + next <= j->memory_limit) return 0;
    if (commit_final(j)) return -1;
    engine_stats st;
    engine_get_stats(j->eng, &st);
    char grow[96] = "";
    if (rss <= j->memory_limit)
        snprintf(grow, sizeof grow, " (with the next growth of the engine's user table, %.0f MiB)",
                 (double)next / 1048576.0);
    snprintf(j->err, j->errlen,
             "resident memory reached %.0f MiB%s, over --memory-limit %.0f MiB, with %" PRIu64
             " open sessions holding %" PRIu64 " pages, those of %" PRIu64 " users spilled to "
             "disk (each still takes about 60-70 bytes of memory). Stopped after a "
             "commit: %s. Raise "
             "--memory-limit, or lower --gap, --max-pages or --max-session-bytes, which bound "
             "what a session holds",
             (double)rss / 1048576.0, grow, (double)j->memory_limit / 1048576.0, st.open_sessions,
             st.open_pages, st.cold_users,
             j->cp ? "the checkpoint is intact and a restart resumes from it"
                   : "the closed sessions are written; without --checkpoint the open ones are "
                     "lost");
    return -1;
}

/* ---- main loop ----------------------------------------------------------- */

/* The component a URI names, for the metrics' labels (a static string). */
static const char *scheme_name(const char *uri)
{
    static const char *const known[] = {"kafka", "file", "postgresql", "sqlite", "jsonl", "cql",
                                        "null"};
    if (strcmp(uri, "-") == 0) return "stdin";
    if (strncmp(uri, "postgres:", 9) == 0) return "postgresql";
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        size_t n = strlen(known[i]);
        if (strncmp(uri, known[i], n) == 0 && uri[n] == ':') return known[i];
    }
    return "other";
}

static int run_loop(job *j)
{
    const job_config *cfg = j->cfg;
    double start = now_s(), last_commit = start, last_progress = start, last_partitions = start;
    uint64_t since_commit = 0, at_last_progress = j->res->records;
    int tty = isatty(STDERR_FILENO);
    double progress_every = cfg->progress == 0 ? 0 : tty ? 1.0 : cfg->progress == 2 ? 10.0 : 0;
    for (;;) {
        if (cfg->stop && *cfg->stop) {
            j->res->stopped_by_signal = 1;
            status_set_phase(cfg->status, PHASE_STOPPING);
            return commit_final(j);
        }
        raw_record rec;
        source_mark mark;
        int st = j->src->ops->poll(j->src, &rec, &mark, 100, j->err, j->errlen);
        if (st == SOURCE_ERROR) return -1;
        if (st == SOURCE_RECORD) {
            if (j->m) {
                int32_t p = rec.pos.partition < 0 ? 0
                          : rec.pos.partition >= METRICS_MAX_PARTITIONS ? METRICS_MAX_PARTITIONS - 1
                                                                        : rec.pos.partition;
                j->m->records_read[p]++;
                if (p >= j->m->n_read_partitions) j->m->n_read_partitions = p + 1;
            }
            j->res->records++;
            j->res->records_this_run++;
            since_commit++;
            if (enqueue(j, &rec)) return -1;
            if (j->res->records_this_run % MEMORY_CHECK_EVERY == 0 && memory_check(j)) return -1;
        } else if (st == SOURCE_MARK) {
            if (enqueue_mark(j, &mark)) return -1;
            continue;
        }
        if (st == SOURCE_END) {
            /* every record and mark applied before the end's own closes */
            if (drain(j)) return -1;
            update_partitions(j, 0, 0);
            if (cfg->until_end) {
                /* held visits first: their acceptance is logged before the close */
                if (engine_release_held(j->eng)) return -1;
                if (j->cp) checkpoint_log_close_all(j->cp);
                if (engine_close_all(j->eng)) return -1;
            }
            return commit_final(j);
        }
        /* Clock checks are cheap but not free: look every 64 records (at
         * 200 records/s, every third of a second). */
        if (st == SOURCE_IDLE || (j->res->records & 63) == 0) {
            /* Nothing more is coming right now: what waits in the queue,
             * the marks included, is applied (and its closed sessions
             * committed in time), not held until the input resumes. */
            if (st == SOURCE_IDLE && drain(j)) return -1;
            double t = now_s();
            status_beat(cfg->status);
            int show = progress_every > 0 && t - last_progress >= progress_every;
            /* The lag also when busy; and asking is how the Kafka source
             * notices, in a quiet stream, that an outage is over. */
            if (st == SOURCE_IDLE || show || t - last_partitions >= 1.0) {
                double rate = (double)(j->res->records - at_last_progress) / (t - last_progress);
                update_partitions(j, show, rate);
                last_partitions = t;
                if (show) last_progress = t, at_last_progress = j->res->records;
            }
            if (j->m && t - j->last_publish >= 1.0) publish(j);
            acknowledge(j);
            if ((cfg->commit_interval_ms > 0 && (t - last_commit) * 1000 >= (double)cfg->commit_interval_ms &&
                 (since_commit > 0 || j->closed_since_commit > 0))) {
                /* also when only sessions closed: a caught-up flag can close
                 * them while no record arrives, and they must reach the sink */
                if (commit(j)) return -1;
                last_commit = t;
                since_commit = 0;
            }
        }
        if (j->commit_every && since_commit >= j->commit_every) {
            if (commit(j)) return -1;
            last_commit = now_s();
            since_commit = 0;
        }
    }
}

int job_run(const job_config *cfg, job_result *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    double start = now_s();
    job j = {.cfg = cfg, .res = res, .err = err, .errlen = errlen, .commit_every = cfg->commit_every};
    buf_init(&j.scratch);
    int rc = -1;
    /* What the source, the sink and the dead-letter output share (context.h):
     * it outlives them, so it lives here. Through its status they report
     * their reachability, retries and errors, and show signs of life while
     * they wait. */
    job_context ctx = {.stop = cfg->stop, .status = cfg->status};
    source_options so = cfg->source;
    sink_options ko = cfg->sink;
    so.ctx = ko.ctx = &ctx;
    if (cfg->status) {
        io_status_name(&cfg->status->source, scheme_name(cfg->source_uri));
        io_status_name(&cfg->status->sink, scheme_name(cfg->sink_uri));
    }
    if (cfg->metrics) {
        j.m = xcalloc(1, sizeof *j.m);
        j.m->started_wall_ms = status_wall_ms();
        j.m->checkpoint_bytes = -1;
        j.m->watermark_us = INT64_MIN;
    }
    j.src = source_open(cfg->source_uri, &so, err, errlen);
    if (!j.src) goto out;
    j.snk = sink_open(cfg->sink_uri, &ko, err, errlen);
    if (!j.snk) goto out;
    if (cfg->checkpoint_dir) {
        j.cp = checkpoint_open(cfg->checkpoint_dir, err, errlen);
        if (!j.cp) goto out;
    }
    /* Dead letters never go to the log by default: they live with the
     * checkpoint, whose state includes the file's length (a restart rewinds
     * it) and whose deletion starts both over. */
    if (cfg->dlq_uri) {
        j.dlq = deadletter_open(cfg->dlq_uri, cfg->dlq_props, &ctx, err, errlen);
    } else if (cfg->checkpoint_dir) {
        buf_reset(&j.scratch);
        buf_printf(&j.scratch, "jsonl:%s/deadletter.jsonl%c", cfg->checkpoint_dir, 0);
        j.dlq = deadletter_open((const char *)j.scratch.data, cfg->dlq_props, &ctx, err,
                                errlen);
    } else {
        snprintf(err, errlen, "no dead-letter output: give --dlq (e.g. --dlq jsonl:deadletter.jsonl) "
                 "or --checkpoint DIR (dead letters then go to DIR/deadletter.jsonl)");
    }
    if (!j.dlq) goto out;
    engine_config ec = cfg->engine;
    ec.string_users = cfg->records.user_type == USER_STRING;
    engine_callbacks cb = {.ctx = &j,
                           .on_close = on_close,
                           .on_reject = on_reject,
                           .on_accept = cfg->checkpoint_dir ? on_accept : NULL};
    j.eng = engine_new(&ec, &cb);
    j.parser = record_parser_new(&cfg->records);
    j.parts = xcalloc(MAX_PARTITIONS, sizeof *j.parts);
    j.memory_limit = cfg->memory_limit ? cfg->memory_limit : memory_default_limit();
    setup_spill(&j); /* before a restore, which may need it too */
    if (j.cp && (checkpoint_has_state(j.cp) ? restore(&j) : commit_at(&j, 0))) goto out;
    engine_get_counters(j.eng, &j.base);
    publish(&j);
    status_set_phase(cfg->status, PHASE_RUNNING);
    rc = memory_check(&j) ? -1 : run_loop(&j);
    if (j.m) publish(&j); /* the last figures, also after a failure */
out:
    status_set_phase(cfg->status, PHASE_STOPPING);
    if (j.eng) engine_get_stats(j.eng, &res->engine);
    if (j.cp) res->checkpoint_bytes = checkpoint_disk_bytes(j.cp);
    if (j.cp) res->checkpoint_written = checkpoint_bytes_written(j.cp);
    res->seconds = now_s() - start;
    coldstore_stats cst;
    coldstore_get_stats(j.cold, &cst);
    res->spill_budget = j.spill_budget;
    res->spill_written = cst.written;
    res->spill_read = cst.read;
    res->spill_file_bytes = cst.file_bytes;
    checkpoint_close(j.cp);
    record_parser_free(j.parser);
    engine_free(j.eng);
    coldstore_close(j.cold);
    if (j.dlq) j.dlq->ops->close(j.dlq);
    if (j.snk) j.snk->ops->close(j.snk);
    if (j.src) j.src->ops->close(j.src);
    status_set_phase(cfg->status, PHASE_DONE);
    free(j.m);
    free(j.parts);
    free(j.close_stamps);
    for (size_t i = 0; i <= CHECKPOINT_MAX_IN_FLIGHT; i++) buf_free(&j.acks[i].pos);
    for (size_t i = 0; i < PIPELINE; i++) {
        buf_free(&j.queue[i].bytes);
        buf_free(&j.queue[i].page);
        buf_free(&j.queue[i].user);
    }
    buf_free(&j.scratch);
    job_context_release(&ctx);
    return rc;
}
