/*
 * session_json.c - JSON encodings of a closed session (see session_json.h).
 */
#include "sink/session_json.h"

#include <inttypes.h>

#include "record/timestamp.h"
#include "sink/sink.h"

void session_json_pages(buf *out, const closed_session *cs)
{
    buf_append_byte(out, '[');
    for (size_t i = 0; i < cs->n_pages; i++) {
        if (i) buf_append_byte(out, ',');
        buf_append_byte(out, '"');
        buf_append_json_escaped(out, cs->pages[i].data, cs->pages[i].len);
        buf_append_byte(out, '"');
    }
    buf_append_byte(out, ']');
}

void session_json_row(buf *out, const closed_session *cs, const char *ingestion_time,
                      unsigned columns)
{
    buf_printf(out, SESSION_JSON_LINE_PREFIX "%" PRId64 ",\"user_id\":", cs->session_id);
    if (cs->user) {
        buf_append_byte(out, '"');
        buf_append_json_escaped(out, cs->user, cs->user_len);
        buf_append_byte(out, '"');
    } else {
        buf_printf(out, "%" PRId64, cs->user_id);
    }
    buf_append_str(out, ",\"pages\":");
    session_json_pages(out, cs);
    buf_printf(out, ",\"ingestion_time\":\"%s\"", ingestion_time);
    char t[40];
    if (columns & SINK_COL_SESSION_START) {
        format_iso8601_us(cs->first_event_us, t);
        buf_printf(out, ",\"session_start\":\"%s\"", t);
    }
    if (columns & SINK_COL_SESSION_END) {
        format_iso8601_us(cs->last_event_us, t);
        buf_printf(out, ",\"session_end\":\"%s\"", t);
    }
    if (columns & SINK_COL_VISIT_COUNT) buf_printf(out, ",\"visit_count\":%" PRIu64, cs->visits);
    if (columns & SINK_COL_DURATION)
        buf_printf(out, ",\"duration\":%" PRId64, (cs->last_event_us - cs->first_event_us) / 1000);
    buf_append_str(out, "}\n");
}
