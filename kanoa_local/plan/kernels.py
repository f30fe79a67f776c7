"""Which vLLM releases have the kernels for a precision on consumer Blackwell, where a plain
compute-capability floor says the wrong thing: sm_120 (RTX 50xx, RTX PRO 6000) and sm_121
(DGX Spark) are not "10.0 or newer" for vLLM's NVFP4 and FP8 paths.

Read on 2026-12-02 in the published wheels (Python sources, the C++ dispatchers, the CUDA
architectures compiled in) and vLLM's tracker; not run on such a GPU:
  * NVFP4 dense: the sm_120 GEMM is dispatched from 0.12.0 (PR 29711); before, only the B200
    kernel is called and the start fails.
  * NVFP4 MoE: from 0.12.0 (PR 29242), but 0.15.1 made FlashInfer's CUTLASS MoE the default on
    sm_120 (PR 33417), which fails at start or returns garbage until the SM12x fixes of PR
    38423, first in 0.20.0.
  * FP8 with 128×128 blocks: the sm_120 blockwise kernel is in 0.10.1 on (PR 22131).
  * FP8 MoE with tensor or channel scales: 0.14.0-0.15.0 pick a CUTLASS path that has no
    sm_120 kernel (vLLM#32109, fixed in 0.15.1 by PR 33285).
  * sm_121: up to 0.19.1 the wheels carry sm_120a builds of the FP8 and NVFP4 kernels, which
    load on 12.0 only; 0.20.0 builds them for the 12.x family (sm_120f).
"""

from __future__ import annotations

from ..catalog import version_tuple

#: (precision, MoE or not (None: both), compute capabilities, first release, release it broke again
#: (None: still works), why) — a release inside [first, broke) has the kernels
WINDOWS: list[tuple[str, bool | None, tuple[int, ...], str, str | None, str]] = [
    ("nvfp4", False, (120, 121), "0.12.0", None, "its sm_120 NVFP4 GEMM is dispatched from vLLM 0.12.0"),
    ("nvfp4", True, (120, 121), "0.20.0", None,
     "NVFP4 MoE on sm_120 works reliably from vLLM 0.20.0 (FlashInfer's CUTLASS MoE, the default since "
     "0.15.1, fails before the SM12x fixes)"),
    ("fp8", True, (120, 121), "0.0.0", "0.14.0", ""),
    ("fp8", True, (120, 121), "0.15.1", None, "FP8 MoE on sm_120 fails in vLLM 0.14.0-0.15.0 (no sm_120 CUTLASS MoE kernel)"),
    ("nvfp4", None, (121,), "0.20.0", None, "vLLM builds its NVFP4 kernels for sm_121 from 0.20.0"),
    ("fp8", None, (121,), "0.20.0", None, "vLLM builds its FP8 CUTLASS kernels for sm_121 from 0.20.0"),
]


def refusal(precision: str, moe: bool, cc: int, vllm: str) -> str | None:
    """Why release ``vllm`` has no working kernels for ``precision`` on compute capability
    ``cc`` (x10), or None."""
    rows = [w for w in WINDOWS if w[0] == precision and cc in w[2] and w[1] in (None, moe)]
    v = version_tuple(vllm)
    # rows of one (precision, kind, GPUs) are alternatives: any window that holds will do
    kinds: dict[tuple[bool | None, tuple[int, ...]], list[tuple[str, str | None, str]]] = {}
    for _, m, ccs, lo, hi, why in rows:
        kinds.setdefault((m, ccs), []).append((lo, hi, why))
    for windows in kinds.values():
        if not any(version_tuple(lo) <= v and (hi is None or v < version_tuple(hi)) for lo, hi, _ in windows):
            return next((why for lo, hi, why in windows if why), "no kernels in this release")
    return None
