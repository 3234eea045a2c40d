/*
 * cql_topology.c - the cluster as the CQL client sees it: its nodes and
 * their connections, the metadata read from system.local and system.peers
 * (data centers, tokens), the token ring, which node a request goes to, the
 * server's topology and status events, schema agreement.
 *
 * It exists apart from the requests (cql_requests.c) because it answers one
 * question for them, "which node, and is it up", and changes on its own
 * schedule: at connect, on a TOPOLOGY_CHANGE event, when the control
 * connection is lost. Only the local data center's nodes are used; a node
 * that refuses a connection is retried with a backoff.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/retry.h"
#include "common/xalloc.h"
#include "cql/cql_client_internal.h"
#include "cql/cql_conn.h"

/* A node that refused a connection is tried again after this backoff. */
static const retry_policy reconnect_policy = {.first_ms = 500, .max_ms = 10000};

/* ---- hosts --------------------------------------------------------------- */

static int host_usable(const cql_client *c, int i)
{
    const host *h = &c->hosts[i];
    return h->conn && !h->removed && !h->remote && h->conn->n_free > 0;
}

static int find_host(cql_client *c, const char *ip, int port)
{
    for (int i = 0; i < c->n_hosts; i++)
        if (c->hosts[i].port == port && strcmp(c->hosts[i].ip, ip) == 0) return i;
    return -1;
}

static int add_host(cql_client *c, const struct sockaddr *sa, socklen_t salen,
                    const char *server_name, int is_contact)
{
    char ip[INET6_ADDRSTRLEN];
    int port;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        port = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        port = ntohs(in6->sin6_port);
    }
    int i = find_host(c, ip, port);
    if (i >= 0) {
        c->hosts[i].removed = 0;
        return i;
    }
    c->hosts = xrealloc(c->hosts, (size_t)(c->n_hosts + 1) * sizeof *c->hosts);
    host *h = &c->hosts[c->n_hosts];
    memset(h, 0, sizeof *h);
    snprintf(h->ip, sizeof h->ip, "%s", ip);
    h->port = port;
    if (sa->sa_family == AF_INET6)
        snprintf(h->name, sizeof h->name, "[%s]:%d", ip, port);
    else
        snprintf(h->name, sizeof h->name, "%s:%d", ip, port);
    memcpy(&h->sa, sa, salen);
    h->salen = salen;
    snprintf(h->server_name, sizeof h->server_name, "%s", server_name ? server_name : ip);
    h->is_contact = is_contact;
    h->failures = 0;
    return c->n_hosts++;
}

/* Messages from the connection start with "ip:port: "; drop it where the
 * caller names the node itself. */
const char *cql_after_name(const host *h, const char *msg)
{
    size_t n = strlen(h->name);
    return strncmp(msg, h->name, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' ? msg + n + 2 : msg;
}

void cql_host_down(cql_client *c, int hi, const char *reason)
{
    host *h = &c->hosts[hi];
    if (!h->conn) return;
    reason = cql_after_name(h, reason);
    cql_logf(c, CQL_LOG_WARN, "node %s lost: %s", h->name, reason);
    cql_conn_free(h->conn);
    h->conn = NULL;
    h->failures = 0;
    h->next_attempt_ms = mono_ms() + 100;
    cql_requeue_inflight_of(c, hi, reason);
    if (c->control == hi) {
        c->control = -1;
        c->refresh_pending = 1;
    }
}

static void send_register(cql_client *c, int hi);

/* Opens a connection to host hi; 0 on success. */
int cql_host_connect(cql_client *c, int hi, int *fatal, char *err, size_t errlen)
{
    host *h = &c->hosts[hi];
    cql_conn_opts o = {
        .tls = c->tls,
        .server_name = h->server_name,
        .username = c->username,
        .password = c->password,
        .connect_timeout_ms = c->cfg.connect_timeout_ms,
        .max_streams = c->cfg.max_streams_per_conn,
    };
    h->conn = cql_conn_open((const struct sockaddr *)&h->sa, h->salen, &o, fatal, err, errlen);
    if (!h->conn) {
        h->next_attempt_ms = mono_ms() + retry_delay(&reconnect_policy, ++h->failures,
                                                     &c->policy.rng);
        return -1;
    }
    if (h->ever_connected) c->st.reconnects++;
    h->ever_connected = 1;
    h->failures = 0;
    cql_logf(c, CQL_LOG_INFO, "connected to %s%s", h->name, c->tls ? " (TLS)" : "");
    cql_prepare_all_on(c, hi);
    if (c->control < 0) {
        c->control = hi;
        send_register(c, hi);
    }
    return 0;
}

/* Reconnects nodes whose backoff has elapsed. */
void cql_reconnect_due(cql_client *c, int64_t now)
{
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (h->conn || h->removed || h->remote || now < h->next_attempt_ms) continue;
        char err[600];
        int fatal = 0;
        if (cql_host_connect(c, i, &fatal, err, sizeof err)) {
            cql_warn_throttled(c, "reconnecting to %s failed (next attempt in %lld ms): %s", h->name,
                               (long long)(h->next_attempt_ms - mono_ms()), cql_after_name(h, err));
            if (fatal && !c->fatal) {
                c->fatal = 1;
                snprintf(c->fatal_error, sizeof c->fatal_error, "%s", err);
            }
        }
    }
}

