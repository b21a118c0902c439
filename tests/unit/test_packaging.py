"""Everything Salt needs is shipped by a regular (non-editable) pip install."""

import configparser
import glob
import os
import pathlib

from minicl import saltext

ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_files():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    shipped = set()
    for patterns in cfg["options.data_files"].values():
        for pattern in patterns.split():
            for path in glob.glob(str(ROOT / pattern)):
                shipped.add(os.path.relpath(path, ROOT))
    return shipped


def test_every_loader_module_and_sls_file_is_shipped():
    wanted = set()
    for folder in ("_modules", "_states", "_pillar", "_grains", "_returners", "states"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".sls"):
                wanted.add(str(path.relative_to(ROOT)))
    assert wanted - data_files() == set()


def test_entry_point_finds_the_loader_folders():
    dirs = saltext.loader_dirs()
    for kind in ("modules", "pillar", "grains", "returners"):
        assert os.path.isfile(os.path.join(dirs[kind][0], "minicl.py"))
    assert os.path.isfile(os.path.join(saltext.states_dir(), "top.sls"))


def test_every_public_execution_function_has_a_cli_example():
    import ast

    missing = []
    for path in sorted((ROOT / "_modules").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                if "CLI Example" not in (ast.get_docstring(node) or ""):
                    missing.append(f"{path.name}: {node.name}")
    assert missing == []
