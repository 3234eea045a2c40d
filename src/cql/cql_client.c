/*
 * cql_client.c - the cluster side of the CQL client: nodes, peers, routing,
 * retries (see cql_client.h for what it does, docs/cql.md for why).
 *
 * Life of a request (struct req): it is queued on `ready`, dispatched to a
 * node (token owner or round-robin) under a free stream id and put on
 * `inflight` (ordered by send time, so the head has the earliest deadline).
 * Its answer completes it, or sends it to `backoff` with a retry time (write
 * timeout, unavailable, overloaded, bootstrapping, client timeout, lost
 * connection), or parks it behind a PREPARE pinned to the same node
 * (UNPREPARED). A request that times out leaves its stream id "orphaned" until
 * the late answer arrives, since the id cannot be reused before that.
 *
 * All I/O happens in pump(), called by the public functions; nothing runs in
 * the background, so the caller's thread is the only one.
 */
#include "cql/cql_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/retry.h"
#include "common/xalloc.h"
#include "cql/cql_conn.h"
#include "cql/murmur3.h"

enum { L_NONE, L_READY, L_BACKOFF, L_INFLIGHT };
enum { K_USER, K_SYNC, K_INTERNAL };

typedef struct req {
    struct req *next, *prev;
    int list;
    int kind;
    uint8_t op;
    uint8_t batch_type;
    buf part;        /* QUERY/PREPARE/REGISTER: the body; EXECUTE: params after the id;
                        BATCH: the items' value lists, back to back */
    buf tail;        /* BATCH: <consistency><flags>[<timestamp>] */
    size_t *item_off; /* BATCH: n_items + 1 offsets into part */
    uint16_t n_items;
    cql_prepared *stmt;
    int has_token;
    int64_t token;
    int pin;         /* host index the request must go to, -1: any */
    int avoid;       /* host to avoid on the next attempt, -1: none */
    int host;        /* where it is in flight */
    int16_t stream;
    int attempts;
    int reprepares;
    int64_t first_ms, deadline_ms, retry_at_ms;
    struct req *parked; /* PREPARE: the request to resume when it completes */
    int done, ok;
    int32_t err_code;  /* the server's error code when it failed on one, else -1 */
    cql_result result; /* K_SYNC */
    char error[512];
} req;

typedef struct reqlist {
    req *head, *tail;
    size_t n;
} reqlist;

struct cql_prepared {
    char *query;
    unsigned char *id;
    uint16_t id_len;
    cql_result res; /* the Prepared result: bind metadata */
    struct cql_prepared *next;
};

typedef struct host {
    char name[80];     /* "ip:port" */
    char ip[INET6_ADDRSTRLEN];
    int port;
    struct sockaddr_storage sa;
    socklen_t salen;
    char server_name[256]; /* what its certificate must name */
    char dc[64];
    cql_conn *conn;
    int64_t next_attempt_ms;
    int failures; /* connection attempts failed in a row (their backoff) */
    int is_contact;
    int removed;
    int remote; /* not in the local data center */
    uint64_t n_requests;
    int ever_connected;
} host;

typedef struct ring_entry {
    int64_t token;
    int host;
} ring_entry;

struct cql_client {
    cql_client_config cfg;
    char *contact_points, *username, *password, *local_dc_cfg, *tls_ca, *tls_cert, *tls_key;
    cql_tls *tls;
    host *hosts;
    int n_hosts;
    int control; /* host index of the control connection, -1 */
    char local_dc[64];
    ring_entry *ring;
    size_t n_ring;
    int rr;
    reqlist ready, backoff, inflight;
    size_t outstanding; /* user requests not yet completed */
    retry policy;           /* the requests' backoff and give-up (retry.h) */
    retry stop;             /* only its stop grace, over cfg.cancel (cancelled()) */
    cql_prepared *prepared;
    char first_error[600];
    int failed_since_wait;
    int fatal;          /* a request failed for a reason retrying cannot fix */
    char fatal_error[600];
    int refresh_pending;
    int in_refresh;
    int64_t last_warn_ms;
    unsigned suppressed_warns;
    cql_client_stats st;
};

/* The owner of an orphaned stream id (its request timed out). */
static int orphan_marker;
#define ORPHAN ((void *)&orphan_marker)

/* ---- small helpers ---------------------------------------------------------- */

static void logf_(cql_client *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(cql_client *c, int level, const char *fmt, ...)
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
static void warn_throttled(cql_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn_throttled(cql_client *c, const char *fmt, ...)
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
        logf_(c, CQL_LOG_WARN, "%s (and %u similar since the last message)", msg, c->suppressed_warns);
    else
        logf_(c, CQL_LOG_WARN, "%s", msg);
    c->suppressed_warns = 0;
    c->last_warn_ms = now;
}

/* A node that refused a connection is tried again after this backoff. */
static const retry_policy reconnect_policy = {.first_ms = 500, .max_ms = 10000};

static void list_push(reqlist *l, req *r, int which)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
    r->list = which;
}

