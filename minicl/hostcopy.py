"""A throwaway copy of the host this runs on: boot it, try something inside, destroy it.

The copy is the host's own filesystem seen through overlayfs (lower dir ``/``, upper and work dirs
on a fresh tmpfs), with ``/lib/systemd/systemd`` as its PID 1 in new mount, UTS, PID, IPC, cgroup
and network namespaces. Its network namespace holds only ``lo`` (with the host's own addresses
when asked, so that services bound to them start): there is no route anywhere, so nothing inside
reaches the network or the rest of the cluster. Every write inside lands on the
tmpfs; the real host's files, users, firewall, mail queue, services and sysctls stay as they are,
and ``destroy`` throws everything away. Needs root on a host booted with systemd on the unified
cgroup2 hierarchy (Debian 12's default).

    with HostCopy("rehearsal") as copy:
        copy.boot()                                    # "running" or "degraded"
        copy.run(["apt-get", "-y", "upgrade"])         # changes only the copy
        copy.run(["systemctl", "is-active", "postgresql"])

What the copy is made of:

- A transient service ``minicl-hostcopy-<name>.service`` of the host's systemd, with
  ``Delegate=yes``: systemd hands it a cgroup subtree for the copy's systemd. Inside it the
  ``unshare`` process waits in ``supervisor/`` and the copy lives in ``payload/`` (cgroup2 allows
  processes only in leaves once controllers are enabled). ``KillSignal=SIGKILL``: stopping the
  unit kills the copy at once, with nothing to save.
- Capabilities the copy has no use for and that reach past its namespaces are dropped from its
  bounding set: loading kernel modules, setting the clock, raw I/O, creating device nodes (the
  real disks) and the kernel log (``/proc/kmsg`` is read destructively).
- ``/proc`` is new, with ``/proc/sys`` read-only except ``/proc/sys/net`` (its own network
  namespace) and ``/proc/sysrq-trigger`` read-only; ``/sys`` is read-only; cgroup2 at
  ``/sys/fs/cgroup`` is the delegated ``payload``; ``/dev`` is private (null, zero, full, random,
  urandom, tty, a new devpts, shm); ``/tmp`` and ``/run`` are fresh, as at boot.
- The tmpfs and every overlay are mounted in the copy's own mount namespace: they never show in
  the host's mount table and go away with the copy's last process.
- Each real filesystem mounted below ``/`` on the host (a separate ``/var``, ``/srv``, ``/home``)
  gets an overlay of its own, because an overlay of ``/`` shows the directories under those mount
  points, not what is mounted there. One that cannot be overlaid is shown read-only instead and
  listed in ``readonly_mounts``. Pseudo and in-memory filesystems, and whatever is mounted under
  ``/proc``, ``/sys``, ``/dev``, ``/run`` and ``/tmp``, are the copy's own.
- Before PID 1 starts, in the copy's ``/etc`` only: ``minicl-minion.service`` and every timer the
  host enables are masked (a copy must not converge or run maintenance), and so are the units
  in ``mask`` and ``systemd-remount-fs.service`` (the host's fstab options do not apply to the
  copy's root); the journal is kept in memory (``Storage=volatile``) so that journald does not copy
  the host's journal files up; the hostname is ``<host>-copy`` (``/etc/hostname`` and
  ``/etc/hosts`` in the copy say so). The machine-id stays the host's. Every other service the
  host enables starts in the copy.

Limits: a file written in the copy is first copied up whole to the tmpfs (a database page
written means its whole segment file in memory), so the copy needs memory for every file its
work touches; when the tmpfs is full, writes fail inside the copy only. Changes the host makes to
its files while a copy runs may or may not show inside it. The copy shares the host's kernel
(modules, kernel-wide sysctls, the clock) and must not be used to try those.
"""

import ipaddress
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import time

from minicl.errors import MiniclError
from minicl.minion import UNIT_NAME as MINION_UNIT

UNIT_PREFIX = "minicl-hostcopy-"
CONTAINER = "minicl-hostcopy"

# Capabilities the copy's processes never get (see the module docstring).
DROPPED_CAPABILITIES = ("CAP_SYS_MODULE", "CAP_SYS_TIME", "CAP_SYS_RAWIO", "CAP_MKNOD", "CAP_SYSLOG")

