"""The git mirror of the config repo: ``mirror.git`` in the cache dir, a bare repo that fetches
one branch incrementally from the remote (objects fsck-checked).

The mirror is only a cache: a damaged one is re-created and fetched again in the same run, and
``*.lock`` files a killed git left behind are removed (both under the update lock). Also here:
the ssh command git fetches with, how a fetch failure and a URL are told (``safe_url`` hides
passwords), and how the branch moved between two commits (``Mirror.branch_move``). The bare
repo's creation, stale locks and re-creation (``bare_repo``, ``fetch_recreating``) serve the
pinned minicl's mirror too (``minicl.pin.SourceMirror``).
"""

import logging
import os
import shlex
import shutil
from urllib.parse import urlsplit, urlunsplit

import git

from minicl.diskspace import mb

log = logging.getLogger(__name__)


def safe_url(url):
    """``url`` without a password, for messages and logs."""
    parsed = urlsplit(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return urlunsplit(parsed._replace(netloc=netloc))


def git_ssh_command(timeout, known_hosts=None, deploy_key=None, accept_new_host_key=False):
    """The GIT_SSH_COMMAND for fetching: deploy key only, strict host key checking."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
    cmd += ["-o", "StrictHostKeyChecking=" + ("accept-new" if accept_new_host_key else "yes")]
    if known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if deploy_key:
        cmd += ["-i", deploy_key, "-o", "IdentitiesOnly=yes"]
    return shlex.join(cmd)


# git's generic advice after any failed fetch; the ssh or git line before it says what happened.
_GIT_BOILERPLATE = (
    "fatal: Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)


# What git says when the mirror itself is damaged (never for a remote or network problem).
_LOCAL_DAMAGE = (
    "./objects/",
    "./packed-refs",
    "packfile",
    "is corrupt",
    "bad object",
    "index-pack failed",
    "not a git repository",
    "bad config",
)
_DISK_FULL = ("diskspace", "No space left")


def git_error_text(exc):
    """The lines of a failed git command's stderr that say why, without git's advice."""
    text = getattr(exc, "stderr", "") or str(exc)
    text = text.replace("stderr:", "").strip().strip("'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_GIT_BOILERPLATE) and not line.startswith("@")]
    return " / ".join((useful or lines)[-3:]) or "git failed"


def bare_repo(path, url):
    """The bare repo at ``path`` as a git.Repo, created if missing (objects fsck-checked on
    fetch), its remote "origin" set to ``url``."""
    if os.path.isdir(path):
        repo = git.Repo(path)
    else:
        repo = git.Repo.init(path, bare=True, mkdir=True)
        with repo.config_writer() as cfg:
            cfg.set_value("fetch", "fsckObjects", "true")
            # gc --auto runs inside the fetch, under the update lock: no git outlives
            # update(), so a *.lock found under that lock is always stale.
            cfg.set_value("gc", "autoDetach", "false")
    if "origin" in [r.name for r in repo.remotes]:
        if repo.remotes.origin.url != url:
            repo.remotes.origin.set_url(url)
    else:
        repo.create_remote("origin", url)
    return repo


def fetch_recreating(path, fetch_once):
    """``fetch_once()``'s answer, fetching into the bare repo at ``path`` (under the update lock).

    *.lock files a killed git left there are removed first. A damaged repo is only a cache: it
    is re-created and ``fetch_once()`` runs once more (one full fetch), at once, rather than
    failing or re-downloading the history on every run. A failure of the remote or the network
    (the repo is fine) or a full disk is raised (git.GitCommandError)."""
    if os.path.isdir(path):
        remove_stale_locks(path)
    try:
        return fetch_once()
    except git.GitCommandError as exc:
        said = str(getattr(exc, "stderr", "") or "")
        if any(hint in said for hint in _DISK_FULL):
            raise  # deleting the repo would not make room for fetching it again
        if not (any(hint in said for hint in _LOCAL_DAMAGE) or _is_broken(path)):
            raise  # the remote or the network: the repo is fine
        why = git_error_text(exc)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"  # GitPython cannot even read it
    log.warning("minicl: the git mirror %s is damaged (%s); re-creating it", path, why)
    shutil.rmtree(path)
    return fetch_once()


def remove_stale_locks(path):
    """*.lock files a killed git left in the bare repo at ``path`` (called under the update lock)."""
    for folder, _dirs, files in os.walk(path):
        if os.path.relpath(folder, path).startswith("objects"):
            continue
        for name in files:
            if name.endswith(".lock"):
                lock = os.path.join(folder, name)
                log.warning("minicl: removing stale git lock %s", lock)
                os.unlink(lock)


def _is_broken(path):
    """Whether the repo at ``path`` itself is damaged (a local check, no network)."""
    try:
        git.Repo(path).git.fsck("--connectivity-only", "--no-dangling", "--no-progress")
        return False
    except Exception:  # pylint: disable=broad-except  # cannot open it: config, HEAD, refs, packs
        return True


class Mirror:
    """The bare repo at ``path`` mirroring ``branch`` of ``url`` (its remote "origin")."""

    def __init__(self, path, url, branch):
        self.path = path
        self.url = url
        self.branch = branch

    def repo(self):
        """The mirror's git.Repo, created if missing; origin set to ``url``."""
        return bare_repo(self.path, self.url)

    def fetch(self, ssh_command, timeout, live=None):
        """Fetch the branch into the mirror (under the update lock); returns the sha of its tip.
        ``ssh_command``: the GIT_SSH_COMMAND; git is killed after 4 x ``timeout`` seconds; the
        trees of a new tip are read through (those of ``live``, the live commit, are not).
        A damaged mirror is re-created in the same run (``fetch_recreating``)."""
        return fetch_recreating(self.path, lambda: self._fetch_once(ssh_command, timeout, live))

    def _fetch_once(self, ssh_command, timeout, live):
        repo = self.repo()
        ref = f"refs/remotes/origin/{self.branch}"
        env = {"GIT_SSH_COMMAND": ssh_command, "GIT_TERMINAL_PROMPT": "0"}
        with repo.git.custom_environment(**env):
            repo.git.fetch(
                "--prune",
                "--no-tags",
                "origin",
                f"+refs/heads/{self.branch}:{ref}",
                kill_after_timeout=timeout * 4,
            )
        sha = repo.rev_parse(ref).hexsha
        if sha != live:
            for _item in repo.commit(sha).tree.traverse():  # every tree readable (ValueError if not)
                pass
        return sha

    def fetch_error(self, exc, cache_dir):
        """What a status says about a failed fetch (a git.GitCommandError); for a full disk,
        with the space left in ``cache_dir``."""
        text = git_error_text(exc)
        if any(hint in text for hint in _DISK_FULL):  # git names its temporary file only
            text += f" ({self.path}: {mb(shutil.disk_usage(cache_dir).free)} free)"
        return f"fetching {safe_url(self.url)} (branch {self.branch}) failed: {text}"

    def branch_move(self, live, fetched):
        """A sentence if the branch went back to an ancestor of the live commit, or was rewritten."""
        if live is None:
            return None
        repo = self.repo()
        try:
            if repo.is_ancestor(live, fetched):
                return None
            back = repo.is_ancestor(fetched, live)
        except (git.GitCommandError, ValueError):
            back = False
        how = "moved back" if back else "was rewritten (force-push)"
        return f"branch {self.branch} {how} from {live[:12]} to {fetched[:12]}; applied {fetched[:12]}"
