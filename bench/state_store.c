/*
 * state_store.c - the checkpoint workload of sessionizer on SQLite, LMDB and
 * RocksDB, with the same durability on each (an fsync before every commit
 * returns). See docs/checkpoint.md for the results and bench/state_store.sh
 * for the build line.
 *
 * Per store and per run, in a fresh temporary directory:
 *   1. load: one commit inserting USERS users (blobs shaped like the
 *      engine's encode_user: one session, 1-2 pages, ~80 bytes);
 *   2. steady: COMMITS commits, each a dirty set of UPSERTS users in touch
 *      order (random key order, as engine_foreach_dirty gives them): 9/10
 *      updates of live users, 1/10 (re)insertions of users that were
 *      deleted earlier or are new, plus DELETES deletions, so the table
 *      stays at USERS rows. Each commit also rewrites two meta entries,
 *      like sessionizer's meta table;
 *   then the writer process ends with _exit() after its last commit, as if
 *   killed: nothing is closed cleanly;
 *   3. recovery, in a new process, with the store's files evicted from the
 *      page cache first (cold: a restart after a reboot): open the store
 *      (for SQLite including PRAGMA quick_check, as checkpoint_open does)
 *      and read every user row, verifying each row's XXH3 checksum and that
 *      the count and the sum of checksums equal what the writer committed
 *      (no committed write lost). Then a second, warm open + read;
 *   4. bytes on disk after the last commit (allocated blocks, every file of
 *      the store) and after recovery closed the store cleanly.
 * Also per process: peak RSS (VmHWM minus the RSS just before the store is
 * opened, the benchmark's own arrays being faulted in by then), threads
 * (/proc/self/task, max over the phases, minus the main one), CPU seconds
 * (all threads), and bytes written: handed to write calls (/proc/self/io
 * wchar) and accounted to the device by the kernel (write_bytes).
 *
 * Variants for experiments (off by default, where the workload is what
 * sessionizer does): --sorted writes each commit in key order,
 * --sqlite-page-size and --sqlite-cache-mb change SQLite's pragmas.
 *
 * Each store runs in its own child processes, so RSS and threads are its own.
 * The order of the stores rotates between runs; medians over the runs are
 * printed at the end as a Markdown table.
 *
 * Row format: key = user id; value = blob; checksum = XXH3-64 of the blob
 * seeded with XXH3-64 of the 8 little-endian key bytes (row_checksum in
 * src/checkpoint/checkpoint.c). SQLite keeps it in a column; LMDB and
 * RocksDB append it to the value (8 bytes).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <rocksdb/c.h>
#include <sqlite3.h>
#include <xxhash.h>

/* ---- parameters ---------------------------------------------------------- */

static long USERS = 1000000;
static int COMMITS = 100;
static int UPSERTS = 10000; /* per commit, of which INSERTS are (re)insertions */
static int DELETES = 1000;
static int RUNS = 3;
static int SORTED = 0;        /* --sorted: write each commit in key order */
static int SQLITE_CACHE_MB = 0; /* --sqlite-cache-mb: 0 keeps SQLite's default (2 MB) */
static int SQLITE_PAGE_SIZE = 0; /* --sqlite-page-size: 0 keeps SQLite's default (4096) */
#define MAX_BLOB 200
#define MAX_COMMITS 10000

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "state_store: %s: %s\n", what, msg ? msg : "failed");
    _exit(2);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- deterministic data -------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t rng_state;
static uint64_t rnd(void) { return mix64(rng_state++); }
static uint64_t rnd_below(uint64_t n) { return rnd() % n; }

/* User index -> user id: spread over the positive int64 range. */
static int64_t user_id(uint32_t idx) { return (int64_t)(mix64(idx * 2654435761ULL + 7) >> 1); }

static void put_u32(uint8_t **p, uint32_t v) { memcpy(*p, &v, 4), *p += 4; }
static void put_i64(uint8_t **p, int64_t v) { memcpy(*p, &v, 8), *p += 8; }

/* The layout of src/engine/snapshot.c encode_user (version 1): n_sessions, then per session
 * first_t, last_t, append_ts, partition, offset, n_pages, then per page
 * t, partition, offset, len, bytes. */
