#!/usr/bin/env python3
"""machine-agent end to end: the real (static) binary on the host, over its real Unix socket,
with a temporary socket directory, journal and runtime-dir root.

Run: python3 test_agent.py --agent PATH [unittest args]   (ctest runs it as `agent`)
Figures (binary size, idle RSS, event throughput) are printed as `FIGURE name: value` lines.
"""
import argparse
import base64
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

AGENT = None  # set from the command line
RUNNER = []  # what runs it: nothing, or [qemu-aarch64-static] for an aarch64 agent (--runner)


def agent_cmd():
    """How to run the agent: AGENT, after RUNNER. Read at each call: suites swap AGENT for a
    wrapper (the agent as another user)."""
    return RUNNER + [AGENT]

SANITIZED = False  # an ASan/UBSan build: memory figures mean nothing, sanitizer reports fail tests
EMULATED = False  # run through --runner (qemu-user): its RSS is the emulator's too, so memory limits are not checked

ME = pwd.getpwuid(os.getuid())
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def read_text(path):
    with open(path) as f:
        return f.read()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def agent_cpu_seconds(pid):
    fields = read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figure(name, value):
    print(f"FIGURE {name}: {value}", flush=True)


def wait_until(pred, timeout=10.0, what="condition", interval=0.02):
    """pred()'s first true value, polled every `interval` s; AssertionError after `timeout` s.
    The one way these suites wait: on a condition with a deadline, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def is_gone(pid):
    """True when pid no longer runs (absent, or a zombie left to an init that does not reap)."""
    try:
        return read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_time(pid):
    """Field 22 of /proc/PID/stat (None once it is gone): tells a process from a recycled pid."""
    try:
        return read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pids_in(path):
    """The pids commands wrote to `path`, a line each (`echo $$ >> path`): whole lines only."""
    try:
        return [int(line) for line in read_text(path).split("\n")[:-1]]
    except FileNotFoundError:
        return []


def pid_in(path):
    """The pid a command wrote to `path` (`echo $$ > path`), once it is there (None before)."""
    pids = pids_in(path)
    return pids[0] if pids else None


def waiting_for_events(pid):
    """True while the (single-threaded) agent sleeps in epoll_wait: it has nothing left to do."""
    try:
        if "epoll" in read_text(f"/proc/{pid}/wchan"):
            return True
        # Where wchan is hidden: the syscall it is blocked in (x86_64 epoll_wait, epoll_pwait, epoll_pwait2).
        return read_text(f"/proc/{pid}/syscall").split()[0] in ("232", "281", "441")
    except (OSError, IndexError):
        return False


class Client:
    """A protocol client: JSON lines over the Unix socket, messages routed by id."""

    def __init__(self, path, timeout=20.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1
        self.pending = []  # decoded messages not consumed yet, in arrival order
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, obj):
        self.sock.sendall((json.dumps(obj, separators=(",", ":")) + "\n").encode())

    def send_raw(self, data):
        self.sock.sendall(data)

    def request(self, type_, **fields):
        rid = self.next_id
        self.next_id += 1
        self.send({"v": 1, "id": rid, "type": type_, **fields})
        return rid

    def _read_line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                self.eof = True
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def next(self, pred=lambda m: True):
        """The first message (pending first, then from the socket) matching pred."""
        for i, m in enumerate(self.pending):
            if pred(m):
                return self.pending.pop(i)
        while True:
            m = self._read_line()
            if m is None:
                return None
            if pred(m):
                return m
            self.pending.append(m)

    def final(self, rid):
        """Every message of request rid up to and including its final one."""
        out = []
        while True:
            m = self.next(lambda m: m.get("id") == rid)
            assert m is not None, f"connection closed before the final message of {rid}"
            out.append(m)
            if m["type"] in ("result", "error"):
                return out

    def call(self, type_, **fields):
        msgs = self.final(self.request(type_, **fields))
        return msgs[-1]


class Agent:
    """One agent process with its own temporary world."""

    def __init__(self, root, extra=(), user=ME.pw_name, boot_id="11111111-2222-3333-4444-555555555555"):
        self.root = root
        self.socket = os.path.join(root, "run", "machine-agent", "agent.sock")
        self.journal = os.path.join(root, "state", "journal.jsonl")
        self.runtime = os.path.join(root, "run-user")
        self.boot_id_file = os.path.join(root, "boot_id")
        os.makedirs(self.runtime, exist_ok=True)
        if not os.path.exists(self.boot_id_file):
            self.set_boot_id(boot_id)
        self.extra = list(extra)
        self.user = user
        self.proc = None
        self.clients = []
        self.log_path = os.path.join(root, "agent.log")

    def set_boot_id(self, boot_id):
        with open(self.boot_id_file, "w") as f:
            f.write(boot_id + "\n")

    def start(self, env_extra=None):
        argv = [*agent_cmd(), "--socket", self.socket, "--journal", self.journal, "--runtime-dir-root", self.runtime,
                "--boot-id-file", self.boot_id_file, "--group", MY_GROUP]
        if self.user:
            argv += ["--user", self.user]
        if not any(a.startswith("--systemctl") for a in self.extra):
            argv.append("--no-systemd")
        # Never the machine's own /etc/machine/network.nft.
        if "--network-rules" not in self.extra:
            argv += ["--network-rules", os.path.join(self.root, "etc-machine", "network.nft")]
        argv += self.extra
        env = dict(os.environ)
        env["MACHINE_AGENT_TEST_SECRET"] = "must-not-leak"
        env.update(env_extra or {})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=env)
        # Ready when this process says it listens (another agent may own the socket).
        marker = f"[{self.proc.pid}] listening on ".encode()
        # An ASan build hashes its own ~55 MB executable at -O0 before listening: seconds.
        deadline = time.monotonic() + (90 if SANITIZED else 10)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: {self.read_log()}")
            if marker in self.read_log().encode():
                return self
            time.sleep(0.02)
        raise AssertionError("agent did not start listening: " + self.read_log())

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def client(self):
        c = Client(self.socket)
        self.clients.append(c)
        return c

    def stop(self):
        for c in self.clients:
            c.close()
        self.clients = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        self.proc = None

    def kill9(self):
        for c in self.clients:
            c.close()
        self.clients = []
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.proc = None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def run_cmd(client, argv, user=ME.pw_name, **fields):
    """Runs a command; returns (stdout bytes, stderr bytes, final message, output messages)."""
    msgs = client.final(client.request("run", argv=argv, user=user, **fields))
    out = {"stdout": b"", "stderr": b""}
    outputs = [m for m in msgs if m["type"] == "output"]
    for m in outputs:
        out[m["stream"]] += base64.b64decode(m["data_b64"])
    return out["stdout"], out["stderr"], msgs[-1], outputs


def subscribe_collect(client, from_seq, count, rid=None):
    """Subscribes and returns the first `count` events (and the request id)."""
    rid = client.request("subscribe", from_seq=from_seq) if rid is None else rid
    events = []
    while len(events) < count:
        m = client.next(lambda m: m.get("id") == rid)
        assert m is not None, "subscription ended early"
        assert m["type"] in ("event", "live", "gap"), m
        if m["type"] == "event":
            events.append(m)
    return rid, events


def journal_events(agent, from_seq=0, prefixes=("",)):
    """The journal's events after from_seq whose names start with one of `prefixes`, through
    subscribe (replay until live)."""
    c = agent.client()
    rid = c.request("subscribe", from_seq=from_seq)
    out = []
    while True:
        m = c.next(lambda m: m.get("id") == rid)
        assert m is not None, "subscription ended early"
        if m["type"] == "live":
            break
        if m["type"] == "event" and m["event"].startswith(tuple(prefixes)):
            out.append(m)
    c.close()
    agent.clients.remove(c)
    return out


def emit_many(path, n, tag, results=None):
    """n emits pipelined on one connection; returns their seqs in request order."""
    c = Client(path, timeout=60)
    payload = b"".join(
        (json.dumps({"v": 1, "id": i + 1, "type": "emit", "event": "test.bulk", "fields": {"tag": tag, "n": i}},
                    separators=(",", ":")) + "\n").encode() for i in range(n))
    sender = threading.Thread(target=c.send_raw, args=(payload,))
    sender.start()
    seqs = {}
    while len(seqs) < n:
        m = c.next()
        assert m is not None and m["type"] == "result", m
        seqs[m["id"]] = m["seq"]
    sender.join()
    c.close()
    out = [seqs[i + 1] for i in range(n)]
    if results is not None:
        results[tag] = out
    return out


class AgentTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="machine-agent-test-")
        self.agents = []

    def tearDown(self):
        for a in self.agents:
            a.stop()
        log = self.agents[0].read_log() if self.agents else ""
        shutil.rmtree(self.tmp, ignore_errors=True)
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            self.assertNotIn(marker, log, log)

    def agent(self, **kw):
        a = Agent(self.tmp, **kw)
        self.agents.append(a)
        return a.start()

    def stop_at_exit(self, pid):
        """A process this test had started (a command's, a step's), SIGKILLed when the test ends
        if it is still there, so that it cannot outlive a failed test. By pid, checked against its
        start time: never another process that got the pid since."""
        started = start_time(pid)

        def stop():
            if started is not None and start_time(pid) == started and not is_gone(pid):
                os.kill(pid, signal.SIGKILL)
        self.addCleanup(stop)
        return pid


class Basics(AgentTest):
    def test_hello(self):
        a = self.agent()
        c = a.client()
        r = c.call("hello", client="test")
        self.assertEqual(r["type"], "result")
        self.assertEqual(r["protocol"], 1)
        self.assertEqual(set(r["capabilities"]), {"run", "cancel", "health", "subscribe", "emit", "provision",
                                                 "provision.pending", "session.register", "session.end", "session.list",
                                                 "secrets.render", "secrets.clear", "secrets.list",
                                                 "secrets.discover", "network.apply"})
        self.assertEqual(r["boot_id"], "11111111-2222-3333-4444-555555555555")
        self.assertEqual(r["journal"]["first_seq"], 1)
        self.assertEqual(r["journal"]["last_seq"], 1)  # agent.up
        self.assertEqual(len(r["journal"]["id"]), 32)
        self.assertEqual(r["limits"]["max_line"], 1 << 20)
        # Not installed as a unit: no unit hash, so a host reinstalls rather than trusting it.
        self.assertEqual(r["deployment"]["unit_sha256"], "")

    def test_hello_describes_the_installation(self):
        """The host skips running anything in the VM when these match what it would install."""
        import hashlib
        unit = os.path.join(self.tmp, "machine-agent.service")
        with open(unit, "w") as f:
            f.write("[Unit]\nDescription=test\n")
        a = self.agent(extra=["--unit-file", unit])
        r = a.client().call("hello")
        with open(AGENT, "rb") as f:
            self.assertEqual(r["deployment"]["binary_sha256"], hashlib.sha256(f.read()).hexdigest())
        with open(unit, "rb") as f:
            self.assertEqual(r["deployment"]["unit_sha256"], hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(r["deployment"]["user"], ME.pw_name)
        # The unit is hashed at each hello: a replaced unit shows at once.
        with open(unit, "w") as f:
            f.write("[Unit]\nDescription=changed\n")
        r = a.client().call("hello")
        self.assertEqual(r["deployment"]["unit_sha256"], hashlib.sha256(b"[Unit]\nDescription=changed\n").hexdigest())

    def test_health(self):
        a = self.agent()
        c = a.client()
        h = c.call("health")
        self.assertEqual(h["clients"], 1)
        self.assertEqual(h["running"], 0)
        self.assertGreater(h["rss_kib"], 0)
        self.assertEqual(h["journal"]["events"], 1)

    def test_socket_and_directory_permissions(self):
        a = self.agent()
        st = os.stat(a.socket)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(st.st_gid, os.getgid())
        d = os.stat(os.path.dirname(a.socket))
        self.assertEqual(stat.S_IMODE(d.st_mode), 0o750)
        self.assertEqual(d.st_gid, os.getgid())
        self.assertEqual(d.st_uid, os.geteuid())

    def test_refuses_a_shared_socket_directory(self):
        shared = os.path.join(self.tmp, "shared")
        os.makedirs(shared)
        os.chmod(shared, 0o1777)
        a = Agent(self.tmp, extra=[])
        a.socket = os.path.join(shared, "agent.sock")
        with self.assertRaises(AssertionError) as cm:
            a.start()
        a.log.close()
        self.assertIn("shared", str(cm.exception))

    def test_second_agent_on_the_same_socket_refuses(self):
        a = self.agent()
        b = Agent(self.tmp)
        b.journal = os.path.join(self.tmp, "other", "journal.jsonl")
        with self.assertRaises(AssertionError) as cm:
            b.start()
        b.log.close()
        self.assertIn("another agent", str(cm.exception))
        self.assertEqual(a.client().call("hello")["type"], "result")

    def test_idle_rss(self):
        a = self.agent()
        # Idle: past its start-up work, asleep in epoll_wait (and no client has cost it anything).
        wait_until(lambda: waiting_for_events(a.proc.pid), 5, "the agent to sit idle in epoll_wait")
        rss = a.rss_kib()
        figure("idle RSS", f"{rss} KiB")
        if not SANITIZED and not EMULATED:
            self.assertLess(rss, 4096)


class Run(AgentTest):
    def test_streamed_output_and_exit_code(self):
        a = self.agent()
        c = a.client()
        out, err, final, outputs = run_cmd(c, ["sh", "-c", "printf out; printf err >&2; exit 7"])
        self.assertEqual(out, b"out")
        self.assertEqual(err, b"err")
        self.assertEqual(final["type"], "result")
        self.assertEqual(final["exit_code"], 7)
        self.assertFalse(final["cancelled"])
        self.assertNotIn("signal", final)

    def test_large_and_binary_output_is_chunked(self):
        a = self.agent()
        c = a.client()
        size = 3 * 1024 * 1024 + 17
        out, _, final, outputs = run_cmd(c, ["head", "-c", str(size), "/dev/urandom"])
        self.assertEqual(final["exit_code"], 0)
        self.assertEqual(len(out), size)
        self.assertTrue(all(len(base64.b64decode(m["data_b64"])) <= 32768 for m in outputs))
        out, _, _, _ = run_cmd(c, ["printf", "\\377\\376\\000\\n"])
        self.assertEqual(out, b"\xff\xfe\x00\n")

    def test_argv_arrives_verbatim(self):
        a = self.agent()
        c = a.client()
        args = ["$(id)", "`id`", "; rm -rf /nonexistent", "*", "a b", "'\"", "\\", "line1\nline2", "|&><", "$HOME",
                "", "--", "-n", "é✓"]
        out, _, final, _ = run_cmd(c, ["printf", "%s\\0"] + args)
        self.assertEqual(final["exit_code"], 0)
        self.assertEqual(out.split(b"\0")[:-1], [x.encode() for x in args])

    def test_stdin_env_and_cwd(self):
        a = self.agent()
        c = a.client()
        data = bytes(range(256)) * 100
        out, _, final, _ = run_cmd(c, ["cat"], stdin_b64=base64.b64encode(data).decode())
        self.assertEqual(out, data)
        out, _, _, _ = run_cmd(c, ["sh", "-c", "pwd; env"], cwd="/tmp", env={"EXTRA": "x y", "LANG": "C"})
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "/tmp")
        env = dict(l.split("=", 1) for l in lines[1:] if "=" in l)
        self.assertEqual(env["EXTRA"], "x y")
        self.assertEqual(env["LANG"], "C")
        self.assertEqual(env["USER"], ME.pw_name)
        self.assertEqual(env["HOME"], ME.pw_dir)
        self.assertNotIn("MACHINE_AGENT_TEST_SECRET", env)  # nothing of the agent's environment
        # Without stdin_b64 the child reads /dev/null.
        out, _, final, _ = run_cmd(c, ["cat"])
        self.assertEqual((out, final["exit_code"]), (b"", 0))

    def test_only_fds_0_to_2_are_inherited(self):
        a = self.agent()
        c = a.client()
        out, _, _, _ = run_cmd(c, ["ls", "/proc/self/fd"])
        fds = sorted(int(x) for x in out.split())
        self.assertEqual(fds[:3], [0, 1, 2])
        self.assertLessEqual(len(fds), 4)  # 0-2 and ls's own directory fd

    @unittest.skipUnless(os.geteuid() == 0, "needs root to switch users")
    def test_runs_as_the_requested_user(self):
        a = self.agent()
        c = a.client()
        nobody = pwd.getpwnam("nobody")
        out, _, final, _ = run_cmd(c, ["sh", "-c", "id -u; id -g; echo $HOME"], user="nobody")
        self.assertEqual(final["exit_code"], 0)
        uid, gid, home = out.decode().split("\n")[:3]
        self.assertEqual(int(uid), nobody.pw_uid)
        self.assertEqual(int(gid), nobody.pw_gid)
        self.assertEqual(home, nobody.pw_dir)

    def test_spawn_errors(self):
        a = self.agent()
        c = a.client()
        r = c.call("run", argv=["/nonexistent/program"], user=ME.pw_name)
        self.assertEqual((r["type"], r["code"]), ("error", "spawn_failed"))
        self.assertIn("No such file", r["message"])
        r = c.call("run", argv=["true"], user="no-such-user-xyz")
        self.assertEqual(r["code"], "no_such_user")
        r = c.call("run", argv=["true"], user=ME.pw_name, cwd="/nonexistent-dir")
        self.assertEqual(r["code"], "spawn_failed")
        self.assertIn("chdir", r["message"])
        r = c.call("run", argv="ls -l", user=ME.pw_name)
        self.assertEqual(r["code"], "bad_request")
        self.assertIn("argv", r["message"])

    def test_cancel(self):
        a = self.agent()
        c = a.client()
        rid = c.request("run", argv=["sh", "-c", "echo ready; exec sleep 30"], user=ME.pw_name)
        m = c.next(lambda m: m.get("id") == rid and m["type"] == "output")  # it runs: cancel it now
        self.assertEqual(base64.b64decode(m["data_b64"]), b"ready\n")
        t0 = time.monotonic()
        cancel = c.call("cancel", target=rid)
        self.assertEqual(cancel, {"v": 1, "id": cancel["id"], "type": "result", "target": rid})
        final = c.final(rid)[-1]
        self.assertLess(time.monotonic() - t0, 3)
        self.assertEqual(final["type"], "result")
        self.assertTrue(final["cancelled"])
        self.assertEqual(final["signal"], signal.SIGTERM)
        r = c.call("cancel", target=rid)
        self.assertEqual(r["code"], "not_found")

    def test_cancel_escalates_to_sigkill(self):
        a = self.agent()
        c = a.client()
        rid = c.request("run", argv=["sh", "-c", "trap '' TERM; echo ready; sleep 30"], user=ME.pw_name,
                        grace_ms=300)
        m = c.next(lambda m: m.get("id") == rid and m["type"] == "output")
        self.assertEqual(base64.b64decode(m["data_b64"]), b"ready\n")
        t0 = time.monotonic()
        c.call("cancel", target=rid)
        final = c.final(rid)[-1]
        self.assertEqual(final["signal"], signal.SIGKILL)
        self.assertLess(time.monotonic() - t0, 3)

    def test_concurrent_runs_and_duplicate_ids(self):
        a = self.agent()
        c = a.client()
        go = os.path.join(self.tmp, "go")
        # "slow" runs until the test lets it end: id 50 is in flight for as long as this needs.
        c.send({"v": 1, "id": 50, "type": "run", "user": ME.pw_name,
                "argv": ["sh", "-c", f"until [ -e {go} ]; do sleep 0.01; done; echo slow"]})
        c.send({"v": 1, "id": 50, "type": "health"})
        dup = c.next(lambda m: m.get("id") == 50 and m["type"] == "error")
        self.assertEqual(dup["code"], "duplicate_id")
        c.send({"v": 1, "id": 51, "type": "run", "argv": ["echo", "fast"], "user": ME.pw_name})
        fast = c.final(51)  # while 50 still runs
        open(go, "w").close()
        slow = c.final(50)
        self.assertEqual(base64.b64decode(fast[0]["data_b64"]), b"fast\n")
        self.assertEqual(base64.b64decode(slow[0]["data_b64"]), b"slow\n")
        self.assertEqual(slow[-1]["exit_code"], 0)
        # Once its final message is out, an id is free again.
        c.send({"v": 1, "id": 50, "type": "run", "argv": ["true"], "user": ME.pw_name})
        self.assertEqual(c.final(50)[-1]["exit_code"], 0)

    def test_disconnect_kills_the_command(self):
        a = self.agent()
        c = a.client()
        marker = os.path.join(self.tmp, "pid")
        c.request("run", argv=["sh", "-c", f"echo $$ > {marker}; exec sleep 30"], user=ME.pw_name)
        pid = self.stop_at_exit(wait_until(lambda: pid_in(marker), 5, "the command's pid"))
        c.close()
        wait_until(lambda: is_gone(pid), 5, "the command to end with its client")
        h = a.client().call("health")
        self.assertEqual(h["running"], 0)


class Shutdown(AgentTest):
    def test_sigterm_ends_requests_and_their_commands(self):
        a = self.agent()
        c = a.client()
        marker = os.path.join(self.tmp, "pid")
        rid = c.request("run", argv=["sh", "-c", f"trap '' TERM; echo $$ > {marker}; exec sleep 30"],
                        user=ME.pw_name)
        sub = c.request("subscribe", from_seq=0)
        c.next(lambda m: m.get("id") == sub and m["type"] == "live")
        pid = self.stop_at_exit(wait_until(lambda: pid_in(marker), 5, "the command's pid"))
        a.proc.send_signal(signal.SIGTERM)
        for r in (rid, sub):
            final = c.final(r)[-1]
            self.assertEqual((final["type"], final["code"]), ("error", "shutting_down"))
        self.assertEqual(a.proc.wait(5), 0)
        wait_until(lambda: is_gone(pid), 5, "the command to end with the agent")
        self.assertIn("stopped", a.read_log())


class Misbehaving(AgentTest):
    def test_bad_lines_get_errors_and_the_connection_stays(self):
        a = self.agent()
        bystander = a.client()
        bystander.call("hello")
        c = a.client()
        c.send_raw(b"not json\n")
        self.assertEqual(c.next()["code"], "invalid_json")
        c.send_raw(b"[1,2]\n")
        self.assertEqual(c.next()["code"], "not_an_object")
        c.send({"v": 2, "id": 3, "type": "hello"})
        m = c.next()
        self.assertEqual((m["code"], m["id"]), ("bad_version", 3))
        c.send({"v": 1, "id": 4, "type": "no.such.thing"})
        m = c.next()
        self.assertEqual((m["type"], m["code"], m["id"]), ("error", "unknown_type", 4))
        c.send({"v": 1, "type": "hello"})
        self.assertEqual(c.next()["code"], "bad_id")
        self.assertEqual(c.call("hello")["type"], "result")
        self.assertEqual(bystander.call("health")["clients"], 2)

    def test_oversized_line(self):
        a = self.agent()
        bystander = a.client()
        c = a.client()
        big = b'{"v":1,"id":1,"type":"hello","pad":"' + b"x" * (2 << 20) + b'"}'
        sender = threading.Thread(target=c.send_raw, args=(big,))
        sender.start()
        m = c.next()  # reported before the line even ends
        self.assertEqual((m["type"], m["code"], m["id"]), ("error", "line_too_long", None))
        sender.join()
        c.send_raw(b" more of the same line\n")
        self.assertEqual(c.call("hello")["type"], "result")  # resynchronised at the newline
        self.assertEqual(bystander.call("hello")["type"], "result")
        if not SANITIZED and not EMULATED:
            self.assertLess(bystander.call("health")["rss_kib"], 16 * 1024)

    def test_abrupt_eof_mid_line(self):
        a = self.agent()
        bystander = a.client()
        c = a.client()
        c.send_raw(b'{"v":1,"id":1,"type":"hel')
        c.sock.shutdown(socket.SHUT_WR)
        m = c.next()
        self.assertEqual((m["type"], m["code"]), ("error", "truncated"))
        self.assertIsNone(c.next())  # then the agent closes
        # Hard resets and garbage do not hurt the agent either.
        for _ in range(20):
            x = a.client()
            x.send_raw(os.urandom(3000))
            x.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            x.close()
        self.assertEqual(bystander.call("hello")["type"], "result")
        self.assertIsNone(a.proc.poll())

    def test_client_limit(self):
        a = self.agent(extra=["--max-clients", "2"])
        c1, c2 = a.client(), a.client()
        c1.call("hello")
        c2.call("hello")
        c3 = a.client()
        m = c3.next()
        self.assertEqual((m["code"], m["id"]), ("too_many_clients", None))
        self.assertIsNone(c3.next())
        c1.close()
        # The agent has let c1 go once it counts c2 alone (c3 was never counted).
        wait_until(lambda: c2.call("health")["clients"] == 1, 5, "the agent to drop the closed client")
        self.assertEqual(a.client().call("hello")["type"], "result")

    def test_many_clients_at_once(self):
        a = self.agent()
        clients = [a.client() for _ in range(40)]
        ids = [c.request("run", argv=["echo", str(i)], user=ME.pw_name) for i, c in enumerate(clients)]
        for i, (c, rid) in enumerate(zip(clients, ids)):
            msgs = c.final(rid)
            self.assertEqual(base64.b64decode(msgs[0]["data_b64"]), f"{i}\n".encode())

    def test_slow_subscriber_does_not_block_emitters(self):
        a = self.agent()
        lazy = a.client()
        lazy.request("subscribe", from_seq=0)  # and never reads
        t0 = time.monotonic()
        emit_many(a.socket, 20000, "flood")
        self.assertLess(time.monotonic() - t0, 30)
        reader = a.client()
        _, events = subscribe_collect(reader, 0, 20001)
        self.assertEqual([e["seq"] for e in events], list(range(1, 20002)))


class Events(AgentTest):
    def test_10000_events_in_order_to_a_subscriber(self):
        a = self.agent()
        sub = a.client()
        start = sub.call("hello")["journal"]["last_seq"]
        rid = sub.request("subscribe", from_seq=start)
        live = sub.next(lambda m: m.get("id") == rid)
        self.assertEqual(live, {"v": 1, "id": rid, "type": "live", "seq": start})

        results = {}
        cpu0 = agent_cpu_seconds(a.proc.pid)
        t0 = time.monotonic()
        emitters = [threading.Thread(target=emit_many, args=(a.socket, 2500, f"e{k}", results)) for k in range(4)]
        for t in emitters:
            t.start()
        _, events = subscribe_collect(sub, start, 10000, rid=rid)
        elapsed = time.monotonic() - t0
        for t in emitters:
            t.join()
        cpu = agent_cpu_seconds(a.proc.pid) - cpu0
        figure("event throughput (4 Python emitters -> 1 Python subscriber, 10000 events)",
               f"{10000 / elapsed:.0f} events/s end to end; agent CPU {cpu * 1e6 / 10000:.0f} us/event "
               f"(journal write + ack + delivery), i.e. ~{10000 / max(cpu, 1e-6):.0f} events/s per agent core")
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, list(range(start + 1, start + 10001)))
        for k in range(4):  # each emitter's events in its own order, at the seqs it was told
            mine = [e for e in events if e["tag"] == f"e{k}"]
            self.assertEqual([e["n"] for e in mine], list(range(2500)))
            self.assertEqual([e["seq"] for e in mine], results[f"e{k}"])
        self.assertTrue(all(e["event"] == "test.bulk" and e["ts"].endswith("Z") for e in events))

    def test_emit_command_line(self):
        a = self.agent()
        sub = a.client()
        rid = sub.request("subscribe", from_seq=1)
        r = subprocess.run([*agent_cmd(), "emit", "--socket", a.socket, "step.finished", "step=docker", "ok:=true",
                            "duration_ms:=8123", "note=a=b c"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        _, events = subscribe_collect(sub, 1, 1, rid=rid)
        e = events[0]
        self.assertEqual((e["event"], e["step"], e["ok"], e["duration_ms"], e["note"]),
                         ("step.finished", "docker", True, 8123, "a=b c"))
        r = subprocess.run([*agent_cmd(), "emit", "Bad Name"], capture_output=True, text=True,
                           env={**os.environ, "MACHINE_AGENT_SOCKET": a.socket})
        self.assertEqual(r.returncode, 1)
        self.assertIn("event", r.stderr)
        r = subprocess.run([*agent_cmd(), "emit", "--socket", a.socket, "x", "seq:=5"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("reserved", r.stderr)
        r = subprocess.run([*agent_cmd(), "emit", "--socket", os.path.join(self.tmp, "nope.sock"), "x"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect", r.stderr)
        # Twenty scripted steps in a row, as provisioning would.
        t0 = time.monotonic()
        for i in range(20):
            subprocess.run([*agent_cmd(), "emit", "--socket", a.socket, "step.started", f"i:={i}"], check=True)
        figure("emit CLI round trip", f"{(time.monotonic() - t0) / 20 * 1000:.1f} ms")
        _, events = subscribe_collect(sub, 2, 20, rid=rid)
        self.assertEqual([e["i"] for e in events], list(range(20)))

    def test_resubscribe_after_disconnect_loses_nothing(self):
        a = self.agent()
        base = a.client().call("hello")["journal"]["last_seq"]
        total = 3000
        emitter = threading.Thread(target=emit_many, args=(a.socket, total, "r"))
        emitter.start()
        seen = []
        sub = a.client()
        _, events = subscribe_collect(sub, base, 700)
        seen += [e["seq"] for e in events]
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sub.close()  # mid-stream, with more in flight
        sub = a.client()
        _, events = subscribe_collect(sub, seen[-1], base + total - seen[-1])
        seen += [e["seq"] for e in events]
        emitter.join()
        self.assertEqual(seen, list(range(base + 1, base + total + 1)))

    def test_sigkill_and_restart_recovers_the_journal(self):
        a = self.agent()
        c = a.client()
        journal_id = c.call("hello")["journal"]["id"]
        emit_many(a.socket, 500, "before")
        a.kill9()
        a.start()
        c = a.client()
        h = c.call("hello")
        self.assertEqual(h["journal"]["id"], journal_id)
        self.assertEqual(h["journal"]["last_seq"], 502)  # agent.up, 500 events, agent.up
        seq = c.call("emit", event="after.restart")["seq"]
        self.assertEqual(seq, 503)
        _, events = subscribe_collect(c, 250, 253)
        self.assertEqual([e["seq"] for e in events], list(range(251, 504)))
        self.assertEqual(events[-2]["event"], "agent.up")
        self.assertEqual(events[-1]["event"], "after.restart")

    def test_torn_last_line_is_cut(self):
        a = self.agent()
        emit_many(a.socket, 10, "t")
        a.stop()
        size = os.path.getsize(a.journal)
        with open(a.journal, "ab") as f:
            f.write(b'{"seq":12,"ts":"2026-11-27T12:00:00.000Z","event":"torn","x":"unfinis')
        a.start()
        c = a.client()
        self.assertEqual(c.call("hello")["journal"]["last_seq"], 12)  # the torn 12 is gone; agent.up took it
        with open(a.journal, "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\n"))
        self.assertNotIn(b"unfinis", data)
        self.assertGreater(len(data), size)
        _, events = subscribe_collect(c, 10, 2)
        self.assertEqual([(e["seq"], e["event"]) for e in events], [(11, "test.bulk"), (12, "agent.up")])

    def test_garbage_lines_in_the_journal_are_dropped(self):
        a = self.agent()
        emit_many(a.socket, 5, "g")
        a.stop()
        with open(a.journal, "ab") as f:
            f.write(b"\0\0\0\0garbage\n")
        a.start()
        c = a.client()
        self.assertEqual(c.call("hello")["journal"]["last_seq"], 7)
        _, events = subscribe_collect(c, 0, 7)
        self.assertEqual([e["seq"] for e in events], list(range(1, 8)))
        self.assertIn("dropped 1 bad lines", a.read_log())

    def test_bounded_journal_compacts_and_reports_gaps(self):
        a = self.agent(extra=["--max-events", "1000"])
        emit_many(a.socket, 3000, "c")
        c = a.client()
        h = c.call("health")
        self.assertLessEqual(h["journal"]["events"], 1000)
        self.assertEqual(h["journal"]["last_seq"], 3001)
        first = h["journal"]["first_seq"]
        self.assertEqual(h["journal"]["events"], 3001 - first + 1)
        rid = c.request("subscribe", from_seq=0)
        gap = c.next(lambda m: m.get("id") == rid)
        self.assertEqual(gap, {"v": 1, "id": rid, "type": "gap", "from_seq": 1, "to_seq": first - 1})
        _, events = subscribe_collect(c, 0, 3001 - first + 1, rid=rid)
        self.assertEqual([e["seq"] for e in events], list(range(first, 3002)))
        # Restart: the compacted file is recovered as it was.
        journal_bytes = os.path.getsize(a.journal)
        a.stop()
        a.start()
        h2 = a.client().call("health")
        self.assertGreaterEqual(h2["journal"]["first_seq"], first)  # agent.up may compact once more
        self.assertEqual(h2["journal"]["last_seq"], 3002)
        self.assertEqual(h2["journal"]["events"], 3002 - h2["journal"]["first_seq"] + 1)
        self.assertLess(journal_bytes, 1000 * 200)

    def test_bad_seq_and_bad_emits(self):
        a = self.agent()
        c = a.client()
        r = c.call("subscribe", from_seq=999)
        self.assertEqual(r["code"], "bad_seq")
        self.assertEqual(c.call("emit", event="x", fields={"event": 1})["code"], "bad_request")
        self.assertEqual(c.call("emit", event="x", fields={"pad": "p" * 70000})["code"], "too_large")
        self.assertEqual(c.call("emit", event="ok.one", fields={"nested": {"a": [1, 2]}})["type"], "result")

    def test_cancel_a_subscription(self):
        a = self.agent()
        c = a.client()
        rid = c.request("subscribe", from_seq=0)
        c.next(lambda m: m.get("id") == rid and m["type"] == "live")
        c.call("cancel", target=rid)
        final = c.final(rid)[-1]
        self.assertEqual(final, {"v": 1, "id": rid, "type": "result", "last_seq": 1, "cancelled": True})


class Readiness(AgentTest):
    def fake_systemctl(self, state, exit_code=0):
        path = os.path.join(self.tmp, "systemctl")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\n[ \"$1 $2\" = 'is-system-running --wait' ] || exit 64\n"
                    f"sleep 0.2\necho {state}\nexit {exit_code}\n")
        os.chmod(path, 0o755)
        return path

    def events_of(self, a):
        c = a.client()
        last = c.call("hello")["journal"]["last_seq"]
        _, events = subscribe_collect(c, 0, last)
        c.close()
        return events

    def wait_for_event(self, a, name, timeout=5):
        return wait_until(lambda: [e for e in self.events_of(a) if e["event"] == name], timeout,
                          f"a {name} event", interval=0.1)

    def wait_for_log(self, a, texts, count=1, timeout=5):
        """Until the agent's log (of every start so far) holds `count` lines of `texts`, all told:
        what it says when it has decided, whichever way it decided."""
        wait_until(lambda: sum(a.read_log().count(t) for t in texts) >= count, timeout,
                   f"{count} of {texts} in the agent's log")

    def test_agent_up_boot_finished_and_user_ready_once_per_boot(self):
        systemctl = self.fake_systemctl("degraded", 1)
        a = self.agent(extra=["--systemctl", systemctl])
        boot = self.wait_for_event(a, "boot.finished")
        self.assertEqual((boot[0]["state"], boot[0]["boot_id"]), ("degraded", "11111111-2222-3333-4444-555555555555"))
        self.assertEqual([e for e in self.events_of(a) if e["event"] == "user.ready"], [])
        os.makedirs(os.path.join(a.runtime, str(os.getuid())))
        ready = self.wait_for_event(a, "user.ready")
        self.assertEqual((ready[0]["user"], ready[0]["uid"]), (ME.pw_name, os.getuid()))

        # Same boot, agent restarted: only agent.up again. Once the restarted agent has decided
        # (it says that it does not watch, or that it emitted them once more), look.
        a.stop()
        a.start()
        self.wait_for_log(a, ["boot.finished of this boot is in the journal: not watching the boot",
                              "boot finished: "], count=2)
        self.wait_for_log(a, ["user.ready of this boot is in the journal: not watching for the user",
                              f"user {ME.pw_name} ready"], count=2)
        names = [e["event"] for e in self.events_of(a)]
        self.assertEqual(names.count("agent.up"), 2)
        self.assertEqual(names.count("boot.finished"), 1)
        self.assertEqual(names.count("user.ready"), 1)

        # A new boot: both again.
        a.stop()
        a.set_boot_id("99999999-2222-3333-4444-555555555555")
        a.start()

        def both_again():
            names = [e["event"] for e in self.events_of(a)]
            return names.count("boot.finished") == 2 and names.count("user.ready") == 2
        wait_until(both_again, 5, "boot.finished and user.ready of the new boot", interval=0.1)
        ups = [e for e in self.events_of(a) if e["event"] == "agent.up"]
        self.assertEqual(ups[-1]["boot_id"], "99999999-2222-3333-4444-555555555555")
        self.assertEqual(ups[-1]["version"], ups[0]["version"])

    def test_no_boot_event_while_the_system_is_stopping(self):
        a = self.agent(extra=["--systemctl", self.fake_systemctl("stopping", 1)])
        # Once the agent has read systemctl's answer and decided (it says so either way), look.
        self.wait_for_log(a, ["systemctl is-system-running says 'stopping': no boot.finished", "boot finished: "])
        self.assertEqual([e for e in self.events_of(a) if e["event"] == "boot.finished"], [])
        self.assertIn("systemctl is-system-running says 'stopping': no boot.finished", a.read_log())


SKIPPED = 77  # ctest's SKIP_RETURN_CODE for these suites


def skipped(suite, reason):
    """The one skip report: a single line `SKIPPED: <suite>: <reason>` on stderr (tools/test greps
    it; <suite> is the ctest name), and the exit status that tells ctest "skipped"."""
    print(f"SKIPPED: {suite}: {' '.join(str(reason).split())}", file=sys.stderr, flush=True)
    return SKIPPED


def run_suite(suite, skip_reason=None):
    """The main() of an agent test file: `--agent PATH [unittest arguments]`, `suite` being its
    ctest name. Every skip goes through skipped(): the whole suite's, when `skip_reason()` gives
    a reason (nothing runs), and each test's own (unittest's skip): the suite then runs to its
    end and, if nothing failed, still exits 77 with one line naming what was skipped and why, so
    that a skipped test cannot pass for a tested one. Failures win: exit 1."""
    global AGENT, RUNNER, SANITIZED, EMULATED
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", required=True)
    parser.add_argument("--runner", help="runs the agent (an emulator for another architecture's agent)")
    args, rest = parser.parse_known_args()
    AGENT = os.path.abspath(args.agent)
    RUNNER = [args.runner] if args.runner else []
    EMULATED = bool(args.runner)
    with open(AGENT, "rb") as f:
        SANITIZED = b"libasan.so" in f.read()
    reason = skip_reason() if skip_reason else None
    if reason:
        return skipped(suite, reason)
    result = unittest.main(argv=[sys.argv[0]] + rest, verbosity=2, exit=False).result
    sys.stdout.flush()
    sys.stderr.flush()
    if not result.wasSuccessful():
        return 1
    if result.skipped:
        tests = "; ".join(f"{t.id().split('.', 1)[-1]}: {why}" for t, why in result.skipped)
        return skipped(suite, f"{len(result.skipped)} of {result.testsRun} tests skipped: {tests}")
    return 0 if result.testsRun else 5  # no test ran (a filter that matched nothing): as unittest


def main():
    def describe_binary():
        size = os.path.getsize(AGENT)
        figure("agent binary", f"{size} bytes ({size / 1048576:.2f} MiB) {AGENT}")
        desc = subprocess.run(["file", "-b", AGENT], capture_output=True, text=True).stdout.strip() if shutil.which(
            "file") else ""
        if desc:
            figure("agent binary type", desc)
        return None  # never a reason to skip: this suite needs nothing but the binary
    return run_suite("agent", describe_binary)


if __name__ == "__main__":
    sys.exit(main())
