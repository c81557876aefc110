"""`limactl list` (JSON lines, YAML, table, Go templates, --filter) and `limactl watch`."""
import json
import os
import re
import sys
import time

from . import logrus, store, units, yaml12
from .common import Tail, out, parse_flags
from .logrus import Fatal

TABLE_FIELDS = ["NAME", "STATUS", "SSH", "VMTYPE", "ARCH", "CPUS", "MEMORY", "DISK", "DIR"]


INT_FIELDS = {"cpus", "memory", "disk", "sshLocalPort", "hostAgentPID", "driverPID"}


def _tabwrite(rows, padding=4):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i] + padding) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("".join(cells).rstrip() + "\n")
    return "".join(lines)


def _lookup(obj, field):
    """Go template field access on the JSON object: case-insensitive key match."""
    if not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        if k.lower() == field.lower():
            return v
    return None


def render_go_template(fmt, obj):
    def value(expr):
        expr = expr.strip()
        if expr in ("json .", "json ."):
            return logrus.go_json(obj)
        m = re.match(r"^json\s+(\.[\w.]+)$", expr)
        if m:
            return logrus.go_json(_path_value(obj, m.group(1)))
        if expr.startswith("."):
            v = _path_value(obj, expr)
            if v is None:
                last = expr.rsplit(".", 1)[-1]
                return "0" if any(last.lower() == f.lower() for f in INT_FIELDS) else ""
            if isinstance(v, bool):
                return str(v).lower()
            if isinstance(v, (dict, list)):
                return logrus.go_json(v)
            return str(v)
        raise Fatal(f"template: unsupported expression `{expr}` in the stand-in")

    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    return re.sub(r"\{\{(.*?)\}\}", lambda m: value(m.group(1)), fmt)


def _path_value(obj, path):
    v = obj
    for part in path.strip(".").split("."):
        if not part:
            continue
        v = _lookup(v, part)
    return v


def _filter_match(obj, expr):
    """--filter: `.field == "x"`, `.field != "x"`, `.a.b == 3`, or a bare `.field` (truthy)."""
    m = re.match(r"^\s*(\.[\w.]+)\s*(==|!=)\s*(.+?)\s*$", expr)
    if m:
        want = yaml12.parse_flow_value(m.group(3))
        got = _path_value(obj, m.group(1))
        return (got == want) if m.group(2) == "==" else (got != want)
    m = re.match(r"^\s*(\.[\w.]+)\s*$", expr)
    if m:
        return bool(_path_value(obj, m.group(1)))
    raise Fatal(f"unsupported --filter expression `{expr}` in the stand-in")


def cmd_list(args, g):
    v, pos = parse_flags(args, {"json": "bool", "format": "str", "quiet": "bool", "filter": "list",
                                "yq": "list", "all-fields": "bool", "list-fields": "bool"},
                         {"q": "quiet", "f": "format"})
    g.apply(v)
    if v.get("json") and "format" in v:
        raise Fatal("option --json conflicts with option --format")
    fmt = "json" if v.get("json") or v.get("filter") else v.get("format", "table")
    if v.get("yq"):
        raise Fatal("--yq is not supported by the stand-in (use --filter or --format)")
    if v.get("list-fields"):
        out("".join(f + "\n" for f in ["Name", "Hostname", "Status", "Dir", "VMType", "Arch", "CPUs", "Memory",
                                       "Disk", "SSHLocalPort", "SSHConfigFile", "HostAgentPID", "DriverPID",
                                       "Config", "SSHAddress", "Protected", "LimaVersion", "Param"]))
        return 0
    all_names = store.instance_names()
    if v.get("quiet"):
        names = [n for n in all_names if not pos or n in pos]
        out("".join(n + "\n" for n in names))
        return 0
    if not pos and not all_names:
        logrus.warning("No instance found. Run `limactl create` to create an instance.")
        return 0
    targets = [n for n in pos if n in all_names] if pos else all_names
    unmatched = [n for n in pos if n not in all_names]
    insts = [store.Instance(n) for n in targets]
    warned_dir = False
    for inst in insts:
        if inst.yaml_missing and not warned_dir:
            logrus.warning(f"The directory `{store.lima_home()}` does not look like a valid Lima directory: "
                           f"stat {inst.lima_yaml}: no such file or directory")
            warned_dir = True
        if inst.errors:
            logrus.warning(f"instance `{inst.name}` has errors", errors="[" + " ".join(inst.errors) + "]")
    objs = [i.to_json() for i in insts]
    for expr in v.get("filter") or []:
        objs = [o for o in objs if _filter_match(o, expr)]
    if fmt == "json":
        out("".join(logrus.go_json(o) + "\n" for o in objs))
    elif fmt == "yaml":
        out("".join("---\n" + yaml12.dumps(o) for o in objs))
    elif fmt == "table":
        out(_table(insts, v.get("all-fields")))
    else:
        out("".join(render_go_template(fmt, o) + "\n" for o in objs))
    for n in unmatched:
        logrus.warning(f"No instance matching {n} found.")
    if unmatched:
        raise Fatal("unmatched instances")
    return 0


def _table(insts, all_fields):
    if not insts:
        return ""
    fields = list(TABLE_FIELDS)
    if not all_fields:
        if all(i.config and i.config["vmType"] == "qemu" for i in insts):
            fields.remove("VMTYPE")
        if all(i.config and i.config["arch"] == store.HOST_ARCH for i in insts):
            fields.remove("ARCH")
    home = os.path.expanduser("~")
    rows = [fields]
    for i in insts:
        c = i.config or {}
        d = i.dir
        if d.startswith(home + os.sep):
            d = "~" + d[len(home):]
        cell = {"NAME": i.name, "STATUS": i.status,
                "SSH": f"127.0.0.1:{i.ssh_port or 0}",
                "VMTYPE": c.get("vmType", ""), "ARCH": c.get("arch", ""),
                "CPUS": str(c.get("cpus", "")),
                "MEMORY": units.bytes_size(units.ram_in_bytes(c["memory"])) if c else "",
                "DISK": units.bytes_size(units.ram_in_bytes(c["disk"])) if c else "",
                "DIR": d}
        rows.append([cell[f] for f in fields])
    return _tabwrite(rows)


def cmd_watch(args, g):
    """Events of instances as JSON lines {"instance","event"} (or text), until interrupted."""
    v, pos = parse_flags(args, {"json": "bool", "history": "bool"})
    g.apply(v)
    sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S") + " Watching for events...\n")
    tails = {}
    try:
        while True:
            for name in (pos or store.instance_names()):
                path = os.path.join(store.instance_dir(name), "ha.stdout.log")
                if name not in tails:
                    tails[name] = Tail(path, from_end=not v.get("history"))
                for line in tails[name].lines():
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if v.get("json"):
                        out(logrus.go_json({"instance": name, "event": ev}) + "\n")
                    else:
                        out(f"{ev.get('time', '')} {name} {logrus.go_json(ev.get('status', {}))}\n")
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
