/*
 * cql.c - the ScyllaDB/Cassandra sink: closed sessions upserted over CQL.
 *
 * What it is for: the reference system keeps its sessions in ScyllaDB, in
 * the table of its init.cql. This sink writes the same rows, so that the two
 * can be compared and the sessionizer can replace the reference writer.
 *
 *   --sink cql://HOST[:PORT][,HOST[:PORT]...]/KEYSPACE
 *   --sink-opt consistency=LOCAL_QUORUM username=... password_file=... tls=1 ...
 *
 * It is a thin user of the CQL client library (src/cql/, docs/cql.md), which
 * owns the protocol, the connections, routing and retries. This file owns
 * what is specific to sessions:
 *  - the schema: created when missing exactly as the reference init.cql does
 *    (SimpleStrategy, replication_factor 1), unless create_schema is 0, when
 *    no DDL is ever sent; an existing table must have exactly the reference's
 *    columns, types and primary key (checked in system_schema.columns and in
 *    the prepared statement's metadata), or open fails saying what differs;
 *  - the write: one PREPAREd INSERT, values always bound, each session one
 *    EXECUTE (or, with batch=unlogged, grouped by the node that owns it into
 *    UNLOGGED batches), many in flight; write() returns once the request is
 *    queued, flush() once every write since the previous flush is
 *    acknowledged at the configured consistency (default LOCAL_QUORUM, as the
 *    reference writer);
 *  - idempotency: an INSERT is an upsert on (session_id, user_id), so a retry
 *    or a replay after a lost checkpoint rewrites the same row (only
 *    ingestion_time changes). The write timestamp is ingestion_time, fixed
 *    when write() is called, so a retried request carries the same timestamp;
 *  - credentials come from options (password=@file:PATH or @env:NAME, resolved
 *    by the CLI, or password_file=PATH, keep the password off the command
 *    line) and never appear in a message: the library redacts them.
 */
#include <assert.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/status.h"
#include "common/secret.h"
#include "common/units.h"
#include "common/xalloc.h"
#include "cql/cql_client.h"
#include "cql/cql_proto.h"
#include "sink/sink.h"

/* --sink-opt: what parse_props takes, and --help shows (sink.h). */
static const sink_setting cql_settings[] = {
    {"consistency", "LEVEL", "LOCAL_QUORUM",
     "ANY, ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM or LOCAL_ONE"},
    {"username", "NAME", NULL, "log in with PasswordAuthenticator (SASL PLAIN)"},
    {"password", "SECRET", NULL, "its password (password=@file:PATH keeps it off the command line)"},
    {"password_file", "PATH", NULL, "its password, read from a file"},
    {"tls", "0|1", "0", "TLS to every node"},
    {"tls_ca", "FILE", NULL, "the CA certificates that verify the nodes (default: the system's)"},
    {"tls_verify", "0|1", "1", "verify the nodes' certificates and names"},
    {"tls_cert", "FILE", NULL, "a client certificate"},
    {"tls_key", "FILE", NULL, "its private key"},
    {"connect_timeout", "DURATION", "5s", "the longest wait to connect to a node, 1ms to 10m"},
    {"request_timeout", "DURATION", "12s", "the longest wait for an answer, 1ms to 10m"},
    {"retry_timeout", "DURATION", "5m", "how long a request is retried, 0 (never give up) to 1d"},
    {"max_in_flight", "N", "512", "requests in flight, 1 to 32768"},
    {"batch", "none|unlogged", "none", "unlogged: UNLOGGED batches of sessions owned by one node"},
    {"batch_size", "N", "16", "sessions per batch, 1 to 1024"},
    {"local_dc", "NAME", NULL, "the data center to write to (default: the first node's)"},
    {"token_aware", "0|1", "1", "send each write to a node that owns its row"},
    {NULL, NULL, NULL, NULL}};
extern const sink_ops cql_sink_ops;

#define CQL_MAX_BATCH 1024

typedef struct group {
    cql_values *items; /* batch_size slots */
    size_t n;
} group;

