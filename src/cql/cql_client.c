/*
 * cql_client.c - the CQL client's life (connect, free, stats), its log, and
 * the loop that drives its connections (see cql_client.h for what the client
 * does, docs/cql.md for why; cql_client_internal.h for how it is split).
 *
 * Life of a request (struct req): it is queued on `ready`, dispatched to a
 * node (token owner or round-robin) under a free stream id and put on
 * `inflight` (ordered by send time, so the head has the earliest deadline).
 * Its answer completes it, or sends it to `backoff` with a retry time (write
 * timeout, unavailable, overloaded, bootstrapping, client timeout, lost
 * connection), or parks it behind a PREPARE pinned to the same node
 * (UNPREPARED). A request that times out leaves its stream id "orphaned" until
 * the late answer arrives, since the id cannot be reused before that
 * (cql_requests.c). Nodes, the token ring and routing are cql_topology.c's.
 *
 * All I/O happens in cql_pump(), called by the public functions; nothing
 * runs in the background, so the caller's thread is the only one.
 */
#include "cql/cql_client.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/retry.h"
#include "common/secret.h"
#include "common/xalloc.h"
#include "cql/cql_client_internal.h"
#include "cql/cql_conn.h"

/* ---- the log ------------------------------------------------------------- */

void cql_logf(cql_client *c, int level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char safe[1100];
    cql_redact(safe, sizeof safe, msg, c->username, c->password);
    if (c->cfg.log)
        c->cfg.log(c->cfg.log_ud, level, safe);
    else if (level <= CQL_LOG_WARN)
        fprintf(stderr, "cql: %s\n", safe);
}

/* Warnings about retries come in storms; say one per second. */
void cql_warn_throttled(cql_client *c, const char *fmt, ...)
{
    int64_t now = mono_ms();
    if (now - c->last_warn_ms < 1000) {
        c->suppressed_warns++;
        return;
    }
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->suppressed_warns)
        cql_logf(c, CQL_LOG_WARN, "%s (and %u similar since the last message)", msg, c->suppressed_warns);
    else
        cql_logf(c, CQL_LOG_WARN, "%s", msg);
    c->suppressed_warns = 0;
    c->last_warn_ms = now;
}

/* ---- the loop ------------------------------------------------------------ */

void cql_flush_all(cql_client *c)
{
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (!h->conn || !cql_conn_has_output(h->conn)) continue;
        char err[300];
        if (cql_conn_flush(h->conn, err, sizeof err)) cql_host_down(c, i, err);
    }
}

static void read_host(cql_client *c, int i)
{
    host *h = &c->hosts[i];
    char err[300];
    if (cql_conn_fill(h->conn, err, sizeof err)) {
        /* answers already received still count */
        cql_header hd;
        const unsigned char *body;
        char e2[300];
        while (h->conn && cql_conn_next(h->conn, &hd, &body, e2, sizeof e2) == 1)
            cql_handle_response(c, i, &hd, body);
        cql_host_down(c, i, err);
        return;
    }
    for (;;) {
        if (!h->conn) return;
        cql_header hd;
        const unsigned char *body;
        int rc = cql_conn_next(h->conn, &hd, &body, err, sizeof err);
        if (rc < 0) {
            cql_host_down(c, i, err);
            return;
        }
        if (rc == 0) return;
        cql_handle_response(c, i, &hd, body);
    }
}

/* One round: connect what is due, send what is ready, wait at most max_wait_ms
 * for the sockets, read and handle answers, expire timeouts. */
