"""States for root mail: the relay credentials (never shown) and /etc/aliases.

.. code-block:: yaml

    minicl-relay-credentials:
      minicl_mail.sasl_passwd:
        - name: /etc/postfix/sasl_passwd

Writes ``[relay]:port user:password`` from the pillar (mode 0600, root) and rebuilds its lookup
table with postmap only when it changed. Neither the password nor a diff ever appears in the
state's output; the credentials are read from the pillar here, so they are not in the SLS data.
"""

import subprocess

try:
    from minicl import config, mail, paths, statekit
    from minicl.files import read_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func: func)

__virtualname__ = "minicl_mail"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


@_guarded
def aliases(name=None):
    """/etc/aliases from cluster.json and this host's system accounts, read when the state runs
    (after packages have added theirs), and ``newaliases`` whenever the map is older than it."""
    name = name or paths.ALIASES
    ret = statekit.new_ret(name)
    cluster, _ = config.from_pillar(__pillar__)
    wanted = mail.render_aliases(cluster, mail.system_accounts())
    changes = mail.aliases_changes(name, wanted)
    if not changes:
        ret["comment"] = f"{name} is up to date"
        return ret
    if changes.pop("text", None):
        changes["diff"] = statekit.diff(read_file(name), wanted, name, name)
    if __opts__["test"]:
        ret["result"], ret["changes"], ret["comment"] = None, changes, f"{name} would be updated"
        return ret
    try:
        mail.install_aliases(name, wanted)
    except mail.MailError as exc:
        ret["result"], ret["comment"] = False, str(exc)
        return ret
    ret["changes"], ret["comment"] = changes, f"{name} updated"
    return ret


def _step(name, done, comment_done, change, comment_todo, act):
    """A state that acts only while ``done()`` is false. Python checks, not a cmd state's
    ``unless``: Salt looks up a ``mod_run_check`` for that, which cmd lacks, and the miss makes
    it load every state and execution module once per run (about 1.5 s)."""
    ret = statekit.new_ret(name)
    ret["comment"] = comment_done
    if done():
        return ret
    ret["changes"], ret["comment"] = change, comment_todo
    if __opts__["test"]:
        ret["result"] = None
        return ret
    try:
        act()
    except (OSError, subprocess.CalledProcessError) as exc:
        ret["result"], ret["changes"] = False, {}
        ret["comment"] = f"{comment_todo} failed: {statekit.failure(exc)}"
    return ret


def postfix_preseeded(name="postfix"):
    """Before Postfix is installed, debconf is told "No configuration" (minicl writes main.cf)."""
    return _step(
        name,
        lambda: mail.package_installed("postfix"),
        "postfix is installed: nothing to preseed",
        {"debconf": mail.POSTFIX_PRESEED.strip()},
        "postfix preseeded",
        mail.preseed_postfix,
    )


def ca_trusted(name=None):
    """The system CA bundle trusts the cluster CA (``name``, default minicl's copy of ca_url),
    also after a run that died between downloading it and rebuilding the bundle."""
    name = name or mail.CA_CERT
    return _step(
        name,
        lambda: mail.ca_trusted(name),
        f"{name} is trusted",
        {"bundle": f"{mail.CA_BUNDLE} rebuilt with update-ca-certificates --fresh"},
        f"trusting {name}",
        mail.trust_cas,
    )


@_guarded
def sasl_passwd(name):
    """The relay credentials file ``name`` and its postmap table (see above)."""
    ret = statekit.new_ret(name)
    cluster, _ = config.from_pillar(__pillar__)
    wanted = mail.render_sasl_passwd(cluster)
    changes = mail.sasl_passwd_changes(name, wanted, mail.nexthop(cluster))
    if not changes:
        ret["comment"] = f"{name} is up to date"
        return ret
    if __opts__["test"]:
        ret["result"], ret["changes"], ret["comment"] = None, changes, f"{name} would be updated"
        return ret
    try:
        mail.install_sasl_passwd(name, wanted, changes)
    except mail.MailError as exc:
        ret["result"], ret["comment"] = False, str(exc)
        return ret
    ret["changes"], ret["comment"] = changes, f"{name} updated"
    return ret
