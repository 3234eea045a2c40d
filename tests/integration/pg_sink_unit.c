/*
 * pg_sink_unit.c - the PostgreSQL sink against a real server, through the
 * sink interface alone (no engine, no CLI).
 *
 * Run by pg_sink_unit.sh, which starts a private server (lib/pg_server.sh)
 * and exports PG_URI (superuser over the socket), PG_URI_TCP (with password),
 * PG_SERVER_DIR and PG_SERVER_SCRIPT (to stop and restart the server).
 *
 * Each check prints "ok - ..." or "not ok - ..."; the exit code is the number
 * of failures (capped), so CTest reports any of them.
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/context.h"
#include "sink/sink.h"

static int failures;
static const char *uri, *uri_tcp, *server_dir, *server_script, *port, *socket_dir;
static PGconn *admin;

__attribute__((format(printf, 2, 3))) static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s - ", ok ? "ok" : "not ok");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!ok) failures++;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void admin_connect(void)
{
    if (admin && PQstatus(admin) == CONNECTION_OK) return;
    if (admin) PQfinish(admin);
    admin = PQconnectdb(uri);
    if (PQstatus(admin) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect as admin: %s", PQerrorMessage(admin));
        exit(99);
    }
    PQclear(PQexec(admin, "SET client_min_messages = warning"));
}

static void sql(const char *q)
{
    admin_connect();
    PGresult *r = PQexec(admin, q);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "SQL failed: %s\n%s", q, PQerrorMessage(admin));
        exit(99);
    }
    PQclear(r);
}

/* First column of the first row as text ("" when no row). */
static char *sql_value(const char *q)
{
    static char out[4096];
    admin_connect();
    PGresult *r = PQexec(admin, q);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "SQL failed: %s\n%s", q, PQerrorMessage(admin));
        exit(99);
    }
    snprintf(out, sizeof out, "%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return out;
}

static void server(const char *cmd)
{
    char line[2048];
    snprintf(line, sizeof line, "%s %s %s", server_script, cmd, server_dir);
    if (system(line) != 0) {
        fprintf(stderr, "server %s failed\n", cmd);
        exit(99);
    }
    if (admin) {
        PQfinish(admin);
        admin = NULL;
    }
}

static sink *open_sink(const char *u, const char *const *props, int create, char *err,
                       size_t errlen)
{
    sink_options o = {.props = props, .create_schema = create};
    err[0] = 0;
    return sink_open(u, &o, err, errlen);
}

static int flush_sink(sink *s, char *err, size_t errlen)
{
    err[0] = 0;
    return s->ops->flush(s, err, errlen);
}

static int write_session(sink *s, int64_t sid, int64_t uid, const char *const *pages, size_t n,
                         char *err, size_t errlen)
{
    page_ref refs[16];
    for (size_t i = 0; i < n; i++) refs[i] = (page_ref){pages[i], (uint32_t)strlen(pages[i])};
    closed_session cs = {.session_id = sid, .user_id = uid, .pages = refs, .n_pages = n};
    return s->ops->write(s, &cs, err, errlen);
}

