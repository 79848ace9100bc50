/* store_internal: what the core (store.c: requests, delivery, local fallback) shares with
 * the implementations (store_memory.c, store_redis.c). Not for callers of the store; they
 * use store.h. */
#pragma once

#include "store.h"

/* Usage steps of the memory table's eviction order: step k (0..15) holds counters whose
 * usage is at least k/16 and under (k+1)/16 of their limit; the last step holds those at
 * or over it (and limit 0). A full table evicts from the lowest step up. */
#define MEM_STEPS 17
#define MEM_STEP_FULL (MEM_STEPS - 1)

/* A key's counter in the memory table: chained in a hash bucket and in the list of its
 * usage step (least recently used first). */
struct mem_entry {
    struct mem_entry *hnext;
    struct mem_entry *prev, *next; /* in steps[step] */
    struct window w;
    int64_t limit, window_ms; /* of the last take: the step's denominator */
    uint32_t hash;
    uint32_t keylen;
    uint8_t step;
    char key[];
};

struct mem_step {
    struct mem_entry *head, *tail; /* head: least recently used */
    size_t n;
};

/* What eviction waves did since the last log line (store.c logs it). */
struct mem_wave_log {
    uint64_t waves, expired, live;
    double max_live_fraction; /* highest usage/limit of a live counter evicted */
};

struct mem_table {
    struct mem_entry **buckets;
    size_t nbuckets;
    size_t n;
    size_t max;
    size_t sweep_cursor;
    struct mem_step steps[MEM_STEPS];
    uint64_t evictions;      /* live counters evicted by waves */
    uint64_t expired;        /* expired counters dropped (sweep or wave) */
    uint64_t wave_expired;   /* of those, dropped by waves */
    uint64_t waves;          /* eviction waves */
    size_t freed_since_trim; /* counters freed since the heap was last trimmed */
    struct mem_wave_log unlogged;
    int64_t now_max; /* the latest now_ms seen: the sweep's notion of time */
};

struct store_req_op {
    const char *key; /* prefix + key, inside the request's allocation */
    size_t keylen;
    int64_t window_ms, limit, amount;
    bool answered;
};

enum store_req_where { REQ_NOWHERE, REQ_INFLIGHT, REQ_DONE };

struct store_req {
    struct store *s;
    struct store_req *prev, *next;
    enum store_req_where where;
    uint64_t id;       /* redis: names its replies (late ones find no request) */
    uint64_t deadline; /* redis: uv_now() ms when it times out */
    store_take_cb cb;
    void *arg;
    int64_t now_ms;
    int status;
    bool have_results;
    bool sent; /* redis: its commands are queued on a connection */
    size_t n, npending;
    struct window_result *results;
    struct store_req_op ops[];
};

struct store_req_list {
    struct store_req *head, *tail;
};

struct redisAsyncContext;
struct redisReply;

struct store_vtable {
    const char *name;
    /* Sends or answers a request; may call store_req_done() or store_req_fail(). */
    void (*submit)(struct store *s, struct store_req *req);
    /* Forgets an in-flight request being cancelled (the caller frees it). */
    void (*unlink)(struct store *s, struct store_req *req);
    /* Closes the implementation's handles; each close callback calls store_handle_closed. */
    void (*close)(struct store *s);
    void (*free)(struct store *s);
    /* The cluster operations of store.h (node status, events, journal copy), called by
     * store.c's entry points once the store is open and the arguments are checked. Same
     * contracts as store.h. Redis: plain single-key commands (key layout: redis_keys.h). */
    int (*node_put)(struct store *s, const char *node, const char *json, int64_t now_ms,
                    int64_t ttl_ms, store_done_cb cb, void *arg);
    int (*node_get_all)(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg);
    int (*event_append)(struct store *s, const char *json, int64_t max_entries, store_done_cb cb,
                        void *arg);
    int (*event_read)(struct store *s, size_t max, store_events_cb cb, void *arg);
    /* SET or (json NULL) DEL of the node's journal copy. */
    int (*journal_put)(struct store *s, const char *node, const char *json, store_done_cb cb,
                       void *arg);
    /* Deletes a counter (key with the prefix) where the implementation keeps it; NULL
     * when the memory table is the only place (store.c clears that itself). */
    int (*counter_del)(struct store *s, const char *key, size_t keylen, store_done_cb cb,
                       void *arg);
    /* Redis backends, whose cluster operations are redis_cluster_ops.c's: sends one
     * command (argv[1] is its key) with fn and privdata as hiredis's callback; 0 when fn
     * will be called, or -errno (-ENOTCONN: no connection for the key) ... */
    int (*cop_send)(struct store *s,
                    void (*fn)(struct redisAsyncContext *ac, void *reply, void *privdata),
                    void *privdata, int argc, const char **argv, const size_t *len);
    /* ... and notes each of their replies on its connection before the operation reads
     * it (rep NULL: the connection dropped the command; write: the command writes). */
    void (*cop_reply)(struct redisAsyncContext *ac, const struct redisReply *rep, bool write);
};

struct store {
    const struct store_vtable *vt;
    uv_loop_t *loop;
    char *prefix;
    size_t prefixlen;
    bool local_fallback;
    int64_t log_interval_ms;
    struct mem_table mem;
    int64_t sweep_now_ms;     /* mem.now_max at the last local answer ... */
    uint64_t sweep_mono_ms;   /* ... and uv_now() then: the sweep's clock after it */
    bool waves_logged;        /* an eviction line was written ... */
    uint64_t waves_logged_ms; /* ... at this uv_now() */
    uv_idle_t idle;           /* delivers requests answered inside store_window_take */
    uv_timer_t sweep;         /* drops expired memory counters */
    struct store_req_list done;
    struct store_stats stats;
    bool in_submit;
    bool closing;
    int open_handles;
    void (*on_closed)(void *arg);
    void *closed_arg;
    void *impl;
    struct store_cluster_mem *cluster; /* memory store: node statuses and events (lazy) */
};