/* ---- routing ------------------------------------------------------------- */

/* The node for a request, or -1 when none can take it now. */
int cql_pick_host(cql_client *c, const req *r)
{
    if (r->pin >= 0) return host_usable(c, r->pin) ? r->pin : -1;
    if (r->has_token && c->n_ring && c->cfg.token_aware) {
        /* first ring position with token >= t, wrapping; the first usable
         * node from there on is a replica (the primary when it is up) */
        size_t lo = 0, hi = c->n_ring;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c->ring[mid].token < r->token)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t k = 0; k < c->n_ring; k++) {
            int h = c->ring[(lo + k) % c->n_ring].host;
            if (h != r->avoid && host_usable(c, h)) return h;
        }
    }
    int fallback = -1;
    for (int k = 0; k < c->n_hosts; k++) {
        int h = (c->rr + k) % c->n_hosts;
        if (!host_usable(c, h)) continue;
        if (h == r->avoid) {
            fallback = h;
            continue;
        }
        c->rr = (h + 1) % c->n_hosts;
        return h;
    }
    return fallback;
}

int cql_any_usable(const cql_client *c)
{
    for (int i = 0; i < c->n_hosts; i++)
        if (host_usable(c, i)) return 1;
    return 0;
}

int cql_client_route(cql_client *c, int64_t token)
{
    req probe;
    memset(&probe, 0, sizeof probe);
    probe.pin = probe.avoid = -1;
    probe.has_token = 1;
    probe.token = token;
    int save = c->rr;
    int h = cql_pick_host(c, &probe);
    c->rr = save;
    return h;
}

/* ---- topology ------------------------------------------------------------ */

void cql_handle_event(cql_client *c, const cql_response *resp)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (resp->event_addr_len == 4)
        inet_ntop(AF_INET, resp->event_addr, ip, sizeof ip);
    else if (resp->event_addr_len == 16)
        inet_ntop(AF_INET6, resp->event_addr, ip, sizeof ip);
    if (!resp->event_type) return;
    cql_logf(c, CQL_LOG_INFO, "event %s %s %s", resp->event_type,
             resp->event_change ? resp->event_change : "", ip);
    if (strcmp(resp->event_type, "TOPOLOGY_CHANGE") == 0) {
        c->refresh_pending = 1;
    } else if (strcmp(resp->event_type, "STATUS_CHANGE") == 0 && resp->event_change &&
               strcmp(resp->event_change, "UP") == 0) {
        for (int i = 0; i < c->n_hosts; i++)
            if (strcmp(c->hosts[i].ip, ip) == 0 && !c->hosts[i].conn) {
                c->hosts[i].failures = 0;
                c->hosts[i].next_attempt_ms = mono_ms() + 1000; /* spec 4.2.6: wait a bit */
            }
    }
}

