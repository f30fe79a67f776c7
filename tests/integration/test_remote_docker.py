"""`up`/`status`/`ps`/`logs`/`down` on another Docker host: a second real dockerd in a network
namespace (tcp:// over a private veth link), the real vLLM CPU image loaded into it, the tiny
model served there and reached from here."""

from __future__ import annotations

import json

import pytest

from kanoa_local.deploy import PsReport, StatusReport, UpResult
from tests.conftest import cli_env, default_signals, free_port, run_cli

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
    assert far.containers.get(dep.place.head.container_id).status == "running"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(dep.place.head.container_id)
    # published on the address this machine reaches that host by, not on all of its addresses,
    # and no route but health answers without the key (the guard was copied into the container)
    far_ctr = far.containers.get(dep.place.head.container_id)
    assert far_ctr.attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"] == addr
    from kanoa_local.state import read_api_key
    from tests.conftest import assert_closed_but_health

    assert_closed_but_health(up.base_url.removesuffix("/v1"), read_api_key(dep))
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
    from kanoa_local.state import owner_id

    ghost = docker_client.containers.run(cpu_image, entrypoint=["sleep", "300"], detach=True,
                                         labels={"io.kanoa-local.role": "server",
                                                 "io.kanoa-local.deployment": "ghost",
                                                 "io.kanoa-local.owner": owner_id(),
                                                 "io.kanoa-local.test-session": "x"})
    # another user's server on the same daemon: never listed, never touched
    theirs = docker_client.containers.run(cpu_image, entrypoint=["sleep", "300"], detach=True,
                                          labels={"io.kanoa-local.role": "server",
                                                  "io.kanoa-local.deployment": "theirs",
                                                  "io.kanoa-local.owner": "someone-else",
                                                  "io.kanoa-local.test-session": "x"})
    try:
        ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
        rows = {d.name: d for d in ps.deployments}
        assert rows["far"].docker_host == remote_docker and rows["far"].state == "running"
        assert rows["ghost"].docker_host is None and rows["ghost"].orphan and "theirs" not in rows
        assert run_cli("down", "ghost").returncode == 0
        assert [c.id for c in docker_client.containers.list(all=True, filters={"label": "io.kanoa-local.deployment=ghost"})] == []
        theirs.reload()
        assert theirs.status == "running"
    finally:
        for c in (ghost, theirs):
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - already removed by `down`
                pass
    # a busy port on the remote host: one line, nothing left behind there
    busy = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", remote_docker,
                   "--name", "far2", "--port", str(port), timeout=300)
    assert busy.returncode == 6 and "port is already in use" in busy.stderr and "Traceback" not in busy.stderr
    assert [c.name for c in far.containers.list(all=True)] == ["kanoa-far"]
    # the record is damaged (cut short, its end lost): what is left still names the host, so
    # `down far` removes the container there, not only what runs on this machine
    from kanoa_local import state

    path = state.record_path("far")
    text = path.read_text()
    path.write_text(text[: text.index('"container_id"') + 30])
    assert "far" in PsReport.model_validate_json(run_cli("ps", "--json").stdout).unreadable
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
    """ssh://root@ADDR: docker-py over SSH (paramiko), a key and known_hosts in the user's ~/.ssh.
    The server stays on the remote host's loopback (nobody on its network reaches the port) and
    is reached through an SSH tunnel (OpenSSH, $KANOA_LOCAL_SSH naming the test's config) that
    `up` opens, the hand-off reopens after it is killed, and `down` closes."""
    import socket

    import docker
    import psutil

    ssh_dir = tmp_path / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    addr = remote_docker_facts["KANOA_REMOTE_ADDR"]
    (ssh_dir / "known_hosts").write_text(remote_docker_facts["KANOA_REMOTE_SSH_KNOWN_HOSTS"] + "\n")
    (ssh_dir / "config").write_text(f"Host {addr}\n  IdentityFile {remote_docker_facts['KANOA_REMOTE_SSH_KEY']}\n"
                                    f"  UserKnownHostsFile {ssh_dir}/known_hosts\n")
    # OpenSSH reads the passwd entry's home, not $HOME: the test's config is named explicitly
    env = {"HOME": str(tmp_path / "home"), "KANOA_LOCAL_SSH": f"ssh -F {ssh_dir}/config"}
    url = remote_docker_facts["KANOA_REMOTE_SSH"]
    port = free_port()
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", url,
                "--name", "viassh", "--port", str(port), "--json", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    up = UpResult.model_validate_json(r.stdout)
    t = up.deployment.tunnel
    assert t is not None and up.deployment.docker_host == url and t.remote_port == port
    assert up.base_url == f"http://127.0.0.1:{t.local_port}/v1"
    assert any("SSH tunnel" in n for n in up.notes)
    far = docker.DockerClient(base_url=remote_docker_facts["KANOA_REMOTE_DOCKER"], timeout=10)
    ctr = far.containers.get(up.deployment.place.head.container_id)
    assert ctr.attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"
    with pytest.raises(OSError):                    # not on the host's network address
        socket.create_connection((addr, port), timeout=3).close()
    from kanoa_local.state import read_api_key
    from tests.conftest import assert_closed_but_health

    assert_closed_but_health(up.base_url.removesuffix("/v1"), read_api_key(up.deployment))
    st = StatusReport.model_validate_json(run_cli("status", "viassh", "--json", env=env).stdout)
    assert st.state == "running" and st.healthy and st.base_url == up.base_url
    # the tunnel dies (a dropped connection): status says so; `env` (a hand-off) reopens it
    psutil.Process(t.pid).kill()
    psutil.Process(t.pid).wait(10)
    st = StatusReport.model_validate_json(run_cli("status", "viassh", "--json", env=env).stdout)
    assert st.state == "running" and not st.healthy and "tunnel" in st.reason
    exports = json.loads(run_cli("env", "viassh", "--json", env=env).stdout)
    assert exports["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    st = StatusReport.model_validate_json(run_cli("status", "viassh", "--json", env=env).stdout)
    assert st.healthy and st.deployment.tunnel is not None and st.deployment.tunnel.pid != t.pid
    again = run_cli("tunnel", "viassh", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["reopened"] is False
    new_pid = st.deployment.tunnel.pid
    down = run_cli("down", "viassh", "--json", env=env)
    assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["viassh"]
    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE
    assert far.containers.list(all=True) == []
    # docker-py gets in but the tunnel cannot (its ssh does not know the host key): one line,
    # the container removed again, no record, no ssh process left
    no_tunnel = {**env, "KANOA_LOCAL_SSH": f"ssh -F /dev/null -o IdentityFile={remote_docker_facts['KANOA_REMOTE_SSH_KEY']} "
                                           "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"}
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", url,
                "--name", "viassh3", "--port", str(port), env=no_tunnel, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert r.returncode != 0 and len(errors) == 1 and "SSH tunnel" in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert far.containers.list(all=True) == []
    assert json.loads(run_cli("ps", "--json", env=env).stdout)["deployments"] == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if f":127.0.0.1:{port}" in " ".join(p.info["cmdline"] or [])]
    # a host that refuses the key: one line
    (ssh_dir / "config").write_text(f"Host {addr}\n  IdentityFile {tmp_path}/no-such-key\n")
    (tmp_path / "no-such-key").write_text("")
    bad = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", url,
                  "--name", "viassh2", env=env, timeout=120)
    assert bad.returncode == 6 and "Traceback" not in bad.stderr, bad.stderr


