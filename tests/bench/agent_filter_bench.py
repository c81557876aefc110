#!/usr/bin/env python3
"""What the filtering agent proxy adds to an SSH signature (Python 3 stdlib only).

Starts a real `ssh-agent -D` holding one fresh ed25519 key and the proxy (`machine agent-proxy`,
what machine starts for a project with `agent_keys`) allowing that key,
then times N sign requests (default 200) made in-process over the socket, directly against
the agent and through the proxy, in two shapes:

  - one connection, N requests (a client that keeps its agent connection, like ssh itself);
  - a new connection per request (like N separate `git commit -S` / `ssh` invocations; through
    the proxy this includes the proxy's own connection to the agent).

The two paths take turns request by request, so load changes hit both alike. Prints median
and p95 per signature for both paths and the difference.

Then the flood of issue 13 (a guest sent 627,000 refused "add identity" messages in 5 s and
wrote 47 MB to agent-filter.log): a second proxy, started as machine starts it (its log named in
MACHINE_AGENT_FILTER_LOG, stdout and stderr appended to that file), gets --flood refused
"add identity" messages (default 600,000) on one connection as fast as the bench can send them
while it reads the answers. Prints the refusal rate, the log's size on disk (agent-filter.log
plus its rotated agent-filter.1.log) and how many refusals the log accounts for.

Usage: tests/bench/agent_filter_bench.py [--n 200] [--flood 600000] [--machine build/machine]
"""
import argparse
import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAILURE, REQUEST_IDENTITIES, IDENTITIES_ANSWER, SIGN_REQUEST, SIGN_RESPONSE = 5, 11, 12, 13, 14
ADD_IDENTITY = 17


# --- a minimal agent client -----------------------------------------------------------------

def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("agent closed the connection")
        buf += chunk
    return buf


def call(sock, body):
    sock.sendall(struct.pack(">I", len(body)) + body)
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    return recv_exact(sock, length)


def string(b):
    return struct.pack(">I", len(b)) + b


def read_string(data, pos):
    (n,) = struct.unpack_from(">I", data, pos)
    return data[pos + 4:pos + 4 + n], pos + 4 + n


def identities(sock):
    answer = call(sock, bytes([REQUEST_IDENTITIES]))
    if answer[0] != IDENTITIES_ANSWER:
        raise RuntimeError("identities request failed (type %d)" % answer[0])
    (count,) = struct.unpack_from(">I", answer, 1)
    pos, keys = 5, []
    for _ in range(count):
        blob, pos = read_string(answer, pos)
        comment, pos = read_string(answer, pos)
        keys.append((blob, comment))
    return keys


def sign(sock, blob, data):
    answer = call(sock, bytes([SIGN_REQUEST]) + string(blob) + string(data) + struct.pack(">I", 0))
    if answer[0] != SIGN_RESPONSE:
        raise RuntimeError("sign request failed (type %d)" % answer[0])
    return answer


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def fingerprint(blob):
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# --- measurement ------------------------------------------------------------------------------

def time_one_connection(paths, blob, n):
    """Per path, n sign requests on one connection. The paths take turns request by request,
    so a change in machine load mid-run affects them alike."""
    times = [[] for _ in paths]
    socks = [connect(p) for p in paths]
    try:
        for i in range(n):
            data = b"bench %d" % i
            for k, s in enumerate(socks):
                t0 = time.perf_counter()
                sign(s, blob, data)
                times[k].append(time.perf_counter() - t0)
    finally:
        for s in socks:
            s.close()
    return times


def time_new_connections(paths, blob, n):
    """Per path, n times: connect, one sign request, close (paths take turns)."""
    times = [[] for _ in paths]
    for i in range(n):
        data = b"bench %d" % i
        for k, p in enumerate(paths):
            t0 = time.perf_counter()
            with connect(p) as s:
                sign(s, blob, data)
            times[k].append(time.perf_counter() - t0)
    return times


def flood(path, n):
    """n refused "add identity" messages on one connection, sent by a thread while this one
    reads the answers; returns the seconds until the last answer."""
    add = bytes([ADD_IDENTITY]) + string(b"ssh-ed25519") + string(b"p" * 32) + string(b"s" * 64) + string(b"guest")
    message = struct.pack(">I", len(add)) + add
    failure = struct.pack(">I", 1) + bytes([FAILURE])
    with connect(path) as s:
        def send():
            try:
                for start in range(0, n, 1000):
                    s.sendall(message * min(1000, n - start))
            except OSError:
                pass
        t0 = time.perf_counter()
        writer = threading.Thread(target=send)
        writer.start()
        expected, got = n * len(failure), 0
        while got < expected:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
        took = time.perf_counter() - t0
        writer.join()
    if got != expected:
        sys.exit("flood: %d of %d answer bytes" % (got, expected))
    return took


SUMMARY = re.compile(rb"(\d+) \w+ in the last [0-9.]+ s \(")