static size_t make_blob(uint32_t idx, uint32_t version, uint8_t *out)
{
    uint64_t r = mix64(((uint64_t)idx << 20) ^ version ^ 0x5eed);
    uint32_t pages = (r & 7) == 0 ? 2 : 1; /* 1/8 of the users have two pages */
    int64_t t0 = 1700000000000000LL + (int64_t)(r >> 40) * 1000;
    int64_t off = (int64_t)((r >> 8) & 0xffffff);
    uint8_t *p = out;
    put_u32(&p, 1);
    put_i64(&p, t0);
    put_i64(&p, t0 + (pages - 1) * 30000000LL);
    put_i64(&p, t0 / 1000);
    put_u32(&p, (uint32_t)(r >> 60));
    put_i64(&p, off);
    put_u32(&p, pages);
    for (uint32_t i = 0; i < pages; i++) {
        uint64_t pr = mix64(r + i);
        char page[32];
        int n = snprintf(page, sizeof page, "/p/%llu.html", (unsigned long long)(pr % 1000000));
        put_i64(&p, t0 + i * 30000000LL);
        put_u32(&p, (uint32_t)(r >> 60));
        put_i64(&p, off + i);
        put_u32(&p, (uint32_t)n);
        memcpy(p, page, (size_t)n), p += n;
    }
    return (size_t)(p - out);
}

static uint64_t row_checksum(int64_t key, const void *val, size_t len)
{
    uint8_t k[8];
    for (int i = 0; i < 8; i++) k[i] = (uint8_t)((uint64_t)key >> (8 * i));
    return XXH3_64bits_withSeed(val, len, XXH3_64bits(k, 8));
}

/* ---- the store interface ------------------------------------------------- */

typedef struct store store;
typedef int (*row_fn)(void *ctx, int64_t key, const void *val, size_t len, uint64_t sum);
typedef struct store_ops {
    const char *name;
    store *(*open)(const char *dir); /* creates if missing */
    void (*begin)(store *s);
    void (*put)(store *s, int64_t key, const void *blob, size_t len, uint64_t sum);
    void (*del)(store *s, int64_t key);
    void (*put_meta)(store *s, const char *key, const void *val, size_t len);
    void (*commit)(store *s);
    void (*scan)(store *s, row_fn fn, void *ctx);
    void (*close)(store *s);
} store_ops;

/* ---- SQLite: what src/checkpoint/checkpoint.c does ----------------------- */

struct sqlite_store {
    sqlite3 *db;
    sqlite3_stmt *put_meta, *put_user, *del_user;
};

static void sq_check(sqlite3 *db, int rc, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) die(what, sqlite3_errmsg(db));
}

static store *sq_open(const char *dir)
{
    struct sqlite_store *s = calloc(1, sizeof *s);
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.db", dir);
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL))
        die("sqlite open", sqlite3_errmsg(s->db));
    if (SQLITE_PAGE_SIZE > 0) { /* before WAL mode writes the header of a new file */
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA page_size=%d", SQLITE_PAGE_SIZE);
        sq_check(s->db, sqlite3_exec(s->db, sql, NULL, NULL, NULL), "page_size");
    }
    sq_check(s->db,
             sqlite3_exec(s->db,
                          "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                          "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT "
                          "NULL, checksum INTEGER NOT NULL) WITHOUT ROWID;"
                          "CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY,"
                          " state BLOB NOT NULL, checksum INTEGER NOT NULL);",
                          NULL, NULL, NULL),
             "sqlite init");
    if (SQLITE_CACHE_MB > 0) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA cache_size=-%d", SQLITE_CACHE_MB * 1024);
        sq_check(s->db, sqlite3_exec(s->db, sql, NULL, NULL, NULL), "cache_size");
    }
    sqlite3_stmt *qc;
    sq_check(s->db, sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &qc, NULL), "quick_check");
    if (sqlite3_step(qc) != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(qc, 0), "ok"))
        die("sqlite quick_check", "not ok");
    sqlite3_finalize(qc);
    sq_check(s->db,
             sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO meta VALUES (?1, ?2, ?3)", -1,
                                &s->put_meta, NULL),
             "prepare");
    sq_check(s->db,
             sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO users VALUES (?1, ?2, ?3)", -1,
                                &s->put_user, NULL),
             "prepare");
    sq_check(s->db,
             sqlite3_prepare_v2(s->db, "DELETE FROM users WHERE user_id = ?1", -1, &s->del_user,
                                NULL),
             "prepare");
    return (store *)s;
}

static void sq_step(struct sqlite_store *s, sqlite3_stmt *st)
{
    if (sqlite3_step(st) != SQLITE_DONE) die("sqlite write", sqlite3_errmsg(s->db));
    sqlite3_reset(st);
}

static void sq_begin(store *p)
{
    struct sqlite_store *s = (void *)p;
    sq_check(s->db, sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL), "BEGIN");
}

