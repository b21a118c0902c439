"""Central logging: cluster.json's logging section and its rules (one log host, the CA's files,
tracing only where an app can emit it), the syslog-ng configuration of a client and of the log
host (checked by syslog-ng itself), the retention rule, the metrics and alerts, the logging CA
and a host's certificate made with openssl, the certificate state in test=True and real mode
(the real traffic is in tests/integration/test_logging.py)."""

import json
import os
import shutil
import subprocess

import pytest

from minicl import centrallog, cli, firewall, hostview, logcerts, monitor
from minicl.cluster import Cluster
from minicl.config import validate

from . import loader

CA_FILES = {"cluster.json", "deploy.key", centrallog.CA_KEY, centrallog.CA_CERT}


@pytest.fixture
def data(example_data):
    example_data["hosts"]["watch"]["roles"].append(centrallog.ROLE)
    example_data["logging"] = {}
    return example_data


def messages(data, repo_files=None):
    return [f"{p.path}: {p.message}" for p in validate(data, "cluster.json", repo_files)]


def test_a_logging_section_with_its_log_host_and_ca_is_valid(data):
    assert messages(data, CA_FILES) == []
    data["logging"] = {
        "retention": "90d",
        "port": 10514,
        "tracing": {"endpoint": "http://otel.example.org:4318"},
    }
    assert messages(data, CA_FILES) == []
    assert centrallog.settings(Cluster(data)) == {
        "retention": "90d",
        "port": 10514,
        "ca": "minicl",
        "tracing": {"endpoint": "http://otel.example.org:4318"},
    }


def test_the_log_role_needs_one_host_and_the_section(data):
    data["hosts"]["watch"]["roles"].remove(centrallog.ROLE)
    assert messages(data, CA_FILES) == [
        "logging: no host has the log role: give it to the host that stores the cluster's logs, "
        'or remove "logging"'
    ]
    data["hosts"]["watch"]["roles"].append(centrallog.ROLE)
    data["hosts"]["alpha"]["roles"].append(centrallog.ROLE)
    assert messages(data, CA_FILES) == ["logging: the log role is on alpha, watch: give it to one host only"]
    data["hosts"]["alpha"]["roles"].remove(centrallog.ROLE)
    del data["logging"]
    assert messages(data, CA_FILES) == [
        'hosts.watch.roles: the log role receives the logs of the "logging" section, and there is none: '
        'add one ("logging": {}), or remove the role'
    ]


def test_bad_logging_entries_are_refused_naming_the_field(data):
    data["logging"] = {"retention": "12h", "port": 0, "ca": "ca_url", "colour": "blue"}
    data.pop("ca_url")
    found = messages(data, CA_FILES)
    assert any(m.startswith("logging.port:") for m in found), found
    assert any(m.startswith("logging.colour: unknown field") for m in found), found
    data["logging"] = {"retention": "12h", "ca": "ca_url"}
    assert sorted(messages(data, CA_FILES)) == [
        'logging.ca: is ca_url, but there is no "ca_url": name the CA, or use "minicl"',
        "logging.retention: must be at least 1d (the log host keeps whole days)",
    ]
    data["logging"] = {"retention": "1 day"}
    assert messages(data, CA_FILES)[0].startswith("logging.retention:")
    data["logging"] = {"tracing": {"endpoint": "otel:4318"}}
    assert messages(data, CA_FILES)[0].startswith("logging.tracing.endpoint:")


def test_the_ca_files_must_be_in_the_config_repo(data):
    missing = messages(data, {"cluster.json", "deploy.key"})
    assert len(missing) == 2 and all("minicl logging-ca" in m for m in missing), missing
    data["logging"]["ca"] = "ca_url"  # the group's CA: no files of ours
    assert messages(data, {"cluster.json", "deploy.key"}) == []


