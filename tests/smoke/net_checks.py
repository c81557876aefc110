"""The VM's network (issue 15): nothing of the user's is reachable from the guest (the host's
loopback services, its other addresses, other VMs), `host_ports` opens exactly what it names,
an `egress` allowlist holds for HTTPS (by SNI), HTTP (by Host) and DNS, and root in the guest
flushing its own firewall changes none of it.

Every "unreachable" check is paired with the same probe succeeding where it must (a host port
in host_ports, an allowed name), so a probe that cannot connect at all would fail the pair."""
import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time

import harness

GATEWAY = "192.168.5.2"
# Resolvable on this CI network but never in the allowlist below: the subject of refusals.
REFUSED_NAME = "registry.yarnpkg.com"
ALLOWED_HTTPS = "registry.npmjs.org"
ALLOWED_HTTP = "deb.debian.org"


class HostListener:
    """A TCP service on the host: it greets every connection with a banner and counts them."""

    def __init__(self, address="127.0.0.1"):
        self.banner = "host-service-" + secrets.token_hex(6)
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                conn.sendall((self.banner + "\n").encode())
            except OSError:
                pass
            conn.close()

    def close(self):
        self.sock.close()


def host_addresses():
    """The host's own non-loopback IPv4 addresses."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            addr = parts[parts.index("inet") + 1].split("/")[0]
            if not addr.startswith("127."):
                found.append(addr)
    return found


def probe(guest, host, port):
    """What a guest connection to host:port reads within 3 s ("" when it could not connect or
    read anything), with the shell's diagnostics."""
    script = 'exec 3<>"/dev/tcp/$0/$1" || exit 7; timeout 3 cat <&3'
    rc, out, err = guest.run("timeout", "8", "bash", "-c", script, host, str(port), timeout=30)
    return out, "probe %s:%s -> rc=%d out=%r err=%r" % (host, port, rc, out.strip()[:200], err.strip()[:300])


def reached(listener, guest, host):
    before = listener.accepted
    out, diag = probe(guest, host, listener.port)
    got = listener.banner in out or listener.accepted > before
    return got, diag + " accepted=%d" % (listener.accepted - before)


def guest_sh(guest, script, *args, timeout=60):
    return guest.run("bash", "-c", script, "sh", *args, timeout=timeout)


def curl_status(guest, url, *extra):
    """(http status or "000", milliseconds, stderr) of one curl in the guest; the time is curl's
    own (from its start of the transfer to its end), not the emulated VM's process start-up."""
    script = 'curl -sS -o /dev/null --max-time 15 -w "%{http_code} %{time_total}" "$@"'
    rc, out, err = guest_sh(guest, script, *extra, "--", url)
    parts = (out.split() + ["000", "0"])[:2]
    try:
        ms = int(float(parts[1]) * 1000)
    except ValueError:
        ms = -1
    return parts[0], ms, err.strip()[:300]


def resolves(guest, name):
    rc, out, err = guest.run("getent", "ahostsv4", name)
    return rc == 0 and bool(out.strip()), out.strip().splitlines()[0] if out.strip() else "rc=%d" % rc


def first_address(guest, name):
    rc, out, _ = guest.run("getent", "ahostsv4", name)
    return out.split()[0] if rc == 0 and out.split() else ""


def flush_guest_firewall(guest):
    """What a hostile root in the VM does first."""
    rc, out, err = guest_sh(guest, "sudo -n nft flush ruleset; rc=$?; "
                                   "command -v iptables >/dev/null && sudo -n iptables -F; exit $rc")
    return rc == 0, "nft flush ruleset -> rc=%d %s" % (rc, err.strip()[:200])


def up(args, env):
    p = subprocess.run([args.machine, "up", args.name], env=env, capture_output=True, text=True, timeout=900)
    return p.returncode == 0, p.stdout + p.stderr


def net_records(args, env):
    p = subprocess.run([args.machine, "net", args.name, "--json", "--last", "200"], env=env,
                       capture_output=True, text=True, timeout=60)
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        return [], "machine net --json -> rc=%d %r %r" % (p.returncode, p.stdout[:300], p.stderr[:300])
    records = doc.get("records", []) if isinstance(doc, dict) else []
    return records, "machine net --json: %d records" % len(records)


def check_host_isolation(tap, guest, label=""):
    """The default: no service of the host answers the guest, by any of its names."""
    loop = HostListener("127.0.0.1")
    anyaddr = HostListener("0.0.0.0")
    try:
        ok, diag = reached(loop, guest, GATEWAY)
        tap.result(not ok, label + "a host loopback service is unreachable through the gateway %s" % GATEWAY, diag)
        ok, diag = reached(loop, guest, "host.lima.internal")
        tap.result(not ok, label + "... and through host.lima.internal", diag)
        addrs = host_addresses()
        seen = []
        for addr in addrs:
            ok, diag = reached(anyaddr, guest, addr)
            if ok:
                seen.append(diag)
        tap.result(bool(addrs) and not seen, label + "a host service on 0.0.0.0 is unreachable at the host's "
                   "addresses (%s)" % ", ".join(addrs), "\n".join(seen) or "no host address found")
    finally:
        loop.close()
        anyaddr.close()


