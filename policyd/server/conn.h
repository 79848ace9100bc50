/* conn: one policy client connection (one smtpd process, usually for its whole life).
 * Bytes read go to the policy parser; each complete request goes to the server's
 * decider; replies go out in request order, also when the client pipelines. While a
 * decision is pending, reading stops, so the borrowed request stays valid. */
#pragma once

#include "server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Bytes read per read callback; what a pending decision holds back stays here. */
#define CONN_READ_BUF 8192

/* A TCP or unix stream, seen as the handle or stream it is (connections and listeners). */
union stream_handle {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
};

struct conn {
    union stream_handle h;
    uv_timer_t idle;
    uv_write_t write_req;
    struct server *srv;
    struct conn *prev, *next; /* srv->conns while open */
    struct policy_parser *parser;
    struct decision dec;
    struct decider *decider; /* the engine dec is with, for cancel() */
    uint64_t id;
    char peer[64];

    char *out; /* replies not handed to libuv yet */
    size_t out_len, out_cap;
    char *wbuf; /* the one uv_write in flight */
    size_t wlen, wcap;

    uint64_t bytes_in, requests;
    uint64_t decide_start_ns; /* uv_hrtime() when the request went to the decider */
    size_t rpos, rend;
    int open_handles; /* stream + timer; freed when both close callbacks ran */
    bool reading;     /* uv_read_start active */
    bool deciding;    /* dec is with the decider */
    bool in_process;  /* inside conn_process(): done() must not recurse */
    bool writing;     /* write_req in flight */
    bool eof;         /* the peer finished sending */
    bool closing;
    char rbuf[CONN_READ_BUF];
};

/* Accepts a pending connection on listener (a tcp or pipe listener of srv's loop) into a
 * new conn linked into srv->conns, and starts reading. Returns 0 or a negative errno
 * (nothing allocated then; the pending connection is left for the caller). */
int conn_accept(struct server *srv, uv_stream_t *listener);

/* Closes a connection: cancels a pending decision, drops unsent replies, unlinks it from
 * the server; memory is freed in the close callbacks. Idempotent. */
void conn_close(struct conn *c);

/* The server is stopping: close now if nothing is in flight, else after the replies in
 * flight are written. */
void conn_drain(struct conn *c);

/* Closes c if it is idle (no request in progress, nothing to write) and its peer has
 * already closed or reset it, though the loop has not read that yet: a non-blocking peek
 * at the socket. Returns true if it closed c. For the server at max_connections, so a
 * client that connects and closes in a tight loop does not fill the cap with connections
 * that are gone. */
bool conn_reap_if_gone(struct conn *c);