typedef struct cql_sink {
    sink base;
    cql_client *client;
    cql_prepared *insert;
    char *keyspace;
    char *contact_points;
    char *username, *password, *tls_ca, *tls_cert, *tls_key, *local_dc;
    cql_client_config cfg;
    uint16_t consistency;
    int batch;         /* 0: one EXECUTE per session; 1: UNLOGGED batches per node */
    size_t batch_size;
    group *groups;     /* one per node, plus one for "no route" at index 0 */
    size_t n_groups;
    cql_values v;
    job_status *status;
    int string_users;
    unsigned columns;
    const char *cols[4 + SINK_N_OPTIONAL][4]; /* the table's columns, as expected_cols */
    int n_cols;
    buf ddl;                                  /* CREATE TABLE ... */
} cql_sink;

static void cql_sink_waiting(void *ud);

static void cql_sink_log(void *ud, int level, const char *msg)
{
    (void)ud;
    if (level <= CQL_LOG_WARN)
        log_msg(level == CQL_LOG_ERROR ? LOG_ERROR : LOG_WARN, "cql", "%s", msg);
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* A count as the command line writes them (common/units.h: 512, 1k). */
static int parse_int(const char *v, long lo, long hi, long *out)
{
    assert(lo >= 0);
    uint64_t n;
    if (parse_count(v, &n) || n < (uint64_t)lo || n > (uint64_t)hi) return -1;
    *out = (long)n;
    return 0;
}

static int parse_props(cql_sink *s, const char *const *props, char *err, size_t errlen)
{
    for (size_t i = 0; props && props[i]; i++) {
        const char *kv = props[i];
        size_t kl = strcspn(kv, "=");
        long n;
#define KEY_IS(k) (kl == strlen(k) && strncmp(kv, k, kl) == 0)
        if (KEY_IS("connect_timeout_ms") || KEY_IS("request_timeout_ms") ||
            KEY_IS("retry_timeout_ms"))
            return fail(err, errlen, "cql: %.*s is now %.*s=DURATION (e.g. %.*s=30s), spelt as "
                        "every duration of the program", (int)kl, kv, (int)kl - 3, kv,
                        (int)kl - 3, kv);
        const char *v;
        char why[1024];
        if (!sink_setting_find(&cql_sink_ops, kv, &v, why, sizeof why))
            return fail(err, errlen, "%s", why);
/* Durations through the one parser (common/units.h), kept in milliseconds. */
#define DUR_OPT(k, lo_ms, hi_ms, range, dst)                                                  \
    else if (KEY_IS(k)) {                                                                     \
        int64_t us;                                                                           \
        if (parse_duration_us(v, &us) || us % 1000 != 0 || us / 1000 < (lo_ms) ||             \
            us / 1000 > (hi_ms))                                                              \
            return fail(err, errlen, "cql: %s=%s: expected a duration from %s, e.g. 500ms, " \
                        "30s, 5m", k, v, range);                                              \
        dst = (int)(us / 1000);                                                               \
    }
#define BOOL_OPT(k, dst)                                                                      \
    else if (KEY_IS(k)) {                                                                     \
        int b_;                                                                               \
        if (parse_bool(v, &b_))                                                               \
            return fail(err, errlen, "cql: %s=%s: expected 1 or 0 (or true/false, yes/no, "   \
                        "on/off)", k, v);                                                     \
        dst = b_;                                                                             \
    }
#define INT_OPT(k, lo, hi, dst)                                                               \
    else if (KEY_IS(k)) {                                                                     \
        if (parse_int(v, lo, hi, &n))                                                         \
            return fail(err, errlen, "cql: %s=%s: expected an integer from %ld to %ld", k, v, \
                        (long)(lo), (long)(hi));                                              \
        dst = (int)n;                                                                         \
    }
        if (KEY_IS("consistency")) {
            int c = cql_consistency_parse(v);
            if (c < 0 || c == CQL_CONSISTENCY_SERIAL || c == CQL_CONSISTENCY_LOCAL_SERIAL)
                return fail(err, errlen, "cql: consistency=%s: expected ANY, ONE, TWO, THREE, "
                            "QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM or LOCAL_ONE", v);
            s->consistency = (uint16_t)c;
        } else if (KEY_IS("username")) {
            free(s->username);
            s->username = xstrdup(v);
        } else if (KEY_IS("password")) {
            secret_free(s->password);
            s->password = xstrdup(v);
        } else if (KEY_IS("password_file")) {
            /* the same reading as the CLI's password=@file:PATH (common/secret.h) */
            char *pw, e[512];
            if (secret_read_file(v, &pw, e, sizeof e))
                return fail(err, errlen, "cql: password_file: %s", e);
            secret_free(s->password);
            s->password = pw;
        } else if (KEY_IS("tls_ca")) {
            free(s->tls_ca);
            s->tls_ca = xstrdup(v);
        } else if (KEY_IS("tls_cert")) {
            free(s->tls_cert);
            s->tls_cert = xstrdup(v);
        } else if (KEY_IS("tls_key")) {
            free(s->tls_key);
            s->tls_key = xstrdup(v);
        } else if (KEY_IS("local_dc")) {
            free(s->local_dc);
            s->local_dc = xstrdup(v);
        } else if (KEY_IS("batch")) {
            if (strcmp(v, "none") == 0)
                s->batch = 0;
            else if (strcmp(v, "unlogged") == 0)
                s->batch = 1;
            else
                return fail(err, errlen, "cql: batch=%s: expected none or unlogged", v);
        }
        BOOL_OPT("tls", s->cfg.tls)
        BOOL_OPT("tls_verify", s->cfg.tls_verify)
        BOOL_OPT("token_aware", s->cfg.token_aware)
        DUR_OPT("connect_timeout", 1, 600000, "1ms to 10m", s->cfg.connect_timeout_ms)
        DUR_OPT("request_timeout", 1, 600000, "1ms to 10m", s->cfg.request_timeout_ms)
        DUR_OPT("retry_timeout", 0, 86400000, "0 (never give up) to 1d", s->cfg.retry_timeout_ms)
        INT_OPT("max_in_flight", 1, 32768, s->cfg.max_in_flight)
        else if (KEY_IS("batch_size")) {
            if (parse_int(v, 1, CQL_MAX_BATCH, &n))
                return fail(err, errlen, "cql: batch_size=%s: expected 1 to %d", v, CQL_MAX_BATCH);
            s->batch_size = (size_t)n;
        } else {
            assert(!"a setting of cql_settings without its case");
            return fail(err, errlen, "cql: %s: a setting without its case (a bug)", kv);
        }
#undef BOOL_OPT
#undef INT_OPT
#undef DUR_OPT
#undef KEY_IS
    }
    return 0;
}

/* "//h1:9042,h2/ks" -> contact points and keyspace */
static int parse_target(cql_sink *s, const char *target, char *err, size_t errlen)
{
    if (strncmp(target, "//", 2) != 0)
        return fail(err, errlen, "cql: expected cql://HOST[:PORT][,HOST[:PORT]...]/KEYSPACE");
    const char *hosts = target + 2;
    const char *slash = strchr(hosts, '/');
    if (!slash || slash == hosts || !slash[1])
        return fail(err, errlen, "cql: expected cql://HOST[:PORT][,HOST[:PORT]...]/KEYSPACE "
                    "(hosts and keyspace are both required)");
    if (memchr(hosts, '@', (size_t)(slash - hosts)))
        return fail(err, errlen, "cql: credentials in the URI are not supported (they would "
                    "show in process lists and logs); use --sink-opt username= and "
                    "password_file=");
    const char *ks = slash + 1;
    size_t kl = strlen(ks);
    if (kl > 48 || !(isalpha((unsigned char)ks[0])))
        goto bad_ks;
    for (size_t i = 0; i < kl; i++)
        if (!isalnum((unsigned char)ks[i]) && ks[i] != '_') goto bad_ks;
    s->contact_points = xstrndup(hosts, (size_t)(slash - hosts));
    /* unquoted CQL identifiers are case-insensitive: the server lowercases */
    s->keyspace = xstrdup(ks);
    for (char *p = s->keyspace; *p; p++) *p = (char)tolower((unsigned char)*p);
    return 0;
bad_ks:
    return fail(err, errlen, "cql: keyspace '%s' is not a valid name (a letter, then up to 47 "
                "letters, digits or '_')", ks);
}

static void cql_sink_close(sink *base);

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What a checkpoint is bound to: "cql://" the contact points as written,
 * lowercased and sorted ("h2,h1" and "H1,h2" are one cluster), then the
 * keyspace and the table. No credentials. Another set of contact points for
 * the same cluster reads as another store: the identity is what the user
 * named, as the server offers no identity of a cluster (cluster_name is a
 * setting, "Test Cluster" by default). */
static void cql_identity(sink *base, buf *out)
{
    cql_sink *s = (cql_sink *)base;
    char *hosts = xstrdup(s->contact_points);
    for (char *p = hosts; *p; p++) *p = (char)tolower((unsigned char)*p);
    size_t n = 1;
    for (const char *p = hosts; *p; p++) n += *p == ',';
    char **parts = xcalloc(n, sizeof *parts);
    size_t k = 0;
    for (char *save = NULL, *t = strtok_r(hosts, ",", &save); t && k < n;
         t = strtok_r(NULL, ",", &save))
        parts[k++] = t;
    qsort(parts, k, sizeof *parts, cmp_str);
    buf_append_str(out, "cql://");
    for (size_t i = 0; i < k; i++) {
        if (i) buf_append_byte(out, ',');
        buf_append_str(out, parts[i]);
    }
    buf_printf(out, "/%s table=sessions", s->keyspace);
    free(parts);
    free(hosts);
}

/* The buffer's bytes as a C string (buf does not NUL-terminate). */
static const char *cstr(buf *b)
{
    buf_reserve(b, 1);
    b->data[b->len] = '\0';
    return (const char *)b->data;
}
extern const sink_ops cql_sink_ops;

static const char *const expected_cols[4][4] = {
    /* name, type, kind, position */
    {"session_id", "bigint", "partition_key", "0"},
    {"user_id", "bigint", "clustering", "0"},
    {"pages", "list<text>", "regular", "-1"},
    {"ingestion_time", "timestamp", "regular", "-1"},
};

/* The opt-in columns' CQL types, in SINK_COL_* order: times in
 * milliseconds (timestamp), duration in milliseconds (bigint). */
static const char *const optional_types[SINK_N_OPTIONAL] = {"timestamp", "timestamp", "bigint",
                                                            "bigint"};

/* The columns this job writes (s->cols) and the CREATE TABLE for them. */
static void plan_columns(cql_sink *s)
{
    s->n_cols = 0;
    for (int k = 0; k < 4; k++) {
        for (int f = 0; f < 4; f++) s->cols[k][f] = expected_cols[k][f];
        s->n_cols++;
    }
    if (s->string_users) s->cols[1][1] = "text";
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) {
            const char **col = s->cols[s->n_cols++];
            col[0] = sink_column_names[c], col[1] = optional_types[c], col[2] = "regular",
            col[3] = "-1";
        }
    buf_reset(&s->ddl);
    buf_printf(&s->ddl, "CREATE TABLE IF NOT EXISTS %s.sessions (", s->keyspace);
    for (int k = 0; k < s->n_cols; k++) buf_printf(&s->ddl, "%s %s, ", s->cols[k][0], s->cols[k][1]);
    buf_append_str(&s->ddl, "PRIMARY KEY(session_id, user_id))");
}

