"""Every minicl state function in both modes, ``test=True`` and real, with the core functions it
orchestrates replaced (saltext-vault's ``testmode`` fixture is the model). What the core
functions do on a real host is tested in tests/integration; here: what a state decides, reports
and changes, and that a minicl error ends as ``result: False``, never as a traceback."""

import json
import pathlib
import subprocess

import pytest

from minicl import accounts, deadman, firewall, mail, sshd
from minicl.firewall import Plan, Spec

from . import loader

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "cluster.json.example").read_text())


@pytest.fixture(params=[True, False], ids=["test", "real"])
def testmode(request):
    return request.param


def load_state(name, testmode, pillar=None):
    return loader.load_state(
        name, testmode, pillar or {"minicl": {"cluster": EXAMPLE, "host": {"name": "alpha"}}}
    )


class Calls(list):
    """A stand-in that records its calls and returns ``result``."""

    def __init__(self, result=None):
        super().__init__()
        self.result = result

    def __call__(self, *args, **kwargs):
        self.append(args)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


# -- minicl_firewall.applied ---------------------------------------------------------------


@pytest.fixture
def fw(tmp_path, monkeypatch, testmode):
    monkeypatch.setattr(firewall, "PERSIST_PATH", str(tmp_path / "minicl.nft"))
    monkeypatch.setattr(firewall, "BREAK_GLASS_PATH", str(tmp_path / "firewall.off"))
    monkeypatch.setattr(firewall, "LOCAL_RULES_PATH", str(tmp_path / "firewall.local.nft"))
    monkeypatch.setattr(sshd, "listening_ports", lambda: [22])
    return load_state("minicl_firewall", testmode)


def a_plan(differs=True, persisted=False):
    return Plan(
        Spec(trusted_v4=["198.51.100.0/24"]),
        "table inet minicl {}\n",
        "wanted",
        "new listing\n",
        "current" if differs else "wanted",
        "old listing\n",
        persisted,
    )


def test_firewall_as_it_should_be(fw, monkeypatch):
    monkeypatch.setattr(firewall, "plan", lambda *args: a_plan(differs=False, persisted=True))
    ret = fw.applied("inet minicl")
    assert ret["result"] is True and ret["changes"] == {}
    assert ret["comment"].startswith("table inet minicl is as cluster.json says (1 trusted networks")


def test_firewall_change_is_shown_then_applied_with_the_deadman(fw, monkeypatch, testmode):
    monkeypatch.setattr(firewall, "plan", lambda *args: a_plan())
    replace = Calls(None)
    monkeypatch.setattr(deadman, "replace_confirmed", replace)
    monkeypatch.setattr(firewall, "live", lambda: ("wanted", "new listing\n"))
    ret = fw.applied("inet minicl")
    assert "-old listing\n+new listing\n" in ret["changes"]["diff"]
    assert ret["changes"]["persisted"] == firewall.PERSIST_PATH
    if testmode:
        assert ret["result"] is None and replace == []
        assert not pathlib.Path(firewall.PERSIST_PATH).exists()
    else:
        assert ret["result"] is True and len(replace) == 1
        text, previous, peers, ports, seconds = replace[0]
        assert (
            previous == "old listing\n"
            and ports == [22]
            and seconds == EXAMPLE["firewall"].get("confirm_seconds", seconds)
        )
        assert pathlib.Path(firewall.PERSIST_PATH).read_text() == text


def test_firewall_not_confirmed_keeps_the_previous_ruleset(fw, monkeypatch, testmode):
    monkeypatch.setattr(firewall, "plan", lambda *args: a_plan())
    monkeypatch.setattr(
        deadman, "replace_confirmed", Calls("no peer answered: the previous ruleset is restored")
    )
    ret = fw.applied("inet minicl")
    if testmode:
        assert ret["result"] is None
    else:
        assert ret["result"] is False and ret["comment"].startswith("no peer answered")
        assert not pathlib.Path(firewall.PERSIST_PATH).exists()


def test_firewall_break_glass_fails_loudly_and_opens_the_next_boot(fw, testmode):
    pathlib.Path(firewall.BREAK_GLASS_PATH).write_text("")
    ret = fw.applied("inet minicl")
    assert ret["result"] is False and "break-glass" in ret["comment"]
    saved = pathlib.Path(firewall.PERSIST_PATH)
    assert saved.exists() is (not testmode)


