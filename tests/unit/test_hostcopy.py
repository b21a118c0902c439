"""The pure parts of minicl.hostcopy: names, what a copy masks and mounts, its command lines."""

import pytest

from minicl import hostcopy
from minicl.hostcopy import HostCopy, HostCopyError

# /proc/1/mountinfo of a Debian 12 server with /var, /home and /srv on filesystems of their own.
MOUNTINFO = r"""22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
24 28 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=1989104k,nr_inodes=497276,mode=755
26 28 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=401776k,mode=755
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw,errors=remount-ro
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
35 28 254:3 / /var rw,relatime shared:31 - ext4 /dev/mapper/vg-var rw
36 35 254:4 / /var/lib/postgresql rw,relatime shared:33 - xfs /dev/mapper/vg-pg rw
37 28 8:1 / /boot rw,relatime shared:35 - ext2 /dev/sda1 rw
38 37 8:2 / /boot/efi rw,relatime shared:37 - vfat /dev/sda2 rw,fmask=0077
39 28 0:30 / /home/shared\040data rw,relatime shared:39 - nfs4 nas:/data rw,vers=4.2
40 28 254:5 / /srv/a:b rw,relatime shared:41 - ext4 /dev/mapper/vg-srv rw
41 26 0:45 / /run/user/1000 rw,nosuid,nodev,relatime shared:300 - tmpfs tmpfs rw,size=401772k,mode=700
42 28 0:46 / /tmp rw,nosuid,nodev shared:50 - tmpfs tmpfs rw
43 28 0:47 / /var/cache/tmpfs rw shared:51 - tmpfs tmpfs rw
44 28 0:48 / /run/user/1000/doc rw shared:52 - fuse.portal portal rw
45 28 0:49 / /mnt/x rw shared:53 - fuse.sshfs me@box:/ rw
46 28 254:3 /www /var/www rw,relatime shared:31 - ext4 /dev/mapper/vg-var rw
47 35 254:4 / /var/lib/postgresql rw,relatime shared:34 - xfs /dev/mapper/vg-pg rw
"""


def test_the_copy_overlays_each_real_filesystem_of_the_host_parents_first():
    assert hostcopy.copied_mounts(MOUNTINFO) == [
        ("sub", "/var"),
        ("sub", "/boot"),
        ("sub", "/boot/efi"),
        ("sub", "/home/shared data"),
        ("robind", "/srv/a:b"),  # overlayfs options cannot name it: shown read-only
        ("sub", "/var/www"),
        ("sub", "/var/lib/postgresql"),  # once, though two are stacked there
    ]


def test_a_copy_masks_the_minion_the_hosts_timers_and_what_it_is_told(tmp_path):
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    for folder, units in {
        etc / "timers.target.wants": ["apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer"],
        etc / "multi-user.target.wants": ["postgresql.service", "minicl-minion.service"],
        lib / "timers.target.wants": ["systemd-tmpfiles-clean.timer", "man-db.timer"],
        lib / "sockets.target.requires": ["dbus.socket"],
        lib / "not-a-wants": ["stray.timer"],
    }.items():
        folder.mkdir(parents=True)
        for unit in units:
            (folder / unit).touch()
    (etc / "fstrim.timer").touch()  # a unit file, not enabled
    timers = hostcopy.enabled_timers([str(etc), str(lib), str(tmp_path / "missing")])
    assert timers == [
        "apt-daily-upgrade.timer",
        "apt-daily.timer",
        "man-db.timer",
        "systemd-tmpfiles-clean.timer",
    ]
    assert hostcopy.masked_units(timers, ["postfix@-.service", "man-db.timer"]) == [
        "minicl-minion.service",
        "systemd-remount-fs.service",
        "apt-daily-upgrade.timer",
        "apt-daily.timer",
        "man-db.timer",
        "systemd-tmpfiles-clean.timer",
        "postfix@-.service",
    ]


