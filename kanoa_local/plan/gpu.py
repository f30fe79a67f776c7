"""GPU candidates: precision by compute capability, the image, TP/PP, and vLLM's memory budget."""

from __future__ import annotations

import math
from typing import Any

from ..catalog import ModelEntry, Variant, version_tuple
from ..hardware import GIB, Gpu, HardwareProfile
from ..images import GPU_IMAGES, ImageLine, release_lines
from . import kernels, memory as mem, profiling as prof
from .devices import cards_for, cuda_context, cuda_free, visible_total
from .confidence import measured_run, measured_term
from .memory import KvCapacity, Term, Weights
from .parallel import p2p_likely
from .models import (beyond_context, CPU_CONTEXT, DEFAULT_GMU, GOOD_CONTEXT, KV_MARGIN, MIN_CONTEXT, MIN_GMU, Candidate, Device, FitClass, MemoryBreakdown, PlanRequest, Settings, _gib, _tokens)


def gpu_groups(profile: HardwareProfile) -> list[list[Gpu]]:
    """Identical GPUs (name and memory) that tensor parallelism can span, largest group first.
    MIG slices never pair up: vLLM runs on one slice."""
    groups: dict[tuple[str, int], list[Gpu]] = {}
    for g in profile.gpus:
        key = (g.name + (f"#{g.uuid}" if g.is_mig_slice else ""), g.memory_total)
        groups.setdefault(key, []).append(g)
    return sorted(groups.values(), key=lambda gs: (-gs[0].memory_total * len(gs), gs[0].index))


