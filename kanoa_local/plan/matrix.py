"""One verdict per model, from a plan over the whole catalog: what `models` and `check` show."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..catalog import Catalog
from ..hardware import Model
from .fit import Candidate, FitClass, PlanResult, closest_miss


class ModelVerdict(Model):
    id: str
    name: str
    params_b: float
    active_params_b: float | None = None
    vision: bool
    status: str
    gated: bool
    trust_remote_code: bool
    seed_vram_gb: float | None = None
    seed_precision: str | None = None
    precisions: list[str]
    fits: FitClass
    best: str | None = Field(None, description="the best variant here: precision, GPUs, context")
    reason: str = Field(description="why it fits, or the first reason it does not")
    needs: str | None = None
    verified_on: list[str] = Field(default_factory=list, description="GPUs (or the CPU engine) where "
                                   "kanoa-local started it and the engine reported its figures")


class ModelsReport(Model):
    machine: str
    models: list[ModelVerdict]
    sources: list[str]


def _best_text(c: Candidate) -> str:
    s = c.settings
    assert s is not None
    where = f"{s.tensor_parallel_size} GPUs, " if s.tensor_parallel_size > 1 else ""
    kv = ", fp8 KV" if s.kv_cache_dtype == "fp8" else ""
    if c.device == "cpu":
        return f"float32 on the CPU engine ({s.max_model_len // 1024}k context)"
    form = c.variant.precision if c.variant.is_quantised else \
        {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(s.dtype, s.dtype)
    return f"{form} ({where}{s.max_model_len // 1024}k context{kv})"


def verdicts(result: PlanResult, catalog: Catalog, runs: list[Any] | None = None) -> list[ModelVerdict]:
    out: list[ModelVerdict] = []
    by_model: dict[str, list[Candidate]] = {}
    for c in result.candidates:
        by_model.setdefault(c.model_id, []).append(c)
    for entry in catalog.models.values():     # the order of models.toml (the seed page)
        cands = by_model.get(entry.id, [])
        best = next((c for c in cands if c.fits != "no"), None)
        closest = closest_miss(cands) or (cands[0] if cands else None)
        if best is not None:
            reason = best.reasons[-1] if best.reasons else ""
        elif closest is not None and closest.reasons:
            reason = closest.reasons[0]
        else:
            reason = "not planned"
        out.append(ModelVerdict(
            id=entry.id, name=entry.name, params_b=entry.params_b,
            active_params_b=entry.active_params_b, vision=entry.vision, status=entry.status,
            gated=entry.variant_gated(best.variant) if best else entry.any_gated, trust_remote_code=entry.trust_remote_code,
            seed_vram_gb=entry.seed_vram_gb, seed_precision=entry.seed_precision,
            precisions=sorted({v.precision for v in entry.variants}),
            fits=best.fits if best else "no", best=_best_text(best) if best else None,
            reason=reason, needs=None if best else (closest.needs if closest else None),
            verified_on=sorted({r.gpu for r in runs or [] if r.model_id == entry.id})))
    return out
