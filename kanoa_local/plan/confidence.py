"""How much each figure of a plan can be trusted: *measured* (this machine's engine reported
it for this model, precision, GPU and release: kanoa_local/runs.py), *calibrated* (the
family on that vLLM line is in the calibration set, where the estimate was checked against
public start-up logs: benchmarks/estimator.py) or *derived* (from architecture numbers and
vLLM's rules only)."""

from __future__ import annotations

from typing import Any

from ..hardware import GIB
from .memory import Term
from .models import Candidate

#: (family, vLLM line) the calibration set covers with rows the estimate met within 5 % (the
#: estimator's run of 2026-12-01; "cpu" is the CPU engine's own line)
CALIBRATED = {("llama", "0.19"), ("mixtral", "0.19"), ("llama4", "0.19"), ("qwen2_5_vl", "0.8"),
              ("gemma3", "cpu"), ("llama", "cpu")}


def _line(version: str | None) -> str:
    return ".".join(version.split(".")[:2]) if version else "cpu"


def label(c: Candidate, runs: list[Any]) -> None:
    """Set ``c.confidence`` (weights, KV cache) and ``c.measured`` from the newest matching run."""
    s = c.settings
    if s is None:
        return
    gpu = c.gpu_name or "CPU engine"
    rec = next((r for r in runs if (r.model_id, r.precision, r.gpu, r.vllm_version)
                == (c.model_id, c.variant.precision, gpu, s.vllm_version)), None)
    if rec is not None:
        c.measured = {"weights_gib": rec.weights_gib, "kv_avail_gib": rec.kv_avail_gib,
                      "kv_tokens": rec.kv_tokens, "max_model_len": rec.max_model_len,
                      "recorded_at": rec.recorded_at}
        c.confidence = {"weights": "measured" if rec.weights_gib else "derived",
                        "kv_cache": "measured" if rec.kv_tokens else "derived"}
        return
    tier = "calibrated" if (c.family, _line(s.vllm_version)) in CALIBRATED else "derived"
    weights_from_files = c.memory is not None and c.memory.weights is not None \
        and c.memory.weights.source == "checkpoint"
    c.confidence = {"weights": "calibrated" if weights_from_files else tier, "kv_cache": tier}


def measured_run(runs: list[Any], model_id: str, precision: str, gpu: str, vllm: str | None, *, tp: int, pp: int,
                 max_num_seqs: int | None, limit_images: int | None, limit_videos: int | None = None) -> Any | None:
    """The newest run record whose engine profiled exactly this configuration (model,
    precision, GPU, release, parallelism, sequences, images, videos) and said its KV cache: what vLLM
    took from its budget there is then known, not estimated. Records without those settings
    (older ones) never match."""
    for r in runs:
        if ((r.model_id, r.precision, r.gpu, r.vllm_version) == (model_id, precision, gpu, vllm)
                and r.kv_avail_gib and r.gpu_memory_utilization
                and (r.tensor_parallel_size, r.pipeline_parallel_size, r.max_num_seqs, r.limit_images, r.videos)
                == (tp, pp, max_num_seqs, limit_images, limit_videos)):
            return r
    return None


def measured_term(rec: Any | None, estimated: int, visible: int) -> Term | None:
    """What the engine took from its budget in the run ``rec`` beyond ``estimated`` (the
    estimate of weights and overheads at that run's settings), as a term of the plan."""
    if rec is None:
        return None
    delta = int(rec.gpu_memory_utilization * visible) - int(rec.kv_avail_gib * GIB) - estimated
    return Term(name="measured", bytes=delta, note=f"vLLM's own profile here left {rec.kv_avail_gib:.2f} GiB of "
                f"KV cache at {rec.gpu_memory_utilization:g}: the estimate corrected by this")
