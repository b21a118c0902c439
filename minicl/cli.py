"""The ``minicl`` command.

minicl validate [PATH]      # PATH defaults to ./cluster.json; exit 0 valid, 1 invalid
minicl validate --staged    # the staged cluster.json of the git repo here (pre-commit hook)

Both also check the minicl the config repo pins (a git submodule at ``minicl``), when PATH's
folder is the top of a git work tree; ``--staged`` also checks the submodule's checkout.
minicl show HOST [PATH]     # what HOST gets from cluster.json: roles, SLS files, rendered files
minicl show HOST --file /etc/nftables.d/minicl.nft   # one rendered file's text
minicl packages-key         # a signing key for the cluster's apt repository: packages.key(.pub) here
minicl logging-ca DOMAIN    # the central logging CA: logging-ca.key and logging-ca.crt here
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from minicl import api, centrallog, logcerts, packages

EXIT_INVALID = 1


repo_files_on_disk = api.repo_files_on_disk  # where scripts found it before minicl.api


def validate_path(path):
    return api.problems(path)


def _git(*args, cwd=None):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


def validate_staged(repo_dir="."):
    """Problems of what ``git commit`` is about to record: cluster.json, deploy.key and the
    minicl it pins (if any)."""
    listed = _git("ls-files", "--cached", "-z", cwd=repo_dir)
    if listed.returncode != 0:
        return [f"{os.path.abspath(repo_dir)}: not a git repository ({listed.stderr.decode().strip()})"]
    files = [f for f in listed.stdout.decode("utf-8", "replace").split("\0") if f]
    problems = []
    if "deploy.key" not in files:
        problems.append(
            "deploy.key: missing from the commit; the hosts read the repo with it "
            "(ssh-keygen -t ed25519 -N '' -f deploy.key; git add deploy.key)"
        )
    return problems + _staged_cluster_problems(repo_dir, files) + api.pin_problems(repo_dir, staged=True)


def _staged_cluster_problems(repo_dir, files):
    if "cluster.json" not in files:
        return ["cluster.json: missing from the commit (git add cluster.json)"]
    staged = _git("show", ":cluster.json", cwd=repo_dir)
    try:
        text = staged.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"cluster.json: not UTF-8 text (byte {exc.start})"]
    return _problems(text, "cluster.json", files)


def _problems(text, source, repo_files):
    try:
        api.loads(text, source=source, repo_files=repo_files)
    except api.ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minicl", description="minicl cluster tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check a cluster.json (exit 0 valid, 1 invalid)")
    check.add_argument("path", nargs="?", default="cluster.json", help="default: ./cluster.json")
    check.add_argument(
        "--staged",
        action="store_true",
        help="check the staged cluster.json, deploy.key and minicl pin of the git repo here",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    show = sub.add_parser("show", help="what a host gets from cluster.json")
    show.add_argument("host", help="short name or FQDN")
    show.add_argument("path", nargs="?", default="cluster.json", help="default: ./cluster.json")
    show.add_argument("--file", help="print only this rendered file (e.g. /etc/nftables.d/minicl.nft)")
    key = sub.add_parser("packages-key", help="create packages.key and packages.key.pub here (gpg)")
    key.add_argument("--name", default="minicl cluster packages", help="the key's user id")
    ca = sub.add_parser("logging-ca", help="create logging-ca.key and logging-ca.crt here (openssl)")
    ca.add_argument("domain", help="the cluster's domain, named in the CA's certificate")
    args = parser.parse_args(argv)
    if args.command == "logging-ca":
        return logging_ca(args.domain)
    if args.command == "packages-key":
        return packages_key(args.name)
    if args.command == "show":
        return show_host(args.host, args.path, args.file)

    problems = validate_staged() if args.staged else validate_path(args.path)
    for problem in problems:
        print(problem, file=sys.stderr if args.staged else sys.stdout)
    if problems:
        if args.staged:
            print(
                "minicl: commit refused; fix the above (or bypass with git commit --no-verify)",
                file=sys.stderr,
            )
        return EXIT_INVALID
    if not args.quiet:
        print(f"{'staged cluster.json' if args.staged else args.path}: valid")
    return 0


def packages_key(name, folder="."):
    """A new OpenPGP signing key for the cluster's repository: packages.key (the secret key,
    armored, mode 0600) and packages.key.pub (what hosts trust), in ``folder``. Refuses to
    overwrite either."""
    secret_path, public_path = (os.path.join(folder, n) for n in (packages.SIGNING_KEY, packages.PUBLIC_KEY))
    for path in (secret_path, public_path):
        if os.path.exists(path):
            print(f"minicl: {path} exists: remove it first to replace the key (hosts trust the old one)",
                  file=sys.stderr)  # fmt: skip
            return EXIT_INVALID
    with tempfile.TemporaryDirectory(prefix="minicl-gnupg-") as home:
        gpg = ["gpg", "--batch", "--quiet", "--homedir", home]
        made = subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", name, "rsa3072", "sign", "never"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if made.returncode != 0:
            print(f"minicl: gpg could not create the key: {made.stderr.strip()}", file=sys.stderr)
            return EXIT_INVALID
        secret = subprocess.run(
            [*gpg, "--armor", "--export-secret-keys"], capture_output=True, check=True
        ).stdout
        public = subprocess.run([*gpg, "--armor", "--export"], capture_output=True, check=True).stdout
        subprocess.run(
            ["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, check=False
        )
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    with open(public_path, "wb") as f:
        f.write(public)
    print(f"wrote {secret_path} (secret: the repository host signs with it) and {public_path}; "
          f"git add {packages.SIGNING_KEY} {packages.PUBLIC_KEY}")  # fmt: skip
    return 0


def logging_ca(domain, folder="."):
    """The central logging CA: logging-ca.key (secret, 0600) and logging-ca.crt in ``folder``.
    Refuses to overwrite either."""
    try:
        key, cert = logcerts.make_ca(folder, domain)
    except logcerts.CertError as exc:
        print(f"minicl: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except subprocess.CalledProcessError as exc:
        print(f"minicl: openssl could not create the CA: {exc.stderr.strip()}", file=sys.stderr)
        return EXIT_INVALID
    print(f"wrote {key} (secret: each host signs its logging certificate with it) and {cert}; "
          f"git add {centrallog.CA_KEY} {centrallog.CA_CERT}")  # fmt: skip
    return 0


def show_host(name, path, file=None):
    try:
        view = api.host(api.load(path), name)
    except (api.ConfigError, OSError, UnicodeDecodeError):
        for problem in api.problems(path):
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except KeyError as exc:
        print(f"minicl: {exc.args[0]}", file=sys.stderr)
        return EXIT_INVALID
    if file:
        if file not in view["files"]:
            print(
                f"minicl: minicl renders no {file} for {name} (it renders: {', '.join(view['files'])})",
                file=sys.stderr,
            )
            return EXIT_INVALID
        print(view["files"][file], end="")
        return 0
    summary = {key: view[key] for key in ("name", "fqdn", "ip", "roles", "states")}
    summary["files"] = sorted(view["files"])
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
