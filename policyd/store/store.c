/* store: the store's common core, behind store.h. Requests are checked and copied here,
 * handed to the implementation through its vtable (store_memory.c, store_redis.c),
 * answered from the memory table when the implementation cannot (local fallback) and
 * delivered on the next loop turn (a callback never runs inside the call that started
 * it). The cluster operations are checked here and taken by the implementation. */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

#define MEM_SWEEP_INTERVAL_MS 1000

/* --- requests --- */

void store_req_list_push(struct store_req_list *l, struct store_req *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
}

void store_req_list_remove(struct store_req_list *l, struct store_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
}

/* One line per log_repeat_interval at most while the table is full, with what the waves
 * since the last line dropped. */
static void store_log_waves(struct store *s)
{
    struct mem_wave_log *u = &s->mem.unlogged;
    if (u->waves == 0)
        return;
    uint64_t now = uv_now(s->loop);
    if (s->waves_logged && now - s->waves_logged_ms < (uint64_t)s->log_interval_ms)
        return;
    s->waves_logged = true;
    s->waves_logged_ms = now;
    char fullest[64] = "";
    if (u->live)
        snprintf(fullest, sizeof(fullest),
                 "; the fullest live counter evicted was at %.0f%% of "
                 "its limit",
                 u->max_live_fraction * 100);
    log_warn("memory store full (memory_store_max_keys = %zu): %" PRIu64 " eviction wave%s "
             "dropped %" PRIu64 " expired and %" PRIu64 " live counters%s",
             s->mem.max, u->waves, u->waves == 1 ? "" : "s", u->expired, u->live, fullest);
    *u = (struct mem_wave_log){0};
}

void store_answer_local(struct store *s, struct store_req *req)
{
    /* Hash every key and fetch its bucket, then its entry, then the entry's neighbours,
     * before counting any: the cache misses of a request's counters overlap instead of
     * coming one after another. */
    uint32_t hash[STORE_MAX_OPS];
    size_t nh = req->n < STORE_MAX_OPS ? req->n : STORE_MAX_OPS; /* n <= STORE_MAX_OPS */
    for (size_t i = 0; i < nh; i++) {
        hash[i] = mem_table_hash(req->ops[i].key, req->ops[i].keylen);
        mem_table_prefetch(&s->mem, hash[i], 0);
    }
    for (int stage = 1; stage <= 2; stage++)
        for (size_t i = 0; i < nh; i++)
            mem_table_prefetch(&s->mem, hash[i], stage);
    for (size_t i = 0; i < req->n; i++) {
        struct store_req_op *op = &req->ops[i];
        if (op->answered)
            continue;
        uint32_t h = i < nh ? hash[i] : mem_table_hash(op->key, op->keylen);
        int rc = mem_table_take_hashed(&s->mem, op->key, op->keylen, h, req->now_ms, op->window_ms,
                                       op->limit, op->amount, &req->results[i]);
        if (rc < 0) {
            /* Out of memory for one more counter: let the unit through rather than
             * refuse mail because of our own trouble. */
            req->results[i].allowed = true;
            req->results[i].count = op->amount;
        }
        op->answered = true;
    }
    s->sweep_now_ms = s->mem.now_max;
    s->sweep_mono_ms = uv_now(s->loop);
    store_log_waves(s);
}

static void store_deliver(struct store_req *req)
{
    struct store *s = req->s;
    if (req->status < 0)
        s->stats.failures++;
    req->cb(req->arg, req->status, req->have_results ? req->results : NULL, req->n);
    free(req);
}

static void store_on_idle(uv_idle_t *h)
{
    struct store *s = h->data;
    /* Requests queued by callbacks run now wait for the next turn: bounded work. */
    struct store_req_list batch = s->done;
    s->done.head = s->done.tail = NULL;
    while (batch.head) {
        struct store_req *req = batch.head;
        store_req_list_remove(&batch, req);
        req->where = REQ_NOWHERE;
        store_deliver(req);
    }
    if (!s->done.head)
        uv_idle_stop(&s->idle);
}

