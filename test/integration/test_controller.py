"""Integration tests of the overload controller in `postsurge serve` without a running
Postfix: a Postfix config directory (main.cf, master.cf) that the real postconf reads and
edits, a fake `postfix` (postfix_command) that records reloads, stress forced with
`postsurge stress enter|exit`. Covers the journal written before the first change, an
unwritable journal (nothing applied, error in status), failing and hanging commands
(logged, timed out, Postfix config left as it was), dry run, `status --json` and
`events`, the offline `restore`, attack flags from the mail log, and two daemons on one
Redis (cluster status, imbalance, stress_cluster_quorum), and the idle tick (monitor = no)
through a Redis outage. "Nothing happened" is checked after the controller has evaluated
a number of samples (`samples` in status), never after a fixed sleep.
"""
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest

import urllib.request

from ports import free_port, tcp_listening, wait_for
from postsurge import Postsurge, request
from redis_server import RedisServer
import testmain

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"

MAIN_CF = """# a hand-written main.cf: comments and layout must survive
compatibility_level = 3.6
queue_directory = {d}/queue
smtpd_soft_error_limit   =   7
smtpd_recipient_restrictions =
    permit_mynetworks,
    reject_unauth_destination
"""
MASTER_CF = """# master.cf
smtp      inet  n       -       n       -       4       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
"""


def read_bytes(p):
    with open(p, "rb") as f:
        return f.read()


def write_script(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)


class ControllerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="postsurge-ctl-")
        # serve drops to its unprivileged user: postconf runs as that user read here.
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.pfdir = os.path.join(self.tmp, "postfix")
        os.mkdir(self.pfdir)
        os.mkdir(os.path.join(self.pfdir, "queue"))
        self.main = os.path.join(self.pfdir, "main.cf")
        self.master = os.path.join(self.pfdir, "master.cf")
        with open(self.main, "w") as f:
            f.write(MAIN_CF.format(d=self.pfdir))
        with open(self.master, "w") as f:
            f.write(MASTER_CF)
        os.chmod(self.main, 0o644)
        # postconf stalls ~2 s on a main.cf younger than a few seconds: date them back.
        past = time.time() - 60
        os.utime(self.main, (past, past))
        os.utime(self.master, (past, past))
        self.main0, self.master0 = read_bytes(self.main), read_bytes(self.master)
        self.reloads = os.path.join(self.tmp, "reloads")
        self.fake_postfix = os.path.join(self.tmp, "postfix.sh")
        write_script(self.fake_postfix, 'echo "$@" >> %s\n' % self.reloads)
        self.maillog = os.path.join(self.tmp, "maillog")
        open(self.maillog, "w").close()

    def daemon(self, tmpdir=None, **extra):
        cfg = {
            "postfix_config_directory": self.pfdir,
            "postfix_command": self.fake_postfix,
            "postconf_command": POSTCONF,
            "maillog_file": self.maillog,
            "http_listen": "",
            "monitor_interval": "200ms",
            "stress_min_interval": "0",
            "stress_exit_delay": "1s",
            "command_timeout": "20s",
            "node_name": "n1",
        }
        cfg.update({k: None if v is None else str(v) for k, v in extra.items()})
        ps = Postsurge(extra=cfg, tmpdir=tmpdir)
        self.addCleanup(ps.cleanup)
        return ps

    def status(self, ps):
        r = ps.cli("status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def me(self, ps):
        return self.status(ps)["nodes"][0]

    def events(self, ps, *args):
        r = ps.cli("events", "--json", *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return list(reversed(json.loads(r.stdout)["events"]))

    def wait_state(self, ps, state, timeout=60):
        ok = wait_for(lambda: self.me(ps)["overrides_state"] == state, timeout, 0.1)
        self.assertTrue(ok, "%s\n%s" % (self.me(ps), ps.log()))

    def wait_init(self, ps):
        self.assertTrue(ps.wait_log("override profile:", timeout=30), ps.log())

    def test_controller_forced_episode_journal_first_exact_restore(self):
        ps = self.daemon()
        self.wait_init(ps)
        r = ps.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_state(ps, "applied")
        me = self.me(ps)
        self.assertTrue(me["stress"])
        self.assertIn("smtpd_soft_error_limit=3", me["overrides"])
        self.assertIn("smtp/inet/stress=yes", me["overrides"])
        self.assertIn("smtpd_soft_error_limit = 3", read_bytes(self.main).decode())
        self.assertTrue(os.path.exists(os.path.join(ps.dir, "journal.json")))
        # The new files were made on a scratch copy; the journal (with the bytes before
        # and after) was on disk before the first of them was put in place.
        log = ps.log()
        self.assertLess(log.index("editing a copy: %s -c " % POSTCONF),
                        log.index("journal written"))
        self.assertNotIn("editing a copy: %s -c %s " % (POSTCONF, self.pfdir), log)
        self.assertLess(log.index("journal written"), log.index("installed: %s" % self.main))
        self.assertLess(log.index("installed: %s" % self.main),
                        log.index("running: %s -c" % self.fake_postfix))
        with open(self.reloads) as f:
            self.assertEqual(f.read(), "-c %s reload\n" % self.pfdir)
        r = ps.cli("stress", "exit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertEqual(stat.S_IMODE(os.stat(self.main).st_mode), 0o644)
        self.assertFalse(os.path.exists(os.path.join(ps.dir, "journal.json")))
        kinds = [e["kind"] for e in self.events(ps)]
        self.assertEqual([k for k in kinds if k.startswith(("stress-", "overrides-"))],
                         ["stress-enter", "overrides-applied", "stress-exit",
                          "overrides-restored"])
        # --since in the future: nothing; text output works too.
        self.assertEqual(self.events(ps, "--since", "4000000000"), [])
        r = ps.cli("events")
        self.assertIn("n1 overrides-restored:", r.stdout)
        r = ps.cli("status")
        self.assertIn("node n1 (this node): stress no", r.stdout)

    def test_controller_profile_reload(self):
        # SIGHUP with a new stress_main_cf: taken while nothing is in force, refused (old
        # one stays) when a name is off the allowed list, kept for later while overrides
        # are in force.
        ps = self.daemon()
        self.wait_init(ps)
        with open(ps.config_path) as f:
            base = f.read()
        # A SIGHUP during the start-up job (journal check still running under memcheck)
        # is taken when the job ends.

        def reload_with(main_cf):
            ps.write_config(text=base + "stress_main_cf = %s\n" % main_cf)
            return ps.reload()
        mark = reload_with("smtpd_soft_error_limit=2 smtpd_error_sleep_time=1s")
        self.assertTrue(ps.wait_log("reload: override profile: ", mark, 10), ps.log())
        # A name off the list of settings a profile may change: the reload is refused
        # as a configuration error and the profile above stays.
        mark = reload_with("no_such_parameter_xyz=1")
        self.assertTrue(ps.wait_log("keeping the current configuration", mark, 10), ps.log())
        self.assertIn("no_such_parameter_xyz: not a setting stress profiles may change",
                      ps.log()[mark:])
        # The file back as the daemon runs it, so the CLI below can read it.
        ps.write_config(text=base + "stress_main_cf = %s\n"
                        % "smtpd_soft_error_limit=2 smtpd_error_sleep_time=1s")
        ps.cli("stress", "enter")
        self.wait_state(ps, "applied")
        me = self.me(ps)
        self.assertIn("smtpd_soft_error_limit=2", me["overrides"])
        self.assertIn("smtpd_error_sleep_time=1s", me["overrides"])
        self.assertNotIn("smtpd_client_connection_count_limit=10", me["overrides"])
        text = read_bytes(self.main).decode()
        self.assertIn("smtpd_soft_error_limit = 2", text)
        self.assertNotIn("smtpd_client_connection_count_limit", text)
        # In force: a new profile waits; the restore undoes exactly what was applied, and
        # the new profile is taken after it.
        mark = reload_with("smtpd_soft_error_limit=1")
        self.assertTrue(ps.wait_log("taken once they are restored", mark, 10), ps.log())
        self.assertNotIn("reload: override profile: ", ps.log()[mark:])
        ps.cli("stress", "exit")
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertTrue(ps.wait_log("reload: override profile: ", mark, 10), ps.log())
        ps.cli("stress", "enter")
        self.wait_state(ps, "applied")
        self.assertIn("smtpd_soft_error_limit = 1", read_bytes(self.main).decode())
        ps.cli("stress", "exit")
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)

    def test_controller_profile_reload_without_postconf(self):
        # postconf failed at start: the names to check a new profile against are unknown,
        # so a changed profile is logged as needing a restart and nothing is applied.
        bad = os.path.join(self.tmp, "postconf-fails.sh")
        write_script(bad, 'echo "postconf: fatal: simulated" >&2\nexit 1\n')
        ps = self.daemon(postconf_command=bad)
        self.assertTrue(wait_for(lambda: "simulated" in self.me(ps)["error"], 30),
                        "%s\n%s" % (self.me(ps), ps.log()))
        with open(ps.config_path) as f:
            text = f.read()
        ps.write_config(text=text + "stress_main_cf = smtpd_soft_error_limit=2\n")
        mark = ps.reload()
        self.assertTrue(ps.wait_log("takes effect at the next restart", mark, 10), ps.log())
        self.assertNotIn("reload: override profile: ", ps.log()[mark:])

    def test_controller_status_json_shape(self):
        port = free_port()
        ps = self.daemon(http_listen="inet:127.0.0.1:%d" % port)
        self.wait_init(ps)
        # The same state on /status and /metrics (server/http.c).
        self.assertTrue(wait_for(lambda: tcp_listening(port), 10))
        with urllib.request.urlopen("http://127.0.0.1:%d/status" % port, timeout=10) as r:
            hs = json.loads(r.read())
        self.assertIs(hs["stress"], False)
        self.assertEqual(hs["nodes"][0]["name"], "n1")
        def metrics():
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                        timeout=10) as r:
                return r.read().decode()
        self.assertTrue(wait_for(lambda: 'postsurge_service_limit{service="smtp/inet"} 4'
                                 in metrics(), 10), metrics())
        self.assertIn("\npostsurge_stress 0\n", metrics())
        # The samples counter (what tests wait for): in /status, in status --json, and a
        # counter family on /metrics, all growing with the monitor's samples.
        self.assertIsInstance(hs["samples"], int)
        self.assertIn("\n# TYPE postsurge_controller_samples_total counter\n", metrics())
        self.assertIn("\n# HELP postsurge_controller_samples_total ", metrics())
        n0 = ps.samples()
        ps.wait_samples(3)
        self.assertGreaterEqual(self.me(ps)["samples"], n0 + 3)
        m = [ln for ln in metrics().splitlines()
             if ln.startswith("postsurge_controller_samples_total ")]
        self.assertEqual(len(m), 1, metrics())
        self.assertGreaterEqual(float(m[0].split()[1]), n0 + 3)
        st = self.status(ps)
        self.assertEqual(st["node"], "n1")
        self.assertIsInstance(st["nodes"], list)
        n = st["nodes"][0]
        self.assertEqual(n["name"], "n1")
        self.assertIs(n["stress"], False)
        self.assertIsInstance(n["saturation"], int)
        self.assertIsInstance(n["services"], list)
        self.assertIsInstance(n["overrides"], list)
        self.assertIs(st["imbalance"], False)
        # Without a running master, the monitor still lists master.cf's smtpd service.
        wait_for(lambda: self.me(ps)["services"], 10)
        self.assertEqual([s["name"] for s in self.me(ps)["services"]], ["smtp/inet"])
        self.assertEqual(self.me(ps)["services"][0]["limit"], 4)

    def test_controller_unwritable_journal_applies_nothing(self):
        ps = self.daemon()
        self.wait_init(ps)
        # The journal's temporary file cannot be created: a directory is in its place.
        os.mkdir(os.path.join(ps.dir, "journal.json.postsurge-tmp"))
        ps.cli("stress", "enter")
        self.assertTrue(wait_for(lambda: "journal" in self.me(ps)["error"], 30), ps.log())
        me = self.me(ps)
        self.assertTrue(me["stress"])
        self.assertEqual(me["overrides"], [])
        self.assertEqual(me["overrides_state"], "none")
        self.assertNotIn("installed:", ps.log())  # only the scratch copy was edited
        self.assertFalse(os.path.exists(self.reloads))
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertIn("journal-error", [e["kind"] for e in self.events(ps)])

    def test_controller_failing_postconf_changes_nothing(self):
        wrapper = os.path.join(self.tmp, "postconf.sh")
        # postconf that fails every edit (-P) after the main.cf edit went through: the
        # edits are made on a scratch copy, so nothing of the instance changed.
        write_script(wrapper, 'for a in "$@"; do [ "$a" = -P ] && [ $# -gt 3 ] && '
                              '{ echo "postconf: fatal: simulated failure" >&2; exit 1; }; done\n'
                              'exec %s "$@"\n' % POSTCONF)
        ps = self.daemon(postconf_command=wrapper)
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.assertTrue(ps.wait_log("event command-failed", timeout=60), ps.log())
        self.assertIn("simulated failure", self.me(ps)["error"] + ps.log())
        self.assertIn("nothing was changed", ps.log())
        self.assertNotIn("installed:", ps.log())
        self.assertNotIn("overrides-restored", [e["kind"] for e in self.events(ps)])
        self.assertFalse(os.path.exists(os.path.join(ps.dir, "journal.json")))
        self.assertFalse(os.path.exists(self.reloads))
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertEqual(self.me(ps)["overrides"], [])
        self.assertGreaterEqual(self.me(ps)["commands"]["failed"], 1)

    def test_controller_failing_reload_rolls_back(self):
        # The new files are in place and `postfix reload` fails (once): the apply is
        # rolled back from the journal, byte for byte, and the restore's reload works.
        failing = os.path.join(self.tmp, "postfix-fails-once.sh")
        flag = os.path.join(self.tmp, "failed-once")
        write_script(failing, '[ -e %s ] || { touch %s; echo "postfix: fatal: simulated '
                              'failure" >&2; exit 1; }\necho "$@" >> %s\n'
                     % (flag, flag, self.reloads))
        ps = self.daemon(postfix_command=failing)
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.assertTrue(ps.wait_log("event overrides-restored", timeout=60), ps.log())
        self.assertIn("simulated failure", ps.log())
        self.assertIn("rolling back", ps.log())
        kinds = [e["kind"] for e in self.events(ps)]
        self.assertIn("command-failed", kinds)
        self.assertIn("(main.cf byte-exact, master.cf byte-exact)", ps.log())
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertFalse(os.path.exists(os.path.join(ps.dir, "journal.json")))
        self.assertEqual(self.me(ps)["overrides"], [])
        self.assertGreaterEqual(self.me(ps)["commands"]["failed"], 1)
        with open(self.reloads) as f:
            self.assertEqual(f.read(), "-c %s reload\n" % self.pfdir)

    def test_controller_hanging_reload_times_out_journal_consistent(self):
        hang = os.path.join(self.tmp, "postfix-hang.sh")
        write_script(hang, "exec sleep 60\n")
        ps = self.daemon(postfix_command=hang, command_timeout="5s")
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.assertTrue(ps.wait_log("timed out", timeout=60), ps.log())
        # The apply is rolled back: the files get their bytes back, then the reload of the
        # restore hangs too, so the journal stays for a retry.
        self.assertTrue(ps.wait_log("event restore-failed", timeout=60), ps.log())
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertTrue(os.path.exists(os.path.join(ps.dir, "journal.json")))
        me = self.me(ps)
        self.assertIn("timed out", me["error"])
        self.assertTrue(me["journal"])

    def test_controller_dry_run_logs_commands_changes_nothing(self):
        ps = self.daemon(stress_dry_run="yes")
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.assertTrue(ps.wait_log("dry run: would run: postconf -c %s -e" % self.pfdir, 30),
                        ps.log())
        self.assertIn("dry run: would run: postconf -c %s -P smtp/inet/stress=yes" % self.pfdir,
                      ps.log())
        self.assertIn("dry run: would run: postfix -c %s reload" % self.pfdir, ps.log())
        self.wait_state(ps, "dry-run")
        ps.cli("stress", "exit")
        self.assertTrue(ps.wait_log("dry run: would restore", 30), ps.log())
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertFalse(os.path.exists(os.path.join(ps.dir, "journal.json")))
        self.assertFalse(os.path.exists(self.reloads))

    def test_controller_overrides_off_by_default_logs_only(self):
        # The shipped default: stress is detected, evented and shown, and the profile is
        # only logged, as a dry run does; Postfix is never changed or reloaded.
        ps = self.daemon(stress_overrides=None)
        r = ps.cli("config", "stress_overrides")
        self.assertEqual(r.stdout, "stress_overrides = no\n", r.stderr)
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.assertTrue(ps.wait_log("dry run: would run: postconf -c %s -e" % self.pfdir, 30),
                        ps.log())
        self.wait_state(ps, "dry-run")
        me = self.me(ps)
        self.assertTrue(me["stress"], me)
        kinds = [e["kind"] for e in self.events(ps)]
        self.assertIn("stress-enter", kinds)
        msgs = [e["text"] for e in self.events(ps) if e["kind"] == "overrides-dry-run"]
        self.assertTrue(msgs and msgs[0].startswith("stress_overrides = no: "), msgs)
        ps.cli("stress", "exit")
        self.assertTrue(ps.wait_log("dry run: would restore", 30), ps.log())
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertFalse(os.path.exists(os.path.join(ps.dir, "journal.json")))
        self.assertFalse(os.path.exists(self.reloads))

    def test_controller_offline_restore_and_crash_restore(self):
        ps = self.daemon()
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.wait_state(ps, "applied")
        ps.signal(signal.SIGKILL)
        ps.proc.wait(10)
        ps.logf.close()
        self.assertNotEqual(read_bytes(self.main), self.main0)
        r = ps.cli("status")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no daemon", r.stderr)
        r = ps.cli("restore")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("restored", r.stdout)
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        r = ps.cli("restore")
        self.assertEqual(r.stdout.strip(), "nothing to restore")

    def commands_run(self, ps):
        return self.me(ps)["commands"]["run"]

    def assert_commands_stay(self, ps, samples):
        """commands.run does not move while the controller evaluates `samples` monitor
        samples with the node in stress (no apply started again and again). Each sample
        ends with the reconcile that would start a job, so the wait is for the samples
        (ps.wait_samples fails the test if they stop coming), not for a time."""
        me0 = self.me(ps)
        self.assertTrue(me0["stress"], me0)
        ps.wait_samples(samples)
        me = self.me(ps)
        self.assertTrue(me["stress"], me)
        self.assertEqual(me["overrides_state"], me0["overrides_state"], me)
        self.assertEqual(me["commands"]["run"], me0["commands"]["run"],
                         "%s\n%s" % (me, ps.log()[-4000:]))

    def test_controller_profile_already_in_force_no_apply_loop(self):
        # A daemon killed in stress leaves its overrides; a new one (its own state
        # directory, so no journal) finds every setting already in force. It used to
        # start the same empty apply after every job end: postconf -n and -P over and
        # over (commands.run in the thousands, overrides_state stuck at "applying").
        first = self.daemon()
        self.wait_init(first)
        first.cli("stress", "enter")
        self.wait_state(first, "applied")
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
        first.logf.close()
        main1, master1 = read_bytes(self.main), read_bytes(self.master)
        self.assertNotEqual(main1, self.main0)

        ps = self.daemon(node_name="n2")
        self.wait_init(ps)
        r = ps.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_state(ps, "already-in-force")
        self.assert_commands_stay(ps, 25)
        kinds = [e["kind"] for e in self.events(ps)]
        self.assertEqual(kinds.count("overrides-already-in-force"), 1, kinds)
        self.assertNotIn("overrides-applied", kinds)
        r = ps.cli("stress", "exit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_state(ps, "none")
        me = self.me(ps)
        self.assertEqual((me["commands"]["applies"], me["commands"]["restores"]), (0, 0), me)
        # Nothing of this daemon's to undo: the first one's overrides stay for its journal.
        self.assertEqual((read_bytes(self.main), read_bytes(self.master)), (main1, master1))
        self.assertFalse(os.path.exists(os.path.join(ps.dir, "journal.json")))
        # A new episode tries once more, and once only.
        ps.cli("stress", "enter")
        self.assertTrue(wait_for(lambda: [e["kind"] for e in self.events(ps)].count(
            "overrides-already-in-force") == 2, 60, 0.1), self.events(ps))
        self.assert_commands_stay(ps, 10)

    def test_controller_second_daemon_on_same_postfix_refused(self):
        # An administrator points two daemons (overrides on both) at one Postfix. The
        # second would journal the first one's overrides as "prior state" and put them
        # back when it restores; it must refuse while the first has overrides in force.
        a = self.daemon()
        b = self.daemon(node_name="n2")
        self.wait_init(a)
        self.wait_init(b)
        a.cli("stress", "enter")
        self.wait_state(a, "applied")
        r = b.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: "overrides-refused" in
                                 [e["kind"] for e in self.events(b)], 30, 0.1), b.log())
        self.assertIn("holds the lock on %s" % self.pfdir, self.me(b)["error"])
        self.assert_commands_stay(b, 25)
        self.assertEqual(self.me(b)["overrides_state"], "none")
        self.assertFalse(os.path.exists(os.path.join(b.dir, "journal.json")))
        a.cli("stress", "exit")
        self.wait_state(a, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        # The lock went with a's overrides: b's next episode applies and restores.
        b.cli("stress", "exit")
        b.cli("stress", "enter")
        self.wait_state(b, "applied")
        b.cli("stress", "exit")
        self.wait_state(b, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)

    def test_controller_user_root_in_process_episode(self):
        # user = root: no privileged helper, the controller does it all in process. The
        # journal read at start used to call itself (stack overflow unoptimised; at -O2 the
        # compiler dropped the branch, so a journal a crash left was never read).
        ps = self.daemon(user="root")
        self.wait_init(ps)
        self.assertTrue(wait_for(lambda: self.me(ps)["privileges"] == "root", 10), ps.log())
        ps.cli("stress", "enter")
        self.wait_state(ps, "applied")
        self.assertTrue(os.path.exists(os.path.join(ps.dir, "journal.json")))
        ps.signal(signal.SIGKILL)
        ps.proc.wait(10)
        self.assertNotEqual(read_bytes(self.main), self.main0)
        ps.start()
        self.assertTrue(ps.wait_log("event journal-found", timeout=30), ps.log())
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        ps.cli("stress", "enter")
        self.wait_state(ps, "applied")
        ps.cli("stress", "exit")
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertTrue(ps.running(), ps.log())

    def test_controller_restore_conflict_admin_wins(self):
        ps = self.daemon()
        self.wait_init(ps)
        ps.cli("stress", "enter")
        self.wait_state(ps, "applied")
        # An administrator edits a setting the profile touched.
        import subprocess
        subprocess.run([POSTCONF, "-c", self.pfdir, "-e", "smtpd_soft_error_limit=5"],
                       check=True)
        r = ps.cli("restore")
        self.assertEqual(r.returncode, 0, r.stderr)
        ev = [e for e in self.events(ps) if e["kind"] == "restore-conflict"]
        self.assertEqual(len(ev), 1, self.events(ps))
        self.assertEqual(ev[0]["setting"], "smtpd_soft_error_limit")
        self.assertEqual(ev[0]["current"], "5")
        out = subprocess.run([POSTCONF, "-c", self.pfdir, "-n"], capture_output=True,
                             text=True).stdout
        self.assertIn("smtpd_soft_error_limit = 5", out)
        self.assertNotIn("smtpd_client_connection_count_limit", out)
        self.assertEqual(read_bytes(self.master), self.master0)

    def test_controller_attack_flag_and_hangup_in_stress(self):
        ps = self.daemon(attack_unknown_user_limit=3, limit_exempt_networks="192.0.2.10")
        self.wait_init(ps)
        line = ("Nov 23 03:33:29 mx postfix/smtpd[6826]: NOQUEUE: reject: RCPT from "
                "unknown[{a}]: 550 5.1.1 <u{i}@example.com>: Recipient address rejected: "
                "User unknown in local recipient table; from=<s@example.org> "
                "to=<u{i}@example.com> proto=ESMTP helo=<x>\n")
        with open(self.maillog, "a") as f:
            for i in range(4):
                f.write(line.format(a="192.0.2.9", i=i))
                f.write(line.format(a="192.0.2.10", i=i))
        self.assertTrue(ps.wait_log("event attack-flagged", timeout=30), ps.log())
        flagged = [e for e in self.events(ps) if e["kind"] == "attack-flagged"]
        self.assertEqual([e["client"] for e in flagged], ["192.0.2.9"])
        with ps.client() as c:
            self.assertEqual(c.ask(request(client_address="192.0.2.9")), "DUNNO")
        ps.cli("stress", "enter")
        with ps.client() as c:
            self.assertTrue(c.ask(request(client_address="192.0.2.9")).startswith("421 4.7.0"))
            self.assertEqual(c.ask(request(client_address="192.0.2.10")), "DUNNO")
            self.assertEqual(c.ask(request(client_address="192.0.2.11")), "DUNNO")

    SASL_FAIL = ("Dec  2 09:58:09 mx postfix/submission/smtpd[4711]: warning: "
                 "unknown[{a}]: SASL PLAIN authentication failed: {why}, "
                 "sasl_username=u{i}@postsurge.test\n")

    def test_controller_auth_flag_answers_without_stress(self):
        # Postfix's wording (smtpd_sasl_glue.c); the lost-Dovecot form (454, the server's
        # fault) and an exempt network never flag; a client under the limit is not flagged.
        ps = self.daemon(attack_auth_failure_limit=3, limit_exempt_networks="192.0.2.10")
        self.wait_init(ps)
        with open(self.maillog, "a") as f:
            for i in range(3):
                f.write(self.SASL_FAIL.format(a="192.0.2.20", i=i, why="UGFzc3dvcmQ6"))
                f.write(self.SASL_FAIL.format(a="192.0.2.10", i=i, why="UGFzc3dvcmQ6"))
                f.write(self.SASL_FAIL.format(
                    a="192.0.2.21", i=i, why="Connection lost to authentication server"))
            f.write(self.SASL_FAIL.format(a="192.0.2.22", i=0, why="(reason unavailable)"))
            f.write("Dec  2 09:58:10 mx postfix/smtpd[4712]: warning: unknown[192.0.2.22]: "
                    "SASL LOGIN authentication failed: authentication failure\n")
        self.assertTrue(ps.wait_log("event attack-flagged", timeout=30), ps.log())
        flagged = [e for e in self.events(ps) if e["kind"] == "attack-flagged"]
        self.assertEqual([(e["client"], e["reason"], e["count"]) for e in flagged],
                         [("192.0.2.20", "auth-failures", 3)], flagged)
        self.assertIn("3 SASL authentication failures within 600 s", flagged[0]["text"])
        # attack_auth_mode = always (the default): answered at once, not only in stress;
        # a 421 makes smtpd hang up, at CONNECT with smtpd_delay_reject = no.
        with ps.client() as c:
            self.assertTrue(c.ask(request(client_address="192.0.2.20",
                                          protocol_state="CONNECT")).startswith("421 4.7.0"))
            for a in ("192.0.2.10", "192.0.2.21", "192.0.2.22", "192.0.2.23"):
                self.assertEqual(c.ask(request(client_address=a)), "DUNNO", a)
        with open(ps.config_path) as f:
            base = f.read()

        def reload_with(mode):
            ps.write_config(text=base + "attack_auth_mode = %s\n" % mode)
            self.assertTrue(ps.wait_log("configuration reloaded", ps.reload(), 10), ps.log())
        # stress: as the reject flags, only while the node is stressed.
        reload_with("stress")
        with ps.client() as c:
            self.assertEqual(c.ask(request(client_address="192.0.2.20")), "DUNNO")
        ps.cli("stress", "enter")
        with ps.client() as c:
            self.assertTrue(c.ask(request(client_address="192.0.2.20")).startswith("421 4.7.0"))
        # off: flagged and logged, never answered.
        reload_with("off")
        with ps.client() as c:
            self.assertEqual(c.ask(request(client_address="192.0.2.20")), "DUNNO")

    def test_controller_auth_flags_from_shared_logs(self):
        # Every SASL failure line of the shared real logs, fed at once: the clients
        # flagged are those the lines name at least attack_auth_failure_limit times
        # (counted here with a regex of Postfix's format, the lost-server form left out).
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                           "shared", "real-logs", "maillog")
        if not os.path.isdir(src):
            self.skipTest("../shared/real-logs/maillog is absent")
        rx = re.compile(r" warning: [^\[ ]*\[([^\] ]+)\](?::\d+)?: SASL \S+ authentication "
                        r"failed:(?! Connection lost to authentication server)")
        lines, count = [], {}
        for name in sorted(os.listdir(src)):
            if not name.endswith((".log", ".txt")):
                continue
            with open(os.path.join(src, name), errors="replace") as f:
                for line in f:
                    m = rx.search(line)
                    if m:
                        lines.append(line if line.endswith("\n") else line + "\n")
                        count[m.group(1)] = count.get(m.group(1), 0) + 1
        want = sorted(a for a, n in count.items() if n >= 3)
        if not want:
            self.skipTest("no client with 3 SASL failures in ../shared/real-logs")
        ps = self.daemon(attack_auth_failure_limit=3)
        self.wait_init(ps)
        with open(self.maillog, "a") as f:
            f.writelines(lines)

        def flagged():
            return sorted(e["client"] for e in self.events(ps) if e["kind"] == "attack-flagged")
        wait_for(lambda: len(flagged()) >= len(want), 30, 0.2)
        time.sleep(1)  # two more monitor ticks: nothing else gets flagged
        self.assertEqual(flagged(), want, "%d lines, counts %s" % (len(lines), count))
        print("\n%d SASL failure lines of the shared logs, %d clients, flagged: %s"
              % (len(lines), len(count), ", ".join(want)))
        with ps.client() as c:
            for a in want:
                self.assertTrue(c.ask(request(client_address=a)).startswith("421 4.7.0"), a)
            for a in set(count) - set(want):
                self.assertEqual(c.ask(request(client_address=a)), "DUNNO", a)


