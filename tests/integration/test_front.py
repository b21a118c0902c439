"""The front on systemd test hosts: two proxies (haproxy + keepalived + certbot) with a floating
address, a backend host, and an outside host running the ACME server (Debian's pebble) that is
also the client. The client fetches a page over HTTPS through the address with the certificate
pebble issued; the verbs; the exporter; VRRP from the other proxy only; the challenge port
(8402) open to cluster hosts, not the outside; a second run changes
nothing and shows no secret; a bad front entry refused naming the field; a haproxy
configuration that haproxy rejects never replaces the running one; renewal when due, and by
hand; failover moves the address; the proxy holding the address is killed and the other serves
the same request; back from its power cut it is the standby."""

import hashlib
import hmac
import json

import pytest

from minicl_lab import acmelab
from minicl_lab.testhosts import GitServer

from .conftest import bootstrap_all, changed_states, cluster_config, salt_call, wait_for

GIT = ["203.0.113.120/24"]
ALPHA = ["203.0.113.121/24"]
BETA = ["203.0.113.122/24"]
WEB = ["203.0.113.123/24"]
OUTSIDE = ["203.0.113.124/24"]  # pebble, and the client
ADDRESS = "203.0.113.130"
DOMAINS = ["www.front.test", "shop.front.test"]
PAGE = "hello from the backend\n"
STATE = "minicl_haproxy_|-minicl-haproxy-front_|-front_|-running"


def entry(addresses):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}


def config(directory, **acme):
    data = cluster_config({"alpha": entry(ALPHA), "beta": entry(BETA), "web": entry(WEB)})
    data["apps"] = {
        "front": {
            "type": "haproxy",
            "hosts": ["alpha", "beta"],
            "address": ADDRESS,
            "domains": DOMAINS,
            "backends": {"site": {"servers": ["web:8080"], "check": "/"}},
            "routes": {"shop.front.test": "site"},
            "default": "site",
        }
    }
    data["acme"] = {"directory": directory, "ca": "acme-ca.pem", **acme}
    return data


@pytest.fixture(scope="module")
def git_server(lab, deploy_key):
    return GitServer(lab.add_host("git", GIT), deploy_key[1])


@pytest.fixture(scope="module")
def outside(lab):
    host = lab.add_host("outside", OUTSIDE)
    host.ca = acmelab.start_pebble(host, {d: ADDRESS for d in DOMAINS})
    return host


@pytest.fixture(scope="module")
def web(lab):
    host = lab.add_host("web", WEB)  # a cluster host; only its backend matters here (not converged)
    host.write("/srv/site/index.html", PAGE)
    host.run(["systemd-run", "--unit=site", "python3", "-m", "http.server", "-d", "/srv/site", "8080"])
    return host


@pytest.fixture(scope="module")
def proxies(lab, git_server, deploy_key, outside, web):
    alpha = lab.add_host("alpha", ALPHA)
    beta = lab.add_host("beta", BETA)
    files = {
        "cluster.json": json.dumps(config(acmelab.pebble_directory(outside)), indent=2),
        "deploy.key": deploy_key[0],
        "acme-ca.pem": outside.ca,
    }
    git_server.commit(files, "a front")
    bootstrap_all({"alpha": alpha, "beta": beta}, git_server, deploy_key)
    outside.write("/root/pebble-root.pem", acmelab.pebble_root(outside))
    return {"alpha": alpha, "beta": beta}


def holder(proxies):
    found = [name for name, h in proxies.items() if f" {ADDRESS}/" in h.run("ip -o addr show").stdout]
    return found[0] if len(found) == 1 else None


def fetch(client, domain="www.front.test", timeout=3):
    """curl on the client through the address, the certificate checked against pebble's root."""
    return client.run(
        [
            "curl",
            "-sS",
            "--max-time",
            str(timeout),
            "--cacert",
            "/root/pebble-root.pem",
            "--resolve",
            f"{domain}:443:{ADDRESS}",
            "--resolve",
            f"{domain}:80:{ADDRESS}",
            f"https://{domain}/",
        ],
        check=False,
    )


def served_serial(client, domain="www.front.test"):
    return acmelab.served_serial(client, ADDRESS, domain)


def verb(host, name):
    code, data, result = salt_call(host, f"minicl_app.{name}", "front")
    return code, (data or {}).get("local"), result


def test_the_client_gets_the_page_over_https_with_the_acme_certificate(proxies, outside):
    assert holder(proxies) is not None  # exactly one proxy holds the address
    for domain in DOMAINS:
        result = fetch(outside, domain)
        assert result.returncode == 0 and result.stdout == PAGE, result.stderr
    plain = outside.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--resolve",
            f"www.front.test:80:{ADDRESS}",
            "http://www.front.test/x",
        ]
    ).stdout
    assert plain == "301 https://www.front.test/x"
    # Without pebble's root, curl refuses: the check above did verify the certificate.
    refused = outside.run(
        ["curl", "-sS", "--resolve", f"www.front.test:443:{ADDRESS}", "https://www.front.test/"], check=False
    )
    assert refused.returncode == 60, refused.stderr


def test_verbs_report_the_address_backends_and_certificate(proxies):
    on = holder(proxies)
    for name, host in proxies.items():
        code, report, result = verb(host, "check_health")
        assert code == 0 and report["ok"], result.stdout + result.stderr
        assert report["holds_address"] == (name == on)
        assert report["servers"] == {"site/web-8080": "UP"}
        assert report["certificate_days_left"] > 14
    code, report, result = verb(proxies[on], "test")
    assert code == 0 and report["ok"], result.stdout
    assert "ok   https://shop.front.test/ through 203.0.113.130: HTTP 200 (backend site)" in report["report"]
    code, report, result = verb(proxies[on], "monitor")
    assert code == 0 and report["holds_address"], result.stdout


def test_vrrp_comes_from_the_other_proxy_only(proxies):
    listing = proxies["alpha"].run("nft list table inet minicl").stdout
    assert "meta l4proto vrrp ip saddr 203.0.113.122 accept" in listing
    assert "meta l4proto vrrp drop" in listing


def test_the_challenge_port_answers_cluster_hosts_only(proxies, outside, web):
    # certbot listens on port 8402 only while it asks for a certificate: a stand-in listens here.
    alpha = proxies["alpha"]
    alpha.run(
        [
            "systemd-run",
            "--unit=stand-in",
            "python3",
            "-m",
            "http.server",
            "-b",
            ALPHA[0].split("/")[0],
            "8402",
        ]
    )
    try:
        ip = ALPHA[0].split("/")[0]
        assert wait_for("the stand-in listening", lambda: proxies["beta"].can_connect(ip, 8402), timeout=10)
        assert web.can_connect(ip, 8402)  # a cluster host that is no proxy
        assert not outside.can_connect(ip, 8402)
        assert outside.can_connect(ip, 22)  # positive control: the outside reaches alpha's ssh
    finally:
        alpha.systemctl("stop", "stand-in")


def test_the_exporter_reads_haproxy(proxies):
    metrics = proxies["alpha"].run("curl -sS -m 5 http://127.0.0.1:9101/metrics").stdout
    assert "haproxy_up 1" in metrics
    assert 'haproxy_server_up{backend="site",server="web-8080"} 1' in metrics


def test_a_second_run_changes_nothing_and_shows_no_secret(proxies, deploy_key):
    password = hmac.new(deploy_key[0].encode(), b"minicl front vrrp password", hashlib.sha256).hexdigest()[:8]
    for host in proxies.values():
        code, data, result = salt_call(host, "state.apply", "test=True")
        assert code == 0 and changed_states(data) == {}, result.stdout
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}
        assert "auth_pass" not in result.stdout and password not in result.stdout + result.stderr
        assert password in host.read("/etc/keepalived/keepalived.conf")
        found = host.run(
            [
                "grep",
                "-rlsF",
                password,
                "/etc/keepalived",
                "/etc/haproxy",
                "/etc/default",
                "/etc/minicl",
                "/var/lib/minicl",
                "/var/log/salt",
                "/var/lib/prometheus",
            ],
            check=False,
        )
        assert found.stdout.split() == ["/etc/keepalived/keepalived.conf"]
        assert password not in host.run("journalctl --no-pager -q", check=False).stdout
        assert host.run(
            "stat -c '%a' /etc/keepalived/keepalived.conf /etc/haproxy/certs/front.pem"
        ).stdout.split() == [
            "600",
            "600",
        ]


def test_a_bad_front_entry_is_refused_naming_the_field(proxies, outside, git_server):
    data = config(acmelab.pebble_directory(outside))
    data["apps"]["front"]["address"] = BETA[0].split("/")[0]
    git_server.commit({"cluster.json": json.dumps(data, indent=2)}, "the front on beta's own address")
    alpha = proxies["alpha"]
    code, _, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout + result.stderr  # the last good commit ran
    code, status, _ = salt_call(alpha, "minicl.status")
    assert "apps.front.address: 203.0.113.122 is the own address of host beta" in status["local"]["error"]
    assert ADDRESS in alpha.read("/etc/keepalived/keepalived.conf")
    assert fetch(outside).stdout == PAGE
    git_server.commit(
        {"cluster.json": json.dumps(config(acmelab.pebble_directory(outside)), indent=2)}, "fixed"
    )


