/* run: see run.h. */
#define LOG_COMPONENT "report"
#include "run.h"
#include "util/log.h"
#include "util/spawn.h"

#include <stdio.h>
#include <string.h>
#include <uv.h>

static void run_on_chunk(struct spawn *sp, const char *data, size_t len, void *arg)
{
    struct run *r = arg;
    if (r->feed_rc == 0)
        r->feed_rc = queue_stats_feed(r->qs, data, len);
}

static void first_line(char *dst, size_t size, const char *src, size_t len)
{
    size_t n = 0;
    while (n < len && src[n] != '\n' && n + 1 < size)
        n++;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void run_on_done(struct spawn *sp, const struct spawn_result *res, void *arg)
{
    struct run *r = arg;
    r->done = true;
    r->exit_status = res->exit_status;
    r->term_signal = res->term_signal;
    r->timed_out = res->timed_out;
    first_line(r->out, sizeof(r->out), res->out, res->out_len);
    /* postqueue prints "postqueue: warning: ..." lines first; keep the first one. */
    first_line(r->err, sizeof(r->err), res->err, res->err_len);
}

int run_command(const char *const *argv, uint64_t timeout_ms, struct run *r)
{
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc < 0)
        return rc;
    struct spawn_opts o = {.timeout_ms = timeout_ms, .on_stdout = r->qs ? run_on_chunk : NULL};
    rc = spawn_start(&loop, argv, &o, run_on_done, r, NULL);
    if (rc == 0)
        uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) < 0)
        log_warn("event loop not empty after %s", argv[0]);
    return rc;
}

void run_describe(const struct run *r, char *buf, size_t size)
{
    if (r->timed_out)
        snprintf(buf, size, "timed out");
    else if (r->term_signal)
        snprintf(buf, size, "killed by signal %d", r->term_signal);
    else
        snprintf(buf, size, "exit status %d%s%s", r->exit_status, r->err[0] ? ": " : "", r->err);
}
