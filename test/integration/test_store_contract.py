"""Runs the store contract suite (store_contract, C) against every store: memory, one
real redis-server, and nutcracker (twemproxy) in front of two redis-servers. The same
takes must give the same answers everywhere."""
import unittest

from redis_server import Nutcracker, RedisServer
from store_driver import run_contract
import testmain


class StoreContract(unittest.TestCase):
    def test_store_contract_memory(self):
        rc, out = run_contract()
        self.assertEqual(rc, 0, out)
        self.assertIn("against memory", out)
        self.assertIn("PASSED", out)

    def test_store_contract_redis(self):
        with RedisServer() as r:
            rc, out = run_contract(r.url)
            self.assertEqual(rc, 0, out)
            self.assertIn("against redis://", out)
            # Every key the contract wrote has a TTL: nothing lives forever in Redis.
            keys = r.command("KEYS", "contract:*")
            self.assertTrue(keys)
            for k in keys:
                if ":cops:" in k:
                    continue  # the node index and the event list have no TTL by design
                # -1: no expiry (a bug); -2 or 0: a short window's key just expired.
                self.assertNotEqual(r.command("PTTL", k), -1, k)

    def test_store_contract_redis_by_name(self):
        # A host name is resolved without blocking; requests wait for it.
        with RedisServer() as r:
            rc, out = run_contract("redis://localhost:%d" % r.port)
            self.assertEqual(rc, 0, out)

    def test_store_contract_redis_with_password_and_db(self):
        with RedisServer(password="s3cret") as r:
            url = "redis://:s3cret@127.0.0.1:%d/3" % r.port
            rc, out = run_contract(url)
            self.assertEqual(rc, 0, out)
            self.assertTrue(r.command("KEYS", "contract:*", db=3))
            self.assertFalse(r.command("KEYS", "contract:*", db=0))

    def test_store_contract_nutcracker(self):
        with RedisServer() as r1, RedisServer() as r2, Nutcracker([r1, r2]) as nc:
            rc, out = run_contract(nc.url)
            self.assertEqual(rc, 0, out)
            # The keys were spread over both shards by the proxy.
            self.assertTrue(r1.command("KEYS", "contract:*"))
            self.assertTrue(r2.command("KEYS", "contract:*"))


if __name__ == "__main__":
    testmain.main()
