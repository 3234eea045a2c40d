/*
 * coldstore.c - the scratch file of cold users' blobs (coldstore.h).
 *
 * Reads ahead: a load is a read of a few hundred bytes at a random offset,
 * and on this project's VMs a system call costs ~2 us, more than a whole
 * visit of a job that does not spill. So coldstore_prefetch (the engine's
 * hint, a few records before the visit needs the user) queues the read on an
 * io_uring without entering the kernel; the first get of a queued record
 * submits every read queued so far in one io_uring_enter, where the kernel
 * copies those already in the page cache at once, and the gets that follow
 * find theirs done. A hint is only that: a get whose read was not hinted,
 * failed or was short reads with preadv as before, and every record read
 * either way passes its checksum. Without io_uring (an old kernel, a seccomp
 * filter that refuses it) every get reads with preadv.
 */
#include "job/coldstore.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
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

/* Reads in flight or done ahead of their get: more than the records
 * between a hint and its visit (the job's 12-record queue, a replay's ring),
 * so that a hint rarely finds every slot busy. A record larger than
 * AHEAD_MAX is read when needed. The buffers are the store's memory beside
 * its write buffer: 32 x 16 KiB at most, 32 x 1 KiB for sessions of ten
 * short pages. */
#define AHEAD_SLOTS 32
#define AHEAD_MAX (16u << 10)

enum { AHEAD_FREE, AHEAD_QUEUED, AHEAD_INFLIGHT, AHEAD_DONE };

typedef struct ahead {
    uint64_t handle;
    uint32_t len;   /* the blob's; the read is RECORD_HEADER + len */
    uint8_t state;
    int32_t res;    /* the read's result (AHEAD_DONE) */
    uint64_t *target; /* a compaction's move: the handle to rename */
    unsigned char *buf;
    size_t cap;
} ahead;

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
    /* reading ahead: only with a ring (coldstore_open) */
    struct io_uring ring;
    int have_ring, ring_open; /* reading ahead; the ring exists (to exit) */
    ahead slot[AHEAD_SLOTS];
    unsigned next_slot, queued, inflight;
    unsigned n_moving; /* a compaction's moves queued in slot[0..n_moving) */
    uint64_t read_ahead; /* gets served by a read ahead */
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

/* ---- reading ahead --------------------------------------------------------- */

/* Takes the completions there are; with wait, at least one. */
static void ahead_reap(coldstore *cs, int wait)
{
    struct io_uring_cqe *cqe;
    for (;;) {
        int rc = wait ? io_uring_wait_cqe(&cs->ring, &cqe) : io_uring_peek_cqe(&cs->ring, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0) return;
        ahead *a = io_uring_cqe_get_data(cqe);
        assert(a->state == AHEAD_INFLIGHT && cs->inflight > 0);
        a->res = cqe->res;
        a->state = AHEAD_DONE;
        cs->inflight--;
        io_uring_cqe_seen(&cs->ring, cqe);
        wait = 0;
    }
}

/* Hands the queued reads to the kernel, in one system call. */
static void ahead_submit(coldstore *cs)
{
    if (cs->queued == 0) return;
    int rc;
    do rc = io_uring_submit(&cs->ring);
    while (rc == -EINTR);
    if (rc < 0) return; /* still queued: the next submit takes them */
    for (unsigned i = 0; i < AHEAD_SLOTS; i++)
        if (cs->slot[i].state == AHEAD_QUEUED) {
            cs->slot[i].state = AHEAD_INFLIGHT;
            cs->inflight++;
        }
    cs->queued = 0;
}

/* Every read finished and every slot free: before the file they read
 * changes (a compaction), and before the buffers are freed. */
