/* Unit tests of lib/stress.c: scripted samples and times drive the state machine; each
 * script step states the expected state and event. Covers thresholds, delays,
 * hysteresis, min_interval, immediate triggers, forced transitions and cluster quorum. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "stress.h"

/* One step: time, the single service's counts, node signals, expectations. */
struct step {
    int64_t t;
    unsigned busy, limit, waiting;
    bool plw;     /* process-limit warning */
    bool pstress; /* postscreen STRESS */
    int cluster;  /* cluster share, -1 unknown */
    enum stress_state want_state;
    enum stress_event_kind want_event;
};

#define S(t_, b_, l_, st_, ev_)                                                                    \
    {                                                                                              \
        t_, b_, l_, 0, false, false, -1, st_, ev_                                                  \
    }
#define N STRESS_NORMAL
#define X STRESS_STRESSED
#define E0 STRESS_EVENT_NONE
#define EN STRESS_EVENT_ENTER
#define EX STRESS_EVENT_EXIT
#define EB STRESS_EVENT_BLOCKED

static struct stress_params params(void)
{
    struct stress_params p;
    stress_params_default(&p);
    p.enter_delay_ms = 5000;
    p.exit_delay_ms = 20000;
    p.min_interval_ms = 10000;
    return p;
}

static void sample_of(const struct step *st, struct stress_service_sample *svc,
                      struct stress_sample *s)
{
    memset(svc, 0, sizeof(*svc));
    strcpy(svc->name, "smtp/inet");
    svc->busy = st->busy;
    svc->alive = st->busy;
    svc->limit = st->limit;
    svc->waiting = st->waiting;
    memset(s, 0, sizeof(*s));
    s->now_ms = st->t;
    s->services = svc;
    s->n_services = 1;
    s->process_limit_warning = st->plw;
    s->postscreen_stress = st->pstress;
    s->policy_stress_pct = -1;
    s->master_running = true;
    s->qmgr_running = true;
    s->cluster_stressed_pct = st->cluster;
}

/* Feeds the steps to sm and checks each step's state and event. */
static void feed_steps(struct stress_machine *sm, const struct step *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct stress_service_sample svc;
        struct stress_sample s;
        struct stress_result r;
        sample_of(&steps[i], &svc, &s);
        assert_int_equal(stress_update(sm, &s, &r), 0);
        if (r.state != steps[i].want_state || r.event != steps[i].want_event)
            fail_msg("step %zu (t=%lld sat=%u): state %s event %s, want %s %s; reason: %s", i,
                     (long long)steps[i].t, r.saturation, stress_state_name(r.state),
                     stress_event_name(r.event), stress_state_name(steps[i].want_state),
                     stress_event_name(steps[i].want_event), r.reason);
        if (r.event != STRESS_EVENT_NONE)
            assert_true(strlen(r.reason) > 0);
    }
}

static void run_script(const struct stress_params *p, const struct step *steps, size_t n)
{
    struct stress_machine *sm = stress_new(p, 0);
    assert_non_null(sm);
    feed_steps(sm, steps, n);
    stress_free(sm);
}