static void list_push_front(reqlist *l, req *r, int which)
{
    r->prev = NULL;
    r->next = l->head;
    if (l->head)
        l->head->prev = r;
    else
        l->tail = r;
    l->head = r;
    l->n++;
    r->list = which;
}

static void list_remove(reqlist *l, req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->next = r->prev = NULL;
    l->n--;
    r->list = L_NONE;
}

static reqlist *list_of(cql_client *c, req *r)
{
    switch (r->list) {
    case L_READY: return &c->ready;
    case L_BACKOFF: return &c->backoff;
    case L_INFLIGHT: return &c->inflight;
    default: return NULL;
    }
}

static void unlink_req(cql_client *c, req *r)
{
    reqlist *l = list_of(c, r);
    if (l) list_remove(l, r);
}

static req *req_new(cql_client *c, int kind, uint8_t op)
{
    req *r = xcalloc(1, sizeof *r);
    r->kind = kind;
    r->op = op;
    r->pin = r->avoid = r->host = -1;
    r->stream = -1;
    r->err_code = -1;
    r->first_ms = mono_ms();
    buf_init(&r->part);
    buf_init(&r->tail);
    if (kind == K_USER) c->outstanding++;
    return r;
}

static void req_free(req *r)
{
    buf_free(&r->part);
    buf_free(&r->tail);
    free(r->item_off);
    cql_result_free(&r->result);
    free(r);
}

void cql_result_free(cql_result *res)
{
    if (!res) return;
    cql_response_free(&res->r);
    free(res->body);
    res->body = NULL;
}

static int is_retryable_code(int32_t code)
{
    return code == CQL_ERR_WRITE_TIMEOUT || code == CQL_ERR_READ_TIMEOUT ||
           code == CQL_ERR_UNAVAILABLE || code == CQL_ERR_OVERLOADED ||
           code == CQL_ERR_IS_BOOTSTRAPPING || code == CQL_ERR_SERVER;
}

static const char *what(const req *r)
{
    return r->op == CQL_OP_EXECUTE ? "write" : r->op == CQL_OP_BATCH ? "batch" : cql_opcode_name(r->op);
}

/* ---- completion ----------------------------------------------------------- */

static void resume_parked(cql_client *c, req *prep, int ok, const char *error);

static void complete(cql_client *c, req *r, int ok, const char *error)
{
    unlink_req(c, r);
    r->done = 1;
    r->ok = ok;
    if (!ok) snprintf(r->error, sizeof r->error, "%s", error ? error : "failed");
    if (r->parked) resume_parked(c, r, ok, r->error);
    switch (r->kind) {
    case K_USER:
        c->outstanding--;
        if (ok) {
            c->st.completed++;
        } else {
            c->st.failed++;
            if (!c->failed_since_wait++)
                snprintf(c->first_error, sizeof c->first_error, "%s", r->error);
            if (!c->fatal) {
                c->fatal = 1;
                snprintf(c->fatal_error, sizeof c->fatal_error, "%s", r->error);
                logf_(c, CQL_LOG_ERROR, "%s", r->error);
            }
        }
        req_free(r);
        break;
    case K_SYNC: break; /* the waiter reads and frees it */
    default:
        if (!ok) logf_(c, CQL_LOG_WARN, "%s", r->error);
        req_free(r);
    }
}

static void schedule_retry(cql_client *c, req *r, const char *reason, int avoid_host)
{
    unlink_req(c, r);
    int64_t now = mono_ms();
    r->attempts++;
    if (r->pin >= 0 && r->kind == K_INTERNAL && r->op == CQL_OP_PREPARE) {
        /* a re-prepare pinned to a node that failed: let the parked request
         * go elsewhere instead */
        complete(c, r, 0, reason);
        return;
    }
    int64_t delay = retry_delay(&c->policy.p, r->attempts, &c->policy.rng);
    if (retry_past_deadline(&c->policy.p, now - r->first_ms, delay)) {
        char msg[700];
        snprintf(msg, sizeof msg, "%s failed after %d attempts over %.1f s; last error: %s",
                 what(r), r->attempts, (double)(now - r->first_ms) / 1000.0, reason);
        complete(c, r, 0, msg);
        return;
    }
    r->retry_at_ms = now + delay;
    r->avoid = avoid_host;
    c->st.retries += r->kind == K_USER;
    snprintf(r->error, sizeof r->error, "%s", reason);
    warn_throttled(c, "retrying %s in %lld ms (attempt %d): %s", what(r), (long long)delay,
                   r->attempts + 1, reason);
    list_push(&c->backoff, r, L_BACKOFF);
}

/* A re-PREPARE finished: send the request that was waiting for it. */
static void resume_parked(cql_client *c, req *prep, int ok, const char *error)
{
    req *r = prep->parked;
    prep->parked = NULL;
    if (!ok && prep->err_code >= 0 && !is_retryable_code(prep->err_code)) { /* for good */
        complete(c, r, 0, error);
        return;
    }
    list_push_front(&c->ready, r, L_READY);
}

