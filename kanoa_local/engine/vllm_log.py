"""Figures vLLM prints while it starts, read from its log text.

The lines (vLLM 0.6-0.33, GPU and CPU engines) this understands:

    Model loading took 14.9888 GiB memory and 5.2 seconds        (GPU; torch-allocated bytes)
    Loading model weights took 14.9888 GB                          (older releases)
    Checkpoint size: 1.00 GiB. Available RAM: 20.77 GiB.           (safetensors bytes on disk)
    Available KV cache memory: 3.81 GiB
    GPU KV cache size: 23,648 tokens  /  CPU KV cache size: 40,810 tokens
    Maximum concurrency for 4,096 tokens per request: 9.96x
    # GPU blocks: 1952, # CPU blocks: 2048                          (older releases, 16-token blocks)
    Graph capturing finished in 12 secs, took 0.53 GiB

Pure text processing: `up` feeds it lines as they stream, the estimator benchmark feeds it
logs copied from public issues.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

_NUM = r"([\d,]+(?:\.\d+)?)"
PATTERNS: dict[str, re.Pattern[str]] = {
    "weights_gib": re.compile(r"Model loading took " + _NUM + r"\s*Gi?B"),
    "weights_gb_old": re.compile(r"Loading model weights took " + _NUM + r"\s*GB"),
    "checkpoint_gib": re.compile(r"Checkpoint size: " + _NUM + r"\s*GiB"),
    "kv_avail_gib": re.compile(r"Available KV cache memory: " + _NUM + r"\s*GiB"),
    "kv_tokens": re.compile(r"(?:GPU|CPU|XPU|TPU)(?: \+ host)? KV cache size: " + _NUM + r" tokens"),
    "concurrency": re.compile(r"Maximum concurrency for " + _NUM + r" tokens per request: " + _NUM + r"x"),
    "gpu_blocks": re.compile(r"# (?:GPU|CPU) blocks: " + _NUM),
    "graph_gib": re.compile(r"Graph capturing finished in \d+ secs?, took " + _NUM + r" GiB"),
}


class StartupFigures(BaseModel):
    weights_gib: float | None = None
    checkpoint_gib: float | None = None
    kv_avail_gib: float | None = None
    kv_tokens: int | None = None
    max_model_len: int | None = None
    concurrency: float | None = None
    gpu_blocks: int | None = None
    graph_gib: float | None = None


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def read(text: str) -> StartupFigures:
    """Every figure found in ``text`` (the last occurrence wins: a retry's numbers)."""
    out = StartupFigures()
    for line in text.splitlines():
        feed(out, line)
    return out


def feed(out: StartupFigures, line: str) -> StartupFigures:
    """Update ``out`` from one log line; returns it."""
    for key, pat in PATTERNS.items():
        m = pat.search(line)
        if not m:
            continue
        if key == "concurrency":
            out.max_model_len = int(_num(m.group(1)))
            out.concurrency = _num(m.group(2))
        elif key == "weights_gb_old":
            out.weights_gib = _num(m.group(1))
        elif key in ("kv_tokens", "gpu_blocks"):
            setattr(out, key, int(_num(m.group(1))))
        else:
            setattr(out, key, _num(m.group(1)))
    return out
