"""Memory arithmetic for one vLLM configuration: pure functions, every term kept.

vLLM sizes itself like this (V1 engine, read from its worker and kv_cache_utils sources):

* GPU: the engine may use ``gpu_memory_utilization × total`` bytes per GPU (the *budget*); at
  start-up the GPU must have that much free, after the engine's own CUDA context, or it stops
  with "Free memory on device ... is less than desired GPU memory utilization". From the budget
  it subtracts the weights, the peak of a profiling forward pass (activations, sampler logits,
  the vision encoder's dummy images) and memory that torch does not track (cuBLAS workspaces,
  NCCL buffers). What is left is the KV cache. CUDA graphs are captured after that and live in
  the slack above the budget, next to the CUDA context; the sampler's warm-up then runs again
  (before 0.20; later releases estimate the graphs and keep them inside the budget).
* CPU: the KV cache is exactly ``VLLM_CPU_KVCACHE_SPACE`` GiB; weights, the runtime and the KV
  cache must all fit in RAM.

KV cache per token and layer is ``2 (K and V) × KV heads × head dim × dtype bytes``, with KV
heads divided across tensor-parallel ranks (never below one). vLLM groups layers of one kind
(full or sliding-window attention) into equal groups that share one pool of blocks; a request
of L tokens needs ``cdiv(L, block)`` blocks per full group and only
``cdiv(min(window - 1 + in-flight tokens, L), block) + 1`` per sliding group. vLLM reports
"KV cache size: N tokens" as ``concurrency × max_model_len`` where
``concurrency = blocks / blocks-per-request``; :func:`kv_capacity` follows that exactly.

Worked example (Gemma 3 270M on the CPU engine, float32, 1 GiB KV, max_model_len 4096, block
128): 18 layers, 1 KV head, head dim 256 → 2048 B per token and layer; 3 full + 15 sliding
layers → 6 groups of 3; blocks = 1 GiB / (128 × 2048 × 3) = 1365; per request 32 full blocks
+ 5 × (cdiv(511 + 2048, 128) + 1 = 21) = 137; concurrency 9.96, "40,810 tokens" — what vLLM
0.32 printed.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ..catalog import Arch, ModelEntry, Variant, version_tuple
from ..hardware import GIB, Model

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}

# Defaults of the engine (vLLM >= 0.11, OpenAI server), by device.
GPU_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128           # the CPU attention backend needs a multiple of 32; 0.32 uses 128
CPU_RUNTIME_BYTES = int(2.0 * GIB)     # API server + engine core + worker processes (RSS)


class Term(Model):
    name: str
    bytes: int
    note: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


class Weights(Model):
    """Weight bytes per device, split the way quantisation treats them."""

    quantised: int = Field(0, description="quantised linear layers (incl. scales/zeros)")
    unquantised: int = Field(0, description="layers kept in the compute dtype")
    embeddings: int = Field(0, description="token embeddings + lm_head")
    vision: int = Field(0, description="vision encoder + projector")
    rotary: int = Field(0, description="rotary cos/sin caches vLLM builds at load, whole on every rank")
    source: Literal["estimate", "checkpoint"] = "estimate"
    note: str = ""

    @property
    def total(self) -> int:
        return self.quantised + self.unquantised + self.embeddings + self.vision + self.rotary


def rotary_bytes(arch: Arch | None, dtype_bytes: int) -> int:
    """vLLM's rotary caches: a cos and a sin half per position, ``head_dim`` values in the compute dtype.

    vLLM builds one per distinct rotary setting when the model is constructed on the GPU (inside
    "Model loading took"), for ``max_position_embeddings`` positions, times the factor under
    linear or dynamic scaling. Example: Gemma 3 4B-27B, 131,072 × 8 positions (global layers, linear
    × 8) + 131,072 (sliding layers) × 256 × 2 B = 0.56 GiB, the gap between their checkpoints and
    vLLM's figure on an H100 (0.4-0.6 GiB); Llama 3.1 8B: 131,072 × 128 × 2 B = 32 MiB.
    """
    if arch is None:
        return 0
    return (arch.rope_positions or arch.max_context) * arch.head_dim * dtype_bytes


#: Vision towers vLLM keeps whole on every rank under tensor parallelism, with the release that
#: began to split them: every other family's encoder is split (``mm_encoder_tp_mode`` "weights", the
#: default; read in the 0.11, 0.19.1 and 0.34 sources). Kimi-VL's MoonViT was ReplicatedLinear in 0.11.
VISION_REPLICATED_UNTIL: dict[str, str] = {"kimi_vl": "0.19.0"}


def weights(entry: ModelEntry, variant: Variant, dtype_bytes: int, ranks: int = 1,
            checkpoint: Weights | None = None, vllm: str | None = None, vision_ranks: int | None = None) -> Weights:
    """Weight bytes on each of ``ranks`` devices (tensor × pipeline parallel); the vision tower
    is split over ``vision_ranks`` of them (its stage's TP; default all).

    From the checkpoint's own tensor list when known (``checkpoint``: tensors read from
    safetensors headers, float tensors counted at 2 bytes, packed ones as stored); otherwise from parameter counts: the
    embeddings (``vocab × hidden``, twice when the lm_head is untied) and the vision tower stay
    in the compute dtype, the transformer body takes the variant's bits per weight.
    Example: Llama 3.1 8B AWQ: 8.03 B params, 2 × 128256 × 4096 = 1.05 B in embeddings at 2 B
    → 2.1 GB, 6.98 B body at 4.16 bits → 3.63 GB; total 5.73 GB = 5.34 GiB (the published
    checkpoint is about 5.7 GB).
    """
    if checkpoint is not None:
        # Read from headers with float tensors counted at 2 bytes (see checkpoint.py).
        scale = dtype_bytes / 2
        w = checkpoint.model_copy(update={
            "unquantised": int(checkpoint.unquantised * scale),
            "embeddings": int(checkpoint.embeddings * scale),
            "vision": int(checkpoint.vision * scale)})
    else:
        arch = entry.arch
        assert arch is not None, f"{entry.id}: no architecture numbers"
        params = entry.params_b * 1e9
        embed = arch.vocab * arch.hidden * (1 if arch.tie_embeddings else 2)
        vision = arch.vision_params_b * 1e9
        body = max(params - embed - vision, 0.0)
        if variant.is_quantised:
            w = Weights(quantised=int(body * variant.weight_bits / 8),
                        embeddings=int(embed * dtype_bytes),
                        vision=int(vision * (variant.weight_bits / 8 if variant.quantized_vision
                                             else dtype_bytes)))
        else:
            w = Weights(unquantised=int(body * dtype_bytes), embeddings=int(embed * dtype_bytes),
                        vision=int(vision * dtype_bytes))
    w = w.model_copy(update={"rotary": rotary_bytes(entry.arch, dtype_bytes)})
    if ranks == 1:
        return w
    # Tensor parallelism splits the body, the (vocab-parallel) embeddings and, by default, the
    # vision encoder; the rotary caches stay whole. Example: Llama 4 Scout at TP 4 on H100s, vLLM
    # 0.19: 50.8 GiB of body and embeddings + 1.6 / 4 of vision + 2.5 of rotary cache = 53.3 GiB
    # (53.12 logged; with the tower whole on every rank it would be 54.5).
    until = VISION_REPLICATED_UNTIL.get(entry.family)
    whole = until is not None and (vllm is None or version_tuple(vllm) < version_tuple(until))
    return w.model_copy(update={"quantised": w.quantised // ranks, "unquantised": w.unquantised // ranks,
                                "embeddings": w.embeddings // ranks,
                                # pipeline stages: the tower is on the first one, split by its TP only
                                "vision": w.vision if whole else w.vision // (vision_ranks or ranks)})


def kv_heads_per_rank(arch: Arch, tp: int) -> int:
    return max(1, arch.kv_heads // tp)


def kv_bytes_per_token_layer(arch: Arch, kv_dtype_bytes: int, tp: int = 1) -> int:
    """K and V of one token in one layer on one device: 2 × KV heads × head dim × bytes; with
    MLA (DeepSeek, Kimi) the compressed latent, the same on every rank (vLLM logs 31,104 B a
    token for DeepSeek-V2-Lite's 27 × (512 + 64) × 2 at TP 1, and per rank at TP 2)."""
    if arch.mla_kv_dim:
        return arch.mla_kv_dim * kv_dtype_bytes
    return 2 * kv_heads_per_rank(arch, tp) * arch.head_dim * kv_dtype_bytes


def kv_bytes_per_token(arch: Arch, kv_dtype_bytes: int, tp: int = 1, context: int | None = None) -> float:
    """Average KV bytes per token of a request of ``context`` tokens, sliding-window layers
    costing only their window (all layers at full cost when ``context`` is None)."""
    per_layer = kv_bytes_per_token_layer(arch, kv_dtype_bytes, tp)
    if context is None or not arch.sliding_layers or not arch.sliding_window:
        return per_layer * arch.layers
    window_share = min(arch.sliding_window, context) / context
    return per_layer * (arch.full_layers + arch.sliding_layers * window_share)


class KvCapacity(Model):
    block_size: int
    num_blocks: int
    groups_full: int
    groups_sliding: int
    blocks_per_request: int
    concurrency: float = Field(description="requests of max_model_len tokens that fit at once")
    tokens: int = Field(description="what vLLM logs as 'KV cache size: N tokens'")


def kv_groups(arch: Arch) -> tuple[int, int, int]:
    """(tensors per group, full groups, sliding groups) as vLLM's hybrid allocator forms them."""
    full, sliding = arch.full_layers, arch.sliding_layers
    if not sliding or not full:
        return arch.layers, (1 if full else 0), (1 if sliding else 0)
    size = min(full, sliding)
    if max(full, sliding) < size * 1.5:
        size = max(full, sliding)
    return size, math.ceil(full / size), math.ceil(sliding / size)


def kv_capacity(arch: Arch, kv_bytes: int, max_model_len: int, *, kv_dtype_bytes: int,
                tp: int = 1, block_size: int = GPU_BLOCK_SIZE, in_flight_tokens: int = 2048) -> KvCapacity:
    """How many requests of ``max_model_len`` tokens ``kv_bytes`` of KV cache hold, and the
    token figure vLLM logs. ``in_flight_tokens`` is max_num_batched_tokens × batches in flight
    (2 with async scheduling on GPUs, 1 on the CPU engine)."""
    page = block_size * kv_bytes_per_token_layer(arch, kv_dtype_bytes, tp)
    tensors, g_full, g_sliding = kv_groups(arch)
    num_blocks = max(int(kv_bytes // page // tensors), 0)
    # an encoder-decoder model's image also fills blocks of the same pool (its cross-attention KV)
    per_req = g_full * (math.ceil(max_model_len / block_size) + math.ceil(arch.encoder_kv_tokens / block_size))
    if g_sliding:
        window = min(arch.sliding_window - 1 + in_flight_tokens, max_model_len)  # type: ignore[operator]
        per_req += g_sliding * (math.ceil(window / block_size) + 1)
    concurrency = num_blocks / per_req if per_req else 0.0
    return KvCapacity(block_size=block_size, num_blocks=num_blocks, groups_full=g_full,
                      groups_sliding=g_sliding, blocks_per_request=per_req,
                      concurrency=concurrency, tokens=int(concurrency * max_model_len))


def kv_request_bytes(arch: Arch, max_model_len: int, *, kv_dtype_bytes: int, tp: int = 1,
                     block_size: int = GPU_BLOCK_SIZE, in_flight_tokens: int = 2048) -> int:
    """KV cache one request of ``max_model_len`` tokens takes: what vLLM checks at start-up
    ("To serve at least one request with the model's max seq len ... GiB KV cache is needed")."""
    cap = kv_capacity(arch, 0, max_model_len, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                      block_size=block_size, in_flight_tokens=in_flight_tokens)
    tensors = kv_groups(arch)[0]
    return cap.blocks_per_request * block_size * kv_bytes_per_token_layer(arch, kv_dtype_bytes, tp) * tensors


def max_len_for(arch: Arch, kv_bytes: int, concurrency: float, *, kv_dtype_bytes: int, tp: int,
                block_size: int, in_flight_tokens: int, ceiling: int, step: int = 256) -> int:
    """The largest max_model_len (a multiple of ``step``, at most ``ceiling``) at which
    ``concurrency`` requests of that length fit; 0 when not even ``step`` tokens do."""
    def ok(n: int) -> bool:
        cap = kv_capacity(arch, kv_bytes, n, kv_dtype_bytes=kv_dtype_bytes, tp=tp,
                          block_size=block_size, in_flight_tokens=in_flight_tokens)
        return cap.concurrency >= concurrency
    if ok(ceiling):
        return ceiling
    lo, hi = 0, ceiling // step       # ok(lo*step) holds trivially for lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return lo * step
