"""``minicl-bootstrap``: make this Debian host a masterless minicl minion.

    minicl-bootstrap --repo=ssh://git@git.example.org/srv/git/cluster.git --deploy-key=./deploy.key
    minicl-bootstrap --repo=ssh://git@git.example.org/srv/git/cluster.git   # logged in with ssh -A

Run as root, after installing minicl and Salt into one venv (see README). It
1. installs the deploy key (and known_hosts, if given) under /etc/minicl; without --deploy-key
   the first fetch uses your SSH agent (ssh -A), and later runs the repo's own deploy.key,
2. writes /etc/salt/minion.d/minicl.conf (file_client local, the minicl external pillar,
   file_roots = minicl's states + the live checkout of the config repo),
3. fetches the config repo (trusting the repo host's SSH key on first use, printing its
   fingerprint, unless --known-hosts is given; a changed key is refused afterwards),
4. runs the first ``salt-call --local state.apply`` with the Salt of this Python environment,
5. on systemd, installs and (re)starts minicl-minion.service: salt-minion, masterless, running
   the scheduled highstate (jobs that the base role writes from cluster.json's "schedule"),
6. prints this host's entry for "hosts" in cluster.json and its SSH host key fingerprints.
Running it again is safe: it rewrites the same files and applies again.
"""

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys

import yaml

from minicl import config, minion, netinfo, paths, releases, saltext, schedule, selfupdate
from minicl.configrepo import ConfigRepo, NoGoodCommit, safe_url
from minicl.errors import MiniclError
from minicl.files import write_file

ETC_DIR = paths.ETC_DIR
SALT_CONFIG_DIR = paths.SALT_CONFIG_DIR
CACHE_DIR = paths.STATE_DIR
STATE_QUEUE = 8  # state runs that may wait for the one in progress; more are refused
EXIT_FAILED = 1
EXIT_NOT_IN_CLUSTER = 3


