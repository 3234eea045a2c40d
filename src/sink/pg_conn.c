/*
 * pg_conn.c - a bounded, stoppable, retrying PostgreSQL connection (see
 * pg_conn.h). Split from the PostgreSQL sink so that the scale-out's task
 * state store waits, times out and stops the same way, with the same code.
 */
#include "sink/pg_conn.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/units.h"

void pg_conn_init(pg_conn *c, const char *who, const pg_conninfo *ci)
{
    *c = (pg_conn){.who = who,
                   .ci = ci,
                   .io_timeout_ms = PG_DEFAULT_IO_TIMEOUT_MS,
                   .retry_timeout_ms = PG_DEFAULT_RETRY_TIMEOUT_MS,
                   .backoff_max_ms = PG_DEFAULT_BACKOFF_MAX_MS};
}

int pg_conn_fail(const pg_conn *c, char *err, size_t errlen, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (err && errlen) pg_conninfo_redact(c->ci, tmp, err, errlen);
    return -1;
}

int pg_conn_setting(pg_conn *c, const char *key, size_t kl, const char *v, int *rc, char *err,
                    size_t errlen)
{
#define KEY_IS(k) (kl == strlen(k) && strncmp(key, k, kl) == 0)
    if (!KEY_IS("retry_timeout") && !KEY_IS("retry_backoff_max") && !KEY_IS("io_timeout"))
        return 0;
    *rc = 0;
    /* Durations are spelt as everywhere else (common/units.h): "1500ms",
     * "30s", "10m", "1h", or a bare number of seconds. */
    int64_t us;
    if (parse_duration_us(v, &us)) {
        *rc = pg_conn_fail(c, err, errlen, "%s: %.*s=%s: expected a duration such as 500ms, 30s, 10m",
                           c->who, (int)kl, key, v);
        return 1;
    }
    long long ms = (long long)(us / 1000);
    if (KEY_IS("retry_timeout")) {
        c->retry_timeout_ms = ms;
    } else if (ms < 1) {
        *rc = pg_conn_fail(c, err, errlen, "%s: %.*s must be positive", c->who, (int)kl, key);
    } else if (KEY_IS("io_timeout")) {
        c->io_timeout_ms = ms;
    } else {
        c->backoff_max_ms = ms < PG_BACKOFF_START_MS ? PG_BACKOFF_START_MS : ms;
    }
    return 1;
#undef KEY_IS
}

int pg_sqlstate_transient(const char *st)
{
    if (!st || strlen(st) != 5) return 1; /* not from the server: libpq's own, I/O */
    if (strncmp(st, "08", 2) == 0) return 1; /* connection exception */
    if (strncmp(st, "40", 2) == 0) return 1; /* serialization failure, deadlock */
    if (strncmp(st, "53", 2) == 0) return 1; /* too many connections, out of memory, disk full */
    if (strcmp(st, "57P04") == 0) return 0;  /* database dropped */
    if (strncmp(st, "57", 2) == 0) return 1; /* admin/crash shutdown, cannot connect now, canceled */
    if (strncmp(st, "58", 2) == 0) return 1; /* I/O error on the server */
    if (strcmp(st, "55P03") == 0) return 1;  /* lock not available */
    if (strcmp(st, "55006") == 0) return 1;  /* object in use */
    if (strcmp(st, "25006") == 0) return 1;  /* read-only transaction: a standby, wait for promotion */
    if (strcmp(st, "25P03") == 0) return 1;  /* idle-in-transaction timeout */
    return 0;
}

int pg_conn_lost_create_race(const pg_conn *c)
{
    /* 23505: the loser waited for the winner's catalog row, which then
     * committed; 42710 ("type ... already exists") and 42P07 ("relation
     * ... already exists"): the winner committed between the loser's IF NOT
     * EXISTS check and its own catalog insert. */
    return strcmp(c->sqlstate, "23505") == 0 || strcmp(c->sqlstate, "42710") == 0 ||
           strcmp(c->sqlstate, "42P07") == 0;
}

/* Finds the SQLSTATE a verbose libpq message carries ("FATAL:  28P01: ..."). */
static int find_sqlstate(const char *msg, char out[6])
{
    for (const char *p = strstr(msg, ":  "); p; p = strstr(p + 1, ":  ")) {
        const char *c = p + 3;
        int ok = 1;
        for (int i = 0; i < 5; i++)
            if (!((c[i] >= '0' && c[i] <= '9') || (c[i] >= 'A' && c[i] <= 'Z'))) ok = 0;
        if (ok && c[5] == ':') {
            memcpy(out, c, 5);
            out[5] = 0;
            return 1;
        }
    }
    return 0;
}

