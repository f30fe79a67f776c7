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
@click.option("--hardware", "hardware_file", type=click.Path(dir_okay=True),
              help="check a saved profile (from --save) or an NVML recording instead of this machine")
@click.option("--gpu", "gpu_name", metavar="NAME",
              help="check a named GPU profile (e.g. rtx5080-egpu, l4, rtx4090, a100-80g, h100, t4)")
@click.option("--save", "save_file", type=click.Path(dir_okay=False),
              help="write the probed profile to FILE (JSON)")
@click.option("--bandwidth", is_flag=True,
              help="measure host-to-GPU copy bandwidth inside the vLLM image")
@click.option("--image", metavar="IMAGE", help="vLLM image for --bandwidth (default: by driver)")
@click.pass_context
def check(ctx: click.Context, as_json: bool, sub_verbose: int, hardware_file: str | None, gpu_name: str | None,
          save_file: str | None, bandwidth: bool, image: str | None) -> None:
    """Check this machine against kanoa-local's hardware requirements.

    GPU, VRAM tiers (12 GB minimum; 16/24 GB recommended), system RAM, PCIe link (judged on
    the maximum link), compute capability, driver vs the vLLM image, Docker and the NVIDIA
    runtime, disk space for weights.
    """
    from .check import check as run_check
    from .errors import UsageError
    from .probe import load_preset, load_profile, probe

    as_json = wants_json(ctx, as_json)
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
        profile = probe()
    bw = None
    if bandwidth:
        from .engine.bandwidth import measure

        bw = measure(profile, image=image, live=hardware_file is None and gpu_name is None)
    if save_file:
        _save(save_file, profile)
    report = run_check(profile, bandwidth=bw)
    if as_json:
        emit_json(report)
    else:
        from . import render

        render.check_report(report, verbose=verbosity(ctx, sub_verbose) > 0)
        if save_file:
            click.echo(f"profile saved to {save_file}", err=True)
    ctx.exit(report.exit_code)


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: the single error boundary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _json_requested(argv)
    debug = "--debug" in argv or os.environ.get("KANOA_DEBUG", "") not in ("", "0")
    if not argv:  # bare `kanoa-local`: the help, not an error
        click.echo(cli.get_help(click.Context(cli, info_name="kanoa-local")))
        sys.exit(0)
    try:
        rc = cli.main(args=argv, prog_name="kanoa-local", standalone_mode=False)
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
