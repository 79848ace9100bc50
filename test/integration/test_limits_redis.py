"""Rate limits in the real daemon on a real Redis (issue 3): two postsurge processes on one
redis-server, and through nutcracker in front of two, enforce one combined limit exactly;
Redis killed mid-load and restarted: every request answered within redis_timeout plus
a margin (README: "within `redis_timeout` with Redis"), then shared counting resumes; SCRIPT FLUSH mid-load survived with
exact counts; a SIGSTOPped Redis for 5 s: answers from local counters; SIGHUP keeps the
counters of unchanged rules in Redis. Env: POSTSURGE, PYTHONPATH=test/pylib."""
import json
import os
import sys
import time
import unittest

from postsurge import SLOW, Postsurge, request
from redis_server import Nutcracker, RedisServer
import testmain

DEFER = "450 4.7.1 Rate limit exceeded, try again later"
# Generous where exact counts are asserted: a reply slower than this (a busy CI machine)
# would be answered from local counters and make the shared count inexact.
SLOW_OK = "3s"
# The bound on one decision while Redis fails (README: answered "within `redis_timeout`
# with Redis"): redis_timeout plus this margin for the test client's round trip, the
# event loop's turn and a loaded 2-core CI machine; stretched under a memory checker.
LATENCY_MARGIN_S = 0.3 * SLOW


def config(url, lines, **extra):
    text = ("monitor = no\nhttp_listen =\nstore = %s\nstore_key_prefix = t%d:\n"
            "limits =\n" % (url, int(time.time() * 1000) % 100000))
    text += "".join("    %s\n" % l for l in lines)
    for k, v in extra.items():
        text += "%s = %s\n" % (k, v)
    return text


