/*
 * parse.h - one JSON line to a visit, or the reason it is not one.
 *
 * By default {"user_id": <int64>, "page": <string>, "event_time": <ISO-8601
 * string>}; a record_mapping (record/mapping.h) moves the fields anywhere in
 * the record (JSON Pointers), makes the user a string and the time an epoch
 * number, or takes them from the Kafka record. Unknown fields are ignored. The JSON grammar and UTF-8 are checked by
 * yajl (Debian libyajl), a streaming parser: no tree is built, so a record
 * costs no allocation, and the memory it takes is proportional to its size
 * and its nesting depth, which is bounded (PARSE_MAX_DEPTH).
 */
#ifndef SESSIONIZER_PARSE_H
#define SESSIONIZER_PARSE_H

#include <stddef.h>

#include "common/buf.h"
#include "record/mapping.h"
#include "record/visit.h"

typedef enum parse_error {
    PARSE_OK = 0,
    PARSE_INVALID_JSON,
    PARSE_INVALID_UTF8,
    PARSE_NOT_AN_OBJECT,
    PARSE_MISSING_FIELD,
    PARSE_MISTYPED_FIELD,
    PARSE_DUPLICATE_FIELD,
    PARSE_USER_ID_RANGE,
    PARSE_BAD_EVENT_TIME,
    PARSE_INVALID_PAGE,
    PARSE_OVERSIZED,
    PARSE_INVALID_USER_ID,
    PARSE_TOO_DEEP,
} parse_error;

/* Objects and arrays nest at most this deep, the record's own object
 * counting as 1 (serde_json's default limit). A visit needs depth 1; the
 * bound keeps yajl's state stack, which grows with the depth, small. */
#define PARSE_MAX_DEPTH 128

typedef struct record_parser record_parser;

/* m: the layout (copied; NULL for the default). The mapping is resolved
 * here, once: parsing a record only compares bytes. */
record_parser *record_parser_new(const record_mapping *m);
void record_parser_free(record_parser *p);

/* Parses r into *out (out->page and out->user point into the parser or into
 * r's bytes; valid until the next call and while r's bytes are). On failure returns the error and writes a one-line detail
 * ("missing field \"page\"") into detail. */
parse_error record_parse(record_parser *p, const raw_record *r, visit *out, char *detail,
                         size_t detail_len);

/* Tests: turn the fast path for common records off (1 = on, the default),
 * to hold it to the same answers as the general parser. */
void record_parser_set_fast_path(record_parser *p, int on);

/* Tests: the most memory the parser's arena held while parsing the last
 * record, in bytes (its fixed store included). */
size_t record_parser_peak_bytes(const record_parser *p);

/* Stable machine-readable reason code ("invalid_json", "late", ...). */
const char *parse_error_code(parse_error e);

#endif
