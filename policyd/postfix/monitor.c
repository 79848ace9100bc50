/* monitor: per-tick samples of a Postfix instance's public smtpd services. The loop
 * side owns a tick timer, the postconf runs (spawn.c) that yield the service list and
 * process limits, and the mail log tail (tail.c). Each tick a scan runs in libuv's thread
 * pool: master.pid -> master's children (/proc/PID/task/PID/children) -> smtpd argv and
 * socket inodes -> /proc/PID/net/tcp{,6} (busy sockets, listen backlog) -> sock_diag
 * (private/NAME backlog behind postscreen). The sample is delivered when the scan and
 * that tick's log poll have both finished. */
#define LOG_COMPONENT "monitor"

#include "monitor.h"
#include "util/container.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/spawn.h"
#include "util/tail.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MONITOR_TCP_LISTEN 0x0A
#define MONITOR_MAX_CHILDREN 65536

struct monitor {
    uv_loop_t *loop;
    char *config_dir;
    char *maillog_file;
    char *syslog_name; /* maillog_syslog_name; NULL: Postfix's own (postconf -h syslog_name) */
    char *postconf;
    uint64_t interval_ms;
    uint64_t command_timeout_ms;
    bool log_from_start;
    monitor_sample_cb cb;
    monitor_log_cb on_log;
    void *arg;

    uv_timer_t timer;
    struct tail *tail;
    struct spawn *spawn; /* running postconf, or NULL */
    uv_work_t work;
    struct monitor_scan scan;
    struct monitor_scanner scanner; /* start NULL: the thread pool scans */

    /* services and limits from the last successful postconf round */
    struct monitor_service svc[MONITOR_MAX_SERVICES];
    size_t n_svc;
    bool limits_known;
    char queue_dir[1024];
    unsigned default_limit;
    bool refresh_wanted; /* a refresh was asked for while one was running */
    int64_t cfg_stamp;   /* as seen by the last scan */
    int last_master_pid;

    /* one tick in progress: the scan and the log poll */
    bool scan_running;
    bool tail_running;
    bool tick_open;
    uint64_t tick_ms;
    uint64_t skipped_ticks;

    struct monitor_log_counts log;
    bool postscreen_stress;
    struct log_ratelimit rl_postconf;

    bool started, closing, timer_closed, tail_closed;
    monitor_closed_cb closed;
    void *closed_arg;
};

/* ---- postconf -F parsing (pure) -------------------------------------------------- */

/* Copies src into dst (size bytes), cut if longer. Returns false when cut. */
static bool cpy(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    bool fits = n < size;
    if (!fits)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return fits;
}

/* dst = a "/" b, cut to size. */
static bool join2(char *dst, size_t size, const char *a, const char *b)
{
    if (!cpy(dst, size, a))
        return false;
    size_t n = strlen(dst);
    if (n + 1 >= size)
        return false;
    dst[n] = '/';
    return cpy(dst + n + 1, size - n - 1, b);
}

/* TCP port of a master.cf inet service field: "[host:]port", port numeric or a name in
 * /etc/services. 0 when unknown. */
static unsigned monitor_inet_port(const char *service)
{
    const char *p = strrchr(service, ':');
    p = p ? p + 1 : service;
    if (*p == '\0')
        return 0;
    char *end;
    unsigned long v = strtoul(p, &end, 10);
    if (*end == '\0')
        return v > 0 && v < 65536 ? (unsigned)v : 0;
    struct servent se, *res = NULL;
    char buf[1024];
    if (getservbyname_r(p, "tcp", &se, buf, sizeof(buf), &res) == 0 && res)
        return ntohs((uint16_t)res->s_port);
    return 0;
}

struct pf_entry {
    char service[STRESS_SERVICE_NAME_MAX];
    char type[16];
    char limit[16];
    char command[64]; /* first word */
};

