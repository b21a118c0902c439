"""minicl: minimal cluster management with masterless Salt and one cluster.json in git."""

__version__ = "0.1.0"
