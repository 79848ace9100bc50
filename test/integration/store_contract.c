/* store_contract: the one test suite both stores must pass. Without arguments it runs the
 * cmocka suite against REDIS_URL if set (a redis-server or a nutcracker in front of
 * several), else the memory store: the takes of test/data/window/takes.txt give the
 * answers written there, batches, prefixes, cancellation, argument checks, and answers
 * from local counters when Redis is unreachable. With --driver URL it reads commands on
 * stdin so test_store_*.py can kill, stop and flush Redis between takes. */
/* The ops below are written {key, window_ms, limit, amount}: keylen left 0 has the store
 * count the key's length, which is what these tests want. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "config.h"
#include "util/log.h"
#include "store/sha1.h"
#include "store/store.h"

static const char *redis_url; /* NULL: memory */
static char run_prefix[64];   /* unique per run: Redis keeps keys between tests */

struct take_wait {
    bool done;
    int calls;
    int status;
    size_t n;
    struct window_result res[STORE_MAX_OPS];
    bool have_results;
};

static void on_take(void *arg, int status, const struct window_result *results, size_t n)
{
    struct take_wait *w = arg;
    w->calls++;
    w->done = true;
    w->status = status;
    w->n = n;
    w->have_results = results != NULL;
    if (results)
        memcpy(w->res, results, n * sizeof(*results));
}

static struct config *make_config(const char *store, const char *prefix, const char *action)
{
    struct config *cfg = config_new_defaults();
    assert_non_null(cfg);
    free(cfg->store);
    cfg->store = strdup(store);
    free(cfg->store_key_prefix);
    cfg->store_key_prefix = strdup(prefix);
    free(cfg->store_failure_action);
    cfg->store_failure_action = strdup(action);
    assert_non_null(cfg->store);
    assert_non_null(cfg->store_key_prefix);
    assert_non_null(cfg->store_failure_action);
    /* redis-sentinel:// stores whose sentinels need a password. */
    const char *spw = getenv("REDIS_SENTINEL_PASSWORD");
    if (spw && spw[0]) {
        free(cfg->redis_sentinel_password);
        cfg->redis_sentinel_password = strdup(spw);
        assert_non_null(cfg->redis_sentinel_password);
    }
    /* Generous: a loaded CI machine must not turn answers into local ones. */
    cfg->redis_timeout = 2000;
    cfg->redis_reconnect_max = 500;
    return cfg;
}

static struct store *open_store(uv_loop_t *loop, const char *url, const char *prefix,
                                const char *action)
{
    struct config *cfg = make_config(url, prefix, action);
    struct store *s = NULL;
    char err[256] = "";
    int rc = store_new(loop, cfg, &s, err, sizeof(err));
    config_free(cfg);
    if (rc < 0)
        fail_msg("store_new(%s): %d %s", url, rc, err);
    return s;
}

static const char *backend(void)
{
    return redis_url ? redis_url : "memory";
}

/* Runs one take to completion. Returns the callback's status. */
static int take(uv_loop_t *loop, struct store *s, const struct store_op *ops, size_t n, int64_t now,
                struct take_wait *w)
{
    memset(w, 0, sizeof(*w));
    int rc = store_window_take(s, ops, n, now, on_take, w, NULL);
    assert_int_equal(rc, 0);
    /* The callback never runs inside the call. */
    assert_false(w->done);
    while (!w->done)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(w->calls, 1);
    assert_int_equal(w->n, n);
    return w->status;
}

static void store_closed(void *arg)
{
    (*(int *)arg)++;
}

static void close_all(uv_loop_t *loop, struct store **stores, size_t n)
{
    int closed = 0;
    for (size_t i = 0; i < n; i++)
        store_close(stores[i], store_closed, &closed);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(closed, (int)n);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* Replays the shared takes file; want_status 0 (the store answers) or < 0 (local). */
static void replay_takes(uv_loop_t *loop, struct store *s, const char *keyprefix, bool local)
{
    const char *path = TEST_DATA "/window/takes.txt";
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[256];
    unsigned lineno = 0, ntakes = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char key[64], fullkey[160];
        int64_t now, win, limit, amount, count;
        int allowed;
        int n = sscanf(line, "%63s %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " => %d %" SCNd64,
                       key, &now, &win, &limit, &amount, &allowed, &count);
        if (n != 7)
            fail_msg("%s:%u: bad line", path, lineno);
        snprintf(fullkey, sizeof(fullkey), "%s%s", keyprefix, key);
        struct store_op op = {fullkey, win, limit, amount};
        struct take_wait w;
        int st = take(loop, s, &op, 1, now, &w);
        if (local ? st >= 0 : st != 0)
            fail_msg("%s:%u: status %d on %s", path, lineno, st, backend());
        assert_true(w.have_results);
        if (w.res[0].allowed != (allowed != 0) || w.res[0].count != count)
            fail_msg("%s:%u: %s gave %d %" PRId64 ", want %d %" PRId64, path, lineno, backend(),
                     w.res[0].allowed, w.res[0].count, allowed, count);
        ntakes++;
    }
    fclose(f);
    assert_true(ntakes > 50);
}

