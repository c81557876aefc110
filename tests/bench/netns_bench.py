#!/usr/bin/env python3
"""Figures of the stand-in's network boundary (tools/limactl_lib/netns.py), no VM (run as root
or where unprivileged user namespaces work):

  1. relay throughput: a child inside the namespace (in place of QEMU) sends M MiB (default 512)
     to 203.0.113.9:443 and reads them back; the egress socket is an echo server in this
     process. Reported: MB/s each way (the bridge carries both directions at once), best of R
     runs (default 3), and the CPU time the boundary used (the figure that does not depend on
     what else the machine runs: MB/s per CPU-second is what one free core would carry);
  2. the boundary's RSS with C open connections (default 200), each relayed to the echo
     server, against its RSS with none.

Usage: tests/bench/netns_bench.py [--mib M] [--runs R] [--conns C]
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")


def echo_server(path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1024)

    def one(c):
        with c:
            head = b""
            while not head.endswith(b"\r\n"):
                b = c.recv(1)
                if not b:
                    return
                head += b
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = c.recv_into(buf)
                if not n:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(view[:n])

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


THROUGHPUT_GUEST = textwrap.dedent('''
    import socket, sys, threading, time
    total = int(sys.argv[1]) << 20
    s = socket.create_connection(("203.0.113.9", 443), timeout=30)
    chunk = b"x" * (1 << 20)
    def send():
        for _ in range(total >> 20):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    threading.Thread(target=send).start()
    buf = bytearray(1 << 20)
    got = 0
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
    print(got, time.monotonic() - t0, flush=True)
    sys.stdin.readline()  # the bench reads the boundary's CPU time meanwhile
''')

RSS_GUEST = textwrap.dedent('''
    import socket, sys, time
    n = int(sys.argv[1])
    print("idle", flush=True)
    sys.stdin.readline()
    held = []
    for _ in range(n):
        s = socket.create_connection(("203.0.113.9", 443), timeout=30)
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        held.append(s)
    print("held", len(held), flush=True)
    sys.stdin.readline()
''')


def boundary(egress, guest, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "limactl_lib.netns", "--egress-socket", egress, "--",
                             sys.executable, "-c", guest, *args], env=dict(os.environ, PYTHONPATH=TOOLS),
                            text=True, **kw)


def cpu_seconds(pid):
    """utime + stime of the process itself (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nsb-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "egress.sock")
        srv = echo_server(path)
        best, cpus = 0.0, []
        for i in range(a.runs):
            p = boundary(path, THROUGHPUT_GUEST, str(a.mib), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            got, secs = p.stdout.readline().split()
            got, secs = int(got), float(secs)
            cpu = cpu_seconds(p.pid)
            p.communicate("\n", timeout=60)
            assert got == a.mib << 20, f"echoed {got} bytes of {a.mib << 20}"
            mbs = got / secs / 1e6
            best = max(best, mbs)
            cpus.append(cpu)
            print(f"run {i + 1}: {a.mib} MiB each way in {secs:.2f} s: {mbs:.0f} MB/s each way; "
                  f"the boundary used {cpu:.2f} s of CPU", flush=True)
        print(f"relay throughput (best of {a.runs}): {best:.0f} MB/s each way, {2 * best:.0f} MB/s through the bridge; "
              f"boundary CPU {min(cpus):.2f} s for {a.mib} MiB each way "
              f"({2 * (a.mib << 20) / min(cpus) / 1e6:.0f} MB/s per CPU-second: the bound on a free core)")

        p = boundary(path, RSS_GUEST, str(a.conns), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == "idle"
        idle = rss_kib(p.pid)
        p.stdin.write("\n")
        p.stdin.flush()
        line = p.stdout.readline().split()
        assert line == ["held", str(a.conns)], line
        held = rss_kib(p.pid)
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=60)
        print(f"boundary RSS: {idle / 1024:.1f} MiB idle, {held / 1024:.1f} MiB with {a.conns} open connections "
              f"({(held - idle) / a.conns:.1f} KiB each)")
        srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
