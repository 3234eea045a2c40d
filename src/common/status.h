/*
 * status.h - what the job thread tells the rest of the process, and systemd,
 * about its own state while it runs: the signs of life behind /healthz and
 * the watchdog, its phase (starting, running, stopping), and whether the
 * source and the sink are reachable, with their retry and error counts.
 *
 * The job thread and the sources and sinks it calls write these fields;
 * the metrics server's thread reads them. They are relaxed atomics because
 * they must stay true while the job thread is blocked (a sink retrying
 * through an outage still beats and still counts its retries), which a
 * snapshot published between iterations of the job loop cannot show.
 *
 * systemd (sd_notify through libsystemd): READY=1 when the phase becomes
 * RUNNING, STOPPING=1 when it becomes STOPPING, WATCHDOG=1 from status_beat
 * at half the WatchdogSec interval when the service manager asked for it
 * (WATCHDOG_USEC). Without NOTIFY_SOCKET every notification is a no-op.
 */
#ifndef SESSIONIZER_STATUS_H
#define SESSIONIZER_STATUS_H

#include <stdatomic.h>
#include <stdint.h>

/* What went wrong in one failed attempt to reach a server. */
typedef enum io_error_kind {
    IO_ERR_CONNECTION, /* could not connect, or the connection broke */
    IO_ERR_TIMEOUT,    /* no answer within the configured time */
    IO_ERR_SERVER,     /* the server answered with an error */
    IO_ERROR_KINDS
} io_error_kind;

extern const char *const io_error_kind_names[IO_ERROR_KINDS];

typedef struct io_status {
    const char *component;        /* "kafka", "postgresql", "cql"; NULL: nothing reported */
    atomic_llong down_since_ms;   /* wall clock (ms since the epoch) of the first failure of
                                     the current outage; 0 when reachable */
    atomic_ullong retries;        /* operations attempted again after a failure */
    atomic_ullong errors[IO_ERROR_KINDS];
} io_status;

typedef enum job_phase { PHASE_STARTING, PHASE_RUNNING, PHASE_STOPPING, PHASE_DONE } job_phase;

typedef struct job_status {
    atomic_llong alive_ms;        /* CLOCK_MONOTONIC ms of the job thread's last sign of life */
    atomic_int phase;             /* job_phase */
    io_status source, sink;
    /* the job thread's own */
    long long watchdog_every_ms;  /* 0: no watchdog */
    long long watchdog_sent_ms;
} job_status;

void status_init(job_status *st);
/* The job thread is alive; NULL-safe. Cheap: one clock read, and a datagram
 * to systemd at most every watchdog_every_ms. */
void status_beat(job_status *st);
void status_set_phase(job_status *st, job_phase phase);

/* NULL-safe, so that a source or sink opened without a status (tests,
 * benchmarks) needs no checks. */
void io_status_name(io_status *io, const char *component);
void io_status_error(io_status *io, io_error_kind kind);
void io_status_retry(io_status *io);
void io_status_down(io_status *io);
void io_status_up(io_status *io);

long long status_mono_ms(void);
long long status_wall_ms(void);

#endif
