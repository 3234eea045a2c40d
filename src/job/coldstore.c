/*
 * coldstore.c - the scratch file of cold users' blobs (coldstore.h).
 */
#include "job/coldstore.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/fdio.h"
#include "common/xalloc.h"

#define RECORD_HEADER 12
#define WRITE_BUFFER (1u << 20)
#define COMPACT_MIN_DEAD ((uint64_t)64 << 20)

typedef struct cfile {
    int fd;
    uint64_t flushed; /* bytes in the file; the buffer's records follow */
    buf wbuf;
} cfile;

struct coldstore {
    char *dir;
    cfile cur, next; /* next: during a compaction */
    uint64_t live, dead;
    uint64_t written, read, compactions;
};

/* An unlinked file in dir: nothing is left behind, whatever ends the job. */
static int open_unlinked(const char *dir)
{
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) return fd;
#endif
    size_t n = strlen(dir) + 32;
    char *path = xmalloc(n);
    snprintf(path, n, "%s/.cold-XXXXXX", dir);
    int fd2 = mkstemp(path);
    if (fd2 >= 0) {
        unlink(path);
        fcntl(fd2, F_SETFD, FD_CLOEXEC);
    }
    free(path);
    return fd2;
}

static int cfile_open(cfile *f, const char *dir)
{
    f->fd = open_unlinked(dir);
    f->flushed = 0;
    buf_init(&f->wbuf);
    return f->fd < 0 ? -1 : 0;
}

static void cfile_close(cfile *f)
{
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    buf_free(&f->wbuf);
}

static int cfile_flush(coldstore *cs, cfile *f)
{
    if (f->wbuf.len == 0) return 0;
    if (fd_write_all(f->fd, f->wbuf.data, f->wbuf.len, (int64_t)f->flushed)) return -1;
    cs->written += f->wbuf.len;
    f->flushed += f->wbuf.len;
    buf_reset(&f->wbuf);
    return 0;
}

static void header(unsigned char h[RECORD_HEADER], const void *blob, size_t len, uint64_t at)
{
    uint64_t sum = XXH3_64bits_withSeed(blob, len, at);
    for (int i = 0; i < 4; i++) h[i] = (unsigned char)(len >> (8 * i));
    for (int i = 0; i < 8; i++) h[4 + i] = (unsigned char)(sum >> (8 * i));
}

static int cfile_put(coldstore *cs, cfile *f, const void *blob, size_t len, uint64_t *handle)
{
    if (len > UINT32_MAX) {
        errno = EFBIG;
        return -1;
    }
    if (f->wbuf.len + RECORD_HEADER + len > WRITE_BUFFER && cfile_flush(cs, f)) return -1;
    uint64_t at = f->flushed + f->wbuf.len;
    unsigned char h[RECORD_HEADER];
    header(h, blob, len, at);
    if (RECORD_HEADER + len > WRITE_BUFFER) { /* a big one goes straight to the file */
        if (fd_write_all(f->fd, h, RECORD_HEADER, (int64_t)at) ||
            fd_write_all(f->fd, blob, len, (int64_t)(at + RECORD_HEADER)))
            return -1;
        f->flushed += RECORD_HEADER + len;
        cs->written += RECORD_HEADER + len;
    } else {
        buf_append(&f->wbuf, h, RECORD_HEADER);
        buf_append(&f->wbuf, blob, len);
    }
    *handle = at;
    return 0;
}

static int cfile_get(coldstore *cs, cfile *f, uint64_t handle, size_t len, buf *out)
{
    unsigned char h[RECORD_HEADER];
    buf_reserve(out, len);
    unsigned char *dst = out->data + out->len;
    if (handle >= f->flushed) {
        uint64_t at = handle - f->flushed;
        if (at + RECORD_HEADER + len > f->wbuf.len) {
            errno = EIO;
            return -1;
        }
        memcpy(h, f->wbuf.data + at, RECORD_HEADER);
        memcpy(dst, f->wbuf.data + at + RECORD_HEADER, len);
    } else {
        struct iovec iov[2] = {{h, RECORD_HEADER}, {dst, len}};
        size_t want = RECORD_HEADER + len;
        ssize_t n;
        do n = preadv(f->fd, iov, 2, (off_t)handle);
        while (n < 0 && errno == EINTR);
        if (n < 0) return -1;
        if ((size_t)n != want) { /* a short read of a local file: the file was cut */
            errno = EIO;
            return -1;
        }
        cs->read += want;
    }
    unsigned char expect[RECORD_HEADER];
    header(expect, dst, len, handle);
    if (memcmp(h, expect, RECORD_HEADER) != 0) {
        errno = EIO;
        return -1;
    }
    out->len += len;
    return 0;
}

coldstore *coldstore_open(const char *dir, char *err, size_t errlen)
{
    coldstore *cs = xcalloc(1, sizeof *cs);
    cs->dir = xstrdup(dir);
    cs->next.fd = -1;
    if (cfile_open(&cs->cur, dir)) {
        snprintf(err, errlen, "cannot create the cold store for --memory-limit in %s: %s", dir,
                 strerror(errno));
        coldstore_close(cs);
        return NULL;
    }
    return cs;
}

void coldstore_close(coldstore *cs)
{
    if (!cs) return;
    cfile_close(&cs->cur);
    cfile_close(&cs->next);
    free(cs->dir);
    free(cs);
}

int coldstore_put(coldstore *cs, const void *blob, size_t len, uint64_t *handle)
{
    if (cfile_put(cs, &cs->cur, blob, len, handle)) return -1;
    cs->live += RECORD_HEADER + len;
    return 0;
}

int coldstore_get(coldstore *cs, uint64_t handle, size_t len, buf *out)
{
    return cfile_get(cs, &cs->cur, handle, len, out);
}

void coldstore_drop(coldstore *cs, uint64_t handle, size_t len)
{
    (void)handle;
    assert(cs->live >= RECORD_HEADER + len);
    cs->live -= RECORD_HEADER + len;
    cs->dead += RECORD_HEADER + len;
}

int coldstore_wants_compaction(const coldstore *cs)
{
    return cs->dead > cs->live && cs->dead >= COMPACT_MIN_DEAD;
}

int coldstore_compact_begin(coldstore *cs)
{
    assert(cs->next.fd < 0);
    return cfile_open(&cs->next, cs->dir);
}

int coldstore_move(void *ctx, uint64_t *handle, uint32_t len)
{
    coldstore *cs = ctx;
    buf b;
    buf_init(&b);
    int rc = cfile_get(cs, &cs->cur, *handle, len, &b);
    uint64_t to = 0;
    if (!rc) rc = cfile_put(cs, &cs->next, b.data, b.len, &to);
    buf_free(&b);
    if (!rc) *handle = to;
    return rc;
}

int coldstore_compact_end(coldstore *cs, int ok)
{
    if (ok && cfile_flush(cs, &cs->next)) ok = 0;
    if (!ok) { /* handles already renamed point into next: the job stops */
        int e = errno;
        cfile_close(&cs->next);
        errno = e ? e : EIO;
        return -1;
    }
    cfile_close(&cs->cur);
    cs->cur = cs->next;
    cs->next.fd = -1;
    buf_init(&cs->next.wbuf);
    cs->dead = 0;
    cs->compactions++;
    return 0;
}

void coldstore_get_stats(const coldstore *cs, coldstore_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!cs) return;
    out->live_bytes = cs->live;
    out->file_bytes = cs->cur.flushed + cs->cur.wbuf.len;
    out->written = cs->written;
    out->read = cs->read;
    out->compactions = cs->compactions;
}
