"""States: the cluster's apt repository (on its host) and each host's apt pointed at it.

.. code-block:: yaml

    minicl-repository:
      minicl_packages.repository:      # on the host with the repository role
        - name: minicl

    minicl-apt-source:
      minicl_packages.source:          # on every host that uses it (cluster.json packages.use)
        - name: minicl

    minicl-package-upgrades:
      minicl_packages.upgraded:        # the scheduled step of the rollout (minicl.package_rollout)
        - name: minicl

``repository`` looks upstream when it is due (packages.every, or the section, packages.key or
the local packages changed) and publishes a new snapshot when something changed; see
minicl.aptrepo. ``source`` points apt at the snapshot the host is at (``minicl_upgrade.apply``
moves it), at first the newest published one, trusting packages.key.pub only. ``upgraded``
rehearses and upgrades the host to a new snapshot when the rollout lets it (window, canaries,
no failure elsewhere). ``test=True`` says what would change and changes nothing.
"""

try:
    from minicl import aptrepo, aptsource, package_rollout, statekit, upgrade
    from minicl import cluster as cluster_model
    from minicl.files import read_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_packages"
NOT_USED = "this host does not use the cluster's repository (packages.use)"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _view():
    return (__pillar__.get("minicl") or {}).get("packages") or {}


@_guarded(label="cluster repository")
def repository(name="minicl"):
    """The repository publishes the list's packages as of its last look upstream."""
    ret = statekit.new_ret(name)
    repo = _view().get("repository")
    if not repo:
        ret["comment"] = "this host does not have the repository role"
        return ret
    if not repo.get("signing_key"):
        ret.update(result=False, comment="the config repo has no packages.key (see minicl validate)")
        return ret
    settings = repo["settings"]
    if __opts__["test"]:
        state = aptrepo.read_json(aptrepo.STATE)
        # The key as last imported: finding a new key's fingerprint needs gpg, which test mode spares.
        wanted = aptrepo.inputs(
            settings, (state.get("inputs") or {}).get("key"), aptrepo.local_debs(repo["local_dir"])
        )
        why = aptrepo.due(settings, state, wanted)
        ret["result"] = None if why else True
        ret["comment"] = (
            f"would look upstream: {why}" if why else "up to date; next look when packages.every has passed"
        )
        return ret
    done = aptrepo.refresh(
        settings, repo["signing_key"], _view()["public_key"], repo["upstream_key_files"], repo["local_dir"]
    )
    if done["why"] is None:
        ret["comment"] = "up to date; next look when packages.every has passed"
    elif done["snapshot"]:
        ret["changes"] = {"snapshot": done["snapshot"], "dropped": done["dropped"]}
        ret["comment"] = f"published snapshot {done['snapshot']} ({done['why']})"
    else:
        ret["comment"] = f"looked upstream ({done['why']}): nothing new"
    return ret


@_guarded(label="minicl apt source")
def source(name="minicl"):
    """apt knows the cluster's repository at this host's snapshot, signed by packages.key.pub."""
    ret = statekit.new_ret(name)
    view = _view()
    if view.get("use", "none") == "none":
        return dict(ret, comment=NOT_USED)
    snapshot = upgrade.current_snapshot()
    if snapshot is None:
        snapshot = aptsource.allowed_snapshot(view)
        if snapshot is None:
            ret["comment"] = "the repository has published no snapshot yet: the source follows on a later run"
            return ret
    files = aptsource.render(view["url"], snapshot, view["use"], view["list"], view["public_key"])
    changed = {path: text for path, text in files.items() if read_file(path) != text}
    if not changed:
        ret["comment"] = f"at snapshot {snapshot}"
        return ret
    ret["changes"] = {path: "updated" if read_file(path) else "created" for path in changed}
    if __opts__["test"]:
        ret.update(result=None, comment=f"would point apt at snapshot {snapshot}")
        return ret
    upgrade.point_source(files)
    ret["comment"] = f"apt points at snapshot {snapshot}"
    return ret


@_guarded(label="package upgrades")
def upgraded(name="minicl"):
    """This host is at the newest snapshot the rollout lets it take (see minicl.package_rollout)."""
    ret = statekit.new_ret(name)
    view = _view()
    if view.get("use", "none") == "none":
        return dict(ret, comment=NOT_USED)
    cluster, host = cluster_model.from_pillar(__pillar__)
    apps = list(((__pillar__.get("minicl") or {}).get("apps") or {}).values())
    result, changes, comment = package_rollout.converge(view, cluster, host, apps, test=__opts__["test"])
    ret.update(result=result, changes=changes, comment=comment)
    return ret
