"""The `limactl` command line: flag parsing and every subcommand of the stand-in."""
import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid

from . import image, logrus, sshutil, store, template, units, yamlmini
from .logrus import Fatal

TOOLS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMACTL = os.path.join(TOOLS_DIR, "limactl")
DEFAULT_START_TIMEOUT = 600.0


class UsageError(Exception):
    """Flag parsing errors: always printed in text format (before --log-format applies)."""


# ---------------------------------------------------------------------------- flag parsing

GLOBAL_FLAGS = {"tty": "bool", "yes": "bool", "log-format": "str", "log-level": "str", "debug": "bool",
                "help": "bool", "version": "bool"}
GLOBAL_SHORT = {"y": "yes", "h": "help"}


def parse_bool(text, flag):
    t = text.lower()
    if t in ("1", "t", "true"):
        return True
    if t in ("0", "f", "false"):
        return False
    raise UsageError(f'invalid argument "{text}" for "--{flag}" flag: strconv.ParseBool: parsing "{text}": invalid syntax')


def parse_flags(args, spec, short=None, interspersed=True):
    """pflag-like parsing. spec: {name: 'bool'|'str'|'list'}; returns (values, positional)."""
    spec = dict(GLOBAL_FLAGS, **spec)
    short = dict(GLOBAL_SHORT, **(short or {}))
    values, positional = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positional += args[i + 1:]
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            kind = spec.get(name)
            if kind is None:
                raise UsageError(f"unknown flag: --{name}")
            if kind == "bool":
                values[name] = parse_bool(val, name) if eq else True
            else:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"flag needs an argument: --{name}")
                    val = args[i]
                if kind == "list":
                    values.setdefault(name, []).append(val)
                else:
                    values[name] = val
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                name = short.get(c)
                if name is None:
                    raise UsageError(f"unknown shorthand flag: '{c}' in {a}")
                kind = spec[name]
                if kind == "bool":
                    values[name] = True
                    j += 1
                    continue
                val = a[j + 1:].lstrip("=")
                if not val:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"flag needs an argument: '{c}' in -{c}")
                    val = args[i]
                if kind == "list":
                    values.setdefault(name, []).append(val)
                else:
                    values[name] = val
                break
        else:
            positional.append(a)
            if not interspersed:
                positional += args[i + 1:]
                break
        i += 1
    return values, positional


class Globals:
    def __init__(self):
        self.tty = sys.stdout.isatty()
        self.log_format = "text"
        self.log_level = "info"

    def apply(self, values):
        if "tty" in values:
            self.tty = values["tty"]
        if values.get("yes"):
            self.tty = False
        if "log-format" in values:
            if values["log-format"] not in ("text", "json"):
                raise UsageError(f"unsupported log-format: {values['log-format']}")
            self.log_format = values["log-format"]
        if "log-level" in values:
            self.log_level = {"warn": "warning"}.get(values["log-level"], values["log-level"])
        if values.get("debug"):
            self.log_level = "debug"
        logrus.configure(fmt=self.log_format, level=self.log_level)


# ---------------------------------------------------------------------------- helpers

def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def need_instance(name, missing_msg=None):
    inst = store.Instance(name)
    if inst.yaml_missing and not os.path.isdir(inst.dir):
        raise Fatal(missing_msg or f"instance `{name}` does not exist, run `limactl create {name}` to create a new instance")
    return inst


def require_running_for_ssh(name):
    if not os.path.isdir(store.instance_dir(name)):
        raise Fatal(f"instance `{name}` does not exist, run `limactl create {name}` to create a new instance")
    inst = store.Instance(name)
    if inst.config is None:
        raise Fatal(f"instance `{name}` is broken: {'; '.join(inst.errors)}")
    if inst.status == "Stopped":
        raise Fatal(f"instance `{name}` is stopped, run `limactl start {name}` to start the instance")
    return inst


def go_status(st):
    """events.Status printed with Go's %+v."""
    errs = " ".join(st.get("errors") or [])
    return (f"{{Running:{str(bool(st.get('running'))).lower()} Degraded:{str(bool(st.get('degraded'))).lower()} "
            f"Exiting:{str(bool(st.get('exiting'))).lower()} Errors:[{errs}] SSHLocalPort:{st.get('sshLocalPort', 0)} "
            f"CloudInitProgress:<nil> PortForward:<nil> Vsock:<nil>}}")