/* ---- hosts ----------------------------------------------------------------- */

static int host_up(const host *h) { return h->conn != NULL; }

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

static void requeue_inflight_of(cql_client *c, int hi, const char *reason);

/* Messages from the connection start with "ip:port: "; drop it where the
 * caller names the node itself. */
static const char *after_name(const host *h, const char *msg)
{
    size_t n = strlen(h->name);
    return strncmp(msg, h->name, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' ? msg + n + 2 : msg;
}

static void host_down(cql_client *c, int hi, const char *reason)
{
    host *h = &c->hosts[hi];
    if (!h->conn) return;
    reason = after_name(h, reason);
    logf_(c, CQL_LOG_WARN, "node %s lost: %s", h->name, reason);
    cql_conn_free(h->conn);
    h->conn = NULL;
    h->failures = 0;
    h->next_attempt_ms = mono_ms() + 100;
    requeue_inflight_of(c, hi, reason);
    if (c->control == hi) {
        c->control = -1;
        c->refresh_pending = 1;
    }
}

static void prepare_all_on(cql_client *c, int hi);
static void send_register(cql_client *c, int hi);

/* Opens a connection to host hi; 0 on success. */
static int host_connect(cql_client *c, int hi, int *fatal, char *err, size_t errlen)
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
    logf_(c, CQL_LOG_INFO, "connected to %s%s", h->name, c->tls ? " (TLS)" : "");
    prepare_all_on(c, hi);
    if (c->control < 0) {
        c->control = hi;
        send_register(c, hi);
    }
    return 0;
}

/* Reconnects nodes whose backoff has elapsed. */
static void reconnect_due(cql_client *c, int64_t now)
{
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (h->conn || h->removed || h->remote || now < h->next_attempt_ms) continue;
        char err[600];
        int fatal = 0;
        if (host_connect(c, i, &fatal, err, sizeof err)) {
            warn_throttled(c, "reconnecting to %s failed (next attempt in %lld ms): %s", h->name,
                           (long long)(h->next_attempt_ms - mono_ms()), after_name(h, err));
            if (fatal && !c->fatal) {
                c->fatal = 1;
                snprintf(c->fatal_error, sizeof c->fatal_error, "%s", err);
            }
        }
    }
}

/* ---- encoding and dispatch ------------------------------------------------- */

static void encode(const req *r, int16_t stream, buf *out)
{
    size_t f = cql_frame_begin(out, r->op, stream, 0);
    switch (r->op) {
    case CQL_OP_EXECUTE:
        cql_put_short_bytes(out, r->stmt->id, r->stmt->id_len);
        buf_append(out, r->part.data, r->part.len);
        break;
    case CQL_OP_BATCH:
        cql_put_byte(out, r->batch_type);
        cql_put_short(out, r->n_items);
        for (uint16_t i = 0; i < r->n_items; i++) {
            cql_put_byte(out, 1);
            cql_put_short_bytes(out, r->stmt->id, r->stmt->id_len);
            buf_append(out, r->part.data + r->item_off[i], r->item_off[i + 1] - r->item_off[i]);
        }
        buf_append(out, r->tail.data, r->tail.len);
        break;
    default: buf_append(out, r->part.data, r->part.len);
    }
    cql_frame_end(out, f);
}

/* The node for a request, or -1 when none can take it now. */
static int pick_host(cql_client *c, const req *r)
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

static int any_usable(const cql_client *c)
{
    for (int i = 0; i < c->n_hosts; i++)
        if (host_usable(c, i)) return 1;
    return 0;
}

static void dispatch(cql_client *c)
{
    buf frame;
    buf_init(&frame);
    req *r = c->ready.head;
    int64_t now = mono_ms();
    while (r) {
        req *next = r->next;
        int hi = pick_host(c, r);
        if (hi < 0) {
            if (r->pin >= 0 && !host_up(&c->hosts[r->pin])) {
                char msg[300];
                snprintf(msg, sizeof msg, "node %s is down", c->hosts[r->pin].name);
                r->pin = -1;
                schedule_retry(c, r, msg, -1);
            } else if (!any_usable(c)) {
                if (c->cfg.retry_timeout_ms > 0 && now - r->first_ms >= c->cfg.retry_timeout_ms) {
                    char msg[700];
                    snprintf(msg, sizeof msg, "%s failed: no node available for %.1f s (%s)",
                             what(r), (double)(now - r->first_ms) / 1000.0,
                             r->error[0] ? r->error : "all connections down");
                    complete(c, r, 0, msg);
                }
                break; /* nothing can be sent now */
            }
            r = next;
            continue;
        }
        host *h = &c->hosts[hi];
        int sid = cql_conn_alloc_stream(h->conn, r);
        list_remove(&c->ready, r);
        r->host = hi;
        r->stream = (int16_t)sid;
        r->deadline_ms = now + c->cfg.request_timeout_ms;
        buf_reset(&frame);
        encode(r, (int16_t)sid, &frame);
        cql_conn_queue(h->conn, frame.data, frame.len);
        h->n_requests++;
        if (r->kind == K_USER) c->st.requests++;
        list_push(&c->inflight, r, L_INFLIGHT);
        r = next;
    }
    buf_free(&frame);
}

