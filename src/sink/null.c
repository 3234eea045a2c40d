/*
 * null.c - a sink that discards every session: measures the engine and the
 * source alone (bench/), and dry-runs a job to count its sessions.
 */
#include <stdlib.h>

#include "common/xalloc.h"
#include "sink/sink.h"

extern const sink_ops null_sink_ops;

static sink *null_open(const char *target, const sink_options *opts, char *err, size_t errlen)
{
    (void)target, (void)opts, (void)err, (void)errlen;
    sink *s = xcalloc(1, sizeof *s);
    s->ops = &null_sink_ops;
    return s;
}

static int null_write(sink *s, const closed_session *cs, char *err, size_t errlen)
{
    (void)s, (void)cs, (void)err, (void)errlen;
    return 0;
}

static int null_flush(sink *s, char *err, size_t errlen)
{
    (void)s, (void)err, (void)errlen;
    return 0;
}

static void null_identity(sink *s, buf *out)
{
    (void)s;
    buf_append_str(out, "null:");
}

static void null_close(sink *s) { free(s); }

const sink_ops null_sink_ops = {
    .scheme = "null",
    .usage = "null:        discard the sessions (benchmarks, dry runs)",
    .open = null_open,
    .write = null_write,
    .flush = null_flush,
    .identity = null_identity,
    .close = null_close,
};
