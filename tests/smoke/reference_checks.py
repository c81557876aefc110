"""What the reference tool's own smoke suite checks in its VM (its tests/smoke-*.sh, listed in
shared/guides/reference-tool.md §8.1), each written as a check of ours and named after the
script it answers: `reference boot: ...`, `reference docker: ...`. Each check runs as the VM
user, in a login shell where the reference ran one, and can fail: a missing tool, a daemon that
does not answer, an unsigned commit or a tmux session that dies with its connection.

Where ours differs on purpose, the check says so: no Docker Hub here (the container is built in
the VM from its own static busybox instead of pulling hello-world), and Node is the pinned 22+
rather than "20, 22 or 24". Checked elsewhere: the Claude sandbox and permission mode
(agent_mode_checks), the port forward (net_checks.check_host_reaches_forwarded_port).
"""
import json
import os
import re
import secrets
import shutil
import subprocess

# /proc/mounts types through which a host directory can appear in a guest (FUSE's control fs,
# fusectl, is not one).
HOST_SHARE_FSTYPES = ("9p", "virtiofs", "fuse", "sshfs", "nfs", "nfs4", "cifs", "smb3", "smbfs",
                      "vboxsf", "fakeowner")


def is_host_share(fstype):
    return fstype in HOST_SHARE_FSTYPES or fstype.startswith("fuse.")


def login_shell(guest, script, timeout=300):
    return guest.run("bash", "-lc", script, timeout=timeout)


def detail(rc, out, err):
    return "rc=%d out=%r err=%r" % (rc, out[-2000:], err[-2000:])


def check_boot(tap, args, env, guest):
    """smoke-boot.sh: Lima says Running, `limactl shell` works, the forwarded agent lists a key,
    no host directory is mounted."""
    limactl = os.environ.get("MACHINE_LIMACTL") or shutil.which("limactl")
    listed = subprocess.run([limactl, "list", "--json", args.name], env=env, capture_output=True, text=True)
    status = ""
    for line in listed.stdout.splitlines():
        try:
            status = json.loads(line).get("status", "")
        except ValueError:
            pass
    tap.result(listed.returncode == 0 and status == "Running", "reference boot: limactl list says Running",
               "status %r: %s" % (status, (listed.stdout + listed.stderr)[-1000:]))
    shell = subprocess.run([limactl, "shell", args.name, "--", "true"], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=120)
    tap.result(shell.returncode == 0, "reference boot: limactl shell NAME -- true", shell.stdout + shell.stderr)
    rc, out, err = guest.run("ssh-add", "-l")
    keys = [l for l in out.splitlines() if re.match(r"^(256|384|521|2048|3072|4096) ", l)]
    tap.result(rc == 0 and keys, "reference boot: ssh-add -l in the VM lists the host agent's key",
               detail(rc, out, err))
    rc, out, err = guest.run("cat", "/proc/mounts")
    shares = [l for l in out.splitlines() if len(l.split()) > 2 and is_host_share(l.split()[2])]
    tap.result(rc == 0 and not shares, "reference boot: no host directory mounted",
               "\n".join(shares) or detail(rc, out, err))


def check_docker(tap, guest):
    """smoke-docker.sh: the daemon answers `docker version`, and a container runs."""
    rc, out, err = login_shell(guest, "docker version --format '{{.Client.Version}} {{.Server.Version}}'")
    versions = out.split()
    tap.result(rc == 0 and len(versions) == 2, "reference docker: docker version answers, client and daemon (%s)"
               % out.strip(), detail(rc, out, err))
    # hello-world needs Docker Hub, which this network does not reach: an image built here from
    # the VM's static busybox stands in for it.
    rc, out, err = login_shell(
        guest, "set -e; d=$(mktemp -d); cp /bin/busybox \"$d/busybox\"; "
               "printf 'FROM scratch\\nCOPY busybox /bin/busybox\\n"
               "CMD [\"/bin/busybox\", \"echo\", \"Hello from Docker!\"]\\n' > \"$d/Dockerfile\"; "
               "docker build -q -t machine-smoke-hello \"$d\" >/dev/null; docker run --rm machine-smoke-hello; "
               "docker rmi -f machine-smoke-hello >/dev/null; rm -rf \"$d\"", timeout=600)
    tap.result(rc == 0 and "Hello from Docker!" in out, "reference docker: docker run --rm prints Hello from Docker!",
               detail(rc, out, err))


