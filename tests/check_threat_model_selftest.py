#!/usr/bin/env python3
"""tools/check-threat-model fails, naming the row, when a test docs/threat-model.md names is gone:
on a scratch copy of the files the table names, one test of each kind is renamed (a Boost case, a
Python def, a quoted check name) and one file removed; the real tree must pass."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "tools", "check-threat-model")
DOC = os.path.join(ROOT, "docs", "threat-model.md")
# (file, old text, new text, the row the failure must name)
RENAMES = [
    ("tests/cli/test_cli.cpp", "BOOST_AUTO_TEST_CASE(doctor_names_the_residual_risks_of_this_setup)",
     "BOOST_AUTO_TEST_CASE(doctor_names_residual_risks)", "`machine doctor` names the residual risks that apply"),
    ("tests/hostile/test_host_paths.py", "def check_pin_master(", "def check_pin_master_gone(",
     "A wrong pin is refused even with Lima's ControlMaster open"),
    ("tests/hostile/test_hostile_sshd.py", '"exec-flood"', '"exec-floods"',
     "A flooding or hanging sshd in the VM does the same"),
]
REMOVED = ("tests/unit/test_forge_keys.cpp", "Forge host keys are shipped and checked strictly")


def run(root):
    return subprocess.run([sys.executable, CHECK, "--root", root, "--doc", os.path.join(root, "docs", "threat-model.md")],
                          capture_output=True, text=True)


def main():
    failures = []
    r = run(ROOT)
    if r.returncode != 0:
        failures.append("the real tree fails: " + r.stderr)
    with open(DOC) as f:
        named = sorted({path for line in f if line.startswith("|") for path in re.findall(r"`([^`:]+)::", line)})
    scratch = tempfile.mkdtemp(prefix="threat-model-selftest.")
    try:
        for path in named + ["docs/threat-model.md"]:
            os.makedirs(os.path.dirname(os.path.join(scratch, path)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, path), os.path.join(scratch, path))
        for path, old, new, _row in RENAMES:
            p = os.path.join(scratch, path)
            with open(p) as f:
                text = f.read()
            if old not in text:
                failures.append("%s no longer contains %s: update this self-test" % (path, old))
            with open(p, "w") as f:
                f.write(text.replace(old, new))
        os.unlink(os.path.join(scratch, REMOVED[0]))
        r = run(scratch)
        if r.returncode != 1:
            failures.append("exit %d, not 1, with renamed tests" % r.returncode)
        for row in [x[3] for x in RENAMES] + [REMOVED[1]]:
            if not any(row in line for line in r.stderr.splitlines()):
                failures.append("the failure does not name the row %r:\n%s" % (row, r.stderr))
    finally:
        shutil.rmtree(scratch)
    for f in failures:
        print("check_threat_model_selftest: " + f, file=sys.stderr)
    print("check_threat_model_selftest: %s" % ("FAILED" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
