"""Smoke checks for `machine secrets` on a real VM (used by tests/smoke/run).

The providers are real programs on the host: tests/fixtures/fake-op as `op` (1Password's CLI
cannot run here), a dotenv file, and `cat` as a command. Every value carries a random marker,
so the leak checks can look for it: in the VM's processes, on the host (state, logs, events,
output), and in the VM's disk image after a shutdown. The values themselves are never printed.
"""
import base64
import hashlib
import json
import os
import secrets
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO_DIR = "/home/dev/code/vault-demo"
ENV_ID = "smokeenv1"


class SecretFixture:
    """The smoke's secrets: an Environment (hostile values), a dotenv file with 100 variables
    (the timing figure), and a command; all with markers."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "secrets")
        os.makedirs(os.path.join(self.dir, "bin"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "environments"), exist_ok=True)
        op = os.path.join(self.dir, "bin", "op")
        if not os.path.exists(op):
            os.symlink(os.path.join(ROOT, "tests", "fixtures", "fake-op"), op)
        self.marker = "mk" + secrets.token_hex(12)
        m = self.marker
        big = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(65536 - len(m) - 1)) + "-" + m
        # NAME -> exact value; dotenv text that writes them.
        self.env_values = {
            "NEWLINES": "line one %s\nline two\n" % m,
            "QUOTES": "it's \"quoted\" %s" % m,
            "DOLLAR": "$HOME ${PATH} $(id) `id` %s" % m,
            "BACKSLASH": "back\\slash\\n %s \\" % m,
            "UNICODE": "caf\u00e9 \u2713 \U0001F511 %s" % m,
            "BIG": big,
        }
        with open(os.path.join(self.dir, "environments", ENV_ID), "w") as f:
            f.write("# what op environment read prints\n")
            for k, v in self.env_values.items():
                f.write('%s="%s"\n' % (k, dotenv_escape(v)))
        self.local_values = {"LOCAL_%03d" % i: "v%03d-%s" % (i, m) for i in range(100)}
        self.local_file = os.path.join(self.dir, "local.env")
        with open(self.local_file, "w") as f:
            for k, v in self.local_values.items():
                f.write("%s=%s\n" % (k, v))
        self.command_file = os.path.join(self.dir, "command.env")
        with open(self.command_file, "w") as f:
            f.write("FROM_COMMAND='%s'\n" % m)
        self.command_values = {"FROM_COMMAND": m}

    def env(self, base):
        env = dict(base)
        env["PATH"] = os.path.join(self.dir, "bin") + os.pathsep + base.get("PATH", "")
        env["FAKE_OP_ENVIRONMENTS_DIR"] = os.path.join(self.dir, "environments")
        return env

    def config(self, on_up=False):
        return ("secrets_on_up = %s\n" % ("true" if on_up else "false") +
                "[[%%s.secrets]]\nop_environment = \"%s\"\n" % ENV_ID +
                "[[%%s.secrets]]\ndotenv_file = \"%s\"\nset = \"local\"\n" % self.local_file +
                "[[%%s.secrets]]\ncommand = [\"cat\", \"%s\"]\nset = \"tools\"\n" % self.command_file)

    def needles(self):
        """Byte strings that must not appear where secrets must not be."""
        out = [self.marker.encode()]
        big = self.env_values["BIG"].encode()
        out.append(big[30000:30048])
        # The wire form: base64 of the value, a chunk that any full encoding contains.
        b64 = base64.b64encode(big)
        out.append(b64[40000:40048])
        return out


def dotenv_escape(v):
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n")


def project_config(fixture, name, base_table, on_up=False, extra=""):
    return base_table + extra + fixture.config(on_up).replace("%s", name)


def run_machine(args, env, *argv, timeout=180):
    t0 = time.monotonic()
    p = subprocess.run([args.machine] + list(argv), env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p, time.monotonic() - t0


def hashes_in_vm(guest, names):
    """sha256 of each variable as a direnv shell in the repo sees it (the VM computes them)."""
    script = ("import os,hashlib,json,sys\n"
              "print(json.dumps({k: hashlib.sha256(os.environb[k.encode()]).hexdigest() if k.encode() in os.environb "
              "else None for k in sys.argv[1:]}))")
    rc, out, err = guest.run("direnv", "exec", REPO_DIR, "python3", "-c", script, *names)
    try:
        return json.loads(out.strip().splitlines()[-1]), err
    except (ValueError, IndexError):
        return None, "rc=%d out=%r err=%r" % (rc, out[-500:], err[-2000:])


def expected_hashes(values):
    return {k: hashlib.sha256(v.encode()).hexdigest() for k, v in values.items()}


def contains_any(data, needles):
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return [n[:12].decode(errors="replace") + "..." for n in needles if n in data]


def scan_tree(root, needles, skip=()):
    """Files under root holding a needle (names only)."""
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            if any(path.startswith(s) for s in skip) or not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, "rb") as fh:
                    if contains_any(fh.read(), needles):
                        found.append(path)
            except OSError:
                pass
    return found


def scan_host_processes(needles):
    """Host processes whose argv or environment holds a needle."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (pid, what), "rb") as f:
                    if contains_any(f.read(), needles):
                        found.append("%s/%s" % (pid, what))
            except OSError:
                pass
    return found


