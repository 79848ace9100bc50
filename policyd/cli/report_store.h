/* report_store: the report's synchronous access to the store's Redis (one Redis, the
 * master the sentinels name, or a Redis Cluster, each command routed to the master of
 * its key's slot): the cluster's nodes and events as the daemon writes them
 * (store/redis_keys.h) and the report's own keys (the baselines). */
#pragma once

#include <stdint.h>

#include <jansson.h>

#include "config.h"

struct report_store;

/* Connects to the store of cfg (each command bounded by a timeout). NULL for a memory
 * store (err empty) or on trouble (why in err). Free with report_store_free. */
struct report_store *report_store_open(const struct config *cfg, char *err, size_t errlen);
void report_store_free(struct report_store *rs);

/* Reads the live nodes (sorted set "nodes" scored by expiry, "node:NAME" = "UPDATED_MS
 * JSON", after prefix) into *status (created when NULL) unless it has "nodes" already,
 * and, when events is not NULL, the event log (list "events", newest first) into *events
 * (a new array; left NULL when it cannot be read). Read errors leave things as they are.
 * Returns 0 or -ENOMEM. */
int report_store_cluster_view(struct report_store *rs, const char *prefix, int64_t now_ms,
                              json_t **status, json_t **events);

/* The JSON value saved at key (new reference), or NULL when absent or unreadable. */
json_t *report_store_load(struct report_store *rs, const char *key);

/* Saves j (borrowed) at key, expiring in ttl_s seconds. 0, or -EIO with why in err. */
int report_store_save(struct report_store *rs, const char *key, const json_t *j, int64_t ttl_s,
                      char *err, size_t errlen);