/* Every request in flight on host hi goes back for a retry elsewhere. */
static void requeue_inflight_of(cql_client *c, int hi, const char *reason)
{
    char msg[700];
    snprintf(msg, sizeof msg, "connection to %s lost: %s", c->hosts[hi].name,
             after_name(&c->hosts[hi], reason));
    req *r = c->inflight.head;
    while (r) {
        req *next = r->next;
        if (r->host == hi) {
            r->host = -1;
            r->stream = -1;
            if (r->kind == K_INTERNAL && r->op == CQL_OP_REGISTER)
                complete(c, r, 1, NULL);
            else
                schedule_retry(c, r, msg, hi);
        }
        r = next;
    }
}

/* ---- responses ------------------------------------------------------------- */

static void error_message(cql_client *c, const req *r, const cql_response *resp, char *out,
                          size_t outlen)
{
    char msg[512];
    cql_redact(msg, sizeof msg, resp->error.message ? resp->error.message : "", c->username,
               c->password);
    const char *hint = "";
    switch (resp->error.code) {
    case CQL_ERR_SYNTAX: hint = " (the statement is not valid CQL)"; break;
    case CQL_ERR_INVALID: hint = " (the statement does not fit the schema)"; break;
    case CQL_ERR_UNAUTHORIZED: hint = " (the user lacks a permission)"; break;
    case CQL_ERR_BAD_CREDENTIALS: hint = " (bad credentials)"; break;
    default: break;
    }
    snprintf(out, outlen, "%s rejected by %s: %s (0x%04x)%s: %s", what(r),
             r->host >= 0 ? c->hosts[r->host].name : "?", cql_error_name(resp->error.code),
             (unsigned)resp->error.code, hint, msg);
}