def _image_for(entry: ModelEntry, variant: Variant, profile: HardwareProfile, cc: int,
               pin: str | None = None) -> tuple[ImageLine | None, str]:
    """The newest GPU image the driver starts, with kernels for this GPU, that still serves
    this model and precision (no newer than the ``pin`` release); or None and why."""
    if profile.cuda_driver_version is None:
        return None, "no NVIDIA driver answered, so no GPU image can run"
    lines = list(GPU_IMAGES)
    if pin is not None:
        # that release's image (its memory behaviour is what the plan models), or, outside the
        # releases kanoa-local knows, the nearest line: the oldest at or after it (the newest when
        # the pin is newer still)
        lines = release_lines(pin)
        if not lines:
            at_or_after = [ln.vllm for ln in GPU_IMAGES if version_tuple(ln.vllm) >= version_tuple(pin)]
            release = at_or_after[-1] if at_or_after else GPU_IMAGES[0].vllm
            lines = [ln for ln in GPU_IMAGES if ln.vllm == release]
    why, moe = [], bool(entry.arch and entry.arch.experts)
    for line in lines:
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
        if refused := kernels.refusal(variant.precision, moe, cc, line.vllm):
            why.append(f"{refused} (this GPU: sm_{cc})")
            continue
        return line, ""
    supported = [ln for ln in GPU_IMAGES if entry.supports_vllm(ln.vllm, variant) and variant.in_tree(ln.vllm)
                 and cc >= max(ln.min_cc, variant.min_cc_on(ln.vllm)) and not kernels.refusal(variant.precision, moe, cc, ln.vllm)]
    if supported and all(profile.cuda_driver_version < ln.cuda for ln in supported):
        newest = supported[-1]
        return None, (f"the driver supports CUDA {profile.cuda_driver_text}; the oldest vLLM image "
                      f"that serves it ({newest.tag}) needs CUDA {newest.cuda_text} "
                      f"(driver {newest.min_driver} or newer)")
    lo, hi = entry.vllm_min, entry.vllm_max
    window = f"{lo} to {hi}" if lo and hi else f"{lo} or newer" if lo else f"{hi} or older" if hi else ""
    return None, ("no vLLM image kanoa-local knows serves it on this GPU"
                  + (f": {why[-1]}" if why else f" (it needs vLLM {window})" if window else ""))


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
                   pp: int = 1, runs: list[Any] | None = None) -> Candidate:
    full_arch = entry.arch
    assert full_arch is not None
    arch = _stage_arch(full_arch, pp)      # per GPU: its stage's layers, its share of the heads
    gpus = sorted(group, key=lambda g: -g.memory_free)[:tp]
    g0 = gpus[0]
    cc = min(g.cc_value or 0 for g in gpus)
    total = g0.memory_total
    free = min(cuda_free(g.name, g.memory_total, g.memory_free) for g in gpus)
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
    image, why = _image_for(entry, variant, profile, cc, req.vllm_version)
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
    batched, seqs = prof.scheduler_defaults("gpu", total, g0.name, vllm=image.vllm)
    if req.max_num_seqs:
        seqs = req.max_num_seqs
    elif entry.max_num_seqs:
        seqs = min(seqs, entry.max_num_seqs)
    images = (req.limit_mm_per_prompt if req.limit_mm_per_prompt is not None else entry.max_images) \
        if entry.vision else 0
    # pipeline stages split the layers: per GPU, the weights are about 1/(TP × PP)
    w = mem.weights(entry, variant, dtype_bytes, tp * pp, checkpoint, vllm=image.vllm, vision_ranks=tp)
    videos = (req.limit_videos or 0) if entry.vision else 0
    p2p = p2p_likely(g0.name)
    ov = prof.overheads(entry, variant, arch, batched=batched, seqs=seqs, dtype_bytes=dtype_bytes, tp=tp,
                        images=images, videos=videos, max_len=req.max_model_len or full_arch.max_context,
                        vllm=image.vllm, flashinfer=req.flashinfer is not False, p2p=p2p, cc=cc)
    act, non_torch, graphs, graphs_inside = ov.act, ov.non_torch, ov.graphs, ov.graphs_inside
    ctx_bytes = cuda_context(g0.name, tp, p2p, image.vllm)
    ctx = Term(name="CUDA context", bytes=ctx_bytes, note="driver + torch, per GPU"
               + (" + NCCL / all-reduce buffers" if ctx_bytes > cuda_context(g0.name) else ""))
    beside = (0 if graphs_inside else graphs.bytes) + ov.held_beside
    eager_beside = False

    # gmu: vLLM's default unless what is free (after our own context) is less. vLLM's budget
    # is a share of the total it reads itself, a little less than NVML's.
    visible = visible_total(g0.name, total)
    slack = prof.beside_slack(tp, p2p, graphs_inside)
    room = free - ctx.bytes - slack - beside
    asked = (req.gpu_memory_utilization, visible, room) if req.gpu_memory_utilization is not None else None
    gmu = min(DEFAULT_GMU, math.floor(room / visible * 100) / 100)
    # without graphs beside the budget (--enforce-eager) a larger share is free
    gmu_eager = min(DEFAULT_GMU, math.floor((room + (0 if graphs_inside else graphs.bytes)) / visible * 100) / 100)
    if req.gpu_memory_utilization is None and gmu < MIN_GMU <= gmu_eager:
        eager_beside, gmu = True, gmu_eager
    if req.gpu_memory_utilization is not None:
        gmu = req.gpu_memory_utilization
        if free - ctx.bytes < gmu * visible:
            # vLLM's start-up check, in its words
            reasons.append(f"--gpu-memory-utilization {gmu:g} asks for {_gib(gmu * visible)} and "
                           f"{_gib(max(free - ctx.bytes, 0))} is free on {g0.name} after the CUDA context: "
                           "vLLM stops with \"Free memory on device ... is less than desired GPU memory "
                           f"utilization\" (at most {max(math.floor((free - ctx.bytes) / visible * 100) / 100, 0):.2f} here)")
            cand.needs = f"free GPU memory, or --gpu-memory-utilization below {gmu:g}"
            return cand
    elif gmu < MIN_GMU:
        reasons.append(f"only {_gib(free)} of {_gib(total)} is free on {g0.name}"
                       + (" (other processes hold the rest)" if total - free > 2 * GIB else ""))
        cand.needs = f"free GPU memory: stop the processes using {g0.name}"
        return cand
    if req.gpu_memory_utilization is None and gmu < DEFAULT_GMU - 0.02:
        warnings.append(f"other processes hold {_gib(total - free)} on {g0.name}: "
                        f"--gpu-memory-utilization lowered to {gmu:.2f}")
    if req.gpu_memory_utilization is not None and beside and free - ctx.bytes < gmu * visible + beside + slack:
        left = free - ctx.bytes - gmu * visible - slack
        must = ov.held_beside
        if not graphs_inside and left >= must:
            eager_beside = True     # only the graphs are in the way, as below for newer releases
        else:
            held = ov.beside_text(seqs, batched)
            reasons.append(f"vLLM {image.vllm} needs room beside the {gmu:g} share"
                           + (" even without CUDA graphs" if not graphs_inside else "")
                           + f" for {held + ' and ' if held else ''}what grows outside it after profiling "
                             f"({_gib(slack)}): {_gib(must + slack)} in all, and {_gib(max(left + slack, 0))} "
                             f"is left there on {g0.name} after the CUDA context")
            cand.needs = "a lower --gpu-memory-utilization or --max-num-seqs"
            return cand
    budget = int(gmu * visible)
    if (0, 8) <= version_tuple(image.vllm) < (0, 9):
        # V1 before 0.9 counts all the memory in use on the device but torch's (total - free: its
        # own CUDA context and other processes too) inside its share
        others = max(visible - free, 0)
        non_torch = non_torch.model_copy(update={
            "bytes": non_torch.bytes + ctx.bytes + others,
            "note": non_torch.note + f" + the CUDA context{' and other processes' if others > GIB // 4 else ''} "
                                     f"(vLLM {image.vllm} counts them in its share)"})
    persistent = [ov.persistent] if ov.persistent else []
    fixed = w.total + act.bytes + non_torch.bytes + sum(t.bytes for t in persistent) + (graphs.bytes if graphs_inside else 0)
    rec = measured_run(runs or [], entry.id, variant.precision, name, image.vllm, tp=tp, pp=pp,
                       max_num_seqs=req.max_num_seqs or entry.max_num_seqs, limit_images=images if entry.vision else None,
                       limit_videos=videos if entry.vision else None)
    correction = measured_term(rec, fixed - (graphs.bytes if graphs_inside and rec and rec.enforce_eager else 0),
                               visible)
    fixed += correction.bytes if correction else 0
    kv_bytes = budget - fixed
    lo, goal = _useful_context(entry, req, "gpu")
    block = mem.GPU_BLOCK_SIZE
    in_flight = (2 if new_engine else 1) * batched     # async scheduling keeps two batches in flight
    need = mem.kv_request_bytes(arch, req.max_model_len or lo, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                                block_size=block, in_flight_tokens=in_flight)
    need = int(need * KV_MARGIN)        # what a plan keeps for one request (the fit checks below ask the same)
    if req.gpu_memory_utilization is None and not eager_beside and kv_bytes < need <= int(gmu_eager * visible) - fixed:
        # the graphs beside the budget would leave too little KV cache: eager, at the larger share
        eager_beside, gmu = True, gmu_eager
        budget = int(gmu * visible)
        kv_bytes = budget - fixed
        for i, note in enumerate(warnings):     # the share named in "... lowered to X" is now larger
            if "lowered to" in note:
                warnings[i] = f"{note.rsplit(' ', 1)[0]} {gmu:.2f}"
    eager = graphs_inside and kv_bytes < need <= kv_bytes + graphs.bytes + ov.eager_saving
    if eager:
        # only the CUDA graphs are in the way: run without them (slower decode) rather than not at all
        fixed -= graphs.bytes + ov.eager_saving
        kv_bytes += graphs.bytes + ov.eager_saving
        warnings.append(f"CUDA graphs{' and torch.compile' if ov.eager_saving else ''} off (--enforce-eager) to leave "
                        f"{_gib(graphs.bytes + ov.eager_saving)} for the KV cache: "
                        "decoding is slower")
    elif eager_beside:
        eager, fixed, kv_bytes = True, fixed - ov.eager_saving, kv_bytes + ov.eager_saving
        warnings.append(f"CUDA graphs off (--enforce-eager): vLLM {image.vllm} would capture {_gib(graphs.bytes)} "
                        f"of them beside the {gmu:g} share, more than {g0.name} has left: decoding is slower")
    act = ov.act_eager if eager and ov.act_eager else act     # --enforce-eager also turns torch.compile off
    terms = [Term(name="weights", bytes=w.total, note=_weights_note(w, variant, dtype, tp * pp)), act, non_torch,
             *persistent, *([correction] if correction else [])]
    if graphs_inside and not eager:
        terms.append(graphs)
    breakdown = MemoryBreakdown(device="gpu", per_device_total=total, per_device_free=free,
                                budget=budget, terms=terms, weights=w,
                                outside_budget=[ctx, *ov.beside] if graphs_inside or eager else [ctx, graphs, *ov.beside])
    cand.memory = breakdown
    cand.eager = eager
    beyond = beyond_context(entry, req)
    if beyond:                  # no memory helps
        reasons.append(beyond)
        return cand
    if kv_bytes <= 0:
        reasons.append(f"weights + overheads need {_gib(fixed)} per GPU; the budget is {_gib(budget)} "
                       f"({gmu:.2f} × {_gib(visible)} that vLLM sees)")
        cand.needs, cand.needs_bytes = cards_for(fixed, req.max_model_len or lo, arch, kv_dtype_bytes, tp,
                                                 gmu_default=DEFAULT_GMU, pp=pp, asked=asked)
        return cand

    ceiling = min(arch.max_context, req.max_context or arch.max_context)
    def best_len(conc: float, top: int = ceiling) -> int:
        return mem.max_len_for(arch, kv_bytes, conc, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                               block_size=block, in_flight_tokens=in_flight, ceiling=top)
    breakdown.largest_context = best_len(KV_MARGIN, arch.max_context)
    if req.max_model_len is not None:
        return _exact_len(cand, arch, entry, req, kv_bytes, fixed, kv_dtype_bytes, tp, pp, block, in_flight,
                          image, dtype, dtype_note, variant, w, gmu, gpus, images, asked)
    good_len = best_len(req.concurrency)
    one_len = best_len(KV_MARGIN)
    if one_len < lo:
        reasons.append(f"after {_gib(fixed)} of weights and overheads, {_gib(kv_bytes)} of KV cache "
                       f"holds {_tokens(one_len)} tokens; at least {_tokens(lo)} are needed")
        cand.needs, cand.needs_bytes = cards_for(fixed, lo, arch, kv_dtype_bytes, tp, gmu_default=DEFAULT_GMU, pp=pp,
                                                 asked=asked)
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
    return _settle(cand, arch, entry, req, kv_bytes, max_len, fit, kv_dtype_bytes, tp, pp, block, in_flight,
                   image, dtype, dtype_note, variant, w, gmu, gpus, images)


