#!/bin/sh
# Installs what minicl needs (Debian packages, a venv in .venv) and runs the demo cluster
# in test hosts on this machine. Run as root. Options: --keep (leave the hosts up).
set -eu
cd "$(dirname "$0")"
./tools/setup.sh
exec .venv/bin/python -m minicl_lab.demo "$@"
