"""Appliances: the services a group runs, declared under "apps" in cluster.json, each behind the
same lifecycle contract.

Every appliance module (one per app type) converges its app on a host (its state module calls
it) and provides the verbs of the contract that apply to it, each as a function
``verb(app) -> Report`` taking the app as the pillar has it (``minicl:apps:<name>``: the
cluster.json entry plus ``name``, ``host``, ``primary``, ``peers`` and ``addresses``: see
Cluster.apps_of). ``minicl_app.<verb>`` runs them: ``salt-call --local minicl_app.check_health db``.

The contract's verbs: check_health, test, backup, restore, upgrade, downgrade, failover, monitor,
cleanup, and ``list`` (the backups; its function is ``list_backups``). An appliance says which
it provides in ``VERBS``.

Its service listens on ``PORT``. An appliance with a Prometheus exporter declares it with
``EXPORTER_PACKAGE``, ``EXPORTER_SERVICE`` (the Debian package and its unit, configured by
``/etc/default/<service>``) and ``EXPORTER_PORT``, and may render that file with
``render_exporter_defaults(app)`` (``EXPORTER_DEFAULTS_SECRET = True`` if it holds a secret, so
that no state output shows it): every host of its apps runs the exporter, the monitor
scrapes it (see minicl.monitor), and both ports answer cluster hosts only (minicl.firewall).
Ports that answer the cluster's hosts only whether the app is public or not go in
``CLUSTER_ONLY_PORTS``; ``PUBLIC_DEFAULT`` says whether an app without "public" is open to the
world; IP protocols its hosts speak among themselves (VRRP) go in ``PEER_PROTOCOLS``: accepted
from the app's other hosts only. ``shown_files(app, cluster_hosts)`` ({host: [addresses]}), where
an appliance has it, returns {path: text} of the configuration it writes from cluster.json alone
(no secret, nothing read from the host): what ``minicl show`` prints.
"""

import hashlib
import hmac
import importlib
import subprocess
from dataclasses import dataclass, field

from minicl import paths
from minicl.errors import MiniclError

CONTRACT = (
    "check_health",
    "test",
    "backup",
    "restore",
    "list",
    "upgrade",
    "downgrade",
    "failover",
    "monitor",
    "cleanup",
)
TYPES = ("postgresql", "redis", "nginx", "haproxy")


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


def verb_function(module_, verb):
    return getattr(module_, "list_backups" if verb == "list" else verb)


def systemctl(*args, check=True):
    """``systemctl`` with ``args``; an ApplianceError naming the command when it fails (unless
    ``check`` is false: then the result says)."""
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ApplianceError(f"systemctl {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def unit_active(unit):
    return systemctl("is-active", "--quiet", unit, check=False).returncode == 0


def unit_enabled(unit):
    return systemctl("is-enabled", unit, check=False).stdout.strip() == "enabled"


def module(kind):
    """The appliance module of an app type."""
    if kind not in TYPES:
        raise ApplianceError(f"no appliance for apps of type {kind!r} (known: {', '.join(TYPES)})")
    return importlib.import_module(f"minicl.appliances.{kind}")


@dataclass(frozen=True)
class Exporter:
    """The Prometheus exporter of an app type, as its appliance module declares it."""

    kind: str
    package: str
    service: str
    port: int
    secret: bool = False  # its defaults file holds a secret

    @property
    def defaults_file(self):
        """Where Debian's unit reads the exporter's options (EnvironmentFile)."""
        return f"/etc/default/{self.service}"

    def defaults(self, app):
        """The text minicl writes to ``defaults_file`` for ``app``, or None: the package's own."""
        render = getattr(module(self.kind), "render_exporter_defaults", None)
        return render(app) if render else None


def exporter(kind):
    """The exporter an app type declares, or None if its appliance has none."""
    found = module(kind)
    if not hasattr(found, "EXPORTER_PORT"):
        return None
    return Exporter(
        kind,
        found.EXPORTER_PACKAGE,
        found.EXPORTER_SERVICE,
        found.EXPORTER_PORT,
        getattr(found, "EXPORTER_DEFAULTS_SECRET", False),
    )


def exporters():
    """{type: Exporter} of every app type with an exporter."""
    return {kind: found for kind in TYPES if (found := exporter(kind))}


def exporter_setup(apps):
    """What a host runs for the exporters of its ``apps`` ({name: app} as the pillar has them):
    one dict per app with an exporter, as the base role's SLS uses it."""
    setup = []
    for name, app in sorted(apps.items()):
        found = exporter(app["type"])
        if found:
            setup.append(
                {
                    "app": name,
                    "package": found.package,
                    "service": found.service,
                    "defaults_file": found.defaults_file,
                    "defaults": found.defaults(app),
                    "secret": found.secret,
                }
            )
    return setup


def service_ports(kind):
    """The TCP ports an app type's service listens on (``PORTS``, else ``PORT``)."""
    found = module(kind)
    return list(getattr(found, "PORTS", (found.PORT,)))


def cluster_only_ports(kind, public=False):
    """The TCP ports of an app type that answer the cluster's hosts only: the service's own
    (unless the app is ``public``: see public_ports) and its exporter's."""
    found = exporter(kind)
    extra = list(getattr(module(kind), "CLUSTER_ONLY_PORTS", ()))
    return ([] if public else service_ports(kind)) + extra + ([found.port] if found else [])


def is_public(app):
    """Whether an app's service ports are open to the world: its ``public``, by default its
    module's ``PUBLIC_DEFAULT`` (false but for the front)."""
    return bool(app.get("public", getattr(module(app["type"]), "PUBLIC_DEFAULT", False)))


def public_ports(app):
    """The TCP ports open to the world for ``app``: its service's, if it is public (see
    is_public), else none."""
    return service_ports(app["type"]) if is_public(app) else []


def peer_protocols(kind):
    """IP protocols ("vrrp") the hosts of an app speak among themselves: accepted from the app's
    other hosts only (its module's ``PEER_PROTOCOLS``)."""
    return tuple(getattr(module(kind), "PEER_PROTOCOLS", ()))


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
