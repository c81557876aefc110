"""Shared parts of the hostile-guest suite (issue 13): a real OpenSSH sshd on 127.0.0.1, fake-limactl
VMs whose ssh.config leads to it, the real `machine` run with its peak RSS sampled, and a scripted
guest agent on a Unix socket speaking guest-agent/PROTOCOL.md, which a test subclasses to misbehave.

Everything runs as root in a private mount namespace (enter_namespace() re-executes the script
under `unshare -m --propagation private`), with a tmpfs over /run/machine-agent (or over /run when
that directory does not exist here): the host's real agent socket is never touched. Each guest's
sshd runs in a mount namespace of its own where /run/machine-agent is a bind of the guest's own
directory, so several scripted agents (one per VM) answer at the fixed path at the same time.

Python 3 standard library only. Processes are stopped by pid, never by name.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE_LIMACTL = os.path.join(ROOT, "tests", "fixtures", "fake-limactl")
FAKE_OP = os.path.join(ROOT, "tests", "fixtures", "fake-op")
AGENT_DIR = "/run/machine-agent"  # fixed in the product
NS_MARK = "MACHINE_HOSTILE_NS"
SUITE = "hostile"


# --- the suite's world -------------------------------------------------------------------------

def skip(reason, name=SUITE):
    print("SKIPPED: %s: %s" % (name, reason), flush=True)
    sys.exit(77)


def enter_namespace(name=SUITE):
    """Re-executes this script in a private mount namespace with a tmpfs over the agent's
    directory; returns (in the new namespace) once that is done. Skips (77) when it cannot."""
    if os.environ.get(NS_MARK) == str(os.getpid()):
        return
    if os.geteuid() != 0:
        skip("needs root (a private mount namespace, sshd on 127.0.0.1)", name)
    for tool in ("unshare", "mount"):
        if not shutil.which(tool):
            skip("%s is not installed" % tool, name)
    if not os.path.exists("/usr/sbin/sshd") or not shutil.which("ssh-keygen"):
        skip("OpenSSH server (/usr/sbin/sshd, ssh-keygen) is not installed", name)
    if os.environ.get(NS_MARK) is None:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
        if probe.returncode != 0:
            skip("unshare -m failed: %s" % probe.stderr.decode(errors="replace").strip(), name)
        # exec keeps the pid: the child recognises itself by it.
        env = dict(os.environ)
        env[NS_MARK] = str(os.getpid())
        script = (
            'set -e\n'
            'if [ -d "$1" ]; then mount -t tmpfs -o mode=0755,size=16m hostile "$1"\n'
            'else mount -t tmpfs -o mode=0755,size=16m hostile-run /run && mkdir -m 0755 /run/sshd "$1"; fi\n'
            'shift\nexec "$@"\n')
        os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh",
                               AGENT_DIR, sys.executable] + sys.argv, env)
    sys.exit("hostile: %s is set but this is not the namespaced process" % NS_MARK)


def arguments(description, extra=None):
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine", default=os.environ.get("MACHINE_BINARY", os.path.join(ROOT, "build", "machine")))
    ap.add_argument("--agent", default=os.path.join(ROOT, "build", "guest-agent", "machine-agent"),
                    help="the real machine-agent binary (only for checks that deploy it)")
    ap.add_argument("-k", dest="only", action="append", default=[], help="run only checks whose name contains this")
    ap.add_argument("-v", dest="verbose", action="store_true", help="print what machine printed")
    if extra:
        extra(ap)
    return ap.parse_args()


_PORTS_GIVEN = set()
_PORTS_LOCK = threading.Lock()


def free_port():
    """A port on 127.0.0.1 nothing listens on, never one given before in this run: checks start
    their sshds at once, and two given the same port would have one check talk to the other's
    sshd (seen: a "host key changed" that was another check's key)."""
    with _PORTS_LOCK:
        for _ in range(100):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return port
    raise RuntimeError("no port on 127.0.0.1 that was not given before")


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(p, sig=signal.SIGTERM, timeout=10.0):
    """Stops one Popen this suite started, by its pid."""
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    except ProcessLookupError:
        pass


# --- a real sshd -------------------------------------------------------------------------------

class Sshd:
    """OpenSSH's sshd on 127.0.0.1 with throwaway keys, in a mount namespace of its own where
    /run/machine-agent is `agent_dir` (plus any other (source, target) binds given). `relay` is
    the machine-agent binary the host runs as `/usr/local/bin/machine-agent relay` to reach the
    agent's socket: a directory holding it is /usr/local/bin there, unless a bind already is."""

    def __init__(self, tmp, agent_dir, binds=(), extra_config="", relay=None):
        self.tmp = tmp
        os.makedirs(tmp, exist_ok=True)
        self.host_key = os.path.join(tmp, "ssh_host_ed25519_key")
        self.user_key = os.path.join(tmp, "id_ed25519")
        for key in (self.host_key, self.user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostile", "-f", key], check=True)
        authorized = os.path.join(tmp, "authorized_keys")
        shutil.copyfile(self.user_key + ".pub", authorized)
        self.port = free_port()
        config = os.path.join(tmp, "sshd_config")
        with open(config, "w") as f:
            f.write("ListenAddress 127.0.0.1\nPort %d\nHostKey %s\nAuthorizedKeysFile %s\n"
                    "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
                    "AllowStreamLocalForwarding no\nAllowTcpForwarding yes\nMaxStartups 100\nMaxSessions 100\n"
                    "PidFile none\nLogLevel ERROR\n%s"
                    % (self.port, self.host_key, authorized, extra_config))
        os.makedirs("/run/sshd", exist_ok=True)  # inside our namespace's /run (see enter_namespace)
        mounts = [(agent_dir, AGENT_DIR)] + list(binds)
        if relay and not any(target == "/usr/local/bin" for _, target in binds):
            bindir = os.path.join(tmp, "bin")
            os.makedirs(bindir, exist_ok=True)
            os.chmod(bindir, 0o755)
            shutil.copyfile(relay, os.path.join(bindir, "machine-agent"))
            os.chmod(os.path.join(bindir, "machine-agent"), 0o755)
            mounts.append((bindir, "/usr/local/bin"))
        script = "set -e\n"
        args = []
        for i, (src, dst) in enumerate(mounts):
            script += 'mount --bind "${%d}" "${%d}"\n' % (2 * i + 1, 2 * i + 2)
            args += [src, dst]
        script += 'shift %d\nexec "$@"\n' % (2 * len(mounts))
        self.log = os.path.join(tmp, "sshd.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh"] + args +
                ["/usr/sbin/sshd", "-D", "-e", "-f", config], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        if not wait_port(self.port, proc=self.proc):
            self.stop()
            raise RuntimeError("sshd did not listen on 127.0.0.1:%d: %s" % (self.port, self.log_text()))
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", self.host_key + ".pub"],
                             capture_output=True, text=True, check=True).stdout.split()
        self.fingerprint = out[1]  # SHA256:...

    def log_text(self):
        return file_tail(self.log)

    def stop(self):
        stop_process(self.proc)


# --- a scripted guest agent ---------------------------------------------------------------------

HELLO_CAPABILITIES = ["run", "cancel", "health", "subscribe", "emit", "provision", "session.register",
                      "session.end", "session.list", "secrets.render", "secrets.clear", "secrets.list",
                      "secrets.discover", "network.apply"]


def encode(obj):
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class AgentConnection:
    """One client of the scripted agent (each comes through `machine-agent relay`, run by sshd)."""

    def __init__(self, agent, sock):
        self.agent, self.sock = agent, sock
        self.lock = threading.Lock()
        self.closed = False
        self.state = {}  # for the script's own use

    def send_raw(self, data):
        with self.lock:
            self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(encode(obj))

    def result(self, req_id, **fields):
        self.send(dict({"v": 1, "id": req_id, "type": "result"}, **fields))

    def error(self, req_id, code, message):
        self.send({"v": 1, "id": req_id, "type": "error", "code": code, "message": message})

    def event(self, sub_id, seq, event, ts=None, **fields):
        body = {"v": 1, "id": sub_id, "type": "event", "seq": seq, "ts": ts or now_rfc3339(), "event": event}
        body.update(fields)
        self.send(body)

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def now_rfc3339():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


class ScriptedAgent:
    """A guest agent that a test scripts. It listens on `<dir>/agent.sock` (which a guest's sshd
    sees as /run/machine-agent/agent.sock) and, by default, answers like a well-behaved agent:
    hello, subscribe (nothing to replay, then `live`), session.list, secrets.* with empty results.
    A test overrides on_<type> (dots become underscores) or on_connect/on_line."""

    agent_version = "0.1.0-hostile"

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        self.path = os.path.join(directory, "agent.sock")
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.journal_id = base64.b32encode(os.urandom(10)).decode().lower()
        self.boot_id = str(uuid.uuid4())  # as the kernel writes /proc/sys/kernel/random/boot_id
        self.seq = 0
        self.deployment = None  # hello's `deployment` ({binary_sha256, unit_sha256, user}) when set
        self.requests = []  # (type, id) of every request seen, in order
        # Set at the first subscription: a check times its window from there, not from the
        # command's start (a loaded host may take seconds to get that far).
        self.subscribed = threading.Event()
        self.connections = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o666)
        self.listener.listen(64)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    # plumbing
    def _accept(self):
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = AgentConnection(self, sock)
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.on_connect(conn)
            buf = b""
            while not conn.closed:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.on_line(conn, line)
        except OSError:
            pass
        finally:
            conn.closed = True
            self.on_disconnect(conn)
            try:
                conn.sock.close()
            except OSError:
                pass

    def on_line(self, conn, line):
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        kind, req_id = msg.get("type"), msg.get("id")
        with self.lock:
            self.requests.append((kind, req_id))
        handler = getattr(self, "on_" + str(kind).replace(".", "_"), None)
        if handler is None:
            conn.error(req_id, "unknown_type", "unknown request type")
        else:
            handler(conn, msg)

    def on_connect(self, conn):
        pass

    def on_disconnect(self, conn):
        pass

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def request_types(self):
        with self.lock:
            return [t for t, _ in self.requests]

    # a well-behaved agent's answers
    def hello_fields(self):
        return {"protocol": 1, "agent_version": self.agent_version, "capabilities": HELLO_CAPABILITIES,
                "boot_id": self.boot_id, "journal": {"id": self.journal_id, "first_seq": 1 if self.seq else 0,
                                                     "last_seq": self.seq},
                "limits": {"max_line": 1048576, "output_chunk": 32768, "max_event_bytes": 65536},
                **({"deployment": self.deployment} if self.deployment else {})}

    def on_hello(self, conn, msg):
        conn.result(msg["id"], **self.hello_fields())

    def on_subscribe(self, conn, msg):
        conn.state["sub"] = msg["id"]
        conn.send({"v": 1, "id": msg["id"], "type": "live", "seq": self.seq})
        self.subscribed.set()
        self.on_subscribed(conn, msg["id"])

    def on_subscribed(self, conn, sub_id):
        pass

    def on_cancel(self, conn, msg):
        target = msg.get("target")
        conn.result(msg["id"], target=target)
        if target == conn.state.get("sub"):
            conn.result(target, last_seq=self.seq, cancelled=True)
            conn.state.pop("sub", None)

    def on_session_list(self, conn, msg):
        conn.result(msg["id"], sessions=[])

    def on_secrets_discover(self, conn, msg):
        conn.result(msg["id"], repos=[])

    def on_secrets_list(self, conn, msg):
        conn.result(msg["id"], sets=[])

    def on_secrets_render(self, conn, msg):
        variables = msg.get("variables") or []
        conn.result(msg["id"], set=msg.get("set"), count=len(variables),
                    path="/run/machine-secrets/%s.env" % msg.get("set"))

    def on_secrets_clear(self, conn, msg):
        conn.result(msg["id"], cleared=[])

    def on_network_apply(self, conn, msg):
        conn.result(msg["id"], path="/etc/machine/network.nft", applied=True, nft_found=True)

    def on_health(self, conn, msg):
        conn.result(msg["id"], uptime_ms=1000, rss_kib=1000, clients=1, running=0, subscribers=0,
                    journal={"first_seq": 1, "last_seq": self.seq, "events": self.seq, "bytes": 0})

    def stop(self):
        self.stopping = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.connections)
        for c in conns:
            c.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class HungAgent(ScriptedAgent):
    """Accepts, reads every request, never answers anything."""

    def on_line(self, conn, line):
        try:
            msg = json.loads(line)
            with self.lock:
                self.requests.append((msg.get("type"), msg.get("id")))
        except (ValueError, AttributeError):
            pass


