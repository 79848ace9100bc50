/* privsep: the privilege drop of `serve` and the privileged helper. The helper is forked
 * before the loop exists (no libuv state, no listening sockets in it) and works
 * synchronously: one request, its commands (fork + execve with a timeout, never a
 * shell), one reply. The journal is the helper's: written by root (0600, owner root) in
 * state_directory and trusted on reading only when root owns it, so the unprivileged
 * process can neither forge the bytes a restore writes back nor apply anything without
 * its journal. The daemon's side is a uv_poll on the socketpair with a FIFO of
 * requests, one in flight. */
/* setresuid, setresgid, pipe2 */
#define _GNU_SOURCE
#define LOG_COMPONENT "privsep"
#include "privsep.h"

#include "util/fsutil.h"
#include "util/log.h"
#include "overrides.h"

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

#define JOURNAL_NAME "journal.json"
#define CMD_MAX_STDOUT (4u << 20)
#define CMD_MAX_STDERR (64u << 10)
#define CMD_KILL_GRACE_MS 2000

extern char **environ;

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
    char *config_dir, *state_dir, *journal_path, *main_path, *master_path;
    char *postconf, *postfix;             /* absolute paths, resolved before the fork */
    char *postconf_shown, *postfix_shown; /* as configured, for log lines */
    uint64_t timeout_ms;
    /* An apply of ours failed half-way and nothing ran since: the files hold what it
     * left, so the restore may put the original bytes back (controller.c's
     * expected_is_current, kept here because the helper trusts only itself). */
    bool half_applied;
    unsigned commands, failures; /* of the current request */
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

static int read_path(const char *path, char **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsutil_read_fd(fd, buf, len);
    close(fd);
    return rc;
}

/* The journal, only when root wrote it: a regular file (not a symlink) owned by us with
 * one link and no group/other write bit. Anything else in its place was put there by
 * someone else (the state directory belongs to the unprivileged user). Returns 0 with
 * *found, or a negative errno with err. */
static int journal_read_trusted(struct helper *h, char **buf, size_t *len, bool *found, char *err,
                                size_t errlen)
{
    *found = false;
    int fd = open(h->journal_path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "cannot open %s: %s", h->journal_path, strerror(errno));
        return -errno;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1 ||
        (st.st_mode & 022)) {
        snprintf(err, errlen,
                 "%s is not a journal the privileged helper wrote (owner, links or mode "
                 "differ): refused",
                 h->journal_path);
        close(fd);
        return -EPERM;
    }
    int rc = fsutil_read_fd(fd, buf, len);
    close(fd);
    if (rc < 0) {
        snprintf(err, errlen, "cannot read %s: %s", h->journal_path, strerror(-rc));
        return rc;
    }
    *found = true;
    return 0;
}

static int fsync_dirfd(int dfd)
{
    return fsync(dfd) < 0 ? -errno : 0;
}

/* Writes the journal as root: JOURNAL.postsurge-tmp created fresh (O_EXCL, O_NOFOLLOW:
 * the unprivileged user may have left a symlink there), fsync, rename, fsync the
 * directory. Mode 0600. */
static int journal_write_trusted(struct helper *h, const char *data, size_t len, char *err,
                                 size_t errlen)
{
    static const char tmpname[] = JOURNAL_NAME ".postsurge-tmp";
    int dfd = open(h->state_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        int e = -errno;
        snprintf(err, errlen, "cannot open %s: %s", h->state_dir, strerror(-e));
        return e;
    }
    unlinkat(dfd, tmpname, 0);
    int fd = openat(dfd, tmpname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    int e = 0;
    if (fd < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot create %s/%s: %s", h->state_dir, tmpname, strerror(-e));
        close(dfd);
        return e;
    }
    if (fchmod(fd, 0600) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot chmod the journal: %s", strerror(-e));
    }
    if (e == 0) {
        char name[4200];
        snprintf(name, sizeof(name), "%s/%s", h->state_dir, tmpname);
        e = fsutil_write_close(fd, data, len, name, err, errlen);
    } else {
        close(fd);
    }
    if (e == 0 && renameat(dfd, tmpname, dfd, JOURNAL_NAME) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot rename the journal into place in %s: %s", h->state_dir,
                 strerror(-e));
    }
    if (e < 0)
        unlinkat(dfd, tmpname, 0);
    else if ((e = fsync_dirfd(dfd)) < 0)
        snprintf(err, errlen, "cannot fsync %s: %s", h->state_dir, strerror(-e));
    close(dfd);
    return e;
}

