#!/usr/bin/env python3
"""An aarch64 project VM through `machine up`, emulated (QEMU TCG) on this x86_64 host.

  tests/smoke/aarch64_check.py [--machine build/machine] [--keep]

Builds (or finds) the arm64 guest image (tools/build-guest-image-arm64), then, in a sandbox of
its own (tests/support/sandbox), `machine up --json` of a project with `arch = "aarch64"` and one
profile of a single custom step, and checks:
  - the VM is an aarch64 one: `limactl list --json` says so, `machine run NAME -- uname -m` too;
  - the guest agent running in it is the aarch64 build: its binary in the VM has the sha256 of
    build/guest-agent/machine-agent-aarch64 and is an aarch64 ELF, and the service runs;
  - `up` saw the agent's readiness events of this boot (boot.finished, user.ready);
  - the custom provisioning step ran (its events, and the file it wrote, saying aarch64).
Prints TAP and FIGURE lines (image build, boot-to-ready, `up` total); exits 1 when a check
failed. Slow (an emulated arm64 CPU on 2 cores): not part of tools/test; run by
`tools/test-vms --arch aarch64`.
"""
import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Tap  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILDER = os.path.join(ROOT, "tools", "build-guest-image-arm64")
AGENT_PATH_IN_VM = "/usr/local/bin/machine-agent"  # include/machine/guest.hpp: agent_install_path
PROFILE = "arm-smoke"
MARKER = "/var/lib/arm-smoke"
PROFILE_TOML = f'''description = "the aarch64 check's one step"
bake = false

[[step]]
name = "mark"
user = "root"
check = "test -s {MARKER}"
run = "uname -m > {MARKER}"
'''
UP_TIMEOUT_S = 60 * 60


