"""minicl.accounts: planning cluster user accounts against a fake system root in tmp_path.

Nothing here touches the machine: every Snapshot is read from a fake root under tmp_path,
every Registry lives under tmp_path, apply_plan only ever gets a fake ``run`` that records
argv and stdin, and write_keys_file only writes into homes under tmp_path.
"""

import json
import os
import shutil
import stat
import subprocess
import threading
import types
from pathlib import Path

import pytest

from minicl import accounts
from minicl.accounts import (
    KEYS_HEADER,
    LOGIN_SHELL,
    NOLOGIN_SHELL,
    REMOVED_KEYS,
    ApplyError,
    Registry,
    Snapshot,
    apply_plan,
    key_fingerprint,
    keys_file_text,
    plan_all,
    plan_present,
    plan_removed,
    usable_admins,
    write_keys_file,
)

from .loader import load_state

REPO_ROOT = Path(__file__).resolve().parents[2]

H1 = "$6$salt$" + "A" * 86
H2 = "$6$salt$" + "B" * 86
H_LOCAL = "$6$salt$" + "C" * 86


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two real ed25519 public keys: {"k1": line, "k2": line, "fp1": SHA256:..., "fp2": ..., "blob1": ...}."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    directory = tmp_path_factory.mktemp("sshkeys")
    found = {}
    for n in ("1", "2"):
        path = directory / f"id_ed25519_{n}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"user{n}@test", "-f", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        line = path.with_suffix(".pub").read_text().strip()
        listing = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path.with_suffix(".pub"))],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        found["k" + n] = line
        found["blob" + n] = line.split()[1]
        found["fp" + n] = listing[1]
    return found


class FakeSystem:
    """A fake system root: etc/passwd, etc/group, etc/shadow and homes, all under ``root``."""

    def __init__(self, root):
        self.root = Path(root)
        self.passwd = {
            "root": (0, 0, "/root", "/bin/bash"),
            "daemon": (1, 1, "/usr/sbin", NOLOGIN_SHELL),
            "carol": (1000, 1000, "/home/carol", LOGIN_SHELL),  # a local account minicl does not own
        }
        self.groups = {"root": (0, []), "daemon": (1, []), "sudo": (27, ["carol"]), "carol": (1000, [])}
        self.shadow = {"root": ("*", ""), "daemon": ("*", ""), "carol": (H_LOCAL, "")}

    def add_user(
        self, name, uid, gid=None, shell=LOGIN_SHELL, home=None, passwd=H1, expire="", group=True, admin=True
    ):
        gid = uid if gid is None else gid
        self.passwd[name] = (uid, gid, home or f"/home/{name}", shell)
        self.shadow[name] = (passwd, expire)
        if group:
            self.groups[name] = (gid, [])
        if admin:
            self.groups["sudo"][1].append(name)

    def home(self, name):
        return self.root / self.passwd[name][2].lstrip("/")

    def write_keys(self, name, text, file_mode=0o600, dir_mode=0o700, file_uid=None, dir_uid=None):
        """home/NAME/.ssh/authorized_keys with the given content, owners (default: the user) and modes."""
        uid, gid = self.passwd[name][:2]
        home = self.home(name)
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        path = ssh / "authorized_keys"
        path.write_text(text, encoding="utf-8")
        os.chown(path, uid if file_uid is None else file_uid, gid)
        os.chmod(path, file_mode)
        os.chown(ssh, uid if dir_uid is None else dir_uid, gid)
        os.chmod(ssh, dir_mode)
        return path

    def snapshot(self):
        etc = self.root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "passwd").write_text(
            "".join(
                f"{n}:x:{uid}:{gid}:{n}:{home}:{shell}\n"
                for n, (uid, gid, home, shell) in self.passwd.items()
            )
        )
        (etc / "group").write_text(
            "# a comment line\n"
            + "".join(f"{n}:x:{gid}:{','.join(members)}\n" for n, (gid, members) in self.groups.items())
        )
        (etc / "shadow").write_text(
            "".join(f"{n}:{h}:19000:0:99999:7::{expire}:\n" for n, (h, expire) in self.shadow.items())
        )
        return Snapshot.read(root=str(self.root))


@pytest.fixture
def system(tmp_path):
    return FakeSystem(tmp_path / "root")


@pytest.fixture
def registry_path(tmp_path):
    return str(tmp_path / "users.json")


def spec(uid, key, passwd=H1):
    return {"uid": uid, "passwd": passwd, "ssh_key": key}


def converged(system, keys, name="alice", uid=1001):
    """A user exactly as cluster.json wants it; returns (users, registry users)."""
    system.add_user(name, uid)
    system.write_keys(name, keys_file_text([keys["k1"]]))
    return {name: spec(uid, keys["k1"])}, {name: {"uid": uid}}


