/*
 * clock.h - the monotonic clock behind every timeout, backoff, deadline and
 * rate in the program. One clock, so that two deadlines compare; monotonic,
 * because the wall clock may jump (an NTP step) and a deadline must not.
 * The wall clock is only for ingestion_time (sink_now_ms, sink.h).
 */
#ifndef SESSIONIZER_CLOCK_H
#define SESSIONIZER_CLOCK_H

#include <stdint.h>

/* Microseconds and milliseconds since an arbitrary fixed point. */
int64_t mono_us(void);
int64_t mono_ms(void);

#endif
