/* redis_uv: the hiredis adapter for libuv of every Redis connection (the single-Redis
 * backend, the cluster's masters and its slot-map queries, the sentinel resolver). Unlike
 * hiredis 0.14.1's adapters/libuv.h, a poll error (status < 0, e.g. a refused connect or
 * a reset) is passed on as the events we wait for, as in hiredis 1.0, so hiredis notices
 * the failure at once instead of never. Commands queued in one loop turn go out in one
 * write, and on a busy connection new ones wait for the replies of the last write
 * (auto-pipelining). */
#include "store_internal.h"

#include <errno.h>
#include <stdlib.h>

#include <hiredis/async.h>

struct redis_uv {
    redisAsyncContext *ac;
    uv_poll_t handle;
    /* Commands queued during one loop turn go out in one write from the prepare phase
     * (which runs before the loop blocks, whatever phase queued them), without arming
     * and disarming write interest: that cost two epoll_ctl calls per batch. Write
     * interest is armed only when the socket does not take everything. */
    uv_prepare_t flush;
    bool in_flush;
    const uint64_t *outstanding; /* the owner's count of commands without reply, or NULL */
    unsigned unflushed;          /* commands queued since the output buffer was last empty */
    bool holding;
    uint64_t hold_since; /* uv_now() when the current hold began */
    int open;            /* handles not yet closed */
    int events;
};

static void redis_uv_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_uv *p = h->data;
    int ev = status < 0 ? p->events : events;
    if (p->ac && (ev & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void redis_uv_update(struct redis_uv *p, int events)
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
    struct redis_uv *p = privdata;
    redis_uv_update(p, p->events | UV_READABLE);
}

static void redis_uv_del_read(void *privdata)
{
    struct redis_uv *p = privdata;
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
static bool redis_uv_hold(struct redis_uv *p)
{
    /* *outstanding counts every command without reply, queued or written. */
    if (!p->outstanding || !(p->ac->c.flags & REDIS_CONNECTED) || *p->outstanding <= p->unflushed ||
        p->unflushed >= REDIS_HOLD_MAX_CMDS) {
        p->holding = false;
        return false;
    }
    uint64_t now = uv_now(p->flush.loop);
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
    struct redis_uv *p = h->data;
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
    struct redis_uv *p = privdata;
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
    struct redis_uv *p = privdata;
    p->unflushed = 0; /* hiredis calls this when its output buffer is written */
    p->holding = false;
    uv_prepare_stop(&p->flush);
    redis_uv_update(p, p->events & ~UV_WRITABLE);
}

static void redis_uv_on_close(uv_handle_t *h)
{
    struct redis_uv *p = h->data;
    if (--p->open == 0)
        free(p);
}

static void redis_uv_cleanup(void *privdata)
{
    struct redis_uv *p = privdata;
    p->ac = NULL; /* the context is being freed */
    uv_close((uv_handle_t *)&p->handle, redis_uv_on_close);
    uv_close((uv_handle_t *)&p->flush, redis_uv_on_close);
}

int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop, const uint64_t *outstanding)
{
    if (ac->ev.data)
        return -EEXIST;
    struct redis_uv *p = calloc(1, sizeof(*p));
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
    p->outstanding = outstanding;
    p->handle.data = p;
    ac->ev.addRead = redis_uv_add_read;
    ac->ev.delRead = redis_uv_del_read;
    ac->ev.addWrite = redis_uv_add_write;
    ac->ev.delWrite = redis_uv_del_write;
    ac->ev.cleanup = redis_uv_cleanup;
    ac->ev.data = p;
    return 0;
}
