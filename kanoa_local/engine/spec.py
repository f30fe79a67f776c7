"""A planned candidate → exactly what to start: image, vLLM arguments, environment, mounts,
ports and labels. Pure (no I/O), so `plan` can print the command `up` will run and tests can
pin it.

Secrets never enter the spec's argv: the API key travels as ``VLLM_API_KEY`` and the Hugging
Face token as ``HF_TOKEN`` in the container's environment, and the printed command refers to
them as ``$VLLM_API_KEY`` / ``$HF_TOKEN``.
"""

from __future__ import annotations

import json
import shlex
from typing import Literal

from pydantic import Field

from . import guard
from .tls import TlsFiles
from ..catalog import version_tuple
from ..hardware import Model
from ..images import CPU_REPO
from ..plan.fit import Candidate, PlanResult

CONTAINER_PORT = 8000
CONTAINER_HF_CACHE = "/root/.cache/huggingface/hub"   # the hub cache under the image's HF home
CONTAINER_VLLM_CACHE = "/root/.cache/vllm"
CONTAINER_MODEL_DIR = "/model"
LABEL_PREFIX = "io.kanoa-local."
DEFAULT_CPU_IMAGE = f"{CPU_REPO}:v0.33.0-x86_64"


class Mount(Model):
    source: str
    target: str
    read_only: bool = False


class LaunchSpec(Model):
    runtime: Literal["docker", "process"]
    device: Literal["gpu", "cpu"] = "gpu"
    image: str | None = None
    argv: list[str] = Field(description="arguments after the image's entrypoint")
    env: dict[str, str] = Field(default_factory=dict, description="values; secrets appear as names only")
    secret_env: list[str] = Field(default_factory=list, description="passed through from the caller, never stored")
    mounts: list[Mount] = []
    host: str = "127.0.0.1"
    port: int = 8000
    gpus: list[int] | None = None
    shm_size: str | None = None
    ipc_host: bool = False
    labels: dict[str, str] = {}
    served_model_name: str
    guard_dir: str | None = Field(None, description="where the key guard module is placed for the engine "
                                                    "(inside the container; on this machine for a process)")
    tls: TlsFiles | None = Field(None, description="the certificate and key it serves HTTPS with (paths here)")

    def docker_command(self) -> str:
        """The equivalent `docker run` line, for people who want to run it by hand."""
        parts = ["docker", "run", "-d", "--name", f"kanoa-{self.labels.get(LABEL_PREFIX + 'deployment', 'default')}"]
        if self.gpus is not None:
            parts += ["--gpus", f'"device={",".join(str(i) for i in self.gpus)}"' if self.gpus else "all"]
        parts += ["-p", f"{self.host}:{self.port}:{CONTAINER_PORT}"]
        if self.ipc_host:
            parts.append("--ipc=host")
        elif self.shm_size:
            parts += ["--shm-size", self.shm_size]
        mounts = list(self.mounts)
        if self.guard_dir:      # `up` copies it into the container; by hand, mount it
            mounts.append(Mount(source=str(guard.local_dir()), target=self.guard_dir, read_only=True))
        for m in mounts:
            parts += ["-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
        for k, v in self.env.items():
            parts += ["-e", f"{k}={v}"]
        for k in self.secret_env:
            parts += ["-e", k]
        for k, v in self.labels.items():
            parts += ["--label", f"{k}={v}"]
        parts.append(self.image or "?")
        return " ".join(shlex.quote(p) if not p.startswith('"') else p for p in parts) + " \\\n  " + \
            " ".join(shlex.quote(a) for a in self.argv)

    def process_command(self, python: str = "python") -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        if self.guard_dir:
            env = f"PYTHONPATH={shlex.quote(self.guard_dir)}" + (" " + env if env else "")
        return (env + " " if env else "") + f"{python} -m vllm.entrypoints.openai.api_server " + \
            " ".join(shlex.quote(a) for a in self.argv)


def vllm_args(c: Candidate, *, model_ref: str, served_name: str, host: str, port: int,
              guarded: bool = True) -> list[str]:
    """vLLM's arguments for ``c``. ``guarded``: load kanoa-local's key guard (every route but
    health needs the key); the engine's environment must then have the module on its path."""
    s = c.settings
    assert s is not None, "only a fitting candidate can be launched"
    args = ["--model", model_ref, "--served-model-name", served_name, "--host", host, "--port", str(port)]
    args += ["--max-model-len", "auto" if s.auto_context else str(s.max_model_len)]
    if s.dtype and (c.device == "cpu" or s.dtype != "bfloat16"):
        args += ["--dtype", s.dtype]
    if s.quantization:
        args += ["--quantization", s.quantization]
        if s.quantization == "bitsandbytes":
            args += ["--load-format", "bitsandbytes"]
    if s.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", s.kv_cache_dtype]
    if s.gpu_memory_utilization is not None:
        g = s.gpu_memory_utilization      # as planned or given: never rounded to another value
        args += ["--gpu-memory-utilization", f"{g:.2f}" if round(g, 2) == g else f"{g:g}"]
    if s.kv_cache_memory_bytes:
        args += ["--kv-cache-memory-bytes", str(s.kv_cache_memory_bytes)]
    if s.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(s.pipeline_parallel_size)]
    if s.limit_images is not None:
        # JSON from 0.8; before, vLLM parsed KEY=VALUE pairs (nullable_kvs) and refused JSON
        old = s.vllm_version is not None and version_tuple(s.vllm_version) < (0, 8)
        # videos named (0 unless asked): vLLM gives a modality it is not told about 999 and then
        # profiles a dummy video sized from --max-model-len (up to 7 images' worth on Qwen-VL)
        args += ["--limit-mm-per-prompt", f"image={s.limit_images}" if old
                 else json.dumps({"image": s.limit_images, "video": s.limit_videos or 0}, separators=(",", ":"))]
    if s.max_num_seqs:
        args += ["--max-num-seqs", str(s.max_num_seqs)]
    if s.trust_remote_code:
        args.append("--trust-remote-code")
    if s.sampling:
        args += ["--override-generation-config", json.dumps(s.sampling, separators=(",", ":"), sort_keys=True)]
    if s.enforce_eager:
        args.append("--enforce-eager")
    if s.compilation_config:
        args += ["--compilation-config", json.dumps(s.compilation_config, separators=(",", ":"), sort_keys=True)]
    if guarded:
        args += guard.args()
    return args


