/*
 * dunno_server: the least a policy server can do, as a yardstick for the benchmark (not a
 * test, not shipped). One thread, edge-free epoll, non-blocking sockets: it reads policy
 * requests and answers every one `action=DUNNO` with one write per read, and does
 * nothing else (no parsing beyond the blank line that ends a request, no logging, no
 * timers). What postsurge spends above it per request is what its own work costs.
 *   dunno_server HOST:PORT | /path/to/socket
 * Stops on SIGTERM or SIGINT.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <unistd.h>

#define MAX_EVENTS 64
#define BUF_CAP 65536
#define MAX_FD 65536

static const char reply[] = "action=DUNNO\n\n";

/* Per connection: whether the previous read ended in '\n' (a request can end across two
 * reads). */
static unsigned char last_nl[MAX_FD];
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int listen_on(const char *where)
{
    int fd;
    if (where[0] == '/') {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(where) >= sizeof(sun.sun_path))
            return -1;
        strcpy(sun.sun_path, where);
        unlink(where);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
            return -1;
    } else {
        char host[64];
        const char *colon = strrchr(where, ':');
        if (!colon || (size_t)(colon - where) >= sizeof(host))
            return -1;
        memcpy(host, where, (size_t)(colon - where));
        host[colon - where] = '\0';
        struct sockaddr_in sin = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)atoi(colon + 1))};
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
            return -1;
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
            return -1;
    }
    return listen(fd, 511) < 0 ? -1 : fd;
}

/* Reads what fd has and answers each complete request; returns -1 when fd is done. */
static int serve(int fd, char *buf)
{
    for (;;) {
        ssize_t n = read(fd, buf, BUF_CAP);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return -1;
        size_t requests = 0;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n') {
                if (last_nl[fd])
                    requests++;
                last_nl[fd] = 1;
            } else {
                last_nl[fd] = 0;
            }
        }
        if (requests) {
            char out[BUF_CAP];
            size_t len = 0;
            for (size_t r = 0; r < requests && len + sizeof(reply) <= sizeof(out); r++) {
                memcpy(out + len, reply, sizeof(reply) - 1);
                len += sizeof(reply) - 1;
            }
            /* The client waits for each answer before it sends more: a short write to a
             * socket with an empty buffer does not happen at these sizes. */
            if (write(fd, out, len) != (ssize_t)len)
                return -1;
        }
        if (n < BUF_CAP)
            return 0;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: dunno_server HOST:PORT | /path/to/socket\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    int lfd = listen_on(argv[1]);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (lfd < 0 || ep < 0) {
        perror("dunno_server");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[BUF_CAP];
    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= MAX_FD) {
                        close(c);
                        continue;
                    }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    last_nl[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
            } else if (serve(fd, buf) < 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
            }
        }
    }
    return 0;
}
