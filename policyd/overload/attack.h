/* attack: the attack detector (clients with many `User unknown` or other rejects, or SASL
 * authentication failures, in the mail log are flagged in the node status, for the
 * cluster) and the lookup the controller's decider makes. Loop thread only. */
#pragma once

#include "maillog.h"
#include "node.h"

#include <stdbool.h>

/* Feeds one parsed mail log line to the attack detector and the event log
 * (process-limit warnings). */
void attack_on_log(struct node *n, const struct maillog_record *rec);

/* The reasons (enum node_flag_kind bits: rejects, SASL failures) addr (a client_address)
 * is flagged for by this node or any live peer; 0 when it is not flagged or exempt, n is
 * NULL or closing. Cheap: a binary search in the set rebuilt at each refresh. */
unsigned attack_client_flags(const struct node *n, const char *addr);

/* The attack stress signal: when `User unknown` rejects or SASL failures across the
 * cluster (counted in the shared store) went over attack_stress_*_rate per minute within
 * the last minute, writes what and how many to buf (cap bytes, "" otherwise) and returns
 * true. For lib/stress's sample. */
bool attack_stress_signal(const struct node *n, char *buf, size_t cap);
