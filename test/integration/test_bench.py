"""The benchmark script works: `test/bench/run` starts postsurge's DUNNO mode and the
epoll-dunno yardstick (test/bench/dunno_server), drives both with loadgen, and prints the
table and the RATIO lines the README describes (against the yardstick, and ten rules
against three). Nothing here judges a speed: a figure only
has to be there and be a number, and every reply has to be right (errors=0)."""
import os
import re
import subprocess
import unittest

import testmain

BUILD = os.environ.get("BUILD_ROOT", "build")
SOURCE = os.environ.get("SOURCE_ROOT", ".")


class BenchScriptTest(unittest.TestCase):
    def test_postsurge_beside_the_yardstick(self):
        env = dict(os.environ, BENCH_PEERS="postsurge epoll-dunno", BENCH_CONNS="1 8",
                   BENCH_REPEAT="1", BENCH_WARMUP="0.1")
        r = subprocess.run(["sh", os.path.join(SOURCE, "test", "bench", "run"), BUILD, "0.5"],
                           env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for peer in ("postsurge", "epoll-dunno"):
            for c in (1, 8):
                m = re.search(r"^LOADGEN label=%s conns=%d .* rps=([0-9]+) .* errors=0 "
                              r"conn_errors=0 .*cpu_us_per_req=([0-9.]+) actions=DUNNO:[0-9]+"
                              % (re.escape(peer), c), r.stdout, re.M)
                self.assertIsNotNone(m, "no clean result for %s at %d:\n%s" % (peer, c, r.stdout))
                self.assertGreater(int(m.group(1)), 0)
        m = re.search(r"^RATIO postsurge/epoll-dunno req/s % and cpu_us/req x by connections:"
                      r" 1:([0-9]+)%/([0-9.]+)x 8:([0-9]+)%/([0-9.]+)x$", r.stdout, re.M)
        self.assertIsNotNone(m, r.stdout)
        self.assertGreater(float(m.group(2)), 0)

    def test_ten_rules_beside_three(self):
        # ps-rules (ten rules with conditions and a 100,000-entry table) and ps-mem3 (three
        # rules): both answer every request, and the paired RATIO line (#14's figure) is
        # printed for each connection count, one ratio per repeat pair.
        env = dict(os.environ, BENCH_PEERS="ps-mem3 ps-rules", BENCH_CONNS="1 8",
                   BENCH_REPEAT="3", BENCH_WARMUP="0.1")
        r = subprocess.run(["sh", os.path.join(SOURCE, "test", "bench", "run"), BUILD, "0.3"],
                           env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for peer in ("ps-mem3", "ps-rules"):
            runs = re.findall(r"^REPEAT label=%s conns=8 .* errors=0 conn_errors=0 .*"
                              r"actions=DUNNO:[0-9]+$" % peer, r.stdout, re.M)
            self.assertEqual(len(runs), 3, r.stdout)
        m = re.search(r"^RATIO ps-rules/ps-mem3 req/s % and cpu_us/req x, median of 3 paired "
                      r"runs, by connections: 1:([0-9.]+)%/([0-9.]+)x 8:([0-9.]+)%/([0-9.]+)x$",
                      r.stdout, re.M)
        self.assertIsNotNone(m, r.stdout)
        self.assertGreater(float(m.group(3)), 0)
        self.assertGreater(float(m.group(4)), 0)


if __name__ == "__main__":
    testmain.main()