static void test_stress_saturation_formula(void **state)
{
    (void)state;
    static const struct {
        unsigned busy, limit, waiting, want;
    } cases[] = {
        {0, 100, 0, 0}, {50, 100, 0, 50},     {4, 4, 0, 100},         {4, 4, 2, 150},
        {2, 4, 1, 75},  {1000, 1000, 1, 101}, {0, 0, 0, 0},           {7, 0, 0, 0},
        {0, 0, 3, 100}, {3, 4, 2, 125},       {4000000, 1, 0, 10000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct stress_service_sample s = {
            .busy = cases[i].busy, .limit = cases[i].limit, .waiting = cases[i].waiting};
        assert_int_equal(stress_service_saturation(&s), cases[i].want);
    }
}

static void test_stress_enters_after_delay(void **state)
{
    (void)state;
    struct stress_params p = params();
    const struct step steps[] = {
        S(1000, 10, 20, N, E0),                         /* 50 % */
        S(2000, 18, 20, N, E0),                         /* 90 %: run starts */
        S(4000, 19, 20, N, E0), S(6999, 20, 20, N, E0), /* 4999 ms: not yet */
        S(7000, 18, 20, X, EN),                         /* 5000 ms at >= 90 % */
        S(8000, 20, 20, X, E0),
    };
    run_script(&p, steps, sizeof(steps) / sizeof(steps[0]));
}

static void test_stress_dip_restarts_enter_delay(void **state)
{
    (void)state;
    struct stress_params p = params();
    const struct step steps[] = {
        S(0, 19, 20, N, E0),    S(4000, 19, 20, N, E0), S(4500, 17, 20, N, E0), /* 85 % */
        S(5000, 19, 20, N, E0), S(9000, 19, 20, N, E0), S(10000, 19, 20, X, EN),
    };
    run_script(&p, steps, sizeof(steps) / sizeof(steps[0]));
}

static void test_stress_exact_thresholds(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.enter_delay_ms = 0;
    p.exit_delay_ms = 0;
    p.min_interval_ms = 0;
    const struct step steps[] = {
        S(0, 89, 100, N, E0),
        S(1, 90, 100, X, EN), /* >= enter */
        S(2, 60, 100, X, E0), /* 60 is not below 60 */
        S(3, 59, 100, N, EX),
    };
    run_script(&p, steps, sizeof(steps) / sizeof(steps[0]));
}

static void test_stress_hysteresis_does_not_flap(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct step steps[64];
    size_t n = 0;
    /* Enter at 95 %, then oscillate 60..90 % (exclusive of 90) every second for a minute:
     * never below exit, never long at enter: stays stressed with no events. */
    for (int64_t t = 0; t <= 5000; t += 1000)
        steps[n++] = (struct step)S(t, 19, 20, t == 5000 ? X : N, t == 5000 ? EN : E0);
    for (int i = 0; i < 40; i++)
        steps[n++] = (struct step)S(6000 + i * 1000, i % 2 ? 12 : 17, 20, X, E0); /* 60/85 */
    /* Below 60 % for exit_delay (20 s): leaves once. */
    steps[n++] = (struct step)S(50000, 11, 20, X, E0);
    steps[n++] = (struct step)S(69999, 0, 20, X, E0);
    steps[n++] = (struct step)S(70000, 5, 20, N, EX);
    steps[n++] = (struct step)S(71000, 17, 20, N, E0); /* 85 %: below enter, stays */
    assert_true(n <= sizeof(steps) / sizeof(steps[0]));
    run_script(&p, steps, n);
}

static void test_stress_oscillation_in_normal_does_not_enter(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct step steps[40];
    for (size_t i = 0; i < 40; i++)
        steps[i] = (struct step)S((int64_t)i * 1000, i % 2 ? 12 : 17, 20, N, E0);
    run_script(&p, steps, 40);
}

static void test_stress_exit_needs_calm_for_delay(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.min_interval_ms = 0;
    const struct step steps[] = {
        S(0, 20, 20, N, E0),    S(5000, 20, 20, X, EN),  S(6000, 2, 20, X, E0), /* calm */
        S(20000, 2, 20, X, E0), S(25000, 13, 20, X, E0), /* 65 %: calm run broken */
        S(26000, 2, 20, X, E0), S(45999, 2, 20, X, E0),  S(46000, 2, 20, N, EX),
    };
    run_script(&p, steps, sizeof(steps) / sizeof(steps[0]));
}

static void test_stress_min_interval_delays_transition(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.exit_delay_ms = 1000;
    p.min_interval_ms = 60000;
    const struct step steps[] = {
        S(0, 20, 20, N, E0),
        S(5000, 20, 20, X, EN),
        S(6000, 0, 20, X, E0),
        S(7000, 0, 20, X, EB), /* exit due, held until 65000: reported once */
        S(8000, 0, 20, X, E0),
        S(64999, 0, 20, X, E0),
        S(65000, 0, 20, N, EX), /* runs when the interval expires */
        S(66000, 20, 20, N, E0),
        S(71000, 20, 20, N, EB), /* enter due 5 s later, held until 125000 */
        S(90000, 20, 20, N, E0),
        S(125000, 20, 20, X, EN),
    };
    run_script(&p, steps, sizeof(steps) / sizeof(steps[0]));
}

static void test_stress_blocked_transition_dropped_when_no_longer_due(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.exit_delay_ms = 1000;
    p.min_interval_ms = 60000;
    const struct step steps[] = {
        S(0, 20, 20, N, E0),
        S(5000, 20, 20, X, EN),
        S(6000, 0, 20, X, E0),
        S(7000, 0, 20, X, EB),                    /* exit held */
        {8000, 4, 4, 2, false, false, -1, X, E0}, /* overload again: no longer due */
        S(70000, 20, 20, X, E0),                  /* interval over, still stressed, nothing to do */
    };
    run_script(&p, steps, sizeof(steps) / sizeof(steps[0]));
}

static void test_stress_immediate_triggers(void **state)
{
    (void)state;
    struct stress_params p = params();
    /* Waiting clients beyond the limit: at once. */
    const struct step waiting[] = {
        S(0, 1, 4, N, E0),
        {1000, 2, 4, 1, false, false, -1, N, E0}, /* backlog with idle processes: no */
        {2000, 4, 4, 1, false, false, -1, X, EN},
    };
    run_script(&p, waiting, 3);
    /* A process-limit warning: at once, even at low sampled saturation. */
    const struct step plw[] = {
        S(0, 1, 4, N, E0),
        {1000, 1, 4, 0, true, false, -1, X, EN},
        S(2000, 1, 4, X, E0),
    };
    run_script(&p, plw, 3);
    /* postscreen STRESS mode: at once; it also keeps the exit timer from running. */
    struct stress_params q = params();
    q.min_interval_ms = 0;
    q.exit_delay_ms = 2000;
    const struct step ps[] = {
        {0, 0, 4, 0, false, true, -1, X, EN},
        {1000, 0, 4, 0, false, true, -1, X, E0},
        {2500, 0, 4, 0, false, true, -1, X, E0},
        S(3000, 0, 4, X, E0),
        S(4999, 0, 4, X, E0),
        S(5000, 0, 4, N, EX),
    };
    run_script(&q, ps, 6);
}

static void test_stress_master_down_is_not_overload(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct stress_machine *sm = stress_new(&p, 0);
    assert_non_null(sm);
    struct stress_service_sample svc = {.name = "smtp/inet", .busy = 4, .limit = 4, .waiting = 9};
    struct stress_sample s = {.now_ms = 1000,
                              .services = &svc,
                              .n_services = 1,
                              .process_limit_warning = true,
                              .policy_stress_pct = -1,
                              .master_running = false,
                              .cluster_stressed_pct = -1};
    struct stress_result r;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.state, STRESS_NORMAL);
    assert_int_equal(r.event, STRESS_EVENT_NONE);
    assert_int_equal(r.saturation, 0);
    stress_free(sm);
}

