/* http: GET/HEAD / (the status page), /metrics, /status and /healthz on the daemon's loop. A
 * monitoring system is a peer like any other: each connection gets one request (parsed by
 * lib/httpreq, 8 KiB at most, within HTTP_READ_TIMEOUT_MS), one response with
 * Connection: close, then a half-close and a short linger so a client that sent more
 * than we read still gets the response instead of a reset. */
#define LOG_COMPONENT "http"
#include "http.h"

#include "httpreq.h"
#include "net.h"
#include "page.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef POSTSURGE_VERSION
#define POSTSURGE_VERSION "unknown"
#endif

/* Response codes counted in postsurge_http_responses_total. */
static const int http_codes[] = {200, 400, 403, 404, 405, 408, 413, 431, 500, 503, 505};
#define N_CODES (sizeof(http_codes) / sizeof(http_codes[0]))

/* Request latency buckets in seconds: 50 us to 1 s (a policy answer past 1 s is already
 * a problem; Postfix gives up after smtpd_policy_service_timeout, 100 s by default). */
static const double latency_bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                        0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1.0};

enum hc_state { HC_READING, HC_WRITING, HC_LINGER };

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    struct http_server *hs;
    struct http_conn *prev, *next;
    struct httpreq_parser *parser;
    enum hc_state state;
    int open_handles; /* tcp + timer */
    bool closing;
    size_t lingered;
    char head[512];
    char *body; /* owned */
    size_t body_len;
    char peer[64];
    bool forbidden; /* the client is outside http_allow_networks: 403 to any request */
};

struct http_server {
    struct server *srv;
    struct metrics *metrics; /* the server's registry (borrowed) */

    uv_tcp_t listener;
    bool listener_open, started, stopped;
    struct http_conn *conns;
    uint64_t n_conns;
    uint64_t start_hr; /* uv_hrtime() at http_start */
    time_t start_wall;

    struct metrics_series *latency;
    struct metrics_series *responses[N_CODES];
    struct metrics_series *refused;
    struct log_ratelimit rl_cap, rl_accept, rl_forbidden;
    struct net_set *allow; /* http_allow_networks */
    struct page *page;
    char rbuf[4096]; /* shared: each read is consumed before the next alloc */
};

static struct http_server *http_get(struct server *srv)
{
    if (srv->http)
        return srv->http;
    struct http_server *hs = calloc(1, sizeof(*hs));
    if (!hs)
        return NULL;
    hs->metrics = server_metrics(srv);
    if (!hs->metrics) {
        free(hs);
        return NULL;
    }
    hs->srv = srv;
    srv->http = hs;
    return hs;
}

/* ---- status JSON ---- */

static const char *http_node_name(const struct server *srv, char *buf, size_t size)
{
    if (srv->cfg->node_name && *srv->cfg->node_name)
        return srv->cfg->node_name;
    if (gethostname(buf, size) < 0)
        return "unknown";
    buf[size - 1] = '\0';
    return buf;
}

/* Number of rule lines in the limits setting (non-empty, not comments). */
static json_int_t count_rules(const char *s)
{
    json_int_t n = 0;

    while (s && *s) {
        const char *e = strchr(s, '\n');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        size_t i = 0;
        while (i < len && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i < len && s[i] != '#')
            n++;
        s = e ? e + 1 : s + len;
    }
    return n;
}

/* The store as kind and address, never the password. */
static json_t *http_store_json(const char *store)
{
    struct config_store_url u;

    if (config_parse_store_url(store ? store : "memory", &u) < 0)
        return json_pack("{s:s}", "kind", "invalid");
    switch (u.kind) {
    case CONFIG_STORE_REDIS_TCP:
        return json_pack("{s:s,s:s,s:i,s:i}", "kind", "redis", "host", u.host, "port", u.port, "db",
                         u.db);
    case CONFIG_STORE_REDIS_UNIX:
        return json_pack("{s:s,s:s,s:i}", "kind", "redis", "path", u.path, "db", u.db);
    case CONFIG_STORE_REDIS_SENTINEL:
    case CONFIG_STORE_REDIS_CLUSTER: {
        json_t *seeds = json_array();
        for (int i = 0; seeds && i < u.nseeds; i++) {
            char addr[sizeof(u.seeds[i].host) + 16];
            snprintf(addr, sizeof(addr), strchr(u.seeds[i].host, ':') ? "[%s]:%d" : "%s:%d",
                     u.seeds[i].host, u.seeds[i].port);
            json_array_append_new(seeds, json_string(addr));
        }
        if (u.kind == CONFIG_STORE_REDIS_CLUSTER)
            return json_pack("{s:s,s:o*}", "kind", "redis-cluster", "seeds", seeds);
        return json_pack("{s:s,s:s,s:o*,s:i}", "kind", "redis-sentinel", "master", u.master_name,
                         "sentinels", seeds, "db", u.db);
    }
    default:
        return json_pack("{s:s}", "kind", "memory");
    }
}

