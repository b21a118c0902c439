"""ConfigRepo against local file:// remotes: fetch, validate, atomic switch, last good, lock."""

import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess

import pytest

from minicl.configrepo import KEEP_CHECKOUTS, ConfigRepo, NoGoodCommit, safe_url
from minicl.pin import PinError

EXAMPLE = pathlib.Path(__file__).parents[2] / "cluster.json.example"


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def remote(tmp_path):
    path = tmp_path / "remote"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@example.org")
    return path


def commit(remote, files, message="change"):
    for name, text in files.items():
        target = remote / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(remote, "add", "-A")
    git(remote, "commit", "-q", "--allow-empty", "-m", message)
    return git(remote, "rev-parse", "HEAD")


def example(**changes):
    data = json.loads(EXAMPLE.read_text())
    data.update(changes)
    return json.dumps(data)


@pytest.fixture
def repo(tmp_path, remote):
    return ConfigRepo(str(tmp_path / "cache"), f"file://{remote}")


def test_good_commit_goes_live(repo, remote):
    sha = commit(remote, {"cluster.json": example()}, "first")
    status = repo.update()
    assert status["commit"] == sha and "error" not in status
    assert status["commit_subject"] == "first"
    assert status["last_good_fetch"] == status["checked_at"]
    assert repo.live_commit() == sha
    assert os.path.islink(repo.live_path)
    assert repo.live_cluster().domain == "example.org"
    assert json.loads(pathlib.Path(repo.status_path).read_text())["commit"] == sha


def test_private_files(repo, remote):
    commit(remote, {"cluster.json": example(), "deploy.key": "secret"})
    repo.update()
    assert os.stat(repo.cache_dir).st_mode & 0o077 == 0
    assert os.stat(repo.status_path).st_mode & 0o077 == 0


def test_nothing_fetched_yet_raises_with_advice(repo):
    with pytest.raises(NoGoodCommit, match="no valid commit of the config repo"):
        repo.live_cluster()


def test_unreachable_remote_keeps_nothing_and_says_why(tmp_path):
    repo = ConfigRepo(str(tmp_path / "cache"), f"file://{tmp_path}/does-not-exist")
    status = repo.update()
    assert "failed" in status["error"] and "does-not-exist" in status["error"]
    with pytest.raises(NoGoodCommit, match="Last error: fetching"):
        repo.live_cluster()


def test_invalid_commit_keeps_last_good(repo, remote):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    bad = commit(remote, {"cluster.json": example(admin_email="")}, "bad")
    status = repo.update()
    assert repo.live_commit() == good
    assert status["commit"] == good
    assert status["bad_commit"] == bad
    assert f"commit {bad[:12]} is invalid" in status["error"]
    assert f"cluster.json@{bad[:12]}: admin_email: must not be empty" in status["error"]
    fixed = commit(remote, {"cluster.json": example(admin_email="x@example.org")}, "fixed")
    status = repo.update()
    assert status["commit"] == fixed and "bad_commit" not in status and "error" not in status


def test_missing_cluster_json_is_invalid(repo, remote):
    bad = commit(remote, {"README": "no config here"})
    status = repo.update()
    assert status["bad_commit"] == bad
    assert "cluster.json" in status["error"] and "missing" in status["error"]


def test_roles_are_checked_against_the_commit(repo, remote):
    data = json.loads(example())
    data["hosts"]["alpha"]["roles"] = ["base", "web"]
    bad = commit(remote, {"cluster.json": json.dumps(data)})
    status = repo.update()
    assert status["bad_commit"] == bad
    assert 'role "web" has no roles/web/init.sls' in status["error"]
    good = commit(remote, {"roles/web/init.sls": "{}\n"})
    assert repo.update()["commit"] == good
    assert (pathlib.Path(repo.live_path) / "roles/web/init.sls").exists()


def test_secrets_never_in_status(repo, remote):
    data = json.loads(example())
    data["users"]["bob"]["passwd"] = "plain-text-password"
    data["smtp"]["password"] = 12345
    commit(remote, {"cluster.json": json.dumps(data)})
    status = repo.update()
    assert "plain-text-password" not in status["error"]
    assert "12345" not in status["error"]
    assert "users.bob.passwd" in status["error"] and "smtp.password" in status["error"]


