/*
 * appendfile.c - rewindable append-only output (see appendfile.h).
 */
#include "common/appendfile.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xalloc.h"

/* Every write is whole lines, so a file that does not end in a newline was
 * cut by a crash in the middle of a write, or its last line is another
 * writer's. A cut line of ours is removed: with a checkpoint it lies past the
 * checkpointed length anyway, and without one the replay writes its content
 * again. Anything else is kept, and the first flush ends it with a newline. */
static int check_tail(appendfile *f, const char *path, const char *line_prefix, char *err,
                      size_t errlen)
{
    char tail[4096];
    off_t end = f->size;
    int first = 1;
    while (end > 0) {
        size_t n = end < (off_t)sizeof tail ? (size_t)end : sizeof tail;
        if (pread(f->fd, tail, n, end - (off_t)n) != (ssize_t)n) {
            snprintf(err, errlen, "cannot read output file '%s': %s", path, strerror(errno));
            return -1;
        }
        if (first && tail[n - 1] == '\n') return 0; /* intact */
        first = 0;
        size_t i = n;
        while (i > 0 && tail[i - 1] != '\n') i--;
        end -= (off_t)(n - i);
        if (i > 0) break;
    }
    if (end == f->size) return 0; /* empty */
    /* Does the last line start as this writer's lines do? */
    char head[64];
    size_t want = strlen(line_prefix);
    assert(want <= sizeof head);
    size_t have = (size_t)(f->size - end) < want ? (size_t)(f->size - end) : want;
    if (pread(f->fd, head, have, end) != (ssize_t)have) {
        snprintf(err, errlen, "cannot read output file '%s': %s", path, strerror(errno));
        return -1;
    }
    if (memcmp(head, line_prefix, have) != 0) {
        log_warn("output", "%s does not end with a newline and its last line (%lld bytes) was "
                 "not written by sessionizer: it is kept, and a newline ends it before the "
                 "first new line", path, (long long)(f->size - end));
        f->unterminated = 1;
        return 0;
    }
    log_warn("output", "%s ended in a line cut short by a crash; removed its %lld bytes", path,
             (long long)(f->size - end));
    if (ftruncate(f->fd, end) != 0) {
        snprintf(err, errlen, "cannot truncate output file '%s': %s", path, strerror(errno));
        return -1;
    }
    f->size = end;
    return 0;
}

int appendfile_open(appendfile *f, const char *path, const char *line_prefix, char *err,
                    size_t errlen)
{
    memset(f, 0, sizeof *f);
    buf_init(&f->pending);
    if (strcmp(path, "-") == 0 || strcmp(path, "stdout") == 0) {
        f->fd = STDOUT_FILENO;
        f->name = xstrdup("standard output");
        f->identity = xstrdup("jsonl:-");
        return 0;
    }
    if (strcmp(path, "stderr") == 0) {
        f->fd = STDERR_FILENO;
        f->name = xstrdup("standard error");
        f->identity = xstrdup("jsonl:stderr");
        return 0;
    }
    f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    struct stat st;
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
        snprintf(err, errlen, "cannot open output file '%s': %s", path, strerror(errno));
        if (f->fd >= 0) close(f->fd);
        return -1;
    }
    f->rewindable = S_ISREG(st.st_mode);
    f->size = st.st_size;
    f->dev = (uint64_t)st.st_dev;
    f->ino = (uint64_t)st.st_ino;
    if (f->rewindable && check_tail(f, path, line_prefix, err, errlen)) {
        close(f->fd);
        return -1;
    }
    if (lseek(f->fd, 0, SEEK_END) < 0 && f->rewindable) {
        snprintf(err, errlen, "cannot seek output file '%s': %s", path, strerror(errno));
        close(f->fd);
        return -1;
    }
    f->name = xstrdup(path);
    char *real = realpath(path, NULL);
    const char *p = real ? real : path;
    size_t n = strlen(p) + sizeof "jsonl:";
    f->identity = xmalloc(n);
    snprintf(f->identity, n, "jsonl:%s", p);
    free(real);
    return 0;
}

