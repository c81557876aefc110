#!/usr/bin/env python3
"""machine-agent `provision` end to end: the real binary over its real socket, with a temporary
journal and steps state (PROTOCOL.md §4 `provision`). Shares the harness of test_agent.py.

Run: python3 test_provision.py --agent PATH [unittest args]   (ctest runs it as `agent_provision`)
Runs as root (steps as `nobody`, a tmpfs for the disk-full case). Figures are `FIGURE` lines.
"""
import hashlib
import json
import os
import pwd
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_agent as ta  # noqa: E402  (the harness: Agent, Client, AgentTest)
from test_agent import figure, is_gone, pid_in, read_text, wait_until  # noqa: E402


def step(name, run, user="root", check=None, env=None, timeout_ms=None, hash=None):
    """A step as a client would send it; the hash covers the whole definition, like the host's."""
    s = {"name": name, "user": user, "run": run}
    if check is not None:
        s["check"] = check
    if env is not None:
        s["env"] = env
    if timeout_ms is not None:
        s["timeout_ms"] = timeout_ms
    s["hash"] = hash or hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()
    return s


def sh(script):
    return ["sh", "-c", script]


def lines_of(path):
    try:
        return read_text(path).split()
    except FileNotFoundError:
        return []


class ProvisionTest(ta.AgentTest):
    def setUp(self):
        super().setUp()
        self.state = os.path.join(self.tmp, "state", "steps.json")
        self.counter = os.path.join(self.tmp, "counter")
        self.mounts = []

    def tearDown(self):
        super().tearDown()  # stops the agents first
        for m in self.mounts:
            subprocess.run(["umount", "-l", m], capture_output=True)

    def agent(self, extra=(), **kw):
        return super().agent(extra=["--steps-state", self.state, *extra], **kw)

    def provision(self, client, steps, plan="test", **fields):
        """Sends a provision and returns its final message."""
        return client.call("provision", plan=plan, steps=steps, **fields)

    def counting(self, name, **kw):
        """A step whose run appends its name to the counter file: proves whether it ran."""
        return step(name, sh(f"echo {name} >> {self.counter}"), **kw)

    def events(self, agent, from_seq=0, names=("provision.", "step.")):
        return ta.journal_events(agent, from_seq, names)

    def last_seq(self, agent):
        return agent.client().call("hello")["journal"]["last_seq"]

    def recorded(self):
        try:
            return json.loads(read_text(self.state))
        except FileNotFoundError:
            return {}

    def outcomes(self, result):
        return [(s["name"], s["outcome"]) for s in result["steps"]]


