"""The status page (GET /) in a real headless Chromium started by the test (DevTools
protocol over a websocket, test/pylib/cdp.py): one node and two nodes on one Redis,
Stress N then Y within 5 s of `postsurge stress enter` without a reload, a sender that
hit a limit shown as text (escaped on the server and by the script), no console errors,
a screenshot PNG kept in the log directory. Without Chromium it also checks the
server-rendered HTML, the read-only methods and http_allow_networks (403)."""
import html
import http.client
import json
import os
import sys
import tempfile
import time
import unittest

from postsurge import Postsurge, request
from ports import free_port, wait_for, tcp_listening
from redis_server import RedisServer
import cdp
import testmain

XSS = "<img src=x onerror=alert(1)>"
LOGDIR = os.path.join(os.environ.get("BUILD_ROOT", tempfile.gettempdir()), "meson-logs")


def get(port, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def html_escape(s):
    return html.escape(s, quote=True).replace("&#x27;", "&#39;")


class PageTest(unittest.TestCase):
    def daemon(self, name, **extra):
        hp = free_port()
        cfg = {"http_listen": "inet:127.0.0.1:%d" % hp, "node_name": name,
               "limits": "per_sender sender recipients 1/1m", "stress_overrides": "no",
               "monitor_interval": "200ms", "stress_min_interval": "0",
               "stress_exit_delay": "1s"}
        cfg.update(extra)
        ps = Postsurge(extra=cfg)
        ps.http_port = hp
        self.addCleanup(ps.cleanup)
        self.assertTrue(wait_for(lambda: tcp_listening(hp), 15), ps.log())
        return ps

    def refuse_xss_sender(self, ps):
        with ps.client() as c:
            out = [c.ask(request(sender=XSS, recipient="r%d@example.com" % i)) for i in range(3)]
        self.assertTrue(out[-1].startswith("450"), out)

    def browser(self):
        if not cdp.CHROMIUM:
            self.skipTest("chromium is not installed (Debian package chromium)")
        os.makedirs(LOGDIR, exist_ok=True)
        br = cdp.Chromium(LOGDIR)
        self.addCleanup(br.close)
        return br

    def stress_text(self, tab, name):
        return tab.eval("(function(){var e=document.querySelector('[data-node=\"%s\"] .stress');"
                        "return e?e.textContent:null;})()" % name)

    # -- without a browser --
    def test_html_escaped_and_self_contained(self):
        ps = self.daemon("n<1>")
        self.refuse_xss_sender(ps)
        st, hdr, body = get(ps.http_port, "/")
        self.assertEqual(st, 200)
        self.assertTrue(hdr["content-type"].startswith("text/html"))
        self.assertIn("default-src 'none'", hdr["content-security-policy"])
        html = body.decode()
        self.assertNotIn(XSS, html)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", html)
        self.assertIn("n&lt;1&gt;", html)
        self.assertNotIn("<1>", html)
        self.assertIn("Stress N", html)
        # Nothing from elsewhere: no src/href to another origin, no @import.
        for bad in ("src=\"http", "href=\"http", "@import", "url("):
            self.assertNotIn(bad, html)
        self.assertEqual(get(ps.http_port, "/", "POST")[0], 405)
        st, _, body = get(ps.http_port, "/", "HEAD")
        self.assertEqual((st, body), (200, b""))

    def test_allow_networks_refuses_others(self):
        ps = self.daemon("n1", http_allow_networks="192.0.2.0/24")
        st, _, body = get(ps.http_port, "/")
        self.assertEqual(st, 403)
        self.assertEqual(get(ps.http_port, "/metrics")[0], 403)
        self.assertIn("not in http_allow_networks", ps.log())
        ps2 = self.daemon("n2", http_allow_networks="10.0.0.0/8, 127.0.0.1/32")
        self.assertEqual(get(ps2.http_port, "/status")[0], 200)
        # A bad network: check-config says where, and a reload keeps the old networks.
        ps2.write_config({"http_listen": "inet:127.0.0.1:%d" % ps2.http_port,
                          "node_name": "n2", "http_allow_networks": "10.0.0.0/33"})
        r = ps2.cli("check-config")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("http_allow_networks: bad network \"10.0.0.0/33\"", r.stderr)
        ps2.reload()
        self.assertTrue(ps2.wait_log("reload", timeout=10), ps2.log())
        self.assertEqual(get(ps2.http_port, "/status")[0], 200)

    def test_report_last_result_shown(self):
        ps = self.daemon("n1")
        self.assertIn("no report yet", get(ps.http_port, "/")[2].decode())
        # No Postfix here: the report says CRITICAL, with findings and advice.
        r = ps.cli("report", "--json")
        rep = json.loads(r.stdout)
        path = os.path.join(ps.dir, "report-last.json")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        self.assertEqual(os.stat(path).st_gid, os.stat(ps.dir).st_gid)
        # The daemon reads it with its next sample (every 10 s).
        ok = wait_for(lambda: json.loads(get(ps.http_port, "/status")[2]).get("report"), 25)
        self.assertTrue(ok)
        html = get(ps.http_port, "/")[2].decode()
        self.assertIn("status <b class=\"rstatus\">%s</b>" % rep["status"], html)
        self.assertTrue(rep["findings"])
        for f in rep["findings"]:
            self.assertIn(html_escape(f["advice"]), html)

    # -- in Chromium --
    def test_chromium_one_node_stress_and_escaping(self):
        br = self.browser()
        ps = self.daemon("n1")
        self.refuse_xss_sender(ps)
        tab = br.open("http://127.0.0.1:%d/" % ps.http_port)
        self.addCleanup(tab.close)
        self.assertEqual(self.stress_text(tab, "n1"), "Stress N")
        tab.eval("window.__loaded_once = 42")
        # The script's own rendering (not only the server's) escapes the sender.
        self.assertTrue(tab.wait(lambda: "(live)" in tab.eval(
            "document.getElementById('updated').textContent"), 10))
        keys = tab.eval("Array.from(document.querySelectorAll('.refusals .key'))"
                        ".map(function(e){return e.textContent;})")
        self.assertIn(XSS, keys)
        self.assertEqual(tab.eval("document.querySelectorAll('#app img').length"), 0)
        r = ps.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        t0 = time.time()
        self.assertTrue(tab.wait(lambda: self.stress_text(tab, "n1") == "Stress Y", 5),
                        "page still says %r" % self.stress_text(tab, "n1"))
        sys.stderr.write("Stress Y shown %.1f s after stress enter\n" % (time.time() - t0))
        self.assertEqual(tab.eval("window.__loaded_once"), 42, "the page reloaded")
        tab.pump(2.5)
        tab.screenshot(os.path.join(LOGDIR, "page-one-node.png"))
        self.assertEqual(tab.console_errors, [])
        self.assertEqual(tab.dialogs, [])
        ps.cli("stress", "exit")

    def test_chromium_two_nodes_on_one_redis(self):
        br = self.browser()
        redis = RedisServer()
        self.addCleanup(redis.stop)
        a = self.daemon("alpha", store=redis.url)
        b = self.daemon("beta", store=redis.url)
        tab = br.open("http://127.0.0.1:%d/" % a.http_port)
        self.addCleanup(tab.close)
        names = "Array.from(document.querySelectorAll('section.node')).map(function(e){" \
                "return e.getAttribute('data-node');})"
        self.assertTrue(tab.wait(lambda: tab.eval(names) == ["alpha", "beta"], 15),
                        tab.eval(names))
        r = b.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(tab.wait(lambda: self.stress_text(tab, "beta") == "Stress Y", 10),
                        self.stress_text(tab, "beta"))
        self.assertEqual(self.stress_text(tab, "alpha"), "Stress N")
        tab.pump(2.5)
        tab.screenshot(os.path.join(LOGDIR, "page-two-nodes.png"))
        self.assertEqual(tab.console_errors, [])
        b.cli("stress", "exit")


if __name__ == "__main__":
    testmain.main()