static int col_index(const cql_response *r, const char *name)
{
    for (int32_t i = 0; i < r->meta.n_cols; i++)
        if (r->meta.cols && strcmp(r->meta.cols[i].name, name) == 0) return i;
    return -1;
}

static const cql_cell *cell(const cql_response *r, int32_t row, int col)
{
    static const cql_cell null_cell = {NULL, -1};
    if (col < 0) return &null_cell;
    return &r->cells[(size_t)row * (size_t)r->meta.n_cols + (size_t)col];
}

static void ring_add_tokens(cql_client *c, const cql_cell *tokens, int hi, size_t *cap)
{
    reader it;
    int32_t n;
    if (cql_collection_open(tokens, &it, &n)) return;
    for (int32_t k = 0; k < n; k++) {
        cql_cell e;
        if (cql_collection_next(&it, &e) || e.len <= 0 || e.len > 30) break;
        char tmp[32];
        memcpy(tmp, e.p, (size_t)e.len);
        tmp[e.len] = '\0';
        char *end;
        errno = 0;
        long long t = strtoll(tmp, &end, 10);
        if (errno || *end) continue;
        if (c->n_ring == *cap) {
            *cap = *cap ? *cap * 2 : 64;
            c->ring = xrealloc(c->ring, *cap * sizeof *c->ring);
        }
        c->ring[c->n_ring].token = t;
        c->ring[c->n_ring].host = hi;
        c->n_ring++;
    }
}

static int ring_cmp(const void *a, const void *b)
{
    const ring_entry *x = a, *y = b;
    return x->token < y->token ? -1 : x->token > y->token;
}

static void copy_cell_text(const cql_cell *cl, char *out, size_t outlen)
{
    if (cl->len <= 0) {
        out[0] = '\0';
        return;
    }
    snprintf(out, outlen, "%.*s", (int)cl->len, (const char *)cl->p);
}

/* Reads system.local and system.peers on the control connection; adds the
 * peers as nodes and rebuilds the token ring. */
