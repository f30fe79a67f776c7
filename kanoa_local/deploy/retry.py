"""What to try after a failed start: pure, so the decisions are tested without an engine."""

from __future__ import annotations

from ..plan.fit import Candidate

#: Failures that a smaller plan (less context, fewer bytes per weight) can get past.
MEMORY_FAILURES = {"max-model-len-too-large", "no-kv-memory", "cuda-oom"}
MIN_RETRY_CONTEXT = 1024


def next_attempt(d, attempt: Candidate, fallbacks: list[Candidate], *, shrunk: bool) -> tuple[Candidate | None, str]:
    """After a failed start: the same plan with the context vLLM says fits (once), else the next
    plan down for a memory failure, else nothing. Pure; returns (candidate, what to tell the user)."""
    s = attempt.settings
    assert s is not None
    fits = d.retry_max_model_len
    if d.kind == "max-model-len-too-large" and fits and not shrunk and MIN_RETRY_CONTEXT <= fits < s.max_model_len:
        new_len = fits // 256 * 256 or fits
        return (attempt.model_copy(update={"settings": s.model_copy(update={"max_model_len": new_len})}),
                f"vLLM said {fits:,} tokens fit, not {s.max_model_len:,}: retried with --max-model-len {new_len}")
    if d.kind in MEMORY_FAILURES and fallbacks:
        f = fallbacks[0]
        assert f.settings is not None
        return f, (f"{attempt.variant.label} did not fit ({d.kind}): fell back to {f.variant.label}, "
                   f"--max-model-len {f.settings.max_model_len}")
    return None, ""


