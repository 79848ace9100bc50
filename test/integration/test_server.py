"""The postsurge daemon as a policy server: listeners, persistent and pipelined
connections, every bad-input class, caps, idle timeout, SIGHUP and SIGTERM, socket files,
and the check-config/config commands. Each test starts its own daemon on a free loopback
port (or a unix socket in a temp dir) and always stops it."""
import os
import selectors
import signal
import socket
import struct
import stat
import subprocess
import sys
import shutil
import tempfile
import time
import unittest

from postsurge import SLOW, Postsurge, PolicyClient, encode, request, POSTSURGE, POSTSURGE_TESTING
from ports import wait_for
import testmain

# Async decisions for the tests that need a request in flight: answers after a delay,
# "INFO <recipient>" so order is visible. Only the test-only build reads these
# (policyd/server/testing.c, the postsurge-testing binary).
ASYNC_ENV = {"POSTSURGE_TEST_DECIDE_DELAY_MS": "200", "POSTSURGE_TEST_DECIDE_ECHO": "1"}
ECHO_ENV = {"POSTSURGE_TEST_DECIDE_ECHO": "1"}


class ServerTest(unittest.TestCase):
    def daemon(self, **kw):
        if any(k.startswith("POSTSURGE_TEST_") for k in kw.get("env") or {}):
            kw.setdefault("program", POSTSURGE_TESTING)
        ps = Postsurge(**kw)
        self.addCleanup(self.dump_log_on_failure, ps)
        self.addCleanup(ps.cleanup)
        self.addCleanup(self.check_clean_exit, ps)
        return ps

    def check_clean_exit(self, ps):
        """Runs first at cleanup: stop the daemon, then no sanitizer report in its log."""
        ps.stop()
        log = ps.log()
        self.assertNotIn("Sanitizer", log, log[-4000:])
        self.assertNotIn("handle still open", log)

    def dump_log_on_failure(self, ps):
        # addCleanup runs after the test; print the log when it failed so CI shows why.
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is not None and (result.failures or result.errors):
            sys.stderr.write("--- postsurge log (%s) ---\n%s\n" % (self.id(), ps.log()[-6000:]))

    def assert_serving(self, ps, unix=False, expect="DUNNO"):
        """A fresh client gets an answer: the daemon still serves others."""
        with ps.client(unix=unix) as c:
            self.assertEqual(c.ask(), expect)


