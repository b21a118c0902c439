"""The firewall ruleset as a pure function of cluster.json: golden outputs, collapsing, and
the properties that make it safe (SSH always open, constant rule count)."""

import copy
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from minicl import config, firewall

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).parent / "golden"
EXAMPLE = json.loads((ROOT / "cluster.json.example").read_text())


def cluster(**changes):
    data = copy.deepcopy(EXAMPLE)
    data.update(changes)
    return config.Cluster(data)


def alpha_cluster():
    data = copy.deepcopy(EXAMPLE)
    data["hosts"]["alpha"].update(
        public_ports=["443/tcp", "80/tcp", "51820/udp", "8000-8100/tcp", "8050/tcp"],
        trusted_sources=["203.0.113.0/24", "198.51.100.0/28", "2001:db8:ffff::/48"],
        roles=["base", "web"],
    )
    data["roles"] = {"web": {"public_ports": ["443/tcp", "8443/tcp"]}}
    data["firewall"] = {"ssh_port": 2222}
    return config.Cluster(data)


def test_golden_alpha():
    spec = firewall.host_spec(alpha_cluster(), "alpha", "ip saddr 192.0.2.1 tcp dport 9100 accept\n")
    assert firewall.render_ruleset(spec) == (GOLDEN / "alpha.nft").read_text()


def test_golden_watch_defaults():
    spec = firewall.host_spec(cluster(), "watch")
    assert firewall.render_ruleset(spec) == (GOLDEN / "watch.nft").read_text()


def test_spec_collapses_networks_and_ports():
    spec = firewall.host_spec(alpha_cluster(), "alpha")
    assert spec.trusted_v4 == ["198.51.100.0/28", "198.51.100.20", "203.0.113.0/24"]
    assert spec.trusted_v6 == [
        "2001:db8:100::11",
        "2001:db8:100::12",
        "2001:db8:100::20",
        "2001:db8:ffff::/48",
    ]
    assert spec.public_tcp == ["80", "443", "8000-8100", "8443"]
    assert spec.public_udp == ["51820"]
    assert spec.ssh_ports == [2222]


def test_the_port_sshd_still_listens_on_stays_open():
    spec = firewall.host_spec(alpha_cluster(), "alpha", listening_ssh_ports=[22])
    assert spec.ssh_ports == [22, 2222]
    assert 'tcp dport { 22, 2222 } accept comment "ssh, always"' in firewall.render_ruleset(spec)
    assert firewall.ssh_ports_open(firewall.render_ruleset(spec)) == {22, 2222}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("tcp dport 9100 accept\n", None),
        ("tcp dport { 80, 443 } accept\n", None),
        ("}\nchain evil { type filter hook input priority -1; policy drop; }\n{", '"chain" is not allowed'),
        ("accept }\n", "its braces { } do not balance"),
        ("flush ruleset\n", '"flush" is not allowed'),
    ],
)
def test_local_rules_stay_in_the_input_chain(text, problem):
    found = firewall.local_rules_problem(text)
    assert (found is None) if problem is None else (problem in found)


def test_counters_do_not_make_a_difference():
    a = '{"nftables": [{"rule": {"expr": [{"counter": {"packets": 0, "bytes": 0}}], "handle": 1}}]}'
    b = '{"nftables": [{"rule": {"expr": [{"counter": {"packets": 9, "bytes": 999}}], "handle": 7}}]}'
    assert firewall._normalise(a) == firewall._normalise(b)


def test_adjacent_ports_merge():
    assert firewall._collapse_ports([(80, 80), (81, 81), (83, 90), (85, 86)]) == ["80-81", "83-90"]


def test_role_ports_only_for_hosts_with_the_role():
    spec = firewall.host_spec(alpha_cluster(), "beta")
    assert spec.public_tcp == [] and spec.public_udp == []


def test_empty_sets_have_no_elements_line():
    text = firewall.render_ruleset(firewall.host_spec(cluster(), "watch"))
    public = text.split("set public_tcp {")[1].split("}")[0]
    assert "elements" not in public


