"""End to end (issue 5): `postsurge report` against a real Postfix 3.7 instance with
delivered mail (smtp-sink), deferred mail (a domain routed to a closed port) and held mail
(postsuper -h). The report's queue counts must equal what `postqueue -j` shows, held mail
must raise the exit status to the configured level, --json must validate against
test/data/report/schema.json, --prometheus must write a file (atomically, mode 0644) that
`promtool check metrics` accepts, traffic must count only log lines new since the last run
(also across a rotation), a stopped daemon must be reported, and --quiet must print nothing
when all is well; report.lock keeps two reports apart, a first run reads at most the
log's last 64 MiB, report_quiet_windows silences anomalies unless the backlog is over
report_quiet_backlog_limit. Also prints (does not assert) the time of a report on a generated
100,000-message queue. ReportJournalE2E: the same Postfix logging to a systemd-journald of
the test's own (its /dev/log in a private mount namespace), the report reading it
(`maillog_file = journal:DIR`): each delivery counted once across report runs and journal
rotations and a vacuum, and the journal reader gets Postfix's lines in the order logged.
Needs root, postfix, swaks, promtool (journald and unshare for the journal class).
Env: POSTSURGE (the binary), PYTHONPATH=test/pylib, TEST_DATA or SOURCE_ROOT.
"""
import fcntl
import http.server
import json
import os
import shutil
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from journald import Journald, dev_log_unavailable, unavailable as journald_unavailable
from ports import free_port, wait_for
from postfix_instance import PostfixInstance
from postsurge import Postsurge
from redis_server import RedisCluster, RedisServer, SentinelSet
from store_driver import FakeRedis
import testmain

