#!/usr/bin/python3
"""A compromised VM's sshd, for the hostile-guest suite (issue 13). Paramiko (Debian's
python3-paramiko): run it with /usr/bin/python3, not a pyenv python3.

  /usr/bin/python3 tests/hostile/hostile_sshd.py --mode MODE [--user U] [--port 0]
      [--style compliant|ignore-window] [--answer TYPES] [--flood-after TYPE]
      [--agent-binary FILE --unit-file FILE] [--pin-file FILE] [--ready-file FILE]

It listens on 127.0.0.1, presents one fixed ed25519 host key (below: a test key, never used
anywhere else), accepts any public key for --user (default: the caller's login name) and nothing
else, and then plays MODE:

  agent-stderr-flood  agent channels (`exec` of `machine-agent relay`, the host's way to the guest
                      agent's socket) answer requests on stdout as an agent would (--answer,
                      default `hello`; the others never get an answer) and flood extended data
                      (stderr) without end
  agent-stdout-flood  the same, flooding stdout with lines that are not protocol messages
  hang                agent channels open and never send a byte
  exec-flood          every `exec` floods stdout and stderr without end, the relay's included

In the agent modes, the other `exec` requests answer what `machine up` sends to deploy the agent
(src/guest/deploy.cpp): the `sha256sum ...; systemctl is-active` probe prints nothing (nothing
installed), `sudo -n sh -c ...` reads its stdin to EOF and succeeds, anything else succeeds with
no output. So `up` proceeds to the agent and meets the flood or the hang there.

--style compliant (the default) floods through Channel.send / send_stderr, which block while the
client's window is closed: a client that stops reading holds the flood. --style ignore-window
writes CHANNEL_DATA / CHANNEL_EXTENDED_DATA packets straight to the transport, ignoring the
window as a hostile server may.

--answer lists request types answered (comma-separated; `all` for every type below): hello (with
the deployment of --agent-binary/--unit-file when given, else one that matches nothing),
secrets.discover (no repos), secrets.list (no sets), session.list (no sessions), subscribe (a
`live` message, then nothing), secrets.render (the set, as rendered), secrets.clear, provision
(ok, every step unchanged), health. --flood-after TYPE holds the flood until a request of that
type has been answered (the issue's agent flooded right after answering secrets.discover).

When listening it writes `PORT SHA256:<fingerprint>` to --ready-file (atomically) and stdout,
and the pin line (`SHA256:<b64> ssh-ed25519`) to --pin-file. Each channel's end is logged on
stderr with the bytes it flooded, and at exit the total (`stopped: N bytes flooded in all`).
SIGTERM or SIGINT stop it.
"""
import argparse
import base64
import getpass
import hashlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time

import paramiko
from paramiko.common import cMSG_CHANNEL_DATA, cMSG_CHANNEL_EXTENDED_DATA
from paramiko.message import Message

# A throwaway key made for this suite (ssh-keygen -t ed25519 -C hostile-sshd); it guards nothing.
HOST_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCdC9fhJpvvy1SaCjnkFep4edICJkbJjtXS0oSNpm3BoAAAAJCCfPPdgnzz
3QAAAAtzc2gtZWQyNTUxOQAAACCdC9fhJpvvy1SaCjnkFep4edICJkbJjtXS0oSNpm3BoA
AAAEBp6iNRssPyvTmRWKMHQGqHKhZZ4dLGfhCHCkAKRgKpvp0L1+Emm+/LVJoKOeQV6nh5
0gImRsmO1dLShI2mbcGgAAAADGhvc3RpbGUtc3NoZAE=
-----END OPENSSH PRIVATE KEY-----
"""

MODES = ("agent-stderr-flood", "agent-stdout-flood", "hang", "exec-flood")
RELAY = " relay --socket "  # in the command the host runs to reach the agent (src/guest/connection.cpp)
ANSWERABLE = ("hello", "secrets.discover", "secrets.list", "session.list", "subscribe", "secrets.render",
              "secrets.clear", "provision", "health")
CHUNK = 32 * 1024
# stdout flood: complete lines that are no protocol message ("bad line" for the host's decoder)
STDOUT_JUNK = (b"this is not a protocol message " * 3 + b"\n") * (CHUNK // 94)
STDERR_JUNK = (b"E" * 127 + b"\n") * (CHUNK // 128)

stopping = threading.Event()
totals = {"flooded": 0}  # bytes flooded on every channel, logged at exit (GIL-safe enough for a figure)


def log(msg):
    print("hostile_sshd: " + msg, file=sys.stderr, flush=True)


def host_key():
    return paramiko.Ed25519Key(file_obj=io.StringIO(HOST_KEY))


def fingerprint(key):
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Flooder:
    """Writes the flood to one channel, honouring the client's window or not."""

    def __init__(self, chan, style):
        self.chan, self.style = chan, style
        self.sent = 0
        if style == "compliant":
            chan.settimeout(0.5)  # a send blocked on a shut window wakes up to see `stopping`

    def send(self, data, stderr=False):
        """Sends all of data; False once the channel is gone."""
        if self.style == "compliant":
            view = memoryview(data)
            while view:
                if stopping.is_set():
                    return False
                try:
                    n = self.chan.send_stderr(view) if stderr else self.chan.send(view)
                except socket.timeout:
                    continue  # the window stayed shut for 0.5 s: look at `stopping`, then wait on
                except (OSError, EOFError, paramiko.SSHException):
                    return False
                if n == 0:
                    return False
                self.sent += n
                totals["flooded"] += n
                view = view[n:]
            return True
        # ignore-window: packets of at most the client's maximum packet size, whatever its window
        limit = max(1024, min(CHUNK, self.chan.out_max_packet_size - 64))
        for start in range(0, len(data), limit):
            if stopping.is_set() or self.chan.closed or not self.chan.get_transport().is_active():
                return False
            m = Message()
            if stderr:
                m.add_byte(cMSG_CHANNEL_EXTENDED_DATA)
                m.add_int(self.chan.remote_chanid)
                m.add_int(1)
            else:
                m.add_byte(cMSG_CHANNEL_DATA)
                m.add_int(self.chan.remote_chanid)
            m.add_string(bytes(data[start:start + limit]))
            try:
                self.chan.get_transport()._send_user_message(m)
            except (OSError, EOFError, paramiko.SSHException):
                return False
            n = min(limit, len(data) - start)
            self.sent += n
            totals["flooded"] += n
        return True


