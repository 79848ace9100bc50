/* controller: monitor samples -> lib/stress -> override apply/restore, journaled.
 * Every postconf/postfix run is a spawn (with command_timeout); file reads, the journal
 * and the restored files are written in libuv's thread pool (write tmp, fsync, rename,
 * fsync the directory), so the loop never blocks. One job (init, apply or restore) runs
 * at a time; after each job the wanted state (overrides in force while stressed) is
 * compared with the journal and the next job starts. The journal is on disk before the
 * first command that changes Postfix, and is removed only after a restore finished. */
#define LOG_COMPONENT "controller"
#include "controller.h"

#include "fsutil.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "monitor.h"
#include "node.h"
#include "overrides.h"
#include "privsep.h"
#include "spawn.h"
#include "stress.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The rate-limit engine's stress input (policyd/engine.c). Weak, so the controller
 * links into programs without the engine (tests, the offline restore). */
extern void engine_set_node_stressed(bool stressed) __attribute__((weak));
extern int engine_counters_stats(struct store_stats *st) __attribute__((weak));

#define CTL_MAX_LINE 1024
#define CTL_MAX_CLIENTS 16
/* A restore that failed is tried again after this long. */
#define RESTORE_RETRY_MS 30000

enum job_kind { JOB_INIT, JOB_APPLY, JOB_RESTORE };

enum work_kind {
    WK_READ_FILES,
    WK_WRITE_JOURNAL,
    WK_WRITE_ORIGINALS,
    WK_UNLINK_JOURNAL,
    WK_READ_JOURNAL
};

struct job {
    struct controller *c;
    enum job_kind kind;
    int step;
    uint64_t t0;
    /* file bytes: main.cf, master.cf (WK_READ_FILES), the journal (WK_READ_JOURNAL) */
    char *main_buf, *master_buf, *journal_buf;
    size_t main_len, master_len, journal_len;
    bool journal_found;
    char *n_text, *P_text;
    size_t n_len, P_len;
    struct overrides_journal *j; /* apply: the new journal (moved to c->journal) */
    char *jtext;                 /* serialized journal to write */
    size_t jtext_len;
    struct overrides_plan *plan;
    struct overrides_restore *restore;
    size_t cmd_idx;
    bool failed;
    /* thread pool work */
    uv_work_t work;
    enum work_kind wk;
    int work_rc;
    char work_err[512];
    /* privileged helper: the last reply (NULL with reply_status < 0 when none came) */
    json_t *reply;
    int reply_status;
    /* last command */
    struct spawn *sp;
    char *out;
    size_t out_len;
};

struct ctl_client {
    uv_pipe_t h;
    struct controller *c;
    char buf[CTL_MAX_LINE];
    size_t len;
    bool answered, closing;
    struct ctl_client *next;
};

struct controller {
    struct server *srv; /* NULL offline */
    uv_loop_t *loop;
    char *config_dir, *state_dir, *journal_path, *socket_path;
    char *postconf, *postfix, *main_path, *master_path;
    char *attack_action;
    uint64_t cmd_timeout_ms;
    bool dry_run, overrides_on, monitor_on;
    char *profile_main, *profile_master;
    /* A profile from SIGHUP not taken yet (a job runs or overrides are in force). */
    char *pending_main, *pending_master;
    struct stress_params params;

    struct monitor *mon;
    struct privsep *ps; /* the privileged helper (serve started as root), or NULL */
    bool unavailable;   /* overrides cannot run (started as non-root, helper gone) */
    char unavailable_why[256];
    struct stress_machine *sm;
    struct node *node;
    struct stress_result last;
    bool have_result;
    struct monitor_sample *sample; /* last sample */
    bool have_sample;
    int64_t mono_epoch_wall; /* wall ms at uv_now() == 0, for "since" */

    struct overrides_params *known;
    struct overrides_services *svcs;
    struct overrides_profile *resolved;
    bool init_done, profile_ready, postfix_absent;
    char profile_error[512];

    struct overrides_journal *journal; /* something to restore (on disk too) */
    bool journal_bad;                  /* a corrupt journal: change nothing */
    bool recovering;                   /* a journal from before start: decide on a sample */
    bool apply_failed;                 /* this episode's apply failed: do not retry */
    bool dry_applied;                  /* stress_dry_run: "applied" in the log only */
    /* This episode's apply found every setting already in force (another postsurge, an
     * earlier run whose journal is elsewhere, or the administrator): nothing was changed,
     * nothing is to restore, and the apply is not tried again until the next episode. */
    bool already_in_force;
    /* The Postfix configuration directory, open (before the privilege drop) to hold an
     * exclusive flock on it while this node has overrides in force: a second postsurge
     * on the same instance finds it taken and changes nothing. -1: no lock possible. */
    int lock_fd;
    bool lock_held;
    /* an apply of ours just failed half-way: the files hold exactly what it left */
    bool expected_is_current;
    uint64_t restore_retry_at;
    struct job *job;
    char last_error[512];
    uint64_t commands_run, command_failures, applies, restores, conflicts;

    uv_pipe_t ctl;
    bool ctl_open;
    struct ctl_client *clients;
    size_t n_clients;

    struct decider decider;
    struct decider *inner;
    uint64_t attack_answers;

    bool stopping;
    int closing_parts;
    /* offline restore */
    bool offline;
    int offline_rc;
};

static void ctl_reconcile(struct controller *c);
static void job_step(struct job *jb);
static void job_end(struct job *jb);
static json_t *settings_json(const struct overrides_journal *j);
static void ctl_event(struct controller *c, const char *kind, bool warn, json_t *extra,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static char *path_join(const char *dir, const char *name)
{
    size_t l = strlen(dir) + strlen(name) + 2;
    char *p = malloc(l);
    if (p)
        snprintf(p, l, "%s/%s", dir, name);
    return p;
}

static void ctl_event(struct controller *c, const char *kind, bool warn, json_t *extra,
                      const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (c->node) {
        node_event(c->node, kind, warn, extra, "%s", text);
        return;
    }
    json_decref(extra);
    if (warn)
        log_warn("event %s: %s", kind, text);
    else
        log_info("event %s: %s", kind, text);
}

/* The journal's copy in the store (json NULL: delete it). The file stays the authority;
 * the copy never delays or prevents an apply or restore. */
static void ctl_journal_to_store(struct controller *c, const char *json)
{
    if (c->node)
        node_journal_put(c->node, json);
}

static void ctl_set_error(struct controller *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ctl_set_error(struct controller *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
    va_end(ap);
}

/* ---- synchronous file helpers, run in the thread pool (or by the CLI) ---- */

/* Reads a whole file. trusted_only: the file must be a regular file owned by the
 * effective user, with one link and no group or other write bit (-EPERM otherwise), so a
 * root process never restores from a journal the unprivileged daemon user could forge. */
static int read_all_checked(const char *path, bool trusted_only, char **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | (trusted_only ? O_NOFOLLOW : 0));
    if (fd < 0)
        return -errno;
    struct stat st;
    if (trusted_only && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
                         st.st_nlink != 1 || (st.st_mode & 022))) {
        close(fd);
        return -EPERM;
    }
    char *p = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t nc = cap ? cap * 2 : 131072;
            char *q = realloc(p, nc + 1);
            if (!q) {
                free(p);
                close(fd);
                return -ENOMEM;
            }
            p = q;
            cap = nc;
        }
        ssize_t r = read(fd, p + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            free(p);
            close(fd);
            return e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    p[n] = '\0';
    *buf = p;
    *len = n;
    return 0;
}

static int read_all(const char *path, char **buf, size_t *len)
{
    return read_all_checked(path, false, buf, len);
}

/* Writes data to path atomically: PATH.postsurge-tmp, fsync, rename, fsync the
 * directory. like: a file whose owner and mode the new file takes (NULL: mode 0600). */
static int write_atomic(const char *path, const char *data, size_t len, const struct stat *like,
                        char *err, size_t errlen)
{
    int e = fsutil_replace(path, data, len, like, 0, err, errlen);
    if (e == 0 && (e = fsutil_fsync_dir_of(path)) < 0)
        snprintf(err, errlen, "cannot fsync the directory of %s: %s", path, strerror(-e));
    return e;
}

static void job_work(uv_work_t *w)
{
    struct job *jb = w->data;
    struct controller *c = jb->c;
    int rc = 0;
    jb->work_err[0] = '\0';
    switch (jb->wk) {
    case WK_READ_FILES:
        free(jb->main_buf);
        free(jb->master_buf);
        jb->main_buf = jb->master_buf = NULL;
        rc = read_all(c->main_path, &jb->main_buf, &jb->main_len);
        if (rc < 0) {
            snprintf(jb->work_err, sizeof(jb->work_err), "cannot read %s: %s", c->main_path,
                     strerror(-rc));
            break;
        }
        rc = read_all(c->master_path, &jb->master_buf, &jb->master_len);
        if (rc < 0)
            snprintf(jb->work_err, sizeof(jb->work_err), "cannot read %s: %s", c->master_path,
                     strerror(-rc));
        break;
    case WK_WRITE_JOURNAL:
        rc = write_atomic(c->journal_path, jb->jtext, jb->jtext_len, NULL, jb->work_err,
                          sizeof(jb->work_err));
        break;
    case WK_WRITE_ORIGINALS: {
        const struct overrides_journal *j = c->journal;
        struct {
            bool on;
            const char *path;
            const struct overrides_blob *b;
        } f[2] = {{jb->restore->write_main, c->main_path, &j->main_original},
                  {jb->restore->write_master, c->master_path, &j->master_original}};
        for (int i = 0; i < 2 && rc == 0; i++) {
            struct stat st;
            if (!f[i].on)
                continue;
            if (stat(f[i].path, &st) < 0) {
                rc = -errno;
                snprintf(jb->work_err, sizeof(jb->work_err), "cannot stat %s: %s", f[i].path,
                         strerror(errno));
                break;
            }
            rc = write_atomic(f[i].path, f[i].b->data ? f[i].b->data : "", f[i].b->size, &st,
                              jb->work_err, sizeof(jb->work_err));
        }
        break;
    }
    case WK_UNLINK_JOURNAL:
        if (unlink(c->journal_path) < 0 && errno != ENOENT) {
            rc = -errno;
            snprintf(jb->work_err, sizeof(jb->work_err), "cannot remove %s: %s", c->journal_path,
                     strerror(errno));
        } else {
            rc = fsutil_fsync_dir_of(c->journal_path);
            if (rc < 0)
                snprintf(jb->work_err, sizeof(jb->work_err), "cannot fsync %.400s: %s",
                         c->state_dir, strerror(-rc));
        }
        break;
    case WK_READ_JOURNAL:
        /* As root (offline restore, user = root), trust only a journal root wrote, like
         * the privileged helper does. */
        rc = read_all_checked(c->journal_path, geteuid() == 0, &jb->journal_buf, &jb->journal_len);
        jb->journal_found = rc == 0;
        if (rc == -ENOENT)
            rc = 0;
        else if (rc == -EPERM)
            snprintf(jb->work_err, sizeof(jb->work_err),
                     "%s is not a journal root wrote (owner, links or mode differ): refused",
                     c->journal_path);
        else if (rc < 0)
            snprintf(jb->work_err, sizeof(jb->work_err), "cannot read %s: %s", c->journal_path,
                     strerror(-rc));
        break;
    }
    jb->work_rc = rc;
}

