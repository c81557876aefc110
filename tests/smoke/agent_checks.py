"""Smoke checks for agent sessions and SSH agent forwarding (used by tests/smoke/run).

The host side runs under a private tmux server (send-keys, capture-pane), as a user would:
`machine claude` attaches, detaching leaves the agent running, running it again reattaches to
the same session. The agent CLI is replaced in the VM by a small program named `claude` in
~/.local/bin (no login exists here); the session handling around it is the product's own.
Forwarding: a real ssh-agent on the host with two keys; `agent_keys` naming one; then
`forward_agent = false`.
"""
import json
import os
import secrets
import shlex
import subprocess
import time

from harness import Watch

# Prints a banner with its pid and agent socket, then echoes lines: enough to see which process
# a terminal is attached to.
FAKE_CLAUDE = r"""#!/bin/sh
echo "FAKE-CLAUDE pid=$$ user=$(id -un) sock=${SSH_AUTH_SOCK:-none} dir=$(pwd)"
while IFS= read -r line; do echo "got: $line"; done
"""


class HostTmux:
    """A private tmux server on the host (its own socket), started with the smoke's environment."""

    def __init__(self, env):
        self.socket = "machine-smoke-" + secrets.token_hex(4)
        self.env = env

    def tmux(self, *args, check=False):
        return subprocess.run(["tmux", "-L", self.socket] + list(args), env=self.env, capture_output=True,
                              text=True, check=check)

    def start(self, window, command):
        """Runs `command` (argv) in a new window; its exit status is printed when it ends."""
        line = " ".join(shlex.quote(a) for a in command) + '; echo "EXIT=$?"; sleep 3600'
        if self.tmux("has-session", "-t", "smoke").returncode != 0:
            self.tmux("new-session", "-d", "-s", "smoke", "-n", window, "-x", "160", "-y", "40", line, check=True)
        else:
            self.tmux("new-window", "-t", "smoke", "-n", window, line, check=True)

    def screen(self, window):
        return self.tmux("capture-pane", "-p", "-t", "smoke:" + window).stdout

    def wait_for(self, window, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.screen(window):
                return True
            time.sleep(0.05)
        return False

    def keys(self, window, *keys):
        self.tmux("send-keys", "-t", "smoke:" + window, *keys)

    def kill(self):
        self.tmux("kill-server")


def sessions(args, env):
    r = subprocess.run([args.machine, "sessions", args.name, "--json"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stdout + r.stderr
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()], r.stdout


def count_fake_agents(guest):
    rc, out, _ = guest.run("sh", "-c", "pgrep -c -f '^/bin/sh /home/dev/.local/bin/claude' || true")
    return int(out.strip() or "0")


def install_fake_claude(guest):
    rc, _, err = guest.run("sh", "-c", 'mkdir -p "$HOME/.local/bin" && printf %s "$1" > "$HOME/.local/bin/claude" '
                                       '&& chmod +x "$HOME/.local/bin/claude"', "sh", FAKE_CLAUDE)
    return rc == 0, err


def measure_attach(tap, args, env, guest, label):
    """`machine claude` timed from the command to the agent's screen, first attach and reattach,
    in a session of its own (ended after). Run before any `machine login`, it is the figure that
    check_sessions' (with the logins delivered) compares against in the same run."""
    installed, err = install_fake_claude(guest)
    if not installed:
        tap.note("attach timing %s: the stand-in claude was not installed: %s" % (label, err.strip()[:300]))
        return
    host = HostTmux(env)
    command = [args.machine, "claude", args.name, "--session", "timing"]
    try:
        times = []
        for window in ("timing1", "timing2"):
            t0 = time.monotonic()
            host.start(window, command)
            if not host.wait_for(window, "FAKE-CLAUDE", 60):
                tap.note("attach timing %s: no agent on the screen: %s" % (label, host.screen(window)[-500:]))
                return
            times.append(time.monotonic() - t0)
            if window == "timing1":
                host.keys(window, "C-b", "d")
                host.wait_for(window, "EXIT=", 20)
        host.keys("timing2", "C-d")  # end of input: the stand-in exits and the session ends
        host.wait_for("timing2", "EXIT=", 20)
        tap.note("FIGURE claude_attach_s %s first=%.2f reattach=%.2f" % (label, times[0], times[1]))
    finally:
        host.kill()
        guest.run("tmux", "kill-session", "-t", "=timing")  # gone already, unless C-d was lost


def check_sessions(tap, args, env, guest):
    installed, err = install_fake_claude(guest)
    tap.result(installed, "a stand-in claude program is installed in the VM", err)
    host = HostTmux(env)
    try:
        t0 = time.monotonic()
        host.start("first", [args.machine, "claude", args.name])
        attached = host.wait_for("first", "FAKE-CLAUDE", 60)
        first_attach = time.monotonic() - t0
        tap.result(attached, "machine claude starts the agent in a tmux session and attaches (%.2fs)" % first_attach,
                   host.screen("first"))
        screen = host.screen("first")
        tap.result("user=dev " in screen, "the session runs as the VM user", screen)
        first_pid = banner_pid(screen)
        host.keys("first", "hello-from-host", "Enter")
        tap.result(host.wait_for("first", "got: hello-from-host", 20), "keys typed on the host reach the agent",
                   host.screen("first"))
        listed, raw = sessions(args, env)
        tap.result(listed is not None and len(listed) == 1 and listed[0]["name"] == "claude" and listed[0]["attached"],
                   "machine sessions lists the session, attached", raw)

        # Detach (ctrl-b d inside the VM's tmux): machine exits 0, the agent keeps running.
        host.keys("first", "C-b", "d")
        detached = host.wait_for("first", "EXIT=0", 20)
        tap.result(detached and count_fake_agents(guest) == 1, "detaching leaves the agent running (machine exits 0)",
                   host.screen("first"))
        listed, raw = sessions(args, env)
        tap.result(listed is not None and len(listed) == 1 and not listed[0]["attached"],
                   "machine sessions shows it detached", raw)

        # Reattach: the same session (the earlier output is still on its screen), no second agent.
        t0 = time.monotonic()
        host.start("second", [args.machine, "claude", args.name])
        host.wait_for("second", "FAKE-CLAUDE", 60)
        reattach = time.monotonic() - t0  # to the agent's screen, as measure_attach times it
        ok, diag = reattach_problems(host, "second", guest, first_pid)
        tap.result(ok, "machine claude again reattaches to the same session, no second agent (%.2fs)" % reattach, diag)
        tap.note("FIGURE claude_attach_s with credentials delivered first=%.2f reattach=%.2f (target < 1 s on a "
                 "running VM)" % (first_attach, reattach))
        host.start("third", [args.machine, "claude", args.name])
        host.wait_for("third", "got: hello-from-host", 30)
        listed, raw = sessions(args, env)
        tap.result(count_fake_agents(guest) == 1 and listed and listed[0].get("clients") == 2,
                   "a second machine claude at the same time joins the same session", raw)
        # One at a time: the second detach resizes the window under the other client. A detach
        # key the client did not act on within 15 s is sent once more, and said (ci6 saw one
        # client keep its blank, resized screen after two detaches sent back to back).
        detached = []
        for window in ("second", "third"):
            host.keys(window, "C-b", "d")
            if not host.wait_for(window, "EXIT=", 15):
                tap.note("%s: no detach 15 s after ctrl-b d; sending it again" % window)
                host.keys(window, "C-b", "d")
            detached.append(host.wait_for(window, "EXIT=0", 20))
        tap.result(all(detached), "both clients detach", host.screen("second") + host.screen("third"))

        # Control: the session ended behind the user's back (the promise broken), the same
        # reattach judgement must fail, naming the new agent it found.
        killed = guest.run("tmux", "kill-session", "-t", "=claude")
        if killed[0] != 0:
            tap.note("the control could not kill the session: %s" % (killed[2] or killed[1]).strip()[:300])
        host.start("fourth", [args.machine, "claude", args.name])
        ok, diag = reattach_problems(host, "fourth", guest, first_pid)
        tap.control("session persistence", "the session killed between detach and reattach", ok, diag,
                    ["the earlier output is not on the screen", "a different agent (pid "])
        host.keys("fourth", "C-b", "d")
        host.wait_for("fourth", "EXIT=", 20)

        # A second named session, seen by watch from start to end.
        watch = Watch(args, env, "watch-sessions.log")
        subscribed = watch.wait_subscribed(60)
        host.start("named", [args.machine, "claude", args.name, "--session", "review"])
        host.wait_for("named", "FAKE-CLAUDE", 60)
        host.keys("named", "C-d")  # end of input: the stand-in agent exits, the session ends

        def session_event(name):
            return lambda e: e.get("type") == "guest.event" and e.get("event") == name and e.get("name") == "review"
        started = watch.wait_for(session_event("session.started"), 30)
        ended = watch.wait_for(session_event("session.ended"), 30) and host.wait_for("named", "EXIT=", 20)
        watch.interrupt()
        kinds = [(e.get("event"), e.get("name")) for e in watch.events if e.get("type") == "guest.event"]
        tap.result(subscribed and started and ended, "watch shows a session starting and ending",
                   "\n".join(map(str, kinds)) + "\n" + watch.log_text()[-1500:])
        # machine ssh: the configured login shell (zsh by default). What is typed before the
        # shell is up waits in the terminal, as it would for a user typing ahead.
        host.start("shell", [args.machine, "ssh", args.name])
        host.keys("shell", "ps -o comm= -p $$ | sed s/^/LOGIN-SHELL=/", "Enter")
        tap.result(host.wait_for("shell", "LOGIN-SHELL=zsh", 30), "machine ssh lands in the configured shell (zsh)",
                   host.screen("shell"))
        host.keys("shell", "exit", "Enter")
        tap.result(host.wait_for("shell", "EXIT=0", 20), "leaving that shell ends machine ssh with exit 0",
                   host.screen("shell"))
        bad = subprocess.run([args.machine, "claude", args.name, "--session", "x;touch /tmp/pwned"], env=env,
                             capture_output=True, text=True)
        tap.result(bad.returncode == 2 and "invalid session name" in bad.stderr,
                   "a session name with shell metacharacters is refused (exit 2)", bad.stdout + bad.stderr)
    finally:
        host.kill()


def banner_pid(screen):
    """The pid in the stand-in agent's banner, or None."""
    for line in screen.splitlines():
        if line.startswith("FAKE-CLAUDE pid="):
            return line.split()[1].split("=", 1)[1]
    return None


def reattach_problems(host, window, guest, first_pid):
    """After `machine claude` in `window`: it must be the session from before (the agent whose
    banner said `first_pid`, its earlier output still on the screen) and the only agent."""
    if not host.wait_for(window, "FAKE-CLAUDE", 60):
        return False, "no agent on the screen:\n" + host.screen(window)
    problems = []
    # The whole screen is redrawn at attach: the earlier line comes with the banner or not at all.
    if not host.wait_for(window, "got: hello-from-host", 5):
        problems.append("the earlier output is not on the screen")
    pid = banner_pid(host.screen(window))
    if pid != first_pid:
        problems.append("a different agent (pid %s, the first was %s)" % (pid, first_pid))
    n = count_fake_agents(guest)
    if n != 1:
        problems.append("%d agents run in the VM (expected 1)" % n)
    return not problems, "\n".join(problems) + ("\n" + host.screen(window) if problems else "")


def add_key(workdir, agent_env, name):
    key = os.path.join(workdir, name)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], check=True)
    subprocess.run(["ssh-add", "-q", key], env=agent_env, check=True)
    fp = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", key + ".pub"], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    return key, fp


