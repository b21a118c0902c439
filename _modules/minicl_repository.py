"""Execution module: the cluster's apt repository, on the host with the repository role.

salt-call --local minicl_repository.refresh     # look upstream now; a new snapshot if anything changed
salt-call --local minicl_repository.snapshots   # the published snapshots, oldest first
"""

try:
    from minicl import aptrepo

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_repository"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _repository():
    view = (__pillar__.get("minicl") or {}).get("packages") or {}
    if not view.get("repository"):
        raise aptrepo.RepositoryError("this host does not have the repository role")
    return view


def refresh():
    """Look upstream now and publish a new snapshot if anything changed.
    CLI Example: ``salt-call --local minicl_repository.refresh``"""
    view = _repository()
    repo = view["repository"]
    try:
        done = aptrepo.refresh(
            repo["settings"], repo["signing_key"], view["public_key"], repo["upstream_key_files"],
            repo["local_dir"], force=True,
        )  # fmt: skip
    except aptrepo.RepositoryError as exc:
        __context__["retcode"] = 1
        return {"error": str(exc)}
    return done


def snapshots():
    """The published snapshots (name, created, packages), oldest first.
    CLI Example: ``salt-call --local minicl_repository.snapshots``"""
    _repository()
    return aptrepo.index()


def nginx_site(port):
    """The nginx site that serves the published snapshots on ``port`` (for the repository SLS).
    CLI Example: ``salt-call --local minicl_repository.nginx_site 8080``"""
    return aptrepo.render_nginx_site(int(port))