void store_req_finish(struct store_req *req, int status)
{
    struct store *s = req->s;
    req->status = status;
    if (status < 0 && s->local_fallback && status != -ECANCELED) {
        store_answer_local(s, req);
        s->stats.local_answers++;
        req->have_results = true;
    } else {
        req->have_results = status == 0;
    }
    if (s->in_submit) {
        req->where = REQ_DONE;
        store_req_list_push(&s->done, req);
        uv_idle_start(&s->idle, store_on_idle);
        return;
    }
    req->where = REQ_NOWHERE;
    store_deliver(req);
}

/* --- public API --- */

static void store_on_sweep(uv_timer_t *h)
{
    struct store *s = h->data;
    /* Every counter is examined within 8 s (each second in small tables): expired ones
     * go and the others' usage steps are brought up to date for the next wave. */
    size_t budget = s->mem.n / 8;
    if (budget < 4096)
        budget = 4096;
    /* The table's time is that of the takes (the callers' clock); after the last take it
     * moves on with the loop's, or counters would never expire once traffic stopped. */
    int64_t now = s->sweep_now_ms + (int64_t)(uv_now(s->loop) - s->sweep_mono_ms);
    if (now > s->mem.now_max)
        s->mem.now_max = now;
    mem_table_sweep(&s->mem, budget);
    mem_table_shrink(&s->mem);
    store_log_waves(s);
}

static void store_free(struct store *s)
{
    if (s->vt->free)
        s->vt->free(s);
    mem_table_free(&s->mem);
    free(s->prefix);
    free(s);
}

void store_handle_closed(struct store *s)
{
    if (--s->open_handles > 0)
        return;
    void (*cb)(void *) = s->on_closed;
    void *arg = s->closed_arg;
    store_free(s);
    if (cb)
        cb(arg);
}

static void store_on_handle_close(uv_handle_t *h)
{
    store_handle_closed(h->data);
}

int store_new(uv_loop_t *loop, const struct config *cfg, struct store **out, char *err,
              size_t errlen)
{
    *out = NULL;
    struct config_store_url u;
    const char *url = cfg->store ? cfg->store : "memory";
    if (config_parse_store_url(url, &u) < 0) {
        snprintf(err, errlen, "store = %s: %s", url, u.error ? u.error : "bad URL");
        return -EINVAL;
    }
    const char *fa = cfg->store_failure_action ? cfg->store_failure_action : "local";
    if (strcmp(fa, "local") != 0 && strcmp(fa, "dunno") != 0 &&
        strcmp(fa, "defer_if_permit") != 0) {
        snprintf(err, errlen, "store_failure_action = %s: use local, dunno or defer_if_permit", fa);
        return -EINVAL;
    }
    struct store *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->vt = &store_memory_vtable;
    s->loop = loop;
    s->local_fallback = strcmp(fa, "local") == 0;
    s->log_interval_ms = cfg->log_repeat_interval > 0 ? cfg->log_repeat_interval : 60000;
    s->prefix = strdup(cfg->store_key_prefix ? cfg->store_key_prefix : "");
    if (!s->prefix) {
        free(s);
        return -ENOMEM;
    }
    s->prefixlen = strlen(s->prefix);
    size_t max = cfg->memory_store_max_keys > 0 ? (size_t)cfg->memory_store_max_keys
                                                : STORE_MEMORY_MAX_ENTRIES;
    if (mem_table_init(&s->mem, max) < 0) {
        free(s->prefix);
        free(s);
        return -ENOMEM;
    }
    if (u.kind != CONFIG_STORE_MEMORY) {
        int rc = u.kind == CONFIG_STORE_REDIS_CLUSTER ? store_redis_cluster_init(s, cfg, &u)
                                                      : store_redis_init(s, cfg, &u, err, errlen);
        if (rc < 0) {
            mem_table_free(&s->mem);
            free(s->prefix);
            free(s);
            return rc;
        }
    }
    uv_idle_init(loop, &s->idle);
    s->idle.data = s;
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->sweep_mono_ms = uv_now(loop);
    uv_timer_start(&s->sweep, store_on_sweep, MEM_SWEEP_INTERVAL_MS, MEM_SWEEP_INTERVAL_MS);
    /* Housekeeping alone must not keep a loop alive. */
    uv_unref((uv_handle_t *)&s->sweep);
    *out = s;
    return 0;
}

