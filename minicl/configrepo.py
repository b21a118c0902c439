"""The local copy of the config repo: fetch, validate, switch the live checkout atomically.

A commit goes live only if its cluster.json validates, the minicl it pins (if any, a git
submodule at ``minicl``: ``minicl.pin``) is consistent and fetched, and (given a ``check``, as
the pillar does) this host's highstate renders from it. When the remote is unreachable, the new commit is
invalid, the disk is full, or anything else goes wrong, the live checkout stays as it is and
the status says why (also when status.json itself cannot be written: ``last_status``).
``live`` only moves while no other run holds ``runs.lock``, so a run's pillar and the SLS
files it renders come from the same commit; a valid commit that arrives during another run is
recorded as pending and goes live on the next run.

    repo = ConfigRepo("/var/lib/minicl", url, branch="main", deploy_key="/etc/minicl/deploy.key")
    status = repo.update()          # never raises for remote or content problems
    cluster = repo.live_cluster()   # raises NoGoodCommit if nothing good was ever fetched

``ConfigRepo`` decides which commit is live: it judges commits (validation, render verdicts)
and runs an update. The work is done beside it: ``minicl.mirror`` (the git mirror),
``minicl.checkouts`` (the checkouts, ``live`` and the verdicts), ``minicl.statusrecord``
(status.json and ``last_status``), ``minicl.runlock`` (the update lock and the run lock),
``minicl.pin`` (the pinned minicl and its mirror) and ``minicl.diskspace`` (``NoRoom``, how an
error is told). The names other code uses from those
modules are importable from here too.
"""

import logging
import os
from datetime import datetime, timezone

import git

from minicl import release, runlock, statusrecord
from minicl.checkouts import KEEP_CHECKOUTS, RESERVE_BYTES, Checkouts, UnsafeTree, export_tree
from minicl.config import Cluster, ConfigError, Problem, bounded, load_cluster, parse_json
from minicl.diskspace import NoRoom, describe
from minicl.errors import MiniclError
from minicl.mirror import Mirror, git_ssh_command, safe_url
from minicl.pin import PinError, PinFetchError, SourceMirror, pin_of
from minicl.runlock import LOCK_WAIT, lock_holders
from minicl.statusrecord import ERROR_CHARS, last_status

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_CHARS",
    "KEEP_CHECKOUTS",
    "LOCK_WAIT",
    "RESERVE_BYTES",
    "ConfigRepo",
    "DoesNotRender",
    "NoGoodCommit",
    "NoRoom",
    "UnsafeTree",
    "export_tree",
    "last_status",
    "lock_holders",
    "safe_url",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30


class NoGoodCommit(MiniclError):
    """No commit of the config repo has ever passed validation on this host."""


class DoesNotRender(MiniclError):
    """This host's highstate does not render from the commit; ``problems``: {sls: error}."""

    def __init__(self, problems):
        self.problems = problems
        super().__init__("\n".join(problems.values()))


