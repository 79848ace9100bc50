"""The monitor's sensors, driven by monitor_probe (test/integration/monitor_probe.c):
spawn.c (timeouts, kill escalation, bounded and streamed output), tail.c (end-of-file
start, partial lines, logrotate-style rename, truncation, a missing file, long lines) and
monitor.c against a real Postfix instance with a small smtpd process limit, directly on a
loopback port and behind postscreen: idle, saturated by connections held open after the
banner (busy == limit, waiting > 0), released, and a process limit changed under it.
Every probe must exit 0, which it only does when uv_loop_close() succeeds."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from postfix_instance import PostfixInstance
import testmain

BUILD_ROOT = os.environ.get("BUILD_ROOT", "build")
PROBE = os.path.join(BUILD_ROOT, "test", "integration", "monitor_probe")


class Probe:
    """monitor_probe as a child process; its JSON lines are collected by a thread."""

    def __init__(self, *args, env=None):
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([PROBE] + list(args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        self.err = []
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line)

    def wait(self, pred, timeout=30.0):
        """Waits until pred(list of objects so far) is true; returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred(self.lines)
                if v or time.monotonic() >= deadline:
                    return v
                self.cond.wait(0.1)

    def stop(self, timeout=20.0):
        """SIGTERM, wait; returns the exit code (SIGKILL after timeout, then -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._drain()
        return self.proc.returncode

    def _drain(self):
        # The readers end at EOF once the probe is gone; then the pipes can be closed.
        for t in self.threads:
            t.join(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if not f.closed:
                f.close()


def spawn(*argv, timeout=None, max_stdout=None, stream=False, grace=None):
    args = [PROBE, "spawn"]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if max_stdout is not None:
        args += ["--max-stdout", str(max_stdout)]
    if grace is not None:
        args += ["--grace", str(grace)]
    if stream:
        args.append("--stream")
    r = subprocess.run(args + ["--"] + list(argv), capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout.splitlines()[-1]), r.stderr


class TestSpawn(unittest.TestCase):
    def test_spawn_reports_exit_status_and_stderr(self):
        rc, res, _ = spawn("sh", "-c", "echo out; echo err >&2; exit 3")
        self.assertEqual(rc, 0)
        self.assertEqual(res["exit"], 3)
        self.assertEqual(res["signal"], 0)
        self.assertFalse(res["timed_out"])
        self.assertEqual(res["out_len"], 4)
        self.assertEqual(res["err"], "err\n")

    def test_spawn_timeout_kills_sleep(self):
        rc, res, err = spawn("sleep", "10", timeout=200)
        self.assertEqual(rc, 0)
        self.assertTrue(res["timed_out"])
        self.assertEqual(res["signal"], signal.SIGTERM)
        self.assertEqual(res["exit"], -1)
        self.assertIn("timeout after 200 ms", err)

    def test_spawn_timeout_escalates_to_sigkill_for_the_whole_group(self):
        # The shell and its sleep both ignore SIGTERM; the group gets SIGKILL after the
        # grace time, so no sleep is left holding the pipes.
        rc, res, err = spawn("sh", "-c", "trap '' TERM; sleep 30; echo never", timeout=200,
                             grace=200)
        self.assertEqual(rc, 0)
        self.assertTrue(res["timed_out"])
        self.assertEqual(res["signal"], signal.SIGKILL)
        self.assertIn("SIGKILL", err)
        self.assertEqual(res["out_len"], 0)

    def test_spawn_truncates_large_output_at_cap(self):
        rc, res, _ = spawn("head", "-c", "10000000", "/dev/zero")
        self.assertEqual(rc, 0)
        self.assertEqual(res["exit"], 0)
        self.assertTrue(res["out_truncated"])
        self.assertEqual(res["out_len"], 4 << 20)
        rc, res, _ = spawn("postconf", "-d", max_stdout=1000)
        self.assertTrue(res["out_truncated"])
        self.assertEqual(res["out_len"], 1000)

    def test_spawn_postconf_d_fits_default_cap(self):
        rc, res, _ = spawn("postconf", "-d")
        self.assertEqual(res["exit"], 0)
        self.assertFalse(res["out_truncated"])
        self.assertGreater(res["out_lines"], 500)

    def test_spawn_streams_stdout_uncapped(self):
        rc, res, _ = spawn("head", "-c", "10000000", "/dev/zero", stream=True)
        self.assertEqual(rc, 0)
        self.assertEqual(res["streamed"], 10000000)
        self.assertEqual(res["out_len"], 0)
        self.assertFalse(res["out_truncated"])

    def test_spawn_missing_program_fails_without_callback(self):
        rc, res, _ = spawn("/nonexistent/postconf")
        self.assertEqual(rc, 1)
        self.assertIn("spawn_error", res)
        self.assertNotIn("exit", res)


class TestTail(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="postsurge-tail-")
        self.path = os.path.join(self.dir, "maillog")

    def tearDown(self):
        for root, dirs, files in os.walk(self.dir, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            os.rmdir(root)

    def probe(self, *extra):
        p = Probe("tail", self.path, "--interval", "50", *extra)
        self.addCleanup(p.stop)
        self.assertTrue(p.wait(lambda ls: any(o.get("started") for o in ls)), "probe did not start")
        return p

    @staticmethod
    def got(ls):
        return [o["line"] for o in ls if "line" in o]

    def wait_lines(self, p, want):
        ok = p.wait(lambda ls: len(self.got(ls)) >= len(want))
        self.assertEqual(self.got(p.lines), want, "stderr: %s" % "".join(p.err))
        self.assertTrue(ok)

    def append(self, text, path=None):
        with open(path or self.path, "a") as f:
            f.write(text)

    def test_tail_starts_at_end_and_waits_for_complete_lines(self):
        self.append("old 1\nold 2\n")
        p = self.probe()
        time.sleep(0.3)
        self.append("new 1\nnew 2\npart")
        self.wait_lines(p, ["new 1", "new 2"])
        time.sleep(0.3)
        self.assertEqual(self.got(p.lines), ["new 1", "new 2"])
        self.append("ial\n")
        self.wait_lines(p, ["new 1", "new 2", "partial"])
        self.assertEqual(p.stop(), 0)
        stats = [o["stats"] for o in p.lines if "stats" in o][0]
        self.assertEqual(stats["lines"], 3)
        self.assertEqual(stats["offset"], os.path.getsize(self.path))

    def test_tail_from_start_reads_existing_lines(self):
        self.append("a\r\nb\n")
        p = self.probe("--from-start")
        self.wait_lines(p, ["a", "b"])
        self.assertEqual(p.stop(), 0)

    def test_tail_follows_rename_rotation_without_loss_or_duplicates(self):
        self.append("")
        p = self.probe()
        self.append("one\n")
        self.wait_lines(p, ["one"])
        # Like postfix logrotate: the writer keeps its descriptor to the renamed file and
        # writes there until it reopens the name at its next write.
        writer = open(self.path, "a")
        os.rename(self.path, self.path + ".1")
        writer.write("two (old file, after rename)\n")
        writer.flush()
        time.sleep(0.2)
        writer.write("three (old file)\n")
        writer.close()
        self.append("four (new file)\nfive\n")
        self.wait_lines(p, ["one", "two (old file, after rename)", "three (old file)",
                            "four (new file)", "five"])
        time.sleep(0.3)
        self.append("six\n")
        self.wait_lines(p, ["one", "two (old file, after rename)", "three (old file)",
                            "four (new file)", "five", "six"])
        self.assertEqual(p.stop(), 0)
        stats = [o["stats"] for o in p.lines if "stats" in o][0]
        self.assertGreaterEqual(stats["rotations"], 1)

    def test_tail_restarts_after_truncation(self):
        self.append("")
        p = self.probe()
        self.append("first line that is long enough\n")
        self.wait_lines(p, ["first line that is long enough"])
        with open(self.path, "w") as f:
            f.write("x\n")
        self.wait_lines(p, ["first line that is long enough", "x"])
        self.assertEqual(p.stop(), 0)
        stats = [o["stats"] for o in p.lines if "stats" in o][0]
        self.assertEqual(stats["truncations"], 1)

    def test_tail_survives_missing_file_and_logs_once(self):
        p = self.probe()
        time.sleep(0.5)  # ten polls of a missing file
        self.append("appeared\n")
        self.wait_lines(p, ["appeared"])
        os.unlink(self.path)
        time.sleep(0.3)
        self.append("again\n")
        self.wait_lines(p, ["appeared", "again"])
        self.assertEqual(p.stop(), 0)
        missing = [l for l in p.err if "will retry" in l]
        self.assertEqual(len(missing), 2, "".join(p.err))  # once per disappearance

    def test_tail_cuts_overlong_lines(self):
        self.append("")
        p = self.probe("--max-line", "100")
        self.append("y" * 5000 + "\nshort\n")
        ok = p.wait(lambda ls: len(self.got(ls)) >= 2)
        self.assertTrue(ok)
        lines = [o for o in p.lines if "line" in o]
        self.assertEqual(lines[0]["line"], "y" * 100)
        self.assertTrue(lines[0]["truncated"])
        self.assertEqual(lines[1], {"line": "short", "truncated": False})
        self.assertEqual(p.stop(), 0)


def hold_connections(port, n, banner_timeout=30.0):
    """Opens n connections to port that stay silent (an idle client holds its smtpd until
    smtpd_timeout); returns the sockets, which the caller closes. Connections beyond the
    process limit wait in a backlog."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=banner_timeout)
        socks.append(s)
    return socks


