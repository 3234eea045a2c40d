/*
 * checkpoint.c - SQLite-backed checkpoint store (see checkpoint.h).
 */
#include "checkpoint/checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/sqlite_path.h"
#include "common/xalloc.h"

#define FORMAT_VERSION "sessionizer-checkpoint-1"

struct checkpoint {
    char *dir;
    char *db_path;
    int lock_fd;
    sqlite3 *db;
    sqlite3_stmt *put_meta, *put_user, *del_user;
    int in_txn;
};

/* XXH3 of the value, seeded with a hash of the row's key, so that a value
 * moved to another key does not verify either. */
static int64_t row_checksum(int64_t key_num, const char *key_str, const void *val, size_t len)
{
    unsigned char k[8];
    for (int i = 0; i < 8; i++) k[i] = (unsigned char)((uint64_t)key_num >> (8 * i));
    uint64_t seed = key_str ? XXH3_64bits(key_str, strlen(key_str)) : XXH3_64bits(k, 8);
    return (int64_t)XXH3_64bits_withSeed(val, len, seed);
}

static int corrupt(checkpoint *cp, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen,
             "checkpoint %s is corrupt (%s). Nothing was changed. Restore the directory from a "
             "backup, or delete it to reprocess the input from the beginning: the replay "
             "rewrites the same rows with the same session ids",
             cp->dir, what);
    return -1;
}

static int db_error(checkpoint *cp, const char *what, char *err, size_t errlen)
{
    int code = sqlite3_errcode(cp->db);
    if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) {
        char why[256];
        snprintf(why, sizeof why, "%s: %s", what, sqlite3_errmsg(cp->db));
        return corrupt(cp, why, err, errlen);
    }
    snprintf(err, errlen, "checkpoint %s: %s: %s%s", cp->dir, what, sqlite3_errmsg(cp->db),
             code == SQLITE_FULL ? " (the last committed checkpoint is intact; free space and "
                                   "restart)"
                                 : "");
    return -1;
}

checkpoint *checkpoint_open(const char *dir, char *err, size_t errlen)
{
    /* The lock file and checkpoint.db must be in the same directory, or a
     * second job gets past the lock. */
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
    size_t n = strlen(dir) + 32;
    cp->db_path = xmalloc(n);
    char *lock_path = xmalloc(n);
    snprintf(cp->db_path, n, "%s/checkpoint.db", dir);
    snprintf(lock_path, n, "%s/lock", dir);
    cp->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(lock_path);
    if (cp->lock_fd < 0) {
        snprintf(err, errlen, "cannot open checkpoint directory '%s': %s", dir, strerror(errno));
        goto fail;
    }
    if (flock(cp->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "checkpoint directory '%s' is in use by another sessionizer "
                 "process", dir);
        goto fail;
    }
    if (sqlite3_open_v2(cp->db_path, &cp->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        db_error(cp, "cannot open checkpoint.db", err, errlen);
        goto fail;
    }
    char *msg = NULL;
    if (sqlite3_exec(cp->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     /* a large commit leaves the WAL at its peak size otherwise */
                     "PRAGMA journal_size_limit=67108864;"
                     "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
                     " checksum INTEGER NOT NULL) WITHOUT ROWID;"
                     "CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY,"
                     " state BLOB NOT NULL, checksum INTEGER NOT NULL);",
                     NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_free(msg);
        db_error(cp, "cannot initialise checkpoint.db", err, errlen);
        goto fail;
    }
    sqlite3_stmt *qc;
    if (sqlite3_prepare_v2(cp->db, "PRAGMA quick_check", -1, &qc, NULL) != SQLITE_OK) {
        db_error(cp, "integrity check", err, errlen);
        goto fail;
    }
    int rc = sqlite3_step(qc);
    const char *res = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(qc, 0) : NULL;
    if (!res || strcmp(res, "ok") != 0) {
        char why[256];
        snprintf(why, sizeof why, "integrity check: %s", res ? res : sqlite3_errmsg(cp->db));
        sqlite3_finalize(qc);
        corrupt(cp, why, err, errlen);
        goto fail;
    }
    sqlite3_finalize(qc);
    if (sqlite3_prepare_v2(cp->db, "INSERT OR REPLACE INTO meta VALUES (?1, ?2, ?3)", -1,
                           &cp->put_meta, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(cp->db, "INSERT OR REPLACE INTO users VALUES (?1, ?2, ?3)", -1,
                           &cp->put_user, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(cp->db, "DELETE FROM users WHERE user_id = ?1", -1, &cp->del_user,
                           NULL) != SQLITE_OK) {
        db_error(cp, "preparing statements", err, errlen);
        goto fail;
    }
    /* Refuse a checkpoint of another format before anything reads it. */
    buf v;
    buf_init(&v);
    int got = checkpoint_get(cp, "format", &v, err, errlen);
    int ok = got == 0 || (got == 1 && v.len == strlen(FORMAT_VERSION) &&
                          memcmp(v.data, FORMAT_VERSION, v.len) == 0);
    if (got == 1 && !ok)
        snprintf(err, errlen, "checkpoint %s was written by an incompatible version of "
                 "sessionizer (format '%.*s', this version reads '%s'). Run the version that "
                 "wrote it, or delete the directory to reprocess the input from the beginning",
                 dir, (int)(v.len > 64 ? 64 : v.len), (const char *)v.data, FORMAT_VERSION);
    buf_free(&v);
    if (got < 0 || !ok) goto fail;
    return cp;
fail:
    checkpoint_close(cp);
    return NULL;
}

void checkpoint_close(checkpoint *cp)
{
    if (!cp) return;
    if (cp->in_txn) checkpoint_abort(cp);
    sqlite3_finalize(cp->put_meta);
    sqlite3_finalize(cp->put_user);
    sqlite3_finalize(cp->del_user);
    if (cp->db) sqlite3_close(cp->db);
    if (cp->lock_fd >= 0) close(cp->lock_fd);
    free(cp->db_path);
    free(cp->dir);
    free(cp);
}

int checkpoint_has_state(checkpoint *cp)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(cp->db, "SELECT 1 FROM meta WHERE key = 'format'", -1, &st, NULL) !=
        SQLITE_OK)
        return 0;
    int has = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return has;
}

int checkpoint_get(checkpoint *cp, const char *key, buf *out, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(cp->db, "SELECT value, checksum FROM meta WHERE key = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return db_error(cp, "reading", err, errlen);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), result = 0;
    if (rc == SQLITE_ROW) {
        const void *val = sqlite3_column_blob(st, 0);
        size_t len = (size_t)sqlite3_column_bytes(st, 0);
        if (row_checksum(0, key, val, len) != sqlite3_column_int64(st, 1)) {
            char why[128];
            snprintf(why, sizeof why, "entry '%s' fails its checksum", key);
            result = corrupt(cp, why, err, errlen);
        } else {
            buf_reset(out);
            buf_append(out, val, len);
            result = 1;
        }
    } else if (rc != SQLITE_DONE) {
        result = db_error(cp, "reading", err, errlen);
    }
    sqlite3_finalize(st);
    return result;
}

int checkpoint_load_users(checkpoint *cp, checkpoint_user_fn fn, void *ctx, char *err,
                          size_t errlen)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(cp->db, "SELECT user_id, state, checksum FROM users", -1, &st, NULL) !=
        SQLITE_OK)
        return db_error(cp, "reading open sessions", err, errlen);
    int rc, result = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t user = sqlite3_column_int64(st, 0);
        const void *val = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        char why[128];
        if (row_checksum(user, NULL, val, len) != sqlite3_column_int64(st, 2)) {
            snprintf(why, sizeof why, "open sessions of user %lld fail their checksum",
                     (long long)user);
            result = corrupt(cp, why, err, errlen);
            break;
        }
        if (fn(ctx, user, val, len) != 0) {
            snprintf(why, sizeof why, "open sessions of user %lld do not decode",
                     (long long)user);
            result = corrupt(cp, why, err, errlen);
            break;
        }
    }
    if (result == 0 && rc != SQLITE_DONE) result = db_error(cp, "reading open sessions", err, errlen);
    sqlite3_finalize(st);
    return result;
}