static void sq_put(store *p, int64_t key, const void *blob, size_t len, uint64_t sum)
{
    struct sqlite_store *s = (void *)p;
    sqlite3_bind_int64(s->put_user, 1, key);
    sqlite3_bind_blob(s->put_user, 2, blob, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(s->put_user, 3, (int64_t)sum);
    sq_step(s, s->put_user);
}

static void sq_del(store *p, int64_t key)
{
    struct sqlite_store *s = (void *)p;
    sqlite3_bind_int64(s->del_user, 1, key);
    sq_step(s, s->del_user);
}

static void sq_put_meta(store *p, const char *key, const void *val, size_t len)
{
    struct sqlite_store *s = (void *)p;
    sqlite3_bind_text(s->put_meta, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s->put_meta, 2, val, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(s->put_meta, 3, (int64_t)XXH3_64bits(val, len));
    sq_step(s, s->put_meta);
}

static void sq_commit(store *p)
{
    struct sqlite_store *s = (void *)p;
    sq_check(s->db, sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL), "COMMIT");
}

static void sq_scan(store *p, row_fn fn, void *ctx)
{
    struct sqlite_store *s = (void *)p;
    sqlite3_stmt *st;
    sq_check(s->db,
             sqlite3_prepare_v2(s->db, "SELECT user_id, state, checksum FROM users", -1, &st,
                                NULL),
             "scan");
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (fn(ctx, sqlite3_column_int64(st, 0), sqlite3_column_blob(st, 1),
               (size_t)sqlite3_column_bytes(st, 1), (uint64_t)sqlite3_column_int64(st, 2)))
            die("sqlite scan", "row fails its checksum");
    if (rc != SQLITE_DONE) die("sqlite scan", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
}

static void sq_close(store *p)
{
    struct sqlite_store *s = (void *)p;
    sqlite3_finalize(s->put_meta);
    sqlite3_finalize(s->put_user);
    sqlite3_finalize(s->del_user);
    if (sqlite3_close(s->db) != SQLITE_OK) die("sqlite close", sqlite3_errmsg(s->db));
    free(s);
}

static const store_ops sqlite_ops = {"sqlite", sq_open, sq_begin, sq_put, sq_del,
                                     sq_put_meta, sq_commit, sq_scan, sq_close};

/* ---- LMDB: default (durable) commits, value = blob || checksum ----------- */

#define LMDB_MAP_SIZE (1ULL << 30) /* must be chosen up front; MDB_MAP_FULL beyond */

struct lmdb_store {
    MDB_env *env;
    MDB_dbi users, meta;
    MDB_txn *txn;
};

static void lm_check(int rc, const char *what)
{
    if (rc != MDB_SUCCESS) die(what, mdb_strerror(rc));
}

static store *lm_open(const char *dir)
{
    struct lmdb_store *s = calloc(1, sizeof *s);
    lm_check(mdb_env_create(&s->env), "mdb_env_create");
    lm_check(mdb_env_set_mapsize(s->env, LMDB_MAP_SIZE), "mdb_env_set_mapsize");
    lm_check(mdb_env_set_maxdbs(s->env, 2), "mdb_env_set_maxdbs");
    lm_check(mdb_env_open(s->env, dir, 0, 0644), "mdb_env_open"); /* flags 0: sync commits */
    MDB_txn *txn;
    lm_check(mdb_txn_begin(s->env, NULL, 0, &txn), "mdb_txn_begin");
    lm_check(mdb_dbi_open(txn, "users", MDB_CREATE | MDB_INTEGERKEY, &s->users), "mdb_dbi_open");
    lm_check(mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta), "mdb_dbi_open");
    lm_check(mdb_txn_commit(txn), "mdb_txn_commit");
    return (store *)s;
}

static void lm_begin(store *p)
{
    struct lmdb_store *s = (void *)p;
    lm_check(mdb_txn_begin(s->env, NULL, 0, &s->txn), "mdb_txn_begin");
}

static void lm_put(store *p, int64_t key, const void *blob, size_t len, uint64_t sum)
{
    struct lmdb_store *s = (void *)p;
    MDB_val k = {sizeof key, &key}, v = {len + 8, NULL};
    lm_check(mdb_put(s->txn, s->users, &k, &v, MDB_RESERVE), "mdb_put");
    memcpy(v.mv_data, blob, len);
    memcpy((char *)v.mv_data + len, &sum, 8);
}

static void lm_del(store *p, int64_t key)
{
    struct lmdb_store *s = (void *)p;
    MDB_val k = {sizeof key, &key};
    int rc = mdb_del(s->txn, s->users, &k, NULL);
    if (rc != MDB_NOTFOUND) lm_check(rc, "mdb_del");
}

static void lm_put_meta(store *p, const char *key, const void *val, size_t len)
{
    struct lmdb_store *s = (void *)p;
    MDB_val k = {strlen(key), (void *)key}, v = {len, (void *)val};
    lm_check(mdb_put(s->txn, s->meta, &k, &v, 0), "mdb_put meta");
}

static void lm_commit(store *p)
{
    struct lmdb_store *s = (void *)p;
    lm_check(mdb_txn_commit(s->txn), "mdb_txn_commit");
    s->txn = NULL;
}

static void lm_scan(store *p, row_fn fn, void *ctx)
{
    struct lmdb_store *s = (void *)p;
    MDB_txn *txn;
    MDB_cursor *c;
    lm_check(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "mdb_txn_begin");
    lm_check(mdb_cursor_open(txn, s->users, &c), "mdb_cursor_open");
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        int64_t key;
        uint64_t sum;
        if (k.mv_size != 8 || v.mv_size < 8) die("lmdb scan", "bad row");
        memcpy(&key, k.mv_data, 8);
        memcpy(&sum, (char *)v.mv_data + v.mv_size - 8, 8);
        if (fn(ctx, key, v.mv_data, v.mv_size - 8, sum)) die("lmdb scan", "row fails its checksum");
    }
    if (rc != MDB_NOTFOUND) lm_check(rc, "mdb_cursor_get");
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
}

