/*
 * pg_conninfo.c - the PostgreSQL sink's connection string: kept out of its
 * messages, checked as libpq reads it, and named without its credentials
 * (see pg_conninfo.h).
 */
#include "sink/pg_conninfo.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/xalloc.h"

void pg_conninfo_add_secret(pg_conninfo *s, const char *p, size_t n)
{
    /* Masking a one- or two-character string everywhere would garble every
     * message; such a password is not a secret worth the name anyway, and it
     * still never appears: libpq does not print passwords, and the connection
     * string itself is always replaced whole by its masked copy. */
    if (n < 3 || s->n_secrets == sizeof s->secrets / sizeof *s->secrets) return;
    s->secrets[s->n_secrets++] = xstrndup(p, n);
}

void pg_conninfo_redact(const pg_conninfo *s, const char *in, char *out, size_t outlen)
{
    buf b;
    buf_init(&b);
    size_t clen = s->conninfo ? strlen(s->conninfo) : 0;
    for (const char *p = in; *p;) {
        if (clen && strncmp(p, s->conninfo, clen) == 0) {
            buf_append_str(&b, s->display);
            p += clen;
            continue;
        }
        size_t hit = 0;
        for (size_t i = 0; i < s->n_secrets && !hit; i++) {
            size_t n = strlen(s->secrets[i]);
            if (strncmp(p, s->secrets[i], n) == 0) hit = n;
        }
        if (hit) {
            buf_append_str(&b, "***");
            p += hit;
            continue;
        }
        buf_append_byte(&b, (unsigned char)*p++);
    }
    buf_append_byte(&b, 0);
    snprintf(out, outlen, "%s", (const char *)b.data);
    buf_free(&b);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decoding, as libpq applies it to URI components. */
static char *pct_decode(const char *p, size_t n)
{
    char *o = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '%' && i + 2 < n && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
            o[k++] = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
            i += 2;
        } else {
            o[k++] = p[i];
        }
    }
    o[k] = 0;
    return o;
}

void pg_conninfo_init(pg_conninfo *s, char *conninfo)
{
    *s = (pg_conninfo){.conninfo = conninfo};
    const char *ci = s->conninfo;
    buf d;
    buf_init(&d);
    const char *sep = strstr(ci, "://");
    if (sep && (strncmp(ci, "postgresql://", 13) == 0 || strncmp(ci, "postgres://", 11) == 0)) {
        /* URI: scheme://[user[:password]@]hosts[/db][?k=v&...]. Like libpq,
         * the credentials end at the first '@' before any '/'. */
        const char *auth = sep + 3;
        const char *p = auth;
        while (*p && *p != '@' && *p != '/') p++;
        buf_append(&d, ci, (size_t)(auth - ci));
        const char *rest = auth;
        if (*p == '@') {
            const char *colon = memchr(auth, ':', (size_t)(p - auth));
            if (colon) {
                buf_append(&d, auth, (size_t)(colon - auth));
                buf_append_str(&d, ":***");
                pg_conninfo_add_secret(s, colon + 1, (size_t)(p - colon - 1));
                char *dec = pct_decode(colon + 1, (size_t)(p - colon - 1));
                pg_conninfo_add_secret(s, dec, strlen(dec));
                free(dec);
            } else {
                buf_append(&d, auth, (size_t)(p - auth));
            }
            buf_append_byte(&d, '@');
            rest = p + 1;
        }
        /* Query parameters: mask password=... */
        const char *q = strchr(rest, '?');
        if (!q) {
            buf_append_str(&d, rest);
        } else {
            buf_append(&d, rest, (size_t)(q - rest) + 1);
            const char *kv = q + 1;
            while (*kv) {
                const char *amp = strchr(kv, '&');
                size_t n = amp ? (size_t)(amp - kv) : strlen(kv);
                if (n >= 9 && strncmp(kv, "password=", 9) == 0) {
                    buf_append_str(&d, "password=***");
                    pg_conninfo_add_secret(s, kv + 9, n - 9);
                    char *dec = pct_decode(kv + 9, n - 9);
                    pg_conninfo_add_secret(s, dec, strlen(dec));
                    free(dec);
                } else {
                    buf_append(&d, kv, n);
                }
                if (!amp) break;
                buf_append_byte(&d, '&');
                kv = amp + 1;
            }
        }
    } else {
        /* key=value conninfo: rebuild it from libpq's parse, password masked. */
        char *perr = NULL;
        PQconninfoOption *opts = PQconninfoParse(ci, &perr);
        if (!opts) {
            buf_append_str(&d, "(unparsable connection string)");
        } else {
            for (PQconninfoOption *o = opts; o->keyword; o++) {
                if (!o->val) continue;
                if (d.len) buf_append_byte(&d, ' ');
                if (strcmp(o->keyword, "password") == 0) {
                    buf_printf(&d, "%s=***", o->keyword);
                    pg_conninfo_add_secret(s, o->val, strlen(o->val));
                } else {
                    buf_printf(&d, "%s=%s", o->keyword, o->val);
                }
            }
            PQconninfoFree(opts);
        }
        PQfreemem(perr);
    }
    s->display = buf_steal_str(&d);
}

/* Parses the connection string as libpq will and masks the password found
 * there: libpq's reading is the one that counts. */
int pg_conninfo_parse(pg_conninfo *ci, char **why)
{
    *why = NULL;
    PQconninfoOption *parsed = PQconninfoParse(ci->conninfo, why);
    if (!parsed) return -1;
    for (PQconninfoOption *o = parsed; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val)
            pg_conninfo_add_secret(ci, o->val, strlen(o->val));
    PQconninfoFree(parsed);
    return 0;
}

/* What a checkpoint is bound to: the settings that choose the server, the
 * database and the table, as libpq resolved them (defaults, service files
 * and environment included), never user or password. "postgres:" and
 * "postgresql:" spellings of one database give one identity. */
char *pg_conninfo_identity(PGconn *conn, const char *table_sql)
{
    const char *host = "", *hostaddr = "", *port = "", *db = "";
    PQconninfoOption *ci = PQconninfo(conn);
    for (PQconninfoOption *o = ci; o && o->keyword; o++) {
        const char *v = o->val ? o->val : "";
        if (strcmp(o->keyword, "host") == 0) host = v;
        else if (strcmp(o->keyword, "hostaddr") == 0) hostaddr = v;
        else if (strcmp(o->keyword, "port") == 0) port = v;
        else if (strcmp(o->keyword, "dbname") == 0) db = v;
    }
    buf b;
    buf_init(&b);
    buf_printf(&b, "postgresql://%s%s%s:%s/%s table=%s", host, *hostaddr ? " hostaddr=" : "",
               hostaddr, port, db, table_sql);
    PQconninfoFree(ci);
    return buf_steal_str(&b);
}
void pg_conninfo_free(pg_conninfo *s)
{
    free(s->conninfo);
    free(s->display);
    for (size_t i = 0; i < s->n_secrets; i++) free(s->secrets[i]);
    *s = (pg_conninfo){0};
}