POSTSURGE = os.environ.get("POSTSURGE", "postsurge")
SOURCE_ROOT = os.environ.get("SOURCE_ROOT",
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
REPORT_DATA = os.path.join(os.environ.get("TEST_DATA", os.path.join(SOURCE_ROOT, "test", "data")),
                           "report")
sys.path.insert(0, REPORT_DATA)
from check_outputs import validate  # noqa: E402  (the report tests' stdlib validator)
# The journal reader as a child process (monitor_probe tail), as the journal tests use it.
sys.path.insert(0, os.path.join(SOURCE_ROOT, "test", "integration"))
from test_monitor import Probe  # noqa: E402

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def postqueue_counts(records):
    """{queue: (messages, recipients)} from parsed postqueue -j records."""
    out = {q: [0, 0] for q in QUEUES}
    for m in records:
        out[m["queue_name"]][0] += 1
        out[m["queue_name"]][1] += len(m["recipients"])
    return {q: tuple(v) for q, v in out.items()}


class ReportE2E(unittest.TestCase):
    pf = None

    @classmethod
    def setUpClass(cls):
        cls.pf = PostfixInstance()
        cls.pf.start()
        try:
            cls._fill_queue()
        except BaseException:
            cls.pf.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()

    @classmethod
    def _fill_queue(cls):
        pf = cls.pf
        for i in range(2):
            r = pf.send_swaks(to="ok%d@%s" % (i, pf.sink_domain))
            assert r.returncode == 0, r.stdout
        r = pf.send_swaks(to=["d1@" + pf.defer_domain, "d2@" + pf.defer_domain])
        assert r.returncode == 0, r.stdout
        for i in range(2):
            r = pf.send_swaks(to="h%d@%s" % (i, pf.defer_domain))
            assert r.returncode == 0, r.stdout
        assert len(pf.wait_maillog(r"status=sent", 60, count=2)) >= 2, pf.maillog()
        assert len(pf.wait_maillog(r"status=deferred", 60, count=4)) >= 4, pf.maillog()
        assert wait_for(lambda: sum(m["queue_name"] == "deferred" for m in pf.queue_json()) == 3,
                        60, 0.2), pf.queue_json()
        # Hold the message to h0@: postsuper -h QUEUE_ID.
        qid = next(m["queue_id"] for m in pf.queue_json()
                   if m["recipients"][0]["address"].startswith("h0@"))
        pf.postsuper("-h", qid)
        assert wait_for(lambda: any(m["queue_name"] == "hold" for m in pf.queue_json()), 30, 0.2)

    # --- helpers ---------------------------------------------------------------------

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="postsurge-report-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def config(self, name="postsurge.cf", **extra):
        """Writes a config for the test instance (daemon down: http_listen on a port nobody
        listens on) and returns its path. Its state_directory is fresh per config name."""
        settings = {
            "postfix_config_directory": self.pf.dir,
            "maillog_file": self.pf.maillog_path,
            "state_directory": os.path.join(self.tmp, name + ".state"),
            "http_listen": "inet:127.0.0.1:%d" % free_port(),
            "log_destination": "stderr",
            "node_name": "mx-test",
        }
        settings.update({k: str(v) for k, v in extra.items()})
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("".join("%s = %s\n" % kv for kv in settings.items()))
        return path

    def report(self, cfg, *args, timeout=120):
        return subprocess.run([POSTSURGE, "-c", cfg, "report", *args], capture_output=True,
                              text=True, timeout=timeout)

    def report_json(self, cfg, *args):
        r = self.report(cfg, "--json", *args)
        self.assertIn(r.returncode, (0, 1, 2, 3), r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["exit_code"], r.returncode)
        return doc, r

    @staticmethod
    def finding(doc, code):
        return next((f for f in doc["findings"] if f["code"] == code), None)

    # --- tests -----------------------------------------------------------------------

    def test_queue_counts_equal_postqueue(self):
        doc, _ = self.report_json(self.config())
        want = postqueue_counts(self.pf.queue_json())
        got = {q: (doc["queues"][q]["messages"], doc["queues"][q]["recipients"]) for q in QUEUES}
        self.assertEqual(got, want)
        self.assertEqual(want["hold"], (1, 1))
        self.assertEqual(want["deferred"], (2, 3))
        dom = next(d for d in doc["domains"] if d["domain"] == self.pf.defer_domain)
        self.assertEqual(dom["recipients"], 4)
        self.assertGreaterEqual(doc["deferral_reasons"]["by_class"]["connection_refused"], 3)
        self.assertEqual(doc["queue_parse"]["malformed"], 0)

    def test_hold_sets_configured_level(self):
        doc, r = self.report_json(self.config(report_hold_critical=1))
        self.assertEqual(r.returncode, 2)
        self.assertEqual(doc["status"], "CRITICAL")
        self.assertEqual(self.finding(doc, "hold")["severity"], "CRITICAL")

        doc, r = self.report_json(self.config("warn.cf"))  # default: report_hold_warning = 1
        self.assertEqual(self.finding(doc, "hold")["severity"], "WARNING")
        self.assertEqual(r.returncode, 1)

        doc, r = self.report_json(self.config("off.cf", report_hold_warning=0))
        self.assertIsNone(self.finding(doc, "hold"))

    def test_json_validates_against_schema(self):
        with open(os.path.join(REPORT_DATA, "schema.json")) as f:
            schema = json.load(f)
        doc, _ = self.report_json(self.config())
        self.assertEqual(validate(doc, schema, schema), [])
        try:
            import jsonschema  # the full draft-07 implementation
        except ImportError:
            # The stdlib check above ran; the skip makes the missing full check visible.
            self.skipTest("full draft-07 check not run: python3-jsonschema not installed "
                          "(.ci/install-deps test installs it)")
        errs = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        self.assertEqual(errs, [])

    def test_prometheus_file_passes_promtool(self):
        promtool = shutil.which("promtool")
        if not promtool:
            self.skipTest("promtool not installed (package prometheus)")
        outdir = os.path.join(self.tmp, "textfile")
        os.mkdir(outdir)
        prom = os.path.join(outdir, "postsurge.prom")
        r = self.report(self.config(), "--prometheus", prom, "--quiet")
        self.assertIn(r.returncode, (1, 2), r.stdout + r.stderr)
        self.assertEqual(os.listdir(outdir), ["postsurge.prom"])  # no temporary left over
        self.assertEqual(stat.S_IMODE(os.stat(prom).st_mode), 0o644)
        with open(prom, "rb") as f:
            text = f.read()
            f.seek(0)
            c = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True,
                               timeout=60)
        self.assertEqual(c.returncode, 0, (c.stdout + c.stderr).decode())
        self.assertIn(b'postsurge_report_queue_messages{queue="hold"} 1', text)

    def test_traffic_counts_only_new_lines(self):
        pf = self.pf
        cfg = self.config()
        log = pf.maillog()
        sent = sum("status=sent" in l and pf.sink_domain in l for l in log.splitlines())
        deferred = sum("status=deferred" in l for l in log.splitlines())
        doc, _ = self.report_json(cfg)
        t = {d["domain"]: d for d in doc["traffic"]["domains"]}
        self.assertEqual(t[pf.sink_domain]["delivered"], sent)
        self.assertEqual(t[pf.defer_domain]["deferred"], deferred)
        # swaks connects from loopback: internal, never ranked among the clients.
        tot = doc["traffic"]["totals"]
        self.assertGreaterEqual(tot["internal_connections"], 5)
        self.assertEqual(tot["connections"], 0)
        self.assertFalse(any(c["address"] == "127.0.0.1" for c in doc["traffic"]["clients"]))

        n0 = len(pf.wait_maillog(r"status=sent", 1))
        self.assertEqual(pf.send_swaks(to="again@" + pf.sink_domain).returncode, 0)
        self.assertGreater(len(pf.wait_maillog(r"status=sent", 60, count=n0 + 1)), n0)
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 1)
        self.assertEqual(doc["traffic"]["totals"]["deferred"], 0)
        self.assertEqual(doc["traffic"]["totals"]["internal_connections"], 1)

        doc, _ = self.report_json(cfg, "--no-traffic")
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 0)

    def test_traffic_follows_rotation(self):
        log = os.path.join(self.tmp, "mail.log")
        line = ("Nov 23 03:33:29 mx postfix/smtp[11214]: 851735104A%d: to=<u%d@rot.test>, "
                "relay=x[192.0.2.1]:25, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, "
                "status=sent (250 ok)\n")
        with open(log, "w") as f:
            f.write(line % (1, 1) + line % (2, 2))
        cfg = self.config(maillog_file=log)
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 2)
        # One more line and a partial one: the partial line waits for its newline.
        l4 = line % (4, 4)
        with open(log, "a") as f:
            f.write(line % (3, 3) + l4[:30])
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 1)
        # The line is completed, then the file rotated: the rest of the old file (found as
        # NAME.1 by its inode) and all of the new one count.
        with open(log, "a") as f:
            f.write(l4[30:])
        os.rename(log, log + ".1")
        with open(log, "w") as f:
            f.write(line % (5, 5) + line % (6, 6) + line % (7, 7))
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 4)
        # Truncation in place (copytruncate): read from the start again.
        with open(log, "w") as f:
            f.write(line % (8, 8))
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 1)
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 0)

    # --- report.lock, the first run's 64 MiB cap, quiet windows ------------------------

    SENT = ("Nov 23 03:33:29 mx postfix/smtp[11214]: 851735104A%d: to=<u%d@%s>, "
            "relay=x[192.0.2.1]:25, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, "
            "status=sent (250 ok)\n")

    def sent_lines(self, domain, n, first=0):
        return "".join(self.SENT % (i, i, domain) for i in range(first, first + n))

    def fake_postqueue(self, active=0):
        """A postqueue_command that prints `active` messages in the active queue."""
        path = os.path.join(self.tmp, "postqueue-%d" % active)
        now = int(time.time())
        with open(path + ".jsonl", "w") as f:
            for i in range(active):
                f.write(json.dumps({"queue_name": "active", "queue_id": "A1B2C%d" % i,
                                    "arrival_time": now - 60, "message_size": 1000,
                                    "forced_expire": False, "sender": "s@example.org",
                                    "recipients": [{"address": "r%d@example.net" % i}]}) + "\n")
        with open(path, "w") as f:
            f.write("#!/bin/sh\ncat '%s.jsonl'\n" % path)
        os.chmod(path, 0o755)
        return path

    def test_report_lock_keeps_two_reports_apart(self):
        log = os.path.join(self.tmp, "mail.log")
        with open(log, "w") as f:
            f.write(self.sent_lines("lock.test", 40))
        cfg = self.config("lock.cf", maillog_file=log, postqueue_command=self.fake_postqueue())
        state = os.path.join(self.tmp, "lock.cf.state")
        os.mkdir(state, 0o750)
        argv = [POSTSURGE, "-c", cfg, "report", "--json"]
        # Held by someone else: a report waits for it, and does not read the log meanwhile.
        with open(os.path.join(state, "report.lock"), "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(lambda: p.poll() is None and p.kill())

            def opened_lock():
                try:
                    return any(os.readlink("/proc/%d/fd/%s" % (p.pid, fd)).endswith("report.lock")
                               for fd in os.listdir("/proc/%d/fd" % p.pid))
                except OSError:
                    return False
            # The event: the report has the lock file open, it got as far as the lock.
            self.assertTrue(wait_for(opened_lock, 30), p.poll())
            time.sleep(0.5)  # five of its 100 ms retries
            self.assertIsNone(p.poll(), "report ran while report.lock was held")
            self.assertFalse(os.path.exists(os.path.join(state, "report-state.json")))
        out, err = p.communicate(timeout=60)
        self.assertEqual(json.loads(out)["traffic"]["totals"]["delivered"], 40, err)
        # Two reports at once count each log line once between them.
        with open(log, "a") as f:
            f.write(self.sent_lines("lock.test", 30, 40))
        ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in ps]
        counts = [json.loads(o)["traffic"]["totals"]["delivered"] for o, _ in outs]
        self.assertEqual(sum(counts), 30, (counts, outs))
        self.assertEqual(sorted(counts), [0, 30], outs)

    def test_first_run_reads_at_most_the_last_64_mib(self):
        mib = 1024 * 1024
        filler = "Nov 23 03:33:29 mx kernel: %s\n" % ("x" * 996)  # 1 KiB, not Postfix
        log = os.path.join(self.tmp, "big.log")
        with open(log, "w") as f:
            f.write(self.sent_lines("early.test", 3))
            f.write(filler * (2 * 1024))
            f.write(self.sent_lines("mid.test", 4))  # 63 MiB + a few lines from the end
            f.write(filler * (63 * 1024))
            f.write(self.sent_lines("late.test", 5))
        self.assertGreater(os.path.getsize(log), 65 * mib)
        cfg = self.config("big.cf", maillog_file=log, postqueue_command=self.fake_postqueue())
        doc, r = self.report_json(cfg)
        t = {d["domain"]: d["delivered"] for d in doc["traffic"]["domains"]}
        self.assertEqual(t.get("late.test"), 5, r.stderr)
        self.assertEqual(t.get("mid.test"), 4, r.stderr)
        self.assertNotIn("early.test", t)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 9)
        # The next run starts where this one stopped.
        with open(log, "a") as f:
            f.write(self.sent_lines("next.test", 2))
        doc, _ = self.report_json(cfg)
        self.assertEqual(doc["traffic"]["totals"]["delivered"], 2)

    def seeded_run(self, name, active=0, **extra):
        """Two reports on one state: the first writes the state, then 24 hourly samples of
        1000 deliveries are put into its baseline; the second sees 1 delivery (one new log
        line), an anomaly unless quiet. Returns the second run's JSON and state."""
        log = os.path.join(self.tmp, name + ".log")
        with open(log, "w") as f:
            f.write(self.sent_lines("quiet.test", 1))
        cfg = self.config(name, maillog_file=log, postqueue_command=self.fake_postqueue(active),
                          **extra)
        self.report_json(cfg)
        path = os.path.join(self.tmp, name + ".state", "report-state.json")
        with open(path) as f:
            st = json.load(f)
        hour = int(time.time()) // 3600 * 3600
        st["baseline"]["metrics"]["mx-test/traffic.delivered"] = [
            [hour - i * 3600, 1, 1000.0, 0.0] for i in range(24, 0, -1)]
        with open(path, "w") as f:
            json.dump(st, f)
        with open(log, "a") as f:  # traffic figures are compared when there is traffic
            f.write(self.sent_lines("quiet.test", 1, 1))
        doc, r = self.report_json(cfg)
        with open(path) as f:
            return doc, json.load(f), r

    @staticmethod
    def delivered_anomaly(doc):
        return next((a for a in doc["anomalies"] if a["metric"] == "traffic.delivered"), None)

    def test_quiet_windows_in_a_report_run(self):
        # Control: the seeded baseline raises the anomaly outside any quiet window.
        doc, _, r = self.seeded_run("loud.cf")
        a = self.delivered_anomaly(doc)
        self.assertIsNotNone(a, doc["anomalies"])
        self.assertEqual((a["value"], a["mean"]), (1.0, 1000.0))
        self.assertGreaterEqual(a["samples"], 24)
        # A window covering the whole day: no anomaly, but the sample is still recorded.
        doc, st, r = self.seeded_run("quiet.cf", report_quiet_windows="00:00-24:00")
        self.assertIsNone(self.delivered_anomaly(doc), doc["anomalies"])
        self.assertNotIn("report_quiet_windows", r.stderr)
        buckets = st["baseline"]["metrics"]["mx-test/traffic.delivered"]
        self.assertEqual(sum(b[1] for b in buckets), 25)
        # The hourly form (ends are exclusive, so minute 59 is outside it).
        t0 = time.localtime()
        doc, _, r = self.seeded_run("hourly.cf", report_quiet_windows="*:00-*:59")
        self.assertNotIn("report_quiet_windows", r.stderr)
        if t0.tm_min != 59 and time.localtime().tm_min != 59:
            self.assertIsNone(self.delivered_anomaly(doc), doc["anomalies"])

    def test_quiet_backlog_limit_overrides_quiet_windows(self):
        # 3 messages in incoming + active, over a limit of 2: reported despite the window.
        doc, _, r = self.seeded_run("over.cf", active=3, report_quiet_windows="00:00-24:00",
                                    report_quiet_backlog_limit=2)
        self.assertEqual(doc["queues"]["active"]["messages"], 3, r.stderr)
        self.assertIsNotNone(self.delivered_anomaly(doc), doc["anomalies"])
        # At the limit: still quiet.
        doc, _, r = self.seeded_run("at.cf", active=3, report_quiet_windows="00:00-24:00",
                                    report_quiet_backlog_limit=3)
        self.assertIsNone(self.delivered_anomaly(doc), doc["anomalies"])
        # 0: quiet windows always apply.
        doc, _, r = self.seeded_run("zero.cf", active=3, report_quiet_windows="00:00-24:00",
                                    report_quiet_backlog_limit=0)
        self.assertIsNone(self.delivered_anomaly(doc), doc["anomalies"])

    def test_daemon_down_then_up(self):
        doc, _ = self.report_json(self.config())
        self.assertEqual(doc["nodes"][0]["name"], "mx-test")
        self.assertIs(doc["nodes"][0]["daemon_up"], False)
        self.assertIs(doc["nodes"][0]["master_up"], True)
        self.assertIs(doc["nodes"][0]["qmgr_up"], True)
        self.assertEqual(self.finding(doc, "daemon_down")["subject"], "mx-test")

        # A running daemon with this config: no daemon_down. An empty fake queue and an
        # empty log make everything else OK, so --quiet must print nothing.
        empty = os.path.join(self.tmp, "empty-postqueue")
        with open(empty, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(empty, 0o755)
        emptylog = os.path.join(self.tmp, "empty.log")
        open(emptylog, "w").close()
        ps = Postsurge(extra={
            "store": "memory", "monitor": "no", "node_name": "mx-test",
            "http_listen": "inet:127.0.0.1:%d" % free_port(),
            "postfix_config_directory": self.pf.dir, "maillog_file": emptylog,
            "postqueue_command": empty})
        self.addCleanup(ps.cleanup)
        r = ps.cli("report", "--json", timeout=60)
        doc = json.loads(r.stdout)
        self.assertIsNone(self.finding(doc, "daemon_down"), doc["findings"])
        self.assertIs(doc["nodes"][0]["daemon_up"], True)
        self.assertEqual(doc["status"], "OK", doc["findings"])
        self.assertEqual(r.returncode, 0)
        r = ps.cli("report", "--quiet", timeout=60)
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        r = ps.cli("report", timeout=60)
        self.assertTrue(r.stdout.startswith("OK - "), r.stdout)
        self.assertEqual(len(r.stdout.splitlines()), 1, r.stdout)

    def test_cluster_nodes_and_events_from_status(self):
        """A /status with two nodes shaped as the daemon's (overload/status.c), served by a
        stand-in HTTP server, and the event log from a stand-in control socket: both nodes
        are reported with stress and saturation, the imbalance is found once, and episodes
        and overrides count only events newer than the last report. Members of the wrong
        type are unknown, not guessed."""
        now_ms = int(time.time() * 1000)
        status = {
            "node": "mx-test", "stress": False, "imbalance": False,
            "nodes": [
                {"name": "mx-test", "stress": False, "state": "normal", "saturation": 20,
                 "master_running": True, "qmgr_running": True,
                 "services": [{"name": "smtpd", "busy": 20, "limit": 100, "waiting": 0}]},
                {"name": "mx-peer", "stress": True, "state": "stressed", "saturation": 97,
                 "master_running": True, "qmgr_running": True, "imbalance": False,
                 "services": [{"name": "smtpd", "busy": 97, "limit": 100, "waiting": 4}]},
                {"name": "mx-odd", "stress": "yes", "saturation": "50",
                 "master_running": 1, "services": [{"name": "smtpd", "busy": "1"}]},
            ],
        }
        events = [  # newest first, as node.c returns them
            {"time": now_ms - 30000, "node": "mx-test", "kind": "stress-enter", "text": "x"},
            {"time": now_ms - 59000, "node": "mx-peer", "kind": "overrides-applied",
             "text": "13 settings", "settings": []},
            {"time": now_ms - 60000, "node": "mx-peer", "kind": "stress-enter",
             "text": "saturation 97%"},
            {"time": str(now_ms), "node": "mx-peer", "kind": "stress-enter", "text": "bad"},
        ]
        body = json.dumps(status).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class Control(socketserver.StreamRequestHandler):
            def handle(self):
                words = self.rfile.readline().decode().split()
                if words[:1] == ["events"]:
                    since = int(words[1])
                    ans = {"ok": True, "events": [e for e in events if not
                                                  isinstance(e["time"], int) or
                                                  e["time"] >= since]}
                else:
                    ans = {"ok": False, "error": "unknown command"}
                self.wfile.write(json.dumps(ans).encode())

        srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        th = threading.Thread(target=srv.serve_forever, daemon=True)
        th.start()
        self.addCleanup(th.join, 10)
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        cfg = self.config(http_listen="inet:127.0.0.1:%d" % srv.server_address[1],
                          report_hold_warning=0)
        state_dir = os.path.join(self.tmp, "postsurge.cf.state")
        os.mkdir(state_dir)
        ctl = socketserver.ThreadingUnixStreamServer(os.path.join(state_dir, "control.sock"),
                                                     Control)
        cth = threading.Thread(target=ctl.serve_forever, daemon=True)
        cth.start()
        self.addCleanup(cth.join, 10)
        self.addCleanup(ctl.server_close)
        self.addCleanup(ctl.shutdown)
        doc, _ = self.report_json(cfg)
        nodes = {n["name"]: n for n in doc["nodes"]}
        self.assertEqual(sorted(nodes), ["mx-odd", "mx-peer", "mx-test"])
        peer, me, odd = nodes["mx-peer"], nodes["mx-test"], nodes["mx-odd"]
        self.assertEqual((peer["stressed"], peer["saturation"]), (True, 97))
        self.assertEqual((peer["stress_episodes"], peer["overrides"]), (1, 1))
        self.assertEqual([e["kind"] for e in peer["events"]],
                         ["stress-enter", "overrides-applied"])  # oldest first
        self.assertEqual(peer["services"][0]["waiting"], 4)
        self.assertEqual((me["stressed"], me["saturation"], me["stress_episodes"]), (False, 20, 1))
        self.assertIs(me["daemon_up"], True)
        self.assertIs(me["master_up"], True)  # this host's own view of Postfix
        self.assertEqual((odd["stressed"], odd["saturation"], odd["master_up"]),
                         (None, None, None))
        self.assertIsNone(odd["services"][0]["busy"])
        self.assertEqual([f["subject"] for f in doc["findings"] if f["code"] == "imbalance"],
                         ["mx-peer"])
        self.assertEqual(self.finding(doc, "saturation")["severity"], "CRITICAL")
        self.assertEqual(self.finding(doc, "stressed")["subject"], "mx-peer")
        # The same events are old news for the next report.
        doc, _ = self.report_json(cfg)
        nodes = {n["name"]: n for n in doc["nodes"]}
        self.assertEqual(nodes["mx-peer"]["stress_episodes"], 0)
        self.assertEqual(nodes["mx-peer"]["events"], [])

    def baselines_kept(self, url, redis):
        """The baselines are saved per node in the store at url and read back from there,
        even when the state file is gone (a rebuilt host); redis.command reads them."""
        cfg = self.config(store=url, store_key_prefix="ps:")
        _, r = self.report_json(cfg)
        self.assertNotIn("no cluster view", r.stderr)
        shutil.rmtree(os.path.join(self.tmp, "postsurge.cf.state"))
        self.report_json(cfg)
        saved = json.loads(redis.command("GET", "ps:report:baseline:mx-test"))
        buckets = saved["metrics"]["mx-test/queue.hold.messages"]
        self.assertEqual(sum(b[1] for b in buckets), 2)
        self.assertGreater(int(redis.command("TTL", "ps:report:baseline:mx-test")), 86400)

    def test_baselines_kept_in_redis(self):
        with RedisServer() as rs:
            self.baselines_kept(rs.url, rs)

    def test_baselines_kept_in_redis_through_sentinel(self):
        """store = redis-sentinel: the report asks the sentinels for the master and keeps
        its baselines there."""
        with SentinelSet() as ss:
            cfg = self.config(store=ss.url(), store_key_prefix="ps:")
            self.report_json(cfg)
            self.assertTrue(ss.master.command("GET", "ps:report:baseline:mx-test"))

    def test_baselines_kept_in_redis_cluster(self):
        """store = redis-cluster: the baselines are kept on the master of their key's slot
        (the report follows the slot map and MOVED)."""
        with RedisCluster() as c:
            self.baselines_kept(c.url(), c)
            spread = c.keys("ps:report:baseline:*")
            self.assertEqual(sum(len(v) for v in spread.values()), 1, spread)

    def test_cluster_from_redis_cluster_when_daemon_down(self):
        """Daemon down, store = redis-cluster: the peers' status and the event log come
        from their keys, which live on different masters."""
        now_ms = int(time.time() * 1000)
        peer = {"stress": True, "state": "stressed", "saturation": 90, "time": now_ms,
                "store": "redis", "flagged": [],
                "services": [{"name": "smtpd", "busy": 90, "limit": 100, "waiting": 2}]}
        with RedisCluster() as c:
            for name in ("mx-peer", "mx-peer2"):
                c.command("SET", "ps:node:" + name, "%d %s" % (now_ms, json.dumps(peer)),
                          "PX", "60000")
                c.command("ZADD", "ps:nodes", str(now_ms + 60000), name)
            c.command("LPUSH", "ps:events", json.dumps(
                {"time": now_ms - 5000, "node": "mx-peer", "kind": "stress-enter",
                 "text": "saturation 90%"}))
            masters = {p for p, keys in c.keys("ps:*").items() if keys}
            self.assertGreater(len(masters), 1)
            cfg = self.config(store=c.url(), store_key_prefix="ps:")
            doc, r = self.report_json(cfg)
        self.assertNotIn("no cluster view", r.stderr)
        nodes = {n["name"]: n for n in doc["nodes"]}
        self.assertEqual(sorted(nodes), ["mx-peer", "mx-peer2", "mx-test"])
        self.assertEqual((nodes["mx-peer"]["stressed"], nodes["mx-peer"]["saturation"]),
                         (True, 90))
        self.assertEqual(nodes["mx-peer"]["stress_episodes"], 1)
        self.assertIs(nodes["mx-test"]["daemon_up"], False)

    def test_cluster_from_redis_when_daemon_down(self):
        """Daemon down, store = redis: the peers' status and the event log come from the
        store's keys (as store_redis.c writes them); this node is reported down."""
        now_ms = int(time.time() * 1000)
        # As node.c publishes it (no "name": the key names the node).
        peer = {"stress": True, "state": "stressed", "saturation": 90, "time": now_ms,
                "store": "redis", "flagged": [],
                "services": [{"name": "smtpd", "busy": 90, "limit": 100, "waiting": 2}]}
        with RedisServer() as rs:
            rs.command("SET", "ps:node:mx-peer", "%d %s" % (now_ms, json.dumps(peer)),
                       "PX", "60000")
            rs.command("ZADD", "ps:nodes", str(now_ms + 60000), "mx-peer")
            # An expired node is not reported.
            rs.command("ZADD", "ps:nodes", str(now_ms - 1000), "mx-gone")
            rs.command("LPUSH", "ps:events", json.dumps(
                {"time": now_ms - 5000, "node": "mx-peer", "kind": "stress-enter",
                 "text": "saturation 90%"}))
            cfg = self.config(store=rs.url, store_key_prefix="ps:")
            doc, _ = self.report_json(cfg)
        nodes = {n["name"]: n for n in doc["nodes"]}
        self.assertEqual(sorted(nodes), ["mx-peer", "mx-test"])
        self.assertEqual((nodes["mx-peer"]["stressed"], nodes["mx-peer"]["saturation"]),
                         (True, 90))
        self.assertEqual(nodes["mx-peer"]["stress_episodes"], 1)
        self.assertIs(nodes["mx-test"]["daemon_up"], False)
        self.assertEqual(self.finding(doc, "daemon_down")["subject"], "mx-test")

    def test_report_follows_moved_and_ask_and_bounds_them(self):
        """store = redis-cluster with a node that claims every slot but sends each key on:
        the report follows MOVED and ASK to where the keys are (a plain redis-server that
        takes the ASKING in its stride), and gives up after 5 redirects of one key."""
        now_ms = int(time.time() * 1000)
        peer = {"stress": False, "state": "normal", "saturation": 10, "time": now_ms,
                "store": "redis", "flagged": [], "services": []}

        class Redirector(FakeRedis):
            target = None

            def answer(self, args):
                if args[0] == b"CLUSTER":
                    return (b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n"
                            b":%d\r\n$2\r\nid\r\n" % self.port)
                if len(args) < 2:
                    return b"+OK\r\n"  # ASKING, when sent round in a circle
                port = self.target or self.port
                # The node list and the events are being migrated (ASK), the rest moved.
                kind = b"ASK" if args[1] in (b"ps:nodes", b"ps:events") else b"MOVED"
                return b"-%s 1 127.0.0.1:%d\r\n" % (kind, port)

        with RedisServer() as rs:
            rs.command("SET", "ps:node:mx-peer", "%d %s" % (now_ms, json.dumps(peer)),
                       "PX", "60000")
            rs.command("ZADD", "ps:nodes", str(now_ms + 60000), "mx-peer")
            node = Redirector()
            self.addCleanup(node.close)
            node.target = rs.port
            cfg = self.config(store="redis-cluster://127.0.0.1:%d" % node.port,
                              store_key_prefix="ps:")
            doc, r = self.report_json(cfg)
            self.assertEqual(sorted(n["name"] for n in doc["nodes"]), ["mx-peer", "mx-test"])
            self.assertTrue(rs.command("GET", "ps:report:baseline:mx-test"))
            # Sent round in a circle: bounded, said, and the report still comes.
            node.target = None
            doc, r = self.report_json(self.config(name="loop.cf", store=(
                "redis-cluster://127.0.0.1:%d" % node.port), store_key_prefix="ps:"))
            self.assertIn("more than 5 redirects", r.stderr)
            self.assertEqual([n["name"] for n in doc["nodes"]], ["mx-test"])

    def test_postqueue_failure_is_unknown(self):
        doc, r = self.report_json(self.config(postqueue_command="/nonexistent/postqueue",
                                              report_hold_warning=0))
        self.assertIsNone(doc["queues"])
        self.assertEqual(self.finding(doc, "queue_unavailable")["severity"], "UNKNOWN")
        self.assertEqual(r.returncode, 3)

    def test_100k_queue_timing(self):
        """Prints the time of a report on 100,000 generated messages (not asserted)."""
        data = os.path.join(self.tmp, "queue-100k.jsonl")
        now = int(time.time())
        with open(data, "w") as f:
            for i in range(100000):
                q = ("deferred", "active", "incoming", "hold")[i % 4]
                rcpt = {"address": "user%d@d%d.example" % (i, i % 500)}
                if q == "deferred":
                    rcpt["delay_reason"] = ("host mx.d%d.example[192.0.2.%d] said: 450 4.2.0 "
                                            "greylisted, try again later" % (i % 500, i % 250))
                f.write(json.dumps({"queue_name": q, "queue_id": "%011X" % i,
                                    "arrival_time": now - i, "message_size": 2000 + i % 3000,
                                    "forced_expire": False, "sender": "s%d@example.org" % i,
                                    "recipients": [rcpt]}) + "\n")
        fake = os.path.join(self.tmp, "fake-postqueue")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\nexec cat %s\n" % data)
        os.chmod(fake, 0o755)
        cfg = self.config(postqueue_command=fake, maillog_file="")
        t0 = time.monotonic()
        doc, _ = self.report_json(cfg)
        elapsed = time.monotonic() - t0
        print("\nreport on a 100,000-message queue (%.1f MB of postqueue -j): %.2f s"
              % (os.path.getsize(data) / 1e6, elapsed), file=sys.stderr)
        self.assertEqual(sum(doc["queues"][q]["messages"] for q in QUEUES), 100000)
        self.assertEqual(doc["queues"]["hold"]["messages"], 25000)


JOURNAL_UNAVAILABLE = journald_unavailable() or dev_log_unavailable()


@unittest.skipIf(JOURNAL_UNAVAILABLE, "journal input not tested: %s" % JOURNAL_UNAVAILABLE)
class ReportJournalE2E(unittest.TestCase):
    """A real Postfix logging to the test's journald; the report reads that journal."""

    def setUp(self):
        self.jd = Journald()
        self.addCleanup(self.jd.stop)
        self.pf = PostfixInstance(journald=self.jd)
        self.pf.start()
        self.addCleanup(self.pf.stop)
        self.tmp = tempfile.mkdtemp(prefix="postsurge-report-journal-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.sent = 0

    def config(self):
        path = os.path.join(self.tmp, "postsurge.cf")
        with open(path, "w") as f:
            f.write("".join("%s = %s\n" % kv for kv in {
                "postfix_config_directory": self.pf.dir,
                "maillog_file": "journal:" + self.jd.directory,
                "state_directory": os.path.join(self.tmp, "state"),
                "http_listen": "inet:127.0.0.1:%d" % free_port(),
                "log_destination": "stderr",
                "node_name": "mx-test"}.items()))
        return path

    def send(self, n):
        """n messages to the sink, delivered and in the journal."""
        for _ in range(n):
            to = "j%d@%s" % (self.sent, self.pf.sink_domain)
            r = self.pf.send_swaks(to=to)
            self.assertEqual(r.returncode, 0, r.stdout)
            self.sent += 1
            self.assertTrue(self.pf.wait_maillog(r"to=<%s>.*status=sent" % to, 60),
                            self.pf.maillog())

    def delivered(self, cfg):
        r = subprocess.run([POSTSURGE, "-c", cfg, "report", "--json"], capture_output=True,
                           text=True, timeout=120)
        self.assertIn(r.returncode, (0, 1, 2, 3), r.stderr)
        return json.loads(r.stdout)["traffic"]["totals"]["delivered"]

    def test_each_delivery_counted_once_across_runs_and_rotation(self):
        cfg = self.config()
        # A second instance (syslog_name postfix-out) logs to the same journal: its
        # deliveries are not this instance's.
        out = PostfixInstance(journald=self.jd, syslog_name="postfix-out")
        out.start()
        self.addCleanup(out.stop)
        for i in range(2):
            self.assertEqual(out.send_swaks(to="o%d@%s" % (i, out.sink_domain)).returncode, 0)
        self.assertEqual(len(out.wait_maillog(r"status=sent", 60, count=2)), 2, out.maillog())
        self.send(2)
        self.assertEqual(self.delivered(cfg), 2)  # a first run reads the recent journal
        self.assertEqual(self.delivered(cfg), 0)
        self.send(1)
        self.jd.rotate()
        self.send(2)
        self.assertEqual(self.delivered(cfg), 3)
        self.jd.rotate()
        self.jd.vacuum()  # the file of the saved cursor's entry is gone
        self.assertEqual(self.delivered(cfg), 0)
        self.send(1)
        self.assertEqual(self.delivered(cfg), 1)
        self.assertEqual(self.delivered(cfg), 0)
        print("\n%d deliveries by a real Postfix through the journal, each counted once "
              "over 6 report runs and 2 rotations" % self.sent, file=sys.stderr)

    def test_journal_lines_arrive_in_order(self):
        p = Probe("tail", "journal:" + self.jd.directory, "--interval", "50",
                  "--syslog-name", "postfix")
        self.addCleanup(p.stop)
        self.assertTrue(p.wait(lambda ls: any(o.get("started") for o in ls)), "".join(p.err))
        self.send(3)
        self.jd.sync()
        # journalctl's view of the same entries (journal order), as "ident[pid]: message".
        r = self.jd.journalctl("-q", "-o", "short-iso", "--no-pager")
        want = [l.split(" ", 2)[2] for l in r.stdout.splitlines()
                if l.split(" ", 3)[2].startswith("postfix/")]
        want = want[next(i for i, l in enumerate(want) if "connect from" in l):]

        def got(ls):
            return [o["line"].split(" ", 2)[2] for o in ls if "line" in o]
        p.wait(lambda ls: len(got(ls)) >= len(want), 30)
        self.assertEqual(p.stop(), 0)
        lines = got(p.lines)
        # All of them, each once, in journal order (before them, at most Postfix's own
        # start-up lines).
        self.assertEqual(lines[-len(want):], want)
        self.assertFalse([l for l in lines[:-len(want)] if "connect from" in l], lines)
        # Each message's life in the order Postfix lived it.
        steps = ("client=", "message-id=", "from=<", "status=sent", "removed")
        ids = sorted({l.split(": ")[1] for l in lines if "status=sent" in l})
        self.assertEqual(len(ids), 3, lines)
        for qid in ids:
            pos = [next(i for i, l in enumerate(lines) if ": %s: " % qid in l and s in l)
                   for s in steps]
            self.assertEqual(pos, sorted(pos), (qid, lines))


if __name__ == "__main__":
    testmain.main()
