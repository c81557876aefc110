"""Size and duration parsing/formatting the way Lima (Go: docker/go-units, time) does it."""
import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpPeE]?)([iI]?)([bB]?)\s*$")
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


def ram_in_bytes(value):
    """go-units RAMInBytes: binary multiples whatever the suffix ("4G" == "4GiB" == 4 << 30)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size: {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"invalid size: '{value}'")
    return int(float(m.group(1)) * _MULT[m.group(2).lower()])


_BIN_ABBRS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]


def bytes_size(n):
    """go-units BytesSize: "%.4g" + binary unit, e.g. 3.5GiB, 20GiB, 1.25GiB."""
    n = float(n)
    i = 0
    while n >= 1024 and i < len(_BIN_ABBRS) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{_BIN_ABBRS[i]}"


_DUR_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DUR_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(text):
    """Go time.ParseDuration -> seconds (float). Raises ValueError like Go does."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    pos = 0
    total = 0.0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total
