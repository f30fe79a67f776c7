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


def test_a_killed_sessions_engines_are_swept_by_the_next(tmp_path):
    """A session killed with SIGKILL leaves its file and what it started; the next session's
    sweep stops it through `kanoa-local down --all` in that session's homes. The leftover here
    is a real process carrying a deployment's markers for one of those homes."""
    import json
    import os
    import signal
    import psutil

    from tests.conftest import cli_env, sweep_dead_sessions

    home = tmp_path / "base" / "test_x0" / "kanoa-home"
    (home / "state").mkdir(parents=True)
    (home / "state" / "leak.key").write_text("kl-x")
    env = cli_env({"KANOA_LOCAL_HOME": str(home)})
    owner = subprocess.run([sys.executable, "-c", "from kanoa_local.state import owner_id; print(owner_id())"],
                           env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    # not a child of this process (as an engine of a dead session is not): nobody here reaps it
    pid = int(subprocess.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                             check=True, env={**env, "KANOA_LOCAL_OWNER": owner, "KANOA_LOCAL_LAUNCH": "l" * 32,
                                              "KANOA_LOCAL_DEPLOYMENT": "leak"}).stdout)
    leftover = psutil.Process(pid)
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / "dead.json").write_text(json.dumps({"pid": dead.pid, "started": psutil.Process(dead.pid).create_time(),
                                                    "basetemp": str(tmp_path / "base")}))
    (sessions / "alive.json").write_text(json.dumps({"pid": os.getpid(), "started": psutil.Process().create_time(),
                                                     "basetemp": str(tmp_path / "base")}))
    try:
        assert sweep_dead_sessions(sessions) == []          # its session still runs: left alone
        assert leftover.is_running()
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        (sessions / "alive.json").unlink()
        assert sweep_dead_sessions(sessions) == [str(home)]
        assert not leftover.is_running() or leftover.status() == psutil.STATUS_ZOMBIE
        assert not (sessions / "dead.json").exists()
    finally:
        if leftover.is_running():
            leftover.kill()
        dead.kill()
