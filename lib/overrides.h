/* overrides: the stress override profile, its validation against what Postfix knows,
 * the journal of what postsurge changed, and the exact postconf/postfix argv lists to
 * apply and undo it. The executor (policyd/postfix/confedit.c) runs postconf, reads files
 * and hands their text and bytes in; this module decides. Pure: no spawning, no I/O.
 *
 * Flow for the executor:
 *   start-up:  K = overrides_known_params_parse(`postconf -c DIR -d`)
 *              S = overrides_services_parse(`postconf -c DIR -F`)
 *              overrides_profile_parse(cfg->stress_main_cf, cfg->stress_master_cf, &p)
 *              overrides_profile_resolve(p, K, S, &r)            (reject bad config)
 *   enter:     read main.cf, master.cf bytes; run `postconf -c DIR -n` and `-P`;
 *              overrides_journal_new(r, DIR, bytes..., n_text, P_text, now, &j);
 *              run the postconf argv of overrides_apply_plan(j) on a scratch copy of
 *              the two files (-c SCRATCH), read the copies back,
 *              overrides_journal_set_expected(j, ...), write
 *              overrides_journal_serialize(j) (tmp + fsync + rename); only then put the
 *              new files in place (tmp + fsync + rename), run the reload, then `postconf
 *              -n`/`-P` and overrides_verify(j, ...).
 *   exit:      read the files, `postconf -n`/`-P`; overrides_restore_plan(j, ...);
 *              write the original bytes where write_main/write_master say (tmp + fsync
 *              + rename), run the per-setting argv on a scratch copy and put it in place
 *              the same way, reload, log each conflict; delete the journal.
 *   crash:     on start, overrides_journal_parse() the file left behind; when it is
 *              corrupt, change nothing and alert (never half-apply). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Profile syntax (stress_main_cf, stress_master_cf): entries separated by whitespace,
 * each "name=value" (main) or "service/type/name=value" (master). A value with spaces
 * is written in Postfix's own brace form: "{ name = value with spaces }". Braces inside
 * a value must balance. A master entry with service "*" stands for every public smtpd
 * service of that type (see overrides_profile_resolve). */

/* The default profile. Each entry tightens a setting that is NOT stress-adaptive in
 * Postfix 3.7 (smtpd_timeout, smtpd_hard_error_limit, smtpd_junk_command_limit, ...
 * already follow ${stress?...} and are left alone):
 * - smtpd_client_connection_count_limit=10 (default 50): one client may not hold more
 *   than 10 smtpd processes while they are scarce.
 * - smtpd_client_connection_rate_limit=30 (default 0, off): connections per client per
 *   anvil_rate_time_unit (60 s); excess gets a 421 and retries later, no mail is lost.
 * - smtpd_error_sleep_time=0s (default 1s): a process sleeping on a client's errors is a
 *   process no other client can use.
 * - smtpd_soft_error_limit=3 (default 10): errors before that delay would start.
 * - postscreen_post_queue_limit=50 (default $default_process_limit): clients that passed
 *   postscreen and wait for an smtpd get a quick "421 all server ports busy" beyond this
 *   instead of waiting into their own timeout.
 * anvil limits exempt $mynetworks (smtpd_client_event_limit_exceptions), so local
 * submitters are unaffected. Master: "-o stress=yes" on every public smtpd service,
 * which switches on Postfix's own stress-adaptive settings before master would (it
 * waits until all processes are busy, and never does for loopback-only services). */
#define OVERRIDES_DEFAULT_MAIN_CF                                                                  \
    "smtpd_client_connection_count_limit=10 smtpd_client_connection_rate_limit=30 "                \
    "smtpd_error_sleep_time=0s smtpd_soft_error_limit=3 postscreen_post_queue_limit=50"
#define OVERRIDES_DEFAULT_MASTER_CF "*/inet/stress=yes */pass/stress=yes"

/* Longest accepted value; Postfix values in profiles are short lists. */
#define OVERRIDES_MAX_VALUE 1024

enum overrides_file {
    OVERRIDES_MAIN = 0,   /* main.cf parameter, via postconf -e / -X */
    OVERRIDES_MASTER = 1, /* master.cf service parameter, via postconf -P / -PX */
};

