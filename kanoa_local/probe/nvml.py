"""The NVML boundary: the only module that imports ``pynvml`` (package ``nvidia-ml-py``).

Three things live here:

* :func:`read` turns NVML answers into :class:`~kanoa_local.hardware.Gpu` facts. Any NVML
  call may raise ``NotSupported``/``NoPermission`` (WSL2, MIG slices, containers): the field is
  left empty with a :class:`Note`, never a crash. No driver is a fact, not an error.
* :func:`record` calls the same NVML functions on a real machine and keeps each answer (or the
  NVML error it raised) as JSON: a *recording*.
* :class:`Replay` plays a recording back with the pynvml module's own surface and its own
  error classes, so every hardware path (an L4, an eGPU at x4, a MIG slice, WSL2, no driver)
  runs through exactly the code that reads a real GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from ..hardware import Gpu, GpuProcess, Note, PcieLink

RECORDING_KIND = "kanoa-local.nvml-recording"

#: Per-device calls the probe makes (and the recorder records), all of the form f(handle).
DEVICE_CALLS = (
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkGeneration",
    "nvmlDeviceGetMaxPcieLinkWidth",
    "nvmlDeviceGetGpuMaxPcieLinkGeneration",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetUtilizationRates",
)
SYSTEM_CALLS = ("nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion")

#: NVML errors the probe explains in words (by pynvml constant name).
_INIT_REASONS = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": "no NVIDIA driver found (libnvidia-ml.so is missing)",
    "NVML_ERROR_DRIVER_NOT_LOADED": "the NVIDIA driver is installed but not loaded",
    "NVML_ERROR_NO_PERMISSION": "no permission to open the NVIDIA devices (/dev/nvidia*)",
    "NVML_ERROR_INSUFFICIENT_SIZE": "NVML could not initialise",
    "NVML_ERROR_GPU_IS_LOST": "the GPU has fallen off the bus",
}
_CALL_REASONS = {
    "NVML_ERROR_NOT_SUPPORTED": "not supported here",
    "NVML_ERROR_NO_PERMISSION": "no permission",
    "NVML_ERROR_FUNCTION_NOT_FOUND": "driver too old for this query",
    "NVML_ERROR_GPU_IS_LOST": "GPU lost",
}


def load_pynvml() -> Any | None:
    """The real pynvml module, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def error_name(exc: BaseException) -> str:
    """The pynvml constant name of an NVMLError (e.g. 'NVML_ERROR_NOT_SUPPORTED')."""
    value = getattr(exc, "value", None)
    pynvml = load_pynvml()
    if pynvml is not None and value is not None:
        for name in dir(pynvml):
            if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == value:
                return name
    return f"NVML_ERROR_{value}"


