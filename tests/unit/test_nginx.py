"""The nginx appliance's own parts: what it renders (and that nginx accepts it), the cluster.json
rules of its sites, its ports, and a converge planned and applied on folders of a test: files,
the atomic switch of a static site, a refused configuration put back."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from minicl import config, firewall
from minicl.appliances import ApplianceError, nginx
from minicl_lab import acmelab

from . import loader

EXAMPLE = json.loads((pathlib.Path(__file__).parents[2] / "cluster.json.example").read_text())
HOST_IPS = {"alpha": ["198.51.100.11", "2001:db8:100::11"], "beta": ["198.51.100.12"]}


def web_app(**sites):
    sites = sites or {
        "www": {"server_names": ["www.example.org", "example.org"], "root": "sites/www"},
        "shop": {"server_names": ["shop.example.org"], "proxy": ["alpha:8080", "beta:8081"]},
        "secure": {"server_names": ["secure.example.org"], "root": "sites/www",
                   "tls": {"certificate": "tls/s.crt", "key": "tls/s.key"}},
    }  # fmt: skip
    return {
        "name": "web",
        "type": "nginx",
        "hosts": ["watch"],
        "sites": sites,
        "addresses": ["198.51.100.20"],
    }


def test_the_config_repo_paths_an_app_reads_are_its_folders_and_tls_files_not_acme_ones():
    app = web_app()
    app["sites"]["auto"] = {"server_names": ["auto.example.org"], "root": "sites/auto", "tls": {"acme": True}}
    assert nginx.repo_paths(app) == (["sites/auto", "sites/www"], ["tls/s.crt", "tls/s.key"])


# -- rendering ------------------------------------------------------------------------------


def test_a_static_site_serves_its_published_folder_and_logs_to_syslog():
    text = nginx.render_conf(web_app(), HOST_IPS)
    www = text.split("# Site www.")[1]
    assert "    server_name www.example.org example.org;\n" in www
    assert "    root /var/www/minicl/web/www;\n" in www
    assert "    access_log syslog:server=unix:/dev/log,tag=nginx,nohostname combined;\n" in www
    assert "    error_log syslog:server=unix:/dev/log,tag=nginx,nohostname warn;\n" in www


def test_a_proxy_site_passes_to_the_hosts_addresses_with_the_host_header():
    shop = nginx.render_conf(web_app(), HOST_IPS).split("# Site shop.")[1].split("# Site")[0]
    assert (
        "upstream minicl_web_shop {\n    server 198.51.100.11:8080;\n    server 198.51.100.12:8081;\n" in shop
    )
    assert "proxy_pass http://minicl_web_shop;" in shop and "proxy_set_header Host $host;" in shop


def test_a_tls_site_listens_on_443_and_redirects_80():
    secure = nginx.render_conf(web_app(), HOST_IPS).split("# Site secure.")[1].split("# Site")[0]
    assert "return 301 https://$host$request_uri;" in secure
    assert "    listen 443 ssl;\n" in secure
    assert "ssl_certificate /etc/nginx/minicl-tls/web/secure.crt;" in secure
    assert "ssl_certificate_key /etc/nginx/minicl-tls/web/secure.key;" in secure


def test_an_acme_site_answers_the_challenge_on_80_and_gets_443_once_it_has_its_certificate():
    app = web_app(auto={"server_names": ["auto.example.org"], "root": "sites/www", "tls": {"acme": True}})
    auto = nginx.render_conf(app, HOST_IPS).split("# Site auto.")[1]
    port80, port443 = auto.split("server {")[1:]
    assert "location ^~ /.well-known/acme-challenge/ {\n        root /var/www/minicl-acme;" in port80
    assert "location / {\n        return 301 https://$host$request_uri;" in port80
    assert "listen 443 ssl;" in port443 and "ssl_certificate /etc/nginx/minicl-tls/web/auto.crt;" in port443
    waiting = nginx.render_conf(app, HOST_IPS, without_tls={"auto"}).split("# Site auto.")[1]
    assert "acme-challenge" in waiting and "listen 443" not in waiting


def test_on_several_hosts_a_challenge_file_this_host_lacks_is_asked_of_the_others_once():
    app = dict(acme_app(), peers={"beta": ["198.51.100.12"], "gamma": ["2001:db8::13"]})
    text = nginx.render_conf(app, HOST_IPS)
    assert (
        "upstream minicl_acme_web {\n    server 198.51.100.12:80;\n    server [2001:db8::13]:80;\n}" in text
    )
    auto = text.split("# Site auto.")[1].split("# Site")[0]
    assert "        try_files $uri @minicl_acme_peers;\n" in auto
    assert (
        "    location @minicl_acme_peers {\n        if ($http_x_minicl_acme_hop) {\n            return 404;\n"
        in auto
    )
    assert (
        "proxy_set_header X-Minicl-Acme-Hop 1;" in auto
        and "proxy_next_upstream error timeout http_404;" in auto
    )
    alone = nginx.render_conf(acme_app(), HOST_IPS)
    assert "minicl_acme_peers" not in alone and "upstream minicl_acme_web" not in alone


def test_unknown_names_get_no_answer_and_stub_status_is_on_loopback_only():
    text = nginx.render_conf(web_app(), HOST_IPS)
    assert (
        "listen 80 default_server;" in text and "ssl_reject_handshake on;" in text and "return 444;" in text
    )
    assert "    listen 127.0.0.1:8073;\n" in text and "stub_status;" in text
    assert 'ARGS="-nginx.scrape-uri=http://127.0.0.1:8073/stub_status' in nginx.render_exporter_defaults(
        web_app()
    )


def test_a_wildcard_name_is_probed_with_a_label_in_place():
    assert nginx.probe_name("*.example.org") == "minicl-check.example.org"
    assert nginx.probe_name("www.example.org") == "www.example.org"


def test_stub_status_is_read_into_figures():
    text = "Active connections: 3 \nserver accepts handled requests\n 10 9 31 \nReading: 0 Writing: 1 Waiting: 2 \n"
    assert nginx.parse_stub_status(text) == {"active": 3, "accepted": 10, "handled": 9, "requests": 31,
                                             "reading": 0, "writing": 1, "waiting": 2}  # fmt: skip
    with pytest.raises(ApplianceError, match="stub_status said something unexpected"):
        nginx.parse_stub_status("<html>404</html>")


def test_a_proxy_to_an_unknown_host_is_an_error():
    app = web_app(x={"server_names": ["x.example.org"], "proxy": ["nope:80"]})
    with pytest.raises(ApplianceError, match='host "nope" is not under "hosts"'):
        nginx.render_conf(app, HOST_IPS)


@pytest.mark.skipif(
    not shutil.which("nginx") or not shutil.which("openssl"), reason="needs nginx and openssl"
)
def test_nginx_accepts_what_is_rendered(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=secure.example.org", "-keyout", "s.key", "-out", "s.crt"],
                   cwd=tmp_path, check=True, capture_output=True)  # fmt: skip
    app = web_app()
    app["sites"]["auto"] = {"server_names": ["auto.example.org"], "root": "sites/www", "tls": {"acme": True}}
    app["peers"] = {"beta": ["198.51.100.12"]}
    text = nginx.render_conf(app, HOST_IPS, without_tls={"auto"})
    # and the same site once it has its certificate
    text += (
        nginx.render_conf(app, HOST_IPS)
        .split("# Site auto.")[1]
        .split("# Site")[0]
        .replace("auto.example.org", "auto2.example.org")
    )
    for site in ("secure", "auto"):
        text = text.replace(f"/etc/nginx/minicl-tls/web/{site}", str(tmp_path / "s"))
    (tmp_path / "site.conf").write_text(text)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/pid; error_log stderr; events {{}} http {{ include {tmp_path}/site.conf; }}\n"
    )
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert nginx.certificate_in(str(tmp_path / "s.crt")).days_left() < 1  # -days 1: less than a day left
    assert nginx.certificate_in(str(tmp_path / "s.key")) is None
    assert nginx.certificate_in(str(tmp_path / "none.crt")) is None


# -- cluster.json ---------------------------------------------------------------------------

REPO_FILES = ["cluster.json", "sites/www/index.html", "tls/s.crt", "tls/s.key"]


def problems_of(app, repo_files=REPO_FILES):
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["web"] = {k: v for k, v in app.items() if k not in ("name", "addresses")}
    data["acme"] = {"directory": "https://acme.example.org/dir"}
    return [str(p) for p in config.validate(data, repo_files=repo_files)]


def test_a_good_nginx_app_is_accepted():
    assert problems_of(dict(web_app(), public=True)) == []


@pytest.mark.parametrize(
    ("site", "expected"),
    [
        ({"server_names": ["a.example.org"], "root": "sites/www", "proxy": ["alpha:80"]},
         "apps.web.sites.x: give either root (static files) or proxy (backends), not both"),
        ({"server_names": ["a.example.org"]},
         "apps.web.sites.x: give either root (static files) or proxy (backends), not neither"),
        ({"server_names": ["a.example.org"], "proxy": ["nope:80"]},
         'apps.web.sites.x.proxy[0]: host "nope" is not under "hosts"'),
        ({"server_names": ["a.example.org"], "proxy": ["alpha"]},
         'apps.web.sites.x.proxy[0]: "alpha" is not "host:port" (a port 1-65535)'),
        ({"server_names": ["a.example.org"], "proxy": ["alpha:99999"]},
         'apps.web.sites.x.proxy[0]: "alpha:99999" is not "host:port" (a port 1-65535)'),
        ({"server_names": ["a.example.org"], "root": "sites/nothing"},
         'apps.web.sites.x.root: "sites/nothing" is not a folder of the config repo'),
        ({"server_names": ["a.example.org"], "root": "/srv/www"},
         'apps.web.sites.x.root: "/srv/www" must be a path inside the config repo (relative, no ..)'),
        ({"server_names": ["a.example.org"], "root": "sites/www",
          "tls": {"certificate": "tls/s.crt", "key": "tls/missing.key"}},
         'apps.web.sites.x.tls.key: "tls/missing.key" is not a file of the config repo'),
        ({"server_names": ["a.example.org"], "root": "sites/www", "tls": {"key": "tls/s.key"}},
         'apps.web.sites.x.tls: add certificate (files of the config repo), or use "acme": true'),
        ({"server_names": ["a.example.org"], "root": "sites/www",
          "tls": {"acme": True, "certificate": "tls/s.crt", "key": "tls/s.key"}},
         "apps.web.sites.x.tls: give either acme: true or a certificate and key, not both"),
        ({"server_names": ["*.example.org"], "root": "sites/www", "tls": {"acme": True}},
         'apps.web.sites.x.server_names[0]: "*.example.org": an ACME HTTP-01 challenge cannot prove a '
         "wildcard name; name each host name, or give a certificate and key"),
        ({"server_names": ["not a name"], "root": "sites/www"},
         'apps.web.sites.x.server_names[0]: "not a name" is not a DNS name (or *.name)'),
        ({"server_names": ["www.example.org"], "root": "sites/www"},
         'apps.web.sites.x.server_names[0]: "www.example.org" is also a name of site www'),
    ],
)  # fmt: skip
def test_bad_sites_are_refused_naming_the_field(site, expected):
    app = web_app()
    app["sites"]["x"] = site
    assert [p.split(": ", 1)[1] for p in problems_of(app)] == [expected]


def test_an_acme_site_needs_the_acme_section():
    data = json.loads(json.dumps(EXAMPLE))
    data.pop("acme", None)
    data["apps"]["web"] = {"type": "nginx", "hosts": ["watch", "beta"], "public": True, "sites": {
        "auto": {"server_names": ["auto.example.org"], "root": "sites/www", "tls": {"acme": True}}}}  # fmt: skip
    found = [str(p).split(": ", 1)[1] for p in config.validate(data, repo_files=REPO_FILES)]
    assert found == [
        "apps.web.sites.auto.tls.acme: the certificate comes from an ACME server: add an acme section "
        "with its directory"
    ]
    data["acme"] = {"directory": "https://acme.example.org/dir"}
    assert [str(p) for p in config.validate(data, repo_files=REPO_FILES)] == []


def test_an_nginx_app_needs_sites_and_keeps_no_backups():
    app = web_app()
    app["sites"] = {}
    app["backup"] = {"interval": "1d"}
    found = [p.split(": ", 1)[1] for p in problems_of(app)]
    assert "apps.web.backup: an nginx app keeps no data to back up: remove backup" in found
    assert any(p.startswith("apps.web.sites") for p in found), found


def test_sites_belong_to_nginx_apps_only():
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["cache"]["sites"] = {"www": {"server_names": ["a.example.org"], "root": "x"}}
    found = [str(p) for p in config.validate(data)]
    assert "cluster.json: apps.cache.sites: only a nginx app has sites (this one is redis)" in found


# -- ports ----------------------------------------------------------------------------------


def test_a_public_app_opens_80_and_443_to_the_world_and_its_exporter_to_the_cluster():
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["web"] = {"type": "nginx", "hosts": ["watch"], "public": True,
                           "sites": {"www": {"server_names": ["a.example.org"], "root": "x"}}}  # fmt: skip
    spec = firewall.host_spec(config.Cluster(data), "watch")
    assert "80" in spec.public_tcp and "443" in spec.public_tcp
    assert "9113" in spec.cluster_only_tcp and "80" not in spec.cluster_only_tcp
    data["apps"]["web"]["public"] = False
    spec = firewall.host_spec(config.Cluster(data), "watch")
    assert "80" not in spec.public_tcp and {"80", "443", "9113"} <= set(spec.cluster_only_tcp)


# -- plan and apply on a test's folders -------------------------------------------------------


@pytest.fixture
def host(tmp_path, monkeypatch):
    """nginx's folders under tmp_path, a checkout with a site and a certificate, and the
    service and ``nginx -t`` replaced (their calls recorded)."""
    checkout = tmp_path / "checkout"
    (checkout / "sites/www/css").mkdir(parents=True)
    (checkout / "sites/www/index.html").write_text("hello\n")
    (checkout / "sites/www/css/a.css").write_text("body {}\n")
    (checkout / "tls").mkdir()
    (checkout / "tls/s.crt").write_text("CERT\n")
    (checkout / "tls/s.key").write_text("SECRETKEY\n")
    (tmp_path / "sites-enabled").mkdir()
    (tmp_path / "sites-enabled/default").symlink_to("../sites-available/default")
    monkeypatch.setattr(nginx, "CONF_DIR", str(tmp_path / "conf.d"))
    monkeypatch.setattr(nginx, "TLS_DIR", str(tmp_path / "minicl-tls"))
    monkeypatch.setattr(nginx, "WWW_DIR", str(tmp_path / "www"))
    monkeypatch.setattr(nginx, "DEFAULT_SITE", str(tmp_path / "sites-enabled/default"))
    monkeypatch.setattr(nginx.metrics, "TEXTFILE_DIR", str(tmp_path / "textfile"))
    calls = []
    state = {"active": False, "test": (True, "")}
    monkeypatch.setattr(nginx, "unit_active", lambda unit: state["active"])
    monkeypatch.setattr(nginx, "unit_enabled", lambda unit: state["active"])
    monkeypatch.setattr(
        nginx, "systemctl", lambda *args, check=True: calls.append(args) or state.update(active=True)
    )
    monkeypatch.setattr(nginx, "nginx_test", lambda: calls.append(("nginx -t",)) or state["test"])
    return tmp_path, str(checkout), calls, state


def test_a_first_converge_writes_publishes_and_starts_then_nothing_changes(host):
    tmp_path, checkout, calls, _ = host
    app = web_app()
    todo = nginx.plan(app, HOST_IPS, checkout)
    assert sorted(todo.files) == sorted([nginx.conf_path(app), *nginx.tls_paths(app, "secure")])
    assert todo.secret == {nginx.tls_paths(app, "secure")[1]}
    assert todo.removed == [nginx.DEFAULT_SITE] and sorted(todo.trees) == ["secure", "www"]
    assert todo.start and todo.enable and not todo.reload
    nginx.apply_plan(app, todo)
    assert calls == [("nginx -t",), ("enable", "nginx"), ("start", "nginx")]
    assert (tmp_path / "www/web/www/css/a.css").read_text() == "body {}\n"
    assert os.readlink(tmp_path / "www/web/www").startswith(".releases/www-")
    key = pathlib.Path(nginx.tls_paths(app, "secure")[1])
    assert key.read_text() == "SECRETKEY\n" and key.stat().st_mode & 0o777 == 0o600
    assert not os.path.lexists(tmp_path / "sites-enabled/default")
    assert not nginx.plan(app, HOST_IPS, checkout)


def test_new_files_of_a_static_site_switch_the_link_without_a_reload(host):
    tmp_path, checkout, calls, _ = host
    app = web_app()
    nginx.apply_plan(app, nginx.plan(app, HOST_IPS, checkout))
    old = os.readlink(tmp_path / "www/web/www")
    pathlib.Path(checkout, "sites/www/index.html").write_text("new\n")
    todo = nginx.plan(app, HOST_IPS, checkout)
    assert not todo.files and not todo.reload and sorted(todo.trees) == ["secure", "www"]
    calls.clear()
    nginx.apply_plan(app, todo)
    assert calls == []
    assert os.readlink(tmp_path / "www/web/www") != old
    assert (tmp_path / "www/web/www/index.html").read_text() == "new\n"
    assert sorted(os.listdir(tmp_path / "www/web/.releases")) == sorted(
        os.path.basename(os.readlink(tmp_path / f"www/web/{s}")) for s in ("www", "secure")
    )  # the old copies are gone


def test_a_configuration_nginx_refuses_is_put_back(host):
    tmp_path, checkout, calls, state = host
    app = web_app()
    nginx.apply_plan(app, nginx.plan(app, HOST_IPS, checkout))
    conf = pathlib.Path(nginx.conf_path(app))
    before = conf.read_text()
    pathlib.Path(checkout, "tls/s.key").write_text("OTHERKEY\n")
    app["sites"]["extra"] = {"server_names": ["extra.example.org"], "root": "sites/www"}
    state["test"] = (False, '[emerg] SSL_CTX_use_PrivateKey("x") failed (key values mismatch)')
    todo = nginx.plan(app, HOST_IPS, checkout)
    assert todo.reload
    calls.clear()
    with pytest.raises(ApplianceError, match="nginx -t refused the new configuration.*key values mismatch"):
        nginx.apply_plan(app, todo)
    assert calls == [("nginx -t",)]  # no reload
    assert conf.read_text() == before
    assert pathlib.Path(nginx.tls_paths(app, "secure")[1]).read_text() == "SECRETKEY\n"
    assert not os.path.lexists(tmp_path / "www/web/extra")


def test_a_failed_reload_puts_the_files_back_so_that_the_next_run_tries_again(host, monkeypatch):
    _, checkout, _, state = host
    app = web_app()
    nginx.apply_plan(app, nginx.plan(app, HOST_IPS, checkout))
    conf = pathlib.Path(nginx.conf_path(app))
    before = conf.read_text()
    app["sites"]["extra"] = {"server_names": ["extra.example.org"], "root": "sites/www"}

    def failing(*args, check=True):
        if args[0] == "reload":
            raise ApplianceError("systemctl reload nginx: Job for nginx.service failed")

    monkeypatch.setattr(nginx, "systemctl", failing)
    with pytest.raises(ApplianceError, match="Job for nginx.service failed"):
        nginx.apply_plan(app, nginx.plan(app, HOST_IPS, checkout))
    assert conf.read_text() == before
    assert nginx.plan(app, HOST_IPS, checkout).reload  # the next run reloads


def test_a_site_removed_takes_its_files_away(host):
    tmp_path, checkout, _, _ = host
    app = web_app()
    nginx.apply_plan(app, nginx.plan(app, HOST_IPS, checkout))
    del app["sites"]["secure"]
    todo = nginx.plan(app, HOST_IPS, checkout)
    assert sorted(todo.removed) == sorted(nginx.tls_paths(app, "secure")) and todo.reload
    nginx.apply_plan(app, todo)
    assert not os.path.lexists(tmp_path / "www/web/secure")
    assert not nginx.plan(app, HOST_IPS, checkout)


ACME_SETTINGS = {"directory": "https://acme.example.org/dir", "email": "a@example.org", "ca": None,
                 "ca_text": None, "renew_before": 30 * 86400}  # fmt: skip


@pytest.fixture
def certbot(host, monkeypatch):
    """certbot replaced: it "obtains" a certificate valid ``days["next"]`` days into acme.LIVE_DIR
    (under the test's folder); its calls recorded."""
    tmp_path = host[0]
    monkeypatch.setattr(nginx.acme, "LIVE_DIR", str(tmp_path / "live"))
    monkeypatch.setattr(nginx, "ACME_WEBROOT", str(tmp_path / "acme-webroot"))
    runs = {"calls": [], "next": 90}

    def obtain(name, domains, settings, challenge):
        runs["calls"].append((name, domains, challenge))
        chain, key = acmelab.self_signed(domains, runs["next"], runs["next"] + 1)
        for path, text in zip(nginx.acme.live_paths(name), (chain, key), strict=True):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pathlib.Path(path).write_text(text)

    monkeypatch.setattr(nginx.acme, "obtain", obtain)
    return runs


def acme_app():
    return web_app(auto={"server_names": ["auto.example.org"], "root": "sites/www", "tls": {"acme": True}})


def test_an_acme_site_gets_its_certificate_then_https_and_renews_it_when_due(host, certbot):
    tmp_path, checkout, calls, _ = host
    app = acme_app()
    todo = nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS)
    assert todo.certificates == {"auto": "no certificate yet"}
    assert "listen 443" not in todo.files[nginx.conf_path(app)][0].split("# Site auto.")[1].split("# Site")[0]
    nginx.converge(app, HOST_IPS, checkout, ACME_SETTINGS, todo)
    assert certbot["calls"] == [("web.auto", ["auto.example.org"],
                                 ["--webroot", "--webroot-path", str(tmp_path / "acme-webroot")])]  # fmt: skip
    # nginx ran with port 80 for the challenge, then was reloaded with the certificate
    assert calls == [
        ("nginx -t",),
        ("enable", "nginx"),
        ("start", "nginx"),
        ("nginx -t",),
        ("reload", "nginx"),
    ]
    crt, key = nginx.tls_paths(app, "auto")
    assert pathlib.Path(crt).read_text() == pathlib.Path(nginx.acme.live_paths("web.auto")[0]).read_text()
    assert pathlib.Path(key).stat().st_mode & 0o777 == 0o600
    assert "listen 443" in pathlib.Path(nginx.conf_path(app)).read_text().split("# Site auto.")[1]
    assert not nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS)
    # Expiring within renew_before: renewed, and nginx reloaded with the new one.
    chain, key_text = acmelab.self_signed(["auto.example.org"], 10, 90)
    pathlib.Path(nginx.acme.live_paths("web.auto")[0]).write_text(chain)
    pathlib.Path(nginx.acme.live_paths("web.auto")[1]).write_text(key_text)
    nginx.apply_plan(app, nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS))
    assert int(nginx.certificate_in(crt).days_left()) == 9
    calls[:] = []
    todo = nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS)
    assert list(todo.certificates) == ["auto"] and "expires in 10.0 days" in todo.certificates["auto"]
    nginx.converge(app, HOST_IPS, checkout, ACME_SETTINGS, todo)
    assert calls == [("nginx -t",), ("reload", "nginx")] and len(certbot["calls"]) == 2
    assert int(nginx.certificate_in(crt).days_left()) == 89
    assert not nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS)


