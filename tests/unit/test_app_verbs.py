"""minicl_app: every verb of the contract, dispatched to the app's appliance; a verb it does not
provide, an unknown app and a failed check are failures with a reason and a non-zero exit code."""

import pytest

from minicl import appliances
from minicl.appliances import postgresql

from .loader import load_execution

PILLAR = {"minicl": {"apps": {"db": {"name": "db", "type": "postgresql"}}}}


@pytest.fixture
def verbs():
    return load_execution("minicl_app", PILLAR)


def test_every_verb_of_the_contract_is_a_function(verbs):
    for verb in appliances.CONTRACT:
        assert callable(getattr(verbs, "list_" if verb == "list" else verb)), verb
    assert verbs.__func_alias__ == {"list_": "list"}


def test_a_verb_runs_the_appliance_and_passes_its_options(verbs, monkeypatch):
    seen = []
    monkeypatch.setattr(postgresql, "restore", lambda app, **options: seen.append(options)
                        or appliances.Report("db", "restore", lines=["ok   shop restored"]))  # fmt: skip
    result = verbs.restore("db", backup=20261201, database="shop")
    assert seen == [{"backup": "20261201", "database": "shop"}]
    assert result == {"app": "db", "verb": "restore", "ok": True, "report": ["ok   shop restored"]}
    assert "retcode" not in verbs.__context__


def test_a_failed_check_sets_the_exit_code(verbs, monkeypatch):
    monkeypatch.setattr(
        postgresql, "check_health", lambda app: appliances.Report("db", "check_health", ok=False)
    )
    assert verbs.check_health("db")["ok"] is False and verbs.__context__["retcode"] == 1


def test_an_appliance_error_is_a_failed_report(verbs, monkeypatch):
    def fail(app):
        raise appliances.ApplianceError("no backup of app db on this host")

    monkeypatch.setattr(postgresql, "list_backups", fail)
    assert verbs.list_("db")["report"] == ["FAIL no backup of app db on this host"]
    assert verbs.__context__["retcode"] == 1


def test_a_verb_not_provided_says_so(verbs, monkeypatch):
    monkeypatch.setattr(postgresql, "VERBS", ("check_health",))
    result = verbs.cleanup("db")
    assert result["report"] == [
        "cleanup is not provided for postgresql apps by this version of minicl (provided: check_health)"
    ]
    assert verbs.__context__["retcode"] == 1 and verbs.verbs("db")["check_health"] is True


def test_an_app_not_on_this_host(verbs):
    assert verbs.test("cache")["report"] == ["cache is not an app of this host (apps here: db)"]
    assert verbs.__context__["retcode"] == 1
