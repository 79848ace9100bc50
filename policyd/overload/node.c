/* node: node status publication, the cluster view, the event log and the clients the
 * attack detector flagged (attack.c), on a store of their own (memory, or the Redis the
 * cluster shares). The controller calls node_publish() every monitor tick with the status it built;
 * the mail log reaches attack_on_log() through the monitor. Loop thread only. */
#define LOG_COMPONENT "node"
#include "node_internal.h"

#include "util/log.h"
#include "net.h"
#include "store/store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t node_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t node_mono(const struct node *n)
{
    return uv_now(n->loop);
}

static void node_take_settings(struct node *n, const struct config *cfg)
{
    n->unknown_limit = cfg->attack_unknown_user_limit;
    n->error_limit = cfg->attack_error_limit;
    n->window_ms = cfg->attack_window;
    n->flag_ms = cfg->attack_flag_time;
    n->auth_limit = cfg->attack_auth_failure_limit;
    n->auth_window_ms = cfg->attack_auth_window;
    n->stress_rate[0] = cfg->attack_stress_unknown_user_rate;
    n->stress_rate[1] = cfg->attack_stress_auth_failure_rate;
    const char *mode = cfg->attack_auth_mode ? cfg->attack_auth_mode : "always";
    n->auth_mode = strcmp(mode, "off") == 0      ? NODE_AUTH_OFF
                   : strcmp(mode, "stress") == 0 ? NODE_AUTH_STRESS
                                                 : NODE_AUTH_ALWAYS;
    n->event_max = cfg->event_log_max > 0 ? cfg->event_log_max : 10000;
    n->ttl_ms = cfg->node_status_ttl > 0 ? cfg->node_status_ttl : 5000;
    /* A few sample periods, so one late tick does not make the node vanish. */
    if (n->ttl_ms < 3 * cfg->monitor_interval)
        n->ttl_ms = 3 * cfg->monitor_interval;
    char *action = strdup(cfg->attack_action ? cfg->attack_action : "");
    if (action) {
        free(n->attack_action);
        n->attack_action = action;
    }
    struct net_set *ex = NULL;
    char err[256];
    if (net_set_parse(cfg->limit_exempt_networks ? cfg->limit_exempt_networks : "", &ex, err,
                      sizeof(err)) == 0) {
        net_set_free(n->exempt);
        n->exempt = ex;
    } else {
        log_warn("limit_exempt_networks: %s; attack flags keep the previous exemptions", err);
    }
}

struct node *node_new(uv_loop_t *loop, const struct config *cfg, char *err, size_t errlen)
{
    struct node *n = calloc(1, sizeof(*n));
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    n->loop = loop;
    char host[256] = "";
    if (cfg->node_name && *cfg->node_name)
        snprintf(host, sizeof(host), "%s", cfg->node_name);
    else if (gethostname(host, sizeof(host) - 1) < 0 || !host[0])
        snprintf(host, sizeof(host), "localhost");
    n->name = strdup(host);
    n->cluster = json_array();
    if (!n->name || !n->cluster) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    node_take_settings(n, cfg);
    if (store_new(loop, cfg, &n->store, err, errlen) < 0)
        goto fail;
    return n;
fail:
    free(n->name);
    json_decref(n->cluster);
    net_set_free(n->exempt);
    free(n->attack_action);
    free(n);
    return NULL;
}

void node_reload(struct node *n, const struct config *cfg)
{
    node_take_settings(n, cfg);
}

const char *node_name(const struct node *n)
{
    return n->name;
}

const char *node_store_kind(const struct node *n)
{
    return store_kind(n->store);
}

void node_store_stats(const struct node *n, struct store_stats *st)
{
    store_get_stats(n->store, st);
}

void node_free_merged(struct node *n)
{
    for (size_t i = 0; i < n->n_merged; i++)
        free(n->merged[i].addr);
    free(n->merged);
    n->merged = NULL;
    n->n_merged = 0;
}

static void node_on_store_closed(void *arg)
{
    struct node *n = arg;
    void (*closed)(void *) = n->closed;
    void *carg = n->closed_arg;
    node_free_merged(n);
    free(n->journal_text);
    json_decref(n->cluster);
    json_decref(n->recent);
    net_set_free(n->exempt);
    free(n->attack_action);
    free(n->name);
    free(n);
    if (closed)
        closed(carg);
}

void node_close(struct node *n, void (*closed)(void *arg), void *arg)
{
    if (!n || n->closing)
        return;
    n->closing = true;
    n->closed = closed;
    n->closed_arg = arg;
    /* Pending store callbacks run (with errors) while the store closes; n stays valid
     * until the store is gone. */
    store_close(n->store, node_on_store_closed, n);
}

/* ---- status and cluster view ---- */

