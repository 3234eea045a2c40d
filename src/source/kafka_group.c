/*
 * kafka_group.c - the Kafka source in its consumer group: rebalances, the
 * assignment, the offsets committed for lag tools, leaving the group.
 *
 * It exists apart because the group protocol is where a second instance
 * shows up, and what sessionizer does then is a policy of its own:
 *
 *  - One instance reads every partition. A user's visits can be in any
 *    partition (the reference producer is unkeyed), so a session is only
 *    right when one engine sees all of them; and engine state cannot be split
 *    per partition on revocation. The source still joins the consumer group
 *    (subscribe) so that a second instance is noticed. Whether an offer lets
 *    the instance read, and how long it waits when it does not, is the
 *    task's call (src/task/task.h: the single instance is one task over the
 *    whole topic); this file reports each offer to the task context and,
 *    when told to hold, accepts the assignment paused (the group protocol
 *    requires the accept) and reads nothing. One that never read waits
 *    long enough for a crashed predecessor to be evicted from the group
 *    (2 x session.timeout.ms + 5 s), then refuses to run and leaves; one
 *    that was reading waits longer (sessionizer.rebalance.wait.ms, default
 *    4 x session.timeout.ms + 30 s) and goes on from its own positions when
 *    the whole topic comes back. A lost assignment (the group session timed
 *    out during an outage) is the same case.
 *
 * The positions themselves are kafka.c's (the checkpoint's); the group only
 * hears of them once the checkpoint commit holding them is durable
 * (kafka_committed).
 */
#include <stdio.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/xalloc.h"
#include "source/kafka_internal.h"

#define LEAVE_WAIT_MS 3000 /* the longest close() waits to leave the group */

void kafka_on_commit(kafka_source *ks, rd_kafka_resp_err_t err)
{
    /* Only lag tools read these offsets; a failed commit is retried with the
     * next checkpoint, so it is worth a line, not a failure. */
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) io_status_error(ks->io, IO_ERR_SERVER);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET && mono_ms() - ks->last_err_ms >= 10000) {
        log_warn("kafka", "committing offsets to group %s failed: %s (lag tools lag behind; "
                 "the checkpoint is unaffected)", ks->group, rd_kafka_err2str(err));
        ks->last_err_ms = mono_ms();
    }
}

void kafka_grow_parts(kafka_source *ks, int32_t n)
{
    if (n <= ks->n_parts) return;
    ks->parts = xrealloc(ks->parts, (size_t)n * sizeof *ks->parts);
    for (int32_t p = ks->n_parts; p < n; p++) {
        /* A partition added while we run: all of it is new, read it from its
         * start; --until-end had nothing of it at start, so its end is where
         * it starts and it is done (pos >= end, the rule every count of done
         * follows: its end-of-partition event must not count it again). */
        ks->parts[p] = (kpart){.pos = OFFSET_UNKNOWN, .end = OFFSET_UNKNOWN, .high = -1, .low = 0,
                               .eof_at = -1, .marked = -1};
        if (ks->until_end) ks->done++;
    }
    ks->n_parts = n;
}

static void unassign_all(kafka_source *ks)
{
    for (int32_t p = 0; p < ks->n_parts; p++) ks->parts[p].assigned = 0, ks->parts[p].eof_at = -1;
    ks->active = 0;
}

/* What the task's waits are made of (task.h). */
group_timing kafka_group_timing(const kafka_source *ks)
{
    return (group_timing){.session_timeout_ms = ks->session_timeout_ms,
                          .rebalance_wait_ms = ks->rebalance_wait_ms};
}

