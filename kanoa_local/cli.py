"""The click shell: parse options, call one library function, render it or print --json.

This is the only place that prints or exits, and the one error boundary: a KanoaError becomes
one line ``Error: ...`` plus ``hint: ...`` on stderr and its exit code (or a JSON error object
with --json); a traceback shows only with --debug / KANOA_DEBUG=1.
Heavy modules (pydantic models, docker, rich) are imported inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import click

from . import __version__
from .errors import KanoaError, redact

EXIT_CODE_HELP = """\b
Exit codes:
  0   success (check: ready for GPU serving)
  1   error without a more specific code
  2   bad usage            3  bad file/config   4  probe failed
  5   nothing fits         6  Docker problem    7  engine did not start
  8   no such deployment
  10  check: CPU only      11 check: GPU not ready   12 check: cannot serve
  130 interrupted (Ctrl-C; what was started is cleaned up)
"""


def _json_requested(argv: list[str]) -> bool:
    return "--json" in argv


def emit_json(model: Any) -> None:
    """Print a pydantic result model as JSON on stdout (the same model the human view shows)."""
    click.echo(model.model_dump_json(indent=2))


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--json and -v on every command (-v also works before the command name)."""
    f = click.option("-v", "--verbose", "sub_verbose", count=True,
                     help="more detail (repeatable)")(f)
    return click.option("--json", "as_json", is_flag=True,
                        help="print the result as JSON (same content as the human view)")(f)


