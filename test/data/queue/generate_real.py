#!/usr/bin/env python3
"""Regenerates real-postqueue.jsonl: `postqueue -j` output of a throwaway Postfix 3.7 with
deferred mail (closed port 9, a 4xx-rejecting and a 421-hanging-up smtp-sink), held mail
(postsuper -h), a null sender and mixed-domain messages. Needs root. Usage, from the
source root:  PYTHONPATH=test/pylib python3 test/data/queue/generate_real.py OUT.jsonl"""
import os
import sys
import time

from postfix_instance import PostfixInstance, SmtpSink

out = sys.argv[1]
with PostfixInstance() as pf:
    soft = SmtpSink(pf.dir, extra_args=["-r", "rcpt"]).start()
    hang = SmtpSink(pf.dir, extra_args=["-Q", "mail"]).start()
    try:
        with open(os.path.join(pf.dir, "transport"), "a") as f:
            f.write("greylist.test smtp:[127.0.0.1]:%d\n" % soft.port)
            f.write("throttle.test smtp:[127.0.0.1]:%d\n" % hang.port)
        pf.postconf("-e", "relay_domains = sink.test defer.test greylist.test throttle.test")
        pf.reload()
        time.sleep(1)
        pf.send_swaks(to="d1@defer.test")
        pf.send_swaks(to=["d2@defer.test", "d3@DEFER.test"])
        pf.send_swaks(to=["ok@sink.test", "m1@defer.test", "g1@greylist.test"])
        pf.send_swaks(to="g2@greylist.test")
        pf.send_swaks(to="t1@throttle.test", sender="<>")
        pf.send_swaks(to="t2@throttle.test")
        pf.send_swaks(to="h1@defer.test", sender="held@example.org")
        # Wait until every message has been tried once (no longer active/incoming).
        def settled():
            q = pf.queue_json()
            return len(q) >= 7 and all(m["queue_name"] == "deferred" for m in q)
        from ports import wait_for
        wait_for(settled, 60, 0.5)
        for m in pf.queue_json():
            if m["sender"] == "held@example.org":
                pf.postsuper("-h", m["queue_id"])
        # One message that is never tried: hold it straight away after arrival.
        pf.postfix("stop")
        time.sleep(1)
        r = pf._run(["/usr/sbin/postqueue", "-c", pf.dir, "-j"], check=True)
        with open(out, "w") as f:
            f.write(r.stdout)
    finally:
        soft.stop()
        hang.stop()