class Tail:
    """Complete new lines of a growing file (restarts from 0 if the file was truncated)."""

    def __init__(self, path, from_end=False):
        self.path = path
        self.pos = 0
        self.buf = b""
        if from_end:
            with contextlib.suppress(OSError):
                self.pos = os.path.getsize(path)

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.pos:
                    self.pos, self.buf = 0, b""
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        self.pos += len(data)
        self.buf += data
        *complete, self.buf = self.buf.split(b"\n")
        return [line.decode(errors="replace") for line in complete if line.strip()]


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


EDIT_FLAGS = {"set": "list", "cpus": "str", "memory": "str", "disk": "str", "mount": "list",
              "mount-only": "list", "mount-none": "bool", "mount-writable": "bool", "ssh-port": "str",
              "param": "list", "shell": "str", "vm-type": "str", "arch": "str", "mount-type": "str",
              "containerd": "str", "plain": "bool", "port-forward": "list", "network": "list",
              "dns": "list", "video": "bool", "rosetta": "bool", "nested-virt": "bool",
              "mount-inotify": "bool", "image-variant": "str"}


def _edit_values(v):
    return {"set": v.get("set"), "cpus": v.get("cpus"), "memory": v.get("memory"), "disk": v.get("disk"),
            "mount": v.get("mount"), "mount_only": v.get("mount-only"), "mount_none": v.get("mount-none"),
            "mount_writable": v.get("mount-writable"), "ssh_port": v.get("ssh-port"), "param": v.get("param"),
            "shell": v.get("shell")}


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


def _apply_edits(tmpl, v):
    try:
        template.apply_edit_flags(tmpl, _edit_values(v))
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
    _apply_edits(tmpl, v)
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
        _apply_edits(tmpl, v)
        inst = _create(name, tmpl, g, from_start=True)
    else:
        name = arg or name_flag or "default"
        if os.path.isdir(store.instance_dir(name)):
            logrus.info(f"Using the existing instance `{name}`")
            inst = store.Instance(name)
            if any(_edit_values(v).values()):
                inst = _edit_existing(inst, v, g)
        else:
            logrus.info(f"Creating an instance `{name}` from template:default (Not from template:{name})")
            logrus.warning(f"This form is deprecated. Use `limactl create --name={name} template:default` instead")
            tmpl = _load_template("template:default", True)
            _apply_edits(tmpl, v)
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
    name, d = inst.name, inst.dir
    pidfile, sock = inst.path("ha.pid"), inst.path("ha.sock")
    with open(inst.path("ha.stdout.log"), "w") as so, open(inst.path("ha.stderr.log"), "w") as se:
        proc = subprocess.Popen([sys.executable, LIMACTL, "hostagent", "--pidfile", pidfile, "--socket", sock, name],
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


def _edit_existing(inst, v, g):
    with open(inst.lima_yaml) as f:
        tmpl = template.Template(f.read(), inst.name, inst.lima_yaml)
    _apply_edits(tmpl, v)
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
    gc_layers()
    return 0


# ---------------------------------------------------------------------------- clone (copy-on-write)

def layers_dir():
    return os.path.join(store.lima_home(), "_layers")


def freeze_disk(src_disk):
    """Make `src_disk` an immutable shared layer and give the source a fresh overlay on it.

    The source's disk file is renamed into $LIMA_HOME/_layers/ (same filesystem: O(1)) and
    replaced by an empty qcow2 overlay; clones get overlays on the same layer. No data is
    copied, and neither instance can change what the other sees.
    """
    os.makedirs(layers_dir(), exist_ok=True)
    layer = os.path.join(layers_dir(), f"{uuid.uuid4().hex}.qcow2")
    os.rename(src_disk, layer)
    try:
        os.chmod(layer, 0o444)
        make_overlay(layer, src_disk)
    except (OSError, subprocess.CalledProcessError):
        with contextlib.suppress(OSError):
            os.unlink(src_disk)
        os.rename(layer, src_disk)
        raise
    return layer


def make_overlay(backing, path):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, path],
                   check=True, capture_output=True)


