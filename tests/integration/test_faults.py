"""The core under faults, on systemd test hosts: a role that does not render, a full disk, a
flood of problems, a large cluster, a damaged mirror, a host removed, a branch moved back.

Each fault leaves the last good commit running, says what happened (status, pillar, log,
metrics) and cleans up after itself. One lab for the module; the steps build on each other.
"""

import json
import random
import string

import pytest

from .conftest import bootstrap_all, cluster_config, dump, salt_call

ALPHA = ["198.51.100.31/24", "2001:db8:100::31/64"]
BETA = ["198.51.100.32/24"]
WEB_ROLE = """\
web-marker:
  file.managed:
    - name: /etc/web-role-marker
    - contents: "web role at {{ pillar['minicl']['status']['commit'] }}"
"""
# Renders unless the host has the grain web_mode=strict (then a runtime Jinja error).
GRAIN_SENSITIVE_ROLE = (
    """\
{%- if grains.get('web_mode') == 'strict' %}
strict: {{ pillar['minicl']['no_such_key']['x'] }}
{%- endif %}
"""
    + WEB_ROLE
)
RUN_PROM = "/var/lib/prometheus/node-exporter/minicl_run.prom"


def entry(addresses, roles):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": roles}


def config(**extra_users):
    data = cluster_config({"alpha": entry(ALPHA, ["base", "web"]), "beta": entry(BETA, ["base"])})
    for name, uid in extra_users.items():
        data["users"][name] = dict(data["users"]["bob"], uid=uid)
    return data


@pytest.fixture(scope="module")
def alpha(lab):
    return lab.add_host("alpha", ALPHA)


@pytest.fixture(scope="module")
def beta(lab):
    return lab.add_host("beta", BETA)


@pytest.fixture(scope="module")
def cluster(git_server, deploy_key, alpha, beta):
    git_server.commit(
        {"cluster.json": dump(config()), "deploy.key": deploy_key[0], "roles/web/init.sls": WEB_ROLE},
        "first config",
    )
    bootstrap_all({"alpha": alpha, "beta": beta}, git_server, deploy_key)
    return git_server


def status(host):
    code, data, result = salt_call(host, "minicl.status")
    assert code == 0, result.stdout + result.stderr
    return data["local"]


def apply(host):
    return salt_call(host, "state.apply")


def metric(host, name):
    """The value (and labels) of a metric line in the host's minicl_run.prom."""
    for line in host.read(RUN_PROM).splitlines():
        if line.startswith(name):
            return line
    return None


def test_a_role_that_does_not_render_is_a_bad_commit_for_its_host(cluster, alpha, beta):
    good = status(alpha)["commit"]
    broken = cluster.commit(
        {"cluster.json": dump(config(sam=2003)), "roles/web/init.sls": "{% if %}\n" + WEB_ROLE},
        "sam; web role broken",
    )

    code, data, result = apply(alpha)
    assert code == 0, result.stdout + result.stderr  # the last good commit ran, base and web role
    assert alpha.run("getent passwd sam", check=False).returncode == 2
    st = status(alpha)
    assert st["commit"] == good and st["ok"] is False and st["bad_commit"] == broken
    assert st["error"].startswith(
        f"commit {broken[:12]} does not render on this host and was not applied:\n"
        "roles/web/init.sls: Rendering SLS 'base:roles.web' failed: Jinja syntax error"
    )
    assert "line 1" in st["error"]
    assert metric(alpha, "minicl_config_fetch_ok") == "minicl_config_fetch_ok 0.0"
    assert "roles/web/init.sls" in metric(alpha, "minicl_config_error_info")
    assert "Rendering SLS" in alpha.read("/var/log/salt/minion")

    # The same commit is fine for a host without the web role (positive control).
    code, _, result = apply(beta)
    assert code == 0, result.stdout + result.stderr
    assert beta.run("getent passwd sam", check=False).returncode == 0
    assert status(beta)["commit"] == broken and status(beta)["ok"] is True

    # A YAML error is the same; the fix then goes live with sam.
    yaml_broken = cluster.commit(
        {"roles/web/init.sls": "web-marker:\n  file.managed:\n   - name: [x\n"}, "web role: yaml error"
    )
    apply(alpha)
    st = status(alpha)
    assert st["commit"] == good and st["bad_commit"] == yaml_broken
    assert "roles/web/init.sls: Rendering SLS 'base:roles.web' failed" in st["error"]
    fixed = cluster.commit({"roles/web/init.sls": WEB_ROLE}, "web role fixed")
    code, _, result = apply(alpha)
    assert code == 0, result.stdout + result.stderr
    st = status(alpha)
    assert st["commit"] == fixed and st["ok"] is True and "bad_commit" not in st
    assert alpha.run("getent passwd sam", check=False).returncode == 0
    assert alpha.read("/etc/web-role-marker") == f"web role at {fixed}\n"


