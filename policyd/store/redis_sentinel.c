/* redis_sentinel: the address resolver of a redis-sentinel:// store. It asks the sentinels
 * in turn (SENTINEL get-master-addr-by-name) for the master's address and hands it to the
 * Redis backend (store_redis.c), which connects there, checks ROLE and runs every request
 * as for a single Redis. It stays subscribed to +switch-master on one sentinel, so a
 * failover moves the backend to the new master at once; the backend asks again when its
 * connection is lost, times out or gets READONLY. Never blocks the loop. */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "util/log.h"

/* One sentinel that does not answer is given up after this long at the least (or
 * redis_timeout, when larger), and the next one is asked. */
#define SENTINEL_QUERY_MIN_MS 500

struct redis_sentinel {
    struct store *s;
    struct config_store_url url; /* seeds and master_name */
    char password[256];          /* AUTH of the sentinels; "" = none */
    int64_t query_ms;
    /* The query in progress: one connection to seeds[cur], bounded by timer. */
    redisAsyncContext *q;
    bool asking;
    int start, tried, cur;
    uv_timer_t timer;
    char reasons[512]; /* why each sentinel of this round failed, for the log line */
    /* The subscription to +switch-master, on the sentinel that answered last. */
    redisAsyncContext *sub;
    char sub_where[80];
    bool closing;
};

/* Connects to seed i; NULL (with why filled) if that failed at once. */
static redisAsyncContext *sentinel_connect(struct redis_sentinel *st, int i, char *why,
                                           size_t whylen)
{
    const struct config_store_seed *seed = &st->url.seeds[i];
    redisAsyncContext *ac = redisAsyncConnect(seed->host, seed->port);
    if (!ac || ac->err) {
        snprintf(why, whylen, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    if (redis_uv_attach(ac, st->s->loop, NULL) < 0) {
        redisAsyncFree(ac);
        snprintf(why, whylen, "cannot attach to the event loop");
        return NULL;
    }
    ac->data = st;
    if (st->password[0]) {
        const char *argv[2] = {"AUTH", st->password};
        redisAsyncCommandArgv(ac, NULL, NULL, 2, argv, NULL);
    }
    return ac;
}

static void sentinel_seed_name(const struct redis_sentinel *st, int i, char *out, size_t n)
{
    const struct config_store_seed *seed = &st->url.seeds[i];
    snprintf(out, n, strchr(seed->host, ':') ? "[%s]:%d" : "%s:%d", seed->host, seed->port);
}

/* --- asking for the master --- */

static void sentinel_ask_next(struct redis_sentinel *st);

/* Drops the query connection on our side: its late callbacks find no data. */
static void sentinel_query_drop(struct redis_sentinel *st)
{
    redisAsyncContext *q = st->q;
    st->q = NULL;
    uv_timer_stop(&st->timer);
    if (q) {
        q->data = NULL;
        redisAsyncFree(q); /* deferred by hiredis when called from q's own callback */
    }
}

/* The sentinel being asked failed (why): note it and ask the next one. */
static void sentinel_query_failed(struct redis_sentinel *st, const char *why)
{
    char name[80];
    sentinel_seed_name(st, st->cur, name, sizeof(name));
    size_t l = strlen(st->reasons);
    snprintf(st->reasons + l, sizeof(st->reasons) - l, "%s%s: %.120s", l ? "; " : "", name, why);
    sentinel_query_drop(st);
    sentinel_ask_next(st);
}

static void sentinel_on_query_connect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *st = ac->data;
    if (!st || status == REDIS_OK)
        return;
    /* hiredis frees the context after this returns. */
    ((redisAsyncContext *)ac)->data = NULL;
    st->q = NULL;
    char why[160];
    snprintf(why, sizeof(why), "cannot connect: %.120s", ac->errstr);
    sentinel_query_failed(st, why);
}

static void sentinel_on_query_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *st = ac->data;
    (void)status;
    if (!st)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    st->q = NULL;
    sentinel_query_failed(st, "connection lost");
}

static void sentinel_on_query_timeout(uv_timer_t *h)
{
    struct redis_sentinel *st = h->data;
    char why[64];
    snprintf(why, sizeof(why), "no answer within %lld ms", (long long)st->query_ms);
    sentinel_query_failed(st, why);
}

static void sentinel_subscribe(struct redis_sentinel *st, int i);

static void sentinel_on_master_addr(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_sentinel *st = ac->data;
    redisReply *rep = reply;
    (void)privdata;
    if (!st || !rep)
        return; /* dropped by us, or the disconnect callback handles it */
    if (rep->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "refused: %.120s", rep->str);
        sentinel_query_failed(st, why);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING) {
        char why[200];
        snprintf(why, sizeof(why), "does not know a master named '%.100s'", st->url.master_name);
        sentinel_query_failed(st, why);
        return;
    }
    char ip[64];
    snprintf(ip, sizeof(ip), "%s", rep->element[0]->str);
    int port = atoi(rep->element[1]->str);
    int answered = st->cur;
    sentinel_query_drop(st);
    st->asking = false;
    st->start = answered; /* ask this one first next time */
    if (!st->sub)
        sentinel_subscribe(st, answered);
    store_redis_master_found(st->s, ip, port, false);
}

