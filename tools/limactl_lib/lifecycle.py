"""create, start, stop, delete, clone, edit, restart: instance lifecycle commands."""
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

from . import image, layers, logrus, sshutil, store, template, units
from .common import EDIT_FLAGS, Tail, UsageError, edit_values, out, parse_flags
from .logrus import Fatal

TOOLS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


LIMACTL = os.path.join(TOOLS_DIR, "limactl")


DEFAULT_START_TIMEOUT = 600.0


def go_status(st):
    """events.Status printed with Go's %+v."""
    errs = " ".join(st.get("errors") or [])
    return (f"{{Running:{str(bool(st.get('running'))).lower()} Degraded:{str(bool(st.get('degraded'))).lower()} "
            f"Exiting:{str(bool(st.get('exiting'))).lower()} Errors:[{errs}] SSHLocalPort:{st.get('sshLocalPort', 0)} "
            f"CloudInitProgress:<nil> PortForward:<nil> Vsock:<nil>}}")


def propagate_hostagent_line(line):
    """Re-log a ha.stderr.log JSON line as `[hostagent] msg` with the host agent's timestamp."""
    try:
        rec = json.loads(line)
    except ValueError:
        return
    level = rec.pop("level", "info")
    msg = rec.pop("msg", "")
    ts = rec.pop("time", None)
    if level in ("fatal", "panic"):
        rec["fields.level"] = level
        level = "error"
    if level not in logrus.LEVELS or not logrus.enabled(level):
        return
    logrus.log(level, "[hostagent] " + msg, rec, ts=ts)


# ---------------------------------------------------------------------------- create / start


