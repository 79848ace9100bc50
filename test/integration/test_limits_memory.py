"""Rate limits in the real daemon with the memory store (issue 3): exact counts over the
policy protocol, dedup of repeated requests, dryrun (one log line per would-be refusal),
exemptions, SIGHUP keeping the counters of unchanged rules, a bad reload refused as a
whole, check-config reporting rule errors as FILE:LINE, store_failure_action answers,
a flood of distinct clients past memory_store_max_keys evicting no busier counter (issue 13).
Env: POSTSURGE (the binary), PYTHONPATH=test/pylib."""
import datetime
import http.client
import json
import os
import re
import tempfile
import threading
import time
import unittest
import urllib.request

from ports import free_port, wait_for
from postsurge import Postsurge, request
import testmain

DEFER = "450 4.7.1 Rate limit exceeded, try again later"


def rules(*lines, **extra):
    """Config lines: `limits` with one rule per line, plus other settings."""
    text = "monitor = no\nhttp_listen =\nlimits =\n" + "".join("    %s\n" % l for l in lines)
    for k, v in extra.items():
        text += "%s = %s\n" % (k, v)
    return text


def ask_many(client, n, tag, **attrs):
    """n RCPT requests with distinct recipients in one transaction; the replies."""
    return [client.ask(request(recipient="r%d-%s@example.com" % (i, tag), **attrs))
            for i in range(n)]


