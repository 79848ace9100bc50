/* ctlclient: the one client of the daemon's control socket (state_directory/control.sock,
 * one line out, one JSON object back, then the daemon closes), for `status`, `events`,
 * `stress`, `restore` and the report. Synchronous: for commands, never the daemon's loop. */
#pragma once

#include "config.h"

#include <jansson.h>

/* Largest answer read (an `events` answer with many entries). */
#define CTLCLIENT_REPLY_MAX (16u << 20)
/* Longest request line (the controller's CTL_MAX_LINE less the newline). */
#define CTLCLIENT_LINE_MAX 1023

/* Sends line ("status", "events SINCE_MS MAX", ...) and reads the daemon's answer within
 * timeout_ms in all. Returns 0 with *out (a new JSON object, whether or not it says
 * "ok"), -ENOENT or -ECONNREFUSED when no daemon listens, -ETIMEDOUT, -E2BIG (answer
 * over CTLCLIENT_REPLY_MAX or line too long), -EPROTO (not a JSON object), or another
 * negative errno. When connect() fails for another reason than no daemon listening, says
 * why on stderr (ctlclient_explain); prints nothing else. */
int ctlclient_request(const struct config *cfg, const char *line, int timeout_ms, json_t **out);

/* Prints on stderr why the control socket at path could not be used (err: the negative
 * errno connect() gave) and, when permissions refused it, who may use it: the socket's
 * (or its directory's) owner, group and mode. */
void ctlclient_explain(const char *path, int err);
