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

#include "limits.h"
#include "net.h"
#include "util/log.h"
#include "util/metrics.h"

/* Plans kept for reuse: one per connection with a request in flight is enough. */
#define ENGINE_POOL_MAX 256

enum failure_action { FA_LOCAL, FA_DUNNO, FA_DEFER };

/* One request between limits_plan and the reply. About 14 KB, pooled. */
struct pending {
    struct pending *next; /* free list */
    struct engine *e;
    struct decision *dec;
    struct limits_session *session; /* the connection's (borrowed) */
    struct limits_engine *le;       /* a reference: the rules that planned */
    struct store *store;            /* where ops went */
    struct store_req *sreq;         /* until the store's callback */
    int64_t now_ms;
    uint64_t sent_ns; /* uv_hrtime() when the ops went to the store */
    struct store_op ops[LIMITS_MAX_OPS];
    struct limits_plan plan;
};

/* One rule's override table, followed while the daemon runs (see watch_tick). */
struct table_watch {
    struct engine *e;
    uv_work_t work;
    bool busy;   /* a load is on the thread pool */
    bool orphan; /* the rules were swapped meanwhile: free when the load ends */
    size_t rule;
    char *path;
    enum limits_table_type type;
    bool bytes;
    struct stat seen; /* the version last loaded or reported */
    bool stat_failed; /* stat's failure was logged */
    /* the load's result */
    struct stat st;
    struct limits_table *table;
    struct config_errors errs;
    int rc;
};

/* How often override tables are stat()ed: a change is in force within 2 s. */
#define ENGINE_TABLE_POLL_MS 1000

/* Keys refused in their current window, so only the first refusal is a limit-hit
 * event: direct-mapped by the counter key's hash (a collision can only repeat an
 * event, never lose the first one of a key not seen before). */
#define ENGINE_HIT_SLOTS 4096
#define ENGINE_HIT_EVENT_BURST 100

/* `limits top`: the most refused keys of the last hour on this node, kept with the
 * space-saving algorithm (a new key replaces the least counted one and inherits its
 * count, so a key refused often is never lost; counts may be over by the inherited
 * part, which the answer shows as "error"). */
#define ENGINE_TOP_SLOTS 256
#define ENGINE_TOP_AGE_MS (3600 * 1000)
struct top_entry {
    char key[LIMITS_KEY_MAX]; /* "" when free */
    uint64_t count, error;
    int64_t last_ms;
};
struct hit_slot {
    uint64_t hash;
    int64_t until_ms;
};

struct engine {
    struct server *srv;
    struct hit_slot hits[ENGINE_HIT_SLOTS];
    engine_limit_hit_fn on_hit;
    void *on_hit_arg;
    struct metric *m_hits; /* postsurge_limit_hits_total{rule} */
    struct log_ratelimit rl_hit;
    struct top_entry top[ENGINE_TOP_SLOTS];
    uv_timer_t table_timer;
    bool table_timer_on;
    struct table_watch *watch[LIMITS_MAX_RULES];
    bool node_stressed; /* the overload controller's input: rules use their stress limits */
    struct decider decider;
    struct limits_engine *limits;
    /* Built by on_check from the configuration about to be swapped in. */
    struct limits_engine *prepared;
    const struct config *prepared_for;
    struct store *store;
    int stores_open; /* stores not yet closed (an old one may still be closing) */
    enum failure_action failure_action;
    bool stopping;
    struct pending *pool;
    size_t pool_n;
    struct engine_stats stats;
    struct log_ratelimit rl_fail, rl_err;
    /* Refusal lines per rule (by index): a flood refused at thousands of recipients a
     * second must not become thousands of log lines a second (a soak wrote 8.5 GB in 30
     * minutes). Postfix logs every reject with our action text anyway. */
    struct log_ratelimit rl_deny[LIMITS_MAX_RULES];
    /* For metrics and the status page (engine_metrics.c). */
    struct engine_rule_count rule_counts[ENGINE_RULE_COUNTS];
    size_t n_rule_counts;
    struct metrics_series *store_latency;
    struct engine_refusal recent[ENGINE_RECENT_REFUSALS]; /* a ring */
    size_t n_recent, recent_next;
};

/* Refusal lines each rule may log per log_repeat_interval; the next line after a pause
 * says how many were left out. Every refusal is still counted in the metrics. */
#define ENGINE_DENY_LOG_BURST 100

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