def test_firewall_errors_are_a_failed_state_not_a_traceback(fw, monkeypatch):
    monkeypatch.setattr(firewall, "plan", Calls(firewall.FirewallError("nft rejects the ruleset: boom")))
    ret = fw.applied("inet minicl")
    assert ret == {
        "name": "inet minicl",
        "result": False,
        "changes": {},
        "comment": "table inet minicl: nft rejects the ruleset: boom",
    }


def test_firewall_bad_local_rules_change_nothing(fw, monkeypatch):
    pathlib.Path(firewall.LOCAL_RULES_PATH).write_text("flush ruleset\n")
    monkeypatch.setattr(firewall, "plan", Calls(AssertionError("planned anyway")))
    ret = fw.applied("inet minicl")
    assert ret["result"] is False and ret["comment"].startswith("table inet minicl not changed:")


# -- minicl_sshd.hardened ------------------------------------------------------------------


@pytest.fixture
def sshd_state(tmp_path, monkeypatch, testmode):
    monkeypatch.setattr(sshd, "login_guard", lambda users, group, converged: (True, ""))
    monkeypatch.setattr(sshd, "listening_ports", lambda: [22])
    monkeypatch.setattr(sshd, "check_candidate", Calls(None))
    monkeypatch.setattr(sshd, "reload_sshd", Calls("sshd reloaded"))
    monkeypatch.setattr(sshd, "live_settings", lambda: {})
    monkeypatch.setattr(firewall, "live", lambda: (None, ""))
    return load_state("minicl_sshd", testmode), str(tmp_path / "00-minicl.conf")


def test_sshd_dropin_written_after_the_check_and_reloaded(sshd_state, testmode):
    state, path = sshd_state
    ret = state.hardened(path)
    assert "+PasswordAuthentication no" in ret["changes"]["diff"]
    assert len(sshd.check_candidate) == 1
    if testmode:
        assert ret["result"] is None and not pathlib.Path(path).exists() and sshd.reload_sshd == []
    else:
        assert ret["result"] is True and ret["comment"] == f"{path} updated; sshd reloaded"
        assert "PasswordAuthentication no" in pathlib.Path(path).read_text()


def test_sshd_in_place_checks_the_running_daemon(sshd_state, monkeypatch):
    state, path = sshd_state
    pathlib.Path(path).write_text(sshd.render_dropin(True, sshd.NO_ADMIN, 22))
    monkeypatch.setattr(sshd, "differences", lambda settings, admins, port: ["passwordauthentication yes"])
    ret = state.hardened(path)
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == f"{path} is as it should be, but sshd runs with: passwordauthentication yes"
    monkeypatch.setattr(sshd, "differences", lambda settings, admins, port: [])
    assert state.hardened(path)["result"] is True


def test_sshd_refuses_to_lock_out_the_admins(sshd_state, monkeypatch, testmode):
    state, path = sshd_state
    monkeypatch.setattr(sshd, "login_guard", lambda users, group, converged: (False, "Refusing to disable. "))
    ret = state.hardened(path)
    assert ret["result"] is False and ret["comment"].startswith("Refusing to disable. ")
    if not testmode:
        assert "PasswordAuthentication no" not in pathlib.Path(path).read_text()


def test_sshd_rejected_candidate_changes_nothing(sshd_state, monkeypatch):
    state, path = sshd_state
    monkeypatch.setattr(sshd, "check_candidate", Calls(sshd.CheckFailed("sshd -t: bad option")))
    ret = state.hardened(path)
    assert ret["result"] is False and ret["comment"] == f"{path} not changed: sshd -t: bad option"
    assert not pathlib.Path(path).exists() and sshd.reload_sshd == []


def test_sshd_does_not_move_to_a_port_the_firewall_keeps_closed(sshd_state, monkeypatch):
    state, path = sshd_state
    cluster = dict(EXAMPLE, firewall=dict(EXAMPLE["firewall"], ssh_port=2222))
    state.__pillar__ = {"minicl": {"cluster": cluster, "host": {"name": "alpha"}}}
    monkeypatch.setattr(firewall, "live", lambda: ("x", "table inet minicl { tcp dport 22 accept }"))
    monkeypatch.setattr(firewall, "ssh_ports_open", lambda listing: {22})
    ret = state.hardened(path)
    assert (
        ret["result"] is False and "until the firewall (table inet minicl) opens port 2222" in ret["comment"]
    )


# -- minicl_mail -------------------------------------------------------------------------


