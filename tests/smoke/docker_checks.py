"""Docker in the VM as Debian 13 gives it (issue 16): the compose v2 plugin and buildx, used by
the VM user; and the secrets tmpfs mounted `noswap` (used by tests/smoke/run).

No registry but Debian's and npm's is reachable from here, so every image is built in the VM
FROM scratch with the VM's static busybox copied in: the compose file's `web` service is built
from a local Dockerfile, its `peer` service runs that same image (pull_policy: never), and `web`
fetches a file that only `peer` serves, by the service name. Everything is removed afterwards
(containers, network, images, build cache of the project)."""
import secrets
import time

# Written into a fresh directory in the VM; {marker} is a random value that only `peer` serves.
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY marker /www/marker
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""

COMPOSE = """name: {project}
services:
  web:
    build: .
    image: {image}
  peer:
    image: {image}
    pull_policy: never
"""

SECRETS_DIR = "/run/machine-secrets"


def sh(guest, script, timeout=300):
    """A login shell as the VM user (the docker group, the profile's environment)."""
    return guest.run("bash", "-lc", script, timeout=timeout)


def write_files_script(d, files):
    """A shell script that creates directory `d` and writes `files` ({name: text}) into it; the
    texts go through quoted here-documents (no expansion)."""
    lines = ["set -e", "mkdir -p %s" % d]
    for name, text in files.items():
        tag = "EOF_" + secrets.token_hex(4)
        lines.append("cat > %s/%s <<'%s'\n%s%s" % (d, name, tag, text, tag))
    return "\n".join(lines) + "\n"


def check_docker(tap, args, env, guest):
    rc, out, err = sh(guest, "docker compose version --short && docker buildx version")
    tap.result(rc == 0 and out.strip() != "", "docker: compose v2 and buildx are installed (%s)"
               % " / ".join(line.strip() for line in out.strip().splitlines()),
               "rc=%d out=%r err=%r" % (rc, out, err[-2000:]))

    tag = secrets.token_hex(4)
    project = "machine-smoke-" + tag
    image = "machine-smoke-compose:" + tag
    marker = "compose-peer-" + secrets.token_hex(8)
    d = "$HOME/.machine-smoke-compose-" + tag
    files = {"Dockerfile": DOCKERFILE, "marker": marker + "\n",
             "compose.yaml": COMPOSE.format(project=project, image=image)}
    rc, out, err = sh(guest, write_files_script(d, files) + "cp /bin/busybox %s/busybox\n" % d)
    if not tap.result(rc == 0, "docker: a compose project written into the VM", "rc=%d err=%r" % (rc, err[-2000:])):
        return
    try:
        t0 = time.monotonic()
        rc, out, err = sh(guest, "cd %s && docker compose up -d --quiet-pull 2>&1" % d, timeout=900)
        seconds = time.monotonic() - t0
        tap.result(rc == 0, "docker: `docker compose up -d` of two services, one built from a local Dockerfile "
                   "(%.1fs)" % seconds, "rc=%d out=%r err=%r" % (rc, out[-3000:], err[-2000:]))
        if rc == 0:
            tap.note("FIGURE docker_compose_up_seconds=%.1f" % seconds)
        # The containers' veths belong to the project's bridge, not to the VM's network
        # configuration: a networkd match that took them in gave each the VM's address and a
        # default route, and pulled it out of the bridge (peer was unreachable).
        rc, out, err = sh(guest, "ip -o route show default; ip -o link show master br-$(docker network inspect "
                          "-f '{{.Id}}' %s_default | cut -c1-12) | wc -l" % project)
        lines = out.strip().splitlines()
        defaults = [line for line in lines[:-1] if line.startswith("default")]
        tap.result(rc == 0 and len(defaults) == 1 and lines[-1:] == ["2"],
                   "docker: the two containers' veths are in the project's bridge, and the VM keeps one default route",
                   "rc=%d out=%r err=%r" % (rc, out[-2000:], err[-2000:]))
        # `web` reaches `peer` by its service name (the project network's DNS); a few tries,
        # since peer's httpd may still be starting.
        probe = ("cd %s && for i in $(seq 30); do "
                 "docker compose exec -T web /bin/busybox wget -q -T 5 -O - http://peer:8080/marker && exit 0; "
                 "sleep 1; done; exit 1" % d)
        rc, out, err = sh(guest, probe, timeout=300)
        tap.result(rc == 0 and marker in out, "docker: `web` fetches a file from `peer` by its service name",
                   "rc=%d out=%r err=%r" % (rc, out[-2000:], err[-2000:]))
        rc, out, err = sh(guest, "cd %s && docker compose ps --format '{{.Service}} {{.State}}'" % d)
        running = sorted(line.split()[0] for line in out.splitlines() if line.strip().endswith("running"))
        tap.result(rc == 0 and running == ["peer", "web"], "docker: both compose services are running (%s)"
                   % ", ".join(running), "rc=%d out=%r err=%r" % (rc, out, err[-2000:]))
        # buildx: a build of its own (a different tag), loaded into the engine and run.
        rc, out, err = sh(guest, "cd %s && docker buildx build --load -q -t machine-smoke-buildx:%s . >/dev/null && "
                          "docker run --rm machine-smoke-buildx:%s /bin/busybox cat /www/marker" % (d, tag, tag),
                          timeout=900)
        tap.result(rc == 0 and marker in out, "docker: `docker buildx build` builds an image that runs",
                   "rc=%d out=%r err=%r" % (rc, out[-2000:], err[-2000:]))
    finally:
        rc, out, err = sh(guest, "cd %s && docker compose down --rmi all --volumes --timeout 5 2>&1; "
                          "docker image rm -f machine-smoke-buildx:%s >/dev/null 2>&1; "
                          "cd && rm -rf %s; docker ps -a --filter label=com.docker.compose.project=%s -q | wc -l"
                          % (d, tag, d, project), timeout=300)
        tap.result(rc == 0 and out.strip().splitlines()[-1:] == ["0"], "docker: the compose project is gone afterwards",
                   "rc=%d out=%r err=%r" % (rc, out[-2000:], err[-2000:]))


def check_secrets_noswap(tap, guest):
    """The secrets tmpfs carries noswap: run after the secrets checks, whose renders make the
    guest agent mount it."""
    rc, out, err = guest.run("findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--mountpoint", SECRETS_DIR)
    fields = out.split()
    ok = rc == 0 and len(fields) == 2 and fields[0] == "tmpfs" and "noswap" in fields[1].split(",")
    tap.result(ok, "secrets: the tmpfs at %s is mounted noswap (%s)" % (SECRETS_DIR, out.strip() or "not mounted"),
               "rc=%d out=%r err=%r" % (rc, out, err))