static void test_stress_forced_transitions(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct stress_machine *sm = stress_new(&p, 0);
    struct stress_service_sample svc = {.name = "smtp/inet", .busy = 0, .limit = 20};
    struct stress_sample s = {.services = &svc,
                              .n_services = 1,
                              .policy_stress_pct = -1,
                              .master_running = true,
                              .qmgr_running = true,
                              .cluster_stressed_pct = -1};
    struct stress_result r;

    /* Forced enter while idle: held well past exit_delay. */
    assert_int_equal(stress_force(sm, STRESS_FORCE_ENTER, 1000, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_ENTER);
    assert_true(r.event_forced);
    assert_true(r.forced);
    assert_int_equal(r.state, STRESS_STRESSED);
    assert_non_null(strstr(r.reason, "manual"));
    for (int64_t t = 2000; t < 200000; t += 1000) {
        s.now_ms = t;
        assert_int_equal(stress_update(sm, &s, &r), 0);
        assert_int_equal(r.state, STRESS_STRESSED);
        assert_int_equal(r.event, STRESS_EVENT_NONE);
        assert_false(r.local_stress);
    }
    /* Forcing enter again is no event. */
    assert_int_equal(stress_force(sm, STRESS_FORCE_ENTER, 200000, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_NONE);

    /* Forced exit at once, ignoring min_interval. */
    assert_int_equal(stress_force(sm, STRESS_FORCE_EXIT, 200001, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_EXIT);
    assert_int_equal(r.state, STRESS_NORMAL);
    assert_false(r.forced);

    /* Overload right after a forced exit: automatic entry waits for min_interval. */
    svc.busy = 20;
    svc.waiting = 1;
    s.now_ms = 206001;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_BLOCKED);
    assert_int_equal(r.blocked_until_ms, 210001);
    s.now_ms = 210001;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_ENTER);
    assert_false(r.event_forced);
    assert_true(r.local_stress);

    /* AUTO drops a hold without a transition; then calm leads to exit. */
    assert_int_equal(stress_force(sm, STRESS_FORCE_ENTER, 211000, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_NONE);
    assert_int_equal(stress_force(sm, STRESS_FORCE_AUTO, 212000, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_NONE);
    assert_int_equal(r.state, STRESS_STRESSED);
    svc.busy = 0;
    svc.waiting = 0;
    s.now_ms = 213000;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    s.now_ms = 233000;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_EXIT);
    assert_int_equal(stress_force(sm, (enum stress_force)42, 240000, &r), -EINVAL);
    stress_free(sm);
}

static void test_stress_cluster_quorum(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.cluster_quorum = 50;
    p.min_interval_ms = 0;
    const struct step steps[] = {
        {0, 1, 20, 0, false, false, 30, N, E0},
        {1000, 1, 20, 0, false, false, 50, X, EN}, /* half the nodes: enter at once */
        {2000, 1, 20, 0, false, false, -1, N, EX}, /* unknown share: no quorum */
        {3000, 1, 20, 0, false, false, 100, X, EN},
        {4000, 1, 20, 0, false, false, 49, N, EX},
    };
    run_script(&p, steps, 5);
    /* Quorum off: any share is ignored. */
    struct stress_params q = params();
    const struct step off[] = {
        {0, 1, 20, 0, false, false, 100, N, E0},
        {9000, 1, 20, 0, false, false, 100, N, E0},
    };
    run_script(&q, off, 2);
}

static void test_stress_quorum_entry_is_not_local(void **state)
{
    (void)state;
    /* A node stressed only by quorum publishes local_stress = false, so the cluster
     * share can fall when the nodes that started it calm down. */
    struct stress_params p = params();
    p.cluster_quorum = 50;
    struct stress_machine *sm = stress_new(&p, 0);
    struct stress_service_sample svc = {.name = "smtp/inet", .busy = 1, .limit = 20};
    struct stress_sample s = {.now_ms = 1000,
                              .services = &svc,
                              .n_services = 1,
                              .policy_stress_pct = 25,
                              .master_running = true,
                              .qmgr_running = true,
                              .cluster_stressed_pct = 66};
    struct stress_result r;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_ENTER);
    assert_false(r.local_stress);
    assert_non_null(strstr(r.reason, "quorum"));
    assert_non_null(strstr(r.reason, "policy-stress=25%"));
    stress_free(sm);
}

static void test_stress_node_saturation_is_max_over_services(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct stress_machine *sm = stress_new(&p, 0);
    struct stress_service_sample svc[3] = {
        {.name = "smtp/inet", .busy = 10, .limit = 100},
        {.name = "smtpd/pass", .busy = 3, .limit = 4},
        {.name = "127.0.0.1:2525/inet", .busy = 0, .limit = 0},
    };
    struct stress_sample s = {.now_ms = 10,
                              .services = svc,
                              .n_services = 3,
                              .policy_stress_pct = -1,
                              .master_running = true,
                              .qmgr_running = true,
                              .cluster_stressed_pct = -1};
    struct stress_result r;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.saturation, 75);
    assert_string_equal(r.busiest, "smtpd/pass");
    stress_free(sm);
}