def launch_spec(c: Candidate, *, deployment: str = "default", port: int = 8000, host: str = "127.0.0.1",
                runtime: Literal["docker", "process"] = "docker", hf_cache: str = "~/.cache/huggingface/hub",
                vllm_cache: str = "~/.cache/vllm", cpu_image: str | None = None,
                model_dir: str | None = None) -> LaunchSpec:
    """What `up` starts for candidate ``c``. ``model_dir`` is the local directory of the
    weights when they do not come from the hub (a path variant or a packaged model)."""
    s = c.settings
    assert s is not None, "only a fitting candidate can be launched"
    v = c.variant
    local = model_dir or v.path
    mounts: list[Mount] = []
    env: dict[str, str] = {}
    if runtime == "docker":
        model_ref = CONTAINER_MODEL_DIR if local else (v.repo or "")
        guard_dir = guard.CONTAINER_DIR
        env["PYTHONPATH"] = guard_dir
        bind = "0.0.0.0"          # inside the container; published on `host` only
        mounts.append(Mount(source=hf_cache, target=CONTAINER_HF_CACHE))
        mounts.append(Mount(source=vllm_cache, target=CONTAINER_VLLM_CACHE))
        if local:
            mounts.append(Mount(source=local, target=CONTAINER_MODEL_DIR, read_only=True))
    else:
        model_ref = local or v.repo or ""
        bind = host
        guard_dir = str(guard.local_dir())
    if not model_ref:
        raise ValueError(f"{v.source}: a packaged or local variant needs model_dir")
    secret_env = ["VLLM_API_KEY"]
    if v.repo and not local:
        secret_env.append("HF_TOKEN")
    if local:
        env["HF_HUB_OFFLINE"] = "1"
    if c.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kv_cache_gib or 1)
    env.update(s.engine_env)
    labels = {
        LABEL_PREFIX + "role": "server",
        LABEL_PREFIX + "deployment": deployment,
        LABEL_PREFIX + "model": c.model_id,
        LABEL_PREFIX + "precision": v.precision,
    }
    image = (s.image if c.device == "gpu" else (cpu_image or DEFAULT_CPU_IMAGE)) if runtime == "docker" else None
    return LaunchSpec(
        runtime=runtime, device=c.device, image=image,
        argv=vllm_args(c, model_ref=model_ref, served_name=c.model_id, host=bind,
                       port=CONTAINER_PORT if runtime == "docker" else port),
        env=env, secret_env=secret_env, mounts=mounts, host=host, port=port,
        gpus=s.gpu_indices if c.device == "gpu" else None,
        ipc_host=c.device == "gpu" and runtime == "docker",
        shm_size="2g" if c.device == "cpu" and runtime == "docker" else None,
        labels=labels, served_model_name=c.model_id, guard_dir=guard_dir)


