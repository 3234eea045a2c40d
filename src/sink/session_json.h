/*
 * session_json.h - the JSON spellings of a closed session shared by sinks:
 * the pages array (SQLite stores it as TEXT) and the full JSONL row.
 */
#ifndef SESSIONIZER_SESSION_JSON_H
#define SESSIONIZER_SESSION_JSON_H

#include "common/buf.h"
#include "engine/closed_session.h"

/* ["A.html","B.html"] */
void session_json_pages(buf *out, const closed_session *cs);
/* {"session_id":..,"user_id":..,"pages":[..],"ingestion_time":".."}\n, with
 * the columns chosen (sink.h SINK_COL_*) after: "session_start" and
 * "session_end" as ISO-8601 UTC strings, "visit_count", "duration" in
 * milliseconds. A string user is a JSON string. */
void session_json_row(buf *out, const closed_session *cs, const char *ingestion_time,
                      unsigned columns);
/* How every row starts. */
#define SESSION_JSON_LINE_PREFIX "{\"session_id\":"

#endif
