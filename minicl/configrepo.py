"""The local copy of the config repo: fetch, validate, switch the live checkout atomically.

Layout under ``cache_dir`` (default /var/lib/minicl, always mode 0700)::

    mirror.git/          bare repo, fetched incrementally (objects fsck-checked) from the remote
    checkouts/<sha>/     exact trees of good commits, written from git's objects (newest few kept)
    live -> checkouts/<sha>   what the pillar and the state tree read; replaced with rename(2)
    status.json          last good commit, last good fetch, last error and bad commit
    verdicts.json        per kept commit: the minicl code that validated it, and whether this
                         host's highstate renders from it (so neither is redone every run)
    lock                 flock(2): one update at a time
    runs.lock            flock(2): shared by every run from its pillar compile until it exits

A commit goes live only if its cluster.json validates and (given a ``check``, as the pillar
does) this host's highstate renders from it. When the remote is unreachable, the new commit is
invalid, the disk is full, or anything else goes wrong, the live checkout stays as it is and
the status says why (also when status.json itself cannot be written: ``last_status``).
``live`` only moves while no other run holds ``runs.lock``, so a run's pillar and the SLS
files it renders come from the same commit; a valid commit that arrives during another run is
recorded as pending and goes live on the next run.

    repo = ConfigRepo("/var/lib/minicl", url, branch="main", deploy_key="/etc/minicl/deploy.key")
    status = repo.update()          # never raises for remote or content problems
    cluster = repo.live_cluster()   # raises NoGoodCommit if nothing good was ever fetched
"""

import errno
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

from minicl import release
from minicl.config import Cluster, ConfigError, Problem, bounded, load_cluster, parse_json
from minicl.errors import MiniclError
from minicl.files import write_file

log = logging.getLogger(__name__)

KEEP_CHECKOUTS = 3
DEFAULT_TIMEOUT = 30
LOCK_WAIT = 600
RESERVE_BYTES = 32 * 2**20  # left free on the cache's filesystem after writing a commit's files
ERROR_CHARS = 6000  # bound on the error a status carries into the pillar, log and metrics

# cache_dir -> (pid, fd) holding runs.lock shared, for the life of this process (one run). A
# forked child (a salt-minion job) takes its own: a lock is shared by every copy of its fd.
_RUN_LOCKS = {}
# cache_dir -> (pid, status) of this process's last update, written to disk or not.
_LAST_STATUS = {}


def last_status(cache_dir):
    """The status this process's last ``update`` returned (None if it made none): what the
    run's returner reports, even when status.json could not be written."""
    pid, status = _LAST_STATUS.get(cache_dir, (None, None))
    return status if pid == os.getpid() else None


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


class NoGoodCommit(MiniclError):
    """No commit of the config repo has ever passed validation on this host."""


class UnsafeTree(MiniclError):
    """The commit's tree holds something that must not be written out (path or link escape)."""


class DoesNotRender(MiniclError):
    """This host's highstate does not render from the commit; ``problems``: {sls: error}."""

    def __init__(self, problems):
        self.problems = problems
        super().__init__("\n".join(problems.values()))


class NoRoom(MiniclError, OSError):
    """Not enough free space to write a commit's files (checked before writing any)."""


def _mb(size):
    return f"{size / 2**20:.1f} MB"


def _describe(exc):
    """What went wrong, naming the file for an OSError (and the free space, for a full disk)."""
    if isinstance(exc, NoRoom):
        return exc.strerror
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}{where}"
        if exc.errno == errno.ENOSPC and exc.filename:
            folder = os.path.dirname(exc.filename)
            while folder != "/" and not os.path.isdir(folder):  # the staging folder is gone
                folder = os.path.dirname(folder)
            text += f"; {_mb(shutil.disk_usage(folder).free)} free there"
        return text
    return f"{type(exc).__name__}: {exc}"


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


