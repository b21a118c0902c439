"""Fixtures for integration tests: a lab of namespace test hosts and a config repo over SSH."""

import copy
import email
import email.policy
import json
import os
import pathlib
import subprocess
import threading
import time

import pytest

from minicl_lab import fakerelay
from minicl_lab.testhosts import GitServer, Lab

EXAMPLE = pathlib.Path(__file__).parents[2] / "cluster.json.example"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="test hosts need root (Linux namespaces)"))


@pytest.fixture(scope="session")
def deploy_key(tmp_path_factory):
    """(private key text, public key text) of a fresh ed25519 deploy key."""
    path = tmp_path_factory.mktemp("deploy") / "deploy.key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f", str(path)], check=True
    )
    return path.read_text(), path.with_suffix(".key.pub").read_text()


def cluster_config(hosts, **overrides):
    """The example cluster.json with ``hosts`` ({name: {"ip": [...], "roles": [...]}}).

    The example's ca_url is left out (test hosts cannot reach it) unless ``overrides`` set one,
    and so are its apps (its host names are not the test's).
    """
    data = json.loads(EXAMPLE.read_text())
    data.pop("ca_url")
    data.pop("apps")  # the appliance tests name their own
    data["hosts"] = copy.deepcopy(hosts)
    data.update(overrides)
    return data


def dump(data):
    return json.dumps(data, indent=2) + "\n"


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def git_server(lab, deploy_key):
    host = lab.add_host("git", ["198.51.100.1/24", "2001:db8:100::1/64"])
    return GitServer(host, deploy_key[1])


def salt_call(host, *args, check=False):
    """Run salt-call --local in ``host``; returns (returncode, parsed JSON or None, raw result)."""
    result = host.run(
        ["salt-call", "--local", "--out=json", "--retcode-passthrough", *args], check=False, timeout=600
    )
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = None
    if check and result.returncode != 0:
        raise AssertionError(
            f"salt-call {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.returncode, data, result


def bootstrap_all(hosts, git_server, deploy_key):
    """minicl-bootstrap on every host at once (threads); fails naming the host whose run failed."""
    results = {}

    def bootstrap(name, host):
        host.write("/root/deploy.key", deploy_key[0], 0o600)
        results[name] = host.run(
            ["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
            check=False,
            timeout=600,
        )

    threads = [threading.Thread(target=bootstrap, args=item) for item in hosts.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, result in results.items():
        assert result.returncode == 0, f"bootstrap of {name}:\n{result.stdout}\n{result.stderr}"


def wait_for(what, probe, timeout=60, interval=0.5, explain=None):
    """probe()'s first true result, tried every ``interval`` s; fails after ``timeout`` s saying
    what it waited for (and ``explain()``, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}" + (f"\n{explain()}" if explain else "")
            )
        time.sleep(interval)


def changed_states(state_return):
    return {k: v["changes"] for k, v in state_return["local"].items() if v["changes"]}


@pytest.fixture(scope="module")
def relay(request, lab, tmp_path_factory):
    """A fake authenticated relay at the test module's ``RELAY`` addresses, taking its ``USER``
    and ``PASSWORD``."""
    module = request.module
    host = lab.add_host("relay", module.RELAY)
    ca = fakerelay.make_test_ca(tmp_path_factory.mktemp("tls"))
    fakerelay.start_in(host, ca, module.USER, module.PASSWORD)
    return host


def monitor_state(watch):
    """What the monitor sees, for failure messages."""
    return watch.run(
        'python3 -c "import urllib.request; print(urllib.request.urlopen('
        "'http://127.0.0.1:9090/api/v1/targets').read().decode()[:3000])\"; "
        "tail -5 /var/log/prometheus/prometheus.log /var/log/prometheus/prometheus-alertmanager.log",
        check=False,
    ).stdout


def readable(message):
    """Subject and decoded text of a message the relay received (Alertmanager's mail is
    quoted-printable multipart)."""
    parsed = email.message_from_string(message["data"], policy=email.policy.default)
    parts = [part.get_content() for part in parsed.walk() if part.get_content_maintype() == "text"]
    return " ".join([str(parsed["Subject"]), *parts])


def alert_mail(relay, *words, timeout=90):
    """The first message at the relay whose subject or text contains every word."""

    def find():
        for message in fakerelay.received(relay):
            if all(word in readable(message) for word in words):
                return message
        return None

    return wait_for(
        f"a mail with {words} at the relay",
        find,
        timeout,
        explain=lambda: "\n".join(readable(m)[:300] for m in fakerelay.received(relay)),
    )
