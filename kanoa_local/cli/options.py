"""Options shared by several commands, and how they turn into a machine, a catalog, a start."""

from __future__ import annotations

import math
from typing import Any, Callable

import click


class Figure(click.FloatRange):
    """A finite number in a range: click's FloatRange lets nan (every comparison is false) and
    inf (above any lower bound) through."""

    name = "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv

class MmLimits(click.ParamType):
    """--limit-mm-per-prompt: a number of images (videos 0), or vLLM's own JSON form
    {"image": N, "video": M}, in which a modality it does not name gets vLLM's default, 999."""

    name = "limits"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        import json

        if isinstance(value, (int, dict)):
            return value
        text = str(value).strip()
        if text.isdigit():
            if int(text) > 999:
                self.fail(f"{text} images: vLLM allows at most 999", param, ctx)
            return int(text)
        try:
            limits = json.loads(text)
        except ValueError:
            limits = None
        if not isinstance(limits, dict) or not all(
                k in ("image", "video") and isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 999
                for k, n in limits.items()):
            self.fail(f"{value!r} is not a number of images or a JSON object like "
                      '\'{"image": 1, "video": 0}\' (0-999 each)', param, ctx)
        return limits


def machine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--hardware/--gpu/--vram/--gpus: plan or check for another machine (what-if)."""
    f = click.option("--gpus", "gpu_count", type=click.IntRange(1, 16), metavar="N",
                     help="what-if: N of the machine's (or --gpu's) GPU")(f)
    f = click.option("--vram", "vram_gb", type=Figure(1, 4096), metavar="GB",
                     help="what-if: GPU memory as sold, e.g. 16 or 24")(f)
    f = click.option("--gpu", "gpu_name", metavar="NAME",
                     help="a named GPU profile (e.g. rtx5080-egpu, l4, rtx4090, a100-80g, h100, t4)")(f)
    return click.option("--hardware", "hardware_file", type=click.Path(dir_okay=True),
                        help="a saved profile (check --save) or an NVML recording instead of this machine")(f)


def cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--nodes/--gpus-per-node/--cluster: plan for several identical nodes (what-if or a file)."""
    f = click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False), metavar="FILE",
                     help="a cluster description (TOML: nodes, gpus_per_node, gpu, vram_gb, hosts)")(f)
    f = click.option("--gpus-per-node", type=click.IntRange(1, 16), metavar="T",
                     help="what-if: GPUs in each node (same as --gpus)")(f)
    return click.option("--nodes", type=click.IntRange(1, 64), metavar="N",
                        help="what-if: N identical nodes (pipeline parallel across them)")(f)


def resolve_machine(hardware_file: str | None, gpu_name: str | None, vram_gb: float | None,
                    gpu_count: int | None, cluster_file: str | None, nodes: int | None,
                    gpus_per_node: int | None) -> tuple[Any, Any]:
    """(one node's profile, the Cluster or None) from the machine and cluster options."""
    from ..errors import UsageError

    cluster = resolve_cluster(cluster_file, nodes, gpus_per_node, gpu_name, vram_gb, gpu_count)
    if cluster is None:
        return resolve_profile(hardware_file, gpu_name, vram_gb, gpu_count, docker=False), None
    if hardware_file:
        raise UsageError("--hardware and a cluster both describe the machine", remedy="give one of them")
    return cluster.profile(), cluster


def resolve_cluster(cluster_file: str | None, nodes: int | None, gpus_per_node: int | None,
                    gpu_name: str | None, vram_gb: float | None, gpu_count: int | None) -> Any:
    """A Cluster from --cluster or the what-if options; None when neither asks for one."""
    from ..cluster import Cluster, load_cluster
    from ..errors import UsageError

    if gpus_per_node and gpu_count and gpus_per_node != gpu_count:
        raise UsageError("--gpus and --gpus-per-node disagree", remedy="give one of them")
    if cluster_file:
        if nodes or gpus_per_node:
            raise UsageError("--cluster already says the nodes and GPUs",
                             remedy="drop --nodes/--gpus-per-node, or edit the file")
        return load_cluster(cluster_file)
    if nodes is None and gpus_per_node is None:
        return None
    return Cluster(nodes=nodes or 1, gpus_per_node=gpus_per_node or gpu_count or 1, gpu=gpu_name,
                   vram_gb=vram_gb)


def catalog_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--no-user-models", is_flag=True,
                     help="ignore models.toml in the config directory")(f)
    return click.option("--models", "models_files", multiple=True, type=click.Path(dir_okay=False),
                        metavar="FILE", help="more models (TOML), merged over the bundled matrix")(f)