static void ahead_drain(coldstore *cs)
{
    if (!cs->have_ring) return;
    ahead_submit(cs);
    /* Reads the kernel refused to take stay in the ring, naming a file
     * about to close: the ring is not used again (gets read with preadv). */
    if (cs->queued) cs->have_ring = 0;
    while (cs->inflight > 0) ahead_reap(cs, 1);
    for (unsigned i = 0; i < AHEAD_SLOTS; i++) {
        cs->slot[i].state = AHEAD_FREE;
        cs->slot[i].target = NULL;
    }
    cs->queued = 0;
    cs->n_moving = 0;
}

/* A slot's buffer holds the record (in KiB steps: sized to what the
 * sessions hold, not to AHEAD_MAX, so that the buffers stay ~32 KiB for
 * users of short sessions). */
static void ahead_fit(ahead *a, size_t len)
{
    if (a->cap >= RECORD_HEADER + len) return;
    a->cap = (RECORD_HEADER + len + 1023) & ~(size_t)1023;
    free(a->buf);
    a->buf = xmalloc(a->cap);
}

static ahead *ahead_find(coldstore *cs, uint64_t handle, size_t len)
{
    for (unsigned i = 0; i < AHEAD_SLOTS; i++) {
        ahead *a = &cs->slot[i];
        if (a->state != AHEAD_FREE && !a->target && a->handle == handle && a->len == len) return a;
    }
    return NULL;
}

void coldstore_prefetch(coldstore *cs, uint64_t handle, size_t len)
{
    cfile *f = &cs->cur;
    /* a record still in the write buffer is served from memory */
    if (!cs->have_ring || len > AHEAD_MAX - RECORD_HEADER || handle + RECORD_HEADER + len > f->flushed ||
        cs->next.fd >= 0) /* a compaction's moves use the slots */
        return;
    if (ahead_find(cs, handle, len)) return;
    ahead *a = &cs->slot[cs->next_slot];
    if (a->state == AHEAD_INFLIGHT) ahead_reap(cs, 0);
    /* a read the kernel has not finished, or not yet been given, keeps its
     * buffer: the hint is dropped (a done one nobody took is overwritten) */
    if (a->state == AHEAD_QUEUED || a->state == AHEAD_INFLIGHT) return;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&cs->ring);
    if (!sqe) return;
    cs->next_slot = (cs->next_slot + 1) % AHEAD_SLOTS;
    ahead_fit(a, len);
    a->handle = handle;
    a->len = (uint32_t)len;
    a->state = AHEAD_QUEUED;
    cs->queued++;
    io_uring_prep_read(sqe, f->fd, a->buf, (unsigned)(RECORD_HEADER + len), handle);
    io_uring_sqe_set_data(sqe, a);
}

/* The record's header and blob from a read ahead (1), or 0: read it. */
static int ahead_get(coldstore *cs, uint64_t handle, size_t len, unsigned char h[RECORD_HEADER],
                     unsigned char *dst)
{
    ahead *a = cs->have_ring ? ahead_find(cs, handle, len) : NULL;
    if (!a) return 0;
    if (a->state == AHEAD_QUEUED) ahead_submit(cs);
    while (a->state == AHEAD_INFLIGHT) ahead_reap(cs, 1);
    if (a->state != AHEAD_DONE) return 0; /* could not be submitted */
    a->state = AHEAD_FREE;
    if (a->res != (int32_t)(RECORD_HEADER + len)) return 0; /* failed or short: preadv says why */
    memcpy(h, a->buf, RECORD_HEADER);
    memcpy(dst, a->buf + RECORD_HEADER, len);
    cs->read += RECORD_HEADER + len;
    cs->read_ahead++;
    return 1;
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
    } else if (f == &cs->cur && ahead_get(cs, handle, len, h, dst)) {
        /* read ahead */
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
    /* No ring (io_uring refused): every get reads when it is needed. */
    cs->have_ring = cs->ring_open = io_uring_queue_init(AHEAD_SLOTS, &cs->ring, 0) == 0;
    return cs;
}

