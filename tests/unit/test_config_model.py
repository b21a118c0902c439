"""The Cluster model that load_cluster returns, and host_snippet."""

import json

import pytest

from minicl import config


@pytest.fixture
def cluster(example_text):
    return config.load_cluster(example_text)


def test_load_cluster_of_the_example(cluster, example_with_apps):
    assert isinstance(cluster, config.Cluster)
    assert cluster.data == example_with_apps
    assert cluster.domain == "example.org"
    assert list(cluster.hosts) == ["alpha", "beta", "watch"]
    assert list(cluster.users) == ["alice", "bob"]


def test_load_cluster_with_repo_files(example_text):
    assert config.load_cluster(example_text, repo_files=[]).domain == "example.org"


def test_load_cluster_refuses_invalid_data(example_data):
    example_data["users"]["bob"]["uid"] = 500
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(json.dumps(example_data), source="repo/cluster.json")
    assert [str(p) for p in caught.value.problems] == [
        "repo/cluster.json: users.bob.uid: 500 is in the system range (must be >= 1000)"
    ]


def test_fqdn(cluster):
    assert cluster.fqdn("alpha") == "alpha.example.org"


@pytest.mark.parametrize(
    "minion_id, host",
    [
        ("alpha", "alpha"),
        ("alpha.example.org", "alpha"),
        ("alpha.example.org.", "alpha"),
        ("ALPHA", "alpha"),
        ("Alpha.Example.ORG", "alpha"),
        ("WATCH.EXAMPLE.ORG.", "watch"),
        ("beta", "beta"),
    ],
)
def test_host_for_minion_known(cluster, minion_id, host):
    assert cluster.host_for_minion(minion_id) == host


@pytest.mark.parametrize(
    "minion_id",
    [
        "gamma",
        "gamma.example.org",
        "alpha.example.com",
        "alpha.other.org",
        "alpha.sub.example.org",
        "alpha.example.org.example.org",
        "alphaexample.org",
        "xalpha.example.org",
        "example.org",
        "",
    ],
)
def test_host_for_minion_unknown(cluster, minion_id):
    assert cluster.host_for_minion(minion_id) is None


def test_host_for_minion_with_upper_case_domain(example_data):
    # domain must be lower case to validate, but the model itself compares case-insensitively.
    example_data["domain"] = "Example.Org"
    assert config.Cluster(example_data).host_for_minion("alpha.example.org") == "alpha"


def test_addresses_of_the_example(cluster):
    assert cluster.addresses() == {
        "v4": ["198.51.100.11", "198.51.100.12", "198.51.100.20"],
        "v6": ["2001:db8:100::11", "2001:db8:100::12", "2001:db8:100::20"],
    }


def test_addresses_split_sorted_and_deduplicated(example_data):
    # Built directly (not validated) so that duplicates can be present.
    example_data["hosts"] = {
        "one": {"ip": ["198.51.100.100", "2001:db8::a", "198.51.100.9"], "roles": ["base"]},
        "two": {"ip": "198.51.100.11", "roles": ["base"]},
        "three": {"ip": ["2001:DB8:0::2", "198.51.100.9", "2001:db8::a", "10.0.0.1"], "roles": ["base"]},
    }
    assert config.Cluster(example_data).addresses() == {
        # numeric order, not string order (.9 < .11 < .100); canonical v6 text
        "v4": ["10.0.0.1", "198.51.100.9", "198.51.100.11", "198.51.100.100"],
        "v6": ["2001:db8::2", "2001:db8::a"],
    }


def test_addresses_of_a_v4_only_cluster(example_data):
    example_data["hosts"] = {"solo": {"ip": "198.51.100.1", "roles": ["base"]}}
    cluster = config.load_cluster(json.dumps(example_data))
    assert cluster.addresses() == {"v4": ["198.51.100.1"], "v6": []}


def test_host_ips_string_and_list(example_data):
    example_data["hosts"]["beta"]["ip"] = "198.51.100.12"
    cluster = config.load_cluster(json.dumps(example_data))
    assert cluster.host_ips("beta") == ["198.51.100.12"]
    assert cluster.host_ips("alpha") == ["198.51.100.11", "2001:db8:100::11"]


