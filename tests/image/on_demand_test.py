#!/usr/bin/env python3
"""The guest image on demand, as a user who is not root (issue 18, line 3).

  tests/image/on_demand_test.py --cache DIR [--limactl PATH]

Run as root: creates a throwaway user (with the subordinate ids Debian's useradd gives), and as
that user, with a home of its own, runs the stand-in's `limactl create` of a template whose image
is remote (as machine's template is): with no image in the user's cache the stand-in builds it
(tools/build-guest-image: mmdebstrap in a user namespace, no root), saying its progress, then
creates the instance on it. Checks the progress lines, the instance and its disk's backing image
(the user's, owned by the user), `limactl info`'s machineGuestImage before and after (what
machine's doctor reports), and that nothing is left in /var/tmp or the cache.

This is CI's image build: when DIR (the shared cache, MACHINE_GUEST_CACHE) has no image of the
current recipe, the one the user built is moved into DIR afterwards, with the downloaded .debs.
When DIR has it, the user's cache is seeded with it (hard links) and the test checks the same
create without a build (seconds). The user and its files are removed at the end.
"""
import argparse
import importlib.machinery
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
from tap import Tap  # noqa: E402

TAP = Tap("image")
check, skip = TAP.check, TAP.skip
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILDER = os.path.join(ROOT, "tools", "build-guest-image")
TEMPLATE = """\
images:
- location: "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2"
  arch: x86_64
cpus: 1
memory: 1GiB
disk: 8GiB
mounts: []
"""


