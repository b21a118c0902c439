"""The local copy of the config repo: fetch, validate, switch the live checkout atomically.

Layout under ``cache_dir`` (default /var/lib/minicl, always mode 0700)::

    mirror.git/          bare repo, fetched incrementally (objects fsck-checked) from the remote
    checkouts/<sha>/     exact trees of good commits, written from git's objects (newest few kept)
    live -> checkouts/<sha>   what the pillar and the state tree read; replaced with rename(2)
    status.json          last good commit, last good fetch, last error and bad commit
    lock                 flock(2): one update at a time
    runs.lock            flock(2): shared by every run from its pillar compile until it exits

A commit goes live only if its cluster.json validates. When the remote is unreachable, the
new commit is invalid, or anything else goes wrong, the live checkout stays as it is and
``status.json`` says why. ``live`` only moves while no other run holds ``runs.lock``, so a
run's pillar and the SLS files it renders come from the same commit; a valid commit that
arrives during another run is recorded as pending and goes live on the next run.

    repo = ConfigRepo("/var/lib/minicl", url, branch="main", deploy_key="/etc/minicl/deploy.key")
    status = repo.update()          # never raises for remote or content problems
    cluster = repo.live_cluster()   # raises NoGoodCommit if nothing good was ever fetched
"""

import fcntl
import json
import logging
import os
import shlex
import shutil
import stat
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import git

from minicl.config import ConfigError, Problem, load_cluster
from minicl.files import write_file

log = logging.getLogger(__name__)

KEEP_CHECKOUTS = 3
DEFAULT_TIMEOUT = 30
LOCK_WAIT = 600

# cache_dir -> (pid, fd) holding runs.lock shared, for the life of this process (one run). A
# forked child (a salt-minion job) takes its own: a lock is shared by every copy of its fd.
_RUN_LOCKS = {}


