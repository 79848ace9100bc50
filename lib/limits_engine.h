/* limits_engine: the rate-limit engine. Parses the `limits` rules and exemptions of a config
 * into an immutable engine; for each policy request it derives the counter keys
 * ("per_ip:1f3a9c07:192.0.2.0/24"), drops what Postfix asks again (identical RCPT
 * requests from several restriction lists, RCPT/DATA/END-OF-MESSAGE of one transaction)
 * and plans counter operations; after the store ran them it picks the answer. Pure: the
 * store (memory or Redis, async) does the counting and owns the clock.
 *
 * Flow per request, on one policy connection (requests on it are serialised by Postfix):
 *     rc = limits_plan(engine, session, req, node_stressed, &plan);
 *     if (rc == LIMITS_PLAN_DECIDED) answer plan.decision.action at once;
 *     else run plan.ops[0..n_ops) in the store (one round trip), then
 *          limits_finish(engine, session, &plan, results, &decision); answer decision.action
 *
 * Rule syntax (one per line of `limits`; blank lines and '#' lines are skipped):
 *     NAME KEY MEASURE COUNT/WINDOW [stress COUNT/WINDOW] [dryrun] [if COND]... [action TEXT]
 * NAME [A-Za-z0-9_.-]{1,32}, unique. KEY: up to 4 parts joined by '+', each an attribute
 * of the policy protocol (policy.h: helo_name, policy_context, server_port, ...) or
 * sender_domain / recipient_domain (the part after the last '@'); client_address may
 * be grouped as client_address/V4LEN or client_address/V4LEN/V6LEN. A part absent or
 * empty in a request means the rule does not apply to it. MEASURE: connections,
 * messages, recipients, bytes; connections need a key that stays the same within an
 * SMTP session (client, server, HELO, SASL login, TLS and policy_context attributes).
 * COND: ATTR=V1,V2,... (equal to one of them), ATTR!=V1,... (equal to none) or
 * ATTR~ERE (POSIX extended regex), all case-insensitive; for client_address and
 * server_address the values are addresses or CIDR networks. An absent or empty
 * attribute equals nothing and matches no regex. Every `if` must hold, or the rule
 * neither counts nor limits the request. `overrides texthash:PATH` or `cidr:PATH`
 * (cidr only for keys with client_address) gives per-key limits (limits_table.h): the
 * table's value replaces the rule's limit, stress or not; `unlimited` neither limits
 * nor counts. COUNT: an integer >= 1 (bytes take K M G, powers of 1024).
 * WINDOW: an integer with unit s m h d (1s .. 366d). `action TEXT` takes the rest of the line and
 * must be an access(5) action: 4NN/5NN [text], DEFER_IF_PERMIT, DEFER_IF_REJECT, DEFER, REJECT,
 * HOLD, DISCARD, WARN or INFO [text]. Without it the rule answers limit_action followed by "
 * (NAME)". See README.md, section "limits", for what is counted in which protocol state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "limits_table.h"
#include "policy.h"
#include "window.h"

#define LIMITS_MAX_RULES 32
#define LIMITS_MAX_NAME 32     /* characters of a rule name */
#define LIMITS_MAX_KEY_PARTS 4 /* parts of a '+' key */
#define LIMITS_MAX_CONDS 8     /* `if` conditions per rule */
/* Two ops per rule at most: a rule whose stress window differs from its window keeps a
 * second counter (see struct limits_op). */
#define LIMITS_MAX_OPS (2 * LIMITS_MAX_RULES)
/* Longest counter key, NUL included: NAME ':' 8 hex ':' VALUE, where VALUE (escaped) is
 * at most LIMITS_MAX_VALUE characters, or '#' and 16 hex digits of a hash when longer. */
#define LIMITS_MAX_VALUE 96
#define LIMITS_KEY_MAX (LIMITS_MAX_NAME + 1 + 8 + 1 + LIMITS_MAX_VALUE + 1)
/* The limit of a count-only op: never reached. */
#define LIMITS_COUNT_ONLY WINDOW_MAX_VALUE
/* Distinct recipients remembered per transaction (Postfix's smtpd_recipient_limit
 * default is 1000); past it a repeated RCPT is counted again (never under-counted). */
