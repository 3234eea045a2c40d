/*
 * pg_write.c - the PostgreSQL sink's write path: write() buffers, flush()
 * upserts everything buffered in one transaction.
 *
 * It exists apart from the rest of the sink because it holds the sink's
 * speed and its contract with the checkpoint:
 *
 *  - write() only copies the session into memory (deduplicated on the key, the
 *    last write winning, since one statement may not touch a row twice).
 *  - flush() sends everything buffered since the last flush in ONE
 *    transaction, at most batch_rows rows and batch_bytes bytes of bound
 *    parameters per statement (PostgreSQL takes no message, and no value,
 *    over 1 GB, and the parameters are a copy of the rows in memory; a
 *    session larger than batch_bytes goes alone). A statement is
 *      INSERT ... SELECT FROM unnest($1::int8[], $2::int8[], $3::text[])
 *      ON CONFLICT (session_id, user_id) DO UPDATE SET pages, ingestion_time
 *    prepared once per connection, with the three arrays sent in binary: one
 *    round trip for many rows, one plan whatever the row count, and values
 *    that are always bound, never spliced into SQL. bench/pg_sink.sh measures
 *    it against one row per statement, a multi-row VALUES statement and COPY
 *    into a staging table (docs/postgresql.md has the figures).
 *  - flush() returns 0 only after COMMIT is acknowledged, with
 *    synchronous_commit raised to "on" if the server had it "off": that is
 *    what lets the job commit its checkpoint afterwards.
 */
#include <assert.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>
#include "common/buf.h"
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
int pg_upsert(pg_sink *s, size_t from, size_t to, const char *ts, char *err, size_t errlen)
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
        const pg_row *r = &s->rows[i];
        put_be32(&s->p_sid, 8);
        put_be64(&s->p_sid, (uint64_t)r->session_id);
        if (s->string_users) {
            put_be32(&s->p_uid, (uint32_t)r->user_len);
            buf_append(&s->p_uid, s->literals.data + r->user_off, r->user_len);
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
        buf_append(&s->p_pages, s->literals.data + r->off, r->len);
    }
    size_t total = s->p_sid.len + s->p_uid.len + s->p_pages.len;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++) total += s->p_opt[c].len;
    /* pg_commit_rows cut the batch at batch_bytes (the arrays' headers aside) */
    assert(n == 1 || total <= s->batch_bytes + (3 + SINK_N_OPTIONAL) * 20);
    if (total > PG_MAX_MESSAGE_BYTES) /* a single session, then */
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: session %lld is %zu bytes as parameters, over the 1 GB "
                            "PostgreSQL takes in one message (lower --max-session-bytes)",
                            (long long)s->rows[from].session_id, total),
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

/* ---- write and flush ----------------------------------------------------- */

