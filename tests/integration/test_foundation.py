"""The foundation end to end: a config repo served over SSH from one test host, cluster hosts
bootstrapped with minicl-bootstrap, real ``salt-call --local state.apply`` in each.

The steps build on each other (one lab per module), in the order a group lives through them.
"""

import json

import pytest

from .conftest import changed_states, cluster_config, dump, salt_call

ALPHA = ["198.51.100.11/24", "2001:db8:100::11/64"]
BETA = ["198.51.100.12/24", "2001:db8:100::12/64"]
GAMMA = ["198.51.100.13/24"]
WEB_ROLE = """\
web-marker:
  file.managed:
    - name: /etc/web-role-marker
    - contents: "served by the web role, commit {{ pillar['minicl']['status']['commit'] }}"
"""
SECRETS = ("change-me-smtp-password", "$6$alicesalt", "$6$bobsalt")


def hosts_entry(addresses, roles=("base",)):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": list(roles)}


def cluster_host(lab, name, addresses):
    host = lab.add_host(name, addresses)
    return host


@pytest.fixture(scope="module")
def alpha(lab):
    return cluster_host(lab, "alpha", ALPHA)


@pytest.fixture(scope="module")
def beta(lab):
    return cluster_host(lab, "beta", BETA)


@pytest.fixture(scope="module")
def first_commit(git_server, deploy_key):
    config = cluster_config({"alpha": hosts_entry(ALPHA)})
    return git_server.commit(
        {"cluster.json": dump(config), "deploy.key": deploy_key[0], "roles/web/init.sls": WEB_ROLE},
        "first config",
    )


def assert_no_secrets(*texts):
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def bootstrap(host, git_server, *extra):
    return host.run(
        ["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key", *extra],
        check=False,
        timeout=600,
    )


def snippet_after(out, marker):
    """The cluster.json entry bootstrap printed after ``marker`` (host key fingerprints follow)."""
    return json.loads("{" + out.split(marker)[1].split("\nSSH host keys of")[0] + "}")


def own_fingerprints(host):
    lines = host.run("for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -l -f $f; done").stdout.splitlines()
    return [f"{line.split()[-1].strip('()')} {line.split()[1]}" for line in lines]


def pillar(host):
    code, data, result = salt_call(host, "pillar.get", "minicl", "unmask=True")
    assert code == 0, result.stdout + result.stderr
    return data["local"]


def test_bootstrap_over_ssh_trusts_repo_key_and_applies(alpha, git_server, deploy_key, first_commit):
    alpha.write("/root/deploy.key", deploy_key[0], 0o600)
    result = bootstrap(alpha, git_server)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "trusted on first use" in out
    assert git_server.host_key_fingerprint() in out
    assert f"config commit {first_commit[:12]}" in out
    snippet = snippet_after(out, "in cluster.json (as alpha is now):")
    assert snippet == {"alpha": {"ip": ["198.51.100.11", "2001:db8:100::11"], "roles": ["base"]}}
    keys = out.split("SSH host keys of alpha (compare them when you first log in):\n")[1].splitlines()
    fingerprints = own_fingerprints(alpha)
    assert fingerprints and [line.strip() for line in keys[: len(fingerprints)]] == fingerprints
    assert any(line.startswith("ED25519 SHA256:") for line in fingerprints)
    assert_no_secrets(out, result.stderr)

    assert alpha.run("stat -c %a /etc/minicl/deploy.key").stdout.strip() == "600"
    applied = json.loads(alpha.read("/var/lib/minicl/applied.json"))
    assert applied["commit"] == first_commit and applied["host"] == "alpha"


def test_pillar_shows_the_cluster(alpha, first_commit):
    data = pillar(alpha)
    assert data["host"] == {
        "name": "alpha",
        "fqdn": "alpha.example.org",
        "ip": ["198.51.100.11", "2001:db8:100::11"],
        "roles": ["base"],
    }
    assert data["addresses"] == {"v4": ["198.51.100.11"], "v6": ["2001:db8:100::11"]}
    assert data["states"] == ["minicl.base"]
    assert sorted(data["cluster"]["users"]) == ["alice", "bob"]
    assert data["status"]["ok"] is True
    assert data["status"]["commit"] == first_commit
    assert "error" not in data["status"]


def test_grains_report_real_addresses(alpha):
    code, data, _ = salt_call(
        alpha, "grains.item", "minicl_ipv4", "minicl_ipv6", "minicl_interfaces", "minicl_shortname"
    )
    grains = data["local"]
    assert code == 0
    assert grains["minicl_ipv4"] == ["198.51.100.11"]
    assert grains["minicl_ipv6"] == ["2001:db8:100::11"]  # link-local fe80:: is left out
    assert grains["minicl_interfaces"] == {"eth0": {"ipv4": ["198.51.100.11"], "ipv6": ["2001:db8:100::11"]}}
    assert grains["minicl_shortname"] == "alpha"


def test_second_run_changes_nothing(alpha):
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert changed_states(data) == {}