def machine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--hardware/--gpu/--vram/--gpus: plan or check for another machine (what-if)."""
    f = click.option("--gpus", "gpu_count", type=click.IntRange(1, 16), metavar="N",
                     help="what-if: N of the machine's (or --gpu's) GPU")(f)
    f = click.option("--vram", "vram_gb", type=click.FloatRange(1, 4096), metavar="GB",
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
    from .errors import UsageError

    cluster = resolve_cluster(cluster_file, nodes, gpus_per_node, gpu_name, vram_gb, gpu_count)
    if cluster is None:
        return resolve_profile(hardware_file, gpu_name, vram_gb, gpu_count, docker=False), None
    if hardware_file:
        raise UsageError("--hardware and a cluster both describe the machine", remedy="give one of them")
    return cluster.profile(), cluster


def resolve_cluster(cluster_file: str | None, nodes: int | None, gpus_per_node: int | None,
                    gpu_name: str | None, vram_gb: float | None, gpu_count: int | None) -> Any:
    """A Cluster from --cluster or the what-if options; None when neither asks for one."""
    from .cluster import Cluster, load_cluster
    from .errors import UsageError

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
    from .errors import UsageError
    from .hardware import what_if
    from .probe import load_preset, load_profile, probe

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
    from .checkpoint import load_enriched

    return load_enriched(list(models_files), user=not no_user_models)


def verbosity(ctx: click.Context, sub_verbose: int) -> int:
    return (ctx.obj or {}).get("verbose", 0) + sub_verbose


def wants_json(ctx: click.Context, as_json: bool) -> bool:
    """--json given after the command or before it (`kanoa-local --json check`)."""
    return as_json or bool((ctx.obj or {}).get("json"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODE_HELP)
@click.version_option(__version__, "--version", prog_name="kanoa-local")
@click.option("--debug", is_flag=True, help="show tracebacks for errors")
@click.option("-v", "--verbose", count=True, help="more detail (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="JSON output for the command")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, as_json: bool) -> None:
    """Run a local LLM for the kanoa analytics interpreter.

    Probe this machine, pick a model that fits, serve it with vLLM and hand over a
    configured client.
    """
    if debug:
        os.environ["KANOA_DEBUG"] = "1"
    ctx.obj = {"verbose": verbose, "json": as_json}


@cli.command(epilog=EXIT_CODE_HELP)
@json_option
@machine_options
@catalog_options
@click.option("--save", "save_file", type=click.Path(dir_okay=False),
              help="write the probed profile to FILE (JSON)")
@click.option("--bandwidth", is_flag=True,
              help="measure host-to-GPU copy bandwidth inside the vLLM image")
@click.option("--image", metavar="IMAGE", help="vLLM image for --bandwidth (default: by driver)")
@click.pass_context
def check(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None,
          gpu_name: str | None, vram_gb: float | None, gpu_count: int | None,
          models_files: tuple[str, ...], no_user_models: bool, save_file: str | None,
          bandwidth: bool, image: str | None) -> None:
    """Check this machine against kanoa-local's hardware requirements.

    GPU, VRAM tiers (12 GB minimum; 16/24 GB recommended), system RAM, PCIe link (judged on
    the maximum link), compute capability, driver vs the vLLM image, Docker and the NVIDIA
    runtime, disk space for weights; then a verdict for every model of the matrix.
    """
    from .check import check as run_check
    from .plan import plan
    from .plan.matrix import verdicts

    as_json = wants_json(ctx, as_json)
    profile = resolve_profile(hardware_file, gpu_name, vram_gb, gpu_count)
    bw = None
    if bandwidth:
        from .bandwidth import measure

        bw = measure(profile, image=image, live=hardware_file is None and gpu_name is None)
    if save_file:
        _save(save_file, profile)
    catalog, weights = load_models(models_files, no_user_models)
    models = verdicts(plan(profile, catalog, checkpoints=weights), catalog)
    report = run_check(profile, bandwidth=bw, models=models)
    if as_json:
        emit_json(report)
    else:
        from . import render

        render.check_report(report, verbose=verbosity(ctx, sub_verbose) > 0)
        if save_file:
            click.echo(f"profile saved to {save_file}", err=True)
    ctx.exit(report.exit_code)


@cli.command()
@json_option
@machine_options
@catalog_options
@click.option("--vision/--text", "vision", default=None, help="only models that read images / text-only")
@click.option("--fits", "fits_only", is_flag=True, help="only models that fit this machine")
@click.pass_context
def models(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None,
           gpu_name: str | None, vram_gb: float | None, gpu_count: int | None,
           models_files: tuple[str, ...], no_user_models: bool, vision: bool | None,
           fits_only: bool) -> None:
    """The model matrix, with whether each model fits this machine (or --gpu/--hardware)."""
    from .plan import PlanRequest, plan
    from .plan.matrix import ModelsReport, verdicts

    as_json = wants_json(ctx, as_json)
    profile = resolve_profile(hardware_file, gpu_name, vram_gb, gpu_count, docker=False)
    catalog, weights = load_models(models_files, no_user_models)
    result = plan(profile, catalog, PlanRequest(), checkpoints=weights)
    rows = [v for v in verdicts(result, catalog)
            if (vision is None or v.vision == vision) and (not fits_only or v.fits != "no")]
    report = ModelsReport(machine=result.machine, models=rows, sources=catalog.sources)
    if as_json:
        emit_json(report)
    else:
        from . import render

        render.models_report(report, verbose=verbosity(ctx, sub_verbose) > 0)


@cli.command(name="plan")
@json_option
@machine_options
@cluster_options
@catalog_options
@click.argument("model", required=False)
@click.option("--vision/--text", "vision", default=None,
              help="require a model that reads images / text is enough")
@click.option("--min-context", type=click.IntRange(256), metavar="TOKENS",
              help="the shortest --max-model-len that is acceptable")
@click.option("--max-context", type=click.IntRange(256), metavar="TOKENS", help="cap --max-model-len")
@click.option("--quant", "precision", metavar="PRECISION",
              help="preferred precision: bf16 fp8 awq gptq w4a16 bnb-4bit ...")
@click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default=None,
              help="force the KV cache dtype (default: fp8 only where it is needed)")
@click.option("--cpu", "force_cpu", is_flag=True, help="plan for the CPU engine even with a GPU")
@click.option("--offline", is_flag=True, default=None,
              help="no model hub: only local, cached or packaged weights (default: $HF_HUB_OFFLINE)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--strict", is_flag=True, help="exit 5 when nothing fits")
@click.pass_context
def plan_cmd(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None,
             gpu_name: str | None, vram_gb: float | None, gpu_count: int | None,
             models_files: tuple[str, ...], no_user_models: bool, model: str | None,
             vision: bool | None, min_context: int | None, max_context: int | None,
             precision: str | None, kv_cache_dtype: str | None, force_cpu: bool,
             offline: bool | None, port: int, strict: bool, nodes: int | None = None,
             gpus_per_node: int | None = None, cluster_file: str | None = None) -> None:
    """Which model, precision and vLLM settings fit, why, and the command `up` would run.

    MODEL is a model id, alias or Hugging Face repo id from `kanoa-local models`, or a local
    checkpoint directory; without it the best model that fits is chosen.
    """
    from pathlib import Path

    from .catalog import PRECISIONS
    from .engine.spec import PlanReport, launch_spec
    from .errors import NoFitError, UsageError
    from .plan import PlanRequest, plan

    as_json = wants_json(ctx, as_json)
    if precision and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}",
                         remedy="one of: " + ", ".join(PRECISIONS))
    if min_context and max_context and min_context > max_context:
        raise UsageError("--min-context is larger than --max-context", remedy="swap or drop one")
    profile, cluster = resolve_machine(hardware_file, gpu_name, vram_gb, gpu_count, cluster_file, nodes,
                                       gpus_per_node)
    catalog, weights = load_models(models_files, no_user_models)
    if model and Path(model).expanduser().is_dir():
        from .checkpoint import entry_from_directory

        entry = entry_from_directory(Path(model).expanduser())
        catalog = catalog.model_copy(update={"models": {**catalog.models, entry.id: entry}})
        model = entry.id
    if offline is None:
        from .settings import hub_offline

        offline = hub_offline()
    request = PlanRequest(model=model, vision=vision, min_context=min_context,
                          max_context=max_context, precision=precision,
                          kv_cache_dtype=kv_cache_dtype, device="cpu" if force_cpu else "auto",
                          offline=offline, nodes=cluster.nodes if cluster is not None else 1,
                          hf_token=bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")))
    result = plan(profile, catalog, request, checkpoints=weights)
    spec = None
    if result.chosen is not None:
        from .settings import packaged_models_dir

        c = result.chosen
        model_dir = str(packaged_models_dir() / c.model_id) if c.variant.package else None
        from .settings import engine_caches

        # the rule `up --runtime auto` uses (a GPU plan without Docker: what up would then say)
        from .backends.docker_api import daemon_facts
        from .deploy.targets import choose_runtime
        from .errors import DockerUnavailable

        try:
            runtime = choose_runtime("auto", c, None, docker_facts=lambda: daemon_facts(timeout=2))
        except DockerUnavailable:
            runtime = "docker"
        spec = launch_spec(c, port=port, model_dir=model_dir, runtime="docker" if runtime == "docker" else "process",
                           **engine_caches())
    command = None
    if spec is not None:
        from .runtimes.process import default_python

        command = spec.docker_command() if runtime == "docker" else spec.process_command(default_python())
    report = PlanReport(plan=result, launch=spec, command=command,
                        runtime=runtime if spec is not None else None)
    if as_json:
        emit_json(report)
    else:
        from . import render

        render.plan_report(report, verbose=verbosity(ctx, sub_verbose))
    if strict and result.chosen is None:
        if as_json:
            ctx.exit(NoFitError.exit_code)
        raise NoFitError(result.summary, remedy=result.remedy)


@cli.command(name="export", epilog=EXIT_CODE_HELP)
@json_option
@machine_options
@cluster_options
@catalog_options
@click.argument("target", type=click.Choice(["docker", "slurm", "k8s", "compose", "helm"]))
@click.argument("model", required=False)
@click.option("--quant", "precision", metavar="PRECISION", help="preferred precision (see `plan`)")
@click.option("--max-context", type=click.IntRange(256), metavar="TOKENS", help="cap --max-model-len")
@click.option("--vision/--text", "vision", default=None, help="require a model that reads images / text is enough")
@click.option("--name", help="deployment name (default: the model id)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--image", metavar="IMAGE", help="another vLLM image (pinned tag or digest)")
@click.option("--namespace", metavar="NS", help="Kubernetes namespace")
@click.option("--storage", default="200Gi", show_default=True, help="Kubernetes: size of the weights volume")
@click.option("--storage-class", metavar="CLASS", help="Kubernetes: storage class of the weights volume")
@click.option("-o", "--output", "output", metavar="DIR", help="write the files into DIR (default: print them)")
@click.pass_context
def export_cmd(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None,
               gpu_name: str | None, vram_gb: float | None, gpu_count: int | None, nodes: int | None,
               gpus_per_node: int | None, cluster_file: str | None, models_files: tuple[str, ...],
               no_user_models: bool, target: str, model: str | None, precision: str | None,
               max_context: int | None, vision: bool | None, name: str | None, port: int,
               image: str | None, namespace: str | None, storage: str, storage_class: str | None,
               output: str | None) -> None:
    """Render the plan for another engine: per-node docker run lines, an sbatch script,
    Kubernetes manifests, a compose file, or values for vLLM's production-stack Helm chart.

    Plans as `plan` does, for this machine or a cluster (--nodes/--gpus-per-node/--gpu, or
    --cluster FILE). Secrets are never written except the Kubernetes Secret's generated API
    key (files are written mode 0600 then).
    """
    from pathlib import Path

    from .errors import NoFitError
    from .export import ExportOptions, ExportResult, render, require_hub_weights
    from .plan import PlanRequest, plan
    from .state import check_name

    as_json = wants_json(ctx, as_json)
    profile, cluster = resolve_machine(hardware_file, gpu_name, vram_gb, gpu_count, cluster_file, nodes,
                                       gpus_per_node)
    catalog, weights = load_models(models_files, no_user_models)
    request = PlanRequest(model=model, precision=precision, max_context=max_context, vision=vision,
                          nodes=cluster.nodes if cluster is not None else 1, hf_token=True)
    result = plan(profile, catalog, request, checkpoints=weights)
    c = result.chosen
    if c is None:
        raise NoFitError(result.summary, remedy=result.remedy)
    require_hub_weights(c)
    opts = ExportOptions(name=check_name(name or c.model_id), port=port, image=image, namespace=namespace,
                         storage=storage, storage_class=storage_class)
    files = render(target, c, opts, nodes=cluster.nodes if cluster else 1,
                   hosts=cluster.hosts if cluster else None)
    s = c.settings
    words = (f"{c.label} on {c.gpu_name or 'the CPU engine'}, --max-model-len {s.max_model_len}" if s else c.label)
    res = ExportResult(target=target, model=c.model_id, plan=words, nodes=s.pipeline_parallel_size if s else 1,
                       files=files)
    if output:
        out = Path(output).expanduser()
        try:
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                from .state import write_atomic

                write_atomic(out / f.name, f.content, mode=f.mode)
                res.written.append(str(out / f.name))
        except OSError as exc:
            from .errors import ConfigError

            raise ConfigError(f"cannot write into {out}: {exc.strerror or exc}",
                              remedy="choose a writable -o DIR") from exc
    if as_json:
        emit_json(res)
        return
    click.echo(f"# {target}: {words}", err=True)
    if output:
        for p in res.written:
            click.echo(p)
    else:
        for f in files:
            if len(files) > 1:
                click.echo(f"# ---- {f.name}")
            click.echo(f.content, nl=False)


def up_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Everything `up` takes besides MODEL and --name (shared with `session` and `doctor`)."""
    opts = [
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
                     help="run on another machine's Docker daemon: tcp://ADDR:2375 or ssh://user@host "
                          "(its port is published there, on all its addresses unless --host says). "
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
        click.option("--max-model-len", type=click.IntRange(256), metavar="TOKENS", help="cap the context"),
        click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 0.99), metavar="FRACTION",
                     help="override the planned share of GPU memory vLLM may use"),
        click.option("--cpu", "cpu", is_flag=True, help="the CPU engine even with a GPU"),
        click.option("--offline", is_flag=True, default=None, help="no model hub (default: $HF_HUB_OFFLINE)"),
        click.option("--timeout", type=click.FloatRange(10), default=1200, show_default=True,
                     help="seconds to wait for the first token"),
        click.option("--replace", is_flag=True, help="replace a running deployment of the same name"),
        click.option("--no-retry", is_flag=True, help="do not retry with the context length vLLM says fits"),
        click.option("--temperature", type=click.FloatRange(0, 2), metavar="T",
                     help="the handed clients' default temperature"),
        click.option("--max-tokens", type=click.IntRange(1), metavar="N",
                     help="the handed clients' default answer length"),
        click.option("--cost-per-mtok", type=click.FloatRange(0), metavar="USD",
                     help="estimated cost per million tokens, input + output (default 0.10)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return cluster_options(catalog_options(f))


def progress_printer(say: Callable[[str], None], what: str) -> Callable[[int, int], None]:
    """A (done, total) bytes callback that says ``what: x / y GB (p %)`` every 5 %."""
    shown = {"pct": -5}

    def on(done: int, total: int) -> None:
        pct = int(done * 100 / total) if total else 100
        if (pct >= shown["pct"] + 5 or done == total) and pct != shown["pct"]:
            shown["pct"] = pct
            say(f"{what}: {done / 1e9:.2f} / {total / 1e9:.2f} GB ({pct} %)")
    return on


def run_up(ctx: click.Context, as_json: bool, model: str | None, name: str | None,
           opts: dict[str, Any]) -> Any:
    """`up` with progress on stderr (none with --json); the UpResult."""
    from . import deploy

    from .errors import UsageError

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

    def progress(what: str) -> Callable[[int, int], None]:
        return progress_printer(say, "  " + what)

    return deploy.start(model, name=name, profile=profile, models_files=models_files,
                        user_models=user_models, on_plan=on_plan, on_status=lambda m: say("  " + m),
                        on_stage=on_stage, on_pull=progress("pulling the image"),
                        on_download=progress("weights"), **opts)


@cli.command()
@json_option
@catalog_options
@click.argument("model", required=False)
@click.option("--python", "python", metavar="PATH",
              help="interpreter with torch and transformers, to unpack a packaged model "
                   "(default: $KANOA_VLLM_PYTHON or this one)")
@click.option("--quant", "precision", metavar="PRECISION", help="preferred precision (see `plan`)")
@click.option("--cpu", is_flag=True, help="the CPU plan's weights even with a GPU")
@click.option("--offline", is_flag=True, default=None, help="only check what is already here")
@click.option("--hardware", "hardware_file", type=click.Path(dir_okay=False),
              help="plan for this saved profile instead of probing")
@click.option("--gpu", "gpu_name", metavar="NAME", help="plan for a named GPU profile instead of probing")
@click.pass_context
def pull(ctx: click.Context, as_json: bool, sub_verbose: int, models_files: tuple[str, ...],
         no_user_models: bool, model: str | None, python: str | None, precision: str | None,
         cpu: bool, offline: bool | None, hardware_file: str | None, gpu_name: str | None) -> None:
    """Get the weights `up` would serve (download, or unpack a packaged model) without starting.

    Afterwards `up --offline` needs no network. MODEL as for `plan`; without it, the best fit.
    """
    from . import deploy

    as_json = wants_json(ctx, as_json)
    say = (lambda _m: None) if as_json else (lambda m: click.echo("  " + m, err=True))
    on_download = progress_printer(say, "weights")

    result = deploy.pull(model, python=python, precision=precision, cpu=cpu, offline=offline,
                         profile=resolve_profile(hardware_file, gpu_name, docker=False),
                         models_files=list(models_files), user_models=not no_user_models,
                         on_status=say, on_download=on_download)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{result.model_name}: {result.path}  (from {result.source})")


@cli.command(epilog=EXIT_CODE_HELP)
@json_option
@click.argument("model", required=False)
@click.option("--name", help="deployment name (default: the model id)")
@up_options
@click.pass_context
def up(ctx: click.Context, as_json: bool, sub_verbose: int, model: str | None, name: str | None,
       **opts: Any) -> None:
    """Plan, start vLLM's OpenAI-compatible server, and wait until it answers.

    Ready means one real token came back. The API key is generated and kept (mode 0600) in the
    state directory; the server listens on 127.0.0.1 unless --host says otherwise.
    """
    as_json = wants_json(ctx, as_json)
    result = run_up(ctx, as_json, model, name, opts)
    if as_json:
        emit_json(result)
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    d = result.deployment
    word = "Already running" if result.reused else ("Ready" if result.ready is not None or d.runtime != "k8s"
                                                   else "Scheduled (not waiting for readiness)")
    click.echo(f"{word}: {d.name}  {result.base_url}  model {d.served_model_name}")
    nodes = getattr(d.place, "nodes", [])
    if len(nodes) > 1:
        click.echo(f"  {len(nodes)} nodes: the head on {d.docker_host or 'this machine'}, "
                   + ", ".join(f"node {w.rank} on {w.docker_host or 'this machine'}" for w in nodes[1:]))
    click.echo(f"  API key: {result.api_key_file} (mode 0600)")
    click.echo(f"  export OPENAI_BASE_URL={result.base_url} OPENAI_API_KEY=$(cat {result.api_key_file})")
    click.echo(f"  stop it with `kanoa-local down {d.name}`")


@cli.command()
@json_option
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="every deployment")
@click.pass_context
def down(ctx: click.Context, as_json: bool, sub_verbose: int, name: str | None, all_: bool) -> None:
    """Stop a deployment and remove its process/container and state (caches stay)."""
    from . import deploy

    result = deploy.down(name, all_=all_)
    if wants_json(ctx, as_json):
        emit_json(result)
    else:
        click.echo("removed: " + (", ".join(result.removed) or "nothing"))