class Engine(ProvisionTest):
    def test_steps_run_in_order_and_events_tell_the_story(self):
        a = self.agent()
        c = a.client()
        steps = [self.counting(n) for n in ("first", "second", "third")]
        r = self.provision(c, steps, plan="web")
        self.assertEqual(r["type"], "result", r)
        self.assertTrue(r["ok"])
        self.assertFalse(r["cancelled"])
        self.assertEqual(self.outcomes(r), [("first", "ran"), ("second", "ran"), ("third", "ran")])
        self.assertEqual(lines_of(self.counter), ["first", "second", "third"])
        ev = self.events(a)
        self.assertEqual([(e["event"], e.get("step")) for e in ev],
                         [("provision.started", None),
                          ("step.started", "first"), ("step.finished", "first"),
                          ("step.started", "second"), ("step.finished", "second"),
                          ("step.started", "third"), ("step.finished", "third"),
                          ("provision.finished", None)])
        self.assertEqual([e["seq"] for e in ev], sorted(e["seq"] for e in ev))
        self.assertEqual(ev[0]["plan"], "web")
        self.assertEqual((ev[0]["steps"], ev[0]["force"]), (3, False))
        self.assertEqual((ev[3]["index"], ev[3]["count"], ev[3]["user"]), (2, 3, "root"))
        fin = ev[-1]
        self.assertEqual((fin["ok"], fin["ran"], fin["satisfied"], fin["unchanged"], fin["failed"], fin["cancelled"]),
                         (True, 3, 0, 0, None, False))
        rec = self.recorded()
        self.assertEqual({k: v["hash"] for k, v in rec.items()}, {s["name"]: s["hash"] for s in steps})
        self.assertTrue(all(v["at"].endswith("Z") for v in rec.values()))

    def test_the_same_plan_again_spawns_nothing(self):
        a = self.agent()
        c = a.client()
        steps = [self.counting(n) for n in ("a", "b", "c")]
        self.provision(c, steps)
        seq = self.last_seq(a)
        r = self.provision(c, steps)
        self.assertTrue(r["ok"])
        self.assertEqual(self.outcomes(r), [("a", "unchanged"), ("b", "unchanged"), ("c", "unchanged")])
        self.assertEqual(lines_of(self.counter), ["a", "b", "c"])  # not one more
        ev = self.events(a, seq)
        skipped = [e for e in ev if e["event"] == "step.skipped"]
        self.assertEqual([(e["step"], e["reason"]) for e in skipped], [("a", "unchanged"), ("b", "unchanged"),
                                                                         ("c", "unchanged")])
        self.assertFalse([e for e in ev if e["event"] == "step.started"])
        self.assertEqual(ev[-1]["unchanged"], 3)

    def test_fifty_unchanged_steps_are_fast(self):
        a = self.agent()
        c = a.client()
        steps = [step(f"s{i:02d}", ["true"]) for i in range(50)]
        self.assertTrue(self.provision(c, steps)["ok"])
        t0 = time.monotonic()
        r = self.provision(c, steps)
        elapsed = time.monotonic() - t0
        self.assertEqual({s["outcome"] for s in r["steps"]}, {"unchanged"})
        figure("provision of 50 unchanged steps", f"{elapsed * 1000:.1f} ms (agent says {r['duration_ms']} ms)")
        self.assertLess(elapsed, 0.5)

    def test_a_passing_check_means_satisfied_and_the_run_never_happens(self):
        a = self.agent()
        c = a.client()
        marker = os.path.join(self.tmp, "ran")
        s = step("present", sh(f"touch {marker}"), check=["true"])
        r = self.provision(c, [s])
        self.assertTrue(r["ok"])
        self.assertEqual(self.outcomes(r), [("present", "satisfied")])
        self.assertFalse(os.path.exists(marker))
        skipped = [e for e in self.events(a) if e["event"] == "step.skipped"]
        self.assertEqual(skipped[0]["reason"], "satisfied")
        self.assertIn("duration_ms", skipped[0])
        self.assertEqual(self.recorded()["present"]["hash"], s["hash"])
        # Recorded: next time it is not even checked.
        self.assertEqual(self.outcomes(self.provision(c, [s])), [("present", "unchanged")])

    def test_a_failing_check_runs_the_step(self):
        a = self.agent()
        c = a.client()
        flag = os.path.join(self.tmp, "flag")
        r = self.provision(c, [step("make", sh(f"touch {flag}"), check=["test", "-e", flag])])
        self.assertTrue(r["ok"], r)
        self.assertEqual(self.outcomes(r), [("make", "ran")])
        self.assertTrue(os.path.exists(flag))

    def test_failure_stops_the_plan_and_forgets_the_step(self):
        a = self.agent()
        c = a.client()
        ok_flag = os.path.join(self.tmp, "ok")
        flaky = step("flaky", sh(f"echo flaky >> {self.counter}; for i in $(seq 1 25); do echo line $i; done; "
                                 f"echo oops >&2; test -e {ok_flag} || exit 3"))
        steps = [self.counting("before"), flaky, self.counting("after")]
        # Once it succeeds, its hash is recorded...
        open(ok_flag, "w").close()
        self.assertTrue(self.provision(c, steps)["ok"])
        self.assertIn("flaky", self.recorded())
        # ...then it fails (forced, so that it runs): later steps are not run, the hash goes.
        os.unlink(ok_flag)
        seq = self.last_seq(a)
        r = self.provision(c, steps, force=True)
        self.assertFalse(r["ok"])
        self.assertFalse(r["cancelled"])
        self.assertEqual(self.outcomes(r), [("before", "ran"), ("flaky", "failed"), ("after", "not_run")])
        failed = r["steps"][1]
        self.assertEqual((failed["reason"], failed["exit_code"]), ("exit", 3))
        self.assertNotIn("signal", failed)
        self.assertEqual(len(failed["tail"]), 20)
        self.assertEqual(failed["tail"][-1], "oops")
        self.assertEqual(failed["tail"][-2], "line 25")
        self.assertNotIn("flaky", self.recorded())
        self.assertIn("before", self.recorded())
        ev = self.events(a, seq)
        sf = [e for e in ev if e["event"] == "step.failed"]
        self.assertEqual(len(sf), 1)
        self.assertEqual((sf[0]["step"], sf[0]["reason"], sf[0]["exit_code"]), ("flaky", "exit", 3))
        self.assertEqual(sf[0]["tail"], failed["tail"])
        self.assertEqual((ev[-1]["failed"], ev[-1]["ok"]), ("flaky", False))
        self.assertEqual(lines_of(self.counter), ["before", "flaky", "after", "before", "flaky"])
        # Not forced now: the forgotten step runs again although its hash did not change.
        open(ok_flag, "w").close()
        r = self.provision(c, steps)
        self.assertEqual(self.outcomes(r), [("before", "unchanged"), ("flaky", "ran"), ("after", "unchanged")])

    def test_timeout_kills_the_whole_process_group(self):
        a = self.agent()
        c = a.client()
        pidfile = os.path.join(self.tmp, "sleep.pid")
        t0 = time.monotonic()
        r = self.provision(c, [step("slow", sh(f"sleep 100 & echo $! > {pidfile}; wait"), timeout_ms=500),
                               self.counting("next")])
        elapsed = time.monotonic() - t0
        self.assertEqual(self.outcomes(r), [("slow", "failed"), ("next", "not_run")])
        self.assertEqual(r["steps"][0]["reason"], "timeout")
        self.assertEqual(r["steps"][0]["signal"], 15)
        self.assertLess(elapsed, 4)
        sleep_pid = self.stop_at_exit(int(read_text(pidfile)))
        wait_until(lambda: is_gone(sleep_pid), 5, "the step's sleep to be gone")
        self.assertFalse(os.path.exists(self.counter))

    def test_timeout_escalates_to_sigkill(self):
        a = self.agent()
        c = a.client()
        t0 = time.monotonic()
        r = self.provision(c, [step("stubborn", sh("trap '' TERM; sleep 100; true"), timeout_ms=300)])
        elapsed = time.monotonic() - t0
        self.assertEqual(r["steps"][0]["reason"], "timeout")
        self.assertEqual(r["steps"][0]["signal"], 9)
        self.assertGreater(elapsed, 5.0)
        self.assertLess(elapsed, 8.0)

    def test_a_changed_step_alone_runs_again(self):
        a = self.agent()
        c = a.client()
        steps = [self.counting(n) for n in ("a", "b", "c")]
        self.provision(c, steps)
        steps[1] = self.counting("b", hash="ff" * 32)
        r = self.provision(c, steps)
        self.assertEqual(self.outcomes(r), [("a", "unchanged"), ("b", "ran"), ("c", "unchanged")])
        self.assertEqual(lines_of(self.counter), ["a", "b", "c", "b"])
        self.assertEqual(self.recorded()["b"]["hash"], "ff" * 32)

    def test_force_runs_everything(self):
        a = self.agent()
        c = a.client()
        steps = [self.counting(n) for n in ("a", "b")] + [step("checked", sh(f"echo x >> {self.counter}"),
                                                               check=["true"])]
        self.provision(c, steps)
        seq = self.last_seq(a)
        r = self.provision(c, steps, force=True)
        # force ignores recorded hashes; a check still decides.
        self.assertEqual(self.outcomes(r), [("a", "ran"), ("b", "ran"), ("checked", "satisfied")])
        self.assertEqual(lines_of(self.counter), ["a", "b", "a", "b"])
        self.assertTrue(self.events(a, seq)[0]["force"])

    def test_check_failing_after_the_run_fails_the_step(self):
        a = self.agent()
        c = a.client()
        r = self.provision(c, [step("liar", sh(f"echo liar >> {self.counter}"), check=sh("exit 4")),
                               self.counting("next")])
        self.assertFalse(r["ok"])
        self.assertEqual(self.outcomes(r), [("liar", "failed"), ("next", "not_run")])
        self.assertEqual(r["steps"][0]["reason"], "check_failed_after_run")
        self.assertEqual(r["steps"][0]["exit_code"], 4)  # the check's
        self.assertEqual(lines_of(self.counter), ["liar"])
        self.assertNotIn("liar", self.recorded())

    def test_a_command_that_cannot_start(self):
        a = self.agent()
        c = a.client()
        r = self.provision(c, [step("typo", ["/nonexistent/cmd"])])
        self.assertEqual(r["steps"][0]["reason"], "spawn_failed")
        self.assertIn("No such file or directory", r["steps"][0]["error"])
        r = self.provision(c, [step("typo2", ["true"], check=["/nonexistent/check"])])
        self.assertEqual(r["steps"][0]["reason"], "spawn_failed")
        self.assertIn("check: exec '/nonexistent/check'", r["steps"][0]["error"])

    def test_steps_not_in_the_request_stay_recorded(self):
        a = self.agent()
        c = a.client()
        self.provision(c, [self.counting("x"), self.counting("y")])
        self.provision(c, [self.counting("z")])
        self.assertEqual(set(self.recorded()), {"x", "y", "z"})