def gc_layers():
    """Remove _layers/ files that no instance disk uses any more."""
    d = layers_dir()
    if not os.path.isdir(d):
        return
    used = set()
    for name in store.instance_names():
        disk = os.path.join(store.instance_dir(name), "disk")
        if os.path.exists(disk):
            used.update(image.disk_chain(disk))
    for f in os.listdir(d):
        p = os.path.realpath(os.path.join(d, f))
        if p not in used:
            with contextlib.suppress(OSError):
                os.unlink(p)
    with contextlib.suppress(OSError):
        os.rmdir(d)


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
            layer = freeze_disk(os.path.join(src, "disk"))
            make_overlay(layer, os.path.join(tmp, "disk"))
        with open(os.path.join(tmp, "instance-id"), "w") as f:
            f.write(str(uuid.uuid4()) + "\n")
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    inst = store.Instance(new)
    if any(_edit_values(v).values()):
        inst = _edit_existing(inst, v, g)
    if v.get("start"):
        timeout = units.parse_duration(v["timeout"]) if v.get("timeout") else DEFAULT_START_TIMEOUT
        return start_instance(inst, timeout, print_ready=True)
    return 0


# ---------------------------------------------------------------------------- list

TABLE_FIELDS = ["NAME", "STATUS", "SSH", "VMTYPE", "ARCH", "CPUS", "MEMORY", "DISK", "DIR"]
INT_FIELDS = {"cpus", "memory", "disk", "sshLocalPort", "hostAgentPID", "driverPID"}


def _tabwrite(rows, padding=4):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i] + padding) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("".join(cells).rstrip() + "\n")
    return "".join(lines)


def _lookup(obj, field):
    """Go template field access on the JSON object: case-insensitive key match."""
    if not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        if k.lower() == field.lower():
            return v
    return None


def render_go_template(fmt, obj):
    def value(expr):
        expr = expr.strip()
        if expr in ("json .", "json ."):
            return logrus.go_json(obj)
        m = re.match(r"^json\s+(\.[\w.]+)$", expr)
        if m:
            return logrus.go_json(_path_value(obj, m.group(1)))
        if expr.startswith("."):
            v = _path_value(obj, expr)
            if v is None:
                last = expr.rsplit(".", 1)[-1]
                return "0" if any(last.lower() == f.lower() for f in INT_FIELDS) else ""
            if isinstance(v, bool):
                return str(v).lower()
            if isinstance(v, (dict, list)):
                return logrus.go_json(v)
            return str(v)
        raise Fatal(f"template: unsupported expression `{expr}` in the stand-in")

    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    return re.sub(r"\{\{(.*?)\}\}", lambda m: value(m.group(1)), fmt)


def _path_value(obj, path):
    v = obj
    for part in path.strip(".").split("."):
        if not part:
            continue
        v = _lookup(v, part)
    return v


def _filter_match(obj, expr):
    """--filter: `.field == "x"`, `.field != "x"`, `.a.b == 3`, or a bare `.field` (truthy)."""
    m = re.match(r"^\s*(\.[\w.]+)\s*(==|!=)\s*(.+?)\s*$", expr)
    if m:
        want = yamlmini.parse_flow_value(m.group(3))
        got = _path_value(obj, m.group(1))
        return (got == want) if m.group(2) == "==" else (got != want)
    m = re.match(r"^\s*(\.[\w.]+)\s*$", expr)
    if m:
        return bool(_path_value(obj, m.group(1)))
    raise Fatal(f"unsupported --filter expression `{expr}` in the stand-in")


