"""State: this host runs the minicl the config repo pins (the ``minicl`` git submodule).

.. code-block:: yaml

    minicl-release:
      minicl_release.pinned:
        - name: minicl
        - order: last

When the pinned commit differs from the running release and the host may take it now (canaries
first, see minicl.rollout), the pinned commit is built into a new release, checks itself, and
becomes current; the run after this one (started by the trial once this run has ended) decides
whether it stays. See minicl.selfupdate. ``test=True`` says what would happen and builds
nothing. Without a pin in the config repo, nothing happens.
"""

import os

try:
    from minicl import cluster as cluster_model
    from minicl import pin as pins
    from minicl import selfupdate, statekit

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_release"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


@_guarded(label="minicl release")
def pinned(name="minicl"):
    """The pinned minicl runs here, or is on its way (see above)."""
    minicl = __pillar__["minicl"]
    release = minicl.get("release") or {}
    if release.get("error"):
        return statekit.new_ret(name, False) | {"comment": f"minicl release: {release['error']}"}
    pin = release.get("pin")
    cluster, host = cluster_model.from_pillar(__pillar__)
    cluster.commit = (minicl.get("status") or {}).get("commit")
    cache_dir = os.path.dirname(minicl["applied_file"])
    mirror = pins.SourceMirror(os.path.join(cache_dir, "minicl.git"), pin["url"]) if pin else None
    result, changes, comment = selfupdate.converge(
        pin, cluster, host, __opts__["id"], cache_dir, mirror, test=__opts__["test"]
    )
    ret = statekit.new_ret(name, result)
    ret.update(changes=changes, comment=comment)
    return ret
