/*
 * status.c - the job's signs of life and its sources' and sinks' health
 * (see status.h), and the systemd notifications that follow from them.
 */
#include "common/status.h"

#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

const char *const io_error_kind_names[IO_ERROR_KINDS] = {"connection", "timeout", "server"};

long long status_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long status_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void status_init(job_status *st)
{
    memset(st, 0, sizeof *st);
    atomic_store(&st->alive_ms, status_mono_ms());
    atomic_store(&st->phase, PHASE_STARTING);
    uint64_t usec = 0;
    /* > 0 only when WATCHDOG_USEC is set (and WATCHDOG_PID, if set, is us).
     * Half the interval, as sd_watchdog_enabled(3) advises. */
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        st->watchdog_every_ms = (long long)(usec / 2000);
        if (st->watchdog_every_ms < 1) st->watchdog_every_ms = 1;
    }
}

void status_beat(job_status *st)
{
    if (!st) return;
    long long now = status_mono_ms();
    atomic_store_explicit(&st->alive_ms, now, memory_order_relaxed);
    if (st->watchdog_every_ms && now - st->watchdog_sent_ms >= st->watchdog_every_ms) {
        sd_notify(0, "WATCHDOG=1");
        st->watchdog_sent_ms = now;
    }
}

void status_set_phase(job_status *st, job_phase phase)
{
    if (!st || atomic_load(&st->phase) == (int)phase) return;
    atomic_store(&st->phase, (int)phase);
    if (phase == PHASE_RUNNING) sd_notify(0, "READY=1");
    else if (phase == PHASE_STOPPING) sd_notify(0, "STOPPING=1");
    status_beat(st);
}

void io_status_name(io_status *io, const char *component)
{
    if (io) io->component = component;
}

void io_status_error(io_status *io, io_error_kind kind)
{
    if (io) atomic_fetch_add_explicit(&io->errors[kind], 1, memory_order_relaxed);
}

void io_status_retry(io_status *io)
{
    if (io) atomic_fetch_add_explicit(&io->retries, 1, memory_order_relaxed);
}

void io_status_down(io_status *io)
{
    if (!io) return;
    long long zero = 0;
    atomic_compare_exchange_strong(&io->down_since_ms, &zero, status_wall_ms());
}

void io_status_up(io_status *io)
{
    if (io) atomic_store(&io->down_since_ms, 0);
}
