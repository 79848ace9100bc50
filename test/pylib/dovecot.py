"""A throwaway Dovecot that only authenticates, for SASL e2e tests: its config, a
passwd-file user database and its auth socket in a temporary directory, started in the
foreground (`dovecot -F`) and stopped by PID. Postfix uses it with `smtpd_sasl_type =
dovecot` and `smtpd_sasl_path = <Dovecot.socket>`. Needs root and dovecot-core; stdlib only.

    dv = Dovecot({"alice@postsurge.test": "secret"}).start()
    test.addCleanup(dv.stop)
    PostfixInstance(main_extra=dv.postfix_main_cf())
"""
import os
import shutil
import subprocess
import tempfile

from ports import wait_for

DOVECOT_BIN = "/usr/sbin/dovecot"


def unavailable():
    """Why no Dovecot can run here (a str), or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.access(DOVECOT_BIN, os.X_OK):
        return "dovecot-core is not installed (%s); `make test-deps` installs it" % DOVECOT_BIN
    return None


class Dovecot:
    """users: {name: password}. Attributes: dir, socket (the auth socket), log_path."""

    def __init__(self, users):
        self.users = dict(users)
        self.dir = None
        self.socket = None
        self.log_path = None
        self.proc = None

    def start(self, timeout=20.0):
        self.dir = tempfile.mkdtemp(prefix="postsurge-dovecot-")
        os.chmod(self.dir, 0o755)  # smtpd (user postfix) reaches the socket through it
        self.socket = os.path.join(self.dir, "auth")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            for user, pw in self.users.items():
                f.write("%s:{PLAIN}%s::::::\n" % (user, pw))
        conf = os.path.join(self.dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "base_dir = %s/run" % self.dir,
                "state_dir = %s/state" % self.dir,
                "log_path = %s" % self.log_path,
                # Authentication only: no IMAP/POP3 listener.
                "protocols =",
                "listen = 127.0.0.1",
                "ssl = no",
                "disable_plaintext_auth = no",
                "auth_mechanisms = plain login",
                # Dovecot answers a failure 2 s late by default; the tests fail on purpose.
                "auth_failure_delay = 0",
                "passdb {",
                "  driver = passwd-file",
                "  args = scheme=PLAIN username_format=%%u %s/passwd" % self.dir,
                "}",
                "userdb {",
                "  driver = static",
                "  args = uid=nobody gid=nogroup home=/nonexistent",
                "}",
                "service auth {",
                "  unix_listener %s {" % self.socket,
                "    mode = 0666",
                "  }",
                "}",
                # Nor the growing penalty (up to 15 s) for an address that failed before:
                # without anvil's penalty socket Dovecot applies none.
                "service anvil {",
                "  chroot =",
                "  unix_listener anvil-auth-penalty {",
                "    mode = 0",
                "  }",
                "}",
                ""]))
        self._out = open(os.path.join(self.dir, "dovecot.out"), "wb")
        try:
            self.proc = subprocess.Popen([DOVECOT_BIN, "-F", "-c", conf], stdout=self._out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if not wait_for(lambda: os.path.exists(self.socket) or self.proc.poll() is not None,
                            timeout) or self.proc.poll() is not None:
                raise RuntimeError("dovecot did not start:\n%s" % self.log())
        except BaseException:
            self.stop()
            raise
        return self

    def log(self):
        text = ""
        for name in ("dovecot.out", "dovecot.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f.read()
            except (OSError, TypeError):
                pass
        return text

    def postfix_main_cf(self):
        """main.cf lines that make smtpd authenticate against this Dovecot."""
        return ["smtpd_sasl_type = dovecot", "smtpd_sasl_path = %s" % self.socket]

    def stop(self):
        """Stops the master by PID (it stops its children) and removes the directory."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if getattr(self, "_out", None):
            self._out.close()
            self._out = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
