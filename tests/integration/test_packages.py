"""The cluster's apt repository and package upgrades on systemd test hosts.

The lab's upstream archive (minicl_lab.aptlab, on the git host) has minicl-lab-web (a service
with its own binary: 1.0 works, 1.1 does not start, 1.2 works again), its dependency
minicl-lab-lib and minicl-lab-other, which is not listed. depot has the repository role; alpha
(the canary) and beta use it for the listed package; watch is the monitor, whose Alertmanager
mails the fake relay. Checked from the outside: what the repository publishes, what apt on the
hosts sees and installs, the service, the port from a cluster host and from a host outside the
cluster, the monitor's view and the alert mail."""

import json

import pytest

from minicl_lab import aptlab

from .conftest import (
    alert_mail,
    bootstrap_all,
    changed_states,
    cluster_config,
    monitor_state,
    salt_call,
    wait_for,
)

DEPOT = ["198.51.100.71/24"]
ALPHA = ["198.51.100.72/24"]
BETA = ["198.51.100.73/24"]
WATCH = ["198.51.100.74/24"]
OUTSIDE = ["198.51.100.79/24"]
RELAY = ["198.51.100.78/24"]
USER, PASSWORD = "cluster@example.org", "relay-secret-Pkg5"
SOAK = 20
UPDATES = "lab-updates"  # a second upstream: the archive's updates, where the fixed 1.2 arrives
UPGRADED = "minicl_packages_|-minicl-package-upgrades_|-minicl_|-upgraded"
PORT = 8080
WEB, LIB, OTHER, LOCAL = aptlab.WEB, aptlab.LIB, aptlab.OTHER, "minicl-lab-local"


def entry(addresses, *roles):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base", *roles]}


@pytest.fixture(scope="module")
def upstream(git_server):
    archive = aptlab.Upstream(git_server.host)
    archive.add(WEB, "1.0")
    archive.publish()
    archive.publish(name=UPDATES)  # empty for now, as an archive's updates often are
    return archive


@pytest.fixture(scope="module")
def cluster(lab, relay, git_server, deploy_key, upstream):
    depot = lab.add_host("depot", DEPOT)
    alpha = lab.add_host("alpha", ALPHA)
    beta = lab.add_host("beta", BETA)
    watch = lab.add_host("watch", WATCH)
    outside = lab.add_host("outside", OUTSIDE)
    secret, public, _ = aptlab.make_key(
        git_server.host, "/root/cluster-gnupg", "cluster packages <root@localhost>"
    )
    # A package the group built itself, committed to the config repo.
    git_server.host.run(f"mkdir -p {git_server.WORK}/debs")
    config = cluster_config(
        {
            "depot": entry(DEPOT, "repository"),
            "alpha": entry(ALPHA),
            "beta": entry(BETA),
            "watch": entry(WATCH, "monitor"),
        },
        smtp={"relay": "relay.example.org", "port": 587, "username": USER, "password": PASSWORD},
        ca_url="http://relay.example.org/ca.crt",
        monitoring={"scrape_interval": "1s", "retention": "1d"},
        schedule={"interval": "1h", "splay": "1m"},  # runs come from the tests
        rollout={"canaries": ["alpha"], "soak": f"{SOAK}s"},
        apps={"cache": {"type": "redis", "hosts": ["alpha"]}},  # checked in rehearsals, backed up first
        packages={
            "upstream": [
                {"url": upstream.url, "distribution": aptlab.DIST, "key": "keys/upstream.asc"},
                {"url": upstream.url, "distribution": UPDATES, "key": "keys/upstream.asc"},
            ],
            "list": [WEB, LOCAL],
            "local": "debs",
        },
    )
    build_local(git_server)
    git_server.commit(
        {
            "cluster.json": json.dumps(config, indent=2),
            "deploy.key": deploy_key[0],
            "packages.key": secret,
            "packages.key.pub": public,
            "keys/upstream.asc": upstream.public,
        },
        "the cluster's repository",
    )
    for host in (depot, alpha, beta, watch):
        host.run(f"echo '{RELAY[0].split('/')[0]} relay.example.org' >> /etc/hosts")
    bootstrap_all({"depot": depot}, git_server, deploy_key)  # it publishes the first snapshot
    bootstrap_all({"alpha": alpha, "beta": beta, "watch": watch}, git_server, deploy_key)
    return depot, alpha, beta, outside, watch


