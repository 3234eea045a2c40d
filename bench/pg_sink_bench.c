/*
 * pg_sink_bench.c - upserts/s into PostgreSQL: the sink's batching against
 * the alternatives it was chosen over. Driven by bench/pg_sink.sh, which
 * starts a private server and builds this file against the core library.
 *
 *   pg_sink_bench URI MODE N TXN [BATCH]
 *
 * Writes N sessions (ids spread over the int64 range, 1 to 7 pages of ~9
 * bytes each, ~4 on average), committing every TXN rows, twice: into an
 * empty table ("insert": every row new) and again ("update": every row a
 * conflict, as a replay after checkpoint loss is). Prints one line per phase:
 *   MODE BATCH insert|update ROWS SECONDS ROWS_PER_S
 *
 * MODE:
 *   sink    the real sink (postgresql.c) through sink.h, batch_rows=BATCH
 *   single  one prepared INSERT ... ON CONFLICT per row
 *   values  a prepared multi-row INSERT ... VALUES ($1,$2,$3,$4),(...) of BATCH rows
 *   copy    COPY into a temporary staging table, then one INSERT ... SELECT
 *           ... ON CONFLICT from it, per transaction (the practical limit)
 *   copyraw COPY into the staging table only, no upsert (the raw ingest limit)
 */
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "sink/sink.h"

#define UPSERT_TAIL                                                                             \
    " ON CONFLICT (session_id, user_id) DO UPDATE SET pages = EXCLUDED.pages, "                \
    "ingestion_time = EXCLUDED.ingestion_time"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Session i: its id, user and pages. */
static int64_t sid_of(size_t i) { return (int64_t)mix(i); }
static int64_t uid_of(size_t i) { return (int64_t)(i % 100000); }
static size_t npages_of(size_t i) { return 1 + mix(i ^ 0xABCDEF) % 7; }
static void page_of(size_t i, size_t k, char out[32])
{
    snprintf(out, 32, "p%03u.html", (unsigned)(mix(i * 31 + k) % 1000));
}

static void die(PGconn *c, const char *what)
{
    fprintf(stderr, "pg_sink_bench: %s: %s", what, PQerrorMessage(c));
    exit(1);
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) die(c, sql);
    PQclear(r);
}

static void literal_of(size_t i, buf *b)
{
    char p[32];
    buf_append_byte(b, '{');
    for (size_t k = 0; k < npages_of(i); k++) {
        page_of(i, k, p);
        if (k) buf_append_byte(b, ',');
        buf_printf(b, "\"%s\"", p);
    }
    buf_append_byte(b, '}');
}

static void run_sink(const char *uri, size_t n, size_t txn, size_t batch)
{
    char opt[64], err[2048];
    snprintf(opt, sizeof opt, "batch_rows=%zu", batch);
    const char *props[] = {opt, NULL};
    sink_options o = {.props = props, .create_schema = 1};
    sink *s = sink_open(uri, &o, err, sizeof err);
    if (!s) {
        fprintf(stderr, "pg_sink_bench: %s\n", err);
        exit(1);
    }
    char names[7][32];
    page_ref refs[7];
    for (size_t i = 0; i < n; i++) {
        size_t np = npages_of(i);
        for (size_t k = 0; k < np; k++) {
            page_of(i, k, names[k]);
            refs[k] = (page_ref){names[k], (uint32_t)strlen(names[k])};
        }
        closed_session cs = {.session_id = sid_of(i), .user_id = uid_of(i), .pages = refs,
                             .n_pages = np};
        if (s->ops->write(s, &cs, err, sizeof err) ||
            ((i + 1) % txn == 0 && s->ops->flush(s, err, sizeof err))) {
            fprintf(stderr, "pg_sink_bench: %s\n", err);
            exit(1);
        }
    }
    if (s->ops->flush(s, err, sizeof err)) {
        fprintf(stderr, "pg_sink_bench: %s\n", err);
        exit(1);
    }
    s->ops->close(s);
}

