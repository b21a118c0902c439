"""What the lab asks a test host about minicl, from the outside as a person would: running Salt
jobs, the last recorded run (the textfile metric), a PromQL query to the host's Prometheus."""

import json
import os

from minicl import metrics, monitor


def salt_jobs_running(host):
    """Whether a Salt job runs in ``host`` (salt-call and salt-minion record them in one folder)."""
    return bool(host.run("ls /var/cache/salt/minion/proc", check=False).stdout.strip())


def last_minicl_run(host):
    """When minicl last recorded a highstate in ``host`` (its textfile metric), 0 if never."""
    path = os.path.join(metrics.TEXTFILE_DIR, metrics.RUN_FILE)
    return metrics.last_run_timestamp(host.read(path)) if host.exists(path) else 0.0


def prometheus_query(host, expr, port=monitor.PROMETHEUS_PORT):
    """The result vector of a PromQL query to the Prometheus on ``host``: [(labels, value)]."""
    code = (
        "import json, sys, urllib.parse, urllib.request\n"
        f"url = 'http://127.0.0.1:{port}/api/v1/query?query=' + urllib.parse.quote(sys.argv[1])\n"
        "print(urllib.request.urlopen(url, timeout=10).read().decode())"
    )
    data = json.loads(host.run(["python3", "-c", code, expr]).stdout)
    return [(item["metric"], float(item["value"][1])) for item in data["data"]["result"]]
