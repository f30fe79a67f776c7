"""The self-test: check → plan → weights → up → one real interpretation → down.

What `kanoa-local doctor` runs and what the README's first command shows: the whole path a
user depends on, on this machine, offline by default (the packaged Gemma 3 270M needs no model
hub). Each step is timed and said; the first failure stops the run, and whatever the run
started is removed again, Ctrl-C included.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from .errors import KanoaError

DOCTOR_NAME = "kanoa-local-doctor"
SAMPLE_CONTEXT = "Monthly sales of a small shop, in units"
SAMPLE_FOCUS = "the trend and anything unusual"


class Step(BaseModel):
    name: str
    status: Literal["pass", "fail", "skipped"]
    detail: str = ""
    seconds: float = 0.0


class DoctorReport(BaseModel):
    ok: bool
    steps: list[Step]
    model: str | None = None
    runtime: str | None = None
    base_url: str | None = None
    answer: str | None = None
    usage: dict[str, Any] | None = Field(None, description="input/output tokens and estimated cost")
    error: dict[str, Any] | None = Field(None, description="the failing step's error: message, remedy")
    exit_code: int = 0


def sample_frame() -> Any:
    import pandas as pd

    return pd.DataFrame({"month": ["Jan", "Feb", "Mar", "Apr", "May", "Jun"],
                         "units": [120, 132, 128, 161, 158, 240]})


def run(*, model: str | None = None, offline: bool = True, keep: bool = False,
        on_step: Callable[[Step], None] | None = None, **up_options: Any) -> DoctorReport:
    """Run the self-test; never raises a KanoaError (it is in the report), re-raises Ctrl-C
    after cleaning up."""
    from . import deploy
    from .check import check
    from .probe import probe

    report = DoctorReport(ok=False, steps=[])
    steps = report.steps          # pydantic copies lists given to it: append to the report's own
    tell = on_step or (lambda _s: None)
    started: list[str] = []

    def step(name: str, fn: Callable[[], str]) -> bool:
        t0 = time.monotonic()
        try:
            detail = fn()
        except KanoaError as exc:
            s = Step(name=name, status="fail", detail=exc.message, seconds=round(time.monotonic() - t0, 1))
            steps.append(s)
            tell(s)
            report.error = {"type": type(exc).__name__, "message": exc.message, "remedy": exc.remedy}
            report.exit_code = exc.exit_code
            return False
        s = Step(name=name, status="pass", detail=detail, seconds=round(time.monotonic() - t0, 1))
        steps.append(s)
        tell(s)
        return True

    ctx: dict[str, Any] = {}

    def do_check() -> str:
        prof = up_options.pop("profile", None) or probe(docker=True)
        ctx["profile"] = prof
        r = check(prof)
        if r.verdict == "cannot-serve":
            from .errors import ProbeError

            raise ProbeError(r.summary, remedy="`kanoa-local check` says what to fix")
        return r.summary

    def do_weights() -> str:
        r = deploy.pull(model, offline=offline, profile=ctx["profile"], python=up_options.get("python"),
                        cpu=up_options.get("cpu", False), precision=up_options.get("precision"),
                        on_status=up_options.get("on_status"))
        report.model = r.model_id
        return f"{r.model_name}: {r.path}"

    def do_up() -> str:
        def record(c: Any, runtime: str) -> None:
            report.runtime = runtime
            ctx["plan"] = c
            started.append(DOCTOR_NAME)
        res = deploy.start(model or report.model, name=DOCTOR_NAME, offline=offline, replace=True,
                           profile=ctx["profile"], on_plan=record, **up_options)
        dep = res.deployment
        ctx["dep"] = dep
        report.base_url = dep.base_url
        c = ctx["plan"]
        return (f"{dep.model_id} on the {dep.runtime} runtime ({c.device}), {dep.base_url}, "
                f"ready in {res.ready.elapsed_s:.0f} s" if res.ready else f"{dep.model_id} already running")

    def do_interpret() -> str:
        interp = ctx["dep"].interpreter()
        r = interp.interpret(data=sample_frame(), context=SAMPLE_CONTEXT, focus=SAMPLE_FOCUS,
                             stream=False, display_result=False)
        u = r.usage
        if not r.text or u is None:
            from .errors import EngineError

            raise EngineError("the server answered without text or token usage",
                              remedy=f"see `kanoa-local logs {DOCTOR_NAME}`")
        report.answer = r.text
        report.usage = {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens, "cost_usd": u.cost}
        return f"{u.input_tokens} tokens in, {u.output_tokens} out, ${u.cost:.6f} estimated"

    def do_down() -> str:
        r = deploy.down(DOCTOR_NAME)
        started.clear()
        return "removed " + (", ".join(r.removed) or "nothing")

    plan_steps = [("check", do_check), ("weights", do_weights), ("up", do_up), ("interpret", do_interpret)]
    try:
        ok = all(step(n, f) for n, f in plan_steps)
        if started and not keep:
            ok = step("down", do_down) and ok
        elif started:
            steps.append(Step(name="down", status="skipped",
                              detail=f"kept running: `kanoa-local down {DOCTOR_NAME}` stops it"))
    except BaseException:
        _cleanup(started)
        raise
    if not ok:
        _cleanup(started)
    for n in [n for n, _ in plan_steps] + ["down"]:
        if not any(s.name == n for s in steps):
            steps.append(Step(name=n, status="skipped"))
    report.ok = ok and report.error is None
    return report


def _cleanup(started: list[str]) -> None:
    from . import deploy

    for name in started:
        try:
            deploy.down(name)
        except KanoaError:
            pass
    started.clear()
