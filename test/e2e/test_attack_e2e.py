"""End to end (issue 16): attacks against a real Postfix 3.7 whose submission service
authenticates with Dovecot SASL (a passwd-file user database in the test's directory,
Dovecot on a private auth socket, stopped by PID). The submission service is
postfix-snippets/master.cf's example 4 (less TLS: no certificate here) with
postfix-snippets/main.cf's $mua_client_restrictions pointed at the test's postsurge.

- Password guessing from one address: a client on 127.0.0.2 fails AUTH (swaks, wrong
  password) attack_auth_failure_limit times; postsurge reads the failures in the mail log,
  flags it, and smtpd hangs up on its next connection with attack_action at CONNECT,
  without any stress. A client on 127.0.0.3 that authenticates correctly is unaffected:
  its mail reaches smtp-sink.
- Attacks from many addresses as a stress signal: `User unknown` rejects (RCPTs to
  unknown local users) or AUTH failures from 127.0.0.2-127.0.0.6, none of them enough to
  flag one client, go over attack_stress_*_rate per minute: the node enters stress and
  the stress-enter event names the attack.

Skips loudly without root, postfix, swaks or dovecot-core.
"""
import json
import os
import re
import smtplib
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

    def start_postsurge(self, **settings):
        cfg = {
            "postfix_config_directory": self.pf.dir,
            "maillog_file": self.pf.maillog_path,
            "monitor_interval": "250ms",
            "stress_overrides": "no",
            "node_name": "attack-e2e",
        }
        cfg.update({k: str(v) for k, v in settings.items()})
        self.ps.write_config(cfg)
        self.ps.start()
        # The monitor has seen master (log signals count only while it runs).
        self.assertTrue(self.ps.wait_log("override profile:", timeout=30), self.ps.log())

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

    def test_attack_e2e_guesser_refused_at_next_connection(self):
        self.start_postsurge(attack_auth_failure_limit=LIMIT)
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

    def check_attack_stress(self, what, lines, rate, setting):
        """The node entered stress once, at once, the event naming the attack, and no
        single client was flagged."""
        ps = self.ps
        self.assertTrue(ps.wait_log("event stress-enter", timeout=30), ps.log())
        evs = json.loads(ps.cli("events", "--json").stdout)["events"]
        ev = [e for e in evs if e["kind"] == "stress-enter"]
        self.assertEqual(len(ev), 1, ev)
        self.assertIn("enter: attack: %s: %s across the cluster reached %d within 60 s (%s)"
                      % (what, lines, rate, setting), ev[0]["text"])
        self.assertTrue(ev[0]["attack"].startswith(what + ": "), ev[0])
        self.assertNotIn("event attack-flagged", ps.log())
        self.assertTrue(json.loads(ps.cli("status", "--json").stdout)["nodes"][0]["stress"])
        print("\n" + ev[0]["text"])

    def test_attack_e2e_unknown_user_flood_enters_stress(self):
        # 5 addresses x 6 RCPTs to unknown local users: 30 rejects within a minute, over
        # a rate of 20; no client reaches attack_unknown_user_limit (20).
        self.start_postsurge(attack_stress_unknown_user_rate=20)
        pf, ps = self.pf, self.ps
        for k in range(2, 7):
            with smtplib.SMTP("127.0.0.1", pf.port, source_address=("127.0.0.%d" % k, 0),
                              timeout=30) as s:
                s.ehlo("harvester.example")
                s.mail("probe@example.org")
                for i in range(6):
                    code, _ = s.rcpt("nobody%d-%d@mx.postsurge.test" % (k, i))
                    self.assertEqual(code, 550)
        self.assertEqual(len(pf.wait_maillog(r"reject: RCPT from \S+\[127\.0\.0\.[2-6]\]: "
                                             r"550 5\.1\.1 .*User unknown", count=30)), 30)
        self.check_attack_stress("dictionary harvest", '"User unknown" rejects', 20,
                                 "attack_stress_unknown_user_rate")

    def test_attack_e2e_auth_failure_flood_enters_stress(self):
        # 5 addresses x 2 AUTH failures: 10 within a minute, over a rate of 8; no client
        # reaches attack_auth_failure_limit (3).
        self.start_postsurge(attack_stress_auth_failure_rate=8, attack_auth_failure_limit=LIMIT)
        pf, ps = self.pf, self.ps
        for k in range(2, 7):
            for i in range(2):
                r = self.swaks("127.0.0.%d" % k, "guess-%d" % i)
                self.assertIn("535 5.7.8 Error: authentication failed", r.stdout)
        self.check_attack_stress("password guessing", "SASL authentication failures", 8,
                                 "attack_stress_auth_failure_rate")

if __name__ == "__main__":
    testmain.main()