def test_tracing_is_refused_where_the_app_cannot_emit_traces(data, example_with_apps):
    example_with_apps["hosts"]["watch"]["roles"].append(centrallog.ROLE)
    example_with_apps["logging"] = {"tracing": {"endpoint": "https://otel.example.org:4318"}}
    names = sorted(example_with_apps["apps"])
    for name in names:
        example_with_apps["apps"][name]["logging"] = "tracing"
    found = messages(example_with_apps, CA_FILES)
    assert len(found) == len(names), found
    for name, message in zip(names, found, strict=True):
        kind = example_with_apps["apps"][name]["type"]
        assert message.startswith(f"apps.{name}.logging: ") and message.endswith("; use syslog"), message
        assert centrallog.TRACING[kind] in message
    for name in names:
        example_with_apps["apps"][name]["logging"] = "syslog"
    assert messages(example_with_apps, CA_FILES) == []
    example_with_apps["apps"][names[0]]["logging"] = "loud"
    assert messages(example_with_apps, CA_FILES)[0].startswith(f"apps.{names[0]}.logging:")


def test_every_app_type_says_whether_it_can_emit_traces():
    from minicl.rules import APP_TYPES

    assert set(APP_TYPES) <= set(centrallog.TRACING)


def test_a_client_sends_its_journal_over_tls_with_a_reliable_buffer(data):
    cluster = Cluster(data)
    text = centrallog.render_syslog_ng(cluster, "alpha")
    assert "source s_local { system(); internal(); };" in text
    address = cluster.host_ips("watch")[0]
    # minicl.logship: a batch leaves the disk buffer once the log host acknowledged it.
    assert 'python(class("minicl_logship.Destination")' in text
    assert f'"host" "{address}" "port" "6514"' in text and '"ca" "/etc/syslog-ng/minicl/ca.crt"' in text
    assert 'sys.path.insert(0, "/etc/syslog-ng/python")' in text
    assert "disk-buffer(reliable(yes)" in text
    assert "flags(flow-control)" in text and "s_cluster" not in text
    # An idle host still sends a line a minute: the log host can tell silence from a fault.
    assert "mark-freq(60)" in text and "mark-mode(internal)" in text
    assert "/var/log/" not in text  # nothing copied into local files: the journal stays the local log


def test_the_log_host_receives_on_its_addresses_and_files_per_host_and_day(data):
    cluster = Cluster(data)
    text = centrallog.render_syslog_ng(cluster, "watch")
    for ip in cluster.host_ips("watch"):
        assert f'syslog(ip("{ip}") port(6514) transport("tls")' in text
    assert '"/var/log/minicl/hosts/${MINICL_SENDER}/${S_YEAR}-${S_MONTH}-${S_DAY}.log"' in text
    # Filed by the certificate's name; a closing connection's last line (syslog-ng has
    # forgotten its TLS details by then) by the cluster host whose address sent it.
    assert 'set("${.tls.x509_cn}" value("MINICL_SENDER"));' in text
    for ip in cluster.host_ips("alpha"):
        assert (
            f'set("alpha" value("MINICL_SENDER") condition("${{MINICL_SENDER}}" eq "" and "${{SOURCEIP}}" eq "{ip}"));'
            in text
        )
    assert "log { source(s_cluster); rewrite(r_sender); destination(d_hosts);" in text
    assert '"/var/log/minicl/hosts/watch/${S_YEAR}-${S_MONTH}-${S_DAY}.log"' in text
    assert "d_loghost" not in text
    assert "mark-mode(dst-idle)" in text.split("destination d_own")[1].split(";")[0]
    assert "tcp-keepalive-time(1200)" in text  # a network cut of minutes: TCP resends, no reset


