"""Test hosts: throwaway Debian hosts that boot systemd, made of Linux namespaces, for tests and the demo.

Each host has an overlayfs root (lower dir ``/``, upper dir on a tmpfs that outlives its boots)
and its own mount, UTS, network, PID, IPC and cgroup namespaces, a cgroup2 subtree of its own,
``pivot_root`` into the overlay, and ``/lib/systemd/systemd`` as PID 1. It boots like a freshly
installed Debian host: its own machine-id and SSH host keys, sshd enabled, and every other
service that this machine's packages enabled (Postfix, the Prometheus exporters, ...) installed
but disabled, so that minicl's states are what enables them. ``/proc/sys`` is read-only except
``/proc/sys/net`` and ``/sys`` is read-only: nothing inside reaches kernel-wide settings.
Whatever runs inside changes only the overlay. Hosts are joined by veth links to a bridge that
lives in a network namespace of its own, so addresses exist only inside the namespaces created
here. Needs root.

    with Lab() as lab:
        alpha = lab.add_host("alpha", ["198.51.100.11/24", "2001:db8:100::11/64"])
        alpha.run(["systemctl", "is-active", "ssh"])
        alpha.reboot()          # PID 1 stops; a new one boots on the same upper layer

Teardown kills each host's PID 1 (and so everything in its PID namespace) and nothing else;
the mounts and links go away with the namespaces, then the host's cgroups are removed.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from minicl.hostcopy import KERNEL_VIEW, PIVOT_ROOT, child_pids, enter_command, process_name, remove_cgroup
from minicl.saltext import SOURCE_ROOT

# Units a freshly installed Debian server runs, if their package is on this machine. Every other
# unit this machine's packages enabled is disabled in a test host: services minicl manages
# (nftables, postfix, the Prometheus exporters, ...) wait for minicl's states, and the periodic
# maintenance timers (apt, man-db, fstrim) would reach for the network or hold the dpkg lock.
FRESH_HOST_UNITS = (
    "ssh.service",
    "cron.service",
    "rsyslog.service",
    "systemd-pstore.service",
    "remote-fs.target",
)

# PID 1 of a namespace that only holds mounts or links: reaps orphans, exits on SIGTERM.
REAPER = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
sys.stdout.write("ready\n"); sys.stdout.flush(); os.close(1)
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pid = 0
    if pid == 0:
        time.sleep(0.2)
"""

# A mount namespace holding the host's tmpfs (upper and work dirs): it outlives every boot.
HOLD = r"""
set -eu
mkdir -p "$1" && mount -t tmpfs -o mode=0700 minicl-testhost "$1"
exec "$2" -c "$3"
"""

