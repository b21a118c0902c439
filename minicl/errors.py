"""The one base of the errors minicl raises on purpose.

Each names what is wrong, where, and what to do; callers that face a person (the CLI, bootstrap,
the state modules) show that message and never a traceback. The specific errors live beside the
code that raises them: ``config.ConfigError``, ``configrepo.NoGoodCommit``, ``accounts.AccountsError``,
``firewall.FirewallError``, ``sshd.CheckFailed``, ``bootstrap.BootstrapError``, ...
"""


class MiniclError(Exception):
    """Something minicl found wrong and can explain."""
