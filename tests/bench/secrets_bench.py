#!/usr/bin/env python3
"""The 100-variable secrets render through the real CLI: `machine secrets NAME` run N times,
p50/p99 of its wall time (Lima's list, SSH, the agent's discovery, the provider, the render).

The provider is tests/fixtures/fake-op as `op` (an Environment of 100 variables); the VM is a
fake-limactl instance whose ssh.config points at a real sshd on 127.0.0.1, which leads to a real
agent on /run/machine-agent/agent.sock, rendering into a tmpfs of its own. The script runs
itself in a private mount namespace with a tmpfs on /run (unshare -m; root only), so nothing
of it touches the host's /run.

Usage: tests/bench/secrets_bench.py [-n N] [--machine PATH --agent PATH]
       tests/bench/secrets_bench.py --before BUILD --after BUILD [-n N] [--block B]
A BUILD is a build directory or a machine binary with guest-agent/machine-agent next to it.
With --before/--after both builds run in the same run, alternating in blocks of B renders (the
agent is restarted with each build's own binary), N renders each; both figures are printed.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agent_bench  # noqa: E402  (enter_private_run, build_pair, start_sshd)

ROOT = agent_bench.ROOT
FAKE = agent_bench.FAKE
FAKE_OP = os.path.join(ROOT, "tests", "fixtures", "fake-op")
SOCKET = agent_bench.SOCKET
ENV_ID = "benchenv1"
VARIABLES = 100


def percentile(sorted_values, q):
    return sorted_values[max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values))) - 1))]


class World:
    """sshd, the fake VM, the provider and projects.toml; agents come and go per build."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.sshd, port, user_key, host_fp = agent_bench.start_sshd(tmp)
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir)
        os.symlink(FAKE_OP, os.path.join(bindir, "op"))
        envdir = os.path.join(tmp, "environments")
        os.makedirs(envdir)
        with open(os.path.join(envdir, ENV_ID), "w") as f:
            for i in range(VARIABLES):
                f.write('BENCH_%03d="value %03d %s"\n' % (i, i, "x" * 40))
        self.env = dict(os.environ, LIMA_HOME=os.path.join(tmp, "lima"), MACHINE_STATE_DIR=os.path.join(tmp, "state"),
                        MACHINE_CONFIG_DIR=os.path.join(tmp, "config"), MACHINE_LIMACTL=FAKE,
                        HOME=os.path.join(tmp, "home"), FAKE_OP_ENVIRONMENTS_DIR=envdir,
                        PATH=bindir + ":/usr/bin:" + os.environ.get("PATH", ""))
        self.env.pop("SSH_AUTH_SOCK", None)
        os.makedirs(self.env["HOME"])
        self.name = subprocess.run([FAKE, "_seed", "1", "--running", "1", "--prefix", "bench"], env=self.env,
                                   capture_output=True, text=True, check=True).stdout.split()[0]
        with open(os.path.join(self.env["LIMA_HOME"], self.name, "ssh.config"), "w") as f:
            f.write("Host lima-%s\n  IdentityFile \"%s\"\n  User root\n  Hostname 127.0.0.1\n  Port %d\n"
                    % (self.name, user_key, port))
        state = os.path.join(self.env["MACHINE_STATE_DIR"], self.name)
        os.makedirs(state)
        with open(os.path.join(state, "host_key"), "w") as f:
            f.write("%s ssh-ed25519\n" % host_fp)
        os.makedirs(self.env["MACHINE_CONFIG_DIR"])
        with open(os.path.join(self.env["MACHINE_CONFIG_DIR"], "projects.toml"), "w") as f:
            f.write('[%s]\n[[%s.secrets]]\nop_environment = "%s"\n' % (self.name, self.name, ENV_ID))
        self.agent = None

    def start_agent(self, binary):
        self.stop_agent()
        self.agent = subprocess.Popen([binary, "--socket", SOCKET, "--journal", os.path.join(self.tmp, "journal.jsonl"),
                                       "--secrets-dir", os.path.join(self.tmp, "secrets"),
                                       "--user", "root", "--group", "root", "--no-systemd"],
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(SOCKET):
            if time.monotonic() > deadline or self.agent.poll() is not None:
                sys.exit("the agent %s did not start" % binary)
            time.sleep(0.01)
        time.sleep(0.2)

    def stop_agent(self):
        if self.agent:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
            self.agent = None
        if os.path.exists(SOCKET):  # the agent leaves its socket behind when it is stopped
            os.unlink(SOCKET)

    def render(self, machine):
        """One `machine secrets NAME`: its wall time in seconds."""
        t0 = time.perf_counter()
        r = subprocess.run([machine, "secrets", self.name], env=self.env, capture_output=True, text=True, timeout=60)
        took = time.perf_counter() - t0
        if r.returncode != 0 or ("%d variables" % VARIABLES) not in r.stdout:
            sys.exit("machine secrets failed (%s, exit %d):\n%s%s" % (machine, r.returncode, r.stdout, r.stderr))
        return took

    def close(self):
        self.stop_agent()
        self.sshd.send_signal(signal.SIGTERM)
        try:
            self.sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.sshd.kill()


def summary(label, times):
    ms = sorted(t * 1000 for t in times)
    return ("%-6s %d renders of %d variables: p50 %.1f ms, p99 %.1f ms, min %.1f ms, max %.1f ms"
            % (label, len(ms), VARIABLES, statistics.median(ms), percentile(ms, 0.99), ms[0], ms[-1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"))
    ap.add_argument("--agent", default=os.path.join(ROOT, "build", "guest-agent", "machine-agent"))
    ap.add_argument("--before", help="a build (directory or machine binary) to compare with --after")
    ap.add_argument("--after", help="the other build")
    ap.add_argument("-n", type=int, default=50, help="renders per build (default 50)")
    ap.add_argument("--block", type=int, default=10, help="with --before/--after: renders in a row per build")
    ap.add_argument("--warmup", type=int, default=2, help="renders per build not counted")
    args = ap.parse_args()
    if bool(args.before) != bool(args.after):
        sys.exit("--before and --after go together")
    agent_bench.enter_private_run()
    if args.before:
        builds = [("before", agent_bench.build_pair(args.before)), ("after", agent_bench.build_pair(args.after))]
    else:
        builds = [("build", (os.path.abspath(args.machine), os.path.abspath(args.agent)))]

    tmp = tempfile.mkdtemp(prefix="machine-secrets-bench-")
    world = None
    try:
        world = World(tmp)
        times = {label: [] for label, _ in builds}
        warm = {label: args.warmup for label, _ in builds}
        flip = False
        while any(len(times[label]) < args.n for label, _ in builds):
            for label, (machine, agent) in (builds[::-1] if flip else builds):
                if len(times[label]) >= args.n:
                    continue
                world.start_agent(agent)
                while warm[label] > 0:
                    world.render(machine)
                    warm[label] -= 1
                for _ in range(min(args.block, args.n - len(times[label]))):
                    times[label].append(world.render(machine))
            flip = not flip
        for label, (machine, _) in builds:
            print(summary(label, times[label]) + "  (%s)" % machine)
    finally:
        if world:
            world.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