class TestListeners(ServerTest):
    def test_server_answers_dunno_on_loopback_port(self):
        ps = self.daemon()
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")
            # A persistent connection carries many requests, like one smtpd process.
            for _ in range(10):
                self.assertEqual(c.ask(), "DUNNO")

    def test_server_answers_on_unix_socket_with_mode(self):
        ps = self.daemon(inet=False, unix=True, extra={"listen_unix_mode": "0660"})
        self.assertEqual(stat.S_IMODE(os.stat(ps.unix_path).st_mode), 0o660)
        self.assertTrue(stat.S_ISSOCK(os.stat(ps.unix_path).st_mode))
        with ps.client(unix=True) as c:
            self.assertEqual(c.ask(), "DUNNO")
        self.assertEqual(ps.stop(), 0)
        self.assertFalse(os.path.exists(ps.unix_path), "socket file left behind at exit")

    def test_server_listens_on_inet_and_unix_together(self):
        ps = self.daemon(unix=True)
        with ps.client() as a, ps.client(unix=True) as b:
            self.assertEqual(a.ask(), "DUNNO")
            self.assertEqual(b.ask(), "DUNNO")

    def test_server_listens_on_ipv6_loopback(self):
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
                port = s.getsockname()[1]
        except OSError:
            self.skipTest("IPv6 listen not tested: no ::1 here (IPv6 disabled in this "
                          "container or kernel)")
        ps = self.daemon(inet=False, listen="inet:[::1]:%d" % port, start=False)
        ps.start(wait=False)
        with_conn = wait_for(lambda: self._try_v6(port), 10)
        self.assertTrue(with_conn, ps.log())

    @staticmethod
    def _try_v6(port):
        try:
            with PolicyClient(("::1", port), timeout=5) as c:
                return c.ask() == "DUNNO"
        except OSError:
            return False

    def test_stale_unix_socket_is_replaced(self):
        d = tempfile.mkdtemp(prefix="postsurge-test-")
        path = os.path.join(d, "policy.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()  # the file stays: a crashed server's leftover
        self.assertTrue(os.path.exists(path))
        ps = self.daemon(inet=False, unix=True, tmpdir=d)
        self.assertIn("removed a stale socket", ps.log())
        self.assert_serving(ps, unix=True)

    def test_live_unix_socket_is_refused(self):
        d = tempfile.mkdtemp(prefix="postsurge-test-")
        path = os.path.join(d, "policy.sock")
        live = socket.socket(socket.AF_UNIX)
        self.addCleanup(live.close)
        live.bind(path)
        live.listen(5)
        ps = self.daemon(inet=False, unix=True, tmpdir=d, start=False)
        ps.start(wait=False)
        self.assertEqual(ps.wait_exit(), 1)
        self.assertIn("another server is listening", ps.log())
        # The other server's socket is untouched and still accepts.
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)

    def test_non_socket_file_is_never_removed(self):
        d = tempfile.mkdtemp(prefix="postsurge-test-")
        path = os.path.join(d, "policy.sock")
        with open(path, "w") as f:
            f.write("precious\n")
        ps = self.daemon(inet=False, unix=True, tmpdir=d, start=False)
        ps.start(wait=False)
        self.assertEqual(ps.wait_exit(), 1)
        self.assertIn("is not a socket", ps.log())
        with open(path) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_port_in_use_fails_start(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            ps = self.daemon(inet=False, listen="inet:127.0.0.1:%d" % port, start=False)
            ps.start(wait=False)
            self.assertEqual(ps.wait_exit(), 1)
            self.assertIn("address already in use", ps.log())


class TestTraffic(ServerTest):
    def test_many_connections_many_requests(self):
        """50 persistent connections x 200 requests each, interleaved, every reply checked."""
        ps = self.daemon(env=ECHO_ENV)
        n_conns, n_reqs = 50, 200
        conns = [ps.client() for _ in range(n_conns)]
        try:
            for r in range(n_reqs):
                for i, c in enumerate(conns):
                    c.send(request(recipient="c%d-r%d@example.com" % (i, r),
                                   client_address="10.0.%d.%d" % (i, r % 250)))
                for i, c in enumerate(conns):
                    self.assertEqual(c.read_reply(), "INFO c%d-r%d@example.com" % (i, r))
        finally:
            for c in conns:
                c.close()
        self.assert_serving(ps, expect="INFO rcpt@example.com")

    def test_pipelined_requests_answered_in_order(self):
        ps = self.daemon(env=ECHO_ENV)
        with ps.client() as c:
            reqs = [request(recipient="p%d@example.com" % i) for i in range(20)]
            self.assertEqual(c.pipeline(reqs), ["INFO p%d@example.com" % i for i in range(20)])

    def test_pipelined_requests_with_async_decisions_stay_in_order(self):
        ps = self.daemon(env=ASYNC_ENV)
        with ps.client() as c:
            reqs = [request(recipient="a%d@example.com" % i) for i in range(20)]
            self.assertEqual(c.pipeline(reqs), ["INFO a%d@example.com" % i for i in range(20)])

    def test_requests_split_at_every_byte_and_minimal_requests(self):
        ps = self.daemon(env=ECHO_ENV)
        with ps.client() as c:
            data = encode(request(recipient="split@example.com"))
            for i in range(1, len(data), 37):
                c.send_raw(data[:i])
                time.sleep(0.001)
                c.send_raw(data[i:])
                self.assertEqual(c.read_reply(), "INFO split@example.com")
            # Unknown attributes and a bare minimum are fine.
            self.assertEqual(c.ask([("request", "smtpd_access_policy"), ("x_new", "1")]),
                             "INFO -")

    def test_default_action_from_config(self):
        ps = self.daemon(extra={"default_action": "450 4.7.1 try later"})
        with ps.client() as c:
            self.assertEqual(c.ask(), "450 4.7.1 try later")
        self.assertIn("action=450 4.7.1 try later", ps.log())

    def test_client_half_close_gets_its_replies(self):
        """A client that sends and shuts down its side still gets every answer."""
        ps = self.daemon(env=ASYNC_ENV)
        with ps.client() as c:
            c.send_raw(b"".join(encode(request(recipient="h%d@x" % i)) for i in range(3)))
            c.sock.shutdown(socket.SHUT_WR)
            self.assertEqual([c.read_reply() for _ in range(3)], ["INFO h0@x", "INFO h1@x",
                                                                  "INFO h2@x"])
            self.assertTrue(c.closed_by_peer())


class TestBadInput(ServerTest):
    """Each bad-input class closes that connection only; others are served during and after."""

    CASES = [
        ("garbage", b"\x16\x03\x01\x02\xfc\x03\x03 \xff\xfe garbage\n\n", "no_equals"),
        ("tls hello with nul", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", "nul_byte"),
        ("oversized line", b"request=" + b"x" * 20000 + b"\n", "line_too_long"),
        ("nul byte", b"request=smtpd_access_policy\nsender=a\x00b\n\n", "nul_byte"),
        ("line without =", b"request=smtpd_access_policy\nhello world\n\n", "no_equals"),
        ("empty name", b"request=smtpd_access_policy\n=value\n\n", "empty_name"),
        ("too many attributes", b"".join(b"a%d=1\n" % i for i in range(400)) + b"\n",
         "too_many_attributes"),
        ("request too large", b"".join(b"a%d=%s\n" % (i, b"y" * 1000) for i in range(200))
         + b"\n", "request_too_large"),
    ]

    def test_bad_input_closes_only_that_connection(self):
        ps = self.daemon(extra={"max_line_length": "16384"})
        with ps.client() as bystander:
            self.assertEqual(bystander.ask(), "DUNNO")
            for name, data, cls in self.CASES:
                with self.subTest(name):
                    mark = len(ps.log())
                    with ps.client() as bad:
                        self.assertEqual(bad.ask(), "DUNNO")  # a good request first
                        try:
                            bad.send_raw(data)
                        except (BrokenPipeError, ConnectionResetError):
                            pass  # closed while we were still sending: fine
                        self.assertTrue(bad.closed_by_peer(), name)
                    self.assertTrue(ps.wait_log("protocol error: %s" % cls, mark), name)
                    self.assertEqual(bystander.ask(), "DUNNO")
                    self.assert_serving(ps)
            # One log line per error, with peer, class and byte count.
            for line in ps.log().splitlines():
                if "protocol error" in line:
                    self.assertRegex(line, r"127\.0\.0\.1:\d+: protocol error: \w+ .* after \d+ "
                                           r"bytes")

    def test_half_request_then_close(self):
        ps = self.daemon()
        with ps.client() as bystander:
            with ps.client() as half:
                half.send_raw(encode(request())[:150])
            self.assertTrue(ps.wait_log("protocol error: truncated"))
            self.assertEqual(bystander.ask(), "DUNNO")
        self.assert_serving(ps)

    def test_slow_byte_by_byte_client_is_answered_and_blocks_nobody(self):
        ps = self.daemon(env=ECHO_ENV)
        data = encode(request(recipient="slow@example.com"))
        with ps.client() as slow, ps.client() as other:
            for i, b in enumerate(data):
                slow.send_raw(bytes([b]))
                if i % 50 == 0:
                    self.assertEqual(other.ask(request(recipient="o@x")), "INFO o@x")
                time.sleep(0.002)
            self.assertEqual(slow.read_reply(), "INFO slow@example.com")
            self.assertEqual(other.ask(request(recipient="o@x")), "INFO o@x")

    def test_client_that_never_reads_is_closed_at_output_cap(self):
        ps = self.daemon(unix=True, extra={"max_output_buffer": "4096"})
        with ps.client(unix=True) as greedy:
            greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            greedy.sock.setblocking(False)
            chunk = b"request=x\n\n" * 1000
            sent, closed = 0, False
            deadline = time.monotonic() + 30
            # Bounded in bytes and time: keep writing, never read, until the server gives up.
            while sent < 200 * len(chunk) and time.monotonic() < deadline:
                try:
                    sent += greedy.sock.send(chunk)
                except BlockingIOError:
                    if "max_output_buffer" in ps.log():
                        break
                    time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            self.assertTrue(ps.wait_log("max_output_buffer"), "no output cap hit after %d bytes"
                            % sent)
            greedy.sock.setblocking(True)
            self.assertTrue(closed or greedy.closed_by_peer())
        self.assert_serving(ps)


class TestLimits(ServerTest):
    def test_connection_cap_closes_new_connections(self):
        ps = self.daemon(extra={"max_connections": "5"})
        held = [ps.client() for _ in range(5)]
        try:
            for c in held:
                self.assertEqual(c.ask(), "DUNNO")
            with ps.client() as over:
                self.assertTrue(over.closed_by_peer())
            self.assertTrue(ps.wait_log("max_connections = 5"))
            for c in held:
                self.assertEqual(c.ask(), "DUNNO")
            held.pop().close()
            # Once the server saw the close, there is room again.
            self.assertTrue(wait_for(lambda: self._ask_ok(ps), 10))
        finally:
            for c in held:
                c.close()

    def test_connection_churn_does_not_fill_the_cap(self):
        # Issue 13: a client connecting and closing in a tight loop, never holding more than
        # one connection, filled max_connections with connections already gone (libuv
        # accepts the whole backlog before it reads any EOF) and refused real clients.
        ps = self.daemon(extra={"max_connections": "16"})
        n, deadline, start = 0, time.monotonic() + 30, time.monotonic()
        while n < 20000 and time.monotonic() < deadline:
            s = socket.create_connection(ps.address(), timeout=5)
            s.close()
            n += 1
        elapsed = time.monotonic() - start
        sys.stderr.write("churn: %d connect/close in %.2f s (%.0f/s)\n" % (n, elapsed,
                                                                           n / elapsed))
        self.assertGreaterEqual(n, 5000)
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")
        self.assertNotIn("refusing a new client", ps.log())

    @staticmethod
    def _ask_ok(ps):
        try:
            with ps.client(timeout=5) as c:
                return c.ask() == "DUNNO"
        except (OSError, EOFError):
            return False

    def test_idle_connection_is_closed(self):
        ps = self.daemon(extra={"idle_timeout": "1s"})
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")
            self.assertTrue(c.closed_by_peer(timeout=30))
        self.assertIn("idle", ps.log())
        self.assert_serving(ps)

    def test_async_decision_in_flight_completes_when_client_closes(self):
        # The client sends a request and closes its end (FIN) while the decision is
        # pending. Nothing is cancelled: as for a half-close, the decision completes and is
        # logged, and only then is the connection finished (its reply has nowhere to go).
        ps = self.daemon(env=ASYNC_ENV, args=["-v"])
        with ps.client() as c:
            c.send(request(recipient="gone@x"))
            self.assertTrue(ps.wait_log("request 1 waits"))
        self.assertTrue(ps.wait_log("disconnect after 1 requests"), ps.log())
        log = ps.log()
        decided = "recipient=<gone@x>: action=INFO gone@x"
        self.assertIn(decided, log)
        self.assertLess(log.index(decided), log.index("disconnect after 1 requests"), log)
        self.assertTrue(ps.running())
        with ps.client() as c:
            self.assertEqual(c.ask(request(recipient="next@x")), "INFO next@x")

    def test_async_decision_cancelled_when_client_resets(self):
        # A connection reset (RST) while the decision is pending closes the connection at
        # once and cancels the decision (decider.cancel): it is never answered nor logged.
        ps = self.daemon(env=ASYNC_ENV, args=["-v"])
        with ps.client() as c:
            c.send(request(recipient="gone@x"))
            self.assertTrue(ps.wait_log("request 1 waits"))
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.assertTrue(ps.wait_log("disconnect after 1 requests"), ps.log())
        # The event that proves the cancelled decision would have been done by now: a
        # request delayed as long, started later, is answered (timers fire in order).
        with ps.client() as c:
            self.assertEqual(c.ask(request(recipient="next@x")), "INFO next@x")
        self.assertTrue(ps.wait_log("recipient=<next@x>: action=INFO next@x"), ps.log())
        self.assertNotIn("gone@x>: action", ps.log())
        self.assertTrue(ps.running())


class TestSignals(ServerTest):
    def test_sighup_good_file_changes_default_action(self):
        ps = self.daemon(unix=True)
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")
            ps.write_config({"default_action": "DEFER_IF_PERMIT busy", "listen": "inet:127.0.0.1:1"})
            mark = ps.reload()
            self.assertTrue(ps.wait_log("configuration reloaded", mark), ps.log())
            # Same connection, new answer.
            self.assertEqual(c.ask(), "DEFER_IF_PERMIT busy")
        self.assertIn("listen changed", ps.log()[mark:])
        self.assert_serving_action(ps, "DEFER_IF_PERMIT busy")

    def assert_serving_action(self, ps, action):
        with ps.client() as c:
            self.assertEqual(c.ask(), action)

    def test_sighup_broken_file_keeps_old_config(self):
        ps = self.daemon(extra={"default_action": "OK"})
        ps.write_config(text=ps.config_text({"default_action": "REJECT new"}) +
                        "no_such_setting = 1\n")
        bad_line = len(ps.config_text({"default_action": "REJECT new"}).splitlines()) + 1
        mark = ps.reload()
        self.assertTrue(ps.wait_log("keeping the current configuration", mark), ps.log())
        self.assertIn("%s:%d:" % (ps.config_path, bad_line), ps.log()[mark:])
        self.assert_serving_action(ps, "OK")
        # A missing file is no better.
        os.unlink(ps.config_path)
        mark = ps.reload()
        self.assertTrue(ps.wait_log("keeping the current configuration", mark))
        self.assert_serving_action(ps, "OK")
        # And fixing the file works again.
        ps.write_config({"default_action": "REJECT fixed"})
        mark = ps.reload()
        self.assertTrue(ps.wait_log("configuration reloaded", mark))
        self.assert_serving_action(ps, "REJECT fixed")

    def test_sigterm_answers_request_in_flight_and_exits_0(self):
        ps = self.daemon(env=ASYNC_ENV, args=["-v"], unix=True)
        with ps.client() as busy, ps.client() as idle:
            self.assertEqual(idle.ask(request(recipient="i@x")), "INFO i@x")
            busy.send(request(recipient="inflight@x"))
            self.assertTrue(ps.wait_log("waits for a decision"))
            ps.signal(signal.SIGTERM)
            self.assertEqual(busy.read_reply(), "INFO inflight@x")
            self.assertTrue(busy.closed_by_peer())
            self.assertTrue(idle.closed_by_peer())
            self.assertEqual(ps.wait_exit(), 0)
        self.assertIn("stopped", ps.log())
        self.assertNotIn("not empty", ps.log())
        self.assertFalse(os.path.exists(ps.unix_path))

    def test_sigterm_closes_a_busy_connection_after_5s_grace(self):
        # A connection in the middle of a request keeps the daemon draining; after
        # SERVER_DRAIN_GRACE_MS (5 s) it is closed anyway and the daemon exits.
        ps = self.daemon(unix=True)
        with ps.client() as busy, ps.client() as idle:
            self.assertEqual(idle.ask(), "DUNNO")
            busy.send_raw(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
            self.assertEqual(idle.ask(), "DUNNO")  # the partial request was read by now
            mark = len(ps.log())
            t0 = time.monotonic()
            ps.signal(signal.SIGTERM)
            # The idle connection goes at once: the daemon is draining.
            self.assertTrue(idle.closed_by_peer(5 * SLOW))
            self.assertTrue(ps.wait_log("stopping", mark))
            self.assertTrue(ps.running())
            self.assertTrue(busy.closed_by_peer(15 * SLOW))
            waited = time.monotonic() - t0
            self.assertEqual(ps.wait_exit(), 0)
        self.assertGreater(waited, 4.5, "busy connection closed before the 5 s grace")
        self.assertLess(waited, 5 + 3 * SLOW, "busy connection kept past the 5 s grace")
        self.assertIn("1 connections still busy after 5000 ms; closing them", ps.log())
        self.assertFalse(os.path.exists(ps.unix_path))

    def test_second_sigterm_closes_busy_connections_at_once(self):
        ps = self.daemon()
        with ps.client() as busy:
            busy.send_raw(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
            with ps.client() as probe:  # the partial request was read by now
                self.assertEqual(probe.ask(), "DUNNO")
            mark = len(ps.log())
            ps.signal(signal.SIGTERM)
            self.assertTrue(ps.wait_log("stopping", mark))
            self.assertTrue(ps.running())
            t0 = time.monotonic()
            ps.signal(signal.SIGTERM)
            self.assertTrue(busy.closed_by_peer(15 * SLOW))
            waited = time.monotonic() - t0
            self.assertEqual(ps.wait_exit(), 0)
        self.assertIn("closing every connection now", ps.log())
        self.assertNotIn("still busy after", ps.log())
        self.assertLess(waited, 2 * SLOW, "second signal did not close at once")

    def test_sigint_with_idle_connections_exits_0(self):
        ps = self.daemon()
        conns = [ps.client() for _ in range(5)]
        for c in conns:
            self.assertEqual(c.ask(), "DUNNO")
        ps.signal(signal.SIGINT)
        self.assertEqual(ps.wait_exit(), 0)
        for c in conns:
            self.assertTrue(c.closed_by_peer())
            c.close()


class TestLogging(ServerTest):
    def test_command_output_in_a_warning_stays_on_one_line(self):
        # postconf fails on a main.cf that is not Postfix syntax; its stderr ends in a
        # newline and is quoted in the monitor's warning. Every log record must still be
        # one line that starts with a time stamp.
        empty = tempfile.mkdtemp(prefix="postsurge-badpostfix-")
        self.addCleanup(shutil.rmtree, empty, True)
        with open(os.path.join(empty, "main.cf"), "w") as f:
            f.write("this is not a setting\n")
        ps = self.daemon(extra={"monitor": "yes", "monitor_interval": "200ms",
                                "postfix_config_directory": empty,
                                "maillog_file": os.path.join(empty, "maillog")})
        self.assertTrue(ps.wait_log("failed (exit", timeout=15), ps.log())
        ps.stop()
        for line in ps.log().splitlines():
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT", "a record broke across lines")

    # What issue 13 sent: CR to overwrite the start of a terminal line with a forged stamp,
    # CSI and OSC escapes, BEL, DEL, a C1 control as UTF-8 and bytes that are not UTF-8.
    EVIL_USER = b"evil\r2026-12-02 FORGED\x1b[2J\x07"
    EVIL_SENDER = b"a\x1b]0;title\x07\x7f@ex\xffample\xc2\x85.org"

    def assert_log_printable(self, ps):
        """Every record is one line of printable ASCII or valid UTF-8 with no control
        character: the only byte below 0x20 is the newline ending each record."""
        with open(ps.log_path, "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\n"))
        for line in data.split(b"\n")[:-1]:
            bad = [b for b in line if b < 0x20 or b == 0x7f]
            self.assertEqual(bad, [], line)
            text = line.decode("utf-8")  # raises on invalid UTF-8
            self.assertFalse(any(0x80 <= ord(ch) <= 0x9f for ch in text), line)
            self.assertRegex(text, r"^\d{4}-\d\d-\d\dT", "a record broke across lines")
        return data

    def test_client_values_are_escaped_in_decision_and_error_lines(self):
        ps = self.daemon(extra="monitor = no\nlimits =\n"
                               "    per_user sasl_username recipients 1/1h\n")
        def req(rcpt):
            return encode(request(sasl_username="X", sender="Y", recipient=rcpt)).replace(
                b"sasl_username=X", b"sasl_username=" + self.EVIL_USER).replace(
                b"sender=Y", b"sender=" + self.EVIL_SENDER)
        with ps.client() as c:
            c.send_raw(req("r1@example.com"))
            self.assertEqual(c.read_reply(), "DUNNO")
            c.send_raw(req("r2@example.com"))
            self.assertNotEqual(c.read_reply(), "DUNNO")
        self.assertTrue(ps.wait_log("rule=per_user"), ps.log())
        # The same bytes in a line the parser refuses.
        with ps.client() as c:
            c.send_raw(b"request=smtpd_access_policy\n" + self.EVIL_USER + self.EVIL_SENDER +
                       b"\n\n")
            self.assertTrue(c.closed_by_peer())
        self.assertTrue(ps.wait_log("protocol error: no_equals"), ps.log())
        self.assert_serving(ps)
        ps.stop()
        data = self.assert_log_printable(ps)
        self.assertIn(b"sasl_username=evil\\r2026-12-02 FORGED\\x1b[2J\\x07 ", data)
        self.assertIn(b"sender=<a\\x1b]0;title\\x07\\x7f@ex\\xffample\\xc2\\x85.org>", data)

    def test_report_text_escapes_names_from_the_mail_log(self):
        # Client names and recipient domains in the report come from the mail log, where a
        # client chose them.
        d = tempfile.mkdtemp(prefix="postsurge-report-")
        self.addCleanup(shutil.rmtree, d, True)
        os.mkdir(os.path.join(d, "pf"))
        with open(os.path.join(d, "mail.log"), "wb") as f:
            f.write(b"Nov 23 03:33:29 mx postfix/smtp[11214]: 851735104A1: to=<u@osc" +
                    b"\x1b]0;title\x07.ex\xffample>, relay=none, delay=1, delays=0/0/1/0, "
                    b"dsn=4.4.1, status=deferred (connect to x: Connection refused)\n"
                    b"Nov 23 03:33:30 mx postfix/smtpd[11]: NOQUEUE: reject: RCPT from " +
                    b"evil\x1b[2J\x07\x7f\xc2\x85[192.0.2.9]: 554 5.7.1 <a@b>: "
                    b"Relay access denied; "
                    b"from=<x@y> to=<a@b> proto=ESMTP helo=<h>\n")
        cf = os.path.join(d, "postsurge.cf")
        with open(cf, "w") as f:
            f.write("state_directory = %s\nmaillog_file = %s/mail.log\n"
                    "postfix_config_directory = %s/pf\nmonitor = no\n" % (d, d, d))
        r = subprocess.run([os.environ.get("POSTSURGE", "postsurge"), "-c", cf, "report"],
                           capture_output=True, timeout=60)
        out = r.stdout
        for line in out.split(b"\n"):
            self.assertEqual([b for b in line if b < 0x20 or b == 0x7f], [], line)
            line.decode("utf-8")
        self.assertIn(b"osc\\x1b]0;title\\x07.ex\\xffample", out)
        self.assertIn(b"evil\\x1b[2J\\x07\\x7f\\xc2\\x85[192.0.2.9]", out)


    def test_no_postfix_one_clear_line(self):
        # make run on a host without Postfix: one line says monitoring is off, no
        # warnings, and the policy service answers.
        empty = tempfile.mkdtemp(prefix="postsurge-nopostfix-")
        self.addCleanup(shutil.rmtree, empty, True)
        ps = self.daemon(extra={"monitor_interval": "200ms", "postfix_config_directory": empty,
                                "stress_overrides": None})
        self.assert_serving(ps)
        # Eight idle ticks evaluated (no fixed sleep): time enough for any repeated warning.
        ps.wait_samples(8)
        ps.stop()
        log = ps.log()
        self.assertEqual(log.count("no Postfix found (%s/main.cf" % empty), 1, log)
        self.assertIn("monitoring is off", log)
        self.assertNotIn("warning:", log)
        self.assertNotIn("error:", log)


class TestCommands(ServerTest):
    def test_check_config_exit_codes(self):
        ps = self.daemon(start=False)
        r = ps.cli("check-config")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"), r.stderr)
        ps.write_config(text="listen = inet:127.0.0.1:10040\n# comment\nbogus_name = 1\n"
                             "max_connections = lots\n")
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:3:" % ps.config_path, r.stderr)
        self.assertIn("%s:4:" % ps.config_path, r.stderr)
        ps.write_config(text="listen = smtp:nowhere\n")
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:1:" % ps.config_path, r.stderr)
        r = ps.cli("-x", "check-config")  # an unknown global option: usage error
        self.assertNotEqual(r.returncode, 0)
        os.unlink(ps.config_path)
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1)
        self.assertIn(ps.config_path, r.stderr)

    def test_config_prints_like_postconf(self):
        ps = self.daemon(start=False, extra={"default_action": "DEFER_IF_PERMIT x"})
        r = ps.cli("config", "-n")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn("default_action = DEFER_IF_PERMIT x", lines)
        self.assertIn("listen = inet:127.0.0.1:%d" % ps.port, lines)
        self.assertFalse(any(l.startswith("max_connections ") for l in lines), lines)
        full = ps.cli("config").stdout.splitlines()
        self.assertGreater(len(full), len(lines))
        self.assertTrue(any(l.startswith("max_connections = ") for l in full))
        r = ps.cli("config", "default_action", "idle_timeout")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0], "default_action = DEFER_IF_PERMIT x")
        self.assertTrue(r.stdout.splitlines()[1].startswith("idle_timeout = "))
        r = ps.cli("config", "no_such_name")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no_such_name", r.stderr)

    def test_version_help_and_unknown_command(self):
        ps = self.daemon(start=False)
        r = ps.cli("version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^postsurge \d+\.\d+")
        r = ps.cli("help")
        self.assertEqual(r.returncode, 0)
        for cmd in ("serve", "check-config", "config", "version"):
            self.assertIn(cmd, r.stdout)
        r = ps.cli("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command", r.stderr)

    def test_control_commands_say_why_when_refused(self):
        # Issue 13: status, events, stress and restore run by a user who may not use the
        # control socket exited 1 with nothing on stderr.
        setpriv = shutil.which("setpriv")
        if os.geteuid() != 0 or not setpriv:
            self.skipTest("needs root and setpriv to run the CLI as nobody")
        as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        postsurge = os.environ.get("POSTSURGE", "postsurge")
        probe = subprocess.run(as_nobody + [postsurge, "version"], capture_output=True)
        if probe.returncode != 0:
            self.skipTest("nobody cannot run %s (a private build directory)" % postsurge)
        ps = self.daemon(extra={"monitor": "no"})
        # nobody may read a copy of the configuration; the socket stays as serve made it.
        cf = tempfile.NamedTemporaryFile("w", prefix="postsurge-cf-", suffix=".cf",
                                         delete=False)
        self.addCleanup(os.unlink, cf.name)
        with open(ps.config_path) as f:
            cf.write(f.read())
        cf.close()
        os.chmod(cf.name, 0o644)
        sock = os.path.join(ps.dir, "control.sock")
        self.assertTrue(wait_for(lambda: os.path.exists(sock), 10))
        cmds = (["status"], ["status", "--json"], ["events"], ["stress", "enter"], ["restore"])
        # First the state directory cannot be searched, then the socket's mode refuses.
        for dirmode, says in ((0o700, "the directory"), (0o755, "the socket")):
            os.chmod(ps.dir, dirmode)
            for cmd in cmds:
                with self.subTest(cmd=cmd, dirmode=oct(dirmode)):
                    r = subprocess.run(as_nobody + [postsurge, "-c", cf.name] + cmd,
                                       capture_output=True, text=True, timeout=30)
                    self.assertEqual(r.returncode, 1, r.stderr)
                    self.assertIn("cannot use the control socket %s: Permission denied" % sock,
                                  r.stderr)
                    self.assertIn(says, r.stderr)
                    self.assertRegex(r.stderr, r"run this command as root.* as \S+")
        self.assertIn("stress no", ps.cli("status").stdout.lower())