static json_t *http_config_json(const struct server *srv)
{
    const struct config *c = srv->cfg;

    return json_pack(
        "{s:s,s:s,s:s,s:I,s:I,s:s,s:o,s:I,s:b,s:b,s:b,s:b,s:s,s:I}", "file", srv->config_path,
        "listen", c->listen ? c->listen : "", "http_listen", c->http_listen ? c->http_listen : "",
        "max_connections", (json_int_t)c->max_connections, "idle_timeout_ms",
        (json_int_t)c->idle_timeout, "default_action", c->default_action, "store",
        http_store_json(c->store), "limit_rules", count_rules(c->limits), "limit_dry_run",
        c->limit_dry_run, "monitor", c->monitor, "stress_overrides", c->stress_overrides,
        "stress_dry_run", c->stress_dry_run, "log_level", c->log_level ? c->log_level : "",
        "http_max_connections", (json_int_t)c->http_max_connections);
}

static json_t *counters_json(const struct server *srv)
{
    const struct server_stats *st = &srv->stats;
    json_t *replies = json_object(), *errors = json_object();

    for (int i = 0; i < SERVER_ACT_COUNT && replies; i++)
        json_object_set_new(replies, server_action_class_name(i), json_integer(st->replies[i]));
    for (int i = 1; i < SERVER_ERR_COUNT && errors; i++)
        json_object_set_new(errors, server_err_class_name(i), json_integer(st->protocol_errors[i]));
    return json_pack("{s:I,s:o*,s:I,s:o*,s:{s:I,s:I,s:I,s:I,s:I,s:I},s:I,s:I}", "requests",
                     (json_int_t)st->requests, "replies", replies, "decide_failures",
                     (json_int_t)st->decide_failures, "protocol_errors", errors, "connections",
                     "accepted", (json_int_t)st->conn_accepted, "open", (json_int_t)st->conn_open,
                     "refused_over_cap", (json_int_t)st->conn_refused_over_cap, "idle_closed",
                     (json_int_t)st->conn_idle_closed, "peer_gone_closed",
                     (json_int_t)st->conn_reaped, "read_errors", (json_int_t)st->conn_read_errors,
                     "reloads", (json_int_t)st->reloads, "reload_failures",
                     (json_int_t)st->reload_failures);
}

json_t *http_status_json(struct server *srv)
{
    json_t *st = http_status_base_json(srv);
    if (st && srv->http && srv->http->page)
        page_add_status(srv->http->page, st);
    return st;
}

json_t *http_status_base_json(struct server *srv)
{
    struct http_server *hs = http_get(srv);
    char host[256], started[32] = "";
    struct tm tm;

    if (!hs)
        return NULL;
    if (hs->start_wall && gmtime_r(&hs->start_wall, &tm))
        strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &tm);
    uint64_t up_ns = hs->start_hr ? uv_hrtime() - hs->start_hr : 0;
    json_t *st = json_pack("{s:s,s:s,s:I,s:s,s:I,s:b,s:o*,s:o*,s:{s:I,s:I}}", "node",
                           http_node_name(srv, host, sizeof(host)), "version", POSTSURGE_VERSION,
                           "pid", (json_int_t)getpid(), "started_at", started, "uptime_seconds",
                           (json_int_t)(up_ns / 1000000000u), "draining", srv->draining, "config",
                           http_config_json(srv), "counters", counters_json(srv), "http",
                           "connections_open", (json_int_t)hs->n_conns, "max_connections",
                           (json_int_t)srv->cfg->http_max_connections);
    if (!st)
        return NULL;
    server_status_fill(srv, st);
    return st;
}

/* ---- the server's own metrics ---- */

static int sample(struct metrics_out *o, enum metric_type t, const char *name, const char *help,
                  double v)
{
    int rc = metrics_out_family(o, t, name, help);
    return rc < 0 ? rc : metrics_out_sample(o, name, NULL, NULL, 0, v);
}

