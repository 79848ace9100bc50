/* server: the policy service's skeleton. Owns the libuv listeners, the connection list,
 * the live configuration (swapped on SIGHUP), the signal handlers and the counters a
 * metrics endpoint reads. Requests reach a pluggable `struct decider`; the default one
 * answers cfg->default_action. Loop thread only. */
#pragma once

#include "config.h"
#include "util/container.h"
#include "util/log.h"
#include "policy.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct server;
struct conn;
struct metrics;
struct metrics_series;
struct server_status_builder;
struct listener;

/* One decision in flight, embedded in its connection. The decider reads `req` (borrowed:
 * valid until it calls done or is cancelled) and `srv`, and may use `engine_data` for
 * its own state. It reports with dec->done(dec, action, len) exactly once, unless
 * cancelled first. */
struct decision {
    const struct policy_request *req;
    struct server *srv;
    const char *peer; /* "127.0.0.1:53412" or "unix", for log lines */
    void (*done)(struct decision *dec, const char *action, size_t action_len);
    void *engine_data;
    /* Per-connection state of the decider (e.g. rate-limit dedup), kept across the
     * connection's requests; the connection calls conn_state_free(conn_state) once
     * when it is freed. Both NULL until the decider sets them. */
    void *conn_state;
    void (*conn_state_free)(void *conn_state);
    /* Set by a decider that logged this decision itself at info level: the connection
     * then logs its own line at debug only (one info line per decision). */
    bool logged;
};

/* The decision engine. start() returns 0 and calls dec->done() later or before it
 * returns (both are fine), or returns a negative errno and never calls done (the
 * connection then answers cfg->default_action: fail open). cancel() is called when the
 * connection closes while a decision is pending; after it returns, done must not be
 * called for that decision and dec is freed soon after. */
struct decider {
    int (*start)(struct decider *d, struct decision *dec);
    void (*cancel)(struct decider *d, struct decision *dec);
    void *data;
};

/* Reply classes counted per action (access(5) result families). */
enum server_action_class {
    SERVER_ACT_DUNNO,
    SERVER_ACT_OK,
    SERVER_ACT_DEFER,  /* 4NN, DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT */
    SERVER_ACT_REJECT, /* 5NN, REJECT */
    SERVER_ACT_OTHER,  /* HOLD, DISCARD, PREPEND, WARN, FILTER, ... */
    SERVER_ACT_COUNT
};

/* Protocol errors by class: the policy parser's errors (index -status, 1..7) and ours. */
enum server_err_class {
    SERVER_ERR_NONE = 0,
    SERVER_ERR_LINE_TOO_LONG = 1,
    SERVER_ERR_TOO_MANY_ATTRS,
    SERVER_ERR_REQUEST_TOO_LARGE,
    SERVER_ERR_NUL,
    SERVER_ERR_NO_EQUALS,
    SERVER_ERR_EMPTY_NAME,
    SERVER_ERR_NOMEM,
    SERVER_ERR_TRUNCATED,       /* peer closed in the middle of a request */
    SERVER_ERR_OUTPUT_OVERFLOW, /* unread replies over max_output_buffer */
    SERVER_ERR_COUNT
};

/* Counters, monotonic unless noted. Read them from the loop thread. */
struct server_stats {
    uint64_t requests;
    uint64_t replies[SERVER_ACT_COUNT];
    uint64_t decide_failures; /* decider start() failed: answered default_action */
    uint64_t protocol_errors[SERVER_ERR_COUNT];
    uint64_t conn_accepted;
    uint64_t conn_open; /* gauge */
    uint64_t conn_refused_over_cap;
    uint64_t conn_reaped; /* closed by their peer, found so at the cap before the loop read it */
    uint64_t conn_idle_closed;
    uint64_t conn_read_errors;
    uint64_t reloads;
    uint64_t reload_failures;
};

/* What other components (store, monitor, http) hook into. on_reload runs after a good
 * configuration was swapped in (srv->cfg is the new one, old_cfg is freed right after
 * the hooks return: copy what you keep). on_stop runs once when the server starts to
 * shut down: close your handles so the loop can end. Either may be NULL. */
struct server_hook {
    /* on_check runs on SIGHUP before a parsed configuration is swapped in: return 0 if
     * new_cfg is fine for this component, else append "FILE:LINE: message" to errs and
     * return a negative errno: the reload is refused and the old configuration stays. */
    int (*on_check)(struct server *srv, const struct config *new_cfg, struct config_errors *errs,
                    void *arg);
    void (*on_reload)(struct server *srv, const struct config *old_cfg, void *arg);
    void (*on_stop)(struct server *srv, void *arg);
    /* A SIGHUP reload begins (reading the file) and has ended, well or not (the outcome
     * is in srv->stats.reload_failures); shutdown has begun (draining). */
    void (*on_reload_begin)(struct server *srv, void *arg);
    void (*on_reload_end)(struct server *srv, void *arg);
    void (*on_drain)(struct server *srv, void *arg);
    void *arg;
};

#define SERVER_MAX_HOOKS 16
/* How long SIGTERM waits for requests in flight before closing everything. */
#define SERVER_DRAIN_GRACE_MS 5000