def _is_nvml_error(exc: BaseException) -> bool:
    pynvml = load_pynvml()
    return pynvml is not None and isinstance(exc, pynvml.NVMLError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReading:
    """What :func:`read` found: GPUs plus system facts, or why NVML was unusable."""

    def __init__(self) -> None:
        self.available = False
        self.error: str | None = None
        self.driver_version: str | None = None
        self.cuda_driver_version: int | None = None
        self.gpus: list[Gpu] = []
        self.notes: list[Note] = []


def read(nvml: Any | None = None) -> NvmlReading:
    """Read every GPU through ``nvml`` (the real pynvml module by default, or a Replay)."""
    out = NvmlReading()
    if nvml is None:
        nvml = load_pynvml()
        if nvml is None:
            out.error = "nvidia-ml-py is not installed, so GPUs cannot be seen"
            return out
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - every NVML failure is a fact about the machine
        if not _is_nvml_error(exc):
            raise
        name = error_name(exc)
        out.error = _INIT_REASONS.get(name, f"NVML could not initialise ({name})")
        return out
    try:
        out.available = True

        def call(field: str, fn: Callable[..., Any], *args: Any, notes: list[Note]) -> Any:
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001
                if not _is_nvml_error(exc):
                    raise
                name = error_name(exc)
                notes.append(Note(field=field, message=_CALL_REASONS.get(name, name)))
                return None

        driver = call("driver_version", nvml.nvmlSystemGetDriverVersion, notes=out.notes)
        out.driver_version = _text(driver) if driver is not None else None
        out.cuda_driver_version = call(
            "cuda_driver_version", nvml.nvmlSystemGetCudaDriverVersion, notes=out.notes)
        count = call("gpu_count", nvml.nvmlDeviceGetCount, notes=out.notes) or 0
        for i in range(count):
            handle = call(f"gpu[{i}]", nvml.nvmlDeviceGetHandleByIndex, i, notes=out.notes)
            if handle is None:
                continue
            out.gpus.extend(_read_device(nvml, handle, i, call))
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutdown failure changes nothing we read
            pass
    return out


def _read_device(nvml: Any, handle: Any, index: int, call: Callable[..., Any]) -> list[Gpu]:
    notes: list[Note] = []
    c = lambda field, fn, *a: call(field, fn, handle, *a, notes=notes)  # noqa: E731
    name = c("name", nvml.nvmlDeviceGetName)
    uuid = c("uuid", nvml.nvmlDeviceGetUUID)
    mem = c("memory", nvml.nvmlDeviceGetMemoryInfo)
    cc = c("compute_capability", nvml.nvmlDeviceGetCudaComputeCapability)
    pcie = PcieLink(
        current_gen=c("pcie.current_gen", nvml.nvmlDeviceGetCurrPcieLinkGeneration),
        current_width=c("pcie.current_width", nvml.nvmlDeviceGetCurrPcieLinkWidth),
        max_gen=c("pcie.max_gen", nvml.nvmlDeviceGetMaxPcieLinkGeneration),
        max_width=c("pcie.max_width", nvml.nvmlDeviceGetMaxPcieLinkWidth),
        gpu_max_gen=c("pcie.gpu_max_gen", nvml.nvmlDeviceGetGpuMaxPcieLinkGeneration),
    )
    mig = c("mig_mode", nvml.nvmlDeviceGetMigMode)
    mig_enabled = None if mig is None else bool(mig[0])
    util = c("utilization", nvml.nvmlDeviceGetUtilizationRates)
    procs = _processes(nvml, c("processes", nvml.nvmlDeviceGetComputeRunningProcesses))
    parent = Gpu(
        index=index, uuid=_text(uuid) if uuid else f"GPU-index-{index}",
        name=_text(name) if name else "unknown NVIDIA GPU",
        memory_total=getattr(mem, "total", 0) or 0, memory_free=getattr(mem, "free", 0) or 0,
        memory_used=getattr(mem, "used", 0) or 0,
        compute_capability=tuple(cc) if cc is not None else None,
        pcie=pcie, mig_enabled=mig_enabled, processes=procs,
        utilization_pct=getattr(util, "gpu", None), notes=notes,
    )
    if not mig_enabled:
        return [parent]
    # MIG on: CUDA sees the slices, not the parent. Each slice is what a container gets.
    slices: list[Gpu] = []
    max_slices = call("mig_count", nvml.nvmlDeviceGetMaxMigDeviceCount, handle, notes=notes) or 0
    for j in range(max_slices):
        try:
            mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except Exception as exc:  # noqa: BLE001 - absent slot: NVML_ERROR_NOT_FOUND
            if not _is_nvml_error(exc):
                raise
            continue
        snotes: list[Note] = []
        s = lambda field, fn: call(field, fn, mh, notes=snotes)  # noqa: E731, B023 - used in this iteration
        smem = s("memory", nvml.nvmlDeviceGetMemoryInfo)
        suuid = s("uuid", nvml.nvmlDeviceGetUUID)
        sname = s("name", nvml.nvmlDeviceGetName)
        slices.append(Gpu(
            index=index, uuid=_text(suuid) if suuid else f"MIG-{index}-{j}",
            name=_text(sname) if sname else f"{parent.name} MIG slice {j}",
            memory_total=getattr(smem, "total", 0) or 0,
            memory_free=getattr(smem, "free", 0) or 0,
            memory_used=getattr(smem, "used", 0) or 0,
            compute_capability=parent.compute_capability, pcie=pcie, mig_enabled=True,
            is_mig_slice=True, processes=[], notes=snotes,
        ))
    return slices or [parent]


def _processes(nvml: Any, raw: Any) -> list[GpuProcess]:
    out = []
    for p in raw or []:
        pid = int(getattr(p, "pid", 0))
        used = getattr(p, "usedGpuMemory", None)
        try:
            pname = _text(nvml.nvmlSystemGetProcessName(pid))
        except Exception:  # noqa: BLE001 - other users' processes are often unreadable
            pname = None
        out.append(GpuProcess(pid=pid, name=pname, used_memory=used if isinstance(used, int) else None))
    return out


# --------------------------------------------------------------------------- recording


def _plain(value: Any) -> Any:
    """NVML answers (ctypes structs, bytes, tuples) as JSON values."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields:
        return {f[0]: _plain(getattr(value, f[0])) for f in fields if not f[0].startswith("_")}
    if hasattr(value, "__dict__"):
        # pynvml hands some answers (running processes) back as nvmlFriendlyObject
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def record(nvml: Any | None = None) -> dict[str, Any]:
    """Call every NVML function the probe uses and keep each answer or error, as JSON data."""
    nvml = nvml or load_pynvml()
    rec: dict[str, Any] = {"kind": RECORDING_KIND, "version": 1, "system": {}, "devices": []}
    if nvml is None:
        rec["init_error"] = "NVML_ERROR_LIBRARY_NOT_FOUND"
        return rec

    def grab(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return _plain(fn(*args))
        except Exception as exc:  # noqa: BLE001
            if not _is_nvml_error(exc):
                raise
            return {"nvml_error": error_name(exc)}

    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        if not _is_nvml_error(exc):
            raise
        rec["init_error"] = error_name(exc)
        return rec
    try:
        for name in SYSTEM_CALLS:
            rec["system"][name] = grab(getattr(nvml, name))
        names: dict[str, Any] = {}
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            dev = {name: grab(getattr(nvml, name), h) for name in DEVICE_CALLS}
            for p in dev["nvmlDeviceGetComputeRunningProcesses"] or []:
                if isinstance(p, dict) and "pid" in p:
                    names[str(p["pid"])] = grab(nvml.nvmlSystemGetProcessName, p["pid"])
            mig = dev["nvmlDeviceGetMigMode"]
            if isinstance(mig, list) and mig and mig[0]:
                dev["mig_devices"] = []
                for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except Exception:  # noqa: BLE001
                        continue
                    dev["mig_devices"].append({n: grab(getattr(nvml, n), mh) for n in (
                        "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo")})
            rec["devices"].append(dev)
        rec["system"]["nvmlSystemGetProcessName"] = names
    finally:
        nvml.nvmlShutdown()
    return rec


# --------------------------------------------------------------------------- replay


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        items = [_namespace(v) for v in value]
        return items if any(isinstance(v, SimpleNamespace) for v in items) else tuple(items)
    return value


class Replay:
    """A recording played back with pynvml's surface; errors are pynvml's own classes."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self._rec = recording
        self._pynvml = load_pynvml()
        if self._pynvml is None:  # pragma: no cover - nvidia-ml-py is a dependency
            raise RuntimeError("nvidia-ml-py is needed to replay NVML recordings")
        self.NVMLError = self._pynvml.NVMLError

    @classmethod
    def from_file(cls, path: str | Path) -> "Replay":
        return cls(json.loads(Path(path).read_text()))

    def _raise(self, name: str) -> None:
        raise self.NVMLError(getattr(self._pynvml, name))

    def _answer(self, value: Any) -> Any:
        if isinstance(value, dict) and "nvml_error" in value:
            self._raise(value["nvml_error"])
        return _namespace(value)

    def nvmlInit(self) -> None:
        if self._rec.get("init_error"):
            self._raise(self._rec["init_error"])

    def nvmlShutdown(self) -> None:
        return None

    def nvmlDeviceGetCount(self) -> int:
        return len(self._rec.get("devices", []))

    def nvmlDeviceGetHandleByIndex(self, i: int) -> tuple[int, int | None]:
        if not 0 <= i < self.nvmlDeviceGetCount():
            self._raise("NVML_ERROR_INVALID_ARGUMENT")
        return (i, None)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: tuple[int, int | None]) -> int:
        return len(self._rec["devices"][handle[0]].get("mig_devices", []))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: tuple[int, int | None], j: int):
        if j >= self.nvmlDeviceGetMaxMigDeviceCount(handle):
            self._raise("NVML_ERROR_NOT_FOUND")
        return (handle[0], j)

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        names = self._rec.get("system", {}).get("nvmlSystemGetProcessName", {})
        if str(pid) not in names:
            self._raise("NVML_ERROR_NOT_FOUND")
        return self._answer(names[str(pid)])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvmlSystem"):
            def system_call() -> Any:
                system = self._rec.get("system", {})
                if name not in system:
                    self._raise("NVML_ERROR_FUNCTION_NOT_FOUND")
                return self._answer(system[name])
            return system_call
        if name.startswith("nvmlDevice"):
            def device_call(handle: tuple[int, int | None], *args: Any) -> Any:
                dev = self._rec["devices"][handle[0]]
                if handle[1] is not None:
                    dev = dev["mig_devices"][handle[1]]
                if name not in dev:
                    self._raise("NVML_ERROR_NOT_SUPPORTED")
                return self._answer(dev[name])
            return device_call
        raise AttributeError(name)