# Filesystems that hold no files of the host's own: the copy gets fresh ones or none.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)
OWN_TREES = ("/proc", "/sys", "/dev", "/run", "/tmp")

# Masked in every copy, besides the host's timers: the minion would converge the copy, and
# systemd-remount-fs applies the host's fstab options to "/", which the copy's overlay root
# refuses (the unit fails, the copy boots "degraded" for nothing).
ALWAYS_MASKED = (MINION_UNIT, "systemd-remount-fs.service")

ENTER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The root's view of the kernel, for a root built at $R before systemd boots in it; shared with
# the test hosts (minicl_lab.testhosts). /proc is new, /proc/sys read-only but for /proc/sys/net,
# /sys read-only, cgroup2 rooted at the caller's cgroup (in a cgroup namespace of its own: the
# same root for a caller that is in one already), /dev private, /tmp and /run fresh.
KERNEL_VIEW = r"""
mount -t proc proc "$R/proc"
# Kernel-wide knobs stay out of reach; the settings of the root's own network namespace do not.
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,rw "$R/proc/sys/net"
mount -t sysfs -o ro sysfs "$R/sys"
unshare --cgroup mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
# A private /dev with only the harmless devices, not the machine's disks.
mount -t tmpfs -o mode=0755,nosuid minicl-dev "$R/dev"
for dev in null zero full random urandom tty; do
    touch "$R/dev/$dev"
    mount --bind "/dev/$dev" "$R/dev/$dev"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
# Empty at every boot, as Debian's tmp.conf makes /tmp; the machine's /tmp and /run stay outside.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
"""

# Makes $R the root (systemd refuses a chroot) and lets go of the old one.
PIVOT_ROOT = r"""
cd "$R"
mkdir -p .minicl-oldroot
pivot_root . .minicl-oldroot
umount -l /.minicl-oldroot
rmdir /.minicl-oldroot
"""

# The service's main process, in the host's namespaces and in the service's delegated cgroup:
# splits that cgroup into supervisor/ (for unshare, which waits for the copy's PID 1) and payload/
# (for the copy), hands the controllers on to them, and starts the copy's namespaces.
SUPERVISE = r"""
set -eu
BOOT=$1; shift
CG=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir "$CG/supervisor" "$CG/payload"
echo 0 > "$CG/supervisor/cgroup.procs"
for controller in $(cat "$CG/cgroup.controllers"); do
    echo "+$controller" > "$CG/cgroup.subtree_control" 2>/dev/null || true
done
exec unshare --mount --uts --net --pid --ipc --propagation private --fork --kill-child \
    /bin/sh -c "$BOOT" minicl-hostcopy-boot "$CG/payload" "$@"
"""

# PID 1 of the copy's namespaces, before it becomes systemd: builds the root and pivots into it.
# Arguments: payload cgroup, tmpfs mount point, tmpfs size, hostname, then the items
#   sub PATH             a real filesystem of the host mounted at PATH: overlay it too
#   robind PATH          ... one that cannot be overlaid: show it read-only
#   bind ro|rw SRC DST   a folder of the host shown inside
#   mask UNIT            a unit masked in the copy's /etc
#   addr ADDRESS/LEN     one of the host's addresses, on the copy's lo (services bound to it start)
BOOT = r"""
set -eu
PAYLOAD=$1; D=$2; SIZE=$3; NAME=$4; shift 4
echo 0 > "$PAYLOAD/cgroup.procs"
mkdir -p "$D"
mount -t tmpfs -o "mode=0700,size=$SIZE" minicl-hostcopy "$D"
mkdir "$D/upper" "$D/work" "$D/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$D/root"
R=$D/root
@KERNEL_VIEW@
# The copy is root on the host's kernel: no magic SysRq (a reboot of the real machine) either.
if [ -e "$R/proc/sysrq-trigger" ]; then
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi
n=0
while [ $# -gt 0 ]; do
    case $1 in
    sub)
        n=$((n + 1))
        mkdir "$D/sub$n" "$D/sub$n/upper" "$D/sub$n/work"
        if ! mount -t overlay overlay -o "lowerdir=$2,upperdir=$D/sub$n/upper,workdir=$D/sub$n/work" "$R$2"
        then
            mount --bind "$2" "$R$2"
            mount -o remount,bind,ro "$R$2"
            echo "readonly $2"
        fi
        shift 2 ;;
    robind)
        mount --bind "$2" "$R$2"
        mount -o remount,bind,ro "$R$2"
        echo "readonly $2"
        shift 2 ;;
    bind)
        if [ -d "$3" ]; then mkdir -p "$R$4"; else mkdir -p "$(dirname "$R$4")"; touch "$R$4"; fi
        mount --bind "$3" "$R$4"
        [ "$2" = rw ] || mount -o remount,bind,ro "$R$4"
        shift 4 ;;
    mask)
        ln -sfn /dev/null "$R/etc/systemd/system/$2"
        shift 2 ;;
    addr)
        ip addr add "$2" dev lo
        shift 2 ;;
    *)
        echo "unknown item $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$R/etc/systemd/journald.conf.d/zz-minicl-hostcopy.conf"
hostname "$NAME"
echo "$NAME" > "$R/etc/hostname"
printf '127.0.1.1\t%s\n' "$NAME" >> "$R/etc/hosts"
@PIVOT_ROOT@
echo ready
exec </dev/null >/dev/null 2>&1
exec unshare --cgroup env -i container=minicl-hostcopy /lib/systemd/systemd --system --unit=multi-user.target
"""
BOOT = BOOT.replace("\n@KERNEL_VIEW@\n", KERNEL_VIEW).replace("\n@PIVOT_ROOT@\n", PIVOT_ROOT)


