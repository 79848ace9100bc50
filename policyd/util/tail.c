/* tail: a log follower built as a chain of asynchronous uv_fs requests, one at a time:
 * stat(path) -> [open -> fstat] -> read ... -> EOF. When the name points to a new file,
 * the old descriptor is first read to its end (lines Postfix wrote before the rename),
 * closed, and the new file opened at 0. Everything runs in libuv's thread pool, so a
 * slow disk never stalls the loop. */
#define LOG_COMPONENT "tail"

#include "tail.h"
#include "container.h"
#include "journal.h"
#include "log.h"
#include "maillog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#define TAIL_READ_CHUNK 65536

struct tail {
    uv_loop_t *loop;
    char *path;
    uv_timer_t timer;
    uv_fs_t req;
    struct maillog_splitter *split;
    tail_line_cb cb;
    void *arg;
    tail_poll_cb done;
    void *done_arg;
    tail_closed_cb closed;
    void *closed_arg;
    char *buf;
    uint64_t interval_ms;
    bool from_start;
    bool have_resume;
    struct tail_pos resume;

    uv_file fd; /* -1 when no file is open */
    uint64_t dev, ino;
    int64_t offset;            /* next byte to read */
    int64_t stat_size;         /* size seen by the stat of this round */
    uint64_t new_dev, new_ino; /* identity seen by the stat of this round */
    bool ever_opened;
    bool busy;     /* a round is running */
    bool draining; /* reading the old file to its end before switching */
    bool reopen;   /* after draining: open the new file */
    bool missing;  /* logged that the file is missing */
    bool closing;
    bool timer_closed;
    struct tail_stats st;

    /* The systemd journal instead of a file: `journal`, `journal:DIRECTORY`, or a file
     * that does not exist at start while a journal does. */
    bool use_journal;
    char *journal_dir; /* NULL: the system journal */
    char *syslog_name; /* until the journal is open: its syslog_name (NULL: none yet) */
    struct journal *jr;
};

static void tail_stat_done(uv_fs_t *req);
static void tail_read_next(struct tail *t);

static void tail_free(struct tail *t)
{
    tail_closed_cb closed = t->closed;
    void *arg = t->closed_arg;
    maillog_splitter_free(t->split);
    free(t->buf);
    free(t->path);
    free(t->journal_dir);
    free(t->syslog_name);
    free(t);
    if (closed)
        closed(arg);
}

static void tail_finish_close(struct tail *t);

static void tail_journal_on_closed(void *arg)
{
    struct tail *t = arg;
    t->jr = NULL;
    tail_finish_close(t);
}

static void tail_timer_on_close(uv_handle_t *h)
{
    struct tail *t = h->data;
    t->timer_closed = true;
    tail_free(t);
}

static void tail_finish_close(struct tail *t)
{
    if (t->jr) {
        journal_close(t->jr, tail_journal_on_closed, t);
        return;
    }
    /* The descriptor goes synchronously: close(2) of a regular file does not block. */
    if (t->fd >= 0) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, t->fd, NULL);
        uv_fs_req_cleanup(&req);
        t->fd = -1;
    }
    uv_close((uv_handle_t *)&t->timer, tail_timer_on_close);
}

/* End of a round: report, or finish a pending close. */
static void tail_round_end(struct tail *t)
{
    t->busy = false;
    t->st.rounds++;
    if (t->closing) {
        tail_finish_close(t);
        return;
    }
    tail_poll_cb done = t->done;
    t->done = NULL;
    if (done)
        done(t, t->done_arg);
}

static void tail_deliver(struct tail *t, const char *data, size_t len)
{
    if (maillog_splitter_feed(t->split, data, len) != 0) {
        log_error("%s: out of memory buffering a line; dropping %zu bytes", t->path, len);
        return;
    }
    const char *line;
    size_t n;
    bool cut;
    while (!t->closing && maillog_splitter_next(t->split, &line, &n, &cut) == 1) {
        t->st.lines++;
        if (cut)
            t->st.truncated_lines++;
        t->cb(t, line, n, cut, t->arg);
    }
}

static void tail_open_done(uv_fs_t *req);