static void lm_close(store *p)
{
    struct lmdb_store *s = (void *)p;
    mdb_env_close(s->env);
    free(s);
}

static const store_ops lmdb_ops = {"lmdb", lm_open, lm_begin, lm_put, lm_del,
                                   lm_put_meta, lm_commit, lm_scan, lm_close};

/* ---- RocksDB: default options, one WriteBatch per commit, sync=true ------ */

struct rocks_store {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_writeoptions_t *wo;
    rocksdb_writebatch_t *wb;
};

/* 'u' + big-endian key with the sign bit flipped, so bytes sort as int64. */
static void rk_key(uint8_t out[9], int64_t key)
{
    uint64_t u = (uint64_t)key ^ (1ULL << 63);
    out[0] = 'u';
    for (int i = 0; i < 8; i++) out[1 + i] = (uint8_t)(u >> (56 - 8 * i));
}

static store *rk_open(const char *dir)
{
    struct rocks_store *s = calloc(1, sizeof *s);
    s->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->opts, 1);
    char *err = NULL;
    s->db = rocksdb_open(s->opts, dir, &err);
    if (err) die("rocksdb_open", err);
    s->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wo, 1);
    s->wb = rocksdb_writebatch_create();
    return (store *)s;
}

static void rk_begin(store *p) { rocksdb_writebatch_clear(((struct rocks_store *)p)->wb); }

static void rk_put(store *p, int64_t key, const void *blob, size_t len, uint64_t sum)
{
    struct rocks_store *s = (void *)p;
    uint8_t k[9], v[MAX_BLOB + 8];
    rk_key(k, key);
    memcpy(v, blob, len);
    memcpy(v + len, &sum, 8);
    rocksdb_writebatch_put(s->wb, (const char *)k, 9, (const char *)v, len + 8);
}

static void rk_del(store *p, int64_t key)
{
    struct rocks_store *s = (void *)p;
    uint8_t k[9];
    rk_key(k, key);
    rocksdb_writebatch_delete(s->wb, (const char *)k, 9);
}

static void rk_put_meta(store *p, const char *key, const void *val, size_t len)
{
    struct rocks_store *s = (void *)p;
    char k[64];
    int n = snprintf(k, sizeof k, "m%s", key);
    rocksdb_writebatch_put(s->wb, k, (size_t)n, val, len);
}

static void rk_commit(store *p)
{
    struct rocks_store *s = (void *)p;
    char *err = NULL;
    rocksdb_write(s->db, s->wo, s->wb, &err);
    if (err) die("rocksdb_write", err);
}

static void rk_scan(store *p, row_fn fn, void *ctx)
{
    struct rocks_store *s = (void *)p;
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, ro);
    for (rocksdb_iter_seek(it, "u", 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        if (kl != 9 || k[0] != 'u') break;
        uint64_t u = 0, sum;
        for (int i = 0; i < 8; i++) u = u << 8 | k[1 + i];
        if (vl < 8) die("rocksdb scan", "bad row");
        memcpy(&sum, v + vl - 8, 8);
        if (fn(ctx, (int64_t)(u ^ (1ULL << 63)), v, vl - 8, sum))
            die("rocksdb scan", "row fails its checksum");
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    if (err) die("rocksdb scan", err);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
}

static void rk_close(store *p)
{
    struct rocks_store *s = (void *)p;
    rocksdb_writebatch_destroy(s->wb);
    rocksdb_writeoptions_destroy(s->wo);
    rocksdb_close(s->db);
    rocksdb_options_destroy(s->opts);
    free(s);
}

static const store_ops rocksdb_ops = {"rocksdb", rk_open, rk_begin, rk_put, rk_del,
                                      rk_put_meta, rk_commit, rk_scan, rk_close};

static const store_ops *const ALL[] = {&sqlite_ops, &lmdb_ops, &rocksdb_ops};
#define N_STORES 3

/* ---- process measurements ------------------------------------------------ */

static int threads_now(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

/* /proc/self/io: "wchar" (bytes passed to write calls) or "write_bytes"
 * (bytes the kernel accounts as sent to the device, by page or folio). */
static long long io_field(const char *field)
{
    FILE *f = fopen("/proc/self/io", "r");
    char line[256];
    long long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atoll(line + n + 1);
    if (f) fclose(f);
    return v;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Allocated bytes of every file under dir. */
static long long disk_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    long long total = 0;
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) total += disk_bytes(path);
        else total += (long long)st.st_blocks * 512;
    }
    closedir(d);
    return total;
}

