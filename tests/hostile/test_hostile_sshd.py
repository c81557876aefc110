#!/usr/bin/env python3
"""The hostile-guest suite, part 2: a hostile sshd against the real `machine` (issue 13, items 1
and 2: "under a flooding agent, and under a flooding sshd, secrets, up, sessions and watch stay
under 64 MiB RSS and end with a clear error naming the VM").

Each VM is a fake-limactl instance whose ssh.config leads to hostile_sshd.py (Paramiko, run with
/usr/bin/python3), and whose pin file records hostile_sshd's host key, so `machine` gets past
the key check and meets, per mode:

  agent-stderr-flood  the agent channel answers hello (and what the command needs before the
                      flood) and floods stderr (extended data), which nobody asked for
  agent-stdout-flood  the same, flooding stdout with lines that are no protocol message
  exec-flood          every exec floods stdout and stderr: the agent's relay and `up` deploying it
  hang                the agent channel opens and never sends a byte

each with a flooder that respects the SSH window (compliant) and, for the floods, one that
ignores it (ignore-window). For each mode, `machine secrets VM`, `sessions VM` and `up VM` must
end (within HOSTILE_END_LIMIT_S, default 60 s) with exit 1 and an error line naming the VM, and
stay under 64 MiB peak RSS (VmHWM) and print at most about one warning a second; `watch VM`
must keep running for 15 s under the same bounds, then end on SIGINT. FIGURE lines: peak RSS per command and mode, time to the error.

Nothing runs as root inside a VM here: hostile_sshd runs no command, it only answers them. Needs
python3-paramiko for /usr/bin/python3 (else exit 77).

  tests/hostile/test_hostile_sshd.py --machine BUILD/machine [--agent BUILD/guest-agent/machine-agent]
      [-k NAME] [-v] [--jobs 3] [--style both|compliant|ignore-window]
"""
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE_SSHD = os.path.join(HERE, "hostile_sshd.py")
PYTHON = "/usr/bin/python3"  # Debian's, with python3-paramiko
SUITE = "hostile_sshd"
RSS_LIMIT_MIB = 64
END_LIMIT_S = common.END_LIMIT_S
WATCH_S = 15
FLOOD_MODES = ("agent-stderr-flood", "agent-stdout-flood", "exec-flood")
MODES = FLOOD_MODES + ("hang",)
COMMANDS = ("secrets", "sessions", "up", "watch")


class HostileSshd:
    """hostile_sshd.py on 127.0.0.1, with what World.add_vm needs: port, user_key, fingerprint."""

    def __init__(self, tmp, mode, style, answer, flood_after="", agent=None, unit=None):
        os.makedirs(tmp, exist_ok=True)
        self.user_key = os.path.join(tmp, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostile", "-f", self.user_key],
                       check=True)
        ready = os.path.join(tmp, "ready")
        self.log = os.path.join(tmp, "hostile_sshd.log")
        argv = [PYTHON, HOSTILE_SSHD, "--mode", mode, "--style", style, "--user", "root",
                "--answer", ",".join(answer) or "none", "--ready-file", ready]
        if flood_after:
            argv += ["--flood-after", flood_after]
        if agent and unit:
            argv += ["--agent-binary", agent, "--unit-file", unit]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("hostile_sshd did not start: %s" % self.log_text())
            time.sleep(0.05)
        with open(ready) as f:
            port, self.fingerprint = f.read().split()
        self.port = int(port)

    def log_text(self):
        return common.file_tail(self.log)

    def flooded_mib(self):
        """What it flooded in all (logged when it stops: call stop() first)."""
        for line in self.log_text().splitlines():
            if "bytes flooded in all" in line:
                try:
                    return int(line.rsplit(": ", 1)[1].split()[0]) / (1 << 20)
                except (IndexError, ValueError):
                    pass
        return 0.0

    def stop(self):
        common.stop_process(self.proc)


def agent_unit_file(machine, tmp):
    """The systemd unit the machine binary embeds (its build tree's generated copy), as a file."""
    inc = os.path.join(os.path.dirname(os.path.abspath(machine)), "generated", "agent_unit.inc")
    path = os.path.join(tmp, "machine-agent.service")
    try:
        with open(inc, "rb") as f:
            text = f.read()
        start = text.index(b'R"MACHINE_EMBED(') + len(b'R"MACHINE_EMBED(')
        unit = text[start:text.rindex(b')MACHINE_EMBED"')]
    except (OSError, ValueError):
        with open(os.path.join(common.ROOT, "guest-agent", "machine-agent.service"), "rb") as f:
            unit = f.read()
    with open(path, "wb") as f:
        f.write(unit)
    return path


