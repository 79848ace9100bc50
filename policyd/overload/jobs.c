/* jobs: the controller's jobs, one at a time: init (postconf -d/-F, the profile, a
 * journal left behind), apply and restore. Every postconf/postfix run is a spawn (with
 * command_timeout); file reads, the journal and the restored files are written in libuv's
 * thread pool, so the loop never blocks; as root the privileged helper does the journaled
 * steps. The journal is on disk before the first command that changes Postfix, and is
 * removed only after a restore finished. */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

static void job_step(struct job *jb);
static void job_end(struct job *jb);

/* ---- synchronous file helpers, run in the thread pool (or by the CLI) ---- */

/* Reads a whole file. trusted_only: the file must be a regular file owned by the
 * effective user, with one link and no group or other write bit (-EPERM otherwise), so a
 * root process never restores from a journal the unprivileged daemon user could forge. */
static int read_all_checked(const char *path, bool trusted_only, char **buf, size_t *len)
{
    /* O_NONBLOCK: a FIFO planted at the name must not hang a root restore; it fails the
     * regular-file check below instead. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | (trusted_only ? O_NOFOLLOW : 0));
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (trusted_only && (st.st_uid != geteuid() || st.st_nlink != 1 || (st.st_mode & 022)))) {
        close(fd);
        return -EPERM;
    }
    int rc = fsutil_read_fd(fd, buf, len);
    close(fd);
    return rc;
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

void job_work(uv_work_t *w)
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

void job_free(struct job *jb)
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
bool ctl_lock(struct controller *c)
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

void job_start(struct controller *c, enum job_kind kind)
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

json_t *ctl_settings_json(const struct overrides_journal *j)
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
        if (ctl_log_only(c)) {
            plan_log(jb->plan, "dry run: would run: ");
            c->dry_applied = true;
            ctl_event(c, "overrides-dry-run", false,
                      json_pack("{s:o}", "settings", ctl_settings_json(jb->j)),
                      "%s: %zu commands logged, nothing changed", ctl_log_only_why(c), jb->plan->n);
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
                  json_pack("{s:o,s:I}", "settings", ctl_settings_json(c->journal), "elapsed_ms",
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
                  json_pack("{s:o,s:b,s:b,s:I,s:I}", "settings", ctl_settings_json(c->journal),
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
                            c->journal ? ctl_settings_json(c->journal) : json_array(), "elapsed_ms",
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
                            j ? ctl_settings_json(j) : json_array(), "main_cf_bytes_restored", wm,
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
        if (jb->c->ps && !ctl_log_only(jb->c))
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
