"""Commands that reach into a running guest over SSH: shell, copy, show-ssh."""
import os
import re
import shlex
import subprocess
import sys

from . import logrus, sshutil, store
from .common import out, parse_flags
from .lifecycle import DEFAULT_START_TIMEOUT, start_instance
from .logrus import Fatal

def need_instance(name, missing_msg=None):
    inst = store.Instance(name)
    if inst.yaml_missing and not os.path.isdir(inst.dir):
        raise Fatal(missing_msg or f"instance `{name}` does not exist, run `limactl create {name}` to create a new instance")
    return inst


def require_running_for_ssh(name):
    if not os.path.isdir(store.instance_dir(name)):
        raise Fatal(f"instance `{name}` does not exist, run `limactl create {name}` to create a new instance")
    inst = store.Instance(name)
    if inst.config is None:
        raise Fatal(f"instance `{name}` is broken: {'; '.join(inst.errors)}")
    if inst.status == "Stopped":
        raise Fatal(f"instance `{name}` is stopped, run `limactl start {name}` to start the instance")
    return inst


# ---------------------------------------------------------------------------- shell / copy / ssh


def _quote_args(argv):
    """Lima: args shell-quoted and joined; leading KEY=VALUE args stay env assignments."""
    out, leading = [], True
    for a in argv:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", a, re.S) if leading else None
        if m:
            out.append(f"{m.group(1)}={shlex.quote(m.group(2))}")
        else:
            leading = False
            out.append(shlex.quote(a))
    return " ".join(out)


def cmd_shell(args, g):
    v, pos = parse_flags(args, {"workdir": "str", "shell": "str", "reconnect": "bool", "preserve-env": "bool",
                                "start": "bool", "sync": "str", "instance": "str"}, interspersed=False)
    g.apply(v)
    if v.get("instance"):
        pos = [v["instance"]] + pos
    if not pos:
        raise Fatal("requires instance name as first argument")
    name, cmd = pos[0], pos[1:]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not os.path.isdir(store.instance_dir(name)):
        raise Fatal(f"instance `{name}` does not exist, run `limactl create {name}` to create a new instance")
    inst = store.Instance(name)
    if inst.status == "Stopped" and v.get("start"):
        rc = start_instance(inst, DEFAULT_START_TIMEOUT, print_ready=False)
        if rc:
            return rc
        inst = store.Instance(name)
    inst = require_running_for_ssh(name)
    shell = v.get("shell") or inst.config["user"]["shell"]
    if v.get("workdir"):
        script = f"cd {shlex.quote(v['workdir'])} || exit 1 ; exec {shell} --login"
    else:
        script = f"exec {shell} --login"
    if cmd:
        script += " -c " + shlex.quote(_quote_args(cmd))
    argv, host = sshutil.ssh_base_argv(inst.dir, name)
    if v.get("reconnect"):
        subprocess.run(argv + ["-O", "exit", host], capture_output=True, check=False)
    if v.get("preserve-env"):
        env_prefix = " ".join(f"{k}={shlex.quote(val)}" for k, val in os.environ.items()
                              if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) and k not in _ENV_BLOCK)
        script = f"export {env_prefix} ; {script}" if env_prefix else script
    if sys.stdout.isatty() and sys.stdin.isatty():
        argv.append("-t")
    elif not cmd:
        argv.append("-T")
    argv += ["-o", "LogLevel=ERROR", host, "--", script]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


_ENV_BLOCK = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TERM", "SHLVL", "TMPDIR", "DISPLAY",
              "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "XDG_RUNTIME_DIR",
              "XAUTHORITY", "LD_PRELOAD", "LD_LIBRARY_PATH", "_"}


def cmd_copy(args, g):
    v, pos = parse_flags(args, {"recursive": "bool", "verbose": "bool", "backend": "str"},
                         {"r": "recursive", "v": "verbose"})
    g.apply(v)
    if len(pos) < 2:
        raise Fatal(f"requires at least 2 arg(s), only received {len(pos)}")
    backend = v.get("backend", "auto")
    config_files, mapped, instances = [], [], set()
    for p in pos:
        if ":" in p and not p.startswith(("/", ".")):
            if p.count(":") > 1:
                raise Fatal(f"path {p!r} contains multiple colons")
            name, path = p.split(":", 1)
            inst = require_running_for_ssh(name)
            instances.add(name)
            config_files.append(inst.path("ssh.config"))
            mapped.append(f"{store.hostname_for(name)}:{path}")
        else:
            mapped.append(p)
    if not instances:
        raise Fatal("at least one argument must be a guest path (`INSTANCE:PATH`)")
    if len(set(config_files)) > 1:
        raise Fatal("copying between two instances is not supported by the stand-in")
    cfg_file = config_files[0]
    if backend == "rsync":
        argv = ["rsync", "-e", f"ssh -F {shlex.quote(cfg_file)}", "-a" if v.get("recursive") else "-t"]
        if v.get("verbose"):
            argv.append("-v")
        argv += mapped
    else:
        argv = ["scp", "-F", cfg_file, "-o", "LogLevel=ERROR"]
        if v.get("recursive"):
            argv.append("-r")
        if v.get("verbose"):
            argv.append("-v")
        argv += mapped
    os.execvp(argv[0], argv)


def cmd_show_ssh(args, g):
    v, pos = parse_flags(args, {"format": "str"}, {"f": "format"})
    g.apply(v)
    if len(pos) != 1:
        raise Fatal("requires exactly 1 arg(s)")
    name = pos[0]
    inst = need_instance(name)
    logrus.warning(f"`limactl show-ssh` is deprecated. Instead, use `ssh -F {inst.path('ssh.config')} "
                   f"{store.hostname_for(name)}`.")
    port = inst.ssh_port or 0
    opts = sshutil.ssh_options(inst.dir, inst.config, port)
    fmt = v.get("format", "cmd")
    host = store.hostname_for(name)
    if fmt == "config":
        out(sshutil.ssh_config_text(name, inst.dir, inst.config, port, header=False))
    elif fmt == "options":
        out("".join(f"{k}={val}\n" for k, val in opts))
    elif fmt == "args":
        out(" ".join(f"-o {k}={val}" for k, val in opts) + "\n")
    elif fmt == "cmd":
        out("ssh " + " ".join(f"-o {k}={val}" for k, val in opts) + f" {host}\n")
    else:
        raise Fatal(f"unknown format: {fmt!r}")
    return 0