class FakeAgent:
    """One agent channel: answers what --answer lists, floods per mode."""

    def __init__(self, chan, opts):
        self.chan, self.opts = chan, opts
        self.flood = Flooder(chan, opts.style)
        self.lock = threading.Lock()  # one writer at a time: answers are whole lines amid the flood
        self.flooding = threading.Event()
        if not opts.flood_after:
            self.flooding.set()

    def reply(self, message):
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            return self.flood.send(line)

    def answer(self, req):
        t, rid = req.get("type"), req.get("id")
        base = {"v": 1, "id": rid, "type": "result"}
        if t == "hello":
            base.update(protocol=1, agent_version="0.1.0", capabilities=list(ANSWERABLE),
                        boot_id="b0" * 16, journal={"id": "hostile", "first_seq": 1, "last_seq": 1},
                        limits={"max_line": 1048576, "output_chunk": 32768, "max_event_bytes": 65536},
                        deployment=self.opts.deployment)
        elif t == "secrets.discover":
            base.update(repos=[], truncated=False)
        elif t == "secrets.list":
            base.update(sets=[])
        elif t == "session.list":
            base.update(sessions=[])
        elif t == "subscribe":
            base = {"v": 1, "id": rid, "type": "live", "seq": 1}
        elif t == "secrets.render":
            variables = req.get("variables") or []
            base.update(set=req.get("set"), count=len(variables),
                        path="/run/machine-secrets/%s.env" % req.get("set"))
        elif t == "secrets.clear":
            base.update(cleared=[])
        elif t == "provision":
            base.update(ok=True, cancelled=False, duration_ms=1,
                        steps=[{"name": s.get("name"), "outcome": "unchanged", "duration_ms": 0}
                               for s in req.get("steps") or []])
        elif t == "health":
            base.update(uptime_ms=1, rss_kib=1, clients=1, running=0, subscribers=0,
                        journal={"first_seq": 1, "last_seq": 1, "events": 1, "bytes": 1})
        return base

    def read_requests(self):
        buf = b""
        while not stopping.is_set():
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                continue
            except (OSError, EOFError, paramiko.SSHException):
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    req = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(req, dict):
                    continue
                t = req.get("type")
                if t in self.opts.answer:
                    if not self.reply(self.answer(req)):
                        return
                    if t == self.opts.flood_after:
                        self.flooding.set()
            buf = buf[-(2 << 20):]  # a client's line is at most 1 MiB

    def run(self):
        reader = threading.Thread(target=self.read_requests, daemon=True)
        reader.start()
        mode = self.opts.mode
        if mode == "hang":
            while not stopping.is_set() and not self.chan.closed and reader.is_alive():
                time.sleep(0.2)
        else:
            while not self.flooding.wait(0.2):
                if stopping.is_set() or self.chan.closed or not reader.is_alive():
                    break
            stderr = mode == "agent-stderr-flood"
            junk = STDERR_JUNK if stderr else STDOUT_JUNK
            while self.flooding.is_set() and not stopping.is_set():
                if stderr:
                    ok = self.flood.send(junk, stderr=True)  # no lock: extended data never splits a line
                else:
                    with self.lock:
                        ok = self.flood.send(junk)
                if not ok:
                    break
        log("agent channel %d ended (%s, %s): %d bytes flooded" % (self.chan.get_id(), mode, self.opts.style,
                                                                     self.flood.sent))
        self.chan.close()