@pytest.fixture
def mail_state(testmode):
    return load_state("minicl_mail", testmode)


def test_aliases_written_and_rebuilt(mail_state, tmp_path, monkeypatch, testmode):
    monkeypatch.setattr(mail, "system_accounts", lambda: ["root", "www-data"])
    newaliases = Calls(subprocess.CompletedProcess(["newaliases"], 0, "", ""))
    monkeypatch.setattr(subprocess, "run", newaliases)
    path = tmp_path / "aliases"
    ret = mail_state.aliases(str(path))
    assert "+root:" in ret["changes"]["diff"] and ret["changes"]["newaliases"]
    if testmode:
        assert ret["result"] is None and not path.exists() and newaliases == []
    else:
        assert ret["result"] is True and "root:" in path.read_text()
        assert newaliases == [(["newaliases"],)]


def test_aliases_newaliases_failure_is_reported(mail_state, tmp_path, monkeypatch, testmode):
    monkeypatch.setattr(mail, "system_accounts", lambda: [])
    monkeypatch.setattr(subprocess, "run", Calls(subprocess.CompletedProcess([], 1, "", "newaliases: fatal")))
    ret = mail_state.aliases(str(tmp_path / "aliases"))
    assert ret["result"] is (None if testmode else False)
    if not testmode:
        assert ret["comment"] == "newaliases failed: newaliases: fatal"


def test_sasl_passwd_never_shows_the_password(mail_state, tmp_path, monkeypatch, testmode):
    monkeypatch.setattr(subprocess, "run", Calls(subprocess.CompletedProcess([], 0, "", "")))
    monkeypatch.setattr(mail.os, "chown", Calls(None))  # root:root, also when the tests are not root
    path = tmp_path / "sasl_passwd"
    ret = mail_state.sasl_passwd(str(path))
    assert EXAMPLE["smtp"]["password"] not in json.dumps(ret)
    assert ret["changes"]["credentials"].endswith("(content hidden)")
    if testmode:
        assert ret["result"] is None and not path.exists()
    else:
        assert ret["result"] is True and path.stat().st_mode & 0o777 == 0o600
        assert EXAMPLE["smtp"]["password"] in path.read_text()


def test_sasl_passwd_postmap_failure(mail_state, tmp_path, monkeypatch, testmode):
    monkeypatch.setattr(subprocess, "run", Calls(subprocess.CompletedProcess([], 1, "", "postmap: fatal")))
    monkeypatch.setattr(mail.os, "chown", Calls(None))
    ret = mail_state.sasl_passwd(str(tmp_path / "sasl_passwd"))
    assert ret["result"] is (None if testmode else False)
    if not testmode:
        assert ret["comment"].endswith("failed: postmap: fatal")


@pytest.mark.parametrize(
    "func, check, act",
    [
        ("postfix_preseeded", "package_installed", "preseed_postfix"),
        ("ca_trusted", "ca_trusted", "trust_cas"),
    ],
)
def test_python_checked_steps(mail_state, monkeypatch, testmode, func, check, act):
    monkeypatch.setattr(mail, check, lambda *args: True)
    acted = Calls(None)
    monkeypatch.setattr(mail, act, acted)
    done = getattr(mail_state, func)("x")
    assert done["result"] is True and done["changes"] == {} and acted == []

    monkeypatch.setattr(mail, check, lambda *args: False)
    todo = getattr(mail_state, func)("x")
    assert todo["changes"]
    if testmode:
        assert todo["result"] is None and acted == []
    else:
        assert todo["result"] is True and len(acted) == 1

    monkeypatch.setattr(
        mail, act, Calls(subprocess.CalledProcessError(1, ["x"], stderr="E: dpkg was interrupted"))
    )
    failed = getattr(mail_state, func)("x")
    if testmode:
        assert failed["result"] is None
    else:
        assert failed["result"] is False and failed["comment"].endswith("failed: E: dpkg was interrupted")


# -- minicl_users.managed ----------------------------------------------------------------


@pytest.fixture
def users_state(monkeypatch, testmode):
    monkeypatch.setattr(accounts.Registry, "load", classmethod(lambda cls, path=None: accounts.Registry()))
    monkeypatch.setattr(accounts.Snapshot, "read", classmethod(lambda cls, root="/": None))
    return load_state("minicl_users", testmode)