def tree(path):
    """Every path under ``path`` with its content (files) and mode/owner: to show nothing was written."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            info = os.lstat(p)
            content = None
            if stat.S_ISREG(info.st_mode):
                with open(p, "rb") as f:
                    content = f.read()
            found[p] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, content)
    return found


def assert_no_secrets(plan, keys):
    text = str(plan.changes)
    for secret in (H1, H2, "A" * 86, "B" * 86, keys["blob1"], keys["blob2"]):
        assert secret not in text
    for argv, _ in plan.commands:
        for secret in (H1, H2, "A" * 86, "B" * 86):
            assert secret not in " ".join(argv)


class FakeRun:
    """Records (argv, stdin, kwargs); fails commands whose argv[0] is in ``fail``."""

    def __init__(self, fail=(), on_first=None):
        self.calls = []
        self.fail = fail
        self.on_first = on_first

    def __call__(self, argv, input=None, **kwargs):
        if not self.calls and self.on_first:
            self.on_first()
        self.calls.append((list(argv), input, kwargs))
        if argv[0] in self.fail:
            return types.SimpleNamespace(returncode=1, stdout="", stderr="boom\n")
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")


# ---------------------------------------------------------------------------------------------
# Snapshot, key helpers, Registry


def test_snapshot_reads_accounts_groups_shadow(system):
    system.add_user("alice", 1001, expire="1", passwd="!" + H1)
    snap = system.snapshot()
    assert snap.accounts["alice"] == accounts.Account("alice", 1001, 1001, "/home/alice", LOGIN_SHELL)
    assert snap.groups["sudo"] == (27, ["carol", "alice"])
    assert snap.groups["alice"] == (1001, [])
    assert snap.shadow["alice"] == ("!" + H1, "1")
    assert snap.shadow["carol"] == (H_LOCAL, "")
    assert snap.account_by_uid(1000).name == "carol"
    assert snap.account_by_uid(4242) is None
    assert snap.group_by_gid(27) == "sudo"
    assert snap.is_admin("alice") and not snap.is_admin("root")
    assert not snap.is_admin("alice", admin_group="wheel")
    assert snap.root == str(system.root)


def test_key_fingerprint_matches_ssh_keygen(keys):
    assert key_fingerprint(keys["k1"]) == keys["fp1"]
    assert key_fingerprint(keys["k2"]) == keys["fp2"]
    assert keys["fp1"].startswith("SHA256:") and keys["fp1"] != keys["fp2"]


def test_keys_file_text(keys):
    assert (
        keys_file_text([keys["k1"], "  " + keys["k2"] + "  \n"])
        == KEYS_HEADER + keys["k1"] + "\n" + keys["k2"] + "\n"
    )
    assert keys_file_text([]) == KEYS_HEADER
    assert keys_file_text(None) == REMOVED_KEYS


def test_registry_load_missing_file_is_empty(tmp_path):
    reg = Registry.load(str(tmp_path / "nope" / "users.json"))
    assert reg.users == {}
    assert reg.path == str(tmp_path / "nope" / "users.json")
    assert not reg.owns("alice")


def test_registry_record_writes_0600_json_and_reloads(tmp_path):
    path = tmp_path / "state" / "users.json"
    reg = Registry.load(str(path))
    reg.record("alice", 1001)
    reg.record("bob", 1002)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert json.loads(path.read_text()) == {"users": {"alice": {"uid": 1001}, "bob": {"uid": 1002}}}
    assert not (tmp_path / "state" / "users.json.tmp").exists()
    again = Registry.load(str(path))
    assert again.users == reg.users
    assert again.owns("alice") and again.owns("bob") and not again.owns("carol")


def test_registry_record_same_uid_does_not_rewrite(tmp_path):
    path = tmp_path / "users.json"
    reg = Registry(path=str(path), users={"alice": {"uid": 1001}})
    reg.record("alice", 1001)
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# A new user


def test_new_user_is_created(system, registry_path, keys):
    snap = system.snapshot()
    users = {"alice": spec(1001, keys["k1"])}
    plans = plan_all(users, snap, Registry(path=registry_path))
    assert len(plans) == 1
    plan = plans[0]
    assert plan.name == "alice" and plan.present and plan.conflict is None
    assert plan.uid == 1001 and plan.gid == 1001
    assert plan.commands == [
        (["groupadd", "-g", "1001", "alice"], None),
        (
            [
                "useradd",
                "-u",
                "1001",
                "-g",
                "1001",
                "-m",
                "-d",
                "/home/alice",
                "-s",
                "/bin/bash",
                "-G",
                "sudo",
                "alice",
            ],
            None,
        ),
        (["chpasswd", "-e"], f"alice:{H1}\n"),
    ]
    assert plan.record is True
    assert plan.home == "/home/alice"
    assert plan.keys_text == KEYS_HEADER + keys["k1"] + "\n"
    assert plan.changes == {
        "account": "created (uid 1001, group alice, shell /bin/bash, in sudo)",
        "password": "set (hash hidden)",
        "authorized_keys": f"1 key(s): {keys['fp1']}",
    }
    assert H1 not in str(plan.changes)
    assert_no_secrets(plan, keys)
    assert not os.path.exists(registry_path)  # planning records nothing


def test_new_user_with_two_keys_and_other_admin_group(system, registry_path, keys):
    system.groups["wheel"] = (10, [])
    snap = system.snapshot()
    plan = plan_present(
        "alice", spec(1001, [keys["k1"], keys["k2"]]), snap, Registry(path=registry_path), admin_group="wheel"
    )
    assert plan.commands[1][0][-3:] == ["-G", "wheel", "alice"]
    assert plan.keys_text == KEYS_HEADER + keys["k1"] + "\n" + keys["k2"] + "\n"
    assert plan.changes["authorized_keys"] == f"2 key(s): {keys['fp1']}, {keys['fp2']}"
    assert plan.changes["account"] == "created (uid 1001, group alice, shell /bin/bash, in wheel)"
    assert_no_secrets(plan, keys)


def test_new_user_existing_group_with_right_gid_no_groupadd(system, registry_path, keys):
    system.groups["alice"] = (1001, [])
    snap = system.snapshot()
    plan = plan_present("alice", spec(1001, keys["k1"]), snap, Registry(path=registry_path))
    assert plan.conflict is None
    assert [argv[0] for argv, _ in plan.commands] == ["useradd", "chpasswd"]
    assert plan.commands[0] == (
        [
            "useradd",
            "-u",
            "1001",
            "-g",
            "1001",
            "-m",
            "-d",
            "/home/alice",
            "-s",
            "/bin/bash",
            "-G",
            "sudo",
            "alice",
        ],
        None,
    )
    assert plan.commands[1] == (["chpasswd", "-e"], f"alice:{H1}\n")


def test_registry_user_deleted_by_hand_is_recreated(system, registry_path, keys):
    snap = system.snapshot()
    plan = plan_present(
        "alice", spec(1001, keys["k1"]), snap, Registry(registry_path, {"alice": {"uid": 1001}})
    )
    assert plan.conflict is None
    assert plan.record is False  # already known with this uid
    assert [argv[0] for argv, _ in plan.commands] == ["groupadd", "useradd", "chpasswd"]


# ---------------------------------------------------------------------------------------------
# A converged user: a no-op


def test_converged_user_is_a_noop(system, registry_path, keys, monkeypatch):
    users, owned = converged(system, keys)
    snap = system.snapshot()
    before = tree(system.root)
    monkeypatch.setattr(accounts.subprocess, "run", lambda *a, **k: pytest.fail("a process was started"))
    assert plan_all(users, snap, Registry(registry_path, owned)) == []
    plan = plan_present("alice", users["alice"], snap, Registry(registry_path, owned))
    assert plan.commands == [] and plan.keys_text is None and plan.changes == {} and not plan.record
    assert tree(system.root) == before
    assert not os.path.exists(registry_path)


def test_converged_user_with_two_keys_is_a_noop(system, registry_path, keys):
    system.add_user("alice", 1001)
    system.write_keys("alice", keys_file_text([keys["k1"], keys["k2"]]))
    assert (
        plan_all(
            {"alice": spec(1001, [keys["k1"], keys["k2"]])},
            system.snapshot(),
            Registry(registry_path, {"alice": {"uid": 1001}}),
        )
        == []
    )


def test_converged_root_owned_uid0_style_account_is_a_noop(system, registry_path, keys):
    """Files made by the tests are owned by root: an account with uid 0 owns them as is."""
    system.passwd["root"] = (0, 0, "/home/toor", LOGIN_SHELL)
    system.groups["sudo"][1].append("root")
    system.shadow["root"] = (H1, "")
    home = system.home("root") / ".ssh"
    home.mkdir(parents=True)
    os.chmod(home, 0o700)
    (home / "authorized_keys").write_text(keys_file_text([keys["k1"]]))
    os.chmod(home / "authorized_keys", 0o600)
    snap = system.snapshot()
    users = {"root": spec(0, keys["k1"])}
    # root is in no group called root with gid 0 conflict: group root has gid 0 == uid.
    assert plan_all(users, snap, Registry(registry_path, {"root": {"uid": 0}})) == []


# ---------------------------------------------------------------------------------------------
# Drift, one thing at a time


def _only_plan(system, registry_path, users, owned):
    plans = plan_all(users, system.snapshot(), Registry(registry_path, owned))
    assert len(plans) == 1
    assert plans[0].conflict is None
    return plans[0]


def test_drift_different_hash(system, registry_path, keys):
    users, owned = converged(system, keys)
    system.shadow["alice"] = (H2, "")
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == [(["chpasswd", "-e"], f"alice:{H1}\n")]
    assert plan.changes == {"password": "changed (hash hidden)"}
    assert plan.keys_text is None and not plan.record
    assert_no_secrets(plan, keys)


def test_drift_locked_hash_is_unlocked(system, registry_path, keys):
    users, owned = converged(system, keys)
    system.shadow["alice"] = ("!" + H1, "")
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == [(["chpasswd", "-e"], f"alice:{H1}\n")]
    assert plan.changes == {"password": "unlocked (hash hidden)"}
    assert_no_secrets(plan, keys)


def test_drift_locked_other_hash_is_changed(system, registry_path, keys):
    users, owned = converged(system, keys)
    system.shadow["alice"] = ("!" + H2, "")
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.changes == {"password": "changed (hash hidden)"}


def test_drift_expire_field_set(system, registry_path, keys):
    users, owned = converged(system, keys)
    system.shadow["alice"] = (H1, "1")
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == [(["chage", "-E", "-1", "alice"], None)]
    assert plan.changes == {"expiry": "removed (account usable again)"}


def test_drift_nologin_shell(system, registry_path, keys):
    users, owned = converged(system, keys)
    system.passwd["alice"] = (1001, 1001, "/home/alice", NOLOGIN_SHELL)
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == [(["usermod", "-s", "/bin/bash", "alice"], None)]
    assert plan.changes == {"shell": "/usr/sbin/nologin -> /bin/bash"}


def test_drift_not_in_sudo(system, registry_path, keys):
    users, owned = converged(system, keys)
    system.groups["sudo"][1].remove("alice")
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == [(["gpasswd", "-a", "alice", "sudo"], None)]
    assert plan.changes == {"admin": "added to sudo"}


def test_drift_all_of_a_locked_out_user_is_restored(system, registry_path, keys):
    """A user that comes back after removal: everything restored, in this order."""
    users, owned = converged(system, keys)
    system.shadow["alice"] = ("!" + H1, "1")
    system.passwd["alice"] = (1001, 1001, "/home/alice", NOLOGIN_SHELL)
    system.groups["sudo"][1].remove("alice")
    system.write_keys("alice", REMOVED_KEYS)
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == [
        (["chpasswd", "-e"], f"alice:{H1}\n"),
        (["chage", "-E", "-1", "alice"], None),
        (["usermod", "-s", "/bin/bash", "alice"], None),
        (["gpasswd", "-a", "alice", "sudo"], None),
    ]
    assert plan.keys_text == keys_file_text([keys["k1"]])
    assert plan.changes == {
        "password": "unlocked (hash hidden)",
        "expiry": "removed (account usable again)",
        "shell": "/usr/sbin/nologin -> /bin/bash",
        "admin": "added to sudo",
        "authorized_keys": f"1 key(s): {keys['fp1']}",
    }
    assert_no_secrets(plan, keys)


def _break_extra_key(system, keys):
    system.write_keys("alice", keys_file_text([keys["k1"], keys["k2"]]))


def _break_file_mode(system, keys):
    system.write_keys("alice", keys_file_text([keys["k1"]]), file_mode=0o644)


def _break_file_owner(system, keys):
    system.write_keys("alice", keys_file_text([keys["k1"]]), file_uid=0)


def _break_dir_owner(system, keys):
    system.write_keys("alice", keys_file_text([keys["k1"]]), dir_uid=0)


def _break_dir_mode(system, keys):
    system.write_keys("alice", keys_file_text([keys["k1"]]), dir_mode=0o755)


def _break_symlink(system, keys):
    path = system.home("alice") / ".ssh" / "authorized_keys"
    elsewhere = system.root / "elsewhere"
    elsewhere.write_text(keys_file_text([keys["k1"]]))
    os.chown(elsewhere, 1001, 1001)
    os.chmod(elsewhere, 0o600)
    path.unlink()
    path.symlink_to(elsewhere)


def _break_missing(system, keys):
    (system.home("alice") / ".ssh" / "authorized_keys").unlink()


def _break_ssh_symlink(system, keys):
    ssh = system.home("alice") / ".ssh"
    target = system.root / "other-ssh"
    ssh.rename(target)
    ssh.symlink_to(target)


def _break_edited(system, keys):
    system.write_keys("alice", keys["k1"] + "\n")  # header removed by hand


@pytest.mark.parametrize(
    "breakage",
    [
        _break_extra_key,
        _break_file_mode,
        _break_file_owner,
        _break_dir_owner,
        _break_dir_mode,
        _break_symlink,
        _break_missing,
        _break_ssh_symlink,
        _break_edited,
    ],
    ids=lambda f: f.__name__[len("_break_") :],
)
def test_drift_authorized_keys(system, registry_path, keys, breakage):
    users, owned = converged(system, keys)
    breakage(system, keys)
    plan = _only_plan(system, registry_path, users, owned)
    assert plan.commands == []
    assert plan.keys_text == KEYS_HEADER + keys["k1"] + "\n"
    assert plan.changes == {"authorized_keys": f"1 key(s): {keys['fp1']}"}
    assert plan.home == "/home/alice" and plan.uid == 1001 and plan.gid == 1001
    assert keys["blob1"] not in str(plan.changes) and keys["blob2"] not in str(plan.changes)
    assert_no_secrets(plan, keys)


def test_fifo_authorized_keys_does_not_hang_the_planner(system, registry_path, keys):
    users, owned = converged(system, keys)
    path = system.home("alice") / ".ssh" / "authorized_keys"
    path.unlink()
    os.mkfifo(path, 0o600)
    os.chown(path, 1001, 1001)
    snap = system.snapshot()
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(plans=plan_all(users, snap, Registry(registry_path, owned))), daemon=True
    )
    worker.start()
    worker.join(0.5)
    hung = worker.is_alive()
    if hung:  # unblock the reader so no thread is left behind
        for _ in range(50):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                break
            except OSError:
                worker.join(0.05)
        worker.join(2)
    assert not hung, "plan_all blocked on a FIFO at ~/.ssh/authorized_keys"
    assert result["plans"][0].keys_text == keys_file_text([keys["k1"]])


# ---------------------------------------------------------------------------------------------
# Conflicts


def _conflict_plan(system, registry_path, users, owned=None):
    plans = plan_all(users, system.snapshot(), Registry(registry_path, owned or {}))
    assert len(plans) == 1
    plan = plans[0]
    assert plan.commands == [] and plan.keys_text is None and plan.changes == {} and not plan.record
    return plan


def test_conflict_local_account_with_the_name(system, registry_path, keys):
    plan = _conflict_plan(system, registry_path, {"carol": spec(1000, keys["k1"])})
    assert plan.conflict == (
        "a local account carol (uid 1000) exists that minicl did not create; minicl leaves "
        "it alone: rename or remove it, or rename the user in cluster.json"
    )


def test_conflict_converged_looking_account_not_in_registry(system, registry_path, keys):
    users, _ = converged(system, keys)
    plan = _conflict_plan(system, registry_path, users)
    assert plan.conflict.startswith("a local account alice (uid 1001) exists that minicl did not create")


def test_conflict_uid_of_another_account(system, registry_path, keys):
    plan = _conflict_plan(system, registry_path, {"alice": spec(1000, keys["k1"])})
    assert plan.conflict == "uid 1000 belongs to the local account carol: choose another uid in cluster.json"


def test_conflict_group_name_with_other_gid(system, registry_path, keys):
    system.groups["alice"] = (2000, [])
    plan = _conflict_plan(system, registry_path, {"alice": spec(1001, keys["k1"])})
    assert plan.conflict == (
        "a group alice exists with gid 2000 (minicl needs gid 1001): rename or remove that group"
    )


def test_conflict_gid_of_another_group(system, registry_path, keys):
    system.groups["staff"] = (1001, [])
    plan = _conflict_plan(system, registry_path, {"alice": spec(1001, keys["k1"])})
    assert plan.conflict == "gid 1001 belongs to the group staff: choose another uid, or move that group"


def test_conflict_registry_account_uid_differs_from_cluster_json(system, registry_path, keys):
    users, owned = converged(system, keys)
    users["alice"]["uid"] = 1002
    plan = _conflict_plan(system, registry_path, users, owned)
    assert plan.conflict == (
        "account alice has uid 1001, cluster.json says 1002; minicl does not renumber "
        "accounts (file owners would change): set the uid back, or migrate the account by "
        "hand"
    )


def test_conflict_fails_alone(system, registry_path, keys):
    """One user in conflict does not stop the others from being planned."""
    users = {"carol": spec(1000, keys["k1"]), "dave": spec(1003, keys["k2"])}
    plans = plan_all(users, system.snapshot(), Registry(registry_path))
    assert [p.name for p in plans] == ["carol", "dave"]
    assert plans[0].conflict and not plans[1].conflict
    assert plans[1].commands[0] == (["groupadd", "-g", "1003", "dave"], None)


# ---------------------------------------------------------------------------------------------
# Removal


def test_removed_user_is_locked_out(system, registry_path, keys):
    system.add_user("bob", 1002, passwd=H2)
    system.write_keys("bob", keys_file_text([keys["k2"]]))
    plans = plan_all({}, system.snapshot(), Registry(registry_path, {"bob": {"uid": 1002}}))
    assert len(plans) == 1
    plan = plans[0]
    assert plan.name == "bob" and not plan.present and plan.conflict is None
    assert plan.commands == [
        (["usermod", "-L", "bob"], None),
        (["usermod", "-e", "1", "bob"], None),
        (["usermod", "-s", "/usr/sbin/nologin", "bob"], None),
        (["gpasswd", "-d", "bob", "sudo"], None),
    ]
    assert plan.keys_text == REMOVED_KEYS
    assert plan.uid == 1002 and plan.gid == 1002 and plan.home == "/home/bob"
    assert not plan.record
    assert plan.changes == {
        "password": "locked",
        "expiry": "expired",
        "shell": "/bin/bash -> /usr/sbin/nologin",
        "admin": "removed from sudo",
        "authorized_keys": "emptied",
        "account": "locked: removed from cluster.json (home and files kept)",
    }
    assert "home and files kept" in plan.changes["account"]
    assert_no_secrets(plan, keys)


def test_removed_user_partly_locked_out(system, registry_path, keys):
    system.add_user("bob", 1002, passwd="!" + H2, expire="1", admin=False)
    system.write_keys("bob", REMOVED_KEYS)
    plan = plan_removed("bob", system.snapshot(), Registry(registry_path, {"bob": {"uid": 1002}}))
    assert plan.commands == [(["usermod", "-s", "/usr/sbin/nologin", "bob"], None)]
    assert plan.keys_text is None
    assert plan.changes == {
        "shell": "/bin/bash -> /usr/sbin/nologin",
        "account": "locked: removed from cluster.json (home and files kept)",
    }


def test_removed_user_already_locked_out_has_no_plan(system, registry_path, keys):
    system.add_user("bob", 1002, passwd="!" + H2, expire="1", shell=NOLOGIN_SHELL, admin=False)
    system.write_keys("bob", REMOVED_KEYS)
    registry = Registry(registry_path, {"bob": {"uid": 1002}})
    snap = system.snapshot()
    assert plan_all({}, snap, registry) == []
    plan = plan_removed("bob", snap, registry)
    assert plan.commands == [] and plan.changes == {} and plan.keys_text is None


def test_removed_user_deleted_by_hand_has_no_plan(system, registry_path):
    registry = Registry(registry_path, {"bob": {"uid": 1002}})
    snap = system.snapshot()
    assert plan_all({}, snap, registry) == []
    plan = plan_removed("bob", snap, registry)
    assert plan.conflict is None and plan.commands == [] and plan.keys_text is None


def test_removed_user_whose_uid_changed_is_a_conflict(system, registry_path, keys):
    system.add_user("bob", 1500)
    system.write_keys("bob", keys_file_text([keys["k2"]]))
    plans = plan_all({}, system.snapshot(), Registry(registry_path, {"bob": {"uid": 1002}}))
    assert len(plans) == 1
    assert plans[0].conflict == (
        "account bob now has uid 1500, not the uid 1002 minicl created it with; minicl leaves it alone"
    )
    assert plans[0].commands == [] and plans[0].keys_text is None and plans[0].changes == {}


def test_plan_all_leaves_unmanaged_accounts_alone(system, registry_path, keys):
    """root, daemon and carol are neither in cluster.json nor in the registry: never a plan for them."""
    system.shadow["carol"] = ("", "")  # even if they look odd
    system.passwd["carol"] = (1000, 1000, "/home/carol", NOLOGIN_SHELL)
    snap = system.snapshot()
    assert plan_all({}, snap, Registry(registry_path)) == []
    plans = plan_all({"alice": spec(1001, keys["k1"])}, snap, Registry(registry_path, {"bob": {"uid": 1002}}))
    assert [p.name for p in plans] == ["alice"]
    assert all(name not in str(plans[0].commands) for name in ("root", "daemon", "carol"))


def test_plan_all_order_present_then_removed(system, registry_path, keys):
    system.add_user("bob", 1002)
    system.add_user("zed", 1009)
    plans = plan_all(
        {"zoe": spec(1004, keys["k1"]), "amy": spec(1003, keys["k2"])},
        system.snapshot(),
        Registry(registry_path, {"zed": {"uid": 1009}, "bob": {"uid": 1002}}),
    )
    assert [(p.name, p.present) for p in plans] == [
        ("amy", True),
        ("zoe", True),
        ("bob", False),
        ("zed", False),
    ]


# ---------------------------------------------------------------------------------------------
# apply_plan with a fake run


def test_apply_new_user_records_first_runs_in_order_writes_keys(system, tmp_path, keys):
    registry_file = tmp_path / "state" / "users.json"
    registry = Registry.load(str(registry_file))
    plan = plan_all({"alice": spec(12345, keys["k1"])}, system.snapshot(), registry)[0]
    home = tmp_path / "realhome" / "alice"
    home.mkdir(parents=True)
    plan.home = str(home)  # never /home/alice of this machine

    seen = {}

    def on_first():
        seen["exists"] = registry_file.exists()
        seen["content"] = json.loads(registry_file.read_text()) if registry_file.exists() else None

    run = FakeRun(on_first=on_first)
    apply_plan(plan, registry, run=run)
    assert seen == {"exists": True, "content": {"users": {"alice": {"uid": 12345}}}}
    assert [(argv, stdin) for argv, stdin, _ in run.calls] == plan.commands
    assert [argv[0] for argv, _, _ in run.calls] == ["groupadd", "useradd", "chpasswd"]
    assert run.calls[2][1] == f"alice:{H1}\n"
    assert all(kw == {"capture_output": True, "text": True, "check": False} for _, _, kw in run.calls)
    ssh = home / ".ssh"
    assert stat.S_IMODE(os.lstat(ssh).st_mode) == 0o700
    assert (os.lstat(ssh).st_uid, os.lstat(ssh).st_gid) == (12345, 12345)
    keyfile = ssh / "authorized_keys"
    assert keyfile.read_text() == KEYS_HEADER + keys["k1"] + "\n"
    assert stat.S_IMODE(os.lstat(keyfile).st_mode) == 0o600
    assert (os.lstat(keyfile).st_uid, os.lstat(keyfile).st_gid) == (12345, 12345)
    assert sorted(os.listdir(ssh)) == ["authorized_keys"]
    assert Registry.load(str(registry_file)).users == {"alice": {"uid": 12345}}


def test_apply_removed_plan_does_not_record(system, tmp_path, keys):
    system.add_user("bob", 1002)
    registry = Registry(str(tmp_path / "users.json"), {"bob": {"uid": 1002}})
    plan = plan_all({}, system.snapshot(), registry)[0]
    home = tmp_path / "realhome" / "bob"
    home.mkdir(parents=True)
    plan.home = str(home)
    run = FakeRun()
    apply_plan(plan, registry, run=run)
    assert not (tmp_path / "users.json").exists()
    assert [argv for argv, _, _ in run.calls] == [argv for argv, _ in plan.commands]
    assert (home / ".ssh" / "authorized_keys").read_text() == REMOVED_KEYS
    assert os.lstat(home / ".ssh" / "authorized_keys").st_uid == 1002


def test_apply_failing_command_raises_without_hash(system, tmp_path, keys):
    registry = Registry.load(str(tmp_path / "users.json"))
    plan = plan_all({"alice": spec(12345, keys["k1"])}, system.snapshot(), registry)[0]
    home = tmp_path / "realhome" / "alice"
    home.mkdir(parents=True)
    plan.home = str(home)
    run = FakeRun(fail=("chpasswd",))
    with pytest.raises(ApplyError) as excinfo:
        apply_plan(plan, registry, run=run)
    message = str(excinfo.value)
    assert message == "chpasswd -e failed: boom"
    assert "chpasswd -e" in message and "boom" in message
    assert H1 not in message and "A" * 86 not in message
    assert not (home / ".ssh").exists()  # keys are not written after a failure
    assert Registry.load(str(tmp_path / "users.json")).owns("alice")  # recorded before useradd


def test_apply_stops_at_first_failure(system, tmp_path, keys):
    registry = Registry.load(str(tmp_path / "users.json"))
    plan = plan_all({"alice": spec(12345, keys["k1"])}, system.snapshot(), registry)[0]
    plan.home = str(tmp_path / "no-such-home")
    run = FakeRun(fail=("groupadd",))
    with pytest.raises(ApplyError, match=r"^groupadd -g 12345 alice failed: boom$"):
        apply_plan(plan, registry, run=run)
    assert [argv[0] for argv, _, _ in run.calls] == ["groupadd"]


def test_apply_failure_without_stderr_reports_returncode(system, tmp_path, keys):
    system.add_user("alice", 1001, shell=NOLOGIN_SHELL)
    registry = Registry(str(tmp_path / "users.json"), {"alice": {"uid": 1001}})
    plan = plan_present("alice", spec(1001, keys["k1"]), system.snapshot(), registry)
    plan.keys_text = None

    def run(argv, **kwargs):
        return types.SimpleNamespace(returncode=3, stdout="", stderr="  \n")

    with pytest.raises(ApplyError, match=r"^usermod -s /bin/bash alice failed: 3$"):
        apply_plan(plan, registry, run=run)


# ---------------------------------------------------------------------------------------------
# write_keys_file


def test_write_keys_file_creates_dir_and_file(tmp_path):
    home = tmp_path / "home" / "u"
    home.mkdir(parents=True)
    old_umask = os.umask(0o077)
    try:
        write_keys_file(str(home), 12345, 12346, "content\n")
    finally:
        os.umask(old_umask)
    ssh = home / ".ssh"
    info = os.lstat(ssh)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert (info.st_uid, info.st_gid) == (12345, 12346)
    info = os.lstat(ssh / "authorized_keys")
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == (12345, 12346)
    assert (ssh / "authorized_keys").read_text() == "content\n"
    assert os.listdir(ssh) == ["authorized_keys"]


def test_write_keys_file_fixes_existing_dir_file_and_symlink(tmp_path):
    home = tmp_path / "home" / "u"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True)
    os.chmod(ssh, 0o755)
    victim = tmp_path / "victim"
    victim.write_text("do not touch\n")
    (ssh / "authorized_keys").symlink_to(victim)
    write_keys_file(str(home), 12345, 12345, "new\n")
    assert victim.read_text() == "do not touch\n"
    assert os.lstat(victim).st_uid == 0
    info = os.lstat(ssh / "authorized_keys")
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 12345
    assert (ssh / "authorized_keys").read_text() == "new\n"
    assert stat.S_IMODE(os.lstat(ssh).st_mode) == 0o700 and os.lstat(ssh).st_uid == 12345
    # and a wrong mode/owner on a regular file is replaced too
    os.chmod(ssh / "authorized_keys", 0o666)
    os.chown(ssh / "authorized_keys", 0, 0)
    write_keys_file(str(home), 12345, 12345, "newer\n")
    info = os.lstat(ssh / "authorized_keys")
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 12345
    assert (ssh / "authorized_keys").read_text() == "newer\n"


def test_write_keys_file_refuses_symlinked_ssh_dir(tmp_path):
    home = tmp_path / "home" / "u"
    home.mkdir(parents=True)
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o755)
    (home / ".ssh").symlink_to(target)
    with pytest.raises(OSError):
        write_keys_file(str(home), 12345, 12345, "x\n")
    assert os.listdir(target) == []
    assert os.lstat(target).st_uid == 0 and stat.S_IMODE(os.lstat(target).st_mode) == 0o755
    assert os.path.islink(home / ".ssh")


def test_write_keys_file_refuses_symlinked_home(tmp_path):
    real = tmp_path / "realhome"
    real.mkdir()
    link = tmp_path / "linkhome"
    link.symlink_to(real)
    with pytest.raises(OSError):
        write_keys_file(str(link), 12345, 12345, "x\n")
    assert os.listdir(real) == []


# ---------------------------------------------------------------------------------------------
# usable_admins


def test_usable_admins(keys):
    users = {
        "good": spec(1001, keys["k1"]),
        "twokeys": spec(1002, [keys["k1"], keys["k2"]]),
        "bang": spec(1003, keys["k1"], passwd="!"),
        "bangbang": spec(1004, keys["k1"], passwd="!!"),
        "star": spec(1005, keys["k1"], passwd="*"),
        "bangstar": spec(1006, keys["k1"], passwd="!*"),
        "lockedhash": spec(1007, keys["k1"], passwd="!" + H1),
        "nokeys": spec(1008, [], passwd=H1),
        "conflicted": spec(1009, keys["k1"]),
        "planned": spec(1010, keys["k2"]),
    }
    plans = {
        "conflicted": accounts.Plan("conflicted", True, 1009, conflict="uid 1009 belongs to ..."),
        "planned": accounts.Plan(
            "planned", True, 1010, commands=[(["usermod", "-s", LOGIN_SHELL, "planned"], None)]
        ),
    }
    assert usable_admins(users, plans) == ["good", "planned", "twokeys"]
    assert usable_admins({}, {}) == []


def test_usable_admins_from_real_plans(system, registry_path, keys):
    users = {"carol": spec(1000, keys["k1"]), "dave": spec(1003, keys["k2"])}
    plans = plan_all(users, system.snapshot(), Registry(registry_path))
    assert usable_admins(users, {p.name: p for p in plans}) == ["dave"]


# ---------------------------------------------------------------------------------------------
# The Salt state on top (accounts patched to the fake root and a fake run)


def _load_state(opts_test):
    return load_state("minicl_users", opts_test)


@pytest.fixture
def fake_state_env(system, tmp_path, monkeypatch):
    """Patch accounts so the state reads the fake root and never runs a command or writes a real home."""
    runs = []
    real_apply = accounts.apply_plan

    def fake_apply(plan, registry):
        plan.home = str(tmp_path / "applied-homes" / plan.name)
        os.makedirs(plan.home, exist_ok=True)
        run = FakeRun()
        real_apply(plan, registry, run=run)
        runs.extend(run.calls)

    def use_snapshot():
        snap = system.snapshot()
        monkeypatch.setattr(accounts.Snapshot, "read", classmethod(lambda cls, root="/": snap))

    monkeypatch.setattr(accounts, "apply_plan", fake_apply)
    return types.SimpleNamespace(runs=runs, use_snapshot=use_snapshot)


def test_state_test_mode_reports_changes_and_conflicts(system, tmp_path, keys, fake_state_env):
    fake_state_env.use_snapshot()
    state = _load_state(opts_test=True)
    users = {"alice": spec(1001, keys["k1"]), "carol": spec(1000, keys["k2"])}
    ret = state.managed("cluster users", users=users, registry=str(tmp_path / "users.json"))
    assert ret["result"] is False
    assert set(ret["changes"]) == {"alice"}
    assert ret["comment"].splitlines()[0] == "2 cluster users; would change 1 account(s)"
    assert ret["comment"].splitlines()[1].startswith("carol: a local account carol (uid 1000) exists")
    assert fake_state_env.runs == []
    assert not (tmp_path / "users.json").exists()
    assert H1 not in str(ret) and keys["blob1"] not in str(ret) and keys["blob2"] not in str(ret)


def test_state_records_registry_uid_after_manual_migration(system, tmp_path, keys, fake_state_env):
    # cluster.json moved alice from 1001 to 1002 and the admin migrated the account by hand (usermod -u).
    users, _ = converged(system, keys, uid=1002)
    registry_file = tmp_path / "users.json"
    Registry(str(registry_file)).record("alice", 1001)
    fake_state_env.use_snapshot()
    plans = plan_all(users, system.snapshot(), Registry.load(str(registry_file)))
    assert len(plans) == 1 and plans[0].record
    assert plans[0].changes == {"registry": "minicl's account now has uid 1002"}
    state = _load_state(opts_test=False)
    ret = state.managed("cluster users", users=users, registry=str(registry_file))
    assert ret["result"] is True
    assert Registry.load(str(registry_file)).users == {"alice": {"uid": 1002}}


def test_usable_admins_after_the_run_counts_only_what_converged(keys):
    from minicl.accounts import Plan, usable_admins

    users = {"alice": spec(1001, keys["k1"]), "bob": spec(1002, keys["k2"])}
    failed = {"alice": Plan("alice", True, 1001, changes={"account": "created"})}  # useradd failed
    assert usable_admins(users, failed) == ["alice", "bob"]  # test=True: the plan counts
    assert usable_admins(users, failed, converged=True) == ["bob"]  # after the run: only bob is real