def test_an_acme_site_without_the_acme_section_is_an_error_naming_it(host):
    _, checkout, _, _ = host
    with pytest.raises(
        ApplianceError, match="apps.web.sites.auto.tls.acme: cluster.json has no acme section"
    ):
        nginx.plan(acme_app(), HOST_IPS, checkout, None)


def test_an_acme_failure_on_a_private_app_says_port_80_is_closed_to_the_outside(host, monkeypatch):
    _, checkout, _, _ = host

    def refused(*args):
        raise nginx.acme.AcmeError("certbot could not get the certificate web.auto: Timeout during connect")

    monkeypatch.setattr(nginx.acme, "obtain", refused)
    monkeypatch.setattr(nginx, "ACME_WEBROOT", str(host[0] / "acme-webroot"))
    monkeypatch.setattr(nginx.acme, "LIVE_DIR", str(host[0] / "live"))
    app = acme_app()
    with pytest.raises(
        nginx.acme.AcmeError, match="Timeout during connect; app web is not public.*public: true"
    ):
        nginx.converge(
            app, HOST_IPS, checkout, ACME_SETTINGS, nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS)
        )
    app["public"] = True
    with pytest.raises(nginx.acme.AcmeError, match="Timeout during connect$"):
        nginx.converge(
            app, HOST_IPS, checkout, ACME_SETTINGS, nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS)
        )


