/*
 * main.c - the sessionizer command line.
 *
 *   sessionizer run --source URI --sink URI [options]
 *
 * Exit codes: 0 success (also after SIGINT/SIGTERM, once the commit in
 * flight is done), 1 the job failed (the message says why; the last
 * checkpoint is intact), 2 usage error.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/units.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "job/job.h"

#define MAX_PROPS 256

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(FILE *out)
{
    buf b;
    buf_init(&b);
    buf_append_str(&b,
        "usage: sessionizer run --source URI --sink URI [options]\n"
        "       sessionizer --help | --version\n"
        "\n"
        "Groups visits {\"user_id\", \"page\", \"event_time\"} into per-user event-time\n"
        "sessions and upserts each closed session under an id derived only from the\n"
        "input log, so that a replay rewrites the same rows (keyed idempotency).\n"
        "\n"
        "Sources (--source):\n");
    source_usage(&b);
    buf_append_str(&b, "    -             JSON lines from standard input\n\nSinks (--sink):\n");
    sink_usage(&b);
    buf_append_str(&b, "\nDead-letter outputs (--dlq, default jsonl:stderr):\n");
    deadletter_usage(&b);
    buf_append_str(&b,
        "\nOptions:\n"
        "  --checkpoint DIR        durable state; a restart resumes from it (default: none,\n"
        "                          start at the beginning of the input)\n"
        "  --gap DURATION          session gap G (default 50s)\n"
        "  --lateness DURATION     allowed lateness L behind the watermark (default 10s)\n"
        "  --until-end             stop at the end of the input and close every session\n"
        "  --dlq URI               where bad and late records go, with their reason\n"
        "  --max-pages N           pages kept per session, earliest first (default 10000)\n"
        "  --max-record-bytes N    longer records are dead-lettered (default 1MiB)\n"
        "  --commit-every N        commit after N records (default 100000)\n"
        "  --commit-interval DUR   and at least this often (default 1s)\n"
        "  --sink-opt KEY=VALUE    sink setting (repeatable), e.g. consistency=ONE\n"
        "  --no-create-schema      never create the sink's table or keyspace\n"
        "  -X KEY=VALUE            source property (repeatable), e.g. librdkafka settings\n"
        "  --group ID              Kafka consumer group (default sessionizer)\n"
        "  --start earliest|latest where a run without checkpoint starts (default earliest)\n"
        "  --progress              progress lines on stderr even when it is not a terminal\n"
        "  --stats                 measure and print the latency from a session's close\n"
        "                          to the sink's acknowledgement (p50, p99, max)\n"
        "  -q, --quiet             no progress and no summary\n"
        "  -h, --help              this help\n"
        "  -V, --version           the version\n"
        "\n"
        "Durations: 50s, 500ms, 2m, 1h. Exit status: 0 ok, 1 the job failed, 2 usage.\n"
        "Documentation: README.md and docs/ (semantics.md for the exact rules).\n");
    fwrite(b.data, 1, b.len, out);
    buf_free(&b);
}

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sessionizer: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'sessionizer --help' for more information.\n");
    return 2;
}

static void print_summary(const job_config *cfg, const job_result *r)
{
    const engine_stats *e = &r->engine;
    double rate = r->seconds > 0 ? (double)r->records_this_run / r->seconds : 0;
    fprintf(stderr,
            "sessionizer: %" PRIu64 " records: %" PRIu64 " visits in %" PRIu64
            " closed sessions, %" PRIu64 " visits in %" PRIu64 " open sessions, %" PRIu64
            " dead-lettered (%" PRIu64 " invalid, %" PRIu64 " late, %" PRIu64
            " over the session cap); %.2fs, %.0f records/s%s%s\n",
            r->records, e->pages_closed, e->sessions_closed, e->open_pages, e->open_sessions,
            r->dead_letters, r->invalid, e->rejected_late, e->rejected_cap, r->seconds, rate,
            r->resumed ? ", resumed from checkpoint" : "",
            r->stopped_by_signal ? ", stopped by signal after a final commit" : "");
    if (cfg->latency_stats) {
        const histogram *h = &r->close_to_ack_us;
        fprintf(stderr,
                "sessionizer: close-to-ack latency over %" PRIu64 " sessions: p50 %.1f ms, "
                "p99 %.1f ms, max %.1f ms\n",
                h->count, (double)histogram_quantile(h, 0.5) / 1000,
                (double)histogram_quantile(h, 0.99) / 1000, (double)h->max / 1000);
    }
    if (e->open_sessions > 0 && !cfg->checkpoint_dir)
        fprintf(stderr, "sessionizer: warning: %" PRIu64 " open sessions were not written: "
                "use --until-end to close them at the end of the input, or --checkpoint to "
                "keep them for the next run\n", e->open_sessions);
}

int main(int argc, char **argv)
{
    xalloc_keep_heap();
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("sessionizer %s\n", SESSIONIZER_VERSION);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "run") != 0) {
        if (argc < 2) {
            usage(stderr);
            return 2;
        }
        return usage_error("unknown command '%s' (the command is 'run')", argv[1]);
    }

    const char *src_props[MAX_PROPS + 1] = {0}, *sink_props[MAX_PROPS + 1] = {0};
    size_t n_src_props = 0, n_sink_props = 0;
    job_config cfg = {
        .dlq_uri = "jsonl:stderr",
        .engine = {.gap_us = 50000000, .lateness_us = 10000000, .max_pages = 10000},
        .source = {.props = src_props, .group = "sessionizer", .max_record_bytes = 1 << 20},
        .sink = {.props = sink_props, .create_schema = 1, .stop = &stop_requested},
        .commit_every = 100000,
        .commit_interval_ms = 1000,
        .progress = 1,
        .stop = &stop_requested,
    };
    int quiet = 0;
    enum { O_SOURCE = 256, O_SINK, O_CHECKPOINT, O_GAP, O_LATENESS, O_UNTIL_END, O_DLQ,
           O_MAX_PAGES, O_MAX_RECORD, O_COMMIT_EVERY, O_COMMIT_INTERVAL, O_SINK_OPT,
           O_NO_SCHEMA, O_GROUP, O_START, O_PROGRESS, O_STATS };
    static const struct option longopts[] = {
        {"source", required_argument, NULL, O_SOURCE},
        {"sink", required_argument, NULL, O_SINK},
        {"checkpoint", required_argument, NULL, O_CHECKPOINT},
        {"gap", required_argument, NULL, O_GAP},
        {"lateness", required_argument, NULL, O_LATENESS},
        {"until-end", no_argument, NULL, O_UNTIL_END},
        {"dlq", required_argument, NULL, O_DLQ},
        {"max-pages", required_argument, NULL, O_MAX_PAGES},
        {"max-record-bytes", required_argument, NULL, O_MAX_RECORD},
        {"commit-every", required_argument, NULL, O_COMMIT_EVERY},
        {"commit-interval", required_argument, NULL, O_COMMIT_INTERVAL},
        {"sink-opt", required_argument, NULL, O_SINK_OPT},
        {"no-create-schema", no_argument, NULL, O_NO_SCHEMA},
        {"group", required_argument, NULL, O_GROUP},
        {"start", required_argument, NULL, O_START},
        {"progress", no_argument, NULL, O_PROGRESS},
        {"stats", no_argument, NULL, O_STATS},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "X:qh", longopts, NULL)) != -1) {
        int64_t us;
        uint64_t n;
        switch (c) {
        case O_SOURCE: cfg.source_uri = optarg; break;
        case O_SINK: cfg.sink_uri = optarg; break;
        case O_CHECKPOINT: cfg.checkpoint_dir = optarg; break;
        case O_GAP:
        case O_LATENESS:
            /* Bounded to 100 years so that time arithmetic cannot overflow. */
            if (parse_duration_us(optarg, &us) || us > 3155760000000000LL ||
                (c == O_GAP && us == 0))
                return usage_error("invalid duration '%s' (examples: 50s, 500ms, 2m)", optarg);
            if (c == O_GAP) cfg.engine.gap_us = us;
            else cfg.engine.lateness_us = us;
            break;
        case O_UNTIL_END: cfg.until_end = 1; cfg.source.until_end = 1; break;
        case O_DLQ: cfg.dlq_uri = optarg; break;
        case O_MAX_PAGES:
            if (parse_count(optarg, &n) || n == 0 || n > 100000000)
                return usage_error("invalid --max-pages '%s' (1 to 100M)", optarg);
            cfg.engine.max_pages = (uint32_t)n;
            break;
        case O_MAX_RECORD:
            if (parse_count(optarg, &n) || n < 64 || n > (1u << 30))
                return usage_error("invalid --max-record-bytes '%s' (64 to 1GiB)", optarg);
            cfg.source.max_record_bytes = (size_t)n;
            break;
        case O_COMMIT_EVERY:
            if (parse_count(optarg, &n)) return usage_error("invalid --commit-every '%s'", optarg);
            cfg.commit_every = n;
            break;
        case O_COMMIT_INTERVAL:
            if (parse_duration_us(optarg, &us))
                return usage_error("invalid --commit-interval '%s'", optarg);
            cfg.commit_interval_ms = us / 1000;
            break;
        case O_SINK_OPT:
        case 'X': {
            if (!strchr(optarg, '='))
                return usage_error("'%s' is not KEY=VALUE", optarg);
            const char **props = c == 'X' ? src_props : sink_props;
            size_t *np = c == 'X' ? &n_src_props : &n_sink_props;
            if (*np >= MAX_PROPS) return usage_error("too many properties at '%s'", optarg);
            props[(*np)++] = optarg;
            break;
        }
        case O_NO_SCHEMA: cfg.sink.create_schema = 0; break;
        case O_GROUP: cfg.source.group = optarg; break;
        case O_START:
            if (strcmp(optarg, "earliest") != 0 && strcmp(optarg, "latest") != 0)
                return usage_error("--start takes 'earliest' or 'latest', not '%s'", optarg);
            cfg.source.start_latest = strcmp(optarg, "latest") == 0;
            break;
        case O_PROGRESS: cfg.progress = 2; break;
        case O_STATS: cfg.latency_stats = 1; break;
        case 'q': quiet = 1; cfg.progress = 0; break;
        case 'h': usage(stdout); return 0;
        default: return usage_error("%s", "invalid option");
        }
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!cfg.source_uri) return usage_error("%s", "--source is required (e.g. --source file:visits.jsonl)");
    if (!cfg.sink_uri) return usage_error("%s", "--sink is required (e.g. --sink sqlite:sessions.db)");
    if (cfg.commit_every == 0 && cfg.commit_interval_ms == 0)
        return usage_error("%s", "--commit-every and --commit-interval cannot both be 0");

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    job_result res;
    char err[1024] = "";
    int rc = job_run(&cfg, &res, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "sessionizer: error: %s\n", err);
        if (!quiet) print_summary(&cfg, &res);
        return 1;
    }
    if (!quiet) print_summary(&cfg, &res);
    return 0;
}
