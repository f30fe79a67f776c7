"""One plan, rendered to each engine's own artefact: per-node `docker run` lines, an sbatch
script, Kubernetes manifests, a compose file, values for vLLM's production-stack Helm chart. Pure functions of (plan, cluster, options); the
rules the real engines enforce are checked here first (:func:`check_layout`), so a bad layout
is a one-line error before any server sees it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import UsageError
from ..hardware import Model
from ..plan.fit import Candidate

Target = Literal["docker", "slurm", "k8s", "compose", "helm"]
TARGETS: tuple[str, ...] = ("docker", "slurm", "k8s", "compose", "helm")
CONTAINER_HF = "/root/.cache/huggingface"
PORT = 8000


class Layout(Model):
    """Where the plan runs: whole GPUs on identical nodes."""
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=0)
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    hosts: list[str] = []


class ExportResult(Model):
    target: str
    model: str
    plan: str = Field(description="the chosen plan, in words")
    nodes: int
    files: list["Artefact"]
    written: list[str] = Field(default_factory=list, description="paths written (with -o DIR)")


class Artefact(Model):
    name: str = Field(description="file name")
    content: str
    mode: int = 0o644


class ExportOptions(Model):
    name: str = Field(description="deployment name (labels, object names)")
    port: int = PORT
    image: str | None = Field(None, description="override the plan's image (must be pinned)")
    namespace: str | None = None
    storage: str = Field("200Gi", description="size of the weights volume (Kubernetes)")
    storage_class: str | None = None
    startup_minutes: int = Field(30, ge=1, description="how long a start may take before probes give up")
    owner: str | None = Field(None, description="kanoa-local's owner label (set by `up`, not by exports)")
    model_dir: str | None = Field(None, description="a checkpoint directory at the same path on every node "
                                                    "(shared storage), mounted read-only instead of a hub download")


def _address(host: str) -> str:
    """A node's address; a Docker host URL (tcp://, ssh://) names it too."""
    from ..dockerhosts import host_address

    if host == "local" or host.startswith("unix://"):
        raise UsageError(f"hosts: {host!r} is this machine's Docker daemon, not an address the other "
                         "nodes can use", remedy="give each node's address (or tcp:// / ssh:// URL) in hosts")
    return host_address(host) if "://" in host else host


def layout_for(c: Candidate, nodes: int = 1, hosts: list[str] | None = None) -> Layout:
    s = c.settings
    if s is None:
        raise UsageError(f"{c.label} does not fit, so there is nothing to export",
                         remedy="`kanoa-local plan` shows what fits, and what a model would need")
    gpus = len(s.gpu_indices) if c.device == "gpu" else 0
    return Layout(nodes=max(nodes, s.pipeline_parallel_size), gpus_per_node=gpus,
                  tensor_parallel=s.tensor_parallel_size, pipeline_parallel=s.pipeline_parallel_size,
                  hosts=[_address(h) for h in hosts or []])


def require_hub_weights(c: Candidate) -> None:
    """Other machines can serve only weights they can fetch: a hub repo, not local files."""
    if c.variant.package or (c.variant.path and not c.variant.repo):
        raise UsageError(f"{c.model_name} is served from local files ({c.variant.source}), which other "
                         "machines do not have", remedy="serve a model with a Hugging Face repo there")


def check_layout(layout: Layout, image: str | None) -> None:
    """The rules vLLM, Slurm and Kubernetes enforce, checked before rendering."""
    tp, pp = layout.tensor_parallel, layout.pipeline_parallel
    if layout.gpus_per_node and tp > layout.gpus_per_node:
        raise UsageError(f"tensor parallel {tp} is more than the {layout.gpus_per_node} GPUs of a node",
                         remedy="tensor parallel stays inside a node; use more nodes (pipeline parallel)")
    if layout.gpus_per_node and pp > 1 and tp != layout.gpus_per_node:
        raise UsageError(f"tensor parallel {tp} × pipeline parallel {pp} must use every GPU: "
                         f"{layout.gpus_per_node} per node", remedy="plan again for this cluster")
    if pp > layout.nodes:
        raise UsageError(f"pipeline parallel {pp} needs {pp} nodes; the cluster has {layout.nodes}",
                         remedy="give --nodes, or a cluster file with more nodes")
    if layout.hosts and len(layout.hosts) < pp:
        raise UsageError(f"{pp} nodes are needed but {len(layout.hosts)} hosts are named",
                         remedy="name one host per node (the first is the head)")
    if image is not None and not pinned(image):
        raise UsageError(f"image {image!r} is not pinned to a version",
                         remedy="give a tag like vllm/vllm-openai:v0.33.0 (not :latest) or a digest")


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def render(target: str, c: Candidate, opts: ExportOptions, nodes: int = 1,
           hosts: list[str] | None = None) -> list[Artefact]:
    """The artefacts for ``target`` (docker, slurm, k8s, compose)."""
    from . import compose, docker, helm, k8s, slurm

    layout = layout_for(c, nodes, hosts)
    assert c.settings is not None
    image = opts.image or c.settings.image
    check_layout(layout, image)
    fn = {"docker": docker.render, "slurm": slurm.render, "compose": compose.render, "helm": helm.render,
          "k8s": k8s.render}
    if target not in fn:
        raise UsageError(f"unknown target {target!r}", remedy="one of: " + ", ".join(TARGETS))
    return fn[target](c, layout, opts.model_copy(update={"image": image}))


def server_args(c: Candidate, port: int = PORT, model_dir: str | None = None, guarded: bool = True) -> list[str]:
    """vLLM's arguments for the plan (the same as `up` passes), listening on all addresses
    inside a container/pod and node; access control is the API key plus where the port is
    published (loopback, ClusterIP). ``model_dir``: the weights are mounted at /model.
    ``guarded``: with kanoa-local's key guard, which the artefact must put on the engine's path."""
    from ..engine.spec import CONTAINER_MODEL_DIR, vllm_args

    ref = CONTAINER_MODEL_DIR if model_dir else (c.variant.repo or c.variant.path or c.model_id)
    return vllm_args(c, model_ref=ref, served_name=c.model_id, host="0.0.0.0", port=port,
                     guarded=guarded)


def node_args(layout: Layout, rank: int | str, head: str) -> list[str]:
    """vLLM's native multi-node flags for one node (none on a single node)."""
    from ..engine.spec import multinode_args

    return multinode_args(layout.pipeline_parallel, rank, head)


ExportResult.model_rebuild()
