"""cluster.json for its callers: text in, a validated ``Cluster`` or every problem out.

Everything that reads cluster.json goes through here: the external pillar, ``minicl validate``,
the pre-commit hook and ``minicl-bootstrap``.

    cluster = load_cluster(text, repo_files=files)   # raises ConfigError listing every problem
    cluster.host_for_minion("alpha.example.org")      # -> "alpha"
    cluster.addresses()                               # -> {"v4": [...], "v6": [...]}

The work is done beside it: ``minicl.schema`` (the JSON schema and its errors as problems),
``minicl.rules`` (the checks across fields), ``minicl.credentials`` (password hashes, SSH keys),
``minicl.cluster`` (the model) and ``minicl.problems`` (``Problem``). The names other code uses
from those modules are importable from here too.
"""

import json
import re

from minicl.cluster import DEFAULT_SMTP_PORT, MINICL_ROLE_STATES, Cluster, as_list, from_pillar
from minicl.errors import MiniclError
from minicl.problems import SOURCE, Problem
from minicl.rules import host_ip_problem, parse_port_spec, semantic_problems
from minicl.schema import schema_problems

__all__ = [
    "DEFAULT_SMTP_PORT",
    "MINICL_ROLE_STATES",
    "PROBLEM_CHARS",
    "SHOWN_PROBLEMS",
    "SOURCE",
    "Cluster",
    "ConfigError",
    "Problem",
    "as_list",
    "bounded",
    "from_pillar",
    "host_ip_problem",
    "host_snippet",
    "load_cluster",
    "parse_json",
    "parse_port_spec",
    "validate",
]

SHOWN_PROBLEMS = 20  # problems a host records and logs per bad commit
PROBLEM_CHARS = 300  # characters of one problem line in those records


class ConfigError(MiniclError):
    """cluster.json is not usable; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def summary(self, limit=SHOWN_PROBLEMS):
        """The first ``limit`` problems and a count of the rest: what a host's status, pillar
        and log carry (``minicl validate`` prints them all)."""
        lines = [bounded(str(p), PROBLEM_CHARS) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(
                f"... and {len(self.problems) - limit} more problems "
                "('minicl validate cluster.json' in a checkout lists them all)"
            )
        return "\n".join(lines)


def bounded(text, limit):
    """``text``, cut to ``limit`` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def parse_json(text, source=SOURCE):
    """Parse cluster.json text; syntax errors and duplicate keys become a ConfigError."""
    duplicates = []

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [Problem("", f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}", source)]
        ) from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise ConfigError([Problem("", f"invalid JSON: {exc}", source)]) from None
    except RecursionError:
        raise ConfigError([Problem("", "invalid JSON: nested too deeply", source)]) from None
    problems = [
        Problem("", f'key "{key}" appears more than once in one object', source)
        for key in dict.fromkeys(duplicates)
    ]
    if problems:
        raise ConfigError(problems)
    return data


def load_cluster(text, source=SOURCE, repo_files=None):
    """Parse and validate cluster.json text and return a Cluster, or raise ConfigError.

    ``repo_files``: the paths in the config repo (``roles/web/init.sls``, ...) when known,
    so that roles can be checked against it.
    """
    data = parse_json(text, source)
    problems = validate(data, source, repo_files)
    if problems:
        raise ConfigError(problems)
    return Cluster(data)


def validate(data, source=SOURCE, repo_files=None):
    """Every problem of already-parsed cluster.json data, schema first, then semantics."""
    problems = schema_problems(data, source)
    if isinstance(data, dict):
        problems += semantic_problems(data, source, repo_files)
    # One problem per line, stable order, no repeats.
    return sorted(set(problems), key=lambda p: (_natural(p.path), p.message))


def _natural(path):
    """Sort key that puts ip[2] before ip[10]."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def host_snippet(name, ips, roles=("base",)):
    """The JSON text to add under "hosts" in cluster.json for one host."""
    return json.dumps({name: {"ip": list(ips), "roles": list(roles)}}, indent=2)[2:-2]
