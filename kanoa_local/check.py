"""The hardware compatibility check: a HardwareProfile in, one verdict per requirement out.

Pure functions (no I/O): ``kanoa-local check`` probes, then calls :func:`check`. The thresholds
are the seed page's (12 GB VRAM minimum, 16/24 GB recommended, 16 GB RAM, PCIe 3.0 x4) and
vLLM's (compute capability 7.5, a driver new enough for the image).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .errors import (CHECK_EXIT_CANNOT_SERVE, CHECK_EXIT_CPU_ONLY, CHECK_EXIT_GPU_NOT_READY,
                     CHECK_EXIT_GPU_READY)
from .hardware import GIB, PCIE_LANE_GBPS, Gpu, HardwareProfile
from .plan.matrix import ModelVerdict
from .images import DEFAULT_GPU_IMAGE, GPU_IMAGES, image_for_driver

Status = Literal["pass", "warn", "fail", "info", "skip"]
Verdict = Literal["gpu-ready", "cpu-only", "gpu-not-ready", "cannot-serve"]

VRAM_MIN_GB = 12
VRAM_TIERS_GB = (16, 24)
RAM_MIN_GIB = 16
# psutil reports what the kernel can use: a "16 GB" machine shows ~15.3-15.6 GiB.
RAM_SLACK_GIB = 1.0
CPU_ENGINE_RAM_MIN_GIB = 6
MIN_CC = 75
PCIE_MIN = (3, 4)
DISK_MIN_GIB = 10
DISK_GOOD_GIB = 50

EXIT_CODES: dict[Verdict, int] = {
    "gpu-ready": CHECK_EXIT_GPU_READY, "cpu-only": CHECK_EXIT_CPU_ONLY,
    "gpu-not-ready": CHECK_EXIT_GPU_NOT_READY, "cannot-serve": CHECK_EXIT_CANNOT_SERVE,
}


class CheckItem(BaseModel):
    id: str
    title: str
    status: Status
    detail: str
    remedy: str | None = None
    gpu: int | None = None


class BandwidthResult(BaseModel):
    """`check --bandwidth`: host-to-GPU copy speed measured in the vLLM image vs the link."""

    ran: bool
    reason: str | None = Field(None, description="why it could not run")
    remedy: str | None = None
    gpu_uuid: str | None = None
    h2d_pinned_gbps: float | None = None
    h2d_pageable_gbps: float | None = None
    d2h_pinned_gbps: float | None = None
    expected_gbps: float | None = None
    ratio: float | None = None
    status: Status = "skip"
    detail: str | None = None


class CheckReport(BaseModel):
    verdict: Verdict
    exit_code: int
    summary: str
    items: list[CheckItem]
    profile: HardwareProfile
    bandwidth: BandwidthResult | None = None
    models: list[ModelVerdict] = Field(default_factory=list, description="a verdict per model of the matrix")


def _gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def _link(gen: int | None, width: int | None) -> str:
    return f"PCIe {gen or '?'}.0 x{width or '?'}"


def _gpu_label(g: Gpu) -> str:
    return f"GPU {g.index} {g.name}"


def gpu_items(g: Gpu) -> list[CheckItem]:
    items: list[CheckItem] = []
    # GPUs are sold in decimal GB: an "L4 24 GB" reports 23034 MiB = 22.5 GiB = 24.15 GB.
    total = g.memory_total / 1e9
    others = [p for p in g.processes if p.used_memory]
    free_note = f", {_gib(g.memory_free)} free" if g.memory_free < g.memory_total * 0.9 else ""
    if total < VRAM_MIN_GB - 0.3:
        items.append(CheckItem(id="vram", gpu=g.index, status="fail",
            title=f"{_gpu_label(g)}: VRAM ≥ {VRAM_MIN_GB} GB",
            detail=f"{_gib(g.memory_total)}{free_note}: below the {VRAM_MIN_GB} GB minimum for 7B models at 4-bit",
            remedy="only small models (≤ 4B at 4-bit) fit; see `kanoa-local plan`"))
    else:
        tier = max([t for t in VRAM_TIERS_GB if total >= t - 0.3], default=None)
        status: Status = "pass"
        if tier is None:
            what = "the minimum: 7B models at 4-bit; 16 GB+ recommended for 12B models"
            status = "warn"
        elif tier == 16:
            what = "recommended for 12B models at 4-bit; 24 GB+ for full precision"
        else:
            what = "recommended for full-precision (bf16) inference of mid-size models"
        items.append(CheckItem(id="vram", gpu=g.index, status=status,
            title=f"{_gpu_label(g)}: VRAM ≥ {VRAM_MIN_GB} GB (16/24 GB recommended)",
            detail=f"{_gib(g.memory_total)}{free_note}: {what}"))
    if others:
        held = sum(p.used_memory or 0 for p in others)
        names = ", ".join(f"{p.name or 'pid'} ({p.pid}, {_gib(p.used_memory)})" for p in others[:4])
        items.append(CheckItem(id="gpu-processes", gpu=g.index, status="warn",
            title=f"{_gpu_label(g)}: memory held by other processes",
            detail=f"{_gib(held)} held by {names}; vLLM can only use what is free",
            remedy="close them, or plan with what is free (kanoa-local sizes "
                   "--gpu-memory-utilization from the free memory)"))
    cc = g.cc_value
    if cc is None:
        items.append(CheckItem(id="compute-capability", gpu=g.index, status="warn",
            title=f"{_gpu_label(g)}: compute capability ≥ 7.5", detail="could not be read"))
    elif cc < MIN_CC:
        old = next((line for line in GPU_IMAGES if line.min_cc <= cc), None)
        # An older image still has kernels for it (the planner uses it): a warning, not a stop.
        items.append(CheckItem(id="compute-capability", gpu=g.index, status="warn" if old else "fail",
            title=f"{_gpu_label(g)}: compute capability ≥ 7.5",
            detail=f"{g.cc_text}: below 7.5, which vLLM images from v0.20 are built for; "
                   + (f"{old.image} (vLLM {old.vllm}) is the last with kernels for it, "
                      "without AWQ/FP8/Marlin (they need 7.5+) or bf16 (needs 8.0)"
                      if old else "no image has kernels for it"),
            remedy=(f"kanoa-local can use {old.image} with fp16/GPTQ models; for current "
                    "models use a Turing-or-newer GPU (T4, RTX 20xx+)") if old else
                   "use a Turing-or-newer GPU (T4, RTX 20xx+), or the CPU engine"))
    else:
        extra = " (native FP8 from 8.9)" if cc >= 89 else ""
        items.append(CheckItem(id="compute-capability", gpu=g.index, status="pass",
            title=f"{_gpu_label(g)}: compute capability ≥ 7.5", detail=f"{g.cc_text}{extra}"))
    items.append(_pcie_item(g))
    if g.is_mig_slice:
        items.append(CheckItem(id="mig", gpu=g.index, status="info",
            title=f"{_gpu_label(g)}: MIG slice",
            detail=f"a MIG instance with {_gib(g.memory_total)}; vLLM runs on one slice "
                   "(no tensor parallelism across slices); pass it by its MIG UUID"))
    return items


def _pcie_item(g: Gpu) -> CheckItem:
    p = g.pcie
    title = f"{_gpu_label(g)}: PCIe 3.0 x4 or better"
    if p.max_gen is None or p.max_width is None:
        cur = (f"; current link {_link(p.current_gen, p.current_width)}"
               if p.current_gen else "")
        return CheckItem(id="pcie", gpu=g.index, status="info", title=title,
                         detail=f"the maximum link could not be read (NVML: not supported){cur}; "
                                "`check --bandwidth` measures it")
    need = PCIE_LANE_GBPS[PCIE_MIN[0]] * PCIE_MIN[1]
    bw = p.max_bandwidth_gbps or 0.0
    detail = f"{_link(p.max_gen, p.max_width)} max, {bw:.1f} GB/s per direction"
    if p.current_gen and p.current_width and (p.current_gen, p.current_width) != (p.max_gen, p.max_width):
        detail += (f"; now {_link(p.current_gen, p.current_width)} (a link drops its "
                   "generation while idle; this is normal)")
    status: Status = "pass" if bw >= need - 0.01 else "fail"
    remedy = None
    if status == "fail":
        remedy = ("move the GPU to a faster slot or enclosure; model loading and any CPU "
                  "offload will be slow")
    if p.gpu_max_gen and p.max_gen < p.gpu_max_gen:
        detail += (f"; the GPU supports PCIe {p.gpu_max_gen}.0 but the link tops out at "
                   f"{p.max_gen}.0 (slot, riser or enclosure)")
        if status == "pass":
            status = "warn"
        remedy = remedy or "run `kanoa-local check --bandwidth` to measure what the link really gives"
    if p.is_narrow:
        detail += ("; x4 or narrower is typical of an eGPU (Thunderbolt/OCuLink): weights load "
                   "slower, inference speed is barely affected once loaded")
        if status == "pass":
            status = "warn"
    return CheckItem(id="pcie", gpu=g.index, status=status, title=title, detail=detail, remedy=remedy)


def check(profile: HardwareProfile, bandwidth: BandwidthResult | None = None,
          models: list[ModelVerdict] | None = None) -> CheckReport:
    items: list[CheckItem] = []
    gpus = profile.gpus
    # 1. GPU present
    if gpus:
        names = ", ".join(f"{g.name} ({_gib(g.memory_total)})" for g in gpus)
        items.append(CheckItem(id="gpu", title="NVIDIA GPU present", status="pass",
                               detail=f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}: {names}"))
    else:
        why = profile.nvml_error or "NVML found no GPU"
        items.append(CheckItem(id="gpu", title="NVIDIA GPU present", status="fail", detail=why,
            remedy="install the NVIDIA driver if this machine has an NVIDIA GPU; otherwise the "
                   "CPU engine serves small models (see `kanoa-local plan`)"))
    for g in gpus:
        items.extend(gpu_items(g))
    if len(gpus) > 1:
        same = len({(g.name, g.memory_total) for g in gpus}) == 1
        items.append(CheckItem(id="multi-gpu", title="Several GPUs", status="info",
            detail=(f"{len(gpus)} identical GPUs: tensor parallelism can spread one model over "
                    f"them ({_gib(sum(g.memory_total for g in gpus))} in all)") if same else
                   "the GPUs differ: vLLM's tensor parallelism needs identical GPUs; "
                   "kanoa-local will use the largest one"))
    # 2. driver
    if gpus or profile.driver_version:
        ccs = [g.cc_value for g in gpus if g.cc_value is not None]
        best_cc = max(ccs) if ccs else None   # the best GPU decides which image can serve
        choice = image_for_driver(profile.cuda_driver_version, best_cc)
        drv = f"driver {profile.driver_version or '?'} (CUDA {profile.cuda_driver_text or '?'})"
        title = "Driver new enough for the vLLM image"
        if profile.cuda_driver_version is None:
            items.append(CheckItem(id="driver", title=title, status="warn",
                                   detail=f"{drv}: the CUDA version could not be read"))
        elif choice is None:
            newest = image_for_driver(10**6, best_cc) or DEFAULT_GPU_IMAGE
            items.append(CheckItem(id="driver", title=title, status="fail",
                detail=f"{drv}: too old for every vLLM image this GPU can run (the oldest, "
                       f"{GPU_IMAGES[-1].image}, needs CUDA {GPU_IMAGES[-1].cuda_text}); the "
                       "container toolkit refuses to start them",
                remedy=f"update the NVIDIA driver to {newest.min_driver} or newer "
                       f"(CUDA {newest.cuda_text}, for {newest.image})"))
        elif choice is DEFAULT_GPU_IMAGE:
            items.append(CheckItem(id="driver", title=title, status="pass",
                                   detail=f"{drv}: runs the default image {choice.image}"))
        else:
            driver_too_old = profile.cuda_driver_version < DEFAULT_GPU_IMAGE.cuda
            why = "too old for" if driver_too_old else "fine, but the GPU cannot run"
            items.append(CheckItem(id="driver", title=title, status="warn",
                detail=f"{drv}: {why} the default image {DEFAULT_GPU_IMAGE.image} "
                       f"(CUDA {DEFAULT_GPU_IMAGE.cuda_text}); use {choice.image} "
                       f"(vLLM {choice.vllm}, CUDA {choice.cuda_text})",
                remedy=f"kanoa-local picks {choice.image} by itself"
                       + (f"; update the driver to {DEFAULT_GPU_IMAGE.min_driver}+ for the "
                          "newest release" if driver_too_old else "")))
    # 3. RAM
    ram = profile.ram_total / GIB
    ok_ram = ram >= RAM_MIN_GIB - RAM_SLACK_GIB
    items.append(CheckItem(id="ram", title=f"System RAM ≥ {RAM_MIN_GIB} GB",
        status="pass" if ok_ram else ("warn" if gpus else "fail" if ram < CPU_ENGINE_RAM_MIN_GIB else "warn"),
        detail=f"{_gib(profile.ram_total)} total, {_gib(profile.ram_available)} available",
        remedy=None if ok_ram else "close other programs; loading weights needs RAM for staging"))
    # 4. Docker and the NVIDIA runtime
    d = profile.docker
    if d is None:
        items.append(CheckItem(id="docker", title="Docker Engine reachable", status="skip",
                               detail="not probed for this profile"))
    elif not d.reachable:
        items.append(CheckItem(id="docker", title="Docker Engine reachable", status="fail",
            detail=f"Docker is {d.reason.replace('-', ' ')}", remedy=d.detail))
    else:
        items.append(CheckItem(id="docker", title="Docker Engine reachable", status="pass",
                               detail=f"server {d.server_version or '?'}"))
    if d is not None and d.reachable and gpus:
        if d.nvidia_runtime:
            how = ", ".join(x for x, on in (("nvidia runtime", "nvidia" in d.runtimes),
                                            ("CDI spec", d.nvidia_cdi),
                                            ("container toolkit hook", d.nvidia_hook)) if on)
            items.append(CheckItem(id="nvidia-runtime", title="NVIDIA container runtime",
                                   status="pass", detail=how))
        else:
            items.append(CheckItem(id="nvidia-runtime", title="NVIDIA container runtime",
                status="fail",
                detail="Docker has no NVIDIA runtime: a GPU container fails with "
                       "'could not select device driver \"\" with capabilities: [[gpu]]'",
                remedy="install nvidia-container-toolkit, run `nvidia-ctk runtime configure "
                       "--runtime=docker` and restart Docker"))
    # 5. disk
    if profile.disk_free is None:
        items.append(CheckItem(id="disk", title="Disk space for weights", status="info",
                               detail=f"free space at {profile.disk_path} unknown"))
    else:
        free = profile.disk_free / GIB
        st: Status = "pass" if free >= DISK_GOOD_GIB else "warn" if free >= DISK_MIN_GIB else "fail"
        items.append(CheckItem(id="disk", title="Disk space for weights", status=st,
            detail=f"{_gib(profile.disk_free)} free at {profile.disk_path} (a 7B model at 4-bit "
                   "takes ~5 GiB, a 12B model in bf16 ~24 GiB)",
            remedy=None if st == "pass" else "free space or point HF_HOME at a larger disk"))
    # 6. platform
    if profile.wsl:
        items.append(CheckItem(id="wsl", title="WSL2", status="info",
            detail="WSL2 detected: GPU memory is reported, utilisation and per-process "
                   "queries may not be; serving works through Docker with GPU support"))
    if bandwidth is not None:
        items.append(CheckItem(id="bandwidth", title="Measured host-to-GPU bandwidth",
            status=bandwidth.status if bandwidth.ran else "skip",
            detail=bandwidth.detail or bandwidth.reason or "", remedy=bandwidth.remedy))
    verdict, summary = _verdict(profile, items)
    return CheckReport(verdict=verdict, exit_code=EXIT_CODES[verdict], summary=summary,
                       items=items, profile=profile, bandwidth=bandwidth, models=models or [])


_BLOCKING = {"vram", "compute-capability", "driver", "nvidia-runtime", "docker"}


def _verdict(profile: HardwareProfile, items: list[CheckItem]) -> tuple[Verdict, str]:
    cpu_ok = profile.ram_total / GIB >= CPU_ENGINE_RAM_MIN_GIB
    cpu_line = (f"the CPU engine can serve small models ({profile.cpu.count} CPUs, "
                f"{_gib(profile.ram_total)} RAM)")
    if not profile.gpus:
        if cpu_ok:
            return "cpu-only", f"No usable NVIDIA GPU: {cpu_line}."
        return "cannot-serve", (f"No NVIDIA GPU and only {_gib(profile.ram_total)} RAM: "
                                "too little even for the CPU engine.")
    usable = [g for g in profile.gpus
              if not any(i.gpu == g.index and i.id in ("vram", "compute-capability")
                         and i.status == "fail" for i in items)]
    blocking = [i for i in items if i.status == "fail" and i.id in _BLOCKING and i.gpu is None]
    if usable and not blocking:
        best = max(usable, key=lambda g: g.memory_total)
        return "gpu-ready", f"Ready for GPU serving on {best.name} ({_gib(best.memory_total)})."
    fixes = "; ".join(i.title for i in items if i.status == "fail")
    tail = f" Meanwhile {cpu_line}." if cpu_ok else ""
    return "gpu-not-ready", f"GPU found but not ready to serve: fix {fixes}.{tail}"
