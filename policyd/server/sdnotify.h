/* sdnotify: tells a supervisor (systemd Type=notify) how `serve` is doing, without
 * libsystemd: one datagram per state change to $NOTIFY_SOCKET (a path, or an abstract
 * name written with a leading '@'). READY=1 once the listeners are up, RELOADING=1 and
 * READY=1 around SIGHUP, STOPPING=1 on shutdown, and WATCHDOG=1 from a loop timer at half
 * of $WATCHDOG_USEC, so a stuck loop gets the service restarted. Loop thread only. */
#pragma once

#include <stdbool.h>

struct server;

/* Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, removes them from the environment
 * (commands that serve spawns must not talk to the supervisor in our name) and opens the
 * socket. Call once, early in `serve`, before other threads exist (unsetenv). Returns 1
 * when notifications are on, 0 when not started by a notify supervisor, or a negative
 * errno (bad NOTIFY_SOCKET, no socket: logged; serve goes on without notifications). */
int sdnotify_init(void);

/* Whether sdnotify_init() found a usable NOTIFY_SOCKET. */
bool sdnotify_enabled(void);

/* Sends one notification: state is newline-separated "NAME=VALUE" lines
 * ("READY=1\nSTATUS=serving"). Never blocks. Returns 1 if sent, 0 if notifications are
 * off, or a negative errno (logged by the caller if it cares). */
int sdnotify_send(const char *state);

/* For main.c right after server_new(): registers a server hook that sends RELOADING=1
 * and READY=1 around SIGHUP reloads (READY's STATUS says whether the reload failed, from
 * srv->stats.reload_failures), STOPPING=1 when shutdown begins, and closes the watchdog
 * timer when the server stops. Returns 0 (also when notifications are off) or a negative
 * errno (no hook slot: logged). */
int sdnotify_attach(struct server *srv);

/* For main.c once server_start() succeeded: sends READY=1 with a STATUS naming the
 * listeners and starts the watchdog timer on srv->loop if $WATCHDOG_USEC asked for one
 * (and $WATCHDOG_PID is unset or ours). Returns 0. */
int sdnotify_serve(struct server *srv);

/* Microseconds between watchdog pings, 0 when there is no watchdog (for tests/logs). */
unsigned long long sdnotify_watchdog_interval_usec(void);
