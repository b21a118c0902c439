"""The minicl a config repo pins: a git submodule at ``minicl`` (a gitlink in the commit's tree
and a ``.gitmodules`` section with ``path = minicl`` and its ``url``), and the bare repo on the
host its commits are fetched into (``<cache_dir>/minicl.git``).

    pin = pin_of(commit, config_repo_url)      # Pin(commit, url) or None; PinError if inconsistent
    source = SourceMirror(path, pin.url)
    source.ensure(pin.commit, ssh_command, timeout)   # PinFetchError: not now (network, access)
    source.export(pin.commit, "/somewhere/new")       # the pinned minicl's files

A config repo without a pin has none (``pin_of`` returns None) and nothing is fetched. A
relative url (``../minicl.git``) is resolved against the config repo's URL as git resolves it
for submodules (``resolve_url``). ``worktree_problems`` checks a pin on a workstation (``minicl
validate``, the pre-commit hook): the index's gitlink, ``.gitmodules``, and with ``staged``
the submodule's own checkout. ``ConfigRepo`` fetches the pin of each new commit before it goes
live (``ConfigRepo.live_pin``, ``ConfigRepo.source_mirror``).
"""

import errno
import logging
import os
import re
import subprocess
from typing import NamedTuple

import git

from minicl.checkouts import write_tree
from minicl.errors import MiniclError
from minicl.mirror import bare_repo, fetch_recreating, git_error_text, remove_stale_locks, safe_url

log = logging.getLogger(__name__)

PIN_PATH = "minicl"
GITLINK_MODE = 0o160000

_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_URL_HINT = "<URL of minicl's repository>"
_ADD_SECTION = (
    f"git config -f .gitmodules submodule.{PIN_PATH}.path {PIN_PATH} && "
    f"git config -f .gitmodules submodule.{PIN_PATH}.url {_URL_HINT} && git add .gitmodules"
)
# What git reads from the environment for "the repository here": a command run in the
# submodule must not see the superproject's (a pre-commit hook gets GIT_INDEX_FILE, say).
_LOCAL_ENV = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_CONFIG",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_PARAMETERS",
    "GIT_DIR",
    "GIT_GRAFT_FILE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_OBJECT_DIRECTORY",
    "GIT_PREFIX",
    "GIT_REPLACE_REF_BASE",
    "GIT_SHALLOW_FILE",
    "GIT_WORK_TREE",
)


class PinError(MiniclError):
    """The config repo's pin of minicl is inconsistent, or its commit cannot be had."""


class PinFetchError(PinError):
    """The pinned commit could not be fetched now (network, access, not pushed): worth retrying.
    ``commit``, ``url`` and ``why`` say which, from where, and what git said."""

    def __init__(self, commit, url, why):
        self.commit = commit
        self.url = url
        self.why = why
        super().__init__(f"minicl {commit[:12]} could not be fetched from {safe_url(url)}: {why}")


class PinNotFound(PinFetchError):
    """The repository at the url has no branch or tag holding the pinned commit."""

    def __init__(self, commit, url, said=""):
        why = "that repository has no such commit on any branch or tag (was it pushed?)"
        super().__init__(commit, url, f"{why}{f' (git: {said})' if said else ''}")


class Pin(NamedTuple):
    """The minicl a config repo commit pins: the ``commit`` (sha) of the repository at ``url``."""

    commit: str
    url: str


# -- reading the pin -------------------------------------------------------------------


def pin_of(commit, repo_url):
    """The Pin of a config repo commit (a git.Commit), or None if it pins no minicl (no gitlink at
    ``minicl`` and no .gitmodules section for it). ``repo_url``: the config repo's URL, which a
    relative url is resolved against. Raises PinError (every problem, one line each) if the pin
    is inconsistent."""
    try:
        entry = commit.tree / PIN_PATH
    except KeyError:
        kind, sha = None, None
    else:
        kind, sha = _kind(entry.mode), entry.hexsha
    try:
        sections = _commit_gitmodules(commit)
    except PinError:
        if kind != "gitlink":
            return None  # nothing pinned, whatever else .gitmodules holds: as before pins
        raise
    pin, problems = _pin(kind, sha, sections)
    if not problems and pin is not None:
        try:
            pin = pin._replace(url=resolve_url(pin.url, repo_url))
        except PinError as exc:
            problems = [str(exc)]
    if problems:
        raise PinError("\n".join(problems))
    return pin


def _kind(mode):
    if mode == GITLINK_MODE:
        return "gitlink"
    return "folder" if mode & 0o170000 == 0o040000 else "file"


