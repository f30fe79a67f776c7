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
