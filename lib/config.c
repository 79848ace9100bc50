/* config: the settings of postsurge.cf. One table below names every setting with its
 * type, default, bounds and meaning; parsing (config_parse.c), defaults, comparison,
 * printing and the reference (config_ref.c) are all driven by it. Also the store URL
 * syntax. Pure: bytes in, struct out; the only I/O is in config_parse.c's file read and
 * config_ref.c's writers. */
#include "config.h"
#include "config_impl.h"
#include "net.h"
#include "overrides.h"
#include "textutil.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* ---- allocation (hookable so tests can fail the Nth allocation) ---- */

static void *(*cf_malloc_fn)(size_t) = malloc;
static void *(*cf_realloc_fn)(void *, size_t) = realloc;
static void (*cf_free_fn)(void *) = free;

void config_set_alloc_funcs(void *(*malloc_fn)(size_t), void *(*realloc_fn)(void *, size_t),
                            void (*free_fn)(void *))
{
    cf_malloc_fn = malloc_fn ? malloc_fn : malloc;
    cf_realloc_fn = realloc_fn ? realloc_fn : realloc;
    cf_free_fn = free_fn ? free_fn : free;
}

void *cf_malloc(size_t n)
{
    return cf_malloc_fn(n ? n : 1);
}

void *cf_realloc(void *p, size_t n)
{
    return cf_realloc_fn(p, n ? n : 1);
}

void cf_free(void *p)
{
    if (p)
        cf_free_fn(p);
}

void *cf_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = cf_malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