static void test_store_contract_takes_file(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, backend(), run_prefix, "local");
    replay_takes(&loop, s, "file:", false);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.local_answers, 0);
    /* If our SHA-1 of the script differed from Redis's, every call would be NOSCRIPT:
     * only the first call on each backend may be (nutcracker: two, the test cluster:
     * three masters). */
    assert_true(st.noscript <= 3);
    if (redis_url)
        assert_true(st.connected);
    close_all(&loop, &s, 1);
}

static void test_store_contract_batch_in_order(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, backend(), run_prefix, "local");
    /* The same key twice in one request: the ops apply in order. */
    struct store_op ops[4] = {
        {"batch:a", 60000, 3, 2},
        {"batch:a", 60000, 3, 2},
        {"batch:b", 3600000, 10, 10},
        {"batch:a", 60000, 3, 1},
    };
    struct take_wait w;
    assert_int_equal(take(&loop, s, ops, 4, 1000, &w), 0);
    assert_true(w.res[0].allowed);
    assert_int_equal(w.res[0].count, 2);
    assert_false(w.res[1].allowed);
    assert_int_equal(w.res[1].count, 2);
    assert_true(w.res[2].allowed);
    assert_int_equal(w.res[2].count, 10);
    assert_true(w.res[3].allowed);
    assert_int_equal(w.res[3].count, 3);

    /* Many ops in flight at once, answered in order. */
    enum { N = 200 };
    static struct take_wait many[N];
    for (int i = 0; i < N; i++) {
        struct store_op op = {"batch:many", 60000, N / 2, 1};
        memset(&many[i], 0, sizeof(many[i]));
        assert_int_equal(store_window_take(s, &op, 1, 2000, on_take, &many[i], NULL), 0);
    }
    for (int i = 0; i < N; i++) {
        while (!many[i].done)
            uv_run(&loop, UV_RUN_ONCE);
        assert_int_equal(many[i].status, 0);
        assert_int_equal(many[i].res[0].allowed, i < N / 2);
        assert_int_equal(many[i].res[0].count, i < N / 2 ? i + 1 : N / 2);
    }
    close_all(&loop, &s, 1);
}

static void test_store_contract_prefix_isolation(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char p1[96], p2[96];
    snprintf(p1, sizeof(p1), "%sone:", run_prefix);
    snprintf(p2, sizeof(p2), "%stwo:", run_prefix);
    struct store *s[3] = {
        open_store(&loop, backend(), p1, "local"),
        open_store(&loop, backend(), p2, "local"),
        open_store(&loop, backend(), p1, "local"),
    };
    struct store_op op = {"iso", 60000, 2, 1};
    struct take_wait w;
    assert_int_equal(take(&loop, s[0], &op, 1, 5000, &w), 0);
    assert_int_equal(w.res[0].count, 1);
    assert_int_equal(take(&loop, s[0], &op, 1, 5001, &w), 0);
    assert_int_equal(w.res[0].count, 2);
    /* Another prefix: another counter. */
    assert_int_equal(take(&loop, s[1], &op, 1, 5002, &w), 0);
    assert_true(w.res[0].allowed);
    assert_int_equal(w.res[0].count, 1);
    /* The same prefix from a second store (a second node): shared through Redis only. */
    assert_int_equal(take(&loop, s[2], &op, 1, 5003, &w), 0);
    if (redis_url) {
        assert_false(w.res[0].allowed);
        assert_int_equal(w.res[0].count, 2);
    } else {
        assert_true(w.res[0].allowed);
        assert_int_equal(w.res[0].count, 1);
    }
    close_all(&loop, s, 3);
}

