"""The Redis appliance's pure parts: what it writes, and who is the primary after what happened."""

import json
import pathlib

import pytest

from minicl import appliances, config, rules
from minicl.appliances import redis
from minicl.appliances.redis import Decision, Server

EXAMPLE = json.loads((pathlib.Path(__file__).parents[2] / "cluster.json.example").read_text())


@pytest.fixture(autouse=True)
def key(deploy_key):
    return deploy_key


def app_of(host, **changes):
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["cache"].update(changes)
    return config.Cluster(data).apps_of(host)["cache"]


def test_the_primary_listens_on_its_addresses_with_the_password_and_logs_to_syslog():
    app = app_of("alpha")
    text = redis.render_conf(app, Decision("primary"))
    assert "bind -198.51.100.11 -2001:db8:100::11 127.0.0.1 -::1\n" in text
    assert f"requirepass {redis.password(app)}\n" in text and f"masterauth {redis.password(app)}\n" in text
    assert "syslog-enabled yes\n" in text and 'logfile ""\n' in text
    assert "maxmemory 256mb\n" in text and "maxmemory-policy allkeys-lru\n" in text
    assert "dir /var/lib/redis\n" in text and "appendonly no\n" in text
    assert "replicaof" not in text and "user " not in text


def test_a_replica_follows_its_primary_by_address():
    text = redis.render_conf(app_of("beta"), Decision("replica", "alpha"))
    assert text.endswith(f"{redis.ROLE_MARK}\nreplicaof 198.51.100.11 6379\n")


def test_a_promoted_primary_publishes_its_promotion_in_the_role_part():
    text = redis.render_conf(app_of("beta"), Decision("primary", epoch=1700000000))
    assert text.endswith(f"{redis.ROLE_MARK}\nuser minicl-promoted-1700000000 off\n")
    assert redis.settings_part(text) == redis.settings_part(
        redis.render_conf(app_of("beta"), Decision("replica", "alpha"))
    )


def test_without_maxmemory_there_is_no_limit_and_nothing_is_evicted():
    app = app_of("alpha")
    app.pop("maxmemory"), app.pop("maxmemory_policy")
    text = redis.render_conf(app, Decision("primary"))
    assert "maxmemory " not in text and "maxmemory-policy noeviction\n" in text


def test_the_password_is_derived_alike_and_redacted():
    first = redis.password(app_of("alpha"))
    assert first == redis.password(app_of("beta")) and len(first) == 64
    assert first != appliances.shared_secret("db", "redis password")
    shown = redis.redacted(app_of("alpha"), redis.render_conf(app_of("alpha"), Decision("primary")))
    assert first not in shown and "requirepass (hidden)" in shown


def test_debians_redis_conf_gets_the_include_as_its_last_line():
    debian = "# include /path/to/local.conf\nbind 127.0.0.1 -::1\nport 6379\n\n"
    text = redis.render_main_conf(debian)
    assert text.startswith(debian.rstrip()) and text.endswith("\ninclude /etc/redis/minicl.conf\n")
    assert redis.includes_minicl(text) and not redis.includes_minicl(debian)
    assert redis.render_main_conf(text) == text
    # Included, but not last: settings after it would win, so it moves to the end.
    moved = redis.render_main_conf(text + "maxmemory 1gb\n")
    assert moved.count("include /etc/redis/minicl.conf") == 1 and redis.includes_minicl(moved)


def test_peers_by_address():
    app = app_of("beta")
    assert redis.peer_at(app, "2001:db8:100::11") == "alpha" and redis.peer_at(app, "10.0.0.1") is None


@pytest.mark.parametrize(
    "text, size", [("1000", 1000), ("256mb", 256 * 2**20), ("2g", 2 * 10**9), ("1gb", 2**30)]
)
def test_memory_sizes_as_redis_reads_them(text, size):
    assert rules.memory_bytes(text) == size


# -- who is the primary ----------------------------------------------------------------------

PRIMARY = Server("primary")
ALPHA_ADDR, BETA_ADDR = "198.51.100.11", "198.51.100.12"


def decide(host, promoted=0, own=None, peers=None, converged=True):
    app = app_of(host)
    return redis.decide_role(app, host, promoted, own, peers or {}, own_converged=converged)


def test_at_creation_the_first_host_is_the_primary():
    assert decide("alpha", peers={"beta": None}) == Decision("primary", why=decide("alpha").why)
    # beta's stock server (not yet minicl's) is no primary in view, with alpha down or up.
    assert decide("beta", own=PRIMARY, converged=False, peers={"alpha": None}).master == "alpha"
    assert decide("beta", own=PRIMARY, converged=False, peers={"alpha": PRIMARY}).master == "alpha"


