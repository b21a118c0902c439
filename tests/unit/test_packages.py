"""The cluster's apt repository and package upgrades: cluster.json's packages section and its
rules, what a host's apt is told, apt's simulation read, the rollout's decisions, the states in
test=True and real mode (the real upgrade runs in tests/integration/test_packages.py)."""

import json
import os
import time

import pytest

from minicl import aptrepo, aptsource, checks, cli, firewall, hostcopy, package_rollout, packages, upgrade
from minicl.cluster import Cluster
from minicl.config import validate
from minicl.rollout import MonitorUnreachable

from . import loader

KEYS = {"packages.key", "packages.key.pub", "cluster.json", "deploy.key"}


@pytest.fixture
def data(example_data):
    example_data["hosts"]["watch"]["roles"].append(packages.ROLE)
    example_data["packages"] = {"upstream": {"url": "http://deb.debian.org/debian"}, "list": ["nginx"]}
    return example_data


def messages(data, repo_files=None):
    return [f"{p.path}: {p.message}" for p in validate(data, "cluster.json", repo_files)]


def test_a_packages_section_with_its_repository_host_and_keys_is_valid(data):
    assert messages(data, KEYS) == []
    data["packages"].update(local="debs", window="22:30-04:00", snapshot="20261204T053000Z", use="all")
    data["hosts"]["beta"]["packages"] = "none"
    assert messages(data, KEYS | {"debs/tool_1.0_all.deb"}) == []


def test_the_repository_needs_one_host_its_keys_and_its_files(data):
    data["hosts"]["watch"]["roles"].remove(packages.ROLE)
    assert messages(data) == [
        "packages: no host has the repository role: give it to the host that serves the cluster's repository"
    ]
    data["hosts"]["watch"]["roles"].append(packages.ROLE)
    data["hosts"]["alpha"]["roles"].append(packages.ROLE)
    assert messages(data) == ["packages: the repository role is on alpha, watch: give it to one host only"]
    data["hosts"]["alpha"]["roles"].remove(packages.ROLE)
    missing = messages(data, {"cluster.json"})
    assert len(missing) == 2 and all("minicl packages-key" in m for m in missing), missing
    data["packages"]["upstream"]["key"] = "keys/debian.asc"
    data["packages"]["local"] = "debs"
    assert messages(data, KEYS) == [
        'packages.local: "debs" is not a folder of the config repo',
        'packages.upstream.key: "keys/debian.asc" is not a file of the config repo',
    ]


def test_the_role_and_a_host_setting_need_the_section(data):
    del data["packages"]
    data["hosts"]["beta"]["packages"] = "all"
    assert messages(data) == [
        'hosts.beta.packages: there is no "packages" section to use',
        'hosts.watch.roles: the repository role serves the packages of the "packages" section, and there is '
        "none: add one (upstream, list), or remove the role",
    ]


@pytest.mark.parametrize(
    "field, value",
    [("window", "2:00-5:00"), ("window", "25:00-01:00"), ("use", "some"), ("list", []), ("snapshot", "latest"),
     ("keep", 1), ("port", 0)],
)  # fmt: skip
def test_bad_values_are_refused_with_the_field_named(data, field, value):
    data["packages"][field] = value
    found = messages(data, KEYS)
    assert found and all(m.startswith(f"packages.{field}") for m in found), found


def test_what_hosts_learn_of_the_repository(data):
    cluster = Cluster(data)
    assert packages.repository_host(cluster) == "watch"
    assert packages.base_url(cluster) == "http://198.51.100.20:8080/"
    assert packages.use(cluster, "alpha") == "listed"
    data["hosts"]["alpha"]["packages"] = "all"
    assert packages.use(cluster, "alpha") == "all"
    settings = packages.settings(cluster)
    assert settings["upstream"] == [{"url": "http://deb.debian.org/debian", "distribution": "bookworm",
                                     "components": ["main"]}]  # fmt: skip
    assert (settings["every"], settings["keep"], settings["port"]) == ("1d", 10, 8080)
    assert packages.cluster_only_ports(cluster, "watch") == [8080]
    assert packages.cluster_only_ports(cluster, "alpha") == []
    # The firewall opens the port to the cluster's hosts only, on the repository host only.
    assert "8080" in firewall.render_ruleset(firewall.host_spec(cluster, "watch"))
    assert "8080" not in firewall.render_ruleset(firewall.host_spec(cluster, "alpha"))


