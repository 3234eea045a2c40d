/*
 * cql_client.h - a CQL native protocol v4 client for Cassandra and ScyllaDB.
 *
 * The public face of the cql library (src/cql/), written for a writer that
 * pushes many idempotent statements and needs to know when all of them are
 * acknowledged (the sessionizer's cql sink), and small enough to read:
 *
 *  - several contact points; the other nodes are discovered from
 *    system.peers, and only the local data center's are used;
 *  - one connection per node, many requests in flight over stream ids,
 *    driven by poll() from the caller's thread (no threads of its own);
 *  - token-aware routing (Murmur3Partitioner) for prepared statements whose
 *    partition key is bound, round-robin otherwise;
 *  - retries with exponential backoff and jitter for write timeouts,
 *    Unavailable, Overloaded, Is_bootstrapping, client-side timeouts and lost
 *    connections; UNPREPARED re-prepares on that node and resends; syntax,
 *    invalid, unauthorized and credential errors fail at once, with the
 *    server's message (credentials redacted);
 *  - optional TLS with certificate verification (OpenSSL).
 *
 * Every request is treated as idempotent and may be sent more than once:
 * only use it for statements where that is true (upserts, IF NOT EXISTS DDL,
 * reads). See docs/cql.md.
 */
#ifndef SESSIONIZER_CQL_CLIENT_H
#define SESSIONIZER_CQL_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "cql/cql_proto.h"

typedef struct cql_client cql_client;
typedef struct cql_prepared cql_prepared;

enum { CQL_LOG_ERROR = 0, CQL_LOG_WARN = 1, CQL_LOG_INFO = 2, CQL_LOG_DEBUG = 3 };

typedef struct cql_client_config {
    const char *contact_points; /* "host[:port][,host[:port]...]" */
    int default_port;           /* 9042 */
    const char *username;       /* NULL: no authentication */
    const char *password;
    int tls;                    /* 0/1 */
    const char *tls_ca;         /* PEM file; NULL: system store */
    const char *tls_cert;       /* optional client certificate and key */
    const char *tls_key;
    int tls_verify;             /* 1: verify certificate and host name/IP */
    int connect_timeout_ms;     /* 5000 */
    int request_timeout_ms;     /* 12000, per attempt */
    int max_in_flight;          /* 512: outstanding requests before submit waits */
    int max_streams_per_conn;   /* 2048 */
    int retry_base_ms;          /* 50 */
    int retry_max_ms;           /* 5000 */
    int retry_timeout_ms;       /* 300000: give up on a request after; 0: never */
    int discover_peers;         /* 1 */
    int token_aware;            /* 1 */
    const char *local_dc;       /* NULL: the data center of the first node reached */
    void (*log)(void *ud, int level, const char *msg); /* NULL: WARN and worse to stderr */
    void *log_ud;
    /* When set (a signal handler's flag): cql_client_wait and a submit
     * waiting for room give up 2 s later (requests a healthy cluster answers
     * complete first) with an "interrupted" error, leaving the requests
     * unacknowledged. NULL: never. */
    volatile sig_atomic_t *cancel;
    /* Called at least every 200 ms while a call waits (for room, for
     * answers): the caller's sign of life and chance to look at the stats. */
    void (*waiting)(void *ud);
    void *waiting_ud;
} cql_client_config;

void cql_client_config_defaults(cql_client_config *cfg);

/* Connects to the first reachable contact point, discovers the other nodes
 * and connects to them. NULL with a message in err when no node can be used,
 * at once when the failure is one retrying cannot fix (bad credentials,
 * certificate verification). */
cql_client *cql_client_connect(const cql_client_config *cfg, char *err, size_t errlen);
void cql_client_free(cql_client *c);

/* A response kept by the caller; free with cql_result_free. */
typedef struct cql_result {
    cql_response r;
    unsigned char *body;
} cql_result;
void cql_result_free(cql_result *res);

/* Runs one statement and waits for it (retrying transient failures).
 * values may be NULL. out may be NULL; otherwise it receives the RESULT. */
int cql_client_query(cql_client *c, const char *cql, const cql_values *values,
                     uint16_t consistency, cql_result *out, char *err, size_t errlen);

/* Prepares on every connected node (and on nodes that connect later). */
cql_prepared *cql_client_prepare(cql_client *c, const char *cql, char *err, size_t errlen);
/* The bind markers' metadata (names, types, partition key indexes). */
const cql_metadata *cql_prepared_params(const cql_prepared *p);

/* The Murmur3 token of the partition key bound in values; 0 when the
 * statement's partition key is not fully bound. */
int cql_prepared_token(const cql_prepared *p, const cql_values *values, int64_t *token);

/* Queues an EXECUTE (values are copied) and returns at once unless
 * max_in_flight requests are outstanding, in which case it first drives I/O
 * until one completes. timestamp_us >= 0 sets the write timestamp, which
 * then stays the same across retries. Returns -1 only when an earlier request
 * has already failed for good (the message is in err). */
int cql_client_execute(cql_client *c, cql_prepared *p, const cql_values *values,
                       uint16_t consistency, int64_t timestamp_us, char *err, size_t errlen);
/* Queues one BATCH of n executions of p (type CQL_BATCH_*), routed by the
 * token of items[0]. */
int cql_client_batch(cql_client *c, cql_prepared *p, const cql_values *const *items, size_t n,
                     uint8_t type, uint16_t consistency, int64_t timestamp_us, char *err,
                     size_t errlen);
/* Drives I/O until nothing is outstanding. Returns 0 only when every request
 * queued since the previous wait succeeded; otherwise -1 with the first error. */
int cql_client_wait(cql_client *c, char *err, size_t errlen);

/* Waits (at most timeout_ms) until every node reports the same
 * schema_version; returns 0 when they agree, 1 on timeout. */
int cql_client_wait_schema_agreement(cql_client *c, int timeout_ms, char *err, size_t errlen);

/* The node a request with this token would be sent to (-1: none up);
 * groups writes by node for batching. */
int cql_client_route(cql_client *c, int64_t token);

typedef struct cql_client_stats {
    uint64_t requests;   /* frames sent for user requests, retries included */
    uint64_t completed;  /* user requests finished OK */
    uint64_t failed;     /* user requests that failed for good */
    uint64_t retries;
    uint64_t timeouts;   /* client-side request timeouts */
    uint64_t reprepares; /* UNPREPARED answered by re-preparing */
    uint64_t reconnects; /* connections (re)opened after the first */
    int hosts;           /* known nodes */
    int hosts_up;        /* connected */
    int token_aware;     /* the ring is known and used */
} cql_client_stats;
void cql_client_get_stats(const cql_client *c, cql_client_stats *out);
/* "ip:port" of host i (0 <= i < stats.hosts) and its request count. */
const char *cql_client_host_name(const cql_client *c, int i, uint64_t *requests);

#endif
