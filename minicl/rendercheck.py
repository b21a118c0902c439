"""Does this host's highstate render from a checkout of the config repo?

Asked by the pillar before a commit goes live, and again for the live commit whenever minicl's
code or the host's grains change: a role whose SLS file has a Jinja or YAML error then makes
the commit a bad commit for this host, instead of stopping every run of it.

    check = RenderCheck(__opts__, live_path, pillar_for)
    problems = check(checkout_dir, cluster)   # {"roles.web": "roles/web/init.sls: Rendering ..."}
"""

import hashlib
import json
import logging
import os
from contextlib import contextmanager

log = logging.getLogger(__name__)

VOLATILE_GRAINS = {"pid"}  # differ between two runs on an unchanged host
ERROR_LINES = 8  # of Salt's message for one SLS file (it quotes the template around the error)


class RenderCheck:
    """``pillar_for(cluster)``: the pillar this host would get from that cluster, or None if
    the host is not in it (then there is nothing to check here)."""

    def __init__(self, opts, live_path, pillar_for):
        self.opts = opts
        self.live_path = live_path
        self.pillar_for = pillar_for
        grains = {k: v for k, v in (opts.get("grains") or {}).items() if k not in VOLATILE_GRAINS}
        grains = json.dumps(grains, sort_keys=True, default=str)
        self.key = "grains:" + hashlib.sha256(grains.encode()).hexdigest()[:16]

    def __call__(self, checkout, cluster):
        pillar = self.pillar_for(cluster)
        if pillar is None:
            return {}
        return render_problems(self.opts, self._roots(checkout), pillar, pillar["minicl"]["states"], checkout)

    def _roots(self, checkout):
        """The minion's file_roots with the candidate checkout in place of ``live``."""
        live = os.path.realpath(self.live_path)
        roots = (self.opts.get("file_roots") or {}).get("base") or []
        swapped = [
            checkout if os.path.realpath(root) == live or root == self.live_path else root for root in roots
        ]
        return swapped if checkout in swapped else swapped + [checkout]


def render_problems(opts, roots, pillar, states, checkout):
    """{sls: message} for each of ``states`` that does not render (or compile) with ``pillar``
    from ``roots``; empty if all do. Nothing is applied."""
    import salt.state  # pylint: disable=import-outside-toplevel

    opts = dict(opts, file_client="local", file_roots={"base": list(roots)}, pillar=pillar)
    problems, highs = {}, {}
    with _salt_render_logs_quiet():
        highstate = salt.state.HighState(opts, initial_pillar=pillar)
        try:
            for sls in states:
                high, errors = highstate.render_highstate({"base": [sls]})
                if errors:
                    problems[sls] = _message(sls, errors, checkout)
                else:
                    highs[sls] = high
            merged = {}
            for high in highs.values():
                merged.update(high)
            for error in highstate.state.verify_high(merged):
                sls = next((s for s in highs if f"'{s}'" in error or f" {s} " in error), None)
                if sls:
                    problems[sls] = problems.get(sls, _file_of(sls, checkout)) + "\n  " + error
                else:
                    problems.setdefault("highstate", "highstate:")
                    problems["highstate"] += "\n  " + error
        finally:
            highstate.destroy()
    return problems


def _file_of(sls, checkout):
    """The SLS file in the checkout (``roles/web/init.sls``), or the SLS name if not there."""
    base = sls.replace(".", "/")
    for candidate in (f"{base}.sls", f"{base}/init.sls"):
        if os.path.isfile(os.path.join(checkout, candidate)):
            return candidate
    return f"SLS {sls}"


def _message(sls, errors, checkout):
    lines = []
    for error in errors:
        lines += [line for line in str(error).splitlines() if line.strip()][:ERROR_LINES]
    return f"{_file_of(sls, checkout)}: " + "\n  ".join(lines)


class _DropRecords(logging.Filter):
    def filter(self, record):
        return False


@contextmanager
def _salt_render_logs_quiet():
    """Salt logs each render error as CRITICAL; the check reports them itself, once."""
    loggers = [logging.getLogger(name) for name in ("salt.state", "salt.template")]
    drop = _DropRecords()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
