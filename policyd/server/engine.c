/* engine: the rate-limit decider. request → limits_plan → store_window_take (one round
 * trip, async) → limits_finish → reply. Every accepted request is answered: the store
 * calls back within redis_timeout, with local counters or an error that we answer per
 * store_failure_action. SIGHUP swaps the rules (refused as a whole if they do not parse)
 * and, when its settings changed, the store; requests in flight finish with the rules
 * that planned them and move to the new store if the old one was closed under them. */
#define LOG_COMPONENT "limits"
#include "engine.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "limits_engine.h"
#include "net.h"
#include "util/log.h"
#include "util/metrics.h"

#include "engine_impl.h"

void engine_set_node_stressed(struct engine *e, bool stressed)
{
    if (!e)
        return;
    if (stressed != e->node_stressed)
        log_info("node stress %s: rules use their %s limits", stressed ? "on" : "off",
                 stressed ? "stress" : "normal");
    e->node_stressed = stressed;
}

bool engine_node_stressed(const struct engine *e)
{
    return e && e->node_stressed;
}

static enum failure_action failure_action_of(const struct config *cfg)
{
    const char *fa = cfg->store_failure_action ? cfg->store_failure_action : "local";
    if (strcmp(fa, "dunno") == 0)
        return FA_DUNNO;
    if (strcmp(fa, "defer_if_permit") == 0)
        return FA_DEFER;
    return FA_LOCAL;
}

/* ---- pool ---- */

static struct pending *pending_get(struct engine *e)
{
    struct pending *p = e->pool;
    if (p) {
        e->pool = p->next;
        e->pool_n--;
    } else {
        p = malloc(sizeof(*p));
        if (!p)
            return NULL;
    }
    p->next = NULL;
    p->e = e;
    p->dec = NULL;
    p->le = NULL;
    p->store = NULL;
    p->sreq = NULL;
    p->sent_ns = 0;
    return p;
}

static void pending_put(struct engine *e, struct pending *p)
{
    limits_engine_free(p->le);
    p->le = NULL;
    if (e->pool_n >= ENGINE_POOL_MAX) {
        free(p);
        return;
    }
    p->next = e->pool;
    e->pool = p;
    e->pool_n++;
}

/* ---- answers and their log lines ---- */

/* One info line per new limit decision (the connection then logs at debug only), at
 * most ENGINE_DENY_LOG_BURST per rule per log_repeat_interval. */
static void engine_log_deny(struct engine *e, struct decision *dec, const struct limits_decision *d)
{
    const struct policy_request *r = dec->req;
    char win[32] = "";
    char more[64] = "";
    char qid[40];

    policy_queue_id_prefix(r, qid, sizeof(qid));
    if (d->cached) {
        log_debug("%s%s: %s: repeat of a request refused by rule %s: action=%s", qid, dec->peer,
                  r->attr[POLICY_PROTOCOL_STATE] ? r->attr[POLICY_PROTOCOL_STATE] : "",
                  d->rule_name ? d->rule_name : "?", d->action ? d->action : "");
        return;
    }
    if (log_threshold < LOG_LVL_INFO)
        return;
    /* Logged here or deliberately left out: either way not by the connection. */
    dec->logged = true;
    uint64_t supp = 0;
    struct log_ratelimit *rl =
        &e->rl_deny[d->rule >= 0 && d->rule < LIMITS_MAX_RULES ? d->rule : 0];
    if (!log_ratelimit_allow_burst(rl, server_now_ms(dec->srv), server_repeat_ms(dec->srv),
                                   ENGINE_DENY_LOG_BURST, &supp))
        return;
    if (supp)
        snprintf(more, sizeof(more), " (%" PRIu64 " more refusals by this rule not logged)", supp);
    limits_window_text(d->window_ms, win, sizeof(win));
#define A(x) (r->attr[x] ? r->attr[x] : "")
    if (d->dryrun)
        log_info("%s%s: %s client=%s sasl_username=%s sender=<%s> recipient=<%s>: dryrun rule=%s "
                 "key=%s count=%" PRId64 "/%" PRId64 " per %s%s: would answer \"%s\"; action=%s%s",
                 qid, dec->peer, A(POLICY_PROTOCOL_STATE), A(POLICY_CLIENT_ADDRESS),
                 A(POLICY_SASL_USERNAME), A(POLICY_SENDER), A(POLICY_RECIPIENT), d->rule_name,
                 d->key ? d->key : "-", d->count, d->limit, win, d->stressed ? " (stress)" : "",
                 d->rule_action ? d->rule_action : "", d->action, more);
    else
        log_info("%s%s: %s client=%s sasl_username=%s sender=<%s> recipient=<%s>: rule=%s "
                 "key=%s count=%" PRId64 "/%" PRId64 " per %s%s: action=%s%s",
                 qid, dec->peer, A(POLICY_PROTOCOL_STATE), A(POLICY_CLIENT_ADDRESS),
                 A(POLICY_SASL_USERNAME), A(POLICY_SENDER), A(POLICY_RECIPIENT), d->rule_name,
                 d->key ? d->key : "-", d->count, d->limit, win, d->stressed ? " (stress)" : "",
                 d->action, more);
#undef A
    dec->logged = true;
}

