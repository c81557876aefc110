"""A small YAML reader/writer (standard library only) for Lima templates.

Supports what Lima templates use: block mappings and sequences (including the compact
`- key: value` form and sequences at the same indent as their key), flow collections
(`[]`, `{}`, `[location: /etc/profile]`), plain / single- / double-quoted scalars, block
scalars (`|`, `|-`, `|+`, `>`), comments and a leading `---`. Not supported: anchors, aliases,
tags other than the standard `!!str`-style ones, multi-document streams, complex keys.

Scalars resolve like Go's yaml.v3 into interface{}: null, true/false, ints, floats, else str.
"""
import json
import re


class YAMLError(ValueError):
    pass


_INT_RE = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
_HEX_RE = re.compile(r"^0x[0-9a-fA-F_]+$")
_OCT_RE = re.compile(r"^0o[0-7_]+$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")


def resolve_plain(text):
    """Type a plain (unquoted) scalar."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT_RE.match(text):
        return int(text.replace("_", ""))
    if _HEX_RE.match(text):
        return int(text[2:].replace("_", ""), 16)
    if _OCT_RE.match(text):
        return int(text[2:].replace("_", ""), 8)
    if _FLOAT_RE.match(text) and any(c.isdigit() for c in text):
        return float(text.replace("_", ""))
    if text in (".inf", ".Inf", ".INF", "+.inf"):
        return float("inf")
    if text in ("-.inf", "-.Inf", "-.INF"):
        return float("-inf")
    if text in (".nan", ".NaN", ".NAN"):
        return float("nan")
    return text


def _strip_tag(text):
    """Drop standard tags (`!!str 123` keeps the str); other tags are rejected."""
    if text.startswith("!!"):
        tag, _, rest = text.partition(" ")
        return tag[2:], rest.lstrip()
    if text.startswith(("!", "&", "*")):
        raise YAMLError(f"unsupported YAML feature (anchor, alias or tag): {text[:30]!r}")
    return None, text


_DQ_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v",
               "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\",
               "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029"}


def _fold_line_break(s, i, out):
    """At a raw line break inside a quoted scalar: trailing blanks dropped, the break folds
    into a space, or into n newlines after n empty lines. Returns the next index."""
    while out and out[-1] in (" ", "\t"):
        out.pop()
    i += 1
    blanks = 0
    while True:
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s) and s[i] == "\n":
            blanks += 1
            i += 1
            continue
        break
    out.append("\n" * blanks if blanks else " ")
    return i


def _read_double_quoted(s, i):
    """Parse a double-quoted scalar starting at s[i] == '"'; return (value, next index)."""
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\n":
            i = _fold_line_break(s, i, out)
            continue
        if c == "\\":
            i += 1
            if i >= len(s):
                break
            e = s[i]
            if e in _DQ_ESCAPES:
                out.append(_DQ_ESCAPES[e])
            elif e in "xuU":
                n = {"x": 2, "u": 4, "U": 8}[e]
                out.append(chr(int(s[i + 1:i + 1 + n], 16)))
                i += n
            elif e == "\n":  # escaped line break: joined without a space
                i += 1
                while i < len(s) and s[i] in " \t":
                    i += 1
                continue
            else:
                raise YAMLError(f"bad escape \\{e} in double-quoted string")
            i += 1
            continue
        out.append(c)
        i += 1
    raise YAMLError("unterminated double-quoted string")


def _read_single_quoted(s, i):
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "'":
            if i + 1 < len(s) and s[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if c == "\n":
            i = _fold_line_break(s, i, out)
            continue
        out.append(c)
        i += 1
    raise YAMLError("unterminated single-quoted string")


class _Flow:
    """Parser for flow collections and flow scalars in one string."""

    def __init__(self, s):
        self.s = s
        self.i = 0

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self):
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def value(self, in_flow):
        c = self.peek()
        if c == "[":
            return self.seq()
        if c == "{":
            return self.mapping()
        if c == '"':
            v, self.i = _read_double_quoted(self.s, self.i)
            return v
        if c == "'":
            v, self.i = _read_single_quoted(self.s, self.i)
            return v
        return self.plain(in_flow)

    def plain(self, in_flow):
        start = self.i
        while self.i < len(self.s):
            c = self.s[self.i]
            if in_flow and c in ",[]{}":
                break
            if c == ":" and (self.i + 1 == len(self.s) or self.s[self.i + 1] in " \t\n,[]{}"):
                break
            if c == "#" and self.i > start and self.s[self.i - 1] in " \t":
                break
            self.i += 1
        text = " ".join(self.s[start:self.i].split())
        tag, text = _strip_tag(text)
        if tag == "str":
            return text
        return resolve_plain(text)

    def entry(self, in_map):
        """One flow entry: `value` or `key: value` (a single-pair mapping in a sequence)."""
        key = self.value(True)
        if self.peek() == ":":
            self.i += 1
            if self.peek() in (",", "]", "}"):
                val = None
            else:
                val = self.value(True)
            return (key, val) if in_map else {key: val}
        if in_map:
            return (key, None)
        return key

    def seq(self):
        self.i += 1
        out = []
        while True:
            c = self.peek()
            if c == "]":
                self.i += 1
                return out
            if not c:
                raise YAMLError("unterminated flow sequence")
            out.append(self.entry(False))
            c = self.peek()
            if c == ",":
                self.i += 1
            elif c != "]":
                raise YAMLError(f"expected , or ] in flow sequence near {self.s[self.i:self.i + 20]!r}")

    def mapping(self):
        self.i += 1
        out = {}
        while True:
            c = self.peek()
            if c == "}":
                self.i += 1
                return out
            if not c:
                raise YAMLError("unterminated flow mapping")
            k, v = self.entry(True)
            out[k] = v
            c = self.peek()
            if c == ",":
                self.i += 1
            elif c != "}":
                raise YAMLError(f"expected , or }} in flow mapping near {self.s[self.i:self.i + 20]!r}")


def parse_flow_value(text):
    """Parse one inline value (flow collection or scalar); used for --set expressions too."""
    p = _Flow(text.strip())
    v = p.value(False)
    if p.peek() not in ("", "#"):
        raise YAMLError(f"unexpected trailing text {p.s[p.i:]!r}")
    return v


def _strip_comment(line):
    """Remove a trailing comment (a '#' after whitespace, outside quotes)."""
    in_s = in_d = False
    for i, c in enumerate(line):
        if c == "'" and not in_d:
            in_s = not in_s
        elif c == '"' and not in_s:
            if not (in_d and i > 0 and line[i - 1] == "\\"):
                in_d = not in_d
        elif c == "#" and not in_s and not in_d and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _find_key_colon(text):
    """Index of the ':' that ends a mapping key on this line, or -1."""
    depth = 0
    i = 0
    if text[:1] in ('"', "'"):
        try:
            _, i = (_read_double_quoted if text[0] == '"' else _read_single_quoted)(text, 0)
        except YAMLError:
            return -1
        rest = text[i:].lstrip()
        if rest.startswith(":") and (len(rest) == 1 or rest[1] in " \t"):
            return text.index(":", i)
        return -1
    if text[:1] in ("[", "{"):
        return -1
    while i < len(text):
        c = text[i]
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == ":" and depth <= 0 and (i + 1 == len(text) or text[i + 1] in " \t"):
            return i
        elif c == "#" and i > 0 and text[i - 1] in " \t":
            return -1
        i += 1
    return -1


def _parse_key(text):
    text = text.strip()
    if text[:1] == '"':
        return _read_double_quoted(text, 0)[0]
    if text[:1] == "'":
        return _read_single_quoted(text, 0)[0]
    v = resolve_plain(text)
    return text if isinstance(v, (bool, float)) or v is None and text else v


class _Block:
    def __init__(self, text):
        self.raw = text.replace("\r\n", "\n").replace("\t", "    ").split("\n")
        self.n = 0

    # -- line helpers --
    def _content(self, idx):
        """(indent, stripped content without comment) of a raw line, or None if blank."""
        line = self.raw[idx]
        stripped = _strip_comment(line)
        if not stripped.strip():
            return None
        if stripped.strip() in ("---", "...") and not line.startswith(" "):
            return None
        return len(stripped) - len(stripped.lstrip(" ")), stripped.strip()

    def next_line(self):
        """Advance self.n to the next non-blank line; return (indent, content) or None."""
        while self.n < len(self.raw):
            c = self._content(self.n)
            if c is not None:
                return c
            self.n += 1
        return None

    # -- nodes --
    def node(self, indent):
        ln = self.next_line()
        if ln is None or ln[0] < indent:
            return None
        ind, content = ln
        if content == "-" or content.startswith("- "):
            return self.sequence(ind)
        if _find_key_colon(content) >= 0:
            return self.mapping(ind)
        self.n += 1
        return self.inline_value(content, ind - 1)

    def sequence(self, indent):
        out = []
        while True:
            ln = self.next_line()
            if ln is None or ln[0] != indent:
                break
            ind, content = ln
            if not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].lstrip(" ")
            if not rest:
                self.n += 1
                out.append(self.node(indent + 1))
                continue
            # Re-read the item's content as if it started at its own column.
            col = len(self.raw[self.n]) - len(self.raw[self.n].lstrip(" ")) + (len(content) - len(rest))
            self.raw[self.n] = " " * col + self.raw[self.n].lstrip(" ")[len(content) - len(rest):]
            if rest.startswith("- ") or rest == "-" or _find_key_colon(rest) >= 0:
                out.append(self.node(col))
            else:
                self.n += 1
                out.append(self.inline_value(rest, indent))
        return out

    def mapping(self, indent):
        out = {}
        while True:
            ln = self.next_line()
            if ln is None or ln[0] != indent:
                if ln is not None and ln[0] > indent:
                    raise YAMLError(f"line {self.n + 1}: bad indentation")
                break
            ind, content = ln
            colon = _find_key_colon(content)
            if colon < 0:
                raise YAMLError(f"line {self.n + 1}: expected `key: value`, got {content!r}")
            key = _parse_key(content[:colon])
            rest = content[colon + 1:].strip()
            self.n += 1
            if key in out:
                raise YAMLError(f"line {self.n}: mapping key {key!r} already defined")
            if not rest:
                nxt = self.next_line()
                if nxt is not None and nxt[0] > indent:
                    out[key] = self.node(nxt[0])
                elif nxt is not None and nxt[0] == indent and (nxt[1] == "-" or nxt[1].startswith("- ")):
                    out[key] = self.sequence(indent)
                else:
                    out[key] = None
            else:
                out[key] = self.inline_value(rest, indent)
        return out

    def inline_value(self, text, parent_indent):
        """A value that starts on the current line (self.n already past it unless noted)."""
        tag, body = _strip_tag(text)
        if body[:1] in ("|", ">"):
            return self.block_scalar(body, parent_indent)
        if body[:1] in ("[", "{", '"', "'"):
            # flow collections and quoted scalars may continue on the next lines
            buf = body
            while True:
                try:
                    v = parse_flow_value(buf)
                    break
                except YAMLError:
                    if self.n >= len(self.raw):
                        raise
                    buf += "\n" + self.raw[self.n]
                    self.n += 1
            return str(v) if tag == "str" and v is not None else v
        # plain scalar, possibly continued on more-indented lines
        parts = [body]
        while True:
            ln = self.next_line()
            if ln is None or ln[0] <= parent_indent:
                break
            if _find_key_colon(ln[1]) >= 0 or ln[1].startswith("- "):
                break
            parts.append(ln[1])
            self.n += 1
        text = " ".join(parts)
        return text if tag == "str" else resolve_plain(text)

    def block_scalar(self, header, parent_indent):
        style, chomp, explicit = header[0], "clip", None
        for c in header[1:].split("#")[0].strip():
            if c == "-":
                chomp = "strip"
            elif c == "+":
                chomp = "keep"
            elif c.isdigit():
                explicit = int(c)
        lines = []
        block_indent = None
        while self.n < len(self.raw):
            line = self.raw[self.n]
            if line.strip() == "":
                lines.append("")
                self.n += 1
                continue
            ind = len(line) - len(line.lstrip(" "))
            if block_indent is None:
                block_indent = parent_indent + explicit if explicit else ind
                if ind <= parent_indent:
                    break
            if ind < block_indent:
                break
            lines.append(line[block_indent:])
            self.n += 1
        # trailing blank lines belong to the chomping decision
        trailing = 0
        while lines and lines[-1] == "":
            lines.pop()
            trailing += 1
        if style == "|":
            body = "\n".join(lines)
        else:
            body = ""
            for i, line in enumerate(lines):
                if i == 0:
                    body = line
                elif line == "" or line.startswith(" ") or lines[i - 1].startswith(" ") or lines[i - 1] == "":
                    body += "\n" + line
                else:
                    body += " " + line
        if not lines:
            return "" if chomp != "keep" else "\n" * trailing
        if chomp == "strip":
            return body
        if chomp == "keep":
            return body + "\n" + "\n" * trailing
        return body + "\n"


def loads(text):
    """Parse a YAML document; an empty document is None."""
    b = _Block(text)
    ln = b.next_line()
    if ln is None:
        return None
    v = b.node(ln[0])
    if b.next_line() is not None:
        raise YAMLError(f"line {b.n + 1}: unexpected content {b.raw[b.n].strip()!r}")
    return v


# ---------------------------------------------------------------------------- writer

_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./~@$%^+=(][A-Za-z0-9 _./~@$%^+=()*:,-]*$")


def _scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    s = str(v)
    if (_PLAIN_SAFE.match(s) and not s.endswith((" ", ":")) and ": " not in s and " #" not in s
            and resolve_plain(s) == s):
        return s
    return json.dumps(s, ensure_ascii=False)


def _block_lines(v, indent):
    pad = " " * indent
    if isinstance(v, dict):
        if not v:
            return [pad + "{}"]
        out = []
        for k, val in v.items():
            key = _scalar(k)
            if isinstance(val, dict) and val:
                out.append(f"{pad}{key}:")
                out.extend(_block_lines(val, indent + 2))
            elif isinstance(val, list) and val:
                out.append(f"{pad}{key}:")
                out.extend(_block_lines(val, indent))
            elif isinstance(val, str) and "\n" in val and not val.startswith((" ", "\n")):
                out.append(f"{pad}{key}: {_literal_header(val)}")
                out.extend(_literal_body(val, indent + 2))
            else:
                out.append(f"{pad}{key}: {_inline(val)}")
        return out
    if isinstance(v, list):
        if not v:
            return [pad + "[]"]
        out = []
        for item in v:
            if isinstance(item, (dict, list)) and item:
                sub = _block_lines(item, indent + 2)
                out.append(pad + "- " + sub[0][indent + 2:])
                out.extend(sub[1:])
            elif isinstance(item, str) and "\n" in item and not item.startswith((" ", "\n")):
                out.append(f"{pad}- {_literal_header(item)}")
                out.extend(_literal_body(item, indent + 2))
            else:
                out.append(f"{pad}- {_inline(item)}")
        return out
    return [pad + _inline(v)]


def _literal_header(s):
    if s.endswith("\n\n"):
        return "|+"
    return "|" if s.endswith("\n") else "|-"


def _literal_body(s, indent):
    body = s[:-1] if s.endswith("\n") else s
    if s.endswith("\n\n"):
        body = s[:-1]
    return [(" " * indent + line) if line else "" for line in body.split("\n")]


def _inline(v):
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_inline(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    return _scalar(v)


def dumps(v):
    """Block-style YAML for a value (round-trips through loads)."""
    return "\n".join(_block_lines(v, 0)) + "\n"
