"""create, start, stop, delete, clone, rename, edit, restart: the instance lifecycle commands.

The order of checks and every message are Lima's (cli-outcomes.json); what needs a VM (the
disk, the host agent, signals) is the driver's (driver.py).
"""
import glob
import os
import shutil
import uuid

from . import driver, logrus, store, template, units
from .common import EDIT_FLAGS, UsageError, edit_values, out, parse_flags
from .logrus import Fatal, q

DEFAULT_START_TIMEOUT = 600.0


def go_status(st):
    """events.Status printed with Go's %+v."""
    errs = " ".join(st.get("errors") or [])
    return (f"{{Running:{str(bool(st.get('running'))).lower()} Degraded:{str(bool(st.get('degraded'))).lower()} "
            f"Exiting:{str(bool(st.get('exiting'))).lower()} Errors:[{errs}] SSHLocalPort:{st.get('sshLocalPort', 0)} "
            f"CloudInitProgress:<nil> PortForward:<nil> Vsock:<nil>}}")


def parse_timeout(text):
    """--timeout: a Go duration; unset, 0 or negative means the default."""
    if not text:
        return DEFAULT_START_TIMEOUT
    try:
        timeout = units.parse_duration(text)
    except ValueError as e:
        raise UsageError(f'invalid argument {logrus.go_quote(text)} for "--timeout" flag: {e}') from e
    return timeout if timeout > 0 else DEFAULT_START_TIMEOUT


def is_instance_name(arg):
    """`start NAME` / `create NAME` (rather than a template locator)."""
    return bool(store.NAME_RE.match(arg)) and not arg.endswith((".yaml", ".yml")) and not os.path.exists(arg)


def at_most_one(pos):
    if len(pos) > 1:
        raise Fatal(f"accepts at most 1 arg(s), received {len(pos)}")


# ---------------------------------------------------------------------------- create / start


def _load_template(arg, name_flag):
    if arg == "-" and not name_flag:
        raise Fatal("must pass instance name with --name when reading template from stdin")
    try:
        return template.load(arg, logrus.warning)
    except template.TemplateError as e:
        raise Fatal(str(e)) from e


def _default_template_for(name):
    """A bare NAME means template:default, with Lima's deprecation lines."""
    logrus.info(f"Creating an instance {q(name)} from template:default (Not from template:{name})")
    logrus.warning(f"This form is deprecated. Use `limactl create --name={name} template:default` instead")
    return _load_template("template:default", name)


def apply_edits(tmpl, v):
    try:
        template.apply_edit_flags(tmpl, edit_values(v))
        if v.get("plain"):
            template.apply_set(tmpl.doc, ".plain = true")
            tmpl.edited = True
    except template.TemplateError as e:
        raise Fatal(str(e)) from e