def check_outbound(tap, guest, label=""):
    code, ms, err = curl_status(guest, "http://%s/debian/" % ALLOWED_HTTP)
    tap.result(code.startswith(("2", "3")), label + "outbound HTTP works (Debian's mirror: %s in %d ms)" % (code, ms), err)
    code, ms, err = curl_status(guest, "https://%s/" % ALLOWED_HTTPS)
    tap.result(code.startswith(("2", "3")), label + "outbound HTTPS works (the npm registry: %s in %d ms)" % (code, ms), err)


def check_default_policy(tap, args, env, guest):
    check_host_isolation(tap, guest)
    check_outbound(tap, guest)
    ok, resolved = resolves(guest, REFUSED_NAME)
    tap.result(ok, "DNS answers for any name under the default policy (%s: %s)" % (REFUSED_NAME, resolved))
    # The probes of the host above are refused inside the guest first (machine's table), so they
    # reach the proxy only once that table is flushed (check_egress_allowlist shows those).
    records, diag = net_records(args, env)
    allowed = [r for r in records if r.get("allowed") and r.get("kind") == "tcp" and r.get("port") in (80, 443)]
    tap.result(bool(allowed), "machine net lists the VM's outbound connections (%d to ports 80/443)" % len(allowed),
               diag + "\n" + json.dumps(records[-10:]))


def check_host_ports(tap, args, env, guest, write_project):
    """host_ports opens exactly the named port of the host's loopback, nothing else."""
    opened = HostListener("127.0.0.1")
    closed = HostListener("127.0.0.1")
    try:
        write_project(args, env, "host_ports = [%d]\n" % opened.port)
        ok, out = up(args, env)
        if not tap.result(ok, "machine up with host_ports = [%d]" % opened.port, out):
            return
        ok, diag = reached(opened, guest, GATEWAY)
        tap.result(ok, "the port in host_ports is reachable through the gateway", diag)
        ok, diag = reached(closed, guest, GATEWAY)
        tap.result(not ok, "another host port stays unreachable", diag)
    finally:
        opened.close()
        closed.close()
        write_project(args, env)
        ok, out = up(args, env)
        tap.result(ok, "machine up back to the default policy", out)


class GuestListener:
    """A TCP service in a VM on its 127.0.0.1 (what a dev server is): it greets every connection
    with a banner until `seconds` pass. perl-base is in every Debian guest; nothing else is assumed."""

    SERVE = ('use IO::Socket::INET; $| = 1; my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", '
             'LocalPort => $ARGV[0], Listen => 16, ReuseAddr => 1) or die "listen: $!"; '
             'while (my $c = $s->accept) { print $c "$ARGV[1]\n"; close $c; }')

    def __init__(self, guest, port, seconds=120):
        self.port = port
        self.banner = "guest-service-" + secrets.token_hex(6)
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(guest, seconds), daemon=True)
        self.thread.start()

    def _run(self, guest, seconds):
        self.outcome = guest.run("timeout", str(seconds), "perl", "-e", self.SERVE, str(self.port), self.banner,
                                 timeout=seconds + 60)

    def read_on_host(self, timeout=30):
        """The banner as the host reads it on 127.0.0.1:port once the VM's port is forwarded there
        ("" when it never was within `timeout`)."""
        seen = [""]

        def once():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
                    s.settimeout(3)
                    seen[0] = s.recv(256).decode(errors="replace")
            except OSError:
                pass
            return self.banner in seen[0]

        harness.wait_until(once, timeout, interval=0.5)
        return seen[0]

    def diagnostics(self):
        return "guest listener: %r" % (self.outcome,) if self.outcome else "guest listener still running"


def free_host_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_host_reaches_forwarded_port(tap, guest):
    """The boundary keeps the host's way in: a service on the VM's loopback is forwarded to the
    host's 127.0.0.1 and answers there (the VM's SSH answers too: every check runs through it)."""
    service = GuestListener(guest, free_host_port())
    got = service.read_on_host()
    tap.result(service.banner in got, "the host reaches a VM service through its forwarded port (127.0.0.1:%d)"
               % service.port, "host read %r; %s" % (got, service.diagnostics()))


def check_other_vm(tap, guest, other_guest, other_ssh_port, other_name):
    """Another VM's forwarded ports (its SSH, a service on its loopback) are on the host's
    loopback: unreachable from this VM, while the host itself reaches them (the control that each
    port is live)."""
    with socket.create_connection(("127.0.0.1", other_ssh_port), timeout=5) as s:
        s.settimeout(5)
        host_sees = s.recv(64).decode(errors="replace")
    out, diag = probe(guest, GATEWAY, other_ssh_port)
    tap.result(host_sees.startswith("SSH-") and "SSH-" not in out,
               "another VM's forwarded SSH port (%s, 127.0.0.1:%d) is unreachable from this VM" % (other_name, other_ssh_port),
               "host reads %r; %s" % (host_sees.strip(), diag))
    service = GuestListener(other_guest, free_host_port())
    host_sees = service.read_on_host()
    out, diag = probe(guest, GATEWAY, service.port)
    tap.result(service.banner in host_sees and service.banner not in out,
               "another VM's forwarded service port (127.0.0.1:%d) is unreachable from this VM" % service.port,
               "host reads %r; %s; %s" % (host_sees.strip(), diag, service.diagnostics()))


