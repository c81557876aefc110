"""The limactl contract (see tools/README.md), shared by tools/limactl and tests/fixtures/fake-limactl."""
import sys

# Both entry points run `/usr/bin/python3 -SE`: no site-packages, no PYTHON* variables, so nothing
# from the user's or a pyenv's environment leaks in. The one package needed beyond the standard
# library is Debian's python3-yaml: add Debian's dist-packages, and only that, after the stdlib.
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
if DEBIAN_DIST_PACKAGES not in sys.path:
    sys.path.append(DEBIAN_DIST_PACKAGES)
