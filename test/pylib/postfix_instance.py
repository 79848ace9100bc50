"""A throwaway, isolated Postfix 3.7 instance for e2e, stress and report tests.

PostfixInstance builds a complete Postfix in a temporary directory (config, queue with the
owners and modes of /etc/postfix/postfix-files, a maillog file instead of syslog, or
syslog into a test journald (journald=), chroot n everywhere), listens on 127.0.0.1:<free port>, relays a test domain to an smtp-sink on
another free port and routes a second domain to a closed port so its mail is deferred.
It is started with `postfix -c DIR start` and always stopped by PID (master and its
children, smtp-sink), also when start-up fails. Needs root. Python 3 stdlib only.

Typical use:

    with PostfixInstance(main_extra=["smtpd_recipient_restrictions = ..."]) as pf:
        pf.send_swaks(to="a@" + pf.sink_domain)
        pf.wait_queue_empty(30)
        assert pf.sink.recipients() == ["<a@sink.test>"]
"""
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time

from ports import free_port, tcp_listening, wait_for

POSTFIX_BIN = "/usr/sbin/postfix"
POSTCONF_BIN = "/usr/sbin/postconf"
POSTQUEUE_BIN = "/usr/sbin/postqueue"
POSTSUPER_BIN = "/usr/sbin/postsuper"
SMTP_SINK_BIN = "/usr/sbin/smtp-sink"
SMTP_SOURCE_BIN = "/usr/sbin/smtp-source"
SWAKS_BIN = "/usr/bin/swaks"

# Queue subdirectories and (owner, group, mode) as /etc/postfix/postfix-files lists them;
# None means root / the mail owner's own group.
_QUEUE_DIRS = [
    ("active", "postfix", None, 0o700),
    ("bounce", "postfix", None, 0o700),
    ("corrupt", "postfix", None, 0o700),
    ("defer", "postfix", None, 0o700),
    ("deferred", "postfix", None, 0o700),
    ("flush", "postfix", None, 0o700),
    ("hold", "postfix", None, 0o700),
    ("incoming", "postfix", None, 0o700),
    ("private", "postfix", None, 0o700),
    ("maildrop", "postfix", "postdrop", 0o730),
    ("public", "postfix", "postdrop", 0o710),
    ("pid", "root", None, 0o755),
    ("saved", "postfix", None, 0o700),
    ("trace", "postfix", None, 0o700),
]

# The daemon services every instance needs, all chroot n (column 5). The smtpd listener,
# postscreen and postlog are added by _master_cf().
_BASE_MASTER = [
    ("pickup/unix", "pickup    unix  n       -       n       60      1       pickup"),
    ("cleanup/unix", "cleanup   unix  n       -       n       -       0       cleanup"),
    ("qmgr/unix", "qmgr      unix  n       -       n       300     1       qmgr"),
    ("tlsmgr/unix", "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"),
    ("rewrite/unix", "rewrite   unix  -       -       n       -       -       trivial-rewrite"),
    ("bounce/unix", "bounce    unix  -       -       n       -       0       bounce"),
    ("defer/unix", "defer     unix  -       -       n       -       0       bounce"),
    ("trace/unix", "trace     unix  -       -       n       -       0       bounce"),
    ("verify/unix", "verify    unix  -       -       n       -       1       verify"),
    ("flush/unix", "flush     unix  n       -       n       1000?   0       flush"),
    ("proxymap/unix", "proxymap  unix  -       -       n       -       -       proxymap"),
    ("proxywrite/unix", "proxywrite unix -       -       n       -       1       proxymap"),
    ("smtp/unix", "smtp      unix  -       -       n       -       -       smtp"),
    ("relay/unix", "relay     unix  -       -       n       -       -       smtp"),
    ("showq/unix", "showq     unix  n       -       n       -       -       showq"),
    ("error/unix", "error     unix  -       -       n       -       -       error"),
    ("retry/unix", "retry     unix  -       -       n       -       -       error"),
    ("discard/unix", "discard   unix  -       -       n       -       -       discard"),
    ("local/unix", "local     unix  -       n       n       -       -       local"),
    ("virtual/unix", "virtual   unix  -       n       n       -       -       virtual"),
    ("lmtp/unix", "lmtp      unix  -       -       n       -       -       lmtp"),
    ("anvil/unix", "anvil     unix  -       -       n       -       1       anvil"),
    ("scache/unix", "scache    unix  -       -       n       -       1       scache"),
    ("postlog/unix-dgram", "postlog   unix-dgram n  -       n       -       1       postlogd"),
]


