"""The nginx appliance on systemd test hosts: a web host serving a static site from the config
repo, a proxy site to an nginx app on a backend host, a TLS site with a certificate from a
throwaway CA, and a TLS site whose certificate comes from an ACME server (Debian's pebble, on the
client), seen from a client outside the cluster; renewal when due; a download across a reload; a
broken configuration (a key that does not match its certificate) that never replaces the running
one; the verbs, the exporter, idempotence and no key in any output."""

import hashlib
import json
import subprocess

import pytest

from minicl_lab import acmelab
from minicl_lab.testhosts import GitServer

from .conftest import bootstrap_all, changed_states, cluster_config, dump, salt_call, wait_for

WEB = ["203.0.113.100/24"]
BACKEND = ["203.0.113.101/24"]
WEB2 = ["203.0.113.102/24"]  # the web app's second host, installed after the others
CLIENT = ["203.0.113.109/24"]
GIT = ["203.0.113.119/24"]
WEB_IP, BACKEND_IP, CLIENT_IP, WEB2_IP = (x[0].split("/")[0] for x in (WEB, BACKEND, CLIENT, WEB2))
STATE = "minicl_nginx_|-minicl-nginx-web_|-web_|-running"
ACME_DIRECTORY = f"https://{CLIENT_IP}:{acmelab.DIRECTORY_PORT}/dir"  # pebble on the client
BIG = 8 * 2**20  # the download that spans a reload: more than the sockets' buffers hold
# A client that reads slowly (a small receive buffer, 1 KiB at a time) until /root/go exists.
SLOW_CLIENT = """\
import hashlib, http.client, os, socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
sock.connect((sys.argv[1], 80))
conn = http.client.HTTPConnection(sys.argv[2])
conn.sock = sock
conn.request("GET", sys.argv[3])
response = conn.getresponse()
digest, size = hashlib.sha256(), 0
while chunk := response.read(1024):
    digest.update(chunk)
    size += len(chunk)
    if size == 1024:
        open("/root/started", "w").close()
    if not os.path.exists("/root/go"):
        time.sleep(0.02)
print(response.status, size, digest.hexdigest())
"""


def entry(addresses):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}


