/* stress: the overload state machine. Each sample yields a node saturation (the busiest
 * public smtpd service) and a "local" verdict latched with hysteresis: on when saturation
 * stays >= enter_threshold for enter_delay (or at once on an immediate signal), off when
 * it stays below exit_threshold for exit_delay. The state follows local || quorum ||
 * manual hold, at most one transition per min_interval. */
#include "stress.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define SAT_CAP 10000u

struct stress_machine {
    struct stress_params p;
    enum stress_state state;
    int64_t since;
    bool have_now;
    int64_t last_now;
    bool acted; /* a transition happened: last_action is valid */
    int64_t last_action;
    bool local; /* latched verdict of this node's own signals */
    char local_reason[STRESS_REASON_MAX];
    bool hot; /* saturation >= enter_threshold since hot_since */
    int64_t hot_since;
    bool cool; /* saturation < exit_threshold and no immediate signal since cool_since */
    int64_t cool_since;
    bool hold_enter; /* manual "stress enter" */
    bool blocked_reported;
};

void stress_params_default(struct stress_params *p)
{
    p->enter_threshold = 90;
    p->enter_delay_ms = 5000;
    p->exit_threshold = 60;
    p->exit_delay_ms = 120000;
    p->min_interval_ms = 60000;
    p->cluster_quorum = 0;
}

static unsigned clamp_pct(int64_t v)
{
    if (v < 0)
        return 0;
    if (v > (int64_t)SAT_CAP)
        return SAT_CAP;
    return (unsigned)v;
}

void stress_params_from_config(const struct config *cfg, struct stress_params *p)
{
    stress_params_default(p);
    if (!cfg)
        return;
    p->enter_threshold = clamp_pct(cfg->stress_enter_threshold);
    p->enter_delay_ms = cfg->stress_enter_delay;
    p->exit_threshold = clamp_pct(cfg->stress_exit_threshold);
    p->exit_delay_ms = cfg->stress_exit_delay;
    p->min_interval_ms = cfg->stress_min_interval;
    p->cluster_quorum = clamp_pct(cfg->stress_cluster_quorum);
}

unsigned stress_service_saturation(const struct stress_service_sample *s)
{
    if (s->limit == 0)
        return s->waiting ? 100 : 0;
    uint64_t demand = (uint64_t)s->busy + s->waiting;
    uint64_t pct = demand * 100 / s->limit;
    /* Integer division hides a small overflow on large limits (1001/1000 is 100 %); a
     * client that has to wait must read as "above 100". */
    if (s->waiting && demand > s->limit && pct <= 100)
        pct = 101;
    return pct > SAT_CAP ? SAT_CAP : (unsigned)pct;
}

/* Clients queue for a process only when demand exceeds the limit; a backlog while a
 * process is idle is the moment between connect and accept. */
static bool service_overflows(const struct stress_service_sample *s)
{
    return s->limit > 0 && s->waiting > 0 && (uint64_t)s->busy + s->waiting > s->limit;
}

static bool params_valid(const struct stress_params *p)
{
    return p && p->exit_threshold <= p->enter_threshold && p->enter_delay_ms >= 0 &&
           p->exit_delay_ms >= 0 && p->min_interval_ms >= 0;
}

struct stress_machine *stress_new(const struct stress_params *params, int64_t now_ms)
{
    if (!params_valid(params))
        return NULL;
    struct stress_machine *sm = calloc(1, sizeof(*sm));
    if (!sm)
        return NULL;
    sm->p = *params;
    sm->state = STRESS_NORMAL;
    sm->since = now_ms;
    sm->have_now = true;
    sm->last_now = now_ms;
    return sm;
}

void stress_free(struct stress_machine *sm)
{
    free(sm);
}

int stress_set_params(struct stress_machine *sm, const struct stress_params *params)
{
    if (!sm || !params_valid(params))
        return -EINVAL;
    sm->p = *params;
    sm->hot = false;
    sm->cool = false;
    return 0;
}

enum stress_state stress_state_get(const struct stress_machine *sm)
{
    return sm->state;
}

const char *stress_state_name(enum stress_state st)
{
    return st == STRESS_STRESSED ? "stressed" : "normal";
}

const char *stress_event_name(enum stress_event_kind ev)
{
    switch (ev) {
    case STRESS_EVENT_ENTER:
        return "enter";
    case STRESS_EVENT_EXIT:
        return "exit";
    case STRESS_EVENT_BLOCKED:
        return "blocked";
    case STRESS_EVENT_NONE:
        break;
    }
    return "none";
}

