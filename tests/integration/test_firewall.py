"""The IP-ACL firewall with real packets between test hosts: cluster peers reach any port, an
outsider only SSH and public ports; other tools' tables survive; a broken ruleset or a lost
peer never leaves a host with rules it cannot confirm; the ruleset survives a "reboot"."""

import pytest

from .conftest import changed_states, cluster_config, dump, salt_call

HOSTS = {
    "alpha": ["198.51.100.51/24", "2001:db8:100::51/64"],
    "beta": ["198.51.100.52/24", "2001:db8:100::52/64"],
    "gamma": ["198.51.100.53/24", "2001:db8:100::53/64"],
}
OUTSIDER = ["198.51.100.99/24", "2001:db8:100::99/64"]
FIREWALL = "minicl_firewall_|-minicl-firewall_|-inet minicl_|-applied"


def config(hosts=("alpha", "beta", "gamma"), **extra):
    entries = {}
    for name in hosts:
        entries[name] = {
            "ip": [a.split("/")[0] for a in HOSTS[name]],
            "roles": ["base", "web"] if name == "beta" else ["base"],
        }
    entries["alpha"]["public_ports"] = ["8080/tcp"]
    if "gamma" in entries:
        entries["gamma"]["trusted_sources"] = ["203.0.113.0/24"]
    data = cluster_config(
        entries, roles={"web": {"public_ports": ["8443/tcp"]}}, firewall={"confirm_seconds": 5}
    )
    data.update(extra)
    return dump(data)


