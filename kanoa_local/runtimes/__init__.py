"""Where the engine runs: one contract (:mod:`.base`), one module per place.

``for_kind(kind, **options)`` gives the runtime of a record's ``place.kind``; the Docker, Slurm
and Kubernetes modules import their foreign clients only through :mod:`kanoa_local.backends`.
"""

from __future__ import annotations

from typing import Any

from .base import (Cleanup, Found, Launched, LaunchRequest, Liveness, Runtime, Unreachable, combine,
                   interruptible, interrupted_error, shielded)

KINDS = ("process", "docker", "slurm", "k8s")


def for_kind(kind: str, **options: Any) -> Runtime:
    if kind == "process":
        from .process import ProcessRuntime

        return ProcessRuntime()
    if kind == "docker":
        from .docker import DockerRuntime

        return DockerRuntime(**options)
    if kind == "slurm":
        from .slurm import SlurmRuntime

        return SlurmRuntime(**options)
    if kind == "k8s":
        from .k8s import K8sRuntime

        return K8sRuntime()
    raise ValueError(f"unknown runtime {kind!r}")


class Pool:
    """The runtimes one command uses, each made once and closed at the end (one Docker client
    per host per command)."""

    def __init__(self) -> None:
        self._rt: dict[str, Runtime] = {}

    def __getitem__(self, kind: str) -> Runtime:
        if kind not in self._rt:
            self._rt[kind] = for_kind(kind)
        return self._rt[kind]

    def close(self) -> None:
        for rt in self._rt.values():
            rt.close()
        self._rt.clear()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Cleanup", "Found", "KINDS", "Launched", "LaunchRequest", "Liveness", "Pool", "Runtime",
           "Unreachable", "combine", "for_kind", "interruptible", "interrupted_error", "shielded"]
