"""Which of vLLM's two GPU model runners a release uses for a model, and what the newer one (the
"V2" runner, vllm/v1/worker/gpu/) holds at start-up that the older one does not.

Read in the 0.19-0.33 wheels (config/vllm.py's use_v2_model_runner and the runner's profile path),
checked against public start-up logs ("Using V2 Model Runner"):

* the V2 runner is opt-in through 0.21; the default for dense bf16 Qwen3 from 0.22, Llama and Mistral
  from 0.23, their quantised checkpoints from 0.24, every model that is not a mixture of experts from
  0.25, and every model from 0.29 (the fallbacks left are features kanoa-local does not start:
  suffix/custom speculative decoding, dual-batch overlap, no Triton);
* it keeps ``output_bin_counts [max_num_seqs, vocab] int32`` (penalties), a prompt bitmask and the
  grammar bitmask (``vocab / 32`` int32 each) on the GPU from the start: counted in the budget from
  0.27, before that beside it;
* its profiling sampler is lighter than V1's (``min(B, S)`` rows): ≈6 B per row × vocab element in
  0.22-0.25 and 0.27, ≈2 B (the logits alone: "the sampler may skip top_k, top_p") in 0.26 and
  0.28-0.32, ≈14 B in 0.33 (a second pass with every sampling feature on); +2 B at TP > 1 (the
  logits gathered to the whole vocabulary);
* up to 0.32 its kernel warm-up after the KV cache samples ``min(S, B / 2)`` requests with every
  feature on (≈14 B per element) beside the budget, beyond what the profile kept;
* its CUDA graphs are captured after the KV cache, beside the budget, until 0.29 estimates them first
  (the log lines "Estimated CUDA graph memory" are V1's only); they took about 0.55 of V1's
  (Qwen3 8B 0.56 GiB on an RTX 4090 at 0.27.1, Qwen2.5 7B AWQ 0.53 on an L4 at 0.28);
* a cold torch.compile raised the profiled peak by about 1 GiB (1.18 GiB against 0.19 with a warm
  compile cache, Qwen3 8B, RTX 4090, 0.27.1; 1.1 GiB less KV cache cold on 0.31): the first start
  on a machine is cold;
* the vision encoder is profiled only from 0.27 (0.25-0.26 leave it to the first request);
* memory outside torch that grows inside the budget is ~0.1 GiB (0.27 GiB of "consumed" beside
  2.98 GiB of weights on a Turing card, with 0.15 of it the sampler's buffers).
"""

from __future__ import annotations

from typing import Literal

from ..catalog import ModelEntry, Variant
from ..hardware import GIB
from ..images import release_tuple as _release

Runner = Literal["v1", "v2"]

#: the architectures each release put on the V2 runner before it took every dense model (0.25)
_LISTED: list[tuple[tuple[int, int], set[str]]] = [
    ((0, 22), {"Qwen3ForCausalLM"}),
    ((0, 23), {"LlamaForCausalLM", "MistralForCausalLM"}),
]
COLD_COMPILE_BYTES = int(1.0 * GIB)
NON_TORCH_BYTES = int(0.15 * GIB)
GRAPH_SHARE = 0.6          # of the V1 estimate (0.53-0.56 of it seen; erring high)


def runner(vllm: str | None, entry: ModelEntry, variant: Variant) -> Runner:
    """The model runner vLLM ``vllm`` (None: the newest) starts this model on, on a CUDA GPU."""
    v = _release(vllm)
    moe = bool(entry.arch and entry.arch.experts)
    if v >= (0, 29) or (v >= (0, 25) and not moe):
        return "v2"
    if v < (0, 22) or (variant.is_quantised and v < (0, 24)):
        return "v1"
    listed = set().union(*(names for since, names in _LISTED if v >= since))
    return "v2" if entry.hf_architecture in listed and not moe else "v1"


def sampler_bytes_per_element(vllm: str | None, tp: int = 1) -> int:
    """What V2's profiling sampler holds per row × vocab element (see the module's notes)."""
    v = _release(vllm)
    per = 14 if v >= (0, 33) else 2 if v[:2] == (0, 26) or v >= (0, 28) else 6
    return per + (2 if tp > 1 else 0)


def warm_up_bytes(vllm: str | None, vocab: int, seqs: int, batched: int) -> int:
    """The peak of V2's kernel warm-up after the KV cache is sized (0 where the profile covers it)."""
    if _release(vllm) >= (0, 33):
        return 0
    return min(seqs, batched // 2) * vocab * 14


def persistent_bytes(vocab: int, seqs: int) -> int:
    """The sampler's and structured output's per-request state V2 keeps on the GPU."""
    return seqs * (vocab * 4 + 2 * 4 * -(-vocab // 32) + 12_800)


def persistent_inside(vllm: str | None) -> bool:
    return _release(vllm) >= (0, 27)


def graphs_inside(vllm: str | None) -> bool:
    return _release(vllm) >= (0, 29)


def encoder_profiled(vllm: str | None) -> bool:
    return _release(vllm) >= (0, 27)
