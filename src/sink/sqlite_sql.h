/*
 * sqlite_sql.h - the SQL of the SQLite sink: the database settings, the
 * table, and the upsert. Shared with bench/sqlite_limit.c, which must run
 * exactly the sink's statements to measure SQLite's share of file -> sqlite:.
 */
#ifndef SESSIONIZER_SQLITE_SQL_H
#define SESSIONIZER_SQLITE_SQL_H

#define SQLITE_SINK_SETUP                                                                  \
    "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"            \
    "PRAGMA cache_size=-262144;"                                                           \
    "CREATE TABLE IF NOT EXISTS sessions ("                                                \
    " session_id INTEGER NOT NULL, user_id INTEGER NOT NULL,"                              \
    " pages TEXT NOT NULL, ingestion_time TEXT NOT NULL,"                                  \
    " PRIMARY KEY (session_id, user_id));"

#define SQLITE_SINK_UPSERT                                                                 \
    "INSERT INTO sessions (session_id, user_id, pages, ingestion_time) "                   \
    "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (session_id, user_id) DO UPDATE "                 \
    "SET pages = excluded.pages, ingestion_time = excluded.ingestion_time"

#endif
