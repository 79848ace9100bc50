"""The systemd journal as the mail log (policyd/util/journal.c behind util/tail.c), against
a real systemd-journald the test starts (test/pylib/journald.py: a namespace instance with
files of its own) and Postfix-style syslog messages sent to it: lines in order and in the
file reader's format, only facility mail, from the current end, nothing lost or read twice
across a rotation and a vacuum; `maillog_file = journal:DIR` in the daemon and in
check-config. Skipped with the reason when journald cannot run here."""
import json
import os
import re
import shutil
import tempfile
import time
import unittest

from journald import Journald, unavailable, USER, WARNING
from postsurge import Postsurge, request
from test_monitor import Probe

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

    def test_journal_reads_facility_mail_only(self):
        p = self.probe()
        self.jd.syslog("cron", "not mail", pid=5, facility=USER)
        self.jd.syslog("postfix/master", 'warning: service "smtp" (25) has reached its '
                       'process limit "100": new clients may experience noticeable delays',
                       pid=7, severity=WARNING)
        self.jd.syslog("postfix-out/qmgr", "ABC123: removed", pid=8)
        self.wait_messages(p, ['warning: service "smtp" (25) has reached its process limit '
                               '"100": new clients may experience noticeable delays',
                               "ABC123: removed"])
        time.sleep(0.3)
        self.assertNotIn("not mail", self.messages(p.lines))
        self.assertEqual(p.stop(), 0)

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

    def postfix_dir(self):
        """A Postfix config directory with a main.cf only (removed after the test)."""
        pf = tempfile.mkdtemp(prefix="postsurge-journal-pf-")
        self.addCleanup(shutil.rmtree, pf, True)
        with open(os.path.join(pf, "main.cf"), "w") as f:
            f.write("compatibility_level = 3.6\n")
        return pf

    def test_daemon_and_check_config_take_journal(self):
        pf = self.postfix_dir()
        ps = Postsurge(extra={"maillog_file": "journal:" + self.jd.directory,
                              "postfix_config_directory": pf, "monitor_interval": "200ms"})
        self.addCleanup(ps.cleanup)
        self.assertTrue(ps.wait_log("mail log: reading the systemd journal in %s"
                                    % self.jd.directory, timeout=15), ps.log())
        # status says which source the daemon reads.
        r = ps.cli("status", "--json")
        self.assertEqual(json.loads(r.stdout)["nodes"][0]["maillog"], "journal", r.stdout)
        self.assertIn("  mail log: journal\n", ps.cli("status").stdout)
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        ps.write_config(ps.config_text({"maillog_file": "journal:relative/dir"}))
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1)
        self.assertIn("journal:DIRECTORY needs an absolute path", r.stderr)
        ps.write_config(ps.config_text({"maillog_file": "journal"}))
        self.assertEqual(ps.cli("check-config").returncode, 0)

    def test_daemon_flags_sasl_failures_from_journal(self):
        # The live reader on the journal feeds the attack detector as the file reader does.
        pf = self.postfix_dir()
        ps = Postsurge(extra={"maillog_file": "journal:" + self.jd.directory,
                              "postfix_config_directory": pf, "monitor_interval": "200ms",
                              "attack_auth_failure_limit": "3"})
        self.addCleanup(ps.cleanup)
        self.assertTrue(ps.wait_log("mail log: reading the systemd journal", timeout=15),
                        ps.log())
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
            for i in range(n):
                self.jd.syslog("postfix/smtpd", "connect from %s%d.example[192.0.2.%d]"
                               % (tag, i, i + 1), pid=300 + i)
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
    unittest.main(verbosity=2)
