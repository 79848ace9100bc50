/* ctlsock: the control socket server (state_directory/control.sock): one line command,
 * one JSON answer, then close. The socket is 0660 in the daemon's group: root and the
 * daemon's user may change things (stress, restore, limits reset), the group's members
 * only read (status, events, limits list/show/top), told apart by SO_PEERCRED. */
/* struct ucred, SO_PEERCRED */
#define _GNU_SOURCE
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

#include <grp.h>
#include <pwd.h>

/* ---- control socket ---- */

static void client_on_close(uv_handle_t *h)
{
    struct ctl_client *cl = h->data;
    struct controller *c = cl->c;
    for (struct ctl_client **p = &c->clients; *p; p = &(*p)->next)
        if (*p == cl) {
            *p = cl->next;
            break;
        }
    c->n_clients--;
    if (cl->waiting)
        cl->closed = true; /* client_on_limits frees it */
    else
        free(cl);
}

void ctlsock_client_close(struct ctl_client *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    uv_close((uv_handle_t *)&cl->h, client_on_close);
}

struct ctl_write {
    uv_write_t w;
    struct ctl_client *cl;
    char *data;
};

static void client_on_write(uv_write_t *w, int status)
{
    struct ctl_write *cw = (struct ctl_write *)w;
    (void)status;
    ctlsock_client_close(cw->cl);
    free(cw->data);
    free(cw);
}

/* Sends o (stolen) as the answer and closes. */
static void client_reply(struct ctl_client *cl, json_t *o)
{
    cl->answered = true;
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (cl->closing || !s) {
        free(s);
        ctlsock_client_close(cl);
        return;
    }
    size_t l = strlen(s);
    s[l] = '\n';
    struct ctl_write *cw = calloc(1, sizeof(*cw));
    if (!cw) {
        free(s);
        ctlsock_client_close(cl);
        return;
    }
    cw->cl = cl;
    cw->data = s;
    uv_buf_t b = uv_buf_init(s, (unsigned)l + 1);
    if (uv_write(&cw->w, (uv_stream_t *)&cl->h, &b, 1, client_on_write) < 0) {
        free(s);
        free(cw);
        ctlsock_client_close(cl);
    }
}

/* The answer to a command that waited for the store (events, limits). The client may
 * have been closed meanwhile (a stop, or the peer went away): it was kept for this
 * callback, which frees it instead of answering. */
static void client_reply_later(struct ctl_client *cl, json_t *o)
{
    cl->waiting = false;
    if (cl->closed) {
        json_decref(o);
        free(cl);
        return;
    }
    client_reply(cl, o);
}

static void client_on_events(void *arg, int status, json_t *events)
{
    struct ctl_client *cl = arg;
    if (status < 0)
        client_reply_later(cl, json_pack("{s:b,s:s}", "ok", 0, "error", strerror(-status)));
    else
        client_reply_later(cl, json_pack("{s:b,s:O}", "ok", 1, "events", events));
}

static void client_on_limits(void *arg, json_t *o)
{
    client_reply_later(arg, o);
}

static void ctl_force(struct controller *c, enum stress_force f, struct ctl_client *cl)
{
    struct stress_result r;
    if (stress_force(c->sm, f, (int64_t)uv_now(c->loop), &r) < 0) {
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "invalid"));
        return;
    }
    if (r.event != STRESS_EVENT_NONE) {
        r.saturation = c->have_result ? c->last.saturation : 0;
        ctl_on_transition(c, &r);
    }
    c->last.forced = r.forced;
    if (c->have_result) {
        c->last.state = r.state;
        c->last.since_ms = r.since_ms;
    }
    ctl_reconcile(c);
    client_reply(cl, json_pack("{s:b,s:s,s:s}", "ok", 1, "state", stress_state_name(r.state),
                               "event", stress_event_name(r.event)));
}

/* True for the commands a member of the daemon's group may run: they read and change
 * nothing (status, events, limits list/show/top). Every other command (stress, restore,
 * limits reset/set/unset, and whatever is added later) is a change: an allow-list, so a
 * new command is closed to the group until it is put here. */
static bool command_reads_only(const char *w1, const char *w2)
{
    if (strcmp(w1, "status") == 0 || strcmp(w1, "events") == 0)
        return true;
    return strcmp(w1, "limits") == 0 &&
           (!w2 || strcmp(w2, "list") == 0 || strcmp(w2, "show") == 0 || strcmp(w2, "top") == 0);
}

