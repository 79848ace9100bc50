/* store_internal: what the core (store.c: requests, delivery, local fallback) shares with
 * the implementations (store_memory.c, store_redis.c). Not for callers of the store; they
 * use store.h. */
#pragma once

#include "store.h"
#include "util/log.h"

/* Usage steps of the memory table's eviction order: step k (0..15) holds counters whose
 * usage is at least k/16 and under (k+1)/16 of their limit; the last step holds those at
 * or over it (and limit 0). A full table evicts from the lowest step up. */
#define MEM_STEPS 17
#define MEM_STEP_FULL (MEM_STEPS - 1)

/* A key's counter in the memory table: chained in a hash bucket and in the list of its
 * usage step (least recently used first). */
struct mem_entry {
    /* What a lookup reads first, together: the hash, the key's length, the chain. */
    uint32_t hash;
    uint32_t keylen;
    struct mem_entry *hnext;
    struct mem_entry *prev, *next; /* in steps[step] */
    uint8_t step;
    int64_t limit, window_ms; /* of the last take: the step's denominator */
    struct window w;
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

/* Memory table. mem_table_take_hashed returns 0 or -ENOMEM / -EINVAL from window_take. When a
 * new key finds the table at max entries, an eviction wave first drops about 1/32 of
 * max: expired counters found by a bounded sweep, then live ones from the lowest usage
 * step up (see MEM_STEPS), least recently used first within a step. */
int mem_table_init(struct mem_table *t, size_t max);
void mem_table_free(struct mem_table *t);
/* Drops every counter and shrinks the table to its initial size (statistics and limits
 * stay); on glibc also returns free heap pages to the system. Kept as it was if the
 * smaller bucket array cannot be allocated. */
void mem_table_clear(struct mem_table *t);
/* A take with the key's hash from mem_table_hash: store_answer_local hashes a request's
 * counters and fetches their buckets and entries from memory first, all at once
 * (mem_table_prefetch), then counts them; one after another, each take would wait for its
 * own cache misses. */
uint32_t mem_table_hash(const char *key, size_t keylen);
/* stage 0: the bucket; 1: the bucket's first entry, every cache line of it; 2: that
 * entry's neighbours in its step list, when its hash is the key's. */
void mem_table_prefetch(const struct mem_table *t, uint32_t hash, int stage);
int mem_table_take_hashed(struct mem_table *t, const char *key, size_t keylen, uint32_t hash,
                          int64_t now_ms, int64_t window_ms, int64_t limit, int64_t amount,
                          struct window_result *out);
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

/* Attaches a hiredis async context to loop (redis_uv.c), with write batching: commands
 * queued in one loop turn go out in one write. outstanding (may be NULL; borrowed, read
 * while the context lives) counts the connection's commands without reply: while some of
 * an earlier write are unanswered, new ones are held back briefly (auto-pipelining).
 * 0, -EEXIST, -ENOMEM or a uv error. The adapter's handles close themselves when hiredis
 * frees the context. */
int redis_uv_attach(struct redisAsyncContext *ac, uv_loop_t *loop, const uint64_t *outstanding);

/* --- what both Redis backends (store_redis.c, redis_cluster.c) share --- */

/* What is wrong with Redis, named from an error reply's first word or a connection's
 * fate (redis_health.c): each kind has its own log limiter and is shown by `postsurge
 * status`. */
enum redis_trouble {
    REDIS_OK_NOW,
    REDIS_UNREACHABLE, /* cannot connect, connection lost, name not resolved */
    REDIS_TIMEOUT,     /* no reply within redis_timeout */
    REDIS_AUTH,        /* NOAUTH, WRONGPASS, NOPERM */
    REDIS_OOM,         /* OOM: maxmemory reached with a policy that does not evict */
    REDIS_READONLY,    /* READONLY: a replica */
    REDIS_LOADING,     /* LOADING: loading its dataset */
    REDIS_MASTERDOWN,  /* MASTERDOWN: a replica without its master */
    REDIS_BUSY,        /* BUSY: another script runs too long */
    REDIS_CLUSTERDOWN, /* CLUSTERDOWN: the cluster does not serve the slot */
    REDIS_ERROR,       /* any other error reply */
    REDIS_TROUBLE_COUNT
};

/* The kind of trouble an error reply names. */
enum redis_trouble redis_error_kind(const char *err);

/* A backend's health: what is wrong now, the log lines about it (one limiter per kind, a
 * "back" line on recovery) and the requests answered without Redis meanwhile. */
struct redis_health {
    struct store *s;
    char name[300]; /* after "redis " in log lines: host:port, "master 'NAME'", "cluster" */
    bool degraded;  /* requests were answered without Redis since it was last fine */
    uint64_t degraded_count;
    enum redis_trouble trouble; /* REDIS_OK_NOW when nothing */
    uint64_t trouble_since;     /* uv_now() when it began */
    uint64_t outages_unlogged;  /* recoveries whose "back" line was suppressed */
    struct log_ratelimit rl[REDIS_TROUBLE_COUNT];
    struct log_ratelimit rl_back;
};

void redis_health_init(struct redis_health *h, struct store *s, const char *name);
/* Records kind k with message what for status (since now if the kind changed). */
void redis_health_set_state(struct redis_health *h, enum redis_trouble k, const char *what);
/* Logs trouble of kind k at node (NULL: the store's one Redis), rate-limited per kind
 * with a count and the kind's advice, records it for status, and, when requests is set,
 * notes that requests are answered without Redis. */
void redis_health_trouble(struct redis_health *h, const char *node, enum redis_trouble k,
                          const char *what, bool requests);
/* The same for an error reply err (ctx, may be NULL, says to what), named by its kind. */
void redis_health_error_reply(struct redis_health *h, const char *node, const char *ctx,
                              const char *err, bool requests);
/* Another request failed for the trouble already known: counted under that kind. */
void redis_health_again(struct redis_health *h, const char *node);
/* Redis took a write: a "back" line if it was in trouble (rate-limited), and the local
 * counters of an outage dropped, since shared counting resumes. */
void redis_health_ok(struct redis_health *h);
/* Finishes a request Redis did not answer (not in any list), counting it for the "back"
 * line unless it was cancelled. */
void redis_health_finish_failed(struct redis_health *h, struct store_req *req, int status);

/* One connection's commands without reply, and when it last made progress: a connection
 * with commands outstanding and no reply for four redis_timeout (at least a second) is
 * stalled (a stopped or overloaded Redis) and is dropped by its backend. */
struct redis_progress {
    uint64_t outstanding; /* queued or written, without reply */
    uint64_t last;        /* uv_now() of the last reply, or of the first command sent */
};

static inline void redis_progress_sent(struct redis_progress *p, uint64_t now)
{
    if (p->outstanding++ == 0)
        p->last = now;
}

/* One reply came (rep NULL: the connection dropped the command). */
static inline void redis_progress_reply(struct redis_progress *p, const void *rep, uint64_t now)
{
    if (p->outstanding > 0)
        p->outstanding--;
    if (rep)
        p->last = now;
}

bool redis_progress_stalled(const struct redis_progress *p, uint64_t now, int64_t timeout_ms);

/* The requests a backend has sent and waits for, in deadline order (every request has
 * the same timeout), with the timer that answers those Redis does not answer in time. */
struct redis_inflight {
    struct redis_health *h;
    struct store_req_list list;
    uv_timer_t timer;
    int64_t timeout_ms;
    /* Called by the timer after it failed the requests past their deadline (any: some
     * were), for the backend to log and to drop stalled connections. */
    void (*on_expired)(struct redis_inflight *in, uint64_t now, bool any);
    void *owner; /* the backend, for on_expired */
};

void redis_inflight_init(struct redis_inflight *in, struct redis_health *h, int64_t timeout_ms,
                         void (*on_expired)(struct redis_inflight *in, uint64_t now, bool any),
                         void *owner);
/* Takes req in, due redis_timeout from now. */
void redis_inflight_add(struct redis_inflight *in, struct store_req *req);
/* The request of a reply's id, or NULL (late, cancelled or failed). */
struct store_req *redis_inflight_find(struct redis_inflight *in, uint64_t id);
/* Takes req out and finishes it: every op answered ... */
void redis_inflight_answered(struct redis_inflight *in, struct store_req *req);
/* ... or failed with status (local answers when configured). */
void redis_inflight_fail(struct redis_inflight *in, struct store_req *req, int status);
void redis_inflight_fail_all(struct redis_inflight *in, int status);
/* Takes req out (cancelled by the caller, who frees it). */
void redis_inflight_unlink(struct redis_inflight *in, struct store_req *req);
/* Fails every request with -ECANCELED and closes the timer; close_cb is its close
 * callback (the timer's data is the owner). */
void redis_inflight_close(struct redis_inflight *in, uv_close_cb close_cb);

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
