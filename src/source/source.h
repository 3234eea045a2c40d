/*
 * source.h - where visits come from.
 *
 * A source is a URI scheme plus a small table of callbacks, one file per
 * source (file.c; kafka.c and the kafka_*.c it names), registered in source.c.
 *
 * A source delivers raw records (bytes + log position); parsing is shared
 * (record/parse.h). Its read position is opaque to the job: position() saves
 * it into the checkpoint and seek() restores it, so that the checkpoint is
 * the only source of truth for where to resume.
 *
 * Whether a partition has delivered everything it had ("caught up", which
 * lets the engine's closing watermark pass it) travels in-band, as Flink's
 * sources emit watermarks and idleness in their split's stream: poll()
 * returns a mark where the partition's state changed, after the records
 * delivered before the change and before those after it. So the job applies
 * it exactly there, with no draining and no side question to the source.
 * A source announces every partition's state in its first marks (a resumed
 * engine does not know it), and then only changes.
 */
#ifndef SESSIONIZER_SOURCE_H
#define SESSIONIZER_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/context.h"
#include "record/visit.h"

typedef struct source source;

typedef struct source_options {
    const char *const *props; /* "-X key=value" pairs, NULL-terminated */
    const char *group;        /* consumer group (Kafka) */
    int start_latest;         /* no checkpoint: start at the end, not the beginning */
    int until_end;            /* stop at the end of the input as it was at start */
    size_t max_record_bytes;  /* longer records are cut and flagged oversized */
    job_context *ctx;         /* the job's (context.h); NULL: none */
} source_options;

enum source_status {
    SOURCE_MARK = 2,    /* *mark holds a partition's caught-up mark */
    SOURCE_RECORD = 1,  /* *out holds a record */
    SOURCE_IDLE = 0,    /* nothing right now (live input) */
    SOURCE_END = -1,    /* end of input reached (bounded input, or --until-end) */
    SOURCE_ERROR = -2,  /* fatal; err says why */
};

/* Partition p is caught up (has delivered everything there was to deliver,
 * by the source's rule: docs/kafka.md, "Watermarks across partitions"), or
 * no longer is, from this point of the stream on. */
typedef struct source_mark {
    int32_t partition;
    int caught_up;
    int64_t position; /* p's next position there (Kafka offset, file byte offset; -1 unknown) */
} source_mark;

/* Per-partition progress, for the progress line and the metrics only. */
typedef struct partition_info {
    int32_t partition;
    int64_t lag;     /* records behind the end, -1 if unknown */
} partition_info;

typedef struct source_ops {
    const char *scheme;
    const char *usage;
    source *(*open)(const char *target, const source_options *opts, char *err, size_t errlen);
    /* Waits up to timeout_ms for the next record or mark (SOURCE_RECORD
     * fills *out, SOURCE_MARK *mark). */
    int (*poll)(source *s, raw_record *out, source_mark *mark, int timeout_ms, char *err,
                size_t errlen);
    /* Position after the last record returned by poll(). */
    void (*position)(source *s, buf *out);
    /* Resume after a saved position (called before the first poll). */
    int (*seek)(source *s, const void *pos, size_t len, char *err, size_t errlen);
    /* Optional: a checkpoint holding pos (what position() wrote then) is
     * durable; it may be older than the records polled since. Kafka commits
     * those offsets to its consumer group so that lag tools see progress. */
    void (*committed)(source *s, const void *pos, size_t len);
    /* Optional: fill up to max partition_info, return how many partitions
     * (lag only: caught-up states come as marks). */
    size_t (*partitions)(source *s, partition_info *out, size_t max);
    /* A human description of the input for messages ("file visits.jsonl"). */
    const char *(*describe)(source *s);
    /* Optional: the log's identity, which a checkpoint is bound to. Two URIs
     * naming the same log give the same identity ("kafka://a:9092,b:9092/t"
     * and "kafka://b:9092/t" on one cluster; "file:x" and "file:./x"), two
     * logs never do. Without it, the URI itself. */
    void (*identity)(source *s, buf *out);
    void (*close)(source *s);
} source_ops;

struct source {
    const source_ops *ops;
};

source *source_open(const char *uri, const source_options *opts, char *err, size_t errlen);
void source_usage(buf *out);

#endif
