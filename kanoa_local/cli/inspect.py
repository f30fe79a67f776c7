"""`check`, `models`, `plan`, `export`: what fits and why, nothing started."""

from __future__ import annotations

import os
from typing import Any

import click

from . import EXIT_CODE_HELP, cli, emit_json, json_option, verbosity, wants_json
from .options import (catalog_options, cluster_options, engine_options, load_models, machine_options, resolve_machine, resolve_profile,
                      trust_option)


def load_runs() -> list[Any]:
    """The engine's reported figures from earlier starts (kanoa_local/runs.py)."""
    from ..runs import load_all

    return load_all()


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
    from ..check import check as run_check
    from ..plan import plan
    from ..plan.matrix import verdicts

    as_json = wants_json(ctx, as_json)
    profile = resolve_profile(hardware_file, gpu_name, vram_gb, gpu_count)
    bw = None
    if bandwidth:
        from ..bandwidth import measure

        bw = measure(profile, image=image, live=hardware_file is None and gpu_name is None)
    if save_file:
        _save(save_file, profile)
    catalog, weights = load_models(models_files, no_user_models)
    from ..plan import PlanRequest

    # a hardware verdict: whether it fits, not whether its code may run (`models` flags that)
    runs = load_runs()
    models = verdicts(plan(profile, catalog, PlanRequest(trust_remote_code=True), checkpoints=weights, runs=runs),
                      catalog, runs)
    report = run_check(profile, bandwidth=bw, models=models)
    if as_json:
        emit_json(report)
    else:
        from .. import render

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
    from ..plan import PlanRequest, plan
    from ..plan.matrix import ModelsReport, verdicts

    as_json = wants_json(ctx, as_json)
    profile = resolve_profile(hardware_file, gpu_name, vram_gb, gpu_count, docker=False)
    catalog, weights = load_models(models_files, no_user_models)
    runs = load_runs()
    result = plan(profile, catalog, PlanRequest(trust_remote_code=True), checkpoints=weights, runs=runs)
    rows = [v for v in verdicts(result, catalog, runs)
            if (vision is None or v.vision == vision) and (not fits_only or v.fits != "no")]
    report = ModelsReport(machine=result.machine, models=rows, sources=catalog.sources)
    if as_json:
        emit_json(report)
    else:
        from .. import render

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
@engine_options
@click.option("--cpu", "force_cpu", is_flag=True, help="plan for the CPU engine even with a GPU")
@click.option("--offline", is_flag=True, default=None,
              help="no model hub: only local, cached or packaged weights (default: $HF_HUB_OFFLINE)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--strict", is_flag=True, help="exit 5 when nothing fits")
@click.option("--no-flashinfer", "no_flashinfer", is_flag=True,
              help="the engine is a pip install of vLLM without FlashInfer (0.9-0.11.0 from PyPI): its sampler "
                   "sorts the vocabulary and needs more memory (`up --runtime process` finds this itself)")
@trust_option
@click.pass_context
def plan_cmd(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None,
             gpu_name: str | None, vram_gb: float | None, gpu_count: int | None,
             models_files: tuple[str, ...], no_user_models: bool, model: str | None,
             vision: bool | None, min_context: int | None, max_context: int | None,
             precision: str | None, force_cpu: bool,
             offline: bool | None, port: int, strict: bool, no_flashinfer: bool = False,
             trust_remote_code: bool = False,
             nodes: int | None = None, gpus_per_node: int | None = None, cluster_file: str | None = None,
             **engine_args: Any) -> None:
    """Which model, precision and vLLM settings fit, why, and the command `up` would run.

    MODEL is a model id, alias or Hugging Face repo id from `kanoa-local models`, a local
    checkpoint directory, or any other Hugging Face repo id (read from the cache, or online from
    the hub's config.json and safetensors headers); without it the best model that fits is chosen.
    """
    from ..catalog import PRECISIONS
    from ..engine.spec import PlanReport, launch_spec
    from ..errors import NoFitError, UsageError
    from ..plan import PlanRequest, plan

    as_json = wants_json(ctx, as_json)
    if precision and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}",
                         remedy="one of: " + ", ".join(PRECISIONS))
    if min_context and max_context and min_context > max_context:
        raise UsageError("--min-context is larger than --max-context", remedy="swap or drop one")
    profile, cluster = resolve_machine(hardware_file, gpu_name, vram_gb, gpu_count, cluster_file, nodes,
                                       gpus_per_node)
    catalog, weights = load_models(models_files, no_user_models)
    if offline is None:
        from ..settings import hub_offline

        offline = hub_offline()
    from ..unlisted import with_model

    # a checkpoint directory, or a hub repo the catalog does not list (its config and headers)
    catalog, weights, model = with_model(catalog, weights, model, offline=offline)
    request = PlanRequest(model=model, vision=vision, min_context=min_context,
                          max_context=max_context, precision=precision, **engine_args,
                          flashinfer=False if no_flashinfer else None,
                          device="cpu" if force_cpu else "auto",
                          offline=offline, nodes=cluster.nodes if cluster is not None else 1,
                          hf_token=bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")),
                          trust_remote_code=trust_remote_code)
    result = plan(profile, catalog, request, checkpoints=weights, runs=load_runs())
    spec = None
    if result.chosen is not None:
        from ..settings import packaged_models_dir

        c = result.chosen
        model_dir = str(packaged_models_dir() / c.model_id) if c.variant.package else None
        from ..hub import engine_caches

        # the rule `up --runtime auto` uses (a GPU plan without Docker: what up would then say)
        from ..backends.docker_api import daemon_facts
        from ..deploy.targets import choose_runtime
        from ..errors import DockerUnavailable

        try:
            runtime = choose_runtime("auto", c, None, docker_facts=lambda: daemon_facts(timeout=2))
        except DockerUnavailable:
            runtime = "docker"
        spec = launch_spec(c, port=port, model_dir=model_dir, runtime="docker" if runtime == "docker" else "process",
                           **engine_caches())
        if c.settings and c.settings.pipeline_parallel_size > 1:
            from ..engine.spec import DISTRIBUTED_EXPOSURE

            c.warnings.append(DISTRIBUTED_EXPOSURE)
    command = None
    if spec is not None:
        from ..runtimes.process import default_python

        command = spec.docker_command() if runtime == "docker" else spec.process_command(default_python(spec.device))
    report = PlanReport(plan=result, launch=spec, command=command,
                        runtime=runtime if spec is not None else None)
    if as_json:
        emit_json(report)
    else:
        from .. import render

        render.plan_report(report, verbose=verbosity(ctx, sub_verbose))
    # nothing fits (--strict), or what was asked for (a model, a precision) cannot be had: the
    # exit code `up` would give (5 nothing fits; 2 remote code not allowed; 9 not downloaded)
    if (strict and result.chosen is None) or result.unmet:
        from ..deploy.prepare import no_plan_error

        err = no_plan_error(result, request.model) if result.chosen is None else NoFitError(
            result.unmet or result.summary, remedy=f"what fits instead is shown above ({result.chosen.label})")
        if as_json:
            ctx.exit(err.exit_code)
        raise err


