"""The front on systemd test hosts: two proxies (haproxy + keepalived + certbot) with a floating
address, a backend host, and an outside host running the ACME server (Debian's pebble) that is
also the client, all dual-stack. The client fetches a page over HTTPS through the address with
the certificate pebble issued, over IPv4 and IPv6 (both addresses on the same proxy); the verbs; the exporter; VRRP from the other proxy only; the challenge port
(8402) open to cluster hosts, not the outside; VRRP adverts forged by hosts that are no proxy
move nothing (the same from the other proxy's address do); a second run changes
nothing and shows no secret; a bad front entry refused naming the field; a haproxy
configuration that haproxy rejects never replaces the running one; renewal when due, and by
hand; failover moves the address; the proxy holding the address is killed and the other serves
the same request; back from its power cut it is the standby."""

import hashlib
import hmac
import json
import re

import pytest

from minicl_lab import acmelab
from minicl_lab.testhosts import GitServer

from .conftest import bootstrap_all, changed_states, cluster_config, salt_call, wait_for

GIT = ["203.0.113.120/24"]
ALPHA = ["203.0.113.121/24", "2001:db8:113::121/64"]
BETA = ["203.0.113.122/24", "2001:db8:113::122/64"]
WEB = ["203.0.113.123/24", "2001:db8:113::123/64"]
OUTSIDE = ["203.0.113.124/24", "2001:db8:113::124/64"]  # pebble, and the client
ADDRESS = "203.0.113.130"
ADDRESS6 = "2001:db8:113::130"  # the front's IPv6 address, moved along with the IPv4 one
DOMAINS = ["www.front.test", "shop.front.test"]
PAGE = "hello from the backend\n"
STATE = "minicl_haproxy_|-minicl-haproxy-front_|-front_|-running"


def entry(addresses):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}


def config(directory):
    data = cluster_config({"alpha": entry(ALPHA), "beta": entry(BETA), "web": entry(WEB)})
    data["apps"] = {
        "front": {
            "type": "haproxy",
            "hosts": ["alpha", "beta"],
            "address": [ADDRESS, ADDRESS6],
            "domains": DOMAINS,
            "backends": {"site": {"servers": ["web:8080"], "check": "/"}},
            "routes": {"shop.front.test": "site"},
            "default": "site",
        }
    }
    data["acme"] = {"directory": directory, "ca": "acme-ca.pem"}
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


def holder(proxies, address=ADDRESS):
    found = [name for name, h in proxies.items() if f" {address}/" in h.run("ip -o addr show").stdout]
    return found[0] if len(found) == 1 else None


def fetch(client, domain="www.front.test", timeout=3, address=ADDRESS):
    """curl on the client through the address, the certificate checked against pebble's root."""
    at = f"[{address}]" if ":" in address else address
    return client.run(
        [
            "curl",
            "-sS",
            "--max-time",
            str(timeout),
            "--cacert",
            "/root/pebble-root.pem",
            "--resolve",
            f"{domain}:443:{at}",
            "--resolve",
            f"{domain}:80:{at}",
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


def test_the_ipv6_address_is_held_with_the_ipv4_one_and_serves_the_page(proxies, outside):
    assert holder(proxies, ADDRESS6) == holder(proxies) is not None
    result = fetch(outside, address=ADDRESS6)
    assert result.stdout == PAGE, result.stderr
    other = next(name for name in proxies if name != holder(proxies))
    assert f"inet6 {ADDRESS6}/" not in proxies[other].run("ip -o addr show").stdout


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


# VRRP adverts for the front's router id with a higher priority, as any host on the network
# could send: the proxy holding the address would give it up if it took them.
FORGE = r"""
import socket, struct, sys, time
target, vrid, password, vip, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
body = bytearray(struct.pack("!BBBBBBH", 0x21, vrid, 254, 1, 1, 1, 0))
body += socket.inet_aton(vip) + password.encode().ljust(8, b"\0")
total = sum((body[i] << 8) + body[i + 1] for i in range(0, len(body), 2))
total = (total & 0xFFFF) + (total >> 16)
struct.pack_into("!H", body, 6, ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
end = time.time() + seconds
while time.time() < end:
    sock.sendto(bytes(body), (target, 0))
    time.sleep(0.2)
"""


def forge_adverts(sender, proxy, seconds):
    conf = proxy.read("/etc/keepalived/keepalived.conf")
    vrid = re.search(r"virtual_router_id (\d+)", conf).group(1)
    password = re.search(r"auth_pass (\S+)", conf).group(1)
    sender.run(["python3", "-c", FORGE, proxy.ipv4, vrid, password, ADDRESS, str(seconds)])


def test_vrrp_adverts_of_a_non_peer_move_nothing(proxies, outside, web):
    first = holder(proxies)
    other = next(name for name in proxies if name != first)
    for sender in (outside, web):  # neither is a proxy; web is a cluster host
        forge_adverts(sender, proxies[first], 6)
        assert holder(proxies) == first, sender.name
    # Positive control: the same adverts from the other proxy's address make the holder step
    # down, and the other proxy, hearing no adverts, takes the address.
    forge_adverts(proxies[other], proxies[first], 6)
    assert wait_for("the address on the other proxy", lambda: holder(proxies) == other, timeout=10)
    assert wait_for("the page again", lambda: fetch(outside).stdout == PAGE, timeout=10)


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


def test_a_certificate_is_renewed_when_due(proxies, outside):
    on = proxies[holder(proxies)]
    old = served_serial(outside)
    assert old.startswith("serial=")
    code, data, result = salt_call(on, "state.apply")
    assert code == 0 and STATE not in changed_states(data), result.stdout  # pebble's: years left
    # With 10 days left of 90, it is due (acme.renew_before, 30 days).
    acmelab.age_certificate(on, "front", DOMAINS, 10, 90)
    code, data, result = salt_call(on, "state.apply")
    assert code == 0, result.stdout
    changes = changed_states(data)[STATE]
    assert "it expires in 10.0 days (renewed 30.0 days before)" in changes["certificate"], changes
    new = served_serial(outside)
    assert new.startswith("serial=") and new != old
    assert fetch(outside).stdout == PAGE
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
    assert holder(proxies, ADDRESS6) == other  # the IPv6 address moved along
    assert wait_for("over IPv6 too", lambda: fetch(outside, address=ADDRESS6).stdout == PAGE, timeout=10)
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