def test_old_checkouts_are_pruned(repo, remote):
    shas = []
    for n in range(KEEP_CHECKOUTS + 3):
        shas.append(commit(remote, {"cluster.json": example(admin_email=f"a{n}@example.org")}))
        repo.update()
    kept = sorted(os.listdir(repo.checkouts_dir))
    assert len(kept) == KEEP_CHECKOUTS
    assert shas[-1] in kept and shas[-2] in kept


def test_same_commit_does_not_reexport(repo, remote):
    commit(remote, {"cluster.json": example()})
    repo.update()
    target = os.readlink(repo.live_path)
    marker = pathlib.Path(repo.cache_dir, target, "marker")
    marker.write_text("x")
    repo.update()
    assert marker.exists()


def test_branch_is_followed(tmp_path, remote):
    commit(remote, {"cluster.json": example()})
    git(remote, "checkout", "-q", "-b", "staging")
    sha = commit(remote, {"cluster.json": example(admin_email="staging@example.org")})
    git(remote, "checkout", "-q", "main")
    repo = ConfigRepo(str(tmp_path / "cache"), f"file://{remote}", branch="staging")
    assert repo.update()["commit"] == sha


def test_missing_branch_is_an_error(tmp_path, remote):
    commit(remote, {"cluster.json": example()})
    repo = ConfigRepo(str(tmp_path / "cache"), f"file://{remote}", branch="nope")
    assert "failed" in repo.update()["error"]


def _update_many(args):
    cache, url, rounds = args
    repo = ConfigRepo(cache, url)
    return [repo.update().get("error") for _ in range(rounds)]


def test_concurrent_runs_never_corrupt_the_checkout(tmp_path, remote):
    for n in range(3):
        commit(remote, {"cluster.json": example(admin_email=f"a{n}@example.org")})
    cache = str(tmp_path / "cache")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_update_many, [(cache, f"file://{remote}", 5)] * 4)
    assert all(error is None for errors in results for error in errors)
    repo = ConfigRepo(cache, f"file://{remote}")
    assert repo.live_commit() == git(remote, "rev-parse", "HEAD")
    assert repo.live_cluster().data["admin_email"] == "a2@example.org"
    assert not [n for n in os.listdir(repo.checkouts_dir) if n.endswith(".tmp")]


def test_lock_wait_times_out_with_a_clear_error(repo, remote):
    commit(remote, {"cluster.json": example()})
    with repo.locked():
        status = repo.update(lock_wait=0.2)
    assert "another minicl run has held" in status["error"]


def test_ssh_command_is_strict_and_uses_only_the_deploy_key(tmp_path):
    repo = ConfigRepo(str(tmp_path), "ssh://git@h/x", deploy_key="/k", known_hosts="/kh", timeout=7)
    cmd = repo.ssh_command()
    assert "StrictHostKeyChecking=yes" in cmd and "BatchMode=yes" in cmd
    assert "-i /k -o IdentitiesOnly=yes" in cmd and "UserKnownHostsFile=/kh" in cmd
    assert "ConnectTimeout=7" in cmd
    assert "StrictHostKeyChecking=accept-new" in repo.ssh_command(accept_new_host_key=True)


def test_safe_url_hides_passwords():
    assert safe_url("https://u:tok@git.example.org/r.git") == "https://u:***@git.example.org/r.git"
    assert safe_url("ssh://git@h/r") == "ssh://git@h/r"


def test_live_folder_created_by_salt_is_replaced(repo, remote):
    os.makedirs(repo.live_path)  # what Salt does for a missing file_roots entry
    sha = commit(remote, {"cluster.json": example()})
    assert repo.update()["commit"] == sha
    assert os.path.islink(repo.live_path)


def _hold_runs_lock_in_other_process(path, ready, release):
    import fcntl as _fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    _fcntl.flock(fd, _fcntl.LOCK_SH)
    ready.set()
    release.wait(30)


def test_live_does_not_move_under_another_run(repo, remote):
    first = commit(remote, {"cluster.json": example()})
    repo.update()
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_runs_lock_in_other_process, args=(repo.runs_lock_path, ready, release))
    other.start()
    try:
        assert ready.wait(10)
        second = commit(remote, {"cluster.json": example(admin_email="new@example.org")})
        status = repo.update()
        assert repo.live_commit() == first and status["commit"] == first
        assert status["pending_commit"] == second and "error" not in status
    finally:
        release.set()
        other.join(10)
    status = repo.update()
    assert repo.live_commit() == second and status["commit"] == second and "pending_commit" not in status


