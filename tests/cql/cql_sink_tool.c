/*
 * cql_sink_tool.c - drives the cql sink (src/sink/cql.c) the way the job
 * does, without the rest of the job: open, write sessions, flush, close.
 * The client tests (test_cql_client.py) use it to write known sessions
 * under injected faults, and bench/bench_cql.sh to measure throughput and
 * CPU per write.
 *
 *   cql_sink_tool URI [-o KEY=VALUE]... [--no-create-schema] [-n SESSIONS]
 *                 [--first K] [--pages P] [--flush-every M] [--stats]
 *
 * Session k (first <= k < first + n) has session_id = mix(k), user_id =
 * 1 + k % 1000 and P pages "/k/0", "/k/1", ...; mix() spreads the ids over
 * the token ring as real (hashed) session ids are. Exit status 0 only when
 * every flush succeeded; the first error goes to stderr. --stats prints one
 * JSON line: sessions, seconds, sessions_per_s, cpu_us_per_write.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/xalloc.h"
#include "sink/sink.h"

static int64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL; /* splitmix64 */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return (int64_t)(x ^ (x >> 31));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    const char *props[64];
    int nprops = 0, create_schema = 1, stats = 0;
    long long n = 100, first = 0, pages = 3, flush_every = 0;
    static const struct option longopts[] = {
        {"no-create-schema", no_argument, NULL, 'S'}, {"first", required_argument, NULL, 'f'},
        {"pages", required_argument, NULL, 'p'},      {"flush-every", required_argument, NULL, 'F'},
        {"stats", no_argument, NULL, 's'},            {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "o:n:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'o':
            if (nprops < 63) props[nprops++] = optarg;
            break;
        case 'n': n = atoll(optarg); break;
        case 'S': create_schema = 0; break;
        case 'f': first = atoll(optarg); break;
        case 'p': pages = atoll(optarg); break;
        case 'F': flush_every = atoll(optarg); break;
        case 's': stats = 1; break;
        default: return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: cql_sink_tool URI [-o KEY=VALUE]... [--no-create-schema] "
                        "[-n N] [--first K] [--pages P] [--flush-every M] [--stats]\n");
        return 2;
    }
    props[nprops] = NULL;
    sink_options opts = {.props = props, .create_schema = create_schema};
    char err[2048];
    sink *s = sink_open(argv[optind], &opts, err, sizeof err);
    if (!s) {
        fprintf(stderr, "cql_sink_tool: open: %s\n", err);
        return 1;
    }
    page_ref *pr = xcalloc((size_t)(pages > 0 ? pages : 1), sizeof *pr);
    char (*text)[48] = xcalloc((size_t)(pages > 0 ? pages : 1), sizeof *text);
    double t0 = now_s(), c0 = cpu_s();
    int rc = 0;
    for (long long k = first; k < first + n && rc == 0; k++) {
        for (long long p = 0; p < pages; p++) {
            int len = snprintf(text[p], sizeof text[p], "/%lld/%lld", k, p);
            pr[p] = (page_ref){.data = text[p], .len = (uint32_t)len};
        }
        closed_session cs = {.session_id = mix((uint64_t)k),
                             .user_id = 1 + k % 1000,
                             .first_event_us = k * 1000000,
                             .last_event_us = k * 1000000 + 1,
                             .pages = pr,
                             .n_pages = (size_t)pages};
        if (s->ops->write(s, &cs, err, sizeof err)) {
            fprintf(stderr, "cql_sink_tool: write: %s\n", err);
            rc = 1;
        } else if (flush_every > 0 && (k - first + 1) % flush_every == 0 &&
                   s->ops->flush(s, err, sizeof err)) {
            fprintf(stderr, "cql_sink_tool: flush: %s\n", err);
            rc = 1;
        }
    }
    if (rc == 0 && s->ops->flush(s, err, sizeof err)) {
        fprintf(stderr, "cql_sink_tool: flush: %s\n", err);
        rc = 1;
    }
    double secs = now_s() - t0, cpu = cpu_s() - c0;
    if (stats && rc == 0)
        printf("{\"sessions\": %lld, \"seconds\": %.3f, \"sessions_per_s\": %.0f, "
               "\"cpu_us_per_write\": %.2f}\n",
               n, secs, secs > 0 ? (double)n / secs : 0.0, n > 0 ? cpu * 1e6 / (double)n : 0.0);
    s->ops->close(s);
    free(pr);
    free(text);
    return rc;
}
