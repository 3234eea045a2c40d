/*
 * task.c - a task's answer to the group's assignments (task.h): the
 * single-instance task reads only when it holds its whole input, and waits,
 * bounded, when it does not.
 */
#include "task/task.h"

#include <assert.h>
#include <stdio.h>

task_verdict task_offer(task_assignment *t, int32_t offered, int32_t total, int64_t now_ms)
{
    assert(offered >= 0 && offered <= total);
    if (offered < total) {
        if (!t->held_since_ms) t->held_since_ms = now_ms > 0 ? now_ms : 1;
        return TASK_HOLD;
    }
    t->held_since_ms = 0;
    t->ever_read = 1;
    return TASK_READ;
}

/* A newcomer cannot tell a live member from a crashed one, so it waits for
 * that eviction and then refuses; the task that read waits longer, so that
 * it outlasts the newcomer and takes the whole input back. */
int64_t task_hold_limit_ms(const task_assignment *t, const group_timing *g)
{
    if (!t->ever_read) return 2 * g->session_timeout_ms + 5000;
    if (g->rebalance_wait_ms >= 0) return g->rebalance_wait_ms;
    return 4 * g->session_timeout_ms + 30000;
}

int task_hold_expired(const task_assignment *t, const group_timing *g, int64_t now_ms,
                      const char *group, const char *topic, char *err, size_t errlen)
{
    int64_t limit = task_hold_limit_ms(t, g);
    if (!t->held_since_ms || now_ms - t->held_since_ms <= limit) return 0;
    snprintf(err, errlen, "consumer group %s has another member holding part of topic "
             "%s (for more than %.0f s). One sessionizer instance must read every "
             "partition (a user's visits may be in any of them), so this one %s. Stop "
             "the other member, or use another --group", group, topic,
             (double)limit / 1000.0,
             t->ever_read ? "stops; a restart resumes from its checkpoint" : "refuses to run");
    return 1;
}