@pytest.mark.parametrize("unit", ["../etc/passwd", "postfix", ".service", "a b.service", ""])
def test_only_unit_names_can_be_masked(unit):
    with pytest.raises(HostCopyError, match="give a unit name"):
        HostCopy(mask=[unit])


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x y", "a" * 65])
def test_a_copy_name_must_make_a_unit_name(name):
    with pytest.raises(HostCopyError, match="becomes the unit name"):
        HostCopy(name)


def test_the_tmpfs_size_is_checked():
    with pytest.raises(HostCopyError, match="tmpfs_size"):
        HostCopy(tmpfs_size="50%,exec")
    assert HostCopy(tmpfs_size="4g").tmpfs_size == "4g"


def test_the_copy_is_named_after_the_host():
    assert hostcopy.copy_hostname("db1.example.org") == "db1-copy"
    assert len(hostcopy.copy_hostname("h" * 64)) == 64


def test_boot_items_list_mounts_binds_and_masks(tmp_path):
    items = hostcopy.boot_items(
        [("sub", "/var")], [(str(tmp_path), "/srv/cache", False), ("/", "/mnt/host", True)], ["a.timer"]
    )
    assert items == [
        "sub",
        "/var",
        "bind",
        "ro",
        str(tmp_path),
        "/srv/cache",
        "bind",
        "rw",
        "/",
        "/mnt/host",
        "mask",
        "a.timer",
    ]


@pytest.mark.parametrize(
    "bind, problem",
    [
        (("relative", "/x", False), "absolute paths"),
        (("/", "/x/../etc", False), "absolute paths"),
        (("/nonexistent-minicl-test", "/x", False), "does not exist on this host"),
    ],
)
def test_binds_are_checked_before_the_copy_starts(bind, problem):
    with pytest.raises(HostCopyError, match=problem):
        hostcopy.boot_items([], [bind], [])


def test_the_copy_runs_as_a_delegated_unit_whose_dollars_systemd_leaves_alone():
    cmd = hostcopy.systemd_run_command("minicl-hostcopy-x.service", ["/run/d", "$HOME"], "a copy")
    assert cmd[:2] == ["systemd-run", "--unit=minicl-hostcopy-x.service"]
    assert "--property=Delegate=yes" in cmd and "--pipe" in cmd and "--property=KillSignal=SIGKILL" in cmd
    assert (
        "--property=CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_TIME CAP_SYS_RAWIO CAP_MKNOD CAP_SYSLOG"
        in cmd
    )
    shell = cmd.index("/bin/sh")
    script, argv0, boot, *args = cmd[shell + 2 :]
    assert script == hostcopy.SUPERVISE.replace("$", "$$") and argv0 == "minicl-hostcopy"
    assert boot == hostcopy.BOOT.replace("$", "$$")
    assert args == ["/run/d", "$$HOME"]


def test_commands_enter_the_copys_cgroup_then_all_its_namespaces_with_a_clean_environment():
    cmd = hostcopy.enter_command(4242, "/sys/fs/cgroup/x/payload/minicl-enter", ["ls", "-l"], {"LANG": "C"})
    assert cmd[:4] == [
        "sh",
        "-c",
        'mkdir -p "$0" && echo $$ > "$0/cgroup.procs" && exec "$@"',
        "/sys/fs/cgroup/x/payload/minicl-enter",
    ]
    assert cmd[4:13] == ["nsenter", "-t", "4242", "-a", "-r", "-w", "--", "env", "-i"]
    assert "LANG=C" in cmd and "LANG=C.UTF-8" not in cmd and "HOME=/root" in cmd
    assert cmd[-2:] == ["ls", "-l"]


def test_run_before_boot_says_what_to_do():
    with pytest.raises(HostCopyError, match=r"not booted: call boot\(\) first"):
        HostCopy().run(["true"])


def test_the_hosts_addresses_go_on_the_copys_lo_as_host_routes():
    items = hostcopy.boot_items([], [], [], ["198.51.100.72", "2001:db8::72"])
    assert items == ["addr", "198.51.100.72/32", "addr", "2001:db8::72/128"]
    with pytest.raises(ValueError):
        hostcopy.boot_items([], [], [], ["198.51.100.0/24"])
