"""Choosing the guest image for an instance and creating its disk (Lima's instance.Prepare).

The stand-in cannot download cloud images (only Debian's mirror and npm are reachable here),
so `images[]` entries are used when they are local files (a path or file:// URL); when none
is, the instance boots the image that tools/build-guest-image cached, with a logged notice.
"""
import json
import os
import shutil
import subprocess
import sys
import urllib.parse

from . import logrus, units


class ImageError(Exception):
    pass


def machine_cache_dir():
    """Where tools/build-guest-image keeps images and the stand-in its KVM probe:
    $MACHINE_GUEST_CACHE (so a test with a private HOME still finds the built image), else
    $XDG_CACHE_HOME/machine."""
    if os.environ.get("MACHINE_GUEST_CACHE"):
        return os.environ["MACHINE_GUEST_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "machine")


def guest_cache_root():
    return os.path.join(machine_cache_dir(), "guest")


def local_path(location):
    """A local file path for an image location, or None for anything remote."""
    if not location:
        return None
    loc = str(location)
    if loc.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(loc).path)
    if "://" in loc:
        return None
    return os.path.abspath(os.path.expanduser(loc))


# Per guest arch (Lima's names): the builder and the link to its latest image. x86_64 is
# tools/build-guest-image's `current`; aarch64 is tools/build-guest-image-arm64's (a foreign
# arch here: built through qemu-user, booted under TCG).
_TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDERS = {"x86_64": ("build-guest-image", "current"), "aarch64": ("build-guest-image-arm64", "current-arm64")}


def builder_for(arch):
    return os.path.join(_TOOLS, BUILDERS.get(arch, BUILDERS["x86_64"])[0])


def builder_image(arch="x86_64"):
    """The `current` image of tools/build-guest-image (or of the arch's builder), resolved to
    its hash directory."""
    if arch not in BUILDERS:
        return None
    current = os.path.join(guest_cache_root(), BUILDERS[arch][1])
    if not os.path.islink(current) and not os.path.isdir(current):
        return None
    d = os.path.realpath(current)
    files = {"disk": os.path.join(d, "disk.qcow2"), "kernel": os.path.join(d, "vmlinuz"),
             "initrd": os.path.join(d, "initrd.img")}
    if not all(os.path.isfile(p) for p in files.values()):
        return None
    return dict(files, dir=d)


# The image builder, next to the stand-in (tools/ in the source tree, lib/machine/ installed).
BUILDER = builder_for("x86_64")