# PID 1 of a boot, before it becomes systemd: builds the root, waits for the network, pivots.
# The kernel's view and the pivot are minicl.hostcopy's, the same as in a copy of a real host.
# Arguments: host folder, host name, then "ro:PATH" / "rw:PATH" folders of this machine to bind.
BOOT = r"""
set -eu
D=$1; NAME=$2; shift 2
mkdir -p "$D/upper" "$D/work" "$D/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$D/root"
R=$D/root
@KERNEL_VIEW@
for bind in "$@"; do
    dir=${bind#*:}
    mkdir -p "$R$dir"
    mount --bind "$dir" "$R$dir"
    [ "${bind%%:*}" = rw ] || mount -o remount,bind,ro "$R$dir"
done
hostname "$NAME"
if [ ! -e "$D/installed" ]; then
    # First boot: what the Debian installer leaves behind that is this host's own.
    echo "$NAME" > "$R/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$NAME" \
        > "$R/etc/hosts"
    systemd-id128 new > "$R/etc/machine-id"
    rm -f "$R"/etc/ssh/ssh_host_*
    ssh-keygen -A -f "$R" -q >/dev/null
    rm -f "$R/var/lib/man-db/auto-update"
    rm -f "$R/usr/sbin/policy-rc.d"
    enabled=$(find "$R/etc/systemd/system" -path '*.wants/*' -printf '%f\n' | sort -u)
    for unit in $enabled; do
        case " $FRESH_HOST_UNITS " in
            *" $unit "*) ;;
            *) systemctl --root="$R" --quiet disable "$unit" 2>/dev/null \
                   || rm -f "$R"/etc/systemd/system/*.wants/"$unit" ;;
        esac
    done
    systemctl --root="$R" --quiet enable ssh.service
    touch "$D/installed"
fi
echo ready
read -r go
@PIVOT_ROOT@
exec </dev/null >/dev/null 2>&1
exec env -i container=minicl-testhost /lib/systemd/systemd --system --unit=multi-user.target
"""
BOOT = BOOT.replace("\n@KERNEL_VIEW@\n", KERNEL_VIEW).replace("\n@PIVOT_ROOT@\n", PIVOT_ROOT)


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self):
        return (
            f"{shlex.join(self.cmd)} exited {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def cgroup2_root():
    """Where this machine mounts the cgroup2 hierarchy (/sys/fs/cgroup, or .../unified on hybrid)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    raise RuntimeError("no cgroup2 hierarchy mounted on this machine: test hosts need one for systemd")


class _Namespace:
    """A process started with unshare whose child is PID 1 of the new namespaces; it says
    "ready" on stdout once it is set up."""

    def __init__(self, unshare_args, setup_cmd, prefix=(), stdin=subprocess.DEVNULL, preexec_fn=None):
        self.proc = subprocess.Popen(
            [*prefix, "unshare", *unshare_args, "--fork", "--kill-child", *setup_cmd],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"test host did not start: {err.strip() or line}")
        children = child_pids(self.proc.pid)
        if len(children) != 1:
            self.proc.kill()
            raise RuntimeError(f"cannot find the namespace init of unshare {self.proc.pid}")
        self.pid = children[0]  # as seen from outside

    def nsenter(self, *flags):
        return ["nsenter", "-t", str(self.pid), *flags, "--"]

    def wait(self, timeout):
        """Wait for PID 1 to end (unshare reaps it); False if it still runs after ``timeout`` s."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self._close()
        return True

    def kill(self):
        """Kill the namespace's PID 1 (the kernel then kills the rest); unshare reaps it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close()

    def _close(self):
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


class Host:
    """One test host. ``run`` executes a command inside it, as root, like a login shell would."""

    def __init__(self, lab, name, index, addresses, binds):
        self.lab = lab
        self.name = name
        self.index = index
        self.addresses = list(addresses)
        self.binds = list(binds)
        self.dir = os.path.join(lab.dir, name)  # a tmpfs, seen only from the holder's mount namespace
        self.cgroup = os.path.join(cgroup2_root(), f"{os.path.basename(lab.dir)}-{name}")
        self.path = os.pathsep.join(
            [
                os.path.dirname(sys.executable),
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
        )
        self.boots = 0
        self._spawned = []  # Popens of spawn(): their nsenter parent lives outside the host
        self._holder = _Namespace(
            ["--mount", "--propagation", "private"],
            ["sh", "-c", HOLD, "minicl-hold", self.dir, "/usr/bin/python3", REAPER],
        )
        self.ns = None
        try:
            self.boot()
        except Exception:
            self.destroy()
            raise

    def boot(self, timeout=120):
        """Boot systemd on this host's root; returns ``systemctl is-system-running`` when done."""
        os.makedirs(self.cgroup, exist_ok=True)
        cgroup_procs = os.path.join(self.cgroup, "cgroup.procs")

        def into_own_cgroup():
            with open(cgroup_procs, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))

        self.ns = _Namespace(
            ["--mount", "--uts", "--net", "--pid", "--ipc", "--cgroup", "--propagation", "private"],
            [
                "env",
                f"FRESH_HOST_UNITS={' '.join(FRESH_HOST_UNITS)}",
                "sh",
                "-c",
                BOOT,
                "minicl-boot",
                self.dir,
                self.name,
                *self.binds,
            ],
            prefix=self._holder.nsenter("-m"),
            stdin=subprocess.PIPE,
            preexec_fn=into_own_cgroup,
        )
        self.boots += 1
        self.lab._link(self)  # the NIC is up with its addresses before PID 1 starts, as on a real host
        self.ns.proc.stdin.write("go\n")
        self.ns.proc.stdin.close()
        deadline = time.monotonic() + timeout
        while process_name(self.pid) != "systemd" or not os.path.exists(
            f"/proc/{self.pid}/root/run/systemd/private"
        ):
            if self.ns.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not boot systemd: {self.ns.proc.stderr.read()}")
            time.sleep(0.05)
        state = self.run(
            ["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout
        ).stdout.strip()
        if self.boots == 1 and state != "running":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            raise RuntimeError(f"{self.name} booted {state!r}, failed units:\n{failed}")
        return state

    def reboot(self, timeout=120):
        """``systemctl reboot``, then boot again on the same upper layer (disk) once PID 1 is gone.
        Kernel state (addresses, nftables rules) starts afresh, as on a real reboot."""
        self._stop_spawned()
        self.run(["systemctl", "reboot"])
        if not self.ns.wait(timeout):
            raise RuntimeError(f"{self.name}: PID 1 still runs {timeout} s after systemctl reboot")
        remove_cgroup(self.cgroup)
        return self.boot(timeout)

    def crash(self):
        """A power cut: PID 1 and everything in the host killed at once; its disk stays for
        ``boot``."""
        self._stop_spawned()
        self.ns.kill()
        remove_cgroup(self.cgroup)

    def destroy(self):
        """Kill PID 1 (everything in the host dies with it), then the holder of its disk."""
        self._stop_spawned()
        if self.ns:
            self.ns.kill()
        if os.path.isdir(self.cgroup):
            remove_cgroup(self.cgroup)
        self._holder.kill()

    @property
    def pid(self):
        return self.ns.pid

    @property
    def ips(self):
        """The host's addresses without prefix length, IPv4 first."""
        return [a.split("/")[0] for a in self.addresses]

    @property
    def ipv4(self):
        return next(a for a in self.ips if ":" not in a)

    @property
    def ipv6(self):
        return next(a for a in self.ips if ":" in a)

    def command(self, cmd):
        """``cmd`` as a command line of this machine that runs it inside the host, as root.

        The process first joins the host's cgroup (a leaf beside systemd's tree), so that
        ``systemd-run --scope`` (Salt's service module) can move it like any process of the host.
        """
        return enter_command(self.pid, os.path.join(self.cgroup, "minicl-enter"), cmd, {"PATH": self.path})

    def shell_hint(self):
        """How a person enters this host from this machine."""
        return f"nsenter -t {self.pid} -a -r -w env -i PATH=$PATH TERM=$TERM bash -l"

    def run(self, cmd, check=True, input=None, timeout=300, env=None):
        """Run ``cmd`` (a list, or a string for sh -c) in the host; returns CompletedProcess."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        if env:
            cmd = ["env", *[f"{k}={v}" for k, v in env.items()], *cmd]
        result = subprocess.run(
            self.command(cmd), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def spawn(self, cmd, **popen_args):
        """Start a long-running command in the host; the caller owns the Popen."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        popen_args.setdefault("stdout", subprocess.PIPE)
        popen_args.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.command(cmd), text=True, **popen_args)
        self._spawned.append(proc)
        return proc

    def _stop_spawned(self):
        """End what spawn() started and reap it: a process whose parent (nsenter) lives outside
        the host is a zombie PID 1 cannot reap, and a shutting-down systemd waits for it."""
        for proc in self._spawned:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self._spawned.clear()

    def write(self, path, content, mode=0o644):
        self.run(
            [
                "sh",
                "-c",
                'mkdir -p "$(dirname "$1")" && umask 077 && cat > "$1" && chmod "$2" "$1"',
                "write",
                path,
                oct(mode)[2:],
            ],
            input=content,
        )

    def read(self, path):
        return self.run(["cat", path]).stdout

    def systemctl(self, *args, check=True):
        return self.run(["systemctl", *args], check=check)

    def unit_state(self, unit):
        """``systemctl is-active`` of ``unit``: active, inactive, failed, activating..."""
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def journal(self, unit=None, since=None, lines=200):
        """The host's journal (of ``unit``), as text, newest last."""
        cmd = ["journalctl", "--no-pager", "-q", "-o", "short-iso", "-n", str(lines)]
        if unit:
            cmd += ["-u", unit]
        if since:
            cmd += ["--since", since]
        return self.run(cmd, check=False).stdout

    def listen(self, ports):
        """Accept (and close) TCP connections on ``ports``, IPv4 and IPv6, until the host ends."""
        code = (
            "import socket, threading\n"
            "def serve(port):\n"
            "    s = socket.create_server(('::', port), family=socket.AF_INET6, dualstack_ipv6=True)\n"
            "    while True:\n"
            "        s.accept()[0].close()\n"
            f"for port in {tuple(ports)!r}:\n"
            "    threading.Thread(target=serve, args=(port,), daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "threading.Event().wait()\n"
        )
        proc = self.spawn(["python3", "-c", code])
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"listener on {self.name} did not start: {proc.stderr.read()}")
        return proc

    def can_connect(self, ip, port, timeout=1.5):
        """True if a TCP connection from this host to ``ip``:``port`` succeeds."""
        code = (
            f"import socket\ntry:\n socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n raise SystemExit(1)"
        )
        return self.run(["python3", "-c", code], check=False).returncode == 0

    def start_sshd(self):
        """sshd runs from boot (ssh.service, as on a fresh Debian host); this starts it again."""
        self.systemctl("start", "ssh.service")

    def stop_sshd(self):
        self.systemctl("stop", "ssh.service")

    def exists(self, path):
        return self.run(["test", "-e", path], check=False).returncode == 0

    def __repr__(self):
        return f"<test host {self.name} {self.ips}>"


