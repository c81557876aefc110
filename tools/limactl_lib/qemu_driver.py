"""The QEMU driver of tools/limactl: a detached host agent (`limactl hostagent NAME`, see
hostagent.py) runs QEMU; `start` follows its logs and events, `stop` signals it."""
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

from . import image, layers, logrus, sshutil, store
from .common import Tail
from .lifecycle import degraded, go_status, ready_message
from .logrus import Fatal, q

LIMACTL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "limactl")

CLONE_SKIP = re.compile(r"^(protected|swtpm|instance-id|ssh\.config|cidata\.img|disk|.*\.(pid|sock|tmp|log))$")

# what `shell --preserve-env` does not carry into the guest
_ENV_BLOCK = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TERM", "SHLVL", "TMPDIR", "DISPLAY",
              "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "XDG_RUNTIME_DIR",
              "XAUTHORITY", "LD_PRELOAD", "LD_LIBRARY_PATH", "_"}


def exit_status(rc):
    """Go's exec.ExitError text: `exit status 1`, `signal: killed`..."""
    names = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGINT: "interrupt",
             signal.SIGSEGV: "segmentation fault", signal.SIGABRT: "aborted"}
    if rc is not None and rc < 0:
        return "signal: " + names.get(-rc, signal.Signals(-rc).name.lower())
    return f"exit status {rc}"


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


def _drain(tail):
    for line in tail.lines():
        if logrus.EVENT_MARK not in line:
            propagate_hostagent_line(line)


def _quote_args(argv):
    """Lima: args shell-quoted and joined; leading KEY=VALUE args stay env assignments."""
    words, leading = [], True
    for a in argv:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", a, re.S) if leading else None
        if m:
            words.append(f"{m.group(1)}={shlex.quote(m.group(2))}")
        else:
            leading = False
            words.append(shlex.quote(a))
    return " ".join(words)