def test_the_pillar_carries_keys_from_the_checkout_and_the_secret_only_to_the_repository(data, tmp_path):
    (tmp_path / "packages.key").write_text("SECRET")
    (tmp_path / "packages.key.pub").write_text("PUBLIC")
    cluster = Cluster(data)
    alpha = packages.pillar(cluster, "alpha", str(tmp_path))
    assert alpha["public_key"] == "PUBLIC" and "repository" not in alpha
    assert "SECRET" not in json.dumps(alpha)
    watch = packages.pillar(cluster, "watch", str(tmp_path))
    assert watch["repository"]["signing_key"] == "SECRET"
    assert watch["repository"]["upstream_key_files"] == [packages.DEBIAN_KEYRING]
    data["packages"]["upstream"] = [
        {"url": "http://deb.debian.org/debian", "key": "keys/debian.asc"},
        {"url": "http://security.debian.org/debian-security", "distribution": "bookworm-security"},
    ]
    watch = packages.pillar(Cluster(data), "watch", str(tmp_path))
    assert watch["repository"]["upstream_key_files"] == sorted(
        [packages.DEBIAN_KEYRING, f"{tmp_path}/keys/debian.asc"]
    )
    assert [u["distribution"] for u in watch["repository"]["settings"]["upstream"]] == [
        "bookworm",
        "bookworm-security",
    ]
    assert messages(data, KEYS) == [
        'packages.upstream[0].key: "keys/debian.asc" is not a file of the config repo'
    ]
    assert messages(data, KEYS | {"keys/debian.asc"}) == []
    data["packages"]["upstream"][1]["bogus"] = 1
    assert messages(data, KEYS | {"keys/debian.asc"}) == [
        "packages.upstream[1].bogus: unknown field (allowed here: components, distribution, key, url)"
    ]
    data["packages"]["upstream"] = "http://deb.debian.org/debian"
    assert messages(data, KEYS) == [
        'packages.upstream: must be an object or a list of objects, not "http://deb.debian.org/debian"'
    ]
    data["packages"]["upstream"] = {"url": "http://deb.debian.org/debian"}
    data["packages"]["local"] = "debs"
    assert packages.pillar(Cluster(data), "watch", str(tmp_path))["repository"]["local_dir"] == str(
        tmp_path / "debs"
    )
    data["packages"]["local"] = "/srv/debs"  # a folder on the repository host
    assert packages.pillar(Cluster(data), "watch", str(tmp_path))["repository"]["local_dir"] == "/srv/debs"
    assert messages(data, KEYS) == []
    del data["packages"]
    assert packages.pillar(Cluster(data), "alpha") is None


def test_apt_is_told_one_snapshot_one_key_and_the_pin(tmp_path):
    files = aptsource.render(
        "http://198.51.100.20:8080/", "20261204T053000Z", "listed", ["nginx", "curl"], "KEY"
    )
    assert files[aptsource.KEYRING] == "KEY"
    sources = files[aptsource.SOURCES]
    assert "URIs: http://198.51.100.20:8080/20261204T053000Z/\n" in sources
    assert "Signed-By: /etc/apt/keyrings/minicl.asc\n" in sources and "Suites: minicl\n" in sources
    assert "Package: curl nginx\nPin: release o=minicl\nPin-Priority: 990\n" in files[aptsource.PREFERENCES]
    assert "Package: *\n" in aptsource.render_preferences("all", ["nginx"])
    path = tmp_path / "minicl.sources"
    path.write_text(sources)
    assert aptsource.configured_snapshot(str(path)) == "20261204T053000Z"
    assert aptsource.configured_snapshot(str(tmp_path / "none")) is None


def test_the_target_snapshot_is_the_newest_or_the_one_held():
    published = [{"name": "20261201T000000Z"}, {"name": "20261202T000000Z"}]
    assert aptsource.target_snapshot({}, published) == "20261202T000000Z"
    assert aptsource.target_snapshot({"snapshot": "20261201T000000Z"}, published) == "20261201T000000Z"
    assert aptsource.target_snapshot({}, []) is None
    with pytest.raises(aptsource.SourceError, match="20261203T000000Z is not published"):
        aptsource.target_snapshot({"snapshot": "20261203T000000Z"}, published)


