"""TAP lines for a Python suite that tools/test counts: `ok N - what` (what was seen, when a
check fails), `SKIPPED: <suite>: <reason>` with exit 77, and a closing `N passed, N failed`."""
import sys


class Tap:
    def __init__(self, suite):
        self.suite = suite
        self.checks = []
        self.failures = []

    def check(self, ok, what, seen=""):
        self.checks.append(what)
        print(("ok" if ok else "not ok") + f" {len(self.checks)} - {what}" +
              ("" if ok else f"\n#   saw: {str(seen)[-3000:]}"), flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def skip(self, why):
        print(f"SKIPPED: {self.suite}: {why}", flush=True)
        sys.exit(77)

    def exit_status(self):
        print(f"{len(self.checks) - len(self.failures)} passed, {len(self.failures)} failed", flush=True)
        return 1 if self.failures else 0