int monitor_parse_postconf_F(const char *text, size_t len, unsigned default_limit,
                             struct monitor_service *out, size_t cap)
{
    struct pf_entry cur = {0};
    struct pf_entry pass[MONITOR_MAX_SERVICES];
    size_t n_pass = 0, n = 0;
    unsigned postscreen_port = 0;
    size_t i = 0;
    bool any = false;
    while (i < len) {
        size_t j = i;
        while (j < len && text[j] != '\n')
            j++;
        char line[2048];
        size_t ll = j - i < sizeof(line) - 1 ? j - i : sizeof(line) - 1;
        memcpy(line, text + i, ll);
        line[ll] = '\0';
        i = j + 1;
        char *eq = strstr(line, " = ");
        if (!eq) {
            if (line[0] != '\0')
                return -EINVAL;
            continue;
        }
        *eq = '\0';
        const char *value = eq + 3;
        /* key is SERVICE/TYPE/FIELD; SERVICE never holds '/', but split from the right
         * to be safe. */
        char *field = strrchr(line, '/');
        if (!field)
            return -EINVAL;
        *field++ = '\0';
        char *type = strrchr(line, '/');
        if (!type)
            return -EINVAL;
        *type++ = '\0';
        any = true;
        if (strcmp(line, cur.service) != 0 || strcmp(type, cur.type) != 0) {
            memset(&cur, 0, sizeof(cur));
            cpy(cur.service, sizeof(cur.service), line);
            cpy(cur.type, sizeof(cur.type), type);
        }
        if (strcmp(field, "process_limit") == 0) {
            cpy(cur.limit, sizeof(cur.limit), value);
        } else if (strcmp(field, "command") == 0) {
            size_t w = strcspn(value, " \t");
            snprintf(cur.command, sizeof(cur.command), "%.*s", (int)w, value);
            /* command is the last field of an entry: classify it now. */
            bool inet = strcmp(cur.type, "inet") == 0;
            if (inet && strcmp(cur.command, "postscreen") == 0 && !postscreen_port)
                postscreen_port = monitor_inet_port(cur.service);
            if (strcmp(cur.command, "smtpd") != 0)
                continue;
            if (strcmp(cur.type, "pass") == 0) {
                if (n_pass < MONITOR_MAX_SERVICES)
                    pass[n_pass++] = cur;
                continue;
            }
            if (!inet || n >= cap)
                continue;
            struct monitor_service *s = &out[n++];
            memset(s, 0, sizeof(*s));
            join2(s->name, sizeof(s->name), cur.service, cur.type);
            cpy(s->service, sizeof(s->service), cur.service);
            s->port = monitor_inet_port(cur.service);
            s->limit = strcmp(cur.limit, "-") == 0 ? default_limit
                                                   : (unsigned)strtoul(cur.limit, NULL, 10);
        }
    }
    for (size_t k = 0; k < n_pass && n < cap; k++) {
        struct monitor_service *s = &out[n++];
        memset(s, 0, sizeof(*s));
        join2(s->name, sizeof(s->name), pass[k].service, pass[k].type);
        cpy(s->service, sizeof(s->service), pass[k].service);
        s->pass = true;
        s->port = postscreen_port;
        s->limit = strcmp(pass[k].limit, "-") == 0 ? default_limit
                                                   : (unsigned)strtoul(pass[k].limit, NULL, 10);
    }
    return any || len == 0 ? (int)n : -EINVAL;
}

/* ---- the scan (thread pool) ------------------------------------------------------ */

/* Reads a small regular file. The scan may run as root (in the privileged helper): a
 * symlink or FIFO put in the queue directory's pid/ is neither followed nor waited on. */
static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    int fd = fsutil_open_regular(path, O_NOFOLLOW);
    if (fd < 0)
        return fd;
    size_t off = 0;
    while (off + 1 < cap) {
        ssize_t r = read(fd, buf + off, cap - 1 - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    close(fd);
    buf[off] = '\0';
    return (ssize_t)off;
}

struct u64vec {
    uint64_t *v;
    size_t n, cap;
};

static int u64vec_push(struct u64vec *a, uint64_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint64_t *n = realloc(a->v, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        a->v = n;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool u64vec_has(const struct u64vec *a, uint64_t x)
{
    return a->n && bsearch(&x, a->v, a->n, sizeof(x), cmp_u64) != NULL;
}

/* Socket inodes a process holds open ("socket:[N]" links in /proc/PID/fd). */
static void proc_socket_inodes(int pid, struct u64vec *out)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char lp[300], target[64];
        snprintf(lp, sizeof(lp), "/proc/%d/fd/%s", pid, de->d_name);
        ssize_t r = readlink(lp, target, sizeof(target) - 1);
        if (r <= 8)
            continue;
        target[r] = '\0';
        if (strncmp(target, "socket:[", 8) == 0)
            u64vec_push(out, strtoull(target + 8, NULL, 10));
    }
    closedir(d);
}

/* Children of pid: /proc/PID/task/PID/children (master is single-threaded), else a
 * walk of /proc comparing each process's parent. */
static void proc_children(int pid, struct u64vec *out)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, pid);
    char *b = malloc(MONITOR_MAX_CHILDREN);
    if (b && read_small(path, b, MONITOR_MAX_CHILDREN) >= 0) {
        for (char *p = b; *p;) {
            char *end;
            unsigned long c = strtoul(p, &end, 10);
            if (end == p)
                break;
            u64vec_push(out, c);
            p = end;
            while (*p == ' ' || *p == '\n')
                p++;
        }
        free(b);
        return;
    }
    free(b);
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        char sp[300], st[512];
        snprintf(sp, sizeof(sp), "/proc/%s/stat", de->d_name);
        if (read_small(sp, st, sizeof(st)) <= 0)
            continue;
        const char *rp = strrchr(st, ')');
        int ppid = 0;
        if (rp && sscanf(rp + 1, " %*c %d", &ppid) == 1 && ppid == pid)
            u64vec_push(out, strtoull(de->d_name, NULL, 10));
    }
    closedir(d);
}

/* Service name and type from an smtpd command line "smtpd -n NAME -t TYPE ...": master
 * leaves out -n when the service name equals the program name. */
