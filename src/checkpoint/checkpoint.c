/*
 * checkpoint.c - the checkpoint directory (format and guarantees in
 * checkpoint.h and docs/checkpoint.md): one backend for changelog.h's frames
 * and snapshots, plus the reader of format 1 (SQLite) for upgrades.
 *
 * Files: lock; snapshot-<seq> (the state after commit seq, written as
 * snapshot-<seq>.tmp, fsynced, renamed, the directory fsynced); log-<seq>
 * (a 24-byte header, then the frames of commits seq+1, seq+2, ...). A log is
 * created, and the directory fsynced, before any frame goes into it, so a
 * snapshot's successor log always exists. Files older than the newest
 * snapshot are deleted once it is durable; a crash before that leaves them,
 * and the next open deletes them.
 */
#include "checkpoint/checkpoint.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "checkpoint/changelog.h"
#include "common/context.h"
#include "common/fdio.h"
#include "common/log.h"
#include "common/sqlite_path.h"
#include "common/testenv.h"
#include "common/xalloc.h"

#define V1_FORMAT "sessionizer-checkpoint-1"
#define LOG_MAGIC 0x4c435a53u /* "SZCL" */
#define LOG_VERSION 2u
#define LOG_HEADER 24
#define LOG_SEED 0x6c6f67ull
/* A new snapshot once the logs since the last one exceed what a snapshot of
 * the state would take now (compact_due), and at least this much: the bytes
 * written per visit then stay under about twice the log's, and a restore
 * replays at most about one snapshot's worth of log. */
#define COMPACT_MIN_BYTES ((int64_t)16 << 20)
/* Sealed frames waiting for the writer thread: past this many bytes (or
 * CHECKPOINT_MAX_IN_FLIGHT frames) a commit waits for the disk, so a slow
 * disk slows the job down instead of growing its memory. */
#define WR_MAX_BYTES ((size_t)64 << 20)

typedef struct meta_entry {
    char *key;
    buf val;
} meta_entry;

typedef struct log_file {
    uint64_t start;
    buf data; /* whole file, until restored */
} log_file;

struct checkpoint {
    char *dir;
    int lock_fd, dir_fd, log_fd;
    sqlite3 *v1; /* format 1, read once, then replaced by a snapshot */
    meta_entry *meta;
    size_t n_meta;
    int has_state;
    int need_snapshot; /* the next commit writes a snapshot (new, or upgraded) */
    uint64_t seq;      /* last commit */
    uint64_t snap_seq, log_start;
    int64_t snap_bytes, log_bytes, written;
    uint64_t snap_pages; /* the engine's open pages in the last snapshot (compact_due) */
    /* what checkpoint_restore replays, released after */
    void *snap_map;
    size_t snap_released; /* of snap_map, bytes given back (snap_read) */
    size_t snap_len;
    log_file *logs;
    size_t n_logs;
    changelog_frame frame; /* sealed where it was built, and queued by swapping buffers */
    int64_t compact_min;
    int in_txn;
    /* A compaction's snapshot is made durable off the job thread (fsync,
     * rename, directory fsync, removal of what it replaces): the job
     * appends to the new log meanwhile, and a crash before it is done
     * leaves the old snapshot with logs that still reach every commit. */
    pthread_t bg;
    int bg_running;
    /* The frames' writer thread (group commit): a commit seals its frame and
     * queues it; the thread appends everything queued with one write and one
     * fdatasync, then publishes the last commit number it made durable. The
     * job tells the outside world (Kafka's committed offsets) only about
     * durable commits (checkpoint_durable_seq). Shared under wr_mu: the
     * queue, the counts, the error, the stop flag; log_fd is changed by the
     * job only while the queue is empty and the thread idle. */
    pthread_t wr;
    int wr_running, wr_stop, wr_busy;
    pthread_mutex_t wr_mu;
    pthread_cond_t wr_work, wr_progress;
    buf wr_queue, wr_batch;   /* sealed frames waiting; the batch being written */
    uint64_t wr_queue_seq;    /* last commit in wr_queue */
    uint64_t wr_queue_ticket; /* the gate's ticket wr_queue waits for (0: none) */
    checkpoint_gate_fn gate;
    void *gate_ctx;
    char *gate_err;           /* the gate failed: why (with wr_errno = EIO) */
    size_t wr_queue_frames, wr_batch_frames;
    int wr_errno;             /* a write or fdatasync failed: every later commit fails */
    uint64_t wr_err_log;      /* in that log */
    int wr_delay_ms;          /* tests: the thread waits this long before each batch */
    size_t wr_max_bytes;      /* WR_MAX_BYTES, or less (checkpoint_set_max_queued) */
    _Atomic uint64_t durable;
    atomic_int bg_done;
    int bg_errno, bg_fd;
    char *bg_tmp, *bg_path;
    uint64_t bg_seq;
};

/* ---- messages ---------------------------------------------------------------- */

static int corrupt(checkpoint *cp, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen,
             "checkpoint %s is corrupt (%s). Nothing was changed. Restore the directory from a "
             "backup, or delete it to reprocess the input from the beginning: the replay "
             "rewrites the same rows with the same session ids",
             cp->dir, what);
    return -1;
}

static int newer(checkpoint *cp, const char *file, char *err, size_t errlen)
{
    snprintf(err, errlen,
             "checkpoint %s was written by a newer version of sessionizer (%s has a format this "
             "version does not read; it reads formats 1 and 2). Run that version, or delete the "
             "directory to reprocess the input from the beginning",
             cp->dir, file);
    return -1;
}

