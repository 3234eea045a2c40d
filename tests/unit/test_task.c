/*
 * test_task.c - the single-instance task's answer to the group's offers
 * (task.h): it reads only with the whole input; offered less, a task that
 * never read refuses after the eviction bound (2 x session timeout + 5 s),
 * one that read stops after the rebalance wait (by default 4 x session
 * timeout + 30 s), and a whole offer in time ends the hold.
 */
#include <string.h>

#include "check.h"
#include "task/task.h"

int main(void)
{
    group_timing g = {.session_timeout_ms = 6000, .rebalance_wait_ms = -1};
    char err[512] = "";

    /* A newcomer offered 1 of 2: held, refuses after 17 s, not before. */
    task_assignment t = {0};
    CHECK(task_offer(&t, 1, 2, 1000) == TASK_HOLD);
    CHECK_EQ_I64(task_hold_limit_ms(&t, &g), 17000);
    CHECK(task_hold_expired(&t, &g, 18000, "G", "visits", err, sizeof err) == 0);
    CHECK(task_hold_expired(&t, &g, 18001, "G", "visits", err, sizeof err) == 1);
    CHECK(strstr(err, "refuses to run") && strstr(err, "consumer group G") &&
          strstr(err, "topic visits") && strstr(err, "more than 17 s"));
    /* a second partial offer does not restart the clock */
    CHECK(task_offer(&t, 0, 2, 9000) == TASK_HOLD);
    CHECK_EQ_I64(t.held_since_ms, 1000);

    /* The whole input in time: read, no longer held. */
    CHECK(task_offer(&t, 2, 2, 10000) == TASK_READ);
    CHECK(t.ever_read && t.held_since_ms == 0);
    CHECK(task_hold_expired(&t, &g, 1000000, "G", "visits", err, sizeof err) == 0);

    /* Having read, it waits longer (54 s derived, or the setting), then stops. */
    CHECK(task_offer(&t, 1, 2, 20000) == TASK_HOLD);
    CHECK_EQ_I64(task_hold_limit_ms(&t, &g), 54000);
    CHECK(task_hold_expired(&t, &g, 74000, "G", "visits", err, sizeof err) == 0);
    CHECK(task_hold_expired(&t, &g, 74001, "G", "visits", err, sizeof err) == 1);
    CHECK(strstr(err, "stops; a restart resumes from its checkpoint") != NULL);
    g.rebalance_wait_ms = 5000;
    CHECK_EQ_I64(task_hold_limit_ms(&t, &g), 5000);
    CHECK(task_hold_expired(&t, &g, 25001, "G", "visits", err, sizeof err) == 1);

    /* An empty offer (another member took everything) holds too. */
    task_assignment n = {0};
    CHECK(task_offer(&n, 0, 4, 5) == TASK_HOLD);
    CHECK(task_offer(&n, 4, 4, 6) == TASK_READ);
    return check_summary("test_task");
}
