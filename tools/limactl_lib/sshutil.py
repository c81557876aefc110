"""The Lima user key, `<dir>/ssh.config` and the ssh argument lists built from them."""
import fcntl
import glob
import os

from . import store


def ensure_user_key():
    """$LIMA_HOME/_config/user{,.pub}: ed25519, no passphrase, comment `lima` (created once)."""
    key = store.identity_file()
    if os.path.exists(key) and os.path.exists(key + ".pub"):
        return key
    os.makedirs(os.path.dirname(key), exist_ok=True)
    # parallel `limactl start`s must not mix the halves of two different key pairs
    with open(os.path.join(os.path.dirname(key), ".user.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (os.path.exists(key) and os.path.exists(key + ".pub")):
            _generate_key(key)
    return key


def _generate_key(key):
    import subprocess
    tmp = key + f".tmp{os.getpid()}"
    for p in (tmp, tmp + ".pub"):
        if os.path.exists(p):
            os.unlink(p)
    subprocess.run(["ssh-keygen", "-t", "ed25519", "-q", "-N", "", "-C", "lima", "-f", tmp],
                   check=True, stdin=subprocess.DEVNULL)
    os.replace(tmp + ".pub", key + ".pub")
    os.replace(tmp, key)


def dot_ssh_keys():
    """(private key, public key) pairs under ~/.ssh, for ssh.loadDotSSHPubKeys."""
    pairs = []
    for pub in sorted(glob.glob(os.path.join(os.path.expanduser("~"), ".ssh", "*.pub"))):
        priv = pub[:-4]
        if os.path.isfile(priv):
            pairs.append((priv, pub))
    return pairs


def authorized_keys(cfg):
    keys = []
    with open(store.identity_file() + ".pub") as f:
        keys.append(f.read().strip())
    if cfg["ssh"]["loadDotSSHPubKeys"]:
        for _priv, pub in dot_ssh_keys():
            with open(pub) as f:
                keys.append(f.read().strip())
    return "\n".join(keys) + "\n"


def _has_aes():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return " aes " in line + " "
    except OSError:
        pass
    return True


def ssh_options(inst_dir, cfg, port):
    """Option (key, value) pairs, in the order Lima writes them into ssh.config."""
    opts = [("IdentityFile", f'"{store.identity_file()}"')]
    if cfg["ssh"]["loadDotSSHPubKeys"]:
        opts += [("IdentityFile", f'"{priv}"') for priv, _pub in dot_ssh_keys()]
    opts += [("StrictHostKeyChecking", "no"),
             ("UserKnownHostsFile", "/dev/null"),
             ("NoHostAuthenticationForLocalhost", "yes"),
             ("PreferredAuthentications", "publickey"),
             ("Compression", "no"),
             ("BatchMode", "yes"),
             ("IdentitiesOnly", "yes"),
             ("GSSAPIAuthentication", "no"),
             ("Ciphers", '"^aes128-gcm@openssh.com,aes256-gcm@openssh.com"' if _has_aes()
              else '"^chacha20-poly1305@openssh.com"'),
             ("User", cfg["user"]["name"]),
             ("ControlMaster", "auto"),
             ("ControlPath", f'"{os.path.join(inst_dir, "ssh.sock")}"'),
             ("ControlPersist", "yes")]
    if cfg["ssh"]["forwardAgent"]:
        opts.append(("ForwardAgent", "yes"))
    if cfg["ssh"]["forwardX11"]:
        opts.append(("ForwardX11", "yes"))
    if cfg["ssh"]["forwardX11Trusted"]:
        opts.append(("ForwardX11Trusted", "yes"))
    opts += [("Hostname", "127.0.0.1"), ("Port", str(port))]
    return opts


def ssh_config_text(name, inst_dir, cfg, port, header=True):
    lines = []
    if header:
        lines += ["# This SSH config file can be passed to 'ssh -F'.",
                  "# This file is created by Lima, but not used by Lima itself currently.",
                  "# Modifications to this file will be lost on restarting the Lima instance."]
    lines.append(f"Host {store.hostname_for(name)}")
    lines += [f"  {k} {v}" for k, v in ssh_options(inst_dir, cfg, port)]
    return "\n".join(lines) + "\n"


def write_ssh_config(name, inst_dir, cfg, port):
    path = os.path.join(inst_dir, "ssh.config")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ssh_config_text(name, inst_dir, cfg, port))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def ssh_base_argv(inst_dir, name):
    """`ssh -F <dir>/ssh.config` ... `lima-<name>`: uses the instance's ControlMaster."""
    return ["ssh", "-F", os.path.join(inst_dir, "ssh.config")], store.hostname_for(name)
