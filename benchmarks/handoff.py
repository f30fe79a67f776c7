"""The hand-off adds nothing on the request path: the handed clients vs a raw `openai` client.

One deployment (the tiny model on the vLLM CPU engine, or any running one with --name), and in
the same process, alternating request by request so that both sides see the same engine state:
- baseline: ``openai.OpenAI(base_url=..., api_key=...)`` built by hand, streaming chat;
- handed:   ``Deployment.openai()`` (same call), and ``Deployment.interpreter()`` (kanoa, whose
  own prompt is longer, so it is compared with a raw client sending kanoa's exact messages).
Prints time to first text and end-to-end tokens/s (medians) and the handed/raw ratios (the
median of request-by-request ratios, in ABBA order); the goal is a throughput ratio of at least
0.98 (kanoa-local puts no proxy in between).

    .venv/bin/python benchmarks/handoff.py [--requests 8] [--max-tokens 32] [--name NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def harness() -> tuple[str, str]:
    venv = subprocess.run(["bash", str(ROOT / "scripts" / "cpu-runtime.sh"), "venv"], capture_output=True,
                          text=True, check=True).stdout
    venv_dir = dict(ln.split("=", 1) for ln in venv.splitlines() if "=" in ln)["KANOA_CPU_VENV"]
    py = str(Path(venv_dir) / "bin" / "python")
    model = subprocess.run([py, str(ROOT / "scripts" / "tiny_model.py")], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    return py, model


def timed_stream(client, model: str, messages: list, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first text, generated tokens per second over the whole request). The
    rate is end to end: the tiny model's random tokens often decode to no text for a while, so
    a rate counted from the first text would swing with where that text happens to start."""
    t0 = time.perf_counter()
    first = None
    n = 0
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                            temperature=0.0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
        if getattr(chunk, "usage", None):
            n = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return first - t0, n / (end - t0) if end > t0 else 0.0


def timed_interpret(interp) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    n = 0
    for chunk in interp.interpret(context="monthly sales of a shop", stream=True, display_result=False):
        if chunk.type == "text" and chunk.content and first is None:
            first = time.perf_counter()
        if chunk.type == "usage" and chunk.usage:
            n = chunk.usage.output_tokens
    end = time.perf_counter()
    first = first or end
    return first - t0, n / (end - t0) if end > t0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--name", help="a running deployment to use (default: start the tiny model)")
    a = ap.parse_args()

    import openai

    import kanoa_local
    from kanoa_local import deploy
    from kanoa_local.state import read_api_key

    started = False
    if a.name:
        dep = kanoa_local.connect(a.name)
    else:
        os.environ.setdefault("KANOA_LOCAL_HOME", tempfile.mkdtemp(prefix="kl-bench-"))
        py, model = harness()
        print("starting the tiny model on the vLLM CPU engine ...", file=sys.stderr)
        dep = kanoa_local.up(model_path=model, name="bench-handoff", python=py, max_tokens=a.max_tokens)
        started = True
    try:
        raw = openai.OpenAI(base_url=dep.base_url, api_key=read_api_key(dep))
        handed = dep.openai()
        interp = dep.interpreter(max_tokens=a.max_tokens, temperature=0.0)
        msgs = [{"role": "user", "content": "Describe monthly sales: Jan 120, Feb 135, Mar 160."}]
        kanoa_msgs = [{"role": "user", "content": [{"type": "text", "text": interp.preview_prompt(
            context="monthly sales of a shop")}]}]
        # warm up both paths once
        timed_stream(raw, dep.model, msgs, a.max_tokens)
        timed_interpret(interp)
        rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("raw", "handed", "raw-kanoa", "kanoa")}
        runs = {"raw": lambda: timed_stream(raw, dep.model, msgs, a.max_tokens),
                "handed": lambda: timed_stream(handed, dep.model, msgs, a.max_tokens),
                "raw-kanoa": lambda: timed_stream(raw, dep.model, kanoa_msgs, a.max_tokens),
                "kanoa": lambda: timed_interpret(interp)}
        for i in range(a.requests):
            # ABBA: who goes first alternates, so drift and cache effects fall on both sides
            for pair in (("raw", "handed"), ("raw-kanoa", "kanoa")):
                for k in (pair if i % 2 == 0 else pair[::-1]):
                    rows[k].append(runs[k]())
    finally:
        if started:
            deploy.down("bench-handoff")

    def med(k: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[k])

    print(f"{a.requests} streamed requests each, {a.max_tokens} tokens, deployment {dep.name} ({dep.device})")
    print(f"{'client':<28}{'TTFT (s)':>10}{'tokens/s':>10}")
    for k, label in (("raw", "raw openai.OpenAI"), ("handed", "Deployment.openai()"),
                     ("raw-kanoa", "raw, kanoa's prompt"), ("kanoa", "Deployment.interpreter()")):
        print(f"{label:<28}{med(k, 0):>10.3f}{med(k, 1):>10.1f}")
    def paired(a_: str, b_: str, i: int) -> float:
        """The median of the request-by-request ratios (each pair ran back to back)."""
        return statistics.median(x[i] / y[i] for x, y in zip(rows[a_], rows[b_]) if y[i] > 0)

    print(f"ratio openai():      throughput {paired('handed', 'raw', 1):.3f}, "
          f"TTFT {paired('handed', 'raw', 0):.3f}")
    print(f"ratio interpreter(): throughput {paired('kanoa', 'raw-kanoa', 1):.3f}, "
          f"TTFT {paired('kanoa', 'raw-kanoa', 0):.3f}  (goal: throughput >= 0.98)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