void coldstore_close(coldstore *cs)
{
    if (!cs) return;
    ahead_drain(cs); /* the kernel may still be writing into the buffers */
    if (cs->ring_open) io_uring_queue_exit(&cs->ring);
    for (unsigned i = 0; i < AHEAD_SLOTS; i++) free(cs->slot[i].buf);
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
    ahead_drain(cs); /* the slots carry the moves' reads */
    return cfile_open(&cs->next, cs->dir);
}

static int move_now(coldstore *cs, uint64_t *handle, uint32_t len)
{
    buf b;
    buf_init(&b);
    int rc = cfile_get(cs, &cs->cur, *handle, len, &b);
    uint64_t to = 0;
    if (!rc) rc = cfile_put(cs, &cs->next, b.data, b.len, &to);
    buf_free(&b);
    if (!rc) *handle = to;
    return rc;
}

/* The moves queued in the slots: their reads in one system call, then each
 * record, checked, into the new file. A read that failed or came short is
 * read again with preadv (which says why, if it fails again). */
static int moves_flush(coldstore *cs)
{
    ahead_submit(cs);
    if (cs->queued) cs->have_ring = 0; /* refused: the moves read one by one */
    while (cs->inflight > 0) ahead_reap(cs, 1);
    int rc = 0;
    for (unsigned i = 0; i < AHEAD_SLOTS; i++) {
        ahead *a = &cs->slot[i];
        if (a->state == AHEAD_FREE || !a->target) continue;
        uint64_t *target = a->target;
        a->target = NULL;
        int done = a->state == AHEAD_DONE && a->res == (int32_t)(RECORD_HEADER + a->len);
        a->state = AHEAD_FREE;
        if (rc) continue;
        if (!done) {
            rc = move_now(cs, target, a->len);
            continue;
        }
        unsigned char expect[RECORD_HEADER];
        header(expect, a->buf + RECORD_HEADER, a->len, a->handle);
        if (memcmp(a->buf, expect, RECORD_HEADER) != 0) {
            errno = EIO;
            rc = -1;
            continue;
        }
        cs->read += RECORD_HEADER + a->len;
        uint64_t to = 0;
        rc = cfile_put(cs, &cs->next, a->buf + RECORD_HEADER, a->len, &to);
        if (!rc) *target = to;
    }
    cs->n_moving = 0;
    return rc;
}

int coldstore_move(void *ctx, uint64_t *handle, uint32_t len)
{
    coldstore *cs = ctx;
    cfile *f = &cs->cur;
    /* Records of the file are read AHEAD_SLOTS at a time (one system call
     * instead of one each: a compaction moves every cold user); *handle is
     * renamed when its batch is written, at the latest by compact_end. */
    if (!cs->have_ring || len > AHEAD_MAX - RECORD_HEADER || *handle + RECORD_HEADER + len > f->flushed)
        return move_now(cs, handle, len);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&cs->ring);
    if (!sqe) return move_now(cs, handle, len);
    ahead *a = &cs->slot[cs->n_moving++];
    assert(a->state == AHEAD_FREE);
    ahead_fit(a, len);
    a->handle = *handle;
    a->len = len;
    a->target = handle;
    a->state = AHEAD_QUEUED;
    cs->queued++;
    io_uring_prep_read(sqe, f->fd, a->buf, RECORD_HEADER + len, *handle);
    io_uring_sqe_set_data(sqe, a);
    return cs->n_moving == AHEAD_SLOTS ? moves_flush(cs) : 0;
}

int coldstore_compact_end(coldstore *cs, int ok)
{
    if (cs->n_moving && moves_flush(cs)) ok = 0;
    if (ok && cfile_flush(cs, &cs->next)) ok = 0;
    if (!ok) { /* handles already renamed point into next: the job stops */
        int e = errno;
        ahead_drain(cs);
        cfile_close(&cs->next);
        errno = e ? e : EIO;
        return -1;
    }
    ahead_drain(cs); /* the reads ahead name records of the file that goes */
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
    out->read_ahead = cs->read_ahead;
}