def test_new_role_test_mode_shows_then_applies(alpha, git_server):
    config = cluster_config({"alpha": hosts_entry(ALPHA, ["base", "web"])})
    sha = git_server.commit({"cluster.json": dump(config)}, "alpha gets the web role")

    code, data, result = salt_call(alpha, "state.apply", "test=True")
    assert code == 0, result.stdout
    planned = data["local"]["file_|-web-marker_|-/etc/web-role-marker_|-managed"]
    assert planned["result"] is None and planned["changes"]
    assert not alpha.exists("/etc/web-role-marker")

    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert alpha.read("/etc/web-role-marker") == f"served by the web role, commit {sha}\n"
    code, data, _ = salt_call(alpha, "state.apply")
    assert changed_states(data) == {}


def test_bad_commit_keeps_last_good_and_reports(alpha, git_server):
    good = pillar(alpha)["status"]["commit"]
    bad_config = cluster_config({"alpha": hosts_entry(ALPHA, ["base", "web"])})
    bad_config["users"]["bob"]["uid"] = 500
    bad_config["users"]["carol"] = dict(bad_config["users"]["bob"], uid=2003)
    bad = git_server.commit({"cluster.json": dump(bad_config)}, "a mistake")

    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert changed_states(data) == {}
    assert_no_secrets(result.stdout, result.stderr)

    status = pillar(alpha)
    assert status["status"]["commit"] == good
    assert status["status"]["bad_commit"] == bad
    assert status["status"]["ok"] is False
    assert "users.bob.uid: 500 is in the system range (must be >= 1000)" in status["status"]["error"]
    assert "carol" not in status["cluster"]["users"]
    assert status["status"]["last_good_fetch"] < status["status"]["checked_at"]
    log = alpha.read("/var/log/salt/minion")
    assert f"commit {bad[:12]} is invalid" in log
    assert_no_secrets(log)


def test_fixed_commit_is_picked_up(alpha, git_server):
    config = cluster_config({"alpha": hosts_entry(ALPHA, ["base", "web"])})
    config["users"]["carol"] = dict(config["users"]["bob"], uid=2003)
    fixed = git_server.commit({"cluster.json": dump(config)}, "fixed")
    code, _, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    data = pillar(alpha)
    assert data["status"]["commit"] == fixed and data["status"]["ok"] is True
    assert "bad_commit" not in data["status"] and "error" not in data["status"]
    assert "carol" in data["cluster"]["users"]
    assert json.loads(alpha.read("/var/lib/minicl/applied.json"))["commit"] == fixed


def test_remote_down_serves_last_good(alpha, git_server):
    good = pillar(alpha)["status"]["commit"]
    git_server.stop_sshd()
    try:
        code, data, result = salt_call(alpha, "state.apply")
        assert code == 0, result.stdout
        assert changed_states(data) == {}
        status = pillar(alpha)["status"]
        assert status["commit"] == good
        assert "fetching ssh://git@198.51.100.1/srv/git/cluster.git (branch main) failed" in status["error"]
        assert "Connection refused" in status["error"]
    finally:
        git_server.start_sshd()
    assert pillar(alpha)["status"]["ok"] is True


def test_changed_repo_host_key_is_refused(alpha, git_server):
    good = pillar(alpha)["status"]["commit"]
    git_server.host.run("mkdir -p /root/oldkeys && cp -a /etc/ssh/ssh_host_* /root/oldkeys/")
    git_server.stop_sshd()
    git_server.host.run("rm -f /etc/ssh/ssh_host_*; ssh-keygen -A -q")
    git_server.start_sshd()
    try:
        git_server.commit({"note.txt": "pushed while the key changed\n"}, "after key change")
        status = pillar(alpha)["status"]
        assert status["commit"] == good
        assert "Host key verification failed" in status["error"]
    finally:
        git_server.stop_sshd()
        git_server.host.run("cp -a /root/oldkeys/* /etc/ssh/")
        git_server.start_sshd()
    assert pillar(alpha)["status"]["ok"] is True


