/* engine_impl: the engine's state, shared by its sources (engine.c decides and follows
 * the override tables, engine_cmd.c answers the control socket's `limits` commands,
 * engine_metrics.c exports). Not for other modules: they go through engine.h. */
#pragma once

#include "engine.h"

#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "limits_engine.h"
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
    /* Run-time overrides (engine_rt.c): the set in force on this node (a reference), its
     * refresh timer, and where it comes from. */
    struct limits_rt *rt;
    uv_timer_t rt_timer;
    bool rt_timer_on;
    bool rt_busy;        /* a read from Redis is in flight */
    bool rt_file_loaded; /* memory store: state_directory's file was read */
    bool rt_logged_bad;  /* a malformed entry in the store was logged */
    char rt_version[24]; /* Redis: the version of the set last read, "" to read again */
    char *rt_path;       /* state_directory/ENGINE_RT_FILE */
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

/* Wall clock ms: nodes sharing a Redis must agree on it (window.h). */
static inline int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- run-time overrides (engine_rt.c) ---- */

/* The memory store's overrides, in state_directory. */
#define ENGINE_RT_FILE "limits-overrides"
/* How often each node refreshes its copy (and drops expired entries): a change on
 * another node is in force here within 2 s. */
#define ENGINE_RT_POLL_MS 1000

/* Reads the overrides (the file for the memory store; Redis in the background) and
 * starts the refresh timer. Call once the store is open. */
void engine_rt_start(struct engine *e);
/* Puts e->rt in force in e->limits (after a swap of the rules). */
void engine_rt_apply(struct engine *e);
void engine_rt_stop(struct engine *e);
void engine_rt_free(struct engine *e);
/* `limits set` (count LIMITS_TABLE_UNLIMITED for unlimited; expires_ms 0: no end) and
 * `limits unset` of rule r's canonical value; reply runs once. */
void engine_rt_set(struct engine *e, const struct limits_rule *r, const char *value, int64_t count,
                   int64_t expires_ms, engine_reply_fn reply, void *arg);
void engine_rt_unset(struct engine *e, const struct limits_rule *r, const char *value,
                     engine_reply_fn reply, void *arg);