def cmd_list(args, g):
    v, pos = parse_flags(args, {"json": "bool", "format": "str", "quiet": "bool", "filter": "list",
                                "yq": "list", "all-fields": "bool", "list-fields": "bool"},
                         {"q": "quiet", "f": "format"})
    g.apply(v)
    if v.get("json") and "format" in v:
        raise Fatal("option --json conflicts with option --format")
    fmt = "json" if v.get("json") or v.get("filter") else v.get("format", "table")
    if v.get("yq"):
        raise Fatal("--yq is not supported by the stand-in (use --filter or --format)")
    if v.get("list-fields"):
        out("".join(f + "\n" for f in ["Name", "Hostname", "Status", "Dir", "VMType", "Arch", "CPUs", "Memory",
                                       "Disk", "SSHLocalPort", "SSHConfigFile", "HostAgentPID", "DriverPID",
                                       "Config", "SSHAddress", "Protected", "LimaVersion", "Param"]))
        return 0
    all_names = store.instance_names()
    if v.get("quiet"):
        names = [n for n in all_names if not pos or n in pos]
        out("".join(n + "\n" for n in names))
        return 0
    if not pos and not all_names:
        logrus.warning("No instance found. Run `limactl create` to create an instance.")
        return 0
    targets = [n for n in pos if n in all_names] if pos else all_names
    unmatched = [n for n in pos if n not in all_names]
    insts = [store.Instance(n) for n in targets]
    warned_dir = False
    for inst in insts:
        if inst.yaml_missing and not warned_dir:
            logrus.warning(f"The directory `{store.lima_home()}` does not look like a valid Lima directory: "
                           f"stat {inst.lima_yaml}: no such file or directory")
            warned_dir = True
        if inst.errors:
            logrus.warning(f"instance `{inst.name}` has errors", errors="[" + " ".join(inst.errors) + "]")
    objs = [i.to_json() for i in insts]
    for expr in v.get("filter") or []:
        objs = [o for o in objs if _filter_match(o, expr)]
    if fmt == "json":
        out("".join(logrus.go_json(o) + "\n" for o in objs))
    elif fmt == "yaml":
        out("".join("---\n" + yamlmini.dumps(o) for o in objs))
    elif fmt == "table":
        out(_table(insts, v.get("all-fields")))
    else:
        out("".join(render_go_template(fmt, o) + "\n" for o in objs))
    for n in unmatched:
        logrus.warning(f"No instance matching {n} found.")
    if unmatched:
        raise Fatal("unmatched instances")
    return 0


def _table(insts, all_fields):
    if not insts:
        return ""
    fields = list(TABLE_FIELDS)
    if not all_fields:
        if all(i.config and i.config["vmType"] == "qemu" for i in insts):
            fields.remove("VMTYPE")
        if all(i.config and i.config["arch"] == store.HOST_ARCH for i in insts):
            fields.remove("ARCH")
    home = os.path.expanduser("~")
    rows = [fields]
    for i in insts:
        c = i.config or {}
        d = i.dir
        if d.startswith(home + os.sep):
            d = "~" + d[len(home):]
        cell = {"NAME": i.name, "STATUS": i.status,
                "SSH": f"127.0.0.1:{i.ssh_port or 0}",
                "VMTYPE": c.get("vmType", ""), "ARCH": c.get("arch", ""),
                "CPUS": str(c.get("cpus", "")),
                "MEMORY": units.bytes_size(units.ram_in_bytes(c["memory"])) if c else "",
                "DISK": units.bytes_size(units.ram_in_bytes(c["disk"])) if c else "",
                "DIR": d}
        rows.append([cell[f] for f in fields])
    return _tabwrite(rows)


# ---------------------------------------------------------------------------- shell / copy / ssh

def _quote_args(argv):
    """Lima: args shell-quoted and joined; leading KEY=VALUE args stay env assignments."""
    out, leading = [], True
    for a in argv:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", a, re.S) if leading else None
        if m:
            out.append(f"{m.group(1)}={shlex.quote(m.group(2))}")
        else:
            leading = False
            out.append(shlex.quote(a))
    return " ".join(out)


def cmd_shell(args, g):
    v, pos = parse_flags(args, {"workdir": "str", "shell": "str", "reconnect": "bool", "preserve-env": "bool",
                                "start": "bool", "sync": "str", "instance": "str"}, interspersed=False)
    g.apply(v)
    if v.get("instance"):
        pos = [v["instance"]] + pos
    if not pos:
        raise Fatal("requires instance name as first argument")
    name, cmd = pos[0], pos[1:]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not os.path.isdir(store.instance_dir(name)):
        raise Fatal(f"instance `{name}` does not exist, run `limactl create {name}` to create a new instance")
    inst = store.Instance(name)
    if inst.status == "Stopped" and v.get("start"):
        rc = start_instance(inst, DEFAULT_START_TIMEOUT, print_ready=False)
        if rc:
            return rc
        inst = store.Instance(name)
    inst = require_running_for_ssh(name)
    shell = v.get("shell") or inst.config["user"]["shell"]
    if v.get("workdir"):
        script = f"cd {shlex.quote(v['workdir'])} || exit 1 ; exec {shell} --login"
    else:
        script = f"exec {shell} --login"
    if cmd:
        script += " -c " + shlex.quote(_quote_args(cmd))
    argv, host = sshutil.ssh_base_argv(inst.dir, name)
    if v.get("reconnect"):
        subprocess.run(argv + ["-O", "exit", host], capture_output=True, check=False)
    if v.get("preserve-env"):
        env_prefix = " ".join(f"{k}={shlex.quote(val)}" for k, val in os.environ.items()
                              if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) and k not in _ENV_BLOCK)
        script = f"export {env_prefix} ; {script}" if env_prefix else script
    if sys.stdout.isatty() and sys.stdin.isatty():
        argv.append("-t")
    elif not cmd:
        argv.append("-T")
    argv += ["-o", "LogLevel=ERROR", host, "--", script]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


