"""probe() -> HardwareProfile: NVML + psutil + the Docker daemon. "No GPU" is a fact here,
not an exception; so is a Docker daemon that does not answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..hardware import CpuFacts, DockerFacts, HardwareProfile, Note
from ..hub import cache_dir as hf_cache_dir
from . import nvml as _nvml
from . import system as _system


def probe(nvml: Any | None = None, *, docker: bool | DockerFacts = True,
          host: dict[str, Any] | None = None, source: str = "probe",
          description: str | None = None) -> HardwareProfile:
    """Probe this machine.

    ``nvml`` replaces the pynvml module (a :class:`~kanoa_local.probe.nvml.Replay`);
    ``host`` replaces the psutil facts (from a recording); ``docker`` False skips the daemon,
    a DockerFacts uses the given facts.
    """
    reading = _nvml.read(nvml)
    notes = list(reading.notes)
    if host is None:
        ram_total, ram_available, mem_notes = _system.memory()
        notes += mem_notes
        cpu = _system.cpu()
        disk_path, disk_free = _system.disk_free(hf_cache_dir())
        wsl = _system.is_wsl()
    else:
        ram_total, ram_available = host["ram_total"], host["ram_available"]
        cpu = CpuFacts(count=host.get("cpu_count", 8), model=host.get("cpu_model"),
                       flags=host.get("cpu_flags", []))
        disk_path = host.get("disk_path", "~/.cache/huggingface/hub")
        disk_free = host.get("disk_free")
        wsl = bool(host.get("wsl", False))
    if wsl and reading.available:
        notes.append(Note(field="wsl", message=(
            "WSL2: NVML reports memory, but utilisation and process queries may fail; "
            "use Docker Desktop's WSL2 backend or Docker Engine inside WSL with the NVIDIA "
            "Container Toolkit")))
    if docker is True:
        from ..backends.docker_api import daemon_facts

        docker_facts: DockerFacts | None = daemon_facts()
    elif isinstance(docker, DockerFacts):
        docker_facts = docker
    else:
        docker_facts = None
    return HardwareProfile(
        source=source, description=description, gpus=reading.gpus,
        nvml_available=reading.available, nvml_error=reading.error,
        driver_version=reading.driver_version, cuda_driver_version=reading.cuda_driver_version,
        ram_total=ram_total, ram_available=ram_available, cpu=cpu, disk_path=disk_path,
        disk_free=disk_free, wsl=wsl, docker=docker_facts, notes=notes)


def from_recording(recording: dict[str, Any], source: str) -> HardwareProfile:
    """A profile from an NVML recording (see probe/nvml.py), played back through the probe."""
    host = recording.get("host") or {
        "ram_total": 64 * 1024**3, "ram_available": 60 * 1024**3, "cpu_count": 16}
    docker = recording.get("docker")
    return probe(_nvml.Replay(recording), host=host, source=source,
                 docker=DockerFacts.model_validate(docker) if docker else False,
                 description=recording.get("description"))


PRESET_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"


def preset_names() -> list[str]:
    return sorted({p.stem for p in PRESET_DIR.glob("*.json")} | set(_gpu_table()))


def _gpu_table() -> dict[str, Any]:
    from ..catalog import tomllib

    return dict(tomllib.loads((PRESET_DIR.parent / "gpus.toml").read_text()))


def _from_gpu_table(key: str, row: dict[str, Any]) -> HardwareProfile:
    """A constructed profile: one idle GPU of the table's kind in the l4 profile's host."""
    from ..plan.devices import cuda_reserve

    base = load_preset("l4")
    total = int(row["memory_mib"]) * 1024 * 1024
    used = cuda_reserve(row["name"], total)    # an idle GPU's NVML "used" is the driver's reserve
    g = base.gpus[0].model_copy(update={"name": row["name"], "memory_total": total, "memory_used": used,
                                        "memory_free": total - used, "uuid": f"GPU-{key}-constructed",
                                        "compute_capability": tuple(row["cc"]), "processes": []})
    return base.model_copy(update={"gpus": [g], "source": f"gpu-table:{key} (constructed)"})


def load_profile(path: str | Path) -> HardwareProfile:
    """A saved HardwareProfile (`check --save`) or an NVML recording, from a file.

    Any problem is a ConfigError naming the file and what is wrong with it."""
    from pydantic import ValidationError

    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file",
                          remedy="give a file written by `kanoa-local check --save FILE`") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a profile file",
                          remedy="give a file written by `kanoa-local check --save FILE`") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file",
                          remedy="give a JSON file written by `kanoa-local check --save`") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                          remedy="give a file written by `kanoa-local check --save FILE`") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a hardware profile",
                          remedy="give a file written by `kanoa-local check --save FILE`") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror})",
                          remedy="check the path and its permissions") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object, found {type(data).__name__}",
                          remedy="give a file written by `kanoa-local check --save FILE`")
    kind = data.get("kind")
    try:
        if kind == _nvml.RECORDING_KIND:
            return from_recording(data, source=str(p))
        if kind == "kanoa-local.hardware-profile":
            profile = HardwareProfile.model_validate(data)
            return profile.model_copy(update={"source": str(p)})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{p}: {where}: {err['msg']}",
                          remedy="fix that key, or write the file anew with "
                                 "`kanoa-local check --save FILE`") from None
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{p}: the NVML recording is incomplete ({exc!r})",
                          remedy="record it again with `python -m kanoa_local.probe.nvml`") from None
    raise ConfigError(
        f"{p}: not a kanoa-local hardware profile (\"kind\" is {kind!r})",
        remedy="give a file written by `kanoa-local check --save FILE`")


def load_preset(name: str) -> HardwareProfile:
    from ..errors import UsageError

    key = name.lower().replace("_", "-")
    path = PRESET_DIR / f"{key}.json"
    if not path.is_file():
        table = _gpu_table()
        if key in table:
            return _from_gpu_table(key, table[key])
        import difflib

        close = difflib.get_close_matches(key, preset_names(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"no GPU profile named {name!r}",
                         remedy=f"{hint}known: {', '.join(preset_names())}")
    return from_recording(json.loads(path.read_text()), source=f"preset:{key}")
