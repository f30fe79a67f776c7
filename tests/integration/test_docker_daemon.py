"""The probe and the GPU diagnosis against the real Docker daemon of this machine."""

from __future__ import annotations

import pytest

from kanoa_local.check import check
from kanoa_local.backends import docker_api as dk
from kanoa_local.errors import GpuRuntimeMissing
from kanoa_local.probe import probe
from tests.conftest import run_cli

pytestmark = pytest.mark.docker


def test_probe_sees_the_real_daemon(docker_client):
    facts = dk.daemon_facts()
    assert facts.reachable and facts.reason == "ok"
    assert facts.server_version == docker_client.version()["Version"]
    assert "runc" in facts.runtimes


def test_gpu_request_on_a_daemon_without_nvidia_runtime_is_explained(docker_client, cpu_image):
    """The daemon really answers 'could not select device driver'; we translate it."""
    from kanoa_local.bandwidth import _run_in_image

    before = {c.id for c in docker_client.containers.list(all=True)}
    with pytest.raises(GpuRuntimeMissing) as info:
        _run_in_image(cpu_image, "GPU-00000000-0000-0000-0000-000000000000", timeout=60)
    assert "could not select device driver" in info.value.message
    assert "nvidia-container-toolkit" in info.value.remedy
    after = {c.id for c in docker_client.containers.list(all=True)}
    assert after == before  # the 'Created' container of the failed start is removed


@pytest.mark.parametrize("case_name, host, reason", [
    ("nothing listens on the port", "tcp://127.0.0.1:9", "not-running"),
    ("socket file absent", "unix:///nonexistent/docker.sock", "not-running"),
])
def test_unreachable_daemon_is_a_fact_and_a_one_line_item(monkeypatch, case_name, host, reason):
    monkeypatch.setenv("DOCKER_HOST", host)
    facts = dk.daemon_facts(timeout=2)
    assert not facts.reachable and facts.reason == reason
    report = check(probe(docker=facts))
    item = next(i for i in report.items if i.id == "docker")
    assert item.status == "fail" and item.remedy
    r = run_cli("check", env={"DOCKER_HOST": host})
    assert r.returncode in (10, 11, 12) and "Traceback" not in r.stderr
    assert "Docker is not running" in r.stdout


def test_client_on_unreachable_daemon_raises_one_line_error(monkeypatch):
    from kanoa_local.errors import DockerUnavailable

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    with pytest.raises(DockerUnavailable) as info:
        dk.client(timeout=2)
    assert "tcp://127.0.0.1:9" in info.value.message and info.value.remedy