static const char *action_name(int i)
{
    return server_action_class_name((enum server_action_class)i);
}

static const char *err_name(int i)
{
    return server_err_class_name((enum server_err_class)i);
}

/* A counter family with one label: values[from..to) under label = name_of(i). */
static int counter_by_class(struct metrics_out *o, const char *family, const char *help,
                            const char *label, const char *(*name_of)(int), const uint64_t *values,
                            int from, int to)
{
    const char *const labels[] = {label};
    int rc = metrics_out_family(o, METRIC_COUNTER, family, help);
    for (int i = from; rc >= 0 && i < to; i++) {
        const char *v[] = {name_of(i)};
        rc = metrics_out_sample(o, family, labels, v, 1, (double)values[i]);
    }
    return rc < 0 ? rc : 0;
}

/* Figures kept in struct server_stats, read at scrape time. */
static int collect_server(struct metrics_out *o, void *arg)
{
    struct http_server *hs = arg;
    const struct server *srv = hs->srv;
    const struct server_stats *st = &srv->stats;
    static const char *const version_l[] = {"version"};
    int rc = 0;

#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((rc = (x)) < 0)                                                                        \
            return rc;                                                                             \
    } while (0)
    TRY(sample(o, METRIC_COUNTER, "postsurge_requests_total",
               "Policy requests received (complete requests handed to the decision engine).",
               (double)st->requests));
    TRY(counter_by_class(o, "postsurge_replies_total",
                         "Policy replies sent, by access(5) action class.", "action", action_name,
                         st->replies, 0, SERVER_ACT_COUNT));
    TRY(sample(o, METRIC_COUNTER, "postsurge_decide_failures_total",
               "Requests the decision engine could not start; answered default_action.",
               (double)st->decide_failures));
    TRY(counter_by_class(o, "postsurge_protocol_errors_total",
                         "Policy connections closed for a protocol error, by class.", "class",
                         err_name, st->protocol_errors, 1, SERVER_ERR_COUNT));
    TRY(sample(o, METRIC_COUNTER, "postsurge_connections_accepted_total",
               "Policy client connections accepted.", (double)st->conn_accepted));
    TRY(sample(o, METRIC_GAUGE, "postsurge_connections_open", "Policy client connections open.",
               (double)st->conn_open));
    TRY(sample(o, METRIC_GAUGE, "postsurge_connections_max",
               "The max_connections setting: open connections beyond it are refused.",
               (double)srv->cfg->max_connections));
    TRY(sample(o, METRIC_COUNTER, "postsurge_connections_refused_total",
               "Policy connections refused because max_connections were open.",
               (double)st->conn_refused_over_cap));
    TRY(sample(o, METRIC_COUNTER, "postsurge_connections_idle_closed_total",
               "Policy connections closed after idle_timeout.", (double)st->conn_idle_closed));
    TRY(sample(o, METRIC_COUNTER, "postsurge_connection_read_errors_total",
               "Policy connections closed on a read error.", (double)st->conn_read_errors));
    TRY(sample(o, METRIC_COUNTER, "postsurge_config_reloads_total",
               "Configuration reloads applied (SIGHUP).", (double)st->reloads));
    TRY(sample(o, METRIC_COUNTER, "postsurge_config_reload_failures_total",
               "Configuration reloads refused because the file had errors.",
               (double)st->reload_failures));
    TRY(sample(o, METRIC_GAUGE, "postsurge_draining",
               "1 while the daemon is shutting down and drains its connections.",
               srv->draining ? 1 : 0));
    TRY(sample(o, METRIC_GAUGE, "postsurge_http_connections_open",
               "Connections open to this metrics/status endpoint.", (double)hs->n_conns));
    TRY(sample(o, METRIC_GAUGE, "process_start_time_seconds",
               "Start time of the process since the Unix epoch in seconds.",
               (double)hs->start_wall));
    TRY(metrics_out_family(o, METRIC_GAUGE, "postsurge_build_info",
                           "Always 1; the version is in the label."));
    const char *ver[] = {POSTSURGE_VERSION};
    TRY(metrics_out_sample(o, "postsurge_build_info", version_l, ver, 1, 1));
#undef TRY
    return 0;
}

