/*
 * sink.c - the sink registry: maps a URI scheme to its sink_ops.
 *
 * Adding a sink is one file plus one line in the table below.
 */
#include "sink/sink.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "common/uri.h"

extern const sink_ops sqlite_sink_ops;
extern const sink_ops jsonl_sink_ops;
extern const sink_ops null_sink_ops;
extern const sink_ops postgresql_sink_ops, postgres_sink_ops;
extern const sink_ops cql_sink_ops;

static const sink_ops *const registry[] = {
    &sqlite_sink_ops,
    &jsonl_sink_ops,
    &null_sink_ops,
    &postgresql_sink_ops, &postgres_sink_ops,
    &cql_sink_ops,
};

sink *sink_open(const char *uri, const sink_options *opts, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++) {
        const char *target = uri_after_scheme(uri, registry[i]->scheme);
        if (target) return registry[i]->open(target, opts, err, errlen);
    }
    snprintf(err, errlen, "unknown sink '%s' (see --help for the supported sinks)", uri);
    return NULL;
}

void sink_usage(buf *out)
{
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        buf_printf(out, "    %s\n", registry[i]->usage);
}

const char *const sink_column_names[SINK_N_OPTIONAL] = {"session_start", "session_end",
                                                        "visit_count", "duration"};

int sink_parse_columns(const char *list, unsigned *out, char *err, size_t errlen)
{
    *out = 0;
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        int k = 0;
        while (k < SINK_N_OPTIONAL &&
               !(strlen(sink_column_names[k]) == n && strncmp(p, sink_column_names[k], n) == 0))
            k++;
        if (k == SINK_N_OPTIONAL) {
            snprintf(err, errlen, "--columns: unknown column '%.*s' (known: session_start, "
                     "session_end, visit_count, duration)", (int)(n > 64 ? 64 : n), p);
            return -1;
        }
        *out |= 1u << k;
        p += n;
        if (*p == ',') p++;
    }
    return 0;
}

long long sink_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sink_now_iso8601(char out[32])
{
    long long ms = sink_now_ms();
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}