def check_node(tap, guest):
    """smoke-node.sh: node, corepack, pnpm through corepack, yarn on PATH, and corepack's
    download prompt off in a login shell."""
    rc, out, err = login_shell(guest, "node --version")
    major = out.strip().lstrip("v").split(".")[0]
    tap.result(rc == 0 and major.isdigit() and int(major) >= 22, "reference node: node %s (22 or newer)"
               % out.strip(), detail(rc, out, err))
    for script, what in (("npm --version", "npm --version"), ("corepack --version", "corepack --version"),
                         ("corepack pnpm --version", "corepack pnpm --version"),
                         ("command -v yarn && yarn --version", "yarn on PATH and runs")):
        rc, out, err = login_shell(guest, script, timeout=180)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        tap.result(rc == 0 and last != "", "reference node: %s (%s)" % (what, last), detail(rc, out, err))
    rc, out, err = login_shell(guest, "printf '%s' \"${COREPACK_ENABLE_DOWNLOAD_PROMPT-unset}\"")
    tap.result(rc == 0 and out == "0", "reference node: COREPACK_ENABLE_DOWNLOAD_PROMPT=0 in a login shell",
               detail(rc, out, err))


def check_agents(tap, guest):
    """smoke-agents.sh: claude and codex are on PATH and run."""
    for tool in ("claude", "codex"):
        rc, out, err = login_shell(guest, "command -v %s && %s --version" % (tool, tool), timeout=180)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        tap.result(rc == 0 and last != "", "reference agents: %s --version (%s)" % (tool, last), detail(rc, out, err))


def check_clis(tap, guest):
    """smoke-clis.sh, the tools the default profiles promise: gh and ripgrep."""
    for script, name in (("gh --version", "gh"), ("rg --version", "ripgrep")):
        rc, out, err = login_shell(guest, script)
        first = out.strip().splitlines()[0] if out.strip() else ""
        tap.result(rc == 0 and first != "", "reference clis: %s (%s)" % (name, first), detail(rc, out, err))


def check_git_sign(tap, guest):
    """smoke-git-sign.sh: a commit made in the VM shows a good signature (through the forwarded
    agent: the private key never enters the VM)."""
    rc, out, err = login_shell(guest, "set -e; d=$(mktemp -d); cd \"$d\"; git init -q; "
                                      "git commit -q --allow-empty -m smoke; git log --show-signature -1; "
                                      "cd /; rm -rf \"$d\"")
    tap.result(rc == 0 and 'Good "git" signature' in out, "reference git-sign: git log --show-signature says Good",
               detail(rc, out, err))


def check_tmux(tap, guest):
    """smoke-tmux.sh: a detached session survives the SSH connection that made it, exactly one
    of that name exists, and killing it removes it. Each step is its own `machine run` (its own
    SSH connection)."""
    name = "machine-smoke-tmux-" + secrets.token_hex(3)
    rc, out, err = guest.run("tmux", "new-session", "-d", "-s", name, "sleep", "300")
    made = rc == 0
    try:
        rc, out, err = guest.run("tmux", "list-sessions", "-F", "#{session_name}")
        count = out.splitlines().count(name)
        tap.result(made and rc == 0 and count == 1,
                   "reference tmux: a detached session outlives the connection that made it (1 of that name)",
                   detail(rc, out, err))
    finally:
        kill = guest.run("tmux", "kill-session", "-t", "=" + name)
    rc, out, err = guest.run("tmux", "list-sessions", "-F", "#{session_name}")
    tap.result(kill[0] == 0 and name not in out.splitlines(), "reference tmux: kill-session removes it",
               detail(*kill) + " then " + detail(rc, out, err))


def check_reference_suite(tap, args, env, guest):
    check_boot(tap, args, env, guest)
    check_docker(tap, guest)
    check_node(tap, guest)
    check_agents(tap, guest)
    check_clis(tap, guest)
    check_git_sign(tap, guest)
    check_tmux(tap, guest)