def test_users_plans_are_shown_then_applied(users_state, monkeypatch, testmode):
    plans = [
        accounts.Plan("alice", True, changes={"created": "uid 2001"}),
        accounts.Plan("bob", True, conflict="a local account bob (uid 1000) is not minicl's"),
    ]
    monkeypatch.setattr(accounts, "plan_all", lambda *args: plans)
    applied = Calls(None)
    monkeypatch.setattr(accounts, "apply_plan", applied)
    ret = users_state.managed("cluster users", users=EXAMPLE["users"])
    assert ret["result"] is False  # bob fails alone
    assert "bob: a local account bob (uid 1000) is not minicl's" in ret["comment"]
    assert ret["changes"] == {"alice": {"created": "uid 2001"}}
    assert applied == ([] if testmode else [(plans[0], applied[0][1])])


def test_users_without_changes(users_state, monkeypatch):
    monkeypatch.setattr(accounts, "plan_all", lambda *args: [])
    ret = users_state.managed("cluster users", users=EXAMPLE["users"])
    assert ret["result"] is True and ret["changes"] == {}


def test_users_apply_failure_fails_that_user_only(users_state, monkeypatch, testmode):
    plans = [
        accounts.Plan("alice", True, changes={"created": "uid 2001"}),
        accounts.Plan("carol", True, changes={"created": "uid 2003"}),
    ]
    monkeypatch.setattr(accounts, "plan_all", lambda *args: plans)

    def apply(plan, registry):
        if plan.name == "alice":
            raise accounts.ApplyError("useradd: exit 9")

    monkeypatch.setattr(accounts, "apply_plan", apply)
    ret = users_state.managed("cluster users", users=EXAMPLE["users"])
    if testmode:
        assert ret["result"] is None and set(ret["changes"]) == {"alice", "carol"}
    else:
        assert ret["result"] is False and set(ret["changes"]) == {"carol"}
        assert "alice: useradd: exit 9" in ret["comment"]


# -- minicl_postgresql -------------------------------------------------------------------

APP = {"name": "db", "type": "postgresql", "hosts": ["alpha", "beta"], "host": "beta",
       "primary": "alpha", "peers": {"alpha": ["198.51.100.11"]}, "databases": {"shop": {"owner": "alice"}}}  # fmt: skip


@pytest.fixture
def pg_state(monkeypatch, testmode):
    from minicl.appliances import pgfailover as pgf
    from minicl.appliances import postgresql as pg

    calls = []
    monkeypatch.setattr(
        pg, "systemctl", lambda *args, check=True: calls.append(args) or subprocess.CompletedProcess(args, 0)
    )
    monkeypatch.setattr(pg, "write_files", lambda changed: calls.append(("write", sorted(changed))))
    monkeypatch.setattr(pg, "clone_from", lambda app, host, upstream: calls.append(("clone", host, upstream)))
    monkeypatch.setattr(pg, "wait_ready", lambda seconds=30: True)
    monkeypatch.setattr(pg, "starts_at_boot", lambda: True)
    monkeypatch.setattr(pg, "running", lambda: True)
    monkeypatch.setattr(pg, "psql", lambda sql, database="postgres", check=True: calls.append(("sql", sql)))
    monkeypatch.setattr(pgf, "fence_if_superseded", lambda app: calls.append(("fence check",)))
    monkeypatch.setattr(pgf, "local_server", lambda app: pgf.Server("beta", True, 0, True))
    monkeypatch.setattr(pgf, "peer_servers", lambda app: {"alpha": pgf.Server("alpha", False, 1, True)})
    monkeypatch.setattr(pgf, "primary_changes", lambda app, local: {})
    monkeypatch.setattr(pgf, "apply_primary_changes", lambda app, todo: calls.append(("primary changes",)))
    state = load_state("minicl_postgresql", testmode,
                       {"minicl": {"apps": {"db": APP}, "host": {"name": "beta"}}})  # fmt: skip
    return state, pg, pgf, calls


