"""The per-boot config disk (Lima's cidata.iso, here a small read-only ext4 image).

It carries everything instance-specific into the guest, where tools/guest's lima-init and
lima-boot services apply it:
  lima.env                LIMA_CIDATA_* shell assignments (user, uid, home, hostname, ids...)
  param.env               PARAM_<key> assignments from `param:`
  etc_environment         /etc/environment (`env:` plus propagated proxy variables)
  ssh_authorized_keys     the Lima user key (plus ~/.ssh/*.pub with ssh.loadDotSSHPubKeys)
  mounts.tsv              9p tag, mount point, mount options per `mounts:` entry
  ca-certificates/*.crt   caCerts.files and caCerts.certs
  provision.{boot,system,user,data}/NNNNNNNN   scripts and data files (+ .meta for data)
"""
import os
import re
import shlex
import shutil
import subprocess
import tempfile

from . import qemu, store, sshutil

PROXY_VARS = ["http_proxy", "https_proxy", "ftp_proxy", "no_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY"]
SLIRP_GATEWAY = "192.168.5.2"
SLIRP_DNS = "192.168.5.3"


def machine_id(instance_id):
    """32 hex digits for systemd's machine-id, derived from the instance id."""
    hexid = re.sub(r"[^0-9a-f]", "", instance_id.lower())
    return (hexid + "0" * 32)[:32]


def _template_vars(name, cfg):
    return {"Name": name, "Hostname": store.hostname_for(name), "User": cfg["user"]["name"],
            "UID": str(cfg["user"]["uid"]), "Home": cfg["user"]["home"], "Dir": "",
            "GlobalTempDir": "/tmp", "Param": cfg.get("param", {})}


def render_template(text, tvars):
    """Lima executes scripts as Go templates with .Name .User .Home .UID .Param.X...; only those
    known fields are substituted here, anything else is left as written."""
    def sub(m):
        path = m.group(1).split(".")
        v = tvars
        for part in path:
            if not isinstance(v, dict) or part not in v:
                return m.group(0)
            v = v[part]
        return str(v)
    return re.sub(r"\{\{\s*\.([A-Za-z0-9_.]+)\s*\}\}", sub, text)


def _env_line(k, v):
    v = str(v)
    if re.match(r"^[A-Za-z0-9_./:@%+,=-]*$", v):
        return f"{k}={v}"
    return '{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"'))


def propagated_proxy_env():
    """propagateProxyEnv: proxy variables of this process, localhost rewritten to the host."""
    out = {}
    for k in PROXY_VARS:
        v = os.environ.get(k)
        if v:
            out[k] = re.sub(r"(//|^)(localhost|127\.0\.0\.1)([:/]|$)", rf"\g<1>{SLIRP_GATEWAY}\g<3>", v)
    return out


def guest_mounts(cfg):
    """Mount entries with a 9p tag and the guest mount options."""
    out = []
    for i, m in enumerate(cfg.get("mounts", [])):
        p9 = m["9p"]
        opts = ["trans=virtio", f"version={p9['protocolVersion']}", f"msize={qemu.msize_bytes(p9['msize'])}",
                f"cache={p9['cache']}"]
        opts.append("rw" if m["writable"] else "ro")
        out.append(dict(m, tag=f"mount{i}", options=",".join(opts)))
    return out


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _read_file_entry(entry):
    """caCerts.files / provision `file:` entries: a path (or {location: path})."""
    loc = entry.get("location") if isinstance(entry, dict) else entry
    with open(os.path.expanduser(str(loc))) as f:
        return f.read()


