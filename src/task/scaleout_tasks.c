/*
 * scaleout_tasks.c - the session tasks of --scale-out: stage 2's (a
 * repartition partition each, de-duplicating stage 1's replays) and
 * --keyed-input's (a source partition each). A task owns an engine, a
 * position and its part of the state in the task store (PostgreSQL), with
 * the lifecycle restore -> process -> commit -> suspend driven by the
 * consumer group's assignments. The state is a change log (task_store.h):
 * each commit a frame of what the engine accepted since the last one,
 * which a restore replays. The why is atop scaleout.c and in
 * docs/scaling.md.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "common/xalloc.h"
#include "task/scaleout_internal.h"

/* ---- stage 2 ------------------------------------------------------------- */

/* The engine's callbacks get the task (s2task) as ctx. */
static int on_close(void *ctx, const closed_session *cs)
{
    so *s = ((s2task *)ctx)->s;
    s->st.sessions++;
    if (s->snk->ops->write(s->snk, cs, s->err, s->errlen)) {
        s->failed = 1;
        return -1;
    }
    return 0;
}

static int on_reject(void *ctx, const visit *v, reject_reason why)
{
    so *s = ((s2task *)ctx)->s;
    /* the record's bytes, when it is the one being applied (keyed input) */
    const raw_record *raw = s->cur_raw && s->cur_raw->pos.partition == v->pos.partition &&
                                    s->cur_raw->pos.offset == v->pos.offset
                                ? s->cur_raw
                                : NULL;
    if (why == REJECT_LATE) {
        /* Repartitioned: live only, a source partition taken for idle
         * delivered after all. Keyed: the lateness rule itself. */
        s->st.late2++;
        so_write_dl(s, "late", s->keyed ? "event time below the watermark"
                                     : "event time below the closing watermark of its session task",
                 raw, v);
    } else if (why == REJECT_FUTURE) {
        s->st.future1++;
        so_write_dl(s, "future", engine_future_detail(v->pos.append_ts_ms), raw, v);
    } else {
        s->st.capped2++;
        so_write_dl(s, "session_cap", "the session already holds --max-pages earlier pages", raw, v);
    }
    return s->failed ? -1 : 0;
}

/* The change log: a restore replays these to rebuild the open sessions. */
static int on_accept(void *ctx, const visit *v)
{
    s2task *t = ctx;
    changelog_add_visit(&t->log, v);
    int32_t p = v->pos.partition;
    if (p >= 0 && p < t->s->n_src && v->event_time_us > t->adv[p]) t->adv[p] = v->event_time_us;
    return 0;
}

/* engine_advance_partition, logged; skipped when it cannot move anything. */
static int task_advance(s2task *t, int32_t p, int64_t max_t)
{
    if (max_t <= t->adv[p]) return 0;
    t->adv[p] = max_t;
    changelog_add_advance(&t->log, p, max_t);
    return engine_advance_partition(t->eng, p, max_t);
}

/* engine_close_all, logged after the visits it releases (the job's order). */
static int task_close_all(s2task *t)
{
    int rc = engine_release_held(t->eng);
    if (rc) return rc;
    changelog_add_close_all(&t->log);
    return engine_close_all(t->eng);
}

/* Frees a task's engine, keeping its counters for the metrics. */
static void drop_engine(so *s, s2task *t)
{
    if (!t->eng) return;
    if (s->m) {
        engine_stats e;
        engine_get_counters(t->eng, &e);
        s->acc_applied += e.visits_applied;
        s->acc_opened += e.sessions_opened;
        s->acc_merged += e.sessions_merged;
    }
    engine_free(t->eng);
    t->eng = NULL;
}

static void task_reset(so *s, s2task *t)
{
    drop_engine(s, t);
    engine_config ec = s->jc->engine;
    ec.string_users = string_users(s);
    /* Repartitioned: judged in stage 1, in the source partition's order.
     * Keyed: the engine judges it, as lateness. */
    if (!s->keyed) ec.max_future_us = 0;
    engine_callbacks cb = {.ctx = t, .on_close = on_close, .on_reject = on_reject,
                           .on_accept = on_accept};
    t->eng = engine_new(&ec, &cb);
    changelog_frame_reset(&t->log);
    t->pos = 0;
    t->end = -1;
    t->done = t->changed = 0;
    t->n_ended = 0;
    for (int32_t p = 0; p < s->n_src; p++) {
        t->next_seen[p] = -1;
        t->adv[p] = INT64_MIN;
        t->ended[p] = t->idle[p] = 0;
        /* every source partition holds back closing until it is heard of;
         * keyed, a task's users are all in its own partition */
        if (!s->keyed || p == t->id) engine_set_caught_up(t->eng, p, 0);
    }
}

