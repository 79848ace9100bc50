/* status: the controller's part of the node status (/status, `postsurge status` through
 * the control socket), the cluster view, and the metrics computed at scrape time. */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

/* Each override in force as {"setting", "before", "during"} ("before" null: not set
 * explicitly before, the default applied). */
static json_t *ctl_overrides_detail(const struct overrides_journal *j)
{
    json_t *a = json_array();
    for (size_t i = 0; a && j && i < j->n; i++) {
        const struct overrides_setting *s = &j->settings[i];
        char name[600];
        if (s->file == OVERRIDES_MAIN)
            snprintf(name, sizeof(name), "%s", s->name);
        else
            snprintf(name, sizeof(name), "%s/%s/%s", s->service, s->type, s->name);
        json_array_append_new(a, json_pack("{s:s,s:s?,s:s}", "setting", name, "before", s->prior,
                                           "during", s->value ? s->value : ""));
    }
    return a;
}

json_t *ctl_status_json(struct controller *c)
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
        c->journal ? ctl_settings_json(c->journal) : json_array(), "overrides_state", ov, "dry_run",
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
        json_object_set_new(o, "maillog", json_string(monitor_log_source(c->mon)));
        json_object_set_new(o, "samples", json_integer((json_int_t)c->samples));
        json_object_set_new(o, "maillog_syslog_name", json_string(monitor_log_filter(c->mon)));
    }
    if (o && c->node)
        json_object_set_new(o, "events", node_recent_events(c->node));
    if (o)
        json_object_set_new(o, "overrides_detail", ctl_overrides_detail(c->journal));
    if (o && c->node)
        json_object_set_new(o, "flagged_clients",
                            json_integer((json_int_t)node_flagged_count(c->node)));
    return o;
}

/* The store's state for status: the rate limits' counter store (the node's own store when
 * no engine runs), as {"state", "reason", "since", "repaired"}; see struct store_stats.
 * "connecting" before Redis first answered. NULL on ENOMEM or without either store. */
static json_t *ctl_store_state(struct controller *c)
{
    struct store_stats st;
    if (engine_counters_stats(c->engine, &st) < 0) {
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

json_t *ctl_cluster_json(struct controller *c)
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

/* /status: this node's stress part and the cluster view. */
int ctl_http_status(struct server *srv, json_t *status, void *arg)
{
    struct controller *c = arg;
    (void)srv;
    json_t *cl = ctl_cluster_json(c);
    json_t *self = json_array_get(json_object_get(cl, "nodes"), 0);
    static const char *const keys[] = {
        "stress",     "state",   "since",    "local_stress", "forced",
        "saturation", "busiest", "services", "overrides",    "overrides_state",
        "journal",    "dry_run", "error",    "commands",     "overrides_available",
        "privileges", "samples"};
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
int ctl_collect(struct metrics_out *o, void *arg)
{
    struct controller *c = arg;
    const struct monitor_sample *s = c->have_sample ? c->sample : NULL;
    static const struct {
        const char *name, *help;
    } svc[] = {
        {"postsurge_service_busy", "smtpd processes of the service holding a client"},
        {"postsurge_service_limit", "process limit of the service (0 = unlimited)"},
        {"postsurge_service_waiting", "clients waiting for an smtpd process"},
        {"postsurge_service_saturation_ratio",
         "busy (and waiting) over the process limit; 1.0 = every process busy"},
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
                                  : stress_service_saturation(&ss) / 100.0;
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
        {METRIC_GAUGE, "postsurge_saturation_ratio",
         "node saturation (busiest service); 1.0 = every process busy",
         c->have_result ? c->last.saturation / 100.0 : 0},
        {METRIC_GAUGE, "postsurge_overrides_in_force", "override settings in force",
         c->journal ? (double)c->journal->n : 0},
        {METRIC_COUNTER, "postsurge_override_applies_total", "override profiles applied",
         (double)c->applies},
        {METRIC_COUNTER, "postsurge_override_restores_total", "override profiles restored",
         (double)c->restores},
        {METRIC_COUNTER, "postsurge_restore_conflicts_total",
         "settings an administrator changed during stress (left as they are)",
         (double)c->conflicts},
        {METRIC_COUNTER, "postsurge_controller_samples_total",
         "monitor samples (idle ticks with monitor = no) the stress controller evaluated",
         (double)c->samples},
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
