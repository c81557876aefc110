"""Node as the node profile gives it (issue 16): corepack, a repo's `packageManager` (yarn 4 here)
honoured with its version, and TypeScript with its language server (used by tests/smoke/run).

The yarn 4 project is written into the VM and installed as the VM user in a login shell (the
profile's COREPACK_* settings): corepack downloads yarn 4 from the npm registry, yarn 4 installs
one small dependency. Removed afterwards."""
import json
import secrets

from docker_checks import sh, write_files_script

YARN_VERSION = "4.9.4"
# A small package without dependencies, from the registry yarn uses.
DEPENDENCY = ("is-number", "7.0.0")


def check_corepack(tap, args, env, guest):
    rc, out, err = sh(guest, "corepack --version")
    tap.result(rc == 0 and out.strip() != "", "node: corepack --version: %s" % out.strip(),
               "rc=%d out=%r err=%r" % (rc, out, err[-2000:]))
    rc, out, err = sh(guest, 'printf "%s\\n" "$COREPACK_ENABLE_DOWNLOAD_PROMPT"')
    tap.result(rc == 0 and out.strip() == "0", "node: login shells have COREPACK_ENABLE_DOWNLOAD_PROMPT=0",
               "rc=%d out=%r err=%r" % (rc, out, err))

    d = "$HOME/.machine-smoke-yarn4-" + secrets.token_hex(4)
    package = {"name": "machine-smoke-yarn4", "private": True, "packageManager": "yarn@" + YARN_VERSION,
               "dependencies": {DEPENDENCY[0]: DEPENDENCY[1]}}
    rc, out, err = sh(guest, write_files_script(d, {"package.json": json.dumps(package, indent=2) + "\n"}))
    if tap.result(rc == 0, "node: a yarn %s project written into the VM" % YARN_VERSION, "rc=%d err=%r" % (rc, err)):
        try:
            # `yarn` is corepack's shim: in this directory it must run the version package.json
            # names; `yarn node` resolves through yarn 4's Plug'n'Play (no node_modules)
            rc, out, err = sh(guest, "cd %s && yarn install 2>&1 && yarn --version && "
                              "yarn node -p \"require('%s/package.json').version\"" % (d, DEPENDENCY[0]), timeout=900)
            lines = out.strip().splitlines()
            tap.result(rc == 0 and lines[-2:] == [YARN_VERSION, DEPENDENCY[1]],
                       "node: a repo with packageManager yarn@%s installs with yarn %s (%s@%s resolvable)"
                       % (YARN_VERSION, YARN_VERSION, DEPENDENCY[0], DEPENDENCY[1]),
                       "rc=%d out=%r err=%r" % (rc, out[-3000:], err[-2000:]))
        finally:
            sh(guest, "rm -rf %s" % d)
    for tool in ("tsc", "typescript-language-server"):
        rc, out, err = sh(guest, "%s --version" % tool, timeout=180)
        first = out.strip().splitlines()[0] if out.strip() else ""
        tap.result(rc == 0 and first != "", "node: %s --version: %s" % (tool, first),
                   "rc=%d out=%r err=%r" % (rc, out, err[-2000:]))
