/*
 * loadgen: a load generator for Postfix policy servers (postsurge and its peers).
 * It speaks the SMTPD policy protocol over N persistent connections with one request
 * outstanding on each, as smtpd does, sends realistic Postfix 3.7 RCPT requests (the 29
 * attributes in Postfix's order, varied client addresses over many /24s, SASL users,
 * senders, recipients), checks that every reply is exactly `action=...\n\n`, and prints
 * throughput, latency percentiles, errors, the action histogram and the peer's CPU use.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define MAX_DURATION_S 3600
#define MAX_REQUESTS 100000000ULL
#define OUT_CAP 2048
/* A reply longer than Postfix's 8192-character action cap plus framing is an error. */
#define IN_CAP 8300
#define MAX_ACTIONS 32
#define ACTION_NAME_MAX 24

struct conn {
    int fd;
    int idx;
    char out[OUT_CAP];
    size_t out_len, out_off;
    char in[IN_CAP];
    size_t in_len;
    uint64_t sent_ns;
    bool waiting;
    bool measured; /* request was sent during the measured phase */
    unsigned reconnects;
};

struct action_count {
    char name[ACTION_NAME_MAX];
    uint64_t n;
};

struct opts {
    const char *target;
    int conns;
    uint64_t requests; /* 0: bounded by duration only */
    double duration_s;
    double warmup_s;
    double timeout_s;
    int peer_pid;
    unsigned nets;
    unsigned hosts;
    unsigned senders;
    uint64_t seed;
    const char *label;
    bool unique; /* -U: every request from a client address not used before */
    uint32_t unique_skip;
};

static struct {
    struct opts o;
    int ep;
    struct conn *conns;
    int live;
    bool measuring;
    uint64_t sent, done, errors, timeouts, conn_errors;
    uint32_t *lat_us;
    size_t lat_len, lat_cap;
    struct action_count actions[MAX_ACTIONS];
    int nactions;
    uint64_t action_other;
    uint64_t rng;
    uint32_t next_addr; /* -U: the next client address */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} g;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: fast, reproducible with -s, good enough to spread keys. */
static uint64_t rnd(void)
{
    g.rng ^= g.rng >> 12;
    g.rng ^= g.rng << 25;
    g.rng ^= g.rng >> 27;
    return g.rng * 2685821657736338717ULL;
}

static unsigned rnd_below(unsigned n)
{
    return n ? (unsigned)(rnd() % n) : 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen [options] HOST:PORT | inet:HOST:PORT | unix:PATH | /PATH\n"
            "  -c N     connections, one request outstanding on each (default 8)\n"
            "  -n N     measured requests in total (default: bounded by -d)\n"
            "  -d SECS  measured duration (default 5; max %d)\n"
            "  -w SECS  warm-up before measuring (default 0.5)\n"
            "  -t SECS  reply timeout per request (default 5)\n"
            "  -p PID   report the CPU time of PID and its descendants per request\n"
            "  -N NETS  distinct client /24 networks (default 4096)\n"
            "  -H N     distinct hosts per /24, 1-254 (default 254)\n"
            "  -S N     distinct senders and SASL users (default 10000)\n"
            "  -U SKIP  every request from a new client address, from 11.0.0.1 + SKIP upwards\n"
            "           (a flood of distinct clients; -N and -H are then ignored)\n"
            "  -s SEED  random seed (default 1)\n"
            "  -l NAME  label for the machine-readable line\n"
            "Prints a human summary and one line starting with 'LOADGEN '.\n"
            "Exit status: 0 if no errors, 1 if any reply was wrong or missing, 2 on usage or\n"
            "connect failure.\n",
            MAX_DURATION_S);
}

