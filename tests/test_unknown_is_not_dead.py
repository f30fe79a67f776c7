"""A host or scheduler that does not answer means *unknown*, never *dead*: nothing is deleted,
nothing is reported removed. The fault is real: a Docker host URL where nothing listens."""

from __future__ import annotations

import json
import socket

from kanoa_local import state
from kanoa_local.catalog import load_catalog
from kanoa_local.deploy import PsReport
from kanoa_local.engine.spec import launch_spec
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset
from tests.conftest import run_cli


def _silent_url() -> str:
    with socket.socket() as s:             # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _record(name: str, host: str) -> state.Deployment:
    c = plan(load_preset("l4"), load_catalog(user=False),
             PlanRequest(model="llama-3.1-8b")).chosen
    spec = launch_spec(c, deployment=name)
    _, key_file = state.new_api_key(name)
    dep = state.Deployment(name=name, place=state.DockerPlace(nodes=[state.DockerNode(docker_host=host, container_id="f" * 64)]),
                           model_id=c.model_id, served_model_name=c.model_id, host="0.0.0.0", port=8000,
                           device="gpu", plan_hash=state.plan_hash(spec), api_key_file=str(key_file), spec=spec)
    state.save(dep)
    return dep


def test_a_docker_host_that_does_not_answer_keeps_everything():
    url = _silent_url()
    _record("far", url)
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    [row] = ps.deployments
    assert row.state == "unknown" and "did not answer" in row.reason
    assert any(url in p for p in ps.problems)
    st = json.loads(run_cli("status", "far", "--json").stdout)
    assert st["state"] == "unknown"
    d = run_cli("down", "far")
    assert d.returncode == 6 and "could not remove" in d.stderr and "kept" in d.stderr and "Traceback" not in d.stderr
    assert state.record_path("far").exists() and state.key_path("far").exists()
    d = run_cli("down", "--all", "--json")
    assert d.returncode == 6 and state.record_path("far").exists()
    assert json.loads(d.stdout)["error"]["type"] == "Unreachable"
    # `up` of that name changes nothing while it cannot tell
    import pytest

    from kanoa_local import deploy
    from kanoa_local.runtimes import Unreachable

    c = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="llama-3.1-8b")).chosen
    with pytest.raises(Unreachable, match="cannot tell whether 'far' still runs"):
        deploy.up(c, name="far", runtime="docker", docker_hosts=[url], host="0.0.0.0")
    assert state.record_path("far").exists() and state.key_path("far").exists()


def test_down_of_an_unknown_name_lists_the_names_there_are():
    _record("one", _silent_url())
    r = run_cli("down", "nope")
    assert r.returncode == 8 and "no deployment named 'nope'; there are: one" in r.stderr
