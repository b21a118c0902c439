"""Host checks: each says OK or FAIL with a reason a person can act on.

    for check in run_all(ssh_port=22):
        print(check)          # "disk /: OK 41% used" / "postfix: FAIL not running (postfix status: ...)"

Every check reads the system directly (statvfs, /proc, postqueue, systemctl, a TCP connect,
dpkg and apt through minicl.integrity); the inputs can be injected for tests.
"""

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

from minicl import integrity, mail, paths

# Filesystems that hold data; pseudo and in-memory ones (proc, tmpfs, overlay, ...) are left out.
REAL_FILESYSTEMS = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "zfs",
        "f2fs",
        "vfat",
        "exfat",
        "jfs",
        "reiserfs",
        "nilfs2",
        "bcachefs",
        "ntfs",
        "ntfs3",
    }
)
DISK_FULL = 0.90
INODES_FULL = 0.90
LOAD_PER_CPU = 2.0
MEMORY_AVAILABLE_MIN = 0.05
QUEUE_SIZE_MAX = 50
QUEUE_AGE_MAX = 3600
NAMED_MAX = 5  # a failing check names this many files or sources, then "and N more"


@dataclass
class Check:
    name: str
    ok: bool
    reason: str
    value: float = None  # the measured figure, for metrics

    def __str__(self):
        return f"{self.name}: {'OK' if self.ok else 'FAIL'} {self.reason}"


def real_mounts(mounts_path="/proc/self/mounts"):
    """[(mountpoint, fstype)] of real filesystems, each mount point once."""
    seen, found = set(), []
    with open(mounts_path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] in REAL_FILESYSTEMS:
                mountpoint = fields[1].replace("\\040", " ")
                if mountpoint not in seen:
                    seen.add(mountpoint)
                    found.append((mountpoint, fields[2]))
    return found


def disk_checks(mounts, statvfs=os.statvfs):
    checks = []
    for mountpoint, _ in mounts:
        st = statvfs(mountpoint)
        used = st.f_blocks - st.f_bfree
        usable = used + st.f_bavail
        ratio = used / usable if usable else 0.0
        checks.append(
            Check(
                f"disk {mountpoint}",
                ratio < DISK_FULL,
                f"{ratio:.0%} used" + ("" if ratio < DISK_FULL else f" (limit {DISK_FULL:.0%})"),
                ratio,
            )
        )
        if st.f_files:
            iratio = (st.f_files - st.f_ffree) / st.f_files
            checks.append(
                Check(
                    f"inodes {mountpoint}",
                    iratio < INODES_FULL,
                    f"{iratio:.0%} used" + ("" if iratio < INODES_FULL else f" (limit {INODES_FULL:.0%})"),
                    iratio,
                )
            )
    return checks


def load_check(loadavg=None, cpus=None):
    load5 = (loadavg or os.getloadavg())[1]
    cpus = cpus or os.cpu_count() or 1
    per_cpu = load5 / cpus
    return Check(
        "load",
        per_cpu < LOAD_PER_CPU,
        f"{load5:.2f} over 5 min on {cpus} CPU(s)"
        + ("" if per_cpu < LOAD_PER_CPU else f" (limit {LOAD_PER_CPU:g} per CPU)"),
        per_cpu,
    )


def memory_check(meminfo_path="/proc/meminfo"):
    values = {}
    with open(meminfo_path, encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0])
    ratio = values["MemAvailable"] / values["MemTotal"]
    return Check(
        "memory",
        ratio >= MEMORY_AVAILABLE_MIN,
        f"{ratio:.0%} available of {values['MemTotal'] // 1024} MiB"
        + ("" if ratio >= MEMORY_AVAILABLE_MIN else f" (minimum {MEMORY_AVAILABLE_MIN:.0%})"),
        ratio,
    )


