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

from ..catalog import Arch, ModelEntry, Variant
from ..images import release_tuple as _release
from ..hardware import GIB, Model
from .multimodal import encoder_bytes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}

# Defaults of the engine (vLLM >= 0.11, OpenAI server), by device.
GPU_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128           # the CPU attention backend needs a multiple of 32; 0.32 uses 128
BIG_GPU_BYTES = 70 * GIB       # H100/H200 class: larger scheduler defaults
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
    source: Literal["estimate", "checkpoint"] = "estimate"
    note: str = ""

    @property
    def total(self) -> int:
        return self.quantised + self.unquantised + self.embeddings + self.vision


def weights(entry: ModelEntry, variant: Variant, dtype_bytes: int, tp: int = 1,
            checkpoint: Weights | None = None) -> Weights:
    """Weight bytes on each of ``tp`` devices.

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
    if tp == 1:
        return w
    # Tensor parallelism splits the body and the (vocab-parallel) embeddings; the vision
    # encoder is replicated on every rank in vLLM's multimodal models.
    return w.model_copy(update={"quantised": w.quantised // tp, "unquantised": w.unquantised // tp,
                                "embeddings": w.embeddings // tp})


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


# ----------------------------------------------------------------------------- overheads


def scheduler_defaults(device: Literal["gpu", "cpu"], total_bytes: int, gpu_name: str = "",
                       world_size: int = 1, vllm: str | None = None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's OpenAI server picks when not given
    (EngineArgs' V1 defaults, read in the 0.8.1-0.8.5 and 0.9-0.33 wheels): 0.8.0-0.8.3 schedule
    1024 sequences on every GPU (8192 tokens on an H100/H200, else 2048); 0.8.4 keeps 1024 for
    H100/H200 only; from 0.8.5 8192 / 1024 from 70 GiB of GPU memory, A100s left out from 0.9
    (vLLM PR 17885) and the DGX Spark's GB10 too; 16384 / 1024 from 160 GiB (B200 class; in
    0.28, not yet in 0.25); else 2048 / 256."""
    if device == "cpu":
        return 2048 * world_size, 128 * world_size
    v = _release(vllm)
    name = gpu_name.lower()
    hopper = "h100" in name or "h200" in name
    if (0, 8) <= v < (0, 8, 5):
        return (8192 if hopper else 2048), (1024 if hopper or v < (0, 8, 4) else 256)
    if total_bytes >= 160 * GIB and v >= (0, 28):
        return 16384, 1024
    if total_bytes >= BIG_GPU_BYTES and not ("a100" in name and v >= (0, 9)) and "gb10" not in name:
        return 8192, 1024
    return 2048, 256


#: Bytes per element of the ``max_num_seqs × vocab`` logits at the sampler's peak when its top-k/top-p
#: sorts the whole vocabulary (PyTorch path): bf16 logits 2 + their float32 copy 4 + sorted values 4 and
#: int64 indices 8 + the radix sort's double buffers and index input (4 + 8 + 8) ≈ 38, with the softmax /
#: cumsum of the sorted row on top. vLLM#32558 measured 1.25 GB for 256 × 131,072 (37 B); llm-d-benchmark's
#: H100 logs at 1,024 sequences show a torch peak of 4.76 GiB (Llama 3.1 8B), 5.56 (Qwen3 0.6B), 5.64
#: (Qwen3 32B), 7.38 (gpt-oss 20B): 38-39 B per element whatever the model's size.
SORT_SAMPLER_BYTES = 40
#: The same without the sort (FlashInfer or Triton top-k/top-p): vLLM 0.19 on H100 at 1,024 sequences
#: peaked at 14.5-15.8 B per element (Llama 3.1 8B 1.89 GiB, Qwen2.5 72B 2.29, gpt-oss 20B 2.87, Gemma 3 3.89).
LIGHT_SAMPLER_BYTES = 16
#: What the profiling pass is charged per element beside the MLP activations (calibrated on vLLM 0.19:
#: the two terms do not peak at once, and their sum matches the logged torch peak within a few %).
LOGITS_BYTES = 8


