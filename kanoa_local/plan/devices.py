"""What a GPU model keeps from vLLM's budget: the memory the driver reserves (NVML's total less
the total CUDA reports, which vLLM's share is taken of) and the CUDA context of its worker.

The reserve is NVML's FB "Reserved" (nvidia-smi -q): an RTX 3090 on driver 545 shows 24576 MiB
total and 318 reserved, and PyTorch reports 24258 MiB = 23.69 GiB. It grows with newer drivers
and with the card, so the table keeps the largest gap seen on Linux (the smallest CUDA total in
public PyTorch OOM messages, "GPU 0 has a total capacity of X GiB", and vLLM's "Free memory on
device (free/total GiB)" lines; collected 2026-12-02, sources in
benchmarks/data/calibration/README.md). Windows and WSL show almost no gap; the Linux figure
errs toward the smaller budget there. Also: the cards a plan that does not fit would need.
Pure data, no I/O.
"""

from __future__ import annotations

import math
import re

from ..hardware import GIB
from ..images import release_tuple
from .memory import kv_bytes_per_token
from .models import KV_MARGIN
from .models import _tokens as tokens_text

#: (pattern on NVML's device name, NVML total − smallest CUDA total seen, GiB). First match wins.
_RESERVE_GIB: list[tuple[str, float]] = [
    (r"GH200", 0.70),
    (r"H200", 0.68),            # 143771 MiB; 139.72-139.81 GiB
    (r"H100 NVL", 0.58),        # 95830 MiB; 93.00-93.10
    (r"H100", 0.54),            # 81559 MiB; 79.11-79.33
    (r"A[18]00.*80GB", 0.86),   # 81920 MiB; 79.14-79.25
    (r"A[18]00", 0.62),         # 40960 MiB; 39.38-39.50
    (r"RTX PRO 6000", 0.62),    # 97887 MiB; 94.97
    (r"RTX 6000 Ada", 0.56),    # 46068 MiB (ECC on); 44.43
    (r"L40", 0.57),             # 46068 MiB; 44.42-44.53
    (r"RTX A6000", 0.45),       # 49140 MiB; 47.54
    (r"\bA10G?\b", 0.53),       # 23028 MiB; 21.96-21.99
    (r"\bL4\b", 0.46),          # 23034 MiB; 22.03-22.05
    (r"\bT4\b", 0.44),          # 15360 MiB; 14.56-14.58 (14.75 on older drivers)
    (r"V100", 0.27),            # 16384 / 32768 MiB; 15.75-15.78 / 31.73-31.75
    (r"RTX 5090", 0.48),        # 32607 MiB; 31.36-31.37
    (r"RTX 4090", 0.47),        # 24564 MiB; 23.52-23.65
    (r"RTX 3090", 0.44),        # 24576 MiB; 23.56-23.70
    (r"RTX 3080", 0.22),        # 10240 MiB; 9.78
    (r"RTX 3060", 0.25),        # 12288 MiB; 11.75-11.76
]


def cuda_reserve(name: str, nvml_total: int) -> int:
    """Bytes of NVML's total that CUDA does not report for this GPU. A card the table does not
    know: 0.5 GiB or 1.1 % of its memory, whichever is more (the larger gaps of the table)."""
    for pattern, gib in _RESERVE_GIB:
        if re.search(pattern, name) and " MIG " not in name:      # a MIG slice: the rule below
            return int(gib * GIB)
    return max(int(0.5 * GIB), int(0.011 * nvml_total))


def visible_total(name: str, nvml_total: int) -> int:
    """The GPU total vLLM itself reads (torch.cuda.mem_get_info), which its budget is a share of."""
    return nvml_total - cuda_reserve(name, nvml_total)


def cuda_free(name: str, nvml_total: int, nvml_free: int) -> int:
    """What vLLM's CUDA sees free of this GPU. Drivers differ in whether NVML's "used" includes the
    memory CUDA never reports (the reserve): what is free can never be more than CUDA's total less
    what NVML sees used beyond that reserve (a constructed or idle profile's free figure may be)."""
    reserve = cuda_reserve(name, nvml_total)
    used = nvml_total - nvml_free
    return max(min(nvml_free, nvml_total - reserve - max(used - reserve, 0)), 0)


