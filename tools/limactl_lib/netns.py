"""The network boundary of one VM: QEMU in a network namespace whose only way out is machine's
egress proxy (the instance's `machineEgress: {socket: PATH}`; without that key the host agent
runs QEMU directly, as real Lima does).

    python3 -m limactl_lib.netns --egress-socket PATH [--ssh-fd FD --ssh-inner-port PORT] -- ARGV...

The host agent starts this process in place of QEMU. It
  1. enters a new network namespace (plus a user namespace mapping our uid to root when not
     root: Python 3.11 has no os.unshare, so libc's unshare through ctypes) whose only
     interface is `lo`, with a default route via `lo`, and nftables rules (RULESET) that
     REDIRECT every TCP connection made in it to the bridge's listener (TCP_PORT) and every UDP
     datagram to port 53 to its DNS listener (DNS_PORT); anything else has nowhere to go;
  2. starts ARGV (QEMU, or a test's stand-in "guest") as its child, which gets SIGKILL when we
     die (PR_SET_PDEATHSIG), as we do when the host agent dies;
  3. runs the bridge until the child exits, then exits with the child's status (a signal
     death is re-raised on ourselves). SIGTERM/SIGINT are passed to the child.

The bridge (one asyncio loop, one thread):
  - TCP: for each redirected connection, its original destination (SO_ORIGINAL_DST; the guest's
    gateway 192.168.5.2 is 127.0.0.1 here, as slirp maps it) goes to the egress socket as a
    PROXY protocol v1 line, then bytes are relayed both ways with half-close. The egress socket
    missing or refusing: the guest connection is reset. There is no other path: fail closed.
  - DNS: each datagram (<= 4096 bytes) becomes one DNS-over-TCP exchange (RFC 7766 length
    prefix) on a new egress connection whose PROXY line names port 53; the reply goes back as a
    datagram from the redirected socket (conntrack restores the server's address as source).
    The PROXY line's destination address is the resolver slirp forwards to (the first IPv4
    `nameserver` of /etc/resolv.conf, as slirp reads it): a REDIRECTed datagram's original
    address is not available to the listener (SO_ORIGINAL_DST is TCP only).
  - SSH: the host agent binds the host's 127.0.0.1:PORT (so a taken port is seen as before) and
    passes the listening socket (--ssh-fd); connections accepted there are relayed to QEMU's
    hostfwd inside the namespace (127.0.0.1:--ssh-inner-port) from a socket with SO_MARK 1,
    which the redirect rule lets through.
Caps: MAX_RELAYS connections at once (more are reset at once), MAX_DNS_IN_FLIGHT queries
(more are dropped, the guest's resolver retries), a timeout on every egress connect and DNS
exchange; bytes go through one pipe per direction (splice), so a slow side stops reading the
other and nothing is buffered in this process.

IPv4 only: the host agent gives QEMU's user network `ipv6=off` with the boundary. UDP other than
port 53 has nowhere to go (QUIC falls back to TCP); so does anything not IPv4.

`--probe` checks that all this can work here (namespace, `ip`, `nft`) and exits 0 or 1; the
QEMU driver runs it (cached) for `limactl info`'s `machineEgress`.
"""
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys

TCP_PORT = 15001
DNS_PORT = 15053
SSH_MARK = 1
SSH_INNER_PORT = 10022  # QEMU's hostfwd inside the namespace (the host agent tells QEMU and us)
# the namespace's own address, source of the connections slirp makes (RFC 2544 benchmark range:
# never a real destination; the redirect takes every destination anyway)
SOURCE_ADDRESS = "198.18.0.1"
# LIMACTL_NETNS_MAX_RELAYS: test-only, so a test can reach the cap with a few connections
MAX_RELAYS = int(os.environ.get("LIMACTL_NETNS_MAX_RELAYS") or 1024)
MAX_SSH = 64
MAX_DNS_IN_FLIGHT = 64
MAX_DNS_QUERY = 4096
EGRESS_CONNECT_TIMEOUT = 10.0
DNS_TIMEOUT = 5.0
CHUNK = 64 * 1024  # a pipe's default capacity
SPLICE_F_MOVE = 1
SPLICE_F_NONBLOCK = 2
LISTEN_BACKLOG = 512

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
SO_ORIGINAL_DST = 80