def _create(name, tmpl, g, from_start):
    """Make the instance directory (lima.yaml, lima-version, instance-id). Returns Instance."""
    err = store.validate_name(name)
    if err:
        raise Fatal(err)
    d = store.instance_dir(name)
    if not from_start and os.path.exists(d):
        raise Fatal(f"instance `{name}` already exists")
    if not g.tty:
        logrus.info("Terminal is not available, proceeding without opening an editor")
    if from_start and os.path.exists(d):
        raise Fatal(f"instance `{name}` already exists (`{d}`)")
    if tmpl.doc.get("base"):
        logrus.warning("`base:` templates are not supported by the stand-in; ignoring `base`")
    try:
        cfg = store.fill_defaults(tmpl.doc)
    except (ValueError, TypeError, AttributeError) as e:
        raise Fatal(f"failed to fill defaults: {e}") from e
    err = store.validate_config(cfg)
    if err:
        raise Fatal(err)
    os.makedirs(store.lima_home(), exist_ok=True)
    tmp = os.path.join(store.lima_home(), f".create-{name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "lima.yaml"), "w") as f:
        f.write(template.render(tmpl))
    with open(os.path.join(tmp, "lima-version"), "w") as f:
        f.write(store.VERSION + "\n")
    os.chmod(os.path.join(tmp, "lima-version"), 0o444)
    with open(os.path.join(tmp, "instance-id"), "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    try:
        os.rename(tmp, d)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Fatal(f"instance `{name}` already exists") from e
    sshutil.ensure_user_key()
    return store.Instance(name)


def _prepare(inst):
    try:
        image.prepare_disk(inst.name, inst.dir, inst.config)
    except (image.ImageError, subprocess.CalledProcessError) as e:
        msg = e.stderr.decode().strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else str(e)
        raise Fatal(msg) from e


def _check_name_flag(name):
    """Lima validates --name before it reads the template."""
    if name:
        err = store.validate_name(name)
        if err:
            raise Fatal(err)


def _load_template(arg, name_flag):
    if arg == "-" and not name_flag:
        raise Fatal("must pass instance name with --name when reading template from stdin")
    try:
        return template.load(arg, logrus.warning)
    except template.TemplateError as e:
        raise Fatal(str(e)) from e


def apply_edits(tmpl, v):
    try:
        template.apply_edit_flags(tmpl, edit_values(v))
        if v.get("plain"):
            template.apply_set(tmpl.doc, ".plain = true")
            tmpl.edited = True
    except template.TemplateError as e:
        raise Fatal(str(e)) from e


def cmd_create(args, g):
    v, pos = parse_flags(args, dict(EDIT_FLAGS, name="str", timeout="str", **{"list-templates": "bool"}))
    g.apply(v)
    if v.get("list-templates"):
        return _list_templates()
    if len(pos) > 1:
        raise Fatal(f"accepts at most 1 arg(s), received {len(pos)}")
    arg = pos[0] if pos else "template:default"
    _check_name_flag(v.get("name"))
    if not template.is_locator(arg):
        name = v.get("name") or arg
        tmpl = _load_template("template:default", True)
    else:
        tmpl = _load_template(arg, v.get("name"))
        name = v.get("name") or tmpl.name_hint or "default"
    apply_edits(tmpl, v)
    inst = _create(name, tmpl, g, from_start=False)
    _prepare(inst)
    logrus.info(f"Run `limactl start {name}` to start the instance.")
    return 0


def _list_templates():
    names = set()
    for d in template.template_dirs():
        for p in glob.glob(os.path.join(d, "*.yaml")):
            names.add(os.path.basename(p)[:-5])
    names.add("default")
    out("".join(n + "\n" for n in sorted(names)))
    return 0


def cmd_start(args, g):
    spec = dict(EDIT_FLAGS, name="str", timeout="str", foreground="bool", progress="bool",
                **{"list-templates": "bool"})
    v, pos = parse_flags(args, spec)
    g.apply(v)
    if v.get("list-templates"):
        return _list_templates()
    timeout = DEFAULT_START_TIMEOUT
    if v.get("timeout"):
        try:
            timeout = units.parse_duration(v["timeout"])
        except ValueError as e:
            raise UsageError(f'invalid argument "{v["timeout"]}" for "--timeout" flag: {e}') from e
        if timeout <= 0:
            timeout = DEFAULT_START_TIMEOUT
    if len(pos) > 1:
        raise Fatal(f"accepts at most 1 arg(s), received {len(pos)}")
    arg = pos[0] if pos else None
    name_flag = v.get("name")
    _check_name_flag(name_flag)
    if arg is not None and template.is_locator(arg):
        tmpl = _load_template(arg, name_flag)
        name = name_flag or tmpl.name_hint or "default"
        apply_edits(tmpl, v)
        inst = _create(name, tmpl, g, from_start=True)
    else:
        name = arg or name_flag or "default"
        if os.path.isdir(store.instance_dir(name)):
            logrus.info(f"Using the existing instance `{name}`")
            inst = store.Instance(name)
            if any(edit_values(v).values()):
                inst = edit_existing(inst, v, g)
        else:
            logrus.info(f"Creating an instance `{name}` from template:default (Not from template:{name})")
            logrus.warning(f"This form is deprecated. Use `limactl create --name={name} template:default` instead")
            tmpl = _load_template("template:default", True)
            apply_edits(tmpl, v)
            inst = _create(name, tmpl, g, from_start=True)
    return start_instance(inst, timeout, print_ready=True)


def start_instance(inst, timeout, print_ready):
    name = inst.name
    if inst.status == "Running":
        logrus.info(f"The instance `{name}` is already running. Run `limactl shell {name}` to open the shell.")
        return 0
    if inst.config is None:
        raise Fatal(f"errors inspecting instance: [{'; '.join(inst.errors)}]")
    if inst.status != "Stopped":
        logrus.warning(f"expected status `Stopped`, got `{inst.status}`")
        if os.path.exists(inst.path("ha.pid")):
            raise Fatal(f"instance `{name}` seems running (hint: remove `{inst.path('ha.pid')}` "
                        f"if the instance is not actually running)")
    logrus.info(f"Starting the instance `{name}` with internal VM driver `qemu`")
    if not os.path.exists(inst.path("disk")):
        _prepare(inst)
    else:
        try:
            image.grow_disk(name, inst.dir, inst.config)
        except (image.ImageError, subprocess.CalledProcessError) as e:
            raise Fatal(f"failed to resize the disk of `{name}`: {e}") from e
    sshutil.ensure_user_key()
    return _launch_and_follow(inst, timeout, print_ready)


def _launch_and_follow(inst, timeout, print_ready):
    name = inst.name
    pidfile, sock = inst.path("ha.pid"), inst.path("ha.sock")
    with open(inst.path("ha.stdout.log"), "w") as so, open(inst.path("ha.stderr.log"), "w") as se:
        proc = subprocess.Popen([sys.executable, "-SE", LIMACTL, "hostagent", "--pidfile", pidfile, "--socket", sock, name],
                                stdin=subprocess.DEVNULL, stdout=so, stderr=se, cwd="/",
                                start_new_session=True, close_fds=True)
    # Killing `limactl start` must not stop the VM: the host agent has its own session; we
    # only ignore its exit status once we return.
    deadline = time.monotonic() + 5
    while not os.path.exists(pidfile):
        if proc.poll() is not None or time.monotonic() > deadline:
            _drain(Tail(inst.path("ha.stderr.log")))
            if proc.poll() is not None:
                raise Fatal(f"host agent process has exited: {exit_status(proc.returncode)}")
            raise Fatal(f"hostagent (`{pidfile}`) did not start up in 5s (hint: see `{inst.path('ha.stderr.log')}`)")
        time.sleep(0.05)
    err_tail, ev_tail = Tail(inst.path("ha.stderr.log")), Tail(inst.path("ha.stdout.log"))
    deadline = time.monotonic() + timeout
    state = {"port_printed": False}

    def handle_events():
        for line in ev_tail.lines():
            try:
                st = json.loads(line).get("status", {})
            except ValueError:
                continue
            if st.get("sshLocalPort") and not state["port_printed"]:
                logrus.info(f"SSH Local Port: {st['sshLocalPort']}")
                state["port_printed"] = True
            if st.get("running"):
                _drain(err_tail)
                return _on_running(inst, st, print_ready)
            if st.get("exiting"):
                time.sleep(0.2)
                _drain(err_tail)
                raise Fatal(f"exiting, status={go_status(st)} (hint: see `{inst.path('ha.stderr.log')}`)")
        return None

    while True:
        # log lines up to each event marker, then the events: the order the host agent saw
        for line in err_tail.lines():
            if logrus.EVENT_MARK in line:
                rc = handle_events()
                if rc is not None:
                    return rc
            else:
                propagate_hostagent_line(line)
        rc = handle_events()
        if rc is not None:
            return rc
        if proc.poll() is not None:
            _drain(err_tail)
            raise Fatal(f"host agent process has exited: {exit_status(proc.returncode)}")
        if time.monotonic() > deadline:
            raise Fatal("did not receive an event with the `running` status")
        time.sleep(0.2)


def exit_status(rc):
    """Go's exec.ExitError text: `exit status 1`, `signal: killed`..."""
    names = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGINT: "interrupt",
             signal.SIGSEGV: "segmentation fault", signal.SIGABRT: "aborted"}
    if rc is not None and rc < 0:
        return "signal: " + names.get(-rc, signal.Signals(-rc).name.lower())
    return f"exit status {rc}"


def _drain(tail):
    for line in tail.lines():
        if logrus.EVENT_MARK not in line:
            propagate_hostagent_line(line)


def _on_running(inst, st, print_ready):
    if st.get("degraded"):
        logrus.error("[" + " ".join(st.get("errors") or []) + "]")
        logrus.warning("DEGRADED. The VM seems running, but file sharing and port forwarding may not work. "
                       f"(hint: see `{inst.path('ha.stderr.log')}`)")
        raise Fatal(f"degraded, status={go_status(st)}")
    if print_ready:
        run_hint = "Run `lima`" if inst.name == "default" else f"Run `limactl shell {inst.name}`"
        if inst.config.get("plain"):
            run_hint = f"Run `ssh -F {inst.path('ssh.config')} {store.hostname_for(inst.name)}`"
        logrus.info(f"READY. {run_hint} to open the shell.")
        msg = inst.config.get("message")
        if msg:
            logrus.info(f"Message from the instance `{inst.name}`:")
            sys.stderr.write(str(msg).rstrip("\n") + "\n")
    return 0


def edit_existing(inst, v, g):
    with open(inst.lima_yaml) as f:
        tmpl = template.Template(f.read(), inst.name, inst.lima_yaml)
    apply_edits(tmpl, v)
    if tmpl.edited:
        with open(inst.lima_yaml, "w") as f:
            f.write(template.render(tmpl))
    return store.Instance(inst.name)


# ---------------------------------------------------------------------------- stop / delete


def stop_force(inst):
    """SIGKILL QEMU and the host agent, remove *.pid *.sock *.tmp (Lima's StopForcibly)."""
    qpid = store.read_pid_file(inst.path("qemu.pid"), remove_stale=False)
    hpid = store.read_pid_file(inst.path("ha.pid"), remove_stale=False)
    # Kill the host agent first so it cannot react to QEMU's death (no `exiting` event).
    for pid in (hpid, qpid):
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    logrus.info(f"Sending SIGKILL to the qemu driver process {qpid}" if qpid
                else "The qemu driver process seems already stopped")
    logrus.info(f"Sending SIGKILL to the host agent process {hpid}" if hpid
                else "The host agent process seems already stopped")
    deadline = time.monotonic() + 10
    while any(p and store.pid_alive(p) for p in (qpid, hpid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    logrus.info(f"Removing *.pid *.sock *.tmp under `{inst.dir}`")
    files = sorted(f for pat in ("*.pid", "*.sock", "*.tmp") for f in glob.glob(os.path.join(inst.dir, pat)))
    for f in files:
        logrus.info(f"Removing `{f}`")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)


def cmd_stop(args, g):
    v, pos = parse_flags(args, {"force": "bool"}, {"f": "force"})
    g.apply(v)
    if len(pos) != 1:
        raise Fatal(f"accepts at most 1 arg(s), received {len(pos)}" if pos else "requires exactly 1 arg(s), only received 0")
    name = pos[0]
    inst = store.Instance(name)
    if inst.yaml_missing:
        raise Fatal(f"open {inst.lima_yaml}: no such file or directory")
    if v.get("force"):
        stop_force(inst)
        return 0
    if inst.status != "Running":
        raise Fatal(f"expected status `Running`, got `{inst.status}` (maybe use `limactl stop -f`?)")
    return stop_graceful(inst)


def stop_graceful(inst):
    err_tail = Tail(inst.path("ha.stderr.log"), from_end=True)
    ev_tail = Tail(inst.path("ha.stdout.log"), from_end=True)
    logrus.info(f"Sending SIGINT to hostagent process {inst.ha_pid}")
    os.kill(inst.ha_pid, signal.SIGINT)
    logrus.info("Waiting for the host agent and the driver processes to shut down")
    deadline = time.monotonic() + 190
    exiting = False
    while not exiting:
        _drain(err_tail)
        for line in ev_tail.lines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("status", {}).get("exiting"):
                    exiting = True
        if not exiting and not store.pid_alive(inst.ha_pid):
            break  # the host agent died without telling: fall through to the status wait
        if not exiting and time.monotonic() > deadline:
            raise Fatal("did not receive an event with the `exiting` status")
        time.sleep(0.2)
    _drain(err_tail)
    logrus.info("Waiting for the instance to shut down")
    deadline = time.monotonic() + 180
    while store.Instance(inst.name).status != "Stopped":
        if time.monotonic() > deadline:
            raise Fatal("timed out waiting for instance to shut down after 3 minutes")
        time.sleep(0.2)
    logrus.info(f"The instance {inst.name} has shut down")
    return 0


def cmd_delete(args, g):
    v, pos = parse_flags(args, {"force": "bool"}, {"f": "force"})
    g.apply(v)
    if not pos:
        raise Fatal("requires at least 1 arg(s), only received 0")
    for name in pos:
        d = store.instance_dir(name)
        if not os.path.isdir(d):
            logrus.warning(f"Ignoring non-existent instance `{name}`")
            continue
        inst = store.Instance(name)
        if inst.yaml_missing:
            raise Fatal(f"instance `{name}` directory `{d}` exists but its `lima.yaml` could not be read; it was "
                        "NOT deleted, in case it is currently being cloned into. If no `limactl` operation is "
                        "using it, remove it manually")
        if inst.protected:
            raise Fatal(f"failed to delete instance `{name}`: instance is protected to prohibit accidental "
                        "removal (Hint: use `limactl unprotect`)")
        if not v.get("force") and inst.status != "Stopped":
            raise Fatal(f"failed to delete instance `{name}`: expected status `Stopped`, got `{inst.status}`")
        stop_force(inst)
        shutil.rmtree(d)
        logrus.info(f"Deleted `{name}` (`{d}`)")
    layers.gc_layers()
    return 0


CLONE_SKIP = re.compile(r"^(protected|swtpm|instance-id|ssh\.config|cidata\.img|disk|.*\.(pid|sock|tmp|log))$")


def cmd_clone(args, g):
    v, pos = parse_flags(args, dict(EDIT_FLAGS, start="bool", timeout="str"))
    g.apply(v)
    if len(pos) != 2:
        raise Fatal(f"accepts 2 arg(s), received {len(pos)}")
    old, new = pos
    src = store.instance_dir(old)
    if not os.path.isdir(src):
        raise Fatal(f"instance `{old}` not found")
    oinst = store.Instance(old)
    if oinst.status == "Running":
        raise Fatal("cannot clone a running instance")
    err = store.validate_name(new)
    if err:
        raise Fatal(err)
    dst = store.instance_dir(new)
    if os.path.exists(dst):
        raise Fatal(f"instance `{new}` already exists")
    tmp = os.path.join(store.lima_home(), f".clone-{new}.{os.getpid()}")
    os.makedirs(tmp)
    try:
        for entry in os.listdir(src):
            if CLONE_SKIP.match(entry):
                continue
            s = os.path.join(src, entry)
            if os.path.isdir(s):
                shutil.copytree(s, os.path.join(tmp, entry), symlinks=True)
            else:
                shutil.copy2(s, os.path.join(tmp, entry), follow_symlinks=False)
        if os.path.exists(os.path.join(src, "disk")):
            layer = layers.freeze_disk(os.path.join(src, "disk"))
            layers.make_overlay(layer, os.path.join(tmp, "disk"))
        with open(os.path.join(tmp, "instance-id"), "w") as f:
            f.write(str(uuid.uuid4()) + "\n")
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    inst = store.Instance(new)
    if any(edit_values(v).values()):
        inst = edit_existing(inst, v, g)
    if v.get("start"):
        timeout = units.parse_duration(v["timeout"]) if v.get("timeout") else DEFAULT_START_TIMEOUT
        return start_instance(inst, timeout, print_ready=True)
    return 0


def cmd_edit(args, g):
    v, pos = parse_flags(args, dict(EDIT_FLAGS, start="bool", timeout="str"))
    g.apply(v)
    if len(pos) != 1:
        raise Fatal("requires exactly 1 arg(s)")
    name = pos[0]
    inst = store.Instance(name)
    if inst.yaml_missing:
        raise Fatal(f"instance `{name}` not found")
    if inst.status == "Running":
        raise Fatal("cannot edit a running instance")
    with open(inst.lima_yaml) as f:
        before = f.read()
    tmpl = template.Template(before, name, inst.lima_yaml)
    apply_edits(tmpl, v)
    after = template.render(tmpl)
    if not tmpl.edited or after == before:
        logrus.info("Aborting, no changes made to the instance")
        return 0
    cfg = store.fill_defaults(tmpl.doc)
    err = store.validate_config(cfg)
    if err:
        raise Fatal(err)
    with open(inst.lima_yaml, "w") as f:
        f.write(after)
    logrus.info(f"Instance `{name}` configuration edited")
    if v.get("start"):
        return start_instance(store.Instance(name), DEFAULT_START_TIMEOUT, print_ready=True)
    return 0


def cmd_restart(args, g):
    v, pos = parse_flags(args, {"force": "bool", "timeout": "str"}, {"f": "force"})
    g.apply(v)
    if len(pos) != 1:
        raise Fatal("requires exactly 1 arg(s)")
    inst = store.Instance(pos[0])
    if inst.yaml_missing:
        raise Fatal(f"open {inst.lima_yaml}: no such file or directory")
    if inst.status == "Running":
        if v.get("force"):
            stop_force(inst)
        else:
            stop_graceful(inst)
    timeout = units.parse_duration(v["timeout"]) if v.get("timeout") else DEFAULT_START_TIMEOUT
    return start_instance(store.Instance(pos[0]), timeout, print_ready=True)
