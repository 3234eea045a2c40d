/*
 * cql_requests.c - a CQL request's life: queued, dispatched to a node under
 * a stream id, answered, retried with backoff or failed for good; prepared
 * statements (and re-preparing on UNPREPARED), executes and batches, and the
 * public calls that submit them and wait for them.
 *
 * It exists apart from the topology (cql_topology.c) because it is the policy
 * half of the client: what is retried (write timeouts, Unavailable,
 * Overloaded, Is_bootstrapping, client timeouts, lost connections), where
 * (another node when that one was the problem), for how long (the retry
 * policy's give-up), and what fails at once with the server's message
 * (credentials redacted). Every request is treated as idempotent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/retry.h"
#include "common/xalloc.h"
#include "cql/cql_client_internal.h"
#include "cql/cql_conn.h"
#include "cql/murmur3.h"

/* The owner of an orphaned stream id (its request timed out). */
static int orphan_marker;
#define ORPHAN ((void *)&orphan_marker)

/* ---- requests and their lists -------------------------------------------- */

void cql_list_push(reqlist *l, req *r, int which)
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

req *cql_req_new(cql_client *c, int kind, uint8_t op)
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

void cql_req_free(req *r)
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

/* ---- completion ---------------------------------------------------------- */

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
                cql_logf(c, CQL_LOG_ERROR, "%s", r->error);
            }
        }
        cql_req_free(r);
        break;
    case K_SYNC: break; /* the waiter reads and frees it */
    default:
        if (!ok) cql_logf(c, CQL_LOG_WARN, "%s", r->error);
        cql_req_free(r);
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
    cql_warn_throttled(c, "retrying %s in %lld ms (attempt %d): %s", what(r), (long long)delay,
                       r->attempts + 1, reason);
    cql_list_push(&c->backoff, r, L_BACKOFF);
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

/* ---- encoding and dispatch ----------------------------------------------- */

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

