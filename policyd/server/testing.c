/* Test-only deciders (see testing.h). Not part of the shipped binary. */
#include "server/testing.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static bool testing_echo;

static void testing_answer(struct decision *dec)
{
    const char *a = dec->srv->cfg->default_action;
    char echo[256];

    if (testing_echo) {
        const char *r = dec->req->attr[POLICY_RECIPIENT];
        snprintf(echo, sizeof(echo), "INFO %s", r && *r ? r : "-");
        a = echo;
    }
    dec->done(dec, a, strlen(a));
}

static int testing_decide(struct decider *d, struct decision *dec)
{
    testing_answer(dec);
    return 0;
}

struct delayed {
    uv_timer_t timer;
    struct decision *dec;
};

static void delayed_on_close(uv_handle_t *h)
{
    free(container_of((uv_timer_t *)h, struct delayed, timer));
}

static void delayed_on_timer(uv_timer_t *t)
{
    struct delayed *dl = container_of(t, struct delayed, timer);
    struct decision *dec = dl->dec;

    uv_close((uv_handle_t *)t, delayed_on_close);
    dec->engine_data = NULL;
    testing_answer(dec);
}

static int delayed_decide(struct decider *d, struct decision *dec)
{
    struct delayed *dl = calloc(1, sizeof(*dl));

    if (!dl)
        return -ENOMEM;
    dl->dec = dec;
    uv_timer_init(dec->srv->loop, &dl->timer);
    uv_timer_start(&dl->timer, delayed_on_timer, (uint64_t)(uintptr_t)d->data, 0);
    dec->engine_data = dl;
    return 0;
}

static void delayed_cancel(struct decider *d, struct decision *dec)
{
    struct delayed *dl = dec->engine_data;

    if (dl) {
        dec->engine_data = NULL;
        uv_close((uv_handle_t *)&dl->timer, delayed_on_close);
    }
}

void testing_install(struct server *srv)
{
    testing_echo = getenv("POSTSURGE_TEST_DECIDE_ECHO") != NULL;
    srv->default_decider.start = testing_decide;
    const char *delay = getenv("POSTSURGE_TEST_DECIDE_DELAY_MS");
    if (delay && atoi(delay) > 0) {
        srv->default_decider.start = delayed_decide;
        srv->default_decider.cancel = delayed_cancel;
        srv->default_decider.data = (void *)(uintptr_t)atoi(delay);
    }
}
