"""YAML as Lima reads it (Go's gopkg.in/yaml.v3), on Debian's python3-yaml (PyYAML).

PyYAML resolves plain scalars by YAML 1.1 (`yes`/`no`/`on`/`off` are booleans, `0o17` is a
string, `017` octal); yaml.v3 uses YAML 1.2's core schema plus its own leftovers. The Loader
below replaces PyYAML's implicit resolvers with yaml.v3's:
  null   ~ null Null NULL and the empty scalar
  bool   true True TRUE false False FALSE   (`yes`, `no`, `on`, `off`, `y`, `n` stay strings)
  int    decimal, 0x.., 0o.., 0b.., 1.1-style 0777 octal, `_` separators
  float  1.5 1e3 .5 -1.5e-3, .inf .nan (any of the three spellings)
Timestamps and `<<` merge keys are not resolved (strings), as Lima's structs take no timestamps.
Dumping quotes every string either schema would read as something else, so the 1.1-minded
emitter can never write `0o17` or `yes` bare.
"""
import re

import yaml

try:  # libyaml when python3-yaml's C extension matches this interpreter
    from yaml import CSafeDumper as _BaseDumper
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as _BaseDumper
    from yaml import SafeLoader as _BaseLoader



class YAMLError(ValueError):
    """A document that does not parse (PyYAML's error text)."""

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_RESOLVERS = [("tag:yaml.org,2002:null", _NULL, list("~nN") + [""]),
              ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
              ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
              ("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))]


class Loader(_BaseLoader):
    pass


Loader.yaml_implicit_resolvers = {}
for _tag, _re, _first in _RESOLVERS:
    Loader.add_implicit_resolver(_tag, _re, _first)


def _construct_int(loader, node):
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    if digits.startswith(("0x", "0b")):
        return sign * int(digits, 0)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits, 8)  # yaml.v3 still reads YAML 1.1's 0777 as octal
    return sign * int(digits)


def _construct_float(loader, node):
    text = loader.construct_scalar(node).replace("_", "").lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_yaml_str)


class Dumper(_BaseDumper):
    pass


for _tag, _re, _first in _RESOLVERS:  # in addition to YAML 1.1's: quote what either would resolve
    Dumper.add_implicit_resolver(_tag, _re, _first)


def _represent_str(dumper, s):
    if "\n" in s and not s.startswith((" ", "\n")) and not any(c in s for c in "\r\t\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


Dumper.add_representer(str, _represent_str)


def loads(text):
    """One YAML document (an empty one is None)."""
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as e:
        raise YAMLError(str(e)) from e


def dumps(value):
    """Block-style YAML, keys in their given order; round-trips through loads()."""
    return yaml.dump(value, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=1 << 16)


def parse_flow_value(text):
    """A value as yq reads the right-hand side of `.a = VALUE` (JSON is YAML)."""
    return loads(text)