static void job_after_work(uv_work_t *w, int status)
{
    struct job *jb = w->data;
    if (status < 0 && jb->work_rc == 0) {
        jb->work_rc = status;
        snprintf(jb->work_err, sizeof(jb->work_err), "thread pool: %s", uv_strerror(status));
    }
    job_step(jb);
}

static void job_queue_work(struct job *jb, enum work_kind wk)
{
    jb->wk = wk;
    jb->work.data = jb;
    int rc = uv_queue_work(jb->c->loop, &jb->work, job_work, job_after_work);
    if (rc < 0) {
        jb->work_rc = rc;
        snprintf(jb->work_err, sizeof(jb->work_err), "uv_queue_work: %s", uv_strerror(rc));
        job_step(jb);
    }
}

/* ---- commands ---- */

static void job_on_spawn(struct spawn *sp, const struct spawn_result *r, void *arg)
{
    struct job *jb = arg;
    struct controller *c = jb->c;
    (void)sp;
    jb->sp = NULL;
    free(jb->out);
    jb->out = NULL;
    jb->out_len = 0;
    c->commands_run++;
    bool ok = !r->timed_out && !r->cancelled && r->exit_status == 0 && !r->out_truncated;
    if (ok) {
        jb->out = malloc(r->out_len + 1);
        if (jb->out) {
            memcpy(jb->out, r->out, r->out_len);
            jb->out[r->out_len] = '\0';
            jb->out_len = r->out_len;
        } else {
            ok = false;
        }
    }
    if (!ok) {
        c->command_failures++;
        jb->failed = true;
        char what[96];
        if (r->timed_out)
            snprintf(what, sizeof(what), "timed out after %" PRIu64 " ms", r->elapsed_ms);
        else if (r->cancelled)
            snprintf(what, sizeof(what), "cancelled");
        else if (r->term_signal)
            snprintf(what, sizeof(what), "killed by signal %d", r->term_signal);
        else
            snprintf(what, sizeof(what), "exit status %d", r->exit_status);
        /* Postfix prints its reasons on stderr; keep them for the log and the event. */
        char output[600];
        snprintf(output, sizeof(output), "%.*s%s%.*s", (int)(r->err_len < 400 ? r->err_len : 400),
                 r->err, r->err_len && r->out_len ? " | " : "",
                 (int)(r->out_len < 150 ? r->out_len : 150), r->out);
        for (char *p = output; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        ctl_set_error(c, "command failed (%s): %s", what, output);
    }
    job_step(jb);
}

/* Runs argv (argv[0] "postconf" or "postfix" is replaced by the configured program). */
static void job_run(struct job *jb, char **argv, bool log_it)
{
    struct controller *c = jb->c;
    size_t n = 0;
    while (argv[n])
        n++;
    const char **av = calloc(n + 1, sizeof(char *));
    if (!av) {
        jb->failed = true;
        ctl_set_error(c, "out of memory");
        job_step(jb);
        return;
    }
    for (size_t i = 0; i < n; i++)
        av[i] = argv[i];
    if (strcmp(argv[0], "postconf") == 0)
        av[0] = c->postconf;
    else if (strcmp(argv[0], "postfix") == 0)
        av[0] = c->postfix;
    char line[2048];
    spawn_argv_string(av, line, sizeof(line));
    if (log_it)
        log_info("running: %s", line);
    else
        log_debug("running: %s", line);
    struct spawn_opts o = {.timeout_ms = c->cmd_timeout_ms};
    int rc = spawn_start(c->loop, av, &o, job_on_spawn, jb, &jb->sp);
    free(av);
    if (rc < 0) {
        jb->sp = NULL;
        jb->failed = true;
        c->command_failures++;
        ctl_set_error(c, "cannot run %s: %s", line, uv_strerror(rc));
        if (rc == UV_ENOENT)
            c->postfix_absent = true;
        job_step(jb);
    }
}

static void job_run_postconf(struct job *jb, const char *flag)
{
    char *argv[] = {"postconf", "-c", jb->c->config_dir, (char *)flag, NULL};
    job_run(jb, argv, false);
}

static void job_take_out(struct job *jb, char **text, size_t *len)
{
    free(*text);
    *text = jb->out ? jb->out : strdup("");
    *len = jb->out ? jb->out_len : 0;
    jb->out = NULL;
    jb->out_len = 0;
}

/* ---- the privileged helper (serve started as root) ---- */

static void job_on_reply(void *arg, int status, json_t *reply)
{
    struct job *jb = arg;
    json_decref(jb->reply);
    jb->reply = reply ? json_incref(reply) : NULL;
    jb->reply_status = status;
    job_step(jb);
}

/* Sends op to the helper; job_step() runs with jb->reply (or reply_status < 0). */
static void job_helper(struct job *jb, enum privmsg_op op, const char *payload, size_t len)
{
    json_decref(jb->reply);
    jb->reply = NULL;
    jb->reply_status = 0;
    int rc = privsep_call(jb->c->ps, op, payload, len, job_on_reply, jb);
    if (rc < 0) {
        jb->reply_status = rc;
        job_step(jb);
    }
}

/* The reply's error text, or why there was none. */
static const char *reply_error(const struct job *jb)
{
    if (jb->reply_status < 0)
        return jb->reply_status == -ECANCELED ? "cancelled (stopping)"
                                              : "the privileged helper does not answer";
    const char *e = json_string_value(json_object_get(jb->reply, "error"));
    return e && *e ? e : "unknown error";
}

static bool reply_ok(const struct job *jb)
{
    return jb->reply_status == 0 && json_is_true(json_object_get(jb->reply, "ok"));
}

/* Commands the helper ran for a request count as ours (status, metrics). */
static void reply_count(struct controller *c, const struct job *jb)
{
    c->commands_run += (uint64_t)json_integer_value(json_object_get(jb->reply, "commands"));
    c->command_failures += (uint64_t)json_integer_value(json_object_get(jb->reply, "failures"));
}

/* The journal's settings as the helper reported them (the helper keeps the journal). */
static struct overrides_journal *reply_journal(struct controller *c, const struct job *jb)
{
    struct overrides_journal *j = NULL;
    if (privmsg_settings_decode(json_object_get(jb->reply, "settings"), c->config_dir, &j) < 0)
        log_error("privileged helper: unreadable settings in its reply");
    return j;
}

/* The journal a crash left: the helper reads it (root's file, 0600); else the thread
 * pool. */
static void job_read_journal(struct job *jb)
{
    if (jb->c->ps)
        job_helper(jb, PRIVMSG_JOURNAL, "{}", 2);
    else
        job_queue_work(jb, WK_READ_JOURNAL);
}

/* ---- jobs ---- */

static void job_free(struct job *jb)
{
    free(jb->main_buf);
    free(jb->master_buf);
    free(jb->journal_buf);
    free(jb->n_text);
    free(jb->P_text);
    overrides_journal_free(jb->j);
    free(jb->jtext);
    overrides_plan_free(jb->plan);
    overrides_restore_free(jb->restore);
    json_decref(jb->reply);
    free(jb->out);
    free(jb);
}

/* Takes the lock on the Postfix configuration directory before a job that may change it.
 * Returns true when held (or when no lock is possible: the directory could not be opened),
 * false when another process holds it. */
static bool ctl_lock(struct controller *c)
{
    if (c->lock_held || c->lock_fd < 0)
        return true;
    if (flock(c->lock_fd, LOCK_EX | LOCK_NB) == 0) {
        c->lock_held = true;
        return true;
    }
    if (errno != EWOULDBLOCK) {
        log_warn("flock %s: %s; a second postsurge on this Postfix would go unnoticed",
                 c->config_dir, strerror(errno));
        close(c->lock_fd);
        c->lock_fd = -1;
        return true;
    }
    return false;
}

/* Released once nothing of ours is in force: another node may then act on Postfix. */
static void ctl_unlock_if_clean(struct controller *c)
{
    if (c->lock_held && !c->journal && !c->job) {
        flock(c->lock_fd, LOCK_UN);
        c->lock_held = false;
    }
}

static void job_end(struct job *jb)
{
    struct controller *c = jb->c;
    c->job = NULL;
    job_free(jb);
    ctl_unlock_if_clean(c);
    if (c->offline)
        return; /* one job; the private loop then ends */
    if (!c->stopping)
        ctl_reconcile(c);
}

static void job_start(struct controller *c, enum job_kind kind)
{
    struct job *jb = calloc(1, sizeof(*jb));
    if (!jb) {
        log_error("out of memory starting a job");
        return;
    }
    jb->c = c;
    jb->kind = kind;
    jb->t0 = uv_now(c->loop);
    c->job = jb;
    job_step(jb);
}

static json_t *settings_json(const struct overrides_journal *j)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < j->n; i++) {
        const struct overrides_setting *s = &j->settings[i];
        char buf[OVERRIDES_MAX_VALUE + 600];
        if (s->file == OVERRIDES_MAIN)
            snprintf(buf, sizeof(buf), "%s=%s", s->name, s->value);
        else
            snprintf(buf, sizeof(buf), "%s/%s/%s=%s", s->service, s->type, s->name, s->value);
        json_array_append_new(a, json_string(buf));
    }
    return a;
}

static bool plan_log(const struct overrides_plan *p, const char *prefix)
{
    for (size_t i = 0; i < p->n; i++) {
        char *line = NULL;
        if (overrides_cmd_format(&p->cmds[i], &line) == 0) {
            log_info("%s%s", prefix, line);
            free(line);
        }
    }
    return true;
}

/* The apply found nothing to change. Without a journal the wanted state ("overrides in
 * force") and the journal always disagree, so without this flag every job end would start
 * the same apply again: two postconf runs each time, thousands a minute. */
static void ctl_already_in_force(struct controller *c)
{
    c->dry_applied = false;
    c->already_in_force = true;
    ctl_event(c, "overrides-already-in-force", true, NULL,
              "every setting of the profile is already in force in %s (another postsurge, a "
              "run whose journal is gone, or the administrator): nothing applied, nothing will "
              "be restored when stress ends",
              c->config_dir);
}