def test_a_configuration_haproxy_rejects_never_replaces_the_running_one(proxies, outside, git_server):
    on = proxies[holder(proxies)]
    before = on.read("/etc/haproxy/haproxy.cfg")
    on.run("mv /etc/haproxy/errors/503.http /root/503.http")  # the new configuration names it
    data = config(acmelab.pebble_directory(outside))
    data["apps"]["front"]["backends"]["site"]["check"] = "/index.html"
    git_server.commit({"cluster.json": json.dumps(data, indent=2)}, "another health check")
    try:
        code, data_, result = salt_call(on, "state.apply")
        assert code != 0
        failed = [s for s in data_["local"].values() if s["result"] is False]
        assert any(
            "haproxy -c rejects the new configuration" in s["comment"] and "503.http" in s["comment"]
            for s in failed
        ), failed
        assert on.read("/etc/haproxy/haproxy.cfg") == before
        assert fetch(outside).stdout == PAGE  # positive control: still served, by the running haproxy
    finally:
        on.run("mv /root/503.http /etc/haproxy/errors/503.http")
    for host in proxies.values():
        code, _, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout
    assert "http-check send meth GET uri /index.html ver HTTP/1.1" in on.read("/etc/haproxy/haproxy.cfg")
    assert fetch(outside).stdout == PAGE


def test_a_certificate_is_renewed_when_due(proxies, outside, git_server):
    on = proxies[holder(proxies)]
    old = served_serial(outside)
    assert old.startswith("serial=")
    # pebble's certificates are valid for years: renewing 3000 days before makes this one due.
    git_server.commit(
        {
            "cluster.json": json.dumps(
                config(acmelab.pebble_directory(outside), renew_before="3000d"), indent=2
            )
        },
        "renew early",
    )
    code, data, result = salt_call(on, "state.apply")
    assert code == 0, result.stdout
    assert "certificate" in changed_states(data)[STATE]
    new = served_serial(outside)
    assert new.startswith("serial=") and new != old
    assert fetch(outside).stdout == PAGE
    git_server.commit(
        {"cluster.json": json.dumps(config(acmelab.pebble_directory(outside)), indent=2)}, "back"
    )
    code, data, result = salt_call(on, "state.apply")
    assert code == 0 and STATE not in changed_states(data), result.stdout  # not renewed again


def test_a_certificate_renewed_by_hand_reaches_haproxy_at_the_next_run(proxies, outside):
    on = proxies[holder(proxies)]
    old = served_serial(outside)
    on.run(
        ["certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew", "--quiet"],
        env={"REQUESTS_CA_BUNDLE": "/etc/minicl/acme-ca.pem"},
    )
    assert served_serial(outside) == old  # haproxy still has the old one
    code, data, result = salt_call(on, "state.apply")
    assert code == 0 and "/etc/haproxy/certs/front.pem" in changed_states(data)[STATE], result.stdout
    assert served_serial(outside) not in (old, "")


def test_failover_moves_the_address_to_the_other_proxy(proxies, outside):
    first = holder(proxies)
    other = next(name for name in proxies if name != first)
    code, report, result = verb(proxies[other], "failover")
    assert (
        code == 0
        and f"info {other} does not hold {ADDRESS} ({first} does): run failover there" in report["report"]
    )
    code, report, result = verb(proxies[first], "failover")
    assert code == 0 and report["holder"] == other, result.stdout
    assert wait_for("the address on the other proxy", lambda: holder(proxies) == other, timeout=10)
    assert wait_for("the page through the other proxy", lambda: fetch(outside).stdout == PAGE, timeout=10)
    # keepalived stopped on the holder: the address moves, and its metric does not stay at 1.
    proxies[other].systemctl("stop", "keepalived")
    try:
        assert wait_for("the address back on the first proxy", lambda: holder(proxies) == first, timeout=10)
        assert held(proxies[other]) == "0"  # written after keepalived stopped (ExecStopPost)
        assert wait_for("held on the first", lambda: held(proxies[first]) == "1")
    finally:
        proxies[other].systemctl("start", "keepalived")


def held(host):
    text = host.run("curl -sS -m 3 http://127.0.0.1:9100/metrics").stdout
    return next(
        (line.split()[-1] for line in text.splitlines() if line.startswith("minicl_front_address_held{")),
        None,
    )


def test_the_page_is_served_when_the_proxy_holding_the_address_dies(proxies, outside):
    dying = holder(proxies)
    survivor = next(name for name in proxies if name != dying)
    assert fetch(outside).stdout == PAGE
    proxies[dying].crash()
    assert wait_for(
        "the page through the surviving proxy",
        lambda: fetch(outside, timeout=2).stdout == PAGE,
        timeout=20,
        interval=0.2,
    )
    assert f" {ADDRESS}/" in proxies[survivor].run("ip -o addr show").stdout
    # Back from the power cut, it serves again as the standby (the address stays: nopreempt).
    proxies[dying].boot()
    for unit in ("haproxy", "keepalived"):
        assert wait_for(
            f"{unit} back", lambda unit=unit: proxies[dying].unit_state(unit) == "active", timeout=60
        )
    assert wait_for("its check running", lambda: held(proxies[dying]) == "0", timeout=30)
    assert holder(proxies) == survivor
    code, data, result = salt_call(proxies[dying], "state.apply")
    assert code == 0 and changed_states(data) == {}, result.stdout
