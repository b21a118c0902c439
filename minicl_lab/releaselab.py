"""minicl's own updates in the lab: its repository and a wheelhouse on the git host, and hosts
installed from them as a group installs a host (install.sh from a clone, then bootstrap).

    work = git_server.add_source_repo("minicl")          # this tree, as it is on disk
    url = serve_wheelhouse(git_server.host)               # .wheelhouse (tools/setup.sh builds it)
    install(host, git_server, deploy_key_text, commit, url)
    salt(host, "state.apply")                              # the host's own minicl, not .venv's

Test hosts have no route to the package index: releases are built from the wheelhouse.
"""

import json
import re
import subprocess

from minicl_lab.testhosts import SOURCE_ROOT

WHEELHOUSE = f"{SOURCE_ROOT}/.wheelhouse"
WHEELHOUSE_PORT = 8080
RELEASES = "/opt/minicl/releases"
HOST_PATH = "/opt/minicl/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the host's minicl only, not .venv's
REPO = "minicl"


def serve_wheelhouse(host, port=WHEELHOUSE_PORT):
    """Serve the lab's wheelhouse over HTTP from ``host``; returns its URL."""
    host.spawn(
        ["python3", "-m", "http.server", str(port), "--bind", host.ipv4, "--directory", WHEELHOUSE],
        # A log nobody reads would fill its pipe and stop the server.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return f"http://{host.ipv4}:{port}/"


def install(host, git_server, deploy_key, commit, wheelhouse, bootstrap=True):
    """As a group installs a host: clone minicl at ``commit``, install.sh, then bootstrap."""
    host.write("/root/deploy.key", deploy_key, 0o600)
    ssh = "ssh -i /root/deploy.key -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"
    host.run(
        f"GIT_SSH_COMMAND='{ssh}' git clone -q {git_server.source_url(REPO)} /root/minicl"
        f" && git -C /root/minicl checkout -q {commit}"
    )
    command = f"MINICL_WHEELHOUSE={wheelhouse} sh /root/minicl/install.sh /root/minicl"
    if bootstrap:
        command += (
            f" && /opt/minicl/bin/minicl-bootstrap --repo={git_server.url} --deploy-key=/root/deploy.key"
        )
    return host.run(command, check=False, timeout=900, env={"PATH": HOST_PATH})


def salt(host, *args, timeout=900):
    """The host's own salt-call --local: (exit code, its ``local`` result or None, output)."""
    result = host.run(
        ["salt-call", "--local", "--out=json", *args], check=False, timeout=timeout, env={"PATH": HOST_PATH}
    )
    try:
        data = json.loads(result.stdout)["local"]
    except (ValueError, KeyError):
        data = None
    return result.returncode, data, result.stdout + result.stderr


def current(host):
    """The name of the host's current release."""
    return host.run("readlink /opt/minicl/current").stdout.strip().removeprefix("releases/")


def record(host):
    """The host's /var/lib/minicl/release.json."""
    return json.loads(host.run("cat /var/lib/minicl/release.json 2>/dev/null || echo {}").stdout)


def minion_release(host):
    """The release the running minicl-minion.service was started from, or None."""
    pid = host.run("systemctl show -p MainPID --value minicl-minion.service").stdout.strip()
    argv = host.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline", check=False).stdout
    return next((part.split("/")[4] for part in argv.split() if part.startswith(RELEASES + "/")), None)


def new_version(git_server, work, label):
    """Commit a good new minicl (its version gets the local label ``+<label>``) to the lab's
    repository; returns the commit."""
    path = "minicl/__init__.py"
    text = re.sub(
        r'__version__ = "([^"+]*)[^"]*"',
        rf'__version__ = "\1+{label}"',
        git_server.host.read(f"{work}/{path}"),
    )
    return git_server.commit({path: text}, f"lab: minicl +{label}", work=work)
