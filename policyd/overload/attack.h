/* attack: the attack detector (clients with many `User unknown` or other rejects in the
 * mail log are flagged in the node status, for the cluster) and the lookup the
 * controller's decider makes. Loop thread only. */
#pragma once

#include "maillog.h"
#include "node.h"

#include <stdbool.h>

/* Feeds one parsed mail log line to the attack detector and the event log
 * (process-limit warnings). */
void attack_on_log(struct node *n, const struct maillog_record *rec);

/* True when addr (a client_address) is flagged by this node or any live peer. Cheap:
 * a hash lookup in the set rebuilt at each refresh. false when n is NULL or closing. */
bool attack_client_flagged(const struct node *n, const char *addr);
