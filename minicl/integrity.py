"""Package integrity: the installed packages' files are the ones their packages shipped, and apt
installs only from signed sources. Read-only: it reports, it repairs nothing.

    changed, packages = verify_installed("/var/lib/minicl/packages-verified.json")
    # [Changed("/usr/bin/tac", "coreutils"), Changed("/usr/sbin/cron", "cron", missing=True)], 412
    unsigned_sources()
    # ["/etc/apt/sources.list.d/extra.list line 1: trusted=yes"]

Files are verified with ``dpkg --verify``, against the md5sums that each package shipped and dpkg
keeps: dpkg is always there (Essential) and hashes in C, a sixth of the time of ``debsums -c``
(Perl) for the same files. Conffiles are left out: administrators and minicl change them (the
sshd drop-in, Postfix's ``main.cf``, ...), and their changes are expected.

Hashing every packaged file reads all of ``/usr`` and takes seconds (a minute on big hosts): too
much for each checks run, every few minutes. So a record keeps each package's fingerprint (the
``lstat`` of each file its md5sums lists, and of the md5sums file itself) beside the result. A run
verifies again only the packages whose fingerprint changed: a write to a file changes its ctime,
which no system call can set back. Once a day every package is verified in full, for what no
ctime shows (a disk that flips bits).
"""

import glob
import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass

from minicl.errors import MiniclError
from minicl.files import read_json, write_file

DPKG_INFO = "/var/lib/dpkg/info"
DPKG_DIVERSIONS = "/var/lib/dpkg/diversions"
RECORD_NAME = "packages-verified.json"  # in minicl's state dir
RECORD_VERSION = 1
FULL_EVERY = 86400  # seconds between two verifications of every package
# Changed files are named in this order: programs first, then libraries, then the rest.
PROGRAM_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/")
LIBRARY_DIRS = ("/lib", "/usr/lib", "/usr/libexec/")

APT_SOURCES_LIST = "/etc/apt/sources.list"
APT_SOURCES_PARTS = "/etc/apt/sources.list.d"
# apt reads only the files of sources.list.d named like this (it ignores the others).
SOURCES_PART_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(list|sources)$")
# Per source (one-line option or deb822 field, lower case): each turns signature checks off.
UNSIGNED_OPTIONS = ("trusted", "allow-insecure", "allow-downgrade-to-insecure")
# apt settings that let unsigned repositories or packages in, for every source.
UNSIGNED_SETTINGS = (
    "Acquire::AllowInsecureRepositories",
    "Acquire::AllowDowngradeToInsecureRepositories",
    "APT::Get::AllowUnauthenticated",
)
APT_TRUE = {"yes", "true", "with", "on", "enable"}  # apt's StringToBool, besides non-zero numbers


class IntegrityError(MiniclError):
    """dpkg or apt could not be asked, or answered what this module does not understand."""


@dataclass(frozen=True)
class Changed:
    path: str
    package: str
    missing: bool = False

    def __str__(self):
        return f"{self.path} ({self.package or 'unknown package'}{', missing' if self.missing else ''})"


# --- Installed files ---------------------------------------------------------------------------