class LimitsRedis(unittest.TestCase):
    def redis(self):
        r = RedisServer()
        self.addCleanup(r.remove)
        return r

    def daemons(self, text, n=2):
        out = []
        for _ in range(n):
            ps = Postsurge(extra=text, args=["-v"] if os.environ.get("LIMITS_TEST_VERBOSE") else [])
            self.addCleanup(ps.cleanup)
            out.append(ps)
        return out

    def alternate(self, clients, n_each, tag, **attrs):
        """n_each requests per client, alternating, distinct recipients; the replies."""
        out = []
        for i in range(n_each):
            for k, c in enumerate(clients):
                out.append(c.ask(request(recipient="r%d-%d-%s@example.com" % (k, i, tag),
                                         client_port=str(3000 + k), **attrs)))
        return out

    def combined_limit(self, url):
        a, b = self.daemons(config(url, ["per_ip client_address recipients 100/1m"],
                                   redis_timeout=SLOW_OK))
        with a.client() as ca, b.client() as cb:
            out = self.alternate([ca, cb], 60, "c")
        self.assertEqual(out.count("DUNNO"), 100, out)
        self.assertEqual(out.count(DEFER + " (per_ip)"), 20, out)
        for ps in (a, b):
            self.assertNotIn("local counters", ps.log())
        return a, b

    def test_limits_redis_two_daemons_one_limit(self):
        r = self.redis()
        self.combined_limit(r.url)
        # One key for the rule, with a TTL (the window plus a margin).
        keys = r.command("KEYS", "*per_ip*")
        self.assertEqual(len(keys), 1, keys)
        self.assertGreater(r.command("PTTL", keys[0]), 0)

    def test_limits_redis_two_daemons_through_nutcracker(self):
        r1, r2 = self.redis(), self.redis()
        with Nutcracker([r1, r2]) as nc:
            self.combined_limit(nc.url)

    def show_reset_cluster_wide(self, url):
        # Node a exhausts a key; node b shows what a's client experienced and resets it
        # for both: a admits again at once.
        a, b = self.daemons(config(url, ["per_ip client_address recipients 5/1h"],
                                   redis_timeout=SLOW_OK))
        with a.client() as ca:
            out = self.alternate([ca], 7, "s", client_address="198.51.100.9")
            self.assertEqual(out, ["DUNNO"] * 5 + [DEFER + " (per_ip)"] * 2)
            r = b.cli("limits", "show", "per_ip", "198.51.100.9", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            o = json.loads(r.stdout)
            self.assertEqual((o["count"], o["limit"], o["admitted_now"]), (5, 5, False))
            r = b.cli("limits", "reset", "per_ip", "198.51.100.9")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("counter reset (redis store)", r.stdout)
            out = self.alternate([ca], 1, "t", client_address="198.51.100.9")
            self.assertEqual(out, ["DUNNO"])
        o = json.loads(a.cli("limits", "show", "per_ip", "198.51.100.9", "--json").stdout)
        self.assertEqual(o["count"], 1)

    def test_limits_redis_show_and_reset_cluster_wide(self):
        self.show_reset_cluster_wide(self.redis().url)

    def test_limits_redis_show_and_reset_through_nutcracker(self):
        r1, r2 = self.redis(), self.redis()
        with Nutcracker([r1, r2]) as nc:
            self.show_reset_cluster_wide(nc.url)

    def test_limits_redis_killed_and_restarted(self):
        r = self.redis()
        a, b = self.daemons(config(r.url, ["per_ip client_address recipients 1000/1m",
                                           "per_dom recipient_domain recipients 10/1m"],
                                   redis_timeout="200ms", redis_reconnect_max="500ms"))
        worst = 0.0
        answered = 0
        with a.client() as ca, b.client() as cb:
            for i in range(150):
                if i == 40:
                    r.kill()
                if i == 100:
                    r.start()
                for k, c in enumerate((ca, cb)):
                    t0 = time.monotonic()
                    reply = c.ask(request(recipient="k%d@%d-%d.example" % (i, k, i)))
                    worst = max(worst, time.monotonic() - t0)
                    self.assertIn(reply, ("DUNNO", DEFER + " (per_ip)"))
                    answered += 1
            self.assertEqual(answered, 300)
            print("\nredis killed/restarted: 300 requests answered, slowest reply %.1f ms "
                  "(redis_timeout 200 ms)" % (worst * 1000), file=sys.stderr)
            self.assertLess(worst, 0.2 + LATENCY_MARGIN_S,
                            "a decision took %.0f ms with Redis killed: over redis_timeout "
                            "200 ms + %.0f ms margin" % (worst * 1000, LATENCY_MARGIN_S * 1000))
            # Both daemons go back to Redis by themselves (backoff at most 500 ms).
            probe = 0
            for ps, c in ((a, ca), (b, cb)):
                deadline = time.monotonic() + 30
                while "is back" not in ps.log() and time.monotonic() < deadline:
                    probe += 1  # a new recipient: a repeat would be answered from the session
                    c.ask(request(recipient="p%d@example.com" % probe, client_address="192.0.2.99"))
                    time.sleep(0.05)
                self.assertIn("is back", ps.log())
            # Shared counting again: a fresh domain, 10 per minute, 6 through each daemon.
            out = []
            for i in range(6):
                for k, c in enumerate((ca, cb)):
                    out.append(c.ask(request(recipient="n%d-%d@after.example" % (k, i),
                                             client_port=str(7000 + k))))
        self.assertEqual(out.count("DUNNO"), 10, out)
        self.assertEqual(out.count(DEFER + " (per_dom)"), 2, out)

    def test_limits_redis_script_flush_survived(self):
        r = self.redis()
        a, b = self.daemons(config(r.url, ["per_ip client_address recipients 100/1m",
                                           "per_snd sender recipients 1000/1m"],
                                   redis_timeout=SLOW_OK))
        with a.client() as ca, b.client() as cb:
            out = self.alternate([ca, cb], 25, "x")
            self.assertEqual(r.command("SCRIPT", "FLUSH"), "OK")
            out += self.alternate([ca, cb], 35, "y")
        self.assertEqual(out.count("DUNNO"), 100)
        self.assertEqual(out.count(DEFER + " (per_ip)"), 20)
        for ps in (a, b):
            self.assertNotIn("warning", ps.log())

    def test_limits_redis_stopped_answers_from_local_counters(self):
        r = self.redis()
        (a,) = self.daemons(config(r.url, ["per_ip client_address recipients 10/1m"],
                                   redis_timeout="100ms", redis_reconnect_max="500ms"), n=1)
        with a.client() as c:
            self.assertEqual(c.ask(request(client_address="192.0.2.5")), "DUNNO")
            r.pause()
            try:
                out, worst = [], 0.0
                t_end = time.monotonic() + 5
                i = 0
                while time.monotonic() < t_end and i < 1000:
                    t0 = time.monotonic()
                    out.append(c.ask(request(recipient="s%d@example.com" % i,
                                             client_address="192.0.2.6")))
                    worst = max(worst, time.monotonic() - t0)
                    i += 1
                    time.sleep(0.01)  # spread over the 5 s, as mail arrives
            finally:
                r.resume()
            print("\nredis stopped 5 s: %d requests answered, slowest %.1f ms" %
                  (len(out), worst * 1000), file=sys.stderr)
            self.assertLess(worst, 0.1 + LATENCY_MARGIN_S,
                            "a decision took %.0f ms with Redis stopped: over redis_timeout "
                            "100 ms + %.0f ms margin" % (worst * 1000, LATENCY_MARGIN_S * 1000))
            # This node's own counters enforce the limit meanwhile.
            self.assertGreater(len(out), 10)
            self.assertEqual(out[:10], ["DUNNO"] * 10)
            self.assertEqual(set(out[10:]), {DEFER + " (per_ip)"})
            self.assertIn("answering from local counters", a.log())
            deadline = time.monotonic() + 30
            while "is back" not in a.log() and time.monotonic() < deadline:
                i += 1
                c.ask(request(recipient="p%d@example.com" % i, client_address="192.0.2.99"))
                time.sleep(0.05)
            self.assertIn("is back", a.log())

    def test_limits_redis_reload_keeps_counters(self):
        r = self.redis()
        url = r.url
        text = config(url, ["keep client_address recipients 10/1m"], redis_timeout=SLOW_OK)
        (a,) = self.daemons(text, n=1)
        with a.client() as c:
            self.assertEqual([c.ask(request(recipient="a%d@x.example" % i)) for i in range(6)],
                             ["DUNNO"] * 6)
            # A new rule first, then keep with a lower limit: same key, same counter.
            a.write_config(text.replace("keep client_address recipients 10/1m",
                                        "other sender messages 5/1h\n"
                                        "    keep client_address recipients 8/1m"))
            mark = a.reload()
            self.assertTrue(a.wait_log("reload: 2 rate-limit rules", since=mark), a.log())
            out = [c.ask(request(recipient="b%d@x.example" % i, client_port="5"))
                   for i in range(4)]
        self.assertEqual(out, ["DUNNO", "DUNNO", DEFER + " (keep)", DEFER + " (keep)"])

    def test_limits_redis_reload_switches_store(self):
        r = self.redis()
        text = config("memory", ["per_ip client_address recipients 5/1m"],
                      redis_timeout=SLOW_OK)
        (a,) = self.daemons(text, n=1)
        with a.client() as c:
            self.assertEqual(c.ask(request(recipient="m@x.example")), "DUNNO")
            a.write_config(text.replace("store = memory", "store = " + r.url))
            mark = a.reload()
            self.assertTrue(a.wait_log("store: redis at", since=mark), a.log())
            # The counters now live in Redis (fresh there: 5 more admitted).
            out = [c.ask(request(recipient="s%d@x.example" % i)) for i in range(6)]
        self.assertEqual(out, ["DUNNO"] * 5 + [DEFER + " (per_ip)"])
        self.assertEqual(len(r.command("KEYS", "*per_ip*")), 1)


if __name__ == "__main__":
    testmain.main()
