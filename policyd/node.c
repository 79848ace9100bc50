/* node: node status publication, the cluster view, the event log and the attack
 * detector, on a store of their own (memory, or the Redis the cluster shares). The
 * controller calls node_publish() every monitor tick with the status it built; the
 * mail log reaches node_on_log() through the monitor. Loop thread only. */
#define LOG_COMPONENT "node"
#include "node.h"

#include "log.h"
#include "net.h"
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Clients this node flags at once; the oldest flag goes first beyond it. */
#define NODE_MAX_FLAGS 1024
/* Clients flagged cluster-wide that the decider looks up. */
#define NODE_MAX_MERGED 8192
/* Events scanned for `postsurge events` (newest first). */
#define NODE_EVENTS_SCAN 10000

struct node_flag {
    char addr[64];
    int64_t until_ms;
};

struct node {
    uv_loop_t *loop;
    struct store *store;
    char *name;
    int64_t ttl_ms;
    int64_t event_max;
    int64_t unknown_limit, error_limit, window_ms, flag_ms;
    struct net_set *exempt;
    char *attack_action;

    json_t *cluster; /* array: self first, then peers by name */
    bool put_busy, get_busy;
    int64_t get_started;
    struct node_flag flags[NODE_MAX_FLAGS];
    size_t n_flags;
    char **merged; /* sorted flagged addresses of the cluster */
    size_t n_merged;
    int pending_takes;
    bool closing;
    void (*closed)(void *arg);
    void *closed_arg;
    struct log_ratelimit rl_put, rl_get, rl_event, rl_take, rl_journal;
    /* The journal copy in the store: puts are numbered, only the latest one's answer
     * counts (a SET answered after a later DEL must not say "in store"). */
    uint64_t journal_seq;
    bool journal_in_store;
    /* What the store should hold (the text, or nothing when NULL), puts in flight,
     * whether the latest failed, and when the latest was sent (node_mono). */
    char *journal_text;
    bool journal_failed;
    unsigned journal_inflight;
    uint64_t journal_sent_ms;
    struct {
        char kind[32];
        uint64_t count;
    } kinds[32];
    size_t n_kinds;
};

/* The node the decider's lookups go to (one per process). */
static struct node *node_current;

int64_t node_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t node_mono(const struct node *n)
{
    return uv_now(n->loop);
}

