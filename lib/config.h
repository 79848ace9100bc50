/* config: postsurge.cf, in Postfix main.cf syntax ("name = value", '#' comments, lines
 * that start with whitespace continue the previous one). Every setting comes from one
 * table of name, type, default and bounds in config.c; this struct is its typed result.
 * Errors are reported as "FILE:LINE: message". Pure: parses a buffer handed in. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Times are milliseconds (values take units: ms s m h d; a bare number is seconds).
 * Sizes are bytes (suffixes K M G). Lists are the raw string; their owners parse them. */
struct config {
    /* policy service */
    char *listen;              /* "inet:127.0.0.1:10040", blank/comma separated */
    unsigned listen_unix_mode; /* octal, 0666 */
    char *listen_unix_owner;   /* "" leaves the socket's owner as is */
    char *listen_unix_group;
    int64_t max_connections;   /* 4096 */
    int64_t idle_timeout;      /* ms, 600 s: longer than Postfix's 300 s max_idle */
    int64_t max_line_length;   /* POLICY_DEFAULT_MAX_LINE */
    int64_t max_attributes;    /* POLICY_DEFAULT_MAX_ATTRS */
    int64_t max_request_size;  /* POLICY_DEFAULT_MAX_REQUEST */
    int64_t max_output_buffer; /* bytes of unsent replies per connection, 64K */
    char *default_action;      /* "DUNNO": the answer when no rule decides */

    /* logging and privileges */
    char *log_destination;       /* "syslog" or "stderr" */
    char *log_level;             /* error warning info debug; "info" */
    char *syslog_facility;       /* "mail" */
    char *syslog_name;           /* "postsurge" */
    int64_t log_repeat_interval; /* ms between repeats of one warning, 60 s */
    char *user;                  /* "postsurge" */
    char *group;                 /* "postsurge" */

    /* rate limits (issue 3) */
    char *limits;                /* rule lines, see limits_engine.h */
    char *limit_exempt_networks; /* CIDRs, blank/comma separated; "" */
    char *limit_exempt_sasl_users;
    bool limit_dry_run;
    char *limit_action; /* default reply of a rule, "450 4.7.1 ..." */

    /* store */
    char *store; /* "memory", "redis://[:PW@]HOST:PORT[/DB]", "redis+unix:///PATH[?db=N]",
                  * "redis-sentinel://[:PW@]IP:PORT[,...]/MASTER[/DB]",
                  * "redis-cluster://[:PW@]IP:PORT[,...]" */
    char *store_key_prefix;        /* "postsurge:" */
    int64_t redis_timeout;         /* ms, 100 */
    char *store_failure_action;    /* "local", "dunno" or "defer_if_permit" */
    int64_t redis_reconnect_max;   /* ms, backoff cap, 5 s */
    char *redis_sentinel_password; /* AUTH for the sentinels; "" = none */

    int64_t memory_store_max_keys; /* counters kept in memory, 1000000 */

    /* the Postfix node (issue 4) */
    char *node_name;                /* "" means the host name */
    char *postfix_config_directory; /* "/etc/postfix" */
    char *maillog_file;             /* "/var/log/mail.log" */
    char *maillog_syslog_name;      /* "": the instance's syslog_name (postconf) */
    char *state_directory;          /* "/var/lib/postsurge" */
    bool monitor;                   /* yes: watch Postfix */
    int64_t monitor_interval;       /* ms, 1 s */
    int64_t stress_enter_threshold; /* percent, 90 */
    int64_t stress_enter_delay;     /* ms, 5 s */
    int64_t stress_exit_threshold;  /* percent, 60 */
    int64_t stress_exit_delay;      /* ms, 120 s */
    int64_t stress_min_interval;    /* ms, 60 s */
    bool stress_overrides;          /* yes: apply the profile when stressed */
    char *stress_main_cf;           /* "name=value ..." */
    char *stress_master_cf;         /* "service/type/name=value ..." */
    bool stress_dry_run;
    int64_t stress_cluster_quorum; /* percent of nodes, 0 = off */
    int64_t command_timeout;       /* ms for postconf/postfix runs, 30 s */
    char *postconf_command;        /* "postconf" (PATH) or an absolute path */
    char *postfix_command;         /* "postfix" */
    int64_t node_status_ttl;       /* ms, 5 s */
    int64_t event_log_max;         /* entries kept, 10000 */

    /* attack detection */
    int64_t attack_unknown_user_limit;       /* "User unknown" rejects per window, 20 */
    int64_t attack_error_limit;              /* other rejects per window, 50 */
    int64_t attack_window;                   /* ms, 10 min */
    int64_t attack_flag_time;                /* ms, 1 h */
    char *attack_action;                     /* "421 4.7.0 ..." during stress */
    int64_t attack_auth_failure_limit;       /* SASL failures per attack_auth_window, 10 */
    int64_t attack_auth_window;              /* ms, 10 min */
    char *attack_auth_mode;                  /* "always", "stress" or "off" */
    int64_t attack_stress_unknown_user_rate; /* per minute across the cluster, 0 = off */
    int64_t attack_stress_auth_failure_rate; /* per minute across the cluster, 0 = off */

