"""Facts about a machine, as pydantic models, with no I/O.

The probe (``kanoa_local.probe``) fills them in; the checker and the planner only read them, so
checking or planning for a machine you do not have is the same call fed a recorded profile.
All sizes are bytes; bandwidths are GB/s (10^9 bytes per second) as PCIe is specified.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

GIB = 1024**3

#: Usable bandwidth per lane and direction after line encoding, GB/s (PCIe spec figures).
PCIE_LANE_GBPS: dict[int, float] = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


class Model(BaseModel):
    """Strict about unknown keys; its own computed fields (written to JSON for readers) are
    accepted back and recomputed, so a dumped model always validates again."""

    # protected_namespaces: pydantic < 2.10 warns (on stderr, at import) about fields named model_*
    # allow_inf_nan: a figure is finite (nan passes every comparison, inf every lower bound)
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: object) -> object:
        if isinstance(data, dict) and cls.model_computed_fields:
            return {k: v for k, v in data.items() if k not in cls.model_computed_fields}
        return data


class Note(Model):
    """Something the probe could not read, or a quirk worth knowing."""

    field: str
    message: str


class PcieLink(Model):
    """A GPU's PCIe link. The current generation/width drop while the GPU idles, so
    judgements use the max values; the current ones are kept for diagnosis."""

    current_gen: int | None = None
    current_width: int | None = None
    max_gen: int | None = None
    max_width: int | None = None
    gpu_max_gen: int | None = Field(None, description="what the GPU itself supports")

    @staticmethod
    def bandwidth(gen: int | None, width: int | None) -> float | None:
        if not gen or not width or gen not in PCIE_LANE_GBPS:
            return None
        return round(PCIE_LANE_GBPS[gen] * width, 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_bandwidth_gbps(self) -> float | None:
        return self.bandwidth(self.max_gen, self.max_width)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def current_bandwidth_gbps(self) -> float | None:
        return self.bandwidth(self.current_gen, self.current_width)

    @property
    def is_narrow(self) -> bool:
        """x4 or narrower: the mark of an eGPU (Thunderbolt/OCuLink) or a chipset slot."""
        return self.max_width is not None and self.max_width <= 4


class GpuProcess(Model):
    pid: int = Field(ge=0)
    name: str | None = None
    used_memory: int | None = Field(None, ge=0)


class Gpu(Model):
    index: int = Field(ge=0)
    uuid: str
    name: str
    memory_total: int = Field(ge=0, description="bytes (0: NVML could not read it)")
    memory_free: int = Field(ge=0)
    memory_used: int = Field(ge=0)
    compute_capability: tuple[int, int] | None = None
    pcie: PcieLink = Field(default_factory=PcieLink)
    mig_enabled: bool | None = None
    is_mig_slice: bool = False
    processes: list[GpuProcess] = Field(default_factory=list)
    utilization_pct: int | None = Field(None, ge=0, le=100)
    notes: list[Note] = Field(default_factory=list)

    @property
    def cc_value(self) -> int | None:
        """Compute capability as vLLM writes it: 8.9 -> 89."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability
        return major * 10 + minor

    @property
    def cc_text(self) -> str:
        return "?" if self.compute_capability is None else "%d.%d" % self.compute_capability


class CpuFacts(Model):
    count: int = Field(ge=1)
    model: str | None = None
    flags: list[str] = Field(default_factory=list, description="the ISA flags that matter to vLLM")

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def has_amx(self) -> bool:
        return "amx_bf16" in self.flags or "amx_tile" in self.flags


class DockerFacts(Model):
    reachable: bool
    reason: Literal["ok", "not-installed", "not-running", "permission-denied", "error"] = "ok"
    detail: str | None = None
    host: str | None = Field(None, description="daemon address when not the default socket")
    server_version: str | None = None
    runtimes: list[str] = Field(default_factory=list)
    default_runtime: str | None = None
    cdi_spec_dirs: list[str] = Field(default_factory=list)
    nvidia_cdi: bool = False
    nvidia_hook: bool = Field(False, description="nvidia-container-runtime-hook on this host")

    @property
    def nvidia_runtime(self) -> bool:
        """Whether a GPU `docker run` can work: the nvidia runtime, an NVIDIA CDI spec, or the
        toolkit's hook (what `--gpus` uses) must be there."""
        return "nvidia" in self.runtimes or self.nvidia_cdi or self.nvidia_hook


class HardwareProfile(Model):
    """Everything kanoa-local knows about a machine. `kanoa-local check --save` writes one."""

    kind: Literal["kanoa-local.hardware-profile"] = "kanoa-local.hardware-profile"
    version: int = 1
    source: str = Field("probe", description="'probe', or the recording/file it came from")
    description: str | None = None
    gpus: list[Gpu] = Field(default_factory=list)
    nvml_available: bool = False
    nvml_error: str | None = Field(None, description="why NVML could not be used")
    driver_version: str | None = None
    cuda_driver_version: int | None = Field(None, description="e.g. 13000 for CUDA 13.0")
    ram_total: int = Field(gt=0, description="bytes")
    ram_available: int = Field(ge=0)
    cpu: CpuFacts
    disk_path: str
    disk_free: int | None = Field(None, ge=0)
    platform: str = "linux"
    wsl: bool = False
    docker: DockerFacts | None = None
    notes: list[Note] = Field(default_factory=list)

    @property
    def cuda_driver_text(self) -> str | None:
        v = self.cuda_driver_version
        return None if v is None else f"{v // 1000}.{(v % 1000) // 10}"


def what_if(profile: HardwareProfile, vram_gb: float | None = None, gpus: int | None = None) -> HardwareProfile:
    """The same machine with other GPU memory and/or another number of its (first) GPU.

    ``vram_gb`` is what a card is sold as: "16 GB" cards carry 16 GiB, of which the driver
    keeps a little. A machine without a GPU gets a generic one (compute capability 8.9, PCIe
    4.0 x16, a CUDA 13 driver, 24 GB unless ``vram_gb`` says) so what-if planning works anywhere.
    """
    if vram_gb is None and gpus is None:
        return profile
    if profile.gpus:
        base = profile.gpus[0]
    else:
        # a 24 GB card unless --vram says otherwise
        base = Gpu(index=0, uuid="GPU-what-if", name="GPU (what-if)", memory_total=int(24 * GIB * 0.995),
                   memory_free=int(24 * GIB * 0.995) - int(0.3 * GIB), memory_used=int(0.3 * GIB),
                   compute_capability=(8, 9),
                   pcie=PcieLink(current_gen=4, current_width=16, max_gen=4, max_width=16))
    if vram_gb is not None:
        total = int(vram_gb * GIB * 0.995)
        used = int(0.3 * GIB)
        base = base.model_copy(update={"memory_total": total, "memory_used": used,
                                       "memory_free": total - used, "processes": [],
                                       "name": f"{base.name} ({vram_gb:g} GB what-if)"})
    count = gpus if gpus is not None else max(1, len(profile.gpus))
    new = [base.model_copy(update={"index": i, "uuid": f"{base.uuid}-{i}" if count > 1 else base.uuid})
           for i in range(count)]
    changes = [f"{vram_gb:g} GB" if vram_gb is not None else "", f"{count} GPU(s)" if gpus is not None else ""]
    update: dict[str, object] = {"gpus": new, "source": f"{profile.source} + what-if {' '.join(c for c in changes if c)}"}
    if profile.cuda_driver_version is None:
        update.update(cuda_driver_version=13000, driver_version="580 (what-if)", nvml_available=True,
                      nvml_error=None)
    return profile.model_copy(update=update)