VM_PROC_SCAN = r"""
import os, sys
needles = [bytes.fromhex(h) for h in sys.argv[1:]]
me = os.getpid()
for pid in os.listdir('/proc'):
    if not pid.isdigit() or int(pid) == me:
        continue
    for what in ('cmdline', 'environ'):
        try:
            data = open('/proc/%s/%s' % (pid, what), 'rb').read()
        except OSError:
            continue
        if any(n in data for n in needles):
            try:
                comm = open('/proc/%s/comm' % pid).read().strip()
            except OSError:
                comm = '?'
            print('%s %s %s' % (pid, comm, what))
"""


def scan_vm_processes(guest, needles):
    # Markers in hex on the command line: the scanner's own argv holds no secret bytes.
    rc, out, err = guest.run("sudo", "-n", "python3", "-c", VM_PROC_SCAN, *[n.hex() for n in needles])
    return rc, out.strip(), err


SECRETS_DIR = "/run/machine-secrets"
CREDENTIAL_PREFIX = "machine-cred-"  # the agents' logins' sets: `secrets --clear` leaves them (logout removes them)


def secrets_dir_problems(guest, d, files):
    """The promise about where sets live: a tmpfs, the directory 0700 and `files` files 0600,
    all the VM user's. Returns (ok, what it saw)."""
    rc, out, err = guest.run("sudo", "-n", "sh", "-c", 'stat -f -c "fs %T" "$1"; stat -c "%a %U %n" "$1" "$1"/*.env',
                             "sh", d)
    lines = out.splitlines()
    problems = []
    if rc != 0 or not lines:
        return False, "could not check %s: %s" % (d, (out + err).strip())
    fs = lines[0].split(" ", 1)[1] if lines[0].startswith("fs ") else "?"
    if fs != "tmpfs":
        problems.append("%s is not a tmpfs: %s" % (d, fs))
    modes = [l.split(" ", 2) for l in lines[1:]]
    if not modes or modes[0][:2] != ["700", "dev"]:
        problems.append("the directory is not 0700 dev: " + (lines[1] if len(lines) > 1 else "?"))
    bad = [" ".join(m) for m in modes[1:] if m[:2] != ["600", "dev"]]
    # The agents' logins (machine-cred-*, credentials_checks.py) live here too: not the project's sets.
    sets = [m for m in modes[1:] if not os.path.basename(m[-1]).startswith(CREDENTIAL_PREFIX)]
    if bad or len(sets) != files:
        problems.append("expected %d files 0600 dev, saw: %s" % (files, "; ".join(" ".join(m) for m in modes[1:])))
    return not problems, "\n".join(problems)


# Holds every set file open (as root, outside any SSH session) until told to look again, then
# reports what its descriptors still read: a removal that wiped the bytes leaves zeros behind an
# unlinked inode, a plain unlink leaves the secret.
HOLDER = r"""
import json, os, sys, time
d, ready, go, result, needle = sys.argv[1:6]
needle = bytes.fromhex(needle)
fds = {n: os.open(os.path.join(d, n), os.O_RDONLY) for n in sorted(os.listdir(d))
       if n.endswith(".env") and not n.startswith("machine-cred-")}  # the project's sets, not the logins
with open(ready + ".tmp", "w") as f:
    json.dump(sorted(fds), f)
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 600
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
out = {}
for n, fd in fds.items():
    st = os.fstat(fd)
    data = os.pread(fd, st.st_size, 0) if st.st_size else b""
    out[n] = {"size": st.st_size, "nonzero": len(data) - data.count(0), "secret": needle in data, "links": st.st_nlink}
with open(result + ".tmp", "w") as f:
    json.dump(out, f)
os.rename(result + ".tmp", result)
"""