def test_the_base_role_converges_while_a_live_role_does_not_render(cluster, alpha):
    live = cluster.commit({"roles/web/init.sls": GRAIN_SENSITIVE_ROLE}, "web role reads a grain")
    code, _, result = apply(alpha)
    assert code == 0 and status(alpha)["commit"] == live, result.stdout + result.stderr

    # The host changes (a grain), and the live commit's web role no longer renders here.
    salt_call(alpha, "grains.setval", "web_mode", "strict", check=True)
    alpha.run("rm /home/alice/.ssh/authorized_keys")
    code, data, result = apply(alpha)
    assert code == 2, result.stdout + result.stderr  # a run with a failure, not a refused one
    states = data["local"]
    left_out = [v for k, v in states.items() if k.startswith("test_|-minicl-left-out-roles.web")]
    assert len(left_out) == 1 and left_out[0]["result"] is False
    assert "roles/web/init.sls: Rendering SLS 'base:roles.web' failed" in left_out[0]["comment"]
    assert "no_such_key" in left_out[0]["comment"]
    assert alpha.exists("/home/alice/.ssh/authorized_keys")  # the base role ran
    st = status(alpha)
    assert st["commit"] == live and st["ok"] is False and st["skipped_states"] == ["roles.web"]
    assert metric(alpha, "minicl_run_success") == "minicl_run_success 0.0"
    assert metric(alpha, "minicl_config_fetch_ok") == "minicl_config_fetch_ok 0.0"

    salt_call(alpha, "grains.delkey", "web_mode", check=True)
    code, data, result = apply(alpha)
    assert code == 0, result.stdout + result.stderr
    assert status(alpha)["ok"] is True and "skipped_states" not in status(alpha)