@contextlib.contextmanager
def forwarded_into_guest(args, env, guest, host_port):
    """The host's 127.0.0.1:host_port appears in the VM at its own 127.0.0.1:<port> (yielded) for
    as long as the block runs: an OpenSSH remote forward over a connection pinned to the VM's host
    key, the way a user opens one host service to one VM without host_ports. Yields (port, "") or
    (None, why not)."""
    limactl = env.get("MACHINE_LIMACTL") or "limactl"
    listing = subprocess.run([limactl, "list", "--json", args.name], env=env, capture_output=True, text=True).stdout
    inst_dir = next((json.loads(l).get("dir") for l in listing.splitlines() if l.strip()), None)
    state = os.path.join(args.state_dir, args.name)
    guest_port = free_host_port()
    argv = ["ssh", "-F", os.path.join(inst_dir or "", "ssh.config"), "-N", "-T"]
    for option in ("StrictHostKeyChecking=yes", "UserKnownHostsFile=\"%s\"" % os.path.join(state, "known_hosts"),
                   "GlobalKnownHostsFile=/dev/null", "HostKeyAlias=machine-" + args.name, "CheckHostIP=no",
                   "NoHostAuthenticationForLocalhost=no", "ControlMaster=no", "ControlPath=none",
                   "ExitOnForwardFailure=yes", "LogLevel=ERROR"):
        argv += ["-o", option]
    argv += ["-R", "127.0.0.1:%d:127.0.0.1:%d" % (guest_port, host_port), "lima-" + args.name]
    ssh = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        script = 'exec 3<>"/dev/tcp/127.0.0.1/$0"'
        harness.wait_until(lambda: ssh.poll() is not None or guest.run("bash", "-c", script, str(guest_port))[0] == 0,
                           30, interval=0.5)
        if ssh.poll() is None:
            yield guest_port, ""
        else:
            yield None, "ssh exited %s: %s" % (ssh.returncode, ssh.stderr.read().decode(errors="replace")[-800:])
    finally:
        if ssh.poll() is None:
            ssh.terminate()
        try:
            ssh.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ssh.kill()
            ssh.wait()


def check_egress_allowlist(tap, args, env, guest, write_project):
    write_project(args, env, 'egress = ["%s", "%s"]\n' % (ALLOWED_HTTPS, ALLOWED_HTTP))
    ok, out = up(args, env)
    if not tap.result(ok and "egress" in out, "machine up with an egress allowlist says what it allows", out):
        write_project(args, env)
        up(args, env)
        return
    try:
        for label in ("", "after `nft flush ruleset` in the guest: "):
            if label:
                ok, diag = flush_guest_firewall(guest)
                tap.result(ok, "root in the guest flushes its firewall", diag)
            check_outbound(tap, guest, label)
            npm_ip = first_address(guest, ALLOWED_HTTPS)
            tap.result(bool(npm_ip), label + "DNS answers for an allowed name (%s: %s)" % (ALLOWED_HTTPS, npm_ip))
            ok, resolved = resolves(guest, REFUSED_NAME)
            tap.result(not ok, label + "DNS gives no address for a refused name (%s)" % REFUSED_NAME, resolved)
            since = time.time()
            code, ms, err = curl_status(guest, "https://%s/" % REFUSED_NAME, "--resolve",
                                        "%s:443:%s" % (REFUSED_NAME, npm_ip or "203.0.113.80"))
            tap.result(code == "000" and 0 <= ms < 1000, label + "TLS naming a refused host (SNI %s) at an allowed host's "
                       "address fails within 1 s (%d ms)" % (REFUSED_NAME, ms), err)
            code, ms, err = curl_status(guest, "http://%s/" % REFUSED_NAME, "--resolve",
                                        "%s:80:%s" % (REFUSED_NAME, npm_ip or "203.0.113.80"))
            tap.result(code in ("000", "403") and 0 <= ms < 1000, label + "plain HTTP for a refused Host is refused (%s in %d ms)"
                       % (code, ms), err)
            records, diag = net_records(args, env)
            events = [r for r in records if r.get("host") == REFUSED_NAME and not r.get("allowed")
                      and r.get("port") == 443 and str(r.get("ts", "")) >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since - 1))]
            tap.result(bool(events), label + "the refusal is a net.refused record naming %s:443" % REFUSED_NAME,
                       diag + "\n" + json.dumps(records[-5:]))
            check_host_isolation(tap, guest, label)
    finally:
        write_project(args, env)
        ok, out = up(args, env)
        tap.result(ok, "machine up back to the open internet", out)
    ok, resolved = resolves(guest, REFUSED_NAME)
    tap.result(ok, "without the allowlist the refused name resolves again (the control: %s)" % resolved)
