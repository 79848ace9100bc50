/* store_redis: counters shared by every node through Redis (or a sharding proxy in front
 * of several). Each request's ops go out pipelined as single-key EVALSHA calls of the
 * window script (EVAL after NOSCRIPT), answered in one round trip. hiredis 0.14.1 has no
 * async timeouts, so a timer bounds every request by redis_timeout; requests Redis cannot
 * answer in time are answered from local memory counters, and the connection is rebuilt
 * with exponential backoff. Never blocks the loop (names are resolved with libuv). */
#define LOG_COMPONENT "store"
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netdb.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "util/log.h"
#include "sha1.h"

#define REDIS_BACKOFF_MIN_MS 50
/* Keys up to this length (prefix included) go out preformatted from a stack buffer. */
#define REDIS_FAST_KEY 1024
/* privdata of a command: request id << 8 | op index. Id 0 is the handshake. */
#define REDIS_PD(id, idx) ((void *)(uintptr_t)(((uintptr_t)(id) << 8) | (uintptr_t)(idx)))

struct redis {
    struct store *s;
    struct config_store_url url;
    char sha[41];
    /* "*8", "EVALSHA", the script's SHA-1 and the key count, in RESP: the fixed start of
     * every counter command. */
    char evalsha_head[80];
    size_t evalsha_head_len;
    redisAsyncContext *ac;
    bool resolving;
    bool up; /* a reply came on the current connection */
    struct redis_health h;
    struct redis_inflight in;
    struct redis_progress prog; /* of the current connection */
    uv_timer_t reconnect_timer;
    uv_getaddrinfo_t gai;
    uint64_t next_id;
    int64_t backoff_ms;
    int64_t backoff_max_ms;
    bool first_connect;
    struct log_ratelimit rl_repair; /* repaired keys */
    /* redis-sentinel://: where the master's address comes from, and whether a query
     * for it runs (requests wait for it, as for a name being resolved). */
    struct redis_sentinel *sentinel;
    bool asking;
    bool role_warned; /* a node named as master said it is not: logged once, at once */
};

static void redis_connect(struct redis *r);

static void redis_on_reconnect_timer(uv_timer_t *h)
{
    redis_connect(h->data);
}

static uint64_t redis_now(struct redis *r)
{
    return uv_now(r->s->loop);
}

static void redis_note_success(struct redis *r)
{
    if (!r->up) {
        r->up = true;
        r->backoff_ms = REDIS_BACKOFF_MIN_MS;
    }
    redis_health_ok(&r->h);
    r->s->stats.connected = true;
}

/* One reply came (rep NULL: the connection dropped the command): one command less in
 * flight, and progress; a success unless Redis answered an error, if the command was a
 * write (write: a reply to a read does not prove Redis can take writes). */
static void redis_note_reply(struct redis *r, const redisReply *rep, bool write)
{
    redis_progress_reply(&r->prog, rep, redis_now(r));
    if (rep && rep->type != REDIS_REPLY_ERROR && write)
        redis_note_success(r);
}

static void redis_schedule_reconnect(struct redis *r)
{
    if (r->s->closing || uv_is_active((uv_handle_t *)&r->reconnect_timer))
        return;
    uv_timer_start(&r->reconnect_timer, redis_on_reconnect_timer, (uint64_t)r->backoff_ms, 0);
    r->backoff_ms *= 2;
    if (r->backoff_ms > r->backoff_max_ms)
        r->backoff_ms = r->backoff_max_ms;
}

/* Drops the connection on our side: requests are answered now, late replies and the
 * disconnect callback find ac->data NULL and do nothing. */
static void redis_drop(struct redis *r, int status, enum redis_trouble kind, const char *why)
{
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->up = false;
    r->prog.outstanding = 0;
    r->s->stats.connected = false;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    if (why)
        redis_health_trouble(&r->h, NULL, kind, why, true);
    redis_inflight_fail_all(&r->in, status);
    redis_schedule_reconnect(r);
}

/* The in-flight timer failed the requests past their deadline (any): log, and drop a
 * stalled connection. */