static void test_roundtrip(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS sessions");
    sink *s = open_sink(uri, NULL, 1, err, sizeof err);
    check(s != NULL, "open creates the table (%s)", err);
    if (!s) return;
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "0") == 0, "table exists and is empty");

    static const char *const weird[] = {"A.html", "quote\"d", "back\\slash", "a,b",  "{brace}",
                                        "NULL",   "",         "  spaced ",   "été ✓", "x'y"};
    check(write_session(s, 4249952624734199298LL, 1, weird, 10, err, sizeof err) == 0, "write");
    static const char *const one[] = {"D.html"};
    check(write_session(s, -7, INT64_MAX, one, 1, err, sizeof err) == 0, "write extreme ids");
    check(write_session(s, 9, 2, NULL, 0, err, sizeof err) == 0, "write a session with no pages");
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "0") == 0,
          "nothing visible before flush");
    check(flush_sink(s, err, sizeof err) == 0, "flush (%s)", err);
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "3") == 0, "3 rows after flush");
    char *pages = sql_value("SELECT array_to_json(pages)::text FROM sessions WHERE session_id = "
                            "4249952624734199298 AND user_id = 1");
    const char *want = "[\"A.html\",\"quote\\\"d\",\"back\\\\slash\",\"a,b\",\"{brace}\",\"NULL\","
                       "\"\",\"  spaced \",\"été ✓\",\"x'y\"]";
    check(strcmp(pages, want) == 0, "pages round-trip exactly: %s", pages);
    check(strcmp(sql_value("SELECT pages[6] IS NOT NULL AND pages[6] = 'NULL' FROM sessions "
                           "WHERE session_id = 4249952624734199298"), "t") == 0,
          "the page \"NULL\" is a string, not a NULL");
    check(strcmp(sql_value("SELECT user_id::text FROM sessions WHERE session_id = -7"),
                 "9223372036854775807") == 0,
          "64-bit ids are exact");
    check(strcmp(sql_value("SELECT cardinality(pages) FROM sessions WHERE session_id = 9"), "0") == 0,
          "an empty session is an empty array");
    char *age = sql_value("SELECT extract(epoch FROM now() - ingestion_time) < 60 "
                          "AND ingestion_time <= now() + interval '1 second' FROM sessions LIMIT 1");
    check(strcmp(age, "t") == 0, "ingestion_time is the wall-clock time of the write");

    /* Replaying the same sessions rewrites them: same rows, later ingestion time. */
    char before[64];
    snprintf(before, sizeof before, "%s",
             sql_value("SELECT ingestion_time FROM sessions WHERE session_id = -7"));
    usleep(20000);
    check(write_session(s, -7, INT64_MAX, one, 1, err, sizeof err) == 0, "rewrite");
    check(flush_sink(s, err, sizeof err) == 0, "flush rewrite (%s)", err);
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "3") == 0, "still 3 rows");
    char q[256];
    snprintf(q, sizeof q,
             "SELECT ingestion_time > '%s' FROM sessions WHERE session_id = -7", before);
    check(strcmp(sql_value(q), "t") == 0, "rewritten row has a later ingestion_time");

    /* The same key twice before one flush: one statement may not touch a row
     * twice, so the sink keeps the later version. */
    static const char *const v1[] = {"old.html"};
    static const char *const v2[] = {"new.html", "newer.html"};
    check(write_session(s, 77, 5, v1, 1, err, sizeof err) == 0 &&
              write_session(s, 77, 5, v2, 2, err, sizeof err) == 0,
          "write the same key twice");
    check(flush_sink(s, err, sizeof err) == 0, "flush duplicates (%s)", err);
    check(strcmp(sql_value("SELECT array_to_string(pages, ' ') FROM sessions WHERE session_id = 77"),
                 "new.html newer.html") == 0,
          "the later write of a key wins");

    /* NUL cannot be stored in PostgreSQL text: refused at write, clearly. */
    page_ref nul = {"a\0b", 3};
    closed_session cs = {.session_id = 1, .user_id = 1, .pages = &nul, .n_pages = 1};
    check(s->ops->write(s, &cs, err, sizeof err) != 0 && strstr(err, "NUL"),
          "a page with a NUL byte is refused: %s", err);
    check(flush_sink(s, err, sizeof err) == 0, "empty flush is a no-op");
    s->ops->close(s);
}

