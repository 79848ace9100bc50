/* conn: a policy client connection. read → policy parser → decider → reply, strictly in
 * request order. Peers are untrusted: every buffer is capped, every protocol error is one
 * log line and a counter, and closes this connection only. Memory is freed only in the
 * close callbacks, so a late decider or write callback never sees a freed conn. */
#define LOG_COMPONENT "server"
#include "conn.h"
#include "util/metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* After a storm of connections, give freed heap back once the live count has halved by
 * at least this many (see conn_release_memory). */
#define CONN_TRIM_DROP 1024
/* Conns allocated and not yet freed (conn_open falls before the close callbacks free), and
 * the most of them since the last trim. */
static uint64_t conn_live, conn_high_water;

static void conn_process(struct conn *c);
static void conn_maybe_finish(struct conn *c);
static void conn_on_idle(uv_timer_t *t);
static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* glibc keeps freed heap mapped where live blocks sit above it, so after 10,000 idle
 * clients leave the daemon would stay at its peak size (about 11 KB a connection) for
 * good. Trim when the live count has fallen to half its high-water mark: a few heap walks
 * per storm, none in steady traffic. */
static void conn_release_memory(void)
{
#ifdef __GLIBC__
    if (conn_high_water >= conn_live + CONN_TRIM_DROP && conn_live * 2 <= conn_high_water) {
        malloc_trim(0);
        conn_high_water = conn_live;
    }
#endif
}

static void conn_on_close(uv_handle_t *h)
{
    struct conn *c = h->data;

    if (--c->open_handles > 0)
        return;
    if (c->dec.conn_state_free)
        c->dec.conn_state_free(c->dec.conn_state);
    policy_parser_free(c->parser);
    free(c->out);
    free(c->wbuf);
    free(c);
    conn_live--;
    conn_release_memory();
}

