"""The render check against Salt's own renderers: a checkout's SLS files with a given pillar."""

import pathlib

import pytest
import salt.config

from minicl.rendercheck import RenderCheck, render_problems
from minicl.saltext import states_dir

GOOD = "web-marker:\n  test.nop:\n    - name: {{ pillar['minicl']['host']['name'] }}\n"


@pytest.fixture
def opts(tmp_path):
    conf = tmp_path / "minion"
    conf.write_text(
        f"file_client: local\nroot_dir: {tmp_path}\ncachedir: {tmp_path}/cache\n"
        f"log_file: {tmp_path}/log\nautoload_dynamic_modules: False\n"
    )
    options = salt.config.minion_config(str(conf))
    options["grains"] = {"id": "alpha", "os_family": "Debian"}
    return options


def checkout(tmp_path, files):
    root = tmp_path / "checkout"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def pillar(states):
    return {"minicl": {"host": {"name": "alpha"}, "states": states, "status": {"ok": True}}}


def problems(opts, tmp_path, files, states):
    root = checkout(tmp_path, files)
    return render_problems(opts, [root], pillar(states), states, root)


def test_roles_that_render_have_no_problems(opts, tmp_path):
    assert (
        problems(
            opts,
            tmp_path,
            {"roles/web/init.sls": GOOD, "roles/db.sls": "x:\n  test.nop: []\n"},
            ["roles.web", "roles.db"],
        )
        == {}
    )


def test_a_jinja_error_names_the_file_and_line(opts, tmp_path):
    found = problems(
        opts,
        tmp_path,
        {"roles/web/init.sls": "{% if %}\n" + GOOD, "roles/db.sls": GOOD},
        ["roles.web", "roles.db"],
    )
    assert list(found) == ["roles.web"]
    assert found["roles.web"].startswith(
        "roles/web/init.sls: Rendering SLS 'base:roles.web' failed: Jinja syntax error"
    )
    assert "line 1" in found["roles.web"]
    assert len(found["roles.web"].splitlines()) <= 8


def test_a_yaml_error_and_a_missing_pillar_key(opts, tmp_path):
    found = problems(
        opts,
        tmp_path,
        {
            "roles/a.sls": "x:\n  test.nop:\n   - name: [x\n",
            "roles/b.sls": "x{{ pillar['minicl']['nope']['x'] }}:\n  test.nop: []\n",
        },
        ["roles.a", "roles.b"],
    )
    assert found["roles.a"].startswith("roles/a.sls: Rendering SLS 'base:roles.a' failed")
    assert found["roles.b"].startswith("roles/b.sls: Rendering SLS 'base:roles.b' failed")
    assert "nope" in found["roles.b"]


def test_a_missing_role_file_and_a_malformed_state(opts, tmp_path):
    found = problems(
        opts, tmp_path, {"roles/bad.sls": "x:\n  test.nop: just a string\n"}, ["roles.gone", "roles.bad"]
    )
    assert "roles.gone" in found and found["roles.gone"].startswith("SLS roles.gone: ")
    assert found["roles.bad"].startswith("roles/bad.sls")


def test_the_check_swaps_live_for_the_candidate(opts, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    opts["file_roots"] = {"base": [states_dir(), str(live)]}
    check = RenderCheck(opts, str(live), lambda cluster: pillar(["roles.web"]) if cluster else None)
    root = checkout(tmp_path, {"roles/web/init.sls": GOOD})
    assert check._roots(root) == [states_dir(), root]
    assert check(root, cluster=True) == {}
    pathlib.Path(root, "roles/web/init.sls").write_text("{% if %}\n")
    assert list(check(root, cluster=True)) == ["roles.web"]
    assert check(root, cluster=None) == {}  # this host is not in that cluster: nothing to check


def test_the_key_follows_the_grains(opts):
    first = RenderCheck(opts, "/nowhere", lambda cluster: None).key
    opts["grains"] = dict(opts["grains"], web_mode="strict")
    assert RenderCheck(opts, "/nowhere", lambda cluster: None).key != first
    second = RenderCheck(opts, "/nowhere", lambda cluster: None).key
    opts["grains"]["pid"] = 4242  # differs in every run
    assert RenderCheck(opts, "/nowhere", lambda cluster: None).key == second


def test_roles_that_include_each_other_render(opts, tmp_path):
    # As minicl.monitor includes minicl.base: one SLS included twice is not a conflict.
    files = {"roles/base.sls": GOOD, "roles/mon.sls": "include:\n  - roles.base\nmon:\n  test.nop: []\n"}
    assert problems(opts, tmp_path, files, ["roles.base", "roles.mon"]) == {}


def test_an_id_in_two_roles_is_a_highstate_problem(opts, tmp_path):
    files = {"roles/a.sls": "same:\n  test.nop: []\n", "roles/b.sls": "same:\n  test.nop: []\n"}
    found = problems(opts, tmp_path, files, ["roles.a", "roles.b"])
    assert list(found) == ["highstate"] and "same" in found["highstate"]


@pytest.mark.parametrize("host", ["watch", "alpha"])  # the monitor; a PostgreSQL primary with its exporter
def test_minicls_own_states_render_with_a_monitor_pillar(opts, tmp_path, host, deploy_key):
    import json

    from minicl import config, hostview

    cluster = config.Cluster(
        json.loads(pathlib.Path(__file__).parents[2].joinpath("cluster.json.example").read_text())
    )
    cluster.commit = "0" * 40
    pillar_data = hostview.pillar_for(cluster, host, {"ok": True, "commit": cluster.commit})
    root = checkout(tmp_path, {"notes.txt": "x\n"})
    assert (
        render_problems(opts, [states_dir(), root], pillar_data, pillar_data["minicl"]["states"], root) == {}
    )
