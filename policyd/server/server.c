/* server: listeners, signals, live configuration and counters of the policy service.
 * Accepted connections go to conn.c; decisions go to the pluggable decider (default:
 * cfg->default_action). SIGTERM/SIGINT drain and stop, SIGHUP re-reads the configuration
 * without blocking the loop and keeps the old one if the new one is broken. */
#define LOG_COMPONENT "server"
#include "server.h"

#include "net.h"

#include "conn.h"
#include "util/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A configuration file larger than this is refused on reload. */
#define RELOAD_MAX_BYTES (16u << 20)
#define RELOAD_CHUNK 65536

struct listener {
    union stream_handle h;
    struct server *srv;
    struct listener *next;
    char *spec;
    char *path; /* unix sockets: removed at close if it is still ours */
    dev_t dev;
    ino_t ino;
};

/* A parsed listen endpoint. */
struct endpoint {
    bool is_unix;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct sockaddr_storage addr;
};

uint64_t server_now_ms(const struct server *srv)
{
    return uv_now(srv->loop);
}

uint64_t server_repeat_ms(const struct server *srv)
{
    return srv->cfg->log_repeat_interval > 0 ? (uint64_t)srv->cfg->log_repeat_interval : 0;
}

/* ---- configuration checks ---- */

/* Parses "inet:HOST:PORT", "inet:[V6]:PORT" or "unix:PATH". Host names other than
 * "localhost" are not resolved: a listener must not depend on DNS at start. */
static int endpoint_parse(const char *spec, struct endpoint *ep, char *err, size_t errsz)
{
    memset(ep, 0, sizeof(*ep));
    if (strncmp(spec, "unix:", 5) == 0) {
        const char *path = spec + 5;
        if (!*path) {
            snprintf(err, errsz, "\"%s\": empty socket path", spec);
            return -EINVAL;
        }
        if (strlen(path) >= sizeof(ep->path)) {
            snprintf(err, errsz, "\"%s\": socket path longer than %zu bytes", spec,
                     sizeof(ep->path) - 1);
            return -ENAMETOOLONG;
        }
        ep->is_unix = true;
        memcpy(ep->path, path, strlen(path) + 1);
        return 0;
    }
    if (strncmp(spec, "inet:", 5) != 0) {
        snprintf(err, errsz, "\"%s\": expected inet:HOST:PORT or unix:PATH", spec);
        return -EINVAL;
    }
    const char *hp = spec + 5, *colon;
    char host[INET6_ADDRSTRLEN + 2];
    size_t hlen;
    bool v6 = false;
    if (*hp == '[') {
        const char *close = strchr(hp, ']');
        if (!close || close[1] != ':') {
            snprintf(err, errsz, "\"%s\": expected inet:[ADDRESS]:PORT", spec);
            return -EINVAL;
        }
        hlen = (size_t)(close - hp - 1);
        colon = close + 1;
        hp++;
        v6 = true;
    } else {
        colon = strrchr(hp, ':');
        if (!colon) {
            snprintf(err, errsz, "\"%s\": missing port", spec);
            return -EINVAL;
        }
        hlen = (size_t)(colon - hp);
    }
    if (hlen >= sizeof(host)) {
        snprintf(err, errsz, "\"%s\": bad address", spec);
        return -EINVAL;
    }
    memcpy(host, hp, hlen);
    host[hlen] = 0;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || port < 1 || port > 65535) {
        snprintf(err, errsz, "\"%s\": bad port", spec);
        return -EINVAL;
    }
    if (!v6 && (strcmp(host, "") == 0 || strcmp(host, "*") == 0))
        strcpy(host, "0.0.0.0");
    else if (!v6 && strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    int rc = v6 ? uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ep->addr)
                : uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ep->addr);
    if (rc < 0) {
        snprintf(err, errsz, "\"%s\": bad %s address \"%s\"", spec, v6 ? "IPv6" : "IPv4", host);
        return -EINVAL;
    }
    return 0;
}

