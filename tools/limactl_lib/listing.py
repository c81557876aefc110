"""`limactl list` (JSON lines, YAML, table, Go templates, --filter) and `limactl watch`."""
import json
import os
import re
import sys
import time

from . import driver, logrus, store, units
from .common import Tail, out, parse_flags
from .logrus import Fatal, q

# store.FormatData's fields for --format templates (and --list-fields), with their JSON keys
TEMPLATE_FIELDS = {
    "Name": "name", "Hostname": "hostname", "Status": "status", "Dir": "dir", "VMType": "vmType", "Arch": "arch",
    "CPUs": "cpus", "Memory": "memory", "Disk": "disk", "Message": "message", "AdditionalDisks": "additionalDisks",
    "Networks": "network", "SSHLocalPort": "sshLocalPort", "SSHConfigFile": "sshConfigFile",
    "HostAgentPID": "hostAgentPID", "DriverPID": "driverPID", "Errors": "errors", "Config": "config",
    "SSHAddress": "sshAddress", "Protected": "protected", "LimaVersion": "limaVersion", "Param": "param",
    "AutoStartedIdentifier": "autoStartedIdentifier", "HostOS": "HostOS", "HostArch": "HostArch",
    "LimaHome": "LimaHome", "IdentityFile": "IdentityFile",
}
INT_FIELDS = {"cpus", "memory", "disk", "sshLocalPort", "hostAgentPID", "driverPID"}
_ACTION_RE = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def render_go_template(tmpl, rec):
    """--format '{{.Name}} {{json .Config}}' on one record (Go text/template, the common subset)."""
    def field(path):
        parts = path.split(".")[1:]
        if not parts or parts == [""]:
            return rec
        key = TEMPLATE_FIELDS.get(parts[0])
        if key is None:
            raise Fatal(f'template: format:1: executing "format" at <.{parts[0]}>: can\'t evaluate field '
                        f"{parts[0]} in type store.FormatData")
        v = rec.get(key)
        if v is None:
            v = 0 if key in INT_FIELDS else (False if key == "protected" else [] if key == "errors" else "")
        for p in parts[1:]:
            v = v.get(p[:1].lower() + p[1:], v.get(p)) if isinstance(v, dict) else None
        return v

    def action(m):
        expr = m.group(1)
        if expr.startswith("json "):
            return json.dumps(field(expr[5:].strip()), separators=(",", ":"))
        if expr.startswith("."):
            v = field(expr)
            return v if isinstance(v, str) else logrus.go_sprint(v)
        raise Fatal(f"unsupported go-template action {{{{{expr}}}}}")
    return _ACTION_RE.sub(action, tmpl.replace("\\t", "\t").replace("\\n", "\n"))


def render_table(recs, all_fields):
    """Lima's tabwriter table (minwidth 4, padding 4); VMTYPE/ARCH only when they differ."""
    hide_type = not all_fields and len({r.get("vmType", "") for r in recs}) == 1
    archs = {r.get("arch", "") for r in recs}
    hide_arch = not all_fields and archs == {store.HOST_ARCH}
    home = os.path.expanduser("~")
    header = ["NAME", "STATUS", "SSH"] + ([] if hide_type else ["VMTYPE"]) + ([] if hide_arch else ["ARCH"]) + \
             ["CPUS", "MEMORY", "DISK", "DIR"]
    rows = [header]
    for r in recs:
        d = r.get("dir", "")
        if home and home != "/" and d.startswith(home):
            d = "~" + d[len(home):]
        row = [r["name"], r["status"], "%s:%d" % (r.get("sshAddress", ""), r.get("sshLocalPort", 0))]
        row += ([] if hide_type else [r.get("vmType", "")]) + ([] if hide_arch else [r.get("arch", "")])
        row += [str(r.get("cpus", 0)), units.bytes_size(r.get("memory", 0)), units.bytes_size(r.get("disk", 0)), d]
        rows.append(row)
    widths = [max(4, max(len(row[c]) for row in rows)) + 4 for c in range(len(header) - 1)]
    return "".join("".join(cell.ljust(widths[c]) for c, cell in enumerate(row[:-1])) + row[-1] + "\n"
                   for row in rows)


def _path_value(obj, path):
    v = obj
    for part in path.strip(".").split("."):
        if part:
            v = v.get(part) if isinstance(v, dict) else None
    return v