static void test_stress_reason_names_signals(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct stress_machine *sm = stress_new(&p, 0);
    struct stress_service_sample svc = {.name = "smtpd/pass", .busy = 4, .limit = 4, .waiting = 3};
    struct stress_sample s = {.now_ms = 10,
                              .services = &svc,
                              .n_services = 1,
                              .process_limit_warning = true,
                              .policy_stress_pct = -1,
                              .master_running = true,
                              .qmgr_running = false,
                              .cluster_stressed_pct = -1};
    struct stress_result r;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_ENTER);
    assert_string_equal(r.reason, "enter: clients waiting for a process (smtpd/pass busy 4/4 "
                                  "waiting 3); signals: process-limit-warning "
                                  "waiting-clients qmgr-down");
    assert_int_equal(r.saturation, 175);
    stress_free(sm);
}

/* An attack across the cluster (the attack detector's rate) enters at once, is named
 * first in the reason even when slots overflow too, holds stress while it lasts, and
 * counts only while master runs, like the other log signals. */
static void test_stress_attack_signal(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.min_interval_ms = 0;
    p.exit_delay_ms = 2000;
    struct stress_machine *sm = stress_new(&p, 0);
    struct stress_service_sample svc = {.name = "smtp/inet", .busy = 4, .limit = 4, .waiting = 2};
    const char *what = "dictionary harvest: \"User unknown\" rejects across the cluster "
                       "reached 100 within 60 s (attack_stress_unknown_user_rate)";
    struct stress_sample s = {.now_ms = 0,
                              .services = &svc,
                              .n_services = 1,
                              .policy_stress_pct = -1,
                              .master_running = false,
                              .qmgr_running = true,
                              .cluster_stressed_pct = -1,
                              .attack = what};
    struct stress_result r;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_NONE);
    s.now_ms = 1000;
    s.master_running = true;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_ENTER);
    assert_string_equal(r.reason,
                        "enter: attack: dictionary harvest: \"User unknown\" rejects across the "
                        "cluster reached 100 within 60 s (attack_stress_unknown_user_rate); "
                        "signals: waiting-clients attack");
    /* The node's own signal: it counts for stress_cluster_quorum. */
    assert_true(r.local_stress);
    /* Idle slots, attack still on: stays; the exit delay runs from its end. */
    svc.busy = 0;
    svc.waiting = 0;
    s.now_ms = 5000;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.state, STRESS_STRESSED);
    s.attack = "";
    s.now_ms = 6000;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_NONE);
    s.now_ms = 8000;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    assert_int_equal(r.event, STRESS_EVENT_EXIT);
    stress_free(sm);
}