/* Runs the plan's next command (step 5 again when it ends), or reads the files back
 * (step 6) after the last one. */
static void apply_next(struct job *jb)
{
    if (jb->cmd_idx < jb->plan->n) {
        jb->step = 5;
        job_run(jb, jb->plan->cmds[jb->cmd_idx++].argv, true);
        return;
    }
    jb->step = 6;
    job_queue_work(jb, WK_READ_FILES);
}

/* Steps 0 to 3 of apply and restore, up to their decision: read main.cf and master.cf,
 * postconf -n, postconf -P, each output taken into jb. Nothing here changes Postfix.
 * step: the step being run (0-3); what: "apply" or "restore", for the error. Returns 1
 * when it started the next piece (the caller returns; job_step comes back with step + 1),
 * 0 at step 3 with the snapshot complete, -1 when a piece failed (last_error set). */
static int job_snapshot_step(struct job *jb, int step, const char *what)
{
    switch (step) {
    case 0:
        job_queue_work(jb, WK_READ_FILES);
        return 1;
    case 1:
        if (jb->work_rc < 0) {
            ctl_set_error(jb->c, "%s: %s", what, jb->work_err);
            return -1;
        }
        job_run_postconf(jb, "-n");
        return 1;
    case 2:
        if (jb->failed)
            return -1;
        job_take_out(jb, &jb->n_text, &jb->n_len);
        job_run_postconf(jb, "-P");
        return 1;
    default:
        if (jb->failed)
            return -1;
        job_take_out(jb, &jb->P_text, &jb->P_len);
        return 0;
    }
}

/* Apply: read files, postconf -n, -P, journal (written before anything changes), the
 * plan's commands, read back, journal again with the files as we left them, verify. */
static void job_step_apply(struct job *jb)
{
    struct controller *c = jb->c;
    char err[512];
    int rc;
    int step = jb->step++;
    if (step <= 3 && (rc = job_snapshot_step(jb, step, "apply")) != 0) {
        if (rc < 0)
            goto fail_unchanged;
        return;
    }
    switch (step) {
    case 3:
        rc = overrides_journal_new(c->resolved, c->config_dir, jb->main_buf, jb->main_len,
                                   jb->master_buf, jb->master_len, jb->n_text, jb->n_len,
                                   jb->P_text, jb->P_len, node_wall_ms(), &jb->j);
        if (rc == 0)
            rc = overrides_apply_plan(jb->j, &jb->plan);
        if (rc < 0) {
            ctl_set_error(c, "apply: cannot build the journal: %s", strerror(-rc));
            goto fail_unchanged;
        }
        if (jb->plan->n == 0) {
            ctl_already_in_force(c);
            break;
        }
        if (c->dry_run) {
            plan_log(jb->plan, "dry run: would run: ");
            c->dry_applied = true;
            ctl_event(c, "overrides-dry-run", false,
                      json_pack("{s:o}", "settings", settings_json(jb->j)),
                      "stress_dry_run: %zu commands logged, nothing changed", jb->plan->n);
            break;
        }
        rc = overrides_journal_serialize(jb->j, &jb->jtext, &jb->jtext_len);
        if (rc < 0) {
            ctl_set_error(c, "apply: cannot serialize the journal: %s", strerror(-rc));
            goto fail_unchanged;
        }
        job_queue_work(jb, WK_WRITE_JOURNAL);
        return;
    case 4:
        if (jb->work_rc < 0) {
            ctl_set_error(c, "journal: %s; overrides not applied", jb->work_err);
            ctl_event(c, "journal-error", true, json_pack("{s:s}", "path", c->journal_path),
                      "%s; nothing applied", jb->work_err);
            goto fail_unchanged;
        }
        log_info("journal written: %s (%zu settings, prior state of main.cf %zu bytes, "
                 "master.cf %zu bytes)",
                 c->journal_path, jb->j->n, jb->main_len, jb->master_len);
        ctl_journal_to_store(c, jb->jtext);
        /* From here on Postfix may change: the journal is what undoes it. */
        c->journal = jb->j;
        jb->j = NULL;
        jb->cmd_idx = 0;
        apply_next(jb);
        return;
    case 5: /* a command of the plan finished */
        if (jb->failed) {
            ctl_event(c, "command-failed", true, json_pack("{s:s}", "error", c->last_error),
                      "apply: %s; rolling back", c->last_error);
            goto fail_changed;
        }
        apply_next(jb);
        return;
    case 6:
        if (jb->work_rc < 0) {
            ctl_set_error(c, "apply: %s", jb->work_err);
            goto fail_changed;
        }
        rc = overrides_journal_set_expected(c->journal, jb->main_buf, jb->main_len, jb->master_buf,
                                            jb->master_len);
        free(jb->jtext);
        jb->jtext = NULL;
        if (rc == 0)
            rc = overrides_journal_serialize(c->journal, &jb->jtext, &jb->jtext_len);
        if (rc < 0) {
            ctl_set_error(c, "apply: cannot update the journal: %s", strerror(-rc));
            goto fail_changed;
        }
        job_queue_work(jb, WK_WRITE_JOURNAL);
        return;
    case 7:
        if (jb->work_rc < 0) {
            /* The first journal (without the expected bytes) still undoes everything,
             * setting by setting. */
            log_warn("journal update: %s; the restore will go setting by setting", jb->work_err);
        } else {
            ctl_journal_to_store(c, jb->jtext);
        }
        job_run_postconf(jb, "-n");
        return;
    case 8:
        if (jb->failed)
            goto fail_changed;
        job_take_out(jb, &jb->n_text, &jb->n_len);
        job_run_postconf(jb, "-P");
        return;
    case 9:
        if (jb->failed)
            goto fail_changed;
        job_take_out(jb, &jb->P_text, &jb->P_len);
        if (overrides_verify(c->journal, jb->n_text, jb->n_len, jb->P_text, jb->P_len, err,
                             sizeof(err)) < 0) {
            ctl_set_error(c, "apply: read-back differs: %s", err);
            ctl_event(c, "verify-failed", true, NULL, "overrides read back wrong: %s", err);
            goto fail_changed;
        }
        c->applies++;
        c->last_error[0] = '\0';
        ctl_event(c, "overrides-applied", false,
                  json_pack("{s:o,s:I}", "settings", settings_json(c->journal), "elapsed_ms",
                            (json_int_t)(uv_now(c->loop) - jb->t0)),
                  "%zu settings applied and verified, postfix reloaded, in %" PRIu64 " ms",
                  c->journal->n, uv_now(c->loop) - jb->t0);
        if (c->mon)
            monitor_refresh_limits(c->mon);
        break;
    default:
        break;
    }
    job_end(jb);
    return;
fail_unchanged:
    c->apply_failed = true;
    log_error("overrides not applied: %s", c->last_error);
    job_end(jb);
    return;
fail_changed:
    c->apply_failed = true;
    c->expected_is_current = true;
    log_error("overrides apply failed: %s; restoring from the journal", c->last_error);
    job_end(jb);
}

/* Restore: read files, postconf -n, -P, decide (original bytes or per setting), write the
 * originals, run the per-setting commands and the reload, log conflicts, drop the
 * journal. */
static void job_step_restore(struct job *jb)
{
    struct controller *c = jb->c;
    int rc;
    int step = jb->step++;
    if (step <= 3 && (rc = job_snapshot_step(jb, step, "restore")) != 0) {
        if (rc < 0)
            goto fail;
        return;
    }
    switch (step) {
    case 3:
        if (c->expected_is_current && !c->journal->have_expected) {
            /* Our own apply failed moments ago: nobody else edited in between, so the
             * files as they are now are what postsurge left, and the original bytes
             * can go back exactly. */
            rc = overrides_journal_set_expected(c->journal, jb->main_buf, jb->main_len,
                                                jb->master_buf, jb->master_len);
            if (rc < 0) {
                ctl_set_error(c, "restore: %s", strerror(-rc));
                goto fail;
            }
        }
        c->expected_is_current = false;
        rc = overrides_restore_plan(c->journal, jb->main_buf, jb->main_len, jb->master_buf,
                                    jb->master_len, jb->n_text, jb->n_len, jb->P_text, jb->P_len,
                                    &jb->restore);
        if (rc < 0) {
            ctl_set_error(c, "restore: cannot plan: %s", strerror(-rc));
            goto fail;
        }
        log_info("restore: main.cf %s, master.cf %s, %zu commands, %zu conflicts",
                 jb->restore->write_main ? "gets its original bytes back" : "setting by setting",
                 jb->restore->write_master ? "gets its original bytes back" : "setting by setting",
                 jb->restore->plan.n, jb->restore->n_conflicts);
        if (jb->restore->write_main || jb->restore->write_master) {
            job_queue_work(jb, WK_WRITE_ORIGINALS);
            return;
        }
        jb->work_rc = 0;
        /* fall through */
    case 4:
        if (jb->work_rc < 0) {
            ctl_set_error(c, "restore: %s", jb->work_err);
            goto fail;
        }
        jb->cmd_idx = 0;
        jb->step = 5;
        /* fall through */
    case 5:
        if (jb->failed)
            goto fail;
        if (jb->cmd_idx < jb->restore->plan.n) {
            jb->step = 5;
            job_run(jb, jb->restore->plan.cmds[jb->cmd_idx++].argv, true);
            return;
        }
        for (size_t i = 0; i < jb->restore->n_conflicts; i++) {
            const struct overrides_conflict *k = &jb->restore->conflicts[i];
            c->conflicts++;
            ctl_event(c, "restore-conflict", true,
                      json_pack("{s:s,s:s?,s:s?,s:s?}", "setting", k->setting, "prior", k->prior,
                                "ours", k->ours, "current", k->current),
                      "%s: changed by someone else since stress began (now %s, was %s, "
                      "postsurge set %s): the administrator's value stays (%s)",
                      k->setting, k->current ? k->current : "(not set)",
                      k->prior ? k->prior : "(not set)", k->ours ? k->ours : "?",
                      k->why ? k->why : "");
        }
        jb->step = 6;
        job_queue_work(jb, WK_UNLINK_JOURNAL);
        return;
    case 6:
        if (jb->work_rc < 0)
            log_warn("restore: %s (Postfix is restored; the stale journal will be "
                     "found identical next time)",
                     jb->work_err);
        c->restores++;
        c->last_error[0] = '\0';
        ctl_event(c, "overrides-restored", false,
                  json_pack("{s:o,s:b,s:b,s:I,s:I}", "settings", settings_json(c->journal),
                            "main_cf_bytes_restored", jb->restore->write_main,
                            "master_cf_bytes_restored", jb->restore->write_master, "conflicts",
                            (json_int_t)jb->restore->n_conflicts, "elapsed_ms",
                            (json_int_t)(uv_now(c->loop) - jb->t0)),
                  "%zu settings restored (main.cf %s, master.cf %s), postfix reloaded, "
                  "%zu conflicts, in %" PRIu64 " ms",
                  c->journal->n, jb->restore->write_main ? "byte-exact" : "per setting",
                  jb->restore->write_master ? "byte-exact" : "per setting",
                  jb->restore->n_conflicts, uv_now(c->loop) - jb->t0);
        overrides_journal_free(c->journal);
        c->journal = NULL;
        ctl_journal_to_store(c, NULL);
        c->recovering = false;
        if (c->mon)
            monitor_refresh_limits(c->mon);
        break;
    default:
        break;
    }
    job_end(jb);
    return;
fail:
    ctl_event(c, "restore-failed", true, json_pack("{s:s}", "error", c->last_error),
              "restore failed: %s; the journal stays, retry in %d s", c->last_error,
              RESTORE_RETRY_MS / 1000);
    c->restore_retry_at = uv_now(c->loop) + RESTORE_RETRY_MS;
    if (c->offline)
        c->offline_rc = -EIO;
    job_end(jb);
}