/* Writes back and drops the page cache of the store's files only (not the
 * whole machine's, which the other engineers are using). */
static void evict(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[4096 + 258];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
            fdatasync(fd);
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        }
        close(fd);
    }
    if (d) closedir(d);
}

/* ---- the workload -------------------------------------------------------- */

typedef struct result {
    double load_s, commit_mean_ms, commit_p99_ms, commit_max_ms;
    double recover_cold_s, recover_cold_open_s, recover_warm_s;
    double mb_running, mb_closed;
    double rss_write_mb, rss_recover_mb;
    int threads_write, threads_recover;
    double cpu_write_s, cpu_recover_s;
    double mb_written_load, mb_written_steady; /* device (write_bytes) */
    double mb_wchar_load, mb_wchar_steady;     /* write calls (wchar) */
    double rss_base_write_mb, rss_base_recover_mb, rss_file_write_mb, rss_file_recover_mb;
    double blob_mean;
    long long rows;
    uint64_t sum;
    int ok;
} result;

typedef struct op {
    uint32_t idx;
    uint8_t del;
    uint8_t len;
    uint8_t blob[MAX_BLOB];
} op;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmp_i64(int64_t a, int64_t b) { return a < b ? -1 : a > b; }
static int cmp_idx_by_key(const void *a, const void *b)
{
    return cmp_i64(user_id(*(const uint32_t *)a), user_id(*(const uint32_t *)b));
}
static int cmp_op_by_key(const void *a, const void *b)
{
    return cmp_i64(user_id(((const op *)a)->idx), user_id(((const op *)b)->idx));
}

static void meta_puts(const store_ops *o, store *s, uint64_t commit_no)
{
    static const char fmt[] = "sessionizer-checkpoint-1";
    uint8_t pos[24] = {0};
    memcpy(pos, &commit_no, 8);
    o->put_meta(s, "format", fmt, sizeof fmt - 1);
    o->put_meta(s, "source_position", pos, sizeof pos);
}

