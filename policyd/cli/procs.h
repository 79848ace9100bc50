/* procs: what /proc says about the local Postfix and the daemon (see procs.c). */
#pragma once

#include <stdbool.h>

/* Whether master (from queue_dir/pid/master.pid) and its qmgr child run: *master_up and
 * *qmgr_up become 1 or 0, or -1 when it cannot be told (no queue_dir). */
void procs_postfix(const char *queue_dir, int *master_up, int *qmgr_up);
/* A `postsurge ... serve` process using config_path. */
bool procs_daemon_running(const char *config_path);
