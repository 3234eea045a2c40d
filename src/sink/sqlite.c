/*
 * sqlite.c - sessions into an SQLite table, the embedded default sink.
 *
 * Table sessions(session_id INTEGER, user_id INTEGER (TEXT for string
 * users), pages TEXT (a JSON array), ingestion_time TEXT (ISO-8601 UTC),
 * [the --columns chosen]), created when missing. An existing table may have
 * more columns, if each can be left out of an INSERT (nullable or with a
 * default): the job's own are checked by name and type affinity, and what
 * differs is refused with the DDL that fixes it. Every flush is one
 * transaction of upserts through one prepared statement; the database runs
 * in WAL mode with synchronous=FULL so that a committed flush survives power
 * loss, which is what lets the job advance its checkpoint after it.
 *
 * A row is the upsert of its session on (session_id, user_id). Session ids
 * are hashes: under an index on them every flush's rows land on random
 * leaves, and rewriting those leaves was most of SQLite's time (docs/
 * performance.md). So a table the sink creates has no key: a row sits at
 * the rowid of its session's last position (sqlite_sink_rowid), which only
 * that session of the log has and which grows with the order sessions
 * close in, and a flush sorted by it appends to the table. A re-run
 * rewrites the rows in place. The rowid is checked to hold the same session
 * (user and id): when another one is there (rows of another log in the same
 * table) or a position has no rowid, the table gets the unique index on
 * (session_id, user_id) (SQLITE_SINK_KEY_INDEX) in that flush and from then
 * on, in this run and the next, rows are found by it, as in a table with
 * the primary key (session_id, user_id), which databases made before keep.
 * A table without the layout's mark (SQLITE_SINK_LAYOUT_MARK: made by hand,
 * or by a version that placed rows at their first position) takes the
 * index when it is opened. Either way one session has one row. Under the
 * key, a flush is sorted by session_id instead: it walks the index in order.
 *
 * Another process may hold the database's lock (a reader checkpointing the
 * WAL, a writer): a statement that meets it waits with the common backoff
 * (common/retry.h) for up to BUSY_GIVE_UP_MS, and gives up at once when the
 * job is asked to stop; the flush then fails and the checkpoint stays.
 */
#include <assert.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <unistd.h>

#include "common/keyed_sort.h"
#include "record/timestamp.h"
#include "common/sqlite_path.h"
#include "common/retry.h"
#include "common/xalloc.h"
#include "sink/session_json.h"
#include "sink/sink.h"
#include "sink/sqlite_sql.h"

/* A session's row as write() prepared it, its text in its chunk's buffer. */
typedef struct pending_row {
    const struct chunk *chunk; /* the one holding it */
    int64_t session_id, user_id;
    long long rowid; /* valid if placed */
    int placed;      /* its position has a rowid */
    size_t pages_off, pages_len;
    size_t user_off, user_len; /* string users */
    int64_t first_us, last_us;
    uint64_t visits;
} pending_row;

/* Rows handed to the writer thread together: small enough that the rows
 * of a flush still in the job's hands when it asks for the COMMIT are few,
 * large enough that sorting them walks the table's last pages in order
 * (sessions close a few hundred positions out of order). */
#define CHUNK_ROWS 4096
/* Chunks waiting for the writer before write() waits: the queue's bound. */
#define MAX_QUEUED 16
/* Flushes begun and not yet committed before flush_begin waits: more than
 * the checkpoint's commits in flight (CHECKPOINT_MAX_IN_FLIGHT, 64), each of
 * which waits for one. */
#define FLUSH_RING 128

typedef struct chunk {
    pending_row *rows; /* CHUNK_ROWS */
    size_t n;
    buf text;          /* the rows' pages (JSON arrays) and string users */
    struct chunk *next;
} chunk;

