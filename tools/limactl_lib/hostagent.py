"""The host agent: one detached process per running instance (`limactl hostagent NAME`).

stdout is `<dir>/ha.stdout.log` (JSON-lines events), stderr is `<dir>/ha.stderr.log` (logrus
JSON at debug level). It runs QEMU as its child (inside the network boundary, netns.py, when the
config has `machineEgress`), waits for the guest's readiness requirements
over SSH, emits the `running` event, forwards guest ports, and on SIGINT/SIGTERM powers the
guest down (QMP system_powerdown, SIGKILL after a grace period) and emits `exiting`.
"""
import contextlib
import ctypes
import errno
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from . import cidata, image, logrus, netns, portfwd, qemu, sshutil, store

REQUIREMENT_RETRIES = int(os.environ.get("LIMACTL_REQUIREMENT_RETRIES", "200"))
# An emulated guest of another arch (aarch64 on x86_64 under TCG) boots several times slower.
FOREIGN_ARCH_RETRY_FACTOR = 5
# Lima retries every 3 s; 1 s gets the `running` event out sooner (checks are cheap ssh logins)
REQUIREMENT_INTERVAL = 1.0
SHUTDOWN_GRACE = float(os.environ.get("LIMACTL_SHUTDOWN_TIMEOUT", "180"))


class PortTaken(RuntimeError):
    pass


def instance_id(inst_dir):
    """A random id per instance (a clone gets a new one): drives the guest's identity reset."""
    path = os.path.join(inst_dir, "instance-id")
    with contextlib.suppress(OSError):
        with open(path) as f:
            iid = f.read().strip()
            if iid:
                return iid
    iid = str(uuid.uuid4())
    with open(path, "w") as f:
        f.write(iid + "\n")
    return iid


