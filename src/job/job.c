/*
 * job.c - a single instance: the driver of one task over the whole input
 * (task/stream_task.h; commit protocol in job.h).
 *
 * The task owns the state (engine, checkpoint, position, counters); this
 * loop owns the clock and the parts around it: it opens the source, the
 * sink and the dead-letter output, polls the source and hands the task what
 * it reads, decides when the task commits (every N records or T seconds)
 * and when it stops (a stop request, the end of the input, --memory-limit),
 * and publishes the figures and the progress line. Those decide *when*
 * state is saved or shown, never *what* a session contains, so results do
 * not depend on them. The engine's memory beyond its budget (the cold
 * store of --memory-limit) is this loop's policy too.
 */
#include "job/job.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint/checkpoint.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/testenv.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "job/coldstore.h"
#include "task/stream_task.h"

#define MAX_PARTITIONS 4096

typedef struct job {
    const job_config *cfg;
    source *src;
    sink *snk;
    deadletter *dlq;
    checkpoint *cp;  /* opened here (the default dead letters live in its directory); the task's */
    stream_task *task;
    engine *eng;     /* the task's, for the memory policy and the figures */
    job_result *res;
    char *err;
    size_t errlen;
    int failed; /* the cold store failed; err holds why */
    buf scratch;
    partition_info *parts;
    uint64_t memory_limit; /* resolved --memory-limit, bytes */
    /* State larger than memory: the engine's budget within memory_limit, and
     * the scratch file of cold users (opened at the first eviction). */
    uint64_t spill_budget;
    uint64_t spill_budget_max; /* the budget setup_spill gave: memory_check's raises stop there */
    /* The resident size before the checkpoint is opened: what the process
     * takes besides its state. Measured after, it counted the logs read for
     * the restore (28 MB of the long shape's after a kill): at a 36 MiB
     * limit the restarted job then did not spill at all, and stopped at 97
     * MiB (149 MiB peak). */
    uint64_t rss_base;
    uint64_t rss_at_cut; /* resident size when memory_check last lowered the budget */
    uint64_t commit_every; /* cfg->commit_every, or fewer visits when spilling (setup_spill) */
    coldstore *cold;
    char cold_err[512]; /* a cold store failure, kept from being overwritten */
    /* With cfg->metrics: the figures this thread keeps (plain counters) and
     * publishes at each commit and every second; base holds the engine's
     * counters as restored, since the metrics count from process start. */
    metrics_snapshot *m;
    engine_stats base;
    double last_publish;
} job;

static double now_s(void) { return (double)mono_us() / 1e6; }

/* ---- state larger than memory --------------------------------------------- */

/* In the checkpoint directory: on the disk the user chose for the job's
 * state (never /dev/shm-like defaults when a checkpoint says where). */
static const char *spill_dir(const job *j)
{
    const char *tmp = getenv("TMPDIR");
    return j->cfg->checkpoint_dir ? j->cfg->checkpoint_dir : tmp && *tmp ? tmp : "/tmp";
}

static int cold_failed(job *j, const char *what)
{
    int e = errno;
    snprintf(j->cold_err, sizeof j->cold_err,
             "the cold store of --memory-limit (an unlinked file in %s) failed: %s: %s%s",
             spill_dir(j), what, strerror(e),
             e == ENOSPC || e == EDQUOT
                 ? " (disk full; the checkpoint is intact: free space, or raise --memory-limit, "
                   "and restart)"
                 : "; the checkpoint is intact and a restart resumes from it");
    snprintf(j->err, j->errlen, "%s", j->cold_err);
    j->failed = 1;
    return -1;
}

static int cold_put(void *ctx, const user_key *user, const void *blob, size_t len, uint64_t *handle)
{
    job *j = ctx;
    (void)user;
    if (!j->cold) {
        j->cold = coldstore_open(spill_dir(j), j->cold_err, sizeof j->cold_err);
        if (!j->cold) {
            snprintf(j->err, j->errlen, "%s", j->cold_err);
            j->failed = 1;
            return -1;
        }
    }
    return coldstore_put(j->cold, blob, len, handle) ? cold_failed(j, "cannot write") : 0;
}

