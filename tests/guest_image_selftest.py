#!/usr/bin/env python3
"""tools/build-guest-image's pure parts, without debootstrap: the initramfs gets its kernel
modules decompressed (Debian 13 ships them as .ko.xz, which busybox's insmod may not unpack),
under their plain .ko names, in an uncompressed newc cpio the kernel can unpack; and the guest's
network configuration takes only the VM's own NIC, never the veths containers get."""
import fnmatch
import gzip
import importlib.machinery
import importlib.util
import lzma
import os
import shutil
import subprocess
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_builder():
    path = os.path.join(ROOT, "tools", "build-guest-image")
    loader = importlib.machinery.SourceFileLoader("build_guest_image", path)
    spec = importlib.util.spec_from_loader("build_guest_image", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


B = load_builder()
# Starts like a real module (ELF magic), so a compressed one can never pass for it.
MODULE = b"\x7fELF" + os.urandom(4096)


class ModuleDecompression(unittest.TestCase):
    def test_the_plain_name_drops_the_compression_suffix_only(self):
        self.assertEqual(B.plain_module_name("03-ext4.ko.xz"), "03-ext4.ko")
        self.assertEqual(B.plain_module_name("03-ext4.ko.zst"), "03-ext4.ko")
        self.assertEqual(B.plain_module_name("03-ext4.ko.gz"), "03-ext4.ko")
        self.assertEqual(B.plain_module_name("03-ext4.ko"), "03-ext4.ko")
        self.assertEqual(B.plain_module_name("xz.ko"), "xz.ko")

    def test_xz_and_gzip_modules_come_out_as_the_plain_module(self):
        self.assertEqual(B.decompress_module("kernel/fs/ext4/ext4.ko.xz", lzma.compress(MODULE)), MODULE)
        self.assertEqual(B.decompress_module("kernel/fs/ext4/ext4.ko.gz", gzip.compress(MODULE)), MODULE)
        self.assertEqual(B.decompress_module("kernel/fs/ext4/ext4.ko", MODULE), MODULE)

    @unittest.skipUnless(shutil.which("zstd"), "zstd not installed")
    def test_zstd_modules_come_out_as_the_plain_module(self):
        packed = subprocess.run(["zstd", "-q", "-c"], input=MODULE, capture_output=True, check=True).stdout
        self.assertEqual(B.decompress_module("kernel/fs/ext4/ext4.ko.zst", packed), MODULE)

    def test_a_corrupt_module_fails_the_build(self):
        with self.assertRaises(lzma.LZMAError):
            B.decompress_module("kernel/fs/ext4/ext4.ko.xz", b"not xz at all")


NETWORK_FILE = os.path.join(ROOT, "tools", "guest", "rootfs", "etc", "systemd", "network", "10-lima.network")


def match_section(path):
    """The [Match] section of a systemd .network file: {key: [values]} (a key may repeat)."""
    section, out = None, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Match" and "=" in line:
                key, value = line.split("=", 1)
                out.setdefault(key.strip(), []).extend(value.split())
    return out


def networkd_name_matches(globs, name):
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


class GuestNetwork(unittest.TestCase):
    """networkd gives the matched links the VM's static address and default route. With
    `Type=ether` alone that included Docker's veths (networkd took them out of their bridge:
    compose services could not reach each other), so the match must name the NIC."""

    def test_the_vm_nic_matches(self):
        m = match_section(NETWORK_FILE)
        self.assertEqual(m.get("Type"), ["ether"])
        for nic in ("enp0s3", "enp0s1", "ens3", "eth0"):
            self.assertTrue(networkd_name_matches(m.get("Name", []), nic), nic)

    def test_container_and_bridge_links_do_not(self):
        globs = match_section(NETWORK_FILE).get("Name")
        self.assertTrue(globs, "no Name= in [Match]: every ether link (docker's veths too) would match")
        for link in ("veth31ce0c7", "veth0", "docker0", "br-f617880f5eca", "cni0", "podman0", "vethb1e3d2a@if5"):
            self.assertFalse(networkd_name_matches(globs, link), link)


if __name__ == "__main__":
    unittest.main()