def test_a_converged_primary_alone_stays_and_its_replica_follows_it():
    assert decide("alpha", own=PRIMARY, peers={"beta": Server("replica", ALPHA_ADDR)}).role == "primary"
    assert decide("beta", own=Server("replica", ALPHA_ADDR), peers={"alpha": PRIMARY}) == Decision(
        "replica", "alpha", why="the only primary that answers"
    )


def test_a_promoted_replica_stays_primary_although_cluster_json_lists_another_first():
    found = decide(
        "beta", promoted=1700000000, own=Server("primary", epoch=1700000000), peers={"alpha": None}
    )
    assert found.role == "primary" and found.epoch == 1700000000
    # Its server down (a restart): still the primary, from its promotion record.
    assert decide("beta", promoted=1700000000, own=None, peers={"alpha": None}).role == "primary"


def test_the_old_primary_back_becomes_a_replica_of_the_promoted_one():
    found = decide("alpha", own=PRIMARY, peers={"beta": Server("primary", epoch=1700000000)})
    assert found == Decision("replica", "beta", why="the most recently promoted primary (at 1700000000)")
    assert decide("alpha", own=None, peers={"beta": Server("primary", epoch=1700000000)}).master == "beta"


def test_of_two_promoted_primaries_the_newer_wins():
    older, newer = Server("primary", epoch=1700000000), Server("primary", epoch=1700000100)
    assert decide("beta", promoted=1700000000, own=older, peers={"alpha": newer}).master == "alpha"
    assert decide("alpha", promoted=1700000100, own=newer, peers={"beta": older}).role == "primary"


def test_a_fenced_promoted_host_follows_its_new_primary():
    fenced = Server("replica", ALPHA_ADDR, epoch=1700000000)
    assert decide("beta", promoted=1700000000, own=fenced, peers={"alpha": None}).master == "alpha"


def test_between_primaries_never_promoted_the_first_in_cluster_json_wins():
    # A replica made primary by hand (REPLICAOF NO ONE) is undone: promote with failover.
    assert decide("beta", own=PRIMARY, peers={"alpha": PRIMARY}).master == "alpha"
    assert decide("alpha", own=PRIMARY, peers={"beta": PRIMARY}).role == "primary"


def test_with_no_primary_in_view_a_replica_keeps_following_its_primary():
    # alpha was fenced to follow beta, and beta is restarting: alpha does not take over.
    found = decide("alpha", own=Server("replica", BETA_ADDR), peers={"beta": None})
    assert found == Decision("replica", "beta", why="no primary answers; it keeps its primary")


# -- what a converge does at runtime ----------------------------------------------------------


def test_role_changes_are_made_at_runtime():
    app = app_of("alpha")
    assert redis.role_commands(app, PRIMARY, Decision("primary")) == []
    assert redis.role_commands(app, Server("primary", epoch=5), Decision("replica", "beta")) == [
        ("REPLICAOF beta", ["REPLICAOF", BETA_ADDR, "6379"]),
        ("ACL DELUSER (promotion)", ["ACL", "DELUSER", "minicl-promoted-5"]),
    ]
    assert redis.role_commands(app, Server("replica", BETA_ADDR), Decision("primary", epoch=7)) == [
        ("REPLICAOF NO ONE", ["REPLICAOF", "NO", "ONE"]),
        ("ACL SETUSER (promotion)", ["ACL", "SETUSER", "minicl-promoted-7", "off"]),
    ]


def test_info_is_parsed_and_replicas_listed():
    info = redis.parse_info(
        "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n"
        "slave0:ip=198.51.100.12,port=6379,state=online,offset=42,lag=0\r\nmaster_repl_offset:50\r\n"
    )
    assert info["role"] == "master" and info["master_repl_offset"] == "50"
    assert redis._replicas(info) == {
        BETA_ADDR: {"ip": BETA_ADDR, "port": "6379", "state": "online", "offset": "42", "lag": "0"}
    }


def test_the_appliance_says_what_monitoring_needs():
    assert (redis.EXPORTER_PACKAGE, redis.EXPORTER_SERVICE, redis.EXPORTER_PORT) == (
        "prometheus-redis-exporter",
        "prometheus-redis-exporter",
        9121,
    )
    assert appliances.module("redis") is redis and redis.PORT == 6379
    assert set(redis.VERBS) <= set(appliances.CONTRACT) and set(appliances.CONTRACT) == set(redis.VERBS)
    assert redis.EXPORTER_DEFAULTS_SECRET