static void node_take_settings(struct node *n, const struct config *cfg)
{
    n->unknown_limit = cfg->attack_unknown_user_limit;
    n->error_limit = cfg->attack_error_limit;
    n->window_ms = cfg->attack_window;
    n->flag_ms = cfg->attack_flag_time;
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
    node_current = n;
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

static void node_free_merged(struct node *n)
{
    for (size_t i = 0; i < n->n_merged; i++)
        free(n->merged[i]);
    free(n->merged);
    n->merged = NULL;
    n->n_merged = 0;
}

static void node_on_store_closed(void *arg)
{
    struct node *n = arg;
    void (*closed)(void *) = n->closed;
    void *carg = n->closed_arg;
    if (node_current == n)
        node_current = NULL;
    node_free_merged(n);
    free(n->journal_text);
    json_decref(n->cluster);
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
    if (node_current == n)
        node_current = NULL;
    /* Pending store callbacks run (with errors) while the store closes; n stays valid
     * until the store is gone. */
    store_close(n->store, node_on_store_closed, n);
}

/* ---- status and cluster view ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
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
    char **v = calloc(NODE_MAX_MERGED, sizeof(char *));
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
            if ((v[k] = strdup(addr)))
                k++;
        }
    }
    if (k > 1)
        qsort(v, k, sizeof(char *), cmp_str);
    node_free_merged(n);
    n->merged = v;
    n->n_merged = k;
}

struct node_get {
    struct node *n;
    json_t *self;
    int64_t now;
};

static void node_on_nodes(void *arg, int status, const struct store_node_status *nodes, size_t cnt)
{
    struct node_get *g = arg;
    struct node *n = g->n;
    n->get_busy = false;
    json_t *peers = json_array();
    if (status < 0) {
        log_warn_ratelimited(&n->rl_get, node_mono(n), 60000,
                             "cannot read the cluster's node status from the store: %s",
                             strerror(-status));
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
                             strerror(-status));
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
        json_array_append_new(fl, json_pack("{s:s,s:I}", "addr", n->flags[i].addr, "until",
                                            (json_int_t)n->flags[i].until_ms));
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
                             "cannot append to the event log in the store: %s", strerror(-status));
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
                                 p->set ? "write" : "delete", strerror(-status));
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

/* ---- attack detection ---- */

static bool node_exempt(const struct node *n, const char *addr)
{
    struct net_addr a;
    if (!n->exempt || net_addr_parse(addr, strlen(addr), &a) < 0)
        return false;
    return net_set_contains(n->exempt, &a);
}

static bool node_flagged_local(const struct node *n, const char *addr, int64_t now)
{
    for (size_t i = 0; i < n->n_flags; i++)
        if (n->flags[i].until_ms >= now && strcmp(n->flags[i].addr, addr) == 0)
            return true;
    return false;
}

struct node_take {
    struct node *n;
    char addr[64];
    bool unknown_user;
    int64_t limit;
};

static void node_flag(struct node *n, const char *addr, bool unknown_user, int64_t count)
{
    int64_t now = node_wall_ms();
    if (node_flagged_local(n, addr, now))
        return;
    if (n->n_flags == NODE_MAX_FLAGS) {
        memmove(&n->flags[0], &n->flags[1], (NODE_MAX_FLAGS - 1) * sizeof(n->flags[0]));
        n->n_flags--;
    }
    struct node_flag *f = &n->flags[n->n_flags++];
    snprintf(f->addr, sizeof(f->addr), "%s", addr);
    f->until_ms = now + n->flag_ms;
    /* Visible to this node's decider at once; peers see it at their next refresh. */
    char **v = realloc(n->merged, (n->n_merged + 1) * sizeof(char *));
    if (v) {
        n->merged = v;
        if ((v[n->n_merged] = strdup(addr))) {
            n->n_merged++;
            if (n->n_merged > 1)
                qsort(n->merged, n->n_merged, sizeof(char *), cmp_str);
        }
    }
    node_event(n, "attack-flagged", true,
               json_pack("{s:s,s:s,s:I,s:I}", "client", addr, "reason",
                         unknown_user ? "unknown-user" : "errors", "count", (json_int_t)count,
                         "until", (json_int_t)f->until_ms),
               "client %s flagged for %" PRId64 " s: %" PRId64 " %s within %" PRId64 " s", addr,
               n->flag_ms / 1000, count, unknown_user ? "\"User unknown\" rejects" : "rejects",
               n->window_ms / 1000);
}

static void node_on_take(void *arg, int status, const struct window_result *res, size_t cnt)
{
    struct node_take *t = arg;
    struct node *n = t->n;
    n->pending_takes--;
    if (status == -ECANCELED || n->closing) {
        free(t);
        return;
    }
    if (res && cnt == 1 && (res[0].count >= t->limit || !res[0].allowed))
        node_flag(n, t->addr, t->unknown_user, res[0].count);
    else if (!res)
        log_warn_ratelimited(&n->rl_take, node_mono(n), 60000,
                             "attack detector: store failed (%s); rejects not counted",
                             strerror(-status));
    free(t);
}

void node_on_log(struct node *n, const struct maillog_record *rec)
{
    if (n->closing)
        return;
    if (rec->kind == MAILLOG_PROCESS_LIMIT) {
        node_event(n, "process-limit", true,
                   json_pack("{s:s,s:s,s:I}", "service", rec->service, "endpoint", rec->endpoint,
                             "limit", (json_int_t)rec->limit),
                   "master: service \"%s\" (%s) has reached its process limit %lu", rec->service,
                   rec->endpoint, rec->limit);
        return;
    }
    if (rec->kind != MAILLOG_REJECT || !rec->client_addr[0])
        return;
    bool uu = rec->reject_class == MAILLOG_REJECT_UNKNOWN_USER;
    int64_t limit = uu ? n->unknown_limit : n->error_limit;
    if (limit <= 0 || node_exempt(n, rec->client_addr) ||
        node_flagged_local(n, rec->client_addr, node_wall_ms()))
        return;
    if (n->pending_takes > 1000)
        return; /* a store that does not answer: do not pile up requests */
    struct node_take *t = calloc(1, sizeof(*t));
    if (!t)
        return;
    t->n = n;
    snprintf(t->addr, sizeof(t->addr), "%s", rec->client_addr);
    t->unknown_user = uu;
    t->limit = limit;
    char key[128];
    snprintf(key, sizeof(key), "attack:%s:%s", uu ? "uu" : "err", rec->client_addr);
    struct store_op op = {.key = key, .window_ms = n->window_ms, .limit = limit, .amount = 1};
    n->pending_takes++;
    if (store_window_take(n->store, &op, 1, node_wall_ms(), node_on_take, t, NULL) < 0) {
        n->pending_takes--;
        free(t);
    }
}

bool node_client_flagged(const char *addr)
{
    struct node *n = node_current;
    if (!n || !addr || !*addr || n->n_merged == 0)
        return false;
    if (node_exempt(n, addr))
        return false;
    return bsearch(&addr, n->merged, n->n_merged, sizeof(char *), cmp_str) != NULL;
}

size_t node_flagged_count(const struct node *n)
{
    return n->n_merged;
}

void node_event_counts(const struct node *n,
                       void (*fn)(const char *kind, uint64_t count, void *arg), void *arg)
{
    for (size_t i = 0; i < n->n_kinds; i++)
        fn(n->kinds[i].kind, n->kinds[i].count, arg);
}