def _rules(text):
    chain = text.split("chain input {")[1]
    return [
        line.strip()
        for line in chain.splitlines()
        if line.strip() and not line.strip().startswith(("#", "}", "type "))
    ]


@pytest.mark.parametrize("count", [10, 1000, 10000])
def test_rule_count_is_constant(count):
    data = copy.deepcopy(EXAMPLE)
    data["hosts"] = {f"h{n}": {"ip": f"2001:db8::{n:x}", "roles": ["base"]} for n in range(count)}
    text = firewall.render_ruleset(firewall.host_spec(config.Cluster(data), "h0"))
    assert len(_rules(text)) == len(_rules((GOLDEN / "watch.nft").read_text()))


@pytest.mark.parametrize("port", [22, 2222, 65535])
def test_ssh_is_always_open_before_anything_can_drop(port):
    text = firewall.render_ruleset(
        firewall.host_spec(cluster(firewall={"ssh_port": port}), "alpha", "drop\n")
    )
    rules = _rules(text)
    ssh = rules.index(f'tcp dport {port} accept comment "ssh, always"')
    assert firewall.local_rules_problem("drop\n") is None
    assert all("drop" not in rule for rule in rules[:ssh] if "invalid" not in rule)


def test_only_table_inet_minicl_is_touched():
    text = firewall.render_ruleset(firewall.host_spec(alpha_cluster(), "alpha"))
    assert "flush ruleset" not in text
    tables = {
        line.split("{")[0].strip() for line in text.splitlines() if line.startswith(("table", "delete"))
    }
    assert tables == {"table inet minicl", "delete table inet minicl"}


def test_restore_script():
    assert firewall.restore_script("") == "table inet minicl {}\ndelete table inet minicl\n"
    assert firewall.restore_script("table inet minicl {\n}\n").endswith("table inet minicl {\n}\n")


def test_peers_are_the_other_hosts_ipv4_first():
    assert firewall.peers_of(cluster(), "alpha") == ["198.51.100.12", "198.51.100.20"]


def test_normalise_ignores_handles_and_metainfo():
    a = '{"nftables": [{"metainfo": {"version": "1"}}, {"table": {"name": "minicl", "handle": 3}}]}'
    b = '{"nftables": [{"metainfo": {"version": "2"}}, {"table": {"name": "minicl", "handle": 9}}]}'
    assert firewall._normalise(a) == firewall._normalise(b) == [{"table": {"name": "minicl"}}]


needs_nft = pytest.mark.skipif(
    not (shutil.which("nft") and shutil.which("unshare") and os.geteuid() == 0),
    reason="needs nft and root (checks run in a throwaway network namespace)",
)


@needs_nft
@pytest.mark.parametrize("golden", ["alpha.nft", "watch.nft"])
def test_nft_accepts_the_goldens(golden):
    # nft -c in a fresh network namespace: nothing on this machine can change.
    result = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(GOLDEN / golden)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@needs_nft
def test_canonical_form_is_stable_and_rejects_garbage():
    text = (GOLDEN / "alpha.nft").read_text()
    first, listing = firewall.canonical(text)
    again, _ = firewall.canonical(text)
    assert first == again and "set trusted_v4" in listing
    with pytest.raises(firewall.FirewallError, match="nft rejects the ruleset"):
        firewall.canonical(text.replace("policy drop", "policy sometimes"))


def test_app_ports_answer_cluster_hosts_only():
    with_app = firewall.render_ruleset(firewall.host_spec(alpha_cluster(), "alpha"))
    assert "tcp dport @cluster_only_tcp ip saddr != @cluster_v4 drop" in with_app
    assert "203.0.113.0/24" not in with_app.split("set cluster_v4")[1].split("}")[0]  # not a trusted source
    assert with_app.index("!= @cluster_v6 drop") < with_app.index("ip saddr @trusted_v4 accept")
    without = firewall.render_ruleset(firewall.host_spec(cluster(), "watch"))  # watch runs no app
    assert "cluster_only_tcp" not in without
