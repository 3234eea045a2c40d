/*
 * closed_session.h - what the engine hands to a sink when a session closes.
 *
 * Borrowed view: the pointers are valid only during the callback; a sink that
 * needs the data later copies it.
 */
#ifndef SESSIONIZER_CLOSED_SESSION_H
#define SESSIONIZER_CLOSED_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "record/visit.h"

typedef struct page_ref {
    const char *data; /* UTF-8, not NUL-terminated */
    uint32_t len;
} page_ref;

typedef struct closed_session {
    int64_t session_id;
    /* the position of the earliest-appended visit: what session_id is made
     * of with the user, and unique to the session within its log */
    log_position first_pos;
    /* the greatest (partition, offset) among the session's visits: as unique
     * to the session as first_pos, and, since sessions close in the order of
     * their last event times, growing with the order sessions close in (the
     * SQLite sink places the row by it). last_partition < 0: unknown (the
     * session was restored from a checkpoint written before it was kept). */
    int32_t last_partition;
    int64_t last_offset;
    int64_t user_id;        /* int users; 0 for string users */
    const char *user;       /* string users: UTF-8, not NUL-terminated; NULL for int users */
    uint32_t user_len;
    uint64_t visits;        /* visits in the session, those over the page cap included */
    int64_t first_event_us; /* event time of the first and last visit */
    int64_t last_event_us;
    const page_ref *pages;  /* event-time order, ties in log order */
    size_t n_pages;
} closed_session;

#endif
