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

/* Slots counted behind the current one: ceil(W / w), at most WINDOW_SLOTS. For the
 * width of W (w = ceil(W / WINDOW_SLOTS), so WINDOW_SLOTS * w >= W) the smallest s with
 * s * w >= W is found by multiplying down from WINDOW_SLOTS: no division on the request
 * path (usually one multiply). Any other width divides. */
static int64_t window_span(int64_t window_ms, int64_t width)
{
    if (width > 0 && width <= WINDOW_MAX_MS && WINDOW_SLOTS * width >= window_ms && window_ms > 0) {
        int64_t s = WINDOW_SLOTS;
        while (s > 1 && (s - 1) * width >= window_ms)
            s--;
        return s;
    }
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
        /* The ring index steps along with s: one division, not one per slot. */
        size_t k = (size_t)(from % WINDOW_RING);
        for (int64_t s = from; s <= w->newest; s++) {
            usage += w->count[k];
            if (++k == WINDOW_RING)
                k = 0;
        }
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

void window_lua_args(int64_t now_ms, int64_t window_ms, int64_t limit, int64_t amount,
                     unsigned char out[WINDOW_LUA_ARGS_LEN])
{
    const int64_t v[4] = {now_ms, window_ms, limit, amount};
    for (int k = 0; k < 4; k++) {
        double d = (double)v[k]; /* exact: every value is below 2^53 */
        uint64_t bits;
        memcpy(&bits, &d, sizeof(bits));
        for (int b = 0; b < 8; b++)
            out[8 * k + b] = (unsigned char)(bits >> (8 * b)); /* little-endian on any host */
    }
}

/* The state is one string value: struct window as 13 little-endian doubles (width, newest,
 * count[0..10]), read with GET and written with SET PX, so a take costs Redis two calls
 * (a hash of slot fields needed four or five) and the script runs the same steps as
 * window_take on the same state. Every value is below 2^50, so the doubles of Lua hold
 * them exactly. A value of another type or length (a hash left by the v1 script, or a key
 * someone else wrote) is deleted and counted from empty, and the result comes back as
 * -1 - result so the caller can log the repair. The TTL goes back as a string formatted
 * with %d: Redis formats Lua numbers with %.17g, which turns large integers into
 * exponents. */
const char window_lua_script[] =
    "-- postsurge window v4: EVALSHA sha 1 KEY ARGS (now_ms window_ms limit amount as 4 LE "
    "doubles)\n"
    "-- returns count * 2 + allowed (one integer: cheaper for Redis and the client than a table),\n"
    "-- or -1 - that when a value this script did not write was deleted first\n"
    "local now, win, limit, amount = struct.unpack('<dddd', ARGV[1])\n"
    "local floor = math.floor\n"
    "local w = floor((win + 9) / 10)\n"
    "local span = floor((win + w - 1) / w)\n"
    "local i = floor(now / w)\n"
    "local v = redis.pcall('GET', KEYS[1])\n"
    "local t\n"
    "local bad = false\n"
    "if type(v) == 'string' and #v == 104 then\n"
    "  t = {struct.unpack('<ddddddddddddd', v)}\n"
    "else\n"
    "  if v then\n"
    "    bad = true\n"
    "    redis.call('DEL', KEYS[1])\n"
    "  end\n"
    "  t = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}\n"
    "end\n"
    "local width, newest = t[1], t[2]\n"
    "local stored = width ~= 0\n"
    "if width ~= 0 and (width ~= w or newest - i > span) then width = 0 end\n"
    "local e = i\n"
    "if width ~= 0 and newest > e then e = newest end\n"
    "if width ~= 0 and newest < e - span then width = 0 end\n"
    "local usage = 0\n"
    "if width ~= 0 then\n"
    "  local from = e - span\n"
    "  if from < newest - 10 then from = newest - 10 end\n"
    "  if from < 0 then from = 0 end\n"
    "  for s = from, newest do usage = usage + t[s % 11 + 3] end\n"
    "end\n"
    "local allowed = 0\n"
    "if usage + amount <= limit then\n"
    "  allowed = 1\n"
    "  if amount > 0 then\n"
    "    if width == 0 then\n"
    "      newest = e\n"
    "      for k = 3, 13 do t[k] = 0 end\n"
    "    end\n"
    "    local gap = e - newest\n"
    "    if gap > 11 then gap = 11 end\n"
    "    for s = e - gap + 1, e do t[s % 11 + 3] = 0 end\n"
    "    local k = e % 11 + 3\n"
    "    t[k] = t[k] + amount\n"
    "    usage = usage + amount\n"
    "    local ttl = (e + span + 1) * w - now + 1000\n"
    "    if ttl < 1 then ttl = 1 end\n"
    "    redis.call('SET', KEYS[1], struct.pack('<ddddddddddddd', w, e, t[3], t[4], t[5], t[6],\n"
    "      t[7], t[8], t[9], t[10], t[11], t[12], t[13]), 'PX',\n"
    "      string.format('%d', ttl))\n"
    "    if bad then return -2 - usage * 2 end\n"
    "    return usage * 2 + 1\n"
    "  end\n"
    "end\n"
    "-- window_take emptied the state (new width, clock stepped back, all slots old).\n"
    "if stored and width == 0 then redis.call('DEL', KEYS[1]) end\n"
    "if bad then return -1 - (usage * 2 + allowed) end\n"
    "return usage * 2 + allowed\n";
