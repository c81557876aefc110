#!/usr/bin/env python3
"""Agent sessions end to end (PROTOCOL.md §4 `session.*`, §7): the real agent binary, the real
tmux, and a fake `claude`/`codex` found through the login shell's profile.

What a host's `ssh -t ... machine-agent session attach ...` does is played inside an outer tmux
(`tmux -L outer`), whose pane is the SSH connection's terminal. Every tmux server of a test lives
under its own TMUX_TMPDIR, and HOME is a temporary directory, so nothing of the machine's own
tmux or ~/.ssh is touched. The daemon asks tmux through `--tmux` (a script that sets the same
TMUX_TMPDIR): the only test-only seam; everything else is the product's path.

Run: python3 test_sessions.py --agent PATH [unittest args]   (ctest runs it as `agent_sessions`)
"""
import datetime
import functools
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_agent as ta  # noqa: E402  (the harness: Agent, Client, AgentTest)
import test_secrets as ts  # noqa: E402  (the base profile's direnv function)

TMUX = shutil.which("tmux")

FAKE_AGENT = r"""#!/bin/sh
# A stand-in for the agent CLI: a banner, then one answer per line typed.
echo "FAKE-@KIND@ pid=$$ sock=${SSH_AUTH_SOCK-<unset>} pwd=$(pwd -P)"
echo "$$" >> "$HOME/fake-starts"
while IFS= read -r line; do
  case "$line" in
    exit\ *) exit "${line#exit }" ;;
    sock) echo "sock-> $(readlink "$SSH_AUTH_SOCK" 2>/dev/null || echo none)" ;;
    env) for n in API_TOKEN GH_TOKEN CLAUDE_CODE_OAUTH_TOKEN; do eval "echo \"env $n=\${$n-<unset>}\""; done ;;
    *) echo "echo: $line" ;;
  esac
done
"""


# The harness's wait, polling a little less often: most conditions here ask tmux.
wait_until = functools.partial(ta.wait_until, interval=0.05)
is_gone = ta.is_gone