static void save_dedup(const so *s, const s2task *t, buf *b)
{
    buf_put_u32le(b, 1);
    buf_put_u32le(b, (uint32_t)s->R);
    buf_put_u32le(b, (uint32_t)s->n_src);
    for (int32_t p = 0; p < s->n_src; p++) {
        buf_put_i64le(b, t->next_seen[p]);
        buf_append_byte(b, (unsigned char)(t->ended[p] | t->idle[p] << 1));
    }
}

/* The task's named blobs, from its snapshot and then each frame (a later
 * one replaces an earlier one); the caught-up flags are applied once all are
 * read (task_restore). */
static int load_meta(void *ctx, const char *key, size_t key_len, const void *v, size_t len)
{
    so *s = ctx;
    s2task *t = s->cur;
    reader r;
    reader_init(&r, v, len);
#define IS(k) (key_len == sizeof k - 1 && memcmp(key, k, key_len) == 0)
    if (IS("position")) return reader_i64le(&r, &t->pos) || reader_left(&r) ? -1 : 0;
    if (IS("done")) return t->done = 1, 0;
    if (IS("end")) return reader_i64le(&r, &t->end) || reader_left(&r) ? -1 : 0;
    if (IS("dedup")) {
        uint32_t ver = 0, R = 0, n = 0;
        reader_u32le(&r, &ver);
        reader_u32le(&r, &R);
        reader_u32le(&r, &n);
        if (r.bad || ver != 1 || R != (uint32_t)s->R || n != (uint32_t)s->n_src) return -1;
        t->n_ended = 0;
        for (uint32_t p = 0; p < n; p++) {
            const unsigned char *f;
            reader_i64le(&r, &t->next_seen[p]);
            if (reader_bytes(&r, &f, 1)) return -1;
            t->ended[p] = *f & 1;
            t->idle[p] = (*f >> 1) & 1;
            t->n_ended += t->ended[p];
        }
        return r.bad || reader_left(&r) ? -1 : 0;
    }
#undef IS
    return 0; /* a key of a later version: ignored */
}

/* restore: the task's committed state, or a new one. */
static int task_restore(so *s, s2task *t)
{
    task_reset(s, t);
    s->cur = t;
    int n = task_store_load(s->store, t->id, t->eng, load_meta, s, s->err, s->errlen);
    s->cur = NULL;
    /* caught-up flags are not in the engine's saved state */
    for (int32_t p = 0; n > 0 && p < s->n_src; p++)
        if ((!s->keyed || p == t->id) && engine_set_caught_up(t->eng, p, t->ended[p] || t->idle[p]))
            n = -1;
    if (n < 0) {
        s->failed = 1;
        return -1;
    }
    return 0;
}

