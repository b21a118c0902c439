#!/bin/sh
# Installs what minicl's demo and tests need on a Debian/Ubuntu machine, as root:
# Debian packages, then a venv in .venv with Salt, minicl (editable) and the test tools.
# Safe to run again; quick when everything is there.
set -eu
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES="gcc python3-dev git openssh-server openssh-client iproute2 util-linux python3-venv procps sudo passwd nftables postfix libsasl2-modules bsd-mailx ca-certificates openssl prometheus-node-exporter prometheus prometheus-alertmanager postgresql prometheus-postgres-exporter restic redis-server prometheus-redis-exporter dpkg-repack aptly gnupg nginx needrestart apt-utils dpkg-dev haproxy keepalived certbot pebble prometheus-nginx-exporter prometheus-haproxy-exporter syslog-ng-core syslog-ng-scl syslog-ng-mod-python"

missing=""
for pkg in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Postfix without any mail routing on this machine: test hosts configure their own.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # policy-rc.d keeps the packages' services (sshd) from starting on this machine:
    # minicl's demo and tests run their daemons only inside test hosts.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        trap 'exit 1' INT TERM
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    fi
    apt-get install -y -qq --no-install-recommends $missing
    # The tests and the demo need the programs, not services on this machine.
    if [ -d /run/systemd/system ]; then
        case " $missing " in *" openssh-server "*) systemctl disable --quiet ssh.service ssh.socket 2>/dev/null || true; esac
        case " $missing " in *" postfix "*) systemctl disable --quiet postfix.service 2>/dev/null || true; esac
        for unit in prometheus-node-exporter prometheus prometheus-alertmanager postgresql prometheus-postgres-exporter redis-server prometheus-redis-exporter nginx haproxy keepalived prometheus-nginx-exporter prometheus-haproxy-exporter syslog-ng; do
            case " $missing " in *" $unit "*) systemctl disable --quiet "$unit.service" 2>/dev/null || true; esac
        done
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    /usr/bin/python3 -m venv .venv
fi
if ! .venv/bin/python -c "import minicl, salt, saltfactories" 2>/dev/null \
   || [ setup.cfg -nt .venv/.minicl-installed ]; then
    echo "setup: installing Salt, minicl and the test tools into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[tests]'
    touch .venv/.minicl-installed
fi

# The lab's wheelhouse: the Python packages a host needs to build a minicl release (Salt and
# minicl's other dependencies, at the versions of .venv, and setuptools), for the tests of
# minicl's self-update: test hosts have no route to the package index.
if [ ! -f .wheelhouse/.complete ] || [ setup.cfg -nt .wheelhouse/.complete ]; then
    echo "setup: building the lab's wheelhouse in .wheelhouse"
    rm -rf .wheelhouse
    .venv/bin/pip freeze --exclude-editable > .venv/constraints.txt
    .venv/bin/pip wheel -q --disable-pip-version-check -w .wheelhouse -c .venv/constraints.txt . setuptools
    rm -f .wheelhouse/minicl-*.whl  # releases are built from minicl's source, never from a wheel
    touch .wheelhouse/.complete
fi