def test_tree_is_exported_exactly(repo, remote):
    commit(
        remote,
        {
            "cluster.json": example(),
            "roles/web/init.sls": "x: {}\n",
            ".gitattributes": "roles/** export-ignore\n*.sls text eol=crlf\n",
            "roles/web/run.sh": "#!/bin/sh\n",
        },
    )
    (remote / "roles/web/run.sh").chmod(0o755)
    os.symlink("init.sls", remote / "roles/web/alias.sls")
    sha = commit(remote, {})
    repo.update()
    live = pathlib.Path(repo.checkouts_dir, sha)
    assert (live / "roles/web/init.sls").read_bytes() == b"x: {}\n"  # no export-ignore, no eol filter
    assert os.access(live / "roles/web/run.sh", os.X_OK)
    assert os.readlink(live / "roles/web/alias.sls") == "init.sls"


@pytest.mark.parametrize("link", ["/etc/shadow", "../../outside", "../.."])
def test_symlink_out_of_the_tree_makes_the_commit_invalid(repo, remote, link):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    (remote / "roles").mkdir()
    os.symlink(link, remote / "roles/evil")
    bad = commit(remote, {})
    status = repo.update()
    assert status["bad_commit"] == bad and repo.live_commit() == good
    assert "points outside the repo" in status["error"]
    assert not [n for n in os.listdir(repo.checkouts_dir) if n.endswith(".tmp")]


def test_unexpected_failure_keeps_the_last_good_commit(repo, remote):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    commit(remote, {"cluster.json": example(admin_email="new@example.org")})
    os.rename(repo.checkouts_dir, repo.checkouts_dir + ".moved")
    pathlib.Path(repo.checkouts_dir).write_text("in the way")  # the export cannot make its folder
    status = repo.update()
    assert status["error"].startswith("updating the config repo failed: FileExistsError")
    assert repo.live_commit() == good and status["commit"] == good


def test_cache_dir_is_made_private_even_if_it_existed(tmp_path, remote):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    commit(remote, {"cluster.json": example()})
    ConfigRepo(str(cache), f"file://{remote}").update()
    assert cache.stat().st_mode & 0o777 == 0o700


def test_a_reverted_commit_is_not_pruned_first(repo, remote):
    a = commit(remote, {"cluster.json": example(admin_email="a@example.org")})
    repo.update()
    for n in range(KEEP_CHECKOUTS):
        commit(remote, {"cluster.json": example(admin_email=f"x{n}@example.org")})
        repo.update()
    git(remote, "reset", "-q", "--hard", a)  # force-push back to a: its checkout was pruned
    repo.update()
    assert repo.live_commit() == a
    b = commit(remote, {"cluster.json": example(admin_email="b@example.org")})
    repo.update()
    assert a in os.listdir(repo.checkouts_dir) and repo.live_commit() == b


# -- faults: render checks, disk space, bounded errors, verdicts, branch moves ----------------


class FakeCheck:
    """A render check that reports ``problems`` for every commit; counts its calls."""

    key = "fake"

    def __init__(self, problems=None):
        self.problems = problems or {}
        self.calls = []

    def __call__(self, checkout, cluster):
        self.calls.append((os.path.basename(checkout), cluster.commit))
        return dict(self.problems)


def test_a_commit_that_does_not_render_here_is_a_bad_commit(repo, remote):
    good = commit(remote, {"cluster.json": example()})
    repo.update(check=FakeCheck())
    bad = commit(remote, {"roles/web/init.sls": "{% if %}\n"})
    check = FakeCheck({"roles.web": "roles/web/init.sls: Rendering SLS 'base:roles.web' failed: line 1"})
    status = repo.update(check=check)
    assert repo.live_commit() == good and status["bad_commit"] == bad
    assert status["error"] == (
        f"commit {bad[:12]} does not render on this host and was not applied:\n"
        "roles/web/init.sls: Rendering SLS 'base:roles.web' failed: line 1"
    )
    assert check.calls == [(bad, bad)]
    # Judged once: the next runs neither validate nor render it again, and keep saying why.
    again = repo.update(check=check)
    assert check.calls == [(bad, bad)] and again["error"] == status["error"]


def test_render_verdicts_follow_the_check_key(repo, remote):
    commit(remote, {"cluster.json": example()})
    check = FakeCheck()
    repo.update(check=check)
    repo.update(check=check)
    assert len(check.calls) == 1  # the live commit's verdict is remembered
    check.key = "grains changed"
    repo.update(check=check)
    assert len(check.calls) == 2