static int parse_target(const char *t)
{
    memset(&g.addr, 0, sizeof(g.addr));
    if (strncmp(t, "unix:", 5) == 0 || t[0] == '/') {
        const char *path = t[0] == '/' ? t : t + 5;
        struct sockaddr_un *un = (struct sockaddr_un *)&g.addr;
        if (strlen(path) >= sizeof(un->sun_path))
            return -ENAMETOOLONG;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, path);
        g.addrlen = sizeof(*un);
        return 0;
    }
    if (strncmp(t, "inet:", 5) == 0)
        t += 5;
    const char *colon = strrchr(t, ':');
    if (!colon)
        return -EINVAL;
    char host[256];
    size_t hl = (size_t)(colon - t);
    if (hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, t, hl);
    host[hl] = '\0';
    /* Accept [v6addr]:port. */
    char *h = host;
    if (h[0] == '[' && hl > 1 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    if (getaddrinfo(h, colon + 1, &hints, &res) != 0 || !res)
        return -EINVAL;
    memcpy(&g.addr, res->ai_addr, res->ai_addrlen);
    g.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Connects blocking (loopback is immediate), then switches to non-blocking. */
static int conn_open(struct conn *c)
{
    int fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&g.addr, g.addrlen) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (g.addr.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    c->fd = fd;
    c->in_len = 0;
    c->waiting = false;
    g.live++;
    return 0;
}

static void conn_close(struct conn *c)
{
    if (c->fd < 0)
        return;
    epoll_ctl(g.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->waiting = false;
    g.live--;
}

/* A bounded string builder: the request is built by hand, not with snprintf, which cost
 * 10,000 instructions per request and made the generator the machine's third-busiest
 * process in the benchmark. Output that would overflow is cut (never happens: OUT_CAP
 * is far above the longest request). */
struct sb {
    char *p, *end;
};

static void sb_mem(struct sb *b, const char *s, size_t n)
{
    if (n > (size_t)(b->end - b->p))
        n = (size_t)(b->end - b->p);
    memcpy(b->p, s, n);
    b->p += n;
}

#define SB_LIT(b, lit) sb_mem((b), (lit), sizeof(lit) - 1)

static void sb_str(struct sb *b, const char *s)
{
    sb_mem(b, s, strlen(s));
}

static void sb_u(struct sb *b, uint64_t v)
{
    char d[20];
    int n = 0;
    do {
        d[sizeof(d) - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sb_mem(b, d + sizeof(d) - n, (size_t)n);
}

static void sb_x(struct sb *b, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char d[16];
    int n = 0;
    do {
        d[sizeof(d) - 1 - n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    sb_mem(b, d + sizeof(d) - n, (size_t)n);
}

/* Builds one Postfix 3.7 RCPT request (29 attributes in Postfix's order). */
static void build_request(struct conn *c)
{
    unsigned net = rnd_below(g.o.nets);
    /* Spread the networks over public-looking space: multiplying by an odd constant
     * permutes them, the top bytes become the /24. */
    uint32_t h = (uint32_t)net * 2654435761u;
    unsigned a = 11 + (h >> 24) % 212, b = (h >> 16) & 255, cc = (h >> 8) & 255;
    unsigned host = 1 + rnd_below(g.o.hosts);
    if (g.o.unique) {
        uint32_t v = g.next_addr++;
        a = v >> 24, b = (v >> 16) & 255, cc = (v >> 8) & 255, host = v & 255;
    }
    unsigned user = rnd_below(g.o.senders);
    unsigned sdom = user % 997;
    bool sasl = rnd_below(4) == 0;
    bool tls = rnd_below(2) == 0;
    bool named = rnd_below(3) != 0;
    /* One in twenty is a bounce (null sender), as on a real MX. */
    bool bounce = rnd_below(20) == 0;
    unsigned port = 1024 + rnd_below(64000);
    unsigned rcpt = rnd_below(50000), rdom = rnd_below(500);
    uint64_t inst = rnd();
    unsigned size = 500 + rnd_below(2000000);

    char name[80];
    struct sb nb = {name, name + sizeof(name) - 1};
    if (named) {
        SB_LIT(&nb, "host-");
        sb_u(&nb, a);
        SB_LIT(&nb, "-");
        sb_u(&nb, b);
        SB_LIT(&nb, "-");
        sb_u(&nb, cc);
        SB_LIT(&nb, "-");
        sb_u(&nb, host);
        SB_LIT(&nb, ".isp");
        sb_u(&nb, net % 97);
        SB_LIT(&nb, ".example.net");
    } else {
        SB_LIT(&nb, "unknown");
    }
    *nb.p = '\0';

    struct sb o = {c->out, c->out + sizeof(c->out)};
    SB_LIT(&o, "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=");
    if (sasl)
        SB_LIT(&o, "ESMTPSA");
    else
        SB_LIT(&o, "ESMTP");
    SB_LIT(&o, "\nclient_address=");
    sb_u(&o, a);
    SB_LIT(&o, ".");
    sb_u(&o, b);
    SB_LIT(&o, ".");
    sb_u(&o, cc);
    SB_LIT(&o, ".");
    sb_u(&o, host);
    SB_LIT(&o, "\nclient_name=");
    sb_str(&o, name);
    SB_LIT(&o, "\nclient_port=");
    sb_u(&o, port);
    SB_LIT(&o, "\nreverse_client_name=");
    sb_str(&o, name);
    SB_LIT(&o, "\nserver_address=192.0.2.25\nserver_port=25\nhelo_name=mail.isp");
    sb_u(&o, net % 97);
    SB_LIT(&o, ".example.net\nsender=");
    if (!bounce) {
        SB_LIT(&o, "user");
        sb_u(&o, user);
        SB_LIT(&o, "@domain");
        sb_u(&o, sdom);
        SB_LIT(&o, ".example");
    }
    SB_LIT(&o, "\nrecipient=rcpt");
    sb_u(&o, rcpt);
    SB_LIT(&o, "@dest");
    sb_u(&o, rdom);
    SB_LIT(&o, ".example\nrecipient_count=0\nqueue_id=\ninstance=");
    sb_x(&o, inst & 0xfffff);
    SB_LIT(&o, ".");
    sb_x(&o, (inst >> 20) & 0xfffff);
    SB_LIT(&o, ".");
    sb_x(&o, (inst >> 40) & 0xffff);
    SB_LIT(&o, ".0\nsize=");
    sb_u(&o, size);
    SB_LIT(&o, "\netrn_domain=\nstress=\nsasl_method=");
    if (sasl)
        SB_LIT(&o, "PLAIN");
    SB_LIT(&o, "\nsasl_username=");
    if (sasl) {
        SB_LIT(&o, "user");
        sb_u(&o, user);
    }
    SB_LIT(&o, "\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
               "ccert_pubkey_fingerprint=\nencryption_protocol=");
    if (tls)
        SB_LIT(&o, "TLSv1.3");
    SB_LIT(&o, "\nencryption_cipher=");
    if (tls)
        SB_LIT(&o, "TLS_AES_256_GCM_SHA384");
    SB_LIT(&o, "\nencryption_keysize=");
    if (tls)
        SB_LIT(&o, "256");
    SB_LIT(&o, "\npolicy_context=\n\n");
    c->out_len = (size_t)(o.p - c->out);
    c->out_off = 0;
}

static void lat_push(uint32_t us)
{
    if (g.lat_len == g.lat_cap) {
        size_t cap = g.lat_cap ? g.lat_cap * 2 : 65536;
        uint32_t *p = realloc(g.lat_us, cap * sizeof(*p));
        if (!p)
            return; /* Fewer samples, still correct percentiles of what we kept. */
        g.lat_us = p;
        g.lat_cap = cap;
    }
    g.lat_us[g.lat_len++] = us;
}

static void count_action(const char *act, size_t len)
{
    size_t w = 0;
    while (w < len && !isspace((unsigned char)act[w]))
        w++;
    if (w >= ACTION_NAME_MAX)
        w = ACTION_NAME_MAX - 1;
    for (int i = 0; i < g.nactions; i++)
        if (strlen(g.actions[i].name) == w && strncasecmp(g.actions[i].name, act, w) == 0) {
            g.actions[i].n++;
            return;
        }
    if (g.nactions == MAX_ACTIONS) {
        g.action_other++;
        return;
    }
    memcpy(g.actions[g.nactions].name, act, w);
    g.actions[g.nactions].name[w] = '\0';
    for (size_t i = 0; i < w; i++)
        g.actions[g.nactions].name[i] = (char)toupper((unsigned char)g.actions[g.nactions].name[i]);
    g.actions[g.nactions++].n = 1;
}

static bool want_more(void)
{
    return g.o.requests == 0 || !g.measuring || g.sent < g.o.requests;
}

/* Sends the next request on c; returns 0, or -1 if the connection failed. */
static int conn_send(struct conn *c)
{
    build_request(c);
    c->sent_ns = now_ns();
    c->measured = g.measuring;
    if (g.measuring)
        g.sent++;
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            /* A request fits in the socket buffer of an idle connection; waiting for
             * EPOLLOUT here would only matter for a server that stopped reading. */
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
            break;
        }
        if (w <= 0)
            return -1;
        c->out_off += (size_t)w;
    }
    c->waiting = true;
    return 0;
}

static void conn_fail(struct conn *c, bool timeout)
{
    if (c->waiting && c->measured) {
        if (timeout)
            g.timeouts++;
        else
            g.errors++;
    } else if (!c->waiting) {
        g.conn_errors++;
    }
    conn_close(c);
    /* Reconnect a bounded number of times, so a broken peer cannot spin us. */
    if (c->reconnects < 100 && conn_open(c) == 0) {
        c->reconnects++;
        if (want_more() && conn_send(c) < 0)
            conn_close(c);
    }
}

/* The first "\n\n" in buf, or NULL (memmem is a GNU extension). */
static char *find_blank_line(char *buf, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (buf[i] == '\n' && buf[i + 1] == '\n')
            return buf + i;
    return NULL;
}

/* Handles readable data: one complete reply ends the outstanding request. */
static void conn_read(struct conn *c)
{
    for (;;) {
        ssize_t r = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            conn_fail(c, false);
            return;
        }
        c->in_len += (size_t)r;
        char *end = find_blank_line(c->in, c->in_len);
        if (!end) {
            if (c->in_len == sizeof(c->in))
                conn_fail(c, false);
            else
                continue;
            return;
        }
        size_t rlen = (size_t)(end - c->in) + 2;
        /* One outstanding request: anything beyond one reply, a reply without
         * action=, or a multi-line reply is a protocol error. */
        bool ok = c->waiting && rlen == c->in_len && rlen > 9 && memcmp(c->in, "action=", 7) == 0 &&
                  !memchr(c->in, '\n', rlen - 2) && !memchr(c->in, '\0', rlen) && rlen - 2 > 7;
        if (!ok) {
            conn_fail(c, false);
            return;
        }
        uint64_t t = now_ns();
        if (c->measured) {
            g.done++;
            lat_push((uint32_t)((t - c->sent_ns) / 1000));
            count_action(c->in + 7, rlen - 9);
        }
        c->in_len = 0;
        c->waiting = false;
        if (want_more() && conn_send(c) < 0)
            conn_fail(c, false);
        return;
    }
}

static void conn_write_more(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0 && (errno == EINTR))
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w <= 0) {
            conn_fail(c, false);
            return;
        }
        c->out_off += (size_t)w;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* utime+stime of pid and of all its live descendants, plus the reaped children's
 * cutime+cstime of each, in clock ticks; -1 if pid is gone. */
static long long proc_ticks_one(int pid, int *ppid_out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* Fields after "comm)": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17). */
    long long v[18] = {0};
    int field = 3;
    for (char *tok = strtok(p + 2, " "); tok && field <= 17; tok = strtok(NULL, " "), field++)
        v[field] = strtoll(tok, NULL, 10);
    if (ppid_out)
        *ppid_out = (int)v[4];
    return v[14] + v[15] + v[16] + v[17];
}

static long long proc_tree_ticks(int root)
{
    /* A pre-forking peer (postfwd2) serves requests in children that never exit during
     * the run, so sum the whole live tree, not only root's own and reaped time. */
    static int pids[32768], ppids[32768];
    int tree[1024];
    int np = 0, nt = 1;
    long long total = proc_ticks_one(root, NULL);
    if (total < 0)
        return -1;
    tree[0] = root;
    DIR *d = opendir("/proc");
    if (!d)
        return total;
    struct dirent *de;
    while (np < 32768 && (de = readdir(d))) {
        int pid = atoi(de->d_name), pp = 0;
        if (pid <= 0 || pid == root || proc_ticks_one(pid, &pp) < 0)
            continue;
        pids[np] = pid;
        ppids[np++] = pp;
    }
    closedir(d);
    for (bool changed = true; changed && nt < 1024;) {
        changed = false;
        for (int i = 0; i < np && nt < 1024; i++) {
            for (int j = 0; pids[i] && j < nt; j++) {
                if (ppids[i] != tree[j])
                    continue;
                long long t = proc_ticks_one(pids[i], NULL);
                total += t > 0 ? t : 0;
                tree[nt++] = pids[i];
                pids[i] = 0;
                changed = true;
            }
        }
    }
    return total;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(double p)
{
    if (!g.lat_len)
        return 0;
    size_t i = (size_t)(p * (double)(g.lat_len - 1) + 0.5);
    return g.lat_us[i];
}

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int parse_opts(int argc, char **argv)
{
    g.o = (struct opts){.conns = 8,
                        .duration_s = 5,
                        .warmup_s = 0.5,
                        .timeout_s = 5,
                        .nets = 4096,
                        .hosts = 254,
                        .senders = 10000,
                        .seed = 1,
                        .label = "loadgen"};
    bool have_d = false;
    int ch;
    while ((ch = getopt(argc, argv, "c:n:d:w:t:p:N:H:S:s:l:U:h")) != -1) {
        switch (ch) {
        case 'c':
            g.o.conns = atoi(optarg);
            break;
        case 'n':
            g.o.requests = strtoull(optarg, NULL, 10);
            break;
        case 'd':
            g.o.duration_s = atof(optarg);
            have_d = true;
            break;
        case 'w':
            g.o.warmup_s = atof(optarg);
            break;
        case 't':
            g.o.timeout_s = atof(optarg);
            break;
        case 'p':
            g.o.peer_pid = atoi(optarg);
            break;
        case 'N':
            g.o.nets = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'H':
            g.o.hosts = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'S':
            g.o.senders = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 's':
            g.o.seed = strtoull(optarg, NULL, 10);
            break;
        case 'l':
            g.o.label = optarg;
            break;
        case 'U':
            g.o.unique = true;
            g.o.unique_skip = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (optind != argc - 1)
        return -1;
    g.o.target = argv[optind];
    /* With -n alone, -d still bounds the run (at its maximum) so nothing runs forever. */
    if (g.o.requests && !have_d)
        g.o.duration_s = MAX_DURATION_S;
    if (g.o.conns < 1 || g.o.conns > MAX_CONNS || g.o.duration_s <= 0 ||
        g.o.duration_s > MAX_DURATION_S || g.o.warmup_s < 0 || g.o.warmup_s > 600 ||
        g.o.timeout_s <= 0 || g.o.requests > MAX_REQUESTS || g.o.nets < 1 ||
        g.o.nets > (1u << 24) || g.o.hosts < 1 || g.o.hosts > 254 || g.o.senders < 1)
        return -1;
    g.next_addr = (11u << 24) + 1 + g.o.unique_skip;
    g.rng = g.o.seed ? g.o.seed * 0x9E3779B97F4A7C15ULL : 0x9E3779B97F4A7C15ULL;
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_opts(argc, argv) < 0) {
        usage(stderr);
        return 2;
    }
    if (parse_target(g.o.target) < 0) {
        fprintf(stderr, "loadgen: bad target %s\n", g.o.target);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    g.conns = calloc((size_t)g.o.conns, sizeof(*g.conns));
    if (g.ep < 0 || !g.conns) {
        perror("loadgen");
        return 2;
    }
    for (int i = 0; i < g.o.conns; i++) {
        g.conns[i].fd = -1;
        g.conns[i].idx = i;
        int r = conn_open(&g.conns[i]);
        if (r < 0) {
            fprintf(stderr, "loadgen: connect %s: %s\n", g.o.target, strerror(-r));
            return 2;
        }
    }
    uint64_t t0 = now_ns();
    uint64_t warm_end = t0 + (uint64_t)(g.o.warmup_s * 1e9);
    uint64_t end = warm_end + (uint64_t)(g.o.duration_s * 1e9);
    uint64_t timeout_ns = (uint64_t)(g.o.timeout_s * 1e9);
    uint64_t m0 = 0, m1 = 0;
    long long cpu0 = -1, cpu1 = -1;
    g.measuring = g.o.warmup_s == 0;
    if (g.measuring) {
        m0 = now_ns();
        if (g.o.peer_pid)
            cpu0 = proc_tree_ticks(g.o.peer_pid);
    }
    for (int i = 0; i < g.o.conns; i++)
        if (conn_send(&g.conns[i]) < 0)
            conn_fail(&g.conns[i], false);

    struct epoll_event evs[256];
    bool draining = false;
    uint64_t drain_end = 0;
    while (g.live > 0 && !g_stop) {
        uint64_t t = now_ns();
        if (!g.measuring && t >= warm_end) {
            g.measuring = true;
            m0 = t;
            if (g.o.peer_pid)
                cpu0 = proc_tree_ticks(g.o.peer_pid);
        }
        if (!draining && g.measuring && (t >= end || !want_more())) {
            /* Stop issuing; wait for what is in flight (bounded by the reply timeout). */
            draining = true;
            m1 = t;
            if (g.o.peer_pid)
                cpu1 = proc_tree_ticks(g.o.peer_pid);
            g.o.requests = g.sent ? g.sent : 1;
            drain_end = t + timeout_ns;
        }
        if (draining) {
            bool any = false;
            for (int i = 0; i < g.o.conns; i++)
                any |= g.conns[i].fd >= 0 && g.conns[i].waiting;
            if (!any || t >= drain_end)
                break;
        }
        for (int i = 0; i < g.o.conns; i++) {
            struct conn *c = &g.conns[i];
            if (c->fd >= 0 && c->waiting && t - c->sent_ns > timeout_ns)
                conn_fail(c, true);
        }
        int n = epoll_wait(g.ep, evs, 256, 50);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT)
                conn_write_more(c);
            if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                conn_read(c);
        }
    }
    if (!m1) {
        m1 = now_ns();
        if (g.o.peer_pid && g.measuring)
            cpu1 = proc_tree_ticks(g.o.peer_pid);
    }
    if (!m0)
        m0 = m1;
    /* Requests in flight at the end that never got a reply are errors too. */
    for (int i = 0; i < g.o.conns; i++) {
        if (g.conns[i].fd >= 0 && g.conns[i].waiting && g.conns[i].measured)
            g.timeouts++;
        conn_close(&g.conns[i]);
    }
    double secs = (double)(m1 - m0) / 1e9;
    double rps = secs > 0 ? (double)g.done / secs : 0;
    qsort(g.lat_us, g.lat_len, sizeof(*g.lat_us), cmp_u32);
    uint32_t p50 = pct(0.50), p99 = pct(0.99), p999 = pct(0.999);
    uint32_t pmax = g.lat_len ? g.lat_us[g.lat_len - 1] : 0;
    double cpu_us = -1;
    if (cpu0 >= 0 && cpu1 >= 0 && g.done)
        cpu_us = (double)(cpu1 - cpu0) * 1e6 / (double)sysconf(_SC_CLK_TCK) / (double)g.done;

    printf("target %s, %d connections, %.2f s measured\n", g.o.target, g.o.conns, secs);
    printf("requests %" PRIu64 " answered, %.0f req/s\n", g.done, rps);
    printf("latency us: p50 %u  p99 %u  p99.9 %u  max %u\n", p50, p99, p999, pmax);
    printf("errors %" PRIu64 " (bad/closed %" PRIu64 ", timeouts %" PRIu64
           "), connection errors %" PRIu64 "\n",
           g.errors + g.timeouts, g.errors, g.timeouts, g.conn_errors);
    printf("actions:");
    for (int i = 0; i < g.nactions; i++)
        printf(" %s=%" PRIu64, g.actions[i].name, g.actions[i].n);
    if (g.action_other)
        printf(" other=%" PRIu64, g.action_other);
    printf("\n");
    if (cpu_us >= 0)
        printf("peer pid %d cpu: %.1f us/request\n", g.o.peer_pid, cpu_us);
    printf("LOADGEN label=%s conns=%d requests=%" PRIu64 " seconds=%.3f rps=%.0f p50_us=%u "
           "p99_us=%u p999_us=%u max_us=%u errors=%" PRIu64 " conn_errors=%" PRIu64
           " cpu_us_per_req=%.1f actions=",
           g.o.label, g.o.conns, g.done, secs, rps, p50, p99, p999, pmax, g.errors + g.timeouts,
           g.conn_errors, cpu_us);
    for (int i = 0; i < g.nactions; i++)
        printf("%s%s:%" PRIu64, i ? "," : "", g.actions[i].name, g.actions[i].n);
    printf("\n");
    free(g.lat_us);
    free(g.conns);
    close(g.ep);
    return (g.errors + g.timeouts || g.conn_errors || !g.done) ? 1 : 0;
}
