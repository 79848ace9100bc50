/* jobs: the controller's jobs, one at a time: init (postconf -d/-F, the profile, a
 * journal left behind), apply and restore. postconf -d/-F at init are spawns on the loop;
 * apply, restore and the journal check are postfix/confedit's operations (journal, edit
 * on a scratch copy, install, reload, verify), run by the privileged helper when there is
 * one, else in libuv's thread pool, so the loop never blocks. Both answer the same JSON,
 * read by one code path here. */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

static void job_step(struct job *jb);
static void job_end(struct job *jb);

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

/* ---- the executor: the privileged helper, or confedit in the thread pool ---- */

static void job_on_reply(void *arg, int status, json_t *reply)
{
    struct job *jb = arg;
    json_decref(jb->reply);
    jb->reply = reply ? json_incref(reply) : NULL;
    jb->reply_status = status;
    job_step(jb);
}

static void job_work(uv_work_t *w)
{
    struct job *jb = w->data;
    struct confedit *ce = jb->c->ce;
    switch (jb->op) {
    case PRIVMSG_JOURNAL:
        jb->work_reply = confedit_journal(ce);
        break;
    case PRIVMSG_APPLY:
        jb->work_reply = confedit_apply(ce, jb->payload, jb->plen, ctl_log_only(jb->c), SIZE_MAX);
        break;
    case PRIVMSG_RESTORE:
        jb->work_reply = confedit_restore(ce);
        break;
    default:
        break;
    }
}

static void job_after_work(uv_work_t *w, int status)
{
    struct job *jb = w->data;
    confedit_flush_log(jb->c->ce);
    free(jb->payload);
    jb->payload = NULL;
    jb->reply = jb->work_reply;
    jb->work_reply = NULL;
    jb->reply_status = jb->reply ? 0 : (status < 0 ? status : -ENOMEM);
    job_step(jb);
}

/* Runs op (PRIVMSG_JOURNAL, _APPLY, _RESTORE) with payload; job_step() runs later with
 * jb->reply (or reply_status < 0). Through the helper when there is one (a dry run needs
 * no privilege: it stays in this process), else in the thread pool. */
static void job_call(struct job *jb, enum privmsg_op op, const char *payload, size_t len)
{
    struct controller *c = jb->c;
    int rc;
    json_decref(jb->reply);
    jb->reply = NULL;
    jb->reply_status = 0;
    if (c->ps && !(op == PRIVMSG_APPLY && ctl_log_only(c))) {
        rc = privsep_call(c->ps, op, payload, len, job_on_reply, jb);
        if (rc < 0) {
            jb->reply_status = rc;
            job_step(jb);
        }
        return;
    }
    if (!c->ce)
        c->ce =
            confedit_new(c->config_dir, c->state_dir, c->postconf, c->postfix, c->cmd_timeout_ms);
    jb->payload = c->ce ? strndup(payload, len) : NULL;
    if (!jb->payload) {
        jb->reply_status = -ENOMEM;
        job_step(jb);
        return;
    }
    confedit_defer_log(c->ce, true);
    jb->op = op;
    jb->plen = len;
    jb->work.data = jb;
    rc = uv_queue_work(c->loop, &jb->work, job_work, job_after_work);
    if (rc < 0) {
        free(jb->payload);
        jb->payload = NULL;
        jb->reply_status = rc;
        job_step(jb);
    }
}

/* The reply's error text, or why there was none. */
static const char *reply_error(const struct job *jb)
{
    if (jb->reply_status < 0)
        return jb->reply_status == -ECANCELED ? "cancelled (stopping)"
               : jb->c->ps                    ? "the privileged helper does not answer"
                                              : "the thread pool could not run it";
    const char *e = json_string_value(json_object_get(jb->reply, "error"));
    return e && *e ? e : "unknown error";
}

static bool reply_ok(const struct job *jb)
{
    return jb->reply_status == 0 && json_is_true(json_object_get(jb->reply, "ok"));
}

/* Commands the executor ran for a request count as ours (status, metrics). */
static void reply_count(struct controller *c, const struct job *jb)
{
    c->commands_run += (uint64_t)json_integer_value(json_object_get(jb->reply, "commands"));
    c->command_failures += (uint64_t)json_integer_value(json_object_get(jb->reply, "failures"));
}

/* The journal's settings as the executor reported them (it keeps the journal). */
static struct overrides_journal *reply_journal(struct controller *c, const struct job *jb)
{
    struct overrides_journal *j = NULL;
    if (privmsg_settings_decode(json_object_get(jb->reply, "settings"), c->config_dir, &j) < 0)
        log_error("unreadable settings in the executor's reply");
    return j;
}

/* ---- jobs ---- */