class Lab:
    """A set of test hosts on one LAN (a bridge in a namespace of its own)."""

    def __init__(self, prefix="minicl-lab-"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.dir, 0o700)
        self.hosts = {}
        self._switch = _Namespace(["--net"], ["/usr/bin/python3", "-c", REAPER])
        self._in_switch(["ip", "link", "set", "lo", "up"])
        self._in_switch(["ip", "link", "add", "br0", "type", "bridge"])
        self._in_switch(["ip", "link", "set", "br0", "up"])

    def _in_switch(self, cmd):
        subprocess.run([*self._switch.nsenter("-n"), *cmd], check=True, capture_output=True, text=True)

    def binds(self):
        """Folders of this machine shown read-only inside test hosts: this source tree and its venv."""
        dirs = [SOURCE_ROOT]
        if not sys.prefix.startswith(SOURCE_ROOT + os.sep):
            dirs.append(sys.prefix)
        return dirs

    def add_host(self, name, addresses, shared=()):
        """Boot a host with ``addresses`` (CIDR form) on eth0, linked to the lab's bridge.
        ``shared``: folders of this machine the host may also write to, at the same path."""
        index = len(self.hosts) + 1
        binds = [f"ro:{d}" for d in self.binds()] + [f"rw:{d}" for d in shared]
        host = self.hosts[name] = Host(self, name, index, addresses, binds)
        return host

    def _link(self, host):
        """Plug ``host``'s network namespace (of its current boot) into the bridge."""
        port = f"p{host.index}"
        host_net = ["nsenter", "-t", str(host.pid), "-n", "--"]
        # The same MAC address at every boot, as a real NIC has: peers' neighbour caches stay right.
        mac = f"02:00:00:00:{host.index // 256:02x}:{host.index % 256:02x}"
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "address",
                mac,
                "netns",
                str(host.pid),
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                str(self._switch.pid),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        self._in_switch(["ip", "link", "set", port, "master", "br0", "up"])
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "eth0", "up"],
            *(
                ["ip", "addr", "add", a, "dev", "eth0", *(["nodad"] if ":" in a else [])]
                for a in host.addresses
            ),
        ):
            subprocess.run([*host_net, *cmd], check=True, capture_output=True, text=True)

    def remove_host(self, name):
        self.hosts.pop(name).destroy()

    def close(self):
        """Tear every host down, even when one of them fails to; then raise the first failure."""
        failures = []
        for name in list(self.hosts):
            try:
                self.remove_host(name)
            except Exception as exc:  # pylint: disable=broad-except
                failures.append(exc)
        self._switch.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        if failures:
            raise failures[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GitServer:
    """A config repo served over SSH from a test host: user git, bare repo, sshd.

    ``commit`` writes files into a work clone on the same host and pushes them, as an admin
    would from a workstation.
    """

    REPO = "/srv/git/cluster.git"
    WORK = "/root/work"

    def __init__(self, host, deploy_public_key):
        self.host = host
        host.run(
            "set -e; useradd -m -s /usr/bin/git-shell git;"
            "install -d -o git -g git -m 700 /home/git/.ssh;"
            f"git init -q --bare -b main {self.REPO}; chown -R git:git /srv/git;"
            "git config --global --add safe.directory '*';"
            "git config --global user.name 'Test Admin'; git config --global user.email admin@example.org;"
            f"git clone -q {self.REPO} {self.WORK} 2>/dev/null"
        )
        host.write("/home/git/.ssh/authorized_keys", deploy_public_key, 0o600)
        host.run("chown git:git /home/git/.ssh/authorized_keys")
        self.start_sshd()

    @property
    def url(self):
        return f"ssh://git@{self.host.ipv4}{self.REPO}"

    def host_key_fingerprint(self):
        return self.host.run(["ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[1]

    def start_sshd(self):
        self.host.start_sshd()

    def stop_sshd(self):
        self.host.stop_sshd()

    def commit(self, files, message, branch="main", remove=(), work=WORK):
        """Write ``files`` ({path: text}) into the work tree, commit and push; returns the sha.
        ``work``: the work clone of another repository (``add_source_repo``)."""
        self.host.run(f"cd {work} && (git checkout -q {branch} 2>/dev/null || git checkout -q -b {branch})")
        for path, text in files.items():
            self.host.write(f"{work}/{path}", text, 0o600)
        for path in remove:
            self.host.run(["git", "-C", work, "rm", "-q", "-r", path])
        self.host.run(["git", "-C", work, "add", "-A"])
        self.host.run(["git", "-C", work, "commit", "-q", "--allow-empty", "-m", message])
        self.host.run(["git", "-C", work, "push", "-q", "origin", branch])
        return self.host.run(["git", "-C", work, "rev-parse", "HEAD"]).stdout.strip()

    def source_url(self, name):
        return f"ssh://git@{self.host.ipv4}/srv/git/{name}.git"

    def add_source_repo(self, name, source=SOURCE_ROOT):
        """A second repository, /srv/git/<name>.git, whose first commit holds the files of
        ``source`` as they are on disk (tracked and new files, not ignored ones; this machine's
        tree is visible in the host). Returns the work clone to ``commit(..., work=)`` to."""
        work = f"/root/{name}-work"
        listed = subprocess.run(
            ["git", "-C", source, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = [f for f in listed.split("\0") if f and os.path.lexists(os.path.join(source, f))]
        self.host.run(
            f"set -e; git init -q --bare -b main /srv/git/{name}.git; chown -R git:git /srv/git;"
            f"mkdir {work}; cd {work}; git init -q -b main;"
            f"tar -C {source} -cf - -T - | tar -xf -;"
            f"git add -A; git commit -q -m 'minicl as it is on disk';"
            f"git remote add origin /srv/git/{name}.git; git push -q -u origin main",
            input="\n".join(files) + "\n",
        )
        return work

    def pin(self, name, commit, message=None):
        """Commit the config repo with the submodule ``name`` (its repository from
        ``add_source_repo``, at ``../<name>.git`` from the config repo) at ``commit``; pushes."""
        path = f"{self.WORK}/{name}"
        if not self.host.exists(f"{path}/.git"):
            self.host.run(
                f"cd {self.WORK} && git -c protocol.file.allow=always submodule add -q ../{name}.git {name}"
            )
        self.host.run(
            f"cd {path} && git -c protocol.file.allow=always fetch -q origin && git checkout -q {commit}"
        )
        return self.commit({}, message or f"pin {name} at {commit[:12]}")
