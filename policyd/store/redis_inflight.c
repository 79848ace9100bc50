/* redis_inflight: the requests a Redis backend (store_redis.c, redis_cluster.c) has sent
 * and waits for. hiredis 0.14.1 has no async timeouts, so one timer, armed for the
 * oldest request, answers every request Redis does not answer within redis_timeout (per
 * store_failure_action), and lets the backend drop the connections that stalled. */
#include "store_internal.h"

#include <errno.h>

#include "util/container.h"

/* A connection stalls after four redis_timeout without reply, and never under this. */
#define REDIS_STALL_MIN_MS 1000

bool redis_progress_stalled(const struct redis_progress *p, uint64_t now, int64_t timeout_ms)
{
    uint64_t stall = (uint64_t)timeout_ms * 4;
    if (stall < REDIS_STALL_MIN_MS)
        stall = REDIS_STALL_MIN_MS;
    return p->outstanding > 0 && now - p->last >= stall;
}

static void redis_inflight_on_timer(uv_timer_t *t);

static void redis_inflight_arm(struct redis_inflight *in)
{
    struct store_req *head = in->list.head;
    if (!head) {
        uv_timer_stop(&in->timer);
        return;
    }
    uint64_t now = uv_now(in->timer.loop);
    uv_timer_start(&in->timer, redis_inflight_on_timer,
                   head->deadline > now ? head->deadline - now : 0, 0);
}

static void redis_inflight_on_timer(uv_timer_t *t)
{
    struct redis_inflight *in = container_of(t, struct redis_inflight, timer);
    uint64_t now = uv_now(t->loop);
    bool any = false;
    /* Every request has the same timeout, so the list is in deadline order. */
    while (in->list.head && in->list.head->deadline <= now) {
        struct store_req *req = in->list.head;
        store_req_list_remove(&in->list, req);
        in->h->s->stats.timeouts++;
        redis_health_finish_failed(in->h, req, -ETIMEDOUT);
        any = true;
    }
    in->on_expired(in, now, any);
    redis_inflight_arm(in);
}

void redis_inflight_init(struct redis_inflight *in, struct redis_health *h, int64_t timeout_ms,
                         void (*on_expired)(struct redis_inflight *in, uint64_t now, bool any),
                         void *owner)
{
    in->h = h;
    in->list.head = in->list.tail = NULL;
    in->timeout_ms = timeout_ms;
    in->on_expired = on_expired;
    in->owner = owner;
    uv_timer_init(h->s->loop, &in->timer);
    in->timer.data = owner;
}

void redis_inflight_add(struct redis_inflight *in, struct store_req *req)
{
    req->deadline = uv_now(in->timer.loop) + (uint64_t)in->timeout_ms;
    req->where = REQ_INFLIGHT;
    store_req_list_push(&in->list, req);
    if (!uv_is_active((uv_handle_t *)&in->timer))
        redis_inflight_arm(in);
}

struct store_req *redis_inflight_find(struct redis_inflight *in, uint64_t id)
{
    /* Replies come in order, so the request is almost always the oldest. */
    for (struct store_req *req = in->list.head; req; req = req->next)
        if (req->id == id)
            return req;
    return NULL;
}

void redis_inflight_answered(struct redis_inflight *in, struct store_req *req)
{
    store_req_list_remove(&in->list, req);
    store_req_finish(req, 0);
    redis_inflight_arm(in);
}

void redis_inflight_fail(struct redis_inflight *in, struct store_req *req, int status)
{
    store_req_list_remove(&in->list, req);
    if (status == -ETIMEDOUT)
        in->h->s->stats.timeouts++;
    redis_health_finish_failed(in->h, req, status);
    redis_inflight_arm(in);
}

void redis_inflight_fail_all(struct redis_inflight *in, int status)
{
    while (in->list.head)
        redis_inflight_fail(in, in->list.head, status);
}

void redis_inflight_unlink(struct redis_inflight *in, struct store_req *req)
{
    store_req_list_remove(&in->list, req);
    redis_inflight_arm(in);
}

void redis_inflight_close(struct redis_inflight *in, uv_close_cb close_cb)
{
    redis_inflight_fail_all(in, -ECANCELED);
    uv_close((uv_handle_t *)&in->timer, close_cb);
}
