"""minicl.pin: reading the pin from a config repo commit, resolving its url as git does, and the
SourceMirror that fetches and exports the pinned commit (real repos in tmp_path, file:// URLs)."""

import os
import subprocess

import git as gitpython
import pytest

from minicl import checkouts
from minicl.pin import Pin, PinError, PinFetchError, PinNotFound, SourceMirror, pin_of, resolve_url

TIMEOUT = 10


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "protocol.file.allow=always", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def new_repo(path):
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@example.org")
    return path


def commit(repo, files, message="change"):
    for name, text in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def source(tmp_path):
    """minicl's repository: one commit with a package and a script."""
    repo = new_repo(tmp_path / "minicl-src")
    commit(repo, {"minicl/__init__.py": "", "bin/tool": "#!/bin/sh\n"}, "minicl 1")
    (repo / "bin" / "tool").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "executable")
    return repo


@pytest.fixture
def config(tmp_path):
    repo = new_repo(tmp_path / "config")
    commit(repo, {"cluster.json": "{}\n", "deploy.key": "k\n"}, "config")
    return repo


def head(repo):
    return gitpython.Repo(repo).commit("HEAD")


def add_pin(config, url):
    git(config, "submodule", "add", "-q", url, "minicl")
    git(config, "commit", "-q", "-m", "pin minicl")
    return git(config, "rev-parse", "HEAD:minicl")


# --- pin_of ---------------------------------------------------------------------------


def test_no_pin_is_none(config):
    assert pin_of(head(config), f"file://{config}") is None


def test_a_gitmodules_without_minicl_is_no_pin(config, source):
    git(config, "submodule", "add", "-q", f"file://{source}", "vendor/other")
    git(config, "commit", "-q", "-m", "another submodule")
    assert pin_of(head(config), f"file://{config}") is None


def test_a_pin_gives_the_commit_and_url(config, source):
    sha = add_pin(config, f"file://{source}")
    assert sha == git(source, "rev-parse", "HEAD")
    assert pin_of(head(config), "ssh://git@example.org/config.git") == Pin(sha, f"file://{source}")


def test_a_relative_url_is_resolved_against_the_config_repo_url(config, source):
    sha = add_pin(config, "../minicl-src")
    assert "url = ../minicl-src" in (config / ".gitmodules").read_text()
    assert pin_of(head(config), f"file://{config}") == Pin(sha, f"file://{source}")
    assert pin_of(head(config), "git@example.org:ops/config.git").url == "git@example.org:ops/minicl-src"


def test_a_gitlink_without_gitmodules_is_inconsistent(config, source):
    sha = git(source, "rev-parse", "HEAD")
    git(config, "update-index", "--add", "--cacheinfo", f"160000,{sha},minicl")
    git(config, "commit", "-q", "-m", "gitlink only")
    with pytest.raises(PinError) as raised:
        pin_of(head(config), f"file://{config}")
    assert str(raised.value) == (
        f"minicl: pinned at {sha[:12]} (a git submodule), but .gitmodules has no submodule with "
        "path = minicl, so the hosts cannot know where to fetch it from; add one: "
        "git config -f .gitmodules submodule.minicl.path minicl && git config -f .gitmodules "
        "submodule.minicl.url <URL of minicl's repository> && git add .gitmodules"
    )


def test_a_section_without_url_is_inconsistent(config, source):
    add_pin(config, f"file://{source}")
    git(config, "config", "-f", ".gitmodules", "--unset", "submodule.minicl.url")
    git(config, "commit", "-q", "-am", "no url")
    with pytest.raises(PinError, match=r'^.gitmodules: submodule "minicl" \(path = minicl\) has no url, '):
        pin_of(head(config), f"file://{config}")


def test_a_section_for_a_plain_folder_is_inconsistent(config):
    commit(
        config,
        {".gitmodules": '[submodule "minicl"]\n\tpath = minicl\n\turl = ../minicl.git\n', "minicl/x.py": ""},
    )
    with pytest.raises(PinError) as raised:
        pin_of(head(config), f"file://{config}")
    assert str(raised.value) == (
        '.gitmodules: submodule "minicl" has path = minicl, but minicl is a folder of files in the repo, '
        "not a pinned commit (a git submodule); pin minicl with git rm -r minicl && git submodule add "
        "<URL of minicl's repository> minicl, or remove the section: git config -f .gitmodules "
        "--remove-section submodule.minicl && git add .gitmodules"
    )


def test_a_url_starting_with_a_dash_is_refused_and_its_password_hidden(config, source):
    add_pin(config, f"file://{source}")
    git(config, "config", "-f", ".gitmodules", "submodule.minicl.url", "-https://u:s3cret@example.org/m")
    git(config, "commit", "-q", "-am", "dash")
    with pytest.raises(PinError, match='starts with "-"') as raised:
        pin_of(head(config), f"file://{config}")
    assert "s3cret" not in str(raised.value)


def test_a_relative_url_above_the_config_repo_url_is_inconsistent(config, source):
    add_pin(config, f"file://{source}")
    git(config, "config", "-f", ".gitmodules", "submodule.minicl.url", "../../../minicl.git")
    git(config, "commit", "-q", "-am", "too far up")
    with pytest.raises(PinError, match="climbs above the config repo's URL config.git"):
        pin_of(head(config), "config.git")


# --- resolve_url, checked against git itself -----------------------------------------


@pytest.mark.parametrize(
    "base, url, expected",
    [
        ("ssh://git@example.org/ops/config.git", "../minicl.git", "ssh://git@example.org/ops/minicl.git"),
        ("ssh://git@example.org/ops/config.git", "../../tools/minicl", "ssh://git@example.org/tools/minicl"),
        ("ssh://git@example.org/ops/config.git/", "./minicl", "ssh://git@example.org/ops/config.git/minicl"),
        ("git@example.org:ops/config.git", "../minicl.git", "git@example.org:ops/minicl.git"),
        ("git@example.org:config.git", "../minicl.git", "git@example.org:minicl.git"),
        ("file:///srv/git/config.git", "../minicl.git", "file:///srv/git/minicl.git"),
        ("/srv/git/config", "../minicl.git", "/srv/git/minicl.git"),
        (
            "https://example.org/ops/config",
            "https://example.org/minicl.git",
            "https://example.org/minicl.git",
        ),
    ],
)
def test_resolve_url_as_git_does(tmp_path, base, url, expected):
    assert resolve_url(url, base) == expected
    # git's own answer: submodule init resolves a relative url against remote.origin.url
    repo = new_repo(tmp_path / "super")
    git(repo, "remote", "add", "origin", base)
    git(repo, "config", "-f", ".gitmodules", "submodule.minicl.path", "minicl")
    git(repo, "config", "-f", ".gitmodules", "submodule.minicl.url", url)
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},minicl")
    git(repo, "submodule", "init", "-q")
    assert git(repo, "config", "submodule.minicl.url") == expected


# --- SourceMirror ---------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path, source):
    return SourceMirror(str(tmp_path / "cache" / "minicl.git"), f"file://{source}")


def test_ensure_fetches_the_commit_and_keeps_it(mirror, source):
    sha = git(source, "rev-parse", "HEAD")
    assert not mirror.has(sha)
    mirror.ensure(sha, "ssh", TIMEOUT)
    assert mirror.has(sha)
    assert git(mirror.path, "rev-parse", f"refs/pins/{sha}") == sha
    assert git(mirror.path, "config", "fetch.fsckObjects") == "true"
    assert git(mirror.path, "config", "gc.autoDetach") == "false"


def test_ensure_of_a_commit_it_has_does_not_fetch(mirror, source, tmp_path):
    sha = git(source, "rev-parse", "HEAD")
    mirror.ensure(sha, "ssh", TIMEOUT)
    os.rename(source, tmp_path / "gone")
    mirror.ensure(sha, "ssh", TIMEOUT)  # no network needed
    assert mirror.has(sha)


