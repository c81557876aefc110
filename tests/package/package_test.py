#!/usr/bin/env python3
"""The .deb installed into a fresh Debian 12 root, as a user gets it (issue 18, line 1).

  tests/package/package_test.py --build-dir BUILD [--cache DIR]

Makes the package from BUILD with cpack (what tools/package runs), checks what it holds and
declares, installs it with apt into a Debian 12 root made by mmdebstrap (cached as a tarball
under --cache, default $MACHINE_TEST_CACHE or $XDG_CACHE_HOME/machine/test-roots, with the
package's dependencies already in it, keyed by them: a rerun only unpacks it), then in that root
(chroot, private mount namespace) runs `machine --version`, `machine doctor --json` (the
stand-in and the guest agent found in the installed layout, with no environment variable) and a
bash completion of `machine u` through bash-completion's own loader. Prints FIGURE lines (.deb
size, times). Needs root (chroot) and mmdebstrap; skips (77) without them.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
from tap import Tap  # noqa: E402

TAP = Tap("package")
check, skip = TAP.check, TAP.skip
SUITE = "bookworm"
MIRROR = os.environ.get("MACHINE_TEST_MIRROR", "http://deb.debian.org/debian")


def run(argv, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(argv, **kw)


def make_deb(build, out_dir):
    started = time.monotonic()
    r = run(["cpack", "--config", os.path.join(build, "CPackConfig.cmake"), "-B", out_dir])
    if r.returncode != 0:
        print(r.stdout + r.stderr)
        sys.exit("cpack failed")
    debs = [f for f in os.listdir(out_dir) if f.endswith(".deb")]
    if len(debs) != 1:
        sys.exit(f"cpack made {debs}")
    print(f"FIGURE deb_build_seconds={time.monotonic() - started:.1f}")
    return os.path.join(out_dir, debs[0])


def deb_field(deb, field):
    return run(["dpkg-deb", "-f", deb, field]).stdout.strip()


def dependencies(deb):
    """What the root is made with: the package's declared Depends (the first of each
    alternative; not the shared libraries dpkg-shlibdeps adds, which apt fetches at install
    time, so a rebuilt binary does not remake the root) and the test's own bash-completion."""
    names = []
    for part in deb_field(deb, "Depends").split(","):
        name = part.split("|")[0].strip().split(" ")[0]
        if name and not name.startswith("lib"):
            names.append(name)
    return sorted(set(names + ["bash-completion"]))


def root_tarball(cache, deps):
    """A Debian 12 minbase root with `deps` installed, made once per dependency list."""
    key = hashlib.sha256((SUITE + MIRROR + " ".join(deps)).encode()).hexdigest()[:12]
    os.makedirs(cache, exist_ok=True)
    tar = os.path.join(cache, f"{SUITE}-{key}.tar")
    if os.path.exists(tar):
        print(f"# root tarball {tar} (cached)")
        return tar, False
    started = time.monotonic()
    tmp = tar[:-len(".tar")] + f".tmp-{os.getpid()}.tar"
    r = run(["mmdebstrap", "--mode=root", "--format=tar", "--variant=minbase", "--skip=cleanup/apt/lists",
             "--include=" + ",".join(deps), SUITE, tmp, MIRROR])
    if r.returncode != 0:
        if os.path.exists(tmp):
            os.unlink(tmp)
        print(r.stdout[-3000:] + r.stderr[-3000:])
        sys.exit("mmdebstrap failed")
    os.rename(tmp, tar)
    for old in os.listdir(cache):  # roots made for another dependency list
        if old.startswith(SUITE + "-") and old.endswith(".tar") and old != os.path.basename(tar):
            os.unlink(os.path.join(cache, old))
    print(f"FIGURE root_tarball_seconds={time.monotonic() - started:.1f}")
    return tar, True


