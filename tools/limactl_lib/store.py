"""$LIMA_HOME layout, template defaults and instance inspection (Lima's pkg/store, pkg/limayaml)."""
import contextlib
import os
import pwd
import re

import functools

from . import driver, logrus, units

VERSION = "2.2.0"
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    os.uname().machine, os.uname().machine)

NAME_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")

# Lima's default containerd archives (reported in `config`, never downloaded by the stand-in).
DEFAULT_CONTAINERD_ARCHIVES = [
    {"location": "https://github.com/containerd/nerdctl/releases/download/v2.3.5/nerdctl-full-2.3.5-linux-amd64.tar.gz",
     "arch": "x86_64",
     "digest": "sha256:b697295c623639734aaab737523c808fd3cc8d3046039fd94fff1744e4c317aa"},
    {"location": "https://github.com/containerd/nerdctl/releases/download/v2.3.5/nerdctl-full-2.3.5-linux-arm64.tar.gz",
     "arch": "aarch64",
     "digest": "sha256:6e4b687f1d138e750a3c8372abc0f81d3d7490b6359c48c0562fc7dfe98859b2"},
]


# ---------------------------------------------------------------------------- paths

def lima_home():
    return _realpath(os.environ.get("LIMA_HOME") or os.path.join(os.path.expanduser("~"), ".lima"))


@functools.lru_cache(maxsize=None)
def _realpath(path):
    return os.path.realpath(path)


def config_dir():
    return os.path.join(lima_home(), "_config")


def instance_dir(name):
    return os.path.join(lima_home(), name)


def identity_file():
    return os.path.join(config_dir(), "user")


UNIX_PATH_MAX = 108


def validate_name(name):
    """Lima's identifier check where an instance is created: an error message, or None."""
    q = logrus.q
    if not name:
        return f"instance name {q(name)} is not a valid identifier: identifier must not be empty"
    if len(name) > 76:
        return (f"instance name {q(name)} is not a valid identifier: identifier {q(name)} greater than "
                "maximum length (76 characters)")
    if not NAME_RE.match(name):
        return f"instance name {q(name)} is not a valid identifier: identifier {q(name)} must match {NAME_RE.pattern}"
    if name.endswith((".yaml", ".yml")):
        return f"instance name {q(name)} must not end with .yaml or .yml suffix"
    sock = os.path.join(instance_dir(name), "ssh.sock.1234567890123456")
    if len(sock) >= UNIX_PATH_MAX:
        return (f"instance name {q(name)} too long: {q(sock)} must be less than UNIX_PATH_MAX={UNIX_PATH_MAX} "
                f"characters, but is {len(sock)}")
    return None


def lookup(name):
    """store.Inspect for an existing instance: an invalid name is an error, never a path.
    None when `<dir>/lima.yaml` does not exist."""
    if not NAME_RE.match(name or "") or len(name) > 76:
        raise logrus.Fatal(f"identifier {logrus.q(name)} must match {NAME_RE.pattern}")
    inst = Instance(name)
    return None if inst.yaml_missing else inst


def instance_names():
    """Directory names under $LIMA_HOME that can be instances, sorted."""
    home = lima_home()
    try:
        names = os.listdir(home)
    except FileNotFoundError:
        return []
    return sorted(n for n in names
                  if not n.startswith((".", "_")) and os.path.isdir(os.path.join(home, n)))


def hostname_for(name):
    return "lima-" + name.replace(".", "-").replace("_", "-")


# ---------------------------------------------------------------------------- host facts

@functools.lru_cache(maxsize=None)
def host_user():
    """The guest user Lima would copy from the host. We run as root here; Lima refuses root, so
    the stand-in falls back to Lima's own fallback name `lima` with uid 1000 for it."""
    uid = os.getuid()
    try:
        pw = pwd.getpwuid(uid)
        name, comment = pw.pw_name, pw.pw_gecos.split(",")[0]
    except KeyError:
        name, comment = os.environ.get("USER") or os.environ.get("LOGNAME") or "", ""
    if uid == 0 or not re.match(r"^[a-z_][a-z0-9_-]*$", name):
        return {"name": "lima", "comment": "lima", "uid": 1000}
    return {"name": name, "comment": comment or name, "uid": uid}


