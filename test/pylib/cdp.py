"""A headless Chromium for tests, driven over the DevTools protocol (a websocket, stdlib
only): open a page, evaluate expressions, collect console errors and exceptions, take a
screenshot.

    with Chromium(logdir) as br:
        tab = br.open("http://127.0.0.1:8080/")
        tab.wait(lambda: tab.eval("document.title") == "x", 5)

The browser runs in its own temp profile, is stopped by PID, and keeps its stderr in
logdir/chromium.log.
"""
import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or \
    shutil.which("google-chrome")


class WebSocket:
    """A client websocket (RFC 6455): text frames out (masked), frames in."""

    def __init__(self, url, timeout=20):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" %
                           (m.group(3), m.group(1), m.group(2), key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError("websocket handshake: %r" % head[:200])

    def send(self, text):
        data = text.encode()
        hdr = bytes([0x81])
        n = len(data)
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next message's text (fragments joined); pings answered."""
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            op = b0 & 0x0F
            if op == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if op == 0x9:
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        self.sock.close()


class Tab:
    """One page target: commands and the events seen so far."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []
        self.console_errors = []
        self.dialogs = []
        for m in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(m)

    def _note(self, msg):
        self.events.append(msg)
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.console_errors.append(json.dumps(p.get("args"))[:500])
        elif m == "Runtime.exceptionThrown":
            self.console_errors.append(json.dumps(p.get("exceptionDetails"))[:500])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.console_errors.append(p["entry"].get("text", "")[:500])
        elif m == "Page.javascriptDialogOpening":
            self.dialogs.append(p.get("message"))
            self.call("Page.handleJavaScriptDialog", accept=True)

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._note(msg)

    def pump(self, seconds):
        """Reads events for a while (console messages, dialogs)."""
        end = time.time() + seconds
        while time.time() < end:
            self.ws.settimeout(max(0.05, end - time.time()))
            try:
                self._note(json.loads(self.ws.recv()))
            except socket.timeout:
                break
        self.ws.settimeout(20)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError("%s: %s" % (expr, r["exceptionDetails"]))
        return r.get("result", {}).get("value")

    def navigate(self, url, timeout=20):
        self.call("Page.navigate", url=url)
        return self.wait(lambda: self.eval("document.readyState") == "complete", timeout)

    def wait(self, pred, timeout, step=0.1):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if pred():
                    return True
            except RuntimeError:
                pass
            self.pump(step)
        return False

    def screenshot(self, path):
        r = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))

    def close(self):
        self.ws.close()


class Chromium:
    def __init__(self, logdir):
        if not CHROMIUM:
            raise FileNotFoundError("chromium")
        self.profile = tempfile.mkdtemp(prefix="postsurge-chromium-")
        self.logf = open(os.path.join(logdir, "chromium.log"), "wb")
        args = [CHROMIUM, "--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                "--user-data-dir=" + self.profile, "--window-size=1200,1600", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        end = time.time() + 60
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if time.time() > end or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (see chromium.log)")
            time.sleep(0.1)
        with open(port_file) as f:
            self.port = int(f.readline())

    def open(self, url):
        """A new tab on url (loaded); returns its Tab."""
        req = urllib.request.Request("http://127.0.0.1:%d/json/new?about:blank" % self.port,
                                     method="PUT")
        with urllib.request.urlopen(req, timeout=20) as r:
            target = json.load(r)
        tab = Tab(target["webSocketDebuggerUrl"])
        if not tab.navigate(url):
            raise RuntimeError("page did not load: %s" % url)
        return tab

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