def _git_error_text(exc):
    """The lines of a failed git command's stderr that say why, without git's advice."""
    text = getattr(exc, "stderr", "") or str(exc)
    text = text.replace("stderr:", "").strip().strip("'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_GIT_BOILERPLATE) and not line.startswith("@")]
    return " / ".join((useful or lines)[-3:]) or "git failed"


class ConfigRepo:
    def __init__(
        self, cache_dir, url, branch="main", deploy_key=None, known_hosts=None, timeout=DEFAULT_TIMEOUT
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
        self.runs_lock_path = os.path.join(cache_dir, "runs.lock")
        self.verdicts_path = os.path.join(cache_dir, "verdicts.json")

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
            text = f.read()
        source = f"cluster.json@{commit[:12]}"
        if self._verdicts().get(commit, {}).get("valid") == release.fingerprint():
            log.debug("minicl: %s was validated before by this minicl (%s)", source, release.fingerprint())
            cluster = Cluster(parse_json(text, source))
        else:
            log.debug("minicl: validating %s (%d bytes)", source, len(text))
            cluster = load_cluster(text, source=source)
        cluster.commit = commit
        return cluster

    def _verdicts(self):
        try:
            with open(self.verdicts_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _record_verdict(self, commit, **verdict):
        verdicts = self._verdicts()
        verdicts.setdefault(commit, {}).update(verdict)
        kept = set(os.listdir(self.checkouts_dir)) if os.path.isdir(self.checkouts_dir) else set()
        verdicts = {sha: v for sha, v in verdicts.items() if sha in kept}
        try:
            write_file(self.verdicts_path, json.dumps(verdicts, indent=1, sort_keys=True), 0o600)
        except OSError as exc:  # only a cache: the next run redoes the work
            log.warning("minicl: could not write %s: %s", self.verdicts_path, _describe(exc))

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

    def update(self, accept_new_host_key=False, lock_wait=LOCK_WAIT, after_others=None, check=None):
        """Fetch, validate and (if valid) switch the live checkout. Returns the new status.

        Nothing about the remote, the commit or this host's disk is raised: it is recorded in
        the status, and the live checkout stays the last good one. ``after_others``: see
        ``hold_run_lock``. ``check(checkout_dir, cluster)``, if given, returns {sls: error} of
        the SLS files that do not render for this host (``check.key`` says what besides the
        commit and minicl's code its answer depends on): a new commit with any is not applied;
        for the live commit, they are listed in ``skipped_states``.
        """
        status = self.status()
        try:
            self.hold_run_lock(after_others)
            with self.locked(lock_wait):
                status = self.status()
                self._remove_staging()
                return self._update_locked(status, accept_new_host_key, check)
        except Exception as exc:  # the last good commit must keep running, whatever broke
            log.debug("minicl config repo update failed", exc_info=True)
            status["error"] = bounded(f"updating the config repo failed: {_describe(exc)}", ERROR_CHARS)
            status["checked_at"] = _now()
            return self._save(status)

    def _update_locked(self, status, accept_new_host_key, check):
        previous_error = status.get("error")
        for key in ("error", "pending_commit", "skipped_states"):
            status.pop(key, None)
        status["checked_at"] = _now()
        try:
            fetched = self._fetch(accept_new_host_key)
        except git.GitCommandError as exc:
            text = _git_error_text(exc)
            if "diskspace" in text or "No space left" in text:  # git names its temporary file only
                text += f" ({self.mirror_dir}: {_mb(shutil.disk_usage(self.cache_dir).free)} free)"
            status["error"] = f"fetching {safe_url(self.url)} (branch {self.branch}) failed: {text}"
            return self._save(status)
        live = self.live_commit()
        if fetched == live:
            for key in ("bad_commit", "bad_key"):
                status.pop(key, None)
            status["last_good_fetch"] = status["checked_at"]
            self._check_live(status, live, check)
            return self._save(status)
        verdict_key = self._verdict_key(check)
        if status.get("bad_commit") == fetched and status.get("bad_key") == verdict_key and previous_error:
            status["error"] = previous_error  # judged by this same code already: not again
            return self._save(status)
        commit = self._mirror().commit(fetched)
        try:
            cluster = self._validate_commit(commit)
            cluster.commit = fetched
            target = self._export(commit)
            self._record_verdict(fetched, valid=release.fingerprint())
            problems = self._render_problems(check, fetched, cluster)
            if problems:
                raise DoesNotRender(problems)
        except (ConfigError, UnsafeTree, DoesNotRender) as exc:
            if isinstance(exc, DoesNotRender):
                why, detail = "does not render on this host", "\n".join(exc.problems.values())
            else:
                why, detail = "is invalid", exc.summary() if isinstance(exc, ConfigError) else str(exc)
            status["error"] = bounded(
                f"commit {fetched[:12]} {why} and was not applied:\n{detail}", ERROR_CHARS
            )
            status["bad_commit"] = fetched
            status["bad_key"] = verdict_key
            return self._save(status)
        for key in ("bad_commit", "bad_key"):
            status.pop(key, None)
        status["last_good_fetch"] = status["checked_at"]
        if live is not None and not self._only_run():
            status["pending_commit"] = fetched
            return self._save(status)
        try:
            self._switch_live(target)
        finally:
            self._back_to_shared()
        status.pop("notice", None)
        moved = self._branch_move(live, fetched)
        if moved:
            log.warning("minicl: %s", moved)
            status["notice"] = moved
        status.update(
            commit=fetched,
            commit_time=datetime.fromtimestamp(commit.committed_date, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            commit_subject=commit.summary,
        )
        return self._save(status)

    # -- render checks -----------------------------------------------------------------

    @staticmethod
    def _verdict_key(check):
        return f"{release.fingerprint()}/{check.key if check else 'no render check'}"

    def _render_problems(self, check, commit, cluster):
        """{sls: error} from ``check`` for ``commit``'s checkout, remembered per verdict key."""
        if check is None:
            return {}
        key = self._verdict_key(check)
        known = self._verdicts().get(commit, {}).get("render")
        if known and known.get("key") == key:
            return known["problems"]
        log.debug("minicl: rendering this host's highstate from commit %s", commit[:12])
        problems = {
            sls: bounded(text, ERROR_CHARS // 4)
            for sls, text in check(os.path.join(self.checkouts_dir, commit), cluster).items()
        }
        self._record_verdict(commit, render={"key": key, "problems": problems})
        return problems

    def _check_live(self, status, live, check):
        """The second line of defence: SLS files of the live commit that do not render here
        (the commit went live under other code, or the host changed) are left out of runs.
        Also records that this code validated the live commit, once."""
        if live is None:
            return
        verdict = self._verdicts().get(live, {})
        known = verdict.get("render") or {}
        render_known = check is None or known.get("key") == self._verdict_key(check)
        if verdict.get("valid") == release.fingerprint() and render_known:
            problems = known.get("problems") or {}
        else:
            try:
                cluster = self.live_cluster()
            except ConfigError:
                return  # the pillar reports this itself
            cluster.commit = live
            self._record_verdict(live, valid=release.fingerprint())
            problems = self._render_problems(check, live, cluster)
        if problems and check is not None:
            # Group roles (roles.*) are left out of runs; minicl's own states never are.
            status["skipped_states"] = sorted(sls for sls in problems if sls.startswith("roles."))
            status["error"] = bounded(
                f"the live commit {live[:12]} has SLS files that do not render on this host; runs "
                f"leave them out until a commit fixes them:\n" + "\n".join(problems.values()),
                ERROR_CHARS,
            )

    def _branch_move(self, live, fetched):
        """A sentence if the branch went back to an ancestor of the live commit, or was rewritten."""
        if live is None:
            return None
        repo = self._mirror()
        try:
            if repo.is_ancestor(live, fetched):
                return None
            back = repo.is_ancestor(fetched, live)
        except (git.GitCommandError, ValueError):
            back = False
        how = "moved back" if back else "was rewritten (force-push)"
        return f"branch {self.branch} {how} from {live[:12]} to {fetched[:12]}; applied {fetched[:12]}"

    def _mirror(self):
        if os.path.isdir(self.mirror_dir):
            repo = git.Repo(self.mirror_dir)
        else:
            repo = git.Repo.init(self.mirror_dir, bare=True, mkdir=True)
            with repo.config_writer() as cfg:
                cfg.set_value("fetch", "fsckObjects", "true")
                # gc --auto runs inside the fetch, under the update lock: no git outlives
                # update(), so a *.lock found under that lock is always stale.
                cfg.set_value("gc", "autoDetach", "false")
        if "origin" in [r.name for r in repo.remotes]:
            if repo.remotes.origin.url != self.url:
                repo.remotes.origin.set_url(self.url)
        else:
            repo.create_remote("origin", self.url)
        return repo

    def _remove_stale_locks(self):
        """*.lock files a killed git left in the mirror (called under the update lock)."""
        for folder, _dirs, files in os.walk(self.mirror_dir):
            if os.path.relpath(folder, self.mirror_dir).startswith("objects"):
                continue
            for name in files:
                if name.endswith(".lock"):
                    path = os.path.join(folder, name)
                    log.warning("minicl: removing stale git lock %s", path)
                    os.unlink(path)

    def _mirror_is_broken(self):
        """Whether the mirror itself is damaged (a local check, no network)."""
        try:
            git.Repo(self.mirror_dir).git.fsck("--connectivity-only", "--no-dangling", "--no-progress")
            return False
        except Exception:  # pylint: disable=broad-except  # cannot open it: config, HEAD, refs, packs
            return True

    def _fetch(self, accept_new_host_key):
        """Fetch the branch into the mirror; returns the sha of its tip. A damaged mirror is
        only a cache: it is re-created and fetched once more (one full fetch), at once, rather
        than failing or re-downloading the history on every run."""
        if os.path.isdir(self.mirror_dir):
            self._remove_stale_locks()
        try:
            return self._fetch_once(accept_new_host_key)
        except git.GitCommandError as exc:
            said = str(getattr(exc, "stderr", "") or "")
            if any(hint in said for hint in _DISK_FULL):
                raise  # deleting the mirror would not make room for fetching it again
            if not (any(hint in said for hint in _LOCAL_DAMAGE) or self._mirror_is_broken()):
                raise  # the remote or the network: the mirror is fine
            why = _git_error_text(exc)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"  # GitPython cannot even read it
        log.warning("minicl: the git mirror %s is damaged (%s); re-creating it", self.mirror_dir, why)
        shutil.rmtree(self.mirror_dir)
        return self._fetch_once(accept_new_host_key)

    def _fetch_once(self, accept_new_host_key):
        repo = self._mirror()
        ref = f"refs/remotes/origin/{self.branch}"
        env = {"GIT_SSH_COMMAND": self.ssh_command(accept_new_host_key), "GIT_TERMINAL_PROMPT": "0"}
        with repo.git.custom_environment(**env):
            repo.git.fetch(
                "--prune",
                "--no-tags",
                "origin",
                f"+refs/heads/{self.branch}:{ref}",
                kill_after_timeout=self.timeout * 4,
            )
        sha = repo.rev_parse(ref).hexsha
        if sha != self.live_commit():
            for _item in repo.commit(sha).tree.traverse():  # every tree readable (ValueError if not)
                pass
        return sha

    def _validate_commit(self, commit):
        files = [blob.path for blob in commit.tree.traverse() if blob.type == "blob"]
        source = f"cluster.json@{commit.hexsha[:12]}"
        if "cluster.json" not in files:
            raise ConfigError([Problem("", "is missing from the top of the config repo", source)])
        text = (commit.tree / "cluster.json").data_stream.read().decode("utf-8", errors="replace")
        return load_cluster(text, source=source, repo_files=files)

    def _export(self, commit):
        """Write the commit's tree to checkouts/<sha> (once) and return that path. Checks the
        free space first; a failure leaves no partial folder behind."""
        os.makedirs(self.checkouts_dir, mode=0o700, exist_ok=True)
        target = os.path.join(self.checkouts_dir, commit.hexsha)
        if not os.path.isdir(target):
            self._check_room(commit)
            staging = target + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                os.mkdir(staging, 0o700)
                export_tree(commit.tree, staging)
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        os.utime(target)  # newest first when pruning, even for a commit that comes back
        return target

    def _check_room(self, commit):
        size = sum(item.size for item in commit.tree.traverse() if item.type == "blob")
        free = shutil.disk_usage(self.checkouts_dir).free
        if size + RESERVE_BYTES > free:
            raise NoRoom(
                errno.ENOSPC,
                f"not enough disk space to write commit {commit.hexsha[:12]} to {self.checkouts_dir}: "
                f"its files need {_mb(size)} and {_mb(RESERVE_BYTES)} are kept free, but only "
                f"{_mb(free)} are free there. The last good commit keeps running; free some space "
                f"on that filesystem (df -h {self.cache_dir}) and the next run applies it",
            )

    def _remove_staging(self):
        """Leftovers of an export or switch that was killed (this process holds the update lock)."""
        if os.path.lexists(self.live_path + ".new"):
            os.unlink(self.live_path + ".new")
        if os.path.isdir(self.checkouts_dir):
            for name in os.listdir(self.checkouts_dir):
                if name.endswith(".tmp"):
                    shutil.rmtree(os.path.join(self.checkouts_dir, name), ignore_errors=True)

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
        entries = [
            os.path.join(self.checkouts_dir, name) for name in os.listdir(self.checkouts_dir) if name != keep
        ]
        entries.sort(key=os.path.getmtime, reverse=True)
        for path in entries[KEEP_CHECKOUTS - 1 :]:
            shutil.rmtree(path, ignore_errors=True)

    def _save(self, status):
        _LAST_STATUS[self.cache_dir] = (os.getpid(), status)
        try:
            write_file(self.status_path, json.dumps(status, indent=2, sort_keys=True), 0o600)
        except OSError as exc:  # the run still reports it: see last_status
            log.error("minicl: could not write %s: %s", self.status_path, _describe(exc))
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