def _filter_match(obj, expr):
    """--filter: `.field == "x"`, `.field != "x"`, `.a.b == 3`, or a bare `.field` (truthy)."""
    m = re.match(r"^\s*(\.[\w.]+)\s*(==|!=)\s*(.+?)\s*$", expr)
    if m:
        from . import yaml12
        try:
            want = yaml12.parse_flow_value(m.group(3))
        except yaml12.YAMLError as e:
            raise Fatal(f"failed to apply filter {logrus.go_quote('select(' + expr + ')')}: bad value") from e
        return (_path_value(obj, m.group(1)) == want) == (m.group(2) == "==")
    m = re.match(r"^\s*(\.[\w.]+)\s*$", expr)
    if m:
        return bool(_path_value(obj, m.group(1)))
    raise Fatal(f"unsupported --filter expression {logrus.go_quote(expr)} (only `.field == value`, `!=`, `.field`)")


def json_lines(recs, pretty):
    if pretty:
        return "".join(json.dumps(r, indent=4, ensure_ascii=False) + "\n" for r in recs)
    return "".join(logrus.go_json(r) + "\n" for r in recs)


def cmd_list(args, g):
    v, pos = parse_flags(args, {"json": "bool", "format": "str", "quiet": "bool", "filter": "list",
                                "yq": "list", "all-fields": "bool", "list-fields": "bool"},
                         {"q": "quiet", "f": "format", "l": "filter"})
    g.apply(v)
    if v.get("json") and "format" in v:
        raise Fatal("option --json conflicts with option --format")
    fmt = "json" if v.get("json") else v.get("format", "table")
    quiet = v.get("quiet")
    if quiet and fmt != "table":
        raise Fatal("option --quiet can only be used with '--format table'")
    if v.get("list-fields"):
        if "format" in v:
            raise Fatal("option --list-fields conflicts with option --format")
        out("".join(k + "\n" for k in sorted(TEMPLATE_FIELDS)
                    if k not in ("HostOS", "HostArch", "LimaHome", "IdentityFile")))
        return 0
    if v.get("yq"):
        raise Fatal("--yq is not supported by the stand-in (use --filter '.field == value' or --format)")
    driver.get().fail_point("list")
    driver.get().pause_point("list")
    names = store.instance_names()
    home = store.lima_home()
    bad = [n for n in names if not os.path.exists(os.path.join(home, n, "lima.yaml"))]
    if bad and not quiet:
        logrus.warning(f"The directory {q(home)} does not look like a valid Lima directory: "
                       f"stat {os.path.join(home, bad[0], 'lima.yaml')}: no such file or directory")
    if not pos and not names:
        logrus.warning("No instance found. Run `limactl create` to create an instance.")
        return 0
    selected = names
    if pos:
        selected = [n for n in pos if n in names]
        for n in pos:
            if n not in names:
                logrus.warning(f"No instance matching {n} found.")
    unmatched = len(selected) != len(pos) if pos else False
    filters = v.get("filter") or []
    if quiet and not filters:
        out("".join(n + "\n" for n in selected))
        if unmatched:
            raise Fatal("unmatched instances")
        return 0
    recs, warns = [], []
    for n in selected:
        inst = store.Instance(n)
        if inst.yaml_missing and logrus.before_v22():
            raise Fatal(f"unable to load instance {n}: open {inst.lima_yaml}: no such file or directory")
        recs.append(inst.to_json())
        if inst.errors:
            warns.append((n, inst.errors))
    if filters:
        recs = [r for r in recs if all(_filter_match(r, f) for f in filters)]
        keep = {r["name"] for r in recs}
        warns = [w for w in warns if w[0] in keep]
    if quiet:
        out("".join(r["name"] + "\n" for r in recs))
    else:
        for n, errs in warns:
            logrus.warning(f"instance {q(n)} has errors", errors=errs)
        if fmt == "json":
            pretty = os.environ.get("_LIMA_OUTPUT_IS_TTY", "") not in ("", "0")
            text = driver.get().malformed_list(recs)
            out(json_lines(recs, pretty) if text is None else text)
        elif fmt == "yaml":
            from . import yaml12
            out("".join("---\n" + yaml12.dumps(r) for r in recs))
        elif fmt == "table":
            out(render_table(recs, v.get("all-fields")) if recs else "")
        else:
            out("".join(render_go_template(fmt, r) + "\n" for r in recs))
    if unmatched:
        raise Fatal("unmatched instances")
    return 0


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
