/*
 * log.c - timestamped, levelled log lines on standard error (see log.h).
 *
 * Not built on buf: the logger must work when an allocation has just failed
 * (xalloc reports it here) and on librdkafka's threads, so it formats into
 * fixed stack buffers and escapes by itself.
 */
#include "common/log.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/utf8.h"

static log_format current_format = LOG_FORMAT_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
_Static_assert(sizeof level_names / sizeof *level_names == LOG_ERROR + 1, "a name per level");

void log_set_format(log_format f) { current_format = f; }

int log_parse_format(const char *name, log_format *out)
{
    if (strcmp(name, "text") == 0) *out = LOG_FORMAT_TEXT;
    else if (strcmp(name, "json") == 0) *out = LOG_FORMAT_JSON;
    else return -1;
    return 0;
}

typedef struct line {
    char *p;
    size_t len, cap; /* cap leaves room for the longest ending */
    int full;
} line;

static void put(line *l, const char *s, size_t n)
{
    if (l->full) return;
    if (n > l->cap - l->len) {
        n = l->cap - l->len;
        l->full = 1;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

static void put_str(line *l, const char *s) { put(l, s, strlen(s)); }

/* Copies text, one character at a time so that a cut never splits a UTF-8
 * sequence; control characters become a space (text) or an escape (JSON).
 * In JSON, bytes of an invalid UTF-8 message become '?' (JSON is UTF-8). */
static void put_escaped(line *l, const char *s, int json)
{
    static const char hex[] = "0123456789abcdef";
    int ascii_only = json && !utf8_valid(s, strlen(s));
    for (const unsigned char *c = (const unsigned char *)s; *c && !l->full;) {
        char tmp[8];
        size_t n = 1;
        if (*c < 0x20 || *c == 0x7f) {
            if (!json) tmp[0] = ' ';
            else if (*c == '\n') memcpy(tmp, "\\n", n = 2);
            else if (*c == '\t') memcpy(tmp, "\\t", n = 2);
            else memcpy(tmp, (char[6]){'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 15]}, n = 6);
            c++;
        } else if (json && (*c == '"' || *c == '\\')) {
            tmp[0] = '\\', tmp[1] = (char)*c++, n = 2;
        } else if (*c >= 0x80 && ascii_only) {
            tmp[0] = '?', c++;
        } else if (*c >= 0x80) {
            tmp[0] = (char)*c++;
            while ((*c & 0xC0) == 0x80 && n < 4) tmp[n++] = (char)*c++;
        } else {
            tmp[0] = (char)*c++;
        }
        if (n > l->cap - l->len) {
            l->full = 1;
            break;
        }
        put(l, tmp, n);
    }
}

size_t log_format_line(char *out, log_format f, long long time_ms, log_level level,
                       const char *component, const char *msg)
{
    static const char cut[] = " [truncated]";
    static const char json_end[] = "\"}\n";
    assert(level >= LOG_DEBUG && level <= LOG_ERROR);
    int json = f == LOG_FORMAT_JSON;
    line l = {.p = out, .cap = LOG_LINE_MAX - (sizeof cut - 1) - (sizeof json_end - 1)};

    char stamp[80];
    time_t secs = (time_t)(time_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(time_ms % 1000));
    if (json) {
        put_str(&l, "{\"time\":\"");
        put_str(&l, stamp);
        put_str(&l, "\",\"level\":\"");
        put_str(&l, level_names[level]);
        if (component) {
            put_str(&l, "\",\"component\":\"");
            put_escaped(&l, component, 1);
        }
        put_str(&l, "\",\"msg\":\"");
        put_escaped(&l, msg, 1);
    } else {
        put_str(&l, stamp);
        put_str(&l, " ");
        put_str(&l, level_names[level]);
        put_str(&l, " ");
        if (component) {
            put_escaped(&l, component, 0);
            put_str(&l, ": ");
        }
        put_escaped(&l, msg, 0);
    }
    /* The endings fit: cap kept room for them. */
    int truncated = l.full;
    l.cap = LOG_LINE_MAX;
    l.full = 0;
    if (truncated) put_str(&l, cut);
    put_str(&l, json ? json_end : "\n");
    assert(!l.full && l.len <= LOG_LINE_MAX);
    return l.len;
}

void log_vmsg(log_level level, const char *component, const char *fmt, va_list ap)
{
    int saved_errno = errno;
    char msg[LOG_LINE_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char out[LOG_LINE_MAX];
    size_t n = log_format_line(out, current_format, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
                               level, component, msg);
    /* One write per line: lines from several threads do not interleave. */
    for (size_t done = 0; done < n;) {
        ssize_t w = write(STDERR_FILENO, out + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break; /* nowhere else to say it */
        done += (size_t)w;
    }
    errno = saved_errno;
}

void log_msg(log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, component, fmt, ap);
    va_end(ap);
}
