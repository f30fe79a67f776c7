"""Record this machine as an NVML recording (NVML answers + host facts + Docker facts), the
format `kanoa-local check --hardware FILE` and the test profiles play back.

    python -m kanoa_local.probe.record [--name NAME] [--description TEXT] > machine.json
"""

from __future__ import annotations

import argparse
import json
from datetime import date

from ..hub import cache_dir as hf_cache_dir
from . import nvml, system


def record_machine(name: str, description: str | None = None) -> dict:
    rec = nvml.record()
    ram_total, ram_available, _ = system.memory()
    cpu = system.cpu()
    disk_path, disk_free = system.disk_free(hf_cache_dir())
    from ..backends.docker_api import daemon_facts

    rec.update({
        "name": name,
        "description": description or name,
        "source": f"recorded live with `python -m kanoa_local.probe.record` on {date.today()}",
        "host": {"ram_total": ram_total, "ram_available": ram_available, "cpu_count": cpu.count,
                 "cpu_model": cpu.model, "cpu_flags": cpu.flags, "disk_path": disk_path,
                 "disk_free": disk_free, "wsl": system.is_wsl()},
        "docker": daemon_facts().model_dump(),
    })
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="this-machine")
    ap.add_argument("--description")
    a = ap.parse_args(argv)
    print(json.dumps(record_machine(a.name, a.description), indent=1))


if __name__ == "__main__":
    main()