class MonitorTest:
    """Mixin: the monitor tests, run directly on a loopback smtpd and behind postscreen."""
    postscreen = False
    limit = 3
    env = {}

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to run Postfix")
        self.pf = PostfixInstance(process_limit=self.limit, postscreen=self.postscreen,
                                  sink=False)
        self.pf.start()
        self.addCleanup(self.pf.stop)
        self.p = Probe("monitor", self.pf.dir, "--maillog", self.pf.maillog_path,
                       "--interval", "200", env=self.env)
        self.addCleanup(self.p.stop)
        self.socks = []
        self.addCleanup(self.close_socks)

    def close_socks(self):
        for s in self.socks:
            s.close()
        self.socks = []

    def service(self, sample):
        self.assertEqual(len(sample["services"]), 1, sample)
        return sample["services"][0]

    def wait_sample(self, pred, timeout=30.0):
        """The first sample (from now on) for which pred(service, sample) is true."""
        start = len(self.p.lines)

        def find(ls):
            for o in ls[start:]:
                if o.get("limits_known") and o["services"] and pred(o["services"][0], o):
                    return o
            return None
        got = self.p.wait(find, timeout)
        self.assertTrue(got, "no matching sample; last: %s\nstderr: %s" % (
            self.p.lines[-1:] if self.p.lines else None, "".join(self.p.err)))
        return got

    def check_saturation(self):
        want_name = "smtpd/pass" if self.postscreen else "127.0.0.1:%d/inet" % self.pf.port
        idle = self.wait_sample(lambda s, o: True)
        svc = self.service(idle)
        self.assertEqual(svc["name"], want_name)
        self.assertEqual(svc["limit"], self.limit)
        self.assertEqual(svc["port"], self.pf.port)
        self.assertEqual(svc["pass"], self.postscreen)
        self.assertEqual(svc["busy"], 0)
        self.assertEqual(svc["waiting"], 0)
        self.assertTrue(svc["waiting_known"])
        self.assertTrue(idle["master"])
        self.assertTrue(idle["qmgr"])
        self.assertEqual(idle["master_pid"], self.pf.master_pid())

        # limit + 2 clients that connect and stay silent after the banner.
        self.socks = hold_connections(self.pf.port, self.limit + 2)
        full = self.wait_sample(lambda s, o: s["busy"] == self.limit and s["waiting"] == 2)
        svc = self.service(full)
        self.assertEqual(svc["alive"], self.limit)
        self.assertGreaterEqual(svc["saturation"], 100)

        self.close_socks()
        self.wait_sample(lambda s, o: s["busy"] == 0 and s["waiting"] == 0)
        return full

    def test_monitor_sees_saturation_and_release(self):
        self.check_saturation()
        self.assertEqual(self.p.stop(), 0, "".join(self.p.err))

    def test_monitor_ignores_other_listener_on_same_port(self):
        # Another instance (MULTI_INSTANCE_README) or program on the same port at another
        # address: its backlog is not this Postfix's waiting clients.
        self.wait_sample(lambda s, o: s["waiting_known"])
        other = socket.socket()
        self.addCleanup(other.close)
        other.bind(("127.0.0.2", self.pf.port))
        other.listen(16)  # never accepts: every connection waits in its backlog
        for _ in range(3):
            c = socket.create_connection(("127.0.0.2", self.pf.port), timeout=10)
            self.socks.append(c)
        # The kernel shows the 3 in that socket's backlog (what the monitor reads).
        hexport = "%04X" % self.pf.port
        with open("/proc/net/tcp") as f:
            rows = [l.split() for l in f if (":" + hexport + " ") in l]
        backlog = [r for r in rows if r[1] == "0200007F:" + hexport and r[3] == "0A"]
        self.assertEqual(len(backlog), 1, rows)
        self.assertEqual(int(backlog[0][4].split(":")[1], 16), 3, backlog)
        start = len(self.p.lines)
        self.wait_sample(lambda s, o: len(self.p.lines) - start >= 5)
        for o in self.p.lines[start:]:
            if o.get("services"):
                self.assertEqual(o["services"][0]["waiting"], 0, o)
                self.assertEqual(o["services"][0]["busy"], 0, o)
        self.assertEqual(self.p.stop(), 0, "".join(self.p.err))

    def test_monitor_rereads_changed_process_limit(self):
        self.wait_sample(lambda s, o: s["limit"] == self.limit)
        svc = self.pf.smtpd_service
        self.pf.postconf("-F", "%s/process_limit=%d" % (svc, self.limit + 2))
        self.pf.reload()
        self.wait_sample(lambda s, o: s["limit"] == self.limit + 2, timeout=60)
        self.assertEqual(self.p.stop(), 0, "".join(self.p.err))

    def test_monitor_reports_master_gone(self):
        self.wait_sample(lambda s, o: o["master"])
        self.pf.postfix("stop", check=False, timeout=30)
        got = self.wait_sample(lambda s, o: not o["master"])
        self.assertFalse(got["qmgr"])
        self.assertEqual(self.p.stop(), 0, "".join(self.p.err))


class TestMonitorDirect(MonitorTest, unittest.TestCase):
    postscreen = False


class TestMonitorDirectProcFallback(MonitorTest, unittest.TestCase):
    """The /proc/PID/net/tcp path used when sock_diag is unusable or master runs in
    another network namespace."""
    postscreen = False
    env = {"POSTSURGE_MONITOR_PROC_ONLY": "1"}


class TestMonitorPostscreen(MonitorTest, unittest.TestCase):
    postscreen = True

    def test_monitor_counts_process_limit_warning_from_log(self):
        # Behind postscreen master does warn (a loopback inet smtpd never does).
        self.check_saturation()
        ok = self.p.wait(lambda ls: any(o.get("log", {}).get("process_limit") for o in ls))
        self.assertTrue(ok, self.pf.maillog()[-3000:])
        warn = [o for o in self.p.lines if o.get("log", {}).get("process_limit")][0]
        self.assertEqual(warn["log"]["last_process_limit_service"], "smtpd")
        self.assertTrue(warn["stress_process_limit_warning"])
        self.assertEqual(self.p.stop(), 0, "".join(self.p.err))


if __name__ == "__main__":
    testmain.main()
