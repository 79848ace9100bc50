/* engine_cmd: the control socket's `limits` commands (list, show, reset, top, and set and
 * unset, whose run-time overrides engine_rt.c keeps), answered from the running engine:
 * its rules, the store's counters and the recent refusals.
 * A RULE or VALUE that cannot exist is refused with the reason. */
#define LOG_COMPONENT "limits"
#include "engine_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits_rt.h"
#include "net.h"

static json_t *rule_json(const struct engine *e, const struct limits_rule *r)
{
    json_t *conds = json_array();
    for (size_t k = 0; k < r->n_conds; k++)
        json_array_append_new(conds, json_string(r->cond[k].text));
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:I,s:I,s:b,s:s,s:o,s:I}", "name", r->name, "key", r->key_spec,
                  "measure", limits_measure_name(r->measure), "limit", (json_int_t)r->limit,
                  "window_ms", (json_int_t)r->window_ms, "dryrun", r->dryrun, "action",
                  r->action ? r->action : "", "conditions", conds, "line", (json_int_t)r->line);
    if (o && r->has_stress) {
        json_object_set_new(o, "stress_limit", json_integer(r->stress_limit));
        json_object_set_new(o, "stress_window_ms", json_integer(r->stress_window_ms));
    }
    if (o && r->overrides) {
        json_object_set_new(o, "overrides", json_string(r->overrides));
        json_object_set_new(o, "override_entries",
                            json_integer((json_int_t)limits_table_count(r->table)));
    }
    size_t nrt = limits_rt_rule_count(e->rt, r->name);
    if (o && nrt > 0)
        json_object_set_new(o, "runtime_overrides", json_integer((json_int_t)nrt));
    return o;
}

struct show_req {
    engine_reply_fn reply;
    void *arg;
    json_t *o;
    struct limits_engine *le;
    size_t n_ops;
    char keys[2][LIMITS_KEY_MAX];
    struct store_op ops[2];
};

static void show_done(void *arg, int status, const struct window_result *res, size_t n)
{
    struct show_req *q = arg;
    if (status < 0 || res == NULL || n != q->n_ops) {
        json_decref(q->o);
        q->reply(q->arg, json_pack("{s:b,s:s}", "ok", 0, "error",
                                   status < 0 ? strerror(-status) : "store failed"));
    } else {
        int64_t limit = json_integer_value(json_object_get(q->o, "limit"));
        json_object_set_new(q->o, "count", json_integer(res[0].count));
        if (q->n_ops > 1)
            json_object_set_new(q->o, "stress_count", json_integer(res[1].count));
        bool now = limit < 0 || res[0].count < limit;
        json_object_set_new(q->o, "admitted_now", json_boolean(now));
        if (!now) {
            /* The window's bound (lib/window.h): a blocked key is admitted again after
             * at most W + 2w; the counts per slot are not read back. */
            int64_t w = json_integer_value(json_object_get(q->o, "window_ms"));
            json_object_set_new(q->o, "admitted_within_ms",
                                json_integer(w + 2 * window_slot_width(w)));
        }
        q->reply(q->arg, q->o);
    }
    limits_engine_free(q->le);
    free(q);
}

/* The rule named rule and the canonical form of value, or NULL after replying why. */
static const struct limits_rule *rule_value(struct engine *e, const char *rule, const char *value,
                                            char *canon, size_t canonsz, engine_reply_fn reply,
                                            void *arg)
{
    struct limits_engine *le = e->limits;
    const struct limits_rule *r = NULL;
    char why[200];
    for (size_t i = 0; i < limits_engine_rule_count(le); i++)
        if (strcmp(limits_engine_rule(le, i)->name, rule) == 0)
            r = limits_engine_rule(le, i);
    if (r == NULL) {
        snprintf(why, sizeof(why), "no rule named \"%.32s\" (postsurge limits list)", rule);
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
        return NULL;
    }
    if (limits_value_check(r, value, canon, canonsz, why, sizeof(why)) < 0) {
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
        return NULL;
    }
    return r;
}

