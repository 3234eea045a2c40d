/*
 * file.c - JSON lines from a file or standard input.
 *
 * A record is one line; its log position is (append_ts 0, partition 0,
 * offset = byte offset of its first byte), which is what session ids are
 * made of for file input: immutable as long as the file is only appended to.
 * The saved position is the byte offset after the last delivered line, so a
 * restart seeks straight there; stdin cannot seek, so the same number of
 * bytes is read and dropped instead (the replayed stream must be the same).
 *
 * Lines are found with memchr in a 1 MiB buffer and handed out in place:
 * no copy, no allocation per record. A line longer than max_record_bytes is
 * cut: its first max_record_bytes are kept aside, the rest skipped, and it is
 * delivered flagged oversized, with its full length, once its end is found.
 * Delivering it only then also keeps the saved position on a line boundary
 * (a commit while skipping would otherwise resume mid-line).
 *
 * A pipe or terminal (stdin, a FIFO) can go quiet without ending: poll()
 * waits at most the job's timeout and the source reports itself idle, so
 * that the job commits (and writes the sessions already closed) while the
 * producer pauses. Its one partition is caught up only at the end of the
 * input (a pause is not an end): the first poll marks it not caught up, and
 * the end is marked just before SOURCE_END (source.h, marks).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xalloc.h"
#include "source/source.h"

#define READ_CHUNK (1u << 20)

typedef struct file_source {
    source base;
    int fd;
    int is_stdin;
    int is_stream;       /* not a regular file: may be idle without ending */
    char *path;
    char *describe;
    char *identity; /* "file:" and the real path, or "stdin" */
    char *buf;
    size_t cap;
    size_t start, end;   /* unconsumed bytes are buf[start, end) */
    int eof;
    size_t max_record;
    int64_t offset;      /* file offset of buf[start] */
    int64_t line;        /* lines delivered so far */
    int skipping;        /* inside the tail of an oversized line... */
    char *cut;           /* ...whose first max_record bytes are kept here */
    int64_t cut_offset;  /* its offset */
    size_t cut_len;      /* its length so far, without the newline */
    int marked;          /* the last caught-up mark poll() returned; -1 none yet */
} file_source;

/* Reads more input: 0 when some came or the input ended, 1 when a stream
 * had nothing within timeout_ms (-1: wait), -1 on error. */
static int fill(file_source *f, int timeout_ms, char *err, size_t errlen)
{
    if (f->start > 0) {
        memmove(f->buf, f->buf + f->start, f->end - f->start);
        f->end -= f->start;
        f->start = 0;
    }
    if (f->end == f->cap) {
        f->cap *= 2;
        f->buf = xrealloc(f->buf, f->cap);
    }
    if (f->is_stream && timeout_ms >= 0) {
        struct pollfd pfd = {.fd = f->fd, .events = POLLIN};
        int ready = poll(&pfd, 1, timeout_ms);
        if (ready == 0 || (ready < 0 && errno == EINTR)) return 1;
        if (ready < 0) {
            snprintf(err, errlen, "waiting for %s: %s", f->describe, strerror(errno));
            return -1;
        }
    }
    for (;;) {
        ssize_t n = read(f->fd, f->buf + f->end, f->cap - f->end);
        if (n > 0) {
            f->end += (size_t)n;
            return 0;
        }
        if (n == 0) {
            f->eof = 1;
            return 0;
        }
        if (errno == EINTR) continue;
        snprintf(err, errlen, "reading %s: %s", f->describe, strerror(errno));
        return -1;
    }
}

static source *file_open(const char *target, const source_options *opts, char *err, size_t errlen)
{
    file_source *f = xcalloc(1, sizeof *f);
    f->base.ops = NULL;
    f->is_stdin = strcmp(target, "-") == 0;
    f->marked = -1;
    f->path = xstrdup(target);
    if (f->is_stdin) {
        f->fd = STDIN_FILENO;
        f->describe = xstrdup("standard input");
        f->identity = xstrdup("stdin");
    } else {
        f->fd = open(target, O_RDONLY | O_CLOEXEC);
        if (f->fd < 0) {
            snprintf(err, errlen, "cannot open input file '%s': %s", target, strerror(errno));
            free(f->path);
            free(f);
            return NULL;
        }
        size_t n = strlen(target) + 6;
        f->describe = xmalloc(n);
        snprintf(f->describe, n, "file %s", target);
        char *real = realpath(target, NULL);
        const char *name = real ? real : target;
        n = strlen(name) + 6;
        f->identity = xmalloc(n);
        snprintf(f->identity, n, "file:%s", name);
        free(real);
    }
    struct stat st;
    f->is_stream = fstat(f->fd, &st) == 0 && !S_ISREG(st.st_mode);
    f->max_record = opts->max_record_bytes ? opts->max_record_bytes : (1u << 20);
    f->cap = READ_CHUNK;
    while (f->cap < f->max_record + 1) f->cap *= 2;
    f->buf = xmalloc(f->cap);
    extern const source_ops file_source_ops;
    f->base.ops = &file_source_ops;
    return &f->base;
}

/* 1 with *mark filled when partition 0's state is not yet marked as this. */
static int mark_once(file_source *f, int caught_up, source_mark *mark)
{
    if (f->marked == caught_up) return 0;
    f->marked = caught_up;
    *mark = (source_mark){.partition = 0, .caught_up = caught_up, .position = f->offset};
    return 1;
}

