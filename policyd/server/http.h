/* http: the metrics and status endpoint (http_listen = inet:HOST:PORT). Serves GET/HEAD
 * / (the status page, page.h), /metrics (Prometheus text 0.0.4 from the metrics registry), /status
 * (the node status JSON) and /healthz on the daemon's loop: one request per connection, strict
 * limits (8 KiB head, http_max_connections, a read timeout), Connection: close. Clients outside
 * http_allow_networks get 403. The registry
 * and the status builders it serves are the server's (server_metrics, server_add_status).
 * Loop thread only. */
#pragma once

#include "util/metrics.h"
#include "server.h"

#include <jansson.h>
#include <stdint.h>

struct http_server;

/* Limits of the endpoint (not settings: a scrape needs none of them larger). */
#define HTTP_MAX_HEAD 8192          /* request line and header fields */
#define HTTP_READ_TIMEOUT_MS 5000   /* from accept to the end of the request head */
#define HTTP_WRITE_TIMEOUT_MS 10000 /* for the response to drain */
#define HTTP_LINGER_MS 2000         /* reading (and dropping) input after the response */
#define HTTP_LINGER_MAX_BYTES 65536

/* The node status JSON as /status serves it (new reference): the built-in keys (node,
 * version, pid, uptime_seconds, started_at, draining, config, counters, http), then what
 * the builders registered with server_add_status add. NULL on ENOMEM. */
json_t *http_status_json(struct server *srv);
/* The same without the status page's keys (history, traffic, report): what it samples. */
json_t *http_status_base_json(struct server *srv);

/* Call once after server_start() succeeded. Registers the server's own metrics (requests,
 * replies by action, protocol errors, connections, reloads, request latency) and, when
 * cfg->http_listen is not empty, opens the listener; installs a server hook that closes
 * it when the server stops. Returns 0 or a negative errno (logged: bad http_listen,
 * bind failure); the caller then stops the server like for a failed server_start(). */
int http_start(struct server *srv);

/* Closes the listener and every HTTP connection (the on_stop hook does it; callable
 * directly too). Idempotent. */
void http_stop(struct server *srv);

/* Frees srv->http and the registry after the loop has finished (after uv_run(), before
 * server_free()). Safe if http was never used. */
void http_free(struct server *srv);