static void test_store_contract_cancel(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, backend(), run_prefix, "local");
    struct store_op op = {"cancel", 60000, 5, 1};
    struct take_wait w1, w2;
    memset(&w1, 0, sizeof(w1));
    memset(&w2, 0, sizeof(w2));
    struct store_req *req = NULL;
    assert_int_equal(store_window_take(s, &op, 1, 1000, on_take, &w1, &req), 0);
    assert_non_null(req);
    assert_int_equal(store_window_take(s, &op, 1, 1000, on_take, &w2, NULL), 0);
    store_req_cancel(req);
    while (!w2.done)
        uv_run(&loop, UV_RUN_ONCE);
    /* Let a late reply to the cancelled request arrive (it must be dropped). */
    struct take_wait w3;
    assert_int_equal(take(&loop, s, &op, 1, 1000, &w3), 0);
    assert_int_equal(w1.calls, 0);
    assert_int_equal(w2.calls, 1);
    /* A cancelled op already sent still counts (3); one cancelled while Redis's name was
     * still resolving was never sent (2). */
    if (w3.res[0].count != 3 && !(redis_url && w3.res[0].count == 2))
        fail_msg("count %" PRId64 " after cancel", w3.res[0].count);
    close_all(&loop, &s, 1);
}

static void test_store_contract_rejects_bad_requests(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, backend(), run_prefix, "local");
    struct take_wait w;
    memset(&w, 0, sizeof(w));
    static char longkey[STORE_MAX_KEY + 2];
    memset(longkey, 'k', sizeof(longkey) - 1);
    struct store_op ok = {"bad", 60000, 1, 1};
    struct store_op many[STORE_MAX_OPS + 1];
    for (size_t i = 0; i < STORE_MAX_OPS + 1; i++)
        many[i] = ok;
    struct {
        struct store_op op;
        int64_t now;
        int want;
    } cases[] = {
        {{"bad", 0, 1, 1}, 0, -EINVAL},
        {{"bad", 60000, -1, 1}, 0, -EINVAL},
        {{"bad", 60000, 1, -1}, 0, -EINVAL},
        {{NULL, 60000, 1, 1}, 0, -EINVAL},
        {{longkey, 60000, 1, 1}, 0, -ENAMETOOLONG},
        {{"bad", 60000, 1, 1}, -1, -EINVAL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(store_window_take(s, &cases[i].op, 1, cases[i].now, on_take, &w, NULL),
                         cases[i].want);
    assert_int_equal(store_window_take(s, many, 0, 0, on_take, &w, NULL), -E2BIG);
    assert_int_equal(store_window_take(s, many, STORE_MAX_OPS + 1, 0, on_take, &w, NULL), -E2BIG);
    assert_int_equal(store_node_get_all(s, 0, NULL, NULL, NULL), -EINVAL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(w.calls, 0);
    close_all(&loop, &s, 1);
}

static void test_store_contract_close_answers_pending(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, backend(), run_prefix, "local");
    struct store_op op = {"closing", 60000, 5, 1};
    struct take_wait w;
    memset(&w, 0, sizeof(w));
    assert_int_equal(store_window_take(s, &op, 1, 1000, on_take, &w, NULL), 0);
    int closed = 0;
    store_close(s, store_closed, &closed);
    assert_int_equal(w.calls, 1);
    assert_int_equal(w.status, -ECANCELED);
    assert_false(w.have_results);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A port nothing listens on: refused at once. */
static int closed_port(void)
{
    uv_loop_t loop;
    uv_tcp_t t;
    struct sockaddr_in a;
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &t);
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&t, (const struct sockaddr *)&a, 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return port;
}

static void test_store_contract_redis_down_answers_locally(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", closed_port());
    struct store *s = open_store(&loop, url, run_prefix, "local");
    /* Local counters give the same answers as any store. */
    replay_takes(&loop, s, "down:", true);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_false(st.connected);
    assert_true(st.local_answers > 50);
    assert_int_equal(st.failures, st.local_answers);
    close_all(&loop, &s, 1);

    /* store_failure_action = dunno: a failure without results. */
    assert_int_equal(uv_loop_init(&loop), 0);
    s = open_store(&loop, url, run_prefix, "dunno");
    struct store_op op = {"down", 60000, 5, 1};
    struct take_wait w;
    assert_true(take(&loop, s, &op, 1, 1000, &w) < 0);
    assert_false(w.have_results);
    close_all(&loop, &s, 1);
}

/* Node status, events and the journal copy: the single-key commands every store runs
 * (Redis Cluster: each on the master of its key's slot). */
struct cop_wait {
    bool done;
    int status;
    size_t n;
    char text[8][160];
};

static void on_cop_done(void *arg, int status)
{
    struct cop_wait *w = arg;
    w->done = true;
    w->status = status;
}

static void on_cop_nodes(void *arg, int status, const struct store_node_status *nodes, size_t n)
{
    struct cop_wait *w = arg;
    w->done = true;
    w->status = status;
    w->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(w->text[i], sizeof(w->text[i]), "%s %s", nodes[i].node, nodes[i].json);
}

static void on_cop_events(void *arg, int status, const char *const *events, size_t n)
{
    struct cop_wait *w = arg;
    w->done = true;
    w->status = status;
    w->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(w->text[i], sizeof(w->text[i]), "%s", events[i]);
}

static void cop_wait_for(uv_loop_t *loop, struct cop_wait *w)
{
    while (!w->done)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(w->status, 0);
}

static void test_store_contract_cluster_ops(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char prefix[96];
    snprintf(prefix, sizeof(prefix), "%scops:", run_prefix);
    struct store *s = open_store(&loop, backend(), prefix, "local");
    const int64_t now = 1700000000000;
    /* A take first: it waits for the connection (a cluster: for its slot map), which
     * these operations do not. */
    struct store_op op = {"cops-ready", 60000, 5, 1};
    struct take_wait tw;
    assert_int_equal(take(&loop, s, &op, 1, now, &tw), 0);
    const char *names[3] = {"mx1", "mx2", "mx3"};
    for (int i = 0; i < 3; i++) {
        struct cop_wait w = {0};
        char json[32];
        snprintf(json, sizeof(json), "{\"n\":%d}", i);
        assert_int_equal(store_node_put(s, names[i], json, now, 60000, on_cop_done, &w, NULL), 0);
        cop_wait_for(&loop, &w);
    }
    struct cop_wait w = {0};
    assert_int_equal(store_node_get_all(s, now + 1, on_cop_nodes, &w, NULL), 0);
    cop_wait_for(&loop, &w);
    assert_int_equal(w.n, 3);
    bool seen[3] = {false};
    for (size_t i = 0; i < w.n; i++)
        for (int k = 0; k < 3; k++) {
            char want[32];
            snprintf(want, sizeof(want), "%s {\"n\":%d}", names[k], k);
            seen[k] |= strcmp(w.text[i], want) == 0;
        }
    assert_true(seen[0] && seen[1] && seen[2]);
    for (int i = 0; i < 4; i++) {
        struct cop_wait e = {0};
        char json[32];
        snprintf(json, sizeof(json), "{\"e\":%d}", i);
        assert_int_equal(store_event_append(s, json, 3, on_cop_done, &e, NULL), 0);
        cop_wait_for(&loop, &e);
    }
    struct cop_wait r = {0};
    assert_int_equal(store_event_read(s, 10, on_cop_events, &r, NULL), 0);
    cop_wait_for(&loop, &r);
    assert_int_equal(r.n, 3); /* capped, newest first */
    assert_string_equal(r.text[0], "{\"e\":3}");
    assert_string_equal(r.text[2], "{\"e\":1}");
    struct cop_wait j = {0};
    assert_int_equal(store_journal_put(s, "mx1", "{\"j\":1}", on_cop_done, &j, NULL), 0);
    cop_wait_for(&loop, &j);
    struct cop_wait jd = {0};
    assert_int_equal(store_journal_put(s, "mx1", NULL, on_cop_done, &jd, NULL), 0);
    cop_wait_for(&loop, &jd);
    close_all(&loop, &s, 1);
}

static void test_store_contract_memory_bound(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, "memory", "", "local");
    store_set_max_entries(s, 4);
    struct take_wait w;
    /* "near" is the least recently used, at 4 of its 5; two keys of a 1 s window expire;
     * "low" is at 1 of 5. */
    struct store_op near = {"near", 3600000, 5, 4}, low = {"low", 3600000, 5, 1};
    struct store_op short0 = {"short0", 1000, 5, 1}, short1 = {"short1", 1000, 5, 1};
    assert_int_equal(take(&loop, s, &near, 1, 100000, &w), 0);
    assert_int_equal(take(&loop, s, &short0, 1, 100000, &w), 0);
    assert_int_equal(take(&loop, s, &short1, 1, 100000, &w), 0);
    assert_int_equal(take(&loop, s, &low, 1, 100000, &w), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.max_entries, 4);
    /* A full table: each new key starts a wave. The expired counters go first... */
    struct store_op n1 = {"new1", 3600000, 5, 1}, n2 = {"new2", 3600000, 5, 1};
    assert_int_equal(take(&loop, s, &n1, 1, 200000, &w), 0);
    assert_int_equal(take(&loop, s, &n2, 1, 200000, &w), 0);
    store_get_stats(s, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.wave_expired, 2);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.waves, 2);
    /* ...then the live counter furthest from its limit, least recently used first among
     * equals ("low", not "new1" or "new2"), never "near" although it is the oldest. */
    struct store_op n3 = {"new3", 3600000, 5, 1};
    assert_int_equal(take(&loop, s, &n3, 1, 200000, &w), 0);
    store_get_stats(s, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.waves, 3);
    struct store_op near1 = {"near", 3600000, 5, 1};
    assert_int_equal(take(&loop, s, &near1, 1, 200000, &w), 0);
    assert_true(w.res[0].allowed);
    assert_int_equal(w.res[0].count, 5);
    assert_int_equal(take(&loop, s, &near1, 1, 200000, &w), 0);
    assert_false(w.res[0].allowed);
    /* The evicted key starts again from zero. */
    assert_int_equal(take(&loop, s, &low, 1, 200000, &w), 0);
    assert_int_equal(w.res[0].count, 1);
    close_all(&loop, &s, 1);
}

