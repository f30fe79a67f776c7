"""The registry of deployments kanoa-local started: one JSON record each in the state dir, an
API key file (0600) beside it, and one lock per name.

A record is a cache. What runs (a process, containers, a Slurm job, Kubernetes objects) is the
truth, and the runtimes find it by its labels; the record keeps what only `up` knew (the plan,
the key's file, the client defaults). Each record says which runtime owns it through its
``place`` (a discriminated union) and which schema wrote it: a record of an older kanoa-local
is read, one of a newer one is refused in one line that says so.

Writes are atomic and durable (temp file, fsync, rename, fsync of the folder). Before anything
starts, :func:`check_writable` proves the state dir can take a record, so a read-only or full
disk is said first, with nothing launched.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, computed_field

from .dockerhosts import host_address, is_remote
from .engine.spec import LaunchSpec
from .errors import ConfigError, DeploymentNotFound, KanoaError, UsageError
from .hardware import Model
from .settings import state_dir
from .statefiles import (NameBusy, StateDirError, _state_error, check_writable, lock,  # noqa: F401 - re-exported
                         write_atomic)

#: the estimate the kanoa docs give for a local model: about $0.10 per million tokens (in + out)
DEFAULT_COST_PER_MTOK = 0.10
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
#: 1: flat records (pid, container_id, job_id, k8s_* on the record); 2: a ``place`` per runtime;
#: 3: a Docker place may carry the SSH tunnel it is reached through
SCHEMA_VERSION = 3


# ----------------------------------------------------------------------------- places


class ProcessPlace(Model):
    """A vLLM server process on this machine and every process it started (its engine core and
    workers): they all carry ``launch_id`` in their environment."""

    kind: Literal["process"] = "process"
    pid: int
    started_at: float = Field(description="the process's start time (psutil), its identity with the pid")
    launch_id: str = Field(description="KANOA_LOCAL_LAUNCH in the environment of every process of it")
    log_file: str
    machine: str = Field("", description="the host it runs on (a state dir can be shared between machines)")


class DockerNode(Model):
    rank: int = 0
    docker_host: str | None = Field(None, description="its Docker host URL (None: this machine's daemon)")
    address: str | None = Field(None, description="the address the other nodes reach it by (multi-node)")
    container_id: str
    machine: str = Field("", description="for a local daemon (unix://): the host it is local to")


class SshTunnel(Model):
    """The `ssh -L` process on this machine that reaches a server kept on an ssh:// host's
    loopback: its pid and start time are its identity, as for a server process."""

    pid: int
    started_at: float
    local_port: int = Field(description="the port on this machine's loopback that leads to the server")
    remote_port: int
    docker_host: str = Field(description="the ssh:// Docker host it leads to")
    log_file: str
    machine: str = Field("", description="the host the tunnel process runs on")


class DockerPlace(Model):
    """One container per node, the head first; a single-node deployment has one."""

    kind: Literal["docker"] = "docker"
    nodes: list[DockerNode]
    tunnel: SshTunnel | None = Field(None, description="ssh:// hosts: how the head's loopback is reached from here")

    @property
    def head(self) -> DockerNode:
        return self.nodes[0]

    @property
    def hosts(self) -> list[str | None]:
        """Every Docker daemon it has a container on, the head's first."""
        return list(dict.fromkeys(n.docker_host for n in self.nodes))


class SlurmPlace(Model):
    kind: Literal["slurm"] = "slurm"
    job_id: str
    log_file: str = Field(description="the job's output file (on a shared file system or the head node)")


class K8sPlace(Model):
    kind: Literal["k8s"] = "k8s"
    namespace: str = "default"
    context: str | None = None
    kubeconfig: str | None = Field(None, description="the kubeconfig file `up` used (None: the default)")
    service: str = ""
    owner: str = Field("", description="the owner label on its objects (empty: a record from before owners)")
    uids: dict[str, str] = Field(default_factory=dict, description="'Kind/name' -> uid of what `up` created")


Place = Annotated[Union[ProcessPlace, DockerPlace, SlurmPlace, K8sPlace], Field(discriminator="kind")]


