#!/usr/bin/env python3
"""tools/build-guest-image's pure parts, without debootstrap: the initramfs gets its kernel
modules decompressed (Debian 13 ships them as .ko.xz, which busybox's insmod may not unpack),
under their plain .ko names, in an uncompressed newc cpio the kernel can unpack."""
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


if __name__ == "__main__":
    unittest.main()
