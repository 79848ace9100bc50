#!/usr/bin/env python3
"""Checks the report writers' expected files beside the unit test: every *.json here must
validate against schema.json (JSON Schema draft-07; a small stdlib validator for the
keywords the schema uses, plus the jsonschema package when installed), and every *.prom
must pass `promtool check metrics`, and the figures in ok.* and problems.* must equal a
table derived by hand from the unit test's inputs (check_numbers). Exit 77 (skip) only
when promtool is missing; a check not run is named on a `SKIPPED-TESTS:` line (test/pylib/testmain.py) that test/run-suites counts.
Usage: check_outputs.py [DIR]"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "pylib"))
from testmain import skipped_line  # noqa: E402

TYPES = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}


def type_ok(v, t):
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, TYPES[t])


def validate(v, s, root, path="$"):
    """Returns a list of error strings."""
    if "$ref" in s:
        node = root
        for part in s["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return validate(v, node, root, path)
    errs = []
    if "type" in s:
        ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(type_ok(v, t) for t in ts):
            return ["%s: %r is not %s" % (path, v, ts)]
    if "const" in s and v != s["const"]:
        errs.append("%s: %r != %r" % (path, v, s["const"]))
    if "enum" in s and v not in s["enum"]:
        errs.append("%s: %r not in %r" % (path, v, s["enum"]))
    if "oneOf" in s:
        n = sum(1 for sub in s["oneOf"] if not validate(v, sub, root, path))
        if n != 1:
            errs.append("%s: matches %d of oneOf" % (path, n))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errs.append("%s: %r < %r" % (path, v, s["minimum"]))
        if "maximum" in s and v > s["maximum"]:
            errs.append("%s: %r > %r" % (path, v, s["maximum"]))
    if isinstance(v, str) and "pattern" in s and not re.search(s["pattern"], v):
        errs.append("%s: %r does not match %s" % (path, v, s["pattern"]))
    if isinstance(v, dict):
        for k in s.get("required", []):
            if k not in v:
                errs.append("%s: missing %s" % (path, k))
        props = s.get("properties", {})
        for k, sub in v.items():
            if k in props:
                errs += validate(sub, props[k], root, path + "." + k)
            elif s.get("additionalProperties") is False:
                errs.append("%s: unexpected %s" % (path, k))
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            errs.append("%s: fewer than %d items" % (path, s["minItems"]))
        if "maxItems" in s and len(v) > s["maxItems"]:
            errs.append("%s: more than %d items" % (path, s["maxItems"]))
        if "items" in s:
            for i, item in enumerate(v):
                errs += validate(item, s["items"], root, "%s[%d]" % (path, i))
    return errs


# The figures in the expected files, derived by hand from the inputs test/unit/test_report.c
# feeds the writers (ok_report, problem_report) and from test/data/queue/real-postqueue.jsonl,
# never from the writers' output: regenerating the files (UPDATE_EXPECTED=1) cannot bless a
# wrong count. NOW = ARRIVAL + 7200 = 1795407720 + 7200.
NOW = 1795407720 + 7200
# real-postqueue.jsonl, one message a line (queue, size, arrival - 1795407720, recipients):
#   deferred 426 +0 t1@throttle.test (421 4.0.0 -> throttle)
#   deferred 438 +0 d1@defer.test (connection refused -> connection_refused, 4.4.1)
#   deferred 444 +0 g2@greylist.test (450 4.3.0 -> other)
#   deferred 432 +0 d2@defer.test, d3@DEFER.test (refused; the domain is case-folded)
#   deferred 448 +0 g1@greylist.test (450 4.3.0), m1@defer.test (refused)
#   deferred 444 +1 t2@throttle.test (421 4.0.0)
#   hold     436 +1 h1@defer.test (refused)
PROBLEMS = {
    "generated_at": NOW,
    "status": "CRITICAL",
    "exit_code": 2,
    # 6 deferred messages, 1+1+1+2+2+1 = 8 recipients, 426+438+444+432+448+444 bytes.
    "queues.deferred.messages": 6,
    "queues.deferred.recipients": 8,
    "queues.deferred.bytes": 2632,
    "queues.deferred.oldest_age": 7200,
    "queues.hold.messages": 1,
    "queues.hold.recipients": 1,
    "queues.hold.bytes": 436,
    "queues.hold.oldest_age": 7199,
    "queues.active.messages": 0,
    "queue_parse.records": 7,
    "queue_parse.malformed": 0,
    # Reasons of every queued recipient, hold included: refused d1 d2 d3 m1 h1,
    # throttle t1 t2, other g1 g2.
    "deferral_reasons.by_class.connection_refused": 5,
    "deferral_reasons.by_class.throttle": 2,
    "deferral_reasons.by_class.other": 2,
    "deferral_reasons.by_class.dns": 0,
    # defer.test: d1 d2 d3 m1 deferred + h1 on hold, in 4 messages (2nd, 4th, 5th, hold).
    "domains[defer.test].recipients": 5,
    "domains[defer.test].messages": 4,
    "domains[defer.test].queues.deferred": 4,
    "domains[defer.test].queues.hold": 1,
    "domains[defer.test].oldest_age": 7200,
    "domains[greylist.test].recipients": 2,
    "domains[greylist.test].messages": 2,
    "domains[greylist.test].queues.deferred": 2,
    "domains[throttle.test].recipients": 2,
    "domains[throttle.test].messages": 2,
    "domains[throttle.test].oldest_age": 7200,
    # Traffic: example.com 100/2/1, throttle.test 5/20/0 + 0/10/0, gmail.com 1000/0/0.
    "traffic.totals.delivered": 1105,
    "traffic.totals.deferred": 32,
    "traffic.totals.bounced": 1,
    "traffic.totals.failure_rate": 33 / 1138,
    # Clients keyed by address: unknown[192.0.2.7] 300/250 (shown as 192.0.2.7),
    # mail.example.net 40/0, 203.0.113.5 0/3 + mx.example.org[203.0.113.5] 10/0 = 10/3.
    "traffic.totals.connections": 350,
    "traffic.totals.rejects": 253,
    "traffic.domains[throttle.test].deferred": 30,
    "traffic.domains[throttle.test].failure_rate": 30 / 35,
    "traffic.domains[example.com].failure_rate": 3 / 103,
    # Rejects by class: unknown recipient 200 + 40, blocklist 3, postsurge's limits 10.
    "traffic.rejects_by_class.unknown_recipient": 240,
    "traffic.rejects_by_class.dnsbl": 3,
    "traffic.rejects_by_class.postsurge_limit": 10,
    "traffic.rejects_by_class.other": 0,
    "traffic.postscreen_verdicts.pregreet": 7,
    "traffic.postscreen_verdicts.pass_new": 2,
    "traffic.postscreen_verdicts.hangup": 0,
    "traffic.clients[192.0.2.7].rejects": 250,
    # The queue by sender: `grep -o '"sender": *"[^"]*"' real-postqueue.jsonl` gives 5
    # sender@example.org (deferred), 1 held@example.org (hold), 1 MAILER-DAEMON (deferred).
    "senders.null_sender.deferred": 1,
    "senders.null_sender.hold": 0,
    "senders.top[example.org].messages": 6,
    "senders.top[example.org].deferred": 5,
    "senders.top[MAILER-DAEMON].messages": 1,
    "traffic.clients[mx.example.org[203.0.113.5]].connections": 10,
    "traffic.clients[mx.example.org[203.0.113.5]].rejects": 3,
    "traffic.warnings[process_limit].count": 2,
    "traffic.warnings[connection_rate_limit].count": 5,
    "nodes[mx1.example.org].saturation": 35,
    "nodes[mx2.example.org].saturation": 97,
    "nodes[mx2.example.org].daemon_up": False,
    "nodes[mx2.example.org].qmgr_up": None,
    "nodes[mx2.example.org].stress_episodes": 2,
    # 24 baseline samples of 0 deferred messages; 6 now.
    "anomalies[queue.deferred.messages].value": 6.0,
    "anomalies[queue.deferred.messages].samples": 24,
    # CRITICAL: mx2 saturation 97%, throttle.test 30/35 failed. WARNING: mx2 daemon down,
    # mx2 stressed, imbalance, hold, domain_deferred defer.test and greylist.test,
    # domain_throttle, client_rejects, lost_connections (scan.example.net, 453 lost),
    # auth_failures (203.0.113.42, 35 failures), process_limit, anomaly = 12.
    "findings#CRITICAL": 2,
    "findings#WARNING": 12,
}
OK = {
    "generated_at": NOW,
    "status": "OK",
    "exit_code": 0,
    "queues.deferred.messages": 0,
    "queues.hold.messages": 0,
    "traffic.totals.delivered": 50,  # example.com 40 + example.net 10
    "traffic.totals.deferred": 0,
    "traffic.totals.connections": 12,
    "nodes[mx1.example.org].saturation": 3,
    "findings#CRITICAL": 0,
    "findings#WARNING": 0,
}
KEYS = {"domains": "domain", "nodes": "name", "clients": "client", "warnings": "kind",
        "anomalies": "metric", "top": "domain"}


def lookup(doc, path):
    """doc's value at a path like traffic.domains[example.com].deferred."""
    if path.startswith("findings#"):
        return sum(1 for f in doc["findings"] if f["severity"] == path[9:])
    node = doc
    for part in re.findall(r"[^.\[\]]+(?:\[(?:[^\[\]]|\[[^\]]*\])*\])?", path):
        m = re.match(r"([^\[]+)\[(.*)\]$", part)
        if not m:
            node = node[part]
            continue
        name, key = m.groups()
        field = KEYS[name]
        node = next(x for x in node[name] if x[field] == key)
    return node


