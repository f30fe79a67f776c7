"""`kanoa-local session`: a Python with the hand-off preloaded (`interp`, `client`,
`deployment`), interactive (IPython when installed, on a terminal) or running -c / --exec code
without a terminal."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, Field


class SessionInfo(BaseModel):
    """What `session` hands over (its --json view)."""
    name: str
    model: str
    base_url: str
    vision: bool
    started: bool = Field(description="this session started the deployment")
    names: list[str] = Field(description="the names preloaded in the session")
    cost_usd: float | None = Field(None, description="estimated cost of the deployment's tokens so far")
    interpreter: str | None = Field(None, description="why there is no `interp`, when there is none")


def namespace(dep: Any) -> tuple[dict[str, Any], str | None]:
    from .errors import ConfigError

    ns: dict[str, Any] = {"deployment": dep, "client": dep.openai()}
    try:
        ns["interp"] = dep.interpreter()
        missing = None
    except ConfigError as exc:
        ns["interp"] = None
        missing = f"{exc.message} ({exc.remedy})"
    return ns, missing


def banner(info: SessionInfo) -> str:
    kind = "vision" if info.vision else "text-only"
    cost = "-" if info.cost_usd is None else f"${info.cost_usd:.6f}"
    lines = [f"kanoa-local session: {info.model} ({kind}) at {info.base_url}"
             + ("  [started for this session]" if info.started else ""),
             "  interp      kanoa AnalyticsInterpreter for this model: interp.interpret(data=df, stream=False)"
             if not info.interpreter else f"  interp      None: {info.interpreter}",
             "  client      openai.OpenAI for the same endpoint",
             f"  deployment  kanoa_local Deployment '{info.name}' (.env(), .openai(), .interpreter())",
             f"  cost so far {cost} (estimated at the deployment's rate)"]
    return "\n".join(lines)


def run(ns: dict[str, Any], *, code: str | None = None, exec_file: str | None = None) -> int:
    """Run user code (or a console) in ``ns``: like `python -c`/`python FILE`, a failure in the
    user's own code shows its traceback and gives exit code 1; kanoa-local's errors stay one line."""
    import runpy
    import traceback

    from .errors import KanoaError

    try:
        if code is not None:
            exec(compile(code, "<session -c>", "exec"), ns)  # noqa: S102 - the user's own code
        elif exec_file is not None:
            runpy.run_path(exec_file, init_globals=ns, run_name="__main__")
        else:
            console(ns)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KanoaError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code failed: show it as Python would
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb   # not this frame
        traceback.print_exception(type(exc), exc, tb)
        return 1
    return 0


def console(ns: dict[str, Any]) -> None:
    if sys.stdin.isatty():
        try:
            from IPython import start_ipython
        except ImportError:
            pass
        else:
            start_ipython(argv=["--no-banner"], user_ns=ns)
            return
    import code as code_mod

    code_mod.interact(banner="", local=ns, exitmsg="")