typedef struct sqlite_sink {
    sink base;
    sqlite3 *db;           /* the writer thread's while it runs */
    sqlite3_stmt *upsert;  /* on the key; NULL while rows are placed */
    sqlite3_stmt *place;   /* at the row's place (sqlite_sink_rowid) */
    int string_users;
    unsigned columns;
    char *path;
    char *identity; /* "sqlite:" and the database's real path */
    volatile sig_atomic_t *stop; /* the job's (context.h) */

    /* the job thread's */
    chunk *cur;                /* being filled by write() */
    uint64_t rows_since_flush;
    uint64_t last_ticket;      /* of the last flush begun */

    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t work;       /* for the writer: a chunk, a flush or quit */
    pthread_cond_t progress;   /* for the job: a chunk taken, a flush done */
    chunk *queue, *queue_tail; /* full chunks for the writer, in order */
    size_t n_queued;
    chunk *spare;              /* written chunks, for write() to reuse */
    uint64_t chunks_handed;    /* ever queued */
    /* Flush tickets: begun, committed (or failed); ticket k commits the
     * first flush_at[k % FLUSH_RING] chunks handed over, so a flush's
     * transaction ends where it was begun, whatever was written after. */
    uint64_t flush_asked;
    uint64_t flush_at[FLUSH_RING];
    flush_tickets tickets;     /* committed (or failed) */
    int quit;
    pthread_t thread;
    int thread_running;

    /* the writer thread's (the job's before the thread starts) */
    uint64_t chunks_taken;
    int keyed;          /* rows are found by (session_id, user_id) */
    int in_txn;
    int failed;         /* since the last flush; err says why */
    char err[1024];
    char now[32];       /* the transaction's ingestion_time */
    chunk *held;        /* keyed: the flush's chunks, sorted at COMMIT */
    keyed *order;
    size_t cap_order;
    retry busy;         /* the wait for a lock held elsewhere */
} sqlite_sink;

#define BUSY_GIVE_UP_MS 30000

extern const sink_ops sqlite_sink_ops;

/* The job sees a sqlite_sink as its sink header (sink.h). */
_Static_assert(offsetof(sqlite_sink, base) == 0, "sink header first");

static int fail_db(sqlite_sink *s, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "SQLite sink %s: %s: %s%s", s->path, what, sqlite3_errmsg(s->db),
             s->stop && *s->stop ? " (gave up waiting: the job was asked to stop)" : "");
    return -1;
}

/* SQLite's busy handler: non-zero to try the statement again. */
static int busy_wait(void *arg, int count)
{
    sqlite_sink *s = arg;
    if (count == 0)
        retry_init(&s->busy, &(retry_policy){.first_ms = 2, .max_ms = 100,
                                             .give_up_ms = BUSY_GIVE_UP_MS}, s->stop);
    int64_t wait;
    return retry_failed(&s->busy, &wait) == RETRY_AGAIN && retry_sleep(&s->busy, wait) == 0;
}

/* SQLite's type affinity of a declared type (its rules 1-2; the rest are
 * neither). */
static char affinity(const char *decl)
{
    char up[64];
    size_t n = 0;
    for (; decl && decl[n] && n < sizeof up - 1; n++)
        up[n] = (char)(decl[n] >= 'a' && decl[n] <= 'z' ? decl[n] - 32 : decl[n]);
    up[n] = 0;
    if (strstr(up, "INT")) return 'i';
    if (strstr(up, "CHAR") || strstr(up, "CLOB") || strstr(up, "TEXT")) return 't';
    return '?';
}

/* Checks an existing table. 1: no table; 0: usable (s->keyed set if its
 * primary key is (session_id, user_id), the other usable layout being no
 * declared key); -1: not (err has the DDL that fixes it). */
