"""The JSON schema of cluster.json (``cluster.schema.json``) and its checks as problems.

Owns the loaded schema and its validator, what code reads from it (defaults, the duration
format), and the translation of each jsonschema error into ``Problem``s a person can act on:
readable type names, ranges, unknown fields with the allowed ones, secrets never quoted.
"""

import json
import re
from functools import lru_cache
from importlib import resources

import jsonschema

from minicl.problems import Problem, path_key

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Values at these paths are secrets: problems about them never quote the value.
SECRET_PATHS = (re.compile(r"^smtp\.password$"), re.compile(r"^users\.[^.]+\.passwd$"))

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "object": "an object",
    "array": "a list",
    "boolean": "true or false",
    "number": "a number",
    "null": "null",
}


@lru_cache(maxsize=1)
def schema():
    return json.loads(resources.files("minicl").joinpath("cluster.schema.json").read_text())


def schema_default(section, key):
    return schema()["properties"][section]["properties"][key]["default"]


def duration_seconds(text):
    """Seconds in a schema-checked duration such as "30s" or "15m"."""
    return int(text[:-1]) * DURATION_UNITS[text[-1]]


def _is_strict_integer(_checker, value):
    # JSON Schema counts 500.0 as an integer; a uid or port written that way is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


@lru_cache(maxsize=1)
def _validator():
    base = jsonschema.validators.validator_for(schema())
    cls = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _is_strict_integer)
    )
    return cls(schema())


def schema_problems(data, source):
    """The problems of parsed cluster.json ``data`` against the schema, in jsonschema's order."""
    problems = []
    for error in _validator().iter_errors(data):
        found = _schema_problem(error, source)
        problems += found if isinstance(found, list) else [found]
    return problems


def _dotted(parts):
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{path_key(part)}" if path else path_key(part)
    return path


def _is_secret(path):
    return any(p.match(path) for p in SECRET_PATHS)


def _json_type(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _schema_problem(error, source):
    path = _dotted(error.absolute_path)
    value = error.instance
    shown = "(value hidden)" if _is_secret(path) else json.dumps(value)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        prefix = f"{path}." if path else ""
        return [
            Problem(f"{prefix}{path_key(key)}", f"unknown field (allowed here: {allowed})", source)
            for key in extra
        ]
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return Problem(path, f'missing required field "{missing}"', source)
    if kind == "type":
        return Problem(
            path,
            f"must be {_TYPE_NAMES[error.validator_value]}, not {_TYPE_NAMES[_json_type(value)]}",
            source,
        )
    if kind == "oneOf":
        return _one_of_problem(error, path, value, shown, source)
    if kind == "minLength":
        return Problem(path, "must not be empty", source)
    if kind == "minProperties":
        return Problem(path, "must have at least one entry", source)
    if kind == "minItems":
        return Problem(path, "must list at least one entry", source)
    if kind in ("minimum", "maximum"):
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        return Problem(path, f"{shown} is out of range ({low}-{high})", source)
    if kind == "uniqueItems":
        return Problem(path, "lists an entry more than once", source)
    if kind == "enum":
        choices = ", ".join(json.dumps(choice) for choice in error.validator_value)
        return Problem(path, f"{shown} is not one of {choices}", source)
    if kind == "pattern" and error.schema.get("description") and path.startswith("apps."):
        return Problem(path, f"{shown} is not valid: {error.schema['description']}", source)
    if kind == "pattern" and error.schema.get("title") == "duration":
        return Problem(path, f"{shown} is not a duration ({error.schema['description'].rstrip('.')})", source)
    message = error.message if not _is_secret(path) else f"is invalid ({kind})"
    return Problem(path, message, source)


def _one_of_problem(error, path, value, shown, source):
    """A value that fits none of the forms a field may take ("one key, or a list of them"): the
    problems inside the form of its own type, else what the forms are."""
    if isinstance(value, list) and not value:
        return Problem(path, "must list at least one entry", source)
    branches = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    wrong_type = {
        index: next((e for e in subs if e.validator == "type" and not e.relative_path), None)
        for index, subs in branches.items()
    }
    fitting = [subs for index, subs in branches.items() if wrong_type[index] is None]
    if len(fitting) == 1:
        problems = []
        for sub in fitting[0]:
            found = _schema_problem(sub, source)
            problems += found if isinstance(found, list) else [found]
        return problems
    forms = [_TYPE_NAMES.get(e.validator_value, str(e.validator_value)) for e in wrong_type.values() if e]
    if len(forms) == 2 and forms[1] == "a list":
        forms[1] = f"a list of {forms[0].split(' ', 1)[1]}s"
    return Problem(path, f"must be {' or '.join(forms) or 'one of its forms'}, not {shown}", source)
