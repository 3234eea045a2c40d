/*
 * sqlite_sql.h - the SQL of the SQLite sink: the database settings, the
 * table, and the upsert, for int or string users and any opt-in columns.
 * Shared with bench/sqlite_limit.c, which must run exactly the sink's
 * statements to measure SQLite's share of file -> sqlite:. Header-only (the
 * benchmark links SQLite alone).
 */
#ifndef SESSIONIZER_SQLITE_SQL_H
#define SESSIONIZER_SQLITE_SQL_H

#include <stdint.h>
#include <stdio.h>

#define SQLITE_SINK_PRAGMAS                                                                \
    "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"

/* The page cache: rows placed by position touch the table's last pages and,
 * on a re-run, a flush's pages in order, so a few MiB hold a flush's
 * working set; a flush upserting on a hashed key walks the whole index, which
 * a 256 MiB cache keeps in memory. (Negative: KiB.) */
#define SQLITE_SINK_CACHE_PLACED "PRAGMA cache_size=-32768"
#define SQLITE_SINK_CACHE_KEYED "PRAGMA cache_size=-262144"

/* The opt-in columns in the bit order of sink.h's SINK_COL_*: session_start
 * and session_end as ISO-8601 UTC text (like ingestion_time, to the
 * microsecond), visit_count, and duration in milliseconds (truncated). */
static const char *const sqlite_sink_optional[4][2] = {
    {"session_start", "TEXT"}, {"session_end", "TEXT"}, {"visit_count", "INTEGER"},
    {"duration", "INTEGER"}};

/* The four columns every row has, and their types (user_id: string_users). */
static inline const char *sqlite_sink_user_type(int string_users)
{
    return string_users ? "TEXT" : "INTEGER";
}

/* The comment that marks a table whose rows sit at sqlite_sink_rowid
 * (below): SQLite keeps a CREATE TABLE's text, comments included, in
 * sqlite_schema, so the layout travels with the table (and shows in
 * .schema). A table without it (made by hand, or by a version that placed
 * rows by their first position) is written by the key instead. */
#define SQLITE_SINK_LAYOUT_MARK                                                            \
    "/* sessionizer: each row sits at the rowid of its session's last position */"

/* CREATE TABLE IF NOT EXISTS sessions (...): a rowid table without a
 * declared key, whose rows sit at sqlite_sink_rowid (below). Returns
 * snprintf's count. */
static inline int sqlite_sink_create_sql(char *out, size_t n, int string_users, unsigned columns)
{
    int k = snprintf(out, n, "CREATE TABLE IF NOT EXISTS sessions (" SQLITE_SINK_LAYOUT_MARK
                     " session_id INTEGER NOT NULL, user_id %s NOT NULL, pages TEXT NOT NULL, "
                     "ingestion_time TEXT NOT NULL", sqlite_sink_user_type(string_users));
    for (unsigned c = 0; c < 4; c++)
        if (columns >> c & 1)
            k += snprintf(out + k, n > (size_t)k ? n - (size_t)k : 0, ", %s %s NOT NULL",
                          sqlite_sink_optional[c][0], sqlite_sink_optional[c][1]);
    k += snprintf(out + k, n > (size_t)k ? n - (size_t)k : 0, ")");
    return k;
}

/* The unique key a table gets when a row cannot be placed by position
 * (sqlite.c): from then on rows are found by it, as in a table whose
 * primary key is (session_id, user_id) (databases made before 2026-12). */
#define SQLITE_SINK_KEY_INDEX                                                              \
    "CREATE UNIQUE INDEX IF NOT EXISTS sessions_key ON sessions (session_id, user_id)"

/* Where a session's row sits in a marked table: its last position (the
 * greatest (partition, offset) of its visits, closed_session.h),
 * (partition << 48) | offset, which no other session of the same log has
 * (a record belongs to one session). Sessions close in the order of their
 * last event times, so within a partition a flush's rows land at the end
 * of the table, a few hundred positions out of order: appended. (The first
 * position, used before, put a session's row as far back as the session is
 * long: with sessions spanning commits each flush rewrote most of the
 * table's recent pages.) A file is partition 0 and byte offsets; a Kafka
 * topic of up to 32768 partitions and offsets below 2^48 (a million records
 * a second for 8 years) fits. Returns 0 when the position does not fit or
 * is unknown (partition < 0): the table then takes the key (above). */
static inline int sqlite_sink_rowid(int32_t partition, int64_t offset, long long *rowid)
{
    if (partition < 0 || partition >= (1 << 15) || offset < 0 || offset >= (1LL << 48))
        return 0;
    *rowid = (long long)partition << 48 | offset;
    return 1;
}

/* The parameters of both upserts: ?1 session_id, ?2 user_id, ?3 pages,
 * ?4 ingestion_time, then the chosen optional columns in bit order, then
 * (placed only) the rowid. Returns the count of the columns' parameters. */
static inline int sqlite_sink_columns_sql(unsigned columns, char names[128], char params[64],
                                          char sets[256])
{
    int nn = 0, np = 0, ns = 0, arg = 5;
    names[0] = params[0] = sets[0] = 0;
    for (unsigned c = 0; c < 4; c++)
        if (columns >> c & 1) {
            const char *name = sqlite_sink_optional[c][0];
            nn += snprintf(names + nn, 128 - (size_t)nn, ", %s", name);
            np += snprintf(params + np, 64 - (size_t)np, ", ?%d", arg++);
            ns += snprintf(sets + ns, 256 - (size_t)ns, ", %s = excluded.%s", name, name);
        }
    return arg - 1;
}

/* The upsert on the key (session_id, user_id): tables with that primary key
 * or the unique index SQLITE_SINK_KEY_INDEX. SQLite picks the rowid. */
static inline int sqlite_sink_upsert_sql(char *out, size_t n, unsigned columns)
{
    char names[128], params[64], sets[256];
    sqlite_sink_columns_sql(columns, names, params, sets);
    return snprintf(out, n, "INSERT INTO sessions (session_id, user_id, pages, ingestion_time%s) "
                    "VALUES (?1, ?2, ?3, ?4%s) ON CONFLICT (session_id, user_id) DO UPDATE "
                    "SET pages = excluded.pages, ingestion_time = excluded.ingestion_time%s",
                    names, params, sets);
}

/* The upsert at the row's place (sqlite_sink_rowid): the row there is
 * rewritten only if it is the same session; if another session holds the
 * place (the table holds sessions of another log), nothing changes
 * (sqlite3_changes() == 0) and the sink falls back to the key. */
static inline int sqlite_sink_place_sql(char *out, size_t n, unsigned columns)
{
    char names[128], params[64], sets[256];
    int last = sqlite_sink_columns_sql(columns, names, params, sets);
    return snprintf(out, n, "INSERT INTO sessions (rowid, session_id, user_id, pages, "
                    "ingestion_time%s) VALUES (?%d, ?1, ?2, ?3, ?4%s) ON CONFLICT (rowid) DO UPDATE "
                    "SET pages = excluded.pages, ingestion_time = excluded.ingestion_time%s "
                    "WHERE session_id = excluded.session_id AND user_id = excluded.user_id",
                    names, last + 1, params, sets);
}

#endif