static int cold_get(void *ctx, uint64_t handle, size_t len, buf *out)
{
    job *j = ctx;
    return coldstore_get(j->cold, handle, len, out) ? cold_failed(j, "cannot read a user back") : 0;
}

static void cold_drop(void *ctx, uint64_t handle, size_t len)
{
    coldstore_drop(((job *)ctx)->cold, handle, len);
}

static void cold_prefetch(void *ctx, uint64_t handle, size_t len)
{
    job *j = ctx;
    if (j->cold) coldstore_prefetch(j->cold, handle, len);
}

/* Memory the job needs besides the engine's state, at first: buffers of the
 * source, sink, parser and checkpoint frame (which grows with the visits of
 * a commit), the cold store's write buffer, malloc's slack. An eighth of the
 * limit, 4 MiB at least; memory_check lowers the budget if that was not
 * enough. */
#define SPILL_RESERVE_MIN ((uint64_t)4 << 20)
#define SPILL_BUDGET_MIN ((uint64_t)1 << 20)
#define SPILL_COMMIT_MIN 1000
/* A visit's share of the frames: ~25 bytes in the change-log frame being
 * built, its sealed copy, the writer's queue and its batch, each a buffer
 * that doubles. */
#define SPILL_FRAME_BYTES 200

static void set_spill_budget(job *j, uint64_t budget)
{
    j->spill_budget = budget;
    engine_cold_store ops = {
        .ctx = j, .put = cold_put, .get = cold_get, .drop = cold_drop, .prefetch = cold_prefetch};
    engine_set_cold_store(j->eng, &ops, budget);
}

/* The engine spills cold users once its memory passes what the limit leaves
 * after the process's own (resident before any state) and the reserve. A
 * limit too small for that leaves only the stop of memory_check. */
static void setup_spill(job *j)
{
    /* undocumented in --help: tests and the fault campaign spill small
     * inputs with a budget of a few KB */
    long long forced = testenv_positive(TESTENV_SPILL_BUDGET);
    if (forced) {
        set_spill_budget(j, (uint64_t)forced);
        return;
    }
    uint64_t base = j->rss_base, limit = j->memory_limit;
    uint64_t reserve = limit / 8 > SPILL_RESERVE_MIN ? limit / 8 : SPILL_RESERVE_MIN;
    /* The frames of a commit are bounded by committing at least every
     * limit / 4096 visits (so they take about a twentieth of the limit: 25
     * visits a MiB of limit, ~0.7 ms of work), and the writer's queue to two
     * frames: otherwise the default 100k visits a commit took 10-16 MiB. */
    uint64_t visits = limit / 4096 > SPILL_COMMIT_MIN ? limit / 4096 : SPILL_COMMIT_MIN;
    if (j->cp) {
        if (j->commit_every > visits) j->commit_every = visits;
        uint64_t n = j->commit_every ? j->commit_every : 100000;
        checkpoint_set_max_queued(j->cp, 2 * SPILL_FRAME_BYTES / 8 * n);
        reserve += SPILL_FRAME_BYTES * n;
    }
    if (limit == 0 || base == 0 || limit <= base + reserve + SPILL_BUDGET_MIN) return;
    /* a limit the user chose: memory before speed (the default, half of the
     * machine, keeps the heap's speed) */
    if (j->cfg->memory_limit) memory_tight();
    set_spill_budget(j, limit - base - reserve);
    j->spill_budget_max = j->spill_budget;
}

/* At a commit: rewrite the cold store when dead records outweigh the live
 * ones (coldstore.h). A rename half done leaves handles in both files: the
 * job then stops (the checkpoint is the truth, the store a scratch). */
