/* engine: the rate-limit decider of the daemon. For each policy request it asks
 * lib/limits for a plan, runs the plan's counter operations in the store (memory or
 * Redis, one round trip) and answers the rule's action or default_action. It owns the
 * limits engine (swapped on SIGHUP, counters of unchanged rules kept) and the store
 * (replaced on SIGHUP when its settings change). Loop thread only. */
#pragma once

#include <jansson.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "server.h"
#include "store/store.h"

struct engine;

/* Answer when the store failed and store_failure_action = defer_if_permit. */
#define ENGINE_DEFER_ACTION "DEFER_IF_PERMIT 4.3.0 Rate limit service temporarily unavailable"

/* Counters for metrics and status pages; monotonic. */
struct engine_stats {
    uint64_t decisions;       /* requests that reached the engine */
    uint64_t counted;         /* requests whose counters went to the store */
    uint64_t denies;          /* enforced limit replies (repeats from the session too) */
    uint64_t dryrun_denies;   /* denies of dryrun rules, answered default_action */
    uint64_t exempt;          /* exempt clients and SASL users */
    uint64_t store_failures;  /* store answers with status < 0 */
    uint64_t failure_answers; /* answered per store_failure_action (dunno, defer_if_permit) */
    uint64_t reloads;         /* rule sets swapped in by SIGHUP */
    /* Store failures by kind (enum engine_fail_kind), and since when (wall ms) the
     * latest run of failures lasts (0: the last round trip succeeded). */
    uint64_t store_fail_kind[3];
    int64_t failing_since_ms;
};

enum engine_fail_kind { ENGINE_FAIL_TIMEOUT, ENGINE_FAIL_CONNECTION, ENGINE_FAIL_OTHER };
/* "timeout", "connection", "other". */
const char *engine_fail_kind_name(int kind);

/* Refusals counted by rule name, for metrics and the status page; names of rules a
 * reload dropped stay (counters are monotonic). At most ENGINE_RULE_COUNTS names. */
#define ENGINE_RULE_COUNTS 64
struct engine_rule_count {
    char name[33];
    uint64_t refused; /* enforced refusals */
    uint64_t dryrun;  /* refusals of dryrun rules, answered default_action */
};
/* The counters (borrowed, valid until the next request) and their number. */
const struct engine_rule_count *engine_rule_counts(const struct engine *e, size_t *n);

/* The latest refusals (enforced or dryrun), for the status page: rule, counter key (a
 * sender address, a client: text from outside, escape it), time. */
#define ENGINE_RECENT_REFUSALS 8
struct engine_refusal {
    int64_t time_ms; /* wall clock */
    char rule[33];
    char key[200];
    bool dryrun;
};
/* Calls fn for each, newest first. */
void engine_recent_refusals(const struct engine *e,
                            void (*fn)(const struct engine_refusal *r, void *arg), void *arg);

/* Where the store's round-trip times go (seconds, a histogram series; NULL: nowhere). */
void engine_set_store_latency(struct engine *e, struct metrics_series *h);

/* Registers the engine's metrics (decisions by rule and action, store round trips,
 * failures, degraded mode) and its part of /status ("limits", "store"). engine_metrics.c.
 * Returns 0 or -ENOMEM. */
int engine_metrics_register(struct server *srv, struct engine *e);

/* Builds the rules from srv->cfg, opens the store cfg->store names, installs itself as
 * srv's decider and registers on_check/on_reload/on_stop hooks (on_stop closes the
 * store). Returns 0 and *out (caller frees with engine_free after uv_run returned), or
 * -EINVAL with every rule problem logged as "FILE:LINE: message", or -ENOMEM, or a store
 * error (message in err). Call before server_start(). */
int engine_new(struct server *srv, struct engine **out, char *err, size_t errlen);

/* Frees the engine once its store is closed (after server_stop and uv_run). NULL is a
 * no-op. */
void engine_free(struct engine *e);

/* The node (or cluster) stress input: while true, rules use their stress limits. Set by
 * the overload controller; requests carrying stress=yes are stressed regardless. e NULL:
 * a no-op (set) or false (get). */
void engine_set_node_stressed(struct engine *e, bool stressed);
bool engine_node_stressed(const struct engine *e);

/* Checks the rate-limit settings of cfg as the daemon would use them (rules, exemptions,
 * limit_action); appends each problem to errs as "FILE:LINE: message". Returns the
 * number of problems (0: fine) or -ENOMEM. For `postsurge check-config` and start-up. */
int engine_check_config(const struct config *cfg, struct config_errors *errs);

/* Fills *st. */
void engine_get_stats(const struct engine *e, struct engine_stats *st);

/* The store in use (borrowed; replaced on reload, NULL once stopped), for metrics. */
struct store *engine_store(const struct engine *e);
/* The statistics and state of the engine's counter store (for status). 0, or -ENOENT
 * without an engine (e NULL) or once its store is gone. Loop thread. */
int engine_counters_stats(const struct engine *e, struct store_stats *st);

/* Called on the first refusal of a key by a rule in its window (per node): extra is
 * {"rule","key","value","limit","count","window_ms","client","dryrun"} (the callee takes
 * it), text a one-line summary. The event log (overload/controller.c) registers it. */
typedef void (*engine_limit_hit_fn)(void *arg, json_t *extra, const char *text);
void engine_set_limit_hit_cb(struct engine *e, engine_limit_hit_fn fn, void *arg);

/* The control socket's `limits ...` commands (argv[0] is "limits"): list, show RULE
 * VALUE. reply(arg, o) runs once with the JSON answer ({"ok":true,...} or
 * {"ok":false,"error":"..."}; reply takes o), at once or after a store round trip. */
typedef void (*engine_reply_fn)(void *arg, json_t *o);
void engine_limits_command(struct engine *e, int argc, char **argv, engine_reply_fn reply,
                           void *arg);
