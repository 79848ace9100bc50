/* sdnotify: the sd_notify(3) protocol without libsystemd. A notification is one datagram
 * of "NAME=VALUE" lines sent to the unix socket named by $NOTIFY_SOCKET; the supervisor
 * reads our pid from the socket credentials, so nothing else is needed. Readiness, reload
 * and stop come from main.c and server.c; the watchdog pings from a libuv timer, so they
 * stop exactly when the loop stops turning. */
#define LOG_COMPONENT "sdnotify"
#include "sdnotify.h"
#include "util/log.h"
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* STATUS= text is cut here; systemd shows one line of it in `systemctl status`. */
#define SDN_STATUS_MAX 200

static struct {
    int fd;
    struct sockaddr_un addr;
    socklen_t addr_len;
    bool enabled;
    bool stopping;
    unsigned long long watchdog_usec; /* the supervisor's deadline, 0 = no watchdog */
    uv_timer_t timer;
    bool timer_active;
    uint64_t reload_failures_at_start;
} sdn = {.fd = -1};

/* Parses an unsigned decimal; false for empty, junk or overflow. */
static bool parse_ull(const char *s, unsigned long long *out)
{
    char *end;

    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno == 0 && *end == '\0';
}

/* Fills sdn.addr from NOTIFY_SOCKET: "/path" or "@abstract". Returns 0 or -EINVAL. */
static int parse_address(const char *name)
{
    size_t n = strlen(name);

    memset(&sdn.addr, 0, sizeof(sdn.addr));
    sdn.addr.sun_family = AF_UNIX;
    if (n < 2 || (name[0] != '/' && name[0] != '@') || n >= sizeof(sdn.addr.sun_path))
        return -EINVAL;
    memcpy(sdn.addr.sun_path, name, n);
    /* An abstract name has no terminating NUL: its length is exactly what we pass. */
    if (name[0] == '@') {
        sdn.addr.sun_path[0] = '\0';
        sdn.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        sdn.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    return 0;
}

int sdnotify_init(void)
{
    const char *name = getenv("NOTIFY_SOCKET");
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    unsigned long long v, p;
    int rc = 0;

    if (sdn.enabled || sdn.fd >= 0)
        return sdn.enabled ? 1 : 0;
    sdn.watchdog_usec = 0;
    /* The watchdog is ours unless WATCHDOG_PID names another process (a wrapper script
     * that exec'd us keeps its pid, so equal is the common case). */
    if (usec && parse_ull(usec, &v) && v > 0) {
        if (!pid || (parse_ull(pid, &p) && p == (unsigned long long)getpid()))
            sdn.watchdog_usec = v;
        else
            log_debug("WATCHDOG_PID=%s is not us: no watchdog pings", pid);
    } else if (usec) {
        log_warn("WATCHDOG_USEC=%s: not a positive number; no watchdog pings", usec);
    }
    if (name && *name) {
        rc = parse_address(name);
        if (rc < 0) {
            log_warn("NOTIFY_SOCKET=%s: not a unix socket path or @name; not notifying", name);
        } else {
            sdn.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            if (sdn.fd < 0) {
                rc = -errno;
                log_warn("NOTIFY_SOCKET: socket: %s; not notifying", strerror(errno));
            } else {
                sdn.enabled = true;
                rc = 1;
            }
        }
    }
    if (!sdn.enabled)
        sdn.watchdog_usec = 0;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return rc;
}

bool sdnotify_enabled(void)
{
    return sdn.enabled;
}

unsigned long long sdnotify_watchdog_interval_usec(void)
{
    return sdn.watchdog_usec / 2;
}

int sdnotify_send(const char *state)
{
    if (!sdn.enabled)
        return 0;
    /* Non-blocking: a supervisor that does not read must not stall the loop. A lost
     * watchdog ping is retried by the next tick; a lost READY shows as a start timeout. */
    ssize_t n = sendto(sdn.fd, state, strlen(state), MSG_NOSIGNAL,
                       (const struct sockaddr *)&sdn.addr, sdn.addr_len);
    if (n < 0)
        return -errno;
    return 1;
}

/* Sends state, logging a failure (the caller has nothing better to do about it). */
static void send_logged(const char *state)
{
    int rc = sdnotify_send(state);
    if (rc < 0)
        log_warn("cannot notify the service manager (%.20s...): %s", state, strerror(-rc));
}

/* Sends "HEAD\nSTATUS=text", the text flattened to one line (listen may span lines). */
static void send_with_status(const char *head, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void send_with_status(const char *head, const char *fmt, ...)
{
    char status[SDN_STATUS_MAX], msg[SDN_STATUS_MAX + 64];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(status, sizeof(status), fmt, ap);
    va_end(ap);
    for (char *p = status; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    snprintf(msg, sizeof(msg), "%s\nSTATUS=%s", head, status);
    send_logged(msg);
}

static void sdnotify_reloading(struct server *srv)
{
    struct timespec ts;
    char msg[96];

    if (!sdn.enabled || sdn.stopping)
        return;
    sdn.reload_failures_at_start = srv->stats.reload_failures;
    /* MONOTONIC_USEC lets newer systemd (Type=notify-reload) tell this reload from an
     * older one; older versions ignore it. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg),
             "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    send_logged(msg);
}

static void sdnotify_reload_done(struct server *srv)
{
    if (!sdn.enabled || sdn.stopping)
        return;
    if (srv->stats.reload_failures != sdn.reload_failures_at_start)
        send_with_status("READY=1", "reload of %s failed; serving the previous configuration",
                         srv->config_path);
    else
        send_with_status("READY=1", "serving on %s", srv->cfg->listen);
}

static void sdnotify_stopping(struct server *srv)
{
    if (!sdn.enabled || sdn.stopping)
        return;
    sdn.stopping = true;
    send_logged("STOPPING=1\nSTATUS=stopping");
}

static void on_watchdog(uv_timer_t *t)
{
    send_logged("WATCHDOG=1");
}

static void timer_on_close(uv_handle_t *h)
{
    sdn.timer_active = false;
}

static void on_server_stop(struct server *srv, void *arg)
{
    sdnotify_stopping(srv);
    if (sdn.timer_active && !uv_is_closing((uv_handle_t *)&sdn.timer))
        uv_close((uv_handle_t *)&sdn.timer, timer_on_close);
}

static void on_reload_begin(struct server *srv, void *arg)
{
    sdnotify_reloading(srv);
}

static void on_reload_end(struct server *srv, void *arg)
{
    sdnotify_reload_done(srv);
}

static void on_drain(struct server *srv, void *arg)
{
    sdnotify_stopping(srv);
}

int sdnotify_attach(struct server *srv)
{
    struct server_hook hook = {.on_reload_begin = on_reload_begin,
                               .on_reload_end = on_reload_end,
                               .on_drain = on_drain,
                               .on_stop = on_server_stop};
    int rc;

    if (!sdn.enabled)
        return 0;
    rc = server_add_hook(srv, &hook);
    if (rc < 0)
        log_error("cannot hook the server: %s", strerror(-rc));
    return rc;
}

int sdnotify_serve(struct server *srv)
{
    if (!sdn.enabled)
        return 0;
    sdn.stopping = false;
    if (sdn.watchdog_usec > 0 && !sdn.timer_active) {
        uint64_t ms = sdn.watchdog_usec / 2000;
        if (ms == 0)
            ms = 1;
        uv_timer_init(srv->loop, &sdn.timer);
        /* The timer alone must never keep the loop alive; on_server_stop closes it. */
        uv_unref((uv_handle_t *)&sdn.timer);
        sdn.timer_active = true;
        uv_timer_start(&sdn.timer, on_watchdog, ms, ms);
        log_info("watchdog: pinging every %llu ms (deadline %llu ms)", (unsigned long long)ms,
                 sdn.watchdog_usec / 1000);
        /* The first ping goes out with READY, so the deadline starts from a fresh ping. */
        send_with_status("READY=1\nWATCHDOG=1", "serving on %s", srv->cfg->listen);
    } else {
        send_with_status("READY=1", "serving on %s", srv->cfg->listen);
    }
    return 0;
}