static int compact_cold(job *j)
{
    if (!j->cold || !coldstore_wants_compaction(j->cold)) return 0;
    if (coldstore_compact_begin(j->cold)) return 0; /* no room for a new file: later */
    int ok = engine_cold_rehandle(j->eng, coldstore_move, j->cold) == 0;
    return coldstore_compact_end(j->cold, ok) ? cold_failed(j, "cannot compact") : 0;
}

/* A failure of the task's that was the cold store's: name the store (a
 * snapshot or a restore reads cold users back), not the checkpoint. */
static int task_failed(job *j)
{
    if (j->cold_err[0]) snprintf(j->err, j->errlen, "%s", j->cold_err);
    return -1;
}

/* ---- metrics ------------------------------------------------------------- */

static void publish(job *j)
{
    if (!j->m) return;
    engine_stats e;
    engine_get_counters(j->eng, &e);
    metrics_snapshot *m = j->m;
    m->taken_wall_ms = status_wall_ms();
    m->visits_accepted = e.visits_applied - j->base.visits_applied;
    m->sessions_opened = e.sessions_opened;
    m->sessions_merged = e.sessions_merged;
    m->sessions_closed = e.sessions_closed - j->base.sessions_closed;
    m->sessions_open = e.open_sessions;
    m->pages_held = e.open_pages;
    m->watermark_us = engine_closing_watermark(j->eng);
    metrics_publish(j->cfg->metrics, m);
    j->last_publish = now_s();
}

/* ---- the task's commits -------------------------------------------------- */

static int commit(job *j)
{
    if (stream_task_commit(j->task)) return task_failed(j);
    if (compact_cold(j)) return -1;
    publish(j);
    return 0;
}

/* The last commit of a run: durable before the job returns, and told. */
static int commit_final(job *j)
{
    if (stream_task_suspend(j->task)) return task_failed(j);
    if (compact_cold(j)) return -1;
    publish(j);
    return 0;
}

/* ---- progress ------------------------------------------------------------ */

/* The lag per partition, for the metrics and the progress line (caught-up
 * states are not asked for: they come in-band, as marks). */
static void update_partitions(job *j, int print_progress, double rate)
{
    if (!j->src->ops->partitions) return;
    size_t n = j->src->ops->partitions(j->src, j->parts, MAX_PARTITIONS);
    if (n > MAX_PARTITIONS) n = MAX_PARTITIONS;
    int64_t behind = 0;
    int known = 1;
    for (size_t i = 0; i < n; i++) {
        if (j->parts[i].lag < 0) known = 0;
        else behind += j->parts[i].lag;
    }
    if (j->m) {
        _Static_assert(MAX_PARTITIONS <= METRICS_MAX_PARTITIONS, "a lag series per partition");
        for (size_t i = 0; i < n; i++) {
            j->m->lag_partition[i] = j->parts[i].partition;
            j->m->lag_records[i] = j->parts[i].lag;
        }
        j->m->n_lag = (int32_t)n;
    }
    if (!print_progress) return;
    /* On a terminal, a status line redrawn in place; elsewhere a log line. */
    int tty = isatty(STDERR_FILENO);
    buf *b = &j->scratch;
    buf_reset(b);
    buf_printf(b, "%s%" PRIu64 " records, %.0f/s", tty ? "\r\033[K" : "",
               stream_task_get_counts(j->task)->records, rate);
    if (known && n > 0) {
        buf_printf(b, ", %" PRId64 " behind", behind);
        if (n > 1 && n <= 16) {
            buf_append_str(b, " (");
            for (size_t i = 0; i < n; i++)
                buf_printf(b, "%sp%d:%" PRId64, i ? " " : "", j->parts[i].partition,
                           j->parts[i].lag);
            buf_append_str(b, ")");
        }
        if (behind > 0 && rate > 0) buf_printf(b, ", caught up in ~%.0fs", (double)behind / rate);
    }
    if (tty) {
        fwrite(b->data, 1, b->len, stderr);
    } else {
        buf_append_byte(b, 0);
        log_info("sessionizer", "%s", (const char *)b->data);
    }
}