/* A flood of new keys ten times the bound, three counters a request as with three rules,
 * takes nothing from a client that used half of its limit: it gets exactly the other
 * half, and every eviction was of a counter at 1 of its 100. */
static void test_store_contract_memory_flood_keeps_busy_counters(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, "memory", "", "local");
    store_set_max_entries(s, 2000);
    struct take_wait w;
    struct store_op client[3] = {{"ip:192.0.2.1", 3600000, 100, 1},
                                 {"net:192.0.2.0", 3600000, 1000, 1},
                                 {"day:192.0.2.1", 86400000, 500, 1}};
    int64_t now = 1000000;
    for (int i = 0; i < 50; i++) {
        assert_int_equal(take(&loop, s, client, 3, now, &w), 0);
        assert_true(w.res[0].allowed);
    }
    char k[3][64];
    for (int i = 0; i < 20000; i++) {
        snprintf(k[0], sizeof(k[0]), "ip:10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        snprintf(k[1], sizeof(k[1]), "net:10.%d.%d.0", i >> 16, (i >> 8) & 255);
        snprintf(k[2], sizeof(k[2]), "day:10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        struct store_op flood[3] = {
            {k[0], 3600000, 100, 1}, {k[1], 3600000, 1000, 1}, {k[2], 86400000, 500, 1}};
        assert_int_equal(take(&loop, s, flood, 3, now + 1 + i / 100, &w), 0);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    assert_true(st.entries <= 2000);
    assert_true(st.evictions > 20000);
    assert_true(st.waves > 300);
    int admitted = 0;
    for (int i = 0; i < 60; i++) {
        assert_int_equal(take(&loop, s, client, 3, now + 1000, &w), 0);
        admitted += w.res[0].allowed;
    }
    assert_int_equal(admitted, 50);
    close_all(&loop, &s, 1);
}

static void on_guard(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void test_store_contract_memory_sweep(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, "memory", "", "local");
    struct take_wait w;
    char key[32];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "short%d", i);
        struct store_op op = {key, 1000, 5, 1};
        assert_int_equal(take(&loop, s, &op, 1, 0, &w), 0);
    }
    struct store_op live = {"live", 3600000, 5, 1};
    assert_int_equal(take(&loop, s, &live, 1, 100000, &w), 0);
    /* The sweep runs each second on its own; a guard bounds the wait. */
    uv_timer_t guard;
    bool expired = false;
    uv_timer_init(&loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, 10000, 0);
    struct store_stats st;
    do {
        uv_run(&loop, UV_RUN_ONCE);
        store_get_stats(s, &st);
    } while (st.entries > 1 && !expired);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.expired, 50);
    assert_int_equal(st.evictions, 0);
    uv_close((uv_handle_t *)&guard, NULL);
    assert_int_equal(take(&loop, s, &live, 1, 100001, &w), 0);
    assert_int_equal(w.res[0].count, 2);
    close_all(&loop, &s, 1);
}

