/* spawn: one external command run from the loop with uv_spawn. Three handles (process,
 * stdout pipe, stderr pipe) plus a timer; the result is reported once the process has
 * exited and both pipes reached EOF (or a short drain time passed, for a grandchild
 * that keeps a pipe open), then every handle is closed and the struct freed in the
 * last close callback. */
#define LOG_COMPONENT "spawn"

#include "spawn.h"
#include "container.h"
#include "log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long to wait for the pipes after the process exited: a daemon it started (postfix
 * start forks master) may hold them; we stop listening rather than hang. */
#define SPAWN_DRAIN_MS 1000
#define SPAWN_SCRATCH 65536

struct spawn_buf {
    char *data;
    size_t len, cap, max;
    bool truncated;
};

struct spawn {
    uv_loop_t *loop;
    uv_process_t proc;
    uv_pipe_t pipe_out;
    uv_pipe_t pipe_err;
    uv_timer_t timer;
    spawn_done_cb cb;
    spawn_chunk_cb on_stdout;
    void *arg;
    struct spawn_buf out, err;
    char *scratch;
    uint64_t started_ms;
    uint64_t timeout_ms;
    uint64_t kill_grace_ms;
    int pid;
    int64_t exit_status;
    int term_signal;
    int open_handles; /* handles not yet closed; freed at 0 */
    bool exited, out_eof, err_eof;
    bool timed_out, cancelled, killing, reported;
    bool proc_closing, out_closing, err_closing;
};

static void spawn_free(struct spawn *sp)
{
    free(sp->out.data);
    free(sp->err.data);
    free(sp->scratch);
    free(sp);
}

static void spawn_on_close(uv_handle_t *h)
{
    struct spawn *sp = h->data;
    if (--sp->open_handles == 0)
        spawn_free(sp);
}

static void spawn_close_handle(struct spawn *sp, uv_handle_t *h, bool *flag)
{
    if (*flag)
        return;
    *flag = true;
    uv_close(h, spawn_on_close);
}

static void spawn_close_all(struct spawn *sp)
{
    bool timer_closing = uv_is_closing((uv_handle_t *)&sp->timer);
    spawn_close_handle(sp, (uv_handle_t *)&sp->proc, &sp->proc_closing);
    spawn_close_handle(sp, (uv_handle_t *)&sp->pipe_out, &sp->out_closing);
    spawn_close_handle(sp, (uv_handle_t *)&sp->pipe_err, &sp->err_closing);
    if (!timer_closing)
        uv_close((uv_handle_t *)&sp->timer, spawn_on_close);
}

/* Reports once the process is gone and both pipes are done, then closes everything. */
static void spawn_maybe_finish(struct spawn *sp)
{
    if (sp->reported || !sp->exited || !sp->out_eof || !sp->err_eof)
        return;
    sp->reported = true;
    uv_timer_stop(&sp->timer);
    /* NUL-terminate the captured text; the buffers keep one spare byte for it. */
    struct spawn_result res = {
        .exit_status = sp->term_signal ? -1 : (int)sp->exit_status,
        .term_signal = sp->term_signal,
        .timed_out = sp->timed_out,
        .cancelled = sp->cancelled,
        .out = sp->out.data ? sp->out.data : "",
        .out_len = sp->out.len,
        .out_truncated = sp->out.truncated,
        .err = sp->err.data ? sp->err.data : "",
        .err_len = sp->err.len,
        .err_truncated = sp->err.truncated,
        .elapsed_ms = uv_now(sp->loop) - sp->started_ms,
    };
    if (sp->cb)
        sp->cb(sp, &res, sp->arg);
    spawn_close_all(sp);
}

static void spawn_kill(struct spawn *sp, int sig)
{
    if (sp->exited)
        return;
    /* The child is a session leader (UV_PROCESS_DETACHED): signal its whole group so a
     * shell script's children (postfix-script) go too. Fall back to the child alone. */
    if (kill(-sp->pid, sig) != 0)
        uv_process_kill(&sp->proc, sig);
}

static void spawn_on_timer(uv_timer_t *t)
{
    struct spawn *sp = container_of(t, struct spawn, timer);
    if (sp->exited) {
        /* Drain time over: stop waiting for pipes a grandchild holds open. */
        if (!sp->out_eof) {
            uv_read_stop((uv_stream_t *)&sp->pipe_out);
            sp->out_eof = true;
        }
        if (!sp->err_eof) {
            uv_read_stop((uv_stream_t *)&sp->pipe_err);
            sp->err_eof = true;
        }
        spawn_maybe_finish(sp);
        return;
    }
    if (!sp->killing) {
        sp->killing = true;
        if (!sp->cancelled) {
            sp->timed_out = true;
            log_warn("pid %d: timeout after %llu ms, sending SIGTERM", sp->pid,
                     (unsigned long long)sp->timeout_ms);
        }
        spawn_kill(sp, SIGTERM);
        uv_timer_start(&sp->timer, spawn_on_timer, sp->kill_grace_ms, 0);
    } else {
        log_warn("pid %d: still running %llu ms after SIGTERM, sending SIGKILL", sp->pid,
                 (unsigned long long)sp->kill_grace_ms);
        spawn_kill(sp, SIGKILL);
    }
}