void pg_tidy_message(const char *in, char *out, size_t outlen)
{
    buf b;
    buf_init(&b);
    const char *p = in;
    while (*p) {
        while (*p == ' ' || *p == '\t') p++;
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n && strncmp(p, "LOCATION:", 9) != 0) {
            if (b.len) buf_append_str(&b, b.data[b.len - 1] == '.' ? " " : "; ");
            buf_append(&b, p, n);
        }
        p += n + (nl ? 1 : 0);
    }
    buf_append_byte(&b, 0);
    snprintf(out, outlen, "%s", (const char *)b.data);
    buf_free(&b);
}

/* Server notices: NOTICE and below are chatter ("relation already exists,
 * skipping"); a WARNING is worth the operator's eye. */
static void pg_notice(void *arg, const PGresult *r)
{
    (void)arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (sev && msg && strcmp(sev, "WARNING") == 0)
        log_warn("postgresql", "server warning: %s", msg);
}

void pg_conn_drop(pg_conn *c)
{
    /* No cancel request (pg_conn.h): the backend notices the closed
     * connection by itself and rolls back. */
    if (!c->conn) return;
    PQfinish(c->conn);
    c->conn = NULL;
}

/* Waits until the connection's socket is readable (for_write 0), writable
 * (1) or either (2). Returns 1 when ready, 0 on timeout, -1 when there is no
 * socket or the job was asked to stop RETRY_STOP_GRACE_MS ago: a statement
 * in flight, which may be the COMMIT, gets that long to be answered by a
 * healthy server, and no longer from a hung one (io_timeout is a minute). */
static int pg_wait(pg_conn *c, PGconn *conn, int for_write, int64_t deadline)
{
    for (;;) {
        int fd = PQsocket(conn);
        if (fd < 0) return -1;
        if (retry_stop_grace_over(&c->rt)) return -1;
        int64_t left = deadline - mono_ms();
        if (left <= 0) return 0;
        /* 2: while sending a statement, also wake up for input: the server
         * may be talking back (notices, an early error) and must not be left
         * blocked. 1: connecting, exactly what PQconnectPoll asked for. */
        short ev = for_write == 2 ? POLLOUT | POLLIN : for_write ? POLLOUT : POLLIN;
        struct pollfd pfd = {.fd = fd, .events = ev};
        /* A job waiting for its server is alive. */
        status_beat(c->status);
        int r = poll(&pfd, 1, left > RETRY_SLICE_MS ? RETRY_SLICE_MS : (int)left);
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return -1;
        /* r == 0 or EINTR: look at the stop flag and the deadline again */
    }
}

static int classify_connect_failure(PGconn *c, const char *msg)
{
    char st[6];
    if (find_sqlstate(msg, st)) return pg_sqlstate_transient(st) ? PG_TRANSIENT : PG_PERMANENT;
    if (c && PQconnectionNeedsPassword(c)) return PG_PERMANENT;
    static const char *const permanent[] = {
        "password",       "does not support SSL", "certificate", "sslmode",    "channel binding",
        "GSSAPI",         "invalid",              "unsupported", "SSL error: ", "no pg_hba",
        "authentication", "requirepeer",
    };
    for (size_t i = 0; i < sizeof permanent / sizeof *permanent; i++)
        if (strstr(msg, permanent[i])) return PG_PERMANENT;
    return PG_TRANSIENT;
}

/* Sends what libpq has buffered and collects every result of the current
 * command. The first error result wins; *out receives the result to check
 * (NULL when the connection failed before any result arrived). */
static int pg_collect(pg_conn *pc, PGresult **out, int *timed_out)
{
    PGconn *c = pc->conn;
    int64_t deadline = mono_ms() + pc->io_timeout_ms;
    *out = NULL;
    *timed_out = 0;
    for (;;) {
        int f = PQflush(c);
        if (f == 0) break;
        if (f < 0) return -1;
        int w = pg_wait(pc, c, 2, deadline);
        if (w == 0) {
            *timed_out = 1;
            return -1;
        }
        if (w < 0) return -1;
        if (!PQconsumeInput(c)) return -1;
    }
    for (;;) {
        while (PQisBusy(c)) {
            int w = pg_wait(pc, c, 0, deadline);
            if (w == 0) {
                *timed_out = 1;
                return -1;
            }
            if (w < 0 || !PQconsumeInput(c)) return -1;
        }
        PGresult *r = PQgetResult(c);
        if (!r) break;
        ExecStatusType st = PQresultStatus(r);
        int is_err = st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK;
        if (!*out) {
            *out = r;
        } else if (is_err && (PQresultStatus(*out) == PGRES_COMMAND_OK ||
                              PQresultStatus(*out) == PGRES_TUPLES_OK)) {
            PQclear(*out);
            *out = r;
        } else {
            PQclear(r);
        }
        if (PQstatus(c) == CONNECTION_BAD) break;
    }
    return 0;
}

