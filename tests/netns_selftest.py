#!/usr/bin/env python3
"""Tests of the stand-in's network boundary (tools/limactl_lib/netns.py) without a VM.

The boundary gets the argv of its child, so each case runs it with a small Python "guest" in
place of QEMU: the guest makes connections from inside the namespace as slirp would, and prints
what it saw as one JSON line. The test plays the host: a real loopback listener the guest must
never reach, and a stand-in of machine's egress proxy on a Unix socket that records every
PROXY line.

    python3 tests/netns_selftest.py [-v] [-k SUBSTRING]

Exit status 0 when everything passes, 1 otherwise, 77 (skipped) when this host cannot create
a network namespace with nftables rules (`python3 -m limactl_lib.netns --probe` fails).
"""
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")
LIMACTL = os.path.join(TOOLS, "limactl")
VERBOSE = "-v" in sys.argv
ONLY = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else None
MIB = 1 << 20

results = []  # (name, ok, detail)


def record(name, ok, detail=""):
    results.append((name, ok, detail))
    if VERBOSE or not ok:
        print("%s %s%s" % ("PASS" if ok else "FAIL", name, ("\n    " + str(detail).replace("\n", "\n    ")) if detail and not ok else ""), flush=True)


# ---------------------------------------------------------------------------- the host's side

