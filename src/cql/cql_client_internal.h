/*
 * cql_client_internal.h - what the pieces of the CQL client share: the
 * client, its nodes, its requests. Internal to the cql library; callers see
 * cql_client.h.
 *
 * The client is one object split by concern so that each file reads alone:
 *   cql_client.c     the client's life (connect, free, stats), its log, and
 *                    the poll() loop that drives every connection
 *   cql_topology.c   the cluster: nodes and their connections, system.local
 *                    and system.peers, the token ring, which node a request
 *                    goes to, server events, schema agreement
 *   cql_requests.c   a request's life: queued, dispatched, answered,
 *                    retried or failed; prepared statements, executes and
 *                    batches (the public calls that submit them)
 * Everything runs on the caller's thread, inside the public calls.
 */
#ifndef SESSIONIZER_CQL_CLIENT_INTERNAL_H
#define SESSIONIZER_CQL_CLIENT_INTERNAL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/buf.h"
#include "common/retry.h"
#include "cql/cql_client.h"
#include "cql/cql_conn.h"

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

static inline int host_up(const host *h) { return h->conn != NULL; }

/* cql_client.c */
__attribute__((format(printf, 3, 4)))
void cql_logf(cql_client *c, int level, const char *fmt, ...);
__attribute__((format(printf, 2, 3)))
void cql_warn_throttled(cql_client *c, const char *fmt, ...);
void cql_flush_all(cql_client *c);
void cql_pump(cql_client *c, int max_wait_ms);

/* cql_topology.c */
const char *cql_after_name(const host *h, const char *msg);
void cql_host_down(cql_client *c, int hi, const char *reason);
int cql_host_connect(cql_client *c, int hi, int *fatal, char *err, size_t errlen);
void cql_reconnect_due(cql_client *c, int64_t now);
int cql_pick_host(cql_client *c, const req *r);
int cql_any_usable(const cql_client *c);
void cql_handle_event(cql_client *c, const cql_response *resp);
int cql_refresh_topology(cql_client *c, char *err, size_t errlen);
void cql_connect_all(cql_client *c);
void cql_maybe_refresh(cql_client *c);
int cql_add_contact_points(cql_client *c, char *err, size_t errlen);

/* cql_requests.c */
void cql_list_push(reqlist *l, req *r, int which);
req *cql_req_new(cql_client *c, int kind, uint8_t op);
void cql_req_free(req *r);
void cql_dispatch(cql_client *c);
void cql_requeue_inflight_of(cql_client *c, int hi, const char *reason);
void cql_handle_response(cql_client *c, int hi, const cql_header *h, const unsigned char *body);
void cql_expire(cql_client *c, int64_t now);
int cql_run_sync(cql_client *c, req *r, cql_result *out, char *err, size_t errlen);
req *cql_query_req(cql_client *c, const char *cql, const cql_values *values,
                   uint16_t consistency);
void cql_prepare_all_on(cql_client *c, int hi);

#endif
