/* cmd_report: `postsurge report`, the health report for cron and monitoring systems.
 * Gathers what it can see (the daemon's /status with the cluster's nodes and events, the
 * local Postfix processes, `postqueue -j` streamed through lib/queue, the mail log since
 * the last run through report_traffic), compares the figures with their baselines, turns
 * thresholds into findings (lib/report) and prints text, JSON or a Prometheus file. Its
 * own state (log position, baselines, last run) is report-state.json in state_directory.
 * Synchronous: a CLI command, not the daemon's loop. */
#define LOG_COMPONENT "report"

#include "cmd.h"
#include "controller.h"
#include "log.h"
#include "report_traffic.h"
#include "spawn.h"

#include "baseline.h"
#include "queue.h"
#include "report.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define STATE_FILE "report-state.json"
#define LOCK_FILE "report.lock"
#define STATE_MAX_BYTES (16 << 20)
#define STATUS_TIMEOUT_MS 3000
#define STATUS_MAX_BYTES (8 << 20)
#define POSTCONF_TIMEOUT_MS 30000
/* Clients handed to the report, by connections and by rejects each. */
#define REPORT_CLIENTS 1000
/* Room for store_key_prefix + "report:baseline:" + the node name. */
#define STORE_KEY_MAX 1024

struct report_opts {
    bool json, quiet, no_traffic;
    const char *prometheus;
};

/* ---- running a command synchronously on a private loop (spawn.c) ---- */

struct run {
    struct queue_stats *qs; /* non-NULL: stream stdout into it */
    int feed_rc;
    bool done;
    int exit_status, term_signal;
    bool timed_out;
    char out[1024]; /* buffered stdout, first line(s) */
    char err[512];  /* stderr, first line */
};

static void run_on_chunk(struct spawn *sp, const char *data, size_t len, void *arg)
{
    struct run *r = arg;
    if (r->feed_rc == 0)
        r->feed_rc = queue_stats_feed(r->qs, data, len);
}

static void first_line(char *dst, size_t size, const char *src, size_t len)
{
    size_t n = 0;
    while (n < len && src[n] != '\n' && n + 1 < size)
        n++;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void run_on_done(struct spawn *sp, const struct spawn_result *res, void *arg)
{
    struct run *r = arg;
    r->done = true;
    r->exit_status = res->exit_status;
    r->term_signal = res->term_signal;
    r->timed_out = res->timed_out;
    first_line(r->out, sizeof(r->out), res->out, res->out_len);
    /* postqueue prints "postqueue: warning: ..." lines first; keep the first one. */
    first_line(r->err, sizeof(r->err), res->err, res->err_len);
}

/* Runs argv to its end. Returns 0 (see r for the outcome) or a negative errno when it
 * could not be started. */
static int run_command(const char *const *argv, uint64_t timeout_ms, struct run *r)
{
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc < 0)
        return rc;
    struct spawn_opts o = {.timeout_ms = timeout_ms, .on_stdout = r->qs ? run_on_chunk : NULL};
    rc = spawn_start(&loop, argv, &o, run_on_done, r, NULL);
    if (rc == 0)
        uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) < 0)
        log_warn("event loop not empty after %s", argv[0]);
    return rc;
}

static void run_describe(const struct run *r, char *buf, size_t size)
{
    if (r->timed_out)
        snprintf(buf, size, "timed out");
    else if (r->term_signal)
        snprintf(buf, size, "killed by signal %d", r->term_signal);
    else
        snprintf(buf, size, "exit status %d%s%s", r->exit_status, r->err[0] ? ": " : "", r->err);
}

/* ---- local Postfix processes ---- */

static bool proc_comm_is(long pid, const char *want)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    if (!fgets(comm, sizeof(comm), f))
        comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, want) == 0;
}

/* Parent PID from /proc/PID/stat, or -1. */
static long proc_ppid(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    char state;
    long ppid;
    if (!p || sscanf(p + 1, " %c %ld", &state, &ppid) != 2 || state == 'Z')
        return -1;
    return ppid;
}

/* master from queue_directory/pid/master.pid, qmgr among its children. */
static void postfix_processes(const char *queue_dir, int *master_up, int *qmgr_up)
{
    char path[PATH_MAX];
    long pid = 0;
    *master_up = *qmgr_up = -1;
    if (!queue_dir || !queue_dir[0])
        return;
    snprintf(path, sizeof(path), "%s/pid/master.pid", queue_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    *master_up = pid > 0 && proc_comm_is(pid, "master") && proc_ppid(pid) >= 0;
    *qmgr_up = 0;
    if (!*master_up)
        return;
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL && !*qmgr_up) {
        char *end;
        long c = strtol(de->d_name, &end, 10);
        if (*end || c <= 0)
            continue;
        if (proc_ppid(c) == pid && proc_comm_is(c, "qmgr"))
            *qmgr_up = 1;
    }
    if (d)
        closedir(d);
}

/* ---- the daemon: /status over http_listen, or its process ---- */

/* A `postsurge ... serve` process using config_path. */
static bool daemon_process_running(const char *config_path)
{
    char want[PATH_MAX];
    if (!realpath(config_path, want))
        snprintf(want, sizeof(want), "%s", config_path);
    DIR *d = opendir("/proc");
    struct dirent *de;
    bool found = false;
    while (d && !found && (de = readdir(d)) != NULL) {
        char *end, path[64], buf[4096];
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || !proc_comm_is(pid, "postsurge"))
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        const char *cfg = POSTSURGE_DEFAULT_CONFIG;
        bool serve = false;
        for (char *a = buf; a < buf + n; a += strlen(a) + 1) {
            if (strcmp(a, "-c") == 0 && a + strlen(a) + 1 < buf + n)
                cfg = a + strlen(a) + 1;
            else if (strncmp(a, "-c", 2) == 0 && a[2])
                cfg = a + 2;
            if (strcmp(a, "serve") == 0)
                serve = true;
        }
        char got[PATH_MAX];
        /* A relative -c is relative to that process's directory. */
        char full[2 * PATH_MAX + 2];
        if (cfg[0] != '/') {
            char cwdlink[64], cwd[PATH_MAX];
            snprintf(cwdlink, sizeof(cwdlink), "/proc/%ld/cwd", pid);
            ssize_t k = readlink(cwdlink, cwd, sizeof(cwd) - 1);
            cwd[k > 0 ? k : 0] = '\0';
            snprintf(full, sizeof(full), "%s/%s", cwd, cfg);
            cfg = full;
        }
        if (!realpath(cfg, got) && snprintf(got, sizeof(got), "%s", cfg) >= (int)sizeof(got))
            continue;
        found = serve && strcmp(got, want) == 0;
    }
    if (d)
        closedir(d);
    return found;
}

/* First inet:HOST:PORT of a listen value into host/port; false if there is none. */
static bool first_inet(const char *listen, char *host, size_t hostlen, char *port, size_t plen)
{
    const char *p = listen;
    while (p && *p) {
        p += strspn(p, " \t\n,");
        size_t n = strcspn(p, " \t\n,");
        if (n > 5 && strncmp(p, "inet:", 5) == 0) {
            const char *hp = p + 5, *colon = NULL;
            for (const char *q = hp; q < p + n; q++)
                if (*q == ':')
                    colon = q;
            if (!colon)
                return false;
            const char *h = hp, *he = colon;
            if (*h == '[' && he > h && he[-1] == ']')
                h++, he--;
            snprintf(host, hostlen, "%.*s", (int)(he - h), h);
            snprintf(port, plen, "%.*s", (int)(p + n - colon - 1), colon + 1);
            return true;
        }
        p += n;
    }
    return false;
}

/* GET path on host:port with an overall deadline. Returns 0 with the body (new, NUL
 * terminated) and HTTP status, -ECONNREFUSED, -ETIMEDOUT, or another -errno. */
static int http_get(const char *host, const char *port, const char *path, int *status, char **body)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0)
        return -EINVAL;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
        rc = -errno;
        goto out;
    }
    char req[512];
    int reqlen = snprintf(req, sizeof(req),
                          "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                          "User-Agent: postsurge-report\r\n\r\n",
                          path, host);
    size_t sent = 0;
    for (;;) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long left = STATUS_TIMEOUT_MS -
                    ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0) {
            rc = -ETIMEDOUT;
            goto out;
        }
        struct pollfd pfd = {fd, sent < (size_t)reqlen ? POLLOUT : POLLIN, 0};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            rc = pr < 0 ? -errno : -ETIMEDOUT;
            goto out;
        }
        if (sent < (size_t)reqlen) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr) {
                rc = -soerr;
                goto out;
            }
            ssize_t w = send(fd, req + sent, (size_t)reqlen - sent, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                rc = -errno;
                goto out;
            }
            if (w > 0)
                sent += (size_t)w;
            continue;
        }
        if (cap - len < 65536) {
            if (cap >= STATUS_MAX_BYTES) {
                rc = -E2BIG;
                goto out;
            }
            char *nb = realloc(buf, cap ? cap * 2 : 131072);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            buf = nb;
            cap = cap ? cap * 2 : 131072;
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0) {
            rc = -errno;
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (!buf) {
        rc = -EPROTO;
        goto out;
    }
    buf[len] = '\0';
    int maj, min;
    char *sep = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/%d.%d %d", &maj, &min, status) != 3 || !sep) {
        rc = -EPROTO;
        goto out;
    }
    memmove(buf, sep + 4, len - (size_t)(sep + 4 - buf) + 1);
    *body = buf;
    buf = NULL;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    freeaddrinfo(ai);
    return rc;
}

/* ---- the daemon's control socket (state_directory/control.sock) ---- */

/* Sends line ("status", "events SINCE_MS MAX") to the daemon and reads its one JSON
 * object. Returns 0 with *out (new) when the daemon answered {"ok": true, ...}, -ENOENT
 * or -ECONNREFUSED when no daemon listens, -EPROTO for any other answer, -ETIMEDOUT, or
 * another -errno. */
static int ctl_get(const struct config *cfg, const char *line, json_t **out)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path, sizeof(a.sun_path), "%s/%s", cfg->state_directory,
                     CONTROLLER_SOCKET_NAME);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    *out = NULL;
    if (n < 0 || (size_t)n >= sizeof(a.sun_path))
        return -ENAMETOOLONG;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    char req[128];
    int reqlen = snprintf(req, sizeof(req), "%s\n", line);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        rc = -errno;
        /* A daemon that is not running is a finding; one we may not ask is said here. */
        if (rc != -ENOENT && rc != -ECONNREFUSED)
            cli_ctl_explain(a.sun_path, rc);
        goto out;
    }
    if (reqlen < 0 || (size_t)reqlen >= sizeof(req) ||
        send(fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
        rc = -EIO;
        goto out;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long left = STATUS_TIMEOUT_MS -
                    ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            rc = pr < 0 ? -errno : -ETIMEDOUT;
            goto out;
        }
        if (cap - len < 65536) {
            if (cap >= STATUS_MAX_BYTES) {
                rc = -E2BIG;
                goto out;
            }
            char *nb = realloc(buf, cap ? cap * 2 : 131072);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            buf = nb;
            cap = cap ? cap * 2 : 131072;
        }
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    *out = json_loadb(buf ? buf : "", len, 0, NULL);
    if (!json_is_object(*out) || !json_is_true(json_object_get(*out, "ok"))) {
        json_decref(*out);
        *out = NULL;
        rc = -EPROTO;
    }
out:
    close(fd);
    free(buf);
    return rc;
}

