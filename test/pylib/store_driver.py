"""The store contract suite and its driver, for the store tests (test_store_*.py):
run_contract() runs store_contract against a URL; Driver speaks `store_contract --driver`
(stores "a" and "b" on one URL, as two nodes); assert_in_time() checks an answer came
within redis_timeout plus a margin; FakeRedis is a loopback server that speaks enough
RESP to play a misbehaving node or sentinel. Stdlib only."""
import os
import socket
import subprocess
import sys
import threading
import time

CONTRACT = os.path.join(os.environ.get("BUILD_ROOT", "build"), "test", "integration",
                        "store_contract")
TIMEOUT_MS = 300  # redis_timeout for the driver: above scheduling noise on a busy CI
ETIMEDOUT = 110
HANG_GUARD_US = 5_000_000
W = 3_600_000  # an hour: nothing slides during a test
# Answers may be late by scheduling noise on a busy machine, never by a hang.
MARGIN_MS = 250
# Under valgrind or another wrapper the timing loops are too slow to mean anything.
WRAPPED = bool(os.environ.get("POSTSURGE_WRAPPER") or os.environ.get("STORE_DRIVER_WRAPPER"))


def run_contract(redis_url=None):
    """Runs the contract suite against redis_url (None: the memory store). Returns
    (exit status, output); the output goes to stderr too, for the test log."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    p = subprocess.run([CONTRACT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=300)
    out = p.stdout.decode(errors="replace")
    sys.stderr.write(out)
    return p.returncode, out


def assert_in_time(test, r, what):
    """r, a Driver.take result, was answered within redis_timeout plus MARGIN_MS."""
    test.assertLessEqual(r[1], (TIMEOUT_MS + MARGIN_MS) * 1000, "%s took %d us" % (what, r[1]))


class Driver:
    """store_contract --driver: stores "a" and "b" on one URL, one command per line."""

    def __init__(self, url, prefix, action="local", timeout_ms=TIMEOUT_MS):
        # STORE_DRIVER_WRAPPER="valgrind -q --error-exitcode=9" checks memory use.
        wrapper = os.environ.get("STORE_DRIVER_WRAPPER", "").split()
        self.p = subprocess.Popen(wrapper + [CONTRACT, "--driver", url, prefix, action,
                                             str(timeout_ms)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        self.now = 1_700_000_000_000

    def take(self, store, key, limit, amount=1, window=W):
        """Returns (status, latency_us, allowed or None, count or None)."""
        self.now += 1
        self.p.stdin.write("take %s %d %s %d %d %d\n" % (store, self.now, key, window, limit,
                                                          amount))
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError("driver died: " + self.p.stderr.read())
        f = line.split()
        if f[0] == "error":
            raise AssertionError(line)
        allowed = None if f[2] == "-" else int(f[2])
        count = None if f[3] == "-" else int(f[3])
        return int(f[0]), int(f[1]), allowed, count

    def stats(self, store="a"):
        self.p.stdin.write("stats %s\n" % store)
        self.p.stdin.flush()
        f = [int(x) for x in self.p.stdout.readline().split()]
        return dict(zip(("connected", "local", "timeouts", "noscript", "reconnects",
                         "failures", "entries"), f))

    def close(self):
        """Quits and checks a clean exit: every handle closed, uv_loop_close() == 0.
        Returns the driver's stderr (the stores' log lines)."""
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.close()
                rc = self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise AssertionError("driver did not quit")
            err = self.p.stderr.read()
            self.p.stderr.close()
            self.p.stdout.close()
            if rc != 0:
                raise AssertionError("driver exit %d: %s" % (rc, err))
            return err
        return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()

    def wait_shared(self, key, limit=10**9, deadline_s=30):
        """Takes on store a until Redis answers again (status 0). Returns the result."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            r = self.take("a", key, limit)
            if r[0] == 0:
                return r
            time.sleep(0.05)
        raise AssertionError("Redis never answered again")


class FakeRedis:
    """A loopback server that reads RESP commands and writes what answer(args) returns
    (raw RESP bytes; args are the command's arguments as bytes, the first upper-cased),
    one thread per client. close() stops accepting; clients end with the test process."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def answer(self, args):
        return b"+OK\r\n"

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    def _client(self, c):
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line or not line.startswith(b"*"):
                    return
                args = []
                for _ in range(int(line[1:])):
                    n = int(f.readline()[1:])
                    args.append(f.read(n + 2)[:-2])
                args[0] = args[0].upper()
                c.sendall(self.answer(args))
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
