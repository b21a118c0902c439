"""Cluster user accounts: plan and converge accounts, passwords, admin rights and SSH keys.

minicl owns only the accounts it created; it records them in a registry
(/var/lib/minicl/users.json) and never changes any other account. A user that leaves
cluster.json is locked out (password locked, account expired, shell nologin, keys emptied,
dropped from the admin group) but keeps home and files; a user that comes back is restored.

The no-op path reads /etc/passwd, /etc/group, /etc/shadow and each authorized_keys once and
starts no process; commands run only for what differs.

    snapshot = Snapshot.read()
    plans = plan_all(users, snapshot, Registry.load(path))
    for plan in plans:
        apply_plan(plan, registry)   # unless test=True
"""

import base64
import hashlib
import json
import os
import secrets
import stat
import subprocess
from dataclasses import dataclass, field

from minicl import paths
from minicl.errors import MiniclError
from minicl.files import write_file

ADMIN_GROUP = "sudo"
LOGIN_SHELL = "/bin/bash"
NOLOGIN_SHELL = "/usr/sbin/nologin"
HOME_BASE = "/home"
REGISTRY_PATH = paths.USERS_REGISTRY
KEYS_HEADER = "# Managed by minicl from cluster.json; keys added here are removed on the next run.\n"
REMOVED_KEYS = "# Managed by minicl: this user was removed from cluster.json.\n"
MAX_KEYS_FILE = 1 << 20  # larger is not minicl's: rewrite it rather than read it


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass
class Snapshot:
    """The accounts, groups and shadow entries of the system, read once from its files."""

    accounts: dict
    groups: dict  # name -> (gid, [members])
    shadow: dict  # name -> (hash, expire field)
    root: str = "/"

    @classmethod
    def read(cls, root="/"):
        def rows(path):
            with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
                return [
                    line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")
                ]

        # Lines without numeric ids (NIS "+" entries and the like) are not local accounts.
        accounts = {
            r[0]: Account(r[0], int(r[2]), int(r[3]), r[5], r[6])
            for r in rows("etc/passwd")
            if len(r) >= 7 and r[2].isdigit() and r[3].isdigit()
        }
        groups = {
            r[0]: (int(r[2]), [m for m in r[3].split(",") if m])
            for r in rows("etc/group")
            if len(r) >= 4 and r[2].isdigit()
        }
        shadow = {r[0]: (r[1], r[7]) for r in rows("etc/shadow") if len(r) >= 8}
        return cls(accounts, groups, shadow, root)

    def account_by_uid(self, uid):
        return next((a for a in self.accounts.values() if a.uid == uid), None)

    def group_by_gid(self, gid):
        return next((name for name, (g, _) in self.groups.items() if g == gid), None)

    def is_admin(self, name, admin_group=ADMIN_GROUP):
        return name in self.groups.get(admin_group, (None, []))[1]


class AccountsError(MiniclError):
    """The account data minicl relies on cannot be read."""


class Registry:
    """The accounts minicl created: {name: {"uid": N}}. Only these are ever changed."""

    def __init__(self, path=REGISTRY_PATH, users=None):
        self.path = path
        self.users = users or {}

    @classmethod
    def load(cls, path=REGISTRY_PATH):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return cls(path)
        except ValueError as exc:
            raise AccountsError(
                f"{path} is damaged ({exc}); minicl will not touch any account until it is "
                'fixed: it lists the accounts minicl created, as {"users": {name: {"uid": N}}}'
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("users", {}), dict):
            raise AccountsError(f"{path} is not a minicl user registry")
        return cls(path, data.get("users", {}))

    def owns(self, name):
        return name in self.users

    def record(self, name, uid):
        if self.users.get(name, {}).get("uid") == uid:
            return
        self.users[name] = {"uid": uid}
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        write_file(self.path, json.dumps({"users": self.users}, indent=2, sort_keys=True), 0o600)


