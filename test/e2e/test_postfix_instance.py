"""Self-test of test/pylib/postfix_instance.py, the throwaway Postfix the e2e, stress and
report tests build on: delivery to smtp-sink, deferred mail in `postqueue -j`, postscreen
mode with an smtpd process limit, master.cf replacement, and that stop() leaves no process
and no directory behind, also after a failed start. Needs root and postfix.
"""
import os
import unittest

from ports import tcp_listening, wait_for
from postfix_instance import PostfixInstance, _pid_alive
import testmain


class PostfixInstanceTest(unittest.TestCase):
    def assert_gone(self, pf, master, d, port):
        self.assertIsNone(pf.dir)
        self.assertFalse(os.path.exists(d))
        self.assertTrue(wait_for(lambda: not _pid_alive(master), 10))
        self.assertFalse(tcp_listening(port))

    def test_postfix_instance_delivers_and_defers(self):
        pf = PostfixInstance()
        try:
            pf.start()
            master, d, port = pf.master_pid(), pf.dir, pf.port
            self.assertIsNotNone(master)
            self.assertEqual(pf.postconf("-h", "inet_interfaces").strip(), "127.0.0.1")
            sw = pf.send_swaks(to=["a@" + pf.sink_domain, "b@" + pf.defer_domain])
            self.assertEqual(sw.returncode, 0, sw.stdout)
            r = pf.smtp_source(sessions=2, messages=3, recipients=2)
            self.assertEqual(r.returncode, 0, r.stderr)

            def deferred():
                return [m for m in pf.queue_json() if m["queue_name"] == "deferred"]
            # Seen once (a CI run, 2026-11-23): the queue was empty after 60 s, not
            # deferred. The swaks transcript (swaks exits 0 when at least one RCPT is
            # accepted) and the instance's log say where the mail went if it happens again.
            self.assertTrue(wait_for(deferred, 60, 0.2),
                            "queue %s\nswaks:\n%s\nmaillog:\n%s" %
                            (pf.queue_json(), sw.stdout[-3000:], pf.maillog()[-6000:]))
            m = deferred()[0]
            self.assertEqual(m["sender"], "sender@example.org")
            self.assertEqual([x["address"] for x in m["recipients"]], ["b@" + pf.defer_domain])
            self.assertIn("Connection refused", m["recipients"][0]["delay_reason"])
            self.assertTrue(pf.wait_queue_empty(60, ignore_deferred=True))
            self.assertEqual(sorted(pf.sink.recipients()),
                             sorted(["<a@sink.test>"] +
                                    ["<%dload@sink.test>" % i for i in range(1, 7)]))
            self.assertTrue(pf.wait_maillog(r"status=deferred .*:9: Connection refused", 10))
            self.assertEqual(len(pf.wait_maillog(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*"
                                                 r"status=sent" % pf.sink.port, 10, 7)), 7)
        finally:
            pf.stop()
        self.assert_gone(pf, master, d, port)

    def test_postfix_instance_postscreen_process_limit(self):
        pf = PostfixInstance(postscreen=True, process_limit=2, sink_delays={"rcpt": 1},
                             master_replace={"smtp/unix": "smtp unix - - n - 1 smtp"})
        with pf:
            master, d, port = pf.master_pid(), pf.dir, pf.port
            self.assertEqual(pf.smtpd_service, "smtpd/pass")
            self.assertEqual(pf.postconf("-Fh", "smtpd/pass/process_limit").strip(), "2")
            self.assertEqual(pf.postconf("-Fh", "smtp/unix/process_limit").strip(), "1")
            self.assertEqual(pf.postconf("-Fh", "127.0.0.1:%d/inet/command" % port).strip(),
                             "postscreen")
            r = pf.smtp_source(sessions=4, messages=8, recipients=1)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertLessEqual(len(pf.smtpd_pids()), 2)
            self.assertTrue(pf.wait_queue_empty(120))
            self.assertEqual(len(pf.sink.recipients()), 8)
            self.assertIn("postfix/postscreen", pf.maillog())
        self.assert_gone(pf, master, d, port)

    def test_postfix_instance_failed_start_cleans_up(self):
        # 192.0.2.1 is on no interface here: master cannot bind its listener.
        pf = PostfixInstance(main_extra=["inet_interfaces = 192.0.2.1"])
        with self.assertRaises(RuntimeError):
            pf.start(timeout=10)
        self.assertIsNone(pf.dir)
        self.assertIsNone(pf.master_pid())
        self.assertIsNone(pf.sink.proc)


if __name__ == "__main__":
    testmain.main()