char *cf_strndup(const char *s, size_t n)
{
    char *p = cf_malloc(n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *cf_strdup(const char *s)
{
    return cf_strndup(s, strlen(s));
}

/* ---- the table ---- */

static cf_check_fn check_listen, check_listen_optional, check_action, check_word,
    check_word_nonempty, check_abs_path, check_abs_path_optional, check_store, check_profile_main,
    check_profile_master, check_maillog;

#define OFF(field) offsetof(struct config, field)
#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

#define G_POLICY "Policy service"
#define G_LOG "Logging and privileges"
#define G_LIMITS "Rate limits"
#define G_STORE "Store"
#define G_NODE "Postfix node and stress"
#define G_ATTACK "Attack detection"
#define G_HTTP "Metrics endpoint"
#define G_REPORT "Report"

/* clang-format off */
const struct cf_entry cf_table[] = {
    {"listen", CF_STRING, "inet:127.0.0.1:10040", OFF(listen), .check = check_listen,
     .flags = CF_LINES, .group = G_POLICY,
     .doc = "Where Postfix connects: `inet:HOST:PORT` (IPv6 as `[ADDR]`) and `unix:PATH`, "
            "separated by blanks, commas or lines."},
    {"listen_unix_mode", CF_MODE, "0666", OFF(listen_unix_mode), 0, 07777, .group = G_POLICY,
     .doc = "Octal mode of unix sockets; restrict access with the directory (e.g. "
            "Postfix's `private/`)."},
    {"listen_unix_owner", CF_STRING, "", OFF(listen_unix_owner), .check = check_word,
     .group = G_POLICY, .doc = "Owner of unix sockets; empty leaves it as created."},
    {"listen_unix_group", CF_STRING, "", OFF(listen_unix_group), .check = check_word,
     .group = G_POLICY, .doc = "Group of unix sockets; empty leaves it as created."},
    {"max_connections", CF_INT, "4096", OFF(max_connections), 1, 1000000, .group = G_POLICY,
     .doc = "Open policy connections at most (one per smtpd process); over it, new ones "
            "are closed and counted."},
    {"idle_timeout", CF_TIME, "600s", OFF(idle_timeout), 1 * SEC, DAY, .group = G_POLICY,
     .doc = "Close a silent connection after this long; longer than Postfix's 300s "
            "`smtpd_policy_service_max_idle`."},
    {"max_line_length", CF_SIZE, "16K", OFF(max_line_length), 256, 1024 * 1024,
     .group = G_POLICY, .doc = "Longest request line; longer is a protocol error."},
    {"max_attributes", CF_INT, "256", OFF(max_attributes), 16, 100000, .group = G_POLICY,
     .doc = "Most attributes in one request."},
    {"max_request_size", CF_SIZE, "128K", OFF(max_request_size), 1024, 64 * 1024 * 1024,
     .group = G_POLICY, .doc = "Largest request in bytes."},
    {"max_output_buffer", CF_SIZE, "64K", OFF(max_output_buffer), 1024,
     1024LL * 1024 * 1024, .group = G_POLICY,
     .doc = "Unsent replies kept per connection; a client that does not read is closed."},
    {"default_action", CF_STRING, "DUNNO", OFF(default_action), .check = check_action,
     .group = G_POLICY, .doc = "The reply when no rule decides (an access(5) action)."},

    {"log_destination", CF_ENUM, "syslog", OFF(log_destination), .words = "syslog|stderr",
     .group = G_LOG, .doc = "Where logs go; `-f` (foreground) also logs to stderr."},
    {"log_level", CF_ENUM, "info", OFF(log_level), .words = "error|warning|info|debug",
     .group = G_LOG, .doc = "Least important level logged."},
    {"syslog_facility", CF_ENUM, "mail", OFF(syslog_facility),
     .words = "mail|daemon|user|local0|local1|local2|local3|local4|local5|local6|local7",
     .group = G_LOG, .doc = "Syslog facility; `mail` puts postsurge beside Postfix's lines."},
    {"syslog_name", CF_STRING, "postsurge", OFF(syslog_name), .check = check_word_nonempty,
     .group = G_LOG, .doc = "Syslog tag, logged as `NAME/COMPONENT[PID]`."},
    {"log_repeat_interval", CF_TIME, "60s", OFF(log_repeat_interval), 0, DAY,
     .group = G_LOG,
     .doc = "A repeated warning (Redis down, postconf failing) is logged once per interval, "
            "with a count of what was suppressed; 0 logs every one."},
    {"user", CF_STRING, "postsurge", OFF(user), .check = check_word_nonempty,
     .group = G_LOG, .doc = "Unprivileged user that `serve` runs as once its sockets are bound."},
    {"group", CF_STRING, "postsurge", OFF(group), .check = check_word_nonempty,
     .group = G_LOG, .doc = "Group that `serve` runs as."},

    {"limits", CF_STRING, "", OFF(limits), .flags = CF_LINES, .group = G_LIMITS,
     .doc = "Rate-limit rules, one per line: `NAME KEY MEASURE COUNT/WINDOW [stress "
            "COUNT/WINDOW] [dryrun] [if CONDITION]... [action TEXT]` (see Rate limits)."},
    {"limit_exempt_networks", CF_STRING, "", OFF(limit_exempt_networks), .flags = CF_LINES,
     .group = G_LIMITS, .doc = "Clients in these networks (CIDR) are never limited."},
    {"limit_exempt_sasl_users", CF_STRING, "", OFF(limit_exempt_sasl_users),
     .flags = CF_LINES, .group = G_LIMITS, .doc = "SASL users that are never limited."},
    {"limit_dry_run", CF_BOOL, "no", OFF(limit_dry_run), .group = G_LIMITS,
     .doc = "Log and count what the rules would do, but answer `DUNNO`."},
    {"limit_action", CF_STRING, "450 4.7.1 Rate limit exceeded, try again later",
     OFF(limit_action), .check = check_action, .group = G_LIMITS,
     .doc = "Reply of a rule without its own `action`; a 4xx so senders retry."},

    {"store", CF_STRING, "memory", OFF(store), .check = check_store, .group = G_STORE,
     .doc = "`memory` (this host only), `redis://[:PASSWORD@]HOST:PORT[/DB]`, "
            "`redis+unix:///PATH[?db=N]` (shared by a cluster), or "
            "`redis-sentinel://[:PASSWORD@]IP:PORT[,...]/MASTER[/DB]` (the master that "
            "these sentinels name, followed across failovers) or "
            "`redis-cluster://[:PASSWORD@]IP:PORT[,...]` (a Redis Cluster, from these seed "
            "nodes); see Scale-out."},
    {"store_key_prefix", CF_STRING, "postsurge:", OFF(store_key_prefix), .check = check_word,
     .group = G_STORE, .doc = "Prefix of every Redis key, to share a Redis safely."},
    {"redis_timeout", CF_TIME, "100ms", OFF(redis_timeout), 1, 60 * SEC, .group = G_STORE,
     .doc = "A Redis answer later than this counts as a failure; the decision falls back "
            "to `store_failure_action`."},
    {"store_failure_action", CF_ENUM, "local", OFF(store_failure_action),
     .words = "local|dunno|defer_if_permit", .group = G_STORE,
     .doc = "With Redis unreachable: count in local memory (`local`), answer `DUNNO`, or "
            "`DEFER_IF_PERMIT`."},
    {"redis_reconnect_max", CF_TIME, "5s", OFF(redis_reconnect_max), 100, 10 * MIN,
     .group = G_STORE, .doc = "Longest wait between Redis reconnection attempts (backoff cap)."},
    {"memory_store_max_keys", CF_INT, "1000000", OFF(memory_store_max_keys), 100, 100000000,
     .group = G_STORE,
     .doc = "Counters kept in memory (`store = memory`, and Redis's local fallback), about "
            "220 bytes each. When full, about 3% are dropped at once: expired counters "
            "first, then those furthest from their limit; a counter at its limit only when "
            "all are. Each wave is logged and counted (see Memory store bound)."},
    {"redis_sentinel_password", CF_STRING, "", OFF(redis_sentinel_password), .check = check_word,
     .group = G_STORE,
     .doc = "Password of the sentinels of a `redis-sentinel://` store, if they need one (the "
            "URL's password is the data nodes')."},

    {"node_name", CF_STRING, "", OFF(node_name), .check = check_word, .group = G_NODE,
     .doc = "This node's name in status and reports; empty means the host name."},
    {"postfix_config_directory", CF_STRING, "/etc/postfix", OFF(postfix_config_directory),
     .check = check_abs_path, .group = G_NODE,
     .doc = "The Postfix instance to watch and change (`postconf -c DIR`)."},
    {"maillog_file", CF_STRING, "/var/log/mail.log", OFF(maillog_file),
     .check = check_maillog, .group = G_NODE,
     .doc = "Postfix's log, followed across rotation; empty: do not read it. `journal` reads "
            "the systemd journal, `journal:DIRECTORY` the journal files of a directory (a "
            "copied journal); a file that does not exist at start while a journal does "
            "means the journal. From the journal only this instance's entries are read "
            "(see `maillog_syslog_name`)."},
    {"maillog_syslog_name", CF_STRING, "", OFF(maillog_syslog_name), .check = check_word,
     .group = G_NODE,
     .doc = "The journal entries read: those whose identifier is NAME or starts with "
            "`NAME/` (`postfix/smtpd`, `postfix/submission/smtpd`; not `postfix-out/qmgr`). "
            "Empty: the `syslog_name` of `postfix_config_directory` (`postconf -xh "
            "syslog_name`; `postfix` when postconf fails). A file is read whole."},
    {"state_directory", CF_STRING, "/var/lib/postsurge", OFF(state_directory),
     .check = check_abs_path, .group = G_NODE,
     .doc = "postsurge's own state: override journal, memory store snapshot, report position."},
    {"monitor", CF_BOOL, "yes", OFF(monitor), .group = G_NODE,
     .doc = "Watch Postfix for saturation (processes, backlog, log)."},
    {"monitor_interval", CF_TIME, "1s", OFF(monitor_interval), 100, MIN, .group = G_NODE,
     .doc = "Time between two samples."},
    {"stress_enter_threshold", CF_INT, "90", OFF(stress_enter_threshold), 1, 1000,
     .group = G_NODE,
     .doc = "Saturation (% of smtpd processes busy; over 100 when clients wait) that "
            "enters stress once held for `stress_enter_delay`."},
    {"stress_enter_delay", CF_TIME, "5s", OFF(stress_enter_delay), 0, HOUR, .group = G_NODE,
     .doc = "How long saturation must stay high; a process-limit warning or waiting "
            "clients enter at once."},
    {"stress_exit_threshold", CF_INT, "60", OFF(stress_exit_threshold), 0, 999,
     .group = G_NODE,
     .doc = "Saturation below which stress is left once held for `stress_exit_delay`; "
            "must be below `stress_enter_threshold`."},
    {"stress_exit_delay", CF_TIME, "2m", OFF(stress_exit_delay), 0, DAY, .group = G_NODE,
     .doc = "How long saturation must stay low before leaving stress."},
    {"stress_min_interval", CF_TIME, "1m", OFF(stress_min_interval), 0, DAY,
     .group = G_NODE, .doc = "At most one apply or restore of the overrides per interval."},
    {"stress_overrides", CF_BOOL, "no", OFF(stress_overrides), .group = G_NODE,
     .doc = "Apply the override profile below to Postfix while in stress (journaled, restored "
            "exactly); no: log the commands it would run, as `stress_dry_run` does."},
    {"stress_main_cf", CF_STRING, OVERRIDES_DEFAULT_MAIN_CF, OFF(stress_main_cf),
     .check = check_profile_main, .flags = CF_LINES, .group = G_NODE,
     .doc = "main.cf settings applied in stress, `name=value` each, only from the settings "
            "a profile may change (rate, count, time and error limits of smtpd, postscreen "
            "and anvil): limits that are not stress-adaptive by themselves."},
    {"stress_master_cf", CF_STRING, OVERRIDES_DEFAULT_MASTER_CF, OFF(stress_master_cf),
     .check = check_profile_master, .flags = CF_LINES, .group = G_NODE,
     .doc = "master.cf `-o` parameters applied in stress (`postconf -P`), "
            "`service/type/name=value` each; service `*` means every public smtpd service "
            "of that type (`*/inet`, and `*/pass` behind postscreen); names from the same "
            "list, plus `stress`."},
    {"stress_dry_run", CF_BOOL, "no", OFF(stress_dry_run), .group = G_NODE,
     .doc = "Log the exact commands the overrides would run; change nothing."},
    {"stress_cluster_quorum", CF_INT, "0", OFF(stress_cluster_quorum), 0, 100,
     .group = G_NODE,
     .doc = "Every node enters stress when this % of nodes is stressed; 0 = off."},
    {"command_timeout", CF_TIME, "30s", OFF(command_timeout), 1 * SEC, 10 * MIN,
     .group = G_NODE, .doc = "Longest run of a `postconf` or `postfix` command."},
    {"postconf_command", CF_STRING, "postconf", OFF(postconf_command),
     .check = check_word_nonempty, .group = G_NODE,
     .doc = "The `postconf` program (an absolute path, or a name looked up in PATH)."},
    {"postfix_command", CF_STRING, "postfix", OFF(postfix_command),
     .check = check_word_nonempty, .group = G_NODE,
     .doc = "The `postfix` program (for `postfix -c DIR reload`)."},
    {"node_status_ttl", CF_TIME, "5s", OFF(node_status_ttl), 1 * SEC, HOUR, .group = G_NODE,
     .doc = "Lifetime of a node's published status; a dead node disappears after it."},
    {"event_log_max", CF_INT, "10000", OFF(event_log_max), 10, 10000000, .group = G_NODE,
     .doc = "Events kept (stress entered/left, overrides, failures)."},

    {"attack_unknown_user_limit", CF_INT, "20", OFF(attack_unknown_user_limit), 0, 1000000,
     .group = G_ATTACK,
     .doc = "`User unknown` rejects of one client per `attack_window` that flag it "
            "(dictionary harvest); 0 = off."},
    {"attack_error_limit", CF_INT, "50", OFF(attack_error_limit), 0, 1000000,
     .group = G_ATTACK, .doc = "Other rejects of one client per window that flag it; 0 = off."},
    {"attack_window", CF_TIME, "10m", OFF(attack_window), 1 * SEC, DAY, .group = G_ATTACK,
     .doc = "Window over which rejects are counted."},
    {"attack_flag_time", CF_TIME, "1h", OFF(attack_flag_time), 1 * SEC, 7 * DAY,
     .group = G_ATTACK, .doc = "How long a client stays flagged."},
    {"attack_action", CF_STRING, "421 4.7.0 Too many errors from your address, try again later",
     OFF(attack_action), .check = check_action, .group = G_ATTACK,
     .doc = "Reply to a flagged client: during stress, or as `attack_auth_mode` says for "
            "a client flagged for SASL failures; 421/521 also hang up."},
    {"attack_auth_failure_limit", CF_INT, "10", OFF(attack_auth_failure_limit), 0, 1000000,
     .group = G_ATTACK,
     .doc = "SASL authentication failures of one client per `attack_auth_window` that flag "
            "it (password guessing); 0 = off."},
    {"attack_auth_window", CF_TIME, "10m", OFF(attack_auth_window), 1 * SEC, DAY,
     .group = G_ATTACK, .doc = "Window over which SASL authentication failures are counted."},
    {"attack_auth_mode", CF_ENUM, "always", OFF(attack_auth_mode), .words = "always|stress|off",
     .group = G_ATTACK,
     .doc = "When a client flagged for SASL failures is answered `attack_action`: at its "
            "next policy request at any time (`always`), only while the node is stressed "
            "(`stress`, as the reject flags), or never (`off`: flagged and logged only)."},
    {"attack_stress_unknown_user_rate", CF_INT, "0", OFF(attack_stress_unknown_user_rate), 0,
     1000000000, .group = G_ATTACK,
     .doc = "`User unknown` rejects per minute across the cluster (every node's mail log, "
            "counted in the shared store) that put the node in stress, the attack named in "
            "the `stress-enter` event (a dictionary harvest from many addresses); 0 = off."},
    {"attack_stress_auth_failure_rate", CF_INT, "0", OFF(attack_stress_auth_failure_rate), 0,
     1000000000, .group = G_ATTACK,
     .doc = "The same for SASL authentication failures (password guessing from many "
            "addresses); 0 = off."},

    {"http_listen", CF_STRING, "inet:127.0.0.1:10041", OFF(http_listen),
     .check = check_listen_optional, .flags = CF_LINES, .group = G_HTTP,
     .doc = "The status page (`/`), `/metrics`, `/status` and `/healthz` endpoint; empty = "
            "off."},
    {"http_allow_networks", CF_STRING, "127.0.0.0/8, ::1", OFF(http_allow_networks),
     .flags = CF_LINES, .group = G_HTTP,
     .doc = "Clients (CIDR, blanks or commas) the endpoint answers; others get 403."},
    {"http_max_connections", CF_INT, "64", OFF(http_max_connections), 1, 10000,
     .group = G_HTTP, .doc = "Open HTTP connections at most."},

    {"report_anomaly_sigma", CF_DOUBLE, "2", OFF(report_anomaly_sigma), .dmin = 0.1,
     .dmax = 100, .group = G_REPORT,
     .doc = "A figure further than this many standard deviations from its baseline is an "
            "anomaly."},
    {"report_baseline_window", CF_TIME, "7d", OFF(report_baseline_window), HOUR, 366 * DAY,
     .group = G_REPORT, .doc = "Span of the rolling baselines."},
    {"report_quiet_windows", CF_STRING, "", OFF(report_quiet_windows), .flags = CF_LINES,
     .group = G_REPORT, .doc = "Known noisy windows in which anomalies are not reported."},
    {"report_anomaly_min_samples", CF_INT, "12", OFF(report_anomaly_min_samples), 1, 100000,
     .group = G_REPORT, .doc = "A figure with fewer baseline samples is never an anomaly."},
    {"report_quiet_backlog_limit", CF_INT, "2000", OFF(report_quiet_backlog_limit), 0,
     1000000000, .group = G_REPORT,
     .doc = "Over this many incoming + active messages anomalies are reported even in a "
            "quiet window; 0 = quiet windows always apply."},
    {"report_hold_warning", CF_INT, "1", OFF(report_hold_warning), 0, 1000000000,
     .group = G_REPORT, .doc = "Held messages that make the report a WARNING; 0 = off."},
    {"report_hold_critical", CF_INT, "0", OFF(report_hold_critical), 0, 1000000000,
     .group = G_REPORT, .doc = "Held messages that make it CRITICAL; 0 = off."},
    {"report_deferred_warning", CF_INT, "100", OFF(report_deferred_warning), 0, 1000000000,
     .group = G_REPORT, .doc = "Deferred messages for a WARNING; 0 = off."},
    {"report_deferred_critical", CF_INT, "1000", OFF(report_deferred_critical), 0,
     1000000000, .group = G_REPORT, .doc = "Deferred messages for CRITICAL; 0 = off."},
    {"report_backlog_warning", CF_INT, "2000", OFF(report_backlog_warning), 0, 1000000000,
     .group = G_REPORT, .doc = "Incoming + active messages for a WARNING; 0 = off."},
    {"report_backlog_critical", CF_INT, "10000", OFF(report_backlog_critical), 0,
     1000000000, .group = G_REPORT, .doc = "Incoming + active messages for CRITICAL; 0 = off."},
    {"report_queue_age_warning", CF_TIME, "1d", OFF(report_queue_age_warning), 0, 366 * DAY,
     .group = G_REPORT,
     .doc = "Age of the oldest incoming, active or deferred message for a WARNING; 0 = off."},
    {"report_queue_age_critical", CF_TIME, "4d", OFF(report_queue_age_critical), 0,
     366 * DAY, .group = G_REPORT,
     .doc = "The same for CRITICAL; Postfix bounces at `maximal_queue_lifetime` (5d)."},
    {"report_domain_deferred_warning", CF_INT, "20", OFF(report_domain_deferred_warning), 0,
     1000000000, .group = G_REPORT,
     .doc = "Deferred recipients of one domain for a WARNING; 0 = off."},
    {"report_failure_rate_warning", CF_DOUBLE, "0.2", OFF(report_failure_rate_warning),
     .dmin = 0, .dmax = 1, .group = G_REPORT,
     .doc = "Share of a domain's deliveries deferred or bounced for a WARNING; 0 = off."},
    {"report_failure_rate_critical", CF_DOUBLE, "0.5", OFF(report_failure_rate_critical),
     .dmin = 0, .dmax = 1, .group = G_REPORT, .doc = "The same for CRITICAL; 0 = off."},
    {"report_failure_min_messages", CF_INT, "20", OFF(report_failure_min_messages), 0,
     1000000000, .group = G_REPORT,
     .doc = "Domains with fewer deliveries since the last report are not judged."},
    {"report_client_reject_warning", CF_INT, "50", OFF(report_client_reject_warning), 0,
     1000000000, .group = G_REPORT,
     .doc = "Rejects of one SMTP client for a WARNING (dictionary attack); 0 = off."},
    {"report_lost_connection_warning", CF_INT, "100", OFF(report_lost_connection_warning), 0,
     1000000000, .group = G_REPORT,
     .doc = "Connections one client lost on one service (`lost connection after ...`) for a "
            "WARNING (a scanner or a broken client); 0 = off."},
    {"report_auth_failure_warning", CF_INT, "30", OFF(report_auth_failure_warning), 0,
     1000000000, .group = G_REPORT,
     .doc = "SASL authentication failures of one client for a WARNING (password guessing); "
            "0 = off."},
    {"report_saturation_warning", CF_INT, "80", OFF(report_saturation_warning), 0, 1000,
     .group = G_REPORT, .doc = "% of a node's smtpd processes busy for a WARNING; 0 = off."},
    {"report_saturation_critical", CF_INT, "95", OFF(report_saturation_critical), 0, 1000,
     .group = G_REPORT, .doc = "The same for CRITICAL; 0 = off."},
    {"report_imbalance_warning", CF_INT, "50", OFF(report_imbalance_warning), 0, 1000,
     .group = G_REPORT,
     .doc = "Saturation points between the busiest and the idlest node for a WARNING "
            "(check MX weights); 0 = off."},
    {"report_top_domains", CF_INT, "10", OFF(report_top_domains), 1, 10000,
     .group = G_REPORT, .doc = "Domains shown in the queue and traffic tables."},
    {"report_top_clients", CF_INT, "10", OFF(report_top_clients), 1, 10000,
     .group = G_REPORT, .doc = "SMTP clients shown."},
    {"report_top_reasons", CF_INT, "3", OFF(report_top_reasons), 1, 16, .group = G_REPORT,
     .doc = "Deferral reasons shown per domain."},
    {"postqueue_command", CF_STRING, "postqueue", OFF(postqueue_command),
     .check = check_word_nonempty, .group = G_REPORT,
     .doc = "The `postqueue` program the report runs as `PROGRAM -c DIR -j` (a path, or a "
            "name looked up in PATH)."},
};
/* clang-format on */

const size_t cf_count = sizeof(cf_table) / sizeof(cf_table[0]);

const struct cf_entry *cf_find(const char *name, size_t len)
{
    for (size_t i = 0; i < CF_COUNT; i++)
        if (strlen(cf_table[i].name) == len && memcmp(cf_table[i].name, name, len) == 0)
            return &cf_table[i];
    return NULL;
}

size_t cf_index(const struct cf_entry *e)
{
    return (size_t)(e - cf_table);
}

/* ---- string checkers ---- */

bool cf_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_sep(char c)
{
    return cf_is_space(c) || c == ',';
}

/* Calls fn on each item of a list split on whitespace, commas and newlines; stops at
 * the first complaint. */
static const char *each_item(const char *v, const char *(*fn)(const char *, size_t))
{
    const char *p = v;
    while (*p) {
        while (*p && is_sep(*p))
            p++;
        const char *start = p;
        while (*p && !is_sep(*p))
            p++;
        if (p > start) {
            const char *why = fn(start, (size_t)(p - start));
            if (why)
                return why;
        }
    }
    return NULL;
}

bool cf_parse_uint_n(const char *s, size_t n, int64_t max, int64_t *out)
{
    int64_t v = 0;
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
        if (v > max)
            return false;
    }
    *out = v;
    return true;
}

static const char *listen_item(const char *s, size_t n)
{
    if (n > 5 && memcmp(s, "unix:", 5) == 0)
        return n - 5 < 108 ? NULL : "unix socket path longer than 107 bytes";
    if (n > 5 && memcmp(s, "inet:", 5) == 0) {
        const char *hp = s + 5, *end = s + n;
        const char *colon = NULL;
        for (const char *q = hp; q < end; q++)
            if (*q == ':')
                colon = q;
        if (!colon || colon == hp)
            return "expected inet:HOST:PORT";
        if (*hp == '[' && colon[-1] != ']')
            return "an IPv6 address must be written [ADDR]:PORT";
        int64_t port;
        if (!cf_parse_uint_n(colon + 1, (size_t)(end - colon - 1), 65535, &port) || port == 0)
            return "port must be a number from 1 to 65535";
        return NULL;
    }
    return "expected inet:HOST:PORT or unix:PATH";
}

static const char *check_listen_optional(const char *v)
{
    return each_item(v, listen_item);
}

static const char *check_listen(const char *v)
{
    const char *p = v;
    while (*p && is_sep(*p))
        p++;
    if (!*p)
        return "at least one inet:HOST:PORT or unix:PATH is needed";
    return check_listen_optional(v);
}

static const char *check_action(const char *v)
{
    static const char *const words[] = {
        "OK",      "DUNNO",   "REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT", "HOLD",
        "DISCARD", "PREPEND", "WARN",   "INFO",  "FILTER",          "REDIRECT",        "BCC",
    };
    size_t n = 0;
    while (v[n] && !cf_is_space(v[n]))
        n++;
    if (n == 0)
        return "an access(5) action is needed, such as DUNNO or 450 4.7.1 TEXT";
    if (strlen(v) > 8192)
        return "longer than the 8192 characters Postfix accepts";
    if (n == 3 && (v[0] == '4' || v[0] == '5') && isdigit((unsigned char)v[1]) &&
        isdigit((unsigned char)v[2]))
        return NULL;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strlen(words[i]) == n && strncasecmp(words[i], v, n) == 0)
            return NULL;
    return "not an access(5) action (DUNNO, OK, 4NN TEXT, 5NN TEXT, REJECT, DEFER, "
           "DEFER_IF_PERMIT, HOLD, ...)";
}