@cli.command()
@json_option
@click.pass_context
def ps(ctx: click.Context, as_json: bool, sub_verbose: int) -> None:
    """Every deployment, running or dead."""
    from . import deploy

    report = deploy.ps()
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    from . import render

    render.ps_report(report)


@cli.command()
@json_option
@click.argument("name", required=False)
@click.pass_context
def status(ctx: click.Context, as_json: bool, sub_verbose: int, name: str | None) -> None:
    """Health, endpoint, uptime and vLLM's request/token/KV metrics of a deployment."""
    from . import deploy

    report = deploy.status(name)
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    from . import render

    render.status_report(report)


@cli.command(name="env")
@json_option
@click.argument("name", required=False)
@click.pass_context
def env_cmd(ctx: click.Context, as_json: bool, sub_verbose: int, name: str | None) -> None:
    """Shell exports for a running deployment (OPENAI_BASE_URL, OPENAI_API_KEY, model).

    eval "$(kanoa-local env)" — then any OpenAI-compatible tool talks to it. This prints the
    deployment's API key, on purpose.
    """
    import shlex

    from . import deploy

    exports = deploy.connect(name).env()
    if wants_json(ctx, as_json):
        click.echo(json.dumps(exports, indent=2))
        return
    for k, v in exports.items():
        click.echo(f"export {k}={shlex.quote(v)}")