def test_the_certificates_expiry_is_written_for_the_monitor(host, certbot):
    tmp_path, checkout, _, _ = host
    (tmp_path / "textfile").mkdir()
    app = acme_app()
    nginx.converge(app, HOST_IPS, checkout, ACME_SETTINGS, nginx.plan(app, HOST_IPS, checkout, ACME_SETTINGS))
    nginx.write_expiry_metrics(app)
    text = (tmp_path / "textfile/minicl_nginx_web_certificates.prom").read_text()
    assert 'minicl_nginx_certificate_expiry_timestamp_seconds{app="web",site="auto",source="acme"} ' in text
    assert 'site="secure"' not in text  # "CERT\n" in the checkout is no certificate
    # The app the host ran before (a host runs one nginx app) leaves no series behind.
    (tmp_path / "textfile/minicl_nginx_old_certificates.prom").write_text(text)
    (tmp_path / "textfile/minicl_front_old_certificate.prom").write_text("kept\n")
    nginx.write_expiry_metrics(app)
    assert not (tmp_path / "textfile/minicl_nginx_old_certificates.prom").exists()
    assert (tmp_path / "textfile/minicl_front_old_certificate.prom").exists()
    assert (tmp_path / "textfile/minicl_nginx_web_certificates.prom").read_text() == text
    del app["sites"]["auto"]
    nginx.write_expiry_metrics(app)
    assert not (tmp_path / "textfile/minicl_nginx_web_certificates.prom").exists()