/* The refusal counters of rule name (NULL when the table is full). */
static struct engine_rule_count *rule_count(struct engine *e, const char *name)
{
    if (!name)
        name = "?";
    for (size_t i = 0; i < e->n_rule_counts; i++)
        if (strcmp(e->rule_counts[i].name, name) == 0)
            return &e->rule_counts[i];
    if (e->n_rule_counts == ENGINE_RULE_COUNTS)
        return NULL;
    struct engine_rule_count *rc = &e->rule_counts[e->n_rule_counts++];
    snprintf(rc->name, sizeof(rc->name), "%s", name);
    return rc;
}

/* Every rule of the rule set in use has its counters (at 0 before its first refusal). */
static void note_rules(struct engine *e)
{
    for (size_t i = 0; e->limits && i < limits_engine_rule_count(e->limits); i++)
        rule_count(e, limits_engine_rule(e->limits, i)->name);
}

/* Counts a store answer: its kind when it failed, the run of failures it starts or ends. */
static void note_store_status(struct engine *e, int status)
{
    if (status >= 0) {
        e->stats.failing_since_ms = 0;
        return;
    }
    if (status == -ECANCELED && e->stopping)
        return;
    e->stats.store_failures++;
    if (status == -ETIMEDOUT)
        e->stats.store_fail_kind[ENGINE_FAIL_TIMEOUT]++;
    else if (status == -ECONNREFUSED || status == -ECONNRESET || status == -ENOTCONN ||
             status == -EPIPE || status == -EHOSTUNREACH || status == -ENETUNREACH ||
             status == -ECONNABORTED || status == -EIO)
        e->stats.store_fail_kind[ENGINE_FAIL_CONNECTION]++;
    else
        e->stats.store_fail_kind[ENGINE_FAIL_OTHER]++;
    if (!e->stats.failing_since_ms)
        e->stats.failing_since_ms = wall_ms();
}

const char *engine_fail_kind_name(int kind)
{
    static const char *const names[] = {"timeout", "connection", "other"};
    return kind >= 0 && kind < 3 ? names[kind] : "other";
}

/* The reply for a decision; borrowed from the rules or static. */
static const char *decision_action(struct engine *e, struct decision *dec,
                                   const struct limits_decision *d, int store_status)
{
    if (d->store_failed) {
        const char *a;
        e->stats.failure_answers++;
        if (e->failure_action == FA_DEFER)
            a = ENGINE_DEFER_ACTION;
        else if (e->failure_action == FA_DUNNO)
            a = "DUNNO";
        else
            a = dec->srv->cfg->default_action; /* local, but no local answer (closing) */
        log_warn_ratelimited(&e->rl_fail, server_now_ms(dec->srv), server_repeat_ms(dec->srv),
                             "store failed (%s): answering %s", strerror(-store_status), a);
        return a;
    }
    if (d->exempt)
        e->stats.exempt++;
    if (d->deny) {
        struct engine_rule_count *rc = rule_count(e, d->rule_name);
        if (d->dryrun)
            e->stats.dryrun_denies++;
        else
            e->stats.denies++;
        if (rc && d->dryrun)
            rc->dryrun++;
        else if (rc)
            rc->refused++;
        if (!d->cached) {
            struct engine_refusal *r = &e->recent[e->recent_next];
            e->recent_next = (e->recent_next + 1) % ENGINE_RECENT_REFUSALS;
            if (e->n_recent < ENGINE_RECENT_REFUSALS)
                e->n_recent++;
            r->time_ms = wall_ms();
            r->dryrun = d->dryrun;
            snprintf(r->rule, sizeof(r->rule), "%s", d->rule_name ? d->rule_name : "?");
            limits_key_text(d->key, r->key, sizeof(r->key));
        }
        engine_log_deny(e, dec, d);
    }
    return d->action ? d->action : dec->srv->cfg->default_action;
}