/* ---- memory budget ------------------------------------------------------- */

/* How often the resident size is read: /proc/self/statm costs a few
 * microseconds, 4096 records take a millisecond or more, and they can grow
 * the open state by at most 4096 sessions (~1 MB at ~250 bytes each). */
#define MEMORY_CHECK_EVERY 4096

/* --memory-limit: the kernel never kills the job for its open sessions. Past
 * its budget the job commits what it has (the checkpoint then holds exactly
 * that state) and stops with a message naming the option. */
static int memory_check(job *j)
{
    uint64_t rss = memory_resident_bytes();
    /* Near the limit while spilling: the rest of the process took more than
     * the reserve (or malloc's free lists are fragmented). The engine's
     * budget gives up the overshoot and a margin, and the engine evicts down
     * to it now. Only a growth of the resident size lowers the budget, and
     * evicting does not grow it (freed memory is reused, not returned), so
     * this settles instead of spiralling down. */
    uint64_t margin = j->memory_limit / 16 > SPILL_BUDGET_MIN ? j->memory_limit / 16 : SPILL_BUDGET_MIN;
    /* A table's doubling (the user or the cold table) is one block, that
     * evicted sessions' scattered memory cannot provide: room for it is
     * made by evicting and giving the freed pages back, and the job stops
     * before it if that was not enough. */
    uint64_t next = engine_growth_bytes(j->eng, MEMORY_CHECK_EVERY);
    /* First, hot users give way to the user table's doubling: evicting them
     * costs less than the budget cut the doubling would cause. */
    if (next && j->spill_budget && rss + next + margin > j->memory_limit) {
        if (engine_evict_for_growth(j->eng, MEMORY_CHECK_EVERY) || j->failed) return -1;
        next = engine_growth_bytes(j->eng, MEMORY_CHECK_EVERY);
    }
    /* (a budget already at its least has nothing more to give: evicting
     * again at each look only folded every cold user's kept visits). A
     * doubling that does not fit cuts the budget even without growth of
     * the resident size: the stop below is the other way out (the long
     * shape's cold table, due at ~92k cold users, stopped one run in a few
     * 2 MiB short). */
    if (j->spill_budget > SPILL_BUDGET_MIN && rss + next + margin > j->memory_limit &&
        (rss > j->rss_at_cut + margin / 8 || rss + next > j->memory_limit)) {
        uint64_t cut = rss + next + margin - j->memory_limit + margin / 2;
        set_spill_budget(j, j->spill_budget > cut + SPILL_BUDGET_MIN ? j->spill_budget - cut
                                                                     : SPILL_BUDGET_MIN);
        if (engine_evict(j->eng, j->spill_budget - j->spill_budget / 8) || j->failed) return -1;
        memory_give_back();
        /* The next cut waits for the resident size to pass this one's,
         * not the size malloc_trim left: pages given back and touched
         * again are no growth (re-touching them cut the budget every few
         * checks, 22 -> 9 MiB of the long shape's 37 MiB limit), and by
         * more than a few pages (at the line, a few pages' growth cut the
         * budget at four looks in a row, 20 -> 15.6 MiB). */
        j->rss_at_cut = rss;
        rss = memory_resident_bytes();
        next = engine_growth_bytes(j->eng, MEMORY_CHECK_EVERY); /* cold users left the table */
    } else if (j->spill_budget < j->spill_budget_max &&
               rss + 2 * engine_growth_bytes(j->eng, 8 * MEMORY_CHECK_EVERY) + margin <= j->memory_limit) {
        /* Below the line of a cut, the budget takes back a quarter of a
         * margin at each look: what a cut evicted stays in the heap as
         * holes among live blocks (the resident size does not go down), and
         * these were idle, the budget never coming back up (the long shape's
         * settled at 12-18 MiB of a 36 MiB limit from run to run, 7-9 MiB of
         * free chunks beside, and its folds went 355k-990k). Now it climbs
         * back into them until the resident size reaches the line again: ~10
         * cuts and ~35 raises a run, 19-20 MiB, 232-247k folds. The room a
         * table's doubling takes is kept twice over for the users of 8 looks
         * ahead (without it, the cold table's doubling due at ~92k cold
         * users found no room and stopped the run; kept once, now that the
         * cold table grows where it is, the resident size came nearer the
         * line and its cuts piled up: 1.0-1.24M folds in four runs of six at
         * a quarter, 243k-549k now). */
        uint64_t up = margin / 4;
        set_spill_budget(j, j->spill_budget_max - j->spill_budget > up ? j->spill_budget + up
                                                                       : j->spill_budget_max);
    }
    if (j->memory_limit == 0 || rss + next <= j->memory_limit) return 0;
    if (commit_final(j)) return -1;
    engine_stats st;
    engine_get_stats(j->eng, &st);
    char grow[96] = "";
    if (rss <= j->memory_limit)
        snprintf(grow, sizeof grow, " (with the next growth of the engine's tables, %.0f MiB)",
                 (double)next / 1048576.0);
    snprintf(j->err, j->errlen,
             "resident memory reached %.0f MiB%s, over --memory-limit %.0f MiB, with %" PRIu64
             " open sessions holding %" PRIu64 " pages, those of %" PRIu64 " users spilled to "
             "disk (each still takes about 75-110 bytes of memory). Stopped after a "
             "commit: %s. Raise "
             "--memory-limit, or lower --gap, --max-pages or --max-session-bytes, which bound "
             "what a session holds",
             (double)rss / 1048576.0, grow, (double)j->memory_limit / 1048576.0, st.open_sessions,
             st.open_pages, st.cold_users,
             j->cp ? "the checkpoint is intact and a restart resumes from it"
                   : "the closed sessions are written; without --checkpoint the open ones are "
                     "lost");
    return -1;
}