# -- the state, in both modes -----------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["test", "real"])
def testmode(request):
    return request.param


def nginx_state(host, testmode):
    _, checkout, _, _ = host
    pillar = {"minicl": {"apps": {"web": web_app()}, "checkout": checkout,
                         "cluster": {"hosts": {h: {"ip": ips} for h, ips in HOST_IPS.items()}}}}  # fmt: skip
    return loader.load_state("minicl_nginx", testmode, pillar)


def test_the_state_converges_and_never_shows_the_key(host, testmode):
    tmp_path, _, calls, _ = host
    ret = nginx_state(host, testmode).running("web")
    shown = json.dumps(ret)
    assert "SECRETKEY" not in shown
    key = nginx.tls_paths(web_app(), "secure")[1]
    assert ret["changes"][key] == "written, mode 0600 (a key: content hidden)"
    assert "+    root " in ret["changes"][nginx.conf_path(web_app())]
    assert ret["changes"][nginx.DEFAULT_SITE] == "removed (Debian's default site)"
    assert ret["changes"]["service"] == "nginx running and started at boot"
    if testmode:
        assert ret["result"] is None and calls == [] and not os.path.exists(key)
    else:
        assert ret["result"] is True and ("start", "nginx") in calls
        again = nginx_state(host, False).running("web")
        assert again == {"name": "web", "result": True, "changes": {},
                         "comment": "nginx serves app web as configured"}  # fmt: skip