def rfc3339(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def parent_of(pid):
    return int(ta.read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[1])


class SessionTest(ta.AgentTest):
    def setUp(self):
        super().setUp()
        self.home = os.path.join(self.tmp, "home")
        self.bin = os.path.join(self.tmp, "bin")
        self.tmux_dir = os.path.join(self.tmp, "tmux")
        for d in (self.home, self.bin, self.tmux_dir):
            os.makedirs(d)
        for kind in ("claude", "codex"):
            self.script(os.path.join(self.bin, kind), FAKE_AGENT.replace("@KIND@", kind.upper()))
        # The agent CLIs are found through the login shell's profile, as in a VM (npm -g, ~/.local/bin).
        with open(os.path.join(self.home, ".profile"), "w") as f:
            f.write(f'PATH="{self.bin}:$PATH"\n')
        self.tmux_wrapper = self.script(os.path.join(self.tmp, "tmux-for-agent"),
                                        f'#!/bin/sh\nTMUX_TMPDIR="{self.tmux_dir}" exec "{TMUX}" "$@"\n')
        self.outer_count = 0

    def tearDown(self):
        for args in (["-L", "outer", "kill-server"], ["kill-server"]):
            subprocess.run([TMUX, *args], env=self.tmux_env(), capture_output=True)
        for pid in self.fake_starts():  # the fake agents this test started, by pid: still them?
            try:
                if self.bin.encode() in ta.read_bytes(f"/proc/{pid}/cmdline"):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        super().tearDown()

    def script(self, path, text):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        return path

    def agent(self, extra=(), **kw):
        return super().agent(extra=["--tmux", self.tmux_wrapper, *extra], **kw)

    # --- tmux -----------------------------------------------------------------------------------

    def tmux_env(self):
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        env["TMUX_TMPDIR"] = self.tmux_dir
        return env

    def tmux(self, *args, check=True):
        """The inner tmux, the VM user's: the one `session attach` uses."""
        r = subprocess.run([TMUX, *args], env=self.tmux_env(), capture_output=True, text=True)
        if check:
            self.assertEqual(r.returncode, 0, f"tmux {args}: {r.stderr}")
        return r

    def outer(self, *args):
        return subprocess.run([TMUX, "-L", "outer", "-f", "/dev/null", *args], env=self.tmux_env(),
                              capture_output=True, text=True, check=True)

    def attach_command(self, name, agent="claude", directory=None, ssh_auth_sock=None, socket=None):
        env = ["env", "-u", "TMUX", "-u", "SSH_AUTH_SOCK", f"HOME={self.home}", f"TMUX_TMPDIR={self.tmux_dir}"]
        if ssh_auth_sock:
            env.append(f"SSH_AUTH_SOCK={ssh_auth_sock}")
        argv = [ta.AGENT, "session", "attach", "--name", name, "--agent", agent,
                "--dir", directory or self.tmp]
        if socket is not False:
            argv += ["--socket", socket or self.agents[0].socket]
        return env + argv

    def attach(self, name, **kw):
        """`ssh -t VM machine-agent session attach ...` in a new terminal: an outer tmux session
        (whose pane stays, dead, after its process exits). Returns the outer session's name."""
        self.outer_count += 1
        terminal = f"t{self.outer_count}"
        # The outer tmux's own command line: an argument ending in ';' would end its command.
        command = [a[:-1] + "\\;" if a.endswith(";") else a for a in self.attach_command(name, **kw)]
        self.outer("new-session", "-d", "-s", terminal, "-x", "200", "-y", "40", "--",
                   *command, ";", "set-option", "-t", f"={terminal}:",
                   "remain-on-exit", "on")
        return terminal

    def terminal_text(self, terminal):
        """What the terminal shows, with its scrollback."""
        return self.outer("capture-pane", "-p", "-J", "-S", "-", "-t", f"={terminal}:").stdout

    def terminal_closed(self, terminal):
        """True once the terminal's process (the inner tmux client) has gone: its terminal is
        closed. (Not its exit status: the outer tmux sometimes leaves that child unreaped.)"""
        r = self.outer("display-message", "-p", "-t", f"={terminal}:", "#{pane_dead}")
        return r.stdout.strip() == "1"

    def pane_text(self, name):
        """The screen of session `name` ("" while it does not exist yet)."""
        return self.tmux("capture-pane", "-p", "-J", "-t", f"={name}:", check=False).stdout

    def has_session(self, name):
        return self.tmux("has-session", "-t", f"={name}", check=False).returncode == 0

    def banner(self, name):
        """The fake agent's banner in session `name`: {pid, sock, pwd}."""
        m = wait_until(lambda: re.search(r"FAKE-\w+ pid=(\d+) sock=(\S+) pwd=(.*)", self.pane_text(name)),
                       what=f"the fake agent's banner in {name}")
        return {"pid": int(m.group(1)), "sock": m.group(2), "pwd": m.group(3).rstrip()}

    def fake_starts(self):
        try:
            return [int(x) for x in ta.read_text(os.path.join(self.home, "fake-starts")).split()]
        except OSError:
            return []

    # --- the daemon -----------------------------------------------------------------------------

    def sessions(self, a):
        c = a.client()
        r = c.call("session.list")
        c.close()
        a.clients.remove(c)
        self.assertEqual(r["type"], "result", r)
        return {s["name"]: s for s in r["sessions"]}

    def wait_attached(self, a, name, count):
        """Session `name` as listed, once it has `count` attached clients."""
        def listed():
            s = self.sessions(a).get(name)
            return s if s and s["attached"] == count else None
        return wait_until(listed, what=f"{name} with {count} attached clients")

    def events(self, a, prefix="session."):
        return ta.journal_events(a, 0, (prefix,))

    def wait_event(self, a, event, **fields):
        def found():
            for e in self.events(a):
                if e["event"] == event and all(e.get(k) == v for k, v in fields.items()):
                    return e
            return None
        return wait_until(found, what=f"{event} {fields}")


class Lifecycle(SessionTest):
    def test_attach_detach_reattach_one_agent_process(self):
        a = self.agent()
        project = os.path.join(self.tmp, "code", "repo")
        os.makedirs(project)
        t1 = self.attach("work", directory=project)
        b = self.banner("work")
        self.assertEqual(b["pwd"], project)
        # What `attach` exec'd (argv, no shell): the process of the SSH connection's terminal.
        client = int(self.outer("display-message", "-p", "-t", f"={t1}:", "#{pane_pid}").stdout)
        self.assertEqual(ta.read_text(f"/proc/{client}/cmdline").split("\0")[:-1],
                         ["tmux", "-u", "new-session", "-A", "-s", "work", "-c", project, "--", os.path.realpath(ta.AGENT),
                          "session", "run", "--name", "work", "--agent", "claude", "--socket", a.socket,
                          ";", "set-option", "-w", "-t", "=work:", "remain-on-exit", "off"])
        self.assertEqual(b["sock"], "<unset>")  # no agent forwarding: no SSH_AUTH_SOCK at all
        s = self.wait_attached(a, "work", 1)
        self.assertEqual((s["agent"], s["user"]), ("claude", ta.ME.pw_name))
        self.assertEqual(s["pid"], parent_of(b["pid"]))  # the wrapper, the agent CLI's parent
        self.assertRegex(s["started_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.tmux("send-keys", "-t", "=work:", "hello there", "Enter")
        wait_until(lambda: "echo: hello there" in self.pane_text("work"), what="the echo")

        # Detach (C-b d typed in the terminal): the client, i.e. the SSH connection's command,
        # ends; the agent runs on.
        self.outer("send-keys", "-t", f"={t1}:", "C-b", "d")
        wait_until(lambda: self.terminal_closed(t1), what="the client to end")
        self.assertIn("[detached (from session work)]", self.terminal_text(t1))
        self.assertFalse(is_gone(b["pid"]))
        self.assertEqual(self.wait_attached(a, "work", 0)["pid"], s["pid"])

        # Attach again, from two terminals: the same session, the same agent process.
        self.attach("work", directory=project)
        self.wait_attached(a, "work", 1)
        self.attach("work", directory="/")
        s2 = self.wait_attached(a, "work", 2)
        self.assertEqual((s2["pid"], s2["started_at"]), (s["pid"], s["started_at"]))
        self.assertEqual(self.fake_starts(), [b["pid"]])
        self.assertEqual(self.banner("work")["pid"], b["pid"])
        self.assertIn("echo: hello there", self.terminal_text("t3"))  # the screen as it was
        self.assertEqual([l for l in self.tmux("list-sessions", "-F", "#{session_name}").stdout.split()], ["work"])

        started = [e for e in self.events(a) if e["event"] == "session.started"]
        self.assertEqual(len(started), 1)
        e = started[0]
        self.assertEqual((e["name"], e["agent"], e["user"], e["pid"]), ("work", "claude", ta.ME.pw_name, s["pid"]))
        self.assertTrue(e["tty"].startswith("/dev/pts/"))
        self.assertEqual([e for e in self.events(a) if e["event"] == "session.ended"], [])

        # The same listing from a shell in the VM.
        r = subprocess.run([ta.AGENT, "session", "list", "--socket", a.socket], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, f"work\tclaude\t{s['pid']}\t2\t{s['started_at']}\n")

    def test_agent_exit_ends_the_session_even_with_remain_on_exit(self):
        """The exit code is reported; tmux drops the session though the user's tmux.conf keeps
        dead panes. A 64-character name is a name."""
        with open(os.path.join(self.home, ".tmux.conf"), "w") as f:
            f.write("set -g remain-on-exit on\n")
        a = self.agent()
        name = "N" * 63 + "9"
        t1 = self.attach(name, agent="codex")
        b = self.banner(name)
        self.assertEqual(self.wait_attached(a, name, 1)["agent"], "codex")
        self.tmux("send-keys", "-t", f"={name}:", "exit 3", "Enter")
        e = self.wait_event(a, "session.ended", name=name)
        self.assertEqual((e["reason"], e["exit_code"], e["agent"]), ("exit", 3, "codex"))
        self.assertNotIn("signal", e)
        self.assertIsInstance(e["duration_ms"], int)
        wait_until(lambda: not self.has_session(name), what="the tmux session to end")
        self.assertTrue(is_gone(b["pid"]))
        self.assertEqual(self.sessions(a), {})
        wait_until(lambda: self.terminal_closed(t1), what="the client to end")

    def test_killing_the_agent_ends_the_session_with_its_signal(self):
        a = self.agent()
        self.attach("k")
        b = self.banner("k")
        wrapper = self.wait_attached(a, "k", 1)["pid"]
        os.kill(b["pid"], signal.SIGTERM)
        e = self.wait_event(a, "session.ended", name="k")
        self.assertEqual((e["reason"], e["signal"], e["pid"]), ("signal", signal.SIGTERM, wrapper))
        self.assertNotIn("exit_code", e)
        wait_until(lambda: not self.has_session("k"), what="the tmux session to end")
        wait_until(lambda: is_gone(wrapper), what="the wrapper to exit")

    def test_sigkill_of_the_wrapper_is_a_lost_session(self):
        a = self.agent()
        self.attach("lost")
        b = self.banner("lost")
        wrapper = self.wait_attached(a, "lost", 1)["pid"]
        os.kill(wrapper, signal.SIGKILL)
        e = self.wait_event(a, "session.ended", name="lost")
        self.assertEqual((e["reason"], e["pid"], e["agent"]), ("lost", wrapper, "claude"))
        self.assertNotIn("exit_code", e)
        self.assertNotIn("signal", e)
        self.assertEqual(self.sessions(a), {})
        # The pane died with its process: the agent CLI got the terminal's hangup.
        wait_until(lambda: is_gone(b["pid"]), what="the fake agent to go")
        wait_until(lambda: not self.has_session("lost"), what="the tmux session to end")

    def test_signals_to_the_wrapper_reach_the_agent(self):
        a = self.agent()
        self.attach("sig")
        b = self.banner("sig")
        wrapper = self.wait_attached(a, "sig", 1)["pid"]
        os.kill(wrapper, signal.SIGHUP)
        e = self.wait_event(a, "session.ended", name="sig")
        self.assertEqual((e["reason"], e["signal"]), ("signal", signal.SIGHUP))
        self.assertTrue(is_gone(b["pid"]))

    def test_terminal_signals_go_to_the_agent_alone(self):
        """The agent CLI has the terminal's foreground: Ctrl-Z does not hang the pane (it is
        continued), Ctrl-C reaches it and not the wrapper."""
        a = self.agent()
        self.attach("tty")
        b = self.banner("tty")
        wrapper = self.wait_attached(a, "tty", 1)["pid"]
        self.tmux("send-keys", "-t", "=tty:", "C-z")
        # The terminal took it (it echoes ^Z as it sends SIGTSTP to its foreground, the agent CLI);
        # a stopped agent that nobody continues reads nothing more, so the echo below never comes.
        wait_until(lambda: "^Z" in self.pane_text("tty"), what="the terminal to take the Ctrl-Z")
        self.tmux("send-keys", "-t", "=tty:", "still here", "Enter")
        wait_until(lambda: "echo: still here" in self.pane_text("tty"), what="the agent to go on after Ctrl-Z")
        self.tmux("send-keys", "-t", "=tty:", "C-c")
        e = self.wait_event(a, "session.ended", name="tty")
        self.assertEqual((e["reason"], e["signal"], e["pid"]), ("signal", signal.SIGINT, wrapper))
        self.assertTrue(is_gone(b["pid"]))


class Validation(SessionTest):
    def test_bad_names_exit_2_and_start_nothing(self):
        a = self.agent()
        env = self.tmux_env()
        env["HOME"] = self.home
        bad = ["a;b", "$(x)", "..", "", "a" * 65, "a b", "a.b", "a:b", "-x", "a/b", "é", "x\n", "#{pane_id}", "=x",
               "\x1b]0;pwned\x07"]
        for name in bad:
            for verb in ("attach", "run"):
                argv = [ta.AGENT, "session", verb, "--name", name, "--agent", "claude", "--socket", a.socket]
                if verb == "attach":
                    argv += ["--dir", self.tmp]
                r = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                self.assertEqual(r.returncode, 2, f"{verb} {name!r}: {r.stderr}")
                self.assertIn("invalid session name", r.stderr)
                self.assertNotRegex(r.stderr, "[\x00-\x08\x0b-\x1f]")  # echoed input cannot drive the terminal
        for argv in (["attach", "--name", "ok", "--agent", "bash"], ["attach", "--agent", "claude"],
                     ["run", "--name", "ok"], ["attach", "--name", "ok", "--agent", "claude", "--bogus"],
                     ["frobnicate"], []):
            r = subprocess.run([ta.AGENT, "session", *argv], env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, f"{argv}: {r.stderr}")
        self.assertEqual(self.fake_starts(), [])
        self.assertFalse(os.path.exists(os.path.join(self.tmux_dir, f"tmux-{os.getuid()}", "default")))
        self.assertEqual(self.events(a), [])

    def test_directory_is_taken_literally_or_falls_back_to_home(self):
        a = self.agent()
        pwned = os.path.join(self.tmp, "PWNED")
        weird = os.path.join(self.tmp, f"x#(touch {pwned})#{{pane_id}} d;")
        os.makedirs(weird)
        self.attach("odd", directory=weird)
        self.assertEqual(self.banner("odd")["pwd"], weird)
        self.assertFalse(os.path.exists(pwned))

        os.makedirs(os.path.join(self.home, "code", "repo"))  # what the host sends: relative to $HOME
        self.attach("rel", directory="code/repo")
        self.assertEqual(self.banner("rel")["pwd"], os.path.join(self.home, "code", "repo"))

        # A missing directory: the note is in the session's own screen, above the agent CLI's
        # banner, where the user looks. (Not on the terminal before tmux starts: tmux's screen
        # hides it at once, and the tmux client's TCOFLUSH as it starts could even drop it.)
        missing = os.path.join(self.tmp, f"missing #(touch {pwned})#{{pane_id}} d;")
        t = self.attach("nodir", directory=missing)
        self.assertEqual(self.banner("nodir")["pwd"], self.home)
        screen = self.pane_text("nodir")
        note = f"machine-agent session: '{missing}' is not a directory: the session starts in {self.home}\n"
        self.assertIn(note, screen)
        self.assertLess(screen.index(note), screen.index("FAKE-CLAUDE"))
        self.assertFalse(os.path.exists(pwned))
        # On the terminal (tmux draws the screen row by row: compared without the line breaks),
        # and again on the next attach: the session's screen keeps it.
        squeezed = functools.partial(re.sub, r"\s", "")
        wait_until(lambda: squeezed(note) in squeezed(self.terminal_text(t)), what="the note on the terminal")
        self.tmux("detach-client", "-s", "=nodir")
        wait_until(lambda: self.terminal_closed(t), what="the client to end")
        t2 = self.attach("nodir", directory=missing)
        wait_until(lambda: squeezed(note) in squeezed(self.terminal_text(t2)), what="the note on reattaching")
        self.assertEqual(set(self.sessions(a)), {"odd", "rel", "nodir"})
        self.assertEqual(len(self.fake_starts()), 3)


class AgentSocket(SessionTest):
    def test_symlink_follows_the_last_connection_and_goes_without_forwarding(self):
        a = self.agent()
        link = os.path.join(self.home, ".ssh", "agent.sock")
        first = os.path.join(self.tmp, "ssh-AAAA", "agent.1")
        second = os.path.join(self.tmp, "ssh-BBBB", "agent.2")
        t1 = self.attach("git", ssh_auth_sock=first)
        b = self.banner("git")
        self.assertEqual(b["sock"], link)  # the stable path, never the connection's own
        self.assertEqual(os.readlink(link), first)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(link)).st_mode), 0o700)
        self.tmux("detach-client", "-s", "=git")
        wait_until(lambda: self.terminal_closed(t1), what="the client to end")

        # A new connection: the running session now reaches the new agent.
        self.attach("git", ssh_auth_sock=second)
        self.wait_attached(a, "git", 1)
        self.assertEqual(os.readlink(link), second)
        self.tmux("send-keys", "-t", "=git:", "sock", "Enter")
        wait_until(lambda: f"sock-> {second}" in self.pane_text("git"), what="the refreshed socket")
        self.assertEqual(os.listdir(os.path.dirname(link)), ["agent.sock"])  # no temporary left

        # A connection without forwarding: the link goes, and a new session gets no socket.
        self.tmux("detach-client", "-s", "=git")
        self.attach("git")
        self.wait_attached(a, "git", 1)
        self.assertFalse(os.path.lexists(link))
        self.attach("plain")
        self.assertEqual(self.banner("plain")["sock"], "<unset>")
        self.assertEqual(len(self.fake_starts()), 2)


