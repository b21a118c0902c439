"""A throwaway copy of a host (minicl.hostcopy), booted inside a test host that plays the real
host: systemd as its PID 1 on cgroup2, services, timers and the minion enabled, an fstab like an
installed Debian's. The copy is then a nested overlay (lower dir: the test host's own overlay).

Everything is observed once, in one module fixture: a driver process in the host boots the copy
and reports what it sees inside; the test looks at the host while the copy runs, tells the driver
to destroy it, and looks again."""

import json
import subprocess
import sys

import pytest

ORIGIN = ["203.0.113.31/24"]
PEER = ["203.0.113.32/24"]
PORT = 8731
CAP_SYS_MODULE, CAP_SYS_TIME = 16, 25

SLEEPER = """\
[Unit]
Description={description}
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""
MAINTENANCE_SERVICE = "[Service]\nType=oneshot\nExecStart=/bin/true\n"
MAINTENANCE_TIMER = "[Timer]\nOnCalendar=daily\n[Install]\nWantedBy=timers.target\n"
# What the Debian installer writes; the copy's systemd must boot with it all the same.
FSTAB = """\
UUID=0b7c3b6e-5d6a-4c1e-9f59-3f2c1c9e0a11 /               ext4    errors=remount-ro 0       1
UUID=5e0c2a77-1c0b-4f55-8d6f-2b1f0d1e9c22 none            swap    sw              0       0
"""

DRIVER = r"""
import json, sys
from minicl.hostcopy import HostCopy, HostCopyError

def seen(copy, cmd):
    result = copy.run(cmd, check=False)
    return {"rc": result.returncode, "out": result.stdout.strip(), "err": result.stderr.strip()}

with HostCopy("proof") as copy:
    state = copy.boot(timeout=90)
    copy.write("/etc/minicl-copy-proof", "written in the copy\n")
    connect = (
        "import socket\ntry:\n socket.create_connection((%r, %d), timeout=2).close()\n"
        "except OSError as e:\n raise SystemExit(str(e))" % (sys.argv[1], int(sys.argv[2]))
    )
    facts = {
        "boot": state,
        "unit": copy.unit,
        "masked": copy.masked,
        "is_system_running": seen(copy, ["systemctl", "is-system-running"]),
        "proof": seen(copy, ["cat", "/etc/minicl-copy-proof"]),
        "active": seen(copy, ["systemctl", "is-active", "minicl-proof.service", "minicl-minion.service"]),
        "enabled": seen(copy, ["systemctl", "is-enabled", "minicl-minion.service", "minicl-maint.timer"]),
        "failed": seen(copy, ["systemctl", "--failed", "--no-legend", "--plain"]),
        "links": seen(copy, ["ip", "-o", "link"]),
        "connect": seen(copy, ["python3", "-c", connect]),
        "capbnd": seen(copy, ["sed", "-n", "s/^CapBnd:\t//p", "/proc/1/status"]),
        "hostname": seen(copy, ["hostname"]),
    }
    print(json.dumps(facts), flush=True)
    sys.stdin.readline()
print("destroyed", flush=True)
try:
    HostCopy("broken", tmpfs_size="4k").boot(timeout=60)
except HostCopyError as err:
    print(json.dumps(str(err)), flush=True)
