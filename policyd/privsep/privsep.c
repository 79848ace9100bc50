/* privsep: the privilege drop of `serve` and the privileged helper. The helper is forked
 * before the loop exists (no libuv state, no listening sockets in it) and works
 * synchronously: one request, one reply. Apply, restore and the journal check are
 * postfix/confedit's operations, run here as root: the journal is the helper's (written
 * by root, 0600, in state_directory, trusted on reading only when root owns it), so the
 * unprivileged process can neither forge the bytes a restore writes back nor apply
 * anything without its journal. The daemon's side is a uv_poll on the socketpair with a
 * FIFO of requests, one in flight. */
/* setresuid, setresgid */
#define _GNU_SOURCE
#define LOG_COMPONENT "privsep"
#include "privsep.h"

#include "postfix/confedit.h"
#include "postfix/pfcmd.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct {
    enum privsep_mode mode;
    uid_t uid;
    gid_t gid;
    char user[256];
    pid_t helper_pid;
    int fd; /* the daemon's end of the socketpair, -1 once taken */
} ps_global = {.fd = -1};

enum privsep_mode privsep_mode(void)
{
    return ps_global.mode;
}

const char *privsep_mode_name(enum privsep_mode m)
{
    switch (m) {
    case PRIVSEP_HELPER:
        return "helper";
    case PRIVSEP_ROOT:
        return "root";
    case PRIVSEP_UNPRIVILEGED:
        return "unprivileged";
    default:
        return "none";
    }
}

pid_t privsep_helper_pid(void)
{
    return ps_global.helper_pid;
}

/* ======================================================================== helper === */