def test_an_unchanged_commit_is_validated_once(cluster, alpha):
    result = alpha.run(["salt-call", "--local", "-l", "debug", "state.apply"], check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated before by this minicl" in result.stdout + result.stderr
    assert "minicl: validating cluster.json@" not in result.stdout + result.stderr
    assert "rendering this host's highstate" not in result.stdout + result.stderr


def test_a_flood_of_problems_is_bounded(cluster, alpha):
    good = status(alpha)["commit"]
    data = config()
    for n in range(55000):
        data["users"][f"u{n}"] = {"uid": 10 + n}
    flood = cluster.commit({"cluster.json": dump(data)}, "55,000 broken users")
    log_before = len(alpha.read("/var/log/salt/minion"))
    code, _, result = apply(alpha)
    assert code == 0, result.stderr
    st = status(alpha)
    assert st["commit"] == good and st["bad_commit"] == flood
    assert len(st["error"]) < 8000
    assert "more problems ('minicl validate cluster.json' in a checkout lists them all)" in st["error"]
    assert len(alpha.read("/var/log/salt/minion")) - log_before < 64000
    assert len(alpha.read("/var/lib/minicl/status.json")) < 16000
    assert len(result.stdout) + len(result.stderr) < 64000
    cluster.commit({"cluster.json": dump(config())}, "users fixed")
    code, _, result = apply(alpha)
    assert code == 0 and status(alpha)["ok"] is True, result.stdout + result.stderr


def _fill(host, path):
    host.run(f"dd if=/dev/zero of={path} bs=1M 2>/dev/null || true; sync")


def test_a_full_disk_is_reported_and_cleaned_up(cluster, alpha):
    # /var/lib/minicl on a filesystem of its own, 64 MB, with what it holds now.
    alpha.run(
        "systemctl stop minicl-minion; cp -a /var/lib/minicl /root/minicl-copy && "
        "mount -t tmpfs -o size=64m,mode=0700 small /var/lib/minicl && "
        "cp -a /root/minicl-copy/. /var/lib/minicl/"
    )
    try:
        good = status(alpha)["commit"]
        assert status(alpha)["ok"] is True

        # Full to the last byte: status.json cannot be written; the run's metrics still say why.
        _fill(alpha, "/var/lib/minicl/filler")
        cluster.commit({"notes.txt": "a small change\n"}, "while the disk is full")
        code, _, result = apply(alpha)
        assert code == 0, result.stdout + result.stderr
        assert metric(alpha, "minicl_config_fetch_ok") == "minicl_config_fetch_ok 0.0", (
            result.stderr,
            alpha.run("df /var/lib/minicl; tail -20 /var/log/salt/minion").stdout,
        )
        assert "Out of diskspace" in metric(alpha, "minicl_config_error_info")
        assert "(/var/lib/minicl/mirror.git: 0.0 MB free)" in status(alpha)["error"]
        assert json.loads(alpha.read("/var/lib/minicl/status.json")).get("error") is None  # could not write
        alpha.run("rm /var/lib/minicl/filler")

        # Room for the fetch, not for the export: refused before writing, saying how much is needed.
        blob = "".join(random.choices(string.ascii_letters, k=30 * 2**20))
        big = cluster.commit({"roles/web/big.txt": blob}, "a 30 MB file in a role")
        alpha.run(
            "mkdir -p /var/lib/minicl/checkouts/0123abcd.tmp && "
            "echo left by a killed run > /var/lib/minicl/checkouts/0123abcd.tmp/x"
        )
        code, _, result = apply(alpha)
        assert code == 0, result.stdout + result.stderr
        st = status(alpha)
        assert st["commit"] == good and "bad_commit" not in st
        assert f"not enough disk space to write commit {big[:12]} to /var/lib/minicl/checkouts" in st["error"]
        assert "its files need 30.0 MB and 32.0 MB are kept free" in st["error"]
        kept = alpha.run("ls /var/lib/minicl/checkouts").stdout.split()
        assert good in kept and big not in kept and not [name for name in kept if name.endswith(".tmp")]
        assert metric(alpha, "minicl_config_fetch_ok") == "minicl_config_fetch_ok 0.0"
        assert "not enough disk space" in metric(alpha, "minicl_config_error_info")
    finally:
        alpha.run(
            "umount /var/lib/minicl; rm -rf /root/minicl-copy; systemctl start minicl-minion", check=False
        )
    cluster.commit({}, "big file stays; the host has room again", remove=["roles/web/big.txt"])
    code, _, result = apply(alpha)
    assert code == 0 and status(alpha)["ok"] is True, result.stdout + result.stderr


def test_a_damaged_mirror_is_repaired_in_one_run(cluster, alpha):
    # A ref git can no longer read, and a lock a killed git left behind.
    alpha.run(
        "cd /var/lib/minicl/mirror.git && echo garbage > refs/remotes/origin/main && "
        "touch refs/remotes/origin/main.lock"
    )
    new = cluster.commit({"notes.txt": "after the damage\n"}, "after the damage")
    code, _, result = apply(alpha)
    assert code == 0, result.stdout + result.stderr
    assert "minicl: the git mirror /var/lib/minicl/mirror.git is damaged" in result.stderr
    st = status(alpha)
    assert st["commit"] == new and st["ok"] is True, st
    assert "is damaged" not in salt_call(alpha, "state.apply")[2].stderr  # repaired for good


def test_a_branch_moved_back_is_applied_and_said(cluster, alpha):
    old = status(alpha)["commit"]
    newer = cluster.commit({"notes.txt": "newer\n"}, "newer")
    apply(alpha)
    assert status(alpha)["commit"] == newer
    cluster.host.run(f"cd {cluster.WORK} && git reset -q --hard {old} && git push -q -f origin main")
    code, _, result = apply(alpha)
    assert code == 0, result.stdout + result.stderr
    st = status(alpha)
    assert st["commit"] == old and st["ok"] is True
    assert st["notice"] == f"branch main moved back from {newer[:12]} to {old[:12]}; applied {old[:12]}"
    assert st["notice"] in alpha.read("/var/log/salt/minion")


def test_a_host_removed_from_the_cluster_gets_only_the_message(cluster, alpha, beta):
    data = config()
    del data["hosts"]["beta"]
    cluster.commit({"cluster.json": dump(data)}, "beta retired")
    log_before = len(beta.read("/var/log/salt/minion"))
    code, _, result = apply(beta)
    out = result.stdout + result.stderr
    assert code != 0
    assert "minicl: this minion (beta) is not a host in cluster.json" in out
    assert "Traceback" not in out and "Exception caught loading ext_pillar" not in out
    assert "Traceback" not in beta.read("/var/log/salt/minion")[log_before:]
    # The host that stays applies the same commit (positive control).
    code, _, result = apply(alpha)
    assert code == 0, result.stdout + result.stderr
    assert status(alpha)["ok"] is True
