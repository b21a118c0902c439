"""minicl's test lab: test hosts (Linux namespaces booting systemd), a fake authenticated SMTP
relay, and the demo cluster. Used by ./test.sh, ./demo.sh and bench/; never installed on a host
(setup.cfg packages only ``minicl``), and nothing in ``minicl`` imports it."""
