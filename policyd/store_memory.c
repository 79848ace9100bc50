/* store_memory: the store's common core and its "memory" implementation. Requests are
 * checked and copied here, answered from a bounded hash table of key -> struct window,
 * and delivered on the next loop turn (a callback never runs inside the call that
 * started it). The Redis store reuses the table for its local fallback counters. */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define MEM_MIN_BUCKETS 1024
#define MEM_SWEEP_INTERVAL_MS 1000
/* An eviction wave frees 1/MEM_WAVE_DIVISOR of the bound (about 3 %), so the cost of
 * choosing victims is spread over as many new keys as the wave made room for. */
#define MEM_WAVE_DIVISOR 32
/* Counters a wave's sweep examines for expiry, per counter the wave must free. */
#define MEM_WAVE_SWEEP_FACTOR 2
/* Counters freed after which the sweep returns free heap pages to the system. */
#define MEM_TRIM_AFTER 65536

static void cluster_mem_free(struct store_cluster_mem *c);

/* --- memory table --- */

static uint32_t mem_hash(const char *key, size_t len)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211u;
    }
    return (uint32_t)(h ^ (h >> 32));
}

int mem_table_init(struct mem_table *t, size_t max)
{
    memset(t, 0, sizeof(*t));
    t->nbuckets = MEM_MIN_BUCKETS;
    t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
    if (!t->buckets)
        return -ENOMEM;
    t->max = max ? max : 1;
    return 0;
}

/* Frees every entry; the buckets are left to the caller. */
static void mem_free_entries(struct mem_table *t)
{
    for (size_t k = 0; k < MEM_STEPS; k++) {
        struct mem_entry *e = t->steps[k].head;
        while (e) {
            struct mem_entry *next = e->next;
            free(e);
            e = next;
        }
        t->steps[k] = (struct mem_step){0};
    }
    t->n = 0;
    t->sweep_cursor = 0;
}

static void mem_trim(struct mem_table *t)
{
    t->freed_since_trim = 0;
#ifdef __GLIBC__
    /* glibc keeps freed small chunks in its heap: without this, the counters of a flood
     * would stay in the daemon's resident size long after their windows ended. */
    malloc_trim(0);
#endif
}

void mem_table_clear(struct mem_table *t)
{
    if (t->n == 0 && t->nbuckets == MEM_MIN_BUCKETS)
        return;
    struct mem_entry **b = calloc(MEM_MIN_BUCKETS, sizeof(*b));
    if (!b)
        return; /* keep the counters; they expire with their windows */
    mem_free_entries(t);
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = MEM_MIN_BUCKETS;
    mem_trim(t);
}

void mem_table_free(struct mem_table *t)
{
    mem_free_entries(t);
    free(t->buckets);
    memset(t, 0, sizeof(*t));
}

/* The usage step of count units against limit (see MEM_STEPS). */
static uint8_t mem_step_of(int64_t count, int64_t limit)
{
    if (limit <= 0 || count >= limit)
        return MEM_STEP_FULL;
    if (count <= 0)
        return 0;
    /* count < limit <= 2^50: the product fits. */
    return (uint8_t)(count * (MEM_STEPS - 1) / limit);
}

static void step_unlink(struct mem_table *t, struct mem_entry *e)
{
    struct mem_step *st = &t->steps[e->step];
    if (e->prev)
        e->prev->next = e->next;
    else
        st->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        st->tail = e->prev;
    e->prev = e->next = NULL;
    st->n--;
}

/* Files e under step k: at the tail (just used) or at the head (idle). */
static void step_link(struct mem_table *t, struct mem_entry *e, uint8_t k, bool at_tail)
{
    struct mem_step *st = &t->steps[k];
    e->step = k;
    if (at_tail) {
        e->prev = st->tail;
        e->next = NULL;
        if (st->tail)
            st->tail->next = e;
        else
            st->head = e;
        st->tail = e;
    } else {
        e->next = st->head;
        e->prev = NULL;
        if (st->head)
            st->head->prev = e;
        else
            st->tail = e;
        st->head = e;
    }
    st->n++;
}

