"""The cluster's apt repository and package upgrades on systemd test hosts.

The lab's upstream archive (minicl_lab.aptlab, on the git host) has minicl-lab-web (a service
with its own binary), its dependency minicl-lab-lib and minicl-lab-other, which is not listed.
depot has the repository role; alpha and beta use it for the listed package. Checked from the
outside: what the repository publishes, what apt on the hosts sees and installs, the service,
the port from a cluster host and from a host outside the cluster."""

import json

import pytest

from minicl_lab import aptlab

from .conftest import bootstrap_all, changed_states, cluster_config, salt_call, wait_for

DEPOT = ["198.51.100.71/24"]
ALPHA = ["198.51.100.72/24"]
BETA = ["198.51.100.73/24"]
OUTSIDE = ["198.51.100.79/24"]
PORT = 8080
WEB, LIB, OTHER, LOCAL = aptlab.WEB, aptlab.LIB, aptlab.OTHER, "minicl-lab-local"


def entry(addresses, *roles):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base", *roles]}


@pytest.fixture(scope="module")
def upstream(git_server):
    archive = aptlab.Upstream(git_server.host)
    archive.add(WEB, "1.0")
    archive.publish()
    return archive


@pytest.fixture(scope="module")
def cluster(lab, git_server, deploy_key, upstream):
    depot = lab.add_host("depot", DEPOT)
    alpha = lab.add_host("alpha", ALPHA)
    beta = lab.add_host("beta", BETA)
    outside = lab.add_host("outside", OUTSIDE)
    secret, public, _ = aptlab.make_key(
        git_server.host, "/root/cluster-gnupg", "cluster packages <root@localhost>"
    )
    # A package the group built itself, committed to the config repo.
    git_server.host.run(f"mkdir -p {git_server.WORK}/debs")
    config = cluster_config(
        {"depot": entry(DEPOT, "repository"), "alpha": entry(ALPHA), "beta": entry(BETA)},
        packages={
            "upstream": {"url": upstream.url, "distribution": aptlab.DIST, "key": "keys/upstream.asc"},
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
    bootstrap_all({"depot": depot}, git_server, deploy_key)  # it publishes the first snapshot
    bootstrap_all({"alpha": alpha, "beta": beta}, git_server, deploy_key)
    return depot, alpha, beta, outside


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


def refresh(depot):
    code, data, result = salt_call(depot, "minicl_repository.refresh")
    assert code == 0, result.stdout + result.stderr
    return data["local"]


def test_the_repository_has_the_list_and_its_dependencies_only(cluster, upstream):
    depot, alpha, _, _ = cluster
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
    depot, alpha, _, outside = cluster
    ip = DEPOT[0].split("/")[0]
    assert alpha.can_connect(ip, PORT)
    assert not outside.can_connect(ip, PORT)
    assert outside.can_connect(ip, 22)  # the host answers outsiders where it should (ssh)


def test_a_second_run_changes_nothing(cluster):
    for host in cluster[:3]:
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}, (host, changed_states(data))


def test_plan_names_the_upgrade_and_the_service_to_restart(cluster, upstream):
    depot, alpha, _, _ = cluster
    alpha.run(["apt-get", "install", "-y", "-q", WEB], env={"DEBIAN_FRONTEND": "noninteractive"})
    assert version(alpha, WEB) == "1.0"
    wait_for("the lab service", lambda: alpha.unit_state(f"{WEB}.service") == "active", timeout=20)
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


def test_a_broken_upgrade_fails_its_rehearsal_and_the_host_is_untouched(cluster):
    _, alpha, _, _ = cluster
    sources = alpha.read("/etc/apt/sources.list.d/minicl.sources")
    code, data, result = salt_call(alpha, "minicl_upgrade.rehearse")
    assert code != 0, result.stdout
    rehearsal = data["local"]
    assert not rehearsal["ok"] and rehearsal["failures"] == [f"host check unit {WEB}.service"], rehearsal
    assert any(line.startswith("booted a copy of this host") for line in rehearsal["lines"]), rehearsal
    assert version(alpha, WEB) == "1.0" and alpha.unit_state(f"{WEB}.service") == "active"
    assert alpha.read("/etc/apt/sources.list.d/minicl.sources") == sources
    assert "minicl-hostcopy" not in alpha.run(["systemctl", "list-units", "--all", "--plain"]).stdout
    # apply refuses a snapshot whose rehearsal failed.
    code, data, result = salt_call(alpha, "minicl_upgrade.apply")
    assert code != 0 and not data["local"]["undone"], result.stdout
    assert data["local"]["lines"][-1].startswith("not upgraded: the rehearsal of snapshot")
    assert version(alpha, WEB) == "1.0"


def test_a_broken_upgrade_applied_without_rehearsal_is_undone(cluster):
    _, alpha, _, _ = cluster
    before = alpha.read("/etc/apt/sources.list.d/minicl.sources")
    code, data, result = salt_call(alpha, "minicl_upgrade.apply", "rehearsal=False")
    assert code != 0, result.stdout
    done = data["local"]
    assert done["undone"], done
    assert any(line.startswith(f"FAIL host check unit {WEB}.service") for line in done["lines"]), done["lines"]
    assert version(alpha, WEB) == "1.0"
    wait_for("the lab service back", lambda: alpha.unit_state(f"{WEB}.service") == "active", timeout=20)
    assert alpha.read("/etc/apt/sources.list.d/minicl.sources") == before


def test_a_fixed_upgrade_stays_and_rollback_returns_to_the_first_version(cluster, upstream):
    depot, alpha, _, _ = cluster
    upstream.add(WEB, "1.2")
    upstream.publish()
    newest = refresh(depot)["snapshot"]
    code, data, result = salt_call(alpha, "minicl_upgrade.apply")
    assert code == 0, result.stdout + result.stderr
    assert version(alpha, WEB) == "1.2" and alpha.unit_state(f"{WEB}.service") == "active"
    assert f"/{newest}/" in alpha.read("/etc/apt/sources.list.d/minicl.sources")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0 and changed_states(data) == {}, changed_states(data or {"local": {}})
    code, data, result = salt_call(alpha, "minicl_upgrade.rollback")
    assert code == 0, result.stdout + result.stderr
    assert version(alpha, WEB) == "1.0"
    wait_for("the lab service", lambda: alpha.unit_state(f"{WEB}.service") == "active", timeout=20)
    assert f"/{snapshots(depot)[0]['name']}/" in alpha.read("/etc/apt/sources.list.d/minicl.sources")


@pytest.mark.parametrize("tamper", ["wrongly signed", "unsigned"])
def test_a_wrongly_signed_or_unsigned_repository_is_refused(cluster, tamper):
    depot, alpha, _, _ = cluster
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