def load_builder():
    loader = importlib.machinery.SourceFileLoader("build_guest_image", BUILDER)
    spec = importlib.util.spec_from_loader("build_guest_image", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def chown_tree(path, uid, gid):
    for dirpath, dirs, files in os.walk(path):
        os.lchown(dirpath, uid, gid)
        for name in files + dirs:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def var_tmp_entries():
    return set(os.listdir("/var/tmp"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True, help="the shared guest cache (MACHINE_GUEST_CACHE)")
    ap.add_argument("--limactl", default=os.path.join(ROOT, "tools", "limactl"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        skip("needs root (to create a throwaway user)")
    for prog in ["useradd", "userdel", "runuser", "mmdebstrap", "newuidmap"]:
        if not shutil.which(prog):
            skip(f"{prog} not found (tools/setup installs it)")

    builder = load_builder()
    _recipe, digest = builder.make_recipe(os.environ.get("MACHINE_GUEST_MIRROR", builder.DEFAULT_MIRROR))
    shared_guest = os.path.join(args.cache, "guest")
    shared_image = os.path.join(shared_guest, digest)
    have = os.path.isfile(os.path.join(shared_image, "recipe.json"))
    print(f"# recipe {digest}: {'in the shared cache: no build' if have else 'not built yet: the user builds it'}")

    user = f"msbimg{os.getpid()}"
    staging = tempfile.mkdtemp(prefix="machine-image-test.", dir="/var/tmp")
    os.chmod(staging, 0o755)
    home = os.path.join(staging, "home")
    created = False
    started = time.monotonic()
    try:
        subprocess.run(["useradd", "--home-dir", home, "--create-home", "--shell", "/bin/sh", user], check=True)
        created = True
        pw = pwd.getpwnam(user)
        with open("/etc/subuid") as f:
            if not any(line.startswith(user + ":") for line in f):
                subprocess.run(["usermod", "--add-subuids", "300000-365535", "--add-subgids", "300000-365535", user],
                               check=True)
        user_cache = os.path.join(home, ".cache", "machine")
        user_guest = os.path.join(user_cache, "guest")
        os.makedirs(user_guest)
        if have:
            # The shared image, linked (not copied, not chowned): the user only reads it.
            target = os.path.join(user_guest, digest)
            if subprocess.run(["cp", "-al", shared_image, target]).returncode != 0:
                shutil.copytree(shared_image, target)
            os.symlink(digest, os.path.join(user_guest, "current"))
        elif os.path.isdir(os.path.join(args.cache, "debs")):
            shutil.copytree(os.path.join(args.cache, "debs"), os.path.join(user_cache, "debs"))
        chown_tree(os.path.join(home, ".cache"), pw.pw_uid, pw.pw_gid)
        if have:
            for dirpath, _dirs, files in os.walk(os.path.join(user_guest, digest)):
                os.lchown(dirpath, pw.pw_uid, pw.pw_gid)  # directories only: the files are links
        with open(os.path.join(home, "t.yaml"), "w") as f:
            f.write(TEMPLATE)

        env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", f"HOME={home}", f"LIMA_HOME={home}/.lima",
               "LANG=C.UTF-8"]

        def as_user(*argv, timeout=3600):
            return subprocess.run(["runuser", "-u", user, "--", *env, *argv], capture_output=True, text=True,
                                  cwd=home, timeout=timeout)

        r = as_user(args.limactl, "info")
        try:
            status = json.loads(r.stdout)["machineGuestImage"]
        except (ValueError, KeyError):
            status = None
        check(status is not None and status["ready"] == have and status["problems"] == [],
              "limactl info says whether the image is built, and nothing stops this user building it", r.stdout + r.stderr)

        before = var_tmp_entries()
        t0 = time.monotonic()
        r = as_user(args.limactl, "--tty=false", "create", "--name=ondemand", os.path.join(home, "t.yaml"))
        create_seconds = time.monotonic() - t0
        print(f"FIGURE on_demand_create_seconds={create_seconds:.1f} ({'no build' if have else 'with the image build'})")
        check(r.returncode == 0, "limactl create as a user who is not root succeeds", r.stderr)
        progress = [line for line in r.stderr.splitlines() if "guest image: " in line]
        if have:
            check("building it" not in r.stderr and not progress, "an image in the user's cache is used as it is",
                  r.stderr)
        else:
            check("No stand-in guest image" in r.stderr and "building it" in r.stderr,
                  "create says it builds the missing image", r.stderr)
            check(len(progress) >= 5 and any("mmdebstrap" in line and "unshare mode" in line for line in progress)
                  and any("writing the ext4 root filesystem" in line for line in progress),
                  f"create shows the build's progress (mmdebstrap in unshare mode ... ext4), {len(progress)} lines",
                  r.stderr)
        current = os.path.join(user_guest, "current")
        image_dir = os.path.realpath(current)
        check(os.path.isfile(os.path.join(image_dir, "disk.qcow2")) and os.path.basename(image_dir) == digest,
              "the image is in the user's cache (~/.cache/machine/guest/current)", image_dir)
        if not have:
            built = os.path.isfile(os.path.join(image_dir, "recipe.json"))
            owners = {os.lstat(os.path.join(image_dir, n)).st_uid for n in os.listdir(image_dir)} if built else set()
            check(owners == {pw.pw_uid}, "the built image belongs to the user", owners)
            recipe = {}
            if built:
                with open(os.path.join(image_dir, "recipe.json")) as f:
                    recipe = json.load(f)
            check(recipe.get("build_mode") == "unshare", "built unprivileged (mmdebstrap's unshare mode)", recipe)
            print(f"FIGURE image_build_seconds={recipe.get('build_seconds')} rootfs_bytes={recipe.get('rootfs_bytes')}")
        r2 = as_user(args.limactl, "list", "--json", "ondemand")
        try:
            inst = json.loads(r2.stdout.splitlines()[0])
        except (ValueError, IndexError):
            inst = {}
        check(inst.get("name") == "ondemand" and inst.get("status") == "Stopped", "the instance is created (Stopped)",
              r2.stdout + r2.stderr)
        info = subprocess.run(["qemu-img", "info", "--output=json", "-U",
                               os.path.join(home, ".lima", "ondemand", "disk")], capture_output=True, text=True)
        try:
            backing = json.loads(info.stdout).get("full-backing-filename") or json.loads(info.stdout).get("backing-filename", "")
        except ValueError:
            backing = ""
        check(os.path.realpath(backing) == os.path.join(image_dir, "disk.qcow2"),
              "the instance's disk is an overlay on the user's image", info.stdout + info.stderr)
        after = var_tmp_entries() - before
        leftovers = [n for n in after if n.startswith("mmdebstrap")]
        check(not leftovers, "nothing left in /var/tmp by the build", leftovers)
        check(not [n for n in os.listdir(user_guest) if n.startswith(".tmp-")], "no partial build left in the cache",
              os.listdir(user_guest))
        r = as_user(args.limactl, "info")
        try:
            ready = json.loads(r.stdout)["machineGuestImage"]
        except (ValueError, KeyError):
            ready = {}
        check(ready.get("ready") is True and ready.get("image") == image_dir,
              "limactl info says the image is ready (doctor's [ok])", r.stdout)
        as_user(args.limactl, "delete", "-f", "ondemand", timeout=120)

        if not have and not TAP.failures:
            # CI's image: what the user built, into the shared cache (owned by the cache's owner).
            os.makedirs(shared_guest, exist_ok=True)  # a fresh CI machine has no cache yet
            st = os.stat(args.cache)
            tmp = os.path.join(shared_guest, f".tmp-{digest}-import")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.move(image_dir, tmp)
            chown_tree(tmp, st.st_uid, st.st_gid)
            os.rename(tmp, shared_image)
            builder.set_current(shared_guest, digest)
            debs = os.path.join(user_cache, "debs")
            if os.path.isdir(debs):
                os.makedirs(os.path.join(args.cache, "debs"), exist_ok=True)
                for name in os.listdir(debs):
                    dest = os.path.join(args.cache, "debs", name)
                    if not os.path.exists(dest) and os.path.isfile(os.path.join(debs, name)):
                        shutil.copy2(os.path.join(debs, name), dest)
                        os.chown(dest, st.st_uid, st.st_gid)
            print(f"# moved the image into {shared_image}")
    finally:
        if created:
            subprocess.run(["pkill", "-KILL", "-u", user], check=False)  # by uid: only the test user's
            subprocess.run(["userdel", user], check=False)
        shutil.rmtree(staging, ignore_errors=True)
    print(f"FIGURE image_test_seconds={time.monotonic() - started:.1f}")
    sys.exit(TAP.exit_status())


if __name__ == "__main__":
    main()