static void test_batches(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS batched");
    const char *const props[] = {"table=batched", "batch_rows=7", NULL};
    sink *s = open_sink(uri, props, 1, err, sizeof err);
    check(s != NULL, "open with table= and batch_rows= (%s)", err);
    if (!s) return;
    char page[32];
    const char *pp[1] = {page};
    for (int i = 0; i < 1000; i++) {
        snprintf(page, sizeof page, "p%d.html", i);
        if (write_session(s, i * 1000003LL, i % 13, pp, 1, err, sizeof err) != 0) break;
    }
    check(flush_sink(s, err, sizeof err) == 0, "flush 1000 rows in batches of 7 (%s)", err);
    check(strcmp(sql_value("SELECT count(*) FROM batched"), "1000") == 0, "1000 rows");
    check(strcmp(sql_value("SELECT count(DISTINCT ingestion_time) FROM batched"), "1") == 0,
          "one transaction, one ingestion_time");
    check(strcmp(sql_value("SELECT pages[1] FROM batched WHERE session_id = 999 * 1000003"),
                 "p999.html") == 0,
          "rows land on their keys");
    s->ops->close(s);

    /* batch_bytes bounds a statement's bound parameters: 60 sessions of a
     * 500-byte page (532 bytes as parameters) in statements of at most 4 KiB
     * are 7 to a statement, and a session larger than the bound goes alone.
     * A statement trigger counts what each statement brought. */
    sql("DROP TABLE IF EXISTS batched_bytes");
    sql("DROP TABLE IF EXISTS batched_stmts");
    const char *const props3[] = {"table=batched_bytes", "batch_bytes=4KiB", NULL};
    s = open_sink(uri, props3, 1, err, sizeof err);
    check(s != NULL, "open with batch_bytes=4KiB (%s)", err);
    if (s) {
        sql("CREATE TABLE batched_stmts (rows int, page_bytes bigint)");
        sql("CREATE FUNCTION batched_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO batched_stmts SELECT count(*), sum(octet_length(array_to_string(pages, "
            "''))) FROM new_rows; RETURN NULL; END $$");
        sql("CREATE TRIGGER batched_count AFTER INSERT ON batched_bytes REFERENCING NEW TABLE "
            "AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION batched_count()");
        static char big[500], huge[10000];
        memset(big, 'b', sizeof big - 1);
        memset(huge, 'h', sizeof huge - 1);
        const char *pb[1] = {big}, *ph[1] = {huge};
        for (int i = 0; i < 60; i++) write_session(s, 5000 + i, i, pb, 1, err, sizeof err);
        write_session(s, 9999, 1, ph, 1, err, sizeof err);
        check(flush_sink(s, err, sizeof err) == 0, "flush 61 sessions of ~36 KB in all (%s)", err);
        check(strcmp(sql_value("SELECT count(*) FROM batched_bytes"), "61") == 0, "61 rows");
        check(strcmp(sql_value("SELECT count(DISTINCT ingestion_time) FROM batched_bytes"), "1") ==
                  0,
              "still one transaction");
        check(strcmp(sql_value("SELECT count(*) FROM batched_stmts"), "10") == 0,
              "10 statements: 9 of up to 7 sessions, the large one alone (%s)",
              sql_value("SELECT count(*) FROM batched_stmts"));
        check(strcmp(sql_value("SELECT max(rows) FROM batched_stmts WHERE page_bytes < 9999"),
                     "7") == 0,
              "at most 7 of the 532-byte sessions in a statement");
        check(strcmp(sql_value("SELECT rows FROM batched_stmts WHERE page_bytes = 9999"), "1") == 0,
              "the session over the bound alone in its statement");
        s->ops->close(s);
    }
    sql("DROP TABLE IF EXISTS batched_bytes");
    sql("DROP TABLE IF EXISTS batched_stmts");
    sql("DROP FUNCTION IF EXISTS batched_count()");

    /* Schema-qualified, case-preserving names. */
    sql("CREATE SCHEMA IF NOT EXISTS \"Other\"");
    const char *const props2[] = {"table=Other.My \"Sessions\"", NULL};
    s = open_sink(uri, props2, 1, err, sizeof err);
    check(s != NULL, "open with a schema-qualified name needing quotes (%s)", err);
    if (s) {
        const char *one[] = {"x"};
        write_session(s, 1, 1, one, 1, err, sizeof err);
        check(flush_sink(s, err, sizeof err) == 0, "flush into it");
        check(strcmp(sql_value("SELECT count(*) FROM \"Other\".\"My \"\"Sessions\"\"\""), "1") == 0,
              "row is in \"Other\".\"My \"\"Sessions\"\"\"");
        s->ops->close(s);
    }
}