/* Answers and releases p. The action may be borrowed from p->le: reply first. */
static void pending_answer(struct pending *p, const struct limits_decision *d, int store_status)
{
    struct engine *e = p->e;
    struct decision *dec = p->dec;
    const char *a = decision_action(e, dec, d, store_status);

    dec->engine_data = NULL;
    dec->done(dec, a, strlen(a));
    pending_put(e, p);
}

static void on_taken(void *arg, int status, const struct window_result *results, size_t n);

static int pending_submit(struct pending *p)
{
    struct engine *e = p->e;
    if (!e->store)
        return -ESHUTDOWN;
    p->store = e->store;
    p->sent_ns = uv_hrtime();
    return store_window_take(e->store, p->ops, p->plan.n_ops, p->now_ms, on_taken, p, &p->sreq);
}

/* Answers as if the store failed with status (no results). */
static void pending_fail(struct pending *p, int status)
{
    struct limits_decision d;
    struct engine *e = p->e;

    note_store_status(e, status);
    if (limits_finish(p->le, p->session, &p->plan, NULL, &d) < 0) {
        memset(&d, 0, sizeof(d));
        d.store_failed = true;
    }
    pending_answer(p, &d, status);
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h ? h : 1;
}

static void top_note(struct engine *e, const char *key, int64_t now_ms)
{
    struct top_entry *min = &e->top[0];
    for (size_t i = 0; i < ENGINE_TOP_SLOTS; i++) {
        struct top_entry *t = &e->top[i];
        if (t->key[0] && now_ms - t->last_ms > ENGINE_TOP_AGE_MS)
            t->key[0] = '\0', t->count = 0;
        if (t->key[0] && strcmp(t->key, key) == 0) {
            t->count++;
            t->last_ms = now_ms;
            return;
        }
        if (t->count < min->count || (min->key[0] && !t->key[0]))
            min = t;
    }
    snprintf(min->key, sizeof(min->key), "%s", key);
    min->error = min->count;
    min->count++;
    min->last_ms = now_ms;
}

/* A refusal counted now: the first one of its key in the window is a limit-hit. */
static void engine_note_hit(struct engine *e, const struct pending *p,
                            const struct limits_decision *d)
{
    if (!d->deny || d->cached || d->key == NULL || d->rule < 0)
        return;
    top_note(e, d->key, p->now_ms);
    uint64_t h = hash_str(d->key);
    struct hit_slot *slot = &e->hits[h & (ENGINE_HIT_SLOTS - 1)];
    if (slot->hash == h && p->now_ms < slot->until_ms)
        return;
    slot->hash = h;
    slot->until_ms = p->now_ms + (d->window_ms > 0 ? d->window_ms : 1000);
    const char *rule = d->rule_name ? d->rule_name : "?";
    metrics_inc(metrics_series(e->m_hits, (const char *const[]){rule}));
    if (e->on_hit == NULL)
        return;
    /* Many keys at once (a spammer rotating senders) must not flood the event log:
     * ENGINE_HIT_EVENT_BURST events per log_repeat_interval, the rest only counted. */
    uint64_t supp = 0;
    if (!log_ratelimit_allow_burst(&e->rl_hit, server_now_ms(e->srv), server_repeat_ms(e->srv),
                                   ENGINE_HIT_EVENT_BURST, &supp))
        return;
    if (supp)
        log_warn("%" PRIu64 " limit-hit events not recorded (more than %d per "
                 "log_repeat_interval); postsurge_limit_hits_total counts them all",
                 supp, ENGINE_HIT_EVENT_BURST);
    /* The key is escaped (limits.c); the client address is shown only if it is one. */
    const char *ca = p->dec->req->attr[POLICY_CLIENT_ADDRESS];
    struct net_addr a;
    if (ca == NULL || net_addr_parse(ca, strlen(ca), &a) != 0)
        ca = "-";
    const char *value = d->key;
    for (int colons = 0; *value && colons < 2; value++)
        colons += *value == ':';
    json_t *extra =
        json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:b}", "rule", rule, "key", d->key, "value", value,
                  "limit", (json_int_t)d->limit, "count", (json_int_t)d->count, "window_ms",
                  (json_int_t)d->window_ms, "client", ca, "dryrun", d->dryrun);
    const struct limits_rule *lr = limits_engine_rule(p->le, (size_t)d->rule);
    if (extra && lr)
        json_object_set_new(extra, "key_spec", json_string(lr->key_spec));
    char text[400];
    snprintf(text, sizeof(text),
             "rule %s: %.200s reached its limit %" PRId64 " (count %" PRId64 ") from client %s%s",
             rule, value, d->limit, d->count, ca, d->dryrun ? " (dryrun)" : "");
    e->on_hit(e->on_hit_arg, extra, text);
}

