"""minicl as a library, for your own scripts: load and check a cluster.json, ask it about hosts,
users, addresses and roles, and see what a host would get. The ``minicl`` command uses it.

    from minicl import api

    cluster = api.load("cluster.json")          # api.ConfigError lists every problem
    for name in cluster.hosts:
        print(name, cluster.fqdn(name), cluster.host_ips(name), cluster.host_roles(name))
    print(sorted(cluster.users))                # user names; cluster.users[name] is their entry
    print(cluster.addresses())                  # {"v4": [...], "v6": [...]} of every host
    print(api.problems("other/cluster.json"))   # [] if valid, else one line per problem
    print(api.pin_problems("/path/to/config-repo"))   # the minicl it pins (a git submodule)
    alpha = api.host(cluster, "alpha")          # what alpha gets:
    alpha["states"]                             #   the SLS files of its roles
    alpha["files"]["/etc/nftables.d/minicl.nft"]   # the firewall ruleset minicl renders for it

``Cluster`` is the validated data (``cluster.data``) with the questions minicl asks of it;
nothing here touches the machine it runs on.
"""

import os

from minicl import config, hostview, pin
from minicl.config import Cluster, ConfigError

__all__ = [
    "Cluster",
    "ConfigError",
    "host",
    "load",
    "loads",
    "pin_problems",
    "problems",
    "repo_files_on_disk",
]


def repo_files_on_disk(repo_dir):
    """Paths of role files under ``repo_dir`` as the validator wants them (roles/x/init.sls)."""
    roles = os.path.join(repo_dir, "roles")
    if not os.path.isdir(roles):
        return []
    return [
        f"roles/{name}/init.sls"
        for name in os.listdir(roles)
        if os.path.isfile(os.path.join(roles, name, "init.sls"))
    ]


def loads(text, source="cluster.json", repo_files=None):
    """A Cluster from cluster.json text; raises ConfigError with every problem. ``repo_files``:
    the config repo's paths (``roles/web/init.sls``, ...), to check roles against them."""
    return config.load_cluster(text, source=source, repo_files=repo_files)


def load(path):
    """A Cluster from a cluster.json file, its roles checked against the ``roles/`` folder
    beside it; raises ConfigError (or OSError, UnicodeDecodeError for an unreadable file)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return loads(text, _source(path), repo_files_on_disk(os.path.dirname(os.path.abspath(path))))


def problems(path):
    """Every problem of a cluster.json file, one line each, as ``minicl validate`` prints them;
    [] if it is valid. At the top of a git work tree, the problems of the minicl it pins too
    (``pin_problems``)."""
    return _cluster_problems(path) + pin_problems(os.path.dirname(os.path.abspath(path)))


def _cluster_problems(path):
    try:
        load(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"]
    except UnicodeDecodeError as exc:
        return [f"{path}: not UTF-8 text (byte {exc.start})"]
    return []


def pin_problems(repo_dir, staged=False):
    """The problems of the minicl the config repo at ``repo_dir`` (the top of its git work tree)
    pins as a git submodule at ``minicl``, one line each; [] if it pins none or all is well.
    The gitlink in the index and .gitmodules (in the work tree; with ``staged``, in the index)
    must agree; with ``staged``, the submodule's checkout must also be at the staged commit,
    hold it, and have no uncommitted changes."""
    return pin.worktree_problems(repo_dir, staged=staged)


def host(cluster, name):
    """What host ``name`` (short name or FQDN) gets from ``cluster``: {"name", "fqdn", "ip",
    "roles", "states", "pillar", "files"}. ``files`` maps each file minicl renders for it to its
    text (no secrets). Raises KeyError if it is not a host of the cluster."""
    pillar = hostview.pillar_for(cluster, name, status={})
    if pillar is None:
        raise KeyError(f"{name} is not a host in cluster.json (hosts: {', '.join(sorted(cluster.hosts))})")
    view = pillar["minicl"]["host"]
    return dict(
        view,
        states=pillar["minicl"]["states"],
        pillar=pillar,
        files=hostview.configuration(cluster, view["name"]),
    )


def _source(path):
    return os.path.basename(path) if os.path.dirname(path) in ("", ".") else path