def test_apt_simulation_is_read():
    text = (
        "Reading package lists...\n"
        "Inst minicl-lab-lib [1.0] (1.1 minicl:minicl [amd64])\n"
        "Inst libnew (2.0-1 minicl:minicl [amd64])\n"
        "Conf minicl-lab-lib (1.1 minicl:minicl [amd64])\n"
    )
    assert upgrade.parse_simulation(text) == [
        {"package": "minicl-lab-lib", "from": "1.0", "to": "1.1"},
        {"package": "libnew", "from": None, "to": "2.0-1"},
    ]
    assert upgrade.moves(upgrade.parse_simulation(text)) == "minicl-lab-lib 1.0 -> 1.1, libnew (new) -> 2.0-1"
    assert upgrade.REBOOT_PACKAGES.match("linux-image-6.1.0-28-amd64")
    assert not upgrade.REBOOT_PACKAGES.match("linux-base")
    assert upgrade.upgrade_args("all", ["nginx"]) == ["upgrade"]


def test_only_new_failures_count():
    before = {"ssh": True, "unit old.service": False, "packages verified": False}
    after = {"ssh": True, "unit old.service": False, "unit web.service": False, "packages verified": False,
             "postfix": False}  # fmt: skip
    assert upgrade.new_failures(before, after) == ["postfix", "unit web.service"]


def test_load_and_memory_do_not_judge_an_upgrade(monkeypatch):
    # The machine's load or memory at the moment says nothing of the upgrade (a rehearsal's copy
    # shares the kernel): a busy minute must not undo a good one. A failed unit still counts.
    found = [checks.Check("load", False, "9.00 over 5 min on 2 CPU(s)", 4.5),
             checks.Check("memory", False, "3% available", 0.03),
             checks.Check("systemd units", False, "failed: web.service, db.service", 2),
             checks.Check("postfix", True, "running", None)]  # fmt: skip
    monkeypatch.setattr(checks, "run_all", lambda: found)
    assert upgrade.host_checks() == {"unit web.service": False, "unit db.service": False, "postfix": True}


def test_the_upgrade_window():
    at = time.mktime((2026, 12, 4, 3, 0, 0, 0, 0, -1))
    assert package_rollout.in_window(None, at)
    assert package_rollout.in_window("02:00-05:00", at)
    assert not package_rollout.in_window("04:00-05:00", at)
    assert package_rollout.in_window("22:00-04:00", at)  # across midnight
    assert not package_rollout.in_window("22:00-02:59", at)


def rollout_cluster(canaries=("alpha",), monitor=True):
    hosts = {
        "alpha": {"ip": "198.51.100.1", "roles": ["base"]},
        "beta": {"ip": "198.51.100.2", "roles": ["base"]},
    }
    if monitor:
        hosts["watch"] = {"ip": "198.51.100.3", "roles": ["base", "monitor"]}
    return Cluster({"hosts": hosts, "rollout": {"canaries": list(canaries), "soak": "1h"}})


def answers(failed=(), good=None):
    def ask(cluster, promql):
        if promql.startswith("minicl_packages_upgrade_error_info"):
            return [{"metric": {"instance": h, "packages": "web"}, "value": [0, "1"]} for h in failed]
        if "good_since" in promql:
            return [{"metric": {"instance": h}, "value": [0, str(s)]} for h, s in (good or {}).items()]
        return []

    return ask


