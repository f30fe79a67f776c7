"""A cluster description: identical nodes of identical GPUs, for planning and export beyond
one machine. Saved as TOML (``--cluster FILE``) or given on the command line
(``--nodes N --gpus-per-node T --gpu NAME``)::

    [cluster]
    name = "lab"
    nodes = 2
    gpus_per_node = 8
    gpu = "a100-80g"        # a named profile (`kanoa-local check --gpu` lists them) ...
    vram_gb = 80            # ... and/or the memory each GPU is sold with
    hosts = ["gpu1", "gpu2"]   # optional: node addresses (docker export; the first is the head)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from .errors import ConfigError, UsageError
from .hardware import HardwareProfile, Model


class Cluster(Model):
    name: str = "cluster"
    nodes: int = Field(1, ge=1, le=64)
    gpus_per_node: int = Field(1, ge=1, le=16)
    gpu: str | None = Field(None, description="a named GPU profile")
    vram_gb: float | None = Field(None, gt=0, le=4096)
    hosts: list[str] = Field(default_factory=list, description="node addresses, head first")

    def profile(self) -> HardwareProfile:
        """One node of the cluster as a hardware profile (what the planner plans for)."""
        from .hardware import what_if
        from .probe import load_preset, probe

        base = load_preset(self.gpu) if self.gpu else probe(docker=False)
        if self.gpu is None and self.vram_gb is None and not base.gpus:
            raise UsageError("a cluster needs a GPU: --gpu NAME or --vram GB (this machine has none "
                             "to stand for its nodes)", remedy="e.g. --nodes 2 --gpus-per-node 8 --gpu a100-80g")
        return what_if(base, vram_gb=self.vram_gb, gpus=self.gpus_per_node)


def load_cluster(path: str | Path) -> Cluster:
    from .catalog import tomllib

    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster file {p}: {exc.strerror or exc}",
                          remedy="give a TOML file with a [cluster] table") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", remedy="fix the file") from exc
    try:
        return Cluster.model_validate(data.get("cluster", data))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{p}: cluster.{where}: {err['msg']}", remedy="fix the file") from None