static int register_metrics(struct http_server *hs)
{
    static const char *const code_l[] = {"code", NULL};
    struct metric *f;

    f = metrics_histogram_new(hs->metrics, "postsurge_request_duration_seconds",
                              "Time from a complete policy request to its reply being queued.",
                              NULL, latency_bounds,
                              sizeof(latency_bounds) / sizeof(latency_bounds[0]));
    hs->latency = metrics_series(f, NULL);
    /* conn.c feeds it through the server (srv->request_latency), not through us. */
    hs->srv->request_latency = hs->latency;
    f = metrics_counter_new(hs->metrics, "postsurge_http_responses_total",
                            "Responses of the metrics/status endpoint, by status code.", code_l);
    for (size_t i = 0; i < N_CODES; i++) {
        char code[8];
        const char *v[] = {code};
        snprintf(code, sizeof(code), "%d", http_codes[i]);
        hs->responses[i] = metrics_series(f, v);
    }
    f = metrics_counter_new(hs->metrics, "postsurge_http_connections_refused_total",
                            "Endpoint connections closed at once: http_max_connections open.",
                            NULL);
    hs->refused = metrics_series(f, NULL);
    if (!hs->latency || !hs->refused || !hs->responses[N_CODES - 1])
        return -ENOMEM;
    return metrics_add_collector(hs->metrics, collect_server, hs);
}

/* ---- connections ---- */

static void hc_on_close(uv_handle_t *h)
{
    struct http_conn *c = h->data;

    if (--c->open_handles > 0)
        return;
    httpreq_parser_free(c->parser);
    free(c->body);
    free(c);
}

static void hc_close(struct http_conn *c)
{
    struct http_server *hs = c->hs;

    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        hs->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    hs->n_conns--;
    uv_close((uv_handle_t *)&c->tcp, hc_on_close);
    uv_close((uv_handle_t *)&c->timer, hc_on_close);
}

static void hc_respond_text(struct http_conn *c, int code, const char *text, bool head_only);

static void hc_on_timer(uv_timer_t *t)
{
    struct http_conn *c = t->data;

    if (c->state == HC_READING && httpreq_parser_pending(c->parser)) {
        log_debug("%s: request head not complete after %d ms", c->peer, HTTP_READ_TIMEOUT_MS);
        hc_respond_text(c, 408, "request timeout\n", false);
        return;
    }
    if (c->state == HC_WRITING)
        log_debug("%s: response not taken within %d ms, closing", c->peer, HTTP_WRITE_TIMEOUT_MS);
    hc_close(c);
}

static void hc_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct http_conn *c = h->data;
    *buf = uv_buf_init(c->hs->rbuf, sizeof(c->hs->rbuf));
}

/* For a read callback: true when there is nothing to read (nread 0), the connection is
 * closing, or the client is gone or failed (nread < 0: closed here). */
static bool hc_read_over(struct http_conn *c, ssize_t nread)
{
    if (nread == 0 || c->closing)
        return true;
    if (nread < 0) {
        hc_close(c);
        return true;
    }
    return false;
}

/* After the response: drop what the client still sends until it closes, the linger
 * time ends or it has sent too much. */
static void hc_on_linger_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *c = s->data;

    if (hc_read_over(c, nread))
        return;
    c->lingered += (size_t)nread;
    if (c->lingered > HTTP_LINGER_MAX_BYTES)
        hc_close(c);
}

static void hc_on_shutdown(uv_shutdown_t *req, int status)
{
    struct http_conn *c = req->data;

    if (c->closing)
        return;
    if (status < 0 || uv_read_start((uv_stream_t *)&c->tcp, hc_on_alloc, hc_on_linger_read) < 0) {
        hc_close(c);
        return;
    }
    c->state = HC_LINGER;
    uv_timer_start(&c->timer, hc_on_timer, HTTP_LINGER_MS, 0);
}

static void hc_on_write(uv_write_t *req, int status)
{
    struct http_conn *c = req->data;

    if (c->closing)
        return;
    free(c->body);
    c->body = NULL;
    if (status < 0 || uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, hc_on_shutdown) < 0)
        hc_close(c);
}

static const char *reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Internal Server Error";
    }
}

/* The page may run its own inline script and style and fetch /status; nothing else. */
#define PAGE_CSP                                                                                   \
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src "          \
    "'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action "            \
    "'none'; frame-ancestors 'none'\r\n"

