"""``minicl validate`` (minicl.cli): a file, the staged cluster.json, and the pre-commit hook."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from minicl import cli

REPO_ROOT = Path(__file__).resolve().parents[2]
HOOK = REPO_ROOT / "pre-commit-hook"
# The console script installed next to the interpreter running the tests (pip install -e .).
MINICL_BIN = Path(sys.executable).parent / "minicl"

ROLE_WEB_MISSING = (
    'hosts.alpha.roles[1]: role "web" has no roles/web/init.sls in the config repo (add it, or fix the name)'
)
REFUSED = "minicl: commit refused; fix the above (or bypass with git commit --no-verify)"
NO_DEPLOY_KEY = (
    "deploy.key: missing from the commit; the hosts read the repo with it "
    "(ssh-keygen -t ed25519 -N '' -f deploy.key; git add deploy.key)"
)
SECRET_PASSWD = "my-plaintext-password"


@pytest.fixture
def good_text(example_text):
    return example_text


@pytest.fixture
def bad_data(example_data):
    """Example data with three problems (see BAD_LINES)."""
    example_data["users"]["bob"]["uid"] = 500
    example_data["users"]["bob"]["passwd"] = SECRET_PASSWD
    example_data["hosts"]["beta"]["ip"] = "127.0.0.1"
    return example_data


BAD_LINES = [
    "hosts.beta.ip: 127.0.0.1 is a loopback address, not a host address",
    "users.bob.passwd: is not a crypt hash ($y$, $6$, $5$, $2b$, ...) or a lock marker (! or *) (value hidden)",
    "users.bob.uid: 500 is in the system range (must be >= 1000)",
]


@pytest.fixture
def bad_text(bad_data):
    return json.dumps(bad_data, indent=2)


def with_role(data, role="web"):
    data["hosts"]["alpha"]["roles"] = ["base", role]
    return json.dumps(data, indent=2)


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- minicl validate PATH -----------------------------------------------------------------


def test_valid_file(tmp_path, capsys, good_text):
    path = tmp_path / "cluster.json"
    path.write_text(good_text)
    assert run_main(capsys, "validate", str(path)) == (0, f"{path}: valid\n", "")


def test_valid_file_quiet(tmp_path, capsys, good_text):
    path = tmp_path / "cluster.json"
    path.write_text(good_text)
    assert run_main(capsys, "validate", "--quiet", str(path)) == (0, "", "")
    assert run_main(capsys, "validate", "-q", str(path)) == (0, "", "")


def test_default_path_is_cluster_json_here(tmp_path, capsys, good_text, monkeypatch):
    (tmp_path / "cluster.json").write_text(good_text)
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, "validate") == (0, "cluster.json: valid\n", "")


def test_invalid_file_prints_every_problem_on_its_own_line(tmp_path, capsys, bad_text):
    path = tmp_path / "cluster.json"
    path.write_text(bad_text)
    code, out, err = run_main(capsys, "validate", str(path))
    assert code == 1
    assert out.splitlines() == [f"{path}: {line}" for line in BAD_LINES]
    assert out.endswith("\n")
    assert err == ""
    assert ": valid" not in out
    assert SECRET_PASSWD not in out


def test_invalid_file_here_is_named_cluster_json(tmp_path, capsys, bad_text, monkeypatch):
    (tmp_path / "cluster.json").write_text(bad_text)
    monkeypatch.chdir(tmp_path)
    for arg in ([], ["cluster.json"], ["./cluster.json"]):
        code, out, _ = run_main(capsys, "validate", *arg)
        assert code == 1
        assert out.splitlines() == [f"cluster.json: {line}" for line in BAD_LINES]


def test_invalid_file_quiet_still_prints_problems(tmp_path, capsys, bad_text):
    path = tmp_path / "cluster.json"
    path.write_text(bad_text)
    code, out, _ = run_main(capsys, "validate", "-q", str(path))
    assert code == 1
    assert len(out.splitlines()) == len(BAD_LINES)


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope" / "cluster.json"
    code, out, err = run_main(capsys, "validate", str(path))
    assert code == 1
    assert out == f"{path}: cannot read: No such file or directory\n"
    assert "Traceback" not in out + err


def test_directory_instead_of_file(tmp_path, capsys):
    code, out, err = run_main(capsys, "validate", str(tmp_path))
    assert code == 1
    assert out == f"{tmp_path}: cannot read: Is a directory\n"
    assert "Traceback" not in out + err


def test_file_not_utf8(tmp_path, capsys):
    path = tmp_path / "cluster.json"
    path.write_bytes(b'{"domain": "\xe9xample.org"}')
    code, out, err = run_main(capsys, "validate", str(path))
    assert code == 1
    assert out == f"{path}: not UTF-8 text (byte 12)\n"
    assert "Traceback" not in out + err


def test_syntax_error_names_line_and_column(tmp_path, capsys):
    path = tmp_path / "cluster.json"
    path.write_text('{\n "a" 1}\n')
    code, out, err = run_main(capsys, "validate", str(path))
    assert code == 1
    assert out == f"{path}: line 2, column 6: invalid JSON: Expecting ':' delimiter\n"
    assert "Traceback" not in out + err


def test_duplicate_key(tmp_path, capsys, good_text):
    path = tmp_path / "cluster.json"
    path.write_text(good_text.replace('"uid": 2002,', '"uid": 2002, "uid": 2003,'))
    code, out, _ = run_main(capsys, "validate", str(path))
    assert code == 1
    assert out == f'{path}: key "uid" appears more than once in one object\n'


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "cluster.json"
    path.write_text("")
    assert run_main(capsys, "validate", str(path)) == (
        1,
        f"{path}: line 1, column 1: invalid JSON: Expecting value\n",
        "",
    )


def test_role_checked_against_roles_dir_next_to_the_file(tmp_path, capsys, example_data):
    path = tmp_path / "cluster.json"
    path.write_text(with_role(example_data))
    code, out, _ = run_main(capsys, "validate", str(path))
    assert (code, out) == (1, f"{path}: {ROLE_WEB_MISSING}\n")

    (tmp_path / "roles" / "web").mkdir(parents=True)
    (tmp_path / "roles" / "web" / "README").write_text("no init.sls yet\n")
    code, out, _ = run_main(capsys, "validate", str(path))
    assert (code, out) == (1, f"{path}: {ROLE_WEB_MISSING}\n")

    (tmp_path / "roles" / "web" / "init.sls").write_text("{}\n")
    assert run_main(capsys, "validate", str(path)) == (0, f"{path}: valid\n", "")


def test_roles_dir_of_the_current_directory_does_not_count(tmp_path, capsys, example_data, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cluster.json").write_text(with_role(example_data))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "roles" / "web").mkdir(parents=True)
    (elsewhere / "roles" / "web" / "init.sls").write_text("{}\n")
    monkeypatch.chdir(elsewhere)
    code, out, _ = run_main(capsys, "validate", "../repo/cluster.json")
    assert (code, out) == (1, f"../repo/cluster.json: {ROLE_WEB_MISSING}\n")


def test_relative_path_to_a_valid_repo(tmp_path, capsys, example_data, monkeypatch):
    (tmp_path / "roles" / "web").mkdir(parents=True)
    (tmp_path / "roles" / "web" / "init.sls").write_text("{}\n")
    (tmp_path / "cluster.json").write_text(with_role(example_data))
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert run_main(capsys, "validate", "../cluster.json") == (0, "../cluster.json: valid\n", "")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        cli.main(["validate", "a.json", "b.json"])
    assert caught.value.code == 2
    capsys.readouterr()


def test_installed_console_script(tmp_path, good_text, bad_text):
    assert MINICL_BIN.exists(), f"{MINICL_BIN} missing: install the package (pip install -e .)"
    good = tmp_path / "good.json"
    good.write_text(good_text)
    bad = tmp_path / "bad.json"
    bad.write_text(bad_text)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "a" 1}\n')

    def run(*args):
        return subprocess.run(
            [str(MINICL_BIN), *args], capture_output=True, text=True, timeout=60, check=False
        )

    done = run("validate", str(good))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{good}: valid\n", "")

    done = run("validate", str(bad))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{bad}: {line}" for line in BAD_LINES]
    assert SECRET_PASSWD not in done.stdout + done.stderr

    done = run("validate", str(broken))
    assert done.returncode == 1
    assert done.stdout == f"{broken}: line 2, column 6: invalid JSON: Expecting ':' delimiter\n"
    assert "Traceback" not in done.stdout + done.stderr

    done = run("validate", str(tmp_path / "missing.json"))
    assert done.returncode == 1
    assert "cannot read" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# --- minicl validate --staged -------------------------------------------------------------


@pytest.fixture
def git_env(tmp_path, monkeypatch):
    """os.environ (and the returned copy, for subprocesses) with git isolated from the user's
    config and from any repository the tests themselves run in (e.g. from a hook)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for var in list(os.environ):
        if var.startswith("GIT_"):
            monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return dict(os.environ)


