/* privsep: least privilege for `postsurge serve`. Started as root, serve forks a small
 * privileged helper before anything listens, binds its sockets, then drops to the
 * unprivileged `user`/`group` for good. The helper, connected over a SOCK_SEQPACKET
 * socketpair, does only the journaled override operations (apply a profile, restore
 * from the journal, with their postconf/postfix runs and read-back verification) and
 * the read-only /proc scan of the monitor; it re-validates every request (lib/privmsg),
 * runs one at a time, never execs a shell, and exits when the socketpair closes. The
 * daemon's side talks to it from the loop through a uv_poll: it never waits. */
#pragma once

#include "config.h"
#include "postfix/monitor.h"
#include "privmsg.h"

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

enum privsep_mode {
    PRIVSEP_NONE = 0,     /* privsep_init() not called (CLI tools, tests) */
    PRIVSEP_HELPER,       /* started as root, runs as `user`; the helper does overrides */
    PRIVSEP_ROOT,         /* `user` is root: no drop, overrides in process (warned) */
    PRIVSEP_UNPRIVILEGED, /* started as non-root: no helper, overrides unavailable */
};

/* serve start-up, before the event loop exists and before any socket is opened. As
 * root: looks up user and group (unknown: error), prepares state_directory (created
 * 0750 and owned by the user when missing; a root-owned one is given to the user;
 * group/other write and other access bits removed), and forks the helper with the
 * Postfix config directory, commands and state directory of cfg fixed for its life.
 * Not root: mode PRIVSEP_UNPRIVILEGED, nothing forked. Returns 0, or a negative errno
 * with a message in err (the caller dies). */
int privsep_init(const struct config *cfg, char *err, size_t errlen);

/* After every listening socket is bound: initgroups/setgroups, setgid, setuid to the
 * user, then checks that root cannot be regained. No-op unless mode is PRIVSEP_HELPER.
 * Returns 0 or a negative errno with a message in err (the caller dies). */
int privsep_drop(char *err, size_t errlen);

enum privsep_mode privsep_mode(void);
/* "helper", "root", "unprivileged", "none": for status and logs. */
const char *privsep_mode_name(enum privsep_mode m);
/* The helper's PID (0 when there is none). */
pid_t privsep_helper_pid(void);

/* ---- the daemon's side (loop thread) ---- */

struct privsep;

/* Takes over the helper's socket for loop. NULL when mode is not PRIVSEP_HELPER or on
 * ENOMEM. */
struct privsep *privsep_client_new(uv_loop_t *loop);

/* A JSON reply (borrowed for the call: "ok", "error", ...); status 0, or a negative
 * errno when there is no reply: -EPIPE (the helper is gone), -ECANCELED (closing). */
typedef void (*privsep_reply_cb)(void *arg, int status, json_t *reply);

/* Queues op (PRIVMSG_JOURNAL, PRIVMSG_APPLY, PRIVMSG_RESTORE) with payload (copied; a
 * JSON object text, "{}" for J and R). cb runs later, never from inside this call.
 * Returns 0, or -EPIPE/-ESHUTDOWN/-EMSGSIZE/-ENOMEM and never calls cb. */
int privsep_call(struct privsep *p, enum privmsg_op op, const char *payload, size_t len,
                 privsep_reply_cb cb, void *arg);

/* A monitor_scanner start function: arg is the struct privsep. The scan runs in the
 * helper (root can read other users' /proc/PID/fd); sc is sent as bytes. */
int privsep_scan_start(void *arg, struct monitor_scan *sc, monitor_scan_done_fn done,
                       void *done_arg);

/* True while the helper answers. */
bool privsep_alive(const struct privsep *p);

/* Fails every pending request (callbacks with -ECANCELED, from inside this call),
 * closes the socket (the helper then exits) and frees p once the handle is closed.
 * NULL is a no-op. */
void privsep_close(struct privsep *p);
