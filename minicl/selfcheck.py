"""A new minicl release checks itself on this host before it becomes current.

Run with the new release's python (minicl.selfupdate does)::

    /opt/minicl/releases/<name>/bin/python -m minicl.selfcheck --id alpha

It loads its own Salt modules (every execution, state, pillar... module of minicl must load),
validates the live cluster.json with its own code, and renders and runs this host's whole
highstate with ``test=True``: its pillar (made by its own code), its own SLS files and state
modules, and the live checkout's roles. Nothing is changed on the host, and the host's own
runs are neither waited for nor disturbed: the check has a Salt config, cache and pillar of its
own in a private folder, removed afterwards. Prints one JSON object ({"ok", "problems",
"states", "would_change"}) and exits 0 when the release may become current.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

from minicl import hostview, paths, saltext
from minicl.config import ConfigError, load_cluster
from minicl.files import write_file

TIMEOUT = 900
PROBLEMS_SHOWN = 20


def repo_files(checkout):
    files = []
    for folder, dirs, names in os.walk(checkout):
        dirs.sort()
        files += [os.path.relpath(os.path.join(folder, name), checkout) for name in sorted(names)]
    return files


def own_loader_modules():
    """{kind: [module names]} minicl ships, by Salt loader kind, as its files name them."""
    found = {}
    for kind, folders in saltext.loader_dirs().items():
        for folder in folders:
            found.setdefault(kind, []).extend(
                name[:-3] for name in sorted(os.listdir(folder)) if name.endswith(".py")
            )
    return found


def salt_config(workdir, minion_id, live):
    """A Salt minion config of the check's own: this release's states and the live roles, a
    pillar from a private file, nothing shared with the host's runs."""
    return {
        "id": minion_id,
        "file_client": "local",
        "master_type": "disable",
        "file_roots": {"base": [saltext.states_dir(), live]},
        "pillar_roots": {"base": [os.path.join(workdir, "pillar")]},
        "cachedir": os.path.join(workdir, "cache"),
        "pki_dir": os.path.join(workdir, "pki"),
        "sock_dir": os.path.join(workdir, "sock"),
        "log_file": os.path.join(workdir, "minion.log"),
        "autoload_dynamic_modules": False,
        "grains_cache": False,
    }


def prepare(workdir, minion_id, pillar, live):
    os.makedirs(os.path.join(workdir, "pillar"), mode=0o700)
    write_file(os.path.join(workdir, "minion"), yaml.safe_dump(salt_config(workdir, minion_id, live)), 0o600)
    write_file(os.path.join(workdir, "pillar", "top.sls"), "base:\n  '*':\n    - minicl\n", 0o600)
    # The pillar holds password hashes and the relay's password: a 0600 file, never argv.
    write_file(os.path.join(workdir, "pillar", "minicl.sls"), "#!json\n" + json.dumps(pillar), 0o600)


def salt_call(workdir, *args):
    salt = os.path.join(os.path.dirname(sys.executable), "salt-call")
    result = subprocess.run(
        [salt, "-c", workdir, "--local", "--out=json", "--log-level=quiet", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )
    try:
        return json.loads(result.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        said = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"salt-call {args[0]} gave no result (exit {result.returncode}): {' / '.join(said)}"
        ) from None


def unloaded_modules(workdir):
    """minicl's loader modules that Salt did not load, as "<kind> <name>"."""
    listing = {
        "modules": salt_call(workdir, "sys.list_modules"),
        "states": salt_call(workdir, "sys.list_state_modules"),
        "returners": salt_call(workdir, "sys.list_returners"),
    }
    missing = []
    for kind, names in own_loader_modules().items():
        if kind in listing:
            missing += [f"{kind} {name}" for name in names if name not in listing[kind]]
    return missing


def highstate_problems(result):
    """(problems, states, would_change) of a ``state.apply test=True`` result."""
    if not isinstance(result, dict):
        lines = result if isinstance(result, list) else [str(result)]
        # Salt quotes the template around the error: its first line says what and where.
        return (
            [
                f"the highstate does not render: {str(line).splitlines()[0]}"
                for line in lines
                if str(line).strip()
            ],
            0,
            0,
        )
    problems, would_change = [], 0
    for key, state in sorted(result.items(), key=lambda item: item[1].get("__run_num__", 0)):
        if state.get("result") is False:
            sls = state.get("__sls__", "?")
            problems.append(f"{sls}: {key.split('_|-')[1]}: {' '.join(str(state.get('comment')).split())}")
        elif state.get("result") is None or state.get("changes"):
            would_change += 1
    return problems, len(result), would_change


def check(minion_id, cache_dir, applied_file):
    live = os.path.join(cache_dir, "live")
    try:
        with open(os.path.join(live, "cluster.json"), encoding="utf-8") as f:
            cluster = load_cluster(f.read(), source="cluster.json (live)", repo_files=repo_files(live))
    except ConfigError as exc:
        return {"ok": False, "problems": [str(p) for p in exc.problems]}
    cluster.commit = os.path.basename(os.path.realpath(live))
    pillar = hostview.pillar_for(cluster, minion_id, {"ok": True, "commit": cluster.commit}, applied_file)
    if pillar is None:
        return {"ok": False, "problems": [f"this host ({minion_id}) is not in the live cluster.json"]}
    workdir = tempfile.mkdtemp(prefix="selfcheck-", dir=cache_dir)
    try:
        prepare(workdir, minion_id, pillar, live)
        missing = unloaded_modules(workdir)
        if missing:
            return {"ok": False, "problems": [f"Salt did not load minicl's {name}" for name in missing]}
        problems, states, would_change = highstate_problems(salt_call(workdir, "state.apply", "test=True"))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "problems": [str(exc)]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "ok": not problems and states > 0,
        "problems": problems[:PROBLEMS_SHOWN]
        + ([f"... and {len(problems) - PROBLEMS_SHOWN} more"] if len(problems) > PROBLEMS_SHOWN else []),
        "states": states,
        "would_change": would_change,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minicl.selfcheck")
    parser.add_argument("--id", required=True, help="this host's minion id")
    parser.add_argument("--cache-dir", default=paths.STATE_DIR)
    parser.add_argument("--applied-file", default=paths.APPLIED_FILE)
    args = parser.parse_args(argv)
    result = check(args.id, args.cache_dir, args.applied_file)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