static const char *check_word(const char *v)
{
    for (const char *p = v; *p; p++)
        if (cf_is_space(*p))
            return "must be one word, without blanks";
    return NULL;
}

static const char *check_word_nonempty(const char *v)
{
    if (!*v)
        return "must not be empty";
    return check_word(v);
}

static const char *check_abs_path_optional(const char *v)
{
    if (*v && *v != '/')
        return "must be an absolute path";
    return check_word(v);
}

/* A file, `journal`, or `journal:DIRECTORY` (journal files of a directory of their own). */
static const char *check_maillog(const char *v)
{
    if (strcmp(v, "journal") == 0)
        return NULL;
    if (strncmp(v, "journal:", 8) == 0) {
        if (v[8] != '/')
            return "journal:DIRECTORY needs an absolute path";
        return check_word(v + 8);
    }
    if (*v && *v != '/')
        return "must be an absolute path, journal or journal:DIRECTORY";
    return check_word(v);
}

static const char *check_abs_path(const char *v)
{
    if (!*v)
        return "must not be empty";
    return check_abs_path_optional(v);
}

static const char *check_store(const char *v)
{
    struct config_store_url u;
    if (config_parse_store_url(v, &u) < 0)
        return u.error;
    return NULL;
}

/* The override profiles are checked by their own parser and allow-list (lib/overrides),
 * so what is accepted here is exactly what the controller and the helper will apply. The message
 * buffer is static: the caller copies it into its diagnostic before the next check runs. */