def key_fingerprint(key):
    blob = base64.b64decode(key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def keys_file_text(keys):
    return KEYS_HEADER + "".join(k.strip() + "\n" for k in keys) if keys is not None else REMOVED_KEYS


@dataclass
class Plan:
    """What to do for one user. ``changes`` is what Salt shows: never a hash or a key."""

    name: str
    present: bool
    uid: int = None
    gid: int = None
    conflict: str = None
    commands: list = field(default_factory=list)  # (argv, stdin or None)
    keys_text: str = None  # authorized_keys content to write, None if it is right
    home: str = None
    record: bool = False
    changes: dict = field(default_factory=dict)


def plan_all(users, snapshot, registry, admin_group=ADMIN_GROUP):
    """Plans for every user in cluster.json (``users``) and every registry user no longer in it."""
    plans = [
        plan_present(name, spec, snapshot, registry, admin_group) for name, spec in sorted(users.items())
    ]
    plans += [
        plan_removed(name, snapshot, registry, admin_group)
        for name in sorted(registry.users)
        if name not in users
    ]
    return [p for p in plans if p.conflict or p.commands or p.keys_text is not None or p.record]


def _conflict(name, uid, snapshot, registry):
    account = snapshot.accounts.get(name)
    if account and not registry.owns(name):
        return (
            f"a local account {name} (uid {account.uid}) exists that minicl did not create; "
            "minicl leaves it alone: rename or remove it, or rename the user in cluster.json"
        )
    if account and account.uid != uid:
        return (
            f"account {name} has uid {account.uid}, cluster.json says {uid}; minicl does not renumber "
            "accounts (file owners would change): set the uid back, or migrate the account by hand"
        )
    other = snapshot.account_by_uid(uid)
    if other and other.name != name:
        return f"uid {uid} belongs to the local account {other.name}: choose another uid in cluster.json"
    group = snapshot.groups.get(name)
    if group and group[0] != uid and not (account and account.gid == group[0]):
        return (
            f"a group {name} exists with gid {group[0]} (minicl needs gid {uid}): rename or remove that group"
        )
    gid_owner = snapshot.group_by_gid(uid)
    if gid_owner and gid_owner != name:
        return f"gid {uid} belongs to the group {gid_owner}: choose another uid, or move that group"
    if account is None:
        home = os.path.join(snapshot.root, HOME_BASE.lstrip("/"), name)
        try:
            owner = os.lstat(home).st_uid
        except FileNotFoundError:
            owner = uid
        if owner != uid:
            return (
                f"{HOME_BASE}/{name} exists and belongs to uid {owner}: minicl will not give someone "
                "else's files to this user; move it away first"
            )
    return None


def plan_present(name, spec, snapshot, registry, admin_group=ADMIN_GROUP):
    uid = spec["uid"]
    plan = Plan(name, True, uid, gid=uid)
    plan.conflict = _conflict(name, uid, snapshot, registry)
    if plan.conflict:
        return plan
    keys = [spec["ssh_key"]] if isinstance(spec["ssh_key"], str) else list(spec["ssh_key"])
    account = snapshot.accounts.get(name)
    plan.record = not registry.owns(name) or registry.users[name].get("uid") != uid
    if account is None:
        if name not in snapshot.groups:
            plan.commands.append((["groupadd", "-g", str(uid), name], None))
        plan.commands.append(
            (
                [
                    "useradd",
                    "-u",
                    str(uid),
                    "-g",
                    str(uid),
                    "-m",
                    "-d",
                    f"{HOME_BASE}/{name}",
                    "-s",
                    LOGIN_SHELL,
                    "-G",
                    admin_group,
                    name,
                ],
                None,
            )
        )
        plan.commands.append((["chpasswd", "-e"], f"{name}:{spec['passwd']}\n"))
        plan.changes["account"] = f"created (uid {uid}, group {name}, shell {LOGIN_SHELL}, in {admin_group})"
        plan.changes["password"] = "set (hash hidden)"
        plan.home = f"{HOME_BASE}/{name}"
    else:
        plan.home, plan.gid = account.home, account.gid
        current_hash, expire = snapshot.shadow.get(name, ("", ""))
        if current_hash != spec["passwd"]:
            plan.commands.append((["chpasswd", "-e"], f"{name}:{spec['passwd']}\n"))
            restored = current_hash.startswith("!") and current_hash.lstrip("!") == spec["passwd"].lstrip("!")
            plan.changes["password"] = "unlocked (hash hidden)" if restored else "changed (hash hidden)"
        if expire:
            plan.commands.append((["chage", "-E", "-1", name], None))
            plan.changes["expiry"] = "removed (account usable again)"
        if account.shell != LOGIN_SHELL:
            plan.commands.append((["usermod", "-s", LOGIN_SHELL, name], None))
            plan.changes["shell"] = f"{account.shell} -> {LOGIN_SHELL}"
        if not snapshot.is_admin(name, admin_group):
            plan.commands.append((["gpasswd", "-a", name, admin_group], None))
            plan.changes["admin"] = f"added to {admin_group}"
    if plan.record and account is not None and registry.owns(name):
        plan.changes["registry"] = f"minicl's account now has uid {uid}"
    wanted = keys_file_text(keys)
    if account is None or read_keys_file(snapshot.root, plan.home, account) != wanted:
        plan.keys_text = wanted
        plan.changes["authorized_keys"] = f"{len(keys)} key(s): " + ", ".join(
            key_fingerprint(k) for k in keys
        )
    return plan


def plan_removed(name, snapshot, registry, admin_group=ADMIN_GROUP):
    plan = Plan(name, False, registry.users[name].get("uid"))
    account = snapshot.accounts.get(name)
    if account is None:
        return plan  # deleted by hand: nothing left to lock
    if account.uid != plan.uid:
        plan.conflict = (
            f"account {name} now has uid {account.uid}, not the uid {plan.uid} minicl created it "
            "with; minicl leaves it alone"
        )
        return plan
    plan.home, plan.gid = account.home, account.gid
    current_hash, expire = snapshot.shadow.get(name, ("", ""))
    if not current_hash.startswith("!"):
        plan.commands.append((["usermod", "-L", name], None))
        plan.changes["password"] = "locked"
    if expire != "1":
        plan.commands.append((["usermod", "-e", "1", name], None))
        plan.changes["expiry"] = "expired"
    if account.shell != NOLOGIN_SHELL:
        plan.commands.append((["usermod", "-s", NOLOGIN_SHELL, name], None))
        plan.changes["shell"] = f"{account.shell} -> {NOLOGIN_SHELL}"
    if snapshot.is_admin(name, admin_group):
        plan.commands.append((["gpasswd", "-d", name, admin_group], None))
        plan.changes["admin"] = f"removed from {admin_group}"
    if read_keys_file(snapshot.root, plan.home, account) != REMOVED_KEYS:
        plan.keys_text = REMOVED_KEYS
        plan.changes["authorized_keys"] = "emptied"
    if plan.changes:
        plan.changes["account"] = "locked: removed from cluster.json (home and files kept)"
    return plan


def _keys_path(root, home):
    return os.path.join(root, home.lstrip("/"), ".ssh", "authorized_keys")


def read_keys_file(root, home, account):
    """The authorized_keys text if it is a regular file with the right owner and mode, else None."""
    path = _keys_path(root, home)
    try:
        # O_NONBLOCK: a FIFO planted by the user must not hang a root run.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != account.uid
            or stat.S_IMODE(info.st_mode) != 0o600
            or info.st_size > MAX_KEYS_FILE
        ):
            return None
        ssh_dir = os.lstat(os.path.dirname(path))
        if ssh_dir.st_uid != account.uid or stat.S_IMODE(ssh_dir.st_mode) != 0o700:
            return None
        return f.read(MAX_KEYS_FILE).decode("utf-8", errors="replace")


