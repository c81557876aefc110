#!/usr/bin/env python3
"""Figures about the code itself, for comparing two commits of the tree (issue 14's "Measure"):

  1. lines per module (each folder under src/, guest-agent/, include/machine/, each folder under
     tests/, tools/) and per top-level folder, counting the files git tracks;
  2. with --build DIR: the unit test count (Boost.Test cases in DIR/tests/machine_tests) and,
     with --time, the unit suite's run time;
  3. with --rebuild FILE (and --build): the time ninja takes to rebuild `machine` after FILE is
     touched (the build is brought up to date first);
  4. the pair count of the `duplicates` tool, when it is on PATH.

Usage: tests/bench/code_figures.py [--repo DIR] [--build DIR [--time] [--rebuild FILE]]
Compare two commits: run it in two checkouts (git worktree add /tmp/old REV) and read both.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time


def tracked_files(repo, folder):
    out = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--", folder],
                         check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f]


def line_count(repo, files):
    total = 0
    for f in files:
        try:
            with open(os.path.join(repo, f), "rb") as fh:
                total += fh.read().count(b"\n")
        except OSError:
            pass  # tracked but deleted in the working tree
    return total


def module_folders(repo):
    """src/* and tests/* one by one; the other top-level folders whole."""
    folders = []
    for parent in ("src", "tests"):
        base = os.path.join(repo, parent)
        if os.path.isdir(base):
            folders += [f"{parent}/{d}" for d in sorted(os.listdir(base))
                        if os.path.isdir(os.path.join(base, d)) and tracked_files(repo, f"{parent}/{d}")]
    return folders + ["guest-agent", "include/machine", "tools", "templates"]


def timed(argv, cwd=None):
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return time.monotonic() - t0, done


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    ap.add_argument("--build", help="a build directory of this tree (ninja)")
    ap.add_argument("--time", action="store_true", help="also time the unit suite")
    ap.add_argument("--rebuild", help="a source file to touch before timing a rebuild of `machine`")
    args = ap.parse_args()
    repo = os.path.abspath(args.repo)

    rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"tree: {repo} at {rev}")
    print("lines per module:")
    for folder in module_folders(repo):
        print(f"  {folder:<22} {line_count(repo, tracked_files(repo, folder)):>7}")
    print("lines per top-level folder:")
    for folder in ("src", "include", "guest-agent", "tests", "tools", "templates"):
        print(f"  {folder:<22} {line_count(repo, tracked_files(repo, folder)):>7}")

    if args.build:
        unit = os.path.join(args.build, "tests", "machine_tests")
        listing = subprocess.run([unit, "--list_content"], capture_output=True, text=True)
        cases = sum(1 for line in (listing.stdout + listing.stderr).splitlines() if line.rstrip().endswith("*"))
        print(f"unit test cases: {cases}")
        if args.time:
            seconds, done = timed([unit, "--log_level=nothing", "--report_level=no"])
            print(f"unit suite: {seconds:.1f} s (exit {done.returncode})")
        if args.rebuild:
            timed(["ninja", "-C", args.build, "machine"])
            os.utime(os.path.join(repo, args.rebuild))
            seconds, done = timed(["ninja", "-C", args.build, "machine"])
            if done.returncode != 0:
                sys.exit(f"code_figures: the rebuild failed:\n{done.stdout[-2000:]}")
            print(f"rebuild of machine after touching {args.rebuild}: {seconds:.1f} s")

    if shutil.which("duplicates"):
        out = subprocess.run(["duplicates", "--repo", repo, "--seconds", "120"], capture_output=True, text=True).stdout
        first = out.splitlines()[0] if out else ""
        m = re.match(r"(\d+) pairs", first)
        print(f"duplicates: {m.group(1) if m else first}")


if __name__ == "__main__":
    main()