def zero_fill_problems(guest, fx, remove):
    """Runs `remove()` (which says whether it succeeded) while a holder keeps every set file
    open, then asks the holder what the files hold now. Returns (ok, what it saw)."""
    tag = secrets.token_hex(4)
    base = "/run/smoke-holder-" + tag
    ready, go, result = base + "/ready", base + "/go", base + "/result"
    guest.run("sudo", "-n", "mkdir", "-m", "700", base)
    rc, out, err = guest.run("sudo", "-n", "systemd-run", "--quiet", "--unit", "smoke-holder-" + tag,
                             "/usr/bin/python3", "-c", HOLDER, SECRETS_DIR, ready, go, result, fx.marker.encode().hex())
    try:
        if rc != 0 or not guest.wait_for_file(ready, 60):
            return False, "could not check: the holder did not start: " + out + err
        held = json.loads(guest.run("sudo", "-n", "cat", ready)[1] or "[]")
        if not held:
            return False, "could not check: no set file to hold in " + SECRETS_DIR
        removed = remove()
        guest.run("sudo", "-n", "touch", go)
        if not guest.wait_for_file(result, 60):
            return False, "could not check: the holder did not report"
        seen = json.loads(guest.run("sudo", "-n", "cat", result)[1])
    finally:
        guest.run("sudo", "-n", "sh", "-c", 'touch "$1/go"; systemctl stop "smoke-holder-$2" 2>/dev/null; rm -rf "$1"',
                  "sh", base, tag)
    problems = [] if removed else ["the removal itself failed"]
    for name, f in sorted(seen.items()):
        if f["links"]:
            problems.append("%s was not removed" % name)
        if f["nonzero"]:
            problems.append("%s: %d non-zero bytes remain after the removal%s" % (
                name, f["nonzero"], " (the secret is still readable)" if f["secret"] else ""))
    return not problems, "\n".join(problems)


