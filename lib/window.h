/* window: the sliding-window counter behind every rate limit. One key's state is a ring
 * of per-slot counts; a take admits `amount` units only if the window stays within its
 * limit. The same arithmetic exists as a Redis Lua script (window_lua_script) so the
 * memory and Redis stores answer identically. Pure: the caller passes the time in. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* A window of W ms is cut into WINDOW_SLOTS slots of width w = ceil(W / WINDOW_SLOTS).
 * At time now the current slot is i = floor(now / w), and usage is the sum of slots
 * i-k .. i where k = ceil(W / w) (k == WINDOW_SLOTS whenever WINDOW_SLOTS divides W,
 * fewer for windows under WINDOW_SLOTS ms). The oldest slot counts fully, so every
 * period of length W is inside the counted span: no period of W ms ever holds more than
 * the limit, and a blocked client is admitted again after at most W + 2w ms (W + w when
 * WINDOW_SLOTS divides W). */
#define WINDOW_SLOTS 10
#define WINDOW_RING (WINDOW_SLOTS + 1)

/* Bounds that keep every sum exact in int64 and in the doubles of Redis Lua. */
#define WINDOW_MAX_MS (INT64_C(1) << 40)    /* about 34 years */
#define WINDOW_MAX_VALUE (INT64_C(1) << 50) /* limits, amounts and times (ms) */

/* Milliseconds Redis keeps a key beyond the end of its last counted slot, so a key never
 * expires while some node still counts it (clocks of nodes differ a little). */
#define WINDOW_TTL_MARGIN_MS 1000

/* One key's state: 104 bytes. Zero-initialised (or window_init) means empty. */
struct window {
    int64_t width;              /* slot width w in ms; 0: empty */
    int64_t newest;             /* index of the newest slot */
    int64_t count[WINDOW_RING]; /* count[s % WINDOW_RING] for slots newest-10 .. newest */
};

struct window_result {
    bool allowed;  /* the units were admitted (and counted) */
    int64_t count; /* usage after the take: includes the amount if admitted */
};

/* Empties a window state. */
void window_init(struct window *w);

/* Slot width for a window of window_ms (> 0): ceil(window_ms / WINDOW_SLOTS). */
int64_t window_slot_width(int64_t window_ms);

/* Takes `amount` units from the window at time now_ms (wall clock, ms since the epoch:
 * nodes sharing a store must agree on it). Admitted if usage + amount <= limit; the
 * units are then added to the current slot. Denied units are not counted. amount 0 is a
 * query that never writes. If window_ms differs from the state's, the state restarts
 * empty. Time may go back a little (clocks of nodes differ): a take older than the
 * newest slot counts into the newest slot; a take more than a whole window older resets
 * the state (a clock was stepped back). Returns 0 and fills *out, or -EINVAL for
 * now_ms, limit or amount outside 0..WINDOW_MAX_VALUE or window_ms outside
 * 1..WINDOW_MAX_MS (then *w is unchanged). */
int window_take(struct window *w, int64_t now_ms, int64_t window_ms, int64_t limit, int64_t amount,
                struct window_result *out);

/* True if the state counts nothing at now_ms any more (empty, all slots out of the
 * window, or so far in the future that the next take resets it): a store may drop it. */
bool window_expired(const struct window *w, int64_t now_ms);

/* Milliseconds a store should keep a state last written in slot `newest` of width `width`,
 * measured from now_ms: the end of the last slot that counts it, plus
 * WINDOW_TTL_MARGIN_MS. Always >= 1. */
int64_t window_ttl_ms(int64_t width, int64_t newest, int64_t window_ms, int64_t now_ms);

/* Bytes of the script's one argument: now_ms, window_ms, limit and amount as four
 * little-endian IEEE-754 doubles. Binary, because Redis spent a sixth of the script's
 * cost turning four decimal strings into numbers (strtod) and handling three more
 * arguments: 56.8k -> 47.3k instructions per call (callgrind, Redis 7.0). */
#define WINDOW_LUA_ARGS_LEN 32

/* Fills out with the script's argument for a take (values as window_take accepts them,
 * all below 2^53 so the doubles are exact). */
void window_lua_args(int64_t now_ms, int64_t window_ms, int64_t limit, int64_t amount,
                     unsigned char out[WINDOW_LUA_ARGS_LEN]);

/* The Lua script implementing window_take on a Redis string holding struct window (13
 * little-endian doubles; WINDOW_SLOTS is written into it as 10). Call: EVAL script 1 KEY
 * ARGS, ARGS from window_lua_args(); it returns one integer, count * 2 + allowed (0|1). Uses GET,
 * then SET PX after an admitted take or DEL when the state empties, on KEYS[1] only, so a sharding
 * proxy can route it. */
extern const char window_lua_script[];
