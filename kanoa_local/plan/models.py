"""The planner's vocabulary: the request, a candidate's vLLM settings and memory, the result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..catalog import Variant
from ..hardware import GIB, Model
from .memory import KvCapacity, Term, Weights

FitClass = Literal["good", "tight", "no"]
Device = Literal["gpu", "cpu"]

DEFAULT_GMU = 0.92             # vLLM >= 0.20 default; never planned above it
MIN_GMU = 0.30
GOOD_CONTEXT = 8192            # what kanoa prompts (figure + data summary + answer) want
MIN_CONTEXT = 2048             # below this an interpretation does not fit in the window
#: a GPU plan keeps this much KV cache beyond one request of max_model_len: vLLM refuses a start
#: that falls short, and the KV estimate is off by up to ~20 % on the calibration set
#: (benchmarks/estimator.py): a plan within 10 % of the edge is not promised
KV_MARGIN = 1.10
TARGET_CONCURRENCY = 4         # a few requests at full length at once; 1 is "tight"
CPU_CONTEXT = 4096             # the CPU engine is slow; long windows only cost RAM
CPU_MAX_KV_GIB = 4
CPU_PIPELINE_COMPILATION = {"mode": 2, "backend": "eager"}   # DYNAMO_TRACE_ONCE, no inductor
CPU_RAM_SHARE = 0.85           # leave the OS and the user's notebook some room
PRECISION_RANK = {"fp32": 0, "bf16": 1, "fp16": 1, "fp8": 2, "int8": 2, "awq": 3, "w4a16": 3,
                  "gptq": 4, "nvfp4": 3, "bnb-4bit": 5, "gguf": 6}


class PlanRequest(Model):
    model: str | None = Field(None, description="a model id/alias/repo; None = best that fits")
    vision: bool | None = Field(None, description="True: must read images; False: text is enough")
    min_context: int | None = Field(None, gt=0)
    max_context: int | None = Field(None, gt=0, description="cap --max-model-len")
    precision: str | None = Field(None, description="preferred precision, e.g. awq or fp8")
    concurrency: int = Field(TARGET_CONCURRENCY, ge=1)
    device: Literal["auto", "gpu", "cpu"] = "auto"
    max_gpus: int | None = Field(None, ge=1)
    nodes: int = Field(1, ge=1, description="identical nodes like the profile's (pipeline parallel "
                                            "across nodes, tensor parallel within one)")
    all_nodes: bool = Field(False, description="use every one of the nodes (pipeline parallel = "
                                               "nodes), not the fewest that fit: they are given")
    kv_cache_dtype: Literal["auto", "fp8"] | None = None
    offline: bool = Field(False, description="no model hub: only local or packaged weights")
    hf_token: bool | None = Field(None, description="whether HF_TOKEN is set (None: unknown)")
    trust_remote_code: bool = Field(False, description="allow models whose repository's own Python code "
                                                       "vLLM must run (--trust-remote-code)")
    # The exact question: vLLM's own arguments, as given. Each one set is planned as it is
    # (no search over it): does this configuration fit, by how much, what context it leaves.
    max_model_len: int | None = Field(None, ge=16, description="exactly this --max-model-len")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="exactly this share")
    tensor_parallel_size: int | None = Field(None, ge=1, le=64)
    max_num_seqs: int | None = Field(None, ge=1, le=65536)
    limit_mm_per_prompt: int | None = Field(None, ge=0, le=999, description="images per prompt")
    limit_videos: int | None = Field(None, ge=0, le=999, description="videos per prompt: kanoa-local passes 0 "
                                     "unless asked (vLLM's own default, 999, profiles a dummy video)")
    flashinfer: bool | None = Field(None, description="whether the engine has FlashInfer: the official images "
                                    "do, a plain pip install of vLLM 0.9-0.11.0 does not (its sampler then "
                                    "sorts the vocabulary); None: as the image")
    vllm_version: str | None = Field(None, pattern=r"^\d+\.\d+(\.\d+)?$",
                                     description="plan for the image of this vLLM release and its memory rules (outside "
                                                 "the releases kanoa-local knows, the nearest line)")


    @model_validator(mode="before")
    @classmethod
    def _mm_limits(cls, data: Any) -> Any:
        """vLLM's JSON form, {"image": N, "video": M}: a modality it does not name gets vLLM's 999."""
        limits = data.get("limit_mm_per_prompt") if isinstance(data, dict) else None
        if isinstance(limits, dict):
            unknown = set(limits) - {"image", "video"}
            if unknown:
                raise ValueError(f"--limit-mm-per-prompt: kanoa-local plans images and videos, not {sorted(unknown)}")
            data = {**data, "limit_mm_per_prompt": limits.get("image", 999),
                    "limit_videos": limits.get("video", 999)}
        return data


class Settings(Model):
    """What `up` passes to vLLM for this candidate."""

    image: str | None = None
    vllm_version: str | None = None
    dtype: str
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_model_len: int = 0
    auto_context: bool = Field(False, description="--max-model-len auto (vLLM >= 0.14 fits the context to its KV "
                                                  "cache): a retry's safety net; max_model_len is then what "
                                                  "kanoa-local expects")
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = Field(None, gt=0, description="--kv-cache-memory-bytes (vLLM >= 0.10.2: "
                                              "this KV cache, no profiling share): a retry's safety net after an "
                                              "OOM beside the budget")
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = Field(1, description="= nodes: vLLM's rule is TP = GPUs per node, PP = nodes")
    gpu_indices: list[int] = []
    gpu_uuids: list[str] = []
    cpu_kv_cache_gib: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    limit_images: int | None = None
    limit_videos: int | None = None
    trust_remote_code: bool = False
    engine_env: dict[str, str] = Field(default_factory=dict, description="extra environment for the engine "
                                                                       "(NCCL_P2P_DISABLE after a P2P failure)")
    sampling: dict[str, float] = {}
    enforce_eager: bool = False
    compilation_config: dict[str, Any] | None = Field(
        None, description="vLLM's --compilation-config (CPU pipeline stages: traced, run eagerly)")
    block_size: int | None = None


class MemoryBreakdown(Model):
    device: Device
    per_device_total: int = Field(description="bytes per GPU, or RAM for the CPU engine")
    per_device_free: int
    budget: int = Field(description="what vLLM may use per device (gmu × total, or the RAM share)")
    terms: list[Term] = Field(description="weights, activations, ... and the KV cache that is left")
    outside_budget: list[Term] = []
    weights: Weights | None = None
    kv_bytes: int = 0
    kv_bytes_per_token: float = Field(0, description="per device, averaged over a max-length request")
    kv: KvCapacity | None = None
    largest_context: int = Field(0, description="the longest single request the KV cache holds (tokens)")
    headroom_bytes: int | None = Field(None, description="KV cache beyond one request of max_model_len "
                                                         "(negative: short by that much)")


class Candidate(Model):
    model_id: str
    model_name: str
    family: str | None = None
    vision: bool = False
    variant: Variant
    device: Device
    gpu_name: str | None = None
    fits: FitClass
    settings: Settings | None = None
    memory: MemoryBreakdown | None = None
    reasons: list[str] = []
    warnings: list[str] = []
    needs: str | None = Field(None, description="the hardware it would need, when it does not fit")
    needs_bytes: int | None = Field(None, description="GPU memory in all that it would need")
    eager: bool = Field(False, description="planned without CUDA graphs (--enforce-eager) to fit", exclude=True)
    confidence: dict[str, str] = Field(default_factory=dict, description="weights / kv_cache: measured "
                                       "(this machine's engine said so), calibrated or derived")
    measured: dict[str, Any] | None = Field(None, description="what the engine reported on this machine for "
                                            "this model, precision, GPU and release (a run record)")
    rank: list[float] = []

    @property
    def label(self) -> str:
        return f"{self.model_id} [{self.variant.precision}]"


class PlanResult(Model):
    request: PlanRequest
    machine: str
    chosen: Candidate | None
    candidates: list[Candidate] = Field(description="every candidate, best first")
    summary: str
    remedy: str | None = None
    unmet: str | None = Field(None, description="what was asked for (a model, a precision) and cannot be had "
                                                "here, with why; the plan then shows what fits instead")

    def alternatives(self, n: int = 8, per_model: int = 1) -> list[Candidate]:
        """The next best fitting candidates, at most ``per_model`` of each model."""
        out: list[Candidate] = []
        seen: dict[str, int] = {}
        for c in self.candidates:
            if c is self.chosen or c.fits == "no":
                continue
            if self.chosen is not None and c.model_id == self.chosen.model_id and per_model == 1:
                seen[c.model_id] = seen.get(c.model_id, 0)
            if seen.get(c.model_id, 0) >= per_model:
                continue
            seen[c.model_id] = seen.get(c.model_id, 0) + 1
            out.append(c)
        return out[:n]


# ----------------------------------------------------------------------------- helpers


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _gb(n: float) -> str:
    return f"{n / 1e9:.0f} GB"


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


def beyond_context(entry: Any, req: PlanRequest) -> str | None:
    """The refusal of an exact --max-model-len beyond the model's own context, which vLLM refuses."""
    top = entry.arch.max_context if entry.arch else None
    if req.max_model_len is None or top is None or req.max_model_len <= top:
        return None
    return f"--max-model-len {req.max_model_len:,} is more than {entry.name}'s {top:,} tokens: vLLM refuses it"
