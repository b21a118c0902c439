"""What every minicl state function shares: its return, the diff it shows, and the rule that a
minicl error ends as ``result: False`` with its message, never as a traceback.

    @statekit.guarded
    def applied(name):
        ret = statekit.new_ret(name)
        ...
"""

import difflib
import functools
import subprocess

from minicl.errors import MiniclError


def new_ret(name, result=True):
    return {"name": name, "result": result, "changes": {}, "comment": ""}


def diff(current, wanted, fromfile, tofile):
    """A unified diff of two texts, for a state's ``changes``."""
    return "".join(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True), fromfile, tofile))


def failure(exc):
    """What went wrong, for a person: a command's own error output, else the error's message."""
    return ((getattr(exc, "stderr", None) or "").strip() or str(exc)).strip()


def guarded(func=None, *, label="{name}"):
    """A state function whose minicl errors, OS errors and failed commands become
    ``result: False`` with ``<label>: <what went wrong>`` as the comment (``label`` may use
    ``{name}``: ``@guarded(label="table {name}")``)."""
    if func is None:
        return functools.partial(guarded, label=label)

    @functools.wraps(func)
    def state(name, *args, **kwargs):
        try:
            return func(name, *args, **kwargs)
        except (MiniclError, OSError, subprocess.CalledProcessError) as exc:
            comment = f"{label.format(name=name)}: {failure(exc)}"
            return {"name": name, "result": False, "changes": {}, "comment": comment}

    return state