/* ---- nodes from the daemon's status ---- */

/* The node objects are those controller.c builds (ctl_status_json) and node.c publishes:
 * {"name", "stress": bool, "state": "normal"|"stressed", "saturation": int,
 * "services": [{"name", "busy", "limit", "waiting", ...}], "master_running": bool,
 * "qmgr_running": bool, "imbalance": bool (status only), ...}; events are node.c's
 * {"time": Unix ms, "node", "kind", "text", ...}. A member of the wrong type counts as
 * absent (unknown), never as a guess. */

static int64_t int_of(const json_t *v, int64_t dflt)
{
    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static int bool_of(const json_t *v)
{
    return json_is_boolean(v) ? json_is_true(v) : -1;
}

struct node_build {
    struct report_node_info info;
    struct report_service svc[64];
    struct report_event ev[50];
};

/* Fills nb from one node object (borrowed strings stay valid while o and events live).
 * events (may be NULL) is the cluster's event log, newest first: those of this node at or
 * after since_ms count. */
static void node_from_json(const json_t *o, const json_t *events, const char *fallback_name,
                           int64_t since_ms, struct node_build *nb)
{
    memset(nb, 0, sizeof(*nb));
    const json_t *nm = json_object_get(o, "name");
    nb->info.name = json_is_string(nm) ? json_string_value(nm) : fallback_name;
    nb->info.daemon_up = 1; /* it published a status */
    nb->info.stressed = bool_of(json_object_get(o, "stress"));
    const json_t *state = json_object_get(o, "state");
    if (nb->info.stressed < 0 && json_is_string(state))
        nb->info.stressed = !strcmp(json_string_value(state), "stressed") ? 1
                            : !strcmp(json_string_value(state), "normal") ? 0
                                                                          : -1;
    int64_t sat = int_of(json_object_get(o, "saturation"), -1);
    nb->info.saturation = sat >= 0 && sat <= 1000 ? (int)sat : -1;
    nb->info.master_up = bool_of(json_object_get(o, "master_running"));
    nb->info.qmgr_up = bool_of(json_object_get(o, "qmgr_running"));

    size_t i;
    json_t *s;
    int busiest = -1;
    json_array_foreach(json_object_get(o, "services"), i, s)
    {
        const json_t *sn = json_object_get(s, "name");
        if (nb->info.n_services == 64 || !json_is_string(sn))
            continue;
        struct report_service *rs = &nb->svc[nb->info.n_services++];
        rs->name = json_string_value(sn);
        rs->busy = int_of(json_object_get(s, "busy"), -1);
        rs->limit = int_of(json_object_get(s, "limit"), -1);
        rs->waiting = int_of(json_object_get(s, "waiting"), -1);
        if (rs->busy >= 0 && rs->limit > 0 && (int)(rs->busy * 100 / rs->limit) > busiest)
            busiest = (int)(rs->busy * 100 / rs->limit);
    }
    nb->info.services = nb->svc;
    if (nb->info.saturation < 0)
        nb->info.saturation = busiest;

    /* Every episode counts; the newest 50 events are listed, oldest first. */
    json_array_foreach(events, i, s)
    {
        const json_t *t = json_object_get(s, "time"), *en = json_object_get(s, "node"),
                     *k = json_object_get(s, "kind"), *tx = json_object_get(s, "text");
        if (!json_is_integer(t) || !json_is_string(k) || !json_is_string(en) ||
            json_integer_value(t) < since_ms || strcmp(json_string_value(en), nb->info.name))
            continue;
        const char *kind = json_string_value(k);
        if (!strcmp(kind, "stress-enter"))
            nb->info.stress_episodes++;
        else if (!strcmp(kind, "overrides-applied"))
            nb->info.overrides++;
        if (nb->info.n_events < 50)
            nb->ev[nb->info.n_events++] =
                (struct report_event){json_integer_value(t) / 1000, kind,
                                      json_is_string(tx) ? json_string_value(tx) : NULL};
    }
    for (size_t a = 0, b = nb->info.n_events; b > a + 1; a++, b--) {
        struct report_event tmp = nb->ev[a];
        nb->ev[a] = nb->ev[b - 1];
        nb->ev[b - 1] = tmp;
    }
    nb->info.events = nb->ev;
}

/* What add_status_nodes saw for the imbalance check. */
struct cluster_view {
    size_t nodes, stressed;
    const char *imbalanced; /* a stressed node whose peers are idle, or NULL */
    int sat_min, sat_max;
};

/* Adds the nodes of status ("nodes": self first, then the peers), or, when it has none
 * (a daemon without the controller), status itself as this node. The local view of
 * master/qmgr wins for this node. events: see node_from_json. idle_below: the saturation
 * under which a peer counts as idle (stress_exit_threshold). */
static int add_status_nodes(struct report *r, const json_t *st, const json_t *events,
                            const char *self, int64_t since_ms, int daemon_up, int master_up,
                            int qmgr_up, int idle_below, bool *self_added, struct cluster_view *cv)
{
    const json_t *nodes = json_object_get(st, "nodes");
    struct node_build *nb = malloc(sizeof(*nb));
    int rc = 0;
    if (!nb)
        return -ENOMEM;
    memset(cv, 0, sizeof(*cv));
    cv->sat_min = 101;
    cv->sat_max = -1;
    size_t i;
    json_t *o;
    json_array_foreach(nodes, i, o)
    {
        if (!json_is_object(o))
            continue;
        node_from_json(o, events, self, since_ms, nb);
        if (strcmp(nb->info.name, self) == 0) {
            if (*self_added)
                continue;
            *self_added = true;
            /* This host's own probes beat a status that may be seconds old. */
            nb->info.daemon_up = daemon_up;
            if (master_up >= 0)
                nb->info.master_up = master_up, nb->info.qmgr_up = qmgr_up;
        }
        if ((rc = report_add_node(r, &nb->info)) < 0)
            break;
        cv->nodes++;
        cv->stressed += nb->info.stressed == 1;
        if (nb->info.saturation >= 0 && nb->info.saturation < cv->sat_min)
            cv->sat_min = nb->info.saturation;
        if (nb->info.saturation > cv->sat_max)
            cv->sat_max = nb->info.saturation;
    }
    /* Imbalance as the daemon judges it (controller.c): one node stressed while every
     * peer is neither stressed nor near the exit threshold points at MX or load-balancer
     * weights. Recomputed here so a view read from the store gets it too. */
    json_array_foreach(nodes, i, o)
    {
        if (cv->nodes < 2 || cv->imbalanced || !json_is_true(json_object_get(o, "stress")) ||
            !json_is_string(json_object_get(o, "name")))
            continue;
        bool idle_peers = true;
        size_t k;
        json_t *p;
        json_array_foreach(nodes, k, p)
        {
            if (k != i && (json_is_true(json_object_get(p, "stress")) ||
                           int_of(json_object_get(p, "saturation"), 0) >= idle_below))
                idle_peers = false;
        }
        if (idle_peers || json_is_true(json_object_get(o, "imbalance")))
            cv->imbalanced = json_string_value(json_object_get(o, "name"));
    }
    if (rc == 0 && !*self_added && !json_is_array(nodes) && json_is_object(st)) {
        node_from_json(st, events, self, since_ms, nb);
        nb->info.name = self;
        nb->info.daemon_up = daemon_up;
        if (master_up >= 0)
            nb->info.master_up = master_up, nb->info.qmgr_up = qmgr_up;
        *self_added = true;
        rc = report_add_node(r, &nb->info);
    }
    free(nb);
    return rc;
}

/* ---- state ---- */

struct report_state {
    int64_t last_report; /* Unix seconds, 0: never */
    /* Events at or after this (Unix ms) are new: the time the last report that read the
     * event log started reading it. */
    int64_t events_ms;
    struct traffic_pos pos;
    json_t *baseline; /* owned, may be NULL */
};

static int load_state(const char *path, struct report_state *s)
{
    json_error_t je;
    memset(s, 0, sizeof(*s));
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return access(path, F_OK) == 0 ? -EINVAL : -ENOENT;
    s->last_report = int_of(json_object_get(j, "last_report"), 0);
    s->events_ms = int_of(json_object_get(j, "events_ms"), s->last_report * 1000);
    const json_t *m = json_object_get(j, "maillog");
    if (json_is_object(m) && json_is_integer(json_object_get(m, "inode"))) {
        s->pos.valid = true;
        s->pos.dev = (uint64_t)int_of(json_object_get(m, "dev"), 0);
        s->pos.ino = (uint64_t)int_of(json_object_get(m, "inode"), 0);
        s->pos.offset = int_of(json_object_get(m, "offset"), 0);
    }
    s->baseline = json_incref(json_object_get(j, "baseline"));
    json_decref(j);
    return 0;
}

/* Writes path atomically: a temporary file in the same directory, then rename. */
static int write_atomic(const char *path, mode_t mode, int (*writer)(FILE *f, void *arg), void *arg)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = mkstemp(tmp);
    if (fd < 0)
        return -errno;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        int e = -errno;
        close(fd);
        unlink(tmp);
        return e;
    }
    int rc = fchmod(fd, mode) < 0 ? -errno : writer(f, arg);
    if (fflush(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (fclose(f) != 0 && rc == 0)
        rc = -EIO;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

static int write_json_doc(FILE *f, void *arg)
{
    return json_dumpf(arg, f, JSON_COMPACT) == 0 && fputc('\n', f) != EOF ? 0 : -EIO;
}

static int write_prom(FILE *f, void *arg)
{
    return report_write_prometheus(arg, f);
}

static int save_state(const char *path, const struct report_state *s, struct baseline *b,
                      int64_t now)
{
    json_t *bj = NULL;
    if (b && baseline_to_json(b, now, &bj) < 0)
        return -ENOMEM;
    json_t *j = json_pack("{s:i,s:I,s:I}", "version", 1, "last_report", (json_int_t)now,
                          "events_ms", (json_int_t)s->events_ms);
    if (j && s->pos.valid)
        json_object_set_new(j, "maillog",
                            json_pack("{s:I,s:I,s:I}", "dev", (json_int_t)s->pos.dev, "inode",
                                      (json_int_t)s->pos.ino, "offset", (json_int_t)s->pos.offset));
    if (j && bj)
        json_object_set_new(j, "baseline", bj);
    else
        json_decref(bj);
    if (!j)
        return -ENOMEM;
    int rc = write_atomic(path, 0600, write_json_doc, j);
    json_decref(j);
    return rc;
}

/* ---- baselines in Redis (store = redis...): shared, and kept when a host is rebuilt ---- */

#define REDIS_CLI_TIMEOUT_MS 2000

/* A synchronous connection to the store's Redis, or NULL (memory store, or trouble: then
 * why is in err). Only GET and SET are sent, which a sharding proxy forwards. */
static redisContext *redis_open(const struct config *cfg, char *err, size_t errlen)
{
    struct config_store_url u;
    struct timeval tv = {REDIS_CLI_TIMEOUT_MS / 1000, (REDIS_CLI_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = NULL;
    redisReply *rep;

    err[0] = '\0';
    if (config_parse_store_url(cfg->store, &u) < 0 || u.kind == CONFIG_STORE_MEMORY)
        return NULL;
    c = u.kind == CONFIG_STORE_REDIS_TCP ? redisConnectWithTimeout(u.host, u.port, tv)
                                         : redisConnectUnixWithTimeout(u.path, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "cannot connect to Redis: %s", c ? c->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(c, tv);
    if (u.password[0]) {
        rep = redisCommand(c, "AUTH %s", u.password);
        bool ok = rep && rep->type != REDIS_REPLY_ERROR;
        freeReplyObject(rep);
        if (!ok) {
            snprintf(err, errlen, "Redis AUTH failed");
            goto fail;
        }
    }
    if (u.db) {
        rep = redisCommand(c, "SELECT %d", u.db);
        bool ok = rep && rep->type != REDIS_REPLY_ERROR;
        freeReplyObject(rep);
        if (!ok) {
            snprintf(err, errlen, "Redis SELECT %d failed", u.db);
            goto fail;
        }
    }
    return c;
fail:
    if (c)
        redisFree(c);
    return NULL;
}

/* The saved baseline state (new reference), or NULL when absent or unreadable. */
static json_t *redis_load_baseline(redisContext *c, const char *key)
{
    redisReply *rep = redisCommand(c, "GET %s", key);
    json_t *j = NULL;
    if (rep && rep->type == REDIS_REPLY_STRING)
        j = json_loadb(rep->str, rep->len, 0, NULL);
    freeReplyObject(rep);
    return j;
}

/* Saves the baseline state with a TTL of the window plus a day. Returns 0 or -EIO. */
static int redis_save_baseline(redisContext *c, const char *key, struct baseline *b, int64_t now,
                               int64_t window_s)
{
    json_t *j = NULL;
    if (baseline_to_json(b, now, &j) < 0)
        return -ENOMEM;
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text)
        return -ENOMEM;
    redisReply *rep =
        redisCommand(c, "SET %s %s EX %lld", key, text, (long long)(window_s + 86400));
    free(text);
    int rc = rep && rep->type == REDIS_REPLY_STATUS ? 0 : -EIO;
    freeReplyObject(rep);
    return rc;
}

/* Reads from the store's Redis, with the keys store_redis.c writes (after
 * store_key_prefix): the live nodes (sorted set "nodes" scored by expiry, "node:NAME" =
 * "UPDATED_MS JSON") into *status (created when NULL) unless it has "nodes" already, and,
 * when events is not NULL, the event log (list "events", newest first) into *events (a new
 * array; left NULL when it cannot be read). Read errors leave things as they are. Returns 0
 * or -ENOMEM. */
static int redis_cluster(redisContext *c, const char *prefix, int64_t now_ms, json_t **status,
                         json_t **events)
{
    json_t *nodes = json_array();
    if (!nodes)
        return -ENOMEM;
    redisReply *rep = NULL;
    if (!json_is_array(json_object_get(*status, "nodes")))
        rep = redisCommand(c, "ZRANGEBYSCORE %snodes %lld +inf LIMIT 0 1024", prefix,
                           (long long)now_ms);
    for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const redisReply *m = rep->element[i];
        if (m->type != REDIS_REPLY_STRING)
            continue;
        redisReply *v = redisCommand(c, "GET %snode:%b", prefix, m->str, m->len);
        const char *sp = v && v->type == REDIS_REPLY_STRING ? memchr(v->str, ' ', v->len) : NULL;
        json_t *o = sp ? json_loadb(sp + 1, v->len - (size_t)(sp + 1 - v->str), 0, NULL) : NULL;
        freeReplyObject(v);
        if (!json_is_object(o)) {
            json_decref(o);
            continue;
        }
        /* The key names the node; the status inside says it too ("name"). */
        if (!json_is_string(json_object_get(o, "name")))
            json_object_set_new(o, "name", json_stringn(m->str, m->len));
        json_array_append_new(nodes, o);
    }
    freeReplyObject(rep);
    int rc = 0;
    if (json_array_size(nodes)) {
        if (!*status && !(*status = json_object()))
            rc = -ENOMEM;
        else
            json_object_set(*status, "nodes", nodes);
    }
    json_decref(nodes);
    if (rc < 0 || !events)
        return rc;
    rep = redisCommand(c, "LRANGE %sevents 0 999", prefix);
    if (rep && rep->type == REDIS_REPLY_ARRAY && !(*events = json_array()))
        rc = -ENOMEM;
    for (size_t i = 0; *events && i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        json_t *o = e->type == REDIS_REPLY_STRING ? json_loadb(e->str, e->len, 0, NULL) : NULL;
        if (json_is_object(o))
            json_array_append(*events, o);
        json_decref(o);
    }
    freeReplyObject(rep);
    return rc;
}

/* ---- the command ---- */

static void usage(FILE *out)
{
    fprintf(out, "usage: postsurge [-c FILE] report [--json] [--prometheus FILE] [--quiet] "
                 "[--no-traffic]\n");
}

static void thresholds_from_config(const struct config *cfg, struct report_thresholds *t)
{
    report_thresholds_default(t);
    t->hold_warning = (uint64_t)cfg->report_hold_warning;
    t->hold_critical = (uint64_t)cfg->report_hold_critical;
    t->deferred_warning = (uint64_t)cfg->report_deferred_warning;
    t->deferred_critical = (uint64_t)cfg->report_deferred_critical;
    t->backlog_warning = (uint64_t)cfg->report_backlog_warning;
    t->backlog_critical = (uint64_t)cfg->report_backlog_critical;
    t->age_warning = cfg->report_queue_age_warning / 1000;
    t->age_critical = cfg->report_queue_age_critical / 1000;
    t->domain_deferred_warning = (uint64_t)cfg->report_domain_deferred_warning;
    t->failure_rate_warning = cfg->report_failure_rate_warning;
    t->failure_rate_critical = cfg->report_failure_rate_critical;
    t->failure_min_messages = (uint64_t)cfg->report_failure_min_messages;
    t->client_reject_warning = (uint64_t)cfg->report_client_reject_warning;
    t->saturation_warning = (int)cfg->report_saturation_warning;
    t->saturation_critical = (int)cfg->report_saturation_critical;
    t->imbalance_warning = (int)cfg->report_imbalance_warning;
    t->top_domains = (size_t)cfg->report_top_domains;
    t->top_clients = (size_t)cfg->report_top_clients;
    t->top_reasons = (size_t)cfg->report_top_reasons;
}

/* `postconf -c DIR -h queue_directory`; "" when it fails (why in err). */
static void queue_directory(const struct config *cfg, char *out, size_t size, char *err,
                            size_t errlen)
{
    const char *argv[] = {cfg->postconf_command, "-c", cfg->postfix_config_directory, "-h",
                          "queue_directory",     NULL};
    struct run r = {0};
    out[0] = '\0';
    int rc = run_command(argv, POSTCONF_TIMEOUT_MS, &r);
    if (rc < 0) {
        snprintf(err, errlen, "cannot run postconf: %s", uv_strerror(rc));
    } else if (r.exit_status != 0 || !r.out[0]) {
        char why[600];
        run_describe(&r, why, sizeof(why));
        snprintf(err, errlen, "postconf -h queue_directory failed: %s", why);
    } else {
        snprintf(out, size, "%s", r.out);
    }
}

/* Streams postqueue -j into qs. Returns 0, or -1 with why in err. */
static int read_queue(const struct config *cfg, struct queue_stats *qs, char *err, size_t errlen)
{
    const char *argv[] = {cfg->postqueue_command, "-c", cfg->postfix_config_directory, "-j", NULL};
    struct run r = {.qs = qs};
    int rc = run_command(argv, (uint64_t)cfg->command_timeout, &r);
    if (rc < 0) {
        snprintf(err, errlen, "cannot run %s: %s", cfg->postqueue_command, uv_strerror(rc));
        return -1;
    }
    if (r.feed_rc < 0 || queue_stats_finish(qs) < 0) {
        snprintf(err, errlen, "out of memory reading the queue");
        return -1;
    }
    if (r.exit_status != 0 || r.timed_out || r.term_signal) {
        char why[600];
        run_describe(&r, why, sizeof(why));
        snprintf(err, errlen, "%s -j failed: %s", cfg->postqueue_command, why);
        return -1;
    }
    return 0;
}

static bool quiet_now(const struct config *cfg, const struct report *r, int64_t now,
                      uint64_t backlog, bool have_queue)
{
    struct baseline_quiet q;
    char err[128];
    if (!cfg->report_quiet_windows[0])
        return false;
    if (baseline_quiet_parse(cfg->report_quiet_windows, &q, err, sizeof(err)) < 0) {
        fprintf(stderr, "postsurge: warning: report_quiet_windows: %s\n", err);
        return false;
    }
    time_t t = (time_t)now;
    struct tm tm;
    localtime_r(&t, &tm);
    if (!baseline_quiet_match(&q, tm.tm_hour, tm.tm_min))
        return false;
    /* A backlog over the limit is news even at a noisy hour. */
    return !(have_queue && cfg->report_quiet_backlog_limit > 0 &&
             backlog > (uint64_t)cfg->report_quiet_backlog_limit);
}

static int parse_opts(int argc, char **argv, struct report_opts *o)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},  {"prometheus", required_argument, NULL, 'p'},
        {"quiet", no_argument, NULL, 'q'}, {"no-traffic", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},  {NULL, 0, NULL, 0},
    };
    int opt;
    memset(o, 0, sizeof(*o));
    optind = 0;
    while ((opt = getopt_long(argc, argv, "+jp:qnh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            o->json = true;
            break;
        case 'p':
            o->prometheus = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'n':
            o->no_traffic = true;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Holds an exclusive lock on state_directory/report.lock so two reports (cron and an
 * operator) do not both count the same log lines. Returns the fd or -errno. */
static int lock_state(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" LOCK_FILE, dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    for (int i = 0; i < 300; i++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        if (errno != EWOULDBLOCK) {
            int e = -errno;
            close(fd);
            return e;
        }
        usleep(100000);
    }
    close(fd);
    return -EWOULDBLOCK;
}

int cmd_report(const struct cli *cli, int argc, char **argv)
{
    struct report_opts o;
    struct config *cfg = NULL;
    struct report *r = NULL;
    struct queue_stats *qs = NULL;
    struct traffic *tr = NULL;
    struct baseline *bl = NULL;
    struct report_state st = {0};
    char host[256], state_path[PATH_MAX], qdir[PATH_MAX], err[1024];
    int lockfd = -1, exit_code = 3, rc;
    json_t *status = NULL;
    redisContext *redis = NULL;

    rc = parse_opts(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 3;
    if (cli_load_config(cli, &cfg) < 0) {
        printf("UNKNOWN - cannot load %s\n", cli->config_path);
        return 3;
    }
    int64_t now = (int64_t)time(NULL);
    if (cfg->node_name[0])
        snprintf(host, sizeof(host), "%s", cfg->node_name);
    else if (gethostname(host, sizeof(host)) < 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';

    /* State: position, baselines, last run. Without it the report still runs (it just
     * cannot say what is new), so problems are warnings on stderr. */
    bool state_ok = true;
    if (mkdir(cfg->state_directory, 0750) < 0 && errno != EEXIST)
        state_ok = false;
    if (state_ok) {
        lockfd = lock_state(cfg->state_directory);
        if (lockfd < 0) {
            fprintf(stderr, "postsurge: warning: %s/" LOCK_FILE ": %s\n", cfg->state_directory,
                    strerror(-lockfd));
            state_ok = false;
        }
    }
    if (!state_ok)
        fprintf(stderr,
                "postsurge: warning: state_directory %s unusable: the mail log is "
                "not read and baselines are not kept\n",
                cfg->state_directory);
    snprintf(state_path, sizeof(state_path), "%s/" STATE_FILE, cfg->state_directory);
    if (state_ok && (rc = load_state(state_path, &st)) == -EINVAL)
        fprintf(stderr, "postsurge: warning: %s is damaged; starting afresh\n", state_path);

    r = report_new(now, host);
    if (!r)
        goto oom;

    /* Local Postfix: its queue directory names master.pid. */
    char pcerr[700] = "";
    queue_directory(cfg, qdir, sizeof(qdir), pcerr, sizeof(pcerr));
    int master_up, qmgr_up;
    postfix_processes(qdir, &master_up, &qmgr_up);

    /* The daemon: /status on http_listen, else (endpoint off or failing) the same
     * cluster view from its control socket, else whether its process runs. */
    char hhost[256], hport[32];
    int daemon_up = -1;
    if (first_inet(cfg->http_listen, hhost, sizeof(hhost), hport, sizeof(hport))) {
        char *body = NULL;
        int code = 0;
        rc = http_get(hhost, hport, "/status", &code, &body);
        if (rc == 0) {
            daemon_up = 1;
            if (code == 200)
                status = json_loads(body, 0, NULL);
            free(body);
            if (!json_is_object(status)) {
                json_decref(status);
                status = NULL;
            }
        }
    }
    if (!status && ctl_get(cfg, "status", &status) == 0)
        daemon_up = 1;
    if (daemon_up != 1)
        daemon_up = daemon_process_running(cli->config_path);
    /* The event log (the cluster's, on a Redis store) is not in /status: the daemon reads
     * it for us from its store. Reading starts now, so the next report takes over here. */
    json_t *events = NULL;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t events_read_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    int64_t events_since = state_ok ? st.events_ms : 0;
    if (daemon_up == 1) {
        json_t *ans = NULL;
        char line[64];
        snprintf(line, sizeof(line), "events %lld 1000", (long long)events_since);
        if (ctl_get(cfg, line, &ans) == 0 && json_is_array(json_object_get(ans, "events")))
            events = json_incref(json_object_get(ans, "events"));
        json_decref(ans);
    }
    bool self_added = false;
    /* With a Redis store the cluster's nodes and events are there too: they fill what
     * the daemon did not give, and stand in for it when the daemon is down. */
    char rkey[STORE_KEY_MAX], rerr[300];
    redis = redis_open(cfg, rerr, sizeof(rerr));
    if (rerr[0])
        fprintf(stderr, "postsurge: warning: %s: no cluster view; baselines only in %s\n", rerr,
                state_path);
    if (redis && redis_cluster(redis, cfg->store_key_prefix, events_read_ms, &status,
                               events ? NULL : &events) < 0) {
        json_decref(events);
        goto oom;
    }
    if (events)
        st.events_ms = events_read_ms;
    else if (daemon_up == 1)
        fprintf(stderr,
                "postsurge: warning: cannot read the daemon's event log (%s/%s): "
                "stress episodes and overrides are not counted\n",
                cfg->state_directory, CONTROLLER_SOCKET_NAME);
    struct cluster_view cv = {0};
    rc = status ? add_status_nodes(r, status, events, host, events_since, daemon_up, master_up,
                                   qmgr_up, (int)cfg->stress_exit_threshold, &self_added, &cv)
                : 0;
    json_decref(events);
    if (rc < 0)
        goto oom;
    /* A stressed node beside idle peers: the daemon's imbalance, unless the saturation
     * gap already makes report_evaluate() say so. */
    if (cv.imbalanced && cfg->report_imbalance_warning > 0 &&
        !(cv.sat_max >= 0 && cv.sat_max - cv.sat_min >= cfg->report_imbalance_warning)) {
        char msg[600];
        snprintf(msg, sizeof(msg), "load imbalance: %s is in stress mode while its %zu %s idle",
                 cv.imbalanced, cv.nodes - 1, cv.nodes == 2 ? "peer is" : "peers are");
        if (report_add_finding(r, REPORT_WARNING, "imbalance", cv.imbalanced, msg,
                               "check MX weights (equal preference for equal nodes) and the "
                               "load balancer") < 0)
            goto oom;
    }
    if (!self_added) {
        struct report_node_info ni = {.name = host,
                                      .daemon_up = daemon_up,
                                      .master_up = master_up,
                                      .qmgr_up = qmgr_up,
                                      .stressed = -1,
                                      .saturation = -1};
        if (report_add_node(r, &ni) < 0)
            goto oom;
    }
    if (pcerr[0] &&
        report_add_finding(r, REPORT_UNKNOWN, "postfix_unavailable", host, pcerr,
                           "check postfix_config_directory and that postconf is in PATH") < 0)
        goto oom;

    /* Queue. */
    struct queue_limits ql = {.now = now};
    qs = queue_stats_new(&ql);
    if (!qs)
        goto oom;
    bool have_queue = read_queue(cfg, qs, err, sizeof(err)) == 0;
    if (have_queue) {
        if (report_set_queue(r, qs, (size_t)cfg->report_top_domains,
                             (size_t)cfg->report_top_reasons) < 0)
            goto oom;
    } else if (report_add_finding(r, REPORT_UNKNOWN, "queue_unavailable", host, err,
                                  "run postqueue -j by hand as this user; a non-root user "
                                  "needs the config directory in alternate_config_directories") <
               0) {
        goto oom;
    }

    /* Traffic since the last report. */
    if (!o.no_traffic && state_ok && cfg->maillog_file[0]) {
        tr = traffic_new();
        if (!tr)
            goto oom;
        rc = traffic_read_log(tr, cfg->maillog_file, &st.pos);
        if (rc == -ENOMEM)
            goto oom;
        if (rc < 0) {
            snprintf(err, sizeof(err), "cannot read %s: %s", cfg->maillog_file, strerror(-rc));
            if (report_add_finding(r, REPORT_UNKNOWN, "maillog_unavailable", cfg->maillog_file, err,
                                   "set maillog_file to Postfix's log (postconf "
                                   "maillog_file, or syslog's mail.log), or empty it") < 0)
                goto oom;
        }
        if (traffic_to_report(tr, r, REPORT_CLIENTS) < 0)
            goto oom;
    }

    /* Baselines. */
    struct baseline_params bp;
    baseline_params_default(&bp);
    bp.window = cfg->report_baseline_window / 1000;
    bp.sigma = cfg->report_anomaly_sigma;
    bp.min_samples = (uint32_t)cfg->report_anomaly_min_samples;
    /* With a Redis store the baselines live there too, per node; Redis wins over the
     * state file (another host may have run this node's reports before). */
    snprintf(rkey, sizeof(rkey), "%sreport:baseline:%s", cfg->store_key_prefix, host);
    json_t *rb = redis ? redis_load_baseline(redis, rkey) : NULL;
    if (rb) {
        json_decref(st.baseline);
        st.baseline = rb;
    }
    if (st.baseline && baseline_from_json(st.baseline, &bp, &bl) < 0) {
        fprintf(stderr, "postsurge: warning: %s: bad baseline state; starting afresh\n",
                state_path);
        bl = NULL;
    }
    if (!bl && !(bl = baseline_new(&bp)))
        goto oom;
    uint64_t backlog = 0;
    if (have_queue)
        backlog = queue_stats_totals(qs, QUEUE_INCOMING)->messages +
                  queue_stats_totals(qs, QUEUE_ACTIVE)->messages;
    if (report_apply_baseline(r, bl, quiet_now(cfg, r, now, backlog, have_queue)) < 0)
        goto oom;

    struct report_thresholds th;
    thresholds_from_config(cfg, &th);
    if (report_evaluate(r, &th) < 0)
        goto oom;
    exit_code = report_exit_code(report_status(r));

    if (o.prometheus) {
        rc = write_atomic(o.prometheus, 0644, write_prom, r);
        if (rc < 0) {
            fprintf(stderr, "postsurge: %s: %s\n", o.prometheus, strerror(-rc));
            exit_code = 3;
        }
    }
    if (o.quiet && report_status(r) == REPORT_OK)
        rc = 0;
    else if (o.json)
        rc = report_write_json(r, stdout);
    else
        rc = report_write_text(r, stdout);
    if (rc < 0 || fflush(stdout) != 0)
        exit_code = 3;

    if (redis && redis_save_baseline(redis, rkey, bl, now, bp.window) < 0)
        fprintf(stderr, "postsurge: warning: cannot save the baselines in Redis: %s\n",
                redis->err ? redis->errstr : "bad reply");
    if (state_ok) {
        rc = save_state(state_path, &st, bl, now);
        if (rc < 0)
            fprintf(stderr, "postsurge: warning: cannot save %s: %s\n", state_path, strerror(-rc));
    }
    goto out;
oom:
    printf("UNKNOWN - out of memory\n");
    exit_code = 3;
out:
    if (redis)
        redisFree(redis);
    json_decref(status);
    json_decref(st.baseline);
    baseline_free(bl);
    traffic_free(tr);
    queue_stats_free(qs);
    report_free(r);
    config_free(cfg);
    if (lockfd >= 0)
        close(lockfd);
    return exit_code;
}