struct helper {
    int fd;
    /* The journaled edit of this Postfix instance (postfix/confedit), fixed for the
     * helper's life: the requests name no path and no command. */
    struct confedit *ce;
    char *config_dir, *postconf; /* for the scan's queue_directory */
    uint64_t timeout_ms;
    /* queue_directory from the helper's own postconf (never from a request), for the
     * scan's master.pid; read again at most once a minute. */
    char queue_dir[1024];
    uint64_t queue_dir_ms;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static json_t *reply_error(const char *error)
{
    return json_pack("{s:b,s:s,s:i,s:i}", "ok", 0, "error", error, "commands", 0, "failures", 0);
}

/* S: the monitor's scan. Only bounds and paths are checked: the scan reads, never
 * writes, and what it returns is counts. */
static bool sample_valid(struct helper *h, struct monitor_scan *sc)
{
    if (sc->n_svc > MONITOR_MAX_SERVICES)
        return false;
    for (size_t i = 0; i < sc->n_svc; i++) {
        sc->svc[i].name[sizeof(sc->svc[i].name) - 1] = '\0';
        sc->svc[i].service[sizeof(sc->svc[i].service) - 1] = '\0';
    }
    /* The paths the scan opens as root are the helper's own: queue_directory from its
     * own postconf, whatever the request says. */
    uint64_t now = mono_ms();
    if (!h->queue_dir[0] || now - h->queue_dir_ms >= 60000) {
        char *out = NULL, err[600];
        size_t len = 0;
        char *argv[] = {h->postconf, "-c", h->config_dir, "-h", "queue_directory", NULL};
        h->queue_dir_ms = now;
        if (pfcmd_run(argv, "postconf -h queue_directory", h->timeout_ms, &out, &len, err,
                      sizeof(err)) == 0) {
            out[strcspn(out, "\n")] = '\0';
            if (out[0] == '/' && !strstr(out, "/..") && strlen(out) < sizeof(h->queue_dir))
                snprintf(h->queue_dir, sizeof(h->queue_dir), "%s", out);
            else
                log_warn("queue_directory \"%.200s\" is not an absolute path: not scanned", out);
        } else {
            log_warn("%s", err);
        }
        free(out);
    }
    snprintf(sc->queue_dir, sizeof(sc->queue_dir), "%s", h->queue_dir);
    snprintf(sc->config_dir, sizeof(sc->config_dir), "%s", h->config_dir);
    return true;
}

static void helper_send(struct helper *h, enum privmsg_op op, const void *p, size_t len)
{
    char *buf = NULL;
    size_t blen = 0;
    if (privmsg_frame(op, p, len, &buf, &blen) < 0) {
        static const char oversize[] = "{\"ok\":false,\"error\":\"reply too large\"}";
        if (privmsg_frame(op, oversize, sizeof(oversize) - 1, &buf, &blen) < 0)
            return;
    }
    while (send(h->fd, buf, blen, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
    free(buf);
}

static void helper_reply_json(struct helper *h, json_t *r)
{
    char *s = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    if (!s) {
        static const char oom[] = "{\"ok\":false,\"error\":\"out of memory\"}";
        helper_send(h, PRIVMSG_REPLY, oom, sizeof(oom) - 1);
        return;
    }
    helper_send(h, PRIVMSG_REPLY, s, strlen(s));
    free(s);
}

static json_t *json_empty_check(struct helper *h, const char *p, size_t len)
{
    json_t *o = json_loadb(p, len, 0, NULL);
    bool ok = json_is_object(o) && json_object_size(o) == 0;
    json_decref(o);
    return ok ? NULL : reply_error("request rejected: payload must be {}");
}

/* confedit's guard: the daemon still holds its end of the socketpair. */
static bool daemon_alive(void *arg)
{
    struct helper *h = arg;
    struct pollfd pf = {.fd = h->fd, .events = POLLRDHUP};
    return !(poll(&pf, 1, 0) == 1 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR)));
}

/* The helper's life: one request at a time until the socketpair closes. */
static void __attribute__((noreturn)) helper_main(struct helper *h)
{
    char *buf = malloc(PRIVMSG_MAX + 1);
    if (!buf)
        _exit(1);
    log_debug("privileged helper running (pid %ld)", (long)getpid());
    confedit_set_guard(h->ce, daemon_alive, h);
    for (;;) {
        ssize_t n = recv(h->fd, buf, PRIVMSG_MAX + 1, MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the daemon closed its end (or died): nothing more to do */
        enum privmsg_op op;
        const char *payload;
        size_t plen;
        int rc = privmsg_frame_parse(buf, (size_t)n, &op, &payload, &plen);
        if (rc < 0) {
            log_error("request refused: %s (%zd bytes)", rc == -EMSGSIZE ? "size" : "unknown op",
                      n);
            helper_reply_json(h, reply_error("request rejected: bad frame"));
            continue;
        }
        json_t *bad;
        switch (op) {
        case PRIVMSG_JOURNAL:
            bad = json_empty_check(h, payload, plen);
            helper_reply_json(h, bad ? bad : confedit_journal(h->ce));
            break;
        case PRIVMSG_APPLY:
            helper_reply_json(h, confedit_apply(h->ce, payload, plen, false, PRIVMSG_MAX));
            break;
        case PRIVMSG_RESTORE:
            bad = json_empty_check(h, payload, plen);
            helper_reply_json(h, bad ? bad : confedit_restore(h->ce));
            break;
        case PRIVMSG_SAMPLE: {
            struct monitor_scan sc;
            if (plen != sizeof(sc)) {
                helper_send(h, PRIVMSG_SAMPLE_REPLY, "", 0);
                break;
            }
            memcpy(&sc, payload, sizeof(sc));
            if (!sample_valid(h, &sc)) {
                helper_send(h, PRIVMSG_SAMPLE_REPLY, "", 0);
                break;
            }
            monitor_scan_run(&sc);
            helper_send(h, PRIVMSG_SAMPLE_REPLY, &sc, sizeof(sc));
            break;
        }
        default:
            helper_reply_json(h, reply_error("request rejected: not a request"));
            break;
        }
    }
    free(buf);
    _exit(0);
}

/* state_directory for the unprivileged user: created 0750 when missing; a root-owned
 * one is handed over; no write for group or others, nothing for others. */
static int prepare_state_dir(const char *dir, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(dir, &st) < 0) {
        if (errno != ENOENT || mkdir(dir, 0750) < 0 || lstat(dir, &st) < 0) {
            snprintf(err, errlen, "state_directory %s: %s", dir, strerror(errno));
            return -errno;
        }
        if (chown(dir, uid, gid) < 0) {
            snprintf(err, errlen, "state_directory %s: chown: %s", dir, strerror(errno));
            return -errno;
        }
        st.st_uid = uid;
        log_info("created state_directory %s (mode 0750)", dir);
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "state_directory %s: not a directory (or a symlink)", dir);
        return -ENOTDIR;
    }
    if (st.st_uid == 0 && uid != 0) {
        if (chown(dir, uid, gid) < 0) {
            snprintf(err, errlen, "state_directory %s: chown: %s", dir, strerror(errno));
            return -errno;
        }
        log_info("state_directory %s now belongs to %s", dir, ps_global.user);
    } else if (st.st_uid != uid) {
        log_warn("state_directory %s belongs to uid %ld, not %s: the daemon may not be able "
                 "to write there",
                 dir, (long)st.st_uid, ps_global.user);
    }
    if ((st.st_mode & 0027) && chmod(dir, st.st_mode & 07750) < 0) {
        snprintf(err, errlen, "state_directory %s: chmod: %s", dir, strerror(errno));
        return -errno;
    }
    return 0;
}

