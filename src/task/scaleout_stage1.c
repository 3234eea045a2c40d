/*
 * scaleout_stage1.c - stage 1 of --scale-out: a task per source partition
 * that parses, judges lateness on its partition's own watermark and
 * produces the accepted visits to the repartition topic in batches, with
 * markers of its progress; its state (position, highest event time, the
 * --until-end end) is the group's committed offset and its metadata, made
 * only once the producer has delivered everything before it. The why is
 * atop scaleout.c and in docs/scaling.md.
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

/* ---- the repartition topic (repartition.h) ------------------------------- */

static int produce(so *s, int32_t r, const buf *b)
{
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            s->prod, RD_KAFKA_V_TOPIC(s->rtopic), RD_KAFKA_V_PARTITION(r),
            RD_KAFKA_V_VALUE(b->data, b->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            so_fail(s, "producing to %s: %s", s->rtopic, rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(s->prod, 10); /* the queue drains as the cluster acknowledges */
        if (s->failed) return -1;
        if (stopping(s)) {
            s->unproduced = 1; /* a hole: stage 1 must not commit past it */
            return -1;
        }
    }
}

static void batch_flush(so *s, int32_t r)
{
    repart_batch *q = &s->batch[r];
    if (q->n == 0) return;
    produce(s, r, &q->b);
    q->n = 0;
}

/* Every pending batch goes to the producer: before a marker (which raises
 * stage 2's next_seen past the visits it covers, so they must precede it)
 * and before a stage 1 commit (which covers only delivered visits). */
void s1_flush(so *s)
{
    for (int32_t r = 0; r < s->R && !s->failed; r++) batch_flush(s, r);
}

static void batch_add(so *s, const visit *v, int64_t max_t)
{
    int32_t r = repart_partition(v, s->R);
    repart_batch *q = &s->batch[r];
    if (q->n > 0 && repart_batch_after(q, v) > s->batch_cap) batch_flush(s, r);
    repart_batch_add(q, v, max_t);
    s->st.produced++;
}

static void broadcast(so *s, int kind, int32_t p)
{
    s1part *sp = &s->p1[p];
    s1_flush(s);
    repart_marker(&s->rec, kind, p, kind == REPART_END ? sp->end : sp->pos, sp->max_t);
    for (int32_t r = 0; r < s->R; r++)
        if (produce(s, r, &s->rec)) return;
    s->st.markers++;
    if (kind == REPART_WM || kind == REPART_END) sp->marker_pos = sp->pos;
}

/* ---- stage 1 ------------------------------------------------------------- */
static void s1_end(so *s, int32_t p)
{
    s1part *sp = &s->p1[p];
    if (sp->end_sent) return;
    sp->pos = sp->end;
    broadcast(s, REPART_END, p);
    sp->end_sent = 1;
}


void s1_message(so *s, rd_kafka_message_t *m)
{
    int32_t p = m->partition;
    if (p < 0 || p >= s->n_src || !s->p1[p].assigned) return;
    s1part *sp = &s->p1[p];
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            sp->eof_at = m->offset;
            if (s->jc->until_end && m->offset >= sp->end) s1_end(s, p);
            else if (m->offset > sp->pos && !s->jc->until_end) sp->pos = m->offset;
        } else {
            so_on_error(s->c1, m->err, rd_kafka_message_errstr(m), s);
        }
        return;
    }
    if (m->offset < sp->pos) return; /* re-fetched after a rebalance or an outage */
    if (s->jc->until_end && m->offset >= sp->end) return;
    so_count_read(s, p);
    raw_record raw;
    visit v;
    char detail[160];
    parse_error pe = so_parse_message(s, m, &raw, &v, detail, sizeof detail);
    sp->pos = m->offset + 1;
    sp->last_record_ms = mono_ms();
    sp->idle_sent = 0;
    if (pe != PARSE_OK) {
        s->st.invalid1++;
        so_write_dl(s, parse_error_code(pe), detail, &raw, NULL);
    } else if (engine_too_far_ahead(&s->jc->engine, v.event_time_us, raw.pos.append_ts_ms)) {
        /* The engine's first rule, here alone too (stage 2 does not repeat
         * it). Records without a timestamp are not judged here: holding one
         * for its successor is the single engine's alone (docs/scaling.md). */
        s->st.future1++;
        so_write_dl(s, "future", engine_future_detail(raw.pos.append_ts_ms), &raw, &v);
    } else if (sp->max_t != INT64_MIN && v.event_time_us < sp->max_t - s->jc->engine.lateness_us) {
        /* The engine's rule for a partition's own watermark (engine.h), here
         * alone: the closing watermark adds nothing while p has records to
         * deliver (docs/scaling.md). */
        s->st.late1++;
        so_write_dl(s, "late", "event time below the watermark", &raw, &v);
    } else {
        if (v.event_time_us > sp->max_t) sp->max_t = v.event_time_us;
        batch_add(s, &v, sp->max_t);
    }
    if (s->jc->until_end && sp->pos >= sp->end) s1_end(s, p);
}

/* Waits until the producer has delivered everything (a stage 1 commit may
 * only cover records whose visits are in the repartition topic). */
static int flush_producer(so *s)
{
    int64_t since = 0;
    s1_flush(s);
    while (rd_kafka_outq_len(s->prod) > 0) {
        rd_kafka_poll(s->prod, 50);
        if (s->failed) return -1;
        if (stopping(s)) {
            if (!since) since = mono_ms();
            else if (mono_ms() - since > 5000) return -1; /* an outage: leave it uncommitted */
        }
    }
    return 0;
}