/* Apply through the helper: it re-validates the profile, journals (as root), runs the
 * commands, reads back and verifies; we keep the settings it reports. */
static void job_step_apply_helper(struct job *jb)
{
    struct controller *c = jb->c;
    switch (jb->step++) {
    case 0: {
        char *req = NULL;
        size_t len = 0;
        if (privmsg_apply_encode(c->profile_main, c->profile_master, node_wall_ms(), &req, &len) <
            0) {
            ctl_set_error(c, "apply: out of memory");
            c->apply_failed = true;
            job_end(jb);
            return;
        }
        job_helper(jb, PRIVMSG_APPLY, req, len);
        free(req);
        return;
    }
    default:
        break;
    }
    reply_count(c, jb);
    const char *fail = json_string_value(json_object_get(jb->reply, "fail"));
    fail = fail ? fail : "";
    if (jb->reply && json_is_true(json_object_get(jb->reply, "journaled"))) {
        overrides_journal_free(c->journal);
        c->journal = reply_journal(c, jb);
        const char *jt = json_string_value(json_object_get(jb->reply, "journal_text"));
        if (jt)
            ctl_journal_to_store(c, jt);
        else
            log_warn("the privileged helper's journal is too large for its reply: no copy of "
                     "it in the store (%s is what restores)",
                     c->journal_path);
    }
    if (reply_ok(jb) && json_is_true(json_object_get(jb->reply, "nothing"))) {
        ctl_already_in_force(c);
    } else if (reply_ok(jb)) {
        c->applies++;
        c->last_error[0] = '\0';
        json_int_t ms = json_integer_value(json_object_get(jb->reply, "elapsed_ms"));
        size_t n = c->journal ? c->journal->n : 0;
        ctl_event(c, "overrides-applied", false,
                  json_pack("{s:o,s:I}", "settings",
                            c->journal ? settings_json(c->journal) : json_array(), "elapsed_ms",
                            ms),
                  "%zu settings applied and verified, postfix reloaded, in %" PRId64 " ms", n,
                  (int64_t)ms);
        if (c->mon)
            monitor_refresh_limits(c->mon);
    } else {
        c->apply_failed = true;
        ctl_set_error(c, "%s%s", strcmp(fail, "journal") == 0 ? "" : "apply: ", reply_error(jb));
        if (strcmp(fail, "journal") == 0)
            ctl_event(c, "journal-error", true, json_pack("{s:s}", "path", c->journal_path), "%s",
                      c->last_error);
        else if (strcmp(fail, "rejected") == 0)
            ctl_event(c, "overrides-rejected", true, NULL,
                      "the privileged helper rejected the profile: %s", c->last_error);
        else if (strcmp(fail, "verify") == 0)
            ctl_event(c, "verify-failed", true, NULL, "overrides read back wrong: %s",
                      c->last_error);
        else if (strcmp(fail, "command") == 0)
            ctl_event(c, "command-failed", true, json_pack("{s:s}", "error", c->last_error),
                      "apply: %s; rolling back", c->last_error);
        if (c->journal)
            log_error("overrides apply failed: %s; restoring from the journal", c->last_error);
        else
            log_error("overrides not applied: %s", c->last_error);
    }
    job_end(jb);
}

/* Restore through the helper (it reads its own journal, never ours). */
static void job_step_restore_helper(struct job *jb)
{
    struct controller *c = jb->c;
    if (jb->step++ == 0) {
        job_helper(jb, PRIVMSG_RESTORE, "{}", 2);
        return;
    }
    reply_count(c, jb);
    if (!reply_ok(jb)) {
        ctl_set_error(c, "restore: %s", reply_error(jb));
        ctl_event(c, "restore-failed", true, json_pack("{s:s}", "error", c->last_error),
                  "restore failed: %s; the journal stays, retry in %d s", c->last_error,
                  RESTORE_RETRY_MS / 1000);
        c->restore_retry_at = uv_now(c->loop) + RESTORE_RETRY_MS;
        job_end(jb);
        return;
    }
    if (json_is_true(json_object_get(jb->reply, "nothing"))) {
        log_info("restore: the privileged helper holds no journal; nothing to undo");
    } else {
        json_t *cf = json_object_get(jb->reply, "conflicts");
        size_t i;
        json_t *k;
        json_array_foreach(cf, i, k)
        {
            const char *setting = json_string_value(json_object_get(k, "setting"));
            const char *cur = json_string_value(json_object_get(k, "current"));
            const char *prior = json_string_value(json_object_get(k, "prior"));
            const char *ours = json_string_value(json_object_get(k, "ours"));
            const char *why = json_string_value(json_object_get(k, "why"));
            c->conflicts++;
            ctl_event(c, "restore-conflict", true, json_deep_copy(k),
                      "%s: changed by someone else since stress began (now %s, was %s, "
                      "postsurge set %s): the administrator's value stays (%s)",
                      setting ? setting : "?", cur ? cur : "(not set)", prior ? prior : "(not set)",
                      ours ? ours : "?", why ? why : "");
        }
        bool wm = json_is_true(json_object_get(jb->reply, "write_main"));
        bool ws = json_is_true(json_object_get(jb->reply, "write_master"));
        struct overrides_journal *j = reply_journal(c, jb);
        size_t n = j ? j->n : (c->journal ? c->journal->n : 0);
        json_int_t ms = json_integer_value(json_object_get(jb->reply, "elapsed_ms"));
        c->restores++;
        ctl_event(c, "overrides-restored", false,
                  json_pack("{s:o,s:b,s:b,s:I,s:I}", "settings",
                            j ? settings_json(j) : json_array(), "main_cf_bytes_restored", wm,
                            "master_cf_bytes_restored", ws, "conflicts",
                            (json_int_t)json_array_size(cf), "elapsed_ms", ms),
                  "%zu settings restored (main.cf %s, master.cf %s), postfix reloaded, "
                  "%zu conflicts, in %" PRId64 " ms",
                  n, wm ? "byte-exact" : "per setting", ws ? "byte-exact" : "per setting",
                  json_array_size(cf), (int64_t)ms);
        overrides_journal_free(j);
    }
    c->last_error[0] = '\0';
    overrides_journal_free(c->journal);
    c->journal = NULL;
    ctl_journal_to_store(c, NULL);
    c->recovering = false;
    if (c->mon)
        monitor_refresh_limits(c->mon);
    job_end(jb);
}

/* The profile specs checked against the parameter names and services read at start
 * (c->known, c->svcs): *out is the resolved profile. 0, or <0 with err set. */
static int ctl_resolve_profile(const struct controller *c, const char *main_spec,
                               const char *master_spec, struct overrides_profile **out, char *err,
                               size_t errlen)
{
    struct overrides_profile *p = NULL;
    int rc = overrides_profile_parse(main_spec, master_spec, &p, err, errlen);
    if (rc == 0)
        rc = overrides_profile_resolve(p, c->known, c->svcs, out, err, errlen);
    overrides_profile_free(p);
    return rc;
}

/* Init: postconf -d (parameter names) and -F (services), resolve the profile, then look
 * for a journal a crash left. */
static void job_step_init(struct job *jb)
{
    struct controller *c = jb->c;
    char err[512];
    switch (jb->step++) {
    case 0:
        job_run_postconf(jb, "-d");
        return;
    case 1:
        if (jb->failed) {
            if (c->postfix_absent)
                log_warn("%s not found: Postfix seems absent; stress overrides are off, the "
                         "policy service runs on",
                         c->postconf);
            snprintf(c->profile_error, sizeof(c->profile_error), "postconf -d: %.450s",
                     c->last_error);
            jb->step = 3;
            jb->failed = false;
            job_read_journal(jb);
            return;
        }
        overrides_params_free(c->known);
        c->known = NULL;
        if (overrides_known_params_parse(jb->out, jb->out_len, &c->known) < 0) {
            snprintf(c->profile_error, sizeof(c->profile_error),
                     "postconf -d gave no parameter names");
            jb->step = 3;
            job_read_journal(jb);
            return;
        }
        job_run_postconf(jb, "-F");
        return;
    case 2: {
        if (jb->failed) {
            snprintf(c->profile_error, sizeof(c->profile_error), "postconf -F: %.450s",
                     c->last_error);
            jb->failed = false;
            job_read_journal(jb);
            return;
        }
        overrides_services_free(c->svcs);
        c->svcs = NULL;
        int rc = overrides_services_parse(jb->out, jb->out_len, &c->svcs);
        if (rc < 0) {
            snprintf(c->profile_error, sizeof(c->profile_error), "postconf -F: no services");
        } else if ((rc = ctl_resolve_profile(c, c->profile_main, c->profile_master, &c->resolved,
                                             err, sizeof(err))) < 0) {
            snprintf(c->profile_error, sizeof(c->profile_error), "override profile: %.450s", err);
        } else {
            c->profile_ready = true;
            c->profile_error[0] = '\0';
            c->last_error[0] = '\0';
            log_info("override profile: %zu settings for %s (validated against postconf -d, "
                     "%zu parameters)",
                     c->resolved->n, c->config_dir, overrides_known_params_count(c->known));
        }
        if (!c->profile_ready)
            log_error("%s; stress overrides are off", c->profile_error);
        job_read_journal(jb);
        return;
    }
    case 3:
        if (c->ps) {
            json_t *settings = json_object_get(jb->reply, "settings");
            if (!reply_ok(jb)) {
                c->journal_bad = true;
                ctl_set_error(c, "journal: %s", reply_error(jb));
                ctl_event(c, "journal-error", true, json_pack("{s:s}", "path", c->journal_path),
                          "%s; nothing is changed until an administrator checks it", c->last_error);
            } else if (json_is_true(json_object_get(jb->reply, "found")) && settings) {
                c->journal = reply_journal(c, jb);
                if (c->journal) {
                    c->recovering = true;
                    ctl_event(c, "journal-found", true, json_pack("{s:s}", "path", c->journal_path),
                              "a journal from an earlier run holds %zu settings; restoring it "
                              "unless this node is in stress",
                              c->journal->n);
                }
            }
            c->init_done = true;
            break;
        }
        if (jb->work_rc < 0) {
            c->journal_bad = true;
            ctl_set_error(c, "journal: %s", jb->work_err);
            log_error("%s; overrides are off until it can be read", c->last_error);
        } else if (jb->journal_found) {
            struct overrides_journal *j = NULL;
            if (overrides_journal_parse(jb->journal_buf, jb->journal_len, &j, err, sizeof(err)) <
                0) {
                c->journal_bad = true;
                ctl_set_error(c, "journal %s is corrupt: %s", c->journal_path, err);
                ctl_event(c, "journal-error", true, json_pack("{s:s}", "path", c->journal_path),
                          "%s; nothing is changed until an administrator checks it", c->last_error);
            } else if (strcmp(j->config_dir, c->config_dir) != 0) {
                c->journal_bad = true;
                ctl_set_error(c, "journal %s is for %s, not %s", c->journal_path, j->config_dir,
                              c->config_dir);
                log_error("%s; nothing is changed", c->last_error);
                overrides_journal_free(j);
            } else {
                c->journal = j;
                c->recovering = true;
                ctl_event(c, "journal-found", true, json_pack("{s:s}", "path", c->journal_path),
                          "a journal from an earlier run holds %zu settings; restoring it "
                          "unless this node is in stress",
                          j->n);
            }
        }
        c->init_done = true;
        break;
    default:
        break;
    }
    job_end(jb);
}