@functools.lru_cache(maxsize=None)
def host_timezone():
    with contextlib.suppress(OSError):
        with open("/etc/timezone") as f:
            tz = f.read().strip()
            if tz:
                return tz
    with contextlib.suppress(OSError):
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return target.split("/zoneinfo/", 1)[1]
    return "Etc/UTC"


def host_cpus():
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def host_memory():
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    return 8 << 30


# ---------------------------------------------------------------------------- config

def read_yaml_file(path):
    """lima.yaml or a _config/ file as Lima reads it; ValueError (yaml12.YAMLError) if it does not parse."""
    with open(path) as f:
        text = f.read()
    from . import yaml12  # python3-yaml takes a while to import; `list` with cached configs skips it
    return yaml12.loads(text) or {}


def _merge(base, over):
    """Lima-style merge of YAML fragments: maps recursively, lists concatenated, scalars replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list):
        return over + base
    return over


def effective_config(y):
    """Template + _config/default.yaml (lowest) + _config/override.yaml (highest)."""
    cfg = dict(y or {})
    with contextlib.suppress(FileNotFoundError):
        cfg = _merge(read_yaml_file(os.path.join(config_dir(), "default.yaml")), cfg)
    with contextlib.suppress(FileNotFoundError):
        cfg = _merge(cfg, read_yaml_file(os.path.join(config_dir(), "override.yaml")))
    return cfg


def _b(v, default):
    return default if v is None else bool(v)


def _fill_mount(m, writable_default=False):
    m = dict(m or {})
    loc = os.path.expanduser(str(m.get("location", "")))
    writable = _b(m.get("writable"), writable_default)
    sshfs = dict(m.get("sshfs") or {})
    p9 = dict(m.get("9p") or {})
    out = {"location": loc, "mountPoint": os.path.expanduser(str(m.get("mountPoint") or loc)),
           "writable": writable,
           "sshfs": {"cache": _b(sshfs.get("cache"), True),
                     "followSymlinks": _b(sshfs.get("followSymlinks"), False),
                     "sftpDriver": sshfs.get("sftpDriver") or ""},
           "9p": {"securityModel": p9.get("securityModel") or "none",
                  "protocolVersion": p9.get("protocolVersion") or "9p2000.L",
                  "msize": p9.get("msize") or "128KiB",
                  "cache": p9.get("cache") or ("mmap" if writable else "fscache")}}
    if m.get("virtiofs"):
        out["virtiofs"] = m["virtiofs"]
    return out


def _fill_port_forward(r):
    r = dict(r or {})
    out = {}
    guest_ip = r.get("guestIP") or "127.0.0.1"
    # Lima: guestIPMustBeZero defaults to true only when guestIP is explicitly 0.0.0.0
    out["guestIPMustBeZero"] = _b(r.get("guestIPMustBeZero"), guest_ip == "0.0.0.0" and "guestIP" in r)
    out["guestIP"] = guest_ip
    if r.get("guestPort"):
        out["guestPort"] = int(r["guestPort"])
    gp = r.get("guestPortRange") or ([int(r["guestPort"])] * 2 if r.get("guestPort") else [1, 65535])
    if r.get("guestSocket"):
        out["guestSocket"] = r["guestSocket"]
    else:
        out["guestPortRange"] = [int(gp[0]), int(gp[1])]
    out["hostIP"] = r.get("hostIP") or "127.0.0.1"
    if r.get("hostPort"):
        out["hostPort"] = int(r["hostPort"])
    hp = r.get("hostPortRange") or ([int(r["hostPort"])] * 2 if r.get("hostPort") else list(gp))
    if r.get("hostSocket"):
        out["hostSocket"] = r["hostSocket"]
    else:
        out["hostPortRange"] = [int(hp[0]), int(hp[1])]
    out["proto"] = r.get("proto") or "tcp"
    if r.get("reverse"):
        out["reverse"] = True
    if r.get("ignore"):
        out["ignore"] = True
    if r.get("static"):
        out["static"] = True
    return out


def _fill_provision(p):
    p = dict(p or {})
    mode = p.get("mode") or "system"
    out = {"mode": mode}
    for k, v in p.items():
        if k != "mode":
            out[k] = v
    if mode == "data":
        out.setdefault("owner", "root:root")
        out.setdefault("permissions", "644")
        out.setdefault("overwrite", True)
    return out


def default_memory():
    return "4GiB" if host_memory() // 2 >= 4 << 30 else units.bytes_size(host_memory() // 2)


def fill_defaults(y):
    """lima.yaml after default filling, keys in Lima's LimaYAML order (as `list --json` shows)."""
    y = effective_config(y)
    hu = host_user()
    out = {}
    if y.get("minimumLimaVersion"):
        out["minimumLimaVersion"] = y["minimumLimaVersion"]
    out["vmType"] = y.get("vmType") or "qemu"
    if y.get("vmOpts"):
        out["vmOpts"] = y["vmOpts"]
    out["os"] = y.get("os") or "Linux"
    out["arch"] = y.get("arch") or HOST_ARCH
    out["images"] = list(y.get("images") or [])
    if y.get("cpuType"):
        out["cpuType"] = y["cpuType"]
    out["cpus"] = int(y.get("cpus") or min(4, host_cpus()))
    out["memory"] = y.get("memory") or default_memory()
    out["disk"] = y.get("disk") or "100GiB"
    if y.get("additionalDisks"):
        out["additionalDisks"] = y["additionalDisks"]
    mounts = [_fill_mount(m, _b(y.get("mountWritable"), False)) for m in (y.get("mounts") or [])]
    if mounts:
        out["mounts"] = mounts
    if y.get("mountTypesUnsupported"):
        out["mountTypesUnsupported"] = y["mountTypesUnsupported"]
    if y.get("mountType"):
        out["mountType"] = y["mountType"]
    out["mountInotify"] = _b(y.get("mountInotify"), False)
    ssh = dict(y.get("ssh") or {})
    out["ssh"] = {"localPort": int(ssh.get("localPort") or 0),
                  "loadDotSSHPubKeys": _b(ssh.get("loadDotSSHPubKeys"), False),
                  "forwardAgent": _b(ssh.get("forwardAgent"), False),
                  "forwardX11": _b(ssh.get("forwardX11"), False),
                  "forwardX11Trusted": _b(ssh.get("forwardX11Trusted"), False)}
    fw = dict(y.get("firmware") or {})
    out["firmware"] = {"legacyBIOS": _b(fw.get("legacyBIOS"), False)}
    audio = dict(y.get("audio") or {})
    out["audio"] = {"device": audio.get("device") or "", "interface": audio.get("interface") or ""}
    video = dict(y.get("video") or {})
    out["video"] = {"display": video.get("display") or "none"}
    prov = [_fill_provision(p) for p in (y.get("provision") or [])]
    if prov:
        out["provision"] = prov
    out["upgradePackages"] = _b(y.get("upgradePackages"), False)
    cd = dict(y.get("containerd") or {})
    out["containerd"] = {"system": _b(cd.get("system"), False),
                         "user": _b(cd.get("user"), HOST_ARCH in ("x86_64", "aarch64")),
                         "archives": cd.get("archives") or DEFAULT_CONTAINERD_ARCHIVES}
    out["guestInstallPrefix"] = y.get("guestInstallPrefix") or "/usr/local"
    probes = []
    for p in y.get("probes") or []:
        p = dict(p)
        probes.append(dict({"mode": p.pop("mode", None) or "readiness"}, **p))
    if probes:
        out["probes"] = probes
    pf = [_fill_port_forward(r) for r in (y.get("portForwards") or [])]
    if pf:
        out["portForwards"] = pf
    for key in ("copyToHost", "message", "networks"):
        if y.get(key):
            out[key] = y[key]
    if y.get("env"):
        out["env"] = {str(k): ("" if v is None else str(v)) for k, v in y["env"].items()}
    if y.get("param"):
        out["param"] = {str(k): ("" if v is None else v if isinstance(v, str) else logrus.go_sprint(v))
                        for k, v in y["param"].items()}
    if y.get("dns"):
        out["dns"] = y["dns"]
    hr = dict(y.get("hostResolver") or {})
    out["hostResolver"] = {"enabled": _b(hr.get("enabled"), True), "ipv6": _b(hr.get("ipv6"), False)}
    if hr.get("hosts"):
        out["hostResolver"]["hosts"] = hr["hosts"]
    out["propagateProxyEnv"] = _b(y.get("propagateProxyEnv"), True)
    ca = dict(y.get("caCerts") or {})
    out["caCerts"] = {"removeDefaults": _b(ca.get("removeDefaults"), False)}
    if ca.get("files"):
        out["caCerts"]["files"] = ca["files"]
    if ca.get("certs"):
        out["caCerts"]["certs"] = ca["certs"]
    out["plain"] = _b(y.get("plain"), False)
    out["timezone"] = y.get("timezone") or host_timezone()
    out["nestedVirtualization"] = _b(y.get("nestedVirtualization"), False)
    u = dict(y.get("user") or {})
    name = u.get("name") or hu["name"]
    out["user"] = {"name": name,
                   "comment": u.get("comment") or (hu["comment"] if name == hu["name"] else name),
                   "home": u.get("home") or f"/home/{name}.guest",
                   "shell": u.get("shell") or "/bin/bash",
                   "uid": int(u.get("uid") if u.get("uid") is not None else hu["uid"]),
                   "passwordlessSudo": _b(u.get("passwordlessSudo"), True)}
    out["tpm"] = _b(y.get("tpm"), False)
    # not Lima's: machine's egress proxy, which the stand-in's network boundary sends every guest
    # connection to (netns.py); machine writes it only when `limactl info` says machineEgress
    if y.get("machineEgress") is not None:
        out["machineEgress"] = y["machineEgress"]
    return out


