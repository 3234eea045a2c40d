/*
 * cql_conn.c - one CQL connection: socket, TLS, handshake, stream ids
 * (see cql_conn.h).
 *
 * TLS is OpenSSL over the same nonblocking socket: SSL_read/SSL_write may ask
 * for the other direction (WANT_READ/WANT_WRITE), so the client polls for
 * input always and for output while anything is pending, and on any event
 * tries both; partial writes and a moving write buffer are allowed so that
 * the output queue can grow while a record is half sent.
 */
#include "cql/cql_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/xalloc.h"

struct cql_tls {
    SSL_CTX *ctx;
    int verify;
};

void cql_redact(char *out, size_t outlen, const char *msg, const char *s1, const char *s2)
{
    buf b;
    buf_init(&b);
    const char *p = msg;
    while (*p) {
        size_t n1 = s1 && *s1 && strncmp(p, s1, strlen(s1)) == 0 ? strlen(s1) : 0;
        size_t n2 = s2 && *s2 && strncmp(p, s2, strlen(s2)) == 0 ? strlen(s2) : 0;
        size_t n = n1 > n2 ? n1 : n2;
        if (n) {
            buf_append_str(&b, "<redacted>");
            p += n;
        } else {
            buf_append_byte(&b, (unsigned char)*p++);
        }
    }
    snprintf(out, outlen, "%.*s", (int)b.len, b.data ? (const char *)b.data : "");
    buf_free(&b);
}

/* The first OpenSSL error on this thread's queue, as text ("" when none). */
static const char *ssl_error_text(char *tmp, size_t tmplen)
{
    unsigned long e = ERR_get_error();
    if (!e) return "";
    ERR_error_string_n(e, tmp, tmplen);
    ERR_clear_error();
    return tmp;
}