struct reset_req {
    engine_reply_fn reply;
    void *arg;
    int pending, status;
    json_t *o;
};

static void reset_done(void *arg, int status)
{
    struct reset_req *q = arg;
    if (status < 0 && q->status == 0)
        q->status = status;
    if (--q->pending > 0)
        return;
    if (q->status < 0) {
        json_decref(q->o);
        q->reply(q->arg, json_pack("{s:b,s:s}", "ok", 0, "error", strerror(-q->status)));
    } else {
        q->reply(q->arg, q->o);
    }
    free(q);
}

static void engine_cmd_reset(struct engine *e, const char *rule, const char *value,
                             engine_reply_fn reply, void *arg)
{
    char canon[LIMITS_MAX_VALUE + 1];
    const struct limits_rule *r = rule_value(e, rule, value, canon, sizeof(canon), reply, arg);
    if (r == NULL)
        return;
    struct reset_req *q = calloc(1, sizeof(*q));
    if (q == NULL || e->store == NULL) {
        free(q);
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", "cannot reset now"));
        return;
    }
    q->reply = reply;
    q->arg = arg;
    q->o = json_pack("{s:b,s:s,s:s,s:s}", "ok", 1, "rule", r->name, "value", canon, "store",
                     store_kind(e->store));
    q->pending = 1; /* held until both are sent */
    for (int k = 0; k < 2; k++) {
        if (k == 1 && !(r->has_stress && r->stress_window_ms != r->window_ms))
            break;
        char key[LIMITS_KEY_MAX];
        limits_counter_key(r, k == 1, canon, key, sizeof(key));
        q->pending++;
        int rc = store_counter_reset(e->store, key, reset_done, q);
        if (rc != 0)
            reset_done(q, rc < 0 ? rc : 0);
    }
    log_info("control: counter %s:%s reset", r->name, canon);
    reset_done(q, 0);
}

static void engine_cmd_show(struct engine *e, const char *rule, const char *value,
                            engine_reply_fn reply, void *arg)
{
    struct limits_engine *le = e->limits;
    char canon[LIMITS_MAX_VALUE + 1];
    const struct limits_rule *r = rule_value(e, rule, value, canon, sizeof(canon), reply, arg);
    if (r == NULL)
        return;
    /* The limit in force and where it comes from (limits_override's precedence). */
    int64_t limit = r->limit, window = r->window_ms;
    const char *source = "rule";
    if (e->node_stressed && r->has_stress) {
        limit = r->stress_limit;
        source = "stress";
    }
    struct net_addr a, *ap = NULL;
    struct net_cidr c;
    for (size_t k = 0, off = 0; r->table_type == LIMITS_TABLE_CIDR && k < r->n_parts; k++) {
        size_t len = strcspn(canon + off, "|");
        if (r->part[k] == LIMITS_KEY_CLIENT_ADDRESS &&
            net_cidr_parse(canon + off, len, &c, NULL) == 0) {
            a = c.addr;
            ap = &a;
        }
        off += len + 1;
    }
    int64_t ov;
    size_t ri = (size_t)(r - limits_engine_rule(le, 0));
    switch (limits_override(le, ri, canon, strlen(canon), ap, &ov)) {
    case LIMITS_SOURCE_RUNTIME:
        limit = ov;
        source = "run-time override";
        break;
    case LIMITS_SOURCE_TABLE:
        limit = ov;
        source = "table";
        break;
    case LIMITS_SOURCE_RULE:
        break;
    }
    struct show_req *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", "out of memory"));
        return;
    }
    q->reply = reply;
    q->arg = arg;
    q->o = json_pack("{s:b,s:s,s:s,s:s,s:I,s:s,s:I}", "ok", 1, "rule", r->name, "value", canon,
                     "measure", limits_measure_name(r->measure), "window_ms", (json_int_t)window,
                     "source", source, "limit", (json_int_t)limit);
    if (limit == LIMITS_TABLE_UNLIMITED)
        json_object_set_new(q->o, "limit", json_string("unlimited"));
    const struct limits_rt_entry *rte = limits_rt_lookup(e->rt, r->name, canon, strlen(canon));
    if (rte != NULL && rte->expires_ms > 0 && strcmp(source, "run-time override") == 0)
        json_object_set_new(q->o, "expires_ms", json_integer(rte->expires_ms));
    q->n_ops = 1;
    limits_counter_key(r, false, canon, q->keys[0], sizeof(q->keys[0]));
    /* Amount 0: reads the count, counts nothing. */
    q->ops[0] = (struct store_op){q->keys[0], r->window_ms, LIMITS_COUNT_ONLY, 0, 0};
    if (r->has_stress && r->stress_window_ms != r->window_ms) {
        limits_counter_key(r, true, canon, q->keys[1], sizeof(q->keys[1]));
        q->ops[1] = (struct store_op){q->keys[1], r->stress_window_ms, LIMITS_COUNT_ONLY, 0, 0};
        q->n_ops = 2;
    }
    q->le = limits_engine_ref(le);
    int rc = e->store ? store_window_take(e->store, q->ops, q->n_ops, wall_ms(), show_done, q, NULL)
                      : -ESHUTDOWN;
    if (rc < 0) {
        json_decref(q->o);
        limits_engine_free(q->le);
        free(q);
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", strerror(-rc)));
    }
}