static int check_schema(sqlite_sink *s, char *err, size_t errlen)
{
    struct want { const char *name, *type; int pk; int found; } want[8] = {
        {"session_id", "INTEGER", 1, 0}, {"user_id", sqlite_sink_user_type(s->string_users), 2, 0},
        {"pages", "TEXT", 0, 0}, {"ingestion_time", "TEXT", 0, 0}};
    size_t n_want = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1)
            want[n_want++] = (struct want){sqlite_sink_optional[c][0], sqlite_sink_optional[c][1], 0, 0};
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk "
                           "FROM pragma_table_info('sessions')", -1, &st, NULL) != SQLITE_OK)
        return fail_db(s, "reading the schema", err, errlen);
    buf fix, why;
    buf_init(&fix);
    buf_init(&why);
    size_t n = 0;
    int key_ok = 1, any_pk = 0, pk_differs = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        n++;
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *type = (const char *)sqlite3_column_text(st, 1);
        int notnull = sqlite3_column_int(st, 2), has_default = sqlite3_column_int(st, 3);
        int pk = sqlite3_column_int(st, 4);
        any_pk |= pk != 0;
        size_t k = 0;
        while (k < n_want && strcmp(name, want[k].name) != 0) k++;
        if (k == n_want) { /* not ours: the INSERT leaves it out */
            if (pk) pk_differs = 1;
            else if (notnull && !has_default) {
                buf_printf(&why, "%scolumn %s is NOT NULL without a default", why.len ? "; " : "", name);
                buf_printf(&fix, "ALTER TABLE sessions DROP COLUMN %s; ALTER TABLE sessions ADD "
                           "COLUMN %s %s DEFAULT ...; ", name, name, type ? type : "");
            }
            continue;
        }
        want[k].found = 1;
        if (want[k].pk != pk) pk_differs = 1;
        if (affinity(type) != affinity(want[k].type)) {
            buf_printf(&why, "%scolumn %s is %s, expected %s", why.len ? "; " : "", name,
                       type && *type ? type : "untyped", want[k].type);
            if (want[k].pk) {
                key_ok = 0; /* a key column cannot be dropped: below */
            } else {
                buf_printf(&fix, "ALTER TABLE sessions DROP COLUMN %s; ALTER TABLE sessions ADD "
                           "COLUMN %s %s; ", name, name, want[k].type);
            }
        }
    }
    sqlite3_finalize(st);
    int rc = 0;
    if (n == 0) {
        rc = 1;
        goto out;
    }
    for (size_t k = 0; k < n_want; k++)
        if (!want[k].found) {
            buf_printf(&why, "%smissing column %s %s", why.len ? "; " : "", want[k].name, want[k].type);
            if (want[k].pk) key_ok = 0;
            else buf_printf(&fix, "ALTER TABLE sessions ADD COLUMN %s %s; ", want[k].name, want[k].type);
        }
    if (any_pk && pk_differs) key_ok = 0;
    s->keyed = any_pk;
    if (!key_ok) {
        char create[1024];
        sqlite_sink_create_sql(create, sizeof create, s->string_users, s->columns);
        snprintf(err, errlen, "SQLite sink %s: table 'sessions' %s%.*s; its key columns must be "
                 "session_id INTEGER and user_id %s, under no primary key or the primary key "
                 "(session_id, user_id), which cannot be altered: use another database "
                 "file, or move the table aside (ALTER TABLE sessions RENAME TO sessions_old) and "
                 "let the sink create it: %s", s->path, why.len ? "differs: " : "has another primary key",
                 (int)why.len, why.len ? (const char *)why.data : "",
                 sqlite_sink_user_type(s->string_users), create);
        rc = -1;
    } else if (why.len) {
        snprintf(err, errlen, "SQLite sink %s: table 'sessions' differs: %.*s. Fix it with: %.*s",
                 s->path, (int)why.len, (const char *)why.data, (int)(fix.len ? fix.len - 1 : 0),
                 (const char *)fix.data);
        rc = -1;
    }
out:
    buf_free(&fix);
    buf_free(&why);
    return rc;
}

/* Names SQLite gives a database that is not the file the user named: the
 * rows would be thrown away when the job ends while it reports success. */
