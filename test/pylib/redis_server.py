"""Real redis-server, Redis Sentinel and nutcracker (twemproxy) instances for integration
tests: each on a free loopback port in its own temp dir, without persistence, stopped by
PID (also when a test fails: use them as context managers). stdlib only."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from ports import free_port, tcp_listening, wait_for


def resp_command(port, *args, host="127.0.0.1", timeout=5.0):
    """Sends one command over a fresh connection and returns the decoded reply (str,
    int, list, None); an error reply raises RedisError."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        return _read_reply(s.makefile("rb"))


class RedisError(Exception):
    pass


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_reply(f) for _ in range(n)]
    raise RedisError("bad reply %r" % line)


class _Process:
    """A child process stopped by PID; SIGCONT first in case a test stopped it."""

    proc = None

    def _stop_proc(self):
        p = self.proc
        self.proc = None
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            except ProcessLookupError:
                pass

    def pause(self):
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        """SIGKILL, as a crash: connections are reset, nothing is saved."""
        p = self.proc
        self.proc = None
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RedisServer(_Process):
    """redis-server on 127.0.0.1:port (a free one unless given), no RDB or AOF."""

    def __init__(self, port=None, password=None, replicaof=None, cluster_node_timeout=None):
        self.port = port or free_port()
        self.password = password
        self.replicaof = replicaof  # a RedisServer to replicate, or None
        self.cluster_node_timeout = cluster_node_timeout  # ms: cluster-enabled, or None
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.start()

    @property
    def url(self):
        if self.password:
            return "redis://:%s@127.0.0.1:%d" % (self.password, self.port)
        return "redis://127.0.0.1:%d" % self.port

    def start(self):
        """Starts (or restarts, on the same port) and waits until it answers PING."""
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log"),
                "--daemonize", "no", "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replicaof:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof.port)]
        if self.cluster_node_timeout:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     os.path.join(self.dir, "nodes.conf"),
                     "--cluster-node-timeout", str(self.cluster_node_timeout)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(lambda: tcp_listening(self.port) or self.proc.poll() is not None,
                        timeout=20) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start on port %d" % self.port)
        wait_for(self._pings, timeout=20)

    def _pings(self):
        try:
            return self.command("PING") == "PONG"
        except (OSError, RedisError):
            return False

    def command(self, *args, db=0):
        """One command on a fresh connection (after AUTH and SELECT when needed)."""
        cmds = []
        if self.password:
            cmds.append(("AUTH", self.password))
        if db:
            cmds.append(("SELECT", db))
        cmds.append(args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rb")
            out = b""
            for cmd in cmds:
                out += b"*%d\r\n" % len(cmd)
                for a in cmd:
                    a = str(a).encode()
                    out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            for _ in cmds:
                reply = _read_reply(f)
            return reply

    def stop(self):
        self._stop_proc()

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc):
        self.remove()