void cql_pump(cql_client *c, int max_wait_ms)
{
    int64_t now = mono_ms();
    if (c->ready.n || c->inflight.n || c->backoff.n) cql_reconnect_due(c, now);
    cql_expire(c, now);
    cql_dispatch(c);
    cql_flush_all(c);

    struct pollfd *pfd = xcalloc((size_t)c->n_hosts + 1, sizeof *pfd);
    int *idx = xcalloc((size_t)c->n_hosts + 1, sizeof *idx);
    int n = 0, buffered = 0;
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (!h->conn) continue;
        pfd[n].fd = h->conn->fd;
        pfd[n].events = cql_conn_poll_events(h->conn);
        idx[n++] = i;
        buffered |= cql_conn_has_buffered_input(h->conn);
    }
    int64_t wait = max_wait_ms;
    if (c->inflight.head) {
        int64_t d = c->inflight.head->deadline_ms - now;
        if (d < wait) wait = d;
    }
    for (req *r = c->backoff.head; r; r = r->next)
        if (r->retry_at_ms - now < wait) wait = r->retry_at_ms - now;
    if (c->ready.n) {
        /* waiting for a node to come back */
        for (int i = 0; i < c->n_hosts; i++) {
            host *h = &c->hosts[i];
            if (!h->conn && !h->removed && !h->remote && h->next_attempt_ms - now < wait)
                wait = h->next_attempt_ms - now;
        }
        if (cql_any_usable(c)) wait = 0;
    }
    if (wait < 0 || buffered) wait = 0;
    int rc = poll(pfd, (nfds_t)n, (int)wait);
    if (rc < 0 && errno != EINTR) cql_logf(c, CQL_LOG_WARN, "poll: %s", strerror(errno));
    for (int k = 0; k < n && rc >= 0; k++) {
        int i = idx[k];
        host *h = &c->hosts[i];
        if (!h->conn || h->conn->fd != pfd[k].fd) continue;
        if (pfd[k].revents & (POLLIN | POLLERR | POLLHUP) || cql_conn_has_buffered_input(h->conn))
            read_host(c, i);
        if (h->conn && (pfd[k].revents & POLLOUT)) {
            char err[300];
            if (cql_conn_flush(h->conn, err, sizeof err)) cql_host_down(c, i, err);
        }
    }
    free(pfd);
    free(idx);
    now = mono_ms();
    cql_expire(c, now);
    cql_dispatch(c);
    cql_flush_all(c);
}

/* ---- public -------------------------------------------------------------- */

void cql_client_config_defaults(cql_client_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->default_port = 9042;
    cfg->tls_verify = 1;
    cfg->connect_timeout_ms = 5000;
    cfg->request_timeout_ms = 12000;
    cfg->max_in_flight = 512;
    cfg->max_streams_per_conn = 2048;
    cfg->retry_base_ms = 50;
    cfg->retry_max_ms = 5000;
    cfg->retry_timeout_ms = 300000;
    cfg->discover_peers = 1;
    cfg->token_aware = 1;
}

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

