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
/* A connection with commands outstanding and no reply for this long is stalled (a stopped
 * or overloaded Redis): it is dropped so commands stop piling up in its buffers. */
#define REDIS_STALL_MIN_MS 1000
/* Keys up to this length (prefix included) go out preformatted from a stack buffer. */
#define REDIS_FAST_KEY 1024
/* privdata of a command: request id << 8 | op index. Id 0 is the handshake. */
#define REDIS_PD(id, idx) ((void *)(uintptr_t)(((uintptr_t)(id) << 8) | (uintptr_t)(idx)))

/* What is wrong with Redis, named from the error reply's first word or the connection's
 * fate: each has its own log limiter and is shown by `postsurge status`. */
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
    REDIS_ERROR,       /* any other error reply */
    REDIS_TROUBLE_COUNT
};

static const struct {
    const char *state;  /* for status */
    const char *prefix; /* error reply's first word(s) */
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
    [REDIS_ERROR] = {"error", NULL, NULL},
};

/* The kind of trouble an error reply names (its first word). */
static enum redis_trouble redis_error_kind(const char *err)
{
    if (!strncmp(err, "NOAUTH", 6) || !strncmp(err, "WRONGPASS", 9) || !strncmp(err, "NOPERM", 6) ||
        !strncmp(err, "ERR invalid password", 20) || !strncmp(err, "ERR AUTH", 8))
        return REDIS_AUTH;
    for (int k = REDIS_OOM; k <= REDIS_BUSY; k++) {
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

struct redis {
    struct store *s;
    struct config_store_url url;
    char where[300]; /* host:port or path, for log lines */
    char sha[41];
    /* "*8", "EVALSHA", the script's SHA-1 and the key count, in RESP: the fixed start of
     * every counter command. */
    char evalsha_head[80];
    size_t evalsha_head_len;
    redisAsyncContext *ac;
    bool resolving;
    bool up;       /* a reply came on the current connection */
    bool degraded; /* requests were answered locally since Redis was last fine */
    uint64_t degraded_count;
    uv_timer_t timeout_timer;
    uv_timer_t reconnect_timer;
    uv_getaddrinfo_t gai;
    struct store_req_list inflight;
    uint64_t next_id;
    uint64_t outstanding;   /* commands sent on the current connection without reply */
    uint64_t last_progress; /* uv_now() of the last reply, or of the first command sent */
    int64_t timeout_ms;
    int64_t backoff_ms;
    int64_t backoff_max_ms;
    bool first_connect;
    enum redis_trouble trouble; /* what is wrong now; REDIS_OK_NOW when nothing */
    uint64_t trouble_since;     /* uv_now() when it began */
    uint64_t outages_unlogged;  /* recoveries whose "is back" line was suppressed */
    /* One limiter per kind of trouble: a new kind is logged at once, a repeated one once
     * per log_repeat_interval with a count. Recoveries and repaired keys have their own. */
    struct log_ratelimit rl[REDIS_TROUBLE_COUNT];
    struct log_ratelimit rl_back, rl_repair;
    /* redis-sentinel://: where the master's address comes from, and whether a query
     * for it runs (requests wait for it, as for a name being resolved). */
    struct redis_sentinel *sentinel;
    bool asking;
    bool role_warned; /* a node named as master said it is not: logged once, at once */
};

static void redis_connect(struct redis *r);

/* --- hiredis on libuv ---
 * Our own copy of hiredis's adapters/libuv.h: the 0.14.1 one ignores a poll error
 * (status < 0, e.g. a refused connect or a reset), so hiredis would never notice the
 * failure and the request would wait for its timeout. As in hiredis 1.0, an error is
 * reported as the events we wait for, so hiredis reads or writes and sees the error. */
struct redis_uv_events {
    redisAsyncContext *ac;
    uv_poll_t handle;
    /* Commands queued during one loop turn go out in one write from the prepare phase
     * (which runs before the loop blocks, whatever phase queued them), without arming
     * and disarming write interest: that cost two epoll_ctl calls per batch. Write
     * interest is armed only when the socket does not take everything. */
    uv_prepare_t flush;
    bool in_flush;
    unsigned unflushed; /* commands queued since the output buffer was last empty */
    bool holding;
    uint64_t hold_since; /* uv_now() when the current hold began */
    int open;            /* handles not yet closed */
    int events;
};

static void redis_uv_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_uv_events *p = h->data;
    int ev = status < 0 ? p->events : events;
    if (p->ac && (ev & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void redis_uv_update(struct redis_uv_events *p, int events)
{
    if (events == p->events)
        return; /* uv_poll_start would re-register the fd with the kernel */
    p->events = events;
    if (events)
        uv_poll_start(&p->handle, events, redis_uv_on_poll);
    else
        uv_poll_stop(&p->handle);
}

static void redis_uv_add_read(void *privdata)
{
    struct redis_uv_events *p = privdata;
    redis_uv_update(p, p->events | UV_READABLE);
}

static void redis_uv_del_read(void *privdata)
{
    struct redis_uv_events *p = privdata;
    redis_uv_update(p, p->events & ~UV_READABLE);
}

/* Auto-pipelining: while commands of an earlier write still wait for replies, new ones
 * stay queued and go out in one write when those replies are in (Redis answers a
 * pipeline in order, so they would wait behind it anyway). Under load Redis then reads,
 * runs and answers larger batches, with fewer system calls on both sides; with nothing
 * in flight (one connection, light load) a command goes out at once as before. A hold
 * ends when the earlier replies are in, at the first loop turn after REDIS_HOLD_MAX_MS
 * (no timer of its own: with Redis stalled, a held command waits for the next event,
 * the replies or the calls' own redis_timeout timers, which it could not beat anyway),
 * and when REDIS_HOLD_MAX_CMDS commands are queued (without that cap, 32 connections
 * ran about 5 % slower than with no hold: Redis sat idle while one batch gathered). */
#define REDIS_HOLD_MAX_MS 2
#define REDIS_HOLD_MAX_CMDS 32
static bool redis_uv_hold(struct redis_uv_events *p)
{
    const struct redis *r = p->ac->data;
    /* outstanding counts every command without reply, queued or written. */
    if (!r || !(p->ac->c.flags & REDIS_CONNECTED) || r->outstanding <= p->unflushed ||
        p->unflushed >= REDIS_HOLD_MAX_CMDS) {
        p->holding = false;
        return false;
    }
    uint64_t now = uv_now(r->s->loop);
    if (!p->holding) {
        p->holding = true;
        p->hold_since = now;
    }
    if (now - p->hold_since >= REDIS_HOLD_MAX_MS) {
        p->holding = false;
        return false;
    }
    return true;
}

static void redis_uv_on_flush(uv_prepare_t *h)
{
    struct redis_uv_events *p = h->data;
    if (p->ac && redis_uv_hold(p))
        return; /* the prepare handle stays active: checked again at the next loop turn */
    uv_prepare_stop(h);
    if (!p->ac)
        return;
    p->in_flush = true;
    redisAsyncHandleWrite(p->ac); /* may free the context (cleanup clears p->ac) */
    p->in_flush = false;
}

static void redis_uv_add_write(void *privdata)
{
    struct redis_uv_events *p = privdata;
    p->unflushed++; /* hiredis calls this for every command it queues */
    /* Connecting, or the socket did not take the last flush: wait until writable. */
    if (p->in_flush || !p->ac || !(p->ac->c.flags & REDIS_CONNECTED)) {
        redis_uv_update(p, p->events | UV_WRITABLE);
        return;
    }
    if (!(p->events & UV_WRITABLE))
        uv_prepare_start(&p->flush, redis_uv_on_flush);
}

static void redis_uv_del_write(void *privdata)
{
    struct redis_uv_events *p = privdata;
    p->unflushed = 0; /* hiredis calls this when its output buffer is written */
    p->holding = false;
    uv_prepare_stop(&p->flush);
    redis_uv_update(p, p->events & ~UV_WRITABLE);
}

static void redis_uv_on_close(uv_handle_t *h)
{
    struct redis_uv_events *p = h->data;
    if (--p->open == 0)
        free(p);
}

static void redis_uv_cleanup(void *privdata)
{
    struct redis_uv_events *p = privdata;
    p->ac = NULL; /* the context is being freed */
    uv_close((uv_handle_t *)&p->handle, redis_uv_on_close);
    uv_close((uv_handle_t *)&p->flush, redis_uv_on_close);
}

static int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data)
        return -EEXIST;
    struct redis_uv_events *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    int rc = uv_poll_init(loop, &p->handle, ac->c.fd);
    if (rc < 0) {
        free(p);
        return rc;
    }
    uv_prepare_init(loop, &p->flush);
    p->flush.data = p;
    p->open = 2;
    p->ac = ac;
    p->handle.data = p;
    ac->ev.addRead = redis_uv_add_read;
    ac->ev.delRead = redis_uv_del_read;
    ac->ev.addWrite = redis_uv_add_write;
    ac->ev.delWrite = redis_uv_del_write;
    ac->ev.cleanup = redis_uv_cleanup;
    ac->ev.data = p;
    return 0;
}

static void redis_on_reconnect_timer(uv_timer_t *h)
{
    redis_connect(h->data);
}

static uint64_t redis_now(struct redis *r)
{
    return uv_now(r->s->loop);
}

static int64_t redis_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Records the store's state for status: kind k with message what (since now if the kind
 * changed). */
static void redis_set_state(struct redis *r, enum redis_trouble k, const char *what)
{
    struct store_stats *st = &r->s->stats;
    if (k != r->trouble || !st->state[0]) {
        r->trouble = k;
        r->trouble_since = redis_now(r);
        st->state_since_ms = redis_wall_ms();
        snprintf(st->state, sizeof(st->state), "%s", redis_troubles[k].state);
    }
    snprintf(st->reason, sizeof(st->reason), "%s", what ? what : "");
}

/* Logs trouble of kind k (rate-limited per kind, with a count), records it for status,
 * and, when requests is set, notes that requests are answered without Redis. */
static void redis_note_trouble(struct redis *r, enum redis_trouble k, const char *what,
                               bool requests)
{
    const char *advice = redis_troubles[k].advice;
    if (requests)
        r->degraded = true;
    redis_set_state(r, k, what);
    log_warn_ratelimited(&r->rl[k], redis_now(r), (uint64_t)r->s->log_interval_ms,
                         "redis %s: %s%s%s%s%s", r->where, what, advice ? " (" : "",
                         advice ? advice : "", advice ? ")" : "",
                         !requests              ? ""
                         : r->s->local_fallback ? "; answering from local counters"
                                                : "; answering per store_failure_action");
}

/* Logs a failure and notes that Redis is degraded. */
static void redis_note_failure(struct redis *r, enum redis_trouble k, const char *what)
{
    redis_note_trouble(r, k, what, true);
}

/* Another request failed for the trouble already known (no connection between two
 * attempts): counted under that kind, its message kept. */
static void redis_note_again(struct redis *r)
{
    char what[sizeof(r->s->stats.reason)];
    enum redis_trouble k = r->trouble != REDIS_OK_NOW ? r->trouble : REDIS_UNREACHABLE;
    snprintf(what, sizeof(what), "%s",
             r->s->stats.reason[0] ? r->s->stats.reason : "not connected");
    redis_note_failure(r, k, what);
}

/* An error reply: named by its first word. */
static void redis_note_error_reply(struct redis *r, const char *ctx, const char *err, bool requests)
{
    char what[240];
    snprintf(what, sizeof(what), "%s%s%.180s", ctx ? ctx : "", ctx ? ": " : "", err);
    redis_note_trouble(r, redis_error_kind(err), what, requests);
}

static void redis_note_success(struct redis *r)
{
    if (!r->up) {
        r->up = true;
        r->backoff_ms = REDIS_BACKOFF_MIN_MS;
    }
    if (r->degraded || r->trouble != REDIS_OK_NOW) {
        uint64_t supp;
        double secs = (double)(redis_now(r) - r->trouble_since) / 1000.0;
        /* Rate-limited too: a Redis that flaps would log a line per recovery. */
        if (log_threshold >= LOG_LVL_INFO &&
            log_ratelimit_allow(&r->rl_back, redis_now(r), (uint64_t)r->s->log_interval_ms,
                                &supp)) {
            char more[80] = "";
            if (r->outages_unlogged)
                snprintf(more, sizeof(more), " (%" PRIu64 " earlier recoveries not logged)",
                         r->outages_unlogged);
            log_info("redis %s is back after %.1f s (%s); %" PRIu64
                     " requests were answered without it%s",
                     r->where, secs, redis_troubles[r->trouble].state, r->degraded_count, more);
            r->outages_unlogged = 0;
        } else {
            r->outages_unlogged++;
        }
        if (r->degraded) {
            /* Shared counting resumes in Redis: the outage's local counters are not
             * consulted again (the next outage starts afresh), so free them now rather
             * than keep them for their windows (a day for a per-day rule). */
            mem_table_clear(&r->s->mem);
        }
        r->degraded = false;
        r->degraded_count = 0;
        redis_set_state(r, REDIS_OK_NOW, "");
    }
    if (!r->s->stats.state[0])
        redis_set_state(r, REDIS_OK_NOW, "");
    r->s->stats.connected = true;
}

/* One reply came (rep NULL: the connection dropped the command): one command less in
 * flight, and progress; a success unless Redis answered an error, if the command was a
 * write (write: a reply to a read does not prove Redis can take writes). */
static void redis_note_reply(struct redis *r, const redisReply *rep, bool write)
{
    if (r->outstanding > 0)
        r->outstanding--;
    if (rep) {
        r->last_progress = redis_now(r);
        if (rep->type != REDIS_REPLY_ERROR && write)
            redis_note_success(r);
    }
}

/* Answers a request Redis did not answer, counting it for the "back" line. */
static void redis_finish_failed(struct redis *r, struct store_req *req, int status)
{
    if (status != -ECANCELED)
        r->degraded_count++;
    store_req_finish(req, status);
}

/* Fails every in-flight request (local answers when configured). */
static void redis_fail_inflight(struct redis *r, int status)
{
    while (r->inflight.head) {
        struct store_req *req = r->inflight.head;
        store_req_list_remove(&r->inflight, req);
        if (status == -ETIMEDOUT)
            r->s->stats.timeouts++;
        redis_finish_failed(r, req, status);
    }
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
    r->outstanding = 0;
    r->s->stats.connected = false;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    if (why)
        redis_note_failure(r, kind, why);
    redis_fail_inflight(r, status);
    redis_schedule_reconnect(r);
}

static struct store_req *redis_find(struct redis *r, uint64_t id)
{
    /* Replies come in order, so the request is almost always the oldest. */
    for (struct store_req *req = r->inflight.head; req; req = req->next)
        if (req->id == id)
            return req;
    return NULL;
}

static void redis_on_timeout(uv_timer_t *h);

static void redis_arm_timer(struct redis *r)
{
    struct store_req *head = r->inflight.head;
    if (!head) {
        uv_timer_stop(&r->timeout_timer);
        return;
    }
    uint64_t now = redis_now(r);
    uint64_t due = head->deadline > now ? head->deadline - now : 0;
    uv_timer_start(&r->timeout_timer, redis_on_timeout, due, 0);
}

static void redis_on_timeout(uv_timer_t *h)
{
    struct redis *r = h->data;
    uint64_t now = redis_now(r);
    bool any = false;
    /* Every request has the same timeout, so the list is in deadline order. */
    while (r->inflight.head && r->inflight.head->deadline <= now) {
        struct store_req *req = r->inflight.head;
        store_req_list_remove(&r->inflight, req);
        r->s->stats.timeouts++;
        redis_finish_failed(r, req, -ETIMEDOUT);
        any = true;
    }
    if (any)
        redis_note_failure(r, REDIS_TIMEOUT, "no reply within redis_timeout");
    uint64_t stall = (uint64_t)r->timeout_ms * 4;
    if (stall < REDIS_STALL_MIN_MS)
        stall = REDIS_STALL_MIN_MS;
    if (r->ac && r->outstanding > 0 && now - r->last_progress >= stall) {
        redis_drop(r, -ETIMEDOUT, REDIS_TIMEOUT, NULL);
        return;
    }
    redis_arm_timer(r);
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
    if (r->outstanding++ == 0)
        r->last_progress = redis_now(r);
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
    struct store_req *req = redis_find(r, id);
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
                                 r->where, (int)(op->keylen < 200 ? op->keylen : 200), op->key);
        }
        req->results[idx].allowed = (v & 1) != 0;
        req->results[idx].count = v >> 1;
        req->ops[idx].answered = true;
        if (--req->npending > 0)
            return;
        store_req_list_remove(&r->inflight, req);
        store_req_finish(req, 0);
        redis_arm_timer(r);
        return;
    } else if (r->sentinel && rep->type == REDIS_REPLY_ERROR &&
               strncmp(rep->str, "READONLY", 8) == 0) {
        /* The node was demoted: drop it and ask the sentinels where the master is. */
        store_req_list_remove(&r->inflight, req);
        redis_finish_failed(r, req, -EPROTO);
        redis_drop(r, -ECONNRESET, REDIS_READONLY,
                   "READONLY: no longer the master; asking the sentinels");
        return;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        status = -EPROTO;
        redis_note_error_reply(r, NULL, rep->str, true);
    } else {
        status = -EPROTO;
        redis_note_failure(r, REDIS_ERROR,
                           "unexpected reply to the window script (not an integer)");
    }
    if (status == -ECONNRESET)
        redis_note_failure(r, REDIS_UNREACHABLE, "connection lost");
    store_req_list_remove(&r->inflight, req);
    redis_finish_failed(r, req, status);
    redis_arm_timer(r);
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
        redis_note_again(r);
        redis_finish_failed(r, req, -ENOTCONN);
        return;
    }
    /* While the name resolves, the request waits (up to its deadline) to be sent. */
    if (ac && redis_send_req(r, ac, req) < 0) {
        redis_note_again(r);
        redis_finish_failed(r, req, -ENOTCONN);
        return;
    }
    req->deadline = redis_now(r) + (uint64_t)r->timeout_ms;
    req->where = REQ_INFLIGHT;
    store_req_list_push(&r->inflight, req);
    if (!uv_is_active((uv_handle_t *)&r->timeout_timer))
        redis_arm_timer(r);
}