def _commit_gitmodules(commit):
    try:
        blob = commit.tree / ".gitmodules"
    except KeyError:
        return {}
    if blob.type != "blob":
        return {}
    try:
        listing = commit.repo.git.config("--blob", f"{commit.hexsha}:.gitmodules", "-z", "--list")
    except git.GitCommandError as exc:
        raise PinError(_unreadable(git_error_text(exc))) from exc
    return _parse_config(listing)


def _unreadable(why):
    return f".gitmodules: cannot be read ({why}); fix it (git config -f .gitmodules --list shows where)"


def _parse_config(listing):
    """{submodule name: {variable: value}} from ``git config -z --list`` of a .gitmodules."""
    sections = {}
    for record in listing.split("\0"):
        key, _, value = record.partition("\n")
        section, _, rest = key.partition(".")
        name, _, variable = rest.rpartition(".")
        if section == "submodule" and name:
            sections.setdefault(name, {})[variable] = value  # the last one wins, as in git
    return sections


def _pin(kind, sha, sections):
    """(Pin with the url as written, or None; [problem, ...]) of what is at ``minicl`` (``kind``:
    "gitlink", "folder", "file" or None, ``sha``) and the .gitmodules ``sections``."""
    named = [name for name, values in sections.items() if values.get("path", "").rstrip("/") == PIN_PATH]
    if kind != "gitlink":
        if not named:
            return None, []
        found, remove = {
            "folder": ("minicl is a folder of files in the repo", f"git rm -r {PIN_PATH} && "),
            "file": ("minicl is a file in the repo", f"git rm {PIN_PATH} && "),
            None: ("the repo has nothing at minicl", ""),
        }[kind]
        return None, [
            f'.gitmodules: submodule "{name}" has path = {PIN_PATH}, but {found}, not a pinned '
            f"commit (a git submodule); pin minicl with {remove}git submodule add {_URL_HINT} "
            f"{PIN_PATH}, or remove the section: git config -f .gitmodules --remove-section "
            f"submodule.{name} && git add .gitmodules"
            for name in named
        ]
    if not named:
        return None, [
            f"{PIN_PATH}: pinned at {sha[:12]} (a git submodule), but .gitmodules has no "
            f"submodule with path = {PIN_PATH}, so the hosts cannot know where to fetch it from; "
            f"add one: {_ADD_SECTION}"
        ]
    if len(named) > 1:
        listed = ", ".join(f'"{name}"' for name in named)
        return None, [
            f".gitmodules: submodules {listed} all have path = {PIN_PATH}; keep one "
            f"(git config -f .gitmodules --remove-section submodule.NAME && git add .gitmodules)"
        ]
    name = named[0]
    url = sections[name].get("url", "")
    if not url:
        return None, [
            f'.gitmodules: submodule "{name}" (path = {PIN_PATH}) has no url, so the hosts cannot '
            f"know where to fetch the pinned minicl from; set it: git config -f .gitmodules "
            f"submodule.{name}.url {_URL_HINT} && git add .gitmodules"
        ]
    if url.startswith("-"):
        return None, [
            f'.gitmodules: submodule "{name}": its url starts with "-", which git refuses as a url; '
            f"set minicl's repository URL (git config -f .gitmodules submodule.{name}.url "
            f"{_URL_HINT} && git add .gitmodules)"
        ]
    return Pin(sha, url), []


# -- a relative url, as git resolves it -------------------------------------------------


def resolve_url(url, base):
    """``url`` of a .gitmodules as git resolves it: ``./x`` and ``../x`` relative to ``base``, the
    URL of the repo that holds it (ssh://, scp-like ``user@host:path``, file:// or a path); any
    other url as it is. Raises PinError if ``url`` climbs above what ``base`` has."""
    if not url.startswith(("./", "../")):
        return url
    remote = base[:-1] if base.endswith("/") else base
    relative = _is_local(remote) and not os.path.isabs(remote)
    if relative and not remote.startswith(("./", "../")):
        remote = "./" + remote
    rest, colon = url, False
    while True:
        if rest.startswith("../"):
            rest = rest[3:]
            remote, chopped_at_colon = _chop_last_part(remote, relative, url, base)
            colon |= chopped_at_colon
        elif rest.startswith("./"):
            rest = rest[2:]
        else:
            break
    resolved = f"{remote}{':' if colon else '/'}{rest}"
    if rest.endswith("/"):
        resolved = resolved[:-1]
    return resolved[2:] if resolved.startswith("./") else resolved