static void test_schema_refusals(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS missing_t");
    const char *const p1[] = {"table=missing_t", NULL};
    sink *s = open_sink(uri, p1, 0, err, sizeof err);
    check(!s && strstr(err, "does not exist") && strstr(err, "create_schema"),
          "create_schema=0 and no table: %s", err);
    check(strcmp(sql_value("SELECT count(*) FROM pg_class WHERE relname = 'missing_t'"), "0") == 0,
          "and nothing was created");

    sql("DROP TABLE IF EXISTS wrong_cols");
    sql("CREATE TABLE wrong_cols (session_id bigint, user_id bigint, pages text, "
        "ingestion_time timestamptz, extra int NOT NULL, PRIMARY KEY (session_id, user_id))");
    const char *const p2[] = {"table=wrong_cols", NULL};
    s = open_sink(uri, p2, 1, err, sizeof err);
    check(!s && strstr(err, "column pages is text, expected text[]") &&
              strstr(err, "ALTER TABLE \"wrong_cols\" ALTER COLUMN pages TYPE text[] USING pages::text[]") &&
              strstr(err, "column extra is NOT NULL without a default") &&
              strstr(err, "ALTER TABLE \"wrong_cols\" ALTER COLUMN \"extra\" DROP NOT NULL"),
          "a mistyped column and a required column the sink cannot fill are refused, with the "
          "DDL that fixes them: %s", err);

    /* extra columns that are nullable or have a default are accepted */
    sql("DROP TABLE IF EXISTS extra_ok");
    sql("CREATE TABLE extra_ok (session_id bigint, user_id bigint, pages text[], "
        "ingestion_time timestamptz, loaded_at timestamptz NOT NULL DEFAULT now(), note text, "
        "PRIMARY KEY (session_id, user_id))");
    const char *const p2b[] = {"table=extra_ok", NULL};
    s = open_sink(uri, p2b, 0, err, sizeof err);
    check(s != NULL, "extra nullable and defaulted columns are accepted (%s)", err);
    if (s) {
        static const char *const pg[] = {"A.html"};
        check(write_session(s, 5, 6, pg, 1, err, sizeof err) == 0 && flush_sink(s, err, sizeof err) == 0,
              "and written to (%s)", err);
        check(strcmp(sql_value("SELECT count(*) FROM extra_ok WHERE loaded_at IS NOT NULL AND note IS NULL"),
                     "1") == 0, "the defaults fill in");
        s->ops->close(s);
    }
    /* opt-in columns missing from an existing table: the ALTER that adds them */
    sink_options o = {.props = p2b, .create_schema = 1, .columns = SINK_COL_ALL};
    err[0] = 0;
    s = sink_open(uri, &o, err, sizeof err);
    check(!s && strstr(err, "ALTER TABLE \"extra_ok\" ADD COLUMN session_start timestamp with time zone") &&
              strstr(err, "ADD COLUMN duration interval"),
          "missing session columns are refused with the DDL: %s", err);

    sql("DROP TABLE IF EXISTS no_pk");
    sql("CREATE TABLE no_pk (session_id bigint, user_id bigint, pages text[], "
        "ingestion_time timestamptz)");
    const char *const p3[] = {"table=no_pk", NULL};
    s = open_sink(uri, p3, 1, err, sizeof err);
    check(!s && strstr(err, "no primary key or unique constraint"), "no key is refused: %s", err);

    sql("DROP VIEW IF EXISTS a_view");
    sql("CREATE VIEW a_view AS SELECT 1 AS x");
    const char *const p4[] = {"table=a_view", NULL};
    s = open_sink(uri, p4, 1, err, sizeof err);
    check(!s && strstr(err, "not a table"), "a view is refused: %s", err);

    const char *const p5[] = {"batch_rows=0", NULL};
    s = open_sink(uri, p5, 1, err, sizeof err);
    check(!s && strstr(err, "batch_rows"), "batch_rows=0 refused: %s", err);
    const char *const p5b[] = {"batch_bytes=1GiB", NULL};
    s = open_sink(uri, p5b, 1, err, sizeof err);
    check(!s && strstr(err, "batch_bytes=1GiB: expected a size from 1 to 256MiB"),
          "batch_bytes over 256MiB refused: %s", err);
    const char *const p6[] = {"tabel=x", NULL};
    s = open_sink(uri, p6, 1, err, sizeof err);
    check(!s && strstr(err, "unknown option 'tabel'"), "unknown option refused: %s", err);
    double t0 = now_s();
    s = open_sink("postgresql://localhost:notaport/x", NULL, 1, err, sizeof err);
    check(!s && strstr(err, "invalid integer value \"notaport\"") && now_s() - t0 < 3,
          "malformed port fails fast: %s", err);
    s = open_sink("postgresql://u:Secret-Hunter2@[::1/x", NULL, 1, err, sizeof err);
    check(!s && strstr(err, "bad connection string") && !strstr(err, "Secret"),
          "malformed URI refused without its password: %s", err);
}

