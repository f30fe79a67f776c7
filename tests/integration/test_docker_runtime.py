"""`up` on the Docker runtime with the real daemon and the locally built vLLM CPU image: the
lifecycle, the NVIDIA-runtime diagnosis of a GPU plan on this GPU-less daemon, a missing image."""

from __future__ import annotations

import os

import pytest

from kanoa_local.deploy import PsReport, StatusReport, UpResult
from tests.conftest import SESSION_ID, free_port, http, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.engine]


@pytest.fixture
def names(docker_client):
    """Deployment names for this test; whatever carries them is removed afterwards."""
    used: list[str] = []

    def make(tag: str) -> str:
        used.append(f"{tag}-{SESSION_ID}")
        return used[-1]

    yield make
    for n in used:
        for c in docker_client.containers.list(all=True, filters={"label": f"io.kanoa-local.deployment={n}"}):
            c.remove(force=True)


def _servers(docker_client, name):
    return docker_client.containers.list(all=True, filters={"label": f"io.kanoa-local.deployment={name}"})


def test_lifecycle_on_the_docker_runtime(docker_client, cpu_image, tiny_model, names):
    name, port = names("dk"), free_port()
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--name", name,
                "--port", str(port), "--json", timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    res = UpResult.model_validate_json(r.stdout)
    assert res.deployment.runtime == "docker"
    [ctr] = _servers(docker_client, name)
    ctr.reload()
    # published on loopback only, labelled, the key never in the labels
    binding = ctr.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1" and binding["HostPort"] == str(port)
    key = open(res.api_key_file).read().strip()
    assert ctr.labels["io.kanoa-local.model"] and key not in str(ctr.labels)
    assert oct(os.stat(res.api_key_file).st_mode & 0o777) == "0o600"
    status, _ = http("POST", f"{res.base_url}/completions", api_key=key,
                     body={"model": res.deployment.served_model_name, "prompt": "total sales", "max_tokens": 2})
    assert status == 200
    assert http("GET", f"{res.base_url}/models")[0] == 401
    # every route but health is closed: the guard was copied into the container
    from tests.conftest import assert_closed_but_health

    assert_closed_but_health(res.base_url.removesuffix("/v1"), key)
    assert ctr.attrs["Config"]["Env"].count("PYTHONPATH=/opt/kanoa-local") == 1
    st = StatusReport.model_validate_json(run_cli("status", name, "--json").stdout)
    assert st.healthy and st.metrics.generation_tokens >= 1
    assert "Application startup complete" in run_cli("logs", name).stdout
    # `logs -f` follows the container's own output until it stops
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    follow = subprocess.Popen([sys.executable, "-m", "kanoa_local", "logs", "-f", name], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    for _ in range(3):
        http("POST", f"{res.base_url}/completions", api_key=key,
             body={"model": res.deployment.served_model_name, "prompt": "more", "max_tokens": 2})
    time.sleep(2)
    assert run_cli("down", name).returncode == 0
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    # what was there, then the three requests made while following (uvicorn's access lines)
    assert out.count("Application startup complete") == 1
    assert out.count('"POST /v1/completions') >= 4, out[-1500:]
    assert _servers(docker_client, name) == []
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []


def test_gpu_plan_on_a_daemon_without_the_nvidia_runtime(docker_client, cpu_image, tiny_model, names):
    """A real 'could not select device driver' from this daemon → one line, nothing left."""
    name = names("gpu")
    r = run_cli("up", "--gpu", "l4", "--model-path", str(tiny_model), "--image", cpu_image,
                "--name", name, "--port", str(free_port()))
    assert r.returncode == 6, r.stderr
    assert "NVIDIA runtime" in r.stderr and "nvidia-ctk" in r.stderr and "Traceback" not in r.stderr
    assert _servers(docker_client, name) == []
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []


def test_missing_image_says_how_to_get_one(docker_client, tiny_model, names):
    r = run_cli("up", "--model-path", str(tiny_model), "--image", "kanoa-local/no-such-image:0",
                "--name", names("noimg"))
    # a real pull attempt: no registry is reachable from these machines
    assert r.returncode == 6 and "could not be pulled" in r.stderr and "docker load" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_orphan_container_is_listed_removed_and_never_blocks_up(docker_client, cpu_image, tiny_model, names):
    """A container whose record is lost (a crash, SIGKILL of `up`): `ps` lists it, `up` of its
    name removes it and starts anew (no raw name-conflict), `down NAME` removes an orphan."""
    from kanoa_local import state

    name = names("orph")
    first = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--name", name,
                    "--port", str(free_port()), "--json", timeout=400)
    assert first.returncode == 0, first.stderr[-1500:]
    old = UpResult.model_validate_json(first.stdout).deployment.place.head.container_id
    state.record_path(name).unlink()
    rows = {d.name: d for d in PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments}
    assert rows[name].orphan and rows[name].state == "running" and rows[name].container_id == old[:12]
    again = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--name", name,
                    "--port", str(free_port()), "--json", timeout=400)
    assert again.returncode == 0, again.stderr[-1500:]
    res = UpResult.model_validate_json(again.stdout)
    assert any("no record" in n for n in res.notes) and res.deployment.place.head.container_id != old
    assert [c.id for c in _servers(docker_client, name)] == [res.deployment.place.head.container_id]
    state.record_path(name).unlink()
    assert run_cli("down", name).returncode == 0
    assert _servers(docker_client, name) == []


