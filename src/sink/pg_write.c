/*
 * pg_write.c - the PostgreSQL sink's write path: write() buffers, a flush
 * upserts everything buffered in one transaction, on a thread of its own.
 *
 * It exists apart from the rest of the sink because it holds the sink's
 * speed and its contract with the checkpoint:
 *
 *  - write() only copies the session into the current batch (deduplicated on
 *    the key, the last write winning, since one statement may not touch a
 *    row twice).
 *  - flush_begin() hands the batch to the committer thread and returns at
 *    once with its ticket; the committer sends the batch in ONE transaction,
 *    at most batch_rows rows and batch_bytes bytes of bound parameters per
 *    statement (PostgreSQL takes no message, and no value, over 1 GB, and
 *    the parameters are a copy of the rows in memory; a session larger than
 *    batch_bytes goes alone). A statement is
 *      INSERT ... SELECT FROM unnest($1::int8[], $2::int8[], $3::text[])
 *      ON CONFLICT (session_id, user_id) DO UPDATE SET pages, ingestion_time
 *    prepared once per connection, with the three arrays sent in binary: one
 *    round trip for many rows, one plan whatever the row count, and values
 *    that are always bound, never spliced into SQL. bench/pg_sink.sh measures
 *    it against one row per statement, a multi-row VALUES statement and COPY
 *    into a staging table (docs/postgresql.md has the figures).
 *  - flush_wait(ticket) returns 0 only after that transaction's COMMIT is
 *    acknowledged, with synchronous_commit raised to "on" if the server had
 *    it "off": that is what lets the checkpoint's writer write the commit
 *    that counts on it (sink.h). Meanwhile the job applies the next records
 *    and the server works on the other core (flush() is begin + wait).
 *  - Transactions commit in ticket order, one at a time, on one connection;
 *    at most PG_MAX_QUEUED flushes are begun and not committed (flush_begin
 *    then waits: the job runs at most one commit ahead of the server). A
 *    flush that fails (retry_timeout, a permanent error, a stop request)
 *    fails every later one with its message: the job stops, and a restart
 *    writes those sessions again from its checkpoint.
 */
#include <assert.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>
#include "common/buf.h"
#include "common/context.h"
#include "common/xalloc.h"
#include "sink/pg_conn.h"
#include "sink/pg_sink.h"
#include "sink/sink.h"

/* ---- the upsert ---------------------------------------------------------- */

static void put_be32(buf *b, uint32_t v)
{
    unsigned char o[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, o, 4);
}

static void put_be64(buf *b, uint64_t v)
{
    unsigned char o[8];
    for (int i = 0; i < 8; i++) o[i] = (unsigned char)(v >> (56 - 8 * i));
    buf_append(b, o, 8);
}

/* Appends a one-dimensional binary array header (PostgreSQL's array_send format). */
static void array_header(buf *b, size_t n, uint32_t elem_oid)
{
    put_be32(b, n ? 1 : 0);
    put_be32(b, 0); /* no NULLs */
    put_be32(b, elem_oid);
    if (n) {
        put_be32(b, (uint32_t)n);
        put_be32(b, 1);
    }
}

/* What a row adds to the upsert's bound parameters, as pg_upsert encodes it
 * (each array element is a 4-byte length and the value). */
static size_t row_param_bytes(const pg_sink *s, const pg_row *r)
{
    size_t n = (4 + 8) + 4 + (s->string_users ? r->user_len : 8) + 4 + r->len;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) n += c == 3 ? 4 + 16 : 4 + 8;
    return n;
}