#: What a worker node runs. Only ``vllm serve`` knows --headless (an engine with no API server);
#: images before vLLM 0.20 have ``python3 -m vllm.entrypoints.openai.api_server`` as their
#: entrypoint, which would ignore it and start a second server.
WORKER_ENTRYPOINT = ["vllm", "serve"]

#: what a multi-node deployment opens besides the API (said by `up` and in the exports). Seen
#: on two nodes (vllm-cpu 0.32): gloo's and vLLM's own ports listen on each node's address only
#: (its hostname resolves there, and VLLM_HOST_IP names it); torch's TCPStore on the master port
#: listens on every address of the head whatever --master-addr says (pytorch/pytorch#173909).
DISTRIBUTED_EXPOSURE = ("the nodes talk torch.distributed over the node network, which the API key does not "
                        "cover: gloo's and vLLM's ports on each node's own address, and the head's master port "
                        "(torch's rendezvous store) on every address of the head, as torch binds it: keep that "
                        "network private and firewall the master port to the nodes")

#: vLLM's default --master-port is 29501: port 8000 keeps it, the next deployment moves along
MASTER_PORT_OFFSET = 21501


def master_port(api_port: int) -> int:
    """The torch.distributed master port of a multi-node deployment serving on ``api_port``:
    one per API port (never the same for two), inside the valid range."""
    return api_port + MASTER_PORT_OFFSET if api_port + MASTER_PORT_OFFSET <= 65535 else api_port - MASTER_PORT_OFFSET


def dns_label(name: str) -> str:
    """A name every Kubernetes kind and every hostname accepts (a DNS-1035 label: lower case,
    letters, digits and '-', a letter first, at most 63)."""
    out = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name.lower())
    out = "-".join(p for p in out.split("-") if p)
    if not out or not out[0].isalpha():
        out = "k-" + out
    return out[:63].rstrip("-")


def multinode_args(nnodes: int, rank: int | str, head: str, master_port: int | None = None) -> list[str]:
    """vLLM's native multi-node flags for one node: PP across nodes over torch.distributed,
    rank 0 (the head) serves the API. None on a single node."""
    if nnodes == 1:
        return []
    args = ["--distributed-executor-backend", "mp", "--nnodes", str(nnodes), "--node-rank", str(rank),
            "--master-addr", head]
    if master_port:
        args += ["--master-port", str(master_port)]
    return args


class NodeLaunch(Model):
    """One node of a multi-node deployment on Docker hosts."""

    rank: int
    docker_host: str | None = Field(None, description="its Docker host URL (None: the local daemon)")
    address: str = Field(description="the address the other nodes reach it by")
    hostname: str = Field(description="the container's hostname, resolving to ``address`` inside it")
    entrypoint: list[str] | None = Field(None, description="overrides the image's (workers)")


def node_launches(spec: LaunchSpec, *, deployment: str, nodes: list[tuple[str | None, str]],
                  master_port: int, listen: str) -> list[tuple[LaunchSpec, NodeLaunch]]:
    """The head's and every worker's spec for ``nodes`` ((Docker host, address), head first).
    Host networking: the head's API listens on ``listen`` itself (nothing is published), every
    node announces its own address (VLLM_HOST_IP, and a hostname that resolves to it: torch's
    gloo picks the address the hostname resolves to, which on a stock host can be 127.0.1.1)."""
    head = nodes[0][1]
    out = []
    for rank, (docker_host, address) in enumerate(nodes):
        argv = list(spec.argv)
        if "--host" in argv:
            argv[argv.index("--host") + 1] = listen
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(spec.port)
        argv += multinode_args(len(nodes), rank, head, master_port)
        if rank:
            argv.append("--headless")
        node_spec = spec.model_copy(update={
            "argv": argv, "env": {**spec.env, "VLLM_HOST_IP": address},
            "labels": {**spec.labels, LABEL_PREFIX + "node-rank": str(rank)}})
        out.append((node_spec, NodeLaunch(rank=rank, docker_host=docker_host, address=address,
                                          hostname=dns_label(f"kanoa-{deployment}-{rank}"),
                                          entrypoint=WORKER_ENTRYPOINT if rank else None)))
    return out


class PlanReport(Model):
    """`kanoa-local plan`: the planner's answer and what `up` would start for it."""

    plan: PlanResult
    launch: LaunchSpec | None = None
    command: str | None = Field(None, description="the equivalent docker run line, or the process's "
                                                  "command line on the process runtime")
    runtime: Literal["docker", "process"] | None = Field(None, description="what `up` would use by default")