def in_sandbox_or_reexec():
    """As tests/smoke/run: a private HOME, XDG dirs and LIMA_HOME, cleaned up on every exit; only
    the limactl to use and the guest image cache are passed in."""
    if os.environ.get("MACHINE_TEST_SANDBOX"):
        return
    home = os.path.expanduser("~")
    cache = os.environ.get("MACHINE_GUEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "machine")
    passed = {"MACHINE_LIMACTL": os.environ.get("MACHINE_LIMACTL") or os.path.join(ROOT, "tools", "limactl"),
              "MACHINE_GUEST_CACHE": cache}
    argv = [sys.executable, os.path.join(ROOT, "tests", "support", "sandbox"), "--name", "aarch64"]
    for k, v in passed.items():
        argv += ["--env", f"{k}={v}"]
    argv += ["--", sys.executable, os.path.abspath(__file__)] + sys.argv[1:]
    os.execv(sys.executable, argv)


def parse_ts(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_image(tap):
    """The arm64 image: built now (minutes to an hour under qemu-user) or found up to date."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-SE", BUILDER], capture_output=True, text=True)
    took = time.monotonic() - t0
    ok = tap.result(p.returncode == 0, f"the arm64 guest image is built ({took:.0f}s)", p.stdout + p.stderr)
    if not ok:
        return False
    image_dir = p.stdout.strip().splitlines()[-1]
    with open(os.path.join(image_dir, "recipe.json")) as f:
        recipe = json.load(f)
    disk = os.path.getsize(os.path.join(image_dir, "disk.qcow2"))
    tap.note(f"FIGURE arm64_image_build_s={recipe.get('build_seconds')} (when it was built, {recipe.get('built_at')}; "
             f"this run took {took:.1f}s)")
    tap.note(f"FIGURE arm64_image_disk_mib={disk / (1 << 20):.0f} (qcow2; kernel {recipe.get('kernel')})")
    return True


def run_up(args, env):
    """`machine up --json NAME`: (exit status, events with their host arrival time, stderr, seconds)."""
    t0 = time.monotonic()
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen([args.machine, "up", "--json", args.name], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=err, text=True)
    events = []
    deadline = t0 + UP_TIMEOUT_S
    for line in p.stdout:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        events.append(e)
        if e.get("type") in ("vm.state", "step.finished") or e.get("event") in ("boot.finished", "user.ready"):
            what = e.get("event") or e.get("state") or e.get("step")
            print(f"# {time.monotonic() - t0:6.1f}s {e.get('type')} {what}", flush=True)
        if time.monotonic() > deadline:
            p.kill()
            break
    rc = p.wait()
    took = time.monotonic() - t0
    err.seek(0)
    return rc, events, err.read(), took


def agent_identity(sha256sum_result, expected_file):
    """(ok, what was seen): the VM's agent binary has the digest of `expected_file`."""
    rc, out, err = sha256sum_result
    want = sha256_file(expected_file)
    got = out.split()[0] if out else ""
    return rc == 0 and got == want, f"want {want} ({expected_file}), saw {got or (out, err)!r} in the VM"


def first(events, pred):
    return next((e for e in events if pred(e)), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"))
    ap.add_argument("--keep", action="store_true", help="leave the VM (and the sandbox) behind")
    args = ap.parse_args()
    args.machine = os.path.abspath(args.machine)
    agent_file = os.path.join(os.path.dirname(args.machine), "guest-agent", "machine-agent-aarch64")
    in_sandbox_or_reexec()
    tap = Tap()
    if not os.path.isfile(agent_file):
        tap.result(False, "the aarch64 guest agent is built", f"{agent_file} is missing (ninja -C build machine-agent-aarch64)")
        return tap.finish()
    if not build_image(tap):
        return tap.finish()

    args.name = "arm-" + secrets.token_hex(3)
    workdir = tempfile.mkdtemp(prefix="machine-aarch64-")
    env = dict(os.environ, MACHINE_CONFIG_DIR=os.path.join(workdir, "config"),
               MACHINE_STATE_DIR=os.path.join(workdir, "state"))
    os.makedirs(os.path.join(env["MACHINE_CONFIG_DIR"], "profiles"))
    with open(os.path.join(env["MACHINE_CONFIG_DIR"], "profiles", PROFILE + ".toml"), "w") as f:
        f.write(PROFILE_TOML)
    with open(os.path.join(env["MACHINE_CONFIG_DIR"], "projects.toml"), "w") as f:
        f.write(f'[{args.name}]\narch = "aarch64"\ncpus = 2\nmemory = "2GiB"\ndisk = "8GiB"\n'
                f'profiles = ["{PROFILE}"]\n')
    created = False
    try:
        rc, events, stderr, took = run_up(args, env)
        created = True
        tap.result(rc == 0, f"machine up of an aarch64 project ({took:.0f}s)",
                   stderr + "\n".join(json.dumps(e) for e in events[-15:]))
        tap.note(f"FIGURE aarch64_up_total_s={took:.1f}")
        booting = first(events, lambda e: e.get("type") == "vm.state" and e.get("state") == "booting")
        ready = first(events, lambda e: e.get("type") == "step.finished" and e.get("step") == "ready" and e.get("ok"))
        if booting and ready:
            tap.note(f"FIGURE aarch64_boot_to_ready_s={parse_ts(ready['ts']) - parse_ts(booting['ts']):.1f} "
                     "(QEMU started -> the agent said the VM is ready)")
        lima_running = first(events, lambda e: e.get("type") == "vm.state" and e.get("state") == "running")
        if booting and lima_running:
            tap.note(f"FIGURE aarch64_boot_to_lima_running_s={parse_ts(lima_running['ts']) - parse_ts(booting['ts']):.1f}")

        listed = subprocess.run([env["MACHINE_LIMACTL"], "list", "--json", args.name], env=env,
                                capture_output=True, text=True)
        arch = json.loads(listed.stdout.splitlines()[0]).get("arch") if listed.stdout.strip() else None
        tap.result(arch == "aarch64", "limactl list --json says arch aarch64", listed.stdout + listed.stderr)

        def vm(*cmd):
            p = subprocess.run([args.machine, "run", args.name, "--", *cmd], env=env, capture_output=True,
                               text=True, timeout=600, stdin=subprocess.DEVNULL)
            return p.returncode, p.stdout.strip(), p.stderr.strip()

        r = vm("uname", "-m")
        tap.result(r[0] == 0 and r[1] == "aarch64", "machine run NAME -- uname -m says aarch64", repr(r))
        r = vm("sha256sum", AGENT_PATH_IN_VM)
        ok, seen = agent_identity(r, agent_file)
        tap.result(ok, "the agent in the VM is build/guest-agent/machine-agent-aarch64 (sha256)", seen)
        native = os.path.join(os.path.dirname(agent_file), "machine-agent")
        if os.path.isfile(native):
            # The same check against the host's x86_64 agent (what a deploy ignoring the VM's
            # arch would have installed) must fail, naming both digests.
            ok, seen = agent_identity(r, native)
            tap.control("aarch64 agent deployed", "the x86_64 agent's digest as the expected one", ok, seen,
                        ["want " + sha256_file(native)])
        r = vm("sh", "-c", f"head -c 20 {AGENT_PATH_IN_VM} | od -An -tx1 | tr -d ' \\n'; echo; systemctl is-active machine-agent")
        lines = r[1].splitlines()
        # e_machine (bytes 18-19, little endian) 0xb7 = EM_AARCH64
        tap.result(r[0] == 0 and len(lines) == 2 and lines[0][36:40] == "b700" and lines[1] == "active",
                   "the agent binary is an aarch64 ELF and its service is active", repr(r))

        boot = first(events, lambda e: e.get("type") == "guest.event" and e.get("event") == "boot.finished")
        user = first(events, lambda e: e.get("type") == "guest.event" and e.get("event") == "user.ready")
        tap.result(bool(boot and user and boot.get("boot_id") == user.get("boot_id")),
                   "up saw the agent's readiness events of this boot (boot.finished, user.ready)",
                   "\n".join(json.dumps(e) for e in events if e.get("type") == "guest.event")[-3000:])
        step = first(events, lambda e: PROFILE in str(e.get("step", "")) and
                     ((e.get("type") == "step.finished" and e.get("ok")) or e.get("event") == "step.finished"))
        r = vm("cat", MARKER)
        tap.result(bool(step) and r[0] == 0 and r[1] == "aarch64",
                   f"the provisioning step {PROFILE}.mark ran (its events; {MARKER} says aarch64)",
                   f"step event: {step}; file: {r!r}\n" +
                   "\n".join(json.dumps(e) for e in events if PROFILE in json.dumps(e))[-2000:])
    finally:
        if created and not args.keep:
            subprocess.run([args.machine, "destroy", "-y", args.name], env=env, capture_output=True, timeout=600)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