static void redis_on_expired(struct redis_inflight *in, uint64_t now, bool any)
{
    struct redis *r = in->owner;
    if (any)
        redis_health_trouble(&r->h, NULL, REDIS_TIMEOUT, "no reply within redis_timeout", true);
    if (r->ac && redis_progress_stalled(&r->prog, now, in->timeout_ms))
        redis_drop(r, -ETIMEDOUT, REDIS_TIMEOUT, NULL);
}

static void redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Writes u in decimal ending just before end; returns where the digits start. */
static char *redis_digits(char *end, uint64_t u)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324"
                                "25262728293031323334353637383940414243444546474849"
                                "50515253545556575859606162636465666768697071727374"
                                "75767778798081828384858687888990919293949596979899";
    char *p = end;
    while (u >= 100) {
        unsigned k = (unsigned)(u % 100) * 2;
        u /= 100;
        *--p = pairs[k + 1];
        *--p = pairs[k];
    }
    if (u >= 10) {
        *--p = pairs[u * 2 + 1];
        *--p = pairs[u * 2];
    } else {
        *--p = (char)('0' + u);
    }
    return p;
}

/* Appends the RESP header of a bulk string of n bytes ("$n\r\n"); returns the new end. */
static char *redis_put_len(char *p, size_t n)
{
    char buf[24];
    char *d = redis_digits(buf + sizeof(buf), n);
    *p++ = '$';
    size_t k = (size_t)(buf + sizeof(buf) - d);
    memcpy(p, d, k);
    p += k;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* Sends op idx of req: EVALSHA, or EVAL after NOSCRIPT. 0 or -1 (context unusable). The
 * EVALSHA goes out preformatted (hiredis would format an argv into fresh sds strings);
 * the numbers travel as one binary argument (window_lua_args). */
static int redis_send_op(struct redis *r, redisAsyncContext *ac, struct store_req *req, size_t idx,
                         bool eval)
{
    const struct store_req_op *op = &req->ops[idx];
    unsigned char args[WINDOW_LUA_ARGS_LEN];
    window_lua_args(req->now_ms, op->window_ms, op->limit, op->amount, args);
    /* "$NNNN\r\n" KEY "\r\n", then "$32\r\n" ARGS "\r\n". */
    char cmd[sizeof(r->evalsha_head) + REDIS_FAST_KEY + 16 + WINDOW_LUA_ARGS_LEN + 8];
    int rc;
    if (!eval && op->keylen <= REDIS_FAST_KEY) {
        char *p = cmd;
        memcpy(p, r->evalsha_head, r->evalsha_head_len);
        p += r->evalsha_head_len;
        p = redis_put_len(p, op->keylen);
        memcpy(p, op->key, op->keylen);
        p += op->keylen;
        *p++ = '\r';
        *p++ = '\n';
        p = redis_put_len(p, sizeof(args));
        memcpy(p, args, sizeof(args));
        p += sizeof(args);
        *p++ = '\r';
        *p++ = '\n';
        rc = redisAsyncFormattedCommand(ac, redis_on_reply, REDIS_PD(req->id, idx), cmd,
                                        (size_t)(p - cmd));
    } else {
        const char *argv[5] = {eval ? "EVAL" : "EVALSHA", eval ? window_lua_script : r->sha, "1",
                               op->key, (const char *)args};
        size_t len[5];
        for (int i = 0; i < 3; i++)
            len[i] = strlen(argv[i]);
        len[3] = op->keylen;
        len[4] = sizeof(args);
        rc = redisAsyncCommandArgv(ac, redis_on_reply, REDIS_PD(req->id, idx), 5, argv, len);
    }
    if (rc != REDIS_OK)
        return -1;
    redis_progress_sent(&r->prog, redis_now(r));
    return 0;
}

static void redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis *r = ac->data;
    if (!r)
        return; /* dropped by us: its requests were answered already */
    redisReply *rep = reply;
    redis_note_reply(r, rep, true); /* the window script writes */
    uint64_t id = (uint64_t)((uintptr_t)privdata >> 8);
    size_t idx = (size_t)((uintptr_t)privdata & 0xff);
    struct store_req *req = redis_inflight_find(&r->in, id);
    if (!req || idx >= req->n || req->ops[idx].answered)
        return; /* late (timed out), cancelled, or already failed */

    int status;
    if (!rep) {
        status = -ECONNRESET; /* the connection went away with the command pending */
    } else if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* A restarted or flushed Redis (or a proxy's other shard): send the script
         * itself; it is cached again for the next EVALSHA. */
        r->s->stats.noscript++;
        if (redis_send_op(r, ac, req, idx, true) == 0)
            return;
        status = -ECONNRESET;
    } else if (rep->type == REDIS_REPLY_INTEGER) {
        long long v = rep->integer;
        if (v < 0) {
            /* The script found a value it did not write at the key (another type, which
             * a plain GET answers with WRONGTYPE, or another size), deleted it and
             * counted afresh: say so, the key names what someone else is writing. */
            v = -1 - v;
            r->s->stats.repaired++;
            const struct store_req_op *op = &req->ops[idx];
            log_warn_ratelimited(&r->rl_repair, redis_now(r), (uint64_t)r->s->log_interval_ms,
                                 "redis %s: counter key %.*s held a value of another type or "
                                 "size (WRONGTYPE); deleted it and counted afresh",
                                 r->h.name, (int)(op->keylen < 200 ? op->keylen : 200), op->key);
        }
        req->results[idx].allowed = (v & 1) != 0;
        req->results[idx].count = v >> 1;
        req->ops[idx].answered = true;
        if (--req->npending > 0)
            return;
        redis_inflight_answered(&r->in, req);
        return;
    } else if (r->sentinel && rep->type == REDIS_REPLY_ERROR &&
               strncmp(rep->str, "READONLY", 8) == 0) {
        /* The node was demoted: drop it and ask the sentinels where the master is. */
        redis_inflight_fail(&r->in, req, -EPROTO);
        redis_drop(r, -ECONNRESET, REDIS_READONLY,
                   "READONLY: no longer the master; asking the sentinels");
        return;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        status = -EPROTO;
        redis_health_error_reply(&r->h, NULL, NULL, rep->str, true);
    } else {
        status = -EPROTO;
        redis_health_trouble(&r->h, NULL, REDIS_ERROR,
                             "unexpected reply to the window script (not an integer)", true);
    }
    if (status == -ECONNRESET)
        redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, "connection lost", true);
    redis_inflight_fail(&r->in, req, status);
}

