#!/usr/bin/env python3
"""Peak RSS of `machine watch` following a huge ha.stdout.log (issue 13, item 7).

A guest grows its VM's ha.stdout.log at will: every port it opens or closes is a host-agent event.
This makes a fake VM (the fake limactl's `_seed`) whose log is SIZE MB of such events, all older
than watch, runs `machine watch VM`, appends one new event once watch says it is watching, waits
until watch prints it, then stops watch with SIGINT and reads its peak RSS from wait4.

  tests/bench/watch_log_bench.py [--machine BIN]... [--size-mb 400] [--target-mib 32]

Give --machine several times to compare binaries (for example today's main and a new build);
it exits 1 when a binary's peak RSS is at or above the target.
"""
import argparse
import datetime
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(ROOT, "tests", "fixtures", "fake-limactl")
VM = "bench000"  # the name `_seed 1 --prefix bench` gives


def forward_event(when, n, kind):
    """A host-agent port-forward event as Lima writes it (one line)."""
    return ('{"time":"%s","status":{"running":true,"sshLocalPort":40000,"portForward":{"type":"%s",'
            '"protocol":"tcp","guestAddr":"0.0.0.0:%d","hostAddr":"127.0.0.1:%d"}}}\n'
            % (when, kind, 1024 + n % 60000, 1024 + n % 60000))


def write_huge_log(path, size_mb):
    """SIZE MB of ports opened and closed on 2026-01-01, in time order."""
    block = "".join(forward_event("2026-01-01T00:00:00.%09dZ" % n, n, "forwarding" if n % 2 == 0 else "stopping")
                    for n in range(5000)).encode()
    with open(path, "wb") as f:
        for _ in range(size_mb * 1000 * 1000 // len(block) + 1):
            f.write(block)


def setup(tmp, size_mb):
    """A private world with one running fake VM and its huge log; the environment for machine."""
    env = dict(os.environ)
    env.update({"LIMA_HOME": os.path.join(tmp, "lima"), "MACHINE_CONFIG_DIR": os.path.join(tmp, "config"),
                "MACHINE_STATE_DIR": os.path.join(tmp, "state"), "MACHINE_LIMACTL": FAKE,
                "XDG_CACHE_HOME": os.path.join(tmp, "cache"), "MACHINE_AGENT": "off"})
    env.pop("FAKE_LIMACTL_LOG", None)
    subprocess.run([FAKE, "_seed", "1", "--running", "1", "--prefix", "bench"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    log = os.path.join(env["LIMA_HOME"], VM, "ha.stdout.log")
    write_huge_log(log, size_mb)
    # watch polls `limactl list` every 2 s: replay the fake's answer through `cat`, because peak
    # RSS from wait4 is the largest of the process and its waited-for children, and the Python
    # fake alone takes ~20 MiB.
    listing = os.path.join(tmp, "list.jsonl")
    with open(listing, "wb") as out:
        subprocess.run([FAKE, "--tty=false", "list", "--json"], env=env, check=True, stdout=out)
    replay = os.path.join(tmp, "limactl-replay")
    with open(replay, "w") as f:
        f.write("#!/bin/sh\nexec cat %s\n" % listing)
    os.chmod(replay, 0o755)
    env["MACHINE_LIMACTL"] = replay
    return env, log


def wait_for_line(proc, needle, deadline):
    """Reads watch's stdout until a line containing `needle`; False at the deadline or EOF."""
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            return False
        buf += chunk
        if needle.encode() in buf:
            return True
        buf = buf[-4096:]
    return False


def measure(machine, env, log, timeout):
    """(peak RSS in KiB, seconds from appending the new event to watch printing it)."""
    proc = subprocess.Popen([machine, "watch", VM], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        if not wait_for_line(proc, "watching", deadline):
            sys.exit("%s: watch never said it was watching %s" % (machine, VM))
        time.sleep(0.5)  # past the first poll, so the new event is newer than watch's start
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        t0 = time.monotonic()
        with open(log, "a") as f:
            f.write('{"time":"%s","status":{"exiting":true}}\n' % now)
        if not wait_for_line(proc, "[%s] exiting" % VM, deadline):
            sys.exit("%s: watch did not show the appended event within %d s" % (machine, timeout))
        seen_after = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGINT)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    return usage.ru_maxrss, seen_after


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", action="append", help="binary to measure (repeatable; default build/machine)")
    ap.add_argument("--size-mb", type=int, default=400)
    ap.add_argument("--target-mib", type=float, default=32)
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed per binary")
    args = ap.parse_args()
    machines = args.machine or [os.path.join(ROOT, "build", "machine")]

    tmp = tempfile.mkdtemp(prefix="machine-watch-bench-")
    try:
        env, log = setup(tmp, args.size_mb)
        size = os.path.getsize(log)
        print("ha.stdout.log: %.0f MB of port events; target: peak RSS under %g MiB" % (size / 1e6, args.target_mib))
        print("%-40s %14s %22s" % ("machine", "peak RSS", "new event shown after"))
        failed = False
        for machine in machines:
            rss_kib, seen_after = measure(machine, env, log, args.timeout)
            # The next binary must see the same file, not one grown by our event.
            os.truncate(log, size)
            over = rss_kib / 1024 >= args.target_mib
            failed |= over
            print("%-40s %10.1f MiB %20.2f s%s" % (machine, rss_kib / 1024, seen_after, "  OVER TARGET" if over else ""))
        sys.exit(1 if failed else 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