void cql_dispatch(cql_client *c)
{
    buf frame;
    buf_init(&frame);
    req *r = c->ready.head;
    int64_t now = mono_ms();
    while (r) {
        req *next = r->next;
        int hi = cql_pick_host(c, r);
        if (hi < 0) {
            if (r->pin >= 0 && !host_up(&c->hosts[r->pin])) {
                char msg[300];
                snprintf(msg, sizeof msg, "node %s is down", c->hosts[r->pin].name);
                r->pin = -1;
                schedule_retry(c, r, msg, -1);
            } else if (!cql_any_usable(c)) {
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
        cql_list_push(&c->inflight, r, L_INFLIGHT);
        r = next;
    }
    buf_free(&frame);
}

/* Every request in flight on host hi goes back for a retry elsewhere. */
void cql_requeue_inflight_of(cql_client *c, int hi, const char *reason)
{
    char msg[700];
    snprintf(msg, sizeof msg, "connection to %s lost: %s", c->hosts[hi].name,
             cql_after_name(&c->hosts[hi], reason));
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

/* ---- responses and timeouts ---------------------------------------------- */

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

static void handle_prepared_result(cql_client *c, req *r, const cql_response *resp)
{
    /* A re-prepare: the id may differ if the node changed; keep the newest. */
    cql_prepared *p = r->stmt;
    if (p && resp->kind == CQL_RESULT_PREPARED &&
        (resp->prepared_id_len != p->id_len || memcmp(resp->prepared_id, p->id, p->id_len) != 0)) {
        cql_logf(c, CQL_LOG_INFO, "prepared id of \"%s\" changed", p->query);
        free(p->id);
        p->id = xmalloc(resp->prepared_id_len ? resp->prepared_id_len : 1);
        memcpy(p->id, resp->prepared_id, resp->prepared_id_len);
        p->id_len = resp->prepared_id_len;
    }
}

void cql_handle_response(cql_client *c, int hi, const cql_header *h, const unsigned char *body)
{
    host *hs = &c->hosts[hi];
    cql_response resp;
    char why[300];
    if (h->stream < 0) {
        if (h->opcode == CQL_OP_EVENT && cql_response_decode(h, body, h->length, &resp, why, sizeof why) == 0)
            cql_handle_event(c, &resp);
        cql_response_free(&resp);
        return;
    }
    void *owner = cql_conn_stream_owner(hs->conn, h->stream);
    if (!owner) {
        cql_logf(c, CQL_LOG_DEBUG, "%s: answer on unused stream %d ignored", hs->name, h->stream);
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
            cql_warn_throttled(c, "server warning from %s: %s", hs->name, resp.warnings[i]);
    if (h->opcode == CQL_OP_ERROR) {
        char msg[700];
        error_message(c, r, &resp, msg, sizeof msg);
        int32_t code = resp.error.code;
        if (code == CQL_ERR_UNPREPARED && r->stmt && r->reprepares < 5 &&
            (r->op == CQL_OP_EXECUTE || r->op == CQL_OP_BATCH)) {
            r->reprepares++;
            c->st.reprepares++;
            cql_logf(c, CQL_LOG_INFO, "%s: statement unprepared; re-preparing \"%s\"", hs->name,
                     r->stmt->query);
            req *p = cql_req_new(c, K_INTERNAL, CQL_OP_PREPARE);
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

void cql_expire(cql_client *c, int64_t now)
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
            cql_host_down(c, hi, "too many requests without an answer");
    }
    req *r = c->backoff.head;
    while (r) {
        req *next = r->next;
        if (r->retry_at_ms <= now) {
            list_remove(&c->backoff, r);
            cql_list_push(&c->ready, r, L_READY);
        }
        r = next;
    }
}

/* ---- synchronous requests, prepared statements --------------------------- */

/* Submits a synchronous request and drives I/O until it completes. */
int cql_run_sync(cql_client *c, req *r, cql_result *out, char *err, size_t errlen)
{
    cql_list_push(&c->ready, r, L_READY);
    while (!r->done) cql_pump(c, 200);
    int ok = r->ok;
    if (!ok) snprintf(err, errlen, "%s", r->error);
    if (ok && out) {
        *out = r->result;
        memset(&r->result, 0, sizeof r->result);
    }
    cql_req_free(r);
    return ok ? 0 : -1;
}

/* A synchronous QUERY request (not yet queued). */
req *cql_query_req(cql_client *c, const char *cql, const cql_values *values,
                   uint16_t consistency)
{
    req *r = cql_req_new(c, K_SYNC, CQL_OP_QUERY);
    cql_query_params qp = {.consistency = consistency, .values = values};
    buf tmp;
    buf_init(&tmp);
    cql_encode_query(&tmp, 0, cql, strlen(cql), &qp);
    buf_append(&r->part, tmp.data + CQL_HEADER_SIZE, tmp.len - CQL_HEADER_SIZE);
    buf_free(&tmp);
    return r;
}

void cql_prepare_all_on(cql_client *c, int hi)
{
    for (cql_prepared *p = c->prepared; p; p = p->next) {
        req *r = cql_req_new(c, K_INTERNAL, CQL_OP_PREPARE);
        cql_put_long_string(&r->part, p->query, strlen(p->query));
        r->stmt = p;
        r->pin = hi;
        cql_list_push(&c->ready, r, L_READY);
    }
}

/* ---- public -------------------------------------------------------------- */

int cql_client_query(cql_client *c, const char *cql, const cql_values *values,
                     uint16_t consistency, cql_result *out, char *err, size_t errlen)
{
    cql_maybe_refresh(c);
    req *r = cql_query_req(c, cql, values, consistency);
    if (out) memset(out, 0, sizeof *out);
    return cql_run_sync(c, r, out, err, errlen);
}

cql_prepared *cql_client_prepare(cql_client *c, const char *cql, char *err, size_t errlen)
{
    cql_maybe_refresh(c);
    req *r = cql_req_new(c, K_SYNC, CQL_OP_PREPARE);
    cql_put_long_string(&r->part, cql, strlen(cql));
    cql_result res;
    memset(&res, 0, sizeof res);
    cql_list_push(&c->ready, r, L_READY);
    while (!r->done) cql_pump(c, 200);
    int answered_by = r->host;
    if (!r->ok) {
        snprintf(err, errlen, "%s", r->error);
        cql_req_free(r);
        return NULL;
    }
    res = r->result;
    memset(&r->result, 0, sizeof r->result);
    cql_req_free(r);
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
        req *q = cql_req_new(c, K_INTERNAL, CQL_OP_PREPARE);
        cql_put_long_string(&q->part, cql, strlen(cql));
        q->stmt = p;
        q->pin = i;
        cql_list_push(&c->ready, q, L_READY);
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
    cql_maybe_refresh(c);
    if (c->fatal) {
        snprintf(err, errlen, "%s", c->fatal_error);
        return -1;
    }
    while (c->outstanding >= (size_t)c->cfg.max_in_flight) {
        if (cancelled(c, err, errlen)) return -1;
        cql_pump(c, 200);
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
    req *r = cql_req_new(c, K_USER, CQL_OP_EXECUTE);
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
    cql_list_push(&c->ready, r, L_READY);
    /* send now rather than at the next wait: keeps the pipe full */
    cql_dispatch(c);
    cql_flush_all(c);
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
    req *r = cql_req_new(c, K_USER, CQL_OP_BATCH);
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
    cql_list_push(&c->ready, r, L_READY);
    cql_dispatch(c);
    cql_flush_all(c);
    return 0;
}

int cql_client_wait(cql_client *c, char *err, size_t errlen)
{
    while (c->outstanding > 0) {
        if (cancelled(c, err, errlen)) return -1;
        cql_pump(c, 200);
    }
    /* internal requests (re-prepares, REGISTER) finish in the background */
    int failed = c->failed_since_wait;
    c->failed_since_wait = 0;
    if (failed) {
        snprintf(err, errlen, "%d request%s failed; first: %s", failed, failed == 1 ? "" : "s",
                 c->first_error);
        return -1;
    }
    cql_maybe_refresh(c);
    return 0;
}