cql_tls *cql_tls_new(const char *ca_file, const char *cert_file, const char *key_file,
                     int verify, char *err, size_t errlen)
{
    char tmp[256];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context: %s", ssl_error_text(tmp, sizeof tmp));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (verify) {
        int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            snprintf(err, errlen, "TLS: cannot load CA certificates from %s: %s",
                     ca_file ? ca_file : "the system store", ssl_error_text(tmp, sizeof tmp));
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (cert_file || key_file) {
        if (!cert_file || !key_file ||
            SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(err, errlen, "TLS: cannot use the client certificate %s with key %s: %s",
                     cert_file ? cert_file : "(none)", key_file ? key_file : "(none)",
                     ssl_error_text(tmp, sizeof tmp));
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    cql_tls *t = xcalloc(1, sizeof *t);
    t->ctx = ctx;
    t->verify = verify;
    return t;
}

void cql_tls_free(cql_tls *t)
{
    if (!t) return;
    SSL_CTX_free(t->ctx);
    free(t);
}

/* ---- streams --------------------------------------------------------------- */

int cql_conn_alloc_stream(cql_conn *c, void *owner)
{
    if (c->n_free == 0) return -1;
    int16_t id = c->free_ids[--c->n_free];
    c->slots[id] = owner;
    c->in_flight++;
    return id;
}

void *cql_conn_stream_owner(const cql_conn *c, int16_t id)
{
    if (id < 0 || id >= c->max_streams) return NULL;
    return c->slots[id];
}

void cql_conn_release_stream(cql_conn *c, int16_t id)
{
    if (id < 0 || id >= c->max_streams || !c->slots[id]) return;
    c->slots[id] = NULL;
    c->free_ids[c->n_free++] = id;
    c->in_flight--;
}

/* ---- I/O ------------------------------------------------------------------- */

void cql_conn_queue(cql_conn *c, const void *frame, size_t len) { buf_append(&c->wbuf, frame, len); }

int cql_conn_has_output(const cql_conn *c) { return c->wpos < c->wbuf.len; }

int cql_conn_has_buffered_input(const cql_conn *c)
{
    return c->ssl && SSL_pending((SSL *)c->ssl) > 0;
}

short cql_conn_poll_events(const cql_conn *c)
{
    return (short)(POLLIN | (cql_conn_has_output(c) ? POLLOUT : 0));
}

/* 0: progress or would block; -1: connection failed (err set). */
static int ssl_result(cql_conn *c, int rc, const char *what, char *err, size_t errlen)
{
    char tmp[256];
    int e = SSL_get_error((SSL *)c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        snprintf(err, errlen, "%s: connection closed by the server (TLS close)", c->name);
    else if (e == SSL_ERROR_SYSCALL)
        snprintf(err, errlen, "%s: TLS %s failed: %s", c->name, what,
                 errno ? strerror(errno) : "connection closed by the server");
    else
        snprintf(err, errlen, "%s: TLS %s failed: %s", c->name, what, ssl_error_text(tmp, sizeof tmp));
    return -1;
}

int cql_conn_flush(cql_conn *c, char *err, size_t errlen)
{
    while (c->wpos < c->wbuf.len) {
        size_t n = c->wbuf.len - c->wpos;
        const unsigned char *p = c->wbuf.data + c->wpos;
        if (c->ssl) {
            ERR_clear_error();
            int rc = SSL_write((SSL *)c->ssl, p, n > (1u << 30) ? (1 << 30) : (int)n);
            if (rc <= 0) return ssl_result(c, rc, "write", err, errlen);
            c->wpos += (size_t)rc;
        } else {
            ssize_t rc = send(c->fd, p, n, MSG_NOSIGNAL);
            if (rc < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
                if (errno == EINTR) continue;
                snprintf(err, errlen, "%s: write failed: %s", c->name, strerror(errno));
                return -1;
            }
            c->wpos += (size_t)rc;
        }
    }
    buf_reset(&c->wbuf);
    c->wpos = 0;
    return 0;
}

int cql_conn_fill(cql_conn *c, char *err, size_t errlen)
{
    if (c->rpos > 0) { /* drop consumed frames */
        memmove(c->rbuf.data, c->rbuf.data + c->rpos, c->rbuf.len - c->rpos);
        c->rbuf.len -= c->rpos;
        c->rpos = 0;
    }
    for (int rounds = 0; rounds < 64; rounds++) {
        buf_reserve(&c->rbuf, 65536);
        unsigned char *p = c->rbuf.data + c->rbuf.len;
        size_t room = c->rbuf.cap - c->rbuf.len;
        if (c->ssl) {
            ERR_clear_error();
            int rc = SSL_read((SSL *)c->ssl, p, room > (1u << 30) ? (1 << 30) : (int)room);
            if (rc <= 0) return ssl_result(c, rc, "read", err, errlen);
            c->rbuf.len += (size_t)rc;
        } else {
            ssize_t rc = recv(c->fd, p, room, 0);
            if (rc < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
                if (errno == EINTR) continue;
                snprintf(err, errlen, "%s: read failed: %s", c->name, strerror(errno));
                return -1;
            }
            if (rc == 0) {
                snprintf(err, errlen, "%s: connection closed by the server", c->name);
                return -1;
            }
            c->rbuf.len += (size_t)rc;
            if ((size_t)rc < room) return 0;
        }
    }
    return 0;
}

int cql_conn_next(cql_conn *c, cql_header *h, const unsigned char **body, char *err,
                  size_t errlen)
{
    size_t flen;
    char why[200];
    if (c->rpos == c->rbuf.len) return 0; /* nothing buffered (and maybe no buffer yet) */
    int rc = cql_frame_split(c->rbuf.data + c->rpos, c->rbuf.len - c->rpos, h, &flen, why,
                             sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", c->name, why);
        return -1;
    }
    if (rc == 0) return 0;
    *body = c->rbuf.data + c->rpos + CQL_HEADER_SIZE;
    c->rpos += flen;
    return 1;
}

/* ---- open ------------------------------------------------------------------ */

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno == EINTR) continue;
        return rc;
    }
}

/* Sends one frame on stream 0 and waits for its answer (the connection has
 * nothing else in flight during the handshake). On 0, *body_out holds a copy
 * of the response body the caller frees. */
static int roundtrip(cql_conn *c, buf *frame, cql_response *resp, unsigned char **body_out,
                     int64_t deadline, char *err, size_t errlen)
{
    *body_out = NULL;
    cql_conn_queue(c, frame->data, frame->len);
    for (;;) {
        if (cql_conn_flush(c, err, errlen)) return -1;
        cql_header h;
        const unsigned char *body;
        int rc = cql_conn_next(c, &h, &body, err, errlen);
        if (rc < 0) return -1;
        if (rc == 1) {
            if (h.stream != 0) continue; /* an event: not registered for, ignore */
            *body_out = xmalloc(h.length ? h.length : 1);
            memcpy(*body_out, body, h.length);
            char why[200];
            if (cql_response_decode(&h, *body_out, h.length, resp, why, sizeof why)) {
                snprintf(err, errlen, "%s: %s", c->name, why);
                return -1;
            }
            return 0;
        }
        if (cql_conn_has_buffered_input(c)) {
            if (cql_conn_fill(c, err, errlen)) return -1;
            continue;
        }
        int w = wait_fd(c->fd, cql_conn_poll_events(c), deadline);
        if (w == 0) {
            snprintf(err, errlen, "%s: no answer to the %s handshake within the connect timeout",
                     c->name, cql_opcode_name(frame->data[4]));
            return -1;
        }
        if (w < 0) {
            snprintf(err, errlen, "%s: poll: %s", c->name, strerror(errno));
            return -1;
        }
        if (cql_conn_fill(c, err, errlen)) return -1;
    }
}

