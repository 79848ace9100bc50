"""Integration tests of least privilege in `postsurge serve` (issue 6), as root: serve
binds, then runs as `user = nobody` (Uid/Gid in /proc/PID/status) with a privileged helper
(its child, still root) that alone applies and restores the stress overrides; policy
answers work; a forced stress episode applies through the helper and restores main.cf and
master.cf byte-exact; a journal the unprivileged user forged is refused; started as
non-root there is no helper and status says overrides are unavailable; nothing in
state_directory is world-writable (mode walk); a monitoring user in the daemon's group
(another system user, through setpriv) runs `status`, `events` and a read-only `report`
that writes nothing, and is refused `stress`, `restore` and `limits reset` with who may,
while a user outside the group cannot use the socket at all.
"""
import json
import os
import pwd
import grp
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest

from ports import free_port, tcp_listening, wait_for
from postsurge import POSTSURGE, Postsurge, PolicyClient, children, comm, request
import testmain

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name
# The monitoring user: a system user that is neither root nor the daemon's.
MONITOR = pwd.getpwnam("daemon")

MAIN_CF = """# main.cf: layout and comments must survive
compatibility_level = 3.6
queue_directory = {d}/queue
smtpd_soft_error_limit   =   7
"""
MASTER_CF = """# master.cf
smtp      inet  n       -       n       -       4       smtpd
pickup    unix  n       -       n       60      1       pickup
"""


def read_bytes(p):
    with open(p, "rb") as f:
        return f.read()


