#!/usr/bin/env python3
"""The stand-in's network boundary with a real VM (QEMU; about a minute per boot under TCG).

Boots the guest image twice from the same template, first with `machineEgress` naming a Unix
socket served here by a tiny stand-in of machine's egress proxy (reads the PROXY line, refuses
loopback destinations as machine's default policy does, dials anything else; DNS over TCP is
answered by asking the host's resolver), then without the key, and checks:
  - the guest gets SSH (start reaches READY, `limactl shell` works) through the handed port;
  - `curl http://deb.debian.org/debian/` works, its connection and DNS query went through the proxy;
  - `curl http://192.168.5.2:PORT/` of a listener on the host's 127.0.0.1 does not reach it
    (it arrives at the proxy as 127.0.0.1:PORT and is refused);
  - `limactl stop` shuts the VM down through QMP as without the boundary;
and prints both boot times. TAP output, "N passed, N failed"; exit 1 if anything failed.

    python3 tests/support/sandbox --name netns-boot --env MACHINE_GUEST_CACHE=$HOME/.cache/machine \\
        --env LIMACTL_ACCEL=tcg -- python3 tests/netns_boot_test.py
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")
LIMACTL = os.path.join(TOOLS, "limactl")
sys.path.insert(0, TOOLS)
from limactl_lib import netns  # noqa: E402  (slirp_resolver: where the proxy asks)

n = failed = 0


def check(ok, desc, diag=""):
    global n, failed
    n += 1
    print(f"{'ok' if ok else 'not ok'} {n} - {desc}", flush=True)
    if not ok:
        failed += 1
        for line in str(diag).strip().splitlines()[-15:]:
            print(f"#   {line}", flush=True)
    return ok


def run(*argv, timeout=900):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class EgressProxy:
    """The part of machine's proxy this test needs: default policy, no allowlist."""

    def __init__(self, path):
        self.lines = []
        self.refused = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.resolver = netns.slirp_resolver()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        c.settimeout(30)
        with c:
            head = b""
            while not head.endswith(b"\r\n") and len(head) < 108:
                b = c.recv(1)
                if not b:
                    return
                head += b
            parts = head.decode().split()
            self.lines.append(head.decode())
            dst, dport = parts[3], int(parts[5])
            if dport == 53:
                return self._dns(c)
            if dst.startswith("127.") or dst.startswith("192.168.5."):
                self.refused.append((dst, dport))
                return
            try:
                up = socket.create_connection((dst, dport), timeout=10)
            except OSError:
                return
            with up:
                def down():
                    try:
                        while (d := up.recv(65536)):
                            c.sendall(d)
                        c.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                t = threading.Thread(target=down, daemon=True)
                t.start()
                try:
                    while (d := c.recv(65536)):
                        up.sendall(d)
                    up.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                t.join(30)

    def _dns(self, c):
        try:
            while True:
                head = c.recv(2)
                if len(head) < 2:
                    return
                size = int.from_bytes(head, "big")
                q = b""
                while len(q) < size:
                    chunk = c.recv(size - len(q))
                    if not chunk:
                        return
                    q += chunk
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.settimeout(5)
                    u.sendto(q, (self.resolver, 53))
                    a, _ = u.recvfrom(65535)
                c.sendall(len(a).to_bytes(2, "big") + a)
        except OSError:
            return


class HostListener:
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
            c.sendall(b"HTTP/1.0 200 OK\r\n\r\nHOST-SECRET\n")
            c.close()


def template(image_dir, extra=""):
    return f"""\
minimumLimaVersion: 2.0.0
vmType: qemu
images:
- location: "{image_dir}/disk.qcow2"
  arch: x86_64
  kernel:
    location: "{image_dir}/vmlinuz"
  initrd:
    location: "{image_dir}/initrd.img"
cpus: 2
memory: "2GiB"
disk: "6GiB"
containerd: {{system: false, user: false}}
mounts: []
ssh: {{localPort: 0, loadDotSSHPubKeys: false, forwardAgent: false}}
user: {{name: dev, uid: 1000, home: /home/dev, shell: /bin/bash}}
{extra}"""