void store_set_max_entries(struct store *s, size_t max_entries)
{
    s->mem.max = max_entries ? max_entries : 1;
}

const char *store_kind(const struct store *s)
{
    return s->vt->name;
}

int store_window_take(struct store *s, const struct store_op *ops, size_t n, int64_t now_ms,
                      store_take_cb cb, void *arg, struct store_req **reqp)
{
    if (reqp)
        *reqp = NULL;
    if (s->closing)
        return -ESHUTDOWN;
    if (n == 0 || n > STORE_MAX_OPS)
        return -E2BIG;
    if (now_ms < 0 || now_ms > WINDOW_MAX_VALUE)
        return -EINVAL;
    size_t keybytes = 0;
    size_t klen[STORE_MAX_OPS];
    for (size_t i = 0; i < n; i++) {
        if (!ops[i].key)
            return -EINVAL;
        size_t kl = klen[i] = ops[i].keylen ? ops[i].keylen : strlen(ops[i].key);
        if (kl > STORE_MAX_KEY)
            return -ENAMETOOLONG;
        if (ops[i].window_ms <= 0 || ops[i].window_ms > WINDOW_MAX_MS || ops[i].limit < 0 ||
            ops[i].limit > WINDOW_MAX_VALUE || ops[i].amount < 0 ||
            ops[i].amount > WINDOW_MAX_VALUE)
            return -EINVAL;
        keybytes += s->prefixlen + kl + 1;
    }
    size_t size = sizeof(struct store_req) + n * sizeof(struct store_req_op) +
                  n * sizeof(struct window_result) + keybytes;
    struct store_req *req = calloc(1, size);
    if (!req)
        return -ENOMEM;
    req->s = s;
    req->cb = cb;
    req->arg = arg;
    req->now_ms = now_ms;
    req->n = req->npending = n;
    req->results = (struct window_result *)&req->ops[n];
    char *kp = (char *)&req->results[n];
    for (size_t i = 0; i < n; i++) {
        size_t kl = klen[i];
        memcpy(kp, s->prefix, s->prefixlen);
        memcpy(kp + s->prefixlen, ops[i].key, kl);
        kp[s->prefixlen + kl] = '\0';
        req->ops[i] = (struct store_req_op){.key = kp,
                                            .keylen = s->prefixlen + kl,
                                            .window_ms = ops[i].window_ms,
                                            .limit = ops[i].limit,
                                            .amount = ops[i].amount};
        kp += s->prefixlen + kl + 1;
    }
    s->stats.takes++;
    s->stats.ops += n;
    if (reqp)
        *reqp = req;
    s->in_submit = true;
    s->vt->submit(s, req);
    s->in_submit = false;
    return 0;
}

void store_req_cancel(struct store_req *req)
{
    if (!req)
        return;
    struct store *s = req->s;
    if (req->where == REQ_DONE) {
        store_req_list_remove(&s->done, req);
    } else if (req->where == REQ_INFLIGHT) {
        /* Replies for this id will find nothing and be dropped. */
        s->vt->unlink(s, req);
    }
    free(req);
}

void store_get_stats(const struct store *s, struct store_stats *st)
{
    *st = s->stats;
    st->evictions = s->mem.evictions;
    st->expired = s->mem.expired;
    st->wave_expired = s->mem.wave_expired;
    st->waves = s->mem.waves;
    st->entries = s->mem.n;
    st->max_entries = s->mem.max;
    if (s->vt == &store_memory_vtable)
        st->connected = true;
}