/* Sends the response (body: malloc'ed, stolen; NULL for none) and closes afterwards. */
static void hc_respond(struct http_conn *c, int code, const char *type, char *body, size_t len,
                       bool head_only)
{
    struct http_server *hs = c->hs;

    for (size_t i = 0; i < N_CODES; i++)
        if (http_codes[i] == code)
            metrics_inc(hs->responses[i]);
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->state = HC_WRITING;
    uv_timer_start(&c->timer, hc_on_timer, HTTP_WRITE_TIMEOUT_MS, 0);
    int n = snprintf(c->head, sizeof(c->head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "%s%s"
                     "Cache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "Connection: close\r\n\r\n",
                     code, reason(code), type, len, code == 405 ? "Allow: GET, HEAD\r\n" : "",
                     strncmp(type, "text/html", 9) == 0 ? PAGE_CSP : "");
    c->body = body;
    c->body_len = head_only ? 0 : len;
    uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)n),
                        uv_buf_init(c->body ? c->body : c->head, (unsigned)c->body_len)};
    int rc =
        uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, c->body_len ? 2 : 1, hc_on_write);
    if (rc < 0) {
        log_debug("%s: write: %s", c->peer, uv_strerror(rc));
        hc_close(c);
    }
}

static void hc_respond_text(struct http_conn *c, int code, const char *text, bool head_only)
{
    char *body = strdup(text);
    hc_respond(c, body ? code : 500, "text/plain; charset=utf-8", body, body ? strlen(body) : 0,
               head_only);
}

static void hc_serve(struct http_conn *c, const struct httpreq *req)
{
    struct http_server *hs = c->hs;
    bool head = req->method == HTTPREQ_HEAD;
    bool known = strcmp(req->path, "/metrics") == 0 || strcmp(req->path, "/status") == 0 ||
                 strcmp(req->path, "/healthz") == 0 || strcmp(req->path, "/") == 0;

    log_debug("%s: %s %s", c->peer, req->method_name, req->path);
    if (c->forbidden) {
        hc_respond_text(c, 403, "forbidden\n", head);
        return;
    }
    if (!known) {
        hc_respond_text(c, 404, "not found\n", head);
        return;
    }
    if (req->method != HTTPREQ_GET && !head) {
        hc_respond_text(c, 405, "method not allowed\n", false);
        return;
    }
    if (strcmp(req->path, "/healthz") == 0) {
        /* A draining daemon answers its last requests but wants no new clients. */
        if (hs->srv->draining)
            hc_respond_text(c, 503, "draining\n", head);
        else
            hc_respond_text(c, 200, "ok\n", head);
        return;
    }
    if (strcmp(req->path, "/metrics") == 0) {
        char *text;
        size_t len;
        int rc = metrics_write(hs->metrics, &text, &len);
        if (rc < 0) {
            log_warn("metrics: cannot write the exposition: %s", strerror(-rc));
            hc_respond_text(c, 500, "metrics unavailable\n", head);
            return;
        }
        hc_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, head);
        return;
    }
    if (strcmp(req->path, "/") == 0) {
        json_t *st = http_status_json(hs->srv);
        size_t len = 0;
        char *html = st ? page_html(st, &len) : NULL;
        json_decref(st);
        if (!html) {
            hc_respond_text(c, 500, "page unavailable\n", head);
            return;
        }
        hc_respond(c, 200, "text/html; charset=utf-8", html, len, head);
        return;
    }
    json_t *st = http_status_json(hs->srv);
    char *text = st ? json_dumps(st, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(st);
    if (!text) {
        hc_respond_text(c, 500, "status unavailable\n", head);
        return;
    }
    /* A trailing newline, so `curl /status` leaves the shell prompt alone. */
    size_t len = strlen(text);
    char *nl = realloc(text, len + 2);
    if (nl) {
        text = nl;
        text[len++] = '\n';
        text[len] = '\0';
    }
    hc_respond(c, 200, "application/json", text, len, head);
}

