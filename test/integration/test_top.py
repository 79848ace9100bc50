"""`postsurge top` against a real daemon: under tmux (a terminal) it shows the node with
Stress N, then Y within a few seconds of `postsurge stress enter` without being
restarted, the refused sender with its control characters neutralised, and quits on `q`;
with output that is not a terminal it prints one snapshot and exits 0."""
import os
import shutil
import subprocess
import time
import unittest

from postsurge import Postsurge, POSTSURGE, request
from ports import free_port, tcp_listening, wait_for
import testmain

TMUX = shutil.which("tmux")
SENDER = "evil\x1b[2Jsender@example.org"


class TopTest(unittest.TestCase):
    def daemon(self):
        hp = free_port()
        ps = Postsurge(extra={"http_listen": "inet:127.0.0.1:%d" % hp, "node_name": "top1",
                              "limits": "per_sender sender recipients 1/1m",
                              "stress_overrides": "no", "monitor_interval": "200ms",
                              "stress_min_interval": "0"})
        self.addCleanup(ps.cleanup)
        self.assertTrue(wait_for(lambda: tcp_listening(hp), 15), ps.log())
        with ps.client() as c:
            for i in range(2):
                c.ask(request(sender=SENDER, recipient="r%d@example.com" % i))
        return ps

    def test_top_snapshot_when_not_a_tty(self):
        ps = self.daemon()
        r = ps.cli("top")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\x1b", r.stdout)
        self.assertIn("top1", r.stdout)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("top1 ")][0]
        self.assertEqual(line.split()[1], "N")
        self.assertIn("per_sender", r.stdout)
        self.assertIn("evil?[2jsender@example.org", r.stdout)  # keys are lower case

    def test_top_under_tmux_refreshes_and_quits_on_q(self):
        if not TMUX:
            self.skipTest("tmux is not installed")
        ps = self.daemon()
        sock = os.path.join(ps.dir, "tmux.sock")
        tmux = [TMUX, "-S", sock]
        cmd = "%s -c %s top" % (POSTSURGE, ps.config_path)
        subprocess.run(tmux + ["new-session", "-d", "-s", "top", "-x", "160", "-y", "50",
                               "sh -c '%s; echo TOP-EXIT=$?; sleep 30'" % cmd], check=True)
        self.addCleanup(subprocess.run, tmux + ["kill-server"], capture_output=True)

        def screen():
            return subprocess.run(tmux + ["capture-pane", "-p", "-t", "top"],
                                  capture_output=True, text=True).stdout

        def stress():
            for ln in screen().splitlines():
                if ln.startswith("top1 "):
                    return ln.split()[1]
            return None
        self.assertTrue(wait_for(lambda: stress() == "N", 10), screen())
        self.assertIn("(q quits)", screen())
        self.assertIn("evil?[2jsender@example.org", screen())
        r = ps.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        t0 = time.time()
        self.assertTrue(wait_for(lambda: stress() == "Y", 5), screen())
        self.assertLess(time.time() - t0, 5)
        self.assertTrue(wait_for(lambda: "stress-enter" in screen(), 5), screen())
        subprocess.run(tmux + ["send-keys", "-t", "top", "q"], check=True)
        self.assertTrue(wait_for(lambda: "TOP-EXIT=0" in screen(), 5), screen())
        ps.cli("stress", "exit")


if __name__ == "__main__":
    testmain.main()