void engine_set_limit_hit_cb(struct engine *e, engine_limit_hit_fn fn, void *arg)
{
    if (e) {
        e->on_hit = fn;
        e->on_hit_arg = arg;
    }
}

static void on_taken(void *arg, int status, const struct window_result *results, size_t n)
{
    struct pending *p = arg;
    struct engine *e = p->e;
    struct limits_decision d;

    p->sreq = NULL;
    if (e->store_latency && p->sent_ns)
        metrics_observe(e->store_latency, (double)(uv_hrtime() - p->sent_ns) / 1e9);
    /* A store closed by a reload: its replacement answers. */
    if (status == -ECANCELED && !results && !e->stopping && e->store && e->store != p->store) {
        int rc = pending_submit(p);
        if (rc == 0)
            return;
        status = rc;
    }
    if (!results || n != p->plan.n_ops) {
        pending_fail(p, status < 0 ? status : -EPROTO);
        return;
    }
    note_store_status(e, status); /* a failure: answered from local counters */
    int rc = limits_finish(p->le, p->session, &p->plan, results, &d);
    if (rc < 0) {
        /* A bug: fail open rather than leave the client without an answer. */
        log_warn_ratelimited(&e->rl_err, server_now_ms(e->srv), server_repeat_ms(e->srv),
                             "limits_finish: %s; answering default_action", strerror(-rc));
        memset(&d, 0, sizeof(d));
        d.action = e->srv->cfg->default_action;
    }
    engine_note_hit(e, p, &d);
    pending_answer(p, &d, status);
}

/* ---- the decider ---- */

/* Per policy connection: the dedup session, made at the first request that counts. */
struct engine_conn {
    struct limits_session *session;
    bool delegated; /* the pending decision is with the server's default decider */
};

static void engine_conn_free(void *arg)
{
    struct engine_conn *ec = arg;
    if (ec) {
        limits_session_free(ec->session);
        free(ec);
    }
}

static int engine_start(struct decider *dr, struct decision *dec)
{
    struct engine *e = dr->data;
    struct limits_engine *le = e->limits;
    struct engine_conn *ec = dec->conn_state;

    e->stats.decisions++;
    if (!ec) {
        ec = calloc(1, sizeof(*ec));
        if (!ec)
            return -ENOMEM;
        dec->conn_state = ec;
        dec->conn_state_free = engine_conn_free;
    }
    ec->delegated = false;
    if (!le || limits_engine_rule_count(le) == 0) {
        /* No rules: the server's default decider answers (default_action, or a test
         * decider of server/testing.c in the test-only build). */
        struct decider *d = &dec->srv->default_decider;
        ec->delegated = true;
        return d->start(d, dec);
    }
    if (!ec->session) {
        ec->session = limits_session_new();
        if (!ec->session)
            return -ENOMEM;
    }
    struct pending *p = pending_get(e);
    if (!p)
        return -ENOMEM;
    p->dec = dec;
    p->session = ec->session;
    int rc = limits_plan(le, p->session, dec->req, e->node_stressed, &p->plan);
    if (rc < 0) {
        pending_put(e, p);
        return rc;
    }
    if (rc == LIMITS_PLAN_DECIDED) {
        pending_answer(p, &p->plan.decision, 0);
        return 0;
    }
    p->le = limits_engine_ref(le);
    for (size_t i = 0; i < p->plan.n_ops; i++) {
        const struct limits_op *op = &p->plan.ops[i];
        p->ops[i] = (struct store_op){op->key, op->window_ms, op->limit, op->amount, op->keylen};
    }
    p->now_ms = wall_ms();
    e->stats.counted++;
    dec->engine_data = p;
    rc = pending_submit(p);
    if (rc < 0) {
        /* Refused at once (closing, out of memory): answered per store_failure_action. */
        pending_fail(p, rc);
    }
    return 0;
}

