/*
 * engine_order.c - the engine alone, fed the Kafka benchmark's visits in the
 * order a consumer sees them, beside the same visits interleaved record by
 * record.
 *
 *   build-bench/engine-order [CHUNK] [ROUNDS]
 *
 * Why: end to end from Kafka, the job's thread is the limit, and Kafka hands
 * over a partition's records in large batches (a fetch holds up to
 * max.partition.fetch.bytes, about 12k of these records, 250 s of event
 * time). The closing watermark is the minimum over partitions, so on that
 * order far more sessions are open at once and a user's visits from
 * different partitions meet out of order, which costs the engine more per
 * visit than the interleaved order of a file. This program isolates that
 * cost: visits are generated in memory with the formulas of bench/kafka.sh
 * (16 partitions x 45000, 20k users), so no parsing and no I/O is timed, and
 * delivered CHUNK records per partition round-robin (default 6000). It
 * prints ns per visit for both orders, the median of ROUNDS (default 5), and
 * a checksum of the closed sessions so that A/B runs of an engine change can
 * be checked for equal output. An idle second thread runs throughout: in a
 * job the engine shares the process with librdkafka's threads, and glibc's
 * malloc locks its arena only in a multi-threaded process; the allocator is
 * tuned as in sessionizer's main() (xalloc_keep_heap).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/xalloc.h"
#include "engine/engine.h"

#define PARTS 16
#define PER 45000
#define USERS 20000

typedef struct feed {
    visit *v;
    size_t n;
    char *text;
} feed;

static void make_feed(feed *f, size_t chunk)
{
    f->n = (size_t)PARTS * PER;
    f->v = calloc(f->n, sizeof *f->v);
    f->text = calloc(f->n, 32);
    if (!f->v || !f->text) abort();
    const int64_t base = (int64_t)1676851200 + 3600;
    size_t k = 0;
    for (size_t start = 0; start < PER; start += chunk)
        for (int p = 0; p < PARTS; p++)
            for (size_t i = start; i < start + chunk && i < PER; i++) {
                int64_t t = base + (int64_t)(i / 50) + (int64_t)((i * 7 + (size_t)p) % 9 / 2) - 2;
                char *page = f->text + k * 32;
                int len = snprintf(page, 32, "/product/%zu.html", (i * 31 + (size_t)p) % 5000);
                f->v[k++] = (visit){.user_id = (int64_t)((i * 7919 + (size_t)p * 104729) % USERS),
                                    .event_time_us = t * 1000000,
                                    .page = page,
                                    .page_len = (uint32_t)len,
                                    .pos = {.append_ts_ms = 0, .partition = p, .offset = (int64_t)i}};
            }
}

typedef struct tally {
    uint64_t sessions, pages, sum;
} tally;

static int on_close(void *ctx, const closed_session *cs)
{
    tally *t = ctx;
    t->sessions++;
    t->pages += cs->n_pages;
    t->sum = t->sum * 31 + cs->session_id + cs->n_pages;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double run(const feed *f, tally *t)
{
    engine_config cfg = {.gap_us = 50000000, .lateness_us = 10000000, .max_pages = 10000,
                         .track_dirty = 0};
    engine_callbacks cb = {.ctx = t, .on_close = on_close};
    *t = (tally){0};
    double t0 = now_s();
    engine *e = engine_new(&cfg, &cb);
    for (int p = 0; p < PARTS; p++) engine_set_caught_up(e, p, 0);
    for (size_t i = 0; i < f->n; i++) {
        if (i + 4 < f->n) engine_prefetch(e, f->v[i + 4].user_id, 0);
        engine_apply(e, &f->v[i]);
    }
    engine_close_all(e);
    engine_free(e);
    return now_s() - t0;
}

static void *idle_thread(void *arg)
{
    return arg;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    size_t chunk = argc > 1 ? strtoul(argv[1], NULL, 10) : 6000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (chunk == 0 || rounds < 1 || rounds > 100) {
        fprintf(stderr, "usage: engine-order [CHUNK>0] [ROUNDS 1..100]\n");
        return 2;
    }
    xalloc_keep_heap(); /* as sessionizer's main() does */
    pthread_t idle; /* glibc malloc now knows the process has threads */
    if (pthread_create(&idle, NULL, idle_thread, NULL) != 0) return 1;
    pthread_join(idle, NULL);
    feed batched, interleaved;
    make_feed(&batched, chunk);
    make_feed(&interleaved, 1);
    double tb[100], ti[100];
    tally a, b;
    for (int r = 0; r < rounds; r++) {
        tb[r] = run(&batched, &a);
        ti[r] = run(&interleaved, &b);
    }
    qsort(tb, (size_t)rounds, sizeof *tb, cmp_double);
    qsort(ti, (size_t)rounds, sizeof *ti, cmp_double);
    double nb = tb[rounds / 2] * 1e9 / (double)batched.n, ni = ti[rounds / 2] * 1e9 / (double)interleaved.n;
    printf("batched by %zu per partition: %.0f ns/visit, %llu sessions, %llu pages, checksum %016llx\n",
           chunk, nb, (unsigned long long)a.sessions, (unsigned long long)a.pages,
           (unsigned long long)a.sum);
    printf("interleaved:                  %.0f ns/visit, %llu sessions, %llu pages, checksum %016llx\n",
           ni, (unsigned long long)b.sessions, (unsigned long long)b.pages, (unsigned long long)b.sum);
    printf("batched / interleaved: %.2fx\n", nb / ni);
    free(batched.v);
    free(batched.text);
    free(interleaved.v);
    free(interleaved.text);
    return 0;
}
