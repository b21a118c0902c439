"""State: the relay credentials file for Postfix, never shown.

.. code-block:: yaml

    minicl-relay-credentials:
      minicl_mail.sasl_passwd:
        - name: /etc/postfix/sasl_passwd

Writes ``[relay]:port user:password`` from the pillar (mode 0600, root) and rebuilds its lookup
table with postmap only when it changed. Neither the password nor a diff ever appears in the
state's output; the credentials are read from the pillar here, so they are not in the SLS data.
"""

import os
import subprocess

try:
    from minicl import config, mail
    from minicl.files import read_file, write_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_mail"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _mode(path):
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return None


def sasl_passwd(name):
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    cluster = config.Cluster(__pillar__["minicl"]["cluster"])
    wanted = mail.render_sasl_passwd(cluster)
    db = name + ".db"
    changes = {}
    if read_file(name) != wanted:
        changes["credentials"] = f"for {mail.nexthop(cluster)} (content hidden)"
    if _mode(name) not in (None, 0o600) or _mode(db) not in (None, 0o600):
        changes["mode"] = "0600"
    if not os.path.exists(db) or (os.path.exists(name) and os.path.getmtime(db) < os.path.getmtime(name)):
        changes["lookup table"] = f"{db} rebuilt with postmap"
    if not changes:
        ret["comment"] = f"{name} is up to date"
        return ret
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = changes
        ret["comment"] = f"{name} would be updated"
        return ret

    old_umask = os.umask(0o077)
    try:
        if "credentials" in changes:
            write_file(name, wanted, 0o600)
        result = subprocess.run(["postmap", f"hash:{name}"], capture_output=True, text=True, check=False)
    finally:
        os.umask(old_umask)
    for path in (name, db):
        if os.path.exists(path):
            os.chown(path, 0, 0)
            os.chmod(path, 0o600)
    if result.returncode != 0:
        ret["result"] = False
        ret["comment"] = f"postmap {name} failed: {result.stderr.strip()}"
        return ret
    changes["lookup table"] = f"{db} rebuilt with postmap"
    ret["changes"] = changes
    ret["comment"] = f"{name} updated"
    return ret
