/* journal: the systemd journal as a mail log source; see journal.h. */
#define LOG_COMPONENT "journal"
#include "journal.h"
#include "container.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-journal.h>

#define JOURNAL_DEFAULT_MAX_LINE 65536
/* Entries read per wake-up of the poll handle: a burst after a long stop is read over
 * several loop turns instead of in one. journal_poll() reads to the end. */
#define JOURNAL_BATCH 4096

struct journal {
    uv_loop_t *loop;
    sd_journal *sd;
    uv_poll_t poll;
    uv_timer_t kick; /* defers journal_poll's done to the loop, and resumes a cut batch */
    int handles;     /* open libuv handles */
    bool started, closing;
    journal_line_cb cb;
    void *arg;
    journal_done_cb done;
    void *done_arg;
    journal_closed_cb closed;
    void *closed_arg;
    char *line;
    size_t max_line;
    uint64_t lines;
    char *ident; /* syslog_name whose entries are read; NULL: none yet (held) */
};

bool journal_supported(void)
{
    return true;
}

static int journal_open(const char *directory, sd_journal **out)
{
    if (directory && directory[0])
        return sd_journal_open_directory(out, directory, 0);
    return sd_journal_open(out, SD_JOURNAL_LOCAL_ONLY | SD_JOURNAL_SYSTEM);
}

bool journal_available(const char *directory)
{
    sd_journal *sd = NULL;
    if (journal_open(directory, &sd) < 0)
        return false;
    bool any = sd_journal_seek_head(sd) >= 0 && sd_journal_next(sd) > 0;
    sd_journal_close(sd);
    return any;
}

/* A field's value without "NAME=", or NULL (len 0). */
static const char *field(sd_journal *sd, const char *name, size_t *len)
{
    const void *data;
    size_t n;
    size_t nl = strlen(name);
    *len = 0;
    if (sd_journal_get_data(sd, name, &data, &n) < 0 || n <= nl)
        return NULL;
    *len = n - nl - 1;
    return (const char *)data + nl + 1;
}

/* Appends at most room-1 bytes of s, control characters as blanks (a message with a
 * newline stays one line, as syslog would write it). */
static size_t put(char *dst, size_t pos, size_t cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n && pos + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[pos++] = c < 0x20 ? ' ' : (char)c;
    }
    return pos;
}

/* True if the identifier (idn bytes) is name or starts with "name/": postfix/smtpd and
 * postfix/submission/smtpd for name postfix, not postfix-out/qmgr. */
static bool ident_matches(const char *ident, size_t idn, const char *name)
{
    size_t n = strlen(name);
    return idn >= n && memcmp(ident, name, n) == 0 && (idn == n || ident[n] == '/');
}

/* The current entry as "2026-12-02T07:11:00.123456+00:00 host ident[pid]: message", the
 * high-precision format rsyslog writes, into line (max_line + 1 bytes). Returns its
 * length, 0 to skip the entry (not of syslog_name name). */
static size_t format_entry(sd_journal *sd, const char *name, char *line, size_t max_line)
{
    size_t idn, msgn, pidn, hostn;
    const char *ident = field(sd, "SYSLOG_IDENTIFIER", &idn);
    if (!ident || !ident_matches(ident, idn, name))
        return 0;
    const char *msg = field(sd, "MESSAGE", &msgn);
    if (!msg)
        return 0;
    const char *pid = field(sd, "SYSLOG_PID", &pidn);
    if (!pid)
        pid = field(sd, "_PID", &pidn);
    const char *host = field(sd, "_HOSTNAME", &hostn);
    uint64_t usec = 0;
    (void)sd_journal_get_realtime_usec(sd, &usec);
    time_t secs = (time_t)(usec / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[64];
    size_t tn = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tn, sizeof(ts) - tn, ".%06u+00:00", (unsigned)(usec % 1000000));
    size_t cap = max_line + 1, pos = 0;
    pos = put(line, pos, cap, ts, strlen(ts));
    pos = put(line, pos, cap, " ", 1);
    pos = host ? put(line, pos, cap, host, hostn) : put(line, pos, cap, "localhost", 9);
    pos = put(line, pos, cap, " ", 1);
    pos = put(line, pos, cap, ident, idn);
    if (pid) {
        pos = put(line, pos, cap, "[", 1);
        pos = put(line, pos, cap, pid, pidn);
        pos = put(line, pos, cap, "]", 1);
    }
    pos = put(line, pos, cap, ": ", 2);
    pos = put(line, pos, cap, msg, msgn);
    line[pos] = '\0';
    return pos;
}

/* Positions sd after cursor, so the next sd_journal_next() gives the first entry not yet
 * read; if the cursor's entry is gone (vacuumed), the nearest later one, not skipped. */
