"""What vLLM's profiling pass, its CUDA graphs and its warm-ups take beyond the weights and the KV
cache, per release: the scheduler's defaults that size them, the sampler's peak, the forward pass's
activations, memory outside torch, the graphs, and the slack a plan keeps beside the budget."""

from __future__ import annotations

from typing import Literal

from ..catalog import Arch, ModelEntry, Variant
from ..hardware import GIB, Model
from ..images import release_tuple as _release
from . import runner as v2
from .memory import Term
from .runner import Runner
from .multimodal import encoder_bytes, kept_bytes

BIG_GPU_BYTES = 70 * GIB       # H100/H200 class: larger scheduler defaults

#: What a plan leaves free beside the budget beyond the terms it models there (CUDA context, graphs
#: captured after the KV cache, the sampler's warm-up): the caching allocator's fragmentation and
#: memory outside torch that grows after profiling. Calibrated on releases that capture graphs after
#: the KV cache: the least room beside the budget that started is 0.49 GiB by this estimate (Llama
#: 3.1 8B, RTX 3090, 0.17.1; 0.55 for the 0.95 shares of H100s at TP 2 and 4).
BESIDE_SLACK = int(0.4 * GIB)
#: Twice that where tensor parallelism runs on NCCL without P2P (its host-transport proxies and the
#: all-reduces captured in every graph): a sampler warm-up ran out of memory with 0.57 GiB left by this
#: estimate (Qwen3-Coder-30B, 4 x L4, vLLM 0.12).
BESIDE_SLACK_NO_P2P = int(0.8 * GIB)


#: Where nothing is captured beside the budget (graphs inside it, from 0.20), only the CUDA context is
#: there: a plan that picks the share itself keeps this much free beyond it.
BESIDE_MARGIN = int(0.25 * GIB)