class Pending(ProvisionTest):
    """provision.pending: what a provision would not skip as unchanged; nothing runs."""

    def pending(self, client, steps):
        r = client.call("provision.pending", steps=[{"name": s["name"], "hash": s["hash"]} for s in steps])
        self.assertEqual(r["type"], "result", r)
        return r["pending"]

    def test_pending_names_what_a_provision_would_not_skip_and_runs_nothing(self):
        a = self.agent()
        c = a.client()
        checks = os.path.join(self.tmp, "checks")
        steps = [self.counting(n, check=sh(f"echo {n} >> {checks}; grep -qx {n} {self.counter}")) for n in ("a", "b", "c")]
        self.assertEqual(self.pending(c, steps), ["a", "b", "c"])  # nothing recorded yet
        self.assertFalse(os.path.exists(checks))                  # no check ran
        self.assertTrue(self.provision(c, steps)["ok"])
        checked = lines_of(checks)
        seq = self.last_seq(a)
        self.assertEqual(self.pending(c, steps), [])
        changed = [steps[0], self.counting("b", env={"CHANGED": "1"}), steps[2]]
        self.assertEqual(self.pending(c, changed), ["b"])
        self.assertEqual(self.pending(c, [self.counting("new")] + steps), ["new"])
        # The file is the truth, as for provision: a step removed from it is pending again.
        recorded = self.recorded()
        del recorded["c"]
        with open(self.state, "w") as f:
            json.dump(recorded, f)
        self.assertEqual(self.pending(c, steps), ["c"])
        self.assertEqual(self.pending(c, []), [])
        self.assertEqual(lines_of(self.counter), ["a", "b", "c"])  # not one more run
        self.assertEqual(lines_of(checks), checked)                 # nor check
        self.assertEqual(self.events(a, seq), [])                  # nor event
        # What pending said: c is not skipped (its check finds it done), a and b are.
        self.assertEqual(self.outcomes(self.provision(c, steps)), [("a", "unchanged"), ("b", "unchanged"),
                                                                   ("c", "satisfied")])

    def test_bad_requests_are_refused(self):
        a = self.agent()
        c = a.client()
        cases = [
            ("no steps field", {}, "'steps'"),
            ("bad name", {"steps": [{"name": "Bad Name", "hash": "ab"}]}, "'name'"),
            ("bad hash", {"steps": [{"name": "s", "hash": "XYZ"}]}, "'hash'"),
            ("duplicate", {"steps": [{"name": "s", "hash": "ab"}, {"name": "s", "hash": "cd"}]}, "already used"),
            ("too many", {"steps": [{"name": "s%d" % i, "hash": "ab"} for i in range(513)]}, "512"),
        ]
        for what, fields, expected in cases:
            with self.subTest(what):
                r = c.call("provision.pending", **fields)
                self.assertEqual((r["type"], r["code"]), ("error", "bad_request"), r)
                self.assertIn(expected, r["message"])