/* One attempt at committing everything buffered. */
static int pg_commit_rows(void *ud, char *err, size_t errlen)
{
    pg_sink *s = ud;
    char ts[32];
    sink_now_iso8601(ts); /* one ingestion time per transaction */
    int st = pg_conn_exec(&s->pc, "BEGIN", "BEGIN", err, errlen);
    for (size_t i = 0; !st && i < s->n_rows;) {
        size_t to = i, bytes = 0;
        while (to < s->n_rows && to - i < s->batch_rows) {
            size_t b = row_param_bytes(s, &s->rows[to]);
            if (to > i && bytes + b > s->batch_bytes) break; /* a large one goes alone */
            bytes += b;
            to++;
        }
        st = pg_upsert(s, i, to, ts, err, errlen);
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
static uint64_t row_hash(const pg_sink *s, const pg_row *r)
{
    if (!s->string_users) return key_hash(r->session_id, r->user_id);
    return key_hash(r->session_id, (int64_t)XXH3_64bits(s->literals.data + r->user_off, r->user_len));
}

static int same_key(const pg_sink *s, const pg_row *a, const pg_row *b)
{
    if (a->session_id != b->session_id) return 0;
    if (!s->string_users) return a->user_id == b->user_id;
    return a->user_len == b->user_len &&
           memcmp(s->literals.data + a->user_off, s->literals.data + b->user_off, a->user_len) == 0;
}

static void slots_rebuild(pg_sink *s, size_t n_slots)
{
    free(s->slots);
    s->slots = xcalloc(n_slots, sizeof *s->slots);
    s->n_slots = n_slots;
    for (size_t i = 0; i < s->n_rows; i++) {
        size_t h = (size_t)row_hash(s, &s->rows[i]) & (n_slots - 1);
        while (s->slots[h]) h = (h + 1) & (n_slots - 1);
        s->slots[h] = (uint32_t)(i + 1);
    }
}

int pg_write(sink *base, const closed_session *cs, char *err, size_t errlen)
{
    pg_sink *s = (pg_sink *)base;
    if (s->n_rows >= 0xFFFFFFF0u)
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: too many sessions between two flushes");
    /* pages as a text[] literal: {"a","b"} with \ and " escaped. */
    size_t off = s->literals.len;
    buf_append_byte(&s->literals, '{');
    for (size_t i = 0; i < cs->n_pages; i++) {
        const page_ref *p = &cs->pages[i];
        if (memchr(p->data, 0, p->len)) {
            s->literals.len = off;
            return pg_conn_fail(&s->pc, err, errlen,
                                "postgresql: session %lld of user %lld has a page containing a NUL "
                                "character, which PostgreSQL text cannot store",
                                (long long)cs->session_id, (long long)cs->user_id);
        }
        if (i) buf_append_byte(&s->literals, ',');
        buf_append_byte(&s->literals, '"');
        buf_reserve(&s->literals, p->len);
        for (uint32_t k = 0; k < p->len; k++) {
            char ch = p->data[k];
            if (ch == '"' || ch == '\\') buf_append_byte(&s->literals, '\\');
            buf_append_byte(&s->literals, (unsigned char)ch);
        }
        buf_append_byte(&s->literals, '"');
    }
    buf_append_byte(&s->literals, '}');
    size_t len = s->literals.len - off;

    size_t user_off = s->literals.len;
    if (cs->user) buf_append(&s->literals, cs->user, cs->user_len);
    pg_row row = {cs->session_id, cs->user_id, off, len, user_off, cs->user_len,
                  cs->first_event_us, cs->last_event_us, cs->visits};

    if ((s->n_rows + 1) * 2 > s->n_slots) slots_rebuild(s, s->n_slots ? s->n_slots * 2 : 1024);
    size_t h = (size_t)row_hash(s, &row) & (s->n_slots - 1);
    while (s->slots[h]) {
        pg_row *r = &s->rows[s->slots[h] - 1];
        if (same_key(s, r, &row)) {
            *r = row; /* the later write of the same key wins */
            return 0;
        }
        h = (h + 1) & (s->n_slots - 1);
    }
    if (s->n_rows == s->cap_rows) {
        s->cap_rows = s->cap_rows ? s->cap_rows * 2 : 1024;
        s->rows = xrealloc(s->rows, s->cap_rows * sizeof *s->rows);
    }
    s->rows[s->n_rows] = row;
    s->slots[h] = (uint32_t)(++s->n_rows);
    return 0;
}

static void pg_clear_pending(pg_sink *s)
{
    s->n_rows = 0;
    buf_reset(&s->literals);
    if (s->slots) memset(s->slots, 0, s->n_slots * sizeof *s->slots);
}

int pg_flush(sink *base, char *err, size_t errlen)
{
    pg_sink *s = (pg_sink *)base;
    if (s->n_rows == 0) return 0;
    char e[2048];
    if (pg_conn_retry(&s->pc, pg_commit_rows, s, "commit", e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        return -1;
    }
    pg_clear_pending(s);
    /* Do not let one large burst pin its memory for the rest of the run. */
    if (s->literals.cap > (64u << 20)) buf_free(&s->literals);
    return 0;
}