def config(**web_sites):
    data = cluster_config({"web": entry(WEB), "backend": entry(BACKEND), "web2": entry(WEB2)})
    data["acme"] = {"directory": ACME_DIRECTORY, "ca": "acme-ca.pem"}
    sites = {
        "www": {"server_names": ["www.example.test"], "root": "sites/www"},
        "shop": {"server_names": ["shop.example.test"], "proxy": ["backend:80"]},
        "secure": {
            "server_names": ["secure.example.test"],
            "root": "sites/secure",
            "tls": {"certificate": "tls/secure.crt", "key": "tls/secure.key"},
        },
        "auto": {"server_names": ["auto.example.test"], "root": "sites/secure", "tls": {"acme": True}},
    }
    sites.update(web_sites)
    data["apps"] = {
        "web": {"type": "nginx", "hosts": ["web", "web2"], "public": True, "sites": sites},
        # The backend answers the proxied name only: the page proves the Host header.
        "api": {"type": "nginx", "hosts": ["backend"],
                "sites": {"api": {"server_names": ["shop.example.test"], "root": "sites/api"}}},
    }  # fmt: skip
    return data


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a certificate for secure.example.test, and a key that does not match it."""
    folder = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-subj", "/CN=minicl test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
            "/CN=secure.example.test", "-keyout", "secure.key", "-out", "secure.csr", cwd=folder)  # fmt: skip
    (folder / "ext").write_text("subjectAltName=DNS:secure.example.test\n")
    openssl("x509", "-req", "-in", "secure.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-extfile", "ext", "-out", "secure.crt", cwd=folder)  # fmt: skip
    openssl(
        "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key", cwd=folder
    )
    return {name: (folder / name).read_text() for name in ("ca.crt", "secure.crt", "secure.key", "other.key")}


@pytest.fixture(scope="module")
def git_server(lab, deploy_key):
    return GitServer(lab.add_host("git", GIT), deploy_key[1])


@pytest.fixture(scope="module")
def big():
    # Text (the config repo's files are written as text), not compressible by nginx (no gzip here).
    return hashlib.sha256(b"seed").hexdigest() * (BIG // 64)


@pytest.fixture(scope="module")
def hosts(lab, git_server, deploy_key, pki, big):
    web = lab.add_host("web", WEB)
    backend = lab.add_host("backend", BACKEND)
    client = lab.add_host("client", CLIENT)
    client.write("/root/ca.crt", pki["ca.crt"])
    acme_ca = acmelab.start_pebble(client, {"auto.example.test": WEB_IP})
    git_server.commit(
        {
            "cluster.json": dump(config()),
            "sites/www/index.html": "<h1>static www</h1>\n",
            "sites/www/big.txt": big,
            "sites/secure/index.html": "<h1>secure page</h1>\n",
            "sites/api/index.html": "<h1>the backend's page</h1>\n",
            "tls/secure.crt": pki["secure.crt"],
            "tls/secure.key": pki["secure.key"],
            "acme-ca.pem": acme_ca,
        },
        "web sites",
    )
    bootstrap_all({"web": web, "backend": backend}, git_server, deploy_key)
    client.write("/root/pebble-root.pem", acmelab.pebble_root(client))
    return web, backend, client


@pytest.fixture(scope="module")
def web2(lab, hosts, git_server, deploy_key):
    """The web app's second host. pebble resolves the ACME site's name to the first: web2's
    challenge reaches web, which asks web2 for the file."""
    host = lab.add_host("web2", WEB2)
    bootstrap_all({"web2": host}, git_server, deploy_key)
    return host


def curl(client, url, *args, check=False):
    name = url.split("/")[2]
    port = 443 if url.startswith("https") else 80
    return client.run(
        ["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:{WEB_IP}", *args, url], check=check
    )


def test_the_client_gets_the_static_and_the_proxied_pages(hosts):
    web, backend, client = hosts
    assert curl(client, "http://www.example.test/").stdout == "<h1>static www</h1>\n"
    assert curl(client, "http://shop.example.test/").stdout == "<h1>the backend's page</h1>\n"
    # A name no site has gets no answer (Debian's default site is gone).
    unknown = curl(client, "http://other.example.test/")
    assert unknown.returncode == 52 and unknown.stdout == "", unknown  # empty reply: 444
    assert not web.exists("/etc/nginx/sites-enabled/default")
    # The backend app is not public: the web host reaches it, the client does not.
    assert web.can_connect(BACKEND_IP, 80)
    assert not client.can_connect(BACKEND_IP, 80)
    assert client.can_connect(WEB_IP, 80)
    # Access logs go to syslog (the journal here), tagged nginx.
    journal = web.run(["journalctl", "--no-pager", "-q", "-t", "nginx"], check=False).stdout
    assert '"GET / HTTP/1.1" 200' in journal, journal[-2000:]


def test_the_tls_site_with_its_certificate(hosts, pki):
    web, _, client = hosts
    found = curl(client, "https://secure.example.test/", "--cacert", "/root/ca.crt")
    assert found.returncode == 0 and found.stdout == "<h1>secure page</h1>\n", found
    redirect = curl(
        client, "http://secure.example.test/x?y=1", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"
    )
    assert redirect.stdout == "301 https://secure.example.test/x?y=1"
    key = "/etc/nginx/minicl-tls/web/secure.key"
    assert web.run(["stat", "-c", "%a %U", key]).stdout.strip() == "600 root"
    assert web.read(key) == pki["secure.key"]


def test_the_acme_site_has_its_certificate_from_the_acme_server_and_renews_it_when_due(hosts, web2):
    web, _, client = hosts
    url = "https://auto.example.test/"
    found = curl(client, url, "--cacert", "/root/pebble-root.pem")
    assert found.returncode == 0 and found.stdout == "<h1>secure page</h1>\n", found
    # web2's own certificate, its challenge answered through web.
    on_web2 = client.run(["curl", "-sS", "--max-time", "10", "--cacert", "/root/pebble-root.pem", "--resolve",
                          f"auto.example.test:443:{WEB2_IP}", url], check=False)  # fmt: skip
    assert on_web2.returncode == 0 and on_web2.stdout == "<h1>secure page</h1>\n", on_web2
    assert acmelab.served_serial(client, WEB2_IP, "auto.example.test") not in (
        acmelab.served_serial(client, WEB_IP, "auto.example.test"),
        "",
    )
    # A file only web2 has is fetched through web; asked as a peer would ask, web does not pass it on.
    web2.write("/var/www/minicl-acme/.well-known/acme-challenge/probe", "from web2\n")

    def challenge(*headers):
        args = [x for h in headers for x in ("-H", h)]
        return curl(client, "http://auto.example.test/.well-known/acme-challenge/probe", *args,
                    "-w", " %{http_code}").stdout  # fmt: skip

    assert challenge() == "from web2\n 200"
    assert challenge("X-Minicl-Acme-Hop: 1").endswith(" 404")
    refused = curl(client, url, "--cacert", "/root/ca.crt")  # the other CA: the check above did verify
    assert refused.returncode == 60, refused
    redirect = curl(
        client, "http://auto.example.test/a", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"
    )
    assert redirect.stdout == "301 https://auto.example.test/a"
    # Only the challenge's path is served on port 80: from certbot's folder, no redirect.
    challenge = curl(client, "http://auto.example.test/.well-known/acme-challenge/none", "-o", "/dev/null",
                     "-w", "%{http_code}")  # fmt: skip
    assert challenge.stdout == "404"
    key = "/etc/nginx/minicl-tls/web/auto.key"
    assert web.run(["stat", "-c", "%a %U", key]).stdout.strip() == "600 root"
    assert web.run("systemctl is-enabled certbot.timer", check=False).stdout.strip() == "disabled"
    old = acmelab.served_serial(client, WEB_IP, "auto.example.test")
    assert old.startswith("serial="), old
    # With 10 days left of 90, it is due (acme.renew_before, 30 days).
    acmelab.age_certificate(web, "web.auto", ["auto.example.test"], 10, 90)
    code, data, result = salt_call(web, "state.apply")
    assert code == 0, result.stdout + result.stderr
    changes = changed_states(data)[STATE]
    assert "it expires in 10.0 days (renewed 30.0 days before)" in changes["certificate web.auto"], changes
    assert key in changes, changes
    assert changes["service"] == "nginx reloaded (nginx -t first)", changes
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    new = acmelab.served_serial(client, WEB_IP, "auto.example.test")
    assert new.startswith("serial=") and new != old
    assert curl(client, url, "--cacert", "/root/pebble-root.pem").returncode == 0
    code, data, result = salt_call(web, "state.apply")
    assert code == 0 and STATE not in changed_states(data), result.stdout  # not renewed again
    # The monitor learns when each certificate expires (the node exporter's textfile collector).
    metrics = web.run(["curl", "-sf", "http://127.0.0.1:9100/metrics"]).stdout
    assert 'minicl_nginx_certificate_expiry_timestamp_seconds{app="web",site="auto",source="acme"}' in metrics
    assert (
        'minicl_nginx_certificate_expiry_timestamp_seconds{app="web",site="secure",source="file"}' in metrics
    )


def verb(host, name, app):
    code, data, result = salt_call(host, f"minicl_app.{name}", app)
    return code, (data or {}).get("local"), result


def test_the_verbs(hosts):
    web, backend, _ = hosts
    code, report, result = verb(web, "check_health", "web")
    assert code == 0 and report["ok"], result.stdout + result.stderr
    assert "ok   nginx -t accepts the configuration" in report["report"]
    assert report["sites"]["shop"]["status"] == 200
    assert 28 <= report["sites"]["secure"]["certificate_days_left"] <= 30
    code, report, result = verb(web, "test", "web")
    assert code == 0 and report["ok"], result.stdout
    assert (
        "ok   http://secure.example.test/ redirects to https (301 https://secure.example.test/)"
        in report["report"]
    )
    code, report, result = verb(web, "monitor", "web")
    assert code == 0 and report["requests"] >= 1 and report["active"] >= 1, result.stdout
    code, report, _ = verb(web, "backup", "web")
    assert code != 0 and "backup is not provided for nginx apps" in report["report"][0]
    # The backend down: its proxy site fails the web host's check (502), which says so.
    backend.systemctl("stop", "nginx")
    try:
        code, report, _ = verb(web, "check_health", "web")
        assert code != 0 and "FAIL site shop (shop.example.test) answers 502" in report["report"], report
    finally:
        backend.systemctl("start", "nginx")


def test_the_exporter_reads_nginx(hosts):
    web, backend, client = hosts
    metrics = wait_for(
        "the exporter", lambda: web.run(["curl", "-sf", "http://127.0.0.1:9113/metrics"], check=False).stdout
    )
    assert "nginx_up 1" in metrics and "nginx_http_requests_total" in metrics
    scraped = backend.run(["curl", "-sf", f"http://{WEB_IP}:9113/metrics"], check=False).stdout
    assert "nginx_up 1" in scraped  # a cluster host (the monitor's place) scrapes it
    assert not client.can_connect(WEB_IP, 9113)  # the outside does not
    assert not client.can_connect(WEB_IP, 8073)  # stub_status: loopback only


def test_a_reload_keeps_a_download_and_a_refused_configuration_keeps_the_running_one(
    hosts, git_server, pki, big
):
    web, _, client = hosts
    client.write("/root/slow.py", SLOW_CLIENT)
    download = client.spawn(["python3", "/root/slow.py", WEB_IP, "www.example.test", "/big.txt"])
    try:
        wait_for("the download to start", lambda: client.exists("/root/started"), timeout=10)
        extra = {"server_names": ["extra.example.test"], "root": "sites/www"}
        git_server.commit({"cluster.json": dump(config(extra=extra))}, "an extra site")
        code, data, result = salt_call(web, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert "nginx reloaded (nginx -t first)" in json.dumps(changed_states(data))
        assert curl(client, "http://extra.example.test/").stdout == "<h1>static www</h1>\n"
        assert download.poll() is None, f"the download ended before the reload: {download.communicate()}"
        # nginx's old worker still serves it: it shuts down once the download is done.
        workers = web.run(["ps", "-C", "nginx", "-o", "args="]).stdout
        assert "nginx: worker process is shutting down" in workers, workers

        # A key that does not match its certificate: nginx -t refuses, the old files stay.
        git_server.commit({"tls/secure.key": pki["other.key"]}, "a wrong key")
        code, data, result = salt_call(web, "state.apply")
        assert code != 0
        failed = [s for s in data["local"].values() if not s["result"]]
        assert len(failed) == 1 and "nginx -t refused the new configuration" in failed[0]["comment"], failed
        assert "key values mismatch" in failed[0]["comment"]
        assert pki["other.key"] not in result.stdout + result.stderr
        assert web.read("/etc/nginx/minicl-tls/web/secure.key") == pki["secure.key"]
        found = curl(client, "https://secure.example.test/", "--cacert", "/root/ca.crt")
        assert found.stdout == "<h1>secure page</h1>\n", found  # still served, with the old key
        assert web.run(["nginx", "-t", "-q"], check=False).returncode == 0
        web.systemctl("reload", "nginx")  # even a reload by hand reads the old, good files
        assert curl(client, "https://secure.example.test/", "--cacert", "/root/ca.crt").returncode == 0

        client.write("/root/go", "")
        out, err = download.communicate(timeout=60)
        assert download.returncode == 0, err
        assert out.split() == ["200", str(len(big)), hashlib.sha256(big.encode()).hexdigest()], out
    finally:
        if download.poll() is None:
            download.kill()
        git_server.commit({"tls/secure.key": pki["secure.key"]}, "the right key back")
    code, data, result = salt_call(web, "state.apply")
    assert code == 0, result.stdout + result.stderr


def test_second_runs_change_nothing_and_show_no_key(hosts, web2, pki):
    web, backend, _ = hosts
    secret = pki["secure.key"].splitlines()[1]  # a line of the key's body
    for host in (backend, web2):
        salt_call(host, "state.apply", check=True)  # the commits since its last run
    for host in (web, backend, web2):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}
        assert secret not in result.stdout + result.stderr
    code, data, result = salt_call(web, "state.apply", "test=True")
    assert code == 0 and changed_states(data) == {}, result.stdout
    assert secret not in web.read("/var/log/salt/minion")
    assert secret not in web.run("journalctl --no-pager -q", check=False).stdout
    found = web.run(["grep", "-rlsF", secret, "/etc", "/var/log", "/var/www", "/tmp", "/root"], check=False)
    assert found.stdout.split() == ["/etc/nginx/minicl-tls/web/secure.key"], found.stdout


def test_after_a_reboot_the_sites_answer_and_nothing_changes(hosts):
    web, _, client = hosts
    web.reboot()
    assert wait_for("nginx active", lambda: web.unit_state("nginx") == "active", timeout=60)
    assert curl(client, "http://www.example.test/").stdout == "<h1>static www</h1>\n"
    assert curl(client, "https://secure.example.test/", "--cacert", "/root/ca.crt").returncode == 0
    code, data, result = salt_call(web, "state.apply")
    assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr
