/* redis_uv: a plain hiredis adapter for libuv, for the connections of the sentinel
 * resolver and of the cluster backend. Like the single-Redis backend's own (store_redis.c)
 * and unlike hiredis 0.14.1's adapters/libuv.h, a poll error is passed on as the events we
 * wait for, so hiredis notices a refused connect or a reset at once instead of never. No
 * write batching: hiredis writes as soon as the socket is writable. */
#include "store_internal.h"

#include <errno.h>
#include <stdlib.h>

#include <hiredis/async.h>

struct redis_uv_simple {
    redisAsyncContext *ac;
    uv_poll_t handle;
    int events;
};

static void redis_uv_simple_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_uv_simple *p = h->data;
    int ev = status < 0 ? p->events : events;
    if (p->ac && (ev & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void redis_uv_simple_update(struct redis_uv_simple *p, int events)
{
    if (events == p->events)
        return;
    p->events = events;
    if (events)
        uv_poll_start(&p->handle, events, redis_uv_simple_on_poll);
    else
        uv_poll_stop(&p->handle);
}

static void redis_uv_simple_add_read(void *pd)
{
    struct redis_uv_simple *p = pd;
    redis_uv_simple_update(p, p->events | UV_READABLE);
}

static void redis_uv_simple_del_read(void *pd)
{
    struct redis_uv_simple *p = pd;
    redis_uv_simple_update(p, p->events & ~UV_READABLE);
}

static void redis_uv_simple_add_write(void *pd)
{
    struct redis_uv_simple *p = pd;
    redis_uv_simple_update(p, p->events | UV_WRITABLE);
}

static void redis_uv_simple_del_write(void *pd)
{
    struct redis_uv_simple *p = pd;
    redis_uv_simple_update(p, p->events & ~UV_WRITABLE);
}

static void redis_uv_simple_on_close(uv_handle_t *h)
{
    free(h->data);
}

static void redis_uv_simple_cleanup(void *pd)
{
    struct redis_uv_simple *p = pd;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, redis_uv_simple_on_close);
}

int redis_uv_attach_simple(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data)
        return -EEXIST;
    struct redis_uv_simple *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    int rc = uv_poll_init(loop, &p->handle, ac->c.fd);
    if (rc < 0) {
        free(p);
        return rc;
    }
    p->ac = ac;
    p->handle.data = p;
    ac->ev.addRead = redis_uv_simple_add_read;
    ac->ev.delRead = redis_uv_simple_del_read;
    ac->ev.addWrite = redis_uv_simple_add_write;
    ac->ev.delWrite = redis_uv_simple_del_write;
    ac->ev.cleanup = redis_uv_simple_cleanup;
    ac->ev.data = p;
    return 0;
}