def git(repo, *args, env=None, check=True):
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=check, timeout=60
    )


@pytest.fixture
def repo(tmp_path, git_env):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.org")
    git(path, "config", "commit.gpgsign", "false")
    return path


def stage(repo, files):
    """Write ``files`` ({path in repo: text}) and git add them."""
    for name, text in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(repo, "add", *files)


def staged(capsys, repo, monkeypatch, *extra):
    monkeypatch.chdir(repo)
    return run_main(capsys, "validate", "--staged", *extra)


def test_staged_valid(repo, capsys, monkeypatch, good_text):
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    assert staged(capsys, repo, monkeypatch) == (0, "staged cluster.json: valid\n", "")
    assert staged(capsys, repo, monkeypatch, "--quiet") == (0, "", "")


def test_staged_without_deploy_key(repo, capsys, monkeypatch, good_text):
    stage(repo, {"cluster.json": good_text})
    (repo / "deploy.key").write_text("present but not staged\n")
    code, out, err = staged(capsys, repo, monkeypatch)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [NO_DEPLOY_KEY, REFUSED]
    assert "deploy.key" in err


def test_staged_without_cluster_json(repo, capsys, monkeypatch, good_text):
    stage(repo, {"deploy.key": "dummy deploy key\n"})
    (repo / "cluster.json").write_text(good_text)  # in the work tree only
    code, out, err = staged(capsys, repo, monkeypatch)
    assert (code, out) == (1, "")
    assert err.splitlines() == ["cluster.json: missing from the commit (git add cluster.json)", REFUSED]