static void redis_unlink(struct store *s, struct store_req *req)
{
    struct redis *r = s->impl;
    store_req_list_remove(&r->inflight, req);
    redis_arm_timer(r);
}

static void redis_on_handshake(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis *r = ac->data;
    redisReply *rep = reply;
    if (!r || !rep)
        return;
    if (r->outstanding > 0)
        r->outstanding--;
    r->last_progress = redis_now(r);
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
    if (r->outstanding > 0)
        r->outstanding--;
    r->last_progress = redis_now(r);
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
        log_warn("redis %s at %s:%d: %s", r->where, r->url.host, r->url.port, what);
        r->degraded = true;
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
    redis_note_failure(r, REDIS_UNREACHABLE, what);
    r->up = false;
    r->outstanding = 0;
    r->s->stats.connected = false;
    redis_fail_inflight(r, -ECONNREFUSED);
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
    r->outstanding = 0;
    r->s->stats.connected = false;
    if (!r->s->closing) {
        char what[200];
        snprintf(what, sizeof(what), "connection lost: %.150s",
                 status == REDIS_OK ? "closed" : ac->errstr);
        redis_note_failure(r, REDIS_UNREACHABLE, what);
    }
    redis_fail_inflight(r, -ECONNRESET);
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
        redis_note_failure(r, REDIS_UNREACHABLE, what);
        redis_fail_inflight(r, -ECONNREFUSED);
        redis_schedule_reconnect(r);
        return;
    }
    if (redis_uv_attach(ac, r->s->loop) < 0) {
        redisAsyncFree(ac);
        redis_note_failure(r, REDIS_UNREACHABLE, "cannot attach to the event loop");
        redis_fail_inflight(r, -ENOTCONN);
        redis_schedule_reconnect(r);
        return;
    }
    ac->data = r;
    redisAsyncSetConnectCallback(ac, redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, redis_on_disconnect);
    r->ac = ac;
    r->up = false;
    r->outstanding = 0;
    /* Queued now, sent once connected, answered before any window script. */
    if (r->url.password[0]) {
        const char *argv[2] = {"AUTH", r->url.password};
        redisAsyncCommandArgv(ac, redis_on_handshake, (void *)"AUTH", 2, argv, NULL);
        r->outstanding++;
    }
    if (r->url.db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->url.db);
        const char *argv[2] = {"SELECT", db};
        redisAsyncCommandArgv(ac, redis_on_handshake, (void *)"SELECT", 2, argv, NULL);
        r->outstanding++;
    }
    if (r->sentinel) {
        redisAsyncCommand(ac, redis_on_role, NULL, "ROLE");
        r->outstanding++;
    }
    if (r->outstanding)
        r->last_progress = redis_now(r);
    /* Requests that waited for the name to resolve. */
    struct store_req *req = r->inflight.head;
    while (req) {
        struct store_req *next = req->next;
        if (!req->sent && redis_send_req(r, ac, req) < 0) {
            store_req_list_remove(&r->inflight, req);
            redis_finish_failed(r, req, -ENOTCONN);
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
        redis_note_failure(r, REDIS_UNREACHABLE, what);
        redis_fail_inflight(r, -ENOTCONN);
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
    redis_note_failure(r, REDIS_UNREACHABLE, "cannot start resolving its name");
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
    redis_fail_inflight(r, -ECANCELED);
    s->open_handles += 2;
    uv_close((uv_handle_t *)&r->timeout_timer, redis_on_timer_close);
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
    if (r->outstanding++ == 0)
        r->last_progress = redis_now(r);
    return 0;
}

static void redis_cop_reply(redisAsyncContext *ac, const redisReply *rep, bool write)
{
    struct redis *r = ac->data;
    if (!r)
        return;
    redis_note_reply(r, rep, write);
    if (rep && rep->type == REDIS_REPLY_ERROR)
        redis_note_error_reply(r, "cluster command failed", rep->str, false);
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
    if (u->kind == CONFIG_STORE_REDIS_SENTINEL)
        snprintf(r->where, sizeof(r->where), "master '%s'", u->master_name);
    else if (u->kind == CONFIG_STORE_REDIS_UNIX)
        snprintf(r->where, sizeof(r->where), "unix:%s", u->path);
    else if (strchr(u->host, ':'))
        snprintf(r->where, sizeof(r->where), "[%s]:%d", u->host, u->port);
    else
        snprintf(r->where, sizeof(r->where), "%s:%d", u->host, u->port);
    sha1_hex(window_lua_script, strlen(window_lua_script), r->sha);
    r->evalsha_head_len =
        (size_t)snprintf(r->evalsha_head, sizeof(r->evalsha_head),
                         "*5\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n", r->sha);
    r->timeout_ms = cfg->redis_timeout > 0 ? cfg->redis_timeout : 100;
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
    uv_timer_init(s->loop, &r->timeout_timer);
    r->timeout_timer.data = r;
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
            log_info("redis %s: master is now at %s:%d (was %s:%d)", r->where, ip, port,
                     r->url.host, r->url.port);
        else
            log_info("redis %s: the sentinels name %s:%d", r->where, ip, port);
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
        log_warn_ratelimited(&r->rl[REDIS_UNREACHABLE], redis_now(r), (uint64_t)s->log_interval_ms,
                             "redis %s: %s", r->where, why);
        return;
    }
    redis_note_failure(r, REDIS_UNREACHABLE, why);
    redis_fail_inflight(r, -ENOTCONN);
    redis_schedule_reconnect(r);
}
