"""The front (haproxy apps, keepalived, ACME): what it accepts in cluster.json, what it writes,
the firewall and alert rules it adds, and when a certificate is due."""

import datetime
import json
import shutil
import subprocess

import pytest

from minicl import acme, config, firewall, monitor
from minicl.appliances import haproxy
from minicl.cluster import addresses_by_host

FRONT = {
    "type": "haproxy",
    "hosts": ["alpha", "beta"],
    "address": "198.51.100.30",
    "domains": ["www.example.org", "api.example.org"],
    "backends": {"web": {"servers": ["watch:8080"], "check": "/health"}, "api": {"servers": ["beta:9000"]}},
    "routes": {"api.example.org": "api"},
    "default": "web",
}
ACME = {"directory": "https://acme.example.org/dir", "ca": "acme-ca.pem"}


@pytest.fixture
def front_data(example_data):
    data = json.loads(json.dumps(example_data))
    data["apps"] = {"front": json.loads(json.dumps(FRONT))}
    data["acme"] = dict(ACME)
    return data


@pytest.fixture(autouse=True)
def key(deploy_key):
    return deploy_key


def app_of(data, host):
    return config.Cluster(data).apps_of(host)["front"]


def test_a_valid_front_is_accepted(front_data, problems):
    assert problems(front_data, repo_files={"acme-ca.pem", "cluster.json"}) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d["apps"]["front"].update(address="198.51.100.11"),
         "apps.front.address: 198.51.100.11 is the own address of host alpha"),
        (lambda d: d["apps"]["front"].update(address="nope"), 'apps.front.address: "nope" is not an IP address'),
        (lambda d: d["apps"]["front"].update(address=["2001:db8::30"]),
         "apps.front.address: give one IPv4 address, optionally followed by one IPv6"),
        (lambda d: d["apps"]["front"].update(hosts=["alpha"]), "apps.front.hosts: a haproxy app needs two hosts"),
        (lambda d: d["apps"]["front"].pop("address"), "apps.front.address: a haproxy app needs address"),
        (lambda d: d["apps"]["front"]["domains"].append("Bad_Name"),
         'apps.front.domains[2]: "Bad_Name" is not a DNS name'),
        (lambda d: d["apps"]["front"]["backends"]["web"]["servers"].append("nohost:80"),
         'apps.front.backends.web.servers[1]: "nohost" is not a host in "hosts"'),
        (lambda d: d["apps"]["front"]["backends"]["web"]["servers"].append("watch:99999"),
         'apps.front.backends.web.servers[1]: "watch:99999" is not "host:port"'),
        (lambda d: d["apps"]["front"]["backends"]["web"].update(check="health"),
         'apps.front.backends.web.check: "health" is not a path'),
        (lambda d: d["apps"]["front"]["backends"].update({"minicl-x": {"servers": ["beta:1"]}}),
         'apps.front.backends.minicl-x: "minicl-x" is not a backend name'),
        (lambda d: d["apps"]["front"]["routes"].update({"other.example.org": "web"}),
         'apps.front.routes."other.example.org": "other.example.org" is not one of the app\'s domains'),
        (lambda d: d["apps"]["front"]["routes"].update({"www.example.org": "nope"}),
         'apps.front.routes."www.example.org": "nope" is not one of the app\'s backends'),
        (lambda d: d["apps"]["front"].update(default="nope"), 'apps.front.default: "nope" is not one of'),
        (lambda d: d["apps"]["front"].pop("default"), "apps.front.default: the domains www.example.org have no route"),
        (lambda d: d["apps"]["front"].update(public="yes"), "apps.front.public: must be"),
        (lambda d: d.pop("acme"), 'acme: the haproxy app "front" gets its certificates from an ACME server'),
        (lambda d: d["acme"].update(directory="http://acme.example.org/dir"),
         'acme.directory: "http://acme.example.org/dir" is not an https:// URL'),
        (lambda d: d["acme"].update(email="nobody"), 'acme.email: "nobody" is not an e-mail address'),
        (lambda d: d["acme"].update(ca="missing.pem"), 'acme.ca: "missing.pem" is not a file of the config repo'),
        (lambda d: d["acme"].update(renew_before="soon"), "acme.renew_before:"),
        (lambda d: d["acme"].update(extra=1), "acme.extra: unknown field"),
        (lambda d: d["apps"].update(other=dict(FRONT, hosts=["watch", "beta"])),
         "apps.other.address: 198.51.100.30 is already the address of app"),
        (lambda d: d["apps"].update(cache={"type": "redis", "hosts": ["alpha"], "domains": ["x.org"]}),
         "apps.cache.domains: only a haproxy app has domains (this one is redis)"),
    ],
)  # fmt: skip
def test_bad_front_entries_are_refused_naming_the_field(front_data, problems, change, expected):
    change(front_data)
    found = problems(front_data, repo_files={"acme-ca.pem", "cluster.json"})
    assert any(expected in line for line in found), found


