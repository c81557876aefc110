#!/usr/bin/env python3
"""The hostile-guest suite, part 3: what a hostile repository or VM can make the host do, with the
real `machine` and fake-limactl (issue 13, items 2, 3, 4 and 7):

  filter-log   600,000 refused "add identity" messages leave agent-filter.log plus its one
               rotation under 1 MiB, and the filter still serves an allowed signature afterwards
               (the flood of tests/bench/agent_filter_bench.py, imported)
  ca-certs     a cloned repo's .machine.toml: `ca_certs = ["~/somefile.pem"]` (a certificate and a
               private key in HOME) is refused; a `certs/x.pem` inside the repo holding a PRIVATE
               KEY block is an error naming the file; a symlink out of the repo is refused; a clean
               in-repo file is accepted and only its CERTIFICATE block reaches the rendered template
               (the state dir's lima.yaml)
  watch-log    `watch` over a 400 MB ha.stdout.log stays under 32 MiB RSS
               (tests/bench/watch_log_bench.py, imported)
  pin-master   a wrong pin while Lima's ControlMaster (ControlMaster auto, StrictHostKeyChecking no,
               opened beforehand to a real OpenSSH sshd) is up: `machine ssh`, `run VM -- true`,
               `claude` and `codex` each refuse, naming the VM and both fingerprints

FIGURE lines: filter log size and refusal rate, watch's peak RSS. TAP-like output, exit 1 when a
check failed; pin-master needs root and a mount namespace (common.py), else only it is skipped.

  tests/hostile/test_host_paths.py --machine BUILD/machine [-k NAME] [-v] [--size-mb 400] [--flood 600000]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
import common  # noqa: E402
import agent_filter_bench as afb  # noqa: E402
import watch_log_bench as wlb  # noqa: E402

FAKE = common.FAKE_LIMACTL
MIB = 1 << 20


def machine_env(tmp):
    """A private world for `machine` with fake-limactl and no agent."""
    home = os.path.join(tmp, "home")
    os.makedirs(home, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MACHINE_", "LIMA_", "GIT_", "XDG_")) and k not in ("SSH_AUTH_SOCK", "HOME")}
    env.update(HOME=home, LIMA_HOME=os.path.join(tmp, "lima"), MACHINE_STATE_DIR=os.path.join(tmp, "state"),
               MACHINE_CONFIG_DIR=os.path.join(tmp, "config"), XDG_CACHE_HOME=os.path.join(tmp, "cache"),
               XDG_CONFIG_HOME=os.path.join(tmp, "xdg-config"), MACHINE_LIMACTL=FAKE, MACHINE_AGENT="off",
               GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.path.join(tmp, "gitconfig"),
               PATH="/usr/bin:/bin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    open(env["GIT_CONFIG_GLOBAL"], "a").close()
    return env


def run(argv, env, cwd=None, timeout=60, stdin=subprocess.DEVNULL):
    try:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=stdin)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(argv, "timeout", e.stdout or "", (e.stderr or "") + "\n(timed out)")


def short(text, n=400):
    return repr(text.strip()[-n:])


class Suite:
    def __init__(self, args):
        self.args = args
        self.report = common.Report()

    # --- the agent filter's log -------------------------------------------------------------------

    def check_filter_log(self):
        name = "filter-log: %d refusals leave agent-filter.log + .1 under 1 MiB; an allowed signature still works" \
            % self.args.flood
        tmp = tempfile.mkdtemp(prefix="hp-filter-")  # 0700, as the proxy requires
        children = []
        try:
            agent_sock, proxy_sock = os.path.join(tmp, "agent.sock"), os.path.join(tmp, "proxy.sock")
            log, rotated = os.path.join(tmp, "agent-filter.log"), os.path.join(tmp, "agent-filter.1.log")
            key = os.path.join(tmp, "key")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hp", "-f", key], check=True)
            agent = subprocess.Popen(["ssh-agent", "-D", "-a", agent_sock], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            children.append(agent)
            afb.wait_for_socket(agent_sock, agent, "ssh-agent")
            subprocess.run(["ssh-add", "-q", key], check=True, env=dict(os.environ, SSH_AUTH_SOCK=agent_sock),
                           stderr=subprocess.DEVNULL)
            with afb.connect(agent_sock) as s:
                blob = afb.identities(s)[0][0]
            env = dict(os.environ, MACHINE_AGENT_FILTER_LOG=log)
            with open(log, "ab") as out:  # as machine starts it: stdout and stderr to the log
                proxy = subprocess.Popen([self.args.machine, "agent-proxy", "--listen", proxy_sock, "--upstream",
                                          agent_sock, "--vm-dir", os.path.join(tmp, "no-vm"), "--allow",
                                          afb.fingerprint(blob)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         env=env)
            children.append(proxy)
            afb.wait_for_socket(proxy_sock, proxy, "machine agent-proxy")
            took = afb.flood(proxy_sock, self.args.flood)
            signed = True
            try:
                with afb.connect(proxy_sock) as s:
                    afb.sign(s, blob, b"after the flood")
            except (OSError, RuntimeError, EOFError) as e:
                signed = "%r" % e
            time.sleep(1.5)  # the last summary line is written within a second
            sizes = [os.path.getsize(p) if os.path.exists(p) else 0 for p in (log, rotated)]
            count, lines = afb.refusals_logged([rotated, log])
            self.report.figure("filter-log: %d refusals in %.1f s (%.0f/s): agent-filter.log %d B + .1 %d B, "
                               "%d refusals accounted for in %d lines"
                               % (self.args.flood, took, self.args.flood / took, sizes[0], sizes[1], count, lines))
            problems = []
            if sum(sizes) >= MIB:
                problems.append("the logs hold %d B (>= 1 MiB)" % sum(sizes))
            if signed is not True:
                problems.append("an allowed signature failed after the flood: %s" % signed)
            if proxy.poll() is not None:
                problems.append("the proxy exited (status %s)" % proxy.returncode)
            self.report.check(name, not problems, "; ".join(problems))
        finally:
            for child in reversed(children):
                common.stop_process(child)
            shutil.rmtree(tmp, ignore_errors=True)

    # --- ca_certs from a cloned repository ----------------------------------------------------------

    def check_ca_certs(self):
        tmp = common.make_tmp("hp-ca-")
        try:
            env = machine_env(tmp)
            home = env["HOME"]
            cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", key, "-out",
                                cert, "-subj", "/CN=hostile-test-ca", "-days", "2"], capture_output=True, text=True)
            if r.returncode != 0:
                self.report.check("ca-certs: openssl makes a test CA", False, r.stderr.strip()[-300:])
                return
            with open(cert) as f:
                cert_pem = f.read()
            with open(key) as f:
                key_pem = f.read()
            both = cert_pem + key_pem
            with open(os.path.join(home, "somefile.pem"), "w") as f:
                f.write(both)
            origin = os.path.join(tmp, "origin.git")
            subprocess.run(["git", "init", "-q", "--bare", origin], env=env, check=True)

            def repo(vm, ca_entry, files):
                """A clone-like checkout of `origin` with a .machine.toml naming `vm`; `files` maps a
                path inside it to its content (or ("symlink", target))."""
                d = os.path.join(tmp, "repo-" + vm)
                subprocess.run(["git", "init", "-q", d], env=env, check=True)
                subprocess.run(["git", "-C", d, "remote", "add", "origin", origin], env=env, check=True)
                with open(os.path.join(d, ".machine.toml"), "w") as f:
                    f.write('name = "%s"\nforward_agent = false\nca_certs = ["%s"]\n' % (vm, ca_entry))
                for path, content in files.items():
                    p = os.path.join(d, path)
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    if isinstance(content, tuple):
                        os.symlink(content[1], p)
                    else:
                        with open(p, "w") as f:
                            f.write(content)
                return d

            def up(vm, d):
                return run([self.args.machine, "up"], env, cwd=d, timeout=120)

            def template(vm):
                p = os.path.join(env["MACHINE_STATE_DIR"], vm, "lima.yaml")
                if not os.path.exists(p):
                    return None
                with open(p) as f:
                    return f.read()

            def refused(name, vm, r, needles):
                out = r.stdout + r.stderr
                problems = []
                if r.returncode in (0, "timeout"):
                    problems.append("exit status %s" % r.returncode)
                for n in needles:
                    if n not in out:
                        problems.append("the message does not name %r" % n)
                t = template(vm)
                if t and ("PRIVATE KEY" in t or key_pem.strip().splitlines()[1] in t):
                    problems.append("the private key reached the rendered template")
                if problems:
                    problems.append("output: %s" % short(out))
                self.report.check(name, not problems, "; ".join(problems))

            vm = "ca-home"
            r = up(vm, repo(vm, "~/somefile.pem", {}))
            refused("ca-certs: a repo's ca_certs = [\"~/somefile.pem\"] is refused", vm, r, ["~/somefile.pem"])

            vm = "ca-key"
            r = up(vm, repo(vm, "certs/x.pem", {"certs/x.pem": both}))
            refused("ca-certs: an in-repo certs/x.pem holding a PRIVATE KEY is an error naming the file", vm, r,
                    ["certs/x.pem", "private key"])

            vm = "ca-link"
            r = up(vm, repo(vm, "certs/link.pem", {"certs/link.pem": ("symlink", os.path.join(tmp, "c.pem"))}))
            refused("ca-certs: an in-repo symlink pointing out of the repo is refused", vm, r, ["certs/link.pem"])

            vm = "ca-clean"
            noise = "some text before the block\n"
            params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
            r = up(vm, repo(vm, "certs/ca.pem", {"certs/ca.pem": noise + cert_pem + params}))
            t = template(vm) or ""
            body = "".join(cert_pem.strip().splitlines()[1:-1])
            flat = t.replace("\\n", "").replace("\n", "").replace(" ", "")
            problems = []
            if r.returncode != 0:
                problems.append("exit status %s: %s" % (r.returncode, short(r.stdout + r.stderr)))
            if not t:
                problems.append("no rendered template in the state dir")
            elif body not in flat:
                problems.append("the certificate is not in the rendered template")
            for bad in ("EC PARAMETERS", "some text before", "PRIVATE KEY"):
                if bad in t:
                    problems.append("%r reached the rendered template" % bad)
            self.report.check("ca-certs: a clean in-repo cert is accepted; only its CERTIFICATE block is rendered",
                              not problems, "; ".join(problems))
            for vm in ("ca-home", "ca-key", "ca-link", "ca-clean"):
                subprocess.run([FAKE, "delete", "-f", vm], env=env, capture_output=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- watch over a huge Lima log -------------------------------------------------------------------

    def check_watch_log(self):
        name = "watch-log: watch over a %d MB ha.stdout.log stays under 32 MiB RSS" % self.args.size_mb
        tmp = tempfile.mkdtemp(prefix="hp-watch-")
        try:
            env, log = wlb.setup(tmp, self.args.size_mb)
            size = os.path.getsize(log)
            rss_kib, seen_after = wlb.measure(self.args.machine, env, log, 300)
            self.report.figure("watch-log: ha.stdout.log %.0f MB: peak RSS %.1f MiB, a new event shown after %.2f s"
                               % (size / 1e6, rss_kib / 1024, seen_after))
            self.report.check(name, rss_kib / 1024 < 32, "peak RSS %.1f MiB" % (rss_kib / 1024))
        except SystemExit as e:  # the bench exits on a watch that never shows the event
            self.report.check(name, False, str(e))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- the pin with Lima's ControlMaster already open ---------------------------------------------------

    def check_pin_master(self):
        if os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd") or not shutil.which("unshare"):
            self.report.note("SKIPPED: pin-master: needs root, unshare and /usr/sbin/sshd")
            return
        tmp = common.make_tmp("hp-pin-")
        world, sshd, master_cfg, vm = None, None, None, "pinned"
        env = None
        try:
            agent_dir = os.path.join(tmp, "g")
            os.makedirs(agent_dir)
            sshd = common.Sshd(os.path.join(tmp, "s"), agent_dir, relay=self.args.agent)
            world = common.World(tmp)
            world.env.update(MACHINE_AGENT="off")
            world.add_vm(vm, sshd)
            world.write_projects("[%s]\nforward_agent = false\n" % vm)
            # Lima's ssh.config: its own ControlMaster, no host key check.
            master_cfg = os.path.join(world.lima_home, vm, "ssh.config")
            control = os.path.join(world.lima_home, vm, "ssh.sock")
            with open(master_cfg, "w") as f:
                f.write("Host lima-%s\n  IdentityFile \"%s\"\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                        "  NoHostAuthenticationForLocalhost yes\n  PreferredAuthentications publickey\n  BatchMode yes\n"
                        "  IdentitiesOnly yes\n  User root\n  ControlMaster auto\n  ControlPath \"%s\"\n"
                        "  ControlPersist yes\n  Hostname 127.0.0.1\n  Port %d\n" % (vm, sshd.user_key, control, sshd.port))
            env = dict(world.env)
            r = run(["ssh", "-F", master_cfg, "-f", "-N", "lima-" + vm], env, timeout=30)
            check = run(["ssh", "-F", master_cfg, "-O", "check", "lima-" + vm], env, timeout=10)
            if r.returncode != 0 or check.returncode != 0:
                self.report.check("pin-master: Lima's ControlMaster opens", False, short(r.stderr + check.stderr))
                return
            # The VM's key changed since machine pinned it: the pin and the known_hosts line that
            # every verified connection writes (which OpenSSH checks) both hold the old key.
            old_key = os.path.join(tmp, "old_host_key")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "old", "-f", old_key], check=True)
            wrong = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", old_key + ".pub"], capture_output=True,
                                   text=True, check=True).stdout.split()[1]
            world.write_pin(vm, wrong)
            with open(old_key + ".pub") as f:
                kind, blob = f.read().split()[:2]
            with open(os.path.join(world.state_dir, vm, "known_hosts"), "w") as f:
                f.write("machine-%s %s %s\n" % (vm, kind, blob))
            for label, args in (("ssh", ["ssh", vm]), ("run", ["run", vm, "--", "true"]),
                                ("claude", ["claude", vm]), ("codex", ["codex", vm])):
                r = run([self.args.machine] + args, world.env, timeout=60)
                out = r.stdout + r.stderr
                problems = []
                if r.returncode in (0, "timeout"):
                    problems.append("exit status %s" % r.returncode)
                for what, needle in (("the VM", vm), ("the pinned fingerprint", wrong),
                                     ("the VM's fingerprint", sshd.fingerprint)):
                    if needle not in out:
                        problems.append("does not name %s" % what)
                if problems:
                    problems.append("output: %s" % short(out))
                self.report.check("pin-master: with a wrong pin and Lima's master open, machine %s refuses naming "
                                  "the VM and both fingerprints" % " ".join(args), not problems, "; ".join(problems))
        finally:
            if master_cfg and env:
                # ends the master this check opened (ssh -O exit talks to it through its socket)
                run(["ssh", "-F", master_cfg, "-O", "exit", "lima-" + vm], env, timeout=10)
            if sshd:
                sshd.stop()
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    def extra(ap):
        ap.add_argument("--size-mb", type=int, default=400, help="ha.stdout.log size for watch-log (default 400)")
        ap.add_argument("--flood", type=int, default=600000, help="refusals for filter-log (default 600000)")
    if os.geteuid() == 0 and shutil.which("unshare") and os.path.exists("/usr/sbin/sshd"):
        common.enter_namespace("host_paths")  # for pin-master's sshd; the other checks do not need it
    args = common.arguments(__doc__, extra)
    if not os.access(args.machine, os.X_OK):
        sys.exit("no machine binary at %s (--machine)" % args.machine)
    suite = Suite(args)
    checks = [(n, getattr(suite, n)) for n in sorted(dir(suite)) if n.startswith("check_")]
    if args.only:
        checks = [(n, f) for n, f in checks if any(o.replace("-", "_") in n for o in args.only)]
    t0 = time.monotonic()
    for n, fn in checks:  # one at a time: the floods and the 400 MB log take the machine's cores and disk
        common.run_parallel([(n, fn)], suite.report)
    suite.report.note("%d checks in %.1f s against %s" % (len(checks), time.monotonic() - t0, args.machine))
    sys.exit(suite.report.finish())


if __name__ == "__main__":
    main()
