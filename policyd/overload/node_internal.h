/* node_internal: struct node, shared by node.c (status, cluster view, events, journal
 * copy) and attack.c (the attack detector that flags clients into it). Not for other
 * files: they use node.h. */
#pragma once

#include "node.h"

#include "util/log.h"
#include "net.h"
#include "store/store.h"

/* Clients this node flags at once; the oldest flag goes first beyond it. */
#define NODE_MAX_FLAGS 1024
/* Clients flagged cluster-wide that the decider looks up. */
#define NODE_MAX_MERGED 8192
/* Events scanned for `postsurge events` (newest first). */
#define NODE_EVENTS_SCAN 10000
/* Events of this node kept in memory for its status (the status page). */
#define NODE_RECENT_EVENTS 8

/* What a client is flagged for: rejects in the mail log (acted on while stressed) or SASL
 * authentication failures (acted on as attack_auth_mode says). A bit set. */
enum node_flag_kind {
    NODE_FLAG_REJECTS = 1,
    NODE_FLAG_AUTH = 2,
};

/* attack_auth_mode: when a client flagged for SASL failures is answered. */
enum node_auth_mode {
    NODE_AUTH_ALWAYS,
    NODE_AUTH_STRESS,
    NODE_AUTH_OFF,
};

struct node_flag {
    char addr[64];
    int64_t until_ms;
    unsigned kind; /* one enum node_flag_kind */
};

/* One client flagged somewhere in the cluster, with every reason it is flagged for. */
struct node_merged {
    char *addr;
    unsigned kinds; /* enum node_flag_kind bits */
};

struct node {
    uv_loop_t *loop;
    struct store *store;
    char *name;
    int64_t ttl_ms;
    int64_t event_max;
    int64_t unknown_limit, error_limit, window_ms, flag_ms;
    int64_t auth_limit, auth_window_ms;
    enum node_auth_mode auth_mode;
    /* The attack stress signal: per kind (0 `User unknown`, 1 SASL failures) the rate per
     * minute across the cluster (0 = off), and until when (wall ms) the last line that
     * reached it holds the signal. */
    int64_t stress_rate[2], rate_hot_until[2];
    struct net_set *exempt;
    char *attack_action;

    json_t *cluster; /* array: self first, then peers by name */
    bool put_busy, get_busy;
    int64_t get_started;
    struct node_flag flags[NODE_MAX_FLAGS];
    size_t n_flags;
    struct node_merged *merged; /* the cluster's flagged clients, sorted by address */
    size_t n_merged;
    int pending_takes;
    bool closing;
    void (*closed)(void *arg);
    void *closed_arg;
    struct log_ratelimit rl_put, rl_get, rl_event, rl_take, rl_journal;
    /* The journal copy in the store: puts are numbered, only the latest one's answer
     * counts (a SET answered after a later DEL must not say "in store"). */
    uint64_t journal_seq;
    bool journal_in_store;
    /* What the store should hold (the text, or nothing when NULL), puts in flight,
     * whether the latest failed, and when the latest was sent (node_mono). */
    char *journal_text;
    bool journal_failed;
    unsigned journal_inflight;
    uint64_t journal_sent_ms;
    struct {
        char kind[32];
        uint64_t count;
    } kinds[32];
    size_t n_kinds;
    json_t *recent; /* the last NODE_RECENT_EVENTS events this node appended, newest first */
};

/* uv_now() of the node's loop. */
uint64_t node_mono(const struct node *n);
/* Compares two struct node_merged by address (qsort, bsearch). */
int node_cmp_merged(const void *a, const void *b);
/* Frees the sorted set of flagged clients. */
void node_free_merged(struct node *n);
/* Adds kind (enum node_flag_kind) to addr in the sorted set, inserting addr when new.
 * Nothing changes on ENOMEM or when the set holds NODE_MAX_MERGED clients. */
void node_merged_add(struct node *n, const char *addr, unsigned kind);
