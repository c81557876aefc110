"""The VM driver behind the contract, chosen by the entry point.

The contract (CLI, messages, instance store, list records, templates) is the same for both;
a driver does what needs a VM:
  qemu_driver.QemuDriver   tools/limactl: a host agent process running QEMU (real VMs)
  novm.NoVMDriver          tests/fixtures/fake-limactl: no VM, instant, with test knobs

What a driver provides (both classes, same names):
  description, version(), lima_version_file(), commands()   extra commands (`hostagent`, `_seed`)
  info_extra()                          `limactl info` keys of the stand-in's own (machineEgress)
  load_yaml(path), inspect(inst)        lima.yaml parsed; status and PIDs (inst.set_status)
  created(dir), ensure_identity(), prepare_disk(inst)       create
  boot(inst, timeout, print_ready)      start, once the contract has said `Starting the instance`
  kill(inst), stopped(inst)             stop -f / delete; shut_down(inst), wait_stopped(inst): stop
  clone_into(inst, dir), deleted()      clone; after delete
  shell(inst, flags, cmd), copy(flags, [(inst or None, path)])
  fail_point(cmd, name), pause_point(cmd), malformed_list(recs)   the fake's knobs (no-ops for QEMU)
"""

_current = []


def use(driver):
    _current[:] = [driver]


def get():
    if not _current:
        from .qemu_driver import QemuDriver
        use(QemuDriver())
    return _current[0]