@pytest.fixture(scope="module")
def cluster(lab, git_server, deploy_key):
    git_server.commit(
        {"cluster.json": config(), "deploy.key": deploy_key[0], "roles/web/init.sls": "{}\n"}, "three hosts"
    )
    hosts = {}
    for name, addresses in HOSTS.items():
        host = lab.add_host(name, addresses)
        host.listen((9200, 8080, 8443))
        host.write("/root/deploy.key", deploy_key[0], 0o600)
        hosts[name] = host
    for host in hosts.values():
        result = host.run(
            ["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
            check=False,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    hosts["gamma"].run("ip addr add 203.0.113.53/24 dev eth0")
    return hosts


@pytest.fixture(scope="module")
def outsider(lab):
    host = lab.add_host("outsider", OUTSIDER)
    return host


@pytest.fixture(scope="module")
def office(lab):
    return lab.add_host("office", ["203.0.113.7/24"])


@pytest.mark.parametrize("family", [0, 1], ids=["ipv4", "ipv6"])
def test_peer_reaches_any_port_outsider_does_not(cluster, outsider, family):
    alpha_ip = cluster["alpha"].ips[family]
    assert cluster["beta"].can_connect(alpha_ip, 9200)
    assert cluster["gamma"].can_connect(alpha_ip, 9200)
    assert not outsider.can_connect(alpha_ip, 9200)


@pytest.mark.parametrize("family", [0, 1], ids=["ipv4", "ipv6"])
def test_outsider_reaches_ssh_and_public_ports_only(cluster, outsider, family):
    alpha, beta = cluster["alpha"].ips[family], cluster["beta"].ips[family]
    assert outsider.can_connect(alpha, 22)
    assert outsider.can_connect(alpha, 8080)  # alpha's own public port
    assert not outsider.can_connect(alpha, 8443)  # the web role's port: alpha is not web
    assert outsider.can_connect(beta, 8443)  # beta is
    assert not outsider.can_connect(beta, 8080)


def test_extra_trusted_source(cluster, office, outsider):
    assert office.can_connect("203.0.113.53", 9200)  # gamma trusts 203.0.113.0/24
    assert not outsider.can_connect(cluster["gamma"].ipv4, 9200)


def test_addresses_live_in_sets_not_rules(cluster):
    listing = cluster["alpha"].run("nft list chain inet minicl input").stdout
    assert "198.51.100.52" not in listing  # addresses are in sets, not rules
    sets = cluster["alpha"].run("nft list set inet minicl trusted_v4").stdout
    assert "elements = { 198.51.100.51, 198.51.100.52/31 }" in sets  # collapsed into networks


def test_second_run_changes_nothing(cluster):
    for host in cluster.values():
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout
        assert changed_states(data) == {}


def test_persisted_for_boot_and_restored_after_a_reboot(cluster):
    alpha = cluster["alpha"]
    assert 'include "/etc/nftables.d/minicl.nft"' in alpha.read("/etc/nftables.conf")
    before = alpha.run("nft list table inet minicl").stdout
    alpha.run("nft flush ruleset")  # as after a reboot, before nftables.service runs
    alpha.run("nft -f /etc/nftables.conf")  # what nftables.service does at boot
    assert alpha.run("nft list table inet minicl").stdout == before


def test_other_tools_tables_survive(cluster, git_server):
    alpha = cluster["alpha"]
    alpha.run(
        "nft add table ip othertool && nft add chain ip othertool prerouting "
        "'{ type nat hook prerouting priority dstnat; }' && nft add rule ip othertool prerouting tcp dport 1 counter"
    )
    theirs = alpha.run("nft list table ip othertool").stdout
    git_server.commit({"cluster.json": config(firewall={"confirm_seconds": 5, "ssh_port": 22})}, "touch")
    alpha.run("nft add element inet minicl public_tcp '{ 9999 }'")  # drift: minicl must repair it
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert "+\t\telements = { 8080 }" in changed_states(data)[FIREWALL]["diff"]
    assert alpha.run("nft list table ip othertool").stdout == theirs


def test_test_mode_shows_the_diff_without_applying(cluster, git_server):
    alpha = cluster["alpha"]
    git_server.commit(
        {"cluster.json": config().replace('"8080/tcp"', '"8080/tcp", "9000-9010/tcp"')}, "more ports"
    )
    code, data, _ = salt_call(alpha, "state.apply", "test=True")
    state = data["local"][FIREWALL]
    assert state["result"] is None
    assert "+\t\telements = { 8080, 9000-9010 }" in state["changes"]["diff"]
    assert "9000-9010" not in alpha.run("nft list set inet minicl public_tcp").stdout
    salt_call(alpha, "state.apply")
    assert "9000-9010" in alpha.run("nft list set inet minicl public_tcp").stdout


def test_broken_input_leaves_the_old_rules(cluster):
    alpha = cluster["alpha"]
    before = alpha.run("nft list ruleset").stdout
    alpha.write("/etc/minicl/firewall.local.nft", "this is not nftables\n")
    try:
        code, data, _ = salt_call(alpha, "state.apply")
        state = data["local"][FIREWALL]
        assert state["result"] is False
        assert "nft rejects the ruleset" in state["comment"]
        assert alpha.run("nft list ruleset").stdout == before
    finally:
        alpha.run("rm /etc/minicl/firewall.local.nft")


def test_local_rules_are_included(cluster, outsider):
    alpha = cluster["alpha"]
    alpha.write("/etc/minicl/firewall.local.nft", "ip saddr 198.51.100.99 tcp dport 9200 accept\n")
    try:
        salt_call(alpha, "state.apply")
        assert outsider.can_connect(alpha.ipv4, 9200)
    finally:
        alpha.run("rm /etc/minicl/firewall.local.nft")
        salt_call(alpha, "state.apply")
    assert not outsider.can_connect(alpha.ipv4, 9200)


def test_removed_host_loses_access(cluster, git_server):
    alpha, beta = cluster["alpha"], cluster["beta"]
    assert beta.can_connect(alpha.ipv4, 9200)
    git_server.commit({"cluster.json": config(hosts=("alpha", "gamma"))}, "beta leaves")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert not beta.can_connect(alpha.ipv4, 9200)
    assert not beta.can_connect(alpha.ipv6, 9200)
    assert beta.can_connect(alpha.ipv4, 22)  # like anyone
    assert cluster["gamma"].can_connect(alpha.ipv4, 9200)


def test_deadman_restores_when_no_peer_answers(cluster, git_server):
    alpha = cluster["alpha"]
    before = alpha.run("nft list table inet minicl").stdout
    for name in ("beta", "gamma"):
        cluster[name].stop_sshd()
    try:
        git_server.commit(
            {"cluster.json": config(hosts=("alpha", "gamma")).replace('"8080/tcp"', '"8081/tcp"')},
            "a change nobody can confirm",
        )
        code, data, _ = salt_call(alpha, "state.apply")
        state = data["local"][FIREWALL]
        assert state["result"] is False
        assert "no peer (198.51.100.53) answered on port 22 within 5 s" in state["comment"]
        assert "the previous ruleset is restored" in state["comment"]
        assert alpha.run("nft list table inet minicl").stdout == before
    finally:
        for name in ("beta", "gamma"):
            cluster[name].start_sshd()
    code, data, _ = salt_call(alpha, "state.apply")
    assert data["local"][FIREWALL]["result"] is True
    assert "8081" in alpha.run("nft list set inet minicl public_tcp").stdout


def test_deadman_process_restores_by_itself(cluster):
    """If the run dies after applying, the detached watchdog brings the old rules back."""
    alpha = cluster["alpha"]
    before = alpha.run("nft list table inet minicl").stdout
    alpha.write("/root/restore.nft", "table inet minicl {}\ndelete table inet minicl\n" + before)
    alpha.run("nft add element inet minicl public_tcp '{ 7777 }'")
    alpha.run(["python3", "-m", "minicl.deadman", "/root/restore.nft", "1"], env={"PYTHONPATH": "/work/main"})
    assert alpha.run("nft list table inet minicl").stdout == before


def test_break_glass(cluster, outsider):
    alpha = cluster["alpha"]
    alpha.run("nft delete table inet minicl && touch /etc/minicl/firewall.off")  # at the console
    try:
        assert outsider.can_connect(alpha.ipv4, 9200)  # everything open
        code, data, _ = salt_call(alpha, "state.apply")
        state = data["local"][FIREWALL]
        assert state["result"] is False and "break-glass" in state["comment"]
        assert alpha.run("nft list table inet minicl", check=False).returncode != 0
        alpha.run("nft flush ruleset && nft -f /etc/nftables.conf")  # a reboot keeps it open
        assert alpha.run("nft list table inet minicl", check=False).returncode != 0
    finally:
        alpha.run("rm /etc/minicl/firewall.off")
    code, data, _ = salt_call(alpha, "state.apply")
    assert data["local"][FIREWALL]["result"] is True
    assert not outsider.can_connect(alpha.ipv4, 9200)


def test_a_failing_apply_on_the_host_leaves_the_old_rules(cluster, git_server):
    """nft accepts the ruleset in the throwaway namespace, but nft -f fails on the host itself."""
    alpha = cluster["alpha"]
    before = alpha.run("nft list ruleset").stdout
    hostns = alpha.run("readlink /proc/self/ns/net").stdout.strip()
    alpha.write(
        "/root/nft-wrapper",
        f"""#!/bin/sh
if [ "$(readlink /proc/self/ns/net)" = "{hostns}" ] && [ "$1" = "-f" ]; then
    echo "Error: injected failure on the host" >&2; exit 1
fi
exec /root/nft.real "$@"
""",
        0o755,
    )
    alpha.run("cp /usr/sbin/nft /root/nft.real && mount --bind /root/nft-wrapper /usr/sbin/nft")
    try:
        git_server.commit(
            {"cluster.json": config(hosts=("alpha", "gamma")).replace('"8080/tcp"', '"8090/tcp"')},
            "a change the host cannot apply",
        )
        code, data, _ = salt_call(alpha, "state.apply")
        state = data["local"][FIREWALL]
        assert state["result"] is False
        assert (
            "nft -f failed, the previous ruleset stays: Error: injected failure on the host"
            in state["comment"]
        )
    finally:
        alpha.run("umount /usr/sbin/nft")
    assert alpha.run("nft list ruleset").stdout == before
    assert "8090" not in alpha.read("/etc/nftables.d/minicl.nft")


def test_watchdog_restores_when_the_run_dies(cluster, git_server):
    alpha = cluster["alpha"]
    before = alpha.run("nft list table inet minicl").stdout
    cluster["gamma"].stop_sshd()  # nobody can confirm: the run waits in its confirmation window
    try:
        git_server.commit(
            {"cluster.json": config(hosts=("alpha", "gamma")).replace('"8080/tcp"', '"8091/tcp"')},
            "a change whose run gets killed",
        )
        run = alpha.spawn(["salt-call", "--local", "state.apply"])
        # Wait until the new ruleset is live, then kill the run as a crash or Ctrl-C would.
        alpha.run(
            "for i in $(seq 100); do nft list set inet minicl public_tcp | grep -q 8091 && exit 0; "
            "sleep 0.1; done; exit 1",
            timeout=60,
        )
        alpha.run("pkill -KILL -f 'salt-cal[l] --local state.apply'")  # [l]: not this shell itself
        run.wait(30)
        assert "8091" in alpha.run("nft list set inet minicl public_tcp").stdout
        # confirm_seconds (5) + 10 s of grace: the detached watchdog puts the old ruleset back.
        alpha.run(
            "for i in $(seq 250); do nft list set inet minicl public_tcp | grep -q 8091 || exit 0; "
            "sleep 0.1; done; exit 1",
            timeout=60,
        )
        assert alpha.run("nft list table inet minicl").stdout == before
    finally:
        cluster["gamma"].start_sshd()


def test_moving_ssh_to_another_port_never_closes_the_one_in_use(cluster, git_server, outsider):
    alpha = cluster["alpha"]
    git_server.commit(
        {"cluster.json": config(hosts=("alpha", "gamma"), firewall={"ssh_port": 2222, "confirm_seconds": 5})},
        "ssh moves to 2222",
    )
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    # First run: the firewall opens 2222 next to 22 (sshd still listens there), then sshd moves.
    assert firewall_ssh_ports(alpha) == {22, 2222}
    assert outsider.can_connect(alpha.ipv4, 2222)
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert firewall_ssh_ports(alpha) == {2222}  # second run: 22 is closed, nobody listens there
    assert outsider.can_connect(alpha.ipv4, 2222) and not outsider.can_connect(alpha.ipv4, 22)
    git_server.commit({"cluster.json": config(hosts=("alpha", "gamma"))}, "ssh back on 22")
    salt_call(alpha, "state.apply")
    salt_call(alpha, "state.apply")
    assert firewall_ssh_ports(alpha) == {22} and outsider.can_connect(alpha.ipv4, 22)


def firewall_ssh_ports(host):
    from minicl.firewall import ssh_ports_open

    return ssh_ports_open(host.run("nft list table inet minicl").stdout)