int cql_refresh_topology(cql_client *c, char *err, size_t errlen)
{
    if (c->control < 0 || !c->hosts[c->control].conn) {
        for (int i = 0; i < c->n_hosts; i++)
            if (c->hosts[i].conn && !c->hosts[i].removed) {
                c->control = i;
                send_register(c, i);
                break;
            }
        if (c->control < 0) return 0; /* retried when a node is back */
    }
    int ctl = c->control;
    c->in_refresh = 1;
    cql_result local, peers;
    memset(&local, 0, sizeof local);
    memset(&peers, 0, sizeof peers);
    int rc = -1;
    req *r = cql_query_req(c, "SELECT data_center, rack, tokens, partitioner FROM system.local "
                          "WHERE key='local'", NULL, CQL_CONSISTENCY_ONE);
    r->pin = ctl;
    if (cql_run_sync(c, r, &local, err, errlen)) goto out;
    if (local.r.kind != CQL_RESULT_ROWS || local.r.n_rows < 1) {
        snprintf(err, errlen, "system.local returned no row");
        goto out;
    }
    char partitioner[200], dc[64];
    copy_cell_text(cell(&local.r, 0, col_index(&local.r, "partitioner")), partitioner,
                   sizeof partitioner);
    copy_cell_text(cell(&local.r, 0, col_index(&local.r, "data_center")), dc, sizeof dc);
    if (ctl >= 0 && ctl < c->n_hosts) snprintf(c->hosts[ctl].dc, sizeof c->hosts[ctl].dc, "%s", dc);
    if (!c->local_dc[0]) snprintf(c->local_dc, sizeof c->local_dc, "%s", c->local_dc_cfg ? c->local_dc_cfg : dc);

    int have_peers = 0;
    if (c->cfg.discover_peers) {
        r = cql_query_req(c, "SELECT peer, rpc_address, data_center, rack, tokens FROM system.peers",
                          NULL, CQL_CONSISTENCY_ONE);
        r->pin = ctl;
        if (cql_run_sync(c, r, &peers, err, errlen)) goto out;
        have_peers = peers.r.kind == CQL_RESULT_ROWS;
    }

    free(c->ring);
    c->ring = NULL;
    c->n_ring = 0;
    size_t cap = 0;
    int murmur = strstr(partitioner, "Murmur3Partitioner") != NULL;
    if (murmur) ring_add_tokens(c, cell(&local.r, 0, col_index(&local.r, "tokens")), ctl, &cap);
    int *seen = xcalloc((size_t)c->n_hosts + (have_peers ? (size_t)peers.r.n_rows : 0) + 1, sizeof *seen);
    if (ctl >= 0) seen[ctl] = 1;
    if (have_peers) {
        int ci_peer = col_index(&peers.r, "peer"), ci_rpc = col_index(&peers.r, "rpc_address");
        int ci_dc = col_index(&peers.r, "data_center"), ci_tok = col_index(&peers.r, "tokens");
        for (int32_t row = 0; row < peers.r.n_rows; row++) {
            char ip[INET6_ADDRSTRLEN] = "";
            if (cql_cell_inet(cell(&peers.r, row, ci_rpc), ip, sizeof ip) ||
                strcmp(ip, "0.0.0.0") == 0 || strcmp(ip, "::") == 0)
                if (cql_cell_inet(cell(&peers.r, row, ci_peer), ip, sizeof ip)) continue;
            struct sockaddr_storage ss;
            memset(&ss, 0, sizeof ss);
            socklen_t sl;
            int port = c->hosts[ctl].port;
            if (strchr(ip, ':')) {
                struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
                a6->sin6_family = AF_INET6;
                a6->sin6_port = htons((uint16_t)port);
                inet_pton(AF_INET6, ip, &a6->sin6_addr);
                sl = sizeof *a6;
            } else {
                struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
                a4->sin_family = AF_INET;
                a4->sin_port = htons((uint16_t)port);
                inet_pton(AF_INET, ip, &a4->sin_addr);
                sl = sizeof *a4;
            }
            int before = c->n_hosts;
            int hi = add_host(c, (struct sockaddr *)&ss, sl, NULL, 0);
            if (hi >= before) {
                seen = xrealloc(seen, ((size_t)c->n_hosts + 1) * sizeof *seen);
                seen[hi] = 0;
                cql_logf(c, CQL_LOG_INFO, "discovered node %s", c->hosts[hi].name);
            }
            seen[hi] = 1;
            copy_cell_text(cell(&peers.r, row, ci_dc), c->hosts[hi].dc, sizeof c->hosts[hi].dc);
            c->hosts[hi].remote = c->local_dc[0] && c->hosts[hi].dc[0] &&
                                  strcmp(c->hosts[hi].dc, c->local_dc) != 0;
            if (murmur) ring_add_tokens(c, cell(&peers.r, row, ci_tok), hi, &cap);
        }
        /* nodes no longer in the cluster (contact points stay: they may be
         * addresses the cluster does not know itself by) */
        for (int i = 0; i < c->n_hosts; i++)
            if (!seen[i] && !c->hosts[i].is_contact && !c->hosts[i].removed) {
                cql_logf(c, CQL_LOG_INFO, "node %s left the cluster", c->hosts[i].name);
                c->hosts[i].removed = 1;
                cql_host_down(c, i, "removed from the cluster");
            }
    }
    free(seen);
    if (c->n_ring) qsort(c->ring, c->n_ring, sizeof *c->ring, ring_cmp);
    c->st.token_aware = c->n_ring > 0 && c->cfg.token_aware;
    rc = 0;
out:
    cql_result_free(&local);
    cql_result_free(&peers);
    c->in_refresh = 0;
    return rc;
}

/* Connects to every known local node that has no connection yet. */
void cql_connect_all(cql_client *c)
{
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (h->conn || h->removed || h->remote) continue;
        char err[600];
        int fatal;
        if (cql_host_connect(c, i, &fatal, err, sizeof err))
            cql_logf(c, CQL_LOG_WARN, "cannot connect to %s (will retry): %s", h->name,
                     cql_after_name(h, err));
    }
}