int node_cmp_merged(const void *a, const void *b)
{
    return strcmp(((const struct node_merged *)a)->addr, ((const struct node_merged *)b)->addr);
}

/* Sorts v[0..k) by address and folds repeats of one address into one entry with every
 * kind; returns the new count. */
static size_t node_merged_fold(struct node_merged *v, size_t k)
{
    if (k > 1)
        qsort(v, k, sizeof(*v), node_cmp_merged);
    size_t out = 0;
    for (size_t i = 0; i < k; i++) {
        if (out > 0 && strcmp(v[out - 1].addr, v[i].addr) == 0) {
            v[out - 1].kinds |= v[i].kinds;
            free(v[i].addr);
            continue;
        }
        v[out++] = v[i];
    }
    return out;
}

void node_merged_add(struct node *n, const char *addr, unsigned kind)
{
    struct node_merged key = {.addr = (char *)addr};
    struct node_merged *m =
        n->n_merged ? bsearch(&key, n->merged, n->n_merged, sizeof(*n->merged), node_cmp_merged)
                    : NULL;
    if (m) {
        m->kinds |= kind;
        return;
    }
    if (n->n_merged >= NODE_MAX_MERGED)
        return;
    struct node_merged *v = realloc(n->merged, (n->n_merged + 1) * sizeof(*v));
    if (!v)
        return;
    n->merged = v;
    if (!(v[n->n_merged].addr = strdup(addr)))
        return;
    v[n->n_merged++].kinds = kind;
    n->n_merged = node_merged_fold(v, n->n_merged);
}

static int cmp_node(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "name"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "name"));
    return strcmp(x ? x : "", y ? y : "");
}

/* Rebuilds the sorted set of flagged clients from every node's "flagged" list. */
static void node_rebuild_flags(struct node *n, int64_t now)
{
    struct node_merged *v = calloc(NODE_MAX_MERGED, sizeof(*v));
    size_t k = 0;
    if (!v)
        return; /* keep the previous set */
    size_t i;
    json_t *st;
    json_array_foreach(n->cluster, i, st)
    {
        size_t j;
        json_t *f;
        json_array_foreach(json_object_get(st, "flagged"), j, f)
        {
            const char *addr = json_string_value(json_object_get(f, "addr"));
            json_int_t until = json_integer_value(json_object_get(f, "until"));
            if (!addr || until < now || k == NODE_MAX_MERGED)
                continue;
            /* A flag without a reason (a node of an earlier version) is a reject flag. */
            const char *why = json_string_value(json_object_get(f, "reason"));
            v[k].kinds = why && strcmp(why, "auth") == 0 ? NODE_FLAG_AUTH : NODE_FLAG_REJECTS;
            if ((v[k].addr = strdup(addr)))
                k++;
        }
    }
    k = node_merged_fold(v, k);
    node_free_merged(n);
    n->merged = v;
    n->n_merged = k;
}

struct node_get {
    struct node *n;
    json_t *self;
    int64_t now;
};

/* A store failure for a log line: an error reply is named by the store's own line
 * (NOAUTH, OOM, LOADING, ...), so it is not called a "Protocol error" here. */
const char *node_store_error(int status)
{
    if (status == -EPROTO)
        return "the store answered with an error (named in the store's log line)";
    if (status == -ETIMEDOUT)
        return "no answer within redis_timeout";
    return strerror(-status);
}

static void node_on_nodes(void *arg, int status, const struct store_node_status *nodes, size_t cnt)
{
    struct node_get *g = arg;
    struct node *n = g->n;
    n->get_busy = false;
    json_t *peers = json_array();
    if (status < 0) {
        log_warn_ratelimited(&n->rl_get, node_mono(n), 60000,
                             "cannot read the cluster's node status from the store: %s",
                             node_store_error(status));
    }
    for (size_t i = 0; peers && status == 0 && i < cnt; i++) {
        if (strcmp(nodes[i].node, n->name) == 0)
            continue;
        json_t *o = json_loads(nodes[i].json, 0, NULL);
        if (!json_is_object(o)) {
            json_decref(o);
            continue;
        }
        json_object_set_new(o, "updated", json_integer(nodes[i].updated_ms));
        json_array_append_new(peers, o);
    }
    json_t *cluster = json_array();
    if (cluster && peers) {
        json_array_append(cluster, g->self);
        size_t np = json_array_size(peers);
        json_t **pv = calloc(np ? np : 1, sizeof(json_t *));
        if (pv) {
            for (size_t i = 0; i < np; i++)
                pv[i] = json_array_get(peers, i);
            if (np > 1)
                qsort(pv, np, sizeof(json_t *), cmp_node);
            for (size_t i = 0; i < np; i++)
                json_array_append(cluster, pv[i]);
            free(pv);
        }
        json_decref(n->cluster);
        n->cluster = cluster;
        node_rebuild_flags(n, g->now);
    } else {
        json_decref(cluster);
    }
    json_decref(peers);
    json_decref(g->self);
    free(g);
}

