/* stress: the overload state machine. The monitor (policyd/monitor.c) hands in one
 * sample per period (per-service process counts, log signals, cluster share); this
 * module turns them into a saturation percentage and normal/stressed transitions with
 * thresholds, hold times, hysteresis and a minimum interval between actions. The
 * controller (policyd/controller.c) applies or restores the override profile on each
 * transition. Pure: time is a parameter (milliseconds, any monotonic origin). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;

#define STRESS_SERVICE_NAME_MAX 128
#define STRESS_REASON_MAX 512

enum stress_state {
    STRESS_NORMAL = 0,
    STRESS_STRESSED = 1,
};

/* One public smtpd service at sample time. name is "SERVICE/TYPE" as in master.cf
 * ("smtp/inet", "127.0.0.1:2525/inet", "smtpd/pass"). limit is the process limit
 * (master.cf maxproc, '-' resolved to default_process_limit by the caller; 0 means
 * unlimited). busy counts smtpd processes with a client, alive all smtpd processes of
 * the service, waiting the clients queued for a process (listen backlog, or master's
 * private/smtpd backlog behind postscreen). */
struct stress_service_sample {
    char name[STRESS_SERVICE_NAME_MAX];
    unsigned busy;
    unsigned alive;
    unsigned limit;
    unsigned waiting;
};

/* One sample. services is borrowed for the duration of the call. */
struct stress_sample {
    int64_t now_ms;
    const struct stress_service_sample *services;
    size_t n_services;
    /* master logged "has reached its process limit" since the previous sample */
    bool process_limit_warning;
    /* postscreen is in STRESS mode (entered and not left, per the log) */
    bool postscreen_stress;
    /* percent of policy requests since the previous sample that carried stress=yes;
     * -1 when there were none. Informational only (see stress.c for why). */
    int policy_stress_pct;
    bool master_running;
    bool qmgr_running;
    /* percent of cluster nodes (this one included) whose *local* signals say stress
     * (struct stress_result.local_stress, as published by each node); -1 unknown. */
    int cluster_stressed_pct;
    /* An attack across the cluster over its configured rate (the attack detector's
     * attack_stress_* settings), named for the event log, e.g. "dictionary harvest:
     * `User unknown` rejects across the cluster reached 100 within 60 s"; NULL or "" when
     * none.
     * Borrowed for the call. An immediate signal, like a process-limit warning. */
    const char *attack;
};

/* Tunables; times in ms, thresholds in percent. */
struct stress_params {
    unsigned enter_threshold; /* 90 */
    int64_t enter_delay_ms;   /* 5 s */
    unsigned exit_threshold;  /* 60 */
    int64_t exit_delay_ms;    /* 120 s */
    int64_t min_interval_ms;  /* 60 s */
    unsigned cluster_quorum;  /* percent of nodes, 0 = off */
};

enum stress_event_kind {
    STRESS_EVENT_NONE = 0,
    STRESS_EVENT_ENTER,   /* normal -> stressed: apply the profile */
    STRESS_EVENT_EXIT,    /* stressed -> normal: restore */
    STRESS_EVENT_BLOCKED, /* a transition is due but held back by min_interval */
};

/* What one update decided. event.kind is NONE on most samples. */
struct stress_result {
    enum stress_state state;
    int64_t since_ms;                      /* when the current state began */
    unsigned saturation;                   /* node saturation, percent (max over services) */
    char busiest[STRESS_SERVICE_NAME_MAX]; /* service with that saturation, "" if none */
    bool local_stress; /* what this node's own signals say (publish it for quorum) */
    bool forced;       /* state is held by a manual "stress enter" */
    enum stress_event_kind event;
    bool event_forced;        /* the event came from stress_force() */
    int64_t blocked_until_ms; /* for STRESS_EVENT_BLOCKED: when the transition may run */
    /* For events: one line for the event log, e.g. "enter: saturation 100% >= 90% for
     * 5.0s (smtp/inet busy 4/4 waiting 0); signals: process-limit-warning". */
    char reason[STRESS_REASON_MAX];
};

enum stress_force {
    STRESS_FORCE_ENTER, /* enter now and hold until STRESS_FORCE_EXIT or _AUTO */
    STRESS_FORCE_EXIT,  /* leave now; automatic detection resumes (min_interval applies) */
    STRESS_FORCE_AUTO,  /* drop a hold without changing state */
};

struct stress_machine;

/* Fills p with the defaults above. */
void stress_params_default(struct stress_params *p);
/* Copies the stress_* settings of a parsed config into p (reads fields only). */
void stress_params_from_config(const struct config *cfg, struct stress_params *p);

/* Saturation of one service in percent: busy*100/limit, and when clients wait,
 * (busy+waiting)*100/limit, never below 100 if busy+waiting exceeds the limit. An
 * unlimited service (limit 0) is 0 %, or 100 % when clients wait. Capped at 10000. */
unsigned stress_service_saturation(const struct stress_service_sample *s);

/* New machine in STRESS_NORMAL since now_ms. params is copied. Returns NULL on ENOMEM
 * or when params are inconsistent (exit_threshold > enter_threshold, negative times). */
struct stress_machine *stress_new(const struct stress_params *params, int64_t now_ms);
/* NULL is a no-op. */
void stress_free(struct stress_machine *sm);
/* New tunables for a running machine (SIGHUP): state, holds and min_interval's clock are
 * kept; a run above enter_threshold or below exit_threshold counts again from the next
 * sample, so a delay never completes on time spent under the old thresholds. Returns 0,
 * or -EINVAL (params as for stress_new; nothing changed). */
int stress_set_params(struct stress_machine *sm, const struct stress_params *params);

/* Feeds one sample; fills *res (always). Samples must come in non-decreasing time.
 * Returns 0, or -EINVAL for a NULL argument or time going backwards (state unchanged). */
int stress_update(struct stress_machine *sm, const struct stress_sample *s,
                  struct stress_result *res);

/* A manual transition (`postsurge stress enter|exit`). Forced transitions ignore the
 * delays and min_interval (an administrator asked) but count as an action for
 * min_interval. res->event is ENTER/EXIT, or NONE when already in that state (a hold
 * is still set or dropped). Returns 0 or -EINVAL. */
int stress_force(struct stress_machine *sm, enum stress_force f, int64_t now_ms,
                 struct stress_result *res);

enum stress_state stress_state_get(const struct stress_machine *sm);
const char *stress_state_name(enum stress_state st);      /* "normal", "stressed" */
const char *stress_event_name(enum stress_event_kind ev); /* "enter", "exit", ... */