def test_postgresql_new_standby_is_cloned_and_started(pg_state, monkeypatch, testmode):
    state, pg, pgf, calls = pg_state
    monkeypatch.setattr(
        pg, "file_changes", lambda app, host, upstream: {pg.PGPASS: "*:5432:*:minicl_replica:SECRET\n"}
    )
    monkeypatch.setattr(pg, "running", lambda: False)
    monkeypatch.setattr(pgf, "local_server", lambda app: None)
    monkeypatch.setattr(pg, "is_standby_data", lambda: False)
    monkeypatch.setattr(pg, "starts_at_boot", lambda: False)  # a fresh host
    ret = state.running("db")
    assert "SECRET" not in json.dumps(ret)
    assert ret["changes"][pg.PGPASS] == "(content hidden)"
    assert ret["changes"]["standby"] == "cloned from alpha (198.51.100.11): a new standby"
    if testmode:
        assert ret["result"] is None and calls == []
    else:
        assert ret["result"] is True
        assert ("write", [pg.PGPASS]) in calls and ("clone", "beta", "alpha") in calls
        assert ("enable", pg.BOOT_UNIT) in calls and ("start", pg.SERVICE) in calls
        assert calls.index(("fence check",)) < calls.index(("start", pg.SERVICE))


def test_postgresql_as_configured_changes_nothing(pg_state, monkeypatch):
    state, pg, pgf, calls = pg_state
    monkeypatch.setattr(pg, "file_changes", lambda app, host, upstream: {})
    ret = state.running("db")
    assert ret["result"] is True and ret["changes"] == {} and calls == []
    assert ret["comment"] == "postgresql@15-main runs app db as its standby"


def test_postgresql_promoted_standby_stays_primary(pg_state, monkeypatch, testmode):
    state, pg, pgf, calls = pg_state
    monkeypatch.setattr(pgf, "local_server", lambda app: pgf.Server("beta", False, 2, True))
    monkeypatch.setattr(pgf, "peer_servers", lambda app: {"alpha": None})
    monkeypatch.setattr(pgf, "primary_changes", lambda app, local: {"replication slots": ["minicl_alpha"]})
    seen = []
    monkeypatch.setattr(pg, "file_changes", lambda app, host, upstream: seen.append(upstream) or {})
    ret = state.running("db")
    assert seen == [""]  # no standby settings: it follows no one
    assert ret["changes"] == {"replication slots": ["minicl_alpha"]} and "as its primary" in ret["comment"]
    assert (("primary changes",) in calls) is (not testmode) and not any(c[0] == "clone" for c in calls)


def test_postgresql_config_change_restarts(pg_state, monkeypatch, testmode):
    state, pg, pgf, calls = pg_state
    monkeypatch.setattr(
        pg, "file_changes", lambda app, host, upstream: {pg.CONF_FILE: "listen_addresses = '*'\n"}
    )
    ret = state.running("db")
    assert "+listen_addresses = '*'" in ret["changes"][pg.CONF_FILE]
    if testmode:
        assert ret["result"] is None and ("restart", pg.SERVICE) not in calls
    else:
        assert ret["result"] is True and ("restart", pg.SERVICE) in calls


def test_postgresql_standby_settings_change_reloads(pg_state, monkeypatch, testmode):
    state, pg, pgf, calls = pg_state
    monkeypatch.setattr(state, "read_file", lambda path: "listen_addresses = '*'\nprimary_slot_name = 'a'\n")
    monkeypatch.setattr(
        pg, "file_changes", lambda app, host, upstream: {pg.CONF_FILE: "listen_addresses = '*'\n"}
    )
    ret = state.running("db")
    assert ret["result"] is (None if testmode else True) and ("restart", pg.SERVICE) not in calls
    assert (("reload", pg.SERVICE) in calls) is (not testmode)


def test_postgresql_clone_refused_is_a_failed_state(pg_state, monkeypatch, testmode):
    state, pg, pgf, calls = pg_state
    monkeypatch.setattr(pg, "file_changes", lambda app, host, upstream: {})
    monkeypatch.setattr(pgf, "local_server", lambda app: pgf.Server("beta", False, 1, False))

    def refuse(app, host, upstream):
        raise pg.ApplianceError("its PostgreSQL holds databases of its own (shop)")

    monkeypatch.setattr(pg, "clone_from", refuse)
    ret = state.running("db")
    if testmode:
        assert ret["result"] is None
    else:
        assert ret == {"name": "db", "result": False, "changes": {},
                       "comment": "postgresql app db: its PostgreSQL holds databases of its own (shop)"}  # fmt: skip


