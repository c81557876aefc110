"""The `limactl` command line of the stand-in: global flags and command dispatch.

The commands live in lifecycle.py (create/start/stop/delete/clone/edit/restart), listing.py
(list, watch), remote.py (shell, copy, show-ssh) and below (protect, validate, info).
"""
import json
import os
import sys

from . import lifecycle, listing, logrus, remote, store, template, yaml12
from .common import GLOBAL_FLAGS, GLOBAL_SHORT, Globals, UsageError, out, parse_flags
from .logrus import Fatal

# ---------------------------------------------------------------------------- small commands


def cmd_protect(args, g, protect=True):
    v, pos = parse_flags(args, {})
    g.apply(v)
    for name in pos:
        inst = store.Instance(name)
        if inst.yaml_missing:
            raise Fatal(f"failed to inspect instance `{name}`: open {inst.lima_yaml}: no such file or directory")
        marker = inst.path("protected")
        if protect:
            if os.path.exists(marker):
                logrus.warning(f"Instance `{name}` is already protected. Skipping.")
                continue
            open(marker, "w").close()
            os.chmod(marker, 0o400)
            logrus.info(f"Protected `{name}`")
        else:
            if not os.path.exists(marker):
                logrus.warning(f"Instance `{name}` isn't protected. Skipping.")
                continue
            os.unlink(marker)
            logrus.info(f"Unprotected `{name}`")
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
            out(yaml12.dumps(cfg))
        logrus.info(f"{json.dumps(f)}: OK")
    return 0


def cmd_info(args, g):
    v, _pos = parse_flags(args, {})
    g.apply(v)
    info = {"version": store.VERSION, "templates": [], "defaultTemplate": store.fill_defaults(
        template.find_template("default").doc), "limaHome": store.lima_home(), "vmTypes": ["qemu"],
        "guestAgents": {}, "hostOS": "linux", "hostArch": store.HOST_ARCH, "identityFile": store.identity_file()}
    out(json.dumps(info, indent=4) + "\n")
    return 0


# ---------------------------------------------------------------------------- main


COMMANDS = {
    "create": lifecycle.cmd_create, "start": lifecycle.cmd_start, "stop": lifecycle.cmd_stop,
    "delete": lifecycle.cmd_delete, "remove": lifecycle.cmd_delete, "rm": lifecycle.cmd_delete,
    "clone": lifecycle.cmd_clone, "edit": lifecycle.cmd_edit, "restart": lifecycle.cmd_restart,
    "list": listing.cmd_list, "ls": listing.cmd_list, "watch": listing.cmd_watch,
    "shell": remote.cmd_shell, "copy": remote.cmd_copy, "cp": remote.cmd_copy, "show-ssh": remote.cmd_show_ssh,
    "protect": cmd_protect, "unprotect": lambda a, g: cmd_protect(a, g, protect=False),
    "validate": cmd_validate, "info": cmd_info,
}


def main(argv):
    # sbin tools (mke2fs) must be found even from a non-login root shell
    os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"
    if argv and argv[0] == "hostagent":
        from . import hostagent  # only the host agent needs its HTTP server and QEMU code
        return hostagent.main(argv[1:])
    g = Globals()
    try:
        # global flags before the subcommand
        i = 0
        pre = []
        while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
            a = argv[i]
            pre.append(a)
            name = a[2:].partition("=")[0] if a.startswith("--") else GLOBAL_SHORT.get(a[1:2], "")
            if "=" not in a and GLOBAL_FLAGS.get(name) == "str":
                i += 1
                if i < len(argv):
                    pre.append(argv[i])
            i += 1
        v, _ = parse_flags(pre, {})
        g.apply(v)
        if v.get("version"):
            out(f"limactl version {store.VERSION}\n")
            return 0
        rest = argv[i:]
        if not rest or v.get("help"):
            out("Lima stand-in (limactl 2.2.0 CLI contract) for machine: see tools/README.md\n"
                "Commands: " + " ".join(sorted(COMMANDS)) + "\n")
            return 0
        cmd = COMMANDS.get(rest[0])
        if cmd is None:
            raise Fatal(f'unknown command "{rest[0]}" for "limactl"')
        rc = cmd(rest[1:], g)
        return rc or 0
    except UsageError as e:
        sys.stderr.write(logrus.format_line("fatal", str(e), fmt="text") + "\n")
        return 1
    except Fatal as e:
        logrus.log("fatal", e.msg)
        return 1
    except KeyboardInterrupt:
        return 130
