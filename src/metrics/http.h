/*
 * http.h - the metrics and health endpoint (--metrics-listen), served by
 * libmicrohttpd on a thread of its own:
 *
 *   GET /metrics   the Prometheus text format (metrics.h)
 *   GET /healthz   200 "ok" while the job thread shows signs of life, else 503
 *   GET /readyz    200 "ready" when source and sink are reachable and the job
 *                  is caught up, else 503 with the reasons, one per line
 *
 * The server only reads: the published snapshot (copied under a mutex the
 * job thread merely tries) and job_status's atomics. Bounds: at most 16
 * connections at a time, 5 s per connection, request bodies ignored.
 */
#ifndef SESSIONIZER_METRICS_HTTP_H
#define SESSIONIZER_METRICS_HTTP_H

#include <stddef.h>

#include "metrics/metrics.h"

typedef struct metrics_server metrics_server;

/* listen: "HOST:PORT" (IPv4 or a name resolving to one), "[IPv6]:PORT";
 * port 0 picks a free one. NULL with the reason in err on failure. */
metrics_server *metrics_server_start(const char *listen, metrics_shared *shared, char *err,
                                     size_t errlen);
/* The port actually bound. */
int metrics_server_port(const metrics_server *srv);
void metrics_server_stop(metrics_server *srv);

#endif
