"""`check --bandwidth`: measure host-to-GPU copy bandwidth inside the vLLM image and compare
it with what the PCIe link should give. eGPU tunnels and links trained below their generation
are common and silent; this makes them visible.

On a machine where it cannot run it says precisely why (no GPU, no Docker, no NVIDIA runtime,
no image) rather than guessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .check import BandwidthResult
from .errors import DockerUnavailable, EngineError, GpuRuntimeMissing, ImageUnavailable
from .hardware import HardwareProfile
from .images import DEFAULT_GPU_IMAGE, image_for_driver

#: A measured/expected ratio below this marks a link that delivers much less than it claims.
#: Pinned H2D over a healthy x16 link reaches ~80-90 % of the spec figure.
GOOD_RATIO = 0.6
BAD_RATIO = 0.35


def judge(measured: float, expected: float | None) -> tuple[str, float | None, str]:
    """(status, ratio, words) for a pinned H2D figure against the link's spec bandwidth."""
    if not expected:
        return "info", None, f"{measured:.1f} GB/s host→GPU (link speed unknown)"
    ratio = measured / expected
    words = f"{measured:.1f} GB/s host→GPU, {ratio:.0%} of the {expected:.1f} GB/s the link should give"
    if ratio >= GOOD_RATIO:
        return "pass", ratio, words
    if ratio >= BAD_RATIO:
        return "warn", ratio, words + " (slower than the link: a tunnel, a shared lane or a busy bus)"
    return "fail", ratio, words + " (far below the link: degraded link or eGPU tunnel)"


def measure(profile: HardwareProfile, image: str | None = None, live: bool = True,
            timeout: float = 180) -> BandwidthResult:
    if not live:
        return BandwidthResult(ran=False, reason="a recorded profile cannot be measured",
                               remedy="run `kanoa-local check --bandwidth` on that machine")
    if not profile.gpus:
        return BandwidthResult(ran=False, reason=f"no NVIDIA GPU to measure ({profile.nvml_error or 'NVML found none'})",
                               remedy="run it on a machine with an NVIDIA GPU and driver")
    gpu = max(profile.gpus, key=lambda g: g.memory_total)
    d = profile.docker
    if d is None or not d.reachable:
        why = "not probed" if d is None else d.reason.replace("-", " ")
        return BandwidthResult(ran=False, gpu_uuid=gpu.uuid,
                               reason=f"the measurement runs in the vLLM image, and Docker is {why}",
                               remedy=d.detail if d else "start Docker")
    line = image_for_driver(profile.cuda_driver_version, gpu.cc_value) or DEFAULT_GPU_IMAGE
    image = image or line.image
    expected = gpu.pcie.max_bandwidth_gbps
    try:
        out = _run_in_image(image, gpu.uuid, timeout)
    except (GpuRuntimeMissing, ImageUnavailable, DockerUnavailable, EngineError) as exc:
        return BandwidthResult(ran=False, gpu_uuid=gpu.uuid, expected_gbps=expected,
                               reason=exc.message, remedy=exc.remedy)
    if "error" in out:
        return BandwidthResult(ran=False, gpu_uuid=gpu.uuid, expected_gbps=expected,
                               reason=f"the measurement failed in {image}: {out['error']}",
                               remedy="check that the image matches the driver (`kanoa-local check`)")
    status, ratio, words = judge(out["h2d_pinned_gbps"], expected)
    return BandwidthResult(
        ran=True, gpu_uuid=gpu.uuid, h2d_pinned_gbps=out["h2d_pinned_gbps"],
        h2d_pageable_gbps=out.get("h2d_pageable_gbps"), d2h_pinned_gbps=out.get("d2h_pinned_gbps"),
        expected_gbps=expected, ratio=round(ratio, 3) if ratio else None, status=status,
        detail=words, remedy=None if status == "pass" else
        "check the slot/cable; for an eGPU, a direct OCuLink or a Thunderbolt 5 enclosure helps")


def _run_in_image(image: str, gpu_uuid: str, timeout: float) -> dict:
    """Run h2d_bench.py in ``image`` on one GPU; the container is always removed."""
    from .backends import docker_api as dk

    script = (Path(__file__).parent / "engine" / "h2d_bench.py").read_text()
    c = dk.client()
    container = None
    try:
        with dk.translate_errors(image):
            c.images.get(image)
        with dk.translate_errors(image):
            container = c.containers.create(
                image, entrypoint=["python3", "-c", script], detach=True,
                labels={dk.ROLE_LABEL: "bandwidth-check"},
                device_requests=dk.gpu_requests([gpu_uuid]))
            container.start()
            result = container.wait(timeout=timeout)
            logs = container.logs().decode(errors="replace")
        for line in logs.splitlines():
            if line.startswith("KANOA_BW "):
                return json.loads(line[len("KANOA_BW "):])
        return {"error": f"no result (exit {result.get('StatusCode')}): {logs.strip()[-300:]}"}
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - best effort; labelled for `ps` to find
                pass
        c.close()
