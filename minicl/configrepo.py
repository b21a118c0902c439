"""The local copy of the config repo: fetch, validate, switch the live checkout atomically.

Layout under ``cache_dir`` (default /var/lib/minicl)::

    mirror.git/          bare repo, fetched incrementally from the remote
    checkouts/<sha>/     exported trees of good commits (the newest few are kept)
    live -> checkouts/<sha>   symlink the pillar and the state tree read; replaced with rename(2)
    status.json          last good commit, last good fetch, last error and bad commit
    lock                 flock(2) held by whoever updates

A commit goes live only if its cluster.json validates. When the remote is unreachable or
the new commit is invalid, the live checkout stays as it is and ``status.json`` says why.

    repo = ConfigRepo("/var/lib/minicl", url, branch="main", deploy_key="/etc/minicl/deploy.key")
    status = repo.update()          # never raises for remote or content problems
    cluster = repo.live_cluster()   # raises NoGoodCommit if nothing good was ever fetched
"""

import fcntl
import io
import json
import os
import shlex
import shutil
import tarfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import git

from minicl.config import ConfigError, Problem, load_cluster

KEEP_CHECKOUTS = 3
DEFAULT_TIMEOUT = 30
LOCK_WAIT = 600


class NoGoodCommit(Exception):
    """No commit of the config repo has ever passed validation on this host."""


def _now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_url(url):
    """``url`` without a password, for messages and logs."""
    parsed = urlsplit(url)
    if parsed.password is None:
        return url
    return urlunsplit(parsed._replace(netloc=f"{parsed.username}:***@{parsed.hostname}"
                                      + (f":{parsed.port}" if parsed.port else "")))


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
    def __init__(
        self,
        cache_dir,
        url,
        branch="main",
        deploy_key=None,
        known_hosts=None,
        timeout=DEFAULT_TIMEOUT,
    ):
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
        """The Cluster of the live checkout; raises NoGoodCommit when there is none."""
        commit = self.live_commit()
        if commit is None:
            raise NoGoodCommit(self._no_good_commit_message())
        # Only validated commits are ever made live, so this parse cannot fail on content.
        with open(os.path.join(self.live_path, "cluster.json"), encoding="utf-8") as f:
            return load_cluster(f.read(), source=f"cluster.json@{commit[:12]}")

    def _no_good_commit_message(self):
        error = self.status().get("error")
        why = f" Last error: {error}" if error else ""
        return (
            f"no valid commit of the config repo {safe_url(self.url)} (branch {self.branch}) has been fetched "
            f"into {self.cache_dir} yet, so there is no configuration to apply.{why} "
            "Fix the repo or the access to it (deploy key, known_hosts), then run "
            "'salt-call --local state.apply' again."
        )

    # -- updating ----------------------------------------------------------------------

    @contextmanager
    def locked(self, wait=LOCK_WAIT):
        """Hold the update lock; waits up to ``wait`` seconds for another run to finish."""
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
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

    def ssh_command(self, accept_new_host_key=False):
        """The GIT_SSH_COMMAND for fetching: deploy key only, strict host key checking."""
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.timeout}"]
        cmd += ["-o", "StrictHostKeyChecking=" + ("accept-new" if accept_new_host_key else "yes")]
        if self.known_hosts:
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.deploy_key:
            cmd += ["-i", self.deploy_key, "-o", "IdentitiesOnly=yes"]
        return shlex.join(cmd)

    def update(self, accept_new_host_key=False, lock_wait=LOCK_WAIT):
        """Fetch, validate and (if valid) switch the live checkout. Returns the new status.

        Problems with the remote or the new commit are recorded in the status, not raised.
        """
        try:
            with self.locked(lock_wait):
                return self._update_locked(accept_new_host_key)
        except TimeoutError as exc:
            status = self.status()
            status["error"] = str(exc)
            return status

    def _update_locked(self, accept_new_host_key):
        status = self.status()
        status.pop("error", None)
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
        except ConfigError as exc:
            status["error"] = f"commit {fetched[:12]} is invalid and was not applied:\n{exc}"
            status["bad_commit"] = fetched
            return self._save(status)
        self._switch_live(commit)
        status.pop("bad_commit", None)
        status.update(
            commit=fetched,
            commit_time=datetime.fromtimestamp(commit.committed_date, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            commit_subject=commit.summary,
            last_good_fetch=status["checked_at"],
        )
        return self._save(status)

    def _mirror(self):
        if os.path.isdir(self.mirror_dir):
            repo = git.Repo(self.mirror_dir)
        else:
            repo = git.Repo.init(self.mirror_dir, bare=True, mkdir=True)
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

    def _switch_live(self, commit):
        os.makedirs(self.checkouts_dir, mode=0o700, exist_ok=True)
        target = os.path.join(self.checkouts_dir, commit.hexsha)
        if not os.path.isdir(target):
            staging = target + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging, mode=0o700)
            archive = io.BytesIO()
            commit.repo.archive(archive, treeish=commit.hexsha, format="tar")
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                # git archive writes no absolute or ".." paths; the filter is extra care
                # where this Python has it.
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, **extra)
            os.rename(staging, target)
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
        self._prune_checkouts(keep=commit.hexsha)

    def _prune_checkouts(self, keep):
        entries = [
            os.path.join(self.checkouts_dir, name)
            for name in os.listdir(self.checkouts_dir)
            if name != keep
        ]
        entries.sort(key=os.path.getmtime, reverse=True)
        # Older checkouts stay a while: a run that read the previous commit may still be using it.
        for path in entries[KEEP_CHECKOUTS - 1 :]:
            shutil.rmtree(path, ignore_errors=True)

    def _save(self, status):
        tmp = self.status_path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump(status, f, indent=2, sort_keys=True)
        os.replace(tmp, self.status_path)
        return status
