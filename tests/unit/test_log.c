/*
 * test_log.c - log lines: the exact text and JSON layouts, one line per
 * message whatever it contains, valid JSON (checked with yajl, the project's
 * JSON parser) for hostile messages, and the length bound.
 */
#include <stdlib.h>
#include <yajl/yajl_tree.h>

#include "check.h"
#include "common/log.h"

/* 2026-12-01T03:04:05.123Z */
static const long long T = 1796094245123LL;

static char out[LOG_LINE_MAX + 1];

static const char *line(log_format f, log_level l, const char *comp, const char *msg)
{
    size_t n = log_format_line(out, f, T, l, comp, msg);
    CHECK(n <= LOG_LINE_MAX);
    out[n] = 0;
    return out;
}

static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl && nl[1] == 0;
}

/* Parses a JSON line and returns its "msg", or NULL if it is not valid JSON
 * with the four fields. The result lives until the next call. */
static char msg_buf[LOG_LINE_MAX];
static const char *str_of(yajl_val v)
{
    const char *s = v ? YAJL_GET_STRING(v) : NULL;
    return s ? s : "";
}

static const char *json_msg(const char *s, const char *want_level)
{
    char e[256];
    yajl_val v = yajl_tree_parse(s, e, sizeof e);
    if (!v) return NULL;
    const char *tp[] = {"time", NULL}, *lp[] = {"level", NULL}, *mp[] = {"msg", NULL};
    yajl_val t = yajl_tree_get(v, tp, yajl_t_string), l = yajl_tree_get(v, lp, yajl_t_string),
             m = yajl_tree_get(v, mp, yajl_t_string);
    const char *r = NULL;
    if (t && l && m && strcmp(str_of(t), "2026-12-01T03:04:05.123Z") == 0 &&
        strcmp(str_of(l), want_level) == 0) {
        snprintf(msg_buf, sizeof msg_buf, "%s", str_of(m));
        r = msg_buf;
    }
    yajl_tree_free(v);
    return r;
}

static const char *or_empty(const char *s) { return s ? s : ""; }

int main(void)
{
    CHECK_STR(line(LOG_FORMAT_TEXT, LOG_INFO, "kafka", "cluster reachable again after 2.1 s"),
              "2026-12-01T03:04:05.123Z info kafka: cluster reachable again after 2.1 s\n");
    CHECK_STR(line(LOG_FORMAT_TEXT, LOG_ERROR, NULL, "x"), "2026-12-01T03:04:05.123Z error x\n");
    CHECK_STR(line(LOG_FORMAT_TEXT, LOG_WARN, "postgresql", "a\nb\tc\r"),
              "2026-12-01T03:04:05.123Z warn postgresql: a b c \n");
    CHECK_STR(line(LOG_FORMAT_JSON, LOG_WARN, "cql", "say \"hi\"\\\n"),
              "{\"time\":\"2026-12-01T03:04:05.123Z\",\"level\":\"warn\",\"component\":\"cql\","
              "\"msg\":\"say \\\"hi\\\"\\\\\\n\"}\n");
    CHECK_STR(line(LOG_FORMAT_JSON, LOG_DEBUG, NULL, "m"),
              "{\"time\":\"2026-12-01T03:04:05.123Z\",\"level\":\"debug\",\"msg\":\"m\"}\n");
    /* epoch and millisecond edge */
    size_t n = log_format_line(out, LOG_FORMAT_TEXT, 999, LOG_INFO, NULL, "");
    out[n] = 0;
    CHECK_STR(out, "1970-01-01T00:00:00.999Z info \n");

    /* Hostile messages stay one valid line. */
    const char *msgs[] = {"\x01\x02\x1f\x7f", "caf\xc3\xa9 \xe2\x82\xac", "bad \xff\xfe utf8 \xc3",
                          "\"\\\"", ""};
    for (size_t i = 0; i < sizeof msgs / sizeof *msgs; i++) {
        CHECK(one_line(line(LOG_FORMAT_TEXT, LOG_INFO, "c", msgs[i])));
        CHECK(one_line(line(LOG_FORMAT_JSON, LOG_INFO, "c", msgs[i])));
        CHECK(json_msg(out, "info") != NULL);
    }
    CHECK_STR(or_empty(json_msg(line(LOG_FORMAT_JSON, LOG_INFO, "c", "caf\xc3\xa9 \xe2\x82\xac"), "info")),
              "caf\xc3\xa9 \xe2\x82\xac");
    CHECK_STR(or_empty(json_msg(line(LOG_FORMAT_JSON, LOG_INFO, "c", "bad \xff\xfe utf8"), "info")),
              "bad ?? utf8");

    /* The bound: a long message is cut, marked, and still one valid line,
     * without splitting a UTF-8 sequence. */
    static char big[3 * LOG_LINE_MAX];
    for (size_t i = 0; i + 2 < sizeof big; i += 2) big[i] = '\xc3', big[i + 1] = '\xa9';
    big[sizeof big - 1] = 0;
    for (int f = 0; f < 2; f++) {
        n = log_format_line(out, (log_format)f, T, LOG_ERROR, "c", big);
        out[n] = 0;
        CHECK(n <= LOG_LINE_MAX && n > LOG_LINE_MAX - 64);
        CHECK(one_line(out));
        CHECK(strstr(out, " [truncated]") != NULL);
    }
    CHECK(json_msg(out, "error") != NULL);
    CHECK(strstr(line(LOG_FORMAT_TEXT, LOG_INFO, "c", "short"), "truncated") == NULL);

    log_format f;
    CHECK(log_parse_format("json", &f) == 0 && f == LOG_FORMAT_JSON);
    CHECK(log_parse_format("text", &f) == 0 && f == LOG_FORMAT_TEXT);
    CHECK(log_parse_format("xml", &f) == -1);
    return check_summary("test_log");
}