def test_host_not_in_cluster_gets_snippet_then_joins(beta, git_server, deploy_key):
    beta.write("/root/deploy.key", deploy_key[0], 0o600)
    result = bootstrap(beta, git_server)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "This host (beta) is not in cluster.json yet" in result.stdout
    snippet = snippet_after(result.stdout, "(it also starts the schedule):")
    assert (
        f"SSH host keys of beta (compare them when you first log in):\n  {own_fingerprints(beta)[0]}"
        in result.stdout
    )
    assert snippet == {"beta": {"ip": ["198.51.100.12", "2001:db8:100::12"], "roles": ["base"]}}
    assert "Traceback" not in result.stdout + result.stderr

    # Salt itself refuses to run states for a host that is not in the cluster.
    code, data, result = salt_call(beta, "state.apply")
    assert code != 0
    assert "this minion (beta) is not a host in cluster.json" in result.stdout + result.stderr
    assert not beta.exists("/var/lib/minicl/applied.json")

    config = cluster_config({"alpha": hosts_entry(ALPHA, ["base", "web"]), **snippet})
    config["users"]["carol"] = dict(config["users"]["bob"], uid=2003)
    git_server.commit({"cluster.json": dump(config)}, "add beta")
    result = bootstrap(beta, git_server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert beta.exists("/var/lib/minicl/applied.json")

    # Bootstrap again: safe, and nothing changes.
    result = bootstrap(beta, git_server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trusted on first use" in result.stdout  # the same key, already known
    code, data, _ = salt_call(beta, "state.apply")
    assert code == 0 and changed_states(data) == {}


def test_no_good_commit_ever_refuses_to_run_states(lab, git_server, deploy_key):
    gamma = cluster_host(lab, "gamma", GAMMA)
    broken = cluster_config({"gamma": hosts_entry(GAMMA)}, admin_email="")
    git_server.commit({"cluster.json": dump(broken)}, "broken from the start", branch="broken")
    gamma.write("/root/deploy.key", deploy_key[0], 0o600)
    result = bootstrap(gamma, git_server, "--branch=broken")
    assert result.returncode == 1
    assert "no valid commit of the config repo" in result.stderr
    assert "admin_email: must not be empty" in result.stderr

    code, _, result = salt_call(gamma, "state.apply")
    assert code != 0
    assert "no valid commit of the config repo" in result.stdout + result.stderr
    assert not gamma.exists("/var/lib/minicl/applied.json")


def test_bootstrap_with_known_hosts_uses_only_that_key(lab, git_server, deploy_key):
    delta = cluster_host(lab, "delta", ["198.51.100.14/24"])
    delta.write("/root/deploy.key", deploy_key[0], 0o600)
    config = cluster_config({"delta": hosts_entry(["198.51.100.14/24"])})
    git_server.commit({"cluster.json": dump(config)}, "delta only", branch="delta")

    # A known_hosts with some other key: refused, nothing trusted behind the admin's back.
    delta.run(
        "ssh-keygen -q -t ed25519 -N '' -f /root/other && "
        "echo \"198.51.100.1 $(cut -d' ' -f1,2 /root/other.pub)\" > /root/wrong_known_hosts"
    )
    result = bootstrap(delta, git_server, "--branch=delta", "--known-hosts=/root/wrong_known_hosts")
    assert result.returncode == 1
    assert "Host key verification failed" in result.stderr
    assert "trusted on first use" not in result.stdout

    real_key = git_server.host.read("/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    delta.write("/root/known_hosts", f"198.51.100.1 {' '.join(real_key)}\n")
    result = bootstrap(delta, git_server, "--branch=delta", "--known-hosts=/root/known_hosts")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"repo host key (from --known-hosts): 198.51.100.1 ED25519 {git_server.host_key_fingerprint()}"
        in result.stdout
    )
    assert pillar(delta)["host"]["name"] == "delta"


def test_bootstrap_with_ssh_agent_forwarding_instead_of_a_deploy_key(lab, git_server, deploy_key):
    """The admin logs in with ssh -A: the first fetch uses the agent; later runs, without any
    agent, use the deploy.key the config repo carries."""
    epsilon = cluster_host(lab, "epsilon", ["198.51.100.15/24"])
    config = cluster_config({"epsilon": hosts_entry(["198.51.100.15/24"])})
    git_server.commit({"cluster.json": dump(config), "deploy.key": deploy_key[0]}, "epsilon", branch="agent")
    epsilon.write("/root/agent-only.key", deploy_key[0], 0o600)
    agent = epsilon.spawn(["ssh-agent", "-D", "-a", "/root/agent.sock"])
    try:
        epsilon.run(
            "for i in $(seq 50); do [ -S /root/agent.sock ] && break; sleep 0.1; done; "
            "SSH_AUTH_SOCK=/root/agent.sock ssh-add -q /root/agent-only.key && rm /root/agent-only.key"
        )
        result = epsilon.run(
            ["minicl-bootstrap", f"--repo={git_server.url}", "--branch=agent"],
            check=False,
            timeout=600,
            env={"SSH_AUTH_SOCK": "/root/agent.sock"},
        )
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fetched with your SSH agent; later runs use the repo's deploy.key" in result.stdout
    assert epsilon.read("/etc/minicl/deploy.key") == deploy_key[0]
    assert epsilon.run("stat -c %a /etc/minicl/deploy.key").stdout.strip() == "600"
    assert "deploy_key: /etc/minicl/deploy.key" in epsilon.read("/etc/salt/minion.d/minicl.conf")

    config["users"]["carol"] = dict(config["users"]["bob"], uid=2003)
    pushed = git_server.commit({"cluster.json": dump(config)}, "carol", branch="agent")
    code, _, result = salt_call(epsilon, "state.apply")  # no agent now
    assert code == 0, result.stdout
    assert pillar(epsilon)["status"]["commit"] == pushed
    assert epsilon.run("getent passwd carol", check=False).returncode == 0

    # Bootstrap again, with neither agent nor --deploy-key: the installed key serves.
    result = epsilon.run(
        ["minicl-bootstrap", f"--repo={git_server.url}", "--branch=agent"], check=False, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr
