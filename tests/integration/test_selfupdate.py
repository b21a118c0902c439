"""minicl updates itself through the config repo, on systemd test hosts.

The lab's git host serves the config repo and a minicl repository (this tree as it is on disk,
then the commits the tests make), and a wheelhouse over HTTP (tools/setup.sh builds it from
.venv: test hosts have no package index). Each host installs minicl with install.sh from a
clone at the pinned commit and is bootstrapped; then the tests push new pins: a good commit
reaches the canary, then after the soak the others (a host cut off from the monitor waits and
says why); a commit whose highstate does not render is refused by the canary's self-check with
an alert mail; a commit that fails its first real run is rolled back and not tried again; a run
in progress when the canary switches is never cut off.
"""

import json
import threading
import time

import pytest

from minicl_lab import releaselab
from minicl_lab.releaselab import HOST_PATH, RELEASES, current, install, minion_release, record, salt

from .conftest import alert_mail, cluster_config, dump, monitor_state, wait_for

RELAY = ["198.51.100.180/24"]
HOSTS = {
    "alpha": ["198.51.100.181/24"],
    "beta": ["198.51.100.182/24"],
    "watch": ["198.51.100.189/24"],
}
LATE = {"delta": ["198.51.100.184/24"]}  # in cluster.json from the start, installed later
USER, PASSWORD = "cluster@example.org", "relay-secret-Upd8"
SOAK = 30
RELEASE_STATE = "minicl_release_|-minicl-release_|-minicl_|-pinned"
BREAKS_RENDER = "{{ salt['no_such.function']() }}\n"  # added to an SLS file of minicl's
# Passes test=True (cmd.run would run), fails for real.
FAILS_FOR_REAL = "\nminicl-lab-fails-for-real:\n  cmd.run:\n    - name: 'false'\n"
# The minion dies as it loads its grains (salt-call does not: the self-check passes).
KILLS_THE_MINION = (
    "\nimport os as _os, sys as _sys\n"
    "if _os.path.basename(_sys.argv[0]) == 'salt-minion':\n    _os._exit(3)\n"
)


def config(wheelhouse):
    hosts = {
        name: {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}
        for name, addresses in {**HOSTS, **LATE}.items()
    }
    hosts["watch"]["roles"].append("monitor")
    return dump(
        cluster_config(
            hosts,
            smtp={"relay": "relay.example.org", "port": 587, "username": USER, "password": PASSWORD},
            ca_url="http://relay.example.org/ca.crt",
            monitoring={"scrape_interval": "1s", "retention": "1d"},
            # Runs come from the tests; the minion still runs (and is restarted by updates).
            schedule={"interval": "1h", "splay": "1m"},
            rollout={"canaries": ["alpha"], "soak": f"{SOAK}s"},
            self_update={"wheelhouse": wheelhouse},
        )
    )


def release_state(host):
    code, data, output = salt(host, "state.apply")
    assert isinstance(data, dict), output
    return code, data[RELEASE_STATE]


def trial_passed(host, commit, timeout=300):
    return wait_for(
        f"the trial of {commit[:12]} on {host.name} to pass",
        lambda: (record(host).get("good") or {}).get("commit") == commit,
        timeout,
        explain=lambda: json.dumps(record(host)) + "\n" + host.journal(lines=40),
    )


def prometheus(watch, query):
    out = watch.run(
        [
            "python3",
            "-c",
            "import json, sys, urllib.parse, urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:9090/api/v1/query?' + urllib.parse.urlencode({'query': sys.argv[1]})).read().decode())",
            query,
        ]
    ).stdout
    return json.loads(out)["data"]["result"]


def edit(git_server, work, path, change):
    """The minicl repository's file ``path`` with ``change(text)`` applied, as ``commit`` takes it."""
    return {path: change(git_server.host.read(f"{work}/{path}"))}


