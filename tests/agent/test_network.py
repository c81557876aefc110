#!/usr/bin/env python3
"""machine-agent's network rules (PROTOCOL.md §4 `network.apply`): the file it keeps, `nft -f`
when the host asks and at every start, and how loudly it fails. nft is a fake script that records
what it was given, or the real nft in a network namespace of its own (`unshare -rn`), so no test
touches this host's firewall.

Run: python3 test_network.py --agent PATH [unittest args]   (ctest runs it as `agent_network`)
"""
import os
import shlex
import shutil
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_agent as ta  # noqa: E402  (the harness: Agent, Client, AgentTest)

RULESET = "table inet machine_host_isolation {\n}\n"


def real_nft_in_a_namespace():
    """True when this host runs nft in an unprivileged network namespace (needs nftables)."""
    if not shutil.which("nft") or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rn", "nft", "list", "ruleset"], capture_output=True).returncode == 0


class NetworkRules(ta.AgentTest):
    def rules_path(self):
        return os.path.join(self.tmp, "etc-machine", "network.nft")

    def script(self, name, body):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
        return path

    def recording_nft(self, exit_code=0, stderr=""):
        """A fake nft: appends its arguments and the file it was given to nft.log."""
        log = os.path.join(self.tmp, "nft.log")
        return self.script("nft", f'echo "args: $*" >> {log}\ncat "$2" >> {log}\n'
                                  f'printf "%s" "{stderr}" >&2\nexit {exit_code}\n'), log

    def network_events(self, a):
        return [e for e in ta.journal_events(a, prefixes=("network.",))]

    def test_apply_writes_the_file_and_runs_nft_on_it(self):
        nft, log = self.recording_nft()
        a = self.agent(extra=["--nft", nft])
        r = a.client().call("network.apply", ruleset=RULESET)
        self.assertEqual(r["type"], "result", r)
        self.assertEqual((r["applied"], r["nft_found"], r["path"]), (True, True, self.rules_path()))
        self.assertNotIn("error", r)
        with open(self.rules_path()) as f:
            self.assertEqual(f.read(), RULESET)
        st = os.stat(self.rules_path())
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o644)  # whatever the agent's umask (077)
        self.assertEqual(st.st_uid, os.geteuid())           # the agent's: root in a VM
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.rules_path())).st_mode), 0o755)
        with open(log) as f:
            self.assertEqual(f.read(), f"args: -f {self.rules_path()}\n" + RULESET)
        events = self.network_events(a)
        self.assertEqual([(e["event"], e["trigger"]) for e in events], [("network.applied", "request")])
        # No temporary file is left beside it.
        self.assertEqual(os.listdir(os.path.dirname(self.rules_path())), ["network.nft"])

    def test_a_failure_is_an_answer_an_event_and_a_log_line(self):
        nft, _ = self.recording_nft(1, "Error: syntax error, unexpected junk")
        a = self.agent(extra=["--nft", nft])
        r = a.client().call("network.apply", ruleset="junk\n")
        self.assertEqual((r["type"], r["applied"], r["nft_found"]), ("result", False, True), r)
        self.assertIn("exit status 1", r["error"])
        self.assertIn("Error: syntax error, unexpected junk", r["error"])
        failed = [e for e in self.network_events(a) if e["event"] == "network.failed"]
        self.assertEqual(len(failed), 1)
        self.assertIn("unexpected junk", failed[0]["error"])
        self.assertIn("NOT applied", a.read_log())
        # The file is kept (what the host sent): the next start tries it again.
        with open(self.rules_path()) as f:
            self.assertEqual(f.read(), "junk\n")

    def test_without_nft_the_file_waits_for_it(self):
        a = self.agent(extra=["--nft", os.path.join(self.tmp, "no-such-nft")])
        r = a.client().call("network.apply", ruleset=RULESET)
        self.assertEqual((r["applied"], r["nft_found"]), (False, False), r)
        self.assertIn("install nftables", r["error"])
        self.assertTrue(os.path.exists(self.rules_path()))
        self.assertEqual([e["event"] for e in self.network_events(a)], ["network.failed"])

    def test_applied_again_at_every_start(self):
        nft, log = self.recording_nft()
        a = self.agent(extra=["--nft", nft])
        self.assertEqual(self.network_events(a), [])  # nothing to apply yet: nothing said
        self.assertTrue(a.client().call("network.apply", ruleset=RULESET)["applied"])
        a.stop()
        a.start()
        starts = ta.wait_until(lambda: [e for e in self.network_events(a) if e["trigger"] == "start"], 5,
                               "network.applied at start", interval=0.05)
        self.assertEqual([e["event"] for e in starts], ["network.applied"])
        self.assertEqual(starts[0]["boot_id"], "11111111-2222-3333-4444-555555555555")
        with open(log) as f:
            self.assertEqual(f.read().count("args: -f "), 2)
        # A rules file nft refuses at start: loud in the journal and the log, the agent serves on.
        a.stop()
        with open(self.rules_path(), "w") as f:
            f.write("junk\n")
        self.script("nft", 'echo "Error: could not process rule" >&2; exit 1\n')
        a.start()
        failed = ta.wait_until(lambda: [e for e in self.network_events(a) if e["event"] == "network.failed"], 5,
                               "network.failed at start", interval=0.05)
        self.assertEqual(failed[0]["trigger"], "start")
        self.assertIn("could not process rule", failed[0]["error"])
        self.assertIn("NOT applied (start)", a.read_log())
        self.assertEqual(a.client().call("hello")["type"], "result")

    def test_a_hanging_nft_is_killed_and_said(self):
        # Not 20 s in a test: a cancel ends it (the same stop as the agent's deadline).
        hang = self.script("nft", "exec sleep 60\n")
        a = self.agent(extra=["--nft", hang])
        c = a.client()
        rid = c.request("network.apply", ruleset=RULESET)
        c.call("cancel", target=rid)
        final = c.final(rid)[-1]
        self.assertEqual((final["type"], final["applied"]), ("result", False), final)
        self.assertIn("was stopped", final["error"])

    def test_bad_requests_change_nothing(self):
        nft, log = self.recording_nft()
        a = self.agent(extra=["--nft", nft])
        c = a.client()
        for fields, why in [({}, "missing 'ruleset'"),
                            ({"ruleset": 42}, "'ruleset' must be a string"),
                            ({"ruleset": "a\u0000b"}, "NUL"),
                            ({"ruleset": "#" * (256 * 1024 + 1)}, "longer than 262144 bytes")]:
            r = c.call("network.apply", **fields)
            self.assertEqual((r["type"], r["code"]), ("error", "bad_request"), r)
            self.assertIn(why, r["message"])
        self.assertFalse(os.path.exists(self.rules_path()))
        self.assertFalse(os.path.exists(log))

    @unittest.skipUnless(real_nft_in_a_namespace(), "needs nft and unprivileged network namespaces")
    def test_the_real_nft_applies_it_and_says_what_is_wrong(self):
        nft = self.script("nft", 'exec unshare -rn nft "$@"\n')
        a = self.agent(extra=["--nft", nft])
        c = a.client()
        good = ("table inet machine_host_isolation\ndelete table inet machine_host_isolation\n"
                "table inet machine_host_isolation {\n\tchain output {\n"
                "\t\ttype filter hook output priority -150; policy accept;\n"
                "\t\tip daddr 192.168.5.2 tcp dport != { 5432 } reject with tcp reset\n\t}\n}\n")
        r = c.call("network.apply", ruleset=good)
        self.assertEqual((r["applied"], r.get("error")), (True, None), r)
        r = c.call("network.apply", ruleset=good.replace("reject with tcp reset", "rejekt"))
        self.assertFalse(r["applied"])
        self.assertIn("network.nft:6:", r["error"])  # nft's own pointer to the line

    @unittest.skipUnless(real_nft_in_a_namespace() and shutil.which("nsenter"),
                         "needs nft, nsenter and unprivileged network namespaces")
    def test_rules_in_place_are_not_applied_again_until_nftables_changes(self):
        # The agent in a network namespace of its own, as root in the VM: its nft is the real one
        # (logged), and what else changes nftables there is played with nsenter.
        log = os.path.join(self.tmp, "nft.log")
        nft = self.script("nft", f'echo "args: $*" >> {log}\nexec nft "$@"\n')
        wrapper = self.script("agent-in-a-namespace", f'exec unshare -rn {shlex.quote(ta.AGENT)} "$@"\n')
        saved, ta.AGENT = ta.AGENT, wrapper
        self.addCleanup(setattr, ta, "AGENT", saved)
        a = self.agent(extra=["--nft", nft])
        c = a.client()

        def runs():
            if not os.path.exists(log):
                return 0
            with open(log) as f:
                return f.read().count("args: ")

        def in_namespace(*argv):
            return subprocess.run(["nsenter", "-t", str(a.proc.pid), "-U", "-n", "--preserve-credentials", *argv],
                                  capture_output=True, text=True, check=True).stdout

        def apply(ruleset, expect_runs, why):
            r = c.call("network.apply", ruleset=ruleset)
            self.assertEqual((r["type"], r["applied"], r.get("error")), ("result", True, None), r)
            self.assertEqual(runs(), expect_runs, why)
            with open(self.rules_path()) as f:
                self.assertEqual(f.read(), ruleset, why)

        good = ("table inet machine_host_isolation\ndelete table inet machine_host_isolation\n"
                "table inet machine_host_isolation {\n\tchain output {\n"
                "\t\ttype filter hook output priority -150; policy accept;\n"
                "\t\tip daddr 192.168.5.2 tcp dport != { 5432 } reject with tcp reset\n\t}\n}\n")
        apply(good, 1, "the first apply runs nft")
        apply(good, 1, "the same rules, nftables unchanged since: nft does not run")
        self.assertEqual([e["event"] for e in self.network_events(a)], ["network.applied"])  # nothing happened
        in_namespace("nft", "flush", "ruleset")  # root in the VM removes the table
        apply(good, 2, "a flushed table is applied again")
        self.assertIn("machine_host_isolation", in_namespace("nft", "list", "ruleset"))
        in_namespace("nft", "add", "table", "inet", "docker_like")  # any other change
        apply(good, 3, "another change to nftables: nft runs again")
        other = good.replace("5432", "5433")
        apply(other, 4, "other rules run nft")
        apply(other, 4, "and are then in place")
        with open(self.rules_path(), "w") as f:
            f.write("# edited in the VM\n")
        apply(other, 4, "an edited file is written again; the table itself did not change")
        # A new start applies the file (a new boot: here a new namespace) and remembers it.
        a.stop()
        a.start()
        # Its event is journalled once nft is done (the wrapper logs before nft even runs).
        ta.wait_until(lambda: [e for e in self.network_events(a) if e["trigger"] == "start"], 5,
                      "network.applied at start", interval=0.05)
        self.assertEqual(runs(), 5)
        c = a.client()
        apply(other, 5, "what the start applied is in place")


def main():
    return ta.run_suite("agent_network")


if __name__ == "__main__":
    sys.exit(main())