static void handle_event(cql_client *c, const cql_response *resp)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (resp->event_addr_len == 4)
        inet_ntop(AF_INET, resp->event_addr, ip, sizeof ip);
    else if (resp->event_addr_len == 16)
        inet_ntop(AF_INET6, resp->event_addr, ip, sizeof ip);
    if (!resp->event_type) return;
    logf_(c, CQL_LOG_INFO, "event %s %s %s", resp->event_type,
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

static void handle_prepared_result(cql_client *c, req *r, const cql_response *resp)
{
    /* A re-prepare: the id may differ if the node changed; keep the newest. */
    cql_prepared *p = r->stmt;
    if (p && resp->kind == CQL_RESULT_PREPARED &&
        (resp->prepared_id_len != p->id_len || memcmp(resp->prepared_id, p->id, p->id_len) != 0)) {
        logf_(c, CQL_LOG_INFO, "prepared id of \"%s\" changed", p->query);
        free(p->id);
        p->id = xmalloc(resp->prepared_id_len ? resp->prepared_id_len : 1);
        memcpy(p->id, resp->prepared_id, resp->prepared_id_len);
        p->id_len = resp->prepared_id_len;
    }
}

static void handle_response(cql_client *c, int hi, const cql_header *h, const unsigned char *body)
{
    host *hs = &c->hosts[hi];
    cql_response resp;
    char why[300];
    if (h->stream < 0) {
        if (h->opcode == CQL_OP_EVENT && cql_response_decode(h, body, h->length, &resp, why, sizeof why) == 0)
            handle_event(c, &resp);
        cql_response_free(&resp);
        return;
    }
    void *owner = cql_conn_stream_owner(hs->conn, h->stream);
    if (!owner) {
        logf_(c, CQL_LOG_DEBUG, "%s: answer on unused stream %d ignored", hs->name, h->stream);
        return;
    }
    cql_conn_release_stream(hs->conn, h->stream);
    if (owner == ORPHAN) {
        hs->conn->orphans--;
        return;
    }
    req *r = owner;
    list_remove(&c->inflight, r);
    r->host = hi;
    if (cql_response_decode(h, body, h->length, &resp, why, sizeof why)) {
        cql_response_free(&resp);
        char msg[400];
        snprintf(msg, sizeof msg, "%s", why);
        schedule_retry(c, r, msg, hi);
        return;
    }
    if (resp.n_warnings)
        for (size_t i = 0; i < resp.n_warnings; i++)
            warn_throttled(c, "server warning from %s: %s", hs->name, resp.warnings[i]);
    if (h->opcode == CQL_OP_ERROR) {
        char msg[700];
        error_message(c, r, &resp, msg, sizeof msg);
        int32_t code = resp.error.code;
        if (code == CQL_ERR_UNPREPARED && r->stmt && r->reprepares < 5 &&
            (r->op == CQL_OP_EXECUTE || r->op == CQL_OP_BATCH)) {
            r->reprepares++;
            c->st.reprepares++;
            logf_(c, CQL_LOG_INFO, "%s: statement unprepared; re-preparing \"%s\"", hs->name,
                  r->stmt->query);
            req *p = req_new(c, K_INTERNAL, CQL_OP_PREPARE);
            cql_put_long_string(&p->part, r->stmt->query, strlen(r->stmt->query));
            p->stmt = r->stmt;
            p->pin = hi;
            p->parked = r;
            list_push_front(&c->ready, p, L_READY);
        } else if ((is_retryable_code(code) && (code != CQL_ERR_SERVER || r->attempts < 2)) ||
                   code == CQL_ERR_UNPREPARED) {
            /* a server error may be a bug that repeats: try twice more, no more */
            /* overloaded/bootstrapping: that node is the problem, try another */
            int avoid = code == CQL_ERR_OVERLOADED || code == CQL_ERR_IS_BOOTSTRAPPING ||
                                code == CQL_ERR_UNAVAILABLE
                            ? hi
                            : -1;
            schedule_retry(c, r, msg, avoid);
        } else {
            /* syntax, invalid, unauthorized, ...: retrying cannot help */
            r->err_code = code;
            complete(c, r, 0, msg);
        }
        cql_response_free(&resp);
        return;
    }
    if (h->opcode == CQL_OP_RESULT && resp.kind == CQL_RESULT_PREPARED) handle_prepared_result(c, r, &resp);
    if (r->kind == K_SYNC) {
        r->result.body = xmalloc(h->length ? h->length : 1);
        memcpy(r->result.body, body, h->length);
        cql_response_free(&resp);
        cql_response_decode(h, r->result.body, h->length, &r->result.r, why, sizeof why);
    } else {
        cql_response_free(&resp);
    }
    complete(c, r, 1, NULL);
}

/* ---- the loop -------------------------------------------------------------- */

static void expire(cql_client *c, int64_t now)
{
    while (c->inflight.head && c->inflight.head->deadline_ms <= now) {
        req *r = c->inflight.head;
        host *h = &c->hosts[r->host];
        c->st.timeouts++;
        char msg[300];
        snprintf(msg, sizeof msg, "no answer from %s within %d ms", h->name,
                 c->cfg.request_timeout_ms);
        if (h->conn) {
            h->conn->slots[r->stream] = ORPHAN;
            h->conn->orphans++;
        }
        int hi = r->host;
        r->host = -1;
        schedule_retry(c, r, msg, hi);
        if (h->conn && h->conn->orphans > h->conn->max_streams / 2)
            host_down(c, hi, "too many requests without an answer");
    }
    req *r = c->backoff.head;
    while (r) {
        req *next = r->next;
        if (r->retry_at_ms <= now) {
            list_remove(&c->backoff, r);
            list_push(&c->ready, r, L_READY);
        }
        r = next;
    }
}

static void flush_all(cql_client *c)
{
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (!h->conn || !cql_conn_has_output(h->conn)) continue;
        char err[300];
        if (cql_conn_flush(h->conn, err, sizeof err)) host_down(c, i, err);
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
            handle_response(c, i, &hd, body);
        host_down(c, i, err);
        return;
    }
    for (;;) {
        if (!h->conn) return;
        cql_header hd;
        const unsigned char *body;
        int rc = cql_conn_next(h->conn, &hd, &body, err, sizeof err);
        if (rc < 0) {
            host_down(c, i, err);
            return;
        }
        if (rc == 0) return;
        handle_response(c, i, &hd, body);
    }
}

/* One round: connect what is due, send what is ready, wait at most max_wait_ms
 * for the sockets, read and handle answers, expire timeouts. */
static void pump(cql_client *c, int max_wait_ms)
{
    int64_t now = mono_ms();
    if (c->ready.n || c->inflight.n || c->backoff.n) reconnect_due(c, now);
    expire(c, now);
    dispatch(c);
    flush_all(c);

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
        if (any_usable(c)) wait = 0;
    }
    if (wait < 0 || buffered) wait = 0;
    int rc = poll(pfd, (nfds_t)n, (int)wait);
    if (rc < 0 && errno != EINTR) logf_(c, CQL_LOG_WARN, "poll: %s", strerror(errno));
    for (int k = 0; k < n && rc >= 0; k++) {
        int i = idx[k];
        host *h = &c->hosts[i];
        if (!h->conn || h->conn->fd != pfd[k].fd) continue;
        if (pfd[k].revents & (POLLIN | POLLERR | POLLHUP) || cql_conn_has_buffered_input(h->conn))
            read_host(c, i);
        if (h->conn && (pfd[k].revents & POLLOUT)) {
            char err[300];
            if (cql_conn_flush(h->conn, err, sizeof err)) host_down(c, i, err);
        }
    }
    free(pfd);
    free(idx);
    now = mono_ms();
    expire(c, now);
    dispatch(c);
    flush_all(c);
}

