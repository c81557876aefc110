"""Template locators, `--set` expressions (a small yq subset) and create/start edit flags."""
import json
import os
import re
import sys
import urllib.parse

from . import logrus, store

# template:default: Lima's boots Ubuntu with the home directory mounted read-only (the image
# URL and digest are the ones in cli-outcomes.json). The stand-in cannot download Ubuntu: the
# QEMU driver falls back to the image tools/build-guest-image cached.
DEFAULT_TEMPLATE = """\
# Stand-in for Lima's template:default (Ubuntu, host home mounted read-only).
minimumLimaVersion: 2.0.0
vmType: qemu
os: Linux
arch: x86_64
images:
- location: "https://cloud-images.ubuntu.com/releases/noble/release-20260705/ubuntu-24.04-server-cloudimg-amd64.img"
  arch: "x86_64"
  digest: "sha256:ffe6203da54deeb6db5d2a98a83f9ec8e55f149d3f7ba622e1abe5fa966ee3d6"
mounts:
- location: "~"
"""


class TemplateError(Exception):
    pass


class Template:
    def __init__(self, text, name_hint=None, locator=None):
        self.text = text
        self.name_hint = name_hint
        self.locator = locator
        from . import yaml12
        try:
            self.doc = yaml12.loads(text) or {}
        except yaml12.YAMLError as e:
            raise TemplateError(f"failed to parse template `{locator}`: {e}") from e
        if not isinstance(self.doc, dict):
            raise TemplateError(f"template `{locator}` is not a YAML mapping")
        self.edited = False


def _name_from_path(path):
    base = os.path.basename(path)
    for ext in (".yaml", ".yml"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.lower()


def template_dirs():
    env = os.environ.get("LIMA_TEMPLATES_PATH")
    if env:
        return [d for d in env.split(":") if d]
    return [os.path.join(store.lima_home(), "_templates")]


def find_template(name):
    if ".." in name.split("/"):
        raise TemplateError(f"template {logrus.q(name)} not found")
    for d in template_dirs():
        for ext in (".yaml", ".yml"):
            path = os.path.join(d, name + ext)
            if os.path.isfile(path):
                with open(path) as f:
                    return Template(f.read(), os.path.basename(name), f"template:{name}")
    if name == "default":
        return Template(DEFAULT_TEMPLATE, "default", "template:default")
    raise TemplateError(f"template {logrus.q(name)} not found")


def is_locator(arg):
    """Does the argument name a template (rather than an instance)?"""
    return (arg == "-" or arg.startswith("template:") or "://" in arg
            or arg.endswith((".yaml", ".yml")) or os.path.sep in arg or os.path.isfile(arg))


def load(arg, warn):
    """Read a template from a locator: file path, file:// or http(s):// URL, template:NAME, -."""
    if arg == "-":
        return Template(sys.stdin.read(), None, "-")
    if arg.startswith("template://"):
        name = arg[len("template://"):]
        warn(f"Template locator {logrus.q(arg)} should be written {logrus.q('template:' + name)} since Lima v2.0")
        return find_template(name)
    if arg.startswith("template:"):
        return find_template(arg[len("template:"):])
    if arg.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlparse(arg).path)
    elif arg.startswith(("http://", "https://")):
        import urllib.request  # slow to import; rarely needed
        try:
            with urllib.request.urlopen(arg, timeout=30) as r:
                text = r.read().decode()
        except OSError as e:
            raise TemplateError(f"failed to download template `{arg}`: {e}") from e
        return Template(text, _name_from_path(urllib.parse.urlparse(arg).path), arg)
    else:
        path = arg
    try:
        with open(path) as f:
            return Template(f.read(), _name_from_path(path), arg)
    except OSError as e:
        raise TemplateError(f"open {path}: {e.strerror.lower() if e.strerror else e}") from e


# ---------------------------------------------------------------------------- --set (yq subset)

_PATH_TOKEN = re.compile(r'\.(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_\-/]+))|\[\s*(?:(-?\d+)|"((?:[^"\\]|\\.)*)")\s*\]')


def _split_top(expr, sep):
    """Split on `sep` outside quotes and brackets."""
    parts, depth, quote, buf = [], 0, None, []
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            buf.append(c)
            if c == "\\" and quote == '"' and i + 1 < len(expr):
                buf.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            buf.append(c)
        elif c in "[{(":
            depth += 1
            buf.append(c)
        elif c in "]})":
            depth -= 1
            buf.append(c)
        elif depth == 0 and expr.startswith(sep, i):
            parts.append("".join(buf))
            buf = []
            i += len(sep)
            continue
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return parts


def _parse_path(text):
    text = text.strip()
    if text == ".":
        return []
    keys, pos = [], 0
    for m in _PATH_TOKEN.finditer(text):
        if m.start() != pos:
            break
        if m.group(1) is not None:
            keys.append(m.group(1))
        elif m.group(2) is not None:
            keys.append(m.group(2))
        elif m.group(3) is not None:
            keys.append(int(m.group(3)))
        else:
            keys.append(m.group(4))
        pos = m.end()
    if pos != len(text) or not text.startswith("."):
        raise TemplateError(f"unsupported --set path `{text}` (the stand-in supports .a.b[0] paths)")
    return keys