def build_local(git_server):
    tree = "/root/build/local"
    git_server.host.write(
        f"{tree}/DEBIAN/control",
        f"Package: {LOCAL}\nVersion: 1.0\nArchitecture: all\nMaintainer: minicl tests <root@localhost>\n"
        "Description: a package the group built\n",
    )
    git_server.host.write(f"{tree}/usr/share/doc/{LOCAL}/built-here", "yes\n")
    git_server.host.run(f"dpkg-deb --root-owner-group --build {tree} {git_server.WORK}/debs/ >/dev/null")


def snapshots(depot):
    return json.loads(depot.read("/var/lib/minicl-repository/public/snapshots.json"))


def policy(host, package):
    return host.run(["apt-cache", "policy", package]).stdout


def candidate(host, package):
    for line in policy(host, package).splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split()[1]
    return None


def version(host, package):
    result = host.run(["dpkg-query", "-W", "-f", "${Version} ${db:Status-Status}", package], check=False)
    return result.stdout.split()[0] if result.stdout.endswith(" installed") else None


def upgraded_state(host):
    code, data, result = salt_call(host, "state.apply")
    assert isinstance(data, dict), result.stdout + result.stderr
    return data["local"][UPGRADED]


def prometheus(watch, query):
    out = watch.run(
        ["python3", "-c", "import sys, urllib.parse, urllib.request; print(urllib.request.urlopen("
         "'http://127.0.0.1:9090/api/v1/query?' + urllib.parse.urlencode({'query': sys.argv[1]})).read().decode())",
         query]
    ).stdout  # fmt: skip
    return json.loads(out)["data"]["result"]


def refresh(depot):
    code, data, result = salt_call(depot, "minicl_repository.refresh")
    assert code == 0, result.stdout + result.stderr
    return data["local"]


def test_the_repository_has_the_list_and_its_dependencies_only(cluster, upstream):
    depot, alpha, *_ = cluster
    published = snapshots(depot)
    assert len(published) == 1
    content = published[0]["packages"]
    assert content == {WEB: "1.0", LIB: "1.0", LOCAL: "1.0"}, content
    # Upstream has the unlisted package (positive control); it was not mirrored.
    assert f"Package: {OTHER}" in upstream.host.read(f"{aptlab.ROOT}/dists/lab/main/binary-amd64/Packages")
    assert OTHER not in depot.run(["find", "/var/lib/minicl-repository/pool"]).stdout
    assert LOCAL in depot.run(["find", "/var/lib/minicl-repository/pool"]).stdout
    # alpha's apt sees the listed package from the cluster's repository, pinned, and not the other.
    seen = policy(alpha, WEB)
    assert "Candidate: 1.0" in seen and "1.0 990" in seen, seen
    assert f"http://{DEPOT[0].split('/')[0]}:{PORT}/{published[0]['name']} minicl/main" in seen
    assert candidate(alpha, OTHER) in (None, "(none)")
    sources = alpha.read("/etc/apt/sources.list.d/minicl.sources")
    assert "Signed-By: /etc/apt/keyrings/minicl.asc" in sources


def test_the_repository_answers_the_cluster_only(cluster):
    depot, alpha, _, outside, _ = cluster
    ip = DEPOT[0].split("/")[0]
    assert alpha.can_connect(ip, PORT)
    assert not outside.can_connect(ip, PORT)
    assert outside.can_connect(ip, 22)  # the host answers outsiders where it should (ssh)


def test_a_second_run_changes_nothing(cluster):
    for host in (*cluster[:3], cluster[4]):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}, (host, changed_states(data))


def test_plan_names_the_upgrade_and_the_service_to_restart(cluster, upstream):
    depot, alpha, beta, *_ = cluster
    for host in (alpha, beta):  # as a role of the config repo would install it
        host.run(["apt-get", "install", "-y", "-q", WEB], env={"DEBIAN_FRONTEND": "noninteractive"})
        assert version(host, WEB) == "1.0"
        wait_for("the lab service", lambda h=host: h.unit_state(f"{WEB}.service") == "active", timeout=20)
    upstream.add(WEB, "1.1")
    upstream.publish()
    done = refresh(depot)
    assert done["snapshot"], done
    assert snapshots(depot)[-1]["packages"][WEB] == "1.1"
    code, data, result = salt_call(alpha, "minicl_upgrade.plan")
    assert code == 0, result.stdout + result.stderr
    plan = data["local"]
    assert plan["snapshot"] == done["snapshot"] and plan["current"] == snapshots(depot)[0]["name"]
    changes = {c["package"]: c for c in plan["changes"]}
    assert set(changes) == {WEB}, plan
    assert changes[WEB]["from"] == "1.0" and changes[WEB]["to"] == "1.1"
    assert changes[WEB]["restart"] == [f"{WEB}.service"] and not changes[WEB]["reboot"]
    # The plan changed nothing: apt on alpha still knows only the first snapshot.
    assert candidate(alpha, WEB) == "1.0" and version(alpha, WEB) == "1.0"


