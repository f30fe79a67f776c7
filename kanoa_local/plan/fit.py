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

from typing import Any

from ..catalog import STATUS_RANK, Catalog, ModelEntry, Variant
from ..hardware import GIB, Gpu, HardwareProfile
from .confidence import label as label_confidence
from .cpu import _cpu_candidate
from .gpu import _gpu_candidate, gpu_groups
from .parallel import _parallel_options, tp_refusal
from .memory import Weights
# the planner's vocabulary lives in .models; importers of plan.fit keep finding it here
from .models import (GOOD_CONTEXT, MIN_CONTEXT, PRECISION_RANK, Candidate, Device, FitClass, PlanRequest,  # noqa: F401
                     PlanResult, Settings, _tokens)


def _rank(c: Candidate, entry: ModelEntry, req: PlanRequest) -> list[float]:
    fit = {"good": 0, "tight": 1, "no": 2}[c.fits]
    want_precision = 0 if (req.precision and c.variant.precision == req.precision and c.fits != "no") else 1
    prefer_vision = 0 if (req.vision is None and entry.vision) or req.vision is not None else 1
    s = c.settings
    # the most capable model that fits with a useful context; how far it is tested decides
    # between models of one size
    return [want_precision, fit, float(entry.fallback), prefer_vision, -entry.params_b,
            STATUS_RANK[entry.status], PRECISION_RANK.get(c.variant.precision, 9),
            float(s.tensor_parallel_size * s.pipeline_parallel_size) if s else 99.0,
            # a longer context up to the goal before the KV cache's dtype: an FP8 KV cache that
            # reaches 8k beats a 16-bit one held to 2.5k
            -min(s.max_model_len if s else 0, GOOD_CONTEXT),
            1.0 if s and s.kv_cache_dtype == "fp8" else 0.0,
            -(s.max_model_len if s else 0)]


