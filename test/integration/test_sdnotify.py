"""`postsurge serve` under a notify supervisor (policyd/server/sdnotify.c): a Python unix
datagram socket stands in for systemd's NOTIFY_SOCKET and checks READY=1 once the port
listens, WATCHDOG=1 pings when WATCHDOG_USEC asks for them (and only if WATCHDOG_PID is
unset or ours), RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM, and that
every datagram comes from the main process (NotifyAccess=main). Each test starts its own
daemon and always stops it."""
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

from postsurge import POSTSURGE, Postsurge
from ports import tcp_listening
import testmain


class Notify:
    """The supervisor's end: a datagram socket that records (pid, fields) per message."""

    def __init__(self, abstract=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = None
        if abstract:
            name = "postsurge-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="postsurge-notify-")
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
            # Like systemd's /run/systemd/notify: serve sends after dropping to its user.
            os.chmod(self.dir, 0o755)
            os.chmod(self.address, 0o777)
        # The supervisor learns the sender's pid from the credentials, as systemd does.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []

    def env(self, **extra):
        e = {"NOTIFY_SOCKET": self.address}
        e.update(extra)
        return e

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        msg = (pid, fields, time.monotonic())
        self.messages.append(msg)
        return msg

    def wait(self, pred, timeout=20.0, start=0):
        """Receives until a message (the start-th or later) satisfies pred(fields);
        returns its fields or None."""
        deadline = time.monotonic() + timeout
        for pid, fields, _ in self.messages[start:]:
            if pred(fields):
                return fields
        while time.monotonic() < deadline:
            msg = self._recv(max(0.01, deadline - time.monotonic()))
            if msg and pred(msg[1]):
                return msg[1]
        return None

    def drain(self, seconds):
        """Collects what arrives within seconds (only to bound a test, never to time it)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv(max(0.01, deadline - time.monotonic()))

    def close(self):
        self.sock.close()
        if self.dir:
            try:
                os.unlink(self.address)
            except OSError:
                pass
            os.rmdir(self.dir)


def has(name, value=None):
    return lambda f: name in f and (value is None or f[name] == value)


class SdnotifyTest(unittest.TestCase):
    def notify(self, abstract=True):
        n = Notify(abstract)
        self.addCleanup(n.close)
        return n

    def daemon(self, env, **kw):
        ps = Postsurge(env=env, start=False, **kw)
        self.addCleanup(self.dump_log_on_failure, ps)
        self.addCleanup(ps.cleanup)
        return ps

    def dump_log_on_failure(self, ps):
        outcome = getattr(self, "_outcome", None)
        errors = getattr(getattr(outcome, "result", None), "errors", []) + \
            getattr(getattr(outcome, "result", None), "failures", [])
        if any(t is self for t, _ in errors):
            print("---- postsurge log ----\n" + ps.log()[-4000:])

    def assert_from(self, n, pid):
        senders = {p for p, _, _ in n.messages}
        self.assertEqual(senders, {pid}, "every notification must come from the main pid")

    def test_sdnotify_ready_after_listen_and_stopping(self):
        n = self.notify()
        ps = self.daemon(n.env())
        ps.start(wait=False)
        ready = n.wait(has("READY", "1"))
        self.assertIsNotNone(ready, ps.log())
        # READY must not come before the port accepts: Postfix may connect right away.
        self.assertTrue(tcp_listening(ps.port), "READY=1 before the listener was up")
        self.assertIn("inet:127.0.0.1:%d" % ps.port, ready.get("STATUS", ""))
        ps.signal(signal.SIGTERM)
        self.assertIsNotNone(n.wait(has("STOPPING", "1")))
        self.assertEqual(ps.wait_exit(), 0)
        self.assertFalse(any("WATCHDOG" in f for _, f, _ in n.messages),
                         "no watchdog pings without WATCHDOG_USEC")
        self.assert_from(n, ps.pid)
        self.assertNotIn("handle still open", ps.log())

    def test_sdnotify_filesystem_socket(self):
        n = self.notify(abstract=False)
        ps = self.daemon(n.env())
        ps.start(wait=False)
        self.assertIsNotNone(n.wait(has("READY", "1")), ps.log())
        self.assertTrue(tcp_listening(ps.port))
        self.assertEqual(ps.stop(), 0)
        self.assertIsNotNone(n.wait(has("STOPPING", "1")))

    def test_sdnotify_watchdog_pings(self):
        n = self.notify()
        # 100 ms deadline: pings every 50 ms. Only the count is checked, never the pace.
        ps = self.daemon(n.env(WATCHDOG_USEC="100000"))
        ps.start(wait=False)
        self.assertIsNotNone(n.wait(has("READY", "1")), ps.log())
        pings = []

        def enough(f):
            if f.get("WATCHDOG") == "1":
                pings.append(f)
            return len(pings) >= 4
        self.assertTrue(n.wait(enough), "expected repeated WATCHDOG=1, got %r" % n.messages)
        self.assertEqual(ps.stop(), 0)
        self.assert_from(n, ps.pid)
        self.assertIn("watchdog: pinging every 50 ms", ps.log())

    def test_sdnotify_watchdog_pid_ours(self):
        # A wrapper that execs postsurge keeps its pid: WATCHDOG_PID=$$ names us.
        n = self.notify()
        ps = self.daemon(n.env(WATCHDOG_USEC="100000"))
        logf = open(ps.log_path, "ab")
        ps.logf = logf  # ps.stop() closes it
        ps.proc = subprocess.Popen(
            ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" -f -c "$1" serve', POSTSURGE,
             ps.config_path], stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, env=ps.env)
        self.assertIsNotNone(n.wait(has("WATCHDOG", "1")), ps.log())
        self.assertEqual(ps.stop(), 0)
        self.assert_from(n, ps.pid)

    def test_sdnotify_watchdog_pid_other(self):
        n = self.notify()
        ps = self.daemon(n.env(WATCHDOG_USEC="100000", WATCHDOG_PID="1"))
        ps.start(wait=False)
        self.assertIsNotNone(n.wait(has("READY", "1")), ps.log())
        # Several would-be ping intervals; then a reload proves the loop is turning.
        mark = ps.reload()
        self.assertIsNotNone(n.wait(has("RELOADING", "1")))
        self.assertTrue(ps.wait_log("reload: configuration reloaded", since=mark))
        self.assertEqual(ps.stop(), 0)
        self.assertIsNotNone(n.wait(has("STOPPING", "1")))
        self.assertFalse(any("WATCHDOG" in f for _, f, _ in n.messages),
                         "WATCHDOG_PID names another process: no pings")

    def test_sdnotify_reload_then_ready(self):
        n = self.notify()
        ps = self.daemon(n.env(WATCHDOG_USEC="60000000"))
        ps.start(wait=False)
        self.assertIsNotNone(n.wait(has("READY", "1")), ps.log())
        before = len(n.messages)
        ps.signal(signal.SIGHUP)
        reloading = n.wait(has("RELOADING", "1"), start=before)
        self.assertIsNotNone(reloading)
        self.assertTrue(reloading.get("MONOTONIC_USEC", "").isdigit(), reloading)
        at = next(k for k in range(before, len(n.messages))
                  if n.messages[k][1] is reloading)
        ready = n.wait(has("READY", "1"), start=at + 1)
        self.assertIsNotNone(ready, "READY=1 must follow RELOADING=1: %r" % n.messages)
        self.assertIn("serving on", ready.get("STATUS", ""))

        # A broken file: still READY (the old configuration serves), and STATUS says so.
        ps.write_config(text="listen = inet:127.0.0.1:%d\nno_such_setting = 1\n" % ps.port)
        before = len(n.messages)
        ps.signal(signal.SIGHUP)
        self.assertIsNotNone(n.wait(has("RELOADING", "1"), start=before))
        failed = n.wait(has("READY", "1"), start=before)
        self.assertIsNotNone(failed)
        self.assertIn("failed", failed.get("STATUS", ""))
        self.assertTrue(ps.running())
        self.assertEqual(ps.stop(), 0)
        self.assertIsNotNone(n.wait(has("STOPPING", "1")))
        self.assert_from(n, ps.pid)

    def test_sdnotify_without_notify_socket(self):
        ps = self.daemon({"NOTIFY_SOCKET": ""})
        ps.start()
        self.assertEqual(ps.stop(), 0)
        self.assertNotIn("notify", ps.log().lower())

    def test_sdnotify_bad_notify_socket_still_serves(self):
        ps = self.daemon({"NOTIFY_SOCKET": "relative/path", "WATCHDOG_USEC": "1000"})
        ps.start()
        with ps.client() as c:
            self.assertEqual(c.ask(), "DUNNO")
        self.assertIn("NOTIFY_SOCKET=relative/path", ps.log())
        self.assertEqual(ps.stop(), 0)


if __name__ == "__main__":
    testmain.main()
