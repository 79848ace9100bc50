/* window: sliding-window counters at slot granularity, in C for the memory store and in
 * Lua for Redis. Both must stay arithmetically identical: the store contract test replays
 * the same takes against both. */
#include "window.h"

#include <errno.h>
#include <string.h>

void window_init(struct window *w)
{
    memset(w, 0, sizeof(*w));
}

int64_t window_slot_width(int64_t window_ms)
{
    return (window_ms + WINDOW_SLOTS - 1) / WINDOW_SLOTS;
}

/* Slots counted behind the current one: ceil(W / w), at most WINDOW_SLOTS. */
static int64_t window_span(int64_t window_ms, int64_t width)
{
    return (window_ms + width - 1) / width;
}

int window_take(struct window *w, int64_t now_ms, int64_t window_ms, int64_t limit, int64_t amount,
                struct window_result *out)
{
    if (now_ms < 0 || now_ms > WINDOW_MAX_VALUE || window_ms <= 0 || window_ms > WINDOW_MAX_MS ||
        limit < 0 || limit > WINDOW_MAX_VALUE || amount < 0 || amount > WINDOW_MAX_VALUE)
        return -EINVAL;

    int64_t width = window_slot_width(window_ms);
    int64_t span = window_span(window_ms, width);
    int64_t i = now_ms / width;

    /* A new width means the rule changed: old slots measure something else. A newest slot
     * more than a window ahead means a clock stepped back: keeping it would block the key
     * until the clock caught up again. */
    if (w->width != 0 && (w->width != width || w->newest - i > span))
        window_init(w);

    /* Slightly older times (another node's clock) count into the newest slot written. */
    int64_t e = i;
    if (w->width != 0 && w->newest > e)
        e = w->newest;

    /* Everything written is out of the window: the Lua script deletes every field then,
     * so forget the newest slot too, or a later take from a clock behind would count it. */
    if (w->width != 0 && w->newest < e - span)
        window_init(w);

    int64_t usage = 0;
    if (w->width != 0) {
        int64_t from = e - span;
        if (from < w->newest - WINDOW_SLOTS)
            from = w->newest - WINDOW_SLOTS;
        if (from < 0)
            from = 0;
        for (int64_t s = from; s <= w->newest; s++)
            usage += w->count[s % WINDOW_RING];
    }

    out->allowed = usage + amount <= limit;
    if (out->allowed && amount > 0) {
        /* Only writes move the state, as in the Lua script, whose fields are the slots
         * written: a denied take or a query leaves both in the same state. */
        if (w->width == 0) {
            w->width = width;
            w->newest = e;
        }
        int64_t gap = e - w->newest;
        if (gap > WINDOW_RING)
            gap = WINDOW_RING;
        for (int64_t s = e - gap + 1; s <= e; s++)
            w->count[s % WINDOW_RING] = 0;
        w->newest = e;
        w->count[e % WINDOW_RING] += amount;
        usage += amount;
    }
    out->count = usage;
    return 0;
}

bool window_expired(const struct window *w, int64_t now_ms)
{
    if (w->width <= 0)
        return true;
    int64_t i = now_ms / w->width;
    return i > w->newest + WINDOW_SLOTS || w->newest - i > WINDOW_SLOTS;
}

int64_t window_ttl_ms(int64_t width, int64_t newest, int64_t window_ms, int64_t now_ms)
{
    int64_t ttl = (newest + window_span(window_ms, width) + 1) * width - now_ms;
    ttl += WINDOW_TTL_MARGIN_MS;
    return ttl < 1 ? 1 : ttl;
}

/* Numbers go back to Redis as strings formatted with %d: Redis formats Lua numbers with
 * %.17g, which turns large integers into exponents that HINCRBY rejects. Every value is
 * below 2^50, so the doubles of Lua hold them exactly. */
const char window_lua_script[] =
    "-- postsurge window v1: EVAL s 1 KEY now_ms window_ms limit amount\n"
    "local key = KEYS[1]\n"
    "local now = tonumber(ARGV[1])\n"
    "local win = tonumber(ARGV[2])\n"
    "local limit = tonumber(ARGV[3])\n"
    "local amount = tonumber(ARGV[4])\n"
    "local S = 10\n"
    "local w = math.floor((win + S - 1) / S)\n"
    "local span = math.floor((win + w - 1) / w)\n"
    "local i = math.floor(now / w)\n"
    "local h = redis.call('HGETALL', key)\n"
    "local width = nil\n"
    "local newest = nil\n"
    "local slots = {}\n"
    "for j = 1, #h, 2 do\n"
    "  if h[j] == 'w' then\n"
    "    width = tonumber(h[j + 1])\n"
    "  else\n"
    "    local s = tonumber(h[j])\n"
    "    slots[#slots + 1] = {s, tonumber(h[j + 1]), h[j]}\n"
    "    if newest == nil or s > newest then newest = s end\n"
    "  end\n"
    "end\n"
    "if #h > 0 and (width ~= w or (newest ~= nil and newest - i > span)) then\n"
    "  redis.call('DEL', key)\n"
    "  slots = {}\n"
    "  newest = nil\n"
    "end\n"
    "local e = i\n"
    "if newest ~= nil and newest > e then e = newest end\n"
    "local usage = 0\n"
    "local old = {}\n"
    "for _, sl in ipairs(slots) do\n"
    "  if sl[1] >= e - span then usage = usage + sl[2] else old[#old + 1] = sl[3] end\n"
    "end\n"
    "if #old > 0 then redis.call('HDEL', key, unpack(old)) end\n"
    "local allowed = 0\n"
    "if usage + amount <= limit then\n"
    "  allowed = 1\n"
    "  if amount > 0 then\n"
    "    usage = usage + amount\n"
    "    redis.call('HINCRBY', key, string.format('%d', e), ARGV[4])\n"
    "    redis.call('HSET', key, 'w', string.format('%d', w))\n"
    "    local ttl = (e + span + 1) * w - now + 1000\n"
    "    if ttl < 1 then ttl = 1 end\n"
    "    redis.call('PEXPIRE', key, string.format('%d', ttl))\n"
    "  end\n"
    "end\n"
    "return {allowed, usage}\n";