def write_keys_file(home, uid, gid, text):
    """Write ~/.ssh/authorized_keys as root without following links the user may have planted."""
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            os.mkdir(".ssh", 0o700, dir_fd=home_fd)
        except FileExistsError:
            pass
        ssh_fd = os.open(".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home_fd)
    finally:
        os.close(home_fd)
    try:
        os.fchown(ssh_fd, uid, gid)
        os.fchmod(ssh_fd, 0o700)
        tmp = f".authorized_keys.minicl-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=ssh_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), 0o600)
        os.rename(tmp, "authorized_keys", src_dir_fd=ssh_fd, dst_dir_fd=ssh_fd)
    finally:
        os.close(ssh_fd)


class ApplyError(MiniclError):
    pass


def apply_plan(plan, registry, run=subprocess.run):
    """Carry out one plan. Raises ApplyError with the failing command's message."""
    if plan.present and plan.record:
        registry.record(plan.name, plan.uid)  # before useradd: an account minicl made is always known
    for argv, stdin in plan.commands:
        result = run(argv, input=stdin, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # argv never holds a secret (hashes go through stdin); stderr is the tool's own message.
            raise ApplyError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.returncode}")
    if plan.keys_text is not None:
        write_keys_file(plan.home, plan.uid, plan.gid, plan.keys_text)


def usable_admins(users, plans_by_name, converged=False):
    """Cluster users who can log in with a key and use sudo with a password.

    ``plans_by_name``: plans from plan_all. With ``converged``, a user whose account still has
    anything to do (its changes failed) does not count: only what is really on the host does.
    """
    admins = []
    for name, spec in sorted(users.items()):
        plan = plans_by_name.get(name)
        if plan is not None and (plan.conflict or (converged and plan.changes)):
            continue
        keys = [spec["ssh_key"]] if isinstance(spec["ssh_key"], str) else spec["ssh_key"]
        if keys and spec["passwd"].lstrip("!") not in ("", "*") and not spec["passwd"].startswith("!"):
            admins.append(name)
    return admins
