"""A real systemd-journald of the test's own, for tests of the journal as a mail log.

    with Journald() as jd:
        jd.syslog("postfix/smtpd", "connect from x[192.0.2.1]", pid=123)
        ... maillog_file = "journal:" + jd.directory ...

journald runs without systemd as PID 1 as a journal *namespace* instance
(`systemd-journald NAME`): its sockets are in /run/systemd/journal.NAME/, its files in a
directory of their own (/var/log/journal/MACHINE-ID.NAME), so it never touches the host's
journal. Messages go in as syslog datagrams on its dev-log socket, as Postfix's syslog(3)
sends them. The daemon is stopped by PID and its files removed, also when a test fails.
Needs root (journald opens /run and /var/log). Stdlib only.

A program that logs with syslog(3) (Postfix) writes to /dev/log, the host's, not this
journald's. `jd.with_dev_log(argv)` runs argv in a private mount namespace (unshare) whose
/dev is a tmpfs of links to the host's /dev entries plus /dev/log -> this journald's
dev-log socket; daemons argv starts stay in that namespace and log here. The host's /dev
is never touched. `dev_log_unavailable()` says why that cannot be done here.
"""
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

JOURNALD = next((p for p in ("/lib/systemd/systemd-journald",
                             "/usr/lib/systemd/systemd-journald") if os.path.exists(p)), None)

# syslog facility mail (2) and other (user, 1); severities.
MAIL, USER = 2, 1
WARNING, INFO = 4, 6


def unavailable():
    """Why a test journald cannot run here, or None."""
    if JOURNALD is None:
        return "systemd-journald is not installed"
    if os.geteuid() != 0:
        return "starting systemd-journald needs root"
    if not shutil.which("journalctl"):
        return "journalctl is not installed"
    return None


# Run by `sh -c` in the new mount namespace: $1 is an empty directory for the host's /dev,
# $2 the journald's dev-log socket, the rest the command.
_DEV_LOG_SCRIPT = r"""
set -e
old=$1; sock=$2; shift 2
mount --rbind /dev "$old"
mount -t tmpfs -o mode=755,nosuid tmpfs /dev
for e in "$old"/* "$old"/.[!.]*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    ln -s "$e" "/dev/${e##*/}"
done
rm -f /dev/log
ln -s "$sock" /dev/log
exec "$@"
"""


def dev_log_unavailable():
    """Why programs cannot be given a private /dev/log here (unshare or mount not
    permitted), or None."""
    if not shutil.which("unshare"):
        return "unshare is not installed"
    if os.geteuid() != 0:
        return "a private mount namespace needs root"
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unshare --mount failed: %s" % e
    if r.returncode != 0:
        return "unshare --mount / mount not permitted here: %s" % r.stderr.strip()
    return None


class Journald:
    def __init__(self, name=None, timeout=15.0):
        self.name = name or "pstest%d%d" % (os.getpid(), int(time.time() * 1000) % 100000)
        self.run_dir = "/run/systemd/journal.%s" % self.name
        self.dev_log = os.path.join(self.run_dir, "dev-log")
        self.proc = subprocess.Popen(
            [JOURNALD, self.name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ, SYSTEMD_LOG_TARGET="console", SYSTEMD_LOG_LEVEL="info"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.dev_log) or not self._directory():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") \
                    if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError("systemd-journald %s did not start: %s" % (self.name, err))
            # The files appear with the first entry: write one.
            if os.path.exists(self.dev_log):
                self.syslog("pstest", "journald started", facility=USER)
            time.sleep(0.05)
        self.directory = self._directory()

    def _directory(self):
        for base in ("/var/log/journal", "/run/log/journal"):
            found = glob.glob(os.path.join(base, "*.%s" % self.name))
            if found:
                return found[0]
        return None

    def syslog(self, ident, message, pid=None, facility=MAIL, severity=INFO):
        """Sends one syslog datagram, as syslog(3) does: "<PRI>TIMESTAMP IDENT[PID]: MSG"."""
        tag = "%s[%d]" % (ident, pid) if pid is not None else ident
        stamp = time.strftime("%b %e %H:%M:%S")
        data = "<%d>%s %s: %s" % (facility * 8 + severity, stamp, tag, message)
        self.sock.sendto(data.encode(), self.dev_log)

    def with_dev_log(self, argv, workdir):
        """argv wrapped to run where /dev/log is this journald's socket (see the module
        text); workdir holds the mount point of the host's /dev (removable once every
        process of the namespace is gone)."""
        old = tempfile.mkdtemp(prefix="hostdev-", dir=workdir)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                _DEV_LOG_SCRIPT, "sh", old, self.dev_log] + list(argv)

    def journalctl(self, *args):
        return subprocess.run(["journalctl", "--namespace=" + self.name, *args],
                              capture_output=True, text=True, timeout=60)

    def sync(self):
        """Waits until journald has written everything received (journalctl --sync)."""
        r = self.journalctl("--sync")
        if r.returncode != 0:
            raise RuntimeError("journalctl --sync: " + r.stderr)

    def rotate(self):
        r = self.journalctl("--rotate")
        if r.returncode != 0:
            raise RuntimeError("journalctl --rotate: " + r.stderr)

    def vacuum(self):
        """Removes every archived file (what --vacuum-files=1 keeps: the active one)."""
        r = self.journalctl("--vacuum-files=1")
        if r.returncode != 0:
            raise RuntimeError("journalctl --vacuum-files: " + r.stderr)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stderr.close()
        self.sock.close()
        d = self._directory()
        if d:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
