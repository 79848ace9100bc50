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

struct node_flag {
    char addr[64];
    int64_t until_ms;
};

struct node {
    uv_loop_t *loop;
    struct store *store;
    char *name;
    int64_t ttl_ms;
    int64_t event_max;
    int64_t unknown_limit, error_limit, window_ms, flag_ms;
    struct net_set *exempt;
    char *attack_action;

    json_t *cluster; /* array: self first, then peers by name */
    bool put_busy, get_busy;
    int64_t get_started;
    struct node_flag flags[NODE_MAX_FLAGS];
    size_t n_flags;
    char **merged; /* sorted flagged addresses of the cluster */
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
/* strcmp of two char * (qsort, bsearch). */
int node_cmp_str(const void *a, const void *b);
/* Frees the sorted set of flagged clients. */
void node_free_merged(struct node *n);