static void smtpd_identity(const char *cmdline, size_t len, char *name, size_t name_sz, char *type,
                           size_t type_sz)
{
    const char *argv0 = cmdline;
    const char *base = strrchr(argv0, '/');
    cpy(name, name_sz, base ? base + 1 : argv0);
    type[0] = '\0';
    const char *prev = NULL;
    for (size_t off = 0; off < len;) {
        const char *a = cmdline + off;
        if (prev && strcmp(prev, "-n") == 0)
            cpy(name, name_sz, a);
        else if (prev && strcmp(prev, "-t") == 0)
            cpy(type, type_sz, a);
        prev = a;
        off += strlen(a) + 1;
    }
}

struct tcp_sock {
    uint64_t ino;
    unsigned port;
};

/* A LISTEN socket is this Postfix's when master holds it (master opens every inet
 * listener): another program, or another Postfix instance on the same port at another
 * address (MULTI_INSTANCE_README), must not add its backlog. With master's descriptors
 * unreadable (owners empty), the port alone decides, as before. */
static bool listen_ours(const struct u64vec *owners, uint64_t ino)
{
    return owners->n == 0 || u64vec_has(owners, ino);
}

/* Records one TCP socket seen on a service port: a LISTEN socket's backlog (one master
 * holds, see listen_ours) counts as clients waiting; any other socket with an inode is a
 * connection some smtpd may own. Returns -ENOMEM when the list cannot grow. */
static int note_tcp(struct monitor_scan *sc, const struct u64vec *owners, unsigned lport,
                    unsigned state, unsigned rxq, uint64_t ino, struct tcp_sock **socks,
                    size_t *n_socks, size_t *cap_socks)
{
    bool wanted = false;
    for (size_t i = 0; i < sc->n_svc; i++) {
        if (sc->svc[i].port != lport)
            continue;
        wanted = true;
        if (state == MONITOR_TCP_LISTEN && !sc->svc[i].pass && listen_ours(owners, ino)) {
            sc->svc[i].waiting += rxq;
            sc->svc[i].waiting_known = true;
        }
    }
    if (!wanted || state == MONITOR_TCP_LISTEN || ino == 0)
        return 0;
    if (*n_socks == *cap_socks) {
        size_t cap = *cap_socks ? *cap_socks * 2 : 64;
        struct tcp_sock *n = realloc(*socks, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        *socks = n;
        *cap_socks = cap;
    }
    (*socks)[(*n_socks)++] = (struct tcp_sock){.ino = ino, .port = lport};
    return 0;
}

/* The same through inet_diag, asking the kernel for every state but TIME_WAIT and
 * SYN_RECV: a busy MX holds thousands of TIME_WAIT sockets, which make /proc/net/tcp
 * cost milliseconds to read (6000 of them: 14 ms here). Returns 0, or a negative errno
 * when sock_diag is unusable (the caller falls back to /proc). Our own network
 * namespace: used only when it is master's (see monitor_scan_run). */
static int scan_tcp_diag(struct monitor_scan *sc, const struct u64vec *owners,
                         struct tcp_sock **socks, size_t *n_socks, size_t *cap_socks)
{
    static const uint8_t families[] = {AF_INET, AF_INET6};
    const uint32_t states = (1u << 1) | (1u << 4) | (1u << 5) | (1u << 7) | (1u << 8) | (1u << 9) |
                            (1u << MONITOR_TCP_LISTEN) | (1u << 11);
    static __thread char buf[32768];
    for (size_t f = 0; f < sizeof(families); f++) {
        int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        if (fd < 0)
            return -errno;
        struct {
            struct nlmsghdr nlh;
            struct inet_diag_req_v2 r;
        } req = {
            .nlh = {.nlmsg_len = sizeof(req),
                    .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                    .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
            .r = {.sdiag_family = families[f],
                  .sdiag_protocol = IPPROTO_TCP,
                  .idiag_states = states},
        };
        struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
        if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        bool done = false;
        int err = 0;
        while (!done) {
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n <= 0) {
                err = n < 0 ? -errno : -EIO;
                break;
            }
            for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
                 h = NLMSG_NEXT(h, n)) {
                if (h->nlmsg_type == NLMSG_DONE) {
                    done = true;
                    break;
                }
                if (h->nlmsg_type == NLMSG_ERROR) {
                    const struct nlmsgerr *e = NLMSG_DATA(h);
                    err = e->error ? e->error : -EIO;
                    done = true;
                    break;
                }
                const struct inet_diag_msg *m = NLMSG_DATA(h);
                note_tcp(sc, owners, ntohs(m->id.idiag_sport), m->idiag_state, m->idiag_rqueue,
                         m->idiag_inode, socks, n_socks, cap_socks);
            }
        }
        close(fd);
        /* No IPv6 in this kernel is not an error. */
        if (err && !(families[f] == AF_INET6 && (err == -ENOENT || err == -EAFNOSUPPORT)))
            return err;
    }
    return 0;
}

/* Fallback: reads /proc/PID/net/tcp and tcp6 (master's network namespace): adds LISTEN backlogs to
 * the non-pass services on that port and collects the inodes of other sockets on a
 * service port (connections a smtpd may own). */
