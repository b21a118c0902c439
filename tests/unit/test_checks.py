"""Host checks with injected inputs: each fails when it should, with a reason."""

from types import SimpleNamespace

import pytest

from minicl import checks


def statvfs(blocks, free, avail, files=100, ffree=50):
    return lambda _: SimpleNamespace(
        f_blocks=blocks, f_bfree=free, f_bavail=avail, f_files=files, f_ffree=ffree
    )


def test_real_mounts_skip_pseudo_filesystems(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "proc /proc proc rw 0 0\n/dev/vda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n"
        "overlay /x overlay rw 0 0\n/dev/vdb /srv/my\\040data xfs rw 0 0\n/dev/vda1 / ext4 rw 0 0\n"
    )
    assert checks.real_mounts(str(mounts)) == [("/", "ext4"), ("/srv/my data", "xfs")]


def test_disk_ok_and_full():
    ok = checks.disk_checks([("/", "ext4")], statvfs(1000, 600, 550))
    assert [str(c) for c in ok] == ["disk /: OK 42% used", "inodes /: OK 50% used"]
    full = checks.disk_checks([("/", "ext4")], statvfs(1000, 60, 10, files=100, ffree=5))
    assert [str(c) for c in full] == [
        "disk /: FAIL 99% used (limit 90%)",
        "inodes /: FAIL 95% used (limit 90%)",
    ]


def test_no_inode_check_where_the_filesystem_has_none():
    assert [c.name for c in checks.disk_checks([("/", "btrfs")], statvfs(1000, 600, 550, files=0))] == [
        "disk /"
    ]


@pytest.mark.parametrize("load, cpus, ok", [((0, 1.0, 0), 2, True), ((0, 4.1, 0), 2, False)])
def test_load_against_cpus(load, cpus, ok):
    check = checks.load_check(load, cpus)
    assert check.ok is ok and f"{load[1]:.2f} over 5 min on {cpus} CPU(s)" in check.reason


def test_memory(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1048576 kB\nMemFree: 1000 kB\nMemAvailable: 20000 kB\n")
    assert str(checks.memory_check(str(meminfo))) == "memory: FAIL 2% available of 1024 MiB (minimum 5%)"
    meminfo.write_text("MemTotal: 1048576 kB\nMemFree: 1000 kB\nMemAvailable: 524288 kB\n")
    assert checks.memory_check(str(meminfo)).ok


def test_mail_queue_size_and_age():
    empty = {"size": 0, "oldest_age_seconds": None, "messages": []}
    assert all(c.ok for c in checks.mail_queue_checks(empty))
    stuck = {"size": 1, "oldest_age_seconds": 7200, "messages": [{"reason": "SASL authentication failed"}]}
    size, age = checks.mail_queue_checks(stuck)
    assert size.ok and not age.ok
    assert str(age) == "mail queue age: FAIL oldest 7200 s (limit 3600 s); e.g. SASL authentication failed"


def test_port_check_fails_on_a_closed_port():
    check = checks.port_check("ssh", 9, "127.0.0.1")  # discard port: nothing listens here
    assert not check.ok and check.reason.startswith("does not answer on port 9")
