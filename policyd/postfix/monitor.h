/* monitor: the daemon's view of one Postfix instance. Every interval it samples each
 * public smtpd service (inet smtpd entries and the `smtpd pass` service behind
 * postscreen): process limit, smtpd processes alive and busy, clients waiting for a
 * process, whether master and qmgr run, plus counts of the mail log signals lib/maillog
 * classifies. Limits come from `postconf -F` (spawned); processes and sockets from /proc
 * and sock_diag, read in libuv's thread pool. Samples go to a callback; convert them
 * with monitor_sample_to_stress() for lib/stress. Loop thread only. */
#pragma once

#include "maillog.h"
#include "stress.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define MONITOR_MAX_SERVICES 32

struct monitor;

/* One public smtpd service at sample time. */
struct monitor_service {
    char name[STRESS_SERVICE_NAME_MAX];    /* "SERVICE/TYPE": "smtp/inet", "smtpd/pass" */
    char service[STRESS_SERVICE_NAME_MAX]; /* master.cf service field: "127.0.0.1:2525" */
    bool pass;                             /* a postscreen pass service (type pass) */
    unsigned port;      /* TCP port clients connect to (postscreen's port for pass) */
    unsigned limit;     /* process limit, '-' resolved; 0 = unlimited */
    unsigned alive;     /* smtpd processes of this service */
    unsigned busy;      /* of those, the ones holding a client connection */
    unsigned waiting;   /* clients queued for a process: listen (or private/NAME) backlog */
    bool waiting_known; /* false when the backlog could not be read */
};

/* Mail log signals counted since the previous sample. */
struct monitor_log_counts {
    unsigned lines;
    unsigned process_limit;      /* master: "has reached its process limit" */
    unsigned postscreen_enter;   /* postscreen: entering STRESS mode */
    unsigned postscreen_leave;   /* postscreen: leaving STRESS mode */
    unsigned ports_busy;         /* postscreen: all server ports busy */
    unsigned limit_exceeded;     /* smtpd: ... limit exceeded */
    unsigned anvil_stats;        /* anvil: statistics */
    unsigned lost_after_connect; /* smtpd: lost connection after CONNECT */
    unsigned rejects;            /* smtpd/postscreen: reject lines */
    unsigned truncated_lines;    /* log lines longer than the splitter's maximum */
    char last_process_limit_service[STRESS_SERVICE_NAME_MAX]; /* from the last warning */
};

struct monitor_sample {
    uint64_t now_ms; /* uv_now() when the sample was taken */
    struct monitor_service services[MONITOR_MAX_SERVICES];
    size_t n_services;
    bool limits_known;   /* postconf has answered at least once */
    bool master_running; /* master.pid names a live process called master */
    bool qmgr_running;   /* a child of master called qmgr */
    int master_pid;      /* 0 when not running */
    struct monitor_log_counts log;
    bool postscreen_stress; /* in STRESS mode per the log (entered, not yet left) */
    uint64_t scan_us;       /* time the /proc and sock_diag scan took (thread pool) */
    uint64_t skipped_ticks; /* ticks skipped so far because a scan was still running */
};

/* What one scan needs and finds (/proc, sock_diag). The loop fills `in` before the scan
 * and reads `out` after it; the scanner touches nothing else. A plain struct without
 * pointers, so the privileged helper (privsep.c) can receive and return it as bytes. */
struct monitor_scan {
    /* in */
    struct monitor_service svc[MONITOR_MAX_SERVICES];
    size_t n_svc;
    char queue_dir[1024];
    char config_dir[1024];
    bool proc_only; /* skip sock_diag for TCP (monitor_opts.proc_only) */
    /* out */
    int master_pid;
    bool master_running, qmgr_running;
    uint64_t scan_us;
    int64_t cfg_stamp; /* mtimes of main.cf and master.cf combined */
};

/* Runs one scan synchronously (blocks for milliseconds: thread pool or helper only).
 * Reads master.pid under sc->queue_dir, /proc/PID/... of master's children and their
 * /proc/PID/fd (other users' processes: needs privileges), sock_diag. */