class Environment(ProvisionTest):
    def test_a_step_as_another_user(self):
        a = self.agent()
        c = a.client()
        nobody = pwd.getpwnam("nobody")
        r = self.provision(c, [step("who", sh("id -u; pwd; echo $MACHINE_STEP $MACHINE_AGENT_SOCKET $GREETING $USER"),
                                    user="nobody", env={"GREETING": "hi"})])
        self.assertTrue(r["ok"], r)
        out = [e["line"] for e in self.events(a) if e["event"] == "step.output"]
        home = nobody.pw_dir if os.path.isdir(nobody.pw_dir) else "/"
        self.assertEqual(out, [str(nobody.pw_uid), home, f"who {a.socket} hi nobody"])

    def test_environment_is_not_the_agents(self):
        a = self.agent()
        c = a.client()
        self.provision(c, [step("env", ["env"])])
        out = [e["line"] for e in self.events(a) if e["event"] == "step.output"]
        self.assertIn("MACHINE_STEP=env", out)
        self.assertFalse([l for l in out if "MACHINE_AGENT_TEST_SECRET" in l])


class Output(ProvisionTest):
    def test_long_lines_are_cut_and_many_lines_counted(self):
        a = self.agent()
        c = a.client()
        script = ("head -c 5000 /dev/zero | tr '\\0' x; echo; "
                  "printf 'a'; i=0; while [ $i -lt 1500 ]; do printf '\\303\\251'; i=$((i+1)); done; echo; "
                  "seq 1 2500; printf 'no newline at the end'")
        r = self.provision(c, [step("noisy", sh(script))])
        self.assertTrue(r["ok"])
        ev = self.events(a)
        out = [e for e in ev if e["event"] == "step.output"]
        self.assertEqual(len(out), 2000)
        self.assertEqual(out[0]["line"], "x" * 2000)
        # 1 + 999 two-byte characters: the one that would cross 2000 bytes is left out whole.
        self.assertEqual(out[1]["line"], "a" + "\u00e9" * 999)
        self.assertEqual(len(out[1]["line"].encode()), 1999)
        self.assertEqual(out[2]["line"], "1")
        self.assertEqual(out[-1]["line"], "1998")
        fin = [e for e in ev if e["event"] == "step.finished"][0]
        self.assertEqual(fin["dropped_lines"], 2 + 2500 + 1 - 2000)

    def test_dropped_lines_and_tail_on_failure(self):
        a = self.agent()
        c = a.client()
        r = self.provision(c, [step("loud", sh("seq 1 2100; exit 1"))])
        failed = r["steps"][0]
        self.assertEqual(failed["tail"], [str(i) for i in range(2081, 2101)])  # the tail is the real end
        sf = [e for e in self.events(a) if e["event"] == "step.failed"][0]
        self.assertEqual(sf["dropped_lines"], 100)
        self.assertEqual(sf["tail"], failed["tail"])

    def test_invalid_utf8_is_replaced(self):
        a = self.agent()
        c = a.client()
        r = self.provision(c, [step("binary", sh("printf 'ok \\377\\376 end\\n'; printf '\\303\\n' >&2; "
                                                 "printf 'nul\\000byte\\n'; exit 1"))])
        out = [(e["stream"], e["line"]) for e in self.events(a) if e["event"] == "step.output"]
        self.assertIn(("stdout", "ok \ufffd\ufffd end"), out)
        self.assertIn(("stderr", "\ufffd"), out)
        self.assertIn(("stdout", "nul\x00byte"), out)
        self.assertIn("ok \ufffd\ufffd end", r["steps"][0]["tail"])
        self.assertEqual(a.client().call("hello")["type"], "result")


