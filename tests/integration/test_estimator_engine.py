"""The memory estimator against the real vLLM CPU engine: predicted KV tokens and checkpoint
size vs the engine's own log lines, on tiny models of several shapes and on Gemma 3 270M
(sliding-window layers). Goal from the planner issue: weights within 5 %, KV tokens within 10 %.
Shared with benchmarks/estimator.py, which prints the same comparison as a table.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kanoa_local.catalog import load_catalog
from kanoa_local.checkpoint import arch_from_config
from kanoa_local.engine import vllm_log
from kanoa_local.hardware import GIB
from kanoa_local.plan import memory as mem, profiling as prof

from tests.conftest import free_port, make_tiny_model

pytestmark = pytest.mark.engine

KV_GIB = 1
MAX_LEN = 4096
# name, tiny_model.py arguments (checkpoint dtype varies; the engine always serves float32)
SHAPES = [
    ("2L-kv1-hd64-f32", ["--layers", "2", "--kv-heads", "1", "--heads", "2", "--head-dim", "64"]),
    # big enough (~0.26 GiB) for vLLM's two-decimal "Checkpoint size" to measure the weights
    ("12L-kv2-hd128-bf16", ["--layers", "12", "--heads", "8", "--kv-heads", "2", "--head-dim", "128",
                            "--hidden", "1024", "--intermediate", "2816", "--dtype", "bfloat16"]),
    ("5L-kv3-hd64-tied", ["--layers", "5", "--heads", "6", "--kv-heads", "3", "--head-dim", "64",
                          "--hidden", "192", "--vocab", "2048", "--tie"]),
]


def start_and_read(venv: Path, model: Path, timeout: float = 240) -> vllm_log.StartupFigures:
    """Start the engine, read its figures from the log, stop it (the figures come before ready)."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(KV_GIB), "HF_HUB_OFFLINE": "1"}
    cmd = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--dtype", "float32", "--max-model-len", str(MAX_LEN), "--enforce-eager",
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    figures = vllm_log.StartupFigures()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = ""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            chunk = proc.stdout.read() if ready else ""
            if chunk:
                buf += chunk
                *done, buf = buf.split("\n")
                for line in done:
                    lines.append(line + "\n")
                    vllm_log.feed(figures, line)
            if figures.kv_tokens is not None and figures.checkpoint_gib is not None:
                break
            if proc.poll() is not None and not chunk:
                break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
    if figures.kv_tokens is None:
        pytest.fail("engine printed no KV cache size:\n" + "".join(lines[-30:]), pytrace=False)
    return figures


def _tiny_params(model: Path) -> tuple[int, int]:
    """(parameters, checkpoint bytes per parameter) from the generator's own shape file."""
    shape = json.loads((model / "kanoa-tiny.json").read_text())
    cfg = json.loads((model / "config.json").read_text())
    h, inter, hd = shape["hidden"], shape["intermediate"], shape["head_dim"]
    vocab = cfg["vocab_size"]
    per_layer = (shape["heads"] * hd * h * 2 + shape["kv_heads"] * hd * h * 2 + 3 * h * inter + 2 * h)
    params = vocab * h * (1 if shape["tie"] else 2) + shape["layers"] * per_layer + h
    return params, {"float32": 4, "bfloat16": 2, "float16": 2}[shape["dtype"]]


def predicted_tokens(arch) -> int:
    batched, _ = prof.scheduler_defaults("cpu", 0)
    return mem.kv_capacity(arch, KV_GIB * GIB, MAX_LEN, kv_dtype_bytes=4, block_size=mem.CPU_BLOCK_SIZE,
                           in_flight_tokens=batched).tokens


@pytest.mark.parametrize("case_name,args", SHAPES, ids=[s[0] for s in SHAPES])
def test_tiny_model_kv_and_weights(cpu_venv, case_name, args):
    model = make_tiny_model(cpu_venv, *args, "--max-len", str(MAX_LEN), "--name", f"est-{case_name}")
    figures = start_and_read(cpu_venv, model)
    arch = arch_from_config(json.loads((model / "config.json").read_text()))
    # Check point: KV tokens as vLLM reports them, from 2 × layers × KV heads × head dim × 4 B
    assert abs(predicted_tokens(arch) - figures.kv_tokens) / figures.kv_tokens <= 0.10
    params, nbytes = _tiny_params(model)
    assert figures.checkpoint_gib is not None
    # vLLM prints the size with two decimals: compare at that resolution
    assert abs(params * nbytes / GIB - figures.checkpoint_gib) <= max(0.05 * figures.checkpoint_gib, 0.006)


def test_gemma_270m_sliding_window(cpu_venv, gemma_model):
    """A real model with 15 sliding-window layers of 18: the catalog's numbers vs the engine."""
    figures = start_and_read(cpu_venv, gemma_model)
    entry = load_catalog(user=False).get("gemma-3-270m")
    assert entry.arch is not None
    # Check point: the catalog's arch (not the checkpoint's) predicts the engine's KV tokens
    predicted = predicted_tokens(entry.arch)
    assert abs(predicted - figures.kv_tokens) / figures.kv_tokens <= 0.10, (predicted, figures)
    # and sliding layers are what make it: counting all 18 as full would be ~29k, not ~41k
    full = entry.arch.model_copy(update={"sliding_layers": 0, "sliding_window": None})
    assert predicted_tokens(full) < 0.8 * figures.kv_tokens
    # Check point: weights from the catalog's parameter count, float32 (the checkpoint's dtype)
    variant = next(v for v in entry.variants if v.package)
    w = mem.weights(entry, variant, 4)
    assert figures.checkpoint_gib is not None
    # (the rotary caches vLLM builds at load are not in the checkpoint: 65,536 positions × 256 × 4 B)
    assert w.rotary == 65536 * 256 * 4
    assert abs((w.total - w.rotary) / GIB - figures.checkpoint_gib) / figures.checkpoint_gib <= 0.05


def test_gemma_checkpoint_files_agree_with_the_catalog(gemma_model):
    """checkpoint.py reads the converted checkpoint: its numbers are the catalog's."""
    from kanoa_local.checkpoint import read_checkpoint

    arch, w = read_checkpoint(gemma_model, compute_bytes=2)
    table = load_catalog(user=False).get("gemma-3-270m").arch
    assert arch is not None and w is not None
    for key in ("layers", "heads", "kv_heads", "head_dim", "hidden", "vocab", "sliding_window",
                "sliding_layers", "tie_embeddings"):
        assert getattr(arch, key) == getattr(table, key), key
    assert abs(w.total / 2 / 1e9 - 0.268) < 0.005      # 268 M parameters
