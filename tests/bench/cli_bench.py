#!/usr/bin/env python3
"""Wall time and peak RSS of whole `machine` processes against the fake limactl.

  machine list --json   with N instances (default 50)
  machine up            on an already-running VM (the fast no-op)

Each figure is compared with the fake limactl's own time for the same calls, so the result is
machine's overhead. Usage: tests/bench/cli_bench.py [--machine build/machine] [--instances 50]
[--runs 20]
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(ROOT, "tests", "fixtures", "fake-limactl")


def measure(argv, env, runs):
    """Median wall ms and max peak RSS (KiB) of `argv` over `runs` runs."""
    walls, rss = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.execve(argv[0], argv, env)
        _, status, usage = os.wait4(pid, 0)
        walls.append((time.perf_counter() - t0) * 1000)
        rss = max(rss, usage.ru_maxrss)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit("benchmark command failed: %s" % " ".join(argv))
    return statistics.median(walls), rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"))
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="machine-bench-")
    try:
        env = dict(os.environ)
        env.update({"LIMA_HOME": os.path.join(tmp, "lima"), "MACHINE_CONFIG_DIR": os.path.join(tmp, "config"),
                    "MACHINE_STATE_DIR": os.path.join(tmp, "state"), "MACHINE_LIMACTL": FAKE,
                    "XDG_CACHE_HOME": os.path.join(tmp, "cache")})
        env.pop("FAKE_LIMACTL_LOG", None)
        env["MACHINE_AGENT"] = "off"  # the fake's VMs have no SSH
        subprocess.run([FAKE, "_seed", str(args.instances), "--running", str(args.instances // 2)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        # `default` must exist and run for the `up` no-op.
        subprocess.run([args.machine, "up"], env=env, check=True, stdout=subprocess.DEVNULL)

        # Replay the fake's answers through `cat`: the Python fake costs ~70 ms and ~20 MiB per
        # call, which would hide machine's own figures (peak RSS is the maximum over the whole
        # process tree, so the limactl standing in must be small).
        replay = os.path.join(tmp, "limactl-replay")
        for name, extra in (("all.jsonl", []), ("default.jsonl", ["default"])):
            with open(os.path.join(tmp, name), "wb") as out:
                subprocess.run([FAKE, "--tty=false", "list", "--json"] + extra, env=env, check=True, stdout=out)
        with open(replay, "w") as f:
            f.write('#!/bin/sh\ncase "$*" in\n  *" default") exec cat %s ;;\n  *) exec cat %s ;;\nesac\n'
                    % (os.path.join(tmp, "default.jsonl"), os.path.join(tmp, "all.jsonl")))
        os.chmod(replay, 0o755)
        env["MACHINE_LIMACTL"] = replay

        rows = []
        fake_list, _ = measure([replay, "--tty=false", "list", "--json"], env, args.runs)
        m_list, m_list_rss = measure([args.machine, "list", "--json"], env, args.runs)
        rows.append(("list --json (%d instances)" % (args.instances + 1), m_list, fake_list, m_list_rss))
        fake_one, _ = measure([replay, "--tty=false", "list", "--json", "default"], env, args.runs)
        m_up, m_up_rss = measure([args.machine, "up"], env, args.runs)
        rows.append(("up on a running VM", m_up, fake_one, m_up_rss))

        print("%-30s %10s %10s %10s %12s" % ("command", "machine", "fake", "overhead", "peak RSS"))
        for name, total, fake, rss in rows:
            print("%-30s %8.1fms %8.1fms %8.1fms %9d KiB" % (name, total, fake, total - fake, rss))
        print("(median of %d runs; overhead = machine's wall time minus the replayed limactl's own)" % args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