def _try_exclusive(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def lock_holders(path):
    """PIDs of the other processes that have ``path`` open (runs keep runs.lock open while they
    hold it), from /proc: /proc/locks names overlayfs files by their lower inode, not this one."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == path for fd in fds):
                pids.append(int(entry))
        except OSError:  # gone, or not ours to look at
            continue
    return sorted(pids)


class NoGoodCommit(Exception):
    """No commit of the config repo has ever passed validation on this host."""


class UnsafeTree(Exception):
    """The commit's tree holds something that must not be written out (path or link escape)."""


def _now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_url(url):
    """``url`` without a password, for messages and logs."""
    parsed = urlsplit(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return urlunsplit(parsed._replace(netloc=netloc))


# git's generic advice after any failed fetch; the ssh or git line before it says what happened.
_GIT_BOILERPLATE = (
    "fatal: Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)


def _git_error_text(exc):
    """The lines of a failed git command's stderr that say why, without git's advice."""
    text = getattr(exc, "stderr", "") or str(exc)
    text = text.replace("stderr:", "").strip().strip("'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines
              if not line.startswith(_GIT_BOILERPLATE) and not line.startswith("@")]
    return " / ".join((useful or lines)[-3:]) or "git failed"


class ConfigRepo:
    def __init__(self, cache_dir, url, branch="main", deploy_key=None, known_hosts=None,
                 timeout=DEFAULT_TIMEOUT):
        self.cache_dir = cache_dir
        self.url = url
        self.branch = branch
        self.deploy_key = deploy_key
        self.known_hosts = known_hosts
        self.timeout = int(timeout)
        self.mirror_dir = os.path.join(cache_dir, "mirror.git")
        self.checkouts_dir = os.path.join(cache_dir, "checkouts")
        self.live_path = os.path.join(cache_dir, "live")
        self.status_path = os.path.join(cache_dir, "status.json")
        self.lock_path = os.path.join(cache_dir, "lock")
        self.runs_lock_path = os.path.join(cache_dir, "runs.lock")

    # -- reading -----------------------------------------------------------------------

    def live_commit(self):
        """The sha of the live checkout, or None."""
        try:
            return os.path.basename(os.readlink(self.live_path))
        except OSError:
            return None

    def status(self):
        try:
            with open(self.status_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def live_cluster(self):
        """The Cluster of the live checkout (``.commit`` says which); NoGoodCommit if none."""
        commit = self.live_commit()
        if commit is None:
            raise NoGoodCommit(self._no_good_commit_message())
        # Read through the resolved sha, not "live": a switch in between cannot mix commits.
        with open(os.path.join(self.checkouts_dir, commit, "cluster.json"), encoding="utf-8") as f:
            cluster = load_cluster(f.read(), source=f"cluster.json@{commit[:12]}")
        cluster.commit = commit
        return cluster

    def _no_good_commit_message(self):
        error = self.status().get("error")
        why = f" Last error: {error}" if error else ""
        return (
            f"no valid commit of the config repo {safe_url(self.url)} (branch {self.branch}) has been "
            f"fetched into {self.cache_dir} yet, so there is no configuration to apply.{why} "
            "Fix the repo or the access to it (deploy key, known_hosts), then run "
            "'salt-call --local state.apply' again."
        )

    # -- locks -------------------------------------------------------------------------

    def _prepare_cache_dir(self):
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        os.chmod(self.cache_dir, 0o700)  # holds the deploy key and password hashes

    @contextmanager
    def locked(self, wait=LOCK_WAIT):
        """Hold the update lock; waits up to ``wait`` seconds for another update to finish."""
        self._prepare_cache_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"another minicl run has held {self.lock_path} for over {wait} s"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def hold_run_lock(self, after_others=None, poll=0.2):
        """Join the runs in progress (shared runs.lock) until this process exits.

        With ``after_others`` (a function), first wait until no other process is in a run,
        calling ``after_others(pids)`` once if it has to wait: a state run that waits here
        instead of being refused by Salt then fetches and applies the newest commit.
        """
        held = _RUN_LOCKS.get(self.cache_dir)
        if held and held[0] == os.getpid():
            return
        if held:  # inherited from the process this one was forked from: not this run's
            os.close(held[1])
        self._prepare_cache_dir()
        fd = os.open(self.runs_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if after_others:
            waited = False
            while not _try_exclusive(fd):
                if not waited:
                    after_others(lock_holders(self.runs_lock_path))
                    waited = True
                time.sleep(poll)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while someone is switching live
        _RUN_LOCKS[self.cache_dir] = (os.getpid(), fd)

    def release_run_lock(self):
        """Leave the runs in progress (before starting a separate salt-call, say)."""
        held = _RUN_LOCKS.pop(self.cache_dir, None)
        if held and held[0] == os.getpid():
            os.close(held[1])

    def _only_run(self):
        """True (holding runs.lock exclusively) if no other process is in a run."""
        fd = _RUN_LOCKS[self.cache_dir][1]
        if _try_exclusive(fd):
            return True
        fcntl.flock(fd, fcntl.LOCK_SH)  # a failed conversion drops the lock: take it back
        return False

    def _back_to_shared(self):
        fcntl.flock(_RUN_LOCKS[self.cache_dir][1], fcntl.LOCK_SH)

    # -- updating ----------------------------------------------------------------------

    def ssh_command(self, accept_new_host_key=False):
        """The GIT_SSH_COMMAND for fetching: deploy key only, strict host key checking."""
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.timeout}"]
        cmd += ["-o", "StrictHostKeyChecking=" + ("accept-new" if accept_new_host_key else "yes")]
        if self.known_hosts:
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.deploy_key:
            cmd += ["-i", self.deploy_key, "-o", "IdentitiesOnly=yes"]
        return shlex.join(cmd)

    def update(self, accept_new_host_key=False, lock_wait=LOCK_WAIT, after_others=None):
        """Fetch, validate and (if valid) switch the live checkout. Returns the new status.

        Nothing about the remote, the commit or this host's disk is raised: it is recorded in
        the status, and the live checkout stays the last good one. ``after_others``: see
        ``hold_run_lock``.
        """
        status = self.status()
        try:
            self.hold_run_lock(after_others)
            with self.locked(lock_wait):
                status = self.status()
                return self._update_locked(status, accept_new_host_key)
        except Exception as exc:  # the last good commit must keep running, whatever broke
            log.debug("minicl config repo update failed", exc_info=True)
            status["error"] = f"updating the config repo failed: {type(exc).__name__}: {exc}"
            status["checked_at"] = _now()
            try:
                return self._save(status)
            except OSError:
                return status

    def _update_locked(self, status, accept_new_host_key):
        for key in ("error", "pending_commit"):
            status.pop(key, None)
        status["checked_at"] = _now()
        try:
            fetched = self._fetch(accept_new_host_key)
        except git.GitCommandError as exc:
            status["error"] = f"fetching {safe_url(self.url)} (branch {self.branch}) failed: {_git_error_text(exc)}"
            return self._save(status)
        if fetched == self.live_commit():
            status.pop("bad_commit", None)
            status["last_good_fetch"] = status["checked_at"]
            return self._save(status)
        commit = self._mirror().commit(fetched)
        try:
            self._validate_commit(commit)
            target = self._export(commit)
        except (ConfigError, UnsafeTree) as exc:
            status["error"] = f"commit {fetched[:12]} is invalid and was not applied:\n{exc}"
            status["bad_commit"] = fetched
            return self._save(status)
        status.pop("bad_commit", None)
        status["last_good_fetch"] = status["checked_at"]
        if self.live_commit() is not None and not self._only_run():
            status["pending_commit"] = fetched
            return self._save(status)
        try:
            self._switch_live(target)
        finally:
            self._back_to_shared()
        status.update(
            commit=fetched,
            commit_time=datetime.fromtimestamp(commit.committed_date, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            commit_subject=commit.summary,
        )
        return self._save(status)

    def _mirror(self):
        if os.path.isdir(self.mirror_dir):
            repo = git.Repo(self.mirror_dir)
        else:
            repo = git.Repo.init(self.mirror_dir, bare=True, mkdir=True)
            with repo.config_writer() as cfg:
                cfg.set_value("fetch", "fsckObjects", "true")
        if "origin" in [r.name for r in repo.remotes]:
            if repo.remotes.origin.url != self.url:
                repo.remotes.origin.set_url(self.url)
        else:
            repo.create_remote("origin", self.url)
        return repo

    def _fetch(self, accept_new_host_key):
        """Fetch the branch into the mirror; returns the sha of its tip."""
        repo = self._mirror()
        ref = f"refs/remotes/origin/{self.branch}"
        env = {"GIT_SSH_COMMAND": self.ssh_command(accept_new_host_key), "GIT_TERMINAL_PROMPT": "0"}
        with repo.git.custom_environment(**env):
            repo.git.fetch("--prune", "--no-tags", "origin", f"+refs/heads/{self.branch}:{ref}",
                           kill_after_timeout=self.timeout * 4)
        return repo.rev_parse(ref).hexsha

    def _validate_commit(self, commit):
        files = [blob.path for blob in commit.tree.traverse() if blob.type == "blob"]
        source = f"cluster.json@{commit.hexsha[:12]}"
        if "cluster.json" not in files:
            raise ConfigError([Problem("", "is missing from the top of the config repo", source)])
        text = (commit.tree / "cluster.json").data_stream.read().decode("utf-8", errors="replace")
        return load_cluster(text, source=source, repo_files=files)

    def _export(self, commit):
        """Write the commit's tree to checkouts/<sha> (once) and return that path."""
        os.makedirs(self.checkouts_dir, mode=0o700, exist_ok=True)
        target = os.path.join(self.checkouts_dir, commit.hexsha)
        if not os.path.isdir(target):
            staging = target + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            os.mkdir(staging, 0o700)
            try:
                export_tree(commit.tree, staging)
            except UnsafeTree:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            os.rename(staging, target)
        os.utime(target)  # newest first when pruning, even for a commit that comes back
        return target

    def _switch_live(self, target):
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
        self._prune_checkouts(keep=os.path.basename(target))

    def _prune_checkouts(self, keep):
        entries = [os.path.join(self.checkouts_dir, name) for name in os.listdir(self.checkouts_dir)
                   if name != keep]
        entries.sort(key=os.path.getmtime, reverse=True)
        for path in entries[KEEP_CHECKOUTS - 1:]:
            shutil.rmtree(path, ignore_errors=True)

    def _save(self, status):
        write_file(self.status_path, json.dumps(status, indent=2, sort_keys=True), 0o600)
        return status


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