def check_secrets(tap, args, env, guest, base_table):
    """`machine secrets` end to end, faults, and the no-leak checks that need a running VM.
    Returns the fixture (the restart checks use it) and the env with `op` on PATH."""
    fx = SecretFixture(args.workdir)
    senv = fx.env(env)
    os.makedirs(env["MACHINE_CONFIG_DIR"], exist_ok=True)
    config_path = os.path.join(env["MACHINE_CONFIG_DIR"], "projects.toml")

    def write(on_up=False, extra=""):
        with open(config_path, "w") as f:
            f.write(project_config(fx, args.name, base_table, on_up, extra))

    write()
    rc, _, err = guest.run("sh", "-c", 'mkdir -p "$1" && printf "use op_env %s\\n" > "$1/.envrc" && direnv allow "$1"'
                           % ENV_ID, "sh", REPO_DIR)
    tap.result(rc == 0, "a repo in the VM declares `use op_env %s` in its .envrc" % ENV_ID, err)

    # The VM has no secrets yet (made sure of on a VM that was used before): direnv says which
    # host command renders them.
    run_machine(args, senv, "secrets", args.name, "--clear")
    rc, out, err = guest.run("direnv", "exec", REPO_DIR, "true")
    tap.result(("machine secrets " + args.name) in err,
               "before a sync, direnv in the repo names the command to run on the host", err[-1500:])

    outputs = []  # everything machine printed, for the leak check
    sync, took = run_machine(args, senv, "secrets", args.name)
    outputs += [sync.stdout, sync.stderr]
    said = sync.stdout
    tap.result(sync.returncode == 0 and "rendered %s: 6 variables" % ENV_ID in said and
               "rendered local: 100 variables" in said and "rendered tools: 1 variable" in said and
               "loaded by ~/code/vault-demo/.envrc" in said,
               "machine secrets renders each set, saying how many variables (%.2fs)" % took, said + sync.stderr)
    timed = [l for l in said.splitlines() if "rendered 3 sets" in l]
    tap.note("FIGURE secrets_sync_3_sets_s=%.3f (%s)" % (took, timed[0].strip() if timed else "?"))
    r, _ = run_machine(args, senv, "secrets", args.name, "--list", "--json")
    outputs += [r.stdout, r.stderr]
    try:
        listed = {j["set"]: j["variables"] for j in map(json.loads, r.stdout.splitlines())}
    except (ValueError, KeyError):
        listed = None
    tap.result(r.returncode == 0 and listed == {ENV_ID: 6, "local": 100, "tools": 1},
               "machine secrets --list shows each set and its variable count", r.stdout + r.stderr)

    r, _ = run_machine(args, senv, "secrets", args.name, "--repo", "vault-demo")
    outputs += [r.stdout, r.stderr]
    tap.result(r.returncode == 0 and "rendered %s:" % ENV_ID in r.stdout and "rendered local" not in r.stdout,
               "machine secrets --repo renders only the sets that repo's .envrc uses", r.stdout + r.stderr)

    # The figure: 100 variables into the running VM, the whole command (Lima's list,
    # SSH, reading the file, the render), on a project with only that set.
    with open(config_path, "w") as f:
        f.write(base_table + '[[%s.secrets]]\ndotenv_file = "%s"\nset = "local"\n' % (args.name, fx.local_file))
    figures = []
    for _ in range(5):
        r, t = run_machine(args, senv, "secrets", args.name)
        outputs += [r.stdout, r.stderr]
        if r.returncode == 0 and "rendered local: 100 variables" in r.stdout:
            figures.append((t, [l for l in r.stdout.splitlines() if "rendered 1 set" in l]))
    write()
    tap.result(len(figures) == 5, "100 variables rendered into the running VM, 5 times", r.stdout + r.stderr)
    if figures:
        best = min(figures)
        tap.note("FIGURE secrets_render_100_vars_s=%.3f (best of %d whole `machine secrets` runs; %s)"
                 % (best[0], len(figures), best[1][0].strip() if best[1] else "?"))

    want = dict(fx.env_values)
    got, diag = hashes_in_vm(guest, list(want))
    tap.result(got == expected_hashes(want),
               "a direnv shell in the repo gets every value exactly (newlines, quotes, $, \\, non-ASCII, 64 KiB)",
               diag if got is None else "mismatch: " + ", ".join(k for k in want if got.get(k) != expected_hashes(want)[k]))

    ok, diag = secrets_dir_problems(guest, SECRETS_DIR, 3)
    tap.result(ok, "the secrets live on a tmpfs: directory 0700, files 0600, the VM user's", diag)
    # Control: the same check of a directory on the VM's disk, made like the real one.
    on_disk = "/home/dev/.cache/smoke-secrets-on-disk"
    guest.run("sh", "-c", 'mkdir -p -m 700 "$1" && for n in a b c; do (umask 077; echo x > "$1/$n.env"); done',
              "sh", on_disk)
    ok, diag = secrets_dir_problems(guest, on_disk, 3)
    tap.control("tmpfs-only secrets", "the sets in a directory on the VM's disk", ok, diag, ["is not a tmpfs: "])
    guest.run("rm", "-rf", on_disk)

    rc, swaps, err = guest.run("cat", "/proc/swaps")
    tap.result(rc == 0 and len(swaps.strip().splitlines()) == 1,
               "the VM has no swap, so no page of the tmpfs can reach its disk", swaps + err)

    needles = fx.needles()
    rc, found, err = scan_vm_processes(guest, needles)
    tap.result(rc == 0 and not found, "no process in the VM has a secret in its argv or environment", found + err)
    found = scan_host_processes(needles)
    tap.result(not found, "no process on the host has a secret in its argv or environment", ", ".join(found))

    # Faults: nothing is rendered, the sets in the VM stay as they were, exit 1 and a clear message.
    def fingerprint():
        return guest.run("sudo", "-n", "sh", "-c", "sha256sum /run/machine-secrets/*.env")[1]
    before = fingerprint()
    faults = [
        ("1Password locked", dict(senv, FAKE_OP_MODE="locked"), None, "op environment read %s" % ENV_ID),
        ("`op` missing", dict(env, PATH="/usr/bin:/bin"), None, "the 1Password CLI `op` is not installed"),
        ("a malformed dotenv file", senv, "GOOD=1\nBAD LINE\n", "local.env:2:"),
        ("a variable name that is not an identifier", senv, "1BAD=x\n", "local.env:1:1"),
    ]
    for label, fenv, local_text, expected in faults:
        saved = open(fx.local_file).read()
        if local_text is not None:
            with open(fx.local_file, "w") as f:
                f.write(local_text)
        r, _ = run_machine(args, fenv, "secrets", args.name)
        outputs += [r.stdout, r.stderr]
        with open(fx.local_file, "w") as f:
            f.write(saved)
        tap.result(r.returncode == 1 and expected in r.stderr and "rendered" not in r.stdout,
                   "secrets with %s: exit 1, a clear message, nothing rendered" % label, r.stdout + r.stderr)
    write(extra="")
    with open(config_path, "a") as f:
        f.write('[[%s.secrets]]\ncommand = ["sh", "-c", "echo nope >&2; exit 3"]\nset = "local"\n' % args.name)
    r, _ = run_machine(args, senv, "secrets", args.name)
    outputs += [r.stdout, r.stderr]
    tap.result(r.returncode == 1 and "exit" in r.stderr and "projects.toml" in r.stderr,
               "a failing secrets command: exit 1, naming the entry", r.stdout + r.stderr)
    write()
    tap.result(fingerprint() == before, "after the failures every set in the VM is as it was", "")

    # --clear zero-fills and removes (a process holding the files open sees only zeros after);
    # direnv then points at the command again.
    cleared = []

    def clear():
        r, _ = run_machine(args, senv, "secrets", args.name, "--clear")
        cleared.append(r)
        return r.returncode == 0 and "cleared 3 sets" in r.stdout
    ok, diag = zero_fill_problems(guest, fx, clear)
    r = cleared[0] if cleared else None
    outputs += [r.stdout, r.stderr] if r else []
    rc, left, _ = guest.run("sudo", "-n", "sh", "-c", "ls -A " + SECRETS_DIR)
    left = "\n".join(n for n in left.split() if not n.startswith(CREDENTIAL_PREFIX))  # the logins stay
    tap.result(ok and left.strip() == "", "machine secrets --clear overwrites every set with zeros and removes it",
               diag + "\n" + left + (r.stdout + r.stderr if r else ""))
    rc, _, err = guest.run("direnv", "exec", REPO_DIR, "true")
    tap.result("machine secrets " + args.name in err, "after --clear direnv says how to render them again",
               err[-1000:])

    r, _ = run_machine(args, senv, "--log-level", "debug", "secrets", args.name, "--json")
    outputs += [r.stdout, r.stderr]
    ok = r.returncode == 0
    for line in r.stdout.splitlines():
        try:
            json.loads(line)
        except ValueError:
            ok = False
    tap.result(ok, "machine secrets --json prints JSON lines", r.stdout[-1000:] + r.stderr[-1000:])

    # Control: a removal without the zero-fill (a plain unlink in the VM) must fail the check.
    ok, diag = zero_fill_problems(guest, fx, lambda: guest.run("sudo", "-n", "sh", "-c",
                                                               "rm -f %s/*.env" % SECRETS_DIR)[0] == 0)
    tap.control("zero-fill on clear", "the sets unlinked without being overwritten", ok, diag,
                ["non-zero bytes remain after the removal", "the secret is still readable"])

    leaked = contains_any("\n".join(outputs), needles)
    tap.result(not leaked, "no secret in anything machine printed (output, --json, errors, debug log)", str(leaked))
    state = env["MACHINE_STATE_DIR"]
    found = scan_tree(state, needles) + scan_tree(env["MACHINE_CONFIG_DIR"], needles)
    tap.result(not found, "no secret in machine's state or config directories", ", ".join(found))
    return fx, senv


