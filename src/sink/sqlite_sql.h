/*
 * sqlite_sql.h - the SQL of the SQLite sink: the database settings, the
 * table, and the upsert, for int or string users and any opt-in columns.
 * Shared with bench/sqlite_limit.c, which must run exactly the sink's
 * statements to measure SQLite's share of file -> sqlite:. Header-only (the
 * benchmark links SQLite alone).
 */
#ifndef SESSIONIZER_SQLITE_SQL_H
#define SESSIONIZER_SQLITE_SQL_H

#include <stdio.h>

#define SQLITE_SINK_PRAGMAS                                                                \
    "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"            \
    "PRAGMA cache_size=-262144;"

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

/* CREATE TABLE IF NOT EXISTS sessions (...). Returns snprintf's count. */
static inline int sqlite_sink_create_sql(char *out, size_t n, int string_users, unsigned columns)
{
    int k = snprintf(out, n, "CREATE TABLE IF NOT EXISTS sessions (session_id INTEGER NOT NULL, "
                     "user_id %s NOT NULL, pages TEXT NOT NULL, ingestion_time TEXT NOT NULL",
                     sqlite_sink_user_type(string_users));
    for (unsigned c = 0; c < 4; c++)
        if (columns >> c & 1)
            k += snprintf(out + k, n > (size_t)k ? n - (size_t)k : 0, ", %s %s NOT NULL",
                          sqlite_sink_optional[c][0], sqlite_sink_optional[c][1]);
    k += snprintf(out + k, n > (size_t)k ? n - (size_t)k : 0,
                  ", PRIMARY KEY (session_id, user_id))");
    return k;
}

/* The upsert: ?1 session_id, ?2 user_id, ?3 pages, ?4 ingestion_time, then
 * the chosen optional columns in bit order. */
static inline int sqlite_sink_upsert_sql(char *out, size_t n, unsigned columns)
{
    char names[128] = "", params[64] = "", sets[256] = "";
    int nn = 0, np = 0, ns = 0, arg = 5;
    for (unsigned c = 0; c < 4; c++)
        if (columns >> c & 1) {
            const char *name = sqlite_sink_optional[c][0];
            nn += snprintf(names + nn, sizeof names - (size_t)nn, ", %s", name);
            np += snprintf(params + np, sizeof params - (size_t)np, ", ?%d", arg++);
            ns += snprintf(sets + ns, sizeof sets - (size_t)ns, ", %s = excluded.%s", name, name);
        }
    return snprintf(out, n, "INSERT INTO sessions (session_id, user_id, pages, ingestion_time%s) "
                    "VALUES (?1, ?2, ?3, ?4%s) ON CONFLICT (session_id, user_id) DO UPDATE "
                    "SET pages = excluded.pages, ingestion_time = excluded.ingestion_time%s",
                    names, params, sets);
}

#endif
