"""Wait for a starting vLLM server: ready, exited or stalled — never "probably fine".

vLLM answers nothing while it loads, and `/health` can answer 200 while the first request
still kills the engine, so ready means one real token came back. While waiting, the log is
followed for the engine's stages (weights, KV cache, graphs, server) and their times; the stall
timer restarts whenever the log moves. The clock, the sleep, the log source and the probes are
parameters, so the decisions are tested with a fake clock and the real engine alike.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from ..errors import EngineError
from . import vllm_log
from .diagnose import Diagnosis, diagnose

Outcome = Literal["ready", "exited", "stalled", "timeout"]

#: (stage name, what in the log says it began), in the order vLLM goes through them.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("engine starting", re.compile(r"non-default args|Initializing a V1 LLM engine|vLLM API server version")),
    ("loading weights", re.compile(r"Starting to load model|Loading weights(?! took)|Loading safetensors checkpoint")),
    ("weights loaded", re.compile(r"Loading weights took|Model loading took|Loading model weights took")),
    ("KV cache sized", re.compile(r"KV cache size: |# GPU blocks|Available KV cache memory")),
    ("CUDA graphs", re.compile(r"Capturing CUDA graph|Graph capturing")),
    ("server starting", re.compile(r"Starting vLLM (?:API )?server on|Started server process")),
    ("serving", re.compile(r"Application startup complete")),
]


def last_stage(lines: list[str]) -> str | None:
    """The latest of :data:`STAGES` a log has reached (None before the first)."""
    reached = None
    for line in lines:
        for i, (_name, pat) in enumerate(STAGES):
            if (reached is None or i > reached) and pat.search(line):
                reached = i
    return STAGES[reached][0] if reached is not None else None


class StageEvent(BaseModel):
    stage: str
    at_s: float = Field(description="seconds since the start")


class ReadyReport(BaseModel):
    outcome: Outcome
    elapsed_s: float
    stages: list[StageEvent] = []
    figures: vllm_log.StartupFigures = Field(default_factory=vllm_log.StartupFigures)
    diagnosis: Diagnosis | None = None
    log_tail: list[str] = []


def first_token(base_url: str, api_key: str, model: str, timeout: float = 30,
                context: Any = None) -> tuple[bool, str]:
    """One 1-token completion: (came back, what the server said). ``context``: the SSL context
    for an HTTPS server; a certificate that does not verify is an error at once, not a wait."""
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 1}).encode()
    req = urllib.request.Request(f"{base_url}/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status == 200, ""
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        from .tls import verify_failure

        bad = verify_failure(exc)
        if bad is not None:
            host = urllib.parse.urlsplit(base_url).hostname
            raise EngineError(f"the server's certificate does not verify for {host}: "
                              f"{bad.verify_message or bad.reason or bad}",
                              remedy=f"give a certificate that names {host} (subjectAltName) and that this machine "
                                     "trusts or that is the one given (self-signed works)") from None
        return False, str(exc)


def wait_until_ready(*, read_lines: Callable[[], list[str]], alive: Callable[[], bool],
                     probe: Callable[[], bool], timeout: float = 1200, stall: float = 300,
                     on_stage: Callable[[StageEvent], None] | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep, poll: float = 1.0,
                     exit_info: Callable[[], dict] | None = None) -> ReadyReport:
    """Follow the log and probe until ready, exited, stalled or timed out.

    ``read_lines`` returns the log lines written since its last call; ``alive`` whether the
    engine still runs; ``probe`` whether a token came back. ``exit_info`` gives the container's
    or process's state for the diagnosis (``oom_killed``, ``exit_code``).
    """
    start = last_progress = clock()
    tail: list[str] = []
    stages: list[StageEvent] = []
    seen: set[str] = set()
    figures = vllm_log.StartupFigures()
    server_up = False

    def finish(outcome: Outcome) -> ReadyReport:
        for line in read_lines():
            tail.append(line)
        text = "\n".join(tail)
        diag = None
        if outcome != "ready":
            info = exit_info() if exit_info else {}
            diag = diagnose(text, oom_killed=bool(info.get("oom_killed")), exit_code=info.get("exit_code"))
            if outcome == "stalled" and diag.kind == "unknown":
                last = stages[-1].stage if stages else "starting"
                diag = Diagnosis(kind="stalled", cause=f"no progress for {stall:.0f} s (last stage: {last})",
                                 remedy="see `kanoa-local logs`; a first download or compile can be slow: "
                                        "raise --timeout")
        return ReadyReport(outcome=outcome, elapsed_s=round(clock() - start, 2), stages=stages,
                           figures=figures, diagnosis=diag, log_tail=tail[-60:])

    while True:
        new = read_lines()
        if new:
            last_progress = clock()
            for line in new:
                tail.append(line)
                vllm_log.feed(figures, line)
                for name, pat in STAGES:
                    if name not in seen and pat.search(line):
                        seen.add(name)
                        ev = StageEvent(stage=name, at_s=round(clock() - start, 2))
                        stages.append(ev)
                        if on_stage:
                            on_stage(ev)
                        if name in ("server starting", "serving"):
                            server_up = True
            del tail[:-400]
        if not alive():
            return finish("exited")
        # Probe once the log says the server is near (or after a while, for logs we cannot read).
        if (server_up or "KV cache sized" in seen or clock() - start > 20) and probe():
            ev = StageEvent(stage="first token", at_s=round(clock() - start, 2))
            stages.append(ev)
            if on_stage:
                on_stage(ev)
            return finish("ready")
        now = clock()
        if now - start > timeout:
            return finish("timeout")
        if now - last_progress > stall:
            return finish("stalled")
        sleep(poll)