int pg_conn_finish(pg_conn *c, int sent, const char *what, PGresult **res, char *err,
                   size_t errlen)
{
    PGresult *r = NULL;
    int timed_out = 0;
    if (res) *res = NULL;
    c->sqlstate[0] = 0;
    if (!sent || pg_collect(c, &r, &timed_out) < 0 || !r) {
        if (r) PQclear(r);
        if (timed_out) {
            pg_conn_fail(c, err, errlen, "%s: %s: no answer from the server within %lld ms (io_timeout)",
                         c->who, what, c->io_timeout_ms);
            return PG_TRANSIENT;
        }
        if (retry_stop_grace_over(&c->rt)) {
            pg_conn_fail(c, err, errlen, "%s: %s: no answer within the %d ms a stop request allows",
                         c->who, what, RETRY_STOP_GRACE_MS);
            return PG_TRANSIENT;
        }
        char m[1024];
        pg_tidy_message(PQerrorMessage(c->conn), m, sizeof m);
        pg_conn_fail(c, err, errlen, "%s: %s: %s", c->who, what, *m ? m : "connection lost");
        return PG_TRANSIENT;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (res) *res = r;
        else PQclear(r);
        return PG_OK;
    }
    const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
    const char *hint = PQresultErrorField(r, PG_DIAG_MESSAGE_HINT);
    if (code) snprintf(c->sqlstate, sizeof c->sqlstate, "%s", code);
    char m[1024];
    pg_tidy_message(primary ? primary : PQresultErrorMessage(r), m, sizeof m);
    if (!*m) pg_tidy_message(PQerrorMessage(c->conn), m, sizeof m);
    int transient = PQstatus(c->conn) == CONNECTION_BAD || pg_sqlstate_transient(code);
    pg_conn_fail(c, err, errlen, "%s: %s: %s%s%s%s%s%s%s%s", c->who, what, m,
                 code ? " (SQLSTATE " : "", code ? code : "", code ? ")" : "", detail ? "; " : "",
                 detail ? detail : "", hint ? "; hint: " : "", hint ? hint : "");
    PQclear(r);
    return transient ? PG_TRANSIENT : PG_PERMANENT;
}

int pg_conn_exec(pg_conn *c, const char *sql, const char *what, char *err, size_t errlen)
{
    return pg_conn_finish(c, PQsendQuery(c->conn, sql), what, NULL, err, errlen);
}

/* The session settings every client of ours needs, then the owner's. */
static int pg_session_setup(pg_conn *c, char *err, size_t errlen)
{
    /* A commit acknowledged must be durable (the sink's flush, the task
     * store's state): a server configured with synchronous_commit=off would
     * acknowledge commits it may still lose. */
    int st = pg_conn_exec(c,
                          "SELECT set_config('synchronous_commit', 'on', false) "
                          "WHERE current_setting('synchronous_commit') = 'off'",
                          "setting synchronous_commit", err, errlen);
    if (st) return st;
    /* When we give up on a statement (io_timeout, a stop) and close the
     * connection, the backend running it should stop too rather than finish
     * it, holding row locks that the retry then waits for: from PostgreSQL
     * 14 on, a backend can check for a vanished client while a statement
     * runs. */
    if (PQserverVersion(c->conn) >= 140000) {
        st = pg_conn_exec(c, "SET client_connection_check_interval = '2s'",
                          "setting client_connection_check_interval", err, errlen);
        if (st) return st;
    }
    return c->setup ? c->setup(c->ud, err, errlen) : PG_OK;
}

