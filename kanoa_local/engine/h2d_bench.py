"""Host<->GPU copy bandwidth with torch. Standalone: kanoa-local runs this file's text with
``python3 -c`` inside the vLLM image (which has torch); it imports nothing from kanoa_local.
Prints one JSON line: GB/s (10^9 B/s) for pinned H2D, pageable H2D and pinned D2H.

Method: one 256 MiB buffer, 3 warm-up copies, then the median of 10 timed copies, each
bracketed by CUDA events on a dedicated stream (the copy engine's own time, not Python's).
"""

import json
import os
import statistics
import sys


def bench(size_mib=256, warmup=3, reps=10):
    import torch

    if not torch.cuda.is_available():
        return {"error": "torch sees no CUDA device"}
    dev = torch.device("cuda", 0)
    n = size_mib * 1024 * 1024
    gpu = torch.empty(n, dtype=torch.uint8, device=dev)
    stream = torch.cuda.Stream(device=dev)

    def timed(copy):
        times = []
        for i in range(warmup + reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                start.record(stream)
                copy()
                end.record(stream)
            end.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end) / 1000.0)
        return round(n / statistics.median(times) / 1e9, 2)

    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    pageable = torch.empty(n, dtype=torch.uint8)
    return {
        "device": torch.cuda.get_device_name(dev),
        "h2d_pinned_gbps": timed(lambda: gpu.copy_(pinned, non_blocking=True)),
        "h2d_pageable_gbps": timed(lambda: gpu.copy_(pageable, non_blocking=False)),
        "d2h_pinned_gbps": timed(lambda: pinned.copy_(gpu, non_blocking=True)),
        "size_mib": size_mib,
        "reps": reps,
    }


if __name__ == "__main__":
    try:
        result = bench(int(os.environ.get("KANOA_BW_MIB", "256")))
    except Exception as exc:  # report, the caller explains
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("KANOA_BW " + json.dumps(result))
    sys.exit(0)