def test_the_rollout_decides():
    cluster = rollout_cluster()
    decide = package_rollout.decide
    assert decide({}, cluster, "alpha", "S1", None, {})[0] == "none"
    assert decide({}, cluster, "alpha", "S1", "S1", {})[0] == "none"
    assert decide({}, cluster, "alpha", "S1", "S2", {"snapshot": "S2", "stage": "rehearsal"})[0] == "failed"
    assert decide({}, cluster, "alpha", "S1", "S2", {"snapshot": "S1"}, ask=answers()) == (
        "upgrade", "alpha is a canary")  # fmt: skip
    action, why = decide({}, cluster, "beta", "S1", "S2", {}, ask=answers())
    assert action == "wait" and "waiting for the canaries to run snapshot S2" in why
    assert decide({}, cluster, "beta", "S1", "S2", {}, ask=answers(good={"alpha": 3600}))[0] == "upgrade"
    action, why = decide(
        {}, cluster, "beta", "S1", "S2", {}, ask=answers(failed=["alpha"], good={"alpha": 9999})
    )
    assert action == "wait" and why == "the rollout of snapshot S2 is stopped: it failed on alpha (web)"
    window = {"window": "00:00-00:01"}
    assert (
        decide(window, cluster, "alpha", "S1", "S2", {}, now=time.mktime((2026, 12, 4, 12, 0, 0, 0, 0, -1)))[
            0
        ]
        == "wait"
    )

    def unreachable(cluster, promql):
        raise MonitorUnreachable("watch: refused")

    action, why = decide({}, cluster, "alpha", "S1", "S2", {}, ask=unreachable)
    assert action == "wait" and "no monitor answered" in why
    # Without canaries and without a monitor: every host on its next run.
    assert decide({}, rollout_cluster((), monitor=False), "beta", "S1", "S2", {})[0] == "upgrade"


def test_the_repository_is_due_when_its_inputs_change_or_time_has_passed(monkeypatch):
    settings = {"upstream": [{"url": "u", "distribution": "d", "components": ["main"]}], "list": ["b", "a"],
                "every": "1d"}  # fmt: skip
    wanted = aptrepo.inputs(settings, "FPR", {"x.deb": "sha"})
    assert wanted["list"] == ["a", "b"]
    monkeypatch.setattr(aptrepo, "index", lambda: [])
    assert aptrepo.due(settings, {}, wanted) == "no snapshot published yet"
    monkeypatch.setattr(aptrepo, "index", lambda: [{"name": "S1"}])
    state = {"inputs": wanted, "refreshed_at": 1000}
    assert aptrepo.due(settings, state, wanted, now=2000) is None
    assert "more than 1d ago" in aptrepo.due(settings, state, wanted, now=1000 + 86400)
    assert "changed" in aptrepo.due(settings, state, dict(wanted, list=["a"]), now=2000)
    site = aptrepo.render_nginx_site(8080)
    assert "listen 8080;" in site and "listen [::]:8080;" in site and f"root {aptrepo.ROOT}/public;" in site


def test_packages_key_writes_a_key_pair_once(tmp_path, capsys):
    assert cli.packages_key("test cluster", str(tmp_path)) == 0
    secret, public = tmp_path / "packages.key", tmp_path / "packages.key.pub"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY BLOCK" in secret.read_text() and "PUBLIC KEY BLOCK" in public.read_text()
    assert len(aptrepo.fingerprints(public.read_text())) == 1
    assert aptrepo.fingerprints(public.read_text()) == aptrepo.fingerprints(secret.read_text())
    assert cli.packages_key("test cluster", str(tmp_path)) == 1
    assert "exists" in capsys.readouterr().err


VIEW = {"use": "listed", "url": "http://198.51.100.20:8080/", "list": ["web"], "snapshot": None,
        "public_key": "KEY"}  # fmt: skip


@pytest.fixture
def apt_files(tmp_path, monkeypatch):
    paths = {name: str(tmp_path / name) for name in ("minicl.asc", "minicl.sources", "minicl.pref")}
    monkeypatch.setattr(aptsource, "KEYRING", paths["minicl.asc"])
    monkeypatch.setattr(aptsource, "SOURCES", paths["minicl.sources"])
    monkeypatch.setattr(aptsource, "PREFERENCES", paths["minicl.pref"])
    monkeypatch.setattr(upgrade, "RECORD", str(tmp_path / "packages.json"))
    monkeypatch.setattr(aptsource, "published", lambda url: [{"name": "S1"}])
    updates = []
    monkeypatch.setattr(aptsource, "update_minicl_source", lambda: updates.append(1))
    return paths, updates


