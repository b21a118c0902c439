"""Dead-man switch for a new firewall ruleset: restore the previous one unless confirmed.

    python -m minicl.deadman BACKUP_SCRIPT SECONDS

Started detached by the firewall state right before it applies a changed ruleset. The state
kills it once a peer is reachable; if the state or the host's connectivity dies instead, this
process wakes up after SECONDS and loads BACKUP_SCRIPT with nft (one transaction).
"""

import subprocess
import sys
import time

from minicl.firewall import NFT


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
