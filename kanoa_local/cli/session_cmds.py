"""`session` and `doctor`: the interpreter session and the self-test."""

from __future__ import annotations

from typing import Any

import click

from . import EXIT_CODE_HELP, cli, emit_json, json_option, wants_json
from .options import (Figure, run_up, up_options)


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
    from .. import deploy
    from ..errors import DeploymentNotFound, EngineError, UsageError
    from ..session import SessionInfo, banner, namespace, run

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
@click.option("--timeout", type=Figure(10), default=1200, show_default=True,
              help="seconds to wait for the first token")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, sub_verbose: int, model: str | None, online: bool,
           keep: bool, **opts: Any) -> None:
    """Self-test everything: check, plan, weights, up, one real interpretation, down.

    Offline by default: with no model hub it serves the model that ships as a package (Gemma 3
    270M). Whatever it starts is removed again, on failure and Ctrl-C too.
    """
    from .. import doctor as doc

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