def refusals_logged(logs):
    """(refusals the log accounts for, lines about them): a summary line counts its number."""
    count = lines = 0
    for log in logs:
        if not os.path.exists(log):
            continue
        with open(log, "rb") as f:
            for line in f:
                if b": refused " in line:
                    lines += 1
                    m = SUMMARY.search(line)
                    count += int(m.group(1)) if m else 1
    return count, lines


def measure_flood(machine, agent_sock, tmp, fp, n, children):
    """Starts a proxy the way machine does and floods it; prints what it cost."""
    sock = os.path.join(tmp, "flood.sock")
    log = os.path.join(tmp, "agent-filter.log")
    rotated = os.path.join(tmp, "agent-filter.1.log")
    env = dict(os.environ, MACHINE_AGENT_FILTER_LOG=log)
    with open(log, "ab") as out:
        proxy = subprocess.Popen([machine, "agent-proxy", "--listen", sock, "--upstream", agent_sock,
                                  "--vm-dir", os.path.join(tmp, "no-vm"), "--allow", fp],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    children.append(proxy)
    wait_for_socket(sock, proxy, "machine agent-proxy (flood)")
    took = flood(sock, n)
    # The last summary is written when the client has gone.
    deadline = time.monotonic() + 5
    while refusals_logged([rotated, log])[0] < n and time.monotonic() < deadline:
        time.sleep(0.05)
    count, lines = refusals_logged([rotated, log])
    sizes = [os.path.getsize(p) if os.path.exists(p) else 0 for p in (log, rotated)]
    print()
    print("flood: %d refused \"add identity\" requests on one connection" % n)
    print("%-40s %10.2f s %9.0f /s" % ("answered in", took, n / took))
    print("%-40s %10d B %9d B" % ("agent-filter.log, agent-filter.1.log", sizes[0], sizes[1]))
    print("%-40s %10d    %9d lines" % ("refusals the log accounts for", count, lines))


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def wait_for_socket(path, proc, what):
    for _ in range(500):
        if proc.poll() is not None:
            sys.exit("%s exited early (status %s)" % (what, proc.returncode))
        try:
            connect(path).close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit("%s did not start listening on %s" % (what, path))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="sign requests per measurement (default 200)")
    ap.add_argument("--flood", type=int, default=600000,
                    help="refused messages in the flood measurement (default 600000; 0: none)")
    ap.add_argument("--machine", default=os.path.join(ROOT, "build", "machine"), help="the machine binary")
    args = ap.parse_args()
    if not os.access(args.machine, os.X_OK):
        sys.exit("%s not found: cmake --build build" % args.machine)
    for tool in ("ssh-agent", "ssh-add", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit("%s not found (apt-get install openssh-client)" % tool)

    tmp = tempfile.mkdtemp(prefix="agent-bench-")  # 0700, as the proxy requires
    agent_sock = os.path.join(tmp, "agent.sock")
    proxy_sock = os.path.join(tmp, "proxy.sock")
    children = []
    try:
        key = os.path.join(tmp, "key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key], check=True)
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", agent_sock],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(agent)
        wait_for_socket(agent_sock, agent, "ssh-agent")
        env = dict(os.environ, SSH_AUTH_SOCK=agent_sock)
        subprocess.run(["ssh-add", "-q", key], check=True, env=env, stderr=subprocess.DEVNULL)

        with connect(agent_sock) as s:
            keys = identities(s)
        blob = keys[0][0]
        fp = fingerprint(blob)
        proxy = subprocess.Popen([args.machine, "agent-proxy", "--listen", proxy_sock, "--upstream", agent_sock,
                                  "--vm-dir", os.path.join(tmp, "no-vm"), "--allow", fp])
        children.append(proxy)
        wait_for_socket(proxy_sock, proxy, "machine agent-proxy")
        with connect(proxy_sock) as s:
            through = identities(s)
        assert [fingerprint(b) for b, _ in through] == [fp], "the proxy does not list the key"

        # Warm up both paths (page cache, allocator, the agent's first signature).
        time_one_connection([agent_sock, proxy_sock], blob, 20)

        print("%d ed25519 signatures per measurement (ssh-agent: %s)" % (args.n, fp))
        print("%-40s %10s %10s" % ("", "median", "p95"))
        for shape, fn in (("one connection", time_one_connection), ("new connection each", time_new_connections)):
            direct, proxied = fn([agent_sock, proxy_sock], blob, args.n)
            for name, xs in (("direct", direct), ("through proxy", proxied)):
                print("%-40s %8.1f us %8.1f us" % ("%s, %s" % (shape, name),
                                                   statistics.median(xs) * 1e6, p95(xs) * 1e6))
            print("%-40s %8.1f us %8.1f us" % ("%s, added by the proxy" % shape,
                                               (statistics.median(proxied) - statistics.median(direct)) * 1e6,
                                               (p95(proxied) - p95(direct)) * 1e6))
        if args.flood > 0:
            measure_flood(args.machine, agent_sock, tmp, fp, args.flood, children)
        return 0
    finally:
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
