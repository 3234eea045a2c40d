/*
 * log.h - the one way this program writes to its log (standard error).
 *
 * Every line carries a UTC timestamp (milliseconds) and a level, in one of
 * two formats chosen once at start-up (--log-format):
 *
 *   text  2026-12-01T03:04:05.123Z info kafka: cluster reachable again after 2.1 s
 *   json  {"time":"2026-12-01T03:04:05.123Z","level":"info","component":"kafka","msg":"..."}
 *
 * The component says which part speaks: "sessionizer" for the job and the
 * command line (the summary line among them), "kafka" (librdkafka's own
 * messages included), "postgresql" (libpq's server notices included), "cql",
 * "output". A message is one line: newlines and other control characters
 * become spaces in text and escapes in JSON.
 *
 * Callable from any thread (librdkafka logs from its own) and when memory is
 * exhausted: a line is built in a fixed buffer on the stack, without
 * allocating, and written with one write(2). Bound: a line is at most
 * LOG_LINE_MAX bytes; a longer message is cut and ends in "[truncated]".
 */
#ifndef SESSIONIZER_LOG_H
#define SESSIONIZER_LOG_H

#include <stdarg.h>
#include <stddef.h>

#define LOG_LINE_MAX 8192

typedef enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;
typedef enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON } log_format;

/* Set before any thread that logs starts. */
void log_set_format(log_format f);
/* "text" or "json" to a format; -1 for anything else. */
int log_parse_format(const char *name, log_format *out);

/* Builds the line into out (at most LOG_LINE_MAX bytes, newline included),
 * returns its length; time_ms is milliseconds since the epoch. For tests. */
size_t log_format_line(char *out, log_format f, long long time_ms, log_level level,
                       const char *component, const char *msg);

void log_msg(log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(log_level level, const char *component, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define log_info(component, ...) log_msg(LOG_INFO, component, __VA_ARGS__)
#define log_warn(component, ...) log_msg(LOG_WARN, component, __VA_ARGS__)
#define log_error(component, ...) log_msg(LOG_ERROR, component, __VA_ARGS__)

#endif