def _create(name, tmpl, g, v, from_start):
    """Make the instance directory (lima.yaml, lima-version, instance-id). Returns Instance."""
    err = store.validate_name(name)
    if err:
        raise Fatal(err)
    d = store.instance_dir(name)
    if not from_start and os.path.exists(d):
        raise Fatal(f"instance {q(name)} already exists")
    if not g.tty:
        logrus.info("Terminal is not available, proceeding without opening an editor")
    if from_start and os.path.exists(d):
        raise Fatal(f"instance {q(name)} already exists ({q(d)})")
    apply_edits(tmpl, v)
    if tmpl.doc.get("base"):
        logrus.warning("`base:` templates are not supported by the stand-in; ignoring `base`")
    _validate(tmpl.doc)
    os.makedirs(store.lima_home(), exist_ok=True)
    tmp = os.path.join(store.lima_home(), f".create-{name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "lima.yaml"), "w") as f:
        f.write(template.render(tmpl))
    with open(os.path.join(tmp, "lima-version"), "w") as f:
        f.write(driver.get().lima_version_file() + "\n")
    os.chmod(os.path.join(tmp, "lima-version"), 0o444)
    with open(os.path.join(tmp, "instance-id"), "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    driver.get().created(tmp)
    try:
        os.rename(tmp, d)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Fatal(f"instance {q(name)} already exists") from e
    driver.get().ensure_identity()
    return store.Instance(name)


def _validate(doc):
    try:
        cfg = store.fill_defaults(doc)
    except (ValueError, TypeError, AttributeError) as e:
        raise Fatal(f"failed to fill defaults: {e}") from e
    err = store.validate_config(cfg)
    if err:
        raise Fatal(err)


def cmd_create(args, g):
    v, pos = parse_flags(args, dict(EDIT_FLAGS, name="str", timeout="str", **{"list-templates": "bool"}))
    g.apply(v)
    if v.get("list-templates"):
        return _list_templates()
    at_most_one(pos)
    driver.get().fail_point("create")
    arg = pos[0] if pos else None
    name_flag = v.get("name")
    if name_flag is None and arg and is_instance_name(arg):
        if os.path.exists(store.instance_dir(arg)):
            raise Fatal(f"instance {q(arg)} already exists")
        name, tmpl = arg, _default_template_for(arg)
    else:
        tmpl = _load_template(arg or "template:default", name_flag)
        name = name_flag or tmpl.name_hint or "default"
    inst = _create(name, tmpl, g, v, from_start=False)
    driver.get().prepare_disk(inst, pause_points=("create", "download"))
    logrus.info(f"Run `limactl start {name}` to start the instance.")
    return 0


def _list_templates():
    names = {"default"}
    for d in template.template_dirs():
        names.update(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(d, "*.yaml")))
    out("".join(n + "\n" for n in sorted(names)))
    return 0


def cmd_start(args, g):
    spec = dict(EDIT_FLAGS, name="str", timeout="str", foreground="bool", progress="bool",
                **{"list-templates": "bool"})
    v, pos = parse_flags(args, spec)
    g.apply(v)
    if v.get("list-templates"):
        return _list_templates()
    at_most_one(pos)
    arg = pos[0] if pos else None
    name_flag = v.get("name")
    driver.get().fail_point("start", name_flag or arg or "default")
    timeout = parse_timeout(v.get("timeout"))
    if name_flag is None and (arg is None or is_instance_name(arg)):
        name = arg or "default"
        inst = store.lookup(name)
        if inst is not None:
            return start_existing(inst, v, timeout)
        tmpl = _default_template_for(name) if name != "default" else _load_template("template:default", name)
    else:
        tmpl = _load_template(arg or "template:default", name_flag)
        name = name_flag or tmpl.name_hint or "default"
    inst = _create(name, tmpl, g, v, from_start=True)
    return start_instance(inst, timeout, print_ready=True)


def start_existing(inst, v, timeout):
    name = inst.name
    if inst.status == "Broken" and inst.errors:
        logrus.error(f"Instance {logrus.go_quote(name)} has configuration errors", error=inst.errors[0])
    logrus.info(f"Using the existing instance {q(name)}")
    if inst.errors:
        raise Fatal(f"errors inspecting instance: [{' '.join(inst.errors)}]")
    if inst.status not in ("Running", "Broken") and any(x for x in edit_values(v).values()):
        inst = edit_existing(inst, v)
    return start_instance(inst, timeout, print_ready=True)


def start_instance(inst, timeout, print_ready):
    name = inst.name
    if inst.config is None or inst.errors:
        raise Fatal(f"errors inspecting instance: [{' '.join(inst.errors)}]")
    if inst.status == "Running":
        logrus.info(f"The instance {q(name)} is already running. Run `limactl shell {name}` to open the shell.")
        return 0
    if inst.status != "Stopped":
        logrus.warning(f"expected status {q('Stopped')}, got {q(inst.status)}")
        if os.path.exists(inst.path("ha.pid")):
            raise Fatal(f"instance {q(name)} seems running (hint: remove {q(inst.path('ha.pid'))} "
                        f"if the instance is not actually running)")
    logrus.info(f"Starting the instance {q(name)} with internal VM driver {q(inst.config['vmType'])}")
    driver.get().ensure_identity()
    return driver.get().boot(inst, timeout, print_ready)


def ready_message(inst):
    """What `start` says once the instance runs."""
    if inst.name == "default":
        return "READY. Run `lima` to open the shell."
    if inst.config.get("plain"):
        return f"READY. Run `ssh -F {q(inst.path('ssh.config'))} {store.hostname_for(inst.name)}` to open the shell."
    return f"READY. Run `limactl shell {inst.name}` to open the shell."


def degraded(inst, st):
    """The degraded `running` event: Lima's error and warning lines, then the fatal."""
    logrus.error("[" + " ".join(st.get("errors") or []) + "]")
    logrus.warning("DEGRADED. The VM seems running, but file sharing and port forwarding may not work. "
                   f"(hint: see {q(inst.path('ha.stderr.log'))})")
    raise Fatal(f"degraded, status={go_status(st)}")


def edit_existing(inst, v):
    with open(inst.lima_yaml) as f:
        tmpl = template.Template(f.read(), inst.name, inst.lima_yaml)
    apply_edits(tmpl, v)
    if tmpl.edited:
        _validate(tmpl.doc)
        with open(inst.lima_yaml, "w") as f:
            f.write(template.render(tmpl))
    return store.Instance(inst.name)


# ---------------------------------------------------------------------------- stop / delete


def stop_force(inst):
    """Lima's StopForcibly: SIGKILL QEMU and the host agent, remove *.pid *.sock *.tmp."""
    qpid, hpid = inst.qemu_pid, inst.ha_pid
    driver.get().kill(inst)
    logrus.info(f"Sending SIGKILL to the qemu driver process {qpid}" if qpid
                else "The qemu driver process seems already stopped")
    logrus.info(f"Sending SIGKILL to the host agent process {hpid}" if hpid
                else "The host agent process seems already stopped")
    logrus.info(f"Removing *.pid *.sock *.tmp under {q(inst.dir)}")
    files = sorted(f for pat in ("*.pid", "*.sock", "*.tmp") for f in glob.glob(os.path.join(inst.dir, pat)))
    for f in files:
        logrus.info(f"Removing {q(f)}")
        try:
            os.unlink(f)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
    driver.get().stopped(inst)


def stop_graceful(inst):
    logrus.info(f"Sending SIGINT to hostagent process {inst.ha_pid}")
    logrus.info("Waiting for the host agent and the driver processes to shut down")
    driver.get().shut_down(inst)
    logrus.info("Waiting for the instance to shut down")
    driver.get().wait_stopped(inst)
    logrus.info(f"The instance {inst.name} has shut down")
    return 0


def _existing(name):
    inst = store.lookup(name)
    if inst is None:
        raise Fatal(f"open {os.path.join(store.instance_dir(name), 'lima.yaml')}: no such file or directory")
    return inst


def cmd_stop(args, g):
    v, pos = parse_flags(args, {"force": "bool"}, {"f": "force"})
    g.apply(v)
    at_most_one(pos)
    driver.get().fail_point("stop")
    inst = _existing(pos[0] if pos else "default")
    if v.get("force"):
        driver.get().pause_point("stop")
        stop_force(inst)
        return 0
    if inst.status != "Running":
        raise Fatal(f"expected status {q('Running')}, got {q(inst.status)} (maybe use `limactl stop -f`?)")
    return stop_graceful(inst)


def cmd_delete(args, g):
    v, pos = parse_flags(args, {"force": "bool"}, {"f": "force"})
    g.apply(v)
    if not pos:
        raise Fatal("requires at least 1 arg(s), only received 0")
    driver.get().fail_point("delete")
    driver.get().pause_point("delete")
    for name in pos:
        d = store.instance_dir(name)
        inst = store.lookup(name)
        if inst is None:
            if os.path.isdir(d) and not logrus.before_v22():
                raise Fatal(f"instance {q(name)} directory {q(d)} exists but its {q('lima.yaml')} could not be read; "
                            "it was NOT deleted, in case it is currently being cloned into. If no `limactl` "
                            "operation is using it, remove it manually")
            logrus.warning(f"Ignoring non-existent instance {q(name)}")
            continue
        if inst.protected:
            raise Fatal(f"failed to delete instance {q(name)}: instance is protected to prohibit accidental "
                        "removal (Hint: use `limactl unprotect`)")
        if not v.get("force") and inst.status != "Stopped":
            raise Fatal(f"failed to delete instance {q(name)}: expected status {q('Stopped')}, got {q(inst.status)}")
        stop_force(inst)
        shutil.rmtree(d, ignore_errors=True)
        logrus.info(f"Deleted {q(name)} ({q(d)})")
    driver.get().deleted()
    return 0


# ---------------------------------------------------------------------------- clone / edit / restart


def cmd_clone(args, g, rename=False):
    v, pos = parse_flags(args, dict(EDIT_FLAGS, start="bool", timeout="str"))
    g.apply(v)
    if len(pos) != 2:
        raise Fatal(f"accepts 2 arg(s), received {len(pos)}")
    cmd = "rename" if rename else "clone"
    driver.get().fail_point(cmd)
    driver.get().pause_point(cmd)
    old, new = pos
    inst = store.lookup(old)
    if inst is None:
        raise Fatal(f"instance {q(old)} not found")
    err = store.validate_name(new)
    if err:
        raise Fatal(err)
    dst = store.instance_dir(new)
    if os.path.exists(dst):
        raise Fatal(f"instance {q(new)} already exists")
    if inst.status == "Running":
        raise Fatal(f"cannot {cmd} a running instance")
    if rename:
        os.rename(inst.dir, dst)
    else:
        tmp = os.path.join(store.lima_home(), f".clone-{new}.{os.getpid()}")
        os.makedirs(tmp)
        try:
            driver.get().clone_into(inst, tmp)
            with open(os.path.join(tmp, "instance-id"), "w") as f:
                f.write(str(uuid.uuid4()) + "\n")
            os.rename(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    inst = store.Instance(new)
    if any(x for x in edit_values(v).values()):
        inst = edit_existing(inst, v)
    if v.get("start"):
        return start_instance(inst, parse_timeout(v.get("timeout")), print_ready=True)
    return 0


def cmd_edit(args, g):
    v, pos = parse_flags(args, dict(EDIT_FLAGS, start="bool", timeout="str"))
    g.apply(v)
    at_most_one(pos)
    driver.get().fail_point("edit")
    driver.get().pause_point("edit")
    name = pos[0] if pos else "default"
    inst = _existing(name)
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
    _validate(tmpl.doc)
    with open(inst.lima_yaml, "w") as f:
        f.write(after)
    logrus.info(f"Instance {q(name)} configuration edited")
    if v.get("start"):
        return start_instance(store.Instance(name), DEFAULT_START_TIMEOUT, print_ready=True)
    return 0


def cmd_restart(args, g):
    v, pos = parse_flags(args, {"force": "bool", "timeout": "str"}, {"f": "force"})
    g.apply(v)
    if len(pos) != 1:
        raise Fatal("requires exactly 1 arg(s)")
    inst = _existing(pos[0])
    if inst.status == "Running":
        if v.get("force"):
            stop_force(inst)
        else:
            stop_graceful(inst)
    return start_instance(store.Instance(pos[0]), parse_timeout(v.get("timeout")), print_ready=True)