/* Counters expire once traffic stops: the sweep's clock moves on with the loop's after
 * the last take (it used to stop at the last take's time, keeping a flood's counters and
 * their memory for good). */
static void test_store_contract_memory_expires_without_traffic(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store *s = open_store(&loop, "memory", "", "local");
    struct take_wait w;
    char key[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "quiet%d", i);
        struct store_op op = {key, 1000, 5, 1};
        assert_int_equal(take(&loop, s, &op, 1, 5000000, &w), 0);
    }
    uv_timer_t guard;
    bool expired = false;
    uv_timer_init(&loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, 15000, 0);
    struct store_stats st;
    do {
        uv_run(&loop, UV_RUN_ONCE);
        store_get_stats(s, &st);
    } while (st.entries > 0 && !expired);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.expired, 20);
    uv_close((uv_handle_t *)&guard, NULL);
    close_all(&loop, &s, 1);
}

static void test_store_contract_sha1_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *in, *hex;
    } v[] = {
        {"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
        {"The quick brown fox jumps over the lazy dog", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"},
    };
    char hex[41];
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        sha1_hex(v[i].in, strlen(v[i].in), hex);
        assert_string_equal(hex, v[i].hex);
    }
    static char mil[1000000];
    memset(mil, 'a', sizeof(mil));
    sha1_hex(mil, sizeof(mil), hex);
    assert_string_equal(hex, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

/* --- driver mode: one command per stdin line, one answer per stdout line ---
 *   take STORE NOW_MS KEY WINDOW_MS LIMIT AMOUNT [KEY WINDOW_MS LIMIT AMOUNT ...]
 *       -> "STATUS LATENCY_US ALLOWED COUNT [ALLOWED COUNT ...]" (results "- -" if none)
 *   stats STORE -> "connected LOCAL_ANSWERS TIMEOUTS NOSCRIPT RECONNECTS FAILURES"
 *   quit
 * STORE is a or b: two stores on the same URL, like two nodes. */

struct driver {
    uv_loop_t loop;
    uv_pipe_t in;
    struct store *st[2];
    char buf[8192];
    size_t nbuf;
    int busy; /* takes pending: commands wait until the answer is out */
    bool quitting;
};

struct driver_take {
    struct driver *d;
    uint64_t t0;
};

static void driver_on_take(void *arg, int status, const struct window_result *res, size_t n)
{
    struct driver_take *t = arg;
    uint64_t us = (uv_hrtime() - t->t0) / 1000;
    printf("%d %" PRIu64, status, us);
    for (size_t i = 0; i < n; i++) {
        if (res)
            printf(" %d %" PRId64, res[i].allowed ? 1 : 0, res[i].count);
        else
            printf(" - -");
    }
    printf("\n");
    fflush(stdout);
    t->d->busy--;
    free(t);
}

static void driver_process(struct driver *d);

static void driver_line(struct driver *d, char *line)
{
    char *save = NULL;
    char *cmd = strtok_r(line, " \t", &save);
    if (!cmd)
        return;
    if (strcmp(cmd, "quit") == 0) {
        d->quitting = true;
        return;
    }
    char *which = strtok_r(NULL, " \t", &save);
    struct store *s = which && which[0] == 'b' ? d->st[1] : d->st[0];
    if (strcmp(cmd, "stats") == 0) {
        struct store_stats st;
        store_get_stats(s, &st);
        printf("%d %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %zu\n",
               st.connected ? 1 : 0, st.local_answers, st.timeouts, st.noscript, st.reconnects,
               st.failures, st.entries);
        fflush(stdout);
        return;
    }
    if (strcmp(cmd, "take") == 0) {
        char *nowp = strtok_r(NULL, " \t", &save);
        struct store_op ops[STORE_MAX_OPS];
        size_t n = 0;
        char *k;
        while (n < STORE_MAX_OPS && (k = strtok_r(NULL, " \t", &save))) {
            char *w = strtok_r(NULL, " \t", &save), *l = strtok_r(NULL, " \t", &save),
                 *a = strtok_r(NULL, " \t", &save);
            if (!w || !l || !a)
                break;
            ops[n++] = (struct store_op){k, strtoll(w, NULL, 10), strtoll(l, NULL, 10),
                                         strtoll(a, NULL, 10)};
        }
        struct driver_take *t = calloc(1, sizeof(*t));
        if (!t || !nowp)
            abort();
        t->d = d;
        t->t0 = uv_hrtime();
        d->busy++;
        int rc = store_window_take(s, ops, n, strtoll(nowp, NULL, 10), driver_on_take, t, NULL);
        if (rc < 0) {
            printf("error %d\n", rc);
            fflush(stdout);
            d->busy--;
            free(t);
        }
        return;
    }
    printf("error unknown command\n");
    fflush(stdout);
}

static void driver_closed(void *arg)
{
    (void)arg;
}

static void driver_process(struct driver *d)
{
    char *nl;
    while (!d->busy && !d->quitting && (nl = memchr(d->buf, '\n', d->nbuf))) {
        *nl = '\0';
        driver_line(d, d->buf);
        size_t used = (size_t)(nl + 1 - d->buf);
        memmove(d->buf, nl + 1, d->nbuf - used);
        d->nbuf -= used;
    }
    if (d->quitting && !d->busy && !uv_is_closing((uv_handle_t *)&d->in)) {
        uv_close((uv_handle_t *)&d->in, NULL);
        store_close(d->st[0], driver_closed, NULL);
        store_close(d->st[1], driver_closed, NULL);
    }
}

static void driver_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct driver *d = h->data;
    buf->base = d->buf + d->nbuf;
    buf->len = sizeof(d->buf) - d->nbuf - 1;
}

static void driver_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct driver *d = st->data;
    if (nread < 0) {
        d->quitting = true;
        uv_read_stop(st);
    } else {
        d->nbuf += (size_t)nread;
    }
    driver_process(d);
}