def populate(root, name, cfg, instance_id):
    """Write the cidata files for one boot into directory `root`."""
    u = cfg["user"]
    tvars = _template_vars(name, cfg)
    env = {
        "LIMA_CIDATA_NAME": name,
        "LIMA_CIDATA_HOSTNAME": store.hostname_for(name),
        "LIMA_CIDATA_IID": instance_id,
        "LIMA_CIDATA_MACHINE_ID": machine_id(instance_id),
        "LIMA_CIDATA_USER": u["name"],
        "LIMA_CIDATA_UID": str(u["uid"]),
        "LIMA_CIDATA_COMMENT": u["comment"],
        "LIMA_CIDATA_HOME": u["home"],
        "LIMA_CIDATA_SHELL": u["shell"],
        "LIMA_CIDATA_PASSWORDLESS_SUDO": "1" if u["passwordlessSudo"] else "0",
        "LIMA_CIDATA_TIMEZONE": cfg.get("timezone") or "",
        "LIMA_CIDATA_CA_REMOVE_DEFAULTS": "1" if cfg["caCerts"]["removeDefaults"] else "0",
        "LIMA_CIDATA_MNT": "/mnt/lima-cidata",
        "LIMA_CIDATA_MOUNTTYPE": "9p",
        "LIMA_CIDATA_MOUNTS": str(len(cfg.get("mounts", []))),
        "LIMA_CIDATA_SLIRP_GATEWAY": SLIRP_GATEWAY,
        "LIMA_CIDATA_SLIRP_DNS": SLIRP_DNS,
        "LIMA_CIDATA_SLIRP_IP_ADDRESS": "192.168.5.15",
        "LIMA_CIDATA_UPGRADE_PACKAGES": "1" if cfg["upgradePackages"] else "",
    }
    _write(os.path.join(root, "lima.env"), "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    params = cfg.get("param", {})
    _write(os.path.join(root, "param.env"),
           "".join(f"PARAM_{k}={shlex.quote(str(v))}\n" for k, v in params.items()))
    etc_env = dict(propagated_proxy_env()) if cfg["propagateProxyEnv"] else {}
    etc_env.update(cfg.get("env", {}))
    _write(os.path.join(root, "etc_environment"), "".join(_env_line(k, v) + "\n" for k, v in etc_env.items()))
    _write(os.path.join(root, "ssh_authorized_keys"), sshutil.authorized_keys(cfg), 0o644)
    _write(os.path.join(root, "mounts.tsv"),
           "".join(f"{m['tag']}\t{m['mountPoint']}\t{m['options']}\n" for m in guest_mounts(cfg)))
    certs = [_read_file_entry(f) for f in cfg["caCerts"].get("files", [])]
    certs += [str(c) for c in cfg["caCerts"].get("certs", [])]
    for i, pem in enumerate(certs):
        _write(os.path.join(root, "ca-certificates", f"lima-{i:03d}.crt"),
               pem if pem.endswith("\n") else pem + "\n")
    for i, p in enumerate(cfg.get("provision", [])):
        _write_provision(root, i, p, tvars)


def _write_provision(root, index, p, tvars):
    mode = p.get("mode", "system")
    fname = f"{index:08d}"
    if mode == "data":
        content = p.get("content")
        if content is None and p.get("file"):
            content = _read_file_entry(p["file"])
        content = render_template(str(content or ""), tvars)
        path = render_template(str(p.get("path", "")), tvars)
        _write(os.path.join(root, "provision.data", fname), content, 0o644)
        meta = {"DATA_PATH": path, "DATA_OWNER": render_template(str(p.get("owner", "root:root")), tvars),
                "DATA_PERMISSIONS": str(p.get("permissions", "644")),
                "DATA_OVERWRITE": "true" if p.get("overwrite", True) else "false"}
        _write(os.path.join(root, "provision.data", fname + ".meta"),
               "".join(f"{k}={shlex.quote(v)}\n" for k, v in meta.items()))
        return
    script = p.get("script")
    if script is None and p.get("file"):
        script = _read_file_entry(p["file"])
    if script is None:
        return
    script = render_template(str(script), tvars)
    if not script.startswith("#!"):
        script = "#!/bin/sh\n" + script
    sub = {"system": "provision.system", "dependency": "provision.system", "user": "provision.user",
           "boot": "provision.boot"}.get(mode)
    if sub is None:  # ansible, yq: not supported by the stand-in
        return
    _write(os.path.join(root, sub, fname), script, 0o755)


def build(inst_dir, name, cfg, instance_id):
    """(Re)create `<dir>/cidata.img` for this boot."""
    target = os.path.join(inst_dir, "cidata.img")
    with tempfile.TemporaryDirectory(prefix="cidata", dir=inst_dir) as tmp:
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        populate(root, name, cfg, instance_id)
        used = sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(root) for f in fs)
        size_kib = max(8192, (used * 2) // 1024 + 4096)
        img = os.path.join(tmp, "cidata.img")
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "cidata",
                        "-E", "root_owner=0:0", "-d", root, img, f"{size_kib}k"],
                       check=True, capture_output=True)
        shutil.move(img, target)
    return target