static void job_step(struct job *jb)
{
    if (jb->c->stopping && jb->kind == JOB_INIT) {
        jb->c->job = NULL;
        job_free(jb);
        return;
    }
    switch (jb->kind) {
    case JOB_INIT:
        job_step_init(jb);
        break;
    case JOB_APPLY:
        if (jb->c->ps && !jb->c->dry_run)
            job_step_apply_helper(jb);
        else
            job_step_apply(jb);
        break;
    case JOB_RESTORE:
        if (jb->c->ps)
            job_step_restore_helper(jb);
        else
            job_step_restore(jb);
        break;
    }
}

/* Starts the next job when the wanted state and the journal disagree. */
static void ctl_take_pending_profile(struct controller *c);

static void ctl_reconcile(struct controller *c)
{
    if (c->job || !c->init_done || c->journal_bad)
        return;
    ctl_take_pending_profile(c);
    if (c->stopping && !c->journal)
        return;
    bool stressed = c->sm && stress_state_get(c->sm) == STRESS_STRESSED;
    if (c->recovering && c->journal) {
        /* Decided in on_sample once a sample is in; without a monitor, restore now. */
        if (c->mon && !c->have_result)
            return;
    }
    if (c->ps && !c->unavailable && !privsep_alive(c->ps)) {
        c->unavailable = true;
        snprintf(c->unavailable_why, sizeof(c->unavailable_why), "the privileged helper exited");
        ctl_event(c, "overrides-unavailable", true, NULL,
                  "the privileged helper exited: overrides cannot be applied or restored "
                  "until serve restarts");
    }
    if (c->unavailable)
        return; /* no way to change Postfix: nothing to reconcile */
    bool want = stressed && c->overrides_on && c->profile_ready && !c->apply_failed &&
                !c->unavailable && !c->already_in_force;
    if (c->stopping)
        return; /* overrides stay in force across a restart; the journal says how */
    if (want && !c->journal && !c->dry_applied) {
        if (!c->dry_run && !ctl_lock(c)) {
            /* Two daemons on one Postfix would journal each other's overrides as the
             * prior state and never restore the original. Refused for this episode. */
            c->apply_failed = true;
            ctl_set_error(c,
                          "another process (a second postsurge?) holds the lock on %s: "
                          "overrides not applied",
                          c->config_dir);
            ctl_event(c, "overrides-refused", true, json_pack("{s:s}", "path", c->config_dir), "%s",
                      c->last_error);
            return;
        }
        job_start(c, JOB_APPLY);
    } else if (!want && c->journal) {
        if (c->restore_retry_at && uv_now(c->loop) < c->restore_retry_at)
            return;
        c->restore_retry_at = 0;
        if (!c->dry_run && !ctl_lock(c)) {
            c->restore_retry_at = uv_now(c->loop) + RESTORE_RETRY_MS;
            ctl_set_error(c,
                          "another process (a second postsurge?) holds the lock on %s: "
                          "restore postponed",
                          c->config_dir);
            ctl_event(c, "restore-failed", true, json_pack("{s:s}", "error", c->last_error),
                      "%s; retry in %d s", c->last_error, RESTORE_RETRY_MS / 1000);
            return;
        }
        job_start(c, JOB_RESTORE);
    } else if (!stressed && c->dry_applied) {
        log_info("dry run: would restore the journal's prior state and reload postfix");
        ctl_event(c, "overrides-dry-run", false, NULL,
                  "stress_dry_run: restore logged, nothing changed");
        c->dry_applied = false;
    }
}

/* ---- stress transitions ---- */

static void ctl_on_transition(struct controller *c, const struct stress_result *r)
{
    if (r->event == STRESS_EVENT_ENTER) {
        c->apply_failed = false;
        c->already_in_force = false;
        if (engine_set_node_stressed)
            engine_set_node_stressed(true);
        ctl_event(c, "stress-enter", true,
                  json_pack("{s:I,s:s,s:b}", "saturation", (json_int_t)r->saturation, "busiest",
                            r->busiest, "forced", r->event_forced),
                  "%s", r->reason);
    } else if (r->event == STRESS_EVENT_EXIT) {
        if (engine_set_node_stressed)
            engine_set_node_stressed(false);
        /* Leaving stress is logged, not alerted. */
        ctl_event(c, "stress-exit", false,
                  json_pack("{s:I,s:b}", "saturation", (json_int_t)r->saturation, "forced",
                            r->event_forced),
                  "%s", r->reason);
        c->apply_failed = false;
        c->already_in_force = false;
    } else if (r->event == STRESS_EVENT_BLOCKED) {
        log_debug("transition held back by stress_min_interval: %s", r->reason);
    }
}

static json_t *ctl_status_json(struct controller *c)
{
    json_t *svcs = json_array();
    const struct monitor_sample *s = c->have_sample ? c->sample : NULL;
    for (size_t i = 0; s && i < s->n_services; i++) {
        const struct monitor_service *v = &s->services[i];
        struct stress_service_sample ss = {
            .busy = v->busy, .limit = v->limit, .waiting = v->waiting};
        json_array_append_new(svcs, json_pack("{s:s,s:i,s:i,s:i,s:i,s:i}", "name", v->name, "busy",
                                              (int)v->busy, "alive", (int)v->alive, "limit",
                                              (int)v->limit, "waiting", (int)v->waiting,
                                              "saturation", (int)stress_service_saturation(&ss)));
    }
    bool stressed = c->sm && stress_state_get(c->sm) == STRESS_STRESSED;
    int64_t since = 0;
    if (c->have_result)
        since = node_wall_ms() - (int64_t)(uv_now(c->loop) - (uint64_t)c->last.since_ms);
    const char *ov = "none";
    if (c->job && c->job->kind == JOB_APPLY)
        ov = "applying";
    else if (c->job && c->job->kind == JOB_RESTORE)
        ov = "restoring";
    else if (c->journal)
        ov = (c->apply_failed || !stressed) ? "pending-restore" : "applied";
    else if (c->dry_applied)
        ov = "dry-run";
    else if (c->already_in_force && stressed)
        ov = "already-in-force";
    json_t *o = json_pack(
        "{s:s,s:b,s:s,s:I,s:b,s:b,s:i,s:s,s:o,s:o,s:s,s:b,s:b,s:b,s:b,s:s,s:s,s:{s:I,s:I,s:I,s:I,"
        "s:I},s:I}",
        "name", c->node ? node_name(c->node) : "", "stress", stressed, "state",
        stress_state_name(c->sm ? stress_state_get(c->sm) : STRESS_NORMAL), "since",
        (json_int_t)since, "local_stress",
        c->have_result && (c->last.local_stress || c->last.forced), "forced",
        c->have_result && c->last.forced, "saturation",
        c->have_result ? (int)c->last.saturation : 0, "busiest",
        c->have_result ? c->last.busiest : "", "services", svcs, "overrides",
        c->journal ? settings_json(c->journal) : json_array(), "overrides_state", ov, "dry_run",
        c->dry_run, "journal", c->journal != NULL, "master_running", s && s->master_running,
        "qmgr_running", s && s->qmgr_running, "error", c->last_error, "profile_error",
        c->profile_error, "commands", "run", (json_int_t)c->commands_run, "failed",
        (json_int_t)c->command_failures, "applies", (json_int_t)c->applies, "restores",
        (json_int_t)c->restores, "conflicts", (json_int_t)c->conflicts, "attack_answers",
        (json_int_t)c->attack_answers);
    if (o) {
        bool avail = !c->unavailable && (!c->ps || privsep_alive(c->ps));
        json_object_set_new(o, "overrides_available", json_boolean(avail));
        json_object_set_new(o, "journal_in_store",
                            json_boolean(c->node && node_journal_in_store(c->node)));
        json_object_set_new(o, "overrides_unavailable_reason",
                            json_string(avail ? "" : c->unavailable_why));
        json_object_set_new(o, "privileges", json_string(privsep_mode_name(privsep_mode())));
    }
    if (o && c->node)
        json_object_set_new(o, "flagged_clients",
                            json_integer((json_int_t)node_flagged_count(c->node)));
    return o;
}

