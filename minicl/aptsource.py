"""A host's apt pointed at the cluster's repository: one snapshot, trusted through exactly the
config repo's packages.key.pub (``Signed-By``), pinned for the listed packages or for all.

    files = aptsource.render(url, snapshot, "listed", ["nginx"], public_key)   # {path: text}
    aptsource.apt_get(["update"], snapshot_url)      # only the minicl source, errors are errors

``APT_OPTIONS`` make apt read a private copy of the source (a given snapshot) and keep its lists
apart, so that a plan or a rehearsal never changes what the host's own apt knows.
"""

import json
import os
import subprocess
import tempfile
import urllib.request

from minicl import packages
from minicl.errors import MiniclError

KEYRING = "/etc/apt/keyrings/minicl.asc"
SOURCES = "/etc/apt/sources.list.d/minicl.sources"
PREFERENCES = "/etc/apt/preferences.d/minicl.pref"
PRIORITY = 990  # above every other source (500), below a forced downgrade (1000)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l", "LC_ALL": "C"}
# A repository that does not answer fails within a minute, not after apt's retries; a source
# whose signature does not check is an error, even when older lists are cached.
UPDATE_OPTIONS = ["-o", "Acquire::Retries=0", "-o", "Acquire::http::Timeout=20", "--error-on=any"]


class SourceError(MiniclError):
    """apt refused the repository or failed; the message has apt's own last lines."""


def snapshot_url(base_url, snapshot):
    return f"{base_url.rstrip('/')}/{snapshot}/"


def render_sources(url, snapshot):
    return (
        f"# Managed by minicl: the cluster's repository, snapshot {snapshot} (cluster.json packages).\n"
        "Types: deb\n"
        f"URIs: {snapshot_url(url, snapshot)}\n"
        f"Suites: {packages.DISTRIBUTION}\n"
        f"Components: {packages.COMPONENT}\n"
        f"Signed-By: {KEYRING}\n"
    )


def render_preferences(mode, listed):
    names = "*" if mode == "all" else " ".join(sorted(listed))
    return (
        "# Managed by minicl: packages from the cluster's repository win over other sources\n"
        f"# (cluster.json packages.use: {mode}).\n"
        f"Package: {names}\n"
        f"Pin: release o={packages.ORIGIN}\n"
        f"Pin-Priority: {PRIORITY}\n"
    )


def render(url, snapshot, mode, listed, public_key):
    """{path: text} of the files that point this host's apt at ``snapshot``."""
    return {
        KEYRING: public_key,
        SOURCES: render_sources(url, snapshot),
        PREFERENCES: render_preferences(mode, listed),
    }


def configured_snapshot(path=SOURCES):
    """The snapshot the host's minicl source names, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("URIs:"):
                    return line.split()[1].rstrip("/").rsplit("/", 1)[-1]
    except FileNotFoundError:
        pass
    return None


class PrivateApt:
    """apt with only the minicl source at a given snapshot, its lists and caches in a folder of
    its own: what a plan or a rehearsal reads, leaving the host's own apt state as it is."""

    def __init__(self, url, snapshot):
        self.dir = tempfile.mkdtemp(prefix="minicl-apt-", dir="/var/tmp")  # on disk: packages can be large
        os.makedirs(os.path.join(self.dir, "lists", "partial"))
        os.makedirs(os.path.join(self.dir, "cache", "archives", "partial"))
        with open(os.path.join(self.dir, "minicl.sources"), "w", encoding="utf-8") as f:
            f.write(render_sources(url, snapshot))
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.dir}/minicl.sources", "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={self.dir}/lists", "-o", f"Dir::Cache={self.dir}/cache",
            "-o", f"Dir::Cache::archives={self.dir}/cache/archives",
        ]  # fmt: skip

    def run(self, args, simulate=False):
        return apt_get(self.options + (["-s"] if simulate else []) + args)

    def close(self):
        subprocess.run(["rm", "-rf", self.dir], check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def apt_get(args):
    """``apt-get -q ARGS`` (``update`` gets UPDATE_OPTIONS); returns stdout or raises SourceError."""
    if "update" in args:
        args = [*args, *UPDATE_OPTIONS]
    result = subprocess.run(
        ["apt-get", "-q", *args], capture_output=True, text=True, env={**os.environ, **APT_ENV}, check=False
    )
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "Err:"))] or lines[-4:]
        raise SourceError(" | ".join(errors) or f"apt-get exited {result.returncode}")
    return result.stdout


def update_minicl_source():
    """``apt-get update`` of the minicl source only (other sources' lists stay as they are)."""
    return apt_get(
        ["-o", f"Dir::Etc::SourceList={SOURCES}", "-o", "Dir::Etc::SourceParts=-", "-o",
         "APT::Get::List-Cleanup=0", "update"]
    )  # fmt: skip


def published(base_url, timeout=10):
    """The snapshots the repository publishes, oldest first (its snapshots.json)."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/{packages.INDEX}", timeout=timeout) as answer:
            return json.loads(answer.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {base_url}{packages.INDEX}: {exc}") from exc


def allowed_snapshot(view):
    """The snapshot ``view`` (minicl:packages) allows now, from what the repository publishes."""
    return target_snapshot(view, published(view["url"]))


def target_snapshot(view, snapshots):
    """The snapshot ``view`` (minicl:packages) allows: the one cluster.json holds the cluster
    at, else the newest published."""
    names = [entry["name"] for entry in snapshots]
    if view.get("snapshot"):
        if view["snapshot"] not in names:
            raise SourceError(
                f"packages.snapshot {view['snapshot']} is not published by the repository "
                f"(it has: {', '.join(names[-5:]) or 'none yet'})"
            )
        return view["snapshot"]
    return names[-1] if names else None
