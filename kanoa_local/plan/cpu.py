"""CPU candidates: the CPU engine in float32, its KV space from RAM."""

from __future__ import annotations

import math


from ..catalog import ModelEntry, Variant
from ..hardware import GIB, HardwareProfile
from . import memory as mem, profiling as prof
from .memory import Term, Weights
from .models import (beyond_context, CPU_MAX_KV_GIB, CPU_PIPELINE_COMPILATION, CPU_RAM_SHARE, Candidate, FitClass, MemoryBreakdown, PlanRequest, Settings, _gib, _tokens)
from .gpu import _stage_arch, _useful_context, _weights_note


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
    w = mem.weights(entry, variant, dtype_bytes, pp, checkpoint, vision_ranks=1)
    batched, seqs = prof.scheduler_defaults("cpu", 0)
    seqs = req.max_num_seqs or seqs
    images = (req.limit_mm_per_prompt if req.limit_mm_per_prompt is not None else entry.max_images) \
        if entry.vision else 0
    beyond = beyond_context(entry, req)
    if beyond:
        reasons.append(beyond)
        return cand
    if (req.tensor_parallel_size or 1) > 1:
        reasons.append("--tensor-parallel-size is for GPUs: the CPU plan runs one engine")
        return cand
    if req.gpu_memory_utilization is not None:
        warnings.append("--gpu-memory-utilization does not apply to the CPU engine (its KV cache is "
                        "VLLM_CPU_KVCACHE_SPACE)")
    videos = (req.limit_videos or 0) if entry.vision else 0
    act = prof.activation_bytes(entry, batched, seqs, dtype_bytes, 1, images, videos=videos,
                               max_len=req.max_model_len or arch.max_context)
    runtime = Term(name="runtime", bytes=mem.CPU_RUNTIME_BYTES, note="API server, engine and worker processes")
    budget = int(profile.ram_available * CPU_RAM_SHARE)
    lo, goal = _useful_context(entry, req, "cpu")
    target = req.max_model_len or goal
    per_token = mem.kv_bytes_per_token(arch, dtype_bytes, 1, target)
    want = per_token * target * req.concurrency * 1.1
    kv_gib = max(1, min(CPU_MAX_KV_GIB, math.ceil(want / GIB)))
    if req.max_model_len is not None:      # at least one request of exactly that length
        one = mem.kv_request_bytes(arch, target, kv_dtype_bytes=dtype_bytes, block_size=mem.CPU_BLOCK_SIZE,
                                   in_flight_tokens=batched)
        kv_gib = max(kv_gib, math.ceil(one / GIB))
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
    def best_len(conc: float, top: int = ceiling) -> int:
        return mem.max_len_for(arch, kv_bytes, conc, kv_dtype_bytes=dtype_bytes, tp=1,
                               block_size=mem.CPU_BLOCK_SIZE, in_flight_tokens=batched, ceiling=top)
    breakdown.largest_context = best_len(1.0, arch.max_context)
    max_len = best_len(req.concurrency)
    fit: FitClass = "good" if max_len >= goal else "tight"
    if req.max_model_len is not None:
        max_len = req.max_model_len
        need = mem.kv_request_bytes(arch, max_len, kv_dtype_bytes=dtype_bytes, block_size=mem.CPU_BLOCK_SIZE,
                                    in_flight_tokens=batched)
        breakdown.headroom_bytes = kv_bytes - need
        if need > kv_bytes:
            reasons.append(f"one request of {_tokens(max_len)} tokens needs {_gib(need)} of KV cache and "
                           f"{kv_gib} GiB fits in RAM: the longest context that fits is "
                           f"{_tokens(breakdown.largest_context)}")
            return cand
        conc = mem.kv_capacity(arch, kv_bytes, max_len, kv_dtype_bytes=dtype_bytes, block_size=mem.CPU_BLOCK_SIZE,
                               in_flight_tokens=batched).concurrency
        fit = "good" if conc >= req.concurrency else "tight"
    elif max_len < lo:
        max_len = best_len(1.0)
        if max_len < lo:
            reasons.append(f"{kv_gib} GiB of KV cache holds {_tokens(max_len)} tokens; {_tokens(lo)} needed")
            return cand
        fit = "tight"
    cap = mem.kv_capacity(arch, kv_bytes, max_len, kv_dtype_bytes=dtype_bytes, tp=1,
                          block_size=mem.CPU_BLOCK_SIZE, in_flight_tokens=batched)
    breakdown.kv_bytes, breakdown.kv = kv_bytes, cap
    if breakdown.headroom_bytes is None:
        breakdown.headroom_bytes = kv_bytes - mem.kv_request_bytes(
            arch, max_len, kv_dtype_bytes=dtype_bytes, block_size=mem.CPU_BLOCK_SIZE, in_flight_tokens=batched)
    breakdown.kv_bytes_per_token = mem.kv_bytes_per_token(arch, dtype_bytes, 1, max_len)
    breakdown.terms.append(Term(name="KV cache", bytes=kv_bytes,
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
                             limit_images=images if entry.vision else None,
                             limit_videos=videos if entry.vision else None,
                             max_num_seqs=req.max_num_seqs,
                             trust_remote_code=entry.trust_remote_code, sampling=dict(entry.sampling))
    reasons.append(f"CPU engine in float32 (safe on every x86 CPU): weights {_gib(w.total)}, "
                   f"KV cache {kv_gib} GiB = {cap.tokens:,} tokens, {cap.concurrency:.1f} × {_tokens(max_len)}"
                   + (f", per node of {pp} (pipeline parallel {pp})" if pp > 1 else ""))
    if not entry.instruct:
        warnings.append(f"{entry.name} is a base model, not instruction-tuned: expect weak answers")
    warnings.append(f"the CPU engine is slow: expect a few tokens per second on {profile.cpu.count} cores")
    return cand


# ----------------------------------------------------------------------------- ranking

