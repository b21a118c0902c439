#!/bin/sh
# Installs what minicl needs (Debian packages, a venv in .venv) and runs the whole test suite:
# unit, loader (pytest-salt-factories) and integration tests in test hosts. Run as root.
# Extra arguments go to pytest (e.g. ./test.sh tests/unit -k uid).
set -eu
cd "$(dirname "$0")"
./tools/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadfile --durations=20 "$@"