/* Queues a request's commands on ac. 0, or -1 if the context is going away (replies to
 * the ops already queued will find no request). */
static int redis_send_req(struct redis *r, redisAsyncContext *ac, struct store_req *req)
{
    for (size_t i = 0; i < req->n; i++)
        if (redis_send_op(r, ac, req, i, false) < 0)
            return -1;
    req->sent = true;
    return 0;
}

static void redis_submit(struct store *s, struct store_req *req)
{
    struct redis *r = s->impl;
    redisAsyncContext *ac = r->ac;
    req->id = ++r->next_id;
    if (!ac && !r->resolving && !r->asking) {
        redis_health_again(&r->h, NULL);
        redis_health_finish_failed(&r->h, req, -ENOTCONN);
        return;
    }
    /* While the name resolves, the request waits (up to its deadline) to be sent. */
    if (ac && redis_send_req(r, ac, req) < 0) {
        redis_health_again(&r->h, NULL);
        redis_health_finish_failed(&r->h, req, -ENOTCONN);
        return;
    }
    redis_inflight_add(&r->in, req);
}

static void redis_unlink(struct store *s, struct store_req *req)
{
    struct redis *r = s->impl;
    redis_inflight_unlink(&r->in, req);
}

static void redis_on_handshake(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis *r = ac->data;
    redisReply *rep = reply;
    if (!r || !rep)
        return;
    redis_progress_reply(&r->prog, rep, redis_now(r));
    if (rep->type == REDIS_REPLY_ERROR) {
        char what[200];
        snprintf(what, sizeof(what), "%s refused: %.150s", (const char *)privdata, rep->str);
        /* A wrong password or database: retried with backoff, logged at each interval. */
        redis_drop(r, -EPROTO, redis_error_kind(rep->str), what);
    }
}

/* redis-sentinel://: the node the sentinels named must say it is the master (a stale
 * answer during a failover names the old one, back as a replica). */
