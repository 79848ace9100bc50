"""The Redis store when Redis misbehaves, driven through `store_contract --driver`: two
stores on one Redis (two nodes) enforce one combined limit exactly; SCRIPT FLUSH under
load is survived; a killed Redis means answers from local counters and a restarted one
means shared counting again; a stopped Redis (SIGSTOP) means answers on the timeout.
Every request gets an answer. Latencies are checked only against hang guards."""
import time
import unittest

from redis_server import Nutcracker, RedisServer
from store_driver import ETIMEDOUT, HANG_GUARD_US, TIMEOUT_MS, Driver
import testmain


class StoreRedis(unittest.TestCase):
    def combined_limit(self, url, prefix):
        with Driver(url, prefix) as d:
            results = [d.take("ab"[i % 2], "combined", 10) for i in range(30)]
            self.assertTrue(all(r[0] == 0 for r in results), results)
            allowed = [r for r in results if r[2] == 1]
            self.assertEqual(len(allowed), 10)
            self.assertEqual([r[3] for r in allowed], list(range(1, 11)))
            self.assertTrue(all(r[2] == 1 for r in results[:10]))

    def test_store_redis_two_nodes_one_limit(self):
        with RedisServer() as r:
            self.combined_limit(r.url, "two:")

    def test_store_redis_two_nodes_one_limit_through_nutcracker(self):
        with RedisServer() as r1, RedisServer() as r2, Nutcracker([r1, r2]) as nc:
            self.combined_limit(nc.url, "two:")
            # Several keys, each counted exactly, wherever the proxy put it.
            with Driver(nc.url, "many:") as d:
                for k in range(32):
                    counts = [d.take("ab"[i % 2], "k%d" % k, 2)[3] for i in range(3)]
                    self.assertEqual(counts, [1, 2, 2])
            self.assertTrue(r1.command("KEYS", "many:*"))
            self.assertTrue(r2.command("KEYS", "many:*"))

    def script_flush_survived(self, url, servers):
        with Driver(url, "flush:") as d:
            for i in range(300):
                if i % 50 == 25:
                    for s in servers:
                        self.assertEqual(s.command("SCRIPT", "FLUSH"), "OK")
                st, us, allowed, count = d.take("ab"[i % 2], "k%d" % (i % 3), 1000)
                self.assertEqual(st, 0, "take %d" % i)
                self.assertEqual((allowed, count), (1, i // 3 + 1))
            noscript = d.stats("a")["noscript"] + d.stats("b")["noscript"]
            self.assertGreaterEqual(noscript, 6)

    def test_store_redis_script_flush_survived(self):
        with RedisServer() as r:
            self.script_flush_survived(r.url, [r])

    def test_store_redis_script_flush_survived_through_nutcracker(self):
        with RedisServer() as r1, RedisServer() as r2, Nutcracker([r1, r2]) as nc:
            self.script_flush_survived(nc.url, [r1, r2])

    def test_store_redis_killed_then_back(self):
        with RedisServer() as r, Driver(r.url, "kill:") as d:
            for i in range(6):
                self.assertEqual(d.take("ab"[i % 2], "k", 8)[:4:2], (0, 1))
            r.kill()
            # Every take is answered, from each node's own local counters (which start
            # empty), with a failure status; none waits for Redis.
            local = {"a": [], "b": []}
            for i in range(40):
                st, us, allowed, count = d.take("ab"[i % 2], "k", 8)
                self.assertLess(st, 0)
                self.assertLess(us, TIMEOUT_MS * 1000 + HANG_GUARD_US)
                local["ab"[i % 2]].append((allowed, count))
            for node in "ab":
                self.assertEqual(local[node], [(1, n) for n in range(1, 9)] + [(0, 8)] * 12)
            self.assertEqual(d.stats("a")["connected"], 0)
            r.start()  # same port, empty (no persistence)
            first = d.wait_shared("k", 8)
            # Shared counting again: both nodes see one counter.
            self.assertEqual(first[2:], (1, 1))
            while d.take("b", "k", 8)[0] != 0:
                time.sleep(0.05)
            counts = [d.take("ab"[i % 2], "k", 8)[3] for i in range(8)]
            self.assertEqual(counts, [3, 4, 5, 6, 7, 8, 8, 8])
            self.assertGreater(d.stats("a")["reconnects"], 0)
            # The outage's local counters were dropped when Redis came back (memory is
            # returned), so a second outage counts afresh from 1.
            self.assertEqual(d.stats("a")["entries"], 0)
            self.assertEqual(d.stats("b")["entries"], 0)
            r.kill()
            st, _, allowed, count = d.take("a", "k", 8)
            self.assertLess(st, 0)
            self.assertEqual((allowed, count), (1, 1))
            self.assertEqual(d.stats("a")["entries"], 1)
            r.start()
            d.wait_shared("k", 8)
            err = d.close()
            self.assertIn("is back", err)
            self.assertIn("answering from local counters", err)

    def test_store_redis_stopped_times_out(self):
        with RedisServer() as r, Driver(r.url, "stop:") as d:
            self.assertEqual(d.take("a", "k", 100)[:4:2], (0, 1))
            r.pause()
            try:
                t0 = time.monotonic()
                statuses = []
                for i in range(12):
                    st, us, allowed, count = d.take("a", "k", 100)
                    self.assertLess(st, 0)
                    # Answered while Redis is still stopped: by our timer, not by Redis.
                    self.assertLess(us, HANG_GUARD_US)
                    self.assertEqual((allowed, count), (1, i + 1))
                    statuses.append(st)
                self.assertIn(-ETIMEDOUT, statuses)
                stopped_for = time.monotonic() - t0
                self.assertGreater(d.stats("a")["timeouts"], 0)
            finally:
                r.resume()
            # The answers came while Redis was stopped, so none can have come from it.
            self.assertGreater(stopped_for, 0)
            r0 = d.wait_shared("k", 100)
            self.assertEqual(r0[2], 1)
            self.assertGreaterEqual(r0[3], 2)

    def test_store_redis_late_reply_ignored(self):
        # A stop shorter than the stall limit: the connection stays, the timed-out
        # request's reply arrives late and must be dropped without harm.
        with RedisServer() as r, Driver(r.url, "late:") as d:
            self.assertEqual(d.take("a", "k", 100)[:4:2], (0, 1))
            r.pause()
            try:
                st, us, allowed, count = d.take("a", "k", 100)
            finally:
                r.resume()
            self.assertEqual(st, -ETIMEDOUT)
            self.assertEqual((allowed, count), (1, 1))  # local counters start empty
            # Redis counted the late one too; no reconnect was needed.
            st, us, allowed, count = d.take("b", "k", 100)
            self.assertEqual((st, allowed, count), (0, 1, 3))
            self.assertEqual(d.stats("a")["reconnects"], 0)
            self.assertEqual(d.stats("a")["connected"], 1)

    def test_store_redis_dunno_gives_no_results(self):
        with RedisServer() as r, Driver(r.url, "dunno:", action="dunno") as d:
            self.assertEqual(d.take("a", "k", 5)[:4:2], (0, 1))
            r.kill()
            st, us, allowed, count = d.take("a", "k", 5)
            self.assertLess(st, 0)
            self.assertEqual((allowed, count), (None, None))

    def test_store_redis_wrong_password_answers_locally(self):
        with RedisServer(password="right") as r:
            url = "redis://:wrong@127.0.0.1:%d" % r.port
            with Driver(url, "pw:") as d:
                for i in range(3):
                    st, us, allowed, count = d.take("a", "k", 5)
                    self.assertLess(st, 0)
                    self.assertEqual((allowed, count), (1, i + 1))
                err = d.close()
            self.assertIn("AUTH refused", err)


if __name__ == "__main__":
    testmain.main()
