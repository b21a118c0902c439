"""minicl's releases on a host: venvs side by side, and which one is current.

    /opt/minicl/releases/<name>/        a venv with Salt and minicl; <name> is minicl's commit
        minicl-release.json             (12 hex digits), or install-<time> for an install from a
                                        folder that is no clean git clone; the record is written
                                        last: a folder without it is an unfinished build
    /opt/minicl/current -> releases/<name>   replaced with one rename(2)
    /opt/minicl/bin -> current/bin      what people and minicl-minion.service run

A program started through ``current/bin`` runs the release ``current`` named at that moment: the
scripts' ``#!`` line names their own release's python, so switching ``current`` never changes the
code of a running process (a Salt minion loads modules lazily, for its whole life).

    root = releases.root()                    # None when minicl does not run from a release
    name = releases.build(root, commit, source_dir, wheelhouse=None)
    releases.switch(root, name)
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

from minicl.diskspace import mb
from minicl.errors import MiniclError
from minicl.files import read_json, write_file

DEFAULT_ROOT = "/opt/minicl"
RECORD = "minicl-release.json"
ROOM_NEEDED = 400 * 2**20  # a release venv with Salt is about 150 MB; pip needs room to unpack
BUILD_TIMEOUT = 1800
SYSTEM_PYTHON = "/usr/bin/python3"


class ReleaseError(MiniclError):
    pass


def name_of(commit):
    return commit[:12]


def root(prefix=None):
    """The folder holding ``releases/`` and ``current`` when this process runs from a release
    (sys.prefix is ``<root>/releases/<name>``); None otherwise (a development venv, say)."""
    prefix = prefix or sys.prefix
    parent = os.path.dirname(prefix)
    if os.path.basename(parent) == "releases" and os.path.isfile(os.path.join(prefix, RECORD)):
        return os.path.dirname(parent)
    return None


def running(prefix=None):
    """The record of the release this process runs ({} outside the release layout)."""
    prefix = prefix or sys.prefix
    return read_json(os.path.join(prefix, RECORD)) if root(prefix) else {}


def path(root_dir, name):
    return os.path.join(root_dir, "releases", name)


def current(root_dir):
    """The name of the current release, or None."""
    try:
        return os.path.basename(os.readlink(os.path.join(root_dir, "current")))
    except OSError:
        return None


def record(root_dir, name):
    """The release's record ({} if it is not a finished build)."""
    return read_json(os.path.join(path(root_dir, name), RECORD))


def program(name, prefix=None):
    """A program of minicl's venv to name in files that outlive this process (the minion's unit):
    ``<root>/current/bin/<name>`` in the release layout, else this venv's own."""
    base = root(prefix)
    folder = os.path.join(base, "current", "bin") if base else os.path.dirname(sys.executable)
    return os.path.join(folder, name)


def share_dir(prefix=None):
    """``<root>/current/share/minicl`` in the release layout (the minion config's file_roots
    then follow ``current``), else None."""
    base = root(prefix)
    return os.path.join(base, "current", "share", "minicl") if base else None


def build(root_dir, commit, source_dir, wheelhouse=None, python=SYSTEM_PYTHON, run=subprocess.run):
    """Build minicl's ``source_dir`` (its commit ``commit``) into a release; returns its name.

    A finished release of that commit is kept as it is; an unfinished one (a build that was
    killed) is removed first. Python packages come from the package index, or only from
    ``wheelhouse`` (a folder or URL pip's --find-links takes) when given. A failed build leaves
    no release folder behind."""
    name = name_of(commit)
    target = path(root_dir, name)
    if record(root_dir, name):
        return name
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    free = shutil.disk_usage(os.path.dirname(target)).free
    if free < ROOM_NEEDED:
        raise ReleaseError(
            f"not enough disk space to build minicl {name} in {os.path.dirname(target)}: a release "
            f"needs about {mb(ROOM_NEEDED)}, {mb(free)} are free there"
        )
    try:
        _step(run, [python, "-m", "venv", target], "creating the venv")
        _step(
            run,
            [
                f"{target}/bin/pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *pip_source(wheelhouse),
                source_dir,
            ],
            "installing Salt and minicl" + (f" from the wheelhouse {wheelhouse}" if wheelhouse else ""),
            env=pip_environment(wheelhouse),
        )
        write_file(
            os.path.join(target, RECORD),
            json.dumps({"commit": commit, "built_at": int(time.time())}, indent=1) + "\n",
        )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return name


def pip_source(wheelhouse):
    """pip's options to take packages only from ``wheelhouse`` (none: the package index). pip
    ignores a plain-http location unless its host is trusted: naming it in cluster.json is that."""
    if not wheelhouse:
        return []
    options = ["--no-index", "--find-links", wheelhouse]
    parsed = urllib.parse.urlsplit(wheelhouse)
    if parsed.scheme == "http":
        options += ["--trusted-host", parsed.hostname]
    return options


def pip_environment(wheelhouse):
    """With a wheelhouse, the host's pip configuration (an index, constraints) is left out: the
    release is built from the wheelhouse alone."""
    return dict(os.environ, PIP_CONFIG_FILE=os.devnull) if wheelhouse else None


def _step(run, cmd, what, env=None):
    result = run(cmd, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT, env=env)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout or "").strip().splitlines()[-6:]
        raise ReleaseError(f"building the release failed while {what}: " + " / ".join(lines))


def switch(root_dir, name):
    """Make ``name`` the current release (one rename), and ``bin`` follow ``current``."""
    if not record(root_dir, name):
        raise ReleaseError(f"{path(root_dir, name)} is no finished minicl release")
    link = os.path.join(root_dir, "current")
    new = f"{link}.new"
    if os.path.lexists(new):
        os.unlink(new)
    os.symlink(os.path.join("releases", name), new)
    os.replace(new, link)
    bin_link = os.path.join(root_dir, "bin")
    if not os.path.lexists(bin_link):
        os.symlink(os.path.join("current", "bin"), f"{bin_link}.new")
        os.replace(f"{bin_link}.new", bin_link)


def prune(root_dir, keep):
    """Remove every release but those named in ``keep`` (and unfinished builds of others)."""
    folder = os.path.join(root_dir, "releases")
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name not in keep:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed.append(name)
    return removed