static void test_auth(void)
{
    char err[2048] = "";
    /* Wrong password over TCP (scram): fails fast, and says so without the password. */
    char bad[1024];
    const char *at = strchr(uri_tcp + 13, '@');
    snprintf(bad, sizeof bad, "postgresql://postgres:Secret-Hunter2-xyz%.*s", (int)strlen(at), at);
    double t0 = now_s();
    sink *s = open_sink(bad, NULL, 1, err, sizeof err);
    double took = now_s() - t0;
    check(!s, "wrong password refused");
    check(took < 3, "wrong password fails fast (%.2f s)", took);
    check(strstr(err, "password authentication failed") != NULL, "error says why: %s", err);
    check(!strstr(err, "Secret-Hunter2-xyz"), "error does not contain the password");
    check(strstr(err, "postgres:***@") != NULL, "error names the target with the password masked");

    /* The same with the password as a URI parameter, percent-encoded. */
    snprintf(bad, sizeof bad, "postgresql://postgres%.*s?password=Secret%%2DHunter2%%2Dxyz",
             (int)strlen(at), at);
    s = open_sink(bad, NULL, 1, err, sizeof err);
    check(!s && !strstr(err, "Secret") && strstr(err, "password=***"),
          "password= parameter masked: %s", err);

    /* And a key=value conninfo. */
    snprintf(bad, sizeof bad,
             "postgresql:host=127.0.0.1 port=%s user=postgres password=Secret-Hunter2-xyz "
             "dbname=postgres",
             port);
    s = open_sink(bad, NULL, 1, err, sizeof err);
    check(!s && strstr(err, "password authentication failed") && !strstr(err, "Secret"),
          "key=value conninfo: password masked: %s", err);

    /* The right password works (over TCP, scram). */
    s = open_sink(uri_tcp, NULL, 1, err, sizeof err);
    check(s != NULL, "right password accepted (%s)", err);
    if (s) s->ops->close(s);

    /* No password at all where one is required: fails fast too. */
    snprintf(bad, sizeof bad, "postgresql://postgres%.*s", (int)strlen(at), at);
    setenv("PGPASSFILE", "/nonexistent", 1);
    t0 = now_s();
    s = open_sink(bad, NULL, 1, err, sizeof err);
    check(!s && now_s() - t0 < 3, "missing password fails fast: %s", err);

    /* Missing database: permanent. */
    snprintf(bad, sizeof bad, "postgresql://postgres@/nosuchdb?host=%s&port=%s", socket_dir, port);
    t0 = now_s();
    s = open_sink(bad, NULL, 1, err, sizeof err);
    check(!s && strstr(err, "nosuchdb") && now_s() - t0 < 3, "missing database fails fast: %s", err);
}