/* Calls fn for each blank- or comma-separated word of list; stops at a non-zero return. */
static int foreach_word(const char *list, int (*fn)(const char *word, void *arg), void *arg)
{
    char word[512];
    const char *p = list ? list : "";

    while (*p) {
        p += strspn(p, " \t\r\n,");
        size_t n = strcspn(p, " \t\r\n,");
        if (n == 0)
            break;
        if (n >= sizeof(word))
            n = sizeof(word) - 1;
        memcpy(word, p, n);
        word[n] = 0;
        p += strcspn(p, " \t\r\n,");
        int rc = fn(word, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* Line of the last "name =" in the file's bytes, or 0. */
static unsigned setting_line(const char *buf, size_t len, const char *name)
{
    size_t nlen = strlen(name), i = 0;
    unsigned line = 1, found = 0;

    while (buf && i < len) {
        if (len - i > nlen && memcmp(buf + i, name, nlen) == 0) {
            size_t j = i + nlen;
            while (j < len && (buf[j] == ' ' || buf[j] == '\t'))
                j++;
            if (j < len && buf[j] == '=')
                found = line;
        }
        const char *nl = memchr(buf + i, '\n', len - i);
        if (!nl)
            break;
        i = (size_t)(nl - buf) + 1;
        line++;
    }
    return found;
}

struct check_ctx {
    const char *name, *buf;
    size_t len;
    struct config_errors *errs;
    int problems;
    bool nomem;
};

static void check_add(struct check_ctx *cx, const char *setting, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void check_add(struct check_ctx *cx, const char *setting, const char *fmt, ...)
{
    char text[768], *msg;
    va_list ap;

    cx->problems++;
    if (!cx->errs)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    size_t need = strlen(cx->name) + strlen(text) + 32;
    char **v = realloc(cx->errs->msg, (cx->errs->n + 1) * sizeof(*v));
    msg = malloc(need);
    if (!v || !msg) {
        if (v)
            cx->errs->msg = v;
        free(msg);
        cx->nomem = true;
        return;
    }
    cx->errs->msg = v;
    snprintf(msg, need, "%s:%u: %s", cx->name, setting_line(cx->buf, cx->len, setting), text);
    cx->errs->msg[cx->errs->n++] = msg;
}

static int check_listen_word(const char *word, void *arg)
{
    struct check_ctx *cx = arg;
    struct endpoint ep;
    char err[256];

    if (endpoint_parse(word, &ep, err, sizeof(err)) < 0)
        check_add(cx, "listen", "listen: %s", err);
    return 0;
}

int server_check_config(const struct config *cfg, const char *name, const char *buf, size_t len,
                        struct config_errors *errs)
{
    struct check_ctx cx = {name ? name : "(config)", buf, len, errs, 0, false};
    enum log_level lvl;
    char out[POLICY_MAX_ACTION + 16];

    if (!cfg->listen || !*cfg->listen)
        check_add(&cx, "listen", "listen: no endpoint given");
    else
        foreach_word(cfg->listen, check_listen_word, &cx);
    if (!log_facility_valid(cfg->syslog_facility))
        check_add(&cx, "syslog_facility",
                  "syslog_facility: unknown facility \"%s\" (mail, daemon, user, local0-7)",
                  cfg->syslog_facility ? cfg->syslog_facility : "");
    if (cfg->log_level && *cfg->log_level && log_level_parse(cfg->log_level, &lvl) < 0)
        check_add(&cx, "log_level", "log_level: expected error, warning, info or debug, not \"%s\"",
                  cfg->log_level);
    if (cfg->log_destination && strcmp(cfg->log_destination, "syslog") != 0 &&
        strcmp(cfg->log_destination, "stderr") != 0)
        check_add(&cx, "log_destination", "log_destination: expected syslog or stderr, not \"%s\"",
                  cfg->log_destination);
    if (!cfg->default_action ||
        policy_encode_response(cfg->default_action, strlen(cfg->default_action), out, sizeof(out)) <
            0)
        check_add(&cx, "default_action", "default_action: not a valid policy action");
    if (cfg->max_connections < 1)
        check_add(&cx, "max_connections", "max_connections: must be at least 1");
    if (cfg->max_output_buffer < 64)
        check_add(&cx, "max_output_buffer", "max_output_buffer: must be at least 64 bytes");
    struct net_set *allow = NULL;
    char why[256];
    if (net_set_parse(cfg->http_allow_networks ? cfg->http_allow_networks : "", &allow, why,
                      sizeof(why)) < 0)
        check_add(&cx, "http_allow_networks", "http_allow_networks: %s", why);
    net_set_free(allow);
    return cx.nomem ? -ENOMEM : cx.problems;
}

/* ---- actions and error classes ---- */

enum server_action_class server_action_classify(const char *a, size_t len)
{
    size_t w = 0;

    while (w < len && a[w] != ' ' && a[w] != '\t')
        w++;
#define IS(word) (w == sizeof(word) - 1 && strncasecmp(a, word, w) == 0)
    if (IS("DUNNO"))
        return SERVER_ACT_DUNNO;
    if (IS("OK"))
        return SERVER_ACT_OK;
    if (IS("DEFER") || IS("DEFER_IF_PERMIT") || IS("DEFER_IF_REJECT") || (w == 3 && a[0] == '4'))
        return SERVER_ACT_DEFER;
    if (IS("REJECT") || (w == 3 && a[0] == '5'))
        return SERVER_ACT_REJECT;
#undef IS
    return SERVER_ACT_OTHER;
}

const char *server_action_class_name(enum server_action_class c)
{
    static const char *const names[SERVER_ACT_COUNT] = {"dunno", "ok", "defer", "reject", "other"};
    return (unsigned)c < SERVER_ACT_COUNT ? names[c] : "?";
}

const char *server_err_class_name(enum server_err_class c)
{
    static const char *const names[SERVER_ERR_COUNT] = {
        "none",      "line_too_long",  "too_many_attributes", "request_too_large",
        "nul_byte",  "no_equals",      "empty_name",          "nomem",
        "truncated", "output_overflow"};
    return (unsigned)c < SERVER_ERR_COUNT ? names[c] : "?";
}

/* ---- the default decider ---- */

/* The default decider answers default_action. Tests that need another answer or an
 * asynchronous decision use the test-only build (server/testing.c). */
static int default_decide(struct decider *d, struct decision *dec)
{
    const char *a = dec->srv->cfg->default_action;

    dec->done(dec, a, strlen(a));
    return 0;
}

struct server_status_builder {
    server_status_fn fn;
    void *arg;
};

struct metrics *server_metrics(struct server *srv)
{
    if (!srv->metrics)
        srv->metrics = metrics_new();
    return srv->metrics;
}

int server_add_status(struct server *srv, server_status_fn fn, void *arg)
{
    if (srv->n_status_builders == srv->cap_status_builders) {
        size_t nc = srv->cap_status_builders ? srv->cap_status_builders * 2 : 4;
        void *p = realloc(srv->status_builders, nc * sizeof(*srv->status_builders));
        if (!p)
            return -ENOMEM;
        srv->status_builders = p;
        srv->cap_status_builders = nc;
    }
    srv->status_builders[srv->n_status_builders].fn = fn;
    srv->status_builders[srv->n_status_builders].arg = arg;
    srv->n_status_builders++;
    return 0;
}

void server_status_fill(struct server *srv, json_t *status)
{
    for (size_t i = 0; i < srv->n_status_builders; i++) {
        int rc = srv->status_builders[i].fn(srv, status, srv->status_builders[i].arg);
        if (rc < 0)
            log_debug("status builder %zu failed: %s", i, strerror(-rc));
    }
}

void server_set_decider(struct server *srv, struct decider *d)
{
    srv->decider = d ? d : &srv->default_decider;
}

int server_add_hook(struct server *srv, const struct server_hook *hook)
{
    if (srv->n_hooks == SERVER_MAX_HOOKS)
        return -ENOSPC;
    srv->hooks[srv->n_hooks++] = *hook;
    return 0;
}

/* ---- listeners ---- */

static void listener_on_close(uv_handle_t *h)
{
    struct listener *l = h->data;
    struct stat st;

    /* Remove our socket file, but not one another process put there since. */
    if (l->path && lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        unlink(l->path);
    free(l->spec);
    free(l->path);
    free(l);
}

static void refused_on_close(uv_handle_t *h)
{
    free(h);
}

/* Over the cap (or out of memory): take the connection off the backlog and close it, so
 * the client sees a clean close instead of a hang, and smtpd falls back at once. */
static void listener_refuse(struct listener *l)
{
    struct server *srv = l->srv;
    uv_handle_t *h;

    if (l->h.handle.type == UV_NAMED_PIPE) {
        uv_pipe_t *p = malloc(sizeof(*p));
        if (!p || uv_pipe_init(srv->loop, p, 0) < 0) {
            free(p);
            return;
        }
        h = (uv_handle_t *)p;
    } else {
        uv_tcp_t *t = malloc(sizeof(*t));
        if (!t || uv_tcp_init(srv->loop, t) < 0) {
            free(t);
            return;
        }
        h = (uv_handle_t *)t;
    }
    uv_accept(&l->h.stream, (uv_stream_t *)h);
    uv_close(h, refused_on_close);
}

/* At max_connections: closes the connections whose peer has gone though the loop has not
 * read their EOF yet. libuv accepts a listener's whole backlog in one go before it reads
 * any connection, so a client connecting and closing in a tight loop would otherwise fill
 * the cap with connections that no longer exist. A sweep that frees nothing is not
 * repeated for 10 ms of loop time: at a real overload of live clients it costs one peek
 * per connection. Returns how many were closed. */
static size_t server_reap_gone(struct server *srv)
{
    uint64_t now = server_now_ms(srv);
    size_t n = 0;

    if (srv->reap_fruitless_ms && now - srv->reap_fruitless_ms < 10)
        return 0;
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next; /* conn_reap_if_gone() may unlink c */
        if (conn_reap_if_gone(c))
            n++;
    }
    srv->reap_fruitless_ms = n ? 0 : (now ? now : 1);
    return n;
}

static void listener_on_connection(uv_stream_t *s, int status)
{
    struct listener *l = s->data;
    struct server *srv = l->srv;

    if (status < 0) {
        log_warn_ratelimited(&srv->rl_cap, server_now_ms(srv), server_repeat_ms(srv),
                             "%s: accept: %s", l->spec, uv_strerror(status));
        return;
    }
    if (srv->draining)
        return;
    if (srv->stats.conn_open >= (uint64_t)srv->cfg->max_connections && server_reap_gone(srv))
        log_debug("%s: at max_connections = %lld, closed connections whose peer had gone", l->spec,
                  (long long)srv->cfg->max_connections);
    if (srv->stats.conn_open >= (uint64_t)srv->cfg->max_connections) {
        srv->stats.conn_refused_over_cap++;
        log_warn_ratelimited(&srv->rl_cap, server_now_ms(srv), server_repeat_ms(srv),
                             "%s: %llu connections open (max_connections = %lld): refusing a "
                             "new client",
                             l->spec, (unsigned long long)srv->stats.conn_open,
                             (long long)srv->cfg->max_connections);
        listener_refuse(l);
        return;
    }
    int rc = conn_accept(srv, s);
    if (rc < 0) {
        log_warn_ratelimited(&srv->rl_cap, server_now_ms(srv), server_repeat_ms(srv),
                             "%s: accept: %s", l->spec, uv_strerror(rc));
        listener_refuse(l);
    }
}

/* Unix socket at path: a non-socket is never touched, a live socket is an error, a stale
 * one (nobody accepts: ECONNREFUSED) is removed. Synchronous: start-up only. */
static int unix_path_prepare(const char *path)
{
    struct stat st;
    struct sockaddr_un sun;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        log_error("unix:%s: the file exists and is not a socket; not replacing it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
    int err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN) {
        log_error("unix:%s: another server is listening on this socket", path);
        return -EADDRINUSE;
    }
    if (err != ECONNREFUSED) {
        log_error("unix:%s: cannot probe the existing socket: %s", path, strerror(err));
        return -err;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        log_error("unix:%s: cannot remove the stale socket: %s", path, strerror(errno));
        return -errno;
    }
    log_info("unix:%s: removed a stale socket", path);
    return 0;
}

static int lookup_ids(const struct config *cfg, uid_t *uid, gid_t *gid)
{
    *uid = (uid_t)-1;
    *gid = (gid_t)-1;
    if (cfg->listen_unix_owner && *cfg->listen_unix_owner) {
        struct passwd *pw = getpwnam(cfg->listen_unix_owner);
        if (!pw) {
            log_error("listen_unix_owner: unknown user \"%s\"", cfg->listen_unix_owner);
            return -EINVAL;
        }
        *uid = pw->pw_uid;
    }
    if (cfg->listen_unix_group && *cfg->listen_unix_group) {
        struct group *gr = getgrnam(cfg->listen_unix_group);
        if (!gr) {
            log_error("listen_unix_group: unknown group \"%s\"", cfg->listen_unix_group);
            return -EINVAL;
        }
        *gid = gr->gr_gid;
    }
    return 0;
}

static int listener_open(struct server *srv, const char *spec)
{
    struct endpoint ep;
    char err[256];
    int rc;

    rc = endpoint_parse(spec, &ep, err, sizeof(err));
    if (rc < 0) {
        log_error("listen: %s", err);
        return rc;
    }
    struct listener *l = calloc(1, sizeof(*l));
    if (!l || !(l->spec = strdup(spec))) {
        free(l);
        return -ENOMEM;
    }
    l->srv = srv;
    if (ep.is_unix) {
        uid_t uid;
        gid_t gid;
        struct stat st;
        if ((rc = lookup_ids(srv->cfg, &uid, &gid)) < 0 || (rc = unix_path_prepare(ep.path)) < 0) {
            free(l->spec);
            free(l);
            return rc;
        }
        if ((rc = uv_pipe_init(srv->loop, &l->h.pipe, 0)) < 0) {
            free(l->spec);
            free(l);
            return rc;
        }
        l->h.handle.data = l;
        l->next = srv->listeners;
        srv->listeners = l;
        /* The socket is born with its mode: bind under a umask that leaves exactly
         * listen_unix_mode, so no chmod by path follows (the directory may belong to
         * someone who could swap the name for a symlink between bind and chmod). This
         * runs at start-up, before the loop or any other thread creates files. */
        mode_t old_umask = umask(~(mode_t)srv->cfg->listen_unix_mode & 0777);
        rc = uv_pipe_bind(&l->h.pipe, ep.path);
        umask(old_umask);
        if (rc < 0) {
            log_error("%s: bind: %s", spec, uv_strerror(rc));
            return rc;
        }
        l->path = strdup(ep.path);
        if (!l->path)
            return -ENOMEM;
        if (lstat(ep.path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
            log_error("%s: not a socket after bind (replaced?)", spec);
            return -EEXIST;
        }
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        /* Postfix's smtpd (user postfix) connects: mode, owner and group decide that.
         * lchown never follows a symlink, so a name swapped after the lstat above
         * changes at most the owner of that link. */
        if ((uid != (uid_t)-1 || gid != (gid_t)-1) && lchown(ep.path, uid, gid) < 0) {
            rc = -errno;
            log_error("%s: chown: %s", spec, strerror(errno));
            return rc;
        }
    } else {
        if ((rc = uv_tcp_init(srv->loop, &l->h.tcp)) < 0) {
            free(l->spec);
            free(l);
            return rc;
        }
        l->h.handle.data = l;
        l->next = srv->listeners;
        srv->listeners = l;
        unsigned flags = ep.addr.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
        if ((rc = uv_tcp_bind(&l->h.tcp, (struct sockaddr *)&ep.addr, flags)) < 0) {
            log_error("%s: bind: %s", spec, uv_strerror(rc));
            return rc;
        }
    }
    if ((rc = uv_listen(&l->h.stream, SOMAXCONN, listener_on_connection)) < 0) {
        log_error("%s: listen: %s", spec, uv_strerror(rc));
        return rc;
    }
    log_info("listening on %s", spec);
    return 0;
}

static int listener_open_word(const char *word, void *arg)
{
    return listener_open(arg, word);
}

static void listeners_close(struct server *srv)
{
    struct listener *l = srv->listeners;

    srv->listeners = NULL;
    while (l) {
        struct listener *next = l->next;
        uv_close(&l->h.handle, listener_on_close);
        l = next;
    }
}

/* ---- reload (SIGHUP) ---- */

static void reload_read(struct server *srv);

enum hook_event { HOOK_RELOAD_BEGIN, HOOK_RELOAD_END, HOOK_DRAIN };

/* Tells the hooks (sdnotify among them) that a reload began or ended, or draining began. */
static void run_hooks(struct server *srv, enum hook_event ev)
{
    for (size_t i = 0; i < srv->n_hooks; i++) {
        const struct server_hook *h = &srv->hooks[i];
        void (*fn)(struct server *, void *) = ev == HOOK_RELOAD_BEGIN ? h->on_reload_begin
                                              : ev == HOOK_RELOAD_END ? h->on_reload_end
                                                                      : h->on_drain;
        if (fn)
            fn(srv, h->arg);
    }
}

static void reload_done(struct server *srv)
{
    free(srv->reload_buf);
    srv->reload_buf = NULL;
    srv->reload_len = srv->reload_cap = 0;
    srv->reload_busy = false;
    run_hooks(srv, HOOK_RELOAD_END);
    if (srv->reload_again && !srv->draining) {
        srv->reload_again = false;
        server_reload(srv);
    }
}

static bool str_differs(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") != 0;
}

static void reload_apply(struct server *srv)
{
    struct config_errors errs = {0};
    struct config *cfg = NULL;
    int rc;

    rc = config_parse_buffer(srv->config_path, srv->reload_buf, srv->reload_len, &cfg, &errs);
    if (rc == 0) {
        rc = server_check_config(cfg, srv->config_path, srv->reload_buf, srv->reload_len, &errs);
        if (rc != 0) {
            config_free(cfg);
            cfg = NULL;
            rc = rc < 0 ? rc : -EINVAL;
        }
    }
    /* Components refuse what they cannot use (bad rate-limit rules) before the swap. */
    for (size_t i = 0; rc == 0 && i < srv->n_hooks; i++) {
        if (srv->hooks[i].on_check)
            rc = srv->hooks[i].on_check(srv, cfg, &errs, srv->hooks[i].arg);
        if (rc != 0) {
            config_free(cfg);
            cfg = NULL;
            rc = rc < 0 ? rc : -EINVAL;
        }
    }
    if (rc < 0) {
        srv->stats.reload_failures++;
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msg[i]);
        log_error("reload: %s has errors (%s); keeping the current configuration", srv->config_path,
                  strerror(-rc));
        config_errors_clear(&errs);
        return;
    }
    /* A good file may still carry warnings (a setting given twice). */
    for (size_t i = 0; i < errs.n; i++)
        log_warn("%s", errs.msg[i]);
    config_errors_clear(&errs);

    struct config *old = srv->cfg;
    static const char *const restart_names[] = {
        "listen", "listen_unix_mode", "listen_unix_owner", "listen_unix_group", "user", "group"};
    bool restart[6] = {
        str_differs(old->listen, cfg->listen),
        old->listen_unix_mode != cfg->listen_unix_mode,
        str_differs(old->listen_unix_owner, cfg->listen_unix_owner),
        str_differs(old->listen_unix_group, cfg->listen_unix_group),
        str_differs(old->user, cfg->user),
        str_differs(old->group, cfg->group),
    };
    if (log_configure(cfg, srv->foreground, srv->verbose) < 0)
        log_warn("reload: cannot apply the new log settings; keeping the old ones");
    srv->cfg = cfg;
    srv->stats.reloads++;
    log_info("reload: configuration reloaded from %s", srv->config_path);
    for (size_t i = 0; i < 6; i++)
        if (restart[i])
            log_warn("reload: %s changed; it takes effect after a restart of postsurge",
                     restart_names[i]);
    for (size_t i = 0; i < srv->n_hooks; i++)
        if (srv->hooks[i].on_reload)
            srv->hooks[i].on_reload(srv, old, srv->hooks[i].arg);
    config_free(old);
}

static void reload_on_close(uv_fs_t *req)
{
    struct server *srv = container_of(req, struct server, reload_req);
    bool ok = srv->reload_buf != NULL;

    uv_fs_req_cleanup(req);
    if (ok && !srv->draining)
        reload_apply(srv);
    reload_done(srv);
}

/* A SIGHUP that cannot read the file: counted, logged, and the running configuration
 * stays. */
static void reload_failed(struct server *srv, const char *what, int err)
{
    srv->stats.reload_failures++;
    log_error("reload: cannot %s %s: %s; keeping the current configuration", what, srv->config_path,
              uv_strerror(err));
}

static void reload_finish(struct server *srv, bool ok)
{
    if (!ok) {
        free(srv->reload_buf);
        srv->reload_buf = NULL;
    }
    if (uv_fs_close(srv->loop, &srv->reload_req, srv->reload_fd, reload_on_close) < 0)
        reload_done(srv);
}

/* The open and each read of the configuration file end here. */
static void reload_on_fs(uv_fs_t *req)
{
    struct server *srv = container_of(req, struct server, reload_req);
    ssize_t n = req->result;
    bool opened = req->fs_type == UV_FS_OPEN;

    uv_fs_req_cleanup(req);
    if (n < 0) {
        reload_failed(srv, opened ? "open" : "read", (int)n);
        if (opened)
            reload_done(srv);
        else
            reload_finish(srv, false);
        return;
    }
    if (opened) {
        srv->reload_fd = (uv_file)n;
    } else if (n == 0) {
        reload_finish(srv, true);
        return;
    } else {
        srv->reload_len += (size_t)n;
    }
    reload_read(srv);
}

static void reload_read(struct server *srv)
{
    if (srv->reload_cap - srv->reload_len < RELOAD_CHUNK) {
        if (srv->reload_cap >= RELOAD_MAX_BYTES) {
            srv->stats.reload_failures++;
            log_error("reload: %s is larger than %u bytes; keeping the current configuration",
                      srv->config_path, RELOAD_MAX_BYTES);
            reload_finish(srv, false);
            return;
        }
        size_t cap = srv->reload_cap ? srv->reload_cap * 2 : RELOAD_CHUNK * 2;
        char *p = realloc(srv->reload_buf, cap);
        if (!p) {
            log_error("reload: out of memory; keeping the current configuration");
            reload_finish(srv, false);
            return;
        }
        srv->reload_buf = p;
        srv->reload_cap = cap;
    }
    uv_buf_t b = uv_buf_init(srv->reload_buf + srv->reload_len,
                             (unsigned)(srv->reload_cap - srv->reload_len));
    int rc = uv_fs_read(srv->loop, &srv->reload_req, srv->reload_fd, &b, 1,
                        (int64_t)srv->reload_len, reload_on_fs);
    if (rc < 0) {
        reload_failed(srv, "read", rc);
        reload_finish(srv, false);
    }
}

void server_reload(struct server *srv)
{
    if (srv->draining)
        return;
    if (srv->reload_busy) {
        srv->reload_again = true;
        return;
    }
    log_info("reload: reading %s", srv->config_path);
    srv->reload_busy = true;
    run_hooks(srv, HOOK_RELOAD_BEGIN);
    int rc = uv_fs_open(srv->loop, &srv->reload_req, srv->config_path, O_RDONLY | O_CLOEXEC, 0,
                        reload_on_fs);
    if (rc < 0) {
        log_error("reload: cannot open %s: %s", srv->config_path, uv_strerror(rc));
        srv->reload_busy = false;
        run_hooks(srv, HOOK_RELOAD_END);
    }
}

/* ---- signals and shutdown ---- */

static void on_signal(uv_signal_t *s, int signum)
{
    struct server *srv = s->data;

    if (signum == SIGHUP) {
        server_reload(srv);
        return;
    }
    log_info("%s: %s", strsignal(signum),
             srv->draining ? "closing every connection now" : "stopping");
    server_stop(srv);
}

static void server_finish(struct server *srv)
{
    if (srv->handles_closed)
        return;
    srv->handles_closed = true;
    for (size_t i = 0; i < srv->n_hooks; i++)
        if (srv->hooks[i].on_stop)
            srv->hooks[i].on_stop(srv, srv->hooks[i].arg);
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    uv_close((uv_handle_t *)&srv->sig_hup, NULL);
    uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    log_info("stopped: %llu requests, %llu connections", (unsigned long long)srv->stats.requests,
             (unsigned long long)srv->stats.conn_accepted);
}

void server_conn_closed(struct server *srv)
{
    if (srv->draining && !srv->conns)
        server_finish(srv);
}

static void close_all_conns(struct server *srv)
{
    while (srv->conns)
        conn_close(srv->conns);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct server *srv = container_of(t, struct server, drain_timer);
    size_t n = 0;

    for (struct conn *c = srv->conns; c; c = c->next)
        n++;
    log_warn("%zu connections still busy after %d ms; closing them", n, SERVER_DRAIN_GRACE_MS);
    close_all_conns(srv);
}

void server_stop(struct server *srv)
{
    if (srv->handles_closed)
        return;
    if (srv->draining) {
        close_all_conns(srv);
        return;
    }
    srv->draining = true;
    run_hooks(srv, HOOK_DRAIN);
    listeners_close(srv);
    uv_timer_start(&srv->drain_timer, on_drain_timeout, SERVER_DRAIN_GRACE_MS, 0);
    /* conn_drain() may close and unlink the conn: take the next one first. */
    for (struct conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        conn_drain(c);
    }
    server_conn_closed(srv);
}

/* ---- life cycle ---- */

struct server *server_new(uv_loop_t *loop, struct config *cfg, const char *config_path)
{
    struct server *srv = calloc(1, sizeof(*srv));

    if (!srv)
        return NULL;
    srv->config_path = strdup(config_path ? config_path : "");
    if (!srv->config_path) {
        free(srv);
        return NULL;
    }
    srv->loop = loop;
    srv->cfg = cfg;
    srv->default_decider.start = default_decide;
    srv->decider = &srv->default_decider;
    uv_signal_init(loop, &srv->sig_term);
    uv_signal_init(loop, &srv->sig_int);
    uv_signal_init(loop, &srv->sig_hup);
    uv_timer_init(loop, &srv->drain_timer);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv;
    /* Nothing should keep the loop alive but listeners and connections: a draining
     * server's timer must not delay exit once the last connection is gone. */
    uv_unref((uv_handle_t *)&srv->drain_timer);
    return srv;
}

void server_free(struct server *srv)
{
    if (!srv)
        return;
    config_free(srv->cfg);
    metrics_free(srv->metrics);
    free(srv->status_builders);
    free(srv->reload_buf);
    free(srv->config_path);
    free(srv);
}

int server_start(struct server *srv)
{
    struct sigaction sa;
    int rc;

    /* A peer that vanishes mid-write must cost us an EPIPE, not the process. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    /* A file over RLIMIT_FSIZE (set by an administrator or a container) must fail the
     * write with EFBIG, handled like a full disk, instead of killing the daemon. */
    sigaction(SIGXFSZ, &sa, NULL);

    uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, on_signal, SIGHUP);
    rc = foreach_word(srv->cfg->listen, listener_open_word, srv);
    if (rc == 0 && !srv->listeners) {
        log_error("listen: no endpoint given");
        rc = -EINVAL;
    }
    return rc < 0 ? rc : 0;
}