def test_an_image_by_digest_is_pulled_by_its_digest(docker_client, tiny_model, names):
    """`repo@sha256:...` goes to the daemon whole (docker-py's parser), not split at the last ':'."""
    ref = "kanoa-local/no-such-image@sha256:" + "0" * 64
    r = run_cli("up", "--model-path", str(tiny_model), "--image", ref, "--name", names("dig"))
    assert r.returncode == 6 and "could not be pulled" in r.stderr, r.stderr
    assert "invalid reference format" not in r.stderr and "Traceback" not in r.stderr


def test_the_guard_extends_an_images_own_python_path(docker_client, cpu_image, tiny_model, names):
    """An image that sets PYTHONPATH keeps it: kanoa-local's guard folder goes in front."""
    import io

    from kanoa_local.backends import docker_api as dk
    from kanoa_local.engine import guard
    from kanoa_local.engine.spec import launch_spec
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import load_preset
    from kanoa_local.unlisted import entry_from_directory
    from kanoa_local.catalog import load_catalog

    tag = f"kanoa-local-test/pythonpath:{names('pp')}"
    img, _ = docker_client.images.build(fileobj=io.BytesIO(f"FROM {cpu_image}\nENV PYTHONPATH=/opt/theirs\n".encode()),
                                        tag=tag, rm=True)
    try:
        entry = entry_from_directory(tiny_model)
        cat = load_catalog(user=False)
        cat = cat.model_copy(update={"models": {**cat.models, entry.id: entry}})
        c = plan(load_preset("no-driver"), cat, PlanRequest(model=entry.id, offline=True)).chosen
        from kanoa_local.hub import engine_caches

        spec = launch_spec(c, deployment=names("pp"), port=free_port(), runtime="docker", model_dir=str(tiny_model),
                           **engine_caches())
        spec = spec.model_copy(update={"image": tag})
        cid = dk.run_server(docker_client, spec, name=names("pp"), secrets_env={"VLLM_API_KEY": "kl-x"},
                            gpu_uuids=None, extra_labels={}, files=guard.tar_archive())
        try:
            env = docker_client.containers.get(cid).attrs["Config"]["Env"]
            assert "PYTHONPATH=/opt/kanoa-local:/opt/theirs" in env, env
        finally:
            dk.stop_remove(docker_client, cid, timeout=2)
    finally:
        docker_client.images.remove(tag, force=True)
