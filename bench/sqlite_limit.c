/*
 * sqlite_limit.c - what SQLite alone takes to write the rows the SQLite sink
 * wrote, in the same transactions: the limit of file -> sqlite:.
 *
 *   build-bench/sqlite-limit SOURCE.db TARGET.db
 *
 * SOURCE.db is a table written by `sessionizer ... --sink sqlite:SOURCE.db`
 * into a new database, so each row sits at the rowid of its session's first
 * position (src/sink/sqlite.c). Its rows are read into memory by
 * ingestion_time, which is one per flush (one transaction), then rowid, the
 * order the sink wrote them in. TARGET.db (removed first) gets the same
 * schema, the same pragmas and the same placed upsert as the sink, and the
 * rows at the same rowids in the same transactions. No parsing, no engine, no JSON: the time
 * printed is SQLite's share of file -> sqlite:, and anything the sink is
 * slower than this is sessionizer's overhead.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "sink/sqlite_sql.h"

typedef struct row {
    int64_t rowid, session_id, user_id;
    char *pages;
    int pages_len;
    int txn; /* the flush it was written by */
} row;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(sqlite3 *db, const char *what)
{
    fprintf(stderr, "sqlite-limit: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sqlite-limit SOURCE.db TARGET.db\n");
        return 2;
    }
    sqlite3 *src;
    if (sqlite3_open_v2(argv[1], &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) die(src, "open source");
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(src, "SELECT rowid, session_id, user_id, pages, "
                           "ingestion_time FROM sessions ORDER BY ingestion_time, rowid", -1,
                           &st, NULL) != SQLITE_OK)
        die(src, "read source");
    size_t n = 0, cap = 1 << 20, flushes = 0;
    char last[64] = "";
    row *rows = malloc(cap * sizeof *rows);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) rows = realloc(rows, (cap *= 2) * sizeof *rows);
        if (!rows) return 1;
        row *r = &rows[n++];
        r->rowid = sqlite3_column_int64(st, 0);
        r->session_id = sqlite3_column_int64(st, 1);
        r->user_id = sqlite3_column_int64(st, 2);
        r->pages_len = sqlite3_column_bytes(st, 3);
        r->pages = malloc((size_t)r->pages_len + 1);
        memcpy(r->pages, sqlite3_column_text(st, 3), (size_t)r->pages_len);
        const char *t = (const char *)sqlite3_column_text(st, 4);
        if (n == 1 || strcmp(t, last) != 0) flushes++;
        snprintf(last, sizeof last, "%s", t);
        r->txn = (int)flushes;
    }
    sqlite3_finalize(st);
    sqlite3_close(src);

    char wal[4096], shm[4096];
    snprintf(wal, sizeof wal, "%s-wal", argv[2]);
    snprintf(shm, sizeof shm, "%s-shm", argv[2]);
    unlink(argv[2]), unlink(wal), unlink(shm);
    double t0 = now_s();
    sqlite3 *db;
    if (sqlite3_open_v2(argv[2], &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        die(db, "open target");
    /* the sink's own statements (src/sink/sqlite_sql.h) */
    char create[1024], upsert[1024];
    sqlite_sink_create_sql(create, sizeof create, 0, 0);
    sqlite_sink_place_sql(upsert, sizeof upsert, 0);
    if (sqlite3_exec(db, SQLITE_SINK_PRAGMAS, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, SQLITE_SINK_CACHE_PLACED, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, create, NULL, NULL, NULL) != SQLITE_OK)
        die(db, "schema");
    sqlite3_stmt *up;
    if (sqlite3_prepare_v2(db, upsert, -1, &up, NULL) != SQLITE_OK)
        die(db, "prepare");
    const char *now = "2026-01-01T00:00:00.000000Z";
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || rows[i].txn != rows[i - 1].txn) { /* a new flush */
            if (i > 0 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) die(db, "commit");
            if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) die(db, "begin");
        }
        sqlite3_bind_int64(up, 1, rows[i].session_id);
        sqlite3_bind_int64(up, 2, rows[i].user_id);
        sqlite3_bind_text(up, 3, rows[i].pages, rows[i].pages_len, SQLITE_STATIC);
        sqlite3_bind_text(up, 4, now, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 5, rows[i].rowid);
        if (sqlite3_step(up) != SQLITE_DONE || sqlite3_changes(db) != 1) die(db, "upsert");
        sqlite3_reset(up);
    }
    if (n > 0 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) die(db, "commit");
    sqlite3_finalize(up);
    sqlite3_close(db);
    double secs = now_s() - t0;
    printf("sqlite-limit: %zu rows in %zu transactions in %.3f s = %.0f rows/s\n", n, flushes, secs,
           (double)n / secs);
    for (size_t i = 0; i < n; i++) free(rows[i].pages);
    free(rows);
    return 0;
}