def run_exec(chan, command, opts):
    """One `exec` channel."""
    if opts.mode == "exec-flood":
        flood = Flooder(chan, opts.style)
        while flood.send(STDOUT_JUNK) and flood.send(STDERR_JUNK, stderr=True):
            pass
        log("exec channel %d ended (%s): %d bytes flooded" % (chan.get_id(), opts.style, flood.sent))
        chan.close()
        return
    # What `machine up` sends to deploy the agent: nothing is installed, and installing works.
    try:
        if command.startswith("sudo -n sh -c"):
            while chan.recv(65536):
                pass
        chan.send_exit_status(0)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    chan.close()


class Server(paramiko.ServerInterface):
    def __init__(self, opts):
        self.opts = opts
        self.commands = {}
        self.exec_ready = {}

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if username == self.opts.user else paramiko.AUTH_FAILED

    def check_auth_none(self, username):
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            self.exec_ready[chanid] = threading.Event()
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        self.commands[channel.get_id()] = command.decode("utf-8", "replace")
        self.exec_ready[channel.get_id()].set()
        return True

    def check_channel_env_request(self, channel, name, value):
        return True

    def check_channel_pty_request(self, *args):
        return False

    def check_channel_shell_request(self, channel):
        return False

    def check_global_request(self, kind, msg):
        return False


def serve_session(chan, server, opts):
    if not server.exec_ready[chan.get_id()].wait(30):
        chan.close()
        return
    command = server.commands[chan.get_id()]
    if RELAY in command and opts.mode != "exec-flood":
        FakeAgent(chan, opts).run()
        return
    run_exec(chan, command, opts)


def serve_connection(sock, key, opts):
    transport = paramiko.Transport(sock)
    # What a Debian 12 VM's sshd says.
    transport.local_version = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"
    transport.add_server_key(key)
    server = Server(opts)
    try:
        transport.start_server(server=server)
    except (paramiko.SSHException, EOFError, OSError) as e:
        log("handshake failed: %s" % e)
        transport.close()
        return
    while not stopping.is_set() and transport.is_active():
        chan = transport.accept(0.5)
        if chan is not None:
            threading.Thread(target=serve_session, args=(chan, server, opts), daemon=True).start()
    transport.close()


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--style", choices=("compliant", "ignore-window"), default="compliant")
    ap.add_argument("--user", default=getpass.getuser())
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--answer", default="hello")
    ap.add_argument("--flood-after", default="")
    ap.add_argument("--agent-binary", help="the machine-agent the host deploys (hello then reports it)")
    ap.add_argument("--unit-file", help="its systemd unit (guest-agent/machine-agent.service)")
    ap.add_argument("--pin-file")
    ap.add_argument("--ready-file")
    opts = ap.parse_args()
    opts.answer = set(ANSWERABLE) if opts.answer == "all" else set(filter(None, opts.answer.split(",")))
    if opts.flood_after:
        opts.answer.add(opts.flood_after)
    opts.deployment = {"binary_sha256": "0" * 64, "unit_sha256": "0" * 64, "user": opts.user}
    if opts.agent_binary and opts.unit_file:
        opts.deployment = {"binary_sha256": sha256_file(opts.agent_binary),
                           "unit_sha256": sha256_file(opts.unit_file), "user": opts.user}

    key = host_key()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", opts.port))
    listener.listen(16)
    listener.settimeout(0.5)

    def stop(signum, frame):
        stopping.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    port = listener.getsockname()[1]
    if opts.pin_file:
        write_atomically(opts.pin_file, "%s ssh-ed25519\n" % fingerprint(key))
    ready = "%d %s\n" % (port, fingerprint(key))
    if opts.ready_file:
        write_atomically(opts.ready_file, ready)
    sys.stdout.write(ready)
    sys.stdout.flush()
    log("listening on 127.0.0.1:%d as %s, mode %s, %s" % (port, opts.user, opts.mode, opts.style))
    while not stopping.is_set():
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            if stopping.is_set():
                break
            raise
        sock.settimeout(None)
        threading.Thread(target=serve_connection, args=(sock, key, opts), daemon=True).start()
    listener.close()
    log("stopped: %d bytes flooded in all" % totals["flooded"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
