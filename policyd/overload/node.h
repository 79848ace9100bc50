/* node: this node's place in the cluster. Publishes the node status the controller
 * builds (every tick, with a TTL of a few sample periods) to the store, keeps the last
 * view of every node's status for quorum, `postsurge status` and imbalance checks, writes
 * the event log (stress entered/left, overrides, failures, attack flags), and carries
 * the clients the attack detector (attack.h) flagged to the cluster. Has its own store connection.
 * Loop thread only. */
#pragma once

#include "config.h"
#include "maillog.h"

#include "store/store.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct node;

/* Wall clock in ms since the epoch (what nodes sharing a store agree on). */
int64_t node_wall_ms(void);

/* New node on loop, reading node_name (empty: the host name), store, store_key_prefix,
 * node_status_ttl, event_log_max and attack_* from cfg (copied). Opens its own store.
 * Returns NULL with a message in err (bad store URL) or on ENOMEM. */
struct node *node_new(uv_loop_t *loop, const struct config *cfg, char *err, size_t errlen);
/* Takes the attack_* settings of a reloaded configuration. */
void node_reload(struct node *n, const struct config *cfg);
/* Closes the store, frees n, then calls closed(arg) (may be NULL). NULL is a no-op. */
void node_close(struct node *n, void (*closed)(void *arg), void *arg);

/* This node's name (borrowed). */
const char *node_name(const struct node *n);
/* "memory" or "redis". */
const char *node_store_kind(const struct node *n);
/* The statistics and state of the node's store (status and events). */
void node_store_stats(const struct node *n, struct store_stats *st);

/* Publishes status (borrowed; this function adds "flagged", the clients this node
 * flagged: {"addr", "until", and "reason": "auth" for SASL failures}) and then refreshes
 * the view of every node. At most one publish and one refresh are in flight: a tick that
 * finds the previous one pending skips (logged). */
void node_publish(struct node *n, json_t *status);

/* A store operation's negative errno for a log line; an error reply (-EPROTO) is named
 * by the store's own log line, not called a protocol error. Static text. */
const char *node_store_error(int status);

/* The last view of the cluster: a JSON array of node status objects, this node first
 * (as last published), then every other live node, sorted by name. Borrowed; valid
 * until the next publish. Never NULL (an empty array before the first publish). */
json_t *node_cluster(const struct node *n);
/* Percent of live nodes (this one included, with self_local_stress) whose own signals
 * say stress ("local_stress"), or -1 when this node sees no peer. */
int node_cluster_stressed_pct(const struct node *n, bool self_local_stress);

/* Appends one event: logs "event KIND: TEXT" (warning level when warn) and appends
 * {"time", "node", "kind", "text"} plus the members of extra (stolen, may be NULL) to
 * the event log. Failures to store it are logged, rate-limited. */
void node_event(struct node *n, const char *kind, bool warn, json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Stores this node's override journal (JSON text, copied) in the store under
 * "journal:NAME" (no TTL), or deletes it when json is NULL. Never waits: the answer comes
 * later; failures are logged, rate-limited, and the put is sent again with the next
 * node_publish until the store confirms it; a stored journal is rewritten every 30 s
 * (a restarted Redis). The journal file stays what restores. */
void node_journal_put(struct node *n, const char *json);
/* True when the latest node_journal_put stored a journal and the store confirmed it. */
bool node_journal_in_store(const struct node *n);

/* Reads up to max newest events (newest first) with time >= since_ms. cb gets a JSON
 * array (borrowed) or NULL with status < 0. cb may run before this returns. Returns 0
 * or a negative errno (cb not called). */
typedef void (*node_events_cb)(void *arg, int status, json_t *events);
int node_events_read(struct node *n, int64_t since_ms, size_t max, node_events_cb cb, void *arg);

/* A copy of the last few events this node appended (newest first): {"time", "kind",
 * "text"} each; an empty array before the first. New reference; NULL on ENOMEM. */
json_t *node_recent_events(const struct node *n);

/* Number of clients flagged cluster-wide (for metrics). */
size_t node_flagged_count(const struct node *n);

/* Events appended by this node so far, per kind: calls fn for each kind (for metrics). */
void node_event_counts(const struct node *n,
                       void (*fn)(const char *kind, uint64_t count, void *arg), void *arg);