static int pg_connect(pg_conn *pc, char *err, size_t errlen)
{
    /* password after dbname: libpq keeps the last value of a keyword. */
    static const char *const keys[] = {"dbname", "fallback_application_name", "client_encoding",
                                       "password", NULL};
    const char *vals[] = {pc->ci->conninfo, "sessionizer", "UTF8", pc->password, NULL};
    pg_conn_drop(pc);
    pc->sqlstate[0] = 0;
    PGconn *c = PQconnectStartParams(keys, vals, 1);
    if (!c) return pg_conn_fail(pc, err, errlen, "%s: out of memory", pc->who), PG_PERMANENT;
    PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
    int64_t deadline = mono_ms() + pc->io_timeout_ms;
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    if (PQstatus(c) == CONNECTION_BAD) ps = PGRES_POLLING_FAILED;
    while (ps != PGRES_POLLING_OK) {
        if (ps == PGRES_POLLING_FAILED) {
            char m[1024];
            pg_tidy_message(PQerrorMessage(c), m, sizeof m);
            int cls = classify_connect_failure(c, m);
            pg_conn_fail(pc, err, errlen, "%s: cannot connect to %s: %s", pc->who, pc->ci->display, m);
            PQfinish(c);
            return cls;
        }
        int w = pg_wait(pc, c, ps == PGRES_POLLING_WRITING, deadline);
        if (w == 0) {
            PQfinish(c);
            return pg_conn_fail(pc, err, errlen,
                                "%s: cannot connect to %s: no answer within %lld ms (io_timeout)",
                                pc->who, pc->ci->display, pc->io_timeout_ms),
                   PG_TRANSIENT;
        }
        if (w < 0) {
            PQfinish(c);
            return pg_conn_fail(pc, err, errlen, "%s: cannot connect to %s: interrupted",
                                pc->who, pc->ci->display),
                   PG_TRANSIENT;
        }
        ps = PQconnectPoll(c);
    }
    PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
    PQsetNoticeReceiver(c, pg_notice, NULL);
    if (PQsetnonblocking(c, 1) != 0) {
        PQfinish(c);
        return pg_conn_fail(pc, err, errlen, "%s: cannot make the connection non-blocking", pc->who),
               PG_TRANSIENT;
    }
    pc->conn = c;
    int st = pg_session_setup(pc, err, errlen);
    if (st) pg_conn_drop(pc);
    return st;
}

static void pg_beat(void *ud) { status_beat(((pg_conn *)ud)->status); }

int pg_conn_retry(pg_conn *c, int (*op)(void *ud, char *err, size_t errlen), void *ud,
                  const char *what, char *err, size_t errlen)
{
    retry_init(&c->rt,
               &(retry_policy){.first_ms = PG_BACKOFF_START_MS, .max_ms = c->backoff_max_ms,
                               .give_up_ms = c->retry_timeout_ms},
               c->stop);
    c->rt.beat = pg_beat;
    c->rt.beat_ud = c;
    char logged[2048] = ""; /* the last error logged */
    /* The log's component already says PostgreSQL: the sink's messages lose
     * their "postgresql: ", the others keep what names them. */
    int sink = strcmp(c->who, "postgresql") == 0;
    size_t wl = strlen(c->who);
    for (int attempt = 1;; attempt++) {
        if (attempt > 1) io_status_retry(c->io);
        int st = c->conn ? PG_OK : pg_connect(c, err, errlen);
        int connected = st == PG_OK;
        if (st == PG_OK && op) st = op(ud, err, errlen);
        if (st == PG_OK) {
            io_status_up(c->io);
            if (attempt > 1)
                log_info("postgresql", "%s%s%s succeeded after %d attempts (%.1f s)",
                         sink ? "" : c->who, sink ? "" : ": ", what, attempt,
                         (double)retry_elapsed_ms(&c->rt) / 1000);
            return 0;
        }
        /* Whatever happened, the connection's state is now unknown (a failed
         * transaction, a half-read result): start afresh. */
        pg_conn_drop(c);
        io_status_error(c->io, strstr(err, "io_timeout") ? IO_ERR_TIMEOUT
                               : !connected || strstr(err, "connection") ? IO_ERR_CONNECTION
                                                                         : IO_ERR_SERVER);
        if (st == PG_TRANSIENT) io_status_down(c->io);
        if (st == PG_PERMANENT) return -1;
        int64_t wait = 0;
        int v = retry_failed(&c->rt, &wait);
        char last[1536];
        snprintf(last, sizeof last, "%s", err);
        if (v == RETRY_GIVE_UP) {
            snprintf(err, errlen, "%s: gave up after %d attempts in %.1f s (retry_timeout=%.0fs): %s",
                     what, attempt, (double)retry_elapsed_ms(&c->rt) / 1000,
                     (double)c->retry_timeout_ms / 1000, last);
            return -1;
        }
        if (v == RETRY_AGAIN) {
            const char *shown =
                sink && strncmp(err, c->who, wl) == 0 && strncmp(err + wl, ": ", 2) == 0
                    ? err + wl + 2
                    : err;
            if (strcmp(logged, err) != 0) {
                log_warn("postgresql", "%s; retrying %s in %.1f s (attempt %d)", shown, what,
                         (double)wait / 1000, attempt + 1);
                snprintf(logged, sizeof logged, "%s", err);
            } else {
                log_warn("postgresql", "%s%ssame error; retrying %s in %.1f s (attempt %d)",
                         sink ? "" : c->who, sink ? "" : ": ", what, (double)wait / 1000,
                         attempt + 1);
            }
        }
        if (v == RETRY_STOPPED || retry_sleep(&c->rt, wait)) {
            snprintf(err, errlen, "%s: interrupted while waiting to retry: %s", what, last);
            return -1;
        }
    }
}
