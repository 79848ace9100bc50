/* store: where the counters of rate limits (and later the node status and events of a
 * cluster) live. One interface, two implementations: "memory" (this process) and
 * "redis" (shared by every node, one round trip per decision, degrading to local memory
 * counters when Redis is slow or gone). All operations are asynchronous on the daemon's
 * libuv loop and never block it. Called from the loop thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "window.h"

struct store;
/* A pending operation; the caller may cancel it until its callback has run. */
struct store_req;

/* Most counter operations one request may carry; more is -E2BIG. */
#define STORE_MAX_OPS 64
/* Longest key (without the prefix); longer keys are -ENAMETOOLONG. */
#define STORE_MAX_KEY 512
/* Default bound of the memory store's keys (memory_store_max_keys; about 200 bytes
 * each with a short key). */
#define STORE_MEMORY_MAX_ENTRIES 1000000

/* One counter operation: window_take() on the counter `key` (borrowed for the duration
 * of the call; the store copies it and prepends store_key_prefix). */
struct store_op {
    const char *key;
    int64_t window_ms;
    int64_t limit;
    int64_t amount;
    size_t keylen; /* strlen(key) when the caller knows it, else 0 */
};

/* Called exactly once per accepted store_window_take(), never from inside it, unless the
 * request was cancelled. status 0: results[0..n-1] are the store's answers. status < 0:
 * the shared store failed (-ETIMEDOUT slow, -ENOTCONN down or reconnecting, -EPROTO an
 * error reply, -ECONNRESET connection lost); results then come from this node's memory
 * counters if store_failure_action is "local", else results is NULL and the caller
 * answers per store_failure_action (dunno, defer_if_permit). status -ECANCELED with
 * results NULL: the store is closing. results are borrowed for the callback only. */
typedef void (*store_take_cb)(void *arg, int status, const struct window_result *results, size_t n);

/* Counters and state for /metrics and the status page. */
struct store_stats {
    uint64_t takes;         /* store_window_take calls accepted */
    uint64_t ops;           /* counter operations in them */
    uint64_t local_answers; /* requests answered from local counters (Redis failed) */
    uint64_t failures;      /* requests with status < 0 */
    uint64_t timeouts;      /* requests that hit redis_timeout */
    uint64_t noscript;      /* NOSCRIPT replies answered by an EVAL */
    uint64_t reconnects;    /* connection attempts after the first */
    uint64_t evictions;     /* memory keys dropped unexpired because of the bound */
    uint64_t expired;       /* memory keys dropped as expired (sweep or eviction wave) */
    uint64_t wave_expired;  /* of those, dropped by an eviction wave */
    uint64_t waves;         /* eviction waves (the bound was reached) */
    size_t entries;         /* memory keys now (local counters for Redis) */
    size_t max_entries;     /* their bound */
    bool connected;         /* redis: the last command got a reply; memory: true */
    uint64_t repaired;      /* redis: counter keys of another type or size replaced */
    /* redis: what is wrong now ("ok", "unreachable", "timeout", "auth", "oom", "readonly",
     * "loading", "masterdown", "busy", "clusterdown", "error"; empty for memory), the last
     * message about it, and since when (wall clock ms) the store has been in this state. */
    char state[16];
    char reason[240];
    int64_t state_since_ms;
};

/* Creates the store cfg->store names ("memory", "redis://...", "redis+unix://...",
 * "redis-sentinel://...": a Redis whose master the sentinels name, "redis-cluster://...":
 * a Redis Cluster) on loop, using
 * store_key_prefix, redis_timeout, redis_reconnect_max, redis_sentinel_password and
 * store_failure_action from cfg (read now; cfg is not kept). Redis connects in the
 * background: nothing blocks, and requests before the connection is up wait for it (up
 * to redis_timeout). Returns 0 and *out (caller owns; release with store_close), or
 * -EINVAL with a message in err (bad URL or failure action), or -ENOMEM. */
int store_new(uv_loop_t *loop, const struct config *cfg, struct store **out, char *err,
              size_t errlen);

/* Bounds the number of keys of the memory counters (also the local fallback of Redis).
 * A new key that finds the bound reached starts an eviction wave that frees about 1/32
 * of it: expired counters first, then live ones from the lowest usage relative to their
 * limit up, in 16 steps of 1/16 plus one for counters at their limit (as of each
 * counter's last take or the background sweep, which visits all within 8 s). A wave
 * never evicts a counter while a counter of a lower step is kept. Waves are logged at
 * most once per log_repeat_interval with their counts. A lower bound takes effect at
 * the next new key. */
void store_set_max_entries(struct store *s, size_t max_entries);

/* "memory" or "redis". */
const char *store_kind(const struct store *s);

/* Runs n (1..STORE_MAX_OPS) counter operations at now_ms (wall clock ms, the same for all
 * nodes sharing a Redis) and calls cb(arg, ...) once with n results in the order of ops.
 * The ops of one call are sent together: one round trip to Redis. If req is not NULL,
 * *req gets a handle for store_req_cancel, valid until cb runs. Returns 0, or -EINVAL
 * (bad op values), -E2BIG (n), -ENAMETOOLONG (key), -ENOMEM, -ESHUTDOWN (closing): then
 * cb is never called. */
