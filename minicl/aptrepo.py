"""The cluster's apt repository, on the host with the repository role, made with Debian's aptly.

``refresh`` mirrors the listed packages and their dependencies from upstream (aptly's
``-filter-with-deps``; the upstream Release signature is checked against its key), adds the
.deb files of ``packages.local``, and, when anything differs from the newest snapshot,
publishes a new dated snapshot signed with the config repo's packages.key:

    <ROOT>/public/<snapshot>/dists/minicl/...    # one apt source per snapshot, e.g. 20261204T053000Z
    <ROOT>/public/snapshots.json                 # [{name, created, packages: {name: version}}], oldest first

nginx serves ``public`` to the cluster's hosts; packages are hardlinked from aptly's pool, so a
snapshot costs its index files, not a copy of the packages. Older snapshots beyond ``keep`` are
dropped. Only one aptly command runs at a time (aptly's database is single-writer): every
command here runs under ``LOCK``.
"""

import fcntl
import hashlib
import json
import os
import subprocess
import time
from contextlib import contextmanager

from minicl import packages
from minicl.errors import MiniclError
from minicl.files import read_json, write_file
from minicl.schema import duration_seconds

ROOT = "/var/lib/minicl-repository"  # aptly's rootDir; public/ is what nginx serves
CONFIG = f"{ROOT}/aptly.conf"
GNUPGHOME = f"{ROOT}/gnupg"
UPSTREAM_KEYRING = f"{ROOT}/upstream.gpg"
STATE = f"{ROOT}/minicl-repository.json"  # {refreshed_at, inputs}: when and from what the last refresh ran
LOCK = f"{ROOT}/aptly.lock"
MIRROR = "upstream"  # the mirrors are upstream-<hash of URL and distribution>
LOCAL_REPO = "local"
NGINX_SITE = "/etc/nginx/sites-available/minicl-repository"
NGINX_ENABLED = "/etc/nginx/sites-enabled/minicl-repository"


class RepositoryError(MiniclError):
    """A refresh that could not complete; the published snapshots stay as they were."""


def aptly_config():
    return json.dumps(
        {
            "rootDir": ROOT,
            "architectures": ["amd64"],
            "gpgProvider": "gpg",
            "dependencyFollowSuggests": False,
            "dependencyFollowRecommends": False,
            "dependencyFollowAllVariants": False,
            "downloadConcurrency": 4,
        },
        indent=2,
    )


def render_nginx_site(port):
    return (
        "# Managed by minicl: the cluster's apt repository (cluster.json packages), for the\n"
        "# cluster's hosts only (minicl's firewall).\n"
        "server {\n"
        f"    listen {port};\n"
        f"    listen [::]:{port};\n"
        f"    root {ROOT}/public;\n"
        "    autoindex on;\n"
        "    access_log /var/log/nginx/minicl-repository.access.log;\n"
        "    location ~ /\\. { deny all; }\n"
        "}\n"
    )


def snapshot_name(now=None):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))


def inputs(settings, signing_fingerprint, local_debs):
    """What a refresh depends on besides upstream's content: a change of any of it is due."""
    return {
        "upstream": [
            {"url": u["url"], "distribution": u["distribution"], "components": u["components"]}
            for u in settings["upstream"]
        ],
        "list": sorted(settings["list"]),
        "key": signing_fingerprint,
        "local": sorted(local_debs),
    }


def due(settings, state, wanted_inputs, now=None):
    """Why a refresh is due now, or None."""
    now = time.time() if now is None else now
    if not index():
        return "no snapshot published yet"
    if state.get("inputs") != wanted_inputs:
        return "the packages section, packages.key or the local packages changed"
    if now - state.get("refreshed_at", 0) >= duration_seconds(settings["every"]):
        return f"the last look upstream was more than {settings['every']} ago"
    return None


def index():
    """The published snapshots, oldest first."""
    return read_json(f"{ROOT}/public/{packages.INDEX}") or []


def local_debs(folder):
    """{file name: sha256} of the .deb files in ``folder`` (None: no folder)."""
    if not folder:
        return {}
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".deb"):
            with open(os.path.join(folder, name), "rb") as f:
                found[name] = hashlib.sha256(f.read()).hexdigest()
    return found