def _get_parent(doc, keys, create=True):
    cur = doc
    for i, k in enumerate(keys[:-1]):
        nxt_is_index = isinstance(keys[i + 1], int)
        if isinstance(k, int):
            if not isinstance(cur, list):
                raise TemplateError("cannot index a non-list with a number")
            while create and len(cur) <= k:
                cur.append(None)
            if cur[k] is None:
                cur[k] = [] if nxt_is_index else {}
            cur = cur[k]
        else:
            if not isinstance(cur, dict):
                raise TemplateError(f"cannot set key `{k}` on a non-mapping")
            if cur.get(k) is None:
                cur[k] = [] if nxt_is_index else {}
            cur = cur[k]
    return cur


def _assign(doc, keys, value, op):
    if not keys:
        raise TemplateError("cannot assign to `.`")
    parent = _get_parent(doc, keys)
    k = keys[-1]
    if isinstance(k, int):
        while len(parent) <= k:
            parent.append(None)
    old = parent.get(k) if isinstance(parent, dict) else parent[k]
    if op == "+=":
        if isinstance(old, list):
            value = old + (value if isinstance(value, list) else [value])
        elif isinstance(old, (int, float)) and isinstance(value, (int, float)):
            value = old + value
        elif isinstance(old, str):
            value = old + str(value)
        elif isinstance(old, dict) and isinstance(value, dict):
            value = dict(old, **value)
    parent[k] = value


def _delete(doc, keys):
    try:
        parent = _get_parent(doc, keys, create=False)
        if isinstance(parent, dict):
            parent.pop(keys[-1], None)
        elif isinstance(parent, list) and isinstance(keys[-1], int) and keys[-1] < len(parent):
            parent.pop(keys[-1])
    except TemplateError:
        pass


def apply_set(doc, expr):
    """Apply `.a.b = v`, `.a += v`, `del(.a)` statements joined with `|`."""
    for stmt in _split_top(expr, "|"):
        stmt = stmt.strip()
        if not stmt:
            continue
        m = re.match(r"^del\((.*)\)$", stmt)
        if m:
            _delete(doc, _parse_path(m.group(1)))
            continue
        for op in ("+=", "="):
            parts = _split_top(stmt, op)
            if len(parts) == 2:
                keys = _parse_path(parts[0])
                from . import yaml12
                try:
                    value = yaml12.parse_flow_value(parts[1])
                except yaml12.YAMLError as e:
                    raise TemplateError(f"failed to parse --set value in `{stmt}`: {e}") from e
                _assign(doc, keys, value, op)
                break
        else:
            raise TemplateError(f"unsupported --set expression `{stmt}`")
    return doc


def _go_float(v):
    return f"{float(v):g}"


def apply_edit_flags(tmpl, flags):
    """--cpus, --memory, --disk, --mount*, --ssh-port, --param, --set (in Lima's order)."""
    exprs = []
    if flags.get("cpus") is not None:
        exprs.append(f".cpus = {int(flags['cpus'])}")
    if flags.get("memory") is not None:
        exprs.append(f'.memory = "{_go_float(flags["memory"])}GiB"')
    if flags.get("disk") is not None:
        exprs.append(f'.disk = "{_go_float(flags["disk"])}GiB"')
    if flags.get("vm_type") is not None:
        exprs.append(f".vmType = {json.dumps(flags['vm_type'])}")
    if flags.get("arch") is not None:
        exprs.append(f".arch = {json.dumps(flags['arch'])}")
    if flags.get("mount_none"):
        exprs.append(".mounts = null")
    for m in flags.get("mount_only") or []:
        loc, _, w = m.partition(":")
        exprs.append(f'.mounts = [{{"location": "{loc}", "writable": {"true" if w == "w" else "false"}}}]')
    for m in reversed(flags.get("mount") or []):
        loc, _, w = m.partition(":")
        tmpl.doc["mounts"] = [{"location": loc, "writable": w == "w"}] + list(tmpl.doc.get("mounts") or [])
        tmpl.edited = True
    if flags.get("mount_writable"):
        for m in tmpl.doc.get("mounts") or []:
            m["writable"] = True
        tmpl.edited = True
    if flags.get("ssh_port") is not None:
        exprs.append(f".ssh.localPort = {int(flags['ssh_port'])}")
    if flags.get("shell"):
        exprs.append(f".user.shell = {json.dumps(flags['shell'])}")
    for kv in flags.get("param") or []:
        k, _, v = kv.partition("=")
        if k not in (tmpl.doc.get("param") or {}):
            raise TemplateError(f"param `{k}` is not declared in the template")
        tmpl.doc["param"][k] = v
        tmpl.edited = True
    exprs += flags.get("set") or []
    for e in exprs:
        if e:
            apply_set(tmpl.doc, e)
            tmpl.edited = True
    return tmpl


def render(tmpl):
    """lima.yaml content: the template as written, or re-serialized after edits."""
    if not tmpl.edited:
        return tmpl.text if tmpl.text.endswith("\n") else tmpl.text + "\n"
    from . import yaml12
    return yaml12.dumps(tmpl.doc)