static void redis_on_role(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis *r = ac->data;
    redisReply *rep = reply;
    (void)privdata;
    if (!r || !rep)
        return;
    redis_progress_reply(&r->prog, rep, redis_now(r));
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(rep->element[0]->str, "master") == 0) {
        r->role_warned = false;
        return;
    }
    char what[200];
    snprintf(what, sizeof(what), "ROLE says %.100s, not master; asking the sentinels again",
             rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                     rep->element[0]->type == REDIS_REPLY_STRING
                 ? rep->element[0]->str
                 : (rep->type == REDIS_REPLY_ERROR ? rep->str : "(unexpected reply)"));
    if (!r->role_warned) {
        /* A wrong answer from the sentinels, not one more failure of Redis: said at once,
         * whatever the rate limit of the failure lines, then rate-limited as they are. */
        r->role_warned = true;
        log_warn("redis %s at %s:%d: %s", r->h.name, r->url.host, r->url.port, what);
        r->h.degraded = true;
        redis_drop(r, -ECONNRESET, REDIS_ERROR, NULL);
        return;
    }
    redis_drop(r, -ECONNRESET, REDIS_ERROR, what);
}

static void redis_on_connect(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;
    if (!r || status == REDIS_OK)
        return;
    /* hiredis frees the context after this returns; its pending commands get NULL
     * replies, which redis_on_reply no longer maps to anything. */
    ((redisAsyncContext *)ac)->data = NULL;
    r->ac = NULL;
    char what[200];
    snprintf(what, sizeof(what), "cannot connect: %.150s", ac->errstr);
    redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, what, true);
    r->up = false;
    r->prog.outstanding = 0;
    r->s->stats.connected = false;
    redis_inflight_fail_all(&r->in, -ECONNREFUSED);
    redis_schedule_reconnect(r);
}

static void redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;
    if (!r)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    r->ac = NULL;
    r->up = false;
    r->prog.outstanding = 0;
    r->s->stats.connected = false;
    if (!r->s->closing) {
        char what[200];
        snprintf(what, sizeof(what), "connection lost: %.150s",
                 status == REDIS_OK ? "closed" : ac->errstr);
        redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, what, true);
    }
    redis_inflight_fail_all(&r->in, -ECONNRESET);
    redis_schedule_reconnect(r);
}

static void redis_connect_to(struct redis *r, const char *ip)
{
    redisAsyncContext *ac;
    if (r->url.kind == CONFIG_STORE_REDIS_UNIX)
        ac = redisAsyncConnectUnix(r->url.path);
    else
        ac = redisAsyncConnect(ip, r->url.port);
    if (!ac || ac->err) {
        char what[200];
        snprintf(what, sizeof(what), "cannot connect: %.150s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, what, true);
        redis_inflight_fail_all(&r->in, -ECONNREFUSED);
        redis_schedule_reconnect(r);
        return;
    }
    if (redis_uv_attach(ac, r->s->loop, &r->prog.outstanding) < 0) {
        redisAsyncFree(ac);
        redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, "cannot attach to the event loop",
                             true);
        redis_inflight_fail_all(&r->in, -ENOTCONN);
        redis_schedule_reconnect(r);
        return;
    }
    ac->data = r;
    redisAsyncSetConnectCallback(ac, redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, redis_on_disconnect);
    r->ac = ac;
    r->up = false;
    r->prog.outstanding = 0;
    /* Queued now, sent once connected, answered before any window script. */
    if (r->url.password[0]) {
        const char *argv[2] = {"AUTH", r->url.password};
        redisAsyncCommandArgv(ac, redis_on_handshake, (void *)"AUTH", 2, argv, NULL);
        r->prog.outstanding++;
    }
    if (r->url.db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->url.db);
        const char *argv[2] = {"SELECT", db};
        redisAsyncCommandArgv(ac, redis_on_handshake, (void *)"SELECT", 2, argv, NULL);
        r->prog.outstanding++;
    }
    if (r->sentinel) {
        redisAsyncCommand(ac, redis_on_role, NULL, "ROLE");
        r->prog.outstanding++;
    }
    if (r->prog.outstanding)
        r->prog.last = redis_now(r);
    /* Requests that waited for the name to resolve. */
    struct store_req *req = r->in.list.head;
    while (req) {
        struct store_req *next = req->next;
        if (!req->sent && redis_send_req(r, ac, req) < 0) {
            redis_inflight_fail(&r->in, req, -ENOTCONN);
        }
        req = next;
    }
}

