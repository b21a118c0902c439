"""Users and access, verified as a person would: ssh logins with keys from another test host,
password logins refused, sudo with the user's password, removal and return of a user,
a clashing local account left alone, the lockout guard, and a broken sshd config never installed.
"""

import json
import subprocess

import pytest

from minicl.accounts import key_fingerprint

from .conftest import changed_states, cluster_config, dump, salt_call

ALPHA = ["198.51.100.31/24", "2001:db8:100::31/64"]
PASSWORDS = {"alice": "alice-correct-horse", "bob": "bob-battery-staple", "carol": "carol-pw"}
CAROL_STATE = (
    "getent passwd carol; getent shadow carol; id carol; cat /home/carol/.ssh/authorized_keys; "
    "stat -c '%U %a' /home/carol /home/carol/.ssh"
)
KEY_OWNERS = {
    "alice-laptop": "alice",
    "alice-desktop": "alice",
    "bob": "bob",
    "carol": "carol",
    "stranger": None,
}


def crypt(password):
    return subprocess.run(
        ["openssl", "passwd", "-6", password], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """{key name: (private text, public line)} of fresh ed25519 keys."""
    directory = tmp_path_factory.mktemp("userkeys")
    found = {}
    for name in KEY_OWNERS:
        path = directory / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
        )
        found[name] = (path.read_text(), path.with_suffix(".pub").read_text().strip())
    return found


@pytest.fixture(scope="module")
def hashes():
    return {user: crypt(password) for user, password in PASSWORDS.items()}


def users_config(keys, hashes, names=("alice", "bob", "carol")):
    users = {}
    for uid, name in enumerate(("alice", "bob", "carol"), start=3001):
        if name in names:
            own = [keys[k][1] for k, owner in KEY_OWNERS.items() if owner == name]
            users[name] = {"uid": uid, "passwd": hashes[name], "ssh_key": own if len(own) > 1 else own[0]}
    return users


def config_with(keys, hashes, names=("alice", "bob", "carol")):
    ips = [a.split("/")[0] for a in ALPHA]
    return dump(
        cluster_config({"alpha": {"ip": ips, "roles": ["base"]}}, users=users_config(keys, hashes, names))
    )


@pytest.fixture(scope="module")
def workstation(lab, keys):
    ws = lab.add_host("ws", ["203.0.113.50/24"])
    ws.run("ip addr add 198.51.100.50/24 dev eth0")
    for name, (private, _) in keys.items():
        ws.write(f"/root/keys/{name}", private, 0o600)
    ws.write("/root/askpass", "#!/bin/sh\ncat /root/password\n", 0o755)
    return ws


