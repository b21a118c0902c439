"""Canaries first: may this host take a new minicl (or a new package snapshot) now, or must it
wait for the canaries?

cluster.json's ``rollout`` names canary hosts and a soak time. A canary takes a new pin on its
next run; every other host takes it only once every canary has run it successfully for the soak
time, which it reads from the monitor's Prometheus (every host may reach port 9090 of a monitor).
No canaries: every host takes a new pin on its next run. Package snapshots go the same way
(minicl.upgrade, through ``may_take``).

    ready, why = rollout.may_update(cluster, host, commit)
"""

import json
import urllib.parse
import urllib.request

from minicl.monitor import PROMETHEUS_PORT

QUERY_TIMEOUT = 5


def canaries(cluster):
    return list((cluster.data.get("rollout") or {}).get("canaries") or [])


def soak_seconds(cluster):
    return cluster.seconds("rollout", "soak")


class MonitorUnreachable(Exception):
    pass


def query(cluster, promql, timeout=QUERY_TIMEOUT):
    """Prometheus' answer (the ``result`` list) to an instant query, from the first monitor host
    that answers; MonitorUnreachable says what each one said."""
    tried = []
    for host in cluster.monitor_hosts():
        address = cluster.host_ips(host)[0]
        netloc = f"[{address}]" if ":" in address else address
        url = f"http://{netloc}:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.load(response)["data"]["result"]
        except (OSError, ValueError, KeyError) as exc:
            tried.append(f"{host} ({netloc}:{PROMETHEUS_PORT}): {getattr(exc, 'reason', exc)}")
    raise MonitorUnreachable("; ".join(tried) or "no host has the monitor role")


def canary_progress(cluster, good_since, ask=query):
    """{canary: seconds it has run it successfully}, ``good_since`` being the PromQL selector of
    the metric that says since when a host runs it well; a canary missing has not (yet)."""
    soak = soak_seconds(cluster)
    good = ask(cluster, f"time() - {good_since}")
    failing = ask(cluster, f"min_over_time(minicl_run_success[{int(soak)}s]) == 0")
    failed_hosts = {row["metric"].get("instance") for row in failing}
    return {
        row["metric"].get("instance"): float(row["value"][1])
        for row in good
        if row["metric"].get("instance") not in failed_hosts
    }


def may_update(cluster, host, commit, ask=query):
    """(True, why) if ``host`` may take minicl ``commit`` now; (False, why) if it must wait."""
    return may_take(
        cluster, host, f'minicl_release_good_since_timestamp_seconds{{commit="{commit}"}}',
        f"minicl {commit[:12]}", "a new minicl", ask,
    )  # fmt: skip


def may_take(cluster, host, good_since, what, kind, ask=query):
    """(True, why) if ``host`` may take ``what`` (``kind`` in general: "a new minicl") now, the
    canaries' progress read from ``good_since`` (see canary_progress); (False, why) if it must wait."""
    names = canaries(cluster)
    if not names:
        return True, f"no canaries in cluster.json: every host takes {kind} on its next run"
    if host in names:
        return True, f"{host} is a canary"
    soak = soak_seconds(cluster)
    try:
        progress = canary_progress(cluster, good_since, ask)
    except MonitorUnreachable as exc:
        return False, (
            f"waiting for the canaries ({', '.join(names)}): no monitor answered ({exc}); hosts other "
            f"than the canaries take {kind} only once the monitor shows every canary ran it "
            f"successfully for {cluster.duration('rollout', 'soak')}"
        )
    behind = []
    for name in names:
        ran = progress.get(name)
        if ran is None:
            behind.append(f"{name} does not run it successfully (yet)")
        elif ran < soak:
            behind.append(f"{name} has run it for {int(ran)} s")
    if behind:
        return False, (
            f"waiting for the canaries to run {what} successfully for "
            f"{cluster.duration('rollout', 'soak')}: " + "; ".join(behind)
        )
    return (
        True,
        f"every canary ({', '.join(names)}) has run it successfully for "
        + cluster.duration("rollout", "soak"),
    )
