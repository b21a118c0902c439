"""A state or execution module (_states/, _modules/) loaded as Salt's loader would, with the
dunders a test gives it."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(folder, name, test, pillar):
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}_under_test", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = {"test": test, "file_client": "local"}  # masterless, as minicl's hosts run
    module.__pillar__ = {} if pillar is None else pillar
    module.__context__ = {}
    return module


def load_state(name, test, pillar=None):
    """_states/<name>.py as a fresh module with ``__opts__["test"] = test`` (masterless) and
    ``__pillar__``."""
    return _load("_states", name, test, pillar)


def load_execution(name, pillar=None):
    """_modules/<name>.py as a fresh module with ``__pillar__`` and an empty ``__context__``."""
    return _load("_modules", name, False, pillar)