@pytest.fixture(scope="module")
def minicl_repo(git_server):
    work = git_server.add_source_repo(releaselab.REPO)
    first = git_server.host.run(["git", "-C", work, "rev-parse", "HEAD"]).stdout.strip()
    return {"work": work, "p0": first}


@pytest.fixture(scope="module")
def wheelhouse(git_server):
    url = releaselab.serve_wheelhouse(git_server.host)
    host = git_server.host
    wait_for("the lab's wheelhouse", lambda: host.can_connect(host.ipv4, releaselab.WHEELHOUSE_PORT))
    return url


@pytest.fixture(scope="module")
def cluster(lab, relay, git_server, deploy_key, minicl_repo, wheelhouse):
    git_server.commit(
        {
            "cluster.json": config(wheelhouse),
            "deploy.key": deploy_key[0],
        },
        "self-update lab",
    )
    git_server.pin("minicl", minicl_repo["p0"])
    hosts = {name: lab.add_host(name, addresses) for name, addresses in HOSTS.items()}
    results = {}

    def setup(name, host):
        host.run("echo '198.51.100.180 relay.example.org' >> /etc/hosts")
        results[name] = install(host, git_server, deploy_key[0], minicl_repo["p0"], wheelhouse)

    threads = [threading.Thread(target=setup, args=item) for item in hosts.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, result in results.items():
        assert result.returncode == 0, f"install of {name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return hosts


def test_hosts_start_on_the_pinned_release(cluster, minicl_repo):
    p0 = minicl_repo["p0"]
    for name, host in cluster.items():
        assert current(host) == p0[:12], name
        assert host.run(f"ls {RELEASES}").stdout.split() == [p0[:12]], name
        unit = host.run("systemctl show -p ExecStart --value minicl-minion.service").stdout
        assert "/opt/minicl/current/bin/salt-minion" in unit, unit
        assert minion_release(host) == p0[:12], name
        code, state = release_state(host)
        assert code == 0 and state["result"] is True and state["changes"] == {}, state
        assert f"minicl {p0[:12]} (the pinned commit) runs here" == state["comment"]
    watch = cluster["watch"]
    wait_for(
        "every host's minicl_release_info at the monitor",
        lambda: len(prometheus(watch, f'minicl_release_info{{commit="{p0}"}}')) == 3,
        60,
        explain=lambda: monitor_state(watch),
    )


def test_a_good_commit_reaches_the_canary_first_then_the_others_after_the_soak(
    cluster, git_server, minicl_repo
):
    alpha, beta, watch = cluster["alpha"], cluster["beta"], cluster["watch"]
    work, p0 = minicl_repo["work"], minicl_repo["p0"]
    p1 = git_server.commit(
        edit(
            git_server, work, "minicl/__init__.py", lambda t: t.replace('__version__ = "', '__version__ = "1')
        ),
        "lab: a good new minicl",
        work=work,
    )
    minicl_repo["p1"] = p1
    git_server.pin("minicl", p1)

    # beta is no canary: it waits for alpha.
    code, state = release_state(beta)
    assert state["result"] is True and state["changes"] == {}
    assert f"waiting for the canaries to run minicl {p1[:12]}" in state["comment"]
    assert "alpha does not run it successfully" in state["comment"]
    assert current(beta) == p0[:12]

    # alpha, the canary, takes it; a state run that is in progress when its run ends (and the
    # minion would restart) finishes: the restart waits for it.
    update = alpha.spawn(f"PATH={HOST_PATH} salt-call --local --out=json state.apply")
    wait_for(
        "the update run on alpha",
        lambda: alpha.run("pgrep -f 'salt-call --local --out=json state.apply'", check=False).returncode == 0,
    )
    in_progress = alpha.spawn(
        f"PATH={HOST_PATH} salt-call --local --out=json state.single cmd.run"
        " name='sleep 20; date +%s > /run/in-progress-ended'"
    )
    out, err = update.communicate(timeout=900)
    state = json.loads(out)["local"][RELEASE_STATE]
    assert state["result"] is True, state["comment"]
    assert state["changes"] == {"minicl": {"old": p0, "new": p1}}
    assert "self-checked" in state["comment"]
    assert current(alpha) == p1[:12]
    out, err = in_progress.communicate(timeout=300)
    ran = next(iter(json.loads(out)["local"].values()))
    assert ran["result"] is True, ran  # not cut off by the update
    trial_passed(alpha, p1)
    assert minion_release(alpha) == p1[:12]
    ended = int(alpha.run("cat /run/in-progress-ended").stdout)
    started = alpha.run(
        'date -d "$(systemctl show -p ExecMainStartTimestamp --value minicl-minion.service)" +%s'
    ).stdout
    assert int(started) >= ended, "the minion restarted into the new release before the run in progress ended"
    assert sorted(alpha.run(f"ls {RELEASES}").stdout.split()) == sorted([p0[:12], p1[:12]])

    # Right after: beta still waits, now for the soak time.
    wait_for(
        "alpha's good release at the monitor",
        lambda: prometheus(watch, f'minicl_release_good_since_timestamp_seconds{{commit="{p1}"}}'),
        60,
    )
    code, state = release_state(beta)
    assert state["changes"] == {} and "alpha has run it for" in state["comment"], state
    time.sleep(SOAK)

    # Cut off from the monitor, beta does not update, and says why.
    beta.run(
        "nft add table inet labcut && nft add chain inet labcut out '{ type filter hook output priority 0; }'"
        f" && nft add rule inet labcut out ip daddr {watch.ipv4} tcp dport 9090 reject"
    )
    code, state = release_state(beta)
    assert state["changes"] == {} and "no monitor answered" in state["comment"], state
    assert current(beta) == p0[:12]
    beta.run("nft delete table inet labcut")

    # Back in touch, after the soak: beta and watch take it.
    for host in (beta, watch):
        code, state = release_state(host)
        assert state["changes"] == {"minicl": {"old": p0, "new": p1}}, state
    for host in (beta, watch):
        trial_passed(host, p1)
        assert current(host) == p1[:12] and minion_release(host) == p1[:12]
    wait_for(
        "every host on the new minicl at the monitor",
        lambda: len(prometheus(watch, f'minicl_release_info{{commit="{p1}"}}')) == 3,
        60,
    )


def test_a_new_host_starts_on_the_pinned_release(
    lab, cluster, git_server, deploy_key, minicl_repo, wheelhouse
):
    """install.sh from a clone at the first commit; bootstrap puts it on the pin straight away."""
    p0, p1 = minicl_repo["p0"], minicl_repo["p1"]
    delta = lab.add_host("delta", LATE["delta"])
    delta.run("echo '198.51.100.180 relay.example.org' >> /etc/hosts")
    result = install(delta, git_server, deploy_key[0], p0, wheelhouse)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"building minicl {p1[:12]}, pinned by the config repo" in result.stdout
    assert current(delta) == p1[:12] and minion_release(delta) == p1[:12]
    assert (record(delta).get("good") or {}).get("commit") == p1
    code, state = release_state(delta)
    assert code == 0 and state["changes"] == {} and "(the pinned commit) runs here" in state["comment"]
    cluster["delta"] = delta


def test_a_commit_whose_highstate_does_not_render_is_refused_by_the_canary(
    cluster, git_server, minicl_repo, relay
):
    alpha, beta = cluster["alpha"], cluster["beta"]
    work, p1 = minicl_repo["work"], minicl_repo["p1"]
    p2 = git_server.commit(
        edit(
            git_server,
            work,
            "states/minicl/base/applied.sls",
            lambda t: t + BREAKS_RENDER,
        ),
        "lab: minicl whose highstate does not render",
        work=work,
    )
    git_server.pin("minicl", p2)
    code, state = release_state(alpha)
    assert state["result"] is False and state["changes"] == {}
    assert f"minicl {p2[:12]} was not switched to: its self-check failed" in state["comment"]
    assert "does not render" in state["comment"] and "no_such.function" in state["comment"], state["comment"]
    assert current(alpha) == p1[:12] and minion_release(alpha) == p1[:12]
    assert p2[:12] not in alpha.run(f"ls {RELEASES}").stdout
    alert_mail(relay, "MiniclUpdateFailed", "alpha", p2, "self-check", "no_such.function", timeout=120)
    # The others never take it.
    code, state = release_state(beta)
    assert state["changes"] == {} and "alpha does not run it successfully" in state["comment"]
    assert current(beta) == p1[:12]
    # Judged once: the next run does not build it again.
    code, state = release_state(alpha)
    assert state["result"] is False and "does not try" in state["comment"]


def test_a_commit_that_fails_its_first_run_is_rolled_back_and_not_tried_again(
    cluster, git_server, minicl_repo
):
    alpha = cluster["alpha"]
    work, p1 = minicl_repo["work"], minicl_repo["p1"]
    p3 = git_server.commit(
        edit(
            git_server,
            work,
            "states/minicl/base/applied.sls",
            # On top of the commit before (p2, which does not render), without its break.
            lambda t: t.replace(BREAKS_RENDER, "") + FAILS_FOR_REAL,
        ),
        "lab: minicl that passes its self-check and fails for real",
        work=work,
    )
    git_server.pin("minicl", p3)
    code, state = release_state(alpha)
    assert state["result"] is True and state["changes"] == {"minicl": {"old": p1, "new": p3}}, state
    wait_for(
        "the roll-back on alpha",
        lambda: (record(alpha).get("failed") or {}).get("commit") == p3,
        300,
        explain=lambda: json.dumps(record(alpha)) + "\n" + alpha.journal(lines=40),
    )
    failed = record(alpha)["failed"]
    assert failed["stage"] == "first run" and "minicl-lab-fails-for-real" in failed["error"], failed
    wait_for(
        "alpha back on the previous release",
        lambda: current(alpha) == p1[:12] and minion_release(alpha) == p1[:12],
        120,
    )
    assert p3[:12] not in alpha.run(f"ls {RELEASES}").stdout
    journal = alpha.run("journalctl -t minicl --no-pager -q").stdout
    assert "failed on alpha" in journal and "rolled back to" in journal
    # Not tried again until the pin changes.
    code, state = release_state(alpha)
    assert state["result"] is False and state["changes"] == {}
    assert f"does not try {p3[:12]} again until the pin changes" in state["comment"]
    assert current(alpha) == p1[:12]


def test_a_minion_that_does_not_come_back_is_rolled_back(cluster, git_server, minicl_repo):
    alpha = cluster["alpha"]
    work, p1 = minicl_repo["work"], minicl_repo["p1"]
    files = edit(git_server, work, "_grains/minicl.py", lambda t: t + KILLS_THE_MINION)
    # On top of the commit before (p3), without what made its first run fail.
    files.update(
        edit(git_server, work, "states/minicl/base/applied.sls", lambda t: t.replace(FAILS_FOR_REAL, ""))
    )
    p4 = git_server.commit(files, "lab: minicl whose minion dies at start", work=work)
    git_server.pin("minicl", p4)
    code, state = release_state(alpha)
    assert state["result"] is True and state["changes"] == {"minicl": {"old": p1, "new": p4}}, state
    wait_for(
        "the roll-back on alpha",
        lambda: (record(alpha).get("failed") or {}).get("commit") == p4,
        300,
        explain=lambda: json.dumps(record(alpha)) + "\n" + alpha.journal(lines=40),
    )
    assert "minicl-minion.service did not stay up" in record(alpha)["failed"]["error"]
    wait_for(
        "alpha's minion back on the previous release",
        lambda: current(alpha) == p1[:12] and minion_release(alpha) == p1[:12],
        120,
    )
    assert alpha.unit_state("minicl-minion.service") == "active"
