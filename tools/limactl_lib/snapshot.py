"""`limactl snapshot create|apply|delete|list NAME [--tag TAG] [--quiet]` (cmd/limactl/snapshot.go).

Experimental in Lima (a warning on every call) and QEMU only. The driver does the work as Lima's
QEMU driver does (pkg/driver/qemu/qemu.go): a stopped instance's disk through `qemu-img snapshot
-c|-a|-d|-l <dir>/disk`, a running one through HMP savevm/loadvm/delvm/`info snapshots` sent as
QMP human-monitor-command over <dir>/qmp.sock. Lima's quirks are kept: a failing qemu-img is only
`exit status N`, and HMP reports its errors as output (a warning `output: ...`, exit 0), so a
caller checks `list --quiet` for the tag rather than trusting the exit status.
"""
from . import driver, logrus, store
from .common import out, parse_flags
from .logrus import Fatal

ALIASES = {"create": "create", "save": "create", "apply": "apply", "load": "apply",
           "delete": "delete", "del": "delete", "list": "list", "ls": "list"}
HEADER_FIELDS = ("ID", "TAG")


def table_header():
    """qemu's snapshot table header (block/qapi.c bdrv_snapshot_dump)."""
    return f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}"


def table_row(sid, tag, vm_size, date, clock="00:00:00.000", icount="0"):
    return f"{str(sid):<10}{tag:<17}{vm_size:>8}{date:>20}{clock:>13}{icount:>11}"


def quiet_tags(text):
    """The tags of a snapshot table, as `list --quiet` prints them (Lima checks the header)."""
    tags = []
    for i, line in enumerate(text.split("\n")):
        fields = line.split()
        if i == 0 and len(fields) > 1 and fields[1] != "TAG":
            raise Fatal(f"unknown header: {line}")
        if i == 0 or line == "":
            continue
        tags.append(fields[1])
    return tags


def cmd_snapshot(args, g):
    logrus.warning("`limactl snapshot` is experimental")
    if not args or args[0].startswith("-"):
        v, _ = parse_flags(args, {})
        g.apply(v)
        raise Fatal("requires a subcommand: apply, create, delete, list")
    op = ALIASES.get(args[0])
    if op is None:
        raise Fatal(f"unknown command {logrus.go_quote(args[0])} for \"limactl snapshot\"")
    if op == "list":
        v, pos = parse_flags(args[1:], {"quiet": "bool"}, short={"q": "quiet"})
    else:
        v, pos = parse_flags(args[1:], {"tag": "str"})
    g.apply(v)
    if not pos:
        raise Fatal("requires at least 1 arg(s), only received 0")
    name = pos[0]
    inst = store.lookup(name)
    if inst is None:
        raise Fatal(f"open {store.instance_dir(name)}/lima.yaml: no such file or directory")
    drv = driver.get()
    drv.fail_point("snapshot", name)
    drv.pause_point("snapshot")
    if op == "list":
        text = drv.snapshot(inst, "list", None)
        if v.get("quiet"):
            out("".join(tag + "\n" for tag in quiet_tags(text)))
        else:
            out(text)
        return 0
    tag = v.get("tag") or ""
    if not tag:
        raise Fatal("expected tag")
    drv.snapshot(inst, op, tag)
    return 0
