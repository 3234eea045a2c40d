/*
 * retry.c - backoff, give-up and stop for every retry loop (see retry.h).
 */
#include "common/retry.h"

#include <assert.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

void retry_init(retry *r, const retry_policy *p, volatile sig_atomic_t *stop)
{
    assert(p->first_ms > 0 && p->max_ms >= p->first_ms && p->give_up_ms >= 0);
    *r = (retry){.p = *p, .stop = stop, .start_ms = mono_ms(), .rng = retry_seed()};
}

uint64_t retry_seed(void)
{
    uint64_t x = (uint64_t)mono_us() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() << 32;
    return x ? x : 1;
}

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 1; /* xorshift64: 0 is its only fixed point */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int64_t retry_delay(const retry_policy *p, int n, uint64_t *rng)
{
    int64_t d = p->first_ms;
    for (int i = 1; i < n && d < p->max_ms; i++) d *= 2;
    if (d > p->max_ms) d = p->max_ms;
    int64_t half = d / 2;
    return d - half + (int64_t)(next_rand(rng) % (uint64_t)(half + 1));
}

int retry_past_deadline(const retry_policy *p, int64_t elapsed_ms, int64_t delay_ms)
{
    return p->give_up_ms > 0 && elapsed_ms + delay_ms > p->give_up_ms;
}

int retry_failed(retry *r, int64_t *delay_ms)
{
    if (r->stop && *r->stop) return RETRY_STOPPED;
    r->attempts++;
    int64_t d = retry_delay(&r->p, r->attempts, &r->rng);
    if (retry_past_deadline(&r->p, retry_elapsed_ms(r), d)) return RETRY_GIVE_UP;
    *delay_ms = d;
    return RETRY_AGAIN;
}

int retry_sleep(const retry *r, int64_t ms)
{
    int64_t until = mono_ms() + ms;
    for (;;) {
        if (r->stop && *r->stop) return RETRY_STOPPED;
        if (r->beat) r->beat(r->beat_ud);
        int64_t left = until - mono_ms();
        if (left <= 0) return 0;
        if (left > RETRY_SLICE_MS) left = RETRY_SLICE_MS;
        /* A signal cuts the nap short; the loop looks at the flag again. */
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int retry_stop_grace_over(retry *r)
{
    if (!r->stop || !*r->stop) return 0;
    int64_t now = mono_ms();
    if (r->stop_seen_ms == 0) r->stop_seen_ms = now;
    return now - r->stop_seen_ms >= RETRY_STOP_GRACE_MS;
}

int64_t retry_elapsed_ms(const retry *r) { return mono_ms() - r->start_ms; }