static void spawn_on_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
    struct spawn *sp = container_of(p, struct spawn, proc);
    sp->exited = true;
    sp->exit_status = exit_status;
    sp->term_signal = term_signal;
    if (!sp->out_eof || !sp->err_eof)
        uv_timer_start(&sp->timer, spawn_on_timer, SPAWN_DRAIN_MS, 0);
    spawn_maybe_finish(sp);
}

static void spawn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct spawn *sp = h->data;
    (void)suggested;
    *buf = uv_buf_init(sp->scratch, SPAWN_SCRATCH);
}

/* Appends up to b->max bytes, keeping room for a terminating NUL. */
static void spawn_buf_append(struct spawn_buf *b, const char *data, size_t len)
{
    if (b->len + len > b->max) {
        b->truncated = true;
        len = b->max - b->len;
    }
    if (len == 0)
        return;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        char *n = realloc(b->data, cap);
        if (!n) {
            b->truncated = true;
            return;
        }
        b->data = n;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void spawn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct spawn *sp = s->data;
    bool is_out = s == (uv_stream_t *)&sp->pipe_out;
    if (n > 0) {
        if (is_out && sp->on_stdout)
            sp->on_stdout(sp, buf->base, (size_t)n, sp->arg);
        else
            spawn_buf_append(is_out ? &sp->out : &sp->err, buf->base, (size_t)n);
        return;
    }
    if (n == 0)
        return;
    /* EOF or a read error: either way this pipe is done. */
    uv_read_stop(s);
    if (is_out)
        sp->out_eof = true;
    else
        sp->err_eof = true;
    spawn_maybe_finish(sp);
}

int spawn_start(uv_loop_t *loop, const char *const *argv, const struct spawn_opts *opts,
                spawn_done_cb cb, void *arg, struct spawn **out)
{
    static const struct spawn_opts defaults;
    if (!opts)
        opts = &defaults;
    if (!loop || !argv || !argv[0])
        return -EINVAL;
    struct spawn *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return -ENOMEM;
    sp->scratch = malloc(SPAWN_SCRATCH);
    if (!sp->scratch) {
        free(sp);
        return -ENOMEM;
    }
    sp->loop = loop;
    sp->cb = cb;
    sp->arg = arg;
    sp->on_stdout = opts->on_stdout;
    sp->out.max = opts->max_stdout ? opts->max_stdout : SPAWN_DEFAULT_MAX_STDOUT;
    sp->err.max = opts->max_stderr ? opts->max_stderr : SPAWN_DEFAULT_MAX_STDERR;
    sp->timeout_ms = opts->timeout_ms;
    sp->kill_grace_ms = opts->kill_grace_ms ? opts->kill_grace_ms : SPAWN_DEFAULT_KILL_GRACE_MS;
    sp->started_ms = uv_now(loop);

    uv_timer_init(loop, &sp->timer);
    uv_pipe_init(loop, &sp->pipe_out, 0);
    uv_pipe_init(loop, &sp->pipe_err, 0);
    sp->timer.data = sp->pipe_out.data = sp->pipe_err.data = sp->proc.data = sp;
    sp->open_handles = 4;

    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&sp->pipe_out},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&sp->pipe_err},
    };
    uv_process_options_t po = {
        .exit_cb = spawn_on_exit,
        .file = argv[0],
        .args = (char **)argv, /* libuv copies; it does not modify them */
        .flags = UV_PROCESS_DETACHED,
        .stdio_count = 3,
        .stdio = stdio,
    };
    int rc = uv_spawn(loop, &sp->proc, &po);
    if (rc != 0) {
        /* The handles are initialised: close them; the struct goes in the last close
         * callback. The callback is never called for a failed start. */
        sp->reported = true;
        spawn_close_all(sp);
        return rc;
    }
    sp->pid = sp->proc.pid;
    uv_read_start((uv_stream_t *)&sp->pipe_out, spawn_on_alloc, spawn_on_read);
    uv_read_start((uv_stream_t *)&sp->pipe_err, spawn_on_alloc, spawn_on_read);
    if (sp->timeout_ms)
        uv_timer_start(&sp->timer, spawn_on_timer, sp->timeout_ms, 0);
    if (out)
        *out = sp;
    return 0;
}

void spawn_cancel(struct spawn *sp)
{
    if (!sp || sp->exited || sp->cancelled)
        return;
    sp->cancelled = true;
    sp->killing = true;
    spawn_kill(sp, SIGTERM);
    uv_timer_start(&sp->timer, spawn_on_timer, sp->kill_grace_ms, 0);
}

int spawn_pid(const struct spawn *sp)
{
    return sp ? sp->pid : 0;
}

char *spawn_argv_string(const char *const *argv, char *buf, size_t size)
{
    size_t off = 0;
    if (size == 0)
        return buf;
    buf[0] = '\0';
    for (size_t i = 0; argv && argv[i] && off + 1 < size; i++) {
        int n = snprintf(buf + off, size - off, "%s%s", i ? " " : "", argv[i]);
        if (n < 0)
            break;
        off += (size_t)n;
    }
    return buf;
}