/* Runs queued lines once an answer went out. */
static void driver_on_check(uv_check_t *h)
{
    driver_process(h->data);
}

static int driver_main(const char *url, const char *prefix, const char *action, int64_t timeout)
{
    static struct driver d;
    uv_loop_init(&d.loop);
    for (int i = 0; i < 2; i++) {
        struct config *cfg = make_config(url, prefix, action);
        cfg->redis_timeout = timeout;
        char err[256];
        if (store_new(&d.loop, cfg, &d.st[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "store_new: %s\n", err);
            return 1;
        }
        config_free(cfg);
    }
    uv_pipe_init(&d.loop, &d.in, 0);
    d.in.data = &d;
    uv_pipe_open(&d.in, 0);
    uv_read_start((uv_stream_t *)&d.in, driver_alloc, driver_on_read);
    uv_check_t check;
    uv_check_init(&d.loop, &check);
    check.data = &d;
    uv_check_start(&check, driver_on_check);
    uv_unref((uv_handle_t *)&check);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&check, NULL);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&d.loop);
    fprintf(stderr, "driver: loop closed %d\n", rc);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    log_open("store_contract", "mail", true, LOG_LVL_INFO);
    if (argc >= 2 && strcmp(argv[1], "--driver") == 0) {
        if (argc < 4) {
            fprintf(stderr, "usage: store_contract --driver URL PREFIX [ACTION [TIMEOUT_MS]]\n");
            return 2;
        }
        return driver_main(argv[2], argv[3], argc > 4 ? argv[4] : "local",
                           argc > 5 ? strtoll(argv[5], NULL, 10) : 100);
    }
    redis_url = getenv("REDIS_URL");
    if (redis_url && !redis_url[0])
        redis_url = NULL;
    snprintf(run_prefix, sizeof(run_prefix), "contract:%ld:%ld:", (long)getpid(), (long)time(NULL));
    fprintf(stderr, "store contract against %s\n", backend());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_contract_sha1_vectors),
        cmocka_unit_test(test_store_contract_takes_file),
        cmocka_unit_test(test_store_contract_batch_in_order),
        cmocka_unit_test(test_store_contract_prefix_isolation),
        cmocka_unit_test(test_store_contract_cancel),
        cmocka_unit_test(test_store_contract_rejects_bad_requests),
        cmocka_unit_test(test_store_contract_close_answers_pending),
        cmocka_unit_test(test_store_contract_redis_down_answers_locally),
        cmocka_unit_test(test_store_contract_cluster_ops),
        cmocka_unit_test(test_store_contract_memory_bound),
        cmocka_unit_test(test_store_contract_memory_flood_keeps_busy_counters),
        cmocka_unit_test(test_store_contract_memory_sweep),
        cmocka_unit_test(test_store_contract_memory_expires_without_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