static void hc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *c = s->data;

    /* A client that goes away before a complete request gets no answer. */
    if (hc_read_over(c, nread))
        return;
    size_t used;
    int st = httpreq_parser_feed(c->parser, buf->base, (size_t)nread, &used);
    if (st == HTTPREQ_MORE)
        return;
    if (st == HTTPREQ_DONE) {
        /* Bytes after the head (a pipelined request) are dropped: one request per
         * connection, as Connection: close announces. */
        hc_serve(c, httpreq_parser_request(c->parser));
        return;
    }
    enum httpreq_method m = httpreq_parser_method(c->parser);
    log_debug("%s: bad request: %s", c->peer, httpreq_strerror(st));
    if (st == HTTPREQ_ERR_BODY && m != HTTPREQ_GET && m != HTTPREQ_HEAD)
        hc_respond_text(c, 405, "method not allowed\n", false);
    else {
        char text[80];
        snprintf(text, sizeof(text), "%s\n", httpreq_strerror(st));
        hc_respond_text(c, httpreq_status_code(st), text, false);
    }
}

/* Takes the pending connection off the backlog and closes it. */
static void refused_on_close(uv_handle_t *h)
{
    free(h);
}

static void http_refuse(struct http_server *hs)
{
    uv_tcp_t *t = malloc(sizeof(*t));

    if (!t || uv_tcp_init(hs->srv->loop, t) < 0) {
        free(t);
        return;
    }
    uv_accept((uv_stream_t *)&hs->listener, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, refused_on_close);
}

/* Names the peer in c->peer and sets c->forbidden when it is outside
 * http_allow_networks (or cannot be named). */
static void peer_name(struct http_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";

    snprintf(c->peer, sizeof(c->peer), "http");
    c->forbidden = true;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) < 0)
        return;
    struct net_addr na;
    char ip[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
    else
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
    c->forbidden = !c->hs->allow || net_addr_parse(ip, strlen(ip), &na) < 0 ||
                   !net_set_contains(c->hs->allow, &na);
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, host, sizeof(host));
        snprintf(c->peer, sizeof(c->peer), "http [%s]:%d", host, ntohs(a->sin6_port));
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, host, sizeof(host));
        snprintf(c->peer, sizeof(c->peer), "http %s:%d", host, ntohs(a->sin_port));
    }
}

static void http_on_connection(uv_stream_t *s, int status)
{
    struct http_server *hs = s->data;
    struct server *srv = hs->srv;

    if (status < 0) {
        log_warn_ratelimited(&hs->rl_accept, server_now_ms(srv), server_repeat_ms(srv),
                             "accept: %s", uv_strerror(status));
        return;
    }
    if (hs->stopped)
        return;
    if (hs->n_conns >= (uint64_t)srv->cfg->http_max_connections) {
        metrics_inc(hs->refused);
        log_warn_ratelimited(&hs->rl_cap, server_now_ms(srv), server_repeat_ms(srv),
                             "%llu connections open (http_max_connections = %lld): refusing a "
                             "new one",
                             (unsigned long long)hs->n_conns,
                             (long long)srv->cfg->http_max_connections);
        http_refuse(hs);
        return;
    }
    struct httpreq_limits lim = {.max_head = HTTP_MAX_HEAD};
    struct http_conn *c = calloc(1, sizeof(*c));
    if (!c || !(c->parser = httpreq_parser_new(&lim)) || uv_tcp_init(srv->loop, &c->tcp) < 0) {
        if (c)
            httpreq_parser_free(c->parser);
        free(c);
        http_refuse(hs);
        return;
    }
    c->hs = hs;
    c->tcp.data = c;
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->write_req.data = c;
    c->shutdown_req.data = c;
    c->open_handles = 2;
    c->next = hs->conns;
    if (hs->conns)
        hs->conns->prev = c;
    hs->conns = c;
    hs->n_conns++;
    if (uv_accept(s, (uv_stream_t *)&c->tcp) < 0) {
        hc_close(c);
        return;
    }
    peer_name(c);
    if (c->forbidden)
        log_warn_ratelimited(&hs->rl_forbidden, server_now_ms(srv), server_repeat_ms(srv),
                             "%s: not in http_allow_networks: answering 403", c->peer);
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, hc_on_alloc, hc_on_read) < 0) {
        hc_close(c);
        return;
    }
    /* One deadline for the whole head, not per read: a client sending one byte a second
     * must not hold a slot forever. */
    uv_timer_start(&c->timer, hc_on_timer, HTTP_READ_TIMEOUT_MS, 0);
}

/* ---- life cycle ---- */

/* "inet:HOST:PORT", "inet:[V6]:PORT"; "localhost" and "" or "*" as host are allowed.
 * No name resolution: the listener must not depend on DNS at start. */