static void run_single(PGconn *c, size_t n, size_t txn)
{
    static const Oid types[4] = {20, 20, 1009, 1184};
    PGresult *r = PQprepare(c, "one",
                            "INSERT INTO sessions (session_id, user_id, pages, ingestion_time) "
                            "VALUES ($1, $2, $3, $4)" UPSERT_TAIL,
                            4, types);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) die(c, "prepare");
    PQclear(r);
    buf lit;
    buf_init(&lit);
    char sid[24], uid[24], ts[32];
    for (size_t i = 0; i < n; i++) {
        if (i % txn == 0) {
            exec_ok(c, "BEGIN");
            sink_now_iso8601(ts);
        }
        buf_reset(&lit);
        literal_of(i, &lit);
        buf_append_byte(&lit, 0);
        snprintf(sid, sizeof sid, "%lld", (long long)sid_of(i));
        snprintf(uid, sizeof uid, "%lld", (long long)uid_of(i));
        const char *vals[4] = {sid, uid, (const char *)lit.data, ts};
        r = PQexecPrepared(c, "one", 4, vals, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) die(c, "upsert");
        PQclear(r);
        if ((i + 1) % txn == 0 || i + 1 == n) exec_ok(c, "COMMIT");
    }
    buf_free(&lit);
}

static void run_values(PGconn *c, size_t n, size_t txn, size_t batch)
{
    /* Prepared for BATCH rows; the last, shorter statement of each
     * transaction gets its own one-off statement. */
    buf q, lits;
    buf_init(&q);
    buf_init(&lits);
    char **vals = calloc(3 * batch + 1, sizeof *vals);
    char (*nums)[24] = calloc(2 * batch, sizeof *nums);
    char ts[32];
    size_t prepared_for = 0;
    for (size_t start = 0; start < n; start += txn) {
        size_t end = start + txn < n ? start + txn : n;
        exec_ok(c, "BEGIN");
        sink_now_iso8601(ts);
        for (size_t i = start; i < end; i += batch) {
            size_t m = i + batch < end ? batch : end - i;
            const char *name = m == batch ? "many" : "";
            if (m != batch || prepared_for != batch) {
                buf_reset(&q);
                buf_append_str(&q, "INSERT INTO sessions (session_id, user_id, pages, "
                                   "ingestion_time) VALUES ");
                for (size_t k = 0; k < m; k++)
                    buf_printf(&q, "%s($%zu::int8, $%zu::int8, $%zu::text[], $%zu::timestamptz)",
                               k ? "," : "", 3 * k + 2, 3 * k + 3, 3 * k + 4, (size_t)1);
                buf_append_str(&q, UPSERT_TAIL);
                buf_append_byte(&q, 0);
                PGresult *r = PQprepare(c, name, (const char *)q.data, 0, NULL);
                if (PQresultStatus(r) != PGRES_COMMAND_OK) die(c, "prepare");
                PQclear(r);
                if (m == batch) prepared_for = batch;
            }
            buf_reset(&lits);
            size_t *offs = malloc(m * sizeof *offs);
            for (size_t k = 0; k < m; k++) {
                offs[k] = lits.len;
                literal_of(i + k, &lits);
                buf_append_byte(&lits, 0);
            }
            vals[0] = ts;
            for (size_t k = 0; k < m; k++) {
                snprintf(nums[2 * k], 24, "%lld", (long long)sid_of(i + k));
                snprintf(nums[2 * k + 1], 24, "%lld", (long long)uid_of(i + k));
                vals[3 * k + 1] = nums[2 * k];
                vals[3 * k + 2] = nums[2 * k + 1];
                vals[3 * k + 3] = (char *)lits.data + offs[k];
            }
            free(offs);
            PGresult *r = PQexecPrepared(c, name, (int)(3 * m + 1), (const char *const *)vals,
                                         NULL, NULL, 0);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) die(c, "upsert");
            PQclear(r);
        }
        exec_ok(c, "COMMIT");
    }
    free(vals);
    free(nums);
    buf_free(&q);
    buf_free(&lits);
}