def test_staged_empty_repo_reports_both(repo, capsys, monkeypatch):
    code, _, err = staged(capsys, repo, monkeypatch)
    assert code == 1
    assert err.splitlines() == [
        NO_DEPLOY_KEY,
        "cluster.json: missing from the commit (git add cluster.json)",
        REFUSED,
    ]


def test_staged_invalid_content_is_read_from_the_index(repo, capsys, monkeypatch, good_text, bad_text):
    stage(repo, {"cluster.json": bad_text, "deploy.key": "dummy deploy key\n"})
    (repo / "cluster.json").write_text(good_text)  # the work tree is fine, the index is not
    code, out, err = staged(capsys, repo, monkeypatch)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"cluster.json: {line}" for line in BAD_LINES] + [REFUSED]
    assert SECRET_PASSWD not in err
    # and the plain file check sees the good work tree
    assert run_main(capsys, "validate", "cluster.json") == (0, "cluster.json: valid\n", "")


def test_staged_valid_content_with_invalid_work_tree(repo, capsys, monkeypatch, good_text, bad_text):
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    (repo / "cluster.json").write_text(bad_text)
    assert staged(capsys, repo, monkeypatch) == (0, "staged cluster.json: valid\n", "")


def test_staged_syntax_error(repo, capsys, monkeypatch):
    stage(repo, {"cluster.json": '{\n "a" 1}\n', "deploy.key": "dummy deploy key\n"})
    code, out, err = staged(capsys, repo, monkeypatch)
    assert code == 1
    assert err.splitlines() == [
        "cluster.json: line 2, column 6: invalid JSON: Expecting ':' delimiter",
        REFUSED,
    ]
    assert "Traceback" not in out + err


