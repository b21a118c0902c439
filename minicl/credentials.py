"""The formats of a user's login credentials in cluster.json: crypt password hashes and
OpenSSH public keys.

Each check says why a value is not acceptable, or returns None; ``minicl.rules`` turns the
reason into a problem at the value's path. Neither check ever quotes a secret.
"""

import base64
import binascii
import re
import struct

_B64 = r"[./0-9A-Za-z]"
CRYPT_HASHES = {
    # scheme id: (readable name, pattern of what follows "$id$")
    "y": ("yescrypt", re.compile(rf"^{_B64}+\${_B64}+\${_B64}{{43}}$")),
    "gy": ("gost-yescrypt", re.compile(rf"^{_B64}+\${_B64}+\${_B64}{{43}}$")),
    "7": ("scrypt", re.compile(rf"^{_B64}{{11,}}\${_B64}{{43}}$")),
    "2b": ("bcrypt", re.compile(rf"^\d\d\${_B64}{{53}}$")),
    "2a": ("bcrypt", re.compile(rf"^\d\d\${_B64}{{53}}$")),
    "2y": ("bcrypt", re.compile(rf"^\d\d\${_B64}{{53}}$")),
    "6": ("sha512crypt", re.compile(rf"^(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{86}}$")),
    "5": ("sha256crypt", re.compile(rf"^(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{43}}$")),
}
WEAK_CRYPT = {"1": "MD5-crypt", "3": "NT", "md5": "MD5-crypt", "sha1": "SHA1-crypt"}

# Fields of the public key blob after the type name: OpenSSH's wire format (RFC 4253, 5656,
# 8709 and PROTOCOL.u2f), all length-prefixed strings.
SSH_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}


SSH_KEY_TYPES = frozenset(SSH_KEY_FIELDS)


def crypt_hash_problem(text):
    """Why ``text`` is not a shadow password field minicl accepts, or None. Never quotes it.

    Accepted: a crypt hash, a lock marker (``!``, ``*``, ``!!``, ``!*``), or a locked hash (``!$6$...``).
    """
    value = text.lstrip("!")
    if text and value in ("", "*"):
        return None
    if not value.startswith("$"):
        return "is not a crypt hash ($y$, $6$, $5$, $2b$, ...) or a lock marker (! or *) (value hidden)"
    parts = value.split("$", 2)
    scheme = parts[1]
    if scheme in WEAK_CRYPT:
        return f"is a weak {WEAK_CRYPT[scheme]} hash: use yescrypt ($y$) or sha512crypt ($6$) (value hidden)"
    if scheme not in CRYPT_HASHES:
        return "has an unknown crypt scheme (use $y$, $6$, $5$, $2b$, ...) (value hidden)"
    name, pattern = CRYPT_HASHES[scheme]
    if len(parts) < 3 or not pattern.fullmatch(parts[2]):
        return f"is not a well-formed {name} hash (value hidden)"
    return None


def _wire_strings(raw):
    """Split an SSH wire-format blob into its length-prefixed strings; ValueError if malformed."""
    fields, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ValueError("truncated length")
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        pos += 4
        if pos + length > len(raw):
            raise ValueError("truncated field")
        fields.append(raw[pos : pos + length])
        pos += length
    return fields


def ssh_key_problem(text):
    """Why ``text`` is not one OpenSSH public key (type, base64 blob, optional comment), or None."""
    if "PRIVATE KEY" in text:
        return "is a PRIVATE key: remove it from the repo now and use the .pub file (value hidden)"
    if "\n" in text or "\r" in text:
        return "must be one key on one line (use a list for several keys)"
    fields = text.split()
    if len(fields) < 2:
        return "is not an OpenSSH public key (expected: TYPE BASE64 [COMMENT])"
    key_type, blob = fields[0], fields[1]
    if key_type not in SSH_KEY_TYPES:
        if key_type == "ssh-dss":
            return "is a DSA key, which OpenSSH no longer accepts: use ssh-ed25519"
        return f'has unknown key type "{key_type[:40]}" (expected one of {", ".join(sorted(SSH_KEY_TYPES))})'
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        return f"{key_type} key: the key data is not valid base64 of an OpenSSH key"
    try:
        parts = _wire_strings(raw)
        embedded = parts[0].decode("ascii") if parts else ""
    except (ValueError, UnicodeDecodeError):
        if raw[4 : 4 + len(key_type)] == key_type.encode():
            return f"{key_type} key: the key data is truncated or damaged"
        return f"{key_type} key: the key data is not valid base64 of an OpenSSH key"
    if embedded != key_type:
        return f'{key_type} key: the key data is of type "{embedded[:40]}"'
    if len(parts) != 1 + SSH_KEY_FIELDS[key_type] or not all(parts[1:]):
        return f"{key_type} key: the key data is truncated or damaged"
    if key_type.endswith("ed25519") and len(parts[1]) != 32:
        return f"{key_type} key: the key data is truncated or damaged"
    return None