static void tail_open_new(struct tail *t)
{
    int rc = uv_fs_open(t->loop, &t->req, t->path, O_RDONLY | O_CLOEXEC, 0, tail_open_done);
    if (rc < 0) {
        log_warn("%s: cannot open: %s", t->path, uv_strerror(rc));
        tail_round_end(t);
    }
}

static void tail_close_done(uv_fs_t *req)
{
    struct tail *t = container_of(req, struct tail, req);
    uv_fs_req_cleanup(req);
    t->fd = -1;
    t->draining = false;
    t->st.file_open = false;
    maillog_splitter_reset(t->split);
    if (t->reopen && !t->closing) {
        t->reopen = false;
        tail_open_new(t);
        return;
    }
    tail_round_end(t);
}

/* The old file is read to its end: close it, then (maybe) open the new one. */
static void tail_close_old(struct tail *t)
{
    if (uv_fs_close(t->loop, &t->req, t->fd, tail_close_done) < 0) {
        t->fd = -1;
        t->draining = false;
        tail_round_end(t);
    }
}

static void tail_read_done(uv_fs_t *req)
{
    struct tail *t = container_of(req, struct tail, req);
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    if (t->closing) {
        tail_round_end(t);
        return;
    }
    if (n > 0) {
        t->offset += n;
        t->st.bytes += (uint64_t)n;
        tail_deliver(t, t->buf, (size_t)n);
        if (t->closing) {
            tail_round_end(t);
            return;
        }
        tail_read_next(t);
        return;
    }
    if (n < 0) {
        t->st.read_errors++;
        log_warn("%s: read error: %s", t->path, uv_strerror((int)n));
    }
    /* EOF (or an error): a drained old file is closed now; else the round is over. */
    if (t->draining)
        tail_close_old(t);
    else
        tail_round_end(t);
}

static void tail_read_next(struct tail *t)
{
    uv_buf_t b = uv_buf_init(t->buf, TAIL_READ_CHUNK);
    int rc = uv_fs_read(t->loop, &t->req, t->fd, &b, 1, t->offset, tail_read_done);
    if (rc < 0) {
        log_warn("%s: read: %s", t->path, uv_strerror(rc));
        tail_round_end(t);
    }
}

static void tail_fstat_done(uv_fs_t *req)
{
    struct tail *t = container_of(req, struct tail, req);
    int64_t rc = req->result;
    uv_stat_t sb = req->statbuf;
    uv_fs_req_cleanup(req);
    if (rc < 0 || t->closing) {
        tail_round_end(t);
        return;
    }
    t->dev = sb.st_dev;
    t->ino = sb.st_ino;
    t->st.file_open = true;
    int64_t size = (int64_t)sb.st_size;
    if (t->ever_opened) {
        /* A file that appeared or replaced the old one: all of it is new. */
        t->offset = 0;
    } else if (t->have_resume) {
        if (t->resume.dev == t->dev && t->resume.ino == t->ino && t->resume.offset >= 0 &&
            t->resume.offset <= size)
            t->offset = t->resume.offset;
        else
            t->offset = 0;
    } else {
        t->offset = t->from_start ? 0 : size;
    }
    t->ever_opened = true;
    tail_read_next(t);
}

static void tail_open_done(uv_fs_t *req)
{
    struct tail *t = container_of(req, struct tail, req);
    int64_t rc = req->result;
    uv_fs_req_cleanup(req);
    if (rc < 0) {
        if (!t->missing)
            log_warn("%s: cannot open: %s (will retry)", t->path, uv_strerror((int)rc));
        t->missing = true;
        t->ever_opened = true;
        tail_round_end(t);
        return;
    }
    t->fd = (uv_file)rc;
    if (t->closing) {
        tail_round_end(t);
        return;
    }
    if (uv_fs_fstat(t->loop, &t->req, t->fd, tail_fstat_done) < 0)
        tail_round_end(t);
}