void store_close(struct store *s, void (*on_closed)(void *arg), void *arg)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    s->on_closed = on_closed;
    s->closed_arg = arg;
    /* One count for this function, so no close callback frees s before it returns. */
    s->open_handles = 3;
    s->vt->close(s);
    while (s->done.head) {
        struct store_req *req = s->done.head;
        store_req_list_remove(&s->done, req);
        req->where = REQ_NOWHERE;
        req->status = -ECANCELED;
        req->have_results = false;
        store_deliver(req);
    }
    uv_close((uv_handle_t *)&s->idle, store_on_handle_close);
    uv_close((uv_handle_t *)&s->sweep, store_on_handle_close);
    store_handle_closed(s);
}

/* --- cluster operations: checked here, taken by the backend through its vtable --- */

/* The entry of every cluster call, in this order: *req cleared (memory calls finish
 * before returning; Redis calls here take no handle either), -ESHUTDOWN once closing,
 * -EINVAL when args_ok is false. Returns 0 when the backend may take the call. */
static int cluster_enter(struct store *s, struct store_req **req, bool args_ok)
{
    if (req)
        *req = NULL;
    if (s->closing)
        return -ESHUTDOWN;
    return args_ok ? 0 : -EINVAL;
}

int store_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                   int64_t ttl_ms, store_done_cb cb, void *arg, struct store_req **req)
{
    int rc = cluster_enter(s, req, node && *node && json && strlen(node) <= STORE_MAX_KEY);
    return rc < 0 ? rc : s->vt->node_put(s, node, json, now_ms, ttl_ms, cb, arg);
}

int store_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg,
                       struct store_req **req)
{
    int rc = cluster_enter(s, req, cb != NULL);
    return rc < 0 ? rc : s->vt->node_get_all(s, now_ms, cb, arg);
}

int store_event_append(struct store *s, const char *json, int64_t max_entries, store_done_cb cb,
                       void *arg, struct store_req **req)
{
    int rc = cluster_enter(s, req, json && max_entries >= 1);
    return rc < 0 ? rc : s->vt->event_append(s, json, max_entries, cb, arg);
}

int store_event_read(struct store *s, size_t max, store_events_cb cb, void *arg,
                     struct store_req **req)
{
    int rc = cluster_enter(s, req, cb != NULL);
    return rc < 0 ? rc : s->vt->event_read(s, max, cb, arg);
}

int store_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                      void *arg, struct store_req **req)
{
    int rc = cluster_enter(s, req, node && *node && strlen(node) <= STORE_MAX_KEY);
    return rc < 0 ? rc : s->vt->journal_put(s, node, json, cb, arg);
}

int store_counter_reset(struct store *s, const char *key, store_done_cb cb, void *arg)
{
    size_t kl = key ? strlen(key) : 0;
    if (s->closing)
        return -ESHUTDOWN;
    if (kl == 0 || kl > STORE_MAX_KEY)
        return -EINVAL;
    char *full = malloc(s->prefixlen + kl + 1);
    if (!full)
        return -ENOMEM;
    memcpy(full, s->prefix, s->prefixlen);
    memcpy(full + s->prefixlen, key, kl + 1);
    /* This node's copy: the memory store's counter, or Redis's local fallback. */
    mem_table_del(&s->mem, full, s->prefixlen + kl);
    int rc = 1;
    if (s->vt->counter_del)
        rc = s->vt->counter_del(s, full, s->prefixlen + kl, cb, arg);
    free(full);
    return rc;
}

int store_overrides_get(struct store *s, const char *field, store_hash_cb cb, void *arg)
{
    int rc = cluster_enter(s, NULL, cb != NULL);
    if (rc == 0 && s->vt->cop_send == NULL)
        rc = -EOPNOTSUPP;
    return rc < 0 ? rc : redis_cop_overrides_get(s, field, cb, arg);
}

int store_overrides_put(struct store *s, const char *field, const char *value, store_done_cb cb,
                        void *arg)
{
    int rc = cluster_enter(s, NULL, field != NULL && *field);
    if (rc == 0 && s->vt->cop_send == NULL)
        rc = -EOPNOTSUPP;
    return rc < 0 ? rc : redis_cop_overrides_put(s, field, value, cb, arg);
}
