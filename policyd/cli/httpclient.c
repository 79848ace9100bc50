/* httpclient: a small blocking HTTP/1.0 GET for the report (the daemon's /status on
 * http_listen), with one deadline for the whole exchange and a cap on the body. */
#include "httpclient.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* First inet:HOST:PORT of a listen value into host/port; false if there is none. */
bool httpclient_first_inet(const char *listen, char *host, size_t hostlen, char *port, size_t plen)
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
int httpclient_get(const char *host, const char *port, const char *path, int *status, char **body)
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
        long left = HTTPCLIENT_TIMEOUT_MS -
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
            if (cap >= HTTPCLIENT_MAX_BYTES) {
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