class Concurrency(ProvisionTest):
    def start_slow(self, c, pidfile, extra_steps=()):
        rid = c.request("provision", plan="slow",
                        steps=[self.counting("quick"),
                               step("slow", sh(f"sleep 100 & echo $! > {pidfile}; wait")), *extra_steps])
        return rid, self.stop_at_exit(wait_until(lambda: pid_in(pidfile), 10, "the slow step's sleep"))

    def test_a_second_provision_is_busy(self):
        a = self.agent()
        c1, c2 = a.client(), a.client()
        pidfile = os.path.join(self.tmp, "pid")
        rid, _ = self.start_slow(c1, pidfile)
        for c in (c2, c1):
            r = self.provision(c, [self.counting("intruder")])
            self.assertEqual((r["type"], r["code"]), ("error", "busy"))
            self.assertIn("slow", r["message"])
        c1.call("cancel", target=rid)
        self.assertTrue(c1.final(rid)[-1]["cancelled"])
        # Free again.
        self.assertTrue(self.provision(c2, [self.counting("after")])["ok"])
        self.assertEqual(lines_of(self.counter), ["quick", "after"])

    def test_cancel_mid_step(self):
        a = self.agent()
        c = a.client()
        pidfile = os.path.join(self.tmp, "pid")
        rid, pid = self.start_slow(c, pidfile, [self.counting("later")])
        t0 = time.monotonic()
        self.assertEqual(c.call("cancel", target=rid)["target"], rid)
        r = c.final(rid)[-1]
        self.assertLess(time.monotonic() - t0, 4)
        self.assertEqual(r["type"], "result")
        self.assertEqual((r["ok"], r["cancelled"]), (False, True))
        self.assertEqual(self.outcomes(r), [("quick", "ran"), ("slow", "failed"), ("later", "not_run")])
        self.assertEqual(r["steps"][1]["reason"], "cancelled")
        wait_until(lambda: is_gone(pid), 5, "the cancelled step's sleep to be gone")
        self.assertEqual(set(self.recorded()), {"quick"})
        ev = self.events(a)
        self.assertEqual([e["reason"] for e in ev if e["event"] == "step.failed"], ["cancelled"])
        self.assertTrue(ev[-1]["cancelled"])
        self.assertEqual(ev[-1]["event"], "provision.finished")
        self.assertEqual(lines_of(self.counter), ["quick"])

    def test_disconnect_mid_step(self):
        a = self.agent()
        c = a.client()
        pidfile = os.path.join(self.tmp, "pid")
        _, pid = self.start_slow(c, pidfile, [self.counting("later")])
        c.close()
        wait_until(lambda: is_gone(pid), 8, "the abandoned step's sleep to be gone")
        c2 = a.client()

        def finished():
            return any(e["event"] == "provision.finished" for e in self.events(a))

        wait_until(finished, 8, "provision.finished")
        fin = [e for e in self.events(a) if e["event"] == "provision.finished"][0]
        self.assertEqual((fin["cancelled"], fin["failed"], fin["ran"]), (True, "slow", 1))
        self.assertEqual(set(self.recorded()), {"quick"})
        self.assertEqual(lines_of(self.counter), ["quick"])
        # Not busy any more, and the cancelled step runs next time.
        r = self.provision(c2, [self.counting("quick"), step("slow", ["true"])])
        self.assertEqual(self.outcomes(r), [("quick", "unchanged"), ("slow", "ran")])

    def test_sigterm_mid_step(self):
        a = self.agent()
        c = a.client()
        pidfile = os.path.join(self.tmp, "pid")
        rid, pid = self.start_slow(c, pidfile)
        a.proc.send_signal(15)
        r = c.final(rid)[-1]
        self.assertEqual((r["type"], r["code"]), ("error", "shutting_down"))
        self.assertEqual(a.proc.wait(5), 0)
        wait_until(lambda: is_gone(pid), 5, "the step to be gone with the agent")
        # The step died at its SIGTERM, well within the agent's last moments: the journal says so.
        a.stop()
        a.start()
        ev = self.events(a)
        self.assertEqual([(e["step"], e["reason"]) for e in ev if e["event"] == "step.failed"], [("slow", "cancelled")])
        self.assertTrue([e for e in ev if e["event"] == "provision.finished"][0]["cancelled"])
        self.assertEqual(set(self.recorded()), {"quick"})