int checkpoint_begin(checkpoint *cp, char *err, size_t errlen)
{
    if (sqlite3_exec(cp->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return db_error(cp, "BEGIN", err, errlen);
    cp->in_txn = 1;
    return 0;
}

static int step_reset(checkpoint *cp, sqlite3_stmt *st, const char *what, char *err, size_t errlen)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_error(cp, what, err, errlen);
}

int checkpoint_put(checkpoint *cp, const char *key, const void *val, size_t len, char *err,
                   size_t errlen)
{
    sqlite3_bind_text(cp->put_meta, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(cp->put_meta, 2, len ? val : "", (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(cp->put_meta, 3, row_checksum(0, key, val, len));
    return step_reset(cp, cp->put_meta, "writing", err, errlen);
}

int checkpoint_put_user(checkpoint *cp, int64_t user_id, const void *blob, size_t len, char *err,
                        size_t errlen)
{
    if (!blob) {
        sqlite3_bind_int64(cp->del_user, 1, user_id);
        return step_reset(cp, cp->del_user, "writing", err, errlen);
    }
    sqlite3_bind_int64(cp->put_user, 1, user_id);
    sqlite3_bind_blob(cp->put_user, 2, blob, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(cp->put_user, 3, row_checksum(user_id, NULL, blob, len));
    return step_reset(cp, cp->put_user, "writing", err, errlen);
}

int checkpoint_commit(checkpoint *cp, char *err, size_t errlen)
{
    static const char format[] = FORMAT_VERSION;
    if (checkpoint_put(cp, "format", format, strlen(format), err, errlen)) {
        checkpoint_abort(cp);
        return -1;
    }
    if (sqlite3_exec(cp->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = db_error(cp, "COMMIT", err, errlen);
        checkpoint_abort(cp);
        return rc;
    }
    cp->in_txn = 0;
    return 0;
}

void checkpoint_abort(checkpoint *cp)
{
    if (sqlite3_get_autocommit(cp->db) == 0) sqlite3_exec(cp->db, "ROLLBACK", NULL, NULL, NULL);
    cp->in_txn = 0;
}

int64_t checkpoint_disk_bytes(checkpoint *cp)
{
    int64_t total = 0;
    const char *suffixes[] = {"", "-wal"};
    for (size_t i = 0; i < 2; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s%s", cp->db_path, suffixes[i]);
        struct stat st;
        if (stat(path, &st) == 0) total += st.st_size;
    }
    return total;
}