#define LIMITS_MAX_RCPT_CACHE 1024

enum limits_measure {
    LIMITS_CONNECTIONS,
    LIMITS_MESSAGES,
    LIMITS_RECIPIENTS,
    LIMITS_BYTES,
};

enum limits_key_part {
    LIMITS_KEY_CLIENT_ADDRESS,
    LIMITS_KEY_SASL_USERNAME,
    LIMITS_KEY_SENDER,
    LIMITS_KEY_SENDER_DOMAIN,
    LIMITS_KEY_RECIPIENT,
    LIMITS_KEY_RECIPIENT_DOMAIN,
    LIMITS_KEY_ATTR, /* any other policy attribute: limits_rule.part_attr */
};

/* Attributes a condition tests: enum policy_attr, or these derived ones. */
#define LIMITS_ATTR_SENDER_DOMAIN (-2)
#define LIMITS_ATTR_RECIPIENT_DOMAIN (-3)

enum limits_cond_op {
    LIMITS_COND_EQ, /* ATTR=V1,V2 */
    LIMITS_COND_NE, /* ATTR!=V1,V2 */
    LIMITS_COND_RE, /* ATTR~ERE */
};

struct net_set;

/* One `if`; owned by the engine. */
struct limits_cond {
    int attr; /* enum policy_attr or LIMITS_ATTR_* */
    enum limits_cond_op op;
    char *text;        /* as written after `if` (for listings) */
    char **values;     /* EQ/NE on other attributes: the values */
    size_t *value_len; /* and their lengths */
    size_t n_values;
    struct net_set *nets; /* EQ/NE on client_address, server_address */
    void *re;             /* RE: a compiled regex_t */
    struct re_memo *memo; /* RE: the last verdicts by value (limits_key.c) */
};

/* One parsed rule; read-only for callers (status pages, logs). */
struct limits_rule {
    char name[LIMITS_MAX_NAME + 1];
    enum limits_key_part part[LIMITS_MAX_KEY_PARTS];
    int part_attr[LIMITS_MAX_KEY_PARTS]; /* enum policy_attr of a LIMITS_KEY_ATTR part */
    size_t n_parts;
    unsigned v4len, v6len; /* client_address grouping: 32 and 128 when not grouped */
    char key_spec[160];    /* canonical KEY text ("client_address/24/64+sasl_username") */
    struct limits_cond cond[LIMITS_MAX_CONDS];
    size_t n_conds;
    /* `overrides TYPE:PATH`: per-key limits from a table, or NULL. */
    char *overrides;                   /* "texthash:/etc/postsurge/quotas" as written */
    enum limits_table_type table_type; /* of overrides */
    const char *table_path;            /* inside overrides */
    struct limits_table *table;        /* current contents (limits_engine_set_table) */
    enum limits_measure measure;
    int64_t limit, window_ms;
    bool has_stress;
    int64_t stress_limit, stress_window_ms; /* = limit, window_ms without `stress` */
    char *action;                           /* what a deny answers (owned by the engine) */
    bool dryrun;                            /* per rule `dryrun`, or limit_dry_run = yes */
    unsigned line;                          /* config file line, 0 if unknown */
    /* Short hashes of key spec, measure and window, part of every key of this rule, so
     * a rule that keeps its name, key, measure and window across a reload keeps its
     * counters, and one whose key or window changed starts afresh. */
    char tag[9], stress_tag[9];
    /* "NAME:TAG:", the start of every key of this rule, and its hash64 (continued over
     * a key value per request for the id of a counted unit). */
    char key_prefix[LIMITS_MAX_NAME + 1 + 8 + 1 + 1];
    size_t key_prefix_len;
    uint64_t key_hash;
};

struct limits_engine;
struct limits_session;

/* Builds an engine from cfg->limits, limit_exempt_networks, limit_exempt_sasl_users,
 * limit_dry_run, limit_action and default_action. cfg is only read during the call.
 * Every problem is appended to errs (may be NULL) as "FILE:LINE: message". Returns the
 * new engine (caller owns: limits_engine_free), or NULL: then errs gained at least one
 * message for a bad config, none on ENOMEM. Call at start-up and on SIGHUP (then swap
 * engines: keys of unchanged rules are the same, so the store keeps their counters). */
