"""Host facts through psutil and /proc: RAM (cgroup-aware), CPU, disk where weights go, WSL2."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..hardware import CpuFacts, Note

#: CPU flags that decide which vLLM CPU kernels can run (AVX-512, bf16, AMX).
CPU_FLAGS_OF_INTEREST = (
    "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)


def _cgroup_memory_limit() -> int | None:
    """A container's memory limit (cgroup v2, then v1), or None when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
    return None


def memory() -> tuple[int, int, list[Note]]:
    import psutil

    vm = psutil.virtual_memory()
    total, available, notes = vm.total, vm.available, []
    limit = _cgroup_memory_limit()
    if limit is not None and limit < total:
        notes.append(Note(field="ram_total", message=(
            f"this process runs in a cgroup limited to {limit / 1024**3:.1f} GiB "
            f"of the host's {total / 1024**3:.1f} GiB")))
        total, available = limit, min(available, limit)
    return total, available, notes


def cpu() -> CpuFacts:
    flags: set[str] = set()
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
    except OSError:
        model = platform.processor() or None
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuFacts(count=count or 1, model=model,
                    flags=[f for f in CPU_FLAGS_OF_INTEREST if f in flags])


def disk_free(path: Path) -> tuple[str, int | None]:
    """Free bytes on the filesystem that holds ``path`` (nearest existing parent)."""
    import psutil

    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return str(path), psutil.disk_usage(str(p)).free
    except OSError:
        return str(path), None


def is_wsl() -> bool:
    if os.path.exists("/dev/dxg"):
        return True
    try:
        text = Path("/proc/version").read_text().lower()
    except OSError:
        return False
    return "microsoft" in text or "wsl" in text
