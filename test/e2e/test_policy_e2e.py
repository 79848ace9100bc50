"""End to end (issue 2): a real Postfix 3.7 instance whose smtpd_recipient_restrictions
call postsurge over inet: and over unix:. Mail sent with swaks and smtp-source must be
accepted and delivered to smtp-sink, postsurge must have seen every RCPT request (counted
from its debug log), and with postsurge stopped mail must still flow when
check_policy_service has default_action=DUNNO as postfix-snippets/main.cf recommends.
Needs root, postfix, swaks. Env: POSTSURGE (the binary), PYTHONPATH=test/pylib.
"""
import os
import re
import sys
import unittest

from ports import free_port, tcp_listening, wait_for
from postfix_instance import PostfixInstance
from postsurge import Postsurge
import testmain
SOURCE_ROOT = os.environ.get("SOURCE_ROOT",
                             os.path.join(os.path.dirname(__file__), "..", ".."))

# The daemon's debug line for each decision (policyd/server/conn.c conn_log_decision):
#   "PEER: RCPT client=ADDR sasl_username=U sender=<S> recipient=<R>: action=A"
DECISION_RE = re.compile(r": (?P<state>[A-Z-]+) client=(?P<client>\S*) "
                         r"sasl_username=\S* sender=<(?P<sender>[^>]*)> "
                         r"recipient=<(?P<rcpt>[^>]*)>: action=(?P<action>.*)$")


def start_postsurge(listen, pf):
    """postsurge serve (-f -v: debug log of every decision) listening on listen only, via
    the shared harness test/pylib/postsurge.py; stopped by PID in cleanup()."""
    ps = Postsurge(listen=listen, inet=False, args=["-v"], extra={
        "store": "memory",
        "log_level": "debug",
        "monitor": "no",
        "http_listen": "inet:127.0.0.1:%d" % free_port(),
        "postfix_config_directory": pf.dir,
        "maillog_file": pf.maillog_path,
    })
    # The harness only knows the endpoints it generated: wait for ours here.
    if listen.startswith("unix:"):
        up = lambda: Postsurge._unix_listening(listen[5:])
    else:
        up = lambda: tcp_listening(int(listen.rsplit(":", 1)[1]))
    if not wait_for(lambda: up() or not ps.running(), 15) or not ps.running():
        log = ps.log()
        ps.cleanup()
        raise RuntimeError("postsurge did not listen on %s:\n%s" % (listen, log))
    return ps


def decisions(ps, state="RCPT"):
    """(client, sender, recipient, action) of every decision ps logged for state."""
    out = []
    for line in ps.log().splitlines():
        m = DECISION_RE.search(line)
        if m and m.group("state") == state:
            out.append((m.group("client"), m.group("sender"), m.group("rcpt"),
                        m.group("action")))
    return out


def policy_restrictions(endpoint, default_action):
    """smtpd_recipient_restrictions calling postsurge first, then the usual relay checks."""
    # A value with spaces needs its own braces inside the service braces.
    return ("smtpd_recipient_restrictions = check_policy_service { %s, timeout=10s, "
            "{ default_action = %s } }, permit_mynetworks, reject_unauth_destination"
            % (endpoint, default_action))


def snippet_policy_line():
    """The check_policy_service { ... } clause of postfix-snippets/main.cf, or None."""
    try:
        with open(os.path.join(SOURCE_ROOT, "postfix-snippets", "main.cf")) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"check_policy_service\s*\{[^}]*\}", text)
    return re.sub(r"\s+", " ", m.group(0)) if m else None