@cli.command()
@json_option
@click.argument("name")
@click.option("--tail", "-n", type=click.IntRange(1), default=None, help="the last N lines")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C stops)")
@click.pass_context
def logs(ctx: click.Context, as_json: bool, sub_verbose: int, name: str, tail: int | None,
         follow: bool) -> None:
    """The engine's log (kept after a failed start too)."""
    from . import deploy

    lines = deploy.log_lines(name, tail)
    if wants_json(ctx, as_json):
        click.echo(json.dumps({"name": name, "lines": lines}, indent=2))
        return
    for line in lines:
        click.echo(line)
    if follow:
        for line in deploy.follow_logs(name):
            click.echo(line)


def _save(path: str, model: Any) -> None:
    """Write atomically: a failed write leaves no half-written file."""
    import tempfile
    from pathlib import Path

    from .errors import ConfigError

    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            f.write(model.model_dump_json(indent=2))
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}",
                          remedy="choose a writable path") from None


@cli.command(epilog=EXIT_CODE_HELP)
@json_option
@click.argument("name", required=False)
@click.option("--model", help="the model to start when no deployment is running (default: best fit)")
@click.option("--exec", "exec_file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="run this Python file with the session's names defined, then exit")
@click.option("-c", "code", metavar="CODE", help="run this Python code with the session's names, then exit")
@up_options
@click.pass_context
def session(ctx: click.Context, as_json: bool, sub_verbose: int, name: str | None, model: str | None,
            exec_file: str | None, code: str | None, **opts: Any) -> None:
    """An interactive Python with `interp`, `client` and `deployment` ready to use.

    Reuses the running deployment NAME (or the only one running); with none, starts one as
    `up` would (the same options). IPython when installed and on a terminal, else Python's own
    console; -c and --exec run code without a prompt (no terminal needed).
    """
    from . import deploy
    from .errors import DeploymentNotFound, EngineError, UsageError
    from .session import SessionInfo, banner, namespace, run

    as_json = wants_json(ctx, as_json)
    if exec_file and code:
        raise UsageError("give -c or --exec, not both", remedy="see `kanoa-local session --help`")
    started = False
    try:
        dep = deploy.connect(name)
    except (DeploymentNotFound, EngineError):
        dep = run_up(ctx, as_json, model, name, opts).deployment
        started = True
    ns, missing = namespace(dep)
    report = deploy.status(dep.name)
    info = SessionInfo(name=dep.name, model=dep.served_model_name, base_url=dep.base_url, vision=dep.vision,
                       started=started, names=sorted(ns), cost_usd=report.cost_usd, interpreter=missing)
    if not as_json:
        click.echo(banner(info), err=True)
    rc = run(ns, code=code, exec_file=exec_file)
    if as_json:
        info.cost_usd = deploy.status(dep.name).cost_usd
        emit_json(info)
    elif started:
        click.echo(f"{dep.name} is still running: `kanoa-local down {dep.name}` stops it", err=True)
    if rc:
        ctx.exit(rc)


@cli.command(epilog=EXIT_CODE_HELP)
@json_option
@click.option("--model", help="the model to test (default: the best one whose weights are here)")
@click.option("--online", is_flag=True, help="allow the model hub (default: offline)")
@click.option("--keep", is_flag=True, help="leave the test deployment running")
@click.option("--python", "python", metavar="PATH",
              help="interpreter with vLLM for the process runtime (default: $KANOA_VLLM_PYTHON or this one)")
@click.option("--runtime", type=click.Choice(["auto", "docker", "process"]), default="auto", show_default=True)
@click.option("--image", metavar="IMAGE", help="the vLLM image to run (default: from the plan)")
@click.option("--cpu", is_flag=True, help="the CPU engine even with a GPU")
@click.option("--timeout", type=click.FloatRange(10), default=1200, show_default=True,
              help="seconds to wait for the first token")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, sub_verbose: int, model: str | None, online: bool,
           keep: bool, **opts: Any) -> None:
    """Self-test everything: check, plan, weights, up, one real interpretation, down.

    Offline by default: with no model hub it serves the model that ships as a package (Gemma 3
    270M). Whatever it starts is removed again, on failure and Ctrl-C too.
    """
    from . import doctor as doc

    as_json = wants_json(ctx, as_json)

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg, err=True)

    def on_step(s: Any) -> None:
        mark = {"pass": "ok  ", "fail": "FAIL", "skipped": "skip"}[s.status]
        say(f"[{mark}] {s.name:<9} {s.seconds:6.1f}s  {s.detail}")

    def on_stage(ev: Any) -> None:
        say(f"           [{ev.at_s:6.1f}s] {ev.stage}")

    report = doc.run(model=model, offline=not online, keep=keep, on_step=on_step, on_stage=on_stage,
                     on_status=lambda m: say("           " + m), **opts)
    if as_json:
        emit_json(report)
    else:
        if report.answer is not None:
            click.echo("\nThe model's interpretation of a small sales table:\n")
            click.echo(report.answer.strip())
            u = report.usage or {}
            click.echo(f"\ntokens: {u.get('input_tokens')} in, {u.get('output_tokens')} out; "
                       f"estimated cost ${u.get('cost_usd', 0):.6f}")
        if report.error:
            click.echo(f"Error: {report.error['message']}", err=True)
            if report.error.get("remedy"):
                click.echo(f"hint: {report.error['remedy']}", err=True)
        else:
            click.echo("doctor: everything works", err=True)
    if not report.ok:
        ctx.exit(report.exit_code or 1)


