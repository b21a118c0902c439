"""One problem with cluster.json, and how a problem names where and what.

``Problem`` is what the schema check (``minicl.schema``) and the rules across fields
(``minicl.rules``) both return; ``path_key`` and ``quoted`` write keys and values into its path
and message the same way in both.
"""

import json
import re

SOURCE = "cluster.json"

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Problem:
    """One thing wrong with cluster.json, at a dotted path (``users.bob.uid``)."""

    def __init__(self, path, message, source=SOURCE):
        self.path = path
        self.message = message
        self.source = source

    def __str__(self):
        if self.path:
            return f"{self.source}: {self.path}: {self.message}"
        return f"{self.source}: {self.message}"

    def __repr__(self):
        return f"Problem({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Problem) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


def quoted(text):
    """``text`` as a JSON string, as a problem quotes a name or value."""
    return json.dumps(text, ensure_ascii=False)


def path_key(name):
    """A mapping key as it appears in a problem's path: quoted unless plain (one line, no dots)."""
    return name if _PLAIN_KEY.fullmatch(name) else quoted(name)