/* Checks the table in system_schema.columns. 0: as expected; 1: table
 * missing; -1: different (err says how) or the query failed. */
static int check_table(cql_sink *s, char *err, size_t errlen)
{
    cql_values v;
    cql_values_init(&v);
    cql_values_text(&v, s->keyspace, strlen(s->keyspace));
    cql_result r;
    char e[1024];
    int rc = cql_client_query(s->client, "SELECT column_name, kind, position, type FROM "
                              "system_schema.columns WHERE keyspace_name = ? AND table_name = "
                              "'sessions'", &v, CQL_CONSISTENCY_ONE, &r, e, sizeof e);
    cql_values_free(&v);
    if (rc) {
        /* no system_schema (a very old server): the prepared statement's
         * metadata is still checked below */
        cql_sink_log(NULL, CQL_LOG_WARN, "cannot read system_schema.columns; checking the "
                     "table through its prepared INSERT only");
        return 0;
    }
    if (r.r.kind != CQL_RESULT_ROWS || r.r.n_rows == 0) {
        cql_result_free(&r);
        return 1;
    }
    buf diff, fix;
    buf_init(&diff);
    buf_init(&fix);
    int seen[4 + SINK_N_OPTIONAL] = {0}, key_ok = 1;
    for (int32_t row = 0; row < r.r.n_rows; row++) {
        const cql_cell *cells = &r.r.cells[(size_t)row * (size_t)r.r.meta.n_cols];
        char *name = NULL, *kind = NULL, *type = NULL;
        int32_t pos = -1;
        cql_cell_text(&cells[0], &name);
        cql_cell_text(&cells[1], &kind);
        cql_cell_int(&cells[2], &pos);
        cql_cell_text(&cells[3], &type);
        int k;
        for (k = 0; k < s->n_cols; k++)
            if (name && strcmp(name, s->cols[k][0]) == 0) break;
        if (k == s->n_cols) {
            /* not the job's: a regular column is left out of the INSERT (CQL
             * columns are nullable); another key column would change the key */
            if (!kind || strcmp(kind, "regular") != 0) {
                buf_printf(&diff, "%sunexpected %s column %s %s", diff.len ? "; " : "",
                           kind ? kind : "?", name ? name : "?", type ? type : "?");
                key_ok = 0;
            }
        } else {
            seen[k] = 1;
            char posbuf[16];
            snprintf(posbuf, sizeof posbuf, "%d", (int)pos);
            /* "varchar" is the same type as "text" */
            int type_ok = type && (strcmp(type, s->cols[k][1]) == 0 ||
                                   (k == 2 && strcmp(type, "list<varchar>") == 0) ||
                                   (strcmp(s->cols[k][1], "text") == 0 && strcmp(type, "varchar") == 0));
            if (!type_ok) {
                buf_printf(&diff, "%scolumn %s is %s, expected %s", diff.len ? "; " : "", name,
                           type ? type : "?", s->cols[k][1]);
                if (k < 4) key_ok = 0; /* CQL cannot change a column's type */
                else
                    buf_printf(&fix, "ALTER TABLE %s.sessions DROP %s; ALTER TABLE %s.sessions ADD "
                               "%s %s; ", s->keyspace, name, s->keyspace, name, s->cols[k][1]);
            }
            if (!kind || strcmp(kind, s->cols[k][2]) != 0 ||
                (k < 2 && strcmp(posbuf, s->cols[k][3]) != 0)) {
                buf_printf(&diff, "%scolumn %s is a %s column (position %d), expected %s",
                           diff.len ? "; " : "", name, kind ? kind : "?", (int)pos,
                           s->cols[k][2]);
                key_ok = 0;
            }
        }
        free(name);
        free(kind);
        free(type);
    }
    for (int k = 0; k < s->n_cols; k++)
        if (!seen[k]) {
            buf_printf(&diff, "%smissing column %s %s", diff.len ? "; " : "", s->cols[k][0],
                       s->cols[k][1]);
            if (k < 4) key_ok = 0;
            else
                buf_printf(&fix, "ALTER TABLE %s.sessions ADD %s %s; ", s->keyspace, s->cols[k][0],
                           s->cols[k][1]);
        }
    cql_result_free(&r);
    if (diff.len) {
        if (!key_ok)
            fail(err, errlen, "cql: table %s.sessions does not fit the sessions this job writes "
                 "(%s): %.*s. Its key and the four row columns cannot be altered: write to "
                 "another keyspace (the sink creates the table there)", s->keyspace, cstr(&s->ddl),
                 (int)diff.len, (const char *)diff.data);
        else
            fail(err, errlen, "cql: table %s.sessions does not fit the sessions this job writes: "
                 "%.*s. Fix it with: %.*s", s->keyspace, (int)diff.len, (const char *)diff.data,
                 (int)(fix.len ? fix.len - 1 : 0), fix.data ? (const char *)fix.data : "");
        buf_free(&diff);
        buf_free(&fix);
        return -1;
    }
    buf_free(&diff);
    buf_free(&fix);
    return 0;
}