static const char *check_profile(const char *main_spec, const char *master_spec)
{
    static char err[256];
    struct overrides_profile *p = NULL;
    int rc = overrides_profile_parse(main_spec, master_spec, &p, err, sizeof(err));
    if (rc == 0)
        rc = overrides_profile_allowed(p, err, sizeof(err));
    overrides_profile_free(p);
    if (rc == -ENOMEM)
        return "out of memory";
    return rc < 0 ? err : NULL;
}

static const char *check_profile_main(const char *v)
{
    return check_profile(v, NULL);
}

static const char *check_profile_master(const char *v)
{
    return check_profile(NULL, v);
}

/* ---- typed values ---- */

/* Parses an unsigned decimal into *num, returning the rest. NULL on overflow or when no
 * digit is there. */
static const char *parse_digits(const char *s, int64_t *num)
{
    int64_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return NULL;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (p == s)
        return NULL;
    *num = v;
    return p;
}

int config_parse_time_ms(const char *s, int64_t *out)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"ms", 1}, {"s", SEC}, {"m", MIN}, {"h", HOUR}, {"d", DAY}, {"w", 7 * DAY}};
    int64_t n;
    const char *rest = parse_digits(s, &n);
    if (!rest)
        return -EINVAL;
    int64_t mul = SEC; /* bare numbers are seconds, as in Postfix */
    if (*rest) {
        mul = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (strcmp(rest, units[i].unit) == 0)
                mul = units[i].ms;
        if (!mul)
            return -EINVAL;
    }
    if (n > INT64_MAX / mul)
        return -EINVAL;
    *out = n * mul;
    return 0;
}

