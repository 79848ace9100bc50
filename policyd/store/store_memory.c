/* store_memory: the store's "memory" implementation: a bounded hash table of key ->
 * struct window (the core in store.c uses it for every store's local fallback counters
 * too), and node statuses, events and journal copies kept in this process. */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

#define MEM_MIN_BUCKETS 1024
/* Entries looked at from the LRU head for an expired one before evicting a live one. */
#define MEM_EVICT_SCAN 8

static void cluster_mem_free(struct store_cluster_mem *c);

/* --- memory table --- */

static uint64_t mem_hash(const char *key, size_t len)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211u;
    }
    return h;
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
    struct mem_entry *e = t->lru_head;
    while (e) {
        struct mem_entry *next = e->lru_next;
        free(e);
        e = next;
    }
    t->lru_head = t->lru_tail = NULL;
    t->n = 0;
    t->sweep_cursor = 0;
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
#ifdef __GLIBC__
    /* Give the freed counters' pages back: an outage's worth of counters would otherwise
     * stay in the daemon's resident size for good. */
    malloc_trim(0);
#endif
}

void mem_table_free(struct mem_table *t)
{
    mem_free_entries(t);
    free(t->buckets);
    memset(t, 0, sizeof(*t));
}

static void lru_unlink(struct mem_table *t, struct mem_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        t->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        t->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_append(struct mem_table *t, struct mem_entry *e)
{
    e->lru_prev = t->lru_tail;
    e->lru_next = NULL;
    if (t->lru_tail)
        t->lru_tail->lru_next = e;
    else
        t->lru_head = e;
    t->lru_tail = e;
}

static void mem_remove(struct mem_table *t, struct mem_entry *e)
{
    struct mem_entry **pp = &t->buckets[e->hash & (t->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(t, e);
    t->n--;
    if (t->sweep_cursor >= t->nbuckets)
        t->sweep_cursor = 0;
    free(e);
}

/* Doubles the buckets; on ENOMEM the table just stays denser. */
static void mem_grow(struct mem_table *t)
{
    size_t nb = t->nbuckets * 2;
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

/* Makes room for one entry: an expired one near the LRU head, else the LRU head. */
static void mem_make_room(struct mem_table *t, int64_t now_ms)
{
    struct mem_entry *e = t->lru_head;
    for (int i = 0; e && i < MEM_EVICT_SCAN; i++, e = e->lru_next) {
        if (window_expired(&e->w, now_ms)) {
            mem_remove(t, e);
            t->expired++;
            return;
        }
    }
    if (t->lru_head) {
        mem_remove(t, t->lru_head);
        t->evictions++;
    }
}

int mem_table_take(struct mem_table *t, const char *key, size_t keylen, int64_t now_ms,
                   int64_t window_ms, int64_t limit, int64_t amount, struct window_result *out)
{
    if (now_ms > t->now_max)
        t->now_max = now_ms;
    uint64_t h = mem_hash(key, keylen);
    struct mem_entry *e = t->buckets[h & (t->nbuckets - 1)];
    while (e && !(e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0))
        e = e->hnext;
    if (e) {
        int rc = window_take(&e->w, now_ms, window_ms, limit, amount, out);
        lru_unlink(t, e);
        lru_append(t, e);
        return rc;
    }
    /* A new key: only worth an entry if the take writes something. */
    struct window w;
    window_init(&w);
    int rc = window_take(&w, now_ms, window_ms, limit, amount, out);
    if (rc < 0 || w.width == 0)
        return rc;
    while (t->n >= t->max)
        mem_make_room(t, now_ms);
    e = malloc(sizeof(*e) + keylen + 1);
    if (!e)
        return -ENOMEM;
    e->hash = h;
    e->w = w;
    e->keylen = keylen;
    memcpy(e->key, key, keylen);
    e->key[keylen] = '\0';
    if (t->n >= t->nbuckets)
        mem_grow(t);
    e->hnext = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = e;
    lru_append(t, e);
    t->n++;
    return 0;
}

bool mem_table_del(struct mem_table *t, const char *key, size_t keylen)
{
    uint64_t h = mem_hash(key, keylen);
    struct mem_entry *e = t->buckets[h & (t->nbuckets - 1)];
    while (e && !(e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0))
        e = e->hnext;
    if (e == NULL)
        return false;
    mem_remove(t, e);
    return true;
}

void mem_table_sweep(struct mem_table *t, size_t budget)
{
    size_t seen = 0;
    for (size_t b = 0; b < t->nbuckets && seen < budget; b++) {
        size_t i = t->sweep_cursor;
        t->sweep_cursor = (t->sweep_cursor + 1) & (t->nbuckets - 1);
        struct mem_entry *e = t->buckets[i];
        while (e) {
            struct mem_entry *next = e->hnext;
            seen++;
            if (window_expired(&e->w, t->now_max)) {
                mem_remove(t, e);
                t->expired++;
            }
            e = next;
        }
    }
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
