/* ctl_internal: what the files of the overload controller share (controller.c, jobs.c,
 * profile.c, status.c, attack.c, ctlsock.c, offline.c). Not for other folders: they use
 * controller.h. */
#pragma once

#include "controller.h"

#include "util/fsutil.h"
#include "server/engine.h"
#include "util/log.h"
#include "util/metrics.h"
#include "postfix/confedit.h"
#include "postfix/monitor.h"
#include "attack.h"
#include "node.h"
#include "overrides.h"
#include "privsep/privsep.h"
#include "util/spawn.h"
#include "stress.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_MAX_LINE 1024
#define CTL_MAX_CLIENTS 16
/* A restore that failed is tried again after this long. */
#define RESTORE_RETRY_MS 30000

enum job_kind { JOB_INIT, JOB_APPLY, JOB_RESTORE };

struct job {
    struct controller *c;
    enum job_kind kind;
    int step;
    uint64_t t0;
    /* The executor's answer (postfix/confedit's JSON, from the privileged helper or the
     * thread pool); NULL with reply_status < 0 when none came. */
    json_t *reply;
    int reply_status;
    /* thread-pool run of the executor: the operation, its payload, its answer */
    uv_work_t work;
    enum privmsg_op op;
    char *payload;
    size_t plen;
    json_t *work_reply;
    /* last command (init: postconf -d, -F) */
    bool failed;
    struct spawn *sp;
    char *out;
    size_t out_len;
};

struct ctl_client {
    uv_pipe_t h;
    struct controller *c;
    char buf[CTL_MAX_LINE];
    size_t len;
    bool answered, closing;
    /* From SO_PEERCRED at accept: root or the daemon's user may change things; a member of
     * the daemon's group only reads. */
    bool may_change;
    long peer_uid;
    /* A `limits` command awaits the engine's answer (a store round trip): the client
     * outlives its handle until then (closed: the handle is gone, free on the answer). */
    bool waiting, closed;
    struct ctl_client *next;
};

struct controller {
    struct server *srv;    /* NULL offline */
    struct engine *engine; /* the rate limits' stress input (borrowed); NULL offline */
    uv_loop_t *loop;
    char *config_dir, *state_dir, *journal_path, *socket_path;
    char *postconf, *postfix, *main_path, *master_path;
    char *attack_action;
    uint64_t cmd_timeout_ms;
    bool dry_run, overrides_on, monitor_on;
    char *profile_main, *profile_master;
    /* A profile from SIGHUP not taken yet (a job runs or overrides are in force). */
    char *pending_main, *pending_master;
    struct stress_params params;

    struct monitor *mon;
    struct privsep *ps; /* the privileged helper (serve started as root), or NULL */
    /* The executor run in the thread pool when no helper does it (user = root, dry run,
     * offline restore); created at its first use. */
    struct confedit *ce;
    bool unavailable; /* overrides cannot run (started as non-root, helper gone) */
    char unavailable_why[256];
    struct stress_machine *sm;
    struct node *node;
    struct stress_result last;
    bool have_result;
    struct monitor_sample *sample; /* last sample */
    bool have_sample;
    int64_t mono_epoch_wall; /* wall ms at uv_now() == 0, for "since" */

    struct overrides_params *known;
    struct overrides_services *svcs;
    struct overrides_profile *resolved;
    bool init_done, profile_ready, postfix_absent;
    char profile_error[512];

    struct overrides_journal *journal; /* something to restore (on disk too) */
    bool journal_bad;                  /* a corrupt journal: change nothing */
    bool recovering;                   /* a journal from before start: decide on a sample */
    bool apply_failed;                 /* this episode's apply failed: do not retry */
    bool dry_applied;                  /* log only: "applied" in the log, nothing changed */
    /* This episode's apply found every setting already in force (another postsurge, an
     * earlier run whose journal is elsewhere, or the administrator): nothing was changed,
     * nothing is to restore, and the apply is not tried again until the next episode. */
    bool already_in_force;
    /* The Postfix configuration directory, open (before the privilege drop) to hold an
     * exclusive flock on it while this node has overrides in force: a second postsurge
     * on the same instance finds it taken and changes nothing. -1: no lock possible. */
    int lock_fd;
    bool lock_held;
    uint64_t restore_retry_at;
    struct job *job;
    char last_error[512];
    uint64_t commands_run, command_failures, applies, restores, conflicts;
    /* Samples evaluated (monitor samples or idle ticks), counted after the reconcile each
     * one leads to: a test that waits for it to advance knows the controller had that
     * many chances to act. */
    uint64_t samples;