int64_t config_size_suffix(char c)
{
    switch (c) {
    case 'k':
    case 'K':
        return 1024;
    case 'm':
    case 'M':
        return 1024 * 1024;
    case 'g':
    case 'G':
        return 1024 * 1024 * 1024;
    default:
        return 0;
    }
}

int config_parse_size(const char *s, int64_t *out)
{
    int64_t n;
    const char *rest = parse_digits(s, &n);
    if (!rest)
        return -EINVAL;
    int64_t mul = 1;
    if (*rest) {
        if (rest[1])
            return -EINVAL;
        mul = config_size_suffix(*rest);
        if (!mul)
            return -EINVAL;
    }
    if (n > INT64_MAX / mul)
        return -EINVAL;
    *out = n * mul;
    return 0;
}

static int parse_int(const char *s, int64_t *out)
{
    bool neg = *s == '-';
    int64_t n;
    const char *rest = parse_digits(neg ? s + 1 : s, &n);
    if (!rest || *rest)
        return -EINVAL;
    *out = neg ? -n : n;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcmp(s, "1"))
        *out = true;
    else if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcmp(s, "0"))
        *out = false;
    else
        return -EINVAL;
    return 0;
}

static int parse_mode(const char *s, int64_t *out)
{
    int64_t v = 0;
    if (!*s)
        return -EINVAL;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '7' || v > 07777)
            return -EINVAL;
        v = v * 8 + (*p - '0');
    }
    *out = v;
    return 0;
}

static bool enum_has(const char *words, const char *s)
{
    size_t n = strlen(s);
    const char *p = words;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t wn = bar ? (size_t)(bar - p) : strlen(p);
        if (wn == n && memcmp(p, s, n) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

void cf_fmt_time(int64_t ms, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", DAY}, {"h", HOUR}, {"m", MIN}, {"s", SEC}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (ms != 0 && ms % units[i].ms == 0) {
            snprintf(buf, len, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    if (ms == 0)
        snprintf(buf, len, "0s");
    else
        snprintf(buf, len, "%lldms", (long long)ms);
}

void cf_fmt_size(int64_t n, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        int64_t mul;
    } units[] = {{"G", 1024 * 1024 * 1024}, {"M", 1024 * 1024}, {"K", 1024}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (n != 0 && n % units[i].mul == 0) {
            snprintf(buf, len, "%lld%s", (long long)(n / units[i].mul), units[i].unit);
            return;
        }
    snprintf(buf, len, "%lld", (long long)n);
}

static void fmt_double(double d, char *buf, size_t len)
{
    /* The shortest form that reads back exactly, so print-then-parse is lossless. */
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

/* Describes the accepted form and range of an entry, for messages and the reference. */
void cf_fmt_range(const struct cf_entry *e, char *buf, size_t len)
{
    char a[32], b[32];
    switch (e->type) {
    case CF_BOOL:
        snprintf(buf, len, "yes or no");
        break;
    case CF_INT:
        snprintf(buf, len, "an integer from %lld to %lld", (long long)e->min, (long long)e->max);
        break;
    case CF_TIME:
        cf_fmt_time(e->min, a, sizeof(a));
        cf_fmt_time(e->max, b, sizeof(b));
        snprintf(buf, len, "a time from %s to %s (units ms s m h d w; a bare number is seconds)", a,
                 b);
        break;
    case CF_SIZE:
        cf_fmt_size(e->min, a, sizeof(a));
        cf_fmt_size(e->max, b, sizeof(b));
        snprintf(buf, len, "a size from %s to %s (suffixes K M G; a bare number is bytes)", a, b);
        break;
    case CF_MODE:
        snprintf(buf, len, "an octal mode from 0000 to 07777");
        break;
    case CF_DOUBLE:
        fmt_double(e->dmin, a, sizeof(a));
        fmt_double(e->dmax, b, sizeof(b));
        snprintf(buf, len, "a number from %s to %s", a, b);
        break;
    case CF_ENUM:
        snprintf(buf, len, "one of %s", e->words);
        break;
    case CF_STRING:
        snprintf(buf, len, "text");
        break;
    }
}

/* Stores value text into cfg's field for e. Returns 0, -EINVAL with *why set, or
 * -ENOMEM. value has already been joined and trimmed. */
int cf_apply(struct config *cfg, const struct cf_entry *e, const char *value, const char **why)
{
    char *field = (char *)cfg + e->off;
    int64_t n = 0;
    int rc = 0;
    *why = NULL;
    switch (e->type) {
    case CF_STRING:
    case CF_ENUM: {
        if (e->type == CF_ENUM && !enum_has(e->words, value)) {
            *why = "unknown value";
            return -EINVAL;
        }
        if (e->check && (*why = e->check(value)) != NULL)
            return -EINVAL;
        char *dup = cf_strdup(value);
        if (!dup)
            return -ENOMEM;
        char **slot = (char **)(void *)field;
        cf_free(*slot);
        *slot = dup;
        return 0;
    }
    case CF_BOOL: {
        bool b;
        if (parse_bool(value, &b) < 0) {
            *why = "not a boolean";
            return -EINVAL;
        }
        *(bool *)(void *)field = b;
        return 0;
    }
    case CF_DOUBLE: {
        char *end;
        double d;
        if (!*value || cf_is_space(*value)) {
            *why = "not a number";
            return -EINVAL;
        }
        errno = 0;
        d = strtod(value, &end);
        if (*end || !isfinite(d) || errno == ERANGE) {
            *why = "not a number";
            return -EINVAL;
        }
        if (d < e->dmin || d > e->dmax) {
            *why = "out of range";
            return -EINVAL;
        }
        *(double *)(void *)field = d;
        return 0;
    }
    case CF_INT:
        rc = parse_int(value, &n);
        *why = "not an integer";
        break;
    case CF_TIME:
        rc = config_parse_time_ms(value, &n);
        *why = "not a time";
        break;
    case CF_SIZE:
        rc = config_parse_size(value, &n);
        *why = "not a size";
        break;
    case CF_MODE:
        rc = parse_mode(value, &n);
        *why = "not an octal mode";
        break;
    }
    if (rc < 0)
        return -EINVAL;
    if (n < e->min || n > e->max) {
        *why = "out of range";
        return -EINVAL;
    }
    *why = NULL;
    if (e->type == CF_MODE)
        *(unsigned *)(void *)field = (unsigned)n;
    else
        *(int64_t *)(void *)field = n;
    return 0;
}

/* Formats a setting's value. Strings are borrowed from cfg (*tmp unused); numbers are
 * written to tmp. */
const char *cf_format(const struct config *cfg, const struct cf_entry *e, char *tmp, size_t len)
{
    const char *field = (const char *)cfg + e->off;
    switch (e->type) {
    case CF_STRING:
    case CF_ENUM: {
        const char *s = *(char *const *)(const void *)field;
        return s ? s : "";
    }
    case CF_BOOL:
        return *(const bool *)(const void *)field ? "yes" : "no";
    case CF_INT:
        snprintf(tmp, len, "%lld", (long long)*(const int64_t *)(const void *)field);
        return tmp;
    case CF_TIME:
        cf_fmt_time(*(const int64_t *)(const void *)field, tmp, len);
        return tmp;
    case CF_SIZE:
        cf_fmt_size(*(const int64_t *)(const void *)field, tmp, len);
        return tmp;
    case CF_MODE:
        snprintf(tmp, len, "%04o", *(const unsigned *)(const void *)field);
        return tmp;
    case CF_DOUBLE:
        fmt_double(*(const double *)(const void *)field, tmp, len);
        return tmp;
    }
    return "";
}

bool cf_entry_equal(const struct config *a, const struct config *b, const struct cf_entry *e)
{
    const char *fa = (const char *)a + e->off, *fb = (const char *)b + e->off;
    switch (e->type) {
    case CF_STRING:
    case CF_ENUM: {
        const char *sa = *(char *const *)(const void *)fa, *sb = *(char *const *)(const void *)fb;
        return strcmp(sa ? sa : "", sb ? sb : "") == 0;
    }
    case CF_BOOL:
        return *(const bool *)(const void *)fa == *(const bool *)(const void *)fb;
    case CF_MODE:
        return *(const unsigned *)(const void *)fa == *(const unsigned *)(const void *)fb;
    case CF_DOUBLE:
        return *(const double *)(const void *)fa == *(const double *)(const void *)fb;
    case CF_INT:
    case CF_TIME:
    case CF_SIZE:
        return *(const int64_t *)(const void *)fa == *(const int64_t *)(const void *)fb;
    }
    return false;
}

/* ---- config objects ---- */

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < CF_COUNT; i++)
        if (cf_table[i].type == CF_STRING || cf_table[i].type == CF_ENUM)
            cf_free(*(char **)(void *)((char *)cfg + cf_table[i].off));
    if (cfg->value_lines)
        for (size_t i = 0; i < CF_COUNT; i++)
            cf_free(cfg->value_lines[i]);
    cf_free(cfg->value_lines);
    cf_free(cfg->setting_line);
    cf_free(cfg->source_name);
    cf_free(cfg);
}

struct config *config_alloc(const char *source)
{
    struct config *cfg = cf_calloc(1, sizeof(*cfg));
    if (!cfg)
        return NULL;
    cfg->source_name = cf_strdup(source);
    cfg->setting_line = cf_calloc(CF_COUNT, sizeof(*cfg->setting_line));
    cfg->value_lines = cf_calloc(CF_COUNT, sizeof(*cfg->value_lines));
    if (!cfg->source_name || !cfg->setting_line || !cfg->value_lines)
        goto fail;
    for (size_t i = 0; i < CF_COUNT; i++) {
        const char *why;
        /* A default that does not parse is a bug in the table; the unit tests catch it. */
        if (cf_apply(cfg, &cf_table[i], cf_table[i].def, &why) < 0)
            goto fail;
    }
    return cfg;
fail:
    config_free(cfg);
    return NULL;
}

struct config *config_new_defaults(void)
{
    return config_alloc("");
}

bool config_equal(const struct config *a, const struct config *b)
{
    for (size_t i = 0; i < CF_COUNT; i++)
        if (!cf_entry_equal(a, b, &cf_table[i]))
            return false;
    return true;
}

int config_setting_line(const struct config *cfg, const char *name)
{
    const struct cf_entry *e = cf_find(name, strlen(name));
    if (!e)
        return -ENOENT;
    return cfg->setting_line ? (int)cfg->setting_line[cf_index(e)] : 0;
}

int config_value_line(const struct config *cfg, const char *name, size_t k)
{
    const struct cf_entry *e = cf_find(name, strlen(name));
    if (!e)
        return -ENOENT;
    const unsigned *lines = cfg->value_lines ? cfg->value_lines[cf_index(e)] : NULL;
    if (!lines)
        return 0;
    /* lines[0] holds the count, lines[1..] the file line of each value line. */
    return k < lines[0] ? (int)lines[k + 1] : 0;
}

const char *config_source_name(const struct config *cfg)
{
    return cfg->source_name ? cfg->source_name : "";
}