class ClusterTest(unittest.TestCase):
    def setUp(self):
        self.redis = RedisServer()
        self.addCleanup(self.redis.remove)

    def node(self, name, quorum, **extra):
        tmp = tempfile.mkdtemp(prefix="postsurge-node-")
        os.chmod(tmp, 0o755)
        self.addCleanup(shutil.rmtree, tmp, True)
        pfdir = os.path.join(tmp, "postfix")
        os.mkdir(pfdir)
        with open(os.path.join(pfdir, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(d=pfdir))
        with open(os.path.join(pfdir, "master.cf"), "w") as f:
            f.write(MASTER_CF)
        past = time.time() - 60
        for n in ("main.cf", "master.cf"):
            os.utime(os.path.join(pfdir, n), (past, past))
        fake = os.path.join(tmp, "postfix.sh")
        write_script(fake, "exit 0\n")
        ps = Postsurge(extra={
            "store": self.redis.url, "node_name": name, "postfix_config_directory": pfdir,
            "postfix_command": fake, "postconf_command": POSTCONF, "maillog_file": "",
            "http_listen": "", "monitor_interval": "200ms", "stress_min_interval": "0",
            "stress_exit_delay": "1s", "stress_cluster_quorum": str(quorum),
            "node_status_ttl": "2s", **extra})
        self.addCleanup(ps.cleanup)
        self.assertTrue(ps.wait_log("override profile:", timeout=30), ps.log())
        return ps

    def status(self, ps):
        r = ps.cli("status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_cluster_status_and_imbalance(self):
        a, b = self.node("a", 0), self.node("b", 0)
        self.assertTrue(wait_for(lambda: len(self.status(a)["nodes"]) == 2, 20), self.status(a))
        self.assertEqual([n["name"] for n in self.status(b)["nodes"]], ["b", "a"])
        a.cli("stress", "enter")
        self.assertTrue(wait_for(lambda: self.status(b)["imbalance"], 20), self.status(b))
        st = self.status(b)
        self.assertEqual({n["name"]: n["imbalance"] for n in st["nodes"]}, {"a": True, "b": False})
        self.assertIn("load-balancer", st["advice"])
        self.assertIn("imbalance:", b.cli("status").stdout)
        # A stopped node disappears after its TTL.
        b.stop()
        self.assertTrue(wait_for(lambda: len(self.status(a)["nodes"]) == 1, 20), self.status(a))

    def redis_get(self, key):
        r = subprocess.run(["redis-cli", "-p", str(self.redis.port), "--raw", "GET", key],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.rstrip("\n")

    def test_cluster_journal_copy_in_store(self):
        # Through the privileged helper (a) and in process (b, user = root): the journal
        # written to state_directory is also under postsurge:journal:NODE, gone after the
        # restore; status --json says whether the store holds it.
        a = self.node("a", 0)
        b = self.node("b", 0, user="root")
        for ps, name in ((a, "a"), (b, "b")):
            with self.subTest(node=name):
                key = "postsurge:journal:" + name
                path = os.path.join(ps.dir, "journal.json")
                self.assertEqual(self.redis_get(key), "")
                ps.cli("stress", "enter")
                self.assertTrue(wait_for(lambda: self.status(ps)["nodes"][0]["overrides_state"]
                                         == "applied", 60), ps.log())
                with open(path) as f:
                    on_disk = json.load(f)
                # The store's copy follows the last journal written (with the expected bytes).
                self.assertTrue(wait_for(lambda: self.redis_get(key) != "" and
                                         json.loads(self.redis_get(key)) == on_disk, 20),
                                "%r\n%s" % (self.redis_get(key)[:300], ps.log()))
                self.assertIn("main_cf", on_disk)
                self.assertTrue(wait_for(lambda: self.status(ps)["nodes"][0]["journal_in_store"],
                                         20), self.status(ps))
                ps.cli("stress", "exit")
                self.assertTrue(wait_for(lambda: self.status(ps)["nodes"][0]["overrides_state"]
                                         == "none", 60), ps.log())
                self.assertFalse(os.path.exists(path))
                self.assertTrue(wait_for(lambda: self.redis_get(key) == "", 20), ps.log())
                self.assertTrue(wait_for(
                    lambda: not self.status(ps)["nodes"][0]["journal_in_store"], 20))

    def test_cluster_journal_copy_after_redis_outage(self):
        # The journal is written while Redis is down: the copy follows once Redis is back,
        # with no further journal write; a restarted (empty) Redis gets it again.
        a = self.node("a", 0)
        key = "postsurge:journal:a"
        path = os.path.join(a.dir, "journal.json")
        self.redis.kill()
        a.cli("stress", "enter")
        self.assertTrue(wait_for(lambda: self.status(a)["nodes"][0]["overrides_state"]
                                 == "applied", 60), a.log())
        self.assertTrue(a.wait_log("cannot write the override journal's copy", timeout=20),
                        a.log())
        self.assertFalse(self.status(a)["nodes"][0]["journal_in_store"])
        with open(path) as f:
            on_disk = json.load(f)
        self.redis.start()

        def copied():
            v = self.redis_get(key)
            return v != "" and json.loads(v) == on_disk
        self.assertTrue(wait_for(copied, 30), a.log())
        self.assertTrue(wait_for(lambda: self.status(a)["nodes"][0]["journal_in_store"], 20))
        self.redis.kill()
        self.redis.start()
        self.assertEqual(self.redis_get(key), "")
        self.assertTrue(wait_for(copied, 60), a.log())  # the 30 s rewrite
        a.cli("stress", "exit")
        self.assertTrue(wait_for(lambda: self.status(a)["nodes"][0]["overrides_state"]
                                 == "none", 60), a.log())
        self.assertTrue(wait_for(lambda: self.redis_get(key) == "", 20), a.log())

    def test_idle_tick_without_monitor_survives_store_outage(self):
        # monitor = no: the controller runs on its idle tick (an empty sample every
        # monitor_interval). Redis is stopped (SIGTERM, a real outage) and started again
        # empty: the tick goes on, status names the store failure, and the node status is
        # in the store again once Redis is back. A rate limit and a request each time make
        # the counter store (whose state status shows) talk to Redis.
        a = self.node("a", 0, monitor="no", limits="per_ip client_address recipients 1000/1m")
        key = "postsurge:node:a"

        def ask():
            with a.client() as c:
                self.assertEqual(c.ask(request()), "DUNNO")

        def store_state():
            return self.status(a)["store_state"]
        self.assertTrue(wait_for(lambda: self.redis_get(key) != "", 20), a.log())
        ask()
        self.assertTrue(wait_for(lambda: store_state()["state"] == "ok", 20), store_state())
        self.redis.stop()
        ask()
        self.assertTrue(wait_for(lambda: store_state()["state"] not in ("ok", "connecting"),
                                 30), "%s\n%s" % (store_state(), a.log()))
        a.wait_samples(10)
        st = self.status(a)
        self.assertNotIn(st["store_state"]["state"], ("ok", "connecting"), st)
        self.assertNotEqual(st["store_state"]["reason"], "", st)
        self.assertEqual(st["nodes"][0]["name"], "a")
        self.assertTrue(a.running(), a.log())
        self.redis.start()
        self.assertEqual(self.redis_get(key), "")
        self.assertTrue(wait_for(lambda: self.redis_get(key) != "", 30), a.log())
        self.assertEqual(json.loads(self.redis_get(key).split(" ", 1)[1])["name"], "a")
        ask()
        self.assertTrue(wait_for(lambda: store_state()["state"] == "ok", 30), store_state())
        a.wait_samples(3)

    def test_cluster_quorum_enters_every_node(self):
        a, b = self.node("a", 50), self.node("b", 50)
        self.assertTrue(wait_for(lambda: len(self.status(b)["nodes"]) == 2, 20))
        a.cli("stress", "enter")
        self.assertTrue(wait_for(lambda: self.status(b)["nodes"][0]["stress"], 20),
                        self.status(b))
        self.assertTrue(b.wait_log("event stress-enter", timeout=5), b.log())
        self.assertIn("quorum", b.log())
        a.cli("stress", "exit")
        self.assertTrue(wait_for(lambda: not self.status(b)["nodes"][0]["stress"], 30),
                        b.log())
        # Events of both nodes are in the one Redis list.
        r = a.cli("events", "--json")
        nodes = {e["node"] for e in json.loads(r.stdout)["events"]}
        self.assertEqual(nodes, {"a", "b"})

    def test_cluster_auth_flag_shared(self):
        # Node a reads the SASL failures in its mail log; node b, on the same Redis, answers
        # the client attack_action without stress (attack_auth_mode = always), and still
        # answers a client a flagged for rejects only while stressed.
        logdir = tempfile.mkdtemp(prefix="postsurge-log-")
        os.chmod(logdir, 0o755)  # read by the daemon's unprivileged user
        self.addCleanup(shutil.rmtree, logdir, True)
        maillog = os.path.join(logdir, "maillog")
        open(maillog, "w").close()
        a = self.node("a", 0, maillog_file=maillog, attack_auth_failure_limit=2,
                      attack_unknown_user_limit=2)
        b = self.node("b", 0)
        with open(maillog, "a") as f:
            for i in range(2):
                f.write(ControllerTest.SASL_FAIL.format(a="198.51.100.7", i=i, why="x"))
                f.write("Dec  2 09:58:09 mx postfix/smtpd[6826]: NOQUEUE: reject: RCPT from "
                        "unknown[198.51.100.8]: 550 5.1.1 <u%d@postsurge.test>: Recipient "
                        "address rejected: User unknown in local recipient table; "
                        "from=<s@example.org> to=<u%d@postsurge.test> proto=ESMTP "
                        "helo=<x>\n" % (i, i))

        def b_answers(addr):
            with b.client() as c:
                return c.ask(request(client_address=addr))
        self.assertTrue(wait_for(lambda: b_answers("198.51.100.7").startswith("421"), 20),
                        a.log())
        self.assertEqual(b_answers("198.51.100.8"), "DUNNO")
        b.cli("stress", "enter")
        self.assertTrue(b_answers("198.51.100.8").startswith("421 4.7.0"))

    def test_cluster_quorum_set_by_reload(self):
        # stress_* settings take effect on SIGHUP: quorum off, a peer stressed, this node
        # stays normal; quorum 50 % by reload, and it enters.
        a, b = self.node("a", 0), self.node("b", 0)
        self.assertTrue(wait_for(lambda: len(self.status(b)["nodes"]) == 2, 20))
        a.cli("stress", "enter")

        def peer_stressed():
            return any(n["stress"] for n in self.status(b)["nodes"][1:])
        self.assertTrue(wait_for(peer_stressed, 20), self.status(b))
        # b evaluates five samples with the peer stressed and no quorum (each one ends
        # with the decision to enter or not; no fixed sleep), and stays normal.
        b.wait_samples(5)
        self.assertFalse(self.status(b)["nodes"][0]["stress"], b.log())
        with open(b.config_path) as f:
            text = f.read()
        self.assertIn("stress_cluster_quorum = 0\n", text)
        b.write_config(text=text.replace("stress_cluster_quorum = 0\n",
                                         "stress_cluster_quorum = 50\n"))
        mark = b.reload()
        self.assertTrue(b.wait_log("reload: stress thresholds now", mark, 10), b.log())
        self.assertIn("cluster_quorum 50%", b.log()[mark:])
        self.assertTrue(wait_for(lambda: self.status(b)["nodes"][0]["stress"], 20), b.log())
        self.assertIn("cluster quorum", b.log()[mark:])
        a.cli("stress", "exit")
        self.assertTrue(wait_for(lambda: not self.status(b)["nodes"][0]["stress"], 30),
                        b.log())


if __name__ == "__main__":
    testmain.main()
