/*
 * jsonl.c - sessions as JSON lines, to a file or standard output.
 *
 * A file sink is a log of writes, not a table: it has no upsert. Within one
 * checkpoint history it is exact (a restart truncates it back to the
 * checkpointed length before replaying, see common/appendfile.h); after the
 * checkpoint is deleted, a replay appends the rows again, and a reader keys
 * them on (session_id, user_id), the later line winning.
 */
#include <stddef.h>
#include <stdlib.h>

#include "common/appendfile.h"
#include "common/xalloc.h"
#include "sink/session_json.h"
#include "sink/sink.h"

typedef struct jsonl_sink {
    sink base;
    appendfile out;
    unsigned columns;
} jsonl_sink;

extern const sink_ops jsonl_sink_ops;

/* The job sees a jsonl_sink as its sink header (sink.h). */
_Static_assert(offsetof(jsonl_sink, base) == 0, "sink header first");

static sink *jsonl_open(const char *target, const sink_options *opts, char *err, size_t errlen)
{
    jsonl_sink *s = xcalloc(1, sizeof *s);
    s->columns = opts->columns;
    if (appendfile_open(&s->out, target, SESSION_JSON_LINE_PREFIX, err, errlen)) {
        free(s);
        return NULL;
    }
    s->base.ops = &jsonl_sink_ops;
    return &s->base;
}

static int jsonl_write(sink *base, const closed_session *cs, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    jsonl_sink *s = (jsonl_sink *)base;
    char now[32];
    sink_now_iso8601(now);
    session_json_row(appendfile_buf(&s->out), cs, now, s->columns);
    return 0;
}

static int jsonl_flush(sink *base, char *err, size_t errlen)
{
    return appendfile_flush(&((jsonl_sink *)base)->out, err, errlen);
}

static void jsonl_save(sink *base, buf *out) { appendfile_save(&((jsonl_sink *)base)->out, out); }

static int jsonl_restore(sink *base, const void *state, size_t len, char *err, size_t errlen)
{
    return appendfile_restore(&((jsonl_sink *)base)->out, state, len, err, errlen);
}

static void jsonl_identity(sink *base, buf *out)
{
    appendfile_identity(&((jsonl_sink *)base)->out, out);
}

static void jsonl_close(sink *base)
{
    jsonl_sink *s = (jsonl_sink *)base;
    appendfile_close(&s->out);
    free(s);
}

const sink_ops jsonl_sink_ops = {
    .scheme = "jsonl",
    .usage = "jsonl:PATH    JSON lines to a file ('jsonl:-' is standard output)",
    .open = jsonl_open,
    .write = jsonl_write,
    .flush = jsonl_flush,
    .save = jsonl_save,
    .restore = jsonl_restore,
    .identity = jsonl_identity,
    .close = jsonl_close,
};