/* ---- main loop ----------------------------------------------------------- */

/* The component a URI names, for the metrics' labels (a static string). */
static const char *scheme_name(const char *uri)
{
    static const char *const known[] = {"kafka", "file", "postgresql", "sqlite", "jsonl", "cql",
                                        "null"};
    if (strcmp(uri, "-") == 0) return "stdin";
    if (strncmp(uri, "postgres:", 9) == 0) return "postgresql";
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        size_t n = strlen(known[i]);
        if (strncmp(uri, known[i], n) == 0 && uri[n] == ':') return known[i];
    }
    return "other";
}

static int run_loop(job *j)
{
    const job_config *cfg = j->cfg;
    stream_task *task = j->task;
    const stream_task_counts *n = stream_task_get_counts(task);
    double start = now_s(), last_commit = start, last_progress = start, last_partitions = start;
    uint64_t since_commit = 0, at_last_progress = n->records;
    int tty = isatty(STDERR_FILENO);
    double progress_every = cfg->progress == 0 ? 0 : tty ? 1.0 : cfg->progress == 2 ? 10.0 : 0;
    for (;;) {
        if (cfg->stop && *cfg->stop) {
            j->res->stopped_by_signal = 1;
            status_set_phase(cfg->status, PHASE_STOPPING);
            return commit_final(j);
        }
        raw_record rec;
        source_mark mark;
        int st = j->src->ops->poll(j->src, &rec, &mark, 100, j->err, j->errlen);
        if (st == SOURCE_ERROR) return -1;
        if (st == SOURCE_RECORD) {
            if (j->m) {
                int32_t p = rec.pos.partition < 0 ? 0
                          : rec.pos.partition >= METRICS_MAX_PARTITIONS ? METRICS_MAX_PARTITIONS - 1
                                                                        : rec.pos.partition;
                j->m->records_read[p]++;
                if (p >= j->m->n_read_partitions) j->m->n_read_partitions = p + 1;
            }
            since_commit++;
            if (stream_task_add_record(task, &rec)) return task_failed(j);
            if (n->records_this_run % MEMORY_CHECK_EVERY == 0 && memory_check(j)) return -1;
        } else if (st == SOURCE_MARK) {
            if (stream_task_add_mark(task, &mark)) return task_failed(j);
            continue;
        }
        if (st == SOURCE_END) {
            /* every record and mark applied before the end's own closes */
            if (stream_task_process_all(task)) return task_failed(j);
            update_partitions(j, 0, 0);
            if (cfg->until_end && stream_task_close_sessions(task)) return task_failed(j);
            return commit_final(j);
        }
        /* Clock checks are cheap but not free: look every 64 records (at
         * 200 records/s, every third of a second). */
        if (st == SOURCE_IDLE || (n->records & 63) == 0) {
            /* Nothing more is coming right now: what waits in the queue,
             * the marks included, is applied (and its closed sessions
             * committed in time), not held until the input resumes. */
            if (st == SOURCE_IDLE && stream_task_process_all(task)) return task_failed(j);
            double t = now_s();
            status_beat(cfg->status);
            int show = progress_every > 0 && t - last_progress >= progress_every;
            /* The lag also when busy; and asking is how the Kafka source
             * notices, in a quiet stream, that an outage is over. */
            if (st == SOURCE_IDLE || show || t - last_partitions >= 1.0) {
                double rate = (double)(n->records - at_last_progress) / (t - last_progress);
                update_partitions(j, show, rate);
                last_partitions = t;
                if (show) last_progress = t, at_last_progress = n->records;
            }
            if (j->m && t - j->last_publish >= 1.0) publish(j);
            stream_task_report_durable(task);
            if ((cfg->commit_interval_ms > 0 && (t - last_commit) * 1000 >= (double)cfg->commit_interval_ms &&
                 (since_commit > 0 || n->unflushed_sessions > 0))) {
                /* also when only sessions closed: a caught-up flag can close
                 * them while no record arrives, and they must reach the sink */
                if (commit(j)) return -1;
                last_commit = t;
                since_commit = 0;
            }
        }
        if (j->commit_every && since_commit >= j->commit_every) {
            if (commit(j)) return -1;
            last_commit = now_s();
            since_commit = 0;
        }
    }
}