int privsep_init(const struct config *cfg, char *err, size_t errlen)
{
    if (geteuid() != 0) {
        ps_global.mode = PRIVSEP_UNPRIVILEGED;
        if (mkdir(cfg->state_directory, 0750) < 0 && errno != EEXIST)
            log_warn("state_directory %s: %s", cfg->state_directory, strerror(errno));
        return 0;
    }
    struct passwd *pw = getpwnam(cfg->user);
    if (!pw) {
        snprintf(err, errlen,
                 "user %s: no such user (create it: adduser --system --group --no-create-home "
                 "--home %s %s; or set user =)",
                 cfg->user, cfg->state_directory, cfg->user);
        return -ENOENT;
    }
    struct group *gr = getgrnam(cfg->group);
    if (!gr) {
        snprintf(err, errlen, "group %s: no such group", cfg->group);
        return -ENOENT;
    }
    ps_global.uid = pw->pw_uid;
    ps_global.gid = gr->gr_gid;
    snprintf(ps_global.user, sizeof(ps_global.user), "%s", cfg->user);
    int rc = prepare_state_dir(cfg->state_directory, ps_global.uid, ps_global.gid, err, errlen);
    if (rc < 0)
        return rc;
    if (ps_global.uid == 0) {
        ps_global.mode = PRIVSEP_ROOT;
        log_warn("user = %s is root: serve keeps all privileges (no privileged helper)", cfg->user);
        return 0;
    }

    struct helper h = {.timeout_ms = (uint64_t)cfg->command_timeout};
    h.config_dir = strdup(cfg->postfix_config_directory);
    h.postconf = pfcmd_resolve(cfg->postconf_command);
    h.ce = confedit_new(cfg->postfix_config_directory, cfg->state_directory, cfg->postconf_command,
                        cfg->postfix_command, (uint64_t)cfg->command_timeout);
    if (!h.config_dir || !h.postconf || !h.ce) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        return -errno;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -errno;
    }
    if (pid == 0) {
        close(sv[0]);
        h.fd = sv[1];
        /* The helper outlives signals meant for the daemon's process group: it finishes
         * the request at hand and exits when the daemon's end closes. */
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);
        /* Over RLIMIT_FSIZE a journal write fails with EFBIG, answered like ENOSPC. */
        signal(SIGXFSZ, SIG_IGN);
        prctl(PR_SET_NAME, "postsurge-priv", 0, 0, 0);
        helper_main(&h);
    }
    close(sv[1]);
    free(h.config_dir);
    free(h.postconf);
    confedit_free(h.ce);
    ps_global.fd = sv[0];
    ps_global.helper_pid = pid;
    ps_global.mode = PRIVSEP_HELPER;
    log_info("privileged helper started (pid %ld); serve will run as %s", (long)pid, cfg->user);
    return 0;
}

