"""Postfix configuration rendered from cluster.json: a null client through the relay."""

import copy
import json
import pathlib
import subprocess

import pytest

from minicl import config, mail

from .loader import load_state

EXAMPLE = json.loads((pathlib.Path(__file__).resolve().parents[2] / "cluster.json.example").read_text())


def cluster(**smtp):
    data = copy.deepcopy(EXAMPLE)
    data["smtp"].update(smtp)
    return config.Cluster(data)


def settings(text):
    return dict(
        line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#")
    )


def test_main_cf_is_a_verified_tls_null_client():
    cf = settings(mail.render_main_cf(cluster(), "alpha"))
    assert cf["myhostname"] == "alpha.example.org"
    assert cf["myorigin"] == "/etc/mailname"
    assert cf["inet_interfaces"] == "loopback-only"
    assert cf["relayhost"] == "[mail.example.org]:587"
    assert cf["smtp_sasl_auth_enable"] == "yes"
    assert cf["smtp_sasl_password_maps"] == "hash:/etc/postfix/sasl_passwd"
    assert cf["smtp_tls_security_level"] == "secure"
    assert cf["smtp_tls_CAfile"] == "/etc/ssl/certs/ca-certificates.crt"
    assert cf["smtp_tls_wrappermode"] == "no"
    assert "change-me-smtp-password" not in mail.render_main_cf(cluster(), "alpha")


def test_port_465_means_implicit_tls():
    cf = settings(mail.render_main_cf(cluster(port=465), "beta"))
    assert cf["relayhost"] == "[mail.example.org]:465" and cf["smtp_tls_wrappermode"] == "yes"


def test_default_port_is_587():
    data = copy.deepcopy(EXAMPLE)
    del data["smtp"]["port"]
    assert mail.nexthop(config.Cluster(data)) == "[mail.example.org]:587"


def test_sasl_passwd_key_matches_relayhost_exactly():
    line = mail.render_sasl_passwd(cluster(relay="relay.example.org", port=2525))
    assert line == "[relay.example.org]:2525 cluster@example.org:change-me-smtp-password\n"
    assert (
        line.split()[0]
        == settings(mail.render_main_cf(cluster(relay="relay.example.org", port=2525), "alpha"))["relayhost"]
    )


def test_aliases_send_root_to_admin_and_system_accounts_to_root():
    text = mail.render_aliases(cluster(), ["root", "daemon", "www-data", "nobody"])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "root: admins@example.org",
        "postmaster: root",
        "daemon: root",
        "nobody: root",
        "www-data: root",
    ]


def test_system_accounts(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "root:x:0:0::/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n"
        "alice:x:2001:2001::/home/alice:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\n"
        "+nis::::::\n"
    )
    assert mail.system_accounts(str(passwd)) == ["root", "daemon", "nobody"]


LOG = """\
Nov 22 06:18:49 alpha postfix/pickup[1456]: 99FD915B: uid=0 from=<root>
Nov 22 06:18:49 alpha postfix/cleanup[1472]: 99FD915B: message-id=<minicl-test-ab@alpha.example.org>
Nov 22 06:18:49 alpha postfix/qmgr[1457]: 99FD915B: from=<root@alpha.example.org>, size=417, nrcpt=1 (queue active)
Nov 22 06:18:49 alpha postfix/cleanup[1472]: 11111111: message-id=<other@alpha.example.org>
Nov 22 06:18:49 alpha postfix/smtp[1475]: 11111111: to=<x@example.org>, relay=none, status=deferred (connect refused)
Nov 22 06:18:50 alpha postfix/smtp[1475]: 99FD915B: to=<admins@example.org>, relay=relay.example.org[198.51.100.80]:587, delay=0.06, dsn=2.0.0, status=sent (250 OK queued by the fake relay)
"""


def test_delivery_status_follows_one_message():
    lines = LOG.splitlines()
    assert mail.delivery_status("<minicl-test-ab@alpha.example.org>", lines) == (
        "sent",
        "250 OK queued by the fake relay",
    )
    assert mail.delivery_status("<other@alpha.example.org>", lines) == ("deferred", "connect refused")
    assert mail.delivery_status("<unknown@x>", lines) == (None, "")


def _load_state(test):
    return load_state("minicl_mail", test)


@pytest.mark.parametrize("test", [True, False], ids=["test", "real"])
def test_postfix_is_preseeded_only_before_it_is_installed(monkeypatch, test):
    done = []
    monkeypatch.setattr(mail, "preseed_postfix", lambda: done.append("preseed"))
    monkeypatch.setattr(mail, "package_installed", lambda name: False)
    ret = _load_state(test).postfix_preseeded()
    assert ret["result"] is (None if test else True)
    assert ret["changes"] == {"debconf": "postfix postfix/main_mailer_type select No configuration"}
    assert done == ([] if test else ["preseed"])
    monkeypatch.setattr(mail, "package_installed", lambda name: name == "postfix")
    ret = _load_state(test).postfix_preseeded()
    assert ret == {
        "name": "postfix",
        "result": True,
        "changes": {},
        "comment": "postfix is installed: nothing to preseed",
    }
    assert done == ([] if test else ["preseed"])


@pytest.mark.parametrize("test", [True, False], ids=["test", "real"])
def test_cluster_ca_is_trusted_until_the_bundle_verifies_it(monkeypatch, test):
    trusted = []
    monkeypatch.setattr(mail, "ca_trusted", lambda path: bool(trusted))
    monkeypatch.setattr(mail, "trust_cas", lambda: trusted.append(True))
    ret = _load_state(test).ca_trusted()
    assert ret["result"] is (None if test else True) and "bundle" in ret["changes"]
    assert trusted == ([] if test else [True])
    if not test:
        assert _load_state(test).ca_trusted()["changes"] == {}


def test_a_failing_step_fails_the_state_with_the_reason(monkeypatch):
    def fail():
        raise subprocess.CalledProcessError(1, ["update-ca-certificates"], stderr="no space left\n")

    monkeypatch.setattr(mail, "ca_trusted", lambda path: False)
    monkeypatch.setattr(mail, "trust_cas", fail)
    ret = _load_state(False).ca_trusted("/x.crt")
    assert ret == {
        "name": "/x.crt",
        "result": False,
        "changes": {},
        "comment": "trusting /x.crt failed: no space left",
    }