/* Executes the prepared upsert for rows [from, to) with ingestion time ts. */
int pg_upsert(pg_sink *s, const pg_batch *b, size_t from, size_t to, const char *ts, char *err,
              size_t errlen)
{
    size_t n = to - from;
    buf_reset(&s->p_sid);
    buf_reset(&s->p_uid);
    buf_reset(&s->p_pages);
    array_header(&s->p_sid, n, PG_INT8OID);
    array_header(&s->p_uid, n, s->string_users ? PG_TEXTOID : PG_INT8OID);
    array_header(&s->p_pages, n, PG_TEXTOID);
    static const Oid elem[SINK_N_OPTIONAL] = {PG_TIMESTAMPTZOID, PG_TIMESTAMPTZOID, PG_INT8OID,
                                              PG_INTERVALOID};
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) {
        buf_reset(&s->p_opt[c]);
        if (s->columns >> c & 1) array_header(&s->p_opt[c], n, elem[c]);
    }
    buf_reserve(&s->p_sid, n * 12);
    buf_reserve(&s->p_uid, n * 12);
    for (size_t i = from; i < to; i++) {
        const pg_row *r = &b->rows[i];
        put_be32(&s->p_sid, 8);
        put_be64(&s->p_sid, (uint64_t)r->session_id);
        if (s->string_users) {
            put_be32(&s->p_uid, (uint32_t)r->user_len);
            buf_append(&s->p_uid, b->literals.data + r->user_off, r->user_len);
        } else {
            put_be32(&s->p_uid, 8);
            put_be64(&s->p_uid, (uint64_t)r->user_id);
        }
        const int64_t opt[SINK_N_OPTIONAL] = {r->first_us - PG_EPOCH_US, r->last_us - PG_EPOCH_US,
                                              (int64_t)r->visits, r->last_us - r->first_us};
        for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) {
            if (!(s->columns >> c & 1)) continue;
            put_be32(&s->p_opt[c], c == 3 ? 16 : 8);
            put_be64(&s->p_opt[c], (uint64_t)opt[c]);
            if (c == 3) { /* interval: microseconds, then days and months */
                put_be32(&s->p_opt[c], 0);
                put_be32(&s->p_opt[c], 0);
            }
        }
        put_be32(&s->p_pages, (uint32_t)r->len);
        buf_append(&s->p_pages, b->literals.data + r->off, r->len);
    }
    size_t total = s->p_sid.len + s->p_uid.len + s->p_pages.len;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) total += s->p_opt[c].len;
    /* pg_commit_rows cut the batch at batch_bytes (the arrays' headers aside) */
    assert(n == 1 || total <= s->batch_bytes + (3 + SINK_N_OPTIONAL) * 20);
    if (total > PG_MAX_MESSAGE_BYTES) /* a single session, then */
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: session %lld is %zu bytes as parameters, over the 1 GB "
                            "PostgreSQL takes in one message (lower --max-session-bytes)",
                            (long long)b->rows[from].session_id, total),
               PG_PERMANENT;
    const char *values[4 + SINK_N_OPTIONAL] = {(const char *)s->p_sid.data,
                                               (const char *)s->p_uid.data,
                                               (const char *)s->p_pages.data, ts};
    int lengths[4 + SINK_N_OPTIONAL] = {(int)s->p_sid.len, (int)s->p_uid.len, (int)s->p_pages.len,
                                        0};
    int formats[4 + SINK_N_OPTIONAL] = {1, 1, 1, 0};
    int np = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) {
            values[np] = (const char *)s->p_opt[c].data;
            lengths[np] = (int)s->p_opt[c].len;
            formats[np++] = 1;
        }
    int sent = PQsendQueryPrepared(s->pc.conn, PG_STMT_NAME, np, values, lengths, formats, 0);
    return pg_conn_finish(&s->pc, sent, "upsert", NULL, err, errlen);
}