class Daemon(SessionTest):
    def test_registration_rules(self):
        a = self.agent()
        hello = a.client().call("hello")
        self.assertTrue({"session.register", "session.end", "session.list"} <= set(hello["capabilities"]))
        c = a.client()
        r = c.call("session.register", name="raw", agent="claude", pid=4242, tty="/dev/pts/9")
        self.assertEqual(r, {"v": 1, "id": r["id"], "type": "result", "name": "raw"})
        self.assertEqual(c.call("session.register", name="raw2", agent="claude", pid=1)["code"], "bad_request")
        other = a.client()
        r = other.call("session.register", name="raw", agent="codex", pid=4343)
        self.assertEqual(r["code"], "busy")
        self.assertIn("already registered", r["message"])
        for bad in ({"name": "a.b", "agent": "claude", "pid": 1}, {"name": "x", "agent": "vim", "pid": 1},
                    {"name": "x", "agent": "claude", "pid": 0}, {"name": "x", "agent": "claude"},
                    {"name": "x" * 65, "agent": "claude", "pid": 1}):
            self.assertEqual(other.call("session.register", **bad)["code"], "bad_request", bad)
        self.assertEqual(other.call("session.end", exit_code=0, duration_ms=1)["code"], "not_found")
        self.assertEqual(c.call("session.end", exit_code=0, signal=9, duration_ms=1)["code"], "bad_request")

        s = self.sessions(a)["raw"]  # registered, no tmux session of that name: 0 attached
        self.assertEqual((s["pid"], s["attached"], s["user"]), (4242, 0, ta.ME.pw_name))
        self.assertEqual(c.call("session.end", signal=15, duration_ms=1234)["type"], "result")
        self.assertEqual(self.sessions(a), {})
        # The name is free again; a registration whose connection closes is lost.
        self.assertEqual(other.call("session.register", name="raw", agent="codex", pid=4343)["type"], "result")
        other.close()
        e = self.wait_event(a, "session.ended", name="raw", pid=4343)
        self.assertEqual(e["reason"], "lost")
        ended = [e for e in self.events(a) if e["event"] == "session.ended"]
        self.assertEqual((ended[0]["reason"], ended[0]["signal"], ended[0]["duration_ms"]), ("signal", 15, 1234))
        started = [e for e in self.events(a) if e["event"] == "session.started"]
        self.assertEqual([(e["name"], e["pid"], e.get("tty")) for e in started],
                         [("raw", 4242, "/dev/pts/9"), ("raw", 4343, None)])

    def test_wrappers_do_not_use_up_the_client_limit(self):
        a = self.agent(extra=["--max-clients", "2"])
        for i in range(3):  # one after the other: each is a plain client until it registers
            h = a.client()
            self.assertEqual(h.call("session.register", name=f"s{i}", agent="claude", pid=100 + i)["type"], "result")
        plain = [a.client(), a.client()]  # two clients still fit, a third does not
        for c in plain:
            self.assertEqual(c.call("hello")["type"], "result")
        self.assertEqual(len(plain[0].call("session.list")["sessions"]), 3)
        m = a.client().next()
        self.assertEqual((m["type"], m["code"]), ("error", "too_many_clients"))

    def test_session_run_without_tmux_or_terminal(self):
        """The pane's command on its own: exit status, events, the login shell's PATH."""
        a = self.agent()
        env = self.tmux_env()
        env["HOME"] = self.home
        env["SSH_AUTH_SOCK"] = "/nonexistent/agent"  # not forwarded through ~/.ssh/agent.sock: dropped
        r = subprocess.run([ta.AGENT, "session", "run", "--name", "bare", "--agent", "claude", "--socket", a.socket],
                           input="hi\nexit 5\n", env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertIn("sock=<unset>", r.stdout)
        self.assertIn("echo: hi", r.stdout)
        self.assertEqual(r.stderr, "")
        e = self.wait_event(a, "session.ended", name="bare")
        self.assertEqual((e["reason"], e["exit_code"]), ("exit", 5))

    def test_unreachable_daemon_then_back(self):
        """The session runs without the daemon; once it is back the session is registered, and
        a daemon restart does not lose it."""
        a = self.agent()
        a.stop()
        self.attach("early")
        b = self.banner("early")
        self.assertIn("the machine agent is not reachable", self.pane_text("early"))
        a.start()
        s = self.wait_attached(a, "early", 1)
        self.assertEqual(s["pid"], parent_of(b["pid"]))
        started = self.wait_event(a, "session.started", name="early")
        a.stop()
        a.start()
        s2 = self.wait_attached(a, "early", 1)
        # The session's own start, not the re-registration's (within the clocks' jitter).
        self.assertLess(abs(rfc3339(s2["started_at"]) - rfc3339(s["started_at"])), 0.5)
        self.tmux("send-keys", "-t", "=early:", "exit 0", "Enter")
        e = self.wait_event(a, "session.ended", name="early")
        self.assertEqual(e["reason"], "exit")
        names = [x["event"] for x in self.events(a)]
        self.assertEqual(names, ["session.started", "session.ended"])  # once each, across restarts
        self.assertEqual(started["pid"], s["pid"])

    def test_a_hanging_tmux_does_not_hang_the_listing(self):
        pids = os.path.join(self.tmp, "slow-tmux.pids")
        slow = self.script(os.path.join(self.tmp, "slow-tmux"),
                           f"#!/bin/sh\necho $$ >> {pids}\nhead -c 3000000 /dev/zero | tr '\\0' 'x'\nexec sleep 30\n")
        a = self.agent(extra=["--tmux", slow])
        c = a.client()
        self.assertEqual(c.call("session.register", name="s", agent="claude", pid=7)["type"], "result")
        t0 = time.monotonic()
        s = self.sessions(a)
        self.assertLess(time.monotonic() - t0, 4)
        self.assertEqual(s["s"]["attached"], 0)
        self.assertIn("took longer than", a.read_log())
        self.assertEqual(len(ta.pids_in(pids)), 1)
        # Cancelled with its client: the tmux it started is killed at once.
        lister = a.client()
        rid = lister.request("session.list")
        tmux = self.stop_at_exit(wait_until(lambda: ta.pids_in(pids)[1:], what="the listing's tmux to start")[0])
        lister.call("cancel", target=rid)
        self.assertEqual(lister.final(rid)[-1]["type"], "result")
        wait_until(lambda: is_gone(tmux), 5, "the cancelled listing's tmux to be killed")
        # By the cancel, not by the time limit (which would have said so, as it did above).
        self.assertEqual(a.read_log().count("took longer than"), 1)
        self.assertEqual(a.client().call("hello")["type"], "result")


def credentials_profile_script():
    """/etc/profile.d/machine-credentials.sh as the base profile's step agent-credentials writes it."""
    with open(ts.BASE_PROFILE, "rb") as f:
        steps = tomllib.load(f)["step"]
    run = [st for st in steps if st["name"] == "agent-credentials"][0]["run"]
    return run.split("<<'MACHINE_CREDENTIALS_SH'\n", 1)[1].split("\nMACHINE_CREDENTIALS_SH\n", 1)[0] + "\n"


class Environment(SessionTest):
    """What the agent CLI's environment holds (issue 17 lines 2-3): the repo's secrets, loaded by
    direnv as an interactive shell in the repo would load them, and the agents' logins, exported
    by the login shell's profile; gone once their files are."""

    def setUp(self):
        super().setUp()
        if not shutil.which("direnv"):
            self.skipTest("needs direnv")
        self.secrets = os.path.join(self.tmp, "secrets")  # the tmpfs in a VM; any directory here
        os.makedirs(self.secrets, mode=0o700)
        ts.install_direnv_function(self.home)
        profile_d = os.path.join(self.tmp, "machine-credentials.sh")
        with open(profile_d, "w") as f:
            f.write(credentials_profile_script())
        with open(os.path.join(self.home, ".profile"), "a") as f:
            f.write(f'. "{profile_d}"\n')
        self.repo = os.path.join(self.home, "code", "web")
        os.makedirs(self.repo)
        with open(os.path.join(self.repo, ".envrc"), "w") as f:
            f.write("use op_env web\n")
        self.write_set("web", "API_TOKEN", "api-'quoted' $value")
        self.write_set("machine-cred-gh-0123456789abcdef", "GH_TOKEN", "ghp_" + "a" * 36)

    def write_set(self, name, variable, value):
        # What the agent writes (secrets.render): export NAME='value', each ' as '\''.
        with open(os.path.join(self.secrets, name + ".env"), "w") as f:
            f.write("# set %s\nexport %s='%s'\n" % (name, variable, value.replace("'", "'\\''")))

    def direnv(self, *args):
        env = {**self.tmux_env(), "HOME": self.home}
        env.pop("XDG_CONFIG_HOME", None), env.pop("XDG_DATA_HOME", None)
        return subprocess.run(["direnv", *args], cwd=self.repo, env=env, capture_output=True, text=True, timeout=30)

    def agent_env(self, directory):
        """The fake agent's view, through `session run` in `directory` (the pane's)."""
        a = self.agents[0] if self.agents else self.agent()
        env = {**self.tmux_env(), "HOME": self.home, "MACHINE_SECRETS_DIR": self.secrets}
        for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "API_TOKEN", "GH_TOKEN", "DIRENV_DIR", "DIRENV_DIFF"):
            env.pop(k, None)
        r = subprocess.run([ta.AGENT, "session", "run", "--name", "envcheck", "--agent", "claude", "--socket", a.socket],
                           cwd=directory, input="env\nexit 0\n", env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return dict(line[4:].split("=", 1) for line in r.stdout.splitlines() if line.startswith("env ")), r.stderr

    def test_the_agent_has_the_repos_secrets_and_the_logins(self):
        self.assertEqual(self.direnv("allow", ".").returncode, 0)
        seen, err = self.agent_env(self.repo)
        self.assertEqual(seen["API_TOKEN"], "api-'quoted' $value", err)
        self.assertEqual(seen["GH_TOKEN"], "ghp_" + "a" * 36)
        # `machine secrets --clear` removes the set; the next session starts without it (the
        # .envrc's use op_env says so on the pane), the login stays.
        os.unlink(os.path.join(self.secrets, "web.env"))
        seen, err = self.agent_env(self.repo)
        self.assertEqual(seen["API_TOKEN"], "<unset>")
        self.assertIn("secrets for web are not rendered", err)
        self.assertEqual(seen["GH_TOKEN"], "ghp_" + "a" * 36)
        # `machine logout gh` removes the login's set: gone from the next session.
        os.unlink(os.path.join(self.secrets, "machine-cred-gh-0123456789abcdef.env"))
        seen, _ = self.agent_env(self.repo)
        self.assertEqual((seen["API_TOKEN"], seen["GH_TOKEN"]), ("<unset>", "<unset>"))

    def test_an_envrc_not_allowed_is_not_loaded_and_says_so(self):
        seen, err = self.agent_env(self.repo)
        self.assertEqual(seen["API_TOKEN"], "<unset>")
        self.assertIn("is blocked", err)
        self.assertEqual(seen["GH_TOKEN"], "ghp_" + "a" * 36)  # the profile's part does not depend on it
        # Outside the repo: no .envrc, no direnv message at all.
        seen, err = self.agent_env(self.tmp)
        self.assertEqual((seen["API_TOKEN"], err), ("<unset>", ""))


def main():
    return ta.run_suite("agent_sessions", lambda: None if TMUX else "needs tmux")


if __name__ == "__main__":
    sys.exit(main())