def mail_queue_checks(queue=None):
    if queue is None:
        try:
            queue = mail.queue()
        except (OSError, RuntimeError) as exc:
            return [Check("mail queue", False, f"cannot read the queue: {exc}")]
    age = queue["oldest_age_seconds"] or 0
    reasons = sorted({m["reason"] for m in queue["messages"] if m["reason"]})
    why = f"; e.g. {reasons[0]}" if reasons else ""
    return [
        Check(
            "mail queue",
            queue["size"] <= QUEUE_SIZE_MAX,
            f"{queue['size']} message(s)"
            + ("" if queue["size"] <= QUEUE_SIZE_MAX else f" (limit {QUEUE_SIZE_MAX}){why}"),
            queue["size"],
        ),
        Check(
            "mail queue age",
            age <= QUEUE_AGE_MAX,
            f"oldest {age} s" + ("" if age <= QUEUE_AGE_MAX else f" (limit {QUEUE_AGE_MAX} s){why}"),
            age,
        ),
    ]


def systemd_checks():
    """Failed units and clock sync, where systemd runs (skipped elsewhere)."""
    if not os.path.isdir(paths.SYSTEMD_RUN_DIR):
        return []
    failed = subprocess.run(
        ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    units = [line.split()[0] for line in failed if line.strip()]
    checks = [
        Check(
            "systemd units", not units, f"failed: {', '.join(units)}" if units else "none failed", len(units)
        )
    ]
    if shutil.which("timedatectl"):
        ntp = subprocess.run(
            ["timedatectl", "show", "-p", "NTP", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if ntp and ntp[0] == "yes":  # a time daemon runs
            synced = len(ntp) > 1 and ntp[1] == "yes"
            checks.append(
                Check(
                    "clock",
                    synced,
                    "synchronised" if synced else "not synchronised (check the time daemon)",
                    1 if synced else 0,
                )
            )
    return checks


def port_check(name, port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=2):
            return Check(name, True, f"answers on port {port}", 1)
    except OSError as exc:
        return Check(name, False, f"does not answer on port {port} ({exc.strerror or exc})", 0)


def postfix_check():
    if not shutil.which("postfix"):
        return Check("postfix", False, "not installed", 0)
    result = subprocess.run(["postfix", "status"], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return Check("postfix", True, "running", 1)
    return Check("postfix", False, f"not running ({(result.stderr or result.stdout).strip()})", 0)


def _some(items):
    named = ", ".join(str(item) for item in items[:NAMED_MAX])
    return named + (f" and {len(items) - NAMED_MAX} more" if len(items) > NAMED_MAX else "")


def packages_verified_check(record_path, verify=integrity.verify_installed, fresh=True):
    """Installed files, other than conffiles, against their packages' md5sums (minicl.integrity).
    Not ``fresh``: the last verification's result (no file looked at), or "not verified yet"."""
    try:
        last = verify(record_path) if fresh else integrity.last_verified(record_path)
        if last is None:
            return Check("packages verified", True, "not verified yet: the scheduled checks verify them")
        changed, packages = last
    except (OSError, integrity.IntegrityError) as exc:
        return Check("packages verified", False, f"cannot verify the installed files: {exc}")
    if not changed:
        return Check("packages verified", True, f"the files of {packages} packages match them", 0)
    return Check(
        "packages verified",
        False,
        f"{len(changed)} installed file(s) differ from their package: {_some(changed)}",
        len(changed),
    )


def apt_sources_check(unsigned_sources=integrity.unsigned_sources):
    try:
        found = unsigned_sources()
    except (OSError, integrity.IntegrityError) as exc:
        return Check("apt sources signed", False, f"cannot read apt's sources: {exc}")
    if not found:
        return Check("apt sources signed", True, "every source is signed", 0)
    return Check("apt sources signed", False, f"unsigned: {_some(found)}", len(found))


def run_all(ssh_port=22, state_dir=paths.STATE_DIR, verify_packages=True):
    """Every check. ``verify_packages`` false: "packages verified" is the last verification's
    result (looking at every packaged file takes a noticeable part of a run's time)."""
    checks = disk_checks(real_mounts())
    checks += [load_check(), memory_check()]
    checks += mail_queue_checks()
    checks += systemd_checks()
    checks += [port_check("ssh", ssh_port), postfix_check()]
    record = os.path.join(state_dir, integrity.RECORD_NAME)
    checks += [packages_verified_check(record, fresh=verify_packages), apt_sources_check()]
    return checks