def beside_slack(tp: int, p2p: bool, graphs_inside: bool = False) -> int:
    if graphs_inside:
        return BESIDE_MARGIN
    return BESIDE_SLACK_NO_P2P if tp > 1 and not p2p else BESIDE_SLACK


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
                     max_len: int = 0, flashinfer: bool = True, model_runner: Runner = "v1",
                     compiled: bool = True) -> Term:
    """Peak of vLLM's profiling pass beyond the weights.

    The pass runs ``batched_tokens`` tokens through the model and samples ``max_seqs`` rows:
    the widest activations are the fused gate/up MLP output (2 × intermediate per rank) and
    the hidden states around it, plus float32 logits for the sampled rows over the *whole*
    vocabulary (each rank gathers them: vLLM 0.19 on H100s showed 1.96 GiB at TP 2 and 1.97 at
    TP 4 for Llama 3.3 70B). A mixture of experts adds the fused-MoE workspace (every token ×
    its top-k experts × the expert's gate/up/down widths). A vision model also encodes its
    dummy images at the largest size its processor allows, before the language model's pass (the
    larger of the two peaks counts). Releases whose sampler sorts the vocabulary
    (:func:`sampler_sorts`) are charged at least its whole peak (:data:`SORT_SAMPLER_BYTES` per element)
    beside the MLP activations. The V2 model runner samples lighter and compiles inside the pass
    (plan/runner.py).
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
    vision, encoded, kept = 0, "", 0
    if entry.vision and (model_runner == "v1" or v2.encoder_profiled(vllm)):
        vision, encoded = vision_bytes(entry, images, videos, max_len, dtype_bytes, vllm, max_seqs, batched_tokens)
        kept = kept_bytes(entry, videos, dtype_bytes, vllm)
    if model_runner == "v2":
        rows = min(batched_tokens, max_seqs)
        sampled = rows * arch.vocab * v2.sampler_bytes_per_element(vllm, tp) + batched_tokens * arch.hidden * dtype_bytes
        total = max(hidden_states + moe + kept + (v2.COLD_COMPILE_BYTES if compiled else 0), vision, sampled)
        note = (f"{batched_tokens} tokens × MLP/hidden" + (" on a cold torch.compile" if compiled else ", eager")
                + f", {rows} × vocab sampled (model runner V2)")
    else:
        # the encoder runs first, on its own; the language model's dummy pass after it, beside its
        # (small) outputs only: the larger peak stands (llm-d's H100 logs, 0.19: Llama 4 Scout at TP 4
        # 3.19 GiB, Mistral Small 3.1, Gemma 3 27B and Kimi-VL within 1 % of vLLM's KV cache so)
        total = max(hidden_states + max_seqs * arch.vocab * LOGITS_BYTES + moe + kept, vision)
        # the sampler runs after the forward pass has freed its activations (and after the encoder's):
        # llm-d-benchmark's H100 peaks at 1,024 sequences are 5.56 GiB for Qwen3 0.6B and 5.64 for Qwen3
        # 32B on a sorting release, one vocabulary, a forward pass 0.9 GiB apart; on 0.19 (no sort) 2.29 GiB
        # for Qwen2.5 72B at TP 2, the sampler's own peak: the larger peak stands
        total = max(total, sampler_bytes(arch.vocab, max_seqs, vllm, flashinfer))
        note = f"{batched_tokens} tokens × MLP/hidden + {max_seqs} × vocab logits"
        if sampler_sorts(vllm, flashinfer):
            note += " (sorted by the sampler)"
    if moe:
        note += " + fused-MoE workspace"
    if vision:
        note += f" + {encoded}"
    return Term(name="activations", bytes=total, note=note)


def vision_bytes(entry: ModelEntry, images: int, videos: int, max_len: int, dtype_bytes: int,
                 vllm: str | None, max_seqs: int, batched: int = 0) -> tuple[int, str]:
    """The tower's own activations (0.5-2 GiB for 0.3-0.9 B towers in public logs) and the encoder
    run over the largest dummy image(s) or video (plan/multimodal.py)."""
    arch = entry.arch
    assert arch is not None
    vision, encoded = encoder_bytes(entry, images, videos, max_len or arch.max_context, dtype_bytes, vllm, batched)
    if entry.vision_profile_gib and entry.max_num_seqs:
        # measured at the model's own max_num_seqs; the dummy batch scales with the sequences
        vision = int(vision * max_seqs / entry.max_num_seqs)
    return vision, encoded


def non_torch_bytes(tp: int, custom_allreduce: bool = True, vllm: str | None = None,
                    model_runner: Runner = "v1", cc: int = 0) -> Term:
    """Memory torch does not track that the profiling pass sees grow: cuBLAS/cuDNN workspaces, and
    with tensor parallelism NCCL and custom all-reduce buffers. vLLM 0.19 on H100: "non-torch
    forward increase memory" 0.25-0.27 GiB at TP 1, 2.07-2.21 GiB at TP 2 and 4; vLLM 0.10.1 on
    two A100s left 0.65 GiB for activations and all of it together (the buffers of the releases
    before 0.11 were far smaller, but for Hopper/Blackwell parts from 0.9: NCCL's NVLink SHARP and
    the all-reduce fusion are theirs only; Qwen3-235B FP8 at TP 4 on H100s, 0.9.2, held far more). vLLM's custom all-reduce needs P2P or NVLink; on GeForce cards
    (no P2P) it is off and NCCL's buffers remain. Under the V2 model runner (measured against a
    snapshot taken after cuBLAS is set up): ~0.15 GiB at TP 1; at TP > 1 the large share is the
    symmetric-memory all-reduce and its RMSNorm fusion, built on SM90/SM100 only."""
    if model_runner == "v2":
        if tp == 1:
            return Term(name="non-torch", bytes=v2.NON_TORCH_BYTES, note="kernel workspaces")
        if custom_allreduce and cc in (90, 100, 103):
            return Term(name="non-torch", bytes=int(2.25 * GIB),
                        note="workspaces + symmetric-memory all-reduce and its fusion buffers")
        return Term(name="non-torch", bytes=int(0.5 * GIB), note="workspaces + NCCL buffers")
    if tp == 1:
        base, note = int(0.27 * GIB), "cuBLAS workspaces"
    elif custom_allreduce and _release(vllm) < (0, 11) and not (cc in (90, 100, 103) and _release(vllm) >= (0, 9)):
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
    """CUDA graphs for the batch sizes vLLM captures (:func:`capture_sizes`): a pool the size of the
    largest batch's activations, which every size reuses, and per size a piecewise graph per layer
    (from 0.11, FULL_AND_PIECEWISE: a full graph of each decode size as well). Calibrated on the 20
    graph sizes vLLM 0.19 logged on H100s up to 512 ("Graph capturing finished ... took X GiB"):
    0.81-0.96 GiB for 28-36 layers, 1.13-1.41 for 48, 1.54-1.85 for 80 (TP 1-4 alike; the fit
    errs high); MLA (DeepSeek-V2-Lite, 27 layers) took 1.57; vLLM 0.8.2's piecewise graphs of a
    28-layer model took 0.63. Without P2P between the GPUs, older releases also pay NCCL's memory
    for every captured all-reduce (two per layer and size: :data:`NCCL_GRAPH_BYTES_PER_ALLREDUCE`)."""
    sizes = capture_sizes(max_seqs, batched_tokens, vllm)
    largest = max(sizes) / 512
    count = len(sizes) / len(capture_sizes(512, 8192, vllm))
    per_layer = GRAPH_BYTES_PER_LAYER * (1 if _release(vllm) >= (0, 11) else 0.5)
    total = int(GRAPH_POOL_BYTES * largest + per_layer * arch.layers * count)
    if arch.mla_kv_dim:
        total += int(MLA_GRAPH_BYTES * largest)
    note = "captured after the KV cache; outside the budget"
    if nccl_in_graphs(tp, p2p, vllm):
        total += len(sizes) * 2 * arch.layers * NCCL_GRAPH_BYTES_PER_ALLREDUCE
        note += f"; NCCL all-reduces in {len(sizes)} graph sizes (no P2P)"
    return Term(name="CUDA graphs", bytes=total, note=note)


#: The graph pool at the largest captured batch (512), and the graphs of one layer over all sizes
#: (full + piecewise); an MLA model's attention metadata for full graphs on top (see cuda_graph_bytes).
GRAPH_POOL_BYTES = int(0.45 * GIB)
GRAPH_BYTES_PER_LAYER = int(0.0175 * GIB)
MLA_GRAPH_BYTES = int(0.65 * GIB)


class Overheads(Model):
    """What one configuration holds beyond its weights and KV cache, inside vLLM's budget and beside it."""

    model_runner: Runner
    act: Term
    non_torch: Term
    graphs: Term
    graphs_inside: bool
    persistent: Term | None = None      # inside the budget
    beside: list[Term] = []             # held beside the budget after the KV cache, besides the graphs
    warm: int = 0                       # V2's kernel warm-up after the KV cache beyond what the profile kept
    act_eager: Term | None = None       # the profiling peak with --enforce-eager (no torch.compile), where less

    @property
    def held_beside(self) -> int:
        """What sits beside the budget after the KV cache whether graphs are captured or not."""
        return self.warm + sum(t.bytes for t in self.beside)

    @property
    def eager_saving(self) -> int:
        return self.act.bytes - self.act_eager.bytes if self.act_eager else 0

    def beside_text(self, seqs: int, batched: int) -> str:
        """What this release holds beside the budget, for a refusal's sentence."""
        parts = [f"its {t.name} ({t.gib:.1f} GiB)" for t in self.beside]
        if self.warm:
            parts.insert(0, f"the V2 runner's kernel warm-up with {min(seqs, batched // 2)} requests after the KV cache "
                            f"({self.warm / GIB:.1f} GiB more than the profile kept)")
        return " and ".join(parts)