class Repository:
    """aptly on this host, under ``ROOT``."""

    def __init__(self, root=ROOT):
        self.root = root

    @contextmanager
    def locked(self):
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        with open(LOCK, "w", encoding="ascii") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def aptly(self, *args, check=True):
        result = subprocess.run(
            ["aptly", f"-config={CONFIG}", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "GNUPGHOME": GNUPGHOME},
            check=False,
        )
        if check and result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise RepositoryError(f"aptly {' '.join(args[:2])}: {' '.join(lines[-3:])}")
        return result.stdout

    def _gpg(self, *args, input=None):
        result = subprocess.run(
            ["gpg", "--batch", "--quiet", "--homedir", GNUPGHOME, *args],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RepositoryError(f"gpg {args[0]}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def prepare(self, secret_key, public_key, upstream_key_files):
        """aptly's config, the signing key in aptly's GnuPG home and the upstream keyring (the
        keys of ``upstream_key_files``, armored or binary, in one binary keyring).
        Returns the signing key's fingerprint. The secret key never leaves GNUPGHOME (0700)."""
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        os.makedirs(os.path.join(self.root, "public"), mode=0o755, exist_ok=True)
        os.makedirs(GNUPGHOME, mode=0o700, exist_ok=True)
        os.chmod(GNUPGHOME, 0o700)
        write_file(CONFIG, aptly_config() + "\n", 0o644)
        public = fingerprints(public_key)
        if len(public) != 1:
            raise RepositoryError(
                f"{packages.PUBLIC_KEY} holds {len(public)} keys: it must hold the one public key of "
                f"{packages.SIGNING_KEY}"
            )
        self._gpg("--import", input=secret_key)
        secret = {
            line.split(":")[9]
            for line in self._gpg("--with-colons", "--list-secret-keys").decode().splitlines()
            if line.startswith("fpr:")
        }
        if public[0] not in secret:
            raise RepositoryError(
                f"{packages.PUBLIC_KEY} is not the public key of {packages.SIGNING_KEY}: the hosts "
                "would refuse every snapshot; export it again (gpg --armor --export)"
            )
        keyring = b""
        for path in upstream_key_files:
            try:
                with open(path, "rb") as f:
                    keyring += dearmor(f.read())
            except OSError as exc:
                raise RepositoryError(f"cannot read the upstream key {path}: {exc.strerror}") from exc
        with open(UPSTREAM_KEYRING + ".new", "wb") as f:
            f.write(keyring)
        os.replace(UPSTREAM_KEYRING + ".new", UPSTREAM_KEYRING)
        return public[0]

    def _mirror(self, name):
        shown = self.aptly("mirror", "show", "-json", name, check=False)
        try:
            return json.loads(shown) if shown.strip().startswith("{") else None
        except ValueError:
            return None

    def update_mirrors(self, settings):
        """One mirror per upstream, filtered to the list (and what it needs), adjusted when the
        list changes; mirrors of upstreams no longer in cluster.json are dropped. Downloads what
        is new; returns the mirrors' names."""
        wanted_filter = " | ".join(sorted(settings["list"]))
        names = []
        for upstream in settings["upstream"]:
            name = mirror_name(upstream)
            names.append(name)
            current = self._mirror(name)
            if current is None:
                self.aptly(
                    "mirror", "create", f"-keyring={UPSTREAM_KEYRING}", f"-filter={wanted_filter}",
                    "-filter-with-deps", name, upstream["url"], upstream["distribution"],
                    *upstream["components"],
                )  # fmt: skip
            elif current.get("Filter") != wanted_filter:
                self.aptly("mirror", "edit", f"-filter={wanted_filter}", "-filter-with-deps", name)
            self.aptly("mirror", "update", f"-keyring={UPSTREAM_KEYRING}", name)
        for old in self.aptly("mirror", "list", "-raw").split():
            if old.startswith(f"{MIRROR}-") and old not in names:
                self.aptly("mirror", "drop", "-force", old)
        return names

    def update_local(self, folder, debs):
        """The local repo holds exactly the .deb files of ``folder``."""
        self.aptly("repo", "drop", "-force", LOCAL_REPO, check=False)
        self.aptly("repo", "create", LOCAL_REPO)
        if debs:
            self.aptly("repo", "add", LOCAL_REPO, *[os.path.join(folder, name) for name in sorted(debs)])

    def packages_of(self, snapshot):
        """{package: version} of a merged snapshot (``merge -latest`` keeps one version of each)."""
        found = {}
        for line in self.aptly("snapshot", "show", "-with-packages", snapshot).splitlines():
            ref = line.strip()
            if ref.count("_") >= 2 and not ref.endswith(":"):
                name, version, _arch = ref.rsplit("_", 2)
                found[name] = version
        return found

    def snapshot_and_publish(self, fingerprint, mirrors, name=None):
        """A snapshot of the mirrors and the local repo, merged (the newest version of each
        package wins); published only when it differs from the newest one. Returns the new
        snapshot's name, or None when nothing changed."""
        name = name or snapshot_name()
        parts = [f"{mirror}-{name}" for mirror in mirrors] + [f"{LOCAL_REPO}-{name}"]
        for mirror, part in zip(mirrors, parts[:-1], strict=True):
            self.aptly("snapshot", "create", part, "from", "mirror", mirror)
        self.aptly("snapshot", "create", parts[-1], "from", "repo", LOCAL_REPO)
        self.aptly("snapshot", "merge", "-latest", name, *parts)
        content = self.packages_of(name)
        published = index()
        if published and published[-1]["packages"] == content:
            for snap in (name, *parts):
                self.aptly("snapshot", "drop", snap)
            return None
        self.aptly(
            "publish", "snapshot", "-batch", f"-gpg-key={fingerprint}",
            f"-distribution={packages.DISTRIBUTION}",
            f"-component={packages.COMPONENT}", f"-origin={packages.ORIGIN}", f"-label={packages.ORIGIN}",
            name, name,
        )  # fmt: skip
        entry = {"name": name, "created": int(time.time()), "packages": content, "parts": parts}
        write_file(f"{self.root}/public/{packages.INDEX}", json.dumps([*published, entry], indent=1) + "\n")
        return name

    def prune(self, keep):
        """Drop the published snapshots older than the ``keep`` newest; returns their names."""
        published = index()
        old, kept = published[:-keep], published[-keep:]
        if not old:
            return []
        write_file(f"{self.root}/public/{packages.INDEX}", json.dumps(kept, indent=1) + "\n")
        for entry in old:
            name = entry["name"]
            self.aptly("publish", "drop", packages.DISTRIBUTION, name, check=False)
            for snap in (name, *entry.get("parts", [])):
                self.aptly("snapshot", "drop", snap, check=False)
        self.aptly("db", "cleanup")
        return [entry["name"] for entry in old]


def refresh(settings, secret_key, public_key, upstream_key_files, local_folder=None, force=False, now=None):
    """Look upstream and publish a new snapshot when something changed. Returns
    {"snapshot": new name or None, "why": reason it ran or None, "dropped": [...]}."""
    repo = Repository()
    with repo.locked():
        fingerprint = repo.prepare(secret_key, public_key, upstream_key_files)
        debs = local_debs(local_folder)
        wanted = inputs(settings, fingerprint, debs)
        state = read_json(STATE)
        why = "asked for" if force else due(settings, state, wanted, now)
        if why is None:
            return {"snapshot": None, "why": None, "dropped": []}
        mirrors = repo.update_mirrors(settings)
        repo.update_local(local_folder, debs)
        name = repo.snapshot_and_publish(fingerprint, mirrors)
        write_file(STATE, json.dumps({"refreshed_at": int(time.time()), "inputs": wanted}, indent=1) + "\n")
        return {"snapshot": name, "why": why, "dropped": repo.prune(settings["keep"])}


def mirror_name(upstream):
    """The aptly mirror of an upstream: named after its URL, distribution and components."""
    what = (
        f"{upstream['url'].rstrip('/')} {upstream['distribution']} {' '.join(sorted(upstream['components']))}"
    )
    return f"{MIRROR}-{hashlib.sha256(what.encode()).hexdigest()[:10]}"


def fingerprints(key_text):
    """The primary key fingerprints in an OpenPGP key (armored or binary), read by gpg without
    touching any keyring."""
    data = key_text.encode() if isinstance(key_text, str) else key_text
    result = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--show-keys"], input=data, capture_output=True, check=False
    )
    found, primary = [], False
    for line in result.stdout.decode(errors="replace").splitlines():
        kind = line.split(":")[0]
        if kind in ("pub", "sec"):
            primary = True
        elif kind == "fpr" and primary:
            found.append(line.split(":")[9])
            primary = False
        elif kind in ("sub", "ssb"):
            primary = False
    return found


def dearmor(key):
    """A binary keyring of ``key`` (armored text or binary bytes), as gpgv and aptly want it."""
    data = key.encode() if isinstance(key, str) else key
    if b"-----BEGIN PGP" not in data:
        return data
    result = subprocess.run(["gpg", "--batch", "--dearmor"], input=data, capture_output=True, check=False)
    if result.returncode != 0:
        raise RepositoryError(f"gpg --dearmor: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout
