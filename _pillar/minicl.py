"""External pillar: the cluster configuration from the config repo, fail-safe.

Minion (or master) config, as written by ``minicl-bootstrap``::

    ext_pillar:
      - minicl:
          repo: ssh://git@git.example.org/srv/git/cluster.git
          branch: main                          # default main
          deploy_key: /etc/minicl/deploy.key    # optional
          known_hosts: /etc/minicl/known_hosts  # optional
          cache_dir: /var/lib/minicl            # default; live checkout at <cache_dir>/live
          timeout: 30                           # seconds for the SSH connect
          applied_file: /var/lib/minicl/applied.json   # on the minion; default <cache_dir>/applied.json

Every compile fetches the branch, validates the new commit and only then makes it live (never
while another run is in progress: this process keeps a shared lock until it exits, so the SLS
files it renders come from the same commit). The pillar is always the live (last good) commit::

    minicl:
      cluster:   the validated cluster.json
      host:      {name, fqdn, ip, roles} of this minion
      addresses: {v4: [...], v6: [...]} of every cluster host
      states:    SLS names of this host's roles (the top file applies them)
      status:    {ok, commit, commit_time, last_good_fetch, error, bad_commit, pending_commit, ...}
      applied_file: where the base role records the commit it converged to
      release:   {pin: {commit, url}} of the minicl the live commit pins (the minicl submodule),
                 {pin: None} without one (and under a master), {pin: None, error} if unreadable

Before a new commit goes live, this host's highstate is rendered from it (masterless): a commit
whose SLS files do not render here is a bad commit for this host. SLS files of the live commit
that stop rendering (new minicl code, changed grains) are left out of ``states`` and reported,
so minicl's own base role keeps converging.

If no good commit was ever fetched, or the minion id is not in ``hosts``, the pillar carries
only ``_errors``: Salt then refuses to run states, and the message says what to do.
"""

import logging
import multiprocessing
import os

try:
    from minicl import hostview, paths
    from minicl.config import ConfigError, host_snippet
    from minicl.configrepo import ConfigRepo, NoGoodCommit
    from minicl.pin import PinError
    from minicl.rendercheck import RenderCheck

    HAS_DEPS = True
except ImportError as exc:  # pragma: no cover
    HAS_DEPS = False
    IMPORT_ERROR = str(exc)

log = logging.getLogger(__name__)

__virtualname__ = "minicl"


def __virtual__():
    if not HAS_DEPS:
        return False, f"minicl pillar needs GitPython and the minicl package: {IMPORT_ERROR}"
    return __virtualname__


def _in_a_run():
    """Whether this process is one run: salt-call, or a job process of a salt-minion daemon.
    The daemon's own processes (and a master's workers) compile pillars for a long time: they
    must not keep the config repo's run lock, or ``live`` would never move again."""
    if __opts__.get("__cli") == "salt-call":
        return True
    return multiprocessing.current_process().name.startswith(("Schedule(", "ProcessPayload("))


def ext_pillar(
    minion_id,
    pillar,
    repo,
    branch="main",
    deploy_key=None,
    known_hosts=None,
    cache_dir=None,
    timeout=30,
    applied_file=None,
):  # pylint: disable=unused-argument
    cache_dir = cache_dir or paths.STATE_DIR
    config_repo = ConfigRepo(
        cache_dir, repo, branch=branch, deploy_key=deploy_key, known_hosts=known_hosts, timeout=timeout
    )
    try:
        return _compile(config_repo, minion_id, applied_file or os.path.join(cache_dir, paths.APPLIED_NAME))
    finally:
        if not _in_a_run():
            config_repo.release_run_lock()


def _waits_for_other_runs():
    """A state function called by hand (salt-call) waits for a run in progress, rather than
    being refused by Salt, and then applies the newest commit."""
    return __opts__.get("__cli") == "salt-call" and str(__opts__.get("fun", "")).startswith("state.")


def _say_waiting(pids):
    who = ", ".join(f"PID {pid} ({_command_name(pid)})" for pid in pids) or "another process"
    log.warning(
        "minicl: another run is in progress on this host (%s); this one starts when it has finished", who
    )


def _command_name(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(
                os.path.basename(arg) for arg in f.read().decode(errors="replace").split("\0")[:3] if arg
            )
    except OSError:
        return "?"


def _compile(config_repo, minion_id, applied_file):
    check = None
    if __opts__.get("__role") == "minion":  # under a master, one live commit serves every minion
        check = RenderCheck(
            __opts__,
            config_repo.live_path,
            lambda cluster: hostview.pillar_for(
                cluster, minion_id, {"ok": True, "commit": cluster.commit}, applied_file
            ),
        )
    status = config_repo.update(after_others=_say_waiting if _waits_for_other_runs() else None, check=check)
    if status.get("error"):
        log.error("minicl: %s (serving commit %s)", status["error"], status.get("commit", "(none)")[:12])
    try:
        cluster = config_repo.live_cluster()
    except (NoGoodCommit, ConfigError) as exc:
        return _refuse(exc.summary() if isinstance(exc, ConfigError) else str(exc))
    # The commit actually read; a pending commit goes live when no other run is in progress.
    status = dict(status, commit=cluster.commit, ok=not status.get("error"))
    checkout = os.path.join(config_repo.checkouts_dir, cluster.commit)
    pillar = hostview.pillar_for(cluster, minion_id, status, applied_file, checkout)
    if pillar is not None:
        pillar["minicl"]["release"] = _release(config_repo)
    if pillar is None:
        short = minion_id.split(".")[0]
        return _refuse(
            f"this minion ({minion_id}) is not a host in cluster.json at commit "
            f'{status.get("commit", "?")[:12]}. Add it under "hosts" (as "{short}" or '
            f'"{short}.{cluster.domain}"), push, then re-run. '
            f"'minicl-bootstrap --print-snippet' prints the entry, e.g. {host_snippet(short, ['ADDRESS'])}"
        )
    return pillar


def _release(config_repo):
    """{pin} of the minicl the live commit pins (masterless only: under a master, hosts are
    updated by hand), or {pin: None, error} when the pin cannot be read."""
    if __opts__.get("__role") != "minion":
        return {"pin": None}
    try:
        pin = config_repo.live_pin()
    except PinError as exc:
        log.error("minicl: %s", exc)
        return {"pin": None, "error": str(exc)}
    return {"pin": pin._asdict() if pin else None}


def _refuse(message):
    """A pillar Salt refuses to run states with, showing only ``message`` (no traceback)."""
    log.error("minicl: %s", message)
    return {"_errors": [f"minicl: {message}"]}
