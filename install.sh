#!/bin/sh
# Installs minicl on a Debian host, as root: the few Debian packages Salt needs to build and
# fetch, then Salt and minicl in a release venv (default under /opt/minicl):
#
#   /opt/minicl/releases/<name>/   the venv; <name> is minicl's commit (12 hex digits) when the
#                                  source is a clean git clone, else install-<time>
#   /opt/minicl/current -> releases/<name>,  /opt/minicl/bin -> current/bin
#
# Later releases come from the config repo's pin (see the README, "Keeping minicl up to date");
# this script is for the first install. Safe to run again (it installs the source again).
#
#   sh install.sh                      # from a clone of minicl
#   sh install.sh /path/to/minicl      # or name the clone (or any pip requirement for minicl)
#   MINICL_PREFIX=/srv/minicl sh install.sh
#   MINICL_WHEELHOUSE=/srv/wheels sh install.sh   # Python packages only from there (no index)
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

COMMIT=""
if [ -d "$SOURCE" ] && git -C "$SOURCE" rev-parse --show-toplevel >/dev/null 2>&1 \
   && [ "$(git -C "$SOURCE" rev-parse --show-toplevel)" = "$SOURCE" ] \
   && [ -z "$(git -C "$SOURCE" status --porcelain --untracked-files=no)" ]; then
    COMMIT=$(git -C "$SOURCE" rev-parse HEAD)
    NAME=$(echo "$COMMIT" | cut -c1-12)
else
    NAME="install-$(date -u +%Y%m%d%H%M%S)"
fi
RELEASE="$PREFIX/releases/$NAME"
PREVIOUS=$(readlink "$PREFIX/current" 2>/dev/null | sed 's|^releases/||' || true)

if [ -f "$PREFIX/pyvenv.cfg" ] && [ ! -L "$PREFIX/bin" ]; then
    # An install from before releases: the venv was $PREFIX itself. Its minion stops first
    # (waiting for its jobs); bootstrap starts it again with the release.
    echo "install.sh: $PREFIX is an install from before releases: replacing it with $RELEASE"
    if [ -d /run/systemd/system ] \
       && systemctl show -p ExecStart --value minicl-minion.service 2>/dev/null | grep -q "$PREFIX/bin/salt-minion"; then
        systemctl stop minicl-minion.service
    fi
    (cd "$PREFIX" && rm -rf bin include lib lib64 share pyvenv.cfg)
fi

# setuptools builds in the clone's build/ and never removes a file from it: a module that moved
# or went away would be installed again from there.
if [ -d "$SOURCE" ] && [ -f "$SOURCE/setup.cfg" ] && grep -q '^name = minicl$' "$SOURCE/setup.cfg"; then
    rm -rf "$SOURCE/build"
fi
INDEX=""
if [ -n "${MINICL_WHEELHOUSE:-}" ]; then
    # Only the wheelhouse: no index, and not this host's pip configuration either.
    INDEX="--no-index --find-links $MINICL_WHEELHOUSE"
    case "$MINICL_WHEELHOUSE" in
        http://*) WHEEL_HOST=${MINICL_WHEELHOUSE#http://}; INDEX="$INDEX --trusted-host ${WHEEL_HOST%%[:/]*}" ;;
    esac
    export PIP_CONFIG_FILE=/dev/null
fi
if [ -n "$COMMIT" ] && [ -f "$RELEASE/minicl-release.json" ]; then
    echo "install.sh: minicl $NAME is installed already ($RELEASE)"
else
    rm -rf "$RELEASE"
    mkdir -p "$PREFIX/releases"
    echo "install.sh: installing Salt and minicl from $SOURCE into $RELEASE"
    trap 'rm -rf "$RELEASE"' EXIT
    /usr/bin/python3 -m venv "$RELEASE"
    # shellcheck disable=SC2086  # INDEX is several words
    "$RELEASE/bin/pip" install -q --disable-pip-version-check $INDEX "$SOURCE"
    # The record is written last: a release folder without it is an unfinished build.
    "$RELEASE/bin/python" -c 'import json, sys, time
json.dump({"commit": sys.argv[1], "built_at": int(time.time()), "source": sys.argv[2]},
          open(sys.argv[3], "w"), indent=1)' "$COMMIT" "$SOURCE" "$RELEASE/minicl-release.json"
    trap - EXIT
fi

ln -sfn "releases/$NAME" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
[ -e "$PREFIX/bin" ] || ln -s current/bin "$PREFIX/bin"
for old in "$PREFIX"/releases/*; do
    case "$(basename "$old")" in
        "$NAME"|"$PREVIOUS") ;;
        *) rm -rf "$old" ;;
    esac
done
echo "install.sh: done ($PREFIX/current -> releases/$NAME). Next: $PREFIX/bin/minicl-bootstrap --repo=<config repo URL> --deploy-key=<key>"
