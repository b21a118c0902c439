"""States: the nginx app of this host (cluster.json "apps", type nginx).

.. code-block:: yaml

    minicl-nginx-web:
      minicl_nginx.running:
        - name: web         # the app, from the pillar's minicl:apps

``running``: minicl's /etc/nginx/conf.d/minicl-<app>.conf with the app's sites, their TLS
certificates and keys (a key's content never shown; from the config repo, or obtained from the
ACME server with certbot when missing or due), the static sites' files copied from the config
repo (switched atomically), Debian's default site removed, nginx enabled and running.
A configuration ``nginx -t`` refuses is put back and the state fails with nginx's message;
nginx keeps serving the previous one (see minicl.appliances.nginx).

The config repo's files: masterless, the pillar's checkout on this host; under a salt-master
(whose checkout is on the master only), fetched from the master's file server (salt://, which
serves the config repo's live commit) into the minion's cache (root's only).
"""

import os
import shutil

try:
    from minicl import statekit
    from minicl.appliances import nginx
    from minicl.cluster import addresses_by_host
    from minicl.files import read_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_nginx"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _checkout(app):
    """The folder holding the config repo's files ``app`` reads (see above)."""
    if __opts__.get("file_client") == "local":
        return __pillar__["minicl"].get("checkout")
    saltenv = __opts__.get("saltenv") or "base"
    cached = os.path.join(__opts__["cachedir"], "files", saltenv)
    folders, files = nginx.repo_paths(app)
    for rel in folders + files:  # what the repo no longer has must not linger in the cache
        path = os.path.join(cached, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    for rel in folders:
        __salt__["cp.cache_dir"](f"salt://{rel}", saltenv)
    for rel in files:
        if __salt__["cp.cache_file"](f"salt://{rel}", saltenv):
            os.chmod(os.path.join(cached, rel), 0o600)  # keys among them: Salt's cache writes 0644
    return cached


def _host_ips():
    return addresses_by_host(__pillar__["minicl"].get("cluster", {}))


def _file_changes(todo, old):
    """The changes of ``todo``'s files, each against ``old(path)``; a key's content hidden."""
    changes = {}
    for path, (text, mode) in sorted(todo.files.items()):
        if path in todo.secret:
            changes[path] = f"written, mode {mode:04o} (a key: content hidden)"
        else:
            changes[path] = statekit.diff(old(path), text, path, path) or f"mode {mode:04o}"
    return changes


def _acme_tls_paths(app, todo):
    return [path for site in todo.certificates for path in nginx.tls_paths(app, site)]


@_guarded(label="nginx app {name}")
def running(name):
    """The app ``name`` served by this host's nginx (see above)."""
    minicl = __pillar__["minicl"]
    app = minicl["apps"][name]
    ret = statekit.new_ret(name)
    checkout = _checkout(app)
    todo = nginx.plan(app, _host_ips(), checkout, minicl.get("acme"))
    changes = _file_changes(todo, read_file)
    for path in todo.removed:
        changes[path] = "removed" + (" (Debian's default site)" if path == nginx.DEFAULT_SITE else "")
    for site, (_, release) in sorted(todo.trees.items()):
        changes[nginx.site_root(app, site)] = f"serves {nginx.RELEASES}/{release} (the config repo's files)"
    for site, why in sorted(todo.certificates.items()):
        changes[f"certificate {nginx.cert_name(app, site)}"] = f"obtained from the ACME server ({why})"
    if todo.enable or todo.start:
        changes["service"] = f"{nginx.SERVICE} running and started at boot"
    elif todo.reload:
        changes["service"] = f"{nginx.SERVICE} reloaded (nginx -t first)"
    if not changes:
        ret["comment"] = f"{nginx.SERVICE} serves app {name} as configured"
        if not __opts__["test"]:
            nginx.write_expiry_metrics(app)
        return ret
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = f"app {name} would be converged on {nginx.SERVICE}"
        return ret
    # What the certificates' run writes after certbot: shown against the files before this run.
    before = {p: read_file(p) for p in [nginx.conf_path(app), *_acme_tls_paths(app, todo)]}
    then = nginx.converge(app, _host_ips(), checkout, minicl.get("acme"), todo)
    if then:
        changes.update(_file_changes(then, lambda path: before.get(path, read_file(path))))
        if then.reload and "service" not in changes:
            changes["service"] = f"{nginx.SERVICE} reloaded (nginx -t first)"
    nginx.write_expiry_metrics(app)
    ret["changes"] = changes
    ret["comment"] = f"app {name} converged on {nginx.SERVICE}"
    return ret
