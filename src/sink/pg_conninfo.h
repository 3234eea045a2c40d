/*
 * pg_conninfo.h - the PostgreSQL sink's connection string, and the masking
 * that keeps its password out of every message.
 *
 * What it is for: a connection string may carry a password (in the URI's
 * user info, as a password= query parameter, or as a key=value pair), and
 * libpq's messages may quote the string. So the sink keeps a display copy
 * with every password replaced by "***" (for messages that name the target)
 * and a list of the secrets it has seen (raw and percent-decoded, plus a
 * password= sink setting), and every message passes through
 * pg_conninfo_redact() before it leaves the sink. The connection string is
 * also what a checkpoint is bound to, through pg_conninfo_identity. Split
 * from postgresql.c.
 */
#ifndef SESSIONIZER_PG_CONNINFO_H
#define SESSIONIZER_PG_CONNINFO_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct pg_conninfo {
    char *conninfo; /* as given to libpq: contains the password, never printed */
    char *display;  /* conninfo with the password masked, for messages */
    char *secrets[3];
    size_t n_secrets;
} pg_conninfo;

/* Takes conninfo (malloc'd; freed by pg_conninfo_free), builds its display
 * copy and collects the passwords it holds. */
void pg_conninfo_init(pg_conninfo *ci, char *conninfo);

/* Another string to mask in messages (strings shorter than 3 bytes are not:
 * masking them would garble every message). */
void pg_conninfo_add_secret(pg_conninfo *ci, const char *p, size_t n);

/* Copies in to out, replacing the raw connection string by its masked copy
 * and any secret by "***". */
void pg_conninfo_redact(const pg_conninfo *ci, const char *in, char *out, size_t outlen);

/* Parses the connection string as libpq will and masks the password found
 * there. -1 when libpq cannot parse it: *why is then its reason (free it
 * with PQfreemem; NULL when libpq ran out of memory). */
int pg_conninfo_parse(pg_conninfo *ci, char **why);

/* What a checkpoint is bound to: "postgresql://HOSTS:PORTS/DB table=T" as
 * libpq resolved the open connection's settings, never user or password
 * (malloc'd). */
char *pg_conninfo_identity(PGconn *conn, const char *table_sql);

/* Frees what init and add_secret allocated (a zeroed one is fine). */
void pg_conninfo_free(pg_conninfo *ci);

#endif