static void engine_cancel(struct decider *dr, struct decision *dec)
{
    struct engine *e = dr->data;
    struct pending *p = dec->engine_data;
    struct engine_conn *ec = dec->conn_state;

    if (ec && ec->delegated) {
        struct decider *d = &dec->srv->default_decider;
        if (d->cancel)
            d->cancel(d, dec);
        return;
    }
    if (!p)
        return;
    dec->engine_data = NULL;
    store_req_cancel(p->sreq);
    p->sreq = NULL;
    pending_put(e, p);
}

/* ---- stores ---- */

static void on_store_closed(void *arg)
{
    struct engine *e = arg;
    e->stores_open--;
}

static int open_store(struct engine *e, const struct config *cfg, struct store **out, char *err,
                      size_t errlen)
{
    int rc = store_new(e->srv->loop, cfg, out, err, errlen);
    if (rc == 0) {
        e->stores_open++;
        log_info("store: %s%s%s", store_kind(*out),
                 strcmp(store_kind(*out), "memory") ? " at " : "",
                 strcmp(store_kind(*out), "memory") ? cfg->store : "");
    }
    return rc;
}

static bool str_differs(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") != 0;
}

/* True if the store must be rebuilt for cfg (a memory store keeps its counters through
 * changes of the Redis-only settings). */
static bool engine_store_changed(const struct config *a, const struct config *b)
{
    if (str_differs(a->store, b->store) || str_differs(a->store_key_prefix, b->store_key_prefix))
        return true;
    struct config_store_url u;
    if (config_parse_store_url(b->store ? b->store : "memory", &u) == 0 &&
        u.kind == CONFIG_STORE_MEMORY)
        return false;
    return a->redis_timeout != b->redis_timeout ||
           a->redis_reconnect_max != b->redis_reconnect_max ||
           str_differs(a->store_failure_action, b->store_failure_action) ||
           str_differs(a->redis_sentinel_password, b->redis_sentinel_password);
}

/* The memory counters' figures (the local fallback's with Redis), read at scrape time.
 * They restart from 0 when a reload replaces the store. */
static int engine_collect(struct metrics_out *o, void *arg)
{
    struct engine *e = arg;
    struct store_stats st = {0};
    static const char *const reason_l[] = {"reason"};
    int rc;

    if (e->store)
        store_get_stats(e->store, &st);
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((rc = (x)) < 0)                                                                        \
            return rc;                                                                             \
    } while (0)
    TRY(metrics_out_family(o, METRIC_GAUGE, "postsurge_store_keys",
                           "Counters held in memory (the local fallback's with Redis)."));
    TRY(metrics_out_sample(o, "postsurge_store_keys", NULL, NULL, 0, (double)st.entries));
    TRY(metrics_out_family(o, METRIC_GAUGE, "postsurge_store_max_keys",
                           "The memory_store_max_keys setting: the bound of those counters."));
    TRY(metrics_out_sample(o, "postsurge_store_max_keys", NULL, NULL, 0, (double)st.max_entries));
    TRY(metrics_out_family(o, METRIC_COUNTER, "postsurge_store_expired_total",
                           "Memory counters dropped after their window ended."));
    TRY(metrics_out_sample(o, "postsurge_store_expired_total", NULL, NULL, 0, (double)st.expired));
    TRY(metrics_out_family(o, METRIC_COUNTER, "postsurge_store_eviction_waves_total",
                           "Times the memory counters reached memory_store_max_keys."));
    TRY(metrics_out_sample(o, "postsurge_store_eviction_waves_total", NULL, NULL, 0,
                           (double)st.waves));
    TRY(metrics_out_family(o, METRIC_COUNTER, "postsurge_store_evictions_total",
                           "Memory counters dropped by those waves: expired, or live (their "
                           "key starts again from zero)."));
    const char *expired_v[] = {"expired"}, *live_v[] = {"live"};
    TRY(metrics_out_sample(o, "postsurge_store_evictions_total", reason_l, expired_v, 1,
                           (double)st.wave_expired));
    TRY(metrics_out_sample(o, "postsurge_store_evictions_total", reason_l, live_v, 1,
                           (double)st.evictions));
