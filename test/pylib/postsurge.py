"""Run a real postsurge daemon for tests, and talk the policy protocol to it.

    with Postsurge(extra={"default_action": "REJECT no"}) as ps:
        c = ps.client()
        assert c.ask(request(recipient="a@b")) == "REJECT no"

The daemon gets a generated config in a temp dir (a free loopback port, optionally a unix
socket), logs to a file (`ps.log_path`, read with `ps.log()`), and is always stopped by
PID (SIGTERM, then SIGKILL after a timeout), also when the test fails. Stdlib only.

Memory checkers: POSTSURGE_WRAPPER (a command line, e.g. "valgrind --error-exitcode=99
--leak-check=full") runs the daemon and the CLI under it (valgrind's report goes to
DIR/valgrind.PID.log); timeouts are stretched by POSTSURGE_SLOW (default 4 under a
wrapper). Whenever a daemon or CLI run ends, its sanitizer or valgrind report, if any,
raises SanitizerReport (an AssertionError), so ASan/UBSan/LSan and memcheck findings
fail the test that caused them.
"""
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from ports import free_port, tcp_listening, wait_for

POSTSURGE = os.environ.get("POSTSURGE", "postsurge")
# The test-only build (test deciders of policyd/server/testing.c); never installed.
POSTSURGE_TESTING = os.environ.get("POSTSURGE_TESTING", "postsurge-testing")
WRAPPER = shlex.split(os.environ.get("POSTSURGE_WRAPPER", ""))
UNDER_VALGRIND = bool(WRAPPER) and "valgrind" in os.path.basename(WRAPPER[0])
# Timeouts multiply by this: memcheck runs the daemon 20-50 times slower.
SLOW = float(os.environ.get("POSTSURGE_SLOW", "4" if WRAPPER else "1"))

# What ASan, LSan and UBSan print (UBSan: "file:line:col: runtime error: ...").
_SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|"
                           r"SUMMARY: UndefinedBehaviorSanitizer|: runtime error: ")
_VALGRIND_ERRORS_RE = re.compile(r"ERROR SUMMARY: ([0-9]+) errors")
_VALGRIND_RECORD_RE = re.compile(r"==[0-9]+== (Invalid |Conditional jump|Use of uninit|"
                                 r"Syscall param|Mismatched|.* are (definitely|indirectly) lost)")


class SanitizerReport(AssertionError):
    """A sanitizer or valgrind memcheck found errors or leaks in a postsurge process."""


def skip_if_wrapped(test, why):
    """Skips a unittest test (pass self) under POSTSURGE_WRAPPER, printing why: for tests
    that measure speed or need more load than a memory checker can carry."""
    if WRAPPER:
        import sys
        sys.stderr.write("skipped under %s: %s\n" % (os.path.basename(WRAPPER[0]), why))
        test.skipTest("under %s: %s" % (os.path.basename(WRAPPER[0]), why))


def wrapped(argv, logdir):
    """argv prefixed with POSTSURGE_WRAPPER; valgrind logs to logdir/valgrind.PID.log."""
    if not WRAPPER:
        return list(argv)
    w = list(WRAPPER)
    if UNDER_VALGRIND and not any(a.startswith("--log-file") for a in w):
        w.append("--log-file=%s" % os.path.join(logdir, "valgrind.%p.log"))
    return w + list(argv)


def memcheck_report(text, logdir=None, pid=None):
    """The sanitizer report in a process's output text, or memcheck's log of pid in logdir
    with a non-zero error count; None if clean."""
    m = _SANITIZER_RE.search(text or "")
    if m:
        start = max(0, text.rfind("\n", 0, max(0, m.start() - 2000)))
        return text[start:start + 6000]
    if UNDER_VALGRIND and logdir:
        paths = [os.path.join(logdir, "valgrind.%d.log" % pid)] if pid else \
            glob.glob(os.path.join(logdir, "valgrind.*.log"))
        for path in paths:
            try:
                with open(path, errors="replace") as f:
                    vg = f.read()
            except OSError:
                continue
            counts = [int(n) for n in _VALGRIND_ERRORS_RE.findall(vg)]
            # Under --quiet there is no summary line: any error record counts.
            if any(counts) or (not counts and _VALGRIND_RECORD_RE.search(vg)):
                return "%s:\n%s" % (path, vg[-12000:])
    return None

# The attributes Postfix 3.7 sends, in its order (empty ones as "name=").
POSTFIX_ATTRS = (
    "request protocol_state protocol_name client_address client_name client_port "
    "reverse_client_name server_address server_port helo_name sender recipient "
    "recipient_count queue_id instance size etrn_domain stress sasl_method sasl_username "
    "sasl_sender ccert_subject ccert_issuer ccert_fingerprint ccert_pubkey_fingerprint "
    "encryption_protocol encryption_cipher encryption_keysize policy_context").split()


