/*
 * cql_conn.h - one CQL connection: a nonblocking socket, optional TLS, the
 * startup/authentication handshake, and the stream-id table.
 *
 * Internal to the cql library (cql_client.c drives it). A connection does no
 * policy: it neither retries nor routes. It moves bytes, allocates stream ids,
 * and splits the input into frames; the client decides what a response means.
 *
 * The handshake (TCP connect, TLS, STARTUP, AUTHENTICATE/AUTH_RESPONSE/
 * AUTH_SUCCESS) is done synchronously, bounded by the connect timeout, so that
 * a failure comes back as one clear message from cql_conn_open. After it the
 * socket is only driven through poll() by the client, with many requests in
 * flight.
 */
#ifndef SESSIONIZER_CQL_CONN_H
#define SESSIONIZER_CQL_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/buf.h"
#include "cql/cql_proto.h"

typedef struct cql_tls cql_tls;

/* An OpenSSL client context. verify != 0 checks the server certificate
 * against ca_file (or the system store when NULL) and the host name or IP the
 * connection was opened to. cert/key: optional client certificate. */
cql_tls *cql_tls_new(const char *ca_file, const char *cert_file, const char *key_file,
                     int verify, char *err, size_t errlen);
void cql_tls_free(cql_tls *t);

typedef struct cql_conn_opts {
    cql_tls *tls;            /* NULL: plain TCP */
    const char *server_name; /* what the certificate must name (host or IP) */
    const char *username;    /* NULL: no credentials */
    const char *password;
    int connect_timeout_ms;  /* whole handshake */
    int max_streams;         /* stream ids used, 1..32768 */
} cql_conn_opts;

typedef struct cql_conn {
    int fd;
    void *ssl;               /* SSL *, or NULL */
    char name[80];           /* "ip:port" for messages */
    buf wbuf;                /* bytes queued for the socket */
    size_t wpos;
    buf rbuf;                /* bytes received, not yet consumed */
    size_t rpos;
    void **slots;            /* stream id -> owner, NULL when free */
    int16_t *free_ids;
    int n_free;
    int max_streams;
    int in_flight;           /* allocated stream ids */
    int orphans;             /* ids whose request timed out: freed when answered */
    char authenticator[128];
} cql_conn;

/* Returns a ready connection or NULL with a message in err (never containing
 * the credentials). *fatal is set to 1 when retrying cannot help: credentials
 * rejected or missing, certificate verification failed, protocol mismatch. */
cql_conn *cql_conn_open(const struct sockaddr *sa, socklen_t salen, const cql_conn_opts *o,
                        int *fatal, char *err, size_t errlen);
void cql_conn_free(cql_conn *c);

/* Stream ids: alloc returns -1 when all are in use. */
int cql_conn_alloc_stream(cql_conn *c, void *owner);
void *cql_conn_stream_owner(const cql_conn *c, int16_t id);
void cql_conn_release_stream(cql_conn *c, int16_t id);

/* Queues a frame; cql_conn_flush writes what the socket takes now. */
void cql_conn_queue(cql_conn *c, const void *frame, size_t len);
int cql_conn_flush(cql_conn *c, char *err, size_t errlen);
/* Reads what the socket has now. Invalidates bodies returned by _next. */
int cql_conn_fill(cql_conn *c, char *err, size_t errlen);
/* 1: a frame (body valid until the next fill), 0: none complete, -1: error. */
int cql_conn_next(cql_conn *c, cql_header *h, const unsigned char **body, char *err,
                  size_t errlen);
/* POLLIN, plus POLLOUT while there is output pending. */
short cql_conn_poll_events(const cql_conn *c);
int cql_conn_has_output(const cql_conn *c);
/* Data that TLS has decrypted but not handed out yet (poll won't see it). */
int cql_conn_has_buffered_input(const cql_conn *c);

/* Copies msg into out with every occurrence of the non-empty secrets
 * replaced by "<redacted>". */
void cql_redact(char *out, size_t outlen, const char *msg, const char *secret1,
                const char *secret2);

#endif