static int sys_error(checkpoint *cp, const char *what, const char *file, char *err, size_t errlen)
{
    int e = errno;
    snprintf(err, errlen, "checkpoint %s: %s %s: %s%s", cp->dir, what, file, strerror(e),
             e == ENOSPC || e == EDQUOT
                 ? " (disk full; the last committed checkpoint is intact; free space and restart)"
                 : "");
    return -1;
}

/* ---- named blobs ------------------------------------------------------------- */

static void meta_set(checkpoint *cp, const char *key, size_t klen, const void *val, size_t len)
{
    meta_entry *m = NULL;
    for (size_t i = 0; i < cp->n_meta && !m; i++)
        if (strlen(cp->meta[i].key) == klen && memcmp(cp->meta[i].key, key, klen) == 0)
            m = &cp->meta[i];
    if (!m) {
        cp->meta = xrealloc(cp->meta, (cp->n_meta + 1) * sizeof *cp->meta);
        m = &cp->meta[cp->n_meta++];
        m->key = xmalloc(klen + 1);
        memcpy(m->key, key, klen);
        m->key[klen] = 0;
        buf_init(&m->val);
    }
    buf_reset(&m->val);
    buf_append(&m->val, val, len);
}

static int meta_cb(void *ctx, const char *key, size_t klen, const void *val, size_t len)
{
    meta_set(ctx, key, klen, val, len);
    return 0;
}

/* ---- small file helpers ------------------------------------------------------ */

static char *path_of(const checkpoint *cp, const char *name)
{
    size_t n = strlen(cp->dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", cp->dir, name);
    return p;
}

static int read_file(const char *path, buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    buf_reset(out);
    buf_reserve(out, (size_t)st.st_size);
    for (;;) {
        buf_reserve(out, 65536);
        ssize_t n = read(fd, out->data + out->len, out->cap - out->len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            close(fd);
            return -1;
        }
        if (n == 0) break;
        out->len += (size_t)n;
    }
    close(fd);
    return 0;
}

static void log_header(uint64_t start, unsigned char h[LOG_HEADER])
{
    for (int i = 0; i < 4; i++) h[i] = (unsigned char)(LOG_MAGIC >> (8 * i));
    for (int i = 0; i < 4; i++) h[4 + i] = (unsigned char)(LOG_VERSION >> (8 * i));
    for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)(start >> (8 * i));
    uint64_t sum = XXH3_64bits_withSeed(h, 16, LOG_SEED);
    for (int i = 0; i < 8; i++) h[16 + i] = (unsigned char)(sum >> (8 * i));
}

static uint64_t open_pages(const engine *e)
{
    engine_stats st;
    engine_get_counters(e, &st);
    return st.open_pages;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* ---- format 1 (SQLite) --------------------------------------------------------- */

static int64_t v1_checksum(int64_t key_num, const char *key_str, const void *val, size_t len)
{
    unsigned char k[8];
    for (int i = 0; i < 8; i++) k[i] = (unsigned char)((uint64_t)key_num >> (8 * i));
    uint64_t seed = key_str ? XXH3_64bits(key_str, strlen(key_str)) : XXH3_64bits(k, 8);
    return (int64_t)XXH3_64bits_withSeed(val, len, seed);
}

static int v1_error(checkpoint *cp, const char *what, char *err, size_t errlen)
{
    int code = sqlite3_errcode(cp->v1);
    char why[256];
    snprintf(why, sizeof why, "%s: %s", what, sqlite3_errmsg(cp->v1));
    if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return corrupt(cp, why, err, errlen);
    snprintf(err, errlen, "checkpoint %s: %s", cp->dir, why);
    return -1;
}

/* Opens checkpoint.db, checks it as format 1 did, loads its named blobs. */
static int v1_open(checkpoint *cp, const char *path, char *err, size_t errlen)
{
    if (sqlite3_open_v2(path, &cp->v1, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        return v1_error(cp, "cannot open checkpoint.db", err, errlen);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(cp->v1, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK)
        return v1_error(cp, "integrity check", err, errlen);
    int rc = sqlite3_step(st);
    const char *res = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    if (!res || strcmp(res, "ok") != 0) {
        char why[256];
        snprintf(why, sizeof why, "integrity check: %s", res ? res : sqlite3_errmsg(cp->v1));
        sqlite3_finalize(st);
        return corrupt(cp, why, err, errlen);
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(cp->v1, "SELECT key, value, checksum FROM meta", -1, &st, NULL) !=
        SQLITE_OK)
        return v1_error(cp, "reading", err, errlen);
    int result = 0, format_ok = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        const void *val = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        if (!key || v1_checksum(0, key, val, len) != sqlite3_column_int64(st, 2)) {
            char why[128];
            snprintf(why, sizeof why, "entry '%s' fails its checksum", key ? key : "?");
            result = corrupt(cp, why, err, errlen);
            break;
        }
        if (strcmp(key, "format") == 0) {
            format_ok = len == strlen(V1_FORMAT) && memcmp(val, V1_FORMAT, len) == 0;
            if (!format_ok) {
                result = newer(cp, "checkpoint.db", err, errlen);
                break;
            }
        }
        meta_set(cp, key, strlen(key), val, len);
    }
    if (!result && rc != SQLITE_DONE) result = v1_error(cp, "reading", err, errlen);
    sqlite3_finalize(st);
    cp->has_state = format_ok;
    return result;
}

static int v1_restore(checkpoint *cp, engine *e, char *err, size_t errlen)
{
    buf m;
    buf_init(&m);
    int rc = checkpoint_get(cp, "engine", &m, err, errlen);
    if (rc == 1) rc = engine_load_meta(e, m.data, m.len);
    else if (rc == 0) rc = -1;
    buf_free(&m);
    if (rc == -2) return -2;
    if (rc) return corrupt(cp, "engine state does not decode", err, errlen);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(cp->v1, "SELECT user_id, state, checksum FROM users", -1, &st, NULL) !=
        SQLITE_OK)
        return v1_error(cp, "reading open sessions", err, errlen);
    int result = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t user = sqlite3_column_int64(st, 0);
        const void *val = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        char why[128];
        if (v1_checksum(user, NULL, val, len) != sqlite3_column_int64(st, 2) ||
            engine_load_user(e, &(user_key){.id = user}, val, len)) {
            snprintf(why, sizeof why, "open sessions of user %lld fail their checksum or do not "
                     "decode", (long long)user);
            result = corrupt(cp, why, err, errlen);
            break;
        }
    }
    if (!result && rc != SQLITE_DONE) result = v1_error(cp, "reading open sessions", err, errlen);
    sqlite3_finalize(st);
    return result;
}

