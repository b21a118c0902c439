"""Benchmark (not a test): the front (two haproxy proxies with keepalived, certificate from a
pebble ACME server) on systemd test hosts, as in tests/integration/test_front.py, in front of
Debian's nginx on a backend host.

Prints:
- fail-over: a client requests https://www.front.test/ through the floating address every 50 ms
  (each with a 1 s timeout) while the proxy holding the address is killed (its host's PID 1: a
  power cut); the requests that failed, and the time from the first failure to the next success;
  the same for ``minicl_app.failover`` (a planned move);
- requests per second through the front (HTTPS, keep-alive connections) against nginx on the
  backend host directly (HTTP, keep-alive), and through the front with a new TLS connection per
  request; a Python client with ``--clients`` threads on the outside host, all on the same
  2-core machine, so the figures compare, they do not measure a real network.

    sudo .venv/bin/python bench/front.py [--seconds 5] [--clients 8]
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicl_lab import acmelab  # noqa: E402
from minicl_lab.testhosts import GitServer, Lab  # noqa: E402
from tests.integration import test_front as front  # noqa: E402
from tests.integration.conftest import bootstrap_all  # noqa: E402

PROBER = r"""
import socket, ssl, sys, time
address, seconds = sys.argv[1], float(sys.argv[2])
ctx = ssl.create_default_context(cafile="/root/pebble-root.pem")
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.monotonic()
    try:
        with socket.create_connection((address, 443), timeout=1) as s:
            with ctx.wrap_socket(s, server_hostname="www.front.test") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: www.front.test\r\nConnection: close\r\n\r\n")
                ok = tls.recv(20).startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    print(f"{time.time():.3f} {int(ok)}", flush=True)
    time.sleep(max(0, 0.05 - (time.monotonic() - t)))
"""

LOAD = r"""
import http.client, ssl, sys, threading, time
host, port, scheme, clients, seconds, reuse = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \
    float(sys.argv[5]), sys.argv[6] == "1"
ctx = ssl.create_default_context(cafile="/root/pebble-root.pem")
counts = [0] * clients
def connect():
    if scheme == "https":
        c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    else:
        c = http.client.HTTPConnection(host, port, timeout=5)
    return c
def run(i):
    end = time.monotonic() + seconds
    c = connect()
    while time.monotonic() < end:
        if not reuse:
            c.close(); c = connect()
        c.request("GET", "/", headers={"Host": "www.front.test"})
        r = c.getresponse(); r.read()
        if r.status == 200:
            counts[i] += 1
threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
print(sum(counts) / seconds)
"""


def outage(lines):
    """(failed requests, seconds from the first failure to the next success) of prober output."""
    samples = [(float(t), ok == "1") for t, ok in (line.split() for line in lines if line.strip())]
    failed = [t for t, ok in samples if not ok]
    if not failed:
        return 0, 0.0
    back = next((t for t, ok in samples if ok and t > failed[0]), samples[-1][0])
    return len(failed), back - failed[0]


def probe_while(client, action, seconds=12):
    client.write("/root/prober.py", PROBER)
    proc = client.spawn(["python3", "/root/prober.py", front.ADDRESS, str(seconds)])
    time.sleep(2)
    action()
    out, _ = proc.communicate(timeout=seconds + 30)
    return outage(out.splitlines())


def load(client, host, port, scheme, clients, seconds, reuse=True):
    client.write("/root/load.py", LOAD)
    args = [host, str(port), scheme, str(clients), str(seconds), "1" if reuse else "0"]
    return float(client.run(["python3", "/root/load.py", *args], timeout=seconds + 120).stdout.strip())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    import subprocess

    key_dir = pathlib.Path("/tmp/minicl-bench-front")
    key_dir.mkdir(exist_ok=True)
    key = key_dir / "deploy.key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    deploy_key = (key.read_text(), key.with_suffix(".key.pub").read_text())
    with Lab() as lab:
        git = GitServer(lab.add_host("git", front.GIT), deploy_key[1])
        outside = lab.add_host("outside", front.OUTSIDE)
        ca = acmelab.start_pebble(outside, {d: front.ADDRESS for d in front.DOMAINS})
        web = lab.add_host("web", front.WEB)
        web.write("/var/www/html/index.html", front.PAGE)
        web.systemctl("start", "nginx")
        alpha, beta = lab.add_host("alpha", front.ALPHA), lab.add_host("beta", front.BETA)
        data = front.config(acmelab.pebble_directory(outside))
        data["apps"]["front"]["backends"]["site"]["servers"] = ["web:80"]
        git.commit(
            {"cluster.json": json.dumps(data, indent=2), "deploy.key": deploy_key[0], "acme-ca.pem": ca},
            "front",
        )
        started = time.monotonic()
        bootstrap_all({"alpha": alpha, "beta": beta}, git, deploy_key)
        print(f"bootstrap of both proxies (certificate included): {time.monotonic() - started:.1f} s")
        outside.write("/root/pebble-root.pem", acmelab.pebble_root(outside))
        proxies = {"alpha": alpha, "beta": beta}
        web_ip = front.WEB[0].split("/")[0]

        direct = load(outside, web_ip, 80, "http", args.clients, args.seconds)
        through = load(outside, "www.front.test", 443, "https", args.clients, args.seconds)
        fresh = load(outside, "www.front.test", 443, "https", args.clients, args.seconds, reuse=False)
        print(f"requests/s, {args.clients} clients, {args.seconds:.0f} s each:")
        print(f"  nginx directly (HTTP, keep-alive):           {direct:8.0f}")
        print(f"  through the front (HTTPS, keep-alive):       {through:8.0f}")
        print(f"  through the front (HTTPS, new TLS each):     {fresh:8.0f}")

        first = front.holder(proxies)
        failed, seconds = probe_while(
            outside, lambda: proxies[first].run(["salt-call", "--local", "minicl_app.failover", "front"])
        )
        print(f"planned move (minicl_app.failover on {first}): {failed} requests failed, {seconds:.2f} s")
        dying = front.holder(proxies)
        failed, seconds = probe_while(outside, lambda: proxies[dying].crash())
        print(
            f"the holder {dying} killed: {failed} requests failed (every 50 ms), {seconds:.2f} s unanswered"
        )


if __name__ == "__main__":
    main()
