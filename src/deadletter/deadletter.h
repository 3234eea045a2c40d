/*
 * deadletter.h - where records that cannot become part of a session go.
 *
 * Every input record ends in exactly one session or in the dead-letter
 * output, with a reason code (record/parse.h, "late", "session_cap") and its
 * source position, so that counts reconcile:
 *     records read = visits in sessions (closed or open) + dead letters.
 * Outputs follow the sink pattern: one file per kind, registered in
 * deadletter.c. Like sinks, an output is flushed before each checkpoint
 * commit, and an output that can be rewound saves its state in it.
 */
#ifndef SESSIONIZER_DEADLETTER_H
#define SESSIONIZER_DEADLETTER_H

#include <stddef.h>

#include "common/buf.h"
#include "common/context.h"
#include "record/visit.h"

typedef struct dead_letter {
    const char *reason;       /* machine code: "invalid_json", "late", ... */
    const char *detail;       /* one human line */
    const char *source;       /* source description ("file visits.jsonl") */
    const raw_record *raw;    /* the original bytes, or NULL ... */
    const visit *v;           /* ... when only the parsed visit is left */
} dead_letter;

typedef struct deadletter deadletter;

typedef struct deadletter_ops {
    const char *scheme;
    const char *usage;
    /* ctx: the job's (context.h), or NULL; flush() gives up soon after its
     * stop flag is set. */
    deadletter *(*open)(const char *target, const char *const *props, job_context *ctx, char *err,
                        size_t errlen);
    int (*write)(deadletter *d, const dead_letter *dl, char *err, size_t errlen);
    int (*flush)(deadletter *d, char *err, size_t errlen);
    void (*save)(deadletter *d, buf *out);  /* optional */
    int (*restore)(deadletter *d, const void *state, size_t len, char *err, size_t errlen);
    /* What a checkpoint is bound to, as for sinks (sink.h). */
    void (*identity)(deadletter *d, buf *out);
    void (*close)(deadletter *d);
} deadletter_ops;

struct deadletter {
    const deadletter_ops *ops;
};

deadletter *deadletter_open(const char *uri, const char *const *props, job_context *ctx, char *err,
                            size_t errlen);
void deadletter_usage(buf *out);

/* The JSON object describing a dead letter, shared by every output:
 * {"reason":..,"detail":..,"source":..,"partition":..,"offset":..,
 *  "append_ts_ms":..,"line":..,"key":..,"record":"<original text>"} where
 * the record is "record_base64" instead when it is not valid UTF-8, and is
 * rebuilt from the visit (with "reconstructed":true) when the bytes are
 * gone. "key" is a Kafka record's key, when it has one ("key_base64" when
 * it is not UTF-8). A record cut at --max-record-bytes adds
 * "truncated":true,"original_bytes":N. */
void dead_letter_json(buf *out, const dead_letter *dl);
/* How every dead_letter_json object starts. */
#define DEAD_LETTER_JSON_PREFIX "{\"reason\":\""

/* A rejected visit whose record bytes are gone, as a default-layout record:
 * {"user_id": 1 or "a string user", "page": "...", "event_time": "..."}. */
void deadletter_reconstruct(buf *out, const visit *v);

#endif