class Deployment(Model):
    schema_version: int = SCHEMA_VERSION
    name: str
    place: Place
    model_id: str
    served_model_name: str
    host: str
    port: int
    device: Literal["gpu", "cpu"]
    plan_hash: str
    created_at: float = Field(default_factory=time.time)
    api_key_file: str
    gpu_uuids: list[str] = []
    spec: LaunchSpec
    vision: bool = Field(False, description="the model takes images")
    max_model_len: int | None = None
    # what the handed clients use unless a call says otherwise (`up --temperature` ...)
    temperature: float | None = None
    max_tokens: int | None = None
    cost_per_mtok: float = Field(DEFAULT_COST_PER_MTOK,
                                 description="estimated USD per million tokens, input + output")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def runtime(self) -> str:
        """Where it runs: process, docker, slurm or k8s."""
        return self.place.kind

    @property
    def docker_host(self) -> str | None:
        """The head's Docker host URL when it is another machine's daemon."""
        return self.place.head.docker_host if isinstance(self.place, DockerPlace) else None

    @property
    def tunnel(self) -> SshTunnel | None:
        return self.place.tunnel if isinstance(self.place, DockerPlace) else None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.spec.tls is not None else "http"
        if self.tunnel is not None:
            return f"{scheme}://127.0.0.1:{self.tunnel.local_port}/v1"
        return f"{scheme}://{url_host(reach_address(self.host, self.docker_host))}:{self.port}/v1"

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


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def reach_address(listen: str, docker_host: str | None = None) -> str:
    """Where a server listening on ``listen`` is reached from here: a wildcard means this
    machine's loopback, or the remote Docker host's own address."""
    if listen in ("0.0.0.0", "::", ""):
        if docker_host and is_remote(docker_host):
            return host_address(docker_host)
        return "::1" if listen == "::" else "127.0.0.1"
    return listen


def check_name(name: str) -> str:
    n = name.strip().lower()
    if not n or not set(n) <= NAME_CHARS or n.startswith((".", "-")) or len(n) > 63:
        raise UsageError(f"bad deployment name {name!r}",
                         remedy="use letters, digits, '-', '_' or '.', at most 63 characters")
    return n


def deployments_dir() -> Path:
    return state_dir() / "deployments"


def record_path(name: str) -> Path:
    return deployments_dir() / f"{name}.json"


def key_path(name: str) -> Path:
    return state_dir() / "keys" / f"{name}.key"


def log_path(name: str) -> Path:
    return state_dir() / "logs" / f"{name}.log"


def this_machine() -> str:
    import socket

    return socket.gethostname()


def elsewhere(machine: str) -> bool:
    """Whether a place recorded on ``machine`` is on another machine than this one."""
    return bool(machine) and machine != this_machine()


def owner_id() -> str:
    """Who started a deployment: this user on this machine with this state dir. Labels carry it,
    so discovery on a shared daemon or cluster finds only this user's deployments."""
    import socket

    blob = f"{os.getuid()}@{socket.gethostname()}:{state_dir().resolve()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- records


class RecordUnreadable(ConfigError):
    """A record that cannot be used: damaged, or written by a newer kanoa-local."""