class ConfigRepo:
    """The config repo's cache dir on this host. Layout under ``cache_dir`` (default
    /var/lib/minicl, always mode 0700)::

        mirror.git/          bare repo, fetched incrementally (objects fsck-checked) from the remote
        minicl.git/          bare repo of the minicl source the commits pin (made at the first pin)
        checkouts/<sha>/     exact trees of good commits, written from git's objects (newest few kept)
        live -> checkouts/<sha>   what the pillar and the state tree read; replaced with rename(2)
        status.json          last good commit, last good fetch, last error and bad commit
        verdicts.json        per kept commit: the minicl code that validated it, and whether this
                             host's highstate renders from it (so neither is redone every run)
        lock                 flock(2): one update at a time
        runs.lock            flock(2): shared by every run from its pillar compile until it exits

    mirror.git is ``minicl.mirror``'s; minicl.git is ``minicl.pin``'s; checkouts, live and verdicts.json are
    ``minicl.checkouts``'s; status.json is ``minicl.statusrecord``'s; the two locks are
    ``minicl.runlock``'s.
    """

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
        self.source_mirror_dir = os.path.join(cache_dir, "minicl.git")
        self.checkouts_dir = os.path.join(cache_dir, "checkouts")
        self.live_path = os.path.join(cache_dir, "live")
        self.status_path = statusrecord.status_path(cache_dir)
        self.lock_path = os.path.join(cache_dir, "lock")
        self.runs_lock_path = os.path.join(cache_dir, "runs.lock")
        self.verdicts_path = os.path.join(cache_dir, "verdicts.json")

    # The parts, made from the attributes above as they are at each use.

    def _mirror(self):
        return Mirror(self.mirror_dir, self.url, self.branch)

    def _checkouts(self):
        return Checkouts(self.cache_dir, self.checkouts_dir, self.live_path, self.verdicts_path)

    def source_mirror(self, pin):
        """The minicl.pin.SourceMirror that holds ``pin``'s commit (a minicl.pin.Pin)."""
        return SourceMirror(self.source_mirror_dir, pin.url)

    # -- reading -----------------------------------------------------------------------

    def live_commit(self):
        """The sha of the live checkout, or None."""
        return self._checkouts().live_commit()

    def status(self):
        return statusrecord.read_status(self.status_path)

    def live_pin(self):
        """The minicl.pin.Pin of the live commit (the minicl it pins; fetched into minicl.git
        before it went live), or None: no live commit, or it pins none. Raises PinError if the
        live commit cannot be read from mirror.git or its pin is inconsistent (it went live
        under a minicl that did not read pins)."""
        live = self.live_commit()
        if live is None:
            return None
        try:
            with git.Repo(self.mirror_dir) as repo:
                return pin_of(repo.commit(live), self.url)
        except (ValueError, git.BadName, git.BadObject, git.GitCommandError) as exc:
            raise PinError(
                f"the live commit {live[:12]} cannot be read from {self.mirror_dir} "
                f"({type(exc).__name__}: {exc}); the next update fetches the branch again"
            ) from exc
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise PinError(
                f"the live commit {live[:12]} cannot be read: {self.mirror_dir} is missing or "
                f"damaged ({type(exc).__name__}); the next update fetches the branch again"
            ) from exc

    def live_cluster(self):
        """The Cluster of the live checkout (``.commit`` says which); NoGoodCommit if none."""
        checkouts = self._checkouts()
        commit = checkouts.live_commit()
        if commit is None:
            raise NoGoodCommit(self._no_good_commit_message())
        # Read through the resolved sha, not "live": a switch in between cannot mix commits.
        with open(os.path.join(checkouts.path(commit), "cluster.json"), encoding="utf-8") as f:
            text = f.read()
        source = f"cluster.json@{commit[:12]}"
        if checkouts.verdicts().get(commit, {}).get("valid") == release.fingerprint():
            log.debug("minicl: %s was validated before by this minicl (%s)", source, release.fingerprint())
            cluster = Cluster(parse_json(text, source))
        else:
            log.debug("minicl: validating %s (%d bytes)", source, len(text))
            cluster = load_cluster(text, source=source)
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

    # -- locks (minicl.runlock) --------------------------------------------------------

    def locked(self, wait=LOCK_WAIT):
        """Hold the update lock; waits up to ``wait`` seconds for another update to finish."""
        return runlock.update_lock(self.cache_dir, self.lock_path, wait)

    def hold_run_lock(self, after_others=None, poll=0.2):
        """Join the runs in progress (shared runs.lock) until this process exits.

        With ``after_others`` (a function), first wait until no other process is in a run,
        calling ``after_others(pids)`` once if it has to wait: a state run that waits here
        instead of being refused by Salt then fetches and applies the newest commit.
        """
        runlock.hold_run_lock(self.cache_dir, self.runs_lock_path, after_others, poll)

    def release_run_lock(self):
        """Leave the runs in progress (before starting a separate salt-call, say)."""
        runlock.release_run_lock(self.cache_dir)

    # -- updating ----------------------------------------------------------------------

    def ssh_command(self, accept_new_host_key=False):
        """The GIT_SSH_COMMAND for fetching: deploy key only, strict host key checking."""
        return git_ssh_command(self.timeout, self.known_hosts, self.deploy_key, accept_new_host_key)

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
                self._checkouts().remove_staging()
                return self._update_locked(status, accept_new_host_key, check)
        except Exception as exc:  # the last good commit must keep running, whatever broke
            log.debug("minicl config repo update failed", exc_info=True)
            status["error"] = bounded(f"updating the config repo failed: {describe(exc)}", ERROR_CHARS)
            status["checked_at"] = statusrecord.now()
            return self._save(status)

    def _update_locked(self, status, accept_new_host_key, check):
        previous_error = status.get("error")
        for key in ("error", "pending_commit", "skipped_states"):
            status.pop(key, None)
        status["checked_at"] = statusrecord.now()
        mirror, checkouts = self._mirror(), self._checkouts()
        try:
            fetched = mirror.fetch(
                self.ssh_command(accept_new_host_key), self.timeout, live=checkouts.live_commit()
            )
        except git.GitCommandError as exc:
            status["error"] = mirror.fetch_error(exc, self.cache_dir)
            return self._save(status)
        live = checkouts.live_commit()
        if fetched == live:
            for key in ("bad_commit", "bad_key"):
                status.pop(key, None)
            status["last_good_fetch"] = status["checked_at"]
            self._check_live(status, live, check)
            self._fetch_live_pin(status, mirror, live, accept_new_host_key)
            return self._save(status)
        verdict_key = self._verdict_key(check)
        if status.get("bad_commit") == fetched and status.get("bad_key") == verdict_key and previous_error:
            status["error"] = previous_error  # judged by this same code already: not again
            return self._save(status)
        commit = mirror.repo().commit(fetched)
        try:
            cluster = self._validate_commit(commit)
            self._fetch_pin(commit, accept_new_host_key)
            cluster.commit = fetched
            target = checkouts.export(commit)
            checkouts.record_verdict(fetched, valid=release.fingerprint())
            problems = self._render_problems(check, fetched, cluster)
            if problems:
                raise DoesNotRender(problems)
        except PinFetchError as exc:  # not the commit's fault: the next run tries again
            status["error"] = bounded(
                f"commit {fetched[:12]} pins minicl {exc.commit[:12]} which could not be fetched from "
                f"{safe_url(exc.url)}: {exc.why}; the last good commit keeps running",
                ERROR_CHARS,
            )
            return self._save(status)
        except (ConfigError, UnsafeTree, DoesNotRender, PinError) as exc:
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
        if live is not None and not runlock.only_run(self.cache_dir):
            status["pending_commit"] = fetched
            return self._save(status)
        try:
            checkouts.switch_live(target)
        finally:
            runlock.back_to_shared(self.cache_dir)
        status.pop("notice", None)
        moved = mirror.branch_move(live, fetched)
        if moved:
            log.warning("minicl: %s", moved)
            status["notice"] = moved
        status.update(
            commit=fetched,
            commit_time=datetime.fromtimestamp(commit.committed_date, timezone.utc).strftime(
                statusrecord.TIME_FORMAT
            ),
            commit_subject=commit.summary,
        )
        return self._save(status)

    def _save(self, status):
        return statusrecord.save_status(self.cache_dir, self.status_path, status)

    # -- judging commits: validation and render checks ---------------------------------

    def _validate_commit(self, commit):
        files = [blob.path for blob in commit.tree.traverse() if blob.type == "blob"]
        source = f"cluster.json@{commit.hexsha[:12]}"
        if "cluster.json" not in files:
            raise ConfigError([Problem("", "is missing from the top of the config repo", source)])
        text = (commit.tree / "cluster.json").data_stream.read().decode("utf-8", errors="replace")
        return load_cluster(text, source=source, repo_files=files)

    def _fetch_live_pin(self, status, mirror, live, accept_new_host_key):
        """The live commit's pin in minicl.git, if the commit went live under a minicl that did
        not fetch pins (then installed again): fetched now, once, or said in the status."""
        try:
            self._fetch_pin(mirror.repo().commit(live), accept_new_host_key)
        except PinFetchError as exc:
            status["error"] = bounded(
                f"the live commit {live[:12]} pins minicl {exc.commit[:12]}, which could not be fetched "
                f"from {safe_url(exc.url)}: {exc.why}",
                ERROR_CHARS,
            )
        except PinError:
            pass  # an inconsistent pin of the live commit: the pillar reports it (live_pin)

    def _fetch_pin(self, commit, accept_new_host_key):
        """Fetch the minicl ``commit`` pins (if any) into minicl.git. PinError if its pin is
        inconsistent (a bad commit); PinFetchError if it cannot be fetched now."""
        pin = pin_of(commit, self.url)
        if pin is not None:
            log.debug("minicl: commit %s pins minicl %s", commit.hexsha[:12], pin.commit[:12])
            self.source_mirror(pin).ensure(pin.commit, self.ssh_command(accept_new_host_key), self.timeout)

    @staticmethod
    def _verdict_key(check):
        return f"{release.fingerprint()}/{check.key if check else 'no render check'}"

    def _render_problems(self, check, commit, cluster):
        """{sls: error} from ``check`` for ``commit``'s checkout, remembered per verdict key."""
        if check is None:
            return {}
        checkouts = self._checkouts()
        key = self._verdict_key(check)
        known = checkouts.verdicts().get(commit, {}).get("render")
        if known and known.get("key") == key:
            return known["problems"]
        log.debug("minicl: rendering this host's highstate from commit %s", commit[:12])
        problems = {
            sls: bounded(text, ERROR_CHARS // 4)
            for sls, text in check(checkouts.path(commit), cluster).items()
        }
        checkouts.record_verdict(commit, render={"key": key, "problems": problems})
        return problems

    def _check_live(self, status, live, check):
        """The second line of defence: SLS files of the live commit that do not render here
        (the commit went live under other code, or the host changed) are left out of runs.
        Also records that this code validated the live commit, once."""
        if live is None:
            return
        checkouts = self._checkouts()
        verdict = checkouts.verdicts().get(live, {})
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
            checkouts.record_verdict(live, valid=release.fingerprint())
            problems = self._render_problems(check, live, cluster)
        if problems and check is not None:
            # Group roles (roles.*) are left out of runs; minicl's own states never are.
            status["skipped_states"] = sorted(sls for sls in problems if sls.startswith("roles."))
            status["error"] = bounded(
                f"the live commit {live[:12]} has SLS files that do not render on this host; runs "
                f"leave them out until a commit fixes them:\n" + "\n".join(problems.values()),
                ERROR_CHARS,
            )
