"""Copy-on-write disk layers shared by clones: $LIMA_HOME/_layers/."""
import contextlib
import os
import subprocess
import uuid

from . import image, store


def layers_dir():
    return os.path.join(store.lima_home(), "_layers")


def freeze_disk(src_disk):
    """Make `src_disk` an immutable shared layer and give the source a fresh overlay on it.

    The source's disk file is renamed into $LIMA_HOME/_layers/ (same filesystem: O(1)) and
    replaced by an empty qcow2 overlay; clones get overlays on the same layer. No data is
    copied, and neither instance can change what the other sees.
    """
    os.makedirs(layers_dir(), exist_ok=True)
    layer = os.path.join(layers_dir(), f"{uuid.uuid4().hex}.qcow2")
    os.rename(src_disk, layer)
    try:
        os.chmod(layer, 0o444)
        make_overlay(layer, src_disk)
    except (OSError, subprocess.CalledProcessError):
        with contextlib.suppress(OSError):
            os.unlink(src_disk)
        os.rename(layer, src_disk)
        raise
    return layer


def make_overlay(backing, path):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, path],
                   check=True, capture_output=True)


def gc_layers():
    """Remove _layers/ files that no instance disk uses any more."""
    d = layers_dir()
    if not os.path.isdir(d):
        return
    used = set()
    for name in store.instance_names():
        disk = os.path.join(store.instance_dir(name), "disk")
        if os.path.exists(disk):
            used.update(image.disk_chain(disk))
    for f in os.listdir(d):
        p = os.path.realpath(os.path.join(d, f))
        if p not in used:
            with contextlib.suppress(OSError):
                os.unlink(p)
    with contextlib.suppress(OSError):
        os.rmdir(d)