class HostCopyError(MiniclError):
    """A copy could not be booted, entered or destroyed; the message says what to do."""


def check_name(name):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
        raise HostCopyError(
            f"copy name {name!r}: use letters, digits, '-' and '_' (at most 64), it becomes "
            f"the unit name {UNIT_PREFIX}<name>.service"
        )
    return name


def check_unit_name(unit):
    if not re.fullmatch(r"[A-Za-z0-9:_.@\\-]+\.[a-z]+", unit) or unit.startswith("."):
        raise HostCopyError(f"cannot mask {unit!r}: give a unit name such as 'postfix.service'")
    return unit


def enabled_timers(unit_dirs=("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")):
    """Timers the host's systemd starts by itself: those in a ``*.wants/`` or ``*.requires/``
    folder of ``unit_dirs``, sorted."""
    timers = set()
    for top in unit_dirs:
        try:
            entries = os.listdir(top)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith((".wants", ".requires")) and os.path.isdir(os.path.join(top, entry)):
                timers.update(u for u in os.listdir(os.path.join(top, entry)) if u.endswith(".timer"))
    return sorted(timers)


def masked_units(timers, mask=()):
    """What a copy masks: ALWAYS_MASKED, the host's ``timers``, then ``mask``; each once, in that
    order."""
    units = []
    for unit in (*ALWAYS_MASKED, *timers, *mask):
        if check_unit_name(unit) not in units:
            units.append(unit)
    return units