int appendfile_flush(appendfile *f, char *err, size_t errlen)
{
    /* whole lines only: what a crash cuts is then always the last line */
    assert(f->pending.len == 0 || f->pending.data[f->pending.len - 1] == '\n');
    if (f->unterminated && f->pending.len) {
        /* another writer's last line: ours start on a line of their own */
        buf_append_byte(&f->pending, '\n');
        memmove(f->pending.data + 1, f->pending.data, f->pending.len - 1);
        f->pending.data[0] = '\n';
        f->unterminated = 0;
    }
    size_t done = 0;
    while (done < f->pending.len) {
        ssize_t n = write(f->fd, f->pending.data + done, f->pending.len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            snprintf(err, errlen, "writing %s: %s", f->name, strerror(errno));
            f->synced = 0;
            /* Drop what was written so a retry does not write it twice. */
            memmove(f->pending.data, f->pending.data + done, f->pending.len - done);
            f->pending.len -= done;
            f->size += (int64_t)done;
            return -1;
        }
        done += (size_t)n;
    }
    f->size += (int64_t)done;
    buf_reset(&f->pending);
    assert(!f->rewindable || lseek(f->fd, 0, SEEK_CUR) == f->size);
    /* A commit with no new line (dead letters are rare) needs no fsync: the
     * one after the last write still covers the file. */
    if (done == 0 && f->synced) return 0;
    if (f->rewindable && fsync(f->fd) != 0) {
        f->synced = 0;
        snprintf(err, errlen, "syncing %s: %s", f->name, strerror(errno));
        return -1;
    }
    f->synced = 1;
    return 0;
}

void appendfile_identity(const appendfile *f, buf *out) { buf_append_str(out, f->identity); }

/* State: u32 rewindable, i64 size, then u64 device and u64 inode. A state
 * without the last two was written before they were recorded: its file is
 * rewound unchecked, as it was then. */
#define STATE_V0_BYTES 12
#define STATE_BYTES 28

void appendfile_save(const appendfile *f, buf *out)
{
    size_t before = out->len;
    buf_put_u32le(out, (uint32_t)f->rewindable);
    buf_put_i64le(out, f->size);
    buf_put_u64le(out, f->dev);
    buf_put_u64le(out, f->ino);
    assert(out->len - before == STATE_BYTES);
    (void)before;
}

int appendfile_restore(appendfile *f, const void *state, size_t len, char *err, size_t errlen)
{
    reader r;
    reader_init(&r, state, len);
    uint32_t was_rewindable = 0;
    int64_t size = 0;
    uint64_t dev = 0, ino = 0;
    int has_id = len == STATE_BYTES;
    if ((len != STATE_BYTES && len != STATE_V0_BYTES) || reader_u32le(&r, &was_rewindable) ||
        reader_i64le(&r, &size) || (has_id && (reader_u64le(&r, &dev) || reader_u64le(&r, &ino))) ||
        reader_left(&r)) {
        snprintf(err, errlen, "the checkpoint's state for %s is malformed", f->name);
        return -1;
    }
    if (!was_rewindable || !f->rewindable) return 0;
    if (has_id && (dev != f->dev || ino != f->ino)) {
        snprintf(err, errlen, "%s is not the file this checkpoint wrote to: it was replaced "
                 "since (device %llu inode %llu, was device %llu inode %llu), and it is left "
                 "untouched. Put the original file back under this name, or use a new "
                 "--checkpoint directory to process the input again from the beginning",
                 f->name, (unsigned long long)f->dev, (unsigned long long)f->ino,
                 (unsigned long long)dev, (unsigned long long)ino);
        return -1;
    }
    if (f->size < size) {
        snprintf(err, errlen, "%s has %lld bytes but the checkpoint recorded %lld: it was "
                 "truncated or replaced since. Restore it, or delete the checkpoint directory "
                 "to reprocess the input from the start",
                 f->name, (long long)f->size, (long long)size);
        return -1;
    }
    f->synced = 0;
    if (ftruncate(f->fd, size) != 0 || lseek(f->fd, size, SEEK_SET) != size) {
        snprintf(err, errlen, "cannot rewind %s to its checkpointed length: %s", f->name,
                 strerror(errno));
        return -1;
    }
    f->size = size;
    /* The length of a commit ends one of our lines, or is where the file
     * ended when the checkpoint began, possibly in another writer's line. */
    char last = '\n';
    if (size > 0 && pread(f->fd, &last, 1, size - 1) != 1) {
        snprintf(err, errlen, "cannot read %s: %s", f->name, strerror(errno));
        return -1;
    }
    f->unterminated = last != '\n';
    return 0;
}

void appendfile_close(appendfile *f)
{
    if (f->rewindable && f->fd >= 0) close(f->fd);
    buf_free(&f->pending);
    free(f->name);
    free(f->identity);
    f->name = f->identity = NULL;
}
