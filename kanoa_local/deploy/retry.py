"""What to try after a failed start: pure, so the decisions are tested without an engine."""

from __future__ import annotations

from ..catalog import version_tuple
from ..plan.fit import Candidate
from ..plan.models import KV_MARGIN

#: Failures that a smaller plan (less context, fewer bytes per weight) can get past.
MEMORY_FAILURES = {"max-model-len-too-large", "no-kv-memory", "cuda-oom", "cuda-oom-after-kv"}
MIN_RETRY_CONTEXT = 1024


#: the GPU memory share below which a retry is not worth it (the plan no longer holds)
MIN_RETRY_GMU = 0.3
#: the first release that fits the context to its KV cache itself (--max-model-len auto / -1:
#: `_auto_fit_max_model_len` in vllm/v1/core/kv_cache_utils.py, vLLM PR 29431; not in 0.13.0).
#: Not on the CPU engine, where it gives 512 tokens.
AUTO_CONTEXT_SINCE = (0, 14)
#: the first release that takes an absolute KV cache (--kv-cache-memory-bytes; read in the 0.10.2 wheel)
KV_BYTES_SINCE = (0, 10, 2)


def next_attempt(d, attempt: Candidate, fallbacks: list[Candidate], *, shrunk: bool,
                 done: frozenset[str] = frozenset()) -> tuple[Candidate | None, str]:
    """After a failed start, what vLLM's own message says would work, each fix once (``done``:
    the diagnosis kinds already retried): the context vLLM says fits; the GPU memory share the
    free memory allows; tensor parallel without GPU peer-to-peer (NCCL_P2P_DISABLE=1); else the
    next plan down for a memory failure; else nothing. Pure; returns (candidate, what to tell
    the user). Where vLLM gave no figure, or its figure did not hold, a release that can fit the
    context itself is asked to (--max-model-len auto) before a smaller plan."""
    s = attempt.settings
    assert s is not None
    gmu = d.retry_gpu_memory_utilization
    if (d.kind == "gpu-memory-busy" and d.kind not in done and gmu and MIN_RETRY_GMU <= gmu
            and gmu < (s.gpu_memory_utilization or 0.9)):
        return (attempt.model_copy(update={"settings": s.model_copy(update={"gpu_memory_utilization": gmu})}),
                f"other work holds GPU memory: retried with --gpu-memory-utilization {gmu:.2f} (what was free)")
    if (d.kind == "nccl-p2p" and d.kind not in done and s.tensor_parallel_size * s.pipeline_parallel_size > 1
            and s.engine_env.get("NCCL_P2P_DISABLE") != "1"):
        return (attempt.model_copy(update={"settings": s.model_copy(
                    update={"engine_env": {**s.engine_env, "NCCL_P2P_DISABLE": "1"}})}),
                "GPU peer-to-peer failed between the tensor-parallel GPUs: retried with NCCL_P2P_DISABLE=1 "
                "(slower all-reduce through host memory)")
    kv = d.retry_kv_cache_bytes
    if (d.kind == "cuda-oom-after-kv" and d.kind not in done and kv and attempt.device == "gpu"
            and s.vllm_version and version_tuple(s.vllm_version) >= KV_BYTES_SINCE):
        # the same plan with a KV cache that leaves room beside it; the context it still holds
        per = attempt.memory.kv_bytes_per_token if attempt.memory else 0
        n = min(s.max_model_len, int(kv / per / KV_MARGIN) // 256 * 256) if per else s.max_model_len
        if n >= MIN_RETRY_CONTEXT:
            return (attempt.model_copy(update={"settings": s.model_copy(update={
                        "kv_cache_memory_bytes": kv, "max_model_len": n})}),
                    f"vLLM ran out of memory beside its KV cache (CUDA graphs, warm-up): retried with "
                    f"--kv-cache-memory-bytes {kv} ({kv / 2 ** 30:.2f} GiB)"
                    + (f" and --max-model-len {n}" if n < s.max_model_len else ""))
    fits = d.retry_max_model_len
    if d.kind == "max-model-len-too-large" and fits and not shrunk and MIN_RETRY_CONTEXT <= fits < s.max_model_len:
        new_len = fits // 256 * 256 or fits
        return (attempt.model_copy(update={"settings": s.model_copy(update={"max_model_len": new_len})}),
                f"vLLM said {fits:,} tokens fit, not {s.max_model_len:,}: retried with --max-model-len {new_len}")
    if (d.kind == "max-model-len-too-large" and attempt.device == "gpu" and not s.auto_context
            and s.vllm_version and version_tuple(s.vllm_version) >= AUTO_CONTEXT_SINCE):
        # vLLM gave no figure, or its figure did not hold: let it fit the context itself
        return (attempt.model_copy(update={"settings": s.model_copy(update={"auto_context": True})}),
                f"the KV cache does not hold {s.max_model_len:,} tokens: retried with --max-model-len auto "
                f"(vLLM {s.vllm_version} fits the context to its KV cache; kanoa-local expected {s.max_model_len:,})")
    if d.kind in MEMORY_FAILURES and fallbacks:
        f = fallbacks[0]
        assert f.settings is not None
        return f, (f"{attempt.variant.label} did not fit ({d.kind}): fell back to {f.variant.label}, "
                   f"--max-model-len {f.settings.max_model_len}")
    return None, ""


