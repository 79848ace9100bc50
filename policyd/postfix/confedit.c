/* confedit: the journaled, transactional edit of a Postfix instance (see confedit.h).
 * Everything here blocks; it runs in the privileged helper or in a thread-pool thread,
 * never on the loop. */
#define _GNU_SOURCE
#define LOG_COMPONENT "confedit"
#include "confedit.h"

#include "pfcmd.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "overrides.h"
#include "privmsg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define JOURNAL_NAME "journal.json"
#define SCRATCH_PREFIX "postsurge-edit."

struct logline {
    struct logline *next;
    enum log_level level;
    char text[];
};

struct confedit {
    char *config_dir, *state_dir, *journal_path, *main_path, *master_path;
    char *postconf, *postfix;             /* absolute paths */
    char *postconf_shown, *postfix_shown; /* as configured, for log lines */
    uint64_t timeout_ms;
    unsigned commands, failures; /* of the current operation */
    /* Scratch directories are named SCRATCH_PREFIX + tag + ".XXXXXX": tag is a hash of
     * state_directory, so a start removes only what a crash of this instance left. */
    char tag[16];
    bool defer;
    struct logline *log_head, **log_tail;
    bool (*guard)(void *arg);
    void *guard_arg;
};

/* ---------------------------------------------------------------- logging ---- */

