/* redis_keys: the Redis key layout of the cluster data, in one place for the writer
 * (redis_cluster_ops.c) and the reader (the report, cli/cmd_report.c). Every key starts
 * with store_key_prefix (PREFIX below):
 *   PREFIXnodes         sorted set of node names, scored by their status entry's expiry
 *                       time in ms (readers ask for scores >= now; stale ones are pruned)
 *   PREFIXnode:NAME     the node's status: "UPDATED_MS JSON", expiring with PX
 *   PREFIXevents        capped list of event JSON objects, newest first (LPUSH + LTRIM)
 *   PREFIXjournal:NAME  the node's override journal (JSON), no TTL
 *   PREFIXoverrides     hash of the run-time overrides of the rate limits: fields
 *                       "RULE\tVALUE" -> "COUNT EXPIRES_MS" (lib/limits_rt.h) and
 *                       "#version", raised by every write; no TTL
 * The counters of the rate limits use PREFIX + the rule's key (lib/limits). */
#pragma once

#define REDIS_KEY_NODES "nodes"
#define REDIS_KEY_NODE "node:" /* + NAME */
#define REDIS_KEY_EVENTS "events"
#define REDIS_KEY_JOURNAL "journal:" /* + NAME */
#define REDIS_KEY_OVERRIDES "overrides"

/* The most node names a reader takes from PREFIXnodes. */
#define REDIS_NODES_MAX 1024