static int tcp_connect(cql_conn *c, const struct sockaddr *sa, socklen_t salen, int64_t deadline,
                       char *err, size_t errlen)
{
    c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        snprintf(err, errlen, "%s: socket: %s", c->name, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, sa, salen) == 0) return 0;
    if (errno != EINPROGRESS) {
        snprintf(err, errlen, "%s: connect: %s", c->name, strerror(errno));
        return -1;
    }
    int w = wait_fd(c->fd, POLLOUT, deadline);
    if (w == 0) {
        snprintf(err, errlen, "%s: connect timed out", c->name);
        return -1;
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (w < 0 || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) soerr = errno;
    if (soerr) {
        snprintf(err, errlen, "%s: connect: %s", c->name, strerror(soerr));
        return -1;
    }
    return 0;
}

static int tls_handshake(cql_conn *c, const cql_conn_opts *o, int64_t deadline, int *fatal,
                         char *err, size_t errlen)
{
    char tmp[256];
    SSL *ssl = SSL_new(o->tls->ctx);
    if (!ssl) {
        snprintf(err, errlen, "%s: TLS: %s", c->name, ssl_error_text(tmp, sizeof tmp));
        return -1;
    }
    c->ssl = ssl;
    SSL_set_fd(ssl, c->fd);
    const char *name = o->server_name;
    if (name && *name) {
        unsigned char addr[16];
        int is_ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
        if (!is_ip) SSL_set_tlsext_host_name(ssl, name);
        if (o->tls->verify) {
            X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
            if (is_ip)
                X509_VERIFY_PARAM_set1_ip_asc(vp, name);
            else
                X509_VERIFY_PARAM_set1_host(vp, name, 0);
        }
    }
    for (;;) {
        ERR_clear_error();
        int rc = SSL_connect(ssl);
        if (rc == 1) return 0;
        int e = SSL_get_error(ssl, rc);
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (!ev) {
            long vr = SSL_get_verify_result(ssl);
            if (vr != X509_V_OK) {
                *fatal = 1;
                snprintf(err, errlen, "%s: TLS handshake failed: certificate verification: %s",
                         c->name, X509_verify_cert_error_string(vr));
            } else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
                snprintf(err, errlen,
                         "%s: TLS handshake failed: connection closed by the server "
                         "(does the server speak TLS on this port?)",
                         c->name);
            else
                snprintf(err, errlen, "%s: TLS handshake failed: %s (does the server speak TLS "
                         "on this port?)", c->name, ssl_error_text(tmp, sizeof tmp));
            return -1;
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w <= 0) {
            snprintf(err, errlen, "%s: TLS handshake timed out", c->name);
            return -1;
        }
    }
}

static void error_text(const cql_conn_opts *o, const cql_response *r, char *out, size_t outlen)
{
    char msg[512];
    cql_redact(msg, sizeof msg, r->error.message ? r->error.message : "", o->username,
               o->password);
    snprintf(out, outlen, "%s (0x%04x): %s", cql_error_name(r->error.code),
             (unsigned)r->error.code, msg);
}