struct limits_engine *limits_engine_new(const struct config *cfg, struct config_errors *errs);
/* Takes one more reference (for a plan in flight across an engine swap). Returns e. */
struct limits_engine *limits_engine_ref(struct limits_engine *e);
/* Drops a reference; frees the engine with the last one. NULL is a no-op. */
void limits_engine_free(struct limits_engine *e);

size_t limits_engine_rule_count(const struct limits_engine *e);
/* Replaces rule i's override table with t (taken over; NULL empties it) and frees the
 * previous one. The engine is otherwise immutable: call on the thread that plans.
 * Returns 0, or -EINVAL if i has no overrides (t is freed). */
int limits_engine_set_table(struct limits_engine *e, size_t i, struct limits_table *t);
struct limits_rt;
/* Puts the run-time overrides rt (limits_rt.h; a reference is taken, NULL: none) in
 * force, replacing the previous set. Call on the thread that plans. */
void limits_engine_set_runtime(struct limits_engine *e, struct limits_rt *rt);
/* The run-time overrides in force (borrowed), or NULL. */
const struct limits_rt *limits_engine_runtime(const struct limits_engine *e);

/* Where the limit in force for a key value comes from. */
enum limits_source {
    LIMITS_SOURCE_RULE,    /* the rule's limit (or its stress limit) */
    LIMITS_SOURCE_TABLE,   /* its `overrides` table */
    LIMITS_SOURCE_RUNTIME, /* `postsurge limits set` */
};
/* The override of rule i for a key value (vlen bytes, as limits_key_value writes it;
 * client: the client address for cidr tables, may be NULL): the run-time one first, then
 * the table's. Sets *limit (a count, 0 or LIMITS_TABLE_UNLIMITED) unless it returns
 * LIMITS_SOURCE_RULE. i must be a valid rule index. */
enum limits_source limits_override(const struct limits_engine *e, size_t i, const char *value,
                                   size_t vlen, const struct net_addr *client, int64_t *limit);

/* Rule i (borrowed, lives as long as e), or NULL if i is out of range. */
const struct limits_rule *limits_engine_rule(const struct limits_engine *e, size_t i);

/* Per policy connection dedup state: the current SMTP session (client_address +
 * client_port), its transaction (instance), the recipients already decided in it and
 * which counters were already taken. Owned by the daemon's connection; new returns NULL
 * on ENOMEM, free(NULL) is a no-op, reset forgets everything (e.g. after a protocol
 * error). Sessions are not shared between connections or threads. */
struct limits_session *limits_session_new(void);
void limits_session_free(struct limits_session *s);
void limits_session_reset(struct limits_session *s);

/* A counter operation for the store: take `amount` units from the sliding window
 * `window_ms` under `key` (store_key_prefix not included); admitted only if usage +
 * amount <= limit, and then counted (window.h). */
struct limits_op {
    char key[LIMITS_KEY_MAX];
    size_t keylen; /* strlen(key) */
    int64_t window_ms;
    int64_t limit;  /* LIMITS_COUNT_ONLY for a count-only op: the stress counter of a rule
                     * whose stress window differs, kept warm while not stressed */
    int64_t amount; /* >= 1 */
    uint16_t rule;  /* index into the engine's rules */
    /* private to limits.c */
    bool enforce;
    uint8_t scope;
    uint64_t unit;
};

struct limits_decision {
    /* The reply: the deciding rule's action, or default_action when nothing denies, in
     * dryrun and for exempt clients. Borrowed from the engine; NULL only when
     * store_failed (then the caller answers its store_failure_action). */
    const char *action;
    bool deny;               /* some rule's limit was reached (also true in dryrun) */
    bool dryrun;             /* only dryrun rules denied: log rule_action, answer action */
    int rule;                /* the deciding rule's index, -1 if none */
    const char *rule_name;   /* borrowed, NULL if none */
    const char *rule_action; /* what the deciding rule answers (for the log), or NULL */
    bool cached;             /* a repeat answered from the session: nothing counted, log at debug */
    bool exempt;             /* exempt client or SASL user: nothing counted */
    bool stressed;           /* stress limits were used */
    bool store_failed;       /* limits_finish got no results */
    /* From the deciding op when counted now (else 0/NULL): for the log line. */
    int64_t count, limit, window_ms;
    const char *key; /* borrowed from the plan */
};

