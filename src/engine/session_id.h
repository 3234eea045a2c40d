/*
 * session_id.h - the keyed-idempotency key.
 *
 * A session's id is a pure function of immutable facts of the input log:
 * the user and the log position of the session's earliest-appended record.
 * Replaying the same log therefore yields the same ids, whatever the wall
 * clock, process, batch boundaries or checkpoint history.
 *
 * Definition (version 1, frozen; docs/semantics.md publishes test vectors):
 *   input  = "sz1" || le64(user_id) || le64(append_ts_ms) || le32(partition) || le64(offset)
 *            (31 bytes)
 *   id     = (int64_t) XXH3_64bits(input)      -- two's complement reinterpretation
 *
 * String users (--user-type string; frozen as well, with its own vectors):
 *   input  = "sz1s" || le32(len) || user bytes (UTF-8) || le64(append_ts_ms)
 *            || le32(partition) || le64(offset)        (28 + len bytes)
 *   id     = (int64_t) XXH3_64bits(input)
 * The prefix differs from the int form's, and the length comes first, so no
 * string input is ever an int input or another string's.
 *
 * "Earliest-appended" orders records by (append_ts_ms, partition, offset).
 */
#ifndef SESSIONIZER_SESSION_ID_H
#define SESSIONIZER_SESSION_ID_H

#include <stdint.h>

#include "record/visit.h"

int64_t session_id_of(int64_t user_id, const log_position *first);
int64_t session_id_of_string(const char *user, uint32_t len, const log_position *first);

/* Total order of log positions: negative, zero or positive like memcmp. */
static inline int log_position_cmp(const log_position *a, const log_position *b)
{
    if (a->append_ts_ms != b->append_ts_ms) return a->append_ts_ms < b->append_ts_ms ? -1 : 1;
    if (a->partition != b->partition) return a->partition < b->partition ? -1 : 1;
    if (a->offset != b->offset) return a->offset < b->offset ? -1 : 1;
    return 0;
}

#endif