class TestCommandLine(ServerTest):
    """The habits of Postfix administrators: --help/--version, help COMMAND, COMMAND --help,
    postconf-like config, every check-config problem in one run."""

    COMMANDS = ("serve", "check-config", "config", "report", "status", "events", "stress",
                "restore", "version", "help")

    def run_bare(self, *argv, **kw):
        return subprocess.run([POSTSURGE, *argv], capture_output=True, text=True, timeout=30,
                              **kw)

    def test_help_and_version_exit_0(self):
        for argv in (["--help"], ["-h"], ["help"]):
            r = self.run_bare(*argv)
            self.assertEqual((r.returncode, r.stderr), (0, ""), argv)
            for cmd in self.COMMANDS:
                self.assertIn("\n  %s " % cmd, r.stdout, argv)
        r = self.run_bare("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^postsurge \d+\.\d+")
        self.assertEqual(r.stdout, self.run_bare("version").stdout)
        for cmd in self.COMMANDS:
            for argv in (["help", cmd], [cmd, "--help"], ["-c", "/nonexistent", cmd, "--help"]):
                r = self.run_bare(*argv)
                self.assertEqual((r.returncode, r.stderr), (0, ""), argv)
                self.assertTrue(r.stdout.startswith("usage: postsurge "), (argv, r.stdout))
                self.assertIn(" %s" % cmd, r.stdout.splitlines()[0], argv)
        r = self.run_bare("help", "frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command", r.stderr)
        r = self.run_bare("--frobnicate")
        self.assertEqual(r.returncode, 2)

    def test_missing_default_config_says_what_to_do(self):
        if os.path.exists("/etc/postsurge/postsurge.cf"):
            self.skipTest("/etc/postsurge/postsurge.cf exists on this host")
        r = self.run_bare("check-config")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/etc/postsurge/postsurge.cf", r.stderr)
        self.assertIn("examples/", r.stderr)
        self.assertIn("-c FILE", r.stderr)
        # A file named with -c: the plain error only.
        r = self.run_bare("-c", "/nonexistent/p.cf", "check-config")
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("-c FILE", r.stderr)

    def test_config_like_postconf(self):
        ps = self.daemon(start=False, extra={"default_action": "DEFER_IF_PERMIT x",
                                             "idle_timeout": "5m"})
        r = ps.cli("config", "-n")
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [l.split(" =", 1)[0] for l in r.stdout.splitlines() if not l.startswith(" ")]
        self.assertEqual(names, sorted(names))
        self.assertIn("idle_timeout", names)
        self.assertNotIn("max_connections", names)
        r = ps.cli("config", "-d")
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [l.split(" =", 1)[0] for l in r.stdout.splitlines() if not l.startswith(" ")]
        self.assertEqual(names, sorted(names))
        self.assertIn("default_action = DUNNO", r.stdout.splitlines())
        self.assertIn("stress_overrides = no", r.stdout.splitlines())
        # -d reads no file.
        r = self.run_bare("-c", "/nonexistent/p.cf", "config", "-d", "default_action")
        self.assertEqual((r.returncode, r.stdout), (0, "default_action = DUNNO\n"), r.stderr)
        r = ps.cli("config", "default_action", "idle_timeout")
        self.assertEqual(r.stdout, "default_action = DEFER_IF_PERMIT x\nidle_timeout = 5m\n")
        r = ps.cli("config", "-h", "default_action", "idle_timeout")
        self.assertEqual((r.returncode, r.stdout), (0, "DEFER_IF_PERMIT x\n5m\n"), r.stderr)
        r = ps.cli("config", "-h")
        self.assertEqual(r.returncode, 2)
        r = ps.cli("config", "-h", "no_such_name")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no_such_name: unknown parameter", r.stderr)
        self.assertEqual(ps.cli("config", "-n", "-d").returncode, 2)

    def test_check_config_reports_every_problem(self):
        # An unknown setting first, then a bad value, a bad listener and a bad rule: all
        # four in one run.
        ps = self.daemon(start=False)
        ps.write_config(text="no_such_setting = 1\n"
                             "max_connections = lots\n"
                             "listen = smtp:nowhere\n"
                             "limits =\n"
                             "    frobnicate client_address 10/1m\n")
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1)
        for line in (1, 2, 3):
            self.assertIn("%s:%d:" % (ps.config_path, line), r.stderr)
        self.assertIn("frobnicate", r.stderr)
        self.assertNotIn("ok", r.stdout)


