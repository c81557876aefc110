#!/usr/bin/env python3
"""Time from `machine up` to the first successful command in the guest, for a new VM from the
cached guest image and for a restart, split into:

  create   image/overlay preparation (`limactl create`)
  boot     QEMU boot until SSH and Lima's readiness (`limactl start`)
  agent    deploying or checking the guest agent
  ready    waiting for the agent's boot.finished / user.ready events
  machine  our own overhead: the wall time not spent in any step above
  command  `machine run NAME -- true` afterwards

With --provisioned, the whole default profile set instead (Docker, Node, the agents, gh, signed
git): a new project when no cached base exists ("from nothing": bake + clone + the project's own
steps), a second new project from the cached base, and re-`up` of a ready VM (median of 5).

Uses the Lima stand-in (tools/limactl) unless MACHINE_LIMACTL is set, in a private LIMA_HOME.
Names the accelerator the VM got. Usage: tests/bench/up_bench.py [--machine build/machine] [--provisioned]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def up(machine, name, env):
    t0 = time.monotonic()
    p = subprocess.run([machine, "up", name, "--json"], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit("machine up failed:\n" + p.stdout[-2000:] + p.stderr[-2000:])
    steps = {}
    for line in p.stdout.splitlines():
        e = json.loads(line)
        if e["type"] != "step.finished":
            continue
        # The phases of this VM (provisioning may run twice: before and after the clone of its
        # repos), and the bake of the cached base, which is reported under the base's name.
        if (e.get("vm") == name and e["step"] in PHASES) or e["step"] == "bake":
            steps[e["step"]] = steps.get(e["step"], 0.0) + e["duration_ms"] / 1000.0
    t0 = time.monotonic()
    r = subprocess.run([machine, "run", name, "--", "true"], env=env, capture_output=True)
    command = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit("machine run failed")
    return wall, steps, command


PHASES = ("bake", "create", "boot", "agent", "ready", "provision")


def private_world():
    """A short private LIMA_HOME (socket paths stay under 108 bytes), state and config."""
    work = tempfile.mkdtemp(prefix="mub.", dir="/tmp")
    env = dict(os.environ, LIMA_HOME=os.path.join(work, "lima"), MACHINE_STATE_DIR=os.path.join(work, "state"),
               MACHINE_CONFIG_DIR=os.path.join(work, "config"))
    env.setdefault("MACHINE_LIMACTL", os.path.join(ROOT, "tools", "limactl"))
    os.makedirs(env["MACHINE_CONFIG_DIR"])
    return work, env


def report(label, wall, steps, command):
    parts = ["%s %.1fs" % (k, steps[k]) for k in PHASES if k in steps]
    overhead = wall - sum(steps.values())
    print("%-8s up %.1fs = %s + machine %.2fs; first command %.2fs; up-to-first-command %.1fs"
          % (label, wall, " + ".join(parts), overhead, command, wall + command))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"))
    ap.add_argument("--provisioned", action="store_true", help="the default profiles, the cached base and re-up")
    args = ap.parse_args()
    if args.provisioned:
        return provisioned(args)
    work, env = private_world()
    with open(os.path.join(env["MACHINE_CONFIG_DIR"], "projects.toml"), "w") as f:
        f.write('[bench]\ncpus = 2\nmemory = "2GiB"\ndisk = "8GiB"\nprofiles = []\n')
    try:
        subprocess.run([os.path.join(ROOT, "tools", "build-guest-image")], check=True, stdout=subprocess.DEVNULL)
        report("new", *up(args.machine, "bench", env))
        subprocess.run([args.machine, "down", "bench"], env=env, check=True, stdout=subprocess.DEVNULL)
        report("restart", *up(args.machine, "bench", env))
        log = open(os.path.join(env["LIMA_HOME"], "bench", "ha.stderr.log")).read()
        accel = "KVM" if "accel=kvm" in log or "Using KVM" in log else \
            "TCG (software emulation)" if "TCG" in log or "Disabling KVM" in log else "unknown"
        print("accelerator: %s" % accel)
    finally:
        subprocess.run([args.machine, "destroy", "-y", "bench"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def provisioned(args):
    work, env = private_world()
    with open(os.path.join(env["MACHINE_CONFIG_DIR"], "projects.toml"), "w") as f:
        for name in ("first", "second"):
            f.write('[%s]\ncpus = 2\nmemory = "3GiB"\ndisk = "20GiB"\n' % name)
    try:
        subprocess.run([os.path.join(ROOT, "tools", "build-guest-image")], check=True, stdout=subprocess.DEVNULL)
        report("nothing", *up(args.machine, "first", env))
        subprocess.run([args.machine, "down", "first"], env=env, check=True, stdout=subprocess.DEVNULL)
        report("base", *up(args.machine, "second", env))
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            subprocess.run([args.machine, "up", "second"], env=env, check=True, stdout=subprocess.DEVNULL)
            times.append(time.monotonic() - t0)
        times.sort()
        print("re-up    median %.2fs (min %.2fs, max %.2fs) of a ready VM, every step unchanged" % (times[2], times[0], times[-1]))
    finally:
        for name in ("first", "second"):
            subprocess.run([args.machine, "destroy", "-y", name], env=env, capture_output=True)
        listed = subprocess.run([env["MACHINE_LIMACTL"], "list", "--json"], env=env, capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            subprocess.run([env["MACHINE_LIMACTL"], "delete", "-f", json.loads(line)["name"]], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
