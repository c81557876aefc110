#!/usr/bin/env python3
"""From nothing to a ready default VM, by the package path and by the source path, on this
machine: the commands a user types and the minutes each takes.

  source path   git clone; tools/setup (cold: ccache off, a fresh build/); build/machine up
  package path  apt-get install ./machine_<version>_amd64.deb; machine up

The .deb is what a user downloads: making it (tools/package, in the same fresh clone) is timed
and printed but is not part of the package path. Each `machine up` is the zero-config `default`
project in an empty directory, with a fresh HOME (so a fresh ~/.cache/machine: the guest image is
built on demand, then the cached base of the default profiles is baked, then the VM boots) and a
private LIMA_HOME; the VM is destroyed after. Debian packages that tools/setup or the .deb's
dependencies need and that this host has already are not downloaded again: the figures say how
many were missing.

The package is installed on this host with apt-get and removed again afterwards (unless it was
installed before): run as root, on a machine where that is fine.

Usage: tests/bench/install_paths_bench.py [--up both|package|source|none] [--keep]
  --up source|package: one first `up` only (the other path's `up` runs the same code from the
  same image recipe); none: the install steps only.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(argv, cwd=None, env=None, log=None):
    t0 = time.monotonic()
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        rc = subprocess.call(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    took = time.monotonic() - t0
    if rc != 0:
        sys.exit("%s failed (exit %d)%s" % (" ".join(argv), rc, "; see " + log if log else ""))
    return took


def missing_packages(names):
    missing = []
    for p in names:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    return missing


def packages_apt_would_add(deb):
    """What `apt-get install ./deb` would install besides the package itself (its dependencies
    missing here, virtual ones resolved as apt resolves them)."""
    out = subprocess.run(["apt-get", "install", "-s", "--no-install-recommends", deb], capture_output=True,
                         text=True).stdout
    return [l.split()[1] for l in out.splitlines() if l.startswith("Inst ") and l.split()[1] != "machine"]


def first_up(machine, work, label, log):
    """`machine up` of the default project with a fresh HOME; the VM destroyed after."""
    home = os.path.join(work, "home-" + label)
    project = os.path.join(home, "project")
    os.makedirs(project)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MACHINE_", "LIMA_", "XDG_"))}
    env.update(HOME=home, LIMA_HOME=os.path.join(work, "lima-" + label))
    try:
        took = timed([machine, "up"], cwd=project, env=env, log=log)
    finally:
        subprocess.call([machine, "destroy", "--force"], cwd=project, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--up", choices=["both", "package", "source", "none"], default="both")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the package path installs the .deb with apt-get")

    work = tempfile.mkdtemp(prefix="mip.", dir="/tmp")
    log = os.path.join(work, "log")
    figures = []
    installed_before = not missing_packages(["machine"])
    try:
        clone = os.path.join(work, "machine")
        t_clone = timed(["git", "clone", "-q", ROOT, clone], log=log)
        setup_missing = missing_packages(
            subprocess.run(["sh", "-c", "sed -n '/^packages=\"/,/\"$/p' tools/setup | tr -d '\"' | "
                                        "sed 's/^packages=//'"], cwd=clone, capture_output=True,
                           text=True).stdout.split())
        env = dict(os.environ, CCACHE_DISABLE="1")
        t_setup = timed(["tools/setup"], cwd=clone, env=env, log=log)
        figures.append("source path: git clone %.0f s, tools/setup %.1f min (cold build of machine and the "
                       "agent; %d of its Debian packages were missing)" % (t_clone, t_setup / 60, len(setup_missing)))

        t_package = timed(["tools/package"], cwd=clone, env=env, log=log)
        deb = sorted(glob.glob(os.path.join(clone, "build", "machine_*.deb")))[-1]
        deb_missing = packages_apt_would_add(deb)
        t_install = timed(["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb],
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), log=log)
        figures.append("package path: apt-get install ./%s %.0f s (%.1f MiB; apt added %d packages for its "
                       "dependencies); making it with tools/package took %.1f min on top of tools/setup"
                       % (os.path.basename(deb), t_install, os.path.getsize(deb) / 2**20, len(deb_missing),
                          t_package / 60))

        ups = {}
        if args.up in ("both", "package"):
            ups["package"] = first_up("/usr/bin/machine", work, "package", log)
        if args.up in ("both", "source"):
            ups["source"] = first_up(os.path.join(clone, "build", "machine"), work, "source", log)
        for label, took in ups.items():
            figures.append("first machine up (%s path; guest image built on demand, base baked, VM booted): "
                           "%.1f min" % (label, took / 60))
        src_up = ups.get("source", ups.get("package"))
        pkg_up = ups.get("package", ups.get("source"))
        if src_up is not None:
            figures.append("FIGURE ready_default_vm_min source=%.1f (3 commands) package=%.1f (2 commands)%s"
                           % ((t_clone + t_setup + src_up) / 60, (t_install + pkg_up) / 60,
                              "" if len(ups) == 2 else " (one first up measured, counted on both paths)"))
    finally:
        if not installed_before:
            subprocess.call(["apt-get", "remove", "-y", "-qq", "machine"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        for f in figures:
            print(f)
        if args.keep:
            print("work directory kept: " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
