/* redis_health: what both Redis backends (store_redis.c, redis_cluster.c) say about
 * Redis's trouble. An error reply or a connection's fate is named by its kind, logged
 * with advice (one rate limiter per kind, with a count of what was suppressed), recorded
 * for `postsurge status`, and counted with the requests answered without Redis until a
 * "back" line says how long it lasted. */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const struct {
    const char *state;  /* for status */
    const char *prefix; /* error reply's first word */
    const char *advice; /* what to do, appended to the log line */
} redis_troubles[REDIS_TROUBLE_COUNT] = {
    [REDIS_OK_NOW] = {"ok", NULL, NULL},
    [REDIS_UNREACHABLE] = {"unreachable", NULL, NULL},
    [REDIS_TIMEOUT] = {"timeout", NULL, "raise redis_timeout if Redis is merely slow"},
    [REDIS_AUTH] = {"auth", NULL,
                    "check the password of the store URL (redis://:PASSWORD@host:port) against "
                    "Redis's requirepass"},
    [REDIS_OOM] = {"oom", "OOM",
                   "Redis is out of memory (maxmemory reached and its policy does not evict): "
                   "raise maxmemory or use maxmemory-policy volatile-ttl"},
    [REDIS_READONLY] = {"readonly", "READONLY",
                        "this Redis is a read-only replica: point store at the master"},
    [REDIS_LOADING] = {"loading", "LOADING", "Redis is loading its dataset after a restart"},
    [REDIS_MASTERDOWN] = {"masterdown", "MASTERDOWN",
                          "this replica lost its master: point store at the master"},
    [REDIS_BUSY] = {"busy", "BUSY", "another script is running too long in Redis"},
    [REDIS_CLUSTERDOWN] = {"clusterdown", "CLUSTERDOWN",
                           "the cluster does not serve every slot: see CLUSTER INFO"},
    [REDIS_ERROR] = {"error", NULL, NULL},
};

enum redis_trouble redis_error_kind(const char *err)
{
    if (!strncmp(err, "NOAUTH", 6) || !strncmp(err, "WRONGPASS", 9) || !strncmp(err, "NOPERM", 6) ||
        !strncmp(err, "ERR invalid password", 20) || !strncmp(err, "ERR AUTH", 8))
        return REDIS_AUTH;
    for (int k = REDIS_OOM; k <= REDIS_CLUSTERDOWN; k++) {
        size_t n = strlen(redis_troubles[k].prefix);
        if (!strncmp(err, redis_troubles[k].prefix, n) && (err[n] == ' ' || err[n] == '\0'))
            return (enum redis_trouble)k;
    }
    /* Inside a script Redis 7 reports a command's error after the script's own words. */
    if (strstr(err, "OOM command not allowed"))
        return REDIS_OOM;
    if (strstr(err, "READONLY You can't write"))
        return REDIS_READONLY;
    return REDIS_ERROR;
}

static uint64_t redis_health_now(const struct redis_health *h)
{
    return uv_now(h->s->loop);
}

void redis_health_init(struct redis_health *h, struct store *s, const char *name)
{
    memset(h, 0, sizeof(*h));
    h->s = s;
    snprintf(h->name, sizeof(h->name), "%s", name);
}

void redis_health_set_state(struct redis_health *h, enum redis_trouble k, const char *what)
{
    struct store_stats *st = &h->s->stats;
    if (k != h->trouble || !st->state[0]) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        h->trouble = k;
        h->trouble_since = redis_health_now(h);
        st->state_since_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        snprintf(st->state, sizeof(st->state), "%s", redis_troubles[k].state);
    }
    snprintf(st->reason, sizeof(st->reason), "%s", what ? what : "");
}

void redis_health_trouble(struct redis_health *h, const char *node, enum redis_trouble k,
                          const char *what, bool requests)
{
    const char *advice = redis_troubles[k].advice;
    if (requests)
        h->degraded = true;
    redis_health_set_state(h, k, what);
    log_warn_ratelimited(&h->rl[k], redis_health_now(h), (uint64_t)h->s->log_interval_ms,
                         "redis %s%s%s: %s%s%s%s%s", h->name, node && node[0] ? " " : "",
                         node ? node : "", what, advice ? " (" : "", advice ? advice : "",
                         advice ? ")" : "",
                         !requests              ? ""
                         : h->s->local_fallback ? "; answering from local counters"
                                                : "; answering per store_failure_action");
}

void redis_health_error_reply(struct redis_health *h, const char *node, const char *ctx,
                              const char *err, bool requests)
{
    char what[240];
    snprintf(what, sizeof(what), "%s%s%.180s", ctx ? ctx : "", ctx ? ": " : "", err);
    redis_health_trouble(h, node, redis_error_kind(err), what, requests);
}

void redis_health_again(struct redis_health *h, const char *node)
{
    char what[sizeof(h->s->stats.reason)];
    enum redis_trouble k = h->trouble != REDIS_OK_NOW ? h->trouble : REDIS_UNREACHABLE;
    snprintf(what, sizeof(what), "%s",
             h->s->stats.reason[0] ? h->s->stats.reason : "not connected");
    redis_health_trouble(h, node, k, what, true);
}

void redis_health_ok(struct redis_health *h)
{
    if (h->degraded || h->trouble != REDIS_OK_NOW) {
        uint64_t supp, now = redis_health_now(h);
        double secs = (double)(now - h->trouble_since) / 1000.0;
        /* Rate-limited too: a Redis that flaps would log a line per recovery. */
        if (log_threshold >= LOG_LVL_INFO &&
            log_ratelimit_allow(&h->rl_back, now, (uint64_t)h->s->log_interval_ms, &supp)) {
            char more[80] = "";
            if (h->outages_unlogged)
                snprintf(more, sizeof(more), " (%" PRIu64 " earlier recoveries not logged)",
                         h->outages_unlogged);
            log_info("redis %s is back after %.1f s (%s); %" PRIu64
                     " requests were answered without it%s",
                     h->name, secs, redis_troubles[h->trouble].state, h->degraded_count, more);
            h->outages_unlogged = 0;
        } else {
            h->outages_unlogged++;
        }
        if (h->degraded) {
            /* Shared counting resumes in Redis: the outage's local counters are not
             * consulted again (the next outage starts afresh), so free them now rather
             * than keep them for their windows (a day for a per-day rule). */
            mem_table_clear(&h->s->mem);
        }
        h->degraded = false;
        h->degraded_count = 0;
        redis_health_set_state(h, REDIS_OK_NOW, "");
    }
    if (!h->s->stats.state[0])
        redis_health_set_state(h, REDIS_OK_NOW, "");
}

void redis_health_finish_failed(struct redis_health *h, struct store_req *req, int status)
{
    if (status != -ECANCELED)
        h->degraded_count++;
    store_req_finish(req, status);
}
