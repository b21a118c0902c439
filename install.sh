#!/bin/sh
# Installs minicl on a Debian host, as root: the few Debian packages Salt needs to build and
# fetch, then Salt and minicl in one venv (default /opt/minicl). Safe to run again (upgrades).
#
#   sh install.sh                      # from a clone of minicl
#   sh install.sh /path/to/minicl      # or name the clone (or any pip requirement for minicl)
#   MINICL_PREFIX=/srv/minicl sh install.sh
#
# Then: /opt/minicl/bin/minicl-bootstrap --repo=... (see the README).
set -eu

SOURCE=${1:-$(dirname "$0")}
[ -d "$SOURCE" ] && SOURCE=$(cd "$SOURCE" && pwd)  # a folder, not a name pip looks up
PREFIX=${MINICL_PREFIX:-/opt/minicl}
PACKAGES="python3-venv python3-dev gcc git openssh-client"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs Debian packages and $PREFIX)" >&2
    exit 1
fi
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "install.sh: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
if [ ! -x "$PREFIX/bin/python" ]; then
    echo "install.sh: creating the venv $PREFIX"
    /usr/bin/python3 -m venv "$PREFIX"
fi
# setuptools builds in the clone's build/ and never removes a file from it: a module that moved
# or went away would be installed again from there.
if [ -d "$SOURCE" ] && [ -f "$SOURCE/setup.cfg" ] && grep -q '^name = minicl$' "$SOURCE/setup.cfg"; then
    rm -rf "$SOURCE/build"
fi
echo "install.sh: installing Salt and minicl from $SOURCE into $PREFIX"
"$PREFIX/bin/pip" install -q --disable-pip-version-check "$SOURCE"
# The same version number again (a newer clone) still replaces minicl's own files.
"$PREFIX/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$SOURCE"
echo "install.sh: done. Next: $PREFIX/bin/minicl-bootstrap --repo=<config repo URL> --deploy-key=<key>"