def _migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A flat record of schema 1 (kanoa-local 0.1 before the runtime layer) as schema 2."""
    raw = dict(raw)
    runtime = raw.pop("runtime", None)
    pid, cid, log = raw.pop("pid", None), raw.pop("container_id", None), raw.pop("log_file", None)
    dh, job = raw.pop("docker_host", None), raw.pop("job_id", None)
    ns, ctx, kc = raw.pop("k8s_namespace", None), raw.pop("k8s_context", None), raw.pop("kubeconfig", None)
    workers = raw.pop("workers", None) or []
    if runtime == "process":
        # schema 1 kept no start time: 0 never matches, so such a pid is never signalled
        raw["place"] = {"kind": "process", "pid": pid or 0, "started_at": 0.0, "launch_id": "",
                        "log_file": log or str(log_path(raw.get("name", "x")))}
    elif runtime == "docker":
        nodes = [{"rank": 0, "docker_host": dh, "container_id": cid or ""}]
        nodes += [{"rank": w.get("rank", i + 1), "docker_host": w.get("docker_host"), "address": w.get("address"),
                   "container_id": w.get("container_id", "")} for i, w in enumerate(workers)]
        raw["place"] = {"kind": "docker", "nodes": nodes}
    elif runtime == "slurm":
        raw["place"] = {"kind": "slurm", "job_id": job or "", "log_file": log or ""}
    elif runtime == "k8s":
        raw["place"] = {"kind": "k8s", "namespace": ns or "default", "context": ctx, "kubeconfig": kc}
    raw["schema_version"] = SCHEMA_VERSION
    return raw


def parse_record(text: str, name: str = "?") -> Deployment:
    """A record from its JSON: schema 1 is migrated, a newer schema or damage is refused."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as exc:
        raise RecordUnreadable(f"the record of {name!r} is damaged ({exc.__class__.__name__})",
                               remedy=f"`kanoa-local down {name}` removes it and whatever of it still runs") from None
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RecordUnreadable(
            f"the record of {name!r} was written by a newer kanoa-local (record schema {version}; "
            f"this one reads up to {SCHEMA_VERSION})",
            remedy="use that kanoa-local to manage it, or upgrade this one (`pip install -U kanoa-local`)",
            details={"schema_version": version})
    if version < 2:
        raw = _migrate_v1(raw)
    try:
        return Deployment.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise RecordUnreadable(f"the record of {name!r} is damaged ({where}: {first.get('msg')})",
                               remedy=f"`kanoa-local down {name}` removes it and whatever of it still runs") from None


def save(dep: Deployment) -> None:
    write_atomic(record_path(dep.name), dep.model_dump_json(indent=2))


def load(name: str) -> Deployment:
    p = record_path(name)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise DeploymentNotFound(f"no deployment named {name!r}",
                                 remedy="`kanoa-local ps` lists them; `kanoa-local up` starts one") from None
    except OSError as exc:
        raise RecordUnreadable(f"cannot read the record of {name!r} ({exc.strerror})",
                               remedy=f"check the permissions of {p}") from None
    return parse_record(text, name)


def find(name: str) -> Deployment | None:
    """The record of ``name`` or None; an unreadable one raises (it is not "not there")."""
    try:
        return load(name)
    except DeploymentNotFound:
        return None


def names() -> list[str]:
    d = deployments_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def list_all() -> tuple[list[Deployment], dict[str, str]]:
    """Every readable record, and {name: why} for the ones that are not."""
    out, broken = [], {}
    for n in names():
        try:
            out.append(load(n))
        except KanoaError as exc:
            broken[n] = exc.message
    return out, broken


def remove(name: str) -> None:
    """Forget ``name``: its record and its key (the log stays readable)."""
    for p in (record_path(name), key_path(name)):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            raise _state_error(exc, p) from exc


# ----------------------------------------------------------------------------- keys


def make_api_key() -> str:
    return "kl-" + secrets.token_urlsafe(32)


def new_api_key(name: str) -> tuple[str, Path]:
    """A fresh API key for ``name``, stored readable by the owner only (0600). Call it under
    :func:`lock`: the file is replaced atomically, never half-written."""
    key = make_api_key()
    return key, write_api_key(name, key)


def write_api_key(name: str, key: str) -> Path:
    p = key_path(name)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise _state_error(exc, p) from exc
    write_atomic(p, key + "\n", mode=0o600)
    return p


def read_api_key(dep: Deployment) -> str:
    try:
        return Path(dep.api_key_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"the API key of {dep.name!r} is missing ({dep.api_key_file})",
                          remedy=f"`kanoa-local down {dep.name}` and `up` again") from exc


def plan_hash(spec: LaunchSpec) -> str:
    """What identifies 'the same plan': image, arguments and environment (not secrets)."""
    blob = json.dumps({"image": spec.image, "argv": spec.argv, "env": spec.env,
                       "runtime": spec.runtime, "gpus": spec.gpus}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