def _is_local(url):
    """git's url_is_local_not_ssh: no ``host:`` before the first slash."""
    colon, slash = url.find(":"), url.find("/")
    return colon < 0 or 0 <= slash < colon


def _chop_last_part(remote, relative, url, base):
    """``remote`` without its last path part, and whether it was cut at a colon (scp-like)."""
    if "/" in remote:
        return remote[: remote.rindex("/")], False
    if ":" in remote:
        return remote[: remote.rindex(":")], True
    if relative or remote == ".":
        raise PinError(
            f".gitmodules: url {safe_url(url)} of {PIN_PATH} climbs above the config repo's URL "
            f"{safe_url(base)}; fix the url (fewer ../, or a full URL)"
        )
    return ".", False


# -- the mirror of minicl's repository ---------------------------------------------------


class SourceMirror:
    """The bare repo at ``path`` holding the pinned minicl commits, fetched from ``url`` (its
    remote "origin"; created like the config repo's mirror: objects fsck-checked, a damaged one
    re-created). Each commit ``ensure`` got is kept by a ref ``refs/pins/<sha>``, so git gc never
    drops it even if no branch holds it any more. Fetching is done under the update lock."""

    def __init__(self, path, url):
        self.path = path
        self.url = url

    def has(self, commit):
        """Whether the commit (a sha) is in the mirror (no network)."""
        if not os.path.isdir(self.path):
            return False
        try:
            git.Repo(self.path).git.cat_file("-e", f"{commit}^{{commit}}")
        except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError):
            return False
        return True

    def ensure(self, commit, ssh_command, timeout):
        """Have the commit (a sha) in the mirror: at once if it is there already, else fetched
        (every branch and tag, then the sha itself). ``ssh_command``: the GIT_SSH_COMMAND; git is
        killed after 4 x ``timeout`` seconds. Raises PinFetchError if it cannot be fetched (the
        network, access, or PinNotFound: the repository does not have it). Call it under the
        config repo's update lock (``ConfigRepo.locked()``): it removes *.lock files as stale."""
        if not _SHA.fullmatch(commit):
            raise PinError(f"{PIN_PATH}: {commit!r} is not a commit sha; a pin is the full sha of a commit")
        try:
            if self.has(commit):
                remove_stale_locks(self.path)
                self._keep(git.Repo(self.path), commit)
                return
            fetch_recreating(self.path, lambda: self._fetch(commit, ssh_command, timeout))
        except git.GitCommandError as exc:
            raise PinFetchError(commit, self.url, git_error_text(exc)) from exc

    def _fetch(self, commit, ssh_command, timeout):
        repo = bare_repo(self.path, self.url)
        env = {"GIT_SSH_COMMAND": ssh_command, "GIT_TERMINAL_PROMPT": "0"}
        said = ""
        with repo.git.custom_environment(**env):
            repo.git.fetch(
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
                kill_after_timeout=timeout * 4,
            )
            if not self.has(commit):  # on no branch or tag: servers may still give it by its sha
                try:
                    repo.git.fetch("origin", commit, kill_after_timeout=timeout * 4)
                except git.GitCommandError as exc:
                    said = git_error_text(exc)
        if not self.has(commit):
            raise PinNotFound(commit, self.url, said)
        self._keep(repo, commit)

    @staticmethod
    def _keep(repo, commit):
        repo.git.update_ref(f"refs/pins/{commit}", commit)

    def export(self, commit, dest):
        """Write the files of the commit (a sha in the mirror: see ``ensure``) to ``dest``, a new
        folder; a failure leaves none (``minicl.checkouts.write_tree``)."""
        if os.path.lexists(dest):
            raise FileExistsError(
                errno.EEXIST, "already exists; minicl writes the pinned files to a new folder", dest
            )
        try:
            tree = git.Repo(self.path).commit(commit).tree
        except (
            ValueError,
            git.BadName,
            git.BadObject,
            git.InvalidGitRepositoryError,
            git.NoSuchPathError,
        ) as exc:
            raise PinError(
                f"minicl {commit[:12]} is not in {self.path} ({type(exc).__name__}); fetch it first (ensure)"
            ) from exc
        write_tree(tree, dest, 0o755)


# -- a pin on a workstation: minicl validate -----------------------------------------------