void kafka_rebalance(kafka_source *ks, rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *list)
{
    if (strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0) {
        kafka_fail(ks, "group %s uses a cooperative assignor, which sessionizer does not support "
                   "(remove partition.assignment.strategy from -X)", ks->group);
        return;
    }
    if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (ks->active && !ks->closing)
            log_warn("kafka", "partitions %s by group %s%s",
                    rd_kafka_assignment_lost(rk) ? "lost" : "revoked", ks->group,
                    rd_kafka_assignment_lost(rk)
                        ? " (its session timed out, e.g. during an outage); rejoining" : "");
        unassign_all(ks);
        rd_kafka_assign(rk, NULL);
        return;
    }
    int32_t max_id = -1, count = 0;
    for (int i = 0; i < list->cnt; i++) {
        if (strcmp(list->elems[i].topic, ks->topic) != 0) continue;
        count++;
        if (list->elems[i].partition > max_id) max_id = list->elems[i].partition;
    }
    kafka_grow_parts(ks, max_id + 1);
    for (int i = 0; i < list->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &list->elems[i];
        if (strcmp(tp->topic, ks->topic) != 0) continue;
        kpart *kp = &ks->parts[tp->partition];
        tp->offset = kp->pos >= 0 ? kp->pos : RD_KAFKA_OFFSET_BEGINNING;
    }
    /* Whether the offer lets the task run is the task's call (task.h): the
     * single-instance task needs the whole topic. */
    int64_t held_since = ks->task->held_since_ms;
    group_timing timing = kafka_group_timing(ks);
    if (task_offer(ks->task, count, ks->n_parts, mono_ms()) == TASK_HOLD) {
        /* The group protocol needs the assignment accepted (an unassign here
         * would leave the consumer waiting for an assign call and deaf to
         * the next rebalance), so accept it, paused, and read nothing. */
        unassign_all(ks);
        rd_kafka_resp_err_t e = rd_kafka_assign(rk, list);
        if (!e) e = rd_kafka_pause_partitions(rk, list);
        if (e) {
            kafka_fail(ks, "cannot hold the partial assignment of %s: %s", ks->topic,
                       rd_kafka_err2str(e));
            return;
        }
        log_warn("kafka", "group %s has another member (this instance was offered %d of %d "
                 "partitions of %s): %s, up to %.0f s", ks->group, (int)count,
                (int)ks->n_parts, ks->topic,
                ks->task->ever_read ? "paused until it leaves"
                                    : "waiting in case it is a crashed instance about to be evicted",
                (double)task_hold_limit_ms(ks->task, &timing) / 1000.0);
        return;
    }
    for (int i = 0; i < list->cnt; i++)
        if (strcmp(list->elems[i].topic, ks->topic) == 0) ks->parts[list->elems[i].partition].assigned = 1;
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, list);
    /* A pause from an earlier partial assignment may stick to a partition. */
    if (!e) e = rd_kafka_resume_partitions(rk, list);
    if (e) {
        kafka_fail(ks, "cannot assign the partitions of %s: %s", ks->topic, rd_kafka_err2str(e));
        return;
    }
    if (held_since)
        log_info("kafka", "group %s gave this instance all %d partitions after %.1f s: "
                 "reading", ks->group, (int)ks->n_parts,
                (double)(mono_ms() - held_since) / 1000.0);
    ks->active = 1;
}

/* pos is a durable checkpoint's position (kafka_position's layout), which
 * may be behind the records polled since: the group never hears of an
 * offset a restart would not resume from. */
void kafka_committed(source *s, const void *pos, size_t len)
{
    kafka_source *ks = (kafka_source *)s;
    if (!ks->active) return; /* the group would refuse a commit from a non-member */
    /* During an outage a commit would only queue up behind the coordinator,
     * and hold up a shutdown; the next checkpoint commits newer offsets. */
    if (ks->outage_since_ms) return;
    reader r;
    reader_init(&r, pos, len);
    uint32_t version = 0, n = 0;
    reader_u32le(&r, &version);
    reader_u32le(&r, &n);
    if (r.bad || version != POSITION_VERSION || reader_left(&r) != (size_t)n * 12) return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = 0;
        int64_t off = 0;
        reader_u32le(&r, &id);
        reader_i64le(&r, &off);
        if (id < (uint32_t)ks->n_parts && ks->parts[id].assigned && off >= 0)
            rd_kafka_topic_partition_list_add(l, ks->topic, (int32_t)id)->offset = off;
    }
    if (l->cnt > 0) rd_kafka_commit(ks->rk, l, 1);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Leaves the consumer group, serving the last callbacks (the revocation)
 * on this thread, for at most LEAVE_WAIT_MS: rd_kafka_consumer_close can
 * block for up to session.timeout.ms (while a rebalance is under way), and
 * a stop must not wait that long. Returns 1 when the consumer is closed. */
int kafka_leave_group(kafka_source *ks)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(ks->rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(ks->rk, q);
    int closed = 0;
    if (e) {
        rd_kafka_error_destroy(e);
    } else {
        int64_t deadline = mono_ms() + LEAVE_WAIT_MS;
        while (!(closed = rd_kafka_consumer_closed(ks->rk)) && mono_ms() < deadline)
            rd_kafka_queue_poll_callback(q, 50);
        if (!closed)
            log_warn("kafka", "leaving group %s takes more than %.0f s; going without (the "
                     "group drops this member when its session times out)", ks->group,
                     LEAVE_WAIT_MS / 1000.0);
    }
    rd_kafka_queue_destroy(q);
    return closed;
}
