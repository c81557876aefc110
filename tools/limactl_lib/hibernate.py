"""Hibernation, the stand-in's own (Lima has none): `limactl hibernate NAME` saves a running
instance's state to `<dir>/hibernate.state` (QEMU migration to a file) and stops it; the next
`limactl start NAME` starts QEMU with `-incoming defer` and loads it instead of booting.
`limactl info` says `"machineHibernate": true`, so machine knows it may ask.

QEMU 7.2 (Debian 12) has no `file:` migration URI and `exec:` would be a shell string: the file
is opened here and its descriptor handed to QEMU over QMP (SCM_RIGHTS with `getfd`, then the
`fd:NAME` URI), both ways. Next to the state, `hibernate.json` records the QEMU that wrote it
(`query-version`) and the state's size: a state from another QEMU, cut short or unreadable is
not loaded; the instance boots cold, and `<dir>/hibernate.outcome` says which happened and why
(machine reads it after `start`).
"""
import contextlib
import json
import os
import socket
import time

from . import logrus, qemu

STATE = "hibernate.state"
META = "hibernate.json"
OUTCOME = "hibernate.outcome"
FDNAME = "hibernate"
# migration's default bandwidth limit (32 MiB/s in QEMU 7.2) would make saving slow for nothing
MAX_BANDWIDTH = 64 << 30
SAVE_TIMEOUT = 900
LOAD_TIMEOUT = 900


def paths(inst_dir):
    return os.path.join(inst_dir, STATE), os.path.join(inst_dir, META), os.path.join(inst_dir, OUTCOME)


def _pass_fd(q, fd):
    """QMP getfd: the descriptor rides on the command's own message (SCM_RIGHTS)."""
    msg = json.dumps({"execute": "getfd", "arguments": {"fdname": FDNAME}}).encode() + b"\n"
    socket.send_fds(q.sock, [msg], [fd])
    while True:
        resp = q._read()
        if "error" in resp:
            raise RuntimeError(resp["error"].get("desc", str(resp["error"])))
        if "return" in resp:
            return


def _wait_migration(q, deadline, qemu_proc=None):
    """query-migrate until completed; the error text when it failed."""
    while True:
        if qemu_proc is not None and qemu_proc.poll() is not None:
            return f"QEMU exited with status {qemu_proc.returncode}"
        try:
            st = q.execute("query-migrate")
        except (OSError, ConnectionError, ValueError) as e:
            return f"QEMU's monitor went away: {e}"
        status = st.get("status")
        if status == "completed":
            return None
        if status in ("failed", "cancelled"):
            return st.get("error-desc") or f"migration {status}"
        if time.monotonic() > deadline:
            return "migration did not complete in time"
        time.sleep(0.1)


def qemu_version(q):
    v = q.execute("query-version")
    return {"qemu": v.get("qemu"), "package": v.get("package", "")}


def save(inst):
    """Migrate the running instance's state into <dir>/hibernate.state. Raises RuntimeError with
    the reason (the VM is then running again, as it was)."""
    state, meta, outcome = paths(inst.dir)
    tmp = state + ".tmp"
    for f in (state, meta, outcome):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    q = qemu.QMP(inst.path("qmp.sock"), timeout=30)
    try:
        was_running = q.execute("query-status").get("running", False)
        version = qemu_version(q)
        q.execute("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
        t0 = time.monotonic()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _pass_fd(q, fd)
        finally:
            os.close(fd)  # QEMU has its own copy
        q.execute("migrate", uri=f"fd:{FDNAME}")
        err = _wait_migration(q, time.monotonic() + SAVE_TIMEOUT)
        if err:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                if was_running:
                    q.execute("cont")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise RuntimeError(f"saving the state failed: {err}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, state)
        with open(meta, "w") as f:
            json.dump({"version": version, "size": size, "savedAt": logrus.rfc3339nano(),
                       "took": round(time.monotonic() - t0, 3)}, f)
        return size, time.monotonic() - t0
    finally:
        q.close()


def check(inst_dir, current_version=None):
    """Why <dir>/hibernate.state cannot be loaded (None when it can, as far as can be told)."""
    state, meta, _ = paths(inst_dir)
    try:
        with open(meta) as f:
            m = json.load(f)
        size = os.path.getsize(state)
    except (OSError, ValueError) as e:
        return f"no usable record of the saved state ({e.__class__.__name__})"
    if not isinstance(m, dict) or m.get("size") != size:
        return f"the saved state is {size} bytes, {m.get('size') if isinstance(m, dict) else '?'} were written (cut short?)"
    if current_version is not None and m.get("version") != current_version:
        return (f"it was saved by another QEMU ({json.dumps(m.get('version'))}, "
                f"this one is {json.dumps(current_version)})")
    return None


def load(inst_dir, qemu_proc):
    """Load <dir>/hibernate.state into a QEMU started with `-incoming defer`; None on success,
    else the reason (QEMU may have exited)."""
    state, _, _ = paths(inst_dir)
    try:
        q = qemu.QMP(os.path.join(inst_dir, "qmp.sock"), timeout=30)
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        return f"QEMU's monitor: {e}"
    try:
        problem = check(inst_dir, qemu_version(q))
        if problem:
            return problem
        fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _pass_fd(q, fd)
        finally:
            os.close(fd)
        q.execute("migrate-incoming", uri=f"fd:{FDNAME}")
        err = _wait_migration(q, time.monotonic() + LOAD_TIMEOUT, qemu_proc)
        if err:
            return err
        if not q.execute("query-status").get("running"):
            q.execute("cont")
        return None
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        return str(e) or e.__class__.__name__
    finally:
        q.close()


def discard(inst_dir):
    state, meta, _ = paths(inst_dir)
    for f in (state, meta):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)


def record_outcome(inst_dir, resumed, took=None, reason=""):
    _, _, outcome = paths(inst_dir)
    tmp = outcome + ".new"
    with open(tmp, "w") as f:
        json.dump({"resumed": resumed, "took": round(took, 3) if took is not None else None, "reason": reason}, f)
    os.replace(tmp, outcome)


def cmd_hibernate(args, _g):
    """`limactl hibernate NAME` (stand-in only): save the running instance's state, then stop it
    as `stop -f` does (the saved state is the instance's memory; no shutdown runs in the guest)."""
    from . import lifecycle, store
    from .logrus import Fatal, q as quote
    names = [a for a in args if not a.startswith("-")]
    if len(names) != 1:
        raise Fatal("usage: limactl hibernate NAME")
    inst = store.lookup(names[0])
    if inst is None:
        raise Fatal(f"instance {quote(names[0])} does not exist")
    if inst.status != "Running":
        raise Fatal(f"expected status {quote('Running')}, got {quote(inst.status)}")
    logrus.info(f"Saving the state of {quote(inst.name)} to {quote(paths(inst.dir)[0])}")
    try:
        size, took = save(inst)
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        raise Fatal(str(e)) from e
    logrus.info(f"Saved {size} bytes in {took:.1f}s", )
    lifecycle.stop_force(store.Instance(inst.name))
    return 0