static void scan_tcp(int pid, struct monitor_scan *sc, const struct u64vec *owners,
                     struct tcp_sock **socks, size_t *n_socks, size_t *cap_socks)
{
    static const char *const files[] = {"tcp", "tcp6"};
    for (size_t f = 0; f < 2; f++) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/net/%s", pid, files[f]);
        FILE *fp = fopen(path, "re");
        if (!fp)
            continue;
        char *line = NULL;
        size_t lsz = 0;
        bool first = true;
        while (getline(&line, &lsz, fp) > 0) {
            if (first) {
                first = false;
                continue;
            }
            unsigned lport, state, rxq;
            unsigned long ino;
            if (sscanf(line,
                       " %*u: %*[0-9A-Fa-f]:%X %*[0-9A-Fa-f]:%*X %X %*X:%X %*X:%*X %*X %*u %*u %lu",
                       &lport, &state, &rxq, &ino) != 4)
                continue;
            if (note_tcp(sc, owners, lport, state, rxq, ino, socks, n_socks, cap_socks) < 0)
                break;
        }
        free(line);
        fclose(fp);
    }
}

/* Backlogs of master's listening unix sockets named private/NAME, for the pass services,
 * through sock_diag (/proc/net/unix has no queue column). */
static void scan_unix_backlog(struct monitor_scan *sc, const struct u64vec *master_inodes)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return;
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req r;
    } req = {
        .nlh = {.nlmsg_len = sizeof(req),
                .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
        .r = {.sdiag_family = AF_UNIX,
              .udiag_states = 1u << MONITOR_TCP_LISTEN,
              .udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN},
    };
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return;
    }
    static __thread char buf[32768];
    bool done = false;
    while (!done) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
                done = true;
                break;
            }
            struct unix_diag_msg *m = NLMSG_DATA(h);
            if (!u64vec_has(master_inodes, m->udiag_ino))
                continue;
            char name[128] = "";
            int rq = -1;
            size_t alen = h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
            struct nlattr *a = (struct nlattr *)(m + 1);
            while (alen >= sizeof(*a) && a->nla_len >= sizeof(*a) && a->nla_len <= alen) {
                size_t plen = a->nla_len - sizeof(*a);
                const char *pl = (const char *)(a + 1);
                if (a->nla_type == UNIX_DIAG_NAME && plen < sizeof(name)) {
                    memcpy(name, pl, plen);
                    name[plen] = '\0';
                } else if (a->nla_type == UNIX_DIAG_RQLEN &&
                           plen >= sizeof(struct unix_diag_rqlen)) {
                    rq = (int)((const struct unix_diag_rqlen *)pl)->udiag_rqueue;
                }
                size_t step = NLA_ALIGN(a->nla_len);
                if (step >= alen)
                    break;
                alen -= step;
                a = (struct nlattr *)((char *)a + step);
            }
            if (rq < 0)
                continue;
            /* master binds "private/NAME" relative to queue_directory. */
            const char *slash = strrchr(name, '/');
            if (!slash || slash - name < 7 || strncmp(slash - 7, "private", 7) != 0)
                continue;
            for (size_t i = 0; i < sc->n_svc; i++) {
                if (sc->svc[i].pass && strcmp(sc->svc[i].service, slash + 1) == 0) {
                    sc->svc[i].waiting += (unsigned)rq;
                    sc->svc[i].waiting_known = true;
                }
            }
        }
    }
    close(fd);
}

