"""What every smoke module shares: TAP output with controls, skips and known gaps; commands in
the guest; waiting on conditions; `machine watch` in the background; and the host-side process
bookkeeping that tells whether a command left anything running."""
import json
import os
import secrets
import select
import signal
import subprocess
import tempfile
import time

class Tap:
    """TAP (https://testanything.org) with three additions:
    - control(): the check of a promise, run against a deliberately broken setup, must fail
      for the expected reason (its diagnostics must name what it saw); each promise with such
      a control is counted, and the count is printed at the end;
    - skip(): "ok N - ... # SKIP why", which tools/test lists and CI refuses unless allowed;
    - todo: "not ok N - ... # TODO why", a known gap tracked by an open issue: shown, not
      counted as a failure (and "ok ... # TODO" says the gap has closed)."""

    def __init__(self):
        self.n = self.passed = self.failed = self.skipped = self.todo = 0
        self.controlled = {}  # promise -> [controls passed, controls run]

    def result(self, ok, name, diagnostics="", todo=None):
        self.n += 1
        suffix = " # TODO " + todo if todo else ""
        if todo:
            self.todo += 1
        elif ok:
            self.passed += 1
        else:
            self.failed += 1
        print("%s %d - %s%s" % ("ok" if ok else "not ok", self.n, name, suffix), flush=True)
        if diagnostics and not ok:
            for line in str(diagnostics).rstrip().splitlines()[-20:]:
                print("#   " + line, flush=True)
        return ok

    def control(self, promise, broken, check_ok, diagnostics, expect):
        """The check of `promise`, run with `broken`, must fail and say each of `expect`."""
        text = str(diagnostics)
        missing = [e for e in expect if e not in text]
        ok = not check_ok and not missing
        counts = self.controlled.setdefault(promise, [0, 0])
        counts[1] += 1
        counts[0] += 1 if ok else 0
        saw = text.strip().splitlines()[0][:160] if text.strip() else "nothing"
        if check_ok:
            why = "the check PASSED on a broken setup"
        elif missing:
            why = "the check failed, but not for the expected reason (missing %s)" % ", ".join(map(repr, missing))
        else:
            why = ""
        return self.result(ok, "control: %s: the check fails with %s (it saw: %s)" % (promise, broken, saw),
                           "%s\n%s" % (why, text))

    def skip(self, name, why):
        self.n += 1
        self.skipped += 1
        print("ok %d - %s # SKIP %s" % (self.n, name, why), flush=True)

    def note(self, text):
        for line in text.splitlines():
            print("# " + line, flush=True)

    def finish(self):
        good = sorted(p for p, (passed, run) in self.controlled.items() if passed == run)
        self.note("FIGURE promises_with_failing_control=%d (%s)" % (len(good), ", ".join(good)))
        print("1..%d" % self.n)
        print("%d passed, %d failed, %d skipped, %d todo" % (self.passed, self.failed, self.skipped, self.todo),
              flush=True)
        return 0 if self.failed == 0 else 1


class Guest:
    """Runs commands in a VM through `machine run` (or, for the negative control, limactl)."""

    def __init__(self, argv_prefix, env):
        self.prefix = argv_prefix
        self.env = env

    def run(self, *cmd, timeout=120):
        p = subprocess.run(self.prefix + list(cmd), env=self.env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr

    def wait_for_file(self, path, timeout):
        """True once `path` exists in the VM (as root)."""
        return wait_until(lambda: self.run("sudo", "-n", "test", "-e", path)[0] == 0, timeout, interval=0.5)


def wait_until(predicate, timeout, interval=0.2):
    """Polls `predicate` until it is true or `timeout` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---- processes on the host -------------------------------------------------------------------
#
# A command under test gets SMOKE_RUN_TAG=<random> in its environment, which every process it
# starts inherits (machine and limactl pass their environment on). After the command exited,
# the processes still carrying its tag are what it left behind, whoever their parent is now;
# daemons that other commands started (Lima's host agent, QEMU) carry other tags and are not
# counted.

def tagged_processes(tag):
    """{pid: command line} of the live processes whose environment holds SMOKE_RUN_TAG=tag."""
    needle = ("SMOKE_RUN_TAG=%s" % tag).encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open("/proc/%s/environ" % entry, "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
        except (OSError, IndexError):
            continue
    return found


def leftovers_of(tag, grace=5.0):
    """What still runs with `tag`, after giving it `grace` seconds to exit on its own."""
    wait_until(lambda: not tagged_processes(tag), grace)
    return tagged_processes(tag)


def new_tag():
    return secrets.token_hex(8)


def interrupt_like_a_terminal(argv, env, ready, timeout=300, grace=20.0):
    """Starts `argv` in a process group of its own, waits until `ready()` (a condition, polled),
    then sends SIGINT to the whole group, as Ctrl-C on a terminal does. Returns (ready, exit
    status, seconds from the signal to the exit, leftovers {pid: command line}, output)."""
    tag = new_tag()
    # Output to a file, not a pipe: a leftover holding the pipe open would keep EOF away.
    out = tempfile.TemporaryFile()
    p = subprocess.Popen(argv, env=dict(env, SMOKE_RUN_TAG=tag), stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, process_group=0)
    was_ready = wait_until(lambda: p.poll() is not None or ready(), timeout, interval=0.5) and p.poll() is None
    t0 = time.monotonic()
    try:
        os.killpg(p.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    took = time.monotonic() - t0
    out.seek(0)
    output = out.read().decode(errors="replace")
    out.close()
    return was_ready, p.returncode, took, leftovers_of(tag), output


def stop_by_pid(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Watch:
    """`machine watch NAME --json` in the background (its own process group, like a command on
    a terminal), its events collected as they come; its debug log in a file, so a failed check
    can show what watch was doing."""

    def __init__(self, args, env, log_name="watch.log"):
        self.vm = args.name
        self.log_path = os.path.join(args.workdir, log_name)
        self.log = open(self.log_path, "w")
        self.tag = new_tag()
        self.proc = subprocess.Popen([args.machine, "--log-level", "debug", "watch", args.name, "--json"],
                                     env=dict(env, SMOKE_RUN_TAG=self.tag),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                                     process_group=0)
        self.events = []
        self.partial = b""

    def wait_for(self, predicate, timeout):
        """True once an event satisfies `predicate` (the events read so far included)."""
        # Raw reads: Python's buffered readline would hide lines from select().
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not any(predicate(e) for e in self.events) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            for line in lines:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
        return any(predicate(e) for e in self.events)

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_subscribed(self, timeout):
        """True once watch has said hello to the VM's agent and is subscribing (its debug log)."""
        needle = "vm=%s agent hello:" % self.vm
        return wait_until(lambda: needle in self.log_text() or self.proc.poll() is not None, timeout) and \
            self.proc.poll() is None

    def interrupt(self):
        """Ctrl-C (SIGINT to its group). Returns (exit status, seconds to exit, leftovers)."""
        t0 = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        took = time.monotonic() - t0
        self.wait_for(lambda e: False, 5)  # what it printed before exiting, up to EOF
        left = leftovers_of(self.tag)
        stop_by_pid(left)
        self.proc.stdout.close()
        self.log.close()
        return rc, took, left
