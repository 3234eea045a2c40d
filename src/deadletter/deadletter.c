/*
 * deadletter.c - dead-letter registry, the shared JSON encoding, and the
 * JSON-lines output (file, standard output or standard error).
 */
#include "deadletter/deadletter.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/appendfile.h"
#include "common/uri.h"
#include "common/utf8.h"
#include "common/xalloc.h"
#include "record/timestamp.h"

static void base64(buf *out, const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char o[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], i + 1 < n ? tbl[(v >> 6) & 63] : '=',
                     i + 2 < n ? tbl[v & 63] : '='};
        buf_append(out, o, 4);
    }
}

/* ,"NAME":"text", or ,"NAME_base64":"..." for bytes that are not UTF-8. */
static void bytes_field(buf *out, const char *name, const char *p, size_t n)
{
    int text = utf8_valid(p, n);
    buf_printf(out, ",\"%s%s\":\"", name, text ? "" : "_base64");
    if (text) buf_append_json_escaped(out, p, n);
    else base64(out, (const unsigned char *)p, n);
    buf_append_byte(out, '"');
}

void dead_letter_json(buf *out, const dead_letter *dl)
{
    const log_position *pos = dl->raw ? &dl->raw->pos : &dl->v->pos;
    buf_append_str(out, DEAD_LETTER_JSON_PREFIX);
    buf_append_str(out, dl->reason);
    buf_append_str(out, "\",\"detail\":\"");
    buf_append_json_escaped(out, dl->detail, strlen(dl->detail));
    buf_append_str(out, "\",\"source\":\"");
    buf_append_json_escaped(out, dl->source, strlen(dl->source));
    buf_printf(out, "\",\"partition\":%" PRId32 ",\"offset\":%" PRId64, pos->partition,
               pos->offset);
    if (pos->append_ts_ms) buf_printf(out, ",\"append_ts_ms\":%" PRId64, pos->append_ts_ms);
    if (dl->raw && dl->raw->line) buf_printf(out, ",\"line\":%" PRId64, dl->raw->line);
    /* A Kafka record's key, as the Kafka dead-letter output keeps it: often
     * the user, and what a fix-and-reproduce needs besides the value. */
    if (dl->raw && dl->raw->key)
        bytes_field(out, "key", (const char *)dl->raw->key, dl->raw->key_len);
    if (dl->raw && dl->raw->oversized)
        buf_printf(out, ",\"truncated\":true,\"original_bytes\":%zu", dl->raw->full_len);
    if (dl->raw) {
        bytes_field(out, "record", dl->raw->data, dl->raw->len);
        buf_append_byte(out, '}');
        return;
    }
    buf rec;
    buf_init(&rec);
    deadletter_reconstruct(&rec, dl->v);
    buf_append_str(out, ",\"reconstructed\":true,\"record\":\"");
    buf_append_json_escaped(out, (const char *)rec.data, rec.len);
    buf_append_str(out, "\"}");
    buf_free(&rec);
}

void deadletter_reconstruct(buf *out, const visit *v)
{
    char when[40];
    format_iso8601_us(v->event_time_us, when);
    if (v->user) {
        buf_append_str(out, "{\"user_id\":\"");
        buf_append_json_escaped(out, v->user, v->user_len);
        buf_append_str(out, "\",\"page\":\"");
    } else {
        buf_printf(out, "{\"user_id\":%" PRId64 ",\"page\":\"", v->user_id);
    }
    buf_append_json_escaped(out, v->page, v->page_len);
    buf_printf(out, "\",\"event_time\":\"%s\"}", when);
}

/* ---- JSON lines output -------------------------------------------------- */

typedef struct jsonl_deadletter {
    deadletter base;
    appendfile out;
} jsonl_deadletter;

extern const deadletter_ops jsonl_deadletter_ops;

static deadletter *jsonl_dl_open(const char *target, const char *const *props, job_context *ctx,
                                 char *err, size_t errlen)
{
    (void)props, (void)ctx;
    jsonl_deadletter *d = xcalloc(1, sizeof *d);
    if (appendfile_open(&d->out, target, DEAD_LETTER_JSON_PREFIX, err, errlen)) {
        free(d);
        return NULL;
    }
    d->base.ops = &jsonl_deadletter_ops;
    return &d->base;
}

static int jsonl_dl_write(deadletter *base, const dead_letter *dl, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    jsonl_deadletter *d = (jsonl_deadletter *)base;
    buf *b = appendfile_buf(&d->out);
    dead_letter_json(b, dl);
    buf_append_byte(b, '\n');
    return 0;
}

static int jsonl_dl_flush(deadletter *base, char *err, size_t errlen)
{
    return appendfile_flush(&((jsonl_deadletter *)base)->out, err, errlen);
}

static void jsonl_dl_save(deadletter *base, buf *out)
{
    appendfile_save(&((jsonl_deadletter *)base)->out, out);
}

static int jsonl_dl_restore(deadletter *base, const void *state, size_t len, char *err,
                            size_t errlen)
{
    return appendfile_restore(&((jsonl_deadletter *)base)->out, state, len, err, errlen);
}

static void jsonl_dl_identity(deadletter *base, buf *out)
{
    appendfile_identity(&((jsonl_deadletter *)base)->out, out);
}

static void jsonl_dl_close(deadletter *base)
{
    jsonl_deadletter *d = (jsonl_deadletter *)base;
    appendfile_close(&d->out);
    free(d);
}

const deadletter_ops jsonl_deadletter_ops = {
    .scheme = "jsonl",
    .usage = "jsonl:PATH    JSON lines to a file ('jsonl:-' stdout, 'jsonl:stderr' stderr)",
    .open = jsonl_dl_open,
    .write = jsonl_dl_write,
    .flush = jsonl_dl_flush,
    .save = jsonl_dl_save,
    .restore = jsonl_dl_restore,
    .identity = jsonl_dl_identity,
    .close = jsonl_dl_close,
};

extern const deadletter_ops kafka_deadletter_ops;

static const deadletter_ops *const registry[] = {
    &jsonl_deadletter_ops,
    &kafka_deadletter_ops,
};

deadletter *deadletter_open(const char *uri, const char *const *props, job_context *ctx, char *err,
                            size_t errlen)
{
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++) {
        const char *target = uri_after_scheme(uri, registry[i]->scheme);
        if (target) return registry[i]->open(target, props, ctx, err, errlen);
    }
    snprintf(err, errlen, "unknown dead-letter output '%s' (see --help)", uri);
    return NULL;
}

void deadletter_usage(buf *out)
{
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        buf_printf(out, "    %s\n", registry[i]->usage);
}