void monitor_scan_run(struct monitor_scan *sc);

/* Runs scans somewhere else than the thread pool (the privileged helper). start() begins
 * a scan of sc (borrowed until done) and returns 0, then calls done(done_arg, status)
 * exactly once later, never from inside start(), with sc's out fields filled when
 * status is 0; or returns a negative errno and never calls done. */
typedef void (*monitor_scan_done_fn)(void *done_arg, int status);
struct monitor_scanner {
    int (*start)(void *arg, struct monitor_scan *sc, monitor_scan_done_fn done, void *done_arg);
    void *arg;
};

/* The sample is borrowed for the call. */
typedef void (*monitor_sample_cb)(struct monitor *m, const struct monitor_sample *s, void *arg);
/* Every parsed mail log line (borrowed), for the attack detector and the event log. */
typedef void (*monitor_log_cb)(struct monitor *m, const struct maillog_record *rec, void *arg);
typedef void (*monitor_closed_cb)(void *arg);

struct monitor_opts {
    const char *config_dir;      /* postfix_config_directory (copied); required */
    const char *maillog_file;    /* maillog_file (copied); NULL or "": no log tailing */
    const char *syslog_name;     /* maillog_syslog_name (copied): the journal entries read;
                                    NULL or "": Postfix's syslog_name, from postconf */
    uint64_t interval_ms;        /* monitor_interval; 0: 1000 */
    uint64_t command_timeout_ms; /* command_timeout for postconf; 0: 30000 */
    const char *postconf;        /* postconf program; NULL: "postconf" looked up in PATH */
    bool log_from_start;         /* read the whole existing log (tests); default: from its end */
    bool proc_only;              /* /proc/PID/net/tcp only, no sock_diag (tests of the fallback) */
    monitor_log_cb on_log;       /* may be NULL */
    struct monitor_scanner scanner; /* start NULL: scan in libuv's thread pool */
};

/* New monitor; nothing runs until monitor_start(). cb receives every sample, arg is
 * passed back to cb and on_log. Returns NULL on ENOMEM or a missing config_dir. */
struct monitor *monitor_new(uv_loop_t *loop, const struct monitor_opts *opts, monitor_sample_cb cb,
                            void *arg);
/* Reads the limits (spawns postconf), starts the tick timer and the log tail. Returns 0
 * or a negative errno. */
int monitor_start(struct monitor *m);
/* What the mail log is read from: "journal" (the systemd journal), the file's path, or ""
 * (no mail log, or not started yet). Borrowed; valid until monitor_close(). */
const char *monitor_log_source(const struct monitor *m);
/* The syslog_name the journal is filtered on ("postfix"); "" for a file, no mail log, or
 * before it is known. Borrowed; valid until monitor_close(). */
const char *monitor_log_filter(const struct monitor *m);
/* Re-reads master.cf services and limits (after a reload or an override). The monitor
 * also does this by itself when main.cf or master.cf change or master restarts. */
void monitor_refresh_limits(struct monitor *m);
/* Stops timers, kills a running postconf, waits for a scan in the thread pool, closes
 * the tail, frees m, then calls closed (may be NULL). No sample callback after this call.
 * NULL is a no-op. */
void monitor_close(struct monitor *m, monitor_closed_cb closed, void *arg);

/* Fills out (and svc[0..cap)) from s for stress_update(); policy_stress_pct and
 * cluster_stressed_pct are set to -1 (the caller knows them). out->services points into
 * svc. Returns the number of services copied. */
size_t monitor_sample_to_stress(const struct monitor_sample *s, struct stress_service_sample *svc,
                                size_t cap, struct stress_sample *out);

/* Parses `postconf -F` output and the default process limit into services (pure helper,
 * exposed for tests and for the controller). Keeps inet services whose command is smtpd
 * and pass services whose command is smtpd; pass services get the port of the first inet
 * postscreen service. Returns the number of services, or -EINVAL on unparsable text. */
int monitor_parse_postconf_F(const char *text, size_t len, unsigned default_limit,
                             struct monitor_service *out, size_t cap);