enum limits_plan_status {
    LIMITS_PLAN_DECIDED = 0, /* plan->decision holds the answer; no store round trip */
    LIMITS_PLAN_OPS = 1,     /* run plan->ops, then call limits_finish */
};

/* Filled by limits_plan. About 12 KB: embed one per connection, or allocate. */
struct limits_plan {
    struct limits_op ops[LIMITS_MAX_OPS];
    size_t n_ops;
    struct limits_decision decision; /* when LIMITS_PLAN_DECIDED */
    /* private to limits.c */
    const struct limits_engine *engine;
    uint64_t session_epoch;
    uint64_t rcpt; /* hash of the recipient at RCPT, 0 if none */
    bool stressed;
    int cached_rule; /* a cached dryrun deny that still decides if nothing else does */
};

/* Plans the counting for one request. stressed: this node (or cluster) is in stress
 * mode; a request with stress=yes is stressed too. Reads req only during the call.
 * Returns LIMITS_PLAN_DECIDED (exempt, no rule counts anything, or a repeat answered
 * from the session), LIMITS_PLAN_OPS, or -EINVAL (NULL argument). Updates the session's
 * idea of the current SMTP session and transaction. Call limits_finish (or drop the
 * plan) before planning the next request of the same session. */
int limits_plan(struct limits_engine *e, struct limits_session *s, const struct policy_request *req,
                bool stressed, struct limits_plan *plan);

/* Turns the store's results (results[i] for plan->ops[i]: window.h's allowed + count,
 * as store_window_take reports them) into the answer and remembers
 * it in the session, so repeats get it without counting again. results NULL means the
 * store failed: out->store_failed, out->action NULL, nothing remembered. e must be the
 * engine that planned (-ESTALE otherwise). Returns 0, -EINVAL or -ESTALE. Borrowed
 * strings in out live as long as e and plan. */
int limits_finish(struct limits_engine *e, struct limits_session *s, const struct limits_plan *plan,
                  const struct window_result *results, struct limits_decision *out);

/* Writes the counter key value of rule r for req ("192.0.2.0/24", "alice|example.com")
 * without the rule name and tag: the part after "NAME:TAG:". Returns its length, 0 when
 * a key component is empty (the rule does not match), -ENOSPC if out is too small.
 * Exposed for tests and `postsurge check-config`. */
int limits_key_value(const struct limits_rule *r, const struct policy_request *req, char *out,
                     size_t outsz);

const char *limits_measure_name(enum limits_measure m);

/* Checks that in could be a key value of rule r, as an administrator types it from a
 * log line ("192.0.2.0/24", "alice@example.org", "alice|example.com", "#0123..."):
 * writes the canonical form (lowercase, %XX escapes uppercase) to out and returns its
 * length, or -EINVAL with a reason in why (wrong number of '|' parts, a character keys
 * never hold, an address or network that does not fit the rule's grouping), -ENOSPC. */
int limits_value_check(const struct limits_rule *r, const char *in, char *out, size_t outsz,
                       char *why, size_t whysz);

/* Writes "NAME:TAG:VALUE" for rule r and a key value (the stress counter's key when
 * stress is true). Returns its length or -ENOSPC. */
int limits_counter_key(const struct limits_rule *r, bool stress, const char *value, char *out,
                       size_t outsz);

/* True when every condition of rule r holds for req (also when r has none). */
bool limits_conds_hold(const struct limits_rule *r, const struct policy_request *req);

/* A window for people: "1h", "30s", "1500ms" (the largest unit that divides it). */
void limits_window_text(int64_t ms, char *out, size_t outsz);
/* The value part of a counter key ("RULE:TAG:VALUE", the value %-encoded) decoded as the
 * client sent it, for people to read (the caller escapes it for its medium). A key
 * without two ':' is taken whole. out always ends in NUL. */
void limits_key_text(const char *key, char *out, size_t outsz);