static int journal_unlink(struct helper *h, char *err, size_t errlen)
{
    if (unlink(h->journal_path) < 0 && errno != ENOENT) {
        int e = -errno;
        snprintf(err, errlen, "cannot remove %s: %s", h->journal_path, strerror(-e));
        return e;
    }
    int dfd = open(h->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync_dirfd(dfd);
        close(dfd);
    }
    return 0;
}

/* Writes a Postfix file back as it was (tmp + fsync + rename + fsync the directory),
 * keeping the current file's owner and mode. The config directory is root's. */
static int write_config_file(const char *path, const char *data, size_t len, char *err,
                             size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return -EINVAL;
    }
    int e = fsutil_replace(path, data, len, &st, FSUTIL_FRESH_TMP, err, errlen);
    if (e < 0)
        return e;
    /* Best effort: the file is in place; a failing directory fsync does not undo that. */
    (void)fsutil_fsync_dir_of(path);
    return 0;
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

/* Runs argv (argv[0] an absolute path; execve, no shell, no PATH search) with stdin
 * from /dev/null in its own session; a timeout sends SIGTERM, then SIGKILL, to the
 * session. On success *out is the stdout (new, NUL-terminated). Returns 0, or -EIO with
 * the reason and stderr in err. */
static int run_cmd(struct helper *h, char *const *argv, bool log_it, char **out, size_t *out_len,
                   char *err, size_t errlen)
{
    char line[2048];
    size_t o = 0;
    line[0] = '\0';
    for (size_t i = 0; argv[i] && o < sizeof(line) - 1; i++) {
        const char *w = argv[i];
        if (i == 0 && w == h->postconf)
            w = h->postconf_shown;
        else if (i == 0 && w == h->postfix)
            w = h->postfix_shown;
        o += (size_t)snprintf(line + o, sizeof(line) - o, "%s%s", i ? " " : "", w);
    }
    if (log_it)
        log_info("running: %s", line);
    else
        log_debug("running: %s", line);
    h->commands++;
    struct capture co = {.buf = malloc(CMD_MAX_STDOUT + 1), .cap = CMD_MAX_STDOUT};
    struct capture ce = {.buf = malloc(CMD_MAX_STDERR + 1), .cap = CMD_MAX_STDERR};
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    int rc = -EIO;
    if (!co.buf || !ce.buf) {
        snprintf(err, errlen, "out of memory");
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
        int dn = open("/dev/null", O_RDONLY);
        if (dn < 0 || dup2(dn, 0) < 0 || dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0)
            _exit(127);
        setsid();
        signal(SIGPIPE, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execve(argv[0], argv, environ);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    po[1] = pe[1] = -1;
    bool oo = true, eo = true, timed_out = false, killed = false;
    uint64_t deadline = mono_ms() + h->timeout_ms, kill_at = 0;
    while (oo || eo) {
        struct pollfd pf[2] = {{.fd = oo ? po[0] : -1, .events = POLLIN},
                               {.fd = eo ? pe[0] : -1, .events = POLLIN}};
        uint64_t now = mono_ms();
        if (!timed_out && now >= deadline) {
            timed_out = true;
            kill(-pid, SIGTERM);
            kill(pid, SIGTERM);
            kill_at = now + CMD_KILL_GRACE_MS;
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
        snprintf(why, sizeof(why), "timed out after %" PRIu64 " ms", h->timeout_ms);
    else if (WIFSIGNALED(status))
        snprintf(why, sizeof(why), "killed by signal %d", WTERMSIG(status));
    else if (WEXITSTATUS(status) != 0)
        snprintf(why, sizeof(why), "exit status %d", WEXITSTATUS(status));
    else if (co.truncated)
        snprintf(why, sizeof(why), "output over %u bytes", CMD_MAX_STDOUT);
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
        h->failures++;
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

static int run_postconf(struct helper *h, const char *flag, char **out, size_t *len, char *err,
                        size_t errlen)
{
    char *argv[] = {h->postconf, "-c", h->config_dir, (char *)flag, NULL};
    return run_cmd(h, argv, false, out, len, err, errlen);
}

/* Runs a plan's argv: argv[0] "postconf" or "postfix" becomes the fixed path; anything
 * else is refused (lib/overrides only builds those two). */
static int run_plan_cmd(struct helper *h, const struct overrides_cmd *c, char *err, size_t errlen)
{
    if (c->argc < 1 || c->argc > 4096)
        return -EINVAL;
    char **av = calloc(c->argc + 1, sizeof(char *));
    if (!av) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < c->argc; i++)
        av[i] = c->argv[i];
    int rc = 0;
    if (strcmp(c->argv[0], "postconf") == 0) {
        av[0] = h->postconf;
    } else if (strcmp(c->argv[0], "postfix") == 0) {
        av[0] = h->postfix;
    } else {
        snprintf(err, errlen, "refused to run %s", c->argv[0]);
        rc = -EPERM;
    }
    if (rc == 0)
        rc = run_cmd(h, av, true, NULL, NULL, err, errlen);
    free(av);
    return rc;
}

struct files {
    char *main_buf, *master_buf, *n_text, *P_text;
    size_t main_len, master_len, n_len, P_len;
};

static void files_clear(struct files *f)
{
    free(f->main_buf);
    free(f->master_buf);
    free(f->n_text);
    free(f->P_text);
    memset(f, 0, sizeof(*f));
}

/* main.cf and master.cf bytes, then postconf -n and -P. */
static int read_state(struct helper *h, struct files *f, bool files, char *err, size_t errlen)
{
    files_clear(f);
    int rc;
    if (files) {
        if ((rc = read_path(h->main_path, &f->main_buf, &f->main_len)) < 0) {
            snprintf(err, errlen, "cannot read %s: %s", h->main_path, strerror(-rc));
            return rc;
        }
        if ((rc = read_path(h->master_path, &f->master_buf, &f->master_len)) < 0) {
            snprintf(err, errlen, "cannot read %s: %s", h->master_path, strerror(-rc));
            return rc;
        }
    }
    if ((rc = run_postconf(h, "-n", &f->n_text, &f->n_len, err, errlen)) < 0)
        return rc;
    return run_postconf(h, "-P", &f->P_text, &f->P_len, err, errlen);
}

static json_t *reply_new(struct helper *h, bool ok, const char *error)
{
    return json_pack("{s:b,s:s,s:i,s:i}", "ok", ok, "error", error ? error : "", "commands",
                     (int)h->commands, "failures", (int)h->failures);
}

/* J: is there a journal, and what does it hold? */
static json_t *op_journal(struct helper *h)
{
    char err[600] = "";
    char *buf = NULL;
    size_t len = 0;
    bool found = false;
    struct overrides_journal *j = NULL;
    json_t *r;
    int rc = journal_read_trusted(h, &buf, &len, &found, err, sizeof(err));
    if (rc == 0 && found) {
        char perr[400];
        if (overrides_journal_parse(buf, len, &j, perr, sizeof(perr)) < 0) {
            snprintf(err, sizeof(err), "journal %s is corrupt: %s", h->journal_path, perr);
            rc = -EINVAL;
        } else if (strcmp(j->config_dir, h->config_dir) != 0) {
            snprintf(err, sizeof(err), "journal %.200s is for %.150s, not %.150s", h->journal_path,
                     j->config_dir, h->config_dir);
            rc = -EINVAL;
        }
    }
    r = reply_new(h, rc == 0, err);
    json_object_set_new(r, "found", json_boolean(found));
    if (rc == 0 && j)
        json_object_set_new(r, "settings", privmsg_settings_json(j));
    overrides_journal_free(j);
    free(buf);
    return r;
}

/* A: learn Postfix's names, re-validate the profile, journal (by root), apply, read
 * back, journal again with the files as left, verify. */
static json_t *op_apply(struct helper *h, const char *payload, size_t plen)
{
    char err[1024] = "";
    struct files f = {0};
    struct overrides_params *known = NULL;
    struct overrides_services *svcs = NULL;
    struct overrides_profile *prof = NULL;
    struct overrides_journal *j = NULL;
    struct overrides_plan *plan = NULL;
    char *text = NULL, *jbuf = NULL, *written = NULL;
    size_t len = 0, jlen = 0;
    bool found = false, changed = false, journaled = false;
    json_t *r = NULL;
    const char *fail_kind = "";
    int64_t now_ms = 0;
    uint64_t t0 = mono_ms();

    if (journal_read_trusted(h, &jbuf, &jlen, &found, err, sizeof(err)) < 0 || found) {
        if (found)
            snprintf(err, sizeof(err), "a journal is in force already (%s): restore first",
                     h->journal_path);
        fail_kind = "journal";
        goto out;
    }
    if (run_postconf(h, "-d", &text, &len, err, sizeof(err)) < 0 ||
        overrides_known_params_parse(text, len, &known) < 0) {
        if (!err[0])
            snprintf(err, sizeof(err), "postconf -d gave no parameter names");
        goto out;
    }
    free(text);
    text = NULL;
    if (run_postconf(h, "-F", &text, &len, err, sizeof(err)) < 0 ||
        overrides_services_parse(text, len, &svcs) < 0) {
        if (!err[0])
            snprintf(err, sizeof(err), "postconf -F: no services");
        goto out;
    }
    char verr[600];
    if (privmsg_apply_decode(payload, plen, known, svcs, &prof, &now_ms, verr, sizeof(verr)) < 0) {
        snprintf(err, sizeof(err), "request rejected: %s", verr);
        log_error("apply %s", err);
        fail_kind = "rejected";
        goto out;
    }
    if (read_state(h, &f, true, err, sizeof(err)) < 0)
        goto out;
    int rc = overrides_journal_new(prof, h->config_dir, f.main_buf, f.main_len, f.master_buf,
                                   f.master_len, f.n_text, f.n_len, f.P_text, f.P_len, now_ms, &j);
    if (rc == 0)
        rc = overrides_apply_plan(j, &plan);
    if (rc < 0) {
        snprintf(err, sizeof(err), "cannot build the journal: %s", strerror(-rc));
        goto out;
    }
    if (plan->n == 0) {
        r = reply_new(h, true, NULL);
        json_object_set_new(r, "nothing", json_true());
        goto out;
    }
    free(text);
    text = NULL;
    if ((rc = overrides_journal_serialize(j, &text, &len)) < 0 ||
        (rc = journal_write_trusted(h, text, len, err, sizeof(err))) < 0) {
        if (rc == -ENOMEM)
            snprintf(err, sizeof(err), "out of memory");
        char e2[1100];
        snprintf(e2, sizeof(e2), "journal: %.900s; overrides not applied", err);
        snprintf(err, sizeof(err), "%.1000s", e2);
        fail_kind = "journal";
        goto out;
    }
    journaled = true;
    free(written);
    written = strndup(text, len);
    log_info("journal written: %s (%zu settings, prior state of main.cf %zu bytes, master.cf %zu "
             "bytes)",
             h->journal_path, j->n, f.main_len, f.master_len);
    /* From here on Postfix may change: the journal is what undoes it. */
    for (size_t i = 0; i < plan->n; i++) {
        changed = true;
        if (run_plan_cmd(h, &plan->cmds[i], err, sizeof(err)) < 0) {
            fail_kind = "command";
            h->half_applied = true;
            goto out;
        }
    }
    /* The files as the plan left them: what a byte-exact restore expects to find. */
    free(f.main_buf);
    free(f.master_buf);
    f.main_buf = f.master_buf = NULL;
    f.main_len = f.master_len = 0;
    free(text);
    text = NULL;
    if (read_path(h->main_path, &f.main_buf, &f.main_len) < 0 ||
        read_path(h->master_path, &f.master_buf, &f.master_len) < 0 ||
        overrides_journal_set_expected(j, f.main_buf, f.main_len, f.master_buf, f.master_len) < 0 ||
        overrides_journal_serialize(j, &text, &len) < 0 ||
        journal_write_trusted(h, text, len, verr, sizeof(verr)) < 0) {
        log_warn("journal update failed; the restore will go setting by setting");
    } else {
        free(written);
        written = strndup(text, len);
    }
    if (read_state(h, &f, false, err, sizeof(err)) < 0) {
        h->half_applied = true;
        fail_kind = "command";
        goto out;
    }
    if (overrides_verify(j, f.n_text, f.n_len, f.P_text, f.P_len, verr, sizeof(verr)) < 0) {
        snprintf(err, sizeof(err), "read-back differs: %s", verr);
        h->half_applied = true;
        fail_kind = "verify";
        goto out;
    }
    h->half_applied = false;
    r = reply_new(h, true, NULL);
    json_object_set_new(r, "elapsed_ms", json_integer((json_int_t)(mono_ms() - t0)));
out:
    if (!r)
        r = reply_new(h, false, err);
    json_object_set_new(r, "changed", json_boolean(changed));
    json_object_set_new(r, "journaled", json_boolean(journaled));
    json_object_set_new(r, "fail", json_string(fail_kind));
    if (journaled && j)
        json_object_set_new(r, "settings", privmsg_settings_json(j));
    if (written) {
        /* The journal as last written, for the copy the daemon keeps in the store (it
         * cannot read root's file). Left out when the reply would not fit a message. */
        char *d = json_dumps(r, JSON_COMPACT);
        size_t esc = 0;
        for (const char *q = written; *q; q++)
            esc += (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20) ? 6 : 1;
        if (d && strlen(d) + esc + 64 < PRIVMSG_MAX)
            json_object_set_new(r, "journal_text", json_string(written));
        else
            json_object_set_new(r, "journal_text_omitted", json_true());
        free(d);
    }
    files_clear(&f);
    overrides_params_free(known);
    overrides_services_free(svcs);
    overrides_profile_free(prof);
    overrides_journal_free(j);
    overrides_plan_free(plan);
    free(text);
    free(jbuf);
    free(written);
    return r;
}

/* R: undo the journal exactly (original bytes where the files are as we left them,
 * setting by setting otherwise), reload, report conflicts, drop the journal. */
static json_t *op_restore(struct helper *h)
{
    char err[1024] = "", perr[600];
    char *jbuf = NULL;
    size_t jlen = 0;
    bool found = false;
    struct overrides_journal *j = NULL;
    struct overrides_restore *rs = NULL;
    struct files f = {0};
    json_t *r = NULL;
    uint64_t t0 = mono_ms();

    if (journal_read_trusted(h, &jbuf, &jlen, &found, err, sizeof(err)) < 0)
        goto out;
    if (!found) {
        r = reply_new(h, true, NULL);
        json_object_set_new(r, "nothing", json_true());
        goto out;
    }
    if (overrides_journal_parse(jbuf, jlen, &j, perr, sizeof(perr)) < 0) {
        snprintf(err, sizeof(err), "journal %s is corrupt: %s", h->journal_path, perr);
        goto out;
    }
    if (strcmp(j->config_dir, h->config_dir) != 0) {
        snprintf(err, sizeof(err), "journal is for %.300s, not %.300s", j->config_dir,
                 h->config_dir);
        goto out;
    }
    if (read_state(h, &f, true, err, sizeof(err)) < 0)
        goto out;
    if (h->half_applied && !j->have_expected &&
        overrides_journal_set_expected(j, f.main_buf, f.main_len, f.master_buf, f.master_len) < 0) {
        snprintf(err, sizeof(err), "out of memory");
        goto out;
    }
    int rc = overrides_restore_plan(j, f.main_buf, f.main_len, f.master_buf, f.master_len, f.n_text,
                                    f.n_len, f.P_text, f.P_len, &rs);
    if (rc < 0) {
        snprintf(err, sizeof(err), "cannot plan: %s", strerror(-rc));
        goto out;
    }
    log_info("restore: main.cf %s, master.cf %s, %zu commands, %zu conflicts",
             rs->write_main ? "gets its original bytes back" : "setting by setting",
             rs->write_master ? "gets its original bytes back" : "setting by setting", rs->plan.n,
             rs->n_conflicts);
    if (rs->write_main &&
        write_config_file(h->main_path, j->main_original.data ? j->main_original.data : "",
                          j->main_original.size, err, sizeof(err)) < 0)
        goto out;
    if (rs->write_master &&
        write_config_file(h->master_path, j->master_original.data ? j->master_original.data : "",
                          j->master_original.size, err, sizeof(err)) < 0)
        goto out;
    for (size_t i = 0; i < rs->plan.n; i++)
        if (run_plan_cmd(h, &rs->plan.cmds[i], err, sizeof(err)) < 0)
            goto out;
    h->half_applied = false;
    if (journal_unlink(h, perr, sizeof(perr)) < 0)
        log_warn("restore: %s (Postfix is restored)", perr);
    r = reply_new(h, true, NULL);
    json_t *cf = json_array();
    for (size_t i = 0; i < rs->n_conflicts; i++) {
        const struct overrides_conflict *k = &rs->conflicts[i];
        json_array_append_new(cf, json_pack("{s:s,s:s?,s:s?,s:s?,s:s}", "setting", k->setting,
                                            "prior", k->prior, "ours", k->ours, "current",
                                            k->current, "why", k->why ? k->why : ""));
    }
    json_object_set_new(r, "conflicts", cf);
    json_object_set_new(r, "write_main", json_boolean(rs->write_main));
    json_object_set_new(r, "write_master", json_boolean(rs->write_master));
    json_object_set_new(r, "settings", privmsg_settings_json(j));
    json_object_set_new(r, "elapsed_ms", json_integer((json_int_t)(mono_ms() - t0)));
out:
    if (!r)
        r = reply_new(h, false, err);
    files_clear(&f);
    overrides_journal_free(j);
    overrides_restore_free(rs);
    free(jbuf);
    return r;
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
        if (run_cmd(h, argv, false, &out, &len, err, sizeof(err)) == 0) {
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
    return ok ? NULL : reply_new(h, false, "request rejected: payload must be {}");
}

/* The helper's life: one request at a time until the socketpair closes. */
static void __attribute__((noreturn)) helper_main(struct helper *h)
{
    char *buf = malloc(PRIVMSG_MAX + 1);
    if (!buf)
        _exit(1);
    log_debug("privileged helper running (pid %ld)", (long)getpid());
    for (;;) {
        ssize_t n = recv(h->fd, buf, PRIVMSG_MAX + 1, MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the daemon closed its end (or died): nothing more to do */
        h->commands = h->failures = 0;
        enum privmsg_op op;
        const char *payload;
        size_t plen;
        int rc = privmsg_frame_parse(buf, (size_t)n, &op, &payload, &plen);
        if (rc < 0) {
            log_error("request refused: %s (%zd bytes)", rc == -EMSGSIZE ? "size" : "unknown op",
                      n);
            helper_reply_json(h, reply_new(h, false, "request rejected: bad frame"));
            continue;
        }
        json_t *bad;
        switch (op) {
        case PRIVMSG_JOURNAL:
            bad = json_empty_check(h, payload, plen);
            helper_reply_json(h, bad ? bad : op_journal(h));
            break;
        case PRIVMSG_APPLY:
            helper_reply_json(h, op_apply(h, payload, plen));
            break;
        case PRIVMSG_RESTORE:
            bad = json_empty_check(h, payload, plen);
            helper_reply_json(h, bad ? bad : op_restore(h));
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
            helper_reply_json(h, reply_new(h, false, "request rejected: not a request"));
            break;
        }
    }
    free(buf);
    _exit(0);
}

/* An absolute path for a command: as given when it has a '/', else the first
 * executable in PATH (the helper never searches PATH and never runs a shell). */
static char *resolve_cmd(const char *name)
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

static char *join(const char *dir, const char *name)
{
    size_t l = strlen(dir) + strlen(name) + 2;
    char *p = malloc(l);
    if (p)
        snprintf(p, l, "%s/%s", dir, name);
    return p;
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
    h.state_dir = strdup(cfg->state_directory);
    h.journal_path = join(cfg->state_directory, JOURNAL_NAME);
    h.main_path = join(cfg->postfix_config_directory, "main.cf");
    h.master_path = join(cfg->postfix_config_directory, "master.cf");
    h.postconf = resolve_cmd(cfg->postconf_command);
    h.postfix = resolve_cmd(cfg->postfix_command);
    h.postconf_shown = strdup(cfg->postconf_command);
    h.postfix_shown = strdup(cfg->postfix_command);
    if (!h.config_dir || !h.state_dir || !h.journal_path || !h.main_path || !h.master_path ||
        !h.postconf || !h.postfix || !h.postconf_shown || !h.postfix_shown) {
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
        prctl(PR_SET_NAME, "postsurge-priv", 0, 0, 0);
        helper_main(&h);
    }
    close(sv[1]);
    free(h.config_dir);
    free(h.state_dir);
    free(h.journal_path);
    free(h.main_path);
    free(h.master_path);
    free(h.postconf);
    free(h.postfix);
    free(h.postconf_shown);
    free(h.postfix_shown);
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
