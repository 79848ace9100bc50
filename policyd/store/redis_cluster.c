/* redis_cluster: counters, node status and events in a Redis Cluster, with hiredis
 * 0.14.1's async API (it knows nothing of clusters). The slot map comes from CLUSTER
 * SLOTS; each command goes to the master of its key's slot (crc16.c), over one connection
 * per master, so a decision's script calls go out to all of its masters in the same loop
 * turn and are answered in one round trip to each. MOVED updates the map and retries,
 * ASK retries once after ASKING, both bounded by CLUSTER_MAX_REDIRECTS; a lost node,
 * CLUSTERDOWN or MOVED refreshes the map, which is how a promoted replica is found. As in
 * store_redis.c a timer bounds every request by redis_timeout, and what the cluster does
 * not answer in time is answered per store_failure_action. */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "util/log.h"
#include "cluster_map.h"
#include "crc16.h"
#include "sha1.h"

#define CLUSTER_MAX_NODES 64
#define CLUSTER_NO_NODE 0xffff
/* MOVED and ASK followed for one command before it counts as failed. */
#define CLUSTER_MAX_REDIRECTS 5
/* Slot map reads at most this often (MOVED storms during a reshard). */
#define CLUSTER_REFRESH_MIN_MS 100
/* While a master of the map is failed, the map is read this often: the cluster promotes
 * its replica without telling us. */
#define CLUSTER_FAILED_REFRESH_MS 500
/* A node that does not answer CLUSTER SLOTS is given up after this long at the least. */
#define CLUSTER_QUERY_MIN_MS 500
#define CLUSTER_BACKOFF_MIN_MS 50
/* privdata of a counter command: request id << 12 | redirects << 8 | asking << 7 | op
 * index (below STORE_MAX_OPS, 64). */
#define CLUSTER_PD(id, redirects, asking, idx)                                                     \
    ((void *)(uintptr_t)(((uintptr_t)(id) << 12) | ((uintptr_t)(redirects) << 8) |                 \
                         ((uintptr_t)(asking) << 7) | (uintptr_t)(idx)))

struct cluster;

struct cluster_node {
    struct cluster *c;
    int idx; /* in c->nodes */
    char ip[64];
    int port;
    char where[80];
    redisAsyncContext *ac;
    uint64_t retry_at; /* uv_now() before which a failed node is not reconnected */
    int64_t backoff_ms;
    bool in_map; /* a master in the latest slot map */
    bool failed; /* lost since it last answered */
    struct redis_progress prog;
};

struct cluster {
    struct store *s;
    struct config_store_url url; /* seeds and password */
    char sha[41];
    uint16_t slots[CLUSTER_SLOTS];
    struct cluster_node *nodes[CLUSTER_MAX_NODES];
    int nnodes;
    bool have_map;
    struct redis_health h;
    struct redis_inflight in;
    uint64_t next_id;
    int64_t backoff_max_ms;
    /* slot map refresh: one query connection, to a known master or a seed */
    uv_timer_t refresh_timer;
    uv_timer_t query_timer;
    redisAsyncContext *q;
    char q_where[80];
    bool refreshing, refresh_again;
    int tried;
    uint64_t last_refresh;
    int64_t refresh_backoff_ms;
    char reasons[600];
};

static uint64_t cluster_now(struct cluster *c)
{
    return uv_now(c->s->loop);
}

/* A failure at node where (empty: the cluster): requests are answered without it. */
static void cluster_note_failure(struct cluster *c, const char *where, enum redis_trouble k,
                                 const char *what)
{
    c->s->stats.connected = false;
    redis_health_trouble(&c->h, where, k, what, true);
}

/* True when every master of the map is connected and none failed since it answered. */
static bool cluster_all_up(struct cluster *c)
{
    for (int i = 0; i < c->nnodes; i++)
        if (c->nodes[i]->in_map && (!c->nodes[i]->ac || c->nodes[i]->failed))
            return false;
    return c->have_map;
}