int store_window_take(struct store *s, const struct store_op *ops, size_t n, int64_t now_ms,
                      store_take_cb cb, void *arg, struct store_req **req);

/* Cancels a pending request (its connection closed): cb will not run, and arg may be
 * freed right after. Operations already sent to Redis still count there. */
void store_req_cancel(struct store_req *req);

/* Fills *st. */
void store_get_stats(const struct store *s, struct store_stats *st);

/* Closes the store: pending requests are answered with -ECANCELED, the Redis connection
 * and all timers are closed, and once every handle is closed the store is freed and
 * on_closed(arg) runs (may be NULL). The loop must keep running until then. s may be
 * NULL (on_closed is then not called). */
void store_close(struct store *s, void (*on_closed)(void *arg), void *arg);

/* --- Cluster operations (node status, events). Memory: kept in this process, the
 * callback runs before the call returns. Redis: single-key commands a sharding proxy
 * forwards (see redis_cluster_ops.c), the callback runs later, with status < 0 when Redis
 * failed. *req is always set to NULL: these cannot be cancelled; the callback runs at
 * the latest while store_close() closes the connection. --- */

/* One node's status as JSON text with its time of writing. Borrowed in callbacks. */
struct store_node_status {
    const char *node;
    const char *json;
    int64_t updated_ms;
};
typedef void (*store_nodes_cb)(void *arg, int status, const struct store_node_status *nodes,
                               size_t n);
typedef void (*store_events_cb)(void *arg, int status, const char *const *events, size_t n);
typedef void (*store_done_cb)(void *arg, int status);

/* Publishes this node's status (JSON text, copied), valid ttl_ms from now_ms. */
int store_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                   int64_t ttl_ms, store_done_cb cb, void *arg, struct store_req **req);
/* Reads the status of every node whose entry has not expired at now_ms. */
int store_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg,
                       struct store_req **req);
/* Appends one event (JSON text, copied) to the list capped at max_entries. */
int store_event_append(struct store *s, const char *json, int64_t max_entries, store_done_cb cb,
                       void *arg, struct store_req **req);
/* Reads the newest max events, newest first. */
int store_event_read(struct store *s, size_t max, store_events_cb cb, void *arg,
                     struct store_req **req);

/* Keeps a copy of node's override journal (JSON text, copied) under the single key
 * "journal:NODE" without expiry (SET), or deletes it when json is NULL (DEL). The file in
 * state_directory stays the authority for restores: this copy is for the cluster's
 * visibility and for an administrator recovering a lost disk. Returns 0 (cb runs once,
 * status < 0 when Redis failed), or -EINVAL, -ENAMETOOLONG, -ENOMEM, -ESHUTDOWN (cb never
 * called). */
int store_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                      void *arg, struct store_req **req);

/* Forgets one rate-limit counter (key as in struct store_op, without store_key_prefix)
 * everywhere this store keeps it: this node's memory counters (the memory store, or
 * Redis's local fallback) and Redis (DEL), so every node sharing the Redis starts it
 * afresh. Returns 1 when done at once (memory store: cb is not called), 0 when
 * cb(arg, status) will run once, or -EINVAL, -ENOMEM, -ESHUTDOWN. */
int store_counter_reset(struct store *s, const char *key, store_done_cb cb, void *arg);

/* --- Run-time overrides of the rate limits, for the whole cluster (Redis backends): the
 * hash PREFIXoverrides (redis_keys.h) whose fields are the overrides' texts
 * (lib/limits_rt.h) plus STORE_OVERRIDES_VERSION, a counter raised by every write, so a
 * node polls one field and reads the whole hash only when it changed. Single-key
 * commands (HGET, HGETALL, HSET, HDEL, HINCRBY) a sharding proxy and Redis Cluster
 * forward. The memory store keeps none: -EOPNOTSUPP (the daemon keeps them in
 * state_directory). --- */
#define STORE_OVERRIDES_VERSION "#version"
/* Most fields a read returns (the daemon bounds its overrides lower). */
#define STORE_OVERRIDES_MAX 20001
typedef void (*store_hash_cb)(void *arg, int status, const char *const *fields,
                              const char *const *values, size_t n);
/* Reads field (HGET: n is 0 or 1; field must live until cb runs, e.g. a literal) or, with
 * field NULL, the whole hash (HGETALL). Returns 0
 * (cb runs once; status < 0 when Redis failed), or -EOPNOTSUPP, -ENOMEM, -ESHUTDOWN. */
int store_overrides_get(struct store *s, const char *field, store_hash_cb cb, void *arg);
/* Sets field to value (HSET), or deletes it (HDEL, value NULL), then raises the version.
 * Returns as store_overrides_get. */
int store_overrides_put(struct store *s, const char *field, const char *value, store_done_cb cb,
                        void *arg);
