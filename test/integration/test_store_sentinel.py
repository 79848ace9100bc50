"""The redis-sentinel:// store against a real Sentinel set (a master, a replica, three
sentinels, all on loopback): the store contract passes; two stores (two nodes) enforce
one combined limit exactly; the master killed under a stream of takes means every take
answered within redis_timeout plus a margin and shared counting on the promoted replica
afterwards; a sentinel that does not know the master, sentinels that do not answer and a
sentinel that names a replica give clear log lines and answers within the timeout."""
import os
import time
import unittest

from ports import free_port
from redis_server import RedisServer, SentinelSet
from store_driver import WRAPPED, Driver, FakeRedis, assert_in_time, run_contract
import testmain


class FakeSentinel(FakeRedis):
    """A sentinel that names a fixed address for any master (and accepts SUBSCRIBE), to
    see what the store does when a sentinel names a replica."""

    def __init__(self, ip, port):
        self.answer_addr = (ip.encode(), str(port).encode())
        self.asked = 0
        super().__init__()

    def answer(self, args):
        if args[0] == b"SENTINEL":
            self.asked += 1
            ip, port = self.answer_addr
            return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(ip), ip, len(port), port)
        if args[0] == b"SUBSCRIBE":
            return b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
        return b"+OK\r\n"


class StoreSentinel(unittest.TestCase):
    def test_store_sentinel_contract(self):
        with SentinelSet() as ss:
            rc, out = run_contract(ss.url())
            self.assertEqual(rc, 0, out)
            self.assertIn("against redis-sentinel://", out)
            self.assertTrue(ss.master.command("KEYS", "contract:*"))

    def test_store_sentinel_contract_with_passwords_and_db(self):
        with SentinelSet(password="data-pw", sentinel_password="sent-pw") as ss:
            os.environ["REDIS_SENTINEL_PASSWORD"] = "sent-pw"
            try:
                rc, out = run_contract(ss.url(db=2))
            finally:
                del os.environ["REDIS_SENTINEL_PASSWORD"]
            self.assertEqual(rc, 0, out)
            self.assertTrue(ss.master.command("KEYS", "contract:*", db=2))
            self.assertFalse(ss.master.command("KEYS", "contract:*", db=0))

    def test_store_sentinel_two_nodes_one_limit(self):
        with SentinelSet() as ss, Driver(ss.url(), "two:") as d:
            results = [d.take("ab"[i % 2], "combined", 10) for i in range(30)]
            self.assertTrue(all(r[0] == 0 for r in results), results)
            allowed = [r for r in results if r[2] == 1]
            self.assertEqual([r[3] for r in allowed], list(range(1, 11)))
            self.assertEqual(ss.master.command("KEYS", "two:*"), ["two:combined"])

    @unittest.skipIf(WRAPPED, "failover loop runs natively only (too slow under a wrapper)")
    def test_store_sentinel_failover_under_takes(self):
        with SentinelSet() as ss, Driver(ss.url(), "fo:") as d:
            old = ss.master_port()
            self.assertEqual(old, ss.master.port)
            for i in range(20):
                r = d.take("ab"[i % 2], "before", 10**6)
                self.assertEqual(r[0], 0)
            # Kill the master while both stores keep taking: every take is answered, each
            # within redis_timeout plus a margin, until the replica is promoted.
            ss.master.kill()
            t0 = time.monotonic()
            n = failed = 0
            promoted_at = None
            while time.monotonic() - t0 < 40:
                r = d.take("ab"[n % 2], "during", 10**6)
                n += 1
                assert_in_time(self, r, "take %d during the failover" % n)
                if r[0] != 0:
                    failed += 1
                    continue
                if promoted_at is None and ss.master_port() == ss.replica.port:
                    promoted_at = time.monotonic()
                # Shared again on the new master for both stores.
                if promoted_at is not None:
                    ra = d.take("a", "after-probe", 10**6)
                    rb = d.take("b", "after-probe", 10**6)
                    if ra[0] == 0 and rb[0] == 0:
                        break
            self.assertIsNotNone(promoted_at, "the replica was never promoted")
            self.assertGreater(failed, 0)
            # Counting is shared again: one exact combined limit on the new master.
            results = [d.take("ab"[i % 2], "after", 10) for i in range(30)]
            self.assertTrue(all(r[0] == 0 for r in results), results)
            allowed = [r for r in results if r[2] == 1]
            self.assertEqual([r[3] for r in allowed], list(range(1, 11)))
            self.assertEqual(ss.replica.command("EXISTS", "fo:after"), 1)
            err = d.close()
        # The move is logged by whichever path sees it first: the sentinels' +switch-master
        # message, or the reconnect that asks the sentinels again (seen under ASan).
        self.assertRegex(err, r"switched from 127\.0\.0\.1:%d to 127\.0\.0\.1:%d|"
                              r"master is now at 127\.0\.0\.1:%d \(was 127\.0\.0\.1:%d\)"
                         % (old, ss.replica.port, ss.replica.port, old))
        self.assertIn("is back", err)
        sys_stderr_note(err)

    def test_store_sentinel_unknown_master_name(self):
        with SentinelSet() as ss, Driver(ss.url(name="nosuch"), "unk:") as d:
            for i in range(5):
                r = d.take("a", "k", 10)
                self.assertNotEqual(r[0], 0)
                self.assertEqual((r[2], r[3]), (1, i + 1))  # local counters
                assert_in_time(self, r, "take %d" % i)
            err = d.close()
        self.assertIn("does not know a master named 'nosuch'", err)

    def test_store_sentinel_no_sentinel_answers(self):
        url = "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster" % (free_port(), free_port())
        with Driver(url, "none:", action="dunno") as d:
            for i in range(5):
                r = d.take("a", "k", 10)
                self.assertNotEqual(r[0], 0)
                self.assertEqual((r[2], r[3]), (None, None))
                assert_in_time(self, r, "take %d" % i)
                time.sleep(0.1)
            err = d.close()
        self.assertIn("no sentinel named the master 'mymaster'", err)
        self.assertIn("cannot connect", err)

    def test_store_sentinel_named_replica_is_refused(self):
        # A sentinel with a stale view names a replica: ROLE says so, nothing is counted
        # there, and the store keeps answering locally and asking again.
        with RedisServer() as master, RedisServer(replicaof=master) as replica:
            fake = FakeSentinel("127.0.0.1", replica.port)
            try:
                url = "redis-sentinel://127.0.0.1:%d/mymaster" % fake.port
                with Driver(url, "rep:") as d:
                    for i in range(5):
                        r = d.take("a", "k", 10)
                        self.assertNotEqual(r[0], 0)
                        assert_in_time(self, r, "take %d" % i)
                        time.sleep(0.2)
                    err = d.close()
                self.assertGreaterEqual(fake.asked, 2)
            finally:
                fake.close()
            self.assertIn("ROLE says slave, not master", err)
            self.assertFalse(master.command("KEYS", "rep:*"))


def sys_stderr_note(err):
    """Shows the store's log lines of a failover in the test log."""
    import sys
    sys.stderr.write(err)


if __name__ == "__main__":
    testmain.main()