static int seek_after(sd_journal *sd, const char *cursor)
{
    int rc = sd_journal_seek_cursor(sd, cursor);
    if (rc < 0)
        return rc;
    if (sd_journal_next(sd) > 0 && sd_journal_test_cursor(sd, cursor) <= 0) {
        /* Landed on a later, unread entry. sd_journal_previous() cannot step back
         * before the first entry left, so seek to its time: next() then returns it. */
        uint64_t usec;
        rc = sd_journal_get_realtime_usec(sd, &usec);
        if (rc >= 0)
            rc = sd_journal_seek_realtime_usec(sd, usec);
        return rc < 0 ? rc : 0;
    }
    return 0;
}

long journal_read_since(const char *directory, const char *syslog_name, const char *cursor,
                        int64_t recent_sec, journal_line_cb cb, void *arg, char **cursor_out)
{
    sd_journal *sd = NULL;
    char *line = malloc(JOURNAL_DEFAULT_MAX_LINE + 1);
    long n = 0;
    int rc;
    *cursor_out = NULL;
    if (!line)
        return -ENOMEM;
    rc = journal_open(directory, &sd);
    if (rc >= 0 && cursor && cursor[0]) {
        rc = seek_after(sd, cursor);
    } else if (rc >= 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t from = (int64_t)ts.tv_sec - recent_sec;
        rc = sd_journal_seek_realtime_usec(sd, from > 0 ? (uint64_t)from * 1000000 : 0);
    }
    bool any = false;
    while (rc >= 0 && (rc = sd_journal_next(sd)) > 0) {
        any = true;
        size_t len = format_entry(sd, syslog_name, line, JOURNAL_DEFAULT_MAX_LINE);
        if (len) {
            cb(NULL, line, len, arg);
            n++;
        }
    }
    if (rc >= 0) {
        if (any)
            rc = sd_journal_get_cursor(sd, cursor_out);
        else if (cursor && cursor[0] && !(*cursor_out = strdup(cursor)))
            rc = -ENOMEM;
    }
    if (sd)
        sd_journal_close(sd);
    free(line);
    if (rc < 0) {
        free(*cursor_out);
        *cursor_out = NULL;
        return rc;
    }
    return n;
}

/* Delivers up to max entries (0: all). Returns how many were read, or -errno. While the
 * syslog_name is not known, reads nothing: the entries wait in the journal. */
static long journal_read(struct journal *j, size_t max)
{
    long n = 0;
    if (!j->ident)
        return 0;
    while (!j->closing && (max == 0 || (size_t)n < max)) {
        int rc = sd_journal_next(j->sd);
        if (rc < 0) {
            log_warn("reading the journal: %s", strerror(-rc));
            return rc;
        }
        if (rc == 0)
            break;
        n++;
        size_t len = format_entry(j->sd, j->ident, j->line, j->max_line);
        if (len) {
            j->lines++;
            j->cb(j, j->line, len, j->arg);
        }
    }
    return n;
}

static void journal_on_kick(uv_timer_t *h)
{
    struct journal *j = h->data;
    if (j->closing)
        return;
    journal_done_cb done = j->done;
    j->done = NULL;
    if (done) {
        done(j, j->done_arg);
        return;
    }
    /* A batch was cut: go on with the rest on a later loop turn. */
    if (journal_read(j, JOURNAL_BATCH) == JOURNAL_BATCH)
        uv_timer_start(&j->kick, journal_on_kick, 0, 0);
}

static void journal_on_poll(uv_poll_t *h, int status, int events)
{
    struct journal *j = h->data;
    (void)events;
    if (j->closing)
        return;
    if (status < 0) {
        log_warn("journal descriptor: %s", uv_strerror(status));
        return;
    }
    /* SD_JOURNAL_APPEND, _INVALIDATE (files added or removed: rotation, vacuum) or NOP:
     * in every case the next entries are read from where we are. */
    (void)sd_journal_process(j->sd);
    if (journal_read(j, JOURNAL_BATCH) == JOURNAL_BATCH && !j->done)
        uv_timer_start(&j->kick, journal_on_kick, 0, 0);
}

struct journal *journal_new(uv_loop_t *loop, const struct journal_opts *opts, journal_line_cb cb,
                            void *arg, int *err)
{
    struct journal *j = calloc(1, sizeof(*j));
    int rc;
    if (!j) {
        *err = -ENOMEM;
        return NULL;
    }
    j->max_line = opts->max_line ? opts->max_line : JOURNAL_DEFAULT_MAX_LINE;
    j->line = malloc(j->max_line + 1);
    if (opts->syslog_name && opts->syslog_name[0])
        j->ident = strdup(opts->syslog_name);
    if (!j->line || (opts->syslog_name && opts->syslog_name[0] && !j->ident)) {
        rc = -ENOMEM;
        goto fail;
    }
    /* No journal match: sd_journal matches whole values only, and this instance's entries
     * are those whose SYSLOG_IDENTIFIER is its syslog_name or starts with "NAME/" (any
     * facility: syslog_facility may be other than mail). format_entry() picks them. */
    rc = journal_open(opts->directory, &j->sd);
    if (rc < 0)
        goto fail;
    bool resumed = opts->cursor && opts->cursor[0] && seek_after(j->sd, opts->cursor) >= 0;
    if (resumed) {
        rc = 0;
    } else if (opts->from_start) {
        rc = sd_journal_seek_head(j->sd);
    } else {
        /* From the current end: stand on the last entry, so the next one read is the
         * first that comes after it. Without any entry yet, the start of the
         * journal is that place (sd_journal_next after a bare seek_tail can pass over
         * the first entry appended later). */
        rc = sd_journal_seek_tail(j->sd);
        if (rc >= 0)
            rc = sd_journal_previous(j->sd);
        if (rc == 0)
            rc = sd_journal_seek_head(j->sd);
    }
    if (rc < 0)
        goto fail;
    j->loop = loop;
    j->cb = cb;
    j->arg = arg;
    uv_timer_init(loop, &j->kick);
    j->kick.data = j;
    j->handles = 1;
    *err = 0;
    return j;
fail:
    if (j->sd)
        sd_journal_close(j->sd);
    free(j->line);
    free(j->ident);
    free(j);
    *err = rc;
    return NULL;
}