struct overrides_entry {
    enum overrides_file file;
    char *service; /* MASTER only: "smtp", "127.0.0.1:2525", "*" before resolve */
    char *type;    /* MASTER only: inet unix unix-dgram fifo pass */
    char *name;
    char *value;
};

struct overrides_profile {
    struct overrides_entry *entries;
    size_t n;
};

/* Parses the two profile strings (either may be NULL or empty). Checks syntax and the
 * character set of names and values (no control characters, no quotes, backslashes or
 * shell metacharacters ; & | < > ` #, balanced braces, master values without spaces),
 * not whether Postfix knows the names. On success *out is new (caller frees). Returns
 * 0, -EINVAL (message in err) or -ENOMEM. err may be NULL. */
int overrides_profile_parse(const char *main_spec, const char *master_spec,
                            struct overrides_profile **out, char *err, size_t errlen);
void overrides_profile_free(struct overrides_profile *p);

/* The parameter names Postfix knows, from the text of `postconf -c DIR -d` ("name =
 * value" lines). Returns 0, -EINVAL (no names found) or -ENOMEM; *out new. */
struct overrides_params;
int overrides_known_params_parse(const char *text, size_t len, struct overrides_params **out);
bool overrides_known_param(const struct overrides_params *k, const char *name);
size_t overrides_known_params_count(const struct overrides_params *k);
void overrides_params_free(struct overrides_params *k);

/* master.cf services, from the text of `postconf -c DIR -F` ("svc/type/field = value"). */
struct overrides_service {
    char *service;       /* "smtp", "127.0.0.1:2525", "smtpd" */
    char *type;          /* "inet", "pass", ... */
    char *process_limit; /* "-" (default_process_limit) or a number */
    char *command;       /* "smtpd -o stress=yes" */
    bool public_smtpd;   /* an smtpd on inet or behind postscreen (pass): watch it */
    bool stress_auto;    /* and "*" entries apply to it: not submission/smtps, no explicit
                          * "-o stress=...", not an after-filter "-o content_filter=" */
};
struct overrides_services {
    struct overrides_service *v;
    size_t n;
};
/* Returns 0, -EINVAL (no services found) or -ENOMEM; *out new (caller frees). */
int overrides_services_parse(const char *text, size_t len, struct overrides_services **out);
void overrides_services_free(struct overrides_services *s);

/* Checks every entry against the settings stress profiles may change (lib/allowlist:
 * rate, count, time and error limits, "-o stress="; never paths, commands, maps or
 * network lists). Returns 0, or -EINVAL with the first refused entry named in err. */
int overrides_profile_allowed(const struct overrides_profile *p, char *err, size_t errlen);

/* Checks p against the allow-list (overrides_profile_allowed), every name against k
 * (main and master parameter names alike) and every
 * master service/type against s, and expands "*" entries to each stress_auto service of
 * that type (none is not an error). Duplicate settings are errors. *out is new. Returns
 * 0, -EINVAL (message in err) or -ENOMEM. */
int overrides_profile_resolve(const struct overrides_profile *p, const struct overrides_params *k,
                              const struct overrides_services *s, struct overrides_profile **out,
                              char *err, size_t errlen);

/* One touched setting and its exact prior state. */
struct overrides_setting {
    enum overrides_file file;
    char *service; /* MASTER only */
    char *type;    /* MASTER only */
    char *name;
    char *value; /* what postsurge sets */
    char *prior; /* explicit value before, NULL when it was not set */
};

struct overrides_blob {
    char *data; /* NULL with size 0 when absent */
    size_t size;
};

/* The journal: what to undo. Written before any change, updated after. */
struct overrides_journal {
    char *config_dir;
    int64_t created_ms;
    struct overrides_setting *settings;
    size_t n;
    struct overrides_blob main_original, master_original;
    bool have_expected; /* the files as postsurge left them are recorded */
    struct overrides_blob main_expected, master_expected;
};

/* Builds the journal for applying resolved profile r to the instance in config_dir
 * (absolute path). Priors come from the full output of `postconf -c DIR -n` and
 * `postconf -c DIR -P`; main_cf/master_cf are the files' bytes (copied). Returns 0,
 * -EINVAL or -ENOMEM; *out new. */
