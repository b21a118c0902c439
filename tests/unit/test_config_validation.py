"""Every rule of the cluster.json validator (minicl.config), failing and passing.

Each failing case asserts the exact problem lines, ``cluster.json: <dotted.path>: <message>``.
"""

import base64
import json
import re
import shutil
import subprocess

import pytest

from minicl import config
from minicl.schema import schema

# Real crypt(3) hashes of "pw": openssl passwd -6/-5/-1 -salt abcdefgh pw, libxcrypt for $y$ and $2b$.
SHA512 = "$6$abcdefgh$KQeXafAQAaOoKTevphVU215RvJdgzyfASRasIOuh12hO8u0r1bGW92ZnTmC9IjsiQ8VPiTXBiZF49dFL1U4wX/"
SHA256 = "$5$abcdefgh$ijtOJ//yvc/9bq1g0llFn9dB688BwBDRD90DlKKSKE1"
YESCRYPT = "$y$j9T$3nFZ6C8cO3Xv0gIFeUQn1.$jutSFqL6m9QoLxaD5TstKFMQcifzTi10uNRLA86x0rC"
BCRYPT = "$2b$12$0QfFWnsH8QsmuHpPPdw.3OFOjwJlCtI5i9XSVvN406l.wEJFw7NNS"
MD5 = "$1$abcdefgh$IQtUouv7y7Q9dRWkQEPCc."

ED25519_ALICE = "AAAAC3NzaC1lZDI1NTE5AAAAIDXiN8smzPToGFR7LTsRBOsGaNV+5wJWTUJ76mG/LuzV"
ED25519_BOB = "AAAAC3NzaC1lZDI1NTE5AAAAIDN2KgJLrXZ347sa3bJGeAeCVfjIn1/S8QcLKX5RrGbP"

TOP_FIELDS = "acme, admin_email, apps, ca_url, domain, firewall, hosts, logging, monitoring, packages, roles, rollout, schedule, self_update, smtp, users"
KEY_TYPES = (
    "ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, "
    "sk-ecdsa-sha2-nistp256@openssh.com, sk-ssh-ed25519@openssh.com, ssh-ed25519, ssh-rsa"
)
USER_NAME_RULE = (
    "is not a valid user name (lower-case letters, digits, _ and -, starting with a letter or _, at most 32)"
)
HOST_NAME_RULE = "is not a valid host name (one DNS label: a-z, 0-9 and -, at most 63)"
DNS_NAME_RULE = "is not a valid DNS name (lower-case labels a-z, 0-9, - separated by dots)"
NOT_A_HASH = "is not a crypt hash ($y$, $6$, $5$, $2b$, ...) or a lock marker (! or *) (value hidden)"
WEAK_MD5 = "is a weak MD5-crypt hash: use yescrypt ($y$) or sha512crypt ($6$) (value hidden)"
NO_BASE = 'must contain "base" (minicl\'s own role, on every host)'


def renamed(mapping, old, new):
    """``mapping`` with key ``old`` renamed to ``new``, keeping the order."""
    return {(new if key == old else key): value for key, value in mapping.items()}


def test_example_is_valid(example_data, problems):
    assert problems(example_data) == []
    assert problems(example_data, repo_files=[]) == []


# --- unknown fields (additionalProperties: false) -----------------------------------------


@pytest.mark.parametrize(
    "where, field, expected",
    [
        ((), "extra", f"cluster.json: extra: unknown field (allowed here: {TOP_FIELDS})"),
        (
            ("smtp",),
            "tls",
            "cluster.json: smtp.tls: unknown field (allowed here: password, port, relay, username)",
        ),
        (
            ("users", "bob"),
            "shell",
            "cluster.json: users.bob.shell: unknown field (allowed here: passwd, ssh_key, uid)",
        ),
        (
            ("hosts", "alpha"),
            "os",
            "cluster.json: hosts.alpha.os: unknown field (allowed here: ip, packages, public_ports, roles, trusted_sources)",
        ),
    ],
)
def test_unknown_field_is_reported(example_data, problems, where, field, expected):
    target = example_data
    for key in where:
        target = target[key]
    target[field] = "x"
    assert problems(example_data) == [expected]


def test_every_unknown_field_is_reported_once(example_data, problems):
    example_data["zeta"] = 1
    example_data["alpha"] = 2
    assert problems(example_data) == [
        f"cluster.json: alpha: unknown field (allowed here: {TOP_FIELDS})",
        f"cluster.json: zeta: unknown field (allowed here: {TOP_FIELDS})",
    ]


def test_misspelled_password_field_does_not_show_its_value(example_data, problems):
    example_data["users"]["bob"]["password"] = example_data["users"]["bob"].pop("passwd")
    found = problems(example_data)
    assert found == [
        'cluster.json: users.bob: missing required field "passwd"',
        "cluster.json: users.bob.password: unknown field (allowed here: passwd, ssh_key, uid)",
    ]
    assert "$6$bobsalt" not in "\n".join(found)


def test_every_allowed_field_is_accepted(example_with_apps, problems):
    # The example uses every field the schema knows, including the optional ca_url and smtp.port,
    # except "roles" (settings of a role need that role's folder in a config repo) and those of
    # minicl's own updates, which need a pin (tests/unit/test_selfupdate.py has them), and
    # "packages", which needs the repository's keys in a config repo (tests/unit/test_packages.py),
    # and the front's (its acme section and haproxy app: tests/unit/test_haproxy.py).
    assert set(example_with_apps) == set(TOP_FIELDS.split(", ")) - {
        "roles",
        "rollout",
        "self_update",
        "packages",
        "logging",  # needs the logging CA's files in a config repo (tests/unit/test_logging.py)
        "acme",
    }
    assert set(example_with_apps["smtp"]) == {"relay", "port", "username", "password"}
    # nginx's keys (the example has no site: its files would have to be in the repo)
    example_with_apps["apps"]["web"] = {"type": "nginx", "hosts": ["watch"], "public": True, "sites": {
        "www": {"server_names": ["www.example.org"], "root": "sites/www",
                "tls": {"certificate": "tls/www.crt", "key": "tls/www.key"}},
        "shop": {"server_names": ["shop.example.org"], "proxy": ["alpha:8080", "beta:8080"]}}}  # fmt: skip
    keys = {key for app in example_with_apps["apps"].values() for key in app}
    front = {"address", "domains", "backends", "routes", "default"}
    assert keys == set(schema()["$defs"]["app"]["properties"]) - front
    assert problems(example_with_apps) == []


# --- required fields ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, field, expected",
    [
        ((), "domain", 'cluster.json: missing required field "domain"'),
        ((), "admin_email", 'cluster.json: missing required field "admin_email"'),
        ((), "smtp", 'cluster.json: missing required field "smtp"'),
        ((), "users", 'cluster.json: missing required field "users"'),
        ((), "hosts", 'cluster.json: missing required field "hosts"'),
        (("smtp",), "relay", 'cluster.json: smtp: missing required field "relay"'),
        (("smtp",), "username", 'cluster.json: smtp: missing required field "username"'),
        (("smtp",), "password", 'cluster.json: smtp: missing required field "password"'),
        (("users", "bob"), "uid", 'cluster.json: users.bob: missing required field "uid"'),
        (("users", "bob"), "passwd", 'cluster.json: users.bob: missing required field "passwd"'),
        (("users", "bob"), "ssh_key", 'cluster.json: users.bob: missing required field "ssh_key"'),
        (("hosts", "alpha"), "ip", 'cluster.json: hosts.alpha: missing required field "ip"'),
        (("hosts", "alpha"), "roles", 'cluster.json: hosts.alpha: missing required field "roles"'),
    ],
)
def test_missing_required_field(example_data, problems, where, field, expected):
    target = example_data
    for key in where:
        target = target[key]
    del target[field]
    assert problems(example_data) == [expected]