static void tail_stat_done(uv_fs_t *req)
{
    struct tail *t = container_of(req, struct tail, req);
    int64_t rc = req->result;
    uv_stat_t sb = req->statbuf;
    uv_fs_req_cleanup(req);
    if (t->closing) {
        tail_round_end(t);
        return;
    }
    if (rc < 0) {
        /* Gone (renamed by logrotate and not yet recreated, or never there). A writer
         * may go on writing to the renamed file until it reopens the name: keep the old
         * descriptor and read it until a new file appears under the name. */
        if (!t->missing)
            log_warn("%s: %s (will retry every poll)", t->path, uv_strerror((int)rc));
        t->missing = true;
        /* Whatever file appears under the name later is new: read it from its start. */
        t->ever_opened = true;
        if (t->fd >= 0)
            tail_read_next(t);
        else
            tail_round_end(t);
        return;
    }
    if (t->missing) {
        log_info("%s: present again", t->path);
        t->missing = false;
    }
    if (t->fd < 0) {
        tail_open_new(t);
        return;
    }
    if (sb.st_dev != t->dev || sb.st_ino != t->ino) {
        t->st.rotations++;
        log_info("%s: rotated; finishing the old file at offset %lld", t->path,
                 (long long)t->offset);
        t->draining = true;
        t->reopen = true;
        tail_read_next(t);
        return;
    }
    if ((int64_t)sb.st_size < t->offset) {
        t->st.truncations++;
        log_info("%s: truncated (size %lld < offset %lld); reading from the start", t->path,
                 (long long)sb.st_size, (long long)t->offset);
        t->offset = 0;
        maillog_splitter_reset(t->split);
    }
    if ((int64_t)sb.st_size == t->offset) {
        tail_round_end(t);
        return;
    }
    tail_read_next(t);
}

static void tail_journal_line(struct journal *j, const char *line, size_t len, void *arg)
{
    struct tail *t = arg;
    (void)j;
    if (t->closing)
        return;
    t->st.lines++;
    t->st.bytes += len + 1;
    t->cb(t, line, len, false, t->arg);
}

static void tail_journal_polled(struct journal *j, void *arg)
{
    (void)j;
    tail_round_end(arg);
}

int tail_poll(struct tail *t, tail_poll_cb done, void *done_arg)
{
    if (!t || t->closing)
        return -EINVAL;
    if (t->busy)
        return -EBUSY;
    if (t->use_journal) {
        if (!t->jr)
            return -ENOENT;
        int jrc = journal_poll(t->jr, tail_journal_polled, t);
        if (jrc < 0)
            return jrc;
        t->busy = true;
        t->done = done;
        t->done_arg = done_arg;
        return 0;
    }
    int rc = uv_fs_stat(t->loop, &t->req, t->path, tail_stat_done);
    if (rc < 0)
        return rc;
    t->busy = true;
    t->done = done;
    t->done_arg = done_arg;
    return 0;
}

static void tail_on_timer(uv_timer_t *timer)
{
    struct tail *t = timer->data;
    (void)tail_poll(t, NULL, NULL);
}

struct tail *tail_new(uv_loop_t *loop, const char *path, const struct tail_opts *opts,
                      tail_line_cb cb, void *arg)
{
    static const struct tail_opts defaults;
    if (!opts)
        opts = &defaults;
    if (!loop || !path || !cb)
        return NULL;
    struct tail *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->path = strdup(path);
    t->buf = malloc(TAIL_READ_CHUNK);
    t->split = maillog_splitter_new(opts->max_line);
    if (!t->path || !t->buf || !t->split) {
        maillog_splitter_free(t->split);
        free(t->buf);
        free(t->path);
        free(t);
        return NULL;
    }
    t->loop = loop;
    t->cb = cb;
    t->arg = arg;
    t->interval_ms = opts->interval_ms;
    t->from_start = opts->from_start;
    if (opts->resume) {
        t->have_resume = true;
        t->resume = *opts->resume;
    }
    t->fd = -1;
    t->offset = -1;
    bool oom =
        opts->syslog_name && opts->syslog_name[0] && !(t->syslog_name = strdup(opts->syslog_name));
    if (strcmp(path, "journal") == 0 || strncmp(path, "journal:", 8) == 0) {
        t->use_journal = true;
        oom = oom || (path[7] == ':' && path[8] && !(t->journal_dir = strdup(path + 8)));
    }
    if (oom) {
        maillog_splitter_free(t->split);
        free(t->buf);
        free(t->path);
        free(t->syslog_name);
        free(t->journal_dir);
        free(t);
        return NULL;
    }
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    return t;
}