/* Memory table. mem_table_take returns 0 or -ENOMEM / -EINVAL from window_take. When a
 * new key finds the table at max entries, an eviction wave first drops about 1/32 of
 * max: expired counters found by a bounded sweep, then live ones from the lowest usage
 * step up (see MEM_STEPS), least recently used first within a step. */
int mem_table_init(struct mem_table *t, size_t max);
void mem_table_free(struct mem_table *t);
/* Drops every counter and shrinks the table to its initial size (statistics and limits
 * stay); on glibc also returns free heap pages to the system. Kept as it was if the
 * smaller bucket array cannot be allocated. */
void mem_table_clear(struct mem_table *t);
int mem_table_take(struct mem_table *t, const char *key, size_t keylen, int64_t now_ms,
                   int64_t window_ms, int64_t limit, int64_t amount, struct window_result *out);
/* Examines up to budget entries at t->now_max: drops the expired ones and files the
 * others under their current usage step (usage only falls between takes, so a step
 * recorded at the last take may be too high). Returns the entries dropped. */
size_t mem_table_sweep(struct mem_table *t, size_t budget);
/* Halves the buckets while they are four times the entries, and gives freed heap pages
 * back when many counters went and the table is not full (the sweep's timer calls it). */
void mem_table_shrink(struct mem_table *t);
/* Forgets key; true if it was there. */
bool mem_table_del(struct mem_table *t, const char *key, size_t keylen);

/* Request lists (doubly linked). */
void store_req_list_push(struct store_req_list *l, struct store_req *r);
void store_req_list_remove(struct store_req_list *l, struct store_req *r);

/* Finishes a request with status 0 (all ops answered) or < 0: ops not answered are then
 * answered from local counters (store_failure_action local) or results dropped. Delivers
 * now, or on the next loop turn when called from inside store_window_take. The caller
 * must have unlinked req from its own lists; req is freed after delivery. */
void store_req_finish(struct store_req *req, int status);

/* Answers every op of req not answered yet from the memory table (the memory
 * implementation, and the local fallback of the others). */
void store_answer_local(struct store *s, struct store_req *req);

/* Called from each implementation's close callback; frees the store after the last. */
void store_handle_closed(struct store *s);

/* The memory implementation (every store starts with it; its table is the fallback). */
extern const struct store_vtable store_memory_vtable;

/* The Redis implementation: parses url and sets s->vt and s->impl. 0 or -errno. With a
 * redis-sentinel:// url it takes the master's address from a redis_sentinel. */
int store_redis_init(struct store *s, const struct config *cfg, const struct config_store_url *u,
                     char *err, size_t errlen);
/* Called by the sentinel resolver: the master is at ip:port (switched: announced by
 * +switch-master, so a connection elsewhere is dropped and the new one made at once). */
void store_redis_master_found(struct store *s, const char *ip, int port, bool switched);
/* Called by the sentinel resolver: no sentinel named the master (why). */
void store_redis_master_unknown(struct store *s, const char *why);

/* The cluster operations of the Redis backends (redis_cluster_ops.c), for their vtables:
 * the commands go out through the vtable's cop_send and cop_reply. */
int redis_cop_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                       int64_t ttl_ms, store_done_cb cb, void *arg);
int redis_cop_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg);
int redis_cop_event_append(struct store *s, const char *json, int64_t max_entries, store_done_cb cb,
                           void *arg);
int redis_cop_event_read(struct store *s, size_t max, store_events_cb cb, void *arg);
/* `postsurge limits reset`: DEL of one counter (key with the prefix, as the script
 * counts it). */
int redis_cop_counter_del(struct store *s, const char *key, size_t keylen, store_done_cb cb,
                          void *arg);
int redis_cop_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                          void *arg);
/* The run-time overrides' hash (store.h): HGET or HGETALL, and HSET or HDEL then HINCRBY. */
int redis_cop_overrides_get(struct store *s, const char *field, store_hash_cb cb, void *arg);
int redis_cop_overrides_put(struct store *s, const char *field, const char *value, store_done_cb cb,
                            void *arg);

/* Attaches a hiredis async context to loop (redis_uv.c): 0, -EEXIST, -ENOMEM or a uv
 * error. The adapter's handle closes itself when hiredis frees the context. */
int redis_uv_attach_simple(struct redisAsyncContext *ac, uv_loop_t *loop);

/* The Redis Cluster implementation (redis_cluster.c): sets s->vt and s->impl and starts
 * reading the slot map from the seeds of u. 0 or -ENOMEM. */
int store_redis_cluster_init(struct store *s, const struct config *cfg,
                             const struct config_store_url *u);

/* The sentinel resolver (redis_sentinel.c) of a redis-sentinel:// store. */
struct redis_sentinel;
/* NULL on ENOMEM. Reads the seeds and master name of u, redis_timeout and
 * redis_sentinel_password of cfg. */
struct redis_sentinel *redis_sentinel_new(struct store *s, const struct config *cfg,
                                          const struct config_store_url *u);
/* Asks the sentinels for the master (unless a query is running): answers later with
 * store_redis_master_found() or store_redis_master_unknown(), possibly from inside. */
void redis_sentinel_ask(struct redis_sentinel *st);
/* Closes the connections and the timer (counted in s->open_handles). */
void redis_sentinel_close(struct redis_sentinel *st);
void redis_sentinel_free(struct redis_sentinel *st);