cql_client *cql_client_connect(const cql_client_config *cfg, char *err, size_t errlen)
{
    cql_client *c = xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    c->contact_points = xstrdup(cfg->contact_points ? cfg->contact_points : "127.0.0.1");
    c->username = dup_or_null(cfg->username);
    c->password = dup_or_null(cfg->password);
    c->local_dc_cfg = dup_or_null(cfg->local_dc);
    c->tls_ca = dup_or_null(cfg->tls_ca);
    c->tls_cert = dup_or_null(cfg->tls_cert);
    c->tls_key = dup_or_null(cfg->tls_key);
    c->cfg.contact_points = c->contact_points;
    c->cfg.username = c->username;
    c->cfg.password = c->password;
    c->cfg.local_dc = c->local_dc_cfg;
    c->cfg.tls_ca = c->tls_ca;
    c->cfg.tls_cert = c->tls_cert;
    c->cfg.tls_key = c->tls_key;
    if (c->cfg.default_port <= 0) c->cfg.default_port = 9042;
    if (c->cfg.connect_timeout_ms <= 0) c->cfg.connect_timeout_ms = 5000;
    if (c->cfg.request_timeout_ms <= 0) c->cfg.request_timeout_ms = 12000;
    if (c->cfg.max_in_flight <= 0) c->cfg.max_in_flight = 512;
    if (c->cfg.max_streams_per_conn <= 0 || c->cfg.max_streams_per_conn > CQL_MAX_STREAMS)
        c->cfg.max_streams_per_conn = 2048;
    if (c->cfg.retry_base_ms <= 0) c->cfg.retry_base_ms = 50;
    if (c->cfg.retry_max_ms < c->cfg.retry_base_ms) c->cfg.retry_max_ms = c->cfg.retry_base_ms;
    if (c->cfg.retry_timeout_ms < 0) c->cfg.retry_timeout_ms = 0;
    c->control = -1;
    retry_init(&c->policy, &(retry_policy){.first_ms = c->cfg.retry_base_ms,
                                           .max_ms = c->cfg.retry_max_ms,
                                           .give_up_ms = c->cfg.retry_timeout_ms},
               c->cfg.cancel);
    c->stop = c->policy;
    if (c->username && !c->password) {
        snprintf(err, errlen, "a username is configured without a password");
        goto fail;
    }
    if (cfg->tls) {
        c->tls = cql_tls_new(c->tls_ca, c->tls_cert, c->tls_key, cfg->tls_verify, err, errlen);
        if (!c->tls) goto fail;
    }
    if (cql_add_contact_points(c, err, errlen)) goto fail;

    /* the first contact point that answers becomes the control connection */
    char last[600] = "";
    for (int i = 0; i < c->n_hosts && c->control < 0; i++) {
        int fatal = 0;
        if (c->cfg.cancel && *c->cfg.cancel) { /* each attempt may take connect_timeout_ms */
            snprintf(err, errlen, "stopped while connecting to the contact points of '%s'%s%s",
                     c->contact_points, last[0] ? "; last error: " : "", last);
            goto fail;
        }
        if (cql_host_connect(c, i, &fatal, last, sizeof last) == 0) break;
        cql_logf(c, CQL_LOG_WARN, "contact point %s: %s", c->hosts[i].name,
                 cql_after_name(&c->hosts[i], last));
        if (fatal) {
            snprintf(err, errlen, "%s", last);
            goto fail;
        }
    }
    if (c->control < 0) {
        snprintf(err, errlen, "cannot connect to any contact point of '%s'; last error: %s",
                 c->contact_points, last);
        goto fail;
    }
    if (cql_refresh_topology(c, err, errlen)) goto fail;
    /* drop contact points of other data centers */
    for (int i = 0; i < c->n_hosts; i++)
        if (c->hosts[i].dc[0] && c->local_dc[0] && strcmp(c->hosts[i].dc, c->local_dc) != 0) {
            c->hosts[i].remote = 1;
            cql_host_down(c, i, "not in the local data center");
        }
    cql_connect_all(c);
    return c;
fail:
    cql_client_free(c);
    return NULL;
}

static void free_list(reqlist *l)
{
    req *r = l->head;
    while (r) {
        req *next = r->next;
        cql_req_free(r);
        r = next;
    }
    l->head = l->tail = NULL;
    l->n = 0;
}

void cql_client_free(cql_client *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_hosts; i++) cql_conn_free(c->hosts[i].conn);
    free(c->hosts);
    free_list(&c->ready);
    free_list(&c->backoff);
    free_list(&c->inflight);
    cql_prepared *p = c->prepared;
    while (p) {
        cql_prepared *next = p->next;
        free(p->query);
        free(p->id);
        cql_result_free(&p->res);
        free(p);
        p = next;
    }
    free(c->ring);
    cql_tls_free(c->tls);
    free(c->contact_points);
    free(c->username);
    secret_free(c->password); /* a memset before free() may be optimised away */
    free(c->local_dc_cfg);
    free(c->tls_ca);
    free(c->tls_cert);
    free(c->tls_key);
    free(c);
}

void cql_client_get_stats(const cql_client *c, cql_client_stats *out)
{
    *out = c->st;
    out->hosts = c->n_hosts;
    out->hosts_up = 0;
    for (int i = 0; i < c->n_hosts; i++) out->hosts_up += c->hosts[i].conn != NULL;
}
