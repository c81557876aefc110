"""The `limactl` command line of the stand-in: global flags and command dispatch.

The commands live in lifecycle.py (create/start/stop/delete/clone/edit/restart), listing.py
(list, watch), remote.py (shell, copy, show-ssh) and below (protect, validate, info).
"""
import json
import os

from . import driver, lifecycle, listing, logrus, remote, snapshot, store, template
from .common import GLOBAL_FLAGS, GLOBAL_SHORT, Globals, UsageError, out, parse_flags
from .logrus import Fatal, q

# ---------------------------------------------------------------------------- small commands


def cmd_protect(args, g, protect=True):
    v, pos = parse_flags(args, {})
    g.apply(v)
    if not pos:
        raise Fatal("requires at least 1 arg(s), only received 0")
    cmd = "protect" if protect else "unprotect"
    driver.get().fail_point(cmd)
    driver.get().pause_point(cmd)
    for name in pos:
        inst = store.lookup(name)
        if inst is None:
            raise Fatal(f"failed to inspect instance {q(name)}: open {store.instance_dir(name)}/lima.yaml: "
                        "no such file or directory")
        marker = inst.path("protected")
        if protect:
            if inst.protected:
                logrus.warning(f"Instance {q(name)} is already protected. Skipping.")
                continue
            open(marker, "w").close()
            os.chmod(marker, 0o444)
            logrus.info(f"Protected {q(name)}")
        else:
            if not inst.protected:
                logrus.warning(f"Instance {q(name)} isn't protected. Skipping.")
                continue
            os.unlink(marker)
            logrus.info(f"Unprotected {q(name)}")
    return 0


def cmd_validate(args, g):
    v, pos = parse_flags(args, {"fill": "bool"})
    g.apply(v)
    for f in pos:
        try:
            t = template.load(f, logrus.warning)
            cfg = store.fill_defaults(t.doc)
        except (template.TemplateError, ValueError, TypeError) as e:
            raise Fatal(str(e)) from e
        err = store.validate_config(cfg)
        if err:
            raise Fatal(f"failed to validate YAML file {f!r}: {err}")
        if v.get("fill"):
            from . import yaml12
            out(yaml12.dumps(cfg))
        logrus.info(f"{json.dumps(f)}: OK")
    return 0


def cmd_info(args, g):
    v, _pos = parse_flags(args, {})
    g.apply(v)
    driver.get().fail_point("info")
    driver.get().pause_point("info")
    info = {"version": driver.get().version(), "templates": [], "defaultTemplate": store.fill_defaults(
        template.find_template("default").doc), "limaHome": store.lima_home(), "vmTypes": ["qemu"],
        "guestAgents": {}, "hostOS": "linux", "hostArch": store.HOST_ARCH, "identityFile": store.identity_file()}
    info.update(driver.get().info_extra())
    out(json.dumps(info, indent=4) + "\n")
    return 0


# ---------------------------------------------------------------------------- main


COMMANDS = {
    "create": lifecycle.cmd_create, "start": lifecycle.cmd_start, "stop": lifecycle.cmd_stop,
    "delete": lifecycle.cmd_delete, "remove": lifecycle.cmd_delete, "rm": lifecycle.cmd_delete,
    "clone": lifecycle.cmd_clone, "rename": lambda a, g: lifecycle.cmd_clone(a, g, rename=True),
    "edit": lifecycle.cmd_edit, "restart": lifecycle.cmd_restart,
    "list": listing.cmd_list, "ls": listing.cmd_list, "watch": listing.cmd_watch,
    "shell": remote.cmd_shell, "copy": remote.cmd_copy, "cp": remote.cmd_copy, "show-ssh": remote.cmd_show_ssh,
    "protect": cmd_protect, "unprotect": lambda a, g: cmd_protect(a, g, protect=False),
    "validate": cmd_validate, "info": cmd_info, "snapshot": snapshot.cmd_snapshot,
}
# Lima's, not the stand-in's: a clear refusal rather than "unknown command"
NOT_IMPLEMENTED = {"disk", "factory-reset", "tmpl", "template", "sudoers", "prune", "start-at-login",
                   "tunnel", "network", "completion", "debug", "mcp", "show-ssh-config"}

USAGE = """Lima: Linux virtual machines ({what}; see tools/README.md)

Usage:
  limactl [command]

Commands:
  {commands}

Flags:
      --debug               debug mode
  -h, --help                help for limactl
      --log-format string   Set the logging format [text, json] (default "text")
      --tty                 Enable TUI interactions such as opening an editor. Defaults to true when stdout is a terminal.
  -v, --version             version for limactl
  -y, --yes                 Alias of --tty=false
"""


def main(argv):
    """Run one limactl command; the exit status. Errors end as one `level=fatal` line, exit 1."""
    drv = driver.get()
    g = Globals()
    try:
        # global flags before the subcommand
        i = 0
        pre = []
        while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
            a = argv[i]
            if a in ("--version", "-v"):
                out(f"limactl version {drv.version()}\n")
                return 0
            pre.append(a)
            name = a[2:].partition("=")[0] if a.startswith("--") else GLOBAL_SHORT.get(a[1:2], "")
            if "=" not in a and GLOBAL_FLAGS.get(name) == "str":
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: {a}")
                pre.append(argv[i])
            i += 1
        v, _ = parse_flags(pre, {})
        g.apply(v)
        rest = argv[i:]
        if not rest or v.get("help") or rest[0] == "help":
            out(USAGE.format(what=drv.description, commands=" ".join(sorted(COMMANDS))))
            return 0
        if rest[0] == "version":
            out(f"limactl version {drv.version()}\n")
            return 0
        cmd = COMMANDS.get(rest[0]) or drv.commands().get(rest[0])
        if cmd is None:
            if rest[0] in NOT_IMPLEMENTED:
                raise Fatal(f"{drv.description}: {q('limactl ' + rest[0])} is not implemented")
            raise Fatal(f"unknown command {logrus.go_quote(rest[0])} for \"limactl\"")
        if "--help" in rest[1:] or "-h" in rest[1:]:
            out(f"Usage:\n  limactl {rest[0]} [flags]\n({drv.description}: see tools/README.md)\n")
            return 0
        return cmd(rest[1:], g) or 0
    except UsageError as e:
        logrus.write_line(logrus.format_line("fatal", str(e), fmt="text"))
        return 1
    except Fatal as e:
        logrus.log("fatal", e.msg, e.fields)
        return 1
    except logrus.Exit as e:
        return e.code
    except KeyboardInterrupt:
        return 130