def proc_ids(pid):
    """(uids, gids, groups) of pid from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return ([int(x) for x in out["Uid"]], [int(x) for x in out["Gid"]],
            [int(x) for x in out.get("Groups", [])])


def base_is(p, name):
    return os.path.basename(p) == name


def replace_journal(jpath, data, owner=None):
    """Puts a journal with these bytes in place by rename, as the state directory's user
    could: owned by owner (a pwd entry; None keeps root), mode 0600."""
    tmp = jpath + ".forged"
    with open(tmp, "wb") as f:
        f.write(data)
    if owner is not None:
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, jpath)


def mode_problems(top):
    """Paths under top (and top) that are world-writable, or not as strict as expected."""
    bad = []
    for root, dirs, files in os.walk(top):
        for name in [None] + dirs + files:
            p = root if name is None else os.path.join(root, name)
            st = os.lstat(p)
            m = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                continue
            if base_is(p, "policy.sock"):
                # Postfix's smtpd connects: listen_unix_mode decides (0660 in these tests).
                if m != 0o660:
                    bad.append("%s: mode %o, want listen_unix_mode 0660" % (p, m))
                continue
            if m & 0o002:
                bad.append("%s: world-writable %o" % (p, m))
            if p == top and m & 0o027:
                bad.append("%s: state_directory mode %o (want 0750 or stricter)" % (p, m))
            base = os.path.basename(p)
            if base == "journal.json" and m != 0o600:
                bad.append("%s: mode %o, want 0600" % (p, m))
            if base == "control.sock" and m != 0o660:
                bad.append("%s: mode %o, want 0660 (the daemon's group reads)" % (p, m))
    return bad


@unittest.skipUnless(os.geteuid() == 0, "needs root (serve drops privileges)")
class PrivsepTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="postsurge-priv-")
        os.chmod(self.tmp, 0o755)  # the dropped user runs postconf on the files here
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.pfdir = os.path.join(self.tmp, "postfix")
        os.mkdir(self.pfdir)
        os.mkdir(os.path.join(self.pfdir, "queue"))
        self.main = os.path.join(self.pfdir, "main.cf")
        self.master = os.path.join(self.pfdir, "master.cf")
        with open(self.main, "w") as f:
            f.write(MAIN_CF.format(d=self.pfdir))
        with open(self.master, "w") as f:
            f.write(MASTER_CF)
        past = time.time() - 60  # postconf stalls on a very young main.cf
        os.utime(self.main, (past, past))
        os.utime(self.master, (past, past))
        self.main0, self.master0 = read_bytes(self.main), read_bytes(self.master)
        self.reloads = os.path.join(self.tmp, "reloads")
        self.fake_postfix = os.path.join(self.tmp, "postfix.sh")
        with open(self.fake_postfix, "w") as f:
            # Records who ran it: the helper must, as root.
            f.write('#!/bin/sh\necho "$(id -u) $@" >> %s\n' % self.reloads)
        os.chmod(self.fake_postfix, 0o755)

    def cfg(self, **extra):
        c = {
            "user": "nobody", "group": NOGROUP,
            "postfix_config_directory": self.pfdir,
            "postfix_command": self.fake_postfix,
            "postconf_command": POSTCONF,
            "maillog_file": "",
            "monitor_interval": "200ms",
            "stress_min_interval": "0",
            "stress_exit_delay": "1s",
            "command_timeout": "20s",
            "node_name": "n1",
            "listen_unix_mode": "0660",
            "stress_overrides": "yes",
        }
        c.update({k: str(v) for k, v in extra.items()})
        return c

    def daemon(self, **extra):
        ps = Postsurge(extra=self.cfg(**extra), unix=True)
        self.addCleanup(ps.cleanup)
        self.assertTrue(ps.wait_log("override profile:", timeout=30), ps.log())
        return ps

    def me(self, ps):
        r = ps.cli("status", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["nodes"][0]

    def events(self, ps):
        r = ps.cli("events", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["events"]

    def wait_state(self, ps, state, timeout=60):
        ok = wait_for(lambda: self.me(ps)["overrides_state"] == state, timeout, 0.1)
        self.assertTrue(ok, "%s\n%s" % (self.me(ps), ps.log()))

    def helper_pid(self, ps):
        kids = [k for k in children(ps.pid) if comm(k) == "postsurge-priv"]
        self.assertEqual(len(kids), 1, "helper among %s" % children(ps.pid))
        return kids[0]

    def test_privsep_drop_ids_helper_and_policy(self):
        ps = self.daemon()
        uids, gids, groups = proc_ids(ps.pid)
        self.assertEqual(uids, [NOBODY.pw_uid] * 4)
        self.assertEqual(gids, [NOBODY.pw_gid] * 4)
        self.assertNotIn(0, groups)
        h = self.helper_pid(ps)
        huids, hgids, _ = proc_ids(h)
        self.assertEqual(huids[0], 0)
        # The helper holds no listening socket of the daemon: only its socketpair.
        for fd in os.listdir("/proc/%d/fd" % h):
            target = os.readlink("/proc/%d/fd/%s" % (h, fd))
            self.assertFalse(target.startswith("TCP"), target)
        with ps.client() as c:
            self.assertEqual(c.ask(request()), "DUNNO")
        with ps.client(unix=True) as c:
            self.assertEqual(c.ask(request()), "DUNNO")
        me = self.me(ps)
        self.assertTrue(me["overrides_available"], me)
        self.assertEqual(me["privileges"], "helper")
        st = os.stat(os.path.join(ps.dir, "control.sock"))
        self.assertEqual(st.st_uid, NOBODY.pw_uid)
        # The helper exits when the daemon does.
        ps.stop()
        self.assertTrue(wait_for(lambda: comm(h) != "postsurge-priv", 10))

    def test_privsep_episode_through_helper_byte_exact_and_modes(self):
        ps = self.daemon()
        r = ps.cli("stress", "enter")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_state(ps, "applied")
        self.assertIn("smtpd_soft_error_limit = 3", read_bytes(self.main).decode())
        jpath = os.path.join(ps.dir, "journal.json")
        st = os.stat(jpath)
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o600))
        with open(self.reloads) as f:
            self.assertEqual(f.read(), "0 -c %s reload\n" % self.pfdir)
        self.assertEqual(mode_problems(ps.dir), [])
        r = ps.cli("stress", "exit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertFalse(os.path.exists(jpath))
        kinds = [e["kind"] for e in self.events(ps)]
        self.assertIn("overrides-applied", kinds)
        self.assertIn("overrides-restored", kinds)
        self.assertEqual(mode_problems(ps.dir), [])
        log = ps.log()
        self.assertLess(log.index("editing a copy: %s -c " % POSTCONF),
                        log.index("journal written"))
        self.assertLess(log.index("journal written"), log.index("installed: %s" % self.main))
        self.assertLess(log.index("installed: %s" % self.main),
                        log.index("running: %s -c" % self.fake_postfix))

    def test_privsep_forged_journal_refused(self):
        ps = self.daemon()
        self.assertEqual(ps.cli("stress", "enter").returncode, 0)
        self.wait_state(ps, "applied")
        jpath = os.path.join(ps.dir, "journal.json")
        good = read_bytes(jpath)
        # The unprivileged user replaces the journal (its directory allows that): the
        # helper must not take file bytes to write back from it.
        replace_journal(jpath, good, NOBODY)
        self.assertEqual(ps.cli("stress", "exit").returncode, 0)
        self.assertTrue(wait_for(lambda: "restore-failed" in
                                 [e["kind"] for e in self.events(ps)], 30, 0.2), ps.log())
        self.assertIn("refused", self.me(ps)["error"])
        self.assertIn("smtpd_soft_error_limit = 3", read_bytes(self.main).decode())
        # root's journal back: the restore goes through.
        replace_journal(jpath, good)
        self.assertEqual(ps.cli("restore").returncode, 0)
        self.wait_state(ps, "none")
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)

    def test_offline_restore_refuses_forged_journal(self):
        # The daemon dies while its overrides are in force; the unprivileged user then
        # forges the journal. `postsurge restore` run by root without a daemon must not
        # write file bytes from it back, and must restore from root's own journal.
        ps = self.daemon()
        self.assertEqual(ps.cli("stress", "enter").returncode, 0)
        self.wait_state(ps, "applied")
        ps.proc.kill()
        ps.proc.wait(10)
        jpath = os.path.join(ps.dir, "journal.json")
        good = read_bytes(jpath)
        replace_journal(jpath, good, NOBODY)
        r = ps.cli("restore")
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("refused", r.stdout + r.stderr)
        self.assertIn("smtpd_soft_error_limit = 3", read_bytes(self.main).decode())
        replace_journal(jpath, good)
        r = ps.cli("restore")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)

    # ---- a compromised serve (issue: privilege separation that contains) ----------

    def probe_config(self, state):
        lines = ["state_directory = %s" % state, "log_destination = stderr",
                 "http_listen ="]
        lines += ["%s = %s" % kv for kv in self.cfg().items()]
        conf = os.path.join(self.tmp, "probe.cf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return conf

    def run_probe(self, state, payloads):
        probe = os.path.join(os.environ["BUILD_ROOT"], "test", "integration", "privsep_probe")
        r = subprocess.run([probe, self.probe_config(state)] + payloads, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        return lines[0], lines[1:], r.stderr

    def test_privsep_helper_refuses_what_leads_to_root(self):
        """The real client, behind the real drop to the unprivileged user, asks the
        helper for each setting the review showed would give root or an open relay:
        every one refused with a logged reason, nothing run, nothing written."""
        state = os.path.join(self.tmp, "state")
        evil = os.path.join(state, "evil")
        canary = os.path.join(self.tmp, "canary")
        specs = [
            ("daemon_directory=%s" % evil, ""),
            ("command_directory=%s" % evil, ""),
            ("mailbox_command=%s/cmd" % evil, ""),
            ("sendmail_path=%s/cmd" % evil, ""),
            ("import_environment=LD_PRELOAD=%s/x.so" % evil, ""),
            ("virtual_alias_maps=hash:%s/aliases" % state, ""),
            ("mynetworks=0.0.0.0/0", ""),
            ("", "smtp/inet/mynetworks=0.0.0.0/0"),
            # one allowed entry beside a refused one: the whole request goes
            ("smtpd_soft_error_limit=3 queue_directory=%s" % state, ""),
            ("smtpd_timeout=${stress?{1}:{300}}s", ""),
        ]
        payloads = [json.dumps({"main_cf": m, "master_cf": p, "now_ms": 1}) for m, p in specs]
        who, replies, log = self.run_probe(state, payloads)
        self.assertEqual(who, {"euid": NOBODY.pw_uid, "mode": "helper"})
        self.assertEqual(len(replies), len(specs), replies)
        for (m, p), r in zip(specs, replies):
            self.assertFalse(r["ok"], (m, p, r))
            self.assertFalse(r["changed"], r)
            self.assertFalse(r["journaled"], r)
            self.assertEqual(r["fail"], "rejected", r)
            self.assertIn("request rejected", r["error"])
        self.assertEqual(log.count("apply request rejected"), len(specs), log)
        self.assertIn("daemon_directory: not a setting stress profiles may change", log)
        self.assertIn("mynetworks: not a setting stress profiles may change", log)
        self.assertNotIn("running:", log)  # no postconf -e/-P, no reload
        self.assertFalse(os.path.exists(self.reloads))
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(read_bytes(self.master), self.master0)
        self.assertEqual(sorted(os.listdir(state)), [])  # no journal, nothing else
        self.assertFalse(os.path.exists(canary))

    def test_privsep_helper_applies_documented_profile(self):
        """The same path takes every entry kind the documentation lists: the list does
        not refuse what it promises."""
        state = os.path.join(self.tmp, "state")
        prof = {"main_cf": "smtpd_client_connection_count_limit=5 smtpd_timeout=10s "
                           "postscreen_greet_action=enforce smtpd_per_request_deadline=yes",
                "master_cf": "smtp/inet/stress=yes smtp/inet/smtpd_soft_error_limit=2",
                "now_ms": 1}
        who, replies, log = self.run_probe(state, [json.dumps(prof)])
        self.assertEqual(who["euid"], NOBODY.pw_uid)
        self.assertTrue(replies[0]["ok"], replies[0])
        text = read_bytes(self.main).decode()
        self.assertIn("smtpd_client_connection_count_limit = 5", text)
        self.assertIn("-o stress=yes", read_bytes(self.master).decode())
        st = os.lstat(os.path.join(state, "journal.json"))
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o600))

    def test_privsep_planted_names_not_followed(self):
        """Symlinks, hard links and FIFOs the unprivileged user plants at every name root
        opens in state_directory: nothing followed, nothing created outside, no hang."""
        outside = os.path.join(self.tmp, "outside")
        os.mkdir(outside)
        target = os.path.join(outside, "root-file")
        with open(target, "w") as f:
            f.write("precious\n")
        # journal.json as a symlink, a FIFO, a hard link to a root file (each alone)
        for kind in ("symlink", "fifo", "hardlink"):
            state = os.path.join(self.tmp, "state-" + kind)
            os.mkdir(state, 0o750)
            jpath = os.path.join(state, "journal.json")
            if kind == "symlink":
                os.symlink(target, jpath)
            elif kind == "fifo":
                os.mkfifo(jpath, 0o600)
            else:
                os.link(target, jpath)
            os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
            prof = {"main_cf": "smtpd_soft_error_limit=3", "master_cf": "", "now_ms": 1}
            who, replies, log = self.run_probe(state, [json.dumps(prof)])
            self.assertFalse(replies[0]["ok"], (kind, replies[0]))
            self.assertEqual(replies[0]["fail"], "journal", (kind, replies[0]))
            self.assertEqual(read_bytes(self.main), self.main0, kind)
            self.assertEqual(read_bytes(target), b"precious\n", kind)
        # the journal's temporary name as a symlink to a path that does not exist yet:
        # the helper replaces the link, never creates the target.
        state = os.path.join(self.tmp, "state-tmp")
        os.mkdir(state, 0o750)
        created = os.path.join(outside, "created-by-root")
        os.symlink(created, os.path.join(state, "journal.json.postsurge-tmp"))
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
        prof = {"main_cf": "smtpd_soft_error_limit=3", "master_cf": "", "now_ms": 1}
        who, replies, log = self.run_probe(state, [json.dumps(prof)])
        self.assertTrue(replies[0]["ok"], replies[0])
        self.assertFalse(os.path.lexists(created))
        st = os.lstat(os.path.join(state, "journal.json"))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        # the offline restore (root) with a FIFO at the journal's name: refused, no hang
        # (the run's timeout is the proof), nothing changed.
        os.rename(os.path.join(state, "journal.json"), os.path.join(self.tmp, "kept.json"))
        os.mkfifo(os.path.join(state, "journal.json"), 0o600)
        conf = self.probe_config(state)
        r = subprocess.run([POSTSURGE, "-c", conf, "restore"], capture_output=True, text=True,
                           timeout=60)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("smtpd_soft_error_limit = 3", read_bytes(self.main).decode())

    def test_report_planted_lock_and_state_not_followed(self):
        """`postsurge report` as root (cron) with a symlink at report.lock and a FIFO at
        report-state.json: no file created through the link, no hang, the run ends."""
        state = os.path.join(self.tmp, "state-report")
        os.mkdir(state, 0o750)
        created = os.path.join(self.tmp, "nologin-like")
        os.symlink(created, os.path.join(state, "report.lock"))
        os.mkfifo(os.path.join(state, "report-state.json"), 0o600)
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
        conf = self.probe_config(state)
        r = subprocess.run([POSTSURGE, "-c", conf, "report"], capture_output=True, text=True,
                           timeout=120)
        self.assertFalse(os.path.lexists(created), r.stderr)
        self.assertIn("report.lock: not a regular file with one link", r.stderr)
        # a hard link to a root file at report.lock: not used, not written
        os.unlink(os.path.join(state, "report.lock"))
        target = os.path.join(self.tmp, "root-owned")
        with open(target, "w") as f:
            f.write("x\n")
        os.link(target, os.path.join(state, "report.lock"))
        r = subprocess.run([POSTSURGE, "-c", conf, "report"], capture_output=True, text=True,
                           timeout=120)
        self.assertIn("report.lock: not a regular file with one link", r.stderr)
        self.assertEqual(read_bytes(target), b"x\n")

    def as_user(self, conf, *cmd, uid=None, gid=None, groups=()):
        """`postsurge -c conf CMD` as another user (default MONITOR) with exactly the
        supplementary groups given."""
        uid = MONITOR.pw_uid if uid is None else uid
        gid = MONITOR.pw_gid if gid is None else gid
        argv = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid]
        argv += ["--groups=%s" % ",".join(str(g) for g in groups)] if groups else \
            ["--clear-groups"]
        return subprocess.run(argv + [POSTSURGE, "-c", conf, *cmd], capture_output=True,
                              text=True, timeout=120)

    def test_privsep_monitoring_group_reads_only(self):
        ps = self.daemon()
        os.chmod(ps.dir, 0o750)  # as the package and the unit create state_directory
        # A full report as root first: its state is left for the daemon's group to read.
        r = ps.cli("report", timeout=120)
        self.assertIn(r.returncode, (0, 1, 2, 3), r.stderr)
        for name in ("report-state.json", "report-last.json"):
            st = os.stat(os.path.join(ps.dir, name))
            self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o640, NOBODY.pw_gid),
                             name)
        st = os.stat(os.path.join(ps.dir, "control.sock"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o660, NOBODY.pw_gid))

        def snapshot():
            return {n: (os.lstat(os.path.join(ps.dir, n)).st_mtime_ns,
                        os.lstat(os.path.join(ps.dir, n)).st_size)
                    for n in os.listdir(ps.dir)
                    if n != "postsurge.log" and not n.startswith("valgrind.")}
        before = snapshot()
        member = {"groups": [NOBODY.pw_gid]}

        # Reading: status, events, a read-only report.
        r = self.as_user(ps.config_path, "status", "--json", **member)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["nodes"][0]["name"], "n1")
        r = self.as_user(ps.config_path, "events", **member)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.as_user(ps.config_path, "report", **member)
        self.assertIn(r.returncode, (0, 1, 2, 3), r.stderr)
        self.assertRegex(r.stdout, r"^(OK|WARNING|CRITICAL|UNKNOWN) - .* \| .*stressed=")
        self.assertIn("read-only report", r.stderr)
        self.assertNotIn("damaged", r.stderr)
        self.assertEqual(snapshot(), before)

        # Changing: refused, saying who may; nothing changed.
        for cmd in (["stress", "enter"], ["restore"], ["limits", "reset", "r", "k"],
                    ["limits", "set", "r", "k", "5"], ["limits", "unset", "r", "k"]):
            r = self.as_user(ps.config_path, *cmd, **member)
            self.assertNotEqual(r.returncode, 0, cmd)
            self.assertIn("changes the daemon: only root and the user nobody may", r.stderr)
            self.assertIn("as a member of group %s" % NOGROUP, r.stderr)
        self.assertEqual(self.me(ps)["overrides_state"], "none")
        self.assertFalse(self.me(ps)["stress"])
        self.assertIn("refused to uid %d (read-only)" % MONITOR.pw_uid, ps.log())

        # The daemon's own user may change.
        r = self.as_user(ps.config_path, "stress", "auto", uid=NOBODY.pw_uid,
                         gid=NOBODY.pw_gid)
        self.assertEqual(r.returncode, 0, r.stderr)

        # Outside the group: the config copied where anyone reads it, the socket unusable.
        conf = os.path.join(self.tmp, "outsider.cf")
        shutil.copy(ps.config_path, conf)
        os.chmod(conf, 0o644)
        r = self.as_user(conf, "status")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Permission denied", r.stderr)
        self.assertIn("or as a member of group %s" % NOGROUP, r.stderr)
        self.assertEqual(snapshot(), before)
        # Modes widened by mistake: the daemon still refuses the outsider (SO_PEERCRED).
        os.chmod(ps.dir, 0o755)
        os.chmod(os.path.join(ps.dir, "control.sock"), 0o666)
        r = self.as_user(conf, "status")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertTrue(wait_for(lambda: "uid %d refused: neither root, the daemon's user nor "
                                 "in group %s" % (MONITOR.pw_uid, NOGROUP) in ps.log(), 10),
                        ps.log())

    def test_privsep_non_root_start_overrides_unavailable(self):
        d = tempfile.mkdtemp(prefix="postsurge-nonroot-")
        self.addCleanup(shutil.rmtree, d, True)
        os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(d, 0o750)
        port = free_port()
        lines = ["listen = inet:127.0.0.1:%d" % port, "log_destination = stderr",
                 "state_directory = %s" % d, "http_listen ="]
        lines += ["%s = %s" % kv for kv in self.cfg().items()]
        conf = os.path.join(d, "postsurge.cf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        logp = os.path.join(self.tmp, "nonroot.log")
        logf = open(logp, "wb")
        self.addCleanup(logf.close)

        def become_nobody():
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)

        p = subprocess.Popen([POSTSURGE, "-f", "-c", conf, "serve"], stdout=logf,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=become_nobody)

        def stop():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.addCleanup(stop)

        def log():
            with open(logp) as f:
                return f.read()
        self.assertTrue(wait_for(lambda: p.poll() is not None or tcp_listening(port), 15), log())
        self.assertIsNone(p.poll(), log())
        helpers = [k for k in children(p.pid) if comm(k) == "postsurge-priv"]
        self.assertEqual(helpers, [], "no helper expected")
        with PolicyClient(("127.0.0.1", port)) as c:
            self.assertEqual(c.ask(request()), "DUNNO")

        def status():
            r = subprocess.run([POSTSURGE, "-c", conf, "status", "--json"], capture_output=True,
                               text=True, timeout=30)
            return json.loads(r.stdout)["nodes"][0] if r.returncode == 0 else None
        self.assertTrue(wait_for(lambda: status() is not None, 15), log())
        me = status()
        self.assertFalse(me["overrides_available"], me)
        self.assertEqual(me["privileges"], "unprivileged")
        self.assertIn("not root", me["overrides_unavailable_reason"])
        r = subprocess.run([POSTSURGE, "-c", conf, "events", "--json"], capture_output=True,
                           text=True, timeout=30)
        ev = json.loads(r.stdout)["events"]
        self.assertIn("overrides-unavailable", [e["kind"] for e in ev], ev)
        # A forced episode changes nothing. The event that shows the daemon got as far as
        # it would have applied: the episode is in force and logged as an event (overrides
        # are reconciled on the same turn).
        subprocess.run([POSTSURGE, "-c", conf, "stress", "enter"], capture_output=True,
                       timeout=30)
        self.assertTrue(wait_for(lambda: (status() or {}).get("stress"), 15), log())

        def kinds():
            r = subprocess.run([POSTSURGE, "-c", conf, "events", "--json"],
                               capture_output=True, text=True, timeout=30)
            return [e["kind"] for e in json.loads(r.stdout)["events"]] if r.returncode == 0 \
                else []
        self.assertTrue(wait_for(lambda: "stress-enter" in kinds(), 15), log())
        # Then five more samples evaluated, each ending with the reconcile that would
        # start an apply: the proof the daemon got as far as it would have acted.
        s0 = status()["samples"]
        self.assertTrue(wait_for(lambda: (status() or {}).get("samples", 0) >= s0 + 5, 60),
                        log())
        self.assertEqual(read_bytes(self.main), self.main0)
        self.assertEqual(status()["overrides_state"], "none")
        self.assertEqual(mode_problems(d), [])


if __name__ == "__main__":
    testmain.main()