static void test_permissions(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS sessions");
    sql("DROP ROLE IF EXISTS reader");
    sql("CREATE ROLE reader LOGIN");
    char u[1024];
    /* The socket URI with user=reader instead of the superuser. */
    snprintf(u, sizeof u, "%s&user=reader", uri);
    double t0 = now_s();
    sink *s = open_sink(u, NULL, 1, err, sizeof err);
    check(!s && strstr(err, "permission denied") && now_s() - t0 < 3,
          "no CREATE on the schema fails fast: %s", err);

    sql("CREATE TABLE sessions (session_id bigint, user_id bigint, pages text[], "
        "ingestion_time timestamptz, PRIMARY KEY (session_id, user_id))");
    sql("GRANT SELECT ON sessions TO reader");
    t0 = now_s();
    s = open_sink(u, NULL, 1, err, sizeof err);
    check(!s && strstr(err, "permission denied for table sessions") && now_s() - t0 < 3,
          "no INSERT/UPDATE grant fails fast at open: %s", err);

    sql("GRANT INSERT, UPDATE ON sessions TO reader");
    s = open_sink(u, NULL, 1, err, sizeof err);
    check(s != NULL, "with INSERT, UPDATE, SELECT granted it opens (%s)", err);
    if (!s) return;
    static const char *const one[] = {"A.html"};
    write_session(s, 1, 1, one, 1, err, sizeof err);
    check(flush_sink(s, err, sizeof err) == 0, "and writes (%s)", err);
    /* The grant is revoked while the job runs: the next flush fails fast. */
    sql("REVOKE UPDATE ON sessions FROM reader");
    write_session(s, 1, 1, one, 1, err, sizeof err);
    t0 = now_s();
    check(flush_sink(s, err, sizeof err) != 0 && strstr(err, "permission denied") &&
              now_s() - t0 < 3,
          "revoked grant: flush fails fast: %s", err);
    s->ops->close(s);
}

static void test_restarts(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS sessions");
    const char *const props[] = {"retry_backoff_max=500ms", NULL};
    sink *s = open_sink(uri, props, 1, err, sizeof err);
    check(s != NULL, "open (%s)", err);
    if (!s) return;
    static const char *const one[] = {"A.html"};

    /* The server restarts between two flushes: the connection is dead, the
     * next flush notices, reconnects and commits. */
    write_session(s, 1, 1, one, 1, err, sizeof err);
    check(flush_sink(s, err, sizeof err) == 0, "flush before restart");
    server("restart");
    write_session(s, 2, 1, one, 1, err, sizeof err);
    check(flush_sink(s, err, sizeof err) == 0, "flush after a restart reconnects (%s)", err);
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "2") == 0, "both rows there");

    /* The server is down when the flush starts and comes back 2 s later:
     * flush waits it out. */
    server("stop");
    write_session(s, 3, 1, one, 1, err, sizeof err);
    pid_t pid = fork();
    if (pid == 0) {
        sleep(2);
        char line[2048];
        snprintf(line, sizeof line, "%s start-again %s", server_script, server_dir);
        _exit(system(line) == 0 ? 0 : 1);
    }
    double t0 = now_s();
    int rc = flush_sink(s, err, sizeof err);
    double took = now_s() - t0;
    check(rc == 0 && took > 1.5, "flush waits for the server to come back (%.1f s; %s)", took,
          rc ? err : "");
    int status;
    while (waitpid(pid, &status, 0) < 0) {
    }
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "3") == 0, "all 3 rows there");
    s->ops->close(s);

    /* With a short retry_timeout the flush gives up and says why; the sink
     * is then done (every later flush fails with that message: the job
     * stops), and a new one (a restart) writes the session again. */
    const char *const props2[] = {"retry_timeout=1s", "retry_backoff_max=200ms", NULL};
    s = open_sink(uri, props2, 1, err, sizeof err);
    check(s != NULL, "open with retry_timeout=1s");
    if (!s) return;
    server("stop");
    write_session(s, 4, 1, one, 1, err, sizeof err);
    t0 = now_s();
    rc = flush_sink(s, err, sizeof err);
    took = now_s() - t0;
    check(rc != 0 && strstr(err, "gave up") && took < 3, "flush gives up after retry_timeout (%.1f s): %s",
          took, err);
    server("start-again");
    write_session(s, 5, 1, one, 1, err, sizeof err);
    char first[2048];
    snprintf(first, sizeof first, "%s", err);
    check(flush_sink(s, err, sizeof err) != 0 && strstr(err, "gave up"),
          "a later flush fails with the first failure's message: %s", err);
    s->ops->close(s);
    s = open_sink(uri, props2, 1, err, sizeof err);
    check(s != NULL, "reopen (a restart)");
    if (!s) return;
    write_session(s, 4, 1, one, 1, err, sizeof err);
    write_session(s, 5, 1, one, 1, err, sizeof err);
    check(flush_sink(s, err, sizeof err) == 0, "the restarted sink commits (%s)", err);
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "5") == 0, "all 5 rows there");
    s->ops->close(s);
}