/* The upsert: the rows' arrays unnested, in the order pg_upsert() binds them. */
char *pg_upsert_sql(const pg_sink *s)
{
    buf q;
    buf_init(&q);
    /* $5... are the chosen opt-in columns, arrays as $1-$3 are */
    static const char *const casts[SINK_N_OPTIONAL] = {"timestamptz[]", "timestamptz[]", "int8[]",
                                                       "interval[]"};
    buf names, sel, arrays, cols, sets;
    buf_init(&names);
    buf_init(&sel);
    buf_init(&arrays);
    buf_init(&cols);
    buf_init(&sets);
    for (unsigned k = 0, arg = 5; k < SINK_N_OPTIONAL; k++)
        if (s->columns >> k & 1) {
            const char *n = sink_column_names[k];
            buf_printf(&names, ", %s", n);
            buf_printf(&sel, ", r.%s", n);
            buf_printf(&arrays, ", $%u::%s", arg++, casts[k]);
            buf_printf(&cols, ", %s", n);
            buf_printf(&sets, ", %s = EXCLUDED.%s", n, n);
        }
    buf_append_byte(&names, 0), buf_append_byte(&sel, 0), buf_append_byte(&arrays, 0);
    buf_append_byte(&cols, 0), buf_append_byte(&sets, 0);
    buf_printf(&q,
               "INSERT INTO %s AS t (session_id, user_id, pages, ingestion_time%s) "
               "SELECT r.session_id, r.user_id, r.pages::text[], $4%s "
               "FROM unnest($1::int8[], $2::%s[], $3::text[]%s) AS r(session_id, user_id, pages%s) "
               "ON CONFLICT (session_id, user_id) DO UPDATE "
               "SET pages = EXCLUDED.pages, ingestion_time = EXCLUDED.ingestion_time%s",
               s->table_sql, (const char *)names.data, (const char *)sel.data,
               s->string_users ? "text" : "int8", (const char *)arrays.data,
               (const char *)cols.data, (const char *)sets.data);
    buf_free(&names);
    buf_free(&sel);
    buf_free(&arrays);
    buf_free(&cols);
    buf_free(&sets);
    return buf_steal_str(&q);
}

/* ---- write ----------------------------------------------------------------- */