static void run_copy(PGconn *c, size_t n, size_t txn, int merge)
{
    exec_ok(c, "CREATE TEMP TABLE IF NOT EXISTS staging (session_id bigint, user_id bigint, "
               "pages text[], ingestion_time timestamptz)");
    buf line;
    buf_init(&line);
    char ts[32];
    for (size_t start = 0; start < n; start += txn) {
        size_t end = start + txn < n ? start + txn : n;
        exec_ok(c, "BEGIN");
        sink_now_iso8601(ts);
        PGresult *r = PQexec(c, "COPY staging FROM STDIN");
        if (PQresultStatus(r) != PGRES_COPY_IN) die(c, "COPY");
        PQclear(r);
        buf_reset(&line);
        for (size_t i = start; i < end; i++) {
            /* COPY text format: the array literal needs no COPY escaping here
             * (no tabs, newlines or backslashes in the generated pages). */
            buf_printf(&line, "%lld\t%lld\t", (long long)sid_of(i), (long long)uid_of(i));
            literal_of(i, &line);
            buf_printf(&line, "\t%s\n", ts);
            if (line.len > (1 << 16)) {
                if (PQputCopyData(c, (const char *)line.data, (int)line.len) != 1) die(c, "copy");
                buf_reset(&line);
            }
        }
        if (line.len && PQputCopyData(c, (const char *)line.data, (int)line.len) != 1)
            die(c, "copy");
        if (PQputCopyEnd(c, NULL) != 1) die(c, "copy end");
        r = PQgetResult(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) die(c, "copy result");
        PQclear(r);
        while ((r = PQgetResult(c))) PQclear(r);
        if (merge)
            exec_ok(c, "INSERT INTO sessions SELECT * FROM staging" UPSERT_TAIL);
        exec_ok(c, "TRUNCATE staging");
        exec_ok(c, "COMMIT");
    }
    buf_free(&line);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: pg_sink_bench URI sink|single|values|copy|copyraw N TXN [BATCH]\n");
        return 2;
    }
    const char *uri = argv[1], *mode = argv[2];
    size_t n = strtoul(argv[3], NULL, 10), txn = strtoul(argv[4], NULL, 10);
    size_t batch = argc > 5 ? strtoul(argv[5], NULL, 10) : 0;
    PGconn *c = PQconnectdb(uri);
    if (PQstatus(c) != CONNECTION_OK) die(c, "connect");
    exec_ok(c, "SET client_min_messages = warning");
    exec_ok(c, "DROP TABLE IF EXISTS sessions");
    exec_ok(c, "CREATE TABLE sessions (session_id bigint, user_id bigint, pages text[], "
               "ingestion_time timestamptz, PRIMARY KEY (session_id, user_id))");
    exec_ok(c, "CHECKPOINT");
    for (int phase = 0; phase < 2; phase++) {
        exec_ok(c, "DEALLOCATE ALL");
        double t0 = now_s();
        if (strcmp(mode, "sink") == 0) run_sink(uri, n, txn, batch);
        else if (strcmp(mode, "single") == 0) run_single(c, n, txn);
        else if (strcmp(mode, "values") == 0) run_values(c, n, txn, batch);
        else if (strcmp(mode, "copy") == 0) run_copy(c, n, txn, 1);
        else if (strcmp(mode, "copyraw") == 0) run_copy(c, n, txn, 0);
        else {
            fprintf(stderr, "pg_sink_bench: unknown mode %s\n", mode);
            return 2;
        }
        double dt = now_s() - t0;
        PGresult *r = PQexec(c, "SELECT count(*) FROM sessions");
        const char *rows = PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?";
        printf("%s %zu %s %s %.3f %.0f\n", mode, batch, phase ? "update" : "insert", rows, dt,
               (double)n / dt);
        fflush(stdout);
        PQclear(r);
    }
    PQfinish(c);
    return 0;
}
