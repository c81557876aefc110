"""The VM driver behind the contract, chosen by the entry point.

The contract (CLI, messages, instance store, list records, templates) is the same for both;
a driver does what needs a VM:
  qemu_driver.QemuDriver   tools/limactl: a host agent process running QEMU (real VMs)
  novm.NoVMDriver          tests/fixtures/fake-limactl: no VM, instant, with test knobs
"""

_current = []


def use(driver):
    _current[:] = [driver]


def get():
    if not _current:
        from .qemu_driver import QemuDriver
        use(QemuDriver())
    return _current[0]