def _pid_alive(pid):
    """True if pid names a live, non-zombie process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(ppid):
    """PIDs of the direct children of ppid, from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == ppid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def _kill_wait(pids, timeout=5.0):
    """SIGTERM each pid, then SIGKILL what is left after timeout; reaps our own children."""
    pids = [p for p in pids if p and _pid_alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not wait_for(lambda: not any(_pid_alive(p) for p in pids), timeout):
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not any(_pid_alive(p) for p in pids), 5.0)


class SmtpSink:
    """smtp-sink(1) on 127.0.0.1:port that dumps every transaction to a file in dump_dir.

    delays: {command: whole seconds} answered late with `-W command:delay` (e.g. {"rcpt": 2} or
    {"data": 5}) so delivery agents stay busy. extra_args: more smtp-sink options.
    start() raises RuntimeError if it does not listen in time; stop() kills by PID.
    """

    def __init__(self, workdir, port=None, delays=None, extra_args=(), user="postfix"):
        self.port = port or free_port()
        self.dump_dir = os.path.join(workdir, "sink-%d" % self.port)
        self.delays = dict(delays or {})
        self.extra_args = list(extra_args)
        self.user = user
        self.proc = None
        self._log = None

    def start(self, timeout=10.0):
        os.makedirs(self.dump_dir, mode=0o700, exist_ok=True)
        pw = pwd.getpwnam(self.user)
        os.chown(self.dump_dir, pw.pw_uid, pw.pw_gid)
        args = [SMTP_SINK_BIN, "-4", "-u", self.user, "-d", self.dump_dir + "/msg."]
        for cmd, secs in self.delays.items():
            args += ["-W", "%s:%s" % (cmd, secs)]
        if self.delays:
            # smtp-sink mis-orders delayed replies to pipelined commands ("503 need RCPT
            # command" for a delayed RCPT): make the client wait for each reply.
            args.append("-p")
        args += self.extra_args + ["127.0.0.1:%d" % self.port, "256"]
        self._log = open(self.dump_dir + ".log", "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if not wait_for(lambda: tcp_listening(self.port) or self.proc.poll() is not None,
                        timeout) or self.proc.poll() is not None:
            self.stop()
            with open(self.dump_dir + ".log", errors="replace") as f:
                raise RuntimeError("smtp-sink did not listen on port %d: %s"
                                   % (self.port, f.read()[-2000:]))
        return self

    def stop(self):
        if self.proc is not None:
            _kill_wait([self.proc.pid])
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def messages(self):
        """Every dumped transaction as a dict {"mail": str, "rcpts": [str], "client": str,
        "text": str}, in no particular order. A transaction still in progress may be
        missing or partial."""
        out = []
        try:
            names = os.listdir(self.dump_dir)
        except OSError:
            return out
        for n in names:
            try:
                with open(os.path.join(self.dump_dir, n), errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            m = {"mail": "", "rcpts": [], "client": "", "text": text}
            for line in text.splitlines():
                if line.startswith("X-Rcpt-Args: "):
                    m["rcpts"].append(line[13:].split()[0] if line[13:].split() else "")
                elif line.startswith("X-Mail-Args: "):
                    m["mail"] = line[13:]
                elif line.startswith("X-Client-Addr: "):
                    m["client"] = line[15:]
                elif line.startswith("Received: "):
                    break
            out.append(m)
        return out

    def recipients(self):
        """Every recipient (like `<a@b>`, as smtp-sink records it) received so far."""
        return [r for m in self.messages() for r in m["rcpts"]]


class PostfixInstance:
    """An isolated Postfix instance under a temp dir; see the module docstring.

    Arguments (all optional):
      main_extra        list of main.cf lines appended last (they win over defaults).
      master_extra      list of master.cf lines appended (continuations start with space).
      master_replace    {"service/type": "full master.cf line" or None to drop it}, e.g.
                        {"smtp/unix": "smtp unix - - n - 2 smtp"}.
      process_limit     process limit of the smtpd that serves the port ("-" = default 100).
      postscreen        if true, the port is `postscreen` (process limit 1) and smtpd runs
                        as `smtpd pass` with process_limit (the only set-up where master
                        reports saturation and stress=yes for a loopback listener).
      sink              start an smtp-sink and relay sink_domain to it (default True).
      sink_delays       {command: seconds} smtp-sink answers late (SmtpSink.delays).
      sink_domain       domain relayed to the sink (default "sink.test").
      defer_domain      domain routed to the closed port 127.0.0.1:9 (mail is deferred).
      mynetworks        main.cf mynetworks (default "127.0.0.0/8"); relaying is for
                        $mynetworks and the two test domains only.
      syslog_name       main.cf syslog_name (default "postfix").
      journald          a test journald (journald.Journald): Postfix logs with syslog(3)
                        to it instead of a maillog file; `postfix start` runs in a private
                        mount namespace whose /dev/log is the journald's socket
                        (Journald.with_dev_log), so master and every daemon log there.
                        maillog() then reads that journal; maillog_path is None.
      keep              keep the temp dir after stop (also env POSTFIX_INSTANCE_KEEP=1).

    Attributes after start(): dir (instance root, the `-c` config dir), queue_dir, port,
    smtpd_service ("127.0.0.1:PORT/inet" or "smtpd/pass", usable with `postconf -F/-P`),
    sink (SmtpSink or None), maillog_path, master_pid().
    """

    def __init__(self, main_extra=(), master_extra=(), master_replace=None,
                 process_limit="-", postscreen=False, sink=True, sink_delays=None,
                 sink_domain="sink.test", defer_domain="defer.test",
                 mynetworks="127.0.0.0/8", syslog_name="postfix", keep=False, journald=None):
        self.main_extra = list(main_extra)
        self.master_extra = list(master_extra)
        self.master_replace = dict(master_replace or {})
        self.process_limit = str(process_limit)
        self.postscreen = postscreen
        self.want_sink = sink
        self.sink_delays = sink_delays
        self.sink_domain = sink_domain
        self.defer_domain = defer_domain
        self.mynetworks = mynetworks
        self.syslog_name = syslog_name
        self.journald = journald
        self.keep = keep or os.environ.get("POSTFIX_INSTANCE_KEEP") == "1"
        self.dir = None
        self.queue_dir = None
        self.port = None
        self.sink = None
        self.maillog_path = None
        self._master_pid = None
        self.smtpd_service = "smtpd/pass" if postscreen else None

    # --- life cycle -----------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self, timeout=60.0):
        """Creates the instance, starts smtp-sink and Postfix, waits until the smtpd port
        listens. On any failure everything started is stopped and the error re-raised."""
        try:
            self._build()
            if self.want_sink:
                self.sink = SmtpSink(self.dir, delays=self.sink_delays).start()
                self._write_transport()
            if self.journald:
                r = self._run(self.journald.with_dev_log(
                    [POSTFIX_BIN, "-c", self.dir, "start"], self.dir), False, timeout)
            else:
                r = self.postfix("start", check=False, timeout=timeout)
            if r.returncode != 0:
                raise RuntimeError("postfix start failed (%d): %s\n%s" %
                                   (r.returncode, r.stdout + r.stderr, self.maillog()))
            if not wait_for(lambda: tcp_listening(self.port), timeout):
                raise RuntimeError("Postfix does not listen on %d:\n%s" %
                                   (self.port, self.maillog()))
            self._master_pid = self._read_master_pid()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stops Postfix and smtp-sink, killing by PID whatever is left; removes the temp
        dir unless keep. Safe to call more than once and after a failed start()."""
        if self.dir is None:
            return
        pid = self._master_pid or self._read_master_pid()
        if pid and _pid_alive(pid):
            kids = _children(pid)
            self.postfix("stop", check=False, timeout=30)
            if not wait_for(lambda: not _pid_alive(pid), 10.0):
                _kill_wait([pid])
            # Children exit when master goes; kill stragglers by PID.
            _kill_wait([k for k in kids if _pid_alive(k)])
        self._master_pid = None
        if self.sink:
            self.sink.stop()
        if not self.keep and self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    # --- construction ---------------------------------------------------------------

    def _build(self):
        self.dir = tempfile.mkdtemp(prefix="postsurge-pf-")
        os.chmod(self.dir, 0o755)  # Postfix daemons run as postfix and must traverse it.
        self.queue_dir = os.path.join(self.dir, "queue")
        self.maillog_path = None if self.journald else os.path.join(self.dir, "maillog")
        self.port = free_port()
        if not self.postscreen:
            self.smtpd_service = "127.0.0.1:%d/inet" % self.port
        pf = pwd.getpwnam("postfix")
        postdrop = grp.getgrnam("postdrop").gr_gid
        os.mkdir(self.queue_dir, 0o755)
        for name, owner, group, mode in _QUEUE_DIRS:
            p = os.path.join(self.queue_dir, name)
            os.mkdir(p)
            uid = pf.pw_uid if owner == "postfix" else 0
            gid = postdrop if group == "postdrop" else (pf.pw_gid if owner == "postfix" else 0)
            os.chown(p, uid, gid)
            os.chmod(p, mode)
        data = os.path.join(self.dir, "data")
        os.mkdir(data, 0o700)
        os.chown(data, pf.pw_uid, pf.pw_gid)
        # quick-start makes postfix-script skip the slow post-install checks.
        open(os.path.join(self.queue_dir, "quick-start"), "w").close()
        open(os.path.join(self.dir, "transport"), "w").close()
        self._write(os.path.join(self.dir, "main.cf"), self._main_cf())
        self._write(os.path.join(self.dir, "master.cf"), self._master_cf())

    def _main_cf(self):
        d = self.dir
        lines = [
            "# generated by test/pylib/postfix_instance.py",
            "compatibility_level = 3.6",
            "queue_directory = %s/queue" % d,
            "data_directory = %s/data" % d,
            "syslog_name = %s" % self.syslog_name,
        ] + ([] if self.journald else [
            "maillog_file = %s/maillog" % d,
            "maillog_file_prefixes = %s" % d,
        ]) + [
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = mx.postsurge.test",
            "mydomain = postsurge.test",
            "myorigin = $myhostname",
            "mydestination = $myhostname, localhost",
            "mynetworks = %s" % self.mynetworks,
            "relay_domains = %s %s" % (self.sink_domain, self.defer_domain),
            "transport_maps = texthash:%s/transport" % d,
            # Nothing may leave the machine: other domains fail fast instead of using DNS.
            "default_transport = error:5.7.1 postsurge test instance delivers nowhere else",
            "smtp_dns_support_level = disabled",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "smtpd_banner = $myhostname ESMTP postsurge-test",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "smtp_connect_timeout = 5s",
            "minimal_backoff_time = 300s",
            "maximal_backoff_time = 600s",
            "queue_run_delay = 300s",
            "",
        ]
        return "\n".join(lines + self.main_extra) + "\n"

    def _master_cf(self):
        entries = list(_BASE_MASTER)
        if self.postscreen:
            entries.insert(0, ("127.0.0.1:%d/inet" % self.port,
                               "127.0.0.1:%d inet n - n - 1 postscreen" % self.port))
            entries.insert(1, ("smtpd/pass",
                               "smtpd     pass  -       -       n       -       %s       smtpd"
                               % self.process_limit))
            entries.insert(2, ("dnsblog/unix", "dnsblog   unix  -       -       n       -       0       dnsblog"))
            entries.insert(3, ("tlsproxy/unix", "tlsproxy  unix  -       -       n       -       0       tlsproxy"))
        else:
            entries.insert(0, ("127.0.0.1:%d/inet" % self.port,
                               "127.0.0.1:%d inet n - n - %s smtpd" % (self.port, self.process_limit)))
        out = ["# generated by test/pylib/postfix_instance.py"]
        seen = set()
        for key, line in entries:
            seen.add(key)
            if key in self.master_replace:
                line = self.master_replace[key]
                if line is None:
                    continue
            out.append(line)
        for key, line in self.master_replace.items():
            if key not in seen and line is not None:
                out.append(line)
        out += self.master_extra
        return "\n".join(out) + "\n"

    def _write_transport(self):
        lines = []
        if self.sink:
            lines.append("%s smtp:[127.0.0.1]:%d" % (self.sink_domain, self.sink.port))
        # Port 9 (discard) is closed on this loopback: delivery is refused, mail deferred.
        lines.append("%s smtp:[127.0.0.1]:9" % self.defer_domain)
        self._write(os.path.join(self.dir, "transport"), "\n".join(lines) + "\n")

    @staticmethod
    def _write(path, text):
        with open(path, "w") as f:
            f.write(text)
        # Postfix commands stall ~2 s on a main.cf younger than a few seconds; files we
        # write before start are final, so date them back.
        past = time.time() - 60
        os.utime(path, (past, past))

    def _read_master_pid(self):
        if not self.queue_dir:
            return None
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    # --- processes ----------------------------------------------------------------

    def master_pid(self):
        """PID of the running master, or None."""
        pid = self._master_pid or self._read_master_pid()
        return pid if pid and _pid_alive(pid) else None

    def smtpd_pids(self):
        """PIDs of the master's children whose comm is smtpd."""
        pid = self.master_pid()
        return [c for c in _children(pid) if _comm(c) == "smtpd"] if pid else []

    # --- command wrappers --------------------------------------------------------------

    def _run(self, args, check=True, timeout=60, input=None):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise RuntimeError("%s exited %d: %s%s" % (" ".join(args), r.returncode,
                                                       r.stdout, r.stderr))
        return r

    def postfix(self, *args, check=True, timeout=60):
        """Runs `postfix -c DIR ARGS...` and returns the CompletedProcess."""
        return self._run([POSTFIX_BIN, "-c", self.dir] + list(args), check, timeout)

    def postconf(self, *args, check=True, timeout=60):
        """Runs `postconf -c DIR ARGS...` and returns its stdout. Note that an edit with
        -e/-X/-M/-P makes the next Postfix command stall ~2 s (fresh main.cf)."""
        return self._run([POSTCONF_BIN, "-c", self.dir] + list(args), check, timeout).stdout

    def postsuper(self, *args, check=True, timeout=60):
        return self._run([POSTSUPER_BIN, "-c", self.dir] + list(args), check, timeout).stdout

    def reload(self):
        """`postfix -c DIR reload`."""
        return self.postfix("reload")

    def maillog(self):
        """The whole maillog text so far ('' if not yet written); with a journald, this
        instance's entries of that journal as syslog lines."""
        if self.journald:
            r = self.journald.journalctl("-q", "-o", "short-iso", "--no-pager")
            rx = re.compile(r"^\S+ \S+ %s(/\S*)?(\[\d+\])?: " % re.escape(self.syslog_name))
            return "".join(l + "\n" for l in r.stdout.splitlines() if rx.match(l))
        try:
            with open(self.maillog_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def queue_json(self):
        """`postqueue -c DIR -j` parsed: a list of dicts, one per queued message. Raises
        RuntimeError when postqueue fails (an empty list always means an empty queue)."""
        r = self._run([POSTQUEUE_BIN, "-c", self.dir, "-j"], check=True, timeout=30)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def wait_queue_empty(self, timeout=60.0, ignore_deferred=False):
        """Polls the queue until it is empty (or holds only deferred mail when
        ignore_deferred); True on success, False after timeout."""
        def empty():
            q = self.queue_json()
            if ignore_deferred:
                q = [m for m in q if m.get("queue_name") != "deferred"]
            return not q
        return wait_for(empty, timeout, 0.2)

    def wait_maillog(self, pattern, timeout=30.0, count=1):
        """Waits until regex pattern matches at least count maillog lines; returns the list
        of matching lines (possibly shorter than count after timeout)."""
        rx = re.compile(pattern)
        res = []

        def check():
            res[:] = [l for l in self.maillog().splitlines() if rx.search(l)]
            return len(res) >= count
        wait_for(check, timeout, 0.1)
        return res

    # --- SMTP clients ----------------------------------------------------------------

    def send_swaks(self, to=None, sender="sender@example.org", helo="client.example.org",
                   extra_args=(), timeout=60):
        """Sends one message with swaks to this instance. to: an address or a list (sent
        as separate RCPTs). Returns the CompletedProcess (returncode 0 means 250 at the
        end of DATA; stdout holds the transcript)."""
        if to is None:
            to = "rcpt@" + self.sink_domain
        if not isinstance(to, str):
            to = ",".join(to)
        args = [SWAKS_BIN, "--server", "127.0.0.1:%d" % self.port, "--to", to,
                "--from", sender, "--helo", helo, "--timeout", "%ds" % timeout]
        return self._run(args + list(extra_args), check=False, timeout=timeout + 10)

    def smtp_source(self, sessions=1, messages=1, recipients=1, to=None,
                    sender="load@example.org", size=500, unique_rcpts=True,
                    extra_args=(), timeout=120):
        """Runs smtp-source against this instance: `sessions` parallel sessions, `messages`
        messages in total, `recipients` RCPTs per message, all to `to` (default
        load@sink_domain), made unique per RCPT with -N when unique_rcpts. Returns the
        CompletedProcess; smtp-source exits non-zero on an unexpected reply."""
        if to is None:
            to = "load@" + self.sink_domain
        args = [SMTP_SOURCE_BIN, "-s", str(sessions), "-m", str(messages),
                "-r", str(recipients), "-l", str(size), "-f", sender, "-t", to]
        if unique_rcpts:
            args.append("-N")
        args += list(extra_args) + ["127.0.0.1:%d" % self.port]
        return self._run(args, check=False, timeout=timeout)
