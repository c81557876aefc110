"""Log lines in the formats of Go's logrus, as limactl prints them.

Text (default, stderr not a TTY):
    time="2026-08-20T12:14:58+02:00" level=info msg="..." key=value
JSON (--log-format json), keys sorted:
    {"level":"info","msg":"...","time":"2026-08-20T12:14:58+02:00"}
`fatal` exits with status 1, as logrus.Fatal does.
"""
import datetime
import json
import re
import sys
import time

LEVELS = ["trace", "debug", "info", "warning", "error", "fatal", "panic"]

# The host agent logs this (at debug) right after each event it writes to ha.stdout.log, so
# `limactl start` can interleave events and log lines in the order they happened.
EVENT_MARK = "event written to ha.stdout.log"

_state = {"format": "text", "level": "info", "stream": sys.stderr, "before_v22": False}


def configure(fmt=None, level=None, stream=None, before_v22=None):
    if before_v22 is not None:  # the messages of Lima <= v2.1 (the test fake can play one)
        _state["before_v22"] = before_v22
    if fmt is not None:
        _state["format"] = fmt
    if level is not None:
        _state["level"] = level
    if stream is not None:
        _state["stream"] = stream


def rfc3339(ts=None):
    """Go's time.RFC3339 in the local zone: seconds resolution, 'Z' for UTC."""
    dt = datetime.datetime.fromtimestamp(time.time() if ts is None else ts).astimezone()
    s = dt.isoformat(timespec="seconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def rfc3339nano(ns=None):
    """Go's time.RFC3339Nano: up to 9 fraction digits, trailing zeros trimmed."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    base = rfc3339(sec)
    if base.endswith("Z"):
        head, zone = base[:-1], "Z"
    else:
        head, zone = base[:-6], base[-6:]
    digits = f"{frac:09d}".rstrip("0")
    return f"{head}.{digits}{zone}" if digits else f"{head}{zone}"


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b",
            "\f": "\\f", "\v": "\\v"}


def go_quote(s):
    """Go's strconv.Quote (%q): a double-quoted string with Go escapes."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_backquote(s):
    """Go's %#q: backquoted when strconv.CanBackquote, else %q."""
    if any(ch in "`\ufeff" or (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in s):
        return go_quote(s)
    return "`" + s + "`"


def q(s):
    """How names and paths are quoted in messages: %#q since Lima v2.2, %q before (see configure)."""
    return go_quote(s) if _state["before_v22"] else go_backquote(s)


def before_v22():
    return _state["before_v22"]


_BARE = re.compile(r"^[A-Za-z0-9\-._/@^+]*$")


def _text_value(v):
    s = v if isinstance(v, str) else _go_str(v)
    return s if _BARE.match(s) else go_quote(s)


def _go_str(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "<nil>"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_str(v[k])}" for k in sorted(v)) + "]"
    return str(v)


go_sprint = _go_str  # fmt.Sprint of a value decoded from YAML/JSON


def go_json(obj):
    """encoding/json output: compact, HTML-escaped, keys in the given order."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def format_line(level, msg, fields=None, fmt=None, ts=None):
    fields = fields or {}
    fmt = fmt or _state["format"]
    t = ts if isinstance(ts, str) else rfc3339(ts)
    if fmt == "json":
        obj = {k: (v if isinstance(v, (str, int, float, bool)) or v is None else _go_str(v))
               for k, v in fields.items()}
        obj.update({"level": level, "msg": msg, "time": t})
        return go_json(dict(sorted(obj.items())))
    parts = [f"time={go_quote(t)}", f"level={level}", f"msg={_text_value(msg)}"]
    parts += [f"{k}={_text_value(v)}" for k, v in sorted(fields.items())]
    return " ".join(parts)


def enabled(level):
    return LEVELS.index(level) >= LEVELS.index(_state["level"])


def log(level, msg, fields=None, ts=None):
    if not enabled(level):
        return
    write_line(format_line(level, msg, fields, ts=ts))


def write_line(line):
    """A line on the log stream; a closed stderr is not worth a traceback."""
    try:
        _state["stream"].write(line + "\n")
        _state["stream"].flush()
    except OSError:
        pass


def debug(msg, **fields):
    log("debug", msg, fields)


def info(msg, **fields):
    log("info", msg, fields)


def warning(msg, **fields):
    log("warning", msg, fields)


def error(msg, **fields):
    log("error", msg, fields)


class Fatal(Exception):
    """Raised instead of exiting, so the CLI prints `level=fatal` and exits 1 in one place."""

    def __init__(self, msg, fields=None):
        super().__init__(msg)
        self.msg = msg
        self.fields = fields


class Exit(Exception):
    """Exit with this status and nothing logged (a command run in the guest set it)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code