@pytest.mark.parametrize("where, field", [((), "ca_url"), (("smtp",), "port")])
def test_optional_field_may_be_left_out(example_data, problems, where, field):
    target = example_data
    for key in where:
        target = target[key]
    del target[field]
    assert problems(example_data) == []


def test_all_missing_top_level_fields_are_reported(problems):
    assert problems({}) == [
        'cluster.json: missing required field "admin_email"',
        'cluster.json: missing required field "domain"',
        'cluster.json: missing required field "hosts"',
        'cluster.json: missing required field "smtp"',
        'cluster.json: missing required field "users"',
    ]


@pytest.mark.parametrize(
    "data, expected",
    [
        ([], "cluster.json: must be an object, not a list"),
        (None, "cluster.json: must be an object, not null"),
    ],
)
def test_top_level_must_be_an_object(problems, data, expected):
    assert problems(data) == [expected]


# --- types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("users", "bob", "uid"), "2002", "cluster.json: users.bob.uid: must be an integer, not a string"),
        (("users", "bob", "uid"), True, "cluster.json: users.bob.uid: must be an integer, not true or false"),
        (("users", "bob", "uid"), 2002.5, "cluster.json: users.bob.uid: must be an integer, not a number"),
        (
            ("users", "bob", "ssh_key"),
            5,
            "cluster.json: users.bob.ssh_key: must be a string or a list of strings, not 5",
        ),
        (
            ("users", "bob", "ssh_key"),
            [5],
            "cluster.json: users.bob.ssh_key[0]: must be a string, not an integer",
        ),
        (
            ("hosts", "alpha", "ip"),
            5,
            "cluster.json: hosts.alpha.ip: must be a string or a list of strings, not 5",
        ),
        (
            ("hosts", "alpha", "ip"),
            ["198.51.100.11", None],
            "cluster.json: hosts.alpha.ip[1]: must be a string, not null",
        ),
        (
            ("hosts", "alpha", "roles"),
            "base",
            "cluster.json: hosts.alpha.roles: must be a list, not a string",
        ),
        (
            ("hosts", "alpha", "roles"),
            ["base", 7],
            "cluster.json: hosts.alpha.roles[1]: must be a string, not an integer",
        ),
        (("domain",), 5, "cluster.json: domain: must be a string, not an integer"),
        (("smtp",), "mail.example.org", "cluster.json: smtp: must be an object, not a string"),
        (("users",), [], "cluster.json: users: must be an object, not a list"),
        (("users", "bob"), 2002, "cluster.json: users.bob: must be an object, not an integer"),
        (("hosts", "alpha"), "198.51.100.11", "cluster.json: hosts.alpha: must be an object, not a string"),
        (("smtp", "port"), "587", "cluster.json: smtp.port: must be an integer, not a string"),
    ],
)
def test_wrong_type(example_data, problems, path, value, expected):
    target = example_data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert problems(example_data) == [expected]


@pytest.mark.parametrize("value", [12345, ["secret-smtp-pw"], {"value": "secret-smtp-pw"}])
def test_smtp_password_of_wrong_type_is_not_shown(example_data, problems, value):
    example_data["smtp"]["password"] = value
    found = problems(example_data)
    assert len(found) == 1
    assert found[0].startswith("cluster.json: smtp.password: must be a string, not ")
    assert json.dumps(value) not in found[0]
    assert "12345" not in found[0]
    assert "secret-smtp-pw" not in found[0]


@pytest.mark.parametrize("value", [12345, ["$6$secretsalt$abc"], {"hash": "$6$secretsalt$abc"}])
def test_passwd_of_wrong_type_is_not_shown(example_data, problems, value):
    example_data["users"]["bob"]["passwd"] = value
    found = problems(example_data)
    assert len(found) == 1
    assert found[0].startswith("cluster.json: users.bob.passwd: must be a string, not ")
    assert "12345" not in found[0]
    assert "secretsalt" not in found[0]


def test_smtp_password_string_is_accepted_and_empty_is_not(example_data, problems):
    example_data["smtp"]["password"] = "x"
    assert problems(example_data) == []
    example_data["smtp"]["password"] = ""
    assert problems(example_data) == ["cluster.json: smtp.password: must not be empty"]


# --- empty values -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["admin_email", "domain", "ca_url"])
def test_empty_top_level_string(example_data, problems, field):
    example_data[field] = ""
    assert problems(example_data) == [f"cluster.json: {field}: must not be empty"]


@pytest.mark.parametrize("field", ["username", "password"])
def test_empty_smtp_string(example_data, problems, field):
    example_data["smtp"][field] = ""
    assert problems(example_data) == [f"cluster.json: smtp.{field}: must not be empty"]


def test_empty_hosts_object(example_data, problems):
    example_data["hosts"] = {}
    assert problems(example_data) == ["cluster.json: hosts: must have at least one entry"]


def test_one_host_is_enough(example_data, problems):
    example_data["hosts"] = {"alpha": example_data["hosts"]["alpha"]}
    assert problems(example_data) == []


def test_empty_ip_list(example_data, problems):
    example_data["hosts"]["alpha"]["ip"] = []
    assert problems(example_data) == ["cluster.json: hosts.alpha.ip: must list at least one entry"]


# --- smtp ---------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_smtp_port_out_of_range(example_data, problems, port):
    example_data["smtp"]["port"] = port
    assert problems(example_data) == [f"cluster.json: smtp.port: {port} is out of range (1-65535)"]


@pytest.mark.parametrize("port", [1, 25, 465, 587, 2525, 65535])
def test_smtp_port_in_range(example_data, problems, port):
    example_data["smtp"]["port"] = port
    assert problems(example_data) == []


def test_smtp_port_defaults_to_587(example_data):
    del example_data["smtp"]["port"]
    cluster = config.load_cluster(json.dumps(example_data))
    assert cluster.smtp_port() == 587 == config.DEFAULT_SMTP_PORT


@pytest.mark.parametrize("relay", ["mail.example.org", "smtp", "smtp-1.mail.example.co.uk"])
def test_smtp_relay_accepted(example_data, problems, relay):
    example_data["smtp"]["relay"] = relay
    assert problems(example_data) == []


@pytest.mark.parametrize("relay", ["198.51.100.25", "2001:db8::25"])
def test_smtp_relay_must_be_a_name_for_tls(example_data, problems, relay):
    example_data["smtp"]["relay"] = relay
    assert problems(example_data) == [
        f'cluster.json: smtp.relay: "{relay}" is an address: give the relay\'s host name, the name on its '
        "TLS certificate (Postfix checks the certificate against it)"
    ]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("username", "user name", '"user name" must not contain spaces, line breaks or ":"'),
        ("username", "user:x", '"user:x" must not contain spaces, line breaks or ":"'),
        ("password", " secret", "must not begin or end with spaces or contain line breaks (value hidden)"),
        ("password", "sec\nret", "must not begin or end with spaces or contain line breaks (value hidden)"),
    ],
)
def test_smtp_credentials_fit_the_password_map(example_data, problems, field, value, message):
    example_data["smtp"][field] = value
    found = problems(example_data)
    assert found == [f"cluster.json: smtp.{field}: {message}"]
    if field == "password":
        assert "secret" not in found[0] and "sec" not in found[0]