#: A vLLM worker's CUDA context on an idle GPU at TP 1 (total − free in vLLM's "Free memory on
#: device (free/total GiB) on startup" lines, collected 2026-12-02): it grows with the SM count.
_CONTEXT_GIB: list[tuple[str, float]] = [
    (r"B[23]00", 0.70), (r"RTX PRO 6000", 0.56), (r"H100", 0.53), (r"H200", 0.51), (r"RTX [35]090", 0.51),
    (r"L40", 0.49), (r"RTX 4090", 0.45), (r"A[18]00", 0.41),
    # no idle line seen: bounded by an RTX 3060 that captured 1.38 GiB of graphs beside a 0.85
    # share (AIfred's notes), and by the L4's 0.18-0.19 for the small parts
    (r"RTX 3060", 0.35), (r"\bL4\b", 0.19),
]
#: vLLM starts NCCL and its custom all-reduce before that snapshot from 0.11 (PR 25359): at TP > 1
#: their buffers sit beside the budget too. RTX 3090s (no P2P) at TP 2-8 showed 0.41-0.63 GiB in
#: all; an RTX PRO 6000 at TP 4 0.96, an H100 at TP 4 1.54, an H200 at TP 8 2.16.
_TP_EXTRA_GIB = {"no-p2p": 0.15, "p2p": 1.0, "p2p-8": 1.65}
#: a card the table does not know (the larger figures of the table)
UNKNOWN_CONTEXT_GIB = 0.55


def cuda_context(name: str, tp: int = 1, p2p: bool = True, vllm: str | None = None) -> int:
    """Bytes per GPU outside vLLM's budget that its worker holds before sizing it: the CUDA
    context (0.55 GiB for a card the table does not know), and from 0.11 the TP buffers."""
    base = next((gib for pattern, gib in _CONTEXT_GIB if re.search(pattern, name)), UNKNOWN_CONTEXT_GIB)
    if tp > 1 and release_tuple(vllm) >= (0, 11):
        base += _TP_EXTRA_GIB["no-p2p" if not p2p else "p2p-8" if tp > 4 else "p2p"]
    return int(base * GIB)


def cards_for(fixed: int, context: int, arch, kv_dtype_bytes: int, tp: int, gmu_default: float,
              pp: int = 1, asked: tuple[float, int, int] | None = None) -> tuple[str, int]:
    """The GPU memory this would need for ``context`` tokens, in cards people can buy; beyond
    one node of 8 GPUs, in nodes. ``asked``: (the share given with --gpu-memory-utilization, the
    total vLLM sees, the room a share may take): the larger share that would do here comes first,
    with the plan's margin on the KV cache."""
    kv = int(kv_bytes_per_token(arch, kv_dtype_bytes, tp, context) * context) + int(0.2 * GIB)
    share = math.ceil((fixed + kv * KV_MARGIN) / asked[1] * 100) / 100 if asked else 1.0
    here = f"--gpu-memory-utilization {share:.2f} here, or " if asked and asked[0] < share \
        and share * asked[1] <= asked[2] else ""
    per_gpu = (fixed + kv) / gmu_default + int(UNKNOWN_CONTEXT_GIB * GIB) + 0.5 * GIB
    gpus = tp * pp
    total = per_gpu * gpus
    for size in (12, 16, 24, 32, 48, 80, 141):
        if per_gpu * 1.0 <= size * GIB * 0.995:
            card = f"{'an' if str(size)[0] == '8' else 'a'} {size} GB GPU" if gpus == 1 else (
                f"{pp} nodes × {tp} × {size} GB GPUs" if pp > 1 else f"{tp} × {size} GB GPUs")
            return f"{here}{card} for {tokens_text(context)} tokens ({total / GIB:.0f} GiB in all)", int(total)
    n = 1
    while n < 256 and total / n > 80 * GIB * 0.9:
        n *= 2
    example = f"{n} × 80 GB GPUs" if n <= 8 else f"{n // 8} nodes × 8 × 80 GB GPUs"
    return (f"{here}about {total / GIB:.0f} GiB of GPU memory for {tokens_text(context)} tokens "
            f"(e.g. {example})", int(total))