/* The commit on the sink's own thread (sink.h: flush_begin, flush_wait):
 * while the server holds the commit back (a lock on the table), begun
 * flushes return at once, the writes after one go into the next, both
 * commit in order once the lock goes; a third begin waits for room; a stop
 * request fails the commit in flight within the stop grace, and every
 * later one. */
static PGconn *locker;

static void lock_table(const char *table)
{
    locker = PQconnectdb(uri);
    char q[256];
    snprintf(q, sizeof q, "BEGIN; LOCK TABLE %s IN EXCLUSIVE MODE", table);
    PGresult *r = PQexec(locker, q);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "lock failed: %s", PQerrorMessage(locker));
        exit(99);
    }
    PQclear(r);
}

static void unlock_table(void)
{
    PQclear(PQexec(locker, "ROLLBACK"));
    PQfinish(locker);
    locker = NULL;
}

typedef struct begin_arg {
    sink *s;
    uint64_t ticket;
    double took;
} begin_arg;

static void *begin_thread(void *p)
{
    begin_arg *a = p;
    double t0 = now_s();
    a->ticket = a->s->ops->flush_begin(a->s);
    a->took = now_s() - t0;
    return NULL;
}

static void test_pipelined(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS piped");
    volatile sig_atomic_t stop = 0;
    job_context ctx = {.stop = &stop};
    const char *const props[] = {"table=piped", NULL};
    sink_options o = {.props = props, .create_schema = 1, .ctx = &ctx};
    sink *s = sink_open(uri, &o, err, sizeof err);
    check(s != NULL && s->ops->flush_begin && s->ops->flush_wait, "open, with flush_begin (%s)", err);
    if (!s) return;
    static const char *const one[] = {"A.html"};
    check(s->ops->flush_begin(s) == 0, "nothing written: ticket 0");
    check(s->ops->flush_wait(s, 0, err, sizeof err) == 0, "ticket 0 is done");

    lock_table("piped");
    for (int i = 0; i < 3000; i++) write_session(s, i, 1, one, 1, err, sizeof err);
    double t0 = now_s();
    uint64_t t1 = s->ops->flush_begin(s);
    write_session(s, 3000, 1, one, 1, err, sizeof err);
    uint64_t t2 = s->ops->flush_begin(s);
    double took = now_s() - t0;
    check(t1 == 1 && t2 == 2 && s->ops->flush_begin(s) == 2,
          "tickets 1 and 2; a begin with nothing new gives the last again");
    check(took < 1.0, "two begun flushes return at once while the server holds the commit (%.2f s)",
          took);
    write_session(s, 3001, 1, one, 1, err, sizeof err);
    begin_arg third = {.s = s};
    pthread_t th;
    pthread_create(&th, NULL, begin_thread, &third);
    usleep(500000);
    check(strcmp(sql_value("SELECT count(*) FROM piped"), "0") == 0, "nothing committed meanwhile");
    unlock_table();
    pthread_join(th, NULL);
    check(third.ticket == 3 && third.took > 0.3,
          "a third begin waited for room (%.2f s) and got ticket 3", third.took);
    check(s->ops->flush_wait(s, 1, err, sizeof err) == 0, "ticket 1 committed (%s)", err);
    check(s->ops->flush_wait(s, 3, err, sizeof err) == 0, "ticket 3 committed (%s)", err);
    check(strcmp(sql_value("SELECT count(*) FROM piped"), "3002") == 0, "every row there");

    /* a stop request while the commit is held back */
    lock_table("piped");
    write_session(s, 5000, 1, one, 1, err, sizeof err);
    uint64_t t4 = s->ops->flush_begin(s);
    usleep(300000);
    stop = 1;
    t0 = now_s();
    int rc = s->ops->flush_wait(s, t4, err, sizeof err);
    took = now_s() - t0;
    check(rc != 0 && took < 5, "a stop fails the commit in flight within the grace (%.1f s): %s", took,
          err);
    write_session(s, 5001, 1, one, 1, err, sizeof err);
    check(s->ops->flush(s, err, sizeof err) != 0, "and every later flush: %s", err);
    unlock_table();
    check(strcmp(sql_value("SELECT count(*) FROM piped WHERE session_id >= 5000"), "0") == 0,
          "nothing of them committed");
    s->ops->close(s);
}