@pytest.mark.parametrize(
    "relay, expected",
    [
        ("bad host!", 'cluster.json: smtp.relay: "bad host!" is not a host name'),
        ("mail.example.org.", 'cluster.json: smtp.relay: "mail.example.org." is not a host name'),
        ("mail_relay.example.org", 'cluster.json: smtp.relay: "mail_relay.example.org" is not a host name'),
        (" mail.example.org", 'cluster.json: smtp.relay: " mail.example.org" is not a host name'),
        ("smtp://mail.example.org", 'cluster.json: smtp.relay: "smtp://mail.example.org" is not a host name'),
        ("   ", "cluster.json: smtp.relay: must not be empty"),
        ("\t\n", "cluster.json: smtp.relay: must not be empty"),
        ("", "cluster.json: smtp.relay: must not be empty"),  # schema and semantics agree: reported once
    ],
)
def test_smtp_relay_rejected(example_data, problems, relay, expected):
    example_data["smtp"]["relay"] = relay
    assert problems(example_data) == [expected]


# --- uids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", [1000, 1001, 2002, 60000, 65533, 65535, 100000, 2**32 - 2])
def test_uid_accepted(example_data, problems, uid):
    example_data["users"]["bob"]["uid"] = uid
    assert problems(example_data) == []


@pytest.mark.parametrize("uid", [500, 0, 999, -1])
def test_uid_in_system_range(example_data, problems, uid):
    example_data["users"]["bob"]["uid"] = uid
    assert problems(example_data) == [
        f"cluster.json: users.bob.uid: {uid} is in the system range (must be >= 1000)"
    ]


def test_uid_500_message_exactly(example_data, problems):
    example_data["users"]["bob"]["uid"] = 500
    assert problems(example_data) == [
        "cluster.json: users.bob.uid: 500 is in the system range (must be >= 1000)"
    ]


def test_uid_of_nobody(example_data, problems):
    example_data["users"]["bob"]["uid"] = 65534
    assert problems(example_data) == [
        "cluster.json: users.bob.uid: 65534 is the uid of nobody (choose another)"
    ]


@pytest.mark.parametrize("uid", [2**32 - 1, 2**32, 2**40])
def test_uid_too_large(example_data, problems, uid):
    example_data["users"]["bob"]["uid"] = uid
    assert problems(example_data) == [
        f"cluster.json: users.bob.uid: {uid} is too large (must be < 4294967295)"
    ]


def test_duplicate_uid(example_data, problems):
    example_data["users"]["bob"]["uid"] = 2001
    assert problems(example_data) == ["cluster.json: users.bob.uid: 2001 is already the uid of user alice"]


def test_duplicate_uid_names_the_first_owner(example_data, problems):
    carol = dict(example_data["users"]["bob"], uid=2001, ssh_key="ssh-ed25519 " + ED25519_BOB)
    example_data["users"]["carol"] = carol
    example_data["users"]["bob"]["uid"] = 2001
    assert problems(example_data) == [
        "cluster.json: users.bob.uid: 2001 is already the uid of user alice",
        "cluster.json: users.carol.uid: 2001 is already the uid of user alice",
    ]


def test_distinct_uids_accepted(example_data, problems):
    example_data["users"]["carol"] = dict(example_data["users"]["bob"], uid=2003)
    assert problems(example_data) == []


@pytest.mark.parametrize("uid", [500.0, 65534.0, 2001.0])
def test_float_uid_is_checked_like_an_integer(example_data, problems, uid):
    example_data["users"]["bob"]["uid"] = uid
    assert problems(example_data) != []


def test_float_smtp_port_is_rejected_or_normalised(example_data, problems):
    example_data["smtp"]["port"] = 587.0
    found = problems(example_data)
    assert found != [] or type(config.Cluster(example_data).smtp_port()) is int


# --- user names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["carol", "c", "a" * 32, "bob-smith", "b0b_x", "x1-"])
def test_valid_user_name(example_data, problems, name):
    example_data["users"] = renamed(example_data["users"], "bob", name)
    assert problems(example_data) == []


