"""What the engine itself reported after a good `up`, kept so the next plan can say so.

After every successful start `up` records, in kanoa-local's state dir (``runs/``), the figures
vLLM printed (weights, available KV cache, KV tokens) with the plan's model, precision, GPU,
image, context and the settings that decide vLLM's profiling. A later plan of the same model,
precision, GPU and vLLM release labels its figures *measured* and shows what the engine said;
with the same parallelism, sequences, images and graphs it also plans from what the engine
took from its budget instead of the estimate (:func:`kanoa_local.plan.gpu` ``measured``); `models` marks the model "verified on
<GPU>". Records are small JSON files, one per (model, precision, GPU, release), the newest
wins; a damaged one is skipped, never fatal. The planner stays pure: records are loaded here
and handed to it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from .hardware import Model
from .settings import state_dir

Confidence = Literal["measured", "calibrated", "derived"]


class RunRecord(Model):
    model_id: str
    precision: str
    device: Literal["gpu", "cpu"]
    gpu: str                                     # the plan's GPU text ("2 × NVIDIA L4"), "CPU engine"
    vllm_version: str | None = None              # the planned image's release (None: the CPU venv)
    image: str | None = None
    max_model_len: int
    weights_gib: float | None = None
    kv_avail_gib: float | None = None
    kv_tokens: int | None = None
    # the settings that decide what vLLM's profiling takes from the budget (None: a record from
    # before they were kept, which labels a plan but does not correct it)
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    max_num_seqs: int | None = None
    limit_images: int | None = None
    # None on a vision model's record: from before kanoa-local named videos (vLLM's default, 999)
    limit_videos: int | None = None
    enforce_eager: bool | None = None
    recorded_at: float

    @property
    def videos(self) -> int | None:
        return self.limit_videos if self.limit_videos is not None or self.limit_images is None else 999

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        return (self.model_id, self.precision, self.gpu, self.vllm_version)


def runs_dir() -> Path:
    return state_dir() / "runs"


def record(cand: Any, figures: Any) -> Path | None:
    """Keep what the engine reported for the plan ``cand``; None when it reported nothing."""
    s = cand.settings
    if figures is None or s is None or (figures.kv_tokens is None and figures.weights_gib is None
                                        and figures.checkpoint_gib is None):
        return None
    from .statefiles import write_atomic

    rec = RunRecord(model_id=cand.model_id, precision=cand.variant.precision, device=cand.device,
                    gpu=cand.gpu_name or "CPU engine", vllm_version=s.vllm_version, image=s.image,
                    max_model_len=s.max_model_len, weights_gib=figures.weights_gib or figures.checkpoint_gib,
                    kv_avail_gib=figures.kv_avail_gib, kv_tokens=figures.kv_tokens,
                    gpu_memory_utilization=s.gpu_memory_utilization, tensor_parallel_size=s.tensor_parallel_size,
                    pipeline_parallel_size=s.pipeline_parallel_size, max_num_seqs=s.max_num_seqs,
                    limit_images=s.limit_images, limit_videos=s.limit_videos, enforce_eager=s.enforce_eager,
                    recorded_at=time.time())
    name = hashlib.sha256(repr(rec.key).encode()).hexdigest()[:16] + ".json"
    path = runs_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, rec.model_dump_json(indent=1), mode=0o600)
    return path


def load_all() -> list[RunRecord]:
    """Every readable record (damaged ones are skipped), newest first."""
    out = []
    try:
        files = list(runs_dir().glob("*.json"))
    except OSError:
        return []
    for f in files:
        try:
            out.append(RunRecord.model_validate_json(f.read_text()))
        except (OSError, ValueError, ValidationError):
            continue
    return sorted(out, key=lambda r: r.recorded_at, reverse=True)