@pytest.mark.parametrize("testmode", [True, False])
def test_the_source_state(apt_files, testmode):
    paths, updates = apt_files
    state = loader.load_state("minicl_packages", testmode, {"minicl": {"packages": VIEW}})
    ret = state.source("minicl")
    assert ret["result"] is (None if testmode else True), ret
    assert set(ret["changes"]) == set(paths.values()), ret
    if testmode:
        assert ret["comment"] == "would point apt at snapshot S1" and not updates
        return
    assert ret["comment"] == "apt points at snapshot S1" and updates == [1]
    with open(paths["minicl.sources"], encoding="utf-8") as f:
        assert f"URIs: {VIEW['url']}S1/" in f.read()
    again = state.source("minicl")
    assert again["result"] is True and again["changes"] == {} and again["comment"] == "at snapshot S1"


def test_a_refused_source_leaves_no_file(apt_files, monkeypatch):
    paths, _ = apt_files

    def refuse():
        raise aptsource.SourceError("E: The repository ... is not signed.")

    monkeypatch.setattr(aptsource, "update_minicl_source", refuse)
    ret = loader.load_state("minicl_packages", False, {"minicl": {"packages": VIEW}}).source("minicl")
    assert ret["result"] is False and "is not signed" in ret["comment"], ret
    assert not any(os.path.exists(p) for p in paths.values())


@pytest.mark.parametrize("testmode", [True, False])
def test_the_upgraded_state_waits_or_upgrades(apt_files, monkeypatch, testmode, example_data):
    example_data["rollout"] = {"canaries": ["alpha"]}
    pillar = {"minicl": {"packages": VIEW, "cluster": example_data, "host": {"name": "beta"}, "apps": {}}}
    upgrade.save({"snapshot": "S0", "history": []})
    monkeypatch.setattr(package_rollout, "write_metrics", lambda found=None: None)
    monkeypatch.setattr(package_rollout.rollout, "query", answers())
    monkeypatch.setattr(package_rollout, "decide", lambda *a, **k: ("wait", "waiting for the canaries"))
    state = loader.load_state("minicl_packages", testmode, pillar)
    ret = state.upgraded("minicl")
    assert ret == {"name": "minicl", "result": True, "changes": {}, "comment": "waiting for the canaries"}
    monkeypatch.setattr(package_rollout, "decide", lambda *a, **k: ("upgrade", "alpha has run it"))
    applied = []
    monkeypatch.setattr(upgrade, "apply", lambda *a, **k: applied.append(a[1]) or {"ok": True, "lines": [],
                                                                                   "changes": []})  # fmt: skip
    monkeypatch.setattr(upgrade, "needrestart", lambda: {"reboot": False, "services": []})
    ret = state.upgraded("minicl")
    assert ret["changes"] == {"snapshot": {"old": "S0", "new": "S1"}}
    if testmode:
        assert (
            ret["result"] is None
            and applied == []
            and ret["comment"].startswith("would rehearse and upgrade")
        )
    else:
        assert ret["result"] is True and applied == ["S1"]


def test_rollback_restores_an_app_only_where_its_data_format_changed(apt_files, monkeypatch):
    upgrade.save({"snapshot": "S1", "history": [{"from": "S0", "to": "S1", "before": {"web": "1.0"},
                  "debs": [], "backups": {"cache": "b1", "db": "b2"}, "formats": {"cache": "7.0", "db": "15/1"}}]})  # fmt: skip
    formats = {"cache": "7.2", "db": "15/1"}
    monkeypatch.setattr(upgrade, "data_format", lambda app: formats[app["name"]])
    undone = []
    monkeypatch.setattr(
        upgrade, "_undo", lambda versions, debs, files, apps, backups, say: undone.append(apps)
    )
    monkeypatch.setattr(upgrade, "installed", lambda names=None: {"web": "1.0"})
    apps = [{"name": "cache", "type": "redis"}, {"name": "db", "type": "postgresql"}]
    done = upgrade.rollback(VIEW["url"], "listed", ["web"], "KEY", apps)
    assert done["ok"] and [a["name"] for a in undone[0]] == ["cache"]
    held = upgrade.record()
    assert held["snapshot"] == "S0" and held["history"] == []
    assert held["failed"]["snapshot"] == "S1" and held["failed"]["stage"] == "rollback"