def main(argv: list[str] | None = None, prog_name: str = "kanoa-local") -> None:
    """Entry point: the single error boundary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _json_requested(argv)
    debug = "--debug" in argv or os.environ.get("KANOA_DEBUG", "") not in ("", "0")
    if not argv:  # bare `kanoa-local`: the help, not an error
        click.echo(cli.get_help(click.Context(cli, info_name=prog_name)))
        sys.exit(0)
    try:
        rc = cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
        sys.exit(rc or 0)
    except KanoaError as exc:
        _error(exc.message, exc.remedy, type(exc).__name__, exc.details, exc.exit_code,
               as_json, debug)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        hint = None
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f"see `{exc.ctx.command_path} --help`"
        _error(exc.format_message(), hint, "UsageError", {}, 2, as_json, debug)
    except click.exceptions.Abort:
        _error("interrupted", None, "Interrupted", {}, 130, as_json, debug)
    except KeyboardInterrupt:
        _error("interrupted", None, "Interrupted", {}, 130, as_json, debug)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as exc:  # noqa: BLE001 - the boundary: never a raw traceback
        _error(f"internal error: {type(exc).__name__}: {exc}",
               "rerun with --debug and report it", "InternalError", {}, 1, as_json, debug)


def _error(message: str, remedy: str | None, kind: str, details: dict[str, Any], code: int,
           as_json: bool, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    message = redact(" ".join(message.split()))
    remedy = redact(remedy) if remedy else None
    if as_json:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "remedy": remedy,
                                         "details": json.loads(redact(json.dumps(details, default=str))),
                                         "exit_code": code}}, indent=2))
    else:
        click.echo(f"Error: {message}", err=True)
        if remedy:
            click.echo(f"  hint: {remedy}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
