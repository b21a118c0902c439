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
    from ``roots``; empty if all do. Nothing is applied.

    The highstate is rendered as a run renders it: all of ``states`` together (SLS files that
    include each other, IDs unique across them). Only when that fails is each SLS rendered on
    its own, to say which one; a conflict that only exists between SLS files that render
    alone is reported under "highstate"."""
    errors = _render(opts, roots, pillar, states)
    if not errors:
        return {}
    problems = {}
    for sls in states:
        alone = _render(opts, roots, pillar, [sls])
        if alone:
            problems[sls] = _message(sls, alone, checkout)
    return problems or {"highstate": "highstate: " + "\n  ".join(_lines(errors))}


def _render(opts, roots, pillar, states):
    """Salt's errors rendering and compiling ``states`` (a fresh HighState: one keeps what it
    rendered, and would see an SLS included twice as a conflict with itself)."""
    import salt.state  # pylint: disable=import-outside-toplevel

    opts = dict(opts, file_client="local", file_roots={"base": list(roots)}, pillar=pillar)
    with _salt_render_logs_quiet():
        highstate = salt.state.HighState(opts, initial_pillar=pillar)
        try:
            high, errors = highstate.render_highstate({"base": list(states)})
            return errors or highstate.state.verify_high(high)
        finally:
            highstate.destroy()


def _file_of(sls, checkout):
    """The SLS file in the checkout (``roles/web/init.sls``), or the SLS name if not there."""
    base = sls.replace(".", "/")
    for candidate in (f"{base}.sls", f"{base}/init.sls"):
        if os.path.isfile(os.path.join(checkout, candidate)):
            return candidate
    return f"SLS {sls}"


def _lines(errors):
    lines = []
    for error in errors:
        lines += [line for line in str(error).splitlines() if line.strip()][:ERROR_LINES]
    return lines


def _message(sls, errors, checkout):
    return f"{_file_of(sls, checkout)}: " + "\n  ".join(_lines(errors))


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
