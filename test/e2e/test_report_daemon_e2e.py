"""End to end (issues 4 and 5): `postsurge report` against the REAL daemon, not a stand-in.
A real Postfix 3.7 instance and `postsurge serve` with http_listen on a free port and
postfix_config_directory pointing at the instance. Stress is forced with `postsurge
stress enter`: the report (text and --json) must show the node stressed with the
saturation its /status gives, one stress episode and the overrides applied since the
last report, and exit 1 (the `stressed` WARNING); after `stress exit` the next report
shows the episode's end and no new one. With a Redis store and two daemons (nodes a and
b) on the same Postfix, the report lists both nodes and flags the imbalance when only one
is stressed, both through the daemon and straight from the store's keys (no daemon on the
reporting host). Both daemons with overrides on, both forced into stress: the second refuses
(the first holds the config directory's lock) and neither runs a command for 20 s. Every process is stopped by PID. Needs root, postfix, redis-server.
Env: POSTSURGE (the binary), PYTHONPATH=test/pylib.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.request

from ports import free_port, tcp_listening, wait_for
from postfix_instance import PostfixInstance
from postsurge import Postsurge
from redis_server import RedisServer
import testmain


def proc_children_named(ppid, name):
    """PIDs of the children of ppid whose comm is name (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if comm == name and fields[0] != "Z" and int(fields[1]) == ppid:
            out.append(int(d))
    return out


class ReportDaemonE2E(unittest.TestCase):
    pf = None

    @classmethod
    def setUpClass(cls):
        cls.pf = PostfixInstance()
        cls.pf.start()

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()

    # --- helpers ---------------------------------------------------------------------

    def daemon(self, name, **extra):
        cfg = {
            "postfix_config_directory": self.pf.dir,
            "maillog_file": self.pf.maillog_path,
            "http_listen": "inet:127.0.0.1:%d" % free_port(),
            "monitor_interval": "200ms",
            "stress_min_interval": "0",
            "stress_exit_delay": "1s",
            "command_timeout": "60s",
            "node_name": name,
        }
        cfg.update({k: str(v) for k, v in extra.items()})
        ps = Postsurge(extra=cfg)
        self.addCleanup(ps.cleanup)
        ps.http_port = int(cfg["http_listen"].rsplit(":", 1)[1])
        self.assertTrue(ps.wait_log("override profile:", timeout=30), ps.log())
        self.assertTrue(wait_for(lambda: tcp_listening(ps.http_port), 15), ps.log())
        return ps

    @staticmethod
    def http_status(ps):
        with urllib.request.urlopen("http://127.0.0.1:%d/status" % ps.http_port,
                                    timeout=10) as r:
            return json.loads(r.read())

    def me(self, ps):
        r = ps.cli("status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["nodes"][0]

    def wait_overrides(self, ps, state):
        ok = wait_for(lambda: self.me(ps)["overrides_state"] == state, 90, 0.1)
        self.assertTrue(ok, "%s\n%s" % (self.me(ps), ps.log()))

    def wait_postfix_settled(self):
        """After a reload master restarts qmgr: wait for it, or the report (rightly) says
        qmgr is down."""
        pid = self.pf.master_pid()
        self.assertTrue(wait_for(lambda: proc_children_named(pid, "qmgr"), 60, 0.1))

    def report(self, cfg_path, *args):
        return subprocess.run([os.environ.get("POSTSURGE", "postsurge"), "-c", cfg_path,
                               "report", "--no-traffic", *args], capture_output=True,
                              text=True, timeout=120)

    def report_json(self, ps_or_cfg):
        if isinstance(ps_or_cfg, Postsurge):
            r = ps_or_cfg.cli("report", "--no-traffic", "--json", timeout=120)
        else:
            r = self.report(ps_or_cfg, "--json")
        self.assertIn(r.returncode, (0, 1, 2, 3), r.stdout + r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["exit_code"], r.returncode)
        return doc, r

    @staticmethod
    def node(doc, name):
        return next(n for n in doc["nodes"] if n["name"] == name)

    @staticmethod
    def codes(doc):
        return sorted(f["code"] for f in doc["findings"])

    # --- tests -----------------------------------------------------------------------

    def test_forced_episode_in_report_text_and_json(self):
        ps = self.daemon("a")
        state = os.path.join(ps.dir, "report-state.json")
        doc, r = self.report_json(ps)
        a = self.node(doc, "a")
        self.assertEqual((a["daemon_up"], a["stressed"]), (True, False), doc)
        self.assertEqual(self.codes(doc), [], doc["findings"])
        self.assertEqual(r.returncode, 0)

        r = ps.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_overrides(ps, "applied")
        self.wait_postfix_settled()
        sat = self.http_status(ps)["nodes"][0]["saturation"]
        self.assertIsInstance(sat, int)
        with open(state, "rb") as f:
            before = f.read()

        doc, r = self.report_json(ps)
        a = self.node(doc, "a")
        self.assertIs(a["stressed"], True, doc)
        self.assertEqual(a["saturation"], sat)
        self.assertEqual((a["stress_episodes"], a["overrides"]), (1, 1), a["events"])
        self.assertEqual((a["master_up"], a["qmgr_up"]), (True, True))
        kinds = [e["kind"] for e in a["events"]]
        self.assertEqual([k for k in kinds if k.startswith(("stress-", "overrides-"))],
                         ["stress-enter", "overrides-applied"])
        self.assertTrue(all(isinstance(e["time"], int) for e in a["events"]))
        self.assertEqual(self.codes(doc), ["stressed"], doc["findings"])
        self.assertEqual(doc["findings"][0]["subject"], "a")
        self.assertEqual((r.returncode, doc["status"]), (1, "WARNING"))
        self.assertEqual([s["name"] for s in a["services"]],
                         [s["name"] for s in self.http_status(ps)["nodes"][0]["services"]])

        # The same report as text (from the same starting state).
        with open(state, "wb") as f:
            f.write(before)
        r = ps.cli("report", "--no-traffic", timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertTrue(r.stdout.startswith("WARNING - "), r.stdout)
        self.assertIn("a is in stress mode (1 episode since the last report)", r.stdout)
        row = r"^  a +up +up +up +yes +%d%% +1 +1$" % sat
        self.assertRegex(r.stdout, re.compile(row, re.M))
        self.assertRegex(r.stdout, r"event .* ago: stress-enter ")
        self.assertRegex(r.stdout, r"event .* ago: overrides-applied ")

        # The same episode is old news for the next report.
        doc, r = self.report_json(ps)
        a = self.node(doc, "a")
        self.assertEqual((a["stressed"], a["stress_episodes"], a["overrides"]), (True, 0, 0))
        self.assertEqual(a["events"], [])
        self.assertEqual(r.returncode, 1)

        r = ps.cli("stress", "exit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_overrides(ps, "none")
        self.wait_postfix_settled()
        doc, r = self.report_json(ps)
        a = self.node(doc, "a")
        self.assertEqual((a["stressed"], a["stress_episodes"], a["overrides"]), (False, 0, 0))
        kinds = [e["kind"] for e in a["events"]]
        self.assertEqual([k for k in kinds if k.startswith(("stress-", "overrides-"))],
                         ["stress-exit", "overrides-restored"])
        self.assertEqual(self.codes(doc), [], doc["findings"])
        self.assertEqual((r.returncode, doc["status"]), (0, "OK"))

        # Without http_listen the control socket gives the same view.
        with open(ps.config_path) as f:
            text = f.read()
        ps.write_config(text=text.replace("http_listen = inet:127.0.0.1:%d" % ps.http_port,
                                          "http_listen = "))
        doc, r = self.report_json(ps)
        a = self.node(doc, "a")
        self.assertEqual((a["daemon_up"], a["stressed"], a["saturation"]), (True, False, sat))
        self.assertEqual(a["events"], [])

    def test_two_daemons_on_redis_imbalance(self):
        rs = RedisServer()
        self.addCleanup(rs.remove)
        a = self.daemon("a", store=rs.url, store_key_prefix="ps:")
        b = self.daemon("b", store=rs.url, store_key_prefix="ps:", stress_overrides="no")
        names = lambda ps: sorted(n["name"] for n in self.http_status(ps)["nodes"])
        self.assertTrue(wait_for(lambda: names(a) == ["a", "b"] and names(b) == ["a", "b"],
                                 30, 0.1), self.http_status(a))
        # Both idle: no imbalance.
        doc, r = self.report_json(a)
        self.assertEqual(sorted(n["name"] for n in doc["nodes"]), ["a", "b"])
        self.assertNotIn("imbalance", self.codes(doc))

        r = a.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_overrides(a, "applied")
        self.wait_postfix_settled()
        # b sees a stressed (through the store) before its report can.
        self.assertTrue(wait_for(lambda: any(n["name"] == "a" and n["stress"]
                                             for n in self.http_status(b)["nodes"]), 30, 0.1))

        for ps in (a, b):
            doc, r = self.report_json(ps)
            self.assertEqual(sorted(n["name"] for n in doc["nodes"]), ["a", "b"], doc)
            na, nb = self.node(doc, "a"), self.node(doc, "b")
            self.assertEqual((na["stressed"], nb["stressed"]), (True, False))
            self.assertEqual((na["stress_episodes"], nb["stress_episodes"]), (1, 0))
            self.assertEqual(na["overrides"], 1)
            self.assertTrue(nb["daemon_up"] and na["daemon_up"])
            imb = [f for f in doc["findings"] if f["code"] == "imbalance"]
            self.assertEqual([f["subject"] for f in imb], ["a"], doc["findings"])
            self.assertEqual(self.codes(doc), ["imbalance", "stressed"])
            self.assertEqual(r.returncode, 1)

        # A host without a daemon reads the same from the store's keys.
        tmp = tempfile.mkdtemp(prefix="postsurge-report-c-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cfg = os.path.join(tmp, "postsurge.cf")
        with open(cfg, "w") as f:
            f.write("postfix_config_directory = %s\nstate_directory = %s\nnode_name = c\n"
                    "http_listen = inet:127.0.0.1:%d\nstore = %s\nstore_key_prefix = ps:\n"
                    "log_destination = stderr\n" % (self.pf.dir, tmp, free_port(), rs.url))
        doc, r = self.report_json(cfg)
        self.assertEqual(sorted(n["name"] for n in doc["nodes"]), ["a", "b", "c"], doc)
        na, nb, nc = (self.node(doc, n) for n in "abc")
        self.assertEqual((na["stressed"], nb["stressed"]), (True, False))
        self.assertEqual((na["stress_episodes"], na["overrides"]), (1, 1))
        self.assertIs(nc["daemon_up"], False)
        self.assertEqual([f["subject"] for f in doc["findings"] if f["code"] == "imbalance"],
                         ["a"])
        self.assertEqual(self.codes(doc), ["daemon_down", "imbalance", "stressed"])

        r = a.cli("stress", "exit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_overrides(a, "none")
        self.wait_postfix_settled()
        self.assertTrue(wait_for(lambda: not any(n["stress"] for n in self.http_status(b)["nodes"]),
                                 30, 0.1))
        doc, r = self.report_json(b)
        self.assertEqual(self.codes(doc), [], doc["findings"])
        self.assertEqual(self.node(doc, "a")["stress_episodes"], 0)


    def test_two_daemons_with_overrides_on_one_postfix_bounded_commands(self):
        # A mistake an administrator can make: both daemons with stress_overrides on
        # against one Postfix, both forced into stress. The second used to see the first
        # one's overrides "already in force" and start the same empty apply after every
        # job end (commands.run in the thousands, overrides_state stuck at "applying").
        # Now the first holds a lock on the config directory while its overrides are in
        # force: the second refuses (event, error in status) and runs nothing.
        rs = RedisServer()
        self.addCleanup(rs.remove)
        main_cf, master_cf = (os.path.join(self.pf.dir, n) for n in ("main.cf", "master.cf"))
        with open(main_cf, "rb") as f, open(master_cf, "rb") as g:
            main0, master0 = f.read(), g.read()
        a = self.daemon("a", store=rs.url, store_key_prefix="pb:")
        b = self.daemon("b", store=rs.url, store_key_prefix="pb:")
        self.assertEqual(a.cli("stress", "enter").returncode, 0)
        self.wait_overrides(a, "applied")
        self.wait_postfix_settled()
        self.assertEqual(b.cli("stress", "enter").returncode, 0)

        def b_events():
            r = b.cli("events", "--json")
            return [e["kind"] for e in json.loads(r.stdout)["events"] if e["node"] == "b"]
        self.assertTrue(wait_for(lambda: "overrides-refused" in b_events(), 30, 0.2),
                        b.log())
        self.assertIn("holds the lock on %s" % self.pf.dir, self.me(b)["error"])
        # 20 s of forced stress on both: not one more command on either node.
        runs = {ps.dir: self.me(ps)["commands"]["run"] for ps in (a, b)}
        for _ in range(20):
            for ps in (a, b):
                m = self.me(ps)
                self.assertTrue(m["stress"], m)
                self.assertEqual(m["commands"]["run"], runs[ps.dir], "%s\n%s" % (m, ps.log()))
            time.sleep(1)
        self.assertEqual(self.me(a)["overrides_state"], "applied")
        self.assertEqual(self.me(b)["overrides_state"], "none")

        self.assertEqual(a.cli("stress", "exit").returncode, 0)
        self.wait_overrides(a, "none")
        self.wait_postfix_settled()
        with open(main_cf, "rb") as f, open(master_cf, "rb") as g:
            self.assertEqual((f.read(), g.read()), (main0, master0))
        self.assertEqual(b.cli("stress", "exit").returncode, 0)
        # One episode of a: postconf -e, postconf -P, reload; then the restore's reload.
        running = [ln for ln in a.log().splitlines() if "running: " in ln]
        self.assertLessEqual(len(running), 6, "\n".join(running))
        self.assertEqual([ln for ln in b.log().splitlines() if "running: " in ln], [])
        m = self.me(a)["commands"]
        self.assertEqual((m["applies"], m["restores"], m["failed"]), (1, 1, 0), m)
        self.assertLessEqual(m["run"], 20, m)
        m = self.me(b)["commands"]
        self.assertEqual((m["applies"], m["restores"], m["failed"]), (0, 0, 0), m)
        self.assertLessEqual(m["run"], 5, m)

if __name__ == "__main__":
    testmain.main()