    /* HTTP metrics/status endpoint (issue 5) */
    char *http_listen;            /* "inet:127.0.0.1:10041", "" = off */
    int64_t http_max_connections; /* 64 */
    char *http_allow_networks;    /* CIDRs; "127.0.0.0/8, ::1" */

    /* report (issue 5) */
    double report_anomaly_sigma;            /* 2 */
    int64_t report_baseline_window;         /* ms, 7 d */
    char *report_quiet_windows;             /* "" */
    int64_t report_anomaly_min_samples;     /* 12 */
    int64_t report_quiet_backlog_limit;     /* 2000 incoming + active, 0 = off */
    int64_t report_hold_warning;            /* 1; thresholds: 0 = off */
    int64_t report_hold_critical;           /* 0 */
    int64_t report_deferred_warning;        /* 100 */
    int64_t report_deferred_critical;       /* 1000 */
    int64_t report_backlog_warning;         /* 2000 */
    int64_t report_backlog_critical;        /* 10000 */
    int64_t report_queue_age_warning;       /* ms, 1 d */
    int64_t report_queue_age_critical;      /* ms, 4 d */
    int64_t report_domain_deferred_warning; /* 20 */
    double report_failure_rate_warning;     /* 0.2 */
    double report_failure_rate_critical;    /* 0.5 */
    int64_t report_failure_min_messages;    /* 20 */
    int64_t report_client_reject_warning;   /* 50 */
    int64_t report_lost_connection_warning; /* 100 */
    int64_t report_auth_failure_warning;    /* 30 */
    int64_t report_saturation_warning;      /* 80 */
    int64_t report_saturation_critical;     /* 95 */
    int64_t report_imbalance_warning;       /* 50 */
    int64_t report_top_domains;             /* 10 */
    int64_t report_top_clients;             /* 10 */
    int64_t report_top_reasons;             /* 3 */
    char *postqueue_command;                /* "postqueue" */

    /* Bookkeeping owned by config.c: where the values came from. Read them through
     * config_source_name() and config_setting_line(). */
    char *source_name;      /* the name given to config_parse_buffer, "" for defaults */
    unsigned *setting_line; /* per setting, the line of its last definition, 0 = default */
    unsigned **value_lines; /* per multi-line setting, the file line of each value line */
};

/* Diagnostics: each message is "FILE:LINE: text" (LINE 0 when not tied to a line). */
struct config_errors {
    char **msg;
    size_t n;
    size_t n_warnings; /* how many of msg are warnings ("FILE:LINE: warning: ...") */
};

/* A config with every default. Returns NULL on ENOMEM. */
struct config *config_new_defaults(void);
/* Frees a config and its strings. NULL is a no-op. */
void config_free(struct config *cfg);

/* Parses a whole file's bytes (name is used in messages). On success returns 0 and a
 * new config in *out (caller owns). On error returns -EINVAL (bad content, *out NULL,
 * every problem appended to errs) or -ENOMEM. Unknown names are errors. errs may be
 * NULL. A success may still append warnings to errs (a setting given twice: the later
 * wins, as in Postfix); print them, but they are no reason to fail. Lines end in LF or
 * CRLF; a continuation line of a multi-line setting (limits, lists) keeps its own line,
 * joined with '\n', other settings join continuation lines with one space. */
int config_parse_buffer(const char *name, const char *buf, size_t len, struct config **out,
                        struct config_errors *errs);
/* As config_parse_buffer, but a file with errors still gives a config in *out (with
 * -EINVAL): every setting whose line was bad keeps its default, so further checks (rules,
 * listeners) can report their problems in the same run, as check-config does. The config
 * is for those checks only, never to run with. *out is NULL only on -ENOMEM. */
int config_parse_buffer_all(const char *name, const char *buf, size_t len, struct config **out,
                            struct config_errors *errs);
/* Reads and parses a file (a synchronous read: CLI and start-up only). -errno if it
 * cannot be read, with a message in errs. */
int config_load_file(const char *path, struct config **out, struct config_errors *errs);

void config_errors_clear(struct config_errors *errs);
/* Appends "FILE:LINE: text" to errs (a NULL errs is a no-op). Without memory the message
 * is lost; callers count failures themselves. For the parsers of other modules (rules,
 * override tables) that report into the same list. */