def _exact_len(cand: Candidate, arch, entry: ModelEntry, req: PlanRequest, kv_bytes: int, fixed: int,
               kv_dtype_bytes: int, tp: int, pp: int, block: int, in_flight: int, image: ImageLine, dtype: str,
               dtype_note: str, variant: Variant, w: Weights, gmu: float, gpus: list[Gpu], images: int,
               asked: tuple[float, int, int] | None = None) -> Candidate:
    """`--max-model-len N` as given: vLLM's own start-up check (one request of N tokens must
    fit the KV cache), by how much, and the longest context there is room for."""
    n = req.max_model_len
    assert n is not None and cand.memory is not None
    largest = cand.memory.largest_context
    need = mem.kv_request_bytes(arch, n, kv_dtype_bytes=kv_dtype_bytes, tp=tp, block_size=block,
                                in_flight_tokens=in_flight)
    cand.memory.headroom_bytes = kv_bytes - need
    if need * KV_MARGIN > kv_bytes:
        edge = (f"one request of {_tokens(n)} tokens needs {_gib(need)} of KV cache and {_gib(max(kv_bytes, 0))} "
                f"is left after {_gib(fixed)} of weights and overheads")
        if need <= kv_bytes:     # inside the estimate's error: vLLM may well refuse it
            edge += f", less than the {KV_MARGIN - 1:.0%} to spare a plan keeps (the estimate can be off by that)"
        cand.reasons.append(edge + (f": the longest context that fits is {_tokens(largest)}" if largest else ""))
        cand.needs, cand.needs_bytes = cards_for(fixed, n, arch, kv_dtype_bytes, tp, gmu_default=gmu, pp=pp, asked=asked)
        return cand
    cap = mem.kv_capacity(arch, kv_bytes, n, kv_dtype_bytes=kv_dtype_bytes, tp=tp, block_size=block,
                          in_flight_tokens=in_flight)
    fit: FitClass = "good" if cap.concurrency >= req.concurrency else "tight"
    if fit == "tight":
        cand.warnings.append(f"{cap.concurrency:.1f} requests of {_tokens(n)} at once (goal {req.concurrency})")
    return _settle(cand, arch, entry, req, kv_bytes, n, fit, kv_dtype_bytes, tp, pp, block, in_flight,
                   image, dtype, dtype_note, variant, w, gmu, gpus, images)


