/*
 * retry.h - the one way this program waits between attempts: capped
 * exponential backoff with jitter, a give-up deadline, and the job's stop
 * flag. Used by the PostgreSQL sink, the CQL client, the SQLite sink's busy
 * handling and the Kafka dead-letter output, so that every one of them
 * backs off, gives up and stops the same way (docs/guarantees.md).
 *
 *   retry rt;
 *   retry_init(&rt, &policy, stop);
 *   for (;;) {
 *       if (attempt() == OK) break;
 *       int64_t wait;
 *       if (retry_failed(&rt, &wait) != RETRY_AGAIN) give up;
 *       if (retry_sleep(&rt, wait)) stopped;
 *   }
 *
 * Delays: first_ms, doubling up to max_ms, each drawn uniformly in
 * [delay/2, delay] ("equal jitter": several jobs that failed together do not
 * retry in lockstep, and no delay exceeds max_ms). Give-up: no attempt is
 * scheduled later than give_up_ms after the first failure's retry began.
 * Stop: a backoff sleep ends within RETRY_SLICE_MS of the flag being set
 * (nothing is in flight then); a wait for work in flight (a request, a
 * COMMIT, a delivery) lets a healthy store finish it for RETRY_STOP_GRACE_MS
 * and then gives up, so that a clean SIGTERM still makes its final commit
 * and an outage does not hold the stop.
 */
#ifndef SESSIONIZER_RETRY_H
#define SESSIONIZER_RETRY_H

#include <signal.h>
#include <stdint.h>

#define RETRY_SLICE_MS 100
#define RETRY_STOP_GRACE_MS 2000

typedef struct retry_policy {
    int64_t first_ms;   /* the first delay (> 0) */
    int64_t max_ms;     /* the longest delay (>= first_ms) */
    int64_t give_up_ms; /* 0: never give up */
} retry_policy;

typedef struct retry {
    retry_policy p;
    volatile sig_atomic_t *stop; /* NULL: never asked to stop */
    int64_t start_ms;
    int64_t stop_seen_ms; /* when a wait first saw the stop flag; 0: not yet */
    int attempts;         /* failed attempts so far */
    uint64_t rng;
    /* Called every slice of retry_sleep: the waiter's sign of life (the
     * job's watchdog and /healthz, common/status.h). NULL: none. Set after
     * retry_init. */
    void (*beat)(void *ud);
    void *beat_ud;
} retry;

enum { RETRY_AGAIN = 0, RETRY_GIVE_UP = 1, RETRY_STOPPED = 2 };

/* Starts the clock of the give-up deadline now. */
void retry_init(retry *r, const retry_policy *p, volatile sig_atomic_t *stop);

/* After a failed attempt: RETRY_AGAIN with the wait before the next one in
 * *delay_ms, RETRY_GIVE_UP when that next attempt would begin after the
 * deadline, RETRY_STOPPED when the job is being asked to stop. */
int retry_failed(retry *r, int64_t *delay_ms);

/* Sleeps ms in slices of RETRY_SLICE_MS; returns RETRY_STOPPED as soon as the
 * stop flag is set, 0 after the full sleep. */
int retry_sleep(const retry *r, int64_t ms);

/* Non-zero once the stop flag has been set for RETRY_STOP_GRACE_MS (the
 * first call that sees it set starts the grace). For waits on work in
 * flight. */
int retry_stop_grace_over(retry *r);

/* Milliseconds since retry_init. */
int64_t retry_elapsed_ms(const retry *r);

/* The jittered delay before attempt n + 1 after n >= 1 failed ones (the
 * schedule above), drawing from *rng; for callers that schedule retries of
 * many requests themselves (the CQL client) rather than sleep. */
int64_t retry_delay(const retry_policy *p, int n, uint64_t *rng);

/* Whether an attempt elapsed_ms after the first one's start, delay_ms from
 * now, would begin after the give-up deadline (the rule of retry_failed). */
int retry_past_deadline(const retry_policy *p, int64_t elapsed_ms, int64_t delay_ms);

/* A seed for *rng that differs between processes and runs. */
uint64_t retry_seed(void);

#endif