static int refuse_path(const char *target, char *err, size_t errlen)
{
    if (!*target)
        snprintf(err, errlen, "SQLite sink: no database file given (write sqlite:PATH, e.g. "
                 "sqlite:sessions.db; an empty name is a temporary database SQLite deletes "
                 "at the end)");
    else if (strcmp(target, ":memory:") == 0)
        snprintf(err, errlen, "SQLite sink 'sqlite::memory:' is an in-memory database: every "
                 "row would be lost when the job ends. Give a database file (sqlite:PATH), or "
                 "use the null: sink to discard the sessions on purpose");
    else if (sqlite_path_is_uri(target))
        snprintf(err, errlen, "SQLite sink path '%s' would be read by SQLite as a URI (which "
                 "can name an in-memory or another database), not as a file. Give a file "
                 "path: sqlite:./%s means the file of that name", target, target);
    else
        return 0;
    return -1;
}

/* Whether the table has the unique index on (session_id, user_id) that
 * SQLITE_SINK_KEY_INDEX makes (under any name). 1, 0, or -1 on error (then
 * the statements fail later with SQLite's message). */
static int has_key_index(sqlite_sink *s)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM pragma_index_list('sessions') il WHERE il.\"unique\" "
                           "AND (SELECT group_concat(name) FROM (SELECT name FROM "
                           "pragma_index_info(il.name) ORDER BY seqno)) = 'session_id,user_id'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* Whether the table carries SQLITE_SINK_LAYOUT_MARK. 1, 0, or -1 on error. */
static int has_layout_mark(sqlite_sink *s)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT instr(sql, ?1) > 0 FROM sqlite_schema WHERE type = "
                           "'table' AND name = 'sessions'", -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, SQLITE_SINK_LAYOUT_MARK, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int marked = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return marked;
}

/* The statement and cache of the table's layout (s->keyed). */
static int prepare(sqlite_sink *s, char *err, size_t errlen)
{
    char sql[1024];
    if (sqlite3_exec(s->db, s->keyed ? SQLITE_SINK_CACHE_KEYED : SQLITE_SINK_CACHE_PLACED, NULL,
                     NULL, NULL) != SQLITE_OK)
        return fail_db(s, "setting the page cache", err, errlen);
    if (s->keyed) sqlite_sink_upsert_sql(sql, sizeof sql, s->columns);
    else sqlite_sink_place_sql(sql, sizeof sql, s->columns);
    if (sqlite3_prepare_v2(s->db, sql, -1, s->keyed ? &s->upsert : &s->place, NULL) != SQLITE_OK)
        return fail_db(s, "preparing the upsert", err, errlen);
    return 0;
}

/* Rows are found by the key from now on (the header says when): the index,
 * in the flush's transaction, so it commits with the rows that needed it. */
static int take_key(sqlite_sink *s, char *err, size_t errlen)
{
    assert(s->in_txn && !s->keyed);
    if (sqlite3_exec(s->db, SQLITE_SINK_KEY_INDEX, NULL, NULL, NULL) != SQLITE_OK)
        return fail_db(s, "adding the key (session_id, user_id) for rows of another input", err,
                       errlen);
    s->keyed = 1;
    return prepare(s, err, errlen);
}

static int start_writer(sqlite_sink *s, char *err, size_t errlen); /* below */