def overheads(entry: ModelEntry, variant: Variant, arch: Arch, *, batched: int, seqs: int, dtype_bytes: int,
              tp: int, images: int, videos: int, max_len: int, vllm: str, flashinfer: bool, p2p: bool,
              cc: int) -> Overheads:
    """The profiling pass, memory outside torch, CUDA graphs and warm-ups of this release's runner."""
    who = v2.runner(vllm, entry, variant)
    act = activation_bytes(entry, batched, seqs, dtype_bytes, tp, images, vllm=vllm, videos=videos,
                           max_len=max_len, flashinfer=flashinfer, model_runner=who)
    non_torch = non_torch_bytes(tp, custom_allreduce=p2p, vllm=vllm, model_runner=who, cc=cc)
    graphs = cuda_graph_bytes(arch, seqs, tp, batched, vllm=vllm, p2p=p2p)
    if who == "v1":
        # vLLM >= 0.20 estimates CUDA-graph memory and takes it from the budget; older releases
        # capture the graphs after sizing the KV cache, in the slack above the budget. The sampler's
        # warm-up after the capture needs no more than its peak, which the profile kept (activations
        # are at least the sampler's peak), so nothing of it sits beside the budget.
        inside = _release(vllm) >= (0, 20)
        return Overheads(model_runner=who, act=act, non_torch=non_torch, graphs=_placed(graphs, inside),
                         graphs_inside=inside)
    graphs = graphs.model_copy(update={"bytes": int(graphs.bytes * v2.GRAPH_SHARE)})
    inside = v2.graphs_inside(vllm)
    state = Term(name="sampler state", bytes=v2.persistent_bytes(arch.vocab, seqs),
                 note=f"{seqs} × vocab penalty counts and bitmasks (model runner V2)")
    beside = [] if v2.persistent_inside(vllm) else [state.model_copy(update={"note": state.note + ", beside the budget"})]
    if entry.vision and not v2.encoder_profiled(vllm):
        vision, encoded = vision_bytes(entry, images, videos, max_len, dtype_bytes, vllm, seqs, batched)
        beside += [] if not vision else [Term(name="vision encoder", bytes=vision,
                                                note=f"{encoded}: not profiled by vLLM {vllm}'s V2 runner, "
                                                     "taken at the first request")]
    warm = max(0, v2.warm_up_bytes(vllm, arch.vocab, seqs, batched) - act.bytes)
    eager = activation_bytes(entry, batched, seqs, dtype_bytes, tp, images, vllm=vllm, videos=videos, max_len=max_len,
                             flashinfer=flashinfer, model_runner=who, compiled=False)
    return Overheads(model_runner=who, act=act, non_torch=non_torch, graphs=_placed(graphs, inside),
                     graphs_inside=inside, persistent=state if v2.persistent_inside(vllm) else None,
                     beside=beside, warm=warm, act_eager=eager if eager.bytes < act.bytes else None)


def _placed(graphs: Term, inside: bool) -> Term:
    return graphs.model_copy(update={"note": "estimated by vLLM and kept out of the KV cache"}) if inside else graphs

