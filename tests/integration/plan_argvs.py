"""The vLLM argv of every fitting GPU plan of the matrix on every profile, with the flags a retry
of it may add: what the argv tests hand to a release's parser or check against its flag list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kanoa_local.catalog import load_catalog, version_tuple
from kanoa_local.engine.spec import vllm_args
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset, preset_names


def plan_argvs(keep: Callable[[Any], bool], **request: Any) -> list[tuple[str, list[str]]]:
    """(label, argv) of each fitting GPU plan that ``keep`` takes, each model asked with ``request``."""
    catalog = load_catalog(user=False)
    out = []
    for profile in preset_names():
        prof = load_preset(profile)
        for model in catalog.models:
            for c in plan(prof, catalog, PlanRequest(model=model, trust_remote_code=True, **request)).candidates:
                if c.fits == "no" or c.settings is None or c.device != "gpu" or not keep(c):
                    continue
                label = f"{profile}/{c.label}"
                out.append((label, argv(c)))
                out += retry_argvs(c, label)        # what a retry adds, on this release too
    return out


def argv(c: Any) -> list[str]:
    return vllm_args(c, model_ref=c.variant.source or "m", served_name=c.model_id, host="127.0.0.1", port=8000)


def retry_argvs(c: Any, label: str) -> list[tuple[str, list[str]]]:
    """The flags a retry of ``c`` may add on its release (deploy/retry.py's thresholds): an absolute
    KV cache after an OOM beside it, vLLM's own context fit."""
    from kanoa_local.deploy.retry import AUTO_CONTEXT_SINCE, KV_BYTES_SINCE

    s, v = c.settings, version_tuple(c.settings.vllm_version)
    out = []
    for since, update in ((KV_BYTES_SINCE, {"kv_cache_memory_bytes": 4 * 2**30}), (AUTO_CONTEXT_SINCE, {"auto_context": True})):
        if v >= since:
            retried = c.model_copy(update={"settings": s.model_copy(update=update)})
            out.append((f"{label} retried with {sorted(update)[0]}", argv(retried)))
    return out
