"""States: the front apps of this host (cluster.json "apps", type haproxy).

.. code-block:: yaml

    minicl-haproxy-front:
      minicl_haproxy.running:
        - name: front       # the app, from the pillar's minicl:apps

``running``: keepalived holding the app's floating address on one proxy (its VRRP password
never shown), haproxy serving the address (a new configuration checked with ``haproxy -c``
before it replaces the running one, then reloaded), and the app's certificate from the ACME
server of cluster.json's acme section, obtained or renewed when due (see
minicl.appliances.haproxy and minicl.acme).
"""

try:
    from minicl import statekit
    from minicl.appliances import haproxy
    from minicl.files import read_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_haproxy"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


@_guarded(label="haproxy app {name}")
def running(name):
    """The front app ``name`` served on this host (see above)."""
    minicl = __pillar__["minicl"]
    app = minicl["apps"][name]
    ret = statekit.new_ret(name)
    todo = haproxy.plan(app, minicl["cluster"], minicl.get("acme"))
    changes = {}
    for path, (text, _) in sorted(todo.files.items()):
        shown = statekit.diff(haproxy.redacted(read_file(path), app), haproxy.redacted(text, app), path, path)
        changes[path] = shown or "(the VRRP password changed; content hidden)"
    if todo.haproxy_conf:
        changes[haproxy.CONF_FILE] = statekit.diff(
            read_file(haproxy.CONF_FILE), todo.haproxy_conf, haproxy.CONF_FILE, haproxy.CONF_FILE
        )
    if todo.pem:
        changes[haproxy.cert_path(app)] = "certbot's certificate and key, for haproxy (0600)"
    if todo.obtain:
        changes["certificate"] = f"obtained from the ACME server: {todo.obtain}"
    services = [f"{unit} enabled" for unit in todo.enable]
    if todo.start_haproxy:
        services.append(f"{haproxy.SERVICE} started")
    if todo.start_keepalived:
        services.append(f"{haproxy.KEEPALIVED} started")
    elif todo.reload_keepalived:
        services.append(f"{haproxy.KEEPALIVED} reloaded")
    if services:
        changes["services"] = ", ".join(services)
    if not changes:
        ret["comment"] = f"app {name}: haproxy and keepalived run as configured, the certificate is current"
        if not __opts__["test"]:
            haproxy.write_expiry_metric(app)
        return ret
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = f"app {name} would be converged"
        return ret
    haproxy.apply_plan(app, minicl["cluster"], minicl.get("acme"), todo)
    ret["changes"] = changes
    ret["comment"] = f"app {name} converged"
    return ret
