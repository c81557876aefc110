"""The no-VM driver: tests/fixtures/fake-limactl, the stand-in with nothing booted.

Everything Lima's contract defines comes from the shared package; this driver plays the host
agent instantly (the requirement lines, events and logs of a boot), keeps each instance's status
in `<dir>/fake-state.json`, runs `shell` commands on the host, and lets FAKE_LIMACTL_* variables
make it slow, hang, fail or misbehave (tests/fixtures/fake-limactl.md).
"""
import json
import os
import shutil
import signal
import sys
import time

from . import cli, driver, lifecycle, logrus, sshutil, store, units
from .common import parse_flags
from .logrus import Exit, Fatal, go_quote, q

ENV = os.environ


def knob(name, default=""):
    return ENV.get("FAKE_LIMACTL_" + name, default)


def knob_on(name):
    return knob(name) not in ("", "0", "false", "no")


STYLE = knob("LIST_STYLE").strip().lower().lstrip("v")
BEFORE_V22 = STYLE.startswith(("2.1", "2.0", "1.", "0."))  # %q quoting, no Broken-without-lima.yaml
VERSION = (knob("VERSION") or ("2.1.4" if BEFORE_V22 else store.VERSION)).lstrip("v")
# what `lima-version` holds for instances this limactl creates (v2.1 tarballs keep the "v")
LIMA_VERSION_FILE = ("v" + VERSION) if BEFORE_V22 else VERSION
RUN_FILES = ("ga.sock", "ha.pid", "ha.sock", "qemu.pid", "qmp.sock", "serial.sock", "serialv.sock", "ssh.sock")
SEED_TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "tests", "fixtures", "lima", "sandbox-template.yaml")


# ---------------------------------------------------------------------------- FAKE_LIMACTL_LOG, signals, pauses


def flog(rec):
    path = knob("LOG")
    if not path:
        return
    rec.setdefault("pid", os.getpid())
    rec["time"] = time.time()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def _on_signal(signum, _frame):
    ignored = signum == signal.SIGINT and knob_on("IGNORE_SIGINT")
    flog({"event": "signal", "signal": signal.Signals(signum).name, "ignored": ignored})
    if ignored:
        return
    code = knob("SIGNAL_EXIT")
    if code:
        try:
            sys.stderr.flush()
        except OSError:
            pass
        os._exit(int(code))
    # like a Go program without signal.Notify: die from the signal itself
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def sleep_for(seconds):
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 3600))


def delay_of(cmd):
    v = knob("DELAY_" + cmd.upper().replace("-", "_"))
    try:
        return max(0.0, float(v)) if v else 0.0
    except ValueError as e:
        raise Fatal(f"fake-limactl: FAKE_LIMACTL_DELAY_{cmd.upper()}={v} is not a number of seconds") from e


def hangs(cmd):
    return cmd in [x.strip().lower() for x in knob("HANG").split(",")]


def hang_forever(cmd):
    flog({"event": "hang", "command": cmd})
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------- fake-state.json


def read_state(d):
    try:
        with open(os.path.join(d, "fake-state.json")) as f:
            st = json.load(f)
        return st if isinstance(st, dict) else {}
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:
        return {}


def write_state(d, st):
    """Atomic replace; refreshes the parsed lima.yaml kept for `list` (keyed by mtime and size)."""
    try:
        key = _yaml_key(os.path.join(d, "lima.yaml"))
        if (st.get("cache") or {}).get("key") != key:
            st["cache"] = {"key": key, "yaml": store.read_yaml_file(os.path.join(d, "lima.yaml"))}
    except (OSError, ValueError):
        st.pop("cache", None)
    tmp = os.path.join(d, ".fake-state.json.%d" % os.getpid())
    with open(tmp, "w") as f:
        f.write(json.dumps(st, indent=1) + "\n")
    os.replace(tmp, os.path.join(d, "fake-state.json"))


def _yaml_key(path):
    sb = os.stat(path)
    return [sb.st_mtime_ns, sb.st_size]


def update_state(d, **changes):
    st = read_state(d)
    if st is not None:
        st.update(changes)
        for k in [k for k, v in st.items() if v is None]:
            del st[k]
        write_state(d, st)