def test_postgresql_databases_on_the_primary(pg_state, monkeypatch, testmode):
    state, pg, _, calls = pg_state
    monkeypatch.setattr(pg, "in_recovery", lambda: False)
    monkeypatch.setattr(
        pg, "database_changes", lambda app: [("database shop owned by alice", "CREATE DATABASE")]
    )
    monkeypatch.setattr(pg, "forgotten_databases", lambda app: ["old"])
    monkeypatch.setattr(pg, "monitor_role_changes", lambda: [])
    ret = state.databases("db")
    assert ret["changes"] == {"created": ["database shop owned by alice"]}
    assert ret["comment"].endswith("not in cluster.json any more, and left as they are: old")
    assert ret["result"] is (None if testmode else True)
    assert (("sql", "CREATE DATABASE") in calls) is (not testmode)


def test_postgresql_exporter_role_on_the_primary(pg_state, monkeypatch, testmode):
    state, pg, _, calls = pg_state
    monkeypatch.setattr(pg, "in_recovery", lambda: False)
    monkeypatch.setattr(pg, "database_changes", lambda app: [])
    monkeypatch.setattr(pg, "forgotten_databases", lambda app: [])
    monkeypatch.setattr(pg, "monitor_role_changes", lambda: [("role prometheus (pg_monitor)", "CREATE ROLE")])
    ret = state.databases("db")
    assert ret["changes"] == {"created": ["role prometheus (pg_monitor)"]}
    if testmode:
        assert ret["result"] is None and ret["comment"] == "1 change(s) would be made" and calls == []
    else:
        assert ret["result"] is True and calls == [("sql", "CREATE ROLE")]
    monkeypatch.setattr(pg, "monitor_role_changes", lambda: [])
    assert state.databases("db") == {
        "name": "db", "result": True, "changes": {}, "comment": "databases as cluster.json says"
    }  # fmt: skip


def test_postgresql_databases_on_a_standby_are_replicated(pg_state, monkeypatch):
    state, pg, _, calls = pg_state
    monkeypatch.setattr(pg, "in_recovery", lambda: True)
    ret = state.databases("db")
    assert ret["result"] is True and ret["changes"] == {} and "replicated from the primary" in ret["comment"]


# -- minicl_redis ---------------------------------------------------------------------------

CACHE = {"name": "cache", "type": "redis", "hosts": ["alpha", "beta"], "host": "beta", "primary": "alpha",
         "peers": {"alpha": ["198.51.100.11"]}, "addresses": ["198.51.100.12"], "maxmemory": "256mb"}  # fmt: skip


@pytest.fixture
def redis_state(monkeypatch, tmp_path, testmode):
    from minicl.appliances import redis

    calls = []
    monkeypatch.setattr(redis, "password", lambda app: "SECRET")
    monkeypatch.setattr(redis, "CONF_FILE", str(tmp_path / "minicl.conf"))
    monkeypatch.setattr(redis, "MAIN_CONF", str(tmp_path / "redis.conf"))
    monkeypatch.setattr(
        redis,
        "systemctl",
        lambda *args, check=True: calls.append(args) or subprocess.CompletedProcess(args, 0),
    )
    monkeypatch.setattr(redis, "write_files", lambda changed: calls.append(("write", sorted(changed))))
    monkeypatch.setattr(redis, "wait_ready", lambda app, seconds=30: True)
    monkeypatch.setattr(redis, "cli", lambda app, *args, **kwargs: calls.append(("cli", *args)) or "OK")
    state = load_state(
        "minicl_redis", testmode, {"minicl": {"apps": {"cache": CACHE}, "host": {"name": "beta"}}}
    )
    return state, redis, calls


def a_redis_plan(redis, **changes):
    fields = dict(decision=redis.Decision("replica", "alpha", why="the only primary that answers"), files={},
                  enable=False, start=False, restart=False, runtime=[], drop_promotion=False)  # fmt: skip
    fields.update(changes)
    return redis.Plan(**fields)


def test_redis_new_replica_is_configured_and_started_without_showing_the_password(
    redis_state, monkeypatch, testmode
):
    state, redis, calls = redis_state
    wanted = redis.render_conf(CACHE, redis.Decision("replica", "alpha"))
    todo = a_redis_plan(
        redis, files={redis.CONF_FILE: wanted, redis.MAIN_CONF: "include x\n"}, enable=True, start=True
    )
    monkeypatch.setattr(redis, "plan", lambda app: todo)
    monkeypatch.setattr(redis, "server", lambda app, *a, **k: redis.Server("replica", "198.51.100.11"))
    ret = state.running("cache")
    assert "SECRET" not in json.dumps(ret)
    assert "+requirepass (hidden)" in ret["changes"][redis.CONF_FILE]
    assert "+replicaof 198.51.100.11 6379" in ret["changes"][redis.CONF_FILE]
    assert ret["changes"][redis.MAIN_CONF] == "include /etc/redis/minicl.conf as its last line"
    assert ret["changes"]["service"] == "redis-server running and started at boot"
    assert "(replica of alpha: the only primary that answers)" in ret["comment"]
    if testmode:
        assert ret["result"] is None and calls == []
    else:
        assert ret["result"] is True
        assert calls == [("write", [redis.CONF_FILE, redis.MAIN_CONF]), ("enable", "redis-server"),
                         ("start", "redis-server")]  # fmt: skip