/* ---- format 2: reading --------------------------------------------------------- */

/* Checks one log's frames (commit numbers consecutive from *seq + 1), merges
 * their named blobs. A bad frame with nothing valid after it, in the newest
 * log, is a commit cut short: the log is cut back to the frame before. */
static int scan_log(checkpoint *cp, log_file *lf, const char *name, int newest, char *err,
                    size_t errlen)
{
    unsigned char h[LOG_HEADER];
    if (lf->data.len < LOG_HEADER) {
        if (!newest) return corrupt(cp, "a log is cut short", err, errlen);
        /* created but its header not yet written when the crash came */
        lf->data.len = 0;
        return 0;
    }
    log_header(lf->start, h);
    if (memcmp(lf->data.data, h, 4) == 0 && load_u32le(lf->data.data + 4) > LOG_VERSION)
        return newer(cp, name, err, errlen);
    if (memcmp(lf->data.data, h, LOG_HEADER) != 0) {
        char why[128];
        snprintf(why, sizeof why, "%s has a damaged header", name);
        return corrupt(cp, why, err, errlen);
    }
    size_t at = LOG_HEADER;
    while (at < lf->data.len) {
        changelog_view v;
        int rc = changelog_parse(lf->data.data + at, lf->data.len - at, &v);
        if (rc == 1 && v.seq != cp->seq + 1) rc = -1;
        if (rc == 1) {
            changelog_foreach_meta(&v, meta_cb, cp);
            cp->seq = v.seq;
            at += v.frame_len;
            continue;
        }
        /* Is there a valid frame after this one? Then it is damage, not a
         * torn write (which can only be the last frame). */
        int damage = !newest;
        const unsigned char *p = lf->data.data + at;
        if (!damage && lf->data.len - at >= CHANGELOG_FRAME_HEADER &&
            load_u32le(p) == load_u32le((const unsigned char *)"SZCF")) {
            size_t end = at + CHANGELOG_FRAME_HEADER + load_u32le(p + 4);
            changelog_view next;
            damage = end < lf->data.len &&
                     changelog_parse(lf->data.data + end, lf->data.len - end, &next) == 1;
        }
        if (damage) {
            char why[160];
            snprintf(why, sizeof why, "commit %" PRIu64 " in %s fails its checksum", cp->seq + 1,
                     name);
            return corrupt(cp, why, err, errlen);
        }
        log_warn("checkpoint", "%s: the last commit was cut short by a crash (%zu bytes at the "
                 "end of %s); resuming from the commit before it", cp->dir, lf->data.len - at,
                 name);
        lf->data.len = at;
        char *path = path_of(cp, name);
        int ok = truncate(path, (off_t)at) == 0;
        if (!ok) sys_error(cp, "cannot truncate", path, err, errlen);
        free(path);
        return ok ? 0 : -1;
    }
    return 0;
}

static int open_log_for_append(checkpoint *cp, uint64_t start, int create, char *err,
                               size_t errlen)
{
    char name[64];
    snprintf(name, sizeof name, "log-%016" PRIx64, start);
    char *path = path_of(cp, name);
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0644);
    int rc = 0;
    if (fd < 0) {
        rc = sys_error(cp, "cannot open", path, err, errlen);
    } else if (create) {
        unsigned char h[LOG_HEADER];
        log_header(start, h);
        if (fd_write_all(fd, h, sizeof h, FDIO_APPEND) || fdatasync(fd) || fsync(cp->dir_fd))
            rc = sys_error(cp, "cannot write", path, err, errlen);
        cp->log_bytes = LOG_HEADER;
        cp->written += LOG_HEADER;
    } else {
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_size < LOG_HEADER) { /* header never written */
            unsigned char h[LOG_HEADER];
            log_header(start, h);
            if (ftruncate(fd, 0) || fd_write_all(fd, h, sizeof h, FDIO_APPEND) || fdatasync(fd))
                rc = sys_error(cp, "cannot write", path, err, errlen);
        }
    }
    free(path);
    if (rc) {
        if (fd >= 0) close(fd);
        return -1;
    }
    if (cp->log_fd >= 0) close(cp->log_fd);
    cp->log_fd = fd;
    cp->log_start = start;
    return 0;
}