static void ce_log(struct confedit *ce, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ce_log(struct confedit *ce, enum log_level level, const char *fmt, ...)
{
    if (log_threshold < level)
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (!ce->defer) {
        log_write(level, LOG_COMPONENT, "%s", line);
        return;
    }
    size_t n = strlen(line) + 1;
    struct logline *l = malloc(sizeof(*l) + n);
    if (!l)
        return;
    l->next = NULL;
    l->level = level;
    memcpy(l->text, line, n);
    *ce->log_tail = l;
    ce->log_tail = &l->next;
}

void confedit_set_guard(struct confedit *ce, bool (*guard)(void *arg), void *arg)
{
    ce->guard = guard;
    ce->guard_arg = arg;
}

/* Whether the requester still waits for this operation (see confedit_set_guard). */
static bool wanted(struct confedit *ce, char *err, size_t errlen)
{
    if (!ce->guard || ce->guard(ce->guard_arg))
        return true;
    snprintf(err, errlen, "the daemon that asked is gone: not started");
    ce_log(ce, LOG_LVL_WARN, "%s", err);
    return false;
}

void confedit_defer_log(struct confedit *ce, bool defer)
{
    ce->defer = defer;
}

void confedit_flush_log(struct confedit *ce)
{
    while (ce->log_head) {
        struct logline *l = ce->log_head;
        ce->log_head = l->next;
        log_write(l->level, LOG_COMPONENT, "%s", l->text);
        free(l);
    }
    ce->log_tail = &ce->log_head;
}

/* ---------------------------------------------------------------- set-up ---- */

struct confedit *confedit_new(const char *config_dir, const char *state_dir,
                              const char *postconf_cmd, const char *postfix_cmd,
                              uint64_t timeout_ms)
{
    struct confedit *ce = calloc(1, sizeof(*ce));
    if (!ce)
        return NULL;
    ce->log_tail = &ce->log_head;
    ce->timeout_ms = timeout_ms;
    ce->config_dir = strdup(config_dir);
    ce->state_dir = strdup(state_dir);
    ce->journal_path = fsutil_path_join(state_dir, JOURNAL_NAME);
    ce->main_path = fsutil_path_join(config_dir, "main.cf");
    ce->master_path = fsutil_path_join(config_dir, "master.cf");
    ce->postconf = pfcmd_resolve(postconf_cmd);
    ce->postfix = pfcmd_resolve(postfix_cmd);
    ce->postconf_shown = strdup(postconf_cmd);
    ce->postfix_shown = strdup(postfix_cmd);
    if (!ce->config_dir || !ce->state_dir || !ce->journal_path || !ce->main_path ||
        !ce->master_path || !ce->postconf || !ce->postfix || !ce->postconf_shown ||
        !ce->postfix_shown) {
        confedit_free(ce);
        return NULL;
    }
    uint32_t h = 2166136261u;
    for (const char *p = state_dir; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(ce->tag, sizeof(ce->tag), "%08" PRIx32, h);
    return ce;
}

void confedit_free(struct confedit *ce)
{
    if (!ce)
        return;
    confedit_defer_log(ce, false);
    confedit_flush_log(ce);
    free(ce->config_dir);
    free(ce->state_dir);
    free(ce->journal_path);
    free(ce->main_path);
    free(ce->master_path);
    free(ce->postconf);
    free(ce->postfix);
    free(ce->postconf_shown);
    free(ce->postfix_shown);
    free(ce);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------ files ---- */

static int read_path(const char *path, char **buf, size_t *len)
{
    int fd = fsutil_open_regular(path, 0);
    if (fd < 0)
        return fd;
    int rc = fsutil_read_fd(fd, buf, len);
    close(fd);
    return rc;
}

/* Serialises operations on one state_directory (see confedit.h). Returns the fd holding
 * the lock, or -1 when none could be taken (the operation goes on: the controller's lock
 * on the config directory still keeps two daemons apart). */
static int op_lock(struct confedit *ce)
{
    int fd = open(ce->state_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static void op_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* The journal. As root only one root wrote: a regular file (not a symlink) owned by us
 * with one link and no group/other write bit; anything else in its place was put there by
 * someone else (the state directory belongs to the unprivileged user). Returns 0 with
 * *found, or a negative errno with err. */
static int journal_read(struct confedit *ce, char **buf, size_t *len, bool *found, char *err,
                        size_t errlen)
{
    bool trusted_only = geteuid() == 0;
    *found = false;
    int fd = open(ce->journal_path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        int e = -errno;
        snprintf(err, errlen, "cannot open %s: %s", ce->journal_path, strerror(-e));
        return e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (trusted_only && (st.st_uid != geteuid() || st.st_nlink != 1 || (st.st_mode & 022)))) {
        snprintf(err, errlen,
                 "%s is not a journal the privileged helper wrote (owner, links or mode "
                 "differ): refused",
                 ce->journal_path);
        close(fd);
        return -EPERM;
    }
    int rc = fsutil_read_fd(fd, buf, len);
    close(fd);
    if (rc < 0) {
        snprintf(err, errlen, "cannot read %s: %s", ce->journal_path, strerror(-rc));
        return rc;
    }
    *found = true;
    return 0;
}

/* Reads and parses the journal, checking it is for this instance. *j NULL when none. */
static int journal_load(struct confedit *ce, struct overrides_journal **j, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    bool found = false;
    *j = NULL;
    int rc = journal_read(ce, &buf, &len, &found, err, errlen);
    if (rc == 0 && found) {
        char perr[400];
        if (overrides_journal_parse(buf, len, j, perr, sizeof(perr)) < 0) {
            snprintf(err, errlen, "journal %s is corrupt: %s", ce->journal_path, perr);
            rc = -EINVAL;
        } else if (strcmp((*j)->config_dir, ce->config_dir) != 0) {
            snprintf(err, errlen, "journal %.200s is for %.150s, not %.150s", ce->journal_path,
                     (*j)->config_dir, ce->config_dir);
            overrides_journal_free(*j);
            *j = NULL;
            rc = -EINVAL;
        }
    }
    free(buf);
    return rc;
}

/* Writes the journal: JOURNAL.postsurge-tmp created fresh (O_EXCL, O_NOFOLLOW: the
 * unprivileged user may have left a symlink there), mode 0600, fsync, rename, fsync the
 * directory. */
static int journal_write(struct confedit *ce, const char *data, size_t len, char *err,
                         size_t errlen)
{
    static const char tmpname[] = JOURNAL_NAME ".postsurge-tmp";
    int dfd = open(ce->state_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        int e = -errno;
        snprintf(err, errlen, "cannot open %s: %s", ce->state_dir, strerror(-e));
        return e;
    }
    unlinkat(dfd, tmpname, 0);
    int fd = openat(dfd, tmpname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    int e = 0;
    if (fd < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot create %s/%s: %s", ce->state_dir, tmpname, strerror(-e));
        close(dfd);
        return e;
    }
    if (fchmod(fd, 0600) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot chmod the journal: %s", strerror(-e));
        close(fd);
    } else {
        char name[4200];
        snprintf(name, sizeof(name), "%s/%s", ce->state_dir, tmpname);
        e = fsutil_write_close(fd, data, len, name, err, errlen);
    }
    if (e == 0 && renameat(dfd, tmpname, dfd, JOURNAL_NAME) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot rename the journal into place in %s: %s", ce->state_dir,
                 strerror(-e));
    }
    if (e < 0) {
        unlinkat(dfd, tmpname, 0);
    } else if (fsync(dfd) < 0) {
        e = -errno;
        snprintf(err, errlen, "cannot fsync %s: %s", ce->state_dir, strerror(-e));
    }
    close(dfd);
    return e;
}

static int journal_unlink(struct confedit *ce, char *err, size_t errlen)
{
    if (unlink(ce->journal_path) < 0 && errno != ENOENT) {
        int e = -errno;
        snprintf(err, errlen, "cannot remove %s: %s", ce->journal_path, strerror(-e));
        return e;
    }
    int rc = fsutil_fsync_dir_of(ce->journal_path);
    if (rc < 0)
        snprintf(err, errlen, "cannot fsync %.400s: %s", ce->state_dir, strerror(-rc));
    return rc;
}

/* Puts data in place of a Postfix file (temp file + fsync + rename + directory fsync),
 * keeping the file's owner and mode. */
static int install_file(const char *path, const char *data, size_t len, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return -EINVAL;
    }
    int e = fsutil_replace(path, data ? data : "", len, &st, FSUTIL_FRESH_TMP, err, errlen);
    if (e == 0 && (e = fsutil_fsync_dir_of(path)) < 0)
        snprintf(err, errlen, "cannot fsync the directory of %s: %s", path, strerror(-e));
    return e;
}

static bool same_bytes(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* --------------------------------------------------------------- scratch ---- */

/* A directory for the scratch copies: TMPDIR, else /tmp, if nobody but us and root can
 * rename what is in it (not group/other writable, or sticky). */
static const char *scratch_parent(void)
{
    const char *cand[2] = {getenv("TMPDIR"), "/tmp"};
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (!cand[i] || cand[i][0] != '/' || stat(cand[i], &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        if ((st.st_uid == 0 || st.st_uid == geteuid()) &&
            (!(st.st_mode & 022) || (st.st_mode & S_ISVTX)))
            return cand[i];
    }
    return NULL;
}

/* Removes dir and the plain files in it (a scratch directory holds nothing else);
 * symlinks are removed, never followed. */
static void scratch_remove(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd >= 0) {
        DIR *d = fdopendir(dfd);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                    unlinkat(dirfd(d), e->d_name, 0);
            closedir(d);
        } else {
            close(dfd);
        }
    }
    rmdir(dir);
}

/* What a crash in the middle of an operation of this instance left: scratch
 * directories, and (as root, whose directory it is) the temporary files beside
 * main.cf and master.cf. */
static void cleanup_leftovers(struct confedit *ce)
{
    const char *parent = scratch_parent();
    char prefix[64];
    snprintf(prefix, sizeof(prefix), SCRATCH_PREFIX "%s.", ce->tag);
    DIR *d = parent ? opendir(parent) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode) ||
            st.st_uid != geteuid())
            continue;
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s", parent, e->d_name);
        scratch_remove(path);
        ce_log(ce, LOG_LVL_INFO, "removed %s, left by an interrupted edit", path);
    }
    if (d)
        closedir(d);
    if (geteuid() != 0)
        return;
    const char *files[2] = {ce->main_path, ce->master_path};
    for (int i = 0; i < 2; i++) {
        char tmp[4200];
        struct stat st;
        snprintf(tmp, sizeof(tmp), "%s.postsurge-tmp", files[i]);
        if (lstat(tmp, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0 && unlink(tmp) == 0)
            ce_log(ce, LOG_LVL_INFO, "removed %s, left by an interrupted edit", tmp);
    }
}

static int write_new(const char *dir, const char *name, const char *data, size_t len, char *err,
                     size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = -errno;
        snprintf(err, errlen, "cannot create %.400s: %s", path, strerror(-e));
        return e;
    }
    return fsutil_write_close(fd, data ? data : "", len, path, err, errlen);
}

/* A scratch configuration directory holding main.cf and master.cf with these bytes.
 * *dir is new (caller removes and frees). */
static int scratch_new(struct confedit *ce, const char *main_cf, size_t main_len,
                       const char *master_cf, size_t master_len, char **dir, char *err,
                       size_t errlen)
{
    const char *parent = scratch_parent();
    *dir = NULL;
    if (!parent) {
        snprintf(err, errlen,
                 "no directory for a scratch copy (TMPDIR and /tmp are writable "
                 "by others and not sticky)");
        return -EPERM;
    }
    char tmpl[4200];
    snprintf(tmpl, sizeof(tmpl), "%s/" SCRATCH_PREFIX "%s.XXXXXX", parent, ce->tag);
    if (!mkdtemp(tmpl)) {
        int e = -errno;
        snprintf(err, errlen, "cannot create a scratch directory in %s: %s", parent, strerror(-e));
        return e;
    }
    *dir = strdup(tmpl);
    if (!*dir) {
        rmdir(tmpl);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = write_new(*dir, "main.cf", main_cf, main_len, err, errlen);
    if (rc == 0)
        rc = write_new(*dir, "master.cf", master_cf, master_len, err, errlen);
    return rc;
}

static void scratch_drop(char **dir)
{
    if (*dir) {
        scratch_remove(*dir);
        free(*dir);
        *dir = NULL;
    }
}

/* -------------------------------------------------------------- commands ---- */

static int run_cmd(struct confedit *ce, char *const *argv, const char *log_prefix, char **out,
                   size_t *out_len, char *err, size_t errlen)
{
    char line[2048];
    size_t o = 0;
    line[0] = '\0';
    for (size_t i = 0; argv[i] && o < sizeof(line) - 1; i++) {
        const char *w = argv[i];
        if (i == 0 && w == ce->postconf)
            w = ce->postconf_shown;
        else if (i == 0 && w == ce->postfix)
            w = ce->postfix_shown;
        o += (size_t)snprintf(line + o, sizeof(line) - o, "%s%s", i ? " " : "", w);
    }
    if (log_prefix)
        ce_log(ce, LOG_LVL_INFO, "%s%s", log_prefix, line);
    else
        ce_log(ce, LOG_LVL_DEBUG, "running: %s", line);
    ce->commands++;
    int rc = pfcmd_run(argv, line, ce->timeout_ms, out, out_len, err, errlen);
    if (rc < 0)
        ce->failures++;
    return rc;
}

static int run_postconf(struct confedit *ce, const char *flag, char **out, size_t *len, char *err,
                        size_t errlen)
{
    char *argv[] = {ce->postconf, "-c", ce->config_dir, (char *)flag, NULL};
    return run_cmd(ce, argv, NULL, out, len, err, errlen);
}

/* Runs a plan's command: argv[0] "postconf" or "postfix" becomes the fixed path;
 * anything else is refused (lib/overrides only builds those two). dir: the directory
 * after "-c" instead of the instance's (a scratch copy), or NULL. */
static int run_plan_cmd(struct confedit *ce, const struct overrides_cmd *c, const char *dir,
                        const char *log_prefix, char *err, size_t errlen)
{
    if (c->argc < 3 || c->argc > 4096 || strcmp(c->argv[1], "-c") != 0 ||
        strcmp(c->argv[2], ce->config_dir) != 0) {
        snprintf(err, errlen, "refused to run a command not for %s", ce->config_dir);
        return -EPERM;
    }
    char **av = calloc(c->argc + 1, sizeof(char *));
    if (!av) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < c->argc; i++)
        av[i] = c->argv[i];
    if (dir)
        av[2] = (char *)dir;
    int rc = 0;
    if (strcmp(c->argv[0], "postconf") == 0) {
        av[0] = ce->postconf;
    } else if (strcmp(c->argv[0], "postfix") == 0) {
        av[0] = ce->postfix;
    } else {
        snprintf(err, errlen, "refused to run %s", c->argv[0]);
        rc = -EPERM;
    }
    if (rc == 0)
        rc = run_cmd(ce, av, log_prefix, NULL, NULL, err, errlen);
    free(av);
    return rc;
}

static bool is_edit(const struct overrides_cmd *c)
{
    return strcmp(c->argv[0], "postconf") == 0;
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

static int read_files(const char *main_path, const char *master_path, struct files *f, char *err,
                      size_t errlen)
{
    int rc;
    free(f->main_buf);
    free(f->master_buf);
    f->main_buf = f->master_buf = NULL;
    if ((rc = read_path(main_path, &f->main_buf, &f->main_len)) < 0) {
        snprintf(err, errlen, "cannot read %s: %s", main_path, strerror(-rc));
        return rc;
    }
    if ((rc = read_path(master_path, &f->master_buf, &f->master_len)) < 0) {
        snprintf(err, errlen, "cannot read %s: %s", master_path, strerror(-rc));
        return rc;
    }
    return 0;
}

/* postconf -n and -P of the instance. */
static int read_settings(struct confedit *ce, struct files *f, char *err, size_t errlen)
{
    free(f->n_text);
    free(f->P_text);
    f->n_text = f->P_text = NULL;
    int rc = run_postconf(ce, "-n", &f->n_text, &f->n_len, err, errlen);
    if (rc == 0)
        rc = run_postconf(ce, "-P", &f->P_text, &f->P_len, err, errlen);
    return rc;
}

/* Runs the postconf commands of plan on a scratch copy of (main, master) and reads the
 * copies back into *out. Returns 0 or a negative errno with err. */
static int edit_copy(struct confedit *ce, const struct overrides_plan *plan, const char *main_cf,
                     size_t main_len, const char *master_cf, size_t master_len, struct files *out,
                     char *err, size_t errlen)
{
    char *dir = NULL;
    int rc = scratch_new(ce, main_cf, main_len, master_cf, master_len, &dir, err, errlen);
    for (size_t i = 0; rc == 0 && i < plan->n; i++)
        if (is_edit(&plan->cmds[i]))
            rc = run_plan_cmd(ce, &plan->cmds[i], dir, "editing a copy: ", err, errlen);
    if (rc == 0) {
        char mp[4200], sp[4200];
        snprintf(mp, sizeof(mp), "%s/main.cf", dir);
        snprintf(sp, sizeof(sp), "%s/master.cf", dir);
        rc = read_files(mp, sp, out, err, errlen);
    }
    scratch_drop(&dir);
    return rc;
}

/* Runs the plan's postfix commands (the reload) on the instance. */
static int run_reload(struct confedit *ce, const struct overrides_plan *plan, char *err,
                      size_t errlen)
{
    for (size_t i = 0; i < plan->n; i++)
        if (!is_edit(&plan->cmds[i])) {
            int rc = run_plan_cmd(ce, &plan->cmds[i], NULL, "running: ", err, errlen);
            if (rc < 0)
                return rc;
        }
    return 0;
}

static json_t *reply_new(struct confedit *ce, bool ok, const char *error)
{
    return json_pack("{s:b,s:s,s:i,s:i}", "ok", ok, "error", error ? error : "", "commands",
                     (int)ce->commands, "failures", (int)ce->failures);
}

/* --------------------------------------------------------------- journal ---- */

json_t *confedit_journal(struct confedit *ce)
{
    char err[600] = "";
    struct overrides_journal *j = NULL;
    ce->commands = ce->failures = 0;
    int lk = op_lock(ce);
    cleanup_leftovers(ce);
    int rc = journal_load(ce, &j, err, sizeof(err));
    op_unlock(lk);
    json_t *r = reply_new(ce, rc == 0, err);
    json_object_set_new(r, "found", json_boolean(j != NULL));
    if (j)
        json_object_set_new(r, "settings", privmsg_settings_json(j));
    overrides_journal_free(j);
    return r;
}

/* ----------------------------------------------------------------- apply ---- */

/* Learns Postfix's names (postconf -d, -F) and validates the request against them. */
static int apply_validate(struct confedit *ce, const char *payload, size_t plen,
                          struct overrides_profile **prof, int64_t *now_ms, const char **fail,
                          char *err, size_t errlen)
{
    struct overrides_params *known = NULL;
    struct overrides_services *svcs = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = run_postconf(ce, "-d", &text, &len, err, errlen);
    if (rc == 0 && overrides_known_params_parse(text, len, &known) < 0) {
        snprintf(err, errlen, "postconf -d gave no parameter names");
        rc = -EINVAL;
    }
    free(text);
    text = NULL;
    if (rc == 0)
        rc = run_postconf(ce, "-F", &text, &len, err, errlen);
    if (rc == 0 && overrides_services_parse(text, len, &svcs) < 0) {
        snprintf(err, errlen, "postconf -F: no services");
        rc = -EINVAL;
    }
    free(text);
    char verr[600];
    if (rc == 0 &&
        privmsg_apply_decode(payload, plen, known, svcs, prof, now_ms, verr, sizeof(verr)) < 0) {
        snprintf(err, errlen, "request rejected: %s", verr);
        ce_log(ce, LOG_LVL_ERROR, "apply %s", err);
        *fail = "rejected";
        rc = -EINVAL;
    }
    overrides_params_free(known);
    overrides_services_free(svcs);
    return rc;
}

static void reply_journal_text(json_t *r, const char *text, size_t max_text)
{
    /* The journal as written, for the copy the daemon keeps in the store (it cannot read
     * root's file). Left out when the reply would not fit a message. */
    char *d = json_dumps(r, JSON_COMPACT);
    size_t esc = 0;
    for (const char *q = text; *q; q++)
        esc += (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20) ? 6 : 1;
    if (d && strlen(d) + esc + 64 < max_text)
        json_object_set_new(r, "journal_text", json_string(text));
    else
        json_object_set_new(r, "journal_text_omitted", json_true());
    free(d);
}

json_t *confedit_apply(struct confedit *ce, const char *payload, size_t plen, bool dry_run,
                       size_t max_text)
{
    char err[1024] = "";
    struct files f = {0}, nf = {0};
    struct overrides_profile *prof = NULL;
    struct overrides_journal *j = NULL;
    struct overrides_plan *plan = NULL;
    char *jbuf = NULL, *text = NULL;
    size_t jlen = 0, len = 0;
    bool found = false, changed = false, journaled = false;
    json_t *r = NULL;
    const char *fail = "";
    int64_t now_ms = 0;
    uint64_t t0 = mono_ms();
    int rc;
    ce->commands = ce->failures = 0;
    int lk = dry_run ? -1 : op_lock(ce);

    if (!wanted(ce, err, sizeof(err)))
        goto out;
    if (!dry_run && (journal_read(ce, &jbuf, &jlen, &found, err, sizeof(err)) < 0 || found)) {
        if (found)
            snprintf(err, sizeof(err), "a journal is in force already (%s): restore first",
                     ce->journal_path);
        fail = "journal";
        goto out;
    }
    if (apply_validate(ce, payload, plen, &prof, &now_ms, &fail, err, sizeof(err)) < 0)
        goto out;
    if (read_files(ce->main_path, ce->master_path, &f, err, sizeof(err)) < 0 ||
        read_settings(ce, &f, err, sizeof(err)) < 0)
        goto out;
    rc = overrides_journal_new(prof, ce->config_dir, f.main_buf, f.main_len, f.master_buf,
                               f.master_len, f.n_text, f.n_len, f.P_text, f.P_len, now_ms, &j);
    if (rc == 0)
        rc = overrides_apply_plan(j, &plan);
    if (rc < 0) {
        snprintf(err, sizeof(err), "cannot build the journal: %s", strerror(-rc));
        goto out;
    }
    if (plan->n == 0) {
        r = reply_new(ce, true, NULL);
        json_object_set_new(r, "nothing", json_true());
        goto out;
    }
    if (dry_run) {
        for (size_t i = 0; i < plan->n; i++) {
            char *line = NULL;
            if (overrides_cmd_format(&plan->cmds[i], &line) == 0) {
                ce_log(ce, LOG_LVL_INFO, "dry run: would run: %s", line);
                free(line);
            }
        }
        r = reply_new(ce, true, NULL);
        json_object_set_new(r, "dry_run", json_true());
        json_object_set_new(r, "planned", json_integer((json_int_t)plan->n));
        json_object_set_new(r, "settings", privmsg_settings_json(j));
        goto out;
    }
    /* The new files, made on a copy: nothing of the instance changes yet. */
    if (edit_copy(ce, plan, f.main_buf, f.main_len, f.master_buf, f.master_len, &nf, err,
                  sizeof(err)) < 0) {
        fail = "command";
        goto out;
    }
    if ((rc = overrides_journal_set_expected(j, nf.main_buf, nf.main_len, nf.master_buf,
                                             nf.master_len)) < 0 ||
        (rc = overrides_journal_serialize(j, &text, &len)) < 0 ||
        (rc = journal_write(ce, text, len, err, sizeof(err))) < 0) {
        if (rc == -ENOMEM)
            snprintf(err, sizeof(err), "out of memory");
        char e2[1100];
        snprintf(e2, sizeof(e2), "journal: %.900s; overrides not applied", err);
        snprintf(err, sizeof(err), "%.1000s", e2);
        fail = "journal";
        goto out;
    }
    journaled = true;
    ce_log(ce, LOG_LVL_INFO,
           "journal written: %s (%zu settings, prior state of main.cf %zu bytes, master.cf %zu "
           "bytes; new main.cf %zu bytes, master.cf %zu bytes)",
           ce->journal_path, j->n, f.main_len, f.master_len, nf.main_len, nf.master_len);
    /* Someone who edited a file since it was read would lose that edit: check first. */
    struct files now = {0};
    rc = read_files(ce->main_path, ce->master_path, &now, err, sizeof(err));
    if (rc == 0 && (!same_bytes(now.main_buf, now.main_len, f.main_buf, f.main_len) ||
                    !same_bytes(now.master_buf, now.master_len, f.master_buf, f.master_len))) {
        snprintf(err, sizeof(err),
                 "main.cf or master.cf changed while the overrides were "
                 "prepared: nothing applied");
        rc = -EAGAIN;
    }
    files_clear(&now);
    if (rc < 0) {
        char e2[200];
        if (journal_unlink(ce, e2, sizeof(e2)) == 0)
            journaled = false;
        goto out;
    }
    /* From here on Postfix changes: the journal holds every state the files can be in. */
    const struct {
        const char *path, *name;
        const char *old_, *new_;
        size_t old_len, new_len;
    } inst[2] = {
        {ce->main_path, "main.cf", f.main_buf, nf.main_buf, f.main_len, nf.main_len},
        {ce->master_path, "master.cf", f.master_buf, nf.master_buf, f.master_len, nf.master_len}};
    for (int i = 0; i < 2; i++) {
        if (same_bytes(inst[i].old_, inst[i].old_len, inst[i].new_, inst[i].new_len))
            continue;
        changed = true;
        if (install_file(inst[i].path, inst[i].new_, inst[i].new_len, err, sizeof(err)) < 0) {
            fail = "command";
            goto out;
        }
        ce_log(ce, LOG_LVL_INFO, "installed: %s (%zu bytes)", inst[i].path, inst[i].new_len);
    }
    changed = true;
    if (run_reload(ce, plan, err, sizeof(err)) < 0 || read_settings(ce, &f, err, sizeof(err)) < 0) {
        fail = "command";
        goto out;
    }
    char verr[600];
    if (overrides_verify(j, f.n_text, f.n_len, f.P_text, f.P_len, verr, sizeof(verr)) < 0) {
        snprintf(err, sizeof(err), "read-back differs: %s", verr);
        fail = "verify";
        goto out;
    }
    r = reply_new(ce, true, NULL);
    json_object_set_new(r, "elapsed_ms", json_integer((json_int_t)(mono_ms() - t0)));
out:
    op_unlock(lk);
    if (!r)
        r = reply_new(ce, false, err);
    json_object_set_new(r, "changed", json_boolean(changed));
    json_object_set_new(r, "journaled", json_boolean(journaled));
    json_object_set_new(r, "fail", json_string(fail));
    if (journaled && j)
        json_object_set_new(r, "settings", privmsg_settings_json(j));
    if (journaled && text)
        reply_journal_text(r, text, max_text);
    files_clear(&f);
    files_clear(&nf);
    overrides_profile_free(prof);
    overrides_journal_free(j);
    overrides_plan_free(plan);
    free(text);
    free(jbuf);
    return r;
}

/* --------------------------------------------------------------- restore ---- */

static const char *restore_how(bool is_original, bool write_original)
{
    return is_original      ? "holds its original bytes already"
           : write_original ? "gets its original bytes back"
                            : "setting by setting";
}

json_t *confedit_restore(struct confedit *ce)
{
    char err[1024] = "", perr[600];
    struct overrides_journal *j = NULL;
    struct overrides_restore *rs = NULL;
    struct files f = {0}, nf = {0};
    json_t *r = NULL;
    uint64_t t0 = mono_ms();
    ce->commands = ce->failures = 0;
    int lk = op_lock(ce);

    if (!wanted(ce, err, sizeof(err)) || journal_load(ce, &j, err, sizeof(err)) < 0)
        goto out;
    if (!j) {
        r = reply_new(ce, true, NULL);
        json_object_set_new(r, "nothing", json_true());
        goto out;
    }
    if (read_files(ce->main_path, ce->master_path, &f, err, sizeof(err)) < 0 ||
        read_settings(ce, &f, err, sizeof(err)) < 0)
        goto out;
    int rc = overrides_restore_plan(j, f.main_buf, f.main_len, f.master_buf, f.master_len, f.n_text,
                                    f.n_len, f.P_text, f.P_len, &rs);
    if (rc < 0) {
        snprintf(err, sizeof(err), "cannot plan: %s", strerror(-rc));
        goto out;
    }
    size_t edits = 0;
    for (size_t i = 0; i < rs->plan.n; i++)
        edits += is_edit(&rs->plan.cmds[i]);
    ce_log(ce, LOG_LVL_INFO, "restore: main.cf %s, master.cf %s, %zu commands, %zu conflicts",
           restore_how(rs->main_is_original, rs->write_main),
           restore_how(rs->master_is_original, rs->write_master), rs->plan.n, rs->n_conflicts);
    /* Setting by setting on a copy, then the results, like the originals, by rename. */
    if (edits && edit_copy(ce, &rs->plan, f.main_buf, f.main_len, f.master_buf, f.master_len, &nf,
                           err, sizeof(err)) < 0)
        goto out;
    const struct {
        const char *path;
        bool original;
        const struct overrides_blob *orig;
        const char *cur, *edited;
        size_t cur_len, edited_len;
    } inst[2] = {{ce->main_path, rs->write_main, &j->main_original, f.main_buf, nf.main_buf,
                  f.main_len, nf.main_len},
                 {ce->master_path, rs->write_master, &j->master_original, f.master_buf,
                  nf.master_buf, f.master_len, nf.master_len}};
    for (int i = 0; i < 2; i++) {
        const char *data = NULL;
        size_t dlen = 0;
        if (inst[i].original) {
            data = inst[i].orig->data;
            dlen = inst[i].orig->size;
        } else if (edits &&
                   !same_bytes(inst[i].cur, inst[i].cur_len, inst[i].edited, inst[i].edited_len)) {
            data = inst[i].edited;
            dlen = inst[i].edited_len;
        } else {
            continue;
        }
        if (install_file(inst[i].path, data, dlen, err, sizeof(err)) < 0)
            goto out;
        ce_log(ce, LOG_LVL_INFO, "installed: %s (%zu bytes%s)", inst[i].path, dlen,
               inst[i].original ? ", the original" : "");
    }
    if (run_reload(ce, &rs->plan, err, sizeof(err)) < 0)
        goto out;
    if (journal_unlink(ce, perr, sizeof(perr)) < 0)
        ce_log(ce, LOG_LVL_WARN, "restore: %s (Postfix is restored)", perr);
    r = reply_new(ce, true, NULL);
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
    json_object_set_new(r, "main_was_original", json_boolean(rs->main_is_original));
    json_object_set_new(r, "master_was_original", json_boolean(rs->master_is_original));
    json_object_set_new(r, "settings", privmsg_settings_json(j));
    json_object_set_new(r, "elapsed_ms", json_integer((json_int_t)(mono_ms() - t0)));
out:
    op_unlock(lk);
    if (!r)
        r = reply_new(ce, false, err);
    files_clear(&f);
    files_clear(&nf);
    overrides_journal_free(j);
    overrides_restore_free(rs);
    return r;
}