class BootstrapError(MiniclError):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="minicl-bootstrap",
        description="Set up this host as a masterless minicl minion and apply its configuration.",
    )
    parser.add_argument(
        "--repo", help="config repo URL: ssh://user@host/path, user@host:path or file:///path"
    )
    parser.add_argument(
        "--deploy-key",
        help="private SSH key that may read the config repo (default: fetch "
        "once with your SSH agent, then use the repo's deploy.key)",
    )
    parser.add_argument("--branch", default="main", help="branch to follow (default: main)")
    parser.add_argument(
        "--known-hosts", help="known_hosts file with the repo host's key (default: trust on first use)"
    )
    parser.add_argument("--id", help="minion id: the host's short name or FQDN (default: the hostname)")
    parser.add_argument(
        "--no-apply", action="store_true", help="configure and fetch, but do not run state.apply"
    )
    parser.add_argument(
        "--no-schedule",
        action="store_true",
        help="do not install or start minicl-minion.service (runs only by hand)",
    )
    parser.add_argument(
        "--print-snippet", action="store_true", help="only print this host's entry for cluster.json and exit"
    )
    parser.add_argument("--salt-config-dir", default=SALT_CONFIG_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--etc-dir", default=ETC_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=CACHE_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.print_snippet and not args.repo:
        parser.error("--repo is required")
    return args


def snippet_for_this_host(name, roles=("base",)):
    """The host's entry for cluster.json, then its SSH host key fingerprints to check at the
    first login."""
    interfaces = netinfo.global_addresses()
    ips = netinfo.all_global(interfaces, "ipv4") + netinfo.all_global(interfaces, "ipv6")
    text = config.host_snippet(name, ips or ["ADDRESS"], roles)
    fingerprints = own_host_key_fingerprints()
    if fingerprints:
        text += f"\n\nSSH host keys of {name} (compare them when you first log in):\n"
        text += "\n".join(f"  {line}" for line in fingerprints)
    return text


def own_host_key_fingerprints(pattern="/etc/ssh/ssh_host_*_key.pub"):
    """["ED25519 SHA256:...", ...] of this host's sshd keys."""
    found = []
    for path in sorted(glob.glob(pattern)):
        out = subprocess.run(
            ["ssh-keygen", "-l", "-f", path], capture_output=True, text=True, check=False
        ).stdout.split()
        if len(out) >= 2:
            found.append(f"{out[-1].strip('()')} {out[1]}")
    return found


def install_file(source, target, mode):
    """Copy ``source`` to ``target`` with ``mode`` from the first byte (it may be a private key)."""
    if os.path.abspath(source) != os.path.abspath(target):
        tmp = f"{target}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    os.chmod(target, mode)


def pillar_options(args):
    options = {"repo": args.repo, "branch": args.branch, "cache_dir": args.cache_dir}
    if args.deploy_key:
        options["deploy_key"] = os.path.join(args.etc_dir, paths.DEPLOY_KEY_NAME)
    if is_ssh_url(args.repo):
        options["known_hosts"] = os.path.join(args.etc_dir, paths.KNOWN_HOSTS_NAME)
    return options


def minion_config(args, minion_id):
    return {
        "id": minion_id,
        "file_client": "local",
        "master_type": "disable",  # salt-minion runs the schedule without a master
        "file_roots": {"base": [states_dir(), os.path.join(args.cache_dir, "live")]},
        "ext_pillar": [{"minicl": pillar_options(args)}],
        # After every job, minicl's returner records highstate results for the monitor.
        "return": "minicl",
        # A state run that meets another one waits for it (Salt would refuse it otherwise).
        "state_queue": STATE_QUEUE,
        # minicl's modules come from its package (the salt.loader entry point), not from the file
        # roots: no sync of _modules/ folders before every highstate (about 1 s per run).
        "autoload_dynamic_modules": False,
    }


def adopt_repo_deploy_key(args, repo, minion_id):
    """After a first fetch with the admin's SSH agent: later (scheduled) runs have no agent, so
    they use the deploy key the config repo carries."""
    repo_key = os.path.join(repo.live_path, paths.DEPLOY_KEY_NAME)
    if not os.path.isfile(repo_key):
        print(
            "minicl-bootstrap: WARNING: no --deploy-key and no deploy.key in the config repo: later runs "
            "fetch with root's own SSH keys",
            file=sys.stderr,
        )
        return
    install_file(repo_key, os.path.join(args.etc_dir, paths.DEPLOY_KEY_NAME), 0o600)
    args.deploy_key = os.path.join(args.etc_dir, paths.DEPLOY_KEY_NAME)
    write_minion_config(args, minion_id)
    repo.deploy_key = args.deploy_key
    # From here on, as the scheduled runs will: without the agent.
    os.environ.pop("SSH_AUTH_SOCK", None)
    status = repo.update()
    if status.get("error"):
        raise BootstrapError(
            f"the repo's deploy.key cannot read the repo ({status['error']}); authorise "
            "deploy.key.pub on the git server, or pass --deploy-key"
        )
    print(
        f"minicl-bootstrap: fetched with your SSH agent; later runs use the repo's deploy.key "
        f"(installed as {args.deploy_key}, checked without the agent)"
    )


def write_minion_config(args, minion_id):
    conf_dir = os.path.join(args.salt_config_dir, "minion.d")
    os.makedirs(conf_dir, exist_ok=True)
    path = os.path.join(conf_dir, "minicl.conf")
    text = "# Written by minicl-bootstrap; run it again to change this file.\n" + yaml.safe_dump(
        minion_config(args, minion_id), default_flow_style=False, sort_keys=True
    )
    write_file(path, text)
    return path


def is_ssh_url(url):
    return not url.startswith(("file://", "/", "./", "../"))


def repo_host_pattern(url):
    """The known_hosts name of the repo host: host, or [host]:port; None if not SSH."""
    if not is_ssh_url(url):
        return None
    match = re.match(r"^ssh://(?:[^@/]+@)?(\[[^\]]+\]|[^:/]+)(?::(\d+))?/", url)
    if match:
        host, port = match.group(1).strip("[]"), match.group(2)
    else:
        match = re.match(r"^(?:[^@/]+@)?([^:/]+):", url)
        if not match:
            return None
        host, port = match.group(1), None
    return f"[{host}]:{port}" if port and port != "22" else host


def host_key_fingerprints(known_hosts, url):
    pattern = repo_host_pattern(url)
    if not pattern or not os.path.exists(known_hosts):
        return []
    out = subprocess.run(
        ["ssh-keygen", "-l", "-F", pattern, "-f", known_hosts], capture_output=True, text=True, check=False
    ).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def states_dir():
    """minicl's state tree as the minion config names it: through ``current`` when minicl runs
    from a release, so the file follows a switch of releases."""
    share = releases.share_dir()
    return os.path.join(share, "states") if share else saltext.states_dir()


def salt_program(name="salt-call"):
    """A Salt program of minicl's venv: ``<root>/current/bin/<name>`` when minicl runs from a
    release, else the one next to this Python."""
    candidate = releases.program(name)
    found = candidate if os.path.exists(candidate) else shutil.which(name)
    if not found:
        raise BootstrapError(
            f"{name} is not installed next to {sys.executable}: install Salt into "
            "the same venv as minicl (see the README)"
        )
    return found


def start_schedule(args):
    """Install and (re)start minicl-minion.service; returns what to tell the admin."""
    salt_minion = salt_program("salt-minion")
    if not minion.systemd_running():
        return (
            f"no systemd here: start the scheduled runs with '{salt_minion} -c {args.salt_config_dir} -d' "
            "(and from this host's init system at boot)"
        )
    try:
        minion.install_and_restart(
            minion.unit_text(salt_minion, args.salt_config_dir, python=releases.program("python")), write_file
        )
    except minion.MinionUnitError as exc:
        raise BootstrapError(str(exc)) from None
    return (
        f"{minion.UNIT_NAME} enabled and started: highstate on the schedule of cluster.json "
        "(the first one after one interval: this run was the first)"
    )


def follow_pin(repo, minion_id, cache_dir):
    """Put this host on the minicl the config repo pins, from the start: built, self-checked
    and current before the first run (the rest of bootstrap runs the current release)."""
    pin = repo.live_pin()
    root = releases.root()
    if pin is None:
        return
    if root is None:
        print(
            f"minicl-bootstrap: WARNING: the config repo pins minicl {pin.commit[:12]}, but this minicl "
            f"runs from {sys.prefix}, not from a release: install it with install.sh to follow the pin",
            file=sys.stderr,
        )
        return
    if releases.record(root, releases.name_of(pin.commit)) and releases.current(root) == releases.name_of(
        pin.commit
    ):
        print(f"minicl-bootstrap: minicl {pin.commit[:12]} (pinned by the config repo) is current")
        return
    print(f"minicl-bootstrap: building minicl {pin.commit[:12]}, pinned by the config repo", flush=True)
    wheelhouse = (repo.live_cluster().data.get("self_update") or {}).get("wheelhouse")
    try:
        name = selfupdate.build_and_check(
            root, pin._asdict(), repo.source_mirror(pin), minion_id, cache_dir, wheelhouse
        )
    except selfupdate.UpdateError as exc:
        raise BootstrapError(
            f"minicl {pin.commit[:12]}, pinned by the config repo: its {exc.stage} failed: {exc}"
        ) from None
    releases.switch(root, name)
    selfupdate.mark_good(pin.commit)
    print(f"minicl-bootstrap: minicl {pin.commit[:12]} is current ({releases.path(root, name)})")


def run(args):
    minion_id = args.id or socket.gethostname()
    if args.print_snippet:
        print(snippet_for_this_host(minion_id.split(".")[0]))
        return 0
    if os.geteuid() != 0:
        raise BootstrapError("run minicl-bootstrap as root (it writes /etc/salt and /etc/minicl)")

    os.makedirs(args.etc_dir, mode=0o755, exist_ok=True)
    installed_key = os.path.join(args.etc_dir, paths.DEPLOY_KEY_NAME)
    if not args.deploy_key and os.path.isfile(installed_key):
        args.deploy_key = installed_key  # bootstrap again: keep the key an earlier run installed
    if args.deploy_key:
        if not os.path.isfile(args.deploy_key):
            raise BootstrapError(f"--deploy-key: {args.deploy_key} is not a file")
        install_file(args.deploy_key, os.path.join(args.etc_dir, paths.DEPLOY_KEY_NAME), 0o600)
    known_hosts = os.path.join(args.etc_dir, paths.KNOWN_HOSTS_NAME)
    if args.known_hosts:
        if not os.path.isfile(args.known_hosts):
            raise BootstrapError(f"--known-hosts: {args.known_hosts} is not a file")
        install_file(args.known_hosts, known_hosts, 0o644)
    conf_path = write_minion_config(args, minion_id)
    print(f"minicl-bootstrap: wrote {conf_path} (minion id {minion_id})")

    options = pillar_options(args)
    repo = ConfigRepo(
        args.cache_dir,
        args.repo,
        branch=args.branch,
        deploy_key=options.get("deploy_key"),
        known_hosts=options.get("known_hosts"),
    )
    print(f"minicl-bootstrap: fetching {safe_url(args.repo)} (branch {args.branch})")
    trust_on_first_use = is_ssh_url(args.repo) and not args.known_hosts
    status = repo.update(accept_new_host_key=trust_on_first_use)
    if is_ssh_url(args.repo):
        for line in host_key_fingerprints(known_hosts, args.repo):
            how = "trusted on first use" if trust_on_first_use else "from --known-hosts"
            print(f"minicl-bootstrap: repo host key ({how}): {line}")
    if status.get("error"):
        print(f"minicl-bootstrap: {status['error']}", file=sys.stderr)
    try:
        cluster = repo.live_cluster()
    except NoGoodCommit as exc:
        raise BootstrapError(str(exc)) from None
    print(f"minicl-bootstrap: config commit {cluster.commit[:12]} ({status.get('commit_subject', '')})")
    if is_ssh_url(args.repo) and not args.deploy_key:
        adopt_repo_deploy_key(args, repo, minion_id)

    host = cluster.host_for_minion(minion_id)
    if host is None:
        short = minion_id.split(".")[0]
        print(f'\nThis host ({minion_id}) is not in cluster.json yet. Add this entry under "hosts",')
        print("commit, push, then run minicl-bootstrap again (it also starts the schedule):\n")
        print(snippet_for_this_host(short))
        return EXIT_NOT_IN_CLUSTER

    follow_pin(repo, minion_id, args.cache_dir)
    # The scheduler's jobs, before the minion starts (the base role keeps them up to date).
    write_file(schedule.config_path(args.salt_config_dir), schedule.render(cluster))
    repo.release_run_lock()  # the salt-call below is the run now
    code = 0
    if not args.no_apply:
        print("minicl-bootstrap: salt-call --local state.apply", flush=True)
        code = subprocess.run(
            [salt_program(), "--local", "state.apply", "--retcode-passthrough"], check=False
        ).returncode
        print(f"minicl-bootstrap: state.apply {'succeeded' if code == 0 else f'FAILED (exit {code})'}")
    if not args.no_schedule:
        print(f"minicl-bootstrap: {start_schedule(args)}")
    print(f'\nThis host\'s entry under "hosts" in cluster.json (as {host} is now):\n')
    print(snippet_for_this_host(host, cluster.host_roles(host)))
    return code


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except BootstrapError as exc:
        print(f"minicl-bootstrap: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"minicl-bootstrap: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
