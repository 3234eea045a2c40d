/*
 * pg_setup.c - the PostgreSQL sink's table, checked or created each time the
 * sink connects, and the upsert prepared and tried on no rows.
 *
 * It exists apart because it is the part that decides whether a table is
 * the one the job may write, and says how to fix one that is not.
 *
 * The table: sessions (session_id bigint, user_id bigint (text for string
 * users), pages text[], ingestion_time timestamptz, [the --columns chosen:
 * session_start, session_end timestamptz, visit_count bigint, duration
 * interval], PRIMARY KEY (session_id, user_id)), created when missing unless
 * create_schema is 0. An existing table must have these columns with these
 * types and a unique key on (session_id, user_id); it may have more columns
 * if each is nullable or has a default (the INSERT leaves them out). What
 * differs is refused at open with the ALTER TABLE that fixes it, because
 * writing "something like" the expected table would break keyed idempotency
 * quietly.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "sink/pg_conn.h"
#include "sink/pg_sink.h"
#include "sink/sink.h"

/* The opt-in columns, in SINK_COL_* order: their types as format_type()
 * spells them, and the element type of the array each is sent in. */
static const struct { const char *type; Oid array; } pg_optional[SINK_N_OPTIONAL] = {
    {"timestamp with time zone", PG_TIMESTAMPTZARRAYOID},
    {"timestamp with time zone", PG_TIMESTAMPTZARRAYOID},
    {"bigint", PG_INT8ARRAYOID},
    {"interval", PG_INTERVALARRAYOID},
};

/* Makes sure the table exists with the expected shape; prepares the upsert
 * and runs it once on no rows, which checks the privileges it needs. */
