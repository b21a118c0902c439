"""Test hosts: throwaway Debian "machines" made of Linux namespaces, for tests and the demo.

Each host is ``unshare --mount --uts --net --pid --fork`` with an overlayfs root (lower dir
``/``, upper dir on a tmpfs), chrooted into, with its own /proc, /sys, /tmp and /run and its
own hostname. Whatever runs inside (useradd, sshd, salt-call, nft, postfix) changes only the
overlay. Hosts are joined by veth links to a bridge that lives in a network namespace of its
own, so addresses exist only inside the namespaces created here. Needs root.

    with Lab() as lab:
        alpha = lab.add_host("alpha", ["198.51.100.11/24", "2001:db8:100::11/64"])
        alpha.run(["ip", "-br", "addr"])
        alpha.spawn_daemon(["/usr/sbin/sshd", "-E", "/var/log/sshd.log"])

Teardown kills each host's namespace init (and so everything in its PID namespace) and
nothing else; the mounts and links go away with the namespaces.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

from minicl import metrics

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# PID 1 of a namespace: reaps orphans (daemons reparent to it) and exits on SIGTERM.
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

# Runs as PID 1 of the new namespaces, before the chroot: builds the host's root.
HOST_SETUP = r"""
set -eu
D=$1; NAME=$2; PY=$3; REAPER=$4; shift 4
mount -t tmpfs -o mode=0755 minicl-testhost "$D"
mkdir -p "$D/upper" "$D/work" "$D/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$D/root"
R=$D/root
mount -t proc proc "$R/proc"
# Kernel-wide knobs stay out of reach; the host's own network namespace settings do not.
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,rw "$R/proc/sys/net"
mount -t sysfs -o ro sysfs "$R/sys"
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
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
for dir in "$@"; do
    mkdir -p "$R$dir"
    mount --bind "$dir" "$R$dir"
    mount -o remount,bind,ro "$R$dir"