#undef TRY
    return 0;
}

/* ---- override tables ---- */

static bool stat_differs(const struct stat *a, const struct stat *b)
{
    return a->st_dev != b->st_dev || a->st_ino != b->st_ino || a->st_size != b->st_size ||
           a->st_mtim.tv_sec != b->st_mtim.tv_sec || a->st_mtim.tv_nsec != b->st_mtim.tv_nsec ||
           a->st_ctim.tv_sec != b->st_ctim.tv_sec || a->st_ctim.tv_nsec != b->st_ctim.tv_nsec;
}

static void watch_free(struct table_watch *w)
{
    if (w == NULL)
        return;
    limits_table_free(w->table);
    config_errors_clear(&w->errs);
    free(w->path);
    free(w);
}

/* On the thread pool: read and parse (a 100,000-line table takes tens of ms). */
static void watch_work(uv_work_t *req)
{
    struct table_watch *w = req->data;
    w->rc = limits_table_load(w->type, w->path, w->bytes, &w->table, &w->st, &w->errs);
}

static void watch_after_work(uv_work_t *req, int status)
{
    struct table_watch *w = req->data;
    w->busy = false;
    if (w->orphan || status != 0) {
        watch_free(w);
        return;
    }
    struct engine *e = w->e;
    const struct limits_rule *r = limits_engine_rule(e->limits, w->rule);
    if (w->rc == 0) {
        size_t n = limits_table_count(w->table);
        limits_engine_set_table(e->limits, w->rule, w->table);
        w->table = NULL;
        w->seen = w->st;
        log_info("rule %s: overrides %s reloaded: %zu entries", r ? r->name : "?", w->path, n);
    } else if (w->rc == -EAGAIN) {
        /* Replaced while read: the next tick reads it again. */
        log_debug("rule %s: overrides %s changed while read; reading again", r ? r->name : "?",
                  w->path);
    } else {
        /* Each error of this version once; the previous contents stay in force. */
        for (size_t i = 0; i < w->errs.n; i++)
            log_warn("%s", w->errs.msg[i]);
        log_warn("rule %s: overrides %s not reloaded: keeping the previous contents",
                 r ? r->name : "?", w->path);
        w->seen = w->st;
    }
    config_errors_clear(&w->errs);
}

static void watch_tick(uv_timer_t *t)
{
    struct engine *e = t->data;
    for (size_t i = 0; i < LIMITS_MAX_RULES; i++) {
        struct table_watch *w = e->watch[i];
        if (w == NULL || w->busy)
            continue;
        struct stat st;
        if (stat(w->path, &st) != 0) {
            if (!w->stat_failed)
                log_warn("rule %s: overrides %s: %s; keeping the previous contents",
                         limits_engine_rule(e->limits, i)->name, w->path, strerror(errno));
            w->stat_failed = true;
            continue;
        }
        w->stat_failed = false;
        if (!stat_differs(&st, &w->seen))
            continue;
        w->st = st; /* reported as seen if the load fails before its own stat */
        w->work.data = w;
        if (uv_queue_work(e->srv->loop, &w->work, watch_work, watch_after_work) == 0)
            w->busy = true;
    }
}

