/*
 * http.c - /metrics, /healthz and /readyz over libmicrohttpd (see http.h).
 *
 * libmicrohttpd (Debian libmicrohttpd-dev) rather than a hand-written
 * server: HTTP parsing is where hand-written servers break. One internal
 * polling thread serves every connection; each request formats into a
 * fresh buffer handed to libmicrohttpd, so nothing is shared with the job
 * thread but what metrics.h describes.
 */
#include "metrics/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/context.h"
#include "common/log.h"
#include "common/xalloc.h"

struct metrics_server {
    struct MHD_Daemon *d;
    metrics_shared *shared;
    metrics_snapshot *snap; /* the server thread's copy; it alone uses it */
    int port;
};

/* Resident memory from /proc/self/statm, read on the server's thread. */
static int64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    long long size = 0, resident = -1;
    if (fscanf(f, "%lld %lld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : (int64_t)resident * sysconf(_SC_PAGESIZE);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, buf *body)
{
    /* MUST_FREE: libmicrohttpd frees the body with free() once sent. */
    struct MHD_Response *r = MHD_create_response_from_buffer(body->len, body->data,
                                                             MHD_RESPMEM_MUST_FREE);
    body->data = NULL, body->len = body->cap = 0;
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    (void)version, (void)upload_data, (void)con_cls;
    metrics_server *srv = cls;
    metrics_shared *m = srv->shared;
    const job_status *st = m->status;
    *upload_data_size = 0; /* bodies are not read */
    buf b;
    buf_init(&b);
    buf_reserve(&b, 1); /* a body of 0 bytes still needs a buffer to hand over */
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        buf_append_str(&b, "only GET\n");
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, &b);
    }
    long long wall = status_wall_ms(), mono = status_mono_ms();
    if (strcmp(url, "/metrics") == 0) {
        int have = metrics_read(m, srv->snap);
        metrics_format(&b, have ? srv->snap : NULL, st, wall, rss_bytes(), m->version);
        return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", &b);
    }
    if (strcmp(url, "/healthz") == 0) {
        int ok = metrics_live(st, mono, &b);
        if (ok) buf_append_str(&b, "ok\n");
        return reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text, &b);
    }
    if (strcmp(url, "/readyz") == 0) {
        int have = metrics_read(m, srv->snap);
        int ok = metrics_ready(have ? srv->snap : NULL, st, wall, mono, m->ready_max_lag, &b);
        if (ok) buf_append_str(&b, "ready\n");
        return reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text, &b);
    }
    buf_append_str(&b, "not found: try /metrics, /healthz, /readyz\n");
    return reply(c, MHD_HTTP_NOT_FOUND, text, &b);
}

/* libmicrohttpd's messages, through the log (it passes its own format). */
__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    log_warn("metrics", "%s", msg);
}

static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len, char *err,
                        size_t errlen)
{
    char host[256];
    const char *colon = strrchr(listen, ':'), *h = listen;
    size_t hl = colon ? (size_t)(colon - listen) : 0;
    if (hl >= 2 && listen[0] == '[' && listen[hl - 1] == ']') h = listen + 1, hl -= 2;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || hl == 0 || hl >= sizeof host || !end || end == colon + 1 || *end || port < 0 ||
        port > 65535) {
        snprintf(err, errlen, "--metrics-listen '%s' is not HOST:PORT (e.g. 127.0.0.1:9464)", listen);
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE}, *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "--metrics-listen '%s': %s", listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    return 0;
}

metrics_server *metrics_server_start(const char *listen, metrics_shared *shared, char *err,
                                     size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (parse_listen(listen, &ss, &sl, err, errlen)) return NULL;
    metrics_server *srv = xcalloc(1, sizeof *srv);
    srv->shared = shared;
    srv->snap = xmalloc(sizeof *srv->snap);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_AUTO;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* Stop signals are the job thread's: the server's thread blocks them,
     * so that one never lands there instead of interrupting a job's wait. */
    sigset_t old;
    job_block_stop_signals(&old);
    srv->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, srv,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, as it asks */
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)5,
                              MHD_OPTION_END);
    int saved = errno;
    job_restore_signals(&old);
    if (!srv->d) {
        snprintf(err, errlen, "cannot serve metrics on %s: %s", listen,
                 saved ? strerror(saved) : "libmicrohttpd refused to start");
        free(srv->snap);
        free(srv);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : 0;
    return srv;
}

int metrics_server_port(const metrics_server *srv) { return srv->port; }

void metrics_server_stop(metrics_server *srv)
{
    if (!srv) return;
    MHD_stop_daemon(srv->d);
    free(srv->snap);
    free(srv);
}