static void node_on_put(void *arg, int status)
{
    struct node *n = arg;
    n->put_busy = false;
    if (status < 0)
        log_warn_ratelimited(&n->rl_put, node_mono(n), 60000,
                             "cannot publish this node's status to the store: %s",
                             node_store_error(status));
}

static void node_journal_retry(struct node *n);

void node_publish(struct node *n, json_t *status)
{
    if (n->closing)
        return;
    node_journal_retry(n);
    int64_t now = node_wall_ms();
    json_t *self = json_deep_copy(status);
    json_t *fl = json_array();
    if (!self || !fl) {
        json_decref(self);
        json_decref(fl);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n->n_flags; i++) {
        if (n->flags[i].until_ms < now)
            continue;
        n->flags[k++] = n->flags[i];
        json_t *f = json_pack("{s:s,s:I}", "addr", n->flags[i].addr, "until",
                              (json_int_t)n->flags[i].until_ms);
        if (f && n->flags[i].kind == NODE_FLAG_AUTH)
            json_object_set_new(f, "reason", json_string("auth"));
        json_array_append_new(fl, f);
    }
    n->n_flags = k;
    json_object_set_new(self, "flagged", fl);
    json_object_set_new(self, "time", json_integer(now));
    json_object_set_new(self, "store", json_string(store_kind(n->store)));

    if (!n->put_busy) {
        char *text = json_dumps(self, JSON_COMPACT);
        if (text) {
            n->put_busy = true;
            int rc = store_node_put(n->store, n->name, text, now, n->ttl_ms, node_on_put, n, NULL);
            if (rc < 0) {
                n->put_busy = false;
                node_on_put(n, rc);
            }
            free(text);
        }
    } else {
        log_warn_ratelimited(&n->rl_put, node_mono(n), 60000, "%s",
                             "node status: the previous publish is still pending; skipped");
    }
    /* A get that never answers (a stalled Redis) must not stop the view for good. */
    if (n->get_busy && node_mono(n) - (uint64_t)n->get_started < 30000) {
        json_decref(self);
        return;
    }
    struct node_get *g = calloc(1, sizeof(*g));
    if (!g) {
        json_decref(self);
        return;
    }
    g->n = n;
    g->self = self;
    g->now = now;
    n->get_busy = true;
    n->get_started = (int64_t)node_mono(n);
    int rc = store_node_get_all(n->store, now, node_on_nodes, g, NULL);
    if (rc < 0)
        node_on_nodes(g, rc, NULL, 0);
}

json_t *node_cluster(const struct node *n)
{
    return n->cluster;
}

int node_cluster_stressed_pct(const struct node *n, bool self_local_stress)
{
    size_t total = json_array_size(n->cluster);
    if (total < 2)
        return -1;
    size_t stressed = self_local_stress ? 1 : 0;
    for (size_t i = 1; i < total; i++)
        if (json_is_true(json_object_get(json_array_get(n->cluster, i), "local_stress")))
            stressed++;
    return (int)(stressed * 100 / total);
}

/* ---- events ---- */

static void node_on_event_stored(void *arg, int status)
{
    struct node *n = arg;
    if (status < 0 && !n->closing)
        log_warn_ratelimited(&n->rl_event, node_mono(n), 60000,
                             "cannot append to the event log in the store: %s",
                             node_store_error(status));
}

void node_event(struct node *n, const char *kind, bool warn, json_t *extra, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (warn)
        log_warn("event %s: %s", kind, text);
    else
        log_info("event %s: %s", kind, text);
    size_t k = 0;
    while (k < n->n_kinds && strcmp(n->kinds[k].kind, kind) != 0)
        k++;
    if (k == n->n_kinds && k < sizeof(n->kinds) / sizeof(n->kinds[0])) {
        snprintf(n->kinds[k].kind, sizeof(n->kinds[k].kind), "%s", kind);
        n->n_kinds++;
    }
    if (k < n->n_kinds)
        n->kinds[k].count++;
    if (n->closing) {
        json_decref(extra);
        return;
    }
    if (!n->recent)
        n->recent = json_array();
    json_t *mine =
        json_pack("{s:I,s:s,s:s}", "time", (json_int_t)node_wall_ms(), "kind", kind, "text", text);
    if (n->recent && mine && json_array_insert_new(n->recent, 0, mine) == 0) {
        while (json_array_size(n->recent) > NODE_RECENT_EVENTS)
            json_array_remove(n->recent, NODE_RECENT_EVENTS);
    }
    json_t *ev = json_pack("{s:I,s:s,s:s,s:s}", "time", (json_int_t)node_wall_ms(), "node", n->name,
                           "kind", kind, "text", text);
    if (!ev) {
        json_decref(extra);
        return;
    }
    if (extra)
        json_object_update(ev, extra);
    json_decref(extra);
    char *s = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    if (!s)
        return;
    int rc = store_event_append(n->store, s, n->event_max, node_on_event_stored, n, NULL);
    if (rc < 0)
        node_on_event_stored(n, rc);
    free(s);
}