static int handshake(cql_conn *c, const cql_conn_opts *o, int64_t deadline, int *fatal,
                     char *err, size_t errlen)
{
    buf f;
    buf_init(&f);
    const char *kv[] = {"CQL_VERSION", "3.0.0"};
    cql_encode_startup(&f, 0, kv, 1);
    cql_response r;
    unsigned char *body = NULL;
    char why[640];
    int rc = -1;
    if (roundtrip(c, &f, &r, &body, deadline, err, errlen)) goto out_nofree;
    for (int round = 0; round < 16; round++) {
        switch (r.h.opcode) {
        case CQL_OP_READY: rc = 0; goto out;
        case CQL_OP_AUTH_SUCCESS: rc = 0; goto out;
        case CQL_OP_ERROR:
            error_text(o, &r, why, sizeof why);
            *fatal = r.error.code == CQL_ERR_BAD_CREDENTIALS || r.error.code == CQL_ERR_PROTOCOL;
            if (r.error.code == CQL_ERR_BAD_CREDENTIALS)
                snprintf(err, errlen, "%s: authentication failed: the server rejected the "
                         "configured username/password: %s", c->name, why);
            else if (r.error.code == CQL_ERR_PROTOCOL && r.h.version != CQL_VERSION_RESPONSE)
                snprintf(err, errlen, "%s: the server does not speak CQL protocol v4: %s",
                         c->name, why);
            else
                snprintf(err, errlen, "%s: connection setup refused: %s", c->name, why);
            goto out;
        case CQL_OP_AUTHENTICATE:
        case CQL_OP_AUTH_CHALLENGE: {
            if (r.h.opcode == CQL_OP_AUTHENTICATE)
                snprintf(c->authenticator, sizeof c->authenticator, "%s",
                         r.authenticator ? r.authenticator : "");
            if (!o->username || !o->password) {
                *fatal = 1;
                snprintf(err, errlen, "%s: the server requires authentication (%s) but no "
                         "username/password is configured", c->name, c->authenticator);
                goto out;
            }
            if (r.h.opcode == CQL_OP_AUTH_CHALLENGE) {
                *fatal = 1;
                snprintf(err, errlen, "%s: the server sent a SASL challenge after PLAIN "
                         "credentials; authenticator %s is not supported", c->name,
                         c->authenticator);
                goto out;
            }
            buf tok;
            buf_init(&tok);
            cql_sasl_plain(&tok, o->username, o->password);
            buf_reset(&f);
            cql_encode_auth_response(&f, 0, tok.data, (int32_t)tok.len);
            /* wipe the plaintext copy of the credentials */
            memset(tok.data, 0, tok.len);
            buf_free(&tok);
            cql_response_free(&r);
            free(body);
            body = NULL;
            int rr = roundtrip(c, &f, &r, &body, deadline, err, errlen);
            memset(f.data, 0, f.len);
            if (rr) goto out_nofree;
            continue;
        }
        default:
            snprintf(err, errlen, "%s: unexpected %s during connection setup", c->name,
                     cql_opcode_name(r.h.opcode));
            goto out;
        }
    }
    snprintf(err, errlen, "%s: too many authentication rounds", c->name);
out:
    cql_response_free(&r);
out_nofree:
    free(body);
    buf_free(&f);
    return rc;
}

cql_conn *cql_conn_open(const struct sockaddr *sa, socklen_t salen, const cql_conn_opts *o,
                        int *fatal, char *err, size_t errlen)
{
    *fatal = 0;
    cql_conn *c = xcalloc(1, sizeof *c);
    c->fd = -1;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        snprintf(c->name, sizeof c->name, "%s:%d", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        snprintf(c->name, sizeof c->name, "[%s]:%d", host, port);
    }
    buf_init(&c->wbuf);
    buf_init(&c->rbuf);
    int ms = o->max_streams;
    if (ms < 1 || ms > CQL_MAX_STREAMS) ms = CQL_MAX_STREAMS;
    c->max_streams = ms;
    c->slots = xcalloc((size_t)ms, sizeof *c->slots);
    c->free_ids = xcalloc((size_t)ms, sizeof *c->free_ids);
    for (int i = 0; i < ms; i++) c->free_ids[i] = (int16_t)(ms - 1 - i); /* 0 comes out first */
    c->n_free = ms;

    int64_t deadline = mono_ms() + (o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000);
    if (tcp_connect(c, sa, salen, deadline, err, errlen) ||
        (o->tls && tls_handshake(c, o, deadline, fatal, err, errlen)) ||
        handshake(c, o, deadline, fatal, err, errlen)) {
        cql_conn_free(c);
        return NULL;
    }
    return c;
}

void cql_conn_free(cql_conn *c)
{
    if (!c) return;
    if (c->ssl) {
        SSL_free((SSL *)c->ssl); /* no close_notify: the peer may be gone */
    }
    if (c->fd >= 0) close(c->fd);
    buf_free(&c->wbuf);
    buf_free(&c->rbuf);
    free(c->slots);
    free(c->free_ids);
    free(c);
}