def _die_with_parent():
    """In the QEMU child: get SIGKILL when the host agent dies (even by SIGKILL), so a crashed
    host agent cannot leave a VM running that nothing manages any more."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_capture(argv, stdin_text=None, timeout=60):
    """Run a command with stdout/stderr in temp files (never pipes: an ssh ControlMaster that
    forks into the background must not keep our pipe open). Returns (rc, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            rc = subprocess.run(argv, input=stdin_text.encode() if stdin_text is not None else None,
                                stdin=None if stdin_text is not None else subprocess.DEVNULL,
                                stdout=out, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def _interpreter(script):
    first = script.splitlines()[0] if script else ""
    if first.startswith("#!"):
        return first[2:].strip().split()
    return ["/bin/sh"]


class HostAgent:
    def __init__(self, name, pidfile, sockpath):
        self.name = name
        self.inst = store.Instance(name)
        if self.inst.config is None:
            raise RuntimeError("; ".join(self.inst.errors) or "cannot load the instance")
        self.cfg = self.inst.config
        self.dir = self.inst.dir
        self.pidfile = pidfile
        self.sockpath = sockpath
        self.status = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.stop_signal = None
        self.qemu = None
        self.port = None
        self.iid = None
        self.forwarder = None

    # -- output --------------------------------------------------------------------------
    def log(self, level, msg, **fields):
        if level == "debug" or logrus.enabled(level):
            line = logrus.format_line(level, msg, fields, fmt="json")
            with self.lock:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()

    def emit(self, **changes):
        """Emit one event; `portForward` is per event, the rest is the sticky status."""
        with self.lock:
            pf = changes.pop("portForward", None)
            self.status.update(changes)
            st = {}
            for key in ("running", "degraded", "exiting", "errors", "sshLocalPort"):
                if self.status.get(key):
                    st[key] = self.status[key]
            if pf:
                st["portForward"] = pf
            sys.stdout.write(logrus.go_json({"time": logrus.rfc3339nano(), "status": st}) + "\n")
            sys.stdout.flush()
            # marks the event's place among the log lines (see logrus.EVENT_MARK)
            sys.stderr.write(logrus.format_line("debug", logrus.EVENT_MARK, fmt="json") + "\n")
            sys.stderr.flush()

    # -- lifecycle -----------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        self.stop_event.set()

    def run(self):
        with open(self.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        rc = 0
        try:
            rc = self._run()
        except Exception as e:  # report anything unexpected where limactl start looks
            self.log("fatal", str(e))
            self.emit(exiting=True, running=False, degraded=False, errors=None, sshLocalPort=None)
            rc = 1
        finally:
            self._cleanup()
        return rc

    def _run(self):
        self.port = int(self.cfg["ssh"]["localPort"]) or free_port()
        if portfwd.all_tcp_ignored(self.cfg.get("portForwards")):
            self.log("info", "TCP (except for SSH) and UDP port forwarding is disabled")
        self._start_info_server()
        self.log("info", f"hostagent socket created at {self.sockpath}")
        if not os.path.exists(os.path.join(self.dir, "disk")):
            image.prepare_disk(self.name, self.dir, self.cfg)
        accel, reason = qemu.choose_accel(os.path.join(self.dir, "kernel"), self.cfg.get("arch"))
        if accel == "tcg":
            self.log("warning", "/dev/kvm is not available. Disabling KVM. Expect very poor performance.")
            self.log("info", f"Using QEMU TCG software emulation ({reason})")
        else:
            self.log("info", f"Using KVM acceleration ({reason})")
        self.iid = instance_id(self.dir)
        sshutil.ensure_user_key()
        cidata.build(self.dir, self.name, self.cfg, self.iid)
        sshutil.write_ssh_config(self.name, self.dir, self.cfg, self.port)
        if self.stop_event.is_set():
            self.emit(exiting=True, sshLocalPort=None)
            return 0
        self._resume_or_boot(accel)
        self.emit(sshLocalPort=self.port)
        boot = threading.Thread(target=self._boot, daemon=True, name="boot")
        boot.start()
        while not self.stop_event.is_set() and self.qemu.poll() is None:
            self.stop_event.wait(0.5)
        if self.stop_event.is_set():
            self.log("info", f"Received {self.stop_signal or 'SIGINT'}, shutting down the host agent")
            self.log("info", "Shutting down the host agent")
            self._shutdown_guest()
        else:
            self.log("warning" if self.qemu.returncode == 0 else "error",
                     f"QEMU exited with status {self.qemu.returncode}")
            self.stop_event.set()
        self._stop_ssh_master()
        self.log("info", "QEMU has exited")
        self.emit(exiting=True, running=False, degraded=False, errors=None, sshLocalPort=None)
        return 0

    def _kernel_cmdline(self):
        # panic=1: a kernel that panics reboots after a second (QEMU resets the VM) instead of
        # hanging until the start times out. Under TCG, QEMU before 8.1 (Debian 12 has 7.2) races
        # with a guest patching its own code on another vCPU ("accel/tcg: Always lock pages before
        # translation"): Debian 13's kernel 6.12 sometimes dies at boot with "Oops: int3" in
        # hrtimer_start_range_ns; the next boot goes through.
        parts = ["root=/dev/vda", "rw", "console=" + qemu.console(self.cfg.get("arch")), "loglevel=4", "panic=1",
                 f"systemd.machine_id={cidata.machine_id(self.iid)}",
                 f"systemd.hostname={store.hostname_for(self.name)}"]
        extra = os.path.join(self.dir, "kernel.cmdline")
        if os.path.exists(extra):
            with open(extra) as f:
                parts.append(f.read().strip())
        return " ".join(parts)

    def _resume_or_boot(self, accel):
        """With a saved state (`limactl hibernate`): QEMU loads it instead of booting; a state
        that cannot be loaded is dropped and the instance boots cold (the disk is as the guest
        left it when it was saved). hibernate.outcome says which, for whoever started us."""
        from . import hibernate
        state = hibernate.paths(self.dir)[0]
        if not os.path.exists(state):
            return self._start_qemu_with_retries(accel)
        t0 = time.monotonic()
        problem = hibernate.check(self.dir)
        if problem is None:
            self.log("info", "Resuming from the saved state (hibernate.state) instead of booting")
            self._start_qemu_with_retries(accel, incoming=True)
            problem = hibernate.load(self.dir, self.qemu)
            if problem is None:
                took = time.monotonic() - t0
                hibernate.discard(self.dir)  # the guest moves on: the state is history now
                hibernate.record_outcome(self.dir, True, took)
                self.log("info", f"Resumed from hibernation in {took:.1f}s")
                return None
            # QEMU exits when it refuses a state: its own words say why better than the monitor's EOF
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(timeout=5)
            if self.qemu.poll() is not None:
                with contextlib.suppress(OSError):
                    with open(os.path.join(self.dir, "qemu.stderr.log"), errors="replace") as f:
                        said = [line.strip() for line in f.read()[-4096:].splitlines() if line.strip()]
                    if said:
                        problem = f"QEMU refused it: {said[-1][:300]}"
            else:
                self.qemu.kill()
            self.qemu.wait()
        self.log("warning", f"Not resuming from the saved state: {problem}; booting instead")
        hibernate.discard(self.dir)
        hibernate.record_outcome(self.dir, False, reason=problem)
        return self._start_qemu_with_retries(accel)

    def _start_qemu_with_retries(self, accel, incoming=False):
        """A random free port can be taken by someone else before QEMU binds it: retry."""
        for attempt in range(3):
            try:
                return self._start_qemu(accel, incoming)
            except PortTaken:
                if attempt == 2 or int(self.cfg["ssh"]["localPort"]):
                    raise
                self.log("warning", f"SSH port {self.port} was taken before QEMU could use it; retrying")
                self.port = free_port()
                sshutil.write_ssh_config(self.name, self.dir, self.cfg, self.port)

    def _start_qemu(self, accel, incoming=False):
        mounts = cidata.guest_mounts(self.cfg)
        for m in mounts:
            if not os.path.isdir(m["location"]):
                self.log("warning", f"mount location `{m['location']}` does not exist; creating it")
                os.makedirs(m["location"], exist_ok=True)
        if not os.path.exists(os.path.join(self.dir, "kernel")):
            self.log("warning", "no kernel for this image (images[].kernel, or vmlinuz next to the disk): "
                                "booting the disk through the BIOS, which the stand-in's images cannot do")
        problem = store.machine_egress_problem(self.cfg.get("machineEgress"))  # lima.yaml edited by hand
        if problem:
            raise RuntimeError(problem)
        egress = (self.cfg.get("machineEgress") or {}).get("socket")
        ssh_listener = self._bind_ssh_port() if egress else None
        argv = qemu.build_argv(self.name, self.dir, self.cfg, accel,
                               netns.SSH_INNER_PORT if egress else self.port, self._kernel_cmdline(), mounts,
                               boundary=bool(egress))
        if incoming:
            argv += ["-incoming", "defer"]
        if egress:
            if not os.path.exists(egress):
                self.log("warning", f"the egress socket {egress} does not exist (yet): "
                                    "the guest's connections fail until it does")
            argv = [sys.executable, "-SE", netns.__file__, "--egress-socket", egress,
                    "--ssh-fd", str(ssh_listener.fileno()), "--ssh-inner-port", str(netns.SSH_INNER_PORT),
                    "--", *argv]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, "serial.log"))
        self.log("info", f"Starting QEMU (hint: to watch the boot progress, see `{os.path.join(self.dir, 'serial*.log')}`)")
        self.log("debug", "qemu argv: " + " ".join(argv))
        qemu_log = open(os.path.join(self.dir, "qemu.stderr.log"), "w")
        try:
            # with the boundary, self.qemu is the boundary: it exits with QEMU's status, and
            # QEMU dies with it (so kill() and wait() mean the same); QMP and qemu.pid are QEMU's
            self.qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log,
                                         preexec_fn=_die_with_parent,
                                         pass_fds=(ssh_listener.fileno(),) if ssh_listener else ())
        finally:
            qemu_log.close()
            if ssh_listener:
                ssh_listener.close()  # the boundary has its own copy
        # wait for QEMU's pidfile and QMP socket (or its early death, e.g. a taken port)
        for _ in range(100):
            if self.qemu.poll() is not None:
                with open(os.path.join(self.dir, "qemu.stderr.log")) as f:
                    err = f.read().strip()
                if "hostfwd" in err or "host forwarding rule" in err:
                    raise PortTaken(err)
                raise RuntimeError(f"QEMU failed to start: exit status {self.qemu.returncode}: {err}")
            if os.path.exists(os.path.join(self.dir, "qemu.pid")) and os.path.exists(os.path.join(self.dir, "qmp.sock")):
                break
            time.sleep(0.1)

    def _bind_ssh_port(self):
        """The host's SSH port, bound here for the network boundary (which accepts on it and
        relays into the namespace), so a taken port is found before anything starts."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise PortTaken(f"could not set up host forwarding rule 'tcp:127.0.0.1:{self.port}-:22'") from e
            raise
        return sock

    def _shutdown_guest(self):
        self.log("info", "Shutting down QEMU with the power button")
        deadline = time.monotonic() + SHUTDOWN_GRACE
        presses = 0
        while time.monotonic() < deadline:
            # A press before systemd-logind runs (stop during boot) is lost: press again
            # every 10 s until the guest powers off or the grace period is over.
            if presses == 0:
                self.log("info", "Sending QMP system_powerdown command")
            else:
                self.log("debug", "Sending QMP system_powerdown command again")
            presses += 1
            try:
                q = qemu.QMP(os.path.join(self.dir, "qmp.sock"))
                q.execute("system_powerdown")
                q.close()
            except (OSError, RuntimeError, ValueError) as e:
                self.log("warning", f"failed to send system_powerdown: {e}")
            try:
                self.qemu.wait(timeout=max(0.1, min(10.0, deadline - time.monotonic())))
                return
            except subprocess.TimeoutExpired:
                continue
        self.log("warning", f"QEMU did not exit in {SHUTDOWN_GRACE:g}s after ACPI shutdown, sending SIGKILL")
        self.qemu.kill()
        self.qemu.wait()

    def _stop_ssh_master(self):
        if self.forwarder:
            self.forwarder.stop_event.set()
        self.log("debug", "shutting down the SSH master")
        argv, host = sshutil.ssh_base_argv(self.dir, self.name)
        if os.path.exists(os.path.join(self.dir, "ssh.sock")):
            run_capture(argv + ["-O", "exit", host], timeout=10)

    def _cleanup(self):
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()
        for f in ("ha.sock", "qmp.sock", "serial.sock", "qemu.pid", "ssh.sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, f))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)

    # -- ha.sock ---------------------------------------------------------------------------
    def _start_info_server(self):
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path.rstrip("/") == "/v1/info":
                    body = json.dumps({"sshLocalPort": agent.port}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    body = b"404 page not found\n"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def address_string(self):
                return "unix"

            def log_message(self, *_args):
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sockpath)
        server = Server(self.sockpath, Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name="ha.sock").start()

    # -- readiness -------------------------------------------------------------------------
    def _master_ssh(self):
        """ssh through the instance's ControlMaster (ControlMaster=auto in ssh.config): the
        first successful check starts the master, later checks only open a channel on it,
        which under emulation is much cheaper than a full login each time."""
        argv, host = sshutil.ssh_base_argv(self.dir, self.name)
        return argv + ["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", host, "--"]

    def _requirements(self):
        iid = self.iid
        essential = [
            ("ssh", "#!/bin/bash\ntrue\n", self._master_ssh, ""),
            ("user session is ready for ssh",
             f'#!/bin/bash\ntest "$(cat /run/lima-ssh-ready 2>/dev/null)" = "{iid}"\n', self._master_ssh, ""),
            ("Explicitly start ssh ControlMaster", "#!/bin/bash\ntrue\n", self._master_ssh, ""),
        ]
        optional = []
        for i, p in enumerate(self.cfg.get("probes", [])):
            if p.get("mode", "readiness") != "readiness" or not p.get("script"):
                continue
            desc = p.get("description") or f"user probe {i + 1}/{len(self.cfg['probes'])}"
            optional.append((desc, cidata.render_template(p["script"], cidata._template_vars(self.name, self.cfg)),
                             self._master_ssh, p.get("hint", "")))
        final = [("boot scripts must have finished",
                  f'#!/bin/bash\ntest "$(cat /run/lima-boot-done 2>/dev/null)" = "{iid}"\n', self._master_ssh, "")]
        return [("essential", essential), ("optional", optional), ("final", final)]

    def _check(self, label, i, n, req):
        desc, script, argv_fn, hint = req
        self.log("info", f"Waiting for the {label} requirement {i} of {n}: `{desc}`")
        last = ""
        retries = REQUIREMENT_RETRIES
        if "LIMACTL_REQUIREMENT_RETRIES" not in os.environ and self.cfg.get("arch", qemu.host_arch()) != qemu.host_arch():
            retries *= FOREIGN_ARCH_RETRY_FACTOR
        for _ in range(retries):
            if self.stop_event.is_set():
                return "stopping"
            self.log("debug", f"executing script `{desc}`")
            rc, out, err = run_capture(argv_fn() + _interpreter(script), stdin_text=script, timeout=60)
            if rc == 0:
                self.log("info", f"The {label} requirement {i} of {n} is satisfied")
                return None
            last = (f"stdout={json.dumps(out)}, stderr={json.dumps(err)}, "
                    f"err=failed to execute script {json.dumps(desc)}: exit status {rc}")
            self.log("debug", last)
            self.stop_event.wait(REQUIREMENT_INTERVAL)
        prefix = f"failed to satisfy the {label} requirement {i} of {n} `{desc}`"
        return f"{prefix}: {hint}: {last}" if hint else f"{prefix}: {last}"

    def _boot(self):
        try:
            self._wait_ready()
        except Exception as e:  # a bug here must not leave `limactl start` waiting silently
            self.log("error", f"readiness checks failed: {e!r}")
            self.emit(running=True, degraded=True, errors=[f"host agent error: {e!r}"])

    def _wait_ready(self):
        errors = []
        for label, reqs in self._requirements():
            for i, req in enumerate(reqs, 1):
                err = self._check(label, i, len(reqs), req)
                if err == "stopping":
                    return
                if err:
                    errors.append(err)
                    if label == "essential":
                        break
                if label == "essential" and i == 3 and not err:
                    self._start_forwarder()
        if self.stop_event.is_set():
            return
        if errors:
            self.emit(running=True, degraded=True, errors=errors)
        else:
            self.emit(running=True)

    def _start_forwarder(self):
        rules = portfwd.default_rules(self.cfg.get("portForwards"))
        self.forwarder = portfwd.Forwarder(
            self.dir, self.name, rules,
            emit=lambda pf: self.emit(portForward=pf),
            log=lambda level, msg: self.log(level, msg),
            stop_event=threading.Event())
        self.forwarder.start()


def main(argv):
    """`limactl hostagent [--pidfile F] [--socket S] NAME` (internal)."""
    pidfile = sockpath = name = None
    it = iter(argv)
    for a in it:
        if a.startswith("--pidfile"):
            pidfile = a.split("=", 1)[1] if "=" in a else next(it)
        elif a.startswith("--socket"):
            sockpath = a.split("=", 1)[1] if "=" in a else next(it)
        elif not a.startswith("-"):
            name = a
    if not name:
        print("usage: limactl hostagent --pidfile FILE --socket SOCK NAME", file=sys.stderr)
        return 1
    d = store.instance_dir(name)
    agent = HostAgent(name, pidfile or os.path.join(d, "ha.pid"), sockpath or os.path.join(d, "ha.sock"))
    return agent.run()
