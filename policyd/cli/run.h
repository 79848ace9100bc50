/* run: a command run synchronously to its end on a private loop (util/spawn), for the
 * report (postconf, postqueue -j streamed into lib/queue). For CLI commands only. */
#pragma once

#include "queue.h"

#include <stdbool.h>
#include <stdint.h>

struct run {
    struct queue_stats *qs; /* non-NULL: stream stdout into it */
    int feed_rc;
    bool done;
    int exit_status, term_signal;
    bool timed_out;
    char out[1024]; /* buffered stdout, first line(s) */
    char err[512];  /* stderr, first line */
};

/* Runs argv to its end. Returns 0 (see r for the outcome) or a negative errno when it
 * could not be started. */
int run_command(const char *const *argv, uint64_t timeout_ms, struct run *r);
/* "timed out", "killed by signal N" or "exit status N: first stderr line". */
void run_describe(const struct run *r, char *buf, size_t size);
