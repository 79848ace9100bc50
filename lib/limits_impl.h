/* limits_impl: what the sources of the limits module share (limits_parse.c builds the
 * engine from rules, limits_key.c derives keys and checks conditions, limits_engine.c plans
 * and finishes decisions). Not for other modules: they go through limits_engine.h. */
#pragma once

#include "limits_engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"
#include "textutil.h"

/* Units remembered per SMTP session (connections) and per transaction (messages,
 * bytes, recipients). Past the cap a repeat counts again: over-counting is the safe
 * side for a limiter. */
#define MAX_UNITS (4 * LIMITS_MAX_RCPT_CACHE)

#define MIN_WINDOW_MS 1000LL
#define MAX_WINDOW_MS (366LL * 24 * 3600 * 1000)

struct limits_engine {
    unsigned refs;
    struct limits_rule rule[LIMITS_MAX_RULES];
    size_t n_rules;
    struct net_set *exempt_nets;
    char **exempt_users; /* lowercased */
    size_t n_exempt_users;
    char *default_action;
    struct limits_rt *rt; /* run-time overrides (a reference), or NULL */
};

enum { SCOPE_SESSION = 0, SCOPE_INSTANCE = 1 };

struct unit_entry {
    uint64_t id; /* 0: free slot */
    int64_t amount;
    bool denied;
};

struct unit_set {
    struct unit_entry *v;
    size_t cap; /* power of two, or 0 */
    size_t n;
};

struct limits_session {
    uint64_t epoch; /* changes whenever the remembered units are dropped */
    bool have_client;
    uint64_t client; /* hash of client_address and client_port */
    bool have_instance;
    uint64_t instance;
    bool rcpt_seen;           /* an RCPT request of this transaction reached us */
    struct unit_set units[2]; /* SCOPE_SESSION, SCOPE_INSTANCE */
};

/* ---- small helpers ---- */

static inline uint64_t fnv64_add_lower(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        h ^= c;
        h *= FNV64_PRIME;
    }
    return h;
}

static inline char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static inline const char *attr(const struct policy_request *req, enum policy_attr a, size_t *len)
{
    const char *v = req->attr[a];
    if (v == NULL) {
        *len = 0;
        return "";
    }
    *len = req->attr_len[a];
    return v;
}

/* A decimal attribute (size, recipient_count); 0 when absent or malformed. */
static inline int64_t attr_num(const struct policy_request *req, enum policy_attr a)
{
    size_t len;
    const char *v = attr(req, a, &len);
    int64_t n = 0;
    if (len == 0 || len > 15)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* strndup through malloc, so a test that fails the Nth malloc reaches every path. */
static inline char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Writes "NAME:TAG:VALUE" to out (outsz >= LIMITS_KEY_MAX); returns its length, 0 and an
 * empty key if it did not fit (limits_key.c). */
size_t limits_key_join(char *out, size_t outsz, const char *name, const char *tag,
                       const char *value, size_t vlen);

/* A regular-expression condition's verdicts for the values it saw last, so the values
 * that recur (a TLS protocol, a policy_context, a frequent domain) are matched once:
 * direct-mapped by a hash of the value, the value kept whole and compared byte for byte,
 * so a slot only ever answers for the exact value it holds. A value an attacker chooses
 * can only evict a slot, and costs a regexec as it would without the memo. Values longer
 * than RE_MEMO_VALUE always go to regexec. Written on the event loop only (the engine
 * decides on one thread). */
#define RE_MEMO_SLOTS 64
#define RE_MEMO_VALUE 46
struct re_memo_slot {
    unsigned char len; /* 0: empty */
    bool match;
    char value[RE_MEMO_VALUE];
};
struct re_memo {
    struct re_memo_slot slot[RE_MEMO_SLOTS];
    uint64_t hits; /* answers from the memo (tests read it) */
    /* When the expression can only match a value that begins with one of some bytes
     * (it starts "^L" or "^(L1...|L2...)" with literal Ls, see limits_re_first): those
     * bytes, a bit each. A value whose first byte is ASCII and not among them is no match
     * without regexec. */
    bool have_first;
    uint8_t first[32];
};

/* Fills first (a bit per byte) with the bytes any match of the ERE pattern (compiled
 * with REG_EXTENDED | REG_ICASE) must begin with, and returns true; false when the
 * pattern is not of a form it can tell (limits_key.c). Never wrong, only cautious: it
 * understands "^" followed by a literal, or by a group of alternatives that each begin
 * with a literal, neither made optional, and no "|" outside that group. */
bool limits_re_first(const char *pattern, uint8_t first[32]);

/* What the rules of one request share: the client address parsed once, and the last
 * client_address group formatted (rules that group the address alike reuse it). Fill
 * with limits_req_init; lives on the stack of one limits_plan call. */
struct limits_req {
    const struct policy_request *req; /* borrowed */
    bool client_ok;                   /* client_address present and numeric */
    bool client_text_canonical;       /* an IPv4 client_address sent as net.c writes it */
    struct net_addr client;
    bool have_group; /* group holds the client grouped by group_prefix */
    unsigned group_prefix;
    size_t group_len;
    char group[NET_ADDR_STRLEN];
    /* sender_domain and recipient_domain, found once (have_domain bit 0: sender, 1:
     * recipient). */
    unsigned have_domain;
    const char *domain[2];
    size_t domain_len[2];
};

void limits_req_init(struct limits_req *q, const struct policy_request *req);
/* limits_key_value and limits_conds_hold for a request read once (limits_key.c). */
int limits_key_value_req(const struct limits_rule *r, struct limits_req *q, char *out,
                         size_t outsz);
bool limits_conds_hold_req(const struct limits_rule *r, struct limits_req *q);