def test_host_roles(cluster):
    assert cluster.host_roles("alpha") == ["base"]
    assert cluster.host_roles("watch") == ["base", "monitor"]


def test_host_roles_is_a_copy(cluster):
    cluster.host_roles("watch").append("web")
    assert cluster.hosts["watch"]["roles"] == ["base", "monitor"]


def test_role_states_of_minicl_roles(cluster):
    assert cluster.role_states("alpha") == ["minicl.base", "minicl.apps.postgresql", "minicl.apps.redis"]
    assert cluster.role_states("watch") == ["minicl.base", "minicl.monitor"]


def test_apps_of_a_host(cluster):
    db = cluster.apps_of("beta")["db"]
    assert (db["host"], db["primary"], db["name"]) == ("beta", "alpha", "db")
    assert db["peers"] == {"alpha": ["198.51.100.11", "2001:db8:100::11"]}
    assert db["databases"] == {"shop": {"owner": "alice"}}
    assert cluster.apps_of("alpha")["db"]["primary"] == "alpha"
    assert cluster.apps_of("watch") == {}


def test_role_states_of_repo_roles_in_role_order(example_data):
    example_data["hosts"]["alpha"]["roles"] = ["web", "base", "monitor", "db-primary"]
    cluster = config.load_cluster(
        json.dumps(example_data), repo_files=["roles/web/init.sls", "roles/db-primary/init.sls"]
    )
    assert cluster.role_states("alpha") == ["roles.web", "minicl.base", "minicl.monitor", "roles.db-primary"]


def test_user_keys_string_and_list(cluster, example_data):
    assert cluster.user_keys("bob") == [example_data["users"]["bob"]["ssh_key"]]
    assert cluster.user_keys("alice") == example_data["users"]["alice"]["ssh_key"]
    assert len(cluster.user_keys("alice")) == 2


def test_smtp_port_given(cluster, example_data):
    assert cluster.smtp_port() == 587
    example_data["smtp"]["port"] = 465
    assert config.load_cluster(json.dumps(example_data)).smtp_port() == 465


def test_smtp_port_default(example_data):
    del example_data["smtp"]["port"]
    assert config.load_cluster(json.dumps(example_data)).smtp_port() == 587


def test_host_view(cluster):
    assert cluster.host_view("watch") == {
        "name": "watch",
        "fqdn": "watch.example.org",
        "ip": ["198.51.100.20", "2001:db8:100::20"],
        "roles": ["base", "monitor"],
    }


def test_as_list():
    assert config.as_list("a") == ["a"]
    assert config.as_list(["a", "b"]) == ["a", "b"]
    assert config.as_list(("a",)) == ["a"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (("gamma", ["198.51.100.13"]), {"gamma": {"ip": ["198.51.100.13"], "roles": ["base"]}}),
        (
            ("gamma", ("198.51.100.13", "2001:db8::13"), ["base", "web"]),
            {"gamma": {"ip": ["198.51.100.13", "2001:db8::13"], "roles": ["base", "web"]}},
        ),
        (("gamma", ["ADDRESS"]), {"gamma": {"ip": ["ADDRESS"], "roles": ["base"]}}),
    ],
)
def test_host_snippet_is_json_in_braces(args, expected):
    snippet = config.host_snippet(*args)
    assert json.loads("{" + snippet + "}") == expected
    assert not snippet.strip().startswith("{")
    assert snippet.startswith('  "gamma": {')


def test_host_snippet_pasted_into_hosts_validates(example_text):
    snippet = config.host_snippet("gamma", ["198.51.100.13", "2001:db8:100::13"])
    text = example_text.replace('"hosts": {', '"hosts": {\n' + snippet + ",", 1)
    cluster = config.load_cluster(text, repo_files=[])
    assert list(cluster.hosts) == ["gamma", "alpha", "beta", "watch"]
    assert cluster.host_for_minion("gamma.example.org") == "gamma"
    assert "198.51.100.13" in cluster.addresses()["v4"]