static int64_t file_mtime_ns(const char *dir, const char *name)
{
    char path[1100];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (stat(path, &sb) != 0)
        return 0;
    return (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void monitor_scan_run(struct monitor_scan *sc)
{
    uint64_t t0 = mono_us();
    sc->master_pid = 0;
    sc->master_running = sc->qmgr_running = false;
    for (size_t i = 0; i < sc->n_svc; i++) {
        sc->svc[i].alive = sc->svc[i].busy = sc->svc[i].waiting = 0;
        sc->svc[i].waiting_known = false;
    }
    sc->cfg_stamp =
        file_mtime_ns(sc->config_dir, "main.cf") * 3 + file_mtime_ns(sc->config_dir, "master.cf");

    struct u64vec kids = {0}, master_inodes = {0};
    struct u64vec smtpd_pid = {0}, smtpd_svc = {0};
    struct u64vec *smtpd_inodes = NULL;
    struct tcp_sock *socks = NULL;
    size_t n_socks = 0, cap_socks = 0;
    char buf[4096], path[1100];

    snprintf(path, sizeof(path), "%s/pid/master.pid", sc->queue_dir);
    if (sc->queue_dir[0] == '\0' || read_small(path, buf, sizeof(buf)) <= 0)
        goto out;
    int pid = atoi(buf);
    if (pid <= 0)
        goto out;
    snprintf(path, sizeof(path), "/proc/%d/comm", pid);
    if (read_small(path, buf, sizeof(buf)) <= 0 || strcmp(buf, "master\n") != 0)
        goto out;
    sc->master_pid = pid;
    sc->master_running = true;

    proc_children(pid, &kids);
    for (size_t k = 0; k < kids.n; k++) {
        int c = (int)kids.v[k];
        snprintf(path, sizeof(path), "/proc/%d/comm", c);
        if (read_small(path, buf, sizeof(buf)) <= 0)
            continue;
        if (strcmp(buf, "qmgr\n") == 0) {
            sc->qmgr_running = true;
            continue;
        }
        if (strcmp(buf, "smtpd\n") != 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%d/cmdline", c);
        ssize_t cl = read_small(path, buf, sizeof(buf));
        if (cl <= 0)
            continue;
        char name[STRESS_SERVICE_NAME_MAX], type[16];
        smtpd_identity(buf, (size_t)cl, name, sizeof(name), type, sizeof(type));
        for (size_t i = 0; i < sc->n_svc; i++) {
            const char *slash = strrchr(sc->svc[i].name, '/');
            if (strcmp(sc->svc[i].service, name) != 0 || !slash || strcmp(slash + 1, type) != 0)
                continue;
            sc->svc[i].alive++;
            u64vec_push(&smtpd_pid, (uint64_t)c);
            u64vec_push(&smtpd_svc, i);
            break;
        }
    }
    if (smtpd_pid.n) {
        smtpd_inodes = calloc(smtpd_pid.n, sizeof(*smtpd_inodes));
        if (!smtpd_inodes)
            goto out;
        for (size_t k = 0; k < smtpd_pid.n; k++)
            proc_socket_inodes((int)smtpd_pid.v[k], &smtpd_inodes[k]);
    }
    /* sock_diag answers for our network namespace: use it when master shares it. */
    bool same_ns = false;
    {
        struct stat a, b;
        snprintf(path, sizeof(path), "/proc/%d/ns/net", pid);
        same_ns = stat("/proc/self/ns/net", &a) == 0 && stat(path, &b) == 0 &&
                  a.st_ino == b.st_ino && a.st_dev == b.st_dev;
    }
    /* master's sockets: which LISTEN sockets are this instance's, and (below) which unix
     * sockets are the pass services' backlogs. */
    proc_socket_inodes(pid, &master_inodes);
    if (master_inodes.n > 1)
        qsort(master_inodes.v, master_inodes.n, sizeof(uint64_t), cmp_u64);
    if (!same_ns || sc->proc_only ||
        scan_tcp_diag(sc, &master_inodes, &socks, &n_socks, &cap_socks) != 0) {
        for (size_t i = 0; i < sc->n_svc; i++) {
            sc->svc[i].waiting = 0;
            sc->svc[i].waiting_known = false;
        }
        n_socks = 0;
        scan_tcp(pid, sc, &master_inodes, &socks, &n_socks, &cap_socks);
    }
    /* busy: the smtpd holds a connection (not the shared LISTEN socket) on its port. */
    for (size_t k = 0; k < smtpd_pid.n; k++) {
        struct monitor_service *s = &sc->svc[smtpd_svc.v[k]];
        if (smtpd_inodes[k].n > 1)
            qsort(smtpd_inodes[k].v, smtpd_inodes[k].n, sizeof(uint64_t), cmp_u64);
        for (size_t j = 0; j < n_socks; j++) {
            if (socks[j].port == s->port && u64vec_has(&smtpd_inodes[k], socks[j].ino)) {
                s->busy++;
                break;
            }
        }
    }
    bool any_pass = false;
    for (size_t i = 0; i < sc->n_svc; i++)
        any_pass |= sc->svc[i].pass;
    if (any_pass)
        scan_unix_backlog(sc, &master_inodes);
out:
    for (size_t k = 0; smtpd_inodes && k < smtpd_pid.n; k++)
        free(smtpd_inodes[k].v);
    free(smtpd_inodes);
    free(smtpd_pid.v);
    free(smtpd_svc.v);
    free(kids.v);
    free(master_inodes.v);
    free(socks);
    sc->scan_us = mono_us() - t0;
}

/* ---- loop side -------------------------------------------------------------------- */

static void monitor_maybe_free(struct monitor *m)
{
    if (!m->closing || !m->timer_closed || !m->tail_closed || m->scan_running || m->spawn)
        return;
    monitor_closed_cb closed = m->closed;
    void *arg = m->closed_arg;
    free(m->config_dir);
    free(m->maillog_file);
    free(m->syslog_name);
    free(m->postconf);
    free(m);
    if (closed)
        closed(arg);
}

static void monitor_deliver(struct monitor *m)
{
    if (!m->tick_open || m->scan_running || m->tail_running || m->closing)
        return;
    m->tick_open = false;
    struct monitor_sample *s = calloc(1, sizeof(*s));
    if (!s) {
        log_error("out of memory building a sample");
        return;
    }
    s->now_ms = m->tick_ms;
    s->n_services = m->scan.n_svc;
    memcpy(s->services, m->scan.svc, sizeof(s->services[0]) * s->n_services);
    s->limits_known = m->limits_known;
    s->master_running = m->scan.master_running;
    s->qmgr_running = m->scan.qmgr_running;
    s->master_pid = m->scan.master_pid;
    s->log = m->log;
    s->postscreen_stress = m->postscreen_stress;
    s->scan_us = m->scan.scan_us;
    s->skipped_ticks = m->skipped_ticks;
    memset(&m->log, 0, sizeof(m->log));
    m->cb(m, s, m->arg);
    free(s);
}

static void monitor_scan_finished(struct monitor *m, int status)
{
    m->scan_running = false;
    if (m->closing) {
        monitor_maybe_free(m);
        return;
    }
    if (status == 0) {
        /* Config files changed, or master restarted: the service list may differ. */
        bool changed = m->cfg_stamp && m->scan.cfg_stamp != m->cfg_stamp;
        bool restarted =
            m->last_master_pid && m->scan.master_pid && m->scan.master_pid != m->last_master_pid;
        m->cfg_stamp = m->scan.cfg_stamp;
        if (m->scan.master_pid)
            m->last_master_pid = m->scan.master_pid;
        if (changed || restarted) {
            log_info("%s changed; re-reading services and limits",
                     changed ? "main.cf or master.cf" : "master pid");
            monitor_refresh_limits(m);
        }
    }
    monitor_deliver(m);
}

static void monitor_after_scan(uv_work_t *w, int status)
{
    monitor_scan_finished(container_of(w, struct monitor, work), status);
}

static void monitor_scanner_done(void *arg, int status)
{
    monitor_scan_finished(arg, status);
}

static void monitor_scan_work(uv_work_t *w)
{
    struct monitor *m = container_of(w, struct monitor, work);
    monitor_scan_run(&m->scan);
}

static void monitor_tail_polled(struct tail *t, void *arg)
{
    struct monitor *m = arg;
    (void)t;
    m->tail_running = false;
    monitor_deliver(m);
}

static void monitor_on_tick(uv_timer_t *timer)
{
    struct monitor *m = timer->data;
    if (m->tick_open) {
        /* The previous tick's scan is still in the thread pool: skip, do not pile up. */
        m->skipped_ticks++;
        return;
    }
    m->tick_open = true;
    m->tick_ms = uv_now(m->loop);
    memcpy(m->scan.svc, m->svc, sizeof(m->svc));
    m->scan.n_svc = m->n_svc;
    snprintf(m->scan.queue_dir, sizeof(m->scan.queue_dir), "%s", m->queue_dir);
    snprintf(m->scan.config_dir, sizeof(m->scan.config_dir), "%s", m->config_dir);
    if (m->scanner.start) {
        if (m->scanner.start(m->scanner.arg, &m->scan, monitor_scanner_done, m) == 0)
            m->scan_running = true;
    } else if (uv_queue_work(m->loop, &m->work, monitor_scan_work, monitor_after_scan) == 0) {
        m->scan_running = true;
    }
    if (m->tail && tail_poll(m->tail, monitor_tail_polled, m) == 0)
        m->tail_running = true;
    monitor_deliver(m);
}

/* ---- postconf rounds: -h (default_process_limit, queue_directory, syslog_name), then -F - */

static void monitor_postconf_F_done(struct spawn *sp, const struct spawn_result *r, void *arg);

static bool monitor_postconf_failed(struct monitor *m, const char *what,
                                    const struct spawn_result *r)
{
    if (r->exit_status == 0 && !r->timed_out && !r->out_truncated)
        return false;
    log_warn_ratelimited(&m->rl_postconf, uv_now(m->loop), 60000,
                         "postconf %s for %s failed (exit %d, signal %d%s%s): %.*s", what,
                         m->config_dir, r->exit_status, r->term_signal,
                         r->timed_out ? ", timed out" : "",
                         r->out_truncated ? ", output truncated" : "",
                         (int)(r->err_len > 500 ? 500 : r->err_len), r->err);
    return true;
}

static void monitor_refresh_end(struct monitor *m)
{
    m->spawn = NULL;
    if (m->closing) {
        monitor_maybe_free(m);
        return;
    }
    if (m->refresh_wanted) {
        m->refresh_wanted = false;
        monitor_refresh_limits(m);
    }
}

/* The journal's entries are this instance's: from the setting, else from postconf (name),
 * else, while postconf fails, Postfix's default. */
static void monitor_set_syslog_name(struct monitor *m, const char *name, size_t len)
{
    char buf[256];
    if (!m->tail || m->syslog_name || strcmp(tail_source(m->tail), "journal") != 0)
        return;
    if (len == 0 || len >= sizeof(buf)) {
        if (tail_syslog_name(m->tail)[0])
            return;
        log_warn("syslog_name of %s unknown: reading the journal entries of postfix, "
                 "Postfix's default (set maillog_syslog_name to choose)",
                 m->config_dir);
        name = "postfix";
        len = 7;
    }
    snprintf(buf, sizeof(buf), "%.*s", (int)len, name);
    if (tail_set_syslog_name(m->tail, buf) < 0)
        log_warn("cannot set the journal filter to %s", buf);
}

static void monitor_postconf_h_done(struct spawn *sp, const struct spawn_result *r, void *arg)
{
    struct monitor *m = arg;
    (void)sp;
    if (m->closing || monitor_postconf_failed(m, "-h", r)) {
        if (!m->closing)
            monitor_set_syslog_name(m, NULL, 0);
        monitor_refresh_end(m);
        return;
    }
    /* Three lines, in the order asked: default_process_limit, queue_directory,
     * syslog_name. */
    const char *nl = memchr(r->out, '\n', r->out_len);
    const char *nl2 = nl ? memchr(nl + 1, '\n', r->out_len - (size_t)(nl + 1 - r->out)) : NULL;
    if (!nl2) {
        log_warn("postconf -h for %s: unexpected output", m->config_dir);
        monitor_set_syslog_name(m, NULL, 0);
        monitor_refresh_end(m);
        return;
    }
    m->default_limit = (unsigned)strtoul(r->out, NULL, 10);
    snprintf(m->queue_dir, sizeof(m->queue_dir), "%.*s", (int)(nl2 - nl - 1), nl + 1);
    monitor_set_syslog_name(m, nl2 + 1, strcspn(nl2 + 1, "\n"));
    const char *argv[] = {m->postconf, "-c", m->config_dir, "-F", NULL};
    struct spawn_opts o = {.timeout_ms = m->command_timeout_ms};
    int rc = spawn_start(m->loop, argv, &o, monitor_postconf_F_done, m, &m->spawn);
    if (rc < 0) {
        log_warn("cannot run %s: %s", m->postconf, uv_strerror(rc));
        monitor_refresh_end(m);
    }
}

static void monitor_postconf_F_done(struct spawn *sp, const struct spawn_result *r, void *arg)
{
    struct monitor *m = arg;
    (void)sp;
    if (m->closing || monitor_postconf_failed(m, "-F", r)) {
        monitor_refresh_end(m);
        return;
    }
    struct monitor_service svc[MONITOR_MAX_SERVICES];
    int n =
        monitor_parse_postconf_F(r->out, r->out_len, m->default_limit, svc, MONITOR_MAX_SERVICES);
    if (n < 0) {
        log_warn("postconf -F for %s: unparsable output", m->config_dir);
    } else {
        if (n == 0)
            log_warn("%s/master.cf has no public smtpd service to watch", m->config_dir);
        bool changed = !m->limits_known || (size_t)n != m->n_svc;
        for (int i = 0; !changed && i < n; i++)
            changed = strcmp(svc[i].name, m->svc[i].name) != 0 || svc[i].limit != m->svc[i].limit;
        memcpy(m->svc, svc, sizeof(svc[0]) * (size_t)n);
        m->n_svc = (size_t)n;
        m->limits_known = true;
        if (changed) {
            for (int i = 0; i < n; i++)
                log_info("watching %s: port %u, process limit %u", svc[i].name, svc[i].port,
                         svc[i].limit);
        }
    }
    monitor_refresh_end(m);
}

void monitor_refresh_limits(struct monitor *m)
{
    if (!m || m->closing)
        return;
    if (m->spawn) {
        m->refresh_wanted = true;
        return;
    }
    /* -x: syslog_name's default is ${multi_instance_name?{$multi_instance_name}:{postfix}}. */
    const char *argv[] = {
        m->postconf,       "-c",          m->config_dir, "-xh", "default_process_limit",
        "queue_directory", "syslog_name", NULL};
    struct spawn_opts o = {.timeout_ms = m->command_timeout_ms};
    int rc = spawn_start(m->loop, argv, &o, monitor_postconf_h_done, m, &m->spawn);
    if (rc < 0) {
        m->spawn = NULL;
        monitor_set_syslog_name(m, NULL, 0);
        log_warn_ratelimited(&m->rl_postconf, uv_now(m->loop), 60000, "cannot run %s: %s",
                             m->postconf, uv_strerror(rc));
    }
}

/* ---- mail log ---------------------------------------------------------------------- */

static void monitor_on_line(struct tail *t, const char *line, size_t len, bool truncated, void *arg)
{
    struct monitor *m = arg;
    (void)t;
    struct maillog_record rec;
    m->log.lines++;
    if (truncated)
        m->log.truncated_lines++;
    switch (maillog_parse_line(line, len, &rec)) {
    case MAILLOG_PROCESS_LIMIT:
        m->log.process_limit++;
        snprintf(m->log.last_process_limit_service, sizeof(m->log.last_process_limit_service), "%s",
                 rec.service);
        break;
    case MAILLOG_POSTSCREEN_ENTER:
        m->log.postscreen_enter++;
        m->postscreen_stress = true;
        break;
    case MAILLOG_POSTSCREEN_LEAVE:
        m->log.postscreen_leave++;
        m->postscreen_stress = false;
        break;
    case MAILLOG_PORTS_BUSY:
        m->log.ports_busy++;
        break;
    case MAILLOG_LIMIT_EXCEEDED:
        m->log.limit_exceeded++;
        break;
    case MAILLOG_ANVIL_STATS:
        m->log.anvil_stats++;
        break;
    case MAILLOG_LOST_CONNECTION:
        if (strcmp(rec.stage, "CONNECT") == 0)
            m->log.lost_after_connect++;
        break;
    case MAILLOG_REJECT:
        m->log.rejects++;
        break;
    default:
        break;
    }
    if (m->on_log && rec.kind != MAILLOG_OTHER)
        m->on_log(m, &rec, m->arg);
}

/* ---- life cycle -------------------------------------------------------------------- */

struct monitor *monitor_new(uv_loop_t *loop, const struct monitor_opts *opts, monitor_sample_cb cb,
                            void *arg)
{
    if (!loop || !opts || !opts->config_dir || !opts->config_dir[0] || !cb)
        return NULL;
    struct monitor *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->config_dir = strdup(opts->config_dir);
    m->postconf = strdup(opts->postconf ? opts->postconf : "postconf");
    if (opts->maillog_file && opts->maillog_file[0])
        m->maillog_file = strdup(opts->maillog_file);
    if (opts->syslog_name && opts->syslog_name[0])
        m->syslog_name = strdup(opts->syslog_name);
    if (!m->config_dir || !m->postconf ||
        (opts->maillog_file && opts->maillog_file[0] && !m->maillog_file) ||
        (opts->syslog_name && opts->syslog_name[0] && !m->syslog_name)) {
        free(m->config_dir);
        free(m->postconf);
        free(m->maillog_file);
        free(m->syslog_name);
        free(m);
        return NULL;
    }
    m->loop = loop;
    m->cb = cb;
    m->on_log = opts->on_log;
    m->scanner = opts->scanner;
    m->arg = arg;
    m->interval_ms = opts->interval_ms ? opts->interval_ms : 1000;
    m->command_timeout_ms = opts->command_timeout_ms ? opts->command_timeout_ms : 30000;
    m->log_from_start = opts->log_from_start;
    m->scan.proc_only = opts->proc_only;
    m->tail_closed = true;
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    return m;
}

int monitor_start(struct monitor *m)
{
    if (!m || m->closing || m->started)
        return -EINVAL;
    if (m->maillog_file) {
        /* The monitor's ticks drive the tail (interval 0), so a sample's log counts
         * cover the log up to that tick. */
        struct tail_opts to = {.from_start = m->log_from_start, .syslog_name = m->syslog_name};
        m->tail = tail_new(m->loop, m->maillog_file, &to, monitor_on_line, m);
        if (!m->tail)
            return -ENOMEM;
        m->tail_closed = false;
        int rc = tail_start(m->tail);
        if (rc < 0)
            log_warn("%s: %s", m->maillog_file, uv_strerror(rc));
    }
    m->started = true;
    monitor_refresh_limits(m);
    uv_timer_start(&m->timer, monitor_on_tick, m->interval_ms, m->interval_ms);
    return 0;
}

const char *monitor_log_source(const struct monitor *m)
{
    return m && m->tail && m->started ? tail_source(m->tail) : "";
}

const char *monitor_log_filter(const struct monitor *m)
{
    return m && m->tail && m->started ? tail_syslog_name(m->tail) : "";
}

static void monitor_timer_on_close(uv_handle_t *h)
{
    struct monitor *m = h->data;
    m->timer_closed = true;
    monitor_maybe_free(m);
}

static void monitor_tail_on_closed(void *arg)
{
    struct monitor *m = arg;
    m->tail = NULL;
    m->tail_closed = true;
    monitor_maybe_free(m);
}

void monitor_close(struct monitor *m, monitor_closed_cb closed, void *arg)
{
    if (!m || m->closing)
        return;
    m->closing = true;
    m->closed = closed;
    m->closed_arg = arg;
    uv_timer_stop(&m->timer);
    if (m->scan_running)
        uv_cancel((uv_req_t *)&m->work); /* may fail if already running: then we wait */
    if (m->spawn)
        spawn_cancel(m->spawn);
    if (m->tail)
        tail_close(m->tail, monitor_tail_on_closed, m);
    uv_close((uv_handle_t *)&m->timer, monitor_timer_on_close);
}

size_t monitor_sample_to_stress(const struct monitor_sample *s, struct stress_service_sample *svc,
                                size_t cap, struct stress_sample *out)
{
    size_t n = s->n_services < cap ? s->n_services : cap;
    for (size_t i = 0; i < n; i++) {
        memset(&svc[i], 0, sizeof(svc[i]));
        snprintf(svc[i].name, sizeof(svc[i].name), "%s", s->services[i].name);
        svc[i].busy = s->services[i].busy;
        svc[i].alive = s->services[i].alive;
        svc[i].limit = s->services[i].limit;
        svc[i].waiting = s->services[i].waiting;
    }
    memset(out, 0, sizeof(*out));
    out->now_ms = (int64_t)s->now_ms;
    out->services = svc;
    out->n_services = n;
    out->process_limit_warning = s->log.process_limit > 0;
    out->postscreen_stress = s->postscreen_stress;
    out->policy_stress_pct = -1;
    out->master_running = s->master_running;
    out->qmgr_running = s->qmgr_running;
    out->cluster_stressed_pct = -1;
    return n;
}
