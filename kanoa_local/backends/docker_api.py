"""The Docker boundary: the only module that imports ``docker`` (docker-py).

docker-py errors are translated here into :mod:`kanoa_local.errors` classes, with a remedy.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import DockerUnavailable, EngineError, GpuRuntimeMissing, ImageUnavailable, NameTaken
from ..dockerhosts import LOCAL_SOCKET, classify_unreachable, host_address, is_remote, is_ssh  # noqa: F401 - part of this boundary's surface
from ..hardware import DockerFacts

#: What the daemon answers when a GPU is requested and no NVIDIA runtime is registered.
NO_GPU_DRIVER_MARK = "could not select device driver"

#: Every container kanoa-local starts carries this label (value: what it is for).
ROLE_LABEL = "io.kanoa-local.role"

GPU_RUNTIME_REMEDY = (
    "install the NVIDIA Container Toolkit (nvidia-container-toolkit), run "
    "`nvidia-ctk runtime configure --runtime=docker` and restart Docker")


def gpu_requests(uuids: list[str] | None) -> list:
    """Docker device requests for these GPUs (by UUID: NVML and CUDA order GPUs differently),
    or all GPUs when ``uuids`` is None."""
    import docker

    if uuids is None:
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [docker.types.DeviceRequest(device_ids=list(uuids), capabilities=[["gpu"]])]


def client(timeout: float = 10, host: str | None = None) -> Any:
    """A docker-py client for ``host`` (a Docker host URL: unix://, tcp://, ssh://), else the
    daemon of $DOCKER_HOST (or the local socket)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency
        raise DockerUnavailable("the docker Python package is missing",
                                remedy="pip install docker") from exc
    use_ssh_client = False
    if host and host.startswith("ssh://"):
        # paramiko (kanoa-local[ssh]) when installed, else the system's ssh (its own config)
        try:
            import paramiko  # noqa: F401
        except ImportError:
            if shutil.which("ssh") is None:
                raise DockerUnavailable(f"cannot reach {host}: ssh:// needs an SSH client",
                                        remedy="pip install 'kanoa-local[ssh]' (paramiko), or install "
                                               "OpenSSH's ssh") from None
            use_ssh_client = True
    try:
        if host:
            c = docker.DockerClient(base_url=host, timeout=int(timeout), use_ssh_client=use_ssh_client)
        else:
            c = docker.from_env(timeout=timeout)
        c.ping()
        return c
    except docker.errors.DockerException as exc:
        reason, remedy = classify_unreachable(exc)
        where = host or os.environ.get("DOCKER_HOST") or "the local socket"
        if is_remote(where):
            remedy = (f"check that {host_address(where)} is reachable from here and that its dockerd "
                      "listens there (dockerd -H tcp://ADDR:2375, TLS for anything but a private "
                      "link; for ssh://, that `ssh HOST docker info` works)")
        raise DockerUnavailable(f"cannot reach the Docker daemon at {where} ({reason})",
                                remedy=remedy, details={"reason": reason}) from exc
    except Exception as exc:  # noqa: BLE001 - SSH (paramiko) and socket errors of a remote host
        if not is_remote(host):
            raise
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DockerUnavailable(f"cannot reach the Docker daemon at {host}: {type(exc).__name__}: {why}",
                                remedy="check that `ssh` to that host works with your key and that "
                                       "it knows the host (~/.ssh/known_hosts)" if host and host.startswith("ssh://")
                                else "check the address and the network",
                                details={"reason": "error"}) from exc


@contextmanager
def translate_errors(image: str | None = None) -> Iterator[None]:
    """Turn docker-py errors raised inside the block into kanoa-local errors."""
    import docker

    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageUnavailable(f"the image {image or ''} is not on this Docker host",
                               remedy="pull it while online (`docker pull IMAGE`) or load it "
                                      "(`docker load -i FILE`)") from exc
    except docker.errors.APIError as exc:
        text = str(exc)
        from ..engine.diagnose import diagnose

        d = diagnose(text)
        if d.kind in ("driver-too-old", "port-in-use", "shm-too-small", "bind-address"):
            raise EngineError(f"Docker could not start the container: {d.cause}", remedy=d.remedy,
                              details={"kind": d.kind}) from exc
        if NO_GPU_DRIVER_MARK in text:
            raise GpuRuntimeMissing(
                "Docker cannot give containers a GPU: no NVIDIA runtime is registered with "
                "the daemon (it answered 'could not select device driver \"\" with "
                "capabilities: [[gpu]]')", remedy=GPU_RUNTIME_REMEDY) from exc
        raise EngineError(f"Docker refused: {exc.explanation or text}",
                          remedy="see `docker info` and the daemon's log") from exc
    except daemon_errors() as exc:
        reason, remedy = classify_unreachable(exc)
        raise DockerUnavailable(f"lost the Docker daemon ({reason}): {exc}", remedy=remedy) from exc


def daemon_facts(timeout: float = 3, host: str | None = None) -> DockerFacts:
    """What the Docker daemon can do, without raising: reachability, version, GPU support."""
    given = host
    host = host or os.environ.get("DOCKER_HOST") or None
    local = not is_remote(host)
    hook = bool(local and (shutil.which("nvidia-container-runtime-hook")
                           or shutil.which("nvidia-container-toolkit")))
    try:
        c = client(timeout=timeout, host=given)
    except DockerUnavailable as exc:
        return DockerFacts(reachable=False, reason=exc.details.get("reason", "error"),
                           detail=exc.remedy, host=host, nvidia_hook=hook)
    try:
        info = c.info()
        version = c.version().get("Version")
    except Exception as exc:  # noqa: BLE001 - report, never crash the probe
        return DockerFacts(reachable=False, reason="error", detail=str(exc), host=host)
    finally:
        c.close()
    cdi_dirs = list(info.get("CDISpecDirs") or [])
    nvidia_cdi = False
    if local:
        for d in cdi_dirs:
            p = Path(d)
            if p.is_dir() and any("nvidia" in f.name for f in p.iterdir()):
                nvidia_cdi = True
    return DockerFacts(
        reachable=True, host=host, server_version=version,
        runtimes=sorted((info.get("Runtimes") or {}).keys()),
        default_runtime=info.get("DefaultRuntime"), cdi_spec_dirs=cdi_dirs,
        nvidia_cdi=nvidia_cdi, nvidia_hook=hook)


# ----------------------------------------------------------------------------- serving containers
# Each function takes a client: one per host per command (kanoa_local.runtimes.docker.Clients).

OWNER_LABEL = "io.kanoa-local.owner"
DEPLOYMENT_LABEL = "io.kanoa-local.deployment"


def pull(c: Any, image: str, on_progress: Any = None, where: str = "this Docker host") -> None:
    """Pull ``image`` (name:tag or name@sha256:digest, parsed by docker-py) with progress
    (bytes done, bytes total) summed over its layers."""
    import docker
    from docker.utils import parse_repository_tag

    repo, ref = parse_repository_tag(image)
    done: dict[str, tuple[int, int]] = {}
    try:
        # a digest goes in the tag parameter too: the Engine API reads "sha256:..." there as one
        for ev in c.api.pull(repo, tag=ref or "latest", stream=True, decode=True):
            if "error" in ev:
                raise docker.errors.APIError(ev["error"])
            detail = ev.get("progressDetail") or {}
            if ev.get("id") and detail.get("total"):
                done[ev["id"]] = (detail.get("current", 0), detail["total"])
            if on_progress and done:
                on_progress(sum(d for d, _ in done.values()), sum(t for _, t in done.values()))
    except daemon_errors() as exc:
        why = getattr(exc, "explanation", None) or str(exc)
        raise ImageUnavailable(
            f"the image {image} is not on {where} and could not be pulled ({why.strip()[:160]})",
            remedy="pull it where a registry is reachable and `docker save`/`docker load` it here, "
                   "or pass --image with one that is here") from exc


def run_server(c: Any, spec: Any, *, name: str, secrets_env: dict[str, str], gpu_uuids: list[str] | None,
               extra_labels: dict[str, str], on_pull: Any = None, remote: bool = False, where: str = "",
               node: Any = None, on_created: Any = None, files: bytes | None = None) -> str:
    """Create and start the vLLM container of ``spec``; its id. A missing image is pulled (with
    progress). ``on_created(id)`` is told the id before the start, so a cleanup knows it even
    when the start fails or is interrupted. ``files``: a tar unpacked at / before the start.

    ``node`` (a :class:`~kanoa_local.engine.spec.NodeLaunch`) makes it one node of a multi-node
    deployment: host networking (the ranks reach each other directly), a hostname that resolves
    to the node's own address (the address torch's gloo announces), and ``vllm serve`` as the
    entrypoint of a worker (only it knows --headless)."""
    import docker

    image = spec.image
    img = None
    try:
        img = c.images.get(image)
    except docker.errors.ImageNotFound:
        pull(c, image, on_pull, where=where or "this Docker host")
    except daemon_errors() as exc:
        reason, remedy = classify_unreachable(exc)
        raise DockerUnavailable(f"lost the Docker daemon{' at ' + where if where else ''} ({reason})",
                                remedy=remedy) from exc
    with translate_errors(image):
        for m in spec.mounts:
            if not m.read_only and not remote:   # a remote daemon creates its own
                Path(m.source).mkdir(parents=True, exist_ok=True)
        env = {**spec.env, **secrets_env}
        img = img or c.images.get(image)       # pulled just now: read it once more
        image_env = dict(e.split("=", 1) for e in (img.attrs.get("Config") or {}).get("Env") or [] if "=" in e)
        if env.get("PYTHONPATH") and image_env.get("PYTHONPATH"):   # extend the image's own, never replace it
            env["PYTHONPATH"] += ":" + image_env["PYTHONPATH"]
        for k in spec.secret_env:
            if k not in env and os.environ.get(k):
                env[k] = os.environ[k]          # HF_TOKEN passes through, never stored
        kwargs: dict[str, Any] = dict(
            command=list(spec.argv), name=f"kanoa-{name}", detach=True, environment=env,
            ports={"8000/tcp": (spec.host, spec.port)},
            volumes={m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts},
            labels={**spec.labels, **extra_labels})
        if node is not None:
            del kwargs["ports"]
            kwargs.update(network_mode="host", hostname=node.hostname,
                          extra_hosts={node.hostname: node.address})
            if node.entrypoint:
                kwargs["entrypoint"] = list(node.entrypoint)
        if spec.ipc_host:
            kwargs["ipc_mode"] = "host"
        elif spec.shm_size:
            kwargs["shm_size"] = spec.shm_size
        if spec.gpus is not None:
            kwargs["device_requests"] = gpu_requests(gpu_uuids)
        try:
            ctr = c.containers.create(image, **kwargs)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise NameTaken(f"the container name kanoa-{name} is taken on {where or 'this Docker host'} "
                                "by a container kanoa-local did not start for you",
                                remedy=f"choose another --name, or remove that container (`docker rm kanoa-{name}`) "
                                       "if it is yours") from exc
            raise
        if on_created is not None:
            on_created(ctr.id)
            _start(ctr, files)
            return ctr.id
        try:
            _start(ctr, files)
        except BaseException:
            ctr.remove(force=True)
            raise
        return ctr.id


def _start(ctr: Any, files: bytes | None) -> None:
    """Unpack ``files`` (a tar) at the created container's root, then start it."""
    if files is not None:
        ctr.put_archive("/", files)
    ctr.start()


def _silent(exc: BaseException) -> DockerUnavailable:
    return DockerUnavailable(f"the Docker daemon did not answer ({type(exc).__name__})", remedy="check that it is up")


def daemon_errors() -> tuple[type[BaseException], ...]:
    """What a daemon that fails or stops answering raises through docker-py (a read timeout is
    requests', not docker-py's)."""
    import docker
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def container_state(c: Any, cid: str) -> dict[str, Any]:
    """{state: running|exited|gone, status, exit_code, oom_killed}; a daemon that does not
    answer raises DockerUnavailable (unknown is not gone)."""
    import docker

    try:
        ctr = c.containers.get(cid)
    except docker.errors.NotFound:
        return {"state": "gone", "status": "gone", "exit_code": None, "oom_killed": False}
    except daemon_errors() as exc:
        raise _silent(exc) from exc
    st = ctr.attrs.get("State", {})
    return {"state": "running" if st.get("Running") else "exited", "status": st.get("Status"),
            "exit_code": st.get("ExitCode"), "oom_killed": bool(st.get("OOMKilled"))}


def container_logs(c: Any, cid: str, tail: int | None = None) -> str:
    import docker

    try:
        return c.containers.get(cid).logs(tail=tail or "all").decode(errors="replace")
    except docker.errors.NotFound:
        return ""
    except daemon_errors() as exc:
        raise _silent(exc) from exc


def follow_logs(c: Any, cid: str) -> Iterator[str]:
    """New lines of a container's output from now on, until it stops (docker logs -f)."""
    import time
    import docker

    try:
        stream = c.containers.get(cid).logs(stream=True, follow=True, since=int(time.time()))
    except docker.errors.NotFound:
        return
    except daemon_errors() as exc:
        raise _silent(exc) from exc
    from ..engine.lines import lines_of

    yield from lines_of(stream)


class ContainerLogFollower:
    """New log lines of a container on each call (a daemon blip reads as no new lines)."""

    def __init__(self, c: Any, cid: str) -> None:
        from ..engine.lines import LineSplitter

        self.c, self.cid, self.seen, self.split = c, cid, 0, LineSplitter()

    def __call__(self) -> list[str]:
        try:
            data = self.c.containers.get(self.cid).logs()
        except daemon_errors():
            return []
        new, self.seen = data[self.seen:], len(data)
        return self.split.feed(new)


def stop_remove(c: Any, cid: str | None, timeout: int = 20) -> bool:
    """Stop (graceful, then kill) and remove a container; False when it was not there."""
    import docker

    if not cid:
        return False
    try:
        ctr = c.containers.get(cid)
    except docker.errors.NotFound:
        return False
    except daemon_errors() as exc:
        raise _silent(exc) from exc
    with translate_errors():
        try:
            ctr.stop(timeout=timeout)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError:
            pass
        try:
            ctr.remove(force=True)
        except docker.errors.NotFound:
            pass
    return True


def rename(c: Any, cid: str, name: str) -> str:
    """Give container ``cid`` the name ``name``; its name before."""
    try:
        ctr = c.containers.get(cid)
        was = ctr.name
        ctr.rename(name)
        return was
    except daemon_errors() as exc:
        raise _silent(exc) from exc


def find_servers(c: Any, deployment: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
    """kanoa-local's server containers (all states), found by label — ``owner``'s only when
    given: id, name, status, labels. A daemon that does not answer raises DockerUnavailable."""

    filters = [f"{ROLE_LABEL}=server"]
    if deployment:
        filters.append(f"{DEPLOYMENT_LABEL}={deployment}")
    if owner:
        filters.append(f"{OWNER_LABEL}={owner}")
    try:
        ctrs = c.containers.list(all=True, filters={"label": filters})
    except daemon_errors() as exc:
        raise _silent(exc) from exc
    return [{"id": x.id, "name": x.name, "status": x.status, "labels": dict(x.labels)} for x in ctrs]