/* Writer child: load + steady state, then _exit without closing. */
static void writer(const store_ops *o, const char *dir, int fd, uint64_t seed)
{
    result r = {0};
    rng_state = seed;
    long extra = (long)COMMITS * (UPSERTS / 10) + 1;
    long total = USERS + extra;
    uint32_t *live = malloc(USERS * sizeof *live), *dead = malloc(total * sizeof *dead);
    uint32_t *version = calloc(total, sizeof *version);
    uint64_t *cur = calloc(total, sizeof *cur); /* checksum of the live row */
    uint32_t *touched = calloc(total, sizeof *touched);
    op *ops = malloc((size_t)(UPSERTS + DELETES) * sizeof *ops);
    double *lat = malloc(COMMITS * sizeof *lat);
    uint32_t *order = malloc(USERS * sizeof *order);
    if (!live || !dead || !version || !cur || !touched || !ops || !lat || !order)
        die("writer", "out of memory");
    /* fault the benchmark's own arrays in now, so that the baseline RSS
     * below holds them and the peak minus it is the store's */
    memset(live, 0, USERS * sizeof *live), memset(dead, 0, total * sizeof *dead);
    memset(version, 0, total * sizeof *version), memset(cur, 0, total * sizeof *cur);
    memset(touched, 0, total * sizeof *touched);
    memset(ops, 0, (size_t)(UPSERTS + DELETES) * sizeof *ops);
    for (long i = 0; i < USERS; i++) order[i] = (uint32_t)i;
    if (SORTED) qsort(order, (size_t)USERS, sizeof *order, cmp_idx_by_key);
    r.rss_base_write_mb = status_kb("VmRSS") / 1024.0;
    long n_live = USERS, n_dead = 0;
    uint8_t blob[MAX_BLOB];
    uint64_t sum = 0;
    double blob_bytes = 0;
    int thr = 0;

    store *s = o->open(dir);
    /* 1. load, in a random key order (user_id() is a hash of the index) */
    long long wb0 = io_field("write_bytes"), wc0 = io_field("wchar");
    double t = now();
    o->begin(s);
    for (long n = 0; n < USERS; n++) {
        uint32_t i = order[n];
        size_t len = make_blob(i, 0, blob);
        uint64_t c = row_checksum(user_id(i), blob, len);
        o->put(s, user_id(i), blob, len, c);
        live[i] = i, cur[i] = c, sum += c, blob_bytes += len;
    }
    for (long i = USERS; i < total; i++) dead[n_dead++] = (uint32_t)i; /* new users to come */
    meta_puts(o, s, 0);
    o->commit(s);
    r.load_s = now() - t;
    r.blob_mean = blob_bytes / USERS;
    long long wb1 = io_field("write_bytes"), wc1 = io_field("wchar");
    r.mb_written_load = (wb1 - wb0) / 1e6;
    r.mb_wchar_load = (wc1 - wc0) / 1e6;
    thr = threads_now();

    /* 2. steady state */
    int inserts = UPSERTS / 10, updates = UPSERTS - inserts;
    for (int c = 0; c < COMMITS; c++) {
        uint32_t mark = (uint32_t)c + 1;
        int n = 0;
        /* deletions: remove from live, into the pool of returning users */
        for (int i = 0; i < DELETES; i++) {
            long j = (long)rnd_below((uint64_t)n_live);
            uint32_t idx = live[j];
            live[j] = live[--n_live];
            touched[idx] = mark;
            ops[n++] = (op){.idx = idx, .del = 1};
            dead[n_dead++] = idx;
        }
        /* updates of live users, distinct within the commit */
        for (int i = 0; i < updates;) {
            uint32_t idx = live[rnd_below((uint64_t)n_live)];
            if (touched[idx] == mark) continue;
            touched[idx] = mark;
            ops[n++] = (op){.idx = idx};
            i++;
        }
        /* (re)insertions: users deleted in an earlier commit, or new ones */
        for (int i = 0; i < inserts;) {
            long j = (long)rnd_below((uint64_t)n_dead);
            uint32_t idx = dead[j];
            if (touched[idx] == mark) continue; /* deleted in this very commit */
            dead[j] = dead[--n_dead];
            live[n_live++] = idx;
            touched[idx] = mark;
            ops[n++] = (op){.idx = idx};
            i++;
        }
        /* touch order is arrival order: random with respect to the key */
        for (int i = n - 1; i > 0; i--) {
            int j = (int)rnd_below((uint64_t)i + 1);
            op tmp = ops[i];
            ops[i] = ops[j], ops[j] = tmp;
        }
        if (SORTED) qsort(ops, (size_t)n, sizeof *ops, cmp_op_by_key);
        for (int i = 0; i < n; i++) {
            op *x = &ops[i];
            if (cur[x->idx]) sum -= cur[x->idx], cur[x->idx] = 0;
            if (x->del) continue;
            x->len = (uint8_t)make_blob(x->idx, ++version[x->idx], x->blob);
            cur[x->idx] = row_checksum(user_id(x->idx), x->blob, x->len);
            sum += cur[x->idx];
        }
        t = now();
        o->begin(s);
        for (int i = 0; i < n; i++) {
            const op *x = &ops[i];
            if (x->del) o->del(s, user_id(x->idx));
            else o->put(s, user_id(x->idx), x->blob, x->len, cur[x->idx]);
        }
        meta_puts(o, s, (uint64_t)c + 1);
        o->commit(s);
        lat[c] = (now() - t) * 1e3;
        int tn = threads_now();
        if (tn > thr) thr = tn;
    }
    r.mb_written_steady = (io_field("write_bytes") - wb1) / 1e6;
    r.mb_wchar_steady = (io_field("wchar") - wc1) / 1e6;
    r.rss_file_write_mb = status_kb("RssFile") / 1024.0;
    double total_ms = 0;
    for (int c = 0; c < COMMITS; c++) total_ms += lat[c];
    qsort(lat, COMMITS, sizeof *lat, cmp_double);
    r.commit_mean_ms = total_ms / COMMITS;
    int rank = (99 * COMMITS + 99) / 100; /* nearest rank */
    r.commit_p99_ms = lat[rank - 1];
    r.commit_max_ms = lat[COMMITS - 1];
    r.mb_running = disk_bytes(dir) / 1e6;
    r.rss_write_mb = status_kb("VmHWM") / 1024.0 - r.rss_base_write_mb;
    r.threads_write = thr - 1; /* started by the library */
    r.cpu_write_s = cpu_seconds();
    r.rows = n_live;
    r.sum = sum;
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r) die("pipe", strerror(errno));
    _exit(0); /* like a kill after the last commit: nothing closed */
}

typedef struct scan_ctx {
    long long rows;
    uint64_t sum;
} scan_ctx;

static int verify_row(void *p, int64_t key, const void *val, size_t len, uint64_t sum)
{
    scan_ctx *c = p;
    if (row_checksum(key, val, len) != sum) return -1;
    c->rows++;
    c->sum += sum;
    return 0;
}

