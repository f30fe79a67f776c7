"""`up`/`status`/`ps`/`logs`/`down` on another Docker host: a second real dockerd in a network
namespace (tcp:// over a private veth link), the real vLLM CPU image loaded into it, the tiny
model served there and reached from here."""

from __future__ import annotations

import json

import pytest

from kanoa_local.deploy import PsReport, StatusReport, UpResult
from tests.conftest import free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.engine, pytest.mark.scaleout]


def test_up_status_ps_down_on_a_remote_docker_host(remote_docker, docker_client, cpu_image, tiny_model):
    port = free_port()
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--host", remote_docker,
                "--name", "far", "--port", str(port), "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    up = UpResult.model_validate_json(r.stdout)
    dep = up.deployment
    assert dep.docker_host == remote_docker and dep.runtime == "docker"
    addr = remote_docker.split("//")[1].split(":")[0]
    assert up.base_url == f"http://{addr}:{port}/v1"
    # the container runs on the remote daemon, not here
    import docker

    far = docker.DockerClient(base_url=remote_docker, timeout=10)
    assert far.containers.get(dep.container_id).status == "running"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(dep.container_id)
    # the handed client reaches it from here
    from kanoa_local import connect

    chat = connect("far").openai().chat.completions.create(
        model=dep.model, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert chat.usage.completion_tokens >= 1
    st = StatusReport.model_validate_json(run_cli("status", "far", "--json").stdout)
    assert st.state == "running" and st.healthy and st.metrics.generation_tokens >= 1
    logs = run_cli("logs", "far", "-n", "200")
    assert logs.returncode == 0 and logs.stdout.strip()
    # ps spans both daemons: a labelled container on the local one shows beside the remote one
    ghost = docker_client.containers.run(cpu_image, entrypoint=["sleep", "300"], detach=True,
                                         labels={"io.kanoa-local.role": "server",
                                                 "io.kanoa-local.deployment": "ghost",
                                                 "io.kanoa-local.test-session": "x"})
    try:
        ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
        rows = {d.name: d for d in ps.deployments}
        assert rows["far"].docker_host == remote_docker and rows["far"].state == "running"
        assert rows["ghost"].docker_host is None
    finally:
        ghost.remove(force=True)
    # a busy port on the remote host: one line, nothing left behind there
    busy = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", remote_docker,
                   "--name", "far2", "--port", str(port), timeout=300)
    assert busy.returncode == 6 and "port is already in use" in busy.stderr and "Traceback" not in busy.stderr
    assert [c.name for c in far.containers.list(all=True)] == ["kanoa-far"]
    down = run_cli("down", "far", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["far"]
    assert far.containers.list(all=True) == []


def test_an_unreachable_docker_host_is_one_line(remote_docker, tiny_model, cpu_image):
    wrong = remote_docker.rsplit(":", 1)[0] + ":2999"
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", wrong)
    assert r.returncode == 6, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and wrong in lines[0] and "Traceback" not in r.stderr
    assert "listens there" in r.stderr


def test_the_same_host_over_ssh(remote_docker_facts, tiny_model, cpu_image, tmp_path):
    """ssh://root@ADDR: docker-py over SSH (paramiko), a key and known_hosts in the user's ~/.ssh."""
    ssh_dir = tmp_path / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    addr = remote_docker_facts["KANOA_REMOTE_ADDR"]
    (ssh_dir / "known_hosts").write_text(remote_docker_facts["KANOA_REMOTE_SSH_KNOWN_HOSTS"] + "\n")
    (ssh_dir / "config").write_text(f"Host {addr}\n  IdentityFile {remote_docker_facts['KANOA_REMOTE_SSH_KEY']}\n")
    env = {"HOME": str(tmp_path / "home")}
    url = remote_docker_facts["KANOA_REMOTE_SSH"]
    port = free_port()
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", url,
                "--name", "viassh", "--port", str(port), "--json", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    up = UpResult.model_validate_json(r.stdout)
    assert up.base_url == f"http://{addr}:{port}/v1" and up.deployment.docker_host == url
    st = StatusReport.model_validate_json(run_cli("status", "viassh", "--json", env=env).stdout)
    assert st.state == "running" and st.healthy
    down = run_cli("down", "viassh", "--json", env=env)
    assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["viassh"]
    # a host that refuses the key: one line
    (ssh_dir / "config").write_text(f"Host {addr}\n  IdentityFile {tmp_path}/no-such-key\n")
    (tmp_path / "no-such-key").write_text("")
    bad = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", url,
                  "--name", "viassh2", env=env, timeout=120)
    assert bad.returncode == 6 and "Traceback" not in bad.stderr, bad.stderr