done
hostname "$NAME"
echo "$NAME" > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$NAME" > "$R/etc/hosts"
rm -f "$R/var/lib/man-db/auto-update"
# A test host runs like a sysvinit Debian in runlevel 2: its services are /etc/init.d scripts.
# With systemctl present but no systemd running, Salt's service states would go "offline" and
# do nothing; runlevel is systemctl's alias on this machine.
rm -f "$R/usr/bin/systemctl" "$R/usr/sbin/runlevel"
printf '#!/bin/sh\necho N 2\n' > "$R/usr/sbin/runlevel"
chmod 755 "$R/usr/sbin/runlevel"
exec chroot "$R" "$PY" -c "$REAPER"
"""


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self):
        return (f"{shlex.join(self.cmd)} exited {self.returncode}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class _Namespace:
    """A process started with unshare whose child is PID 1 of the new namespaces."""

    def __init__(self, unshare_args, setup_cmd):
        self.proc = subprocess.Popen(
            ["unshare", *unshare_args, "--fork", "--kill-child", *setup_cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"test host did not start: {err.strip() or line}")
        children = _children(self.proc.pid)
        if len(children) != 1:
            self.proc.kill()
            raise RuntimeError(f"cannot find the namespace init of unshare {self.proc.pid}")
        self.pid = children[0]  # as seen from outside

    def nsenter(self, *flags):
        return ["nsenter", "-t", str(self.pid), *flags, "--"]

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
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


class Host:
    """One test host. ``run`` executes a command inside it, as root, like a login shell would."""

    def __init__(self, lab, name, index, addresses, binds):
        self.lab = lab
        self.name = name
        self.index = index
        self.addresses = list(addresses)
        self.dir = os.path.join(lab.dir, name)
        os.makedirs(self.dir)
        self.ns = _Namespace(
            ["--mount", "--uts", "--net", "--pid", "--propagation", "private"],
            ["sh", "-c", HOST_SETUP, "minicl-testhost", self.dir, name, "/usr/bin/python3", REAPER,
             *binds],
        )
        self.path = os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/sbin",
                                     "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])

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
        env = ["env", "-i", f"PATH={self.path}", "HOME=/root", "LANG=C.UTF-8", "USER=root",
               "LOGNAME=root", "SHELL=/bin/sh"]
        return [*self.ns.nsenter("-m", "-u", "-n", "-p", "-r", "-w"), *env, *cmd]

    def run(self, cmd, check=True, input=None, timeout=300, env=None):
        """Run ``cmd`` (a list, or a string for sh -c) in the host; returns CompletedProcess."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        if env:
            cmd = ["env", *[f"{k}={v}" for k, v in env.items()], *cmd]
        result = subprocess.run(self.command(cmd), input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def spawn(self, cmd, **popen_args):
        """Start a long-running command in the host; the caller owns the Popen."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        popen_args.setdefault("stdout", subprocess.PIPE)
        popen_args.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.command(cmd), text=True, **popen_args)

    def write(self, path, content, mode=0o644):
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && umask 077 && cat > "$1" && chmod "$2" "$1"',
                  "write", path, oct(mode)[2:]], input=content)

    def read(self, path):
        return self.run(["cat", path]).stdout

    def listen(self, ports):
        """Accept (and close) TCP connections on ``ports``, IPv4 and IPv6, until the host ends."""
        code = ("import socket, threading\n"
                "def serve(port):\n"
                "    s = socket.create_server(('::', port), family=socket.AF_INET6, dualstack_ipv6=True)\n"
                "    while True:\n"
                "        s.accept()[0].close()\n"
                f"for port in {tuple(ports)!r}:\n"
                "    threading.Thread(target=serve, args=(port,), daemon=True).start()\n"
                "print('ready', flush=True)\n"
                "threading.Event().wait()\n")
        proc = self.spawn(["python3", "-c", code])
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"listener on {self.name} did not start: {proc.stderr.read()}")
        return proc

    def can_connect(self, ip, port, timeout=1.5):
        """True if a TCP connection from this host to ``ip``:``port`` succeeds."""
        code = (f"import socket\ntry:\n socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
                "except OSError:\n raise SystemExit(1)")
        return self.run(["python3", "-c", code], check=False).returncode == 0

    def salt_jobs_running(self):
        """Whether a Salt job runs in this host (salt-call and salt-minion record them in one folder)."""
        return bool(self.run("ls /var/cache/salt/minion/proc", check=False).stdout.strip())

    def last_minicl_run(self):
        """When minicl last recorded a highstate here (its textfile metric), 0 if never."""
        path = os.path.join(metrics.TEXTFILE_DIR, metrics.RUN_FILE)
        return metrics.last_run_timestamp(self.read(path)) if self.exists(path) else 0.0

    def prometheus_query(self, expr, port=9090):
        """The result vector of a PromQL query to the Prometheus on this host: [(labels, value)]."""
        code = ("import json, sys, urllib.parse, urllib.request\n"
                f"url = 'http://127.0.0.1:{port}/api/v1/query?query=' + urllib.parse.quote(sys.argv[1])\n"
                "print(urllib.request.urlopen(url, timeout=10).read().decode())")
        data = json.loads(self.run(["python3", "-c", code, expr]).stdout)
        return [(item["metric"], float(item["value"][1])) for item in data["data"]["result"]]

    def start_sshd(self):
        """Start sshd as on a real host: own host keys, /run/sshd, log in /var/log/sshd.log."""
        if not self.exists("/etc/ssh/.minicl-testhost-keys"):
            self.run("rm -f /etc/ssh/ssh_host_*; ssh-keygen -A -q; touch /etc/ssh/.minicl-testhost-keys")
        self.run("mkdir -p /run/sshd && /usr/sbin/sshd -t && /usr/sbin/sshd -E /var/log/sshd.log")

    def stop_sshd(self):
        # Only the sshd this test host runs: its PID namespace holds nothing else.
        self.run("kill $(cat /run/sshd.pid) && while [ -e /run/sshd.pid ]; do sleep 0.05; done")

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
        """Host directories shown read-only inside test hosts: this source tree and its venv."""
        dirs = [SOURCE_ROOT]
        if not sys.prefix.startswith(SOURCE_ROOT + os.sep):
            dirs.append(sys.prefix)
        return dirs

    def add_host(self, name, addresses):
        """Start a host with ``addresses`` (CIDR form) on eth0, linked to the lab's bridge."""
        index = len(self.hosts) + 1
        host = Host(self, name, index, addresses, self.binds())
        self.hosts[name] = host
        try:
            self._link(host)
        except Exception:
            self.remove_host(name)
            raise
        return host

    def _link(self, host):
        port = f"p{host.index}"
        subprocess.run(["ip", "link", "add", "eth0", "netns", str(host.pid), "type", "veth",
                        "peer", "name", port, "netns", str(self._switch.pid)],
                       check=True, capture_output=True, text=True)
        self._in_switch(["ip", "link", "set", port, "master", "br0", "up"])
        host.run(["ip", "link", "set", "lo", "up"])
        host.run(["ip", "link", "set", "eth0", "up"])
        for address in host.addresses:
            extra = ["nodad"] if ":" in address else []
            host.run(["ip", "addr", "add", address, "dev", "eth0", *extra])

    def remove_host(self, name):
        host = self.hosts.pop(name)
        host.ns.kill()
        shutil.rmtree(host.dir, ignore_errors=True)

    def close(self):
        for name in list(self.hosts):
            self.remove_host(name)
        self._switch.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

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

    def commit(self, files, message, branch="main", remove=()):
        """Write ``files`` ({path: text}) into the work tree, commit and push; returns the sha."""
        self.host.run(f"cd {self.WORK} && (git checkout -q {branch} 2>/dev/null || git checkout -q -b {branch})")
        for path, text in files.items():
            self.host.write(f"{self.WORK}/{path}", text, 0o600)
        for path in remove:
            self.host.run(["git", "-C", self.WORK, "rm", "-q", "-r", path])
        self.host.run(["git", "-C", self.WORK, "add", "-A"])
        self.host.run(["git", "-C", self.WORK, "commit", "-q", "--allow-empty", "-m", message])
        self.host.run(["git", "-C", self.WORK, "push", "-q", "origin", branch])
        return self.host.run(["git", "-C", self.WORK, "rev-parse", "HEAD"]).stdout.strip()
