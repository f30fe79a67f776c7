"""Tensor and pipeline parallel sizes a model can take on a group of GPUs (vLLM's rules)."""

from __future__ import annotations

import re

from ..catalog import ModelEntry
from .models import PlanRequest


def _tp_options(entry: ModelEntry, n: int, limit: int | None) -> list[int]:
    arch = entry.arch
    assert arch is not None
    out = []
    for tp in (1, 2, 4, 8):
        if tp > n or (limit and tp > limit):
            break
        if tp_allowed(entry, tp):
            out.append(tp)
    return out


def tp_allowed(entry: ModelEntry, tp: int) -> bool:
    """vLLM's rule: attention heads divide evenly, KV heads divide or are replicated."""
    arch = entry.arch
    assert arch is not None
    return arch.heads % tp == 0 and (arch.kv_heads % tp == 0 or tp % arch.kv_heads == 0)


def tp_refusal(entry: ModelEntry, n: int, req: PlanRequest) -> str | None:
    """Why ``req.tensor_parallel_size`` cannot be planned on a group of ``n`` GPUs, if it cannot."""
    tp = req.tensor_parallel_size
    if tp is None:
        return None
    arch = entry.arch
    assert arch is not None
    if not tp_allowed(entry, tp):
        return (f"--tensor-parallel-size {tp}: {entry.name}'s {arch.heads} attention heads "
                f"({arch.kv_heads} KV heads) do not split over {tp} GPUs")
    if tp > n:
        return f"--tensor-parallel-size {tp} needs {tp} identical GPUs; this machine has {n}"
    return None


def _parallel_options(entry: ModelEntry, n: int, req: PlanRequest) -> list[tuple[int, int]]:
    """(tensor parallel, pipeline parallel) to try on ``req.nodes`` nodes of ``n`` GPUs: within
    one node any TP the heads allow; across nodes vLLM's rule, TP = every GPU of a node and
    PP = the nodes used (only whole nodes)."""
    if req.nodes > 1 and req.all_nodes:
        return [(n, req.nodes)] if n in _tp_options(entry, n, None) else []
    if req.tensor_parallel_size is not None:
        tp = req.tensor_parallel_size
        if tp_refusal(entry, n, req):
            return []
        return [(tp, 1)] + ([(tp, pp) for pp in range(2, req.nodes + 1)] if req.nodes > 1 and tp == n else [])
    out = [(tp, 1) for tp in _tp_options(entry, n, req.max_gpus)]
    if req.nodes > 1 and n in _tp_options(entry, n, None):
        out += [(n, pp) for pp in range(2, req.nodes + 1)
                if not req.max_gpus or n * pp <= req.max_gpus]
    return out


#: GPUs that usually reach each other without P2P: GeForce cards (the driver keeps PCIe P2P off) and
#: the PCIe inference cards cloud VMs pass through one by one (A10/A10G, L4: vLLM#5517, QwenLM/Qwen3#1387).
_NO_P2P = re.compile(r"geforce|\bA10G?\b|\bL4\b", re.IGNORECASE)


def p2p_likely(gpu_name: str) -> bool:
    """Whether tensor-parallel ranks on these GPUs can exchange over P2P (NVLink or PCIe P2P); vLLM
    tests it at start-up and falls back to NCCL through the host where it cannot. Erring toward none."""
    return not _NO_P2P.search(gpu_name)
