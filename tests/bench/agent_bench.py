#!/usr/bin/env python3
"""Guest-agent figures, on loopback with real parts (run as root: the agent listens where it
does in a VM, /run/machine-agent/agent.sock, which must be free).

  1. event latency: an event written by the agent (`emit`) until `machine watch --json` prints
     it, p50/p99 over N events (default 10,000), through a real sshd on 127.0.0.1;
  2. the agent binary's size and its idle RSS;
  3. `machine watch`'s RSS while it follows V VMs (default 20) and their agents.

The VMs are fake-limactl instances whose ssh.config points at the local sshd, which leads to
the one agent on this host. The script runs itself in a private mount namespace with a tmpfs on
/run (unshare -m), so the agent's socket and sshd's /run/sshd never touch the host's.

Usage: tests/bench/agent_bench.py [--events N] [--vms V] [--machine PATH --agent PATH]
       tests/bench/agent_bench.py --before BUILD --after BUILD [--rounds R]
A BUILD is a build directory (its machine and guest-agent/machine-agent) or a machine binary
with guest-agent/machine-agent next to it; with both, the two builds are measured alternately,
R rounds each, in the same run, and both sets of figures are printed.
"""
import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(ROOT, "tests", "fixtures", "fake-limactl")
SOCKET = "/run/machine-agent/agent.sock"


def enter_private_run():
    """Re-runs this script under `unshare -m` with a tmpfs on /run (root only): the agent's
    /run/machine-agent/agent.sock, sshd's /run/sshd and the agent's tmpfs mounts stay in it."""
    if os.environ.get("MACHINE_BENCH_PRIVATE_RUN") == "1":
        return
    if os.geteuid() != 0:
        sys.exit("run as root: the agent listens on /run/machine-agent/agent.sock (in a private mount namespace)")
    env = dict(os.environ, MACHINE_BENCH_PRIVATE_RUN="1")
    script = os.path.abspath(sys.argv[0])
    # --propagation private: nothing mounted inside reaches the host; then a fresh /run.
    inner = 'mount -t tmpfs -o mode=0755 bench-run /run && exec "$@"'
    os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "sh",
                           sys.executable, script] + sys.argv[1:], env)


