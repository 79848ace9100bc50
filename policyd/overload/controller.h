/* controller: the overload loop of `postsurge serve`. Monitor samples go through the
 * stress state machine (lib/stress); on a transition the controller applies or restores
 * the override profile (lib/overrides) with postconf/postfix runs (spawn.c), journaling
 * the exact prior state to state_directory before anything changes. It publishes the
 * node status and events (node.c), answers the control socket that `postsurge status`,
 * `events`, `stress enter|exit` and `restore` talk to, and hangs up on attack-flagged
 * clients during stress (a thin decider in front of the engine's). Loop thread only. */
#pragma once

#include "config.h"
#include "server/server.h"

#include <stdbool.h>

struct engine;

struct controller;

/* Name of the control socket inside state_directory (mode 0600, owner only). Protocol:
 * the client sends one line ("status", "events SINCE_MS MAX", "stress enter",
 * "stress exit", "stress auto", "restore"); the daemon answers one JSON object and
 * closes. */
#define CONTROLLER_SOCKET_NAME "control.sock"
/* Name of the override journal inside state_directory. */
#define CONTROLLER_JOURNAL_NAME "journal.json"

/* New controller for srv (reads srv->cfg; registers on_reload/on_stop hooks). engine
 * (borrowed, may be NULL) gets the node's stress state (engine_set_node_stressed). Nothing
 * runs until controller_start(). Returns 0 and *out, or a negative errno with a message
 * in err (bad store URL, unusable state_directory). */
int controller_new(struct server *srv, struct engine *engine, struct controller **out, char *err,
                   size_t errlen);
/* Opens the control socket, installs the attack decider in front of the current one
 * (call after the engine installed its decider), starts the monitor (when monitor =
 * yes), learns Postfix's parameters and services (postconf -d / -F), then restores a
 * journal a crash left behind (unless the node turns out to be in stress). Returns 0 or
 * a negative errno. */
int controller_start(struct controller *c);
/* Frees the controller after the loop has finished (after server_stop and uv_run).
 * NULL is a no-op. */
void controller_free(struct controller *c);

/* `postsurge restore` without a running daemon: restores the journal in cfg's
 * state_directory on a private loop (synchronous for the caller). Returns 0 (restored,
 * or nothing to restore: *nothing set), or a negative errno after printing why. */
int controller_restore_offline(const struct config *cfg, bool *nothing);