/* Submits a synchronous request and drives I/O until it completes. */
static int run_sync(cql_client *c, req *r, cql_result *out, char *err, size_t errlen)
{
    list_push(&c->ready, r, L_READY);
    while (!r->done) pump(c, 200);
    int ok = r->ok;
    if (!ok) snprintf(err, errlen, "%s", r->error);
    if (ok && out) {
        *out = r->result;
        memset(&r->result, 0, sizeof r->result);
    }
    req_free(r);
    return ok ? 0 : -1;
}

/* A synchronous QUERY request (not yet queued). */
static req *query_req(cql_client *c, const char *cql, const cql_values *values,
                      uint16_t consistency)
{
    req *r = req_new(c, K_SYNC, CQL_OP_QUERY);
    cql_query_params qp = {.consistency = consistency, .values = values};
    buf tmp;
    buf_init(&tmp);
    cql_encode_query(&tmp, 0, cql, strlen(cql), &qp);
    buf_append(&r->part, tmp.data + CQL_HEADER_SIZE, tmp.len - CQL_HEADER_SIZE);
    buf_free(&tmp);
    return r;
}

/* ---- topology --------------------------------------------------------------- */

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
static int refresh_topology(cql_client *c, char *err, size_t errlen)
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
    req *r = query_req(c, "SELECT data_center, rack, tokens, partitioner FROM system.local "
                          "WHERE key='local'", NULL, CQL_CONSISTENCY_ONE);
    r->pin = ctl;
    if (run_sync(c, r, &local, err, errlen)) goto out;
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
        r = query_req(c, "SELECT peer, rpc_address, data_center, rack, tokens FROM system.peers",
                      NULL, CQL_CONSISTENCY_ONE);
        r->pin = ctl;
        if (run_sync(c, r, &peers, err, errlen)) goto out;
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
                logf_(c, CQL_LOG_INFO, "discovered node %s", c->hosts[hi].name);
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
                logf_(c, CQL_LOG_INFO, "node %s left the cluster", c->hosts[i].name);
                c->hosts[i].removed = 1;
                host_down(c, i, "removed from the cluster");
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
static void connect_all(cql_client *c)
{
    for (int i = 0; i < c->n_hosts; i++) {
        host *h = &c->hosts[i];
        if (h->conn || h->removed || h->remote) continue;
        char err[600];
        int fatal;
        if (host_connect(c, i, &fatal, err, sizeof err))
            logf_(c, CQL_LOG_WARN, "cannot connect to %s (will retry): %s", h->name,
                  after_name(h, err));
    }
}

static void maybe_refresh(cql_client *c)
{
    if (!c->refresh_pending || c->in_refresh) return;
    c->refresh_pending = 0;
    char err[600];
    if (refresh_topology(c, err, sizeof err))
        logf_(c, CQL_LOG_WARN, "refreshing the node list failed: %s", err);
    else
        connect_all(c);
}

static void send_register(cql_client *c, int hi)
{
    req *r = req_new(c, K_INTERNAL, CQL_OP_REGISTER);
    const char *ev[] = {"TOPOLOGY_CHANGE", "STATUS_CHANGE"};
    cql_put_string_list(&r->part, ev, 2);
    r->pin = hi;
    list_push(&c->ready, r, L_READY);
}

static void prepare_all_on(cql_client *c, int hi)
{
    for (cql_prepared *p = c->prepared; p; p = p->next) {
        req *r = req_new(c, K_INTERNAL, CQL_OP_PREPARE);
        cql_put_long_string(&r->part, p->query, strlen(p->query));
        r->stmt = p;
        r->pin = hi;
        list_push(&c->ready, r, L_READY);
    }
}

/* ---- public ---------------------------------------------------------------- */

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

/* Splits "h1[:p],[v6]:p,h2" and adds every address each name resolves to. */
static int add_contact_points(cql_client *c, char *err, size_t errlen)
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
            logf_(c, CQL_LOG_WARN, "contact point %s: %s", hostpart, gai_strerror(gai));
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
    if (add_contact_points(c, err, errlen)) goto fail;

    /* the first contact point that answers becomes the control connection */
    char last[600] = "";
    for (int i = 0; i < c->n_hosts && c->control < 0; i++) {
        int fatal = 0;
        if (c->cfg.cancel && *c->cfg.cancel) { /* each attempt may take connect_timeout_ms */
            snprintf(err, errlen, "stopped while connecting to the contact points of '%s'%s%s",
                     c->contact_points, last[0] ? "; last error: " : "", last);
            goto fail;
        }
        if (host_connect(c, i, &fatal, last, sizeof last) == 0) break;
        logf_(c, CQL_LOG_WARN, "contact point %s: %s", c->hosts[i].name,
              after_name(&c->hosts[i], last));
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
    if (refresh_topology(c, err, errlen)) goto fail;
    /* drop contact points of other data centers */
    for (int i = 0; i < c->n_hosts; i++)
        if (c->hosts[i].dc[0] && c->local_dc[0] && strcmp(c->hosts[i].dc, c->local_dc) != 0) {
            c->hosts[i].remote = 1;
            host_down(c, i, "not in the local data center");
        }
    connect_all(c);
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
        req_free(r);
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
    if (c->password) memset(c->password, 0, strlen(c->password));
    free(c->username);
    free(c->password);
    free(c->local_dc_cfg);
    free(c->tls_ca);
    free(c->tls_cert);
    free(c->tls_key);
    free(c);
}

