"""Loopback helpers shared by the integration and e2e tests."""
import socket
import time


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_listening(port, host="127.0.0.1"):
    """True if /proc/net/tcp shows a LISTEN socket on host:port, without connecting
    (a probe connection would show up in logs and policy counts)."""
    want_port = "%04X" % port
    a = socket.inet_aton(host)
    want_addr = "%02X%02X%02X%02X" % (a[3], a[2], a[1], a[0])
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    addr, port_hex = parts[1].split(":")
                    if parts[3] == "0A" and port_hex == want_port and \
                            (addr in (want_addr, "00000000") or path.endswith("6")):
                        return True
        except OSError:
            pass
    return False


def wait_for(pred, timeout=10.0, interval=0.02):
    """Polls pred() until it is true or timeout seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