def request(**attrs):
    """A request dict like Postfix sends at RCPT; keyword arguments override attributes."""
    r = {a: "" for a in POSTFIX_ATTRS}
    r.update(request="smtpd_access_policy", protocol_state="RCPT", protocol_name="ESMTP",
             client_address="192.0.2.1", client_name="client.example",
             reverse_client_name="client.example", client_port="40000",
             server_address="127.0.0.1", server_port="25", helo_name="client.example",
             sender="sender@example.org", recipient="rcpt@example.com",
             recipient_count="0", instance="1a2b.5f4e3d2c.1.0", size="1000")
    r.update({k: str(v) for k, v in attrs.items()})
    return r


def encode(req):
    """Bytes of one request (dict, or list of (name, value) pairs) with its empty line."""
    items = req.items() if isinstance(req, dict) else req
    return b"".join(("%s=%s\n" % (k, v)).encode() for k, v in items) + b"\n"


class PolicyClient:
    """One persistent policy connection (as one smtpd process keeps)."""

    def __init__(self, address, timeout=10.0):
        """address: (host, port) for TCP, or a path string for a unix socket."""
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, req):
        self.sock.sendall(encode(req))

    def read_reply(self):
        """The next reply's action text; raises EOFError if the server closed."""
        while b"\n\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection (buffered %r)" % self.buf[:200])
            self.buf += chunk
        block, self.buf = self.buf.split(b"\n\n", 1)
        lines = block.decode().split("\n")
        assert len(lines) == 1 and lines[0].startswith("action="), "bad reply %r" % block
        return lines[0][len("action="):]

    def ask(self, req=None):
        """Sends one request (default: a typical RCPT request) and returns its action."""
        self.send(req if req is not None else request())
        return self.read_reply()

    def pipeline(self, reqs):
        """Sends every request in one write, then reads as many replies, in order."""
        self.send_raw(b"".join(encode(r) for r in reqs))
        return [self.read_reply() for _ in reqs]

    def closed_by_peer(self, timeout=10.0):
        """True if the server closes the connection within timeout (data read is dropped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def children(pid):
    """The PIDs of pid's children (from /proc), [] once it is gone."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def comm(pid):
    """pid's command name, "" once it is gone."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


class Postsurge:
    """A postsurge daemon in a temp dir.

    extra: config lines, a dict {name: value} or a str appended to the file; in a dict, a
    value None leaves the setting out (also a default set here, like stress_overrides).
    inet: listen on a free loopback port (self.port); unix: also on DIR/policy.sock
    (self.unix_path). listen: replace the generated listen value entirely.
    args: global options before the command (e.g. ["-v"]); env: extra environment.
    program: the binary (default POSTSURGE; POSTSURGE_TESTING for the test deciders).
    """

    def __init__(self, extra=None, inet=True, unix=False, listen=None, args=None, env=None,
                 command="serve", start=True, tmpdir=None, keep=False, program=None):
        self.program = program or POSTSURGE
        self.dir = tmpdir or tempfile.mkdtemp(prefix="postsurge-test-")
        self.keep = keep
        self.port = free_port() if inet else None
        self.host = "127.0.0.1"
        self.unix_path = os.path.join(self.dir, "policy.sock") if unix else None
        self.config_path = os.path.join(self.dir, "postsurge.cf")
        self.log_path = os.path.join(self.dir, "postsurge.log")
        self.args = list(args or [])
        self.env = dict(os.environ, **(env or {}))
        self.command = command
        self.proc = None
        self.returncode = None
        endpoints = []
        if inet:
            endpoints.append("inet:127.0.0.1:%d" % self.port)
        if unix:
            endpoints.append("unix:%s" % self.unix_path)
        self.listen = listen if listen is not None else " ".join(endpoints)
        # An explicit listen value: wait for (and talk to) the endpoints it names.
        for ep in self.listen.replace(",", " ").split():
            if ep.startswith("inet:") and self.port is None:
                host, port = ep[5:].rsplit(":", 1)
                self.host = host.strip("[]")
                self.port = int(port)
            elif ep.startswith("unix:") and self.unix_path is None:
                self.unix_path = ep[5:]
        self.write_config(extra)
        if start:
            self.start()

    # -- configuration --
    def config_text(self, extra=None):
        # Tests run side by side: no fixed HTTP port unless a test asks for one (its
        # settings replace these defaults). The overrides are off by default for
        # administrators; the tests exercise them, against test Postfix directories, so
        # they are on here unless a test says otherwise.
        defaults = {"http_listen": "", "stress_overrides": "yes"}
        given = set()
        if isinstance(extra, dict):
            given = set(extra)
        elif extra:
            given = {ln.split("=", 1)[0].strip() for ln in extra.splitlines()
                     if "=" in ln and ln[:1] not in (" ", "\t", "#")}
        lines = ["# generated by test/pylib/postsurge.py",
                 "listen = %s" % self.listen,
                 "log_destination = stderr",
                 "state_directory = %s" % self.dir]
        lines += ["%s = %s" % (k, v) for k, v in defaults.items() if k not in given]
        if isinstance(extra, dict):
            # A value None leaves the setting out (its built-in default applies).
            lines += ["%s = %s" % (k, v) for k, v in extra.items() if v is not None]
        elif extra:
            lines.append(extra.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def write_config(self, extra=None, text=None):
        """Rewrites the config file (text: exact contents). Atomic, like an admin's editor."""
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text is not None else self.config_text(extra))
        os.replace(tmp, self.config_path)

    # -- process --
    def cli(self, *cmd, check=False, timeout=30):
        """Runs `postsurge -c CONFIG CMD...` and returns the CompletedProcess (text).
        Raises SanitizerReport if a sanitizer or memcheck reported errors."""
        argv = wrapped([self.program, "-c", self.config_path, *cmd], self.dir)
        before = set(glob.glob(os.path.join(self.dir, "valgrind.*.log")))
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * SLOW,
                           check=check, env=self.env)
        for path in set(glob.glob(os.path.join(self.dir, "valgrind.*.log"))) - before:
            pid = int(path.rsplit(".", 2)[-2])
            report = memcheck_report("", self.dir, pid)
            if report:
                raise SanitizerReport("postsurge %s: %s" % (" ".join(cmd), report))
        report = memcheck_report(r.stderr)
        if report:
            raise SanitizerReport("postsurge %s: %s" % (" ".join(cmd), report))
        return r

    def start(self, wait=True, timeout=15.0):
        if getattr(self, "logf", None) and not self.logf.closed:
            self.logf.close()  # a restart after the daemon died (kill -9) without stop()
        self.logf = open(self.log_path, "ab")
        self._log_mark = self.logf.tell()
        self._checked = False
        self.proc = subprocess.Popen(
            wrapped([self.program, "-f", "-c", self.config_path, *self.args, self.command],
                    self.dir),
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        timeout *= SLOW
        if wait and not self.wait_listening(timeout):
            log = self.log()
            self.stop()
            raise RuntimeError("postsurge did not start listening:\n" + log)
        return self

    def listening(self):
        if self.port is not None:
            # tcp_listening() matches any IPv6 address; give it a valid IPv4 one then.
            host = "0.0.0.0" if ":" in self.host else self.host
            if not tcp_listening(self.port, host=host):
                return False
        if self.unix_path and not self._unix_listening(self.unix_path):
            return False
        return True

    @staticmethod
    def _unix_listening(path):
        """True if path is a socket some process listens on (per /proc/net/unix)."""
        try:
            with open("/proc/net/unix") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    # Flags 00010000 = __SO_ACCEPTCON: a listening socket.
                    if len(parts) >= 8 and parts[-1] == path and parts[3] == "00010000":
                        return True
        except OSError:
            pass
        return False

    def wait_listening(self, timeout=15.0):
        return wait_for(lambda: self.proc.poll() is not None or self.listening(),
                        timeout) and self.proc.poll() is None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload(self):
        """SIGHUP; returns the log offset before it, for wait_log()."""
        mark = len(self.log())
        self.signal(signal.SIGHUP)
        return mark

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status. Raises
        SanitizerReport (once per run) if the daemon's sanitizer or memcheck reported."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self.logf.close()
        self.check_memcheck()
        return self.returncode

    def check_memcheck(self):
        """Raises SanitizerReport if this run of the daemon (since start()) left a
        sanitizer report in its log or a memcheck log with errors; checks once per run."""
        if getattr(self, "_checked", True) or self.proc is None or self.proc.poll() is None:
            return
        self._checked = True
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_mark)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        report = memcheck_report(text, self.dir, self.proc.pid)
        if report:
            raise SanitizerReport("postsurge serve (pid %d): %s" % (self.proc.pid, report))

    def wait_exit(self, timeout=15.0):
        """Waits for the process to exit by itself; SIGKILL after timeout. Returns status."""
        try:
            self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return self.stop()

    # -- log --
    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, text, since=0, timeout=10.0):
        """Waits until text appears in the log after offset since; returns True/False."""
        return wait_for(lambda: text in self.log()[since:], timeout)

    # -- controller samples --
    def samples(self):
        """This node's `samples` from `status --json` (monitor samples or idle ticks the
        controller evaluated), or None when the daemon does not answer."""
        r = self.cli("status", "--json")
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)["nodes"][0]["samples"]

    def wait_samples(self, n, timeout=60.0):
        """Waits until the controller has evaluated n more samples than now: the event that
        proves it had n chances to act (a "nothing happened" check follows it, never a fixed
        sleep). Raises AssertionError, with the log, after timeout seconds (stretched by
        POSTSURGE_SLOW): a controller that stopped ticking fails the test."""
        n0 = self.samples()
        if n0 is None:
            raise AssertionError("no status from the daemon:\n" + self.log()[-4000:])
        got = [n0]

        def advanced():
            got[0] = self.samples()
            return got[0] is not None and got[0] >= n0 + n
        if not wait_for(advanced, timeout * SLOW, 0.05):
            raise AssertionError("the controller evaluated %s samples in %g s, waited for %d "
                                 "more than %d:\n%s" % (got[0], timeout * SLOW, n, n0,
                                                          self.log()[-4000:]))
        return got[0]

    # -- clients --
    def address(self, unix=False):
        return self.unix_path if unix else (self.host, self.port)

    def client(self, unix=False, timeout=10.0):
        return PolicyClient(self.address(unix), timeout)

    def cleanup(self):
        try:
            self.stop()
        finally:
            if not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