@pytest.mark.skipif(not shutil.which("syslog-ng"), reason="syslog-ng is not installed")
@pytest.mark.parametrize("host", ["alpha", "watch"])
def test_syslog_ng_accepts_both_configurations(data, host, tmp_path, monkeypatch):
    for name in ("HOST_KEY", "HOST_CERT", "TRUSTED_CA"):  # syslog-ng checks that they exist
        (tmp_path / name).write_text("")
        monkeypatch.setattr(centrallog, name, str(tmp_path / name))
    conf = tmp_path / "syslog-ng.conf"
    conf.write_text(centrallog.render_syslog_ng(Cluster(data), host))
    result = subprocess.run(["syslog-ng", "--syntax-only", "-f", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_retention_in_whole_days_and_the_port_open_to_cluster_hosts_only(data):
    data["logging"]["retention"] = "2w"
    cluster = Cluster(data)
    assert "d /var/log/minicl/hosts 0750 root adm mM:14d" in centrallog.render_tmpfiles(cluster)
    assert "6514" in firewall.host_spec(cluster, "watch").cluster_only_tcp
    assert "6514" not in firewall.host_spec(cluster, "alpha").cluster_only_tcp


def test_the_pillar_names_the_ca_key_file_never_its_content(data, tmp_path):
    (tmp_path / centrallog.CA_KEY).write_text("SECRET")
    cluster = Cluster(data)
    view = hostview.pillar_for(cluster, "alpha", {}, checkout=str(tmp_path))["minicl"]["logging"]
    assert view["ca_key_file"] == str(tmp_path / centrallog.CA_KEY) and "SECRET" not in json.dumps(view)
    assert view["common_name"] == "alpha" and "DNS:alpha.example.org" in view["subject_alt_names"]
    del data["logging"]
    assert hostview.pillar_for(Cluster(data), "alpha", {})["minicl"]["logging"] is None


def test_metrics_from_syslog_ng_ctl_and_file_times(tmp_path):
    stats = (
        "SourceName;SourceId;SourceInstance;State;Type;Number\n"
        "dst.syslog;d_loghost#0;syslog,203.0.113.150:6514;a;queued;42\n"
        "dst.syslog;d_loghost#0;syslog,203.0.113.150:6514;a;written;7\n"
        "src.journald;s_local#0;journal;a;processed;9\n"
    )
    assert centrallog.queued_messages(stats) == 42
    assert centrallog.queued_messages("") is None
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "2026-12-04.log").write_text("x\n")
    os.utime(tmp_path / "alpha" / "2026-12-04.log", (1000, 1000))
    received = centrallog.last_received(["alpha", "beta"], str(tmp_path))
    assert received == {"alpha": 1000, "beta": 0}
    text = centrallog.render_metrics(True, 42, received, 2000)
    assert 'minicl_log_last_received_seconds{host="alpha"} 1000' in text
    assert "minicl_syslog_ng_up 1" in text and "minicl_log_queued_messages 42" in text


def test_the_log_host_stores_what_it_received_before_syslog_ng_stops():
    stats = (
        "dst.file;d_hosts#0;/var/log/minicl/hosts/alpha/2026-12-04.log;a;queued;3\n"
        "dst.file;d_own#0;/var/log/minicl/hosts/vault/2026-12-04.log;a;queued;0\n"
        "dst.file;d_hosts#0;/var/log/minicl/hosts/alpha/2026-12-04.log;a;processed;90\n"
        "src.internal;s_local#1;;a;processed;4\n"
    )
    assert centrallog.queued_to_files(stats) == 3
    dropin = centrallog.render_drain_dropin("/opt/minicl/current/bin/python", 6514)
    assert "ExecStop=/opt/minicl/current/bin/python -m minicl.centrallog drain --port 6514" in dropin
    assert "ExecStopPost=/opt/minicl/current/bin/python -m minicl.centrallog undrain" in dropin


def test_alerts_when_a_hosts_logs_stop_arriving(data):
    rules = {r["alert"]: r for r in monitor.alert_rules(Cluster(data))}
    assert rules["LogsNotArriving"]["expr"] == "time() - minicl_log_last_received_seconds > 240"
    assert rules["LogsNotArriving"]["for"] == "1m"
    assert {"SyslogNgDown", "LogBacklog"} <= set(rules)
    del data["logging"]
    data["hosts"]["watch"]["roles"].remove(centrallog.ROLE)
    assert "LogsNotArriving" not in {r["alert"] for r in monitor.alert_rules(Cluster(data))}


def test_minicl_logging_ca_makes_a_ca_and_refuses_to_overwrite_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["logging-ca", "example.org"]) == 0
    assert oct(os.stat(centrallog.CA_KEY).st_mode & 0o777) == "0o600"
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", centrallog.CA_CERT], capture_output=True, text=True
    ).stdout
    assert "CA:TRUE" in text and "minicl logging CA example.org" in text
    assert cli.main(["logging-ca", "example.org"]) == 1
    assert "exists" in capsys.readouterr().err