def worktree_problems(repo_dir, staged=False):
    """The problems of the minicl pin of the git work tree whose top is ``repo_dir``, one line
    each, as ``minicl validate`` prints them; [] if it pins none or is not the top of a work tree.

    The pin is the index's entry at ``minicl`` and .gitmodules (the file in the work tree, or
    with ``staged`` the staged one). With ``staged`` (the pre-commit hook), a checked-out
    submodule must also be at the staged commit, hold it, and have no uncommitted changes."""
    if not os.path.exists(os.path.join(repo_dir, ".git")):
        return []
    listed = _git(repo_dir, "ls-files", "--stage", "-z", "--", PIN_PATH, ".gitmodules")
    if listed.returncode != 0:
        return []  # not a work tree git can read: the cluster.json checks say so if it matters
    kind, sha, gitmodules_staged = None, None, False
    for record in filter(None, listed.stdout.split("\0")):
        info, _, path = record.partition("\t")
        mode, object_sha = info.split()[:2]
        if path == ".gitmodules":
            gitmodules_staged = True
        elif path == PIN_PATH:
            kind, sha = _kind(int(mode, 8)), object_sha
        elif kind is None:
            kind = "folder"
    if staged:
        source = ("--blob", ":.gitmodules") if gitmodules_staged else None
    else:
        source = ("-f", ".gitmodules") if os.path.isfile(os.path.join(repo_dir, ".gitmodules")) else None
    sections = {}
    if source:
        read = _git(repo_dir, "config", *source, "-z", "--list")
        if read.returncode != 0:
            return [_unreadable(_stderr_text(read))] if kind == "gitlink" else []
        sections = _parse_config(read.stdout)
    _pin_found, problems = _pin(kind, sha, sections)
    if problems or kind != "gitlink" or not staged:
        return problems
    return _checkout_problems(repo_dir, sha)


def _checkout_problems(repo_dir, sha):
    """Problems of the submodule's checkout against the staged pin ``sha``."""
    status = _git(repo_dir, "submodule", "status", "--", PIN_PATH)
    if status.returncode != 0:
        return [f"{PIN_PATH}: git submodule status failed: {_stderr_text(status)}"]
    line = status.stdout.strip("\n")
    state = line[:1]
    if state == "-":
        return []  # not checked out here: the staged gitlink is the pin
    if state == "U":
        return [
            f"{PIN_PATH}: the pin has a merge conflict; check out the commit to pin in minicl "
            f"(git -C {PIN_PATH} checkout <commit>), then git add {PIN_PATH}"
        ]
    problems = []
    if state == "+":
        head = line[1:].split()[0] if line[1:].split() else "?"
        problems.append(
            f"{PIN_PATH}: the submodule has {head[:12]} checked out but {sha[:12]} is staged as the "
            f"pin; run git add {PIN_PATH} to pin the checked-out commit, or git submodule update "
            f"{PIN_PATH} to go back"
        )
    dirty = _git(os.path.join(repo_dir, PIN_PATH), "status", "--porcelain", "-z", submodule=True)
    changed = _changed_paths(dirty.stdout)
    if dirty.returncode != 0:
        problems.append(f"{PIN_PATH}: git status failed in the submodule: {_stderr_text(dirty)}")
    elif changed:
        what = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        problems.append(
            f"{PIN_PATH}: the submodule has uncommitted changes ({what}); commit them in minicl's "
            f"repository and push, then git add {PIN_PATH}"
        )
    has = _git(os.path.join(repo_dir, PIN_PATH), "cat-file", "-e", f"{sha}^{{commit}}", submodule=True)
    if has.returncode != 0:
        problems.append(
            f"{PIN_PATH}: the staged pin {sha[:12]} is not a commit of minicl's repository in "
            f"{PIN_PATH}/; fetch it there (git -C {PIN_PATH} fetch) or pin a commit it has "
            f"(git -C {PIN_PATH} checkout <commit> && git add {PIN_PATH})"
        )
    return problems


def _changed_paths(porcelain):
    """The paths of ``git status --porcelain -z`` (a rename's or copy's source left out)."""
    paths, records = [], iter(porcelain.split("\0"))
    for record in records:
        if len(record) > 3:
            paths.append(record[3:])
            if record[0] in "RC":
                next(records, None)
    return paths


def _git(cwd, *args, submodule=False):
    env = None
    if submodule:
        env = {key: value for key, value in os.environ.items() if key not in _LOCAL_ENV}
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, errors="replace", check=False
        )
    except OSError as exc:  # no git here
        return subprocess.CompletedProcess(args, 127, "", str(exc))


def _stderr_text(done):
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return " / ".join(lines[-2:]) or f"exit status {done.returncode}"
