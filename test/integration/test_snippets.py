"""The monitoring snippets in postfix-snippets/: the Prometheus alerting rules pass
`promtool check rules` and their unit tests (`promtool test rules`), the Grafana dashboard
is valid JSON Grafana imports (panels with queries, the datasource an input), and every
metric name the dashboard and the rules use is exported by a real daemon's /metrics or by
a real `postsurge report --prometheus` file (or its golden output with queues)."""
import json
import os
import re
import shutil
import subprocess
import unittest
import urllib.request

from postsurge import Postsurge
from ports import free_port, tcp_listening, wait_for
import testmain

SNIPPETS = os.path.join(os.environ.get("SOURCE_ROOT", "."), "postfix-snippets")
RULES = os.path.join(SNIPPETS, "postsurge-alerts.yml")
RULE_TESTS = os.path.join(SNIPPETS, "postsurge-alerts.test.yml")
DASHBOARD = os.path.join(SNIPPETS, "postsurge-dashboard.json")
PROMTOOL = shutil.which("promtool")
NAME = re.compile(r"\b((?:postsurge|process)_[a-z0-9_]+)\b")


def families(text):
    """Metric family names of an exposition (from its TYPE lines) and their types."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split()[:4]
            out[name] = typ
    return out


def used_names(text):
    """Metric names in PromQL expressions, histogram suffixes folded to the family."""
    return set(NAME.findall(text))


class SnippetsTest(unittest.TestCase):
    def exported(self):
        hp = free_port()
        ps = Postsurge(extra={"http_listen": "inet:127.0.0.1:%d" % hp,
                              "limits": "per_ip client_address recipients 10/1m"})
        self.addCleanup(ps.cleanup)
        self.assertTrue(wait_for(lambda: tcp_listening(hp), 15))
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % hp, timeout=20) as r:
            fam = families(r.read().decode())
        prom = os.path.join(ps.dir, "report.prom")
        r = ps.cli("report", "--prometheus", prom)
        self.assertIn(r.returncode, (0, 1, 2), r.stderr)
        with open(prom) as f:
            fam.update(families(f.read()))
        # Without a Postfix here the report leaves out the queue families: take them
        # from its output for the problems fixture (report-outputs compares that file
        # with what the report code writes).
        with open(os.path.join(os.environ["TEST_DATA"], "report", "problems.prom")) as f:
            fam.update(families(f.read()))
        return fam

    def check_names(self, names, fam, where):
        for n in sorted(names):
            base = n
            for suf in ("_bucket", "_sum", "_count"):
                if n.endswith(suf) and fam.get(n[:-len(suf)]) == "histogram":
                    base = n[:-len(suf)]
            self.assertIn(base, fam, "%s uses %s, which nothing exports" % (where, n))

    def test_rules_pass_promtool(self):
        if not PROMTOOL:
            self.skipTest("promtool not installed (package prometheus)")
        for args in (["check", "rules", RULES], ["test", "rules", RULE_TESTS]):
            p = subprocess.run([PROMTOOL] + args, capture_output=True, text=True, timeout=120,
                               cwd=SNIPPETS)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_dashboard_is_importable_json(self):
        with open(DASHBOARD) as f:
            d = json.load(f)
        self.assertEqual(d["__inputs"][0]["pluginId"], "prometheus")
        self.assertTrue(d["panels"])
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        for p in d["panels"]:
            self.assertTrue(p["targets"] and all(t["expr"] for t in p["targets"]), p["title"])
            self.assertEqual(p["datasource"]["uid"], "${DS_PROMETHEUS}")

    def test_every_metric_used_is_exported(self):
        fam = self.exported()
        with open(DASHBOARD) as f:
            d = json.load(f)
        exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
        exprs += [v["definition"] for v in d["templating"]["list"]]
        dash_names = set().union(*(used_names(e) for e in exprs))
        self.assertIn("postsurge_decisions_total", dash_names)
        self.check_names(dash_names, fam, "the dashboard")
        with open(RULES) as f:
            rules = f.read()
        exprs = re.findall(r"expr: >-\n((?:\s{10,}.*\n)+)|expr: (.*)\n", rules)
        rule_names = set().union(*(used_names(a or b) for a, b in exprs))
        self.assertIn("postsurge_report_status", rule_names)
        self.assertIn("postsurge_store_degraded", rule_names)
        self.check_names(rule_names, fam, "the alerting rules")


if __name__ == "__main__":
    testmain.main()
