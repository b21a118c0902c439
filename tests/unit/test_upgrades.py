"""Upgrades of an app's packages (minicl.appliances.upgrades), with apt and the appliance faked:
what is kept, backed up, checked, and undone."""

import pytest

from minicl.appliances import ApplianceError, Report, upgrades

APP = {"name": "db", "packages": ["ext"]}


class FakeAppliance:
    PACKAGES = ("server",)

    def __init__(self, healthy_after):
        self.healthy_after = healthy_after
        self.calls = []
        self.version = {"server": "1", "ext": "1.0"}

    def backup(self, app):
        self.calls.append("backup")
        return Report("db", "backup", data={"backup": "B1"})

    def restore(self, app, backup=None):
        self.calls.append(("restore", backup))
        return Report("db", "restore", lines=["ok   shop restored from backup B1"])

    def wait_ready(self, seconds=30):
        return True

    def check_health(self, app):
        return Report("db", "check_health")

    def test(self, app):
        if self.version["ext"] in self.healthy_after:
            return Report("db", "test")
        raise ApplianceError("cannot execute CREATE TABLE in a read-only transaction")


@pytest.fixture
def apt(monkeypatch, tmp_path):
    monkeypatch.setattr(upgrades.paths, "APPS_DIR", str(tmp_path))

    def setup(appliance, candidate):
        monkeypatch.setattr(upgrades, "installed", lambda names: {n: appliance.version[n] for n in names})
        monkeypatch.setattr(upgrades, "candidates", lambda names: {**appliance.version, "ext": candidate})
        monkeypatch.setattr(
            upgrades, "keep_copies", lambda versions: [f"/kept/{n}_{v}.deb" for n, v in versions.items()]
        )

        def install(debs):
            appliance.calls.append(("install", debs))
            appliance.version["ext"] = "1.0"

        monkeypatch.setattr(upgrades, "install_debs", install)

        def run(argv, cwd=None):
            if argv[:3] == ["apt-get", "install", "--only-upgrade"]:
                appliance.version["ext"] = candidate
            return ""

        monkeypatch.setattr(upgrades, "_run", run)

    return setup


def test_an_upgrade_whose_checks_fail_is_undone(apt):
    appliance = FakeAppliance(healthy_after={"1.0"})
    apt(appliance, "1.1")
    report = upgrades.upgrade(appliance, APP)
    assert not report.ok and report.data["undone"] and report.data["healthy_after_undo"]
    assert appliance.calls == ["backup", ("install", ["/kept/ext_1.0.deb"]), ("restore", "B1")]
    assert "ok   upgraded ext 1.0 -> 1.1" in report.lines
    assert (
        "FAIL test after the change: cannot execute CREATE TABLE in a read-only transaction" in report.lines
    )
    assert "info back to ext 1.0" in report.lines
    assert upgrades.history(APP) == []  # nothing to downgrade to: the upgrade did not stay


def test_a_good_upgrade_is_recorded_and_downgrade_goes_back(apt):
    appliance = FakeAppliance(healthy_after={"1.0", "1.2"})
    apt(appliance, "1.2")
    report = upgrades.upgrade(appliance, APP)
    assert report.ok and appliance.version["ext"] == "1.2"
    assert upgrades.history(APP)[-1]["before"] == {"ext": "1.0"}
    report = upgrades.downgrade(appliance, APP)
    assert report.ok and "ok   back to ext 1.0" in report.lines and appliance.version["ext"] == "1.0"


def test_nothing_newer_changes_nothing(apt):
    appliance = FakeAppliance(healthy_after={"1.0"})
    apt(appliance, "1.0")
    report = upgrades.upgrade(appliance, APP)
    assert report.ok and report.lines == ["ok   ext, server: up to date"] and appliance.calls == []


def test_downgrade_without_an_upgrade_says_so(apt):
    report = upgrades.downgrade(FakeAppliance(set()), APP)
    assert not report.ok and "no upgrade of this app recorded on this host" in report.lines[0]


class Stateless(FakeAppliance):
    """An appliance that keeps no data (nginx): no backup to take or restore."""

    backup = None
    restore = None

    def __getattribute__(self, name):
        if name in ("backup", "restore"):
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_a_stateless_app_is_upgraded_and_undone_without_a_backup(apt):
    appliance = Stateless(healthy_after={"1.0"})
    apt(appliance, "1.1")
    report = upgrades.upgrade(appliance, APP)
    assert not report.ok and report.data["undone"] and report.data["healthy_after_undo"]
    assert appliance.calls == [("install", ["/kept/ext_1.0.deb"])]
    assert not any("safety backup" in line for line in report.lines)