def sign_in_vm(guest, pub):
    """ssh-keygen -Y sign in the VM with the key whose public half is `pub` (through the agent)."""
    script = ('set -e; d=$(mktemp -d); printf %s "$1" > "$d/k.pub"; echo data > "$d/f"; '
              'ssh-keygen -q -Y sign -f "$d/k.pub" -n smoke "$d/f" && test -s "$d/f.sig"')
    return guest.run("sh", "-c", script, "sh", pub)


def fingerprint(pub_file):
    return subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", pub_file], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def check_forwarding(tap, guest, workdir, env):
    """The whole agent (no agent_keys): the VM sees the host's keys, and a commit it signs
    verifies on the host."""
    signing_pub = open(os.path.join(workdir, "signing.pub")).read().strip()
    signing_fp = fingerprint(os.path.join(workdir, "signing.pub"))
    other, other_fp = add_key(workdir, dict(os.environ, SSH_AUTH_SOCK=env["SSH_AUTH_SOCK"]), "other")
    rc, out, err = guest.run("ssh-add", "-l")
    tap.result(rc == 0 and signing_fp in out and other_fp in out,
               "without agent_keys the VM sees every key of the host's agent", out + err)
    # Control: the scope check, run while the VM has the whole agent (no filter), must fail.
    ok, diag = agent_scope_problems(guest, workdir, env)
    tap.control("scoped agent keys", "the whole agent forwarded (no agent_keys filter)", ok, diag,
                ["the VM sees the other key " + other_fp, "a signature with the other key worked"])

    # A commit signed in the VM verifies on the host, with the project's allowed_signers.
    script = ('set -e; d=$(mktemp -d); cd "$d"; git init -q; git commit -q --allow-empty -m host-verify; '
              'git cat-file commit HEAD')
    rc, commit, err = guest.run("bash", "-lc", script)
    repo = os.path.join(workdir, "verify")
    subprocess.run(["git", "init", "-q", repo], check=True)
    sha = subprocess.run(["git", "-C", repo, "hash-object", "-t", "commit", "-w", "--stdin"], input=commit,
                         capture_output=True, text=True).stdout.strip()
    signers = os.path.join(workdir, "allowed_signers")
    with open(signers, "w") as f:
        f.write("smoke@example.org %s\n" % signing_pub)
    verify = subprocess.run(["git", "-C", repo, "-c", "gpg.ssh.allowedSignersFile=" + signers, "verify-commit", sha],
                            capture_output=True, text=True)
    tap.result(rc == 0 and verify.returncode == 0 and 'Good "git" signature' in verify.stderr,
               "a commit signed in the VM verifies on the host (git verify-commit)", err + verify.stdout + verify.stderr)


