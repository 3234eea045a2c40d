/*
 * main.c - the sessionizer command line.
 *
 *   sessionizer run --source URI --sink URI [options]
 *   sessionizer config [options]     the effective configuration, as YAML
 *
 * Exit codes: 0 success (also after SIGINT/SIGTERM, once the commit in
 * flight is done), 1 the job failed (the message says why; the last
 * checkpoint is intact), 2 usage error.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/options.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/xalloc.h"
#include "job/job.h"
#include "metrics/http.h"
#include "task/scaleout.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void print_help(FILE *out)
{
    buf b;
    buf_init(&b);
    options_help(&b);
    fwrite(b.data, 1, b.len, out);
    buf_free(&b);
}

static void print_summary(const job_config *cfg, const job_result *r)
{
    const engine_stats *e = &r->engine;
    double rate = r->seconds > 0 ? (double)r->records_this_run / r->seconds : 0;
    char future[48] = ""; /* rare: named only when it happened */
    if (e->rejected_future)
        snprintf(future, sizeof future, ", %" PRIu64 " too far in the future", e->rejected_future);
    /* A visit held by the future rule (engine.h) is still to be placed, like
     * those of open sessions: counted with them, so that the counts add up. */
    log_info("sessionizer",
            "%" PRIu64 " records: %" PRIu64 " visits in %" PRIu64
            " closed sessions, %" PRIu64 " visits in %" PRIu64 " open sessions, %" PRIu64
            " dead-lettered (%" PRIu64 " invalid, %" PRIu64 " late, %" PRIu64
            " over the session cap%s); %.2fs, %.0f records/s%s%s",
            r->records, e->pages_closed, e->sessions_closed, e->open_pages + e->held_visits,
            e->open_sessions,
            r->dead_letters, r->invalid, e->rejected_late, e->rejected_cap, future, r->seconds, rate,
            r->resumed ? ", resumed from checkpoint" : "",
            r->stopped_by_signal ? ", stopped by signal after a final commit" : "");
    if (cfg->latency_stats) {
        const histogram *h = &r->close_to_ack_us;
        log_info("sessionizer",
                "close-to-ack latency over %" PRIu64 " sessions: p50 %.1f ms, "
                "p99 %.1f ms, max %.1f ms",
                h->count, (double)histogram_quantile(h, 0.5) / 1000,
                (double)histogram_quantile(h, 0.99) / 1000, (double)h->max / 1000);
        if (cfg->checkpoint_dir)
            log_info("sessionizer",
                     "checkpoint: %" PRId64 " bytes written in %" PRIu64 " commits (%.1f per "
                     "record read), %" PRId64 " bytes on disk",
                     r->checkpoint_written, r->commits,
                     r->records_this_run ? (double)r->checkpoint_written / (double)r->records_this_run
                                         : 0.0,
                     r->checkpoint_bytes);
        log_info("sessionizer", "peak resident memory %.1f MiB (--memory-limit %.1f MiB)",
                 (double)memory_peak_resident_bytes() / 1048576.0,
                 (double)r->memory_limit / 1048576.0);
    }
    if (e->users_evicted > 0)
        log_info("sessionizer",
                 "--memory-limit: %" PRIu64 " times a user's sessions were spilled to disk and %" PRIu64
                 " read back (%" PRIu64 " users on disk at the end, %" PRIu64 " of the reads "
                 "queued ahead); %" PRIu64 " visits kept for users on disk without reading "
                 "them back (%" PRIu64 " new users' first, read back too), written %" PRIu64
                 " times into their users' records; the cold store wrote %.1f MiB and read "
                 "%.1f MiB",
                 e->users_evicted, e->users_loaded, e->cold_users, r->spill_read_ahead,
                 e->cold_appends, e->cold_births, e->cold_folds,
                 (double)r->spill_written / 1048576.0, (double)r->spill_read / 1048576.0);
    if (e->open_sessions > 0 && !cfg->checkpoint_dir)
        log_warn("sessionizer", "%" PRIu64 " open sessions were not written: use --until-end "
                 "to close them at the end of the input, or --checkpoint to keep them for the "
                 "next run", e->open_sessions);
}

