"""Check `kanoa-local check --bandwidth`'s method against independent measurements.

Runs on a machine with an NVIDIA GPU and torch (no Docker needed): the product's method
(kanoa_local/engine/h2d_bench.py: torch copies timed by CUDA events, median of 10, 256 MiB)
beside (a) CuPy's raw cudaMemcpy timed by CUDA events and (b) torch copies timed by the wall
clock around a synchronize, for several buffer sizes. Prints one JSON object and a table.

    python benchmarks/bandwidth_crosscheck.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kanoa_local" / "engine"))
import h2d_bench  # noqa: E402  (the product's own measurement, standalone file)


def cupy_memcpy(size_mib: int, reps: int = 10) -> float | None:
    try:
        import cupy as cp
    except ImportError:
        return None
    n = size_mib * 1024 * 1024
    host = cp.cuda.alloc_pinned_memory(n)
    dev = cp.cuda.alloc(n)
    times = []
    for i in range(reps + 3):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        cp.cuda.runtime.memcpy(dev.ptr, host.ptr, n, cp.cuda.runtime.memcpyHostToDevice)
        e.record()
        e.synchronize()
        if i >= 3:
            times.append(cp.cuda.get_elapsed_time(s, e) / 1000)
    return round(n / statistics.median(times) / 1e9, 2)


def torch_wallclock(size_mib: int, reps: int = 10) -> float:
    import torch

    n = size_mib * 1024 * 1024
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        dev.copy_(host)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return round(n / statistics.median(times) / 1e9, 2)


def main() -> None:
    rows = []
    for mib in (16, 64, 256, 1024):
        product = h2d_bench.bench(mib)
        rows.append({"size_mib": mib, "product_h2d_pinned": product.get("h2d_pinned_gbps"),
                     "product_h2d_pageable": product.get("h2d_pageable_gbps"),
                     "product_d2h_pinned": product.get("d2h_pinned_gbps"),
                     "cupy_memcpy_events": cupy_memcpy(mib), "torch_wallclock": torch_wallclock(mib)})
    print(json.dumps({"device": product.get("device"), "rows": rows}))
    print(f"{'MiB':>6} {'product':>9} {'cupy':>9} {'wallclock':>10} {'pageable':>9} {'d2h':>8}  (GB/s)")
    for r in rows:
        print(f"{r['size_mib']:>6} {r['product_h2d_pinned']:>9} {r['cupy_memcpy_events']!s:>9} "
              f"{r['torch_wallclock']:>10} {r['product_h2d_pageable']:>9} {r['product_d2h_pinned']:>8}")


if __name__ == "__main__":
    main()