class HostListener:
    """A real service on the host's 127.0.0.1: counts every connection it gets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.sendall(b"HOST-SECRET\n")
            c.close()

    def close(self):
        self.sock.close()


class Egress:
    """machine's egress proxy, as far as the bridge can tell: a Unix socket that reads the PROXY
    line, then either echoes (TCP) or answers one DNS-over-TCP query (dport 53)."""

    def __init__(self, path):
        self.path = path
        self.lines = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        with c:
            head = b""
            while not head.endswith(b"\r\n") and len(head) < 108:
                b = c.recv(1)
                if not b:
                    return
                head += b
            line = head.decode()
            self.lines.append(line)
            if line.split()[-1] == "53":
                n = struct.unpack("!H", recv_exactly(c, 2))[0]
                q = recv_exactly(c, n)
                answer = q[:2] + bytes([q[2] | 0x80]) + q[3:] + b"ANSWER"
                c.sendall(struct.pack("!H", len(answer)) + answer)
                return
            while True:
                data = c.recv(1 << 16)
                if not data:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(data)

    def close(self):
        self.sock.close()
        os.unlink(self.path)


def recv_exactly(c, n):
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


# ---------------------------------------------------------------------------- the guest

# The guest first checks that it runs in a network namespace of its own: if the boundary were
# broken and it did not, it stops before touching anything (the flushed-rules case would
# otherwise flush the host's own ruleset).
ISOLATION_CHECK = textwrap.dedent(f'''\
    import json, os, sys
    if os.readlink("/proc/self/ns/net") == {os.readlink("/proc/self/ns/net")!r}:
        print(json.dumps({{"isolated": False}}), flush=True)
        sys.exit(3)
''')
GUEST_PRELUDE = ISOLATION_CHECK + textwrap.dedent('''\
    import hashlib, json, os, socket, struct, subprocess, sys, threading, time
    out = {}
    def tcp(host, port, payload=b"hello\\n", timeout=5):
        """What the guest gets from a connection: ('ok', bytes) or ('error', why)."""
        try:
            s = socket.create_connection((host, port), timeout=timeout)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
            s.close()
            return ["ok", got.decode(errors="replace")]
        except OSError as e:
            return ["error", type(e).__name__]
    def done():
        print(json.dumps(out), flush=True)
''')


def run_boundary(guest_code, egress_path, extra_args=(), env_extra=None, timeout=60, pass_fds=()):
    env = dict(os.environ, PYTHONPATH=TOOLS)
    env.update(env_extra or {})
    argv = [sys.executable, "-m", "limactl_lib.netns", "--egress-socket", egress_path, *extra_args,
            "--", sys.executable, "-c", GUEST_PRELUDE + textwrap.dedent(guest_code)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, pass_fds=pass_fds)


def guest_output(r):
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            g = json.loads(line)
            if g.get("isolated") is False:
                raise AssertionError("the guest ran in the test's own network namespace")
            return g
    raise AssertionError(f"no guest output; rc={r.returncode} stderr={r.stderr[-2000:]}")


# ---------------------------------------------------------------------------- cases

def case_host_loopback(tmp):
    host, eg = HostListener(), Egress(os.path.join(tmp, "egress.sock"))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    try:
        r = run_boundary(f'''
            out["lo"] = tcp("127.0.0.1", {host.port})
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for dst in (("127.0.0.1", {udp.getsockname()[1]}), ("203.0.113.9", 443)):
                try:
                    u.sendto(b"udp-from-guest", dst)
                except OSError:
                    pass
            time.sleep(0.3)
            done()''', eg.path)
        g = guest_output(r)
        record("host loopback: the host listener gets nothing", host.accepted == 0, f"accepted={host.accepted}")
        try:
            got = udp.recv(100)
        except BlockingIOError:
            got = None
        record("host loopback: UDP (not DNS) to the host's loopback goes nowhere", got is None, got)
        record("host loopback: it arrives at the egress socket as 127.0.0.1:port",
               any(line.startswith("PROXY TCP4 127.0.0.1 127.0.0.1 ") and line.endswith(f" {host.port}\r\n")
                   for line in eg.lines), f"{eg.lines} {r.stderr[-500:]}")
        record("host loopback: the guest talks to the egress proxy (echo)", g["lo"] == ["ok", "hello\n"], g)
    finally:
        host.close()
        udp.close()
        eg.close()


def case_internet_bytes(tmp):
    eg = Egress(os.path.join(tmp, "egress.sock"))
    try:
        r = run_boundary(f'''
            data = os.urandom({MIB})
            s = socket.create_connection(("203.0.113.9", 443), timeout=10)
            def send():
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            threading.Thread(target=send).start()
            got = bytearray()
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
            out["same"] = bytes(got) == data
            out["len"] = len(got)
            done()''', eg.path)
        g = guest_output(r)
        record("203.0.113.9:443: PROXY line names it",
               len(eg.lines) == 1 and eg.lines[0].split()[3] == "203.0.113.9" and eg.lines[0].split()[5] == "443",
               eg.lines)
        record("203.0.113.9:443: 1 MiB each way intact (half-close)", g.get("same") is True, g)
    finally:
        eg.close()


def case_dns(tmp):
    eg = Egress(os.path.join(tmp, "egress.sock"))
    try:
        r = run_boundary('''
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.settimeout(5)
            q = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01"
            u.sendto(q, ("198.51.100.53", 53))
            try:
                a, src = u.recvfrom(4096)
                out["answer"] = a.hex(); out["src"] = list(src)
            except OSError as e:
                out["answer"] = None
            # a datagram over the size cap is dropped, never sent on
            u.sendto(b"\\x00" * 5000, ("198.51.100.53", 53))
            time.sleep(0.5)
            done()''', eg.path)
        g = guest_output(r)
        q = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
        want = (q[:2] + bytes([q[2] | 0x80]) + q[3:] + b"ANSWER").hex()
        record("dns: the query arrives as DNS over TCP with dport 53 (one exchange)",
               len(eg.lines) == 1 and eg.lines[0].rstrip().endswith(" 53"), eg.lines)
        record("dns: the answer gets back, from the server's address", g.get("answer") == want
               and g.get("src") == ["198.51.100.53", 53], g)
    finally:
        eg.close()


def case_no_egress(tmp):
    host = HostListener()
    missing = os.path.join(tmp, "nobody-listens.sock")
    try:
        r = run_boundary(f'''
            out["lo"] = tcp("127.0.0.1", {host.port})
            out["net"] = tcp("203.0.113.9", 80)
            done()''', missing)
        g = guest_output(r)
        record("no egress socket: the connection is reset", g["lo"] == ["error", "ConnectionResetError"], g)
        record("no egress socket: the internet connection too", g["net"] == ["error", "ConnectionResetError"], g)
        record("no egress socket: the host listener gets nothing", host.accepted == 0, host.accepted)
    finally:
        host.close()


def case_flushed_rules(tmp):
    """The namespace's rules are what redirect to the bridge; without them nothing gets out."""
    host, eg = HostListener(), Egress(os.path.join(tmp, "egress.sock"))
    try:
        r = run_boundary(f'''
            out["flush"] = subprocess.run(["nft", "flush", "ruleset"]).returncode
            out["lo"] = tcp("127.0.0.1", {host.port}, timeout=3)
            out["net"] = tcp("203.0.113.9", 443, timeout=3)
            out["bridge"] = tcp("127.0.0.1", 15001, timeout=3)
            done()''', eg.path)
        g = guest_output(r)
        record("flushed rules: the flush itself worked (the test is meaningful)", g.get("flush") == 0, g)
        record("flushed rules: host loopback unreachable", host.accepted == 0 and g["lo"][0] == "error", g)
        record("flushed rules: internet unreachable", g["net"][0] == "error", g)
        record("flushed rules: the bridge resets an unredirected connection",
               g["bridge"] == ["error", "ConnectionResetError"], g)
        record("flushed rules: nothing reached the egress socket", eg.lines == [], eg.lines)
    finally:
        host.close()
        eg.close()