static void ctl_on_sample(struct monitor *m, const struct monitor_sample *s, void *arg)
{
    struct controller *c = arg;
    (void)m;
    if (c->stopping)
        return;
    *c->sample = *s;
    c->have_sample = true;
    struct stress_service_sample ss[MONITOR_MAX_SERVICES];
    struct stress_sample st;
    monitor_sample_to_stress(s, ss, MONITOR_MAX_SERVICES, &st);
    st.now_ms = (int64_t)uv_now(c->loop);
    if (c->node && c->params.cluster_quorum > 0)
        st.cluster_stressed_pct = node_cluster_stressed_pct(
            c->node, c->have_result && (c->last.local_stress || c->last.forced));
    struct stress_result r;
    if (stress_update(c->sm, &st, &r) < 0)
        return;
    bool first = !c->have_result;
    c->last = r;
    c->have_result = true;
    if (c->recovering && c->journal && first) {
        if (r.local_stress) {
            /* In stress at start: keep the overrides the journal describes, and leave
             * stress (and restore) the normal way. */
            struct stress_result fr;
            stress_force(c->sm, STRESS_FORCE_ENTER, st.now_ms, &fr);
            stress_force(c->sm, STRESS_FORCE_AUTO, st.now_ms, &fr);
            c->last = fr;
            c->recovering = false;
            if (engine_set_node_stressed)
                engine_set_node_stressed(true);
            ctl_event(c, "journal-adopted", true, NULL,
                      "node is in stress at start: the journal's overrides stay in force");
        } else {
            c->recovering = false;
        }
    }
    ctl_on_transition(c, &r);
    if (c->node) {
        json_t *j = ctl_status_json(c);
        if (j) {
            node_publish(c->node, j);
            json_decref(j);
        }
    }
    ctl_reconcile(c);
}

static void ctl_on_log(struct monitor *m, const struct maillog_record *rec, void *arg)
{
    struct controller *c = arg;
    (void)m;
    if (c->node && !c->stopping)
        node_on_log(c->node, rec);
}

/* ---- attack decider ---- */

static int ctl_decide(struct decider *d, struct decision *dec)
{
    struct controller *c = d->data;
    if (c->sm && stress_state_get(c->sm) == STRESS_STRESSED) {
        const char *addr = dec->req->attr[POLICY_CLIENT_ADDRESS];
        if (addr && node_client_flagged(addr)) {
            c->attack_answers++;
            dec->done(dec, c->attack_action, strlen(c->attack_action));
            return 0;
        }
    }
    return c->inner->start(c->inner, dec);
}

static void ctl_decide_cancel(struct decider *d, struct decision *dec)
{
    struct controller *c = d->data;
    if (c->inner->cancel)
        c->inner->cancel(c->inner, dec);
}

/* ---- control socket ---- */

static void client_on_close(uv_handle_t *h)
{
    struct ctl_client *cl = h->data;
    struct controller *c = cl->c;
    for (struct ctl_client **p = &c->clients; *p; p = &(*p)->next)
        if (*p == cl) {
            *p = cl->next;
            break;
        }
    c->n_clients--;
    free(cl);
}

static void client_close(struct ctl_client *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    uv_close((uv_handle_t *)&cl->h, client_on_close);
}

struct ctl_write {
    uv_write_t w;
    struct ctl_client *cl;
    char *data;
};

static void client_on_write(uv_write_t *w, int status)
{
    struct ctl_write *cw = (struct ctl_write *)w;
    (void)status;
    client_close(cw->cl);
    free(cw->data);
    free(cw);
}

/* Sends o (stolen) as the answer and closes. */
static void client_reply(struct ctl_client *cl, json_t *o)
{
    cl->answered = true;
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (cl->closing || !s) {
        free(s);
        client_close(cl);
        return;
    }
    size_t l = strlen(s);
    s[l] = '\n';
    struct ctl_write *cw = calloc(1, sizeof(*cw));
    if (!cw) {
        free(s);
        client_close(cl);
        return;
    }
    cw->cl = cl;
    cw->data = s;
    uv_buf_t b = uv_buf_init(s, (unsigned)l + 1);
    if (uv_write(&cw->w, (uv_stream_t *)&cl->h, &b, 1, client_on_write) < 0) {
        free(s);
        free(cw);
        client_close(cl);
    }
}

/* The store's state for status: the rate limits' counter store (the node's own store when
 * no engine runs), as {"state", "reason", "since", "repaired"}; see struct store_stats.
 * "connecting" before Redis first answered. NULL on ENOMEM or without either store. */
static json_t *ctl_store_state(struct controller *c)
{
    struct store_stats st;
    if (!engine_counters_stats || engine_counters_stats(&st) < 0) {
        if (!c->node)
            return NULL;
        node_store_stats(c->node, &st);
    }
    if (strcmp(c->node ? node_store_kind(c->node) : "", "memory") == 0)
        snprintf(st.state, sizeof(st.state), "ok");
    return json_pack("{s:s,s:s,s:I,s:I}", "state", st.state[0] ? st.state : "connecting", "reason",
                     st.reason, "since", (json_int_t)st.state_since_ms, "repaired",
                     (json_int_t)st.repaired);
}

static json_t *ctl_cluster_json(struct controller *c)
{
    json_t *self = ctl_status_json(c);
    json_t *nodes = json_array();
    json_array_append(nodes, self);
    if (c->node) {
        json_t *cl = node_cluster(c->node);
        for (size_t i = 1; i < json_array_size(cl); i++)
            json_array_append(nodes, json_array_get(cl, i));
    }
    /* Imbalance: one node stressed while its peers are idle points at MX or load
     * balancer weights, not at a cluster too small. */
    size_t n = json_array_size(nodes), stressed = 0;
    for (size_t i = 0; i < n; i++)
        if (json_is_true(json_object_get(json_array_get(nodes, i), "stress")))
            stressed++;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        json_t *nd = json_array_get(nodes, i);
        bool flag = false;
        if (n >= 2 && json_is_true(json_object_get(nd, "stress"))) {
            flag = true;
            for (size_t k = 0; k < n; k++) {
                json_t *p = json_array_get(nodes, k);
                if (k != i && (json_is_true(json_object_get(p, "stress")) ||
                               json_integer_value(json_object_get(p, "saturation")) >=
                                   (json_int_t)c->params.exit_threshold))
                    flag = false;
            }
        }
        any |= flag;
        /* A copy: the peers' objects are shared with the node's view. */
        json_t *cp = json_copy(nd);
        json_object_set_new(cp, "imbalance", json_boolean(flag));
        json_array_set_new(nodes, i, cp);
    }
    json_t *o = json_pack("{s:s,s:o,s:b,s:i,s:s}", "node", c->node ? node_name(c->node) : "",
                          "nodes", nodes, "imbalance", any, "stressed_nodes", (int)stressed,
                          "store", c->node ? node_store_kind(c->node) : "");
    json_t *ss = ctl_store_state(c);
    if (ss)
        json_object_set_new(o, "store_state", ss);
    if (any)
        json_object_set_new(o, "advice",
                            json_string("one node is stressed while its peers are idle: check "
                                        "the MX preferences and load-balancer weights"));
    json_decref(self);
    return o;
}

static void client_on_events(void *arg, int status, json_t *events)
{
    struct ctl_client *cl = arg;
    if (status < 0)
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", strerror(-status)));
    else
        client_reply(cl, json_pack("{s:b,s:O}", "ok", 1, "events", events));
}

static void ctl_force(struct controller *c, enum stress_force f, struct ctl_client *cl)
{
    struct stress_result r;
    if (stress_force(c->sm, f, (int64_t)uv_now(c->loop), &r) < 0) {
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "invalid"));
        return;
    }
    if (r.event != STRESS_EVENT_NONE) {
        r.saturation = c->have_result ? c->last.saturation : 0;
        ctl_on_transition(c, &r);
    }
    c->last.forced = r.forced;
    if (c->have_result) {
        c->last.state = r.state;
        c->last.since_ms = r.since_ms;
    }
    ctl_reconcile(c);
    client_reply(cl, json_pack("{s:b,s:s,s:s}", "ok", 1, "state", stress_state_name(r.state),
                               "event", stress_event_name(r.event)));
}

static void client_command(struct ctl_client *cl, char *line)
{
    struct controller *c = cl->c;
    char *save = NULL;
    char *w1 = strtok_r(line, " \t", &save);
    char *w2 = strtok_r(NULL, " \t", &save);
    char *w3 = strtok_r(NULL, " \t", &save);
    if (!w1) {
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "empty command"));
    } else if (strcmp(w1, "status") == 0) {
        json_t *o = ctl_cluster_json(c);
        json_object_set_new(o, "ok", json_true());
        client_reply(cl, o);
    } else if (strcmp(w1, "events") == 0) {
        int64_t since = w2 ? strtoll(w2, NULL, 10) : 0;
        size_t max = w3 ? (size_t)strtoull(w3, NULL, 10) : 1000;
        if (!c->node ||
            node_events_read(c->node, since, max ? max : 1000, client_on_events, cl) < 0)
            client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "event log unavailable"));
    } else if (strcmp(w1, "stress") == 0 && w2 && strcmp(w2, "enter") == 0) {
        log_info("control: stress enter requested");
        ctl_force(c, STRESS_FORCE_ENTER, cl);
    } else if (strcmp(w1, "stress") == 0 && w2 && strcmp(w2, "exit") == 0) {
        log_info("control: stress exit requested");
        ctl_force(c, STRESS_FORCE_EXIT, cl);
    } else if (strcmp(w1, "stress") == 0 && w2 && strcmp(w2, "auto") == 0) {
        ctl_force(c, STRESS_FORCE_AUTO, cl);
    } else if (strcmp(w1, "restore") == 0) {
        log_info("control: restore requested");
        c->restore_retry_at = 0;
        if (stress_state_get(c->sm) == STRESS_STRESSED) {
            ctl_force(c, STRESS_FORCE_EXIT, cl);
            return;
        }
        ctl_reconcile(c);
        client_reply(cl, json_pack("{s:b,s:b}", "ok", 1, "journal", c->journal != NULL));
    } else {
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "unknown command"));
    }
}

static void client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct ctl_client *cl = h->data;
    (void)hint;
    *buf = uv_buf_init(cl->buf + cl->len, (unsigned)(sizeof(cl->buf) - 1 - cl->len));
}

static void client_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ctl_client *cl = s->data;
    (void)buf;
    if (cl->answered || cl->closing)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && cl->len > 0) {
            uv_read_stop(s);
            cl->buf[cl->len] = '\0';
            client_command(cl, cl->buf);
        } else {
            client_close(cl);
        }
        return;
    }
    cl->len += (size_t)nread;
    char *nl = memchr(cl->buf, '\n', cl->len);
    if (nl) {
        *nl = '\0';
        uv_read_stop(s);
        client_command(cl, cl->buf);
    } else if (cl->len >= sizeof(cl->buf) - 1) {
        client_close(cl);
    }
}

