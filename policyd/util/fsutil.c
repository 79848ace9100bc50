/* fsutil: the one implementation of "write a temp file, fsync, rename over the target"
 * and of fsyncing a file's directory, so the controller and the privileged helper write
 * Postfix files and journals the same crash-safe way. */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fsutil_write_close(int fd, const char *data, size_t len, const char *name, char *err,
                       size_t errlen)
{
    int e = 0;
    for (size_t off = 0; e == 0 && off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            e = -errno;
            snprintf(err, errlen, "cannot write %.400s: %s", name, strerror(-e));
        } else {
            off += (size_t)w;
        }
    }
    if (e == 0 && fsync(fd) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot fsync %.400s: %s", name, strerror(-e));
    }
    if (close(fd) < 0 && e == 0) {
        e = -errno;
        snprintf(err, errlen, "cannot close %.400s: %s", name, strerror(-e));
    }
    return e;
}

int fsutil_replace(const char *path, const char *data, size_t len, const struct stat *like,
                   unsigned flags, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.postsurge-tmp", path);
    mode_t mode = like ? (like->st_mode & 07777) : 0600;
    int oflags = O_WRONLY | O_CREAT | O_CLOEXEC;
    if (flags & FSUTIL_FRESH_TMP) {
        /* A leftover (ours from a crash, or a symlink planted by the unprivileged user)
         * goes; O_EXCL | O_NOFOLLOW then refuse anything that reappears meanwhile. */
        unlink(tmp);
        oflags |= O_EXCL | O_NOFOLLOW;
    } else {
        oflags |= O_TRUNC;
    }
    int fd = open(tmp, oflags, mode);
    if (fd < 0) {
        int e = -errno;
        snprintf(err, errlen, "cannot create %.400s: %s", tmp, strerror(-e));
        return e;
    }
    int e = 0;
    /* open's mode is filtered by the umask and an existing file keeps its owner: set both
     * explicitly so the new file is what the old one was. */
    if (like &&
        (fchown(fd, like->st_uid, like->st_gid) < 0 || fchmod(fd, like->st_mode & 07777) < 0)) {
        e = -errno;
        snprintf(err, errlen, "cannot set the owner or mode of %.400s: %s", tmp, strerror(-e));
    }
    if (e == 0)
        e = fsutil_write_close(fd, data, len, tmp, err, errlen);
    else
        close(fd);
    if (e == 0 && rename(tmp, path) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot rename %.200s to %.200s: %s", tmp, path, strerror(-e));
    }
    if (e < 0)
        unlink(tmp);
    return e;
}

int fsutil_fsync_dir_of(const char *path)
{
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return 0;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int fsutil_read_fd(int fd, char **buf, size_t *len)
{
    char *p = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t nc = cap ? cap * 2 : 131072;
            char *q = realloc(p, nc + 1);
            if (!q) {
                free(p);
                return -ENOMEM;
            }
            p = q;
            cap = nc;
        }
        ssize_t r = read(fd, p + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = -errno;
            free(p);
            return e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    p[n] = '\0';
    *buf = p;
    *len = n;
    return 0;
}

char *fsutil_path_join(const char *dir, const char *name)
{
    size_t l = strlen(dir) + strlen(name) + 2;
    char *p = malloc(l);
    if (p)
        snprintf(p, l, "%s/%s", dir, name);
    return p;
}

int fsutil_open_regular(const char *path, int extra_flags)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | extra_flags);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    return fd;
}