static int top_cmp(const void *a, const void *b)
{
    const struct top_entry *x = *(const struct top_entry *const *)a;
    const struct top_entry *y = *(const struct top_entry *const *)b;
    return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

static void engine_cmd_top(struct engine *e, const char *rule, engine_reply_fn reply, void *arg)
{
    if (rule != NULL) {
        bool found = false;
        for (size_t i = 0; i < limits_engine_rule_count(e->limits); i++)
            found |= strcmp(limits_engine_rule(e->limits, i)->name, rule) == 0;
        if (!found) {
            char why[120];
            snprintf(why, sizeof(why), "no rule named \"%.32s\" (postsurge limits list)", rule);
            reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
            return;
        }
    }
    const struct top_entry *v[ENGINE_TOP_SLOTS];
    size_t n = 0, rl = rule ? strlen(rule) : 0;
    int64_t now = wall_ms();
    for (size_t i = 0; i < ENGINE_TOP_SLOTS; i++) {
        const struct top_entry *t = &e->top[i];
        if (!t->key[0] || now - t->last_ms > ENGINE_TOP_AGE_MS)
            continue;
        if (rule && !(strncmp(t->key, rule, rl) == 0 && t->key[rl] == ':'))
            continue;
        v[n++] = t;
    }
    qsort(v, n, sizeof(v[0]), top_cmp);
    json_t *keys = json_array();
    for (size_t i = 0; i < n && i < 50; i++) {
        const char *k = v[i]->key;
        size_t nl = strcspn(k, ":");
        const char *value = k;
        for (int colons = 0; *value && colons < 2; value++)
            colons += *value == ':';
        json_array_append_new(keys, json_pack("{s:s%,s:s,s:I,s:I,s:I}", "rule", k, nl, "value",
                                              value, "refusals", (json_int_t)v[i]->count, "error",
                                              (json_int_t)v[i]->error, "last",
                                              (json_int_t)v[i]->last_ms));
    }
    reply(arg, json_pack("{s:b,s:o,s:I}", "ok", 1, "keys", keys, "since_ms",
                         (json_int_t)(now - ENGINE_TOP_AGE_MS)));
}

/* The run-time overrides for `limits list`: at most ENGINE_RT_LIST of them. */
#define ENGINE_RT_LIST 100
static json_t *rt_json(const struct engine *e)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < limits_rt_count(e->rt) && i < ENGINE_RT_LIST; i++) {
        const struct limits_rt_entry *en = limits_rt_entry(e->rt, i);
        json_t *o = json_pack("{s:s,s:s,s:I}", "rule", en->rule, "value", en->value, "expires_ms",
                              (json_int_t)en->expires_ms);
        if (o)
            json_object_set_new(o, "limit",
                                en->count == LIMITS_TABLE_UNLIMITED ? json_string("unlimited")
                                                                    : json_integer(en->count));
        json_array_append_new(a, o);
    }
    return a;
}