void cql_maybe_refresh(cql_client *c)
{
    if (!c->refresh_pending || c->in_refresh) return;
    c->refresh_pending = 0;
    char err[600];
    if (cql_refresh_topology(c, err, sizeof err))
        cql_logf(c, CQL_LOG_WARN, "refreshing the node list failed: %s", err);
    else
        cql_connect_all(c);
}

static void send_register(cql_client *c, int hi)
{
    req *r = cql_req_new(c, K_INTERNAL, CQL_OP_REGISTER);
    const char *ev[] = {"TOPOLOGY_CHANGE", "STATUS_CHANGE"};
    cql_put_string_list(&r->part, ev, 2);
    r->pin = hi;
    cql_list_push(&c->ready, r, L_READY);
}

/* Splits "h1[:p],[v6]:p,h2" and adds every address each name resolves to. */
int cql_add_contact_points(cql_client *c, char *err, size_t errlen)
{
    char *list = xstrdup(c->contact_points);
    char *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char hostpart[256], portbuf[16];
        int port = c->cfg.default_port;
        if (*tok == '[') {
            char *close = strchr(tok, ']');
            if (!close) {
                snprintf(err, errlen, "bad contact point '%s' (unclosed '[')", tok);
                free(list);
                return -1;
            }
            snprintf(hostpart, sizeof hostpart, "%.*s", (int)(close - tok - 1), tok + 1);
            if (close[1] == ':') port = atoi(close + 2);
        } else {
            char *colon = strrchr(tok, ':');
            if (colon && strchr(tok, ':') == colon) {
                snprintf(hostpart, sizeof hostpart, "%.*s", (int)(colon - tok), tok);
                port = atoi(colon + 1);
            } else {
                snprintf(hostpart, sizeof hostpart, "%s", tok);
            }
        }
        if (!hostpart[0] || port <= 0 || port > 65535) {
            snprintf(err, errlen, "bad contact point '%s' (want HOST[:PORT])", tok);
            free(list);
            return -1;
        }
        snprintf(portbuf, sizeof portbuf, "%d", port);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        int gai = getaddrinfo(hostpart, portbuf, &hints, &res);
        if (gai) {
            cql_logf(c, CQL_LOG_WARN, "contact point %s: %s", hostpart, gai_strerror(gai));
            continue;
        }
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            add_host(c, ai->ai_addr, ai->ai_addrlen, hostpart, 1);
            n++;
        }
        freeaddrinfo(res);
    }
    free(list);
    if (n == 0) {
        snprintf(err, errlen, "no contact point could be resolved from '%s'", c->contact_points);
        return -1;
    }
    return 0;
}

int cql_client_wait_schema_agreement(cql_client *c, int timeout_ms, char *err, size_t errlen)
{
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        cql_result l, p;
        int agree = 1;
        char v0[40] = "", v[40];
        if (cql_client_query(c, "SELECT schema_version FROM system.local WHERE key='local'", NULL,
                             CQL_CONSISTENCY_ONE, &l, err, errlen))
            return -1;
        if (l.r.kind == CQL_RESULT_ROWS && l.r.n_rows > 0)
            cql_cell_uuid(cell(&l.r, 0, col_index(&l.r, "schema_version")), v0);
        cql_result_free(&l);
        if (cql_client_query(c, "SELECT peer, schema_version FROM system.peers", NULL,
                             CQL_CONSISTENCY_ONE, &p, err, errlen))
            return -1;
        int ci = col_index(&p.r, "schema_version");
        for (int32_t row = 0; p.r.kind == CQL_RESULT_ROWS && row < p.r.n_rows; row++)
            if (cql_cell_uuid(cell(&p.r, row, ci), v) == 0 && strcmp(v, v0) != 0) agree = 0;
        cql_result_free(&p);
        if (agree) return 0;
        if (mono_ms() >= deadline) return 1;
        cql_pump(c, 200);
    }
}

const char *cql_client_host_name(const cql_client *c, int i, uint64_t *requests)
{
    if (i < 0 || i >= c->n_hosts) return NULL;
    if (requests) *requests = c->hosts[i].n_requests;
    return c->hosts[i].name;
}
