"""The metrics/status endpoint (http_listen) of a real postsurge daemon: /metrics passes
`promtool check metrics` and counts what the policy side did, /status is JSON, /healthz;
404/405/400/413/431/505 for what it does not serve; an oversize request is answered and
closed; idle connections are capped and timed out; and it answers while the policy side
is under load. Each test starts its own daemon on free loopback ports and stops it."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

from postsurge import Postsurge, request
from ports import free_port, tcp_listening, wait_for
import testmain

PROMTOOL = shutil.which("promtool")


class HttpTest(unittest.TestCase):
    def daemon(self, extra=None, wait_http=True, **kw):
        http_port = free_port()
        conf = {"http_listen": "inet:127.0.0.1:%d" % http_port}
        conf.update(extra or {})
        ps = Postsurge(extra=conf, **kw)
        self.addCleanup(self.dump_log_on_failure, ps)
        self.addCleanup(ps.cleanup)
        self.addCleanup(self.check_clean_exit, ps)
        ps.http_port = http_port
        if wait_http:
            self.assertTrue(wait_for(lambda: tcp_listening(http_port), 15), ps.log())
        return ps

    def check_clean_exit(self, ps):
        """Runs first at cleanup: the daemon stops cleanly, without sanitizer reports."""
        self.assertEqual(ps.stop(), 0, ps.log()[-3000:])
        log = ps.log()
        self.assertNotIn("Sanitizer", log, log[-4000:])
        self.assertNotIn("handle still open", log)

    def dump_log_on_failure(self, ps):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is not None and (result.failures or result.errors):
            sys.stderr.write("--- postsurge log (%s) ---\n%s\n" % (self.id(), ps.log()[-6000:]))

    def get(self, ps, path, method="GET", body=None, headers=None):
        """(status, headers dict with lower-case names, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", ps.http_port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def raw(self, ps, data, timeout=20):
        """Sends data, then reads until the server closes; returns what it sent back."""
        s = socket.create_connection(("127.0.0.1", ps.http_port), timeout=timeout)
        try:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            s.close()

    def metrics(self, ps):
        status, headers, body = self.get(ps, "/metrics")
        self.assertEqual(status, 200)
        return body.decode()

    @staticmethod
    def value(text, series):
        """The value of one sample line ("name{labels}") in an exposition, or None."""
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return None


class TestEndpoints(HttpTest):
    def test_http_metrics_pass_promtool_and_count_requests(self):
        ps = self.daemon()
        with ps.client() as c:
            for _ in range(7):
                self.assertEqual(c.ask(), "DUNNO")
        with ps.client() as c:
            c.send_raw(b"=no name\n\n")
            self.assertTrue(c.closed_by_peer())
        self.assertTrue(wait_for(lambda: self.value(
            self.metrics(ps), 'postsurge_protocol_errors_total{class="empty_name"}') == 1))
        status, headers, body = self.get(ps, "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(int(headers["content-length"]), len(body))
        text = body.decode()
        self.assertEqual(self.value(text, "postsurge_requests_total"), 7)
        self.assertEqual(self.value(text, 'postsurge_replies_total{action="dunno"}'), 7)
        self.assertEqual(self.value(text, "postsurge_connections_accepted_total"), 2)
        self.assertEqual(self.value(text, 'postsurge_build_info{version="0.1.0"}'), 1)
        # Every answered request is in the latency histogram (observed in conn.c).
        self.assertEqual(self.value(text, "postsurge_request_duration_seconds_count"), 7)
        self.assertEqual(
            self.value(text, 'postsurge_request_duration_seconds_bucket{le="+Inf"}'), 7)
        self.assertGreater(self.value(text, "postsurge_request_duration_seconds_sum"), 0)
        self.assertIn('postsurge_request_duration_seconds_bucket{le="5e-05"}', text)
        if not PROMTOOL:
            self.skipTest("promtool not installed (package prometheus)")
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())

    def test_http_status_is_json(self):
        ps = self.daemon(extra={"node_name": "mx1.example", "default_action": "DUNNO"})
        with ps.client() as c:
            c.ask()
            c.ask()
        status, headers, body = self.get(ps, "/status")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        st = json.loads(body)
        self.assertEqual(st["node"], "mx1.example")
        self.assertEqual(st["version"], "0.1.0")
        self.assertEqual(st["pid"], ps.pid)
        self.assertGreaterEqual(st["uptime_seconds"], 0)
        self.assertFalse(st["draining"])
        self.assertEqual(st["config"]["listen"], ps.listen)
        self.assertEqual(st["config"]["store"], {"kind": "memory"})
        self.assertEqual(st["counters"]["requests"], 2)
        self.assertEqual(st["counters"]["replies"]["dunno"], 2)
        self.assertEqual(st["counters"]["connections"]["accepted"], 1)

    def test_http_status_hides_store_password(self):
        ps = self.daemon(extra={"store": "redis://:s3cret-pw@127.0.0.1:%d/2" % free_port()})
        status, _, body = self.get(ps, "/status")
        self.assertEqual(status, 200)
        self.assertNotIn(b"s3cret", body)
        self.assertEqual(json.loads(body)["config"]["store"]["kind"], "redis")
        self.assertEqual(json.loads(body)["config"]["store"]["db"], 2)

    def test_http_healthz_get_and_head(self):
        ps = self.daemon()
        status, headers, body = self.get(ps, "/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))
        status, headers, body = self.get(ps, "/healthz", method="HEAD")
        self.assertEqual((status, body, headers["content-length"]), (200, b"", "3"))
        # A query string does not change the resource.
        self.assertEqual(self.get(ps, "/healthz?verbose=1")[0], 200)

    def test_http_healthz_503_while_draining(self):
        # A connection in the middle of a request keeps the daemon draining after SIGTERM
        # (up to the 5 s grace): meanwhile /healthz says 503 so a balancer sends no one new.
        ps = self.daemon()
        with ps.client() as busy:
            busy.send_raw(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
            with ps.client() as probe:  # the partial request was read by now
                self.assertEqual(probe.ask(), "DUNNO")
            self.assertEqual(self.get(ps, "/healthz")[0], 200)
            mark = len(ps.log())
            ps.signal(signal.SIGTERM)
            self.assertTrue(ps.wait_log("stopping", mark), ps.log())
            status, _, body = self.get(ps, "/healthz")
            self.assertEqual((status, body), (503, b"draining\n"))
            status, _, body = self.get(ps, "/healthz", method="HEAD")
            self.assertEqual((status, body), (503, b""))
            self.assertTrue(json.loads(self.get(ps, "/status")[2])["draining"])
            self.assertEqual(self.value(self.get(ps, "/metrics")[2].decode(),
                                        "postsurge_draining"), 1)
        # The busy client hung up: nothing left, the daemon exits.
        self.assertEqual(ps.wait_exit(), 0)

    def test_http_errors(self):
        ps = self.daemon()
        status, _, body = self.get(ps, "/nope")
        self.assertEqual((status, body), (404, b"not found\n"))
        status, headers, _ = self.get(ps, "/metrics", method="POST", body=b"x=1")
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertEqual(self.get(ps, "/status", method="DELETE")[0], 405)
        cases = [
            (b"GET /metrics\r\n\r\n", b"400"),  # no version
            (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),  # no Host
            (b"GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
            (b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", b"413"),
            (b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-A: b\rX-Injected: 1\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n", b"400"),
            (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", b"400"),  # TLS hello
        ]
        for data, code in cases:
            out = self.raw(ps, data)
            self.assertTrue(out.startswith(b"HTTP/1.1 " + code + b" "), (data, out))
            self.assertIn(b"\r\nConnection: close\r\n", out)
        text = self.metrics(ps)
        self.assertGreaterEqual(self.value(text, 'postsurge_http_responses_total{code="400"}'), 4)
        self.assertEqual(self.value(text, 'postsurge_http_responses_total{code="405"}'), 2)
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")

    def test_http_one_request_per_connection(self):
        ps = self.daemon()
        out = self.raw(ps, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\nok\n"), out)
        self.assertEqual(out.count(b"HTTP/1.1"), 1)

    def test_http_oversize_request_answered_and_closed(self):
        ps = self.daemon()
        big = b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\n"
        out = self.raw(ps, big)
        self.assertTrue(out.startswith(b"HTTP/1.1 431 "), out[:200])
        # Far more than the linger budget: the connection is closed all the same.
        s = socket.create_connection(("127.0.0.1", ps.http_port), timeout=20)
        closed = False
        try:
            for _ in range(200):
                s.sendall(b"X" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        except socket.timeout:
            pass
        finally:
            s.close()
        self.assertTrue(closed)
        self.assertEqual(self.get(ps, "/healthz")[0], 200)

    def test_http_slow_request_times_out(self):
        ps = self.daemon()
        s = socket.create_connection(("127.0.0.1", ps.http_port), timeout=30)
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHo")
            t0 = time.monotonic()
            out = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        finally:
            s.close()
        self.assertTrue(out.startswith(b"HTTP/1.1 408 "), out)
        self.assertLess(time.monotonic() - t0, 25)  # a hang guard, not a speed check


class TestLimits(HttpTest):
    def test_http_idle_connections_capped(self):
        cap = 4
        ps = self.daemon(extra={"http_max_connections": cap})
        idle = [socket.create_connection(("127.0.0.1", ps.http_port), timeout=20)
                for _ in range(cap)]
        try:
            # The listen queue is FIFO: the daemon accepts these before the ones below.
            extra = []
            for _ in range(6):
                s = socket.create_connection(("127.0.0.1", ps.http_port), timeout=20)
                extra.append(s)
            for s in extra:
                try:
                    self.assertEqual(s.recv(100), b"")  # closed at once, nothing sent
                except ConnectionResetError:
                    pass
                s.close()
            # The policy side is not affected.
            with ps.client() as c:
                self.assertEqual(c.ask(), "DUNNO")
            # Idle connections are closed after the read timeout (no request: no 408).
            for s in idle:
                self.assertEqual(s.recv(100), b"")
        finally:
            for s in idle:
                s.close()
        self.assertTrue(wait_for(lambda: self.get_ok(ps, "/healthz"), 15))
        text = self.metrics(ps)
        self.assertGreaterEqual(
            self.value(text, "postsurge_http_connections_refused_total"), 6)

    def get_ok(self, ps, path):
        try:
            return self.get(ps, path)[0] == 200
        except OSError:
            return False

    def test_http_bad_listen_value_stops_start(self):
        ps = Postsurge(extra={"http_listen": "inet:mx.example:80"}, start=False)
        self.addCleanup(ps.cleanup)
        ps.start(wait=False)
        self.assertEqual(ps.wait_exit(15), 1)
        self.assertIn('http_listen: "inet:mx.example:80"', ps.log())

    def test_http_stop_with_open_connections(self):
        ps = self.daemon()
        s = socket.create_connection(("127.0.0.1", ps.http_port), timeout=20)
        s.sendall(b"GET /metr")
        try:
            self.assertEqual(ps.stop(), 0)
        finally:
            s.close()


class TestUnderLoad(HttpTest):
    def test_http_answers_while_policy_side_is_loaded(self):
        ps = self.daemon()
        stop = threading.Event()
        errors, counts = [], []

        def load():
            n = 0
            try:
                with ps.client() as c:
                    reqs = [request(recipient="r%d@example.com" % i) for i in range(20)]
                    # Bounded in count and time.
                    while not stop.is_set() and n < 50000:
                        for a in c.pipeline(reqs):
                            if a != "DUNNO":
                                errors.append(a)
                        n += len(reqs)
            except Exception as e:  # reported by the main thread
                errors.append(repr(e))
            counts.append(n)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            scrapes = 0
            last = -1
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                text = self.metrics(ps)
                v = self.value(text, "postsurge_requests_total")
                self.assertGreaterEqual(v, last)
                last = v
                self.assertEqual(self.get(ps, "/healthz")[0], 200)
                st = json.loads(self.get(ps, "/status")[2])
                self.assertGreaterEqual(st["counters"]["requests"], last)
                scrapes += 1
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(errors, [])
        self.assertGreater(scrapes, 3)
        self.assertGreater(sum(counts), 0)
        self.assertGreater(last, 0)  # scrapes saw the load in progress
        text = self.metrics(ps)
        self.assertEqual(self.value(text, "postsurge_requests_total"), sum(counts))
        self.assertEqual(self.value(text, "postsurge_request_duration_seconds_count"),
                         sum(counts))
        if PROMTOOL:
            p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())


class TestEngineMetrics(HttpTest):
    """Decisions by rule and action, the store round-trip histogram, store failures by
    kind, the degraded-mode gauge and the decisions answered that way, ratios."""

    def families(self, text):
        """{name: (help, type)} of every family, and the names of the samples."""
        fam, samples = {}, set()
        for line in text.splitlines():
            if line.startswith("# HELP "):
                fam.setdefault(line.split()[2], [None, None])[0] = line
            elif line.startswith("# TYPE "):
                fam.setdefault(line.split()[2], [None, None])[1] = line.split()[3]
            elif line and not line.startswith("#"):
                samples.add(line.split("{")[0].split()[0])
        return fam, samples

    def test_metrics_decisions_by_rule_and_action(self):
        ps = self.daemon({"limits": "per_sender sender recipients 2/1m\n"
                                    "    per_dry client_address recipients 3/1m dryrun",
                          "limit_exempt_sasl_users": "robot"})
        with ps.client() as c:
            for i in range(5):
                c.ask(request(sender="a@example.org", recipient="r%d@example.com" % i))
            c.ask(request(sasl_username="robot", recipient="x@example.com"))
        text = self.metrics(ps)
        v = lambda s: self.value(text, s)
        self.assertEqual(v('postsurge_decisions_total{rule="per_sender",action="refuse"}'), 3)
        # The dryrun rule's counter is past 3 at the 4th recipient (the 4th and 5th).
        self.assertEqual(v('postsurge_decisions_total{rule="per_dry",action="dryrun"}'), 0)
        self.assertEqual(v('postsurge_decisions_total{rule="",action="exempt"}'), 1)
        self.assertEqual(v('postsurge_decisions_total{rule="",action="allow"}'), 2)
        self.assertEqual(v('postsurge_decisions_total{rule="",action="degraded"}'), 0)
        self.assertEqual(v("postsurge_store_round_trip_seconds_count"), 5)
        self.assertGreater(v("postsurge_store_round_trip_seconds_sum"), 0)
        self.assertEqual(v("postsurge_store_degraded"), 0)
        self.assertEqual(v("postsurge_store_up"), 1)
        fam, samples = self.families(text)
        for name in samples:
            base = name
            for suf in ("_bucket", "_sum", "_count"):
                if name.endswith(suf) and name[:-len(suf)] in fam:
                    base = name[:-len(suf)]
            self.assertIn(base, fam, name)
            self.assertTrue(fam[base][0] and fam[base][1], "HELP/TYPE of %s" % base)
            self.assertNotIn("percent", base)
        self.assertIn("postsurge_saturation_ratio", fam)
        self.assertIn("postsurge_service_saturation_ratio", fam)
        st = json.loads(self.get(ps, "/status")[2])
        rules = {r["name"]: r for r in st["limits"]["rules"]}
        self.assertEqual(rules["per_sender"]["refused"], 3)
        self.assertEqual(st["store_state"]["kind"], "memory")
        if PROMTOOL:
            p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())

    def test_metrics_degraded_mode_with_redis_stopped(self):
        from redis_server import RedisServer
        redis = RedisServer()
        self.addCleanup(redis.stop)
        ps = self.daemon({"store": redis.url, "redis_timeout": "300ms",
                          "limits": "per_ip client_address recipients 100/1m"})
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")
        text = self.metrics(ps)
        self.assertEqual(self.value(text, "postsurge_store_degraded"), 0)
        self.assertEqual(self.value(text, "postsurge_degraded_decisions_total"), 0)
        redis.stop()
        with ps.client(timeout=20) as c:
            for i in range(3):
                c.ask(request(recipient="d%d@example.com" % i))
        text = self.metrics(ps)
        self.assertEqual(self.value(text, "postsurge_store_degraded"), 1, text[-3000:])
        self.assertEqual(self.value(text, "postsurge_degraded_decisions_total"), 3)
        self.assertEqual(
            self.value(text, 'postsurge_decisions_total{rule="",action="degraded"}'), 3)
        fails = sum(self.value(text, 'postsurge_store_failures_total{kind="%s"}' % k)
                    for k in ("timeout", "connection", "other"))
        self.assertEqual(fails, 3)
        st = json.loads(self.get(ps, "/status")[2])
        self.assertTrue(st["store_state"]["degraded"])
        self.assertGreater(st["store_state"]["degraded_since"], 0)
        html = self.get(ps, "/")[2].decode()
        self.assertIn("degraded</span> since", html)
        redis.start()

        def back():
            with ps.client() as c:
                c.ask(request(recipient="back@example.com"))
            return self.value(self.metrics(ps), "postsurge_store_degraded") == 0
        self.assertTrue(wait_for(back, 30, 0.5))


if __name__ == "__main__":
    testmain.main()
