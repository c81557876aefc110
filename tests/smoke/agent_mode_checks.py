"""Smoke checks of Claude Code's permission mode in the VM (used by tests/smoke/run).

The agents profile writes the project's `claude_mode` ("auto" unless the project says
"bypassPermissions") into the VM user's ~/.claude/settings.json as permissions.defaultMode, and
installs what Claude's own Bash sandbox needs (bubblewrap, socat). Checked here: the file in the
VM says the configured mode, and bubblewrap can build the sandbox as the VM user (a new user and
network namespace over a read-only root). Each check has its control.
"""
import json

VALID_MODES = ("auto", "bypassPermissions")


def check_claude_mode(tap, args, env, guest):
    """`guest` runs commands as the VM user. The expected mode is args.claude_mode when the smoke
    configured one, else the default, "auto"."""
    expected = getattr(args, "claude_mode", None) or "auto"
    rc, out, err = guest.run("sh", "-c", 'cat "$HOME/.claude/settings.json"')
    mode = None
    try:
        mode = json.loads(out).get("permissions", {}).get("defaultMode") if rc == 0 else None
    except ValueError:
        pass
    tap.result(mode == expected, "Claude Code's settings in the VM start sessions in the configured mode (%s: %s)"
               % (expected, mode), "rc=%d\n%s%s" % (rc, out[-2000:], err[-2000:]))
    # Control: the value read is the file's, not a default of the parser: any other mode is seen as such.
    tap.result(mode in VALID_MODES, "... and the mode is one machine allows (%s)" % ", ".join(VALID_MODES), str(mode))

    rc, out, err = guest.run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\\n", "bubblewrap", "socat")
    tap.result(rc == 0 and out.count(" ii") == 2, "bubblewrap and socat are installed for Claude's Bash sandbox",
               out + err)
    rc, out, err = guest.run("bwrap", "--unshare-user", "--unshare-net", "--ro-bind", "/", "/", "true")
    tap.result(rc == 0, "bwrap --unshare-user --unshare-net --ro-bind / / true succeeds as the VM user",
               "rc=%d %s" % (rc, err[-2000:]))
    # Control: the sandbox really is one: inside it the network has only a loopback that is down,
    # and the root is read-only.
    rc, out, err = guest.run("bwrap", "--unshare-user", "--unshare-net", "--ro-bind", "/", "/",
                             "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1; touch /smoke-bwrap 2>/dev/null && echo rw || echo ro")
    ifaces = [line.strip() for line in out.splitlines() if line.strip() not in ("", "ro", "rw")]
    tap.result(rc == 0 and ifaces == ["lo"] and "ro" in out.split(),
               "... and inside it there is no network but loopback and / is read-only", "rc=%d %s %s" % (rc, out, err))
