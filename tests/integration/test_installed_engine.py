"""A GPU plan on the process runtime is made for the vLLM installed here (its release, and
whether it has FlashInfer), not for an image: read from the real engine venv."""

from __future__ import annotations

import sys

import pytest

from kanoa_local.catalog import load_catalog
from kanoa_local.deploy.prepare import engine_pin
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset
from kanoa_local.runtimes.engine_venv import installed_engine

pytestmark = pytest.mark.engine


def test_the_installed_engine_is_read_and_a_gpu_plan_pinned_to_it(cpu_venv):
    python = str(cpu_venv / "bin" / "python")
    found = installed_engine(python)
    assert found is not None and found.version.count(".") == 2 and found.flashinfer is False
    assert installed_engine(sys.executable) is None            # the test venv has no vLLM
    assert installed_engine("/nonexistent/python") is None
    c = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="llama-3.1-8b")).chosen
    assert engine_pin(c, python) == {"vllm_version": found.version, "flashinfer": False}
    again = plan(load_preset("l4"), load_catalog(user=False),
                 PlanRequest(model="llama-3.1-8b", **engine_pin(c, python))).chosen
    assert again.settings.vllm_version == found.version and again.settings.image.endswith(f":v{found.version}")