def check_watch_rerenders_after_reboot(tap, args, env, guest, fx, base_table, watch_cls):
    """secrets_on_up: a running `watch` renders the sets again when the VM boots again (here a
    reboot from inside the guest: no machine command is involved)."""
    config_path = os.path.join(env["MACHINE_CONFIG_DIR"], "projects.toml")
    with open(config_path, "w") as f:
        f.write(project_config(fx, args.name, base_table, on_up=True))
    old_boot = guest.run("cat", "/proc/sys/kernel/random/boot_id")[1].strip()
    watch = watch_cls(args, env)
    tap.result(watch.wait_subscribed(60), "watch is subscribed to the VM's agent before the reboot",
               watch.log_text()[-2000:])
    guest.run("sudo", "-n", "systemctl", "reboot", timeout=60)
    t0 = time.monotonic()

    def rendered(e):
        return e.get("type") == "guest.event" and e.get("event") == "secrets.rendered" and e.get("set") == ENV_ID

    def rendered_after_the_reboot(events):
        # watch may first reach the agent after the reboot and replay the render that came
        # just before it: only a render after the new boot's user.ready counts.
        booted = False
        for e in events:
            if e.get("type") == "guest.event" and e.get("event") == "user.ready" and e.get("boot_id") != old_boot:
                booted = True
            elif booted and rendered(e):
                return e
        return None
    seen = watch.wait_for(lambda _: rendered_after_the_reboot(watch.events) is not None, 300)
    took = time.monotonic() - t0
    events = [e for e in watch.events if e.get("type") in ("guest.event", "message", "error")]
    tap.result(seen, "after a reboot, watch renders the secrets again (%.0fs after the reboot)" % took,
               "\n".join(json.dumps(e)[:300] for e in events[-15:]) + "\n" + watch.log_text()[-3000:])
    ev = rendered_after_the_reboot(watch.events) or {}
    names = ev.get("names", [])
    if isinstance(names, str):  # machine flattens a guest event's nested values to JSON text
        names = json.loads(names)
    tap.result(sorted(names) == sorted(fx.env_values) and not contains_any(json.dumps(ev), fx.needles()),
               "its secrets.rendered event names the variables, never a value", json.dumps(ev)[:500])
    got, diag = hashes_in_vm(guest, list(fx.env_values))
    tap.result(got == expected_hashes(fx.env_values), "and a direnv shell gets them again", diag or "")
    watch.interrupt()
    import credentials_checks
    leaked = contains_any("\n".join(json.dumps(e) for e in watch.events) + watch.log_text(),
                          fx.needles() + credentials_checks.needles())
    tap.result(not leaked, "no secret in watch's events or log", str(leaked))


