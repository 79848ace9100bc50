"""Fault end to end (issue 6): postsurge killed with kill -9 in the middle of a mail load
behind a real Postfix 3.7 whose check_policy_service has default_action=DUNNO. smtp-source
keeps sending in a loop the whole time; every run must succeed and every recipient must be
delivered to smtp-sink exactly once (no mail lost or refused while the policy server is
gone); restarted on the same port, postsurge answers Postfix again (its log shows
decisions after the restart). Needs root, postfix. Env: POSTSURGE, PYTHONPATH=test/pylib.
"""
import re
import signal
import sys
import threading
import time
import unittest

from ports import free_port, tcp_listening, wait_for
from postfix_instance import PostfixInstance
from postsurge import Postsurge
import testmain

# policyd/server/conn.c logs one debug line per decision: "...: RCPT client=... action=DUNNO".
DECISION_RE = re.compile(r": RCPT client=\S+ .*: action=")
MAX_RUNS = 60          # smtp-source runs at most (the loop is bounded in count and time)
LOAD_SECONDS = 240


def decisions(text):
    return sum(1 for line in text.splitlines() if DECISION_RE.search(line))


class Load(threading.Thread):
    """smtp-source in a loop until stopped: each run 3 sessions, 6 messages of 2 distinct
    recipients, to run<k>-<n>@sink. Records every run's exit status and recipients."""

    def __init__(self, pf):
        super().__init__(daemon=True)
        self.pf = pf
        self.stop_flag = threading.Event()
        self.runs = []      # (returncode, output tail)
        self.sent = []      # recipients of the runs started
        self.deadline = time.monotonic() + LOAD_SECONDS

    def run(self):
        k = 0
        while not self.stop_flag.is_set() and k < MAX_RUNS and \
                time.monotonic() < self.deadline:
            to = "run%d@%s" % (k, self.pf.sink_domain)
            self.sent += ["%drun%d@%s" % (i, k, self.pf.sink_domain) for i in range(1, 13)]
            r = self.pf.smtp_source(sessions=3, messages=6, recipients=2, to=to, timeout=120)
            self.runs.append((r.returncode, (r.stdout + r.stderr)[-500:]))
            k += 1

    def wait_runs(self, n, timeout=120):
        return wait_for(lambda: len(self.runs) >= n or not self.is_alive(), timeout, 0.1)


class FaultsE2E(unittest.TestCase):
    def _failed(self):
        res = getattr(self._outcome, "result", None)
        return bool(res and any(t is self for t, _ in res.failures + res.errors))

    def test_faults_e2e_kill9_mid_load_mail_flows_and_resumes(self):
        port = free_port()
        pf = PostfixInstance(main_extra=[
            "smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:%d, "
            "timeout=10s, default_action=DUNNO }, permit_mynetworks, "
            "reject_unauth_destination" % port])
        pf.start()
        self.addCleanup(pf.stop)
        ps = Postsurge(listen="inet:127.0.0.1:%d" % port, inet=False, args=["-v"],
                       extra={"monitor": "no", "http_listen": "", "log_level": "debug"})
        self.addCleanup(ps.cleanup)

        load = Load(pf)
        self.addCleanup(load.stop_flag.set)

        def dump():
            if self._failed():
                sys.stderr.write("--- postsurge log tail ---\n" + ps.log()[-3000:])
                sys.stderr.write("--- maillog tail ---\n" + pf.maillog()[-3000:])
        self.addCleanup(dump)

        load.start()
        self.assertTrue(wait_for(lambda: decisions(ps.log()) >= 20, 120), "no decisions")
        ps.signal(signal.SIGKILL)
        ps.proc.wait(30)
        killed_at = decisions(ps.log())
        self.assertFalse(tcp_listening(port))
        # Mail keeps flowing while it is gone: two more complete runs.
        down_runs = len(load.runs)
        self.assertTrue(load.wait_runs(down_runs + 2), "load stopped")
        self.assertGreater(len(pf.maillog().split("problem talking to server")), 1,
                           "Postfix never noticed postsurge was gone")

        # Restarted on the same port, it answers Postfix again.
        mark = len(ps.log())
        ps.start()
        self.assertTrue(wait_for(lambda: decisions(ps.log()[mark:]) >= 20, 120),
                        "no decisions after the restart")
        load.stop_flag.set()
        load.join(300)
        self.assertFalse(load.is_alive())

        bad = [r for r in load.runs if r[0] != 0]
        self.assertEqual(bad, [], "smtp-source runs failed")
        self.assertTrue(pf.wait_queue_empty(180), pf.queue_json())
        got = sorted(r.strip("<>") for r in pf.sink.recipients())
        self.assertEqual(len(got), len(load.sent), "lost or duplicated mail")
        self.assertEqual(got, sorted(load.sent))
        after = decisions(ps.log()[mark:])
        print("\nkill -9 mid-load: %d smtp-source runs, %d recipients delivered; postsurge "
              "answered %d before the kill, %d after the restart"
              % (len(load.runs), len(got), killed_at, after), file=sys.stderr)


if __name__ == "__main__":
    testmain.main()
