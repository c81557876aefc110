"""Smoke checks for the agents' logins (issue 17): `machine login` on the host, delivered into
the VM's tmpfs as secret sets `machine-cred-<tool>-<id>` and exported by the login shell's
profile into agent sessions and shells.

The tokens are fake but well formed (no network here, and none would be wanted): what is checked
is what each CLI reads, offline. Claude Code: the agent session's own process has
CLAUDE_CODE_OAUTH_TOKEN (Claude Code reads it from its environment; proving the login itself
needs Anthropic's API). gh: `gh auth token` prints the token and `gh auth status` names GH_TOKEN
as its source (its check of the token against GitHub fails offline, which it reports as such).
Codex: OPENAI_API_KEY in a login shell (Codex reads it from its environment).
The values themselves are never printed: the VM computes sha256 of what it sees.
"""
import hashlib
import json
import os
import re
import secrets
import string
import subprocess
import time

import secrets_checks
from agent_checks import HostTmux

ALNUM = string.ascii_letters + string.digits


def fake_tokens():
    pick = lambda n: "".join(secrets.choice(ALNUM) for _ in range(n))  # noqa: E731
    return {
        "claude": ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-" + pick(80) + "-" + pick(12) + "AA"),
        "codex": ("OPENAI_API_KEY", "sk-proj-" + pick(120)),
        "gh": ("GH_TOKEN", "ghp_" + pick(36)),
    }


TOKENS = {}  # tool -> (variable, value): set by log_in, for the later checks and the leak scans


def needles():
    """The tokens as byte strings, for the leak scans (secrets_checks adds them to its own)."""
    return [v.encode() for _, v in TOKENS.values()]