int journal_start(struct journal *j)
{
    if (!j || j->closing || j->started)
        return -EINVAL;
    int fd = sd_journal_get_fd(j->sd);
    if (fd < 0)
        return fd;
    int rc = uv_poll_init(j->loop, &j->poll, fd);
    if (rc < 0)
        return rc;
    j->poll.data = j;
    j->handles++;
    j->started = true;
    return uv_poll_start(&j->poll, UV_READABLE, journal_on_poll);
}

int journal_poll(struct journal *j, journal_done_cb done, void *arg)
{
    if (!j || j->closing)
        return -EINVAL;
    if (j->done)
        return -EBUSY;
    (void)sd_journal_process(j->sd);
    long n = journal_read(j, 0);
    if (n < 0)
        return (int)n;
    j->done = done;
    j->done_arg = arg;
    uv_timer_start(&j->kick, journal_on_kick, 0, 0);
    return 0;
}

int journal_set_syslog_name(struct journal *j, const char *syslog_name)
{
    if (!j || j->closing || !syslog_name || !syslog_name[0])
        return -EINVAL;
    if (j->ident && strcmp(j->ident, syslog_name) == 0)
        return 0;
    char *copy = strdup(syslog_name);
    if (!copy)
        return -ENOMEM;
    bool held = !j->ident;
    free(j->ident);
    j->ident = copy;
    /* What arrived while held is read now, on a loop turn of its own. */
    if (held && j->started && !j->done)
        uv_timer_start(&j->kick, journal_on_kick, 0, 0);
    return 0;
}

const char *journal_syslog_name(const struct journal *j)
{
    return j && j->ident ? j->ident : "";
}

char *journal_get_cursor(struct journal *j)
{
    char *c = NULL;
    if (!j || j->lines == 0 || sd_journal_get_cursor(j->sd, &c) < 0)
        return NULL;
    return c;
}

uint64_t journal_lines(const struct journal *j)
{
    return j->lines;
}

static void journal_on_close(uv_handle_t *h)
{
    struct journal *j = h->data;
    if (--j->handles > 0)
        return;
    journal_closed_cb closed = j->closed;
    void *arg = j->closed_arg;
    sd_journal_close(j->sd);
    free(j->line);
    free(j->ident);
    free(j);
    if (closed)
        closed(arg);
}

void journal_close(struct journal *j, journal_closed_cb closed, void *arg)
{
    if (!j || j->closing)
        return;
    j->closing = true;
    j->closed = closed;
    j->closed_arg = arg;
    if (j->started)
        uv_close((uv_handle_t *)&j->poll, journal_on_close);
    uv_close((uv_handle_t *)&j->kick, journal_on_close);
}

#else /* !HAVE_LIBSYSTEMD */

bool journal_supported(void)
{
    return false;
}

bool journal_available(const char *directory)
{
    (void)directory;
    return false;
}

struct journal *journal_new(uv_loop_t *loop, const struct journal_opts *opts, journal_line_cb cb,
                            void *arg, int *err)
{
    *err = -ENOTSUP;
    return NULL;
}

int journal_start(struct journal *j)
{
    return -ENOTSUP;
}

int journal_poll(struct journal *j, journal_done_cb done, void *arg)
{
    return -ENOTSUP;
}

int journal_set_syslog_name(struct journal *j, const char *syslog_name)
{
    return -ENOTSUP;
}

const char *journal_syslog_name(const struct journal *j)
{
    return "";
}

char *journal_get_cursor(struct journal *j)
{
    return NULL;
}

uint64_t journal_lines(const struct journal *j)
{
    return 0;
}

long journal_read_since(const char *directory, const char *syslog_name, const char *cursor,
                        int64_t recent_sec, journal_line_cb cb, void *arg, char **cursor_out)
{
    *cursor_out = NULL;
    return -ENOTSUP;
}

void journal_close(struct journal *j, journal_closed_cb closed, void *arg)
{
}

#endif