def test_haproxy_serves_the_address_routes_the_domains_and_checks_the_backends(front_data):
    app = app_of(front_data, "alpha")
    hosts = addresses_by_host(front_data)
    text = haproxy.render_haproxy(app, hosts, with_tls=True)
    assert "    bind 198.51.100.30:80 transparent\n" in text
    assert (
        "    bind 198.51.100.30:443 transparent ssl crt /etc/haproxy/certs/front.pem alpn h2,http/1.1\n"
        in text
    )
    assert "    http-request redirect scheme https code 301 unless acme_challenge\n" in text
    assert (
        "    use_backend api if { hdr(host),field(1,:) -i api.example.org }\n    default_backend web\n"
        in text
    )
    assert (
        "backend web\n    balance roundrobin\n    option httpchk\n"
        "    http-check send meth GET uri /health ver HTTP/1.1 hdr Host www.example.org\n" in text
    )  # the default backend: a domain no route takes
    assert "    http-check send meth GET uri / ver HTTP/1.1 hdr Host api.example.org\n" in text
    assert "    server watch-8080 198.51.100.20:8080 check inter 2s fall 2 rise 2\n" in text
    assert "    server alpha 198.51.100.11:8402\n    server beta 198.51.100.12:8402\n" in text
    assert "    retry-on conn-failure empty-response 404\n    option redispatch 1\n" in text
    without = haproxy.render_haproxy(app, hosts, with_tls=False)
    assert ":443" not in without and "frontend minicl-http" in without


def test_an_ipv6_address_is_bound_and_moved_along(front_data):
    front_data["apps"]["front"]["address"] = ["198.51.100.30", "2001:db8:100::30"]
    app = app_of(front_data, "alpha")
    text = haproxy.render_haproxy(app, addresses_by_host(front_data), with_tls=True)
    assert "    bind [2001:db8:100::30]:443 transparent ssl" in text
    conf = haproxy.render_keepalived(app, haproxy.Interface("eth0", {4: 24, 6: 64}))
    assert "    virtual_ipaddress_excluded {\n        2001:db8:100::30/64 dev eth0\n    }\n" in conf


def test_keepalived_speaks_unicast_to_the_other_proxies_and_tracks_haproxy(front_data):
    alpha = haproxy.render_keepalived(app_of(front_data, "alpha"), haproxy.Interface("eth0", {4: 24}))
    beta = haproxy.render_keepalived(app_of(front_data, "beta"), haproxy.Interface("ens3", {4: 24}))
    assert "    unicast_src_ip 198.51.100.11\n    unicast_peer {\n        198.51.100.12\n    }\n" in alpha
    assert "    priority 200\n" in alpha and "    priority 190\n" in beta
    assert "    nopreempt\n" in alpha and "        198.51.100.30/24 dev ens3\n" in beta
    assert "track_script {\n        minicl_haproxy\n" in alpha
    password = haproxy.vrrp_password(app_of(front_data, "alpha"))
    assert f"auth_pass {password}\n" in alpha and len(password) == 8
    assert password not in haproxy.redacted(alpha, app_of(front_data, "alpha"))
    script = haproxy.render_check_script(app_of(front_data, "alpha"))
    assert 'ip -o addr show | grep -q " 198.51.100.30/" && held=1' in script and script.endswith(
        "exec systemctl is-active --quiet haproxy.service\n"
    )


def test_the_firewall_opens_the_front_and_takes_vrrp_from_the_other_proxies_only(front_data):
    spec = firewall.host_spec(config.Cluster(front_data), "alpha")
    assert "80" in spec.public_tcp and "443" in spec.public_tcp
    assert spec.peer_protocols == [("vrrp", ["198.51.100.12", "2001:db8:100::12"])]
    assert "8402" in spec.cluster_only_tcp and "443" not in spec.cluster_only_tcp
    text = firewall.render_ruleset(spec)
    assert 'meta l4proto vrrp ip saddr 198.51.100.12 accept comment "app peers"\n' in text
    assert 'meta l4proto vrrp drop comment "app peers only"\n' in text
    assert text.index("l4proto vrrp drop") < text.index("ip saddr @trusted_v4 accept")
    firewall.canonical(text)  # nft takes it
    assert "443" in firewall.host_spec(config.Cluster(front_data), "beta").public_tcp
    front_data["apps"]["front"]["public"] = False
    assert "443" not in firewall.host_spec(config.Cluster(front_data), "beta").public_tcp
    assert firewall.host_spec(config.Cluster(front_data), "watch").peer_protocols == []


