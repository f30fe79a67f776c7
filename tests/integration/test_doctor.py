"""`kanoa-local doctor` end to end: the README's main job on this machine (no GPU, no model hub):
the packaged Gemma 3 270M on the CPU engine, one real kanoa interpretation, nothing left behind."""

from __future__ import annotations

import json

import pytest

from kanoa_local.doctor import DoctorReport
from tests.conftest import run_cli

pytestmark = pytest.mark.engine


def test_doctor_runs_the_main_job_and_leaves_nothing(cpu_venv, gemma_model, tmp_path):
    env = {"HOME": str(tmp_path)}        # kanoa's user pricing file goes to this home
    r = run_cli("doctor", "--json", "--python", str(cpu_venv / "bin" / "python"), env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = DoctorReport.model_validate_json(r.stdout)
    assert report.ok and [s.status for s in report.steps] == ["pass"] * 5
    assert [s.name for s in report.steps] == ["check", "weights", "up", "interpret", "down"]
    assert report.model == "gemma-3-270m" and report.runtime == "process"
    assert report.answer and report.usage["output_tokens"] > 0
    u = report.usage
    assert u["cost_usd"] == pytest.approx((u["input_tokens"] + u["output_tokens"]) / 1e6 * 0.10)
    ps = run_cli("ps", "--json")
    assert json.loads(ps.stdout)["deployments"] == []