class Sentinel(_Process):
    """A Redis Sentinel on a free port watching master_port as master_name, with short
    failure detection (down after down_ms) so failovers happen within seconds."""

    def __init__(self, master_port, master_name="mymaster", quorum=2, down_ms=1000,
                 password=None, data_password=None):
        self.port = free_port()
        self.master_name = master_name
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="sentinel-test-")
        self.conf = os.path.join(self.dir, "sentinel.conf")
        lines = ["port %d" % self.port, "bind 127.0.0.1", "protected-mode no",
                 "daemonize no", "dir %s" % self.dir,
                 "logfile %s" % os.path.join(self.dir, "sentinel.log"),
                 "sentinel monitor %s 127.0.0.1 %d %d" % (master_name, master_port, quorum),
                 "sentinel down-after-milliseconds %s %d" % (master_name, down_ms),
                 "sentinel failover-timeout %s %d" % (master_name, max(3 * down_ms, 3000)),
                 "sentinel parallel-syncs %s 1" % master_name]
        if data_password:
            lines.append("sentinel auth-pass %s %s" % (master_name, data_password))
        if password:
            lines.append("requirepass %s" % password)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(["redis-server", self.conf, "--sentinel"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_for(lambda: tcp_listening(self.port) or self.proc.poll() is not None,
                        timeout=20) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("sentinel did not start on port %d" % self.port)

    def command(self, *args):
        if self.password:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                f = s.makefile("rb")
                out = b""
                for cmd in (("AUTH", self.password), args):
                    out += b"*%d\r\n" % len(cmd)
                    for a in cmd:
                        a = str(a).encode()
                        out += b"$%d\r\n%s\r\n" % (len(a), a)
                s.sendall(out)
                _read_reply(f)
                return _read_reply(f)
        return resp_command(self.port, *args)

    def master_addr(self):
        """(ip, port) of the master this sentinel names, or None."""
        r = self.command("SENTINEL", "get-master-addr-by-name", self.master_name)
        return (r[0], int(r[1])) if r else None

    def stop(self):
        self._stop_proc()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) that know each other: a
    failover promotes the replica. url is the redis-sentinel:// store URL."""

    def __init__(self, master_name="mymaster", down_ms=1000, password=None,
                 sentinel_password=None):
        self.master_name = master_name
        self.servers = []
        self.sentinels = []
        try:
            self.master = RedisServer(password=password)
            self.servers.append(self.master)
            self.replica = RedisServer(password=password, replicaof=self.master)
            self.servers.append(self.replica)
            for _ in range(3):
                self.sentinels.append(Sentinel(self.master.port, master_name, 2, down_ms,
                                               password=sentinel_password,
                                               data_password=password))
            if not wait_for(self._ready, timeout=30):
                raise RuntimeError("sentinels did not discover each other and the replica")
        except BaseException:
            self.stop()
            raise
        self.password = password

    def _ready(self):
        try:
            for s in self.sentinels:
                if len(s.command("SENTINEL", "sentinels", self.master_name)) < 2:
                    return False
                if not s.command("SENTINEL", "replicas", self.master_name):
                    return False
            return self.replica.command("INFO", "replication").find(
                "master_link_status:up") >= 0
        except (OSError, RedisError):
            return False

    def url(self, name=None, db=None):
        auth = ":%s@" % self.password if self.password else ""
        seeds = ",".join("127.0.0.1:%d" % s.port for s in self.sentinels)
        return "redis-sentinel://%s%s/%s%s" % (auth, seeds, name or self.master_name,
                                              "/%d" % db if db else "")

    def master_port(self):
        """The master's port as the live sentinels see it."""
        for s in self.sentinels:
            if s.proc is not None:
                try:
                    addr = s.master_addr()
                    if addr:
                        return addr[1]
                except (OSError, RedisError):
                    pass
        return None

    def server_on(self, port):
        return next(s for s in self.servers if s.port == port)

    def stop(self):
        for s in self.sentinels:
            s.stop()
            shutil.rmtree(s.dir, ignore_errors=True)
        for s in self.servers:
            s.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RedisCluster:
    """A Redis Cluster of `masters` masters with one replica each (redis-cli --cluster
    create), fast failure detection (node_timeout ms). url is the redis-cluster:// URL
    with every master as a seed."""

    def __init__(self, masters=3, replicas=1, node_timeout=1000, password=None):
        self.password = password
        self.nmasters = masters
        self.servers = []
        try:
            for _ in range(masters * (1 + replicas)):
                self.servers.append(RedisServer(port=self._pair_port(), password=password,
                                                cluster_node_timeout=node_timeout))
            args = ["redis-cli", "--cluster", "create"]
            args += ["127.0.0.1:%d" % s.port for s in self.servers]
            args += ["--cluster-replicas", str(replicas), "--cluster-yes"]
            if password:
                args += ["-a", password, "--no-auth-warning"]
            p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=60)
            if p.returncode != 0:
                raise RuntimeError("redis-cli --cluster create: %s" % p.stdout.decode())
            if not wait_for(self._ready, timeout=60):
                raise RuntimeError("the cluster did not become ready")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _pair_port():
        """A free port whose cluster bus port (port + 10000) is free too."""
        while True:
            p = free_port()
            if p + 10000 < 65536 and not tcp_listening(p + 10000):
                return p
            # Ephemeral ports are mostly above 32768: take one below, bound to check.
            for q in range(20000, 30000, 97):
                q += p % 97
                if not tcp_listening(q) and not tcp_listening(q + 10000):
                    try:
                        with socket.socket() as t:
                            t.bind(("127.0.0.1", q))
                        return q
                    except OSError:
                        continue

    def _ready(self):
        try:
            for s in self.servers:
                if s.proc is None:
                    continue
                if "cluster_state:ok" not in s.command("CLUSTER", "INFO"):
                    return False
            return len(self.masters()) == self.nmasters and all(
                "master_link_status:up" in s.command("INFO", "replication")
                for s in self.servers if s.proc is not None and s not in self.masters())
        except (OSError, RedisError):
            return False

    def masters(self):
        """The live servers that say they are masters."""
        out = []
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                if s.command("ROLE")[0] == "master":
                    out.append(s)
            except (OSError, RedisError):
                pass
        return out

    def replica_of(self, master):
        """The live server replicating master."""
        for s in self.servers:
            if s.proc is None or s is master:
                continue
            info = s.command("INFO", "replication")
            if "master_port:%d" % master.port in info:
                return s
        return None

    def keys(self, pattern):
        """{port: keys} of every live master."""
        return {s.port: s.command("KEYS", pattern) for s in self.masters()}

    def command(self, *args):
        """One single-key command (args[1] is the key) on the master that serves its slot,
        found by following MOVED from the first live master (at most 5 hops)."""
        node = self.masters()[0]
        for _ in range(5):
            try:
                return node.command(*args)
            except RedisError as e:
                if not str(e).startswith("MOVED "):
                    raise
                port = int(str(e).rsplit(":", 1)[1])
                node = next(s for s in self.servers if s.port == port)
        raise RedisError("more than 5 redirects for %r" % (args,))

    def url(self, seeds=None):
        auth = ":%s@" % self.password if self.password else ""
        seeds = seeds or self.servers[:3]
        return "redis-cluster://%s%s" % (auth, ",".join("127.0.0.1:%d" % s.port
                                                         for s in seeds))

    def wait_ok(self, timeout=60):
        return wait_for(lambda: all(
            "cluster_state:ok" in s.command("CLUSTER", "INFO")
            for s in self.servers if s.proc is not None), timeout=timeout)

    def stop(self):
        for s in self.servers:
            s.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Nutcracker(_Process):
    """nutcracker (twemproxy) on a free port in front of the given RedisServers, with
    the hashing a cluster of postsurge nodes would use."""

    def __init__(self, backends):
        self.backends = backends
        self.port = free_port()
        self.stats_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="nutcracker-test-")
        self.conf = os.path.join(self.dir, "nutcracker.yml")
        servers = "".join("   - 127.0.0.1:%d:1 redis%d\n" % (b.port, i)
                          for i, b in enumerate(backends))
        with open(self.conf, "w") as f:
            f.write("postsurge:\n"
                    "  listen: 127.0.0.1:%d\n"
                    "  hash: fnv1a_64\n"
                    "  distribution: ketama\n"
                    "  redis: true\n"
                    "  auto_eject_hosts: false\n"
                    "  timeout: 2000\n"
                    "  server_retry_timeout: 200\n"
                    "  servers:\n%s" % (self.port, servers))
        self.proc = subprocess.Popen(
            ["nutcracker", "-c", self.conf, "-o", os.path.join(self.dir, "nutcracker.log"),
             "-p", os.path.join(self.dir, "nutcracker.pid"), "-s", str(self.stats_port),
             "-a", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(lambda: tcp_listening(self.port) or self.proc.poll() is not None,
                        timeout=20) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("nutcracker did not start; see %s" % self.dir)

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def stop(self):
        self._stop_proc()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_seconds(seconds):
    """A plain pause, for tests that let a backoff timer run."""
    time.sleep(seconds)
