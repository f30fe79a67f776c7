"""Deployments kanoa-local started: one JSON file each in the state dir, plus an API key file.

The state files are a cache for the process runtime's pid and log file and for what `up`
planned; Docker labels are the truth for containers. Writes are atomic (temp file + replace),
key files are created with mode 0600, and a corrupt file is skipped with a note rather than
breaking `ps`.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from .engine.spec import LaunchSpec
from .errors import ConfigError, DeploymentNotFound
from .hardware import Model
from .settings import state_dir

#: the estimate the kanoa docs give for a local model: about $0.10 per million tokens (in + out)
DEFAULT_COST_PER_MTOK = 0.10
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class WorkerNode(Model):
    """A worker of a multi-node deployment on Docker hosts (the head is the deployment itself)."""

    rank: int
    docker_host: str | None = Field(None, description="its Docker host URL (None: the local daemon)")
    address: str
    container_id: str


class Deployment(Model):
    name: str
    runtime: Literal["docker", "process", "slurm", "k8s"]
    model_id: str
    served_model_name: str
    host: str
    port: int
    device: Literal["gpu", "cpu"]
    plan_hash: str
    created_at: float = Field(default_factory=time.time)
    api_key_file: str
    pid: int | None = None
    container_id: str | None = None
    log_file: str | None = None
    gpu_uuids: list[str] = []
    docker_host: str | None = Field(None, description="the Docker host URL when not the local daemon")
    job_id: str | None = Field(None, description="the Slurm job (slurm runtime)")
    k8s_namespace: str | None = None
    k8s_context: str | None = None
    kubeconfig: str | None = Field(None, description="the kubeconfig file `up` used (None: the default)")
    workers: list[WorkerNode] = Field(default_factory=list,
                                      description="multi-node on Docker hosts: the nodes after the head")
    spec: LaunchSpec
    vision: bool = Field(False, description="the model takes images")
    max_model_len: int | None = None
    # what the handed clients use unless a call says otherwise (`up --temperature` ...)
    temperature: float | None = None
    max_tokens: int | None = None
    cost_per_mtok: float = Field(DEFAULT_COST_PER_MTOK,
                                 description="estimated USD per million tokens, input + output")

    @property
    def containers(self) -> list[tuple[str | None, str | None]]:
        """(container id, Docker host) of every node, the head first."""
        return [(self.container_id, self.docker_host)] + [(w.container_id, w.docker_host) for w in self.workers]

    @property
    def docker_hosts(self) -> list[str | None]:
        """Every Docker daemon this deployment has a container on, the head's first."""
        return list(dict.fromkeys(h for _, h in self.containers))

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            from .engine.docker import host_address, is_remote

            # all addresses: this machine's loopback, or the remote Docker host's own address
            host = host_address(self.docker_host) if is_remote(self.docker_host) else "127.0.0.1"
        return f"http://{host}:{self.port}/v1"

    @property
    def endpoint(self) -> str:
        return self.base_url

    @property
    def model(self) -> str:
        """The name to pass as ``model`` in requests (vLLM's --served-model-name)."""
        return self.served_model_name

    def env(self) -> dict[str, str]:
        """OPENAI_BASE_URL, OPENAI_API_KEY and KANOA_LOCAL_MODEL for other tools."""
        from .client import env_exports

        return env_exports(self)

    def openai(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client for this deployment."""
        from .client import openai_client

        return openai_client(self, **kwargs)

    def interpreter(self, **overrides: Any) -> Any:
        """A kanoa ``AnalyticsInterpreter`` for this deployment, its cost estimate and vision
        guard set up; ``overrides`` (temperature, max_tokens, kb_path, ...) go to kanoa."""
        from .interpreter import interpreter

        return interpreter(self, **overrides)

    def async_openai(self, **kwargs: Any) -> Any:
        from .client import openai_client

        return openai_client(self, async_=True, **kwargs)


def check_name(name: str) -> str:
    n = name.strip().lower()
    if not n or not set(n) <= NAME_CHARS or n.startswith((".", "-")) or len(n) > 63:
        from .errors import UsageError

        raise UsageError(f"bad deployment name {name!r}",
                         remedy="use letters, digits, '-', '_' or '.', at most 63 characters")
    return n


def deployments_dir() -> Path:
    return state_dir() / "deployments"


def _path(name: str) -> Path:
    return deployments_dir() / f"{name}.json"


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(dep: Deployment) -> None:
    write_atomic(_path(dep.name), dep.model_dump_json(indent=2))


def load(name: str) -> Deployment:
    p = _path(name)
    if not p.is_file():
        raise DeploymentNotFound(f"no deployment named {name!r}",
                                 remedy="`kanoa-local ps` lists them; `kanoa-local up` starts one")
    try:
        return Deployment.model_validate_json(p.read_text())
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"the state file of {name!r} is damaged ({p})",
                          remedy=f"`kanoa-local down {name}` cleans it up") from exc


def list_all() -> tuple[list[Deployment], list[str]]:
    """Every saved deployment, and the names of state files that could not be read."""
    out, broken = [], []
    d = deployments_dir()
    if not d.is_dir():
        return out, broken
    for p in sorted(d.glob("*.json")):
        try:
            out.append(Deployment.model_validate_json(p.read_text()))
        except (ValidationError, ValueError, OSError):
            broken.append(p.stem)
    return out, broken


def remove(name: str) -> None:
    _path(name).unlink(missing_ok=True)
    key_path(name).unlink(missing_ok=True)


def key_path(name: str) -> Path:
    return state_dir() / "keys" / f"{name}.key"


def new_api_key(name: str) -> tuple[str, Path]:
    """A fresh API key for ``name``, stored readable by the owner only (0600)."""
    key = "kl-" + secrets.token_urlsafe(32)
    p = key_path(name)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    p.unlink(missing_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, p


def read_api_key(dep: Deployment) -> str:
    try:
        return Path(dep.api_key_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"the API key of {dep.name!r} is missing ({dep.api_key_file})",
                          remedy=f"`kanoa-local down {dep.name}` and `up` again") from exc


def plan_hash(spec: LaunchSpec) -> str:
    """What identifies 'the same plan': image, arguments and environment (not secrets)."""
    import hashlib

    blob = json.dumps({"image": spec.image, "argv": spec.argv, "env": spec.env,
                       "runtime": spec.runtime, "gpus": spec.gpus}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