def _source_warnings(entry: ModelEntry, variant: Variant, profile: HardwareProfile,
                     req: PlanRequest) -> list[str]:
    """What stands between the plan and its weights: a gated repo, disk space."""
    out = []
    if variant.repo and not variant.cached and entry.variant_gated(variant) and req.hf_token is False:
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
         checkpoints: dict[tuple[str, str], Weights] | None = None, runs: list[Any] | None = None) -> PlanResult:
    """Every candidate for ``request`` on ``profile``, best first, with the chosen one.

    ``checkpoints`` maps (model id, variant source) to weights read from real checkpoint files
    (see :mod:`kanoa_local.checkpoint`); everything else is estimated from the catalog.
    ``runs`` are what the engine reported after earlier starts (:mod:`kanoa_local.runs`): the
    figures of a matching plan are then labelled measured, and a plan of the very configuration
    an engine profiled takes what it measured instead of the estimate.
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
        if entry.trust_remote_code and not req.trust_remote_code:
            out.append(Candidate(model_id=entry.id, model_name=entry.name, family=entry.family, vision=entry.vision,
                                 variant=entry.variants[0], device=device, fits="no",
                                 reasons=[remote_code_reason(entry)]))
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
                                             reasons=[f"{OFFLINE_MISSING} {variant.repo} is not in the Hugging Face cache"]))
                continue
            ck = checkpoints.get((entry.id, variant.source))
            if device == "cpu":
                model_cands.append(_cpu_candidate(entry, variant, profile, req, ck))
                continue
            for group in gpu_groups(profile.model_copy(update={"gpus": gpus})):
                refusal = tp_refusal(entry, len(group), req)
                if refusal:
                    model_cands.append(Candidate(model_id=entry.id, model_name=entry.name, family=entry.family,
                                                 vision=entry.vision, variant=variant, device=device,
                                                 gpu_name=group[0].name, fits="no", reasons=[refusal]))
                    continue
                for tp, pp in _parallel_options(entry, len(group), req):
                    for kv_fp8 in ((False, True) if req.kv_cache_dtype != "fp8" else (True,)):
                        if kv_fp8 and req.kv_cache_dtype == "auto":
                            continue
                        model_cands.append(_gpu_candidate(entry, variant, group, tp, kv_fp8, profile, req, ck,
                                                                    pp=pp, runs=runs))
        for c in model_cands:
            label_confidence(c, runs or [])
            c.rank = _rank(c, entry, req)
            if c.fits != "no":
                c.warnings.extend(_source_warnings(entry, c.variant, profile, req))
        out.extend(_prune(model_cands))
    out.sort(key=lambda c: c.rank)
    chosen = next((c for c in out if c.fits != "no"), None)
    summary, remedy = _summary(chosen, out, req, device, machine, catalog)
    unmet = None
    if chosen is None and req.model:
        unmet = summary
    elif chosen is not None and req.precision and chosen.variant.precision != req.precision:
        asked = [c for c in out if c.variant.precision == req.precision]
        label = asked[0].variant.label if asked else req.precision
        why = asked[0].reasons[0] if asked and asked[0].reasons else "no model of the matrix publishes it"
        unmet = f"{label} is not possible on {machine}: {why}"
        summary = f"{label} is not possible here; instead: {summary}"
    return PlanResult(request=req, machine=machine, chosen=chosen, candidates=out, summary=summary,
                      remedy=remedy, unmet=unmet)


REMOTE_CODE = "runs its repository's own Python code"
OFFLINE_MISSING = "offline and"


def remote_code_reason(entry: ModelEntry) -> str:
    files = f" ({', '.join(entry.remote_code_files)})" if entry.remote_code_files else " (auto_map in config.json)"
    return f"{REMOTE_CODE}{files}: only with --trust-remote-code"


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
        # what really runs: the activation dtype of an unquantised model (float16 before Ampere,
        # float32 on the CPU engine), and an FP8 KV cache when the plan takes one
        form = (chosen.variant.label if chosen.variant.is_quantised else s.dtype) if device == "gpu" else "float32"
        if s.kv_cache_dtype == "fp8":
            form += ", FP8 KV cache"
        return (f"{chosen.model_name} ({form}) {where}, context "
                f"{_tokens(s.max_model_len)}" + (" — tight" if chosen.fits == "tight" else ""), None)
    if req.model:
        entry = catalog.get(req.model)
        needs = [c.needs for c in sorted((c for c in cands if c.needs), key=lambda c: c.needs_bytes or 0)]
        # the variant that came closest speaks first (an exact context: the one least short)
        short = [c for c in cands if c.memory is not None and c.memory.headroom_bytes is not None and c.reasons]
        lead = max(short, key=lambda c: (c.memory.headroom_bytes or 0) if c.memory else 0) if short else (cands[0] if cands else None)
        first = lead.reasons[0] if lead is not None and lead.reasons else "no variant fits"
        if first.startswith(OFFLINE_MISSING):
            return (f"{entry.name} is not downloaded: {first}",
                    f"`kanoa-local pull {entry.id}` while online, then `up --offline`; or serve a local "
                    "directory with --model-path")
        if first.startswith(REMOTE_CODE):
            return (f"{entry.name} {first.rsplit(': only with', 1)[0]}, which kanoa-local runs only when asked",
                    f"add --trust-remote-code if you trust {entry.variants[0].source}")
        if req.max_model_len and lead is not None and lead.memory is not None and lead.memory.largest_context:
            return (f"{entry.name} does not fit {machine}: {first}",
                    f"--max-model-len {lead.memory.largest_context} fits with {lead.variant.label}"
                    + (f"; or {lead.needs}" if lead.needs else ""))
        return (f"{entry.name} does not fit {machine}: {first}",
                (f"it would need {needs[0]}; " if needs else "") + "try `kanoa-local plan` for what fits here")
    closest = closest_miss(cands)
    firsts = [c.reasons[0] for c in cands if c.reasons]
    if closest is None and firsts:
        # nothing is short of memory alone: what turned most of them away (a setting asked for),
        # grouped by the words before the first colon ("--tensor-parallel-size 3: ...")
        from collections import Counter

        kind, n = Counter(r.split(": ", 1)[0] for r in firsts).most_common(1)[0]
        if n * 2 >= len(cands):
            example = next(r for r in firsts if r.split(": ", 1)[0] == kind)
            return (f"nothing in the catalog fits {machine}", f"{n} of {len(cands)} were refused: {example}")
    return (f"nothing in the catalog fits {machine}",
            (f"closest: {closest.label}, which needs {closest.needs}" if closest else
             "add a smaller model to models.toml") + "; `kanoa-local models` lists them all")


#: why a candidate ranks lower, by the first key of :func:`_rank` that differs
_LOST = ["not the precision asked for", "fits only tightly", "demo-grade fallback", "text-only",
         "smaller model", "less proven (status)", "lower precision", "needs more GPUs",
         "shorter context", "needs an FP8 KV cache", "shorter context"]


def why_lost(c: Candidate, chosen: Candidate) -> str:
    """One phrase: why ``c`` ranks below ``chosen`` (the first rank key that differs)."""
    for i, (a, b) in enumerate(zip(c.rank, chosen.rank)):
        if a != b:
            return _LOST[i] if i < len(_LOST) else "ranked lower"
    return "equal"


def closest_miss(cands: list[Candidate]) -> Candidate | None:
    """Of candidates that do not fit, the one needing the least memory."""
    misses = [c for c in cands if c.needs_bytes]
    return min(misses, key=lambda c: c.needs_bytes or 0) if misses else None