class PolicyE2E(unittest.TestCase):
    def setUp(self):
        self.pf = None
        self.ps = None

    def _failed(self):
        """True if this test has failed so far (Python 3.11 records it before tearDown)."""
        res = getattr(self._outcome, "result", None)
        return bool(res and any(t is self for t, _ in res.failures + res.errors))

    def tearDown(self):
        failed = self._failed()
        if self.ps:
            if failed:
                sys.stderr.write("--- postsurge log tail ---\n" + self.ps.log()[-4000:])
            self.ps.cleanup()
        if self.pf:
            if failed:
                sys.stderr.write("--- maillog tail ---\n" + self.pf.maillog()[-4000:])
            self.pf.stop()

    def send_and_check(self, expect_policy):
        """Sends with swaks (one message, two recipients) and smtp-source (4 sessions, 12
        messages, 3 recipients each); asserts everything is delivered to the sink and, if
        expect_policy, that postsurge logged exactly one RCPT decision per recipient."""
        pf = self.pf
        sent = ["alice@" + pf.sink_domain, "bob@" + pf.sink_domain]
        r = pf.send_swaks(to=sent, sender="carol@example.org")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)

        sessions, messages, rcpts = 4, 12, 3
        r = pf.smtp_source(sessions=sessions, messages=messages, recipients=rcpts,
                           to="load@" + pf.sink_domain)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # smtp-source -N numbers every recipient: 1load@..., 2load@..., ...
        sent += ["%dload@%s" % (i, pf.sink_domain) for i in range(1, messages * rcpts + 1)]

        self.assertTrue(pf.wait_queue_empty(120), pf.queue_json())
        got = sorted(r.strip("<>") for r in pf.sink.recipients())
        self.assertEqual(got, sorted(sent))
        self.assertEqual(len(pf.sink.messages()), 1 + messages)
        if not expect_policy:
            return
        # smtpd answers RCPT only after the policy reply, so every decision is logged by
        # now; wait a little anyway for the pipe to the log file.
        wait_for(lambda: len(decisions(self.ps)) >= len(sent), 10)
        seen = decisions(self.ps)
        self.assertEqual(sorted(d[2] for d in seen), sorted(sent))
        self.assertTrue(all(d[0] == "127.0.0.1" for d in seen), seen)
        self.assertTrue(all(d[3] == "DUNNO" for d in seen), seen)
        self.assertIn(("127.0.0.1", "carol@example.org", "alice@" + pf.sink_domain,
                       "DUNNO"), seen)
        # No other protocol states: the policy is only in the recipient restrictions.
        self.assertEqual(decisions(self.ps, "DATA") + decisions(self.ps, "END-OF-MESSAGE"), [])

    def test_policy_e2e_inet(self):
        port = free_port()
        self.pf = PostfixInstance(main_extra=[
            policy_restrictions("inet:127.0.0.1:%d" % port, "451 4.3.5 policy unavailable")])
        self.pf.start()
        self.ps = start_postsurge("inet:127.0.0.1:%d" % port, self.pf)
        self.send_and_check(expect_policy=True)
        self.assertNotIn("problem talking to server", self.pf.maillog())

    def test_policy_e2e_unix(self):
        # Postfix resolves unix:private/NAME against its queue directory; smtpd (user
        # postfix) connects there, so the socket lives in the instance's private/.
        self.pf = PostfixInstance(main_extra=[
            policy_restrictions("unix:private/postsurge", "451 4.3.5 policy unavailable")])
        self.pf.start()
        sock = os.path.join(self.pf.queue_dir, "private", "postsurge")
        self.ps = start_postsurge("unix:" + sock, self.pf)
        self.send_and_check(expect_policy=True)
        self.assertNotIn("problem talking to server", self.pf.maillog())

    def test_policy_e2e_down_dunno(self):
        port = free_port()
        clause = snippet_policy_line()
        if clause:
            # Use the snippet's own clause (its timeouts and default_action), pointed at
            # our port.
            clause = re.sub(r"inet:[^,\s}]+", "inet:127.0.0.1:%d" % port, clause)
            self.assertIn("default_action=DUNNO", clause)
            line = ("smtpd_recipient_restrictions = %s, permit_mynetworks, "
                    "reject_unauth_destination" % clause)
        else:
            line = policy_restrictions("inet:127.0.0.1:%d" % port, "DUNNO")
        self.pf = PostfixInstance(main_extra=[line])
        self.pf.start()
        self.ps = start_postsurge("inet:127.0.0.1:%d" % port, self.pf)
        r = self.pf.send_swaks(to="up@" + self.pf.sink_domain)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertTrue(wait_for(lambda: len(decisions(self.ps)) >= 1, 10))

        # Stop it: the smtpd that kept its policy connection must reconnect, fail, and
        # fall back to DUNNO; a new smtpd must too.
        self.ps.stop()
        self.assertFalse(tcp_listening(port))
        r = self.pf.send_swaks(to="down@" + self.pf.sink_domain)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertRegex(r.stdout, r"<-  250 2\.1\.5 Ok")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        r = self.pf.smtp_source(sessions=2, messages=4, recipients=2,
                                to="down@" + self.pf.sink_domain)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(self.pf.wait_queue_empty(120), self.pf.queue_json())
        self.assertEqual(len(self.pf.sink.messages()), 2 + 4)
        self.assertIn("problem talking to server 127.0.0.1:%d" % port, self.pf.maillog())
        self.assertEqual(len(decisions(self.ps)), 1)


if __name__ == "__main__":
    testmain.main()