def prom_samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def check_numbers(d):
    """The figures of ok.* and problems.* against the hand-made tables; error strings."""
    errs = []
    for base, want in (("ok", OK), ("problems", PROBLEMS)):
        with open(os.path.join(d, base + ".json")) as f:
            doc = json.load(f)
        for path, v in want.items():
            try:
                got = lookup(doc, path)
            except (KeyError, StopIteration) as e:
                errs.append("%s.json: %s missing (%s)" % (base, path, e))
                continue
            if isinstance(v, float):
                if not isinstance(got, (int, float)) or abs(got - v) > 1e-6:
                    errs.append("%s.json: %s = %r, derived %r" % (base, path, got, v))
            elif got != v or type(got) is not type(v):
                errs.append("%s.json: %s = %r, derived %r" % (base, path, got, v))
        # The Prometheus and text files say the same as the hand-made table.
        with open(os.path.join(d, base + ".prom")) as f:
            prom = prom_samples(f.read())
        q = "postsurge_report_queue_%s{queue=\"%s\"}"
        pw = {"postsurge_report_status": {"OK": 0, "CRITICAL": 2}[want["status"]],
              "postsurge_report_generated_timestamp_seconds": NOW,
              q % ("messages", "deferred"): want["queues.deferred.messages"],
              q % ("messages", "hold"): want["queues.hold.messages"],
              'postsurge_report_findings{severity="CRITICAL"}': want["findings#CRITICAL"],
              'postsurge_report_findings{severity="WARNING"}': want["findings#WARNING"]}
        if base == "problems":
            pw.update({
                q % ("recipients", "deferred"): 8,
                q % ("size_bytes", "deferred"): 2632,
                q % ("size_bytes", "hold"): 436,
                q % ("oldest_age_seconds", "hold"): 7199,
                'postsurge_report_deferred_recipients{class="connection_refused"}': 5,
                'postsurge_report_deferred_recipients{class="throttle"}': 2,
                'postsurge_report_domain_recipients{domain="defer.test",queue="deferred"}': 4,
                'postsurge_report_domain_recipients{domain="defer.test",queue="hold"}': 1,
                'postsurge_report_node_up{node="mx2.example.org",component="daemon"}': 0,
                'postsurge_report_node_saturation_ratio{node="mx2.example.org"}': 0.97,
                'postsurge_report_service_waiting{node="mx2.example.org",service="smtpd"}': 12,
                'postsurge_report_traffic_messages{domain="throttle.test",result="deferred"}': 30,
                'postsurge_report_traffic_messages{domain="example.com",result="bounced"}': 1,
                'postsurge_report_rejects{class="unknown_recipient"}': 240,
                'postsurge_report_queue_null_sender_messages{queue="deferred"}': 1,
                'postsurge_report_sender_messages{sender="example.org",queue="deferred"}': 5,
                'postsurge_report_rejects{class="postsurge_limit"}': 10,
                'postsurge_report_postscreen_verdicts{verdict="pregreet"}': 7,
            })
        else:
            pw['postsurge_report_node_saturation_ratio{node="mx1.example.org"}'] = 0.03
        for name, v in pw.items():
            if name not in prom or abs(prom[name] - v) > 1e-9:
                errs.append("%s.prom: %s = %r, derived %r" % (base, name, prom.get(name), v))
        with open(os.path.join(d, base + ".txt")) as f:
            txt = f.read()
        tw = ["deferred=%d;" % want["queues.deferred.messages"],
              "hold=%d;" % want["queues.hold.messages"]]
        if base == "problems":
            tw += ["86% of 35 deliveries failed (30 deferred, 0 bounced)",
                   "defer.test: 4 recipients deferred", "250 rejects in 300 connections",
                   "(2 warnings)", "usually 0 +/- 0", "1 message on hold",
                   "; 11 more |"]  # 14 findings, 3 in the summary
        else:
            tw += ["1 node,", "50 delivered"]
        for piece in tw:
            if piece not in txt:
                errs.append("%s.txt: %r not found" % (base, piece))
    return errs


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(d, "schema.json")) as f:
        schema = json.load(f)
    failed = False
    skips = []
    try:
        import jsonschema  # the full draft-07 implementation
    except ImportError:
        jsonschema = None
        skips.append(("jsonschema", "full draft-07 check not run: python3-jsonschema "
                      "not installed (.ci/install-deps test installs it)"))
    docs = sorted(p for p in glob.glob(os.path.join(d, "*.json")) if not p.endswith("schema.json"))
    for p in docs:
        with open(p) as f:
            doc = json.load(f)
        errs = validate(doc, schema, schema)
        if jsonschema:
            errs += [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        print("%s: %s" % (os.path.basename(p), "valid" if not errs else "INVALID"))
        for e in errs:
            print("  " + e)
        failed |= bool(errs)
    nerrs = check_numbers(d)
    print("figures against the hand-made tables: %s" % ("ok" if not nerrs else "WRONG"))
    for e in nerrs:
        print("  " + e)
    failed |= bool(nerrs)
    # The validator itself must reject a broken document.
    if not validate({"schema_version": 3}, schema, schema):
        print("validator accepted a bad document")
        failed = True

    promtool = shutil.which("promtool")
    if not promtool:
        skips.append(("promtool", "promtool check metrics not run: install package prometheus"))
        print(skipped_line(skips))
        return 1 if failed else 77
    for p in sorted(glob.glob(os.path.join(d, "*.prom"))):
        with open(p, "rb") as f:
            r = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True,
                               timeout=60)
        ok = r.returncode == 0
        print("%s: promtool %s" % (os.path.basename(p), "ok" if ok else "FAILED"))
        if not ok:
            sys.stdout.write((r.stdout + r.stderr).decode(errors="replace"))
        failed |= not ok
    if skips:
        print(skipped_line(skips))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