static void s2_seek(so *s, s2task *t)
{
    /* keyed input: the task is a source partition, read by stage 1's consumer */
    const char *topic = s->keyed ? s->topic : s->rtopic;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, t->id)->offset = t->pos;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(s->keyed ? s->c1 : s->c2, l, META_TIMEOUT_MS);
    /* Not a failure: a zombie's partition may be gone from the client
     * already (it left the group past max.poll.interval.ms; the revocation
     * is on its way), and a fetch that goes on from the old offset only
     * brings records below t->pos, which task_record skips. */
    if (e) {
        log_warn("scaleout", "seeking %s partition %d to %" PRId64 ": %s (records below it are "
                 "skipped)", topic, (int)t->id, t->pos, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* commit: the sink acknowledges the sessions, then each changed task's
 * state goes to the store in a transaction of its own. */
static int s2_commit_body(so *s, int suspending);

int s2_commit(so *s, int suspending)
{
    int64_t t0 = mono_ms();
    uint64_t closed = s->st.sessions;
    int rc = s2_commit_body(s, suspending);
    if (rc == 0 && s->m) {
        s->m->sink_flushes++;
        s->m->sink_sessions_written += closed - s->sessions_flushed;
        s->sessions_flushed = closed;
        metrics_count_commit(s->m, (double)(mono_ms() - t0) / 1000, status_wall_ms());
        so_publish(s);
    }
    return rc;
}

static int s2_commit_body(so *s, int suspending)
{
    if (s->snk->ops->flush(s->snk, s->err, s->errlen) ||
        s->dlq->ops->flush(s->dlq, s->err, s->errlen)) {
        s->failed = 1;
        return -1;
    }
    for (int32_t r = 0; r < s->R; r++) {
        s2task *t = &s->t2[r];
        if (!t->assigned || !t->changed) continue;
        int superseded = 0;
        buf *b = &s->scratch;
#define PUT(key, fill)                                                                           \
    do {                                                                                         \
        buf_reset(b);                                                                            \
        fill;                                                                                    \
        changelog_add_meta(&t->log, key, b->data, b->len);                                       \
    } while (0)
        PUT("position", buf_put_i64le(b, t->pos));
        PUT("dedup", save_dedup(s, t, b));
        if (t->done) PUT("done", buf_append_byte(b, 1));
        if (string_users(s)) PUT("users", buf_append_str(b, "string"));
        if (t->end >= 0) PUT("end", buf_put_i64le(b, t->end));
#undef PUT
        if (task_store_commit(s->store, t->id, t->pos, t->done, &t->log, t->eng, &superseded,
                              s->err, s->errlen))
            goto fail;
        if (superseded) {
            /* Another owner went further while this instance was cut off:
             * take its state and go on from there. */
            s->st.superseded++;
            if (suspending) continue; /* dropped anyway; its next owner loads the newer state */
            log_info("scaleout", "task %d was committed further by another "
                    "instance; resuming from its state", (int)t->id);
            if (task_restore(s, t)) return -1;
            s2_seek(s, t);
            continue;
        }
        changelog_frame_reset(&t->log);
        t->changed = 0;
    }
    return 0;
fail:
    s->failed = 1;
    return -1;
}

void s2_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
    so *s = opaque;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < l->cnt; i++) {
            int32_t r = l->elems[i].partition;
            if (r < 0 || r >= s->R) continue;
            s2task *t = &s->t2[r];
            if (task_restore(s, t)) break;
            t->assigned = 1;
            l->elems[i].offset = t->pos > 0 ? t->pos : RD_KAFKA_OFFSET_BEGINNING;
        }
        buf *b = &s->scratch;
        buf_reset(b);
        for (int i = 0; i < l->cnt; i++)
            if (l->elems[i].partition >= 0 && l->elems[i].partition < s->R)
                buf_printf(b, " task%d@%" PRId64, (int)l->elems[i].partition,
                           s->t2[l->elems[i].partition].pos);
        log_info("scaleout", "stage 2 assigned%.*s", (int)b->len,
                b->data ? (const char *)b->data : "");
        rd_kafka_assign(rk, l);
    } else {
        /* suspend: commit, then drop (eager assignment revokes them all) */
        if (!rd_kafka_assignment_lost(rk) && !s->failed) s2_commit(s, 1);
        for (int32_t r = 0; r < s->R; r++) {
            s->t2[r].assigned = 0;
            drop_engine(s, &s->t2[r]);
        }
        rd_kafka_assign(rk, NULL);
    }
}

static void k_finish(so *s, s2task *t);

/* The prologue of a task's records (stage 2's, and keyed tasks' which are
 * source partitions): the task when m is a record it is to read next or
 * later; NULL for an error (handled here), a record of a task this instance
 * does not hold, one already applied, or one beyond a keyed task's
 * --until-end end. */
static s2task *task_record(so *s, rd_kafka_t *c, const char *topic, rd_kafka_message_t *m)
{
    int32_t r = m->partition;
    if (r < 0 || r >= s->R || !s->t2[r].assigned) return NULL;
    s2task *t = &s->t2[r];
    int ends = s->jc->until_end && t->end >= 0; /* keyed tasks only have an end */
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (ends && m->offset >= t->end) k_finish(s, t);
    } else if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET) {
        so_fail(s, "%s partition %d: %s. Records the task had not read were deleted (retention); "
             "a run from the beginning with a new --group rebuilds the table", topic, (int)r,
             rd_kafka_message_errstr(m));
    } else if (m->err) {
        so_on_error(c, m->err, rd_kafka_message_errstr(m), s);
    }
    if (m->err || m->offset < t->pos || (ends && m->offset >= t->end)) return NULL;
    return t;
}

/* One visit of a batch from source partition p at offset off: dropped when
 * already seen (a replay of stage 1), else applied. */
static int s2_visit(so *s, s2task *t, const visit *v, int64_t max_t)
{
    int32_t p = v->pos.partition;
    if ((v->user != NULL) != string_users(s)) {
        so_fail(s, "%s partition %d: a visit with %s user from an instance running --user-type "
                "%s %s", s->rtopic, (int)t->id, v->user ? "a string" : "an int",
                v->user ? "string" : "int", OTHER_USER_TYPE);
        return -1;
    }
    if (v->pos.offset < t->next_seen[p]) {
        s->st.dups2++;
        return 0;
    }
    t->next_seen[p] = v->pos.offset + 1;
    int rc = 0;
    if (t->idle[p]) {
        t->idle[p] = 0;
        rc = engine_set_caught_up(t->eng, p, 0);
    }
    s->st.visits2++;
    if (!rc) rc = engine_apply(t->eng, v);
    if (!rc) rc = task_advance(t, p, max_t);
    return rc;
}

