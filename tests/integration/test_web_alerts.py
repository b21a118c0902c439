"""The web front and nginx as a group runs them, with a live monitor: two proxies (haproxy +
keepalived, the certificate from pebble on an outside host) in front of an nginx app on the
monitor host, alert mail through the fake authenticated relay. The client gets nginx's page
through the front (its health check reaches nginx's name-based site); an nginx certificate (a
file of the config repo, 10 days left of 90) mails NginxCertificateExpiring, the others do not alert;
nginx down mails FrontBackendServerDown; keepalived stopped on both proxies mails
FrontAddressNotHeld, and the address comes back when it starts; VRRP adverts dropped between
the proxies mails FrontAddressHeldTwice, and one keeps the address once they hear each other
again; an ACME server that issues 4-minute certificates: each proxy renews only when a third of
the lifetime is left (not at every run), and when the ACME server is down FrontCertificateExpiring
mails for each proxy once a sixth is left."""

import pytest

from minicl_lab import acmelab, probes
from minicl_lab.testhosts import GitServer

from .conftest import alert_mail, bootstrap_all, changed_states, cluster_config, dump, salt_call, wait_for

RELAY = ["203.0.113.170/24"]
GIT = ["203.0.113.171/24"]
ALPHA = ["203.0.113.172/24"]
BETA = ["203.0.113.173/24"]
WATCH = ["203.0.113.174/24"]  # the monitor, and the front's backend (nginx)
WATCH_IP = WATCH[0].split("/")[0]
OUTSIDE = ["203.0.113.179/24"]  # pebble, and the client
ADDRESS = "203.0.113.180"
DOMAIN = "www.alerts.test"
ADMIN = "admin.alerts.test"  # nginx's own TLS site, its certificate a file with 10 days left of 90
PAGE = "<h1>nginx behind the front</h1>\n"
USER, PASSWORD = "cluster@example.org", "relay-secret-Web5"
FRONT_STATE = "minicl_haproxy_|-minicl-haproxy-front_|-front_|-running"
LIFETIME = 240  # seconds, of the short-lived certificates: renewed with 80 left, expiring with 40


def entry(addresses, *roles):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base", *roles]}


def config(directory):
    data = cluster_config(
        {"alpha": entry(ALPHA), "beta": entry(BETA), "watch": entry(WATCH, "monitor")},
        smtp={"relay": "relay.example.org", "port": 587, "username": USER, "password": PASSWORD},
        ca_url="http://relay.example.org/ca.crt",
        monitoring={"scrape_interval": "2s", "retention": "1d"},
    )
    data["apps"] = {
        "front": {"type": "haproxy", "hosts": ["alpha", "beta"], "address": ADDRESS, "domains": [DOMAIN],
                  "backends": {"site": {"servers": ["watch:80"], "check": "/"}}, "default": "site"},
        "web": {"type": "nginx", "hosts": ["watch"], "sites": {
            "www": {"server_names": [DOMAIN], "root": "sites/www"},
            "admin": {"server_names": [ADMIN], "root": "sites/www",
                      "tls": {"certificate": "tls/admin.crt", "key": "tls/admin.key"}}}},
    }  # fmt: skip
    data["acme"] = {"directory": directory, "ca": "acme-ca.pem"}
    return data


@pytest.fixture(scope="module")
def git_server(lab, deploy_key):
    return GitServer(lab.add_host("git", GIT), deploy_key[1])


@pytest.fixture(scope="module")
def cluster(lab, relay, git_server, deploy_key):
    outside = lab.add_host("outside", OUTSIDE)
    acme_ca = acmelab.start_pebble(outside, {DOMAIN: ADDRESS})
    crt, key = acmelab.self_signed([ADMIN], 10, 90)
    git_server.commit(
        {
            "cluster.json": dump(config(acmelab.pebble_directory(outside))),
            "deploy.key": deploy_key[0],
            "acme-ca.pem": acme_ca,
            "sites/www/index.html": PAGE,
            "tls/admin.crt": crt,
            "tls/admin.key": key,
        },
        "a front before nginx, monitored",
    )
    hosts = {name: lab.add_host(name, addresses) for name, addresses in
             (("alpha", ALPHA), ("beta", BETA), ("watch", WATCH))}  # fmt: skip
    for host in hosts.values():
        host.run(f"echo '{RELAY[0].split('/')[0]} relay.example.org' >> /etc/hosts")
    bootstrap_all(hosts, git_server, deploy_key)
    outside.write("/root/pebble-root.pem", acmelab.pebble_root(outside))
    return {**hosts, "outside": outside}


def alerts(watch, name):
    """The labels of the firing alerts ``name`` at the monitor's Prometheus."""
    found = probes.prometheus_query(watch, f'ALERTS{{alertname="{name}",alertstate="firing"}}')
    return [labels for labels, _ in found]


def front_up(outside):
    result = outside.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", "/root/pebble-root.pem", "--resolve",
         f"{DOMAIN}:443:{ADDRESS}", f"https://{DOMAIN}/"],
        check=False,
    )  # fmt: skip
    return result.stdout == PAGE


def test_the_client_gets_nginx_s_page_through_the_front(cluster):
    assert front_up(cluster["outside"])
    code, data, result = salt_call(cluster["alpha"], "minicl_app.check_health", "front")
    assert data["local"]["servers"] == {"site/watch-80": "UP"}, result.stdout
    # nginx answers a request without a name it serves with nothing: the check's Host matters.
    bare = cluster["alpha"].run(f"curl -s -o /dev/null -w '%{{http_code}}' http://{WATCH_IP}/", check=False)
    assert bare.stdout == "000", bare


