"""Dead-man switch for a new firewall ruleset: restore the previous one unless confirmed.

``replace_confirmed`` is the sequence the firewall state runs: back up the live ruleset, start
the watchdog, apply the new ruleset, and keep it only if a peer answers in time::

    error = deadman.replace_confirmed(text, previous_listing, peers, ssh_ports, seconds)

The watchdog is this module run as a detached process::

    python -m minicl.deadman BACKUP_SCRIPT SECONDS

It is killed once a peer is reachable; if the run or the host's connectivity dies instead, it
wakes up after SECONDS and loads BACKUP_SCRIPT with nft (one transaction).
"""

import os
import subprocess
import sys
import tempfile
import time

from minicl import firewall
from minicl.firewall import NFT


def replace_confirmed(text, previous_listing, peers, ssh_ports, seconds):
    """Apply the ruleset ``text``; returns an error message, or None when it is in force.

    With ``seconds`` and ``peers``, and a previous ruleset to go back to, the new one stays only
    if a peer answers on an SSH port within ``seconds``; otherwise the previous one is restored
    (and the watchdog restores it if this process dies first). A host's first ruleset has
    nothing to go back to but no firewall at all: it is applied unconfirmed (SSH is open in
    every ruleset minicl renders).
    """
    firewall.stop_stray_deadman()
    if not (seconds and peers and previous_listing.strip()):
        firewall.replace_table(text)
        return None
    backup = firewall.restore_script(previous_listing)
    firewall.check_script(backup)  # know that the way back works before going
    fd, backup_path = tempfile.mkstemp(prefix="firewall-previous-", suffix=".nft", dir=firewall.STATE_DIR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(backup)
    watchdog = firewall.start_deadman(backup_path, seconds + 10)
    try:
        firewall.replace_table(text)
    except firewall.FirewallError as exc:
        watchdog.kill()
        return f"table inet minicl not changed: {exc}"
    # Peers that have not converged yet may still listen on an SSH port of the previous ruleset.
    probe_ports = sorted(set(ssh_ports) | firewall.ssh_ports_open(previous_listing))
    if firewall.reach_a_peer(peers, probe_ports, seconds):
        watchdog.kill()
        return None
    try:
        firewall.replace_table(backup)
    except firewall.FirewallError as exc:
        return (
            f"no peer answered after the new ruleset was applied and restoring the previous one "
            f"failed ({exc}); the watchdog tries again in 10 s"
        )
    watchdog.kill()
    return (
        f"no peer ({', '.join(peers)}) answered on port {', '.join(map(str, probe_ports))} within "
        f"{seconds} s after the new ruleset was applied: the previous ruleset is restored"
    )


def main(argv=None):
    backup, seconds = (argv or sys.argv[1:])[:2]
    time.sleep(float(seconds))
    result = subprocess.run([NFT, "-f", backup], capture_output=True, text=True, check=False)
    subprocess.run(
        [
            "logger",
            "-t",
            "minicl",
            "firewall not confirmed in time: previous ruleset restored"
            if result.returncode == 0
            else f"firewall restore failed: {result.stderr.strip()}",
        ],
        check=False,
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