@pytest.fixture
def host_tls(tmp_path, monkeypatch, data):
    """A CA in a fake checkout and this host's TLS folder under tmp_path; the pillar's view."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    logcerts.make_ca(str(checkout), "example.org")
    tls = tmp_path / "tls"
    for name, value in (("TLS_DIR", tls), ("HOST_KEY", tls / "host.key"), ("HOST_CERT", tls / "host.crt"),
                        ("TRUSTED_CA", tls / "ca.crt")):  # fmt: skip
        monkeypatch.setattr(centrallog, name, str(value))
    return centrallog.pillar(Cluster(data), "alpha", str(checkout))


@pytest.mark.parametrize("testmode", [True, False])
def test_the_certificate_state_makes_a_key_and_a_signed_certificate(host_tls, testmode):
    state = loader.load_state("minicl_logging", testmode, {"minicl": {"logging": host_tls}})
    ret = state.certificate("host.crt")
    assert set(ret["changes"]) == {"ca", "key", "certificate"}, ret
    assert ret["result"] is (None if testmode else True)
    assert "BEGIN" not in json.dumps(ret)
    if testmode:
        assert not os.path.exists(centrallog.HOST_KEY)
        return
    assert oct(os.stat(centrallog.HOST_KEY).st_mode & 0o777) == "0o600"
    subprocess.run(["openssl", "verify", "-CAfile", centrallog.TRUSTED_CA, centrallog.HOST_CERT], check=True)
    again = state.certificate("host.crt")
    assert again == {"name": "host.crt", "result": True, "changes": {},
                     "comment": "host.crt is valid, signed by the logging CA"}  # fmt: skip


def test_a_certificate_is_remade_for_new_addresses_or_a_new_ca(host_tls, tmp_path):
    state = loader.load_state("minicl_logging", False, {"minicl": {"logging": host_tls}})
    assert state.certificate("c")["result"] is True
    key = open(centrallog.HOST_KEY).read()
    host_tls["subject_alt_names"] = ["IP:203.0.113.9", "DNS:alpha.example.org"]
    ret = state.certificate("c")
    assert ret["changes"] == {"certificate": "signed by the logging CA (its names are not this host's "
                                             "names and addresses)"}  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    logcerts.make_ca(str(other), "example.org")
    host_tls.update(ca_cert_file=str(other / centrallog.CA_CERT), ca_key_file=str(other / centrallog.CA_KEY))
    ret = state.certificate("c")
    assert set(ret["changes"]) == {"ca", "certificate"} and "not signed by the logging CA" in ret["changes"][
        "certificate"]  # fmt: skip
    assert open(centrallog.HOST_KEY).read() == key  # the key stays


def test_with_the_groups_ca_the_state_asks_for_the_files(host_tls):
    host_tls.update(ca="ca_url", ca_key_file=None)
    ret = loader.load_state("minicl_logging", False, {"minicl": {"logging": host_tls}}).certificate("c")
    assert ret["result"] is False and centrallog.HOST_KEY in ret["comment"], ret