def test_an_nginx_certificate_expiring_soon_mails_and_only_that_one(cluster, relay):
    alert_mail(
        relay,
        "NginxCertificateExpiring",
        "watch: the certificate of web/admin expires soon",
        "a file of the config repo",
    )
    watch = cluster["watch"]
    firing = alerts(watch, "NginxCertificateExpiring")
    assert [(a["site"], a["source"]) for a in firing] == [("admin", "file")], firing
    assert alerts(watch, "FrontCertificateExpiring") == []  # pebble's: years left


def test_nginx_down_mails_the_front_s_backend_down(cluster, relay):
    watch, outside = cluster["watch"], cluster["outside"]
    watch.systemctl("stop", "nginx")
    try:
        alert_mail(relay, "FrontBackendServerDown", "front: backend site server watch-80 is down")
        assert not front_up(outside)
    finally:
        watch.systemctl("start", "nginx")
    wait_for("the front serving nginx's page again", lambda: front_up(outside), timeout=30)


def test_no_proxy_holding_the_address_mails_and_the_address_comes_back(cluster, relay):
    proxies, outside = (cluster["alpha"], cluster["beta"]), cluster["outside"]
    assert alerts(cluster["watch"], "FrontAddressNotHeld") == []
    for proxy in proxies:
        proxy.systemctl("stop", "keepalived")
    try:
        alert_mail(relay, "FrontAddressNotHeld", "front: no proxy holds the front")
        assert not front_up(outside)
    finally:
        for proxy in proxies:
            proxy.systemctl("start", "keepalived")
    wait_for("the front answering again", lambda: front_up(outside), timeout=30)
    assert len(holding(proxies)) == 1, holding(proxies)


def holding(proxies):
    """The names of the proxies that hold the front's address."""
    return [p.name for p in proxies if f" {ADDRESS}/" in p.run("ip -o addr show").stdout]


# VRRP adverts dropped on their way in, as a firewall mistake or a split network would.
SPLIT = (
    "nft add table inet minicl_test_split && "
    "nft add chain inet minicl_test_split input '{ type filter hook input priority -10; }' && "
    "nft add rule inet minicl_test_split input ip protocol vrrp drop"
)


def test_both_proxies_holding_the_address_mails_and_one_keeps_it_after(cluster, relay):
    proxies, outside = (cluster["alpha"], cluster["beta"]), cluster["outside"]
    assert alerts(cluster["watch"], "FrontAddressHeldTwice") == []
    (held,) = holding(proxies)
    other = next(p for p in proxies if p.name != held)
    other.run(SPLIT)
    try:
        wait_for("both proxies holding the address", lambda: len(holding(proxies)) == 2, timeout=30)
        alert_mail(relay, "FrontAddressHeldTwice", "front: 2 proxies hold the front")
    finally:
        other.run("nft delete table inet minicl_test_split")
    wait_for("one proxy holding the address again", lambda: len(holding(proxies)) == 1, timeout=30)
    assert front_up(outside)


def test_short_lived_certificates_are_renewed_when_due_and_mail_when_renewal_fails(cluster, relay):
    proxies, outside, watch = (cluster["alpha"], cluster["beta"]), cluster["outside"], cluster["watch"]
    assert alerts(watch, "FrontCertificateExpiring") == []  # pebble's first: years left
    acmelab.restart_pebble(outside, LIFETIME)
    for proxy in proxies:
        proxy.systemctl("stop", "minicl-minion")  # the runs are the test's, when it says
    try:
        for proxy in proxies:  # the restarted pebble has forgotten the accounts; a new CA, new lineages
            proxy.run(
                "rm -rf /etc/letsencrypt/accounts && certbot delete --non-interactive --cert-name front"
            )
            code, data, result = salt_call(proxy, "state.apply")
            assert code == 0, result.stdout[-3000:]
            assert "no certificate yet" in changed_states(data)[FRONT_STATE]["certificate"]
        # renew_before (30 days) is longer than the certificate's life: not renewed at every run.
        code, data, result = salt_call(proxies[1], "state.apply")
        assert code == 0 and FRONT_STATE not in changed_states(data), result.stdout[-3000:]
        outside.systemctl("stop", acmelab.UNIT)
        alert_mail(
            relay, "FrontCertificateExpiring", "the certificate of front expires soon", timeout=LIFETIME
        )
        wait_for(
            "the alert for both proxies",
            lambda: (
                sorted(a["instance"] for a in alerts(watch, "FrontCertificateExpiring")) == ["alpha", "beta"]
            ),
            timeout=60,
        )
        code, _, result = salt_call(proxies[0], "state.apply")  # due, and the ACME server down
        said = result.stdout[-3000:]
        assert code != 0 and "certbot could not get the certificate front" in result.stdout, said
        acmelab.restart_pebble(outside, LIFETIME)
        for proxy in proxies:
            proxy.run("rm -rf /etc/letsencrypt/accounts")
            code, data, result = salt_call(proxy, "state.apply")
            assert code == 0, result.stdout[-3000:]
            assert "renewed 80 seconds before" in changed_states(data)[FRONT_STATE]["certificate"]
    finally:
        for proxy in proxies:
            proxy.systemctl("start", "minicl-minion")
    wait_for("the alert resolved", lambda: alerts(watch, "FrontCertificateExpiring") == [], timeout=60)
    outside.write("/root/pebble-root.pem", acmelab.pebble_root(outside))
    assert front_up(outside)  # the renewed certificate, from the restarted pebble, serves