/* Follows the override tables of e->limits (after start and every swap). */
static void watch_rebuild(struct engine *e)
{
    for (size_t i = 0; i < LIMITS_MAX_RULES; i++) {
        struct table_watch *w = e->watch[i];
        e->watch[i] = NULL;
        if (w != NULL && w->busy)
            w->orphan = true;
        else
            watch_free(w);
    }
    bool any = false;
    for (size_t i = 0; i < limits_engine_rule_count(e->limits); i++) {
        const struct limits_rule *r = limits_engine_rule(e->limits, i);
        if (r->overrides == NULL)
            continue;
        struct table_watch *w = calloc(1, sizeof(*w));
        if (w == NULL || (w->path = strdup(r->table_path)) == NULL) {
            free(w);
            log_error("rule %s: overrides %s will not be followed (out of memory)", r->name,
                      r->table_path);
            continue;
        }
        w->e = e;
        w->rule = i;
        w->type = r->table_type;
        w->bytes = r->measure == LIMITS_BYTES;
        /* Just read by limits_engine_new. */
        if (stat(w->path, &w->seen) != 0)
            memset(&w->seen, 0, sizeof(w->seen));
        e->watch[i] = w;
        any = true;
    }
    if (any && !e->table_timer_on && !e->stopping) {
        if (uv_timer_init(e->srv->loop, &e->table_timer) == 0) {
            e->table_timer.data = e;
            uv_timer_start(&e->table_timer, watch_tick, ENGINE_TABLE_POLL_MS, ENGINE_TABLE_POLL_MS);
            e->table_timer_on = true;
        }
    }
}

static void watch_stop(struct engine *e)
{
    if (e->table_timer_on) {
        uv_close((uv_handle_t *)&e->table_timer, NULL);
        e->table_timer_on = false;
    }
}

/* ---- hooks ---- */

static int engine_on_check(struct server *srv, const struct config *cfg, struct config_errors *errs,
                           void *arg)
{
    struct engine *e = arg;
    size_t before = errs ? errs->n : 0;
    struct limits_engine *le = limits_engine_new(cfg, errs);

    (void)srv;
    if (!le)
        return errs && errs->n > before ? -EINVAL : -ENOMEM;
    limits_engine_free(e->prepared);
    e->prepared = le;
    e->prepared_for = cfg;
    return 0;
}

static void engine_on_reload(struct server *srv, const struct config *old_cfg, void *arg)
{
    struct engine *e = arg;
    struct limits_engine *le = NULL;

    if (e->prepared && e->prepared_for == srv->cfg) {
        le = e->prepared;
        e->prepared = NULL;
    } else {
        le = limits_engine_new(srv->cfg, NULL);
    }
    limits_engine_free(e->prepared);
    e->prepared = NULL;
    e->prepared_for = NULL;
    if (!le) {
        log_error("reload: cannot build the new rate limits (out of memory); keeping the old");
    } else {
        limits_engine_free(e->limits);
        e->limits = le;
        engine_rt_apply(e);
        watch_rebuild(e);
        e->stats.reloads++;
        note_rules(e);
        log_info("reload: %zu rate-limit rules%s", limits_engine_rule_count(le),
                 srv->cfg->limit_dry_run ? " (limit_dry_run)" : "");
    }
    e->failure_action = failure_action_of(srv->cfg);
    if (e->stopping)
        return;
    if (!engine_store_changed(old_cfg, srv->cfg)) {
        store_set_max_entries(e->store, (size_t)srv->cfg->memory_store_max_keys);
        return;
    }
    struct store *ns = NULL;
    char err[256] = "";
    int rc = open_store(e, srv->cfg, &ns, err, sizeof(err));
    if (rc < 0) {
        log_error("reload: cannot open the new store (%s); keeping the old one",
                  err[0] ? err : strerror(-rc));
        return;
    }
    struct store *old = e->store;
    /* Set first: requests the old store cancels on close move to the new one. */
    e->store = ns;
    store_close(old, on_store_closed, e);
}

static void engine_on_stop(struct server *srv, void *arg)
{
    struct engine *e = arg;
    struct store *s = e->store;

    e->stopping = true;
    watch_stop(e);
    engine_rt_stop(e);
    e->store = NULL;
    server_set_decider(srv, NULL);
    store_close(s, on_store_closed, e);
}

/* ---- public ---- */