class State(ProvisionTest):
    def test_state_survives_an_agent_restart(self):
        a = self.agent()
        steps = [self.counting(n) for n in ("a", "b")]
        self.assertTrue(self.provision(a.client(), steps)["ok"])
        a.kill9()
        a.start()
        r = self.provision(a.client(), steps)
        self.assertEqual(self.outcomes(r), [("a", "unchanged"), ("b", "unchanged")])
        self.assertEqual(lines_of(self.counter), ["a", "b"])
        # The events of the first provision are still in the journal.
        self.assertEqual(len([e for e in self.events(a) if e["event"] == "provision.finished"]), 2)

    def test_a_corrupt_state_file_means_nothing_recorded(self):
        os.makedirs(os.path.dirname(self.state), exist_ok=True)
        with open(self.state, "w") as f:
            f.write('{"a": {"hash": "trunc')
        a = self.agent()
        c = a.client()
        steps = [self.counting("a")]
        self.assertEqual(self.outcomes(self.provision(c, steps)), [("a", "ran")])
        self.assertIn("corrupt", a.read_log())
        self.assertEqual(self.recorded()["a"]["hash"], steps[0]["hash"])  # rewritten whole
        # Corrupted while the agent runs: the file is read at every provision.
        with open(self.state, "wb") as f:
            f.write(b"\x00\xff not json")
        self.assertEqual(self.outcomes(self.provision(c, steps)), [("a", "ran")])
        # Valid JSON of the wrong shape is no better.
        with open(self.state, "w") as f:
            f.write('["a"]')
        self.assertEqual(self.outcomes(self.provision(c, steps)), [("a", "ran")])
        self.assertEqual(c.call("health")["type"], "result")
        self.assertEqual(a.proc.poll(), None)

    def test_disk_full(self):
        small = os.path.join(self.tmp, "small")
        os.makedirs(small)
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", small], capture_output=True, text=True)
        if m.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here (needs root in a namespace that allows it): {m.stderr.strip()}")
        self.mounts.append(small)
        self.state = os.path.join(small, "steps.json")
        a = self.agent()
        c = a.client()
        fill = os.path.join(small, "fill")
        # A step whose own action fills the disk: its error is in the tail.
        r = self.provision(c, [step("filler", sh(f"head -c 1000000 /dev/zero > {fill}"))])
        failed = r["steps"][0]
        self.assertEqual((failed["outcome"], failed["reason"], failed["exit_code"]), ("failed", "exit", 1))
        self.assertTrue(any("No space left on device" in l for l in failed["tail"]), failed["tail"])
        # Now the state cannot be written: a step that worked still fails, and says why.
        r = self.provision(c, [self.counting("fine")])
        failed = r["steps"][0]
        self.assertEqual((failed["outcome"], failed["reason"]), ("failed", "state_write_failed"))
        self.assertIn("No space left on device", failed["error"])
        sf = [e for e in self.events(a) if e["event"] == "step.failed" and e["step"] == "fine"][0]
        self.assertEqual(sf["reason"], "state_write_failed")
        self.assertIn("No space left on device", sf["error"])
        self.assertEqual(os.listdir(small), ["fill"])  # no temporary file left behind
        # Space again: the step was not recorded, so it runs again.
        os.unlink(fill)
        r = self.provision(c, [self.counting("fine")])
        self.assertEqual(self.outcomes(r), [("fine", "ran")])
        self.assertEqual(lines_of(self.counter), ["fine", "fine"])
        self.assertIn("fine", self.recorded())


