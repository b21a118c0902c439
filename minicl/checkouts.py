"""The checkout store of the config repo, in the cache dir::

    checkouts/<sha>/     exact trees of good commits, written from git's objects (newest few kept)
    live -> checkouts/<sha>   what the pillar and the state tree read; replaced with rename(2)
    verdicts.json        per kept commit: the minicl code that validated it, and whether this
                         host's highstate renders from it (so neither is redone every run)

A commit's files are written once (``export``: the free space is checked first, and a failure
leaves no partial folder), ``live`` is switched atomically, and old checkouts are pruned.
``write_tree`` (the no-partial-folder writer) also writes the pinned minicl's files.
"""

import errno
import json
import logging
import os
import shutil
import stat
import time

from minicl.diskspace import NoRoom, describe, mb
from minicl.errors import MiniclError
from minicl.files import read_json, write_file

log = logging.getLogger(__name__)

KEEP_CHECKOUTS = 3
RESERVE_BYTES = 32 * 2**20  # left free on the cache's filesystem after writing a commit's files


class UnsafeTree(MiniclError):
    """The commit's tree holds something that must not be written out (path or link escape)."""


class Checkouts:
    """The checkouts under ``checkouts_dir``, the ``live_path`` link to one of them and the
    verdicts about them in ``verdicts_path``, all in ``cache_dir``. Writing is done under the
    update lock."""

    def __init__(self, cache_dir, checkouts_dir, live_path, verdicts_path):
        self.cache_dir = cache_dir
        self.checkouts_dir = checkouts_dir
        self.live_path = live_path
        self.verdicts_path = verdicts_path

    def live_commit(self):
        """The sha of the live checkout, or None."""
        try:
            return os.path.basename(os.readlink(self.live_path))
        except OSError:
            return None

    def path(self, commit):
        """The folder of ``commit``'s checkout (a sha)."""
        return os.path.join(self.checkouts_dir, commit)

    # -- verdicts ----------------------------------------------------------------------

    def verdicts(self):
        return read_json(self.verdicts_path)

    def record_verdict(self, commit, **verdict):
        verdicts = self.verdicts()
        verdicts.setdefault(commit, {}).update(verdict)
        kept = set(os.listdir(self.checkouts_dir)) if os.path.isdir(self.checkouts_dir) else set()
        verdicts = {sha: v for sha, v in verdicts.items() if sha in kept}
        try:
            write_file(self.verdicts_path, json.dumps(verdicts, indent=1, sort_keys=True), 0o600)
        except OSError as exc:  # only a cache: the next run redoes the work
            log.warning("minicl: could not write %s: %s", self.verdicts_path, describe(exc))

    # -- writing -----------------------------------------------------------------------

    def export(self, commit):
        """Write the commit's tree to checkouts/<sha> (once) and return that path. Checks the
        free space first; a failure leaves no partial folder behind."""
        os.makedirs(self.checkouts_dir, mode=0o700, exist_ok=True)
        target = os.path.join(self.checkouts_dir, commit.hexsha)
        if not os.path.isdir(target):
            self._check_room(commit)
            write_tree(commit.tree, target, 0o700)
        os.utime(target)  # newest first when pruning, even for a commit that comes back
        return target

    def _check_room(self, commit):
        size = sum(item.size for item in commit.tree.traverse() if item.type == "blob")
        free = shutil.disk_usage(self.checkouts_dir).free
        if size + RESERVE_BYTES > free:
            raise NoRoom(
                errno.ENOSPC,
                f"not enough disk space to write commit {commit.hexsha[:12]} to {self.checkouts_dir}: "
                f"its files need {mb(size)} and {mb(RESERVE_BYTES)} are kept free, but only "
                f"{mb(free)} are free there. The last good commit keeps running; free some space "
                f"on that filesystem (df -h {self.cache_dir}) and the next run applies it",
            )

    def remove_staging(self):
        """Leftovers of an export or switch that was killed (this process holds the update lock)."""
        if os.path.lexists(self.live_path + ".new"):
            os.unlink(self.live_path + ".new")
        if os.path.isdir(self.checkouts_dir):
            for name in os.listdir(self.checkouts_dir):
                if name.endswith(".tmp"):
                    shutil.rmtree(os.path.join(self.checkouts_dir, name), ignore_errors=True)

    def switch_live(self, target):
        """Point ``live`` at the checkout ``target`` (one rename), then prune the old ones."""
        if os.path.isdir(self.live_path) and not os.path.islink(self.live_path):
            # Salt creates missing file_roots folders: before the first good commit, "live"
            # may be an empty folder. Anything else found there is kept aside, not deleted.
            try:
                os.rmdir(self.live_path)
            except OSError:
                os.rename(self.live_path, f"{self.live_path}.found-{int(time.time())}")
        new_link = self.live_path + ".new"
        if os.path.lexists(new_link):
            os.unlink(new_link)
        os.symlink(os.path.relpath(target, self.cache_dir), new_link)
        os.replace(new_link, self.live_path)
        self._prune(keep=os.path.basename(target))

    def _prune(self, keep):
        entries = [
            os.path.join(self.checkouts_dir, name) for name in os.listdir(self.checkouts_dir) if name != keep
        ]
        entries.sort(key=os.path.getmtime, reverse=True)
        for path in entries[KEEP_CHECKOUTS - 1 :]:
            shutil.rmtree(path, ignore_errors=True)


def write_tree(tree, target, mode):
    """Write a git tree's files to the new folder ``target`` (made with ``mode``), through
    ``target + ".tmp"`` and one rename: a failure leaves no partial folder behind."""
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.mkdir(staging, mode)
        export_tree(tree, staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_tree(tree, root):
    """Write a git tree's files under ``root`` exactly as committed (no filters, no attributes).

    Raises UnsafeTree for a path that is not a plain relative path or a symlink that points
    outside the tree; submodules are left out.
    """
    for item in tree.traverse():
        parts = item.path.split("/")
        if any(part in ("", ".", "..", ".git") for part in parts):
            raise UnsafeTree(f"{item.path!r}: not a plain path inside the repo")
        path = os.path.join(root, *parts)
        if item.type == "tree":
            os.mkdir(path, 0o755)
        elif item.type != "blob":
            continue  # a submodule: minicl does not fetch those
        elif stat.S_ISLNK(item.mode):
            link = item.data_stream.read().decode("utf-8", errors="replace")
            resolved = os.path.normpath(os.path.join(os.path.dirname(item.path), link))
            if os.path.isabs(link) or resolved == ".." or resolved.startswith("../"):
                raise UnsafeTree(f"{item.path}: symlink to {link!r} points outside the repo")
            os.symlink(link, path)
        else:
            mode = 0o755 if item.mode & 0o111 else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as f:
                item.stream_data(f)