static int setup_schema(cql_sink *s, int create_schema, char *err, size_t errlen)
{
    char e[1024];
    buf q;
    buf_init(&q);
    int rc = -1;
    if (create_schema) {
        /* exactly the reference init.cql, with the keyspace of the URI */
        buf_printf(&q, "CREATE KEYSPACE IF NOT EXISTS %s WITH replication = {'class': "
                   "'SimpleStrategy', 'replication_factor': 1}", s->keyspace);
        if (cql_client_query(s->client, cstr(&q), NULL, s->consistency, NULL, e,
                             sizeof e)) {
            fail(err, errlen, "cql: creating keyspace %s: %s", s->keyspace, e);
            goto out;
        }
        if (cql_client_query(s->client, cstr(&s->ddl), NULL, s->consistency, NULL, e,
                             sizeof e)) {
            fail(err, errlen, "cql: creating table %s.sessions: %s", s->keyspace, e);
            goto out;
        }
        int agree = cql_client_wait_schema_agreement(s->client, 10000, e, sizeof e);
        if (agree < 0) {
            fail(err, errlen, "cql: waiting for schema agreement: %s", e);
            goto out;
        }
        if (agree > 0)
            cql_sink_log(NULL, CQL_LOG_WARN, "nodes still disagree on the schema after 10 s; "
                         "going on");
    }
    int t = check_table(s, err, errlen);
    if (t < 0) goto out;
    if (t > 0) {
        fail(err, errlen, "cql: table %s.sessions does not exist%s; create it with: %s",
             s->keyspace, create_schema ? "" : " and schema creation is off (create_schema)",
             cstr(&s->ddl));
        goto out;
    }
    buf_reset(&q);
    buf_printf(&q, "INSERT INTO %s.sessions (session_id, user_id, pages, ingestion_time",
               s->keyspace);
    for (int k = 4; k < s->n_cols; k++) buf_printf(&q, ", %s", s->cols[k][0]);
    buf_append_str(&q, ") VALUES (?, ?, ?, ?");
    for (int k = 4; k < s->n_cols; k++) buf_append_str(&q, ", ?");
    buf_append_str(&q, ")");
    s->insert = cql_client_prepare(s->client, cstr(&q), e, sizeof e);
    if (!s->insert) {
        fail(err, errlen, "cql: preparing the INSERT into %s.sessions: %s", s->keyspace, e);
        goto out;
    }
    /* the bind markers must have the reference types, and the partition key
     * must be session_id alone, or routing and upserts would be wrong */
    const cql_metadata *m = cql_prepared_params(s->insert);
    uint16_t want[4 + SINK_N_OPTIONAL] = {CQL_TYPE_BIGINT, CQL_TYPE_BIGINT, CQL_TYPE_LIST,
                                          CQL_TYPE_TIMESTAMP};
    for (int k = 1; k < s->n_cols; k++)
        if (k == 1 || k >= 4)
            want[k] = strcmp(s->cols[k][1], "text") == 0        ? CQL_TYPE_VARCHAR
                      : strcmp(s->cols[k][1], "timestamp") == 0 ? CQL_TYPE_TIMESTAMP
                                                                : CQL_TYPE_BIGINT;
    int ok = m->n_cols == s->n_cols && m->cols;
    for (int i = 0; ok && i < s->n_cols; i++) {
        const cql_type *ty = m->cols[i].type;
        ok = ty && (ty->id == want[i] ||
                    (want[i] == CQL_TYPE_VARCHAR && ty->id == CQL_TYPE_ASCII));
        if (ok && i == 2)
            ok = ty->n == 1 && ty->sub && ty->sub[0] &&
                 (ty->sub[0]->id == CQL_TYPE_VARCHAR || ty->sub[0]->id == CQL_TYPE_ASCII);
    }
    if (!ok) {
        buf got;
        buf_init(&got);
        for (int32_t i = 0; m->cols && i < m->n_cols; i++) {
            buf_printf(&got, "%s%s ", i ? ", " : "", m->cols[i].name);
            cql_type_format(m->cols[i].type, &got);
        }
        fail(err, errlen, "cql: table %s.sessions has the wrong column types: (%.*s), expected "
             "those of %s", s->keyspace, (int)got.len, got.data ? (const char *)got.data : "",
             cstr(&s->ddl));
        buf_free(&got);
        goto out;
    }
    if (m->n_pk != 1 || m->pk[0] != 0)
        cql_sink_log(NULL, CQL_LOG_WARN, "the server did not report session_id as the partition "
                     "key of the INSERT; writes are not token-aware");
    rc = 0;
out:
    buf_free(&q);
    return rc;
}

