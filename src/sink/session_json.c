/*
 * session_json.c - JSON encodings of a closed session (see session_json.h).
 */
#include "sink/session_json.h"

#include <inttypes.h>

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

void session_json_row(buf *out, const closed_session *cs, const char *ingestion_time)
{
    buf_printf(out, SESSION_JSON_LINE_PREFIX "%" PRId64 ",\"user_id\":%" PRId64 ",\"pages\":",
               cs->session_id, cs->user_id);
    session_json_pages(out, cs);
    buf_printf(out, ",\"ingestion_time\":\"%s\"}\n", ingestion_time);
}