def test_the_state_obtains_an_acme_certificate_and_says_so_in_both_modes(host, certbot, testmode):
    _, checkout, calls, _ = host
    pillar = {"minicl": {"apps": {"web": acme_app()}, "checkout": checkout, "acme": ACME_SETTINGS,
                         "cluster": {"hosts": {h: {"ip": ips} for h, ips in HOST_IPS.items()}}}}  # fmt: skip
    ret = loader.load_state("minicl_nginx", testmode, pillar).running("web")
    assert ret["changes"]["certificate web.auto"] == "obtained from the ACME server (no certificate yet)"
    if testmode:
        assert ret["result"] is None and certbot["calls"] == [] and calls == []
    else:
        assert ret["result"] is True and [c[0] for c in certbot["calls"]] == ["web.auto"]
        # what the run wrote after certbot: the certificate, its key (hidden), the HTTPS server
        crt, key = nginx.tls_paths(acme_app(), "auto")
        assert ret["changes"][key] == "written, mode 0600 (a key: content hidden)" and crt in ret["changes"]
        assert "+    ssl_certificate " + crt in ret["changes"][nginx.conf_path(acme_app())]
        again = loader.load_state("minicl_nginx", False, pillar).running("web")
        assert again["changes"] == {} and again["result"] is True
        assert "PRIVATE KEY" not in json.dumps(ret) + json.dumps(again)