static sink *cql_sink_open(const char *target, const sink_options *opts, char *err, size_t errlen)
{
    cql_sink *s = xcalloc(1, sizeof *s);
    s->base.ops = &cql_sink_ops;
    s->string_users = opts->string_users;
    s->columns = opts->columns;
    buf_init(&s->ddl);
    cql_client_config_defaults(&s->cfg);
    s->cfg.cancel = opts && opts->ctx ? opts->ctx->stop : NULL;
    s->cfg.waiting = cql_sink_waiting;
    s->cfg.waiting_ud = s;
    s->status = opts && opts->ctx ? opts->ctx->status : NULL;
    s->consistency = CQL_CONSISTENCY_LOCAL_QUORUM;
    s->batch_size = 16;
    cql_values_init(&s->v);
    if (parse_target(s, target, err, errlen) ||
        parse_props(s, opts ? opts->props : NULL, err, errlen))
        goto fail;
    if (s->password && !s->username) {
        fail(err, errlen, "cql: a password is configured without a username");
        goto fail;
    }
    if (s->username && !s->password) {
        fail(err, errlen, "cql: username is set but neither password= nor password_file= is");
        goto fail;
    }
    if ((s->tls_ca || s->tls_cert || s->tls_key) && !s->cfg.tls) {
        fail(err, errlen, "cql: tls_ca/tls_cert/tls_key given but tls=1 is not");
        goto fail;
    }
    s->cfg.contact_points = s->contact_points;
    s->cfg.username = s->username;
    s->cfg.password = s->password;
    s->cfg.tls_ca = s->tls_ca;
    s->cfg.tls_cert = s->tls_cert;
    s->cfg.tls_key = s->tls_key;
    s->cfg.local_dc = s->local_dc;
    s->cfg.log = cql_sink_log;
    char e[1024];
    s->client = cql_client_connect(&s->cfg, e, sizeof e);
    if (!s->client) {
        fail(err, errlen, "cql: %s", e);
        goto fail;
    }
    plan_columns(s);
    if (setup_schema(s, opts ? opts->create_schema : 1, err, errlen)) goto fail;
    if (s->batch) {
        cql_client_stats st;
        cql_client_get_stats(s->client, &st);
        s->n_groups = (size_t)st.hosts + 1;
        s->groups = xcalloc(s->n_groups, sizeof *s->groups);
    }
    return &s->base;
fail:
    cql_sink_close(&s->base);
    return NULL;
}