int privsep_drop(char *err, size_t errlen)
{
    if (ps_global.mode != PRIVSEP_HELPER)
        return 0;
    uid_t uid = ps_global.uid;
    gid_t gid = ps_global.gid;
    if (initgroups(ps_global.user, gid) < 0 && setgroups(1, &gid) < 0) {
        snprintf(err, errlen, "setgroups: %s", strerror(errno));
        return -errno;
    }
    if (setresgid(gid, gid, gid) < 0) {
        snprintf(err, errlen, "setgid %ld: %s", (long)gid, strerror(errno));
        return -errno;
    }
    if (setresuid(uid, uid, uid) < 0) {
        snprintf(err, errlen, "setuid %ld: %s", (long)uid, strerror(errno));
        return -errno;
    }
    /* Root must be gone for good: neither the user nor the group can come back. */
    if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0 || getuid() != uid ||
        geteuid() != uid || getgid() != gid || getegid() != gid) {
        snprintf(err, errlen, "privileges could be regained after the drop: refusing to run");
        return -EPERM;
    }
    /* setuid made the process non-dumpable, which hides /proc/self from its own user
     * (and from core dumps); the process holds nothing the user may not see. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    log_info("running as %s (uid %ld, gid %ld); overrides and /proc scans go through the "
             "privileged helper (pid %ld)",
             ps_global.user, (long)uid, (long)gid, (long)ps_global.helper_pid);
    return 0;
}

/* ======================================================================== client === */

struct ps_req {
    struct ps_req *next;
    char *buf;
    size_t len;
    bool sample;
    privsep_reply_cb cb;
    struct monitor_scan *sc;
    monitor_scan_done_fn done;
    void *arg;
};

struct privsep {
    uv_loop_t *loop;
    uv_poll_t poll;
    int fd;
    bool dead, closing, polling;
    struct ps_req *head, *tail; /* head is in flight when sent */
    bool head_sent;
    char *rbuf;
};

static void req_fail(struct ps_req *r, int status)
{
    if (r->sample)
        r->done(r->arg, status);
    else
        r->cb(r->arg, status, NULL);
}

static void req_free(struct ps_req *r)
{
    free(r->buf);
    free(r);
}

static void client_fail_all(struct privsep *p, int status)
{
    while (p->head) {
        struct ps_req *r = p->head;
        p->head = r->next;
        if (!p->head)
            p->tail = NULL;
        req_fail(r, status);
        req_free(r);
    }
    p->head_sent = false;
}

static void client_dead(struct privsep *p, const char *why)
{
    if (p->dead)
        return;
    p->dead = true;
    /* Reap it (libuv reaps only what uv_spawn started); it is gone or going. */
    if (ps_global.helper_pid > 0 && waitpid(ps_global.helper_pid, NULL, WNOHANG) > 0)
        ps_global.helper_pid = 0;
    log_error("privileged helper %s: stress overrides and /proc scans are unavailable until "
              "serve restarts",
              why);
    if (p->polling) {
        uv_poll_stop(&p->poll);
        p->polling = false;
    }
    client_fail_all(p, -EPIPE);
}

/* Sends the head of the queue when nothing is in flight. Returns 0, or -EPIPE when the
 * helper no longer takes requests (p is then dead; the caller fails what is queued). */
static int client_send_next(struct privsep *p)
{
    if (p->dead || p->closing || !p->head || p->head_sent)
        return 0;
    ssize_t n;
    while ((n = send(p->fd, p->head->buf, p->head->len, MSG_DONTWAIT | MSG_NOSIGNAL)) < 0 &&
           errno == EINTR)
        ;
    if (n < 0) {
        /* One message in flight: the buffer cannot be full, so this is a dead helper. */
        return -EPIPE;
    }
    p->head_sent = true;
    return 0;
}