def validate_config(cfg):
    """The few checks Lima's validator makes that matter here; returns an error or None."""
    if not cfg.get("images"):
        return "field `images` must be set"
    for i, img in enumerate(cfg["images"]):
        if not isinstance(img, dict) or not img.get("location"):
            return f"field `images[{i}].location` must be set"
    try:
        units.ram_in_bytes(cfg["memory"])
        units.ram_in_bytes(cfg["disk"])
    except ValueError as e:
        return str(e)
    if cfg["cpus"] < 1:
        return "field `cpus` must be set to at least 1"
    if cfg["vmType"] != "qemu":
        return f"vmType `{cfg['vmType']}` is not supported by the stand-in (only `qemu`)"
    for i, m in enumerate(cfg.get("mounts", [])):
        if not os.path.isabs(m["location"]):
            return f"field `mounts[{i}].location` must be an absolute path, got `{m['location']}`"
    return machine_egress_problem(cfg.get("machineEgress"))


def machine_egress_problem(v):
    if v is None:
        return None
    if not isinstance(v, dict):
        return "field `machineEgress` must be a mapping with the key `socket`"
    sock = v.get("socket")
    if sock is None:
        return "field `machineEgress.socket` must be set"
    if not isinstance(sock, str):
        return "field `machineEgress.socket` must be a string"
    if not os.path.isabs(sock):
        return f"field `machineEgress.socket` must be an absolute path, got `{sock}`"
    if len(sock.encode()) > 107:
        return f"field `machineEgress.socket` must be at most 107 bytes (a Unix socket path), got {len(sock.encode())}"
    return None