/* Wall clock ms: nodes sharing a Redis must agree on it (window.h). */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

static void format_window(int64_t ms, char *out, size_t outsz)
{
    static const struct {
        int64_t ms;
        char unit;
    } units[] = {{86400000, 'd'}, {3600000, 'h'}, {60000, 'm'}, {1000, 's'}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(out, outsz, "%" PRId64 "%c", ms / units[i].ms, units[i].unit);
            return;
        }
    snprintf(out, outsz, "%" PRId64 "ms", ms);
}

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
    format_window(d->window_ms, win, sizeof(win));
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

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The value part of a counter key ("RULE:HASH:VALUE", the value %-encoded) as the
 * client sent it, for people to read. */
static void key_text(const char *key, char *out, size_t outsz)
{
    const char *v = key ? strchr(key, ':') : NULL;
    v = v ? strchr(v + 1, ':') : NULL;
    v = v ? v + 1 : key ? key : "";
    size_t o = 0;
    for (; *v && o + 1 < outsz; v++) {
        int hi, lo;
        if (*v == '%' && (hi = hexval(v[1])) >= 0 && (lo = hexval(v[2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            v += 2;
        } else {
            out[o++] = *v;
        }
    }
    out[o] = '\0';
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
            key_text(d->key, r->key, sizeof(r->key));
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
        p->ops[i] = (struct store_op){op->key, op->window_ms, op->limit, op->amount};
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

/* ---- control commands ---- */

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
    (void)e;
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

static void limits_reset(struct engine *e, const char *rule, const char *value,
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

static void limits_show(struct engine *e, const char *rule, const char *value,
                        engine_reply_fn reply, void *arg)
{
    struct limits_engine *le = e->limits;
    char canon[LIMITS_MAX_VALUE + 1];
    const struct limits_rule *r = rule_value(e, rule, value, canon, sizeof(canon), reply, arg);
    if (r == NULL)
        return;
    /* The limit in force and where it comes from. */
    int64_t limit = r->limit, window = r->window_ms;
    const char *source = "rule";
    if (e->node_stressed && r->has_stress) {
        limit = r->stress_limit;
        source = "stress";
    }
    if (r->table != NULL) {
        struct net_addr a, *ap = NULL;
        struct net_cidr c;
        if (r->table_type == LIMITS_TABLE_CIDR) {
            for (size_t k = 0, off = 0; k < r->n_parts; k++) {
                size_t len = strcspn(canon + off, "|");
                if (r->part[k] == LIMITS_KEY_CLIENT_ADDRESS &&
                    net_cidr_parse(canon + off, len, &c, NULL) == 0) {
                    a = c.addr;
                    ap = &a;
                }
                off += len + 1;
            }
        }
        int64_t tv;
        if (limits_table_lookup(r->table, canon, strlen(canon), ap, &tv)) {
            limit = tv;
            source = "table";
        }
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
    q->n_ops = 1;
    limits_counter_key(r, false, canon, q->keys[0], sizeof(q->keys[0]));
    /* Amount 0: reads the count, counts nothing. */
    q->ops[0] = (struct store_op){q->keys[0], r->window_ms, LIMITS_COUNT_ONLY, 0};
    if (r->has_stress && r->stress_window_ms != r->window_ms) {
        limits_counter_key(r, true, canon, q->keys[1], sizeof(q->keys[1]));
        q->ops[1] = (struct store_op){q->keys[1], r->stress_window_ms, LIMITS_COUNT_ONLY, 0};
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

static void limits_top(struct engine *e, const char *rule, engine_reply_fn reply, void *arg)
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
        reply(arg, json_pack("{s:b,s:o,s:b,s:s}", "ok", 1, "rules", rules, "stressed",
                             e->node_stressed, "store", e->store ? store_kind(e->store) : ""));
    } else if (argc == 4 && strcmp(argv[1], "show") == 0) {
        limits_show(e, argv[2], argv[3], reply, arg);
    } else if ((argc == 2 || argc == 3) && strcmp(argv[1], "top") == 0) {
        limits_top(e, argc == 3 ? argv[2] : NULL, reply, arg);
    } else if (argc == 4 && strcmp(argv[1], "reset") == 0) {
        limits_reset(e, argv[2], argv[3], reply, arg);
    } else {
        reply(arg,
              json_pack("{s:b,s:s}", "ok", 0, "error",
                        "usage: limits list | limits top [RULE] | limits show|reset RULE VALUE"));
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