static void client_on_readable(uv_poll_t *h, int status, int events)
{
    struct privsep *p = h->data;
    (void)events;
    if (status < 0) {
        client_dead(p, "socket error");
        return;
    }
    ssize_t n = recv(p->fd, p->rbuf, PRIVMSG_MAX + 1, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        client_dead(p, n == 0 ? "exited" : "socket error");
        return;
    }
    enum privmsg_op op;
    const char *payload;
    size_t plen;
    struct ps_req *r = p->head_sent ? p->head : NULL;
    if (!r || privmsg_frame_parse(p->rbuf, (size_t)n, &op, &payload, &plen) < 0 ||
        (r->sample ? op != PRIVMSG_SAMPLE_REPLY : op != PRIVMSG_REPLY)) {
        client_dead(p, "sent an unexpected message");
        return;
    }
    p->head = r->next;
    if (!p->head)
        p->tail = NULL;
    p->head_sent = false;
    if (r->sample) {
        if (plen == sizeof(*r->sc)) {
            memcpy(r->sc, payload, sizeof(*r->sc));
            r->done(r->arg, 0);
        } else {
            r->done(r->arg, -EINVAL);
        }
    } else {
        json_t *o = json_loadb(payload, plen, 0, NULL);
        if (json_is_object(o))
            r->cb(r->arg, 0, o);
        else
            r->cb(r->arg, -EBADMSG, NULL);
        json_decref(o);
    }
    req_free(r);
    if (client_send_next(p) < 0)
        client_dead(p, "does not take requests");
}

struct privsep *privsep_client_new(uv_loop_t *loop)
{
    if (ps_global.mode != PRIVSEP_HELPER || ps_global.fd < 0)
        return NULL;
    struct privsep *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->rbuf = malloc(PRIVMSG_MAX + 1);
    if (!p->rbuf || uv_poll_init(loop, &p->poll, ps_global.fd) < 0) {
        free(p->rbuf);
        free(p);
        return NULL;
    }
    p->loop = loop;
    p->fd = ps_global.fd;
    ps_global.fd = -1;
    p->poll.data = p;
    if (uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, client_on_readable) == 0)
        p->polling = true;
    else
        p->dead = true;
    return p;
}

bool privsep_alive(const struct privsep *p)
{
    return p && !p->dead && !p->closing;
}

/* Queues r (taken) and sends it if nothing is in flight. Never calls a callback. */
static int client_queue(struct privsep *p, struct ps_req *r)
{
    if (p->dead || p->closing) {
        req_free(r);
        return p->dead ? -EPIPE : -ESHUTDOWN;
    }
    if (p->tail)
        p->tail->next = r;
    else
        p->head = r;
    p->tail = r;
    if (client_send_next(p) < 0) {
        /* r is the head (nothing else was queued): take it back, no callback. */
        p->head = p->tail = NULL;
        req_free(r);
        client_dead(p, "does not take requests");
        return -EPIPE;
    }
    return 0;
}

int privsep_call(struct privsep *p, enum privmsg_op op, const char *payload, size_t len,
                 privsep_reply_cb cb, void *arg)
{
    if (!p)
        return -EPIPE;
    struct ps_req *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    int rc = privmsg_frame(op, payload, len, &r->buf, &r->len);
    if (rc < 0) {
        free(r);
        return rc;
    }
    r->cb = cb;
    r->arg = arg;
    return client_queue(p, r);
}

int privsep_scan_start(void *arg, struct monitor_scan *sc, monitor_scan_done_fn done,
                       void *done_arg)
{
    struct privsep *p = arg;
    if (!p || p->dead || p->closing)
        return -EPIPE;
    struct ps_req *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    if (privmsg_frame(PRIVMSG_SAMPLE, sc, sizeof(*sc), &r->buf, &r->len) < 0) {
        free(r);
        return -ENOMEM;
    }
    r->sample = true;
    r->sc = sc;
    r->done = done;
    r->arg = done_arg;
    return client_queue(p, r);
}

static void client_on_close(uv_handle_t *h)
{
    struct privsep *p = h->data;
    close(p->fd);
    free(p->rbuf);
    free(p);
}

void privsep_close(struct privsep *p)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    client_fail_all(p, -ECANCELED);
    uv_close((uv_handle_t *)&p->poll, client_on_close);
}