static int http_parse_listen(const char *spec, struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *hp, *colon;
    size_t hlen;
    bool v6 = false;

    if (strncmp(spec, "inet:", 5) != 0)
        return -EINVAL;
    hp = spec + 5;
    if (*hp == '[') {
        const char *close = strchr(hp, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        hlen = (size_t)(close - hp - 1);
        hp++;
        colon = close + 1;
        v6 = true;
    } else {
        colon = strrchr(hp, ':');
        if (!colon)
            return -EINVAL;
        hlen = (size_t)(colon - hp);
    }
    if (hlen >= sizeof(host))
        return -EINVAL;
    memcpy(host, hp, hlen);
    host[hlen] = '\0';
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || port < 1 || port > 65535)
        return -EINVAL;
    if (!v6 && (!*host || strcmp(host, "*") == 0))
        strcpy(host, "0.0.0.0");
    else if (!v6 && strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    return v6 ? uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss)
              : uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss);
}

static void http_on_stop(struct server *srv, void *arg)
{
    http_stop(srv);
}

static void http_on_reload(struct server *srv, const struct config *old, void *arg)
{
    const char *a = old->http_listen ? old->http_listen : "";
    const char *b = srv->cfg->http_listen ? srv->cfg->http_listen : "";

    if (strcmp(a, b) != 0)
        log_warn("reload: http_listen changed; it takes effect after a restart of postsurge");
    struct http_server *hs = arg;
    struct net_set *ns = NULL;
    char err[256];
    if (net_set_parse(srv->cfg->http_allow_networks ? srv->cfg->http_allow_networks : "", &ns, err,
                      sizeof(err)) < 0) {
        log_error("reload: http_allow_networks: %s; keeping the previous networks", err);
        return;
    }
    net_set_free(hs->allow);
    hs->allow = ns;
}

int http_start(struct server *srv)
{
    struct http_server *hs = http_get(srv);
    const char *spec = srv->cfg->http_listen;
    struct sockaddr_storage ss;
    int rc;

    if (!hs)
        return -ENOMEM;
    if (hs->started)
        return 0;
    hs->started = true;
    hs->start_hr = uv_hrtime();
    hs->start_wall = time(NULL);
    struct server_hook hook = {.on_reload = http_on_reload, .on_stop = http_on_stop, .arg = hs};
    if ((rc = register_metrics(hs)) < 0 || (rc = server_add_hook(srv, &hook)) < 0) {
        log_error("metrics: cannot set up: %s", strerror(-rc));
        return rc;
    }
    if (!spec || !*spec)
        return 0;
    char err[256];
    if (net_set_parse(srv->cfg->http_allow_networks ? srv->cfg->http_allow_networks : "",
                      &hs->allow, err, sizeof(err)) < 0) {
        log_error("http_allow_networks: %s", err);
        return -EINVAL;
    }
    hs->page = page_new(srv);
    if (!hs->page)
        return -ENOMEM;
    memset(&ss, 0, sizeof(ss));
    if (http_parse_listen(spec, &ss) < 0) {
        log_error("http_listen: \"%s\": expected inet:HOST:PORT or inet:[ADDRESS]:PORT with a "
                  "numeric address",
                  spec);
        return -EINVAL;
    }
    if ((rc = uv_tcp_init(srv->loop, &hs->listener)) < 0)
        return rc;
    hs->listener.data = hs;
    hs->listener_open = true;
    if ((rc = uv_tcp_bind(&hs->listener, (struct sockaddr *)&ss, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&hs->listener, 128, http_on_connection)) < 0) {
        log_error("http_listen: %s: %s", spec, uv_strerror(rc));
        return rc;
    }
    log_info("http: serving the status page (/), /metrics, /status and /healthz on %s", spec);
    return 0;
}

void http_stop(struct server *srv)
{
    struct http_server *hs = srv->http;

    if (!hs || hs->stopped)
        return;
    hs->stopped = true;
    if (hs->listener_open) {
        uv_close((uv_handle_t *)&hs->listener, NULL);
        hs->listener_open = false;
    }
    while (hs->conns)
        hc_close(hs->conns);
    page_free(hs->page);
    hs->page = NULL;
}

void http_free(struct server *srv)
{
    struct http_server *hs = srv->http;

    if (!hs)
        return;
    srv->request_latency = NULL;
    page_free(hs->page); /* never started: nothing on the loop */
    net_set_free(hs->allow);
    free(hs);
    srv->http = NULL;
}