void s1_commit(so *s, int quiet)
{
    if (s->failed || s->unproduced) return;
    if (flush_producer(s) || s->unproduced) return;
    if (s->dlq->ops->flush(s->dlq, s->err, s->errlen)) {
        s->failed = 1;
        return;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(s->n_src);
    for (int32_t p = 0; p < s->n_src; p++) {
        s1part *sp = &s->p1[p];
        if (!sp->assigned || sp->pos < 0) continue;
        rd_kafka_topic_partition_t *e = rd_kafka_topic_partition_list_add(l, s->topic, p);
        e->offset = sp->pos;
        char md[96];
        int n = snprintf(md, sizeof md, "sz1 %" PRId64 " %" PRId64, sp->max_t, sp->end);
        e->metadata = xstrndup(md, (size_t)n);
        e->metadata_size = (size_t)n;
    }
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_commit(s->c1, l, 0);
        if (e && !quiet)
            log_warn("scaleout", "stage 1 commit not made (%s); the next one "
                    "covers it", rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

void s1_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *l, void *opaque)
{
    so *s = opaque;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_resp_err_t ce;
        /* The committed offsets and their metadata are the stage's state. */
        while ((ce = rd_kafka_committed(rk, l, META_TIMEOUT_MS)) != 0) {
            if (stopping(s)) break;
            log_warn("scaleout", "reading stage 1 offsets: %s (retrying)",
                    rd_kafka_err2str(ce));
        }
        int need_commit = 0;
        for (int i = 0; i < l->cnt; i++) {
            rd_kafka_topic_partition_t *tp = &l->elems[i];
            int32_t p = tp->partition;
            if (p < 0 || p >= s->n_src) continue;
            s1part *sp = &s->p1[p];
            const s1part old = *sp;
            /* idleness counts from the assignment: a partition empty so far
             * is idle after idle.ms, not at once */
            *sp = (s1part){.assigned = 1, .held = 1, .pos = 0, .max_t = INT64_MIN, .end = -1,
                           .eof_at = -1, .last_record_ms = mono_ms()};
            long long mt = 0, en = -1;
            int has_md = tp->offset >= 0 && tp->metadata_size > 0 && tp->metadata_size < 96;
            if (has_md) {
                char md[96];
                snprintf(md, sizeof md, "%.*s", (int)tp->metadata_size, (const char *)tp->metadata);
                has_md = sscanf(md, "sz1 %lld %lld", &mt, &en) == 2;
            }
            int64_t lo = 0, hi = 0;
            while (rd_kafka_query_watermark_offsets(rk, s->topic, p, &lo, &hi, META_TIMEOUT_MS)) {
                if (stopping(s)) break;
            }
            if (has_md) {
                sp->pos = tp->offset;
                sp->max_t = mt;
                sp->end = en;
            } else {
                sp->pos = lo; /* never committed: the log's start */
                need_commit = 1;
            }
            /* Back to an instance that read p further than the last commit
             * that got through (the mock cluster refuses commits during a
             * rebalance): it goes on from its own state rather than read
             * again. That state is one stage 1 reached on p's log (position
             * and highest event time together), and every visit before it
             * went to this producer first, so for stage 2 this is a replay
             * like any other: what another owner delivered meanwhile is
             * dropped as seen. Not across another --until-end end. */
            if (old.held && old.pos > sp->pos && (has_md ? old.end == sp->end : 1)) {
                sp->pos = old.pos;
                sp->max_t = old.max_t;
                sp->end = old.end;
                need_commit = 1;
            }
            if (s->jc->until_end && sp->end < 0) {
                sp->end = hi; /* the log as it was when the run first claimed p */
                need_commit = 1;
            }
            sp->marker_pos = -1;
            tp->offset = sp->pos;
        }
        rd_kafka_assign(rk, l);
        /* For the operator (and the harness's cost of a lost machine): where
         * each partition resumes, i.e. its last stage 1 commit. */
        buf *b = &s->scratch;
        buf_reset(b);
        for (int i = 0; i < l->cnt; i++)
            buf_printf(b, " p%d@%" PRId64, (int)l->elems[i].partition, l->elems[i].offset);
        log_info("scaleout", "stage 1 assigned%.*s", (int)b->len,
                b->data ? (const char *)b->data : "");
        if (need_commit) s1_commit(s, 1);
        for (int i = 0; i < l->cnt; i++) {
            int32_t p = l->elems[i].partition;
            if (p >= 0 && p < s->n_src && s->jc->until_end && s->p1[p].pos >= s->p1[p].end)
                s1_end(s, p);
        }
    } else {
        s1_flush(s); /* in the revoked partitions' order, as if produced already */
        if (!rd_kafka_assignment_lost(rk)) s1_commit(s, 0);
        for (int32_t p = 0; p < s->n_src; p++) s->p1[p].assigned = 0;
        rd_kafka_assign(rk, NULL);
    }
}

void s1_markers(so *s, int64_t now)
{
    for (int32_t p = 0; p < s->n_src; p++) {
        s1part *sp = &s->p1[p];
        if (!sp->assigned || sp->end_sent) continue;
        if (sp->pos > sp->marker_pos) broadcast(s, REPART_WM, p);
        /* Live: Flink's idleness, as the single instance (docs/kafka.md). */
        if (!s->jc->until_end && !sp->idle_sent && sp->eof_at >= 0 && sp->eof_at <= sp->pos &&
            now - sp->last_record_ms >= s->idle_ms) {
            broadcast(s, REPART_IDLE, p);
            sp->idle_sent = 1;
        }
    }
}