def agent_keys_config(workdir):
    """The project lines that limit the VM to the signing key (applied at the VM's next start)."""
    return 'agent_keys = ["%s"]\n' % fingerprint(os.path.join(workdir, "signing.pub"))


def agent_scope_problems(guest, workdir, env):
    """What the VM can do with the host's agent beyond the signing key (`agent_keys` naming
    only it): see the other key, sign with it, or remove keys. Returns (ok, what it saw)."""
    signing_pub = open(os.path.join(workdir, "signing.pub")).read().strip()
    signing_fp = fingerprint(os.path.join(workdir, "signing.pub"))
    other_pub = open(os.path.join(workdir, "other.pub")).read().strip()
    other_fp = fingerprint(os.path.join(workdir, "other.pub"))
    problems = []
    rc, out, err = guest.run("ssh-add", "-l")
    if rc != 0 or signing_fp not in out:
        problems.append("the VM does not see the allowed key %s: %s" % (signing_fp, (out + err).strip()))
    if other_fp in out:
        problems.append("the VM sees the other key %s" % other_fp)
    rc, out, err = sign_in_vm(guest, signing_pub)
    if rc != 0:
        problems.append("a signature with the allowed key failed: " + (out + err).strip()[-300:])
    rc, out, err = sign_in_vm(guest, other_pub)
    if rc == 0:
        problems.append("a signature with the other key worked")
    return not problems, "\n".join(problems)