def test_live_roles_that_stop_rendering_are_left_out(repo, remote):
    live = commit(remote, {"cluster.json": example()})
    repo.update(check=FakeCheck())
    problems = {"roles.web": "roles/web/init.sls: boom", "minicl.base": "SLS minicl.base: boom"}
    changed = FakeCheck(problems)
    changed.key = "grains changed"
    status = repo.update(check=changed)
    assert repo.live_commit() == live
    assert status["skipped_states"] == ["roles.web"]  # never minicl's own
    assert "roles/web/init.sls: boom" in status["error"] and "SLS minicl.base: boom" in status["error"]
    fine = FakeCheck()
    fine.key = "grains back"
    status = repo.update(check=fine)
    assert "skipped_states" not in status and "error" not in status


def test_an_unchanged_live_commit_is_not_validated_again(repo, remote, monkeypatch):
    commit(remote, {"cluster.json": example()})
    repo.update()
    import minicl.configrepo as configrepo

    def no_validation(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(configrepo, "load_cluster", no_validation)
    repo.update()
    assert repo.live_cluster().domain == "example.org"
    monkeypatch.setattr(configrepo.release, "fingerprint", lambda: "other code")
    with pytest.raises(AssertionError, match="validated again"):
        repo.live_cluster()


def test_a_flood_of_problems_is_bounded(repo, remote):
    commit(remote, {"cluster.json": example()})
    repo.update()
    data = json.loads(example())
    for n in range(3000):
        data["users"][f"u{n}"] = {"uid": 10 + n}
    bad = commit(remote, {"cluster.json": json.dumps(data)})
    status = repo.update()
    assert status["bad_commit"] == bad
    lines = status["error"].splitlines()
    assert len(lines) == 22  # the headline, 20 problems, the count of the rest
    assert lines[-1].startswith("... and ") and lines[-1].endswith(
        "more problems ('minicl validate cluster.json' in a checkout lists them all)"
    )


def test_no_room_for_an_export_is_refused_before_writing(repo, remote, monkeypatch):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    big = commit(remote, {"roles/web/big.txt": "x" * 2**20})
    from minicl import checkouts

    class Usage:
        free = checkouts.RESERVE_BYTES + 2**19

    monkeypatch.setattr(checkouts.shutil, "disk_usage", lambda path: Usage)
    status = repo.update()
    assert repo.live_commit() == good and "bad_commit" not in status
    assert status["error"].startswith(
        f"updating the config repo failed: not enough disk space to write commit {big[:12]} to "
        f"{repo.checkouts_dir}: its files need 1.0 MB and 32.0 MB are kept free, but only 32.5 MB are free"
    )
    assert sorted(os.listdir(repo.checkouts_dir)) == [good]


def test_a_failed_export_leaves_no_staging_folder(repo, remote, monkeypatch):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    commit(remote, {"roles/web/init.sls": "x: {}\n"})
    from minicl import checkouts

    def full_disk(tree, root):
        raise OSError(28, "No space left on device", os.path.join(root, "roles", "web", "init.sls"))

    monkeypatch.setattr(checkouts, "export_tree", full_disk)
    status = repo.update()
    assert repo.live_commit() == good
    assert "OSError: [Errno 28] No space left on device (" in status["error"]
    assert "/roles/web/init.sls); " in status["error"] and " MB free there" in status["error"]
    assert sorted(os.listdir(repo.checkouts_dir)) == [good]


def test_staging_left_by_a_killed_run_is_removed(repo, remote):
    commit(remote, {"cluster.json": example()})
    repo.update()
    leftover = os.path.join(repo.checkouts_dir, "0123abcd.tmp")
    os.makedirs(os.path.join(leftover, "roles"))
    repo.update()
    assert not os.path.exists(leftover)


def test_a_status_that_cannot_be_written_still_reaches_the_run(repo, remote, monkeypatch):
    from minicl import configrepo, statusrecord

    commit(remote, {"cluster.json": example()})
    repo.update()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", repo.status_path)

    monkeypatch.setattr(statusrecord, "write_file", full)
    commit(remote, {"cluster.json": "{"})
    status = repo.update()
    assert "is invalid" in status["error"]
    assert configrepo.last_status(repo.cache_dir) is status
    assert "error" not in repo.status()  # the file keeps the older record


def test_a_branch_moved_back_is_applied_and_said(repo, remote):
    old = commit(remote, {"cluster.json": example()})
    repo.update()
    newer = commit(remote, {"notes.txt": "x"})
    assert repo.update()["commit"] == newer and "notice" not in repo.status()
    git(remote, "reset", "-q", "--hard", old)
    status = repo.update()
    assert status["commit"] == old
    assert status["notice"] == f"branch main moved back from {newer[:12]} to {old[:12]}; applied {old[:12]}"
    git(remote, "commit", "-q", "--allow-empty", "-m", "rewritten")
    rewritten = commit(remote, {"notes.txt": "y"})
    assert repo.update()["commit"] == rewritten and "notice" not in repo.status()
    git(remote, "checkout", "-q", "--orphan", "other")
    other = commit(remote, {"cluster.json": example()})
    git(remote, "branch", "-q", "-f", "main", other)
    status = repo.update()
    assert status["notice"] == (
        f"branch main was rewritten (force-push) from {rewritten[:12]} to {other[:12]}; applied {other[:12]}"
    )


def test_a_damaged_mirror_is_recreated_in_the_same_run(repo, remote, caplog):
    commit(remote, {"cluster.json": example()})
    repo.update()
    ref = os.path.join(repo.mirror_dir, "refs", "remotes", "origin", "main")
    pathlib.Path(ref).write_text("garbage\n")
    pathlib.Path(ref + ".lock").write_text("")
    new = commit(remote, {"notes.txt": "x"})
    status = repo.update()
    assert status["commit"] == new and "error" not in status
    assert "is damaged" in caplog.text and "removing stale git lock" in caplog.text
    caplog.clear()
    assert repo.update()["commit"] == new and "is damaged" not in caplog.text


def test_an_unreachable_remote_leaves_the_mirror_alone(repo, remote, tmp_path):
    commit(remote, {"cluster.json": example()})
    repo.update()
    marker = os.path.join(repo.mirror_dir, "minicl-test-marker")
    pathlib.Path(marker).write_text("")
    os.rename(remote, tmp_path / "gone")
    status = repo.update()
    assert status["error"].startswith("fetching file://")
    assert os.path.exists(marker)  # not re-created


# --- the minicl the config repo pins (a git submodule at minicl) ---------------------------


@pytest.fixture
def minicl_source(tmp_path):
    """minicl's repository, next to the config repo's remote (so ../minicl-src reaches it)."""
    path = tmp_path / "minicl-src"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@example.org")
    commit(path, {"minicl/__init__.py": "VERSION = 1\n"}, "minicl 1")
    return path


def pin_minicl(remote, url):
    """Pin minicl as a submodule of the config repo; returns (config commit, pinned commit)."""
    git(remote, "-c", "protocol.file.allow=always", "submodule", "add", "-q", url, "minicl")
    git(remote, "commit", "-q", "-m", "pin minicl")
    return git(remote, "rev-parse", "HEAD"), git(remote, "rev-parse", "HEAD:minicl")


def test_without_a_pin_nothing_is_fetched(repo, remote):
    commit(remote, {"cluster.json": example(), "deploy.key": "k\n"})
    assert "error" not in repo.update()
    assert repo.live_pin() is None
    assert not os.path.exists(repo.source_mirror_dir)


def test_no_live_commit_has_no_pin(repo):
    assert repo.live_pin() is None


def test_the_pinned_minicl_is_fetched_before_the_commit_goes_live(repo, remote, minicl_source, tmp_path):
    commit(remote, {"cluster.json": example(), "deploy.key": "k\n"})
    config_sha, pinned = pin_minicl(remote, f"file://{minicl_source}")
    status = repo.update()
    assert status["commit"] == config_sha and "error" not in status
    pin = repo.live_pin()
    assert pin == (pinned, f"file://{minicl_source}")
    source = repo.source_mirror(pin)
    assert source.path == os.path.join(repo.cache_dir, "minicl.git") and source.has(pinned)
    source.export(pin.commit, str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "minicl" / "__init__.py").read_text() == "VERSION = 1\n"
    assert not (pathlib.Path(repo.live_path) / "minicl").exists()  # the config checkout leaves it out


def test_a_relative_pin_url_is_resolved_against_the_config_repo_url(repo, remote, minicl_source):
    commit(remote, {"cluster.json": example()})
    config_sha, pinned = pin_minicl(remote, "../minicl-src")
    assert repo.update()["commit"] == config_sha
    assert repo.live_pin() == (pinned, f"file://{minicl_source}")
    assert repo.source_mirror(repo.live_pin()).has(pinned)


def test_an_unreachable_pin_is_retried_and_not_a_bad_commit(repo, remote, minicl_source, tmp_path):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    config_sha, pinned = pin_minicl(remote, f"file://{minicl_source}")
    os.rename(minicl_source, tmp_path / "away")
    status = repo.update()
    assert status["commit"] == good and repo.live_commit() == good
    assert "bad_commit" not in status
    assert status["error"].startswith(
        f"commit {config_sha[:12]} pins minicl {pinned[:12]} which could not be fetched from "
        f"file://{minicl_source}: "
    )
    assert status["error"].endswith("; the last good commit keeps running")
    assert repo.live_pin() is None
    os.rename(tmp_path / "away", minicl_source)
    status = repo.update()
    assert status["commit"] == config_sha and "error" not in status
    assert repo.live_pin().commit == pinned


def test_a_pin_that_was_not_pushed_is_retried_once_pushed(repo, remote, minicl_source, tmp_path):
    commit(remote, {"cluster.json": example()})
    clone = tmp_path / "workstation-minicl"
    git(tmp_path, "clone", "-q", str(minicl_source), str(clone))
    git(clone, "config", "user.name", "t")
    git(clone, "config", "user.email", "t@example.org")
    unpushed = commit(clone, {"minicl/__init__.py": "VERSION = 2\n"}, "minicl 2")
    git(
        remote,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        f"file://{minicl_source}",
        "minicl",
    )
    git(remote, "update-index", "--cacheinfo", f"160000,{unpushed},minicl")
    git(remote, "commit", "-q", "-m", "pin an unpushed minicl")
    config_sha = git(remote, "rev-parse", "HEAD")
    status = repo.update()
    assert repo.live_commit() is None and "bad_commit" not in status
    assert f"pins minicl {unpushed[:12]} which could not be fetched" in status["error"]
    assert "(was it pushed?)" in status["error"]
    git(clone, "push", "-q", "origin", "HEAD:refs/heads/next")
    assert repo.update()["commit"] == config_sha
    assert repo.live_pin().commit == unpushed


def test_a_gitlink_without_gitmodules_is_a_bad_commit(repo, remote, minicl_source):
    good = commit(remote, {"cluster.json": example()})
    repo.update()
    pinned = git(minicl_source, "rev-parse", "HEAD")
    git(remote, "update-index", "--add", "--cacheinfo", f"160000,{pinned},minicl")
    git(remote, "commit", "-q", "-m", "gitlink only")
    bad = git(remote, "rev-parse", "HEAD")
    status = repo.update()
    assert status["commit"] == good and status["bad_commit"] == bad
    assert status["error"] == (
        f"commit {bad[:12]} is invalid and was not applied:\n"
        f"minicl: pinned at {pinned[:12]} (a git submodule), but .gitmodules has no submodule with "
        "path = minicl, so the hosts cannot know where to fetch it from; add one: "
        "git config -f .gitmodules submodule.minicl.path minicl && git config -f .gitmodules "
        "submodule.minicl.url <URL of minicl's repository> && git add .gitmodules"
    )
    assert not os.path.exists(repo.source_mirror_dir)


def test_live_pin_without_the_mirror_says_why(repo, remote, minicl_source):
    commit(remote, {"cluster.json": example()})
    config_sha, _ = pin_minicl(remote, f"file://{minicl_source}")
    repo.update()
    shutil.rmtree(repo.mirror_dir)
    with pytest.raises(
        PinError, match=f"the live commit {config_sha[:12]} cannot be read: .*mirror.git is missing"
    ):
        repo.live_pin()
    assert repo.update()["commit"] == config_sha
    assert repo.live_pin() is not None


def test_a_live_commit_whose_pin_was_never_fetched_gets_it_on_the_next_update(
    repo, remote, minicl_source, tmp_path
):
    # As on a host whose live commit went live under a minicl that did not fetch pins.
    commit(remote, {"cluster.json": example()})
    _, pinned = pin_minicl(remote, f"file://{minicl_source}")
    repo.update()
    shutil.rmtree(repo.source_mirror_dir)
    os.rename(minicl_source, tmp_path / "away")
    status = repo.update()
    assert (
        f"pins minicl {pinned[:12]}, which could not be fetched from file://{minicl_source}"
        in status["error"]
    )
    assert repo.live_commit() == status["commit"]  # the config commit keeps running
    os.rename(tmp_path / "away", minicl_source)
    assert "error" not in repo.update()
    assert repo.source_mirror(repo.live_pin()).has(pinned)