def build_on_demand(arch="x86_64"):
    """Runs the image builder (a few minutes, once per recipe; a concurrent create waits on its
    lock and finds the image made), its progress lines re-logged as info. In our process group:
    whatever stops this limactl stops the build, which then removes its partial work."""
    builder = builder_for(arch)
    if arch not in BUILDERS or not os.path.isfile(builder):
        return None
    what = "" if arch == "x86_64" else f" {arch}"
    logrus.info(f"No stand-in{what} guest image in `{guest_cache_root()}` yet: building it (once; a few minutes)")
    proc = subprocess.Popen([sys.executable, "-SE", builder], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    last = []
    for line in proc.stderr:
        line = line.rstrip("\n")
        last = (last + [line])[-20:]
        if line.startswith("build-guest-image: "):
            logrus.info("guest image: " + line[len("build-guest-image: "):])
    if proc.wait() != 0:
        raise ImageError("failed to build the stand-in guest image with " + builder + ": " +
                         " / ".join(x for x in last if x.strip())[-2000:])
    return builder_image(arch)


def guest_image_status():
    """For `limactl info` (machine's doctor): the image, else what this host lacks to build it."""
    built = builder_image()
    status = {"ready": built is not None, "image": built["dir"] if built else "", "cache": guest_cache_root(),
              "problems": []}
    if built is None:
        if not os.path.isfile(BUILDER):
            status["problems"] = [f"the image builder {BUILDER} is missing"]
        else:
            out = subprocess.run([sys.executable, "-SE", BUILDER, "--check"], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, errors="replace", check=False)
            status["problems"] = [line for line in out.stdout.splitlines() if line.strip()][:10]
            if out.returncode != 0 and not status["problems"]:
                status["problems"] = [f"{BUILDER} --check failed: {out.stderr.strip()[-500:]}"]
    return status


def _sibling_kernel(disk_path):
    """Our builder's layout: disk.qcow2 next to vmlinuz and initrd.img."""
    d = os.path.dirname(disk_path)
    k, i = os.path.join(d, "vmlinuz"), os.path.join(d, "initrd.img")
    if os.path.isfile(k) and os.path.isfile(i):
        return k, i
    return None, None


def resolve(cfg):
    """Pick the image: the first entry for this arch whose file exists, else the builder's.

    Returns a dict: location, disk, kernel, initrd, cmdline, digest, arch, fallback (bool).
    """
    arch = cfg["arch"]
    first = None
    remote_seen = False
    missing = []
    for img in cfg.get("images") or []:
        if img.get("arch") and img["arch"] != arch:
            continue
        first = first or img
        path = local_path(img.get("location"))
        if not path:
            remote_seen = True
            continue
        if not os.path.isfile(path):
            missing.append(path)
            continue
        kernel = initrd = None
        cmdline = ""
        if isinstance(img.get("kernel"), dict):
            kernel = local_path(img["kernel"].get("location"))
            cmdline = img["kernel"].get("cmdline") or ""
            if not kernel or not os.path.isfile(kernel):
                continue
        if isinstance(img.get("initrd"), dict):
            initrd = local_path(img["initrd"].get("location"))
            if not initrd or not os.path.isfile(initrd):
                continue
        if kernel is None:
            kernel, initrd = _sibling_kernel(path)
        return {"location": img["location"], "disk": path, "kernel": kernel, "initrd": initrd,
                "cmdline": cmdline, "digest": img.get("digest", ""), "arch": img.get("arch", arch),
                "fallback": False}
    if not remote_seen:
        # Only local files were asked for, and none exists: Lima fails to "download" them too.
        where = missing[0] if missing else "(no image for this arch)"
        raise ImageError(f"failed to download `{where}`: open {where}: no such file or directory")
    # The stand-in cannot download: remote images are replaced by the one tools/ builds, on
    # first use (as Lima downloads a template's image at its first create).
    built = builder_image(arch) or build_on_demand(arch)
    if built is None:
        where = first.get("location") if first else "(none)"
        hint = f"run {builder_for(arch)}" if arch in BUILDERS else f"the stand-in builds no `{arch}` image"
        raise ImageError(f"failed to find a usable image for arch `{arch}`: `{where}` is not a local file "
                         f"and there is no stand-in guest image in `{guest_cache_root()}` "
                         f"(hint: {hint})")
    return {"location": (first or {}).get("location", built["disk"]), "disk": built["disk"],
            "kernel": built["kernel"], "initrd": built["initrd"], "cmdline": "",
            "digest": (first or {}).get("digest", ""), "arch": arch, "fallback": True}


def image_info(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise ImageError(f"failed to inspect image `{path}`: {out.stderr.strip()}")
    return json.loads(out.stdout)


def prepare_disk(name, inst_dir, cfg):
    """Create `<dir>/disk` (qcow2 overlay on the chosen image, grown to `disk`) and copy the
    kernel and initrd next to it. Logs like Lima's create/start. No-op if the disk exists."""
    disk = os.path.join(inst_dir, "disk")
    if os.path.exists(disk):
        return
    img = resolve(cfg)
    logrus.info("Attempting to download the image", arch=img["arch"], digest=img["digest"],
                location=str(img["location"]))
    if img["fallback"]:
        logrus.warning(f"The stand-in cannot download `{img['location']}`; using the stand-in guest image "
                       f"`{img['disk']}` (built by tools/{os.path.basename(builder_for(img['arch']))}) instead")
    else:
        logrus.info(f"Downloaded the image from `{img['location']}`")
    info = image_info(img["disk"])
    base_size = int(info["virtual-size"])
    want = units.ram_in_bytes(cfg["disk"])
    size = max(base_size, want)
    if want > base_size:
        logrus.info(f"Resize instance {name}'s disk from {units.bytes_size(base_size)} to {units.bytes_size(want)}")
    elif want < base_size:
        logrus.warning(f"Ignoring `disk: {cfg['disk']}`: smaller than the image ({units.bytes_size(base_size)})")
    for src, dest in ((img["kernel"], "kernel"), (img["initrd"], "initrd")):
        if src:
            shutil.copyfile(src, os.path.join(inst_dir, dest + ".tmp"))
            os.replace(os.path.join(inst_dir, dest + ".tmp"), os.path.join(inst_dir, dest))
    if img["cmdline"]:
        with open(os.path.join(inst_dir, "kernel.cmdline"), "w") as f:
            f.write(img["cmdline"])
    tmp = disk + ".tmp"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", info["format"], "-b",
                    os.path.realpath(img["disk"]), tmp, str(size)], check=True, capture_output=True)
    os.replace(tmp, disk)


def disk_chain(path):
    """Backing files of a qcow2 (absolute paths), nearest first."""
    out = subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain", "-U", path],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return []
    chain = json.loads(out.stdout)
    return [os.path.realpath(c["filename"]) for c in chain[1:]]


def grow_disk(name, inst_dir, cfg):
    """`disk:` raised after creation (limactl edit): grow the qcow2; the guest's lima-init
    then grows the filesystem at boot. Shrinking is never done."""
    disk = os.path.join(inst_dir, "disk")
    if not os.path.exists(disk):
        return
    have = int(image_info(disk)["virtual-size"])
    want = units.ram_in_bytes(cfg["disk"])
    if want > have:
        logrus.info(f"Resize instance {name}'s disk from {units.bytes_size(have)} to {units.bytes_size(want)}")
        subprocess.run(["qemu-img", "resize", "-q", disk, str(want)], check=True, capture_output=True)