void conn_close(struct conn *c)
{
    struct server *srv = c->srv;

    if (c->closing)
        return;
    c->closing = true;
    if (c->deciding) {
        /* The decider must forget dec before we free it in the close callback. */
        struct decider *d = c->decider;
        c->deciding = false;
        if (d->cancel)
            d->cancel(d, &c->dec);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    srv->stats.conn_open--;
    log_debug("%s: disconnect after %llu requests, %llu bytes", c->peer,
              (unsigned long long)c->requests, (unsigned long long)c->bytes_in);
    uv_close(&c->h.handle, conn_on_close);
    uv_close((uv_handle_t *)&c->idle, conn_on_close);
    server_conn_closed(srv);
}

static void conn_protocol_error(struct conn *c, enum server_err_class cls, const char *what)
{
    struct server *srv = c->srv;

    srv->stats.protocol_errors[cls]++;
    log_warn_burst_limited(&srv->rl_proto, server_now_ms(srv), 1000, 20,
                           "%s: protocol error: %s (%s) after %llu bytes, closing", c->peer,
                           server_err_class_name(cls), what, (unsigned long long)c->bytes_in);
    conn_close(c);
}

static void conn_idle_restart(struct conn *c)
{
    int64_t ms = c->srv->cfg->idle_timeout;

    if (c->closing)
        return;
    if (ms <= 0) {
        uv_timer_stop(&c->idle);
        return;
    }
    uv_timer_start(&c->idle, conn_on_idle, (uint64_t)ms, 0);
}

static void conn_on_idle(uv_timer_t *t)
{
    struct conn *c = container_of(t, struct conn, idle);

    /* A decision taking as long as the idle timeout is the engine's problem, not an
     * idle client; its own timeout answers first. */
    if (c->deciding) {
        conn_idle_restart(c);
        return;
    }
    c->srv->stats.conn_idle_closed++;
    log_info("%s: idle for %lld ms, closing", c->peer, (long long)c->srv->cfg->idle_timeout);
    conn_close(c);
}

static void conn_on_write(uv_write_t *req, int status);

/* Hands staged replies to the socket: directly if it takes them, else one uv_write. */
static void conn_flush(struct conn *c)
{
    if (c->closing || c->writing || c->out_len == 0)
        return;
    uv_buf_t b = uv_buf_init(c->out, (unsigned)c->out_len);
    int n = uv_try_write(&c->h.stream, &b, 1);
    if (n == (int)c->out_len) {
        c->out_len = 0;
        return;
    }
    if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
        log_debug("%s: write: %s", c->peer, uv_strerror(n));
        conn_close(c);
        return;
    }
    if (n > 0) {
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    /* Swap buffers: out becomes the write in flight, the old wbuf collects new replies. */
    char *tb = c->wbuf;
    size_t tc = c->wcap;
    c->wbuf = c->out;
    c->wcap = c->out_cap;
    c->wlen = c->out_len;
    c->out = tb;
    c->out_cap = tc;
    c->out_len = 0;
    b = uv_buf_init(c->wbuf, (unsigned)c->wlen);
    int rc = uv_write(&c->write_req, &c->h.stream, &b, 1, conn_on_write);
    if (rc < 0) {
        log_debug("%s: write: %s", c->peer, uv_strerror(rc));
        conn_close(c);
        return;
    }
    c->writing = true;
}

static void conn_on_write(uv_write_t *req, int status)
{
    struct conn *c = container_of(req, struct conn, write_req);

    c->writing = false;
    c->wlen = 0;
    if (c->closing)
        return;
    if (status < 0) {
        log_debug("%s: write: %s", c->peer, uv_strerror(status));
        conn_close(c);
        return;
    }
    conn_flush(c);
    conn_maybe_finish(c);
}

/* Encodes and stages one reply; closes the connection if its output is over the cap. */
static void conn_reply(struct conn *c, const char *action, size_t len)
{
    struct server *srv = c->srv;
    char line[POLICY_MAX_ACTION + 16];
    int n = policy_encode_response(action, len, line, sizeof(line));

    if (n < 0) {
        /* A decider bug must not turn into a protocol violation: fail open. */
        log_warn_ratelimited(&srv->rl_decide, server_now_ms(srv), server_repeat_ms(srv),
                             "%s: refusing to send invalid action \"%.*s\"; sending %s", c->peer,
                             (int)(len > 200 ? 200 : len), action, srv->cfg->default_action);
        action = srv->cfg->default_action;
        len = strlen(action);
        n = policy_encode_response(action, len, line, sizeof(line));
        if (n < 0) {
            action = "DUNNO";
            len = 5;
            n = policy_encode_response(action, len, line, sizeof(line));
        }
    }
    srv->stats.replies[server_action_classify(action, len)]++;

    size_t queued = c->out_len + c->wlen + uv_stream_get_write_queue_size(&c->h.stream);
    if (queued + (size_t)n > (size_t)srv->cfg->max_output_buffer) {
        srv->stats.protocol_errors[SERVER_ERR_OUTPUT_OVERFLOW]++;
        log_warn_burst_limited(&srv->rl_overflow, server_now_ms(srv), 1000, 20,
                               "%s: %zu bytes of replies not read by the client (limit "
                               "max_output_buffer = %lld), closing",
                               c->peer, queued + (size_t)n, (long long)srv->cfg->max_output_buffer);
        conn_close(c);
        return;
    }
    if (c->out_len + (size_t)n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 256;
        while (cap < c->out_len + (size_t)n)
            cap *= 2;
        char *p = realloc(c->out, cap);
        if (!p) {
            log_error("%s: out of memory for replies, closing", c->peer);
            conn_close(c);
            return;
        }
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, line, (size_t)n);
    c->out_len += (size_t)n;
}

static void conn_log_decision(struct conn *c, const char *action, size_t len)
{
    const struct policy_request *r = c->dec.req;
    /* A decider that logged the decision (naming its rule) leaves this line to debug. */
    bool dunno = c->dec.logged || (len == 5 && strncasecmp(action, "DUNNO", 5) == 0);
    char qid[40];

    policy_queue_id_prefix(r, qid, sizeof(qid));
#define A(x) (r->attr[x] ? r->attr[x] : "")
    if (!dunno)
        log_info("%s%s: %s client=%s sasl_username=%s sender=<%s> recipient=<%s>: action=%.*s", qid,
                 c->peer, A(POLICY_PROTOCOL_STATE), A(POLICY_CLIENT_ADDRESS),
                 A(POLICY_SASL_USERNAME), A(POLICY_SENDER), A(POLICY_RECIPIENT), (int)len, action);
    else
        log_debug("%s%s: %s client=%s sasl_username=%s sender=<%s> recipient=<%s>: action=%.*s",
                  qid, c->peer, A(POLICY_PROTOCOL_STATE), A(POLICY_CLIENT_ADDRESS),
                  A(POLICY_SASL_USERNAME), A(POLICY_SENDER), A(POLICY_RECIPIENT), (int)len, action);
#undef A
}

/* The decider's answer, now or later. */
static void conn_on_decided(struct decision *dec, const char *action, size_t len)
{
    struct conn *c = container_of(dec, struct conn, dec);

    if (!c->deciding || c->closing)
        return; /* cancelled: a decider bug, but harmless */
    conn_log_decision(c, action, len);
    c->deciding = false;
    conn_reply(c, action, len);
    if (c->srv->request_latency)
        metrics_observe(c->srv->request_latency, (double)(uv_hrtime() - c->decide_start_ns) / 1e9);
    c->dec.req = NULL;
    c->dec.engine_data = NULL;
    if (c->in_process || c->closing)
        return; /* conn_process() continues from where start() was called */
    conn_process(c);
}

static void conn_decide(struct conn *c, const struct policy_request *req)
{
    struct server *srv = c->srv;
    struct decider *d = srv->decider;

    srv->stats.requests++;
    c->requests++;
    c->decide_start_ns = uv_hrtime();
    c->dec.req = req;
    c->dec.srv = srv;
    c->dec.peer = c->peer;
    c->dec.done = conn_on_decided;
    c->dec.engine_data = NULL;
    c->dec.logged = false;
    c->deciding = true;
    c->decider = d;
    int rc = d->start(d, &c->dec);
    if (rc == 0 && c->deciding)
        log_debug("%s: request %llu waits for a decision", c->peer,
                  (unsigned long long)c->requests);
    if (rc < 0 && c->deciding) {
        srv->stats.decide_failures++;
        log_warn_ratelimited(&srv->rl_decide, server_now_ms(srv), server_repeat_ms(srv),
                             "%s: decision failed (%s); answering %s", c->peer, strerror(-rc),
                             srv->cfg->default_action);
        conn_on_decided(&c->dec, srv->cfg->default_action, strlen(srv->cfg->default_action));
    }
}

/* Feeds buffered input to the parser, one request at a time, until it is used up or a
 * decision is pending; then flushes replies and starts or stops reading. */
static void conn_process(struct conn *c)
{
    c->in_process = true;
    while (!c->closing && !c->deciding && c->rpos < c->rend) {
        size_t used = 0;
        int st = policy_parser_feed(c->parser, c->rbuf + c->rpos, c->rend - c->rpos, &used);
        c->rpos += used;
        if (st == POLICY_MORE) {
            c->rpos = c->rend;
            break;
        }
        if (st < 0) {
            c->in_process = false;
            conn_protocol_error(c, (enum server_err_class) - st, policy_strerror(st));
            return;
        }
        conn_decide(c, policy_parser_request(c->parser));
    }
    c->in_process = false;
    if (c->closing)
        return;
    if (c->rpos == c->rend)
        c->rpos = c->rend = 0;
    conn_flush(c);
    if (c->closing)
        return;
    if (c->rpos < c->rend) {
        /* Hold the rest in the kernel until the pending decision is answered. While a
         * decision is pending with nothing buffered, reading goes on: smtpd sends the
         * next request only after our reply, so stopping and restarting would cost two
         * epoll_ctl calls per request for nothing (conn_on_read stops it if a
         * pipelining client sends more). */
        if (c->reading) {
            uv_read_stop(&c->h.stream);
            c->reading = false;
        }
    } else if (!c->reading && !c->eof) {
        int rc = uv_read_start(&c->h.stream, conn_on_alloc, conn_on_read);
        if (rc < 0) {
            log_debug("%s: read: %s", c->peer, uv_strerror(rc));
            conn_close(c);
            return;
        }
        c->reading = true;
    }
    conn_maybe_finish(c);
}

/* Closes a connection that has nothing more to do: the peer sent EOF or the server is
 * draining, and every reply is written. A partial request keeps a draining connection
 * open (its rest is on the way) until the grace timer. */
static void conn_maybe_finish(struct conn *c)
{
    if (c->closing || c->deciding || c->writing || c->out_len || c->rpos < c->rend)
        return;
    if (c->eof) {
        if (policy_parser_pending(c->parser)) {
            conn_protocol_error(c, SERVER_ERR_TRUNCATED, "connection closed in a request");
            return;
        }
        conn_close(c);
    } else if (c->srv->draining && !policy_parser_pending(c->parser)) {
        conn_close(c);
    }
}

void conn_drain(struct conn *c)
{
    conn_maybe_finish(c);
}

bool conn_reap_if_gone(struct conn *c)
{
    uv_os_fd_t fd;
    char b;

    if (c->closing || c->deciding || c->writing || c->out_len || c->rpos < c->rend ||
        policy_parser_pending(c->parser) || uv_fileno(&c->h.handle, &fd) < 0)
        return false;
    /* 0: orderly close with nothing unread; an error: reset. Unread bytes or EAGAIN mean
     * the peer is still there (or its last request is on the way): the loop handles it. */
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
        return false;
    c->srv->stats.conn_reaped++;
    conn_close(c);
    return true;
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;

    /* Reading runs only when every buffered byte was fed (or, while a decision is
     * pending, until the first bytes arrive), so the buffer is free from rend on. */
    if (c->rpos == c->rend)
        c->rpos = c->rend = 0;
    *buf = uv_buf_init(c->rbuf + c->rend, (unsigned)(sizeof(c->rbuf) - c->rend));
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;

    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        uv_read_stop(s);
        c->reading = false;
        if (nread == UV_EOF) {
            c->eof = true;
            conn_maybe_finish(c);
            return;
        }
        c->srv->stats.conn_read_errors++;
        log_debug("%s: read: %s", c->peer, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->bytes_in += (uint64_t)nread;
    c->rend += (size_t)nread;
    conn_idle_restart(c);
    if (c->deciding) {
        /* More input behind the pending decision: keep it until the answer. */
        uv_read_stop(s);
        c->reading = false;
        return;
    }
    conn_process(c);
}

static void conn_peer_name(struct conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    if (c->h.handle.type == UV_NAMED_PIPE) {
        snprintf(c->peer, sizeof(c->peer), "unix#%llu", (unsigned long long)c->id);
        return;
    }
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) == 0) {
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, host, sizeof(host));
            port = ntohs(a->sin6_port);
            snprintf(c->peer, sizeof(c->peer), "[%s]:%d", host, port);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, host, sizeof(host));
            port = ntohs(a->sin_port);
            snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
        }
        return;
    }
    snprintf(c->peer, sizeof(c->peer), "conn#%llu", (unsigned long long)c->id);
}

