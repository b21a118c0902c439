"""States: the Redis apps of this host (cluster.json "apps", type redis).

.. code-block:: yaml

    minicl-redis-cache:
      minicl_redis.running:
        - name: cache       # the app, from the pillar's minicl:apps

``running``: minicl's /etc/redis/minicl.conf (its password never shown) included last from
Debian's redis.conf, redis-server enabled and running (restarted when a setting changes), and
its role: the primary, or a replica of the primary, decided from what the servers say and this
host's promotion record, never by demoting a promoted primary (see minicl.appliances.redis).
"""

try:
    from minicl import statekit
    from minicl.appliances import redis
    from minicl.files import read_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_redis"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


@_guarded(label="redis app {name}")
def running(name):
    """The app ``name`` running on this host as its primary or a replica (see above)."""
    app = __pillar__["minicl"]["apps"][name]
    ret = statekit.new_ret(name)
    todo = redis.plan(app)
    changes = {}
    for path in sorted(todo.files):
        if path == redis.MAIN_CONF:
            changes[path] = f"{redis.INCLUDE} as its last line"
            continue
        current, wanted = (redis.redacted(app, text) for text in (read_file(path), todo.files[path]))
        shown = statekit.diff(current, wanted, path, path)
        changes[path] = shown or "(the password changed; content hidden)"
    if todo.enable or todo.start:
        changes["service"] = f"{redis.SERVICE} running and started at boot"
    elif todo.restart:
        changes["service"] = f"{redis.SERVICE} restarted for the new settings"
    if todo.runtime:
        changes["role"] = f"{todo.decision} ({todo.decision.why}): " + ", ".join(
            what for what, _ in todo.runtime
        )
    if todo.drop_promotion:
        changes["promotion"] = f"this host's promotion record dropped: it is the {todo.decision} now"
    if not changes:
        ret["comment"] = f"{redis.SERVICE} runs app {name} as configured ({todo.decision})"
        return ret
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = (
            f"app {name} would be converged on {redis.SERVICE} ({todo.decision}: {todo.decision.why})"
        )
        return ret
    redis.apply_plan(app, todo)
    ret["changes"] = changes
    ret["comment"] = f"app {name} converged on {redis.SERVICE} ({todo.decision}: {todo.decision.why})"
    return ret