/* ---- the override journal's copy ---- */

/* A failed put is sent again with the next status publish, and a stored journal is
 * rewritten every NODE_JOURNAL_REFRESH_MS (a restarted or flushed Redis loses it). */
#define NODE_JOURNAL_REFRESH_MS 30000

struct node_journal_put {
    struct node *n;
    uint64_t seq;
    bool set;
};

static void node_on_journal_put(void *arg, int status)
{
    struct node_journal_put *p = arg;
    struct node *n = p->n;
    n->journal_inflight--;
    if (p->seq == n->journal_seq) {
        n->journal_in_store = status == 0 && p->set;
        n->journal_failed = status < 0;
        if (status < 0 && !n->closing)
            log_warn_ratelimited(&n->rl_journal, node_mono(n), 60000,
                                 "cannot %s the override journal's copy in the store: %s "
                                 "(the file in state_directory is what restores; retrying)",
                                 p->set ? "write" : "delete", node_store_error(status));
    }
    free(p);
}

static void node_journal_send(struct node *n)
{
    struct node_journal_put *p = malloc(sizeof(*p));
    if (!p) {
        n->journal_failed = true;
        return;
    }
    *p = (struct node_journal_put){.n = n, .seq = ++n->journal_seq, .set = n->journal_text != NULL};
    n->journal_failed = false;
    n->journal_inflight++;
    n->journal_sent_ms = node_mono(n);
    int rc = store_journal_put(n->store, n->name, n->journal_text, node_on_journal_put, p, NULL);
    if (rc < 0)
        node_on_journal_put(p, rc);
}

void node_journal_put(struct node *n, const char *json)
{
    if (n->closing)
        return;
    char *t = json ? strdup(json) : NULL;
    if (json && !t) {
        log_error("no memory for the override journal's copy in the store");
        return;
    }
    free(n->journal_text);
    n->journal_text = t;
    n->journal_in_store = false; /* until the store confirms this one (a rewrite keeps it) */
    node_journal_send(n);
}

static void node_journal_retry(struct node *n)
{
    if (n->journal_inflight || n->journal_seq == 0)
        return;
    if (n->journal_failed ||
        (n->journal_text && node_mono(n) - n->journal_sent_ms >= NODE_JOURNAL_REFRESH_MS))
        node_journal_send(n);
}

bool node_journal_in_store(const struct node *n)
{
    return n->journal_in_store;
}

struct node_evread {
    int64_t since;
    size_t max;
    node_events_cb cb;
    void *arg;
};

static void node_on_events(void *arg, int status, const char *const *events, size_t cnt)
{
    struct node_evread *r = arg;
    json_t *out = status == 0 ? json_array() : NULL;
    for (size_t i = 0; out && i < cnt && json_array_size(out) < r->max; i++) {
        json_t *e = json_loads(events[i], 0, NULL);
        if (json_is_object(e) && json_integer_value(json_object_get(e, "time")) >= r->since)
            json_array_append_new(out, e);
        else
            json_decref(e);
    }
    r->cb(r->arg, out ? 0 : (status < 0 ? status : -ENOMEM), out);
    json_decref(out);
    free(r);
}

int node_events_read(struct node *n, int64_t since_ms, size_t max, node_events_cb cb, void *arg)
{
    if (n->closing)
        return -ESHUTDOWN;
    struct node_evread *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    *r = (struct node_evread){since_ms, max, cb, arg};
    size_t scan = n->event_max < NODE_EVENTS_SCAN ? (size_t)n->event_max : NODE_EVENTS_SCAN;
    int rc = store_event_read(n->store, scan, node_on_events, r, NULL);
    if (rc < 0)
        free(r);
    return rc;
}

size_t node_flagged_count(const struct node *n)
{
    return n->n_merged;
}

json_t *node_recent_events(const struct node *n)
{
    return n->recent ? json_deep_copy(n->recent) : json_array();
}

void node_event_counts(const struct node *n,
                       void (*fn)(const char *kind, uint64_t count, void *arg), void *arg)
{
    for (size_t i = 0; i < n->n_kinds; i++)
        fn(n->kinds[i].kind, n->kinds[i].count, arg);
}
