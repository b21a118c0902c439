"""Root mail through an authenticated relay, verified at a fake relay in its own test host:
STARTTLS with a certificate from a test CA that the host gets from ca_url, AUTH with the
configured credentials, delivery to admin_email; a wrong password keeps mail queued until fixed."""

import json
import re
import time

import pytest

from minicl_lab import fakerelay

from .conftest import changed_states, cluster_config, dump, salt_call

ALPHA = ["198.51.100.81/24", "2001:db8:100::81/64"]
RELAY = ["198.51.100.80/24"]
USER, PASSWORD = "cluster@example.org", "relay-secret-Zq81"


def mail_config(password=PASSWORD, relay="relay.example.org"):
    ips = [a.split("/")[0] for a in ALPHA]
    return dump(
        cluster_config(
            {"alpha": {"ip": ips, "roles": ["base"]}},
            smtp={"relay": relay, "port": 587, "username": USER, "password": password},
            ca_url="http://relay.example.org/ca.crt",
        )
    )


@pytest.fixture(scope="module")
def alpha(lab, relay, git_server, deploy_key):
    host = lab.add_host("alpha", ALPHA)
    host.run("echo '198.51.100.80 relay.example.org' >> /etc/hosts")  # the relays' DNS names
    host.run("echo '198.51.100.79 untrusted.example.org' >> /etc/hosts")
    git_server.commit({"cluster.json": mail_config(), "deploy.key": deploy_key[0]}, "mail")
    host.write("/root/deploy.key", deploy_key[0], 0o600)
    result = host.run(
        ["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
        check=False,
        timeout=600,
    )
    host.bootstrap = result
    SENDER["host"] = host
    return host


SENDER = {}


def received(relay, count, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = fakerelay.received(relay)
        if len(messages) >= count:
            return messages
        time.sleep(0.3)
    sender = SENDER.get("host")
    logs = sender.run("tail -20 /var/log/postfix.log; postqueue -p", check=False).stdout if sender else ""
    raise AssertionError(f"the relay got fewer than {count} messages in {timeout} s\n{logs}")


def deferred(host, timeout=30):
    """The queue once its first message has a delay reason (Postfix tried and gave up for now)."""
    deadline = time.monotonic() + timeout
    waiting = []
    while time.monotonic() < deadline:
        waiting = queue(host)
        if waiting and any(r.get("delay_reason") for r in waiting[0]["recipients"]):
            break
        time.sleep(0.5)
    return waiting


def queue(host):
    lines = host.run("postqueue -j").stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_bootstrap_configures_mail_without_showing_the_password(alpha):
    out = alpha.bootstrap.stdout + alpha.bootstrap.stderr
    assert alpha.bootstrap.returncode == 0, out
    assert PASSWORD not in out
    assert alpha.read("/etc/mailname") == "alpha.example.org\n"
    assert alpha.run("stat -c '%a %U' /etc/postfix/sasl_passwd /etc/postfix/sasl_passwd.db").stdout.split(
        "\n"
    )[:2] == ["600 root", "600 root"]
    assert alpha.run("postconf -h inet_interfaces relayhost smtp_tls_security_level").stdout.split() == [
        "loopback-only",
        "[relay.example.org]:587",
        "secure",
    ]
    assert alpha.exists("/usr/local/share/ca-certificates/minicl-cluster-ca.crt")


def test_root_mail_reaches_admin_email_through_the_relay(alpha, relay):
    alpha.run("echo 'hello from alpha' | mail -s 'root mail test' root")
    message = received(relay, 1)[0]
    assert message["rcpt_tos"] == ["admins@example.org"]
    assert message["login"] == USER and message["tls"] is True
    assert message["peer"] == "198.51.100.81"
    assert "Subject: root mail test" in message["data"] and "hello from alpha" in message["data"]
    assert message["mail_from"] == "root@alpha.example.org"


def test_system_accounts_mail_goes_to_admin_email_too(alpha, relay):
    alpha.run("echo 'cron noise' | mail -s 'from daemon' daemon")
    assert received(relay, 2)[1]["rcpt_tos"] == ["admins@example.org"]


def test_second_run_changes_nothing(alpha):
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert changed_states(data) == {}


def test_wrong_password_keeps_mail_queued_until_fixed(alpha, relay, git_server):
    git_server.commit({"cluster.json": mail_config("wrong-password")}, "a typo in the relay password")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert "wrong-password" not in result.stdout + result.stderr
    creds = changed_states(data)[
        "minicl_mail_|-minicl-relay-credentials_|-/etc/postfix/sasl_passwd_|-sasl_passwd"
    ]
    assert creds["credentials"] == "for [relay.example.org]:587 (content hidden)"

    alpha.run("echo 'while the password is wrong' | mail -s 'queued' root")
    waiting = deferred(alpha)
    assert len(waiting) == 1
    assert "authentication failed" in waiting[0]["recipients"][0]["delay_reason"].lower()
    assert relay.run("ls /srv/relay | grep -c json").stdout.strip() == "2"  # nothing got through

    git_server.commit({"cluster.json": mail_config()}, "fix the relay password")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert "Subject: queued" in received(relay, 3)[2]["data"]
    assert queue(alpha) == []


def test_mail_test_function_and_queue(alpha, relay):
    code, data, result = salt_call(alpha, "minicl_mail.test")
    assert code == 0, result.stdout
    report = data["local"]
    assert report["sent_to"] == "admins@example.org" and report["delivered_to_relay"] is True
    assert report["status"] == "sent" and "queued by the fake relay" in report["detail"]
    assert report["queue"]["size"] == 0
    assert "minicl test message from alpha.example.org" in received(relay, 4)[3]["data"]


def test_password_never_in_logs_or_world_readable_files(alpha):
    found = alpha.run(
        f"grep -rl '{PASSWORD}' /var/log /etc /var/lib/minicl/applied.json 2>/dev/null || true"
    ).stdout.split()
    assert all(alpha.run(f"stat -c %a {path}").stdout.strip() == "600" for path in found), found
    assert "/var/log/salt/minion" not in found and "/var/log/postfix.log" not in found


def test_test_mode_shows_a_credentials_change_without_applying(alpha, git_server):
    before = alpha.run("md5sum /etc/postfix/sasl_passwd /etc/postfix/sasl_passwd.db").stdout
    git_server.commit({"cluster.json": mail_config("another-password")}, "new relay password")
    code, data, result = salt_call(alpha, "state.apply", "test=True")
    state = data["local"]["minicl_mail_|-minicl-relay-credentials_|-/etc/postfix/sasl_passwd_|-sasl_passwd"]
    assert state["result"] is None
    assert state["changes"]["credentials"] == "for [relay.example.org]:587 (content hidden)"
    assert "another-password" not in result.stdout + result.stderr
    assert alpha.run("md5sum /etc/postfix/sasl_passwd /etc/postfix/sasl_passwd.db").stdout == before
    git_server.commit({"cluster.json": mail_config()}, "back to the right password")


def test_ca_download_failure_fails_clearly_and_keeps_the_previous_ca(alpha, git_server):
    ca = "/usr/local/share/ca-certificates/minicl-cluster-ca.crt"
    before = alpha.read(ca)
    broken = json.loads(mail_config())
    broken["ca_url"] = "http://relay.example.org/no-such-ca.crt"
    git_server.commit({"cluster.json": dump(broken)}, "a wrong ca_url")
    code, data, result = salt_call(alpha, "state.apply")
    assert code != 0
    state = data["local"][
        "file_|-minicl-cluster-ca_|-/usr/local/share/ca-certificates/minicl-cluster-ca.crt_|-managed"
    ]
    assert state["result"] is False and "404" in state["comment"]
    assert alpha.read(ca) == before
    git_server.commit({"cluster.json": mail_config()}, "ca_url fixed")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout


def test_a_relay_with_an_untrusted_certificate_gets_nothing(lab, alpha, git_server, tmp_path_factory):
    impostor = lab.add_host("impostor", ["198.51.100.79/24"])
    # Its own CA, which no cluster host trusts; right user and password, right name.
    fakerelay.start_in(
        impostor,
        fakerelay.make_test_ca(tmp_path_factory.mktemp("impostor"), "untrusted.example.org"),
        USER,
        PASSWORD,
    )
    git_server.commit({"cluster.json": mail_config(relay="untrusted.example.org")}, "another relay")
    code, _, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    alpha.run("echo 'must not leave' | mail -s 'to the impostor' root")
    waiting = deferred(alpha)
    assert len(waiting) == 1
    assert "Server certificate not verified" in waiting[0]["recipients"][0]["delay_reason"]
    assert fakerelay.received(impostor) == []
    alpha.run("postsuper -d ALL")
    git_server.commit({"cluster.json": mail_config()}, "back to the real relay")
    assert salt_call(alpha, "state.apply")[0] == 0


def test_checks_report_and_fail_when_postfix_is_down(alpha):
    result = alpha.run(
        ["salt-call", "--local", "--out=json", "--retcode-passthrough", "minicl_checks.run"], check=False
    )
    report = json.loads(result.stdout)["local"]
    # Not "packages verified": a test host has this machine's packages (its overlay's lower
    # layer), and with them any package file changed on this machine. Not load and memory: they
    # are this machine's, busy with other tests (their limits are unit-tested).
    failing = {name: said for name, said in report.items() if said.startswith("FAIL")}
    for machine_wide in ("packages verified", "load", "memory"):
        failing.pop(machine_wide, None)
    assert failing == {}, report
    assert report["ssh"] == "OK answers on port 22" and report["postfix"] == "OK running"
    assert report["mail queue"].startswith("OK 0 message(s)")
    assert re.match(r"(OK|FAIL) \d+\.\d\d over 5 min on \d+ CPU", report["load"]), report["load"]
    assert re.match(r"(OK|FAIL) \d+% available of \d+ MiB", report["memory"]), report["memory"]
    alpha.systemctl("stop", "postfix@-")
    try:
        result = alpha.run(
            ["salt-call", "--local", "--out=json", "--retcode-passthrough", "minicl_checks.run"], check=False
        )
        report = json.loads(result.stdout)["local"]
        assert result.returncode == 1
        assert report["postfix"].startswith("FAIL not running")
    finally:
        alpha.systemctl("start", "postfix@-")