_ENV_BLOCK = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TERM", "SHLVL", "TMPDIR", "DISPLAY",
              "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "XDG_RUNTIME_DIR",
              "XAUTHORITY", "LD_PRELOAD", "LD_LIBRARY_PATH", "_"}


def cmd_copy(args, g):
    v, pos = parse_flags(args, {"recursive": "bool", "verbose": "bool", "backend": "str"},
                         {"r": "recursive", "v": "verbose"})
    g.apply(v)
    if len(pos) < 2:
        raise Fatal(f"requires at least 2 arg(s), only received {len(pos)}")
    backend = v.get("backend", "auto")
    config_files, mapped, instances = [], [], set()
    for p in pos:
        if ":" in p and not p.startswith(("/", ".")):
            if p.count(":") > 1:
                raise Fatal(f"path {p!r} contains multiple colons")
            name, path = p.split(":", 1)
            inst = require_running_for_ssh(name)
            instances.add(name)
            config_files.append(inst.path("ssh.config"))
            mapped.append(f"{store.hostname_for(name)}:{path}")
        else:
            mapped.append(p)
    if not instances:
        raise Fatal("at least one argument must be a guest path (`INSTANCE:PATH`)")
    if len(set(config_files)) > 1:
        raise Fatal("copying between two instances is not supported by the stand-in")
    cfg_file = config_files[0]
    if backend == "rsync":
        argv = ["rsync", "-e", f"ssh -F {shlex.quote(cfg_file)}", "-a" if v.get("recursive") else "-t"]
        if v.get("verbose"):
            argv.append("-v")
        argv += mapped
    else:
        argv = ["scp", "-F", cfg_file, "-o", "LogLevel=ERROR"]
        if v.get("recursive"):
            argv.append("-r")
        if v.get("verbose"):
            argv.append("-v")
        argv += mapped
    os.execvp(argv[0], argv)


def cmd_show_ssh(args, g):
    v, pos = parse_flags(args, {"format": "str"}, {"f": "format"})
    g.apply(v)
    if len(pos) != 1:
        raise Fatal("requires exactly 1 arg(s)")
    name = pos[0]
    inst = need_instance(name)
    logrus.warning(f"`limactl show-ssh` is deprecated. Instead, use `ssh -F {inst.path('ssh.config')} "
                   f"{store.hostname_for(name)}`.")
    port = inst.ssh_port or 0
    opts = sshutil.ssh_options(inst.dir, inst.config, port)
    fmt = v.get("format", "cmd")
    host = store.hostname_for(name)
    if fmt == "config":
        out(sshutil.ssh_config_text(name, inst.dir, inst.config, port, header=False))
    elif fmt == "options":
        out("".join(f"{k}={val}\n" for k, val in opts))
    elif fmt == "args":
        out(" ".join(f"-o {k}={val}" for k, val in opts) + "\n")
    elif fmt == "cmd":
        out("ssh " + " ".join(f"-o {k}={val}" for k, val in opts) + f" {host}\n")
    else:
        raise Fatal(f"unknown format: {fmt!r}")
    return 0


# ---------------------------------------------------------------------------- small commands

def cmd_protect(args, g, protect=True):
    v, pos = parse_flags(args, {})
    g.apply(v)
    for name in pos:
        inst = store.Instance(name)
        if inst.yaml_missing:
            raise Fatal(f"failed to inspect instance `{name}`: open {inst.lima_yaml}: no such file or directory")
        marker = inst.path("protected")
        if protect:
            if os.path.exists(marker):
                logrus.warning(f"Instance `{name}` is already protected. Skipping.")
                continue
            open(marker, "w").close()
            os.chmod(marker, 0o400)
            logrus.info(f"Protected `{name}`")
        else:
            if not os.path.exists(marker):
                logrus.warning(f"Instance `{name}` isn't protected. Skipping.")
                continue
            os.unlink(marker)
            logrus.info(f"Unprotected `{name}`")
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
    _apply_edits(tmpl, v)
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


