/* pfcmd: the synchronous command runner of the journaled edit (postfix/confedit.c). */
/* pipe2 */
#define _GNU_SOURCE
#include "pfcmd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KILL_GRACE_MS 2000

extern char **environ;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

char *pfcmd_resolve(const char *name)
{
    if (strchr(name, '/'))
        return strdup(name);
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/sbin:/usr/bin:/sbin:/bin";
    char *copy = strdup(path), *save = NULL;
    for (char *d = copy ? strtok_r(copy, ":", &save) : NULL; d; d = strtok_r(NULL, ":", &save)) {
        char cand[4096];
        snprintf(cand, sizeof(cand), "%s/%s", d, name);
        if (d[0] == '/' && access(cand, X_OK) == 0) {
            free(copy);
            return strdup(cand);
        }
    }
    free(copy);
    char def[300];
    snprintf(def, sizeof(def), "/usr/sbin/%s", name);
    return strdup(def);
}

/* Reads a pipe into a bounded buffer; over the cap the rest is read and dropped. */
struct capture {
    char *buf;
    size_t len, cap;
    bool truncated;
};

static void capture_read(int fd, struct capture *c, bool *open_)
{
    char tmp[16384];
    ssize_t r = read(fd, tmp, sizeof(tmp));
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (r <= 0) {
        *open_ = false;
        return;
    }
    size_t n = (size_t)r;
    if (c->len + n > c->cap) {
        c->truncated = true;
        n = c->cap - c->len;
    }
    memcpy(c->buf + c->len, tmp, n);
    c->len += n;
    c->buf[c->len] = '\0';
}

int pfcmd_run(char *const *argv, const char *line, uint64_t timeout_ms, char **out, size_t *out_len,
              char *err, size_t errlen)
{
    struct capture co = {.buf = malloc(PFCMD_MAX_STDOUT + 1), .cap = PFCMD_MAX_STDOUT};
    struct capture ce = {.buf = malloc(PFCMD_MAX_STDERR + 1), .cap = PFCMD_MAX_STDERR};
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    int rc = -EIO;
    if (!co.buf || !ce.buf) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    co.buf[0] = ce.buf[0] = '\0';
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto out;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls: the caller may be one thread of many. */
        int dn = open("/dev/null", O_RDONLY);
        if (dn < 0 || dup2(dn, 0) < 0 || dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0)
            _exit(127);
        setsid();
        signal(SIGPIPE, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
        /* A thread-pool thread blocks signals; the command must not inherit that. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(argv[0], argv, environ);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    po[1] = pe[1] = -1;
    bool oo = true, eo = true, timed_out = false, killed = false;
    uint64_t deadline = mono_ms() + timeout_ms, kill_at = 0;
    while (oo || eo) {
        struct pollfd pf[2] = {{.fd = oo ? po[0] : -1, .events = POLLIN},
                               {.fd = eo ? pe[0] : -1, .events = POLLIN}};
        uint64_t now = mono_ms();
        if (!timed_out && now >= deadline) {
            timed_out = true;
            kill(-pid, SIGTERM);
            kill(pid, SIGTERM);
            kill_at = now + KILL_GRACE_MS;
        }
        if (timed_out && !killed && now >= kill_at) {
            killed = true;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
        }
        uint64_t until = timed_out ? (killed ? now + 1000 : kill_at) : deadline;
        int wait = until > now ? (int)(until - now) : 0;
        int n = poll(pf, 2, wait);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        if (pf[0].revents)
            capture_read(po[0], &co, &oo);
        if (pf[1].revents)
            capture_read(pe[0], &ce, &eo);
        if (killed && mono_ms() > kill_at + 5000)
            break; /* a grandchild keeps the pipes open: stop reading */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    char why[96];
    if (timed_out)
        snprintf(why, sizeof(why), "timed out after %" PRIu64 " ms", timeout_ms);
    else if (WIFSIGNALED(status))
        snprintf(why, sizeof(why), "killed by signal %d", WTERMSIG(status));
    else if (WEXITSTATUS(status) != 0)
        snprintf(why, sizeof(why), "exit status %d", WEXITSTATUS(status));
    else if (co.truncated)
        snprintf(why, sizeof(why), "output over %u bytes", PFCMD_MAX_STDOUT);
    else
        why[0] = '\0';
    if (why[0]) {
        char output[600];
        snprintf(output, sizeof(output), "%.400s%s%.150s", ce.buf, ce.len && co.len ? " | " : "",
                 co.buf);
        for (char *p = output; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        snprintf(err, errlen, "command failed (%s): %s: %s", why, line, output);
        goto out;
    }
    rc = 0;
    if (out) {
        *out = co.buf;
        *out_len = co.len;
        co.buf = NULL;
    }
out:
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0)
            close(po[i]);
        if (pe[i] >= 0)
            close(pe[i]);
    }
    free(co.buf);
    free(ce.buf);
    return rc;
}
