/* ctlclient: the control socket client (see ctlclient.h). */
#include "ctlclient.h"
#include "overload/controller.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

int ctlclient_request(const struct config *cfg, const char *line, int timeout_ms, json_t **out)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path, sizeof(a.sun_path), "%s/%s", cfg->state_directory,
                     CONTROLLER_SOCKET_NAME);
    char req[CTLCLIENT_LINE_MAX + 2];
    int reqlen = snprintf(req, sizeof(req), "%s\n", line);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;

    *out = NULL;
    if (n < 0 || (size_t)n >= sizeof(a.sun_path))
        return -ENAMETOOLONG;
    if (reqlen < 0 || (size_t)reqlen >= sizeof(req))
        return -E2BIG;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        rc = -errno;
        goto out;
    }
    if (send(fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
        rc = errno ? -errno : -EIO;
        goto out;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        long left = timeout_ms - ms_since(&t0);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            rc = pr < 0 ? -errno : -ETIMEDOUT;
            goto out;
        }
        if (cap - len < 65536) {
            if (cap >= CTLCLIENT_REPLY_MAX) {
                rc = -E2BIG;
                goto out;
            }
            size_t nc = cap ? cap * 2 : 131072;
            char *nb = realloc(buf, nc);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            buf = nb;
            cap = nc;
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
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        rc = -EPROTO;
    }
out:
    close(fd);
    free(buf);
    return rc;
}
