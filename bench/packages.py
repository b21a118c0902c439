"""Benchmark (not a test): rehearsing a package upgrade, and what a snapshot of the cluster's
repository costs on disk, on systemd test hosts bootstrapped from a config repo as in the
integration tests.

The lab's upstream archive has ``--packages`` N small packages (``--size-kb`` of data each) at
1.0; depot (repository role) mirrors them, alpha installs them. Upstream publishes 1.1 of one of
them (depot takes a snapshot), then of all (another); alpha runs ``minicl_upgrade.rehearse``
of the newest. Prints:

- the rehearsal's time, whole (a salt-call, as an admin runs it) and per phase: plan (apt's
  simulation against a private copy of the source), download (into a private folder: the copy
  has no network), boot of the copy, checks before, the upgrade in the copy, checks after;
- the disk a new snapshot adds on depot when one of the N packages changed upstream (aptly's
  pool keeps each package once, a published snapshot hardlinks it), against a full copy of that
  snapshot's published tree.

    sudo .venv/bin/python bench/packages.py [--packages 20] [--size-kb 200]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from minicl_lab import aptlab  # noqa: E402
from minicl_lab.testhosts import GitServer, Lab  # noqa: E402

DEPOT = ["198.51.100.71/24"]
ALPHA = ["198.51.100.72/24"]
EXAMPLE = ROOT / "cluster.json.example"


def salt(host, *args):
    result = host.run(["salt-call", "--local", "--out=json", "--retcode-passthrough", *args], check=False,
                      timeout=3600)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{host.name}: salt-call {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)["local"]


def disk_kb(host, *paths, count_links=False):
    """Disk used by ``paths`` together (hardlinked files once, unless ``count_links``)."""
    flags = "-sk" + ("l" if count_links else "")
    out = host.run(f"du {flags} -c {' '.join(paths)} | tail -1").stdout
    return int(out.split()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=20)
    parser.add_argument("--size-kb", type=int, default=200)
    args = parser.parse_args()
    names = [f"minicl-bench-{i:03d}" for i in range(args.packages)]
    key = subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{key}/deploy.key"], check=True)
    deploy = (pathlib.Path(key, "deploy.key").read_text(), pathlib.Path(key, "deploy.key.pub").read_text())
    with Lab() as lab:
        git = GitServer(lab.add_host("git", ["198.51.100.1/24"]), deploy[1])
        upstream = aptlab.Upstream(git.host)
        for name in names:
            upstream.add(name, "1.0", size=args.size_kb * 1024)
        upstream.publish()
        secret, public, _ = aptlab.make_key(git.host, "/root/cluster-gnupg", "bench <root@localhost>")
        config = json.loads(EXAMPLE.read_text())
        for unused in ("ca_url", "apps"):
            config.pop(unused)
        config["hosts"] = {
            "depot": {"ip": [DEPOT[0].split("/")[0]], "roles": ["base", "repository"]},
            "alpha": {"ip": [ALPHA[0].split("/")[0]], "roles": ["base"]},
        }
        config["packages"] = {
            "upstream": {"url": upstream.url, "distribution": aptlab.DIST, "key": "upstream.asc"},
            "list": names,
        }
        files = {
            "cluster.json": json.dumps(config, indent=2),
            "deploy.key": deploy[0],
            "packages.key": secret,
            "packages.key.pub": public,
            "upstream.asc": upstream.public,
        }
        git.commit(files, "bench")
        hosts = {"depot": lab.add_host("depot", DEPOT), "alpha": lab.add_host("alpha", ALPHA)}
        for host in hosts.values():
            host.write("/root/deploy.key", deploy[0], 0o600)
            host.run(["minicl-bootstrap", f"--repo={git.url}", "--deploy-key=/root/deploy.key"], timeout=1200)
        depot, alpha = hosts["depot"], hosts["alpha"]
        alpha.run(["apt-get", "install", "-y", "-q", *names], env={"DEBIAN_FRONTEND": "noninteractive"})
        repo = "/var/lib/minicl-repository"
        # One package of N changes upstream: what the new snapshot costs.
        before_kb = disk_kb(depot, repo)
        upstream.add(names[0], "1.1", size=args.size_kb * 1024)
        upstream.publish()
        second = salt(depot, "minicl_repository.refresh")["snapshot"]
        added_kb = disk_kb(depot, repo) - before_kb
        full_kb = disk_kb(depot, f"{repo}/public/{second}", count_links=True)
        # All of them change: alpha rehearses N upgrades.
        for name in names[1:]:
            upstream.add(name, "1.1", size=args.size_kb * 1024)
        upstream.publish()
        salt(depot, "minicl_repository.refresh")
        started = time.monotonic()
        rehearsal = salt(alpha, "minicl_upgrade.rehearse")
        took = time.monotonic() - started
        if not rehearsal["ok"]:
            raise SystemExit(f"the rehearsal failed: {rehearsal['lines']}")
        count = len(rehearsal["changes"])
        print(f"rehearsal of {count} package upgrades ({args.size_kb} KB each): {took:.1f} s")
        for phase, seconds in rehearsal["seconds"].items():
            print(f"  {phase:14} {seconds:6.1f} s")
        print(f"a snapshot with 1 of {len(names)} packages changed: {added_kb} KB more on depot (the new "
              f"package and the snapshot's index), against {full_kb} KB for a full copy of it")  # fmt: skip


if __name__ == "__main__":
    main()