def _lines(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def read_diversions(path=DPKG_DIVERSIONS):
    """{original path: (diverted-to path, diverting package)} from dpkg's diversions file
    (three lines each; the package is ":" for a local diversion)."""
    lines = _lines(path)
    return {lines[i]: (lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)}


def package_files(info_dir=DPKG_INFO, diversions=None):
    """{package: [path, ...]}: the files each installed package has md5sums for, without its
    conffiles, where they are now (a file another package diverted is at its diverted-to path).
    Packages are named as dpkg names them ("libc6:amd64" if Multi-Arch: same)."""
    diversions = read_diversions() if diversions is None else diversions
    found = {}
    for md5sums in sorted(glob.glob(os.path.join(glob.escape(info_dir), "*.md5sums"))):
        package = os.path.basename(md5sums)[: -len(".md5sums")]
        # A conffiles line may start with flags ("remove-on-upgrade /etc/x").
        conffiles = {line[line.index("/") :] for line in _lines(f"{md5sums[:-8]}.conffiles") if "/" in line}
        paths = []
        for line in _lines(md5sums):
            _, sep, relative = line.partition("  ")  # "<md5>  <path without its leading />"
            path = "/" + relative
            if not sep or path in conffiles:
                continue
            diverted_to, by = diversions.get(path, (None, None))
            if diverted_to and by != package.split(":")[0]:
                path = diverted_to
            paths.append(path)
        found[package] = paths
    return found


def fingerprint(paths, md5sums, lstat=os.lstat):
    """A digest of the inode, size, times and mode of ``paths`` and of the package's md5sums file:
    it changes when one of them is written, replaced or removed, or the package is upgraded."""
    digest = hashlib.sha256()
    for path in (md5sums, *paths):
        try:
            st = lstat(path)
            line = f"{path}\0{st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_mode}\n"
        except FileNotFoundError:
            line = f"{path}\0missing\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def parse_verify(output):
    """[(path, missing)] of the files other than conffiles that ``dpkg --verify`` reports.

    Each line (dpkg's "rpm" format) is 9 result characters ("??5??????": the md5sum differs;
    "missing  "), a space, "c" for a conffile or a space, a space, then the path; a file that
    is missing for another reason than not existing ends in " (<error>)"."""
    found = []
    for line in output.splitlines():
        if not line.strip():
            continue
        if len(line) < 13 or line[9] != " " or line[10] not in " c" or line[11] != " ":
            raise IntegrityError(f"unexpected line from dpkg --verify: {line!r}")
        if line[10] == "c":
            continue
        missing = line.startswith("missing")
        path = re.sub(r" \([^()/]*\)$", "", line[12:]) if missing else line[12:]
        found.append((path, missing))
    return found


def dpkg_verify(packages=None, run=subprocess.run):
    """[(path, missing)] of changed files: of ``packages``, or of every installed one if None."""
    if packages is not None and not packages:
        return []  # dpkg --verify without names would verify them all
    result = run(
        ["nice", "-n", "10", "dpkg", "--verify", *(packages or ())],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        check=False,
    )
    # dpkg 1.21 exits 0 with changed files; a dpkg that exits 1 for them writes no error.
    if result.returncode != 0 and (result.returncode > 1 or result.stderr.strip()):
        said = result.stderr.strip() or result.stdout.strip()
        raise IntegrityError(f"dpkg --verify failed (exit {result.returncode}): {said}")
    return parse_verify(result.stdout)


def named_first(changed):
    """``changed`` with programs first, then libraries, then the rest, each by path."""

    def rank(item):
        if item.path.startswith(PROGRAM_DIRS):
            return 0, item.path
        return (1 if item.path.startswith(LIBRARY_DIRS) else 2), item.path

    return sorted(changed, key=rank)


def verify_installed(
    record_path, now=None, info_dir=DPKG_INFO, diversions=None, run=subprocess.run, lstat=os.lstat
):
    """([Changed], number of packages): the installed files, other than conffiles, that differ
    from their package or are missing, programs first.

    Verifies the packages whose fingerprint changed since the record at ``record_path`` (all of
    them if there is none, or the last full verification is FULL_EVERY old) and keeps the rest
    of the record's result; writes the new record (JSON, mode 0644)."""
    now = time.time() if now is None else now
    files = package_files(info_dir, diversions)
    prints = {
        package: fingerprint(paths, os.path.join(info_dir, f"{package}.md5sums"), lstat)
        for package, paths in files.items()
    }
    record = read_json(record_path)
    full_at = record.get("full_at") if record.get("version") == RECORD_VERSION else None
    if full_at is None or not 0 <= now - full_at < FULL_EVERY:
        verify, kept, full_at = sorted(prints), [], now
    else:
        verify = sorted(p for p in prints if record.get("packages", {}).get(p) != prints[p])
        kept = [
            Changed(path, package, missing)
            for path, package, missing in record.get("changed", [])
            if package in prints and package not in verify
        ]
    owners = {}  # dpkg reports missing directories too: they are in the .list files only
    for package in verify:
        for path in files[package] + _lines(os.path.join(info_dir, f"{package}.list")):
            owners.setdefault(path, package)
    found = dpkg_verify(None if len(verify) == len(prints) else verify, run)
    fresh = [Changed(path, owners.get(path, ""), missing) for path, missing in found]
    changed = named_first(dict.fromkeys(kept + fresh))  # a file of two packages is reported twice
    new_record = {
        "version": RECORD_VERSION,
        "full_at": full_at,
        "packages": prints,
        "changed": [[c.path, c.package, c.missing] for c in changed],
    }
    if new_record != record:
        os.makedirs(os.path.dirname(record_path), mode=0o700, exist_ok=True)
        write_file(record_path, json.dumps(new_record, sort_keys=True) + "\n", 0o644)
    return changed, len(prints)


def last_verified(record_path):
    """([Changed], number of packages) as the last ``verify_installed`` left them at
    ``record_path``, without looking at any file; None if there is no record yet."""
    record = read_json(record_path)
    if record.get("version") != RECORD_VERSION:
        return None
    changed = [Changed(path, package, missing) for path, package, missing in record.get("changed", [])]
    return changed, len(record.get("packages", {}))


# --- apt sources -------------------------------------------------------------------------------


def _apt_true(value):
    value = value.strip().lower()
    try:
        return int(value) != 0
    except ValueError:
        return value in APT_TRUE


def one_line_unsigned(path, text):
    """Findings in a one-line sources file: "<path> line <n>: trusted=yes"."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        match = re.match(r"\s*(deb|deb-src)\s+\[([^\]]*)\]", line)
        if not match:
            continue
        for option in match.group(2).split():
            key, _, value = option.partition("=")
            if key.rstrip("+-").lower() in UNSIGNED_OPTIONS and _apt_true(value):
                found.append(f"{path} line {number}: {option}")
    return found


def deb822_unsigned(path, text):
    """Findings in a deb822 .sources file: "<path> stanza 2 (line 7): Trusted: yes"."""
    stanzas, current = [], None  # [(first line, {field: value})]
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            current = None
            continue
        if current is None:
            current = (number, {})
            stanzas.append(current)
        if line[0] in " \t":
            continue  # a continuation line (a key block of Signed-By, ...)
        field, _, value = line.partition(":")
        current[1][field.strip().lower()] = (field.strip(), value.strip())
    found = []
    for index, (first, fields) in enumerate(stanzas, 1):
        if "enabled" in fields and not _apt_true(fields["enabled"][1]):
            continue
        for option in UNSIGNED_OPTIONS:
            if option in fields and _apt_true(fields[option][1]):
                name, value = fields[option]
                found.append(f"{path} stanza {index} (line {first}): {name}: {value}")
    return found


def config_unsigned(dump):
    """Findings in ``apt-config dump`` output (lines ``Key "value";``): "apt config
    Acquire::AllowInsecureRepositories=true"."""
    settings = {name.lower(): name for name in UNSIGNED_SETTINGS}
    found = []
    for line in dump.splitlines():
        match = re.match(r'(\S+) "(.*)";$', line.strip())
        if match and match.group(1).lower() in settings and _apt_true(match.group(2)):
            found.append(f"apt config {match.group(1)}={match.group(2)}")
    return found


def source_files(sources_list=APT_SOURCES_LIST, parts_dir=APT_SOURCES_PARTS):
    """The sources files apt reads, in its order."""
    found = [sources_list] if os.path.isfile(sources_list) else []
    if os.path.isdir(parts_dir):
        found += [
            os.path.join(parts_dir, name)
            for name in sorted(os.listdir(parts_dir))
            if SOURCES_PART_NAME.match(name) and os.path.isfile(os.path.join(parts_dir, name))
        ]
    return found


def apt_config_dump(run=subprocess.run):
    try:
        result = run(["apt-config", "dump"], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise IntegrityError("apt-config is not installed") from exc
    if result.returncode != 0:
        raise IntegrityError(f"apt-config dump failed: {result.stderr.strip()}")
    return result.stdout


def unsigned_sources(sources_list=APT_SOURCES_LIST, parts_dir=APT_SOURCES_PARTS, config_dump=None):
    """Every apt source (file and line or stanza) and apt setting that lets unsigned packages in."""
    found = []
    for path in source_files(sources_list, parts_dir):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        found += deb822_unsigned(path, text) if path.endswith(".sources") else one_line_unsigned(path, text)
    return found + config_unsigned(apt_config_dump() if config_dump is None else config_dump)