void config_errors_addf(struct config_errors *errs, const char *file, unsigned line,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Prints settings as "name = value" lines like postconf, sorted by name: all of them, or
 * only those that differ from the defaults (and, like postconf -n, those the file sets
 * explicitly).
 * Further lines of a multi-line value are indented four spaces. Returns 0 or -errno. */
int config_print(const struct config *cfg, FILE *out, bool non_default_only);

/* Prints one setting by name; -ENOENT if unknown. */
int config_print_one(const struct config *cfg, FILE *out, const char *name);

/* Prints one setting's value alone (postconf -h), multi-line values as they are; -ENOENT
 * if unknown. */
int config_print_value(const struct config *cfg, FILE *out, const char *name);

/* Parses a time ("100ms", "5s", "2m", "1h", "7d", bare seconds) into ms; a size
 * ("500M", "10K", bare bytes) into bytes. Return 0 or -EINVAL. Shared with limits_parse.c. */
int config_parse_time_ms(const char *s, int64_t *out);
int config_parse_size(const char *s, int64_t *out);

/* The multiplier of a size suffix: K, M, G (either case) are 1024, 1024^2, 1024^3;
 * any other character gives 0. For parsers of sizes inside longer tokens (limits_parse.c). */
int64_t config_size_suffix(char c);

/* Where a setting was defined: the line of its (last) definition, 0 when it has its
 * default, -ENOENT for an unknown name. */
int config_setting_line(const struct config *cfg, const char *name);
/* The file line of line k (0-based, split on '\n') of a multi-line setting's value, so
 * the rule parser can say FILE:LINE for rule k even with comment lines inside the block.
 * Returns 0 for a default value or k past the end, -ENOENT for an unknown name. */
int config_value_line(const struct config *cfg, const char *name, size_t k);
/* The file name the config was parsed from ("" for defaults). Borrowed from cfg. */
const char *config_source_name(const struct config *cfg);

/* True when every setting of a and b has the same value (bookkeeping is ignored). */
bool config_equal(const struct config *a, const struct config *b);

enum config_store_kind {
    CONFIG_STORE_MEMORY,
    CONFIG_STORE_REDIS_TCP,  /* redis://[:PASSWORD@]HOST[:PORT][/DB] */
    CONFIG_STORE_REDIS_UNIX, /* redis+unix:///PATH[?db=N[&password=PW]] */
    /* redis-sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTERNAME[/DB] */
    CONFIG_STORE_REDIS_SENTINEL,
    CONFIG_STORE_REDIS_CLUSTER, /* redis-cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...] */
};

/* Most sentinel or seed addresses one store URL may list. */
#define CONFIG_STORE_MAX_SEEDS 8

/* One HOST:PORT of a list of sentinels or cluster seed nodes. */
struct config_store_seed {
    char host[64]; /* IP address, IPv6 without brackets */
    int port;
};

/* A parsed store URL. Fixed buffers: nothing to free. */
struct config_store_url {
    enum config_store_kind kind;
    char host[256];     /* TCP: name or address, IPv6 without brackets */
    int port;           /* TCP: 6379 when not given */
    char path[108];     /* unix: socket path (fits sun_path) */
    char password[256]; /* "" = no AUTH; %XX escapes decoded */
    int db;             /* 0 when not given */
    /* sentinel: the sentinels' addresses (host and port above stay empty until a
     * sentinel names the master) and the master's name; cluster: the seed nodes */
    struct config_store_seed seeds[CONFIG_STORE_MAX_SEEDS];
    int nseeds;
    char master_name[128];
    const char *error; /* on -EINVAL: why, a static string */
};

/* Parses "memory", "redis://[:PASSWORD@]HOST[:PORT][/DB]" (IPv6 as [ADDR]),
 * "redis+unix:///PATH[?db=N][&password=PW]" or
 * "redis-sentinel://[:PASSWORD@]IP:PORT[,IP:PORT...]/MASTERNAME[/DB]" (the password is the
 * data nodes'; sentinels are given by address, at most CONFIG_STORE_MAX_SEEDS) or
 * "redis-cluster://[:PASSWORD@]IP:PORT[,IP:PORT...]" (seed nodes). Returns 0, or -EINVAL with
 * out->error set. Pure, no allocation; callable from anywhere. */
int config_parse_store_url(const char *s, struct config_store_url *out);

/* Writes the settings reference as a Markdown table (name, default, meaning), generated
 * from the table in config.c; README.md's "config" section is this output. */
int config_write_reference(FILE *out);
/* Writes the same reference as man(7) text (.SS per group, .TP per setting); the
 * SETTINGS section of postsurge.cf(5) is this output (`postsurge config --reference=man`).
 * Returns 0 or -errno. */
int config_write_man(FILE *out);

/* Testing hook, jansson style: route config.c's allocations through these functions
 * (NULL restores malloc/realloc/free). Not thread-safe; call before any config use. */
void config_set_alloc_funcs(void *(*malloc_fn)(size_t), void *(*realloc_fn)(void *, size_t),
                            void (*free_fn)(void *));
