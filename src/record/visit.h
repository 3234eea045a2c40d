/*
 * visit.h - a record as read from the log, and the visit parsed from it.
 *
 * Every source (file, stdin, Kafka) yields raw_record: the bytes plus the
 * immutable coordinates the log gave them. Those coordinates, never the wall
 * clock, are what session ids are made of (see engine/session_id.h).
 */
#ifndef SESSIONIZER_VISIT_H
#define SESSIONIZER_VISIT_H

#include <stddef.h>
#include <stdint.h>

/* Where a record sits in the input log. For a file: partition 0, offset =
 * byte offset of the line's first byte, append_ts_ms = 0 (a file has no
 * append time). For Kafka: the record's partition, offset and timestamp. */
typedef struct log_position {
    int64_t append_ts_ms;
    int32_t partition;
    int64_t offset;
} log_position;

/* How many more records a source may deliver while an earlier raw_record's
 * key and origin stay valid (its data is valid until the next poll): the job
 * writes dead letters after its parse pipeline, a few records late, and the
 * Kafka source keeps that many messages alive for them. */
#define RAW_RECORD_KEEP 64

typedef struct raw_record {
    const char *data; /* not NUL-terminated; valid until the next poll */
    size_t len;
    log_position pos;
    int64_t line;       /* 1-based line number for files, 0 where meaningless */
    int oversized;      /* the source cut the record at its size limit... */
    size_t full_len;    /* ...which was this long before the cut (else == len) */
    /* Kafka: the record's key (NULL: none) and the librdkafka message it came
     * from (for its headers); NULL for files. See RAW_RECORD_KEEP. */
    const void *key;
    size_t key_len;
    const void *origin;
    int has_ts;         /* pos.append_ts_ms is the record's own timestamp (Kafka) */
} raw_record;

/* The user is an int64 (--user-type int) or a string (--user-type string):
 * then user/user_len hold its UTF-8 bytes, and user_id is the engine's
 * dense id for it, which the engine assigns (engine.h). */
typedef struct visit {
    int64_t user_id;
    const char *user;      /* string users: not NUL-terminated; NULL for int users */
    uint32_t user_len;
    int64_t event_time_us; /* microseconds since 1970-01-01T00:00:00Z */
    const char *page;      /* UTF-8, unescaped; not NUL-terminated */
    uint32_t page_len;
    log_position pos;
} visit;

/* A string user id longer than this is refused (invalid_user_id): the
 * engine keeps one copy per open user, and every sink's key holds it. */
#define USER_MAX_BYTES 512

/* A user as the engine's checkpoint support and the checkpoint name it: an
 * int user's value, or a string user's bytes (then id is the engine's
 * internal id, not stable across runs: never stored). */
typedef struct user_key {
    int64_t id;
    const char *str; /* NULL for int users */
    uint32_t len;
} user_key;

#endif