def key_in_path(name):
    """Names that are not plain (a-z, 0-9, _, -) are quoted in a problem's path."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def test_names_with_newlines_stay_on_one_line(example_data, problems):
    example_data["users"] = renamed(example_data["users"], "bob", "bob\nroot")
    example_data["hosts"]["al\npha"] = example_data["hosts"].pop("alpha")
    found = problems(example_data)
    assert len(found) == 2 and all("\n" not in p for p in found)
    assert 'cluster.json: users."bob\\nroot": "bob\\nroot" is not a valid user name' in found[1]


@pytest.mark.parametrize(
    "name", ["Bob", "bOb", "1bob", "9", "-bob", "a" * 33, "bob smith", "bob.smith", "bob@x", "", "böb"]
)
def test_invalid_user_name(example_data, problems, name):
    example_data["users"] = renamed(example_data["users"], "bob", name)
    assert problems(example_data) == [f'cluster.json: users.{key_in_path(name)}: "{name}" {USER_NAME_RULE}']


@pytest.mark.parametrize(
    "name",
    [
        "root",
        "daemon",
        "sudo",
        "nobody",
        "www-data",
        "sshd",
        "admin",
        "systemd-x",
        "systemd-network",
        "_apt",
        "_x",
    ],
)
def test_system_user_name(example_data, problems, name):
    example_data["users"] = renamed(example_data["users"], "bob", name)
    assert problems(example_data) == [
        f'cluster.json: users.{name}: "{name}" is the name of a system account or group (choose another name)'
    ]


# --- passwd -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "passwd",
    [
        SHA512,
        SHA256,
        YESCRYPT,
        BCRYPT,
        "$2a$" + BCRYPT[4:],
        "$2y$" + BCRYPT[4:],
        "$6$rounds=5000$" + SHA512[3:],
        "!",
        "*",
        "!" + SHA512,
        "!" + YESCRYPT,
    ],
    ids=[
        "sha512",
        "sha256",
        "yescrypt",
        "bcrypt-2b",
        "bcrypt-2a",
        "bcrypt-2y",
        "sha512-rounds",
        "lock-!",
        "lock-*",
        "locked-sha512",
        "locked-yescrypt",
    ],
)
def test_passwd_accepted(example_data, problems, passwd):
    example_data["users"]["bob"]["passwd"] = passwd
    assert problems(example_data) == []


@pytest.mark.parametrize("scheme", ["-6", "-5"])
def test_passwd_made_by_openssl_is_accepted(example_data, problems, scheme):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    made = subprocess.run(
        ["openssl", "passwd", scheme, "-salt", "abcdefgh", "pw"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert made.startswith(f"${scheme[1]}$abcdefgh$")
    example_data["users"]["bob"]["passwd"] = made
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "passwd, message",
    [
        ("hunter2-plaintext", NOT_A_HASH),
        ("correct horse battery staple", NOT_A_HASH),
        ("!hunter2-plaintext", NOT_A_HASH),
        ("", NOT_A_HASH),
        (MD5, WEAK_MD5),
        ("!" + MD5, WEAK_MD5),
        ("$md5$abcdefgh$IQtUouv7y7Q9dRWkQEPCc.", WEAK_MD5),
        (
            "$3$$8846f7eaee8fb117ad06bdd830b7586c",
            "is a weak NT hash: use yescrypt ($y$) or sha512crypt ($6$) (value hidden)",
        ),
        (
            "$sha1$40000$abcdefgh$Qx4VQ6mC8a8QuQJX3hZ6r0ZqQq1x",
            "is a weak SHA1-crypt hash: use yescrypt ($y$) or sha512crypt ($6$) (value hidden)",
        ),
        (
            "$9$abcdefgh$notarealschemevalue",
            "has an unknown crypt scheme (use $y$, $6$, $5$, $2b$, ...) (value hidden)",
        ),
        (
            "$argon2id$v=19$m=65536$secretvalue",
            "has an unknown crypt scheme (use $y$, $6$, $5$, $2b$, ...) (value hidden)",
        ),
        ("$6$abcdefgh$tooShortHashValue", "is not a well-formed sha512crypt hash (value hidden)"),
        (SHA512[:-1], "is not a well-formed sha512crypt hash (value hidden)"),
        (SHA512 + "x", "is not a well-formed sha512crypt hash (value hidden)"),
        ("$6$abc!defg$" + SHA512[12:], "is not a well-formed sha512crypt hash (value hidden)"),
        ("$6$" + "s" * 17 + "$" + SHA512[12:], "is not a well-formed sha512crypt hash (value hidden)"),
        (SHA256[:-2], "is not a well-formed sha256crypt hash (value hidden)"),
        (YESCRYPT[:-3], "is not a well-formed yescrypt hash (value hidden)"),
        (BCRYPT[:-1], "is not a well-formed bcrypt hash (value hidden)"),
    ],
    ids=[
        "plaintext",
        "passphrase",
        "locked-plaintext",
        "empty",
        "md5",
        "locked-md5",
        "md5-sun",
        "nthash",
        "sha1",
        "unknown-9",
        "argon2",
        "sha512-short",
        "sha512-minus-1",
        "sha512-plus-1",
        "sha512-bad-salt",
        "sha512-long-salt",
        "sha256-short",
        "yescrypt-short",
        "bcrypt-short",
    ],
)
def test_passwd_rejected_without_showing_it(example_data, problems, passwd, message):
    example_data["users"]["bob"]["passwd"] = passwd
    found = problems(example_data)
    assert found == [f"cluster.json: users.bob.passwd: {message}"]
    if passwd:
        assert passwd not in found[0]
        # No telling piece of it either (the scheme name may be quoted, the rest not).
        pieces = passwd.split("$")
        for piece in pieces[:1] + pieces[2:]:
            if len(piece) >= 6:
                assert piece not in found[0]
    # Nor in the ConfigError that load_cluster raises.
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(json.dumps(example_data))
    if passwd:
        assert passwd not in str(caught.value)


def test_passwd_problems_of_several_users_hide_every_value(example_data, problems):
    example_data["users"]["alice"]["passwd"] = "alice-secret-pw"
    example_data["users"]["bob"]["passwd"] = MD5
    found = "\n".join(problems(example_data))
    assert found == (
        f"cluster.json: users.alice.passwd: {NOT_A_HASH}\ncluster.json: users.bob.passwd: {WEAK_MD5}"
    )
    assert "alice-secret-pw" not in found and MD5 not in found


# --- ssh keys -----------------------------------------------------------------------------


def test_ssh_key_as_string_and_as_list(example_data, problems):
    assert isinstance(example_data["users"]["bob"]["ssh_key"], str)
    assert isinstance(example_data["users"]["alice"]["ssh_key"], list)
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "key",
    [
        f"ssh-ed25519 {ED25519_BOB}",
        f"ssh-ed25519 {ED25519_BOB} bob@laptop with spaces in the comment",
        f"  ssh-ed25519   {ED25519_BOB}  ",
        [f"ssh-ed25519 {ED25519_BOB}"],
    ],
)
def test_ssh_key_ed25519_forms_accepted(example_data, problems, key):
    example_data["users"]["bob"]["ssh_key"] = key
    assert problems(example_data) == []


def test_real_ecdsa_and_rsa_keys_accepted(example_data, problems, ecdsa_key, rsa_key):
    assert ecdsa_key["public"].startswith("ecdsa-sha2-nistp256 ")
    assert rsa_key["public"].startswith("ssh-rsa ")
    example_data["users"]["bob"]["ssh_key"] = ecdsa_key["public"]
    example_data["users"]["alice"]["ssh_key"].append(rsa_key["public"])
    assert problems(example_data) == []


def test_ssh_key_empty_list(example_data, problems):
    example_data["users"]["bob"]["ssh_key"] = []
    assert problems(example_data) == ["cluster.json: users.bob.ssh_key: must list at least one entry"]


@pytest.mark.parametrize(
    "key, message",
    [
        (f"ssh-foo {ED25519_BOB}", f'has unknown key type "ssh-foo" (expected one of {KEY_TYPES})'),
        (f"ed25519 {ED25519_BOB}", f'has unknown key type "ed25519" (expected one of {KEY_TYPES})'),
        (
            f'from="10.0.0.1" ssh-ed25519 {ED25519_BOB}',
            f'has unknown key type "from="10.0.0.1"" (expected one of {KEY_TYPES})',
        ),
        (
            "ssh-ed25519 !!!notbase64!!! bob",
            "ssh-ed25519 key: the key data is not valid base64 of an OpenSSH key",
        ),
        ("ssh-ed25519 AAAA bob", "ssh-ed25519 key: the key data is not valid base64 of an OpenSSH key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "ssh-ed25519 key: the key data is truncated or damaged"),
        (f"ssh-rsa {ED25519_BOB}", 'ssh-rsa key: the key data is of type "ssh-ed25519"'),
        ("ssh-ed25519", "is not an OpenSSH public key (expected: TYPE BASE64 [COMMENT])"),
        ("", "is not an OpenSSH public key (expected: TYPE BASE64 [COMMENT])"),
        (
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP bob",
            "is a DSA key, which OpenSSH no longer accepts: use ssh-ed25519",
        ),
    ],
    ids=[
        "unknown-type",
        "type-without-prefix",
        "with-options",
        "base64-garbage",
        "too-short",
        "truncated",
        "declared-rsa-is-ed25519",
        "no-blob",
        "empty",
        "dsa",
    ],
)
def test_ssh_key_rejected(example_data, problems, key, message):
    example_data["users"]["bob"]["ssh_key"] = key
    assert problems(example_data) == [f"cluster.json: users.bob.ssh_key: {message}"]


def test_ssh_key_blob_of_another_type(example_data, problems, ecdsa_key):
    ecdsa_blob = ecdsa_key["public"].split()[1]
    example_data["users"]["bob"]["ssh_key"] = f"ssh-ed25519 {ecdsa_blob} bob"
    assert problems(example_data) == [
        'cluster.json: users.bob.ssh_key: ssh-ed25519 key: the key data is of type "ecdsa-sha2-nistp256"'
    ]


def test_ssh_key_problem_in_a_list_names_the_entry(example_data, problems):
    example_data["users"]["alice"]["ssh_key"].append("ssh-dss AAAAB3NzaC1kc3MAAACBAP old")
    assert problems(example_data) == [
        "cluster.json: users.alice.ssh_key[2]: is a DSA key, which OpenSSH no longer accepts: use ssh-ed25519"
    ]


def test_private_key_rejected_and_not_shown(example_data, problems, ecdsa_key):
    private = ecdsa_key["private"]
    assert "PRIVATE KEY" in private
    example_data["users"]["bob"]["ssh_key"] = private
    found = problems(example_data)
    assert found == [
        "cluster.json: users.bob.ssh_key: is a PRIVATE key: remove it from the repo now and use the .pub file (value hidden)"
    ]
    body = [line for line in private.splitlines() if line and "PRIVATE KEY" not in line]
    assert body
    for line in body:
        assert line not in found[0]


def test_private_key_in_a_list_rejected_and_not_shown(example_data, problems, ecdsa_key):
    example_data["users"]["alice"]["ssh_key"][1] = ecdsa_key["private"]
    found = problems(example_data)
    assert found == [
        "cluster.json: users.alice.ssh_key[1]: is a PRIVATE key: remove it from the repo now and use the .pub file (value hidden)"
    ]
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(json.dumps(example_data))
    assert ecdsa_key["private"].splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(
    "second", [f"ssh-ed25519 {ED25519_ALICE} alice-laptop", f"ssh-ed25519 {ED25519_ALICE} other-comment"]
)
def test_duplicate_key_within_a_user(example_data, problems, second):
    example_data["users"]["alice"]["ssh_key"][1] = second
    assert problems(example_data) == ["cluster.json: users.alice.ssh_key[1]: repeats a key listed before"]


def test_same_key_for_two_users_is_not_a_duplicate_within_a_user(example_data, problems):
    example_data["users"]["bob"]["ssh_key"] = example_data["users"]["alice"]["ssh_key"][0]
    assert problems(example_data) == []


def test_ssh_key_with_embedded_newline_is_rejected(example_data, problems):
    example_data["users"]["bob"]["ssh_key"] = f'ssh-ed25519 {ED25519_BOB} bob\ncommand="/bin/sh" ssh-dss AAAA'
    assert problems(example_data) != []


# --- host addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "198.51.100.30",
        "10.0.0.1",
        "192.168.1.10",
        "2001:db8::30",
        "fd00::30",
        ["198.51.100.30"],
        ["2001:db8::30", "198.51.100.30"],
    ],
)
def test_host_ip_accepted(example_data, problems, ip):
    example_data["hosts"]["alpha"]["ip"] = ip
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "ip, message",
    [
        ("999.1.1.1", '"999.1.1.1" is not an IPv4 or IPv6 address'),
        ("198.51.100", '"198.51.100" is not an IPv4 or IPv6 address'),
        ("alpha.example.org", '"alpha.example.org" is not an IPv4 or IPv6 address'),
        ("198.51.100.1/24", '"198.51.100.1/24" is not an IPv4 or IPv6 address'),
        ("2001:db8::1::2", '"2001:db8::1::2" is not an IPv4 or IPv6 address'),
        (" 198.51.100.1", '" 198.51.100.1" is not an IPv4 or IPv6 address'),
        ("", '"" is not an IPv4 or IPv6 address'),
        # The ipaddress module rejects leading zeros outright (octal ambiguity), so the
        # "not in canonical form" branch of config.host_ip_problem is never reached.
        ("198.051.100.1", '"198.051.100.1" is not an IPv4 or IPv6 address'),
        ("127.0.0.1", "127.0.0.1 is a loopback address, not a host address"),
        ("127.1.2.3", "127.1.2.3 is a loopback address, not a host address"),
        ("::1", "::1 is a loopback address, not a host address"),
        ("169.254.10.1", "169.254.10.1 is a link-local address, not a host address"),
        ("fe80::1", "fe80::1 is a link-local address, not a host address"),
        ("0.0.0.0", "0.0.0.0 is the unspecified address, not a host address"),
        ("::", ":: is the unspecified address, not a host address"),
        ("224.0.0.1", "224.0.0.1 is a multicast address, not a host address"),
        ("239.1.2.3", "239.1.2.3 is a multicast address, not a host address"),
        ("ff02::1", "ff02::1 is a multicast address, not a host address"),
    ],
)
def test_host_ip_rejected(example_data, problems, ip, message):
    example_data["hosts"]["alpha"]["ip"] = ip
    assert problems(example_data) == [f"cluster.json: hosts.alpha.ip: {message}"]


def test_host_ip_rejected_in_a_list_names_the_entry(example_data, problems):
    example_data["hosts"]["alpha"]["ip"] = ["198.51.100.11", "127.0.0.1", "bogus"]
    assert problems(example_data) == [
        "cluster.json: hosts.alpha.ip[1]: 127.0.0.1 is a loopback address, not a host address",
        'cluster.json: hosts.alpha.ip[2]: "bogus" is not an IPv4 or IPv6 address',
    ]


def test_canonical_form_rule(example_data):
    # What config.py does with a leading-zero IPv4: the parser refuses it first.
    assert config.host_ip_problem("198.051.100.1") == '"198.051.100.1" is not an IPv4 or IPv6 address'
    assert config.host_ip_problem("198.51.100.1") is None


def test_duplicate_ip_across_hosts(example_data, problems):
    example_data["hosts"]["beta"]["ip"][0] = "198.51.100.11"
    assert problems(example_data) == [
        "cluster.json: hosts.beta.ip[0]: 198.51.100.11 is already an address of host alpha"
    ]


def test_duplicate_ip_across_hosts_written_differently(example_data, problems):
    example_data["hosts"]["watch"]["ip"] = "2001:DB8:100:0::11"
    assert problems(example_data) == [
        "cluster.json: hosts.watch.ip: 2001:DB8:100:0::11 is already an address of host alpha"
    ]


def test_duplicate_ip_within_a_host(example_data, problems):
    example_data["hosts"]["alpha"]["ip"].append("198.51.100.11")
    assert problems(example_data) == ["cluster.json: hosts.alpha.ip[2]: 198.51.100.11 is listed twice"]


def test_distinct_ips_accepted(example_data, problems):
    example_data["hosts"]["gamma"] = {"ip": "198.51.100.13", "roles": ["base"]}
    assert problems(example_data) == []


def test_ipv6_with_zone_index_is_rejected(example_data, problems):
    example_data["hosts"]["alpha"]["ip"] = "2001:db8:100::99%eth0"
    assert problems(example_data) != []


# --- host names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gamma", "web-1", "1host", "a", "a" * 63, "db01"])
def test_valid_host_name(example_data, problems, name):
    example_data["hosts"] = renamed(example_data["hosts"], "alpha", name)
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "name", ["Alpha", "ALPHA", "web_1", "a" * 64, "-web", "web-", "web.example.org", "web 1", ""]
)
def test_invalid_host_name(example_data, problems, name):
    example_data["hosts"] = renamed(example_data["hosts"], "alpha", name)
    assert problems(example_data) == [f'cluster.json: hosts.{key_in_path(name)}: "{name}" {HOST_NAME_RULE}']


# --- domain -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain", ["example.org", "cluster.example.co.uk", "localdomain", "x-1.example", "a" * 63 + ".org"]
)
def test_valid_domain(example_data, problems, domain):
    example_data["domain"] = domain
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "domain",
    [
        "example_org.net",
        "example.org.",
        "example..org",
        ".example.org",
        "Example.org",
        "exa mple.org",
        "-example.org",
        "a" * 64 + ".org",
        ".".join(["abcdefghi"] * 26),
    ],
)
def test_invalid_domain(example_data, problems, domain):
    example_data["domain"] = domain
    assert problems(example_data) == [f"cluster.json: domain: {json.dumps(domain)} {DNS_NAME_RULE}"]


# --- admin_email --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email", ["admins@example.org", "first.last+tag@mail.example.org", "root@Example.ORG", "a@localhost"]
)
def test_valid_admin_email(example_data, problems, email):
    example_data["admin_email"] = email
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "email",
    [
        "admins.example.org",
        "admins@",
        "@example.org",
        "admins@exa_mple.org",
        "a@b@example.org",
        "ad mins@example.org",
        "admins@example.org.",
        "admins@example..org",
    ],
)
def test_invalid_admin_email(example_data, problems, email):
    example_data["admin_email"] = email
    assert problems(example_data) == [
        f"cluster.json: admin_email: {json.dumps(email)} is not an e-mail address (user@domain)"
    ]


# --- ca_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://ca.example.org/root.crt", "https://ca.example.org/root.crt", "https://198.51.100.5:8443/ca.pem"],
)
def test_valid_ca_url(example_data, problems, url):
    example_data["ca_url"] = url
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ca.example.org/root.crt",
        "not a url",
        "https://",
        "ca.example.org/root.crt",
        "file:///etc/ssl/ca.pem",
    ],
)
def test_invalid_ca_url(example_data, problems, url):
    example_data["ca_url"] = url
    assert problems(example_data) == [
        f"cluster.json: ca_url: {json.dumps(url)} is not an http:// or https:// URL"
    ]


# --- roles --------------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [["monitor"], [], ["web"]])
def test_roles_without_base(example_data, problems, roles):
    example_data["hosts"]["watch"]["roles"] = roles
    assert problems(example_data) == [f"cluster.json: hosts.watch.roles: {NO_BASE}"]


def test_base_need_not_come_first(example_data, problems):
    example_data["hosts"]["watch"]["roles"] = ["monitor", "base"]
    assert problems(example_data) == []


@pytest.mark.parametrize("role", ["Web", "web server", "-web", "_web", "web.db", "roles/web", ""])
def test_invalid_role_name(example_data, problems, role):
    example_data["hosts"]["alpha"]["roles"] = ["base", role]
    assert problems(example_data, repo_files=[]) == [
        f'cluster.json: hosts.alpha.roles[1]: "{role}" is not a valid role name (a-z, 0-9, _ and -)'
    ]


@pytest.mark.parametrize("role", ["web", "db-primary", "web_2", "9x"])
def test_valid_role_name(example_data, problems, role):
    example_data["hosts"]["alpha"]["roles"] = ["base", role]
    assert problems(example_data, repo_files=[f"roles/{role}/init.sls"]) == []


def test_duplicated_role(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "base"]
    assert problems(example_data) == ["cluster.json: hosts.alpha.roles: lists an entry more than once"]


def test_duplicated_repo_role(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "web", "web"]
    assert problems(example_data, repo_files=["roles/web/init.sls"]) == [
        "cluster.json: hosts.alpha.roles: lists an entry more than once"
    ]


def test_role_without_init_sls(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "web"]
    expected = [
        'cluster.json: hosts.alpha.roles[1]: role "web" has no roles/web/init.sls in the config repo (add it, or fix the name)'
    ]
    assert problems(example_data, repo_files=[]) == expected
    assert (
        problems(example_data, repo_files=["roles/web/web.sls", "roles/web.sls", "web/init.sls"]) == expected
    )
    assert problems(example_data, repo_files=["roles/db/init.sls"]) == expected


def test_role_with_init_sls(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "web"]
    assert problems(example_data, repo_files=["roles/web/init.sls", "roles/web/files/nginx.conf"]) == []


def test_role_not_checked_without_repo_files(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "web", "anything"]
    assert problems(example_data, repo_files=None) == []
    assert problems(example_data) == []


def test_minicl_roles_need_no_roles_dir(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "monitor"]
    assert set(config.MINICL_ROLE_STATES) == {"base", "monitor", "repository", "log"}
    assert problems(example_data, repo_files=[]) == []


def test_missing_role_files_are_reported_per_host(example_data, problems):
    example_data["hosts"]["alpha"]["roles"] = ["base", "web"]
    example_data["hosts"]["beta"]["roles"] = ["base", "db", "web"]
    assert problems(example_data, repo_files=["roles/db/init.sls"]) == [
        'cluster.json: hosts.alpha.roles[1]: role "web" has no roles/web/init.sls in the config repo (add it, or fix the name)',
        'cluster.json: hosts.beta.roles[2]: role "web" has no roles/web/init.sls in the config repo (add it, or fix the name)',
    ]


# --- trailing newline slips past the ^...$ patterns -----------------------------------------


@pytest.mark.parametrize(
    "what", ["user name", "host name", "domain", "admin_email", "passwd", "role", "smtp.relay"]
)
def test_value_with_trailing_newline_is_rejected(example_data, problems, what):
    if what == "user name":
        example_data["users"] = renamed(example_data["users"], "bob", "bob\n")
    elif what == "host name":
        example_data["hosts"] = renamed(example_data["hosts"], "alpha", "alpha\n")
    elif what == "domain":
        example_data["domain"] = "example.org\n"
    elif what == "admin_email":
        example_data["admin_email"] = "admins@example.org\n"
    elif what == "passwd":
        example_data["users"]["bob"]["passwd"] = SHA512 + "\n"
    elif what == "role":
        example_data["hosts"]["alpha"]["roles"] = ["base", "web\n"]
    else:
        example_data["smtp"]["relay"] = "mail.example.org\n"
    assert problems(example_data, repo_files=None) != []


# --- JSON syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{\n "a" 1}', "cluster.json: line 2, column 6: invalid JSON: Expecting ':' delimiter"),
        ("", "cluster.json: line 1, column 1: invalid JSON: Expecting value"),
        (
            "{\n\n  'domain': 1}",
            "cluster.json: line 3, column 3: invalid JSON: Expecting property name enclosed in double quotes",
        ),
        ('{"a": 1}\n{"b": 2}', "cluster.json: line 2, column 1: invalid JSON: Extra data"),
    ],
)
def test_json_syntax_error_names_line_and_column(text, expected):
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(text)
    assert [str(p) for p in caught.value.problems] == [expected]
    assert str(caught.value) == expected


def test_json_syntax_error_in_the_example(example_text):
    broken = example_text.replace('"relay": "mail.example.org",', '"relay": "mail.example.org"', 1)
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if '"port"' in text)
    column = broken.splitlines()[line - 1].index('"port"') + 1
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(broken)
    assert [str(p) for p in caught.value.problems] == [
        f"cluster.json: line {line}, column {column}: invalid JSON: Expecting ',' delimiter"
    ]


def test_json_syntax_error_uses_the_source_name():
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster("{", source="repo/cluster.json")
    assert str(caught.value).startswith("repo/cluster.json: line 1, column 2: invalid JSON: ")


def test_duplicate_key_is_reported(example_text):
    text = example_text.replace(
        '"domain": "example.org",', '"domain": "example.org",\n  "domain": "example.net",', 1
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(text)
    assert [str(p) for p in caught.value.problems] == [
        'cluster.json: key "domain" appears more than once in one object'
    ]


def test_duplicate_key_in_a_nested_object_is_reported(example_text):
    text = example_text.replace('"uid": 2002,', '"uid": 2002,\n      "uid": 2003,', 1)
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(text)
    assert [str(p) for p in caught.value.problems] == [
        'cluster.json: key "uid" appears more than once in one object'
    ]


def test_duplicate_host_is_reported(example_text):
    text = example_text.replace('"beta": {', '"alpha": {', 1)
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(text)
    assert [str(p) for p in caught.value.problems] == [
        'cluster.json: key "alpha" appears more than once in one object'
    ]


def test_same_key_in_different_objects_is_fine():
    assert config.parse_json('{"a": {"x": 1}, "b": {"x": 2}}') == {"a": {"x": 1}, "b": {"x": 2}}


def test_different_duplicate_keys_are_each_reported():
    with pytest.raises(config.ConfigError) as caught:
        config.parse_json('{"b": 1, "b": 2, "a": 1, "a": 2}')
    assert sorted(str(p) for p in caught.value.problems) == [
        'cluster.json: key "a" appears more than once in one object',
        'cluster.json: key "b" appears more than once in one object',
    ]


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2, "a": 3}', '{"a": 1, "a": 2, "b": {"a": 1, "a": 2}}'])
def test_duplicate_key_problem_is_printed_once(text):
    with pytest.raises(config.ConfigError) as caught:
        config.parse_json(text)
    lines = [str(p) for p in caught.value.problems]
    assert len(lines) == len(set(lines))


# --- several problems at once -------------------------------------------------------------


def test_several_problems_all_reported_once_and_sorted(example_data, problems):
    example_data["extra"] = True
    example_data["domain"] = "bad_domain"
    example_data["smtp"]["port"] = 0
    example_data["smtp"]["relay"] = ""
    example_data["users"]["bob"]["uid"] = 500
    example_data["users"]["bob"]["passwd"] = "plaintext-secret"
    example_data["users"]["alice"]["ssh_key"] = []
    example_data["hosts"]["beta"]["ip"] = ["198.51.100.11", "127.0.0.1"]
    example_data["hosts"]["watch"]["roles"] = ["monitor", "web"]
    del example_data["admin_email"]
    expected = [
        'cluster.json: missing required field "admin_email"',
        'cluster.json: domain: "bad_domain" is not a valid DNS name (lower-case labels a-z, 0-9, - separated by dots)',
        f"cluster.json: extra: unknown field (allowed here: {TOP_FIELDS})",
        "cluster.json: hosts.beta.ip[0]: 198.51.100.11 is already an address of host alpha",
        "cluster.json: hosts.beta.ip[1]: 127.0.0.1 is a loopback address, not a host address",
        f"cluster.json: hosts.watch.roles: {NO_BASE}",
        'cluster.json: hosts.watch.roles[1]: role "web" has no roles/web/init.sls in the config repo (add it, or fix the name)',
        "cluster.json: smtp.port: 0 is out of range (1-65535)",
        "cluster.json: smtp.relay: must not be empty",
        "cluster.json: users.alice.ssh_key: must list at least one entry",
        f"cluster.json: users.bob.passwd: {NOT_A_HASH}",
        "cluster.json: users.bob.uid: 500 is in the system range (must be >= 1000)",
    ]
    found = problems(example_data, repo_files=[])
    assert found == expected
    assert len(found) == len(set(found))

    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster(json.dumps(example_data), repo_files=[])
    assert [str(p) for p in caught.value.problems] == expected
    assert str(caught.value) == "\n".join(expected)
    assert "plaintext-secret" not in str(caught.value)


def test_schema_and_semantic_problems_of_one_user_together(example_data, problems):
    example_data["users"] = renamed(example_data["users"], "bob", "Root")
    example_data["users"]["Root"]["uid"] = 65534
    example_data["users"]["Root"]["shell"] = "/bin/zsh"
    example_data["users"]["Root"]["ssh_key"] = "ssh-dss AAAAB3NzaC1kc3MAAACBAP"
    assert problems(example_data) == [
        f'cluster.json: users.Root: "Root" {USER_NAME_RULE}',
        "cluster.json: users.Root.shell: unknown field (allowed here: passwd, ssh_key, uid)",
        "cluster.json: users.Root.ssh_key: is a DSA key, which OpenSSH no longer accepts: use ssh-ed25519",
        "cluster.json: users.Root.uid: 65534 is the uid of nobody (choose another)",
    ]


def test_problem_object():
    problem = config.Problem("users.bob.uid", "bad", source="x/cluster.json")
    assert str(problem) == "x/cluster.json: users.bob.uid: bad"
    assert str(config.Problem("", "bad")) == "cluster.json: bad"
    assert problem == config.Problem("users.bob.uid", "bad", source="x/cluster.json")
    assert len({problem, config.Problem("users.bob.uid", "bad", source="x/cluster.json")}) == 1


def test_source_name_is_used_in_every_problem(example_data, problems):
    example_data["users"]["bob"]["uid"] = 500
    assert problems(example_data, source="/srv/repo/cluster.json") == [
        "/srv/repo/cluster.json: users.bob.uid: 500 is in the system range (must be >= 1000)"
    ]


def test_json_trailing_comma_names_line_and_column():
    # Python 3.13 words this one differently (and points at the comma), so only the form is fixed.
    with pytest.raises(config.ConfigError) as caught:
        config.load_cluster('{\n  "domain": "example.org",\n}')
    assert re.fullmatch(r"cluster\.json: line [23], column \d+: invalid JSON: \S.*", str(caught.value))


# -- details found in review ----------------------------------------------------------------


@pytest.mark.parametrize("passwd", ["!!", "!*", "!", "*"])
def test_lock_markers_written_by_usermod_are_accepted(example_data, problems, passwd):
    example_data["users"]["bob"]["passwd"] = passwd
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "ip, message",
    [
        ("::ffff:198.51.100.99", "::ffff:198.51.100.99 is an IPv4-mapped address: write 198.51.100.99"),
        ("255.255.255.255", "255.255.255.255 is the broadcast address, not a host address"),
    ],
)
def test_special_addresses_are_rejected(example_data, problems, ip, message):
    example_data["hosts"]["beta"]["ip"] = ip
    assert problems(example_data) == [f"cluster.json: hosts.beta.ip: {message}"]


def test_problems_are_in_natural_order(example_data, problems):
    example_data["hosts"]["beta"]["ip"] = [f"2001:db8:200::{n}" for n in range(1, 11)] + ["x", "y"]
    example_data["hosts"]["beta"]["ip"][2] = "z"
    paths = [p.split(": ")[1] for p in problems(example_data)]
    assert paths == ["hosts.beta.ip[2]", "hosts.beta.ip[10]", "hosts.beta.ip[11]"]


def test_ed25519_key_with_its_end_cut_off_is_rejected(example_data, problems):
    key = example_data["users"]["bob"]["ssh_key"]
    blob = base64.b64decode(key.split()[1])
    example_data["users"]["bob"]["ssh_key"] = "ssh-ed25519 " + base64.b64encode(blob[:-3]).decode()
    assert problems(example_data) == [
        "cluster.json: users.bob.ssh_key: ssh-ed25519 key: the key data is truncated or damaged"
    ]


# -- firewall: public ports, trusted sources, options ----------------------------------------


@pytest.mark.parametrize("ports", [["80/tcp"], ["443/tcp", "51820/udp", "60000-61000/udp"], []])
def test_public_ports_accepted(example_data, problems, ports):
    example_data["hosts"]["alpha"]["public_ports"] = ports
    example_data["roles"] = {"web": {"public_ports": ports}}
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "port, message",
    [
        ("80", '"80" is not a port like "443/tcp", "51820/udp" or "60000-61000/udp"'),
        ("80/icmp", '"80/icmp" is not a port like "443/tcp", "51820/udp" or "60000-61000/udp"'),
        ("0/tcp", '"0/tcp": ports are 1-65535'),
        ("70000/udp", '"70000/udp": ports are 1-65535'),
        ("90-80/tcp", '"90-80/tcp": the range is backwards'),
    ],
)
def test_public_ports_rejected(example_data, problems, port, message):
    example_data["hosts"]["alpha"]["public_ports"] = [port]
    example_data["roles"] = {"web": {"public_ports": [port]}}
    assert problems(example_data) == [
        f"cluster.json: hosts.alpha.public_ports[0]: {message}",
        f"cluster.json: roles.web.public_ports[0]: {message}",
    ]


def test_public_ports_must_be_unique(example_data, problems):
    example_data["hosts"]["alpha"]["public_ports"] = ["80/tcp", "80/tcp"]
    assert problems(example_data) == ["cluster.json: hosts.alpha.public_ports: lists an entry more than once"]


@pytest.mark.parametrize("cidr", ["203.0.113.0/24", "2001:db8:ffff::/48", "198.51.100.7", "198.51.100.7/32"])
def test_trusted_sources_accepted(example_data, problems, cidr):
    example_data["hosts"]["alpha"]["trusted_sources"] = [cidr]
    assert problems(example_data) == []


@pytest.mark.parametrize(
    "cidr, message",
    [
        ("203.0.113.5/24", '"203.0.113.5/24" has host bits set (write 203.0.113.0/24)'),
        ("0.0.0.0/0", '"0.0.0.0/0" is the whole Internet: use public_ports for services open to everyone'),
        ("::/0", '"::/0" is the whole Internet: use public_ports for services open to everyone'),
        ("office", '"office" is not an IPv4 or IPv6 network (CIDR, e.g. 203.0.113.0/24)'),
    ],
)
def test_trusted_sources_rejected(example_data, problems, cidr, message):
    example_data["hosts"]["alpha"]["trusted_sources"] = [cidr]
    assert problems(example_data) == [f"cluster.json: hosts.alpha.trusted_sources[0]: {message}"]


def test_firewall_options(example_data, problems):
    example_data["firewall"] = {"ssh_port": 2222, "confirm_seconds": 0}
    assert problems(example_data) == []
    example_data["firewall"] = {"ssh_port": 0, "confirm_seconds": 3601, "open": True}
    assert problems(example_data) == [
        "cluster.json: firewall.confirm_seconds: 3601 is out of range (0-3600)",
        "cluster.json: firewall.open: unknown field (allowed here: confirm_seconds, ssh_port)",
        "cluster.json: firewall.ssh_port: 0 is out of range (1-65535)",
    ]


def test_schedule_and_monitoring_options(example_data, problems):
    example_data["schedule"] = {"interval": "1h", "splay": "5m"}
    example_data["monitoring"] = {"scrape_interval": "15s", "retention": "2w"}
    assert problems(example_data) == []
    cluster = config.Cluster(example_data)
    assert (cluster.seconds("schedule", "interval"), cluster.seconds("monitoring", "scrape_interval")) == (
        3600,
        15,
    )
    del example_data["schedule"], example_data["monitoring"]
    cluster = config.Cluster(example_data)
    assert (
        cluster.duration("schedule", "interval"),
        cluster.duration("schedule", "splay"),
        cluster.duration("monitoring", "scrape_interval"),
        cluster.duration("monitoring", "retention"),
    ) == ("15m", "2m", "30s", "30d")


@pytest.mark.parametrize(
    "section, value, expected",
    [
        (
            "schedule",
            {"interval": "15 min"},
            'schedule.interval: "15 min" is not a duration (a whole number and a unit: '
            's, m, h, d or w ("30s", "15m", "30d"))',
        ),
        ("schedule", {"interval": "0m"}, 'schedule.interval: "0m" is not a duration'),
        ("schedule", {"interval": 900}, "schedule.interval: must be a string, not an integer"),
        (
            "schedule",
            {"interval": "20s", "splay": "5s"},
            "schedule.interval: must be at least 30s (a run takes a while)",
        ),
        (
            "schedule",
            {"interval": "10m", "splay": "10m"},
            "schedule.splay: must be shorter than schedule.interval (600 s is not less than 600 s)",
        ),
        (
            "schedule",
            {"splay": "1h"},
            "schedule.splay: must be shorter than schedule.interval (3600 s is not less than 900 s)",
        ),
        (
            "monitoring",
            {"scrape_interval": "10m"},
            "monitoring.scrape_interval: must be at most 2m (Prometheus treats samples older than 5m as gone)",
        ),
        ("monitoring", {"retention": "30m"}, "monitoring.retention: must be at least 1h"),
        (
            "monitoring",
            {"alert_to": "x"},
            "monitoring.alert_to: unknown field (allowed here: retention, scrape_interval)",
        ),
    ],
)
def test_schedule_and_monitoring_rejected(example_data, problems, section, value, expected):
    example_data[section] = value
    found = problems(example_data)
    assert len(found) == 1 and found[0].startswith(f"cluster.json: {expected}"), found


def test_roles_settings(example_data, problems):
    example_data["roles"] = {"Web": {"public_ports": ["80/tcp"]}, "db": {"ports": []}}
    assert problems(example_data) == [
        'cluster.json: roles.Web: "Web" is not a valid role name (a-z, 0-9, _ and -)',
        "cluster.json: roles.db.ports: unknown field (allowed here: public_ports)",
    ]


@pytest.mark.parametrize(
    "cidr, message",
    [
        (
            "0.0.0.0/1",
            '"0.0.0.0/1" is a large part of the Internet (shorter than /8): use public_ports for services open to everyone',
        ),
        (
            "2000::/3",
            '"2000::/3" is a large part of the Internet (shorter than /16): use public_ports for services open to everyone',
        ),
        (
            "::ffff:203.0.113.0/120",
            '"::ffff:203.0.113.0/120" is IPv4-mapped and matches nothing: write the IPv4 network',
        ),
    ],
)
def test_trusted_sources_too_broad_or_mapped(example_data, problems, cidr, message):
    example_data["hosts"]["alpha"]["trusted_sources"] = [cidr]
    assert problems(example_data) == [f"cluster.json: hosts.alpha.trusted_sources[0]: {message}"]


@pytest.mark.parametrize("value", [True, 3, 2.5, "x"])
def test_trusted_sources_not_a_list_is_one_problem(example_data, problems, value):
    example_data["hosts"]["alpha"]["trusted_sources"] = value
    found = problems(example_data)
    assert len(found) == 1 and "hosts.alpha.trusted_sources" in found[0], found


# --- apps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda apps: apps["db"].update(type="mysql"),
            'apps.db.type: "mysql" is not one of "postgresql", "redis"',
        ),
        (
            lambda apps: apps["db"]["hosts"].append("gamma"),
            'apps.db.hosts[2]: "gamma" is not a host in "hosts"',
        ),
        (
            lambda apps: apps["db"]["databases"]["shop"].update(owner="mallory"),
            'apps.db.databases.shop.owner: "mallory" is not a user in "users"',
        ),
        (
            lambda apps: apps["db"].update(maxmemory="1gb"),
            "apps.db.maxmemory: only a redis app has maxmemory (this one is postgresql)",
        ),
        (
            lambda apps: apps["cache"].update(databases={"shop": {"owner": "alice"}}),
            "apps.cache.databases: only a postgresql app has databases (this one is redis)",
        ),
        (
            lambda apps: apps["cache"].update(maxmemory="256MB"),
            'apps.cache.maxmemory: "256MB" is not valid: redis: the most memory',
        ),
        (lambda apps: apps["cache"].update(maxmemory="lots"), 'apps.cache.maxmemory: "lots" is not valid'),
        (lambda apps: apps["cache"].update(maxmemory=256), "apps.cache.maxmemory: must be a string"),
        (
            lambda apps: apps["cache"].update(maxmemory="100kb"),
            'apps.cache.maxmemory: "100kb" is too small: Redis needs at least 1mb',
        ),
        (
            lambda apps: apps["cache"].update(maxmemory_policy="lru"),
            'apps.cache.maxmemory_policy: "lru" is not one of "noeviction", "allkeys-lru"',
        ),
        (
            lambda apps: apps.update(cache2={"type": "redis", "hosts": ["alpha"]}),
            'apps.cache2.hosts[0]: alpha already runs the redis app "cache"; a host runs one app of a type',
        ),
        (lambda apps: apps["cache"]["hosts"].append("nope"), 'apps.cache.hosts[2]: "nope" is not a host'),
        (lambda apps: apps["db"].update(synchronous="yes"), "apps.db.synchronous: must be"),
        (
            lambda apps: apps.update(db2={"type": "postgresql", "hosts": ["beta"]}),
            'apps.db2.hosts[0]: beta already runs the postgresql app "db"; a host runs one app of a type',
        ),
        (
            lambda apps: apps["db"]["databases"].update(postgres={"owner": "alice"}),
            'apps.db.databases.postgres: "postgres" is not a database name minicl creates',
        ),
        (
            lambda apps: apps.update({"Bad!": {"type": "postgresql", "hosts": ["watch"]}}),
            "is not a valid app name",
        ),
        (lambda apps: apps["db"].update(hosts=[]), "apps.db.hosts:"),
        (lambda apps: apps["db"]["backup"].update(keep=0), "apps.db.backup.keep:"),
    ],
)
def test_bad_apps_are_refused_naming_the_field(example_with_apps, problems, change, expected):
    change(example_with_apps["apps"])
    found = problems(example_with_apps)
    assert len(found) == 1 and expected in found[0], found