def sampler_sorts(vllm: str | None, flashinfer: bool = True) -> bool:
    """Whether this release's default top-k/top-p sampler sorts the whole vocabulary: V0, and V1 up to
    0.8 (FlashInfer >= 0.2.3 was switched off: "FlashInfer>=v0.2.3 is not backward compatible. Falling
    back to the PyTorch-native implementation"); again from 0.11.1, when vLLM#26859 disabled the FlashInfer
    sampler by default, until the Triton kernel (vLLM#33538, merged February 2026; 0.17.1 logs show the
    lighter peak). 0.21 turned FlashInfer back on (vLLM#40376). In 0.9-0.11.0 the sampler was FlashInfer's
    where FlashInfer is installed (the official images) and the sorting one in a plain ``pip install
    vllm`` (``flashinfer=False``): vLLM 0.9.1 on an RTX 3090 and 0.11.0 on an RTX 3060, both pip installs,
    left the KV cache what the sorting peak predicts."""
    v = _release(vllm)
    return v < (0, 9) or (0, 11, 1) <= v < (0, 17) or (not flashinfer and v < (0, 11, 1))


def sampler_bytes(vocab: int, max_seqs: int, vllm: str | None = None, flashinfer: bool = True) -> int:
    """Peak of vLLM's sampler over ``max_seqs`` dummy requests (``_dummy_sampler_run``: top-k = vocab - 1,
    top-p 0.9, no penalties, no logprobs: the same metadata in every release from 0.8.1; both in
    profiling and in the warm-up after the KV cache is allocated)."""
    per = SORT_SAMPLER_BYTES if sampler_sorts(vllm, flashinfer) else LIGHT_SAMPLER_BYTES
    return max_seqs * vocab * per


def activation_bytes(entry: ModelEntry, batched_tokens: int, max_seqs: int, dtype_bytes: int,
                     tp: int = 1, images: int = 1, vllm: str | None = None, videos: int = 0,
                     max_len: int = 0, flashinfer: bool = True) -> Term:
    """Peak of vLLM's profiling pass beyond the weights.

    The pass runs ``batched_tokens`` tokens through the model and samples ``max_seqs`` rows:
    the widest activations are the fused gate/up MLP output (2 × intermediate per rank) and
    the hidden states around it, plus float32 logits for the sampled rows over the *whole*
    vocabulary (each rank gathers them: vLLM 0.19 on H100s showed 1.96 GiB at TP 2 and 1.97 at
    TP 4 for Llama 3.3 70B). A mixture of experts adds the fused-MoE workspace (every token ×
    its top-k experts × the expert's gate/up/down widths). A vision model also encodes its
    dummy images at the largest size its processor allows. Releases whose sampler sorts the vocabulary
    (:func:`sampler_sorts`) are charged at least its whole peak (:data:`SORT_SAMPLER_BYTES` per element)
    beside the MLP activations.
    """
    arch = entry.arch
    assert arch is not None
    inter = (arch.intermediate or 4 * arch.hidden) // tp
    moe = 0
    if arch.experts:
        k = arch.experts_per_token or 2
        inter *= min(k, 4)                      # routed tokens are gathered per expert
        moe = batched_tokens * k * (3 * (arch.intermediate or 0) // tp + arch.hidden) * dtype_bytes
    hidden_states = batched_tokens * (2 * inter + 4 * arch.hidden) * dtype_bytes
    logits = max_seqs * arch.vocab * LOGITS_BYTES
    vision, encoded = 0, ""
    if entry.vision:
        # the tower's own activations (0.5-2 GiB for 0.3-0.9 B towers in public logs) and the
        # encoder run over the largest dummy image(s) or video (plan/multimodal.py)
        vision, encoded = encoder_bytes(entry, images, videos, max_len or arch.max_context, dtype_bytes, vllm)
        if entry.vision_profile_gib and entry.max_num_seqs:
            # measured at the model's own max_num_seqs; the dummy batch scales with the sequences
            vision = int(vision * max_seqs / entry.max_num_seqs)
    total = hidden_states + logits + moe + vision
    if sampler_sorts(vllm, flashinfer):
        # the sorting sampler runs after the forward pass has freed its activations (and after the
        # encoder's): llm-d-benchmark's H100 peaks at 1,024 sequences are 5.56 GiB for Qwen3 0.6B and
        # 5.64 for Qwen3 32B, one vocabulary, a forward pass 0.9 GiB apart: the larger peak stands
        total = max(total, sampler_bytes(arch.vocab, max_seqs, vllm, flashinfer))
    note = f"{batched_tokens} tokens × MLP/hidden + {max_seqs} × vocab logits"
    if sampler_sorts(vllm, flashinfer):
        note += " (sorted by the sampler)"
    if moe:
        note += " + fused-MoE workspace"
    if vision:
        note += f" + {encoded}"
    return Term(name="activations", bytes=total, note=note)


def non_torch_bytes(tp: int, custom_allreduce: bool = True, vllm: str | None = None) -> Term:
    """Memory torch does not track that the profiling pass sees grow: cuBLAS/cuDNN workspaces, and
    with tensor parallelism NCCL and custom all-reduce buffers. vLLM 0.19 on H100: "non-torch
    forward increase memory" 0.25-0.27 GiB at TP 1, 2.07-2.21 GiB at TP 2 and 4; vLLM 0.10.1 on
    two A100s left 0.65 GiB for activations and all of it together (the buffers of the releases
    before 0.11 were far smaller). vLLM's custom all-reduce needs P2P or NVLink; on GeForce cards
    (no P2P) it is off and NCCL's buffers remain."""
    if tp == 1:
        base, note = int(0.27 * GIB), "cuBLAS workspaces"
    elif custom_allreduce and _release(vllm) < (0, 11):
        base, note = int(0.5 * GIB), "cuBLAS workspaces + NCCL and custom all-reduce buffers"
    elif custom_allreduce:
        base, note = int(2.25 * GIB), "cuBLAS workspaces + NCCL and custom all-reduce buffers"
    else:
        base, note = int(1.0 * GIB), "cuBLAS workspaces + NCCL buffers (no P2P: no custom all-reduce)"
    return Term(name="non-torch", bytes=base, note=note)


def capture_sizes(max_seqs: int, batched_tokens: int, vllm: str | None = None) -> list[int]:
    """The batch sizes vLLM captures CUDA graphs for. V0 (before 0.8): up to max_num_seqs (at most 256).
    V1 before 0.11: [1, 2, 4, 8, ..., 512] cut only at max_num_batched_tokens, whatever max_num_seqs is
    (vLLM#18698 documents it). From 0.11: up to ``min(2 × max_num_seqs, 512, max_num_batched_tokens)`` on
    the grid [1, 2, 4] + 8..248 step 8 + 256.. step 16."""
    v = _release(vllm)
    if v < (0, 8):
        top = min(max_seqs, 256)
        grid = [1, 2, 4] + list(range(8, 257, 8))
    elif v < (0, 11):
        top = min(512, batched_tokens)
        grid = [1, 2, 4] + list(range(8, 513, 8))
    else:
        top = min(2 * max_seqs, 512, batched_tokens)
        grid = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))
    sizes = [s for s in grid if s <= top]
    return sizes or [1]