def check_agent_keys(tap, guest, workdir, env):
    """After the VM started with agent_keys naming the signing key (the host agent also holds
    `other`): the filter is all the VM can reach."""
    agent_env = dict(os.environ, SSH_AUTH_SOCK=env["SSH_AUTH_SOCK"])
    signing_fp = fingerprint(os.path.join(workdir, "signing.pub"))
    other_fp = fingerprint(os.path.join(workdir, "other.pub"))
    ok, diag = agent_scope_problems(guest, workdir, env)
    tap.result(ok, "agent_keys: the VM sees and signs with exactly the allowed key", diag)
    rc, out, err = guest.run("ssh-add", "-D")
    host_keys = subprocess.run(["ssh-add", "-l"], env=agent_env, capture_output=True, text=True).stdout
    tap.result(rc != 0 and signing_fp in host_keys and other_fp in host_keys,
               "agent_keys: ssh-add -D in the VM fails and the host's agent keeps both keys", out + err + host_keys)


def attach_for_stop(env, args):
    """A `machine claude` attached under host tmux, for a check that stops the VM under it."""
    host = HostTmux(env)
    host.start("attached", [args.machine, "claude", args.name])
    return host, host.wait_for("attached", "FAKE-CLAUDE", 60)


def check_no_agent(tap, guest):
    """After the VM restarted with forward_agent = false: no agent socket in the VM at all."""
    rc, out, err = guest.run("sh", "-c", 'echo "sock=${SSH_AUTH_SOCK:-none}"; ssh-add -l; echo "rc=$?"; '
                                         'find /tmp -type s -name "agent.*" 2>/dev/null | wc -l')
    tap.result("sock=none" in out and "rc=2" in out and out.strip().endswith("0"),
               "forward_agent = false: ssh-add -l in the VM finds no agent, no agent socket exists", out + err)