def test_redis_as_configured_changes_nothing(redis_state, monkeypatch):
    state, redis, calls = redis_state
    monkeypatch.setattr(redis, "plan", lambda app: a_redis_plan(redis))
    ret = state.running("cache")
    assert ret == {"name": "cache", "result": True, "changes": {},
                   "comment": "redis-server runs app cache as configured (replica of alpha)"}  # fmt: skip
    assert calls == []


def test_redis_a_password_change_is_hidden_and_restarts(redis_state, monkeypatch, testmode, tmp_path):
    state, redis, calls = redis_state
    (tmp_path / "minicl.conf").write_text("requirepass OLDSECRET\n")
    monkeypatch.setattr(
        redis,
        "redacted",
        lambda app, text: text.replace("OLDSECRET", "(hidden)").replace("SECRET", "(hidden)"),
    )
    todo = a_redis_plan(redis, files={redis.CONF_FILE: "requirepass SECRET\n"}, restart=True)
    monkeypatch.setattr(redis, "plan", lambda app: todo)
    monkeypatch.setattr(redis, "server", lambda app, *a, **k: redis.Server("replica", "198.51.100.11"))
    ret = state.running("cache")
    assert ret["changes"][redis.CONF_FILE] == "(the password changed; content hidden)"
    assert "SECRET" not in json.dumps(ret)
    assert (("restart", "redis-server") in calls) is (not testmode)


def test_redis_role_changes_at_runtime_and_drops_an_old_promotion(
    redis_state, monkeypatch, testmode, tmp_path
):
    state, redis, calls = redis_state
    marker = tmp_path / "promoted"
    marker.write_text('{"epoch": 5}\n')
    monkeypatch.setattr(redis, "marker_path", lambda app: str(marker))
    todo = a_redis_plan(
        redis,
        decision=redis.Decision("replica", "alpha", why="the most recently promoted primary (at 9)"),
        runtime=[("REPLICAOF alpha", ["REPLICAOF", "198.51.100.11", "6379"])],
        drop_promotion=True,
    )
    monkeypatch.setattr(redis, "plan", lambda app: todo)
    monkeypatch.setattr(redis, "server", lambda app, *a, **k: redis.Server("replica", "198.51.100.11"))
    ret = state.running("cache")
    assert (
        ret["changes"]["role"]
        == "replica of alpha (the most recently promoted primary (at 9)): REPLICAOF alpha"
    )
    assert "promotion record dropped" in ret["changes"]["promotion"]
    if testmode:
        assert ret["result"] is None and marker.exists() and calls == []
    else:
        assert ret["result"] is True and not marker.exists()
        assert ("cli", "REPLICAOF", "198.51.100.11", "6379") in calls


def test_redis_a_server_that_does_not_take_its_role_is_a_failed_state(redis_state, monkeypatch, testmode):
    state, redis, calls = redis_state
    todo = a_redis_plan(redis, runtime=[("REPLICAOF alpha", ["REPLICAOF", "198.51.100.11", "6379"])])
    monkeypatch.setattr(redis, "plan", lambda app: todo)
    monkeypatch.setattr(redis, "server", lambda app, *a, **k: redis.Server("primary"))
    ret = state.running("cache")
    if testmode:
        assert ret["result"] is None
    else:
        assert ret == {"name": "cache", "result": False, "changes": {},
                       "comment": "redis app cache: the server should be the replica of alpha but says primary"}  # fmt: skip


def test_redis_plan_errors_are_a_failed_state(redis_state, monkeypatch):
    state, redis, _ = redis_state

    def broken(app):
        raise redis.ApplianceError("cannot read /etc/minicl/deploy.key")

    monkeypatch.setattr(redis, "plan", broken)
    ret = state.running("cache")
    assert ret["result"] is False and ret["comment"] == "redis app cache: cannot read /etc/minicl/deploy.key"