class QemuDriver:
    description = "Lima stand-in"

    def __init__(self):
        # sbin tools (mke2fs) must be found even from a non-login root shell
        os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"

    @staticmethod
    def version():
        return store.VERSION

    @staticmethod
    def commands():
        def hostagent(args, _g):
            from . import hostagent as ha  # only the host agent needs its HTTP server and QEMU code
            return ha.main(args)
        def hibernate(args, g):
            from . import hibernate as hib
            return hib.cmd_hibernate(args, g)
        return {"hostagent": hostagent, "hibernate": hibernate}

    @staticmethod
    def info_extra():
        """`limactl info` keys of the stand-in's own: machineEgress when the network boundary
        (netns.py) works on this host, so machine knows it may write the template key;
        machineHibernate (always: QEMU migration to a file); machineGuestImage: whether the guest
        image is built, else what building it needs."""
        from . import qemu
        extra = {"machineHibernate": True}  # `limactl hibernate`, and `start` resumes (hibernate.py)
        if qemu.machine_egress_supported():
            extra["machineEgress"] = True
        extra["machineGuestImage"] = image.guest_image_status()
        return extra

    # ------------------------------------------------------------------ the test fake's knobs
    def fail_point(self, cmd, name=None):
        pass

    def pause_point(self, cmd):
        pass

    def malformed_list(self, recs):
        return None

    # ------------------------------------------------------------------ store
    def inspect(self, inst):
        """Status from the pid files of live processes (a stale file is removed, as Lima does)."""
        inst.set_status(store.read_pid_file(inst.path("ha.pid")), store.read_pid_file(inst.path("qemu.pid")))

    @staticmethod
    def load_yaml(path):
        return store.read_yaml_file(path)

    def lima_version_file(self):
        return store.VERSION

    def created(self, inst_dir):
        pass

    def ensure_identity(self):
        sshutil.ensure_user_key()

    def prepare_disk(self, inst, pause_points=()):
        try:
            image.prepare_disk(inst.name, inst.dir, inst.config)
        except (image.ImageError, subprocess.CalledProcessError) as e:
            msg = e.stderr.decode().strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else str(e)
            raise Fatal(msg) from e

    def clone_into(self, inst, tmp):
        """Copy the instance's files; the disk becomes a shared frozen layer under two overlays."""
        for entry in os.listdir(inst.dir):
            if CLONE_SKIP.match(entry):
                continue
            s = os.path.join(inst.dir, entry)
            if os.path.isdir(s):
                shutil.copytree(s, os.path.join(tmp, entry), symlinks=True)
            else:
                shutil.copy2(s, os.path.join(tmp, entry), follow_symlinks=False)
        if os.path.exists(inst.path("disk")):
            layer = layers.freeze_disk(inst.path("disk"))
            layers.make_overlay(layer, os.path.join(tmp, "disk"))

    def deleted(self):
        layers.gc_layers()

    # ------------------------------------------------------------------ start
    def boot(self, inst, timeout, print_ready):
        if not os.path.exists(inst.path("disk")):
            self.prepare_disk(inst)
        else:
            try:
                image.grow_disk(inst.name, inst.dir, inst.config)
            except (image.ImageError, subprocess.CalledProcessError) as e:
                raise Fatal(f"failed to resize the disk of {q(inst.name)}: {e}") from e
        return self._launch_and_follow(inst, timeout, print_ready)

    def _launch_and_follow(self, inst, timeout, print_ready):
        pidfile, sock = inst.path("ha.pid"), inst.path("ha.sock")
        with open(inst.path("ha.stdout.log"), "w") as so, open(inst.path("ha.stderr.log"), "w") as se:
            proc = subprocess.Popen([sys.executable, "-SE", LIMACTL, "hostagent", "--pidfile", pidfile,
                                     "--socket", sock, inst.name],
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
                raise Fatal(f"hostagent ({q(pidfile)}) did not start up in 5s (hint: see {q(inst.path('ha.stderr.log'))})")
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
                    if st.get("degraded"):
                        degraded(inst, st)
                    self._ready(inst, print_ready)
                    return 0
                if st.get("exiting"):
                    time.sleep(0.2)
                    _drain(err_tail)
                    raise Fatal(f"exiting, status={go_status(st)} (hint: see {q(inst.path('ha.stderr.log'))})")
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
                raise Fatal(f"did not receive an event with the {q('running')} status")
            time.sleep(0.2)

    @staticmethod
    def _ready(inst, print_ready):
        if print_ready:
            logrus.info(ready_message(inst))
            msg = inst.config.get("message")
            if msg:
                logrus.info(f"Message from the instance {q(inst.name)}:")
                sys.stderr.write(str(msg).rstrip("\n") + "\n")

    # ------------------------------------------------------------------ stop
    def kill(self, inst):
        # the host agent first, so it cannot react to QEMU's death (no `exiting` event)
        pids = [p for p in (inst.ha_pid, inst.qemu_pid) if p]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(store.pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stopped(self, inst):
        pass

    def shut_down(self, inst):
        """SIGINT to the host agent; its log lines until the `exiting` event."""
        err_tail = Tail(inst.path("ha.stderr.log"), from_end=True)
        ev_tail = Tail(inst.path("ha.stdout.log"), from_end=True)
        os.kill(inst.ha_pid, signal.SIGINT)
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
                raise Fatal(f"did not receive an event with the {q('exiting')} status")
            time.sleep(0.2)
        _drain(err_tail)

    def wait_stopped(self, inst):
        deadline = time.monotonic() + 180
        while store.Instance(inst.name).status != "Stopped":
            if time.monotonic() > deadline:
                raise Fatal("timed out waiting for instance to shut down after 3 minutes")
            time.sleep(0.2)

    # ------------------------------------------------------------------ snapshot
    def snapshot(self, inst, op, tag):
        """Lima's QEMU driver (pkg/driver/qemu/qemu.go Save/Load/Del/List): HMP over QMP when
        Running, qemu-img on the disk otherwise. HMP errors are output, not failures."""
        if inst.status == "Running":
            from . import qemu
            hmp = {"create": "savevm", "apply": "loadvm", "delete": "delvm", "list": "info"}[op]
            logrus.info(f"Sending HMP {hmp} command")
            try:
                # no deadline on the command itself (savevm writes the guest's memory), as Lima
                q = qemu.QMP(inst.path("qmp.sock"), timeout=5)
                q.sock.settimeout(None)
                text = q.execute("human-monitor-command", **{"command-line": f"{hmp} {tag or 'snapshots'}"})
                q.close()
            except (OSError, ConnectionError, RuntimeError, ValueError) as e:
                raise Fatal(str(e)) from e
            if op == "list":
                text = text.replace("\r", "")
                text = text.replace("List of snapshots present on all disks:\n", "", 1)
                return text.replace("There is no snapshot available.\n", "", 1)
            if text:
                logrus.warning(f"output: {text.strip()}")
            return ""
        flag = {"create": "-c", "apply": "-a", "delete": "-d", "list": "-l"}[op]
        argv = ["qemu-img", "snapshot", flag] + ([tag] if tag else []) + [inst.path("disk")]
        logrus.debug(f"Running qemu-img {argv[1:]} command")
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            logrus.debug(f"qemu-img: {r.stderr.strip()}")
            raise Fatal(exit_status(r.returncode))
        return r.stdout.replace("Snapshot list:\n", "", 1) if op == "list" else ""

    # ------------------------------------------------------------------ shell / copy
    def shell(self, inst, v, cmd, only_assignments=False):
        if inst.config is None:
            raise Fatal(f"instance {q(inst.name)} is broken: {'; '.join(inst.errors)}")
        shell = v.get("shell") or inst.config["user"]["shell"]
        if v.get("workdir"):
            script = f"cd {shlex.quote(v['workdir'])} || exit 1 ; exec {shell} --login"
        else:
            script = f"exec {shell} --login"
        if cmd:
            script += " -c " + shlex.quote(_quote_args(cmd))
        argv, host = sshutil.ssh_base_argv(inst.dir, inst.name)
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

    def copy(self, v, paths):
        configs = {inst.path("ssh.config") for inst, _ in paths if inst}
        if not configs:
            raise Fatal("at least one argument must be a guest path (`INSTANCE:PATH`)")
        if len(configs) > 1:
            raise Fatal("copying between two instances is not supported by the stand-in")
        cfg_file = configs.pop()
        mapped = [f"{store.hostname_for(inst.name)}:{p}" if inst else p for inst, p in paths]
        if v.get("backend", "auto") == "rsync":
            argv = ["rsync", "-e", f"ssh -F {shlex.quote(cfg_file)}", "-a" if v.get("recursive") else "-t"]
        else:
            argv = ["scp", "-F", cfg_file, "-o", "LogLevel=ERROR"] + (["-r"] if v.get("recursive") else [])
        argv += (["-v"] if v.get("verbose") else []) + mapped
        os.execvp(argv[0], argv)