/* Sends a node's pending sessions as one UNLOGGED batch (or a lone EXECUTE). */
static int send_group(cql_sink *s, group *g, char *err, size_t errlen)
{
    if (g->n == 0) return 0;
    char e[1024];
    int64_t ts_us = (int64_t)sink_now_ms() * 1000;
    int rc;
    if (g->n == 1) {
        rc = cql_client_execute(s->client, s->insert, &g->items[0], s->consistency, ts_us, e,
                                sizeof e);
    } else {
        const cql_values **items = xcalloc(g->n, sizeof *items);
        for (size_t i = 0; i < g->n; i++) items[i] = &g->items[i];
        rc = cql_client_batch(s->client, s->insert, items, g->n, CQL_BATCH_UNLOGGED,
                              s->consistency, ts_us, e, sizeof e);
        free(items);
    }
    g->n = 0;
    return rc ? fail(err, errlen, "cql: %s", e) : 0;
}

static int64_t floor_div(int64_t a, int64_t b) { return a / b - (a % b != 0 && (a < 0) != (b < 0)); }

static int cql_sink_write(sink *base, const closed_session *cs, char *err, size_t errlen)
{
    cql_sink *s = (cql_sink *)base;
    long long now_ms = sink_now_ms();
    cql_values *v = &s->v;
    cql_values_reset(v);
    cql_values_bigint(v, cs->session_id);
    if (cs->user) cql_values_text(v, cs->user, cs->user_len);
    else cql_values_bigint(v, cs->user_id);
    size_t at = cql_values_collection_begin(v, (int32_t)cs->n_pages);
    for (size_t i = 0; i < cs->n_pages; i++)
        cql_values_collection_text(v, cs->pages[i].data, cs->pages[i].len);
    cql_values_collection_end(v, at);
    cql_values_timestamp(v, now_ms);
    /* event times in milliseconds, rounded down (a timestamp's unit) */
    int64_t first_ms = floor_div(cs->first_event_us, 1000), last_ms = floor_div(cs->last_event_us, 1000);
    if (s->columns & SINK_COL_SESSION_START) cql_values_timestamp(v, first_ms);
    if (s->columns & SINK_COL_SESSION_END) cql_values_timestamp(v, last_ms);
    if (s->columns & SINK_COL_VISIT_COUNT) cql_values_bigint(v, (int64_t)cs->visits);
    if (s->columns & SINK_COL_DURATION)
        cql_values_bigint(v, (cs->last_event_us - cs->first_event_us) / 1000);
    if (!s->batch) {
        char e[1024];
        /* the write timestamp is ingestion_time: a retry carries the same one */
        if (cql_client_execute(s->client, s->insert, v, s->consistency, now_ms * 1000, e,
                               sizeof e))
            return fail(err, errlen, "cql: %s", e);
        return 0;
    }
    /* batch=unlogged: group by the node that owns the partition */
    int64_t token;
    size_t route = 0;
    if (cql_prepared_token(s->insert, v, &token)) route = (size_t)(cql_client_route(s->client, token) + 1);
    if (route >= s->n_groups) {
        s->groups = xrealloc(s->groups, (route + 1) * sizeof *s->groups);
        memset(s->groups + s->n_groups, 0, (route + 1 - s->n_groups) * sizeof *s->groups);
        s->n_groups = route + 1;
    }
    group *g = &s->groups[route];
    if (!g->items) {
        g->items = xcalloc(s->batch_size, sizeof *g->items);
        for (size_t i = 0; i < s->batch_size; i++) cql_values_init(&g->items[i]);
    }
    cql_values *slot = &g->items[g->n++];
    cql_values_reset(slot);
    buf_append(&slot->b, v->b.data, v->b.len);
    slot->n = v->n;
    if (g->n == s->batch_size) return send_group(s, g, err, errlen);
    return 0;
}

