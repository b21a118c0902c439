"""Where Salt finds minicl's loader modules and the base role's state tree.

Declared in setup.cfg as the ``salt.loader`` entry point, so ``salt-call`` in the same Python
environment loads the pillar, grains, execution and state modules without copying anything.
"""

import os
import sys
import sysconfig

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER_FOLDERS = {
    "modules": "_modules",
    "states": "_states",
    "pillar": "_pillar",
    "grains": "_grains",
    "returners": "_returners",
}


def _share_roots():
    # A source checkout (tests, editable install) first, then an installed share/minicl.
    yield SOURCE_ROOT
    for prefix in (sys.prefix, sysconfig.get_path("data")):
        yield os.path.join(prefix, "share", "minicl")


def _find(folder):
    for root in _share_roots():
        path = os.path.join(root, folder)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f"minicl's {folder}/ folder is not installed (looked under {sys.prefix}/share/minicl)"
    )


def loader_dirs():
    found = {}
    for kind, folder in LOADER_FOLDERS.items():
        try:
            found[kind] = [_find(folder)]
        except FileNotFoundError:
            pass  # a loader type minicl has no modules of (yet)
    return found


def states_dir():
    """minicl's own state tree: top.sls and the minicl.* SLS files."""
    return _find("states")