static sink *sqlite_open(const char *target, const sink_options *opts, char *err, size_t errlen)
{
    if (refuse_path(target, err, errlen)) return NULL;
    sqlite_sink *s = xcalloc(1, sizeof *s);
    s->base.ops = &sqlite_sink_ops;
    s->path = xstrdup(target);
    s->string_users = opts->string_users;
    s->columns = opts->columns;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->progress, NULL);
    /* NOMUTEX: the connection is the sink's, used by one thread at a time;
     * SQLite's serialized mode locked a mutex around each of the ~7 calls
     * per row (10% of file -> sqlite:) */
    if (sqlite3_open_v2(target, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        fail_db(s, "cannot open", err, errlen);
        sqlite_sink_ops.close(&s->base);
        return NULL;
    }
    s->stop = opts && opts->ctx ? opts->ctx->stop : NULL;
    sqlite3_busy_handler(s->db, busy_wait, s);
    int missing = check_schema(s, err, errlen);
    if (missing < 0) goto fail;
    if (!missing && !s->keyed && has_key_index(s) != 0) s->keyed = 1;
    if (missing && !opts->create_schema) {
        snprintf(err, errlen, "SQLite sink %s: table 'sessions' is missing and schema creation "
                 "is disabled", target);
        goto fail;
    }
    char *msg = NULL, create[1024];
    sqlite_sink_create_sql(create, sizeof create, s->string_users, s->columns);
    if (sqlite3_exec(s->db, SQLITE_SINK_PRAGMAS, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(s->db, create, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "SQLite sink %s: cannot prepare the database: %s", target,
                 msg ? msg : "unknown error");
        sqlite3_free(msg);
        goto fail;
    }
    if (!s->keyed) {
        int marked = has_layout_mark(s);
        if (marked < 0) {
            fail_db(s, "reading the schema", err, errlen);
            goto fail;
        }
        if (!marked) { /* (the header says why) */
            if (sqlite3_exec(s->db, SQLITE_SINK_KEY_INDEX, NULL, NULL, NULL) != SQLITE_OK) {
                fail_db(s, "adding the key (session_id, user_id) to a table without the "
                        "sink's layout", err, errlen);
                goto fail;
            }
            s->keyed = 1;
        }
    }
    if (prepare(s, err, errlen) != 0 || start_writer(s, err, errlen) != 0) goto fail;
    /* The file exists now: a symlink or a relative path to it is the same
     * database. */
    char *real = realpath(target, NULL);
    const char *p = real ? real : target;
    size_t n = strlen(p) + sizeof "sqlite:";
    s->identity = xmalloc(n);
    snprintf(s->identity, n, "sqlite:%s", p);
    free(real);
    return &s->base;
fail:
    sqlite_sink_ops.close(&s->base);
    return NULL;
}

/* ---- the writer thread ---------------------------------------------------
 *
 * write() prepares each row (its pages as JSON) on the job's thread and
 * hands rows over a chunk at a time; the writer upserts them in the open
 * transaction while the job goes on, so SQLite's work overlaps the engine's
 * instead of following it. flush() hands over the last chunk and waits for
 * the COMMIT: the commit protocol is unchanged (durable on return). Under
 * the key, the writer holds a flush's chunks and upserts them sorted by
 * session_id at the COMMIT, as before. The connection is the writer's alone
 * from the thread's start to its join (SQLITE_OPEN_NOMUTEX). */

/* Binds a row's values to st (the parameters of sqlite_sql.h). */
static void bind_row(sqlite_sink *s, sqlite3_stmt *st, const chunk *c, const pending_row *row,
                     char start[40], char end[40])
{
    assert(row->pages_off + row->pages_len <= c->text.len &&
           row->user_off + row->user_len <= c->text.len);
    sqlite3_bind_int64(st, 1, row->session_id);
    if (s->string_users)
        sqlite3_bind_text(st, 2, (const char *)c->text.data + row->user_off, (int)row->user_len,
                          SQLITE_STATIC);
    else
        sqlite3_bind_int64(st, 2, row->user_id);
    sqlite3_bind_text(st, 3, (const char *)c->text.data + row->pages_off, (int)row->pages_len,
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 4, s->now, -1, SQLITE_STATIC);
    int arg = 5;
    if (s->columns & SINK_COL_SESSION_START) {
        format_iso8601_us(row->first_us, start);
        sqlite3_bind_text(st, arg++, start, -1, SQLITE_STATIC);
    }
    if (s->columns & SINK_COL_SESSION_END) {
        format_iso8601_us(row->last_us, end);
        sqlite3_bind_text(st, arg++, end, -1, SQLITE_STATIC);
    }
    if (s->columns & SINK_COL_VISIT_COUNT)
        sqlite3_bind_int64(st, arg++, (int64_t)row->visits);
    if (s->columns & SINK_COL_DURATION)
        sqlite3_bind_int64(st, arg++, (row->last_us - row->first_us) / 1000);
    if (st == s->place) {
        assert(row->placed);
        sqlite3_bind_int64(st, arg, row->rowid);
    }
}

/* Upserts one row with the layout's statement: at its place, or by the key
 * once the place is another session's (the header says why). 0 or -1. */
static int upsert_row(sqlite_sink *s, const chunk *c, const pending_row *row)
{
    char start[40], end[40];
    assert(row->chunk == c);
    if (!s->keyed && !row->placed && take_key(s, s->err, sizeof s->err) != 0) return -1;
    for (;;) {
        sqlite3_stmt *st = s->keyed ? s->upsert : s->place;
        bind_row(s, st, c, row, start, end);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        /* placed, and nothing changed: another session holds the place; or
         * a constraint: another writer added the key, and this session's
         * row is elsewhere. Either way by the key (idempotent), again. */
        if (st == s->place &&
            ((rc == SQLITE_DONE && sqlite3_changes(s->db) == 0) || rc == SQLITE_CONSTRAINT)) {
            if (take_key(s, s->err, sizeof s->err) != 0) return -1;
            continue;
        }
        return rc == SQLITE_DONE ? 0 : fail_db(s, "upsert", s->err, sizeof s->err);
    }
}

static int begin(sqlite_sink *s)
{
    if (s->in_txn) return 0;
    sink_now_iso8601(s->now); /* the write's time: one transaction, one instant */
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return fail_db(s, "BEGIN", s->err, sizeof s->err);
    s->in_txn = 1;
    return 0;
}

/* s->order[at...] = c's rows with their sort keys: rowid while placed,
 * session_id under the key (rows of equal session_id, different users: a
 * 64-bit hash collision, are distinct rows; their order does not matter). */
static void sort_keys(sqlite_sink *s, size_t at, chunk *c)
{
    for (size_t i = 0; i < c->n; i++) {
        pending_row *r = &c->rows[i];
        s->order[at + i] = (keyed){keyed_from_i64(s->keyed || !r->placed ? r->session_id : r->rowid),
                                   r};
    }
}

static void order_room(sqlite_sink *s, size_t n)
{
    if (s->cap_order >= n) return;
    s->cap_order = n;
    s->order = xrealloc(s->order, s->cap_order * sizeof *s->order);
}

/* A chunk from the job. Returns 1 if the writer keeps it (held until the
 * COMMIT), else 0 (done with it). */
static int take_chunk(sqlite_sink *s, chunk *c)
{
    if (s->failed) return 0;
    if (begin(s) != 0) {
        s->failed = 1;
        return 0;
    }
    if (s->keyed) {
        c->next = s->held;
        s->held = c;
        return 1;
    }
    order_room(s, c->n);
    sort_keys(s, 0, c);
    keyed_sort(s->order, c->n);
    for (size_t i = 0; i < c->n && !s->failed; i++)
        if (upsert_row(s, c, s->order[i].ptr) != 0) s->failed = 1;
    return 0;
}

/* The flush's COMMIT, after the held chunks (keyed). 0 or -1. */
static int commit(sqlite_sink *s)
{
    size_t n = 0;
    for (chunk *c = s->held; c; c = c->next) n += c->n;
    if (n && !s->failed) {
        order_room(s, n);
        size_t at = 0;
        for (chunk *c = s->held; c; c = c->next) {
            sort_keys(s, at, c);
            at += c->n;
        }
        keyed_sort(s->order, n);
        for (size_t i = 0; i < n && !s->failed; i++) {
            const pending_row *r = s->order[i].ptr;
            if (upsert_row(s, r->chunk, r) != 0) s->failed = 1;
        }
    }
    if (s->failed) return -1;
    assert(s->in_txn);
    /* COMMIT can meet a reader holding the WAL: busy_wait waits. */
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return fail_db(s, "COMMIT", s->err, sizeof s->err);
    s->in_txn = 0;
    return 0;
}

/* Under mu. */
static void recycle(sqlite_sink *s, chunk *c)
{
    c->n = 0;
    buf_reset(&c->text);
    c->next = s->spare;
    s->spare = c;
}

static void *writer_main(void *arg)
{
    sqlite_sink *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->tickets.done < s->flush_asked &&
            s->chunks_taken == s->flush_at[(s->tickets.done + 1) % FLUSH_RING]) {
            uint64_t ticket = s->tickets.done + 1;
            /* closing: a flush begun and not committed is dropped (nobody
             * counts on it: the checkpoint is closed first) */
            int given_up = s->tickets.failed != 0 || s->quit;
            if (s->quit && !s->tickets.failed)
                snprintf(s->err, sizeof s->err, "SQLite sink %s: closed before its commit", s->path);
            pthread_mutex_unlock(&s->mu);
            int rc = given_up ? -1 : commit(s);
            /* a failed flush leaves nothing behind for the next to commit */
            if (rc && s->in_txn && sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK)
                s->in_txn = 0;
            pthread_mutex_lock(&s->mu);
            while (s->held) {
                chunk *c = s->held;
                s->held = c->next;
                recycle(s, c);
            }
            s->failed = 0;
            flush_tickets_finish(&s->tickets, &s->progress, ticket, rc ? s->err : NULL);
        } else if (s->queue) {
            assert(s->tickets.done == s->flush_asked ||
                   s->chunks_taken < s->flush_at[(s->tickets.done + 1) % FLUSH_RING]);
            chunk *c = s->queue;
            s->queue = c->next;
            if (!s->queue) s->queue_tail = NULL;
            s->n_queued--;
            s->chunks_taken++;
            /* closing: what was not flushed is dropped; after a failed
             * flush nothing is written again (its error is the job's) */
            int skip = s->quit || s->tickets.failed;
            pthread_mutex_unlock(&s->mu);
            int kept = skip ? 0 : take_chunk(s, c);
            pthread_mutex_lock(&s->mu);
            if (!kept) recycle(s, c);
            pthread_cond_broadcast(&s->progress);
        } else if (s->quit) {
            break;
        } else {
            pthread_cond_wait(&s->work, &s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Starts the writer (stop signals blocked in it: context.h). */
static int start_writer(sqlite_sink *s, char *err, size_t errlen)
{
    int e = job_thread_start(&s->thread, writer_main, s);
    if (e) {
        snprintf(err, errlen, "SQLite sink %s: cannot start its writer thread: %s", s->path,
                 strerror(e));
        return -1;
    }
    s->thread_running = 1;
    return 0;
}

/* Hands the job's chunk to the writer; waits while MAX_QUEUED are queued. */
static void hand_over(sqlite_sink *s)
{
    chunk *c = s->cur;
    s->cur = NULL;
    pthread_mutex_lock(&s->mu);
    while (s->n_queued >= MAX_QUEUED) pthread_cond_wait(&s->progress, &s->mu);
    c->next = NULL;
    if (s->queue_tail) s->queue_tail->next = c;
    else s->queue = c;
    s->queue_tail = c;
    s->n_queued++;
    s->chunks_handed++;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
}

static int sqlite_write(sink *base, const closed_session *cs, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    sqlite_sink *s = (sqlite_sink *)base;
    if (!s->cur) {
        pthread_mutex_lock(&s->mu);
        s->cur = s->spare;
        if (s->cur) s->spare = s->cur->next;
        pthread_mutex_unlock(&s->mu);
        if (!s->cur) {
            s->cur = xcalloc(1, sizeof *s->cur);
            s->cur->rows = xmalloc(CHUNK_ROWS * sizeof *s->cur->rows);
            buf_init(&s->cur->text);
        }
        s->cur->next = NULL; /* out of the spare list: in no list until handed over */
    }
    chunk *c = s->cur;
    assert(c->n < CHUNK_ROWS);
    pending_row *row = &c->rows[c->n++];
    row->chunk = c;
    row->session_id = cs->session_id;
    row->user_id = cs->user_id;
    row->placed = sqlite_sink_rowid(cs->last_partition, cs->last_offset, &row->rowid);
    row->pages_off = c->text.len;
    session_json_pages(&c->text, cs);
    row->pages_len = c->text.len - row->pages_off;
    row->user_off = c->text.len;
    row->user_len = cs->user_len;
    if (cs->user) buf_append(&c->text, cs->user, cs->user_len);
    row->first_us = cs->first_event_us;
    row->last_us = cs->last_event_us;
    row->visits = cs->visits;
    /* both are bound as SQLite text, whose lengths are ints */
    assert(row->pages_len <= INT_MAX && row->user_len <= INT_MAX);
    s->rows_since_flush++;
    if (c->n == CHUNK_ROWS) hand_over(s);
    return 0;
}

static uint64_t sqlite_flush_begin(sink *base)
{
    sqlite_sink *s = (sqlite_sink *)base;
    if (s->rows_since_flush == 0) return s->last_ticket;
    if (s->cur && s->cur->n) hand_over(s);
    pthread_mutex_lock(&s->mu);
    while (s->flush_asked - s->tickets.done >= FLUSH_RING - 1)
        pthread_cond_wait(&s->progress, &s->mu);
    uint64_t ticket = ++s->flush_asked;
    s->flush_at[ticket % FLUSH_RING] = s->chunks_handed;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    s->rows_since_flush = 0;
    s->last_ticket = ticket;
    return ticket;
}

static int sqlite_flush_wait(sink *base, uint64_t ticket, char *err, size_t errlen)
{
    sqlite_sink *s = (sqlite_sink *)base;
    return flush_tickets_wait(&s->tickets, &s->mu, &s->progress, ticket, err, errlen);
}

static int sqlite_flush(sink *base, char *err, size_t errlen)
{
    return sqlite_flush_wait(base, sqlite_flush_begin(base), err, errlen);
}

static void sqlite_identity(sink *base, buf *out)
{
    buf_append_str(out, ((sqlite_sink *)base)->identity);
}

static void free_chunks(chunk *c)
{
    while (c) {
        chunk *next = c->next;
        free(c->rows);
        buf_free(&c->text);
        free(c);
        c = next;
    }
}

static void sqlite_close(sink *base)
{
    sqlite_sink *s = (sqlite_sink *)base;
    if (s->thread_running) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    /* rows not flushed were not committed by the job either */
    if (s->in_txn) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_finalize(s->upsert);
    sqlite3_finalize(s->place);
    sqlite3_close(s->db);
    free_chunks(s->cur);
    free_chunks(s->queue);
    free_chunks(s->spare);
    free_chunks(s->held);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->progress);
    free(s->order);
    free(s->path);
    free(s->identity);
    free(s);
}

const sink_ops sqlite_sink_ops = {
    .scheme = "sqlite",
    .usage = "sqlite:PATH   table 'sessions' in an SQLite database (created when missing)",
    .open = sqlite_open,
    .write = sqlite_write,
    .flush = sqlite_flush,
    .flush_begin = sqlite_flush_begin,
    .flush_wait = sqlite_flush_wait,
    .identity = sqlite_identity,
    .close = sqlite_close,
};

_Static_assert(SINK_N_OPTIONAL == sizeof sqlite_sink_optional / sizeof *sqlite_sink_optional,
               "one SQLite type per optional column, in SINK_COL_* order");