struct server {
    uv_loop_t *loop;
    struct config *cfg;       /* owned; replaced on reload */
    char *config_path;        /* owned copy; re-read on SIGHUP */
    bool foreground, verbose; /* for log_configure() on reload */
    struct listener *listeners;
    struct conn *conns; /* open connections (closing ones are unlinked) */
    struct decider *decider;
    struct decider default_decider;
    struct server_stats stats;
    struct server_hook hooks[SERVER_MAX_HOOKS];
    size_t n_hooks;
    struct http_server *http; /* the endpoint: http.h */
    struct metrics *metrics;  /* the registry /metrics serves: server_metrics() */
    struct server_status_builder *status_builders; /* server_add_status() */
    size_t n_status_builders, cap_status_builders;
    /* Request latency histogram (postsurge_request_duration_seconds), registered by
     * http_start() and fed by conn.c; NULL before that. */
    struct metrics_series *request_latency;

    uv_signal_t sig_term, sig_int, sig_hup, sig_pipe;
    uv_timer_t drain_timer;
    bool draining;
    bool handles_closed;
    uint64_t next_conn_id;

    /* Asynchronous reload (SIGHUP): open, read in chunks, close, parse. */
    uv_fs_t reload_req;
    uv_file reload_fd;
    char *reload_buf;
    size_t reload_len, reload_cap;
    bool reload_busy, reload_again;

    struct log_ratelimit rl_cap, rl_proto, rl_overflow, rl_decide;
    uint64_t reap_fruitless_ms; /* loop time of the last sweep at the cap that freed nothing */
};

/* New server on loop with cfg (the server steals it) read from config_path (copied).
 * Nothing listens yet. Returns NULL on ENOMEM. */
struct server *server_new(uv_loop_t *loop, struct config *cfg, const char *config_path);
/* Frees a server whose loop has finished (after server_stop() and uv_run()). NULL is a
 * no-op. */
void server_free(struct server *srv);

/* Opens every listener in cfg->listen and installs the signal handlers. Logs each
 * failure; returns 0 or a negative errno (then call server_stop(), uv_run(), free). */
int server_start(struct server *srv);

/* Starts a graceful shutdown: stop accepting, answer requests in flight, close every
 * connection (forcibly after SERVER_DRAIN_GRACE_MS), run the on_stop hooks and close the
 * server's handles. uv_run() returns when every component has closed its handles.
 * Idempotent; a second call closes connections at once. */
void server_stop(struct server *srv);

/* Re-reads config_path asynchronously and swaps it in if it parses (what SIGHUP does). */
void server_reload(struct server *srv);

/* Replaces the decision engine (borrowed; NULL restores the default). Decisions already
 * pending stay with the engine that started them. */
void server_set_decider(struct server *srv, struct decider *d);

/* Registers hooks (copied). Returns 0 or -ENOSPC. */
int server_add_hook(struct server *srv, const struct server_hook *hook);

/* The metrics registry of srv (created on first use, freed by server_free). Components
 * register their families here at start-up or reload, e.g.
 *   struct metric *f = metrics_counter_new(server_metrics(srv), "postsurge_x_total", "...",
 *                                          NULL);
 * Returns NULL on ENOMEM (metrics_* calls accept NULL and do nothing). */
struct metrics *server_metrics(struct server *srv);

/* A status builder adds its part to the node status JSON (borrowed; add keys with
 * json_object_set_new, e.g. "services", "stress", "overrides"). Returns 0 or a negative
 * errno (logged; the other parts are still served). */
typedef int (*server_status_fn)(struct server *srv, json_t *status, void *arg);
/* Registers a builder, run in registration order by server_status_fill (the http
 * endpoint's /status). Returns 0 or -ENOMEM. */
int server_add_status(struct server *srv, server_status_fn fn, void *arg);
/* Runs every status builder on status. */
void server_status_fill(struct server *srv, json_t *status);

/* Checks what the server itself needs from a parsed configuration, beyond config.c's
 * checks: listen endpoints, syslog facility, log level and destination, the default
 * action. Appends "NAME:LINE: message" to errs (buf/len, the file's bytes, locate the
 * setting's line; may be NULL). Returns the number of problems (0: fine), or -ENOMEM. */
int server_check_config(const struct config *cfg, const char *name, const char *buf, size_t len,
                        struct config_errors *errs);

/* The class of a reply action ("DUNNO", "450 4.7.1 ...") and the class's name for metrics
 * ("dunno", "ok", "defer", "reject", "other"). */
enum server_action_class server_action_classify(const char *action, size_t len);
const char *server_action_class_name(enum server_action_class c);
/* The name of an error class for logs and metrics ("line_too_long", "truncated"). */
const char *server_err_class_name(enum server_err_class c);

/* For conn.c: a connection left srv->conns; a draining server may finish. */
void server_conn_closed(struct server *srv);

/* Monotonic milliseconds of the loop, for log rate limits. */
uint64_t server_now_ms(const struct server *srv);
/* The configured interval between repeats of one warning (log_repeat_interval), in ms. */
uint64_t server_repeat_ms(const struct server *srv);
