#!/usr/bin/python3
"""What the egress proxy (`machine net-proxy`) costs, through it versus direct, in the same run
(Python 3 stdlib and the openssl CLI; prints figures, asserts nothing).

Starts the proxy as machine does for an allowlist (`--egress allowlist --allow bench.test`), with
the bench-only seams MACHINE_NET_TEST_RESOLVE (bench.test -> 203.0.113.10) and
MACHINE_NET_TEST_REDIRECT (203.0.113.10:80/443 -> the local servers below), so the proxy decides
on a public name and address while the bytes stay on this host. The bench plays the VM's
bridge: it connects to the proxy's Unix socket and sends the PROXY v1 line first.

  1. throughput of one HTTP download (default 512 MiB) from a local server: direct TCP, then
     through the proxy (HTTP Host: bench.test); the ratio;
  2. time to first byte of 200 HTTPS requests (a local Python ssl server, a throwaway
     self-signed certificate for bench.test): TCP or proxy connect, TLS with SNI, GET, first
     byte of the answer; p50 and p99, the two paths taking turns;
  3. the proxy's resident memory (VmRSS, and VmHWM, the peak) with 200 TLS connections open
     through it at once.

Usage: /usr/bin/python3 tests/bench/net_proxy.py BUILD/machine [--mib 512] [--requests 200]
       [--concurrent 200]
"""
import argparse
import os
import shutil
import signal
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PUBLIC = "203.0.113.10"
NAME = "bench.test"
CHUNK = b"\xa5" * (1024 * 1024)


class DownloadHandler(socketserver.BaseRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            got = self.request.recv(4096)
            if not got:
                return
            head += got
        size = self.server.size
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        view = memoryview(CHUNK)
        left = size
        while left > 0:
            n = min(left, len(CHUNK))
            self.request.sendall(view[:n])
            left -= n


class TlsHandler(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            conn = self.server.tls.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    got = conn.recv(4096)
                    if not got:
                        return
                    head += got
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (ssl.SSLError, OSError):
            return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def start(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def via_proxy(sock_path, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(("PROXY TCP4 192.168.5.15 %s 40000 %d\r\n" % (PUBLIC, port)).encode())
    return s


def direct(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def download(s, size):
    s.sendall(b"GET /big HTTP/1.1\r\nHost: bench.test\r\n\r\n")
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    got = 0
    t0 = time.monotonic()
    head = b""
    while b"\r\n\r\n" not in head:
        n = s.recv_into(view)
        if n == 0:
            raise RuntimeError("connection closed before the answer")
        head += bytes(view[:n])
    got = len(head) - head.index(b"\r\n\r\n") - 4
    while got < size:
        n = s.recv_into(view)
        if n == 0:
            raise RuntimeError("connection closed after %d of %d bytes" % (got, size))
        got += n
    s.close()
    return time.monotonic() - t0


def tls_request(make, client):
    t0 = time.monotonic()
    raw = make()
    conn = client.wrap_socket(raw, server_hostname=NAME)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
    first = conn.recv(1)
    ttfb = time.monotonic() - t0
    if not first:
        raise RuntimeError("no answer")
    conn.close()
    return ttfb


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def memory(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("machine")
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=200)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="net-proxy-bench.")
    os.chmod(work, 0o700)
    proxy = None
    try:
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=" + NAME, "-addext", "subjectAltName=DNS:" + NAME],
                       check=True, capture_output=True)
        dl = Server(("127.0.0.1", 0), DownloadHandler)
        dl.size = args.mib * 1024 * 1024
        dl_port = start(dl)
        tls = Server(("127.0.0.1", 0), TlsHandler)
        tls.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.tls.load_cert_chain(cert, key)
        tls_port = start(tls)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(cert)

        sock_path = os.path.join(work, "net.sock")
        vm_dir = os.path.join(work, "vm")
        os.mkdir(vm_dir)
        env = dict(os.environ,
                   MACHINE_NET_TEST_RESOLVE="%s=%s" % (NAME, PUBLIC),
                   MACHINE_NET_TEST_REDIRECT="%s:80=127.0.0.1:%d;%s:443=127.0.0.1:%d" % (PUBLIC, dl_port, PUBLIC, tls_port))
        env.pop("MACHINE_DETACHED_LOG", None)
        log = open(os.path.join(work, "net-proxy.log"), "wb")
        proxy = subprocess.Popen([args.machine, "net-proxy", "--vm", "bench", "--listen", sock_path, "--vm-dir", vm_dir,
                                  "--audit-log", os.path.join(work, "audit.jsonl"), "--egress", "allowlist",
                                  "--allow", NAME], env=env, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(sock_path):
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("the proxy did not start; see " + log.name)
        idle = memory(proxy.pid)

        # 1. One large download each way.
        size = args.mib * 1024 * 1024
        t_direct = download(direct(dl_port), size)
        t_proxy = download(via_proxy(sock_path, 80), size)
        mib_s = lambda t: args.mib / t
        print("download %d MiB: direct %.0f MiB/s, through the proxy %.0f MiB/s (ratio %.2f)"
              % (args.mib, mib_s(t_direct), mib_s(t_proxy), t_direct / t_proxy))

        # 2. Time to first byte, the two paths taking turns. The proxy's default connection rate
        # (50/s, burst 200) is what a VM gets: pace so the whole run stays inside it.
        direct_t, proxy_t = [], []
        for _ in range(args.requests):
            direct_t.append(tls_request(lambda: direct(tls_port), client))
            proxy_t.append(tls_request(lambda: via_proxy(sock_path, 443), client))
            time.sleep(0.02)
        ms = lambda x: x * 1000.0
        print("HTTPS time to first byte, %d requests: direct p50 %.2f ms p99 %.2f ms; through the proxy p50 %.2f ms "
              "p99 %.2f ms" % (args.requests, ms(pct(direct_t, 50)), ms(pct(direct_t, 99)), ms(pct(proxy_t, 50)),
                               ms(pct(proxy_t, 99))))

        # 3. Many connections open at once through the proxy (TLS done, idle).
        time.sleep(4)  # the token bucket refills
        held = []
        for _ in range(args.concurrent):
            raw = via_proxy(sock_path, 443)
            conn = client.wrap_socket(raw, server_hostname=NAME)
            held.append(conn)
            time.sleep(0.01)
        for conn in held:  # each one used once, so every tunnel carried bytes both ways
            conn.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
            conn.recv(64)
        busy = memory(proxy.pid)
        print("proxy memory: idle VmRSS %d KiB; with %d connections open VmRSS %d KiB, peak (VmHWM) %d KiB"
              % (idle["VmRSS"], len(held), busy["VmRSS"], busy["VmHWM"]))
        for conn in held:
            conn.close()
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