# `meta mark` first: the bridge's own SSH connection to QEMU's hostfwd carries SO_MARK 1.
RULESET = f"""\
table ip machine_egress {{
  chain out {{
    type nat hook output priority -100; policy accept;
    meta mark {SSH_MARK} return
    ip protocol tcp redirect to :{TCP_PORT}
    udp dport 53 redirect to :{DNS_PORT}
  }}
}}
"""


def log(msg):
    sys.stderr.write(f"netns: {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------- the namespace

def _libc():
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    """SIGKILL when the parent dies (even by SIGKILL): nothing outlives whoever manages it."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def enter_namespace():
    """A new network namespace for this (single-threaded) process; a user namespace too when
    not root, our uid and gid mapped to root in it so `ip` and `nft` keep CAP_NET_ADMIN."""
    uid, gid = os.getuid(), os.getgid()
    tries = [CLONE_NEWNET | CLONE_NEWUSER]
    if uid == 0 and not os.environ.get("LIMACTL_NETNS_USERNS"):
        tries.insert(0, CLONE_NEWNET)  # root without CAP_SYS_ADMIN (a container) falls back
    for flags in tries:
        if _libc().unshare(flags) == 0:
            break
        e = ctypes.get_errno()
    else:
        raise OSError(e, f"unshare: {os.strerror(e)}")
    if flags & CLONE_NEWUSER:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")


def _run(argv, stdin_text=None):
    r = subprocess.run(argv, input=stdin_text, text=True, capture_output=True, timeout=20)
    if r.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip() or f'exit status {r.returncode}'}")


def _tool(name):
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return name


def set_up_network():
    """lo up, the default route via lo (so every destination is "reachable" and gets to the
    nat hook), and the redirect rules. The route's source is an address of its own on lo:
    with 127.0.0.1 as the source of a connection to a non-loopback address, the handshake
    gets through the redirect but later segments are dropped (a loopback source is martian
    off the loopback net)."""
    ip, nft = _tool("ip"), _tool("nft")
    _run([ip, "link", "set", "lo", "up"])
    _run([ip, "addr", "add", f"{SOURCE_ADDRESS}/32", "dev", "lo"])
    _run([ip, "route", "add", "default", "dev", "lo", "src", SOURCE_ADDRESS])
    _run([nft, "-f", "-"], RULESET)


def slirp_resolver():
    """The first IPv4 nameserver of /etc/resolv.conf (where slirp sends the guest's queries)."""
    with contextlib.suppress(OSError):
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    with contextlib.suppress(OSError):
                        socket.inet_aton(parts[1])
                        return parts[1]
    return "127.0.0.1"


# ---------------------------------------------------------------------------- the bridge

def proxy_line(src, dst):
    """PROXY protocol v1 header: src and dst are (ipv4, port)."""
    return f"PROXY TCP4 {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def original_dst(sock):
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(addr), port


def reset(sock):
    """Close with RST, so the guest sees a refused/reset connection rather than a clean EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Bridge:
    def __init__(self, egress_socket, ssh_sock=None, ssh_inner_port=None):
        self.egress_socket = egress_socket
        self.ssh_sock = ssh_sock
        self.ssh_inner_port = ssh_inner_port
        self.relays = 0
        self.ssh_relays = 0
        self.dns_in_flight = 0
        self.accept_error_logged = False
        self.resolver = slirp_resolver()
        self.loop = None
        self.tasks = set()

    def _spawn(self, coro):
        t = self.loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _egress(self, src, dst):
        """A connection to the egress socket with its PROXY line sent; raises on failure."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            await asyncio.wait_for(self.loop.sock_connect(s, self.egress_socket), EGRESS_CONNECT_TIMEOUT)
            await self.loop.sock_sendall(s, proxy_line(src, dst))
        except BaseException:
            s.close()
            raise
        return s

    def _wait(self, sock, writable):
        fut = self.loop.create_future()
        fd = sock.fileno()
        add, remove = (self.loop.add_writer, self.loop.remove_writer) if writable else \
            (self.loop.add_reader, self.loop.remove_reader)
        add(fd, lambda: fut.done() or fut.set_result(None))
        fut.add_done_callback(lambda _f: remove(fd))
        return fut

    async def _pump(self, src, dst):
        """src -> dst until EOF (then half-close dst) or an error (raised), through a pipe with
        splice(2): the bytes never enter this process, and at most a pipe's worth (64 KiB) is
        in flight per direction, so a slow reader stops the writer (measured against
        recv/send: 10% less CPU, up to 1.4x the throughput)."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
        try:
            while True:
                try:
                    n = os.splice(src.fileno(), w, CHUNK, flags=flags)
                except BlockingIOError:
                    await self._wait(src, False)
                    continue
                if n == 0:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                while n:
                    try:
                        n -= os.splice(r, dst.fileno(), n, flags=flags)
                    except BlockingIOError:
                        await self._wait(dst, True)
        finally:
            os.close(r)
            os.close(w)

    async def _relay(self, a, b):
        """Both ways until both sides have finished; an error on either resets both."""
        up = self.loop.create_task(self._pump(a, b))
        down = self.loop.create_task(self._pump(b, a))
        try:
            for t in asyncio.as_completed((up, down)):
                await t
        except (OSError, asyncio.CancelledError):
            up.cancel()
            down.cancel()
            reset(a)
            reset(b)
            return
        a.close()
        b.close()

    # -- TCP from the guest --------------------------------------------------------------
    async def _guest_connection(self, conn, peer):
        try:
            dst = original_dst(conn)
        except OSError:
            reset(conn)  # not redirected (cannot happen while the rules are in place)
            return
        try:
            up = await self._egress(peer, dst)
        except (OSError, asyncio.TimeoutError):
            reset(conn)  # fail closed: no egress proxy, no connection
            return
        await self._relay(conn, up)

    async def _accept(self, lsock):
        """The next connection; an accept error (out of fds) waits a little rather than ending
        the accept loop, which would leave the VM without network or SSH for good."""
        while True:
            try:
                conn, peer = await self.loop.sock_accept(lsock)
            except OSError as e:
                if not self.accept_error_logged:
                    log(f"accept: {e} (retrying; logged once)")
                    self.accept_error_logged = True
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            return conn, peer

    async def _serve_tcp(self, lsock):
        while True:
            conn, peer = await self._accept(lsock)
            if self.relays >= MAX_RELAYS:
                reset(conn)
                continue
            self.relays += 1
            self._spawn(self._counted(self._guest_connection(conn, peer), "relays"))

    async def _counted(self, coro, counter):
        try:
            await coro
        finally:
            setattr(self, counter, getattr(self, counter) - 1)

    # -- SSH from the host ---------------------------------------------------------------
    async def _ssh_connection(self, conn):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SSH_MARK)
            await asyncio.wait_for(self.loop.sock_connect(s, ("127.0.0.1", self.ssh_inner_port)), 10)
        except (OSError, asyncio.TimeoutError):
            reset(s)
            reset(conn)
            return
        await self._relay(conn, s)

    async def _serve_ssh(self):
        while True:
            conn, _ = await self._accept(self.ssh_sock)
            if self.ssh_relays >= MAX_SSH:
                reset(conn)
                continue
            self.ssh_relays += 1
            self._spawn(self._counted(self._ssh_connection(conn), "ssh_relays"))

    # -- DNS -------------------------------------------------------------------------------
    async def _dns_exchange(self, usock, query, peer):
        try:
            s = await self._egress(peer, (self.resolver, 53))
            try:
                async def exchange():
                    await self.loop.sock_sendall(s, struct.pack("!H", len(query)) + query)
                    head = await self._recv_exactly(s, 2)
                    return await self._recv_exactly(s, struct.unpack("!H", head)[0])
                answer = await asyncio.wait_for(exchange(), DNS_TIMEOUT)
            finally:
                s.close()
            usock.sendto(answer, peer)
        except (OSError, asyncio.TimeoutError, EOFError):
            pass  # no answer: the guest's resolver times out, as with a lost datagram

    async def _recv_exactly(self, s, n):
        buf = b""
        while len(buf) < n:
            chunk = await self.loop.sock_recv(s, n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _on_datagram(self, usock):
        for _ in range(64):  # drain what is queued, then back to the loop
            try:
                query, peer = usock.recvfrom(MAX_DNS_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(query) > MAX_DNS_QUERY or len(query) < 12 or self.dns_in_flight >= MAX_DNS_IN_FLIGHT:
                continue
            self.dns_in_flight += 1
            self._spawn(self._counted(self._dns_exchange(usock, query, peer), "dns_in_flight"))

    # -- run ---------------------------------------------------------------------------------
    def listeners(self):
        """Bound before the child starts, so its first connection already has a listener."""
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("127.0.0.1", TCP_PORT))
        t.listen(LISTEN_BACKLOG)
        t.setblocking(False)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", DNS_PORT))
        u.setblocking(False)
        return t, u

    async def run(self, tcp, udp, child_exited):
        self.loop = asyncio.get_running_loop()
        self._spawn(self._serve_tcp(tcp))
        if self.ssh_sock is not None:
            self.ssh_sock.setblocking(False)
            self._spawn(self._serve_ssh())
        self.loop.add_reader(udp.fileno(), self._on_datagram, udp)
        await child_exited


# ---------------------------------------------------------------------------- main

def _raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 6 * (MAX_RELAYS + MAX_SSH) + 256)  # 2 sockets + 2 pipes each
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def probe():
    """0 when a namespace with the rules can be set up here."""
    try:
        enter_namespace()
        set_up_network()
        Bridge("/nonexistent").listeners()
    except OSError as e:
        log(f"probe failed: {e}")
        return 1
    return 0


def _parse(argv):
    opts = {"egress": None, "ssh_fd": None, "ssh_inner_port": None, "probe": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return opts, argv[i + 1:]
        if a == "--probe":
            opts["probe"] = True
        elif a in ("--egress-socket", "--ssh-fd", "--ssh-inner-port") and i + 1 < len(argv):
            key = {"--egress-socket": "egress", "--ssh-fd": "ssh_fd", "--ssh-inner-port": "ssh_inner_port"}[a]
            opts[key] = argv[i + 1] if key == "egress" else int(argv[i + 1])
            i += 1
        else:
            raise ValueError(f"unknown argument {a!r}")
        i += 1
    return opts, []


def main(argv):
    try:
        opts, child_argv = _parse(argv)
    except ValueError as e:
        log(str(e))
        return 2
    if opts["probe"]:
        return probe()
    if not opts["egress"] or not child_argv or (opts["ssh_fd"] is None) != (opts["ssh_inner_port"] is None):
        log("usage: python3 -m limactl_lib.netns --egress-socket PATH [--ssh-fd FD --ssh-inner-port PORT] -- ARGV...")
        return 2
    ssh_sock = socket.socket(fileno=opts["ssh_fd"]) if opts["ssh_fd"] is not None else None
    try:
        enter_namespace()
        set_up_network()
        _raise_nofile()
        bridge = Bridge(opts["egress"], ssh_sock, opts["ssh_inner_port"])
        tcp, udp = bridge.listeners()
    except OSError as e:
        log(f"cannot set up the network boundary: {e}")
        return 1
    try:
        child = subprocess.Popen(child_argv, preexec_fn=die_with_parent)
    except OSError as e:
        log(f"cannot start {child_argv[0]}: {e}")
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))

    async def serve():
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        pidfd = os.pidfd_open(child.pid)
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        await bridge.run(tcp, udp, exited)
        os.close(pidfd)

    asyncio.run(serve())
    rc = child.wait()
    if rc < 0:  # die of the same signal, so our parent sees what QEMU's death was
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-rc, signal.SIG_DFL)  # (SIGKILL's cannot be set)
        os.kill(os.getpid(), -rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