def _settle(cand: Candidate, arch, entry: ModelEntry, req: PlanRequest, kv_bytes: int, max_len: int,
            fit: FitClass, kv_dtype_bytes: int, tp: int, pp: int, block: int, in_flight: int, image: ImageLine,
            dtype: str, dtype_note: str, variant: Variant, w: Weights, gmu: float, gpus: list[Gpu],
            images: int) -> Candidate:
    """A fitting candidate: what vLLM will say about its KV cache, and the settings `up` passes."""
    warnings, reasons = cand.warnings, cand.reasons
    breakdown = cand.memory
    assert breakdown is not None
    cap = mem.kv_capacity(arch, kv_bytes, max_len, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                          block_size=block, in_flight_tokens=in_flight)
    breakdown.kv_bytes = kv_bytes
    breakdown.kv = cap
    breakdown.kv_bytes_per_token = mem.kv_bytes_per_token(arch, kv_dtype_bytes, tp, max_len)
    if breakdown.headroom_bytes is None:
        breakdown.headroom_bytes = kv_bytes - mem.kv_request_bytes(
            arch, max_len, kv_dtype_bytes=kv_dtype_bytes, tp=tp, block_size=block, in_flight_tokens=in_flight)
    breakdown.terms.append(Term(name="KV cache", bytes=kv_bytes,
                                note=f"{cap.tokens:,} tokens; {cap.concurrency:.1f} × {_tokens(max_len)}"))
    cand.fits = fit
    cand.settings = Settings(
        image=image.image, vllm_version=image.vllm, dtype=dtype,
        quantization=variant.quantization, kv_cache_dtype="fp8" if kv_dtype_bytes == 1 else "auto",
        max_model_len=max_len, gpu_memory_utilization=gmu, tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_indices=sorted(g.index for g in gpus), gpu_uuids=[g.uuid for g in sorted(gpus, key=lambda g: g.index)],
        limit_images=images if entry.vision else None, limit_videos=(req.limit_videos or 0) if entry.vision else None,
        max_num_seqs=req.max_num_seqs or entry.max_num_seqs, trust_remote_code=entry.trust_remote_code,
        sampling=dict(entry.sampling), enforce_eager=cand.eager)
    if dtype_note:
        warnings.append(dtype_note)
    if variant.plugin and image.vllm != GPU_IMAGES[0].vllm:
        warnings.append(f"{variant.label} needs {variant.plugin} in current vLLM: planned on the "
                        f"{image.tag} image, which has it built in")
    elif image is not GPU_IMAGES[0]:
        same = image.vllm == GPU_IMAGES[0].vllm
        warnings.append(f"runs on the {image.tag} build of the same release ({image.note})" if same
                        else f"runs on the older {image.tag} image ({image.note})")
    reasons.append(_fit_sentence(cand, w, kv_bytes, cap, max_len, tp * pp))
    if pp > 1:
        warnings.append(f"spans {pp} nodes (pipeline parallel {pp}, tensor parallel {tp} each): "
                        "the nodes need a fast network and the same weights cache")
    return cand


def _weights_note(w: Weights, variant: Variant, dtype: str, tp: int) -> str:
    src = "read from the checkpoint" if w.source == "checkpoint" else "from parameter counts"
    form = variant.label if variant.is_quantised else dtype
    rotary = f", {_gib(w.rotary)} of it rotary caches" if w.rotary >= 0.1 * GIB else ""
    return f"{form}, {src}" + (f", split over {tp} GPUs" if tp > 1 else "") + rotary


def _fit_sentence(c: Candidate, w: Weights, kv_bytes: int, cap: KvCapacity, max_len: int, tp: int) -> str:
    per = " per GPU" if tp > 1 else ""
    return (f"weights {_gib(w.total)}{per}, KV cache {_gib(kv_bytes)}{per} = {cap.tokens:,} tokens: "
            f"{cap.concurrency:.1f} requests of {_tokens(max_len)} at once")


# ----------------------------------------------------------------------------- CPU

