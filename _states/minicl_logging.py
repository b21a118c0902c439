"""States: this host's TLS identity for central logging (cluster.json "logging").

.. code-block:: yaml

    minicl-logging-certificate:
      minicl_logging.certificate:
        - name: /etc/syslog-ng/minicl/host.crt

``certificate``: the logging CA this host trusts (a copy of the config repo's logging-ca.crt,
or of ca_url's CA), this host's own key (made here, 0600, never shown or sent) and its
certificate signed with the config repo's logging-ca.key (see minicl.logcerts), renewed when it
nears its end, stops matching the key, the CA or this host's names and addresses.
"""

try:
    from minicl import logcerts, statekit

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_logging"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


@_guarded(label="logging certificate {name}")
def certificate(name):
    """This host's logging key and certificate (see above)."""
    view = __pillar__["minicl"]["logging"]
    ret = statekit.new_ret(name)
    todo = logcerts.plan(view)
    changes = {}
    if todo.ca:
        changes["ca"] = "the logging CA certificate installed"
    if todo.new_key:
        changes["key"] = "a new key made on this host (0600)"
    if todo.new_cert:
        changes["certificate"] = f"signed by the logging CA ({todo.why})"
    if not changes:
        ret["comment"] = f"{name} is valid, signed by the logging CA"
        return ret
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = f"{name} would be made"
        return ret
    logcerts.apply(view, todo)
    again = logcerts.plan(view)
    if again.ca or again.new_key or again.new_cert:
        ret["result"] = False
        ret["comment"] = f"{name} could not be made: {again.why or 'the CA copy did not take'}"
        return ret
    ret["changes"] = changes
    ret["comment"] = f"{name} made"
    return ret
