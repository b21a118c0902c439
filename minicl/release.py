"""Which minicl runs here: its version, and a fingerprint of its code.

A verdict about a commit (it validates, its SLS files render for this host) holds only for the
code that reached it; the fingerprint changes with any change of minicl's Python files, schema
or state tree, also between two builds of one version.
"""

import hashlib
import os
from functools import lru_cache

from minicl import __version__
from minicl.saltext import loader_dirs, states_dir


def _code_files():
    package = os.path.dirname(os.path.abspath(__file__))
    roots = [package, states_dir()] + [folder for folders in loader_dirs().values() for folder in folders]
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".json", ".sls", ".jinja", ".j2")):
                    path = os.path.join(folder, name)
                    yield os.path.relpath(path, os.path.dirname(root)), path


@lru_cache(maxsize=1)
def fingerprint():
    """``<version>+<12 hex digits>`` over minicl's code, schema and SLS files."""
    digest = hashlib.sha256()
    for name, path in _code_files():
        digest.update(name.encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return f"{__version__}+{digest.hexdigest()[:12]}"
