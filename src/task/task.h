/*
 * task.h - what a task needs of the work the group assigns it (Kafka
 * Streams' StreamTask, the part that is not the engine).
 *
 * A task owns a part of the input: its engine, its part of the checkpoint,
 * its position. The single-instance job runs one task over the whole input
 * (job.c); --scale-out runs one per partition (scaleout.c). Whether an
 * assignment from the consumer group lets a task run is the task's
 * question, not the source's: the source only reports what it was offered
 * and holds the partitions paused while the task says to wait.
 *
 * The single-instance task needs every partition of its topic (a user's
 * visits may be in any of them, and its engine's state cannot be split). It
 * cannot tell a live second member of the group from a crashed one (a
 * SIGKILLed predecessor stays in the group until its session times out), so
 * offered less than the whole input it waits: one that never read, for a
 * crashed member to be evicted (2 x the session timeout + 5 s), then refuses
 * to run; one that was reading, longer (the rebalance wait, by default
 * 4 x the session timeout + 30 s), so that it outlasts a newcomer and gets
 * the whole input back, and then stops (its checkpoint is intact).
 *
 * Pure: no I/O, no clock (the caller passes the time), so it is tested
 * alone (tests/unit/test_task.c).
 */
#ifndef SESSIONIZER_TASK_H
#define SESSIONIZER_TASK_H

#include <stddef.h>
#include <stdint.h>

/* The task's side of the assignment: the task context's (context.h). */
typedef struct task_assignment {
    int ever_read;          /* it was given its whole input once */
    int64_t held_since_ms;  /* offered less than its input since then; 0: not held */
} task_assignment;

/* What the group protocol allows for: the source's settings. */
typedef struct group_timing {
    int64_t session_timeout_ms; /* a crashed member is evicted after this */
    int64_t rebalance_wait_ms;  /* how long a task that read waits for its input; -1: derived */
} group_timing;

typedef enum task_verdict {
    TASK_HOLD = 0, /* the assignment does not cover the task's input: accept it paused, wait */
    TASK_READ = 1, /* it does: read it */
} task_verdict;

/* The group offers `offered` of the input's `total` partitions (at now_ms). */
task_verdict task_offer(task_assignment *t, int32_t offered, int32_t total, int64_t now_ms);

/* How long the task waits, held, for its whole input. */
int64_t task_hold_limit_ms(const task_assignment *t, const group_timing *g);

/* 1 when the task has been held past its limit: it refuses to run (never
 * read) or stops; err says so and what to do (group and topic name the
 * input). 0 otherwise. */
int task_hold_expired(const task_assignment *t, const group_timing *g, int64_t now_ms,
                      const char *group, const char *topic, char *err, size_t errlen);

#endif
