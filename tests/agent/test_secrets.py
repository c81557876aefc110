#!/usr/bin/env python3
"""machine-agent `secrets.*` end to end: the real binary over its real socket renders secrets into
a tmpfs it mounts itself (PROTOCOL.md §4 `secrets.*`, §8). Shares the harness of test_agent.py.

Run: python3 test_secrets.py --agent PATH [unittest args]   (ctest runs it as `agent_secrets`)
Runs as root: the agent mounts its tmpfs, files belong to `nobody`, one test runs the agent as
`nobody` to see what it does when it cannot mount. Figures are `FIGURE` lines.
"""
import base64
import json
import os
import pwd
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_agent as ta  # noqa: E402  (the harness: Agent, Client, AgentTest)
from test_agent import figure  # noqa: E402

NOBODY = pwd.getpwnam("nobody")
BASE_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "templates", "profiles",
                            "base.toml")
MARKER = b"MARKER-7f3a9c-do-not-leak"  # in every value: must never be seen outside the file
BASH_ENV_CLEAN = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def b64(value):
    return base64.b64encode(value).decode()


def variables(values):
    """{name: bytes} -> the request's `variables`."""
    return [{"name": n, "value_b64": b64(v)} for n, v in values.items()]


def hard_values():
    """Values that break every naive quoting: each must come back byte for byte."""
    big = bytearray(os.urandom(64 * 1024))
    for i in range(0, len(big), 97):
        big[i] = ord("'")  # plenty of quotes to escape
    big = bytes(b if b else 1 for b in big)  # no NUL
    return {
        "NEWLINES": b"line1\nline2\n\nline4\n" + MARKER,
        "TRAILING_NEWLINES": b"x\n\n\n",
        "SINGLE_QUOTES": b"it's '' ''' '\\'' end'" + MARKER,
        "ONLY_A_QUOTE": b"'",
        "DOUBLE_QUOTES": b'say "hi" "" "',
        "DOLLAR": b"$HOME ${PATH} $(id) $((1+1)) $'x' $\"y\" $",
        "BACKSLASH": b"\\ \\\\ \\n \\t \\' \\" + MARKER,
        "BACKTICKS": b"`id` `` `",
        "UNICODE": "é✓ 日本語 🎉 \u202e".encode() + MARKER,
        "EVERY_BYTE": bytes(range(1, 256)),  # control characters, DEL, invalid UTF-8
        "CRLF": b"a\r\nb\r",
        "EMPTY": b"",
        "SPACES": b"  leading and trailing  ",
        "GLOB_AND_HISTORY": b"* ? [a-z] ~ !! !$ {a,b}",
        "SHELL_SYNTAX": b"; exit 7; && || | > /tmp/x < /dev/null & #",
        "LOOKS_LIKE_A_LINE": b"'\nexport INJECTED='pwned\n",
        "BIG_64K": big,
        "lower_case_1": b"ok",
        "_UNDERSCORE": b"ok",
    }


def source_values(path, names, user="nobody"):
    """Sources `path` in a clean bash as `user` and returns {name: bytes} as bash sees them
    (printf %s of each, NUL-separated: values cannot contain NUL)."""
    script = 'set -e; source "$1"; shift; for n in "$@"; do printf "%s\\0" "${!n}"; done; ' \
             '[[ -z ${INJECTED+set} ]] || { echo "INJECTED is set" >&2; exit 9; }'
    argv = ["bash", "--noprofile", "--norc", "-c", script, "bash", path, *names]
    if user != "root":
        argv = ["runuser", "-u", user, "--"] + argv
    r = subprocess.run(argv, capture_output=True, env=BASH_ENV_CLEAN)
    assert r.returncode == 0, (r.returncode, r.stderr)
    parts = r.stdout.split(b"\0")
    assert parts[-1] == b"" and len(parts) == len(names) + 1, len(parts)
    return dict(zip(names, parts[:-1]))


def mounts_at(path):
    """(fstype, mount options, super options) of each mount at `path`, from mountinfo."""
    path = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ")
            fields = pre.split()
            if fields[4].replace("\\040", " ") == path:
                fstype, _source, super_opts = post.split()
                out.append((fstype, fields[5].split(","), super_opts.split(",")))
    return out