def test_ensure_fetches_a_commit_on_no_branch_by_its_sha(mirror, source):
    git(source, "checkout", "-q", "-b", "topic")
    sha = commit(source, {"extra.py": ""}, "on a branch deleted later")
    git(source, "checkout", "-q", "main")
    git(source, "branch", "-q", "-D", "topic")
    mirror.ensure(sha, "ssh", TIMEOUT)
    assert mirror.has(sha)


def test_a_commit_the_repository_lacks_is_not_found(mirror, source, tmp_path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(source), str(clone))
    git(clone, "config", "user.name", "t")
    git(clone, "config", "user.email", "t@example.org")
    unpushed = commit(clone, {"new.py": ""}, "not pushed")
    with pytest.raises(PinNotFound) as raised:
        mirror.ensure(unpushed, "ssh", TIMEOUT)
    assert isinstance(raised.value, PinFetchError)
    assert str(raised.value).startswith(
        f"minicl {unpushed[:12]} could not be fetched from file://{source}: that repository has no "
        "such commit on any branch or tag (was it pushed?)"
    )
    git(clone, "push", "-q", "origin", "HEAD:refs/heads/pushed")
    mirror.ensure(unpushed, "ssh", TIMEOUT)
    assert mirror.has(unpushed)


def test_an_unreachable_repository_is_a_fetch_error(tmp_path):
    mirror = SourceMirror(str(tmp_path / "minicl.git"), f"file://{tmp_path}/does-not-exist")
    with pytest.raises(PinFetchError) as raised:
        mirror.ensure("1" * 40, "ssh", TIMEOUT)
    assert not isinstance(raised.value, PinNotFound)
    assert raised.value.why and "does-not-exist" in str(raised.value)


def test_a_password_in_the_url_is_never_shown(tmp_path):
    error = PinFetchError("1" * 40, "https://ops:s3cret@example.org/minicl.git", "refused")
    assert (
        str(error)
        == "minicl 111111111111 could not be fetched from https://ops:***@example.org/minicl.git: refused"
    )


def test_ensure_wants_a_full_sha(mirror):
    with pytest.raises(PinError, match="'main' is not a commit sha"):
        mirror.ensure("main", "ssh", TIMEOUT)


def test_a_damaged_mirror_is_recreated(mirror, source, caplog):
    first = git(source, "rev-parse", "HEAD")
    mirror.ensure(first, "ssh", TIMEOUT)
    with open(os.path.join(mirror.path, "HEAD"), "w") as f:
        f.write("garbage\n")
    second = commit(source, {"more.py": ""})
    mirror.ensure(second, "ssh", TIMEOUT)
    assert mirror.has(second) and mirror.has(first)
    assert "is damaged" in caplog.text


def test_export_writes_the_commit_tree(mirror, source, tmp_path):
    sha = git(source, "rev-parse", "HEAD")
    mirror.ensure(sha, "ssh", TIMEOUT)
    dest = tmp_path / "minicl-export"
    mirror.export(sha, str(dest))
    assert sorted(os.listdir(dest)) == ["bin", "minicl"]
    assert (dest / "bin" / "tool").read_text() == "#!/bin/sh\n"
    assert os.access(dest / "bin" / "tool", os.X_OK)
    assert not os.path.exists(f"{dest}.tmp")
    with pytest.raises(FileExistsError):
        mirror.export(sha, str(dest))


def test_a_failed_export_leaves_no_folder(mirror, source, tmp_path, monkeypatch):
    sha = git(source, "rev-parse", "HEAD")
    mirror.ensure(sha, "ssh", TIMEOUT)

    def fail(tree, root):
        (open(os.path.join(root, "half-written"), "w")).close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkouts, "export_tree", fail)
    dest = tmp_path / "minicl-export"
    with pytest.raises(OSError, match="No space left"):
        mirror.export(sha, str(dest))
    assert not dest.exists() and not os.path.exists(f"{dest}.tmp")


def test_export_of_a_commit_not_fetched_says_so(mirror, source, tmp_path):
    mirror.ensure(git(source, "rev-parse", "HEAD"), "ssh", TIMEOUT)
    with pytest.raises(PinError, match="is not in .*minicl.git .*fetch it first"):
        mirror.export("2" * 40, str(tmp_path / "dest"))