static int s2_marker(so *s, s2task *t, int kind, int32_t p, int64_t off, int64_t max_t)
{
    int fresh = off > t->next_seen[p];
    if (fresh) t->next_seen[p] = off;
    int rc = 0;
    if (kind == REPART_WM && fresh && t->idle[p]) {
        t->idle[p] = 0;
        rc = engine_set_caught_up(t->eng, p, 0);
    }
    if (!rc) rc = task_advance(t, p, max_t);
    if (!rc && kind == REPART_IDLE && off >= t->next_seen[p] && !t->ended[p]) {
        t->idle[p] = 1;
        rc = engine_set_caught_up(t->eng, p, 1);
    }
    if (!rc && kind == REPART_END && !t->ended[p]) {
        t->ended[p] = 1;
        t->n_ended++;
        rc = engine_set_caught_up(t->eng, p, 1);
        if (!rc && s->jc->until_end && t->n_ended == s->n_src && !t->done) {
            rc = task_close_all(t);
            t->done = 1;
        }
    }
    return rc;
}

static int s2_item(void *ctx, int kind, const visit *v, int64_t max_t)
{
    so *s = ctx;
    s2task *t = s->cur;
    if (kind == REPART_BATCH) return s2_visit(s, t, v, max_t);
    return s2_marker(s, t, kind, v->pos.partition, v->pos.offset, max_t);
}

void s2_message(so *s, rd_kafka_message_t *m)
{
    s2task *t = task_record(s, s->c2, s->rtopic, m);
    if (!t) return;
    s->st.read2++;
    t->pos = m->offset + 1;
    t->changed = 1;
    s->cur = t;
    int rc = repart_decode(m->payload, m->len, s->n_src, s2_item, s);
    s->cur = NULL;
    if (rc < 0)
        so_fail(s, "%s partition %d offset %" PRId64 " is not a sessionizer repartition record of "
             "version %d (another writer on the internal topic, or an instance of another "
             "version in the group?)", s->rtopic, (int)m->partition, m->offset, REPART_VERSION);
    else if (rc)
        s->failed = 1;
}

/* ---- keyed input: one stage ------------------------------------------------
 *
 * With --keyed-input every user's visits are in one source partition, so a
 * source partition is a whole task: parse, the engine (which judges
 * lateness itself, on its one partition's watermark), the sink. Its state
 * (position in the source, engine, open sessions, --until-end end) is the
 * same task store's, committed atomically, so nothing is replayed twice and
 * no de-duplication is needed. */

static void k_finish(so *s, s2task *t)
{
    if (t->done) return;
    if (task_close_all(t)) s->failed = 1;
    t->done = 1;
    t->changed = 1;
}

void k_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                        rd_kafka_topic_partition_list_t *l, void *opaque)
{
    so *s = opaque;
    if (e != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        s2_rebalance(rk, e, l, opaque); /* suspend: commit, drop */
        return;
    }
    buf *b = &s->scratch;
    buf_reset(b);
    for (int i = 0; i < l->cnt; i++) {
        int32_t p = l->elems[i].partition;
        if (p < 0 || p >= s->R) continue;
        s2task *t = &s->t2[p];
        if (task_restore(s, t)) break;
        int64_t lo = 0, hi = 0;
        while (rd_kafka_query_watermark_offsets(rk, s->topic, p, &lo, &hi, META_TIMEOUT_MS))
            if (stopping(s)) break;
        if (t->pos < lo) t->pos = lo; /* a new task: the log's start */
        if (s->jc->until_end && t->end < 0) {
            t->end = hi; /* the log as it was when the run first claimed p */
            t->changed = 1;
        }
        t->assigned = 1;
        l->elems[i].offset = t->pos;
        buf_printf(b, " p%d@%" PRId64, (int)p, t->pos);
        if (s->jc->until_end && t->pos >= t->end) k_finish(s, t);
    }
    log_info("scaleout", "keyed tasks assigned%.*s", (int)b->len,
             b->data ? (const char *)b->data : "");
    rd_kafka_assign(rk, l);
}

void k_message(so *s, rd_kafka_message_t *m)
{
    s2task *t = task_record(s, s->c1, s->topic, m);
    if (!t) return;
    so_count_read(s, t->id);
    raw_record raw;
    visit v;
    char detail[160];
    parse_error pe = so_parse_message(s, m, &raw, &v, detail, sizeof detail);
    t->pos = m->offset + 1;
    t->changed = 1;
    if (pe != PARSE_OK) {
        s->st.invalid1++;
        so_write_dl(s, parse_error_code(pe), detail, &raw, NULL);
    } else {
        s->st.visits2++;
        s->cur_raw = &raw;
        if (engine_apply(t->eng, &v)) s->failed = 1;
        s->cur_raw = NULL;
    }
    if (s->jc->until_end && t->pos >= t->end) k_finish(s, t);
}
