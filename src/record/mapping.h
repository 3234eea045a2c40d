/*
 * mapping.h - where a record keeps its user, page and event time, and how
 * they are spelled (--field, --user-type, --time-format, --time-from,
 * --user-from).
 *
 * Resolved once at start-up into JSON Pointers (RFC 6901) split into
 * unescaped tokens, so that the parser compares bytes and never re-reads an
 * option per record. Bounds: a pointer has at most POINTER_MAX_TOKENS tokens
 * and POINTER_MAX_BYTES bytes, which also bounds the parser's per-record
 * state. The canonical description (record_mapping_describe) is what a
 * checkpoint is bound to.
 */
#ifndef SESSIONIZER_MAPPING_H
#define SESSIONIZER_MAPPING_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "record/visit.h"

enum { FIELD_USER, FIELD_PAGE, FIELD_TIME, FIELD_COUNT };

typedef enum user_type { USER_INT = 0, USER_STRING = 1 } user_type;

typedef enum time_format {
    TIME_ISO8601 = 0,
    TIME_EPOCH_S,
    TIME_EPOCH_MS,
    TIME_EPOCH_US,
    TIME_EPOCH_NS,
} time_format;

#define POINTER_MAX_TOKENS 16
#define POINTER_MAX_BYTES 256

typedef struct json_pointer {
    char text[POINTER_MAX_BYTES + 1]; /* as written, e.g. "/context/url" */
    char store[POINTER_MAX_BYTES];    /* the unescaped tokens, back to back */
    uint16_t off[POINTER_MAX_TOKENS], len[POINTER_MAX_TOKENS];
    int64_t index[POINTER_MAX_TOKENS]; /* the token as an array index, or -1 */
    uint32_t n;                        /* tokens (>= 1) */
} json_pointer;

typedef struct record_mapping {
    json_pointer field[FIELD_COUNT];
    user_type user_type;
    time_format time_format;
    int user_from_key;   /* the user is the Kafka message key */
    int time_from_kafka; /* the event time is the Kafka record's timestamp */
} record_mapping;

/* The seed's layout: /user_id (int), /page, /event_time (ISO-8601). */
void record_mapping_default(record_mapping *m);

/* "user=/userId", "page=/context/url", "time=/ts". 0, or -1 and err. */
int record_mapping_set_field(record_mapping *m, const char *spec, char *err, size_t errlen);
int record_mapping_set_user_type(record_mapping *m, const char *name, char *err, size_t errlen);
int record_mapping_set_time_format(record_mapping *m, const char *name, char *err, size_t errlen);

/* Settings that cannot work together: two fields on one value or one
 * inside the other. 0, or -1 and err. */
int record_mapping_check(const record_mapping *m, char *err, size_t errlen);

/* An RFC 6901 pointer to a member (not the whole document). */
int json_pointer_parse(json_pointer *p, const char *text, char *err, size_t errlen);

/* The name of a field in messages: the key for a one-token pointer
 * ("userId"), the pointer otherwise ("/context/url"). */
const char *record_mapping_field_name(const record_mapping *m, int field);

/* Canonical text of every setting, e.g. "user=/user_id page=/page
 * time=/event_time user-type=int time-format=iso8601"; the Kafka sources
 * appear as "user=key" and "time=kafka". */
void record_mapping_describe(const record_mapping *m, buf *out);

const char *time_format_name(time_format f);

#endif