def test_a_broken_snapshot_fails_its_rehearsal_on_the_canary_and_stops_the_rollout(cluster, relay):
    depot, alpha, beta, _, watch = cluster
    newest = snapshots(depot)[-1]["name"]
    sources = alpha.read("/etc/apt/sources.list.d/minicl.sources")
    # beta waits for the canary.
    state = upgraded_state(beta)
    assert state["result"] is True and state["changes"] == {}, state
    assert f"waiting for the canaries to run snapshot {newest}" in state["comment"], state
    # The canary rehearses it: the copy's service fails; the real alpha is untouched.
    state = upgraded_state(alpha)
    assert state["result"] is False and state["changes"] == {}, state
    assert f"snapshot {newest} failed its rehearsal ({WEB})" in state["comment"], state
    assert f"unit {WEB}.service" in state["comment"], state
    assert version(alpha, WEB) == "1.0" and alpha.unit_state(f"{WEB}.service") == "active"
    assert alpha.read("/etc/apt/sources.list.d/minicl.sources") == sources
    assert "minicl-hostcopy" not in alpha.run(["systemctl", "list-units", "--all", "--plain"]).stdout
    alert_mail(relay, "MiniclPackagesUpgradeFailed", "alpha", newest, WEB, timeout=120)
    # The failure stops the rollout for beta too, and alpha does not try that snapshot again.
    wait_for(
        "the failure at the monitor",
        lambda: prometheus(watch, f'minicl_packages_upgrade_error_info{{snapshot="{newest}"}}'),
        60,
        explain=lambda: monitor_state(watch),
    )
    state = upgraded_state(beta)
    assert f"the rollout of snapshot {newest} is stopped: it failed on alpha ({WEB})" in state["comment"], (
        state
    )
    assert version(beta, WEB) == "1.0"
    state = upgraded_state(alpha)
    assert state["result"] is True and f"snapshot {newest} failed here (rehearsal" in state["comment"], state
    # By hand: the rehearsal's report, and apply refuses the snapshot.
    code, data, result = salt_call(alpha, "minicl_upgrade.rehearse")
    assert code != 0, result.stdout
    rehearsal = data["local"]
    assert not rehearsal["ok"] and rehearsal["failures"] == [f"host check unit {WEB}.service"], rehearsal
    assert any(line.startswith("booted a copy of this host") for line in rehearsal["lines"]), rehearsal
    assert "ok   app cache: check_health and test in the copy after the upgrade" in rehearsal["lines"], (
        rehearsal
    )
    code, data, result = salt_call(alpha, "minicl_upgrade.apply")
    assert code != 0 and not data["local"]["undone"], result.stdout
    assert data["local"]["lines"][-1].startswith("not upgraded: the rehearsal of snapshot")
    assert version(alpha, WEB) == "1.0"


def test_a_broken_upgrade_applied_without_rehearsal_is_undone(cluster):
    _, alpha, *_ = cluster
    before = alpha.read("/etc/apt/sources.list.d/minicl.sources")
    code, data, result = salt_call(alpha, "minicl_upgrade.apply", "rehearsal=False")
    assert code != 0, result.stdout
    done = data["local"]
    assert done["undone"], done
    assert any(line.startswith(f"FAIL host check unit {WEB}.service") for line in done["lines"]), done[
        "lines"
    ]
    assert version(alpha, WEB) == "1.0"
    wait_for("the lab service back", lambda: alpha.unit_state(f"{WEB}.service") == "active", timeout=20)
    assert alpha.read("/etc/apt/sources.list.d/minicl.sources") == before