def boot(name, path):
    t0 = time.monotonic()
    r = run(LIMACTL, "--tty=false", "start", f"--name={name}", path)
    return r, time.monotonic() - t0


def main():
    b = run(os.path.join(TOOLS, "build-guest-image"), timeout=1800)
    if not check(b.returncode == 0, "guest image is built (or up to date)", b.stderr + b.stdout):
        return 1
    image_dir = b.stdout.strip().splitlines()[-1]
    work = tempfile.mkdtemp(prefix="nsboot.", dir="/tmp")
    os.environ["LIMA_HOME"] = os.path.join(work, "lima")  # short: ssh.sock paths must stay < 108 bytes
    egress_path = os.path.join(work, "egress.sock")
    proxy = EgressProxy(egress_path)
    host = HostListener()
    times = {}
    try:
        with_path = os.path.join(work, "with.yaml")
        with open(with_path, "w") as f:
            f.write(template(image_dir, f"machineEgress:\n  socket: {egress_path}\n"))
        r, times["with"] = boot("eg", with_path)
        if not check(r.returncode == 0 and "READY" in r.stderr, "start with machineEgress reaches READY (SSH works)",
                     r.stderr):
            with open(os.path.join(os.environ["LIMA_HOME"], "eg", "ha.stderr.log")) as f:
                print("# " + f.read()[-3000:].replace("\n", "\n# "))
            return 1
        r = run(LIMACTL, "shell", "eg", "--", "curl", "-sS", "-m", "30", "-o", "/dev/null", "-w", "%{http_code}",
                "http://deb.debian.org/debian/")
        check(r.stdout.strip() == "200", "guest: curl http://deb.debian.org works through the proxy", r.stdout + r.stderr)
        check(any(line.split()[5] == "80" for line in proxy.lines), "the proxy saw the guest's port-80 connection",
              proxy.lines)
        check(any(line.split()[5] == "53" for line in proxy.lines), "the proxy saw the guest's DNS query", proxy.lines)
        r = run(LIMACTL, "shell", "eg", "--", "curl", "-sS", "-m", "10", f"http://192.168.5.2:{host.port}/")
        check(r.returncode != 0 and "HOST-SECRET" not in r.stdout and host.accepted == 0,
              "guest: curl of a host loopback listener via 192.168.5.2 does not reach it",
              f"rc={r.returncode} accepted={host.accepted} {r.stdout} {r.stderr}")
        check(("127.0.0.1", host.port) in proxy.refused, "it arrived at the proxy as 127.0.0.1:PORT (refused there)",
              proxy.refused)
        r = run(LIMACTL, "shell", "eg", "--", "sh", "-c", "sudo nft flush ruleset 2>/dev/null; sudo iptables -F 2>/dev/null; "
                f"curl -sS -m 10 http://192.168.5.2:{host.port}/")
        check(r.returncode != 0 and host.accepted == 0, "guest: after flushing its own firewall, still unreachable",
              f"rc={r.returncode} {r.stdout} {r.stderr}")
        t0 = time.monotonic()
        r = run(LIMACTL, "stop", "eg")
        check(r.returncode == 0, f"stop with the boundary ({time.monotonic() - t0:.1f}s)", r.stderr)

        without_path = os.path.join(work, "without.yaml")
        with open(without_path, "w") as f:
            f.write(template(image_dir))
        r, times["without"] = boot("eg0", without_path)
        check(r.returncode == 0 and "READY" in r.stderr, "start without machineEgress reaches READY", r.stderr)
        t0 = time.monotonic()
        r = run(LIMACTL, "stop", "eg0")
        check(r.returncode == 0, f"stop without the boundary ({time.monotonic() - t0:.1f}s)", r.stderr)
        print(f"# boot to READY: {times['with']:.1f}s with the boundary, {times['without']:.1f}s without", flush=True)
    finally:
        for name in ("eg", "eg0"):
            run(LIMACTL, "stop", "-f", name, timeout=120)
            run(LIMACTL, "delete", "-f", name, timeout=120)
    print(f"1..{n}\n{n - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