/* The longest `for DURATION` of a run-time override. */
#define ENGINE_RT_MAX_DURATION_MS (366LL * 24 * 3600 * 1000)

static void engine_cmd_set(struct engine *e, const char *rule, const char *value,
                           const char *count_text, const char *duration, engine_reply_fn reply,
                           void *arg)
{
    char canon[LIMITS_MAX_VALUE + 1], why[200];
    const struct limits_rule *r = rule_value(e, rule, value, canon, sizeof(canon), reply, arg);
    if (r == NULL)
        return;
    int64_t count, ms = 0;
    if (limits_rt_count_parse(r, count_text, &count, why, sizeof(why)) < 0) {
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
        return;
    }
    if (duration != NULL &&
        (config_parse_time_ms(duration, &ms) < 0 || ms < 1000 || ms > ENGINE_RT_MAX_DURATION_MS)) {
        snprintf(why, sizeof(why), "DURATION \"%.20s\": expected 1s to 366d (30s, 10m, 2h, 1d)",
                 duration);
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
        return;
    }
    engine_rt_set(e, r, canon, count, ms ? wall_ms() + ms : 0, reply, arg);
}

void engine_limits_command(struct engine *e, int argc, char **argv, engine_reply_fn reply,
                           void *arg)
{
    if (e == NULL || e->limits == NULL) {
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", "no rate limits in this daemon"));
        return;
    }
    if (argc >= 2 && strcmp(argv[1], "list") == 0) {
        json_t *rules = json_array();
        for (size_t i = 0; i < limits_engine_rule_count(e->limits); i++)
            json_array_append_new(rules, rule_json(e, limits_engine_rule(e->limits, i)));
        reply(arg, json_pack("{s:b,s:o,s:b,s:s,s:o,s:I}", "ok", 1, "rules", rules, "stressed",
                             e->node_stressed, "store", e->store ? store_kind(e->store) : "",
                             "runtime_overrides", rt_json(e), "runtime_override_count",
                             (json_int_t)limits_rt_count(e->rt)));
    } else if (argc == 4 && strcmp(argv[1], "show") == 0) {
        engine_cmd_show(e, argv[2], argv[3], reply, arg);
    } else if ((argc == 2 || argc == 3) && strcmp(argv[1], "top") == 0) {
        engine_cmd_top(e, argc == 3 ? argv[2] : NULL, reply, arg);
    } else if (argc == 4 && strcmp(argv[1], "reset") == 0) {
        engine_cmd_reset(e, argv[2], argv[3], reply, arg);
    } else if ((argc == 5 || (argc == 7 && strcmp(argv[5], "for") == 0)) &&
               strcmp(argv[1], "set") == 0) {
        engine_cmd_set(e, argv[2], argv[3], argv[4], argc == 7 ? argv[6] : NULL, reply, arg);
    } else if (argc == 4 && strcmp(argv[1], "unset") == 0) {
        char canon[LIMITS_MAX_VALUE + 1];
        const struct limits_rule *r =
            rule_value(e, argv[2], argv[3], canon, sizeof(canon), reply, arg);
        if (r != NULL)
            engine_rt_unset(e, r, canon, reply, arg);
    } else {
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error",
                             "usage: limits list | limits top [RULE] | limits show|reset|unset "
                             "RULE VALUE | limits set RULE VALUE COUNT|unlimited [for DURATION]"));
    }
}