static void redis_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct redis *r = req->data;
    r->resolving = false;
    if (r->s->closing) {
        uv_freeaddrinfo(res);
        store_handle_closed(r->s);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    if (status == 0 && res) {
        if (res->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, ip, sizeof(ip));
        else
            uv_ip4_name((const struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
    }
    uv_freeaddrinfo(res);
    if (!ip[0]) {
        char what[200];
        snprintf(what, sizeof(what), "cannot resolve %.100s: %.80s", r->url.host,
                 status ? uv_strerror(status) : "no address");
        redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, what, true);
        redis_inflight_fail_all(&r->in, -ENOTCONN);
        redis_schedule_reconnect(r);
        return;
    }
    redis_connect_to(r, ip);
}

static void redis_connect_addr(struct redis *r);

static void redis_connect(struct redis *r)
{
    if (r->s->closing || r->ac || r->resolving)
        return;
    if (!r->first_connect)
        r->s->stats.reconnects++;
    r->first_connect = false;
    if (r->sentinel) {
        /* Every (re)connection asks where the master is now. */
        if (!r->asking) {
            r->asking = true;
            redis_sentinel_ask(r->sentinel);
        }
        return;
    }
    redis_connect_addr(r);
}

/* Connects to r->url: a socket path, an address, or a name resolved without blocking. */
static void redis_connect_addr(struct redis *r)
{
    if (r->url.kind == CONFIG_STORE_REDIS_UNIX) {
        redis_connect_to(r, NULL);
        return;
    }
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, r->url.host, buf) == 1 || inet_pton(AF_INET6, r->url.host, buf) == 1) {
        redis_connect_to(r, r->url.host);
        return;
    }
    /* hiredis would resolve the name with a blocking getaddrinfo(). */
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->gai.data = r;
    if (uv_getaddrinfo(r->s->loop, &r->gai, redis_on_resolved, r->url.host, NULL, &hints) == 0) {
        r->resolving = true;
        return;
    }
    redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, "cannot start resolving its name", true);
    redis_schedule_reconnect(r);
}

static void redis_on_timer_close(uv_handle_t *h)
{
    struct redis *r = h->data;
    store_handle_closed(r->s);
}

static void redis_close(struct store *s)
{
    struct redis *r = s->impl;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    s->open_handles += 2;
    redis_inflight_close(&r->in, redis_on_timer_close);
    uv_close((uv_handle_t *)&r->reconnect_timer, redis_on_timer_close);
    if (r->resolving) {
        /* Its callback runs (with UV_ECANCELED or a result) and releases the store. */
        s->open_handles++;
        uv_cancel((uv_req_t *)&r->gai);
    }
    if (r->sentinel)
        redis_sentinel_close(r->sentinel);
}

static void redis_free(struct store *s)
{
    struct redis *r = s->impl;
    if (r)
        redis_sentinel_free(r->sentinel);
    free(s->impl);
    s->impl = NULL;
}

/* The cluster operations (redis_cluster_ops.c) send on the one connection. */
static int redis_cop_send(struct store *s,
                          void (*fn)(struct redisAsyncContext *ac, void *reply, void *privdata),
                          void *privdata, int argc, const char **argv, const size_t *len)
{
    struct redis *r = s->impl;
    if (!r->ac || redisAsyncCommandArgv(r->ac, fn, privdata, argc, argv, len) != REDIS_OK)
        return -ENOTCONN;
    redis_progress_sent(&r->prog, redis_now(r));
    return 0;
}

static void redis_cop_reply(redisAsyncContext *ac, const redisReply *rep, bool write)
{
    struct redis *r = ac->data;
    if (!r)
        return;
    redis_note_reply(r, rep, write);
    if (rep && rep->type == REDIS_REPLY_ERROR)
        redis_health_error_reply(&r->h, NULL, "cluster command failed", rep->str, false);
}