int job_run(const job_config *cfg, job_result *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    double start = now_s();
    job j = {.cfg = cfg, .res = res, .err = err, .errlen = errlen, .commit_every = cfg->commit_every};
    buf_init(&j.scratch);
    int rc = -1;
    /* What the source, the sink and the dead-letter output share (context.h):
     * it outlives them, so it lives here. Through its status they report
     * their reachability, retries and errors, and show signs of life while
     * they wait. */
    job_context ctx = {.stop = cfg->stop, .status = cfg->status};
    source_options so = cfg->source;
    sink_options ko = cfg->sink;
    so.ctx = ko.ctx = &ctx;
    if (cfg->status) {
        io_status_name(&cfg->status->source, scheme_name(cfg->source_uri));
        io_status_name(&cfg->status->sink, scheme_name(cfg->sink_uri));
    }
    if (cfg->metrics) {
        j.m = xcalloc(1, sizeof *j.m);
        j.m->started_wall_ms = status_wall_ms();
        j.m->checkpoint_bytes = -1;
        j.m->watermark_us = INT64_MIN;
    }
    j.src = source_open(cfg->source_uri, &so, err, errlen);
    if (!j.src) goto out;
    j.snk = sink_open(cfg->sink_uri, &ko, err, errlen);
    if (!j.snk) goto out;
    j.rss_base = memory_resident_bytes();
    if (cfg->checkpoint_dir) {
        j.cp = checkpoint_open(cfg->checkpoint_dir, err, errlen);
        if (!j.cp) goto out;
    }
    /* Dead letters never go to the log by default: they live with the
     * checkpoint, whose state includes the file's length (a restart rewinds
     * it) and whose deletion starts both over. */
    if (cfg->dlq_uri) {
        j.dlq = deadletter_open(cfg->dlq_uri, cfg->dlq_props, &ctx, err, errlen);
    } else if (cfg->checkpoint_dir) {
        buf_reset(&j.scratch);
        buf_printf(&j.scratch, "jsonl:%s/deadletter.jsonl%c", cfg->checkpoint_dir, 0);
        j.dlq = deadletter_open((const char *)j.scratch.data, cfg->dlq_props, &ctx, err,
                                errlen);
    } else {
        snprintf(err, errlen, "no dead-letter output: give --dlq (e.g. --dlq jsonl:deadletter.jsonl) "
                 "or --checkpoint DIR (dead letters then go to DIR/deadletter.jsonl)");
    }
    if (!j.dlq) goto out;
    /* One task over the whole input: the source is its input, the
     * checkpoint its state. */
    stream_task_config tc = {.engine = cfg->engine,
                             .records = &cfg->records,
                             .columns = cfg->sink.columns,
                             .input_uri = cfg->source_uri,
                             .checkpoint_dir = cfg->checkpoint_dir,
                             .dlq_in_checkpoint = !cfg->dlq_uri,
                             .close_to_ack_us = cfg->latency_stats ? &res->close_to_ack_us : NULL};
    tc.engine.string_users = cfg->records.user_type == USER_STRING;
    j.task = stream_task_new(&tc,
                             &(stream_task_parts){.input = j.src, .out = j.snk, .dlq = j.dlq,
                                                  .cp = j.cp, .m = j.m},
                             err, errlen);
    j.eng = stream_task_engine(j.task);
    j.parts = xcalloc(MAX_PARTITIONS, sizeof *j.parts);
    j.memory_limit = cfg->memory_limit ? cfg->memory_limit : memory_default_limit();
    /* the default budget keeps the heap's speed (xalloc.h); a limit the
     * user chose takes memory before speed (setup_spill) */
    if (!cfg->memory_limit) xalloc_huge_pages();
    setup_spill(&j); /* before a restore, which may need it too */
    if (stream_task_restore(j.task)) {
        task_failed(&j);
        goto out;
    }
    engine_get_counters(j.eng, &j.base);
    publish(&j);
    status_set_phase(cfg->status, PHASE_RUNNING);
    rc = memory_check(&j) ? -1 : run_loop(&j);
    if (j.m) publish(&j); /* the last figures, also after a failure */
out:
    status_set_phase(cfg->status, PHASE_STOPPING);
    if (j.task) {
        const stream_task_counts *n = stream_task_get_counts(j.task);
        res->records = n->records;
        res->dead_letters = n->dead_letters;
        res->invalid = n->invalid;
        res->records_this_run = n->records_this_run;
        res->commits = n->commits;
        res->resumed = n->resumed;
        engine_get_stats(j.eng, &res->engine);
    }
    if (j.cp) res->checkpoint_bytes = checkpoint_disk_bytes(j.cp);
    if (j.cp) res->checkpoint_written = checkpoint_bytes_written(j.cp);
    res->seconds = now_s() - start;
    coldstore_stats cst;
    coldstore_get_stats(j.cold, &cst);
    res->spill_budget = j.spill_budget;
    res->memory_limit = j.memory_limit;
    res->spill_written = cst.written;
    res->spill_read = cst.read;
    res->spill_read_ahead = cst.read_ahead;
    res->spill_file_bytes = cst.file_bytes;
    checkpoint_close(j.cp); /* its writer thread first, as before the task's engine */
    stream_task_close(j.task);
    coldstore_close(j.cold);
    if (j.dlq) j.dlq->ops->close(j.dlq);
    if (j.snk) j.snk->ops->close(j.snk);
    if (j.src) j.src->ops->close(j.src);
    status_set_phase(cfg->status, PHASE_DONE);
    free(j.m);
    free(j.parts);
    buf_free(&j.scratch);
    job_context_release(&ctx);
    return rc;
}
