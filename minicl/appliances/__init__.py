"""Appliances: the services a group runs, declared under "apps" in cluster.json, each behind the
same lifecycle contract.

Every appliance module (one per app type) converges its app on a host (its state module calls
it) and provides the verbs of the contract that apply to it, each as a function
``verb(app) -> Report`` taking the app as the pillar has it (``minicl:apps:<name>``: the
cluster.json entry plus ``name``, ``role``, ``primary`` and ``peers``). ``minicl_app.<verb>``
runs them: ``salt-call --local minicl_app.check_health db``.

The contract's verbs: check_health, test, backup, restore, upgrade, downgrade, failover, monitor,
cleanup. An appliance says which it provides in ``VERBS``.
"""

import hashlib
import hmac
import importlib
from dataclasses import dataclass, field

from minicl import paths
from minicl.errors import MiniclError

CONTRACT = (
    "check_health",
    "test",
    "backup",
    "restore",
    "upgrade",
    "downgrade",
    "failover",
    "monitor",
    "cleanup",
)
TYPES = ("postgresql", "redis")


class ApplianceError(MiniclError):
    """An app could not be converged or a verb could not run; the message says why."""


@dataclass
class Report:
    """What a verb found: ``ok`` and the lines a person reads, plus the figures as data."""

    app: str
    verb: str
    ok: bool = True
    lines: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def check(self, ok, line):
        self.lines.append(f"{'ok  ' if ok else 'FAIL'} {line}")
        self.ok = self.ok and bool(ok)
        return ok

    def as_dict(self):
        return {"app": self.app, "verb": self.verb, "ok": self.ok, "report": self.lines, **self.data}


def module(kind):
    """The appliance module of an app type."""
    if kind not in TYPES:
        raise ApplianceError(f"no appliance for apps of type {kind!r} (known: {', '.join(TYPES)})")
    return importlib.import_module(f"minicl.appliances.{kind}")


def shared_secret(app_name, purpose, key_path=None):
    """A secret every host of an app derives alike, which nobody stores or manages: an HMAC of
    the config repo's deploy key (every host has it, root only). It changes with the key."""
    key_path = key_path or f"{paths.ETC_DIR}/{paths.DEPLOY_KEY_NAME}"
    try:
        with open(key_path, "rb") as f:
            key = f.read()
    except OSError as exc:
        raise ApplianceError(
            f"{app_name}: cannot read {key_path} ({exc.strerror}), from which the app's hosts derive "
            "their shared secrets; run minicl-bootstrap with --deploy-key"
        ) from None
    return hmac.new(key, f"minicl {app_name} {purpose}".encode(), hashlib.sha256).hexdigest()