/* SIGHUP: new thresholds act on the next samples; delays count from the change. */
static void test_stress_set_params_live(void **state)
{
    (void)state;
    struct stress_params p = params();
    struct stress_machine *sm = stress_new(&p, 0);
    assert_non_null(sm);
    const struct step at80[] = {S(0, 16, 20, N, E0), S(10000, 16, 20, N, E0)};
    feed_steps(sm, at80, 2); /* 80 % for 10 s: below 90 %, normal */
    struct stress_params bad = p;
    bad.exit_threshold = bad.enter_threshold + 1;
    assert_int_equal(stress_set_params(sm, &bad), -EINVAL);
    assert_int_equal(stress_set_params(NULL, &p), -EINVAL);
    struct stress_params low = p;
    low.enter_threshold = 75;
    low.exit_threshold = 50;
    assert_int_equal(stress_set_params(sm, &low), 0);
    /* 80 % >= 75 % from t=11 s: the 5 s delay runs from there, not from t=0. */
    const struct step after[] = {
        S(11000, 16, 20, N, E0), S(15999, 16, 20, N, E0), S(16000, 16, 20, X, EN),
        S(17000, 12, 20, X, E0), /* 60 %: above the new exit threshold, stays */
        S(30000, 9, 20, X, E0),  /* 45 %: calm run starts */
    };
    feed_steps(sm, after, sizeof(after) / sizeof(after[0]));
    /* Back to the defaults while stressed and calm for 10 s: the calm run restarts. */
    assert_int_equal(stress_set_params(sm, &p), 0);
    const struct step back[] = {
        S(41000, 9, 20, X, E0),
        S(60999, 9, 20, X, E0),
        S(61000, 9, 20, N, EX),
    };
    feed_steps(sm, back, sizeof(back) / sizeof(back[0]));
    stress_free(sm);
}

static void test_stress_rejects_bad_input(void **state)
{
    (void)state;
    struct stress_params p = params();
    p.exit_threshold = 95; /* above enter: no hysteresis possible */
    assert_null(stress_new(&p, 0));
    assert_null(stress_new(NULL, 0));
    p = params();
    struct stress_machine *sm = stress_new(&p, 5000);
    struct stress_sample s = {.now_ms = 4000,
                              .policy_stress_pct = -1,
                              .master_running = true,
                              .cluster_stressed_pct = -1};
    struct stress_result r;
    assert_int_equal(stress_update(sm, &s, &r), -EINVAL); /* time went backwards */
    s.now_ms = 6000;
    assert_int_equal(stress_update(sm, &s, &r), 0);
    s.n_services = 1; /* count without array */
    assert_int_equal(stress_update(sm, &s, &r), -EINVAL);
    assert_int_equal(stress_update(NULL, &s, &r), -EINVAL);
    stress_free(sm);
    stress_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_saturation_formula),
        cmocka_unit_test(test_stress_enters_after_delay),
        cmocka_unit_test(test_stress_dip_restarts_enter_delay),
        cmocka_unit_test(test_stress_exact_thresholds),
        cmocka_unit_test(test_stress_hysteresis_does_not_flap),
        cmocka_unit_test(test_stress_oscillation_in_normal_does_not_enter),
        cmocka_unit_test(test_stress_exit_needs_calm_for_delay),
        cmocka_unit_test(test_stress_min_interval_delays_transition),
        cmocka_unit_test(test_stress_blocked_transition_dropped_when_no_longer_due),
        cmocka_unit_test(test_stress_immediate_triggers),
        cmocka_unit_test(test_stress_master_down_is_not_overload),
        cmocka_unit_test(test_stress_forced_transitions),
        cmocka_unit_test(test_stress_cluster_quorum),
        cmocka_unit_test(test_stress_quorum_entry_is_not_local),
        cmocka_unit_test(test_stress_node_saturation_is_max_over_services),
        cmocka_unit_test(test_stress_reason_names_signals),
        cmocka_unit_test(test_stress_attack_signal),
        cmocka_unit_test(test_stress_set_params_live),
        cmocka_unit_test(test_stress_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