def instance_dir(args, env):
    limactl = os.environ.get("MACHINE_LIMACTL") or "limactl"
    p = subprocess.run([limactl, "list", "--json", args.name], env=env, capture_output=True, text=True)
    try:
        return json.loads(p.stdout.splitlines()[0])["dir"]
    except (ValueError, IndexError, KeyError):
        return None


def check_disk_after_shutdown(tap, args, env, fx, control):
    """Called with the VM stopped: no secret byte sequence in its disk image, logs or anything
    else in its Lima directory. `control`, a string written to a file in the VM before the
    shutdown, must be found: the scan can see what the VM wrote to its disk."""
    d = instance_dir(args, env)
    if not d:
        tap.result(False, "the VM's directory is known")
        return
    t0 = time.monotonic()
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(d) for f in fs
               if os.path.isfile(os.path.join(dp, f)))
    import credentials_checks  # the agents' login tokens, once its checks logged in
    found = scan_disk_files(d, fx.needles() + credentials_checks.needles())
    seen = scan_disk_files(d, [control.encode()])
    tap.result(not found and seen,
               "after a shutdown the VM's disk image and logs hold no secret nor login token (%.0f MB scanned in %.1fs; a file the VM "
               "wrote is found in %s)" % (size / 1e6, time.monotonic() - t0, ", ".join(os.path.basename(p) for p in seen)),
               "secrets found in: " + ", ".join(found) if found else "the control string was not found: the scan is blind")


def scan_disk_files(root, needles):
    """Like scan_tree, but reads large files in overlapping chunks."""
    found = []
    overlap = max(len(n) for n in needles)
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, "rb") as fh:
                    tail = b""
                    while True:
                        chunk = fh.read(64 << 20)
                        if not chunk:
                            break
                        if contains_any(tail + chunk, needles):
                            found.append(path)
                            break
                        tail = chunk[-overlap:]
            except OSError:
                pass
    return found


def check_gone_after_restart(tap, guest):
    rc, out, err = guest.run("sudo", "-n", "sh", "-c", "ls -A /run/machine-secrets 2>/dev/null; exit 0")
    # The agents' logins come back at every `up` by design (issue 17); the project's sets do not.
    left = [n for n in out.split() if not n.startswith(CREDENTIAL_PREFIX)]
    tap.result(rc == 0 and not left, "after the restart (secrets_on_up = false) the VM has none of the project's secrets",
               out + err)


def check_back_with_secrets_on_up(tap, guest, fx):
    got, diag = hashes_in_vm(guest, list(fx.env_values))
    tap.result(got == expected_hashes(fx.env_values), "with secrets_on_up, `machine up` renders them again",
               diag or "")