int cql_client_query(cql_client *c, const char *cql, const cql_values *values,
                     uint16_t consistency, cql_result *out, char *err, size_t errlen)
{
    maybe_refresh(c);
    req *r = query_req(c, cql, values, consistency);
    if (out) memset(out, 0, sizeof *out);
    return run_sync(c, r, out, err, errlen);
}

cql_prepared *cql_client_prepare(cql_client *c, const char *cql, char *err, size_t errlen)
{
    maybe_refresh(c);
    req *r = req_new(c, K_SYNC, CQL_OP_PREPARE);
    cql_put_long_string(&r->part, cql, strlen(cql));
    cql_result res;
    memset(&res, 0, sizeof res);
    list_push(&c->ready, r, L_READY);
    while (!r->done) pump(c, 200);
    int answered_by = r->host;
    if (!r->ok) {
        snprintf(err, errlen, "%s", r->error);
        req_free(r);
        return NULL;
    }
    res = r->result;
    memset(&r->result, 0, sizeof r->result);
    req_free(r);
    if (res.r.h.opcode != CQL_OP_RESULT || res.r.kind != CQL_RESULT_PREPARED) {
        snprintf(err, errlen, "PREPARE answered with something else than a prepared result");
        cql_result_free(&res);
        return NULL;
    }
    cql_prepared *p = xcalloc(1, sizeof *p);
    p->query = xstrdup(cql);
    p->id_len = res.r.prepared_id_len;
    p->id = xmalloc(p->id_len ? p->id_len : 1);
    memcpy(p->id, res.r.prepared_id, p->id_len);
    p->res = res;
    p->next = c->prepared;
    c->prepared = p;
    /* and on every other connected node, so that the first writes there do
     * not all come back UNPREPARED */
    for (int i = 0; i < c->n_hosts; i++) {
        if (!c->hosts[i].conn || i == answered_by) continue;
        req *q = req_new(c, K_INTERNAL, CQL_OP_PREPARE);
        cql_put_long_string(&q->part, cql, strlen(cql));
        q->stmt = p;
        q->pin = i;
        list_push(&c->ready, q, L_READY);
    }
    return p;
}

const cql_metadata *cql_prepared_params(const cql_prepared *p) { return &p->res.r.meta; }

int cql_prepared_token(const cql_prepared *p, const cql_values *values, int64_t *token)
{
    const cql_metadata *m = &p->res.r.meta;
    if (m->n_pk <= 0 || !values) return 0;
    /* locate each bound value */
    reader rd;
    reader_init(&rd, values->b.data, values->b.len);
    enum { MAXV = 64 };
    const unsigned char *vp[MAXV];
    int32_t vl[MAXV];
    uint16_t nv = values->n < MAXV ? values->n : MAXV;
    for (uint16_t i = 0; i < nv; i++)
        if (cql_get_bytes(&rd, &vp[i], &vl[i])) return 0;
    if (m->n_pk == 1) {
        uint16_t k = m->pk[0];
        if (k >= nv || vl[k] < 0) return 0;
        *token = cql_murmur3_token(vp[k], (size_t)vl[k]);
        return 1;
    }
    /* composite partition key: <len:2><bytes><0> for each component */
    buf key;
    buf_init(&key);
    for (int32_t i = 0; i < m->n_pk; i++) {
        uint16_t k = m->pk[i];
        if (k >= nv || vl[k] < 0 || vl[k] > 0xffff) {
            buf_free(&key);
            return 0;
        }
        cql_put_short(&key, (uint16_t)vl[k]);
        buf_append(&key, vp[k], (size_t)vl[k]);
        buf_append_byte(&key, 0);
    }
    *token = cql_murmur3_token(key.data, key.len);
    buf_free(&key);
    return 1;
}

/* The caller asked to stop waiting (see cql_client_config.cancel). Requests
 * a healthy cluster is about to answer get RETRY_STOP_GRACE_MS: a job stopping
 * on SIGTERM still makes its final commit; only an outage is given up on. */