def test_the_state_fails_with_nginx_s_message(host, testmode):
    _, _, _, state = host
    state["test"] = (False, "[emerg] unknown directive")
    ret = nginx_state(host, testmode).running("web")
    if testmode:
        assert ret["result"] is None
    else:
        assert ret["result"] is False
        assert (
            "nginx -t refused the new configuration, nginx keeps the running one: [emerg]" in ret["comment"]
        )


# -- alerts ---------------------------------------------------------------------------------


def rules_of_a_web_app(tmp_path, alert):
    """The monitor's rules with an nginx app (also written to tmp_path/rules.yml), and ``alert``."""
    import yaml

    from minicl import monitor

    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["web"] = {"type": "nginx", "hosts": ["watch"],
                           "sites": {"www": {"server_names": ["a.example.org"], "root": "x"}}}  # fmt: skip
    rules = monitor.render_rules(config.Cluster(data))
    (tmp_path / "rules.yml").write_text(rules)
    return rules, next(r for g in yaml.safe_load(rules)["groups"] for r in g["rules"] if r["alert"] == alert)


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package")
def test_dropped_connections_alert_and_nginx_down_is_app_down(tmp_path):
    import yaml

    rules, rule = rules_of_a_web_app(tmp_path, "NginxConnectionsDropped")
    labels = {"job": "nginx", "instance": "watch", "app": "web"}
    filled = {k: v.replace("{{ $labels.instance }}", "watch").replace("{{ $labels.app }}", "web")
              for k, v in rule["annotations"].items()}  # fmt: skip
    series = '{job="nginx",instance="watch",app="web"}'
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f"nginx_connections_accepted{series}", "values": "0+10x20"},
            {"series": f"nginx_connections_handled{series}", "values": "0+10x5 50+8x15"},
            {"series": f"nginx_up{series}", "values": "1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "NginxConnectionsDropped", "exp_alerts": []},
            {"eval_time": "18m", "alertname": "NginxConnectionsDropped",
             "exp_alerts": [{"exp_labels": {"severity": "warning", **labels}, "exp_annotations": filled}]},
            {"eval_time": "18m", "alertname": "AppDown", "exp_alerts": []},
        ],
    }]}  # fmt: skip
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nginx_up|" in rules or "|nginx_up" in rules  # nginx down is AppDown


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package")
def test_a_certificate_expiring_within_14_days_or_a_sixth_of_its_lifetime_alerts_saying_what_to_do(tmp_path):
    import yaml

    _, rule = rules_of_a_web_app(tmp_path, "NginxCertificateExpiring")
    day, hour = 86400, 3600
    # At time 0 the acme site's 90-day certificate has 20 days left, the file site's 15: each is
    # below the threshold once it is within 14 days (after 6 and 1 days; evaluated hourly). The
    # short site's one-day certificate has 20 hours left: it is expiring within 4 hours of its end.
    labels = '{{instance="watch",app="web",site="{}",source="{}"}}'
    fired = '{{app="web",instance="watch",site="{}",source="{}"}}'
    certificates = {
        ("auto", "acme"): (-70 * day, 20 * day),
        ("www", "file"): (-75 * day, 15 * day),
        ("short", "acme"): (-4 * hour, 20 * hour),
    }
    input_series = []
    for (site, source), (start, expiry) in certificates.items():
        input_series += [
            {
                "series": "minicl_nginx_certificate_start_timestamp_seconds" + labels.format(site, source),
                "values": f"{start}x200",
            },
            {
                "series": "minicl_nginx_certificate_expiry_timestamp_seconds" + labels.format(site, source),
                "values": f"{expiry}x200",
            },
        ]
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1h", "tests": [{
        "interval": "1h",
        "input_series": input_series,
        "alert_rule_test": [{"eval_time": "12h", "alertname": "NginxCertificateExpiring", "exp_alerts": []}],
        "promql_expr_test": [
            {"expr": rule["expr"], "eval_time": "17h",
             "exp_samples": [{"labels": fired.format("short", "acme"), "value": 3 * hour}]},
            {"expr": rule["expr"], "eval_time": "30h",
             "exp_samples": [{"labels": fired.format("short", "acme"), "value": -10 * hour},
                             {"labels": fired.format("www", "file"), "value": 15 * day - 30 * hour}]},
            {"expr": rule["expr"], "eval_time": "150h",
             "exp_samples": [{"labels": fired.format("auto", "acme"), "value": 20 * day - 150 * hour},
                             {"labels": fired.format("short", "acme"), "value": -130 * hour},
                             {"labels": fired.format("www", "file"), "value": 15 * day - 150 * hour}]},
        ],
    }]}  # fmt: skip
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert '{{ if eq $labels.source "acme" }}minicl renews it' in rule["annotations"]["description"]


