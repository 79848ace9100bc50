/* store_memory: the store's "memory" implementation: a bounded hash table of key ->
 * struct window (the core in store.c uses it for every store's local fallback counters
 * too), and node statuses, events and journal copies kept in this process. */
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

#include "hash.h"
#include "util/log.h"

#define MEM_MIN_BUCKETS 1024
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
    uint64_t h = hash64_add(HASH64_START, key, len);
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

uint32_t mem_table_hash(const char *key, size_t keylen)
{
    return mem_hash(key, keylen);
}

void mem_table_prefetch(const struct mem_table *t, uint32_t hash, int stage)
{
    struct mem_entry *const *b = &t->buckets[hash & (t->nbuckets - 1)];
    const struct mem_entry *e = stage == 0 ? NULL : *b;
    if (stage == 0) {
        __builtin_prefetch(b);
    } else if (e != NULL && stage == 1) {
        /* The entry's first four cache lines: its hash and chain link, its window and,
         * for a key of usual length, the key (not read here: that would wait for it). */
        const char *p = (const char *)e;
        __builtin_prefetch(p);
        __builtin_prefetch(p + 64);
        __builtin_prefetch(p + 128);
        __builtin_prefetch(p + 192);
    } else if (e != NULL && stage == 2 && e->hash == hash) {
        /* Its neighbours in its step list, which moving it to the tail touches. */
        if (e->prev != NULL)
            __builtin_prefetch(e->prev, 1);
        if (e->next != NULL)
            __builtin_prefetch(e->next, 1);
    }
}

int mem_table_take_hashed(struct mem_table *t, const char *key, size_t keylen, uint32_t h,
                          int64_t now_ms, int64_t window_ms, int64_t limit, int64_t amount,
                          struct window_result *out)
{
    if (now_ms > t->now_max)
        t->now_max = now_ms;
    if (keylen > UINT32_MAX)
        return -EINVAL;
    struct mem_entry *e = t->buckets[h & (t->nbuckets - 1)];
    while (e && !(e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0))
        e = e->hnext;
    if (e) {
        int rc = window_take(&e->w, now_ms, window_ms, limit, amount, out);
        if (rc < 0)
            return rc;
        e->limit = limit;
        e->window_ms = window_ms;
        /* To the tail of its step, unless it is there already (a busy key): moving it
         * touches its neighbours, two more cache misses. */
        uint8_t k = mem_step_of(out->count, limit);
        if (k != e->step || t->steps[k].tail != e) {
            step_unlink(t, e);
            step_link(t, e, k, true);
        }
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

bool mem_table_del(struct mem_table *t, const char *key, size_t keylen)
{
    uint32_t h = mem_hash(key, keylen);
    struct mem_entry *e = t->buckets[h & (t->nbuckets - 1)];
    while (e && !(e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0))
        e = e->hnext;
    if (e == NULL)
        return false;
    mem_remove(t, e);
    return true;
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
void mem_table_shrink(struct mem_table *t)
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
    cluster_mem_free(s->cluster);
    s->cluster = NULL;
}

static int mem_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                        int64_t ttl_ms, store_done_cb cb, void *arg);
static int mem_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg);
static int mem_event_append(struct store *s, const char *json, int64_t max_entries,
                            store_done_cb cb, void *arg);
static int mem_event_read(struct store *s, size_t max, store_events_cb cb, void *arg);
static int mem_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                           void *arg);

const struct store_vtable store_memory_vtable = {
    .name = "memory",
    .submit = memory_submit,
    .unlink = memory_unlink,
    .close = memory_close,
    .free = memory_free,
    .node_put = mem_node_put,
    .node_get_all = mem_node_get_all,
    .event_append = mem_event_append,
    .event_read = mem_event_read,
    .journal_put = mem_journal_put,
};

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

static int mem_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                        int64_t ttl_ms, store_done_cb cb, void *arg)
{
    struct store_cluster_mem *c = cluster_mem(s);
    if (!c)
        return -ENOMEM;
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

static int mem_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg)
{
    struct store_cluster_mem *c = cluster_mem(s);
    if (!c)
        return -ENOMEM;
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

static int mem_event_append(struct store *s, const char *json, int64_t max_entries,
                            store_done_cb cb, void *arg)
{
    struct store_cluster_mem *c = cluster_mem(s);
    if (!c)
        return -ENOMEM;
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

static int mem_event_read(struct store *s, size_t max, store_events_cb cb, void *arg)
{
    struct store_cluster_mem *c = cluster_mem(s);
    if (!c)
        return -ENOMEM;
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

static int mem_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                           void *arg)
{
    struct store_cluster_mem *c = cluster_mem(s);
    if (!c)
        return -ENOMEM;
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
