"""QEMU: acceleration probe, command line, QMP."""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from . import image, units


def qemu_binary(arch="x86_64"):
    if arch == "aarch64":
        return os.environ.get("QEMU_SYSTEM_AARCH64") or shutil.which("qemu-system-aarch64") or "qemu-system-aarch64"
    return os.environ.get("QEMU_SYSTEM_X86_64") or shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"


def host_arch():
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(os.uname().machine, os.uname().machine)


# The guest's serial console: the PC's 16550 on q35, the PL011 on Arm's `virt` board.
CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}


def console(arch):
    return CONSOLE.get(arch, "ttyS0")


def _accel_cache_path():
    return os.path.join(image.machine_cache_dir(), "accel.json")


def _probe_key(binary):
    """Cache key: host boot, QEMU binary and /dev/kvm node; a reboot or upgrade re-probes."""
    parts = []
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        st = os.stat(shutil.which(binary) or binary)
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    with contextlib.suppress(OSError):
        st = os.stat("/dev/kvm")
        parts.append(f"{st.st_rdev}:{st.st_ctime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _probe_kvm(binary, kernel):
    """Boot the guest kernel under KVM with -cpu host, no root fs: a working KVM reaches the
    'Kernel panic' (and QEMU exits thanks to -no-reboot) within seconds. Here KVM aborts on an
    MSR write or hangs, so failure, exit status or timeout all mean: no KVM."""
    if not kernel:
        return False, "no kernel to probe with"
    with tempfile.TemporaryDirectory(prefix="limactl-kvm-probe") as tmp:
        log = os.path.join(tmp, "serial.log")
        argv = [binary, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256", "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", f"file:{log}", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 loglevel=4"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, "KVM probe timed out"
        try:
            with open(log, errors="replace") as f:
                serial = f.read()
        except OSError:
            serial = ""
        if out.returncode == 0 and "Kernel panic" in serial:
            return True, "ok"
        err = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[0]
        return False, err


def choose_accel(kernel, arch=None):
    """('kvm'|'tcg', reason). LIMACTL_ACCEL=kvm|tcg forces a choice (stand-in specific). A guest
    of another arch than the host's is always emulated (TCG)."""
    if arch and arch != host_arch():
        return "tcg", f"an {arch} guest on an {host_arch()} host is emulated"
    forced = os.environ.get("LIMACTL_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "forced by LIMACTL_ACCEL"
    if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not available"
    binary = qemu_binary()
    key = _probe_key(binary)
    path = _accel_cache_path()
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return ("kvm" if cached["kvm"] else "tcg"), cached.get("reason", "cached")
    ok, reason = _probe_kvm(binary, kernel)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "kvm": ok, "reason": reason, "probed_at": time.time()}, f)
        os.replace(tmp, path)
    return ("kvm" if ok else "tcg"), reason


def _netns_cache_path():
    return os.path.join(image.machine_cache_dir(), "netns.json")


def machine_egress_supported():
    """Can the network boundary (netns.py) work here? `netns.py --probe` sets up a namespace with
    its rules; cached per host boot, user and `nft`/`ip` binaries, like the KVM probe."""
    from . import netns
    parts = [str(os.getuid())]
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    for tool in ("nft", "ip"):
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin"))
            parts.append(f"{tool}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    path = _netns_cache_path()
    with contextlib.suppress(OSError, ValueError, KeyError):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return bool(cached["ok"])
    try:
        ok = subprocess.run([sys.executable, "-SE", netns.__file__, "--probe"], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "ok": ok, "probed_at": time.time()}, f)
        os.replace(tmp, path)
    return ok


def mac_address(name):
    """Stable per instance, like Lima's (52:55:55 prefix)."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:55:55:" + ":".join(f"{b:02x}" for b in h[:3])


def msize_bytes(v):
    with contextlib.suppress(ValueError):
        return units.ram_in_bytes(v)
    return 131072


def build_argv(name, inst_dir, cfg, accel, ssh_port, kernel_cmdline, mounts, boundary=False):
    """The QEMU command line of one instance (the host agent runs it as a child). `boundary`:
    it runs in the network boundary's namespace (netns.py), where ssh_port is the inner port the
    boundary relays the host's SSH port to, and the user network is IPv4 only."""
    p = lambda *a: os.path.join(inst_dir, *a)  # noqa: E731
    mem_mib = units.ram_in_bytes(cfg["memory"]) // (1 << 20)
    cpus = cfg["cpus"]
    arch = cfg.get("arch") or "x86_64"
    argv = [qemu_binary(arch), "-name", f"lima-{name}"]
    if arch == "aarch64":
        # Arm's `virt` board, emulated (KVM would need an arm64 host): the same virtio-*-pci
        # devices as on q35 (virt has a PCIe host bridge), the PL011 UART as the serial port.
        # No firmware: the kernel is loaded directly and gets the board's device tree.
        # pauth-impdef: QEMU's cheap pointer-authentication algorithm instead of QARMA, which
        # costs TCG much of its speed (QEMU's own advice); the guest cannot tell.
        argv += ["-machine", "virt", "-accel", "tcg,thread=multi,tb-size=512",
                 "-cpu", os.environ.get("LIMACTL_TCG_CPU_AARCH64", "max,pauth-impdef=on")]
    elif accel == "kvm":
        argv += ["-machine", "q35,accel=kvm", "-cpu", "host"]
    else:
        argv += ["-machine", "q35", "-accel", "tcg,thread=multi,tb-size=512",
                 "-cpu", os.environ.get("LIMACTL_TCG_CPU", "max")]
    argv += ["-smp", f"{cpus},sockets=1,cores={cpus},threads=1", "-m", str(mem_mib)]
    if os.path.exists(p("kernel")):
        argv += ["-kernel", p("kernel"), "-append", kernel_cmdline]
        if os.path.exists(p("initrd")):
            argv += ["-initrd", p("initrd")]
    argv += ["-drive", f"file={p('disk')},if=none,id=rootdisk,format=qcow2,discard=unmap,cache=writeback",
             "-device", "virtio-blk-pci,drive=rootdisk",
             "-drive", f"file={p('cidata.img')},if=none,id=cidata,format=raw,readonly=on",
             "-device", "virtio-blk-pci,drive=cidata,serial=cidata",
             "-netdev", f"user,id=net0,net=192.168.5.0/24,dhcpstart=192.168.5.15,"
                        f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22" + (",ipv6=off" if boundary else ""),
             "-device", f"virtio-net-pci,netdev=net0,mac={mac_address(name)}",
             "-device", "virtio-rng-pci"]
    for i, m in enumerate(mounts):
        opt = f"local,path={m['location']},mount_tag={m['tag']},security_model={m['9p']['securityModel']},id={m['tag']}"
        if not m["writable"]:
            opt += ",readonly=on"
        argv += ["-virtfs", opt]
    argv += ["-chardev", f"socket,id=char-serial,path={p('serial.sock')},server=on,wait=off,logfile={p('serial.log')}",
             "-serial", "chardev:char-serial",
             "-qmp", f"unix:{p('qmp.sock')},server=on,wait=off",
             "-pidfile", p("qemu.pid"),
             "-rtc", "base=utc",
             "-nodefaults", "-no-user-config", "-display", "none"]
    return argv


class QMP:
    """Minimal QMP client over qmp.sock."""

    def __init__(self, path, timeout=5):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd, **args):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            resp = self._read()
            if "return" in resp or "error" in resp:
                if "error" in resp:
                    raise RuntimeError(resp["error"].get("desc", str(resp["error"])))
                return resp["return"]

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()