def case_ssh(tmp):
    eg = Egress(os.path.join(tmp, "egress.sock"))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=TOOLS)
    guest = GUEST_PRELUDE + textwrap.dedent('''
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("127.0.0.1", 2222)); l.listen(4)
        print("ready", flush=True)
        c, peer = l.accept()
        c.sendall(b"SSH-2.0-guest\\r\\n" + c.recv(100))
        c.close()
        ''')
    p = subprocess.Popen([sys.executable, "-m", "limactl_lib.netns", "--egress-socket", eg.path,
                          "--ssh-fd", str(lsock.fileno()), "--ssh-inner-port", "2222", "--",
                          sys.executable, "-c", guest], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, pass_fds=(lsock.fileno(),))
    try:
        ready = p.stdout.readline().strip()
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"hi")
        got = b""
        while True:
            d = c.recv(100)
            if not d:
                break
            got += d
        c.close()
        rc = p.wait(timeout=20)
        record("ssh: a host connection to the handed socket reaches the guest's listener",
               ready == "ready" and got == b"SSH-2.0-guest\r\nhi" and rc == 0, f"{ready!r} {got!r} rc={rc} {p.stderr.read()[-500:]}")
        record("ssh: nothing went to the egress socket", eg.lines == [], eg.lines)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        lsock.close()
        eg.close()


def case_connection_cap(tmp):
    eg = Egress(os.path.join(tmp, "egress.sock"))
    try:
        r = run_boundary('''
            held = [socket.create_connection(("203.0.113.9", 80), timeout=5) for _ in range(3)]
            for s in held:
                s.sendall(b"x")
            time.sleep(0.3)
            out["fourth"] = tcp("203.0.113.9", 80)
            for s in held:
                s.close()
            time.sleep(0.3)
            out["after"] = tcp("203.0.113.9", 80)
            done()''', eg.path, env_extra={"LIMACTL_NETNS_MAX_RELAYS": "3"})
        g = guest_output(r)
        record("cap: a connection over the cap is reset at once", g["fourth"] == ["error", "ConnectionResetError"], g)
        record("cap: closing frees the slots", g["after"] == ["ok", "hello\n"], g)
    finally:
        eg.close()


def case_exit_status(tmp):
    eg = Egress(os.path.join(tmp, "egress.sock"))
    try:
        r = run_boundary('import sys; sys.exit(7)', eg.path)
        record("exit: the boundary exits with the child's status", r.returncode == 7, f"rc={r.returncode} {r.stderr[-300:]}")
        r = run_boundary('import os, signal; os.kill(os.getpid(), signal.SIGKILL)', eg.path)
        record("exit: a child killed by a signal is reported as that signal", r.returncode == -9, r.returncode)
    finally:
        eg.close()