def test_a_fixed_snapshot_reaches_the_canary_then_the_others_after_the_soak(cluster, upstream):
    depot, alpha, beta, _, watch = cluster
    upstream.add(WEB, "1.2", dist=UPDATES)
    upstream.publish(name=UPDATES)
    newest = refresh(depot)["snapshot"]
    assert snapshots(depot)[-1]["packages"][WEB] == "1.2"  # the newest of both upstreams wins
    state = upgraded_state(alpha)
    assert state["result"] is True and state["changes"]["snapshot"]["new"] == newest, state
    assert version(alpha, WEB) == "1.2" and alpha.unit_state(f"{WEB}.service") == "active"
    assert f"/{newest}/" in alpha.read("/etc/apt/sources.list.d/minicl.sources")
    code, data, result = salt_call(alpha, "minicl_upgrade.status")
    assert data["local"]["history"][-1]["backups"]["cache"], data  # the app's safety backup came first
    state = upgraded_state(beta)
    assert state["changes"] == {} and f"waiting for the canaries to run snapshot {newest}" in state["comment"]
    assert version(beta, WEB) == "1.0"
    wait_for(
        "the canary's soak at the monitor",
        lambda: prometheus(
            watch, f'time() - minicl_packages_good_since_timestamp_seconds{{snapshot="{newest}"}} > {SOAK}'
        ),
        120,
        explain=lambda: monitor_state(watch),
    )
    state = upgraded_state(beta)
    assert state["result"] is True and state["changes"]["snapshot"]["new"] == newest, state
    assert version(beta, WEB) == "1.2"
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0 and changed_states(data) == {}, changed_states(data)
        assert "minicl_packages_reboot_required 0.0" in host.read(
            "/var/lib/prometheus/node-exporter/minicl_packages.prom"
        )


def test_rollback_returns_a_host_to_the_first_version_and_holds_the_snapshot(cluster):
    depot, _, beta, *_ = cluster
    newest = snapshots(depot)[-1]["name"]
    code, data, result = salt_call(beta, "minicl_upgrade.rollback")
    assert code == 0, result.stdout + result.stderr
    assert version(beta, WEB) == "1.0"
    wait_for("the lab service", lambda: beta.unit_state(f"{WEB}.service") == "active", timeout=20)
    assert f"/{snapshots(depot)[0]['name']}/" in beta.read("/etc/apt/sources.list.d/minicl.sources")
    state = upgraded_state(beta)
    assert state["changes"] == {} and f"snapshot {newest} failed here (rollback" in state["comment"], state
    assert version(beta, WEB) == "1.0"


def test_a_pending_reboot_is_a_metric(cluster):
    _, alpha, *_ = cluster
    prom = "/var/lib/prometheus/node-exporter/minicl_packages.prom"
    assert "minicl_packages_reboot_required 0.0" in alpha.read(prom)
    alpha.run("touch /run/reboot-required")
    upgraded_state(alpha)
    assert "minicl_packages_reboot_required 1.0" in alpha.read(prom)
    alpha.reboot()
    upgraded_state(alpha)
    assert "minicl_packages_reboot_required 0.0" in alpha.read(prom)


@pytest.mark.parametrize("tamper", ["wrongly signed", "unsigned"])
def test_a_wrongly_signed_or_unsigned_repository_is_refused(cluster, tamper):
    depot, alpha, *_ = cluster
    newest = snapshots(depot)[-1]["name"]
    dist = f"/var/lib/minicl-repository/public/{newest}/dists/minicl"
    depot.run(f"cp -a {dist} /root/dist-saved")
    try:
        if tamper == "unsigned":
            depot.run(f"rm {dist}/InRelease {dist}/Release.gpg")
        else:
            aptlab.make_key(depot, "/root/other-gnupg", "someone else <root@localhost>")
            depot.run(
                f"cd {dist} && GNUPGHOME=/root/other-gnupg gpg --batch -q --yes --clearsign -o InRelease Release"
                " && GNUPGHOME=/root/other-gnupg gpg --batch -q --yes --armor --detach-sign -o Release.gpg Release"
            )
        code, data, result = salt_call(alpha, "minicl_upgrade.plan", f"snapshot={newest}")
        assert code != 0, result.stdout
        error = data["local"]["error"]
        assert "NO_PUBKEY" in error or "not signed" in error or "is not signed" in error, error
    finally:
        depot.run(f"rm -rf {dist} && mv /root/dist-saved {dist}")
    # Positive control: the same plan with the repository as published.
    code, data, result = salt_call(alpha, "minicl_upgrade.plan", f"snapshot={newest}")
    assert code == 0, result.stdout + result.stderr
