/* tail: follows a log file (Postfix's maillog_file) from the event loop and delivers
 * complete lines. The path `journal` (or `journal:DIRECTORY`, journal files of that
 * directory) reads the systemd journal instead (journal.c), as does a file that does not
 * exist at start when a journal does. Polls with asynchronous uv_fs calls (stat, open, read) on a
 * timer or on demand; starts at the end of the file or at a saved position; follows `postfix
 * logrotate` (the old file is read to its end, then the new one from its start),
 * truncation (restart at 0) and a missing file (retried, logged once). Lines go through
 * lib/maillog's bounded splitter. Loop thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct tail;

/* A position to save and resume from: the file identity and the offset of the first
 * byte not yet delivered as part of a complete line. */
struct tail_pos {
    uint64_t dev;
    uint64_t ino;
    int64_t offset; /* -1: no file open */
};

struct tail_stats {
    uint64_t lines;           /* complete lines delivered */
    uint64_t bytes;           /* bytes read */
    uint64_t truncated_lines; /* lines cut at max_line */
    uint64_t rotations;       /* file replaced under its name */
    uint64_t truncations;     /* file shrank below our offset */
    uint64_t read_errors;
    uint64_t rounds; /* poll rounds completed */
    bool file_open;
};

/* A complete line without its newline (a trailing '\r' removed); borrowed for the
 * call. truncated: the line was longer than max_line and was cut. */
typedef void (*tail_line_cb)(struct tail *t, const char *line, size_t len, bool truncated,
                             void *arg);
/* End of one poll round started with tail_poll(). */
typedef void (*tail_poll_cb)(struct tail *t, void *arg);
/* tail_close() finished: t is gone. */
typedef void (*tail_closed_cb)(void *arg);

struct tail_opts {
    uint64_t interval_ms; /* poll period; 0: poll only when tail_poll() is called */
    size_t max_line;      /* 0: MAILLOG_DEFAULT_MAX_LINE */
    bool from_start;      /* read what the file holds already (default: start at its end) */
    /* Resume here when the file still has this identity and is at least this long;
     * a different identity means it was rotated while we were away: read it from 0. */
    const struct tail_pos *resume;
    /* The journal only (a file is read whole): the Postfix instance's syslog_name, whose
     * entries are read (identifier NAME or NAME/...); NULL: none until
     * tail_set_syslog_name(). */
    const char *syslog_name;
};

/* New tailer of path (copied). opts may be NULL. cb gets every line; arg is passed back.
 * Nothing happens until tail_start(). Returns NULL on ENOMEM. */
struct tail *tail_new(uv_loop_t *loop, const char *path, const struct tail_opts *opts,
                      tail_line_cb cb, void *arg);
/* Starts the timer (if interval_ms) and the first poll round. Returns 0 or a negative
 * errno. */
int tail_start(struct tail *t);
/* Starts a poll round now: stat, reopen if rotated, read to the end of the file. done
 * (may be NULL) is called when the round ends, never from inside tail_poll(). Returns 0,
 * or -EBUSY when a round is already running (done is then not called). */
int tail_poll(struct tail *t, tail_poll_cb done, void *done_arg);
/* Current position (to save across restarts) and counters. */
void tail_get_pos(const struct tail *t, struct tail_pos *pos);
void tail_get_stats(const struct tail *t, struct tail_stats *st);
/* What is read: "journal" (the systemd journal), or the file's path. Decided at
 * tail_start(). */
const char *tail_source(const struct tail *t);
/* Sets the syslog_name whose journal entries are read (copied; logged when it changes);
 * entries that waited for it are read next. Kept for a file. 0 or -errno. */
int tail_set_syslog_name(struct tail *t, const char *syslog_name);
/* The syslog_name the journal is filtered on; "" for a file or while none is set. */
const char *tail_syslog_name(const struct tail *t);
/* Stops and frees t once its I/O is done; closed (may be NULL) is then called. No line
 * callback runs after this call. NULL is a no-op. */
void tail_close(struct tail *t, tail_closed_cb closed, void *arg);