/* Appends to a fixed buffer; output past the end is cut, never overflows. */
__attribute__((format(printf, 3, 4))) static void bappend(char *buf, size_t cap, const char *fmt,
                                                          ...)
{
    size_t len = strnlen(buf, cap);
    if (len + 1 >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* The per-sample view derived from a sample. */
struct view {
    unsigned sat;
    const struct stress_service_sample *busiest;
    const struct stress_service_sample *overflow;
    bool plw, postscreen, immediate, quorum;
    const char *attack; /* NULL when no attack signal */
};

static void compute_view(const struct stress_machine *sm, const struct stress_sample *s,
                         struct view *v)
{
    memset(v, 0, sizeof(*v));
    /* With master down nothing serves clients: counts are stale and no signal can mean
     * overload of a running node. */
    if (s->master_running) {
        for (size_t i = 0; i < s->n_services; i++) {
            const struct stress_service_sample *svc = &s->services[i];
            unsigned sat = stress_service_saturation(svc);
            if (!v->busiest || sat > v->sat) {
                v->sat = sat;
                v->busiest = svc;
            }
            if (!v->overflow && service_overflows(svc))
                v->overflow = svc;
        }
        v->plw = s->process_limit_warning;
        v->postscreen = s->postscreen_stress;
        v->attack = s->attack && s->attack[0] ? s->attack : NULL;
    }
    /* stress=yes in policy requests is not a trigger: master sets it for 1000 s after a
     * process-limit warning and our own profile forces it, so it would hold stress long
     * after the overload ended. It is reported as a signal only. */
    v->immediate = v->plw || v->overflow || v->postscreen || v->attack;
    v->quorum = sm->p.cluster_quorum > 0 && s->cluster_stressed_pct >= 0 &&
                (unsigned)s->cluster_stressed_pct >= sm->p.cluster_quorum;
}

static void describe_service(char *buf, size_t cap, const struct stress_service_sample *svc)
{
    bappend(buf, cap, "%.*s busy %u/%u waiting %u", (int)STRESS_SERVICE_NAME_MAX, svc->name,
            svc->busy, svc->limit, svc->waiting);
}

static void describe_signals(char *buf, size_t cap, const struct stress_sample *s,
                             const struct view *v)
{
    size_t before = strnlen(buf, cap);
    bappend(buf, cap, "; signals:");
    size_t mark = strnlen(buf, cap);
    if (v->plw)
        bappend(buf, cap, " process-limit-warning");
    if (v->postscreen)
        bappend(buf, cap, " postscreen-stress");
    if (v->overflow)
        bappend(buf, cap, " waiting-clients");
    if (v->attack)
        bappend(buf, cap, " attack");
    if (s->policy_stress_pct > 0)
        bappend(buf, cap, " policy-stress=%d%%", s->policy_stress_pct);
    if (!s->master_running)
        bappend(buf, cap, " master-down");
    if (!s->qmgr_running)
        bappend(buf, cap, " qmgr-down");
    if (s->cluster_stressed_pct >= 0)
        bappend(buf, cap, " cluster=%d%%", s->cluster_stressed_pct);
    if (strnlen(buf, cap) == mark)
        buf[before] = '\0';
}

static void latch_on_reason(struct stress_machine *sm, const struct view *v, int64_t now)
{
    char *r = sm->local_reason;
    size_t cap = sizeof(sm->local_reason);
    r[0] = '\0';
    /* An attack first: it is the cause when it also fills the process slots. */
    if (v->attack) {
        bappend(r, cap, "attack: %.400s", v->attack);
    } else if (v->overflow) {
        bappend(r, cap, "clients waiting for a process (");
        describe_service(r, cap, v->overflow);
        bappend(r, cap, ")");
    } else if (v->plw) {
        bappend(r, cap, "process limit reached (master warning)");
    } else if (v->postscreen) {
        bappend(r, cap, "postscreen entered STRESS mode");
    } else {
        bappend(r, cap, "saturation %u%% >= %u%% for %.1fs", v->sat, sm->p.enter_threshold,
                (double)(now - sm->hot_since) / 1000.0);
        if (v->busiest) {
            bappend(r, cap, " (");
            describe_service(r, cap, v->busiest);
            bappend(r, cap, ")");
        }
    }
}

static void latch_off_reason(struct stress_machine *sm, const struct view *v, int64_t now)
{
    sm->local_reason[0] = '\0';
    bappend(sm->local_reason, sizeof(sm->local_reason), "saturation %u%% < %u%% for %.1fs", v->sat,
            sm->p.exit_threshold, (double)(now - sm->cool_since) / 1000.0);
}

static void fill_result(const struct stress_machine *sm, const struct view *v,
                        struct stress_result *res)
{
    memset(res, 0, sizeof(*res));
    res->state = sm->state;
    res->since_ms = sm->since;
    res->local_stress = sm->local;
    res->forced = sm->hold_enter;
    if (v) {
        res->saturation = v->sat;
        if (v->busiest)
            snprintf(res->busiest, sizeof(res->busiest), "%.*s", (int)sizeof(res->busiest) - 1,
                     v->busiest->name);
    }
}

/* Why the wanted state is what it is, for the event line. */
static void want_reason(const struct stress_machine *sm, const struct stress_sample *s,
                        const struct view *v, bool want, char *buf, size_t cap)
{
    if (want) {
        if (sm->hold_enter)
            bappend(buf, cap, "held by manual stress enter");
        else if (sm->local)
            bappend(buf, cap, "%s", sm->local_reason);
        else
            bappend(buf, cap, "cluster quorum: %d%% of nodes stressed >= %u%%",
                    s->cluster_stressed_pct, sm->p.cluster_quorum);
    } else {
        bappend(buf, cap, "%s", sm->local_reason[0] ? sm->local_reason : "calm");
        if (sm->p.cluster_quorum > 0)
            bappend(buf, cap, ", cluster below quorum %u%%", sm->p.cluster_quorum);
    }
    describe_signals(buf, cap, s, v);
}

int stress_update(struct stress_machine *sm, const struct stress_sample *s,
                  struct stress_result *res)
{
    if (!sm || !s || !res || (s->n_services && !s->services))
        return -EINVAL;
    int64_t now = s->now_ms;
    if (sm->have_now && now < sm->last_now) {
        fill_result(sm, NULL, res);
        return -EINVAL;
    }
    sm->have_now = true;
    sm->last_now = now;

    struct view v;
    compute_view(sm, s, &v);

    bool hot = v.sat >= sm->p.enter_threshold;
    if (hot && !sm->hot)
        sm->hot_since = now;
    sm->hot = hot;
    /* An immediate signal also breaks a calm run: the exit delay starts again after it. */
    bool cool = v.sat < sm->p.exit_threshold && !v.immediate;
    if (cool && !sm->cool)
        sm->cool_since = now;
    sm->cool = cool;

    /* Between the thresholds neither branch fires: that gap is the hysteresis. */
    if (!sm->local) {
        if (v.immediate || (hot && now - sm->hot_since >= sm->p.enter_delay_ms)) {
            sm->local = true;
            latch_on_reason(sm, &v, now);
        }
    } else if (cool && now - sm->cool_since >= sm->p.exit_delay_ms) {
        sm->local = false;
        latch_off_reason(sm, &v, now);
    }

    bool want = sm->hold_enter || sm->local || v.quorum;
    enum stress_state target = want ? STRESS_STRESSED : STRESS_NORMAL;
    fill_result(sm, &v, res);
    if (target == sm->state) {
        sm->blocked_reported = false;
        return 0;
    }

    char why[STRESS_REASON_MAX] = "";
    want_reason(sm, s, &v, want, why, sizeof(why));
    if (sm->acted && now - sm->last_action < sm->p.min_interval_ms) {
        /* Report a held-back transition once; it runs at the first sample after
         * the interval expires if it is still due then. */
        if (!sm->blocked_reported) {
            sm->blocked_reported = true;
            res->event = STRESS_EVENT_BLOCKED;
            res->blocked_until_ms = sm->last_action + sm->p.min_interval_ms;
            snprintf(res->reason, sizeof(res->reason),
                     "%s due but held by stress_min_interval for %.1fs: %s",
                     want ? "enter" : "exit", (double)(res->blocked_until_ms - now) / 1000.0, why);
        }
        return 0;
    }
    sm->state = target;
    sm->since = now;
    sm->acted = true;
    sm->last_action = now;
    sm->blocked_reported = false;
    fill_result(sm, &v, res);
    res->event = want ? STRESS_EVENT_ENTER : STRESS_EVENT_EXIT;
    snprintf(res->reason, sizeof(res->reason), "%s: %s", want ? "enter" : "exit", why);
    return 0;
}

int stress_force(struct stress_machine *sm, enum stress_force f, int64_t now_ms,
                 struct stress_result *res)
{
    if (!sm || !res)
        return -EINVAL;
    if (sm->have_now && now_ms < sm->last_now)
        now_ms = sm->last_now; /* a clock step must not undo the forced action */
    sm->have_now = true;
    sm->last_now = now_ms;
    enum stress_state target = sm->state;
    switch (f) {
    case STRESS_FORCE_ENTER:
        sm->hold_enter = true;
        target = STRESS_STRESSED;
        break;
    case STRESS_FORCE_EXIT:
        sm->hold_enter = false;
        /* Automatic detection starts from scratch: a fresh enter_delay is needed
         * (immediate signals still act, after min_interval). */
        sm->local = false;
        sm->hot = false;
        sm->local_reason[0] = '\0';
        target = STRESS_NORMAL;
        break;
    case STRESS_FORCE_AUTO:
        sm->hold_enter = false;
        break;
    default:
        return -EINVAL;
    }
    fill_result(sm, NULL, res);
    if (target == sm->state)
        return 0;
    sm->state = target;
    sm->since = now_ms;
    sm->acted = true;
    sm->last_action = now_ms;
    sm->blocked_reported = false;
    fill_result(sm, NULL, res);
    res->event = target == STRESS_STRESSED ? STRESS_EVENT_ENTER : STRESS_EVENT_EXIT;
    res->event_forced = true;
    snprintf(res->reason, sizeof(res->reason), "%s: manual stress %s",
             stress_event_name(res->event), stress_event_name(res->event));
    return 0;
}