const char *tail_syslog_name(const struct tail *t)
{
    if (t->jr)
        return journal_syslog_name(t->jr);
    return t->use_journal && t->syslog_name ? t->syslog_name : "";
}

/* Says which journal entries are read (at start, and when the syslog_name changes). */
static void tail_log_filter(const struct tail *t)
{
    const char *name = tail_syslog_name(t);
    if (name[0])
        log_info("mail log: journal entries of syslog_name %s (identifiers %s and %s/...)", name,
                 name, name);
    else
        log_info("mail log: journal entries wait until Postfix's syslog_name is known");
}

int tail_set_syslog_name(struct tail *t, const char *syslog_name)
{
    if (!t || t->closing || !syslog_name || !syslog_name[0])
        return -EINVAL;
    if (strcmp(tail_syslog_name(t), syslog_name) == 0)
        return 0;
    if (t->jr) {
        /* The journal keeps the name from its open on. */
        int rc = journal_set_syslog_name(t->jr, syslog_name);
        if (rc == 0)
            tail_log_filter(t);
        return rc;
    }
    char *copy = strdup(syslog_name);
    if (!copy)
        return -ENOMEM;
    free(t->syslog_name);
    t->syslog_name = copy;
    return 0;
}

/* Opens the journal as the source (start-up only: the open is synchronous). */
static int tail_open_journal(struct tail *t)
{
    int err = 0;
    struct journal_opts jo = {
        .directory = t->journal_dir, .from_start = t->from_start, .syslog_name = t->syslog_name};
    t->jr = journal_new(t->loop, &jo, tail_journal_line, t, &err);
    if (!t->jr) {
        log_error("the systemd journal%s%s: %s", t->journal_dir ? " in " : "",
                  t->journal_dir ? t->journal_dir : "",
                  err == -ENOTSUP ? "this build has no journal support (libsystemd)"
                                  : strerror(-err));
        return err;
    }
    t->st.file_open = true;
    return journal_start(t->jr);
}

int tail_start(struct tail *t)
{
    if (!t || t->closing)
        return -EINVAL;
    if (!t->use_journal) {
        /* Debian 12 has no syslog daemon by default: Postfix logs to the journal only and
         * the default /var/log/mail.log never appears. Read the journal instead then. */
        uv_fs_t req;
        int src = uv_fs_stat(NULL, &req, t->path, NULL);
        uv_fs_req_cleanup(&req);
        if (src == UV_ENOENT && journal_available(NULL)) {
            log_info("mail log: %s does not exist; reading the systemd journal instead", t->path);
            t->use_journal = true;
        } else {
            log_info("mail log: following %s", t->path);
        }
    } else {
        log_info("mail log: reading the systemd journal%s%s", t->journal_dir ? " in " : "",
                 t->journal_dir ? t->journal_dir : "");
    }
    if (t->use_journal) {
        int jrc = tail_open_journal(t);
        if (jrc < 0)
            return jrc;
        tail_log_filter(t);
    }
    if (t->interval_ms)
        uv_timer_start(&t->timer, tail_on_timer, t->interval_ms, t->interval_ms);
    int rc = tail_poll(t, NULL, NULL);
    return rc == -EBUSY ? 0 : rc;
}

void tail_get_pos(const struct tail *t, struct tail_pos *pos)
{
    /* The splitter holds the bytes of a partial line: resume before them. */
    pos->dev = t->dev;
    pos->ino = t->ino;
    pos->offset = t->fd >= 0 ? t->offset - (int64_t)maillog_splitter_pending(t->split) : -1;
}

void tail_get_stats(const struct tail *t, struct tail_stats *st)
{
    *st = t->st;
}

const char *tail_source(const struct tail *t)
{
    return t->use_journal ? "journal" : t->path;
}

void tail_close(struct tail *t, tail_closed_cb closed, void *arg)
{
    if (!t || t->closing)
        return;
    t->closing = true;
    t->closed = closed;
    t->closed_arg = arg;
    uv_timer_stop(&t->timer);
    if (!t->busy)
        tail_finish_close(t);
}
