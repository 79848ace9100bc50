/* spawn: runs one external command (postconf, postfix, postqueue) from the event loop
 * with uv_spawn, no shell: argv in, exit status and captured stdout/stderr out, through
 * a completion callback. Output is bounded (over the cap it is dropped and flagged), a
 * timeout sends SIGTERM then SIGKILL to the command's process group, and stdout can be
 * streamed to a callback in chunks instead of buffered. Loop thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SPAWN_DEFAULT_MAX_STDOUT (4u << 20) /* 4 MiB: enough for `postconf -d` */
#define SPAWN_DEFAULT_MAX_STDERR (64u << 10)
#define SPAWN_DEFAULT_KILL_GRACE_MS 2000

struct spawn;

/* What a finished command did. Strings are NUL-terminated and borrowed: valid only
 * during the completion callback. */
struct spawn_result {
    int exit_status; /* exit code; -1 when it ended on a signal */
    int term_signal; /* signal that ended it (SIGKILL after a timeout), 0 if none */
    bool timed_out;  /* the timeout expired and we killed it */
    bool cancelled;  /* spawn_cancel() killed it */
    const char *out; /* stdout ("" when streamed) */
    size_t out_len;
    bool out_truncated; /* stdout exceeded max_stdout: the excess was dropped */
    const char *err;
    size_t err_len;
    bool err_truncated;
    uint64_t elapsed_ms; /* loop time from start to exit */
};

/* Called once, when the process has exited and both pipes are drained. sp is freed
 * after the callback returns. */
typedef void (*spawn_done_cb)(struct spawn *sp, const struct spawn_result *res, void *arg);
/* Streaming mode: called for every chunk of stdout as it arrives (data borrowed for the
 * call). Streamed output is not capped (the consumer bounds what it keeps). */
typedef void (*spawn_chunk_cb)(struct spawn *sp, const char *data, size_t len, void *arg);

struct spawn_opts {
    uint64_t timeout_ms;      /* 0: no timeout */
    size_t max_stdout;        /* 0: SPAWN_DEFAULT_MAX_STDOUT */
    size_t max_stderr;        /* 0: SPAWN_DEFAULT_MAX_STDERR */
    uint64_t kill_grace_ms;   /* SIGTERM to SIGKILL after a timeout; 0: default 2 s */
    spawn_chunk_cb on_stdout; /* non-NULL: stream stdout instead of buffering it */
};

/* Starts argv[0] (looked up in PATH when it has no '/') with arguments argv (NULL
 * terminated; copied), stdin from /dev/null, in its own session so a timeout kills
 * everything it started. opts may be NULL (defaults). On success returns 0, sets *out
 * (may be NULL) to a handle valid until the completion callback returns, and cb is
 * called later, never from inside spawn_start(). On failure (argv[0] not found: -ENOENT,
 * ENOMEM, ...) returns a negative errno and never calls cb. */
int spawn_start(uv_loop_t *loop, const char *const *argv, const struct spawn_opts *opts,
                spawn_done_cb cb, void *arg, struct spawn **out);

/* Kills a running command (SIGTERM, SIGKILL after the grace time); its callback still
 * runs, with res->cancelled set. Safe to call more than once. Used at shutdown. */
void spawn_cancel(struct spawn *sp);

/* The command's PID (for log lines). */
int spawn_pid(const struct spawn *sp);

/* Formats argv as one line for logs ("postconf -c /etc/postfix -F"), cut to size.
 * Returns buf. */
char *spawn_argv_string(const char *const *argv, char *buf, size_t size);
