"""A VM's resources change without a rebuild (issue 16): more cpus, memory and disk in the
project are only announced while the VM runs, applied at its next start (`machine down`,
`machine up`), and then seen by the guest (nproc, MemTotal, the root filesystem's size); a disk
asked to shrink is refused (exit 2) with nothing changed.

The VM's disk stays grown (a disk cannot shrink): the project file is restored with the grown
disk, and its original cpus and memory, which the VM takes at its next start. A check that
writes the smoke project's original table after this one (disk = "20GiB") makes `up` refuse
it, so this check runs after every other check that rewrites the project."""
import json
import re
import subprocess
import time

GIB = 1 << 30


def _run(args, env, *verb, timeout=900):
    p = subprocess.run([args.machine, *verb, args.name], env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def _seen(guest):
    """(cpus, MemTotal bytes, root filesystem bytes) as the guest sees them; None when unread."""
    rc, out, _ = guest.run("sh", "-c", "nproc; grep '^MemTotal:' /proc/meminfo; df -B1 --output=size / | tail -n 1")
    m = re.match(r"\s*(\d+)\s+MemTotal:\s+(\d+) kB\s+(\d+)\s*$", out)
    if rc != 0 or not m:
        return None
    return int(m.group(1)), int(m.group(2)) * 1024, int(m.group(3))


def _project_file(env):
    return env["MACHINE_CONFIG_DIR"] + "/projects.toml"


def _with_resources(args, env, write_project, cpus, memory, disk):
    """The smoke project as write_project writes it, with these resources in its table."""
    write_project(args, env)
    with open(_project_file(env)) as f:
        text = f.read()
    header = "[%s]\n" % args.name
    head, sep, rest = text.partition(header)
    rest = re.sub(r"(?m)^(cpus|memory|disk)\s*=.*\n", "", rest, count=0)
    table = 'cpus = %d\nmemory = "%dGiB"\ndisk = "%dGiB"\n' % (cpus, memory // GIB, disk // GIB)
    with open(_project_file(env), "w") as f:
        f.write(head + sep + table + rest)


def _listed(args, env):
    """(cpus, memory, disk) of the VM as `machine list --json` has it."""
    p = subprocess.run([args.machine, "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    for line in p.stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("name") == args.name:
            return rec.get("cpus"), rec.get("memory_bytes"), rec.get("disk_bytes")
    return None


def check_resources_change(tap, args, env, guest, write_project):
    listed = _listed(args, env)
    before = _seen(guest)
    if not tap.result(bool(listed and all(listed) and before), "the VM's resources are listed and seen in the guest",
                      "list: %r guest: %r" % (listed, before)):
        return
    cpus, memory, disk = listed
    want = (cpus + 1, memory + GIB, disk + 4 * GIB)
    _with_resources(args, env, write_project, *want)
    restart = "machine down %s && machine up %s" % (args.name, args.name)
    try:
        # Running: said, not applied.
        rc, out = _run(args, env, "up")
        tap.result(rc == 0 and "apply when the VM restarts: " + restart in out and _seen(guest) == before,
                   "machine up on the running VM names the restart that applies more cpus, memory and disk, "
                   "and changes nothing", out[-2000:])
        # Stopped: one edit, then the start.
        t0 = time.monotonic()
        rc, out = _run(args, env, "down")
        if not tap.result(rc == 0, "machine down %s" % args.name, out[-2000:]):
            return
        rc, out = _run(args, env, "up")
        said = "cpus %d -> %d, memory %dGiB -> %dGiB, disk %dGiB -> %dGiB, applied at this start" % (
            cpus, want[0], memory // GIB, want[1] // GIB, disk // GIB, want[2] // GIB)
        if not tap.result(rc == 0 and said in out, "machine up applies them at the start (%.0fs): %s"
                          % (time.monotonic() - t0, said), out[-3000:]):
            return
        after = _seen(guest)
        diag = "before %r after %r want cpus %d memory %d disk %d" % (before, after, *want)
        tap.result(bool(after) and after[0] == want[0], "the guest sees %d CPUs (nproc)" % want[0], diag)
        # MemTotal is the RAM less what the kernel keeps: it grows by (almost) the GiB added.
        tap.result(bool(after) and after[1] - before[1] > 0.9 * GIB and after[1] <= want[1],
                   "the guest's MemTotal grew by about 1GiB", diag)
        # The root filesystem (ext4 on the whole disk) was grown at boot to the larger disk.
        tap.result(bool(after) and after[2] - before[2] > 3.5 * GIB and after[2] <= want[2],
                   "the guest's root filesystem grew by about 4GiB (df /)", diag)
        # Smaller than the VM's disk now: refused, nothing changed.
        _with_resources(args, env, write_project, cpus, memory, disk)
        rc, out = _run(args, env, "up")
        tap.result(rc == 2 and "%dGiB" % (disk // GIB) in out and "%dGiB" % (want[2] // GIB) in out
                   and "only grows" in out and _seen(guest) == after,
                   "a disk smaller than the VM's is a config error naming both sizes (exit 2), nothing changed",
                   "exit %d: %s" % (rc, out[-2000:]))
    finally:
        # The disk cannot go back; cpus and memory go back at the VM's next start.
        now = _listed(args, env)
        _with_resources(args, env, write_project, cpus, memory, max(disk, (now or (0, 0, 0))[2] or 0))