int engine_check_config(const struct config *cfg, struct config_errors *errs)
{
    size_t before = errs ? errs->n : 0;
    struct limits_engine *le = limits_engine_new(cfg, errs);

    if (le) {
        limits_engine_free(le);
        return 0;
    }
    if (errs && errs->n > before)
        return (int)(errs->n - before);
    return errs ? -ENOMEM : 1;
}

int engine_new(struct server *srv, struct engine **out, char *err, size_t errlen)
{
    struct config_errors errs = {0};
    struct engine *e = calloc(1, sizeof(*e));
    int rc;

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!e)
        return -ENOMEM;
    e->srv = srv;
    e->limits = limits_engine_new(srv->cfg, &errs);
    if (!e->limits) {
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msg[i]);
        rc = errs.n ? -EINVAL : -ENOMEM;
        if (err && errlen)
            snprintf(err, errlen, "%s", errs.n ? "bad rate-limit rules" : "out of memory");
        config_errors_clear(&errs);
        free(e);
        return rc;
    }
    config_errors_clear(&errs);
    note_rules(e);
    e->failure_action = failure_action_of(srv->cfg);
    rc = open_store(e, srv->cfg, &e->store, err, errlen);
    if (rc < 0) {
        limits_engine_free(e->limits);
        free(e);
        return rc;
    }
    struct server_hook hook = {.on_check = engine_on_check,
                               .on_reload = engine_on_reload,
                               .on_stop = engine_on_stop,
                               .arg = e};
    rc = server_add_hook(srv, &hook);
    if (rc < 0) {
        if (err && errlen)
            snprintf(err, errlen, "too many server hooks");
        /* The store's handles close on the loop; the caller runs it after stop. */
        store_close(e->store, NULL, NULL);
        limits_engine_free(e->limits);
        free(e);
        return rc;
    }
    if (metrics_add_collector(server_metrics(srv), engine_collect, e) < 0)
        log_warn("cannot register the store metrics (out of memory)");
    e->decider.start = engine_start;
    e->decider.cancel = engine_cancel;
    e->decider.data = e;
    server_set_decider(srv, &e->decider);
    e->m_hits = metrics_counter_new(server_metrics(srv), "postsurge_limit_hits_total",
                                    "Keys that reached a rate-limit rule's limit: the first "
                                    "refusal of a key in its window (a limit-hit event).",
                                    (const char *const[]){"rule", NULL});
    watch_rebuild(e);
    engine_rt_start(e);
    log_info("%zu rate-limit rules%s", limits_engine_rule_count(e->limits),
             srv->cfg->limit_dry_run ? " (limit_dry_run)" : "");
    *out = e;
    return 0;
}

void engine_free(struct engine *e)
{
    if (!e)
        return;
    if (e->stores_open > 0)
        log_error("engine freed with %d stores still open", e->stores_open);
    metrics_remove_collector(server_metrics(e->srv), engine_collect, e);
    while (e->pool) {
        struct pending *p = e->pool;
        e->pool = p->next;
        free(p);
    }
    for (size_t i = 0; i < LIMITS_MAX_RULES; i++) {
        if (e->watch[i] != NULL && e->watch[i]->busy)
            e->watch[i]->orphan = true;
        else
            watch_free(e->watch[i]);
    }
    limits_engine_free(e->prepared);
    limits_engine_free(e->limits);
    engine_rt_free(e);
    free(e);
}

void engine_get_stats(const struct engine *e, struct engine_stats *st)
{
    *st = e->stats;
}

const struct engine_rule_count *engine_rule_counts(const struct engine *e, size_t *n)
{
    *n = e->n_rule_counts;
    return e->rule_counts;
}

void engine_recent_refusals(const struct engine *e,
                            void (*fn)(const struct engine_refusal *r, void *arg), void *arg)
{
    for (size_t i = 1; i <= e->n_recent; i++)
        fn(&e->recent[(e->recent_next + ENGINE_RECENT_REFUSALS - i) % ENGINE_RECENT_REFUSALS], arg);
}

void engine_set_store_latency(struct engine *e, struct metrics_series *h)
{
    e->store_latency = h;
}

struct store *engine_store(const struct engine *e)
{
    return e->store;
}

int engine_counters_stats(const struct engine *e, struct store_stats *st)
{
    if (!e || !e->store)
        return -ENOENT;
    store_get_stats(e->store, st);
    return 0;
}