static void cluster_note_success(struct cluster *c, struct cluster_node *n)
{
    n->failed = false;
    n->backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    c->s->stats.connected = true;
    /* As with a single Redis: once every master answers, shared counting resumes. */
    if ((c->h.degraded || c->h.trouble != REDIS_OK_NOW || !c->s->stats.state[0]) &&
        cluster_all_up(c))
        redis_health_ok(&c->h);
}

static void cluster_schedule_refresh(struct cluster *c);

/* --- nodes --- */

static int cluster_node_get(struct cluster *c, const char *ip, int port)
{
    for (int i = 0; i < c->nnodes; i++)
        if (c->nodes[i]->port == port && strcmp(c->nodes[i]->ip, ip) == 0)
            return i;
    if (c->nnodes == CLUSTER_MAX_NODES || strlen(ip) >= sizeof(c->nodes[0]->ip))
        return -1;
    struct cluster_node *n = calloc(1, sizeof(*n));
    if (!n)
        return -1;
    n->c = c;
    n->idx = c->nnodes;
    snprintf(n->ip, sizeof(n->ip), "%s", ip);
    n->port = port;
    snprintf(n->where, sizeof(n->where), strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
    n->backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    c->nodes[c->nnodes] = n;
    return c->nnodes++;
}

/* The node's connection is gone (hiredis frees it; its pending commands get NULL
 * replies, which fail their requests): back off, and read the map again, since a replica
 * may be promoted in its place. */
static void cluster_node_lost(struct cluster_node *n, const char *why)
{
    struct cluster *c = n->c;
    n->ac = NULL;
    n->prog.outstanding = 0;
    n->failed = true;
    n->retry_at = cluster_now(c) + (uint64_t)n->backoff_ms;
    n->backoff_ms *= 2;
    if (n->backoff_ms > c->backoff_max_ms)
        n->backoff_ms = c->backoff_max_ms;
    if (c->s->closing)
        return;
    cluster_note_failure(c, n->where, REDIS_UNREACHABLE, why);
    cluster_schedule_refresh(c);
}

static void cluster_on_node_connect(const redisAsyncContext *ac, int status)
{
    struct cluster_node *n = ac->data;
    if (!n || status == REDIS_OK)
        return;
    char what[200];
    snprintf(what, sizeof(what), "cannot connect: %.150s", ac->errstr);
    cluster_node_lost(n, what);
}

static void cluster_on_node_disconnect(const redisAsyncContext *ac, int status)
{
    struct cluster_node *n = ac->data;
    if (!n || n->ac != ac)
        return;
    char what[200];
    snprintf(what, sizeof(what), "connection lost: %.150s",
             status == REDIS_OK ? "closed" : ac->errstr);
    cluster_node_lost(n, what);
}

static void cluster_on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cluster_node *n = ac->data;
    redisReply *rep = reply;
    (void)privdata;
    if (!n || !rep)
        return;
    redis_progress_reply(&n->prog, rep, cluster_now(n->c));
    if (rep->type == REDIS_REPLY_ERROR)
        redis_health_error_reply(&n->c->h, n->where, "AUTH refused", rep->str, true);
}