def test_alerts_for_the_front(front_data):
    rules = {r["alert"]: r for r in monitor.app_alert_rules(config.Cluster(front_data))}
    assert rules["FrontCertificateExpiring"]["expr"] == (
        "minicl_front_certificate_expiry_timestamp_seconds - time() < clamp_max((minicl_front_certificate_expiry"
        "_timestamp_seconds - minicl_front_certificate_start_timestamp_seconds) / 6, 14 * 86400)"
    )
    assert rules["FrontAddressNotHeld"]["expr"] == "sum by (app) (minicl_front_address_held) == 0"
    assert rules["FrontAddressHeldTwice"]["expr"] == "sum by (app) (minicl_front_address_held) > 1"
    assert "haproxy_server_up" in rules["FrontBackendServerDown"]["expr"]


def test_a_certificate_is_due_when_missing_renamed_or_near_its_end():
    settings = {"renew_before": 30 * 86400}
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    days = datetime.timedelta(days=1)
    cert = acme.Certificate("front", ["a.org", "b.org"], now - 30 * days, now + 60 * days, "1f")
    assert acme.due(None, ["a.org"], settings, now) == "no certificate yet"
    assert acme.due(cert, ["b.org", "a.org"], settings, now) is None
    assert "names a.org, b.org" in acme.due(cert, ["a.org"], settings, now)
    assert (
        acme.due(cert, ["a.org", "b.org"], settings, now + 30 * days - datetime.timedelta(seconds=1)) is None
    )
    assert acme.due(cert, ["a.org", "b.org"], settings, now + 40 * days) == (
        "it expires in 20.0 days (renewed 30.0 days before)"
    )
    assert not cert.expiring(now + 45 * days) and cert.expiring(now + 47 * days)  # 14 days left


def test_a_short_lived_certificate_is_renewed_and_expiring_by_its_lifetime_not_every_run():
    # A CA's one-day certificate under the default renew_before of 30 days: renewed with a third
    # of its lifetime left (8 hours), expiring with a sixth (4 hours), not at every run.
    settings = {"renew_before": 30 * 86400}
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    hours = datetime.timedelta(hours=1)
    cert = acme.Certificate("front", ["a.org"], now, now + 24 * hours, "2a")
    assert acme.due(cert, ["a.org"], settings, now) is None
    assert acme.due(cert, ["a.org"], settings, now + 15 * hours) is None and not cert.expiring(
        now + 15 * hours
    )
    assert (
        acme.due(cert, ["a.org"], settings, now + 17 * hours)
        == "it expires in 7.0 hours (renewed 8.0 hours before)"
    )
    assert not cert.expiring(now + 19 * hours) and cert.expiring(now + 21 * hours)
    # A shorter renew_before still counts: 2 hours before the end.
    assert acme.due(cert, ["a.org"], {"renew_before": 7200}, now + 21 * hours) is None
    assert "it expires in 60 minutes (renewed 2.0 hours before)" == acme.due(
        cert, ["a.org"], {"renew_before": 7200}, now + 23 * hours
    )


def test_certbot_runs_standalone_on_the_proxys_own_address(front_data):
    settings = acme.pillar(config.Cluster(front_data))
    assert settings["email"] == front_data["admin_email"] and settings["renew_before"] == 30 * 86400
    argv = acme.certbot_command("front", ["a.org", "b.org"], settings, acme.standalone("198.51.100.11", 8402))
    assert argv[:2] == ["certbot", "certonly"]
    assert "--standalone" in argv and argv[argv.index("--http-01-address") + 1] == "198.51.100.11"
    assert argv[-4:] == ["-d", "a.org", "-d", "b.org"]
    assert argv[argv.index("--server") + 1] == "https://acme.example.org/dir"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package")