int pg_setup(void *ud, char *err, size_t errlen)
{
    pg_sink *s = ud;
    int st;
    /* (pg_conn has made commits synchronous and lets a backend notice a
     * vanished client: pg_conn.h.) */
    if (PQserverVersion(s->pc.conn) < 90500)
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: server version %d is too old: INSERT ... ON CONFLICT "
                            "needs 9.5 or later",
                            PQserverVersion(s->pc.conn)),
               PG_PERMANENT;

    /* The job's columns, the types format_type() gives them, and whether
     * the table is created with them (create) or must have them (check). */
    const char *want_name[4 + SINK_N_OPTIONAL] = {"session_id", "user_id", "pages",
                                                  "ingestion_time"};
    const char *want_type[4 + SINK_N_OPTIONAL] = {"bigint", s->string_users ? "text" : "bigint",
                                                  "text[]", "timestamp with time zone"};
    int n_want = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) {
            want_name[n_want] = sink_column_names[c];
            want_type[n_want++] = pg_optional[c].type;
        }
    buf create;
    buf_init(&create);
    buf_printf(&create, "CREATE TABLE IF NOT EXISTS %s (", s->table_sql);
    for (int k = 0; k < n_want; k++)
        buf_printf(&create, "%s %s NOT NULL, ", want_name[k], want_type[k]);
    buf_append_str(&create, "PRIMARY KEY (session_id, user_id))");
    buf_append_byte(&create, 0);
    const char *create_sql = (const char *)create.data;
    for (int round = 0;; round++) {
        const char *params[1] = {s->table_sql};
        int sent = PQsendQueryParams(
            s->pc.conn,
            "SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull, a.atthasdef "
            "FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped WHERE c.oid = to_regclass($1) ORDER BY a.attnum",
            1, NULL, params, NULL, NULL, 0);
        PGresult *r;
        st = pg_conn_finish(&s->pc, sent, "looking up the table", &r, err, errlen);
        if (st) {
            buf_free(&create);
            return st;
        }
        int rows = PQntuples(r);
        if (rows == 0) {
            PQclear(r);
            if (!s->create_schema || round > 0) {
                if (!s->create_schema)
                    pg_conn_fail(&s->pc, err, errlen,
                                 "postgresql: table %s does not exist in %s, and creating it is "
                                 "turned off (create_schema); create it with: %s",
                                 s->table_display, s->ci.display, create_sql);
                else
                    pg_conn_fail(&s->pc, err, errlen,
                                 "postgresql: table %s is still missing after CREATE TABLE",
                                 s->table_display);
                buf_free(&create);
                return PG_PERMANENT;
            }
            char cerr[1024];
            st = pg_conn_exec(&s->pc, create_sql, "creating the table", cerr, sizeof cerr);
            /* Two jobs creating the table at once: the loser's IF NOT EXISTS
             * can still trip on the catalog's unique index, on the relation
             * or on its row type (pg_conn_lost_create_race: 23505, 42P07,
             * 42710 "type ... already exists", seen when scale-out instances
             * start together). Look again. */
            if (st && !pg_conn_lost_create_race(&s->pc)) {
                snprintf(err, errlen, "%s", cerr);
                buf_free(&create);
                return st;
            }
            continue;
        }
        char relkind[8];
        snprintf(relkind, sizeof relkind, "%s", PQgetvalue(r, 0, 0));
        if (strcmp(relkind, "r") != 0 && strcmp(relkind, "p") != 0) {
            PQclear(r);
            buf_free(&create);
            return pg_conn_fail(&s->pc, err, errlen,
                                "postgresql: %s is not a table (relkind '%s'); give another name "
                                "with table=",
                                s->table_display, relkind),
                   PG_PERMANENT;
        }
        buf why, fix;
        buf_init(&why);
        buf_init(&fix);
        int seen[4 + SINK_N_OPTIONAL] = {0};
        for (int i = 0; i < rows; i++) {
            if (PQgetisnull(r, i, 1)) continue;
            const char *name = PQgetvalue(r, i, 1), *type = PQgetvalue(r, i, 2);
            int notnull = PQgetvalue(r, i, 3)[0] == 't', hasdef = PQgetvalue(r, i, 4)[0] == 't';
            int k = -1;
            for (int j = 0; j < n_want; j++)
                if (strcmp(name, want_name[j]) == 0) k = j;
            if (k < 0) {
                /* not the job's: the INSERT leaves it out, which needs a default or NULL */
                if (notnull && !hasdef) {
                    buf_printf(&why, "%scolumn %s is NOT NULL without a default", why.len ? "; " : "",
                               name);
                    buf_printf(&fix, "ALTER TABLE %s ALTER COLUMN \"%s\" DROP NOT NULL; ",
                               s->table_sql, name);
                }
            } else {
                seen[k] = 1;
                if (strcmp(type, want_type[k]) != 0) {
                    buf_printf(&why, "%scolumn %s is %s, expected %s", why.len ? "; " : "", name,
                               type, want_type[k]);
                    buf_printf(&fix, "ALTER TABLE %s ALTER COLUMN %s TYPE %s USING %s::%s; ",
                               s->table_sql, name, want_type[k], name,
                               k == 1 && s->string_users ? "text" : want_type[k]);
                }
            }
        }
        for (int j = 0; j < n_want; j++)
            if (!seen[j]) {
                buf_printf(&why, "%smissing column %s %s", why.len ? "; " : "", want_name[j],
                           want_type[j]);
                if (j < 4)
                    buf_printf(&fix, "(%s cannot be added to a table of other rows: use another "
                               "table, table=, which the sink creates) ", want_name[j]);
                else
                    buf_printf(&fix, "ALTER TABLE %s ADD COLUMN %s %s; ", s->table_sql,
                               want_name[j], want_type[j]);
            }
        PQclear(r);
        if (why.len) {
            pg_conn_fail(&s->pc, err, errlen,
                         "postgresql: existing table %s does not fit the sessions this job writes "
                         "(%.*s): %.*s. Fix it with: %.*s",
                         s->table_display, (int)(create.len - 1), create_sql, (int)why.len,
                         (const char *)why.data, (int)(fix.len ? fix.len - 1 : 0),
                         (const char *)fix.data);
            buf_free(&why);
            buf_free(&fix);
            buf_free(&create);
            return PG_PERMANENT;
        }
        buf_free(&why);
        buf_free(&fix);
        break;
    }
    buf_free(&create);

    Oid types[4 + SINK_N_OPTIONAL] = {PG_INT8ARRAYOID,
                                      s->string_users ? PG_TEXTARRAYOID : PG_INT8ARRAYOID,
                                      PG_TEXTARRAYOID, PG_TIMESTAMPTZOID};
    int n_types = 4;
    for (unsigned c = 0; c < SINK_N_OPTIONAL; c++)
        if (s->columns >> c & 1) types[n_types++] = pg_optional[c].array;
    st = pg_conn_finish(&s->pc, PQsendPrepare(s->pc.conn, PG_STMT_NAME, s->upsert_sql, n_types, types),
                       "preparing the upsert", NULL, err, errlen);
    if (st) return st;
    /* A dry run on no rows: the planner checks that a unique index matches
     * the ON CONFLICT target, and the executor checks the INSERT and UPDATE
     * privileges even when nothing is written; so both fail at open. */
    static const pg_batch none;
    char ts[32], derr[1024];
    sink_now_iso8601(ts);
    st = pg_upsert(s, &none, 0, 0, ts, derr, sizeof derr);
    if (st && strstr(derr, "42P10"))
        return pg_conn_fail(&s->pc, err, errlen,
                            "postgresql: table %s has no primary key or unique constraint on "
                            "(session_id, user_id), which the upsert needs: ALTER TABLE %s ADD "
                            "PRIMARY KEY (session_id, user_id)",
                            s->table_display, s->table_sql),
               PG_PERMANENT;
    if (st) snprintf(err, errlen, "%s", derr);
    return st;
}