    uv_pipe_t ctl;
    bool ctl_open;
    /* Who may change things through the control socket (root and this user) and the
     * group whose members may read (status, events, limits list/show/top): the daemon's
     * own ids, with their names for the refusal message, looked up at ctlsock_open. */
    uid_t ctl_uid;
    gid_t ctl_gid;
    char ctl_user[64], ctl_group[64];
    /* Without the monitor (monitor = no, or no Postfix on this host): a tick at
     * monitor_interval that feeds the state machine an empty sample, so forced stress,
     * the node status in the store and the cluster view still work. */
    uv_timer_t idle_tick;
    bool idle_tick_on;
    uint64_t idle_tick_ms;
    struct ctl_client *clients;
    size_t n_clients;

    struct decider decider;
    struct decider *inner;
    uint64_t attack_answers;
    /* The attack stress signal of the last sample ("" when none), for stress-enter. */
    char attack[256];

    bool stopping;
    int closing_parts;
    /* offline restore */
    bool offline;
    int offline_rc;
};

/* Overrides are only logged, as a dry run: stress_dry_run, or stress_overrides = no (the
 * default). A journal from an earlier run is still restored for real. */
static inline bool ctl_log_only(const struct controller *c)
{
    return c->dry_run || !c->overrides_on;
}

/* The setting that makes overrides log-only, for log lines and events. */
static inline const char *ctl_log_only_why(const struct controller *c)
{
    return c->dry_run ? "stress_dry_run" : "stress_overrides = no";
}

/* controller.c: transitions, reconcile, sample and log callbacks, life cycle */
void ctl_event(struct controller *c, const char *kind, bool warn, json_t *extra, const char *fmt,
               ...) __attribute__((format(printf, 5, 6)));
void ctl_journal_to_store(struct controller *c, const char *json);
void ctl_set_error(struct controller *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void ctl_reconcile(struct controller *c);
void ctl_on_transition(struct controller *c, const struct stress_result *r);
struct controller *ctl_alloc(uv_loop_t *loop, const struct config *cfg);

/* jobs.c: the init, apply and restore jobs (postconf -d/-F, then postfix/confedit's
 * operations through the helper or in the thread pool) */
bool ctl_lock(struct controller *c);
void job_start(struct controller *c, enum job_kind kind);
json_t *ctl_settings_json(const struct overrides_journal *j);

/* profile.c: the override profile, resolved at start and taken again on SIGHUP */
int ctl_resolve_profile(const struct controller *c, const char *main_spec, const char *master_spec,
                        struct overrides_profile **out, char *err, size_t errlen);
void ctl_drop_pending_profile(struct controller *c);
void ctl_take_pending_profile(struct controller *c);
void ctl_on_reload(struct server *srv, const struct config *old, void *arg);

/* status.c: the status JSON (/status, the control socket), cluster view, metrics */
json_t *ctl_status_json(struct controller *c);
json_t *ctl_cluster_json(struct controller *c);
int ctl_http_status(struct server *srv, json_t *status, void *arg);
int ctl_collect(struct metrics_out *o, void *arg);

/* attack.c: the attack decider in front of the rate limits */
int attack_decide(struct decider *d, struct decision *dec);
void attack_decide_cancel(struct decider *d, struct decision *dec);

/* ctlsock.c: the control socket server */
void ctlsock_client_close(struct ctl_client *cl);
int ctlsock_open(struct controller *c);

/* offline.c: `postsurge restore` without a running daemon */
