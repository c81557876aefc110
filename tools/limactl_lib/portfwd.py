"""Forwarding guest TCP listeners to the host, following Lima's portForwards rules.

The host agent polls `ss -ltnH` in the guest through the instance's SSH ControlMaster every
few seconds and adds/cancels `ssh -O forward -L ...` forwards on that master. UDP and unix
sockets are not forwarded by the stand-in.
"""
import ipaddress
import subprocess
import threading

from . import sshutil

POLL_SECONDS = 3


def default_rules(cfg_rules):
    """Lima's effective rule list: ignore the guest's sshd, the template's rules, then the
    default rule (any 127.0.0.1 / 0.0.0.0 listener -> the same port on host 127.0.0.1)."""
    ssh_rule = {"guestIPMustBeZero": False, "guestIP": "0.0.0.0", "guestPortRange": [22, 22],
                "hostIP": "127.0.0.1", "hostPortRange": [22, 22], "proto": "tcp", "ignore": True}
    default = {"guestIPMustBeZero": False, "guestIP": "127.0.0.1", "guestPortRange": [1, 65535],
               "hostIP": "127.0.0.1", "hostPortRange": [1, 65535], "proto": "tcp"}
    return [ssh_rule] + list(cfg_rules or []) + [default]


def all_tcp_ignored(cfg_rules):
    """True when the first rule blocks every TCP forward (Lima then logs that it is disabled)."""
    if not cfg_rules:
        return False
    r = cfg_rules[0]
    return (r.get("ignore") and r.get("guestIP") == "0.0.0.0" and not r.get("guestIPMustBeZero")
            and r.get("guestPortRange", [1, 65535]) == [1, 65535] and r.get("proto") in ("any", "tcp"))


def _ip(s):
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def host_address(rules, guest_ip, guest_port):
    """Lima's forwardingAddresses(): the host "ip:port" for a listener, or None (ignored)."""
    gip = _ip(guest_ip)
    if gip is None:
        return None
    for r in rules:
        if r.get("guestSocket") or r.get("proto") not in ("tcp", "any"):
            continue
        lo, hi = r["guestPortRange"]
        if not lo <= guest_port <= hi:
            continue
        rip = _ip(r["guestIP"])
        if gip.is_unspecified:
            pass
        elif gip == rip:
            pass
        elif gip == ipaddress.ip_address("::1") and rip == ipaddress.ip_address("127.0.0.1"):
            pass
        elif rip is not None and rip.is_unspecified and not r.get("guestIPMustBeZero"):
            pass
        else:
            continue
        if r.get("ignore"):
            if gip.is_unspecified and rip is not None and not rip.is_unspecified:
                continue
            return None
        host_port = guest_port + r["hostPortRange"][0] - lo
        return f"{r['hostIP']}:{host_port}"
    return None


def parse_ss(output):
    """`ss -ltnH` lines -> sorted unique (ip, port) listeners."""
    out = set()
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        local = parts[3]
        host, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        host = host.strip("[]").split("%")[0]
        if host == "*":
            host = "0.0.0.0"
        out.add((host, int(port)))
    return sorted(out)


def guest_addr_str(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Forwarder(threading.Thread):
    def __init__(self, inst_dir, name, rules, emit, log, stop_event):
        super().__init__(daemon=True, name="portfwd")
        self.argv, self.host = sshutil.ssh_base_argv(inst_dir, name)
        self.rules = rules
        self.emit = emit          # emit(portForward dict)
        self.log = log            # log(level, msg)
        self.stop_event = stop_event
        self.seen = {}            # (ip, port) -> hostAddr or None
        self.active_hosts = set()
        self.master_pid = None    # forwards live in this ControlMaster process

    def _ssh(self, *args, timeout=20):
        try:
            return subprocess.run(self.argv + list(args), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None

    def _spec(self, host_addr, ip, port):
        target = "127.0.0.1" if _ip(ip).is_unspecified else (f"[{ip}]" if ":" in ip else ip)
        return f"{host_addr}:{target}:{port}"

    def poll_once(self):
        res = self._ssh(self.host, "--", "ss", "-ltnH")
        if res is None or res.returncode != 0:
            return
        # Someone closed the ControlMaster (`ssh -O exit`, as machine does after provisioning
        # so new group memberships apply): the forwards died with it; add them to the new one.
        check = self._ssh("-O", "check", self.host, timeout=5)
        pid = check.stderr.strip() if check is not None and check.returncode == 0 else None
        if pid != self.master_pid:
            if self.master_pid is not None:
                self.seen.clear()
                self.active_hosts.clear()
            self.master_pid = pid
        current = set(parse_ss(res.stdout))
        for ip, port in sorted(current - set(self.seen)):
            host_addr = host_address(self.rules, ip, port)
            gaddr = guest_addr_str(ip, port)
            if host_addr is None or host_addr in self.active_hosts:
                self.seen[(ip, port)] = None
                if host_addr is None:
                    self.emit({"type": "not-forwarding", "protocol": "tcp", "guestAddr": gaddr})
                continue
            r = self._ssh("-O", "forward", "-L", self._spec(host_addr, ip, port), self.host)
            if r is not None and r.returncode == 0:
                self.seen[(ip, port)] = host_addr
                self.active_hosts.add(host_addr)
                self.log("info", f"Forwarding TCP from {gaddr} to {host_addr}")
                self.emit({"type": "forwarding", "protocol": "tcp", "guestAddr": gaddr, "hostAddr": host_addr})
            else:
                err = (r.stderr.strip() if r is not None else "timeout") or "ssh -O forward failed"
                self.seen[(ip, port)] = None
                self.log("warning", f"failed to forward {gaddr} to {host_addr}: {err}")
                self.emit({"type": "failed", "protocol": "tcp", "guestAddr": gaddr, "hostAddr": host_addr,
                           "error": err})
        for ip, port in sorted(set(self.seen) - current):
            host_addr = self.seen.pop((ip, port))
            if host_addr is None:
                continue
            gaddr = guest_addr_str(ip, port)
            self._ssh("-O", "cancel", "-L", self._spec(host_addr, ip, port), self.host)
            self.active_hosts.discard(host_addr)
            self.log("info", f"Stopping forwarding TCP from {gaddr} to {host_addr}")
            self.emit({"type": "stopping", "protocol": "tcp", "guestAddr": gaddr, "hostAddr": host_addr})

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.poll_once()
            except Exception as e:  # keep forwarding alive whatever one poll hit
                self.log("debug", f"port forwarding poll failed: {e}")
            self.stop_event.wait(POLL_SECONDS)