static uint64_t key_hash(int64_t sid, int64_t uid)
{
    uint64_t x = (uint64_t)sid * 0x9E3779B97F4A7C15ull ^ (uint64_t)uid;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The key of a row: (session_id, user_id), a string user by its bytes. */
static uint64_t row_hash(const pg_sink *s, const pg_batch *b, const pg_row *r)
{
    if (!s->string_users) return key_hash(r->session_id, r->user_id);
    return key_hash(r->session_id, (int64_t)XXH3_64bits(b->literals.data + r->user_off, r->user_len));
}

static int same_key(const pg_sink *s, const pg_batch *b, const pg_row *x, const pg_row *y)
{
    if (x->session_id != y->session_id) return 0;
    if (!s->string_users) return x->user_id == y->user_id;
    return x->user_len == y->user_len &&
           memcmp(b->literals.data + x->user_off, b->literals.data + y->user_off, x->user_len) == 0;
}

static void slots_rebuild(const pg_sink *s, pg_batch *b, size_t n_slots)
{
    free(b->slots);
    b->slots = xcalloc(n_slots, sizeof *b->slots);
    b->n_slots = n_slots;
    for (size_t i = 0; i < b->n_rows; i++) {
        size_t h = (size_t)row_hash(s, b, &b->rows[i]) & (n_slots - 1);
        while (b->slots[h]) h = (h + 1) & (n_slots - 1);
        b->slots[h] = (uint32_t)(i + 1);
    }
}

static void batch_free(pg_batch *b)
{
    if (!b) return;
    free(b->rows);
    buf_free(&b->literals);
    free(b->slots);
    free(b);
}

static void batch_free_list(pg_batch *b)
{
    for (pg_batch *next; b; b = next) {
        next = b->next;
        batch_free(b);
    }
}

/* Empties a committed batch for reuse. */
static void batch_clear(pg_batch *b)
{
    b->n_rows = 0;
    buf_reset(&b->literals);
    if (b->slots) memset(b->slots, 0, b->n_slots * sizeof *b->slots);
    /* Do not let one large burst pin its memory for the rest of the run. */
    if (b->literals.cap > (64u << 20)) buf_free(&b->literals);
}

/* The batch write() fills: a committed one again, or a new one. */
static pg_batch *current_batch(pg_sink *s)
{
    if (s->cur) return s->cur;
    pthread_mutex_lock(&s->mu);
    s->cur = s->spare;
    if (s->cur) s->spare = s->cur->next;
    pthread_mutex_unlock(&s->mu);
    if (!s->cur) {
        s->cur = xcalloc(1, sizeof *s->cur);
        buf_init(&s->cur->literals);
    }
    s->cur->next = NULL;
    return s->cur;
}

int pg_write(sink *base, const closed_session *cs, char *err, size_t errlen)
{
    pg_sink *s = (pg_sink *)base;
    pg_batch *b = current_batch(s);
    if (b->n_rows >= 0xFFFFFFF0u)
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: too many sessions between two flushes");
    /* pages as a text[] literal: {"a","b"} with \ and " escaped. */
    buf *lit = &b->literals;
    size_t off = lit->len;
    buf_append_byte(lit, '{');
    for (size_t i = 0; i < cs->n_pages; i++) {
        const page_ref *p = &cs->pages[i];
        if (memchr(p->data, 0, p->len)) {
            lit->len = off;
            return pg_conn_fail(&s->pc, err, errlen,
                                "postgresql: session %lld of user %lld has a page containing a NUL "
                                "character, which PostgreSQL text cannot store",
                                (long long)cs->session_id, (long long)cs->user_id);
        }
        if (i) buf_append_byte(lit, ',');
        buf_append_byte(lit, '"');
        buf_reserve(lit, p->len);
        for (uint32_t k = 0; k < p->len; k++) {
            char ch = p->data[k];
            if (ch == '"' || ch == '\\') buf_append_byte(lit, '\\');
            buf_append_byte(lit, (unsigned char)ch);
        }
        buf_append_byte(lit, '"');
    }
    buf_append_byte(lit, '}');
    size_t len = lit->len - off;

    size_t user_off = lit->len;
    if (cs->user) buf_append(lit, cs->user, cs->user_len);
    pg_row row = {cs->session_id, cs->user_id, off, len, user_off, cs->user_len,
                  cs->first_event_us, cs->last_event_us, cs->visits};

    if ((b->n_rows + 1) * 2 > b->n_slots) slots_rebuild(s, b, b->n_slots ? b->n_slots * 2 : 1024);
    size_t h = (size_t)row_hash(s, b, &row) & (b->n_slots - 1);
    while (b->slots[h]) {
        pg_row *r = &b->rows[b->slots[h] - 1];
        if (same_key(s, b, r, &row)) {
            *r = row; /* the later write of the same key wins */
            return 0;
        }
        h = (h + 1) & (b->n_slots - 1);
    }
    if (b->n_rows == b->cap_rows) {
        b->cap_rows = b->cap_rows ? b->cap_rows * 2 : 1024;
        b->rows = xrealloc(b->rows, b->cap_rows * sizeof *b->rows);
    }
    b->rows[b->n_rows] = row;
    b->slots[h] = (uint32_t)(++b->n_rows);
    return 0;
}

/* ---- the committer ------------------------------------------------------------ */

typedef struct commit_job {
    pg_sink *s;
    const pg_batch *b;
} commit_job;

/* One attempt at committing a batch (pg_conn_retry retries the whole). */
static int pg_commit_rows(void *ud, char *err, size_t errlen)
{
    const commit_job *j = ud;
    pg_sink *s = j->s;
    const pg_batch *b = j->b;
    char ts[32];
    sink_now_iso8601(ts); /* one ingestion time per transaction */
    int st = pg_conn_exec(&s->pc, "BEGIN", "BEGIN", err, errlen);
    for (size_t i = 0; !st && i < b->n_rows;) {
        size_t to = i, bytes = 0;
        while (to < b->n_rows && to - i < s->batch_rows) {
            size_t rb = row_param_bytes(s, &b->rows[to]);
            if (to > i && bytes + rb > s->batch_bytes) break; /* a large one goes alone */
            bytes += rb;
            to++;
        }
        st = pg_upsert(s, b, i, to, ts, err, errlen);
        i = to;
    }
    if (st) return st;
    PGresult *r;
    st = pg_conn_finish(&s->pc, PQsendQuery(s->pc.conn, "COMMIT"), "COMMIT", &r, err, errlen);
    if (st) return st;
    /* A transaction that failed answers COMMIT with ROLLBACK. */
    int committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    if (!committed)
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: COMMIT was answered with a rollback"),
               PG_TRANSIENT;
    return PG_OK;
}

static void *committer_main(void *arg)
{
    pg_sink *s = arg;
    char e[sizeof s->tickets.err];
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (!s->queue) {
            if (s->quit) break;
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        /* The head stays queued while it commits: n_queued counts it. */
        pg_batch *b = s->queue;
        /* after a failure nothing is committed again (its error is the
         * job's); closing, a flush not yet committed is dropped (nobody
         * counts on it: the checkpoint is closed first) */
        int give_up = s->tickets.failed != 0 || s->quit;
        pthread_mutex_unlock(&s->mu);
        commit_job j = {s, b};
        int rc = give_up ? -1 : pg_conn_retry(&s->pc, pg_commit_rows, &j, "commit", e, sizeof e);
        pthread_mutex_lock(&s->mu);
        flush_tickets_finish(&s->tickets, &s->progress, b->ticket,
                             !rc ? NULL : give_up ? "postgresql: closed before its commit" : e);
        s->queue = b->next;
        if (!s->queue) s->queue_tail = NULL;
        s->n_queued--;
        batch_clear(b);
        b->next = s->spare;
        s->spare = b;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int pg_committer_start(pg_sink *s, char *err, size_t errlen)
{
    int e = job_thread_start(&s->committer, committer_main, s);
    if (e) {
        snprintf(err, errlen, "postgresql: cannot start the sink's commit thread: %s", strerror(e));
        return -1;
    }
    s->committer_running = 1;
    return 0;
}

void pg_committer_stop(pg_sink *s)
{
    if (s->committer_running) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_broadcast(&s->work);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->committer, NULL);
        s->committer_running = 0;
    }
    batch_free(s->cur);
    s->cur = NULL;
    batch_free_list(s->queue);
    batch_free_list(s->spare);
    s->queue = s->queue_tail = s->spare = NULL;
    s->n_queued = 0;
}

/* ---- flush --------------------------------------------------------------------- */

uint64_t pg_flush_begin(sink *base)
{
    pg_sink *s = (pg_sink *)base;
    if (!s->cur || s->cur->n_rows == 0) return s->last_ticket;
    assert(s->committer_running);
    pg_batch *b = s->cur;
    s->cur = NULL;
    b->ticket = ++s->last_ticket;
    b->next = NULL;
    pthread_mutex_lock(&s->mu);
    while (s->n_queued >= PG_MAX_QUEUED) pthread_cond_wait(&s->progress, &s->mu);
    if (s->queue_tail) s->queue_tail->next = b;
    else s->queue = b;
    s->queue_tail = b;
    s->n_queued++;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    return b->ticket;
}

int pg_flush_wait(sink *base, uint64_t ticket, char *err, size_t errlen)
{
    pg_sink *s = (pg_sink *)base;
    return flush_tickets_wait(&s->tickets, &s->mu, &s->progress, ticket, err, errlen);
}

int pg_flush(sink *base, char *err, size_t errlen)
{
    return pg_flush_wait(base, pg_flush_begin(base), err, errlen);
}
