/* cluster_map: the pure parts of Redis Cluster routing that the cluster backend
 * (redis_cluster.c) and the report (cli/report_store.c) share: an entry of CLUSTER SLOTS
 * and a MOVED or ASK redirect, read from hiredis replies. No I/O. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct redisReply;

/* One entry of a CLUSTER SLOTS reply: slots from..to served by the master at *ip (borrowed
 * from e; empty or "?" means the node asked) and *port. False when e is malformed. */
bool cluster_map_slots_entry(const struct redisReply *e, unsigned *from, unsigned *to,
                             const char **ip, int *port);

/* Parses "MOVED 3999 127.0.0.1:6381" (or ASK): slot, ip (iplen bytes) and port. */
bool cluster_map_parse_redirect(const char *str, unsigned *slot, char *ip, size_t iplen, int *port);