static void ctl_on_connection(uv_stream_t *server, int status)
{
    struct controller *c = server->data;
    if (status < 0)
        return;
    struct ctl_client *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return;
    cl->c = c;
    uv_pipe_init(c->loop, &cl->h, 0);
    cl->h.data = cl;
    cl->next = c->clients;
    c->clients = cl;
    c->n_clients++;
    if (uv_accept(server, (uv_stream_t *)&cl->h) < 0 || c->n_clients > CTL_MAX_CLIENTS ||
        c->stopping) {
        client_close(cl);
        return;
    }
    uv_read_start((uv_stream_t *)&cl->h, client_alloc, client_on_read);
}

/* True when another process answers on the socket (a second daemon on this state dir). */
static bool socket_in_use(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path))
        return false;
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool used = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return used;
}

static int ctl_open_socket(struct controller *c)
{
    /* Start-up: a blocking connect to a local socket is immediate. */
    if (socket_in_use(c->socket_path)) {
        log_error("%s: another postsurge answers there; control socket not opened", c->socket_path);
        return -EADDRINUSE;
    }
    unlink(c->socket_path);
    int rc = uv_pipe_init(c->loop, &c->ctl, 0);
    if (rc < 0)
        return rc;
    c->ctl.data = c;
    c->ctl_open = true;
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&c->ctl, c->socket_path);
    umask(old);
    if (rc == 0)
        rc = chmod(c->socket_path, 0600) < 0 ? -errno : 0;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&c->ctl, 8, ctl_on_connection);
    if (rc < 0)
        log_error("control socket %s: %s", c->socket_path, uv_strerror(rc));
    return rc;
}

/* ---- life cycle ---- */

static void ctl_part_closed(struct controller *c)
{
    (void)c;
}

static void ctl_on_mon_closed(void *arg)
{
    struct controller *c = arg;
    c->mon = NULL;
    ctl_part_closed(c);
}

static void ctl_on_node_closed(void *arg)
{
    struct controller *c = arg;
    c->node = NULL;
    ctl_part_closed(c);
}

static void ctl_on_ctl_closed(uv_handle_t *h)
{
    (void)h;
}

static void ctl_on_stop(struct server *srv, void *arg)
{
    struct controller *c = arg;
    (void)srv;
    if (c->stopping)
        return;
    c->stopping = true;
    if (c->srv && c->srv->decider == &c->decider)
        server_set_decider(c->srv, c->inner);
    if (c->job && c->job->sp)
        spawn_cancel(c->job->sp);
    /* A request in flight is cancelled here (the helper finishes it on its own; the
     * journal on disk says what to undo at the next start). */
    privsep_close(c->ps);
    c->ps = NULL;
    if (c->journal)
        log_info("stopping with overrides in force: %s keeps their prior state; the next "
                 "start restores it unless the node is in stress",
                 c->journal_path);
    for (struct ctl_client *cl = c->clients; cl; cl = cl->next)
        client_close(cl);
    if (c->ctl_open) {
        uv_close((uv_handle_t *)&c->ctl, ctl_on_ctl_closed);
        unlink(c->socket_path);
        c->ctl_open = false;
    }
    if (c->mon)
        monitor_close(c->mon, ctl_on_mon_closed, c);
    if (c->node)
        node_close(c->node, ctl_on_node_closed, c);
}

/* Field by field: memcmp would read the struct's padding, which nothing initialises. */
static bool stress_params_equal(const struct stress_params *a, const struct stress_params *b)
{
    return a->enter_threshold == b->enter_threshold && a->enter_delay_ms == b->enter_delay_ms &&
           a->exit_threshold == b->exit_threshold && a->exit_delay_ms == b->exit_delay_ms &&
           a->min_interval_ms == b->min_interval_ms && a->cluster_quorum == b->cluster_quorum;
}

static void ctl_drop_pending_profile(struct controller *c)
{
    free(c->pending_main);
    free(c->pending_master);
    c->pending_main = c->pending_master = NULL;
}

/* A profile from SIGHUP (stress_main_cf/stress_master_cf) is taken when nothing is
 * changing Postfix and no overrides are in force: at once, after the start-up job, or
 * after the restore that ends an episode, so a restore always undoes exactly what was
 * applied. It is checked against the parameter names and services read at start
 * (postconf -d/-F; the helper checks again against its own at each apply); an invalid
 * one is logged and the previous profile stays. Called from ctl_reconcile. */
static void ctl_take_pending_profile(struct controller *c)
{
    if (!c->pending_main || !c->init_done || c->job || c->journal || c->dry_applied)
        return;
    char *m = c->pending_main, *ms = c->pending_master;
    c->pending_main = c->pending_master = NULL;
    if (!c->known || !c->svcs) {
        log_warn("reload: the override profile takes effect at the next restart (Postfix's "
                 "parameters and services could not be read at start)");
        free(m);
        free(ms);
        return;
    }
    char err[512] = "";
    struct overrides_profile *r = NULL;
    if (ctl_resolve_profile(c, m, ms, &r, err, sizeof(err)) < 0) {
        log_error("reload: override profile: %s; the previous profile stays in force", err);
        free(m);
        free(ms);
        return;
    }
    free(c->profile_main);
    c->profile_main = m;
    free(c->profile_master);
    c->profile_master = ms;
    overrides_profile_free(c->resolved);
    c->resolved = r;
    c->profile_ready = true;
    c->profile_error[0] = '\0';
    log_info("reload: override profile: %zu settings for %s", r->n, c->config_dir);
}

static void ctl_set_pending_profile(struct controller *c, const char *main_spec,
                                    const char *master_spec)
{
    ctl_drop_pending_profile(c);
    if (strcmp(main_spec, c->profile_main) == 0 && strcmp(master_spec, c->profile_master) == 0)
        return; /* unchanged, or changed back before an earlier change was taken */
    c->pending_main = strdup(main_spec);
    c->pending_master = strdup(master_spec);
    if (!c->pending_main || !c->pending_master) {
        ctl_drop_pending_profile(c);
        log_error("reload: no memory for the override profile; the previous one stays");
        return;
    }
    if (c->journal || c->dry_applied)
        log_info("reload: overrides are in force; the new override profile is taken once "
                 "they are restored");
}

static void ctl_on_reload(struct server *srv, const struct config *old, void *arg)
{
    struct controller *c = arg;
    const struct config *cfg = srv->cfg;
    (void)old;
    if (c->node)
        node_reload(c->node, cfg);
    c->dry_run = cfg->stress_dry_run;
    c->overrides_on = cfg->stress_overrides;
    c->cmd_timeout_ms = (uint64_t)cfg->command_timeout;
    char *a = strdup(cfg->attack_action);
    if (a) {
        free(c->attack_action);
        c->attack_action = a;
    }
    struct stress_params p;
    stress_params_from_config(cfg, &p);
    if (!stress_params_equal(&p, &c->params)) {
        if (c->sm && stress_set_params(c->sm, &p) < 0) {
            log_error("reload: stress_* thresholds rejected by the state machine; the old "
                      "ones stay in force");
        } else {
            c->params = p;
            log_info("reload: stress thresholds now enter %u%% for %.1fs, exit %u%% for %.1fs, "
                     "min_interval %.1fs, cluster_quorum %u%% (running delays count again "
                     "from now)",
                     p.enter_threshold, (double)p.enter_delay_ms / 1000.0, p.exit_threshold,
                     (double)p.exit_delay_ms / 1000.0, (double)p.min_interval_ms / 1000.0,
                     p.cluster_quorum);
        }
    }
    if (strcmp(cfg->postfix_config_directory, c->config_dir) != 0)
        log_warn("reload: postfix_config_directory takes effect at the next restart");
    ctl_set_pending_profile(c, cfg->stress_main_cf, cfg->stress_master_cf);
    ctl_reconcile(c);
}

static struct controller *ctl_alloc(uv_loop_t *loop, const struct config *cfg)
{
    struct controller *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->config_dir = strdup(cfg->postfix_config_directory);
    c->state_dir = strdup(cfg->state_directory);
    c->journal_path = path_join(cfg->state_directory, CONTROLLER_JOURNAL_NAME);
    c->socket_path = path_join(cfg->state_directory, CONTROLLER_SOCKET_NAME);
    c->main_path = path_join(cfg->postfix_config_directory, "main.cf");
    c->master_path = path_join(cfg->postfix_config_directory, "master.cf");
    c->postconf = strdup(cfg->postconf_command);
    c->postfix = strdup(cfg->postfix_command);
    c->attack_action = strdup(cfg->attack_action);
    c->profile_main = strdup(cfg->stress_main_cf);
    c->profile_master = strdup(cfg->stress_master_cf);
    c->sample = calloc(1, sizeof(*c->sample));
    c->lock_fd = -1;
    c->cmd_timeout_ms = (uint64_t)cfg->command_timeout;
    c->dry_run = cfg->stress_dry_run;
    c->overrides_on = cfg->stress_overrides;
    c->monitor_on = cfg->monitor;
    stress_params_from_config(cfg, &c->params);
    if (!c->config_dir || !c->state_dir || !c->journal_path || !c->socket_path || !c->main_path ||
        !c->master_path || !c->postconf || !c->postfix || !c->attack_action || !c->profile_main ||
        !c->profile_master || !c->sample) {
        controller_free(c);
        return NULL;
    }
    return c;
}

int controller_new(struct server *srv, struct controller **out, char *err, size_t errlen)
{
    const struct config *cfg = srv->cfg;
    *out = NULL;
    /* Start-up may block: create state_directory (0700) if it is missing. */
    if (mkdir(cfg->state_directory, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "state_directory %s: %s", cfg->state_directory, strerror(errno));
        return -errno;
    }
    if (strlen(cfg->state_directory) + sizeof(CONTROLLER_SOCKET_NAME) + 1 >
        sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "state_directory %s: too long for a socket path",
                 cfg->state_directory);
        return -ENAMETOOLONG;
    }
    struct controller *c = ctl_alloc(srv->loop, cfg);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    c->srv = srv;
    /* Opened now, while serve may still be root: the lock is taken only around changes. */
    c->lock_fd = open(c->config_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c->lock_fd < 0)
        log_warn("cannot open %s (%s): a second postsurge on this Postfix would go unnoticed",
                 c->config_dir, strerror(errno));
    c->sm = stress_new(&c->params, (int64_t)uv_now(srv->loop));
    if (!c->sm) {
        snprintf(err, errlen, "stress settings are inconsistent");
        controller_free(c);
        return -EINVAL;
    }
    c->node = node_new(srv->loop, cfg, err, errlen);
    if (!c->node) {
        controller_free(c);
        return -EINVAL;
    }
    switch (privsep_mode()) {
    case PRIVSEP_HELPER:
        c->ps = privsep_client_new(srv->loop);
        if (!c->ps) {
            c->unavailable = true;
            snprintf(c->unavailable_why, sizeof(c->unavailable_why),
                     "the privileged helper could not be reached");
        }
        break;
    case PRIVSEP_UNPRIVILEGED:
        c->unavailable = true;
        snprintf(c->unavailable_why, sizeof(c->unavailable_why),
                 "serve was started as uid %ld, not root: no privileged helper", (long)getuid());
        break;
    default:
        break;
    }
    if (c->monitor_on) {
        struct monitor_opts mo = {.config_dir = c->config_dir,
                                  .maillog_file = cfg->maillog_file,
                                  .interval_ms = (uint64_t)cfg->monitor_interval,
                                  .command_timeout_ms = c->cmd_timeout_ms,
                                  .postconf = c->postconf,
                                  .on_log = ctl_on_log};
        /* Other users' /proc/PID/fd need root: the helper scans, the loop never waits. */
        if (c->ps)
            mo.scanner = (struct monitor_scanner){.start = privsep_scan_start, .arg = c->ps};
        c->mon = monitor_new(srv->loop, &mo, ctl_on_sample, c);
        if (!c->mon) {
            snprintf(err, errlen, "cannot create the monitor");
            node_close(c->node, NULL, NULL);
            c->node = NULL;
            controller_free(c);
            return -ENOMEM;
        }
    }
    struct server_hook h = {.on_reload = ctl_on_reload, .on_stop = ctl_on_stop, .arg = c};
    server_add_hook(srv, &h);
    *out = c;
    return 0;
}

