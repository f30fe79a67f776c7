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

#: (precision, MoE or not (None: both), compute capabilities, first release without the kernels,
#: first release with them again, why): a release inside [from, until) cannot run it there
GAPS: list[tuple[str, bool | None, tuple[int, ...], str, str, str]] = [
    ("nvfp4", False, (120, 121), "0.0.0", "0.12.0", "its sm_120 NVFP4 GEMM is dispatched from vLLM 0.12.0"),
    ("nvfp4", True, (120, 121), "0.0.0", "0.20.0",
     "NVFP4 MoE on sm_120 works reliably from vLLM 0.20.0 (FlashInfer's CUTLASS MoE, the default since "
     "0.15.1, fails before the SM12x fixes)"),
    ("fp8", True, (120, 121), "0.14.0", "0.15.1", "FP8 MoE on sm_120 fails in vLLM 0.14.0-0.15.0 (no sm_120 CUTLASS MoE kernel)"),
    ("nvfp4", None, (121,), "0.0.0", "0.20.0", "vLLM builds its NVFP4 kernels for sm_121 from 0.20.0"),
    ("fp8", None, (121,), "0.0.0", "0.20.0", "vLLM builds its FP8 CUTLASS kernels for sm_121 from 0.20.0"),
]


def refusal(precision: str, moe: bool, cc: int, vllm: str) -> str | None:
    """Why release ``vllm`` has no working kernels for ``precision`` on compute capability
    ``cc`` (x10), or None."""
    v = version_tuple(vllm)
    return next((why for p, m, ccs, since, until, why in GAPS if p == precision and cc in ccs and m in (None, moe)
                 and version_tuple(since) <= v < version_tuple(until)), None)