@pytest.mark.parametrize("testmode", [True, False])
def test_the_repository_state(monkeypatch, tmp_path, testmode):
    keyring = tmp_path / "upstream.gpg"
    settings = {"upstream": [{"url": "u", "distribution": "d", "components": ["main"]}], "list": ["web"],
                "every": "1d", "keep": 10}  # fmt: skip
    view = dict(VIEW, repository={"settings": settings, "signing_key": "SECRET", "upstream_key_files": [str(keyring)],
                                  "local_dir": None})  # fmt: skip
    monkeypatch.setattr(aptrepo, "STATE", str(tmp_path / "state.json"))
    monkeypatch.setattr(aptrepo, "index", lambda: [])
    refreshed = []
    monkeypatch.setattr(aptrepo, "refresh", lambda *a, **k: refreshed.append(a) or {"snapshot": "S1", "why": "x",
                                                                                  "dropped": []})  # fmt: skip
    ret = loader.load_state("minicl_packages", testmode, {"minicl": {"packages": view}}).repository("minicl")
    if testmode:
        assert ret["result"] is None and ret["comment"] == "would look upstream: no snapshot published yet"
        assert not refreshed
    else:
        assert ret["result"] is True and ret["changes"] == {"snapshot": "S1", "dropped": []}, ret
        assert refreshed[0][1] == "SECRET" and refreshed[0][3] == [str(keyring)]
        assert "SECRET" not in json.dumps(ret)
    other = loader.load_state("minicl_packages", testmode, {"minicl": {"packages": VIEW}}).repository(
        "minicl"
    )
    assert other["result"] is True and other["comment"] == "this host does not have the repository role"


def test_the_services_running_a_packages_files_are_foreseen(tmp_path, monkeypatch):
    for pid, unit, exe, maps in (
        ("10", "0::/system.slice/web.service", "/usr/bin/web", "/usr/lib/libweb.so.1"),
        ("11", "0::/user.slice/user-0.slice/session-1.scope", "/usr/bin/web", ""),  # not a service
        ("12", "0::/system.slice/other.service", "/usr/bin/other", "/usr/lib/libc.so.6"),
    ):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cgroup").write_text(unit + "\n")
        (tmp_path / pid / "maps").write_text(f"7f00-7f01 r-xp 00000000 08:01 1234  {maps}\n" if maps else "")
        (tmp_path / pid / "exe").symlink_to(exe)
    running = upgrade.running_files(str(tmp_path))
    assert running["/usr/bin/web"] == {"web.service"} and running["/usr/lib/libc.so.6"] == {"other.service"}

    class Listed:
        stdout = "/.\n/usr/lib/libweb.so.1\n/usr/share/doc/libweb/copyright\n"

    monkeypatch.setattr(upgrade.subprocess, "run", lambda *a, **k: Listed)
    assert upgrade.units_running_files("libweb1", running) == ["web.service"]


def test_a_copy_that_does_not_boot_is_a_failed_rehearsal_not_a_failed_upgrade(apt_files, monkeypatch):
    upgrade.save({"snapshot": "S0", "history": []})
    monkeypatch.setattr(package_rollout, "write_metrics", lambda found=None: None)
    monkeypatch.setattr(package_rollout, "decide", lambda *a, **k: ("upgrade", "the canary"))
    monkeypatch.setattr(upgrade, "green_rehearsal", lambda snapshot: False)

    def no_boot(*args):
        raise hostcopy.HostCopyError("the copy did not boot: systemd exited (status 1)")

    monkeypatch.setattr(upgrade, "rehearse", no_boot)
    monkeypatch.setattr(upgrade, "plan", lambda *a: pytest.fail("no upgrade without a rehearsal"))
    result, changes, comment = package_rollout.converge(VIEW, None, "alpha", {})
    assert (result, changes) == (False, {})
    failed = upgrade.record()["failed"]
    assert failed["stage"] == "rehearsal" and failed["snapshot"] == "S1"
    assert failed["error"] == "the rehearsal could not run: the copy did not boot: systemd exited (status 1)"
    assert comment.startswith("snapshot S1 failed its rehearsal")