# --- fake VMs and the real `machine` ------------------------------------------------------------

class World:
    """A private LIMA_HOME, state and config directory for `machine`, with fake-limactl VMs."""

    def __init__(self, tmp, poll_ms=500):
        self.tmp = tmp
        self.lima_home = os.path.join(tmp, "lima")
        self.state_dir = os.path.join(tmp, "state")
        self.config_dir = os.path.join(tmp, "config")
        self.bin_dir = os.path.join(tmp, "bin")  # first on PATH: `op` and the like
        for d in (self.lima_home, self.state_dir, self.config_dir, self.bin_dir):
            os.makedirs(d, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MACHINE_", "LIMA_", "SSH_AUTH_SOCK"))}
        self.env.update(LIMA_HOME=self.lima_home, MACHINE_STATE_DIR=self.state_dir, MACHINE_CONFIG_DIR=self.config_dir,
                        MACHINE_LIMACTL=FAKE_LIMACTL, MACHINE_WATCH_POLL_MS=str(poll_ms),
                        PATH=self.bin_dir + ":/usr/bin:/bin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))

    def limactl(self, *args, env=None):
        e = dict(self.env)
        e.update(env or {})
        return subprocess.run([FAKE_LIMACTL] + list(args), env=e, capture_output=True, text=True)

    def add_vm(self, name, sshd, pin=None, user="root"):
        """A Running fake-limactl VM `name` whose ssh.config leads to `sshd`; its pin is sshd's host
        key (or `pin`, a `SHA256:...` fingerprint) unless pin is False."""
        r = self.limactl("create", "--name", name, "--ssh-port", str(sshd.port),
                         os.path.join(ROOT, "tests", "fixtures", "lima", "sandbox-template.yaml"))
        if r.returncode != 0:
            raise RuntimeError("fake-limactl create %s: %s" % (name, r.stderr))
        r = self.limactl("start", name, env={"FAKE_LIMACTL_SSH_PORT": str(sshd.port)})
        if r.returncode != 0:
            raise RuntimeError("fake-limactl start %s: %s" % (name, r.stderr))
        with open(os.path.join(self.lima_home, name, "ssh.config"), "w") as f:
            f.write("Host lima-%s\n  IdentityFile \"%s\"\n  User %s\n  Hostname 127.0.0.1\n  Port %d\n"
                    "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                    % (name, sshd.user_key, user, sshd.port))
        if pin is not False:
            self.write_pin(name, pin or sshd.fingerprint)

    def close_ssh_masters(self):
        """Ends the OpenSSH masters `machine` opened for this world's VMs (as `machine down` does
        when a VM stops), so that neither they nor their sshd sessions outlive the check."""
        for name in sorted(os.listdir(self.state_dir)):
            socket_path = os.path.join(self.state_dir, name, "ssh-master")
            if os.path.exists(socket_path):
                subprocess.run(["ssh", "-S", socket_path, "-O", "exit", "machine-master"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)

    def write_pin(self, name, fingerprint):
        d = os.path.join(self.state_dir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "host_key"), "w") as f:
            f.write("%s ssh-ed25519\n" % fingerprint)

    def write_projects(self, text):
        with open(os.path.join(self.config_dir, "projects.toml"), "w") as f:
            f.write(text)

    def install_fake_op(self, name="op"):
        path = os.path.join(self.bin_dir, name)
        if not os.path.exists(path):
            os.symlink(FAKE_OP, path)
        return path


def status_kib(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class LineCounter(threading.Thread):
    """Drains a pipe: counts its lines and keeps the first `keep` and the last `tail` of them
    (a flood of warnings must not fill this process either)."""

    def __init__(self, stream, keep=400, tail=50):
        super().__init__(daemon=True)
        self.stream, self.keep, self.tail_n = stream, keep, tail
        self.count = 0
        self.warnings = 0  # lines that say "warning"
        self.bytes = 0
        self.head, self.tail = [], []
        self.lock = threading.Lock()
        self.stamps = []  # monotonic time of each kept head line
        self.start()

    def run(self):
        fd = self.stream.fileno()
        try:
            import fcntl
            fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: a flood must not be slowed by a small pipe
        except (OSError, ImportError):
            pass
        partial = b""
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            self.bytes += len(chunk)
            # Fast path: counting is bytes.count; only the first and last lines are decoded.
            n = chunk.count(b"\n")
            self.warnings += chunk.count(b"warning")
            if n == 0:
                partial = (partial + chunk)[-4096:]
                continue
            first_end = chunk.index(b"\n")
            last_start = chunk.rindex(b"\n")
            with self.lock:
                if len(self.head) < self.keep:
                    self._add((partial + chunk[:last_start]).split(b"\n")[:self.keep - len(self.head) + 1],
                              count=False)
                else:
                    self._add([partial + chunk[:first_end]], count=False, head=False)
                    if n > 1:
                        tail = chunk[:last_start].rsplit(b"\n", self.tail_n)[1:]
                        self._add(tail, count=False, head=False)
                self.count += n
            partial = chunk[last_start + 1:]
        if partial:
            with self.lock:
                self._add([partial], count=False)
                self.count += 1

    def _add(self, lines, count=True, head=True):
        """Adds decoded lines to head (while it has room) and tail; the caller holds the lock."""
        now = time.monotonic()
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if count:
                self.count += 1
            if head and len(self.head) < self.keep:
                self.head.append(line)
                self.stamps.append(now)
            self.tail.append(line)
        if len(self.tail) > self.tail_n:
            del self.tail[:len(self.tail) - self.tail_n]

    def lines(self):
        with self.lock:
            if self.count <= len(self.head):
                return list(self.head)
            return list(self.head) + ["... (%d lines in all)" % self.count] + list(self.tail)

    def raw_bytes_seen(self):
        return self.bytes


class MachineRun:
    """The real `machine` running: its output drained and counted, its peak RSS sampled from
    /proc (VmHWM, the kernel's own high-water mark, so a spike between two samples is not lost)."""

    RSS_CAP_MIB = 512  # beyond this the run is killed at once: a leak must not take the host down

    def __init__(self, world, args, machine, env=None, stdin=None):
        e = dict(world.env)
        e.update(env or {})
        self.args = args
        self.start = time.monotonic()
        self.proc = subprocess.Popen([machine] + list(args), env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=stdin if stdin is not None else subprocess.DEVNULL)
        self.out = LineCounter(self.proc.stdout)
        self.err = LineCounter(self.proc.stderr)
        self.peak_kib = 0
        self.killed = False
        self.end = None
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self):
        self.capped = False
        while self.proc.poll() is None:
            self.peak_kib = max(self.peak_kib, status_kib(self.proc.pid, "VmHWM"), status_kib(self.proc.pid, "VmRSS"))
            if self.peak_kib > self.RSS_CAP_MIB * 1024 and self.proc.poll() is None:
                self.capped = self.killed = True
                self.proc.kill()
                break
            time.sleep(0.02)

    def rss_kib(self):
        return status_kib(self.proc.pid, "VmRSS")

    def running(self):
        return self.proc.poll() is None

    def wait(self, timeout):
        """Waits until `machine` ends or `timeout` s from its start; then SIGKILL (by pid)."""
        remaining = self.start + timeout - time.monotonic()
        try:
            self.proc.wait(timeout=max(0.0, remaining))
        except subprocess.TimeoutExpired:
            self.killed = True
            self.proc.kill()
            self.proc.wait()
        return self._finish()

    def interrupt(self, timeout=10.0):
        """Ctrl-C (SIGINT), as a user ends `watch`; SIGKILL if it does not end in `timeout` s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        return self._finish()

    def _finish(self):
        if self.end is None:
            self.end = time.monotonic()
        self._sampler.join(timeout=1)
        self.out.join(timeout=5)
        self.err.join(timeout=5)
        return self

    @property
    def elapsed(self):
        return (self.end or time.monotonic()) - self.start

    @property
    def rc(self):
        return self.proc.returncode

    def lines(self):
        return self.out.lines() + self.err.lines()

    def line_count(self):
        return self.out.count + self.err.count

    def warning_count(self):
        return self.out.warnings + self.err.warnings

    def peak_mib(self):
        return self.peak_kib / 1024.0

    def describe(self, n=12):
        """The last lines it printed (for a failure message), escaped."""
        lines = self.err.lines()[-n:] + self.out.lines()[-n:]
        return " | ".join(repr(l)[1:-1][:300] for l in lines[-n:])


# --- reporting ----------------------------------------------------------------------------------

class Report:
    """TAP-like output: `ok N - name`, `not ok N - name: why`, FIGURE lines; exit status 1 when a
    check failed. Thread-safe (checks run in parallel)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.failed = []

    def figure(self, text):
        with self.lock:
            print("FIGURE %s" % text, flush=True)

    def note(self, text):
        with self.lock:
            print("# %s" % text, flush=True)

    def check(self, name, ok, why=""):
        with self.lock:
            self.n += 1
            if ok:
                print("ok %d - %s" % (self.n, name), flush=True)
            else:
                self.failed.append(name)
                print("not ok %d - %s%s" % (self.n, name, (": " + why) if why else ""), flush=True)
        return ok

    def finish(self):
        with self.lock:
            print("1..%d" % self.n, flush=True)
            if self.failed:
                print("# FAILED %d of %d: %s" % (len(self.failed), self.n, ", ".join(self.failed)), flush=True)
                return 1
            print("# all %d passed" % self.n, flush=True)
            return 0


# How long a command against a hostile guest may take before it is killed.
END_LIMIT_S = int(os.environ.get("HOSTILE_END_LIMIT_S", "60"))


def error_lines(run):
    """The lines that report a failure: `machine: <message>` (how a command's error ends it) and
    events that say error."""
    return [l for l in run.lines() if "error" in l.lower() or
            (l.startswith("machine: ") and not l.startswith(("machine: interrupt", "machine: warning")))]


def ended_with_error(run, vm, mention=()):
    """Why `run` did not end with exit 1 and an error line naming `vm` (and each of `mention`),
    as a list of problems (empty: it did), with its last lines and error lines when it did not."""
    problems = []
    if run.killed:
        problems.append("RSS passed %d MiB (killed)" % run.RSS_CAP_MIB if run.capped else
                        "still running after %.0f s (killed)" % run.elapsed)
    elif run.rc != 1:
        problems.append("exit status %s, expected 1" % run.rc)
    errors = error_lines(run)
    if not any(vm in l for l in errors):
        problems.append("no error line names the VM")
    for m in mention:
        if not any(m in l for l in errors):
            problems.append("no error line names %r" % m)
    if problems:
        problems.append("last lines: %s" % run.describe(6))
        if errors:
            problems.append("its error lines end with: %s" % " | ".join(repr(l)[1:-1][:300] for l in errors[-2:]))
    return problems


def file_tail(path, size=2000):
    """The last `size` characters of a log file ("" when it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-size:]
    except OSError:
        return ""


def run_suite(jobs, report, machine, *then):
    """Runs the (name, callable) checks in parallel, then each list of `then` checks in parallel
    in turn, notes how long they took against which binary, and exits with the report's status.
    Waves keep checks that load the host (floods: several machines, sshds and relays moving MiBs
    at once; `up`s: dozens of SSH round trips each) away from checks whose agent must answer
    within machine's own deadlines: on 2 cores they held requests back past them, and such a
    check measured the host's load, not machine (seen in CI)."""
    t0 = time.monotonic()
    waves = [list(jobs)] + [list(w) for w in then]
    for wave in waves:
        run_parallel(wave, report)
    report.note("%d checks in %.1f s against %s" % (sum(len(w) for w in waves), time.monotonic() - t0, machine))
    sys.exit(report.finish())


def run_parallel(jobs, report):
    """Runs each (name, callable) in a thread of its own; a job that raises fails as one check."""
    threads = []

    def runner(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001: the suite reports, it does not crash
            import traceback
            report.check(name, False, "the check itself failed: %r" % e)
            report.note(traceback.format_exc().replace("\n", "\n# "))

    for name, fn in jobs:
        t = threading.Thread(target=runner, args=(name, fn), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def make_tmp(prefix="hostile-"):
    # Short: a Unix socket path must stay under 108 bytes.
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR") or "/tmp")