/* The server hangs (every process stopped): connections are accepted by the
 * kernel and never answered. The flush must not hang with it: the statement
 * times out (io_timeout), reconnecting times out too, and once the server
 * runs again the flush commits, whole and once. */
static void test_hang(void)
{
    char err[2048] = "";
    sql("DROP TABLE IF EXISTS sessions");
    const char *const props[] = {"io_timeout=1s", "retry_backoff_max=300ms", NULL};
    sink *s = open_sink(uri_tcp, props, 1, err, sizeof err);
    check(s != NULL, "open with io_timeout=1s (%s)", err);
    if (!s) return;
    static const char *const one[] = {"A.html"};
    for (int i = 0; i < 5000; i++) write_session(s, i, 7, one, 1, err, sizeof err);
    check(flush_sink(s, err, sizeof err) == 0, "first flush");
    server("freeze");
    for (int i = 0; i < 5000; i++) write_session(s, 100000 + i, 7, one, 1, err, sizeof err);
    pid_t pid = fork();
    if (pid == 0) {
        sleep(3);
        char line[2048];
        snprintf(line, sizeof line, "%s thaw %s", server_script, server_dir);
        _exit(system(line) == 0 ? 0 : 1);
    }
    double t0 = now_s();
    int rc = flush_sink(s, err, sizeof err);
    double took = now_s() - t0;
    int status;
    while (waitpid(pid, &status, 0) < 0) {
    }
    check(rc == 0 && took > 2.5 && took < 20,
          "flush outlives a 3 s hang of the server (%.1f s; %s)", took, rc ? err : "");
    check(strcmp(sql_value("SELECT count(*) FROM sessions"), "10000") == 0, "all 10000 rows there");
    s->ops->close(s);
}

int main(void)
{
    uri = getenv("PG_URI");
    uri_tcp = getenv("PG_URI_TCP");
    server_dir = getenv("PG_SERVER_DIR");
    server_script = getenv("PG_SERVER_SCRIPT");
    port = getenv("PG_SERVER_PORT");
    socket_dir = getenv("PG_SERVER_SOCKET_DIR");
    if (!uri || !uri_tcp || !server_dir || !server_script || !port || !socket_dir) {
        fprintf(stderr, "run me through pg_sink_unit.sh (PG_URI etc. unset)\n");
        return 99;
    }
    test_roundtrip();
    test_batches();
    test_schema_refusals();
    test_auth();
    test_permissions();
    test_restarts();
    test_pipelined();
    test_hang();
    if (admin) PQfinish(admin);
    printf("%d failed\n", failures);
    return failures > 90 ? 90 : failures;
}
