/* profile: the override profile (stress_main_cf, stress_master_cf) checked against the
 * parameters and services read at start, and a changed profile from SIGHUP, taken when
 * no job runs and no overrides are in force. */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

/* The profile specs checked against the parameter names and services read at start
 * (c->known, c->svcs): *out is the resolved profile. 0, or <0 with err set. */
int ctl_resolve_profile(const struct controller *c, const char *main_spec, const char *master_spec,
                        struct overrides_profile **out, char *err, size_t errlen)
{
    struct overrides_profile *p = NULL;
    int rc = overrides_profile_parse(main_spec, master_spec, &p, err, errlen);
    if (rc == 0)
        rc = overrides_profile_resolve(p, c->known, c->svcs, out, err, errlen);
    overrides_profile_free(p);
    return rc;
}

/* Field by field: memcmp would read the struct's padding, which nothing initialises. */
static bool params_equal(const struct stress_params *a, const struct stress_params *b)
{
    return a->enter_threshold == b->enter_threshold && a->enter_delay_ms == b->enter_delay_ms &&
           a->exit_threshold == b->exit_threshold && a->exit_delay_ms == b->exit_delay_ms &&
           a->min_interval_ms == b->min_interval_ms && a->cluster_quorum == b->cluster_quorum;
}

void ctl_drop_pending_profile(struct controller *c)
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
void ctl_take_pending_profile(struct controller *c)
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

void ctl_on_reload(struct server *srv, const struct config *old, void *arg)
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
    if (!params_equal(&p, &c->params)) {
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