@cli.command(name="export", epilog=EXIT_CODE_HELP)
@json_option
@machine_options
@cluster_options
@catalog_options
@click.argument("target", type=click.Choice(["docker", "slurm", "k8s", "compose", "helm"]))
@click.argument("model", required=False)
@click.option("--quant", "precision", metavar="PRECISION", help="preferred precision (see `plan`)")
@click.option("--max-context", type=click.IntRange(256), metavar="TOKENS", help="cap --max-model-len")
@engine_options
@click.option("--vision/--text", "vision", default=None, help="require a model that reads images / text is enough")
@click.option("--name", help="deployment name (default: the model id)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--image", metavar="IMAGE", help="another vLLM image (pinned tag or digest)")
@click.option("--namespace", metavar="NS", help="Kubernetes namespace")
@click.option("--storage", default="200Gi", show_default=True, help="Kubernetes: size of the weights volume")
@click.option("--storage-class", metavar="CLASS", help="Kubernetes: storage class of the weights volume")
@click.option("-o", "--output", "output", metavar="DIR", help="write the files into DIR (default: print them)")
@trust_option
@click.pass_context
def export_cmd(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None,
               gpu_name: str | None, vram_gb: float | None, gpu_count: int | None, nodes: int | None,
               gpus_per_node: int | None, cluster_file: str | None, models_files: tuple[str, ...],
               no_user_models: bool, target: str, model: str | None, precision: str | None,
               max_context: int | None, vision: bool | None, name: str | None, port: int,
               image: str | None, namespace: str | None, storage: str, storage_class: str | None,
               output: str | None, trust_remote_code: bool, **engine_args: Any) -> None:
    """Render the plan for another engine: per-node docker run lines, an sbatch script,
    Kubernetes manifests, a compose file, or values for vLLM's production-stack Helm chart.

    Plans as `plan` does, for this machine or a cluster (--nodes/--gpus-per-node/--gpu, or
    --cluster FILE). Secrets are never written: the files read the API key and HF token from
    the environment or reference a Kubernetes Secret you create.
    """
    from pathlib import Path

    from ..errors import NoFitError
    from ..export import ExportOptions, ExportResult, render, require_hub_weights
    from ..plan import PlanRequest, plan
    from ..state import check_name

    as_json = wants_json(ctx, as_json)
    profile, cluster = resolve_machine(hardware_file, gpu_name, vram_gb, gpu_count, cluster_file, nodes,
                                       gpus_per_node)
    catalog, weights = load_models(models_files, no_user_models)
    from ..unlisted import with_model
    from ..settings import hub_offline

    catalog, weights, model = with_model(catalog, weights, model, offline=hub_offline())
    request = PlanRequest(model=model, precision=precision, max_context=max_context, vision=vision,
                          nodes=cluster.nodes if cluster is not None else 1, hf_token=True, **engine_args,
                          trust_remote_code=trust_remote_code)
    result = plan(profile, catalog, request, checkpoints=weights, runs=load_runs())
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
                from ..state import write_atomic

                write_atomic(out / f.name, f.content, mode=f.mode)
                res.written.append(str(out / f.name))
        except OSError as exc:
            from ..errors import ConfigError

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




def _save(path: str, model: Any) -> None:
    """Write atomically: a failed write leaves no half-written file."""
    import tempfile
    from pathlib import Path

    from ..errors import ConfigError

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