def read_pidfile(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_file(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


# ---------------------------------------------------------------------------- the host agent, played


def ha_event(d, status, truncate=False):
    with open(os.path.join(d, "ha.stdout.log"), "w" if truncate else "a") as f:
        f.write(logrus.go_json({"time": logrus.rfc3339nano(), "status": status}) + "\n")


def ha_log(d, msg, level="info", propagate=True):
    """A line in ha.stderr.log (logrus JSON), and `[hostagent] msg` on stderr as `start` shows it."""
    with open(os.path.join(d, "ha.stderr.log"), "a") as f:
        f.write(logrus.format_line(level, msg, fmt="json") + "\n")
    if propagate and level not in ("debug", "trace"):
        if level in ("fatal", "panic"):
            logrus.error("[hostagent] " + msg, **{"fields.level": level})
        else:
            logrus.log(level, "[hostagent] " + msg)


def requirements(cfg):
    """The host agent's requirement descriptions for this config: (plain, essential, optional)."""
    plain = cfg.get("plain") is True
    if plain:
        essential = ["ssh", "Explicitly start ssh ControlMaster"]
    elif cfg.get("mounts") and cfg.get("mountType") == "reverse-sshfs":
        essential = ["ssh", "user session is ready for ssh", "sshfs binary to be installed",
                     'fuse to "allow_other" as user' if BEFORE_V22 else "fuse to allow_other as user"]
    else:
        essential = ["ssh", "user session is ready for ssh", "Explicitly start ssh ControlMaster"]
    optional = []
    cd = cfg.get("containerd") or {}
    if not plain and (cd.get("system") or cd.get("user")):
        optional += [("systemd must be available", None), ("containerd binaries to be installed", None)]
    probes = cfg.get("probes") or []
    for i, p in enumerate(probes):
        optional.append((str(p.get("description") or f"user probe {i + 1}/{len(probes)}"), p))
    return plain, essential, optional


def choose_port(inst):
    if knob("SSH_PORT"):
        return int(knob("SSH_PORT"))
    return int(inst.config["ssh"]["localPort"]) or 30000 + int.from_bytes(os.urandom(2), "little") % 30000


def download_lines(inst, pause_points):
    cfg = inst.config
    img = next((i for i in cfg["images"] if i.get("arch", cfg["arch"]) == cfg["arch"]), cfg["images"][0])
    loc = str(img.get("location", ""))
    logrus.info("Attempting to download the image", arch=str(img.get("arch", cfg["arch"])),
                digest=str(img.get("digest", "")), location=loc)
    if knob_on("CREATE_DOWNLOAD_FAIL"):
        raise Fatal(f"failed to download {q(loc)}: expected HTTP status 200, got 404 Not Found")
    for p in pause_points:
        NoVMDriver.pause_point(p)
    if loc.startswith(("/", "file://")):
        logrus.info(f"Downloaded the image from {q(loc)}")
    else:
        import hashlib
        cache = ENV.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        sha = hashlib.sha256(loc.encode()).hexdigest()
        logrus.info(f"Using cache {q(os.path.join(cache, 'lima', 'download', 'by-url-sha256', sha, 'data'))}")
    logrus.info(f"Resize instance {inst.name}'s disk from 3.5GiB to {units.bytes_size(units.ram_in_bytes(cfg['disk']))}")
    write_file(inst.path("disk"), "")


def exiting_fatal(d):
    return Fatal(f"exiting, status={lifecycle.go_status({'exiting': True})} (hint: see {q(os.path.join(d, 'ha.stderr.log'))})")


def degraded_error(i, n, desc, probe):
    script = str((probe or {}).get("script") or "")
    last = [x for x in script.strip().split("\n") if x.strip()][-1:]
    stderr = f"+ {last[0].strip()}\n" if last else ""
    hint = str((probe or {}).get("hint") or "")
    return (f"failed to satisfy the optional requirement {i} of {n} {q(desc)}: {hint}{': ' if hint else ''}"
            f"stdout={q('')}, stderr={q(stderr)}: failed to execute script {go_quote(desc)}: "
            f"stdout={go_quote('')}, stderr={go_quote(stderr)}: exit status 1")


class NoVMDriver:
    description = "fake-limactl"

    @staticmethod
    def version():
        return VERSION

    @staticmethod
    def lima_version_file():
        return LIMA_VERSION_FILE

    @staticmethod
    def commands():
        return {"_seed": cmd_seed}

    # ------------------------------------------------------------------ knobs
    @staticmethod
    def info_extra():
        # No VM, no network boundary: machineEgress is not advertised, unless a test asks the fake
        # to claim it (to see machine start and stop its egress proxies; nothing is enforced).
        return {"machineEgress": True} if os.environ.get("FAKE_LIMACTL_MACHINE_EGRESS") == "1" else {}

    @staticmethod
    def fail_point(cmd, name=None):
        """FAKE_LIMACTL_FAIL_<CMD> (after DELAY_<CMD>), limited by FAIL_<CMD>_ONLY to some names."""
        key = "FAIL_" + cmd.upper().replace("-", "_")
        msg, only = knob(key), knob(key + "_ONLY")
        if not msg or (only and name not in [x.strip() for x in only.split(",")]):
            return
        sleep_for(delay_of(cmd))
        raise Fatal(msg)

    @staticmethod
    def pause_point(cmd):
        """Where the command is slow in real life: DELAY_<CMD>, then HANG."""
        sleep_for(delay_of(cmd))
        if hangs(cmd):
            hang_forever(cmd)

    @staticmethod
    def malformed_list(recs):
        mal = knob("MALFORMED_LIST")
        if mal in ("", "0"):
            return None
        if mal == "pretty":
            return "".join(json.dumps(r, indent=4, ensure_ascii=False) + "\n" for r in recs)
        if mal == "array":
            return json.dumps(recs, separators=(",", ":"), ensure_ascii=False) + "\n"
        lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in recs] or ['{"name":"x"}']
        lines[0] = lines[0][: max(1, len(lines[0]) // 2)]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ store
    @staticmethod
    def load_yaml(path):
        """lima.yaml, parsed: from fake-state.json's cache when lima.yaml has not changed since
        (`list` over many instances must stay fast), else parsed now."""
        key = _yaml_key(path)
        cache = (read_state(os.path.dirname(path)) or {}).get("cache") or {}
        if cache.get("key") == key and "yaml" in cache:
            return cache["yaml"]
        return store.read_yaml_file(path)

    @staticmethod
    def inspect(inst):
        """The status is fake-state.json's; without one (a directory a test built), the pid files'."""
        st = read_state(inst.dir)
        ha_pid, qemu_pid = read_pidfile(inst.path("ha.pid")), read_pidfile(inst.path("qemu.pid"))
        if st is None:
            inst.set_status(ha_pid, qemu_pid)
            return
        inst.status = st.get("status") or "Stopped"
        if inst.status in ("Running", "Broken"):
            inst.ha_pid = int(st.get("hostAgentPID") or 0) or ha_pid or None
            inst.qemu_pid = int(st.get("driverPID") or 0) or qemu_pid or None
        if inst.status == "Broken":
            errors = [str(e) for e in (st.get("errors") or [])]
            inst.errors += errors
            inst.json_errors += [{} for _ in errors]
        if st.get("autoStartedIdentifier"):
            inst.extra["autoStartedIdentifier"] = st["autoStartedIdentifier"]

    @staticmethod
    def created(inst_dir):
        write_state(inst_dir, {"status": "Stopped", "createdAt": logrus.rfc3339nano()})
        write_file(os.path.join(inst_dir, "cloud-config.yaml"), "#cloud-config\n# fake-limactl placeholder\n")

    @staticmethod
    def ensure_identity():
        """Placeholders where Lima keeps its key pair (a test may put a real key there)."""
        key = store.identity_file()
        try:
            os.makedirs(os.path.dirname(key), exist_ok=True)
            if not os.path.exists(key):
                write_file(key, "-----BEGIN OPENSSH PRIVATE KEY-----\nfake-limactl placeholder, not a key\n"
                                "-----END OPENSSH PRIVATE KEY-----\n", 0o600)
                write_file(key + ".pub", "ssh-ed25519 AAAAfake-limactl-placeholder lima\n", 0o644)
        except OSError:
            pass

    @staticmethod
    def prepare_disk(inst, pause_points=("download",)):
        download_lines(inst, pause_points)

    @staticmethod
    def clone_into(inst, tmp):
        def copy_tree(src, dst, top):
            for e in os.listdir(src):
                if top and (e in ("protected", "swtpm") or e.startswith(".fake-state.json.")
                            or e.endswith((".pid", ".sock", ".tmp"))):
                    continue
                s, t = os.path.join(src, e), os.path.join(dst, e)
                if os.path.islink(s):
                    os.symlink(os.readlink(s), t)
                elif os.path.isdir(s):
                    os.mkdir(t, 0o755)
                    copy_tree(s, t, False)
                elif e == "vz-identifier":
                    write_file(t, "")
                else:
                    shutil.copyfile(s, t)
                    os.chmod(t, os.stat(s).st_mode & 0o777)
        copy_tree(inst.dir, tmp, True)
        update_state(tmp, status="Stopped", bootId=None, clonedFrom=inst.name)

    @staticmethod
    def deleted():
        pass

    # ------------------------------------------------------------------ start
    @staticmethod
    def boot(inst, timeout, print_ready):
        d, name, cfg = inst.dir, inst.name, inst.config
        if not os.path.exists(inst.path("disk")):
            download_lines(inst, ("download",))
        for log in ("ha.stdout.log", "ha.stderr.log"):  # the host agent truncates both
            open(os.path.join(d, log), "w").close()
        from .portfwd import all_tcp_ignored
        if cfg.get("plain") or all_tcp_ignored(cfg.get("portForwards")):
            ha_log(d, "TCP (except for SSH) and UDP port forwarding is disabled")
        ha_log(d, f"hostagent socket created at {inst.path('ha.sock')}")
        if knob_on("START_EXIT_EVENT"):
            ha_log(d, f'exec: "qemu-system-{cfg["arch"]}": executable file not found in $PATH', level="fatal")
            ha_event(d, {"exiting": True})
            raise exiting_fatal(d)
        port = choose_port(inst)
        boot_id = os.urandom(8).hex()
        ha_pid = 20000 + int.from_bytes(os.urandom(2), "little") % 9000
        st = read_state(d) or {}
        st.update({"status": "Running", "sshLocalPort": port, "hostAgentPID": ha_pid, "driverPID": ha_pid + 7,
                   "bootId": boot_id, "startedAt": logrus.rfc3339nano(), "limactlPID": os.getpid()})
        st.pop("errors", None)
        for f in RUN_FILES:
            write_file(os.path.join(d, f), f"{ha_pid if f == 'ha.pid' else ha_pid + 7}\n" if f.endswith(".pid") else "")
        for f in ("serial.log", "serialv.log", "cidata.iso"):
            write_file(os.path.join(d, f), "")
        sshutil.write_ssh_config(name, d, cfg, port)
        write_state(d, st)
        ha_event(d, {"sshLocalPort": port}, truncate=True)
        ha_log(d, f"Starting QEMU (hint: to watch the boot progress, see {q(os.path.join(d, 'serial*.log'))})")
        logrus.info(f"SSH Local Port: {port}")
        plain, essential, optional = requirements(cfg)
        ne = len(essential)
        ha_log(d, f"Waiting for the essential requirement 1 of {ne}: {q(essential[0])}")
        if knob_on("SPAWN_CHILD"):
            secs = knob("SPAWN_CHILD_SECONDS", "1000")
            child = os.posix_spawnp("sleep", ["sleep", secs], dict(ENV), setsigdef=(signal.SIGPIPE,))
            flog({"event": "spawn", "grandchild_pid": child, "argv": ["sleep", secs]})
            st["spawnedPids"] = st.get("spawnedPids", []) + [child]
            write_state(d, st)
        # the boot itself: this is where time passes
        delay = delay_of("start")
        if knob_on("START_TIMEOUT") or delay > timeout:
            sleep_for(min(delay, timeout))
            raise Fatal(f"did not receive an event with the {q('running')} status")
        sleep_for(delay)
        if hangs("start"):
            hang_forever("start")
        now = read_state(d)
        if not now or now.get("bootId") != boot_id or now.get("status") != "Running":
            raise exiting_fatal(d)  # stopped, deleted or restarted under us
        ha_log(d, f"The essential requirement 1 of {ne} is satisfied")
        for i in range(2, ne + 1):
            ha_log(d, f"Waiting for the essential requirement {i} of {ne}: {q(essential[i - 1])}")
            ha_log(d, f"The essential requirement {i} of {ne} is satisfied")
        is_degraded = knob_on("START_DEGRADED")
        if is_degraded and not optional:
            optional = [("user probe 1/1", None)]
        guest_agent_lines = ["Guest agent is running", "Time sync: guest agent is alive, starting time synchronization"]
        errors = []
        no = len(optional)
        for i, (desc, probe) in enumerate(optional, 1):
            ha_log(d, f"Waiting for the optional requirement {i} of {no}: {q(desc)}")
            if i == 1 and not plain:
                for line in guest_agent_lines:
                    ha_log(d, line)
            if is_degraded and i == no:
                errors.append(degraded_error(i, no, desc, probe))
                ha_log(d, errors[-1], level="debug", propagate=False)
            else:
                ha_log(d, f"The optional requirement {i} of {no} is satisfied")
        if not optional and not plain:
            for line in guest_agent_lines:
                ha_log(d, line)
        if not plain:
            ha_log(d, "Waiting for the guest agent to be running")
        ha_log(d, f"Waiting for the final requirement 1 of 1: {q('boot scripts must have finished')}")
        ha_log(d, "The final requirement 1 of 1 is satisfied")
        if is_degraded:
            st = {"running": True, "degraded": True, "errors": errors, "sshLocalPort": port}
            ha_event(d, st)
            lifecycle.degraded(inst, st)
        ha_event(d, {"running": True, "sshLocalPort": port})
        if print_ready:
            logrus.info(lifecycle.ready_message(inst))
        return 0

    # ------------------------------------------------------------------ stop
    @staticmethod
    def kill(inst):
        pass  # made-up PIDs: never signalled

    @staticmethod
    def stopped(inst):
        update_state(inst.dir, status="Stopped", errors=None, bootId=None)

    @staticmethod
    def shut_down(inst):
        NoVMDriver.pause_point("stop")
        d = inst.dir
        if not os.path.isdir(d):
            raise Fatal(f"did not receive an event with the {q('exiting')} status")
        for m in ("Received SIGINT, shutting down the host agent", "Shutting down the host agent",
                  "Shutting down QEMU with the power button", "Sending QMP system_powerdown command", "QEMU has exited"):
            ha_log(d, m)
        ha_event(d, {"exiting": True})
        for f in os.listdir(d):
            if f.endswith((".pid", ".sock", ".tmp")):
                try:
                    os.remove(os.path.join(d, f))
                except OSError:
                    pass
        update_state(d, status="Stopped", bootId=None)

    @staticmethod
    def wait_stopped(inst):
        pass

    # ------------------------------------------------------------------ shell / copy: on this host
    @staticmethod
    def snapshot(inst, op, tag):
        """Tags kept in fake-state.json; the table and Lima's quirks as the QEMU driver's (an
        unknown tag on a stopped instance: `exit status 1`; on a running one: a warning)."""
        from . import snapshot as snap
        st = read_state(inst.dir) or {}
        snaps = st.get("snapshots") or []
        running = inst.status == "Running"
        if running:
            logrus.info("Sending HMP %s command" % {"create": "savevm", "apply": "loadvm", "delete": "delvm",
                                                    "list": "info"}[op])
        if op == "list":
            if not snaps:
                return ""
            rows = [snap.table_header()] + [snap.table_row(i + 1, s["tag"], "0 B", s["date"])
                                            for i, s in enumerate(snaps)]
            return "\n".join(rows) + "\n"
        known = [s for s in snaps if s["tag"] == tag]
        if op == "create":
            snaps = [s for s in snaps if s["tag"] != tag] + [{"tag": tag, "date": time.strftime("%Y-%m-%d %H:%M:%S")}]
        elif not known:
            if running:
                logrus.warning(f"output: Error: Snapshot '{tag}' does not exist in one or more devices")
                return ""
            raise Fatal("exit status 1")
        elif op == "delete":
            snaps = [s for s in snaps if s["tag"] != tag]
        else:
            st["applied"] = st.get("applied", []) + [tag]
        st["snapshots"] = snaps
        write_state(inst.dir, st)
        flog({"event": "snapshot", "op": op, "name": inst.name, "tag": tag, "running": running})
        return ""

    @staticmethod
    def shell(inst, v, cmd, only_assignments=False):
        if inst.status != "Running":
            logrus.write_line(f"ssh: connect to host 127.0.0.1 port {inst.ssh_port or 0}: Connection refused")
            raise Exit(255)
        wd = v.get("workdir")
        if wd:
            try:
                os.chdir(wd)
            except OSError as e:
                reason = {2: "No such file or directory", 20: "Not a directory", 13: "Permission denied"}.get(
                    e.errno, e.strerror)
                logrus.write_line(f"bash: line 1: cd: {wd}: {reason}")
                raise Exit(1) from e
        env = dict(ENV)
        env.setdefault("LIMA_INSTANCE", inst.name)
        while cmd and "=" in cmd[0] and cmd[0].split("=", 1)[0].isidentifier():
            k, val = cmd[0].split("=", 1)
            env[k] = val
            cmd = cmd[1:]
        if not cmd:
            if only_assignments:
                raise Exit(0)  # only assignments: bash runs nothing
            cmd = [knob("SHELL") or "/bin/sh"]
        flog({"event": "exec", "argv": cmd, "cwd": os.getcwd()})
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            pass
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores SIGPIPE; the command must not inherit that
        try:
            os.execvpe(cmd[0], cmd, env)
        except FileNotFoundError as e:
            logrus.write_line(f"bash: line 1: {cmd[0]}: command not found")
            raise Exit(127) from e
        except PermissionError as e:
            logrus.write_line(f"bash: line 1: {cmd[0]}: Permission denied")
            raise Exit(126) from e

    @staticmethod
    def copy(v, paths):
        *srcs, dst = [p for _inst, p in paths]
        try:
            for s in srcs:
                if os.path.isdir(s):
                    if not v.get("recursive"):
                        logrus.write_line(f"scp: {s}: not a regular file")
                        raise Exit(1)
                    shutil.copytree(s, os.path.join(dst, os.path.basename(s)) if os.path.isdir(dst) else dst,
                                    dirs_exist_ok=True)
                else:
                    shutil.copy(s, dst)
        except OSError as e:
            logrus.write_line(f"scp: {e.filename}: {e.strerror}")
            raise Exit(1) from e
        return 0


def cmd_seed(argv, _g):
    """`_seed N [--running K] [--prefix P] [--template FILE]`: N instances, fast and silent."""
    v, pos = parse_flags(argv, {"running": "str", "prefix": "str", "template": "str"})
    n = int(pos[0]) if pos else 10
    running = int(v.get("running", n // 2))
    prefix = v.get("prefix", "seed")
    with open(v.get("template") or SEED_TEMPLATE) as f:
        text = f.read()
    os.makedirs(store.lima_home(), exist_ok=True)
    NoVMDriver.ensure_identity()
    width = max(3, len(str(n)))
    for i in range(n):
        name = "%s%0*d" % (prefix, width, i)
        d = store.instance_dir(name)
        os.makedirs(d, exist_ok=True)
        write_file(os.path.join(d, "lima.yaml"), text)
        write_file(os.path.join(d, "lima-version"), LIMA_VERSION_FILE + "\n")
        write_file(os.path.join(d, "disk"), "")
        port = 40000 + i
        st = {"status": "Stopped", "createdAt": logrus.rfc3339nano()}
        if i < running:
            st.update({"status": "Running", "sshLocalPort": port, "hostAgentPID": 20000 + i, "driverPID": 30000 + i,
                       "bootId": "seed"})
            for f in RUN_FILES:
                write_file(os.path.join(d, f), f"{20000 + i if f == 'ha.pid' else 30000 + i}\n" if f.endswith(".pid") else "")
            ha_event(d, {"sshLocalPort": port}, truncate=True)
            ha_event(d, {"running": True, "sshLocalPort": port})
        write_state(d, st)
        sshutil.write_ssh_config(name, d, store.Instance(name).config, port)
        sys.stdout.write(name + "\n")
    return 0


def run(argv):
    """The fake's main: FAKE_LIMACTL_LOG records around the shared CLI."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    driver.use(NoVMDriver())
    logrus.configure(before_v22=BEFORE_V22)
    flog({"event": "invoke", "argv": argv, "prog": sys.argv[0], "ppid": os.getppid(), "pgid": os.getpgid(0),
          "cwd": os.getcwd(), "lima_home": store.lima_home()})
    if knob_on("SIMULATE_ROOT"):
        logrus.write_line("limactl: must not run as the root user")
        code = 1
    else:
        try:
            code = cli.main(argv)
        except BrokenPipeError:
            code = 1
    try:
        sys.stdout.flush()
    except OSError:
        code = code or 1
    flog({"event": "exit", "code": code})
    return code
