"""End to end (issue 16): password guessing against a real Postfix 3.7 whose submission
service authenticates with Dovecot SASL (a passwd-file user database in the test's
directory, Dovecot on a private auth socket, stopped by PID). The submission service is
postfix-snippets/master.cf's example 4 (less TLS: no certificate here) with
postfix-snippets/main.cf's $mua_client_restrictions pointed at the test's postsurge.
A client on 127.0.0.2 fails AUTH (swaks, wrong password) attack_auth_failure_limit times:
postsurge reads the failures in the mail log, flags it, and smtpd hangs up on its next
connection with attack_action at CONNECT, without any stress. A client on 127.0.0.3 that
authenticates correctly is unaffected: its mail reaches smtp-sink. Skips loudly without
root, postfix, swaks or dovecot-core.
"""
import json
import os
import re
import sys
import unittest

from dovecot import Dovecot, unavailable as dovecot_unavailable
from ports import free_port, wait_for
from postfix_instance import PostfixInstance, SWAKS_BIN
from postsurge import Postsurge
import testmain

SOURCE_ROOT = os.environ.get("SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
LIMIT = 3
USER, PASSWORD = "alice@postsurge.test", "right-horse-battery"


def why_skip():
    if dovecot_unavailable():
        return dovecot_unavailable()
    for p in ("/usr/sbin/postfix", SWAKS_BIN):
        if not os.access(p, os.X_OK):
            return "%s is not installed" % p
    return None


def snippet(name):
    with open(os.path.join(SOURCE_ROOT, "postfix-snippets", name)) as f:
        return f.read()


def submission_options():
    """The -o lines of master.cf's submission example, uncommented, less TLS."""
    text = snippet("master.cf")
    block = text[text.index("#submission inet"):].splitlines()[1:]
    opts = []
    for line in block:
        if not line.startswith("#  -o "):
            break
        if "smtpd_tls_security_level" not in line:
            opts.append(line[1:])
    return opts


def mua_restrictions(port):
    """main.cf's mua_client_restrictions value, on the test's postsurge port."""
    m = re.search(r"^#mua_client_restrictions =\n#\s+(check_policy_service \{[^}]*\})",
                  snippet("main.cf"), re.M)
    return m.group(1).replace("inet:127.0.0.1:10040", "inet:127.0.0.1:%d" % port)


@unittest.skipIf(why_skip(), "SASL e2e skipped: %s" % why_skip())
class SaslE2E(unittest.TestCase):
    def setUp(self):
        self.dv = Dovecot({USER: PASSWORD}).start()
        self.addCleanup(self.dv.stop)
        self.sub_port = free_port()
        self.ps = Postsurge(start=False, extra={})
        self.addCleanup(self.ps.cleanup)
        opts = submission_options()
        self.assertIn("  -o smtpd_delay_reject=no", opts)
        self.assertIn("  -o smtpd_client_restrictions=$mua_client_restrictions", opts)
        self.pf = PostfixInstance(
            mynetworks="127.0.0.1/32",
            main_extra=self.dv.postfix_main_cf() + [
                "mua_client_restrictions = " + mua_restrictions(self.ps.port)],
            master_extra=["127.0.0.1:%d inet n - n - - smtpd" % self.sub_port] + opts)
        self.pf.start()
        self.addCleanup(self.pf.stop)
        self.ps.write_config({
            "postfix_config_directory": self.pf.dir,
            "maillog_file": self.pf.maillog_path,
            "monitor_interval": "250ms",
            "stress_overrides": "no",
            "attack_auth_failure_limit": str(LIMIT),
            "node_name": "sasl-e2e",
        })
        self.ps.start()

    def tearDown(self):
        res = getattr(self._outcome, "result", None)
        if res and any(t is self for t, _ in res.failures + res.errors):
            sys.stderr.write("--- postsurge log tail ---\n" + self.ps.log()[-3000:])
            sys.stderr.write("--- maillog tail ---\n" + self.pf.maillog()[-4000:])
            sys.stderr.write("--- dovecot log ---\n" + self.dv.log()[-2000:])

    def swaks(self, source, password, to=None):
        return self.pf._run([
            SWAKS_BIN, "--server", "127.0.0.1:%d" % self.sub_port, "--local-interface", source,
            "--auth", "PLAIN", "--auth-user", USER, "--auth-password", password,
            "--from", USER, "--to", to or "rcpt@" + self.pf.sink_domain,
            "--helo", "client.example.org", "--timeout", "30s"], check=False, timeout=60)

    def test_sasl_e2e_guesser_refused_at_next_connection(self):
        pf, ps = self.pf, self.ps
        # The good client before the attack: authenticated (235), its mail delivered.
        r = self.swaks("127.0.0.3", PASSWORD, to="before@" + pf.sink_domain)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("235 2.7.0 Authentication successful", r.stdout)
        # The guesser: LIMIT sessions, one wrong password each (535).
        for i in range(LIMIT):
            r = self.swaks("127.0.0.2", "guess-%d" % i)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("535 5.7.8 Error: authentication failed", r.stdout)
        fails = pf.wait_maillog(r"warning: \S+\[127\.0\.0\.2\]: SASL PLAIN authentication "
                                r"failed: .*sasl_username=" + re.escape(USER), count=LIMIT)
        self.assertEqual(len(fails), LIMIT, pf.maillog())
        self.assertTrue(ps.wait_log("event attack-flagged: client 127.0.0.2", timeout=30),
                        ps.log())
        ev = [e for e in json.loads(ps.cli("events", "--json").stdout)["events"]
              if e["kind"] == "attack-flagged"]
        self.assertEqual([(e["client"], e["reason"], e["count"]) for e in ev],
                         [("127.0.0.2", "auth-failures", LIMIT)], ev)
        # Its next connection: refused at CONNECT with attack_action, hung up on before any
        # AUTH; the node is not stressed.
        r = self.swaks("127.0.0.2", PASSWORD)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("<** 421 4.7.0 <unknown[127.0.0.2]>: Client host rejected: Too many "
                      "errors from your address", r.stdout)
        self.assertNotIn("AUTH", r.stdout)
        self.assertTrue(pf.wait_maillog(r"NOQUEUE: reject: CONNECT from \S+\[127\.0\.0\.2\]: "
                                        r"421 4\.7\.0 <\S+>: Client host rejected: Too many",
                                        timeout=10), pf.maillog())
        st = json.loads(ps.cli("status", "--json").stdout)["nodes"][0]
        self.assertFalse(st["stress"], st)
        self.assertEqual(st["flagged_clients"], 1, st)
        # The good client from another address: unaffected, delivered.
        r = self.swaks("127.0.0.3", PASSWORD, to="after@" + pf.sink_domain)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("235 2.7.0 Authentication successful", r.stdout)
        self.assertTrue(pf.wait_queue_empty(60), pf.queue_json())
        want = ["<after@%s>" % pf.sink_domain, "<before@%s>" % pf.sink_domain]
        self.assertTrue(wait_for(lambda: sorted(pf.sink.recipients()) == want, 30),
                        pf.sink.recipients())
        print("\nguesser flagged after %d failures; refused at CONNECT: %s"
              % (LIMIT, [l for l in pf.maillog().splitlines() if "reject: CONNECT" in l][0]))


if __name__ == "__main__":
    testmain.main()
