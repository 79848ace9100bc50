/* Fuzz target for lib/queue.c: the input is fed as postqueue output, split at a point the
 * first byte chooses (so chunk boundaries inside lines are explored), with small caps on
 * line length, domains and reasons so the overflow paths are reached. Every result read
 * back is checked against the counts. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "queue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct queue_limits lim = {
        .now = 1700000000, .max_line = 4096, .max_domains = 8, .max_reasons = 3, .max_dsn = 4};
    struct queue_stats *qs = queue_stats_new(&lim);
    if (!qs)
        return 0;
    size_t cut = size ? data[0] % (size + 1) : 0;
    queue_stats_feed(qs, (const char *)data, cut);
    queue_stats_feed(qs, (const char *)data + cut, size - cut);
    queue_stats_finish(qs);

    uint64_t recipients = 0;
    for (int q = 0; q < QUEUE_COUNT; q++)
        recipients += queue_stats_totals(qs, (enum queue_name)q)->recipients;
    const struct queue_domain **doms;
    size_t n;
    if (queue_stats_domains(qs, &doms, &n) == 0) {
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++) {
            const struct queue_reason *top[8];
            size_t k = queue_domain_top_reasons(doms[i], top, 8);
            uint64_t rs = 0;
            for (size_t j = 0; j < k; j++)
                rs += top[j]->count;
            if (rs != doms[i]->reasons_total || doms[i]->n_reasons > lim.max_reasons + 1)
                abort();
            sum += doms[i]->recipients;
        }
        if (sum != recipients || n > lim.max_domains + 1)
            abort();
        free(doms);
    }
    const struct queue_reason *dsns;
    if (queue_stats_dsns(qs, &dsns) > lim.max_dsn + 1)
        abort();
    queue_stats_free(qs);
    return 0;
}