int overrides_journal_new(const struct overrides_profile *r, const char *config_dir,
                          const char *main_cf, size_t main_len, const char *master_cf,
                          size_t master_len, const char *postconf_n, size_t n_len,
                          const char *postconf_P, size_t P_len, int64_t now_ms,
                          struct overrides_journal **out);
/* Records the files' bytes after the apply plan ran (copied). 0 or -ENOMEM. */
int overrides_journal_set_expected(struct overrides_journal *j, const char *main_cf,
                                   size_t main_len, const char *master_cf, size_t master_len);
void overrides_journal_free(struct overrides_journal *j);

/* JSON text of the journal (file bytes base64 with size and FNV-1a checksum). *out is
 * new, NUL-terminated, *len without the NUL. 0 or -ENOMEM. */
int overrides_journal_serialize(const struct overrides_journal *j, char **out, size_t *len);
/* Strict parse: unknown or missing keys, wrong types, bad base64, a size or checksum
 * mismatch, unsafe names or values, trailing bytes or a truncated text all give -EINVAL
 * with a message, and nothing else. 0 or -EINVAL or -ENOMEM; *out new. */
int overrides_journal_parse(const char *buf, size_t len, struct overrides_journal **out, char *err,
                            size_t errlen);

/* argv lists, each NULL-terminated: argv[0] is "postconf" or "postfix" (the caller
 * resolves the path, e.g. from command_directory), run without a shell. */
struct overrides_cmd {
    char **argv;
    size_t argc;
};
struct overrides_plan {
    struct overrides_cmd *cmds;
    size_t n;
};
void overrides_plan_free(struct overrides_plan *p);
/* Renders argv as one line for logs and dry runs: words with characters outside a
 * safe set are single-quoted. *out new. 0 or -ENOMEM. */
int overrides_cmd_format(const struct overrides_cmd *c, char **out);

/* Apply: "postconf -c DIR -e n=v ...", "postconf -c DIR -P s/t/n=v ...", then
 * "postfix -c DIR reload"; settings whose prior already equals the value are skipped;
 * an empty plan (n == 0) when nothing changes. *out new. 0 or -ENOMEM. */
int overrides_apply_plan(const struct overrides_journal *j, struct overrides_plan **out);

/* Checks that every setting reads back as postsurge's value in the current `postconf
 * -n` and `-P` output. 0, or -EIO with the first mismatch in err. */
int overrides_verify(const struct overrides_journal *j, const char *postconf_n, size_t n_len,
                     const char *postconf_P, size_t P_len, char *err, size_t errlen);

/* A setting the restore leaves alone. current NULL means not set. */
struct overrides_conflict {
    char *setting; /* "name" or "service/type/name" */
    char *prior;
    char *ours;
    char *current;
    const char *why; /* static text */
};

struct overrides_restore {
    /* Write the journal's original bytes over the file (tmp + fsync + rename): the file
     * still holds exactly what postsurge left. Borrowed from the journal. */
    bool write_main, write_master;
    /* The file holds its original bytes already (a restore that was interrupted after it
     * wrote them, or an apply that never got as far): nothing to do for it. */
    bool main_is_original, master_is_original;
    /* Per-setting commands for a file someone else edited (or, after a crash in the
     * middle of applying, whose expected bytes are unknown), then one reload. */
    struct overrides_plan plan;
    struct overrides_conflict *conflicts;
    size_t n_conflicts;
};

/* Decides how to undo journal j given the current file bytes and the current full
 * `postconf -n` and `-P` output. Per file: bytes equal to the original: nothing; equal
 * to the expected bytes: write the original; otherwise per setting: a setting whose
 * current value is postsurge's gets its prior back (-e / -X / -P / -PX), one that is
 * back at its prior is left, and any other is a conflict (the administrator's value
 * wins). The plan always ends with a reload (the running Postfix may still have the
 * stress settings). *out new. 0 or -ENOMEM. */
int overrides_restore_plan(const struct overrides_journal *j, const char *main_cf, size_t main_len,
                           const char *master_cf, size_t master_len, const char *postconf_n,
                           size_t n_len, const char *postconf_P, size_t P_len,
                           struct overrides_restore **out);
void overrides_restore_free(struct overrides_restore *r);