def test_under_a_master_the_repo_files_come_from_its_file_server_and_nothing_stale_stays(tmp_path):
    state = loader.load_state(
        "minicl_nginx", False, {"minicl": {"checkout": "/var/lib/minicl/checkouts/abc"}}
    )
    state.__opts__.update(file_client="remote", cachedir=str(tmp_path))
    cached = tmp_path / "files" / "base"
    served = {"sites/www/index.html": "new\n", "tls/s.crt": "CERT\n", "tls/s.key": "KEY\n"}
    asked = []

    def fetch(url, saltenv):
        asked.append((url, saltenv))
        rel, found = url.removeprefix("salt://"), False
        for path, text in served.items():
            if path == rel or path.startswith(rel + "/"):
                (cached / path).parent.mkdir(parents=True, exist_ok=True)
                (cached / path).write_text(text)
                found = str(cached / path)
        return found

    state.__salt__ = {"cp.cache_dir": fetch, "cp.cache_file": fetch}
    (cached / "sites/www").mkdir(parents=True)
    (cached / "sites/www/gone.html").write_text("removed from the repo\n")
    assert state._checkout(web_app()) == str(cached)
    assert asked == [("salt://sites/www", "base"), ("salt://tls/s.crt", "base"), ("salt://tls/s.key", "base")]
    assert sorted(p.name for p in (cached / "sites/www").iterdir()) == ["index.html"]
    assert (cached / "tls/s.key").stat().st_mode & 0o777 == 0o600
    state.__opts__["file_client"] = "local"
    assert state._checkout(web_app()) == "/var/lib/minicl/checkouts/abc"  # masterless: the pillar's