def cmd_validate(args, g):
    v, pos = parse_flags(args, {"fill": "bool"})
    g.apply(v)
    for f in pos:
        try:
            t = template.load(f, logrus.warning)
            cfg = store.fill_defaults(t.doc)
        except (template.TemplateError, ValueError, TypeError) as e:
            raise Fatal(str(e)) from e
        err = store.validate_config(cfg)
        if err:
            raise Fatal(f"failed to validate YAML file {f!r}: {err}")
        if v.get("fill"):
            out(yamlmini.dumps(cfg))
        logrus.info(f"{json.dumps(f)}: OK")
    return 0


def cmd_info(args, g):
    v, _pos = parse_flags(args, {})
    g.apply(v)
    info = {"version": store.VERSION, "templates": [], "defaultTemplate": store.fill_defaults(
        template.find_template("default").doc), "limaHome": store.lima_home(), "vmTypes": ["qemu"],
        "guestAgents": {}, "hostOS": "linux", "hostArch": store.HOST_ARCH, "identityFile": store.identity_file()}
    out(json.dumps(info, indent=4) + "\n")
    return 0


def cmd_watch(args, g):
    """Events of instances as JSON lines {"instance","event"} (or text), until interrupted."""
    v, pos = parse_flags(args, {"json": "bool", "history": "bool"})
    g.apply(v)
    sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S") + " Watching for events...\n")
    tails = {}
    try:
        while True:
            for name in (pos or store.instance_names()):
                path = os.path.join(store.instance_dir(name), "ha.stdout.log")
                if name not in tails:
                    tails[name] = Tail(path, from_end=not v.get("history"))
                for line in tails[name].lines():
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if v.get("json"):
                        out(logrus.go_json({"instance": name, "event": ev}) + "\n")
                    else:
                        out(f"{ev.get('time', '')} {name} {logrus.go_json(ev.get('status', {}))}\n")
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------------- main

COMMANDS = {
    "create": cmd_create, "start": cmd_start, "stop": cmd_stop,
    "delete": cmd_delete, "remove": cmd_delete, "rm": cmd_delete,
    "list": cmd_list, "ls": cmd_list,
    "shell": cmd_shell, "copy": cmd_copy, "cp": cmd_copy,
    "clone": cmd_clone, "show-ssh": cmd_show_ssh,
    "protect": cmd_protect, "unprotect": lambda a, g: cmd_protect(a, g, protect=False),
    "edit": cmd_edit, "restart": cmd_restart, "validate": cmd_validate, "info": cmd_info,
    "watch": cmd_watch,
}


def main(argv):
    # sbin tools (mke2fs) must be found even from a non-login root shell
    os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"
    if argv and argv[0] == "hostagent":
        from . import hostagent  # only the host agent needs its HTTP server and QEMU code
        return hostagent.main(argv[1:])
    g = Globals()
    try:
        # global flags before the subcommand
        i = 0
        pre = []
        while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
            a = argv[i]
            pre.append(a)
            name = a[2:].partition("=")[0] if a.startswith("--") else GLOBAL_SHORT.get(a[1:2], "")
            if "=" not in a and GLOBAL_FLAGS.get(name) == "str":
                i += 1
                if i < len(argv):
                    pre.append(argv[i])
            i += 1
        v, _ = parse_flags(pre, {})
        g.apply(v)
        if v.get("version"):
            out(f"limactl version {store.VERSION}\n")
            return 0
        rest = argv[i:]
        if not rest or v.get("help"):
            out("Lima stand-in (limactl 2.2.0 CLI contract) for machine: see tools/README.md\n"
                "Commands: " + " ".join(sorted(COMMANDS)) + "\n")
            return 0
        cmd = COMMANDS.get(rest[0])
        if cmd is None:
            raise Fatal(f'unknown command "{rest[0]}" for "limactl"')
        rc = cmd(rest[1:], g)
        return rc or 0
    except UsageError as e:
        sys.stderr.write(logrus.format_line("fatal", str(e), fmt="text") + "\n")
        return 1
    except Fatal as e:
        logrus.log("fatal", e.msg)
        return 1
    except KeyboardInterrupt:
        return 130