def case_dies_with_parent(tmp):
    """SIGKILL of the boundary (as when the host agent dies and PDEATHSIG fires) kills QEMU too."""
    eg = Egress(os.path.join(tmp, "egress.sock"))
    env = dict(os.environ, PYTHONPATH=TOOLS)
    p = subprocess.Popen([sys.executable, "-m", "limactl_lib.netns", "--egress-socket", eg.path, "--",
                          sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                         env=env, stdout=subprocess.PIPE, text=True)
    try:
        child = int(p.stdout.readline())
        p.kill()
        p.wait()
        gone = False
        for _ in range(50):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                gone = True
                break
            time.sleep(0.1)
        record("pdeathsig: the child dies with the boundary", gone, child)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        eg.close()


def case_sigterm_forwarded(tmp):
    eg = Egress(os.path.join(tmp, "egress.sock"))
    env = dict(os.environ, PYTHONPATH=TOOLS)
    p = subprocess.Popen([sys.executable, "-m", "limactl_lib.netns", "--egress-socket", eg.path, "--",
                          sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                         env=env, stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=10)
        record("sigterm: passed to the child, whose death the boundary reports", rc == -signal.SIGTERM, rc)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        eg.close()


def case_template_key(tmp):
    """machineEgress is validated where the stand-in validates templates."""
    base = textwrap.dedent('''\
        images:
        - location: /nonexistent/disk.qcow2
        ''')
    env = dict(os.environ, LIMA_HOME=os.path.join(tmp, "lima"))
    cases = [
        ("machineEgress:\n  socket: /run/machine/e.sock\n", None),
        ("machineEgress:\n  socket: relative/e.sock\n", "field `machineEgress.socket` must be an absolute path"),
        ("machineEgress:\n  socket: /" + "x" * 120 + "\n", "must be at most 107 bytes"),
        ("machineEgress:\n  socket: 17\n", "field `machineEgress.socket` must be a string"),
        ("machineEgress: /run/e.sock\n", "field `machineEgress` must be a mapping"),
        ("machineEgress: {}\n", "field `machineEgress.socket` must be set"),
    ]
    for i, (extra, want) in enumerate(cases):
        path = os.path.join(tmp, f"t{i}.yaml")
        with open(path, "w") as f:
            f.write(base + extra)
        r = subprocess.run([LIMACTL, "validate", path], capture_output=True, text=True, env=env, timeout=60)
        if want is None:
            record(f"template: {extra.strip()!r} is valid", r.returncode == 0, r.stderr)
        else:
            record(f"template: {extra.strip()!r} is an error", r.returncode != 0 and want in r.stderr, r.stderr)
    path = os.path.join(tmp, "t0.yaml")
    r = subprocess.run([LIMACTL, "validate", "--fill", path], capture_output=True, text=True, env=env, timeout=60)
    record("template: the key survives default filling", "socket: /run/machine/e.sock" in r.stdout, r.stdout[-500:])


def case_info(tmp):
    env = dict(os.environ, LIMA_HOME=os.path.join(tmp, "lima"), MACHINE_GUEST_CACHE=os.path.join(tmp, "cache"))
    r = subprocess.run([LIMACTL, "info"], capture_output=True, text=True, env=env, timeout=60)
    record("info: the QEMU driver advertises machineEgress here", json.loads(r.stdout or "{}").get("machineEgress") is True,
           r.stdout[-300:] + r.stderr[-300:])
    fake = os.path.join(HERE, "fixtures", "fake-limactl")
    r = subprocess.run([fake, "info"], capture_output=True, text=True, env=env, timeout=60)
    record("info: the no-VM driver does not", r.returncode == 0 and "machineEgress" not in r.stdout, r.stdout[-300:])


CASES = [case_host_loopback, case_internet_bytes, case_dns, case_no_egress, case_flushed_rules, case_ssh,
         case_connection_cap, case_exit_status, case_dies_with_parent, case_sigterm_forwarded, case_template_key,
         case_info]


def main():
    probe = subprocess.run([sys.executable, "-m", "limactl_lib.netns", "--probe"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=TOOLS), timeout=60)
    if probe.returncode != 0:
        print(f"SKIPPED: netns_selftest: no network namespace with nftables here: {probe.stderr.strip()}")
        return 77
    for case in CASES:
        if ONLY and ONLY not in case.__name__:
            continue
        with tempfile.TemporaryDirectory(prefix="ns-", dir="/tmp") as tmp:
            try:
                case(tmp)
            except Exception as e:  # a broken case is a failure, not a crash of the whole run
                record(case.__name__, False, f"{type(e).__name__}: {e}")
    failed = [r for r in results if not r[1]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