/* Recovery child: cold open + full read, verified; then warm; clean close. */
static void recoverer(const store_ops *o, const char *dir, int fd, const result *w)
{
    result r = *w;
    int thr = threads_now();
    r.rss_base_recover_mb = status_kb("VmRSS") / 1024.0;
    double t = now();
    store *s = o->open(dir);
    r.recover_cold_open_s = now() - t;
    scan_ctx c = {0};
    o->scan(s, verify_row, &c);
    r.recover_cold_s = now() - t;
    r.ok = c.rows == w->rows && c.sum == w->sum;
    if (threads_now() > thr) thr = threads_now();
    o->close(s);

    t = now();
    s = o->open(dir);
    scan_ctx c2 = {0};
    o->scan(s, verify_row, &c2);
    r.recover_warm_s = now() - t;
    r.ok = r.ok && c2.rows == w->rows && c2.sum == w->sum;
    if (threads_now() > thr) thr = threads_now();
    r.rss_file_recover_mb = status_kb("RssFile") / 1024.0;
    o->close(s);
    r.mb_closed = disk_bytes(dir) / 1e6;
    r.rss_recover_mb = status_kb("VmHWM") / 1024.0 - r.rss_base_recover_mb;
    r.threads_recover = thr - 1;
    r.cpu_recover_s = cpu_seconds();
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r) die("pipe", strerror(errno));
    _exit(0);
}

static int in_child(void (*fn)(const store_ops *, const char *, int, const result *),
                    const store_ops *o, const char *dir, const result *in, uint64_t seed,
                    result *out)
{
    int p[2];
    if (pipe(p) != 0) die("pipe", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) die("fork", strerror(errno));
    if (pid == 0) {
        close(p[0]);
        if (fn) fn(o, dir, p[1], in);
        else writer(o, dir, p[1], seed);
    }
    close(p[1]);
    ssize_t got = read(p[0], out, sizeof *out);
    close(p[0]);
    int status;
    waitpid(pid, &status, 0);
    return got == (ssize_t)sizeof *out && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[4096 + 258];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) rm_rf(path);
        else unlink(path);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define FIELDS(X)                                                                        \
    X(load_s, "1. load, s", "%.2f")                                                      \
    X(commit_mean_ms, "2. commit mean, ms", "%.1f")                                      \
    X(commit_p99_ms, "2. commit p99, ms", "%.1f")                                        \
    X(recover_cold_s, "3. recovery cold (open + read all), s", "%.2f")                   \
    X(recover_cold_open_s, "3. of which open, s", "%.2f")                                \
    X(recover_warm_s, "3. recovery warm, s", "%.2f")                                     \
    X(mb_running, "4. disk MB after the last commit", "%.0f")                            \
    X(mb_closed, "4. disk MB after a clean close", "%.0f")                               \
    X(rss_write_mb, "peak RSS MB added by the store, writing", "%.0f")                   \
    X(rss_file_write_mb, "RSS MB file-backed at the end of writing", "%.0f")             \
    X(rss_recover_mb, "peak RSS MB added by the store, recovery", "%.0f")                \
    X(threads_write, "threads started by the library", "%.0f")                           \
    X(cpu_write_s, "CPU s, writing (all threads)", "%.1f")                               \
    X(cpu_recover_s, "CPU s, recovery (all threads)", "%.1f")                            \
    X(mb_wchar_load, "MB written by write calls, load", "%.0f")                          \
    X(mb_wchar_steady, "MB written by write calls, per commit", "%.1f")                  \
    X(mb_written_steady, "MB to the device per commit (kernel)", "%.1f")