#: Memory NCCL takes for each all-reduce captured into a CUDA graph when the GPUs have no P2P path
#: (its SHM transport through the host), with the NCCL of torch <= 2.6 (vLLM < 0.9): four RTX 4090s
#: took 6.56 GiB of graphs where four A30s took 1.43 with the same command (vLLM#11452); four A10s
#: on vLLM 0.8.5 held 6.1 GiB outside torch when capture ran out of memory (QwenLM/Qwen3#1387, and
#: vLLM#17469: "Works with enforce-eager"); A10G/L4 graphs 3.8 GiB on CUDA 12.2 drivers (vLLM#5517).
NCCL_GRAPH_BYTES_PER_ALLREDUCE = 1 * 2**20


def nccl_in_graphs(tp: int, p2p: bool, vllm: str | None = None) -> bool:
    """Whether the captured graphs carry NCCL all-reduces that cost memory per capture."""
    return tp > 1 and not p2p and _release(vllm) < (0, 9)


def cuda_graph_bytes(arch: Arch, max_seqs: int, tp: int = 1, batched_tokens: int = 8192,
                     vllm: str | None = None, p2p: bool = True) -> Term:
    """CUDA graphs for the batch sizes vLLM captures (:func:`capture_sizes`): vLLM 0.19 on H100
    logged 0.93-1.85 GiB of graph pool up to 512 (27-80 layers), nearly the same at TP 2 and TP 4;
    fewer captured sizes, fewer graphs. Without P2P between the GPUs, older releases also pay NCCL's
    memory for every captured all-reduce (two per layer and size: :data:`NCCL_GRAPH_BYTES_PER_ALLREDUCE`)."""
    sizes = capture_sizes(max_seqs, batched_tokens, vllm)
    share = max(sizes) / 512
    total = int((0.3 + (0.7 + 0.011 * arch.layers) * share) * GIB)
    note = "captured after the KV cache; outside the budget"
    if nccl_in_graphs(tp, p2p, vllm):
        total += len(sizes) * 2 * arch.layers * NCCL_GRAPH_BYTES_PER_ALLREDUCE
        note += f"; NCCL all-reduces in {len(sizes)} graph sizes (no P2P)"
    return Term(name="CUDA graphs", bytes=total, note=note)
