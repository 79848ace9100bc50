/* privmsg: the messages between the unprivileged daemon and its privileged helper
 * (policyd/privsep.c) over a SOCK_SEQPACKET socketpair: one op byte then a payload, at
 * most PRIVMSG_MAX bytes. This module frames, encodes and, on the helper's side,
 * re-validates requests (never trusting the unprivileged side): the override profile
 * of an apply request must parse and resolve with lib/overrides against what the
 * helper's own `postconf -d` and `-F` say. Pure: no I/O. */
#pragma once

#include "overrides.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Largest message either side sends or accepts (fits the default AF_UNIX send buffer). */
#define PRIVMSG_MAX (64 * 1024)
/* Most settings one apply may touch (keeps replies under PRIVMSG_MAX). */
#define PRIVMSG_MAX_SETTINGS 48

enum privmsg_op {
    PRIVMSG_JOURNAL = 'J', /* request: which journal is on disk? payload {} */
    PRIVMSG_APPLY = 'A',   /* request: journal then apply a profile; payload JSON */
    PRIVMSG_RESTORE = 'R', /* request: restore from the journal; payload {} */
    PRIVMSG_SAMPLE = 'S',  /* request: read-only /proc scan; payload binary (privsep.c) */
    PRIVMSG_REPLY = 'r',   /* reply to J, A, R: payload a JSON object with "ok" */
    PRIVMSG_SAMPLE_REPLY = 's',
};

/* Splits a received message: *op is a known op, *payload points into buf (borrowed),
 * *plen its size. Returns 0, or -EMSGSIZE (empty or over PRIVMSG_MAX) or -EBADMSG
 * (unknown op). */
int privmsg_frame_parse(const void *buf, size_t len, enum privmsg_op *op, const char **payload,
                        size_t *plen);

/* Frames op + payload into a new buffer (*out, caller frees; *len its size). Returns 0,
 * -EMSGSIZE (over PRIVMSG_MAX) or -ENOMEM. */
int privmsg_frame(enum privmsg_op op, const void *payload, size_t plen, char **out, size_t *len);

/* Frames op + a JSON object (compact). Same returns as privmsg_frame(); -EINVAL when o
 * cannot be dumped. o is borrowed. */
int privmsg_frame_json(enum privmsg_op op, const json_t *o, char **out, size_t *len);

/* Apply request payload: {"main_cf": spec, "master_cf": spec, "now_ms": N}. The specs
 * are stress_main_cf and stress_master_cf. *out new JSON text (caller frees). 0 or
 * -ENOMEM. */
int privmsg_apply_encode(const char *main_spec, const char *master_spec, int64_t now_ms, char **out,
                         size_t *len);

/* Helper side: strictly decodes an apply payload (exactly those keys, strings and an
 * integer) and validates the profile: overrides_profile_parse, then
 * overrides_profile_resolve against k and s (the helper's own postconf -d and -F), and
 * at most PRIVMSG_MAX_SETTINGS settings. On success *resolved is new (caller frees) and
 * *now_ms set. Returns 0, -EINVAL with a message in err, or -ENOMEM. */
int privmsg_apply_decode(const char *payload, size_t plen, const struct overrides_params *k,
                         const struct overrides_services *s, struct overrides_profile **resolved,
                         int64_t *now_ms, char *err, size_t errlen);

/* The settings of a journal as a JSON array of objects {file: "main"|"master", service,
 * type, name, value} (service and type only for master). New reference, NULL on ENOMEM. */
json_t *privmsg_settings_json(const struct overrides_journal *j);

/* Unprivileged side: a journal holding only the settings listed in a (from
 * privmsg_settings_json; types and lengths strictly checked) and config_dir (copied): no file
 * bytes. What the controller keeps for status while the helper owns the real journal. *out new.
 * Returns 0, -EINVAL or -ENOMEM. */
int privmsg_settings_decode(const json_t *a, const char *config_dir,
                            struct overrides_journal **out);
