/*
 * sink.c - the sink registry: maps a URI scheme to its sink_ops.
 *
 * Adding a sink is one file plus one line in the table below.
 */
#include "sink/sink.h"

#include <assert.h>
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
        if (!target) continue;
        if (!registry[i]->settings && opts && opts->props && opts->props[0]) {
            /* ignored, it would be a setting that silently does nothing */
            snprintf(err, errlen, "the %s sink takes no --sink-opt settings (given '%s')",
                     registry[i]->scheme, opts->props[0]);
            return NULL;
        }
        return registry[i]->open(target, opts, err, errlen);
    }
    snprintf(err, errlen, "unknown sink '%s' (see --help for the supported sinks)", uri);
    return NULL;
}

void sink_usage(buf *out)
{
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        buf_printf(out, "    %s\n", registry[i]->usage);
}

const sink_ops *sink_registered(size_t i)
{
    return i < sizeof registry / sizeof *registry ? registry[i] : NULL;
}

const sink_setting *sink_setting_find(const sink_ops *ops, const char *prop, const char **value,
                                      char *err, size_t errlen)
{
    const char *eq = strchr(prop, '=');
    size_t kl = eq ? (size_t)(eq - prop) : strlen(prop);
    for (const sink_setting *st = ops->settings; st && st->key; st++)
        if (eq && strlen(st->key) == kl && strncmp(st->key, prop, kl) == 0) {
            *value = eq + 1;
            return st;
        }
    buf known;
    buf_init(&known);
    for (const sink_setting *st = ops->settings; st && st->key; st++)
        buf_printf(&known, "%s%s=%s", known.len ? ", " : "", st->key, st->value);
    if (!eq)
        snprintf(err, errlen, "%s: option '%.64s' is not key=value (known: %.*s)", ops->scheme,
                 prop, (int)known.len, known.data ? (const char *)known.data : "");
    else
        snprintf(err, errlen, "%s: unknown option '%.*s' (known: %.*s)", ops->scheme,
                 (int)(kl > 64 ? 64 : kl), prop, (int)known.len,
                 known.data ? (const char *)known.data : "");
    buf_free(&known);
    return NULL;
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

void flush_tickets_finish(flush_tickets *t, pthread_cond_t *progress, uint64_t ticket,
                          const char *failure)
{
    assert(ticket == t->done + 1); /* in ticket order, one at a time */
    if (failure && !t->failed) {
        t->failed = ticket;
        snprintf(t->err, sizeof t->err, "%s", failure);
    }
    t->done = ticket;
    pthread_cond_broadcast(progress);
}

int flush_tickets_wait(flush_tickets *t, pthread_mutex_t *mu, pthread_cond_t *progress,
                       uint64_t ticket, char *err, size_t errlen)
{
    pthread_mutex_lock(mu);
    while (t->done < ticket) pthread_cond_wait(progress, mu);
    int failed = t->failed && t->failed <= ticket;
    if (failed) snprintf(err, errlen, "%s", t->err);
    pthread_mutex_unlock(mu);
    return failed ? -1 : 0;
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
