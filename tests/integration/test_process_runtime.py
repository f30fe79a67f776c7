"""`up` / `status` / `logs` / `down` / `ps` on the process runtime, with the real vLLM CPU engine
(the harness venv) serving the tiny model: the whole lifecycle, a diagnosed failure, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kanoa_local.deploy import PsReport, StatusReport, UpResult
from kanoa_local.engine import process
from tests.conftest import ROOT, free_port, http, make_tiny_model, run_cli

pytestmark = pytest.mark.engine


def up(cpu_venv, model, *extra, timeout=400):
    return run_cli("up", "--model-path", str(model), "--python", str(cpu_venv / "bin" / "python"),
                   "--json", *extra, timeout=timeout)


def test_lifecycle_on_the_process_runtime(cpu_venv, tiny_model):
    port = free_port()
    r = up(cpu_venv, tiny_model, "--name", "t1", "--port", str(port))
    assert r.returncode == 0, r.stderr[-2000:]
    res = UpResult.model_validate_json(r.stdout)
    dep = res.deployment
    assert dep.host == "127.0.0.1" and dep.port == port and process.is_running(dep.pid)
    assert [s.stage for s in res.ready.stages][-1] == "first token"
    assert oct(os.stat(res.api_key_file).st_mode & 0o777) == "0o600"
    key = open(res.api_key_file).read().strip()
    assert key not in r.stdout and key not in r.stderr          # the key is never printed

    # a real chat through the openai client, and 401 without the key
    from openai import OpenAI

    client = OpenAI(base_url=res.base_url, api_key=key)
    out = client.chat.completions.create(model=dep.served_model_name, max_tokens=4,
                                         messages=[{"role": "user", "content": "mean of sales?"}])
    assert out.usage.completion_tokens >= 1
    status, _ = http("GET", f"{res.base_url}/models")
    assert status == 401

    # a second up of the same plan returns at once
    t0 = time.monotonic()
    again = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "t1", "--port", str(port)).stdout)
    assert again.reused and again.deployment.pid == dep.pid and time.monotonic() - t0 < 15

    st = StatusReport.model_validate_json(run_cli("status", "t1", "--json").stdout)
    assert st.state == "running" and st.healthy
    assert st.metrics.generation_tokens >= 1 and st.metrics.prompt_tokens >= 1
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    assert [(d.name, d.state) for d in ps.deployments] == [("t1", "running")]
    logs = run_cli("logs", "t1", "--tail", "50")
    assert logs.returncode == 0 and "Application startup complete" in run_cli("logs", "t1").stdout

    # down leaves no process, no state, and the port free
    d = run_cli("down", "t1")
    assert d.returncode == 0 and "t1" in d.stdout
    assert not process.is_running(dep.pid)
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []
    assert run_cli("status", "t1").returncode == 8


def test_engine_that_dies_at_the_first_request_is_diagnosed(cpu_venv):
    """head_dim 16: the CPU engine loads, answers /health, then dies on the first request."""
    bad = make_tiny_model(cpu_venv, "--heads", "8", "--kv-heads", "8", "--head-dim", "16",
                          "--name", "tiny-hd16")
    port = free_port()
    r = up(cpu_venv, bad, "--name", "bad", "--port", str(port))
    assert r.returncode == 7, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert "head_dim 16" in err["message"] and err["remedy"]
    assert err["details"]["diagnosis"]["kind"] == "unsupported-head-dim"
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []
    status, _ = http("GET", f"http://127.0.0.1:{port}/health", timeout=3)
    assert status == 0                                            # nothing listens any more
    assert "head_dim=16" in run_cli("logs", "bad").stdout          # the log stays readable


def test_ctrl_c_while_waiting_leaves_nothing(cpu_venv, tiny_model):
    port = free_port()
    env = {**os.environ}
    p = subprocess.Popen([sys.executable, "-m", "kanoa_local", "up", "--model-path", str(tiny_model),
                          "--python", str(cpu_venv / "bin" / "python"), "--name", "cc", "--port", str(port)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = os.path.join(os.environ["KANOA_LOCAL_HOME"], "state", "deployments", "cc.json")
    deadline = time.monotonic() + 60
    while not os.path.exists(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = json.load(open(state))["pid"]
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not process.is_running(pid)
    assert not os.path.exists(state)
    status, _ = http("GET", f"http://127.0.0.1:{port}/health", timeout=3)
    assert status == 0


def test_missing_model_dir_and_missing_vllm_are_one_line_errors(tmp_path, cpu_venv, tiny_model):
    r = run_cli("up", "--model-path", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    r = run_cli("up", "--model-path", str(tiny_model), "--python", sys.executable)
    assert r.returncode == 6 and "has no vLLM" in r.stderr and "kanoa-local[cpu]" in r.stderr
