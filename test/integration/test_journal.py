"""The systemd journal as the mail log (policyd/util/journal.c behind util/tail.c), against
a real systemd-journald the test starts (test/pylib/journald.py: a namespace instance with
files of its own) and Postfix-style syslog messages sent to it: lines in order and in the
file reader's format, only this Postfix instance's (identifier NAME or NAME/... for its
syslog_name, from postconf or maillog_syslog_name), from the current end, nothing lost or
read twice across a rotation and a vacuum; `maillog_file = journal:DIR` in the daemon and
in check-config. Skipped with the reason when journald cannot run here."""
import json
import os
import re
import shutil
import tempfile
import time
import unittest

from journald import Journald, unavailable, USER, WARNING
from postsurge import SLOW, Postsurge, request
from test_monitor import Probe
import testmain

LINE_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00) (\S+) (\S+?)(\[\d+\])?: (.*)$")


@unittest.skipIf(unavailable(), unavailable() or "")
class JournalTest(unittest.TestCase):
    def setUp(self):
        self.jd = Journald()
        self.addCleanup(self.jd.stop)

    def probe(self, *extra):
        p = Probe("tail", "journal:" + self.jd.directory, "--interval", "50", *extra)
        self.addCleanup(p.stop)
        self.assertTrue(p.wait(lambda ls: any(o.get("started") for o in ls)),
                        "probe did not start: %s" % "".join(p.err))
        return p

    @staticmethod
    def messages(ls):
        out = []
        for o in ls:
            if "line" in o:
                m = LINE_RE.match(o["line"])
                assert m, "not a syslog line: %r" % o["line"]
                out.append(m.group(5))
        return out

    def wait_messages(self, p, want, timeout=20):
        ok = p.wait(lambda ls: len(self.messages(ls)) >= len(want), timeout)
        self.assertEqual(self.messages(p.lines), want, "stderr: %s" % "".join(p.err))
        self.assertTrue(ok)

    def test_journal_lines_from_current_end_in_order(self):
        self.jd.syslog("postfix/smtpd", "old, before the reader started", pid=1)
        self.jd.sync()
        p = self.probe()
        want = ["connect from c%d.example[192.0.2.%d]" % (i, i) for i in range(1, 51)]
        for i, msg in enumerate(want):
            self.jd.syslog("postfix/smtpd", msg, pid=1000 + i)
        self.wait_messages(p, want)
        line = [o["line"] for o in p.lines if "line" in o][0]
        m = LINE_RE.match(line)
        self.assertEqual((m.group(3), m.group(4)), ("postfix/smtpd", "[1000]"), line)
        self.assertEqual(p.stop(), 0)

    def test_journal_reads_this_syslog_name_only(self):
        # postfix/... and postfix-out/... are two instances sharing the journal: only the
        # entries of the syslog_name asked for are read, whatever their facility.
        p = self.probe()
        self.jd.syslog("cron", "not mail", pid=5, facility=USER)
        self.jd.syslog("postfix/master", 'warning: service "smtp" (25) has reached its '
                       'process limit "100": new clients may experience noticeable delays',
                       pid=7, severity=WARNING)
        self.jd.syslog("postfix-out/qmgr", "ABC123: removed", pid=8)
        self.jd.syslog("postfixx/smtpd", "connect from a.example[192.0.2.9]", pid=9)
        self.jd.syslog("postfix/submission/smtpd", "connect from b.example[192.0.2.10]",
                       pid=10)
        self.jd.syslog("postfix", "a bare identifier", pid=11, facility=USER)
        self.jd.syslog("postfix/smtpd", "connect from c.example[192.0.2.11]", pid=12,
                       facility=USER)
        want = ['warning: service "smtp" (25) has reached its process limit '
                '"100": new clients may experience noticeable delays',
                "connect from b.example[192.0.2.10]", "a bare identifier",
                "connect from c.example[192.0.2.11]"]
        self.wait_messages(p, want)
        time.sleep(0.3)
        self.assertEqual(self.messages(p.lines), want)
        self.assertEqual(p.stop(), 0)
        # The other instance's reader sees the other instance's entries only.
        q = Probe("tail", "journal:" + self.jd.directory, "--from-start", "--syslog-name",
                  "postfix-out")
        self.addCleanup(q.stop)
        self.wait_messages(q, ["ABC123: removed"])
        self.assertEqual(q.stop(), 0)

    def test_journal_rotation_and_vacuum_lose_nothing_and_repeat_nothing(self):
        p = self.probe()
        want = []
        for round_ in range(3):
            for i in range(20):
                msg = "round %d line %d" % (round_, i)
                want.append(msg)
                self.jd.syslog("postfix/smtp", msg, pid=200 + i)
            self.jd.sync()
            self.jd.rotate()
            if round_ == 1:
                self.wait_messages(p, want)
                self.jd.vacuum()
        self.wait_messages(p, want)
        time.sleep(0.5)
        self.assertEqual(self.messages(p.lines), want)
        self.assertEqual(p.stop(), 0)

    def postfix_dir(self, main_cf=""):
        """A Postfix config directory with main.cf and master.cf (removed after the test)."""
        pf = tempfile.mkdtemp(prefix="postsurge-journal-pf-")
        os.chmod(pf, 0o755)  # serve's postconf runs as its unprivileged user
        self.addCleanup(shutil.rmtree, pf, True)
        with open(os.path.join(pf, "main.cf"), "w") as f:
            f.write("compatibility_level = 3.6\n" + main_cf)
        with open(os.path.join(pf, "master.cf"), "w") as f:
            f.write("smtp inet n - n - - smtpd\n")
        past = time.time() - 60  # postconf stalls on a main.cf younger than a few seconds
        for name in ("main.cf", "master.cf"):
            os.utime(os.path.join(pf, name), (past, past))
        return pf

    def daemon(self, main_cf="", **extra):
        pf = self.postfix_dir(main_cf)
        settings = {"maillog_file": "journal:" + self.jd.directory,
                    "postfix_config_directory": pf, "monitor_interval": "200ms"}
        settings.update(extra)
        ps = Postsurge(extra=settings)
        self.addCleanup(ps.cleanup)
        ps.pfdir = pf
        return ps

    def test_daemon_and_check_config_take_journal(self):
        ps = self.daemon()
        self.assertTrue(ps.wait_log("mail log: reading the systemd journal in %s"
                                    % self.jd.directory, timeout=15), ps.log())
        self.assertTrue(ps.wait_log("mail log: journal entries of syslog_name postfix "
                                    "(identifiers postfix and postfix/...)", timeout=15), ps.log())
        # status says which source the daemon reads, and which entries.
        r = ps.cli("status", "--json")
        node = json.loads(r.stdout)["nodes"][0]
        self.assertEqual((node["maillog"], node["maillog_syslog_name"]), ("journal", "postfix"),
                         r.stdout)
        self.assertIn("  mail log: journal, syslog_name postfix\n", ps.cli("status").stdout)
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        ps.write_config(ps.config_text({"maillog_file": "journal:relative/dir"}))
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1)
        self.assertIn("journal:DIRECTORY needs an absolute path", r.stderr)
        ps.write_config(ps.config_text({"maillog_file": "journal"}))
        self.assertEqual(ps.cli("check-config").returncode, 0)

    def test_daemon_counts_this_instance_only(self):
        # Two instances log to one journal: postfix/... (the default syslog_name) and
        # postfix-out/... (a second instance: multi_instance_name, or syslog_name, in its
        # main.cf). The daemon watching one counts that one's process-limit warnings only;
        # maillog_syslog_name overrides what postconf says.
        def warning(ident, service, pid):
            self.jd.syslog(ident, 'warning: service "%s" (25) has reached its process limit '
                           '"100": new clients may experience noticeable delays' % service,
                           pid=pid, severity=WARNING)

        cases = [("", {}, "postfix"),
                 ("multi_instance_name = postfix-out\n", {}, "postfix-out"),
                 ("", {"maillog_syslog_name": "postfix-out"}, "postfix-out"),
                 ("syslog_name = postfix-out\n", {"maillog_syslog_name": "postfix"}, "postfix"),
                 # postconf failing: Postfix's default, with a warning.
                 ("syslog_name = postfix-out\n", {"postconf_command": "/bin/false"}, "postfix")]
        for i, (main_cf, extra, name) in enumerate(cases):
            with self.subTest(main_cf=main_cf, extra=extra):
                ps = self.daemon(main_cf, **extra)
                self.assertTrue(ps.wait_log("mail log: journal entries of syslog_name %s "
                                            % name, timeout=15), ps.log())
                if extra.get("postconf_command"):
                    self.assertIn("unknown: reading the journal entries of postfix", ps.log())
                node = json.loads(ps.cli("status", "--json").stdout)["nodes"][0]
                self.assertEqual(node["maillog_syslog_name"], name)
                other = "postfix" if name == "postfix-out" else "postfix-out"
                # The other instance's warning first: once this one's is counted, the other
                # one was read (the journal is read in order) and left out.
                warning(other + "/master", "other%d" % i, 100)
                warning(name + "/master", "this%d" % i, 101)
                self.assertTrue(ps.wait_log("event process-limit", timeout=20), ps.log())
                events = [e for e in json.loads(ps.cli("events", "--json").stdout)["events"]
                          if e["kind"] == "process-limit"]
                self.assertEqual([e["service"] for e in events], ["this%d" % i], events)
                ps.cleanup()

    def test_daemon_flags_sasl_failures_from_journal(self):
        # The live reader on the journal feeds the attack detector as the file reader does.
        ps = self.daemon(attack_auth_failure_limit="3")
        # The reader starts at the journal's end once it knows the syslog_name: lines
        # written before that are (rightly) not read.
        self.assertTrue(ps.wait_log("mail log: journal entries of syslog_name postfix",
                                    timeout=15 * SLOW), ps.log())
        for i in range(3):
            self.jd.syslog("postfix/submission/smtpd",
                           "warning: unknown[198.51.100.9]: SASL LOGIN authentication failed: "
                           "UGFzc3dvcmQ6, sasl_username=u%d@example.org" % i, pid=400 + i,
                           severity=WARNING)
        self.jd.sync()
        self.assertTrue(ps.wait_log("event attack-flagged: client 198.51.100.9", timeout=20),
                        ps.log())
        with ps.client() as c:
            self.assertTrue(c.ask(request(client_address="198.51.100.9",
                                          protocol_state="CONNECT")).startswith("421 4.7.0"))

    def test_report_reads_from_saved_cursor_once(self):
        # The report's traffic from the journal: a first run reads the recent journal,
        # each later one from the cursor saved in state_directory; a rotation and a
        # vacuum in between lose and repeat nothing.
        pf = self.postfix_dir()
        ps = Postsurge(start=False, extra={"maillog_file": "journal:" + self.jd.directory,
                                           "postfix_config_directory": pf})
        self.addCleanup(ps.cleanup)

        def connects(n, tag):
            # Each beside a connect of another instance (postfix-out), never counted.
            for i in range(n):
                self.jd.syslog("postfix/smtpd", "connect from %s%d.example[192.0.2.%d]"
                               % (tag, i, i + 1), pid=300 + i)
                self.jd.syslog("postfix-out/smtpd", "connect from %s%d.example[192.0.2.%d]"
                               % (tag, i, i + 100), pid=400 + i)
            self.jd.sync()

        def report_connections():
            r = ps.cli("report", "--json", timeout=60)
            doc = json.loads(r.stdout)
            return doc["traffic"]["totals"]["connections"]

        connects(5, "a")
        self.assertEqual(report_connections(), 5)
        with open(os.path.join(ps.dir, "report-state.json")) as f:
            self.assertIn("cursor", json.load(f)["maillog_journal"])
        connects(3, "b")
        self.jd.rotate()
        connects(2, "c")
        self.assertEqual(report_connections(), 5)
        self.jd.rotate()
        self.jd.vacuum()
        self.assertEqual(report_connections(), 0)
        connects(4, "d")
        self.assertEqual(report_connections(), 4)


if __name__ == "__main__":
    testmain.main()
