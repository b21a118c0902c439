"""The two flock(2) locks in the config repo's cache dir, and who holds them.

    lock                 the update lock: one update at a time (``update_lock``)
    runs.lock            the run lock: shared by every run from its pillar compile until it
                         exits (``hold_run_lock``, ``release_run_lock``)

An update that would move ``live`` converts its shared run lock to exclusive (``only_run``),
so ``live`` only moves while no other run is in progress, and goes back to shared afterwards
(``back_to_shared``). ``lock_holders`` names the processes in a run. Taking either lock makes
the cache dir first (mode 0700).
"""

import fcntl
import os
import time
from contextlib import contextmanager

LOCK_WAIT = 600

# cache_dir -> (pid, fd) holding runs.lock shared, for the life of this process (one run). A
# forked child (a salt-minion job) takes its own: a lock is shared by every copy of its fd.
_RUN_LOCKS = {}


def _prepare_cache_dir(cache_dir):
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    os.chmod(cache_dir, 0o700)  # holds the deploy key and password hashes


def _try_exclusive(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def lock_holders(path):
    """PIDs of the other processes that have ``path`` open (runs keep runs.lock open while they
    hold it), from /proc: /proc/locks names overlayfs files by their lower inode, not this one."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == path for fd in fds):
                pids.append(int(entry))
        except OSError:  # gone, or not ours to look at
            continue
    return sorted(pids)


@contextmanager
def update_lock(cache_dir, lock_path, wait=LOCK_WAIT):
    """Hold the update lock ``lock_path``; waits up to ``wait`` seconds for another update to finish."""
    _prepare_cache_dir(cache_dir)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another minicl run has held {lock_path} for over {wait} s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def hold_run_lock(cache_dir, runs_lock_path, after_others=None, poll=0.2):
    """Join the runs in progress (shared ``runs_lock_path``) until this process exits.

    With ``after_others`` (a function), first wait until no other process is in a run,
    calling ``after_others(pids)`` once if it has to wait: a state run that waits here
    instead of being refused by Salt then fetches and applies the newest commit.
    """
    held = _RUN_LOCKS.get(cache_dir)
    if held and held[0] == os.getpid():
        return
    if held:  # inherited from the process this one was forked from: not this run's
        os.close(held[1])
    _prepare_cache_dir(cache_dir)
    fd = os.open(runs_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if after_others:
        waited = False
        while not _try_exclusive(fd):
            if not waited:
                after_others(lock_holders(runs_lock_path))
                waited = True
            time.sleep(poll)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while someone is switching live
    _RUN_LOCKS[cache_dir] = (os.getpid(), fd)


def release_run_lock(cache_dir):
    """Leave the runs in progress (before starting a separate salt-call, say)."""
    held = _RUN_LOCKS.pop(cache_dir, None)
    if held and held[0] == os.getpid():
        os.close(held[1])


def only_run(cache_dir):
    """True (holding runs.lock exclusively) if no other process is in a run."""
    fd = _RUN_LOCKS[cache_dir][1]
    if _try_exclusive(fd):
        return True
    fcntl.flock(fd, fcntl.LOCK_SH)  # a failed conversion drops the lock: take it back
    return False


def back_to_shared(cache_dir):
    fcntl.flock(_RUN_LOCKS[cache_dir][1], fcntl.LOCK_SH)
