"""The suite itself: plain `pytest` collects, and the harness is one module (one session id)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_conftest_is_loaded_once():
    copies = [name for name, m in list(sys.modules.items())
              if (getattr(m, "__file__", None) or "").endswith("tests/conftest.py")]
    assert copies == ["tests.conftest"], copies


def test_plain_pytest_collects_from_anywhere(tmp_path):
    """`pytest` (the script, not `python -m pytest`) run outside the checkout finds every test."""
    exe = ROOT / ".venv" / "bin" / "pytest"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "pytest"]
    r = subprocess.run([*argv, "--collect-only", "-q", str(ROOT / "tests")], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "errors during collection" not in r.stdout, r.stdout[-1500:]
    assert " tests collected" in r.stdout.strip().splitlines()[-1]


def test_the_declared_floors_are_the_tested_minimums():
    """pyproject.toml's `>=` floors are exactly what scripts/min-versions.txt pins (and the test
    command runs the unit tests on)."""
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for d in deps:
        m = None if ";" in d else re.match(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", d)
        if m:
            floors[m.group(1).lower().replace("_", "-")] = m.group(2)
    pins = {}
    for line in (ROOT / "scripts" / "min-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    assert pins == floors