int conn_accept(struct server *srv, uv_stream_t *listener)
{
    struct conn *c = calloc(1, sizeof(*c));
    struct policy_limits lim;
    int rc;

    if (!c)
        return -ENOMEM;
    lim.max_line = (size_t)srv->cfg->max_line_length;
    lim.max_attrs = (size_t)srv->cfg->max_attributes;
    lim.max_request = (size_t)srv->cfg->max_request_size;
    c->parser = policy_parser_new(&lim);
    if (!c->parser) {
        free(c);
        return -ENOMEM;
    }
    c->srv = srv;
    c->id = ++srv->next_conn_id;
    if (listener->type == UV_NAMED_PIPE)
        rc = uv_pipe_init(srv->loop, &c->h.pipe, 0);
    else
        rc = uv_tcp_init(srv->loop, &c->h.tcp);
    if (rc < 0) {
        policy_parser_free(c->parser);
        free(c);
        return rc;
    }
    c->h.handle.data = c;
    uv_timer_init(srv->loop, &c->idle);
    c->idle.data = c;
    c->open_handles = 2;
    snprintf(c->peer, sizeof(c->peer), "conn#%llu", (unsigned long long)c->id);

    /* From here on the conn is freed through its close callbacks. */
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->stats.conn_open++;
    if (++conn_live > conn_high_water)
        conn_high_water = conn_live;
    rc = uv_accept(listener, &c->h.stream);
    if (rc < 0) {
        conn_close(c);
        return 0; /* the pending connection is gone; nothing for the caller to do */
    }
    srv->stats.conn_accepted++;
    if (c->h.handle.type == UV_TCP)
        uv_tcp_nodelay(&c->h.tcp, 1);
    conn_peer_name(c);
    log_debug("%s: connect", c->peer);
    rc = uv_read_start(&c->h.stream, conn_on_alloc, conn_on_read);
    if (rc < 0) {
        log_warn("%s: read: %s", c->peer, uv_strerror(rc));
        conn_close(c);
        return 0;
    }
    c->reading = true;
    conn_idle_restart(c);
    return 0;
}