def fs_type(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


def listing(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None


class SecretsTest(ta.AgentTest):
    def setUp(self):
        super().setUp()
        os.chmod(self.tmp, 0o755)  # `nobody` reads its files (and runs as the agent in one test)
        self.dir = os.path.join(self.tmp, "secrets")
        self.mounts = []  # the test's own mounts, unmounted last

    def tearDown(self):
        for a in self.agents:
            a.stop()
        # What the agent mounted (maybe more than once), then the test's own mounts.
        for path in [self.dir] + self.mounts[::-1]:
            for _ in range(4):
                if not mounts_at(path):
                    break
                subprocess.run(["umount", path], capture_output=True)
        super().tearDown()

    def agent(self, extra=(), secrets_dir=None, **kw):
        kw.setdefault("user", "nobody")
        return super().agent(extra=["--secrets-dir", secrets_dir or self.dir, *extra], **kw)

    def mount_tmpfs(self, path, options):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
        self.mounts.append(path)

    def render(self, client, set_name, values, **fields):
        return client.call("secrets.render", set=set_name, variables=variables(values), **fields)

    def events(self, agent):
        return ta.journal_events(agent, 0, ("secrets.",))

    def file(self, set_name):
        return os.path.join(self.dir, set_name + ".env")

    def read(self, set_name):
        with open(self.file(set_name), "rb") as f:
            return f.read()

    def assert_nothing_written(self, path=None):
        entries = listing(path or self.dir)
        self.assertTrue(entries is None or entries == [], entries)


class Render(SecretsTest):
    def test_hard_values_come_back_byte_for_byte_through_bash(self):
        a = self.agent()
        c = a.client()
        values = hard_values()
        r = self.render(c, "web", values)
        self.assertEqual(r, {"v": 1, "id": r["id"], "type": "result", "set": "web", "count": len(values),
                             "path": self.file("web")})
        got = source_values(self.file("web"), list(values))  # as the VM user, in a clean bash
        for name, value in values.items():
            self.assertEqual(got[name], value, name)
        ev = self.events(a)
        self.assertEqual(len(ev), 1)
        self.assertEqual((ev[0]["event"], ev[0]["set"], ev[0]["count"], ev[0]["replaced"]),
                         ("secrets.rendered", "web", len(values), False))
        self.assertEqual(ev[0]["names"], list(values))

    def test_file_format_modes_and_owner(self):
        a = self.agent()
        c = a.client()
        self.assertEqual(self.render(c, "api-1", {"A": b"x", "B": b"it's", "C": b"two\nlines"})["type"], "result")
        text = self.read("api-1")
        lines = text.split(b"\n")
        self.assertTrue(lines[0].startswith(b"# machine-agent secrets.render: set api-1, 3 variables"), lines[0])
        self.assertEqual(b"\n".join(lines[1:]), b"export A='x'\nexport B='it'\\''s'\nexport C='two\nlines'\n")
        st = os.stat(self.file("api-1"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual((st.st_uid, st.st_gid), (NOBODY.pw_uid, NOBODY.pw_gid))
        d = os.stat(self.dir)
        self.assertEqual(stat.S_IMODE(d.st_mode), 0o700)
        self.assertEqual((d.st_uid, d.st_gid), (NOBODY.pw_uid, NOBODY.pw_gid))
        self.assertEqual(os.listdir(self.dir), ["api-1.env"])  # no temporary file left

    def test_the_agent_mounts_its_own_tmpfs(self):
        os.makedirs(self.dir)
        self.assertEqual(mounts_at(self.dir), [])
        a = self.agent()
        c = a.client()
        self.assertEqual(self.render(c, "web", {"A": b"1"})["type"], "result")
        m = mounts_at(self.dir)
        self.assertEqual(len(m), 1, m)
        fstype, opts, super_opts = m[0]
        self.assertEqual(fstype, "tmpfs")
        for o in ("nosuid", "nodev", "noexec"):
            self.assertIn(o, opts)
        self.assertIn("size=16384k", super_opts)
        self.assertIn("noswap", super_opts)  # the values never reach a swap device
        self.assertIn("mode=700", super_opts)
        self.assertIn(f"uid={NOBODY.pw_uid}", super_opts)
        self.assertIn(f"gid={NOBODY.pw_gid}", super_opts)
        self.assertEqual(fs_type(self.dir), "tmpfs")
        self.assertIn("mounted a tmpfs on " + self.dir, a.read_log())
        # A second set, and an agent restart: the same tmpfs, never a second one on top.
        self.assertEqual(self.render(c, "api", {"B": b"2"})["type"], "result")
        a.stop()
        a.start()
        self.assertEqual(self.render(a.client(), "web", {"A": b"3"})["type"], "result")
        self.assertEqual(len(mounts_at(self.dir)), 1)
        self.assertEqual(sorted(os.listdir(self.dir)), ["api.env", "web.env"])

    def test_a_missing_directory_is_created_and_mounted(self):
        a = self.agent()
        self.assertFalse(os.path.exists(self.dir))
        self.assertEqual(self.render(a.client(), "web", {"A": b"1"})["type"], "result")
        self.assertEqual(mounts_at(self.dir)[0][0], "tmpfs")

    def test_the_request_user_owns_the_file(self):
        a = self.agent(user="root")  # the agent's --user is root; the request says nobody
        c = a.client()
        self.assertEqual(self.render(c, "web", {"A": b"1"}, user="nobody")["type"], "result")
        self.assertEqual(os.stat(self.file("web")).st_uid, NOBODY.pw_uid)
        self.assertEqual(os.stat(self.dir).st_uid, NOBODY.pw_uid)
        # The directory is nobody's now: a set for root would be in a directory root does not own.
        r = self.render(c, "other", {"A": b"1"})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn(f"belongs to uid {NOBODY.pw_uid}", r["message"])
        self.assertEqual(os.listdir(self.dir), ["web.env"])

    def test_limits_of_one_request(self):
        a = self.agent()
        c = a.client()
        # 1000 variables (the most) of short values.
        many = {f"V{i}": b"%d" % i + MARKER for i in range(1000)}
        r = self.render(c, "many", many)
        self.assertEqual((r["type"], r["count"]), ("result", 1000))
        got = source_values(self.file("many"), ["V0", "V999"])
        self.assertEqual((got["V0"], got["V999"]), (b"0" + MARKER, b"999" + MARKER))
        # The event lists names only, and stays under 64 KiB whatever the names.
        long_names = {("N" * 120 + "%03d" % i): b"v" for i in range(1000)}
        self.assertEqual(self.render(c, "long-names", long_names)["count"], 1000)
        ev = [e for e in self.events(a) if e["set"] == "long-names"][0]
        self.assertEqual(len(ev["names"]) + ev["names_omitted"], 1000)
        self.assertLess(len(str(ev)), 64 * 1024)
        # Eleven values of the largest size fit in one line of 1 MiB...
        big = {f"BIG{i}": bytes([65 + i]) * (64 * 1024) for i in range(11)}
        r = self.render(c, "big", big)
        self.assertEqual((r["type"], r["count"]), ("result", 11))
        self.assertEqual(source_values(self.file("big"), ["BIG10"])["BIG10"], b"K" * 65536)
        # ...twelve do not: the line is refused whole, and the connection goes on.
        big["BIG11"] = b"M" * (64 * 1024)
        rid = c.request("secrets.render", set="bigger", variables=variables(big))
        m = c.next()
        self.assertEqual((m["type"], m["code"], m["id"]), ("error", "line_too_long", None))
        self.assertFalse(os.path.exists(self.file("bigger")))
        self.assertEqual(c.call("hello")["type"], "result")
        self.assertNotEqual(rid, None)

    def test_tmpfs_full(self):
        a = self.agent()
        c = a.client()
        self.assertEqual(self.render(c, "web", {"A": b"old"})["type"], "result")
        # Fill the agent's 16 MiB tmpfs, leaving less than the next set needs.
        junk = os.path.join(self.dir, "junk")
        with open(junk, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\1" * 65536)
            except OSError:
                pass
        big = {f"BIG{i}": b"x" * 65536 for i in range(10)}
        r = self.render(c, "web", big)
        self.assertEqual((r["type"], r["code"]), ("error", "internal"))
        self.assertIn("No space left on device", r["message"])
        self.assertEqual(sorted(os.listdir(self.dir)), ["junk", "web.env"])  # no temporary file left
        self.assertEqual(source_values(self.file("web"), ["A"])["A"], b"old")  # the old set, whole
        os.unlink(junk)
        self.assertEqual(self.render(c, "web", big)["count"], 10)

    def test_a_stale_temporary_file_is_swept(self):
        a = self.agent()
        c = a.client()
        self.render(c, "web", {"A": b"1"})
        stale = os.path.join(self.dir, ".web.env.tmp-0123456789abcdef")
        with open(stale, "wb") as f:
            f.write(b"export A='half")  # an agent killed mid-render
        self.render(c, "web", {"A": b"2"})
        self.assertEqual(os.listdir(self.dir), ["web.env"])
        self.assertIn("removed the unfinished render", a.read_log())


class BadRequests(SecretsTest):
    def test_every_rule_is_checked_before_anything_is_written(self):
        a = self.agent()
        c = a.client()
        ok = [{"name": "GOOD", "value_b64": b64(b"fine " + MARKER)}]
        cases = [
            ("name starts with a digit", {"variables": ok + [{"name": "1A", "value_b64": b64(MARKER)}]}, "'name'"),
            ("name with a dash", {"variables": ok + [{"name": "A-B", "value_b64": b64(MARKER)}]}, "'name'"),
            ("name with a space", {"variables": ok + [{"name": "A B", "value_b64": b64(MARKER)}]}, "'name'"),
            ("empty name", {"variables": ok + [{"name": "", "value_b64": b64(MARKER)}]}, "'name'"),
            ("name with a dollar", {"variables": ok + [{"name": "$X", "value_b64": b64(MARKER)}]}, "'name'"),
            ("name of 129", {"variables": [{"name": "N" * 129, "value_b64": b64(MARKER)}]}, "'name'"),
            ("bash read-only name", {"variables": [{"name": "UID", "value_b64": b64(MARKER)}]}, "'name'"),
            ("a value in the name", {"variables": [{"name": MARKER.decode(), "value_b64": "eA=="}]}, "'name'"),
            ("name not a string", {"variables": [{"name": 5, "value_b64": "eA=="}]}, "'name'"),
            ("duplicate name", {"variables": ok + [{"name": "X", "value_b64": "eA=="},
                                                   {"name": "X", "value_b64": b64(MARKER)}]},
             "variables[2] 'X': the name is already used by variables[1]"),
            ("NUL in a value", {"variables": ok + [{"name": "N", "value_b64": b64(MARKER + b"\0" + MARKER)}]},
             "variables[1] 'N': the value contains a NUL byte"),
            ("not base64", {"variables": [{"name": "N", "value_b64": MARKER.decode()}]}, "not valid base64"),
            ("value too long", {"variables": [{"name": "N", "value_b64": b64(MARKER * 3000)}]}, "65536"),
            ("plain value field", {"variables": [{"name": "N", "value": MARKER.decode()}]}, "missing 'value_b64'"),
            ("too many", {"variables": [{"name": f"V{i}", "value_b64": "eA=="} for i in range(1001)]}, "1000"),
            ("no variables", {}, "missing 'variables'"),
            ("variables not an array", {"variables": {"A": "eA=="}}, "'variables' must be an array"),
            ("item not an object", {"variables": ["A"]}, "variables[0] must be an object"),
            ("empty user", {"variables": ok, "user": ""}, "'user'"),
        ]
        for what, fields, expected in cases:
            with self.subTest(what):
                r = c.call("secrets.render", **{"set": "web", **fields})
                self.assertEqual((r["type"], r["code"]), ("error", "bad_request"), r)
                self.assertIn(expected, r["message"])
                self.assertNotIn(MARKER.decode(), r["message"])
        for bad_set in ("../x", "A", "", "a" * 65, "a/b", ".hidden", "-x", "_x", "web.env", "x\n", 7):
            with self.subTest(set=bad_set):
                r = c.call("secrets.render", set=bad_set, variables=ok)
                self.assertEqual((r["type"], r["code"]), ("error", "bad_request"), r)
                self.assertIn("'set'", r["message"])
        r = c.call("secrets.render", set="web", variables=ok, user="no-such-user-here")
        self.assertEqual((r["type"], r["code"]), ("error", "no_such_user"))
        self.assertIn("no-such-user-here", r["message"])
        # Nothing at all: not even the directory, let alone a mount.
        self.assertFalse(os.path.exists(self.dir))
        self.assertEqual(mounts_at(self.dir), [])
        self.assertEqual(self.events(a), [])
        # A name of 128 and a set name of 64 are fine.
        r = self.render(c, "a" * 64, {"N" * 128: b"x"})
        self.assertEqual(r["type"], "result", r)

    def test_no_user_anywhere(self):
        a = self.agent(user=None)  # no --user
        r = a.client().call("secrets.render", set="web", variables=variables({"A": b"1"}))
        self.assertEqual((r["type"], r["code"]), ("error", "bad_request"))
        self.assertIn("--user", r["message"])
        self.assertFalse(os.path.exists(self.dir))

    def test_connection_dropped_in_the_middle_of_a_render(self):
        a = self.agent()
        line = (json.dumps({"v": 1, "id": 1, "type": "secrets.render", "set": "web",
                            "variables": variables({"A": MARKER * 100, "B": b"x"})}) + "\n").encode()

        def drop_half_lines():
            health = a.client()
            before = health.call("health")["clients"]
            for how in ("close", "half-close", "reset"):
                with self.subTest(how):
                    c = a.client()
                    c.send_raw(line[:len(line) // 2])
                    if how == "half-close":
                        c.sock.shutdown(socket.SHUT_WR)
                        self.assertEqual(c.next()["code"], "truncated")
                    elif how == "reset":
                        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    c.close()
            # The agent is done with each of them (what it would have rendered, it has) once it
            # counts none of them any more; and it is still there to say so.
            ta.wait_until(lambda: health.call("health")["clients"] == before, 5,
                          "the agent to let the dropped connections go")

        drop_half_lines()
        self.assertFalse(os.path.exists(self.dir))  # not even mounted: no request was ever whole
        self.assertEqual(self.events(a), [])
        # With a set in place: it stays as it was, and no temporary file is left.
        self.render(a.client(), "web", {"A": b"before"})
        before = self.read("web")
        drop_half_lines()
        self.assertEqual(os.listdir(self.dir), ["web.env"])
        self.assertEqual(self.read("web"), before)
        self.assertEqual(len(self.events(a)), 1)
        # The whole line does it.
        c = a.client()
        c.send_raw(line)
        self.assertEqual(c.final(1)[-1]["count"], 2)
        self.assertEqual(os.listdir(self.dir), ["web.env"])


class Target(SecretsTest):
    def test_a_directory_on_disk_mounted_there_is_refused(self):
        disk = os.path.join(self.tmp, "on-disk")
        os.makedirs(disk)
        os.makedirs(self.dir)
        subprocess.run(["mount", "--bind", disk, self.dir], check=True)
        self.mounts.append(self.dir)
        self.assertNotEqual(fs_type(self.dir), "tmpfs")
        a = self.agent()
        c = a.client()
        r = self.render(c, "web", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn(self.dir + " is not a tmpfs", r["message"])
        self.assertEqual(os.listdir(disk), [])
        self.assertEqual(len(mounts_at(self.dir)), 1)  # refused, not covered with a tmpfs
        for t in ("secrets.clear", "secrets.list"):
            r = c.call(t)
            self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"), t)
            self.assertIn("is not a tmpfs", r["message"])
        self.assertEqual(self.events(a), [])

    def test_a_symlink_is_refused(self):
        real = os.path.join(self.tmp, "real")
        self.mount_tmpfs(real, f"mode=0700,uid={NOBODY.pw_uid},gid={NOBODY.pw_gid}")
        os.symlink(real, self.dir)
        a = self.agent()
        c = a.client()
        r = self.render(c, "web", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn("symbolic link", r["message"])
        self.assertEqual(os.listdir(real), [])
        self.assertTrue(os.path.islink(self.dir))
        for t in ("secrets.clear", "secrets.list"):
            r = c.call(t)
            self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"), t)
            self.assertIn("symbolic link", r["message"])

    def test_a_tmpfs_of_someone_else_is_refused(self):
        # Mounted by someone else, root's and world-readable: not the agent's to fix.
        self.mount_tmpfs(self.dir, "mode=0755")
        a = self.agent()
        r = self.render(a.client(), "web", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn("belongs to uid 0 with mode 0755; it must be nobody's with mode 0700", r["message"])
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o755)

    def test_not_a_directory_or_a_set_that_is_a_directory_is_refused(self):
        with open(self.dir, "w") as f:
            f.write("a file where the directory should be")
        a = self.agent()
        c = a.client()
        r = self.render(c, "web", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn("is not a directory", r["message"])
        os.unlink(self.dir)
        self.assertEqual(self.render(c, "web", {"A": b"1"})["type"], "result")
        os.makedirs(self.file("api"))  # the VM user put a directory where a set goes
        r = self.render(c, "api", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn("api.env is a directory", r["message"])
        self.assertNotIn(MARKER.decode(), r["message"])
        self.assertEqual(sorted(os.listdir(self.dir)), ["api.env", "web.env"])  # no temporary file

    def test_an_io_failure_is_still_internal(self):
        # Not a question of the target's safety: a full tmpfs is `internal` (test_tmpfs_full);
        # so is a mount the agent cannot make (here: a directory on a read-only bind mount).
        ro = os.path.join(self.tmp, "ro")
        os.makedirs(ro)
        subprocess.run(["mount", "--bind", ro, ro], check=True)
        self.mounts.append(ro)
        subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
        a = self.agent(secrets_dir=os.path.join(ro, "secrets"))
        r = self.render(a.client(), "web", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "internal"), r)
        self.assertIn("Read-only file system", r["message"])

    def test_symlinks_inside_are_never_followed(self):
        a = self.agent()
        c = a.client()
        self.render(c, "web", {"A": b"1"})
        outside = os.path.join(self.tmp, "outside")
        with open(outside, "wb") as f:
            f.write(b"precious")
        # The VM user swaps its set for a symlink to a file of root's.
        os.unlink(self.file("web"))
        os.symlink(outside, self.file("web"))
        self.assertEqual(self.render(c, "web", {"A": b"2"})["type"], "result")  # replaces the link
        self.assertFalse(os.path.islink(self.file("web")))
        # Past the zero-fill of what was replaced: a secrets.clear does every pending one first
        # (PROTOCOL.md §4), here of a set that is not there, so nothing else changes.
        self.assertEqual(c.call("secrets.clear", set="nothing-here")["cleared"], [])
        with open(outside, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        os.unlink(self.file("web"))
        os.symlink(outside, self.file("web"))
        self.assertEqual(c.call("secrets.clear", set="web")["cleared"], ["web"])  # the link goes
        self.assertFalse(os.path.lexists(self.file("web")))
        with open(outside, "rb") as f:
            self.assertEqual(f.read(), b"precious")


class NotRoot(SecretsTest):
    """The agent as `nobody`: it cannot mount, so the directory must already be a tmpfs."""

    def agent_as_nobody(self):
        root = os.path.join(self.tmp, "nobody-world")
        os.makedirs(root)
        os.chown(root, NOBODY.pw_uid, NOBODY.pw_gid)
        wrapper = os.path.join(self.tmp, "agent-as-nobody")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec setpriv --reuid={NOBODY.pw_uid} --regid={NOBODY.pw_gid} --clear-groups "
                    f"-- {ta.AGENT} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        agent = ta.Agent(root, extra=["--secrets-dir", self.dir, "--group", str(NOBODY.pw_gid)], user="nobody")
        self.agents.append(agent)
        saved, ta.AGENT = ta.AGENT, wrapper
        try:
            return agent.start()
        finally:
            ta.AGENT = saved

    def test_a_directory_on_disk_is_refused(self):
        os.makedirs(self.dir)
        os.chown(self.dir, NOBODY.pw_uid, NOBODY.pw_gid)
        a = self.agent_as_nobody()
        r = self.render(a.client(), "web", {"A": MARKER})
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn("is not a tmpfs", r["message"])
        self.assertIn("the agent is not root, so it cannot mount one", r["message"])
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(mounts_at(self.dir), [])

    def test_a_missing_directory_is_not_left_behind(self):
        a = self.agent_as_nobody()
        os.chmod(self.tmp, 0o777)  # so that nobody could create it
        try:
            r = self.render(a.client(), "web", {"A": MARKER})
        finally:
            os.chmod(self.tmp, 0o755)
        self.assertEqual((r["type"], r["code"]), ("error", "unsafe_target"))
        self.assertIn("is not a tmpfs", r["message"])
        self.assertFalse(os.path.exists(self.dir))  # created, then removed again

    def test_an_existing_tmpfs_is_used(self):
        self.mount_tmpfs(self.dir, f"size=1m,mode=0700,uid={NOBODY.pw_uid},gid={NOBODY.pw_gid}")
        a = self.agent_as_nobody()
        c = a.client()
        r = self.render(c, "web", {"A": b"it's " + MARKER})
        self.assertEqual(r["type"], "result", r)
        self.assertEqual(source_values(self.file("web"), ["A"])["A"], b"it's " + MARKER)
        self.assertEqual(os.stat(self.file("web")).st_uid, NOBODY.pw_uid)
        self.assertEqual(c.call("secrets.clear")["cleared"], ["web"])
        self.assertEqual(len(mounts_at(self.dir)), 1)  # its own mount attempt: none


class Replace(SecretsTest):
    def test_readers_never_see_a_partial_file(self):
        a = self.agent()
        c = a.client()
        v1 = {f"A{i}": b"one " + bytes([65 + i % 26]) * 300 for i in range(200)}
        v2 = {f"B{i}": b"two'" * 20 for i in range(50)}
        self.render(c, "web", v1)
        c1 = self.read("web")
        self.render(c, "web", v2)
        c2 = self.read("web")
        self.assertNotEqual(len(c1), len(c2))
        valid = {c1, c2}
        bad, reads = [], [0]
        stop = threading.Event()

        def reader():
            path = self.file("web")
            while not stop.is_set():
                with open(path, "rb") as f:
                    data = f.read()
                reads[0] += 1
                if data not in valid:
                    bad.append(len(data))

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        renders = 0
        while time.monotonic() - t0 < 3 or renders < 100:
            self.assertEqual(self.render(c, "web", v1 if renders % 2 else v2)["type"], "result")
            renders += 1
        stop.set()
        for t in threads:
            t.join()
        self.assertEqual(bad, [], f"{len(bad)} of {reads[0]} reads saw a partial file")
        self.assertGreater(reads[0], 100)
        self.assertEqual(os.listdir(self.dir), ["web.env"])
        ev = [e for e in self.events(a) if e["event"] == "secrets.rendered"]
        self.assertEqual(len(ev), renders + 2)
        self.assertTrue(all(e["replaced"] for e in ev[1:]))

    def test_the_replaced_file_is_zero_filled(self):
        a = self.agent()
        c = a.client()
        self.render(c, "web", {"A": MARKER * 10})
        old = open(self.file("web"), "rb")  # the old inode, as a reader that opened it before
        try:
            before = old.read()
            self.render(c, "web", {"A": b"new"})
            # A reader that opened it just before the rename still reads it whole...
            old.seek(0)
            self.assertEqual(old.read(), before)
            # ...and shortly after, its bytes are zeros: the pages no longer hold the values.
            deadline = time.monotonic() + 5
            while True:
                old.seek(0)
                data = old.read()
                if data == b"\0" * len(before):
                    break
                self.assertLess(time.monotonic(), deadline, "the replaced file was not zero-filled")
                time.sleep(0.05)
        finally:
            old.close()
        self.assertEqual(source_values(self.file("web"), ["A"])["A"], b"new")

    def test_pending_zero_fills_happen_when_the_agent_stops(self):
        a = self.agent()
        c = a.client()
        self.render(c, "web", {"A": MARKER})
        with open(self.file("web"), "rb") as old:
            size = len(old.read())
            self.render(c, "web", {"A": b"new"})
            a.stop()  # well within the delay
            old.seek(0)
            self.assertEqual(old.read(), b"\0" * size)


class ClearAndList(SecretsTest):
    def test_clear_zero_fills_and_removes(self):
        a = self.agent()
        c = a.client()
        self.render(c, "web", {"A": MARKER * 3})
        self.render(c, "api", {"B": b"b"})
        with open(self.file("web"), "rb") as held:  # a reader that has it open
            size = len(held.read())
            r = c.call("secrets.clear", set="web")
            self.assertEqual(r, {"v": 1, "id": r["id"], "type": "result", "cleared": ["web"]})
            held.seek(0)
            self.assertEqual(held.read(), b"\0" * size)
        self.assertEqual(os.listdir(self.dir), ["api.env"])
        # A set that is not there: not an error, no event.
        self.assertEqual(c.call("secrets.clear", set="web")["cleared"], [])
        # Everything.
        self.render(c, "third", {"C": b"c"})
        with open(os.path.join(self.dir, "stray.txt"), "w") as f:
            f.write("not a set")
        self.assertEqual(c.call("secrets.clear")["cleared"], ["api", "third"])
        self.assertEqual(os.listdir(self.dir), ["stray.txt"])
        self.assertEqual(c.call("secrets.clear")["cleared"], [])
        ev = [(e["event"], e.get("sets")) for e in self.events(a) if e["event"] == "secrets.cleared"]
        self.assertEqual(ev, [("secrets.cleared", ["web"]), ("secrets.cleared", ["api", "third"])])
        for bad in ("../x", "A", 5):
            self.assertEqual(c.call("secrets.clear", set=bad)["code"], "bad_request")

    def test_clear_and_list_without_a_directory(self):
        a = self.agent()
        c = a.client()
        self.assertEqual(c.call("secrets.clear")["cleared"], [])
        self.assertEqual(c.call("secrets.list")["sets"], [])
        self.assertFalse(os.path.exists(self.dir))  # neither creates nor mounts

    def test_list(self):
        a = self.agent()
        c = a.client()
        t0 = time.time()
        self.render(c, "web", {"A": MARKER, "B": b"it's\nmultiline\nexport X='y'"})
        self.render(c, "api", {"C": b"c"})
        raw_seen = []
        c.send({"v": 1, "id": 99, "type": "secrets.list"})
        while True:
            line = c.sock.recv(65536)
            raw_seen.append(line)
            if b"\n" in line:
                break
        self.assertNotIn(MARKER, b"".join(raw_seen))
        r = json.loads(b"".join(raw_seen).split(b"\n")[0])
        self.assertEqual([s["set"] for s in r["sets"]], ["api", "web"])
        web = r["sets"][1]
        self.assertEqual(web["count"], 2)
        self.assertEqual(web["bytes"], os.path.getsize(self.file("web")))
        self.assertTrue(web["mtime"].endswith("Z"))
        mtime = time.mktime(time.strptime(web["mtime"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        self.assertLess(abs(mtime - t0), 5)
        self.assertEqual(r["sets"][0]["count"], 1)


class NoLeaks(SecretsTest):
    def test_values_are_never_in_events_logs_or_errors(self):
        a = self.agent(extra=["--verbose"])
        c = a.client()
        values = hard_values()
        self.render(c, "web", values)
        self.render(c, "web", {"ONE": MARKER})
        seen = []
        seen.append(c.call("secrets.render", set="web", variables=[{"name": "A", "value_b64": b64(MARKER + b"\0")}]))
        seen.append(c.call("secrets.render", set="web", variables=[{"name": "A", "value_b64": b64(MARKER)},
                                                                   {"name": "A", "value_b64": b64(MARKER)}]))
        seen.append(c.call("secrets.render", set="Bad", variables=[{"name": "A", "value_b64": b64(MARKER)}]))
        seen.append(c.call("secrets.list"))
        seen.append(c.call("secrets.clear"))
        c.send_raw(b'{"v":1,"id":50,"type":"secrets.render","set":"web","variables":[{"name":"A","value_b64":"'
                   + base64.b64encode(MARKER) + b'"}]')  # not JSON: no closing brace
        c.send_raw(b"\n")
        seen.append(c.next())
        events = self.events(a)
        self.assertEqual([e["event"] for e in events], ["secrets.rendered", "secrets.rendered", "secrets.cleared"])
        a.stop()
        with open(a.journal, "rb") as f:
            journal = f.read()
        log = a.read_log().encode()
        needles = [MARKER, base64.b64encode(MARKER), values["BIG_64K"][:40], b64(values["UNICODE"]).encode()]
        for where, blob in (("journal", journal), ("agent log", log), ("replies", str(seen).encode())):
            for needle in needles:
                self.assertNotIn(needle, blob, where)
        self.assertIn(b"secrets.rendered", journal)
        self.assertIn(b"NEWLINES", journal)  # the names are there


class Discover(SecretsTest):
    """secrets.discover: which repos under the VM user's ~/code say `use op_env ID`. The agent
    reads the user's home from /etc/passwd, so it runs in a mount namespace where /etc/passwd
    is a copy giving `nobody` a home in the test's directory."""

    def setUp(self):
        super().setUp()
        self.home = os.path.join(self.tmp, "home")
        self.code = os.path.join(self.home, "code")
        os.makedirs(self.home)

    def discovering_agent(self, user="nobody"):
        passwd = os.path.join(self.tmp, "passwd")
        with open("/etc/passwd") as f, open(passwd, "w") as out:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == user:
                    fields[5] = self.home
                out.write(":".join(fields) + "\n")
        os.chmod(passwd, 0o644)
        wrapper = os.path.join(self.tmp, "agent-with-home")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec unshare --mount --propagation private -- "
                    "sh -c 'mount --bind \"$0\" /etc/passwd && exec \"$@\"' " f"{passwd} {ta.AGENT} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        saved, ta.AGENT = ta.AGENT, wrapper
        try:
            return self.agent(user=user)
        finally:
            ta.AGENT = saved

    def envrc(self, rel, content, mode="w"):
        d = os.path.join(self.code, rel)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, ".envrc")
        with open(path, mode) as f:
            f.write(content)
        return path

    def discover(self, agent, timeout=10):
        c = agent.client()
        t0 = time.monotonic()
        r = c.call("secrets.discover")
        self.assertLess(time.monotonic() - t0, timeout)
        self.assertEqual(r["type"], "result", r)
        return r

    def uses(self, r):
        """{dir: [(set, line)]} of a result, checking each path."""
        out = {}
        for repo in r["repos"]:
            self.assertEqual(repo["path"], os.path.join(self.code, repo["dir"], ".envrc"))
            out[repo["dir"]] = [(u["set"], u["line"]) for u in repo["uses"]]
        return out

    def test_nested_repos_sorted_by_dir(self):
        self.envrc("web", "use op_env web\n")
        self.envrc("org/api", "# use op_env commented-out\n  use\top_env  api-1 # trailing comment\n"
                              "export X=1\nuse op_envx nope\nuse op_env\necho use op_env nope\nuse op_env shared\r\n")
        self.envrc("org-x", "use op_env x\n")
        self.envrc("org", "dotenv\n")  # an .envrc without op_env: not listed
        self.envrc("plain", "export A=1\n")
        self.envrc("deep/a/b", "use op_env too-deep\n")  # ~/code/*/*/*/.envrc: not looked at
        self.envrc(".hidden", "use op_env hidden\n")  # like the glob ~/code/*: not looked at
        self.envrc("org/.hidden", "use op_env hidden\n")
        self.envrc("last", "use op_env no-newline-at-end")
        os.makedirs(os.path.join(self.code, "empty-repo"))
        with open(os.path.join(self.code, "a-file"), "w") as f:
            f.write("use op_env not-a-dir\n")
        r = self.discover(self.discovering_agent())
        # Byte order: '-' < '/' so org-x comes before org/api.
        self.assertEqual([repo["dir"] for repo in r["repos"]], ["last", "org-x", "org/api", "web"])
        self.assertEqual(self.uses(r), {"last": [("no-newline-at-end", 1)], "org-x": [("x", 1)],
                                        "org/api": [("api-1", 2), ("shared", 7)], "web": [("web", 1)]})
        self.assertNotIn("truncated", r)

    def test_no_code_directory_or_no_envrc(self):
        a = self.discovering_agent()
        self.assertEqual(self.discover(a)["repos"], [])  # no ~/code at all
        os.makedirs(os.path.join(self.code, "web", "sub"))
        self.assertEqual(self.discover(a)["repos"], [])  # repos without any .envrc
        # ~/code as a symlink is not followed (like `find ~/code` without -L).
        os.rmdir(os.path.join(self.code, "web", "sub"))
        os.rmdir(os.path.join(self.code, "web"))
        os.rmdir(self.code)
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.makedirs(os.path.join(elsewhere, "web"))
        with open(os.path.join(elsewhere, "web", ".envrc"), "w") as f:
            f.write("use op_env web\n")
        os.symlink(elsewhere, self.code)
        self.assertEqual(self.discover(a)["repos"], [])

    def test_symlinks_are_skipped(self):
        real = os.path.join(self.tmp, "real.envrc")
        with open(real, "w") as f:
            f.write("use op_env linked\n")
        os.makedirs(os.path.join(self.code, "linked-file"))
        os.symlink(real, os.path.join(self.code, "linked-file", ".envrc"))
        os.makedirs(os.path.join(self.tmp, "outside", "repo"))
        with open(os.path.join(self.tmp, "outside", "repo", ".envrc"), "w") as f:
            f.write("use op_env outside\n")
        os.symlink(os.path.join(self.tmp, "outside", "repo"), os.path.join(self.code, "linked-dir"))
        os.makedirs(os.path.join(self.code, "org"))
        os.symlink(os.path.join(self.tmp, "outside"), os.path.join(self.code, "org", "linked-sub"))
        self.envrc("real", "use op_env real\n")
        r = self.discover(self.discovering_agent())
        self.assertEqual(self.uses(r), {"real": [("real", 1)]})

    def test_a_fifo_or_a_directory_named_envrc_does_not_hang(self):
        os.makedirs(os.path.join(self.code, "fifo"))
        os.mkfifo(os.path.join(self.code, "fifo", ".envrc"))
        os.makedirs(os.path.join(self.code, "dir", ".envrc"))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.makedirs(os.path.join(self.code, "sock"))
        sock.bind(os.path.join(self.code, "sock", ".envrc"))
        self.envrc("web", "use op_env web\n")
        try:
            r = self.discover(self.discovering_agent(), timeout=3)
        finally:
            sock.close()
        self.assertEqual(self.uses(r), {"web": [("web", 1)]})

    def test_only_the_first_64_kib_of_a_huge_file(self):
        limit = 64 * 1024
        head = "use op_env first\n"
        filler = "# " + "x" * 97 + "\n"  # 100 bytes a line
        body = head + filler * ((limit - len(head)) // 100 - 1)
        # A use line that straddles the limit: cut, so not looked at.
        straddle = "use op_env straddles-the-limit\n"
        body += "#" * (limit - len(body) - 10) + "\n"
        self.assertEqual(len(body), limit - 9)
        body += straddle
        body += "use op_env beyond\n" + filler * 100000  # 10 MB more
        self.envrc("huge", body)
        self.envrc("web", "use op_env web\n")
        t0 = time.monotonic()
        r = self.discover(self.discovering_agent())
        figure("secrets.discover with a 10 MB .envrc", f"{(time.monotonic() - t0) * 1000:.1f} ms")
        self.assertEqual(self.uses(r), {"huge": [("first", 1)], "web": [("web", 1)]})
        # A file that ends exactly at the limit is whole: its last line counts.
        exact = "#" * (limit - len("use op_env exact")) + "\n"
        exact = exact[1:] + "use op_env exact"
        self.assertEqual(len(exact), limit)
        self.envrc("huge", exact)
        r = self.discover(self.agents[0])
        self.assertEqual(self.uses(r)["huge"], [("exact", 2)])

    def test_invalid_tokens_are_reported_with_their_line(self):
        content = (b"use op_env ../etc\n"
                   b"use op_env Web\n"
                   b"use op_env a\x1bb\xffc\x7f\xc2\x85d\n"  # ESC, invalid UTF-8, DEL, C1: each '?'
                   b"use op_env " + b"t" * 300 + b"\n"
                   b"use op_env " + "é".encode() * 100 + b"\n"
                   b"use op_env \"quoted\"\n"
                   b"use op_env ok_1\n")
        self.envrc("web", content, mode="wb")
        r = self.discover(self.discovering_agent())
        self.assertEqual(self.uses(r)["web"], [
            ("../etc", 1), ("Web", 2), ("a?b?c??d", 3), ("t" * 128, 4), ("é" * 64, 5), ('"quoted"', 6), ("ok_1", 7)])

    def test_directory_names_that_are_not_printable_are_skipped(self):
        for name in ("new\nline", "esc\x1b[31m"):
            self.envrc(name, "use op_env bad\n")
        bad_utf8 = os.path.join(os.fsencode(self.code), b"bad\xff")
        os.makedirs(bad_utf8)
        with open(os.path.join(bad_utf8, b".envrc"), "w") as f:
            f.write("use op_env bad\n")
        self.envrc("café", "use op_env good\n")
        r = self.discover(self.discovering_agent())
        self.assertEqual(self.uses(r), {"café": [("good", 1)]})

    def test_caps(self):
        for i in range(300):
            self.envrc(f"r{i:03d}", "use op_env web\n")
        self.envrc("r000", "".join(f"use op_env s{i}\n" for i in range(70)))
        r = self.discover(self.discovering_agent())
        self.assertEqual(len(r["repos"]), 256)
        self.assertEqual([repo["dir"] for repo in r["repos"]], [f"r{i:03d}" for i in range(256)])
        self.assertEqual(len(r["repos"][0]["uses"]), 64)
        self.assertEqual(r["repos"][0]["uses"][-1], {"set": "s63", "line": 64})
        self.assertIs(r["truncated"], True)
        self.assertLess(len(json.dumps(r)), 1 << 20)

    def test_the_scan_has_a_budget_of_directories(self):
        # 8192 directories at most (so that a huge ~/code cannot stall the agent): in name
        # order, so what is left out is what sorts last, and the result says so.
        for i in range(8200):
            os.makedirs(os.path.join(self.code, f"d{i:05d}"))
        self.envrc("a-first", "use op_env first\n")
        self.envrc("zzz-last", "use op_env last\n")
        r = self.discover(self.discovering_agent())
        self.assertEqual(self.uses(r), {"a-first": [("first", 1)]})
        self.assertIs(r["truncated"], True)

    def test_the_user_must_be_known(self):
        a = self.agent(user=None)
        r = a.client().call("secrets.discover")
        self.assertEqual((r["type"], r["code"]), ("error", "bad_request"))
        self.assertIn("--user", r["message"])
        b = ta.Agent(os.path.join(self.tmp, "b"), extra=["--secrets-dir", self.dir], user="no-such-user-xyz")
        try:
            b.start()
        except AssertionError:
            return  # an agent that refuses to start without its user is fine too
        self.agents.append(b)
        r = b.client().call("secrets.discover")
        self.assertEqual((r["type"], r["code"]), ("error", "no_such_user"))

    def test_hello_lists_it(self):
        caps = self.agent().client().call("hello")["capabilities"]
        self.assertIn("secrets.discover", caps)


def direnv_step():
    """The base profile's step that installs `use_op_env` (the function's one copy)."""
    with open(BASE_PROFILE, "rb") as f:
        steps = tomllib.load(f)["step"]
    names = [s["name"] for s in steps]
    step = steps[names.index("direnv-secrets")]
    assert names.index("direnv-secrets") > names.index("direnv-hook"), names
    return step


def run_step_script(script, home):
    """A step's script as the agent runs it (profile steps: bash -e -u -o pipefail -c), as this
    user with HOME=home."""
    env = {**BASH_ENV_CLEAN, "HOME": home, "USER": "root"}
    return subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", script], capture_output=True, env=env)


def install_direnv_function(home):
    """Runs the step's `run` with HOME=home; returns the installed file."""
    r = run_step_script(direnv_step()["run"], home)
    assert r.returncode == 0, r.stderr
    return os.path.join(home, ".config", "direnv", "lib", "machine-secrets.sh")


class Direnv(SecretsTest):
    """`use op_env SET` in an .envrc: the function the base profile's step direnv-secrets installs."""

    def test_the_step_installs_the_current_version_once(self):
        step = direnv_step()
        self.assertEqual(step["user"], "user")
        home = tempfile.mkdtemp(prefix="home-", dir=self.tmp)
        self.assertNotEqual(run_step_script(step["check"], home).returncode, 0)  # nothing installed
        path = install_direnv_function(home)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["machine-secrets.sh"])  # no temporary left
        self.assertEqual(run_step_script(step["check"], home).returncode, 0)
        with open(path) as f:
            text = f.read()
        self.assertIn("use_op_env() {", text)
        self.assertIn("watch_file", text)
        # An older version (another VERSION line) is not current: the check fails, run replaces it.
        with open(path, "w") as f:
            f.write(text.replace("# VERSION ", "# VERSION 1-old ", 1))
        self.assertNotEqual(run_step_script(step["check"], home).returncode, 0)
        install_direnv_function(home)
        with open(path) as f:
            self.assertEqual(f.read(), text)
        self.assertEqual(run_step_script(step["check"], home).returncode, 0)
        # Sourcing it defines the function and nothing else runs.
        r = subprocess.run(["bash", "--noprofile", "--norc", "-c", 'source "$1"; declare -F use_op_env', "bash", path],
                           capture_output=True, env=BASH_ENV_CLEAN)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"use_op_env\n", b""))

    def test_the_function_with_stubs(self):
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "web.env"), "wb") as f:
            f.write(b"export A='it'\\''s\nfine'\n")
        function = install_direnv_function(tempfile.mkdtemp(prefix="home-", dir=self.tmp))
        script = ('watch_file() { echo "watch $1" >&2; }; log_error() { echo "error: $*" >&2; }; '
                  'source "$1"; use_op_env "$2"; rc=$?; printf "%s" "${A-unset}"; exit $rc')

        def run(set_name, hostname="lima-myproj"):
            env = {**BASH_ENV_CLEAN, "MACHINE_SECRETS_DIR": self.dir, "HOSTNAME": hostname}
            return subprocess.run(["bash", "--noprofile", "--norc", "-c", script, "bash", function, set_name],
                                  capture_output=True, env=env)

        r = run("web")
        self.assertEqual((r.returncode, r.stdout), (0, b"it's\nfine"), r.stderr)
        self.assertIn(f"watch {self.dir}/web.env".encode(), r.stderr)
        r = run("api")
        self.assertEqual((r.returncode, r.stdout), (1, b"unset"))
        self.assertIn(f"watch {self.dir}/api.env".encode(), r.stderr)  # so that rendering it reloads
        self.assertIn(b"error: op_env: secrets for api are not rendered in this VM; "
                      b"run 'machine secrets myproj' on the host", r.stderr)
        # A hostname Lima did not give: no made-up project name.
        for hostname in ("devbox", "lima-", "my-lima-vm"):
            with self.subTest(hostname=hostname):
                r = run("api", hostname)
                self.assertEqual(r.returncode, 1)
                self.assertIn(b"error: op_env: secrets for api are not rendered in this VM; "
                              b"run 'machine secrets <project>' on the host", r.stderr)
        r = run("../etc/passwd")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"is not a secret set name", r.stderr)
        self.assertNotIn(b"watch", r.stderr)

    @unittest.skipUnless(shutil.which("direnv"), "direnv is not installed")
    def test_with_the_real_direnv_and_a_rendered_set(self):
        a = self.agent(user="root")  # direnv runs as root here
        c = a.client()
        values = {}
        for k, v in hard_values().items():
            try:
                v.decode()
                values[k] = v
            except UnicodeDecodeError:
                pass  # direnv carries the environment as JSON: UTF-8 only
        self.render(c, "web", values)
        home = tempfile.mkdtemp(prefix="direnv-home-", dir=self.tmp)
        install_direnv_function(home)  # ~/.config/direnv/lib/machine-secrets.sh, where direnv looks
        project = os.path.join(home, "project")
        os.makedirs(project)
        with open(os.path.join(project, ".envrc"), "w") as f:
            f.write("use op_env web\nuse op_env missing-one\n")
        env = {**BASH_ENV_CLEAN, "HOME": home, "XDG_DATA_HOME": os.path.join(home, "data"),
               "MACHINE_SECRETS_DIR": self.dir, "HOSTNAME": "lima-myproj"}
        subprocess.run(["direnv", "allow", project], check=True, env=env, capture_output=True)
        # The missing set fails the .envrc: direnv reports it and exports nothing.
        r = subprocess.run(["direnv", "exec", project, "bash", "-c", 'printf %s "${NEWLINES-unset}"'],
                           capture_output=True, env=env)
        self.assertIn(b"op_env: secrets for missing-one are not rendered in this VM; "
                      b"run 'machine secrets myproj' on the host", r.stderr)
        with open(os.path.join(project, ".envrc"), "w") as f:
            f.write("use op_env web\n")
        subprocess.run(["direnv", "allow", project], check=True, env=env, capture_output=True)
        names = list(values)
        script = 'for n in "$@"; do printf "%s\\0" "${!n}"; done'
        r = subprocess.run(["direnv", "exec", project, "bash", "-c", script, "bash", *names],
                           capture_output=True, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = dict(zip(names, r.stdout.split(b"\0")[:-1]))
        for name, value in values.items():
            self.assertEqual(got.get(name), value, name)

        # watch_file: a shell in the project that has loaded it while the set was missing
        # reloads once the set is rendered.
        with open(os.path.join(project, ".envrc"), "w") as f:
            f.write("use op_env late\n")
        subprocess.run(["direnv", "allow", project], check=True, env=env, capture_output=True)

        def export(shell_env):
            out = subprocess.run(["direnv", "export", "json"], cwd=project, capture_output=True, env=shell_env)
            changes = json.loads(out.stdout or b"{}")
            new = dict(shell_env)
            for k, v in changes.items():
                if v is None:
                    new.pop(k, None)
                else:
                    new[k] = v
            return new, out.stderr

        shell, err = export(env)
        self.assertNotIn("LATE", shell)
        self.assertIn(b"secrets for late are not rendered", err)
        self.assertEqual(export(shell)[1], b"")  # nothing changed: no reload
        self.render(c, "late", {"LATE": b"now it's here"})
        shell, err = export(shell)
        self.assertEqual(shell.get("LATE"), "now it's here", err)


class Figures(SecretsTest):
    def test_render_time(self):
        a = self.agent()
        c = a.client()
        values = {f"VAR_{i}": os.urandom(24).hex()[:32].encode() for i in range(100)}
        self.render(c, "warm", values)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            r = self.render(c, "web", values)
            times.append(time.perf_counter() - t0)
            self.assertEqual(r["count"], 100)
        figure("secrets.render of 100 variables (32-byte values) over the socket, median of 20",
               f"{statistics.median(times) * 1000:.2f} ms (min {min(times) * 1000:.2f}, max {max(times) * 1000:.2f})")


def main():
    return ta.run_suite("agent_secrets", lambda: None if os.geteuid() == 0 else
                        "runs as root (the agent mounts a tmpfs, files belong to nobody)")


if __name__ == "__main__":
    sys.exit(main())