"""


def host_facts(host):
    """What the host shows of copies: mounts, units, cgroups, processes in their cgroups."""
    return {
        "mounts": host.run("grep minicl-hostcopy /proc/self/mountinfo", check=False).stdout,
        "units": host.run(
            ["systemctl", "list-units", "--all", "--plain", "--no-legend", "minicl-hostcopy-*"]
        ).stdout.strip(),
        "cgroups": host.run("find /sys/fs/cgroup -name 'minicl-hostcopy-*'").stdout.strip(),
        "processes": host.run("grep -l minicl-hostcopy /proc/[0-9]*/cgroup", check=False).stdout.strip(),
        "tmpfs_dir": host.exists("/run/minicl-hostcopy-proof"),
    }


@pytest.fixture(scope="module")
def observed(lab):
    host = lab.add_host("origin", ORIGIN)
    peer = lab.add_host("peer", PEER)
    peer.listen([PORT])
    host.write(
        "/etc/systemd/system/minicl-proof.service", SLEEPER.format(description="a service of the host")
    )
    host.write(
        "/etc/systemd/system/minicl-minion.service", SLEEPER.format(description="stands in for the minion")
    )
    host.write("/etc/systemd/system/minicl-maint.service", MAINTENANCE_SERVICE)
    host.write("/etc/systemd/system/minicl-maint.timer", MAINTENANCE_TIMER)
    host.systemctl("enable", "--now", "minicl-proof.service", "minicl-minion.service", "minicl-maint.timer")
    host.write("/etc/fstab", FSTAB)
    driver = host.spawn(
        [sys.executable, "-c", DRIVER, peer.ipv4, str(PORT)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    line = driver.stdout.readline()
    if not line:
        driver.wait(timeout=30)
        pytest.fail(f"the copy did not boot:\n{driver.stderr.read()}")
    inside = json.loads(line)
    during = host_facts(host) | {
        "proof": host.exists("/etc/minicl-copy-proof"),
        "connect": host.can_connect(peer.ipv4, PORT),
        "active": host.run(
            ["systemctl", "is-active", "minicl-proof.service", "minicl-minion.service"]
        ).stdout,
        "capbnd": host.run(["sed", "-n", "s/^CapBnd:\t//p", "/proc/1/status"]).stdout.strip(),
    }
    driver.stdin.write("\n")
    driver.stdin.flush()
    done = driver.stdout.readline().strip()
    broken = driver.stdout.readline()
    driver.wait(timeout=60)
    assert done == "destroyed" and broken, driver.stderr.read()
    return inside, during, host_facts(host) | {"broken": json.loads(broken)}


def test_the_copy_boots_systemd_with_the_hosts_services_but_not_its_minion_or_timers(observed):
    inside, during, _ = observed
    assert inside["boot"] == "running", inside["failed"]
    assert inside["is_system_running"]["out"] == "running"
    assert inside["hostname"]["out"] == "origin-copy"
    # The host runs all three; the copy runs its service, not the minion nor the timer.
    assert during["active"].split() == ["active", "active"]
    assert inside["active"]["out"].split() == ["active", "inactive"]
    assert inside["enabled"]["out"].split() == ["masked", "masked"]
    assert {"minicl-minion.service", "minicl-maint.timer"} <= set(inside["masked"])


def test_what_the_copy_writes_stays_in_the_copy(observed):
    inside, during, _ = observed
    assert inside["proof"] == {"rc": 0, "out": "written in the copy", "err": ""}
    assert during["proof"] is False
    # Its mounts live in its own mount namespace: the host's mount table never shows them.
    assert during["mounts"] == ""
    # Nor can it set the machine's clock or load kernel modules, as the host can.
    host_caps, copy_caps = int(during["capbnd"], 16), int(inside["capbnd"]["out"], 16)
    for cap in (CAP_SYS_MODULE, CAP_SYS_TIME):
        assert host_caps & (1 << cap) and not copy_caps & (1 << cap)


def test_the_copy_has_no_network_but_lo(observed):
    inside, during, _ = observed
    links = inside["links"]["out"].splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert during["connect"] is True  # the peer listens, and the host reaches it
    assert inside["connect"]["rc"] != 0
    assert "unreachable" in inside["connect"]["err"]


def test_destroy_leaves_nothing_nor_does_a_copy_that_fails_to_boot(observed):
    _, during, after = observed
    # While the copy ran, the host saw its unit, its cgroup and its processes (and only these).
    assert during["units"].startswith("minicl-hostcopy-proof.service")
    assert during["cgroups"] and during["processes"] and during["tmpfs_dir"]
    # A second copy, on a tmpfs too small to build its root, says so and is torn down too.
    assert "copy broken: the copy's root could not be built" in after.pop("broken")
    assert after == {"mounts": "", "units": "", "cgroups": "", "processes": "", "tmpfs_dir": False}