def test_staged_role_dir_in_the_index_counts(repo, capsys, monkeypatch, example_data):
    stage(repo, {"cluster.json": with_role(example_data), "deploy.key": "k\n", "roles/web/init.sls": "{}\n"})
    (repo / "roles" / "web" / "init.sls").unlink()  # gone from the work tree, still staged
    (repo / "roles" / "web").rmdir()
    assert staged(capsys, repo, monkeypatch) == (0, "staged cluster.json: valid\n", "")


def test_staged_role_dir_only_in_the_work_tree_does_not_count(repo, capsys, monkeypatch, example_data):
    stage(repo, {"cluster.json": with_role(example_data), "deploy.key": "k\n"})
    (repo / "roles" / "web").mkdir(parents=True)
    (repo / "roles" / "web" / "init.sls").write_text("{}\n")  # not staged
    code, _, err = staged(capsys, repo, monkeypatch)
    assert code == 1
    assert err.splitlines() == [f"cluster.json: {ROLE_WEB_MISSING}", REFUSED]


def test_staged_outside_a_git_repo(tmp_path, git_env, capsys, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    code, out, err = staged(capsys, plain, monkeypatch)
    assert (code, out) == (1, "")
    first = err.splitlines()[0]
    assert first.startswith(f"{plain}: not a git repository (")
    assert "Traceback" not in err


# --- the pre-commit hook, run by git ------------------------------------------------------


@pytest.fixture
def hooked_repo(repo, git_env):
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(exist_ok=True)
    shutil.copy(HOOK, hook)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(git_env, PATH=f"{MINICL_BIN.parent}{os.pathsep}{git_env.get('PATH', '')}")
    env.pop("MINICL", None)
    return repo, env


def commit_count(repo, env):
    done = git(repo, "rev-list", "--count", "HEAD", env=env, check=False)
    return int(done.stdout) if done.returncode == 0 else 0


def test_hook_accepts_a_good_commit(hooked_repo, good_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    done = git(repo, "commit", "-q", "-m", "good", env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""  # --quiet: nothing to say
    assert commit_count(repo, env) == 1


def test_hook_refuses_a_bad_first_commit(hooked_repo, bad_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": bad_text, "deploy.key": "dummy deploy key\n"})
    done = git(repo, "commit", "-q", "-m", "bad", env=env, check=False)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    for line in BAD_LINES:
        assert f"cluster.json: {line}" in lines
    assert REFUSED in lines
    assert SECRET_PASSWD not in done.stderr
    assert commit_count(repo, env) == 0


def test_hook_refuses_a_bad_commit_after_a_good_one(hooked_repo, good_text, bad_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    git(repo, "commit", "-q", "-m", "good", env=env)
    head = git(repo, "rev-parse", "HEAD", env=env).stdout

    stage(repo, {"cluster.json": bad_text})
    done = git(repo, "commit", "-q", "-m", "bad", env=env, check=False)
    assert done.returncode != 0
    assert (
        "cluster.json: users.bob.uid: 500 is in the system range (must be >= 1000)"
        in done.stderr.splitlines()
    )
    assert git(repo, "rev-parse", "HEAD", env=env).stdout == head


def test_hook_refuses_a_commit_without_deploy_key(hooked_repo, good_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": good_text})
    done = git(repo, "commit", "-q", "-m", "no key", env=env, check=False)
    assert done.returncode != 0
    assert NO_DEPLOY_KEY in done.stderr.splitlines()
    assert commit_count(repo, env) == 0


def test_hook_checks_what_commit_all_is_about_to_record(hooked_repo, good_text, bad_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    git(repo, "commit", "-q", "-m", "good", env=env)
    (repo / "cluster.json").write_text(bad_text)  # not staged: commit -a stages it itself
    done = git(repo, "commit", "-q", "-a", "-m", "bad via -a", env=env, check=False)
    assert done.returncode != 0
    assert (
        "cluster.json: users.bob.uid: 500 is in the system range (must be >= 1000)"
        in done.stderr.splitlines()
    )
    assert commit_count(repo, env) == 1


def test_hook_without_minicl_refuses_with_a_hint(hooked_repo, good_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    env = dict(env, MINICL=str(repo / "no-such-minicl"))
    done = git(repo, "commit", "-q", "-m", "good", env=env, check=False)
    assert done.returncode != 0
    assert "not found" in done.stderr
    assert commit_count(repo, env) == 0


def test_hook_bypassed_with_no_verify(hooked_repo, bad_text):
    repo, env = hooked_repo
    stage(repo, {"cluster.json": bad_text})
    done = git(repo, "commit", "-q", "--no-verify", "-m", "forced", env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert commit_count(repo, env) == 1


# --- the minicl the config repo pins (a git submodule at minicl) ---------------------------

UNCOMMITTED = (
    "minicl: the submodule has uncommitted changes ({}); commit them in minicl's repository "
    "and push, then git add minicl"
)


@pytest.fixture
def minicl_source(tmp_path, git_env):
    path = tmp_path / "minicl-src"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "setup.py").write_text("# minicl\n")
    git(path, "add", "setup.py")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "minicl 1")
    return path


@pytest.fixture
def pinned(repo, minicl_source, good_text):
    """The repo with cluster.json, deploy.key and minicl pinned, all staged; the pinned sha."""
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    git(
        repo,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        f"file://{minicl_source}",
        "minicl",
    )
    git(repo / "minicl", "config", "user.name", "t")
    git(repo / "minicl", "config", "user.email", "t@example.org")
    return git(repo, "rev-parse", ":minicl").stdout.strip()


def test_a_clean_pin_validates(pinned, repo, capsys, monkeypatch):
    assert staged(capsys, repo, monkeypatch) == (0, "staged cluster.json: valid\n", "")
    assert run_main(capsys, "validate", "cluster.json") == (0, "cluster.json: valid\n", "")


def test_a_staged_gitlink_without_gitmodules(pinned, repo, capsys, monkeypatch):
    git(repo, "rm", "-q", "--cached", ".gitmodules")  # still in the work tree
    code, out, err = staged(capsys, repo, monkeypatch)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"minicl: pinned at {pinned[:12]} (a git submodule), but .gitmodules has no submodule with "
        "path = minicl, so the hosts cannot know where to fetch it from; add one: "
        "git config -f .gitmodules submodule.minicl.path minicl && git config -f .gitmodules "
        "submodule.minicl.url <URL of minicl's repository> && git add .gitmodules",
        REFUSED,
    ]
    # the plain check reads the work tree's .gitmodules, which has it
    assert run_main(capsys, "validate", "cluster.json") == (0, "cluster.json: valid\n", "")
    (repo / ".gitmodules").unlink()
    code, out, _ = run_main(capsys, "validate", "cluster.json")
    assert code == 1 and out.startswith(f"minicl: pinned at {pinned[:12]} (a git submodule), but")


def test_a_pin_without_url(pinned, repo, capsys, monkeypatch):
    git(repo, "config", "-f", ".gitmodules", "--unset", "submodule.minicl.url")
    git(repo, "add", ".gitmodules")
    line = (
        '.gitmodules: submodule "minicl" (path = minicl) has no url, so the hosts cannot know where '
        "to fetch the pinned minicl from; set it: git config -f .gitmodules submodule.minicl.url "
        "<URL of minicl's repository> && git add .gitmodules"
    )
    assert staged(capsys, repo, monkeypatch) == (1, "", f"{line}\n{REFUSED}\n")
    assert run_main(capsys, "validate", "cluster.json") == (1, f"{line}\n", "")


def test_a_gitmodules_section_for_a_plain_folder(repo, capsys, monkeypatch, good_text):
    stage(repo, {"cluster.json": good_text, "deploy.key": "k\n", "minicl/copy.py": ""})
    monkeypatch.chdir(repo)
    assert run_main(capsys, "validate", "cluster.json") == (0, "cluster.json: valid\n", "")  # no pin
    stage(repo, {".gitmodules": '[submodule "minicl"]\n\tpath = minicl\n\turl = ../minicl.git\n'})
    code, out, _ = run_main(capsys, "validate", str(repo / "cluster.json"))
    assert code == 1
    assert out.startswith(
        '.gitmodules: submodule "minicl" has path = minicl, but minicl is a folder of files in the '
        "repo, not a pinned commit (a git submodule); pin minicl with git rm -r minicl && "
    )


def test_a_pin_is_only_checked_at_the_top_of_a_work_tree(pinned, repo, capsys, good_text):
    git(repo, "rm", "-q", "--cached", ".gitmodules")
    (repo / ".gitmodules").unlink()
    (repo / "sub").mkdir()
    (repo / "sub" / "cluster.json").write_text(good_text)
    path = repo / "sub" / "cluster.json"
    assert run_main(capsys, "validate", str(path)) == (0, f"{path}: valid\n", "")


def test_a_dirty_submodule_is_refused(pinned, repo, capsys, monkeypatch):
    (repo / "minicl" / "setup.py").write_text("# changed\n")
    (repo / "minicl" / "new.py").write_text("")
    code, out, err = staged(capsys, repo, monkeypatch)
    assert (code, out) == (1, "")
    assert err.splitlines() == [UNCOMMITTED.format("setup.py, new.py"), REFUSED]
    # the plain check does not look at the submodule's checkout
    assert run_main(capsys, "validate", "cluster.json") == (0, "cluster.json: valid\n", "")


def test_a_checked_out_commit_that_is_not_the_pin_is_refused(pinned, repo, capsys, monkeypatch):
    (repo / "minicl" / "setup.py").write_text("# minicl 2\n")
    git(repo / "minicl", "commit", "-q", "-am", "minicl 2")
    newer = git(repo / "minicl", "rev-parse", "HEAD").stdout.strip()
    code, _, err = staged(capsys, repo, monkeypatch)
    assert code == 1
    assert err.splitlines() == [
        f"minicl: the submodule has {newer[:12]} checked out but {pinned[:12]} is staged as the pin; "
        "run git add minicl to pin the checked-out commit, or git submodule update minicl to go back",
        REFUSED,
    ]
    git(repo, "add", "minicl")
    assert staged(capsys, repo, monkeypatch) == (0, "staged cluster.json: valid\n", "")


def test_a_staged_pin_the_submodule_does_not_have_is_refused(pinned, repo, capsys, monkeypatch):
    missing = "1" * 40
    git(repo, "update-index", "--cacheinfo", f"160000,{missing},minicl")
    code, _, err = staged(capsys, repo, monkeypatch)
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith(
        f"minicl: the submodule has {pinned[:12]} checked out but {missing[:12]} is staged"
    )
    assert lines[1:] == [
        f"minicl: the staged pin {missing[:12]} is not a commit of minicl's repository in minicl/; fetch "
        "it there (git -C minicl fetch) or pin a commit it has (git -C minicl checkout <commit> && "
        "git add minicl)",
        REFUSED,
    ]


def test_a_submodule_not_checked_out_is_fine(pinned, repo, capsys, monkeypatch, tmp_path):
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "pinned")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert os.listdir(clone / "minicl") == []
    assert git(clone, "submodule", "status").stdout.startswith("-")
    assert staged(capsys, clone, monkeypatch) == (0, "staged cluster.json: valid\n", "")


def test_hook_checks_the_pin(hooked_repo, minicl_source, good_text):
    repo, env = hooked_repo
    env = dict(env, PYTHONPATH=str(REPO_ROOT))  # the console script runs this tree's minicl
    stage(repo, {"cluster.json": good_text, "deploy.key": "dummy deploy key\n"})
    git(
        repo,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        f"file://{minicl_source}",
        "minicl",
    )
    (repo / "minicl" / "setup.py").write_text("# changed\n")
    done = git(repo, "commit", "-q", "-m", "dirty pin", env=env, check=False)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [UNCOMMITTED.format("setup.py"), REFUSED]
    assert commit_count(repo, env) == 0
    git(repo / "minicl", "checkout", "-q", "setup.py")
    done = git(repo, "commit", "-q", "-m", "clean pin", env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert commit_count(repo, env) == 1
