"""End to end (issue 3): a real Postfix 3.7 instance calls postsurge in
smtpd_recipient_restrictions with a `recipients` limit of 10 per hour per client address.
smtp-source from 127.0.0.1 sends 3 messages of 5 recipients: exactly the 5 excess
recipients get the rule's 4xx (counted in Postfix's maillog), the sink gets the other
10. A second client on 127.0.0.2 (Python smtplib with a source address: smtp-source
cannot bind) is unaffected. Needs root and postfix. Env: POSTSURGE, PYTHONPATH=test/pylib.
"""
import re
import smtplib
import sys
import unittest

from ports import free_port, wait_for
from postfix_instance import PostfixInstance
from postsurge import Postsurge
import testmain

LIMIT = 10
REJECT_RE = re.compile(r"(NOQUEUE|[0-9A-F]+): reject: RCPT from \S+\[(?P<client>[0-9.]+)\]: "
                       r"450 4\.7\.1 <(?P<rcpt>[^>]+)>: Recipient address rejected: "
                       r"Rate limit exceeded, try again later \(per_ip\)")


class LimitsE2E(unittest.TestCase):
    def setUp(self):
        self.ps = Postsurge(extra=("monitor = no\nhttp_listen =\nstore = memory\n"
                                   "limits =\n"
                                   "    per_ip client_address recipients %d/1h\n" % LIMIT))
        self.addCleanup(self.ps.cleanup)
        self.pf = PostfixInstance(main_extra=[
            "smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:%d, "
            "timeout=10s, default_action=DUNNO }, permit_mynetworks, reject_unauth_destination"
            % self.ps.port])
        self.pf.start()
        self.addCleanup(self.pf.stop)

    def tearDown(self):
        res = getattr(self._outcome, "result", None)
        if res and any(t is self for t, _ in res.failures + res.errors):
            sys.stderr.write("--- postsurge log tail ---\n" + self.ps.log()[-3000:])
            sys.stderr.write("--- maillog tail ---\n" + self.pf.maillog()[-3000:])

    def rejects(self):
        return [m.groupdict() for m in REJECT_RE.finditer(self.pf.maillog())]

    def test_limits_e2e_excess_recipients_get_4xx(self):
        pf = self.pf
        # -A: go on after a non-2xx reply (the 4xx RCPTs, the DATA of a message without
        # any accepted recipient) instead of aborting the session.
        r = pf.smtp_source(sessions=1, messages=3, recipients=5, to="load@" + pf.sink_domain,
                           extra_args=["-A"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(wait_for(lambda: len(self.rejects()) >= 15 - LIMIT, 20), pf.maillog())
        rej = self.rejects()
        self.assertEqual(len(rej), 15 - LIMIT, rej)
        self.assertTrue(all(x["client"] == "127.0.0.1" for x in rej), rej)
        # The first 10 recipients were accepted and delivered, the last 5 refused.
        self.assertEqual(sorted(x["rcpt"] for x in rej),
                         sorted("%dload@%s" % (i, pf.sink_domain) for i in range(11, 16)))

        # Another client address is counted on its own: all its recipients pass.
        other = []
        for m in range(3):
            with smtplib.SMTP("127.0.0.1", pf.port, source_address=("127.0.0.2", 0),
                              timeout=30) as s:
                rcpts = ["o%d-%d@%s" % (m, i, pf.sink_domain) for i in range(3)]
                refused = s.sendmail("other@example.org", rcpts,
                                     "Subject: other %d\r\n\r\nhello\r\n" % m)
                self.assertEqual(refused, {})
                other += rcpts
        self.assertTrue(pf.wait_queue_empty(120), pf.queue_json())
        got = sorted(x.strip("<>") for x in pf.sink.recipients())
        want = sorted(["%dload@%s" % (i, pf.sink_domain) for i in range(1, LIMIT + 1)] + other)
        self.assertEqual(got, want)
        self.assertEqual(len(self.rejects()), 15 - LIMIT)
        # postsurge logged one info line per refusal, naming the rule and its key.
        lines = [l for l in self.ps.log().splitlines() if "rule=per_ip " in l]
        self.assertEqual(len(lines), 15 - LIMIT, self.ps.log())
        self.assertIn("key=per_ip:", lines[0])


class PolicyContextE2E(unittest.TestCase):
    """Issue 14: Postfix's submission-style service sets
    `-o smtpd_policy_service_policy_context=submission` (Postfix 3.1+); one rule applies
    there, another on the port-25 service, to the same client: 2 recipients per hour on
    25, 4 on submission, each counted on its own."""

    def setUp(self):
        self.ps = Postsurge(extra=(
            "monitor = no\nhttp_listen =\nstore = memory\nlimits =\n"
            "    mx  client_address recipients 2/1h if policy_context!=submission "
            "action 450 4.7.1 Port 25 quota\n"
            "    sub client_address recipients 4/1h if policy_context=submission "
            "action 450 4.7.1 Submission quota\n"))
        self.addCleanup(self.ps.cleanup)
        self.sub_port = free_port()
        self.pf = PostfixInstance(
            main_extra=["smtpd_recipient_restrictions = check_policy_service { "
                        "inet:127.0.0.1:%d, timeout=10s, default_action=DUNNO }, "
                        "permit_mynetworks, reject_unauth_destination" % self.ps.port],
            master_extra=["127.0.0.1:%d inet n - n - - smtpd" % self.sub_port,
                          "  -o smtpd_policy_service_policy_context=submission"])
        self.pf.start()
        self.addCleanup(self.pf.stop)

    def send(self, port, tag, n):
        """One message with n recipients on port: the refused recipients' replies."""
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            rcpts = ["%s%d@%s" % (tag, i, self.pf.sink_domain) for i in range(n)]
            try:
                refused = s.sendmail("user@example.org", rcpts, "Subject: %s\r\n\r\nx\r\n" % tag)
            except smtplib.SMTPRecipientsRefused as e:
                refused = e.recipients
        return {r: (code, msg.decode()) for r, (code, msg) in refused.items()}

    def test_limits_e2e_policy_context_submission_vs_port_25(self):
        mx = self.send(self.pf.port, "mx", 3)
        sub = self.send(self.sub_port, "sub", 6)
        self.assertEqual(sorted(mx), ["mx2@" + self.pf.sink_domain], mx)
        self.assertTrue(all(c == 450 and "Port 25 quota" in m for c, m in mx.values()), mx)
        self.assertEqual(sorted(sub), ["sub%d@%s" % (i, self.pf.sink_domain) for i in (4, 5)],
                         sub)
        self.assertTrue(all(c == 450 and "Submission quota" in m for c, m in sub.values()), sub)
        # Postfix logged the rule's reply in its own reject line.
        self.assertTrue(wait_for(lambda: "Submission quota" in self.pf.maillog(), 20))


if __name__ == "__main__":
    testmain.main()