/* The refused command's name for the message, from fixed texts: no byte of the peer's
 * line reaches the log. */
static const char *command_name(const char *w1, const char *w2)
{
    if (strcmp(w1, "stress") == 0 || strcmp(w1, "restore") == 0)
        return strcmp(w1, "stress") == 0 ? "stress" : "restore";
    if (strcmp(w1, "limits") == 0 && w2) {
        if (strcmp(w2, "reset") == 0)
            return "limits reset";
        if (strcmp(w2, "set") == 0)
            return "limits set";
        if (strcmp(w2, "unset") == 0)
            return "limits unset";
    }
    return "this command";
}

static void client_command(struct ctl_client *cl, char *line)
{
    struct controller *c = cl->c;
    char *save = NULL;
    char *w1 = strtok_r(line, " \t", &save);
    char *w2 = strtok_r(NULL, " \t", &save);
    char *w3 = strtok_r(NULL, " \t", &save);
    if (w1 && !cl->may_change && !command_reads_only(w1, w2)) {
        const char *what = command_name(w1, w2);
        char msg[400];
        snprintf(msg, sizeof(msg),
                 "%s changes the daemon: only root and the user %s may; uid %ld may read "
                 "(status, events, limits list/show/top) as a member of group %s",
                 what, c->ctl_user, cl->peer_uid, c->ctl_group);
        log_info("control: %s refused to uid %ld (read-only)", what, cl->peer_uid);
        client_reply(cl, json_pack("{s:b,s:s,s:b}", "ok", 0, "error", msg, "read_only", 1));
        return;
    }
    if (!w1) {
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "empty command"));
    } else if (strcmp(w1, "status") == 0) {
        json_t *o = ctl_cluster_json(c);
        json_object_set_new(o, "ok", json_true());
        client_reply(cl, o);
    } else if (strcmp(w1, "events") == 0) {
        int64_t since = w2 ? strtoll(w2, NULL, 10) : 0;
        size_t max = w3 ? (size_t)strtoull(w3, NULL, 10) : 1000;
        cl->waiting = true;
        if (!c->node ||
            node_events_read(c->node, since, max ? max : 1000, client_on_events, cl) < 0) {
            cl->waiting = false;
            client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "event log unavailable"));
        }
    } else if (strcmp(w1, "stress") == 0 && w2 && strcmp(w2, "enter") == 0) {
        log_info("control: stress enter requested");
        ctl_force(c, STRESS_FORCE_ENTER, cl);
    } else if (strcmp(w1, "stress") == 0 && w2 && strcmp(w2, "exit") == 0) {
        log_info("control: stress exit requested");
        ctl_force(c, STRESS_FORCE_EXIT, cl);
    } else if (strcmp(w1, "stress") == 0 && w2 && strcmp(w2, "auto") == 0) {
        ctl_force(c, STRESS_FORCE_AUTO, cl);
    } else if (strcmp(w1, "limits") == 0) {
        /* The rate limits' commands belong to the engine (server/engine.c). */
        /* Up to 7 words (limits set RULE VALUE COUNT for DURATION); 8 means too many. */
        char *argv[8] = {w1, w2, w3};
        int argc = w2 ? (w3 ? 3 : 2) : 1;
        while (w3 && argc < 8 && (argv[argc] = strtok_r(NULL, " \t", &save)) != NULL)
            argc++;
        cl->waiting = true;
        engine_limits_command(c->engine, argc, argv, client_on_limits, cl);
    } else if (strcmp(w1, "restore") == 0) {
        log_info("control: restore requested");
        c->restore_retry_at = 0;
        if (stress_state_get(c->sm) == STRESS_STRESSED) {
            ctl_force(c, STRESS_FORCE_EXIT, cl);
            return;
        }
        ctl_reconcile(c);
        client_reply(cl, json_pack("{s:b,s:b}", "ok", 1, "journal", c->journal != NULL));
    } else {
        client_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", "unknown command"));
    }
}

static void client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct ctl_client *cl = h->data;
    (void)hint;
    *buf = uv_buf_init(cl->buf + cl->len, (unsigned)(sizeof(cl->buf) - 1 - cl->len));
}