int main(int argc, char **argv)
{
    xalloc_keep_heap();
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        print_help(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--help-man") == 0) {
        buf b;
        buf_init(&b);
        options_man(&b);
        fwrite(b.data, 1, b.len, stdout);
        buf_free(&b);
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("sessionizer %s\n", SESSIONIZER_VERSION);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "config") == 0) {
        /* The effective configuration, as a file that --config reads back. */
        cli_options opts;
        int prc = options_parse(&opts, argc, argv, 2, OPTIONS_PRINT);
        if (prc == 0) {
            buf b;
            buf_init(&b);
            options_print(&opts, &b, 1);
            fwrite(b.data, 1, b.len, stdout);
            buf_free(&b);
        }
        options_free(&opts);
        return prc == 2 ? 2 : 0;
    }
    if (argc < 2 || strcmp(argv[1], "run") != 0) {
        if (argc < 2) {
            print_help(stderr);
            return 2;
        }
        return usage_error("unknown command '%s' (the commands are 'run' and 'config')", argv[1]);
    }

    /* First of all, so that a stop request during start-up (reading the
     * configuration, opening the metrics port) is a stop, not a kill: the
     * job sees the flag at its first check and ends with its checkpoint. */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    cli_options opts;
    int prc = options_parse(&opts, argc, argv, 2, OPTIONS_RUN);
    if (prc != 0) {
        options_free(&opts);
        return prc == 1 ? 0 : 2;
    }
    if (!opts.job.dlq_uri && !opts.job.checkpoint_dir) {
        options_free(&opts);
        return usage_error("%s", "--dlq is required without --checkpoint: dead letters need a "
                           "place of their own (e.g. --dlq jsonl:deadletter.jsonl); with "
                           "--checkpoint DIR they go to DIR/deadletter.jsonl");
    }
    job_config cfg = opts.job;
    cfg.stop = &stop_requested;
    int quiet = opts.quiet;
    /* Static: the metrics server's thread reads them until it is stopped. */
    static job_status status;
    static metrics_shared shared;
    status_init(&status);
    cfg.status = &status;
    metrics_server *srv = NULL;
    if (opts.metrics_listen) {
        metrics_shared_init(&shared, &status);
        shared.ready_max_lag = (int64_t)opts.ready_max_lag;
        shared.version = SESSIONIZER_VERSION;
        cfg.metrics = &shared;
        char merr[512];
        srv = metrics_server_start(opts.metrics_listen, &shared, merr, sizeof merr);
        if (!srv) {
            log_error("sessionizer", "%s", merr);
            options_free(&opts);
            return 1;
        }
        /* The port as bound: with port 0, the one the system picked. */
        int host_len = (int)(strrchr(opts.metrics_listen, ':') - opts.metrics_listen);
        log_info("sessionizer", "serving http://%.*s:%d/metrics, /healthz and /readyz", host_len,
                 opts.metrics_listen, metrics_server_port(srv));
    }

    char err[1024] = "";
    if (opts.scale_out) {
        scaleout_config so = {.job = &cfg,
                              .repartition_partitions = (int32_t)opts.repartition_partitions,
                              .state_uri = opts.state,
                              .keyed_input = opts.keyed_input};
        int src = scaleout_run(&so, err, sizeof err);
        if (src != 0) log_error("sessionizer", "%s", err);
        metrics_server_stop(srv);
        options_free(&opts);
        return src != 0 ? 1 : 0;
    }
    job_result res;
    int rc = job_run(&cfg, &res, err, sizeof err);
    if (rc != 0) log_error("sessionizer", "%s", err);
    if (!quiet) print_summary(&cfg, &res);
    metrics_server_stop(srv);
    options_free(&opts);
    return rc != 0 ? 1 : 0;
}