def check_stopped_while_attached(tap, host, attached):
    ended = host.wait_for("attached", "EXIT=255", 60)
    screen = host.screen("attached")
    tap.result(attached and ended and "stopped while you were attached" in screen,
               "the VM stopped while attached: machine claude says so and exits 255", screen)
    host.kill()


# ---- signed commits without the private key in the VM -------------------------------------------

def private_key_needles(key_path):
    """Byte strings that only a copy of the private key holds: a window of the key file's base64
    body (the part after the public key) and the raw 32-byte ed25519 seed."""
    import base64
    import struct
    text = open(key_path).read()
    body = "".join(l for l in text.splitlines() if l and not l.startswith("-----"))
    blob = base64.b64decode(body)
    magic = b"openssh-key-v1\0"
    assert blob.startswith(magic), "not an OpenSSH private key"
    pos = len(magic)

    def string():
        nonlocal pos
        n = struct.unpack(">I", blob[pos:pos + 4])[0]
        pos += 4 + n
        return blob[pos - n:pos]
    cipher, _, _ = string(), string(), string()
    assert cipher == b"none", "an encrypted key"
    pos += 4  # number of keys
    string()  # public key
    private = string()
    pos = 8  # within the private block: two check words, then type, public, private (seed + public)
    blob = private
    string()
    string()
    seed = string()[:32]
    # The base64 characters that encode the seed (aligned on 3-byte groups): in the key file
    # only, never in a public key's text.
    at = base64.b64decode(body).find(seed) // 3 * 4 + 4
    for line in (l for l in text.splitlines() if l and not l.startswith("-----")):
        if at < len(line):  # the file's own line holding it: the needle must not span a newline
            start = max(0, min(at, len(line) - 32))
            return [line[start:start + 32].encode(), seed]
        at -= len(line)
    raise AssertionError("the seed is not in the key's text")


# Walks the places a copied key would be, as root; "scanned N files" proves it ran to the end.
KEY_SCAN = r"""
import os, stat, sys
needles = [bytes.fromhex(h) for h in sys.argv[1:]]
skip = ("/var/lib/docker", "/var/lib/containerd", "/proc", "/sys", "/dev")
n = 0
for root in ("/home", "/root", "/tmp", "/var/tmp", "/etc", "/opt", "/srv", "/run", "/usr/local", "/var/lib", "/var/cache"):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.join(dirpath, d).startswith(skip)]
        for f in filenames:
            path = os.path.join(dirpath, f)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > (16 << 20):
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            n += 1
            if any(x in data for x in needles):
                print("found: " + path)
print("scanned %d files" % n)
"""


def private_key_problems(guest, needles):
    rc, out, err = guest.run("sudo", "-n", "python3", "-c", KEY_SCAN, *[n.hex() for n in needles], timeout=600)
    problems = ["the private key is in the VM: " + l[len("found: "):] for l in out.splitlines() if l.startswith("found: ")]
    if rc != 0 or "scanned " not in out:
        problems.append("could not check: the scan did not finish (rc=%d): %s" % (rc, (out + err)[-500:]))
    scanned = [l for l in out.splitlines() if l.startswith("scanned ")]
    return not problems, "\n".join(problems), scanned[0] if scanned else "?"


def check_private_key_absent(tap, guest, key_path):
    """Commits are signed in the VM through the forwarded agent: the signing key's private half
    is nowhere on the VM's disk or tmpfs. Control: a copy of it (file and raw seed) is found."""
    needles = private_key_needles(key_path)
    ok, diag, scanned = private_key_problems(guest, needles)
    tap.result(ok, "git-signing: the signing key's private half is not in the VM (%s)" % scanned, diag)
    copies = {"/home/dev/.config/smoke-stolen-key": open(key_path, "rb").read(), "/var/tmp/smoke-stolen-seed": needles[1]}
    for path, data in copies.items():
        guest.run("python3", "-c", "import sys; open(sys.argv[1], 'wb').write(bytes.fromhex(sys.argv[2]))",
                  path, data.hex())
    try:
        ok, diag, _ = private_key_problems(guest, needles)
        tap.control("signed commits, no private key in the VM", "the key file and its raw seed copied into the VM",
                    ok, diag, ["the private key is in the VM: " + p for p in copies])
    finally:
        guest.run("rm", "-f", *copies)
