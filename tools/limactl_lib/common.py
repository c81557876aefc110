"""Pieces every limactl command uses: flag parsing, global flags, output, file tailing."""
import contextlib
import os
import sys

from . import logrus


class UsageError(Exception):
    """Flag parsing errors: always printed in text format (before --log-format applies)."""


# ---------------------------------------------------------------------------- flag parsing


GLOBAL_FLAGS = {"tty": "bool", "yes": "bool", "log-format": "str", "log-level": "str", "debug": "bool",
                "help": "bool", "version": "bool"}


GLOBAL_SHORT = {"y": "yes", "h": "help"}


def parse_bool(text, flag):
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise UsageError(f"invalid argument {logrus.go_quote(text)} for {logrus.go_quote('--' + flag)} flag: "
                     f"strconv.ParseBool: parsing {logrus.go_quote(text)}: invalid syntax")


def parse_flags(args, spec, short=None, interspersed=True):
    """pflag-like parsing. spec: {name: 'bool'|'str'|'list'}; returns (values, positional)."""
    spec = dict(GLOBAL_FLAGS, **spec)
    short = dict(GLOBAL_SHORT, **(short or {}))
    values, positional = {}, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positional += args[i + 1:]
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            kind = spec.get(name)
            if kind is None:
                raise UsageError(f"unknown flag: --{name}")
            if kind == "bool":
                values[name] = parse_bool(val, name) if eq else True
            else:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"flag needs an argument: --{name}")
                    val = args[i]
                if kind == "list":
                    values.setdefault(name, []).append(val)
                else:
                    values[name] = val
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                name = short.get(c)
                if name is None:
                    raise UsageError(f"unknown shorthand flag: '{c}' in {a}")
                kind = spec[name]
                if kind == "bool":
                    values[name] = True
                    j += 1
                    continue
                val = a[j + 1:].lstrip("=")
                if not val:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"flag needs an argument: '{c}' in -{c}")
                    val = args[i]
                if kind == "list":
                    values.setdefault(name, []).append(val)
                else:
                    values[name] = val
                break
        else:
            positional.append(a)
            if not interspersed:
                positional += args[i + 1:]
                break
        i += 1
    return values, positional


class Globals:
    def __init__(self):
        self.tty = sys.stdout.isatty()
        self.log_format = "text"
        self.log_level = "info"

    def apply(self, values):
        if "tty" in values:
            self.tty = values["tty"]
        if values.get("yes"):
            self.tty = False
        if "log-format" in values:
            if values["log-format"] not in ("text", "json"):
                raise UsageError(f"unsupported log-format: {logrus.go_quote(values['log-format'])}")
            self.log_format = values["log-format"]
        if "log-level" in values:
            self.log_level = {"warn": "warning"}.get(values["log-level"], values["log-level"])
        if values.get("debug"):
            self.log_level = "debug"
        logrus.configure(fmt=self.log_format, level=self.log_level)


EDIT_FLAGS = {"set": "list", "cpus": "str", "memory": "str", "disk": "str", "mount": "list",
              "mount-only": "list", "mount-none": "bool", "mount-writable": "bool", "ssh-port": "str",
              "param": "list", "shell": "str", "vm-type": "str", "arch": "str", "mount-type": "str",
              "containerd": "str", "plain": "bool", "port-forward": "list", "network": "list",
              "dns": "list", "video": "bool", "rosetta": "bool", "nested-virt": "bool",
              "mount-inotify": "bool", "image-variant": "str"}


def edit_values(v):
    return {"set": v.get("set"), "cpus": v.get("cpus"), "memory": v.get("memory"), "disk": v.get("disk"),
            "mount": v.get("mount"), "mount_only": v.get("mount-only"), "mount_none": v.get("mount-none"),
            "mount_writable": v.get("mount-writable"), "ssh_port": v.get("ssh-port"), "param": v.get("param"),
            "shell": v.get("shell"), "vm_type": v.get("vm-type"), "arch": v.get("arch")}


def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


class Tail:
    """Complete new lines of a growing file (restarts from 0 if the file was truncated)."""

    def __init__(self, path, from_end=False):
        self.path = path
        self.pos = 0
        self.buf = b""
        if from_end:
            with contextlib.suppress(OSError):
                self.pos = os.path.getsize(path)

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.pos:
                    self.pos, self.buf = 0, b""
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        self.pos += len(data)
        self.buf += data
        *complete, self.buf = self.buf.split(b"\n")
        return [line.decode(errors="replace") for line in complete if line.strip()]