def machine(args, env, *argv, stdin=None, timeout=300):
    t0 = time.monotonic()
    p = subprocess.run([args.machine] + list(argv), env=env, capture_output=True, text=True, timeout=timeout,
                       input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    return p, time.monotonic() - t0


HASH_ENV = ("import os,hashlib,json,sys\n"
            "print(json.dumps({k: hashlib.sha256(os.environb[k.encode()]).hexdigest() if k.encode() in os.environb "
            "else None for k in sys.argv[1:]}))")


def login_shell_hashes(guest, names):
    """sha256 of each variable as a login shell of the VM user sees it (None: not set)."""
    rc, out, err = guest.run("bash", "-lc", 'exec python3 -c "$0" "$@"', HASH_ENV, *names)
    try:
        return json.loads(out.strip().splitlines()[-1]), err
    except (ValueError, IndexError):
        return None, "rc=%d out=%r err=%r" % (rc, out[-500:], err[-1500:])


def said_delivered(text, tool):
    """Whether machine's `credentials: A, B delivered; ...` line names `tool` among those delivered."""
    return any(tool in [t.strip() for t in m.split(",")]
               for m in re.findall(r"credentials: ([a-z, ]+) delivered", text))


def want_hashes(tools):
    return {TOKENS[t][0]: hashlib.sha256(TOKENS[t][1].encode()).hexdigest() for t in tools}


def credential_files(guest):
    rc, out, err = guest.run("sudo", "-n", "sh", "-c",
                             "cd /run/machine-secrets 2>/dev/null && stat -c '%n %a %U' machine-cred-*.env 2>/dev/null;"
                             " findmnt -n -o FSTYPE /run/machine-secrets")
    return out.split("\n"), err


def log_in(tap, args, env, outputs):
    """Before the sessions checks (so their FIGURE claude_attach_s is with credentials delivered):
    the three fake logins, then `machine up` delivers them."""
    TOKENS.update(fake_tokens())
    for tool, (variable, value) in TOKENS.items():
        r, _ = machine(args, env, "login", tool, "--with-token", stdin=value + "\n")
        outputs += [r.stdout, r.stderr]
        tap.result(r.returncode == 0 and ("(%s, stored in" % variable) in r.stdout,
                   "machine login %s --with-token stores a well-formed token" % tool, r.stdout + r.stderr)
    # Line 6: a malformed token is refused and nothing is stored (the previous login is kept).
    r, _ = machine(args, env, "login", "gh", "--with-token", stdin="not a token\n")
    outputs += [r.stdout, r.stderr]
    st, _ = machine(args, env, "login", "--status", "--json")
    rows = {j.get("tool"): j for j in map(json.loads, st.stdout.splitlines()) if "tool" in j}
    tap.result(r.returncode == 2 and "nothing was stored" in r.stderr and rows.get("gh", {}).get("logged_in"),
               "a malformed token is refused (exit 2) and the previous login kept", r.stderr + st.stdout)

    up, took = machine(args, env, "up", args.name)
    outputs += [up.stdout, up.stderr]
    tap.result(up.returncode == 0 and "credentials: claude, codex, gh delivered" in up.stdout + up.stderr,
               "machine up says which logins it delivered (%.1fs)" % took, (up.stdout + up.stderr)[-2000:])


def check_credentials(tap, args, env, guest, outputs, write_project):
    """After the sessions checks: what each CLI sees, attach, not-allowed, failing source, logout,
    and the leak scans of the running VM and the host."""
    files, err = credential_files(guest)
    names = [l.split()[0] for l in files if l.startswith("machine-cred-")]
    modes = [l.split()[1:] for l in files if l.startswith("machine-cred-")]
    tap.result(sorted(n.split("-")[2] for n in names) == ["claude", "codex", "gh"] and
               all(m == ["600", "dev"] for m in modes) and "tmpfs" in files,
               "each login is one set in the VM's tmpfs (0600, the VM user's)", "\n".join(files) + err)

    got, diag = login_shell_hashes(guest, [v for v, _ in TOKENS.values()])
    tap.result(got == want_hashes(TOKENS), "a login shell in the VM has CLAUDE_CODE_OAUTH_TOKEN, OPENAI_API_KEY, "
               "GH_TOKEN exactly", diag if got is None else json.dumps({k: bool(v) for k, v in got.items()}))

    # gh, offline: the token from the environment, and the environment named as its source.
    # gh prints the token and a newline: hashed without it, as want_hashes hashes the value.
    token_hash = 't=$(gh auth token) && printf %s "$t" | sha256sum'
    rc, out, err = guest.run("bash", "-lc", token_hash)
    tap.result(rc == 0 and out.split()[:1] == [want_hashes(["gh"])["GH_TOKEN"]],
               "gh auth token prints the delivered token", "rc=%d %s" % (rc, err[-500:]))
    r, _ = machine(args, env, "run", args.name, "--", "sh", "-c", token_hash)
    outputs += [r.stderr]
    tap.result(r.returncode == 0 and r.stdout.split()[:1] == [want_hashes(["gh"])["GH_TOKEN"]],
               "machine run NAME -- gh ... (no login shell) has the token too",
               "rc=%d %s" % (r.returncode, r.stderr[-500:]))
    rc, out, err = guest.run("bash", "-lc", "timeout 60 gh auth status", timeout=120)
    tap.result("GH_TOKEN" in out + err, "gh auth status names GH_TOKEN as the token's source (offline: its check "
               "against GitHub cannot succeed here)", secrets_checks_redact(out + err))
    # Claude Code itself, offline: `claude auth status --json` (the real binary, not the smoke's
    # stand-in) reads the environment; the same without the variable is the control. A version
    # without that subcommand is a note, not a pass.
    status_cmd = "timeout 90 /usr/local/bin/claude auth status --json 2>&1"
    rc, out, err = guest.run("bash", "-lc", status_cmd, timeout=150)
    rc0, out0, _ = guest.run("bash", "-lc", "unset CLAUDE_CODE_OAUTH_TOKEN ANTHROPIC_API_KEY; " + status_cmd, timeout=150)
    squash = lambda t: t.replace(" ", "").lower()  # noqa: E731
    logged = lambda t: '"loggedin":true' in squash(t) or '"logged_in":true' in squash(t)  # noqa: E731
    if "unknown" in (out + out0).lower() and not logged(out):
        tap.note("claude auth status is not in this Claude Code: %s" % secrets_checks_redact(out)[-300:])
    else:
        tap.result(rc == 0 and logged(out) and not logged(out0),
                   "Claude Code (claude auth status, offline) is logged in with the delivered token, and not without it",
                   "with: %s\nwithout: %s" % (secrets_checks_redact(out)[-600:], secrets_checks_redact(out0)[-400:]))
    rc, out, err = guest.run("bash", "-lc", "timeout 60 codex login status", timeout=120)
    tap.note("codex login status (offline, informative only): %s" % secrets_checks_redact(out + err)[-300:])

    # Claude Code's own process: an agent session started by `machine claude` (the smoke's
    # stand-in `claude` in ~/.local/bin, started exactly as Claude Code is) has the token.
    host = HostTmux(env)
    try:
        host.start("cred", [args.machine, "claude", args.name, "--session", "credcheck"])
        started = host.wait_for("cred", "FAKE-CLAUDE", 90)
        screen = host.screen("cred")
        pid = None
        for word in screen.split():
            if word.startswith("pid="):
                pid = word[4:]
        rc, out, err = guest.run("sudo", "-n", "python3", "-c",
                                 "import hashlib,sys\nenv=open('/proc/%s/environ'%sys.argv[1],'rb').read().split(b'\\0')\n"
                                 "print(' '.join(sorted(e.split(b'=')[0].decode()+'='+hashlib.sha256(e.split(b'=',1)[1]).hexdigest()"
                                 " for e in env if e.startswith((b'CLAUDE_CODE_OAUTH_TOKEN=',b'GH_TOKEN=')))))",
                                 pid or "0")
        want = want_hashes(["claude", "gh"])
        tap.result(started and all("%s=%s" % kv in out for kv in want.items()),
                   "the agent session's process (what Claude Code reads) has CLAUDE_CODE_OAUTH_TOKEN and GH_TOKEN",
                   screen[-800:] + err[-500:])
        host.keys("cred", "C-b", "d")
        host.wait_for("cred", "EXIT=", 20)
        guest.run("tmux", "kill-session", "-t", "=credcheck")
    finally:
        host.kill()

    # After a boot the tmpfs is empty; the same happens when the sets go behind machine's back:
    # the next attach renders what is missing, and says so.
    guest.run("sudo", "-n", "sh", "-c", "rm -f /run/machine-secrets/machine-cred-gh-*.env")
    r, took = machine(args, env, "run", args.name, "--", "true")
    outputs += [r.stdout, r.stderr]
    got, diag = login_shell_hashes(guest, ["GH_TOKEN"])
    tap.result(r.returncode == 0 and said_delivered(r.stderr + r.stdout, "gh") and got == want_hashes(["gh"]),
               "an attach (machine run) renders a login the VM lacks (%.2fs)" % took, (r.stdout + r.stderr)[-1000:])

    # Line 6: a source that fails leaves the VM's previous credential, and says so.
    token_file = os.path.join(args.workdir, "codex-token")
    with open(token_file, "w") as f:
        f.write(TOKENS["codex"][1] + "\n")
    login, _ = machine(args, env, "login", "codex", "--from-command", "--", "cat", token_file)
    outputs += [login.stdout, login.stderr]
    first, _ = machine(args, env, "up", args.name)
    outputs += [first.stdout, first.stderr]
    delivered = said_delivered(first.stdout + first.stderr, "codex")  # with the others: up reads every source
    os.unlink(token_file)
    r, _ = machine(args, env, "up", args.name)
    outputs += [r.stdout, r.stderr]
    got, diag = login_shell_hashes(guest, ["OPENAI_API_KEY"])
    tap.result(delivered and r.returncode == 0 and "the VM keeps its previous codex credential" in r.stdout + r.stderr
               and got == want_hashes(["codex"]),
               "a login whose command fails: up warns and the VM keeps the previous one",
               "login: rc=%d %s\nfirst up (delivered: %s): %s\nsecond up: rc=%d %s\nOPENAI_API_KEY as expected: %s %s"
               % (login.returncode, (login.stdout + login.stderr)[-300:], delivered,
                  (first.stdout + first.stderr)[-600:], r.returncode, (r.stdout + r.stderr)[-600:],
                  got == want_hashes(["codex"]), diag if got is None else ""))

    # Line 6: a project that does not allow a tool never has its credential.
    write_project(args, env, 'agent_auth = ["claude"]\n')
    r, _ = machine(args, env, "up", args.name)
    outputs += [r.stdout, r.stderr]
    got, diag = login_shell_hashes(guest, ["GH_TOKEN", "OPENAI_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"])
    files, _ = credential_files(guest)
    tap.result(got == {"GH_TOKEN": None, "OPENAI_API_KEY": None, **want_hashes(["claude"])} and
               not [l for l in files if l.startswith(("machine-cred-gh-", "machine-cred-codex-"))] and
               "removed" in r.stdout + r.stderr,
               "agent_auth = [\"claude\"]: gh and codex are removed from the VM, claude stays", diag + "\n".join(files))
    write_project(args, env)

    # logout: gone from the host and from the running VM, which it names.
    r, _ = machine(args, env, "up", args.name)
    r, _ = machine(args, env, "logout", "gh")
    outputs += [r.stdout, r.stderr]
    got, diag = login_shell_hashes(guest, ["GH_TOKEN"])
    tap.result(r.returncode == 0 and ("removed from the running VMs: " + args.name) in r.stdout and
               got == {"GH_TOKEN": None}, "machine logout gh removes it from the host and the running VM",
               r.stdout + r.stderr + diag)

    # The codex login's command fails from here on: out, so that later checks' attaches stay quiet.
    r, _ = machine(args, env, "logout", "codex")
    outputs += [r.stdout, r.stderr]

    # Leaks: no token in any process's argv or environment here, nor in the VM but the agent
    # sessions' and shells' own (which must have it), nor in anything machine printed or keeps
    # (the stored tokens' own 0600 files excepted).
    found = secrets_checks.scan_host_processes(needles())
    tap.result(not found, "no process on the host has a login token in its argv or environment", ", ".join(found))
    leaked = secrets_checks.contains_any("\n".join(outputs), needles())
    tap.result(not leaked, "no login token in anything machine printed (login, up, run, logout)", str(leaked))
    cred_dir = os.path.join(env["MACHINE_STATE_DIR"], "credentials")
    found = [p for p in secrets_checks.scan_tree(env["MACHINE_STATE_DIR"], needles()) +
             secrets_checks.scan_tree(env["MACHINE_CONFIG_DIR"], needles())
             if not (p.startswith(cred_dir + os.sep) and p.endswith(".token"))]
    tap.result(not found, "no login token in machine's state or config (but the stored tokens' own files)",
               ", ".join(found))
    # The VM's disk as it runs (after a shutdown: secrets_checks.check_disk_after_shutdown, whose
    # needles include these with --restart). The token travels in hex: no argv holds it.
    rc, out, err = guest.run("sudo", "-n", "python3", "-c", DISK_SCAN, *[n.hex() for n in needles()], timeout=900)
    tap.result(rc == 0 and not out.strip(), "no file on the VM's disk (/home /etc /var /root /tmp /opt /usr/local) "
               "holds a login token", out[-500:] + err[-300:])

DISK_SCAN = r"""
import os, sys
needles = [bytes.fromhex(h) for h in sys.argv[1:]]
for top in ('/home', '/etc', '/var', '/root', '/tmp', '/opt', '/usr/local'):
    for d, dirs, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > 256 << 20:
                    continue
                data = open(p, 'rb').read()
            except OSError:
                continue
            if any(n in data for n in needles):
                print(p)
"""


def secrets_checks_redact(text):
    for _, v in TOKENS.values():
        text = text.replace(v, "<token>")
        text = text.replace(v[-4:], "<tail>") if len(v) > 8 else text
    return text