class BadInput(ProvisionTest):
    def test_every_rule_is_checked_before_anything_runs(self):
        a = self.agent()
        c = a.client()
        marker = self.counting("marker")
        cases = [
            ("missing run", {"plan": "p", "steps": [{"name": "s", "user": "root", "hash": "ab"}]}, "missing 'run'"),
            ("bad name", {"plan": "p", "steps": [step("Bad Name", ["true"])]}, "'name'"),
            ("duplicate name", {"plan": "p", "steps": [marker, step("x", ["true"]), step("x", ["false"])]},
             "already used"),
            ("bad hash", {"plan": "p", "steps": [marker, step("h", ["true"], hash="XYZ")]}, "'hash'"),
            ("too many steps", {"plan": "p", "steps": [step(f"s{i}", ["true"]) for i in range(513)]}, "512"),
            ("no steps", {"plan": "p", "steps": []}, "'steps'"),
            ("empty plan", {"plan": "", "steps": [marker]}, "'plan'"),
            ("bad timeout", {"plan": "p", "steps": [step("t", ["true"], timeout_ms=0)]}, "'timeout_ms'"),
            ("empty check", {"plan": "p", "steps": [step("t", ["true"], check=[])]}, "'check'"),
            ("bad force", {"plan": "p", "force": 1, "steps": [marker]}, "'force'"),
        ]
        for what, fields, expected in cases:
            with self.subTest(what):
                r = c.call("provision", **fields)
                self.assertEqual((r["type"], r["code"]), ("error", "bad_request"), r)
                self.assertIn(expected, r["message"])
        r = c.call("provision", plan="p", steps=[marker, step("ghost", ["true"], user="no-such-user-here")])
        self.assertEqual((r["type"], r["code"]), ("error", "no_such_user"))
        self.assertIn("no-such-user-here", r["message"])
        self.assertIn("ghost", r["message"])
        self.assertFalse(os.path.exists(self.counter))  # NOTHING ran
        self.assertEqual(self.events(a), [])            # nor started
        self.assertFalse(os.path.exists(self.state))
        # And the agent is not left busy.
        self.assertTrue(self.provision(c, [marker])["ok"])


def main():
    return ta.run_suite("agent_provision",
                        lambda: None if os.geteuid() == 0 else "runs as root (steps as other users, a tmpfs)")


if __name__ == "__main__":
    sys.exit(main())