class Suite:
    def __init__(self, args):
        self.args = args
        self.report = common.Report()
        self.slots = threading.Semaphore(args.jobs)

    def one(self, mode, style, command):
        """`machine COMMAND VM` against hostile_sshd in `mode`/`style`; --jobs of them at once."""
        with self.slots:
            self._one(mode, style, command)

    def _one(self, mode, style, command):
        vm = "%s-%s" % (command, {"agent-stderr-flood": "errflood", "agent-stdout-flood": "outflood",
                                  "exec-flood": "execflood", "hang": "hang"}[mode])
        if style == "ignore-window":
            vm += "-iw"
        name = "%s %s (%s): %s" % (mode, command, style, "keeps running, bounded" if command == "watch"
                                   else "exit 1 naming the VM, peak RSS < %d MiB" % RSS_LIMIT_MIB)
        tmp = common.make_tmp("hs-%s-" % vm[:10])
        world = common.World(tmp)
        projects = "[%s]\nforward_agent = false\n" % vm
        answer, flood_after, agent, unit, env = ["hello"], "", None, None, {}
        if command == "secrets":
            # the agent flooded right after answering secrets.discover
            projects += '[[%s.secrets]]\ncommand = ["/bin/sh", "-c", "echo TOKEN=hostile"]\nset = "web"\n' % vm
            if mode != "hang":
                answer, flood_after = ["hello", "secrets.discover"], "secrets.discover"
        elif command == "watch":
            answer = ["hello", "subscribe"]
        elif command == "up":
            # hello reports the deployment `up` would install: it goes on to provision, where the
            # flood (or the silence) is. Under exec-flood the relay floods too, and then the deployment.
            if not os.access(self.args.agent, os.R_OK):
                self.report.check(name, False, "no agent binary at %s (--agent)" % self.args.agent)
                return
            agent, unit = self.args.agent, agent_unit_file(self.args.machine, tmp)
            env = {"MACHINE_AGENT": self.args.agent}
        sshd = None
        try:
            sshd = HostileSshd(os.path.join(tmp, "s"), mode, style, answer, flood_after, agent, unit)
            world.add_vm(vm, sshd)
            world.write_projects(projects)
            run = common.MachineRun(world, [command, vm], self.args.machine, env=env)
            if command == "watch":
                time.sleep(WATCH_S)
                alive = run.running()
                run.interrupt()
            else:
                run.wait(END_LIMIT_S)
            if self.args.verbose:
                for line in run.lines()[-30:]:
                    self.report.note("%s: %s" % (vm, repr(line)[1:-1][:300]))
            sshd.stop()
            outcome = "killed" if run.killed else "exit %s" % run.rc
            self.report.figure("hostile sshd %-18s %-13s %-8s peak RSS %6.1f MiB, %s after %5.1f s, %d lines, "
                               "sshd flooded %d MiB" % (mode, style, command, run.peak_mib(), outcome, run.elapsed,
                                                        run.line_count(), sshd.flooded_mib()))
            problems = []
            if command == "watch":
                if not alive:
                    problems.append("watch ended by itself (%s): %s" % (outcome, run.describe(6)))
                elif run.killed:
                    problems.append("watch did not end on SIGINT" if not run.capped else
                                    "RSS passed %d MiB (killed)" % run.RSS_CAP_MIB)
            else:
                problems += common.ended_with_error(run, vm)
            if run.peak_mib() >= RSS_LIMIT_MIB:
                problems.append("peak RSS %.1f MiB >= %d MiB" % (run.peak_mib(), RSS_LIMIT_MIB))
            # "bad line" warnings: at most one a second plus a count, per flooded agent channel
            # (`up` provisions with two: one for events, one for the request), + its own lines
            channels = 2 if command == "up" else 1
            allowed = 4 + int(1.5 * channels * run.elapsed) + (8 if command in ("up", "watch") else 0)
            if run.line_count() > allowed:
                problems.append("%d lines in %.1f s (warnings: at most one a second plus a count)"
                                % (run.line_count(), run.elapsed))
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            if sshd:
                sshd.stop()
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    probe = subprocess.run([PYTHON, "-c", "import paramiko"], capture_output=True)
    if probe.returncode != 0:
        common.skip("python3-paramiko is not installed for %s (apt-get install python3-paramiko)" % PYTHON, SUITE)

    def extra(ap):
        ap.add_argument("--jobs", type=int, default=3, help="commands run at once (default 3)")
        ap.add_argument("--style", choices=("both", "compliant", "ignore-window"), default="both")
        ap.add_argument("--mode", action="append", choices=MODES, help="only these modes (repeatable)")
        ap.add_argument("--command", action="append", choices=COMMANDS, help="only these commands (repeatable)")
    args = common.arguments(__doc__, extra)
    if not os.access(args.machine, os.X_OK):
        sys.exit("no machine binary at %s (--machine)" % args.machine)
    suite = Suite(args)
    jobs = []
    for mode in args.mode or MODES:
        styles = ["compliant"] if mode == "hang" else (["compliant", "ignore-window"] if args.style == "both"
                                                       else [args.style])
        for style in styles:
            for command in args.command or COMMANDS:
                label = "%s %s %s" % (mode, style, command)
                if args.only and not any(o in label for o in args.only):
                    continue
                jobs.append((label, lambda m=mode, s=style, c=command: suite.one(m, s, c)))
    common.run_suite(jobs, suite.report, args.machine)


if __name__ == "__main__":
    main()