static void job_free(struct job *jb)
{
    free(jb->payload);
    json_decref(jb->work_reply);
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

/* Apply: the executor re-validates the profile, edits a scratch copy, journals, installs,
 * reloads and verifies; we keep the settings it reports. */
static void job_step_apply(struct job *jb)
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
        job_call(jb, PRIVMSG_APPLY, req, len);
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
    } else if (reply_ok(jb) && json_is_true(json_object_get(jb->reply, "dry_run"))) {
        struct overrides_journal *j = reply_journal(c, jb);
        c->dry_applied = true;
        ctl_event(c, "overrides-dry-run", false,
                  json_pack("{s:o}", "settings", j ? ctl_settings_json(j) : json_array()),
                  "%s: %" PRId64 " commands logged, nothing changed", ctl_log_only_why(c),
                  (int64_t)json_integer_value(json_object_get(jb->reply, "planned")));
        overrides_journal_free(j);
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
                      "%s; %s", c->last_error, c->journal ? "rolling back" : "nothing was changed");
        if (c->journal)
            log_error("overrides apply failed: %s; restoring from the journal", c->last_error);
        else
            log_error("overrides not applied: %s", c->last_error);
    }
    job_end(jb);
}

/* How a file came back, for the overrides-restored event. */
static const char *restored_how(bool was_original, bool written)
{
    return was_original ? "already original" : written ? "byte-exact" : "per setting";
}

/* Restore: the executor reads the journal itself (root's, through the helper), puts the
 * files back and reloads; we log its conflicts. */
static void job_step_restore(struct job *jb)
{
    struct controller *c = jb->c;
    if (jb->step++ == 0) {
        job_call(jb, PRIVMSG_RESTORE, "{}", 2);
        return;
    }
    reply_count(c, jb);
    if (!reply_ok(jb)) {
        ctl_set_error(c, "restore: %s", reply_error(jb));
        if (c->offline) {
            fprintf(stderr, "postsurge: %s; nothing changed\n", c->last_error);
            c->offline_rc = -EIO;
        }
        ctl_event(c, "restore-failed", true, json_pack("{s:s}", "error", c->last_error),
                  "restore failed: %s; the journal stays, retry in %d s", c->last_error,
                  RESTORE_RETRY_MS / 1000);
        c->restore_retry_at = uv_now(c->loop) + RESTORE_RETRY_MS;
        job_end(jb);
        return;
    }
    if (c->offline)
        c->offline_rc = 0;
    if (json_is_true(json_object_get(jb->reply, "nothing"))) {
        log_info("restore: no journal on disk; nothing to undo");
        if (c->offline)
            c->offline_rc = 1;
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
        bool om = json_is_true(json_object_get(jb->reply, "main_was_original"));
        bool os = json_is_true(json_object_get(jb->reply, "master_was_original"));
        struct overrides_journal *j = reply_journal(c, jb);
        size_t n = j ? j->n : (c->journal ? c->journal->n : 0);
        json_int_t ms = json_integer_value(json_object_get(jb->reply, "elapsed_ms"));
        c->restores++;
        ctl_event(c, "overrides-restored", false,
                  json_pack("{s:o,s:b,s:b,s:b,s:b,s:I,s:I}", "settings",
                            j ? ctl_settings_json(j) : json_array(), "main_cf_bytes_restored", wm,
                            "master_cf_bytes_restored", ws, "main_cf_was_original", om,
                            "master_cf_was_original", os, "conflicts",
                            (json_int_t)json_array_size(cf), "elapsed_ms", ms),
                  "%zu settings restored (main.cf %s, master.cf %s), postfix reloaded, "
                  "%zu conflicts, in %" PRId64 " ms",
                  n, restored_how(om, wm), restored_how(os, ws), json_array_size(cf), (int64_t)ms);
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
            job_call(jb, PRIVMSG_JOURNAL, "{}", 2);
            return;
        }
        overrides_params_free(c->known);
        c->known = NULL;
        if (overrides_known_params_parse(jb->out, jb->out_len, &c->known) < 0) {
            snprintf(c->profile_error, sizeof(c->profile_error),
                     "postconf -d gave no parameter names");
            jb->step = 3;
            job_call(jb, PRIVMSG_JOURNAL, "{}", 2);
            return;
        }
        job_run_postconf(jb, "-F");
        return;
    case 2: {
        if (jb->failed) {
            snprintf(c->profile_error, sizeof(c->profile_error), "postconf -F: %.450s",
                     c->last_error);
            jb->failed = false;
            job_call(jb, PRIVMSG_JOURNAL, "{}", 2);
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
        job_call(jb, PRIVMSG_JOURNAL, "{}", 2);
        return;
    }
    case 3: {
        json_t *settings = json_object_get(jb->reply, "settings");
        reply_count(c, jb);
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
        job_step_apply(jb);
        break;
    case JOB_RESTORE:
        job_step_restore(jb);
        break;
    }
}