def resolve_profile(hardware_file: str | None, gpu_name: str | None, vram_gb: float | None = None,
                    gpu_count: int | None = None, docker: bool = True) -> Any:
    from ..errors import UsageError
    from ..hardware import what_if
    from ..probe import load_preset, load_profile, probe

    if hardware_file is not None and gpu_name is not None:
        raise UsageError("--hardware and --gpu both name a machine", remedy="give one of them")
    if hardware_file is not None:
        if not hardware_file.strip():
            raise UsageError("--hardware needs a file name",
                             remedy="give a file written by `kanoa-local check --save FILE`")
        profile = load_profile(hardware_file)
    elif gpu_name is not None:
        profile = load_preset(gpu_name)
    else:
        profile = probe(docker=docker)
    return what_if(profile, vram_gb=vram_gb, gpus=gpu_count)


def load_models(models_files: tuple[str, ...], no_user_models: bool) -> tuple[Any, Any]:
    from ..checkpoint import load_enriched

    return load_enriched(list(models_files), user=not no_user_models)




def trust_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--trust-remote-code", "trust_remote_code", is_flag=True,
                        help="allow a model whose repository ships Python code vLLM must run "
                             "(config.json auto_map); off: such a model is refused and its code not downloaded")(f)


def _release(_ctx: Any, param: Any, value: str | None) -> str | None:
    import re

    if value is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?", value):
        raise click.BadParameter(f"{value!r} is not a release number like 0.19 or 0.19.1", param=param)
    return value


def engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """vLLM's own arguments (PlanRequest's exact fields) that `plan`, `up`, `export` and
    `session` take, planned exactly as given: does this configuration fit, by how much, and
    what is the longest context it leaves."""
    opts: list[Callable[[Any], Any]] = [
        click.option("--max-model-len", type=click.IntRange(16, 10_000_000), metavar="TOKENS",
                     help="exactly this context (vLLM's --max-model-len): fits or not, and by how much"),
        click.option("--gpu-memory-utilization", type=Figure(0.05, 1.0), metavar="FRACTION",
                     help="the share of each GPU vLLM may use (default: what is free allows, at most 0.92)"),
        click.option("--tensor-parallel-size", type=click.IntRange(1, 64), metavar="N",
                     help="exactly N GPUs per node (default: the fewest that fit)"),
        click.option("--max-num-seqs", type=click.IntRange(1, 65536), metavar="N",
                     help="requests vLLM schedules at once (it profiles memory for that many)"),
        click.option("--limit-mm-per-prompt", type=MmLimits(), metavar="IMAGES|JSON",
                     help="vision models: images per prompt (0: text only, no encoder profiling), or vLLM's "
                          "JSON form '{\"image\":1,\"video\":1}' (as in vLLM, a modality it leaves out gets 999)"),
        click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default=None,
                     help="the KV cache dtype (default: fp8 only where it is needed)"),
        click.option("--vllm-version", "vllm_version", metavar="X.Y[.Z]", callback=_release,
                     help="plan for the image of this vLLM release (or the nearest after it kanoa-local knows; default: the newest)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def up_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Everything `up` takes besides MODEL and --name (shared with `session` and `doctor`)."""
    opts: list[Callable[[Any], Any]] = [
        click.option("--model-path", metavar="DIR", help="serve a local checkpoint directory (offline)"),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
                     help="host port (the next free one when taken)"),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="address to listen on; anything but loopback is reachable from the network. "
                          "A URL (tcp://, ssh://) means --docker-host"),
        click.option("--target", type=click.Choice(["local", "slurm", "k8s"]), default="local", show_default=True,
                     help="slurm: submit the server as a Slurm job (sbatch) and reach it on its node; "
                          "k8s: apply its manifests to the cluster of $KUBECONFIG"),
        click.option("--namespace", metavar="NS", help="k8s: the namespace (default: the context's)"),
        click.option("--no-wait", "no_wait", is_flag=True,
                     help="k8s: return once the pods are scheduled, without waiting for readiness"),
        click.option("--docker-host", "docker_host", metavar="URL", multiple=True,
                     help="run on another machine's Docker daemon: tcp://ADDR:2375 (published on that "
                          "address) or ssh://user@host (kept on its loopback, reached through an SSH tunnel). "
                          "Repeat it to serve one model across several hosts, the head first "
                          "(`local` = this machine's daemon)"),
        click.option("--runtime", type=click.Choice(["auto", "docker", "process"]), default="auto",
                     show_default=True,
                     help="docker: the vLLM image; process: vLLM from a Python interpreter (--python); "
                          "auto: docker for GPU plans or with --image, else process"),
        click.option("--image", metavar="IMAGE", help="the vLLM image to run (default: from the plan)"),
        click.option("--hardware", "hardware_file", type=click.Path(dir_okay=False),
                     help="plan for this saved profile instead of probing (e.g. a remote Docker host's)"),
        click.option("--gpu", "gpu_name", metavar="NAME", help="plan for a named GPU profile instead of probing"),
        click.option("--python", "python", metavar="PATH",
                     help="interpreter with vLLM for the process runtime (default: $KANOA_VLLM_PYTHON "
                          "or this one)"),
        click.option("--quant", "precision", metavar="PRECISION", help="preferred precision (see `plan`)"),
        click.option("--cpu", "cpu", is_flag=True, help="the CPU engine even with a GPU"),
        click.option("--offline", is_flag=True, default=None, help="no model hub (default: $HF_HUB_OFFLINE)"),
        click.option("--timeout", type=Figure(10), default=1200, show_default=True,
                     help="seconds to wait for the first token"),
        click.option("--replace", is_flag=True, help="replace a running deployment of the same name"),
        click.option("--no-retry", is_flag=True, help="do not retry with the context length vLLM says fits"),
        click.option("--temperature", type=Figure(0, 2), metavar="T",
                     help="the handed clients' default temperature"),
        click.option("--max-tokens", type=click.IntRange(1), metavar="N",
                     help="the handed clients' default answer length"),
        click.option("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (vLLM's own TLS; "
                                                           "process and Docker targets); with --ssl-keyfile"),
        click.option("--ssl-keyfile", metavar="PEM", help="the certificate's private key (unencrypted)"),
        click.option("--cost-per-mtok", type=Figure(0), metavar="USD",
                     help="estimated cost per million tokens, input + output (default 0.10)"),
        trust_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return engine_options(cluster_options(catalog_options(f)))