static void sentinel_ask_next(struct redis_sentinel *st)
{
    while (!st->closing && st->tried < st->url.nseeds) {
        st->cur = (st->start + st->tried) % st->url.nseeds;
        st->tried++;
        char why[160];
        redisAsyncContext *q = sentinel_connect(st, st->cur, why, sizeof(why));
        if (!q) {
            char name[80];
            sentinel_seed_name(st, st->cur, name, sizeof(name));
            size_t l = strlen(st->reasons);
            snprintf(st->reasons + l, sizeof(st->reasons) - l, "%s%s: %.120s", l ? "; " : "", name,
                     why);
            continue;
        }
        redisAsyncSetConnectCallback(q, sentinel_on_query_connect);
        redisAsyncSetDisconnectCallback(q, sentinel_on_query_disconnect);
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", st->url.master_name};
        redisAsyncCommandArgv(q, sentinel_on_master_addr, NULL, 3, argv, NULL);
        st->q = q;
        uv_timer_start(&st->timer, sentinel_on_query_timeout, (uint64_t)st->query_ms, 0);
        return;
    }
    if (st->closing)
        return;
    /* Every sentinel failed this round: the backend answers per store_failure_action
     * and asks again after its backoff. */
    st->asking = false;
    char what[700];
    snprintf(what, sizeof(what), "no sentinel named the master '%.100s' (%s)", st->url.master_name,
             st->reasons);
    store_redis_master_unknown(st->s, what);
}

void redis_sentinel_ask(struct redis_sentinel *st)
{
    if (st->closing || st->asking)
        return;
    st->asking = true;
    st->tried = 0;
    st->reasons[0] = '\0';
    sentinel_ask_next(st);
}

/* --- following +switch-master --- */

static void sentinel_sub_drop(struct redis_sentinel *st)
{
    redisAsyncContext *sub = st->sub;
    st->sub = NULL;
    if (sub) {
        sub->data = NULL;
        redisAsyncFree(sub);
    }
}

/* The subscription is gone: a switch may be missed meanwhile, so ask again (which
 * subscribes anew on the sentinel that answers). */
static void sentinel_sub_lost(struct redis_sentinel *st, const char *why)
{
    log_warn("redis sentinel %s: subscription to +switch-master lost (%s); asking again",
             st->sub_where, why);
    redis_sentinel_ask(st);
}

static void sentinel_on_sub_connect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *st = ac->data;
    if (!st || status == REDIS_OK)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    st->sub = NULL;
    sentinel_sub_lost(st, ac->errstr);
}

static void sentinel_on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *st = ac->data;
    if (!st)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    st->sub = NULL;
    if (!st->closing)
        sentinel_sub_lost(st, status == REDIS_OK ? "closed" : ac->errstr);
}

/* SUBSCRIBE replies: the confirmation, then one message per switch, "NAME OLDIP OLDPORT
 * NEWIP NEWPORT". */
static void sentinel_on_switch(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_sentinel *st = ac->data;
    redisReply *rep = reply;
    (void)privdata;
    if (!st || !rep)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        log_warn("redis sentinel %s: SUBSCRIBE refused: %.150s", st->sub_where, rep->str);
        sentinel_sub_drop(st);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING || strcmp(rep->element[0]->str, "message") ||
        rep->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[128], oldip[64], newip[64];
    int oldport, newport;
    if (sscanf(rep->element[2]->str, "%127s %63s %d %63s %d", name, oldip, &oldport, newip,
               &newport) != 5 ||
        strcmp(name, st->url.master_name) != 0)
        return;
    log_info("redis sentinel %s: master '%s' switched from %s:%d to %s:%d", st->sub_where, name,
             oldip, oldport, newip, newport);
    store_redis_master_found(st->s, newip, newport, true);
}

static void sentinel_subscribe(struct redis_sentinel *st, int i)
{
    char why[160];
    sentinel_seed_name(st, i, st->sub_where, sizeof(st->sub_where));
    redisAsyncContext *sub = sentinel_connect(st, i, why, sizeof(why));
    if (!sub) {
        /* Tried again at the next ask (a lost connection, a timeout, READONLY). */
        log_warn("redis sentinel %s: cannot subscribe to +switch-master: %s", st->sub_where, why);
        return;
    }
    redisAsyncSetConnectCallback(sub, sentinel_on_sub_connect);
    redisAsyncSetDisconnectCallback(sub, sentinel_on_sub_disconnect);
    const char *argv[2] = {"SUBSCRIBE", "+switch-master"};
    redisAsyncCommandArgv(sub, sentinel_on_switch, NULL, 2, argv, NULL);
    st->sub = sub;
}

/* --- life cycle --- */

struct redis_sentinel *redis_sentinel_new(struct store *s, const struct config *cfg,
                                          const struct config_store_url *u)
{
    struct redis_sentinel *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->s = s;
    st->url = *u;
    snprintf(st->password, sizeof(st->password), "%s",
             cfg->redis_sentinel_password ? cfg->redis_sentinel_password : "");
    st->query_ms =
        cfg->redis_timeout > SENTINEL_QUERY_MIN_MS ? cfg->redis_timeout : SENTINEL_QUERY_MIN_MS;
    uv_timer_init(s->loop, &st->timer);
    st->timer.data = st;
    return st;
}

static void sentinel_on_timer_close(uv_handle_t *h)
{
    struct redis_sentinel *st = h->data;
    store_handle_closed(st->s);
}

void redis_sentinel_close(struct redis_sentinel *st)
{
    st->closing = true;
    sentinel_query_drop(st);
    sentinel_sub_drop(st);
    st->s->open_handles++;
    uv_close((uv_handle_t *)&st->timer, sentinel_on_timer_close);
}

void redis_sentinel_free(struct redis_sentinel *st)
{
    free(st);
}
