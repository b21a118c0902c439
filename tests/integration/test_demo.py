"""The README's demo command runs and every check in its report passes."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_reports_all_checks_passed():
    result = subprocess.run(
        [sys.executable, "-m", "minicl_lab.demo"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: all" in result.stdout and "checks passed" in result.stdout
    assert "FAIL" not in result.stdout
