"""A state module of _states/ loaded as Salt's loader would, with the dunders a test gives it."""

import importlib.util
import pathlib

STATES = pathlib.Path(__file__).resolve().parents[2] / "_states"


def load_state(name, test, pillar=None):
    """_states/<name>.py as a fresh module with ``__opts__["test"] = test`` and ``__pillar__``."""
    spec = importlib.util.spec_from_file_location(f"state_{name}_under_test", STATES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = {"test": test}
    module.__pillar__ = {} if pillar is None else pillar
    return module