static void client_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ctl_client *cl = s->data;
    (void)buf;
    if (cl->answered || cl->closing)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && cl->len > 0) {
            uv_read_stop(s);
            cl->buf[cl->len] = '\0';
            client_command(cl, cl->buf);
        } else {
            ctlsock_client_close(cl);
        }
        return;
    }
    cl->len += (size_t)nread;
    char *nl = memchr(cl->buf, '\n', cl->len);
    if (nl) {
        *nl = '\0';
        uv_read_stop(s);
        client_command(cl, cl->buf);
    } else if (cl->len >= sizeof(cl->buf) - 1) {
        ctlsock_client_close(cl);
    }
}

/* Sorts the peer out by SO_PEERCRED: root and the daemon's user may change; a member of
 * the daemon's group (primary, or supplementary by SO_PEERGROUPS) reads; anyone else is
 * refused (-EACCES). The socket's mode keeps others out already: this holds should it be
 * widened. */
static int peer_access(struct controller *c, struct ctl_client *cl)
{
    uv_os_fd_t fd;
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (uv_fileno((uv_handle_t *)&cl->h, &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return -EACCES;
    cl->peer_uid = (long)cr.uid;
    cl->may_change = cr.uid == 0 || cr.uid == c->ctl_uid;
    if (cl->may_change || cr.gid == c->ctl_gid)
        return 0;
    gid_t groups[256];
    len = sizeof(groups);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
        for (size_t i = 0; i < len / sizeof(groups[0]); i++) {
            if (groups[i] == c->ctl_gid)
                return 0;
        }
    }
    log_warn("control: uid %ld refused: neither root, the daemon's user nor in group %s",
             cl->peer_uid, c->ctl_group);
    return -EACCES;
}

static void ctl_on_connection(uv_stream_t *server, int status)
{
    struct controller *c = server->data;
    if (status < 0)
        return;
    struct ctl_client *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return;
    cl->c = c;
    uv_pipe_init(c->loop, &cl->h, 0);
    cl->h.data = cl;
    cl->next = c->clients;
    c->clients = cl;
    c->n_clients++;
    if (uv_accept(server, (uv_stream_t *)&cl->h) < 0 || c->n_clients > CTL_MAX_CLIENTS ||
        c->stopping || peer_access(c, cl) < 0) {
        ctlsock_client_close(cl);
        return;
    }
    uv_read_start((uv_stream_t *)&cl->h, client_alloc, client_on_read);
}

/* True when another process answers on the socket (a second daemon on this state dir). */
static bool socket_in_use(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path))
        return false;
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool used = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return used;
}

int ctlsock_open(struct controller *c)
{
    /* Start-up: a blocking connect to a local socket is immediate. */
    if (socket_in_use(c->socket_path)) {
        log_error("%s: another postsurge answers there; control socket not opened", c->socket_path);
        return -EADDRINUSE;
    }
    unlink(c->socket_path);
    int rc = uv_pipe_init(c->loop, &c->ctl, 0);
    if (rc < 0)
        return rc;
    c->ctl.data = c;
    c->ctl_open = true;
    /* Start-up: the name lookups may block. */
    c->ctl_uid = geteuid();
    c->ctl_gid = getegid();
    struct passwd *pw = getpwuid(c->ctl_uid);
    struct group *gr = getgrgid(c->ctl_gid);
    if (pw)
        snprintf(c->ctl_user, sizeof(c->ctl_user), "%s", pw->pw_name);
    else
        snprintf(c->ctl_user, sizeof(c->ctl_user), "uid %ld", (long)c->ctl_uid);
    if (gr)
        snprintf(c->ctl_group, sizeof(c->ctl_group), "%s", gr->gr_name);
    else
        snprintf(c->ctl_group, sizeof(c->ctl_group), "gid %ld", (long)c->ctl_gid);
    /* 0660 in the daemon's group (the process's, after the privilege drop): the group's
     * members may connect, and peer_access() lets them read only. */
    mode_t old = umask(0117);
    rc = uv_pipe_bind(&c->ctl, c->socket_path);
    umask(old);
    if (rc == 0)
        rc = chmod(c->socket_path, 0660) < 0 ? -errno : 0;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&c->ctl, 8, ctl_on_connection);
    if (rc < 0)
        log_error("control socket %s: %s", c->socket_path, uv_strerror(rc));
    return rc;
}
