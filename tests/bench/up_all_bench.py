#!/usr/bin/env python3
"""`machine up --all` of 16 projects against the fake limactl with a fixed 2 s start latency:
wall time with --parallel 16 (target < 2.6 s: the window adds almost nothing to one start)
versus --parallel 1 (about 16 x 2 s). Each run starts from no VMs at all.

Run: python3 tests/bench/up_all_bench.py [--machine build/machine] [--projects 16] [--latency 2]
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(ROOT, "tests", "fixtures", "fake-limactl")


def one_run(machine, projects, latency, parallel):
    tmp = tempfile.mkdtemp(prefix="machine-upall-")
    try:
        env = dict(os.environ)
        env.update({"LIMA_HOME": os.path.join(tmp, "lima"), "MACHINE_CONFIG_DIR": os.path.join(tmp, "config"),
                    "MACHINE_STATE_DIR": os.path.join(tmp, "state"), "XDG_CACHE_HOME": os.path.join(tmp, "cache"),
                    "MACHINE_LIMACTL": FAKE, "MACHINE_AGENT": "off",  # the fake's VMs have no SSH
                    "FAKE_LIMACTL_DELAY_START": str(latency)})
        env.pop("FAKE_LIMACTL_LOG", None)
        os.makedirs(env["MACHINE_CONFIG_DIR"])
        with open(os.path.join(env["MACHINE_CONFIG_DIR"], "projects.toml"), "w") as f:
            for i in range(projects):
                f.write("[p%02d]\nmemory = \"1GiB\"\nprofiles = []\n" % i)
        t0 = time.monotonic()
        r = subprocess.run([machine, "up", "--all", "--parallel", str(parallel), "--json"], env=env,
                           capture_output=True, text=True)
        took = time.monotonic() - t0
        ready = sum(1 for line in r.stdout.splitlines() if '"type":"vm.done"' in line and '"outcome":"ready"' in line)
        if r.returncode != 0 or ready != projects:
            raise SystemExit("up --all failed (rc=%d, %d ready):\n%s" % (r.returncode, ready, r.stderr[-2000:]))
        return took
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"))
    ap.add_argument("--projects", type=int, default=16)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for parallel in (args.projects, 1):
        times = sorted(one_run(args.machine, args.projects, args.latency, parallel) for _ in range(args.runs if parallel > 1 else 1))
        print("up --all: %d projects, start latency %.1fs, --parallel %-2d: wall %.2fs (best of %d; all: %s)"
              % (args.projects, args.latency, parallel, times[0], len(times), ", ".join("%.2f" % t for t in times)), flush=True)


if __name__ == "__main__":
    main()
