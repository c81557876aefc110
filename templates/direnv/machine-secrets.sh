# machine: secrets for direnv (guest-agent/PROTOCOL.md §8).
#
# The host renders a project's secrets into the VM with `machine secrets <project>`: the guest
# agent writes them, set by set, to /run/machine-secrets/<set>.env, a tmpfs that only the VM
# user can read and that is gone when the VM stops. This function, installed by a profile step
# as ~/.config/direnv/lib/machine-secrets.sh, loads one set into a directory's environment:
#
#     # .envrc
#     use op_env web
#
# direnv reloads when the set is rendered again or cleared (watch_file). A set that is not
# rendered is an error (status 1) that says what to run on the host; none of its variables is set.
use_op_env() {
  local id=${1:-}
  local dir=${MACHINE_SECRETS_DIR:-/run/machine-secrets}
  if [[ ! $id =~ ^[a-z0-9][a-z0-9_-]{0,63}$ ]]; then
    log_error "op_env: '$id' is not a secret set name (1-64 of a-z 0-9 _ -, starting with a letter or digit)"
    return 1
  fi
  local file=$dir/$id.env
  # Watched even while missing: rendering it later reloads the directory.
  watch_file "$file"
  if [[ ! -r $file ]]; then
    local host=${HOSTNAME:-$(cat /proc/sys/kernel/hostname 2>/dev/null)}
    log_error "op_env: secrets for $id are not rendered in this VM; run 'machine secrets ${host#lima-}' on the host"
    return 1
  fi
  # shellcheck disable=SC1090  # written by machine-agent: `export NAME='value'` lines only
  source "$file"
}