def build_pair(path):
    """(machine, agent) of a build directory, or of a machine binary with its build's agent."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        machine = os.path.join(path, "machine")
    else:
        machine, path = path, os.path.dirname(path)
    agent = os.path.join(path, "guest-agent", "machine-agent")
    for f in (machine, agent):
        if not os.access(f, os.X_OK):
            sys.exit("%s: not an executable" % f)
    return machine, agent


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LineReader:
    """Lines from a pipe without Python's buffering, so select() tells the truth."""

    def __init__(self, fd):
        self.fd, self.buf = fd, b""

    def lines(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return []
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            raise EOFError("watch exited")
        self.buf += chunk
        *complete, self.buf = self.buf.split(b"\n")
        return [json.loads(l) for l in complete if l.strip()]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_sshd(tmp):
    host_key, user_key = os.path.join(tmp, "host_key"), os.path.join(tmp, "user_key")
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    shutil.copyfile(user_key + ".pub", os.path.join(tmp, "authorized_keys"))
    port = free_port()
    config = os.path.join(tmp, "sshd_config")
    with open(config, "w") as f:
        f.write("ListenAddress 127.0.0.1\nPort %d\nHostKey %s\nAuthorizedKeysFile %s\n"
                "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
                "MaxStartups 100\nMaxSessions 100\n"
                "PidFile %s\nSetEnv SHLVL=1\n" % (port, host_key, os.path.join(tmp, "authorized_keys"),
                                                 os.path.join(tmp, "sshd.pid")))
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    fp = subprocess.run(["ssh-keygen", "-l", "-f", host_key + ".pub"], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    return proc, port, user_key, fp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"))
    ap.add_argument("--agent", default=os.path.join(ROOT, "build", "guest-agent", "machine-agent"))
    ap.add_argument("--before", help="a build (directory or machine binary) to compare with --after")
    ap.add_argument("--after", help="the other build")
    ap.add_argument("--rounds", type=int, default=2, help="with --before/--after: runs of each, alternately")
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--vms", type=int, default=20)
    args = ap.parse_args()
    if bool(args.before) != bool(args.after):
        sys.exit("--before and --after go together")
    enter_private_run()
    if not args.before:
        measure(args.machine, args.agent, args.events, args.vms)
        return
    builds = [("before", build_pair(args.before)), ("after", build_pair(args.after))]
    results = {label: [] for label, _ in builds}
    for r in range(args.rounds):
        for label, (machine, agent) in (builds if r % 2 == 0 else builds[::-1]):
            print("== %s (%s), round %d of %d" % (label, machine, r + 1, args.rounds), flush=True)
            results[label].append(measure(machine, agent, args.events, args.vms))
    print("== summary (%d events per run, %d VMs followed)" % (args.events, args.vms))
    for label, runs in results.items():
        p50s = ", ".join("%.2f" % x["p50"] for x in runs)
        p99s = ", ".join("%.2f" % x["p99"] for x in runs)
        rss = ", ".join("%d" % x["watch_rss_kib"] for x in runs)
        print("%-6s watch latency p50 [%s] ms, p99 [%s] ms; watch RSS [%s] KiB" % (label, p50s, p99s, rss))


def measure(machine, agent_binary, events, vms):
    """One run against `machine` and `agent_binary`: prints the figures and returns them."""
    if os.path.exists(SOCKET):
        sys.exit("%s exists: another agent runs here" % SOCKET)

    tmp = tempfile.mkdtemp(prefix="machine-agent-bench-")
    procs = []
    relay_mounted = False
    try:
        # `machine` reaches the agent by running /usr/local/bin/machine-agent relay over SSH: in this
        # private mount namespace that is this build's agent.
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir)
        shutil.copyfile(agent_binary, os.path.join(bindir, "machine-agent"))
        os.chmod(os.path.join(bindir, "machine-agent"), 0o755)
        subprocess.run(["mount", "--bind", bindir, "/usr/local/bin"], check=True)
        relay_mounted = True
        sshd, port, user_key, host_fp = start_sshd(tmp)
        procs.append(sshd)
        agent = subprocess.Popen([agent_binary, "--socket", SOCKET, "--journal", os.path.join(tmp, "journal.jsonl"),
                                  "--user", "root", "--group", "root", "--no-systemd"],
                                 stderr=subprocess.DEVNULL)
        procs.append(agent)
        while not os.path.exists(SOCKET):
            time.sleep(0.01)
        time.sleep(0.3)

        env = dict(os.environ, LIMA_HOME=os.path.join(tmp, "lima"), MACHINE_STATE_DIR=os.path.join(tmp, "state"),
                   MACHINE_CONFIG_DIR=os.path.join(tmp, "config"), MACHINE_LIMACTL=FAKE, MACHINE_WATCH_POLL_MS="500",
                   PATH="/usr/bin:" + os.environ.get("PATH", ""))
        names = subprocess.run([FAKE, "_seed", str(vms), "--running", str(vms), "--prefix", "vm"],
                               env=env, capture_output=True, text=True, check=True).stdout.split()
        for name in names:
            with open(os.path.join(env["LIMA_HOME"], name, "ssh.config"), "w") as f:
                f.write("Host lima-%s\n  IdentityFile \"%s\"\n  User root\n  Hostname 127.0.0.1\n  Port %d\n"
                        % (name, user_key, port))
            os.makedirs(os.path.join(env["MACHINE_STATE_DIR"], name), exist_ok=True)
            with open(os.path.join(env["MACHINE_STATE_DIR"], name, "host_key"), "w") as f:
                f.write("%s ssh-ed25519\n" % host_fp)

        size = os.path.getsize(agent_binary)
        stripped = os.path.join(tmp, "agent-stripped")
        shutil.copyfile(agent_binary, stripped)
        subprocess.run(["strip", stripped], check=True)
        agent_idle_rss = rss_kib(agent.pid)

        watch = subprocess.Popen([machine, "watch", "--json"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
        procs.append(watch)
        out = LineReader(watch.stdout.fileno())
        # Every VM's agent subscription is live once each has seen a marker event.
        subprocess.run([agent_binary, "emit", "bench.ready"], check=True,
                       stdout=subprocess.DEVNULL)
        ready, deadline = set(), time.monotonic() + 120
        while len(ready) < len(names) and time.monotonic() < deadline:
            got = out.lines(1.0)
            if not got:
                subprocess.run([agent_binary, "emit", "bench.ready"], stdout=subprocess.DEVNULL)
            for e in got:
                if e.get("type") == "guest.event" and e.get("event") == "bench.ready":
                    ready.add(e["vm"])
        if len(ready) < len(names):
            sys.exit("watch followed only %d of %d agents" % (len(ready), len(names)))
        time.sleep(1)
        watch_rss = rss_kib(watch.pid)

        # Latency: one local emitter on the agent's socket; each event carries its send time.
        client = socket.socket(socket.AF_UNIX)
        client.connect(SOCKET)
        latencies, pending = [], {}
        reader = client.makefile("r")
        for i in range(events):
            sent = time.time()
            line = json.dumps({"v": 1, "id": i + 1, "type": "emit", "event": "bench.n", "fields": {"i": i}})
            client.sendall((line + "\n").encode())
            reader.readline()  # the agent wrote it: its result
            pending[i] = sent
            # What watch printed so far (one VM is enough for latency).
            for e in out.lines(0.001):
                if e.get("type") == "guest.event" and e.get("event") == "bench.n" and e["vm"] == names[0]:
                    latencies.append((time.time() - pending.pop(e["i"])) * 1000)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for e in out.lines(1.0):
                if e.get("type") == "guest.event" and e.get("event") == "bench.n" and e["vm"] == names[0]:
                    latencies.append((time.time() - pending.pop(e["i"])) * 1000)
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print("event latency, agent -> watch --json (%d events, %d VMs followed): p50 %.2f ms, p99 %.2f ms, max %.2f ms"
              % (len(latencies), len(names), p50, p99, latencies[-1]))
        if pending:
            print("  %d events never arrived: %s" % (len(pending), sorted(pending)[:10]))
        print("agent binary: %d bytes as built, %d bytes stripped; idle RSS %d KiB" %
              (size, os.path.getsize(stripped), agent_idle_rss))
        print("machine watch following %d VMs and their agents: RSS %d KiB" % (len(names), watch_rss), flush=True)
        return {"p50": p50, "p99": p99, "max": latencies[-1], "watch_rss_kib": watch_rss}
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT if p is procs[-1] else signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if relay_mounted:
            subprocess.run(["umount", "/usr/local/bin"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(SOCKET):  # the agent leaves its socket behind when it is stopped
            os.unlink(SOCKET)


if __name__ == "__main__":
    main()