def store_metrics(http_port):
    """The postsurge_store_* samples of /metrics: {"name{labels}": value}."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=20)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {l.split()[0]: float(l.split()[1]) for l in text.splitlines()
            if l.startswith("postsurge_store_")}


class LimitsMemory(unittest.TestCase):
    def start(self, text, **kw):
        ps = Postsurge(extra=text, **kw)
        self.addCleanup(ps.cleanup)
        return ps

    def quota_table(self, text):
        """A texthash table holding text, in a directory the daemon's user can read; its
        path (removed after the test)."""
        d = tempfile.mkdtemp(prefix="postsurge-quota-")
        os.chmod(d, 0o755)
        path = os.path.join(d, "quotas")
        self.addCleanup(lambda: (os.unlink(path), os.rmdir(d)))
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_limits_memory_exact_count(self):
        ps = self.start(rules("per_ip client_address recipients 100/1m"))
        with ps.client() as a, ps.client() as b:
            # Two policy connections (two smtpd processes), the same client address.
            out = []
            for i in range(60):
                out.append(a.ask(request(recipient="a%d@example.com" % i, client_port="1001")))
                out.append(b.ask(request(recipient="b%d@example.com" % i, client_port="1002")))
        self.assertEqual(out.count("DUNNO"), 100)
        self.assertEqual(out.count(DEFER + " (per_ip)"), 20)
        # Exactly the excess, and each refusal has its own info line naming rule and key.
        lines = [l for l in ps.log().splitlines() if "rule=per_ip " in l]
        self.assertEqual(len(lines), 20, ps.log())
        self.assertIn("key=per_ip:", lines[0])
        self.assertIn("count=100/100 per 1m", lines[0])

    def test_limits_memory_conditions_and_queue_id(self):
        # One SASL user, a different limit on submission and on port 25 (policy_context);
        # a rule keyed by helo_name only for server_port 25; the decision line starts
        # with Postfix's queue_id when the request has one, a bogus one is left out.
        ps = self.start(rules(
            "sub sasl_username recipients 3/1h if policy_context=submission",
            "mx  sasl_username recipients 1/1h if policy_context!=submission "
            "action 450 4.7.1 Slow down on 25",
            "helo helo_name messages 2/1h if server_port=25 if sender_domain~^(news|promo)\\."))
        with ps.client() as c:
            sub = [c.ask(request(sasl_username="alice", policy_context="submission",
                                 server_port="587", client_port="1", queue_id="4ABC123",
                                 recipient="s%d@example.com" % i)) for i in range(5)]
            mx = [c.ask(request(sasl_username="alice", client_port="2", queue_id="x y\tz",
                                recipient="m%d@example.com" % i)) for i in range(3)]
            news = [c.ask(request(sender="a@News.example.org", helo_name="bulk.example",
                                  client_port="%d" % (10 + i), instance="n%d" % i))
                    for i in range(4)]
        self.assertEqual(sub, ["DUNNO"] * 3 + [DEFER + " (sub)"] * 2)
        self.assertEqual(mx, ["DUNNO"] + ["450 4.7.1 Slow down on 25"] * 2)
        self.assertEqual(news, ["DUNNO"] * 2 + [DEFER + " (helo)"] * 2)
        log = ps.log()
        sub_lines = [l for l in log.splitlines() if "rule=sub " in l]
        self.assertEqual(len(sub_lines), 2, log)
        for l in sub_lines:
            self.assertRegex(l, r"limits\[\d+\]: (\w+: )?4ABC123: ")
        mx_lines = [l for l in log.splitlines() if "rule=mx " in l]
        self.assertEqual(len(mx_lines), 2, log)
        self.assertNotIn("x y", log)

    def test_limits_memory_overrides_table_edited_under_load(self):
        # A texthash table is picked up within 2 s of a change, no SIGHUP, while another
        # connection keeps asking: every request answered. A broken version keeps the
        # previous contents and logs its FILE:LINE error once.
        d = tempfile.mkdtemp(prefix="postsurge-quota-")
        os.chmod(d, 0o755)  # the daemon reads it after dropping privileges
        self.addCleanup(lambda: [os.unlink(os.path.join(d, f)) for f in os.listdir(d)]
                        and None or os.rmdir(d))
        path = os.path.join(d, "quotas")

        def write(text):
            tmp = path + ".new"
            with open(tmp, "w") as f:
                f.write(text)
            os.rename(tmp, path)

        write("# per-user quotas\nalice 2\ncarol unlimited\n")
        ps = self.start(rules("per_user sasl_username recipients 4/1h "
                              "overrides texthash:%s action 450 4.7.1 Quota" % path))
        stop = threading.Event()
        load = {"asked": 0, "answered": 0}

        def background():
            with ps.client() as c:
                i = 0
                while not stop.is_set():
                    load["asked"] += 1
                    if c.ask(request(sasl_username="carol", client_port="9",
                                     recipient="bg%d@example.com" % i)) == "DUNNO":
                        load["answered"] += 1
                    i += 1

        th = threading.Thread(target=background)
        th.start()
        try:
            with ps.client() as c:
                def alice(n, port):
                    return [c.ask(request(sasl_username="alice", client_port=str(port),
                                          recipient="a%d-%d@example.com" % (port, i)))
                            for i in range(n)]
                self.assertEqual(alice(3, 1), ["DUNNO"] * 2 + ["450 4.7.1 Quota"])
                mark = len(ps.log())
                write("alice 3\ncarol unlimited\n")
                os.chmod(path, 0o644)
                t0 = time.monotonic()
                self.assertTrue(ps.wait_log("overrides %s reloaded: 2 entries" % path,
                                            since=mark, timeout=5), ps.log()[mark:])
                self.assertLess(time.monotonic() - t0, 2.5)
                self.assertEqual(alice(2, 2), ["DUNNO", "450 4.7.1 Quota"])
                mark = len(ps.log())
                write("alice 3\ncarol unlimited\nbob three\n")
                self.assertTrue(ps.wait_log("keeping the previous contents", since=mark,
                                            timeout=5), ps.log()[mark:])
                time.sleep(2.5)
                errs = [l for l in ps.log()[mark:].splitlines()
                        if "%s:3: \"three\": bad value" % path in l]
                self.assertEqual(len(errs), 1, ps.log()[mark:])
                self.assertEqual(alice(1, 3), ["450 4.7.1 Quota"])
                # Missing: logged once, previous contents kept.
                mark = len(ps.log())
                os.unlink(path)
                self.assertTrue(ps.wait_log("No such file or directory", since=mark, timeout=5))
                self.assertEqual(alice(1, 4), ["450 4.7.1 Quota"])
        finally:
            stop.set()
            th.join()
        self.assertGreater(load["asked"], 50)
        self.assertEqual(load["answered"], load["asked"])

    def test_limits_memory_check_config_checks_tables(self):
        d = tempfile.mkdtemp(prefix="postsurge-quota-")
        self.addCleanup(lambda: (os.unlink(path), os.rmdir(d)))
        path = os.path.join(d, "ip-quotas")
        with open(path, "w") as f:
            f.write("192.0.2.0/24 10\n192.0.2.1/24 5\n")
        ps = self.start(rules("per_ip client_address recipients 4/1h overrides cidr:%s" % path),
                        start=False)
        r = ps.cli("check-config")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("%s:2: \"192.0.2.1/24\": host bits set" % path, r.stdout + r.stderr)

    def test_limits_memory_cli_list_and_show(self):
        # `limits list` shows the rules as parsed; `limits show` the count a client
        # experienced and the limit in force with its source; impossible RULE/VALUE are
        # refused with a reason.
        path = self.quota_table("bob 7\n")
        ps = self.start(rules(
            "per_net client_address/24 recipients 3/1m",
            "per_user sasl_username recipients 5/1h if policy_context!=submission "
            "overrides texthash:%s" % path))
        with ps.client() as c:
            out = [c.ask(request(client_address="198.51.100.7", sasl_username="Bob",
                                 recipient="r%d@example.com" % i)) for i in range(4)]
        self.assertEqual(out, ["DUNNO"] * 3 + [DEFER + " (per_net)"])
        r = ps.cli("limits", "list", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        o = json.loads(r.stdout)
        self.assertEqual([x["name"] for x in o["rules"]], ["per_net", "per_user"])
        self.assertEqual(o["rules"][1]["conditions"], ["policy_context!=submission"])
        self.assertEqual(o["rules"][1]["override_entries"], 1)
        self.assertEqual(o["rules"][0]["key"], "client_address/24/128")
        r = ps.cli("limits", "list")
        self.assertIn("per_user: sasl_username recipients 5/1h if policy_context!=submission "
                      "overrides texthash:%s (1 entries)" % path, r.stdout)
        r = ps.cli("limits", "show", "per_net", "198.51.100.0/24", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        o = json.loads(r.stdout)
        self.assertEqual((o["count"], o["limit"], o["source"], o["admitted_now"]),
                         (3, 3, "rule", False))
        self.assertEqual(o["admitted_within_ms"], 60000 + 2 * 6000)  # W + 2w
        self.assertIn("(within 72s at most)",
                      ps.cli("limits", "show", "per_net", "198.51.100.0/24").stdout)
        r = ps.cli("limits", "show", "per_user", "BOB", "--json")
        o = json.loads(r.stdout)
        # 4: the fourth recipient, refused by per_net, was admitted (and so counted) by
        # per_user: every rule counts what it admits.
        self.assertEqual((o["count"], o["limit"], o["source"]), (4, 7, "table"))
        r = ps.cli("limits", "show", "per_user", "bob")
        self.assertIn("limit: 7 (from the table)", r.stdout)
        r = ps.cli("limits", "reset", "per_net", "198.51.100.0/24")
        self.assertEqual(r.returncode, 0, r.stderr)
        o = json.loads(ps.cli("limits", "show", "per_net", "198.51.100.0/24", "--json").stdout)
        self.assertEqual((o["count"], o["admitted_now"]), (0, True))
        with ps.client() as c:
            self.assertEqual(c.ask(request(client_address="198.51.100.8", client_port="2",
                                           recipient="new@example.com")), "DUNNO")
        for args, err in [
                (("nosuch", "x"), 'no rule named "nosuch"'),
                (("per_net", "198.51.100.7"), "rule per_net counts IPv4 per IPv4/24"),
                (("per_net", "example.org"), "bad address"),
                (("per_user", "a|b"), "rule per_user has 1 key part"),
                (("per_user", "a b"), "blanks and control characters"),
                (("per_user", "a<b"), "never occurs in a key value")]:
            r = ps.cli("limits", "show", *args)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(err, r.stderr, args)

    def test_limits_memory_limit_hit_event_once_per_key_and_window(self):
        port = free_port()
        ps = self.start(rules("per_ip client_address recipients 2/1h",
                              "per_user sasl_username recipients 100/1h",
                              http_listen="inet:127.0.0.1:%d" % port))
        with ps.client() as c:
            for ip, n in (("198.51.100.1", 6), ("198.51.100.2", 3), ("198.51.100.1", 2)):
                for i in range(n):
                    c.ask(request(client_address=ip, client_port=str(n),
                                  recipient="r%d-%d@example.com" % (n, i)))
        r = ps.cli("events", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        hits = [e for e in json.loads(r.stdout)["events"] if e["kind"] == "limit-hit"]
        self.assertEqual(sorted(e["value"] for e in hits), ["198.51.100.1", "198.51.100.2"])
        for e in hits:
            self.assertEqual((e["rule"], e["limit"], e["count"]), ("per_ip", 2, 2))
            self.assertEqual(e["client"], e["value"])
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read()
        self.assertIn(b'postsurge_limit_hits_total{rule="per_ip"} 2', body)
        # `limits top`: .1 refused 4 + 2 times, .2 once; per rule; an unknown rule refused.
        o = json.loads(ps.cli("limits", "top", "--json").stdout)
        self.assertEqual([(k["rule"], k["value"], k["refusals"]) for k in o["keys"]],
                         [("per_ip", "198.51.100.1", 6), ("per_ip", "198.51.100.2", 1)])
        o = json.loads(ps.cli("limits", "top", "per_user", "--json").stdout)
        self.assertEqual(o["keys"], [])
        r = ps.cli("limits", "top", "nosuch")
        self.assertIn('no rule named "nosuch"', r.stderr)
        self.assertIn("       6  per_ip 198.51.100.1", ps.cli("limits", "top").stdout)

    def test_limits_memory_refusal_lines_bounded(self):
        # A flood refused recipient after recipient logs at most 100 lines per rule per
        # log_repeat_interval; the first line after an interval counts what was left out.
        ps = self.start(rules("per_ip client_address recipients 2/1h",
                              "per_snd sender recipients 1000/1h",
                              log_repeat_interval="5s"))
        t0 = time.monotonic()
        with ps.client() as c:
            out = ask_many(c, 252, "flood")
            elapsed = time.monotonic() - t0
            self.assertEqual(out.count(DEFER + " (per_ip)"), 250)
            time.sleep(5.2)  # a whole interval after the flood
            self.assertEqual(c.ask(request(recipient="late@example.com")),
                             DEFER + " (per_ip)")
        lines = [l for l in ps.log().splitlines() if "rule=per_ip " in l]
        left_out = [int(n) for l in lines
                    for n in re.findall(r"\((\d+) more refusals by this rule not logged\)$", l)]
        # Every refusal is either a line or counted in a later line.
        self.assertEqual(len(lines) + sum(left_out), 251)
        self.assertTrue(left_out)
        # Whatever the pace (a flood slower than one interval under valgrind): a line that
        # counts left-out refusals is the first of a new interval, and refusals are left
        # out only once an interval logged its 100, so the 100 lines before each such
        # line were logged within one interval (5 s, by the log's own timestamps).
        stamps = [datetime.datetime.strptime(l.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%f")
                  for l in lines]
        marks = [i for i, l in enumerate(lines) if "more refusals by this rule not logged" in l]
        prev = 0
        for i in marks:
            self.assertGreaterEqual(i - prev, 100, "left out before 100 were logged: %s" % marks)
            span = (stamps[i - 1] - stamps[i - 100]).total_seconds()
            self.assertLess(span, 5.1, "100 lines before a left-out count span %.2f s" % span)
            prev = i
        if elapsed < 5:  # the flood fitted in one interval: the exact figures
            self.assertEqual(len(lines), 101)
            self.assertEqual(left_out, [150])
            self.assertTrue(lines[-1].endswith("(150 more refusals by this rule not logged)"))

    def test_limits_memory_repeats_not_counted(self):
        ps = self.start(rules("per_ip client_address recipients 3/1m"))
        with ps.client() as c:
            out = []
            for i in range(5):
                # The same RCPT asked from two restriction lists counts once.
                req = request(recipient="x%d@example.com" % i)
                out += [c.ask(req), c.ask(req)]
            # DATA of the same transaction: the recipient count is not added again.
            data = c.ask(request(protocol_state="DATA", recipient="", recipient_count="5"))
        self.assertEqual(out, ["DUNNO"] * 6 + [DEFER + " (per_ip)"] * 4)
        self.assertEqual(data, "DUNNO")

    def test_limits_memory_dryrun(self):
        ps = self.start(rules("per_ip client_address recipients 5/1m dryrun",
                              "per_snd sender recipients 6/1m"))
        with ps.client() as c:
            out = ask_many(c, 8, "dry")
        # The dryrun rule answers DUNNO; the enforced rule still refuses its excess.
        self.assertEqual(out, ["DUNNO"] * 6 + [DEFER + " (per_snd)"] * 2)
        dry = [l for l in ps.log().splitlines() if "dryrun rule=per_ip" in l]
        self.assertEqual(len(dry), 1, ps.log())  # the 6th; the 7th/8th are per_snd's
        self.assertIn('would answer "%s (per_ip)"' % DEFER, dry[0])

        ps2 = self.start(rules("per_ip client_address recipients 5/1m", limit_dry_run="yes"))
        with ps2.client() as c:
            self.assertEqual(ask_many(c, 9, "dry2"), ["DUNNO"] * 9)
        self.assertEqual(ps2.log().count("dryrun rule=per_ip"), 4)

    def test_limits_memory_exemptions(self):
        ps = self.start(rules("per_ip client_address recipients 2/1m",
                              limit_exempt_networks="198.51.100.0/24, 2001:db8::/32",
                              limit_exempt_sasl_users="robot"))
        with ps.client() as c:
            self.assertEqual(ask_many(c, 5, "n", client_address="198.51.100.7"), ["DUNNO"] * 5)
            self.assertEqual(ask_many(c, 5, "v6", client_address="2001:db8::1"), ["DUNNO"] * 5)
            self.assertEqual(ask_many(c, 5, "u", sasl_username="Robot"), ["DUNNO"] * 5)
            # Exempt requests were not counted: the rule still admits 2 from the address.
            out = ask_many(c, 3, "u2", client_address="192.0.2.1", client_port="2")
        self.assertEqual(out, ["DUNNO", "DUNNO", DEFER + " (per_ip)"])

    def test_limits_memory_custom_action_and_stress(self):
        ps = self.start(rules("per_ip client_address recipients 10/1m stress 2/1m "
                              "action 421 4.7.0 go away"))
        with ps.client() as c:
            out = ask_many(c, 3, "s", stress="yes")
            # Not stressed: the normal limit of the same counter (3 counted so far).
            out += ask_many(c, 8, "n", client_port="777")
        self.assertEqual(out, ["DUNNO", "DUNNO", "421 4.7.0 go away"] +
                         ["DUNNO"] * 8)

    def test_limits_memory_reload_keeps_unchanged_counters(self):
        ps = self.start(rules("keep client_address recipients 10/1m",
                              "change sender recipients 10/1m"))
        with ps.client() as c:
            self.assertEqual(ask_many(c, 6, "one"), ["DUNNO"] * 6)
            # keep: only its limit changes (same key, measure, window: same counter).
            # change: its window changes, so its counter starts afresh.
            ps.write_config(rules("new recipient_domain recipients 1000/1m",
                                  "keep client_address recipients 8/1m",
                                  "change sender recipients 7/2m"))
            mark = ps.reload()
            self.assertTrue(ps.wait_log("reload: 3 rate-limit rules", since=mark), ps.log())
            out = ask_many(c, 4, "two", client_port="4000")
        # keep has 6 counted: 2 more admitted, then refused; change has 0: admits all 4.
        self.assertEqual(out, ["DUNNO", "DUNNO", DEFER + " (keep)", DEFER + " (keep)"])

    def test_limits_memory_bad_reload_refused(self):
        ps = self.start(rules("per_ip client_address recipients 3/1m"))
        with ps.client() as c:
            self.assertEqual(ask_many(c, 2, "a"), ["DUNNO"] * 2)
            ps.write_config(rules("per_ip client_address recipients 3/1m",
                                  "broken client_address parsecs 3/1m"))
            mark = ps.reload()
            self.assertTrue(ps.wait_log("keeping the current configuration", since=mark),
                            ps.log())
            self.assertRegex(ps.log()[mark:], r"postsurge\.cf:\d+: .*parsecs")
            self.assertEqual(ask_many(c, 2, "b", client_port="9"),
                             ["DUNNO", DEFER + " (per_ip)"])

    def test_limits_memory_check_config_reports_rules(self):
        ps = Postsurge(extra=rules("ok client_address recipients 3/1m",
                                   "ok client_address recipients 3/1m",
                                   "bad nothing recipients 3/1m"), start=False)
        self.addCleanup(ps.cleanup)
        r = ps.cli("check-config")
        self.assertEqual(r.returncode, 1, r)
        # The line numbers are those of the rules in the file the harness wrote (its own
        # settings come first): the second "ok" and the "bad" rule.
        with open(ps.config_path) as f:
            lines = f.read().split("\n")
        second_ok = [i + 1 for i, l in enumerate(lines) if l.strip().startswith("ok ")][1]
        bad = [i + 1 for i, l in enumerate(lines) if l.strip().startswith("bad ")][0]
        self.assertRegex(r.stderr, r"postsurge\.cf:%d: .*duplicate rule name \"ok\"" % second_ok)
        self.assertRegex(r.stderr, r"postsurge\.cf:%d: .*\"nothing\"" % bad)
        ps.write_config(rules("ok client_address recipients 3/1m"))
        r = ps.cli("check-config")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"), r)

    def test_limits_memory_store_failure_actions(self):
        # Nothing listens on this port: every take fails at once (connection refused).
        url = "redis://127.0.0.1:%d" % free_port()
        for fa, want in (("dunno", "DUNNO"),
                         ("defer_if_permit",
                          "DEFER_IF_PERMIT 4.3.0 Rate limit service temporarily unavailable"),
                         ("local", None)):
            ps = self.start(rules("per_ip client_address recipients 2/1m", store=url,
                                  store_failure_action=fa, redis_timeout="200ms"))
            with ps.client() as c:
                out = ask_many(c, 3, fa)
            if want:
                self.assertEqual(out, [want] * 3, fa)
            else:  # local counters enforce the limit on this node
                self.assertEqual(out, ["DUNNO", "DUNNO", DEFER + " (per_ip)"])
            self.assertRegex(ps.log(), re.compile(r"redis 127\.0\.0\.1:\d+: "))

    def test_limits_memory_flood_keeps_busy_counters(self):
        # Three rules over the client address: each flood request makes three counters,
        # at 1 % (or less) of their limits. 4000 distinct clients offer 12,000 counters
        # to a table of 2000.
        http_port = free_port()
        ps = self.start(rules("per_ip client_address recipients 100/1h",
                              "per_ip_day client_address recipients 1000/1d",
                              "per_net client_address/24 recipients 100000/1h",
                              memory_store_max_keys="2000",
                              http_listen="inet:127.0.0.1:%d" % http_port))
        with ps.client() as c:
            self.assertEqual(ask_many(c, 50, "before", client_port="1"), ["DUNNO"] * 50)
            for chunk in range(0, 4000, 500):
                flood = [request(client_address="10.%d.%d.%d" % (i >> 16, (i >> 8) & 255,
                                                                 i & 255),
                                 client_port="2", recipient="f%d@example.com" % i)
                         for i in range(chunk, chunk + 500)]
                self.assertEqual(c.pipeline(flood), ["DUNNO"] * 500)
            # The client had used 50 of its 100: exactly 50 more, then refusals.
            out = ask_many(c, 60, "after", client_port="3")
        self.assertEqual(out, ["DUNNO"] * 50 + [DEFER + " (per_ip)"] * 10)
        self.assertTrue(wait_for(lambda: "memory store full" in ps.log(), 10), ps.log())
        line = [l for l in ps.log().splitlines() if "memory store full" in l][0]
        self.assertRegex(line, r"memory store full \(memory_store_max_keys = 2000\): "
                               r"\d+ eviction waves? dropped \d+ expired and [1-9]\d* live "
                               r"counters; the fullest live counter evicted was at \d+% of "
                               r"its limit")
        values = store_metrics(http_port)
        self.assertEqual(values["postsurge_store_max_keys"], 2000)
        self.assertLessEqual(values["postsurge_store_keys"], 2000)
        # Over 8000 counters made (two per flood client, and the /24s'), at most 2000
        # kept, none of them expired.
        self.assertGreaterEqual(values['postsurge_store_evictions_total{reason="live"}'],
                                8000 - 2000)
        self.assertEqual(values['postsurge_store_evictions_total{reason="expired"}'], 0)
        self.assertGreater(values["postsurge_store_eviction_waves_total"], 50)
        # SIGHUP applies a new bound to the same counters.
        ps.write_config(rules("per_ip client_address recipients 100/1h",
                              "per_ip_day client_address recipients 1000/1d",
                              "per_net client_address/24 recipients 100000/1h",
                              memory_store_max_keys="3000",
                              http_listen="inet:127.0.0.1:%d" % http_port))
        mark = ps.reload()
        self.assertTrue(ps.wait_log("reload: 3 rate-limit rules", since=mark), ps.log())
        self.assertEqual(store_metrics(http_port)["postsurge_store_max_keys"], 3000)
        with ps.client() as c:
            self.assertEqual(c.ask(request(recipient="last@example.com", client_port="4")),
                             DEFER + " (per_ip)")

    def test_limits_memory_runtime_override_survives_restart(self):
        # `limits set` beats the rule and the table at once (source "run-time override"),
        # is written to state_directory, is in force again after a restart, and `unset`
        # gives the table back; bad RULE, VALUE, COUNT and DURATION are refused.
        path = self.quota_table("bob 7\n")
        ps = self.start(rules("per_user sasl_username recipients 5/1h "
                              "overrides texthash:%s" % path))
        r = ps.cli("limits", "set", "per_user", "BOB", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("run-time override set (memory store)", r.stdout)
        o = json.loads(ps.cli("limits", "show", "per_user", "bob", "--json").stdout)
        self.assertEqual((o["limit"], o["source"]), (2, "run-time override"))
        with ps.client() as c:
            out = ask_many(c, 3, "a", sasl_username="bob")
        self.assertEqual(out, ["DUNNO"] * 2 + [DEFER + " (per_user)"])
        with open(os.path.join(ps.dir, "limits-overrides")) as f:
            self.assertIn("per_user\tbob\t2 0\n", f.read())
        r = ps.cli("limits", "list")
        self.assertIn("    run-time override bob: 2\n", r.stdout)
        self.assertEqual(json.loads(ps.cli("limits", "list", "--json").stdout)
                         ["rules"][0]["runtime_overrides"], 1)
        ps.stop()
        ps.start()
        o = json.loads(ps.cli("limits", "show", "per_user", "bob", "--json").stdout)
        self.assertEqual((o["count"], o["limit"], o["source"]), (0, 2, "run-time override"))
        r = ps.cli("limits", "set", "per_user", "carol", "unlimited", "for", "1h")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"run-time override carol: unlimited until 20\d\d-")
        r = ps.cli("limits", "unset", "per_user", "bob")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("run-time override removed", r.stdout)
        o = json.loads(ps.cli("limits", "show", "per_user", "bob", "--json").stdout)
        self.assertEqual((o["limit"], o["source"]), (7, "table"))
        for args, err in [
                (("set", "nosuch", "x", "3"), 'no rule named "nosuch"'),
                (("set", "per_user", "a<b", "3"), "never occurs in a key value"),
                (("set", "per_user", "bob", "3x"), 'COUNT "3x": bad value'),
                (("set", "per_user", "bob", "3", "for", "1y"), 'DURATION "1y"'),
                (("set", "per_user", "bob", "3", "for", "0s"), 'DURATION "0s"'),
                (("unset", "per_user", "bob"), "rule per_user has no run-time override"),
                (("unset", "nosuch", "bob"), 'no rule named "nosuch"')]:
            r = ps.cli("limits", *args)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(err, r.stderr, args)
        with open(os.path.join(ps.dir, "limits-overrides")) as f:
            self.assertNotIn("bob", f.read())

    def test_limits_memory_runtime_override_expires(self):
        # `for 2s`: in force, then gone from the engine and the file within the next
        # refresh (polled with a bounded wait).
        ps = self.start(rules("per_ip client_address recipients 5/1h"))
        r = ps.cli("limits", "set", "per_ip", "198.51.100.4", "0", "for", "2s")
        self.assertEqual(r.returncode, 0, r.stderr)
        with ps.client() as c:
            self.assertEqual(c.ask(request(client_address="198.51.100.4")), DEFER + " (per_ip)")

        def source():
            return json.loads(ps.cli("limits", "show", "per_ip", "198.51.100.4",
                                     "--json").stdout)["source"]
        self.assertTrue(wait_for(lambda: source() == "rule", timeout=10, interval=0.2), ps.log())
        self.assertIn("run-time override of rule per_ip for 198.51.100.4 expired", ps.log())
        with open(os.path.join(ps.dir, "limits-overrides")) as f:
            self.assertNotIn("198.51.100.4", f.read())
        with ps.client() as c:
            self.assertEqual(c.ask(request(client_address="198.51.100.4", client_port="9")),
                             "DUNNO")


if __name__ == "__main__":
    testmain.main()
