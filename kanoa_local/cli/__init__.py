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

from .. import __version__
from ..errors import KanoaError, redact

EXIT_CODE_HELP = """\b
Exit codes:
  0   success (check: ready for GPU serving)
  1   error without a more specific code
  2   bad usage            3  bad file/config   4  probe failed
  5   nothing fits         6  where it runs did not answer or refused (kept, not forgotten)
  7   engine did not start 8  no such deployment    9  weights not here, cannot be fetched
  10  check: CPU only      11 check: GPU not ready   12 check: cannot serve
  130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP: what was started is cleaned up
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
    except KeyboardInterrupt as exc:        # SIGTERM/SIGHUP outside a start's own handling: 143/129
        signum = getattr(exc, "signum", None)
        _error("terminated" if signum else "interrupted", None, "Interrupted", {}, 128 + (signum or 2), as_json, debug)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as exc:  # noqa: BLE001 - the boundary: never a raw traceback
        _error(f"internal error: {type(exc).__name__}: {exc}",
               "rerun with --debug and report it", "InternalError", {}, 1, as_json, debug)


def _error(message: str, remedy: str | None, kind: str, details: dict[str, Any], code: int,
           as_json: bool, debug: bool) -> None:
    if debug:
        import traceback

        click.echo(redact(traceback.format_exc()).rstrip(), err=True)
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


# the commands register themselves on the group
from . import engine_cmds, inspect, serve, session_cmds  # noqa: E402, F401

if __name__ == "__main__":
    main()