def test_the_front_rules_pass_promtool(front_data, tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(monitor.render_rules(config.Cluster(front_data)))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    assert "FrontAddressHeldTwice" in path.read_text()


def test_a_front_and_an_nginx_app_on_one_host_are_refused_naming_the_port(front_data, problems):
    front_data["apps"]["web"] = {"type": "nginx", "hosts": ["watch", "beta"],
                                 "sites": {"www": {"server_names": ["w.example.org"], "proxy": ["watch:8080"]}}}  # fmt: skip
    assert problems(front_data, repo_files={"acme-ca.pem", "cluster.json"}) == [
        'cluster.json: apps.web.hosts[1]: beta already runs the haproxy app "front", which listens on ports 80 '
        "and 443 too; run the nginx app on other hosts"
    ]
    front_data["apps"]["web"]["hosts"] = ["watch"]
    assert problems(front_data, repo_files={"acme-ca.pem", "cluster.json"}) == []


def test_upgrade_and_downgrade_are_the_appliances_own_without_a_safety_backup(monkeypatch):
    from minicl.appliances import upgrades

    calls = []
    monkeypatch.setattr(upgrades, "upgrade", lambda module, app: calls.append(("upgrade", module, app)))
    monkeypatch.setattr(upgrades, "downgrade", lambda module, app: calls.append(("downgrade", module, app)))
    app = {"name": "front"}
    haproxy.upgrade(app)
    haproxy.downgrade(app)
    assert calls == [("upgrade", haproxy, app), ("downgrade", haproxy, app)]
    assert {"upgrade", "downgrade"} <= set(haproxy.VERBS) and not hasattr(haproxy, "backup")
    assert upgrades.packages(haproxy, {"packages": ["haproxy-doc"]}) == [
        "certbot", "haproxy", "haproxy-doc", "keepalived"
    ]  # fmt: skip


@pytest.mark.skipif(not shutil.which("haproxy"), reason="needs Debian's haproxy")
def test_haproxy_accepts_what_is_rendered(front_data, tmp_path):
    text = haproxy.render_haproxy(app_of(front_data, "alpha"), addresses_by_host(front_data), False)
    text = text.replace("    chroot /var/lib/haproxy\n", "").replace(
        "/run/haproxy/admin.sock", str(tmp_path / "s")
    )
    for code in (400, 403, 408, 500, 502, 503, 504):  # Debian's error files, if not installed here
        text = text.replace(f"/etc/haproxy/errors/{code}.http", str(tmp_path / f"{code}.http"))
        (tmp_path / f"{code}.http").write_text(f"HTTP/1.0 {code} x\r\n\r\n")
    (tmp_path / "haproxy.cfg").write_text(text)
    result = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_failed_reload_puts_the_previous_configuration_back(tmp_path, monkeypatch):
    from minicl.appliances import ApplianceError

    conf = tmp_path / "haproxy.cfg"
    conf.write_text("old\n")
    monkeypatch.setattr(haproxy, "CONF_FILE", str(conf))
    monkeypatch.setattr(haproxy, "config_check", lambda path: None)
    monkeypatch.setattr(haproxy, "unit_active", lambda unit: True)

    def systemctl(*args, check=True):
        raise ApplianceError("systemctl reload haproxy: Job for haproxy.service failed")

    monkeypatch.setattr(haproxy, "systemctl", systemctl)
    with pytest.raises(ApplianceError, match="Job for haproxy.service failed"):
        haproxy.install_and_reload("new\n")
    assert conf.read_text() == "old\n"  # the next run sees the change to make and tries again


def test_a_renewed_certificate_haproxy_does_not_load_is_put_back(tmp_path, monkeypatch):
    from minicl.appliances import ApplianceError

    monkeypatch.setattr(haproxy, "CERTS_DIR", str(tmp_path))
    monkeypatch.setattr(haproxy, "cert_path", lambda app: str(tmp_path / "front.pem"))
    (tmp_path / "front.pem").write_text("OLD PEM\n")
    monkeypatch.setattr(haproxy, "config_check", lambda path: None)
    monkeypatch.setattr(haproxy, "unit_active", lambda unit: True)
    monkeypatch.setattr(haproxy, "write_expiry_metric", lambda app: None)

    def systemctl(*args, check=True):
        if args[0] == "reload":
            raise ApplianceError("systemctl reload haproxy: Job for haproxy.service failed")

    monkeypatch.setattr(haproxy, "systemctl", systemctl)
    todo = haproxy.Plan({}, None, None, "NEW PEM\n", start_haproxy=False, enable=[], start_keepalived=False,
                        reload_keepalived=False)  # fmt: skip
    with pytest.raises(ApplianceError, match="Job for haproxy.service failed"):
        haproxy.apply_plan({"name": "front"}, {}, {}, todo)
    assert (tmp_path / "front.pem").read_text() == "OLD PEM\n"  # the next run loads the new one again


def test_the_expiry_series_of_a_front_the_proxy_ran_before_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(haproxy.metrics, "TEXTFILE_DIR", str(tmp_path))
    start, end = (datetime.datetime(y, 1, 1, tzinfo=datetime.timezone.utc) for y in (2029, 2030))
    monkeypatch.setattr(
        acme, "certificate", lambda name: acme.Certificate(name, ["www.front.test"], start, end, "01")
    )
    (tmp_path / "minicl_front_old_certificate.prom").write_text("stale\n")
    (tmp_path / "minicl_nginx_web_certificates.prom").write_text("kept\n")
    haproxy.write_expiry_metric({"name": "front"})
    assert not (tmp_path / "minicl_front_old_certificate.prom").exists()
    assert (tmp_path / "minicl_nginx_web_certificates.prom").read_text() == "kept\n"
    text = (tmp_path / "minicl_front_front_certificate.prom").read_text()
    assert f'minicl_front_certificate_expiry_timestamp_seconds{{app="front"}} {end.timestamp():.0f}' in text
    assert f'minicl_front_certificate_start_timestamp_seconds{{app="front"}} {start.timestamp():.0f}' in text
