"""The Redis store when Redis misbehaves, driven through `store_contract --driver`: two
stores on one Redis (two nodes) enforce one combined limit exactly; SCRIPT FLUSH under
load is survived; a killed Redis means answers from local counters and a restarted one
means shared counting again; a stopped Redis (SIGSTOP) means answers on the timeout.
Every request gets an answer. Latencies are checked only against hang guards."""
import os
import subprocess
import time
import unittest

from redis_server import Nutcracker, RedisServer
import testmain

CONTRACT = os.path.join(os.environ.get("BUILD_ROOT", "build"), "test", "integration",
                        "store_contract")
TIMEOUT_MS = 300  # redis_timeout for the driver: above scheduling noise on a busy CI
ETIMEDOUT = 110
HANG_GUARD_US = 5_000_000
W = 3_600_000  # an hour: nothing slides during a test


class Driver:
    """store_contract --driver: stores "a" and "b" on one URL, one command per line."""

    def __init__(self, url, prefix, action="local", timeout_ms=TIMEOUT_MS):
        # STORE_DRIVER_WRAPPER="valgrind -q --error-exitcode=9" checks memory use.
        wrapper = os.environ.get("STORE_DRIVER_WRAPPER", "").split()
        self.p = subprocess.Popen(wrapper + [CONTRACT, "--driver", url, prefix, action,
                                             str(timeout_ms)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        self.now = 1_700_000_000_000

    def take(self, store, key, limit, amount=1, window=W):
        """Returns (status, latency_us, allowed or None, count or None)."""
        self.now += 1
        self.p.stdin.write("take %s %d %s %d %d %d\n" % (store, self.now, key, window, limit,
                                                          amount))
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError("driver died: " + self.p.stderr.read())
        f = line.split()
        if f[0] == "error":
            raise AssertionError(line)
        allowed = None if f[2] == "-" else int(f[2])
        count = None if f[3] == "-" else int(f[3])
        return int(f[0]), int(f[1]), allowed, count

    def stats(self, store="a"):
        self.p.stdin.write("stats %s\n" % store)
        self.p.stdin.flush()
        f = [int(x) for x in self.p.stdout.readline().split()]
        return dict(zip(("connected", "local", "timeouts", "noscript", "reconnects",
                         "failures", "entries"), f))

    def close(self):
        """Quits and checks a clean exit: every handle closed, uv_loop_close() == 0."""
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.close()
                rc = self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise AssertionError("driver did not quit")
            err = self.p.stderr.read()
            self.p.stderr.close()
            self.p.stdout.close()
            if rc != 0:
                raise AssertionError("driver exit %d: %s" % (rc, err))
            return err
        return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()

    def wait_shared(self, key, limit=10**9, deadline_s=30):
        """Takes on store a until Redis answers again (status 0). Returns the result."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            r = self.take("a", key, limit)
            if r[0] == 0:
                return r
            time.sleep(0.05)
        raise AssertionError("Redis never answered again")


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