class TestEventsAndStop(ServerTest):
    def test_events_says_none_and_clean_stop_removes_sockets(self):
        ps = self.daemon(unix=True, extra={"monitor": "no"})
        r = ps.cli("events")
        self.assertEqual((r.returncode, r.stdout), (0, "no events\n"), r.stderr)
        r = ps.cli("events", "--since", "10m")
        self.assertEqual((r.returncode, r.stdout), (0, "no events in that time\n"), r.stderr)
        ctl = os.path.join(ps.dir, "control.sock")
        self.assertTrue(stat.S_ISSOCK(os.stat(ctl).st_mode))
        self.assertTrue(stat.S_ISSOCK(os.stat(ps.unix_path).st_mode))
        self.assertEqual(ps.stop(), 0)
        self.assertFalse(os.path.exists(ctl), "control.sock left after a clean stop")
        self.assertFalse(os.path.exists(ps.unix_path), "policy socket left after a clean stop")


class TestManPages(unittest.TestCase):
    def test_man_pages_render_utf8_without_warnings(self):
        root = os.environ.get("SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
        for page in ("postsurge.8", "postsurge.cf.5"):
            path = os.path.join(root, "policyd", page)
            r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", path], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual((r.returncode, r.stderr), (0, ""), page)
        # Every command's entry starts whole on one line of the rendered page.
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u",
                            os.path.join(root, "policyd", "postsurge.8")],
                           capture_output=True, text=True, timeout=60)
        lines = [l.strip() for l in r.stdout.splitlines()]
        for head in ("config [-n | -d] [-h] [name ...]",
                     "events [--since time] [--json] [--max n]",
                     "report [--json] [--prometheus file] [--quiet] [--no-traffic]",
                     "status [--json]", "help [command]", "stress enter | exit | auto"):
            self.assertIn(head, lines)


if __name__ == "__main__":
    testmain.main()