static void mem_remove(struct mem_table *t, struct mem_entry *e)
{
    struct mem_entry **pp = &t->buckets[e->hash & (t->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    step_unlink(t, e);
    t->n--;
    t->freed_since_trim++;
    free(e);
}

/* Rehashes into nb buckets (a power of two); on ENOMEM the table stays as it is. */
static void mem_rehash(struct mem_table *t, size_t nb)
{
    struct mem_entry **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct mem_entry *e = t->buckets[i];
        while (e) {
            struct mem_entry *next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
    t->sweep_cursor = 0;
}

/* The units e counts at now_ms. A query (amount 0) writes nothing, but forgets a state
 * a stepped-back clock left too far ahead, as a take would. */
static int64_t mem_usage(struct mem_entry *e, int64_t now_ms)
{
    struct window_result r = {0};
    if (window_take(&e->w, now_ms, e->window_ms, e->limit, 0, &r) < 0)
        return 0;
    return r.count;
}

/* Makes room for at least one new entry and about 1/MEM_WAVE_DIVISOR of the bound:
 * expired counters found by a bounded sweep first, then live counters from the lowest
 * usage step up, least recently used first. Amortised over the keys it makes room for,
 * a wave costs O(MEM_WAVE_SWEEP_FACTOR + 1) entry visits per key. */
static void mem_wave(struct mem_table *t, int64_t now_ms)
{
    size_t need = t->n - t->max + 1 + t->max / MEM_WAVE_DIVISOR;
    if (need > t->n)
        need = t->n;
    size_t freed = mem_table_sweep(t, MEM_WAVE_SWEEP_FACTOR * need);
    uint64_t expired = freed, live = 0;
    double max_fraction = 0;
    for (size_t k = 0; k < MEM_STEPS && freed < need; k++) {
        while (t->steps[k].head && freed < need) {
            struct mem_entry *e = t->steps[k].head;
            int64_t usage = mem_usage(e, now_ms);
            if (window_expired(&e->w, now_ms)) {
                expired++;
                t->expired++;
            } else {
                double f = e->limit > 0 ? (double)usage / (double)e->limit : 1.0;
                if (f > max_fraction)
                    max_fraction = f;
                live++;
                t->evictions++;
            }
            mem_remove(t, e);
            freed++;
        }
    }
    t->waves++;
    t->wave_expired += expired;
    t->unlogged.waves++;
    t->unlogged.expired += expired;
    t->unlogged.live += live;
    if (max_fraction > t->unlogged.max_live_fraction)
        t->unlogged.max_live_fraction = max_fraction;
}

int mem_table_take(struct mem_table *t, const char *key, size_t keylen, int64_t now_ms,
                   int64_t window_ms, int64_t limit, int64_t amount, struct window_result *out)
{
    if (now_ms > t->now_max)
        t->now_max = now_ms;
    if (keylen > UINT32_MAX)
        return -EINVAL;
    uint32_t h = mem_hash(key, keylen);
    struct mem_entry *e = t->buckets[h & (t->nbuckets - 1)];
    while (e && !(e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0))
        e = e->hnext;
    if (e) {
        int rc = window_take(&e->w, now_ms, window_ms, limit, amount, out);
        if (rc < 0)
            return rc;
        e->limit = limit;
        e->window_ms = window_ms;
        step_unlink(t, e);
        step_link(t, e, mem_step_of(out->count, limit), true);
        return 0;
    }
    /* A new key: only worth an entry if the take writes something. */
    struct window w;
    window_init(&w);
    int rc = window_take(&w, now_ms, window_ms, limit, amount, out);
    if (rc < 0 || w.width == 0)
        return rc;
    if (t->n >= t->max)
        mem_wave(t, now_ms);
    e = malloc(offsetof(struct mem_entry, key) + keylen + 1);
    if (!e)
        return -ENOMEM;
    e->hash = h;
    e->w = w;
    e->limit = limit;
    e->window_ms = window_ms;
    e->keylen = (uint32_t)keylen;
    memcpy(e->key, key, keylen);
    e->key[keylen] = '\0';
    if (t->n >= t->nbuckets)
        mem_rehash(t, t->nbuckets * 2);
    e->hnext = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = e;
    step_link(t, e, mem_step_of(out->count, limit), true);
    t->n++;
    return 0;
}

size_t mem_table_sweep(struct mem_table *t, size_t budget)
{
    size_t seen = 0, dropped = 0;
    for (size_t b = 0; b < t->nbuckets && seen < budget; b++) {
        size_t i = t->sweep_cursor;
        t->sweep_cursor = (t->sweep_cursor + 1) & (t->nbuckets - 1);
        struct mem_entry *e = t->buckets[i];
        while (e) {
            struct mem_entry *next = e->hnext;
            seen++;
            bool gone = window_expired(&e->w, t->now_max);
            int64_t usage = 0;
            if (!gone) {
                usage = mem_usage(e, t->now_max);
                gone = window_expired(&e->w, t->now_max);
            }
            if (gone) {
                mem_remove(t, e);
                t->expired++;
                dropped++;
            } else {
                uint8_t k = mem_step_of(usage, e->limit);
                if (k != e->step) {
                    /* Idle since its last take: first in line within its new step. */
                    step_unlink(t, e);
                    step_link(t, e, k, false);
                }
            }
            e = next;
        }
    }
    return dropped;
}

/* Halves the buckets while they are four times the entries, and gives freed heap pages
 * back: after a flood the table returns to the size of what it holds. */
static void mem_table_shrink(struct mem_table *t)
{
    size_t nb = t->nbuckets;
    while (nb > MEM_MIN_BUCKETS && t->n < nb / 4)
        nb /= 2;
    if (nb != t->nbuckets)
        mem_rehash(t, nb);
    /* Not while the table is full: eviction waves free memory that new keys take at
     * once, and a trim of a big heap costs the loop milliseconds. Also once most of the
     * table went: the last counters of a flood. */
    if (t->n + t->max / 16 >= t->max)
        return;
    if (t->freed_since_trim >= MEM_TRIM_AFTER ||
        (t->freed_since_trim >= MEM_TRIM_AFTER / 16 && t->freed_since_trim > t->n))
        mem_trim(t);
}

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

static void store_answer_local(struct store *s, struct store_req *req)
{
    for (size_t i = 0; i < req->n; i++) {
        struct store_req_op *op = &req->ops[i];
        if (op->answered)
            continue;
        int rc = mem_table_take(&s->mem, op->key, op->keylen, req->now_ms, op->window_ms, op->limit,
                                op->amount, &req->results[i]);
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

/* --- the memory implementation --- */

static void memory_submit(struct store *s, struct store_req *req)
{
    store_answer_local(s, req);
    store_req_finish(req, 0);
}

static void memory_unlink(struct store *s, struct store_req *req)
{
    (void)s, (void)req;
}

static void memory_close(struct store *s)
{
    (void)s;
}

static void memory_free(struct store *s)
{
    (void)s;
}

static const struct store_vtable memory_vtable = {
    .name = "memory",
    .submit = memory_submit,
    .unlink = memory_unlink,
    .close = memory_close,
    .free = memory_free,
};

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
    cluster_mem_free(s->cluster);
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
    s->vt = &memory_vtable;
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
        int rc = store_redis_init(s, cfg, &u, err, errlen);
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
    for (size_t i = 0; i < n; i++) {
        if (!ops[i].key)
            return -EINVAL;
        size_t kl = strlen(ops[i].key);
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
        size_t kl = strlen(ops[i].key);
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
    if (s->vt == &memory_vtable)
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

/* --- cluster operations: node status and events (see store.h) ---
 * The memory store keeps them in this process: a small array of nodes (normally just
 * this one) and a ring of events capped at max_entries. Callbacks run before the call
 * returns; the Redis store answers later (store_redis.c). */

#define MEM_CLUSTER_MAX_NODES 1024

struct mem_node {
    char *name;
    char *json;
    int64_t updated_ms, expires_ms;
};

struct store_cluster_mem {
    struct mem_node nodes[MEM_CLUSTER_MAX_NODES];
    size_t n_nodes;
    char **ring; /* events, oldest at head */
    size_t cap, head, count;
    struct mem_node *journals; /* name and json only (normally just this node) */
    size_t n_journals;
};

static void cluster_mem_free(struct store_cluster_mem *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_nodes; i++) {
        free(c->nodes[i].name);
        free(c->nodes[i].json);
    }
    for (size_t i = 0; i < c->count; i++)
        free(c->ring[(c->head + i) % c->cap]);
    free(c->ring);
    for (size_t i = 0; i < c->n_journals; i++) {
        free(c->journals[i].name);
        free(c->journals[i].json);
    }
    free(c->journals);
    free(c);
}

static struct store_cluster_mem *cluster_mem(struct store *s)
{
    if (!s->cluster)
        s->cluster = calloc(1, sizeof(*s->cluster));
    return s->cluster;
}

static bool store_is_redis(const struct store *s)
{
    return s->vt != &memory_vtable;
}

/* The entry of every cluster call, in this order: *req cleared (memory calls finish
 * before returning; Redis calls here take no handle either), -ESHUTDOWN once closing,
 * -EINVAL when args_ok is false. Returns 1 when the Redis backend takes the call, 0 with
 * *c set to the memory backend's state (created on first use), or -ENOMEM. */
static int cluster_enter(struct store *s, struct store_req **req, bool args_ok,
                         struct store_cluster_mem **c)
{
    if (req)
        *req = NULL;
    if (s->closing)
        return -ESHUTDOWN;
    if (!args_ok)
        return -EINVAL;
    if (store_is_redis(s))
        return 1;
    *c = cluster_mem(s);
    return *c ? 0 : -ENOMEM;
}

int store_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                   int64_t ttl_ms, store_done_cb cb, void *arg, struct store_req **req)
{
    struct store_cluster_mem *c = NULL;
    int rc = cluster_enter(s, req, node && *node && json && strlen(node) <= STORE_MAX_KEY, &c);
    if (rc != 0)
        return rc < 0 ? rc : store_redis_node_put(s, node, json, now_ms, ttl_ms, cb, arg);
    struct mem_node *e = NULL;
    for (size_t i = 0; i < c->n_nodes && !e; i++)
        if (strcmp(c->nodes[i].name, node) == 0)
            e = &c->nodes[i];
    char *j = strdup(json);
    if (!j)
        return -ENOMEM;
    if (!e) {
        char *nm = strdup(node);
        if (!nm || c->n_nodes == MEM_CLUSTER_MAX_NODES) {
            free(nm);
            free(j);
            return nm ? -ENOSPC : -ENOMEM;
        }
        e = &c->nodes[c->n_nodes++];
        e->name = nm;
        e->json = NULL;
    }
    free(e->json);
    e->json = j;
    e->updated_ms = now_ms;
    e->expires_ms = now_ms + ttl_ms;
    if (cb)
        cb(arg, 0);
    return 0;
}

int store_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg,
                       struct store_req **req)
{
    struct store_cluster_mem *c = NULL;
    int rc = cluster_enter(s, req, cb != NULL, &c);
    if (rc != 0)
        return rc < 0 ? rc : store_redis_node_get_all(s, now_ms, cb, arg);
    struct store_node_status v[MEM_CLUSTER_MAX_NODES];
    size_t k = 0;
    for (size_t i = 0; i < c->n_nodes; i++) {
        if (c->nodes[i].expires_ms < now_ms)
            continue;
        v[k].node = c->nodes[i].name;
        v[k].json = c->nodes[i].json;
        v[k].updated_ms = c->nodes[i].updated_ms;
        k++;
    }
    cb(arg, 0, v, k);
    return 0;
}

int store_event_append(struct store *s, const char *json, int64_t max_entries, store_done_cb cb,
                       void *arg, struct store_req **req)
{
    struct store_cluster_mem *c = NULL;
    int rc = cluster_enter(s, req, json && max_entries >= 1, &c);
    if (rc != 0)
        return rc < 0 ? rc : store_redis_event_append(s, json, max_entries, cb, arg);
    char *j = strdup(json);
    if (!j)
        return -ENOMEM;
    size_t max = (size_t)max_entries;
    if (c->cap != max) {
        /* First use or a new cap: keep the newest entries that fit. */
        char **ring = calloc(max, sizeof(char *));
        if (!ring) {
            free(j);
            return -ENOMEM;
        }
        size_t keep = c->count < max ? c->count : max, k = 0;
        for (size_t i = 0; i < c->count; i++) {
            char *ev = c->ring[(c->head + i) % c->cap];
            if (i < c->count - keep)
                free(ev);
            else
                ring[k++] = ev;
        }
        free(c->ring);
        c->ring = ring;
        c->cap = max;
        c->head = 0;
        c->count = keep;
    }
    if (c->count == c->cap) {
        free(c->ring[c->head]);
        c->ring[c->head] = NULL;
        c->head = (c->head + 1) % c->cap;
        c->count--;
    }
    c->ring[(c->head + c->count) % c->cap] = j;
    c->count++;
    if (cb)
        cb(arg, 0);
    return 0;
}

int store_event_read(struct store *s, size_t max, store_events_cb cb, void *arg,
                     struct store_req **req)
{
    struct store_cluster_mem *c = NULL;
    int rc = cluster_enter(s, req, cb != NULL, &c);
    if (rc != 0)
        return rc < 0 ? rc : store_redis_event_read(s, max, cb, arg);
    size_t n = c->count < max ? c->count : max;
    const char **v = calloc(n ? n : 1, sizeof(char *));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) /* newest first */
        v[i] = c->ring[(c->head + c->count - 1 - i) % c->cap];
    cb(arg, 0, v, n);
    free(v);
    return 0;
}

int store_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                      void *arg, struct store_req **req)
{
    struct store_cluster_mem *c = NULL;
    int rc = cluster_enter(s, req, node && *node && strlen(node) <= STORE_MAX_KEY, &c);
    if (rc != 0)
        return rc < 0 ? rc : store_redis_journal_put(s, node, json, cb, arg);
    size_t i = 0;
    while (i < c->n_journals && strcmp(c->journals[i].name, node) != 0)
        i++;
    if (!json) {
        if (i < c->n_journals) {
            free(c->journals[i].name);
            free(c->journals[i].json);
            c->journals[i] = c->journals[--c->n_journals];
        }
    } else {
        char *j = strdup(json);
        if (!j)
            return -ENOMEM;
        if (i == c->n_journals) {
            char *nm = strdup(node);
            struct mem_node *v = nm ? realloc(c->journals, (c->n_journals + 1) * sizeof(*v)) : NULL;
            if (!v) {
                free(nm);
                free(j);
                return -ENOMEM;
            }
            c->journals = v;
            v[i] = (struct mem_node){.name = nm};
            c->n_journals++;
        }
        free(c->journals[i].json);
        c->journals[i].json = j;
    }
    if (cb)
        cb(arg, 0);
    return 0;
}
