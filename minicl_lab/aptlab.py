"""The lab's upstream Debian archive: small packages built with dpkg-deb, in a dists-style
repository signed with a key of its own and served over HTTP from a test host. Test hosts have
no route to Debian's archive; the cluster's repository mirrors from this one instead.

    upstream = Upstream(git_server.host)
    upstream.add(WEB, "1.0")          # builds minicl-lab-web 1.0 (and its dependency)
    upstream.publish()                # Packages, Release, InRelease signed with the lab's key
    upstream.url                      # http://<host>:8000/ (distribution "lab", component "main")

The packages: ``minicl-lab-web`` runs a service (``minicl-lab-web.service``) whose program is
an ELF binary of its own, so that needrestart sees a process mapping a replaced file after an
upgrade; version 1.1 of it fails to start (a broken upgrade), 1.2 works again. It depends on
``minicl-lab-lib``. ``minicl-lab-other`` is never listed: it must not be mirrored.
"""

import shlex
import subprocess

DIST = "lab"
PORT = 8000
ROOT = "/srv/upstream"
GNUPGHOME = "/root/upstream-gnupg"
WEB = "minicl-lab-web"
LIB = "minicl-lab-lib"
OTHER = "minicl-lab-other"

BROKEN = "1.1"  # the version of minicl-lab-web whose service does not start

UNIT = f"""[Unit]
Description=minicl's lab service (a test package)

[Service]
ExecStart=/usr/bin/{WEB}

[Install]
WantedBy=multi-user.target
"""

# What debhelper's dh_installsystemd writes into a postinst, in short: enabled on first
# install, left as the admin set it on upgrades, restarted on upgrades.
POSTINST = f"""#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! deb-systemd-helper debian-installed {WEB}.service \\
            || deb-systemd-helper --quiet was-enabled {WEB}.service; then
        deb-systemd-helper enable {WEB}.service >/dev/null || true
    else
        deb-systemd-helper update-state {WEB}.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke restart {WEB}.service >/dev/null || true
    fi
fi
"""


def make_key(host, gnupghome, uid):
    """A new signing key in ``gnupghome`` on ``host``: (armored secret key, armored public key,
    fingerprint)."""
    gpg = f"GNUPGHOME={gnupghome} gpg --batch -q"
    host.run(
        f"install -d -m 700 {gnupghome} && {gpg} --passphrase '' --quick-gen-key {shlex.quote(uid)} "
        "rsa3072 sign never"
    )
    fingerprint = next(
        line.split(":")[9]
        for line in host.run(f"{gpg} --with-colons --list-secret-keys").stdout.splitlines()
        if line.startswith("fpr:")
    )
    secret = host.run(f"{gpg} --armor --export-secret-keys {fingerprint}").stdout
    public = host.run(f"{gpg} --armor --export {fingerprint}").stdout
    host.run(f"gpgconf --homedir {gnupghome} --kill gpg-agent", check=False)
    return secret, public, fingerprint


class Upstream:
    """The lab's upstream archive on ``host``: ``add`` packages, ``publish``, served by
    ``python3 -m http.server`` from the moment it is created."""

    def __init__(self, host):
        self.host = host
        self.secret, self.public, self.fingerprint = make_key(
            host, GNUPGHOME, "lab upstream <root@localhost>"
        )
        host.run(f"mkdir -p {ROOT}/pool")
        host.write(f"{ROOT}/upstream.asc", self.public)
        self.server = host.spawn(
            ["python3", "-m", "http.server", "-b", host.ipv4, "-d", ROOT, str(PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.add(LIB, "1.0")
        self.add(OTHER, "1.0")

    @property
    def url(self):
        return f"http://{self.host.ipv4}:{PORT}/"

    def add(self, name, version, size=0, dist=DIST):
        """Build ``name`` at ``version`` into the pool of distribution ``dist`` (publish() makes
        it visible), with ``size`` bytes of random data in it."""
        tree = f"/root/build/{name}-{version}"
        control = (
            f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nSection: misc\nPriority: optional\n"
            f"Maintainer: minicl tests <root@localhost>\nDescription: {name}, a package of minicl's lab\n"
        )
        if name == WEB:
            control += f"Depends: {LIB} (>= 1.0)\n"
            # Its own ELF binary: after an upgrade, a process still running the old one maps a
            # deleted file, which is what needrestart looks for.
            program = (
                f'#!/bin/sh\necho "{WEB} {version} is broken" >&2\nexit 1\n'
                if version == BROKEN
                else f"#!/bin/sh\nexec /usr/libexec/{WEB}/sleeper infinity\n"
            )
            self.host.write(f"{tree}/usr/bin/{WEB}", program, 0o755)
            self.host.run(f"install -D -m 755 /usr/bin/sleep {tree}/usr/libexec/{WEB}/sleeper")
            self.host.write(f"{tree}/lib/systemd/system/{WEB}.service", UNIT)
            self.host.write(f"{tree}/DEBIAN/postinst", POSTINST, 0o755)
        self.host.write(f"{tree}/usr/share/doc/{name}/version", f"{version}\n")
        if size:
            self.host.run(f"head -c {size} /dev/urandom > {tree}/usr/share/doc/{name}/data")
        self.host.write(f"{tree}/DEBIAN/control", control)
        self.host.run(
            f"cd {tree} && find . -path ./DEBIAN -prune -o -type f -printf '%P\\0'"
            " | xargs -0 md5sum > DEBIAN/md5sums"
            f" && mkdir -p {ROOT}/pool/{dist}"
            f" && dpkg-deb -Zxz --root-owner-group --build {tree} {ROOT}/pool/{dist}/ >/dev/null"
        )

    def publish(self, sign=True, name=DIST):
        """Index the pool of distribution ``name`` into dists/<name> and sign its Release file
        (InRelease and Release.gpg)."""
        dist = f"dists/{name}"
        apt_ftparchive = (
            "apt-ftparchive -o APT::FTPArchive::Release::Origin=lab -o APT::FTPArchive::Release::Label=lab"
            f" -o APT::FTPArchive::Release::Suite={name} -o APT::FTPArchive::Release::Codename={name}"
            " -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main"
        )
        gpg = f"GNUPGHOME={GNUPGHOME} gpg --batch -q --yes -u {self.fingerprint}"
        self.host.run(
            f"set -e; cd {ROOT}; mkdir -p pool/{name} {dist}/main/binary-amd64;"
            f" dpkg-scanpackages --multiversion pool/{name}"
            f" > {dist}/main/binary-amd64/Packages 2>/dev/null; gzip -9nkf {dist}/main/binary-amd64/Packages;"
            f" {apt_ftparchive} release {dist} > {dist}/Release.new; mv {dist}/Release.new {dist}/Release;"
            f" rm -f {dist}/InRelease {dist}/Release.gpg"
        )
        if sign:
            self.host.run(
                f"set -e; cd {ROOT}/{dist}; {gpg} --clearsign -o InRelease Release;"
                f" {gpg} --armor --detach-sign -o Release.gpg Release"
            )
