/* ctlclient: the control socket client (see ctlclient.h). */
#include "ctlclient.h"
#include "overload/controller.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

void ctlclient_explain(const char *path, int err)
{
    fprintf(stderr, "postsurge: cannot use the control socket %s: %s\n", path, strerror(-err));
    if (err != -EACCES && err != -EPERM)
        return;
    /* Say who may: the socket's owner and group, or those of the directory that could not
     * be searched when the socket itself cannot be looked at. */
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    const char *what = path, *kind = "socket";
    mode_t need = S_IRGRP | S_IWGRP;
    struct stat st;
    if (stat(path, &st) < 0) {
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir)
            *slash = '\0';
        what = dir;
        kind = "directory";
        need = S_IXGRP;
        if (stat(dir, &st) < 0) {
            fprintf(stderr, "postsurge: run this command as root or as the user `postsurge "
                            "serve` runs as (the user setting)\n");
            return;
        }
    }
    char uname[64], gname[64];
    struct passwd *pw = getpwuid(st.st_uid);
    struct group *gr = getgrgid(st.st_gid);
    snprintf(uname, sizeof(uname), "%s", pw ? pw->pw_name : "?");
    snprintf(gname, sizeof(gname), "%s", gr ? gr->gr_name : "?");
    if (!pw)
        snprintf(uname, sizeof(uname), "uid %ld", (long)st.st_uid);
    if (!gr)
        snprintf(gname, sizeof(gname), "gid %ld", (long)st.st_gid);
    fprintf(stderr, "postsurge: the %s %s belongs to %s:%s, mode %04o; you are uid %ld\n", kind,
            what, uname, gname, (unsigned)(st.st_mode & 07777), (long)geteuid());
    if ((st.st_mode & need) == need)
        fprintf(stderr, "postsurge: run this command as root, as %s, or as a member of group %s\n",
                uname, gname);
    else
        fprintf(stderr,
                "postsurge: run this command as root or as %s (e.g. sudo -u %s postsurge ...)\n",
                uname, uname);
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
        /* No daemon is the caller's to report (a finding for the report, advice for the
         * commands); a socket we may not use is said here, for every command. */
        if (rc != -ENOENT && rc != -ECONNREFUSED)
            ctlclient_explain(a.sun_path, rc);
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