def _engine_listeners(netns: str | None = None) -> list[tuple[str, int, str]]:
    """(address, port, process) of every TCP listener of the engine's processes in a network
    namespace (None: this one), read with `ss` inside it."""
    import re
    import subprocess

    cmd = ["ss", "-ltnpH"] if netns is None else ["nsenter", f"--net={netns}", "ss", "-ltnpH"]
    out = []
    for line in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines():
        m = re.search(r"LISTEN\s+\d+\s+\d+\s+(\S+):(\d+)\s.*users:\(\(\"([^\"]+)\"", line)
        if m and (m.group(3).startswith("VLLM") or m.group(3).startswith("python")):
            out.append((m.group(1).strip("[]"), int(m.group(2)), m.group(3)))
    return out


def test_one_model_across_this_machine_and_the_remote_host(remote_docker, remote_docker_facts, docker_client,
                                                           cpu_image, tiny_model):
    """Multi-node on Docker hosts: the head here, a worker on the second daemon, vLLM's native
    multi-node flags (pipeline parallel 2, one layer each), gloo between the two network
    namespaces; the API on this machine's loopback; down removes both."""
    import docker

    far = docker.DockerClient(base_url=remote_docker, timeout=10)
    port = free_port()
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", "local",
                "--docker-host", remote_docker, "--name", "span", "--port", str(port), "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    up = UpResult.model_validate_json(r.stdout)
    dep = up.deployment
    assert up.base_url == f"http://127.0.0.1:{port}/v1" and dep.docker_host is None
    assert [(w.rank, w.docker_host) for w in dep.place.nodes[1:]] == [(1, remote_docker)]
    head, worker = docker_client.containers.get(dep.place.head.container_id), far.containers.get(dep.place.nodes[1].container_id)
    assert head.attrs["HostConfig"]["NetworkMode"] == worker.attrs["HostConfig"]["NetworkMode"] == "host"
    assert worker.attrs["Config"]["Entrypoint"] == ["vllm", "serve"] and "--headless" in worker.attrs["Args"]
    assert "--pipeline-parallel-size" in head.attrs["Args"] and head.attrs["Args"][-1] != "--headless"
    # the engine really spans both: the worker loaded the second stage and the head answers
    assert "PP rank 1" in worker.logs().decode(errors="replace")
    # what listens where (host networking): on the worker, only its node address; on the head,
    # the API on loopback, the engine on the node address, and torch's store on the master port
    # (port + 21501), which torch binds on every address — as up, plan and the exports say
    from kanoa_local.engine.spec import master_port

    far_addr = remote_docker_facts["KANOA_REMOTE_ADDR"]
    head_addr = dep.place.head.address
    assert {a for a, _, _ in _engine_listeners(remote_docker_facts["KANOA_REMOTE_NETNS"])} == {far_addr}
    here = _engine_listeners()
    assert ("127.0.0.1", port) in {(a, p) for a, p, _ in here}
    wild = {(a, p) for a, p, _ in here if a in ("*", "0.0.0.0", "::")}
    assert {p for _, p in wild} == {master_port(port)}, here
    assert {a for a, p, _ in here if (a, p) not in wild and p != port} == {head_addr}
    assert any("master port" in n and "every address" in n for n in up.notes)
    from kanoa_local import connect

    chat = connect("span").openai().chat.completions.create(
        model=dep.model, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert chat.usage.completion_tokens >= 1
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    row = next(d for d in ps.deployments if d.name == "span")
    assert row.nodes == 2 and row.state == "running"
    assert [d.name for d in ps.deployments].count("span") == 1      # the worker is not a second row
    human = run_cli("status", "span")
    assert human.returncode == 0 and "node 1" in human.stdout and remote_docker in human.stdout
    logs = run_cli("logs", "span", "-n", "50")
    assert logs.returncode == 0 and "--- node 1 (" in logs.stdout
    # a worker that dies takes the deployment with it: status says so, down still clears both
    worker.kill()
    st = StatusReport.model_validate_json(run_cli("status", "span", "--json").stdout)
    assert st.state == "dead" and not st.healthy
    down = run_cli("down", "span", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["span"]
    assert far.containers.list(all=True) == []
    assert not docker_client.containers.list(all=True, filters={"label": "io.kanoa-local.deployment=span"})


def test_a_worker_that_cannot_start_leaves_nothing_on_either_host(remote_docker, docker_client, cpu_image,
                                                                  tiny_model):
    """The image exists here but not on the remote host (no registry to pull from): one line,
    and the head that had started here is removed again."""
    import docker

    only_here = "kanoa-local/only-here:test"
    docker_client.images.get(cpu_image).tag(only_here)
    far = docker.DockerClient(base_url=remote_docker, timeout=10)
    try:
        r = run_cli("up", "--model-path", str(tiny_model), "--image", only_here, "--docker-host", "local",
                    "--docker-host", remote_docker, "--name", "half", "--port", str(free_port()), timeout=300)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and only_here in errors[0], r.stderr
        assert not docker_client.containers.list(all=True, filters={"label": "io.kanoa-local.deployment=half"})
        assert far.containers.list(all=True) == []
        assert "half" not in run_cli("ps", "--json").stdout
    finally:
        docker_client.images.remove(only_here)


def test_ctrl_c_during_a_multi_node_start_leaves_nothing_on_either_host(remote_docker, docker_client, cpu_image,
                                                                         tiny_model):
    import os
    import signal
    import subprocess
    import sys
    import time

    import docker

    far = docker.DockerClient(base_url=remote_docker, timeout=10)
    p = subprocess.Popen([sys.executable, "-m", "kanoa_local", "up", "--model-path", str(tiny_model), "--image",
                          cpu_image, "--docker-host", "local", "--docker-host", remote_docker, "--name", "cc2",
                          "--port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cli_env(), preexec_fn=default_signals)
    state = os.path.join(os.environ["KANOA_LOCAL_HOME"], "state", "deployments", "cc2.json")
    deadline = time.monotonic() + 120
    while not os.path.exists(state) and time.monotonic() < deadline:   # both containers started
        time.sleep(0.2)
    assert os.path.exists(state), p.stderr.read() if p.poll() is not None else "no state file"
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not docker_client.containers.list(all=True, filters={"label": "io.kanoa-local.deployment=cc2"})
    assert far.containers.list(all=True) == []
    assert not os.path.exists(state)


def test_a_docker_host_that_stops_answering_is_unknown_and_nothing_is_lost(remote_docker_facts, tiny_model,
                                                                            cpu_image):
    """The remote dockerd frozen (SIGSTOP: it accepts connections and never answers) while `up`
    waits for readiness: the start goes on (a blip is not an exit), `ps` says unknown and who
    did not answer, `down` refuses and keeps the record; once the daemon answers again all is
    as it was and `down` removes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from kanoa_local import state
    from tests.conftest import ROOT

    url, pid = remote_docker_facts["KANOA_REMOTE_DOCKER"], int(remote_docker_facts["KANOA_REMOTE_DOCKERD_PID"])
    p = subprocess.Popen([sys.executable, "-m", "kanoa_local", "up", "--model-path", str(tiny_model), "--image",
                          cpu_image, "--docker-host", url, "--name", "blip", "--port", str(free_port()), "--json"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.monotonic() + 120
    while not state.record_path("blip").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state.record_path("blip").exists(), p.stderr.read() if p.poll() is not None else "no record"
    os.kill(pid, signal.SIGSTOP)                 # mid-readiness
    try:
        ps = PsReport.model_validate_json(run_cli("ps", "--json", timeout=200).stdout)
        row = next(d for d in ps.deployments if d.name == "blip")
        assert row.state == "unknown" and url in row.reason, row
        time.sleep(5)
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-1500:]
    assert UpResult.model_validate_json(out).deployment.docker_host == url
    os.kill(pid, signal.SIGSTOP)                 # and once it serves
    try:
        d = run_cli("down", "blip", timeout=200)
        assert d.returncode == 6 and "kept" in d.stderr and "Traceback" not in d.stderr, d.stderr
        assert state.record_path("blip").exists() and state.key_path("blip").exists()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert StatusReport.model_validate_json(run_cli("status", "blip", "--json").stdout).state == "running"
    assert run_cli("down", "blip").returncode == 0 and not state.record_path("blip").exists()


def test_https_on_a_remote_docker_host(remote_docker_facts, tiny_model, cpu_image, tmp_path):
    """tcp:// with --ssl-certfile/--ssl-keyfile: the files are copied into the container before
    it starts (the key 0400; no file of this machine is mounted there), vLLM serves HTTPS on
    the host's address, and status and the handed client verify it."""
    import io
    import tarfile

    import docker

    from kanoa_local import connect
    from tests.conftest import tls_pair

    addr, url = remote_docker_facts["KANOA_REMOTE_ADDR"], remote_docker_facts["KANOA_REMOTE_DOCKER"]
    cert, key = tls_pair(tmp_path, names=f"IP:{addr}")
    port = free_port()
    r = run_cli("up", "--model-path", str(tiny_model), "--image", cpu_image, "--docker-host", url,
                "--name", "fartls", "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    up = UpResult.model_validate_json(r.stdout)
    assert up.base_url == f"https://{addr}:{port}/v1"
    far = docker.DockerClient(base_url=url, timeout=10)
    try:
        ctr = far.containers.get(up.deployment.place.head.container_id)
        assert not [m for m in ctr.attrs["Mounts"] if str(tmp_path) in m.get("Source", "")]
        stream, _ = ctr.get_archive("/opt/kanoa-local/tls/key.pem")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            assert member.mode & 0o777 == 0o400 and tar.extractfile(member).read() == key.read_bytes()
        st = StatusReport.model_validate_json(run_cli("status", "fartls", "--json").stdout)
        assert st.healthy and st.metrics is not None
        dep = connect("fartls")
        chat = dep.openai().chat.completions.create(model=dep.model, max_tokens=3,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert chat.usage.completion_tokens >= 1
    finally:
        assert run_cli("down", "fartls").returncode == 0
    assert far.containers.list(all=True) == []
