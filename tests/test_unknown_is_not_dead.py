"""A host or scheduler that does not answer means *unknown*, never *dead*: nothing is deleted,
nothing is reported removed. The fault is real: a Docker host URL where nothing listens."""

from __future__ import annotations

import json
import socket
import sys

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
    assert c is not None
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


def test_docker_host_in_the_environment_is_the_target_as_in_the_library():
    """`DOCKER_HOST=tcp://… kanoa-local up` plans for that host (from its daemon), as
    `kanoa_local.up(docker_host=…)` does — never for this machine with its ports and paths."""
    url = _silent_url()
    r = run_cli("up", "--cpu", env={"DOCKER_HOST": url})
    assert r.returncode == 6 and f"cannot reach the Docker daemon at {url}" in r.stderr, r.stderr
    from kanoa_local.deploy import resolve_target

    import os

    os.environ["DOCKER_HOST"] = url
    try:
        t = resolve_target()
    finally:
        del os.environ["DOCKER_HOST"]
    # published on the one address this machine reaches that host by, not on all of them
    assert t.docker_hosts == [url] and t.runtime == "docker" and t.listen == "127.0.0.1" and t.notes


def test_a_remote_docker_host_is_published_on_the_address_named_only():
    from kanoa_local.deploy import resolve_target

    t = resolve_target(docker_host="tcp://10.1.2.3:2375")
    assert t.listen == "10.1.2.3" and "10.1.2.3 of 10.1.2.3 only" in t.notes[0]
    # ssh:// hosts keep the server on their loopback, reached by an SSH tunnel from here
    t = resolve_target(docker_host="ssh://me@10.1.2.3")
    assert t.listen == "127.0.0.1" and t.tunnel and "SSH tunnel" in t.notes[0]
    t = resolve_target(docker_host="ssh://me@10.1.2.3", host="10.1.2.3")
    assert t.listen == "10.1.2.3" and not t.tunnel and not t.notes
    assert not resolve_target(docker_host="tcp://10.1.2.3:2375").tunnel
    t = resolve_target(docker_host="tcp://10.1.2.3:2375", host="10.9.9.9")
    assert t.listen == "10.9.9.9" and not t.notes
    # every address only when asked, and said
    t = resolve_target(docker_host="tcp://10.1.2.3:2375", host="0.0.0.0")
    assert t.listen == "0.0.0.0" and "every address" in t.notes[0] and "firewall" in t.notes[0]
    r = run_cli("up", "--cpu", "--docker-host", "tcp://no-such-host.invalid:2375")
    assert r.returncode == 2 and "does not resolve" in r.stderr and "--host ADDR" in r.stderr, r.stderr


def test_a_damaged_record_is_cleaned_up_by_down_as_the_hint_says():
    state.deployments_dir().mkdir(parents=True, exist_ok=True)
    state.record_path("cut").write_text('{"schema_version": 2, "name": "cut", "pla')
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    assert ps.unreadable == ["cut"] and "damaged" in ps.problems[0]
    r = run_cli("down", "cut")
    assert r.returncode == 0, r.stderr
    assert not state.record_path("cut").exists()


def test_ipv6_ports_are_probed_on_ipv6():
    from kanoa_local.deploy import pick_port, port_free

    with socket.socket(socket.AF_INET6) as s:
        try:
            s.bind(("::1", 0))
        except OSError:
            import pytest

            pytest.skip("no IPv6 loopback here")
        s.listen()
        busy = s.getsockname()[1]
        assert not port_free("::1", busy)
        assert pick_port("::1", busy) != busy


def test_a_gpu_plan_without_docker_is_the_docker_error_not_a_silent_process():
    import pytest

    from kanoa_local.deploy import choose_runtime
    from kanoa_local.errors import DockerUnavailable
    from kanoa_local.hardware import DockerFacts

    c = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="llama-3.1-8b")).chosen
    down = lambda: DockerFacts(reachable=False, reason="not-running", detail="start Docker")  # noqa: E731
    with pytest.raises(DockerUnavailable, match="Docker daemon does not answer"):
        choose_runtime("auto", c, "some/image:1", docker_facts=down)
    with pytest.raises(DockerUnavailable):                 # this interpreter has no vLLM
        choose_runtime("auto", c, None, docker_facts=down, python=sys.executable)
    assert choose_runtime("process", c, None, docker_facts=down) == "process"


def test_signals_during_a_cleanup_wait_until_it_is_done():
    """A second Ctrl-C (or SIGTERM) while a start is cleaning up does not cut the cleanup short."""
    import os
    import signal

    from kanoa_local.runtimes import Cleanup

    done: list[str] = []
    c = Cleanup()
    c.add("first", lambda: done.append("first"))
    def signalled() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("after the signals")

    c.add("signalled", signalled)
    c.add("failing", lambda: 1 / 0)
    assert c.run() == ["failing: division by zero"]
    assert done == ["after the signals", "first"]          # newest first, every step tried


def test_up_over_a_dead_record_takes_its_price_out_too(kanoa_pricing_file):
    """A server that died (its pid gone) leaves a record and kanoa's price of its served name;
    `up` of that name clears both, even when the new start then fails."""
    import subprocess

    import pytest

    from kanoa_local import deploy
    from kanoa_local.errors import EngineError
    from kanoa_local.interpreter import ensure_price

    gone = subprocess.Popen(["true"])
    gone.wait()
    c = plan(load_preset("no-driver"), load_catalog(user=False), PlanRequest(device="cpu")).chosen
    spec = launch_spec(c, deployment="ghost", runtime="process", model_dir="/nonexistent/ghost")
    _, key_file = state.new_api_key("ghost")
    state.save(state.Deployment(
        name="ghost", place=state.ProcessPlace(pid=gone.pid, started_at=1.0, launch_id="x" * 32,
                                               log_file=str(state.log_path("ghost")), machine=state.this_machine()),
        model_id="ghost-model", served_model_name="ghost-model", host="127.0.0.1", port=8000, device="cpu",
        plan_hash=state.plan_hash(spec), api_key_file=str(key_file), spec=spec))
    ensure_price("ghost-model", 0.1)
    ensure_price("kept-model", 0.1)
    with pytest.raises(EngineError, match="no Python interpreter"):
        deploy.up(c, name="ghost", runtime="process", python="/nonexistent/python")
    assert not state.record_path("ghost").exists()
    prices = json.loads(kanoa_pricing_file.read_text())["openai"]
    assert "ghost-model" not in prices and "kept-model" in prices


def test_a_damaged_record_is_searched_for_where_it_ran():
    from kanoa_local.deploy.reconcile import salvage

    state.deployments_dir().mkdir(parents=True, exist_ok=True)
    state.record_path("cut2").write_text('{"schema_version": 3, "name": "cut2", "place": {"kind": "docker", '
                                         '"nodes": [{"rank": 0, "docker_host": "ssh://me@gpu-a", "addr')
    hosts, places, named = salvage("cut2")
    assert hosts[0] == "ssh://me@gpu-a" and named == ["ssh://me@gpu-a"] and places == []
    state.record_path("cut2").write_text('{"schema_version": 3, "name": "cut2", "place": {"kind": "k8s", '
                                         '"namespace": "lab", "context": null, "kubeconfig": "/k/c')
    hosts, places, named = salvage("cut2")
    assert places[0].namespace == "lab" and named == ["Kubernetes namespace lab"]
    state.record_path("cut2").unlink()
