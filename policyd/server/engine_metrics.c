/* engine_metrics: what the rate-limit engine exports. /metrics: decisions by rule and
 * action, the store's round-trip time, store failures by kind, the degraded-mode gauge
 * (1 while Redis is unreachable and local counters answer) and the decisions answered
 * that way. /status: "limits" (the same counters, refusals by rule) and "store" (kind,
 * up, degraded since when). Everything is read at scrape time from the engine's
 * counters; only the round-trip histogram is fed per request. */
#define LOG_COMPONENT "limits"
#include "engine.h"

#include <errno.h>
#include <string.h>

#include "util/metrics.h"

/* Store round trips in seconds: 50 us (memory, local Redis) to 2.5 s (redis_timeout). */
static const double rtt_bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                    0.025,   0.05,   0.1,     0.25,   0.5,   1.0,    2.5};

/* Degraded: the latest round trip to a Redis store failed (local counters or
 * store_failure_action answer), or Redis is not connected after it was used. Until a
 * round trip succeeds again. */
static bool engine_degraded(const struct engine *e, struct store_stats *ss, const char **kind)
{
    struct store *s = engine_store(e);
    struct engine_stats st;

    memset(ss, 0, sizeof(*ss));
    *kind = s ? store_kind(s) : "none";
    if (!s)
        return false;
    store_get_stats(s, ss);
    engine_get_stats(e, &st);
    return strcmp(*kind, "redis") == 0 &&
           (st.failing_since_ms != 0 || (!ss->connected && ss->takes > 0));
}

static int collect_engine(struct metrics_out *o, void *arg)
{
    struct engine *e = arg;
    struct engine_stats st;
    struct store_stats ss;
    const char *kind;
    static const char *const ra_l[] = {"rule", "action"}, *const kind_l[] = {"kind"};
    int rc;

    engine_get_stats(e, &st);
    bool degraded = engine_degraded(e, &ss, &kind);
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((rc = (x)) < 0)                                                                        \
            return rc;                                                                             \
    } while (0)
    TRY(metrics_out_family(o, METRIC_COUNTER, "postsurge_decisions_total",
                           "Rate-limit decisions by rule and action: refuse (enforced), dryrun "
                           "(would refuse, answered default_action); rule \"\" for requests no "
                           "rule refused: allow, exempt, degraded (store failed)."));
    size_t n;
    const struct engine_rule_count *rcs = engine_rule_counts(e, &n);
    uint64_t refused = 0;
    for (size_t i = 0; i < n; i++) {
        const char *v1[] = {rcs[i].name, "refuse"}, *v2[] = {rcs[i].name, "dryrun"};
        TRY(metrics_out_sample(o, "postsurge_decisions_total", ra_l, v1, 2,
                               (double)rcs[i].refused));
        TRY(metrics_out_sample(o, "postsurge_decisions_total", ra_l, v2, 2, (double)rcs[i].dryrun));
        refused += rcs[i].refused + rcs[i].dryrun;
    }
    uint64_t other = st.decisions > refused + st.exempt + st.store_failures
                         ? st.decisions - refused - st.exempt - st.store_failures
                         : 0;
    const char *va[] = {"", "allow"}, *ve[] = {"", "exempt"}, *vd[] = {"", "degraded"};
    TRY(metrics_out_sample(o, "postsurge_decisions_total", ra_l, va, 2, (double)other));
    TRY(metrics_out_sample(o, "postsurge_decisions_total", ra_l, ve, 2, (double)st.exempt));
    TRY(metrics_out_sample(o, "postsurge_decisions_total", ra_l, vd, 2, (double)st.store_failures));
    TRY(metrics_out_family(o, METRIC_COUNTER, "postsurge_store_failures_total",
                           "Store round trips that failed, by kind (timeout, connection, other)."));
    for (int k = 0; k < 3; k++) {
        const char *v[] = {engine_fail_kind_name(k)};
        TRY(metrics_out_sample(o, "postsurge_store_failures_total", kind_l, v, 1,
                               (double)st.store_fail_kind[k]));
    }
    TRY(metrics_out_family(o, METRIC_GAUGE, "postsurge_store_degraded",
                           "1 while the Redis store is unreachable and local counters answer."));
    TRY(metrics_out_sample(o, "postsurge_store_degraded", NULL, NULL, 0, degraded ? 1 : 0));
    TRY(metrics_out_family(o, METRIC_COUNTER, "postsurge_degraded_decisions_total",
                           "Decisions answered while the store failed (local counters or "
                           "store_failure_action)."));
    TRY(metrics_out_sample(o, "postsurge_degraded_decisions_total", NULL, NULL, 0,
                           (double)st.store_failures));
    TRY(metrics_out_family(o, METRIC_GAUGE, "postsurge_store_up",
                           "1 while the store answers (memory: always)."));
    TRY(metrics_out_sample(o, "postsurge_store_up", NULL, NULL, 0, ss.connected ? 1 : 0));
    TRY(metrics_out_family(o, METRIC_GAUGE, "postsurge_store_entries",
                           "Counter keys held in memory (the local fallback for Redis)."));
    TRY(metrics_out_sample(o, "postsurge_store_entries", NULL, NULL, 0, (double)ss.entries));