# ---------------------------------------------------------------------------- pids and status

def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    return True


def read_pid_file(path, remove_stale=True):
    """PID from a pidfile if that process is alive; a stale file is removed (as Lima does)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip() or "0")
    except (FileNotFoundError, ValueError):
        return None
    if pid > 0 and pid_alive(pid):
        return pid
    if remove_stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return None


def ssh_port_from_config(path):
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == "Port":
                    return int(parts[1])
    return None


class Instance:
    """What `limactl list` knows about one instance directory."""

    def __init__(self, name):
        self.name = name
        self.dir = instance_dir(name)
        self.errors = []          # human-readable, for warnings
        self.json_errors = []     # what Lima's JSON shows for them
        self.raw = None           # lima.yaml as written
        self.config = None        # filled
        self.status = ""
        self.ha_pid = self.qemu_pid = None
        self.ssh_port = None
        self.yaml_missing = False
        self.extra = {}           # driver-specific record fields (autoStartedIdentifier)
        self._load()

    @property
    def lima_yaml(self):
        return os.path.join(self.dir, "lima.yaml")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def _load(self):
        try:
            self.raw = driver.get().load_yaml(self.lima_yaml)
        except FileNotFoundError:
            self.yaml_missing = True
            self.status = "Broken"
            self.errors.append(f"open {self.lima_yaml}: no such file or directory")
            self.json_errors.append({"Op": "open", "Path": self.lima_yaml, "Err": 2})
            return
        except (OSError, ValueError) as e:
            self.status = "Broken"
            self.errors.append(f"failed to load YAML file {self.lima_yaml!r}: {e}")
            self.json_errors.append({})
            return
        try:
            self.config = fill_defaults(self.raw)
        except (ValueError, TypeError, AttributeError) as e:
            self.status = "Broken"
            self.errors.append(f"invalid config {self.lima_yaml!r}: {e}")
            self.json_errors.append({})
            return
        driver.get().inspect(self)
        self.ssh_port = ssh_port_from_config(self.path("ssh.config"))

    def set_status(self, ha_pid, qemu_pid, errors=()):
        """Lima's rule: both processes Running, neither Stopped, one of them Broken."""
        self.ha_pid, self.qemu_pid = ha_pid, qemu_pid
        if errors:
            self.status = "Broken"
        elif ha_pid and qemu_pid:
            self.status = "Running"
        elif not ha_pid and not qemu_pid:
            self.status = "Stopped"
        else:
            self.status = "Broken"
            errors = ["host agent is running but driver is not" if ha_pid
                      else "qemu driver is running but host agent is not"]
        self.errors += list(errors)
        self.json_errors += [{} for _ in errors]  # errors.New values marshal as {} (pruned)

    @property
    def protected(self):
        return os.path.exists(self.path("protected"))

    @property
    def lima_version(self):
        try:
            with open(self.path("lima-version")) as f:
                return f.read().strip()
        except OSError:
            return ""

    def to_json(self):
        """The object `limactl list --json` prints (Lima's field order, empty objects pruned)."""
        common_tail = {"HostOS": "linux", "HostArch": HOST_ARCH, "LimaHome": lima_home(),
                       "IdentityFile": identity_file()}
        if self.config is None:
            d = {"name": self.name, "hostname": "", "status": self.status, "dir": self.dir,
                 "vmType": "", "arch": ""}
            if self.json_errors:
                d["errors"] = self.json_errors
            d.update({"protected": self.protected, "limaVersion": self.lima_version})
            d.update(common_tail)
            return prune_empty_objects(d)
        c = self.config
        d = {"name": self.name, "hostname": hostname_for(self.name), "status": self.status,
             "dir": self.dir, "vmType": c["vmType"], "arch": c["arch"], "cpus": c["cpus"],
             "memory": units.ram_in_bytes(c["memory"]), "disk": units.ram_in_bytes(c["disk"])}
        if c.get("message"):
            d["message"] = c["message"]
        if c.get("additionalDisks"):
            d["additionalDisks"] = c["additionalDisks"]
        if c.get("networks"):
            d["network"] = c["networks"]
        if self.ssh_port:
            d["sshLocalPort"] = self.ssh_port
        d["sshConfigFile"] = self.path("ssh.config")
        if self.ha_pid:
            d["hostAgentPID"] = self.ha_pid
        if self.qemu_pid:
            d["driverPID"] = self.qemu_pid
        if self.json_errors:
            d["errors"] = self.json_errors
        d["config"] = c
        d["sshAddress"] = "127.0.0.1"
        d["protected"] = self.protected
        d["limaVersion"] = self.lima_version
        if c.get("param"):
            d["param"] = c["param"]
        d.update(self.extra)
        d.update(common_tail)
        return prune_empty_objects(d)


def prune_empty_objects(v):
    """yq's `del(.. | select(tag == "!!map" and length == 0))` that Lima applies to list JSON."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            x = prune_empty_objects(x)
            if isinstance(x, dict) and not x:
                continue
            out[k] = x
        return out
    if isinstance(v, list):
        return [prune_empty_objects(x) for x in v if not (isinstance(x, dict) and not prune_empty_objects(x))]
    return v