static const struct store_vtable redis_vtable = {
    .name = "redis",
    .submit = redis_submit,
    .unlink = redis_unlink,
    .close = redis_close,
    .free = redis_free,
    .node_put = redis_cop_node_put,
    .node_get_all = redis_cop_node_get_all,
    .event_append = redis_cop_event_append,
    .event_read = redis_cop_event_read,
    .journal_put = redis_cop_journal_put,
    .counter_del = redis_cop_counter_del,
    .cop_send = redis_cop_send,
    .cop_reply = redis_cop_reply,
};

int store_redis_init(struct store *s, const struct config *cfg, const struct config_store_url *u,
                     char *err, size_t errlen)
{
    struct redis *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->s = s;
    r->url = *u;
    redis_health_init(&r->h, s, "");
    if (u->kind == CONFIG_STORE_REDIS_SENTINEL)
        snprintf(r->h.name, sizeof(r->h.name), "master '%s'", u->master_name);
    else if (u->kind == CONFIG_STORE_REDIS_UNIX)
        snprintf(r->h.name, sizeof(r->h.name), "unix:%s", u->path);
    else if (strchr(u->host, ':'))
        snprintf(r->h.name, sizeof(r->h.name), "[%s]:%d", u->host, u->port);
    else
        snprintf(r->h.name, sizeof(r->h.name), "%s:%d", u->host, u->port);
    sha1_hex(window_lua_script, strlen(window_lua_script), r->sha);
    r->evalsha_head_len =
        (size_t)snprintf(r->evalsha_head, sizeof(r->evalsha_head),
                         "*5\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n", r->sha);
    r->backoff_max_ms = cfg->redis_reconnect_max > 0 ? cfg->redis_reconnect_max : 5000;
    r->backoff_ms = REDIS_BACKOFF_MIN_MS;
    if (r->backoff_ms > r->backoff_max_ms)
        r->backoff_ms = r->backoff_max_ms;
    r->first_connect = true;
    /* Before the timers: nothing to close when this fails. */
    if (u->kind == CONFIG_STORE_REDIS_SENTINEL && !(r->sentinel = redis_sentinel_new(s, cfg, u))) {
        free(r);
        return -ENOMEM;
    }
    redis_inflight_init(&r->in, &r->h, cfg->redis_timeout > 0 ? cfg->redis_timeout : 100,
                        redis_on_expired, r);
    uv_timer_init(s->loop, &r->reconnect_timer);
    r->reconnect_timer.data = r;
    s->impl = r;
    s->vt = &redis_vtable;
    (void)err, (void)errlen;
    redis_connect(r);
    return 0;
}

void store_redis_master_found(struct store *s, const char *ip, int port, bool switched)
{
    struct redis *r = s->impl;
    r->asking = false;
    if (s->closing)
        return;
    bool same = strcmp(r->url.host, ip) == 0 && r->url.port == port;
    if (same && r->ac)
        return; /* connected there already */
    if (!same) {
        if (r->url.host[0])
            log_info("redis %s: master is now at %s:%d (was %s:%d)", r->h.name, ip, port,
                     r->url.host, r->url.port);
        else
            log_info("redis %s: the sentinels name %s:%d", r->h.name, ip, port);
        snprintf(r->url.host, sizeof(r->url.host), "%s", ip);
        r->url.port = port;
    }
    if (r->ac) {
        /* A switch while connected to the old master: its commands in flight are answered
         * per store_failure_action now, rather than counted on a node being demoted. */
        redis_drop(r, -ECONNRESET, REDIS_UNREACHABLE, "master switched");
    }
    if (switched)
        r->backoff_ms = REDIS_BACKOFF_MIN_MS;
    uv_timer_stop(&r->reconnect_timer);
    if (!r->resolving)
        redis_connect_addr(r); /* sentinels with resolve-hostnames may name a host */
}

void store_redis_master_unknown(struct store *s, const char *why)
{
    struct redis *r = s->impl;
    r->asking = false;
    if (s->closing)
        return;
    if (r->ac) {
        /* Still connected to the master named before: keep using it. */
        log_warn_ratelimited(&r->h.rl[REDIS_UNREACHABLE], redis_now(r),
                             (uint64_t)s->log_interval_ms, "redis %s: %s", r->h.name, why);
        return;
    }
    redis_health_trouble(&r->h, NULL, REDIS_UNREACHABLE, why, true);
    redis_inflight_fail_all(&r->in, -ENOTCONN);
    redis_schedule_reconnect(r);
}