static int file_poll(source *s, raw_record *out, source_mark *mark, int timeout_ms, char *err,
                     size_t errlen)
{
    file_source *f = (file_source *)s;
    int rc;
    if (f->marked < 0 && mark_once(f, 0, mark)) return SOURCE_MARK;
    for (;;) {
        char *p = f->buf + f->start;
        size_t avail = f->end - f->start;
        char *nl = avail ? memchr(p, '\n', avail) : NULL;
        *out = (raw_record){0};
        if (f->skipping) { /* drop the rest of an oversized line */
            size_t take = nl ? (size_t)(nl - p) : avail;
            f->cut_len += take;
            f->start += take + (nl != NULL);
            f->offset += (int64_t)(take + (nl != NULL));
            if (!nl && !f->eof) {
                if ((rc = fill(f, timeout_ms, err, errlen)) != 0)
                    return rc < 0 ? SOURCE_ERROR : SOURCE_IDLE;
                continue;
            }
            f->skipping = 0;
            out->pos.offset = f->cut_offset;
            out->line = ++f->line;
            out->data = f->cut;
            out->len = f->max_record;
            out->oversized = 1;
            out->full_len = f->cut_len;
            return SOURCE_RECORD;
        }
        size_t len = nl ? (size_t)(nl - p) : avail;
        if (len > f->max_record) {
            if (!f->cut) f->cut = xmalloc(f->max_record);
            memcpy(f->cut, p, f->max_record);
            f->cut_offset = f->offset;
            f->cut_len = 0;
            f->skipping = 1;
            continue;
        }
        if (!nl && !f->eof) {
            if ((rc = fill(f, timeout_ms, err, errlen)) != 0)
                return rc < 0 ? SOURCE_ERROR : SOURCE_IDLE;
            continue;
        }
        if (!nl && avail == 0) /* eof: everything was delivered */
            return mark_once(f, 1, mark) ? SOURCE_MARK : SOURCE_END;
        out->pos.offset = f->offset;
        out->line = ++f->line;
        /* The record stays valid until the next poll: fill() moves the
         * buffer only in a later poll, so start may move past it now. */
        out->data = p;
        out->len = out->full_len = len && p[len - 1] == '\r' ? len - 1 : len;
        size_t used = nl ? len + 1 : len;
        f->start += used;
        f->offset += (int64_t)used;
        return SOURCE_RECORD;
    }
}

/* Position: le64 byte offset, le64 lines delivered. */
static void file_position(source *s, buf *out)
{
    file_source *f = (file_source *)s;
    /* Inside an oversized line not yet delivered: resume at its start. */
    buf_put_i64le(out, f->skipping ? f->cut_offset : f->offset);
    buf_put_i64le(out, f->line);
}

static int file_seek(source *s, const void *pos, size_t len, char *err, size_t errlen)
{
    file_source *f = (file_source *)s;
    reader r;
    reader_init(&r, pos, len);
    int64_t offset = 0, line = 0;
    if (reader_i64le(&r, &offset) || reader_i64le(&r, &line) || reader_left(&r) || offset < 0) {
        snprintf(err, errlen, "the checkpoint's position for %s is not a file position "
                 "(was it written for another source?)", f->describe);
        return -1;
    }
    if (f->is_stdin) {
        while (f->offset < offset) {
            if (f->end == f->start) {
                if (f->eof) {
                    snprintf(err, errlen, "standard input has %lld bytes but the checkpoint "
                             "resumes after byte %lld: is this the same stream?",
                             (long long)f->offset, (long long)offset);
                    return -1;
                }
                if (fill(f, -1, err, errlen) < 0) return -1;
                continue;
            }
            size_t drop = f->end - f->start;
            if ((int64_t)drop > offset - f->offset) drop = (size_t)(offset - f->offset);
            f->start += drop;
            f->offset += (int64_t)drop;
        }
    } else {
        off_t size = lseek(f->fd, 0, SEEK_END);
        if (size < 0 || lseek(f->fd, offset, SEEK_SET) != offset) {
            snprintf(err, errlen, "cannot seek %s: %s", f->describe, strerror(errno));
            return -1;
        }
        if (size < offset) {
            snprintf(err, errlen, "%s has %lld bytes but the checkpoint resumes after byte "
                     "%lld: the file was truncated or replaced. Delete the checkpoint "
                     "directory to reprocess it from the start",
                     f->describe, (long long)size, (long long)offset);
            return -1;
        }
        f->start = f->end = 0;
        f->eof = 0;
        f->offset = offset;
    }
    f->line = line;
    return 0;
}

static size_t file_partitions(source *s, partition_info *out, size_t max)
{
    (void)s; /* the lag of a file is not known */
    if (max > 0) out[0] = (partition_info){.partition = 0, .lag = -1};
    return 1;
}

static const char *file_describe(source *s) { return ((file_source *)s)->describe; }

static void file_identity(source *s, buf *out) { buf_append_str(out, ((file_source *)s)->identity); }

static void file_close(source *s)
{
    file_source *f = (file_source *)s;
    if (!f) return;
    if (!f->is_stdin && f->fd >= 0) close(f->fd);
    free(f->buf);
    free(f->cut);
    free(f->path);
    free(f->describe);
    free(f->identity);
    free(f);
}

const source_ops file_source_ops = {
    .scheme = "file",
    .usage = "file:PATH     JSON lines from a file ('-' reads standard input)",
    .open = file_open,
    .poll = file_poll,
    .position = file_position,
    .seek = file_seek,
    .committed = NULL,
    .partitions = file_partitions,
    .describe = file_describe,
    .identity = file_identity,
    .close = file_close,
};