int main(int argc, char **argv)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int want[N_STORES] = {1, 1, 1};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--users") && i + 1 < argc) USERS = atol(argv[++i]);
        else if (!strcmp(argv[i], "--commits") && i + 1 < argc) COMMITS = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--upserts") && i + 1 < argc) UPSERTS = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--deletes") && i + 1 < argc) DELETES = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) RUNS = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) base = argv[++i];
        else if (!strcmp(argv[i], "--sorted")) SORTED = 1;
        else if (!strcmp(argv[i], "--sqlite-cache-mb") && i + 1 < argc)
            SQLITE_CACHE_MB = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sqlite-page-size") && i + 1 < argc)
            SQLITE_PAGE_SIZE = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--stores") && i + 1 < argc) {
            const char *list = argv[++i];
            for (int k = 0; k < N_STORES; k++) want[k] = strstr(list, ALL[k]->name) != NULL;
        } else {
            fprintf(stderr,
                    "usage: state_store [--users N] [--commits N] [--upserts N] [--deletes N]\n"
                    "                   [--runs N] [--dir DIR] [--stores sqlite,lmdb,rocksdb]\n"
                    "                   [--sorted] [--sqlite-cache-mb N] [--sqlite-page-size N]\n");
            return 2;
        }
    }
    if (USERS < 10 * UPSERTS || COMMITS < 1 || COMMITS > MAX_COMMITS || RUNS < 1 ||
        UPSERTS < 10 || DELETES < 0 || DELETES > UPSERTS) {
        fprintf(stderr, "state_store: parameters out of range\n");
        return 2;
    }
    printf("# %ld users, load in 1 commit; %d commits x (%d upserts + %d deletes); %d runs\n",
           USERS, COMMITS, UPSERTS, DELETES, RUNS);
    printf("# sqlite %s, lmdb %d.%d.%d, rocksdb (Debian librocksdb), temp dir under %s\n",
           sqlite3_libversion(), MDB_VERSION_MAJOR, MDB_VERSION_MINOR, MDB_VERSION_PATCH, base);
    if (SORTED || SQLITE_CACHE_MB || SQLITE_PAGE_SIZE)
        printf("# variant:%s%s%s\n", SORTED ? " dirty set written in key order;" : "",
               SQLITE_CACHE_MB ? " sqlite cache_size set;" : "",
               SQLITE_PAGE_SIZE ? " sqlite page_size set;" : "");

    static result res[N_STORES][16];
    int nres[N_STORES] = {0}, failed = 0;
    for (int run = 0; run < RUNS && run < 16; run++) {
        for (int k0 = 0; k0 < N_STORES; k0++) {
            int k = (k0 + run) % N_STORES; /* rotate the order */
            if (!want[k]) continue;
            const store_ops *o = ALL[k];
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/state_store.XXXXXX", base);
            if (!mkdtemp(dir)) die("mkdtemp", strerror(errno));
            result w, r;
            double t0 = now();
            if (in_child(NULL, o, dir, NULL, 42 + (uint64_t)run * 1000003, &w) != 0) {
                fprintf(stderr, "%s: writer failed\n", o->name);
                failed = 1;
                rm_rf(dir);
                continue;
            }
            evict(dir);
            if (in_child(recoverer, o, dir, &w, 0, &r) != 0) {
                fprintf(stderr, "%s: recovery failed\n", o->name);
                failed = 1;
                rm_rf(dir);
                continue;
            }
            rm_rf(dir);
            if (!r.ok) {
                fprintf(stderr, "%s: recovered rows do not match the committed ones\n", o->name);
                failed = 1;
            }
            r.mb_written_steady /= COMMITS;
            r.mb_wchar_steady /= COMMITS;
            printf("run %d %-7s load %.2fs | commit mean %.1f p99 %.1f max %.1f ms | recovery "
                   "cold %.2fs (open %.2fs) warm %.2fs | disk %.0f MB, closed %.0f MB | rss +%.0f "
                   "MB (file %.0f), recovery +%.0f MB | threads +%d/+%d | cpu %.1f/%.1fs | "
                   "written %.0f MB load, %.1f MB/commit (device %.1f) | blob %.1f B | rows %lld "
                   "%s | %.0fs\n",
                   run + 1, o->name, r.load_s, r.commit_mean_ms, r.commit_p99_ms, r.commit_max_ms,
                   r.recover_cold_s, r.recover_cold_open_s, r.recover_warm_s, r.mb_running,
                   r.mb_closed, r.rss_write_mb, r.rss_file_write_mb, r.rss_recover_mb,
                   r.threads_write, r.threads_recover, r.cpu_write_s, r.cpu_recover_s,
                   r.mb_wchar_load, r.mb_wchar_steady, r.mb_written_steady, r.blob_mean, r.rows,
                   r.ok ? "verified" : "LOST", now() - t0);
            fflush(stdout);
            res[k][nres[k]++] = r;
        }
    }

    printf("\nMedians of %d runs:\n\n| metric |", RUNS);
    for (int k = 0; k < N_STORES; k++)
        if (want[k] && nres[k]) printf(" %s |", ALL[k]->name);
    printf("\n|---|");
    for (int k = 0; k < N_STORES; k++)
        if (want[k] && nres[k]) printf("---:|");
    printf("\n");
#define ROW(f, label, fmt)                                                               \
    printf("| " label " |");                                                             \
    for (int k = 0; k < N_STORES; k++) {                                                 \
        if (!want[k] || !nres[k]) continue;                                              \
        double v[16];                                                                    \
        for (int i = 0; i < nres[k]; i++) v[i] = (double)res[k][i].f;                    \
        printf(" " fmt " |", median(v, nres[k]));                                        \
    }                                                                                    \
    printf("\n");
    FIELDS(ROW)
#undef ROW
    return failed;
}