static int cancelled(cql_client *c, char *err, size_t errlen)
{
    if (c->cfg.waiting) c->cfg.waiting(c->cfg.waiting_ud);
    if (!retry_stop_grace_over(&c->stop)) return 0;
    snprintf(err, errlen, "interrupted with %zu request%s not acknowledged %.1f s after the job was "
             "asked to stop", c->outstanding, c->outstanding == 1 ? "" : "s",
             (double)(mono_ms() - c->stop.stop_seen_ms) / 1000);
    return 1;
}

static int submit_wait_room(cql_client *c, char *err, size_t errlen)
{
    maybe_refresh(c);
    if (c->fatal) {
        snprintf(err, errlen, "%s", c->fatal_error);
        return -1;
    }
    while (c->outstanding >= (size_t)c->cfg.max_in_flight) {
        if (cancelled(c, err, errlen)) return -1;
        pump(c, 200);
        if (c->fatal) {
            snprintf(err, errlen, "%s", c->fatal_error);
            return -1;
        }
    }
    return 0;
}

int cql_client_execute(cql_client *c, cql_prepared *p, const cql_values *values,
                       uint16_t consistency, int64_t timestamp_us, char *err, size_t errlen)
{
    if (submit_wait_room(c, err, errlen)) return -1;
    req *r = req_new(c, K_USER, CQL_OP_EXECUTE);
    r->stmt = p;
    cql_query_params qp = {.consistency = consistency,
                           .values = values,
                           .has_timestamp = timestamp_us >= 0,
                           .timestamp = timestamp_us};
    /* the params after the id: reuse the frame encoder, keep its tail */
    buf tmp;
    buf_init(&tmp);
    cql_encode_execute(&tmp, 0, p->id, p->id_len, &qp);
    size_t skip = CQL_HEADER_SIZE + 2 + p->id_len;
    buf_append(&r->part, tmp.data + skip, tmp.len - skip);
    buf_free(&tmp);
    r->has_token = cql_prepared_token(p, values, &r->token);
    list_push(&c->ready, r, L_READY);
    /* send now rather than at the next wait: keeps the pipe full */
    dispatch(c);
    flush_all(c);
    return 0;
}

int cql_client_batch(cql_client *c, cql_prepared *p, const cql_values *const *items, size_t n,
                     uint8_t type, uint16_t consistency, int64_t timestamp_us, char *err,
                     size_t errlen)
{
    if (n == 0) return 0;
    if (n > 0xffff) {
        snprintf(err, errlen, "a batch holds at most 65535 statements");
        return -1;
    }
    if (submit_wait_room(c, err, errlen)) return -1;
    req *r = req_new(c, K_USER, CQL_OP_BATCH);
    r->stmt = p;
    r->batch_type = type;
    r->n_items = (uint16_t)n;
    r->item_off = xcalloc(n + 1, sizeof *r->item_off);
    for (size_t i = 0; i < n; i++) {
        r->item_off[i] = r->part.len;
        cql_put_short(&r->part, items[i]->n);
        buf_append(&r->part, items[i]->b.data, items[i]->b.len);
    }
    r->item_off[n] = r->part.len;
    cql_put_short(&r->tail, consistency);
    cql_put_byte(&r->tail, timestamp_us >= 0 ? CQL_QFLAG_DEFAULT_TIMESTAMP : 0);
    if (timestamp_us >= 0) cql_put_long(&r->tail, timestamp_us);
    r->has_token = cql_prepared_token(p, items[0], &r->token);
    list_push(&c->ready, r, L_READY);
    dispatch(c);
    flush_all(c);
    return 0;
}

int cql_client_wait(cql_client *c, char *err, size_t errlen)
{
    while (c->outstanding > 0) {
        if (cancelled(c, err, errlen)) return -1;
        pump(c, 200);
    }
    /* internal requests (re-prepares, REGISTER) finish in the background */
    int failed = c->failed_since_wait;
    c->failed_since_wait = 0;
    if (failed) {
        snprintf(err, errlen, "%d request%s failed; first: %s", failed, failed == 1 ? "" : "s",
                 c->first_error);
        return -1;
    }
    maybe_refresh(c);
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
        pump(c, 200);
    }
}

int cql_client_route(cql_client *c, int64_t token)
{
    req probe;
    memset(&probe, 0, sizeof probe);
    probe.pin = probe.avoid = -1;
    probe.has_token = 1;
    probe.token = token;
    int save = c->rr;
    int h = pick_host(c, &probe);
    c->rr = save;
    return h;
}

void cql_client_get_stats(const cql_client *c, cql_client_stats *out)
{
    *out = c->st;
    out->hosts = c->n_hosts;
    out->hosts_up = 0;
    for (int i = 0; i < c->n_hosts; i++) out->hosts_up += c->hosts[i].conn != NULL;
}

const char *cql_client_host_name(const cql_client *c, int i, uint64_t *requests)
{
    if (i < 0 || i >= c->n_hosts) return NULL;
    if (requests) *requests = c->hosts[i].n_requests;
    return c->hosts[i].name;
}
