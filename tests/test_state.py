"""The deployments registry: atomic files, a 0600 key, damaged files skipped."""

from __future__ import annotations

import os

import pytest

from kanoa_local import state
from kanoa_local.catalog import load_catalog
from kanoa_local.engine.spec import launch_spec
from kanoa_local.errors import DeploymentNotFound, UsageError
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset


def _dep(name="a"):
    c = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="llama-3.1-8b")).chosen
    spec = launch_spec(c, deployment=name)
    key, path = state.new_api_key(name)
    return state.Deployment(name=name, runtime="process", model_id=c.model_id, served_model_name=c.model_id,
                            host="127.0.0.1", port=8000, device="gpu", plan_hash=state.plan_hash(spec),
                            api_key_file=str(path), pid=None, spec=spec), key


def test_key_is_private_and_round_trips():
    dep, key = _dep()
    assert os.stat(dep.api_key_file).st_mode & 0o777 == 0o600
    state.save(dep)
    assert state.read_api_key(state.load("a")) == key
    assert key.startswith("kl-") and len(key) > 30


def test_damaged_file_is_skipped_and_named():
    dep, _ = _dep("good")
    state.save(dep)
    (state.deployments_dir() / "bad.json").write_text("{not json")
    deps, broken = state.list_all()
    assert [d.name for d in deps] == ["good"] and broken == ["bad"]
    state.remove("good")
    with pytest.raises(DeploymentNotFound):
        state.load("good")


@pytest.mark.parametrize("name", ["", "a b", "../x", "-x", "x" * 64])
def test_bad_names(name):
    with pytest.raises(UsageError):
        state.check_name(name)


def test_status_of_a_dead_gpu_deployment_shows_gpu_memory_from_nvml():
    """NVML played back from a recorded profile (the only fake): who holds GPU memory."""
    import json

    from kanoa_local import deploy
    from kanoa_local.probe import PRESET_DIR
    from kanoa_local.probe.nvml import Replay

    rec = json.loads((PRESET_DIR / "rtx5080-egpu.json").read_text())
    uuid = rec["devices"][0]["nvmlDeviceGetUUID"]
    dep, _ = _dep("g")
    dep = dep.model_copy(update={"gpu_uuids": [uuid]})
    state.save(dep)
    st = deploy.status("g", nvml=Replay(rec))
    assert st.state == "dead" and not st.healthy
    [g] = st.gpus
    assert g.uuid == uuid and g.memory_used > 0
    assert all("pid" in p for p in g.processes)
