/* queue_senders: the queue by sender, as `qshape -s` shows it: messages per sender domain
 * and queue, with the null sender (bounces; postqueue -j writes it as "MAILER-DAEMON") as
 * a row of its own, so backscatter (bounces to forged senders piling up in the deferred
 * queue, QSHAPE_README) shows. Part of the queue module: queue.c feeds it each record.
 * Bounded like the recipient domains: past max rows, new senders count as "(other)". */
#pragma once

#include "queue.h"

#include <stddef.h>
#include <stdint.h>

/* The null sender's row. */
#define QUEUE_NULL_SENDER "MAILER-DAEMON"

/* One sender domain (lowercased), QUEUE_NULL_SENDER, QUEUE_LOCAL_DOMAIN (no '@') or
 * QUEUE_OTHER_DOMAIN. Read-only for callers. */
struct queue_sender {
    char *domain;
    uint64_t messages; /* all queues */
    uint64_t queue_messages[QUEUE_COUNT];
};

struct queue_senders;

/* A new, empty table of at most max rows (plus "(other)"). NULL on ENOMEM. */
struct queue_senders *queue_senders_new(size_t max);
/* NULL is a no-op. */
void queue_senders_free(struct queue_senders *s);
/* The row of key (a domain as queue.c derives it, or QUEUE_NULL_SENDER), created with zero
 * counts when new; past the bound the "(other)" row. NULL on ENOMEM. */
struct queue_sender *queue_senders_get(struct queue_senders *s, const char *key);
/* The rows sorted by messages descending, then domain: a new array of borrowed pointers
 * in *out (free() the array) and its length in *n. 0 or -ENOMEM. */
int queue_senders_sorted(const struct queue_senders *s, const struct queue_sender ***out,
                         size_t *n);
