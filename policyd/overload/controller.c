/* controller: monitor samples -> lib/stress -> override apply/restore, journaled.
 * The apply and restore are postfix/confedit's operations (journal with the files' bytes
 * before and after, edit on a scratch copy, install by rename, reload, verify), run by
 * the privileged helper or in libuv's thread pool, so the loop never blocks. One job
 * (init, apply or restore) runs at a time; after each job the wanted state (overrides in
 * force while stressed) is compared with the journal and the next job starts. The journal
 * is on disk before the first change to Postfix, and is removed only after a restore
 * finished. */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

void ctl_event(struct controller *c, const char *kind, bool warn, json_t *extra, const char *fmt,
               ...)
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
void ctl_journal_to_store(struct controller *c, const char *json)
{
    if (c->node)
        node_journal_put(c->node, json);
}

void ctl_set_error(struct controller *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
    va_end(ap);
}

/* Starts the next job when the wanted state and the journal disagree. */

void ctl_reconcile(struct controller *c)
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
    /* With stress_overrides = no the apply is logged as a dry run does; a journal left by
     * an earlier run with overrides on is still restored. */
    bool want = stressed && (c->overrides_on || !c->journal) && c->profile_ready &&
                !c->apply_failed && !c->unavailable && !c->already_in_force;
    if (c->stopping)
        return; /* overrides stay in force across a restart; the journal says how */
    if (want && !c->journal && !c->dry_applied) {
        if (!ctl_log_only(c) && !ctl_lock(c)) {
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
        ctl_event(c, "overrides-dry-run", false, NULL, "%s: restore logged, nothing changed",
                  ctl_log_only_why(c));
        c->dry_applied = false;
    }
}

/* ---- stress transitions ---- */

void ctl_on_transition(struct controller *c, const struct stress_result *r)
{
    if (r->event == STRESS_EVENT_ENTER) {
        c->apply_failed = false;
        c->already_in_force = false;
        engine_set_node_stressed(c->engine, true);
        json_t *extra = json_pack("{s:I,s:s,s:b}", "saturation", (json_int_t)r->saturation,
                                  "busiest", r->busiest, "forced", r->event_forced);
        if (extra && c->attack[0])
            json_object_set_new(extra, "attack", json_string(c->attack));
        ctl_event(c, "stress-enter", true, extra, "%s", r->reason);
    } else if (r->event == STRESS_EVENT_EXIT) {
        engine_set_node_stressed(c->engine, false);
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
    if (c->node && attack_stress_signal(c->node, c->attack, sizeof(c->attack)))
        st.attack = c->attack;
    else
        c->attack[0] = '\0';
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
            engine_set_node_stressed(c->engine, true);
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
    c->samples++;
}

static void ctl_on_idle_tick(uv_timer_t *t)
{
    struct controller *c = t->data;
    struct monitor_sample empty;
    memset(&empty, 0, sizeof(empty));
    ctl_on_sample(NULL, &empty, c);
}

static void ctl_on_log(struct monitor *m, const struct maillog_record *rec, void *arg)
{
    struct controller *c = arg;
    (void)m;
    if (c->node && !c->stopping)
        attack_on_log(c->node, rec);
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
        ctlsock_client_close(cl);
    if (c->ctl_open) {
        uv_close((uv_handle_t *)&c->ctl, ctl_on_ctl_closed);
        unlink(c->socket_path);
        c->ctl_open = false;
    }
    if (c->idle_tick_on) {
        uv_timer_stop(&c->idle_tick);
        uv_close((uv_handle_t *)&c->idle_tick, ctl_on_ctl_closed);
        c->idle_tick_on = false;
    }
    if (c->mon)
        monitor_close(c->mon, ctl_on_mon_closed, c);
    if (c->node)
        node_close(c->node, ctl_on_node_closed, c);
}

struct controller *ctl_alloc(uv_loop_t *loop, const struct config *cfg)
{
    struct controller *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->config_dir = strdup(cfg->postfix_config_directory);
    c->state_dir = strdup(cfg->state_directory);
    c->journal_path = fsutil_path_join(cfg->state_directory, CONTROLLER_JOURNAL_NAME);
    c->socket_path = fsutil_path_join(cfg->state_directory, CONTROLLER_SOCKET_NAME);
    c->main_path = fsutil_path_join(cfg->postfix_config_directory, "main.cf");
    c->master_path = fsutil_path_join(cfg->postfix_config_directory, "master.cf");
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

/* The engine's limit-hit: an event in the log and the store (for the cluster). */
static void ctl_on_limit_hit(void *arg, json_t *extra, const char *text)
{
    struct controller *c = arg;
    if (c->node == NULL) {
        json_decref(extra);
        return;
    }
    node_event(c->node, "limit-hit", false, extra, "%s", text);
}

int controller_new(struct server *srv, struct engine *engine, struct controller **out, char *err,
                   size_t errlen)
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
    c->engine = engine;
    engine_set_limit_hit_cb(engine, ctl_on_limit_hit, c);
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
    c->idle_tick_ms = cfg->monitor_interval > 0 ? (uint64_t)cfg->monitor_interval : 1000;
    if (c->monitor_on) {
        struct monitor_opts mo = {.config_dir = c->config_dir,
                                  .maillog_file = cfg->maillog_file,
                                  .syslog_name = cfg->maillog_syslog_name,
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

int controller_start(struct controller *c)
{
    if (server_add_status(c->srv, ctl_http_status, c) < 0 ||
        metrics_add_collector(server_metrics(c->srv), ctl_collect, c) < 0)
        log_warn("cannot register the stress status and metrics (out of memory)");
    ctlsock_open(c);
    c->inner = c->srv->decider;
    c->decider =
        (struct decider){.start = attack_decide, .cancel = attack_decide_cancel, .data = c};
    server_set_decider(c->srv, &c->decider);
    if (c->mon) {
        int rc = monitor_start(c->mon);
        if (rc < 0)
            log_error("monitor: %s", strerror(-rc));
    } else if (uv_timer_init(c->loop, &c->idle_tick) == 0) {
        c->idle_tick.data = c;
        c->idle_tick_on = true;
        uv_timer_start(&c->idle_tick, ctl_on_idle_tick, c->idle_tick_ms, c->idle_tick_ms);
    }
    log_info("controller: node %s, store %s, Postfix in %s, journal %s%s", node_name(c->node),
             node_store_kind(c->node), c->config_dir, c->journal_path,
             c->dry_run        ? ", dry run"
             : c->overrides_on ? ""
                               : ", overrides logged only (stress_overrides = no)");
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
    engine_set_limit_hit_cb(c->engine, NULL, NULL);
    stress_free(c->sm);
    overrides_params_free(c->known);
    overrides_services_free(c->svcs);
    overrides_profile_free(c->resolved);
    overrides_journal_free(c->journal);
    confedit_free(c->ce);
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