def run_up(ctx: click.Context, as_json: bool, model: str | None, name: str | None,
           opts: dict[str, Any]) -> Any:
    """`up` with progress on stderr (none with --json); the UpResult."""
    from .. import deploy

    from ..errors import UsageError

    opts = dict(opts)
    hosts = [None if h == "local" else h for h in (opts.pop("docker_host", None) or ())]
    hardware_file, gpu_name = opts.pop("hardware_file"), opts.pop("gpu_name")
    opts["wait"] = not opts.pop("no_wait", False)
    cluster = resolve_cluster(opts.pop("cluster_file", None), opts.pop("nodes", None),
                              opts.pop("gpus_per_node", None), gpu_name, None, None)
    if len(hosts) > 1 and cluster is not None and cluster.nodes != len(hosts):
        raise UsageError(f"the cluster has {cluster.nodes} nodes and {len(hosts)} Docker hosts are given",
                         remedy="one Docker host per node")
    opts["docker_hosts"] = hosts
    if cluster is not None:
        profile = cluster.profile()
        opts["nodes"] = cluster.nodes
        opts["cluster_hosts"] = list(cluster.hosts)
    else:
        # a remote Docker host is planned from what its daemon says, unless a profile is given
        profile = resolve_profile(hardware_file, gpu_name, docker=False) if hardware_file or gpu_name else None
    models_files = list(opts.pop("models_files") or [])
    user_models = not opts.pop("no_user_models")

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg, err=True)

    def on_plan(c: Any, runtime: str) -> None:
        say(f"Starting {c.model_name} ({c.device}, --max-model-len {c.settings.max_model_len}) "
            f"on the {runtime} runtime ...")
        if opts["host"] not in ("127.0.0.1", "localhost", "::1") and "://" not in opts["host"] and not hosts:
            say(f"warning: listening on {opts['host']}: anyone who can reach this machine can use "
                "the server with the API key")

    def on_stage(ev: Any) -> None:
        say(f"  [{ev.at_s:6.1f}s] {ev.stage}")

    from ..render import ByteProgress

    pull = ByteProgress("pulling the image", say, enabled=not as_json)
    weights = ByteProgress("weights", say, enabled=not as_json)
    try:
        return deploy.start(model, name=name, profile=profile, models_files=models_files,
                            user_models=user_models, on_plan=on_plan, on_status=lambda m: say("  " + m),
                            on_stage=on_stage, on_pull=pull, on_download=weights, **opts)
    finally:
        pull.close()
        weights.close()