/* /status: this node's stress part and the cluster view. */
static int ctl_http_status(struct server *srv, json_t *status, void *arg)
{
    struct controller *c = arg;
    (void)srv;
    json_t *cl = ctl_cluster_json(c);
    json_t *self = json_array_get(json_object_get(cl, "nodes"), 0);
    static const char *const keys[] = {
        "stress",     "state",   "since",    "local_stress", "forced",
        "saturation", "busiest", "services", "overrides",    "overrides_state",
        "journal",    "dry_run", "error",    "commands",     "overrides_available",
        "privileges"};
    for (size_t i = 0; self && i < sizeof(keys) / sizeof(keys[0]); i++)
        json_object_set(status, keys[i], json_object_get(self, keys[i]));
    json_object_set(status, "nodes", json_object_get(cl, "nodes"));
    json_object_set(status, "imbalance", json_object_get(cl, "imbalance"));
    json_decref(cl);
    return 0;
}

struct collect_ctx {
    struct metrics_out *o;
    int rc;
};

static void collect_kind(const char *kind, uint64_t count, void *arg)
{
    struct collect_ctx *x = arg;
    const char *ln[] = {"kind"};
    const char *lv[] = {kind};
    if (x->rc == 0)
        x->rc = metrics_out_sample(x->o, "postsurge_events_total", ln, lv, 1, (double)count);
}

/* Metrics computed at scrape time from the controller's state. */
static int ctl_collect(struct metrics_out *o, void *arg)
{
    struct controller *c = arg;
    const struct monitor_sample *s = c->have_sample ? c->sample : NULL;
    static const struct {
        const char *name, *help;
    } svc[] = {
        {"postsurge_service_busy", "smtpd processes of the service holding a client"},
        {"postsurge_service_limit", "process limit of the service (0 = unlimited)"},
        {"postsurge_service_waiting", "clients waiting for an smtpd process"},
        {"postsurge_service_saturation_percent", "busy (and waiting) over the process limit"},
    };
    const char *ln[] = {"service"};
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < 4; k++) {
        rc = metrics_out_family(o, METRIC_GAUGE, svc[k].name, svc[k].help);
        for (size_t i = 0; rc == 0 && s && i < s->n_services; i++) {
            const struct monitor_service *v = &s->services[i];
            struct stress_service_sample ss = {
                .busy = v->busy, .limit = v->limit, .waiting = v->waiting};
            double val = k == 0   ? v->busy
                         : k == 1 ? v->limit
                         : k == 2 ? v->waiting
                                  : stress_service_saturation(&ss);
            const char *lv[] = {v->name};
            rc = metrics_out_sample(o, svc[k].name, ln, lv, 1, val);
        }
    }
    bool stressed = c->sm && stress_state_get(c->sm) == STRESS_STRESSED;
    const struct {
        enum metric_type t;
        const char *name, *help;
        double v;
    } one[] = {
        {METRIC_GAUGE, "postsurge_stress", "1 while this node is in stress", stressed},
        {METRIC_GAUGE, "postsurge_saturation_percent", "node saturation (busiest service)",
         c->have_result ? c->last.saturation : 0},
        {METRIC_GAUGE, "postsurge_overrides_in_force", "override settings in force",
         c->journal ? (double)c->journal->n : 0},
        {METRIC_COUNTER, "postsurge_override_applies_total", "override profiles applied",
         (double)c->applies},
        {METRIC_COUNTER, "postsurge_override_restores_total", "override profiles restored",
         (double)c->restores},
        {METRIC_COUNTER, "postsurge_restore_conflicts_total",
         "settings an administrator changed during stress (left as they are)",
         (double)c->conflicts},
        {METRIC_COUNTER, "postsurge_commands_total", "postconf/postfix runs",
         (double)c->commands_run},
        {METRIC_COUNTER, "postsurge_command_failures_total",
         "postconf/postfix runs that failed or timed out", (double)c->command_failures},
        {METRIC_GAUGE, "postsurge_flagged_clients", "clients flagged by the attack detector",
         c->node ? (double)node_flagged_count(c->node) : 0},
        {METRIC_COUNTER, "postsurge_attack_answers_total", "requests answered attack_action",
         (double)c->attack_answers},
        {METRIC_GAUGE, "postsurge_cluster_nodes", "live nodes in the store",
         c->node ? (double)json_array_size(node_cluster(c->node)) : 0},
    };
    for (size_t i = 0; rc == 0 && i < sizeof(one) / sizeof(one[0]); i++) {
        rc = metrics_out_family(o, one[i].t, one[i].name, one[i].help);
        if (rc == 0)
            rc = metrics_out_sample(o, one[i].name, NULL, NULL, 0, one[i].v);
    }
    if (rc == 0)
        rc = metrics_out_family(o, METRIC_COUNTER, "postsurge_events_total",
                                "events appended by this node, by kind");
    struct collect_ctx x = {o, rc};
    if (rc == 0 && c->node)
        node_event_counts(c->node, collect_kind, &x);
    return x.rc;
}

int controller_start(struct controller *c)
{
    if (http_add_status(c->srv, ctl_http_status, c) < 0 ||
        metrics_add_collector(http_metrics(c->srv), ctl_collect, c) < 0)
        log_warn("cannot register the stress status and metrics (out of memory)");
    ctl_open_socket(c);
    c->inner = c->srv->decider;
    c->decider = (struct decider){.start = ctl_decide, .cancel = ctl_decide_cancel, .data = c};
    server_set_decider(c->srv, &c->decider);
    if (c->mon) {
        int rc = monitor_start(c->mon);
        if (rc < 0)
            log_error("monitor: %s", strerror(-rc));
    }
    log_info("controller: node %s, store %s, Postfix in %s, journal %s%s", node_name(c->node),
             node_store_kind(c->node), c->config_dir, c->journal_path,
             c->dry_run ? ", dry run" : "");
    if (c->unavailable) {
        ctl_event(c, "overrides-unavailable", true,
                  json_pack("{s:s}", "reason", c->unavailable_why),
                  "stress overrides unavailable: %s (detection, status and the policy "
                  "service run on)",
                  c->unavailable_why);
        if (privsep_mode() == PRIVSEP_UNPRIVILEGED && c->mon)
            log_warn("monitor: not root: other users' /proc/PID/fd are unreadable, so smtpd "
                     "busy counts may read 0");
    }
    job_start(c, JOB_INIT);
    return 0;
}

void controller_free(struct controller *c)
{
    if (!c)
        return;
    stress_free(c->sm);
    overrides_params_free(c->known);
    overrides_services_free(c->svcs);
    overrides_profile_free(c->resolved);
    overrides_journal_free(c->journal);
    free(c->config_dir);
    free(c->state_dir);
    free(c->journal_path);
    free(c->socket_path);
    free(c->main_path);
    free(c->master_path);
    free(c->postconf);
    free(c->postfix);
    free(c->attack_action);
    free(c->profile_main);
    free(c->profile_master);
    ctl_drop_pending_profile(c);
    free(c->sample);
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    free(c);
}

/* ---- offline restore (`postsurge restore` with no daemon) ---- */

static void offline_read_done(uv_work_t *w, int status)
{
    struct job *jb = w->data;
    struct controller *c = jb->c;
    char err[512];
    (void)status;
    c->job = NULL;
    if (jb->work_rc < 0) {
        fprintf(stderr, "postsurge: %s\n", jb->work_err);
        c->offline_rc = jb->work_rc;
    } else if (!jb->journal_found) {
        c->offline_rc = 1; /* nothing */
    } else if (overrides_journal_parse(jb->journal_buf, jb->journal_len, &c->journal, err,
                                       sizeof(err)) < 0) {
        fprintf(stderr, "postsurge: %s is corrupt: %s; nothing changed\n", c->journal_path, err);
        c->offline_rc = -EINVAL;
    } else if (strcmp(c->journal->config_dir, c->config_dir) != 0) {
        fprintf(stderr, "postsurge: %s is for %s, not %s; nothing changed\n", c->journal_path,
                c->journal->config_dir, c->config_dir);
        c->offline_rc = -EINVAL;
    } else {
        job_free(jb);
        job_start(c, JOB_RESTORE);
        return;
    }
    job_free(jb);
}

int controller_restore_offline(const struct config *cfg, bool *nothing)
{
    uv_loop_t loop;
    *nothing = false;
    if (uv_loop_init(&loop) < 0)
        return -ENOMEM;
    struct controller *c = ctl_alloc(&loop, cfg);
    if (!c) {
        uv_loop_close(&loop);
        return -ENOMEM;
    }
    c->offline = true;
    c->init_done = true;
    struct job *jb = calloc(1, sizeof(*jb));
    if (!jb) {
        controller_free(c);
        uv_loop_close(&loop);
        return -ENOMEM;
    }
    jb->c = c;
    jb->kind = JOB_RESTORE;
    jb->wk = WK_READ_JOURNAL;
    jb->work.data = jb;
    c->job = jb;
    uv_queue_work(&loop, &jb->work, job_work, offline_read_done);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = c->offline_rc;
    if (rc == 1) {
        *nothing = true;
        rc = 0;
    } else if (rc == 0 && c->journal) {
        rc = -EIO; /* the restore did not finish */
    }
    controller_free(c);
    uv_loop_close(&loop);
    return rc;
}