@pytest.fixture(scope="module")
def alpha(lab, git_server, deploy_key, keys, hashes):
    host = lab.add_host("alpha", ALPHA)
    # A local account that minicl did not create, with the name of a cluster user.
    host.run(
        "useradd -m -u 4000 -s /bin/sh carol && echo 'carol:local-pw' | chpasswd && "
        "mkdir -m 700 /home/carol/.ssh && echo 'ssh-ed25519 AAAA local' > /home/carol/.ssh/authorized_keys"
    )
    host.carol_before = host.run(CAROL_STATE).stdout
    # sshd runs from boot with Debian's defaults (password login on) until minicl changes them.
    git_server.commit({"cluster.json": config_with(keys, hashes), "deploy.key": deploy_key[0]}, "users")
    host.write("/root/deploy.key", deploy_key[0], 0o600)
    result = host.run(
        ["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
        check=False,
        timeout=600,
    )
    host.bootstrap_output = result.stdout + result.stderr
    return host


def ssh(ws, user, key=None, command="id -un", password=None):
    opts = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
    ]
    if password is None:
        opts += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", f"/root/keys/{key}"]
        env = None
    else:
        ws.write("/root/password", password + "\n", 0o600)
        opts += [
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
        env = {"SSH_ASKPASS": "/root/askpass", "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": "none"}
    return ws.run(
        ["setsid", "-w", "ssh", *opts, f"{user}@198.51.100.31", command], check=False, env=env, timeout=60
    )


def assert_no_secrets(text, keys, hashes):
    for value in hashes.values():
        assert value not in text
        assert value.split("$")[3] not in text  # not even the hash part
    for _, public in keys.values():
        assert public.split()[1] not in text


def test_bootstrap_reports_the_clash_and_converges_the_others(alpha, keys, hashes):
    out = alpha.bootstrap_output
    assert "carol: a local account carol (uid 4000) exists that minicl did not create" in out
    assert_no_secrets(out, keys, hashes)
    assert alpha.run(CAROL_STATE).stdout == alpha.carol_before  # account, password, groups, keys
    assert alpha.run("getent passwd alice").stdout.strip() == "alice:x:3001:3001::/home/alice:/bin/bash"
    assert alpha.run("id -nG alice").stdout.split() == ["alice", "sudo"]
    assert alpha.run("getent shadow alice").stdout.split(":")[1] == hashes["alice"]
    assert alpha.run("stat -c '%U %a' /home/alice/.ssh /home/alice/.ssh/authorized_keys").stdout.split("\n")[
        :2
    ] == ["alice 700", "alice 600"]


@pytest.mark.parametrize("key, user", [("alice-laptop", "alice"), ("alice-desktop", "alice"), ("bob", "bob")])
def test_users_log_in_with_their_keys(alpha, workstation, key, user):
    result = ssh(workstation, user, key)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == user


@pytest.mark.parametrize("key, user", [("stranger", "alice"), ("bob", "alice"), ("carol", "carol")])
def test_keys_not_in_the_repo_are_refused(alpha, workstation, key, user):
    result = ssh(workstation, user, key)
    assert result.returncode == 255 and "Permission denied" in result.stderr


def test_a_key_added_by_hand_is_removed_on_the_next_run(alpha, workstation, keys):
    alpha.run(f"echo '{keys['stranger'][1]}' >> /home/alice/.ssh/authorized_keys")
    assert ssh(workstation, "alice", "stranger").returncode == 0  # the probe can succeed
    code, data, result = salt_call(alpha, "state.apply")
    assert changed_states(data)["minicl_users_|-minicl-users_|-cluster users_|-managed"]["alice"] == {
        "authorized_keys": "2 key(s): "
        + ", ".join(key_fingerprint(keys[k][1]) for k in ("alice-laptop", "alice-desktop"))
    }
    assert ssh(workstation, "alice", "stranger").returncode == 255


def test_password_login_is_refused_even_with_the_right_password(alpha, workstation):
    result = ssh(workstation, "alice", password=PASSWORDS["alice"])
    assert result.returncode == 255 and "Permission denied (publickey)" in result.stderr
    assert alpha.read("/etc/ssh/sshd_config.d/00-minicl.conf").count("PasswordAuthentication no") == 1


def test_sudo_asks_for_the_users_password(alpha, workstation):
    ok = ssh(workstation, "alice", "alice-laptop", f"echo '{PASSWORDS['alice']}' | sudo -S -k -p '' id -un")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "root"
    wrong = ssh(workstation, "alice", "alice-laptop", "echo wrong-password | sudo -S -k -p '' true")
    assert wrong.returncode == 1 and "incorrect password attempt" in wrong.stderr


def test_second_run_changes_nothing_and_shows_no_secret(alpha, keys, hashes):
    code, data, result = salt_call(alpha, "state.apply")
    assert code != 0  # carol's clash keeps failing, loudly, every run
    assert changed_states(data) == {}
    failed = {k: v for k, v in data["local"].items() if v["result"] is False}
    assert list(failed) == ["minicl_users_|-minicl-users_|-cluster users_|-managed"]
    assert_no_secrets(result.stdout + result.stderr, keys, hashes)


def test_removed_user_loses_access_keeps_home_and_comes_back(alpha, workstation, git_server, keys, hashes):
    alpha.run("su bob -c 'echo precious > /home/bob/notes.txt'")
    git_server.commit({"cluster.json": config_with(keys, hashes, names=("alice", "carol"))}, "bob leaves")

    code, planned, result = salt_call(alpha, "state.apply", "test=True")
    users_state = planned["local"]["minicl_users_|-minicl-users_|-cluster users_|-managed"]
    assert users_state["result"] is False  # carol's clash is known in test mode too
    assert users_state["changes"]["bob"]["account"].startswith("locked")
    assert ssh(workstation, "bob", "bob").returncode == 0  # test=True changed nothing

    salt_call(alpha, "state.apply")
    assert ssh(workstation, "bob", "bob").returncode == 255
    assert alpha.read("/home/bob/notes.txt") == "precious\n"
    assert alpha.run("getent passwd bob").stdout.strip().endswith(":/usr/sbin/nologin")
    assert alpha.run("id -nG bob").stdout.split() == ["bob"]
    assert alpha.run("getent shadow bob").stdout.split(":")[1].startswith("!")

    git_server.commit({"cluster.json": config_with(keys, hashes)}, "bob is back")
    code, data, result = salt_call(alpha, "state.apply")
    assert (
        changed_states(data)["minicl_users_|-minicl-users_|-cluster users_|-managed"]["bob"]["password"]
        == "unlocked (hash hidden)"
    )
    assert ssh(workstation, "bob", "bob").returncode == 0
    assert alpha.run("getent shadow bob").stdout.split(":")[1] == hashes["bob"]
    assert_no_secrets(result.stdout, keys, hashes)


def test_lockout_guard_keeps_password_login(alpha, workstation, git_server, keys, hashes):
    nobody_usable = json.loads(config_with(keys, hashes, names=("alice", "carol")))
    nobody_usable["users"]["alice"]["passwd"] = "!"  # key, but no sudo password; carol clashes
    git_server.commit({"cluster.json": dump(nobody_usable)}, "nobody left who can sudo")
    code, data, result = salt_call(alpha, "state.apply")
    sshd_state = data["local"]["minicl_sshd_|-minicl-sshd_|-/etc/ssh/sshd_config.d/00-minicl.conf_|-hardened"]
    assert sshd_state["result"] is False
    assert (
        "Refusing to disable password login: no cluster user could log in with a key and use sudo"
        in sshd_state["comment"]
    )
    assert "PasswordAuthentication" not in alpha.read("/etc/ssh/sshd_config.d/00-minicl.conf").replace(
        "# Password login is NOT disabled", ""
    )
    git_server.commit({"cluster.json": config_with(keys, hashes)}, "everyone back")
    salt_call(alpha, "state.apply")
    assert "PasswordAuthentication no" in alpha.read("/etc/ssh/sshd_config.d/00-minicl.conf")


def test_password_probe_can_succeed(alpha, workstation):
    """The refusal above means something: with password login on, the same probe gets in."""
    alpha.run("mv /etc/ssh/sshd_config.d/00-minicl.conf /root/ && systemctl reload ssh")
    try:
        result = ssh(workstation, "alice", password=PASSWORDS["alice"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "alice"
    finally:
        alpha.run("mv /root/00-minicl.conf /etc/ssh/sshd_config.d/ && systemctl reload ssh")


def test_broken_sshd_config_is_never_installed(alpha):
    alpha.run(
        "rm /etc/ssh/sshd_config.d/00-minicl.conf && echo 'NoSuchOption yes' > /etc/ssh/sshd_config.d/10-broken.conf"
    )
    try:
        code, data, _ = salt_call(alpha, "state.apply")
        sshd_state = data["local"][
            "minicl_sshd_|-minicl-sshd_|-/etc/ssh/sshd_config.d/00-minicl.conf_|-hardened"
        ]
        assert sshd_state["result"] is False
        assert "sshd -t rejects the configuration" in sshd_state["comment"]
        assert "NoSuchOption" in sshd_state["comment"]
        assert not alpha.exists("/etc/ssh/sshd_config.d/00-minicl.conf")
    finally:
        alpha.run("rm -f /etc/ssh/sshd_config.d/10-broken.conf")
    code, data, _ = salt_call(alpha, "state.apply")
    assert alpha.exists("/etc/ssh/sshd_config.d/00-minicl.conf")