#undef TRY
    return 0;
}

static void add_refusal(const struct engine_refusal *r, void *arg)
{
    json_array_append_new(arg, json_pack("{s:I,s:s,s:s,s:b}", "time", (json_int_t)r->time_ms,
                                         "rule", r->rule, "key", r->key, "dryrun", r->dryrun));
}

static int status_engine(struct server *srv, json_t *status, void *arg)
{
    struct engine *e = arg;
    struct engine_stats st;
    struct store_stats ss;
    const char *kind;
    (void)srv;

    engine_get_stats(e, &st);
    bool degraded = engine_degraded(e, &ss, &kind);
    json_t *rules = json_array();
    size_t n;
    const struct engine_rule_count *rcs = engine_rule_counts(e, &n);
    for (size_t i = 0; rules && i < n; i++)
        json_array_append_new(rules, json_pack("{s:s,s:I,s:I}", "name", rcs[i].name, "refused",
                                               (json_int_t)rcs[i].refused, "dryrun",
                                               (json_int_t)rcs[i].dryrun));
    json_t *recent = json_array();
    if (recent)
        engine_recent_refusals(e, add_refusal, recent);
    json_object_set_new(
        status, "limits",
        json_pack("{s:I,s:I,s:I,s:I,s:o*,s:o*}", "decisions", (json_int_t)st.decisions, "refused",
                  (json_int_t)st.denies, "dryrun_refused", (json_int_t)st.dryrun_denies, "exempt",
                  (json_int_t)st.exempt, "rules", rules, "recent_refusals", recent));
    json_t *fails = json_object();
    for (int k = 0; fails && k < 3; k++)
        json_object_set_new(fails, engine_fail_kind_name(k),
                            json_integer((json_int_t)st.store_fail_kind[k]));
    json_object_set_new(status, "store_state",
                        json_pack("{s:s,s:s,s:b,s:I,s:I,s:I,s:o*}", "kind", kind, "up",
                                  ss.connected ? "up"
                                  : ss.takes   ? "down"
                                               : "not used yet",
                                  "degraded", degraded, "degraded_since",
                                  (json_int_t)(degraded ? st.failing_since_ms : 0), "entries",
                                  (json_int_t)ss.entries, "degraded_decisions",
                                  (json_int_t)st.store_failures, "failures", fails));
    return 0;
}

int engine_metrics_register(struct server *srv, struct engine *e)
{
    struct metric *f = metrics_histogram_new(
        server_metrics(srv), "postsurge_store_round_trip_seconds",
        "Time from a request's counter operations going to the store to the store's answer.", NULL,
        rtt_bounds, sizeof(rtt_bounds) / sizeof(rtt_bounds[0]));
    struct metrics_series *h = f ? metrics_series(f, NULL) : NULL;
    if (!h)
        return -ENOMEM;
    engine_set_store_latency(e, h);
    if (metrics_add_collector(server_metrics(srv), collect_engine, e) < 0 ||
        server_add_status(srv, status_engine, e) < 0)
        return -ENOMEM;
    return 0;
}