def _unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def copied_mounts(mountinfo):
    """The mount points below ``/`` of the host's real filesystems, parents first, from the text
    of ``/proc/PID/mountinfo``: each as ``("sub", path)`` to overlay, or ``("robind", path)`` when
    overlayfs cannot take its path in an option (``,`` ``:`` ``\\``) and it is shown read-only."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        path = _unescape_mountinfo(fields[4])
        fstype = fields[fields.index("-") + 1]
        if path == "/" or fstype in PSEUDO_FILESYSTEMS or fstype.startswith("fuse"):
            continue
        if any(path == top or path.startswith(top + "/") for top in OWN_TREES):
            continue
        if path not in found:
            found.append(path)
    found.sort(key=lambda p: p.count("/"))
    return [("robind" if re.search(r"[,:\\]", p) else "sub", p) for p in found]


def copy_hostname(hostname):
    """The copy's hostname: the host's short name with ``-copy``, at most 64 characters."""
    return hostname.split(".")[0][: 64 - len("-copy")] + "-copy"


def boot_items(mounts, binds, masks, addresses=()):
    """The item arguments of BOOT (see there) for ``mounts`` (from ``copied_mounts``), ``binds``
    ([(path_on_host, path_in_copy, writable)]), ``masks`` (unit names) and ``addresses`` (the
    host's own IP addresses, given to the copy's ``lo``)."""
    items = []
    for address in addresses:
        parsed = ipaddress.ip_address(address)  # ValueError for anything else
        items += ["addr", f"{parsed}/{parsed.max_prefixlen}"]
    for kind, path in mounts:
        items += [kind, path]
    for source, target, writable in binds:
        for path in (source, target):
            if not os.path.isabs(path) or ".." in path.split("/"):
                raise HostCopyError(f"bind {source} -> {target}: give absolute paths without '..'")
        if not os.path.exists(source):
            raise HostCopyError(f"bind {source} -> {target}: {source} does not exist on this host")
        items += ["bind", "rw" if writable else "ro", source, target]
    for unit in masks:
        items += ["mask", check_unit_name(unit)]
    return items


def systemd_run_command(unit, args, description):
    """The command line that starts the copy as the transient service ``unit``.

    systemd expands ``$`` in a unit's command line, so every ``$`` of the scripts and arguments
    is written ``$$``.
    """
    escaped = [a.replace("$", "$$") for a in (SUPERVISE, BOOT, *args)]
    return [
        "systemd-run",
        f"--unit={unit}",
        f"--description={description}",
        "--quiet",
        "--collect",
        "--pipe",
        "--property=Delegate=yes",
        "--property=KillSignal=SIGKILL",
        f"--property=CapabilityBoundingSet=~{' '.join(DROPPED_CAPABILITIES)}",
        "/bin/sh",
        "-c",
        escaped[0],
        "minicl-hostcopy",
        *escaped[1:],
    ]


def enter_command(pid, enter_cgroup, cmd, env=None):
    """The command line that runs ``cmd`` (a list) in all namespaces of the copy whose PID 1 is
    ``pid``, as root with a clean environment (plus ``env``). It first moves into the copy's
    cgroup ``enter_cgroup`` (a leaf beside the copy's systemd tree), so that the copy's
    ``systemd-run --scope`` can move it like any process of its own."""
    environ = {
        "PATH": ENTER_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/sh",
        **(env or {}),
    }
    return [
        "sh",
        "-c",
        'mkdir -p "$0" && echo $$ > "$0/cgroup.procs" && exec "$@"',
        enter_cgroup,
        "nsenter",
        "-t",
        str(pid),
        "-a",
        "-r",
        "-w",
        "--",
        "env",
        "-i",
        *(f"{key}={value}" for key, value in environ.items()),
        *cmd,
    ]


def _tail(text, lines=30):
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def child_pids(pid):
    """The PIDs of ``pid``'s children ([] when it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def process_name(pid):
    """``pid``'s command name (comm), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _systemctl(*args):
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False, timeout=120)


class HostCopy:
    """A throwaway copy of this host (see the module docstring). ``boot`` starts it, ``run`` and
    ``write`` work inside it, ``destroy`` (or leaving the ``with`` block) throws it away.

    ``binds``: [(path_on_host, path_in_copy, writable)] folders (or files) of the real host shown
    inside, e.g. a package cache; a writable one is the one way for the copy to change the host.
    ``mask``: unit names masked in the copy, besides the minion and the host's timers.
    ``tmpfs_size``: the size of the tmpfs that takes every write of the copy (``mount -t tmpfs``
    syntax: ``"50%"`` of RAM, ``"4g"``). ``addresses``: the host's own IP addresses, on the
    copy's ``lo`` (as /32 and /128: services bound to them start, and a connection to them stays
    in the copy; the rest of the network stays out of reach).
    """

    def __init__(self, name="rehearsal", binds=(), mask=(), tmpfs_size="50%", addresses=()):
        self.name = check_name(name)
        self.binds = [(str(s), str(t), bool(w)) for s, t, w in binds]
        self.mask = [check_unit_name(u) for u in mask]
        if not re.fullmatch(r"[0-9]+[kmgKMG%]?", str(tmpfs_size)):
            raise HostCopyError(f"tmpfs_size {tmpfs_size!r}: give a size such as '50%' or '4g'")
        self.tmpfs_size = str(tmpfs_size)
        self.addresses = [str(a) for a in addresses]
        self.unit = f"{UNIT_PREFIX}{name}.service"
        self.tmpfs_dir = f"/run/{UNIT_PREFIX}{name}"  # mounted on in the copy's namespace only
        self.hostname = copy_hostname(socket.gethostname())
        self.pid = None  # the copy's PID 1, as seen from the host
        self.masked = []
        self.readonly_mounts = []
        self._proc = None
        self._enter_cgroup = None

    def boot(self, timeout=120):
        """Boot the copy; returns ``systemctl is-system-running --wait`` of the copy once boot is
        done: ``running``, or ``degraded`` when units failed (``run(["systemctl", "--failed"])``
        says which). Raises HostCopyError, with the copy destroyed, when it does not boot."""
        if self._proc is not None:
            raise HostCopyError(f"copy {self.name} is booted already: destroy() it first")
        check_host()
        if _systemctl("is-active", "--quiet", self.unit).returncode == 0:
            raise HostCopyError(
                f"a copy named {self.name} runs already ({self.unit}): destroy it first "
                f"(HostCopy({self.name!r}).destroy(), or systemctl stop {self.unit})"
            )
        deadline = time.monotonic() + timeout
        self.masked = masked_units(enabled_timers(), self.mask)
        with open("/proc/1/mountinfo", encoding="utf-8") as f:
            mounts = copied_mounts(f.read())
        args = [
            self.tmpfs_dir,
            self.tmpfs_size,
            self.hostname,
            *boot_items(mounts, self.binds, self.masked, self.addresses),
        ]
        self._proc = subprocess.Popen(
            systemd_run_command(self.unit, args, f"minicl throwaway copy of this host ({self.name})"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            for line in self._lines_until_ready(deadline):
                if line.startswith("readonly "):
                    self.readonly_mounts.append(line.split(" ", 1)[1])
            self.pid = self._find_init(deadline)
            cgroup = _systemctl("show", "--property=ControlGroup", "--value", self.unit).stdout.strip()
            self._enter_cgroup = f"/sys/fs/cgroup{cgroup}/payload/minicl-enter"
            while not os.path.exists(f"/proc/{self.pid}/root/run/systemd/private"):
                self._check_alive(deadline, "systemd did not open /run/systemd/private")
                time.sleep(0.05)
            state = self.run(
                ["systemctl", "is-system-running", "--wait"],
                check=False,
                timeout=max(deadline - time.monotonic(), 1),
            ).stdout.strip()
            if state not in ("running", "degraded"):
                raise HostCopyError(
                    f"copy {self.name} booted {state!r} (not running or degraded); "
                    f"failed units:\n{self._failed_units()}"
                )
            return state
        except BaseException:
            self.destroy()
            raise

    def _lines_until_ready(self, deadline):
        """The lines BOOT writes before ``ready``."""
        out = self._proc.stdout
        buffered = b""
        while True:
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                if line == b"ready":
                    return
                yield line.decode(errors="replace")
            self._check_alive(deadline, "the copy's root was not ready", wait_for=out)
            chunk = os.read(out.fileno(), 4096)
            if not chunk:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                self._check_alive(0, f"the copy's root could not be built (on a tmpfs of {self.tmpfs_size})")
            buffered += chunk

    def _check_alive(self, deadline, what, wait_for=None):
        """Raise HostCopyError with what systemd-run and the boot script said if the copy's
        service ended or ``deadline`` passed; ``wait_for``: a stream to wait (until then) to read."""
        if wait_for is not None:
            ready, _, _ = select.select([wait_for], [], [], max(deadline - time.monotonic(), 0))
            if ready:
                return
        elif self._proc.poll() is None and time.monotonic() < deadline:
            return
        if self._proc.poll() is None:
            raise HostCopyError(
                f"copy {self.name}: {what} in time; see journalctl -u {self.unit}, "
                "or boot(timeout=...) with more seconds on a slow host"
            )
        try:
            _, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = b""
        raise HostCopyError(
            f"copy {self.name}: {what} (systemd-run exited {self._proc.returncode}):\n"
            f"{_tail(err.decode(errors='replace'))}"
        )

    def _find_init(self, deadline):
        """The copy's PID 1 as seen from here: the child of the service's unshare, once it runs
        systemd."""
        main = int(_systemctl("show", "--property=MainPID", "--value", self.unit).stdout.strip() or 0)
        while True:
            children = child_pids(main) if main else []
            if len(children) == 1 and process_name(children[0]) == "systemd":
                return children[0]
            self._check_alive(deadline, "systemd did not start as the copy's PID 1")
            time.sleep(0.05)

    def _failed_units(self):
        try:
            return self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
        except HostCopyError as exc:
            return str(exc)

    def run(self, cmd, check=True, input=None, timeout=600, env=None):  # pylint: disable=redefined-builtin
        """Run ``cmd`` (a list, or a string for ``sh -c``) in the copy as root; returns the
        CompletedProcess (text). With ``check``, a non-zero exit raises HostCopyError with the
        end of its output."""
        if self.pid is None:
            raise HostCopyError(f"copy {self.name} is not booted: call boot() first")
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        try:
            result = subprocess.run(
                enter_command(self.pid, self._enter_cgroup, cmd, env),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HostCopyError(
                f"{shlex.join(cmd)} did not end within {timeout} s in copy {self.name}; "
                "give run(timeout=...) more seconds if it needs them"
            ) from exc
        if check and result.returncode != 0:
            raise HostCopyError(
                f"{shlex.join(cmd)} exited {result.returncode} in copy {self.name}\n"
                f"--- stdout (end)\n{_tail(result.stdout)}\n--- stderr (end)\n{_tail(result.stderr)}"
            )
        return result

    def write(self, path, content, mode=0o644):
        """Write ``content`` (text) to ``path`` in the copy, creating its folder."""
        script = 'mkdir -p "$(dirname "$1")" && umask 077 && cat > "$1" && chmod "$2" "$1"'
        self.run(["sh", "-c", script, "write", path, oct(mode)[2:]], input=content)

    def destroy(self):
        """Stop the copy's unit (SIGKILL to everything in it: the copy's PID 1 takes its whole
        PID namespace, and its mounts go with it), forget the unit, remove what is left of its
        cgroup and tmpfs mount point. Idempotent; works on a copy booted by another process too
        (same ``name``). Touches nothing that the copy did not start."""
        cgroup = _systemctl("show", "--property=ControlGroup", "--value", self.unit).stdout.strip()
        stop = _systemctl("stop", self.unit)
        _systemctl("reset-failed", self.unit)
        if self._proc is not None:
            try:
                self._proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.communicate(timeout=10)
            self._proc = None
        self.pid = None
        if _systemctl("is-active", "--quiet", self.unit).returncode == 0:
            raise HostCopyError(
                f"copy {self.name}: {self.unit} still runs after systemctl stop: "
                f"{_tail(stop.stderr)}; stop it by hand (systemctl kill -s KILL {self.unit})"
            )
        if cgroup:
            remove_cgroup(f"/sys/fs/cgroup{cgroup}")
        self._enter_cgroup = None
        try:
            os.rmdir(self.tmpfs_dir)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def __repr__(self):
        return f"<HostCopy {self.name} pid={self.pid}>"


def remove_cgroup(path, timeout=10):
    """Remove a cgroup folder and its children, deepest first, once their processes are gone
    (systemd removes a stopped unit's cgroup; this is for what it may leave)."""
    deadline = time.monotonic() + timeout
    for top, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count(os.sep)):
        while True:
            try:
                os.rmdir(top)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise HostCopyError(f"cannot remove the cgroup {top}: {exc}") from exc
                time.sleep(0.05)


def check_host():
    """Raise HostCopyError unless this host can hold a copy: root, systemd as PID 1, the unified
    cgroup2 hierarchy, and the tools."""
    if os.geteuid() != 0:
        raise HostCopyError("a host copy needs root (namespaces, mounts): run it as root")
    init = process_name(1)
    if init != "systemd" or not os.path.isdir("/run/systemd/system"):
        raise HostCopyError(
            f"a host copy needs systemd as PID 1 (PID 1 here is {init!r}): "
            "run it on a host booted with systemd"
        )
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        raise HostCopyError(
            "a host copy needs the unified cgroup2 hierarchy at /sys/fs/cgroup (this host uses "
            "cgroup v1 or the hybrid layout): boot with systemd.unified_cgroup_hierarchy=1, "
            "Debian 12's default"
        )
    missing = [tool for tool in ("systemd-run", "unshare", "nsenter") if not shutil.which(tool)]
    if missing:
        raise HostCopyError(f"a host copy needs {', '.join(missing)}: install systemd and util-linux")