/* Deletes files that the snapshot of commit keep made obsolete. */
static void remove_older(checkpoint *cp, uint64_t keep)
{
    DIR *d = opendir(cp->dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t n;
        char tail;
        int old = (sscanf(de->d_name, "snapshot-%16" SCNx64 "%c", &n, &tail) == 1 ||
                   sscanf(de->d_name, "log-%16" SCNx64 "%c", &n, &tail) == 1) && n < keep;
        if (old || strcmp(de->d_name, "checkpoint.db") == 0 ||
            strcmp(de->d_name, "checkpoint.db-wal") == 0 ||
            strcmp(de->d_name, "checkpoint.db-shm") == 0)
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
    fsync(cp->dir_fd);
}

/* With a snapshot (n_snaps > 0), or from the empty state that log 0
 * starts from. */
static int open_v2(checkpoint *cp, uint64_t *snaps, size_t n_snaps, uint64_t *logs,
                   size_t n_logs, char *err, size_t errlen)
{
    if (n_snaps > 1) qsort(snaps, n_snaps, sizeof *snaps, cmp_u64);
    if (n_logs > 1) qsort(logs, n_logs, sizeof *logs, cmp_u64);
    uint64_t s = 0;
    char name[64];
    char *path;
    int rc = 0;
    if (n_snaps > 0) {
        s = snaps[n_snaps - 1];
        snprintf(name, sizeof name, "snapshot-%016" PRIx64, s);
        path = path_of(cp, name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            rc = sys_error(cp, "cannot read", path, err, errlen);
        } else if (st.st_size > 0) {
            cp->snap_len = (size_t)st.st_size;
            cp->snap_map = mmap(NULL, cp->snap_len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (cp->snap_map == MAP_FAILED) {
                cp->snap_map = NULL;
                rc = sys_error(cp, "cannot read", path, err, errlen);
            }
        }
        if (fd >= 0) close(fd);
        free(path);
        if (rc) return -1;
        uint64_t seq = 0;
        rc = changelog_snapshot_meta(cp->snap_map, cp->snap_len, &seq, meta_cb, cp);
        if (rc == -3) return newer(cp, name, err, errlen);
        if (rc || seq != s) return corrupt(cp, "the snapshot is damaged", err, errlen);
    } else if (logs[0] != 0) {
        return corrupt(cp, "its snapshot is missing", err, errlen);
    }
    cp->snap_seq = cp->seq = s;
    cp->snap_bytes = (int64_t)cp->snap_len;
    /* the logs from the snapshot's on, each starting where the previous ended */
    size_t first = 0;
    while (first < n_logs && logs[first] < s) first++;
    for (size_t i = first; i < n_logs; i++) {
        snprintf(name, sizeof name, "log-%016" PRIx64, logs[i]);
        if (logs[i] != cp->seq) {
            char why[128];
            snprintf(why, sizeof why, "%s does not follow commit %" PRIu64, name, cp->seq);
            return corrupt(cp, why, err, errlen);
        }
        cp->logs = xrealloc(cp->logs, (cp->n_logs + 1) * sizeof *cp->logs);
        log_file *lf = &cp->logs[cp->n_logs++];
        lf->start = logs[i];
        buf_init(&lf->data);
        path = path_of(cp, name);
        if (read_file(path, &lf->data)) rc = sys_error(cp, "cannot read", path, err, errlen);
        free(path);
        if (rc || scan_log(cp, lf, name, i + 1 == n_logs, err, errlen)) return -1;
        cp->log_bytes += (int64_t)lf->data.len;
    }
    cp->has_state = cp->seq > 0;
    remove_older(cp, s);
    if (cp->n_logs == 0) return open_log_for_append(cp, s, 1, err, errlen);
    return open_log_for_append(cp, cp->logs[cp->n_logs - 1].start, 0, err, errlen);
}

checkpoint *checkpoint_open(const char *dir, char *err, size_t errlen)
{
    /* A format-1 checkpoint.db is opened by SQLite, which would read such a
     * name as a URI: its database would not be in the locked directory. */
    if (sqlite_path_is_uri(dir)) {
        snprintf(err, errlen, "checkpoint directory '%s' would be read by SQLite as a URI: its "
                 "database would not be in that directory. Write --checkpoint ./%s for a "
                 "directory of that name", dir, dir);
        return NULL;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create checkpoint directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    checkpoint *cp = xcalloc(1, sizeof *cp);
    cp->dir = xstrdup(dir);
    cp->log_fd = cp->dir_fd = -1;
    /* for tests that need a snapshot from a small log */
    long long min = testenv_positive(TESTENV_SNAPSHOT_MIN_BYTES);
    cp->compact_min = min ? min : COMPACT_MIN_BYTES;
    changelog_frame_init(&cp->frame);
    buf_init(&cp->wr_queue);
    buf_init(&cp->wr_batch);
    pthread_mutex_init(&cp->wr_mu, NULL);
    pthread_cond_init(&cp->wr_work, NULL);
    pthread_cond_init(&cp->wr_progress, NULL);
    cp->wr_delay_ms = (int)testenv_positive(TESTENV_SYNC_DELAY_MS);
    cp->wr_max_bytes = WR_MAX_BYTES;
    char *lock_path = path_of(cp, "lock");
    cp->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(lock_path);
    uint64_t *snaps = NULL, *logs = NULL;
    size_t n_snaps = 0, n_logs = 0;
    int has_v1 = 0;
    if (cp->lock_fd < 0) {
        snprintf(err, errlen, "cannot open checkpoint directory '%s': %s", dir, strerror(errno));
        goto fail;
    }
    if (flock(cp->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "checkpoint directory '%s' is in use by another sessionizer "
                 "process", dir);
        goto fail;
    }
    cp->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = cp->dir_fd >= 0 ? opendir(dir) : NULL;
    if (!d) {
        snprintf(err, errlen, "cannot read checkpoint directory '%s': %s", dir, strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t n;
        char tail;
        size_t len = strlen(de->d_name);
        if (len > 4 && strcmp(de->d_name + len - 4, ".tmp") == 0) {
            unlinkat(dirfd(d), de->d_name, 0); /* a snapshot a crash interrupted */
        } else if (sscanf(de->d_name, "snapshot-%16" SCNx64 "%c", &n, &tail) == 1) {
            snaps = xrealloc(snaps, (n_snaps + 1) * sizeof *snaps);
            snaps[n_snaps++] = n;
        } else if (sscanf(de->d_name, "log-%16" SCNx64 "%c", &n, &tail) == 1) {
            logs = xrealloc(logs, (n_logs + 1) * sizeof *logs);
            logs[n_logs++] = n;
        } else if (strcmp(de->d_name, "checkpoint.db") == 0) {
            has_v1 = 1;
        }
    }
    closedir(d);
    int rc;
    if (n_snaps > 0 || n_logs > 0) {
        rc = open_v2(cp, snaps, n_snaps, logs, n_logs, err, errlen);
    } else if (has_v1) {
        char *db = path_of(cp, "checkpoint.db");
        rc = v1_open(cp, db, err, errlen);
        free(db);
        cp->need_snapshot = 1;
    } else {
        /* a new checkpoint: the log of the empty state (which also finds out
         * now, not at the first commit, that the directory is not writable) */
        rc = open_log_for_append(cp, 0, 1, err, errlen);
    }
    free(snaps);
    free(logs);
    snaps = logs = NULL;
    if (rc) goto fail;
    atomic_store(&cp->durable, cp->seq);
    return cp;
fail:
    free(snaps);
    free(logs);
    checkpoint_close(cp);
    return NULL;
}

static int bg_collect(checkpoint *cp, int wait, char *err, size_t errlen);
static void wr_stop(checkpoint *cp);

static void release_restore_data(checkpoint *cp)
{
    if (cp->snap_map) munmap(cp->snap_map, cp->snap_len);
    cp->snap_map = NULL;
    for (size_t i = 0; i < cp->n_logs; i++) buf_free(&cp->logs[i].data);
    free(cp->logs);
    cp->logs = NULL;
    cp->n_logs = 0;
}

void checkpoint_close(checkpoint *cp)
{
    if (!cp) return;
    char ignored[256]; /* sized for the message, which -O3 checks even if unread */
    wr_stop(cp); /* writes what is queued first */
    bg_collect(cp, 1, ignored, sizeof ignored); /* a failure only leaves the old snapshot */
    release_restore_data(cp);
    if (cp->v1) sqlite3_close(cp->v1);
    for (size_t i = 0; i < cp->n_meta; i++) {
        free(cp->meta[i].key);
        buf_free(&cp->meta[i].val);
    }
    free(cp->meta);
    changelog_frame_free(&cp->frame);
    buf_free(&cp->wr_queue);
    buf_free(&cp->wr_batch);
    pthread_mutex_destroy(&cp->wr_mu);
    pthread_cond_destroy(&cp->wr_work);
    pthread_cond_destroy(&cp->wr_progress);
    if (cp->log_fd >= 0) close(cp->log_fd);
    if (cp->dir_fd >= 0) close(cp->dir_fd);
    if (cp->lock_fd >= 0) close(cp->lock_fd);
    free(cp->dir);
    free(cp->gate_err);
    free(cp);
}

int checkpoint_has_state(checkpoint *cp) { return cp->has_state; }

int checkpoint_get(checkpoint *cp, const char *key, buf *out, char *err, size_t errlen)
{
    (void)err, (void)errlen; /* every blob was checked when the checkpoint was opened */
    for (size_t i = 0; i < cp->n_meta; i++)
        if (strcmp(cp->meta[i].key, key) == 0) {
            buf_reset(out);
            buf_append(out, cp->meta[i].val.data, cp->meta[i].val.len);
            return 1;
        }
    return 0;
}

/* The snapshot's pages read so far leave the job's resident memory (the
 * file stays in the page cache): a restore under --memory-limit had the
 * whole mapped snapshot resident beside the state it rebuilt (the long
 * shape's 26 MB at a 36 MiB limit peaked at 58 MiB). */
static void snap_read(void *ctx, size_t n)
{
    checkpoint *cp = ctx;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), done = n / page * page;
    if (done > cp->snap_released) {
        madvise((char *)cp->snap_map + cp->snap_released, done - cp->snap_released, MADV_DONTNEED);
        cp->snap_released = done;
    }
}

int checkpoint_restore(checkpoint *cp, engine *e, char *err, size_t errlen)
{
    int rc = 0;
    if (cp->v1) {
        rc = v1_restore(cp, e, err, errlen);
        sqlite3_close(cp->v1);
        cp->v1 = NULL;
        /* format 1's own entries: the snapshot that replaces it has neither */
        for (size_t i = 0; i < cp->n_meta;) {
            if (strcmp(cp->meta[i].key, "engine") && strcmp(cp->meta[i].key, "format")) {
                i++;
                continue;
            }
            free(cp->meta[i].key);
            buf_free(&cp->meta[i].val);
            cp->meta[i] = cp->meta[--cp->n_meta];
        }
        return rc;
    }
    uint64_t seq;
    if (cp->snap_map) { /* else the logs start from the empty state */
        rc = changelog_load_snapshot(e, cp->snap_map, cp->snap_len, &seq, NULL, snap_read, cp);
        cp->snap_pages = open_pages(e);
    }
    if (rc == -1) rc = corrupt(cp, "the snapshot's open sessions do not decode", err, errlen);
    for (size_t i = 0; i < cp->n_logs && !rc; i++) {
        size_t at = LOG_HEADER;
        while (at < cp->logs[i].data.len && !rc) {
            changelog_view v;
            if (changelog_parse(cp->logs[i].data.data + at, cp->logs[i].data.len - at, &v) != 1)
                return corrupt(cp, "a log changed while it was read", err, errlen);
            rc = changelog_replay(e, &v);
            if (rc == -1) {
                char why[160];
                snprintf(why, sizeof why, "commit %" PRIu64 " does not replay to its recorded "
                         "state", v.seq);
                rc = corrupt(cp, why, err, errlen);
            }
            at += v.frame_len;
        }
    }
    release_restore_data(cp);
    return rc;
}

/* ---- format 2: writing --------------------------------------------------------- */

/* Whether the logs since the last snapshot have outgrown a snapshot of the
 * state now: its size estimated from the last one's bytes per open page (a
 * snapshot's bytes follow its pages: each is a fixed header and its text,
 * and a session's header is shared by its pages), at most twice the last
 * one's (a small snapshot's fixed part, its named blobs and watermarks,
 * would inflate its bytes per page). Compared with the last snapshot's own
 * size, a growing state was compacted against a smaller, older one: the
 * long-session bench file (a state growing to 36 MB over 50 MB of log)
 * wrote two snapshots instead of one, each ~4% of the durable run's time
 * (docs/performance.md). A restore still replays at most about one
 * snapshot's worth of log: a snapshot of the state it restores. */
static int compact_due(const checkpoint *cp, const engine *e)
{
    int64_t est = cp->snap_bytes;
    if (cp->snap_pages > 0) {
        double per_page = (double)cp->snap_bytes / (double)cp->snap_pages;
        double now = per_page * (double)open_pages(e);
        est = now < 2.0 * (double)cp->snap_bytes ? (int64_t)now : 2 * cp->snap_bytes;
    }
    int64_t limit = est > cp->compact_min ? est : cp->compact_min;
    return cp->log_bytes > limit;
}

void checkpoint_log_visit(checkpoint *cp, const visit *v) { changelog_add_visit(&cp->frame, v); }
void checkpoint_log_close_all(checkpoint *cp) { changelog_add_close_all(&cp->frame); }

int checkpoint_begin(checkpoint *cp, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    buf_reset(&cp->frame.meta);
    cp->frame.n_meta = 0;
    cp->in_txn = 1;
    return 0;
}

int checkpoint_put(checkpoint *cp, const char *key, const void *val, size_t len, char *err,
                   size_t errlen)
{
    (void)err, (void)errlen;
    changelog_add_meta(&cp->frame, key, val, len);
    meta_set(cp, key, strlen(key), val, len);
    return 0;
}

typedef struct snap_out {
    int fd;
    int64_t bytes;
} snap_out;

static int snap_write(void *ctx, const void *data, size_t len)
{
    snap_out *o = ctx;
    o->bytes += (int64_t)len;
    return fd_write_all(o->fd, data, len, FDIO_APPEND);
}

static void remove_older(checkpoint *cp, uint64_t keep);

static void *bg_finish_snapshot(void *arg)
{
    checkpoint *cp = arg;
    int e = 0;
    if (fsync(cp->bg_fd) || rename(cp->bg_tmp, cp->bg_path) || fsync(cp->dir_fd)) e = errno;
    close(cp->bg_fd);
    if (e) unlink(cp->bg_tmp);
    else remove_older(cp, cp->bg_seq);
    cp->bg_errno = e;
    atomic_store(&cp->bg_done, 1);
    return NULL;
}

/* Joins a finished (or, with wait, any) background snapshot: 0, or -1 with
 * err set if it failed. Returns 1 if one is still running. */
static int bg_collect(checkpoint *cp, int wait, char *err, size_t errlen)
{
    if (!cp->bg_running) return 0;
    if (!wait && !atomic_load(&cp->bg_done)) return 1;
    pthread_join(cp->bg, NULL);
    cp->bg_running = 0;
    int rc = 0;
    if (cp->bg_errno) {
        errno = cp->bg_errno;
        rc = sys_error(cp, "cannot write", cp->bg_tmp, err, errlen);
    }
    free(cp->bg_tmp);
    free(cp->bg_path);
    cp->bg_tmp = cp->bg_path = NULL;
    return rc;
}

/* Writes the state after commit seq as a snapshot, starts its log, deletes
 * what it replaces; in_background: the fsyncs and the deletion happen on
 * another thread, and the snapshot is encoded while the writer still
 * appends the frames up to seq to the old log (the new log starts once they
 * are durable there). */
static int write_snapshot(checkpoint *cp, const engine *e, uint64_t seq, int in_background,
                          char *err, size_t errlen)
{
    changelog_frame all;
    changelog_frame_init(&all);
    for (size_t i = 0; i < cp->n_meta; i++)
        changelog_add_meta(&all, cp->meta[i].key, cp->meta[i].val.data, cp->meta[i].val.len);
    char name[64], tmpname[80];
    snprintf(name, sizeof name, "snapshot-%016" PRIx64, seq);
    snprintf(tmpname, sizeof tmpname, "%s.tmp", name);
    char *path = path_of(cp, name), *tmp = path_of(cp, tmpname);
    snap_out o = {.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    int rc = o.fd < 0 ? -1 : changelog_snapshot(e, seq, &all.meta, all.n_meta, snap_write, &o);
    changelog_frame_free(&all);
    if (!rc && in_background) {
        /* the new log first: the frames after seq go there from now on (and
         * the writer is idle while log_fd changes) */
        if (checkpoint_sync(cp, err, errlen) || open_log_for_append(cp, seq, 1, err, errlen)) {
            close(o.fd);
            unlink(tmp);
            free(path);
            free(tmp);
            return -1;
        }
        cp->written += o.bytes;
        cp->snap_bytes = o.bytes;
        cp->snap_pages = open_pages(e);
        cp->snap_seq = seq;
        cp->bg_fd = o.fd;
        cp->bg_tmp = tmp;
        cp->bg_path = path;
        cp->bg_seq = seq;
        atomic_store(&cp->bg_done, 0);
        if (job_thread_start(&cp->bg, bg_finish_snapshot, cp) == 0) {
            cp->bg_running = 1;
            return 0;
        }
        bg_finish_snapshot(cp); /* no thread: do it here */
        rc = cp->bg_errno ? -1 : 0;
        if (rc) {
            errno = cp->bg_errno;
            sys_error(cp, "cannot write", tmp, err, errlen);
        }
        free(tmp);
        free(path);
        cp->bg_tmp = cp->bg_path = NULL;
        return rc;
    }
    if (rc || fsync(o.fd) || rename(tmp, path) || fsync(cp->dir_fd)) {
        rc = sys_error(cp, "cannot write", tmp, err, errlen);
        unlink(tmp);
    }
    if (o.fd >= 0) close(o.fd);
    free(path);
    free(tmp);
    if (rc) return -1;
    cp->written += o.bytes;
    cp->snap_bytes = o.bytes;
    cp->snap_pages = open_pages(e);
    cp->snap_seq = seq;
    if (open_log_for_append(cp, seq, 1, err, errlen)) return -1;
    remove_older(cp, seq);
    return 0;
}

/* ---- the writer thread ---------------------------------------------------------- */

static int write_failed(checkpoint *cp, int e, uint64_t log_start, char *err, size_t errlen)
{
    if (cp->gate_err) { /* what the commit counted on failed, not the disk */
        snprintf(err, errlen, "%s", cp->gate_err);
        return -1;
    }
    char name[64];
    snprintf(name, sizeof name, "log-%016" PRIx64, log_start);
    errno = e;
    return sys_error(cp, "cannot write", name, err, errlen);
}

static void *wr_main(void *arg)
{
    checkpoint *cp = arg;
    pthread_mutex_lock(&cp->wr_mu);
    for (;;) {
        while (cp->wr_queue.len == 0 && !cp->wr_stop) pthread_cond_wait(&cp->wr_work, &cp->wr_mu);
        if (cp->wr_queue.len == 0) break; /* stopped, and everything is written */
        buf t = cp->wr_batch;
        cp->wr_batch = cp->wr_queue;
        cp->wr_queue = t;
        cp->wr_batch_frames = cp->wr_queue_frames;
        cp->wr_queue_frames = 0;
        uint64_t seq = cp->wr_queue_seq, log_start = cp->log_start;
        uint64_t ticket = cp->wr_queue_ticket;
        cp->wr_queue_ticket = 0;
        int fd = cp->log_fd;
        cp->wr_busy = 1;
        pthread_mutex_unlock(&cp->wr_mu);
        if (cp->wr_delay_ms > 0) nanosleep(&(struct timespec){cp->wr_delay_ms / 1000,
                                                              cp->wr_delay_ms % 1000 * 1000000L}, NULL);
        int e = 0;
        char why[1024];
        if (ticket && cp->gate(cp->gate_ctx, ticket, why, sizeof why)) {
            cp->gate_err = xstrdup(why); /* read by others only once wr_errno is set */
            e = EIO;
        } else if (fd_write_all(fd, cp->wr_batch.data, cp->wr_batch.len, FDIO_APPEND) ||
                   fdatasync(fd)) {
            e = errno ? errno : EIO;
        }
        buf_reset(&cp->wr_batch);
        pthread_mutex_lock(&cp->wr_mu);
        cp->wr_busy = 0;
        cp->wr_batch_frames = 0;
        if (e) {
            /* Nothing more goes after a frame that may be torn: a restart
             * drops a torn last frame, but would call one followed by
             * another damage. */
            cp->wr_errno = e;
            cp->wr_err_log = log_start;
            buf_reset(&cp->wr_queue);
            cp->wr_queue_frames = 0;
            pthread_cond_broadcast(&cp->wr_progress);
            break;
        }
        atomic_store(&cp->durable, seq);
        pthread_cond_broadcast(&cp->wr_progress);
    }
    pthread_mutex_unlock(&cp->wr_mu);
    return NULL;
}

static void wr_stop(checkpoint *cp)
{
    if (!cp->wr_running) return;
    pthread_mutex_lock(&cp->wr_mu);
    cp->wr_stop = 1;
    pthread_cond_signal(&cp->wr_work);
    pthread_mutex_unlock(&cp->wr_mu);
    pthread_join(cp->wr, NULL);
    cp->wr_running = 0;
}

/* Queues the sealed frame in cp->frame.events (commit seq) for the writer;
 * waits only while the queue is full. Without a thread, writes it here. */
static int wr_enqueue(checkpoint *cp, uint64_t seq, uint64_t ticket, char *err, size_t errlen)
{
    buf *out = &cp->frame.events;
    if (!cp->wr_running && !cp->wr_errno && !cp->wr_stop &&
        job_thread_start(&cp->wr, wr_main, cp) == 0)
        cp->wr_running = 1;
    if (!cp->wr_running) {
        if (cp->wr_errno) return write_failed(cp, cp->wr_errno, cp->wr_err_log, err, errlen);
        if (ticket && cp->gate(cp->gate_ctx, ticket, err, errlen)) {
            cp->gate_err = xstrdup(err);
            cp->wr_errno = EIO;
            return -1;
        }
        if (fd_write_all(cp->log_fd, out->data, out->len, FDIO_APPEND) || fdatasync(cp->log_fd)) {
            cp->wr_errno = errno;
            cp->wr_err_log = cp->log_start;
            return write_failed(cp, cp->wr_errno, cp->log_start, err, errlen);
        }
        atomic_store(&cp->durable, seq);
        return 0;
    }
    pthread_mutex_lock(&cp->wr_mu);
    while (!cp->wr_errno &&
           ((cp->wr_queue.len > 0 && cp->wr_queue.len + out->len > cp->wr_max_bytes) ||
            cp->wr_queue_frames + cp->wr_batch_frames >= CHECKPOINT_MAX_IN_FLIGHT))
        pthread_cond_wait(&cp->wr_progress, &cp->wr_mu);
    int e = cp->wr_errno;
    if (!e) {
        if (cp->wr_queue.len == 0) { /* the writer keeps up: no copy */
            buf t = cp->wr_queue;
            cp->wr_queue = *out;
            *out = t;
        } else {
            buf_append(&cp->wr_queue, out->data, out->len);
        }
        cp->wr_queue_seq = seq;
        if (ticket) cp->wr_queue_ticket = ticket; /* the later ticket covers the earlier */
        cp->wr_queue_frames++;
        pthread_cond_signal(&cp->wr_work);
    }
    pthread_mutex_unlock(&cp->wr_mu);
    return e ? write_failed(cp, e, cp->wr_err_log, err, errlen) : 0;
}

void checkpoint_set_max_queued(checkpoint *cp, size_t bytes)
{
    cp->wr_max_bytes = bytes < WR_MAX_BYTES ? bytes : WR_MAX_BYTES;
}

int checkpoint_sync(checkpoint *cp, char *err, size_t errlen)
{
    if (!cp->wr_running)
        return cp->wr_errno ? write_failed(cp, cp->wr_errno, cp->wr_err_log, err, errlen) : 0;
    pthread_mutex_lock(&cp->wr_mu);
    while ((cp->wr_queue.len > 0 || cp->wr_busy) && !cp->wr_errno)
        pthread_cond_wait(&cp->wr_progress, &cp->wr_mu);
    int e = cp->wr_errno;
    pthread_mutex_unlock(&cp->wr_mu);
    return e ? write_failed(cp, e, cp->wr_err_log, err, errlen) : 0;
}

uint64_t checkpoint_seq(const checkpoint *cp) { return cp->seq; }

uint64_t checkpoint_durable_seq(checkpoint *cp) { return atomic_load(&cp->durable); }

void checkpoint_set_gate(checkpoint *cp, checkpoint_gate_fn gate, void *ctx)
{
    assert(!cp->wr_running); /* the writer reads them unlocked */
    cp->gate = gate;
    cp->gate_ctx = ctx;
}

int checkpoint_commit(checkpoint *cp, const engine *e, uint64_t ticket, char *err, size_t errlen)
{
    assert(!ticket || cp->gate);
    uint64_t seq = cp->seq + 1;
    int busy = bg_collect(cp, 0, err, errlen);
    if (busy < 0) return -1;
    if (cp->need_snapshot) {
        /* the first commit after a format-1 restore: written here, whole,
         * once what it counts on is durable */
        if (checkpoint_sync(cp, err, errlen) || (ticket && cp->gate(cp->gate_ctx, ticket, err, errlen)) ||
            write_snapshot(cp, e, seq, 0, err, errlen))
            return -1;
        cp->need_snapshot = 0;
        atomic_store(&cp->durable, seq);
    } else {
        changelog_seal_in_place(&cp->frame, seq, e);
        cp->log_bytes += (int64_t)cp->frame.events.len;
        cp->written += (int64_t)cp->frame.events.len;
        int queued = wr_enqueue(cp, seq, ticket, err, errlen);
        changelog_frame_reset(&cp->frame); /* its buffer may be the writer's now */
        if (queued) return -1;
        /* A compaction starts a new log: the frames up to seq go to the old
         * one first (write_snapshot waits for them). */
        if (!busy && compact_due(cp, e) && write_snapshot(cp, e, seq, 1, err, errlen)) return -1;
    }
    cp->seq = seq;
    cp->has_state = 1;
    changelog_frame_reset(&cp->frame);
    cp->in_txn = 0;
    return 0;
}

void checkpoint_abort(checkpoint *cp)
{
    /* Nothing reached the disk that a restore would take: an unsealed frame
     * is only in memory, and a partly written one is a torn tail. */
    cp->in_txn = 0;
}

int64_t checkpoint_disk_bytes(checkpoint *cp) { return cp->snap_bytes + cp->log_bytes; }

int64_t checkpoint_bytes_written(checkpoint *cp) { return cp->written; }
