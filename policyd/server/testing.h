#ifndef POSTSURGE_SERVER_TESTING_H
#define POSTSURGE_SERVER_TESTING_H
/* Test-only deciders, compiled into the `postsurge-testing` binary only (never into the
 * shipped `postsurge`): main.c calls testing_install() when built with POSTSURGE_TESTING. */

#include "server/server.h"

/* Replaces srv's default decider as the environment asks:
 *   POSTSURGE_TEST_DECIDE_ECHO=1       answers "INFO <recipient>" instead of default_action,
 *                                      so tests can tell replies apart and check their order;
 *   POSTSURGE_TEST_DECIDE_DELAY_MS=N   answers after N ms from a timer (the asynchronous
 *                                      path: pipelining behind a pending decision, cancel on
 *                                      close, drain with a decision in flight). */
void testing_install(struct server *srv);

#endif