/* The client's figures as the job's status for the sink: retries, errors
 * (timeouts, failed requests, reconnections) and reachability (a node up). */
static void cql_sink_waiting(void *ud)
{
    cql_sink *s = ud;
    status_beat(s->status);
    if (!s->status || !s->client) return;
    io_status *io = &s->status->sink;
    cql_client_stats st;
    cql_client_get_stats(s->client, &st);
    atomic_store(&io->retries, st.retries);
    atomic_store(&io->errors[IO_ERR_TIMEOUT], st.timeouts);
    atomic_store(&io->errors[IO_ERR_SERVER], st.failed);
    atomic_store(&io->errors[IO_ERR_CONNECTION], st.reconnects);
    if (st.hosts_up > 0) io_status_up(io);
    else io_status_down(io);
}

static int cql_sink_flush(sink *base, char *err, size_t errlen)
{
    cql_sink *s = (cql_sink *)base;
    cql_sink_waiting(s);
    for (size_t i = 0; i < s->n_groups; i++)
        if (send_group(s, &s->groups[i], err, errlen)) return -1;
    char e[1024];
    int rc = cql_client_wait(s->client, e, sizeof e);
    cql_sink_waiting(s);
    if (rc) return fail(err, errlen, "cql: %s", e);
    return 0;
}

static void cql_sink_close(sink *base)
{
    cql_sink *s = (cql_sink *)base;
    if (!s) return;
    cql_client_free(s->client);
    for (size_t i = 0; i < s->n_groups; i++) {
        if (!s->groups[i].items) continue;
        for (size_t k = 0; k < s->batch_size; k++) cql_values_free(&s->groups[i].items[k]);
        free(s->groups[i].items);
    }
    free(s->groups);
    cql_values_free(&s->v);
    free(s->keyspace);
    free(s->contact_points);
    free(s->username);
    secret_free(s->password);
    free(s->tls_ca);
    free(s->tls_cert);
    free(s->tls_key);
    free(s->local_dc);
    buf_free(&s->ddl);
    free(s);
}

const sink_ops cql_sink_ops = {
    .scheme = "cql",
    .usage = "cql://HOST[:PORT][,HOST[:PORT]...]/KEYSPACE  upsert into KEYSPACE.sessions on "
             "ScyllaDB/Cassandra",
    .settings = cql_settings,
    .open = cql_sink_open,
    .write = cql_sink_write,
    .flush = cql_sink_flush,
    .save = NULL,
    .restore = NULL,
    .identity = cql_identity,
    .close = cql_sink_close,
};