/* The node's connection, made if needed; NULL while it backs off after a failure. */
static redisAsyncContext *cluster_node_ac(struct cluster_node *n)
{
    struct cluster *c = n->c;
    if (n->ac)
        return n->ac;
    if (c->s->closing || cluster_now(c) < n->retry_at)
        return NULL;
    redisAsyncContext *ac = redisAsyncConnect(n->ip, n->port);
    if (!ac || ac->err || redis_uv_attach(ac, c->s->loop, &n->prog.outstanding) < 0) {
        char what[200];
        snprintf(what, sizeof(what), "cannot connect: %.150s",
                 ac && ac->err ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        cluster_node_lost(n, what);
        return NULL;
    }
    ac->data = n;
    redisAsyncSetConnectCallback(ac, cluster_on_node_connect);
    redisAsyncSetDisconnectCallback(ac, cluster_on_node_disconnect);
    n->ac = ac;
    n->prog.outstanding = 0;
    if (c->url.password[0]) {
        const char *argv[2] = {"AUTH", c->url.password};
        redisAsyncCommandArgv(ac, cluster_on_auth, NULL, 2, argv, NULL);
        redis_progress_sent(&n->prog, cluster_now(c));
    }
    return ac;
}

/* Drops a node's connection on our side (a stall): pending commands are failed now. */
static void cluster_node_drop(struct cluster_node *n, const char *why)
{
    redisAsyncContext *ac = n->ac;
    /* Marked down first: the failed requests' callbacks may send again. */
    cluster_node_lost(n, why);
    if (ac) {
        /* Keep ac->data: the NULL replies hiredis gives the pending commands fail their
         * requests; the disconnect callback sees n->ac != ac and does nothing. */
        redisAsyncFree(ac);
    }
}

/* --- counters --- */

static void cluster_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends op idx of req to node ni (or its slot's master when ni < 0). 0 or -errno. */
static int cluster_send_op(struct cluster *c, struct store_req *req, size_t idx, int ni,
                           unsigned redirects, bool asking, bool eval)
{
    const struct store_req_op *op = &req->ops[idx];
    if (ni < 0) {
        unsigned slot = crc16_key_slot(op->key, op->keylen);
        if (c->slots[slot] == CLUSTER_NO_NODE)
            return -ENOTCONN;
        ni = c->slots[slot];
    }
    struct cluster_node *n = c->nodes[ni];
    redisAsyncContext *ac = cluster_node_ac(n);
    if (!ac)
        return -ENOTCONN;
    if (asking) {
        redisAsyncCommand(ac, NULL, NULL, "ASKING");
    }
    unsigned char args[WINDOW_LUA_ARGS_LEN];
    window_lua_args(req->now_ms, op->window_ms, op->limit, op->amount, args);
    const char *argv[5] = {eval ? "EVAL" : "EVALSHA", eval ? window_lua_script : c->sha, "1",
                           op->key, (const char *)args};
    size_t len[5] = {strlen(argv[0]), strlen(argv[1]), 1, op->keylen, sizeof(args)};
    if (redisAsyncCommandArgv(ac, cluster_on_reply, CLUSTER_PD(req->id, redirects, asking, idx), 5,
                              argv, len) != REDIS_OK)
        return -ENOTCONN;
    redis_progress_sent(&n->prog, cluster_now(c));
    return 0;
}

/* Sends every op of req, each to its slot's master. 0, or the first error (req is then
 * still in the list, for the caller to fail). */
static int cluster_send_req(struct cluster *c, struct store_req *req)
{
    req->sent = true;
    for (size_t i = 0; i < req->n; i++) {
        int rc = cluster_send_op(c, req, i, -1, 0, false, false);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void cluster_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cluster_node *n = ac->data;
    if (!n)
        return; /* the store is closing: its requests were answered */
    struct cluster *c = n->c;
    redisReply *rep = reply;
    redis_progress_reply(&n->prog, rep, cluster_now(c));
    uint64_t id = (uint64_t)((uintptr_t)privdata >> 12);
    unsigned redirects = (unsigned)(((uintptr_t)privdata >> 8) & 0xf);
    bool asking = ((uintptr_t)privdata & 0x80) != 0;
    size_t idx = (size_t)((uintptr_t)privdata & 0x7f);
    struct store_req *req = redis_inflight_find(&c->in, id);
    if (!req || idx >= req->n || req->ops[idx].answered)
        return;
    if (!rep) {
        redis_inflight_fail(&c->in, req, -ECONNRESET);
        return;
    }
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0) {
        cluster_note_success(c, n);
        req->results[idx].allowed = (rep->integer & 1) != 0;
        req->results[idx].count = rep->integer >> 1;
        req->ops[idx].answered = true;
        if (--req->npending > 0)
            return;
        redis_inflight_answered(&c->in, req);
        return;
    }
    char what[300];
    if (rep->type != REDIS_REPLY_ERROR) {
        cluster_note_failure(c, n->where, REDIS_ERROR, "unexpected reply to the window script");
        redis_inflight_fail(&c->in, req, -EPROTO);
        return;
    }
    if (strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        c->s->stats.noscript++;
        /* After an ASK the script goes to the importing node again, with ASKING. */
        if (cluster_send_op(c, req, idx, n->idx, redirects, asking, true) == 0)
            return;
        redis_inflight_fail(&c->in, req, -ENOTCONN);
        return;
    }
    bool moved = strncmp(rep->str, "MOVED ", 6) == 0, ask = strncmp(rep->str, "ASK ", 4) == 0;
    if (moved || ask) {
        unsigned slot;
        char ip[64];
        int port, ni;
        if (redirects >= CLUSTER_MAX_REDIRECTS) {
            snprintf(what, sizeof(what), "more than %d redirects for one key (last: %.100s)",
                     CLUSTER_MAX_REDIRECTS, rep->str);
            cluster_note_failure(c, n->where, REDIS_ERROR, what);
            cluster_schedule_refresh(c);
            redis_inflight_fail(&c->in, req, -EPROTO);
            return;
        }
        if (cluster_map_parse_redirect(rep->str, &slot, ip, sizeof(ip), &port) &&
            (ni = cluster_node_get(c, ip, port)) >= 0) {
            if (moved) {
                /* The slot has a new owner for good: route there from now on, and read
                 * the whole map again (a failover or reshard moves many slots). */
                c->slots[slot] = (uint16_t)ni;
                cluster_schedule_refresh(c);
            }
            if (cluster_send_op(c, req, idx, ni, redirects + 1, ask, false) == 0)
                return;
            redis_inflight_fail(&c->in, req, -ENOTCONN);
            return;
        }
        snprintf(what, sizeof(what), "bad redirect: %.150s", rep->str);
        cluster_note_failure(c, n->where, REDIS_ERROR, what);
        redis_inflight_fail(&c->in, req, -EPROTO);
        return;
    }
    c->s->stats.connected = false;
    redis_health_error_reply(&c->h, n->where, "error reply to the window script", rep->str, true);
    if (strncmp(rep->str, "CLUSTERDOWN", 11) == 0 || strncmp(rep->str, "TRYAGAIN", 8) == 0)
        cluster_schedule_refresh(c);
    redis_inflight_fail(&c->in, req, -EPROTO);
}

/* The in-flight timer failed the requests past their deadline (any): log, and drop the
 * nodes that stalled. */
static void cluster_on_expired(struct redis_inflight *in, uint64_t now, bool any)
{
    struct cluster *c = in->owner;
    if (any)
        cluster_note_failure(c, "", REDIS_TIMEOUT, "no reply within redis_timeout");
    for (int i = 0; i < c->nnodes; i++) {
        struct cluster_node *n = c->nodes[i];
        if (n->ac && redis_progress_stalled(&n->prog, now, in->timeout_ms))
            cluster_node_drop(n, "stalled: no reply");
    }
}

static void cluster_submit(struct store *s, struct store_req *req)
{
    struct cluster *c = s->impl;
    req->id = ++c->next_id;
    if (!c->have_map && !c->refreshing) {
        cluster_note_failure(c, "", REDIS_UNREACHABLE,
                             "no slot map (no node answered CLUSTER SLOTS)");
        redis_health_finish_failed(&c->h, req, -ENOTCONN);
        return;
    }
    redis_inflight_add(&c->in, req);
    /* Without a map yet, the request waits (up to its deadline) for the first one. */
    if (c->have_map) {
        int rc = cluster_send_req(c, req);
        if (rc < 0) {
            cluster_note_failure(c, "", REDIS_UNREACHABLE,
                                 "a master of this request is not reachable");
            redis_inflight_fail(&c->in, req, rc);
            return;
        }
    }
}

static void cluster_unlink(struct store *s, struct store_req *req)
{
    struct cluster *c = s->impl;
    redis_inflight_unlink(&c->in, req);
}

/* --- the slot map --- */

static void cluster_refresh_next(struct cluster *c);
static void cluster_on_refresh_timer(uv_timer_t *h);

static void cluster_query_drop(struct cluster *c)
{
    redisAsyncContext *q = c->q;
    c->q = NULL;
    uv_timer_stop(&c->query_timer);
    if (q) {
        q->data = NULL;
        redisAsyncFree(q);
    }
}

static void cluster_query_failed(struct cluster *c, const char *why)
{
    size_t l = strlen(c->reasons);
    snprintf(c->reasons + l, sizeof(c->reasons) - l, "%s%s: %.100s", l ? "; " : "", c->q_where,
             why);
    cluster_query_drop(c);
    cluster_refresh_next(c);
}

static void cluster_on_query_connect(const redisAsyncContext *ac, int status)
{
    struct cluster *c = ac->data;
    if (!c || status == REDIS_OK)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    c->q = NULL;
    char why[160];
    snprintf(why, sizeof(why), "cannot connect: %.120s", ac->errstr);
    cluster_query_failed(c, why);
}

static void cluster_on_query_disconnect(const redisAsyncContext *ac, int status)
{
    struct cluster *c = ac->data;
    (void)status;
    if (!c)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    c->q = NULL;
    cluster_query_failed(c, "connection lost");
}

static void cluster_on_query_timeout(uv_timer_t *h)
{
    struct cluster *c = h->data;
    cluster_query_failed(c, "no answer in time");
}

/* Sends the requests that waited for a map. */
static void cluster_send_waiting(struct cluster *c)
{
    struct store_req *req = c->in.list.head;
    while (req) {
        struct store_req *next = req->next;
        if (!req->sent) {
            int rc = cluster_send_req(c, req);
            if (rc < 0)
                redis_inflight_fail(&c->in, req, rc);
        }
        req = next;
    }
}

static void cluster_on_slots(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cluster *c = ac->data;
    redisReply *rep = reply;
    (void)privdata;
    if (!c || !rep)
        return;
    if (rep->type != REDIS_REPLY_ARRAY) {
        char why[200];
        snprintf(why, sizeof(why), "CLUSTER SLOTS: %.150s",
                 rep->type == REDIS_REPLY_ERROR ? rep->str : "not an array");
        cluster_query_failed(c, why);
        return;
    }
    static uint16_t map[CLUSTER_SLOTS];
    for (size_t i = 0; i < CLUSTER_SLOTS; i++)
        map[i] = CLUSTER_NO_NODE;
    bool used[CLUSTER_MAX_NODES] = {false};
    size_t covered = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        unsigned from, to;
        const char *ip;
        int port;
        if (!cluster_map_slots_entry(rep->element[i], &from, &to, &ip, &port))
            continue;
        if (!ip[0] || strcmp(ip, "?") == 0) {
            /* An empty address is the node we asked. */
            ip = ((redisAsyncContext *)ac)->c.tcp.host;
        }
        int ni = cluster_node_get(c, ip, port);
        if (ni < 0)
            continue;
        used[ni] = true;
        for (unsigned sl = from; sl <= to; sl++)
            map[sl] = (uint16_t)ni;
        covered += (size_t)(to - from + 1);
    }
    if (covered == 0) {
        cluster_query_failed(c, "CLUSTER SLOTS lists no slot");
        return;
    }
    int masters = 0;
    bool changed = !c->have_map || memcmp(map, c->slots, sizeof(map)) != 0;
    for (int i = 0; i < c->nnodes; i++) {
        c->nodes[i]->in_map = used[i];
        masters += used[i];
    }
    memcpy(c->slots, map, sizeof(map));
    if (changed)
        log_info("redis cluster: slot map from %s: %d masters, %zu of %d slots covered", c->q_where,
                 masters, covered, CLUSTER_SLOTS);
    c->have_map = true;
    c->refreshing = false;
    c->last_refresh = cluster_now(c);
    c->refresh_backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    cluster_query_drop(c);
    cluster_send_waiting(c);
    if (c->refresh_again) {
        c->refresh_again = false;
        cluster_schedule_refresh(c);
        return;
    }
    for (int i = 0; i < c->nnodes; i++)
        if (c->nodes[i]->in_map && c->nodes[i]->failed) {
            uv_timer_start(&c->refresh_timer, cluster_on_refresh_timer, CLUSTER_FAILED_REFRESH_MS,
                           0);
            break;
        }
}

/* Asks the next candidate: the known masters first (whichever is not backing off),
 * then the seeds. */
static void cluster_refresh_next(struct cluster *c)
{
    int total = c->nnodes + c->url.nseeds;
    while (!c->s->closing && c->tried < total) {
        int i = c->tried++;
        const char *ip;
        int port;
        if (i < c->nnodes) {
            struct cluster_node *n = c->nodes[i];
            if (!n->in_map || cluster_now(c) < n->retry_at)
                continue;
            ip = n->ip;
            port = n->port;
        } else {
            ip = c->url.seeds[i - c->nnodes].host;
            port = c->url.seeds[i - c->nnodes].port;
        }
        snprintf(c->q_where, sizeof(c->q_where), strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
        redisAsyncContext *q = redisAsyncConnect(ip, port);
        if (!q || q->err || redis_uv_attach(q, c->s->loop, NULL) < 0) {
            size_t l = strlen(c->reasons);
            snprintf(c->reasons + l, sizeof(c->reasons) - l, "%s%s: cannot connect", l ? "; " : "",
                     c->q_where);
            if (q)
                redisAsyncFree(q);
            continue;
        }
        q->data = c;
        redisAsyncSetConnectCallback(q, cluster_on_query_connect);
        redisAsyncSetDisconnectCallback(q, cluster_on_query_disconnect);
        if (c->url.password[0]) {
            const char *argv[2] = {"AUTH", c->url.password};
            redisAsyncCommandArgv(q, NULL, NULL, 2, argv, NULL);
        }
        redisAsyncCommand(q, cluster_on_slots, NULL, "CLUSTER SLOTS");
        c->q = q;
        int64_t qms =
            c->in.timeout_ms > CLUSTER_QUERY_MIN_MS ? c->in.timeout_ms : CLUSTER_QUERY_MIN_MS;
        uv_timer_start(&c->query_timer, cluster_on_query_timeout, (uint64_t)qms, 0);
        return;
    }
    if (c->s->closing)
        return;
    c->refreshing = false;
    char what[700];
    snprintf(what, sizeof(what), "cannot read the slot map (%s)", c->reasons);
    cluster_note_failure(c, "", REDIS_UNREACHABLE, what);
    if (!c->have_map) {
        /* Requests that waited for a first map are answered now. */
        struct store_req *req = c->in.list.head;
        while (req) {
            struct store_req *next = req->next;
            if (!req->sent)
                redis_inflight_fail(&c->in, req, -ENOTCONN);
            req = next;
        }
    }
    uv_timer_start(&c->refresh_timer, cluster_on_refresh_timer, (uint64_t)c->refresh_backoff_ms, 0);
    c->refresh_backoff_ms *= 2;
    if (c->refresh_backoff_ms > c->backoff_max_ms)
        c->refresh_backoff_ms = c->backoff_max_ms;
}

static void cluster_on_refresh_timer(uv_timer_t *h)
{
    struct cluster *c = h->data;
    if (c->refreshing || c->s->closing)
        return;
    c->refreshing = true;
    c->refresh_again = false;
    c->tried = 0;
    c->reasons[0] = '\0';
    cluster_refresh_next(c);
}

static void cluster_schedule_refresh(struct cluster *c)
{
    if (c->s->closing)
        return;
    if (c->refreshing) {
        c->refresh_again = true;
        return;
    }
    if (uv_is_active((uv_handle_t *)&c->refresh_timer))
        return;
    uint64_t now = cluster_now(c), due = c->last_refresh + CLUSTER_REFRESH_MIN_MS;
    uv_timer_start(&c->refresh_timer, cluster_on_refresh_timer, due > now ? due - now : 0, 0);
}

/* --- life cycle --- */

static void cluster_on_timer_close(uv_handle_t *h)
{
    struct cluster *c = h->data;
    store_handle_closed(c->s);
}

static void cluster_close(struct store *s)
{
    struct cluster *c = s->impl;
    cluster_query_drop(c);
    for (int i = 0; i < c->nnodes; i++) {
        redisAsyncContext *ac = c->nodes[i]->ac;
        c->nodes[i]->ac = NULL;
        if (ac) {
            ac->data = NULL;
            redisAsyncFree(ac);
        }
    }
    s->open_handles += 3;
    redis_inflight_close(&c->in, cluster_on_timer_close);
    uv_close((uv_handle_t *)&c->refresh_timer, cluster_on_timer_close);
    uv_close((uv_handle_t *)&c->query_timer, cluster_on_timer_close);
}

static void cluster_free(struct store *s)
{
    struct cluster *c = s->impl;
    if (!c)
        return;
    for (int i = 0; i < c->nnodes; i++)
        free(c->nodes[i]);
    free(c);
    s->impl = NULL;
}

/* --- cluster operations: node status, events, journal copy ---
 * redis_cluster_ops.c's, each command sent to the master of its key's slot. A redirect
 * or a lost node fails the operation (status < 0) and refreshes the map: its callers
 * publish and read again at their next interval. */

static int cluster_cop_send(struct store *s,
                            void (*fn)(struct redisAsyncContext *ac, void *reply, void *privdata),
                            void *privdata, int argc, const char **argv, const size_t *len)
{
    struct cluster *c = s->impl;
    unsigned slot = crc16_key_slot(argv[1], len[1]);
    if (c->slots[slot] == CLUSTER_NO_NODE)
        return -ENOTCONN;
    struct cluster_node *n = c->nodes[c->slots[slot]];
    redisAsyncContext *ac = cluster_node_ac(n);
    if (!ac || redisAsyncCommandArgv(ac, fn, privdata, argc, argv, len) != REDIS_OK)
        return -ENOTCONN;
    redis_progress_sent(&n->prog, cluster_now(c));
    return 0;
}

static void cluster_cop_reply(redisAsyncContext *ac, const redisReply *rep, bool write)
{
    (void)write;
    struct cluster_node *n = ac->data;
    if (!n)
        return;
    redis_progress_reply(&n->prog, rep, cluster_now(n->c));
    if (rep && rep->type == REDIS_REPLY_ERROR && !n->c->s->closing) {
        redis_health_error_reply(&n->c->h, n->where, "cluster command failed", rep->str, false);
        cluster_schedule_refresh(n->c);
    }
}

static const struct store_vtable cluster_vtable = {
    .name = "redis",
    .submit = cluster_submit,
    .unlink = cluster_unlink,
    .close = cluster_close,
    .free = cluster_free,
    .node_put = redis_cop_node_put,
    .node_get_all = redis_cop_node_get_all,
    .event_append = redis_cop_event_append,
    .event_read = redis_cop_event_read,
    .journal_put = redis_cop_journal_put,
    .counter_del = redis_cop_counter_del,
    .cop_send = cluster_cop_send,
    .cop_reply = cluster_cop_reply,
};

int store_redis_cluster_init(struct store *s, const struct config *cfg,
                             const struct config_store_url *u)
{
    struct cluster *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->s = s;
    c->url = *u;
    for (size_t i = 0; i < CLUSTER_SLOTS; i++)
        c->slots[i] = CLUSTER_NO_NODE;
    sha1_hex(window_lua_script, strlen(window_lua_script), c->sha);
    c->backoff_max_ms = cfg->redis_reconnect_max > 0 ? cfg->redis_reconnect_max : 5000;
    c->refresh_backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    redis_health_init(&c->h, s, "cluster");
    redis_inflight_init(&c->in, &c->h, cfg->redis_timeout > 0 ? cfg->redis_timeout : 100,
                        cluster_on_expired, c);
    uv_timer_init(s->loop, &c->refresh_timer);
    c->refresh_timer.data = c;
    uv_timer_init(s->loop, &c->query_timer);
    c->query_timer.data = c;
    s->impl = c;
    s->vt = &cluster_vtable;
    /* The first map is read now; requests wait for it up to redis_timeout. */
    c->refreshing = true;
    c->tried = 0;
    cluster_refresh_next(c);
    return 0;
}
