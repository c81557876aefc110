"""Commands that reach into a running guest: shell, copy, show-ssh. The driver runs them."""
import shlex

from . import driver, logrus, sshutil, store
from .common import out, parse_flags
from .lifecycle import DEFAULT_START_TIMEOUT, start_instance
from .logrus import Fatal, q


def require_running(name, start=False):
    inst = store.lookup(name)
    if inst is None:
        raise Fatal(f"instance {q(name)} does not exist, run `limactl create {name}` to create a new instance")
    if inst.status == "Stopped":
        if not start:
            raise Fatal(f"instance {q(name)} is stopped, run `limactl start {name}` to start the instance")
        start_instance(inst, DEFAULT_START_TIMEOUT, print_ready=False)
        inst = store.Instance(name)
    return inst


def cmd_shell(args, g):
    v, pos = parse_flags(args, {"workdir": "str", "shell": "str", "reconnect": "bool", "preserve-env": "bool",
                                "start": "bool", "sync": "str", "instance": "str"}, interspersed=False)
    g.apply(v)
    if v.get("instance"):
        pos = [v["instance"]] + pos
    if not pos:
        raise Fatal("requires instance name as first argument")
    name, cmd = pos[0], pos[1:]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    driver.get().fail_point("shell")
    driver.get().pause_point("shell")
    inst = require_running(name, start=bool(v.get("start")))
    return driver.get().shell(inst, v, cmd, only_assignments=bool(pos[1:]) and pos[1:] != ["--"])


def cmd_copy(args, g):
    v, pos = parse_flags(args, {"recursive": "bool", "verbose": "bool", "backend": "str"},
                         {"r": "recursive", "v": "verbose"})
    g.apply(v)
    if len(pos) < 2:
        raise Fatal(f"requires at least 2 arg(s), only received {len(pos)}")
    driver.get().fail_point("copy")
    driver.get().pause_point("copy")
    paths = []  # (instance or None, path)
    for p in pos:
        if p.count(":") > 1:
            raise Fatal(f"path {logrus.go_quote(p)} contains multiple colons")
        name, sep, path = p.partition(":")
        if sep and name and not p.startswith(("/", ".")):
            paths.append((require_running(name), path))
        else:
            paths.append((None, p))
    return driver.get().copy(v, paths)


def cmd_show_ssh(args, g):
    v, pos = parse_flags(args, {"format": "str"}, {"f": "format"})
    g.apply(v)
    if len(pos) != 1:
        raise Fatal(f"accepts 1 arg(s), received {len(pos)}")
    driver.get().fail_point("show-ssh")
    driver.get().pause_point("show-ssh")
    name = pos[0]
    inst = store.lookup(name)
    if inst is None:
        raise Fatal(f"instance {q(name)} does not exist, run `limactl create {name}` to create a new instance")
    host = store.hostname_for(name)
    logrus.warning(f"`limactl show-ssh` is deprecated. Instead, use `ssh -F {inst.path('ssh.config')} {host}`.")
    opts = sshutil.ssh_options(inst.dir, inst.config, inst.ssh_port or 0)
    fmt = v.get("format", "cmd")
    if fmt == "config":
        out(f"Host {host}\n" + "".join(f"  {k} {val}\n" for k, val in opts))
    elif fmt == "options":
        out("".join(f"{k}={val}\n" for k, val in opts))
    elif fmt in ("cmd", "args"):
        words = [w for k, val in opts for w in ("-o", shlex.quote(f"{k}={val}"))]
        out(" ".join((["ssh"] + words + [host]) if fmt == "cmd" else words) + "\n")
    else:
        raise Fatal(f"unknown format: {logrus.go_quote(fmt)}")
    return 0
