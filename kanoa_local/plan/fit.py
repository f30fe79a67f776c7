"""The fit planner: (machine, catalog, request) → every candidate with a verdict and reasons.

Pure: no I/O. Candidates are model × published variant × device group × tensor-parallel size ×
KV-cache dtype. Each passes a chain of filters (vision wanted? compute capability? an image that
still serves the model and that the driver can start? memory?) that either keeps it or records
why not, in the user's units. Kept candidates get the largest useful ``--max-model-len``, a
``--gpu-memory-utilization`` that what is free on the GPU allows, and a rank:

1. the precision asked for (``--quant``), if it fits at all;
2. fit class: ``good`` (the useful context at the target concurrency) before ``tight``;
3. the model's standing: verified > testing > planned > theoretical; fallback models last;
4. a vision model first when the request does not say (kanoa sends figures);
5. the larger model; then, within one model, the higher precision, fewer GPUs, a 16-bit KV cache.

A configuration vLLM would refuse is never "fits": the startup check on free memory, the KV
cache having room for one request of max_model_len, compute capabilities of each method, bf16
on pre-Ampere GPUs, models a release dropped or a plugin moved out of the stock image.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from ..catalog import STATUS_RANK, Catalog, ModelEntry, Variant, version_tuple
from ..hardware import GIB, Gpu, HardwareProfile, Model
from ..images import GPU_IMAGES, ImageLine
from . import memory as mem
from .memory import KvCapacity, Term, Weights

FitClass = Literal["good", "tight", "no"]
Device = Literal["gpu", "cpu"]

DEFAULT_GMU = 0.92             # vLLM >= 0.20 default; never planned above it
MIN_GMU = 0.30
GOOD_CONTEXT = 8192            # what kanoa prompts (figure + data summary + answer) want
MIN_CONTEXT = 2048             # below this an interpretation does not fit in the window
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


class Settings(Model):
    """What `up` passes to vLLM for this candidate."""

    image: str | None = None
    vllm_version: str | None = None
    dtype: str
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_model_len: int = 0
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = Field(1, description="= nodes: vLLM's rule is TP = GPUs per node, PP = nodes")
    gpu_indices: list[int] = []
    gpu_uuids: list[str] = []
    cpu_kv_cache_gib: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    limit_images: int | None = None
    trust_remote_code: bool = False
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


def gpu_groups(profile: HardwareProfile) -> list[list[Gpu]]:
    """Identical GPUs (name and memory) that tensor parallelism can span, largest group first.
    MIG slices never pair up: vLLM runs on one slice."""
    groups: dict[tuple[str, int], list[Gpu]] = {}
    for g in profile.gpus:
        key = (g.name + (f"#{g.uuid}" if g.is_mig_slice else ""), g.memory_total)
        groups.setdefault(key, []).append(g)
    return sorted(groups.values(), key=lambda gs: (-gs[0].memory_total * len(gs), gs[0].index))


def _image_for(entry: ModelEntry, variant: Variant, profile: HardwareProfile, cc: int) -> tuple[ImageLine | None, str]:
    """The newest GPU image the driver starts, with kernels for this GPU, that still serves
    this model and precision; or None and why."""
    if profile.cuda_driver_version is None:
        return None, "no NVIDIA driver answered, so no GPU image can run"
    why = []
    for line in GPU_IMAGES:
        if profile.cuda_driver_version < line.cuda:
            why.append(f"{line.tag} needs CUDA {line.cuda_text}")
            continue
        if cc < line.min_cc or (cc >= 100 and line.cuda < 12080):
            continue
        if not entry.supports_vllm(line.vllm, variant):
            why.append(f"vLLM {line.vllm} does not serve it")
            continue
        if not variant.in_tree(line.vllm):
            why.append(f"{variant.label} needs {variant.plugin} in vLLM {line.vllm}")
            continue
        if cc < variant.min_cc_on(line.vllm):
            why.append(f"{variant.label} needs compute capability {variant.min_cc_on(line.vllm) / 10:.1f} in vLLM {line.vllm}")
            continue
        return line, ""
    supported = [ln for ln in GPU_IMAGES if entry.supports_vllm(ln.vllm, variant)
                 and variant.in_tree(ln.vllm) and cc >= max(ln.min_cc, variant.min_cc_on(ln.vllm))]
    if supported and all(profile.cuda_driver_version < ln.cuda for ln in supported):
        newest = supported[-1]
        return None, (f"the driver supports CUDA {profile.cuda_driver_text}; the oldest vLLM image "
                      f"that serves it ({newest.tag}) needs CUDA {newest.cuda_text} "
                      f"(driver {newest.min_driver} or newer)")
    window = " to ".join(x for x in (entry.vllm_min, entry.vllm_max) if x)
    return None, ("no vLLM image kanoa-local knows serves it on this GPU"
                  + (f" (it needs vLLM {window})" if window else "") + ("; " + why[-1] if why else ""))


def _dtype_for(entry: ModelEntry, cc: int) -> tuple[str, str]:
    """The activation dtype vLLM uses: bf16 from Ampere (8.0), else fp16 - except models
    vLLM refuses in fp16 (Gemma: numerical instability), which then need float32."""
    if cc >= 80:
        return "bfloat16", ""
    if entry.family in FP16_UNSTABLE:
        return "float32", (f"{entry.name} is refused in float16 by vLLM (numerical instability) "
                           "and this GPU has no bfloat16, so it runs in float32")
    return "float16", "no bfloat16 before compute capability 8.0: float16"


FP16_UNSTABLE = {"gemma2", "gemma3"}


def _tp_options(entry: ModelEntry, n: int, limit: int | None) -> list[int]:
    arch = entry.arch
    assert arch is not None
    out = []
    for tp in (1, 2, 4, 8):
        if tp > n or (limit and tp > limit):
            break
        if arch.heads % tp == 0 and (arch.kv_heads % tp == 0 or tp % arch.kv_heads == 0):
            out.append(tp)
    return out


def _parallel_options(entry: ModelEntry, n: int, req: PlanRequest) -> list[tuple[int, int]]:
    """(tensor parallel, pipeline parallel) to try on ``req.nodes`` nodes of ``n`` GPUs: within
    one node any TP the heads allow; across nodes vLLM's rule, TP = every GPU of a node and
    PP = the nodes used (only whole nodes)."""
    if req.nodes > 1 and req.all_nodes:
        return [(n, req.nodes)] if n in _tp_options(entry, n, None) else []
    out = [(tp, 1) for tp in _tp_options(entry, n, req.max_gpus)]
    if req.nodes > 1 and n in _tp_options(entry, n, None):
        out += [(n, pp) for pp in range(2, req.nodes + 1)
                if not req.max_gpus or n * pp <= req.max_gpus]
    return out


def _useful_context(entry: ModelEntry, req: PlanRequest, device: Device) -> tuple[int, int]:
    """(minimum, goal) context for this model and request."""
    arch = entry.arch
    assert arch is not None
    cap = min(arch.max_context, req.max_context or arch.max_context)
    goal = CPU_CONTEXT if device == "cpu" else GOOD_CONTEXT
    lo = req.min_context or min(MIN_CONTEXT, cap)
    return min(lo, cap) if not req.min_context else lo, max(min(goal, cap), min(lo, cap))


# ----------------------------------------------------------------------------- GPU


def _stage_arch(arch, pp: int):
    """The layers one pipeline stage holds (vLLM splits layers evenly; the largest stage counts)."""
    if pp == 1:
        return arch
    layers = math.ceil(arch.layers / pp)
    sliding = min(layers, math.ceil(arch.sliding_layers * layers / arch.layers)) if arch.sliding_layers else 0
    return arch.model_copy(update={"layers": layers, "sliding_layers": sliding})


def _gpu_candidate(entry: ModelEntry, variant: Variant, group: list[Gpu], tp: int, kv_fp8: bool,
                   profile: HardwareProfile, req: PlanRequest, checkpoint: Weights | None,
                   pp: int = 1) -> Candidate:
    full_arch = entry.arch
    assert full_arch is not None
    arch = _stage_arch(full_arch, pp)      # per GPU: its stage's layers, its share of the heads
    gpus = sorted(group, key=lambda g: -g.memory_free)[:tp]
    g0 = gpus[0]
    cc = min(g.cc_value or 0 for g in gpus)
    total = g0.memory_total
    free = min(g.memory_free for g in gpus)
    name = f"{tp} × {g0.name}" if tp > 1 else g0.name
    if pp > 1:
        name = f"{pp} nodes × {name}"
    cand = Candidate(model_id=entry.id, model_name=entry.name, family=entry.family, vision=entry.vision, variant=variant, device="gpu",
                     gpu_name=name, fits="no")
    reasons, warnings = cand.reasons, cand.warnings

    if cc < variant.required_cc:
        reasons.append(f"{variant.label} needs compute capability {variant.required_cc / 10:.1f}; "
                       f"{g0.name} has {g0.cc_text}")
        return cand
    dtype, dtype_note = _dtype_for(entry, cc)
    if dtype == "float32" and variant.is_quantised:
        reasons.append(f"{variant.label} kernels need 16-bit activations; {dtype_note}")
        return cand
    if variant.precision == "fp8" and cc < 89:
        warnings.append("FP8 runs weight-only (Marlin) below compute capability 8.9: slower than on Ada/Hopper")
    image, why = _image_for(entry, variant, profile, cc)
    if image is None:
        reasons.append(why)
        return cand
    new_engine = version_tuple(image.vllm) >= (0, 20)
    if kv_fp8 and not (cc >= 89 or (cc >= 80 and new_engine and not entry.vision)):
        reasons.append("an FP8 KV cache needs compute capability 8.9 (8.0 for text models on "
                       "vLLM >= 0.20, through FlashInfer)")
        return cand

    dtype_bytes = mem.DTYPE_BYTES[dtype]
    kv_dtype_bytes = 1 if kv_fp8 else dtype_bytes
    batched, seqs = mem.scheduler_defaults("gpu", total, g0.name)
    if entry.max_num_seqs:
        seqs = min(seqs, entry.max_num_seqs)
    images = entry.max_images if entry.vision else 0
    # pipeline stages split the layers: per GPU, the weights are about 1/(TP × PP)
    w = mem.weights(entry, variant, dtype_bytes, tp * pp, checkpoint)
    act = mem.activation_bytes(entry, batched, seqs, dtype_bytes, tp, images)
    non_torch = mem.non_torch_bytes(tp)
    graphs = mem.cuda_graph_bytes(arch, seqs, tp)
    ctx = Term(name="CUDA context", bytes=mem.CUDA_CONTEXT_BYTES, note="driver + torch, per GPU")
    # vLLM >= 0.20 estimates CUDA-graph memory and takes it from the budget; older releases
    # capture the graphs after sizing the KV cache, in the slack above the budget.
    graphs_inside = new_engine
    if graphs_inside:
        graphs = graphs.model_copy(update={"note": "estimated by vLLM and kept out of the KV cache"})

    # gmu: vLLM's default unless what is free (after our own context) is less.
    margin = int(0.25 * GIB)
    room = free - ctx.bytes - margin - (0 if graphs_inside else graphs.bytes)
    gmu = min(DEFAULT_GMU, math.floor(room / total * 100) / 100)
    if gmu < MIN_GMU:
        reasons.append(f"only {_gib(free)} of {_gib(total)} is free on {g0.name}"
                       + (" (other processes hold the rest)" if total - free > 2 * GIB else ""))
        cand.needs = f"free GPU memory: stop the processes using {g0.name}"
        return cand
    if gmu < DEFAULT_GMU - 0.02:
        warnings.append(f"other processes hold {_gib(total - free)} on {g0.name}: "
                        f"--gpu-memory-utilization lowered to {gmu:.2f}")
    budget = int(gmu * total)
    fixed = w.total + act.bytes + non_torch.bytes + (graphs.bytes if graphs_inside else 0)
    kv_bytes = budget - fixed
    lo, goal = _useful_context(entry, req, "gpu")
    block = mem.GPU_BLOCK_SIZE
    in_flight = (2 if new_engine else 1) * batched     # async scheduling keeps two batches in flight
    terms = [Term(name="weights", bytes=w.total, note=_weights_note(w, variant, dtype, tp * pp)), act, non_torch]
    if graphs_inside:
        terms.append(graphs)
    breakdown = MemoryBreakdown(device="gpu", per_device_total=total, per_device_free=free,
                                budget=budget, terms=terms, weights=w,
                                outside_budget=[ctx] if graphs_inside else [ctx, graphs])
    cand.memory = breakdown
    if kv_bytes <= 0:
        reasons.append(f"weights + overheads need {_gib(fixed)} per GPU; the budget is {_gib(budget)} "
                       f"({gmu:.2f} × {_gib(total)})")
        cand.needs, cand.needs_bytes = _needs(fixed, lo, arch, kv_dtype_bytes, tp, gmu_default=DEFAULT_GMU, pp=pp)
        return cand

    ceiling = min(arch.max_context, req.max_context or arch.max_context)
    def best_len(conc: float) -> int:
        return mem.max_len_for(arch, kv_bytes, conc, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                               block_size=block, in_flight_tokens=in_flight, ceiling=ceiling)
    good_len = best_len(req.concurrency)
    one_len = best_len(1.0)
    if one_len < lo:
        reasons.append(f"after {_gib(fixed)} of weights and overheads, {_gib(kv_bytes)} of KV cache "
                       f"holds {_tokens(one_len)} tokens; at least {_tokens(lo)} are needed")
        cand.needs, cand.needs_bytes = _needs(fixed, lo, arch, kv_dtype_bytes, tp, gmu_default=DEFAULT_GMU, pp=pp)
        return cand
    if good_len >= goal:
        fit: FitClass = "good"
        max_len = good_len
    elif good_len >= lo:
        fit, max_len = "tight", good_len
        warnings.append(f"context limited to {_tokens(max_len)} tokens for {req.concurrency} "
                        f"requests at once (goal {_tokens(goal)})")
    else:
        fit, max_len = "tight", one_len
        warnings.append(f"room for one request of {_tokens(one_len)} tokens at a time")
    # Settle on a round length, then report what vLLM will say about it.
    cap = mem.kv_capacity(arch, kv_bytes, max_len, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                          block_size=block, in_flight_tokens=in_flight)
    breakdown.kv_bytes = kv_bytes
    breakdown.kv = cap
    breakdown.kv_bytes_per_token = mem.kv_bytes_per_token(arch, kv_dtype_bytes, tp, max_len)
    terms.append(Term(name="KV cache", bytes=kv_bytes,
                      note=f"{cap.tokens:,} tokens; {cap.concurrency:.1f} × {_tokens(max_len)}"))
    cand.fits = fit
    cand.settings = Settings(
        image=image.image, vllm_version=image.vllm, dtype=dtype,
        quantization=variant.quantization, kv_cache_dtype="fp8" if kv_fp8 else "auto",
        max_model_len=max_len, gpu_memory_utilization=gmu, tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_indices=sorted(g.index for g in gpus), gpu_uuids=[g.uuid for g in sorted(gpus, key=lambda g: g.index)],
        limit_images=images if entry.vision else None,
        max_num_seqs=entry.max_num_seqs, trust_remote_code=entry.trust_remote_code, sampling=dict(entry.sampling))
    if dtype_note:
        warnings.append(dtype_note)
    if variant.plugin and image.vllm != GPU_IMAGES[0].vllm:
        warnings.append(f"{variant.label} needs {variant.plugin} in current vLLM: planned on the "
                        f"{image.tag} image, which has it built in")
    elif image is not GPU_IMAGES[0]:
        warnings.append(f"runs on the older {image.tag} image ({image.note})")
    reasons.append(_fit_sentence(cand, w, kv_bytes, cap, max_len, tp * pp))
    if pp > 1:
        warnings.append(f"spans {pp} nodes (pipeline parallel {pp}, tensor parallel {tp} each): "
                        "the nodes need a fast network and the same weights cache")
    return cand


def _weights_note(w: Weights, variant: Variant, dtype: str, tp: int) -> str:
    src = "read from the checkpoint" if w.source == "checkpoint" else "from parameter counts"
    form = variant.label if variant.is_quantised else dtype
    return f"{form}, {src}" + (f", split over {tp} GPUs" if tp > 1 else "")


def _fit_sentence(c: Candidate, w: Weights, kv_bytes: int, cap: KvCapacity, max_len: int, tp: int) -> str:
    per = " per GPU" if tp > 1 else ""
    return (f"weights {_gib(w.total)}{per}, KV cache {_gib(kv_bytes)}{per} = {cap.tokens:,} tokens: "
            f"{cap.concurrency:.1f} requests of {_tokens(max_len)} at once")


def _needs(fixed: int, context: int, arch, kv_dtype_bytes: int, tp: int, gmu_default: float,
           pp: int = 1) -> tuple[str, int]:
    """The GPU memory this would need for ``context`` tokens, in cards people can buy; beyond
    one node of 8 GPUs, in nodes."""
    kv = int(mem.kv_bytes_per_token(arch, kv_dtype_bytes, tp, context) * context) + int(0.2 * GIB)
    per_gpu = (fixed + kv) / gmu_default + mem.CUDA_CONTEXT_BYTES + 0.5 * GIB
    gpus = tp * pp
    total = per_gpu * gpus
    for size in (12, 16, 24, 32, 48, 80, 141):
        if per_gpu * 1.0 <= size * GIB * 0.995:
            card = f"a {size} GB GPU" if gpus == 1 else (
                f"{pp} nodes × {tp} × {size} GB GPUs" if pp > 1 else f"{tp} × {size} GB GPUs")
            return f"{card} for {_tokens(context)} tokens ({total / GIB:.0f} GiB in all)", int(total)
    n = 1
    while n < 256 and total / n > 80 * GIB * 0.9:
        n *= 2
    example = f"{n} × 80 GB GPUs" if n <= 8 else f"{n // 8} nodes × 8 × 80 GB GPUs"
    return (f"about {total / GIB:.0f} GiB of GPU memory for {_tokens(context)} tokens "
            f"(e.g. {example})", int(total))


# ----------------------------------------------------------------------------- CPU


def _cpu_candidate(entry: ModelEntry, variant: Variant, profile: HardwareProfile, req: PlanRequest,
                   checkpoint: Weights | None) -> Candidate:
    arch = entry.arch
    assert arch is not None
    cand = Candidate(model_id=entry.id, model_name=entry.name, family=entry.family, vision=entry.vision, variant=variant, device="cpu",
                     gpu_name=None, fits="no")
    reasons, warnings = cand.reasons, cand.warnings
    if not entry.cpu:
        reasons.append(f"{entry.params_b:g} B parameters are too slow on the CPU engine: it needs a GPU")
        return cand
    if variant.is_quantised:
        reasons.append(f"the CPU plan uses unquantised weights; {variant.label} is for GPUs")
        return cand
    # bf16 on CPUs needs AVX-512 BF16/AMX, and VMs that advertise AMX have killed the worker
    # with SIGILL at the first request: float32 always works.
    dtype = "float32"
    dtype_bytes = 4
    # Several CPU nodes only when they are given to be used (Docker hosts for `up`): one
    # pipeline stage each, its share of the layers and of the KV cache per node.
    pp = req.nodes if req.all_nodes else 1
    if pp > 1:
        if arch.layers < pp:
            reasons.append(f"{arch.layers} layers cannot be split over {pp} nodes")
            return cand
        arch = _stage_arch(arch, pp)
    w = mem.weights(entry, variant, dtype_bytes, pp, checkpoint)
    batched, seqs = mem.scheduler_defaults("cpu", 0)
    act = mem.activation_bytes(entry, batched, seqs, dtype_bytes, 1, entry.max_images if entry.vision else 0)
    runtime = Term(name="runtime", bytes=mem.CPU_RUNTIME_BYTES, note="API server, engine and worker processes")
    budget = int(profile.ram_available * CPU_RAM_SHARE)
    lo, goal = _useful_context(entry, req, "cpu")
    per_token = mem.kv_bytes_per_token(arch, dtype_bytes, 1, goal)
    want = per_token * goal * req.concurrency * 1.1
    kv_gib = max(1, min(CPU_MAX_KV_GIB, math.ceil(want / GIB)))
    fixed = w.total + act.bytes + runtime.bytes
    while kv_gib > 1 and fixed + kv_gib * GIB > budget:
        kv_gib -= 1
    kv_bytes = kv_gib * GIB
    terms = [Term(name="weights", bytes=w.total, note=_weights_note(w, variant, dtype, 1)), act, runtime]
    breakdown = MemoryBreakdown(device="cpu", per_device_total=profile.ram_total,
                                per_device_free=profile.ram_available, budget=budget, terms=terms, weights=w)
    cand.memory = breakdown
    if fixed + kv_bytes > budget:
        reasons.append(f"needs {_gib(fixed + kv_bytes)} of RAM; {_gib(profile.ram_available)} is available")
        cand.needs = f"{(fixed + kv_bytes) / CPU_RAM_SHARE / 1e9:.0f} GB of free RAM"
        cand.needs_bytes = int((fixed + kv_bytes) / CPU_RAM_SHARE)
        return cand
    ceiling = min(arch.max_context, req.max_context or arch.max_context, goal if not req.min_context else arch.max_context)
    ceiling = max(ceiling, min(lo, arch.max_context))
    def best_len(conc: float) -> int:
        return mem.max_len_for(arch, kv_bytes, conc, kv_dtype_bytes=dtype_bytes, tp=1,
                               block_size=mem.CPU_BLOCK_SIZE, in_flight_tokens=batched, ceiling=ceiling)
    max_len = best_len(req.concurrency)
    fit: FitClass = "good" if max_len >= goal else "tight"
    if max_len < lo:
        max_len = best_len(1.0)
        if max_len < lo:
            reasons.append(f"{kv_gib} GiB of KV cache holds {_tokens(max_len)} tokens; {_tokens(lo)} needed")
            return cand
        fit = "tight"
    cap = mem.kv_capacity(arch, kv_bytes, max_len, kv_dtype_bytes=dtype_bytes, tp=1,
                          block_size=mem.CPU_BLOCK_SIZE, in_flight_tokens=batched)
    breakdown.kv_bytes, breakdown.kv = kv_bytes, cap
    breakdown.kv_bytes_per_token = mem.kv_bytes_per_token(arch, dtype_bytes, 1, max_len)
    terms.append(Term(name="KV cache", bytes=kv_bytes,
                      note=f"VLLM_CPU_KVCACHE_SPACE={kv_gib}: {cap.tokens:,} tokens"))
    cand.fits = fit
    cand.settings = Settings(image=None, vllm_version=None, dtype=dtype, max_model_len=max_len,
                             cpu_kv_cache_gib=kv_gib, pipeline_parallel_size=pp,
                             # eager: no C++ compiler needed, no compile wait. A pipeline stage
                             # after the first needs vLLM's warm-up, which eager mode skips (its
                             # buffers for the previous stage's output would be missing): trace
                             # once and run the graph eagerly instead.
                             enforce_eager=pp == 1,
                             compilation_config=CPU_PIPELINE_COMPILATION if pp > 1 else None,
                             limit_images=entry.max_images if entry.vision else None,
                             trust_remote_code=entry.trust_remote_code, sampling=dict(entry.sampling))
    reasons.append(f"CPU engine in float32 (safe on every x86 CPU): weights {_gib(w.total)}, "
                   f"KV cache {kv_gib} GiB = {cap.tokens:,} tokens, {cap.concurrency:.1f} × {_tokens(max_len)}"
                   + (f", per node of {pp} (pipeline parallel {pp})" if pp > 1 else ""))
    if not entry.instruct:
        warnings.append(f"{entry.name} is a base model, not instruction-tuned: expect weak answers")
    warnings.append(f"the CPU engine is slow: expect a few tokens per second on {profile.cpu.count} cores")
    return cand


# ----------------------------------------------------------------------------- ranking


def _rank(c: Candidate, entry: ModelEntry, req: PlanRequest) -> list[float]:
    fit = {"good": 0, "tight": 1, "no": 2}[c.fits]
    want_precision = 0 if (req.precision and c.variant.precision == req.precision and c.fits != "no") else 1
    prefer_vision = 0 if (req.vision is None and entry.vision) or req.vision is not None else 1
    s = c.settings
    return [want_precision, fit, float(entry.fallback), STATUS_RANK[entry.status], prefer_vision,
            -entry.params_b, PRECISION_RANK.get(c.variant.precision, 9),
            float(s.tensor_parallel_size * s.pipeline_parallel_size) if s else 99.0,
            1.0 if s and s.kv_cache_dtype == "fp8" else 0.0,
            -(s.max_model_len if s else 0)]


def _source_warnings(entry: ModelEntry, variant: Variant, profile: HardwareProfile,
                     req: PlanRequest) -> list[str]:
    """What stands between the plan and its weights: a gated repo, disk space."""
    out = []
    if variant.repo and not variant.cached and entry.gated and req.hf_token is False:
        out.append(f"{variant.repo} is gated: accept its license on Hugging Face and set HF_TOKEN")
    if variant.repo and not variant.cached and profile.disk_free is not None:
        size = variant.size_gb * 1e9 if variant.size_gb else entry.params_b * 1e9 * (
            variant.weight_bits / 8 if variant.is_quantised else 2)
        if size * 1.1 > profile.disk_free:
            out.append(f"the download is about {size / 1e9:.0f} GB and {profile.disk_free / 1e9:.0f} GB "
                       f"is free at {profile.disk_path}")
    return out


def _usable_gpus(profile: HardwareProfile) -> list[Gpu]:
    # A GPU split into MIG slices cannot be used whole; its slices can, one at a time.
    return [g for g in profile.gpus
            if (g.cc_value or 0) >= 60 and not (g.mig_enabled and not g.is_mig_slice)]


def plan(profile: HardwareProfile, catalog: Catalog, request: PlanRequest | None = None,
         checkpoints: dict[tuple[str, str], Weights] | None = None) -> PlanResult:
    """Every candidate for ``request`` on ``profile``, best first, with the chosen one.

    ``checkpoints`` maps (model id, variant source) to weights read from real checkpoint files
    (see :mod:`kanoa_local.checkpoint`); everything else is estimated from the catalog.
    """
    req = request or PlanRequest()
    checkpoints = checkpoints or {}
    entries = [catalog.get(req.model)] if req.model else list(catalog.models.values())
    gpus = _usable_gpus(profile)
    device: Device = "cpu" if req.device == "cpu" or not gpus else "gpu"
    machine = _machine_text(profile, device)
    if req.nodes > 1 and (device == "gpu" or req.all_nodes):
        machine = f"{req.nodes} nodes, each {machine}"
    out: list[Candidate] = []
    for entry in entries:
        if entry.arch is None:
            out.append(Candidate(model_id=entry.id, model_name=entry.name, family=entry.family, vision=entry.vision, variant=entry.variants[0],
                                 device=device, fits="no",
                                 reasons=["no architecture numbers: add [arch] or a local config.json"]))
            continue
        if req.vision and not entry.vision:
            out.append(Candidate(model_id=entry.id, model_name=entry.name, family=entry.family, vision=entry.vision, variant=entry.variants[0],
                                 device=device, fits="no", reasons=["text-only; --vision asks for a model that reads images"]))
            continue
        model_cands: list[Candidate] = []
        for variant in entry.variants:
            if req.offline and variant.repo and not variant.local:
                model_cands.append(Candidate(model_id=entry.id, model_name=entry.name, family=entry.family, vision=entry.vision, variant=variant,
                                             device=device, fits="no",
                                             reasons=[f"offline and {variant.repo} is not in the Hugging Face cache"]))
                continue
            ck = checkpoints.get((entry.id, variant.source))
            if device == "cpu":
                model_cands.append(_cpu_candidate(entry, variant, profile, req, ck))
                continue
            for group in gpu_groups(profile.model_copy(update={"gpus": gpus})):
                for tp, pp in _parallel_options(entry, len(group), req):
                    for kv_fp8 in ((False, True) if req.kv_cache_dtype != "fp8" else (True,)):
                        if kv_fp8 and req.kv_cache_dtype == "auto":
                            continue
                        model_cands.append(_gpu_candidate(entry, variant, group, tp, kv_fp8, profile, req, ck, pp=pp))
        for c in model_cands:
            c.rank = _rank(c, entry, req)
            if c.fits != "no":
                c.warnings.extend(_source_warnings(entry, c.variant, profile, req))
        out.extend(_prune(model_cands))
    out.sort(key=lambda c: c.rank)
    chosen = next((c for c in out if c.fits != "no"), None)
    summary, remedy = _summary(chosen, out, req, device, machine, catalog)
    return PlanResult(request=req, machine=machine, chosen=chosen, candidates=out, summary=summary,
                      remedy=remedy)


def _prune(cands: list[Candidate]) -> list[Candidate]:
    """Per model and variant keep the best fitting candidate (its TP/KV choices), or, when none
    fits, the one closest to fitting, so the list reads one line per variant."""
    best: dict[tuple[str, str], Candidate] = {}
    for c in cands:
        key = c.variant.key
        cur = best.get(key)
        if cur is None or (c.fits != "no" and (cur.fits == "no" or c.rank < cur.rank)):
            best[key] = c
        elif c.fits == "no" and cur.fits == "no" and cur.memory is None and c.memory is not None:
            best[key] = c
    return list(best.values())


def _machine_text(profile: HardwareProfile, device: Device) -> str:
    if device == "cpu":
        return (f"CPU engine: {profile.cpu.count} cores, {profile.ram_available / GIB:.1f} GiB RAM available"
                + (" (no usable GPU)" if not _usable_gpus(profile) else ""))
    parts = [f"{len(gs)} × {gs[0].name}" if len(gs) > 1 else gs[0].name for gs in gpu_groups(profile)]
    return ", ".join(parts) + f" ({profile.gpus[0].memory_total / GIB:.1f} GiB each)"


def _summary(chosen: Candidate | None, cands: list[Candidate], req: PlanRequest, device: Device,
             machine: str, catalog: Catalog) -> tuple[str, str | None]:
    if chosen:
        s = chosen.settings
        assert s is not None
        where = f"on {chosen.gpu_name}" if device == "gpu" else "on the CPU engine"
        form = chosen.variant.label if device == "gpu" else "float32"
        return (f"{chosen.model_name} ({form}) {where}, context "
                f"{_tokens(s.max_model_len)}" + (" — tight" if chosen.fits == "tight" else ""), None)
    if req.model:
        entry = catalog.get(req.model)
        needs = [c.needs for c in sorted((c for c in cands if c.needs), key=lambda c: c.needs_bytes or 0)]
        first = cands[0].reasons[0] if cands and cands[0].reasons else "no variant fits"
        return (f"{entry.name} does not fit {machine}: {first}",
                (f"it would need {needs[0]}; " if needs else "") + "try `kanoa-local plan` for what fits here")
    closest = closest_miss(cands)
    return (f"nothing in the catalog fits {machine}",
            (f"closest: {closest.label}, which needs {closest.needs}" if closest else
             "add a smaller model to models.toml") + "; `kanoa-local models` lists them all")


_LOST = ["not the precision asked for", "fits only tightly", "demo-grade fallback",
         "less proven (status)", "text-only", "smaller model", "lower precision",
         "needs more GPUs", "needs an FP8 KV cache", "shorter context"]


def why_lost(c: Candidate, chosen: Candidate) -> str:
    """One phrase: why ``c`` ranks below ``chosen`` (the first rank key that differs)."""
    for i, (a, b) in enumerate(zip(c.rank, chosen.rank)):
        if a != b:
            if i == 5 and a < b:
                return "larger but less proven"
            return _LOST[i] if i < len(_LOST) else "ranked lower"
    return "equal"


def closest_miss(cands: list[Candidate]) -> Candidate | None:
    """Of candidates that do not fit, the one needing the least memory."""
    misses = [c for c in cands if c.needs_bytes]
    return min(misses, key=lambda c: c.needs_bytes or 0) if misses else None