def in_root(root, script, env=None):
    """`sh -c script` chrooted into root, with /proc, /dev and /sys in a mount namespace of its own."""
    inner = (f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
             f"mount --rbind /sys {root}/sys && exec chroot {root} /usr/bin/env -i "
             "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 "
             + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + " /bin/sh -c \"$0\"")
    return run(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", inner, script], timeout=600)


# bash-completion's own loader finds the installed script by the command's name (as on TAB),
# then its function completes `machine u`.
COMPLETE_SCRIPT = r"""
. /usr/share/bash-completion/bash_completion
__load_completion machine || { echo "no completion loaded for machine"; exit 3; }
fn=$(complete -p machine | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$fn" ] || { complete -p machine; exit 4; }
COMP_WORDS=(machine u); COMP_CWORD=1; COMP_LINE='machine u'; COMP_POINT=9
"$fn" machine u machine
printf '%s\n' "${COMPREPLY[@]}"
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--cache")
    args = ap.parse_args()
    if os.geteuid() != 0:
        skip("needs root (chroot into the Debian root)")
    for prog in ["mmdebstrap", "cpack", "dpkg-deb", "unshare"]:
        if not shutil.which(prog):
            skip(f"{prog} not found")
    cache = args.cache or os.environ.get("MACHINE_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "machine", "test-roots")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="machine-package.", dir="/var/tmp")
    try:
        deb = make_deb(os.path.abspath(args.build_dir), work)
        size = os.path.getsize(deb)
        print(f"FIGURE deb_bytes={size} ({size / 1048576:.1f} MiB) {os.path.basename(deb)}")

        listing = run(["dpkg-deb", "-c", deb]).stdout
        for path in ["./usr/bin/machine", "./usr/lib/machine/machine-agent", "./usr/lib/machine/limactl",
                     "./usr/lib/machine/limactl_lib/cli.py", "./usr/lib/machine/build-guest-image",
                     "./usr/lib/machine/guest/initramfs/init", "./usr/share/man/man1/machine.1.gz",
                     "./usr/share/bash-completion/completions/machine",
                     "./usr/share/zsh/vendor-completions/_machine",
                     "./usr/share/fish/vendor_completions.d/machine.fish"]:
            check(re.search(r"\s" + re.escape(path) + r"$", listing, re.M) is not None, f"the package holds {path}",
                  listing)
        # The aarch64 agent, when this build has it (the cross build: build/guest-agent/machine-agent-aarch64)
        if os.path.exists(os.path.join(args.build_dir, "guest-agent", "machine-agent-aarch64")):
            check(re.search(r"\s\./usr/lib/machine/machine-agent-aarch64$", listing, re.M) is not None,
                  "the package holds the aarch64 agent ./usr/lib/machine/machine-agent-aarch64", listing)
        check("__pycache__" not in listing, "no __pycache__ in the package", listing)
        depends = deb_field(deb, "Depends")
        for dep in ["libssh-4", "openssh-client", "python3", "python3-yaml", "qemu-utils", "mmdebstrap", "uidmap",
                    "e2fsprogs"]:
            check(re.search(r"(^|, )" + re.escape(dep) + r"\b", depends) is not None, f"Depends names {dep}", depends)
        check("qemu-system-x86" in deb_field(deb, "Recommends"), "Recommends qemu-system-x86",
              deb_field(deb, "Recommends"))

        extracted = os.path.join(work, "extracted")
        run(["dpkg-deb", "-x", deb, extracted], check=True)
        man = run(["man", "-l", os.path.join(extracted, "usr/share/man/man1/machine.1.gz")],
                  env=dict(os.environ, MANWIDTH="100", MANPAGER="cat", PAGER="cat"))
        text = re.sub(r".\x08", "", man.stdout)
        check(man.returncode == 0 and "machine up" in text and "EXIT STATUS" in text and "completion" in text,
              "man -l renders machine.1 (commands, exit status)", text[:500] + man.stderr)

        tar, cold = root_tarball(cache, dependencies(deb))
        t_install = time.monotonic()
        root = os.path.join(work, "root")
        os.makedirs(root)
        r = run(["tar", "-C", root, "-xf", tar])
        check(r.returncode == 0, "the Debian 12 root unpacks", r.stderr)
        shutil.copy(deb, os.path.join(root, "tmp", os.path.basename(deb)))
        # The root's package lists may have aged since it was made: on a miss, refresh and retry.
        install = f"apt-get install -y --no-install-recommends /tmp/{os.path.basename(deb)}"
        r = in_root(root, f"{install} || (apt-get update -qq && {install})", {"DEBIAN_FRONTEND": "noninteractive"})
        check(r.returncode == 0, "apt-get installs the .deb into a fresh Debian 12 root (dependencies resolved)",
              r.stdout + r.stderr)
        print(f"FIGURE install_seconds={time.monotonic() - t_install:.1f}")

        r = in_root(root, "machine --version")
        check(r.returncode == 0 and r.stdout.startswith("machine "), "machine --version", r.stdout + r.stderr)

        r = in_root(root, "machine doctor --json")
        try:
            doc = json.loads(r.stdout)
            checks = {c["name"]: c for c in doc["checks"]}
        except (ValueError, KeyError, TypeError):
            doc, checks = None, {}
        check(doc is not None, "machine doctor --json prints its JSON", r.stdout + r.stderr)
        lima = checks.get("limactl", {})
        check(lima.get("status") == "ok" and lima.get("detail", "").startswith("/usr/lib/machine/limactl")
              and "stand-in" in lima.get("detail", ""),
              "doctor: the installed stand-in /usr/lib/machine/limactl, and why, with no MACHINE_LIMACTL", str(lima))
        version = checks.get("Lima >= 2.0", {})
        check(version.get("status") == "ok", "doctor: the stand-in runs from the installed layout (limactl --version)",
              str(version))
        agent = checks.get("guest agent binary", {})
        check(agent.get("status") == "ok" and agent.get("detail") == "/usr/lib/machine/machine-agent",
              "doctor: the guest agent `up` deploys is the installed /usr/lib/machine/machine-agent", str(agent))
        image = checks.get("guest image", {})
        check(image.get("status") == "note" and "first `machine up` builds it" in image.get("detail", ""),
              "doctor: the guest image is not built yet, and the first `up` builds it", str(image))

        with open(os.path.join(root, "tmp", "complete.bash"), "w") as f:
            f.write(COMPLETE_SCRIPT)
        r = in_root(root, "bash /tmp/complete.bash")
        words = set(r.stdout.split())
        check(r.returncode == 0 and "up" in words and "down" not in words,
              "bash completion of `machine u` (bash-completion's loader, installed script) offers up", r.stdout + r.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"FIGURE package_test_seconds={time.monotonic() - started:.1f} (root tarball {'made' if cold else 'cached'})")
    sys.exit(TAP.exit_status())


if __name__ == "__main__":
    main()
