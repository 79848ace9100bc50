/* confedit: the journaled edit of a Postfix instance, the one executor of the stress
 * overrides. Synchronous: the privileged helper (privsep/) runs it as root, and the
 * controller (overload/jobs.c) runs it in libuv's thread pool when no helper is needed
 * (user = root, stress_dry_run, `postsurge restore` without a daemon).
 *
 * Apply is a transaction: main.cf and master.cf are copied into a scratch configuration
 * directory (mkdtemp, 0700, in TMPDIR or /tmp), postconf -e/-P edit the copies, the
 * journal is written (fsync) with both the original bytes and the new ones, and only then
 * are the new files renamed into place (temp file + fsync + rename, per file), Postfix
 * reloaded and the result read back with postconf -n/-P. At every moment each file on
 * disk is either its original or its new bytes, and from the first change on the journal
 * holds both. Restore, per file: original bytes: nothing; the new bytes: the original
 * goes back (atomic); anything else (an administrator edited it): setting by setting on
 * a scratch copy, the administrator's values win. The journal goes only after the reload.
 *
 * Each operation answers a JSON object (the privileged helper's reply, lib/privmsg):
 * "ok", "error", "commands", "failures" and what the operation adds (see below). One
 * operation at a time per instance; operations on one state_directory are serialised by
 * an flock on it, so a helper that outlived its daemon finishes before a new one reads
 * the journal. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct confedit;

/* The instance: its config directory, the state_directory holding journal.json, the
 * postconf and postfix commands (names are resolved in PATH now) and the per-command
 * timeout. NULL on ENOMEM. */
struct confedit *confedit_new(const char *config_dir, const char *state_dir,
                              const char *postconf_cmd, const char *postfix_cmd,
                              uint64_t timeout_ms);
void confedit_free(struct confedit *ce);

/* Log lines of an operation are written at once (false, the default: the helper) or kept
 * (true: a thread-pool thread must not log) until confedit_flush_log() writes them from
 * the loop thread. */
void confedit_defer_log(struct confedit *ce, bool defer);
void confedit_flush_log(struct confedit *ce);

/* guard, when set, is asked once the operation holds the state_directory lock, before it
 * changes anything: false means the requester is gone (a daemon killed after it sent the
 * request), and the operation is not started, so a new daemon's journal check can never
 * come before an operation of the old one that then changes Postfix. */
void confedit_set_guard(struct confedit *ce, bool (*guard)(void *arg), void *arg);

/* J: removes what a crash left (scratch directories of this state_directory, temporary
 * files beside main.cf/master.cf), then reads the journal: "found", and "settings"
 * (lib/privmsg's list) when one is there. As root only a journal root wrote is trusted
 * (regular file, owner, one link, no group/other write). */
json_t *confedit_journal(struct confedit *ce);

/* A: payload is lib/privmsg's apply request (the profile strings), validated against this
 * instance's own postconf -d/-F. Adds "changed", "journaled", "fail" ("journal",
 * "rejected", "command", "verify" or ""), "settings" once journaled, "nothing" when every
 * setting is in force already, "elapsed_ms", and "journal_text" (the journal as written,
 * left out as "journal_text_omitted" when longer than max_text). dry_run: stops before
 * anything is written, logs the commands it would run and adds "dry_run" and
 * "settings". */
json_t *confedit_apply(struct confedit *ce, const char *payload, size_t plen, bool dry_run,
                       size_t max_text);

/* R: undoes the journal (see above); adds "nothing" (no journal), "conflicts",
 * "write_main", "write_master", "settings", "elapsed_ms". */
json_t *confedit_restore(struct confedit *ce);
